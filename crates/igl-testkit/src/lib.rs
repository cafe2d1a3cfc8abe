//! Test support for the IGL node: one conformance suite per port, run against every
//! adapter, and fixtures that create fresh, isolated backends.
//!
//! PostgreSQL fixtures are used when `IGL_TEST_POSTGRES_URL` is set (e.g.
//! `postgres://postgres@127.0.0.1:5432/igl_test`); each test gets its own schema. Without
//! the variable the PostgreSQL tests are reported as ignored, with the reason. S3 fixtures
//! likewise need `IGL_TEST_S3_ENDPOINT` (+ `_BUCKET`, `_ACCESS_KEY`, `_SECRET_KEY`,
//! optional `_REGION`; see [`backends::s3_options`]); each S3 test gets its own key prefix.

pub mod backends;
pub mod conformance;
pub mod fixtures;
