use async_trait::async_trait;
use igl_domain::{Jurisdiction, Message, MessageRef, MessageStatus, Timestamp};

use crate::StoreError;

/// Read access to stored messages. Writes go through a [`crate::UnitOfWork`].
#[async_trait]
pub trait MessageStore: Send + Sync + std::fmt::Debug {
    /// The message with this reference, if any.
    async fn get_message(&self, reference: &MessageRef) -> Result<Option<Message>, StoreError>;

    /// Messages matching `filter`, ordered by `(updated_at, insertion order)` ascending, at
    /// most `filter.limit` of them, starting after `filter.after`. A message that changes
    /// after a page was read moves to the end of the order, so following `next` cursors
    /// until they run out sees every change at least once (catch-up semantics).
    async fn list_messages(&self, filter: &MessageFilter) -> Result<MessagePage, StoreError>;
}

/// The result of inserting a message by reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inserted {
    /// The stored message (the new one, or the existing one with the same content).
    pub message: Message,
    /// `true` when the message was created by this insert, `false` when an identical
    /// message already existed (idempotent re-submission).
    pub created: bool,
}

/// The outcome of inserting one message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertOutcome {
    /// The message was stored by this insert.
    Created(Message),
    /// A message with the same reference and content already existed (idempotent
    /// re-submission); nothing changed.
    Existing(Message),
    /// A message with the same reference but different content exists; nothing changed.
    Conflict(MessageRef),
}

/// The result of updating a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Updated {
    /// The message before the update.
    pub before: Message,
    /// The message after the update (equal to `before` when nothing changed).
    pub after: Message,
}

impl Updated {
    /// Whether the update changed anything.
    pub fn changed(&self) -> bool {
        self.before != self.after
    }

    /// Whether the node-side status changed.
    pub fn status_changed(&self) -> bool {
        self.before.status != self.after.status
    }
}

/// An opaque position in the message order, returned as `next` by a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// `updated_at` of the last message seen, in microseconds since the Unix epoch.
    pub updated_at_micros: i64,
    /// Storage-internal sequence of the last message seen.
    pub seq: i64,
}

impl Cursor {
    /// The text form used in URLs (`<micros>.<seq>`).
    pub fn encode(&self) -> String {
        format!("{}.{}", self.updated_at_micros, self.seq)
    }

    /// Parses the text form produced by [`Cursor::encode`].
    pub fn decode(text: &str) -> Result<Self, StoreError> {
        let invalid = || StoreError::InvalidArgument(format!("{text:?} is not a valid cursor"));
        let (micros, seq) = text.split_once('.').ok_or_else(invalid)?;
        Ok(Self {
            updated_at_micros: micros.parse().map_err(|_| invalid())?,
            seq: seq.parse().map_err(|_| invalid())?,
        })
    }
}

/// Which messages a listing returns. All conditions must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageFilter {
    /// Only messages updated at or after this time.
    pub updated_since: Option<Timestamp>,
    /// Only messages with this status.
    pub status: Option<MessageStatus>,
    /// Only messages with this predicate; a trailing `*` makes it a prefix match
    /// (`UN.CEFACT.*` matches `UN.CEFACT.Trade.CO.created`).
    pub predicate: Option<String>,
    /// Only messages from this sender.
    pub sender: Option<Jurisdiction>,
    /// Only messages to this receiver.
    pub receiver: Option<Jurisdiction>,
    /// Continue after this position.
    pub after: Option<Cursor>,
    /// Page size, 1..=1000.
    pub limit: u32,
}

impl Default for MessageFilter {
    fn default() -> Self {
        Self {
            updated_since: None,
            status: None,
            predicate: None,
            sender: None,
            receiver: None,
            after: None,
            limit: 100,
        }
    }
}

impl MessageFilter {
    /// Largest page a listing returns.
    pub const MAX_LIMIT: u32 = 1000;

    /// The page size clamped to `1..=MAX_LIMIT`.
    pub fn effective_limit(&self) -> u32 {
        self.limit.clamp(1, Self::MAX_LIMIT)
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessagePage {
    /// The messages, in order.
    pub messages: Vec<Message>,
    /// Where the next page starts; `None` when this page was not full.
    pub next: Option<Cursor>,
}
