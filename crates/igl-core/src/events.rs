use async_trait::async_trait;
use igl_domain::Timestamp;

use crate::StoreError;

/// An event to append to the log. Appending it (through a [`crate::UnitOfWork`]) also
/// queues its fan-out to subscribers (`spread.v1` on [`crate::pipeline::SPREAD_QUEUE`]) in
/// the same transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Stable, unique id. Appending an id that is already in the log is a no-op, so a
    /// handler that runs twice can derive the same id and append once.
    pub id: String,
    /// What happened (`message.stored`, `message.received`, `message.status`).
    pub kind: String,
    /// The topic subscribers match against (a predicate, `message.<ref>.status`, …).
    pub topic: String,
    /// The body delivered to subscribers.
    pub payload: serde_json::Value,
}

/// An event in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Position in the log: strictly increasing in commit order of appends within one
    /// backend (gaps are possible).
    pub seq: i64,
    /// The stable id.
    pub id: String,
    /// What happened.
    pub kind: String,
    /// The topic.
    pub topic: String,
    /// The body.
    pub payload: serde_json::Value,
    /// When it was appended.
    pub created_at: Timestamp,
}

/// The append-only event log (reads; appends go through a [`crate::UnitOfWork`]).
#[async_trait]
pub trait EventLog: Send + Sync + std::fmt::Debug {
    /// Events with `seq > after`, in order, at most `limit`.
    async fn read_events(&self, after: i64, limit: u32) -> Result<Vec<Event>, StoreError>;

    /// The event with this id, if any.
    async fn get_event(&self, id: &str) -> Result<Option<Event>, StoreError>;
}
