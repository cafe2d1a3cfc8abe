//! Group commit for the single SQLite writer connection.
//!
//! SQLite has one writer, and with `synchronous = FULL` every `COMMIT` costs an fsync
//! (0.1–0.3 ms here), so one transaction per job caps a node at a few thousand write
//! transactions per second however small they are — and a message crosses about ten of
//! them on its way from one node to another. [`GroupWriter`] keeps the transactions of
//! concurrent callers ("members") apart while sharing the fsync:
//!
//! - a member gets the writer connection for itself (callers queue in FIFO order, as they
//!   did for the one-connection pool before) and works inside its own `SAVEPOINT` of the
//!   group's `BEGIN IMMEDIATE` transaction (the first member, alone in it, needs none),
//!   seeing the effects of the members before it;
//! - [`WriteTx::commit`] releases the savepoint and waits: the group's transaction commits
//!   when no other caller is queued for the writer, or when the group is
//!   [`MAX_MEMBERS`] large or [`MAX_AGE`] old. Only then does every member's `commit`
//!   return `Ok` — a member is never told its work is durable before it is;
//! - a member dropped without committing (an error, a cancelled future) has its savepoint
//!   rolled back; the others are not affected;
//! - when the group's `COMMIT` fails, every member of the group gets the error (their
//!   callers retry, exactly as if their own transaction had failed).
//!
//! Liveness does not depend on the next caller: a member whose group has not committed
//! within [`BACKSTOP`] takes the writer and commits the group itself (this covers a queued
//! caller that gave up waiting before its turn).

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use igl_core::StoreError;
use sqlx::{Executor as _, SqliteConnection};
use tokio::sync::{Mutex, OwnedMutexGuard, oneshot};

use super::store_error;

/// The most members one group commits together.
pub(crate) const MAX_MEMBERS: usize = 256;

/// The longest a group stays open while callers keep queueing.
pub(crate) const MAX_AGE: Duration = Duration::from_millis(5);

/// How long a committed member waits for its group before committing it itself.
pub(crate) const BACKSTOP: Duration = Duration::from_millis(20);

/// The single writer connection, shared by group commit.
#[derive(Clone)]
pub(crate) struct GroupWriter {
    state: Arc<Mutex<State>>,
    /// Callers waiting for the writer (a holder that sees some leaves the commit to them).
    queued: Arc<AtomicUsize>,
}

impl fmt::Debug for GroupWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupWriter")
            .field("queued", &self.queued.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Why a group's transaction failed, as seen by the members that did not run the failing
/// statement themselves.
#[derive(Debug, thiserror::Error)]
#[error("the group transaction this write belonged to failed: {0}")]
struct GroupFailed(String);

type MemberResult = Result<(), Arc<StoreError>>;

struct State {
    conn: SqliteConnection,
    /// Whether the group's transaction is open.
    open: bool,
    opened_at: Instant,
    /// Members whose savepoints were released, waiting for the group's commit.
    members: Vec<oneshot::Sender<MemberResult>>,
    /// What a member that left without finishing left to undo, before anyone else writes.
    dirty: Undo,
}

/// How the writes of a member are undone when it ends without committing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Undo {
    /// Nothing to undo: a single statement is atomic by itself (or nothing was written).
    Nothing,
    /// Roll back to the member's savepoint.
    Savepoint,
    /// Roll back the group's transaction, which holds only this member.
    Transaction,
}

/// Decrements the queued count when its owner stops waiting, whether it got the writer or
/// was cancelled.
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl GroupWriter {
    /// Takes over `conn` as the writer.
    pub(crate) fn new(conn: SqliteConnection) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                conn,
                open: false,
                opened_at: Instant::now(),
                members: Vec::new(),
                dirty: Undo::Nothing,
            })),
            queued: Arc::new(AtomicUsize::new(0)),
        }
    }

    async fn lock(&self) -> OwnedMutexGuard<State> {
        self.queued.fetch_add(1, Ordering::SeqCst);
        let _queued = Queued(&self.queued);
        Arc::clone(&self.state).lock_owned().await
    }

    /// Starts a member transaction: waits for the writer, then opens a savepoint (and the
    /// group's transaction if none is open).
    pub(crate) async fn begin(&self) -> Result<WriteTx, StoreError> {
        self.start(true).await
    }

    /// Starts a member that runs exactly one statement. It needs no savepoint: SQLite undoes
    /// a failed statement by itself and leaves the group's transaction as it was. Dropping
    /// such a member after its statement succeeded does not undo the statement (it commits
    /// with the group), so use it only where that is harmless: a cancelled single write.
    pub(crate) async fn begin_statement(&self) -> Result<WriteTx, StoreError> {
        self.start(false).await
    }

    async fn start(&self, savepoint: bool) -> Result<WriteTx, StoreError> {
        let mut state = self.lock().await;
        state.settle().await;
        let undo = if !state.open {
            state
                .conn
                .execute("BEGIN IMMEDIATE")
                .await
                .map_err(store_error)?;
            state.open = true;
            state.opened_at = Instant::now();
            // The first member of a group is alone in the transaction: undoing it is
            // rolling the transaction back, so it needs no savepoint of its own.
            if savepoint {
                Undo::Transaction
            } else {
                Undo::Nothing
            }
        } else if savepoint {
            if let Err(error) = state.conn.execute("SAVEPOINT member").await {
                let error = Arc::new(store_error(error));
                state.fail_group(&error).await;
                return Err(share(&error));
            }
            Undo::Savepoint
        } else {
            Undo::Nothing
        };
        Ok(WriteTx {
            state: Some(state),
            writer: self.clone(),
            undo,
        })
    }

    /// Closes the writer connection, committing a group in progress first.
    pub(crate) async fn close(&self) {
        let mut state = self.lock().await;
        state.flush().await;
        // Closing a connection that is already broken has nothing left to report.
        let _ = state.conn.execute("PRAGMA optimize").await;
    }
}

impl State {
    /// Undoes the writes of a member that left without finishing.
    async fn settle(&mut self) {
        match std::mem::replace(&mut self.dirty, Undo::Nothing) {
            Undo::Nothing => {}
            Undo::Savepoint => {
                let rolled_back = match self.conn.execute("ROLLBACK TO member").await {
                    Ok(_) => self.conn.execute("RELEASE member").await,
                    Err(error) => Err(error),
                };
                if let Err(error) = rolled_back {
                    let error = Arc::new(store_error(error));
                    self.fail_group(&error).await;
                }
            }
            Undo::Transaction => {
                // The member was alone in the group: nobody else has anything to lose.
                let _ = self.conn.execute("ROLLBACK").await;
                self.open = false;
            }
        }
    }

    /// Commits the group's transaction and answers its members.
    async fn flush(&mut self) {
        self.settle().await;
        if !self.open {
            return;
        }
        match self.conn.execute("COMMIT").await {
            Ok(_) => {
                self.open = false;
                for member in self.members.drain(..) {
                    // A member that stopped waiting (cancelled) needs no answer.
                    let _ = member.send(Ok(()));
                }
            }
            Err(error) => {
                let error = Arc::new(store_error(error));
                tracing::warn!(error = %error, members = self.members.len(), "group commit failed");
                self.fail_group(&error).await;
            }
        }
    }

    /// Rolls the group's transaction back and gives `error` to every member.
    async fn fail_group(&mut self, error: &Arc<StoreError>) {
        // After some errors SQLite has already rolled back; then there is nothing to undo.
        let _ = self.conn.execute("ROLLBACK").await;
        self.open = false;
        self.dirty = Undo::Nothing;
        for member in self.members.drain(..) {
            let _ = member.send(Err(Arc::clone(error)));
        }
    }

    fn should_flush(&self, queued: usize) -> bool {
        queued == 0 || self.members.len() >= MAX_MEMBERS || self.opened_at.elapsed() >= MAX_AGE
    }
}

/// A member's view of an error it did not cause itself (or did, as an `Arc`).
fn share(error: &Arc<StoreError>) -> StoreError {
    let mut chain = error.to_string();
    let mut source = std::error::Error::source(error.as_ref());
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    let failed = GroupFailed(chain);
    if error.is_transient() {
        StoreError::Unavailable(Box::new(failed))
    } else {
        StoreError::Backend(Box::new(failed))
    }
}

/// One member transaction on the writer connection (dereferences to it).
///
/// Dropping it without [`WriteTx::commit`] rolls its writes back.
pub(crate) struct WriteTx {
    state: Option<OwnedMutexGuard<State>>,
    writer: GroupWriter,
    /// How to undo this member's writes if it ends without committing.
    undo: Undo,
}

impl fmt::Debug for WriteTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteTx").finish_non_exhaustive()
    }
}

impl WriteTx {
    fn state(&mut self) -> &mut State {
        self.state
            .as_mut()
            .expect("a write transaction holds the writer until it ends")
    }

    /// Commits this member's writes: returns once the group they belong to is durably
    /// committed, or with the error that failed the group (nothing of this member is then
    /// committed).
    pub(crate) async fn commit(mut self) -> Result<(), StoreError> {
        let mut state = self.state.take().expect("a write transaction commits once");
        if self.undo == Undo::Savepoint
            && let Err(error) = state.conn.execute("RELEASE member").await
        {
            let error = Arc::new(store_error(error));
            state.fail_group(&error).await;
            return Err(share(&error));
        }
        let (sender, mut receiver) = oneshot::channel();
        state.members.push(sender);
        if state.should_flush(self.writer.queued.load(Ordering::SeqCst)) {
            state.flush().await;
        }
        drop(state);
        loop {
            tokio::select! {
                answer = &mut receiver => {
                    return match answer {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(error)) => Err(share(&error)),
                        Err(_) => Err(StoreError::Backend(Box::new(GroupFailed(
                            "the writer stopped before committing".to_owned(),
                        )))),
                    };
                }
                () = tokio::time::sleep(BACKSTOP) => {
                    // Nobody committed the group in time: do it ourselves. The sender is
                    // found by identity in the pending members.
                    self.writer.commit_pending().await;
                }
            }
        }
    }
}

impl GroupWriter {
    /// Commits whatever group is pending (the backstop of [`WriteTx::commit`]).
    async fn commit_pending(&self) {
        let mut state = self.lock().await;
        if !state.members.is_empty() {
            state.flush().await;
        }
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        let Some(mut state) = self.state.take() else {
            return;
        };
        // Left without commit: roll the savepoint back before anyone else writes. Async
        // work cannot run here, so a task does it while still holding the writer; without
        // a runtime the next holder does it.
        state.dirty = self.undo;
        let queued = Arc::clone(&self.writer.queued);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let mut state = state;
                state.settle().await;
                if state.should_flush(queued.load(Ordering::SeqCst)) {
                    state.flush().await;
                }
            });
        }
    }
}

impl super::WriteTransaction for WriteTx {
    async fn commit_write(self) -> Result<(), StoreError> {
        self.commit().await
    }
}

impl Deref for WriteTx {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        &self
            .state
            .as_ref()
            .expect("a write transaction holds the writer")
            .conn
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.state().conn
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use igl_core::{JobQueue as _, NewJob, QueueName, Storage as _};

    use crate::SqliteStore;

    const QUEUE: QueueName = QueueName::from_static("group-test");

    fn job(n: usize) -> NewJob {
        NewJob::new(QUEUE, serde_json::json!({ "n": n }))
    }

    async fn store() -> (tempfile::TempDir, Arc<SqliteStore>) {
        let directory = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&directory.path().join("group.db"))
            .await
            .expect("open store");
        (directory, Arc::new(store))
    }

    /// Concurrent members share groups; each committed member is visible to a separate
    /// reader connection as soon as its commit returns, and no dropped member ever is.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn committed_members_are_durable_when_commit_returns_and_dropped_ones_vanish() {
        let (_directory, store) = store().await;
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..200 {
            let store = Arc::clone(&store);
            tasks.spawn(async move {
                let mut unit = store.begin().await.expect("begin");
                unit.enqueue(&[job(n)]).await.expect("enqueue");
                if n % 3 == 0 {
                    drop(unit);
                    return false;
                }
                unit.commit().await.expect("commit");
                // Read through the reader pool: only committed data is visible there.
                let depth = store.depth(&QUEUE).await.expect("depth");
                assert!(depth.ready >= 1, "a committed member is visible at once");
                true
            });
        }
        let mut committed = 0;
        while let Some(done) = tasks.join_next().await {
            if done.expect("task") {
                committed += 1;
            }
        }
        let depth = store.depth(&QUEUE).await.expect("depth");
        assert_eq!(depth.ready, committed);
        assert_eq!(committed, 200 - 67);
    }

    /// A member sees the writes of the members before it in its group, and a member that
    /// fails a statement and is dropped does not take the others down with it.
    #[tokio::test]
    async fn a_failed_member_leaves_its_group_intact() {
        let (_directory, store) = store().await;
        let mut first = store.begin().await.expect("begin");
        first.enqueue(&[job(1)]).await.expect("enqueue");
        first.commit().await.expect("commit");

        let mut failing = store.begin().await.expect("begin");
        failing.enqueue(&[job(2)]).await.expect("enqueue");
        drop(failing);

        store
            .enqueue(&[job(3)])
            .await
            .expect("enqueue outside a unit");
        let claimed = store
            .claim(&QUEUE, 10, std::time::Duration::from_secs(30))
            .await
            .expect("claim");
        let numbers: Vec<u64> = claimed
            .iter()
            .map(|job| job.payload["n"].as_u64().expect("n"))
            .collect();
        assert_eq!(numbers, vec![1, 3]);
    }

    /// A member whose group nobody else commits is committed by its own backstop, so
    /// `commit` always returns.
    #[tokio::test]
    async fn a_lone_member_commits_at_once() {
        let (_directory, store) = store().await;
        for n in 0..20 {
            let mut unit = store.begin().await.expect("begin");
            unit.enqueue(&[job(n)]).await.expect("enqueue");
            unit.commit().await.expect("commit");
        }
        assert_eq!(store.depth(&QUEUE).await.expect("depth").ready, 20);
    }
}
