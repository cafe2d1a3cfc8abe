//! Object store adapters: content-addressed document storage behind the
//! [`igl_core::ObjectStore`] port.
//!
//! [`ObjectLake`] is built on the `object_store` crate, so the local filesystem, an
//! in-memory store and Amazon S3 / S3-compatible servers ([`ObjectLake::s3`]) are the same
//! adapter with a different backend.

mod lake;
mod s3;

pub use lake::{ObjectLake, STALE_UPLOAD_AGE};
pub use s3::{S3_CREDENTIAL_VARIABLES, S3Credentials, S3Options};
