use std::error::Error;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use igl_core::{BoxError, ClaimedJob, StoreError};

/// The code that does one kind of job. The runtime ([`crate::run_worker`], [`crate::drain`])
/// claims, retries, dead-letters and acks; a handler only handles.
///
/// Delivery is at least once (ARCHITECTURE §6, invariant 2): the same job may be handled
/// more than once (after a crash, a lost lease or a failed ack), so `handle` must be safe
/// to repeat. A handler must also be cancel-safe: the runtime drops its future when the
/// job exceeds [`crate::WorkerConfig::job_timeout`].
#[async_trait]
pub trait JobHandler: Send + Sync + 'static {
    /// Stable name for logs and metrics (e.g. `"router"`).
    fn name(&self) -> &'static str;

    /// Handles one job.
    ///
    /// # Errors
    ///
    /// A [`JobError`] saying whether to retry the job later or dead-letter it now.
    async fn handle(&self, job: &ClaimedJob) -> Result<Handled, JobError>;

    /// Whether the runtime should give this handler whole claimed batches through
    /// [`JobHandler::handle_batch`] instead of one job at a time through
    /// [`JobHandler::handle`]. Handlers that write say yes when they can do the writes of
    /// many jobs in one unit of work (one commit, multi-row statements).
    fn batched(&self) -> bool {
        false
    }

    /// Handles several jobs together, returning one result per job in the order of `jobs`;
    /// called instead of [`JobHandler::handle`] when [`JobHandler::batched`] says so. The
    /// contract of `handle` holds per job (at least once, idempotent, cancel-safe); a panic
    /// or timeout counts against every job of the batch.
    ///
    /// The default handles the jobs one by one with `handle`, concurrently.
    async fn handle_batch(&self, jobs: &[ClaimedJob]) -> Vec<Result<Handled, JobError>> {
        futures::future::join_all(jobs.iter().map(|job| self.handle(job))).await
    }
}

impl fmt::Debug for dyn JobHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("JobHandler").field(&self.name()).finish()
    }
}

/// How a job was handled successfully.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// The runtime acks the job (batched with the other jobs of its claim).
    Done,
    /// The handler already acked the job with [`igl_core::UnitOfWork::ack`] in the same
    /// transaction as its effects (transactional outbox); the runtime does not ack it.
    AckedInTransaction,
}

/// Why a job failed, and what to do about it.
///
/// Only the wrapped error is recorded on the job (as its `last_error` and in the dead-letter
/// store), rendered with its whole source chain: `"post to channel failed: connection
/// refused"`.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Retry after the [`crate::RetryPolicy`]'s backoff (dead-letter after the last attempt).
    #[error("job failed, will retry")]
    Transient(#[source] BoxError),
    /// Dead-letter now: retrying cannot help (an undecodable payload, a rejected request).
    #[error("job failed permanently")]
    Permanent(#[source] BoxError),
    /// Retry after exactly this delay (an HTTP `Retry-After`), still counting the attempt
    /// against the policy's `max_attempts`.
    #[error("job failed, will retry after {0:?}")]
    RetryAfter(Duration, #[source] BoxError),
}

impl JobError {
    /// A failure to retry with backoff.
    pub fn transient(error: impl Into<BoxError>) -> Self {
        Self::Transient(error.into())
    }

    /// A failure that dead-letters the job at once.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        Self::Permanent(error.into())
    }

    /// A failure to retry after `delay`.
    pub fn retry_after(delay: Duration, error: impl Into<BoxError>) -> Self {
        Self::RetryAfter(delay, error.into())
    }

    /// The wrapped error.
    pub fn cause(&self) -> &(dyn Error + Send + Sync + 'static) {
        match self {
            Self::Transient(error) | Self::Permanent(error) | Self::RetryAfter(_, error) => {
                error.as_ref()
            }
        }
    }
}

/// Storage errors map by [`StoreError::is_transient`] and kind: an unreachable or failing
/// backend is transient (retried, bounded by the policy); a missing or conflicting message
/// or an invalid update or argument is permanent, since the same job would fail the same way.
impl From<StoreError> for JobError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) | StoreError::Backend(_) => Self::transient(error),
            StoreError::MessageNotFound(_)
            | StoreError::MessageConflict(_)
            | StoreError::InvalidUpdate { .. }
            | StoreError::InvalidArgument(_) => Self::permanent(error),
        }
    }
}

/// Renders an error and its sources as `"outer: middle: inner"`.
pub(crate) fn error_chain(error: &(dyn Error + 'static)) -> String {
    struct Chain<'a>(&'a (dyn Error + 'static));
    impl fmt::Display for Chain<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{}", self.0)?;
            let mut source = self.0.source();
            while let Some(error) = source {
                write!(f, ": {error}")?;
                source = error.source();
            }
            Ok(())
        }
    }
    Chain(error).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("post to channel failed")]
    struct PostFailed(#[source] std::io::Error);

    #[test]
    fn the_recorded_error_is_the_cause_with_its_chain() {
        let error = JobError::transient(PostFailed(std::io::Error::other("connection refused")));
        assert_eq!(
            error_chain(error.cause()),
            "post to channel failed: connection refused"
        );
        assert_eq!(error.to_string(), "job failed, will retry");
    }

    #[test]
    fn store_errors_map_by_kind() {
        let unavailable = StoreError::Unavailable("pool timed out".into());
        assert!(matches!(
            JobError::from(unavailable),
            JobError::Transient(_)
        ));
        let invalid = StoreError::InvalidArgument("bad cursor".to_owned());
        assert!(matches!(JobError::from(invalid), JobError::Permanent(_)));
    }
}
