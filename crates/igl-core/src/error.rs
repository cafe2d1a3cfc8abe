use igl_domain::{MessageRef, UpdateError};

/// A boxed error source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the storage ports (messages, jobs, events, ACL).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The addressed message does not exist.
    #[error("no message with reference {0}")]
    MessageNotFound(MessageRef),
    /// A message with this reference exists with different content (never overwritten).
    #[error("message {0} already exists with different content")]
    MessageConflict(MessageRef),
    /// The requested update breaks the message's rules; nothing was changed.
    #[error("message {reference} cannot be updated: {source}")]
    InvalidUpdate {
        /// The message.
        reference: MessageRef,
        /// The broken rule.
        source: UpdateError,
    },
    /// A value given to the store is malformed (e.g. a bad pagination cursor).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The backend cannot be reached or is overloaded; retrying later may succeed.
    #[error("storage backend unavailable")]
    Unavailable(#[source] BoxError),
    /// Anything else the backend reported (corrupt rows, failed migrations, …).
    #[error("storage backend failed")]
    Backend(#[source] BoxError),
}

impl StoreError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}
