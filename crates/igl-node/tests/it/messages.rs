//! The Message API over HTTP: success and error cases, idempotency, legacy paths,
//! processing.

use igl_core::MessageFilter;
use igl_core::pipeline::{PROCESS_QUEUE, ROUTE_QUEUE};
use igl_domain::{Jurisdiction, MessageFields, MessageStatus, Multihash, NewMessage};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{TestNode, json};

fn coo(sender_ref: Option<&str>) -> Value {
    let mut body = json!({
        "sender": "AU",
        "receiver": "SG",
        "subject": "AU.abn0000000000.XXXX-XXXXX-XXXXX-XXXXXX",
        "obj": Multihash::of(b"certificate of origin").to_string(),
        "predicate": "UN.CEFACT.Trade.CertificateOfOrigin.created",
    });
    if let Some(sender_ref) = sender_ref {
        body["sender_ref"] = json!(sender_ref);
    }
    body
}

fn first_error(body: &Value) -> &Value {
    &body["errors"][0]
}

#[tokio::test]
async fn post_creates_a_pending_message_with_location() {
    let node = TestNode::start().await;
    let response = node.post_json("/api/v1/messages", &coo(None)).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body = json(response).await;
    let sender_ref = body["sender_ref"].as_str().unwrap();
    assert_eq!(sender_ref.len(), 36, "a uuid is generated");
    assert_eq!(location, format!("/api/v1/messages/AU:{sender_ref}"));
    assert_eq!(body["status"], "pending");
    assert_eq!(body["receiver"], "SG");
    assert_eq!(body["channel_id"], Value::Null);
    assert!(body["created_at"].as_str().unwrap().ends_with('Z'));

    let read = node.get(&location).await;
    assert_eq!(read.status(), StatusCode::OK);
    let read = json(read).await;
    assert_eq!(read, body);
}

#[tokio::test]
async fn reposting_is_idempotent_and_never_overwrites() {
    let node = TestNode::start().await;
    let first = node
        .post_json("/api/v1/messages", &coo(Some("coo-1")))
        .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first = json(first).await;
    let again = node
        .post_json("/api/v1/messages", &coo(Some("coo-1")))
        .await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(json(again).await, first);
    let legacy = node.post_json("/message", &coo(Some("coo-1"))).await;
    assert_eq!(
        legacy.status(),
        StatusCode::CREATED,
        "legacy clients keep their 201"
    );

    let mut different = coo(Some("coo-1"));
    different["subject"] = json!("something else");
    let conflict = node.post_json("/api/v1/messages", &different).await;
    assert_eq!(conflict.status(), StatusCode::CONFLICT);
    let body = json(conflict).await;
    assert_eq!(first_error(&body)["code"], "generic-http-error");
    assert_eq!(first_error(&body)["source"][0]["reference"], "AU:coo-1");
    let stored = json(node.get("/api/v1/messages/AU:coo-1").await).await;
    assert_eq!(stored["subject"], first["subject"]);
}

#[tokio::test]
async fn concurrent_posts_of_one_reference_store_one_message() {
    let node = TestNode::start().await;
    let body = coo(Some("race"));
    let posts = (0..16).map(|_| node.post_json("/api/v1/messages", &body));
    let statuses: Vec<StatusCode> = futures::future::join_all(posts)
        .await
        .iter()
        .map(|r| r.status())
        .collect();
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        15,
        "{statuses:?}"
    );
    let page = node
        .storage()
        .list_messages(&MessageFilter::default())
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 1);
    assert_eq!(
        node.storage().depth(&PROCESS_QUEUE).await.unwrap().ready,
        1,
        "processed once"
    );
}

#[tokio::test]
async fn many_concurrent_posts_are_all_stored() {
    let node = TestNode::start().await;
    let posts = (0..300).map(|i| {
        let body = coo(Some(&format!("bulk-{i}")));
        let node = &node;
        async move { node.post_json("/api/v1/messages", &body).await.status() }
    });
    let statuses = futures::future::join_all(posts).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::CREATED),
        "{statuses:?}"
    );
    let all = MessageFilter {
        limit: 1000,
        ..MessageFilter::default()
    };
    assert_eq!(
        node.storage()
            .list_messages(&all)
            .await
            .unwrap()
            .messages
            .len(),
        300
    );
    assert_eq!(
        node.storage().depth(&PROCESS_QUEUE).await.unwrap().ready,
        300
    );
}

#[tokio::test]
async fn bad_input_gets_the_reference_error_body_and_changes_nothing() {
    let node = TestNode::start().await;
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({}), "message-data-empty-error", ""),
        (json!([1, 2]), "message-data-empty-error", ""),
        (json!(null), "message-data-empty-error", ""),
        (
            {
                let mut b = coo(None);
                b.as_object_mut().unwrap().remove("receiver");
                b
            },
            "message-deserialization-error",
            "missing attr: receiver",
        ),
        (
            {
                let mut b = coo(None);
                b["sender"] = json!("au");
                b
            },
            "message-deserialization-error",
            "sender is not a jurisdiction: au",
        ),
        (
            {
                let mut b = coo(None);
                b["receiver"] = json!("XX");
                b
            },
            "message-deserialization-error",
            "receiver is not a jurisdiction: XX",
        ),
        (
            {
                let mut b = coo(None);
                b["subject"] = json!("");
                b
            },
            "message-validation-error",
            "subject is empty",
        ),
        (
            {
                let mut b = coo(None);
                b["obj"] = json!("foo");
                b
            },
            "message-validation-error",
            "obj is not a URI: foo",
        ),
        (
            {
                let mut b = coo(None);
                b["predicate"] = json!("a.b");
                b
            },
            "message-validation-error",
            "predicate is not a URI: a.b",
        ),
        (
            {
                let mut b = coo(None);
                b["sender_ref"] = json!("has/slash");
                b
            },
            "message-validation-error",
            "sender_ref contains forbidden characters (whitespace, control, / ? #)",
        ),
        (
            {
                let mut b = coo(None);
                b["subject"] = json!(42);
                b
            },
            "message-deserialization-error",
            "subject is not a string",
        ),
    ];
    for (body, code, source) in cases {
        let response = node.post_json("/api/v1/messages", &body).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let error_body = json(response).await;
        let error = first_error(&error_body);
        assert_eq!(error["code"], code, "{body}: {error_body}");
        assert_eq!(error["status"], "Bad Request");
        if !source.is_empty() {
            assert!(
                error["source"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s == source),
                "{body}: {error_body}"
            );
        }
    }
    let page = node
        .storage()
        .list_messages(&MessageFilter::default())
        .await
        .unwrap();
    assert!(page.messages.is_empty());
    assert_eq!(node.storage().depth(&PROCESS_QUEUE).await.unwrap().ready, 0);
}

#[tokio::test]
async fn malformed_json_and_wrong_content_type() {
    let node = TestNode::start().await;
    let malformed = node
        .request(Method::POST, "/api/v1/messages")
        .header("content-type", "application/json")
        .body("{\"sender\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        first_error(&json(malformed).await)["code"],
        "generic-http-error"
    );

    let text = node
        .request(Method::POST, "/message")
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(text.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let body = json(text).await;
    assert_eq!(
        first_error(&body)["detail"],
        "Unsupported mimetype. Value: \"text/plain\". Value must be one of ['application/json']."
    );
}

#[tokio::test]
async fn callers_need_a_token_and_may_only_send_as_their_node() {
    let node = TestNode::start().await;
    let anonymous = node
        .anonymous(Method::POST, "/api/v1/messages")
        .json(&coo(None))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let wrong_token = node
        .anonymous(Method::GET, "/api/v1/messages")
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_token.status(), StatusCode::UNAUTHORIZED);

    let mut foreign = coo(None);
    foreign["sender"] = json!("SG");
    foreign["receiver"] = json!("AU");
    let response = node.post_json("/api/v1/messages", &foreign).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(first_error(&json(response).await)["title"], "Forbidden");
}

#[tokio::test]
async fn get_by_reference_current_and_legacy() {
    let node = TestNode::start().await;
    node.post_json("/api/v1/messages", &coo(Some("r1"))).await;
    assert_eq!(
        node.get("/api/v1/messages/AU:r1").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        node.get("/message/AU:r1").await.status(),
        StatusCode::CREATED,
        "reference quirk"
    );

    let missing = node.get("/api/v1/messages/AU:nope").await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let body = json(missing).await;
    assert_eq!(first_error(&body)["title"], "Message Not Found Error");
    assert_eq!(first_error(&body)["source"][0]["reference"], "AU:nope");

    for bad in [
        "/message/no-colon",
        "/api/v1/messages/XX:r1",
        "/api/v1/messages/AU:",
    ] {
        let response = node.get(bad).await;
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "{bad}: not a 500"
        );
    }
}

/// Stores a message as the channel side would (status `received`).
async fn store_inbound(node: &TestNode, sender_ref: &str) {
    let message = NewMessage::parse(MessageFields {
        sender: Some("SG".into()),
        receiver: Some("AU".into()),
        subject: Some("SG.uen.123".into()),
        obj: Some(Multihash::of(b"sg document").to_string()),
        predicate: Some("UN.CEFACT.Trade.CertificateOfOrigin.created".into()),
        sender_ref: Some(sender_ref.into()),
    })
    .unwrap();
    let mut unit = node.storage().begin().await.unwrap();
    unit.insert_message(&message, MessageStatus::Received)
        .await
        .unwrap();
    unit.commit().await.unwrap();
}

async fn patch(node: &TestNode, path: &str, body: Value) -> reqwest::Response {
    node.request(Method::PATCH, path)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn patch_follows_the_status_rules() {
    let node = TestNode::start().await;
    store_inbound(&node, "in-1").await;
    let accepted = patch(&node, "/message/SG:in-1", json!({"status": "accepted"})).await;
    assert_eq!(accepted.status(), StatusCode::OK);
    assert_eq!(json(accepted).await["status"], "accepted");
    let same = patch(
        &node,
        "/api/v1/messages/SG:in-1",
        json!({"status": "accepted"}),
    )
    .await;
    assert_eq!(
        same.status(),
        StatusCode::OK,
        "same final status is a no-op"
    );
    let final_ = patch(
        &node,
        "/api/v1/messages/SG:in-1",
        json!({"status": "rejected"}),
    )
    .await;
    assert_eq!(final_.status(), StatusCode::CONFLICT);
    assert_eq!(
        first_error(&json(final_).await)["detail"],
        "Message status is final: accepted"
    );

    let events = node.storage().read_events(0, 100).await.unwrap();
    let status_events: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "message.status")
        .collect();
    assert_eq!(status_events.len(), 1, "one event per actual change");
    assert_eq!(status_events[0].topic, "message.in-1.status");
    assert_eq!(
        status_events[0].payload,
        json!({"predicate": "message.in-1.status", "sender_ref": "SG:in-1"})
    );

    let bad = patch(
        &node,
        "/api/v1/messages/SG:in-1",
        json!({"status": "pending"}),
    )
    .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let body = json(bad).await;
    assert_eq!(
        first_error(&body)["code"],
        "unexpected-message-status-error"
    );
    assert_eq!(
        first_error(&body)["detail"],
        "Unexpected message status value: pending"
    );
    assert_eq!(
        first_error(&body)["source"][0]["expected"],
        json!(["accepted", "rejected", null])
    );

    let empty = patch(&node, "/api/v1/messages/SG:in-1", json!({})).await;
    assert_eq!(
        first_error(&json(empty).await)["code"],
        "message-data-empty-error"
    );
    let missing = patch(
        &node,
        "/api/v1/messages/SG:none",
        json!({"status": "accepted"}),
    )
    .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn patch_channel_fields_and_outbound_status_guard() {
    let node = TestNode::start().await;
    node.post_json("/api/v1/messages", &coo(Some("out-1")))
        .await;
    let status = patch(
        &node,
        "/api/v1/messages/AU:out-1",
        json!({"status": "accepted"}),
    )
    .await;
    assert_eq!(
        status.status(),
        StatusCode::FORBIDDEN,
        "outbound status follows the channel"
    );

    let half = patch(
        &node,
        "/api/v1/messages/AU:out-1",
        json!({"channel_id": "c1"}),
    )
    .await;
    assert_eq!(half.status(), StatusCode::BAD_REQUEST);
    let set = json!({"channel_id": "c1", "channel_txn_id": 42, "channel_status": "received"});
    let routed = patch(&node, "/api/v1/messages/AU:out-1", set.clone()).await;
    assert_eq!(routed.status(), StatusCode::OK);
    let body = json(routed).await;
    assert_eq!(
        (body["channel_id"].clone(), body["channel_txn_id"].clone()),
        (json!("c1"), json!("42"))
    );
    assert_eq!(body["status"], "pending");
    assert_eq!(
        patch(&node, "/api/v1/messages/AU:out-1", set)
            .await
            .status(),
        StatusCode::OK
    );
    let other = json!({"channel_id": "c2", "channel_txn_id": "7"});
    let conflict = patch(&node, "/api/v1/messages/AU:out-1", other).await;
    assert_eq!(conflict.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn list_filters_and_pages() {
    let node = TestNode::start().await;
    for i in 0..5 {
        node.post_json("/api/v1/messages", &coo(Some(&format!("m{i}"))))
            .await;
    }
    store_inbound(&node, "in-1").await;
    let all = json(node.get("/api/v1/messages?limit=4").await).await;
    assert_eq!(all["messages"].as_array().unwrap().len(), 4);
    let cursor = all["next_cursor"].as_str().unwrap();
    let rest = json(
        node.get(&format!("/api/v1/messages?limit=4&cursor={cursor}"))
            .await,
    )
    .await;
    assert_eq!(rest["messages"].as_array().unwrap().len(), 2);
    assert_eq!(rest["next_cursor"], Value::Null);

    let received = json(node.get("/api/v1/messages?status=received").await).await;
    assert_eq!(received["messages"].as_array().unwrap().len(), 1);
    let from_sg = json(node.get("/api/v1/messages?sender=SG&receiver=AU").await).await;
    assert_eq!(from_sg["messages"][0]["sender_ref"], "in-1");
    let prefix = json(node.get("/api/v1/messages?predicate=UN.CEFACT.*").await).await;
    assert_eq!(prefix["messages"].as_array().unwrap().len(), 6);
    let since = json(
        node.get("/api/v1/messages?updated_since=2100-01-01T00:00:00Z")
            .await,
    )
    .await;
    assert!(since["messages"].as_array().unwrap().is_empty());

    for bad in [
        "status=done",
        "sender=au",
        "updated_since=yesterday",
        "cursor=x",
        "limit=0",
        "limit=5000",
    ] {
        let response = node.get(&format!("/api/v1/messages?{bad}")).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn processing_grants_publishes_and_routes_exactly_once() {
    let node = TestNode::start().await;
    let body = coo(Some("p1"));
    node.post_json("/api/v1/messages", &body).await;
    store_inbound(&node, "in-1").await;
    // The inbound message was stored without the ingest path; queue it like the retriever.
    node.storage()
        .enqueue(&[igl_core::pipeline::PipelineJob::process(
            &igl_domain::MessageRef::parse("SG:in-1").unwrap(),
        )
        .into_new_job()])
        .await
        .unwrap();
    let report = node.drain(PROCESS_QUEUE).await;
    assert_eq!((report.claimed, report.dead_lettered), (2, 0));
    let storage = node.storage();
    assert_eq!(
        storage.depth(&PROCESS_QUEUE).await.unwrap(),
        Default::default()
    );
    assert_eq!(
        storage.depth(&ROUTE_QUEUE).await.unwrap().ready,
        1,
        "outbound is routed"
    );
    let retrieval = igl_core::pipeline::OBJECT_RETRIEVAL_QUEUE;
    assert_eq!(
        storage.depth(&retrieval).await.unwrap().ready,
        1,
        "inbound document fetched"
    );
    let document = Multihash::parse(body["obj"].as_str().unwrap()).unwrap();
    assert!(
        storage
            .may_read(&document, Jurisdiction::parse("SG").unwrap())
            .await
            .unwrap()
    );

    let events = storage.read_events(0, 100).await.unwrap();
    let topics: Vec<&str> = events.iter().map(|e| e.topic.as_str()).collect();
    assert!(topics.contains(&"UN.CEFACT.Trade.CertificateOfOrigin.created"));
    assert!(topics.contains(&"message.p1.received"));
    let fat = events.iter().find(|e| e.id == "AU:p1/stored").unwrap();
    assert_eq!(fat.payload["sender_ref"], "p1");
    assert!(
        fat.payload.get("status").is_none(),
        "the fat ping has no status"
    );
    assert_eq!(events.len(), 4);

    // Processing the same message again (a redelivered job) changes nothing.
    storage
        .enqueue(&[igl_core::pipeline::PipelineJob::process(
            &igl_domain::MessageRef::parse("AU:p1").unwrap(),
        )
        .into_new_job()])
        .await
        .unwrap();
    node.drain(PROCESS_QUEUE).await;
    assert_eq!(storage.read_events(0, 100).await.unwrap().len(), 4);
    assert_eq!(
        storage.depth(&ROUTE_QUEUE).await.unwrap().ready,
        1,
        "route job deduplicated"
    );
}
