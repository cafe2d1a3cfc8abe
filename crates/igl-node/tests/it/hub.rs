//! The WebSub hub over HTTP with a real callback server: subscription requests, intent
//! verification, signed fan-out delivery, failures (websub.rocks hub tests 100-106
//! behaviours: typical subscribe, secret → valid signature, extra parameters ignored,
//! re-subscribe updates, unsubscribe stops delivery).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use igl_core::pipeline::{DELIVER_QUEUE, PROCESS_QUEUE, SPREAD_QUEUE, VERIFY_QUEUE};
use igl_domain::Multihash;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{TestNode, json};

/// A subscriber's callback endpoint.
#[derive(Default)]
struct Subscriber {
    /// Verification requests seen (query parameters).
    verifications: Vec<HashMap<String, String>>,
    /// Deliveries seen: headers and body.
    deliveries: Vec<(HeaderMap, Vec<u8>)>,
    /// Echo a wrong challenge (refuse verification).
    refuse: bool,
    /// Status codes to answer deliveries with, in order; 200 when exhausted.
    answers: Vec<StatusCode>,
}

type Shared = Arc<Mutex<Subscriber>>;

async fn verify(
    State(state): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
) -> String {
    let mut subscriber = state.lock().unwrap();
    subscriber.verifications.push(query.clone());
    let challenge = query.get("hub.challenge").cloned().unwrap_or_default();
    if subscriber.refuse {
        format!("not-{challenge}")
    } else {
        challenge
    }
}

async fn deliver(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let mut subscriber = state.lock().unwrap();
    subscriber.deliveries.push((headers, body.to_vec()));
    if subscriber.answers.is_empty() {
        StatusCode::OK
    } else {
        subscriber.answers.remove(0)
    }
}

async fn start_subscriber() -> (String, Shared) {
    let state: Shared = Arc::default();
    let app = Router::new()
        .route("/cb", get(verify).post(deliver))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/cb?client=42", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, state)
}

async fn subscribe(node: &TestNode, fields: &[(&str, &str)]) -> reqwest::Response {
    node.request(Method::POST, "/api/v1/subscriptions")
        .form(fields)
        .send()
        .await
        .unwrap()
}

fn coo(sender_ref: &str) -> Value {
    json!({
        "sender": "AU", "receiver": "SG", "subject": "AU.abn.1",
        "obj": Multihash::of(b"coo").to_string(),
        "predicate": "UN.CEFACT.Trade.CertificateOfOrigin.created", "sender_ref": sender_ref,
    })
}

/// Runs the pipeline until events are delivered: process, spread, deliver.
async fn pump(node: &TestNode) {
    node.drain(PROCESS_QUEUE).await;
    node.drain(SPREAD_QUEUE).await;
    node.drain(DELIVER_QUEUE).await;
}

#[tokio::test]
async fn subscribe_with_secret_verify_and_receive_signed_events() {
    let node = TestNode::start().await;
    let (callback, subscriber) = start_subscriber().await;
    let response = subscribe(
        &node,
        &[
            ("hub.mode", "subscribe"),
            ("hub.topic", "UN.CEFACT.*"),
            ("hub.callback", &callback),
            ("hub.secret", "s3cret"),
            ("hub.lease_seconds", "7200"),
            ("hub.extra", "ignored"),
        ],
    )
    .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(node.drain(VERIFY_QUEUE).await.done, 1);
    {
        let seen = subscriber.lock().unwrap();
        let query = &seen.verifications[0];
        assert_eq!(query["hub.mode"], "subscribe");
        assert_eq!(query["hub.topic"], "UN.CEFACT.*");
        assert_eq!(query["hub.lease_seconds"], "7200");
        assert_eq!(query["client"], "42", "the callback's query string is kept");
        assert!(query["hub.challenge"].len() >= 32);
    }
    let listing = json(node.get("/api/v1/subscriptions").await).await;
    assert_eq!(listing["subscriptions"].as_array().unwrap().len(), 1);
    assert_eq!(listing["subscriptions"][0]["has_secret"], true);

    node.post_json("/api/v1/messages", &coo("hub-1")).await;
    pump(&node).await;
    let seen = subscriber.lock().unwrap();
    assert_eq!(
        seen.deliveries.len(),
        1,
        "one delivery: the fat ping on the predicate"
    );
    let (headers, body) = &seen.deliveries[0];
    let payload: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(payload["sender_ref"], "hub-1");
    assert!(payload.get("status").is_none());
    assert_eq!(headers["content-type"], "application/json");
    let signature = headers["x-hub-signature"].to_str().unwrap();
    assert!(
        igl_websub::signature::verify(b"s3cret", body, signature),
        "valid signature"
    );
    let link = headers["link"].to_str().unwrap();
    assert!(
        link.contains("rel=\"hub\"")
            && link.contains("<UN.CEFACT.Trade.CertificateOfOrigin.created>; rel=\"self\""),
        "{link}"
    );
    assert_eq!(headers["x-igl-event-id"], "AU:hub-1/stored");
}

#[tokio::test]
async fn resubscribe_updates_and_unsubscribe_stops_delivery() {
    let node = TestNode::start().await;
    let (callback, subscriber) = start_subscriber().await;
    for _ in 0..2 {
        let fields = [
            ("hub.mode", "subscribe"),
            ("hub.topic", "message.*"),
            ("hub.callback", callback.as_str()),
        ];
        assert_eq!(
            subscribe(&node, &fields).await.status(),
            StatusCode::ACCEPTED
        );
        node.drain(VERIFY_QUEUE).await;
    }
    let listing = json(node.get("/api/v1/subscriptions").await).await;
    assert_eq!(
        listing["subscriptions"].as_array().unwrap().len(),
        1,
        "updated, not duplicated"
    );

    node.post_json("/api/v1/messages", &coo("m1")).await;
    pump(&node).await;
    assert_eq!(
        subscriber.lock().unwrap().deliveries.len(),
        1,
        "the light ping message.m1.received"
    );

    let fields = [
        ("hub.mode", "unsubscribe"),
        ("hub.topic", "message.*"),
        ("hub.callback", callback.as_str()),
    ];
    assert_eq!(
        subscribe(&node, &fields).await.status(),
        StatusCode::ACCEPTED
    );
    node.drain(VERIFY_QUEUE).await;
    assert_eq!(
        subscriber.lock().unwrap().verifications.last().unwrap()["hub.mode"],
        "unsubscribe"
    );
    node.post_json("/api/v1/messages", &coo("m2")).await;
    pump(&node).await;
    assert_eq!(
        subscriber.lock().unwrap().deliveries.len(),
        1,
        "nothing after unsubscribing"
    );
    assert_eq!(
        subscribe(&node, &fields).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn failed_verification_changes_nothing() {
    let node = TestNode::start().await;
    let (callback, subscriber) = start_subscriber().await;
    subscriber.lock().unwrap().refuse = true;
    let fields = [
        ("hub.mode", "subscribe"),
        ("hub.topic", "message.*"),
        ("hub.callback", callback.as_str()),
    ];
    assert_eq!(
        subscribe(&node, &fields).await.status(),
        StatusCode::ACCEPTED
    );
    node.drain(VERIFY_QUEUE).await;
    let listing = json(node.get("/api/v1/subscriptions").await).await;
    assert!(listing["subscriptions"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn malformed_requests_get_the_reference_errors_and_never_500() {
    let node = TestNode::start().await;
    let (callback, _) = start_subscriber().await;
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![("hub.mode", "subscribe"), ("hub.callback", &callback)],
            "missing-attributes-error",
        ),
        (
            vec![
                ("hub.mode", "subscribe"),
                ("hub.topic", "a.b"),
                ("hub.callback", "ftp://x/"),
            ],
            "callback-url-validation-error",
        ),
        (
            vec![
                ("hub.mode", "subscribe"),
                ("hub.topic", "a.b*"),
                ("hub.callback", &callback),
            ],
            "topic-validation-error",
        ),
        (
            vec![
                ("hub.mode", "subscribe"),
                ("hub.topic", "UN.CEFACT"),
                ("hub.callback", &callback),
            ],
            "topic-validation-error",
        ),
        (
            vec![
                ("hub.mode", "subscribe"),
                ("hub.topic", "a.b"),
                ("hub.callback", &callback),
                ("hub.lease_seconds", "soon"),
            ],
            "lease-seconds-validation-error",
        ),
        (
            vec![
                ("hub.mode", "subscribe"),
                ("hub.topic", "a.b"),
                ("hub.callback", &callback),
                ("hub.lease_seconds", "10"),
            ],
            "lease-seconds-validation-error",
        ),
        (
            vec![
                ("hub.mode", "publish"),
                ("hub.topic", "a.b"),
                ("hub.callback", &callback),
            ],
            "unknown-mode-error",
        ),
    ];
    for (fields, code) in cases {
        let response = subscribe(&node, &fields).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{fields:?}");
        assert_eq!(
            json(response).await["errors"][0]["code"],
            code,
            "{fields:?}"
        );
    }
    let star = [
        ("hub.mode", "subscribe"),
        ("hub.topic", "*"),
        ("hub.callback", callback.as_str()),
    ];
    assert_eq!(subscribe(&node, &star).await.status(), StatusCode::ACCEPTED);
    let json_body = node
        .request(Method::POST, "/subscriptions")
        .json(&json!({"hub.mode": "subscribe"}))
        .send()
        .await
        .unwrap();
    assert_eq!(json_body.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let anonymous = node
        .anonymous(Method::POST, "/api/v1/subscriptions")
        .form(&star)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn failing_subscriber_gets_every_event_and_410_ends_the_subscription() {
    let node = TestNode::start().await;
    let (callback, subscriber) = start_subscriber().await;
    let fields = [
        ("hub.mode", "subscribe"),
        ("hub.topic", "message.*"),
        ("hub.callback", callback.as_str()),
    ];
    subscribe(&node, &fields).await;
    node.drain(VERIFY_QUEUE).await;
    subscriber.lock().unwrap().answers = vec![
        StatusCode::INTERNAL_SERVER_ERROR,
        StatusCode::SERVICE_UNAVAILABLE,
    ];
    node.post_json("/api/v1/messages", &coo("flaky")).await;
    pump(&node).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while subscriber.lock().unwrap().deliveries.len() < 3 {
        assert!(Instant::now() < deadline, "retries did not deliver");
        tokio::time::sleep(Duration::from_millis(100)).await;
        node.drain(DELIVER_QUEUE).await;
    }
    let health = json(node.get("/api/v1/subscriptions").await).await;
    let subscription = &health["subscriptions"][0];
    assert!(subscription["last_success_at"].is_string());
    assert!(subscription["last_error"].as_str().unwrap().contains("503"));

    subscriber.lock().unwrap().answers = vec![StatusCode::GONE];
    node.post_json("/api/v1/messages", &coo("gone")).await;
    pump(&node).await;
    let listing = json(node.get("/api/v1/subscriptions").await).await;
    assert!(
        listing["subscriptions"].as_array().unwrap().is_empty(),
        "410 removed it"
    );
}
