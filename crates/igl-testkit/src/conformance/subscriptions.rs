//! The `SubscriptionStore` contract.

use igl_core::Storage;
use igl_core::subscriptions::{DeliveryOutcome, HubSecret, NewSubscription};
use igl_domain::Timestamp;
use time::Duration;

fn subscription(topic: &str, callback: &str, lease: Duration) -> NewSubscription {
    NewSubscription {
        topic: topic.into(),
        callback: callback.into(),
        secret: None,
        expires_at: Timestamp::now_utc() + lease,
    }
}

/// Re-subscribing the same (topic, callback) renews instead of duplicating; `a.b`, `a.b.`
/// and `a.b.*` are one subscription; unsubscribe removes it.
pub async fn upsert_renews_and_remove_deletes(storage: &dyn Storage) {
    let day = Duration::days(1);
    let first = storage
        .upsert_subscription(&subscription("UN.CEFACT.*", "http://s/1", day))
        .await
        .unwrap();
    assert_eq!(first.topic_key, "UN.CEFACT");
    let mut renewal = subscription("un.cefact", "http://s/1", Duration::days(2));
    renewal.secret = Some(HubSecret("s3cret".into()));
    let renewed = storage.upsert_subscription(&renewal).await.unwrap();
    assert_eq!(renewed.id, first.id, "renewed, not duplicated");
    assert_eq!(renewed.secret, Some(HubSecret("s3cret".into())));
    assert!(renewed.expires_at > first.expires_at);
    assert_eq!(storage.list_subscriptions(0, 100).await.unwrap().len(), 1);
    assert!(
        storage
            .remove_subscription("UN.CEFACT.", "http://s/1")
            .await
            .unwrap()
    );
    assert!(
        !storage
            .remove_subscription("UN.CEFACT", "http://s/1")
            .await
            .unwrap()
    );
    assert!(storage.list_subscriptions(0, 100).await.unwrap().is_empty());
}

/// Matching follows the reference (REFERENCE-WIRE §3.3): segment prefixes,
/// case-insensitive, one delivery per callback, expired subscriptions skipped.
pub async fn matching_by_prefix_one_per_callback(storage: &dyn Storage) {
    let day = Duration::days(1);
    for (topic, callback) in [
        ("AA.BB.CCCC", "http://s/specific"),
        ("aa", "http://s/broad"),
        ("AA.BB", "http://s/broad"),
        ("AA.BB.CC", "http://s/other"),
        ("*", "http://s/all"),
        ("ZZ", "http://s/unrelated"),
    ] {
        storage
            .upsert_subscription(&subscription(topic, callback, day))
            .await
            .unwrap();
    }
    storage
        .upsert_subscription(&subscription(
            "AA",
            "http://s/expired",
            Duration::seconds(-1),
        ))
        .await
        .unwrap();
    let now = Timestamp::now_utc();
    let matched = storage
        .matching_subscriptions("aa.bb.cccc.ee", now)
        .await
        .unwrap();
    let mut callbacks: Vec<&str> = matched.iter().map(|s| s.callback.as_str()).collect();
    callbacks.sort_unstable();
    assert_eq!(
        callbacks,
        ["http://s/all", "http://s/broad", "http://s/specific"]
    );
    let broad = matched
        .iter()
        .find(|s| s.callback == "http://s/broad")
        .unwrap();
    assert_eq!(
        broad.topic_key, "AA.BB",
        "the most specific subscription of a callback wins"
    );
    let other = storage
        .matching_subscriptions("AA.BB.CC.GG", now)
        .await
        .unwrap();
    assert!(other.iter().any(|s| s.callback == "http://s/other"));
    assert!(!other.iter().any(|s| s.callback == "http://s/specific"));

    assert_eq!(storage.purge_expired(now).await.unwrap(), 1);
    assert_eq!(storage.list_subscriptions(0, 100).await.unwrap().len(), 6);
}

/// Delivery outcomes are recorded for the operator's health view; removal by id works.
pub async fn delivery_health_is_recorded(storage: &dyn Storage) {
    let created = storage
        .upsert_subscription(&subscription("message.*", "http://s/1", Duration::days(1)))
        .await
        .unwrap();
    storage
        .record_delivery(created.id, &DeliveryOutcome::Failed("503".into()))
        .await
        .unwrap();
    storage
        .record_delivery(created.id, &DeliveryOutcome::Delivered)
        .await
        .unwrap();
    let health = storage.subscription(created.id).await.unwrap().unwrap();
    assert!(health.last_success_at.is_some());
    assert!(health.last_failure_at.is_some());
    assert_eq!(health.last_error.as_deref(), Some("503"));
    assert!(storage.remove_subscription_by_id(created.id).await.unwrap());
    assert_eq!(storage.subscription(created.id).await.unwrap(), None);
}

/// The reference spreader's table (intergov `callbacks_spreader` integration test,
/// `SUBSCRIPTIONS` and `SUBSCRIPTIONS_WITH_COMMON_PREFIXES`; REFERENCE-WIRE §3.3): an event
/// reaches exactly the callbacks subscribed to one of its dot-segment prefixes, whatever
/// the case, and predicates without a common prefix never see each other's events.
pub async fn matching_follows_the_reference_prefix_table(storage: &dyn Storage) {
    let day = Duration::days(1);
    let groups: [(&str, usize); 8] = [
        ("aaa.bbb.ccc.ddd", 2),
        ("eee.fff.jjj", 3),
        ("hhh.iii", 4),
        ("ggg", 1),
        ("ooo.aaa.bbb", 2),
        ("ooo.aaa", 3),
        ("zzz.aaa.bbb", 5),
        ("zzz.aaa", 3),
    ];
    for (topic, subscribers) in groups {
        for i in 0..subscribers {
            let callback = format!("http://s/{}-{i}", topic.replace('.', "-"));
            storage
                .upsert_subscription(&subscription(topic, &callback, day))
                .await
                .unwrap();
        }
    }
    let now = Timestamp::now_utc();
    // (event topic, expected number of callbacks, prefix every callback starts with)
    let table: [(&str, usize, &str); 11] = [
        ("aaa.bbb.ccc.ddd", 2, "aaa-bbb-ccc-ddd"),
        ("eee.fff.jjj", 3, "eee-fff-jjj"),
        ("hhh.iii", 4, "hhh-iii"),
        ("ggg", 1, "ggg"),
        ("ooo.aaa.bbb", 5, "ooo"),
        ("zzz.aaa.bbb", 8, "zzz"),
        ("ZZZ.AAA.BBB.CCC", 8, "zzz"),
        ("zzz.aaa", 3, "zzz-aaa-"),
        ("ggg.anything.below", 1, "ggg"),
        ("aaa.bbb.ccc", 0, ""),
        ("hhh.iiii", 0, ""),
    ];
    for (event_topic, expected, prefix) in table {
        let matched = storage
            .matching_subscriptions(event_topic, now)
            .await
            .unwrap();
        assert_eq!(matched.len(), expected, "{event_topic}");
        for subscription in &matched {
            let tail = subscription.callback.trim_start_matches("http://s/");
            assert!(tail.starts_with(prefix), "{event_topic}: {tail}");
        }
    }
}

/// The bulk reads and writes of the fan-out: subscriptions by id (missing ids skipped),
/// the count, and successes recorded for many subscriptions at once.
pub async fn fanout_reads_and_records_in_bulk(storage: &dyn Storage) {
    let day = Duration::days(1);
    let mut ids = Vec::new();
    for i in 0..3 {
        let created = storage
            .upsert_subscription(&subscription("a.b", &format!("http://s/{i}"), day))
            .await
            .unwrap();
        ids.push(created.id);
    }
    assert_eq!(storage.subscription_count().await.unwrap(), 3);
    assert!(storage.subscriptions_by_id(&[]).await.unwrap().is_empty());
    let found = storage
        .subscriptions_by_id(&[ids[2], ids[0], 999_999])
        .await
        .unwrap();
    let found: Vec<i64> = found.iter().map(|s| s.id).collect();
    assert_eq!(found, [ids[0], ids[2]]);
    storage.record_successes(&ids[..2]).await.unwrap();
    storage.record_successes(&[]).await.unwrap();
    let listed = storage.list_subscriptions(0, 10).await.unwrap();
    assert!(listed[0].last_success_at.is_some());
    assert!(listed[1].last_success_at.is_some());
    assert!(listed[2].last_success_at.is_none());
}
