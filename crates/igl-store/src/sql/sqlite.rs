//! The embedded backend: one SQLite file in WAL mode.
//!
//! Writes go through a pool of exactly one connection (SQLite allows one writer at a time;
//! queueing in the pool is cheaper than SQLITE_BUSY retries) and transactions start with
//! `BEGIN IMMEDIATE`, so other processes on the same file wait rather than fail. Reads use
//! a separate pool and never block the writer. `synchronous = FULL`: a commit survives
//! power loss, not only a process crash.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use igl_core::{
    ClaimedJob, DeadLetter, InsertOutcome, JobQueue, JobReceipt, MessageFilter, MessagePage,
    MessageStore, NewEvent, NewJob, QueueDepth, QueueName, Storage, StoreError, UnitOfWork,
    Updated,
};
use igl_domain::{
    Jurisdiction, Message, MessageRef, MessageStatus, MessageUpdate, Multihash, NewMessage,
};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions as _, SqliteConnection, SqlitePool};

use super::group::{GroupWriter, WriteTx};
use super::rows::{DeadJobRow, JobRow, MESSAGE_COLUMNS, MessageRow};
use super::wake::Wakeups;
use super::{
    duration_micros, from_micros, jobs_json, message_key, message_listing, message_page,
    messages_json, micros_until, migrate_error, missing_keys_json, new_lease_token, now_micros,
    receipts_by_token, resolve_outcomes, store_error, to_micros, truncate_error,
};
use std::collections::HashMap;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The SQLite implementation of every storage port.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: GroupWriter,
    reader: SqlitePool,
    wakeups: Wakeups,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` and applies migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new().filename(path);
        Self::open_with(options, 4).await
    }

    /// Opens a database from a `sqlite:` URL (`sqlite://data/igl.db`), with up to
    /// `max_readers` read connections, creating the file and its directory if needed.
    pub async fn connect(url: &str, max_readers: u32) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url).map_err(store_error)?;
        Self::open_with(options, max_readers).await
    }

    async fn open_with(
        options: SqliteConnectOptions,
        max_readers: u32,
    ) -> Result<Self, StoreError> {
        let directory = options.get_filename().parent().map(Path::to_path_buf);
        if let Some(directory) = directory.filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(&directory).map_err(|e| StoreError::Backend(Box::new(e)))?;
        }
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let mut writer = options.connect().await.map_err(store_error)?;
        MIGRATOR.run(&mut writer).await.map_err(migrate_error)?;
        let writer = GroupWriter::new(writer);
        let reader = SqlitePoolOptions::new()
            .max_connections(max_readers.max(1))
            .connect_with(options)
            .await
            .map_err(store_error)?;
        Ok(Self {
            writer,
            reader,
            wakeups: Wakeups::default(),
        })
    }

    /// Closes both pools, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }

    /// A member transaction of the writer's group commit.
    async fn write_transaction(&self) -> Result<WriteTx, StoreError> {
        self.writer.begin().await
    }

    /// A member of the writer's group commit for exactly one statement.
    async fn write_statement(&self) -> Result<WriteTx, StoreError> {
        self.writer.begin_statement().await
    }
}

#[async_trait]
impl MessageStore for SqliteStore {
    async fn get_message(&self, reference: &MessageRef) -> Result<Option<Message>, StoreError> {
        let mut conn = self.reader.acquire().await.map_err(store_error)?;
        select_message(&mut conn, reference).await
    }

    async fn list_messages(&self, filter: &MessageFilter) -> Result<MessagePage, StoreError> {
        let rows: Vec<MessageRow> = message_listing(filter, |query, prefix| {
            query
                .push("substr(predicate, 1, ")
                .push_bind(i64::try_from(prefix.chars().count()).unwrap_or(i64::MAX))
                .push(") = ")
                .push_bind(prefix);
        })
        .build_query_as()
        .fetch_all(&self.reader)
        .await
        .map_err(store_error)?;
        message_page(rows, filter.effective_limit())
    }
}

async fn select_message(
    conn: &mut SqliteConnection,
    reference: &MessageRef,
) -> Result<Option<Message>, StoreError> {
    let sql =
        format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE sender = ?1 AND sender_ref = ?2");
    let row: Option<MessageRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(reference.sender.as_str())
        .bind(reference.sender_ref.as_str())
        .fetch_optional(conn)
        .await
        .map_err(store_error)?;
    row.map(MessageRow::into_message).transpose()
}

async fn insert_messages(
    conn: &mut SqliteConnection,
    messages: &[(NewMessage, MessageStatus)],
) -> Result<Vec<InsertOutcome>, StoreError> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "INSERT INTO messages (sender, sender_ref, receiver, subject, obj, predicate, status, \
         created_at, updated_at) \
         SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), \
                json_extract(value, '$[2]'), json_extract(value, '$[3]'), \
                json_extract(value, '$[4]'), json_extract(value, '$[5]'), \
                json_extract(value, '$[6]'), ?2, ?2 \
         FROM json_each(?1) WHERE true \
         ON CONFLICT (sender, sender_ref) DO NOTHING RETURNING {MESSAGE_COLUMNS}"
    );
    let rows: Vec<MessageRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(messages_json(messages))
        .bind(now_micros())
        .fetch_all(&mut *conn)
        .await
        .map_err(store_error)?;
    let mut created = HashMap::with_capacity(rows.len());
    for row in rows {
        let message = row.into_message()?;
        created.insert(message_key(&message), message);
    }
    let existing = match missing_keys_json(messages, &created) {
        None => Vec::new(),
        Some(keys) => {
            let sql = format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE (sender, sender_ref) IN \
             (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?1))"
            );
            let rows: Vec<MessageRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(keys)
                .fetch_all(&mut *conn)
                .await
                .map_err(store_error)?;
            rows.into_iter()
                .map(MessageRow::into_message)
                .collect::<Result<_, _>>()?
        }
    };
    resolve_outcomes(messages, created, existing)
}

async fn update_message(
    conn: &mut SqliteConnection,
    reference: &MessageRef,
    update: &MessageUpdate,
) -> Result<Updated, StoreError> {
    let before = select_message(conn, reference)
        .await?
        .ok_or_else(|| StoreError::MessageNotFound(reference.clone()))?;
    let mut after = before.clone();
    let changed = after
        .apply(update, from_micros(now_micros()))
        .map_err(|source| StoreError::InvalidUpdate {
            reference: reference.clone(),
            source,
        })?;
    if changed {
        sqlx::query(
            "UPDATE messages SET status = ?1, channel_id = ?2, channel_txn_id = ?3, \
             channel_status = ?4, updated_at = ?5 WHERE sender = ?6 AND sender_ref = ?7",
        )
        .bind(after.status.as_str())
        .bind(&after.channel_id)
        .bind(&after.channel_txn_id)
        .bind(after.channel_status.map(|s| s.as_str()))
        .bind(to_micros(after.updated_at))
        .bind(reference.sender.as_str())
        .bind(reference.sender_ref.as_str())
        .execute(conn)
        .await
        .map_err(store_error)?;
    }
    Ok(Updated { before, after })
}

async fn enqueue(conn: &mut SqliteConnection, jobs: &[NewJob]) -> Result<(), StoreError> {
    if jobs.is_empty() {
        return Ok(());
    }
    let now = now_micros();
    sqlx::query(
        "INSERT INTO jobs (queue, payload, run_at, dedup_key, created_at) \
         SELECT json_extract(value, '$.q'), json_extract(value, '$.p'), \
                json_extract(value, '$.r'), json_extract(value, '$.k'), ?2 \
         FROM json_each(?1) WHERE true \
         ON CONFLICT DO NOTHING",
    )
    .bind(jobs_json(jobs, now))
    .bind(now)
    .execute(conn)
    .await
    .map_err(store_error)?;
    Ok(())
}

async fn ack(conn: &mut SqliteConnection, receipts: &[JobReceipt]) -> Result<u64, StoreError> {
    let mut removed = 0;
    for (token, ids) in receipts_by_token(receipts) {
        let ids = serde_json::to_string(&ids).map_err(|e| StoreError::Backend(Box::new(e)))?;
        removed += sqlx::query(
            "DELETE FROM jobs WHERE lease_token = ?1 AND id IN (SELECT value FROM json_each(?2))",
        )
        .bind(token)
        .bind(ids)
        .execute(&mut *conn)
        .await
        .map_err(store_error)?
        .rows_affected();
    }
    Ok(removed)
}

async fn append_event(conn: &mut SqliteConnection, event: &NewEvent) -> Result<bool, StoreError> {
    let result = sqlx::query(
        "INSERT INTO events (id, kind, topic, payload, created_at) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&event.id)
    .bind(&event.kind)
    .bind(&event.topic)
    .bind(event.payload.to_string())
    .bind(now_micros())
    .execute(conn)
    .await
    .map_err(store_error)?;
    Ok(result.rows_affected() == 1)
}

async fn append_events(
    conn: &mut SqliteConnection,
    events: &[NewEvent],
) -> Result<Vec<bool>, StoreError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let inserted: Vec<String> = sqlx::query_scalar(
        "INSERT INTO events (id, kind, topic, payload, created_at) \
         SELECT json_extract(value, '$.i'), json_extract(value, '$.k'), \
                json_extract(value, '$.t'), json_extract(value, '$.p'), ?2 \
         FROM json_each(?1) WHERE true ORDER BY key \
         ON CONFLICT (id) DO NOTHING RETURNING id",
    )
    .bind(super::events_json(events))
    .bind(now_micros())
    .fetch_all(conn)
    .await
    .map_err(store_error)?;
    Ok(super::appended_flags(events, inserted))
}

/// Whether any subscription exists (expired ones included; they are purged separately).
async fn any_subscription(conn: &mut SqliteConnection) -> Result<bool, StoreError> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM subscriptions)")
        .fetch_one(conn)
        .await
        .map_err(store_error)
}

async fn grant_object(
    conn: &mut SqliteConnection,
    object: &Multihash,
    reader: Jurisdiction,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO object_acl (object, reader, created_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT DO NOTHING",
    )
    .bind(object.to_string())
    .bind(reader.as_str())
    .bind(now_micros())
    .execute(conn)
    .await
    .map_err(store_error)?;
    Ok(())
}

#[async_trait]
impl JobQueue for SqliteStore {
    async fn enqueue(&self, jobs: &[NewJob]) -> Result<(), StoreError> {
        let mut tx = self.write_statement().await?;
        enqueue(&mut tx, jobs).await?;
        tx.commit().await?;
        for job in jobs {
            self.wakeups.wake(job.queue.as_str());
        }
        Ok(())
    }

    async fn claim(
        &self,
        queue: &QueueName,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let now = now_micros();
        let token = new_lease_token();
        let mut tx = self.write_statement().await?;
        let mut rows: Vec<JobRow> = sqlx::query_as(
            "UPDATE jobs SET lease_token = ?1, run_at = ?2, attempts = attempts + 1 \
             WHERE id IN (SELECT id FROM jobs WHERE queue = ?3 AND run_at <= ?4 \
                          ORDER BY run_at, id LIMIT ?5) \
             RETURNING id, queue, payload, attempts, created_at, dedup_key, last_error",
        )
        .bind(token)
        .bind(now.saturating_add(duration_micros(lease)))
        .bind(queue.as_str())
        .bind(now)
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await
        .map_err(store_error)?;
        tx.commit().await?;
        rows.sort_by_key(|row| row.id);
        rows.into_iter()
            .map(|row| row.into_claimed(token))
            .collect()
    }

    async fn ack(&self, receipts: &[JobReceipt]) -> Result<u64, StoreError> {
        // One statement per lease token (one for a claimed batch); a failure after the
        // first leaves those acks done, which is harmless: the rest come back.
        let mut tx = self.write_statement().await?;
        let acked = ack(&mut tx, receipts).await?;
        tx.commit().await?;
        Ok(acked)
    }

    async fn retry(
        &self,
        receipt: JobReceipt,
        delay: Duration,
        error: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write_statement().await?;
        let result = sqlx::query(
            "UPDATE jobs SET lease_token = NULL, run_at = ?3, last_error = ?4 \
             WHERE id = ?1 AND lease_token = ?2",
        )
        .bind(receipt.id.0)
        .bind(receipt.lease_token)
        .bind(now_micros().saturating_add(duration_micros(delay)))
        .bind(truncate_error(error))
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        tx.commit().await?;
        Ok(result.rows_affected() == 1)
    }

    async fn dead_letter(&self, receipt: JobReceipt, error: &str) -> Result<bool, StoreError> {
        let mut tx = self.write_transaction().await?;
        let result = sqlx::query(
            "INSERT INTO dead_jobs (queue, payload, attempts, dedup_key, last_error, created_at, \
             failed_at) SELECT queue, payload, attempts, dedup_key, ?3, created_at, ?4 \
             FROM jobs WHERE id = ?1 AND lease_token = ?2",
        )
        .bind(receipt.id.0)
        .bind(receipt.lease_token)
        .bind(truncate_error(error))
        .bind(now_micros())
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        if result.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM jobs WHERE id = ?1 AND lease_token = ?2")
            .bind(receipt.id.0)
            .bind(receipt.lease_token)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await?;
        Ok(true)
    }

    async fn extend_lease(&self, receipt: JobReceipt, lease: Duration) -> Result<bool, StoreError> {
        let mut tx = self.write_statement().await?;
        let result = sqlx::query("UPDATE jobs SET run_at = ?3 WHERE id = ?1 AND lease_token = ?2")
            .bind(receipt.id.0)
            .bind(receipt.lease_token)
            .bind(now_micros().saturating_add(duration_micros(lease)))
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await?;
        Ok(result.rows_affected() == 1)
    }

    async fn dead_letters(
        &self,
        queue: Option<&QueueName>,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let rows: Vec<DeadJobRow> = sqlx::query_as(
            "SELECT id, queue, payload, attempts, dedup_key, last_error, created_at, failed_at \
             FROM dead_jobs WHERE (?1 IS NULL OR queue = ?1) AND id > ?2 ORDER BY id LIMIT ?3",
        )
        .bind(queue.map(QueueName::as_str))
        .bind(after.unwrap_or(0))
        .bind(i64::from(limit.clamp(1, 1000)))
        .fetch_all(&self.reader)
        .await
        .map_err(store_error)?;
        rows.into_iter().map(DeadJobRow::into_dead_letter).collect()
    }

    async fn replay_dead_letter(&self, id: i64) -> Result<bool, StoreError> {
        let mut tx = self.write_transaction().await?;
        let queue: Option<String> = sqlx::query_scalar(
            "INSERT INTO jobs (queue, payload, run_at, dedup_key, created_at) \
             SELECT queue, payload, ?2, dedup_key, created_at FROM dead_jobs WHERE id = ?1 \
             ON CONFLICT DO NOTHING RETURNING queue",
        )
        .bind(id)
        .bind(now_micros())
        .fetch_optional(&mut *tx)
        .await
        .map_err(store_error)?;
        let deleted = sqlx::query("DELETE FROM dead_jobs WHERE id = ?1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?
            .rows_affected();
        tx.commit().await?;
        if let Some(queue) = queue {
            self.wakeups.wake(&queue);
        }
        Ok(deleted == 1)
    }

    async fn depth(&self, queue: &QueueName) -> Result<QueueDepth, StoreError> {
        let now = now_micros();
        let (ready, scheduled, in_flight): (i64, i64, i64) = sqlx::query_as(
            "SELECT COALESCE(SUM(run_at <= ?2), 0), \
                    COALESCE(SUM(run_at > ?2 AND lease_token IS NULL), 0), \
                    COALESCE(SUM(run_at > ?2 AND lease_token IS NOT NULL), 0) \
             FROM jobs WHERE queue = ?1",
        )
        .bind(queue.as_str())
        .bind(now)
        .fetch_one(&self.reader)
        .await
        .map_err(store_error)?;
        let dead: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dead_jobs WHERE queue = ?1")
            .bind(queue.as_str())
            .fetch_one(&self.reader)
            .await
            .map_err(store_error)?;
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        Ok(QueueDepth {
            ready: count(ready),
            scheduled: count(scheduled),
            in_flight: count(in_flight),
            dead: count(dead),
        })
    }

    async fn next_due_in(&self, queue: &QueueName) -> Result<Option<Duration>, StoreError> {
        // A leased job's `run_at` is its lease expiry: the minimum covers both.
        let earliest: Option<i64> =
            sqlx::query_scalar("SELECT MIN(run_at) FROM jobs WHERE queue = ?1")
                .bind(queue.as_str())
                .fetch_one(&self.reader)
                .await
                .map_err(store_error)?;
        Ok(earliest.map(|run_at| micros_until(run_at, now_micros())))
    }

    async fn wait_for_jobs(&self, queue: &QueueName, timeout: Duration) {
        self.wakeups.wait(queue.as_str(), timeout).await;
    }
}

sql_read_ports!(SqliteStore, reader, std::convert::identity);

#[async_trait]
impl Storage for SqliteStore {
    async fn begin(&self) -> Result<Box<dyn UnitOfWork>, StoreError> {
        let tx = self.write_transaction().await?;
        Ok(Box::new(SqliteUnitOfWork {
            tx,
            woken: Vec::new(),
            wakeups: self.wakeups.clone(),
            subscribed: None,
        }))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(store_error)?;
        Ok(())
    }
}

sql_subscription_store!(
    SqliteStore,
    write_statement,
    reader,
    std::convert::identity,
    "topic_key IN (SELECT value FROM json_each(?1))",
    "id IN (SELECT value FROM json_each(?1))"
);

sql_unit_of_work!(
    SqliteUnitOfWork,
    super::group::WriteTx,
    "A member transaction of the writer's group commit (see `group`)."
);
