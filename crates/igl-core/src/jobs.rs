use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use igl_domain::Timestamp;

use crate::StoreError;

/// The name of a job queue: 1 to 64 characters of `[a-z0-9._-]` (`route`, `process`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueName(Cow<'static, str>);

/// Why a string is not a [`QueueName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a queue name (1-64 characters of a-z, 0-9, '.', '_', '-')")]
pub struct QueueNameError(pub String);

impl QueueName {
    /// A queue name known at compile time. Panics on an invalid name, so use it only for
    /// constants (it is checked by the tests of whoever defines the constant).
    pub const fn from_static(name: &'static str) -> Self {
        assert!(is_valid_queue_name(name.as_bytes()), "invalid queue name");
        Self(Cow::Borrowed(name))
    }

    /// Parses a queue name.
    pub fn parse(name: &str) -> Result<Self, QueueNameError> {
        if is_valid_queue_name(name.as_bytes()) {
            Ok(Self(Cow::Owned(name.to_owned())))
        } else {
            Err(QueueNameError(name.to_owned()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

const fn is_valid_queue_name(bytes: &[u8]) -> bool {
    if bytes.is_empty() || bytes.len() > 64 {
        return false;
    }
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if !(byte.is_ascii_lowercase()
            || byte.is_ascii_digit()
            || matches!(byte, b'.' | b'_' | b'-'))
        {
            return false;
        }
        index += 1;
    }
    true
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QueueName({})", self.0)
    }
}

/// A job to enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// The queue it goes to.
    pub queue: QueueName,
    /// The job's data (versioned, tagged JSON by convention: `{"type":"route.v1",…}`).
    pub payload: serde_json::Value,
    /// How long to wait before the job may be claimed.
    pub delay: Duration,
    /// When set, enqueueing is a no-op while a job with the same key is in the queue
    /// (waiting or leased). The key is free again once that job is acked or dead-lettered.
    pub dedup_key: Option<String>,
}

impl NewJob {
    /// A job with no delay and no dedup key.
    pub fn new(queue: QueueName, payload: serde_json::Value) -> Self {
        Self {
            queue,
            payload,
            delay: Duration::ZERO,
            dedup_key: None,
        }
    }

    /// Sets the delay.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Sets the dedup key.
    pub fn with_dedup_key(mut self, key: impl Into<String>) -> Self {
        self.dedup_key = Some(key.into());
        self
    }
}

/// The storage id of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub i64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Proof of holding a job's lease: needed to ack, retry or dead-letter it. A receipt
/// whose lease expired and was taken by another consumer no longer works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JobReceipt {
    /// The job.
    pub id: JobId,
    /// The token of the claim that leased it.
    pub lease_token: i64,
}

/// A job leased to a consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedJob {
    /// The job's id.
    pub id: JobId,
    /// The queue it came from.
    pub queue: QueueName,
    /// Its data.
    pub payload: serde_json::Value,
    /// How many times it has been claimed, including this claim (1 on the first).
    pub attempt: u32,
    /// The lease token of this claim.
    pub lease_token: i64,
    /// When it was first enqueued.
    pub enqueued_at: Timestamp,
    /// Its dedup key.
    pub dedup_key: Option<String>,
    /// The error recorded by the previous failed attempt, if any.
    pub last_error: Option<String>,
}

impl ClaimedJob {
    /// The receipt for acking, retrying or dead-lettering this claim.
    pub fn receipt(&self) -> JobReceipt {
        JobReceipt {
            id: self.id,
            lease_token: self.lease_token,
        }
    }
}

/// A job that exhausted its retries (or was dead-lettered on purpose), kept for operators.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Id of the dead letter (not the original job id).
    pub id: i64,
    /// The queue the job came from.
    pub queue: QueueName,
    /// Its data.
    pub payload: serde_json::Value,
    /// How many attempts were made.
    pub attempts: u32,
    /// The last error.
    pub last_error: Option<String>,
    /// Its dedup key.
    pub dedup_key: Option<String>,
    /// When it was first enqueued.
    pub enqueued_at: Timestamp,
    /// When it was dead-lettered.
    pub failed_at: Timestamp,
}

/// How many jobs a queue holds, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Claimable now (including jobs whose lease expired).
    pub ready: u64,
    /// Waiting for their delay or retry backoff.
    pub scheduled: u64,
    /// Leased to a consumer right now.
    pub in_flight: u64,
    /// In the dead-letter store.
    pub dead: u64,
}

/// Due jobs taken out of a queue inside a transaction that is still open
/// ([`JobQueue::take`]): an outbox relay publishes them, then commits.
///
/// While it lives, the jobs are invisible to other takers and claimers (row locks, not
/// leases: nothing is written until the commit). [`TakenJobs::commit`] removes them for
/// good; dropping it instead, or the death of the process (the database rolls back a
/// transaction whose connection closed), puts them back untouched as soon as the rollback
/// reaches the database (a moment after the drop).
#[async_trait]
pub trait TakenJobs: Send {
    /// The jobs taken, in due order (each with `attempt` as stored, `lease_token` 0).
    fn jobs(&self) -> &[ClaimedJob];

    /// How long until the next job of the queue that was not yet due when the jobs were
    /// taken becomes due; `None` when there was none. Jobs that were due but held by
    /// another taker do not count.
    fn next_due_in(&self) -> Option<Duration>;

    /// How many due jobs of the queue this take did not get: held by another taker (in
    /// the middle of its own take), or left for the next take by `max`. A take that got
    /// nothing while jobs were due lost the race to another taker, which is working.
    fn held_elsewhere(&self) -> u64;

    /// Removes the taken jobs from the queue (commits the transaction).
    ///
    /// # Errors
    ///
    /// A failed commit: the jobs stay in the queue and will be taken again.
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// Named, durable job queues with leases (at-least-once delivery).
///
/// Contract:
/// - a claimed job is invisible to other consumers until its lease expires; then it can be
///   claimed again (with `attempt` incremented) and the old receipt stops working;
/// - acking removes the job; retrying makes it claimable again after a delay and records
///   the error; dead-lettering moves it to the dead-letter store;
/// - claims are ordered by due time, then enqueue order;
/// - every method is atomic; enqueue of several jobs commits all or none.
#[async_trait]
pub trait JobQueue: Send + Sync + std::fmt::Debug {
    /// Enqueues jobs in one transaction.
    async fn enqueue(&self, jobs: &[NewJob]) -> Result<(), StoreError>;

    /// Leases up to `max` due jobs of `queue` for `lease`.
    async fn claim(
        &self,
        queue: &QueueName,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, StoreError>;

    /// Removes the jobs whose leases the receipts still hold; returns how many were removed.
    async fn ack(&self, receipts: &[JobReceipt]) -> Result<u64, StoreError>;

    /// Releases a held job to be claimed again after `delay`, recording `error`.
    /// Returns `false` when the lease was no longer held.
    async fn retry(
        &self,
        receipt: JobReceipt,
        delay: Duration,
        error: &str,
    ) -> Result<bool, StoreError>;

    /// Moves a held job to the dead-letter store with `error`. Returns `false` when the
    /// lease was no longer held.
    async fn dead_letter(&self, receipt: JobReceipt, error: &str) -> Result<bool, StoreError>;

    /// Extends a held lease to `lease` from now (a heartbeat for long jobs). Returns `false`
    /// when the lease was no longer held.
    async fn extend_lease(&self, receipt: JobReceipt, lease: Duration) -> Result<bool, StoreError>;

    /// Dead letters, oldest first, optionally of one queue, with ids greater than `after`.
    async fn dead_letters(
        &self,
        queue: Option<&QueueName>,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StoreError>;

    /// Puts a dead letter back on its queue as a fresh job (attempt count reset).
    /// Returns `false` when no dead letter has this id.
    async fn replay_dead_letter(&self, id: i64) -> Result<bool, StoreError>;

    /// How many jobs `queue` holds, by state.
    async fn depth(&self, queue: &QueueName) -> Result<QueueDepth, StoreError>;

    /// How long until the next job of `queue` becomes claimable: zero when one is due
    /// now, the time to the earliest due time (a delayed job, or a lease that runs out)
    /// otherwise, `None` when the queue is empty or the backend cannot tell (the default).
    /// Lets a poller sleep until then instead of polling.
    async fn next_due_in(&self, queue: &QueueName) -> Result<Option<Duration>, StoreError> {
        let _ = queue;
        Ok(None)
    }

    /// Takes up to `max` due jobs of `queue` out of the queue in an open transaction (see
    /// [`TakenJobs`]): one statement instead of a claim that writes leases and an ack that
    /// deletes. `None` (the default) when the backend cannot hold a transaction open for
    /// this; callers then claim and ack. Meant for an outbox relay, whose side effect
    /// (publishing to a broker) happens between the take and the commit.
    ///
    /// # Errors
    ///
    /// A failed backend call; nothing was taken.
    async fn take(
        &self,
        queue: &QueueName,
        max: usize,
    ) -> Result<Option<Box<dyn TakenJobs>>, StoreError> {
        let _ = (queue, max);
        Ok(None)
    }

    /// Waits until a job may have become available on `queue` (a wake-up from an enqueue
    /// in this process or, where the backend supports it, another process) or `timeout`
    /// passes. Spurious wake-ups are allowed; callers claim and see. A backend that is
    /// pushed every job, delayed ones included when they become due (RabbitMQ, once the
    /// queue's consumer runs), may treat a non-zero `timeout` as a lower bound of a longer
    /// safety-net wait; a zero `timeout` never waits.
    async fn wait_for_jobs(&self, queue: &QueueName, timeout: Duration);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names() {
        assert!(QueueName::parse("route").is_ok());
        assert!(QueueName::parse("object-retrieval.v1_x").is_ok());
        assert!(QueueName::parse("").is_err());
        assert!(QueueName::parse("Route").is_err());
        assert!(QueueName::parse(&"q".repeat(65)).is_err());
        const PROCESS: QueueName = QueueName::from_static("process");
        assert_eq!(PROCESS.as_str(), "process");
    }
}
