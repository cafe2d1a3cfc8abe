//! Row types shared by the SQL backends and their conversion into domain values.

use igl_core::{ClaimedJob, DeadLetter, Event, JobId, QueueName, StoreError};
use igl_domain::{Jurisdiction, Message, MessageContent, SenderRef};

use super::from_micros;

pub(crate) const MESSAGE_COLUMNS: &str = "seq, sender, sender_ref, receiver, subject, obj, \
     predicate, status, channel_id, channel_txn_id, channel_status, created_at, updated_at";

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("corrupt row: {what}").into())
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct MessageRow {
    pub seq: i64,
    pub sender: String,
    pub sender_ref: String,
    pub receiver: String,
    pub subject: String,
    pub obj: String,
    pub predicate: String,
    pub status: String,
    pub channel_id: Option<String>,
    pub channel_txn_id: Option<String>,
    pub channel_status: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl MessageRow {
    pub(crate) fn into_message(self) -> Result<Message, StoreError> {
        Ok(Message {
            sender_ref: SenderRef::parse(self.sender_ref).map_err(corrupt)?,
            content: MessageContent {
                sender: Jurisdiction::parse(&self.sender).map_err(corrupt)?,
                receiver: Jurisdiction::parse(&self.receiver).map_err(corrupt)?,
                subject: self.subject,
                obj: self.obj,
                predicate: self.predicate,
            },
            status: self.status.parse().map_err(corrupt)?,
            channel_id: self.channel_id,
            channel_txn_id: self.channel_txn_id,
            channel_status: self
                .channel_status
                .map(|s| s.parse())
                .transpose()
                .map_err(corrupt)?,
            created_at: from_micros(self.created_at),
            updated_at: from_micros(self.updated_at),
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct JobRow {
    pub id: i64,
    pub queue: String,
    pub payload: String,
    pub attempts: i64,
    pub created_at: i64,
    pub dedup_key: Option<String>,
    pub last_error: Option<String>,
}

impl JobRow {
    pub(crate) fn into_claimed(self, lease_token: i64) -> Result<ClaimedJob, StoreError> {
        Ok(ClaimedJob {
            id: JobId(self.id),
            queue: QueueName::parse(&self.queue).map_err(corrupt)?,
            payload: serde_json::from_str(&self.payload).map_err(corrupt)?,
            attempt: u32::try_from(self.attempts).unwrap_or(u32::MAX),
            lease_token,
            enqueued_at: from_micros(self.created_at),
            dedup_key: self.dedup_key,
            last_error: self.last_error,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct DeadJobRow {
    pub id: i64,
    pub queue: String,
    pub payload: String,
    pub attempts: i64,
    pub dedup_key: Option<String>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub failed_at: i64,
}

impl DeadJobRow {
    pub(crate) fn into_dead_letter(self) -> Result<DeadLetter, StoreError> {
        Ok(DeadLetter {
            id: self.id,
            queue: QueueName::parse(&self.queue).map_err(corrupt)?,
            payload: serde_json::from_str(&self.payload).map_err(corrupt)?,
            attempts: u32::try_from(self.attempts).unwrap_or(u32::MAX),
            last_error: self.last_error,
            dedup_key: self.dedup_key,
            enqueued_at: from_micros(self.created_at),
            failed_at: from_micros(self.failed_at),
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct EventRow {
    pub seq: i64,
    pub id: String,
    pub kind: String,
    pub topic: String,
    pub payload: String,
    pub created_at: i64,
}

impl EventRow {
    pub(crate) fn into_event(self) -> Result<Event, StoreError> {
        Ok(Event {
            seq: self.seq,
            id: self.id,
            kind: self.kind,
            topic: self.topic,
            payload: serde_json::from_str(&self.payload).map_err(corrupt)?,
            created_at: from_micros(self.created_at),
        })
    }
}

pub(crate) fn parse_readers(readers: Vec<String>) -> Result<Vec<Jurisdiction>, StoreError> {
    readers
        .iter()
        .map(|reader| Jurisdiction::parse(reader).map_err(corrupt))
        .collect()
}

pub(crate) const SUBSCRIPTION_COLUMNS: &str = "id, topic, topic_key, callback, secret, \
     expires_at, created_at, updated_at, last_success_at, last_failure_at, last_error";

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct SubscriptionRow {
    pub id: i64,
    pub topic: String,
    pub topic_key: String,
    pub callback: String,
    pub secret: Option<String>,
    pub expires_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_success_at: Option<i64>,
    pub last_failure_at: Option<i64>,
    pub last_error: Option<String>,
}

impl SubscriptionRow {
    pub(crate) fn into_subscription(self) -> igl_core::subscriptions::Subscription {
        igl_core::subscriptions::Subscription {
            id: self.id,
            topic: self.topic,
            topic_key: self.topic_key,
            callback: self.callback,
            secret: self.secret.map(igl_core::subscriptions::HubSecret),
            expires_at: from_micros(self.expires_at),
            created_at: from_micros(self.created_at),
            updated_at: from_micros(self.updated_at),
            last_success_at: self.last_success_at.map(from_micros),
            last_failure_at: self.last_failure_at.map(from_micros),
            last_error: self.last_error,
        }
    }
}

/// One subscription per callback, the most specific topic winning (REFERENCE-WIRE §3.3:
/// results form a set keyed by callback URL).
pub(crate) fn one_per_callback(
    rows: Vec<SubscriptionRow>,
) -> Vec<igl_core::subscriptions::Subscription> {
    let mut best: std::collections::HashMap<String, SubscriptionRow> =
        std::collections::HashMap::new();
    for row in rows {
        match best.get(&row.callback) {
            Some(current) if current.topic_key.len() >= row.topic_key.len() => {}
            _ => {
                best.insert(row.callback.clone(), row);
            }
        }
    }
    let mut chosen: Vec<_> = best
        .into_values()
        .map(SubscriptionRow::into_subscription)
        .collect();
    chosen.sort_by_key(|subscription| subscription.id);
    chosen
}
