//! Composition root: settings → backends → components.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use igl_api::auth::{Authenticator, StaticToken};
use igl_api::{AppContext, EnabledApis};
use igl_config::{Component, DatabaseBackend, ObjectStoreSettings, Settings};
use igl_core::ingest::{IngestConfig, MessageIngest};
use igl_core::pipeline::PROCESS_QUEUE;
use igl_core::{JobQueue, ObjectStore, QueueName, Storage};
use igl_domain::Jurisdiction;
use igl_store::objects::ObjectLake;
use igl_store::{DatabaseOptions, open_storage};
use igl_workers::handlers::ProcessMessage;
use igl_workers::{JobHandler, RetryPolicy, WorkerConfig, WorkerSet};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// How long components get to finish their current work after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// The backends a node runs on.
#[derive(Debug, Clone)]
pub struct Backends {
    /// Messages, jobs, events, ACL.
    pub storage: Arc<dyn Storage>,
    /// Documents.
    pub objects: Arc<dyn ObjectStore>,
}

/// What to start.
#[derive(Debug)]
pub struct NodeOptions {
    /// The validated configuration.
    pub settings: Settings,
    /// A development bearer token (party `dev` of the node's jurisdiction) accepted in
    /// addition to the configured credentials; `igl node --dev` sets it.
    pub dev_token: Option<String>,
    /// A listener already bound for the HTTP APIs, used instead of binding `http.bind`
    /// (lets a caller know the address before the node starts, e.g. to configure peers).
    pub listener: Option<std::net::TcpListener>,
}

impl NodeOptions {
    /// Options for `settings` with no development token and no pre-bound listener.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            dev_token: None,
            listener: None,
        }
    }
}

/// Opens the database (applying migrations) and the object store.
pub async fn open_backends(settings: &Settings) -> anyhow::Result<Backends> {
    let options = DatabaseOptions {
        url: settings.database_url(),
        max_connections: settings.database.max_connections,
        schema: settings.database.schema.clone(),
        connect_timeout: settings.database.connect_timeout(),
    };
    let storage = open_storage(&options).await.with_context(|| {
        format!(
            "cannot open the database {}",
            settings.redacted_database_url()
        )
    })?;
    let objects: Arc<dyn ObjectStore> = match &settings.objects {
        ObjectStoreSettings::Local { .. } => {
            let path = settings
                .local_objects_path()
                .context("no path for the local object store")?;
            let lake = ObjectLake::local(&path)
                .with_context(|| format!("cannot open the object store at {}", path.display()))?;
            Arc::new(lake)
        }
    };
    Ok(Backends { storage, objects })
}

/// A started node.
#[derive(Debug)]
pub struct RunningNode {
    /// Where the HTTP APIs listen, when any is enabled.
    pub http_addr: Option<SocketAddr>,
    /// The node's backends (tests inspect them directly).
    pub backends: Backends,
    /// The node's jurisdiction.
    pub jurisdiction: Jurisdiction,
    shutdown: CancellationToken,
    http: JoinSet<anyhow::Result<()>>,
    workers: WorkerSet,
}

/// Opens the backends and starts every enabled component. Returns once the HTTP listener
/// is bound and the workers run.
pub async fn start(
    options: NodeOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningNode> {
    let NodeOptions {
        settings,
        dev_token,
        listener: prebound,
    } = options;
    // Before any component registers metrics: handles taken earlier would stay no-ops.
    let metrics = install_metrics_recorder();
    let jurisdiction = Jurisdiction::parse(&settings.node.jurisdiction)
        .with_context(|| format!("node.jurisdiction {:?}", settings.node.jurisdiction))?;
    let backends = open_backends(&settings).await?;
    backends
        .storage
        .ping()
        .await
        .context("database does not answer")?;
    backends
        .objects
        .ping()
        .await
        .context("object store does not answer")?;

    let mut workers = WorkerSet::new(&shutdown);
    if settings.is_enabled(Component::MessageProcessor) {
        let handler = Arc::new(ProcessMessage::new(backends.storage.clone(), jurisdiction));
        spawn_worker(&mut workers, &settings, &backends, PROCESS_QUEUE, handler);
    }

    let enabled = EnabledApis {
        messages: settings.is_enabled(Component::MessageApi),
        documents: settings.is_enabled(Component::DocumentApi),
        admin: settings.is_enabled(Component::AdminApi),
        reception: settings.is_enabled(Component::MessageRxApi),
    };
    let mut http = JoinSet::new();
    let mut http_addr = None;
    if enabled != EnabledApis::default() {
        let ingest = MessageIngest::start(backends.storage.clone(), ingest_config(&settings));
        let mut auth = Authenticator::from_settings(&settings.auth, jurisdiction)
            .await
            .context("cannot set up authentication")?;
        if let Some(token) = dev_token {
            auth = auth.with_static_token(StaticToken {
                token,
                party: "dev".into(),
                jurisdiction,
            });
        }
        if !auth.accepts_any_caller() {
            tracing::warn!(
                "no credentials are configured ([auth] static_tokens, [auth.jwt] or anonymous): \
                 every API request will be rejected with 401; use `igl node --dev` to try the node"
            );
        }
        let state = Arc::new(AppContext {
            jurisdiction,
            storage: backends.storage.clone(),
            objects: backends.objects.clone(),
            ingest,
            auth,
            channel_ids: settings
                .channels
                .iter()
                .map(|channel| channel.id.clone())
                .collect(),
            max_document_bytes: settings.documents.max_bytes,
            insecure_legacy_document_auth: settings.auth.insecure_legacy_document_auth,
            metrics,
        });
        let listener = match prebound {
            Some(listener) => {
                listener.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(listener)?
            }
            None => tokio::net::TcpListener::bind(settings.http.bind)
                .await
                .with_context(|| format!("cannot listen on {}", settings.http.bind))?,
        };
        let addr = listener.local_addr()?;
        http_addr = Some(addr);
        let app = igl_api::app(state, enabled);
        let stop = shutdown.child_token();
        http.spawn(async move {
            igl_api::serve(listener, app, stop)
                .await
                .context("http server failed")
        });
        info!(%addr, "http apis listening");
    }
    info!(
        %jurisdiction,
        database = %settings.redacted_database_url(),
        workers = workers.len(),
        "node started"
    );
    Ok(RunningNode {
        http_addr,
        backends,
        jurisdiction,
        shutdown,
        http,
        workers,
    })
}

/// Installs the process-wide Prometheus recorder of the `metrics` facade on first call and
/// returns its handle (`None` if another recorder was installed first, e.g. by an embedding
/// program). A process has one global recorder, so every node started in it (tests start
/// several) shares one registry: their series are merged. A background thread runs the
/// recorder's upkeep (draining histograms) every few seconds.
pub fn install_metrics_recorder() -> Option<igl_api::admin::PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<igl_api::admin::PrometheusHandle>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = match igl_api::admin::prometheus_builder().install_recorder() {
                Ok(handle) => handle,
                Err(error) => {
                    tracing::warn!(%error, "metrics recorder not installed; /metrics is unavailable");
                    return None;
                }
            };
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                });
            if let Err(error) = spawned {
                tracing::warn!(%error, "no metrics upkeep thread; histograms drain on scrape only");
            }
            Some(handle)
        })
        .clone()
}

fn ingest_config(settings: &Settings) -> IngestConfig {
    let concurrent_batches = match settings.database.backend() {
        DatabaseBackend::Sqlite => 1,
        DatabaseBackend::Postgres => 4,
    };
    IngestConfig {
        concurrent_batches,
        ..IngestConfig::default()
    }
}

fn spawn_worker(
    workers: &mut WorkerSet,
    settings: &Settings,
    backends: &Backends,
    queue: QueueName,
    handler: Arc<dyn JobHandler>,
) {
    let policy = settings.queue.retry_policy(queue.as_str());
    let config = WorkerConfig {
        claim_batch: settings.queue.claim_batch as usize,
        lease: settings.queue.lease(),
        idle_poll: settings.queue.poll_interval(),
        retry: RetryPolicy {
            max_attempts: policy.max_attempts,
            base_delay: policy.base_delay(),
            max_delay: policy.max_delay(),
        },
        ..WorkerConfig::new(queue)
    };
    let job_queue: Arc<dyn JobQueue> = backends.storage.clone();
    workers.spawn(job_queue, handler, config);
}

impl RunningNode {
    /// The token that stops this node.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs until shutdown is requested or a component fails, then stops every component
    /// (finishing current requests and jobs, within a grace period). A component failure is
    /// returned as the error.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut failure = None;
        tokio::select! {
            () = self.shutdown.cancelled() => {}
            Some(result) = self.http.join_next() => {
                failure = Some(flatten(result).context("http apis stopped"));
            }
            Some((name, result)) = self.workers.join_next() => {
                failure = Some(result.map_err(anyhow::Error::from).with_context(|| format!("worker {name} stopped")));
            }
        }
        self.shutdown.cancel();
        let drained = self.workers.shutdown(SHUTDOWN_GRACE).await;
        while let Some(result) = self.http.join_next().await {
            if let Err(error) = flatten(result) {
                failure.get_or_insert(Err(error));
            }
        }
        info!(workers_finished_cleanly = drained, "node stopped");
        match failure {
            Some(Err(error)) => Err(error),
            _ => Ok(()),
        }
    }
}

fn flatten(result: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    result.context("component task panicked")?
}
