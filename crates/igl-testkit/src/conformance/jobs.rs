//! The `JobQueue` contract, for every adapter (SQL tables and the AMQP broker).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use igl_core::JobQueue;

use crate::fixtures::{job, queue};

const LEASE: Duration = Duration::from_secs(30);

fn n_of(job: &igl_core::ClaimedJob) -> u64 {
    job.payload["n"].as_u64().expect("payload has n")
}

/// Polls `condition` until it holds or `deadline` passes; panics with `what` on timeout.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_some(what, deadline, || {
        let check = condition();
        async move { check.await.then_some(()) }
    })
    .await
}

/// Polls `probe` until it returns `Some` or `deadline` passes; panics with `what` on
/// timeout.
pub async fn eventually_some<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Jobs come out in enqueue order, at most `max` per claim, each with attempt 1, and ack
/// removes them.
pub async fn enqueue_claim_ack(storage: &dyn JobQueue) {
    let q = queue("work");
    let jobs: Vec<_> = (0..10).map(|n| job("work", n)).collect();
    storage.enqueue(&jobs).await.unwrap();
    storage.enqueue(&[job("other", 99)]).await.unwrap();
    assert_eq!(storage.depth(&q).await.unwrap().ready, 10);

    let first = storage.claim(&q, 4, LEASE).await.unwrap();
    assert_eq!(first.iter().map(n_of).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    assert!(
        first
            .iter()
            .all(|j| j.attempt == 1 && j.queue == q && j.last_error.is_none())
    );
    let rest = storage.claim(&q, 100, LEASE).await.unwrap();
    assert_eq!(rest.len(), 6, "leased jobs are not claimed again");
    assert!(storage.claim(&q, 100, LEASE).await.unwrap().is_empty());
    let depth = storage.depth(&q).await.unwrap();
    assert_eq!((depth.ready, depth.in_flight), (0, 10));

    let receipts: Vec<_> = first.iter().chain(&rest).map(|j| j.receipt()).collect();
    assert_eq!(storage.ack(&receipts).await.unwrap(), 10);
    assert_eq!(
        storage.ack(&receipts).await.unwrap(),
        0,
        "acking twice removes nothing"
    );
    assert_eq!(
        storage.depth(&q).await.unwrap(),
        igl_core::QueueDepth::default()
    );
    assert_eq!(
        storage.depth(&queue("other")).await.unwrap().ready,
        1,
        "queues are separate"
    );
}

/// A delayed job is not claimable before its delay and is afterwards.
pub async fn delayed_jobs_wait(storage: &dyn JobQueue) {
    let q = queue("later");
    storage
        .enqueue(&[job("later", 1).with_delay(Duration::from_millis(300))])
        .await
        .unwrap();
    assert!(storage.claim(&q, 10, LEASE).await.unwrap().is_empty());
    assert_eq!(storage.depth(&q).await.unwrap().scheduled, 1);
    let q = &q;
    eventually(
        "the delayed job to become claimable",
        Duration::from_secs(5),
        || async move { storage.claim(q, 10, LEASE).await.unwrap().len() == 1 },
    )
    .await;
}

/// `next_due_in` tells how long until the next job is claimable: nothing for an empty
/// queue, about the delay of a delayed job, zero for a due one, and the lease of a claimed
/// one (it becomes claimable again when the lease runs out). For backends that know
/// (the SQL queues, which the outbox relay sleeps on).
pub async fn next_due_in_tells_when_a_job_becomes_claimable(storage: &dyn JobQueue) {
    let q = queue("due");
    assert_eq!(storage.next_due_in(&q).await.unwrap(), None, "empty queue");
    storage
        .enqueue(&[job("due", 1).with_delay(Duration::from_secs(60))])
        .await
        .unwrap();
    let due = storage
        .next_due_in(&q)
        .await
        .unwrap()
        .expect("a delayed job");
    assert!(
        due > Duration::from_secs(50) && due <= Duration::from_secs(60),
        "{due:?}"
    );
    storage.enqueue(&[job("due", 2)]).await.unwrap();
    assert_eq!(storage.next_due_in(&q).await.unwrap(), Some(Duration::ZERO));
    let claimed = storage.claim(&q, 10, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let due = storage
        .next_due_in(&q)
        .await
        .unwrap()
        .expect("a leased job");
    assert!(
        due > Duration::ZERO && due <= LEASE,
        "{due:?} (lease {LEASE:?})"
    );
    storage.ack(&[claimed[0].receipt()]).await.unwrap();
    let due = storage
        .next_due_in(&q)
        .await
        .unwrap()
        .expect("the delayed job");
    assert!(due > Duration::from_secs(50), "{due:?}");
}

/// For backends that implement [`JobQueue::take`] (PostgreSQL; panics on one that does
/// not): taken jobs are invisible to other takers and to claimers while the transaction is
/// open, dropping it puts them back untouched, committing removes them, and the take tells
/// when the next not-yet-due job becomes due.
pub async fn take_holds_jobs_until_commit(storage: &dyn JobQueue) {
    let q = queue("taken");
    let ready: Vec<_> = (1..=3).map(|n| job("taken", n)).collect();
    storage.enqueue(&ready).await.unwrap();
    storage
        .enqueue(&[job("taken", 4).with_delay(Duration::from_secs(60))])
        .await
        .unwrap();

    let first = storage
        .take(&q, 2)
        .await
        .unwrap()
        .expect("this backend implements take");
    assert_eq!(
        first.jobs().iter().map(n_of).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(first.jobs().iter().all(|j| j.queue == q && j.attempt == 0));
    let due = first.next_due_in().expect("the delayed job");
    assert!(
        due > Duration::from_secs(50) && due <= Duration::from_secs(60),
        "{due:?}"
    );

    let second = storage.take(&q, 10).await.unwrap().unwrap();
    assert_eq!(
        second.jobs().iter().map(n_of).collect::<Vec<_>>(),
        vec![3],
        "another taker skips the held jobs"
    );
    assert_eq!(second.held_elsewhere(), 2, "and says how many it skipped");
    assert_eq!(first.held_elsewhere(), 1, "the job left for the next take");
    drop(second);
    // The rollback reaches the server a moment after the drop.
    let claimed = eventually_some(
        "the dropped take's job",
        Duration::from_secs(10),
        || async {
            let claimed = storage.claim(&q, 10, LEASE).await.unwrap();
            (!claimed.is_empty()).then_some(claimed)
        },
    )
    .await;
    assert_eq!(
        claimed.iter().map(n_of).collect::<Vec<_>>(),
        vec![3],
        "a dropped take puts its job back; claimers skip held ones"
    );
    assert_eq!(claimed[0].attempt, 1, "the dropped take changed nothing");
    storage.ack(&[claimed[0].receipt()]).await.unwrap();

    first.commit().await.unwrap();
    let depth = storage.depth(&q).await.unwrap();
    assert_eq!(
        (depth.ready, depth.scheduled, depth.in_flight),
        (0, 1, 0),
        "committed takes are gone; the delayed job stays"
    );
    let empty = storage.take(&q, 10).await.unwrap().unwrap();
    assert!(empty.jobs().is_empty());
    assert_eq!(empty.held_elsewhere(), 0);
    assert!(empty.next_due_in().is_some(), "an empty take still tells");
}

/// A dedup key suppresses duplicates while the job is queued or leased, and is free again
/// after the ack.
pub async fn dedup_key_suppresses_duplicates(storage: &dyn JobQueue) {
    let q = queue("dedup");
    let keyed = |n| job("dedup", n).with_dedup_key("AU:ref-1");
    storage.enqueue(&[keyed(1), keyed(2)]).await.unwrap();
    storage.enqueue(&[keyed(3)]).await.unwrap();
    assert_eq!(storage.depth(&q).await.unwrap().ready, 1);
    let claimed = storage.claim(&q, 10, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(n_of(&claimed[0]), 1);
    assert_eq!(claimed[0].dedup_key.as_deref(), Some("AU:ref-1"));
    storage.enqueue(&[keyed(4)]).await.unwrap();
    assert_eq!(
        storage.depth(&q).await.unwrap().ready,
        0,
        "suppressed while leased"
    );
    storage.ack(&[claimed[0].receipt()]).await.unwrap();
    storage.enqueue(&[keyed(5)]).await.unwrap();
    let again = storage.claim(&q, 10, LEASE).await.unwrap();
    assert_eq!(again.iter().map(n_of).collect::<Vec<_>>(), vec![5]);
}

/// An unacked job comes back after its lease with attempt 2; the stale receipt can no
/// longer ack, retry or dead-letter it.
pub async fn expired_lease_returns_the_job(storage: &dyn JobQueue) {
    let q = queue("lease");
    storage.enqueue(&[job("lease", 7)]).await.unwrap();
    let first = storage
        .claim(&q, 1, Duration::from_millis(200))
        .await
        .unwrap()
        .remove(0);
    assert!(storage.claim(&q, 1, LEASE).await.unwrap().is_empty());
    let q = &q;
    let second = eventually_some(
        "the job to come back after its lease",
        Duration::from_secs(5),
        || async move { storage.claim(q, 1, LEASE).await.unwrap().pop() },
    )
    .await;
    assert_eq!(second.id, first.id);
    assert_eq!(second.attempt, 2);
    assert_ne!(second.lease_token, first.lease_token);
    assert_eq!(storage.ack(&[first.receipt()]).await.unwrap(), 0);
    assert!(
        !storage
            .retry(first.receipt(), Duration::ZERO, "stale")
            .await
            .unwrap()
    );
    assert!(!storage.dead_letter(first.receipt(), "stale").await.unwrap());
    assert!(!storage.extend_lease(first.receipt(), LEASE).await.unwrap());
    assert_eq!(storage.ack(&[second.receipt()]).await.unwrap(), 1);
}

/// Extending a lease keeps the job away from other consumers.
pub async fn extend_lease_keeps_the_job(storage: &dyn JobQueue) {
    let q = queue("heartbeat");
    storage.enqueue(&[job("heartbeat", 1)]).await.unwrap();
    let held = storage
        .claim(&q, 1, Duration::from_millis(100))
        .await
        .unwrap()
        .remove(0);
    assert!(storage.extend_lease(held.receipt(), LEASE).await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        storage.claim(&q, 1, LEASE).await.unwrap().is_empty(),
        "still leased"
    );
    assert_eq!(storage.ack(&[held.receipt()]).await.unwrap(), 1);
}

/// Retry records the error and makes the job claimable after the delay with the next
/// attempt number.
pub async fn retry_with_backoff(storage: &dyn JobQueue) {
    let q = queue("retry");
    storage.enqueue(&[job("retry", 1)]).await.unwrap();
    let first = storage.claim(&q, 1, LEASE).await.unwrap().remove(0);
    assert!(
        storage
            .retry(first.receipt(), Duration::from_millis(300), "boom")
            .await
            .unwrap()
    );
    let depth = storage.depth(&q).await.unwrap();
    assert_eq!((depth.scheduled, depth.in_flight), (1, 0));
    assert!(
        storage.claim(&q, 1, LEASE).await.unwrap().is_empty(),
        "backoff respected"
    );
    let q = &q;
    let retried = eventually_some("the retried job", Duration::from_secs(5), || async move {
        storage.claim(q, 1, LEASE).await.unwrap().pop()
    })
    .await;
    assert_eq!(retried.attempt, 2);
    assert_eq!(retried.last_error.as_deref(), Some("boom"));
}

/// Dead letters are listed with their error and attempts, and replay puts them back as
/// fresh jobs.
pub async fn dead_letter_and_replay(storage: &dyn JobQueue) {
    let q = queue("dlq");
    storage
        .enqueue(&[job("dlq", 1), job("dlq", 2), job("elsewhere", 3)])
        .await
        .unwrap();
    let claimed = storage.claim(&q, 2, LEASE).await.unwrap();
    for held in &claimed {
        assert!(
            storage
                .dead_letter(held.receipt(), "gave up")
                .await
                .unwrap()
        );
    }
    let elsewhere = storage
        .claim(&queue("elsewhere"), 1, LEASE)
        .await
        .unwrap()
        .remove(0);
    storage
        .dead_letter(elsewhere.receipt(), "also")
        .await
        .unwrap();

    assert_eq!(storage.depth(&q).await.unwrap().dead, 2);
    let all = storage.dead_letters(None, None, 100).await.unwrap();
    assert_eq!(all.len(), 3);
    let mine = storage.dead_letters(Some(&q), None, 100).await.unwrap();
    assert_eq!(mine.len(), 2);
    assert!(
        mine.iter()
            .all(|d| d.attempts == 1 && d.last_error.as_deref() == Some("gave up"))
    );
    let page = storage
        .dead_letters(Some(&q), Some(mine[0].id), 100)
        .await
        .unwrap();
    assert_eq!(page.len(), 1, "paging by id");

    assert!(storage.replay_dead_letter(mine[0].id).await.unwrap());
    assert!(
        !storage.replay_dead_letter(mine[0].id).await.unwrap(),
        "replayed once"
    );
    assert!(!storage.replay_dead_letter(i64::MAX).await.unwrap());
    let replayed = storage.claim(&q, 10, LEASE).await.unwrap();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].attempt, 1, "attempts reset");
    assert_eq!(replayed[0].payload, mine[0].payload);
    assert_eq!(storage.depth(&q).await.unwrap().dead, 1);
}

/// Several consumers claiming concurrently never hold the same job at once, and together
/// they see every job exactly once.
pub async fn concurrent_consumers_never_share_a_job(storage: Arc<dyn JobQueue>) {
    const JOBS: u64 = 2_000;
    let q = queue("contended");
    let jobs: Vec<_> = (0..JOBS).map(|n| job("contended", n)).collect();
    for chunk in jobs.chunks(500) {
        storage.enqueue(chunk).await.unwrap();
    }
    let seen: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let mut consumers = Vec::new();
    for _ in 0..4 {
        let storage = storage.clone();
        let seen = seen.clone();
        let q = q.clone();
        consumers.push(tokio::spawn(async move {
            loop {
                let claimed = storage.claim(&q, 25, LEASE).await.unwrap();
                if claimed.is_empty() {
                    return;
                }
                {
                    let mut seen = seen.lock().unwrap();
                    for held in &claimed {
                        *seen.entry(n_of(held)).or_default() += 1;
                    }
                }
                let receipts: Vec<_> = claimed.iter().map(|j| j.receipt()).collect();
                assert_eq!(storage.ack(&receipts).await.unwrap(), receipts.len() as u64);
            }
        }));
    }
    for consumer in consumers {
        consumer.await.unwrap();
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len() as u64, JOBS, "every job handled");
    assert!(
        seen.values().all(|&count| count == 1),
        "no job handled twice"
    );
}

/// An idle consumer waiting on a queue wakes promptly when a job is enqueued.
pub async fn waiting_consumer_wakes_on_enqueue(storage: Arc<dyn JobQueue>) {
    let q = queue("wake");
    let waiter = {
        let storage = storage.clone();
        let q = q.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            storage.wait_for_jobs(&q, Duration::from_secs(20)).await;
            start.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    storage.enqueue(&[job("wake", 1)]).await.unwrap();
    let waited = waiter.await.unwrap();
    assert!(
        waited < Duration::from_secs(10),
        "woke after {waited:?}, not at the timeout"
    );
}
