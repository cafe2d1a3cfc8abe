//! Storage ports (messages, jobs, events, ACL, units of work) on the SQL backends.

/// Calls `$case!` once per conformance case: `by_ref` cases take `&dyn Storage`, `shared`
/// cases take `Arc<dyn Storage>`.
macro_rules! for_each_storage_case {
    ($case:ident) => {
        $case!(by_ref messages::insert_then_get);
        $case!(by_ref messages::insert_is_idempotent_and_never_overwrites);
        $case!(by_ref messages::update_follows_transition_rules);
        $case!(by_ref messages::concurrent_updates_serialise);
        $case!(by_ref messages::list_filters_and_pages);
        $case!(by_ref messages::updates_move_messages_to_the_end);
        $case!(by_ref messages::batch_insert_outcomes);
        $case!(by_ref jobs::enqueue_claim_ack);
        $case!(by_ref jobs::delayed_jobs_wait);
        $case!(by_ref jobs::next_due_in_tells_when_a_job_becomes_claimable);
        $case!(by_ref jobs::dedup_key_suppresses_duplicates);
        $case!(by_ref jobs::expired_lease_returns_the_job);
        $case!(by_ref jobs::extend_lease_keeps_the_job);
        $case!(by_ref jobs::retry_with_backoff);
        $case!(by_ref jobs::dead_letter_and_replay);
        $case!(by_ref events::append_is_idempotent_and_ordered);
        $case!(by_ref events::no_fan_out_without_subscribers);
        $case!(by_ref events::batch_append_is_ordered_and_idempotent);
        $case!(by_ref acl::grants_are_per_object_and_reader);
        $case!(by_ref subscriptions::upsert_renews_and_remove_deletes);
        $case!(by_ref subscriptions::matching_by_prefix_one_per_callback);
        $case!(by_ref subscriptions::delivery_health_is_recorded);
        $case!(by_ref subscriptions::matching_follows_the_reference_prefix_table);
        $case!(by_ref subscriptions::fanout_reads_and_records_in_bulk);
        $case!(by_ref unit_of_work::commit_makes_everything_visible);
        $case!(by_ref unit_of_work::dropped_unit_leaves_nothing);
        $case!(by_ref unit_of_work::failed_unit_leaves_nothing);
        $case!(shared jobs::concurrent_consumers_never_share_a_job);
        $case!(shared jobs::waiting_consumer_wakes_on_enqueue);
    };
}

mod sqlite {
    use igl_testkit::backends::sqlite as fresh;
    use igl_testkit::conformance::*;

    macro_rules! case {
        (by_ref $module:ident :: $name:ident) => {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $module::$name(&*fresh().await.storage).await;
            }
        };
        (shared $module:ident :: $name:ident) => {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $module::$name(fresh().await.storage.clone()).await;
            }
        };
    }
    for_each_storage_case!(case);
}

mod postgres {
    use igl_testkit::backends::postgres as fresh;
    use igl_testkit::conformance::*;

    macro_rules! case {
        (by_ref $module:ident :: $name:ident) => {
            #[cfg_attr(igl_skip_postgres, ignore = "set IGL_TEST_POSTGRES_URL to run")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $module::$name(&*fresh().await.storage).await;
            }
        };
        (shared $module:ident :: $name:ident) => {
            #[cfg_attr(igl_skip_postgres, ignore = "set IGL_TEST_POSTGRES_URL to run")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $module::$name(fresh().await.storage.clone()).await;
            }
        };
    }
    for_each_storage_case!(case);
}

/// PostgreSQL only (SQLite does not implement `take`; the relay claims there).
#[cfg_attr(igl_skip_postgres, ignore = "set IGL_TEST_POSTGRES_URL to run")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_take_holds_jobs_until_commit() {
    let store = igl_testkit::backends::postgres().await;
    igl_testkit::conformance::jobs::take_holds_jobs_until_commit(&*store.storage).await;
}

/// SQLite's single writer cannot stay in a transaction while a broker confirms: it says so
/// and the relay falls back to claim and ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_does_not_take() {
    let store = igl_testkit::backends::sqlite().await;
    store
        .storage
        .enqueue(&[igl_testkit::fixtures::job("taken", 1)])
        .await
        .unwrap();
    let q = igl_testkit::fixtures::queue("taken");
    assert!(store.storage.take(&q, 10).await.unwrap().is_none());
    assert_eq!(store.storage.depth(&q).await.unwrap().ready, 1);
}

/// A PostgreSQL store in a fresh schema whose connections carry the schema as their
/// `application_name` (to find them in `pg_stat_activity`), with the server URL and the
/// schema name.
async fn tagged_postgres_store() -> (String, String, igl_store::PostgresStore) {
    let base = igl_testkit::backends::postgres_url().unwrap();
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}application_name={schema}");
    let store = igl_store::PostgresStore::connect(&url, 2, Some(&schema))
        .await
        .unwrap();
    (base, schema, store)
}

/// PostgreSQL only: pooled connections are not pinged before use unless they sat idle, so
/// after the server closes them all (a restart, `pg_terminate_backend`) a statement may
/// fail once per pooled connection — as a retryable `Unavailable` — and then the store works
/// again with fresh connections.
#[cfg_attr(igl_skip_postgres, ignore = "set IGL_TEST_POSTGRES_URL to run")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_recovers_when_the_server_closes_its_connections() {
    use igl_core::{JobQueue, StoreError};

    let (base, schema, store) = tagged_postgres_store().await;
    let q = igl_testkit::fixtures::queue("closed");
    store
        .enqueue(&[igl_testkit::fixtures::job("closed", 1)])
        .await
        .unwrap();

    let admin = sqlx::PgPool::connect(&base).await.unwrap();
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(&schema)
    .fetch_all(&admin)
    .await
    .unwrap();
    assert!(!terminated.is_empty(), "the pool had connections to close");

    let mut failures = 0;
    let depth = loop {
        match store.depth(&q).await {
            Ok(depth) => break depth,
            Err(StoreError::Unavailable(_)) if failures < 3 => failures += 1,
            Err(error) => panic!("not a retryable failure, or too many: {error}"),
        }
    };
    eprintln!("failures before recovery: {failures}");
    assert_eq!(depth.ready, 1, "the job survived; failures: {failures}");
    igl_store::PostgresStore::drop_schema(&base, &schema)
        .await
        .unwrap();
}

/// PostgreSQL only: a store holds no LISTEN connection until something waits for its jobs
/// (every NOTIFY signals every listening backend of the database, so the APIs and the
/// broker-fed workers of a scale-out node must not listen); the first wait starts one.
#[cfg_attr(igl_skip_postgres, ignore = "set IGL_TEST_POSTGRES_URL to run")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_listens_only_once_something_waits() {
    use std::time::Duration;

    use igl_core::JobQueue;

    let (base, schema, store) = tagged_postgres_store().await;
    let q = igl_testkit::fixtures::queue("listen");
    store
        .enqueue(&[igl_testkit::fixtures::job("listen", 1)])
        .await
        .unwrap();
    let admin = sqlx::PgPool::connect(&base).await.unwrap();
    let listeners = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = $1 AND query ILIKE 'LISTEN%'",
        )
        .bind(&schema)
        .fetch_one(&admin)
        .await
        .unwrap()
    };
    store.depth(&q).await.unwrap();
    assert_eq!(listeners().await, 0, "enqueues and reads do not listen");

    store.wait_for_jobs(&q, Duration::ZERO).await;
    igl_testkit::conformance::jobs::eventually(
        "the first wait to start a listener",
        Duration::from_secs(10),
        || async { listeners().await == 1 },
    )
    .await;
    store.wait_for_jobs(&q, Duration::ZERO).await;
    assert_eq!(listeners().await, 1, "one listener per store");
    igl_store::PostgresStore::drop_schema(&base, &schema)
        .await
        .unwrap();
}

/// PostgreSQL only: an enqueue in one process (store instance) wakes a consumer waiting in
/// another, through `NOTIFY`.
#[cfg_attr(igl_skip_postgres, ignore = "set IGL_TEST_POSTGRES_URL to run")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_enqueue_wakes_consumers_in_other_processes() {
    use std::time::{Duration, Instant};

    use igl_core::JobQueue;

    let url = igl_testkit::backends::postgres_url().unwrap();
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let producer = igl_store::PostgresStore::connect(&url, 2, Some(&schema))
        .await
        .unwrap();
    let consumer = igl_store::PostgresStore::connect(&url, 2, Some(&schema))
        .await
        .unwrap();
    let queue = igl_testkit::fixtures::queue("cross");
    // The consumer starts listening with its first wait; a notification sent before its
    // LISTEN is up is missed, so the producer enqueues until the waiter wakes (each enqueue
    // notifies), well before the wait's own 20 s timeout.
    let waiter = {
        let queue = queue.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            consumer
                .wait_for_jobs(&queue, Duration::from_secs(20))
                .await;
            start.elapsed()
        })
    };
    let mut enqueued = 0;
    while !waiter.is_finished() && enqueued < 50 {
        producer
            .enqueue(&[igl_testkit::fixtures::job("cross", enqueued)])
            .await
            .unwrap();
        enqueued += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let waited = waiter.await.unwrap();
    assert!(
        waited < Duration::from_secs(10),
        "woke after {waited:?} ({enqueued} enqueues), not at the timeout"
    );
    igl_store::PostgresStore::drop_schema(&url, &schema)
        .await
        .unwrap();
}
