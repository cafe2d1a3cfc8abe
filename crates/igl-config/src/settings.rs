//! The typed [`Settings`] tree, its built-in defaults and derived values.
//!
//! Every section derives `Deserialize` with `#[serde(default, deny_unknown_fields)]`: a missing
//! key takes its default, an unknown key is an error. Fields are public so that tests and the
//! composition root can build settings in code; call [`Settings::validate`] after changing
//! them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::AuthSettings;
use crate::channel_endpoint::ChannelEndpointSettings;
use crate::channels::ChannelSettings;
use crate::component::Component;
use crate::hub::HubSettings;
use crate::jurisdictions::JurisdictionSettings;
use crate::objects::S3ObjectSettings;
use crate::secret::{SecretString, redact_url};

/// The whole configuration of one node process.
///
/// Load it with [`Settings::load`](crate::Settings::load) (defaults → optional TOML file →
/// `IGL_*` environment), which also validates it. [`Settings::default`] is the built-in
/// default, a valid configuration for an embedded node (SQLite file and local objects under
/// `./data`, jurisdiction `AU`, every component enabled).
///
/// `Debug` output is safe to log: the database URL is a [`SecretString`].
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Identity of this node and where it keeps local state (`[node]`).
    pub node: NodeSettings,
    /// The SQL database (`[database]`).
    pub database: DatabaseSettings,
    /// Where document bytes are stored (`[objects]`, tagged by `type`).
    pub objects: ObjectStoreSettings,
    /// Limits on documents (`[documents]`).
    pub documents: DocumentSettings,
    /// Job queue polling, leases and retry policies (`[queue]`).
    pub queue: QueueSettings,
    /// The HTTP listener shared by the enabled APIs (`[http]`).
    pub http: HttpSettings,
    /// Authentication of API callers (`[auth]`). **The default accepts nobody**: every
    /// request to an authenticated API gets 401 until tokens, JWT validation or anonymous
    /// access are configured (see [`AuthSettings`]).
    pub auth: AuthSettings,
    /// The WebSub hub (`[hub]`).
    pub hub: HubSettings,
    /// The channels this node exchanges messages over (`[[channels]]`).
    pub channels: Vec<ChannelSettings>,
    /// Our shared-db channel endpoint, when this process is `igl channel`
    /// (`[channel_endpoint]`); a node ignores it.
    pub channel_endpoint: ChannelEndpointSettings,
    /// Other jurisdictions' Document APIs, for the object spider (`[jurisdictions.<CODE>]`),
    /// keyed by upper-case code; see [`JurisdictionSettings`].
    #[serde(deserialize_with = "crate::jurisdictions::deserialize")]
    pub jurisdictions: BTreeMap<String, JurisdictionSettings>,
    /// Log output (`[log]`).
    pub log: LogSettings,
    /// The components this process runs; defaults to [`Component::all`].
    ///
    /// In the environment, `IGL_COMPONENTS` is a comma-separated list
    /// (`IGL_COMPONENTS=message-api,router`).
    pub components: Vec<Component>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            node: NodeSettings::default(),
            database: DatabaseSettings::default(),
            objects: ObjectStoreSettings::default(),
            documents: DocumentSettings::default(),
            queue: QueueSettings::default(),
            http: HttpSettings::default(),
            auth: AuthSettings::default(),
            hub: HubSettings::default(),
            channels: Vec::new(),
            channel_endpoint: ChannelEndpointSettings::default(),
            jurisdictions: BTreeMap::new(),
            log: LogSettings::default(),
            components: Component::all().to_vec(),
        }
    }
}

impl Settings {
    /// The database connection URL, with the default `sqlite://{node.data_dir}/igl.db` applied
    /// when `database.url` is unset.
    ///
    /// The result may contain a password: pass it only to the database driver, and log
    /// [`Settings::redacted_database_url`] instead.
    pub fn database_url(&self) -> String {
        match &self.database.url {
            Some(url) => url.expose_secret().to_owned(),
            None => format!("sqlite://{}", self.node.data_dir.join("igl.db").display()),
        }
    }

    /// [`Settings::database_url`] with only its password masked, for logs and summaries.
    pub fn redacted_database_url(&self) -> String {
        redact_url(&self.database_url())
    }

    /// `queue.amqp.url` with only its password masked, for logs (`None` when unset).
    pub fn redacted_amqp_url(&self) -> Option<String> {
        self.queue
            .amqp
            .url
            .as_ref()
            .map(|url| redact_url(url.expose_secret()))
    }

    /// The directory of the local object store, with the default `{node.data_dir}/objects`
    /// applied; `None` when objects are not stored in a local directory.
    pub fn local_objects_path(&self) -> Option<PathBuf> {
        match &self.objects {
            ObjectStoreSettings::Local { path } => Some(
                path.clone()
                    .unwrap_or_else(|| self.node.data_dir.join("objects")),
            ),
            ObjectStoreSettings::S3(_) => None,
        }
    }

    /// The enabled components, deduplicated, in [`Component::all`] order.
    pub fn enabled_components(&self) -> BTreeSet<Component> {
        self.components.iter().copied().collect()
    }

    /// Whether `component` is enabled in this process.
    pub fn is_enabled(&self, component: Component) -> bool {
        self.components.contains(&component)
    }
}

/// `[node]`: identity of this node and where it keeps local state.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSettings {
    /// The jurisdiction this node acts for: two upper-case ASCII letters (`AU`, `SG`).
    ///
    /// Validation here checks the shape only; the domain layer checks it against ISO 3166-1.
    /// Default `AU`.
    pub jurisdiction: String,
    /// Base directory for embedded state (SQLite file, local objects). Default `./data`.
    pub data_dir: PathBuf,
    /// The base URL at which channels reach this node's Message Reception API
    /// (`{public_url}/channel-message/{channel_id}` is the WebSub callback the subscriber
    /// registers). Default none: the node then does not subscribe to channels.
    pub public_url: Option<String>,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            jurisdiction: "AU".to_owned(),
            data_dir: PathBuf::from("./data"),
            public_url: None,
        }
    }
}

/// `[database]`: the SQL database holding messages, jobs, events and subscriptions.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Connection URL, `sqlite:…` or `postgres:…` / `postgresql:…`; it may contain a password,
    /// hence secret. `None` (the default) means `sqlite://{node.data_dir}/igl.db`; read the
    /// effective value with [`Settings::database_url`].
    pub url: Option<SecretString>,
    /// Pool size, `1..=256`. Default 8.
    pub max_connections: u32,
    /// PostgreSQL schema to use (`[a-z_][a-z0-9_]{0,62}`); not allowed with SQLite.
    /// Default: none (the server's search path).
    pub schema: Option<String>,
    /// Timeout for establishing a connection, in seconds, at least 1. Default 10.
    pub connect_timeout_secs: u64,
}

impl DatabaseSettings {
    /// The backend selected by the URL scheme; [`DatabaseBackend::Sqlite`] when the URL is
    /// unset or its scheme is not `postgres:` / `postgresql:` (validation rejects other
    /// schemes).
    pub fn backend(&self) -> DatabaseBackend {
        match &self.url {
            Some(url)
                if url_scheme(url.expose_secret())
                    .is_some_and(|scheme| is_postgres_scheme(&scheme)) =>
            {
                DatabaseBackend::Postgres
            }
            _ => DatabaseBackend::Sqlite,
        }
    }

    /// [`DatabaseSettings::connect_timeout_secs`] as a [`Duration`].
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: None,
            max_connections: 8,
            schema: None,
            connect_timeout_secs: 10,
        }
    }
}

/// Returns the scheme of `url` (the text before the first `:`), lower-cased, if it is a
/// syntactically valid scheme.
pub(crate) fn url_scheme(url: &str) -> Option<String> {
    let (scheme, _) = url.split_once(':')?;
    let valid = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then(|| scheme.to_ascii_lowercase())
}

/// Whether a lower-cased scheme selects PostgreSQL.
pub(crate) fn is_postgres_scheme(scheme: &str) -> bool {
    scheme == "postgres" || scheme == "postgresql"
}

/// The SQL backend, derived from the database URL scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DatabaseBackend {
    /// Embedded SQLite file (`sqlite:`).
    Sqlite,
    /// PostgreSQL server (`postgres:` or `postgresql:`).
    Postgres,
}

impl DatabaseBackend {
    /// `"sqlite"` or `"postgres"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            DatabaseBackend::Sqlite => "sqlite",
            DatabaseBackend::Postgres => "postgres",
        }
    }
}

impl fmt::Display for DatabaseBackend {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// `[objects]`: where document bytes are stored, selected by `type`.
///
/// ```toml
/// [objects]
/// type = "local"
/// path = "/var/lib/igl/objects"
/// ```
///
/// or, for Amazon S3 and S3-compatible servers, `type = "s3"` with the keys of
/// [`S3ObjectSettings`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ObjectStoreSettings {
    /// A local directory (`type = "local"`).
    Local {
        /// The directory; default `{node.data_dir}/objects`. Read the effective value with
        /// [`Settings::local_objects_path`].
        #[serde(default)]
        path: Option<PathBuf>,
    },
    /// A bucket of Amazon S3 or an S3-compatible server (`type = "s3"`).
    S3(S3ObjectSettings),
}

impl Default for ObjectStoreSettings {
    fn default() -> Self {
        ObjectStoreSettings::Local { path: None }
    }
}

impl ObjectStoreSettings {
    /// The `type` tag of the selected backend, e.g. `"local"`.
    pub const fn kind(&self) -> &'static str {
        match self {
            ObjectStoreSettings::Local { .. } => "local",
            ObjectStoreSettings::S3(_) => "s3",
        }
    }
}

/// `[documents]`: limits on documents accepted or downloaded by the node.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DocumentSettings {
    /// Largest document accepted or downloaded, in bytes, at least 1. Default 100 MiB.
    pub max_bytes: u64,
}

impl Default for DocumentSettings {
    fn default() -> Self {
        DocumentSettings {
            max_bytes: 100 * 1024 * 1024,
        }
    }
}

/// `[queue]`: how workers poll and claim jobs, and how failed jobs are retried.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSettings {
    /// How long an idle worker waits before polling again, in milliseconds, at least 1.
    /// Default 500.
    pub poll_interval_ms: u64,
    /// How long a claimed job stays invisible to other workers before it is redelivered, in
    /// seconds, at least 1. Default 30.
    pub lease_secs: u64,
    /// Largest number of jobs claimed at once, `1..=1000`. Default 64.
    pub claim_batch: u32,
    /// The retry policy of every queue without an override (`[queue.retry]`).
    pub retry: RetryPolicy,
    /// Per-queue overrides of the retry policy (`[queue.queues.<name>]`), keyed by queue name
    /// (`[a-z][a-z0-9_-]*`); unset fields fall back to [`QueueSettings::retry`].
    pub queues: BTreeMap<String, RetryPolicyOverride>,
    /// Where workers take their jobs from: `"sql"` (the database's `jobs` table, the
    /// default) or `"amqp"` (RabbitMQ; the database's `jobs` table becomes the
    /// transactional outbox that the `outbox-relay` component publishes from).
    pub backend: QueueBackend,
    /// The broker, when `backend = "amqp"` (`[queue.amqp]`).
    pub amqp: AmqpSettings,
}

/// `queue.backend`: where jobs are consumed from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueBackend {
    /// The SQL database's `jobs` table.
    #[default]
    Sql,
    /// RabbitMQ (AMQP 0-9-1), fed by the outbox relay.
    Amqp,
}

/// `[queue.amqp]`: the RabbitMQ broker of the job queues.
///
/// ```toml
/// [queue]
/// backend = "amqp"
///
/// [queue.amqp]
/// url = "amqp://igl:secret@rabbitmq:5672/igl"   # secret; vhost URL-encoded (%2f = "/")
/// prefix = "igl."
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpSettings {
    /// `amqp://user:password@host:port/vhost`, or `amqps://…` for TLS (port 5671 by
    /// default); required when `queue.backend = "amqp"`. Secret (it holds the password):
    /// never logged, see [`Settings::redacted_amqp_url`].
    pub url: Option<SecretString>,
    /// PEM file of certificates to trust for `amqps://`, besides the system's roots (a
    /// private CA). The broker's certificate must name the URL's host. Only with `amqps://`.
    pub ca_file: Option<PathBuf>,
    /// Prefix of every queue this node declares (`igl.` → `igl.route`, `igl.route.dead`);
    /// lets several nodes share a vhost. 1 to 64 characters of `[a-z0-9._-]`. Default `igl.`.
    pub prefix: String,
    /// Deliveries a consumer may hold before claiming them (`basic.qos`), 1 to 10000.
    /// Default 64. An envelope is one delivery, so a consumer may hold up to `prefetch ×
    /// jobs_per_message` jobs; the broker hands deliveries to a queue's consumers in turn.
    pub prefetch: u16,
    /// The quorum queues' `x-delivery-limit`: a job returned to its queue this many times
    /// (crashed workers, expired leases) is dead-lettered by the broker, at least 1.
    /// Default 50. Changing it for existing queues needs a policy (queue arguments are
    /// fixed at declaration).
    pub delivery_limit: u32,
    /// Outbox rows the relay publishes per round and queue, 1 to 10000. Default 256.
    pub relay_batch: u32,
    /// Outbox jobs of one queue the relay packs into one broker message (an envelope that
    /// workers claim job by job and ack once all of its jobs are done), 1 to 1000; 1
    /// publishes a message per job. Default 16. Larger envelopes cost the broker less per
    /// job; smaller ones spread a burst over more replicas at once.
    pub jobs_per_message: u32,
}

impl Default for AmqpSettings {
    fn default() -> Self {
        AmqpSettings {
            url: None,
            ca_file: None,
            prefix: "igl.".into(),
            prefetch: 64,
            delivery_limit: 50,
            relay_batch: 256,
            jobs_per_message: 16,
        }
    }
}

impl QueueSettings {
    /// [`QueueSettings::poll_interval_ms`] as a [`Duration`].
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    /// [`QueueSettings::lease_secs`] as a [`Duration`].
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }

    /// The effective retry policy of the queue `queue_name`: its override, if any, applied
    /// field by field over the default policy.
    pub fn retry_policy(&self, queue_name: &str) -> RetryPolicy {
        match self.queues.get(queue_name) {
            Some(policy_override) => policy_override.apply_to(&self.retry),
            None => self.retry.clone(),
        }
    }
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            poll_interval_ms: 500,
            lease_secs: 30,
            claim_batch: 64,
            retry: RetryPolicy::default(),
            queues: BTreeMap::new(),
            backend: QueueBackend::Sql,
            amqp: AmqpSettings::default(),
        }
    }
}

/// A retry policy: exponential backoff from `base_delay_ms` capped at `max_delay_ms`, then
/// dead-lettering after `max_attempts`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Total attempts (the first one included) before a job is dead-lettered, at least 1.
    /// Default 8.
    pub max_attempts: u32,
    /// Delay before the first retry, in milliseconds; at most `max_delay_ms`. Default 1000.
    pub base_delay_ms: u64,
    /// Upper bound of the delay between attempts, in milliseconds. Default 300000 (5 min).
    pub max_delay_ms: u64,
}

impl RetryPolicy {
    /// [`RetryPolicy::base_delay_ms`] as a [`Duration`].
    pub fn base_delay(&self) -> Duration {
        Duration::from_millis(self.base_delay_ms)
    }

    /// [`RetryPolicy::max_delay_ms`] as a [`Duration`].
    pub fn max_delay(&self) -> Duration {
        Duration::from_millis(self.max_delay_ms)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base_delay_ms: 1000,
            max_delay_ms: 300_000,
        }
    }
}

/// A per-queue override of [`RetryPolicy`]; every field is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicyOverride {
    /// Overrides [`RetryPolicy::max_attempts`].
    pub max_attempts: Option<u32>,
    /// Overrides [`RetryPolicy::base_delay_ms`].
    pub base_delay_ms: Option<u64>,
    /// Overrides [`RetryPolicy::max_delay_ms`].
    pub max_delay_ms: Option<u64>,
}

impl RetryPolicyOverride {
    /// Returns `base` with the fields set in this override replaced.
    pub fn apply_to(&self, base: &RetryPolicy) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts.unwrap_or(base.max_attempts),
            base_delay_ms: self.base_delay_ms.unwrap_or(base.base_delay_ms),
            max_delay_ms: self.max_delay_ms.unwrap_or(base.max_delay_ms),
        }
    }
}

/// `[http]`: the listener shared by the enabled APIs.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Socket address to bind, e.g. `"0.0.0.0:8080"`; port 0 picks a free port.
    /// Default `127.0.0.1:8080`.
    pub bind: SocketAddr,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            bind: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080)),
        }
    }
}

/// `[log]`: log output of the process (always on stderr).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// Output format. Default [`LogFormat::Pretty`].
    pub format: LogFormat,
    /// `tracing` filter directives (`EnvFilter` syntax, e.g. `"info,igl=debug"`); `RUST_LOG`
    /// overrides it. Must not be empty. Default `"info"`.
    pub filter: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Pretty,
            filter: "info".to_owned(),
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (`pretty`), for development.
    #[default]
    Pretty,
    /// One JSON object per line (`json`), for production log collectors.
    Json,
}

impl LogFormat {
    /// `"pretty"` or `"json"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            LogFormat::Pretty => "pretty",
            LogFormat::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The error of [`LogFormat::from_str`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown log format {0:?} (expected pretty or json)")]
pub struct ParseLogFormatError(String);

impl FromStr for LogFormat {
    type Err = ParseLogFormatError;

    /// Accepts `pretty` and `json`.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "pretty" => Ok(LogFormat::Pretty),
            "json" => Ok(LogFormat::Json),
            other => Err(ParseLogFormatError(other.to_owned())),
        }
    }
}
