//! The `EventLog` contract.

use igl_core::Storage;

use crate::fixtures::event;

/// Appends are idempotent by id and read back in order after a position.
pub async fn append_is_idempotent_and_ordered(storage: &dyn Storage) {
    // With a subscriber present, every appended event is queued for fan-out.
    storage
        .upsert_subscription(&igl_core::subscriptions::NewSubscription {
            topic: "*".into(),
            callback: "http://subscriber.example/cb".into(),
            secret: None,
            expires_at: igl_domain::Timestamp::now_utc() + time::Duration::days(1),
        })
        .await
        .unwrap();
    let mut unit = storage.begin().await.unwrap();
    assert!(
        unit.append_event(&event("e1", "message.AU:1.status"))
            .await
            .unwrap()
    );
    assert!(
        unit.append_event(&event("e2", "UN.CEFACT.X.created"))
            .await
            .unwrap()
    );
    assert!(
        !unit.append_event(&event("e1", "changed")).await.unwrap(),
        "same id again"
    );
    unit.commit().await.unwrap();
    let mut unit = storage.begin().await.unwrap();
    assert!(!unit.append_event(&event("e2", "again")).await.unwrap());
    assert!(
        unit.append_event(&event("e3", "message.AU:1.received"))
            .await
            .unwrap()
    );
    unit.commit().await.unwrap();

    let events = storage.read_events(0, 100).await.unwrap();
    let ids: Vec<_> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["e1", "e2", "e3"]);
    assert!(events.windows(2).all(|pair| pair[0].seq < pair[1].seq));
    assert_eq!(
        events[0].topic, "message.AU:1.status",
        "the first append wins"
    );
    assert_eq!(
        events[0].payload,
        event("e1", "message.AU:1.status").payload
    );
    let after_first = storage.read_events(events[0].seq, 1).await.unwrap();
    assert_eq!(after_first.len(), 1);
    assert_eq!(after_first[0].id, "e2");
    assert!(
        storage
            .read_events(events[2].seq, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Without any subscription, appending an event queues no fan-out work.
pub async fn no_fan_out_without_subscribers(storage: &dyn Storage) {
    let mut unit = storage.begin().await.unwrap();
    assert!(unit.append_event(&event("lonely", "x.y.z")).await.unwrap());
    unit.commit().await.unwrap();
    let spread = storage
        .depth(&igl_core::pipeline::SPREAD_QUEUE)
        .await
        .unwrap();
    assert_eq!(spread.ready, 0);
    assert_eq!(
        storage.read_events(0, 10).await.unwrap().len(),
        1,
        "the event is still logged"
    );
}

/// A batch append keeps input order, appends an id once (already stored, or repeated
/// within the batch, is `false`), and queues fan-out for exactly the appended events.
pub async fn batch_append_is_ordered_and_idempotent(storage: &dyn Storage) {
    storage
        .upsert_subscription(&igl_core::subscriptions::NewSubscription {
            topic: "*".into(),
            callback: "http://subscriber.example/cb".into(),
            secret: None,
            expires_at: igl_domain::Timestamp::now_utc() + time::Duration::days(1),
        })
        .await
        .unwrap();
    let mut unit = storage.begin().await.unwrap();
    assert!(unit.append_event(&event("b2", "x.y.two")).await.unwrap());
    unit.commit().await.unwrap();

    let mut unit = storage.begin().await.unwrap();
    let appended = unit
        .append_events(&[
            event("b3", "x.y.three"),
            event("b1", "x.y.one"),
            event("b2", "x.y.again"),
            event("b3", "x.y.repeated"),
            event("b4", "x.y.four"),
        ])
        .await
        .unwrap();
    assert_eq!(appended, [true, true, false, false, true]);
    assert!(unit.append_events(&[]).await.unwrap().is_empty());
    unit.commit().await.unwrap();

    let events = storage.read_events(0, 100).await.unwrap();
    let ids: Vec<_> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["b2", "b3", "b1", "b4"], "stored in input order");
    assert_eq!(events[1].topic, "x.y.three", "the first occurrence wins");
    let spread = storage
        .depth(&igl_core::pipeline::SPREAD_QUEUE)
        .await
        .unwrap();
    assert_eq!(spread.ready, 4, "one fan-out job per appended event");
}
