use igl_core::StoreError;

/// Why a worker stopped (or, for [`crate::drain`], why draining failed).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The [`crate::WorkerConfig`] cannot work; nothing was claimed.
    #[error("invalid configuration for worker {worker}: {reason}")]
    InvalidConfig {
        /// The handler's name.
        worker: &'static str,
        /// The broken rule.
        reason: String,
    },
    /// The queue failed. Only [`crate::drain`] returns this: [`crate::run_worker`] logs
    /// storage errors, backs off and carries on.
    #[error("job queue failed")]
    Store(#[from] StoreError),
    /// The worker's task panicked (reported by [`crate::WorkerSet`]; panics of handlers
    /// are caught per job and never end a worker).
    #[error("worker {0} panicked")]
    Panicked(&'static str),
}
