//! [`OutboxRelay`]: publishes the jobs committed into the SQL outbox to the broker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use igl_core::{ClaimedJob, JobQueue, QueueName, StoreError, TakenJobs};
use igl_domain::Timestamp;
use metrics::{Unit, counter, describe_counter, describe_histogram, histogram};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::AmqpQueue;

/// Jobs published to the broker (confirmed) and deleted from the outbox, by `queue`.
pub const OUTBOX_RELAYED_TOTAL: &str = "igl_outbox_relayed_total";
/// Failed relay rounds (outbox or broker call), by `queue`.
pub const OUTBOX_RELAY_ERRORS_TOTAL: &str = "igl_outbox_relay_errors_total";
/// Time of one relay round that moved jobs (claim, publish with confirms, delete), in
/// seconds, by `queue`.
pub const OUTBOX_RELAY_ROUND_SECONDS: &str = "igl_outbox_relay_round_seconds";
/// Time from a job's enqueue until the broker confirmed it, in seconds, by `queue`: how
/// long jobs wait in the outbox (a job enqueued with a delay counts its delay too).
pub const OUTBOX_PUBLISH_LAG_SECONDS: &str = "igl_outbox_publish_lag_seconds";

fn describe_metrics() {
    describe_counter!(
        OUTBOX_RELAYED_TOTAL,
        Unit::Count,
        "jobs relayed from the outbox to the broker"
    );
    describe_counter!(
        OUTBOX_RELAY_ERRORS_TOTAL,
        Unit::Count,
        "failed outbox relay rounds"
    );
    describe_histogram!(
        OUTBOX_RELAY_ROUND_SECONDS,
        Unit::Seconds,
        "time of an outbox relay round: claim, publish with confirms, delete"
    );
    describe_histogram!(
        OUTBOX_PUBLISH_LAG_SECONDS,
        Unit::Seconds,
        "time from a job's enqueue until the broker confirmed it"
    );
}

/// The shortest wait of an idle relay loop, so that a row that is due but was not claimed
/// (locked by another replica's claim at that moment) cannot make it spin.
const MIN_IDLE_WAIT: Duration = Duration::from_millis(5);

/// How the relay claims outbox rows.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows taken (or claimed) and published per round, per queue.
    pub batch: usize,
    /// On an outbox without [`JobQueue::take`] (SQLite), how long claimed rows stay
    /// invisible to other relay replicas: if this relay dies before marking them sent,
    /// another one publishes them after this. Taken rows (PostgreSQL) need no lease.
    pub lease: Duration,
    /// How long a relay that found every due row of a queue held by another relay (both
    /// were woken by the same enqueue; the other one won) leaves that queue to it before
    /// looking again, answering no wake-up meanwhile. Saves a losing take per enqueue with
    /// several replicas; if the winner dies, its rows wait at most this long.
    pub yield_to_peer: Duration,
    /// Longest wait for new rows before looking again. An idle relay wakes up when an
    /// enqueue notifies it or when the next row is due (it asks the outbox when that is),
    /// so this is only a safety net for lost notifications.
    pub idle_poll: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch: 256,
            lease: Duration::from_secs(30),
            yield_to_peer: Duration::from_millis(250),
            idle_poll: Duration::from_secs(5),
        }
    }
}

/// The transactional-outbox relay.
///
/// The outbox is the SQL `jobs` table: units of work write the jobs a state change causes
/// there, in the same transaction. For each queue the relay takes due rows
/// ([`JobQueue::take`]: deleted in a transaction left open, `FOR UPDATE SKIP LOCKED` on
/// PostgreSQL, so several relay replicas share the work and never hold the same row),
/// publishes them to the broker with publisher confirms, and only after every confirm
/// commits. An outbox that cannot take (SQLite) is claimed with a lease instead, and the
/// claim acked (rows deleted) after the confirms. So:
///
/// - a rolled-back transaction's jobs never reach the broker (they were never committed);
/// - a committed job reaches it at least once: a relay that dies between publish and
///   commit leaves its rows in the outbox (after its lease, on the claim path), and another
///   relay publishes them again, with the same job id — the consumers' idempotent handlers
///   absorb the duplicate;
/// - a delayed job is published when it becomes due, so the broker never holds it early;
/// - a dedup key suppresses duplicates while the job waits in the outbox.
#[derive(Debug, Clone)]
pub struct OutboxRelay {
    outbox: Arc<dyn JobQueue>,
    broker: AmqpQueue,
    queues: Vec<QueueName>,
    config: RelayConfig,
}

impl OutboxRelay {
    /// A relay of `queues` from `outbox` (the SQL backend's job queue) to `broker`.
    pub fn new(
        outbox: Arc<dyn JobQueue>,
        broker: AmqpQueue,
        queues: Vec<QueueName>,
        config: RelayConfig,
    ) -> Self {
        Self {
            outbox,
            broker,
            queues,
            config,
        }
    }

    /// Publishes one batch of due rows of `queue`; returns how many were published and
    /// marked sent (0 when none was due).
    ///
    /// # Errors
    ///
    /// The first failed outbox or broker call. Rows whose publish was not confirmed go back
    /// to the outbox and are published again.
    pub async fn relay_once(&self, queue: &QueueName) -> Result<usize, StoreError> {
        Ok(self.round(queue).await?.published)
    }

    async fn round(&self, queue: &QueueName) -> Result<Round, StoreError> {
        let started = Instant::now();
        let result = match self.outbox.take(queue, self.config.batch).await {
            Ok(Some(taken)) => self.publish_taken(queue, taken).await,
            Ok(None) => self.publish_claimed(queue).await,
            Err(error) => Err(error),
        };
        match &result {
            Ok(round) if round.published > 0 => {
                counter!(OUTBOX_RELAYED_TOTAL, "queue" => queue.to_string())
                    .increment(round.published as u64);
                histogram!(OUTBOX_RELAY_ROUND_SECONDS, "queue" => queue.to_string())
                    .record(started.elapsed().as_secs_f64());
                debug!(queue = %queue, published = round.published, "outbox rows relayed");
            }
            Ok(_) => {}
            Err(_) => {
                counter!(OUTBOX_RELAY_ERRORS_TOTAL, "queue" => queue.to_string()).increment(1);
            }
        }
        result
    }

    /// The outbox holds the taken rows in an open transaction: publish, then commit (which
    /// deletes them). A failed publish drops the transaction, which puts the rows back.
    async fn publish_taken(
        &self,
        queue: &QueueName,
        taken: Box<dyn TakenJobs>,
    ) -> Result<Round, StoreError> {
        let round = Round {
            published: taken.jobs().len(),
            held_elsewhere: taken.held_elsewhere(),
            next_due_in: Some(taken.next_due_in()),
        };
        if round.published > 0 {
            self.broker.publish_outbox(taken.jobs()).await?;
            record_publish_lag(queue, taken.jobs());
            taken.commit().await?;
        }
        Ok(round)
    }

    /// An outbox that cannot hold a transaction open (SQLite's single writer would stall
    /// every other writer meanwhile): claim with a lease, publish, then ack (delete).
    async fn publish_claimed(&self, queue: &QueueName) -> Result<Round, StoreError> {
        let jobs = self
            .outbox
            .claim(queue, self.config.batch, self.config.lease)
            .await?;
        if jobs.is_empty() {
            return Ok(Round::claimed(0));
        }
        let receipts: Vec<_> = jobs.iter().map(|job| job.receipt()).collect();
        if let Err(error) = self.broker.publish_outbox(&jobs).await {
            for receipt in &receipts {
                // Best effort: a row not released comes back after its lease anyway.
                let _ = self
                    .outbox
                    .retry(*receipt, Duration::from_secs(1), "broker publish failed")
                    .await;
            }
            return Err(error);
        }
        record_publish_lag(queue, &jobs);
        let marked = self.outbox.ack(&receipts).await?;
        if marked < receipts.len() as u64 {
            warn!(
                queue = %queue,
                lost = receipts.len() as u64 - marked,
                "outbox leases lost before marking rows sent; they will be published again"
            );
        }
        Ok(Round::claimed(jobs.len()))
    }

    /// Relays every queue until `shutdown` is cancelled (one loop per queue). Failures
    /// are logged and retried with backoff (50 ms to 5 s); the relay never gives up.
    pub async fn run(self, shutdown: CancellationToken) {
        describe_metrics();
        info!(queues = self.queues.len(), "outbox relay started");
        let relay = Arc::new(self);
        let mut loops = JoinSet::new();
        for queue in relay.queues.clone() {
            let relay = relay.clone();
            let shutdown = shutdown.clone();
            let span = info_span!("outbox_relay", queue = %queue);
            loops.spawn(async move { relay.run_queue(&queue, shutdown).await }.instrument(span));
        }
        while loops.join_next().await.is_some() {}
        info!("outbox relay stopped");
    }

    /// How long a relay loop waits for a wake-up (an enqueue's `NOTIFY`) after a round
    /// that did not fill its batch: until the next row of `queue` becomes due (a delayed
    /// job, or the lease of a relay that died) — as the round saw it, or else as the outbox
    /// says — at most `idle_poll`, at least [`MIN_IDLE_WAIT`].
    async fn idle_wait(&self, queue: &QueueName, seen: Option<Option<Duration>>) -> Duration {
        let due = match seen {
            Some(due) => due,
            None => match self.outbox.next_due_in(queue).await {
                Ok(due) => due,
                Err(error) => {
                    // The next round reports it.
                    debug!(error = %crate::error_chain(&error), "outbox next due time unknown");
                    None
                }
            },
        };
        due.unwrap_or(self.config.idle_poll)
            .clamp(MIN_IDLE_WAIT, self.config.idle_poll.max(MIN_IDLE_WAIT))
    }

    async fn run_queue(&self, queue: &QueueName, shutdown: CancellationToken) {
        let mut failures: u32 = 0;
        while !shutdown.is_cancelled() {
            match self.round(queue).await {
                // A full batch: more rows are probably due.
                Ok(round) if round.published >= self.config.batch.max(1) => failures = 0,
                // Another relay is publishing this queue's due rows: leave it to that one
                // for a moment rather than racing it for every enqueue.
                Ok(round) if round.published == 0 && round.held_elsewhere > 0 => {
                    failures = 0;
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(self.config.yield_to_peer) => {}
                    }
                }
                // Rows enqueued during the round left a wake-up, so the wait ends at once.
                Ok(round) => {
                    failures = 0;
                    let wait = self.idle_wait(queue, round.next_due_in).await;
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = self.outbox.wait_for_jobs(queue, wait) => {}
                    }
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let delay = Duration::from_millis(50)
                        .saturating_mul(1 << failures.min(7))
                        .min(Duration::from_secs(5));
                    warn!(error = %crate::error_chain(&error), ?delay, "outbox relay failed, retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

/// What one relay round did.
struct Round {
    published: usize,
    /// Due rows this round did not take (held by another relay, or beyond the batch).
    held_elsewhere: u64,
    /// When the next not-yet-due row becomes due, if the round found out (`Some(None)`:
    /// there is none); `None` when it could not tell.
    next_due_in: Option<Option<Duration>>,
}

impl Round {
    /// A round on the claim path, which learns neither the next due time nor what other
    /// relays hold.
    fn claimed(published: usize) -> Self {
        Self {
            published,
            held_elsewhere: 0,
            next_due_in: None,
        }
    }
}

fn record_publish_lag(queue: &QueueName, jobs: &[ClaimedJob]) {
    let confirmed = Timestamp::now_utc();
    let lag = histogram!(OUTBOX_PUBLISH_LAG_SECONDS, "queue" => queue.to_string());
    for job in jobs {
        let waited = Duration::try_from(confirmed - job.enqueued_at).unwrap_or_default();
        lag.record(waited.as_secs_f64());
    }
}
