use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use igl_core::JobQueue;
use tokio::task::{self, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{JobHandler, WorkerConfig, WorkerError, run_worker};

/// A set of running workers, for the node binary: each worker runs [`run_worker`] on its
/// own task with a child of one cancellation token.
///
/// The node watches [`WorkerSet::join_next`]: a worker only ends early on an invalid
/// configuration (or a bug that panics the loop), and then the node should stop (STYLE
/// R29). [`WorkerSet::shutdown`] stops them all, each finishing its current batch.
#[derive(Debug)]
pub struct WorkerSet {
    tasks: JoinSet<Result<(), WorkerError>>,
    names: HashMap<task::Id, &'static str>,
    shutdown: CancellationToken,
}

impl WorkerSet {
    /// An empty set whose workers stop when `shutdown` (or [`WorkerSet::shutdown`]) is
    /// cancelled.
    pub fn new(shutdown: &CancellationToken) -> Self {
        Self {
            tasks: JoinSet::new(),
            names: HashMap::new(),
            shutdown: shutdown.child_token(),
        }
    }

    /// Starts a worker for `handler` on `config.queue`.
    pub fn spawn(
        &mut self,
        queue: Arc<dyn JobQueue>,
        handler: Arc<dyn JobHandler>,
        config: WorkerConfig,
    ) {
        let name = handler.name();
        let worker = run_worker(queue, handler, config, self.shutdown.child_token());
        let task = self.tasks.spawn(worker);
        self.names.insert(task.id(), name);
    }

    /// How many workers are still running.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no worker is running.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Waits for the next worker to stop and returns its name and result (a panic of the
    /// worker's task is [`WorkerError::Panicked`]); `None` when no worker is left.
    pub async fn join_next(&mut self) -> Option<(&'static str, Result<(), WorkerError>)> {
        let joined = self.tasks.join_next_with_id().await?;
        let (id, result) = match joined {
            Ok((id, result)) => (id, result),
            Err(join_error) => {
                let id = join_error.id();
                let name = self.names.get(&id).copied().unwrap_or("unknown");
                (id, Err(WorkerError::Panicked(name)))
            }
        };
        let name = self.names.remove(&id).unwrap_or("unknown");
        Some((name, result))
    }

    /// Cancels every worker and waits up to `grace` for them to finish their current
    /// batches; workers still running then are aborted (their jobs come back after their
    /// leases). Returns `true` when all stopped within `grace`.
    pub async fn shutdown(mut self, grace: Duration) -> bool {
        self.shutdown.cancel();
        let stopped_in_time = tokio::time::timeout(grace, async {
            while let Some((worker, result)) = self.join_next().await {
                match result {
                    Ok(()) => info!(worker, "worker exited"),
                    Err(worker_error) => error!(worker, error = %worker_error, "worker failed"),
                }
            }
        })
        .await
        .is_ok();
        if !stopped_in_time {
            warn!(
                workers = self.tasks.len(),
                ?grace,
                "workers did not stop within the grace period, aborting them"
            );
            self.tasks.shutdown().await;
        }
        stopped_in_time
    }
}
