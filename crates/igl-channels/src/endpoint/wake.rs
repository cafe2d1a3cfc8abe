//! Wake-ups for observers when the medium changes, so that an announcement does not wait
//! for the next poll:
//!
//! - within one process, every endpoint opened on the same medium (the same SQLite file, or
//!   the same PostgreSQL database and schema) shares one [`Notify`], found in a process-wide
//!   registry keyed by the medium's identity; a commit wakes its observers at once;
//! - across processes on PostgreSQL, a commit is followed by `NOTIFY igl_channel_medium,
//!   '<schema>'` (sent after the commit, outside the writing transaction, coalescing bursts)
//!   and each endpoint LISTENs for it;
//! - across processes on SQLite there is no signal: the observers' short poll covers it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::db::Db;

/// The PostgreSQL notification channel for medium commits; the payload is the schema.
const MEDIUM_CHANNEL: &str = "igl_channel_medium";

static SIGNALS: LazyLock<Mutex<HashMap<String, Weak<Notify>>>> = LazyLock::new(Mutex::default);

/// The wake-up shared by every endpoint of this process on the medium named `identity`.
fn shared_notify(identity: &str) -> Arc<Notify> {
    let mut signals = SIGNALS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(notify) = signals.get(identity).and_then(Weak::upgrade) {
        return notify;
    }
    signals.retain(|_, weak| weak.strong_count() > 0);
    let notify = Arc::new(Notify::new());
    signals.insert(identity.to_owned(), Arc::downgrade(&notify));
    notify
}

/// Wakes and is woken by the writers and observers of one medium.
#[derive(Debug)]
pub(crate) struct MediumSignal {
    notify: Arc<Notify>,
    remote: Option<Arc<RemotePublisher>>,
    tasks: Vec<JoinHandle<()>>,
}

impl MediumSignal {
    /// The signal of the medium `db`; on PostgreSQL also starts the LISTEN and NOTIFY tasks
    /// (stopped when the signal is dropped).
    pub(crate) fn start(db: &Db) -> Self {
        let notify = shared_notify(&db.identity());
        match db {
            Db::Sqlite(_) => Self {
                notify,
                remote: None,
                tasks: Vec::new(),
            },
            Db::Postgres(postgres) => {
                let remote = Arc::new(RemotePublisher::default());
                let listener = tokio::spawn(listen(
                    postgres.pool.clone(),
                    postgres.schema.clone(),
                    notify.clone(),
                ));
                let publisher = tokio::spawn(publish(
                    postgres.pool.clone(),
                    postgres.schema.clone(),
                    remote.clone(),
                ));
                Self {
                    notify,
                    remote: Some(remote),
                    tasks: vec![listener, publisher],
                }
            }
        }
    }

    /// Tells the observers (here and, on PostgreSQL, in other processes) that rows were
    /// committed. Call after the commit.
    pub(crate) fn committed(&self) {
        self.notify.notify_waiters();
        if let Some(remote) = &self.remote {
            remote.request();
        }
    }

    /// The notify to wait on (create the `notified()` future and `enable()` it before
    /// looking for rows, so that a commit in between is not missed).
    pub(crate) fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for MediumSignal {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A pending cross-process notification, coalescing bursts of commits into one NOTIFY.
#[derive(Debug, Default)]
struct RemotePublisher {
    pending: AtomicBool,
    signal: Notify,
}

impl RemotePublisher {
    fn request(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            self.signal.notify_one();
        }
    }
}

async fn publish(pool: PgPool, schema: String, remote: Arc<RemotePublisher>) {
    loop {
        remote.signal.notified().await;
        if !remote.pending.swap(false, Ordering::AcqRel) {
            continue;
        }
        let sent = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(MEDIUM_CHANNEL)
            .bind(&schema)
            .execute(&pool)
            .await;
        if let Err(error) = sent {
            tracing::debug!(error = %error, "medium notification not sent");
        }
        // Gather the commits of the next millisecond into the next notification.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn listen(pool: PgPool, schema: String, notify: Arc<Notify>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(error = %error, "medium listener cannot connect, polling meanwhile");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        if let Err(error) = listener.listen(MEDIUM_CHANNEL).await {
            tracing::warn!(error = %error, "medium listener cannot listen, polling meanwhile");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
            continue;
        }
        backoff = Duration::from_millis(100);
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    if notification.payload() == schema {
                        notify.notify_waiters();
                    }
                }
                Ok(None) => {
                    // Reconnected: notifications may have been lost meanwhile.
                    notify.notify_waiters();
                }
                Err(error) => {
                    tracing::warn!(error = %error, "medium listener lost its connection");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_notify_per_medium_while_in_use() {
        let first = shared_notify("sqlite:/tmp/a.db");
        let second = shared_notify("sqlite:/tmp/a.db");
        let other = shared_notify("sqlite:/tmp/b.db");
        assert!(Arc::ptr_eq(&first, &second));
        assert!(!Arc::ptr_eq(&first, &other));
    }
}
