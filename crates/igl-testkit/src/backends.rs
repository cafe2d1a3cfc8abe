//! Fresh, isolated storage backends for tests.

use std::sync::Arc;

use igl_core::Storage;
use igl_store::{PostgresStore, SqliteStore};
use tempfile::TempDir;

/// Environment variable naming the PostgreSQL server for tests.
pub const POSTGRES_URL_VAR: &str = "IGL_TEST_POSTGRES_URL";

/// A storage backend for one test, cleaned up (or left for the CI to drop) afterwards.
#[derive(Debug)]
pub struct TestStorage {
    /// The backend.
    pub storage: Arc<dyn Storage>,
    /// What it is (`sqlite:/tmp/…` or `postgres schema t_…`).
    pub description: String,
    /// Keeps a temporary directory alive as long as the backend.
    pub directory: Option<TempDir>,
}

/// A new SQLite database in a new temporary directory.
pub async fn sqlite() -> TestStorage {
    let directory = tempfile::tempdir().expect("temporary directory");
    let path = directory.path().join("igl.db");
    let store = SqliteStore::open(&path).await.expect("open sqlite");
    TestStorage {
        storage: Arc::new(store),
        description: format!("sqlite:{}", path.display()),
        directory: Some(directory),
    }
}

/// The PostgreSQL URL for tests, if configured.
pub fn postgres_url() -> Option<String> {
    std::env::var(POSTGRES_URL_VAR)
        .ok()
        .filter(|url| !url.is_empty())
}

/// A new, empty schema on the test PostgreSQL server. Panics when
/// [`POSTGRES_URL_VAR`] is not set (tests that call it are ignored in that case).
pub async fn postgres() -> TestStorage {
    let url = postgres_url().unwrap_or_else(|| panic!("{POSTGRES_URL_VAR} is not set"));
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let store = PostgresStore::connect(&url, 8, Some(&schema))
        .await
        .expect("connect postgres");
    TestStorage {
        storage: Arc::new(store),
        description: format!("postgres schema {schema}"),
        directory: None,
    }
}
