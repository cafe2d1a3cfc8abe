//! Envelopes on real RabbitMQ (`IGL_TEST_AMQP_URL`; ignored, with the reason, without it):
//! the outbox relay's jobs of one queue travel several to a broker message, and every job
//! still keeps the contract of a job of its own (lease, ack, retry, dead-letter, attempts).

use std::time::{Duration, Instant};

use igl_core::{ClaimedJob, JobId, JobQueue, QueueDepth, QueueName};
use igl_domain::Timestamp;
use igl_queue::AmqpQueue;
use igl_testkit::backends::{TestBroker, amqp_options};
use igl_testkit::conformance::jobs::eventually_some;
use igl_testkit::fixtures::queue;

const LEASE: Duration = Duration::from_secs(30);

/// A broker whose relay side packs up to `per_message` jobs of a queue into one message.
async fn broker(per_message: usize) -> TestBroker {
    let mut options = amqp_options();
    options.jobs_per_message = per_message;
    TestBroker::connect(options).await
}

/// `count` committed outbox jobs of `q`, numbered from 1 (ids 1001, 1002, …).
fn outbox_jobs(q: &QueueName, count: u64) -> Vec<ClaimedJob> {
    (1..=count)
        .map(|n| ClaimedJob {
            id: JobId(1000 + i64::try_from(n).unwrap()),
            queue: q.clone(),
            payload: serde_json::json!({"type": "test.v1", "n": n}),
            attempt: 1,
            lease_token: 0,
            enqueued_at: Timestamp::now_utc(),
            dedup_key: (n == 1).then(|| "first".to_owned()),
            last_error: None,
        })
        .collect()
}

fn numbers(jobs: &[ClaimedJob]) -> Vec<u64> {
    jobs.iter()
        .map(|job| job.payload["n"].as_u64().unwrap())
        .collect()
}

async fn claim(queue: &AmqpQueue, q: &QueueName, max: usize, lease: Duration) -> Vec<ClaimedJob> {
    queue.claim(q, max, lease).await.unwrap()
}

/// Ready broker messages of `q` (an envelope counts once) and this process's held jobs.
async fn depth(queue: &AmqpQueue, q: &QueueName) -> (u64, u64, u64) {
    let QueueDepth {
        ready,
        in_flight,
        dead,
        ..
    } = queue.depth(q).await.unwrap();
    (ready, in_flight, dead)
}

/// Six jobs with four per message travel as two messages; claims hand them out one by one
/// in order (a claim smaller than an envelope leaves the rest for the next claim), with
/// their ids, payloads and dedup keys; the broker's message goes once every job is acked.
#[cfg_attr(igl_skip_amqp, ignore = "set IGL_TEST_AMQP_URL to run")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_is_claimed_job_by_job_and_acked_once_all_are_done() {
    let broker = broker(4).await;
    let q = queue("env-order");
    broker
        .queue
        .publish_outbox(&outbox_jobs(&q, 6))
        .await
        .unwrap();
    assert_eq!(depth(&broker.queue, &q).await, (2, 0, 0));

    let first = claim(&broker.queue, &q, 3, LEASE).await;
    assert_eq!(numbers(&first), [1, 2, 3]);
    assert_eq!(first[0].id, JobId(1001));
    assert_eq!(first[0].dedup_key.as_deref(), Some("first"));
    assert_eq!(first[1].dedup_key, None);
    assert!(first.iter().all(|job| job.attempt == 1));
    // The fourth job of the first envelope waits in this process (counted in flight).
    assert_eq!(depth(&broker.queue, &q).await, (1, 4, 0));
    let mut rest = claim(&broker.queue, &q, 3, LEASE).await;
    rest.extend(claim(&broker.queue, &q, 3, LEASE).await);
    assert_eq!(numbers(&rest), [4, 5, 6]);

    let receipts: Vec<_> = first.iter().chain(&rest).map(ClaimedJob::receipt).collect();
    assert_eq!(broker.queue.ack(&receipts).await.unwrap(), 6);
    assert_eq!(broker.queue.ack(&receipts).await.unwrap(), 0, "acked once");
    assert_eq!(depth(&broker.queue, &q).await, (0, 0, 0));
    // Nothing comes back to a consumer of another connection either.
    let other = AmqpQueue::connect(broker.options.clone()).await.unwrap();
    assert!(claim(&other, &q, 10, LEASE).await.is_empty());
    other.close().await;
    broker.cleanup(&["env-order"]).await;
}

/// A consumer that dies with an envelope partly done (its connection drops): the broker
/// redelivers the whole envelope, which the next claim splits into single jobs, so each
/// job runs again as attempt 2 (at least once) — also when another consumer that had only
/// prefetched the envelope died in between — and the split envelope never comes back.
#[cfg_attr(igl_skip_amqp, ignore = "set IGL_TEST_AMQP_URL to run")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_of_a_dead_consumer_comes_back_as_single_jobs() {
    let broker = broker(16).await;
    let q = queue("env-crash");
    broker
        .queue
        .publish_outbox(&outbox_jobs(&q, 3))
        .await
        .unwrap();
    let held = claim(&broker.queue, &q, 10, LEASE).await;
    assert_eq!(numbers(&held), [1, 2, 3]);
    assert_eq!(broker.queue.ack(&[held[0].receipt()]).await.unwrap(), 1);
    // "Crash": the connection goes, with the envelope unacked.
    broker.queue.close().await;
    // A consumer that only prefetched the envelope dies too: a return that is no attempt.
    let prefetcher = AmqpQueue::connect(broker.options.clone()).await.unwrap();
    prefetcher.wait_for_jobs(&q, Duration::from_secs(10)).await;
    assert_eq!(depth(&prefetcher, &q).await.1, 1, "prefetched, not claimed");
    prefetcher.close().await;

    let survivor = AmqpQueue::connect(broker.options.clone()).await.unwrap();
    // The first claim splits the envelope (and hands out nothing); later ones get the jobs.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut again = Vec::new();
    while again.len() < 3 {
        assert!(Instant::now() < deadline, "only {again:?} came back");
        again.extend(claim(&survivor, &q, 10, LEASE).await);
    }
    again.sort_by_key(|job| job.id);
    assert_eq!(numbers(&again), [1, 2, 3]);
    assert!(again.iter().all(|job| job.attempt == 2), "{again:?}");
    assert_eq!(again[0].dedup_key.as_deref(), Some("first"));
    let receipts: Vec<_> = again.iter().map(ClaimedJob::receipt).collect();
    assert_eq!(survivor.ack(&receipts).await.unwrap(), 3);
    assert_eq!(depth(&survivor, &q).await, (0, 0, 0));
    assert!(claim(&survivor, &q, 10, LEASE).await.is_empty());
    // The receipts of the dead connection no longer work.
    assert_eq!(broker.queue.ack(&[held[1].receipt()]).await.unwrap(), 0);
    survivor.close().await;
    broker.cleanup(&["env-crash"]).await;
}

/// A job of an envelope whose lease runs out comes back alone (attempt 2, the old receipt
/// dead) while the other jobs of its envelope are acked as usual; then nothing is left.
#[cfg_attr(igl_skip_amqp, ignore = "set IGL_TEST_AMQP_URL to run")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_returns_only_its_job_of_the_envelope() {
    let broker = broker(16).await;
    let q = queue("env-lease");
    broker
        .queue
        .publish_outbox(&outbox_jobs(&q, 2))
        .await
        .unwrap();
    let short = claim(&broker.queue, &q, 1, Duration::from_millis(50)).await;
    let long = claim(&broker.queue, &q, 1, LEASE).await;
    assert_eq!((numbers(&short), numbers(&long)), (vec![1], vec![2]));
    assert_eq!(broker.queue.ack(&[long[0].receipt()]).await.unwrap(), 1);

    let back = eventually_some("the expired job", Duration::from_secs(10), || async {
        claim(&broker.queue, &q, 10, LEASE).await.pop()
    })
    .await;
    assert_eq!((back.id, back.attempt), (short[0].id, 2));
    assert_eq!(broker.queue.ack(&[short[0].receipt()]).await.unwrap(), 0);
    assert_eq!(broker.queue.ack(&[back.receipt()]).await.unwrap(), 1);
    assert_eq!(depth(&broker.queue, &q).await, (0, 0, 0));
    assert!(claim(&broker.queue, &q, 10, LEASE).await.is_empty());
    broker.cleanup(&["env-lease"]).await;
}

/// Retrying one job of an envelope and dead-lettering another work as for single jobs:
/// the retry comes back as attempt 2 with its error, the dead letter is listed alone and
/// can be replayed; the envelope is settled by the two.
#[cfg_attr(igl_skip_amqp, ignore = "set IGL_TEST_AMQP_URL to run")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_of_an_envelope_retry_and_dead_letter_one_by_one() {
    let broker = broker(16).await;
    let q = queue("env-retry");
    broker
        .queue
        .publish_outbox(&outbox_jobs(&q, 2))
        .await
        .unwrap();
    let held = claim(&broker.queue, &q, 10, LEASE).await;
    assert_eq!(numbers(&held), [1, 2]);
    assert!(
        broker
            .queue
            .retry(held[0].receipt(), Duration::ZERO, "try again")
            .await
            .unwrap()
    );
    assert!(
        broker
            .queue
            .dead_letter(held[1].receipt(), "hopeless")
            .await
            .unwrap()
    );
    let retried = eventually_some("the retried job", Duration::from_secs(10), || async {
        claim(&broker.queue, &q, 10, LEASE).await.pop()
    })
    .await;
    assert_eq!((retried.id, retried.attempt), (held[0].id, 2));
    assert_eq!(retried.last_error.as_deref(), Some("try again"));
    assert_eq!(broker.queue.ack(&[retried.receipt()]).await.unwrap(), 1);

    // (Counted before listing: a listing returns what it browsed asynchronously.)
    assert_eq!(depth(&broker.queue, &q).await, (0, 0, 1));
    let letters = broker.queue.dead_letters(Some(&q), None, 10).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].payload["n"], 2);
    assert_eq!(letters[0].last_error.as_deref(), Some("hopeless"));
    assert!(
        broker
            .queue
            .replay_dead_letter(letters[0].id)
            .await
            .unwrap()
    );
    let replayed = claim(&broker.queue, &q, 10, LEASE).await;
    assert_eq!(numbers(&replayed), [2]);
    assert_eq!(replayed[0].attempt, 1);
    assert_eq!(broker.queue.ack(&[replayed[0].receipt()]).await.unwrap(), 1);
    assert_eq!(depth(&broker.queue, &q).await, (0, 0, 0));
    broker.cleanup(&["env-retry"]).await;
}

/// With one job per message the relay's jobs travel as single messages (the format before
/// envelopes, which consumers still read).
#[cfg_attr(igl_skip_amqp, ignore = "set IGL_TEST_AMQP_URL to run")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_job_per_message_publishes_single_jobs() {
    let broker = broker(1).await;
    let q = queue("env-single");
    broker
        .queue
        .publish_outbox(&outbox_jobs(&q, 3))
        .await
        .unwrap();
    assert_eq!(depth(&broker.queue, &q).await, (3, 0, 0));
    let held = claim(&broker.queue, &q, 10, LEASE).await;
    assert_eq!(numbers(&held), [1, 2, 3]);
    let receipts: Vec<_> = held.iter().map(ClaimedJob::receipt).collect();
    assert_eq!(broker.queue.ack(&receipts).await.unwrap(), 3);
    assert_eq!(depth(&broker.queue, &q).await, (0, 0, 0));
    broker.cleanup(&["env-single"]).await;
}
