//! The `UnitOfWork` contract: all or nothing.

use std::time::Duration;

use igl_core::{MessageFilter, Storage};
use igl_domain::{Jurisdiction, MessageStatus, MessageUpdate, Multihash};

use crate::fixtures::{event, job, message, queue};

const LEASE: Duration = Duration::from_secs(30);

/// A message, its jobs, its events, an ACL grant and the ack of the triggering job commit
/// together.
pub async fn commit_makes_everything_visible(storage: &dyn Storage) {
    storage.enqueue(&[job("process", 1)]).await.unwrap();
    let trigger = storage
        .claim(&queue("process"), 1, LEASE)
        .await
        .unwrap()
        .remove(0);
    let new = message("AU", "SG", "atomic");
    let document = Multihash::of(b"doc");
    let sg = Jurisdiction::parse("SG").unwrap();

    let mut unit = storage.begin().await.unwrap();
    unit.insert_message(&new, MessageStatus::Pending)
        .await
        .unwrap();
    unit.enqueue(&[job("route", 2)]).await.unwrap();
    unit.append_event(&event(
        "AU:atomic/stored",
        "UN.CEFACT.Trade.CertificateOfOrigin.created",
    ))
    .await
    .unwrap();
    unit.grant_object(&document, sg).await.unwrap();
    assert_eq!(unit.ack(&[trigger.receipt()]).await.unwrap(), 1);

    assert_eq!(
        storage.get_message(&new.reference()).await.unwrap(),
        None,
        "not before commit"
    );
    unit.commit().await.unwrap();

    assert!(
        storage
            .get_message(&new.reference())
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(storage.depth(&queue("route")).await.unwrap().ready, 1);
    assert_eq!(storage.depth(&queue("process")).await.unwrap().in_flight, 0);
    assert_eq!(storage.read_events(0, 10).await.unwrap().len(), 1);
    assert!(storage.may_read(&document, sg).await.unwrap());
}

/// A unit of work dropped without commit (a crashed task) leaves nothing behind, and the
/// job it would have acked is still held by its lease and comes back after it.
pub async fn dropped_unit_leaves_nothing(storage: &dyn Storage) {
    storage.enqueue(&[job("process", 1)]).await.unwrap();
    let trigger = storage
        .claim(&queue("process"), 1, Duration::from_millis(200))
        .await
        .unwrap();
    let new = message("AU", "SG", "crashed");
    let document = Multihash::of(b"doc");
    let sg = Jurisdiction::parse("SG").unwrap();
    {
        let mut unit = storage.begin().await.unwrap();
        unit.insert_message(&new, MessageStatus::Pending)
            .await
            .unwrap();
        unit.enqueue(&[job("route", 2)]).await.unwrap();
        unit.append_event(&event("AU:crashed/stored", "x.y.z"))
            .await
            .unwrap();
        unit.grant_object(&document, sg).await.unwrap();
        unit.ack(&[trigger[0].receipt()]).await.unwrap();
        // Dropped here: no commit.
    }
    assert_eq!(storage.get_message(&new.reference()).await.unwrap(), None);
    assert_eq!(
        storage.depth(&queue("route")).await.unwrap(),
        igl_core::QueueDepth::default()
    );
    assert!(storage.read_events(0, 10).await.unwrap().is_empty());
    assert!(!storage.may_read(&document, sg).await.unwrap());
    assert!(
        storage
            .list_messages(&MessageFilter::default())
            .await
            .unwrap()
            .messages
            .is_empty()
    );
    crate::conformance::jobs::eventually(
        "the unacked trigger job to return",
        Duration::from_secs(5),
        || async {
            storage
                .claim(&queue("process"), 1, LEASE)
                .await
                .unwrap()
                .len()
                == 1
        },
    )
    .await;
}

/// A unit of work that fails midway (an invalid update) and is abandoned leaves nothing,
/// and the storage stays usable.
pub async fn failed_unit_leaves_nothing(storage: &dyn Storage) {
    let existing = message("AU", "SG", "existing");
    let mut unit = storage.begin().await.unwrap();
    unit.insert_message(&existing, MessageStatus::Pending)
        .await
        .unwrap();
    unit.commit().await.unwrap();
    {
        let mut unit = storage.begin().await.unwrap();
        unit.insert_message(&message("AU", "SG", "half"), MessageStatus::Pending)
            .await
            .unwrap();
        unit.enqueue(&[job("route", 1)]).await.unwrap();
        let bad = MessageUpdate {
            status: Some(MessageStatus::Received),
            ..MessageUpdate::default()
        };
        assert!(
            unit.update_message(&existing.reference(), &bad)
                .await
                .is_err()
        );
    }
    let page = storage
        .list_messages(&MessageFilter::default())
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 1);
    assert_eq!(storage.depth(&queue("route")).await.unwrap().ready, 0);
    let mut unit = storage.begin().await.unwrap();
    unit.insert_message(&message("AU", "SG", "after"), MessageStatus::Pending)
        .await
        .unwrap();
    unit.commit().await.unwrap();
    assert_eq!(
        storage
            .list_messages(&MessageFilter::default())
            .await
            .unwrap()
            .messages
            .len(),
        2
    );
}
