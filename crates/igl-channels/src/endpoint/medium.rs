//! The medium: the `channel_messages` table both endpoints share, and the log of status
//! changes. Commit is confirmation: a posted row is `confirmed` as soon as it is visible.

use std::sync::Arc;

use igl_domain::{ChannelStatus, StatusChange, TransitionError};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::db::{Db, in_write_transaction, on_reader};
use super::wake::MediumSignal;

/// The five fields of a channel message, as posted, and the sender's reference when the
/// posting node forwarded it (an extension; omitted from JSON when absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct WireMessage {
    pub(crate) sender: String,
    pub(crate) receiver: String,
    pub(crate) subject: String,
    pub(crate) obj: String,
    pub(crate) predicate: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sender_ref: Option<String>,
}

/// A message to post, with the poster's idempotency key when it gave one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Post {
    pub(crate) message: WireMessage,
    /// Unique per sender: a second post with the same key is answered with the first
    /// post's message instead of storing another.
    pub(crate) idempotency_key: Option<String>,
}

/// The statuses of a message withdrawn from the channel: a post with its idempotency key
/// is a new post, not a repetition.
const WITHDRAWN: [&str; 2] = ["revoked", "undeliverable"];

/// What became of a post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PostOutcome {
    /// Stored as a new message with this id.
    Created(i64),
    /// The key was used before for the same content: the message already stored.
    Existing(i64),
    /// The key was used before for different content (message `id`): nothing stored.
    Conflict(i64),
}

/// A message on the medium.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredMessage {
    pub(crate) id: i64,
    pub(crate) message: WireMessage,
    pub(crate) status: String,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
}

#[derive(Debug, sqlx::FromRow)]
struct MessageRow {
    id: i64,
    sender: String,
    receiver: String,
    subject: String,
    obj: String,
    predicate: String,
    sender_ref: Option<String>,
    status: String,
    created_at: i64,
    updated_at: i64,
}

impl From<MessageRow> for StoredMessage {
    fn from(row: MessageRow) -> Self {
        Self {
            id: row.id,
            message: WireMessage {
                sender: row.sender,
                receiver: row.receiver,
                subject: row.subject,
                obj: row.obj,
                predicate: row.predicate,
                sender_ref: row.sender_ref,
            },
            status: row.status,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

const MESSAGE_COLUMNS: &str =
    "id, sender, receiver, subject, obj, predicate, sender_ref, status, created_at, updated_at";

/// A status change recorded on the medium.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct StatusChangeRow {
    pub(crate) seq: i64,
    pub(crate) message_id: i64,
    pub(crate) status: String,
}

/// Where a listing starts and how it is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListPosition {
    /// Ordered by id, ids greater than this.
    AfterId(i64),
    /// Ordered by (updated_at, id), after this pair.
    AfterUpdate { updated_at: i64, id: i64 },
}

/// A listing query.
#[derive(Debug, Clone)]
pub(crate) struct ListFilter {
    pub(crate) receiver: Option<String>,
    pub(crate) sender: Option<String>,
    pub(crate) status: Option<String>,
    pub(crate) position: ListPosition,
    pub(crate) limit: i64,
}

/// The result of a status update.
#[derive(Debug)]
pub(crate) enum StatusUpdate {
    NotFound,
    Refused(TransitionError),
    Done {
        message: StoredMessage,
        changed: bool,
    },
}

/// The medium of one endpoint: its database and the wake-up signal of its observers.
#[derive(Debug)]
pub(crate) struct Medium {
    pub(crate) db: Db,
    pub(crate) signal: MediumSignal,
}

impl Medium {
    /// Inserts `posts` as `confirmed` in one transaction holding the medium's write lock;
    /// returns what became of each, in input order. A post whose idempotency key the
    /// sender already used (earlier, or earlier in the same batch) is not inserted again:
    /// it is [`PostOutcome::Existing`] when the stored message has the same content, else
    /// [`PostOutcome::Conflict`]. Except when that message was withdrawn (`revoked`,
    /// `undeliverable`): then the post is the sender posting it again, and it is stored as
    /// a new message that takes over the key.
    pub(crate) async fn insert_batch(
        &self,
        posts: &[Post],
    ) -> Result<Vec<PostOutcome>, sqlx::Error> {
        let insert: Arc<str> = self
            .db
            .sql(
                "INSERT INTO channel_messages \
                 (sender, receiver, subject, obj, predicate, sender_ref, idempotency_key, \
                 status, created_at, updated_at) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, 'confirmed', t.now, t.now \
                 FROM (SELECT {now} AS now) t WHERE true \
                 ON CONFLICT (sender, idempotency_key) DO NOTHING RETURNING id",
            )
            .0
            .into();
        let existing: Arc<str> = format!(
            "SELECT {MESSAGE_COLUMNS} FROM channel_messages \
             WHERE sender = $1 AND idempotency_key = $2"
        )
        .into();
        let outcomes: Result<Vec<PostOutcome>, sqlx::Error> =
            in_write_transaction!(&self.db, |tx| {
                let mut outcomes = Vec::with_capacity(posts.len());
                for post in posts {
                    let message = &post.message;
                    let id: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(insert.clone()))
                        .bind(&message.sender)
                        .bind(&message.receiver)
                        .bind(&message.subject)
                        .bind(&message.obj)
                        .bind(&message.predicate)
                        .bind(&message.sender_ref)
                        .bind(&post.idempotency_key)
                        .fetch_optional(&mut *tx)
                        .await?;
                    let outcome = match id {
                        Some(id) => PostOutcome::Created(id),
                        None => {
                            let stored: MessageRow =
                                sqlx::query_as(sqlx::AssertSqlSafe(existing.clone()))
                                    .bind(&message.sender)
                                    .bind(&post.idempotency_key)
                                    .fetch_one(&mut *tx)
                                    .await?;
                            let stored = StoredMessage::from(stored);
                            if stored.message != *message {
                                PostOutcome::Conflict(stored.id)
                            } else if WITHDRAWN.contains(&stored.status.as_str()) {
                                // The post this key named was withdrawn: the sender posts
                                // the message again (a revocation re-post). The key moves
                                // to the new message.
                                sqlx::query(
                                    "UPDATE channel_messages SET idempotency_key = NULL \
                                     WHERE id = $1",
                                )
                                .bind(stored.id)
                                .execute(&mut *tx)
                                .await?;
                                let id: i64 =
                                    sqlx::query_scalar(sqlx::AssertSqlSafe(insert.clone()))
                                        .bind(&message.sender)
                                        .bind(&message.receiver)
                                        .bind(&message.subject)
                                        .bind(&message.obj)
                                        .bind(&message.predicate)
                                        .bind(&message.sender_ref)
                                        .bind(&post.idempotency_key)
                                        .fetch_one(&mut *tx)
                                        .await?;
                                PostOutcome::Created(id)
                            } else {
                                PostOutcome::Existing(stored.id)
                            }
                        }
                    };
                    outcomes.push(outcome);
                }
                Ok::<_, sqlx::Error>(outcomes)
            });
        let outcomes = outcomes?;
        if outcomes
            .iter()
            .any(|outcome| matches!(outcome, PostOutcome::Created(_)))
        {
            self.signal.committed();
        }
        Ok(outcomes)
    }

    /// The message with `id`.
    pub(crate) async fn get(&self, id: i64) -> Result<Option<StoredMessage>, sqlx::Error> {
        let sql = format!("SELECT {MESSAGE_COLUMNS} FROM channel_messages WHERE id = $1");
        let row: Option<MessageRow> = on_reader!(&self.db, |exec| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .fetch_optional(exec)
                .await?
        });
        Ok(row.map(StoredMessage::from))
    }

    /// Messages for `receiver` with ids above `after_id`, oldest first.
    pub(crate) async fn messages_for(
        &self,
        receiver: &str,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, sqlx::Error> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM channel_messages \
             WHERE receiver = $1 AND id > $2 ORDER BY id LIMIT $3"
        );
        let rows: Vec<MessageRow> = on_reader!(&self.db, |exec| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(receiver)
                .bind(after_id)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(exec)
                .await?
        });
        Ok(rows.into_iter().map(StoredMessage::from).collect())
    }

    /// A page of messages.
    pub(crate) async fn list(
        &self,
        filter: &ListFilter,
    ) -> Result<Vec<StoredMessage>, sqlx::Error> {
        let (position, order, first, second) = match filter.position {
            ListPosition::AfterId(id) => {
                ("id > $1 AND CAST($2 AS BIGINT) IS NOT NULL", "id", id, 0)
            }
            ListPosition::AfterUpdate { updated_at, id } => (
                "(updated_at > $1 OR (updated_at = $1 AND id > $2))",
                "updated_at, id",
                updated_at,
                id,
            ),
        };
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM channel_messages WHERE {position} \
               AND (CAST($3 AS TEXT) IS NULL OR receiver = $3) \
               AND (CAST($4 AS TEXT) IS NULL OR sender = $4) \
               AND (CAST($5 AS TEXT) IS NULL OR status = $5) \
             ORDER BY {order} LIMIT $6"
        );
        let rows: Vec<MessageRow> = on_reader!(&self.db, |exec| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(first)
                .bind(second)
                .bind(filter.receiver.as_deref())
                .bind(filter.sender.as_deref())
                .bind(filter.status.as_deref())
                .bind(filter.limit)
                .fetch_all(exec)
                .await?
        });
        Ok(rows.into_iter().map(StoredMessage::from).collect())
    }

    /// Status changes with `seq` above `after`, oldest first.
    pub(crate) async fn status_changes_after(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<StatusChangeRow>, sqlx::Error> {
        let rows: Vec<StatusChangeRow> = on_reader!(&self.db, |exec| {
            sqlx::query_as(
                "SELECT seq, message_id, status FROM channel_status_changes \
                 WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(after)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(exec)
            .await?
        });
        Ok(rows)
    }

    /// Changes the status of message `id` following [`ChannelStatus::transition`], and
    /// records the change for the observers.
    pub(crate) async fn update_status(
        &self,
        id: i64,
        to: ChannelStatus,
    ) -> Result<StatusUpdate, sqlx::Error> {
        let select = format!("SELECT {MESSAGE_COLUMNS} FROM channel_messages WHERE id = $1");
        let update = self.db.sql(
            "UPDATE channel_messages SET status = $1, updated_at = {now} WHERE id = $2 \
             RETURNING id, sender, receiver, subject, obj, predicate, sender_ref, status, \
             created_at, updated_at",
        );
        let record = self.db.sql(
            "INSERT INTO channel_status_changes (message_id, status, changed_at) \
             VALUES ($1, $2, {now})",
        );
        let outcome: Result<StatusUpdate, sqlx::Error> = in_write_transaction!(&self.db, |tx| {
            let current: Option<MessageRow> = sqlx::query_as(sqlx::AssertSqlSafe(select.clone()))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let outcome = match current {
                None => StatusUpdate::NotFound,
                Some(row) => {
                    let from = row.status.parse::<ChannelStatus>().map_err(|error| {
                        sqlx::Error::Decode(format!("channel_messages.status: {error}").into())
                    })?;
                    match from.transition(to) {
                        Err(refused) => StatusUpdate::Refused(refused),
                        Ok(StatusChange::Unchanged(_)) => StatusUpdate::Done {
                            message: row.into(),
                            changed: false,
                        },
                        Ok(StatusChange::Changed { .. }) => {
                            let updated: MessageRow =
                                sqlx::query_as(sqlx::AssertSqlSafe(update.0.clone()))
                                    .bind(to.as_str())
                                    .bind(id)
                                    .fetch_one(&mut *tx)
                                    .await?;
                            sqlx::query(sqlx::AssertSqlSafe(record.0.clone()))
                                .bind(id)
                                .bind(to.as_str())
                                .execute(&mut *tx)
                                .await?;
                            StatusUpdate::Done {
                                message: updated.into(),
                                changed: true,
                            }
                        }
                    }
                }
            };
            Ok::<_, sqlx::Error>(outcome)
        });
        let outcome = outcome?;
        if matches!(outcome, StatusUpdate::Done { changed: true, .. }) {
            self.signal.committed();
        }
        Ok(outcome)
    }
}

/// Why a post was not stored.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PostError {
    #[error("medium write failed")]
    Database(#[source] Arc<sqlx::Error>),
    #[error("the endpoint is shutting down")]
    Stopped,
}

struct Submission {
    post: Post,
    reply: oneshot::Sender<Result<PostOutcome, Arc<sqlx::Error>>>,
}

/// Group commit of posted messages: the posts that arrive while a batch commits form the
/// next batch, committed in one transaction; each post is answered after its commit.
#[derive(Debug, Clone)]
pub(crate) struct PostWriter {
    submissions: mpsc::Sender<Submission>,
}

impl std::fmt::Debug for Submission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submission")
            .field("post", &self.post)
            .finish_non_exhaustive()
    }
}

impl PostWriter {
    /// Starts the batching task; it ends when every handle is dropped.
    pub(crate) fn start(medium: Arc<Medium>, max_batch: usize) -> Self {
        let (submissions, receiver) = mpsc::channel(4 * max_batch.max(1));
        tokio::spawn(run_writer(medium, receiver, max_batch.max(1)));
        Self { submissions }
    }

    /// Stores `post`; returns what became of it once committed.
    pub(crate) async fn post(&self, post: Post) -> Result<PostOutcome, PostError> {
        let (reply, answer) = oneshot::channel();
        self.submissions
            .send(Submission { post, reply })
            .await
            .map_err(|_| PostError::Stopped)?;
        answer
            .await
            .map_err(|_| PostError::Stopped)?
            .map_err(PostError::Database)
    }
}

async fn run_writer(
    medium: Arc<Medium>,
    mut receiver: mpsc::Receiver<Submission>,
    max_batch: usize,
) {
    let mut batch = Vec::with_capacity(max_batch);
    loop {
        if receiver.recv_many(&mut batch, max_batch).await == 0 {
            return;
        }
        let posts: Vec<Post> = batch.iter().map(|s| s.post.clone()).collect();
        metrics::histogram!("igl_channel_post_batch_size").record(posts.len() as f64);
        match medium.insert_batch(&posts).await {
            Ok(outcomes) => {
                let created = outcomes
                    .iter()
                    .filter(|outcome| matches!(outcome, PostOutcome::Created(_)))
                    .count();
                metrics::counter!("igl_channel_messages_posted_total").increment(created as u64);
                let repeated = outcomes.len() - created;
                if repeated > 0 {
                    metrics::counter!("igl_channel_posts_repeated_total")
                        .increment(repeated as u64);
                }
                for (submission, outcome) in batch.drain(..).zip(outcomes) {
                    let _ = submission.reply.send(Ok(outcome));
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, size = posts.len(), "message batch not committed");
                let error = Arc::new(error);
                for submission in batch.drain(..) {
                    let _ = submission.reply.send(Err(error.clone()));
                }
            }
        }
    }
}
