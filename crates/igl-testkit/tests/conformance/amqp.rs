//! The job-queue conformance suite on RabbitMQ (`IGL_TEST_AMQP_URL`), plus the broker-only
//! behaviour: wake-ups across processes, the delivery limit, reconnecting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use igl_core::JobQueue;
use igl_testkit::backends::amqp as fresh;
use igl_testkit::conformance::jobs;
use igl_testkit::conformance::jobs::eventually_some;
use igl_testkit::fixtures::{job, queue};

/// Every queue name the job cases use (deleted after a passing case).
const QUEUES: &[&str] = &[
    "work",
    "other",
    "later",
    "lease",
    "heartbeat",
    "retry",
    "dlq",
    "elsewhere",
    "contended",
    "wake",
    "cross",
    "poison",
    "again",
];

macro_rules! case {
    (by_ref $name:ident) => {
        #[cfg_attr(igl_skip_amqp, ignore = "set IGL_TEST_AMQP_URL to run")]
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let broker = fresh().await;
            jobs::$name(&broker.queue).await;
            broker.cleanup(QUEUES).await;
        }
    };
    (shared $name:ident) => {
        #[cfg_attr(igl_skip_amqp, ignore = "set IGL_TEST_AMQP_URL to run")]
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let broker = fresh().await;
            jobs::$name(Arc::new(broker.queue.clone())).await;
            broker.cleanup(QUEUES).await;
        }
    };
}

case!(by_ref enqueue_claim_ack);
case!(by_ref delayed_jobs_wait);
// Not run here: `jobs::dedup_key_suppresses_duplicates`. AMQP 0-9-1 has no way to look up
// queued or unacked messages by key (RabbitMQ would need its deduplication plugin, which
// we do not assume), so the broker carries dedup keys without enforcing them. In the node's
// broker shape every job is enqueued through the SQL outbox, which enforces the key while
// the job waits there (the SQL suites run this case), and handlers are idempotent for the
// duplicates that can still happen (docs/storage.md, "The broker shape").
case!(by_ref expired_lease_returns_the_job);
case!(by_ref extend_lease_keeps_the_job);
case!(by_ref retry_with_backoff);
case!(by_ref dead_letter_and_replay);
case!(shared concurrent_consumers_never_share_a_job);
case!(shared waiting_consumer_wakes_on_enqueue);

/// A consumer waiting in one process is woken by the broker's delivery of a job published
/// by another (a second connection to the same queues).
#[cfg_attr(igl_skip_amqp, ignore = "set IGL_TEST_AMQP_URL to run")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_wakes_consumers_in_other_processes() {
    let producer = fresh().await;
    let consumer = igl_queue::AmqpQueue::connect(producer.options.clone())
        .await
        .unwrap();
    let q = queue("cross");
    // Declare the topology before waiting.
    assert!(
        consumer
            .claim(&q, 1, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty()
    );
    let waiter = {
        let consumer = consumer.clone();
        let q = q.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            consumer.wait_for_jobs(&q, Duration::from_secs(20)).await;
            (
                start.elapsed(),
                consumer
                    .claim(&q, 10, Duration::from_secs(30))
                    .await
                    .unwrap(),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    producer.queue.enqueue(&[job("cross", 1)]).await.unwrap();
    let (waited, claimed) = waiter.await.unwrap();
    assert!(
        waited < Duration::from_secs(10),
        "woke after {waited:?}, not at the timeout"
    );
    assert_eq!(
        claimed.len(),
        1,
        "the delivery that woke the consumer is claimable"
    );
    consumer.close().await;
    producer.cleanup(QUEUES).await;
}

/// A job whose consumers keep dying (its delivery returned to the queue over and over)
/// ends in the dead-letter queue by the broker's delivery limit, listed with the reason,
/// and can be replayed.
#[cfg_attr(igl_skip_amqp, ignore = "set IGL_TEST_AMQP_URL to run")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_limit_dead_letters_a_poison_job() {
    let mut options = igl_testkit::backends::amqp_options();
    options.delivery_limit = 2;
    let broker = igl_queue::AmqpQueue::connect(options).await.unwrap();
    let q = queue("poison");
    broker.enqueue(&[job("poison", 1)]).await.unwrap();
    // Three consumers "crash" in turn (their leases expire); the third return exceeds the
    // limit of 2 redeliveries.
    for attempt in 1..=3 {
        let held = eventually_some("the poison job", Duration::from_secs(10), || async {
            broker
                .claim(&q, 1, Duration::from_millis(50))
                .await
                .unwrap()
                .pop()
        })
        .await;
        assert_eq!(held.attempt, attempt);
    }
    let letter = eventually_some("the dead letter", Duration::from_secs(10), || async {
        broker.dead_letters(Some(&q), None, 10).await.unwrap().pop()
    })
    .await;
    assert_eq!(letter.payload["n"], 1);
    assert!(
        letter
            .last_error
            .as_deref()
            .is_some_and(|error| error.contains("delivery_limit")),
        "{:?}",
        letter.last_error
    );
    assert!(
        broker
            .claim(&q, 1, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(broker.replay_dead_letter(letter.id).await.unwrap());
    let replayed = broker.claim(&q, 1, Duration::from_secs(30)).await.unwrap();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].attempt, 1);
    broker.delete_topology(&[q]).await.unwrap();
    broker.close().await;
}

/// After the connection is lost, the next operation reconnects; leases of the old
/// connection are lost (the broker redelivered their jobs) and their receipts stop working.
#[cfg_attr(igl_skip_amqp, ignore = "set IGL_TEST_AMQP_URL to run")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_connection_is_lost() {
    let broker = fresh().await;
    let q = queue("again");
    broker.queue.enqueue(&[job("again", 1)]).await.unwrap();
    let held = broker
        .queue
        .claim(&q, 1, Duration::from_secs(30))
        .await
        .unwrap()
        .remove(0);
    broker.queue.close().await;
    let again = eventually_some(
        "the job after reconnecting",
        Duration::from_secs(10),
        || async {
            broker
                .queue
                .claim(&q, 1, Duration::from_secs(30))
                .await
                .ok()?
                .pop()
        },
    )
    .await;
    assert_eq!(again.id, held.id);
    assert_eq!(again.attempt, 2);
    assert_eq!(broker.queue.ack(&[held.receipt()]).await.unwrap(), 0);
    assert_eq!(broker.queue.ack(&[again.receipt()]).await.unwrap(), 1);
    broker.cleanup(QUEUES).await;
}

/// Over TLS (`amqps://`, trusting the test CA) jobs travel as over plain AMQP: the
/// conformance case for enqueue, claim and ack, and a retry through a delay tier.
#[cfg_attr(
    igl_skip_amqps,
    ignore = "set IGL_TEST_AMQPS_URL and IGL_TEST_AMQP_CA_FILE to run"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_travel_over_tls() {
    let options = igl_testkit::backends::amqps_options().expect("IGL_TEST_AMQPS_URL");
    assert!(options.url.starts_with("amqps://"), "{options:?}");
    let broker = igl_testkit::backends::TestBroker::connect(options).await;
    jobs::enqueue_claim_ack(&broker.queue).await;
    jobs::retry_with_backoff(&broker.queue).await;
    broker.cleanup(QUEUES).await;
}

/// A broker whose certificate no trusted CA signed is refused, with the reason.
#[cfg_attr(
    igl_skip_amqps,
    ignore = "set IGL_TEST_AMQPS_URL and IGL_TEST_AMQP_CA_FILE to run"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_broker_certificate_is_refused() {
    let mut options = igl_testkit::backends::amqps_options().expect("IGL_TEST_AMQPS_URL");
    options.ca_certificates = None;
    options.operation_timeout = Duration::from_secs(5);
    let error = igl_queue::AmqpQueue::connect(options)
        .await
        .expect_err("the test CA is not a system root");
    let mut chain = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        chain = format!("{chain}: {cause}");
        source = cause.source();
    }
    let chain = chain.to_lowercase();
    assert!(
        chain.contains("certificate") || chain.contains("issuer"),
        "{chain}"
    );
}
