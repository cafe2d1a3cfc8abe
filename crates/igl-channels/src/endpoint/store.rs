//! The endpoint's own tables: WebSub subscriptions and the observer cursors, keyed by the
//! endpoint's jurisdiction.

use super::db::{Db, on_reader, on_writer};

/// What a subscription was made through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubscriptionKind {
    /// `/messages/subscriptions/by_jurisdiction`: new messages for a jurisdiction.
    Jurisdiction,
    /// `/messages/subscriptions/by_id`: status changes of one message.
    Id,
}

impl SubscriptionKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Jurisdiction => "jurisdiction",
            Self::Id => "id",
        }
    }

    /// The path of the hub for this kind (for `Link: <…>; rel="hub"`).
    pub(crate) fn hub_path(self) -> &'static str {
        match self {
            Self::Jurisdiction => "/messages/subscriptions/by_jurisdiction",
            Self::Id => "/messages/subscriptions/by_id",
        }
    }

    fn parse(value: &str) -> Self {
        if value == "id" {
            Self::Id
        } else {
            Self::Jurisdiction
        }
    }
}

/// A stored subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subscription {
    pub(crate) id: i64,
    pub(crate) kind: SubscriptionKind,
    pub(crate) topic: String,
    pub(crate) callback: String,
    pub(crate) secret: Option<String>,
    pub(crate) expires_at: i64,
}

#[derive(Debug, sqlx::FromRow)]
struct SubscriptionRow {
    id: i64,
    kind: String,
    topic: String,
    callback: String,
    secret: Option<String>,
    expires_at: i64,
}

impl From<SubscriptionRow> for Subscription {
    fn from(row: SubscriptionRow) -> Self {
        Self {
            id: row.id,
            kind: SubscriptionKind::parse(&row.kind),
            topic: row.topic,
            callback: row.callback,
            secret: row.secret,
            expires_at: row.expires_at,
        }
    }
}

/// A subscription to create or renew.
#[derive(Debug, Clone)]
pub(crate) struct NewSubscription<'a> {
    pub(crate) kind: SubscriptionKind,
    pub(crate) topic: &'a str,
    pub(crate) topic_key: &'a str,
    pub(crate) callback: &'a str,
    pub(crate) secret: Option<&'a str>,
    pub(crate) lease_seconds: i64,
}

/// The observer stream of new messages (cursor: medium row id).
pub(crate) const MESSAGES_STREAM: &str = "messages";
/// The observer stream of status changes (cursor: status change seq).
pub(crate) const STATUS_STREAM: &str = "status";

/// Subscriptions and cursors of one endpoint.
#[derive(Debug)]
pub(crate) struct EndpointStore {
    pub(crate) db: Db,
    /// The endpoint key (its jurisdiction).
    pub(crate) endpoint: String,
}

const SUBSCRIPTION_COLUMNS: &str = "id, kind, topic, callback, secret, expires_at";

impl EndpointStore {
    /// Creates the subscription, or renews it (new lease and secret) when the same callback
    /// already subscribed to the same topic.
    pub(crate) async fn upsert_subscription(
        &self,
        subscription: &NewSubscription<'_>,
        now_micros: i64,
    ) -> Result<i64, sqlx::Error> {
        let expires_at =
            now_micros.saturating_add(subscription.lease_seconds.saturating_mul(1_000_000));
        let id: i64 = on_writer!(&self.db, |exec| {
            sqlx::query_scalar(
                "INSERT INTO channel_subscriptions (endpoint, kind, topic, topic_key, callback, \
                 secret, lease_seconds, expires_at, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) \
                 ON CONFLICT (endpoint, topic_key, callback) DO UPDATE SET \
                 kind = excluded.kind, topic = excluded.topic, secret = excluded.secret, \
                 lease_seconds = excluded.lease_seconds, expires_at = excluded.expires_at, \
                 updated_at = excluded.updated_at \
                 RETURNING id",
            )
            .bind(&self.endpoint)
            .bind(subscription.kind.as_str())
            .bind(subscription.topic)
            .bind(subscription.topic_key)
            .bind(subscription.callback)
            .bind(subscription.secret)
            .bind(subscription.lease_seconds)
            .bind(expires_at)
            .bind(now_micros)
            .fetch_one(exec)
            .await?
        });
        Ok(id)
    }

    /// Whether `callback` is subscribed to the topic with `topic_key` (expired or not).
    pub(crate) async fn subscription_exists(
        &self,
        topic_key: &str,
        callback: &str,
    ) -> Result<bool, sqlx::Error> {
        let found: Option<i64> = on_reader!(&self.db, |exec| {
            sqlx::query_scalar(
                "SELECT id FROM channel_subscriptions \
                 WHERE endpoint = $1 AND topic_key = $2 AND callback = $3",
            )
            .bind(&self.endpoint)
            .bind(topic_key)
            .bind(callback)
            .fetch_optional(exec)
            .await?
        });
        Ok(found.is_some())
    }

    /// Removes the subscription of `callback` to `topic_key`; returns whether there was one.
    pub(crate) async fn delete_subscription(
        &self,
        topic_key: &str,
        callback: &str,
    ) -> Result<bool, sqlx::Error> {
        let deleted = on_writer!(&self.db, |exec| {
            sqlx::query(
                "DELETE FROM channel_subscriptions \
                 WHERE endpoint = $1 AND topic_key = $2 AND callback = $3",
            )
            .bind(&self.endpoint)
            .bind(topic_key)
            .bind(callback)
            .execute(exec)
            .await?
            .rows_affected()
        });
        Ok(deleted > 0)
    }

    /// Removes the subscription `id` (a callback answered 410 Gone).
    pub(crate) async fn delete_subscription_by_id(&self, id: i64) -> Result<bool, sqlx::Error> {
        let deleted = on_writer!(&self.db, |exec| {
            sqlx::query("DELETE FROM channel_subscriptions WHERE endpoint = $1 AND id = $2")
                .bind(&self.endpoint)
                .bind(id)
                .execute(exec)
                .await?
                .rows_affected()
        });
        Ok(deleted > 0)
    }

    /// Removes subscriptions whose lease ended before `now_micros`; returns how many.
    pub(crate) async fn delete_expired(&self, now_micros: i64) -> Result<u64, sqlx::Error> {
        let deleted = on_writer!(&self.db, |exec| {
            sqlx::query(
                "DELETE FROM channel_subscriptions WHERE endpoint = $1 AND expires_at <= $2",
            )
            .bind(&self.endpoint)
            .bind(now_micros)
            .execute(exec)
            .await?
            .rows_affected()
        });
        Ok(deleted)
    }

    /// The subscription `id`, if it still exists.
    pub(crate) async fn subscription(&self, id: i64) -> Result<Option<Subscription>, sqlx::Error> {
        let sql = format!(
            "SELECT {SUBSCRIPTION_COLUMNS} FROM channel_subscriptions WHERE endpoint = $1 AND id = $2"
        );
        let row: Option<SubscriptionRow> = on_reader!(&self.db, |exec| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(&self.endpoint)
                .bind(id)
                .fetch_optional(exec)
                .await?
        });
        Ok(row.map(Subscription::from))
    }

    /// Unexpired subscriptions whose key is one of `keys` (the keys of an event topic), one
    /// per callback URL (the reference delivers once per callback per event).
    pub(crate) async fn matching(
        &self,
        keys: &[String],
        now_micros: i64,
    ) -> Result<Vec<Subscription>, sqlx::Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = (0..keys.len()).map(|i| format!("${}", i + 3)).collect();
        let sql = format!(
            "SELECT {SUBSCRIPTION_COLUMNS} FROM channel_subscriptions \
             WHERE endpoint = $1 AND expires_at > $2 AND topic_key IN ({}) \
             ORDER BY length(topic_key) DESC, id",
            placeholders.join(", ")
        );
        let rows: Vec<SubscriptionRow> = on_reader!(&self.db, |exec| {
            let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(&self.endpoint)
                .bind(now_micros);
            for key in keys {
                query = query.bind(key);
            }
            query.fetch_all(exec).await?
        });
        // One delivery per callback: keep the most specific subscription of each callback.
        let mut seen = std::collections::HashSet::new();
        Ok(rows
            .into_iter()
            .filter(|row| seen.insert(row.callback.clone()))
            .map(Subscription::from)
            .collect())
    }

    /// The position of `stream` (0 when it never advanced).
    pub(crate) async fn cursor(&self, stream: &str) -> Result<i64, sqlx::Error> {
        let position: Option<i64> = on_reader!(&self.db, |exec| {
            sqlx::query_scalar(
                "SELECT position FROM channel_cursors WHERE endpoint = $1 AND stream = $2",
            )
            .bind(&self.endpoint)
            .bind(stream)
            .fetch_optional(exec)
            .await?
        });
        Ok(position.unwrap_or(0))
    }

    /// Moves `stream` forward to `position` (never backwards).
    pub(crate) async fn advance_cursor(
        &self,
        stream: &str,
        position: i64,
        now_micros: i64,
    ) -> Result<(), sqlx::Error> {
        on_writer!(&self.db, |exec| {
            sqlx::query(
                "INSERT INTO channel_cursors (endpoint, stream, position, updated_at) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (endpoint, stream) DO UPDATE SET \
                 position = CASE WHEN excluded.position > channel_cursors.position \
                            THEN excluded.position ELSE channel_cursors.position END, \
                 updated_at = excluded.updated_at",
            )
            .bind(&self.endpoint)
            .bind(stream)
            .bind(position)
            .bind(now_micros)
            .execute(exec)
            .await
            .map(|_| ())?
        });
        Ok(())
    }
}
