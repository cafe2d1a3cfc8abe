use std::time::Duration;

use igl_core::QueueName;

use crate::RetryPolicy;

/// How one worker consumes one queue.
///
/// Start from [`WorkerConfig::new`] (sensible defaults) and override fields; the runtime
/// checks the values with [`WorkerConfig::validate`] before it claims anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    /// The queue to consume.
    pub queue: QueueName,
    /// How many jobs are handled at once (at least 1).
    pub concurrency: usize,
    /// How many jobs one claim leases at most (at least 1); a worker holds at most
    /// `max(concurrency, claim_batch)` jobs. `Done` jobs are acked together, so larger
    /// batches mean fewer round trips.
    pub claim_batch: usize,
    /// The lease taken on each claimed job. The runtime extends the leases of the jobs it
    /// holds every third of `lease`, so a job outlives
    /// its first lease only while this worker is alive.
    pub lease: Duration,
    /// The longest wait for new jobs when the queue is empty (a wake-up from an enqueue may
    /// come sooner). On RabbitMQ, whose consumer is pushed every job, the queue waits at
    /// least `igl_queue::PUSHED_IDLE_POLL` instead ([`igl_core::JobQueue::wait_for_jobs`]).
    pub idle_poll: Duration,
    /// The longest a handler may take for one job; it then counts as a transient failure.
    /// A backstop: handlers should time out their own outbound calls.
    pub job_timeout: Duration,
    /// When and how often failed jobs are retried.
    pub retry: RetryPolicy,
}

impl WorkerConfig {
    /// Defaults: 16 jobs at once, claims of 64, 60 s leases, 1 s idle poll, 5 min job
    /// timeout, [`RetryPolicy::default`].
    pub fn new(queue: QueueName) -> Self {
        Self {
            queue,
            concurrency: 16,
            claim_batch: 64,
            lease: Duration::from_secs(60),
            idle_poll: Duration::from_secs(1),
            job_timeout: Duration::from_secs(300),
            retry: RetryPolicy::default(),
        }
    }

    /// Checks that every value is usable (non-zero counts and durations, a valid retry
    /// policy).
    ///
    /// # Errors
    ///
    /// A lowercase description of the first broken rule.
    pub fn validate(&self) -> Result<(), String> {
        if self.concurrency == 0 {
            return Err("concurrency must be at least 1".to_owned());
        }
        if self.claim_batch == 0 {
            return Err("claim_batch must be at least 1".to_owned());
        }
        if self.lease.is_zero() {
            return Err("lease must be longer than zero".to_owned());
        }
        if self.idle_poll.is_zero() {
            return Err("idle_poll must be longer than zero".to_owned());
        }
        if self.job_timeout.is_zero() {
            return Err("job_timeout must be longer than zero".to_owned());
        }
        self.retry.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_zeroes_are_not() {
        let config = WorkerConfig::new(QueueName::from_static("route"));
        assert_eq!(config.validate(), Ok(()));
        let zero_concurrency = WorkerConfig {
            concurrency: 0,
            ..config.clone()
        };
        assert!(
            zero_concurrency
                .validate()
                .unwrap_err()
                .contains("concurrency")
        );
        let zero_batch = WorkerConfig {
            claim_batch: 0,
            ..config.clone()
        };
        assert!(zero_batch.validate().unwrap_err().contains("claim_batch"));
        let zero_lease = WorkerConfig {
            lease: Duration::ZERO,
            ..config.clone()
        };
        assert!(zero_lease.validate().unwrap_err().contains("lease"));
        let zero_poll = WorkerConfig {
            idle_poll: Duration::ZERO,
            ..config.clone()
        };
        assert!(zero_poll.validate().unwrap_err().contains("idle_poll"));
        let no_attempts = WorkerConfig {
            retry: RetryPolicy {
                max_attempts: 0,
                ..config.retry
            },
            ..config
        };
        assert!(no_attempts.validate().unwrap_err().contains("max_attempts"));
    }
}
