//! The job handlers of the node's pipeline, one module per worker.

mod http;
mod poll;
mod process;
mod retrieve;
mod route;
mod spider;

pub use http::{HttpClientError, HttpStatusError};
pub use poll::{CHANNEL_POLLS_TOTAL, PollChannel};
pub use process::ProcessMessage;
pub use retrieve::{RetrieveChannelMessage, channel_sender_ref};
pub use route::{
    CHANNEL_POSTS_TOTAL, DEFAULT_FIRST_POLL_DELAY, MESSAGES_REJECTED_TOTAL, RouteMessage,
};
pub use spider::{DocumentSource, FetchObject, SpiderConfig};

mod batch {
    use igl_core::ClaimedJob;

    use crate::{Handled, JobError};

    /// What the first, per-job step of a batched handler decided for one job.
    #[derive(Debug)]
    pub(crate) enum Prepared<W> {
        /// Write `W` (with the other jobs' writes, in one unit of work that acks the jobs).
        Write(W),
        /// Nothing to write: the job is finished this way.
        Finished(Handled),
    }

    /// The two steps of a batched handler.
    pub(crate) trait BatchSteps: Sync {
        /// What `prepare` hands to `write` for one job.
        type Write: Send + Sync;

        /// The per-job step: reads, HTTP calls, validation.
        fn prepare(
            &self,
            job: &ClaimedJob,
        ) -> impl Future<Output = Result<Prepared<Self::Write>, JobError>> + Send;

        /// Writes the prepared jobs, and acks them, in one unit of work.
        fn write(
            &self,
            work: &[(&ClaimedJob, Self::Write)],
        ) -> impl Future<Output = Result<(), JobError>> + Send;
    }

    /// [`prepare_then_write`] for one job (a batched handler's `handle`).
    pub(crate) async fn prepare_then_write_one<S: BatchSteps>(
        steps: &S,
        job: &ClaimedJob,
    ) -> Result<Handled, JobError> {
        prepare_then_write(steps, std::slice::from_ref(job))
            .await
            .pop()
            .unwrap_or_else(|| unreachable!("one result per job"))
    }

    /// Runs a batched handler: `prepare` every job concurrently, then `write` all prepared
    /// jobs in one unit of work. When that fails for several jobs, each is written on its
    /// own, so one bad job cannot hold the others back (and a storage outage fails each).
    pub(crate) async fn prepare_then_write<S: BatchSteps>(
        steps: &S,
        jobs: &[ClaimedJob],
    ) -> Vec<Result<Handled, JobError>> {
        let prepared = futures::future::join_all(jobs.iter().map(|job| steps.prepare(job))).await;
        let mut results: Vec<Option<Result<Handled, JobError>>> = Vec::with_capacity(jobs.len());
        let mut indices = Vec::with_capacity(jobs.len());
        let mut work = Vec::with_capacity(jobs.len());
        for (index, (job, prepared)) in jobs.iter().zip(prepared).enumerate() {
            results.push(match prepared {
                Ok(Prepared::Write(write)) => {
                    indices.push(index);
                    work.push((job, write));
                    None
                }
                Ok(Prepared::Finished(handled)) => Some(Ok(handled)),
                Err(error) => Some(Err(error)),
            });
        }
        if !work.is_empty() {
            match steps.write(&work).await {
                Ok(()) => {
                    for &index in &indices {
                        results[index] = Some(Ok(Handled::AckedInTransaction));
                    }
                }
                Err(error) if work.len() == 1 => results[indices[0]] = Some(Err(error)),
                Err(error) => {
                    tracing::warn!(
                        jobs = work.len(),
                        error = %crate::handler::error_chain(error.cause()),
                        "batch write failed, writing its jobs one by one"
                    );
                    for (&index, item) in indices.iter().zip(&work) {
                        let single = steps.write(std::slice::from_ref(item)).await;
                        results[index] = Some(single.map(|()| Handled::AckedInTransaction));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|result| result.unwrap_or_else(|| unreachable!("every job has a result")))
            .collect()
    }
}
