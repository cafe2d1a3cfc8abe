//! `TestNode`: a whole node on embedded (or PostgreSQL) storage, listening on port 0, with
//! an HTTP client that authenticates with the node's development token.
//!
//! Workers are NOT started by default: tests drive the pipeline deterministically with
//! [`TestNode::drain`], which runs the real handlers until their queue has nothing due.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use igl_config::{Component, SecretString, Settings};
use igl_core::{JobQueue, QueueName};
use igl_node::{NodeOptions, RunningNode};
use igl_workers::{DrainReport, WorkerConfig};
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

/// The development token every test node accepts.
pub const TOKEN: &str = "igl-dev-test-token";

/// Which database a test node uses.
#[derive(Debug, Clone)]
pub enum Database {
    /// A SQLite file in the node's data directory.
    Sqlite,
    /// A PostgreSQL schema (`IGL_TEST_POSTGRES_URL` must be set).
    Postgres { schema: String },
}

/// Builder of a [`TestNode`].
#[derive(Debug)]
pub struct TestNodeBuilder {
    jurisdiction: String,
    components: Vec<Component>,
    data_dir: Option<TempDir>,
    database: Database,
    max_document_bytes: Option<u64>,
    static_tokens: Vec<(String, String)>,
    insecure_legacy_document_auth: bool,
    channels: Vec<(String, String)>,
    configure: Vec<Configure>,
    listener: Option<std::net::TcpListener>,
}

/// A settings change applied by [`TestNodeBuilder::configure`].
pub struct Configure(Box<dyn FnOnce(&mut Settings) + Send>);

impl std::fmt::Debug for Configure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Configure")
    }
}

impl TestNodeBuilder {
    /// `documents.max_bytes` (default: the setting's default, 100 MiB).
    pub fn max_document_bytes(mut self, max_bytes: u64) -> Self {
        self.max_document_bytes = Some(max_bytes);
        self
    }

    /// An extra `[[auth.static_tokens]]` entry (party `test-<jurisdiction>`), e.g. to call
    /// as another jurisdiction. Tokens need at least 16 characters.
    pub fn static_token(mut self, token: &str, jurisdiction: &str) -> Self {
        self.static_tokens.push((token.into(), jurisdiction.into()));
        self
    }

    /// `auth.insecure_legacy_document_auth` (default off).
    pub fn insecure_legacy_document_auth(mut self, enabled: bool) -> Self {
        self.insecure_legacy_document_auth = enabled;
        self
    }

    /// The node's jurisdiction (default AU).
    pub fn jurisdiction(mut self, jurisdiction: &str) -> Self {
        self.jurisdiction = jurisdiction.into();
        self
    }

    /// The components to run (default: every API, no worker).
    pub fn components(mut self, components: &[Component]) -> Self {
        self.components = components.to_vec();
        self
    }

    /// Reuse a data directory (to restart a node on the same state).
    pub fn data_dir(mut self, data_dir: TempDir) -> Self {
        self.data_dir = Some(data_dir);
        self
    }

    /// Configures a channel `id` with endpoint `url`.
    pub fn channel(mut self, id: &str, url: &str) -> Self {
        self.channels.push((id.into(), url.into()));
        self
    }

    /// Changes the settings just before the node starts.
    pub fn configure(mut self, change: impl FnOnce(&mut Settings) + Send + 'static) -> Self {
        self.configure.push(Configure(Box::new(change)));
        self
    }

    /// Serves the APIs on this already bound listener (to know the URL in advance).
    pub fn listener(mut self, listener: std::net::TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// Use a PostgreSQL schema instead of SQLite.
    pub fn database(mut self, database: Database) -> Self {
        self.database = database;
        self
    }

    /// Starts the node.
    pub async fn start(self) -> TestNode {
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| tempfile::tempdir().expect("tempdir"));
        let mut settings = Settings::default();
        settings.node.jurisdiction = self.jurisdiction;
        settings.node.data_dir = data_dir.path().to_path_buf();
        settings.http.bind = "127.0.0.1:0".parse().unwrap();
        settings.components = self.components;
        if let Some(max_bytes) = self.max_document_bytes {
            settings.documents.max_bytes = max_bytes;
        }
        for (token, jurisdiction) in self.static_tokens {
            settings
                .auth
                .static_tokens
                .push(igl_config::StaticTokenSettings {
                    token: SecretString::new(token),
                    party: format!("test-{jurisdiction}"),
                    jurisdiction,
                });
        }
        settings.auth.insecure_legacy_document_auth = self.insecure_legacy_document_auth;
        settings.hub.allow_private_callbacks = true;
        for (id, url) in self.channels {
            settings.channels.push(igl_config::ChannelSettings {
                id,
                url,
                receivers: vec!["SG".into()],
                ..Default::default()
            });
        }
        if let Database::Postgres { schema } = &self.database {
            let url = std::env::var("IGL_TEST_POSTGRES_URL").expect("IGL_TEST_POSTGRES_URL");
            settings.database.url = Some(SecretString::new(url));
            settings.database.schema = Some(schema.clone());
        }
        for Configure(change) in self.configure {
            change(&mut settings);
        }
        settings.validate().expect("test settings are valid");
        let shutdown = CancellationToken::new();
        let options = NodeOptions {
            settings,
            dev_token: Some(TOKEN.into()),
            listener: self.listener,
        };
        let running = igl_node::start(options, shutdown.clone())
            .await
            .expect("node starts");
        let base = format!("http://{}", running.http_addr.expect("http enabled"));
        TestNode {
            base,
            client: reqwest::Client::new(),
            running: Some(running),
            shutdown,
            data_dir,
            database: self.database,
        }
    }
}

/// A running node.
#[derive(Debug)]
pub struct TestNode {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// A plain client; [`TestNode::request`] adds the token.
    pub client: reqwest::Client,
    running: Option<RunningNode>,
    shutdown: CancellationToken,
    data_dir: TempDir,
    database: Database,
}

/// A fresh PostgreSQL schema name for a test.
pub fn fresh_schema() -> String {
    format!("t_{}", uuid::Uuid::new_v4().simple())
}

/// Whether the PostgreSQL variants of tests can run.
pub fn postgres_configured() -> bool {
    std::env::var("IGL_TEST_POSTGRES_URL").is_ok_and(|url| !url.is_empty())
}

impl TestNode {
    /// A builder with the defaults: AU, SQLite, every API, no workers.
    pub fn builder() -> TestNodeBuilder {
        TestNodeBuilder {
            jurisdiction: "AU".into(),
            components: vec![
                Component::MessageApi,
                Component::DocumentApi,
                Component::AdminApi,
                Component::MessageRxApi,
                Component::SubscriptionsApi,
            ],
            data_dir: None,
            database: Database::Sqlite,
            max_document_bytes: None,
            static_tokens: Vec::new(),
            channels: Vec::new(),
            configure: Vec::new(),
            listener: None,
            insecure_legacy_document_auth: false,
        }
    }

    /// A node with the defaults.
    pub async fn start() -> Self {
        Self::builder().start().await
    }

    /// The absolute URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request with the development token.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(TOKEN)
    }

    /// A request without credentials.
    pub fn anonymous(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// The Prometheus text of `GET /metrics` (unauthenticated, like a scraper).
    pub async fn metrics(&self) -> String {
        self.anonymous(Method::GET, "/metrics")
            .send()
            .await
            .expect("scrape /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// POSTs `body` as JSON with the token.
    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.request(Method::POST, path)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// GETs `path` with the token.
    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path)
            .send()
            .await
            .expect("request")
    }

    /// The node's storage.
    pub fn storage(&self) -> Arc<dyn igl_core::Storage> {
        self.running
            .as_ref()
            .expect("running")
            .backends
            .storage
            .clone()
    }

    /// The SQL outbox and the broker, when the node runs with `queue.backend = "amqp"`.
    pub fn outbox(&self) -> Option<igl_node::Outbox> {
        self.running
            .as_ref()
            .expect("running")
            .backends
            .outbox
            .clone()
    }

    /// Runs the node's real handler of `queue` until nothing is due.
    pub async fn drain(&self, queue: QueueName) -> DrainReport {
        let running = self.running.as_ref().expect("running");
        let handler = running
            .handler(&queue)
            .unwrap_or_else(|| panic!("no handler for {queue}"));
        let job_queue: Arc<dyn JobQueue> = running.backends.storage.clone();
        igl_workers::drain(&job_queue, &handler, &WorkerConfig::new(queue))
            .await
            .expect("drain")
    }

    /// Like [`TestNode::drain`], with this retry policy instead of the default one (to see
    /// retries and dead letters without waiting for the default backoff).
    pub async fn drain_with_retry(
        &self,
        queue: QueueName,
        retry: igl_workers::RetryPolicy,
    ) -> DrainReport {
        let running = self.running.as_ref().expect("running");
        let handler = running
            .handler(&queue)
            .unwrap_or_else(|| panic!("no handler for {queue}"));
        let job_queue: Arc<dyn JobQueue> = running.backends.storage.clone();
        let config = WorkerConfig {
            retry,
            ..WorkerConfig::new(queue)
        };
        igl_workers::drain(&job_queue, &handler, &config)
            .await
            .expect("drain")
    }

    /// Stops the node and returns its data directory (to start it again on the same state).
    pub async fn stop(mut self) -> (TempDir, Database) {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            running.wait().await.expect("node stops cleanly");
        }
        (self.data_dir, self.database)
    }

    /// The data directory.
    pub fn data_path(&self) -> &Path {
        self.data_dir.path()
    }
}

/// Reads a JSON body.
pub async fn json(response: Response) -> Value {
    let text = response.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}
