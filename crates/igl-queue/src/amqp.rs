//! [`AmqpQueue`]: the [`JobQueue`] port on RabbitMQ (AMQP 0-9-1).
//!
//! # Topology (per queue `q`, names prefixed with [`AmqpOptions::prefix`])
//!
//! - `{prefix}{q}`: the work queue, a durable **quorum** queue with `x-delivery-limit`
//!   ([`AmqpOptions::delivery_limit`]) and the default exchange as dead-letter exchange
//!   routing to `{prefix}{q}.dead` (at-least-once dead-lettering);
//! - `{prefix}{q}.dead`: the dead-letter queue (quorum), listed and replayed through
//!   [`JobQueue::dead_letters`] / [`JobQueue::replay_dead_letter`];
//! - `{prefix}{q}.delay.{ms}`: one quorum queue per retry tier ([`DELAY_TIERS`]) with
//!   `x-message-ttl = ms`, dead-lettering back to the work queue when the TTL ends. Delayed
//!   jobs (retries, enqueues with a delay) go to the largest tier not longer than the delay;
//!   the job carries its due time, and a claim that receives it early sends it back to the
//!   tier for the rest, so it is never early and barely late. No broker plugin.
//!
//! Every message is persistent and published with publisher confirms (an operation returns
//! only after the broker confirmed); deliveries are acked manually.
//!
//! # How the lease contract maps onto AMQP
//!
//! - a **claim** takes deliveries already prefetched by this process's consumer (started by
//!   [`JobQueue::wait_for_jobs`], `basic.qos` = [`AmqpOptions::prefetch`]); when there are
//!   none it pulls with `basic.get` until it has `max` or the queue is empty — so a claim
//!   right after an enqueue sees every confirmed job, in order;
//! - a **lease** is an unacked delivery plus a local deadline, counted from the end of the
//!   claim however long the claim took: when the deadline passes without an ack, retry,
//!   dead-letter or extension, the adapter returns the delivery to the queue
//!   (`basic.nack requeue`), the broker counts the redelivery (`x-delivery-count`, so
//!   `attempt` grows) and the old receipt stops working. When this process dies or its
//!   connection drops, the broker returns every unacked delivery at once;
//! - **retry** and **dead-letter** publish a copy (to a delay tier or the dead-letter
//!   queue, with the attempt count and the error), wait for its confirm, then ack the
//!   original. A crash between the two leaves both: the job runs once more (at least once);
//! - **attempt** = attempts of earlier copies + broker redeliveries + 1; the quorum
//!   `x-delivery-limit` dead-letters a message that keeps killing its consumers even if no
//!   worker ever gets to count it.
//!
//! # Envelopes
//!
//! [`AmqpQueue::publish_outbox`] (the outbox relay's side) packs up to
//! [`AmqpOptions::jobs_per_message`] fresh jobs of one queue into one broker message, an
//! **envelope**: the broker's cost (a quorum-queue message, its confirm, delivery and ack)
//! is paid once per envelope rather than once per job. Everything else is per job:
//!
//! - a claim hands out the jobs of an envelope one by one (a claim smaller than the
//!   envelope leaves the rest in this process for the next claims, counted in
//!   `depth.in_flight`); each job has its own lease and receipt;
//! - the envelope's delivery is acked once every one of its jobs is settled: acked,
//!   retried or dead-lettered (each publishes a single copy first, as for any job), or
//!   handed back when its lease runs out — as a single copy counting the attempt, since an
//!   envelope cannot be returned in part (if that copy cannot be published, the whole
//!   envelope goes back);
//! - an envelope that comes back **redelivered** (its consumer died or lost its connection)
//!   is split by the next claim into single jobs (confirmed, then the envelope is acked),
//!   each counting one attempt: its jobs were handed out on its first delivery only (any
//!   later claim splits it), so further returns — from consumers that had only prefetched
//!   it — are not attempts. Jobs the dead consumer had finished run once
//!   more (at least once, as after any crash), and the delivery limit keeps isolating a job
//!   that kills its consumers, because from then on it travels alone;
//! - retries, delayed jobs and dead letters always travel alone. An envelope the broker
//!   dead-lettered itself (the delivery limit reached before any consumer could split it)
//!   is split into single dead letters by the first listing that meets it.
//!
//! The broker's queue counts (`depth.ready`) count messages, so an envelope counts once.
//! Direct [`JobQueue::enqueue`] calls still publish one message per job.
//!
//! # What AMQP cannot give (and how the node stays correct)
//!
//! - **Dedup keys** are carried but not enforced: AMQP has no lookup of queued messages by
//!   key. In the node's broker shape every job first goes through the SQL outbox
//!   ([`crate::BrokeredStorage`]), which enforces the key while the job waits there; after
//!   that, duplicates are absorbed by idempotent handlers (they already must be).
//! - **Atomic multi-job enqueue**: [`JobQueue::enqueue`] publishes the jobs and waits for
//!   all confirms; a failure part-way may leave some of them enqueued (the caller's retry
//!   duplicates them). The node enqueues through the SQL outbox, which is atomic.
//! - **Ordering** is FIFO per queue except for retried jobs (they rejoin at the tail) and
//!   redeliveries.
//! - **`depth.in_flight`** counts the leases (and prefetched deliveries) of this process
//!   only; AMQP does not report other consumers' unacked messages.
//! - **Listing and replaying dead letters** browses the dead-letter queue (gets without ack,
//!   then returns them), so it costs O(dead letters) and is meant for operators.
//! - **Leases longer than the broker's `consumer_timeout`** (30 min by default) are not
//!   possible: RabbitMQ closes a channel whose delivery stays unacked longer.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt as _;
use igl_core::{
    ClaimedJob, DeadLetter, JobId, JobQueue, JobReceipt, NewJob, QueueDepth, QueueName, StoreError,
};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Acker, Channel, Connect as _, Connection, ConnectionProperties};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::message::{
    Carried, JobMessage, Outgoing, decode, encode_envelope, now_micros, time_ordered_id, to_micros,
};

/// The retry tiers, in milliseconds: a delayed job waits in the largest tier not longer than
/// its delay (the smallest tier for delays below it), then, when it comes back early, in the
/// tier for the rest of its delay, and so on: it is never early, and late by at most the
/// smallest tier plus the hops (a 6.4 s delay waits 3 s + 3 s + 300 ms + 100 ms).
pub const DELAY_TIERS: [u64; 9] = [
    100, 300, 1_000, 3_000, 10_000, 30_000, 120_000, 600_000, 3_600_000,
];

/// The tier (ms) a job due `delay` from now waits in: see [`DELAY_TIERS`].
fn tier_for(delay: Duration) -> u64 {
    let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    DELAY_TIERS
        .iter()
        .copied()
        .rev()
        .find(|&tier| tier <= millis)
        .unwrap_or(DELAY_TIERS[0])
}

/// How many dead letters one listing or replay browses at most per queue.
const BROWSE_LIMIT: usize = 10_000;

/// The shortest wait of [`JobQueue::wait_for_jobs`] once the queue's consumer runs: the
/// broker pushes every job, so waking up earlier only to pull an empty queue is waste.
pub const PUSHED_IDLE_POLL: Duration = Duration::from_secs(5);

/// The default of [`AmqpOptions::jobs_per_message`].
pub const DEFAULT_JOBS_PER_MESSAGE: usize = 16;

/// A job claimed earlier than this before its due time is sent back to a delay tier.
const DUE_TOLERANCE_MICROS: i64 = 5_000;

/// Connection settings of [`AmqpQueue`].
#[derive(Clone)]
pub struct AmqpOptions {
    /// `amqp://user:password@host:port/vhost` (the vhost URL-encoded: `%2f` for `/`), or
    /// `amqps://…` for TLS (rustls; the broker's certificate must name the host).
    pub url: String,
    /// PEM certificates trusted for `amqps://` besides the system's roots (a private CA).
    pub ca_certificates: Option<String>,
    /// Prefix of every queue name (`igl.` → `igl.route`, `igl.route.dead`, …); lets several
    /// nodes or tests share a vhost.
    pub prefix: String,
    /// How many deliveries the consumer of a queue may hold unclaimed (`basic.qos`).
    pub prefetch: u16,
    /// The quorum queues' `x-delivery-limit`: a message returned to its queue this many
    /// times (crashed consumers, expired leases) is dead-lettered by the broker.
    pub delivery_limit: u32,
    /// Queues whose topology is declared at connect and that an unfiltered
    /// [`JobQueue::dead_letters`] lists (queues used later are added as they are used).
    pub queues: Vec<QueueName>,
    /// Upper bound of every broker call.
    pub operation_timeout: Duration,
    /// The connection name shown in the broker's management tools.
    pub connection_name: String,
    /// How many outbox jobs of one queue [`AmqpQueue::publish_outbox`] packs into one broker
    /// message (an envelope; 1 = one message per job). See the module docs, "Envelopes".
    pub jobs_per_message: usize,
}

impl AmqpOptions {
    /// Options with the defaults: prefix `igl.`, prefetch 64, delivery limit 50, 10 s
    /// operation timeout, up to [`DEFAULT_JOBS_PER_MESSAGE`] outbox jobs per message.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ca_certificates: None,
            prefix: "igl.".into(),
            prefetch: 64,
            delivery_limit: 50,
            queues: Vec::new(),
            operation_timeout: Duration::from_secs(10),
            connection_name: "igl-node".into(),
            jobs_per_message: DEFAULT_JOBS_PER_MESSAGE,
        }
    }
}

impl std::fmt::Debug for AmqpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpOptions")
            .field("url", &redact_amqp_url(&self.url))
            .field("prefix", &self.prefix)
            .field("prefetch", &self.prefetch)
            .field("delivery_limit", &self.delivery_limit)
            .field("queues", &self.queues)
            .field("jobs_per_message", &self.jobs_per_message)
            .finish_non_exhaustive()
    }
}

/// `url` with its password replaced by `[redacted]`.
pub fn redact_amqp_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("REDACTED"));
            parsed.to_string().replace(":REDACTED@", ":[redacted]@")
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "[unparsable url]".into(),
    }
}

/// The job queue on RabbitMQ. Cheap to clone (shared state); one connection per value.
///
/// Reconnects on demand: an operation that finds the connection down opens a new one, with
/// an exponential backoff (100 ms to 10 s) between failed attempts during which operations
/// fail fast with [`StoreError::Unavailable`] (the worker runtime backs off in turn). Leases
/// of a lost connection are lost (the broker redelivers those jobs).
#[derive(Clone)]
pub struct AmqpQueue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AmqpQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpQueue")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

struct Inner {
    options: AmqpOptions,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    reconnect: Mutex<Backoff>,
    leases: Mutex<HashMap<i64, Lease>>,
    /// Wakes the lease reaper when a lease is added or changed.
    lease_changed: Notify,
    known_queues: Mutex<BTreeSet<QueueName>>,
    wakeups: Mutex<HashMap<QueueName, Arc<Notify>>>,
    next_token: AtomicI64,
}

#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    not_before: Option<Instant>,
}

/// A held job.
struct Lease {
    id: JobId,
    queue: QueueName,
    holder: Holder,
    deadline: Instant,
    message: JobMessage,
    attempt: u32,
}

/// The delivery a job came in, which settling the job acks.
enum Holder {
    /// The job's own delivery.
    Delivery(Acker),
    /// The envelope it came in with other jobs: acked once all of them are settled.
    Part(Arc<Envelope>),
}

/// A delivered envelope whose jobs are claimed one by one (module docs, "Envelopes").
struct Envelope {
    acker: Acker,
    /// Its jobs not settled yet (acked, retried, dead-lettered or handed back).
    open: AtomicUsize,
}

/// Deliveries that a claim does not hand out but publishes again (their copies confirmed),
/// then acks.
struct Resend {
    /// Route and copy of each job it carried.
    copies: Vec<(String, JobMessage)>,
    acker: Acker,
}

/// What a claim has gathered so far.
#[derive(Default)]
struct Claim {
    jobs: Vec<ClaimedJob>,
    /// The leases of `jobs`, keyed by lease token; they start when the claim ends.
    leases: Vec<(i64, Lease)>,
    /// Jobs that came back from a delay tier before their due time (their copies go to the
    /// tier for the rest of the delay), and redelivered envelopes (split into single jobs).
    resend: Vec<Resend>,
}

/// One connection with its channels.
struct Session {
    connection: Connection,
    /// Publishes everything, in confirm mode.
    publisher: Channel,
    queues: tokio::sync::Mutex<HashMap<QueueName, Arc<QueueChannel>>>,
}

/// The channel on which a queue is claimed from (gets and the prefetching consumer); its
/// deliveries must be acked on it.
struct QueueChannel {
    channel: Channel,
    /// Deliveries received by the consumer and not claimed yet.
    buffer: Arc<Mutex<VecDeque<Delivery>>>,
    /// Jobs of envelopes received on this channel that no claim has taken yet (a claim
    /// takes the rest of an envelope only up to its `max`).
    unclaimed: Mutex<VecDeque<(Arc<Envelope>, JobMessage)>>,
    consuming: tokio::sync::OnceCell<()>,
}

fn unavailable(error: impl Into<igl_core::BoxError>) -> StoreError {
    StoreError::Unavailable(error.into())
}

#[derive(Debug, thiserror::Error)]
enum BrokerError {
    #[error("broker call {0} timed out")]
    Timeout(&'static str),
    #[error("broker call {0} failed")]
    Call(&'static str, #[source] lapin::Error),
    #[error("the broker did not confirm a publish to {0} (nack or unroutable)")]
    NotConfirmed(String),
    #[error("not reconnecting to the broker before the backoff ends ({0:?} left)")]
    Backoff(Duration),
}

impl Inner {
    async fn call<T>(
        &self,
        what: &'static str,
        future: impl Future<Output = lapin::Result<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.options.operation_timeout, future).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(unavailable(BrokerError::Call(what, error))),
            Err(_) => Err(unavailable(BrokerError::Timeout(what))),
        }
    }

    fn name(&self, queue: &QueueName) -> String {
        format!("{}{}", self.options.prefix, queue)
    }

    fn dead_name(&self, queue: &QueueName) -> String {
        format!("{}{}.dead", self.options.prefix, queue)
    }

    fn tier_name(&self, queue: &QueueName, tier_ms: u64) -> String {
        format!("{}{}.delay.{tier_ms}", self.options.prefix, queue)
    }

    fn wakeup(&self, queue: &QueueName) -> Arc<Notify> {
        self.wakeups
            .lock()
            .expect("wakeups lock")
            .entry(queue.clone())
            .or_default()
            .clone()
    }

    /// The current session, reconnecting when it is down (fails fast during the backoff).
    async fn session(&self) -> Result<Arc<Session>, StoreError> {
        let mut current = self.session.lock().await;
        if let Some(session) = current.as_ref() {
            if session.connection.status().connected() && session.publisher.status().connected() {
                return Ok(session.clone());
            }
            warn!("broker connection lost, reconnecting");
            *current = None;
        }
        if let Some(not_before) = self.reconnect.lock().expect("backoff lock").not_before {
            let now = Instant::now();
            if now < not_before {
                return Err(unavailable(BrokerError::Backoff(not_before - now)));
            }
        }
        match self.open_session().await {
            Ok(session) => {
                *self.reconnect.lock().expect("backoff lock") = Backoff::default();
                let session = Arc::new(session);
                *current = Some(session.clone());
                Ok(session)
            }
            Err(error) => {
                let mut backoff = self.reconnect.lock().expect("backoff lock");
                backoff.failures = backoff.failures.saturating_add(1);
                let delay = Duration::from_millis(100)
                    .saturating_mul(1 << backoff.failures.min(7))
                    .min(Duration::from_secs(10));
                backoff.not_before = Some(Instant::now() + delay);
                warn!(error = %crate::error_chain(&error), ?delay, "cannot connect to the broker");
                Err(error)
            }
        }
    }

    async fn open_session(&self) -> Result<Session, StoreError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(LongString::from(self.options.connection_name.as_bytes()));
        let connection = self
            .call("connect", connect(&self.options, properties))
            .await?;
        let publisher = self
            .call("channel.open", connection.create_channel())
            .await?;
        self.call(
            "confirm.select",
            publisher.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        info!(url = %redact_amqp_url(&self.options.url), "connected to the broker");
        Ok(Session {
            connection,
            publisher,
            queues: tokio::sync::Mutex::default(),
        })
    }

    /// The claim channel of `queue` in the current session, declaring its topology the
    /// first time.
    async fn queue_channel(&self, queue: &QueueName) -> Result<Arc<QueueChannel>, StoreError> {
        let session = self.session().await?;
        let mut queues = session.queues.lock().await;
        if let Some(existing) = queues.get(queue) {
            if existing.channel.status().connected() {
                return Ok(existing.clone());
            }
            queues.remove(queue);
        }
        let channel = self
            .call("channel.open", session.connection.create_channel())
            .await?;
        self.declare_topology(&channel, queue).await?;
        self.known_queues
            .lock()
            .expect("known queues lock")
            .insert(queue.clone());
        let queue_channel = Arc::new(QueueChannel {
            channel,
            buffer: Arc::default(),
            unclaimed: Mutex::default(),
            consuming: tokio::sync::OnceCell::new(),
        });
        queues.insert(queue.clone(), queue_channel.clone());
        Ok(queue_channel)
    }

    /// Declares the work, dead-letter and delay-tier queues of `queue` (idempotent).
    async fn declare_topology(
        &self,
        channel: &Channel,
        queue: &QueueName,
    ) -> Result<(), StoreError> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let work = self.name(queue);
        let dead = self.dead_name(queue);
        let mut dead_args = FieldTable::default();
        dead_args.insert("x-queue-type".into(), text("quorum"));
        self.call(
            "queue.declare",
            channel.queue_declare(dead.as_str().into(), durable, dead_args),
        )
        .await?;
        let mut work_args = dead_lettering_to(&dead);
        work_args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(self.options.delivery_limit)),
        );
        self.call(
            "queue.declare",
            channel.queue_declare(work.as_str().into(), durable, work_args),
        )
        .await?;
        for tier in DELAY_TIERS {
            let mut tier_args = dead_lettering_to(&work);
            tier_args.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(i64::try_from(tier).unwrap_or(i64::MAX)),
            );
            let name = self.tier_name(queue, tier);
            self.call(
                "queue.declare",
                channel.queue_declare(name.as_str().into(), durable, tier_args),
            )
            .await?;
        }
        debug!(queue = %queue, "queue topology declared");
        Ok(())
    }

    /// Publishes `messages` (routing key = queue name, default exchange) and waits for
    /// every confirm.
    async fn publish(&self, messages: &[(String, Outgoing)]) -> Result<(), StoreError> {
        if messages.is_empty() {
            return Ok(());
        }
        let session = self.session().await?;
        let mut confirms = Vec::with_capacity(messages.len());
        for (routing_key, message) in messages {
            let confirm = self
                .call(
                    "basic.publish",
                    session.publisher.basic_publish(
                        ShortString::from(""),
                        routing_key.as_str().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        &message.body,
                        message.properties.clone(),
                    ),
                )
                .await?;
            confirms.push((routing_key, confirm));
        }
        for (routing_key, confirm) in confirms {
            let confirmation = self.call("publisher confirm", confirm).await?;
            if !confirmation.is_ack() || confirmation.take_message().is_some() {
                return Err(unavailable(BrokerError::NotConfirmed(routing_key.clone())));
            }
        }
        Ok(())
    }

    /// Where a job due `delay` from now goes: the work queue when it is due, else a tier.
    fn route_for(&self, queue: &QueueName, delay: Duration) -> String {
        if delay.is_zero() {
            return self.name(queue);
        }
        self.tier_name(queue, tier_for(delay))
    }

    /// Takes the lease `receipt` still holds (not expired), or `None`.
    fn take_lease(&self, receipt: JobReceipt) -> Option<Lease> {
        let mut leases = self.leases.lock().expect("leases lock");
        match leases.get(&receipt.lease_token) {
            Some(lease) if lease.id == receipt.id && lease.deadline > Instant::now() => {
                leases.remove(&receipt.lease_token)
            }
            _ => None,
        }
    }

    fn put_lease(&self, token: i64, lease: Lease) {
        self.leases
            .lock()
            .expect("leases lock")
            .insert(token, lease);
        self.lease_changed.notify_one();
    }

    /// Returns expired leases to their queues; returns the next deadline.
    async fn expire_leases(&self) -> Option<Instant> {
        let now = Instant::now();
        let (expired, next) = {
            let mut leases = self.leases.lock().expect("leases lock");
            let tokens: Vec<i64> = leases
                .iter()
                .filter(|(_, lease)| lease.deadline <= now)
                .map(|(token, _)| *token)
                .collect();
            let expired: Vec<Lease> = tokens
                .iter()
                .filter_map(|token| leases.remove(token))
                .collect();
            let next = leases.values().map(|lease| lease.deadline).min();
            (expired, next)
        };
        for lease in expired {
            debug!(job.id = lease.id.0, queue = %lease.queue, "lease expired, job returned to its queue");
            self.hand_back(lease).await;
        }
        next
    }

    /// Returns the job of an expired lease to its queue: its own delivery with
    /// `basic.nack requeue` (the broker counts the redelivery), or, for a job of an
    /// envelope, as a single copy (counting this attempt) before it is settled in the
    /// envelope. When that copy cannot be published, the whole envelope goes back (its
    /// other jobs run again: at least once).
    async fn hand_back(&self, lease: Lease) {
        match lease.holder {
            Holder::Delivery(acker) => self.requeue([acker]).await,
            Holder::Part(envelope) => {
                let copy = JobMessage {
                    attempts: lease.attempt,
                    ..lease.message
                };
                let route = self.name(&lease.queue);
                match self.publish(&[(route, copy.into())]).await {
                    Ok(()) => {
                        let _ = self.settle(Holder::Part(envelope)).await;
                        self.wakeup(&lease.queue).notify_waiters();
                    }
                    Err(_) => self.requeue([envelope.acker.clone()]).await,
                }
            }
        }
    }

    /// Acks what a settled job came in: its own delivery, or its envelope once every job
    /// of the envelope is settled. `Ok(false)` when the delivery was already settled
    /// otherwise (returned with its whole envelope, say).
    async fn settle(&self, holder: Holder) -> Result<bool, StoreError> {
        let acker = match holder {
            Holder::Delivery(acker) => acker,
            Holder::Part(envelope) => {
                if envelope.open.fetch_sub(1, Ordering::AcqRel) > 1 {
                    return Ok(envelope.acker.usable());
                }
                envelope.acker.clone()
            }
        };
        self.call("basic.ack", acker.ack(BasicAckOptions::default()))
            .await
    }

    /// Returns deliveries to their queue (`basic.nack requeue`), best effort: a failure
    /// means the channel is gone, and the broker returns them with it.
    async fn requeue(&self, ackers: impl IntoIterator<Item = Acker>) {
        let requeue = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        for acker in ackers {
            if let Err(error) = self.call("basic.nack", acker.nack(requeue)).await {
                debug!(error = %crate::error_chain(&error), "returning a delivery failed; the broker returns it with the channel");
            }
        }
    }

    /// Sorts a delivery into `claim`: a job (its lease starts when the claim ends), a job
    /// that came back from a tier before its due time, an envelope (its jobs are claimed
    /// up to `room` in all; the rest wait in `claim_channel` for the next claims; a
    /// redelivered envelope is split into single jobs instead), or a message that is not a
    /// job (rejected, so the broker dead-letters it).
    async fn accept(
        &self,
        queue: &QueueName,
        claim_channel: &QueueChannel,
        delivery: Delivery,
        room: usize,
        claim: &mut Claim,
    ) -> Result<(), StoreError> {
        let (carried, redeliveries) = match decode(&delivery.properties, &delivery.data) {
            Ok(decoded) => decoded,
            Err(error) => {
                warn!(queue = %queue, error = %crate::error_chain(&error), "not a job message, dead-lettered");
                let reject = BasicRejectOptions { requeue: false };
                self.call("basic.reject", delivery.acker.reject(reject))
                    .await?;
                return Ok(());
            }
        };
        let message = match carried {
            Carried::Job(message) => message,
            Carried::Envelope(jobs) if redeliveries > 0 => {
                // Came back (its consumer died or lost its connection): each job becomes a
                // message of its own, so that the delivery limit isolates a job that kills
                // its consumers, and jobs already done run at most once more. Its jobs were
                // handed out on its first delivery only (any later claim splits it), so
                // that is the one attempt to count: its other returns were from consumers
                // that had only prefetched it.
                let route = self.name(queue);
                let copies = jobs
                    .into_iter()
                    .map(|job| {
                        let attempts = job.attempts.saturating_add(1);
                        (route.clone(), JobMessage { attempts, ..job })
                    })
                    .collect();
                claim.resend.push(Resend {
                    copies,
                    acker: delivery.acker,
                });
                return Ok(());
            }
            Carried::Envelope(jobs) => {
                let envelope = Arc::new(Envelope {
                    acker: delivery.acker,
                    open: AtomicUsize::new(jobs.len()),
                });
                let mut jobs = jobs.into_iter();
                for job in jobs.by_ref().take(room) {
                    let attempt = job.attempts.saturating_add(1);
                    self.lease_out(queue, job, attempt, Holder::Part(envelope.clone()), claim);
                }
                claim_channel
                    .unclaimed
                    .lock()
                    .expect("unclaimed lock")
                    .extend(jobs.map(|job| (envelope.clone(), job)));
                return Ok(());
            }
        };
        let attempt = message
            .attempts
            .saturating_add(redeliveries)
            .saturating_add(1);
        if let Some(due) = message.due_micros {
            let early = due - now_micros();
            if early > DUE_TOLERANCE_MICROS {
                // Came back from a tier before its due time: it waits for the rest (keeping
                // the count of its earlier deliveries).
                let delay = Duration::from_micros(u64::try_from(early).unwrap_or(0));
                let route = self.route_for(queue, delay);
                let copy = JobMessage {
                    attempts: attempt - 1,
                    ..message
                };
                claim.resend.push(Resend {
                    copies: vec![(route, copy)],
                    acker: delivery.acker,
                });
                return Ok(());
            }
        }
        self.lease_out(
            queue,
            message,
            attempt,
            Holder::Delivery(delivery.acker),
            claim,
        );
        Ok(())
    }

    /// Adds `message` to `claim` as attempt `attempt`, held by `holder`.
    fn lease_out(
        &self,
        queue: &QueueName,
        message: JobMessage,
        attempt: u32,
        holder: Holder,
        claim: &mut Claim,
    ) {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        claim.jobs.push(message.claimed(attempt, token));
        claim.leases.push((
            token,
            Lease {
                id: message.id,
                queue: queue.clone(),
                holder,
                // Set when the claim ends.
                deadline: Instant::now(),
                message,
                attempt,
            },
        ));
    }

    /// Ends a claim: publishes the copies of the early jobs and split envelopes (together,
    /// then acks their deliveries), then starts the leases of the claimed jobs, so that a
    /// slow claim never hands out a lease that is already running out. When `outcome` is an
    /// error (or publishing the copies fails) the resent and the claimed jobs are returned
    /// to their queue at once instead.
    async fn finish_claim(
        &self,
        claim: Claim,
        lease: Duration,
        outcome: Result<(), StoreError>,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        let Claim {
            jobs,
            leases,
            resend,
        } = claim;
        let outcome = match outcome {
            Ok(()) => self.resend(resend).await,
            Err(error) => {
                self.requeue(resend.into_iter().map(|resent| resent.acker))
                    .await;
                Err(error)
            }
        };
        let deadline = match outcome {
            Ok(()) => Instant::now() + lease,
            // Expired at once: the reaper returns them to their queue.
            Err(_) => Instant::now(),
        };
        for (token, mut held) in leases {
            held.deadline = deadline;
            self.put_lease(token, held);
        }
        outcome.map(|()| jobs)
    }

    /// Publishes the copies of `resend` (waiting for every confirm), then acks the
    /// deliveries they came in.
    async fn resend(&self, resend: Vec<Resend>) -> Result<(), StoreError> {
        if resend.is_empty() {
            return Ok(());
        }
        let mut messages = Vec::new();
        let mut ackers = Vec::with_capacity(resend.len());
        for resent in resend {
            messages.extend(
                resent
                    .copies
                    .into_iter()
                    .map(|(route, copy)| (route, Outgoing::from(copy))),
            );
            ackers.push(resent.acker);
        }
        if let Err(error) = self.publish(&messages).await {
            // Some copies may be out: the originals come back too (at least once).
            self.requeue(ackers).await;
            return Err(error);
        }
        for acker in ackers {
            self.call("basic.ack", acker.ack(BasicAckOptions::default()))
                .await?;
        }
        Ok(())
    }

    /// Browses the dead-letter queues of `queues` on a scratch channel (its deliveries
    /// return to their queues when it closes), calling `visit` with each dead letter. When
    /// `replay` names a dead letter's id, that one is published again as a fresh job on its
    /// queue (confirmed) and only then acked away; returns whether it was found.
    async fn browse_dead(
        &self,
        queues: &[QueueName],
        replay: Option<i64>,
        mut visit: impl FnMut(DeadLetter),
    ) -> Result<bool, StoreError> {
        let session = self.session().await?;
        for queue in queues {
            self.queue_channel(queue).await?;
        }
        let scratch = self
            .call("channel.open", session.connection.create_channel())
            .await?;
        let result = self.browse_on(&scratch, queues, replay, &mut visit).await;
        // Closing returns every other browsed message to its queue.
        let _ = self
            .call("channel.close", scratch.close(200, "browsed".into()))
            .await;
        result
    }

    async fn browse_on(
        &self,
        scratch: &Channel,
        queues: &[QueueName],
        replay: Option<i64>,
        visit: &mut impl FnMut(DeadLetter),
    ) -> Result<bool, StoreError> {
        for queue in queues {
            let dead = self.dead_name(queue);
            for _ in 0..BROWSE_LIMIT {
                let got = self
                    .call(
                        "basic.get",
                        scratch.basic_get(dead.as_str().into(), BasicGetOptions { no_ack: false }),
                    )
                    .await?;
                let Some(got) = got else { break };
                let remaining = got.message_count;
                let delivery = got.delivery;
                match decode(&delivery.properties, &delivery.data) {
                    Ok((Carried::Envelope(jobs), redeliveries)) => {
                        // An envelope the broker dead-lettered (its delivery limit): split
                        // into single dead letters, browsed further on in this same pass
                        // (redeliveries counted as for a single job, below).
                        self.split_dead_envelope(&dead, jobs, redeliveries.min(1))
                            .await?;
                        self.call("basic.ack", delivery.acker.ack(BasicAckOptions::default()))
                            .await?;
                        if remaining == 0 {
                            // The copies were published after this count was taken.
                            continue;
                        }
                    }
                    Ok((Carried::Job(message), redeliveries)) => {
                        // Browsing returns the message, which the broker counts as a
                        // redelivery: only the first one counts as an attempt.
                        let redeliveries = if message.dead.is_some() {
                            0
                        } else {
                            redeliveries.min(1)
                        };
                        let letter = message.dead_letter(redeliveries);
                        if replay == Some(letter.id) {
                            let fresh = JobMessage {
                                id: JobId(time_ordered_id()),
                                attempts: 0,
                                last_error: None,
                                due_micros: None,
                                dead: None,
                                death_reason: None,
                                ..message
                            };
                            let route = self.name(&fresh.queue);
                            let queue = fresh.queue.clone();
                            self.publish(&[(route, fresh.into())]).await?;
                            self.call("basic.ack", delivery.acker.ack(BasicAckOptions::default()))
                                .await?;
                            self.wakeup(&queue).notify_waiters();
                            return Ok(true);
                        }
                        visit(letter);
                    }
                    // Not a job: left where it is.
                    Err(_) => {}
                }
                if remaining == 0 {
                    break;
                }
            }
        }
        Ok(false)
    }

    /// Publishes each job of a dead-lettered envelope to the dead-letter queue `dead` as a
    /// dead letter of its own (confirmed), with the broker's reason as its error.
    async fn split_dead_envelope(
        &self,
        dead: &str,
        jobs: Vec<JobMessage>,
        redeliveries: u32,
    ) -> Result<(), StoreError> {
        let failed_at = now_micros();
        let copies: Vec<(String, Outgoing)> = jobs
            .into_iter()
            .map(|job| {
                let letter = job.dead_letter(redeliveries);
                let copy = JobMessage {
                    attempts: letter.attempts,
                    last_error: letter.last_error,
                    dead: Some((time_ordered_id(), failed_at)),
                    death_reason: None,
                    ..job
                };
                (dead.to_owned(), copy.into())
            })
            .collect();
        self.publish(&copies).await
    }

    fn browse_queues(&self, queue: Option<&QueueName>) -> Vec<QueueName> {
        match queue {
            Some(queue) => vec![queue.clone()],
            None => self
                .known_queues
                .lock()
                .expect("known queues lock")
                .iter()
                .cloned()
                .collect(),
        }
    }
}

/// Opens a connection (TLS for `amqps://`, trusting `ca_certificates` too).
async fn connect(
    options: &AmqpOptions,
    properties: ConnectionProperties,
) -> Result<Connection, lapin::Error> {
    let tls = OwnedTLSConfig {
        identity: None,
        cert_chain: options.ca_certificates.clone(),
    };
    let runtime = lapin::runtime::default_runtime()?;
    options
        .url
        .as_str()
        .connect_with_config(properties, tls, runtime)
        .await
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes()))
}

/// Queue arguments of a quorum queue that dead-letters (at least once) to `target`.
fn dead_lettering_to(target: &str) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text("quorum"));
    args.insert("x-dead-letter-exchange".into(), text(""));
    args.insert("x-dead-letter-routing-key".into(), text(target));
    args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
    args.insert("x-overflow".into(), text("reject-publish"));
    args
}

impl AmqpQueue {
    /// Connects to the broker and declares the topology of `options.queues`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when the broker cannot be reached or refuses the
    /// declarations (e.g. a queue exists with other arguments).
    pub async fn connect(options: AmqpOptions) -> Result<Self, StoreError> {
        let queues = options.queues.clone();
        let inner = Arc::new(Inner {
            known_queues: Mutex::new(queues.iter().cloned().collect()),
            options,
            session: tokio::sync::Mutex::default(),
            reconnect: Mutex::default(),
            leases: Mutex::default(),
            lease_changed: Notify::new(),
            wakeups: Mutex::default(),
            next_token: AtomicI64::new(rand::random_range(1..i64::MAX / 2)),
        });
        for queue in &queues {
            inner.queue_channel(queue).await?;
        }
        if queues.is_empty() {
            inner.session().await?;
        }
        tokio::spawn(reap_leases(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// Publishes already-committed outbox jobs (the relay's side): each keeps `id` as its
    /// job id, so a job published twice (a relay that crashed before marking it sent) is
    /// recognisably the same job. Waits for every confirm.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when the broker does not confirm every message; some may
    /// have been published (the relay publishes them again).
    pub async fn publish_outbox(&self, jobs: &[ClaimedJob]) -> Result<(), StoreError> {
        let mut by_queue: Vec<(&QueueName, Vec<&ClaimedJob>)> = Vec::new();
        for job in jobs {
            match by_queue.iter_mut().find(|(queue, _)| *queue == &job.queue) {
                Some((_, queued)) => queued.push(job),
                None => by_queue.push((&job.queue, vec![job])),
            }
        }
        let per_message = self.inner.options.jobs_per_message.max(1);
        let mut messages = Vec::new();
        for (queue, queued) in &by_queue {
            self.inner.queue_channel(queue).await?;
            let route = self.inner.name(queue);
            for chunk in queued.chunks(per_message) {
                let outgoing = match chunk {
                    [job] => Outgoing::from(fresh_message(job)),
                    _ => encode_envelope(queue, chunk),
                };
                messages.push((route.clone(), outgoing));
            }
        }
        self.inner.publish(&messages).await?;
        for (queue, _) in by_queue {
            self.inner.wakeup(queue).notify_waiters();
        }
        Ok(())
    }

    /// Checks that the broker answers (connecting if needed), for readiness probes.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when it does not.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.inner.session().await.map(|_| ())
    }

    /// How many of `receipts` still hold their lease (without changing anything).
    pub fn held(&self, receipts: &[JobReceipt]) -> u64 {
        let leases = self.inner.leases.lock().expect("leases lock");
        let now = Instant::now();
        receipts
            .iter()
            .filter(|receipt| {
                leases
                    .get(&receipt.lease_token)
                    .is_some_and(|lease| lease.id == receipt.id && lease.deadline > now)
            })
            .count() as u64
    }

    /// Deletes every queue of `queues` (work, dead-letter, tiers): for tests.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when the broker fails.
    pub async fn delete_topology(&self, queues: &[QueueName]) -> Result<(), StoreError> {
        let session = self.inner.session().await?;
        let channel = self
            .inner
            .call("channel.open", session.connection.create_channel())
            .await?;
        for queue in queues {
            let mut names = vec![self.inner.name(queue), self.inner.dead_name(queue)];
            names.extend(
                DELAY_TIERS
                    .iter()
                    .map(|&tier| self.inner.tier_name(queue, tier)),
            );
            for name in names {
                self.inner
                    .call(
                        "queue.delete",
                        channel.queue_delete(name.as_str().into(), QueueDeleteOptions::default()),
                    )
                    .await?;
            }
        }
        session.queues.lock().await.clear();
        Ok(())
    }

    /// Closes the connection (leases still held are returned by the broker).
    pub async fn close(&self) {
        if let Some(session) = self.inner.session.lock().await.take() {
            let _ = self
                .inner
                .call(
                    "connection.close",
                    session.connection.close(200, "bye".into()),
                )
                .await;
        }
    }
}

/// The message of an outbox job published as a job of its own.
fn fresh_message(job: &ClaimedJob) -> JobMessage {
    JobMessage {
        id: job.id,
        queue: job.queue.clone(),
        payload: serde_json::to_vec(&job.payload).unwrap_or_default(),
        attempts: 0,
        enqueued_at_micros: to_micros(job.enqueued_at),
        due_micros: None,
        dedup_key: job.dedup_key.clone(),
        last_error: None,
        dead: None,
        death_reason: None,
    }
}

/// Returns expired leases until the queue is dropped.
async fn reap_leases(inner: Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let next = strong.expire_leases().await;
        let wait = next
            .map(|deadline| deadline.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        // Wait without keeping the queue alive: a dropped queue stops the reaper within 1 s.
        let changed = async {
            strong.lease_changed.notified().await;
        };
        let weak_wait = tokio::time::sleep(wait);
        tokio::select! {
            () = changed => {}
            () = weak_wait => {}
        }
        drop(strong);
    }
}

#[async_trait]
impl JobQueue for AmqpQueue {
    /// Publishes each job (to its work queue, or to a delay tier) and waits for the
    /// confirms. Not atomic across jobs, and dedup keys are not enforced (module docs).
    async fn enqueue(&self, jobs: &[NewJob]) -> Result<(), StoreError> {
        let now = now_micros();
        let mut messages = Vec::with_capacity(jobs.len());
        for job in jobs {
            self.inner.queue_channel(&job.queue).await?;
            let delay_micros = i64::try_from(job.delay.as_micros()).unwrap_or(i64::MAX);
            messages.push((
                self.inner.route_for(&job.queue, job.delay),
                JobMessage {
                    id: JobId(time_ordered_id()),
                    queue: job.queue.clone(),
                    payload: serde_json::to_vec(&job.payload)
                        .map_err(|error| StoreError::InvalidArgument(error.to_string()))?,
                    attempts: 0,
                    enqueued_at_micros: now,
                    due_micros: (!job.delay.is_zero()).then(|| now.saturating_add(delay_micros)),
                    dedup_key: job.dedup_key.clone(),
                    last_error: None,
                    dead: None,
                    death_reason: None,
                }
                .into(),
            ));
        }
        self.inner.publish(&messages).await?;
        for job in jobs.iter().filter(|job| job.delay.is_zero()) {
            self.inner.wakeup(&job.queue).notify_waiters();
        }
        Ok(())
    }

    async fn claim(
        &self,
        queue: &QueueName,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        let claim_channel = self.inner.queue_channel(queue).await?;
        let mut claim = Claim::default();
        let outcome = self.gather(queue, &claim_channel, max, &mut claim).await;
        self.inner.finish_claim(claim, lease, outcome).await
    }

    async fn ack(&self, receipts: &[JobReceipt]) -> Result<u64, StoreError> {
        let mut acked = 0;
        for receipt in receipts {
            let Some(lease) = self.inner.take_lease(*receipt) else {
                continue;
            };
            // A failed ack means the channel is gone: the broker redelivers the job.
            if let Ok(true) = self.inner.settle(lease.holder).await {
                acked += 1;
            }
        }
        Ok(acked)
    }

    async fn retry(
        &self,
        receipt: JobReceipt,
        delay: Duration,
        error: &str,
    ) -> Result<bool, StoreError> {
        let Some(lease) = self.inner.take_lease(receipt) else {
            return Ok(false);
        };
        let now = now_micros();
        let delay_micros = i64::try_from(delay.as_micros()).unwrap_or(i64::MAX);
        let copy = JobMessage {
            attempts: lease.attempt,
            last_error: Some(error.to_owned()),
            due_micros: (!delay.is_zero()).then(|| now.saturating_add(delay_micros)),
            ..lease.message.clone()
        };
        let route = self.inner.route_for(&lease.queue, delay);
        if let Err(publish_error) = self.inner.publish(&[(route, copy.into())]).await {
            self.inner.put_lease(receipt.lease_token, lease);
            return Err(publish_error);
        }
        let queue = lease.queue.clone();
        let _ = self.inner.settle(lease.holder).await;
        if delay.is_zero() {
            self.inner.wakeup(&queue).notify_waiters();
        }
        Ok(true)
    }

    async fn dead_letter(&self, receipt: JobReceipt, error: &str) -> Result<bool, StoreError> {
        let Some(lease) = self.inner.take_lease(receipt) else {
            return Ok(false);
        };
        let copy = JobMessage {
            attempts: lease.attempt,
            last_error: Some(error.to_owned()),
            due_micros: None,
            dead: Some((time_ordered_id(), now_micros())),
            death_reason: None,
            ..lease.message.clone()
        };
        let route = self.inner.dead_name(&lease.queue);
        if let Err(publish_error) = self.inner.publish(&[(route, copy.into())]).await {
            self.inner.put_lease(receipt.lease_token, lease);
            return Err(publish_error);
        }
        let _ = self.inner.settle(lease.holder).await;
        Ok(true)
    }

    async fn extend_lease(&self, receipt: JobReceipt, lease: Duration) -> Result<bool, StoreError> {
        let mut leases = self.inner.leases.lock().expect("leases lock");
        match leases.get_mut(&receipt.lease_token) {
            Some(held) if held.id == receipt.id && held.deadline > Instant::now() => {
                held.deadline = Instant::now() + lease;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn dead_letters(
        &self,
        queue: Option<&QueueName>,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let queues = self.inner.browse_queues(queue);
        let mut letters = Vec::new();
        self.inner
            .browse_dead(&queues, None, |letter| letters.push(letter))
            .await?;
        letters.sort_by_key(|letter| letter.id);
        letters.dedup_by_key(|letter| letter.id);
        Ok(letters
            .into_iter()
            .filter(|letter| after.is_none_or(|after| letter.id > after))
            .take(limit as usize)
            .collect())
    }

    async fn replay_dead_letter(&self, id: i64) -> Result<bool, StoreError> {
        let queues = self.inner.browse_queues(None);
        self.inner.browse_dead(&queues, Some(id), |_| {}).await
    }

    async fn depth(&self, queue: &QueueName) -> Result<QueueDepth, StoreError> {
        let claim_channel = self.inner.queue_channel(queue).await?;
        let passive = QueueDeclareOptions {
            passive: true,
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let count = |name: String| {
            let channel = claim_channel.channel.clone();
            let inner = self.inner.clone();
            async move {
                inner
                    .call(
                        "queue.declare",
                        channel.queue_declare(name.as_str().into(), passive, FieldTable::default()),
                    )
                    .await
                    .map(|declared| u64::from(declared.message_count()))
            }
        };
        let ready = count(self.inner.name(queue)).await?;
        let dead = count(self.inner.dead_name(queue)).await?;
        let mut scheduled = 0;
        for tier in DELAY_TIERS {
            scheduled += count(self.inner.tier_name(queue, tier)).await?;
        }
        let leased = self
            .inner
            .leases
            .lock()
            .expect("leases lock")
            .values()
            .filter(|lease| &lease.queue == queue)
            .count() as u64;
        let buffered = claim_channel.buffer.lock().expect("buffer lock").len() as u64
            + claim_channel
                .unclaimed
                .lock()
                .expect("unclaimed lock")
                .len() as u64;
        Ok(QueueDepth {
            ready,
            scheduled,
            in_flight: leased + buffered,
            dead,
        })
    }

    /// Starts (once per connection) a consumer on `queue` with `basic.qos` =
    /// [`AmqpOptions::prefetch`], then waits until it receives a delivery, a job is
    /// enqueued by this process, or `timeout` passes.
    async fn wait_for_jobs(&self, queue: &QueueName, timeout: Duration) {
        let wakeup = self.inner.wakeup(queue);
        let notified = wakeup.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let claim_channel = match self.inner.queue_channel(queue).await {
            Ok(claim_channel) => claim_channel,
            Err(_) => {
                // The broker is down: the caller's next claim reports it.
                tokio::time::sleep(timeout.min(Duration::from_secs(1))).await;
                return;
            }
        };
        if self.ensure_consumer(queue, &claim_channel).await.is_err() {
            tokio::time::sleep(timeout.min(Duration::from_secs(1))).await;
            return;
        }
        let unclaimed = !claim_channel.buffer.lock().expect("buffer lock").is_empty()
            || !claim_channel
                .unclaimed
                .lock()
                .expect("unclaimed lock")
                .is_empty();
        if timeout.is_zero() || unclaimed {
            return;
        }
        // The consumer is pushed every job, retries included (they come back from their
        // tiers by push too): the timeout is only a safety net, so an idle worker does not
        // need to pull an empty quorum queue every `timeout` (which costs the broker CPU).
        let _ = tokio::time::timeout(timeout.max(PUSHED_IDLE_POLL), notified).await;
    }
}

impl AmqpQueue {
    /// Starts the consumer of `queue` on this connection unless it is running.
    async fn ensure_consumer(
        &self,
        queue: &QueueName,
        claim_channel: &QueueChannel,
    ) -> Result<(), StoreError> {
        let wakeup = self.inner.wakeup(queue);
        claim_channel
            .consuming
            .get_or_try_init(|| self.start_consumer(queue, claim_channel, wakeup))
            .await
            .map(|_| ())
    }

    async fn start_consumer(
        &self,
        queue: &QueueName,
        claim_channel: &QueueChannel,
        wakeup: Arc<Notify>,
    ) -> Result<(), StoreError> {
        let channel = &claim_channel.channel;
        self.inner
            .call(
                "basic.qos",
                channel.basic_qos(self.inner.options.prefetch, BasicQosOptions::default()),
            )
            .await?;
        let name = self.inner.name(queue);
        let mut consumer = self
            .inner
            .call(
                "basic.consume",
                channel.basic_consume(
                    name.as_str().into(),
                    ShortString::from(""),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await?;
        let buffer = claim_channel.buffer.clone();
        let queue = queue.clone();
        tokio::spawn(async move {
            while let Some(delivery) = consumer.next().await {
                match delivery {
                    Ok(delivery) => {
                        buffer.lock().expect("buffer lock").push_back(delivery);
                        wakeup.notify_waiters();
                    }
                    Err(error) => {
                        debug!(queue = %queue, %error, "consumer stopped");
                        break;
                    }
                }
            }
            wakeup.notify_waiters();
        });
        Ok(())
    }

    /// Gathers up to `max` jobs of `queue` into `claim`: what the consumer has prefetched,
    /// else pulled with `basic.get` until the queue is empty.
    async fn gather(
        &self,
        queue: &QueueName,
        claim_channel: &QueueChannel,
        max: usize,
        claim: &mut Claim,
    ) -> Result<(), StoreError> {
        self.take_buffered(queue, claim_channel, max, claim).await?;
        if !claim.jobs.is_empty() {
            // Push mode (a consumer is prefetching): what it delivered is the batch; pulling
            // the rest one `basic.get` round trip at a time would only slow the claim down.
            return Ok(());
        }
        let name = self.inner.name(queue);
        while claim.jobs.len() < max {
            let got = self
                .inner
                .call(
                    "basic.get",
                    claim_channel
                        .channel
                        .basic_get(name.as_str().into(), BasicGetOptions { no_ack: false }),
                )
                .await?;
            let Some(got) = got else { break };
            let remaining = got.message_count;
            let room = max - claim.jobs.len();
            self.inner
                .accept(queue, claim_channel, got.delivery, room, claim)
                .await?;
            if remaining == 0 {
                break;
            }
        }
        // With a consumer running, the broker may have pushed jobs to it meanwhile (not
        // ordered against the gets' replies: a quorum queue's pushes are not).
        self.take_buffered(queue, claim_channel, max, claim).await
    }

    /// Claims (up to `max` in all) the rest of envelopes received earlier, then deliveries
    /// the consumer has received.
    async fn take_buffered(
        &self,
        queue: &QueueName,
        claim_channel: &QueueChannel,
        max: usize,
        claim: &mut Claim,
    ) -> Result<(), StoreError> {
        while claim.jobs.len() < max {
            let unclaimed = claim_channel
                .unclaimed
                .lock()
                .expect("unclaimed lock")
                .pop_front();
            let Some((envelope, job)) = unclaimed else {
                break;
            };
            // An envelope of a closed channel is redelivered by the broker.
            if envelope.acker.usable() {
                let attempt = job.attempts.saturating_add(1);
                self.inner
                    .lease_out(queue, job, attempt, Holder::Part(envelope), claim);
            }
        }
        while claim.jobs.len() < max {
            let buffered = claim_channel
                .buffer
                .lock()
                .expect("buffer lock")
                .pop_front();
            let Some(delivery) = buffered else { break };
            if delivery.acker.usable() {
                let room = max - claim.jobs.len();
                self.inner
                    .accept(queue, claim_channel, delivery, room, claim)
                    .await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_amqp_url("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:[redacted]@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_amqp_url("not a url"), "[unparsable url]");
    }

    /// An envelope in a dead-letter queue (the broker dead-letters one that hits its
    /// delivery limit before a consumer could split it) is listed job by job, and each job
    /// can be replayed alone.
    #[cfg_attr(igl_skip_amqp, ignore = "set IGL_TEST_AMQP_URL to run")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_lettered_envelope_is_listed_and_replayed_job_by_job() {
        let url = std::env::var("IGL_TEST_AMQP_URL").expect("IGL_TEST_AMQP_URL");
        let mut options = AmqpOptions::new(url);
        options.prefix = format!("t{}.", rand::random::<u32>());
        let broker = AmqpQueue::connect(options).await.unwrap();
        let q = QueueName::parse("env-dead").unwrap();
        let jobs = crate::message::outbox_jobs(&q, 2);
        let refs: Vec<&ClaimedJob> = jobs.iter().collect();
        broker.inner.queue_channel(&q).await.unwrap();
        let dead = broker.inner.dead_name(&q);
        broker
            .inner
            .publish(&[(dead, encode_envelope(&q, &refs))])
            .await
            .unwrap();

        let letters = broker.dead_letters(Some(&q), None, 10).await.unwrap();
        let numbers: Vec<_> = letters
            .iter()
            .map(|letter| letter.payload["n"].clone())
            .collect();
        assert_eq!(numbers, [1, 2], "{letters:?}");
        assert_ne!(letters[0].id, letters[1].id);
        // The broker returns what a listing browsed asynchronously: wait for the count.
        let deadline = Instant::now() + Duration::from_secs(10);
        while broker.depth(&q).await.unwrap().dead != 2 {
            assert!(Instant::now() < deadline, "the dead count never reached 2");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(broker.replay_dead_letter(letters[0].id).await.unwrap());
        let replayed = broker.claim(&q, 10, Duration::from_secs(30)).await.unwrap();
        assert_eq!(replayed.len(), 1);
        // A replay is a fresh job (a new id, attempts reset) with the dead letter's payload.
        assert_eq!(replayed[0].payload["n"], 1);
        assert_eq!(replayed[0].attempt, 1);
        assert_eq!(broker.ack(&[replayed[0].receipt()]).await.unwrap(), 1);
        let left = broker.dead_letters(Some(&q), None, 10).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].payload["n"], 2);
        broker.delete_topology(&[q]).await.unwrap();
        broker.close().await;
    }

    #[test]
    fn tiers_grow() {
        assert!(DELAY_TIERS.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn a_delay_waits_in_the_largest_tier_not_longer_than_it() {
        let ms = Duration::from_millis;
        assert_eq!(tier_for(ms(1)), 100);
        assert_eq!(tier_for(ms(100)), 100);
        assert_eq!(tier_for(ms(299)), 100);
        assert_eq!(tier_for(ms(6_400)), 3_000);
        assert_eq!(tier_for(ms(30_000)), 30_000);
        assert_eq!(tier_for(Duration::from_secs(86_400)), 3_600_000);
        // The hops of a 6.4 s delay add up to it (within the smallest tier).
        let mut left = 6_400;
        let mut waited = 0;
        while left > 0 {
            let tier = tier_for(ms(left));
            waited += tier;
            left = left.saturating_sub(tier);
        }
        assert!((6_400..6_500).contains(&waited), "{waited}");
    }
}
