//! Composition root: settings → backends → components.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use igl_api::auth::{Authenticator, StaticToken};
use igl_api::{AppContext, EnabledApis};
use igl_config::{
    Component, DatabaseBackend, ObjectStoreSettings, QueueBackend, S3ObjectSettings, Settings,
};
use igl_core::channel::Channels;
use igl_core::ingest::{IngestConfig, MessageIngest};
use igl_core::pipeline::{
    CHANNEL_MESSAGE_QUEUE, CHANNEL_POLL_QUEUE, DELIVER_QUEUE, OBJECT_RETRIEVAL_QUEUE,
    PROCESS_QUEUE, REDELIVER_QUEUE, ROUTE_QUEUE, SPREAD_QUEUE, VERIFY_QUEUE,
};
use igl_core::{JobQueue, ObjectStore, QueueName, Storage};
use igl_domain::Jurisdiction;
use igl_queue::{AmqpOptions, AmqpQueue, BrokeredStorage, OutboxRelay, RelayConfig};
use igl_store::objects::{ObjectLake, S3Credentials, S3Options};
use igl_store::{DatabaseOptions, open_storage};
use igl_websub::{Deliver, Spread, VerifyIntent};
use igl_workers::handlers::{
    DocumentSource, FetchObject, PollChannel, ProcessMessage, RetrieveChannelMessage, RouteMessage,
    SpiderConfig,
};
use igl_workers::{ChannelSubscriptions, SubscriberConfig};
use igl_workers::{JobHandler, RetryPolicy, WorkerConfig, WorkerSet};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// How long components get to finish their current work after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Every queue of the pipeline: the queues the node's workers consume, and so the queues
/// the outbox relay publishes and the broker topology covers.
pub const PIPELINE_QUEUES: [QueueName; 9] = [
    PROCESS_QUEUE,
    ROUTE_QUEUE,
    CHANNEL_POLL_QUEUE,
    CHANNEL_MESSAGE_QUEUE,
    OBJECT_RETRIEVAL_QUEUE,
    SPREAD_QUEUE,
    DELIVER_QUEUE,
    REDELIVER_QUEUE,
    VERIFY_QUEUE,
];

/// The backends a node runs on.
#[derive(Debug, Clone)]
pub struct Backends {
    /// Messages, jobs, events, ACL. With `queue.backend = "amqp"` this is a
    /// [`BrokeredStorage`]: jobs are consumed from RabbitMQ, enqueued into the SQL outbox.
    pub storage: Arc<dyn Storage>,
    /// Documents.
    pub objects: Arc<dyn ObjectStore>,
    /// The SQL outbox and the broker it is relayed to, with `queue.backend = "amqp"`.
    pub outbox: Option<Outbox>,
}

/// The two sides of the outbox relay.
#[derive(Debug, Clone)]
pub struct Outbox {
    /// The SQL backend whose `jobs` table is the outbox.
    pub sql: Arc<dyn Storage>,
    /// The broker.
    pub broker: AmqpQueue,
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
    let sql = open_storage(&options).await.with_context(|| {
        format!(
            "cannot open the database {}",
            settings.redacted_database_url()
        )
    })?;
    let (storage, outbox): (Arc<dyn Storage>, _) = match settings.queue.backend {
        QueueBackend::Sql => (sql, None),
        QueueBackend::Amqp => {
            let amqp = &settings.queue.amqp;
            let url = amqp
                .url
                .as_ref()
                .context("queue.amqp.url is required when queue.backend = \"amqp\"")?;
            let mut broker_options = AmqpOptions::new(url.expose_secret());
            if let Some(ca_file) = &amqp.ca_file {
                let pem = std::fs::read_to_string(ca_file).with_context(|| {
                    format!("cannot read queue.amqp.ca_file {}", ca_file.display())
                })?;
                broker_options.ca_certificates = Some(pem);
            }
            broker_options.prefix = amqp.prefix.clone();
            broker_options.prefetch = amqp.prefetch;
            broker_options.delivery_limit = amqp.delivery_limit;
            broker_options.jobs_per_message = amqp.jobs_per_message as usize;
            broker_options.queues = PIPELINE_QUEUES.to_vec();
            broker_options.connection_name = format!("igl-node {}", settings.node.jurisdiction);
            let broker = AmqpQueue::connect(broker_options).await.with_context(|| {
                format!(
                    "cannot connect to the broker {}",
                    settings.redacted_amqp_url().unwrap_or_default()
                )
            })?;
            let brokered = BrokeredStorage::new(sql.clone(), broker.clone());
            (Arc::new(brokered), Some(Outbox { sql, broker }))
        }
    };
    let objects: Arc<dyn ObjectStore> = match &settings.objects {
        ObjectStoreSettings::Local { .. } => {
            let path = settings
                .local_objects_path()
                .context("no path for the local object store")?;
            let lake = ObjectLake::local(&path)
                .with_context(|| format!("cannot open the object store at {}", path.display()))?;
            Arc::new(lake)
        }
        ObjectStoreSettings::S3(s3) => {
            let options = s3_options(s3, std::env::vars().collect());
            let lake = ObjectLake::s3(&options)
                .with_context(|| format!("cannot set up the object store: {}", s3.describe()))?;
            Arc::new(lake)
        }
    };
    Ok(Backends {
        storage,
        objects,
        outbox,
    })
}

/// The adapter's options for `[objects] type = "s3"`; `environment` (the process
/// environment) supplies the standard AWS credential variables when the settings have no
/// `access_key_id`.
pub fn s3_options(settings: &S3ObjectSettings, environment: Vec<(String, String)>) -> S3Options {
    let credentials = match (&settings.access_key_id, &settings.secret_access_key) {
        (Some(access_key_id), Some(secret_access_key)) => Some(S3Credentials {
            access_key_id: access_key_id.clone(),
            secret_access_key: secret_access_key.expose_secret().to_owned(),
            session_token: settings
                .session_token
                .as_ref()
                .map(|token| token.expose_secret().to_owned()),
        }),
        // Validation requires both or neither.
        _ => None,
    };
    S3Options {
        bucket: settings.bucket.clone(),
        region: settings.region.clone(),
        endpoint: settings.endpoint.clone(),
        path_style: settings.path_style,
        allow_http: settings.allow_http,
        prefix: settings.prefix.clone().unwrap_or_default(),
        environment: if credentials.is_some() {
            Vec::new()
        } else {
            environment
        },
        credentials,
    }
}

/// A started node.
#[derive(Debug)]
pub struct RunningNode {
    /// Where the HTTP APIs listen, when any is enabled.
    pub http_addr: Option<SocketAddr>,
    /// The base URL other parties reach this node at (`node.public_url`, or the bound
    /// address).
    pub public_url: Option<String>,
    /// The node's backends (tests inspect them directly).
    pub backends: Backends,
    /// The node's jurisdiction.
    pub jurisdiction: Jurisdiction,
    handlers: BTreeMap<QueueName, Arc<dyn JobHandler>>,
    shutdown: CancellationToken,
    tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
    workers: WorkerSet,
}

/// Job handlers by queue, with the component that runs them.
type Handlers = BTreeMap<QueueName, (Component, Arc<dyn JobHandler>)>;

/// Every job handler of the pipeline, keyed by the queue it consumes, built once. The node
/// spawns workers for the enabled components; tests drive the same handlers with
/// [`igl_workers::drain`] through [`RunningNode::handler`].
fn pipeline_handlers(
    settings: &Settings,
    backends: &Backends,
    jurisdiction: Jurisdiction,
    hub: &igl_websub::HubConfig,
    channels: &Arc<Channels>,
) -> anyhow::Result<Handlers> {
    let storage = backends.storage.clone();
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .context("cannot build the HTTP client")?;
    let mut sources = Vec::new();
    for (code, source) in &settings.jurisdictions {
        let code = Jurisdiction::parse(code)
            .with_context(|| format!("jurisdictions.{code} is not a jurisdiction"))?;
        sources.push((
            code,
            DocumentSource {
                base_url: source.document_api_url.clone(),
                token: source
                    .token
                    .as_ref()
                    .map(|token| token.expose_secret().to_owned()),
                legacy: source.legacy_document_api,
            },
        ));
    }
    let spider_config = SpiderConfig {
        max_bytes: settings.documents.max_bytes,
        ..SpiderConfig::default()
    };
    let spider = FetchObject::new(
        storage.clone(),
        backends.objects.clone(),
        jurisdiction,
        sources,
        spider_config,
    )
    .context("cannot set up the object spider")?;

    let mut handlers = Handlers::new();
    let mut add = |queue: QueueName, component: Component, handler: Arc<dyn JobHandler>| {
        handlers.insert(queue, (component, handler));
    };
    add(
        PROCESS_QUEUE,
        Component::MessageProcessor,
        Arc::new(ProcessMessage::new(storage.clone(), jurisdiction)),
    );
    add(
        ROUTE_QUEUE,
        Component::Router,
        Arc::new(RouteMessage::new(storage.clone(), channels.clone())),
    );
    add(
        CHANNEL_POLL_QUEUE,
        Component::ChannelPoller,
        Arc::new(PollChannel::new(storage.clone(), channels.clone())),
    );
    add(
        CHANNEL_MESSAGE_QUEUE,
        Component::Retriever,
        Arc::new(RetrieveChannelMessage::new(
            storage.clone(),
            channels.clone(),
            jurisdiction,
        )),
    );
    add(
        OBJECT_RETRIEVAL_QUEUE,
        Component::ObjectSpider,
        Arc::new(spider),
    );
    add(
        SPREAD_QUEUE,
        Component::Spreader,
        Arc::new(Spread::new(storage.clone())),
    );
    // One deliverer for both lanes: they share which subscriptions are slow.
    let deliver = Arc::new(Deliver::new(storage.clone(), http.clone(), hub.clone()));
    add(DELIVER_QUEUE, Component::Deliverer, deliver.clone());
    add(REDELIVER_QUEUE, Component::Deliverer, deliver);
    add(
        VERIFY_QUEUE,
        Component::Deliverer,
        Arc::new(VerifyIntent::new(storage, http, hub.clone())),
    );
    Ok(handlers)
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

    let enabled = EnabledApis {
        messages: settings.is_enabled(Component::MessageApi),
        documents: settings.is_enabled(Component::DocumentApi),
        admin: settings.is_enabled(Component::AdminApi),
        reception: settings.is_enabled(Component::MessageRxApi),
        subscriptions: settings.is_enabled(Component::SubscriptionsApi),
    };
    let listener = if enabled == EnabledApis::default() {
        None
    } else {
        Some(match prebound {
            Some(listener) => {
                listener.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(listener)?
            }
            None => tokio::net::TcpListener::bind(settings.http.bind)
                .await
                .with_context(|| format!("cannot listen on {}", settings.http.bind))?,
        })
    };
    let http_addr = listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let public_url = settings
        .node
        .public_url
        .clone()
        .or_else(|| http_addr.map(|addr| format!("http://{addr}")))
        .map(|url| url.trim_end_matches('/').to_owned());
    let hub_base = settings
        .hub
        .public_url
        .clone()
        .or_else(|| public_url.clone())
        .unwrap_or_default();
    let hub = igl_websub::HubConfig {
        hub_url: format!("{}/api/v1/subscriptions", hub_base.trim_end_matches('/')),
        callbacks: igl_websub::policy::CallbackPolicy {
            allow_private: settings.hub.allow_private_callbacks,
        },
        timeout: Duration::from_secs(settings.hub.timeout_secs),
        fanout_budget: Duration::from_millis(settings.hub.fanout_budget_ms),
        max_in_flight: 1024,
        max_subscriptions: settings.hub.max_subscriptions,
        slow_lane_max_attempts: settings
            .queue
            .retry_policy(REDELIVER_QUEUE.as_str())
            .max_attempts,
    };

    // One client per channel (with its timeouts and circuit breaker), shared by the
    // router, the poller, the retriever and the subscriber.
    let channels = Arc::new(
        igl_channels::client::build_channels(
            &settings.channels,
            igl_channels::client::HttpClientConfig::default(),
        )
        .context("cannot set up the channels")?,
    );
    let handlers = pipeline_handlers(&settings, &backends, jurisdiction, &hub, &channels)?;
    let mut workers = WorkerSet::new(&shutdown);
    for (queue, (component, handler)) in &handlers {
        if settings.is_enabled(*component) {
            spawn_worker(
                &mut workers,
                &settings,
                &backends,
                queue.clone(),
                handler.clone(),
            );
        }
    }
    let mut tasks = JoinSet::new();
    if settings.is_enabled(Component::ChannelSubscriber) && !settings.channels.is_empty() {
        match &public_url {
            Some(public_url) => {
                let config = SubscriberConfig::new(
                    jurisdiction,
                    public_url.clone(),
                    settings
                        .channels
                        .iter()
                        .map(|c| c.id.clone())
                        .collect::<Vec<_>>(),
                );
                let queue: Arc<dyn JobQueue> = backends.storage.clone();
                let subscriber = ChannelSubscriptions::new(channels.clone(), queue, config);
                let stop = shutdown.child_token();
                tasks.spawn(async move {
                    subscriber.run(stop).await;
                    ("channel-subscriber", Ok(()))
                });
            }
            None => tracing::warn!(
                "channel-subscriber needs node.public_url (or an HTTP API of this process) to tell channels where to call; not subscribing"
            ),
        }
    }

    if backends.outbox.is_some() && !settings.is_enabled(Component::OutboxRelay) {
        info!(
            "queue.backend = \"amqp\" and this process does not run outbox-relay: \
             jobs this process enqueues reach the broker once an outbox-relay process runs"
        );
    }
    if settings.is_enabled(Component::OutboxRelay)
        && let Some(outbox) = &backends.outbox
    {
        let relay = OutboxRelay::new(
            outbox.sql.clone(),
            outbox.broker.clone(),
            PIPELINE_QUEUES.to_vec(),
            RelayConfig {
                batch: settings.queue.amqp.relay_batch as usize,
                lease: settings.queue.lease(),
                // Enqueues notify the relay (PostgreSQL NOTIFY across processes) and it
                // sleeps until the next delayed row is due: the poll is only a safety net.
                idle_poll: RelayConfig::default()
                    .idle_poll
                    .max(settings.queue.poll_interval()),
                ..RelayConfig::default()
            },
        );
        let stop = shutdown.child_token();
        tasks.spawn(async move {
            relay.run(stop).await;
            ("outbox-relay", Ok(()))
        });
    }

    if settings.is_enabled(Component::Spreader) {
        let storage = backends.storage.clone();
        let stop = shutdown.child_token();
        tasks.spawn(async move {
            purge_expired_subscriptions(storage, stop).await;
            ("subscription-purge", Ok(()))
        });
    }

    if let Some(listener) = listener {
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
            hub_leases: igl_websub::policy::LeasePolicy {
                default: Duration::from_secs(settings.hub.default_lease_secs),
                min: Duration::from_secs(settings.hub.min_lease_secs),
                max: Duration::from_secs(settings.hub.max_lease_secs),
            },
            hub_callbacks: hub.callbacks,
            channel_ids: settings
                .channels
                .iter()
                .map(|channel| channel.id.clone())
                .collect(),
            max_document_bytes: settings.documents.max_bytes,
            insecure_legacy_document_auth: settings.auth.insecure_legacy_document_auth,
            metrics,
        });
        let app = igl_api::app(state, enabled);
        let stop = shutdown.child_token();
        tasks.spawn(async move {
            let result = igl_api::serve(listener, app, stop)
                .await
                .context("http server failed");
            ("http-apis", result)
        });
        info!(addr = ?http_addr, "http apis listening");
    }
    info!(
        %jurisdiction,
        database = %settings.redacted_database_url(),
        queue = match settings.queue.backend {
            QueueBackend::Sql => "sql".to_owned(),
            QueueBackend::Amqp => settings.redacted_amqp_url().unwrap_or_default(),
        },
        workers = workers.len(),
        "node started"
    );
    let handlers = handlers
        .into_iter()
        .map(|(queue, (_, handler))| (queue, handler))
        .collect();
    Ok(RunningNode {
        http_addr,
        public_url,
        backends,
        jurisdiction,
        handlers,
        shutdown,
        tasks,
        workers,
    })
}

/// Deletes subscriptions whose lease ended, at start and then every ten minutes (expired
/// subscriptions already receive nothing; this keeps the table small).
async fn purge_expired_subscriptions(storage: Arc<dyn Storage>, shutdown: CancellationToken) {
    loop {
        match storage
            .purge_expired(igl_domain::Timestamp::now_utc())
            .await
        {
            Ok(0) => {}
            Ok(purged) => info!(purged, "expired subscriptions purged"),
            Err(error) => tracing::warn!(%error, "expired subscriptions not purged"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(600)) => {}
        }
    }
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
    let configured = settings.queue.queues.contains_key(queue.as_str());
    let policy = settings.queue.retry_policy(queue.as_str());
    let mut retry = RetryPolicy {
        max_attempts: policy.max_attempts,
        base_delay: policy.base_delay(),
        max_delay: policy.max_delay(),
    };
    // Built-in policies where the general default would dead-letter normal traffic: the
    // poller re-checks until the channel confirms (minutes on a blockchain), the router
    // keeps messages waiting while a channel is down. `[queue.queues.<name>]` overrides.
    if !configured && queue == CHANNEL_POLL_QUEUE {
        retry = PollChannel::RECOMMENDED_RETRY;
    } else if !configured && (queue == ROUTE_QUEUE || queue == CHANNEL_MESSAGE_QUEUE) {
        retry = RetryPolicy {
            max_attempts: 30,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(300),
        };
    }
    // Deliveries and verifications wait on other parties' servers: handle many at once so
    // one slow subscriber does not hold up the others (a worker claims again as slots
    // free up, so a slow job holds up only its own slot). Route jobs wait on the channel
    // (a medium commit; blocks on a chain): with 16 at a time, a router carried ~100 msg/s
    // in `igl bench cluster` whatever the CPU left (docs/benchmarks.md, session 7).
    let (workers_count, claim_batch, concurrency) = if queue == DELIVER_QUEUE {
        (4, 8, 8)
    } else if queue == REDELIVER_QUEUE {
        (8, 16, 16)
    } else if queue == VERIFY_QUEUE {
        (1, settings.queue.claim_batch as usize, 128)
    } else if queue == ROUTE_QUEUE {
        (1, settings.queue.claim_batch as usize, 64)
    } else {
        (1, settings.queue.claim_batch as usize, 16)
    };
    let config = WorkerConfig {
        claim_batch,
        concurrency,
        lease: settings.queue.lease(),
        idle_poll: settings.queue.poll_interval(),
        retry,
        ..WorkerConfig::new(queue)
    };
    for _ in 0..workers_count {
        let job_queue: Arc<dyn JobQueue> = backends.storage.clone();
        workers.spawn(job_queue, handler.clone(), config.clone());
    }
}

impl RunningNode {
    /// The token that stops this node.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The handler the node runs for `queue` (whether or not its component is enabled in
    /// this process), for driving queues deterministically in tests.
    pub fn handler(&self, queue: &QueueName) -> Option<Arc<dyn JobHandler>> {
        self.handlers.get(queue).cloned()
    }

    /// Runs until shutdown is requested or a component fails, then stops every component
    /// (finishing current requests and jobs, within a grace period). A component failure is
    /// returned as the error.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut failure = None;
        tokio::select! {
            () = self.shutdown.cancelled() => {}
            Some(result) = self.tasks.join_next() => {
                failure = Some(flatten(result));
            }
            Some((name, result)) = self.workers.join_next() => {
                failure = Some(result.map_err(anyhow::Error::from).with_context(|| format!("worker {name} stopped")));
            }
        }
        self.shutdown.cancel();
        let drained = self.workers.shutdown(SHUTDOWN_GRACE).await;
        while let Some(result) = self.tasks.join_next().await {
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

fn flatten(
    result: Result<(&'static str, anyhow::Result<()>), tokio::task::JoinError>,
) -> anyhow::Result<()> {
    let (name, result) = result.context("component task panicked")?;
    result.with_context(|| format!("{name} stopped"))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The outbox relay and the broker topology cover `PIPELINE_QUEUES` only: a queue with a
    /// handler outside it would never reach its workers in the broker shape.
    #[tokio::test]
    async fn every_queue_with_a_handler_is_a_pipeline_queue() {
        let directory = tempfile::tempdir().unwrap();
        let mut settings = Settings::default();
        settings.node.data_dir = directory.path().to_path_buf();
        let backends = open_backends(&settings).await.unwrap();
        let jurisdiction = Jurisdiction::parse("AU").unwrap();
        let hub = igl_websub::HubConfig {
            hub_url: "http://127.0.0.1/api/v1/subscriptions".into(),
            callbacks: igl_websub::policy::CallbackPolicy {
                allow_private: false,
            },
            timeout: Duration::from_secs(1),
            fanout_budget: Duration::from_secs(1),
            max_in_flight: 1,
            max_subscriptions: 1,
            slow_lane_max_attempts: 8,
        };
        let channels = Arc::new(
            igl_channels::client::build_channels(
                &settings.channels,
                igl_channels::client::HttpClientConfig::default(),
            )
            .unwrap(),
        );
        let handlers =
            pipeline_handlers(&settings, &backends, jurisdiction, &hub, &channels).unwrap();
        let handled: Vec<QueueName> = handlers.keys().cloned().collect();
        let mut pipeline = PIPELINE_QUEUES.to_vec();
        pipeline.sort();
        assert_eq!(handled, pipeline);
    }
}
