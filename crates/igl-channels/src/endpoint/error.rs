use igl_core::StoreError;

/// Why the channel endpoint could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The configuration cannot work (a bad URL, schema or public URL).
    #[error("invalid channel endpoint configuration: {0}")]
    Config(String),
    /// The medium or endpoint database failed.
    #[error("channel database error")]
    Database(#[from] sqlx::Error),
    /// The medium or endpoint tables could not be created or migrated.
    #[error("channel database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The local state (job queue) failed.
    #[error("channel endpoint state error")]
    State(#[from] StoreError),
    /// The HTTP client for callbacks could not be built.
    #[error("cannot build the callback HTTP client")]
    HttpClient(#[source] reqwest::Error),
    /// The HTTP server failed.
    #[error("channel API server failed")]
    Serve(#[source] std::io::Error),
    /// A background task panicked or was aborted.
    #[error("channel endpoint task {task} ended abnormally: {reason}")]
    Task {
        /// Which task.
        task: &'static str,
        /// What happened.
        reason: String,
    },
}
