use std::fmt;
use std::time::Duration;

use igl_core::QueueName;
use metrics::{Counter, Histogram, Unit, counter, describe_counter, describe_histogram, histogram};

/// Jobs finished by a worker, by `queue`, `worker` and `outcome` (`done`, `retried`,
/// `dead_lettered`).
pub const JOBS_TOTAL: &str = "igl_jobs_total";
/// Time spent in a handler per job, in seconds, by `queue` and `worker`.
pub const JOB_DURATION_SECONDS: &str = "igl_job_duration_seconds";
/// Time from a job's enqueue until a worker finished handling it, minus the handling, in
/// seconds, by `queue` and `worker`: how long jobs wait (including retry backoff and
/// requested delays; in the broker shape, the outbox relay and the broker).
pub const JOB_QUEUED_SECONDS: &str = "igl_job_queued_seconds";
/// Failed calls to the job queue made by the worker runtime (claim, ack, retry,
/// dead-letter, lease extension), by `queue`.
pub const WORKER_STORAGE_ERRORS_TOTAL: &str = "igl_worker_storage_errors_total";

/// The metric handles of one worker, registered once when it starts (through the `metrics`
/// facade; the node installs the exporter).
#[derive(Clone)]
pub(crate) struct WorkerMetrics {
    done: Counter,
    retried: Counter,
    dead_lettered: Counter,
    duration: Histogram,
    queued: Histogram,
    storage_errors: Counter,
}

impl WorkerMetrics {
    pub(crate) fn new(queue: &QueueName, worker: &'static str) -> Self {
        describe_counter!(
            JOBS_TOTAL,
            Unit::Count,
            "jobs finished by workers, by outcome"
        );
        describe_histogram!(
            JOB_DURATION_SECONDS,
            Unit::Seconds,
            "time spent handling a job"
        );
        describe_histogram!(
            JOB_QUEUED_SECONDS,
            Unit::Seconds,
            "time a job waited between its enqueue and its handling"
        );
        describe_counter!(
            WORKER_STORAGE_ERRORS_TOTAL,
            Unit::Count,
            "failed job queue calls made by workers"
        );
        let jobs = |outcome: &'static str| {
            counter!(
                JOBS_TOTAL,
                "queue" => queue.to_string(),
                "worker" => worker,
                "outcome" => outcome
            )
        };
        Self {
            done: jobs("done"),
            retried: jobs("retried"),
            dead_lettered: jobs("dead_lettered"),
            duration: histogram!(
                JOB_DURATION_SECONDS,
                "queue" => queue.to_string(),
                "worker" => worker
            ),
            queued: histogram!(
                JOB_QUEUED_SECONDS,
                "queue" => queue.to_string(),
                "worker" => worker
            ),
            storage_errors: counter!(WORKER_STORAGE_ERRORS_TOTAL, "queue" => queue.to_string()),
        }
    }

    pub(crate) fn job_done(&self) {
        self.done.increment(1);
    }

    pub(crate) fn job_retried(&self) {
        self.retried.increment(1);
    }

    pub(crate) fn job_dead_lettered(&self) {
        self.dead_lettered.increment(1);
    }

    pub(crate) fn job_duration(&self, duration: Duration) {
        self.duration.record(duration);
    }

    pub(crate) fn job_queued(&self, queued: Duration) {
        self.queued.record(queued);
    }

    pub(crate) fn storage_error(&self) {
        self.storage_errors.increment(1);
    }
}

impl fmt::Debug for WorkerMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerMetrics").finish_non_exhaustive()
    }
}
