//! SQL backends: [`SqliteStore`] (embedded default) and [`PostgresStore`] (scale-out).
//!
//! Both implement every storage port of `igl-core` over the same schema (see
//! `migrations/`), with timestamps stored as microseconds since the Unix epoch taken from
//! the application clock. Replicas on several machines therefore need synchronised clocks
//! (NTP); leases are tens of seconds, far above normal skew.

/// Defines a backend's unit of work: a transaction plus the queues to wake after commit,
/// delegating every operation to the free functions of the module that invokes it
/// (`insert_messages`, `update_message`, `enqueue`, `ack`, `append_event`, `grant_object`,
/// which take the transaction's connection).
macro_rules! sql_unit_of_work {
    ($name:ident, $database:ty, $doc:literal) => {
        #[doc = $doc]
        struct $name {
            tx: sqlx::Transaction<'static, $database>,
            woken: Vec<igl_core::QueueName>,
            wakeups: super::wake::Wakeups,
        }

        #[async_trait::async_trait]
        impl igl_core::UnitOfWork for $name {
            async fn insert_messages(
                &mut self,
                messages: &[(igl_domain::NewMessage, igl_domain::MessageStatus)],
            ) -> Result<Vec<igl_core::InsertOutcome>, igl_core::StoreError> {
                insert_messages(&mut self.tx, messages).await
            }

            async fn update_message(
                &mut self,
                reference: &igl_domain::MessageRef,
                update: &igl_domain::MessageUpdate,
            ) -> Result<igl_core::Updated, igl_core::StoreError> {
                update_message(&mut self.tx, reference, update).await
            }

            async fn enqueue(
                &mut self,
                jobs: &[igl_core::NewJob],
            ) -> Result<(), igl_core::StoreError> {
                enqueue(&mut self.tx, jobs).await?;
                self.woken.extend(jobs.iter().map(|job| job.queue.clone()));
                Ok(())
            }

            async fn ack(
                &mut self,
                receipts: &[igl_core::JobReceipt],
            ) -> Result<u64, igl_core::StoreError> {
                ack(&mut self.tx, receipts).await
            }

            async fn append_event(
                &mut self,
                event: &igl_core::NewEvent,
            ) -> Result<bool, igl_core::StoreError> {
                append_event(&mut self.tx, event).await
            }

            async fn grant_object(
                &mut self,
                object: &igl_domain::Multihash,
                reader: igl_domain::Jurisdiction,
            ) -> Result<(), igl_core::StoreError> {
                grant_object(&mut self.tx, object, reader).await
            }

            async fn commit(self: Box<Self>) -> Result<(), igl_core::StoreError> {
                let Self {
                    tx,
                    mut woken,
                    wakeups,
                } = *self;
                tx.commit().await.map_err(super::store_error)?;
                woken.sort();
                woken.dedup();
                for queue in woken {
                    wakeups.wake(queue.as_str());
                }
                Ok(())
            }
        }
    };
}

mod postgres;
mod rows;
mod sqlite;
mod wake;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use std::time::Duration;

use igl_core::StoreError;
use igl_domain::Timestamp;

/// Converts a sqlx error into the port's error, classifying transient failures.
pub(crate) fn store_error(error: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    match &error {
        E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::WorkerCrashed => {
            StoreError::Unavailable(Box::new(error))
        }
        E::Database(db) if is_transient_code(db.code().as_deref()) => {
            StoreError::Unavailable(Box::new(error))
        }
        _ => StoreError::Backend(Box::new(error)),
    }
}

/// SQLite BUSY/LOCKED, PostgreSQL serialization failures, deadlocks, too many connections,
/// admin shutdown and "cannot connect now".
fn is_transient_code(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("5" | "6" | "517" | "40001" | "40P01" | "53300" | "57P01" | "57P03")
    )
}

pub(crate) fn migrate_error(error: sqlx::migrate::MigrateError) -> StoreError {
    StoreError::Backend(Box::new(error))
}

/// Microseconds since the Unix epoch.
pub(crate) fn to_micros(timestamp: Timestamp) -> i64 {
    i64::try_from(timestamp.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

/// The inverse of [`to_micros`].
pub(crate) fn from_micros(micros: i64) -> Timestamp {
    Timestamp::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

pub(crate) fn now_micros() -> i64 {
    to_micros(Timestamp::now_utc())
}

pub(crate) fn duration_micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// A random, positive lease token for one claim.
pub(crate) fn new_lease_token() -> i64 {
    rand::random::<i64>() & i64::MAX
}

/// The message of a job error, truncated to a sane size for storage.
pub(crate) fn truncate_error(error: &str) -> String {
    const MAX: usize = 4096;
    if error.len() <= MAX {
        return error.to_owned();
    }
    let mut end = MAX;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &error[..end])
}

/// Groups receipts by lease token: a claim gives all its jobs one token, so a batch ack is
/// usually a single statement.
pub(crate) fn receipts_by_token(
    receipts: &[igl_core::JobReceipt],
) -> std::collections::BTreeMap<i64, Vec<i64>> {
    let mut groups = std::collections::BTreeMap::<i64, Vec<i64>>::new();
    for receipt in receipts {
        groups
            .entry(receipt.lease_token)
            .or_default()
            .push(receipt.id.0);
    }
    groups
}

/// Splits a predicate filter into an exact match or, with a trailing `*`, a prefix.
pub(crate) fn predicate_filter(predicate: Option<&str>) -> (Option<&str>, Option<&str>) {
    match predicate {
        None => (None, None),
        Some(predicate) => match predicate.strip_suffix('*') {
            Some(prefix) => (None, Some(prefix)),
            None => (Some(predicate), None),
        },
    }
}

/// The JSON text of a batch of jobs, bound as one parameter by the SQL adapters.
pub(crate) fn jobs_json(jobs: &[igl_core::NewJob], now: i64) -> String {
    let rows: Vec<serde_json::Value> = jobs
        .iter()
        .map(|job| {
            serde_json::json!({
                "q": job.queue.as_str(),
                "p": job.payload.to_string(),
                "r": now.saturating_add(duration_micros(job.delay)),
                "k": job.dedup_key,
            })
        })
        .collect();
    serde_json::Value::Array(rows).to_string()
}

/// A message's identity in SQL: `(sender, sender_ref)`.
pub(crate) type MessageKey = (String, String);

pub(crate) fn message_key(message: &igl_domain::Message) -> MessageKey {
    (
        message.content.sender.to_string(),
        message.sender_ref.to_string(),
    )
}

/// The JSON rows of a batch insert: `[[sender, sender_ref, receiver, subject, obj,
/// predicate, status], …]`, bound as one parameter by both SQL backends.
pub(crate) fn messages_json(
    messages: &[(igl_domain::NewMessage, igl_domain::MessageStatus)],
) -> String {
    let rows: Vec<serde_json::Value> = messages
        .iter()
        .map(|(message, status)| {
            let content = &message.content;
            serde_json::json!([
                content.sender.as_str(),
                message.sender_ref.as_str(),
                content.receiver.as_str(),
                content.subject,
                content.obj,
                content.predicate,
                status.as_str(),
            ])
        })
        .collect();
    serde_json::Value::Array(rows).to_string()
}

/// The `[[sender, sender_ref], …]` JSON of the inputs that were not created, to look up the
/// rows they collided with.
pub(crate) fn missing_keys_json(
    messages: &[(igl_domain::NewMessage, igl_domain::MessageStatus)],
    created: &std::collections::HashMap<MessageKey, igl_domain::Message>,
) -> Option<String> {
    let missing: Vec<serde_json::Value> = messages
        .iter()
        .map(|(message, _)| {
            (
                message.content.sender.to_string(),
                message.sender_ref.to_string(),
            )
        })
        .filter(|key| !created.contains_key(key))
        .map(|(sender, sender_ref)| serde_json::json!([sender, sender_ref]))
        .collect();
    (!missing.is_empty()).then(|| serde_json::Value::Array(missing).to_string())
}

/// Matches a batch's inputs with the rows it created and the rows it collided with, in
/// input order. The first occurrence of a created reference is `Created`; any other input
/// is `Existing` when its content equals the stored row, `Conflict` otherwise.
pub(crate) fn resolve_outcomes(
    messages: &[(igl_domain::NewMessage, igl_domain::MessageStatus)],
    mut created: std::collections::HashMap<MessageKey, igl_domain::Message>,
    existing: Vec<igl_domain::Message>,
) -> Result<Vec<igl_core::InsertOutcome>, StoreError> {
    use igl_core::InsertOutcome;
    let mut known: std::collections::HashMap<MessageKey, igl_domain::Message> = existing
        .into_iter()
        .map(|message| (message_key(&message), message))
        .collect();
    let mut outcomes = Vec::with_capacity(messages.len());
    for (message, _) in messages {
        let key = (
            message.content.sender.to_string(),
            message.sender_ref.to_string(),
        );
        if let Some(stored) = created.remove(&key) {
            known.insert(key, stored.clone());
            outcomes.push(InsertOutcome::Created(stored));
            continue;
        }
        let stored = known
            .get(&key)
            .ok_or_else(|| StoreError::Backend("conflicting message vanished".into()))?;
        outcomes.push(if stored.content == message.content {
            InsertOutcome::Existing(stored.clone())
        } else {
            InsertOutcome::Conflict(message.reference())
        });
    }
    Ok(outcomes)
}
