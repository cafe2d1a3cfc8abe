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

/// Environment variable naming the RabbitMQ server for tests
/// (`amqp://guest:guest@127.0.0.1:5672/%2f`).
pub const AMQP_URL_VAR: &str = "IGL_TEST_AMQP_URL";

/// The RabbitMQ URL for tests, if configured.
pub fn amqp_url() -> Option<String> {
    std::env::var(AMQP_URL_VAR)
        .ok()
        .filter(|url| !url.is_empty())
}

/// A job queue on the test RabbitMQ whose queues carry a prefix unique to this test, so
/// tests never see each other's jobs.
#[derive(Debug)]
pub struct TestBroker {
    /// The queue.
    pub queue: igl_queue::AmqpQueue,
    /// Its options (to connect a second instance, "another process", to the same queues).
    pub options: igl_queue::AmqpOptions,
}

impl TestBroker {
    /// Deletes the queues `names` of this test from the broker (call at the end of a test
    /// that passed; CI also starts every run on a fresh vhost).
    pub async fn cleanup(&self, names: &[&str]) {
        let queues: Vec<_> = names
            .iter()
            .map(|name| crate::fixtures::queue(name))
            .collect();
        self.queue
            .delete_topology(&queues)
            .await
            .expect("delete test queues");
        self.queue.close().await;
    }
}

/// A fresh [`TestBroker`]. Panics when [`AMQP_URL_VAR`] is not set (tests that call it are
/// ignored in that case).
pub async fn amqp() -> TestBroker {
    let url = amqp_url().unwrap_or_else(|| panic!("{AMQP_URL_VAR} is not set"));
    let mut options = igl_queue::AmqpOptions::new(url);
    options.prefix = format!("t{}.", uuid::Uuid::new_v4().simple());
    options.connection_name = "igl-testkit".into();
    let queue = igl_queue::AmqpQueue::connect(options.clone())
        .await
        .expect("connect to rabbitmq");
    TestBroker { queue, options }
}
