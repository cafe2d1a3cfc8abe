//! [`BrokeredStorage`]: the node's storage when jobs live on a broker — SQL for state and
//! as the transactional outbox, RabbitMQ for consuming jobs.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use igl_core::subscriptions::{DeliveryOutcome, NewSubscription, Subscription, SubscriptionStore};
use igl_core::{
    ClaimedJob, DeadLetter, Event, EventLog, InsertOutcome, JobQueue, JobReceipt, MessageFilter,
    MessagePage, MessageStore, NewEvent, NewJob, ObjectAcl, QueueDepth, QueueName, Storage,
    StoreError, UnitOfWork, Updated,
};
use igl_domain::{
    Jurisdiction, Message, MessageRef, MessageStatus, MessageUpdate, Multihash, NewMessage,
    Timestamp,
};
use tracing::warn;

use crate::AmqpQueue;

/// A [`Storage`] whose job queue is RabbitMQ, with the SQL backend as transactional outbox.
///
/// - **Producing**: every enqueue — inside a unit of work ([`UnitOfWork::enqueue`]) or not
///   ([`JobQueue::enqueue`]) — writes the job into the SQL `jobs` table, in the same
///   transaction as the state change that causes it. The [`crate::OutboxRelay`] publishes
///   committed rows to the broker (confirmed) and only then deletes them. Delays and dedup
///   keys are enforced there while the job waits.
/// - **Consuming**: claim, ack, retry, dead-letter, lease extension, dead-letter listing and
///   replay, and wake-ups go to the broker ([`AmqpQueue`]).
/// - **Acking inside a unit of work** ([`UnitOfWork::ack`], `Handled::AckedInTransaction`):
///   the unit records the receipts and acks them on the broker right after its SQL commit
///   succeeded. If the process dies between the commit and the broker ack, the job is
///   delivered again and the (idempotent) handler finds its work done: at least once. A
///   unit that is rolled back acks nothing.
/// - **Depth** adds both: jobs still in the outbox count as ready / scheduled / in flight
///   (held by a relay) on top of the broker's counts.
///
/// Everything else (messages, events, ACL, subscriptions) is the SQL backend's.
#[derive(Debug, Clone)]
pub struct BrokeredStorage {
    sql: Arc<dyn Storage>,
    broker: AmqpQueue,
}

impl BrokeredStorage {
    /// `sql` holds the state and the outbox; `broker` carries the jobs.
    pub fn new(sql: Arc<dyn Storage>, broker: AmqpQueue) -> Self {
        Self { sql, broker }
    }

    /// The SQL backend (its job queue is the outbox the relay drains).
    pub fn sql(&self) -> &Arc<dyn Storage> {
        &self.sql
    }

    /// The broker queue.
    pub fn broker(&self) -> &AmqpQueue {
        &self.broker
    }
}

#[async_trait]
impl Storage for BrokeredStorage {
    async fn begin(&self) -> Result<Box<dyn UnitOfWork>, StoreError> {
        Ok(Box::new(BrokeredUnit {
            sql: self.sql.begin().await?,
            broker: self.broker.clone(),
            acks: Vec::new(),
        }))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.sql.ping().await?;
        self.broker
            .depth(&igl_core::pipeline::PROCESS_QUEUE)
            .await?;
        Ok(())
    }
}

/// A SQL unit of work whose job acks go to the broker after the commit.
struct BrokeredUnit {
    sql: Box<dyn UnitOfWork>,
    broker: AmqpQueue,
    acks: Vec<JobReceipt>,
}

#[async_trait]
impl UnitOfWork for BrokeredUnit {
    async fn insert_messages(
        &mut self,
        messages: &[(NewMessage, MessageStatus)],
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        self.sql.insert_messages(messages).await
    }

    async fn update_message(
        &mut self,
        reference: &MessageRef,
        update: &MessageUpdate,
    ) -> Result<Updated, StoreError> {
        self.sql.update_message(reference, update).await
    }

    async fn enqueue(&mut self, jobs: &[NewJob]) -> Result<(), StoreError> {
        self.sql.enqueue(jobs).await
    }

    /// Records the receipts; they are acked on the broker after a successful commit.
    /// Returns how many of them hold their lease now.
    async fn ack(&mut self, receipts: &[JobReceipt]) -> Result<u64, StoreError> {
        self.acks.extend_from_slice(receipts);
        Ok(self.broker.held(receipts))
    }

    async fn append_event(&mut self, event: &NewEvent) -> Result<bool, StoreError> {
        self.sql.append_event(event).await
    }

    async fn append_events(&mut self, events: &[NewEvent]) -> Result<Vec<bool>, StoreError> {
        self.sql.append_events(events).await
    }

    async fn grant_object(
        &mut self,
        object: &Multihash,
        reader: Jurisdiction,
    ) -> Result<(), StoreError> {
        self.sql.grant_object(object, reader).await
    }

    /// Commits the SQL transaction, then acks the recorded jobs on the broker. A failed
    /// broker ack is logged, not returned: the state change is committed, and the job comes
    /// back to an idempotent handler.
    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        let Self { sql, broker, acks } = *self;
        sql.commit().await?;
        if !acks.is_empty() {
            match broker.ack(&acks).await {
                Ok(acked) if acked < acks.len() as u64 => warn!(
                    lost = acks.len() as u64 - acked,
                    "leases lost before the post-commit ack, those jobs will be handled again"
                ),
                Ok(_) => {}
                Err(error) => warn!(
                    error = %crate::error_chain(&error),
                    "post-commit ack failed, those jobs will be handled again"
                ),
            }
        }
        Ok(())
    }
}

fn add(a: QueueDepth, b: QueueDepth) -> QueueDepth {
    QueueDepth {
        ready: a.ready + b.ready,
        scheduled: a.scheduled + b.scheduled,
        in_flight: a.in_flight + b.in_flight,
        dead: a.dead + b.dead,
    }
}

#[async_trait]
impl JobQueue for BrokeredStorage {
    /// Writes the jobs into the SQL outbox (atomically, dedup keys and delays honoured);
    /// the relay publishes them.
    async fn enqueue(&self, jobs: &[NewJob]) -> Result<(), StoreError> {
        self.sql.enqueue(jobs).await
    }

    async fn claim(
        &self,
        queue: &QueueName,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        self.broker.claim(queue, max, lease).await
    }

    async fn ack(&self, receipts: &[JobReceipt]) -> Result<u64, StoreError> {
        self.broker.ack(receipts).await
    }

    async fn retry(
        &self,
        receipt: JobReceipt,
        delay: Duration,
        error: &str,
    ) -> Result<bool, StoreError> {
        self.broker.retry(receipt, delay, error).await
    }

    async fn dead_letter(&self, receipt: JobReceipt, error: &str) -> Result<bool, StoreError> {
        self.broker.dead_letter(receipt, error).await
    }

    async fn extend_lease(&self, receipt: JobReceipt, lease: Duration) -> Result<bool, StoreError> {
        self.broker.extend_lease(receipt, lease).await
    }

    async fn dead_letters(
        &self,
        queue: Option<&QueueName>,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.broker.dead_letters(queue, after, limit).await
    }

    async fn replay_dead_letter(&self, id: i64) -> Result<bool, StoreError> {
        self.broker.replay_dead_letter(id).await
    }

    async fn depth(&self, queue: &QueueName) -> Result<QueueDepth, StoreError> {
        Ok(add(
            self.broker.depth(queue).await?,
            self.sql.depth(queue).await?,
        ))
    }

    async fn wait_for_jobs(&self, queue: &QueueName, timeout: Duration) {
        self.broker.wait_for_jobs(queue, timeout).await;
    }
}

#[async_trait]
impl MessageStore for BrokeredStorage {
    async fn get_message(&self, reference: &MessageRef) -> Result<Option<Message>, StoreError> {
        self.sql.get_message(reference).await
    }

    async fn list_messages(&self, filter: &MessageFilter) -> Result<MessagePage, StoreError> {
        self.sql.list_messages(filter).await
    }
}

#[async_trait]
impl EventLog for BrokeredStorage {
    async fn read_events(&self, after: i64, limit: u32) -> Result<Vec<Event>, StoreError> {
        self.sql.read_events(after, limit).await
    }

    async fn get_event(&self, id: &str) -> Result<Option<Event>, StoreError> {
        self.sql.get_event(id).await
    }
}

#[async_trait]
impl ObjectAcl for BrokeredStorage {
    async fn may_read(&self, object: &Multihash, reader: Jurisdiction) -> Result<bool, StoreError> {
        self.sql.may_read(object, reader).await
    }

    async fn readers(&self, object: &Multihash) -> Result<Vec<Jurisdiction>, StoreError> {
        self.sql.readers(object).await
    }
}

#[async_trait]
impl SubscriptionStore for BrokeredStorage {
    async fn upsert_subscription(
        &self,
        subscription: &NewSubscription,
    ) -> Result<Subscription, StoreError> {
        self.sql.upsert_subscription(subscription).await
    }

    async fn remove_subscription(&self, topic: &str, callback: &str) -> Result<bool, StoreError> {
        self.sql.remove_subscription(topic, callback).await
    }

    async fn remove_subscription_by_id(&self, id: i64) -> Result<bool, StoreError> {
        self.sql.remove_subscription_by_id(id).await
    }

    async fn subscription(&self, id: i64) -> Result<Option<Subscription>, StoreError> {
        self.sql.subscription(id).await
    }

    async fn subscriptions_by_id(&self, ids: &[i64]) -> Result<Vec<Subscription>, StoreError> {
        self.sql.subscriptions_by_id(ids).await
    }

    async fn subscription_count(&self) -> Result<u64, StoreError> {
        self.sql.subscription_count().await
    }

    async fn matching_subscriptions(
        &self,
        event_topic: &str,
        now: Timestamp,
    ) -> Result<Vec<Subscription>, StoreError> {
        self.sql.matching_subscriptions(event_topic, now).await
    }

    async fn list_subscriptions(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Subscription>, StoreError> {
        self.sql.list_subscriptions(after, limit).await
    }

    async fn record_delivery(&self, id: i64, outcome: &DeliveryOutcome) -> Result<(), StoreError> {
        self.sql.record_delivery(id, outcome).await
    }

    async fn record_successes(&self, ids: &[i64]) -> Result<(), StoreError> {
        self.sql.record_successes(ids).await
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        self.sql.purge_expired(now).await
    }
}
