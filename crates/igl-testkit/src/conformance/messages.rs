//! The `MessageStore` contract (writes through a unit of work).

use std::collections::HashSet;

use igl_core::{MessageFilter, Storage, StoreError};
use igl_domain::{
    ChannelStatus, Jurisdiction, MessageRef, MessageStatus, MessageUpdate, Timestamp,
};

use crate::fixtures::{message, message_with_predicate};

async fn insert(storage: &dyn Storage, message: &igl_domain::NewMessage, status: MessageStatus) {
    let mut unit = storage.begin().await.expect("begin");
    unit.insert_message(message, status).await.expect("insert");
    unit.commit().await.expect("commit");
}

/// An inserted message reads back with every field, and an unknown reference is `None`.
pub async fn insert_then_get(storage: &dyn Storage) {
    let new = message("AU", "SG", "ref-1");
    let mut unit = storage.begin().await.unwrap();
    let inserted = unit
        .insert_message(&new, MessageStatus::Pending)
        .await
        .unwrap();
    unit.commit().await.unwrap();
    assert!(inserted.created);
    assert_eq!(inserted.message.content, new.content);
    assert_eq!(inserted.message.status, MessageStatus::Pending);
    assert_eq!(inserted.message.channel_id, None);
    let got = storage
        .get_message(&new.reference())
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(got, inserted.message);
    let unknown = MessageRef::parse("AU:nope").unwrap();
    assert_eq!(storage.get_message(&unknown).await.unwrap(), None);
}

/// Re-inserting the same content is idempotent; different content is a conflict and never
/// overwrites.
pub async fn insert_is_idempotent_and_never_overwrites(storage: &dyn Storage) {
    let new = message("AU", "SG", "ref-1");
    insert(storage, &new, MessageStatus::Pending).await;
    let mut unit = storage.begin().await.unwrap();
    let again = unit
        .insert_message(&new, MessageStatus::Received)
        .await
        .unwrap();
    unit.commit().await.unwrap();
    assert!(!again.created);
    assert_eq!(
        again.message.status,
        MessageStatus::Pending,
        "status is not overwritten"
    );

    let mut different = new.clone();
    different.content.subject = "something else".into();
    let mut unit = storage.begin().await.unwrap();
    let error = unit
        .insert_message(&different, MessageStatus::Pending)
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::MessageConflict(_)),
        "got {error:?}"
    );
    drop(unit);
    let stored = storage
        .get_message(&new.reference())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.content, new.content);
}

/// Status and channel updates follow the domain rules; a rejected update changes nothing.
pub async fn update_follows_transition_rules(storage: &dyn Storage) {
    let new = message("AU", "SG", "ref-1");
    insert(storage, &new, MessageStatus::Pending).await;
    let reference = new.reference();

    let route = MessageUpdate {
        channel_id: Some("rule-1".into()),
        channel_txn_id: Some("42".into()),
        channel_status: Some(ChannelStatus::Received),
        ..MessageUpdate::default()
    };
    let mut unit = storage.begin().await.unwrap();
    let updated = unit.update_message(&reference, &route).await.unwrap();
    unit.commit().await.unwrap();
    assert!(updated.changed());
    assert!(!updated.status_changed());
    assert!(updated.after.updated_at >= updated.before.updated_at);

    let accept = MessageUpdate {
        status: Some(MessageStatus::Accepted),
        channel_status: Some(ChannelStatus::Confirmed),
        ..MessageUpdate::default()
    };
    let mut unit = storage.begin().await.unwrap();
    let updated = unit.update_message(&reference, &accept).await.unwrap();
    unit.commit().await.unwrap();
    assert!(updated.status_changed());
    assert_eq!(updated.after.status, MessageStatus::Accepted);

    let mut unit = storage.begin().await.unwrap();
    let same = unit.update_message(&reference, &accept).await.unwrap();
    assert!(!same.changed(), "repeating an update is a no-op");
    let reject = MessageUpdate {
        status: Some(MessageStatus::Rejected),
        ..MessageUpdate::default()
    };
    let error = unit.update_message(&reference, &reject).await.unwrap_err();
    assert!(
        matches!(error, StoreError::InvalidUpdate { .. }),
        "got {error:?}"
    );
    assert!(error.to_string().contains("final"), "{error}");
    unit.commit().await.unwrap();

    let stored = storage.get_message(&reference).await.unwrap().unwrap();
    assert_eq!(stored.status, MessageStatus::Accepted);
    assert_eq!(stored.channel_id.as_deref(), Some("rule-1"));
    assert_eq!(stored.channel_txn_id.as_deref(), Some("42"));
    assert_eq!(stored.channel_status, Some(ChannelStatus::Confirmed));

    let missing = MessageRef::parse("AU:missing").unwrap();
    let mut unit = storage.begin().await.unwrap();
    let error = unit.update_message(&missing, &accept).await.unwrap_err();
    assert!(
        matches!(error, StoreError::MessageNotFound(_)),
        "got {error:?}"
    );
}

/// Concurrent conflicting updates of one message serialise: exactly one final status wins.
pub async fn concurrent_updates_serialise(storage: &dyn Storage) {
    let new = message("AU", "SG", "contended");
    insert(storage, &new, MessageStatus::Pending).await;
    let reference = new.reference();
    let mut tasks = Vec::new();
    for index in 0..8 {
        let status = if index % 2 == 0 {
            MessageStatus::Accepted
        } else {
            MessageStatus::Rejected
        };
        let update = MessageUpdate {
            status: Some(status),
            ..MessageUpdate::default()
        };
        let reference = reference.clone();
        // SAFETY of the borrow: the futures are awaited before this function returns.
        tasks.push(async move {
            let mut unit = storage.begin().await.unwrap();
            let result = unit.update_message(&reference, &update).await;
            if result.is_ok() {
                unit.commit().await.unwrap();
            }
            result.map(|updated| updated.status_changed())
        });
    }
    let results = futures::future::join_all(tasks).await;
    let changes = results.iter().filter(|r| matches!(r, Ok(true))).count();
    assert_eq!(
        changes, 1,
        "exactly one update changes the status: {results:?}"
    );
    let stored = storage.get_message(&reference).await.unwrap().unwrap();
    assert!(stored.status.is_final());
}

/// Listing filters by status, predicate (exact and prefix), sender, receiver and
/// updated_since, and pages through everything with cursors.
pub async fn list_filters_and_pages(storage: &dyn Storage) {
    let before_all = Timestamp::now_utc() - time::Duration::seconds(1);
    for index in 0..25 {
        let predicate = if index % 5 == 0 {
            "UN.CEFACT.Trade.Other.created"
        } else {
            "X.Y.created"
        };
        let receiver = if index % 2 == 0 { "SG" } else { "NZ" };
        let new = message_with_predicate("AU", receiver, &format!("m{index:02}"), predicate);
        let status = if index < 20 {
            MessageStatus::Pending
        } else {
            MessageStatus::Received
        };
        insert(storage, &new, status).await;
    }

    let mut seen = HashSet::new();
    let mut filter = MessageFilter {
        limit: 7,
        ..MessageFilter::default()
    };
    let mut pages = 0;
    loop {
        let page = storage.list_messages(&filter).await.unwrap();
        pages += 1;
        for message in &page.messages {
            assert!(
                seen.insert(message.sender_ref.to_string()),
                "no message twice"
            );
        }
        match page.next {
            Some(next) => filter.after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 25);
    assert_eq!(pages, 4);

    let count = |filter: MessageFilter| async move {
        storage
            .list_messages(&MessageFilter {
                limit: 1000,
                ..filter
            })
            .await
            .unwrap()
            .messages
            .len()
    };
    let sg = Jurisdiction::parse("SG").unwrap();
    assert_eq!(
        count(MessageFilter {
            status: Some(MessageStatus::Received),
            ..Default::default()
        })
        .await,
        5
    );
    assert_eq!(
        count(MessageFilter {
            receiver: Some(sg),
            ..Default::default()
        })
        .await,
        13
    );
    assert_eq!(
        count(MessageFilter {
            predicate: Some("UN.CEFACT.Trade.Other.created".into()),
            ..Default::default()
        })
        .await,
        5
    );
    assert_eq!(
        count(MessageFilter {
            predicate: Some("UN.CEFACT.*".into()),
            ..Default::default()
        })
        .await,
        5
    );
    assert_eq!(
        count(MessageFilter {
            predicate: Some("un.cefact.*".into()),
            ..Default::default()
        })
        .await,
        0
    );
    assert_eq!(
        count(MessageFilter {
            sender: Some(Jurisdiction::parse("NZ").unwrap()),
            ..Default::default()
        })
        .await,
        0
    );
    assert_eq!(
        count(MessageFilter {
            updated_since: Some(before_all),
            ..Default::default()
        })
        .await,
        25
    );
    let future = Timestamp::now_utc() + time::Duration::hours(1);
    assert_eq!(
        count(MessageFilter {
            updated_since: Some(future),
            ..Default::default()
        })
        .await,
        0
    );
}

/// An updated message moves to the end of the listing order, so a reader following cursors
/// sees the change.
pub async fn updates_move_messages_to_the_end(storage: &dyn Storage) {
    for index in 0..3 {
        insert(
            storage,
            &message("AU", "SG", &format!("m{index}")),
            MessageStatus::Pending,
        )
        .await;
    }
    let page = storage
        .list_messages(&MessageFilter::default())
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 3);
    let last = page.messages.last().unwrap();
    let cursor = igl_core::Cursor {
        updated_at_micros: (last.updated_at.unix_timestamp_nanos() / 1000) as i64,
        seq: i64::MAX,
    };
    let first = page.messages[0].reference();
    let mut unit = storage.begin().await.unwrap();
    let update = MessageUpdate {
        status: Some(MessageStatus::Rejected),
        ..MessageUpdate::default()
    };
    unit.update_message(&first, &update).await.unwrap();
    unit.commit().await.unwrap();
    let after = storage
        .list_messages(&MessageFilter {
            after: Some(cursor),
            ..MessageFilter::default()
        })
        .await
        .unwrap();
    let refs: Vec<_> = after.messages.iter().map(|m| m.reference()).collect();
    assert_eq!(refs, vec![first]);
}

/// A batch insert reports one outcome per input, in order: new references are created
/// once, repeats (in the batch or already stored) are `Existing` with the same content and
/// `Conflict` otherwise.
pub async fn batch_insert_outcomes(storage: &dyn Storage) {
    use igl_core::InsertOutcome;
    let stored = message("AU", "SG", "stored");
    insert(storage, &stored, MessageStatus::Pending).await;
    let mut stored_changed = stored.clone();
    stored_changed.content.subject = "changed".into();
    let fresh = message("AU", "SG", "fresh");
    let mut fresh_changed = fresh.clone();
    fresh_changed.content.obj = "https://example.org/other".into();
    let many: Vec<_> = (0..300)
        .map(|i| message("AU", "NZ", &format!("bulk-{i}")))
        .collect();

    let mut batch = vec![
        (fresh.clone(), MessageStatus::Pending),
        (stored.clone(), MessageStatus::Pending),
        (stored_changed, MessageStatus::Pending),
        (fresh.clone(), MessageStatus::Pending),
        (fresh_changed, MessageStatus::Pending),
    ];
    batch.extend(many.iter().map(|m| (m.clone(), MessageStatus::Received)));
    let mut unit = storage.begin().await.unwrap();
    let outcomes = unit.insert_messages(&batch).await.unwrap();
    unit.commit().await.unwrap();

    assert_eq!(outcomes.len(), batch.len());
    assert!(matches!(&outcomes[0], InsertOutcome::Created(m) if m.sender_ref == fresh.sender_ref));
    assert!(matches!(&outcomes[1], InsertOutcome::Existing(m) if m.content == stored.content));
    assert!(matches!(&outcomes[2], InsertOutcome::Conflict(r) if *r == stored.reference()));
    assert!(matches!(&outcomes[3], InsertOutcome::Existing(_)));
    assert!(matches!(&outcomes[4], InsertOutcome::Conflict(_)));
    for (outcome, expected) in outcomes[5..].iter().zip(&many) {
        match outcome {
            InsertOutcome::Created(m) => {
                assert_eq!(m.content, expected.content);
                assert_eq!(m.status, MessageStatus::Received);
            }
            other => panic!("expected created, got {other:?}"),
        }
    }
    let everything = MessageFilter {
        limit: 1000,
        ..MessageFilter::default()
    };
    assert_eq!(
        storage
            .list_messages(&everything)
            .await
            .unwrap()
            .messages
            .len(),
        302
    );
    let kept = storage
        .get_message(&fresh.reference())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.content, fresh.content, "the first occurrence wins");
}
