//! Fresh, isolated storage backends for tests.

use std::sync::Arc;

use igl_core::Storage;
use igl_store::objects::{ObjectLake, S3Credentials, S3Options};
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
    /// Connects a queue with `options` (panics when the broker cannot be reached).
    pub async fn connect(options: igl_queue::AmqpOptions) -> Self {
        let queue = igl_queue::AmqpQueue::connect(options.clone())
            .await
            .expect("connect to rabbitmq");
        TestBroker { queue, options }
    }

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
    TestBroker::connect(amqp_options()).await
}

/// Options for the test RabbitMQ with a fresh queue prefix (to change before connecting a
/// [`TestBroker`]). Panics when [`AMQP_URL_VAR`] is not set.
pub fn amqp_options() -> igl_queue::AmqpOptions {
    let url = amqp_url().unwrap_or_else(|| panic!("{AMQP_URL_VAR} is not set"));
    let mut options = igl_queue::AmqpOptions::new(url);
    options.prefix = format!("t{}.", uuid::Uuid::new_v4().simple());
    options.connection_name = "igl-testkit".into();
    options
}

/// Environment variable naming a TLS listener of the test RabbitMQ
/// (`amqps://guest:guest@localhost:5671/%2f`); [`AMQP_CA_FILE_VAR`] must name the CA that
/// signed its certificate.
pub const AMQPS_URL_VAR: &str = "IGL_TEST_AMQPS_URL";
/// Environment variable naming the PEM file of the CA of [`AMQPS_URL_VAR`]'s certificate.
pub const AMQP_CA_FILE_VAR: &str = "IGL_TEST_AMQP_CA_FILE";

/// Options for the test RabbitMQ's TLS listener with a fresh queue prefix, trusting the
/// test CA. `None` when [`AMQPS_URL_VAR`] is not set; panics naming [`AMQP_CA_FILE_VAR`]
/// when that is missing or unreadable.
pub fn amqps_options() -> Option<igl_queue::AmqpOptions> {
    let url = std::env::var(AMQPS_URL_VAR)
        .ok()
        .filter(|url| !url.is_empty())?;
    let ca_file = std::env::var(AMQP_CA_FILE_VAR)
        .unwrap_or_else(|_| panic!("{AMQPS_URL_VAR} is set but {AMQP_CA_FILE_VAR} is not"));
    let ca = std::fs::read_to_string(&ca_file)
        .unwrap_or_else(|error| panic!("cannot read {AMQP_CA_FILE_VAR} {ca_file}: {error}"));
    let mut options = igl_queue::AmqpOptions::new(url);
    options.ca_certificates = Some(ca);
    options.prefix = format!("t{}.", uuid::Uuid::new_v4().simple());
    options.connection_name = "igl-testkit-tls".into();
    Some(options)
}

/// Environment variable naming the S3-compatible server for tests (`http://127.0.0.1:PORT`).
/// With it set, [`S3_BUCKET_VAR`], [`S3_ACCESS_KEY_VAR`] and [`S3_SECRET_KEY_VAR`] must be
/// set too; [`S3_REGION_VAR`] is optional (default `us-east-1`).
pub const S3_ENDPOINT_VAR: &str = "IGL_TEST_S3_ENDPOINT";
/// Environment variable naming the (existing) bucket the S3 tests use.
pub const S3_BUCKET_VAR: &str = "IGL_TEST_S3_BUCKET";
/// Environment variable holding the access key id for [`S3_ENDPOINT_VAR`].
pub const S3_ACCESS_KEY_VAR: &str = "IGL_TEST_S3_ACCESS_KEY";
/// Environment variable holding the secret access key for [`S3_ENDPOINT_VAR`].
pub const S3_SECRET_KEY_VAR: &str = "IGL_TEST_S3_SECRET_KEY";
/// Environment variable naming the signing region (optional).
pub const S3_REGION_VAR: &str = "IGL_TEST_S3_REGION";

/// The test S3 server and bucket from the `IGL_TEST_S3_*` variables, with a fresh key
/// prefix (`t-<uuid>`), so every caller sees an empty store. `None` when
/// [`S3_ENDPOINT_VAR`] is not set; panics naming the variable when another one is missing.
pub fn s3_options() -> Option<S3Options> {
    let endpoint = std::env::var(S3_ENDPOINT_VAR)
        .ok()
        .filter(|endpoint| !endpoint.is_empty())?;
    let required = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|value| !value.is_empty())
            .unwrap_or_else(|| panic!("{S3_ENDPOINT_VAR} is set, so {name} must be set too"))
    };
    Some(S3Options {
        bucket: required(S3_BUCKET_VAR),
        region: std::env::var(S3_REGION_VAR)
            .ok()
            .filter(|region| !region.is_empty())
            .unwrap_or_else(|| "us-east-1".to_owned()),
        allow_http: endpoint.starts_with("http://"),
        endpoint: Some(endpoint),
        path_style: true,
        prefix: format!("t-{}", uuid::Uuid::new_v4().simple()),
        credentials: Some(S3Credentials {
            access_key_id: required(S3_ACCESS_KEY_VAR),
            secret_access_key: required(S3_SECRET_KEY_VAR),
            session_token: None,
        }),
        environment: Vec::new(),
    })
}

/// An S3 object lake under a fresh prefix of the test bucket, and its options. Panics when
/// [`S3_ENDPOINT_VAR`] is not set (tests that call it are ignored in that case).
pub fn s3_lake() -> (ObjectLake, S3Options) {
    let options = s3_options().unwrap_or_else(|| panic!("{S3_ENDPOINT_VAR} is not set"));
    let lake = ObjectLake::s3(&options).expect("failed to configure the s3 object lake");
    (lake, options)
}
