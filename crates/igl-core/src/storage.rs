use async_trait::async_trait;
use igl_domain::{Jurisdiction, MessageRef, MessageStatus, MessageUpdate, Multihash, NewMessage};

use crate::{
    EventLog, InsertOutcome, Inserted, JobQueue, JobReceipt, MessageStore, NewEvent, NewJob,
    ObjectAcl, StoreError, Updated,
};

/// A transactional backend: every read port, plus [`Storage::begin`] for atomic writes.
#[async_trait]
pub trait Storage:
    MessageStore + JobQueue + EventLog + ObjectAcl + crate::subscriptions::SubscriptionStore
{
    /// Starts a unit of work. Nothing it does is visible to others before
    /// [`UnitOfWork::commit`]; dropping it without committing rolls everything back.
    async fn begin(&self) -> Result<Box<dyn UnitOfWork>, StoreError>;

    /// Checks that the backend answers (for readiness probes).
    async fn ping(&self) -> Result<(), StoreError>;
}

/// One transaction over messages, jobs, events and the object ACL.
///
/// This is the transactional outbox: a use case that changes a message enqueues the jobs
/// and appends the events that change causes, and acks the job that triggered it, in the
/// same unit of work, so that a crash at any point leaves either all of it or none.
#[async_trait]
pub trait UnitOfWork: Send {
    /// Inserts a message by reference with `status`. If a message with the same reference
    /// exists: same content → returns it with `created == false` (nothing changes);
    /// different content → [`StoreError::MessageConflict`].
    async fn insert_message(
        &mut self,
        message: &NewMessage,
        status: MessageStatus,
    ) -> Result<Inserted, StoreError> {
        let batch = [(message.clone(), status)];
        match self.insert_messages(&batch).await?.pop() {
            Some(InsertOutcome::Created(message)) => Ok(Inserted {
                message,
                created: true,
            }),
            Some(InsertOutcome::Existing(message)) => Ok(Inserted {
                message,
                created: false,
            }),
            Some(InsertOutcome::Conflict(reference)) => Err(StoreError::MessageConflict(reference)),
            None => Err(StoreError::Backend(
                "batch insert returned no outcome".into(),
            )),
        }
    }

    /// Inserts many messages at once (group commit), with the semantics of
    /// [`UnitOfWork::insert_message`] per message, in input order: one outcome per input.
    /// A reference repeated within the batch is created once; later occurrences are
    /// `Existing` (same content) or `Conflict`.
    async fn insert_messages(
        &mut self,
        messages: &[(NewMessage, MessageStatus)],
    ) -> Result<Vec<InsertOutcome>, StoreError>;

    /// Applies `update` to the message under a row lock, following
    /// [`igl_domain::Message::apply`]: [`StoreError::MessageNotFound`] or
    /// [`StoreError::InvalidUpdate`] leave the message unchanged.
    async fn update_message(
        &mut self,
        reference: &MessageRef,
        update: &MessageUpdate,
    ) -> Result<Updated, StoreError>;

    /// Enqueues jobs; they become claimable when the unit of work commits.
    async fn enqueue(&mut self, jobs: &[NewJob]) -> Result<(), StoreError>;

    /// Acks held jobs as part of this unit of work; returns how many were still held.
    async fn ack(&mut self, receipts: &[JobReceipt]) -> Result<u64, StoreError>;

    /// Appends an event; returns `false` when an event with the same id already exists.
    async fn append_event(&mut self, event: &NewEvent) -> Result<bool, StoreError>;

    /// Appends several events in order, with the semantics of
    /// [`UnitOfWork::append_event`] per event: one flag per input, `false` for an id that
    /// already existed (or appeared earlier in `events`). Backends do it in one statement.
    async fn append_events(&mut self, events: &[NewEvent]) -> Result<Vec<bool>, StoreError> {
        let mut appended = Vec::with_capacity(events.len());
        for event in events {
            appended.push(self.append_event(event).await?);
        }
        Ok(appended)
    }

    /// Allows `reader` to read the document `object` (idempotent).
    async fn grant_object(
        &mut self,
        object: &Multihash,
        reader: Jurisdiction,
    ) -> Result<(), StoreError>;

    /// Commits everything atomically.
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
}
