//! The scale-out backend: PostgreSQL.
//!
//! Safe with many processes: claims use `FOR UPDATE SKIP LOCKED`, message updates lock the
//! row, and enqueues send `NOTIFY igl_jobs, '<schema>/<queue>'` on commit so idle
//! consumers in every process wake at once (with polling as the fallback if the listener
//! connection drops). An optional schema isolates several nodes (or tests) in one database.

use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use igl_core::{
    ClaimedJob, DeadLetter, InsertOutcome, JobQueue, JobReceipt, MessageFilter, MessagePage,
    MessageStore, NewEvent, NewJob, QueueDepth, QueueName, Storage, StoreError, TakenJobs,
    UnitOfWork, Updated,
};
use igl_domain::{
    Jurisdiction, Message, MessageRef, MessageStatus, MessageUpdate, Multihash, NewMessage,
};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection, Postgres, Transaction};
use tokio::task::JoinHandle;

use super::rows::{DeadJobRow, JobRow, MESSAGE_COLUMNS, MessageRow};
use super::wake::{RemotePublisher, Wakeups};
use super::{
    duration_micros, from_micros, jobs_json, message_key, message_listing, message_page,
    messages_json, micros_until, migrate_error, missing_keys_json, new_lease_token, now_micros,
    receipts_by_token, resolve_outcomes, store_error, to_micros, truncate_error,
};
use std::collections::HashMap;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The notification channel enqueues signal on.
const JOBS_CHANNEL: &str = "igl_jobs";

/// The PostgreSQL implementation of every storage port.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    schema: String,
    wakeups: Wakeups,
    tasks: Arc<BackgroundTasks>,
}

/// The NOTIFY task, and the LISTEN task once something waits for jobs; both are aborted
/// when the last clone of the store is dropped.
#[derive(Debug)]
struct BackgroundTasks {
    publisher: JoinHandle<()>,
    listener: OnceLock<JoinHandle<()>>,
}

impl Drop for BackgroundTasks {
    fn drop(&mut self) {
        self.publisher.abort();
        if let Some(listener) = self.listener.get() {
            listener.abort();
        }
    }
}

impl PostgresStore {
    /// A connection whose statements commit one by one (for single-statement writes).
    async fn autocommit_writer(&self) -> Result<sqlx::pool::PoolConnection<Postgres>, StoreError> {
        self.pool.acquire().await.map_err(store_error)
    }

    /// Connects to `url` with up to `max_connections`, creates `schema` if given (otherwise
    /// uses `public`) and applies migrations (serialised across processes by an advisory
    /// lock). It listens for enqueue notifications from the first
    /// [`JobQueue::wait_for_jobs`] on.
    pub async fn connect(
        url: &str,
        max_connections: u32,
        schema: Option<&str>,
    ) -> Result<Self, StoreError> {
        Self::connect_with_timeout(url, max_connections, schema, Duration::from_secs(30)).await
    }

    /// [`PostgresStore::connect`] waiting at most `timeout` for a connection.
    pub async fn connect_with_timeout(
        url: &str,
        max_connections: u32,
        schema: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let mut options = PgConnectOptions::from_str(url).map_err(store_error)?;
        let schema = schema.unwrap_or("public").to_owned();
        if !is_identifier(&schema) {
            return Err(StoreError::InvalidArgument(format!(
                "{schema:?} is not a schema name"
            )));
        }
        if schema != "public" {
            let mut conn = PgConnection::connect_with(&options)
                .await
                .map_err(store_error)?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS {schema}"
            )))
            .execute(&mut conn)
            .await
            .map_err(store_error)?;
            conn.close().await.map_err(store_error)?;
            options = options.options([("search_path", schema.as_str())]);
        }
        let pool = pool_options()
            .max_connections(max_connections.max(2))
            .acquire_timeout(timeout)
            .connect_with(options)
            .await
            .map_err(store_error)?;
        MIGRATOR.run(&pool).await.map_err(migrate_error)?;
        let remote = Arc::new(RemotePublisher::default());
        let wakeups = Wakeups::with_remote(remote.clone());
        let publisher = tokio::spawn(publish(pool.clone(), schema.clone(), remote));
        Ok(Self {
            pool,
            schema,
            wakeups,
            tasks: Arc::new(BackgroundTasks {
                publisher,
                listener: OnceLock::new(),
            }),
        })
    }

    /// Starts the LISTEN task unless it runs. Only stores that wait for jobs listen: every
    /// `NOTIFY` signals every listening backend of the database, so a process that never
    /// waits on this store (an API, or a worker whose jobs come from a broker) must not add
    /// a listener. Notifications sent before the listener is up are missed; waiters poll.
    fn listen_for_jobs(&self) {
        self.tasks.listener.get_or_init(|| {
            tokio::spawn(listen(
                self.pool.clone(),
                self.schema.clone(),
                self.wakeups.clone(),
            ))
        });
    }

    /// The schema this store works in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Drops `schema` and everything in it (for benchmarks and test clean-up).
    pub async fn drop_schema(url: &str, schema: &str) -> Result<(), StoreError> {
        if !is_identifier(schema) || schema == "public" {
            return Err(StoreError::InvalidArgument(format!(
                "will not drop schema {schema:?}"
            )));
        }
        let options = PgConnectOptions::from_str(url).map_err(store_error)?;
        let mut conn = PgConnection::connect_with(&options)
            .await
            .map_err(store_error)?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE"
        )))
        .execute(&mut conn)
        .await
        .map_err(store_error)?;
        conn.close().await.map_err(store_error)
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn transaction(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.pool.begin().await.map_err(store_error)
    }
}

/// A connection idle for longer than this is pinged before it is handed out.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(5);

/// Pool options for a busy PostgreSQL pool. sqlx pings every connection when it goes back
/// to the pool (that also flushes the rollback of a dropped transaction) and, by default,
/// again before handing it out: a second round trip on every acquire. Here only a
/// connection that sat idle for [`PING_IF_IDLE_FOR`] or longer is pinged before use (the
/// one a restarted server most likely closed); a busy one was checked when it was released
/// a moment ago. A connection that died in between fails its statement, which callers see
/// as [`StoreError::Unavailable`] (retried), and the pool replaces it.
pub fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
}

/// Sends `NOTIFY igl_jobs, '<schema>/<queue>'` for queues that got jobs, a few
/// milliseconds after their commits, coalescing bursts. A lost notification only delays a
/// consumer until its next poll.
async fn publish(pool: PgPool, schema: String, remote: Arc<RemotePublisher>) {
    loop {
        let queues = remote.next_batch().await;
        for queue in queues {
            let notified = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(JOBS_CHANNEL)
                .bind(format!("{schema}/{queue}"))
                .execute(&pool)
                .await;
            if let Err(error) = notified {
                tracing::debug!(error = %error, %queue, "job notification not sent");
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Forwards `NOTIFY igl_jobs` payloads of our schema to in-process waiters. Reconnects with
/// backoff; while disconnected, consumers fall back to polling.
async fn listen(pool: PgPool, schema: String, wakeups: Wakeups) {
    let prefix = format!("{schema}/");
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(error = %error, "job listener cannot connect, polling meanwhile");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        if let Err(error) = listener.listen(JOBS_CHANNEL).await {
            tracing::warn!(error = %error, "job listener cannot listen, polling meanwhile");
            tokio::time::sleep(backoff).await;
            continue;
        }
        backoff = Duration::from_millis(100);
        loop {
            match listener.recv().await {
                Ok(notification) => {
                    if let Some(queue) = notification.payload().strip_prefix(&prefix) {
                        wakeups.wake_local(queue);
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %error, "job listener lost its connection");
                    break;
                }
            }
        }
    }
}

#[async_trait]
impl MessageStore for PostgresStore {
    async fn get_message(&self, reference: &MessageRef) -> Result<Option<Message>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(store_error)?;
        select_message(&mut conn, reference, false).await
    }

    async fn list_messages(&self, filter: &MessageFilter) -> Result<MessagePage, StoreError> {
        let rows: Vec<MessageRow> = message_listing(filter, |query, prefix| {
            query
                .push("starts_with(predicate, ")
                .push_bind(prefix)
                .push(")");
        })
        .build_query_as()
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        message_page(rows, filter.effective_limit())
    }
}

async fn select_message(
    conn: &mut PgConnection,
    reference: &MessageRef,
    for_update: bool,
) -> Result<Option<Message>, StoreError> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE sender = $1 AND sender_ref = $2{lock}"
    );
    let row: Option<MessageRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(reference.sender.as_str())
        .bind(reference.sender_ref.as_str())
        .fetch_optional(conn)
        .await
        .map_err(store_error)?;
    row.map(MessageRow::into_message).transpose()
}

async fn insert_messages(
    conn: &mut PgConnection,
    messages: &[(NewMessage, MessageStatus)],
) -> Result<Vec<InsertOutcome>, StoreError> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "INSERT INTO messages (sender, sender_ref, receiver, subject, obj, predicate, status, \
         created_at, updated_at) \
         SELECT x->>0, x->>1, x->>2, x->>3, x->>4, x->>5, x->>6, $2, $2 \
         FROM jsonb_array_elements($1::jsonb) AS x \
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
             (SELECT x->>0, x->>1 FROM jsonb_array_elements($1::jsonb) AS x)"
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
    conn: &mut PgConnection,
    reference: &MessageRef,
    update: &MessageUpdate,
) -> Result<Updated, StoreError> {
    let before = select_message(conn, reference, true)
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
            "UPDATE messages SET status = $1, channel_id = $2, channel_txn_id = $3, \
             channel_status = $4, updated_at = $5 WHERE sender = $6 AND sender_ref = $7",
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

/// Inserts the jobs. Other processes are notified after commit (see [`RemotePublisher`]).
async fn enqueue(conn: &mut PgConnection, jobs: &[NewJob]) -> Result<(), StoreError> {
    if jobs.is_empty() {
        return Ok(());
    }
    let now = now_micros();
    sqlx::query(
        "INSERT INTO jobs (queue, payload, run_at, dedup_key, created_at) \
         SELECT x.q, x.p, x.r, x.k, $2 \
         FROM jsonb_to_recordset($1::jsonb) AS x(q text, p text, r bigint, k text) \
         ON CONFLICT DO NOTHING",
    )
    .bind(jobs_json(jobs, now))
    .bind(now)
    .execute(conn)
    .await
    .map_err(store_error)?;
    Ok(())
}

async fn ack(conn: &mut PgConnection, receipts: &[JobReceipt]) -> Result<u64, StoreError> {
    let mut removed = 0;
    for (token, ids) in receipts_by_token(receipts) {
        removed += sqlx::query("DELETE FROM jobs WHERE lease_token = $1 AND id = ANY($2)")
            .bind(token)
            .bind(ids)
            .execute(&mut *conn)
            .await
            .map_err(store_error)?
            .rows_affected();
    }
    Ok(removed)
}

async fn append_event(conn: &mut PgConnection, event: &NewEvent) -> Result<bool, StoreError> {
    let result = sqlx::query(
        "INSERT INTO events (id, kind, topic, payload, created_at) VALUES ($1, $2, $3, $4, $5) \
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
    conn: &mut PgConnection,
    events: &[NewEvent],
) -> Result<Vec<bool>, StoreError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let inserted: Vec<String> = sqlx::query_scalar(
        "INSERT INTO events (id, kind, topic, payload, created_at) \
         SELECT e.v->>'i', e.v->>'k', e.v->>'t', e.v->>'p', $2 \
         FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS e(v, n) ORDER BY e.n \
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
async fn any_subscription(conn: &mut PgConnection) -> Result<bool, StoreError> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM subscriptions)")
        .fetch_one(conn)
        .await
        .map_err(store_error)
}

async fn grant_object(
    conn: &mut PgConnection,
    object: &Multihash,
    reader: Jurisdiction,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO object_acl (object, reader, created_at) VALUES ($1, $2, $3) \
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

/// Deletes up to `$3` due jobs of queue `$1` (due at `$2`), skipping rows another
/// transaction holds, and returns them with the earliest due time of the queue's jobs that
/// were not due yet (`next_run`) and how many were due (`due`, the taken ones included:
/// rows another taker is deleting are still visible). The aggregate always yields one row,
/// so an empty take still tells when to look again: one statement per relay round.
const TAKE_JOBS: &str = "\
    WITH taken AS ( \
        DELETE FROM jobs WHERE id = ANY(ARRAY( \
            SELECT id FROM jobs WHERE queue = $1 AND run_at <= $2 \
            ORDER BY run_at, id LIMIT $3 FOR UPDATE SKIP LOCKED)) \
        RETURNING id, queue, payload, attempts, created_at, dedup_key, last_error, run_at) \
    SELECT n.next_run, n.due, t.id, t.queue, t.payload, t.attempts, t.created_at, \
           t.dedup_key, t.last_error \
    FROM (SELECT MIN(run_at) FILTER (WHERE run_at > $2) AS next_run, \
                 count(*) FILTER (WHERE run_at <= $2) AS due \
          FROM jobs WHERE queue = $1) AS n \
    LEFT JOIN taken AS t ON true \
    ORDER BY t.run_at, t.id";

/// One row of [`TAKE_JOBS`]: the job columns are NULL when nothing was taken.
#[derive(sqlx::FromRow)]
struct TakenRow {
    next_run: Option<i64>,
    due: i64,
    id: Option<i64>,
    queue: Option<String>,
    payload: Option<String>,
    attempts: Option<i64>,
    created_at: Option<i64>,
    dedup_key: Option<String>,
    last_error: Option<String>,
}

impl TakenRow {
    fn into_job(self) -> Option<JobRow> {
        Some(JobRow {
            id: self.id?,
            queue: self.queue?,
            payload: self.payload?,
            attempts: self.attempts?,
            created_at: self.created_at?,
            dedup_key: self.dedup_key,
            last_error: self.last_error,
        })
    }
}

/// Jobs deleted by [`TAKE_JOBS`] in a transaction that is still open.
struct PgTakenJobs {
    tx: Transaction<'static, Postgres>,
    jobs: Vec<ClaimedJob>,
    next_due_in: Option<Duration>,
    held_elsewhere: u64,
}

#[async_trait]
impl TakenJobs for PgTakenJobs {
    fn jobs(&self) -> &[ClaimedJob] {
        &self.jobs
    }

    fn next_due_in(&self) -> Option<Duration> {
        self.next_due_in
    }

    fn held_elsewhere(&self) -> u64 {
        self.held_elsewhere
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.commit().await.map_err(store_error)
    }
}

#[async_trait]
impl JobQueue for PostgresStore {
    async fn enqueue(&self, jobs: &[NewJob]) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(store_error)?;
        enqueue(&mut conn, jobs).await?;
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
        let mut rows: Vec<JobRow> = sqlx::query_as(
            "UPDATE jobs SET lease_token = $1, run_at = $2, attempts = attempts + 1 \
             WHERE id = ANY(ARRAY(SELECT id FROM jobs WHERE queue = $3 AND run_at <= $4 \
                                  ORDER BY run_at, id LIMIT $5 FOR UPDATE SKIP LOCKED)) \
             RETURNING id, queue, payload, attempts, created_at, dedup_key, last_error",
        )
        .bind(token)
        .bind(now.saturating_add(duration_micros(lease)))
        .bind(queue.as_str())
        .bind(now)
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.sort_by_key(|row| row.id);
        rows.into_iter()
            .map(|row| row.into_claimed(token))
            .collect()
    }

    async fn ack(&self, receipts: &[JobReceipt]) -> Result<u64, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(store_error)?;
        ack(&mut conn, receipts).await
    }

    async fn take(
        &self,
        queue: &QueueName,
        max: usize,
    ) -> Result<Option<Box<dyn TakenJobs>>, StoreError> {
        let now = now_micros();
        let mut tx = self.transaction().await?;
        let rows: Vec<TakenRow> = sqlx::query_as(TAKE_JOBS)
            .bind(queue.as_str())
            .bind(now)
            .bind(i64::try_from(max).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await
            .map_err(store_error)?;
        let next_due_in = rows
            .first()
            .and_then(|row| row.next_run)
            .map(|run_at| micros_until(run_at, now));
        let due = rows
            .first()
            .map_or(0, |row| u64::try_from(row.due).unwrap_or(0));
        let jobs = rows
            .into_iter()
            .filter_map(TakenRow::into_job)
            .map(|row| row.into_claimed(0))
            .collect::<Result<Vec<_>, _>>()?;
        let held_elsewhere = due.saturating_sub(jobs.len() as u64);
        Ok(Some(Box::new(PgTakenJobs {
            tx,
            jobs,
            next_due_in,
            held_elsewhere,
        })))
    }

    async fn retry(
        &self,
        receipt: JobReceipt,
        delay: Duration,
        error: &str,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE jobs SET lease_token = NULL, run_at = $3, last_error = $4 \
             WHERE id = $1 AND lease_token = $2",
        )
        .bind(receipt.id.0)
        .bind(receipt.lease_token)
        .bind(now_micros().saturating_add(duration_micros(delay)))
        .bind(truncate_error(error))
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(result.rows_affected() == 1)
    }

    async fn dead_letter(&self, receipt: JobReceipt, error: &str) -> Result<bool, StoreError> {
        let moved = sqlx::query(
            "WITH moved AS (DELETE FROM jobs WHERE id = $1 AND lease_token = $2 \
                            RETURNING queue, payload, attempts, dedup_key, created_at) \
             INSERT INTO dead_jobs (queue, payload, attempts, dedup_key, last_error, created_at, \
                                    failed_at) \
             SELECT queue, payload, attempts, dedup_key, $3, created_at, $4 FROM moved",
        )
        .bind(receipt.id.0)
        .bind(receipt.lease_token)
        .bind(truncate_error(error))
        .bind(now_micros())
        .execute(&self.pool)
        .await
        .map_err(store_error)?
        .rows_affected();
        Ok(moved == 1)
    }

    async fn extend_lease(&self, receipt: JobReceipt, lease: Duration) -> Result<bool, StoreError> {
        let result = sqlx::query("UPDATE jobs SET run_at = $3 WHERE id = $1 AND lease_token = $2")
            .bind(receipt.id.0)
            .bind(receipt.lease_token)
            .bind(now_micros().saturating_add(duration_micros(lease)))
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
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
             FROM dead_jobs WHERE ($1::text IS NULL OR queue = $1) AND id > $2 \
             ORDER BY id LIMIT $3",
        )
        .bind(queue.map(QueueName::as_str))
        .bind(after.unwrap_or(0))
        .bind(i64::from(limit.clamp(1, 1000)))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.into_iter().map(DeadJobRow::into_dead_letter).collect()
    }

    async fn replay_dead_letter(&self, id: i64) -> Result<bool, StoreError> {
        let mut tx = self.transaction().await?;
        let dead: Option<(String, String, Option<String>, i64)> = sqlx::query_as(
            "DELETE FROM dead_jobs WHERE id = $1 RETURNING queue, payload, dedup_key, created_at",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(store_error)?;
        let Some((queue, payload, dedup_key, created_at)) = dead else {
            return Ok(false);
        };
        sqlx::query(
            "INSERT INTO jobs (queue, payload, run_at, dedup_key, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(&queue)
        .bind(payload)
        .bind(now_micros())
        .bind(dedup_key)
        .bind(created_at)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        self.wakeups.wake(&queue);
        Ok(true)
    }

    async fn depth(&self, queue: &QueueName) -> Result<QueueDepth, StoreError> {
        let (ready, scheduled, in_flight, dead): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE run_at <= $2), \
                    count(*) FILTER (WHERE run_at > $2 AND lease_token IS NULL), \
                    count(*) FILTER (WHERE run_at > $2 AND lease_token IS NOT NULL), \
                    (SELECT count(*) FROM dead_jobs WHERE queue = $1) \
             FROM jobs WHERE queue = $1",
        )
        .bind(queue.as_str())
        .bind(now_micros())
        .fetch_one(&self.pool)
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
            sqlx::query_scalar("SELECT MIN(run_at) FROM jobs WHERE queue = $1")
                .bind(queue.as_str())
                .fetch_one(&self.pool)
                .await
                .map_err(store_error)?;
        Ok(earliest.map(|run_at| micros_until(run_at, now_micros())))
    }

    async fn wait_for_jobs(&self, queue: &QueueName, timeout: Duration) {
        self.listen_for_jobs();
        self.wakeups.wait(queue.as_str(), timeout).await;
    }
}

sql_read_ports!(PostgresStore, pool, super::postgres_placeholders);

#[async_trait]
impl Storage for PostgresStore {
    async fn begin(&self) -> Result<Box<dyn UnitOfWork>, StoreError> {
        let tx = self.transaction().await?;
        Ok(Box::new(PostgresUnitOfWork {
            tx,
            woken: Vec::new(),
            wakeups: self.wakeups.clone(),
            subscribed: None,
        }))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }
}

sql_subscription_store!(
    PostgresStore,
    autocommit_writer,
    pool,
    super::postgres_placeholders,
    "topic_key IN (SELECT jsonb_array_elements_text(?1::jsonb))",
    "id IN (SELECT jsonb_array_elements_text(?1::jsonb)::bigint)"
);

sql_unit_of_work!(
    PostgresUnitOfWork,
    sqlx::Transaction<'static, Postgres>,
    "A read-committed transaction; updated messages are locked with `FOR UPDATE`."
);
