//! Group-commit ingestion of new messages.
//!
//! Every accepted message costs a durable commit, and a commit costs an fsync (SQLite) or a
//! WAL flush (PostgreSQL): one commit per request caps a node at a few thousand messages a
//! second. [`MessageIngest`] therefore gathers the requests that arrive while the previous
//! batch is committing into the next batch: one unit of work inserts them all (one
//! multi-row statement), enqueues a `process` job for each new message, commits once, and
//! only then answers every request. Nothing is acknowledged before it is durable, and under
//! low load a batch is a single message with no added wait.

use std::sync::Arc;

use igl_domain::{MessageStatus, NewMessage};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::pipeline::PipelineJob;
use crate::{InsertOutcome, NewJob, Storage, StoreError};

/// How batches are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestConfig {
    /// Largest number of messages committed together.
    pub max_batch: usize,
    /// Batches committing at the same time (1 for SQLite, whose writes are serial anyway;
    /// a few for PostgreSQL).
    pub concurrent_batches: usize,
    /// Requests waiting for a batch before new submissions wait for room (backpressure).
    pub queue_capacity: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_batch: 512,
            concurrent_batches: 1,
            queue_capacity: 16_384,
        }
    }
}

/// Why a submission failed.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The batch could not be committed; nothing of it was stored.
    #[error(transparent)]
    Store(#[from] Arc<StoreError>),
    /// The ingest task has stopped (the node is shutting down).
    #[error("message ingestion has stopped")]
    Stopped,
}

impl IngestError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Store(error) => error.is_transient(),
            Self::Stopped => true,
        }
    }
}

struct Submission {
    message: NewMessage,
    status: MessageStatus,
    reply: oneshot::Sender<Result<InsertOutcome, IngestError>>,
}

/// Handle to the group-commit task; cheap to clone.
#[derive(Clone)]
pub struct MessageIngest {
    submissions: mpsc::Sender<Submission>,
}

impl std::fmt::Debug for MessageIngest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageIngest").finish_non_exhaustive()
    }
}

impl MessageIngest {
    /// Starts the batching task on the current runtime. It stops when every handle is
    /// dropped, after committing what was submitted.
    pub fn start(storage: Arc<dyn Storage>, config: IngestConfig) -> Self {
        let (submissions, receiver) = mpsc::channel(config.queue_capacity.max(1));
        tokio::spawn(run(storage, config, receiver));
        Self { submissions }
    }

    /// Stores `message` with `status` (idempotently by reference) and queues its
    /// processing; returns once that is committed.
    pub async fn submit(
        &self,
        message: NewMessage,
        status: MessageStatus,
    ) -> Result<InsertOutcome, IngestError> {
        let (reply, answer) = oneshot::channel();
        self.submissions
            .send(Submission {
                message,
                status,
                reply,
            })
            .await
            .map_err(|_| IngestError::Stopped)?;
        answer.await.map_err(|_| IngestError::Stopped)?
    }
}

async fn run(
    storage: Arc<dyn Storage>,
    config: IngestConfig,
    mut receiver: mpsc::Receiver<Submission>,
) {
    let permits = Arc::new(Semaphore::new(config.concurrent_batches.max(1)));
    let max_batch = config.max_batch.max(1);
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(max_batch);
        if receiver.recv_many(&mut batch, max_batch).await == 0 {
            return;
        }
        let storage = storage.clone();
        tokio::spawn(async move {
            commit_batch(storage.as_ref(), batch).await;
            drop(permit);
        });
    }
}

async fn commit_batch(storage: &dyn Storage, batch: Vec<Submission>) {
    let inputs: Vec<(NewMessage, MessageStatus)> = batch
        .iter()
        .map(|s| (s.message.clone(), s.status))
        .collect();
    let result = write_batch(storage, &inputs).await;
    metrics::histogram!("igl_ingest_batch_size").record(batch.len() as f64);
    match result {
        Ok(outcomes) => {
            for (submission, outcome) in batch.into_iter().zip(outcomes) {
                let _ = submission.reply.send(Ok(outcome));
            }
        }
        Err(error) => {
            tracing::warn!(error = %error, size = batch.len(), "message batch not committed");
            let error = Arc::new(error);
            for submission in batch {
                let _ = submission
                    .reply
                    .send(Err(IngestError::Store(error.clone())));
            }
        }
    }
}

async fn write_batch(
    storage: &dyn Storage,
    inputs: &[(NewMessage, MessageStatus)],
) -> Result<Vec<InsertOutcome>, StoreError> {
    let mut unit = storage.begin().await?;
    let outcomes = unit.insert_messages(inputs).await?;
    let jobs: Vec<NewJob> = outcomes
        .iter()
        .filter_map(|outcome| match outcome {
            InsertOutcome::Created(message) => {
                Some(PipelineJob::process(&message.reference()).into_new_job())
            }
            _ => None,
        })
        .collect();
    unit.enqueue(&jobs).await?;
    unit.commit().await?;
    Ok(outcomes)
}
