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
    ($name:ident, $tx:ty, $doc:literal) => {
        #[doc = $doc]
        struct $name {
            tx: $tx,
            woken: Vec<igl_core::QueueName>,
            wakeups: super::wake::Wakeups,
            /// Whether any subscription exists, looked up once per unit of work.
            subscribed: Option<bool>,
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
                let appended = append_event(&mut self.tx, event).await?;
                // Fan-out only matters when someone listens. A subscription committed after
                // this transaction started listening later than the event, so it need not
                // receive it (WebSub delivers what is published while subscribed).
                let subscribed = match (appended, self.subscribed) {
                    (false, _) => false,
                    (true, Some(known)) => known,
                    (true, None) => {
                        let known = any_subscription(&mut self.tx).await?;
                        self.subscribed = Some(known);
                        known
                    }
                };
                if subscribed {
                    let spread = igl_core::pipeline::spread_job(&event.id);
                    enqueue(&mut self.tx, std::slice::from_ref(&spread)).await?;
                    self.woken.push(spread.queue);
                }
                Ok(appended)
            }

            async fn append_events(
                &mut self,
                events: &[igl_core::NewEvent],
            ) -> Result<Vec<bool>, igl_core::StoreError> {
                let appended = append_events(&mut self.tx, events).await?;
                if appended.iter().any(|appended| *appended) {
                    let subscribed = match self.subscribed {
                        Some(known) => known,
                        None => {
                            let known = any_subscription(&mut self.tx).await?;
                            self.subscribed = Some(known);
                            known
                        }
                    };
                    if subscribed {
                        let spread: Vec<igl_core::NewJob> = events
                            .iter()
                            .zip(&appended)
                            .filter(|(_, appended)| **appended)
                            .map(|(event, _)| igl_core::pipeline::spread_job(&event.id))
                            .collect();
                        enqueue(&mut self.tx, &spread).await?;
                        self.woken.extend(spread.into_iter().map(|job| job.queue));
                    }
                }
                Ok(appended)
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
                    ..
                } = *self;
                super::WriteTransaction::commit_write(tx).await?;
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

/// Implements the read-only ports `EventLog` and `ObjectAcl` for a backend, with shared SQL
/// written with `?N` placeholders and adapted by `$convert` (see `sql_subscription_store!`).
macro_rules! sql_read_ports {
    ($store:ty, $reader:ident, $convert:expr) => {
        #[async_trait::async_trait]
        impl igl_core::EventLog for $store {
            async fn read_events(
                &self,
                after: i64,
                limit: u32,
            ) -> Result<Vec<igl_core::Event>, igl_core::StoreError> {
                let sql = $convert(
                    "SELECT seq, id, kind, topic, payload, created_at FROM events \
                     WHERE seq > ?1 ORDER BY seq LIMIT ?2"
                        .to_owned(),
                );
                let rows: Vec<super::rows::EventRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(after)
                    .bind(i64::from(limit.clamp(1, 10_000)))
                    .fetch_all(&self.$reader)
                    .await
                    .map_err(super::store_error)?;
                rows.into_iter()
                    .map(super::rows::EventRow::into_event)
                    .collect()
            }

            async fn get_event(
                &self,
                id: &str,
            ) -> Result<Option<igl_core::Event>, igl_core::StoreError> {
                let sql = $convert(
                    "SELECT seq, id, kind, topic, payload, created_at FROM events WHERE id = ?1"
                        .to_owned(),
                );
                let row: Option<super::rows::EventRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_optional(&self.$reader)
                    .await
                    .map_err(super::store_error)?;
                row.map(super::rows::EventRow::into_event).transpose()
            }
        }

        #[async_trait::async_trait]
        impl igl_core::ObjectAcl for $store {
            async fn may_read(
                &self,
                object: &igl_domain::Multihash,
                reader: igl_domain::Jurisdiction,
            ) -> Result<bool, igl_core::StoreError> {
                let sql = $convert(
                    "SELECT EXISTS (SELECT 1 FROM object_acl WHERE object = ?1 AND reader = ?2)"
                        .to_owned(),
                );
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .bind(object.to_string())
                    .bind(reader.as_str())
                    .fetch_one(&self.$reader)
                    .await
                    .map_err(super::store_error)
            }

            async fn readers(
                &self,
                object: &igl_domain::Multihash,
            ) -> Result<Vec<igl_domain::Jurisdiction>, igl_core::StoreError> {
                let sql = $convert(
                    "SELECT reader FROM object_acl WHERE object = ?1 ORDER BY reader".to_owned(),
                );
                let readers: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .bind(object.to_string())
                    .fetch_all(&self.$reader)
                    .await
                    .map_err(super::store_error)?;
                super::rows::parse_readers(readers)
            }
        }
    };
}

/// Implements `SubscriptionStore` for a backend. The SQL is shared and written with `?N`
/// placeholders; `$convert` adapts it to the backend (identity for SQLite, `?N` → `$N` for
/// PostgreSQL). `$keys_in` is the backend's "topic_key is in the JSON array ?1" condition,
/// `$ids_in` its "id is in the JSON array ?1" condition.
macro_rules! sql_subscription_store {
    ($store:ty, $writer:ident, $reader:ident, $convert:expr, $keys_in:literal, $ids_in:literal) => {
        #[async_trait::async_trait]
        impl igl_core::subscriptions::SubscriptionStore for $store {
            async fn upsert_subscription(
                &self,
                subscription: &igl_core::subscriptions::NewSubscription,
            ) -> Result<igl_core::subscriptions::Subscription, igl_core::StoreError> {
                let now = super::now_micros();
                let sql = $convert(format!(
                    "INSERT INTO subscriptions (topic, topic_key, callback, secret, expires_at, \
                     created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) \
                     ON CONFLICT (topic_key, callback) DO UPDATE SET topic = excluded.topic, \
                     secret = excluded.secret, expires_at = excluded.expires_at, \
                     updated_at = excluded.updated_at RETURNING {}",
                    super::rows::SUBSCRIPTION_COLUMNS
                ));
                let mut writer = self.$writer().await?;
                let row: super::rows::SubscriptionRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(&subscription.topic)
                    .bind(igl_core::subscriptions::topic_key(&subscription.topic))
                    .bind(&subscription.callback)
                    .bind(subscription.secret.as_ref().map(|secret| secret.0.clone()))
                    .bind(super::to_micros(subscription.expires_at))
                    .bind(now)
                    .fetch_one(&mut *writer)
                    .await
                    .map_err(super::store_error)?;
                super::WriteTransaction::commit_write(writer).await?;
                Ok(row.into_subscription())
            }

            async fn remove_subscription(
                &self,
                topic: &str,
                callback: &str,
            ) -> Result<bool, igl_core::StoreError> {
                let sql = $convert(
                    "DELETE FROM subscriptions WHERE topic_key = ?1 AND callback = ?2".to_owned(),
                );
                let mut writer = self.$writer().await?;
                let removed = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(igl_core::subscriptions::topic_key(topic))
                    .bind(callback)
                    .execute(&mut *writer)
                    .await
                    .map_err(super::store_error)?
                    .rows_affected();
                super::WriteTransaction::commit_write(writer).await?;
                Ok(removed > 0)
            }

            async fn remove_subscription_by_id(&self, id: i64) -> Result<bool, igl_core::StoreError> {
                let sql = $convert("DELETE FROM subscriptions WHERE id = ?1".to_owned());
                let mut writer = self.$writer().await?;
                let removed = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(id)
                    .execute(&mut *writer)
                    .await
                    .map_err(super::store_error)?
                    .rows_affected();
                super::WriteTransaction::commit_write(writer).await?;
                Ok(removed > 0)
            }

            async fn subscription(
                &self,
                id: i64,
            ) -> Result<Option<igl_core::subscriptions::Subscription>, igl_core::StoreError> {
                let sql = $convert(format!(
                    "SELECT {} FROM subscriptions WHERE id = ?1",
                    super::rows::SUBSCRIPTION_COLUMNS
                ));
                let row: Option<super::rows::SubscriptionRow> =
                    sqlx::query_as(sqlx::AssertSqlSafe(sql))
                        .bind(id)
                        .fetch_optional(&self.$reader)
                        .await
                        .map_err(super::store_error)?;
                Ok(row.map(super::rows::SubscriptionRow::into_subscription))
            }

            async fn subscriptions_by_id(
                &self,
                ids: &[i64],
            ) -> Result<Vec<igl_core::subscriptions::Subscription>, igl_core::StoreError> {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let ids = serde_json::to_string(ids)
                    .map_err(|error| igl_core::StoreError::Backend(Box::new(error)))?;
                let sql = $convert(format!(
                    "SELECT {} FROM subscriptions WHERE {} ORDER BY id",
                    super::rows::SUBSCRIPTION_COLUMNS,
                    $ids_in
                ));
                let rows: Vec<super::rows::SubscriptionRow> =
                    sqlx::query_as(sqlx::AssertSqlSafe(sql))
                        .bind(ids)
                        .fetch_all(&self.$reader)
                        .await
                        .map_err(super::store_error)?;
                Ok(rows.into_iter().map(super::rows::SubscriptionRow::into_subscription).collect())
            }

            async fn subscription_count(&self) -> Result<u64, igl_core::StoreError> {
                let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM subscriptions")
                    .fetch_one(&self.$reader)
                    .await
                    .map_err(super::store_error)?;
                Ok(u64::try_from(count).unwrap_or_default())
            }

            async fn matching_subscriptions(
                &self,
                event_topic: &str,
                now: igl_domain::Timestamp,
            ) -> Result<Vec<igl_core::subscriptions::Subscription>, igl_core::StoreError> {
                let keys = igl_core::subscriptions::matching_keys(event_topic);
                let keys = serde_json::to_string(&keys)
                    .map_err(|error| igl_core::StoreError::Backend(Box::new(error)))?;
                let sql = $convert(format!(
                    "SELECT {} FROM subscriptions WHERE {} AND expires_at > ?2 ORDER BY id",
                    super::rows::SUBSCRIPTION_COLUMNS,
                    $keys_in
                ));
                let rows: Vec<super::rows::SubscriptionRow> =
                    sqlx::query_as(sqlx::AssertSqlSafe(sql))
                        .bind(keys)
                        .bind(super::to_micros(now))
                        .fetch_all(&self.$reader)
                        .await
                        .map_err(super::store_error)?;
                Ok(super::rows::one_per_callback(rows))
            }

            async fn list_subscriptions(
                &self,
                after: i64,
                limit: u32,
            ) -> Result<Vec<igl_core::subscriptions::Subscription>, igl_core::StoreError> {
                let sql = $convert(format!(
                    "SELECT {} FROM subscriptions WHERE id > ?1 ORDER BY id LIMIT ?2",
                    super::rows::SUBSCRIPTION_COLUMNS
                ));
                let rows: Vec<super::rows::SubscriptionRow> =
                    sqlx::query_as(sqlx::AssertSqlSafe(sql))
                        .bind(after)
                        .bind(i64::from(limit.clamp(1, 1000)))
                        .fetch_all(&self.$reader)
                        .await
                        .map_err(super::store_error)?;
                Ok(rows.into_iter().map(super::rows::SubscriptionRow::into_subscription).collect())
            }

            async fn record_delivery(
                &self,
                id: i64,
                outcome: &igl_core::subscriptions::DeliveryOutcome,
            ) -> Result<(), igl_core::StoreError> {
                use igl_core::subscriptions::DeliveryOutcome;
                let now = super::now_micros();
                let query = match outcome {
                    DeliveryOutcome::Delivered => sqlx::query(sqlx::AssertSqlSafe($convert(
                        "UPDATE subscriptions SET last_success_at = ?2 WHERE id = ?1".to_owned(),
                    )))
                    .bind(id)
                    .bind(now),
                    DeliveryOutcome::Failed(error) => sqlx::query(sqlx::AssertSqlSafe($convert(
                        "UPDATE subscriptions SET last_failure_at = ?2, last_error = ?3 \
                         WHERE id = ?1"
                            .to_owned(),
                    )))
                    .bind(id)
                    .bind(now)
                    .bind(super::truncate_error(error)),
                };
                let mut writer = self.$writer().await?;
                query.execute(&mut *writer).await.map_err(super::store_error)?;
                super::WriteTransaction::commit_write(writer).await?;
                Ok(())
            }

            async fn record_successes(&self, ids: &[i64]) -> Result<(), igl_core::StoreError> {
                if ids.is_empty() {
                    return Ok(());
                }
                let ids = serde_json::to_string(ids)
                    .map_err(|error| igl_core::StoreError::Backend(Box::new(error)))?;
                let sql = $convert(format!(
                    "UPDATE subscriptions SET last_success_at = ?2 WHERE {}",
                    $ids_in
                ));
                let mut writer = self.$writer().await?;
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(ids)
                    .bind(super::now_micros())
                    .execute(&mut *writer)
                    .await
                    .map_err(super::store_error)?;
                super::WriteTransaction::commit_write(writer).await?;
                Ok(())
            }

            async fn purge_expired(
                &self,
                now: igl_domain::Timestamp,
            ) -> Result<u64, igl_core::StoreError> {
                let sql = $convert("DELETE FROM subscriptions WHERE expires_at <= ?1".to_owned());
                let mut writer = self.$writer().await?;
                let purged = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(super::to_micros(now))
                    .execute(&mut *writer)
                    .await
                    .map_err(super::store_error)?
                    .rows_affected();
                super::WriteTransaction::commit_write(writer).await?;
                Ok(purged)
            }
        }
    };
}

/// Rewrites `?N` placeholders as PostgreSQL's `$N`.
pub(crate) fn postgres_placeholders(sql: String) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

mod group;
mod postgres;

/// A backend's write transaction, as the unit of work commits it.
pub(crate) trait WriteTransaction: Send {
    /// Commits durably.
    fn commit_write(self) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;
}

/// A pooled PostgreSQL connection in autocommit mode: each statement commits by itself.
impl WriteTransaction for sqlx::pool::PoolConnection<sqlx::Postgres> {
    async fn commit_write(self) -> Result<(), StoreError> {
        Ok(())
    }
}

impl WriteTransaction for sqlx::Transaction<'static, sqlx::Postgres> {
    async fn commit_write(self) -> Result<(), StoreError> {
        self.commit().await.map_err(store_error)
    }
}

mod rows;
mod sqlite;
mod wake;

pub use postgres::{PostgresStore, pool_options as postgres_pool_options};
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

/// The time from `now` until `at` (both Unix microseconds), zero when `at` has passed.
pub(crate) fn micros_until(at: i64, now: i64) -> Duration {
    Duration::from_micros(u64::try_from(at.saturating_sub(now)).unwrap_or(0))
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

/// The listing statement of `filter`: `SELECT … FROM messages`, then only the conditions
/// `filter` sets (each value bound), `ORDER BY updated_at, seq` and the page size.
///
/// Plain conditions are what lets the planner walk the `(status, updated_at, seq)` or
/// `(updated_at, seq)` index from the cursor on. A fixed statement of `$n IS NULL OR …`
/// conditions gets a generic plan (PostgreSQL after five runs, SQLite always) that walks
/// the whole index and filters, so every page cost O(messages).
/// `starts_with` appends the adapter's SQL for "the predicate starts with this bound
/// prefix".
pub(crate) fn message_listing<DB>(
    filter: &igl_core::MessageFilter,
    starts_with: fn(&mut sqlx::QueryBuilder<DB>, String),
) -> sqlx::QueryBuilder<DB>
where
    DB: sqlx::Database,
    <DB as sqlx::Database>::Arguments: Default,
    for<'t> i64: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    let mut query =
        sqlx::QueryBuilder::new(format!("SELECT {} FROM messages", rows::MESSAGE_COLUMNS));
    let mut conditions = 0;
    let mut and = |query: &mut sqlx::QueryBuilder<DB>| {
        query.push(if conditions == 0 { " WHERE " } else { " AND " });
        conditions += 1;
    };
    if let Some(since) = filter.updated_since {
        and(&mut query);
        query.push("updated_at >= ").push_bind(to_micros(since));
    }
    if let Some(status) = filter.status {
        and(&mut query);
        query
            .push("status = ")
            .push_bind(status.as_str().to_owned());
    }
    match predicate_filter(filter.predicate.as_deref()) {
        (Some(exact), _) => {
            and(&mut query);
            query.push("predicate = ").push_bind(exact.to_owned());
        }
        (None, Some(prefix)) => {
            and(&mut query);
            starts_with(&mut query, prefix.to_owned());
        }
        (None, None) => {}
    }
    if let Some(sender) = filter.sender {
        and(&mut query);
        query.push("sender = ").push_bind(sender.to_string());
    }
    if let Some(receiver) = filter.receiver {
        and(&mut query);
        query.push("receiver = ").push_bind(receiver.to_string());
    }
    if let Some(after) = &filter.after {
        and(&mut query);
        query
            .push("(updated_at, seq) > (")
            .push_bind(after.updated_at_micros)
            .push(", ")
            .push_bind(after.seq)
            .push(")");
    }
    query
        .push(" ORDER BY updated_at, seq LIMIT ")
        .push_bind(i64::from(filter.effective_limit()));
    query
}

/// The page of a listing that asked for `limit` rows and got `rows`: a cursor after the
/// last row when the page is full.
pub(crate) fn message_page(
    rows: Vec<rows::MessageRow>,
    limit: u32,
) -> Result<igl_core::MessagePage, StoreError> {
    let next = (rows.len() == limit as usize)
        .then(|| {
            rows.last().map(|row| igl_core::Cursor {
                updated_at_micros: row.updated_at,
                seq: row.seq,
            })
        })
        .flatten();
    let messages = rows
        .into_iter()
        .map(rows::MessageRow::into_message)
        .collect::<Result<_, _>>()?;
    Ok(igl_core::MessagePage { messages, next })
}

/// The JSON text of a batch of jobs, bound as one parameter by the SQL adapters.
/// The JSON rows of a batch of events: `[{"i", "k", "t", "p"}, …]`.
pub(crate) fn events_json(events: &[igl_core::NewEvent]) -> String {
    let rows: Vec<serde_json::Value> = events
        .iter()
        .map(|event| {
            serde_json::json!({
                "i": event.id,
                "k": event.kind,
                "t": event.topic,
                "p": event.payload.to_string(),
            })
        })
        .collect();
    serde_json::Value::Array(rows).to_string()
}

/// Which of `events` were appended, given the ids the insert returned: an id counts once,
/// for its first occurrence.
pub(crate) fn appended_flags(events: &[igl_core::NewEvent], inserted: Vec<String>) -> Vec<bool> {
    let mut inserted: std::collections::HashSet<String> = inserted.into_iter().collect();
    events
        .iter()
        .map(|event| inserted.remove(&event.id))
        .collect()
}

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

#[cfg(test)]
mod tests {
    #[test]
    fn postgres_placeholders_rewrite_only_numbered_parameters() {
        assert_eq!(
            super::postgres_placeholders("a = ?1 AND b = ?12 AND c = '?'".to_owned()),
            "a = $1 AND b = $12 AND c = '?'"
        );
    }
}
