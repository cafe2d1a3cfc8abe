//! Runs every port conformance suite against every adapter: SQLite always, PostgreSQL when
//! `IGL_TEST_POSTGRES_URL` is set (otherwise those tests are listed as ignored, with the
//! reason).

mod objects;
mod storage;
