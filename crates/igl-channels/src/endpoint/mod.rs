//! The shared-db channel endpoint: our own channel, serving the Channel API (REFERENCE-WIRE
//! §5) over a table that the endpoints of both jurisdictions reach (ARCHITECTURE §7).
//!
//! One endpoint serves one jurisdiction of the channel. Its node posts outbound messages to
//! it (`POST /messages`, sender = the endpoint's jurisdiction); the row is committed to the
//! shared medium, which is the confirmation (status `confirmed` at once). The endpoint of
//! the receiving jurisdiction observes the medium and announces each message whose
//! receiver it serves to its WebSub subscribers (normally its node's Reception API):
//! `POST {callback}` with `{"id": <id>}`; the node then reads the message with
//! `GET /messages/{id}` from its own endpoint.
//!
//! ```text
//!  AU node ──POST /messages──► AU endpoint ──INSERT──► medium (shared DB)
//!                                                        │ commit wakes the observers
//!  SG node ◄──POST {"id"}─── SG endpoint (observer → delivery jobs → callback)
//!  SG node ───GET /messages/{id}──► SG endpoint ──SELECT──► medium
//! ```
//!
//! # Use
//!
//! - [`start`]: open the databases, serve the Channel API on a listener and run the
//!   observer and the delivery worker until the shutdown token is cancelled (`igl channel`,
//!   tests);
//! - [`ChannelEndpoint::open`] + [`ChannelEndpoint::router`] +
//!   [`ChannelEndpoint::run_background`]: the same pieces for embedding in a node's own
//!   listener and supervisor.
//!
//! # Guarantees
//!
//! - A 201 from `POST /messages` means the row is committed on the medium. Concurrent posts
//!   are group-committed (one transaction per batch), so throughput does not depend on one
//!   fsync per message.
//! - The observer's cursor is durable and by row id: every message is announced at least
//!   once, across restarts, including messages posted before the receiving endpoint first
//!   started or while it had no subscriber; a status update never re-announces a message.
//! - Announcements are jobs on the local state's queue, delivered by the worker runtime
//!   with retries and backoff, then dead-lettered (visible to operators, replayable).
//! - Wake-ups instead of sleeps on the hot path: a commit wakes the observers of the same
//!   medium in this process immediately and, on PostgreSQL, in other processes through
//!   LISTEN/NOTIFY; a short poll is only the fallback.
//!
//! # Layout
//!
//! - `config`: [`EndpointConfig`], [`DeliveryConfig`], [`ObserverConfig`];
//! - `db`: the SQLite/PostgreSQL connections and migrations (`migrations/`);
//! - `medium`: the shared table, status changes and the group-commit writer;
//! - `store`: subscriptions and observer cursors of this endpoint;
//! - `wake`: wake-ups between writers and observers;
//! - `api`: the HTTP handlers; `topic`: WebSub topic matching;
//! - `observer`: medium → delivery jobs; `delivery`: the job handler that calls back;
//! - `callback`: callback URL policy, intent verification, signatures.

mod api;
mod callback;
mod config;
mod db;
mod delivery;
mod error;
mod medium;
mod observer;
mod store;
mod topic;
mod wake;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use igl_core::JobQueue;
use igl_domain::Jurisdiction;
use igl_workers::{WorkerConfig, run_worker};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::{
    DEFAULT_LEASE_SECONDS, DeliveryConfig, EndpointConfig, MAX_LEASE_SECONDS, ObserverConfig,
};
pub use error::EndpointError;

use db::{Db, DbOptions, Migrations};
use medium::{Medium, PostWriter};
use store::EndpointStore;
use wake::MediumSignal;

/// The name of the signature header of deliveries (`X-Hub-Signature: sha256=<hex>`).
pub const SIGNATURE_HEADER: &str = delivery::SIGNATURE_HEADER;

/// Where the endpoint records its migrations (never `_sqlx_migrations`, which belongs to
/// the node's storage when both share a database).
const MEDIUM_MIGRATIONS_TABLE: &str = "_igl_channel_medium_migrations";
const ENDPOINT_MIGRATIONS_TABLE: &str = "_igl_channel_endpoint_migrations";

fn medium_migrations() -> Migrations {
    Migrations {
        sqlite: sqlx::migrate!("./migrations/sqlite/medium"),
        postgres: sqlx::migrate!("./migrations/postgres/medium"),
    }
}

fn endpoint_migrations() -> Migrations {
    Migrations {
        sqlite: sqlx::migrate!("./migrations/sqlite/endpoint"),
        postgres: sqlx::migrate!("./migrations/postgres/endpoint"),
    }
}

/// What the HTTP handlers, the observer and the delivery worker share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: EndpointConfig,
    pub(crate) medium: Arc<Medium>,
    pub(crate) store: EndpointStore,
    pub(crate) writer: PostWriter,
    pub(crate) http: reqwest::Client,
    /// Woken when a subscription is created, renewed or removed.
    pub(crate) subscriptions_changed: Notify,
    subscription_epoch: AtomicU64,
}

impl Shared {
    /// Records a subscription change and wakes the observer.
    pub(crate) fn subscription_changed(&self) {
        self.subscription_epoch.fetch_add(1, Ordering::AcqRel);
        self.subscriptions_changed.notify_waiters();
    }

    /// Counts subscription changes (to tell whether anything changed since a moment).
    pub(crate) fn subscription_epoch(&self) -> u64 {
        self.subscription_epoch.load(Ordering::Acquire)
    }
}

/// An opened shared-db channel endpoint: its databases are migrated and its group-commit
/// writer runs; [`ChannelEndpoint::router`] serves the Channel API and
/// [`ChannelEndpoint::run_background`] runs the observer and the deliveries. Cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct ChannelEndpoint {
    shared: Arc<Shared>,
}

impl ChannelEndpoint {
    /// Checks `config`, opens the medium (and the local database when configured), creates
    /// or migrates their tables, and starts the writer.
    ///
    /// # Errors
    ///
    /// [`EndpointError::Config`] for unusable settings; database errors when a database
    /// cannot be reached or migrated.
    pub async fn open(config: EndpointConfig) -> Result<Self, EndpointError> {
        config.validate()?;
        let medium_db = Db::open(&DbOptions {
            url: &config.medium_url,
            schema: config.medium_schema.as_deref(),
            max_connections: config.max_connections,
            connect_timeout: config.connect_timeout,
        })
        .await?;
        migrate(&medium_db, medium_migrations, MEDIUM_MIGRATIONS_TABLE).await?;
        let local_db = match &config.local_url {
            None => {
                if config.local_schema.is_some() {
                    return Err(EndpointError::Config(
                        "local_schema needs local_url".to_owned(),
                    ));
                }
                medium_db.clone()
            }
            Some(url) => {
                Db::open(&DbOptions {
                    url,
                    schema: config.local_schema.as_deref(),
                    max_connections: config.max_connections,
                    connect_timeout: config.connect_timeout,
                })
                .await?
            }
        };
        migrate(&local_db, endpoint_migrations, ENDPOINT_MIGRATIONS_TABLE).await?;
        let http = callback::http_client(config.allow_loopback_callbacks)?;
        let signal = MediumSignal::start(&medium_db);
        let medium = Arc::new(Medium {
            db: medium_db,
            signal,
        });
        let writer = PostWriter::start(medium.clone(), config.max_post_batch);
        let store = EndpointStore {
            db: local_db,
            endpoint: config.jurisdiction.to_string(),
        };
        tracing::info!(
            jurisdiction = %config.jurisdiction,
            medium = %medium.db.identity(),
            "channel endpoint opened"
        );
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                medium,
                store,
                writer,
                http,
                subscriptions_changed: Notify::new(),
                subscription_epoch: AtomicU64::new(0),
            }),
        })
    }

    /// The jurisdiction this endpoint serves.
    pub fn jurisdiction(&self) -> Jurisdiction {
        self.shared.config.jurisdiction
    }

    /// The configuration the endpoint was opened with.
    pub fn config(&self) -> &EndpointConfig {
        &self.shared.config
    }

    /// The Channel API (`/`, `/messages…`), ready to serve or to nest into a node's router.
    pub fn router(&self) -> axum::Router {
        api::router(self.shared.clone())
    }

    /// Runs the observer and the delivery worker until `shutdown` is cancelled (the delivery
    /// worker finishes its current batch first).
    ///
    /// # Errors
    ///
    /// [`EndpointError::Config`] when the delivery worker's settings are invalid;
    /// [`EndpointError::Task`] when a task panics.
    pub fn run_background(
        &self,
        shutdown: CancellationToken,
    ) -> impl Future<Output = Result<(), EndpointError>> + Send + 'static {
        let shared = self.shared.clone();
        async move {
            let mut tasks = JoinSet::new();
            tasks.spawn(named(
                "observer",
                observer::run_observer(shared.clone(), shutdown.clone()),
            ));
            tasks.spawn(named("delivery", run_delivery(shared, shutdown.clone())));
            join_all(tasks, &shutdown).await
        }
    }

    /// Serves the Channel API on `listener` and runs the background tasks, until `shutdown`
    /// (or [`RunningEndpoint::stop`]).
    ///
    /// # Errors
    ///
    /// [`EndpointError::Serve`] when the listener has no local address.
    pub fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<RunningEndpoint, EndpointError> {
        let addr = listener.local_addr().map_err(EndpointError::Serve)?;
        let shutdown = shutdown.child_token();
        let mut tasks = JoinSet::new();
        let router = self.router();
        let http_shutdown = shutdown.clone();
        tasks.spawn(named("http", async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(http_shutdown.cancelled_owned())
                .await
                .map_err(EndpointError::Serve)
        }));
        tasks.spawn(named("background", self.run_background(shutdown.clone())));
        tracing::info!(%addr, jurisdiction = %self.jurisdiction(), "channel endpoint serving");
        Ok(RunningEndpoint {
            addr,
            endpoint: self,
            shutdown,
            tasks,
        })
    }
}

/// Opens the endpoint of `config` and serves it on `listener` until `shutdown` is
/// cancelled (or [`RunningEndpoint::stop`] is called).
///
/// # Errors
///
/// As [`ChannelEndpoint::open`].
pub async fn start(
    config: EndpointConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<RunningEndpoint, EndpointError> {
    ChannelEndpoint::open(config)
        .await?
        .serve(listener, shutdown)
}

/// A serving endpoint.
#[derive(Debug)]
pub struct RunningEndpoint {
    addr: SocketAddr,
    endpoint: ChannelEndpoint,
    shutdown: CancellationToken,
    tasks: JoinSet<(&'static str, Result<(), EndpointError>)>,
}

impl RunningEndpoint {
    /// The address the Channel API listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://{local_addr}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The endpoint (for its router or configuration).
    pub fn endpoint(&self) -> &ChannelEndpoint {
        &self.endpoint
    }

    /// The token that stops this endpoint (a child of the one given to [`start`]).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until every task has stopped (after shutdown, or after one failed: a failing
    /// task cancels the others).
    ///
    /// # Errors
    ///
    /// The first task failure.
    pub async fn wait(self) -> Result<(), EndpointError> {
        join_all(self.tasks, &self.shutdown).await
    }

    /// Stops the endpoint gracefully and waits for it.
    ///
    /// # Errors
    ///
    /// As [`RunningEndpoint::wait`].
    pub async fn stop(self) -> Result<(), EndpointError> {
        self.shutdown.cancel();
        self.wait().await
    }
}

async fn named<F>(task: &'static str, future: F) -> (&'static str, Result<(), EndpointError>)
where
    F: Future<Output = Result<(), EndpointError>>,
{
    (task, future.await)
}

/// Waits for every task; the first failure cancels `shutdown` and is returned.
async fn join_all(
    mut tasks: JoinSet<(&'static str, Result<(), EndpointError>)>,
    shutdown: &CancellationToken,
) -> Result<(), EndpointError> {
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let failure = match joined {
            Ok((_, Ok(()))) => None,
            Ok((task, Err(error))) => {
                tracing::error!(task, error = %error_chain(&error), "channel endpoint task failed");
                Some(error)
            }
            Err(join_error) => Some(EndpointError::Task {
                task: "endpoint",
                reason: join_error.to_string(),
            }),
        };
        if let Some(error) = failure {
            shutdown.cancel();
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The delivery worker of the endpoint.
async fn run_delivery(
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> Result<(), EndpointError> {
    let delivery = &shared.config.delivery;
    let mut worker = WorkerConfig::new(delivery.queue.clone());
    worker.concurrency = delivery.concurrency;
    worker.claim_batch = delivery.concurrency.saturating_mul(2).max(16);
    worker.lease = (delivery.timeout * 4).max(Duration::from_secs(30));
    worker.job_timeout = delivery.timeout + Duration::from_secs(10);
    worker.retry = delivery.retry;
    let queue: Arc<dyn JobQueue> = shared.config.state.clone();
    let handler = Arc::new(delivery::DeliveryHandler {
        shared: shared.clone(),
    });
    run_worker(queue, handler, worker, shutdown)
        .await
        .map_err(|error| EndpointError::Config(error.to_string()))
}

/// Applies migrations, retrying a few times: two endpoints starting together on one new
/// SQLite file can both try to apply the first migration (PostgreSQL serialises them with
/// an advisory lock).
async fn migrate(
    db: &Db,
    migrations: fn() -> Migrations,
    table: &'static str,
) -> Result<(), EndpointError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match db.migrate(migrations(), table).await {
            Ok(()) => return Ok(()),
            Err(error) if attempt < 5 => {
                tracing::debug!(error = %error_chain(&error), attempt, "migration failed, retrying");
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Renders an error and its sources as `"outer: middle: inner"`.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut rendered = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        rendered.push_str(": ");
        rendered.push_str(&cause.to_string());
        source = cause.source();
    }
    rendered
}
