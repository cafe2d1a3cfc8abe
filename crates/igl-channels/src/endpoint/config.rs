use std::sync::Arc;
use std::time::Duration;

use igl_core::{QueueName, Storage};
use igl_domain::Jurisdiction;
use igl_workers::RetryPolicy;

use super::error::EndpointError;

/// The reference's default lease (5 days), used when `hub.lease_seconds` is absent.
pub const DEFAULT_LEASE_SECONDS: i64 = 432_000;

/// The longest lease granted (one year); longer requests are shortened to it and the
/// verification request tells the subscriber the granted lease.
pub const MAX_LEASE_SECONDS: i64 = 31_536_000;

/// Everything a shared-db channel endpoint needs. Build it with [`EndpointConfig::new`] and
/// override fields as needed.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// The jurisdiction this endpoint serves: it posts messages whose `sender` is this
    /// jurisdiction and announces messages whose `receiver` is this jurisdiction.
    pub jurisdiction: Jurisdiction,
    /// The medium both endpoints of the channel share: `sqlite://path/channel.db` (one file
    /// for the embedded demo; several endpoints in one or more processes may open it) or
    /// `postgres://user:pass@host/db`.
    pub medium_url: String,
    /// PostgreSQL schema of the medium (created if missing); `None` is `public`.
    pub medium_schema: Option<String>,
    /// A private database for this endpoint's subscriptions (they hold callback secrets)
    /// and observer cursors. `None` keeps them in the medium database, keyed by
    /// jurisdiction.
    pub local_url: Option<String>,
    /// PostgreSQL schema of `local_url`.
    pub local_schema: Option<String>,
    /// The local state: the job queue that holds the callback deliveries (usually the node's
    /// storage, or a SQLite file of the `igl channel` process).
    pub state: Arc<dyn Storage>,
    /// The URL under which this endpoint's Channel API is reachable (`http://host:port`),
    /// used in `Link: <…>; rel="hub"` headers. A trailing `/` is ignored.
    pub public_url: String,
    /// Allows callbacks (subscriptions, deliveries) to loopback, private, link-local and
    /// other non-public addresses. Off in production-like settings (no SSRF towards the
    /// endpoint's network); tests and the embedded demo turn it on.
    pub allow_loopback_callbacks: bool,
    /// The jurisdictions this channel reaches. When not empty, `POST /messages` refuses
    /// other receivers; when empty, any receiver other than [`EndpointConfig::jurisdiction`]
    /// is accepted.
    pub peers: Vec<Jurisdiction>,
    /// Connections per database pool (readers for SQLite).
    pub max_connections: u32,
    /// How long to wait for a database connection.
    pub connect_timeout: Duration,
    /// Timeout of the intent-verification request made while a subscription request waits.
    pub verification_timeout: Duration,
    /// Callback deliveries.
    pub delivery: DeliveryConfig,
    /// The observer that announces new messages.
    pub observer: ObserverConfig,
    /// Posting: group commit of concurrent `POST /messages`.
    pub max_post_batch: usize,
}

/// How callbacks are delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryConfig {
    /// The queue of the local state that holds delivery jobs. It must be distinct for every
    /// endpoint sharing one state store; the default is `channel-deliver.<jurisdiction>`.
    pub queue: QueueName,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Timeout of one callback POST.
    pub timeout: Duration,
    /// Retries with backoff; after `max_attempts` a delivery goes to the dead letters.
    pub retry: RetryPolicy,
}

/// How the observer looks for new messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObserverConfig {
    /// Rows read per round.
    pub batch_size: usize,
    /// The fallback poll when no wake-up arrives (another process writing to a SQLite
    /// medium, or a lost PostgreSQL notification).
    pub poll_interval: Duration,
}

impl Default for ObserverConfig {
    fn default() -> Self {
        Self {
            batch_size: 512,
            poll_interval: Duration::from_millis(250),
        }
    }
}

impl DeliveryConfig {
    /// Defaults for the endpoint of `jurisdiction`: queue `channel-deliver.<jur>`, 32 in
    /// flight, 5 s timeout, 10 attempts with backoff from 1 s to 5 min.
    pub fn new(jurisdiction: Jurisdiction) -> Self {
        let queue = QueueName::parse(&format!(
            "channel-deliver.{}",
            jurisdiction.as_str().to_ascii_lowercase()
        ))
        .unwrap_or_else(|_| QueueName::from_static("channel-deliver"));
        Self {
            queue,
            concurrency: 32,
            timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
        }
    }
}

impl EndpointConfig {
    /// A configuration with defaults: no schema, subscriptions in the medium database, only
    /// public callback targets, any peer, [`DeliveryConfig::new`], [`ObserverConfig::default`].
    pub fn new(
        jurisdiction: Jurisdiction,
        medium_url: impl Into<String>,
        state: Arc<dyn Storage>,
        public_url: impl Into<String>,
    ) -> Self {
        Self {
            jurisdiction,
            medium_url: medium_url.into(),
            medium_schema: None,
            local_url: None,
            local_schema: None,
            state,
            public_url: public_url.into(),
            allow_loopback_callbacks: false,
            peers: Vec::new(),
            max_connections: 8,
            connect_timeout: Duration::from_secs(30),
            verification_timeout: Duration::from_secs(5),
            delivery: DeliveryConfig::new(jurisdiction),
            observer: ObserverConfig::default(),
            max_post_batch: 256,
        }
    }

    /// Checks the values that do not need a database.
    pub(crate) fn validate(&self) -> Result<(), EndpointError> {
        let public = url::Url::parse(&self.public_url).map_err(|error| {
            EndpointError::Config(format!(
                "public_url {:?} is not a URL: {error}",
                self.public_url
            ))
        })?;
        if !matches!(public.scheme(), "http" | "https") {
            return Err(EndpointError::Config(format!(
                "public_url {:?} must be an http: or https: URL",
                self.public_url
            )));
        }
        if self.peers.contains(&self.jurisdiction) {
            return Err(EndpointError::Config(format!(
                "peers must not contain the endpoint's own jurisdiction {}",
                self.jurisdiction
            )));
        }
        let zero = [
            ("observer.batch_size", self.observer.batch_size == 0),
            (
                "observer.poll_interval",
                self.observer.poll_interval.is_zero(),
            ),
            ("delivery.concurrency", self.delivery.concurrency == 0),
            ("delivery.timeout", self.delivery.timeout.is_zero()),
            ("verification_timeout", self.verification_timeout.is_zero()),
            ("max_post_batch", self.max_post_batch == 0),
        ];
        if let Some((name, _)) = zero.iter().find(|(_, is_zero)| *is_zero) {
            return Err(EndpointError::Config(format!(
                "{name} must be greater than zero"
            )));
        }
        self.delivery
            .retry
            .validate()
            .map_err(|reason| EndpointError::Config(format!("delivery.{reason}")))
    }

    /// The public URL without a trailing `/`.
    pub(crate) fn public_base(&self) -> &str {
        self.public_url.trim_end_matches('/')
    }
}
