//! Object store adapters: content-addressed document storage behind the
//! [`igl_core::ObjectStore`] port.
//!
//! [`ObjectLake`] is built on the `object_store` crate, so the local filesystem, an
//! in-memory store and (later) S3-compatible services are the same adapter with a
//! different backend.

mod lake;

pub use lake::{ObjectLake, STALE_UPLOAD_AGE};
