//! The worker runtime against the real SQLite queue: every test opens a fresh database in
//! its own temporary directory. No sleeps except bounded polling on conditions.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use igl_core::{
    ClaimedJob, DeadLetter, JobId, JobQueue, JobReceipt, NewJob, QueueDepth, QueueName, Storage,
    StoreError,
};
use igl_store::SqliteStore;
use igl_workers::{
    DrainReport, Handled, JobError, JobHandler, RetryPolicy, WorkerConfig, WorkerError, WorkerSet,
    drain, run_worker,
};
use serde_json::json;
use tempfile::TempDir;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const QUEUE: QueueName = QueueName::from_static("test.jobs");
const OTHER_QUEUE: QueueName = QueueName::from_static("test.other");

/// The longest any condition in these tests is waited for.
const DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// helpers

/// A fresh SQLite database; the directory lives as long as the value.
struct TestDb {
    _directory: TempDir,
    store: Arc<SqliteStore>,
}

impl TestDb {
    async fn new() -> Self {
        let directory = tempfile::tempdir().expect("temporary directory");
        let store = SqliteStore::open(&directory.path().join("igl.db"))
            .await
            .expect("open db");
        Self {
            _directory: directory,
            store: Arc::new(store),
        }
    }

    fn queue(&self) -> Arc<dyn JobQueue> {
        self.store.clone()
    }

    async fn enqueue(&self, queue: &QueueName, count: usize) {
        let jobs: Vec<NewJob> = (0..count)
            .map(|n| NewJob::new(queue.clone(), json!({"type": "test.v1", "n": n})))
            .collect();
        self.store.enqueue(&jobs).await.expect("enqueue");
    }

    async fn depth(&self, queue: &QueueName) -> QueueDepth {
        self.store.depth(queue).await.expect("depth")
    }

    /// Checks, every 50 ms for `period`, that another consumer can claim nothing of
    /// `QUEUE` (the worker's leases hold).
    async fn assert_nothing_claimable_for(&self, period: Duration, failure: &str) {
        let until = Instant::now() + period;
        while Instant::now() < until {
            let stolen = self
                .store
                .claim(&QUEUE, 1, Duration::from_secs(30))
                .await
                .unwrap();
            assert!(stolen.is_empty(), "{failure}: {stolen:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn config() -> WorkerConfig {
    WorkerConfig {
        queue: QUEUE,
        concurrency: 4,
        claim_batch: 16,
        lease: Duration::from_secs(30),
        idle_poll: Duration::from_millis(50),
        job_timeout: Duration::from_secs(20),
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
        },
    }
}

const EMPTY: QueueDepth = QueueDepth {
    ready: 0,
    scheduled: 0,
    in_flight: 0,
    dead: 0,
};

/// Polls `condition` every 10 ms until it holds; panics after [`DEADLINE`].
async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Deadline::start();
    while !condition().await {
        deadline.wait(what).await;
    }
}

/// For polling loops that need mutable state: `deadline.wait(what)` panics once
/// [`DEADLINE`] has passed, and otherwise sleeps 10 ms.
struct Deadline(Instant);

impl Deadline {
    fn start() -> Self {
        Self(Instant::now() + DEADLINE)
    }

    async fn wait(&self, what: &str) {
        assert!(Instant::now() < self.0, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One call of a handler.
#[derive(Debug, Clone)]
struct Call {
    id: JobId,
    attempt: u32,
    last_error: Option<String>,
    at: Instant,
}

type Behaviour = dyn Fn(&ClaimedJob) -> Result<Handled, JobError> + Send + Sync;

/// A handler that records every call and answers with a closure.
struct Scripted {
    calls: Mutex<Vec<Call>>,
    behaviour: Box<Behaviour>,
}

impl Scripted {
    fn new(
        behaviour: impl Fn(&ClaimedJob) -> Result<Handled, JobError> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            calls: Mutex::new(Vec::new()),
            behaviour: Box::new(behaviour),
        })
    }

    fn done() -> Arc<Self> {
        Self::new(|_| Ok(Handled::Done))
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn call_count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    /// How many times each job id was handled.
    fn calls_per_job(&self) -> HashMap<JobId, usize> {
        let mut counts = HashMap::new();
        for call in self.calls.lock().unwrap().iter() {
            *counts.entry(call.id).or_default() += 1;
        }
        counts
    }
}

#[async_trait]
impl JobHandler for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }

    async fn handle(&self, job: &ClaimedJob) -> Result<Handled, JobError> {
        self.calls.lock().unwrap().push(Call {
            id: job.id,
            attempt: job.attempt,
            last_error: job.last_error.clone(),
            at: Instant::now(),
        });
        (self.behaviour)(job)
    }
}

fn as_handler(handler: &Arc<Scripted>) -> Arc<dyn JobHandler> {
    handler.clone()
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TestError(String);

fn test_error(message: impl Into<String>) -> TestError {
    TestError(message.into())
}

// ---------------------------------------------------------------------------------------
// tests

#[tokio::test]
async fn drain_handles_every_job_once_and_acks_it() {
    let db = TestDb::new().await;
    db.enqueue(&QUEUE, 100).await;
    let handler = Scripted::done();

    let report = drain(&db.queue(), &as_handler(&handler), &config())
        .await
        .unwrap();

    assert_eq!(
        report,
        DrainReport {
            claimed: 100,
            done: 100,
            ..DrainReport::default()
        }
    );
    let per_job = handler.calls_per_job();
    assert_eq!(per_job.len(), 100);
    assert!(per_job.values().all(|&count| count == 1));
    assert!(handler.calls().iter().all(|call| call.attempt == 1));
    assert_eq!(db.depth(&QUEUE).await, EMPTY);
    // Nothing left: a second drain claims nothing.
    let again = drain(&db.queue(), &as_handler(&handler), &config())
        .await
        .unwrap();
    assert_eq!(again, DrainReport::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_worker_wakes_up_for_new_jobs_and_stops_on_cancel() {
    let db = TestDb::new().await;
    let handler = Scripted::done();
    let shutdown = CancellationToken::new();
    // A long idle poll: only the enqueue wake-up gets the jobs handled quickly.
    let config = WorkerConfig {
        idle_poll: Duration::from_secs(3600),
        ..config()
    };
    let worker = tokio::spawn(run_worker(
        db.queue(),
        as_handler(&handler),
        config,
        shutdown.clone(),
    ));

    db.enqueue(&QUEUE, 50).await;
    wait_until("50 jobs are handled", || async {
        handler.call_count() == 50
    })
    .await;
    wait_until("the queue is empty", || async {
        db.depth(&QUEUE).await == EMPTY
    })
    .await;

    shutdown.cancel();
    let result = tokio::time::timeout(DEADLINE, worker)
        .await
        .expect("worker stops")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert!(handler.calls_per_job().values().all(|&count| count == 1));
}

#[tokio::test]
async fn a_transient_failure_is_retried_after_a_backoff_and_then_succeeds() {
    let db = TestDb::new().await;
    db.enqueue(&QUEUE, 1).await;
    let handler = Scripted::new(|job| match job.attempt {
        1 => Err(JobError::transient(test_error("channel unavailable"))),
        _ => Ok(Handled::Done),
    });
    let retry = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(300),
        max_delay: Duration::from_secs(1),
    };
    let config = WorkerConfig { retry, ..config() };

    let first = drain(&db.queue(), &as_handler(&handler), &config)
        .await
        .unwrap();
    assert_eq!(
        first,
        DrainReport {
            claimed: 1,
            retried: 1,
            ..DrainReport::default()
        }
    );
    assert_eq!(
        db.depth(&QUEUE).await,
        QueueDepth {
            scheduled: 1,
            ..EMPTY
        }
    );

    wait_until("the retried job is handled", || async {
        drain(&db.queue(), &as_handler(&handler), &config)
            .await
            .unwrap()
            .done
            == 1
    })
    .await;

    let calls = handler.calls();
    assert_eq!(
        calls.iter().map(|call| call.attempt).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(calls[1].last_error.as_deref(), Some("channel unavailable"));
    // Equal jitter: at least half of the first delay (300 ms) passed between the attempts.
    let waited = calls[1].at - calls[0].at;
    assert!(
        waited >= Duration::from_millis(150),
        "retried after only {waited:?}"
    );
    assert_eq!(db.depth(&QUEUE).await, EMPTY);
}

#[tokio::test]
async fn a_job_that_keeps_failing_is_dead_lettered_with_its_last_error_and_can_be_replayed() {
    let db = TestDb::new().await;
    db.enqueue(&QUEUE, 1).await;
    let healthy = Arc::new(AtomicBool::new(false));
    let handler = Scripted::new({
        let healthy = healthy.clone();
        move |job| {
            if healthy.load(Ordering::SeqCst) {
                Ok(Handled::Done)
            } else {
                Err(JobError::transient(test_error(format!(
                    "attempt {} failed",
                    job.attempt
                ))))
            }
        }
    });

    let mut total = DrainReport::default();
    let deadline = Deadline::start();
    loop {
        let report = drain(&db.queue(), &as_handler(&handler), &config())
            .await
            .unwrap();
        total.retried += report.retried;
        total.dead_lettered += report.dead_lettered;
        if db.depth(&QUEUE).await.dead == 1 {
            break;
        }
        deadline.wait("the job is dead-lettered").await;
    }

    assert_eq!((total.retried, total.dead_lettered), (2, 1));
    assert_eq!(
        handler
            .calls()
            .iter()
            .map(|call| call.attempt)
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(db.depth(&QUEUE).await, QueueDepth { dead: 1, ..EMPTY });
    let dead = db.store.dead_letters(Some(&QUEUE), None, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(dead[0].last_error.as_deref(), Some("attempt 3 failed"));
    assert_eq!(dead[0].payload, json!({"type": "test.v1", "n": 0}));

    // The operator fixes the cause and replays it: a fresh job, handled on attempt 1.
    healthy.store(true, Ordering::SeqCst);
    assert!(db.store.replay_dead_letter(dead[0].id).await.unwrap());
    assert_eq!(db.depth(&QUEUE).await, QueueDepth { ready: 1, ..EMPTY });
    let report = drain(&db.queue(), &as_handler(&handler), &config())
        .await
        .unwrap();
    assert_eq!(report.done, 1);
    assert_eq!(handler.calls().last().unwrap().attempt, 1);
    assert_eq!(db.depth(&QUEUE).await, EMPTY);
}

#[tokio::test]
async fn a_permanent_error_dead_letters_the_job_at_once() {
    let db = TestDb::new().await;
    db.enqueue(&QUEUE, 1).await;
    let handler = Scripted::new(|_| {
        Err(JobError::permanent(test_error(
            "undecodable payload: missing field `n`",
        )))
    });

    let report = drain(&db.queue(), &as_handler(&handler), &config())
        .await
        .unwrap();

    assert_eq!(
        report,
        DrainReport {
            claimed: 1,
            dead_lettered: 1,
            ..DrainReport::default()
        }
    );
    assert_eq!(handler.call_count(), 1);
    let dead = db.store.dead_letters(Some(&QUEUE), None, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 1);
    assert_eq!(
        dead[0].last_error.as_deref(),
        Some("undecodable payload: missing field `n`")
    );
    assert_eq!(db.depth(&QUEUE).await, QueueDepth { dead: 1, ..EMPTY });
}

#[tokio::test]
async fn retry_after_uses_the_delay_the_handler_asked_for() {
    let db = TestDb::new().await;
    db.enqueue(&QUEUE, 1).await;
    let handler = Scripted::new(|_| {
        Err(JobError::retry_after(
            Duration::from_secs(3600),
            test_error("429 too many requests"),
        ))
    });
    // A zero backoff: had the runtime used it, this drain would claim the job again at once.
    let retry = RetryPolicy {
        max_attempts: 5,
        base_delay: Duration::ZERO,
        max_delay: Duration::ZERO,
    };
    let config = WorkerConfig { retry, ..config() };

    let report = drain(&db.queue(), &as_handler(&handler), &config)
        .await
        .unwrap();

    assert_eq!(
        report,
        DrainReport {
            claimed: 1,
            retried: 1,
            ..DrainReport::default()
        }
    );
    assert_eq!(
        db.depth(&QUEUE).await,
        QueueDepth {
            scheduled: 1,
            ..EMPTY
        }
    );
}

#[tokio::test]
async fn retry_after_on_the_last_attempt_dead_letters() {
    let db = TestDb::new().await;
    db.enqueue(&QUEUE, 1).await;
    let handler = Scripted::new(|_| {
        Err(JobError::retry_after(
            Duration::ZERO,
            test_error("503 service unavailable"),
        ))
    });

    let report = drain(&db.queue(), &as_handler(&handler), &config())
        .await
        .unwrap();

    // Zero delays: all three attempts happen within one drain.
    assert_eq!(
        report,
        DrainReport {
            claimed: 3,
            retried: 2,
            dead_lettered: 1,
            ..DrainReport::default()
        }
    );
    assert_eq!(db.depth(&QUEUE).await, QueueDepth { dead: 1, ..EMPTY });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_retried_and_the_loop_survives() {
    let db = TestDb::new().await;
    let handler = Scripted::new(|job| {
        if job.payload["panic"] == json!(true) && job.attempt == 1 {
            panic!("handler bug");
        }
        Ok(Handled::Done)
    });
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(run_worker(
        db.queue(),
        as_handler(&handler),
        config(),
        shutdown.clone(),
    ));

    db.store
        .enqueue(&[NewJob::new(QUEUE, json!({"panic": true}))])
        .await
        .unwrap();
    db.enqueue(&QUEUE, 2).await;
    wait_until("all three jobs are done", || async {
        handler.call_count() == 4 && db.depth(&QUEUE).await == EMPTY
    })
    .await;
    let retried = handler
        .calls()
        .into_iter()
        .find(|call| call.attempt == 2)
        .unwrap();
    assert_eq!(
        retried.last_error.as_deref(),
        Some("handler panicked: handler bug")
    );

    // The loop is still alive and takes new work.
    db.enqueue(&QUEUE, 1).await;
    wait_until("the new job is done", || async {
        handler.call_count() == 5
    })
    .await;
    assert!(!worker.is_finished());

    shutdown.cancel();
    let result = tokio::time::timeout(DEADLINE, worker)
        .await
        .expect("worker stops")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}

/// Blocks in `handle` until released.
struct Blocking {
    started: Notify,
    release: Notify,
    calls: AtomicU64,
}

#[async_trait]
impl JobHandler for Blocking {
    fn name(&self) -> &'static str {
        "blocking"
    }

    async fn handle(&self, _job: &ClaimedJob) -> Result<Handled, JobError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.started.notify_one();
        self.release.notified().await;
        Ok(Handled::Done)
    }
}

fn blocking() -> Arc<Blocking> {
    Arc::new(Blocking {
        started: Notify::new(),
        release: Notify::new(),
        calls: AtomicU64::new(0),
    })
}

/// Lets the `Blocking` job finish, waits for its ack, stops the worker and checks that the
/// job was handled exactly once.
async fn finish_blocked_job(
    db: &TestDb,
    handler: &Blocking,
    shutdown: CancellationToken,
    worker: tokio::task::JoinHandle<Result<(), WorkerError>>,
) {
    handler.release.notify_one();
    wait_until("the job is acked", || async {
        db.depth(&QUEUE).await == EMPTY
    })
    .await;
    shutdown.cancel();
    tokio::time::timeout(DEADLINE, worker)
        .await
        .expect("worker stops")
        .unwrap()
        .unwrap();
    assert_eq!(handler.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_the_current_job_finish_and_claims_nothing_more() {
    let db = TestDb::new().await;
    db.enqueue(&QUEUE, 1).await;
    let handler = blocking();
    let shutdown = CancellationToken::new();
    let mut worker = tokio::spawn(run_worker(
        db.queue(),
        handler.clone(),
        config(),
        shutdown.clone(),
    ));

    tokio::time::timeout(DEADLINE, handler.started.notified())
        .await
        .expect("job starts");
    shutdown.cancel();
    db.enqueue(&QUEUE, 1).await;
    // The worker waits for its job rather than abandoning it.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut worker)
            .await
            .is_err()
    );
    assert_eq!(
        db.depth(&QUEUE).await,
        QueueDepth {
            ready: 1,
            in_flight: 1,
            ..EMPTY
        }
    );

    handler.release.notify_one();
    let result = tokio::time::timeout(DEADLINE, worker)
        .await
        .expect("worker stops")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    // The running job was acked; the one enqueued after the cancel was never claimed.
    assert_eq!(handler.calls.load(Ordering::SeqCst), 1);
    assert_eq!(db.depth(&QUEUE).await, QueueDepth { ready: 1, ..EMPTY });
    let left = db
        .store
        .claim(&QUEUE, 10, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].attempt, 1);
}

#[tokio::test]
async fn a_job_claimed_more_than_max_attempts_is_dead_lettered_without_handling() {
    let db = TestDb::new().await;
    db.enqueue(&QUEUE, 1).await;
    // Attempt 1 failed properly and recorded its error; attempt 2 was claimed by a worker
    // that crashed (its short lease expired without an ack or a retry).
    let first = db
        .store
        .claim(&QUEUE, 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        db.store
            .retry(first[0].receipt(), Duration::ZERO, "out of memory")
            .await
            .unwrap()
    );
    let deadline = Deadline::start();
    let crashed = loop {
        let claimed = db
            .store
            .claim(&QUEUE, 1, Duration::from_millis(1))
            .await
            .unwrap();
        if let Some(job) = claimed.into_iter().next() {
            break job;
        }
        deadline.wait("the retried job can be claimed").await;
    };
    assert_eq!(crashed.attempt, 2);
    wait_until("the crashed lease expired", || async {
        db.depth(&QUEUE).await.ready == 1
    })
    .await;
    let handler = Scripted::done();
    let config = WorkerConfig {
        retry: RetryPolicy {
            max_attempts: 2,
            ..config().retry
        },
        ..config()
    };

    let report = drain(&db.queue(), &as_handler(&handler), &config)
        .await
        .unwrap();

    assert_eq!(
        report,
        DrainReport {
            claimed: 1,
            dead_lettered: 1,
            ..DrainReport::default()
        }
    );
    assert_eq!(
        handler.call_count(),
        0,
        "the poison job must not reach the handler"
    );
    let dead = db.store.dead_letters(Some(&QUEUE), None, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(
        dead[0].last_error.as_deref(),
        Some("exceeded 2 attempts; last error: out of memory")
    );
    assert_eq!(db.depth(&QUEUE).await, QueueDepth { dead: 1, ..EMPTY });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_on_one_queue_never_handle_the_same_job_twice() {
    const JOBS: usize = 2_000;
    let db = TestDb::new().await;
    for _ in 0..4 {
        db.enqueue(&QUEUE, JOBS / 4).await;
    }
    let handler = Scripted::done();
    let shutdown = CancellationToken::new();
    let config = WorkerConfig {
        concurrency: 8,
        claim_batch: 32,
        ..config()
    };
    let workers: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(run_worker(
                db.queue(),
                as_handler(&handler),
                config.clone(),
                shutdown.clone(),
            ))
        })
        .collect();

    wait_until("every job is acked", || async {
        db.depth(&QUEUE).await == EMPTY
    })
    .await;
    shutdown.cancel();
    for worker in workers {
        let result = tokio::time::timeout(DEADLINE, worker)
            .await
            .expect("worker stops")
            .unwrap();
        assert!(result.is_ok(), "{result:?}");
    }

    let per_job = handler.calls_per_job();
    assert_eq!(per_job.len(), JOBS);
    let twice: Vec<_> = per_job.iter().filter(|&(_, &count)| count != 1).collect();
    assert!(twice.is_empty(), "handled more than once: {twice:?}");
}

/// Acks its job in the unit of work that also enqueues a follow-up job (transactional
/// outbox).
struct Outbox {
    store: Arc<SqliteStore>,
}

#[async_trait]
impl JobHandler for Outbox {
    fn name(&self) -> &'static str {
        "outbox"
    }

    async fn handle(&self, job: &ClaimedJob) -> Result<Handled, JobError> {
        let mut work = self.store.begin().await?;
        work.enqueue(&[NewJob::new(OTHER_QUEUE, job.payload.clone())])
            .await?;
        assert_eq!(work.ack(&[job.receipt()]).await?, 1);
        work.commit().await?;
        Ok(Handled::AckedInTransaction)
    }
}

#[tokio::test]
async fn a_handler_may_ack_its_job_in_its_own_transaction() {
    let db = TestDb::new().await;
    db.enqueue(&QUEUE, 5).await;
    let handler: Arc<dyn JobHandler> = Arc::new(Outbox {
        store: db.store.clone(),
    });

    let report = drain(&db.queue(), &handler, &config()).await.unwrap();

    assert_eq!(
        report,
        DrainReport {
            claimed: 5,
            done: 5,
            ..DrainReport::default()
        }
    );
    assert_eq!(db.depth(&QUEUE).await, EMPTY);
    assert_eq!(
        db.depth(&OTHER_QUEUE).await,
        QueueDepth { ready: 5, ..EMPTY }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_of_a_long_job_is_extended_while_it_runs() {
    let db = TestDb::new().await;
    db.enqueue(&QUEUE, 1).await;
    let handler = blocking();
    let shutdown = CancellationToken::new();
    let lease = Duration::from_millis(900);
    let config = WorkerConfig { lease, ..config() };
    let worker = tokio::spawn(run_worker(
        db.queue(),
        handler.clone(),
        config,
        shutdown.clone(),
    ));
    tokio::time::timeout(DEADLINE, handler.started.notified())
        .await
        .expect("job starts");

    // For three leases, nobody else can claim the job.
    db.assert_nothing_claimable_for(3 * lease, "the lease expired while the job ran")
        .await;

    finish_blocked_job(&db, &handler, shutdown, worker).await;
}

/// The real SQLite queue, except that every claim after the first stalls: a broker or
/// database that is slow to answer a claim. It goes through once `release` is notified or,
/// with `hold_connection`, once a lease extension waits for the connection the stalled
/// claim holds (like SQLite's single writer).
#[derive(Debug)]
struct StallingClaims {
    inner: Arc<SqliteStore>,
    hold_connection: bool,
    connection: tokio::sync::Mutex<()>,
    claims: AtomicU64,
    stalled: Notify,
    release: Notify,
    extension_waits: Notify,
}

impl StallingClaims {
    fn new(db: &TestDb, hold_connection: bool) -> Arc<Self> {
        Arc::new(Self {
            inner: db.store.clone(),
            hold_connection,
            connection: tokio::sync::Mutex::new(()),
            claims: AtomicU64::new(0),
            stalled: Notify::new(),
            release: Notify::new(),
            extension_waits: Notify::new(),
        })
    }
}

#[async_trait]
impl JobQueue for StallingClaims {
    async fn enqueue(&self, jobs: &[NewJob]) -> Result<(), StoreError> {
        self.inner.enqueue(jobs).await
    }

    async fn claim(
        &self,
        queue: &QueueName,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        if self.claims.fetch_add(1, Ordering::SeqCst) == 0 {
            return self.inner.claim(queue, max, lease).await;
        }
        if self.hold_connection {
            let _connection = self.connection.lock().await;
            self.stalled.notify_one();
            self.extension_waits.notified().await;
            return self.inner.claim(queue, max, lease).await;
        }
        self.stalled.notify_one();
        self.release.notified().await;
        self.inner.claim(queue, max, lease).await
    }

    async fn ack(&self, receipts: &[JobReceipt]) -> Result<u64, StoreError> {
        self.inner.ack(receipts).await
    }

    async fn retry(
        &self,
        receipt: JobReceipt,
        delay: Duration,
        error: &str,
    ) -> Result<bool, StoreError> {
        self.inner.retry(receipt, delay, error).await
    }

    async fn dead_letter(&self, receipt: JobReceipt, error: &str) -> Result<bool, StoreError> {
        self.inner.dead_letter(receipt, error).await
    }

    async fn extend_lease(&self, receipt: JobReceipt, lease: Duration) -> Result<bool, StoreError> {
        if self.hold_connection {
            self.extension_waits.notify_one();
            let _connection = self.connection.lock().await;
            return self.inner.extend_lease(receipt, lease).await;
        }
        self.inner.extend_lease(receipt, lease).await
    }

    async fn dead_letters(
        &self,
        queue: Option<&QueueName>,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.inner.dead_letters(queue, after, limit).await
    }

    async fn replay_dead_letter(&self, id: i64) -> Result<bool, StoreError> {
        self.inner.replay_dead_letter(id).await
    }

    async fn depth(&self, queue: &QueueName) -> Result<QueueDepth, StoreError> {
        self.inner.depth(queue).await
    }

    async fn wait_for_jobs(&self, queue: &QueueName, timeout: Duration) {
        self.inner.wait_for_jobs(queue, timeout).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_extended_while_a_claim_is_slow() {
    let db = TestDb::new().await;
    db.enqueue(&QUEUE, 1).await;
    let queue = StallingClaims::new(&db, false);
    let handler = blocking();
    let shutdown = CancellationToken::new();
    let lease = Duration::from_millis(900);
    let config = WorkerConfig { lease, ..config() };
    let worker = tokio::spawn(run_worker(
        queue.clone(),
        handler.clone(),
        config,
        shutdown.clone(),
    ));
    tokio::time::timeout(DEADLINE, handler.started.notified())
        .await
        .expect("job starts");
    // The worker has room for more and claims again; that claim stalls.
    tokio::time::timeout(DEADLINE, queue.stalled.notified())
        .await
        .expect("second claim");

    // For three leases, with the worker stuck in its claim, nobody else can take the job.
    db.assert_nothing_claimable_for(3 * lease, "the lease expired during the slow claim")
        .await;

    handler.release.notify_one();
    shutdown.cancel();
    queue.release.notify_one();
    tokio::time::timeout(DEADLINE, worker)
        .await
        .expect("worker stops")
        .unwrap()
        .unwrap();
    assert_eq!(db.depth(&QUEUE).await, EMPTY);
    assert_eq!(handler.calls.load(Ordering::SeqCst), 1);
}

/// A heartbeat that fires while a claim holds the connection its extensions need (SQLite's
/// single writer) does not deadlock the worker: the claim is still driven, finishes and
/// lets the extensions through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_during_a_claim_that_holds_the_connection_does_not_deadlock() {
    let db = TestDb::new().await;
    db.enqueue(&QUEUE, 1).await;
    let queue = StallingClaims::new(&db, true);
    let handler = blocking();
    let shutdown = CancellationToken::new();
    let config = WorkerConfig {
        lease: Duration::from_millis(300),
        ..config()
    };
    let worker = tokio::spawn(run_worker(
        queue.clone(),
        handler.clone(),
        config,
        shutdown.clone(),
    ));
    tokio::time::timeout(DEADLINE, handler.started.notified())
        .await
        .expect("job starts");
    tokio::time::timeout(DEADLINE, queue.stalled.notified())
        .await
        .expect("second claim");
    // The stalled claim completes only once an extension waits for its connection.
    wait_until("the stalled claim to complete", || async {
        queue.claims.load(Ordering::SeqCst) >= 3
    })
    .await;
    finish_blocked_job(&db, &handler, shutdown, worker).await;
}

#[tokio::test]
async fn an_invalid_configuration_is_refused_before_claiming() {
    let db = TestDb::new().await;
    db.enqueue(&QUEUE, 1).await;
    let handler = Scripted::done();
    let config = WorkerConfig {
        concurrency: 0,
        ..config()
    };

    let result = run_worker(
        db.queue(),
        as_handler(&handler),
        config.clone(),
        CancellationToken::new(),
    )
    .await;
    assert!(
        matches!(
            result,
            Err(WorkerError::InvalidConfig {
                worker: "scripted",
                ..
            })
        ),
        "{result:?}"
    );
    let drained = drain(&db.queue(), &as_handler(&handler), &config).await;
    assert!(
        matches!(drained, Err(WorkerError::InvalidConfig { .. })),
        "{drained:?}"
    );
    assert_eq!(db.depth(&QUEUE).await, QueueDepth { ready: 1, ..EMPTY });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_set_runs_workers_and_shuts_them_down() {
    let db = TestDb::new().await;
    let root = CancellationToken::new();
    let mut workers = WorkerSet::new(&root);
    let first = Scripted::done();
    let second = Scripted::done();
    workers.spawn(db.queue(), as_handler(&first), config());
    workers.spawn(
        db.queue(),
        as_handler(&second),
        WorkerConfig {
            queue: OTHER_QUEUE,
            ..config()
        },
    );
    workers.spawn(
        db.queue(),
        as_handler(&first),
        WorkerConfig {
            claim_batch: 0,
            ..config()
        },
    );
    assert_eq!(workers.len(), 3);

    // The misconfigured worker ends at once, with its name.
    let (name, result) = tokio::time::timeout(DEADLINE, workers.join_next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(name, "scripted");
    assert!(
        matches!(result, Err(WorkerError::InvalidConfig { .. })),
        "{result:?}"
    );

    db.enqueue(&QUEUE, 10).await;
    db.enqueue(&OTHER_QUEUE, 10).await;
    wait_until("both queues are empty", || async {
        db.depth(&QUEUE).await == EMPTY && db.depth(&OTHER_QUEUE).await == EMPTY
    })
    .await;
    assert_eq!((first.call_count(), second.call_count()), (10, 10));

    assert!(
        workers.shutdown(DEADLINE).await,
        "workers stop within the grace period"
    );
    assert!(
        !root.is_cancelled(),
        "stopping the set does not cancel its parent token"
    );
}

// ---------------------------------------------------------------------------------------
// metrics

/// A recorder that keeps counter values and histogram sample counts by rendered key.
#[derive(Default)]
struct TestRecorder {
    values: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
}

impl TestRecorder {
    fn slot(&self, kind: &str, key: &metrics::Key) -> Arc<AtomicU64> {
        let mut labels: Vec<String> = key
            .labels()
            .map(|label| format!("{}={}", label.key(), label.value()))
            .collect();
        labels.sort();
        let rendered = format!("{kind} {}{{{}}}", key.name(), labels.join(","));
        self.values
            .lock()
            .unwrap()
            .entry(rendered)
            .or_default()
            .clone()
    }

    fn value(&self, rendered: &str) -> u64 {
        self.values
            .lock()
            .unwrap()
            .get(rendered)
            .map_or(0, |value| value.load(Ordering::SeqCst))
    }
}

/// Counts histogram samples.
struct SampleCount(Arc<AtomicU64>);

impl metrics::HistogramFn for SampleCount {
    fn record(&self, _value: f64) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl metrics::Recorder for TestRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }

    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(self.slot("counter", key))
    }

    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(self.slot("gauge", key))
    }

    fn register_histogram(
        &self,
        key: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::from_arc(Arc::new(SampleCount(self.slot("histogram", key))))
    }
}

/// Current-thread runtime: the local recorder is seen where the worker registers its
/// metrics.
#[tokio::test]
async fn outcomes_durations_are_counted_by_queue_and_worker() {
    let db = TestDb::new().await;
    db.enqueue(&QUEUE, 3).await;
    let handler = Scripted::new(|job| match job.payload["n"].as_u64() {
        Some(0) => Ok(Handled::Done),
        Some(1) => Err(JobError::permanent(test_error("bad payload"))),
        _ if job.attempt == 1 => Err(JobError::retry_after(Duration::ZERO, test_error("busy"))),
        _ => Ok(Handled::Done),
    });
    let recorder = TestRecorder::default();
    let report = {
        let _guard = metrics::set_default_local_recorder(&recorder);
        drain(&db.queue(), &as_handler(&handler), &config())
            .await
            .unwrap()
    };
    assert_eq!(
        report,
        DrainReport {
            claimed: 4,
            done: 2,
            retried: 1,
            dead_lettered: 1,
            leases_lost: 0
        }
    );

    let jobs = |outcome: &str| {
        recorder.value(&format!(
            "counter igl_jobs_total{{outcome={outcome},queue=test.jobs,worker=scripted}}"
        ))
    };
    assert_eq!(
        (jobs("done"), jobs("retried"), jobs("dead_lettered")),
        (2, 1, 1)
    );
    assert_eq!(
        recorder.value("histogram igl_job_duration_seconds{queue=test.jobs,worker=scripted}"),
        4
    );
    assert_eq!(
        recorder.value("counter igl_worker_storage_errors_total{queue=test.jobs}"),
        0
    );
}

// ---------------------------------------------------------------------------------------
// batched handlers

/// Records the size of every batch it gets; job `n` fails transiently when `n % 4 == 1`,
/// permanently when `n % 4 == 2`, and the whole batch panics once when `panic_once` is set.
#[derive(Debug, Default)]
struct Batches {
    sizes: Mutex<Vec<usize>>,
    panic_once: AtomicBool,
}

#[async_trait]
impl JobHandler for Batches {
    fn name(&self) -> &'static str {
        "batches"
    }

    async fn handle(&self, _job: &ClaimedJob) -> Result<Handled, JobError> {
        panic!("a batched handler is given batches");
    }

    fn batched(&self) -> bool {
        true
    }

    async fn handle_batch(&self, jobs: &[ClaimedJob]) -> Vec<Result<Handled, JobError>> {
        self.sizes.lock().expect("sizes").push(jobs.len());
        assert!(
            !self.panic_once.swap(false, Ordering::SeqCst),
            "the batch panics once"
        );
        jobs.iter()
            .map(|job| match job.payload["n"].as_u64().expect("n") % 4 {
                1 if job.attempt == 1 => Err(JobError::transient(test_error("try again"))),
                2 => Err(JobError::permanent(test_error("never"))),
                _ => Ok(Handled::Done),
            })
            .collect()
    }
}

/// Retries that stay scheduled for the rest of the test.
fn batch_config(max_attempts: u32) -> WorkerConfig {
    WorkerConfig {
        retry: RetryPolicy {
            max_attempts,
            base_delay: Duration::from_secs(3600),
            max_delay: Duration::from_secs(3600),
        },
        ..config()
    }
}

#[tokio::test]
async fn a_batched_handler_gets_whole_claims_and_each_job_keeps_its_own_outcome() {
    let db = TestDb::new().await;
    db.enqueue(&QUEUE, 40).await;
    let handler = Arc::new(Batches::default());
    let as_dyn: Arc<dyn JobHandler> = handler.clone();
    let report = drain(&db.queue(), &as_dyn, &batch_config(3))
        .await
        .expect("drain");
    // 40 jobs in claims of 16: batches of 16, 16 and 8; 10 retried, 10 dead-lettered.
    assert_eq!(*handler.sizes.lock().expect("sizes"), vec![16, 16, 8]);
    assert_eq!(
        report,
        DrainReport {
            claimed: 40,
            done: 20,
            retried: 10,
            dead_lettered: 10,
            leases_lost: 0,
        }
    );
    assert_eq!(
        db.depth(&QUEUE).await,
        QueueDepth {
            scheduled: 10,
            dead: 10,
            ..EMPTY
        }
    );
}

#[tokio::test]
async fn a_panicking_batch_fails_every_job_of_it() {
    let db = TestDb::new().await;
    db.enqueue(&QUEUE, 8).await;
    let handler = Arc::new(Batches {
        panic_once: AtomicBool::new(true),
        ..Batches::default()
    });
    let as_dyn: Arc<dyn JobHandler> = handler.clone();
    let report = drain(&db.queue(), &as_dyn, &batch_config(1))
        .await
        .expect("drain");
    assert_eq!(report.claimed, 8);
    assert_eq!(report.dead_lettered, 8);
    let dead = db
        .store
        .dead_letters(Some(&QUEUE), None, 100)
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 8);
    assert!(dead.iter().all(|letter| {
        letter
            .last_error
            .as_deref()
            .is_some_and(|error| error.contains("handler panicked: the batch panics once"))
    }));
}
