//! The transactional outbox relay and the brokered storage on real PostgreSQL + RabbitMQ
//! (`IGL_TEST_POSTGRES_URL` and `IGL_TEST_AMQP_URL`; ignored, with the reason, without them).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use igl_core::{
    ClaimedJob, DeadLetter, EventLog, JobQueue, JobReceipt, NewJob, QueueDepth, QueueName, Storage,
    StoreError, TakenJobs,
};
use igl_queue::{BrokeredStorage, OutboxRelay, RelayConfig};
use igl_testkit::backends::{TestBroker, TestStorage, amqp, postgres};
use igl_testkit::conformance::jobs::{eventually, eventually_some};
use igl_testkit::fixtures::{event, job, queue};
use tokio_util::sync::CancellationToken;

const LEASE: Duration = Duration::from_secs(30);

struct Shape {
    sql: TestStorage,
    broker: TestBroker,
    storage: BrokeredStorage,
}

async fn shape() -> Shape {
    let sql = postgres().await;
    let broker = amqp().await;
    let storage = BrokeredStorage::new(sql.storage.clone(), broker.queue.clone());
    Shape {
        sql,
        broker,
        storage,
    }
}

fn relay(shape: &Shape, names: &[&str], lease: Duration) -> OutboxRelay {
    polling_relay(shape, names, lease, Duration::from_millis(100))
}

fn polling_relay(
    shape: &Shape,
    names: &[&str],
    lease: Duration,
    idle_poll: Duration,
) -> OutboxRelay {
    OutboxRelay::new(
        shape.sql.storage.clone(),
        shape.broker.queue.clone(),
        names.iter().map(|name| queue(name)).collect(),
        RelayConfig {
            batch: 64,
            lease,
            idle_poll,
            ..RelayConfig::default()
        },
    )
}

/// A surviving relay publishes the row of `name` again (within `deadline`), leaving the
/// outbox empty.
async fn republished_by_a_survivor(shape: &Shape, name: &str, deadline: Duration) {
    let q = queue(name);
    let survivor = relay(shape, &[name], LEASE);
    eventually("the row to be published again", deadline, || async {
        survivor.relay_once(&q).await.unwrap() == 1
    })
    .await;
    assert_eq!(
        shape.sql.storage.depth(&q).await.unwrap(),
        Default::default(),
        "the survivor removed the row from the outbox"
    );
}

/// Claims from the broker until both copies of a twice-published job are held.
async fn both_copies(shape: &Shape, name: &str) -> Vec<igl_core::ClaimedJob> {
    let q = queue(name);
    let mut copies = Vec::new();
    while copies.len() < 2 {
        let mut claimed = eventually_some("both copies", Duration::from_secs(10), || async {
            let claimed = shape.storage.claim(&q, 10, LEASE).await.unwrap();
            (!claimed.is_empty()).then_some(claimed)
        })
        .await;
        copies.append(&mut claimed);
    }
    copies
}

/// A committed unit of work's jobs reach the broker once relayed; a rolled-back one's
/// never do; the outbox is empty afterwards.
#[cfg_attr(
    igl_skip_broker_shape,
    ignore = "set IGL_TEST_POSTGRES_URL and IGL_TEST_AMQP_URL to run"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_jobs_reach_the_broker_rolled_back_ones_never_do() {
    let shape = shape().await;
    let q = queue("outbox");
    let mut unit = shape.storage.begin().await.unwrap();
    unit.enqueue(&[job("outbox", 1), job("outbox", 2)])
        .await
        .unwrap();
    unit.append_event(&event("e1", "a.b")).await.unwrap();
    unit.commit().await.unwrap();
    let mut rolled_back = shape.storage.begin().await.unwrap();
    rolled_back.enqueue(&[job("outbox", 3)]).await.unwrap();
    drop(rolled_back);
    assert!(
        shape
            .broker
            .queue
            .claim(&q, 10, LEASE)
            .await
            .unwrap()
            .is_empty(),
        "nothing reaches the broker before the relay"
    );
    assert_eq!(
        shape.storage.depth(&q).await.unwrap().ready,
        2,
        "in the outbox"
    );

    let relay = relay(&shape, &["outbox"], LEASE);
    assert_eq!(relay.relay_once(&q).await.unwrap(), 2);
    assert_eq!(relay.relay_once(&q).await.unwrap(), 0, "marked sent");
    let claimed = shape.storage.claim(&q, 10, LEASE).await.unwrap();
    let mut numbers: Vec<u64> = claimed
        .iter()
        .map(|job| job.payload["n"].as_u64().unwrap())
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, vec![1, 2], "the rolled-back job never arrives");
    let receipts: Vec<_> = claimed.iter().map(|job| job.receipt()).collect();
    assert_eq!(shape.storage.ack(&receipts).await.unwrap(), 2);
    let depth = shape.storage.depth(&q).await.unwrap();
    assert_eq!(depth, igl_core::QueueDepth::default());
    shape.broker.cleanup(&["outbox"]).await;
}

/// A relay on the claim-and-ack path (an outbox without `take`, or an older release) killed
/// between publishing and marking its rows sent leaves them leased; after the lease another
/// relay publishes them again (same job id), and a consumer that acks in its unit of work
/// with an idempotent effect absorbs the duplicate: one effect, both
/// deliveries acked after their commits.
#[cfg_attr(
    igl_skip_broker_shape,
    ignore = "set IGL_TEST_POSTGRES_URL and IGL_TEST_AMQP_URL to run"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_before_marking_republishes_and_the_consumer_absorbs_it() {
    let shape = shape().await;
    let q = queue("crashy");
    shape.storage.enqueue(&[job("crashy", 7)]).await.unwrap();

    // The relay that dies: claims the row, publishes it (confirmed), never marks it.
    let dying = shape
        .sql
        .storage
        .claim(&q, 10, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(dying.len(), 1);
    shape.broker.queue.publish_outbox(&dying).await.unwrap();
    drop(dying);

    // Its replacement publishes the row again once the lease has expired.
    republished_by_a_survivor(&shape, "crashy", Duration::from_secs(10)).await;

    // The consumer: one event per job id, appended and acked in one unit of work.
    let deliveries = both_copies(&shape, "crashy").await;
    assert_eq!(deliveries[0].id, deliveries[1].id, "the same job twice");
    let mut effects = 0;
    for delivery in &deliveries {
        let mut unit = shape.storage.begin().await.unwrap();
        let id = format!("job-{}", delivery.id);
        if unit.append_event(&event(&id, "jobs")).await.unwrap() {
            effects += 1;
        }
        assert_eq!(unit.ack(&[delivery.receipt()]).await.unwrap(), 1);
        unit.commit().await.unwrap();
    }
    assert_eq!(effects, 1, "the duplicate had no second effect");
    assert_eq!(shape.storage.read_events(0, 10).await.unwrap().len(), 1);
    let depth = shape.storage.depth(&q).await.unwrap();
    assert_eq!(
        (depth.ready, depth.in_flight),
        (0, 0),
        "both deliveries acked"
    );
    shape.broker.cleanup(&["crashy"]).await;
}

/// A relay that dies after publishing rows it took but before committing the take (its
/// transaction rolls back when its connection goes) leaves them in the outbox at once, not
/// after a lease: the next relay publishes them again with the same job id.
#[cfg_attr(
    igl_skip_broker_shape,
    ignore = "set IGL_TEST_POSTGRES_URL and IGL_TEST_AMQP_URL to run"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_dies_before_committing_its_take_leaves_the_rows_at_once() {
    let shape = shape().await;
    let q = queue("uncommitted");
    shape
        .storage
        .enqueue(&[job("uncommitted", 3)])
        .await
        .unwrap();

    let dying = shape.sql.storage.take(&q, 10).await.unwrap().expect("take");
    assert_eq!(dying.jobs().len(), 1);
    shape
        .broker
        .queue
        .publish_outbox(dying.jobs())
        .await
        .unwrap();
    let id = dying.jobs()[0].id;
    drop(dying);

    // No lease to wait for: the row is back as soon as the rollback reaches the server.
    republished_by_a_survivor(&shape, "uncommitted", Duration::from_secs(5)).await;
    let copies = both_copies(&shape, "uncommitted").await;
    assert!(
        copies.iter().all(|copy| copy.id == id),
        "the same job twice"
    );
    let receipts: Vec<_> = copies.iter().map(|copy| copy.receipt()).collect();
    assert_eq!(shape.storage.ack(&receipts).await.unwrap(), 2);
    shape.broker.cleanup(&["uncommitted"]).await;
}

/// A unit of work that acks a broker job and is rolled back leaves the job held (and so
/// redelivered later); one that commits acks it on the broker.
#[cfg_attr(
    igl_skip_broker_shape,
    ignore = "set IGL_TEST_POSTGRES_URL and IGL_TEST_AMQP_URL to run"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_in_a_unit_of_work_happen_after_its_commit_only() {
    let shape = shape().await;
    let q = queue("acked");
    shape
        .broker
        .queue
        .enqueue(&[job("acked", 1)])
        .await
        .unwrap();
    let held = shape.storage.claim(&q, 1, LEASE).await.unwrap().remove(0);

    let mut rolled_back = shape.storage.begin().await.unwrap();
    rolled_back.ack(&[held.receipt()]).await.unwrap();
    drop(rolled_back);
    assert_eq!(shape.broker.queue.held(&[held.receipt()]), 1, "still held");

    let mut unit = shape.storage.begin().await.unwrap();
    unit.append_event(&event("done", "jobs")).await.unwrap();
    unit.ack(&[held.receipt()]).await.unwrap();
    unit.commit().await.unwrap();
    assert_eq!(shape.broker.queue.held(&[held.receipt()]), 0, "acked");
    assert_eq!(shape.storage.depth(&q).await.unwrap(), Default::default());
    shape.broker.cleanup(&["acked"]).await;
}

/// Two relay replicas draining one outbox publish every row exactly once between them
/// (no crash: `SKIP LOCKED` claims never overlap).
#[cfg_attr(
    igl_skip_broker_shape,
    ignore = "set IGL_TEST_POSTGRES_URL and IGL_TEST_AMQP_URL to run"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_replicas_publish_each_row_once() {
    const JOBS: u64 = 1_000;
    let shape = shape().await;
    let q = queue("replicas");
    let shutdown = CancellationToken::new();
    let replicas: Vec<_> = (0..2)
        .map(|_| tokio::spawn(relay(&shape, &["replicas"], LEASE).run(shutdown.clone())))
        .collect();
    let jobs: Vec<_> = (0..JOBS).map(|n| job("replicas", n)).collect();
    for chunk in jobs.chunks(100) {
        let mut unit = shape.storage.begin().await.unwrap();
        unit.enqueue(chunk).await.unwrap();
        unit.commit().await.unwrap();
    }
    let mut seen: HashMap<u64, u32> = HashMap::new();
    let consumer: Arc<dyn JobQueue> = Arc::new(shape.storage.clone());
    while (seen.len() as u64) < JOBS {
        let claimed = eventually_some("relayed jobs", Duration::from_secs(20), || async {
            let claimed = consumer.claim(&q, 100, LEASE).await.unwrap();
            (!claimed.is_empty()).then_some(claimed)
        })
        .await;
        for held in &claimed {
            *seen.entry(held.payload["n"].as_u64().unwrap()).or_default() += 1;
        }
        let receipts: Vec<_> = claimed.iter().map(|job| job.receipt()).collect();
        consumer.ack(&receipts).await.unwrap();
    }
    assert!(
        seen.values().all(|&count| count == 1),
        "no row published twice"
    );
    assert!(consumer.claim(&q, 100, LEASE).await.unwrap().is_empty());
    shutdown.cancel();
    for replica in replicas {
        replica.await.unwrap();
    }
    assert_eq!(shape.storage.depth(&q).await.unwrap(), Default::default());
    shape.broker.cleanup(&["replicas"]).await;
}

/// An idle relay sleeps until the next row of the outbox is due rather than polling: with
/// a 30 s safety-net poll, a job enqueued with a 500 ms delay still reaches the broker
/// within a few seconds, and never before it is due.
#[cfg_attr(
    igl_skip_broker_shape,
    ignore = "set IGL_TEST_POSTGRES_URL and IGL_TEST_AMQP_URL to run"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_relay_wakes_when_a_delayed_row_is_due() {
    let shape = shape().await;
    let q = queue("due-later");
    let relay = polling_relay(&shape, &["due-later"], LEASE, Duration::from_secs(30));
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    let delay = Duration::from_millis(500);
    let enqueued = std::time::Instant::now();
    let mut unit = shape.storage.begin().await.unwrap();
    unit.enqueue(&[job("due-later", 1).with_delay(delay)])
        .await
        .unwrap();
    unit.commit().await.unwrap();
    let claimed = eventually_some(
        "the delayed job at the broker",
        Duration::from_secs(10),
        || async {
            let claimed = shape.broker.queue.claim(&q, 10, LEASE).await.unwrap();
            (!claimed.is_empty()).then_some(claimed)
        },
    )
    .await;
    assert!(enqueued.elapsed() >= delay, "published before it was due");
    assert_eq!(claimed.len(), 1);
    let receipts: Vec<_> = claimed.iter().map(|job| job.receipt()).collect();
    assert_eq!(shape.broker.queue.ack(&receipts).await.unwrap(), 1);
    shutdown.cancel();
    running.await.unwrap();
    assert_eq!(shape.storage.depth(&q).await.unwrap(), Default::default());
    shape.broker.cleanup(&["due-later"]).await;
}

/// The real PostgreSQL outbox, telling the test when one of its takes came back empty
/// because every due row was held by another taker (the relay lost the race).
#[derive(Debug)]
struct WatchedTakes {
    inner: Arc<dyn Storage>,
    lost_race: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl JobQueue for WatchedTakes {
    async fn enqueue(&self, jobs: &[NewJob]) -> Result<(), StoreError> {
        self.inner.enqueue(jobs).await
    }

    async fn claim(
        &self,
        queue: &QueueName,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
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

    async fn next_due_in(&self, queue: &QueueName) -> Result<Option<Duration>, StoreError> {
        self.inner.next_due_in(queue).await
    }

    async fn take(
        &self,
        queue: &QueueName,
        max: usize,
    ) -> Result<Option<Box<dyn TakenJobs>>, StoreError> {
        let taken = self.inner.take(queue, max).await?;
        if let Some(taken) = &taken
            && taken.jobs().is_empty()
            && taken.held_elsewhere() > 0
        {
            self.lost_race.notify_one();
        }
        Ok(taken)
    }

    async fn wait_for_jobs(&self, queue: &QueueName, timeout: Duration) {
        self.inner.wait_for_jobs(queue, timeout).await;
    }
}

/// A relay that finds every due row held by another relay (it lost the race for them)
/// leaves the queue to that one for `yield_to_peer`, then looks again: if the other relay
/// died before committing, its rows are published a moment later — not after the 30 s
/// safety-net poll, since a rollback notifies nobody.
#[cfg_attr(
    igl_skip_broker_shape,
    ignore = "set IGL_TEST_POSTGRES_URL and IGL_TEST_AMQP_URL to run"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_lost_the_race_takes_over_when_the_winner_dies() {
    let shape = shape().await;
    let q = queue("raced");
    shape.storage.enqueue(&[job("raced", 1)]).await.unwrap();
    let winner = shape.sql.storage.take(&q, 10).await.unwrap().expect("take");
    assert_eq!(winner.jobs().len(), 1);

    let outbox = Arc::new(WatchedTakes {
        inner: shape.sql.storage.clone(),
        lost_race: tokio::sync::Notify::new(),
    });
    let relay = OutboxRelay::new(
        outbox.clone(),
        shape.broker.queue.clone(),
        vec![q.clone()],
        RelayConfig {
            yield_to_peer: Duration::from_millis(200),
            idle_poll: Duration::from_secs(30),
            ..RelayConfig::default()
        },
    );
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    // The relay finds the row held; then the winner dies unpublished.
    tokio::time::timeout(Duration::from_secs(10), outbox.lost_race.notified())
        .await
        .expect("the relay's take finds the row held");
    drop(winner);

    // Within the 10 s deadline, well before the relay's 30 s safety-net poll.
    let claimed = eventually_some("the row at the broker", Duration::from_secs(10), || async {
        let claimed = shape.broker.queue.claim(&q, 10, LEASE).await.unwrap();
        (!claimed.is_empty()).then_some(claimed)
    })
    .await;
    let receipts: Vec<_> = claimed.iter().map(|job| job.receipt()).collect();
    assert_eq!(shape.broker.queue.ack(&receipts).await.unwrap(), 1);
    shutdown.cancel();
    running.await.unwrap();
    assert_eq!(shape.storage.depth(&q).await.unwrap(), Default::default());
    shape.broker.cleanup(&["raced"]).await;
}
