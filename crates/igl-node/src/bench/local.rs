//! A node started in this process for a benchmark, on a fresh SQLite file or a fresh
//! PostgreSQL schema, with the development token [`TOKEN`].

use anyhow::Context;
use igl_config::{Component, SecretString, Settings};
use tokio_util::sync::CancellationToken;

/// The bearer token of benchmark nodes (party `dev` of AU).
pub const TOKEN: &str = "igl-bench-token";

/// A node started in this process for the benchmark.
pub struct LocalNode {
    /// Where its HTTP APIs listen, when any is enabled.
    pub addr: Option<std::net::SocketAddr>,
    /// `sqlite` or `postgres`.
    pub backend: String,
    running: igl_node::RunningNode,
    shutdown: CancellationToken,
    cleanup_schema: Option<(String, String)>,
    _directory: tempfile::TempDir,
}

impl LocalNode {
    /// Starts `components` on a fresh SQLite file in a temporary directory, or on a fresh
    /// schema of `database_url`; `configure` adjusts the settings last.
    pub async fn start(
        database_url: Option<&str>,
        components: Vec<Component>,
        configure: impl FnOnce(&mut Settings),
    ) -> anyhow::Result<Self> {
        let directory = tempfile::tempdir()?;
        let mut settings = Settings::default();
        settings.node.data_dir = directory.path().to_path_buf();
        settings.http.bind = "127.0.0.1:0".parse()?;
        settings.components = components;
        let mut cleanup_schema = None;
        let mut backend = "sqlite".to_owned();
        if let Some(url) = database_url {
            let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
            settings.database.url = Some(SecretString::new(url));
            settings.database.schema = Some(schema.clone());
            settings.database.max_connections = 16;
            cleanup_schema = Some((url.to_owned(), schema));
            backend = "postgres".to_owned();
        }
        configure(&mut settings);
        let shutdown = CancellationToken::new();
        let options = igl_node::NodeOptions {
            settings,
            dev_token: Some(TOKEN.into()),
            listener: None,
        };
        let running = igl_node::start(options, shutdown.clone()).await?;
        let addr = running.http_addr;
        Ok(Self {
            addr,
            backend,
            running,
            shutdown,
            cleanup_schema,
            _directory: directory,
        })
    }

    /// The base URL of its HTTP APIs.
    pub fn base_url(&self) -> anyhow::Result<String> {
        let addr = self.addr.context("the benchmark node has no HTTP API")?;
        Ok(format!("http://{addr}"))
    }

    /// The node's storage.
    pub fn storage(&self) -> std::sync::Arc<dyn igl_core::Storage> {
        self.running.backends.storage.clone()
    }

    /// Stops the node and drops its PostgreSQL schema.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.running.wait().await?;
        if let Some((url, schema)) = self.cleanup_schema {
            igl_store::PostgresStore::drop_schema(&url, &schema).await?;
        }
        Ok(())
    }
}
