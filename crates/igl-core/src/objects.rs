use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use igl_domain::{Jurisdiction, Multihash};

use crate::StoreError;

/// A stream of document bytes.
pub type ByteStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// What the store knows about a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its address (sha2-256 of the bytes).
    pub multihash: Multihash,
    /// Its size in bytes.
    pub size: u64,
    /// The media type it was uploaded with.
    pub content_type: String,
}

/// Errors of the [`ObjectStore`] port.
#[derive(Debug, thiserror::Error)]
pub enum ObjectStoreError {
    /// The bytes do not hash to the expected multihash; nothing was stored.
    #[error("content hashes to {actual}, expected {expected}")]
    HashMismatch {
        /// The multihash the caller expected.
        expected: Multihash,
        /// The multihash of the bytes received.
        actual: Multihash,
    },
    /// The body exceeded the size limit; nothing was stored.
    #[error("document exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// Reading the body failed (client went away, upstream error); nothing was stored.
    #[error("reading the document body failed")]
    Body(#[source] std::io::Error),
    /// The backend failed.
    #[error("object store backend failed")]
    Backend(#[source] crate::BoxError),
}

/// Content-addressed document storage.
///
/// Contract: `put` streams the body (never buffering it whole), computes its multihash,
/// enforces `max_bytes` while streaming, checks it against `expected` when given, and only
/// then makes the object visible under its multihash — a failed put leaves nothing
/// visible. Putting the same bytes twice is idempotent. `get` streams the stored bytes.
#[async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// Stores a document.
    async fn put(
        &self,
        body: ByteStream,
        content_type: &str,
        expected: Option<&Multihash>,
        max_bytes: u64,
    ) -> Result<ObjectInfo, ObjectStoreError>;

    /// Metadata of a stored document, if present.
    async fn head(&self, multihash: &Multihash) -> Result<Option<ObjectInfo>, ObjectStoreError>;

    /// A stored document's metadata and bytes, if present.
    async fn get(
        &self,
        multihash: &Multihash,
    ) -> Result<Option<(ObjectInfo, ByteStream)>, ObjectStoreError>;

    /// Checks that the backend answers (for readiness probes).
    async fn ping(&self) -> Result<(), ObjectStoreError>;
}

/// Which jurisdictions may read which documents (reads; grants go through a
/// [`crate::UnitOfWork`]).
#[async_trait]
pub trait ObjectAcl: Send + Sync + std::fmt::Debug {
    /// Whether `reader` may read `object`.
    async fn may_read(&self, object: &Multihash, reader: Jurisdiction) -> Result<bool, StoreError>;

    /// Every jurisdiction allowed to read `object`, sorted.
    async fn readers(&self, object: &Multihash) -> Result<Vec<Jurisdiction>, StoreError>;
}
