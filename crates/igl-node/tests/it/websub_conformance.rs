//! Conformance of the node's hub to the W3C WebSub recommendation (hub MUSTs) and the
//! websub.rocks hub tests, over HTTP against a node on port 0 with a real callback server.
//!
//! | requirement | test |
//! |---|---|
//! | §5.1 form-encoded request; 202 when accepted, 4xx when rejected | [`typical_subscription_is_accepted_verified_and_delivered`], `hub::malformed_requests_get_the_reference_errors_and_never_500` |
//! | §5.1 unknown parameters ignored | [`extra_parameters_are_ignored`] |
//! | §5.2 denial notification (`hub.mode=denied`, `hub.topic`, `hub.reason`) | [`subscription_refused_by_policy_is_denied_with_a_notification`] |
//! | §5.2 / security: callbacks refused by the SSRF policy are never contacted | [`callback_refused_by_the_callback_policy_is_never_contacted`] |
//! | §5.3 verification GET: mode, topic, challenge, lease, callback query kept | [`verification_carries_mode_topic_challenge_and_lease_and_keeps_the_query`] |
//! | §5.3 challenge single-use; only 2xx + echoed challenge activates | [`challenges_are_single_use`], [`failed_verification_leaves_the_previous_state`] |
//! | §5.3 lease: expired subscriptions receive nothing | [`expired_lease_stops_delivery`] |
//! | §6 re-subscribe updates, unsubscribe verified | [`resubscribe_updates_instead_of_duplicating`], [`unsubscribe_is_verified_and_stops_delivery`] |
//! | §7 POST body, Content-Type, `Link` rel=hub and rel=self | [`typical_subscription_is_accepted_verified_and_delivered`], [`json_content_is_delivered_as_is`] |
//! | §7 any 2xx is success | [`any_2xx_answer_is_a_delivery`] |
//! | §7 410 Gone ends the subscription | [`gone_ends_the_subscription`] |
//! | §7 failures retried | `hub::subscriber_failing_for_a_while_gets_every_event` |
//! | §8 `X-Hub-Signature: sha256=` HMAC of the raw body | [`secret_signs_every_delivery`] |
//!
//! websub.rocks hub tests: 100 typical subscriber request, 101 subscriber includes a
//! secret, 102 subscriber sends additional parameters, 103 re-subscribes before
//! expiration, 104 unsubscribe request, 106 JSON content. 105 (plaintext content) does not
//! apply: the node's topics publish JSON events only.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use igl_core::pipeline::VERIFY_QUEUE;
use igl_websub::VerifyJob;
use serde_json::Value;

use crate::hub::{CallbackServer, coo, listed, pump, subscribe, subscribe_verified};
use crate::support::TestNode;

/// websub.rocks 100 (typical subscriber request): only `hub.mode`, `hub.topic` and
/// `hub.callback`; the hub answers 202, verifies, and delivers without a signature, with
/// `Content-Type` and `Link: <hub>; rel="hub", <topic>; rel="self"`.
#[tokio::test]
async fn typical_subscription_is_accepted_verified_and_delivered() {
    let node = TestNode::start().await;
    let server = CallbackServer::start().await;
    let response = subscribe(
        &node,
        &[
            ("hub.mode", "subscribe"),
            ("hub.topic", "UN.CEFACT.*"),
            ("hub.callback", &server.url),
        ],
    )
    .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(listed(&node).await.is_empty(), "active only once verified");
    assert_eq!(node.drain(VERIFY_QUEUE).await.done, 1);
    assert_eq!(listed(&node).await.len(), 1);

    node.post_json("/api/v1/messages", &coo("typical")).await;
    pump(&node).await;
    let seen = server.seen();
    assert_eq!(seen.deliveries.len(), 1, "the fat ping on the predicate");
    let (headers, body) = &seen.deliveries[0];
    assert!(
        headers.get("x-hub-signature").is_none(),
        "no secret, no signature"
    );
    assert_eq!(headers["content-type"], "application/json");
    let link = headers["link"].to_str().unwrap();
    assert!(
        link.contains(&format!(
            "<{}/api/v1/subscriptions>; rel=\"hub\"",
            node.base
        )),
        "{link}"
    );
    assert!(
        link.contains("<UN.CEFACT.Trade.CertificateOfOrigin.created>; rel=\"self\""),
        "{link}"
    );
    let payload: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(payload["sender_ref"], "typical");
}

/// websub.rocks 101 (subscriber includes a secret), W3C §8: every delivery carries
/// `X-Hub-Signature: sha256=<hex HMAC-SHA256 of the raw body>` with the subscriber's secret.
#[tokio::test]
async fn secret_signs_every_delivery() {
    let node = TestNode::start().await;
    let server = CallbackServer::start().await;
    subscribe_verified(&node, "*", &server.url, Some("s3cret")).await;
    node.post_json("/api/v1/messages", &coo("signed")).await;
    pump(&node).await;
    {
        let seen = server.seen();
        assert_eq!(seen.deliveries.len(), 2, "fat ping and light ping");
        for (headers, body) in &seen.deliveries {
            let signature = headers["x-hub-signature"].to_str().unwrap();
            assert!(signature.starts_with("sha256=") && signature.len() == 7 + 64);
            assert!(igl_websub::signature::verify(b"s3cret", body, signature));
            assert!(!igl_websub::signature::verify(b"other", body, signature));
        }
    }
    assert_eq!(listed(&node).await[0]["has_secret"], true);
}

/// websub.rocks 102 (subscriber sends additional parameters), W3C §5.1: parameters the
/// hub does not know are ignored.
#[tokio::test]
async fn extra_parameters_are_ignored() {
    let node = TestNode::start().await;
    let server = CallbackServer::start().await;
    let response = subscribe(
        &node,
        &[
            ("hub.mode", "subscribe"),
            ("hub.topic", "message.*"),
            ("hub.callback", &server.url),
            ("hub.extra", "ignored"),
            ("foo", "bar"),
        ],
    )
    .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    node.drain(VERIFY_QUEUE).await;
    let query = server.seen().verifications[0].clone();
    assert!(!query.contains_key("hub.extra") && !query.contains_key("foo"));
    node.post_json("/api/v1/messages", &coo("extra")).await;
    pump(&node).await;
    assert_eq!(server.seen().event_ids().len(), 1);
}

/// websub.rocks 103 (re-subscribes before expiration), W3C §6: a second subscription of
/// the same (topic, callback) renews it — new lease and secret — instead of adding one.
#[tokio::test]
async fn resubscribe_updates_instead_of_duplicating() {
    let node = TestNode::start().await;
    let server = CallbackServer::start().await;
    for (lease, secret) in [("7200", "first"), ("86400", "second")] {
        let fields = [
            ("hub.mode", "subscribe"),
            ("hub.topic", "message.*"),
            ("hub.callback", server.url.as_str()),
            ("hub.lease_seconds", lease),
            ("hub.secret", secret),
        ];
        assert_eq!(
            subscribe(&node, &fields).await.status(),
            StatusCode::ACCEPTED
        );
        node.drain(VERIFY_QUEUE).await;
    }
    let subscriptions = listed(&node).await;
    assert_eq!(subscriptions.len(), 1, "updated, not duplicated");
    let expires = time::OffsetDateTime::parse(
        subscriptions[0]["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(
        expires > time::OffsetDateTime::now_utc() + time::Duration::hours(20),
        "the second lease applies"
    );
    node.post_json("/api/v1/messages", &coo("renewed")).await;
    pump(&node).await;
    let seen = server.seen();
    assert_eq!(
        seen.deliveries.len(),
        1,
        "one delivery, not one per request"
    );
    let (headers, body) = &seen.deliveries[0];
    assert!(igl_websub::signature::verify(
        b"second",
        body,
        headers["x-hub-signature"].to_str().unwrap()
    ));
}

/// websub.rocks 104 (unsubscribe request), W3C §5.3: an unsubscription is verified like a
/// subscription (`hub.mode=unsubscribe`) and then nothing more is delivered.
#[tokio::test]
async fn unsubscribe_is_verified_and_stops_delivery() {
    let node = TestNode::start().await;
    let server = CallbackServer::start().await;
    subscribe_verified(&node, "message.*", &server.url, None).await;
    node.post_json("/api/v1/messages", &coo("before")).await;
    pump(&node).await;
    assert_eq!(server.seen().deliveries.len(), 1);

    let fields = [
        ("hub.mode", "unsubscribe"),
        ("hub.topic", "message.*"),
        ("hub.callback", server.url.as_str()),
    ];
    assert_eq!(
        subscribe(&node, &fields).await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(listed(&node).await.len(), 1, "still active until verified");
    node.drain(VERIFY_QUEUE).await;
    let last = server.seen().verifications.last().unwrap().clone();
    assert_eq!(last["hub.mode"], "unsubscribe");
    assert_eq!(last["hub.topic"], "message.*");
    assert!(listed(&node).await.is_empty());
    node.post_json("/api/v1/messages", &coo("after")).await;
    pump(&node).await;
    assert_eq!(
        server.seen().deliveries.len(),
        1,
        "nothing after unsubscribing"
    );
    assert_eq!(
        subscribe(&node, &fields).await.status(),
        StatusCode::NOT_FOUND,
        "unsubscribing again: no such subscription (as the reference)"
    );
}

/// websub.rocks 106 (JSON content), W3C §7: the body is the event's JSON as published,
/// with `Content-Type: application/json`.
#[tokio::test]
async fn json_content_is_delivered_as_is() {
    let node = TestNode::start().await;
    let server = CallbackServer::start().await;
    subscribe_verified(&node, "UN.CEFACT.Trade.*", &server.url, None).await;
    node.post_json("/api/v1/messages", &coo("json")).await;
    pump(&node).await;
    let (headers, body) = server.seen().deliveries[0].clone();
    assert_eq!(headers["content-type"], "application/json");
    let event = node
        .storage()
        .get_event(headers["x-igl-event-id"].to_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        event.payload
    );
    assert!(
        event.payload.get("status").is_none(),
        "the reference's fat ping"
    );
}

/// W3C §5.3: the verification GET carries `hub.mode`, `hub.topic`, `hub.challenge` and
/// `hub.lease_seconds`, and keeps the callback's own query string.
#[tokio::test]
async fn verification_carries_mode_topic_challenge_and_lease_and_keeps_the_query() {
    let node = TestNode::start().await;
    let server = CallbackServer::start().await;
    let fields = [
        ("hub.mode", "subscribe"),
        ("hub.topic", "UN.CEFACT.*"),
        ("hub.callback", server.url.as_str()),
        ("hub.lease_seconds", "7200"),
    ];
    subscribe(&node, &fields).await;
    node.drain(VERIFY_QUEUE).await;
    let query = server.seen().verifications[0].clone();
    assert_eq!(query["hub.mode"], "subscribe");
    assert_eq!(query["hub.topic"], "UN.CEFACT.*");
    assert_eq!(query["hub.lease_seconds"], "7200");
    assert_eq!(query["client"], "42", "the callback's query string is kept");
    assert!(query["hub.challenge"].len() >= 32);
    // Without a requested lease, the hub's default (10 days) is granted and announced.
    let other = CallbackServer::start().await;
    subscribe_verified(&node, "message.*", &other.url, None).await;
    assert_eq!(other.seen().verifications[0]["hub.lease_seconds"], "864000");
}

/// W3C §5.3: every verification uses a fresh challenge, so an old echo proves nothing.
#[tokio::test]
async fn challenges_are_single_use() {
    let node = TestNode::start().await;
    let server = CallbackServer::start().await;
    for _ in 0..3 {
        subscribe_verified(&node, "message.*", &server.url, None).await;
    }
    let challenges: std::collections::BTreeSet<String> = server
        .seen()
        .verifications
        .iter()
        .map(|query| query["hub.challenge"].clone())
        .collect();
    assert_eq!(challenges.len(), 3);
}

/// W3C §5.3: only a 2xx whose body is the challenge verifies; a wrong echo or a non-2xx
/// answer leaves the previous state as it was (no new subscription, an existing one kept,
/// an unsubscription not done).
#[tokio::test]
async fn failed_verification_leaves_the_previous_state() {
    let node = TestNode::start().await;
    let server = CallbackServer::start().await;
    server.seen().refuse = true;
    let fields = [
        ("hub.mode", "subscribe"),
        ("hub.topic", "message.*"),
        ("hub.callback", server.url.as_str()),
    ];
    subscribe(&node, &fields).await;
    node.drain(VERIFY_QUEUE).await;
    assert!(listed(&node).await.is_empty(), "wrong echo: not subscribed");

    server.seen().refuse = false;
    subscribe_verified(&node, "message.*", &server.url, Some("kept")).await;
    server.seen().refuse = true;
    let renew = [
        ("hub.mode", "subscribe"),
        ("hub.topic", "message.*"),
        ("hub.callback", server.url.as_str()),
        ("hub.secret", "replaced"),
    ];
    subscribe(&node, &renew).await;
    node.drain(VERIFY_QUEUE).await;
    let unsubscribe = [
        ("hub.mode", "unsubscribe"),
        ("hub.topic", "message.*"),
        ("hub.callback", server.url.as_str()),
    ];
    assert_eq!(
        subscribe(&node, &unsubscribe).await.status(),
        StatusCode::ACCEPTED
    );
    node.drain(VERIFY_QUEUE).await;
    assert_eq!(listed(&node).await.len(), 1, "still subscribed");

    // A callback answering 404 (a different subscriber now lives there) does not verify.
    let gone = CallbackServer::start().await;
    let not_found = [
        ("hub.mode", "subscribe"),
        ("hub.topic", "message.*"),
        ("hub.callback", &gone.url.replace("/cb?", "/missing?")),
    ];
    subscribe(&node, &not_found).await;
    node.drain(VERIFY_QUEUE).await;
    assert_eq!(listed(&node).await.len(), 1);

    server.seen().refuse = false;
    node.post_json("/api/v1/messages", &coo("kept")).await;
    pump(&node).await;
    let seen = server.seen();
    let (headers, body) = &seen.deliveries[0];
    assert!(
        igl_websub::signature::verify(b"kept", body, headers["x-hub-signature"].to_str().unwrap()),
        "the unverified renewal did not replace the secret"
    );
}

/// W3C §5.3 (lease): once a subscription's lease ends it receives nothing.
#[tokio::test]
async fn expired_lease_stops_delivery() {
    let node = TestNode::builder()
        .configure(|settings| settings.hub.min_lease_secs = 1)
        .start()
        .await;
    let server = CallbackServer::start().await;
    let fields = [
        ("hub.mode", "subscribe"),
        ("hub.topic", "message.*"),
        ("hub.callback", server.url.as_str()),
        ("hub.lease_seconds", "1"),
    ];
    subscribe(&node, &fields).await;
    node.drain(VERIFY_QUEUE).await;
    let expires = listed(&node).await[0]["expires_at"]
        .as_str()
        .unwrap()
        .to_owned();
    let expires =
        time::OffsetDateTime::parse(&expires, &time::format_description::well_known::Rfc3339)
            .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while time::OffsetDateTime::now_utc() <= expires {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.post_json("/api/v1/messages", &coo("late")).await;
    pump(&node).await;
    assert!(server.seen().deliveries.is_empty());
}

/// W3C §7: any 2xx answer is a successful delivery (no retry).
#[tokio::test]
async fn any_2xx_answer_is_a_delivery() {
    let node = TestNode::start().await;
    let server = CallbackServer::start().await;
    server.seen().ok = Some(StatusCode::NO_CONTENT);
    server.seen().answers = vec![StatusCode::ACCEPTED];
    subscribe_verified(&node, "message.*", &server.url, None).await;
    for reference in ["two-a", "two-b"] {
        node.post_json("/api/v1/messages", &coo(reference)).await;
    }
    pump(&node).await;
    assert_eq!(server.seen().deliveries.len(), 2);
    let redeliveries = node
        .storage()
        .depth(&igl_core::pipeline::REDELIVER_QUEUE)
        .await
        .unwrap();
    assert_eq!(redeliveries.ready + redeliveries.scheduled, 0, "no retry");
}

/// W3C §7 (and the reference): a subscriber answering 410 Gone is unsubscribed.
#[tokio::test]
async fn gone_ends_the_subscription() {
    let node = TestNode::start().await;
    let server = CallbackServer::start().await;
    subscribe_verified(&node, "message.*", &server.url, None).await;
    server.seen().answers = vec![StatusCode::GONE];
    node.post_json("/api/v1/messages", &coo("gone")).await;
    pump(&node).await;
    assert!(listed(&node).await.is_empty(), "410 removed it");
    node.post_json("/api/v1/messages", &coo("after-gone")).await;
    pump(&node).await;
    assert_eq!(server.seen().deliveries.len(), 1);
}

/// W3C §5.2: a subscription the hub refuses by policy after accepting the request (here:
/// the hub is full) is denied with a GET carrying `hub.mode=denied`, `hub.topic` and
/// `hub.reason`, and nothing is subscribed. Renewing an existing subscription is not
/// denied.
#[tokio::test]
async fn subscription_refused_by_policy_is_denied_with_a_notification() {
    let node = TestNode::builder()
        .configure(|settings| settings.hub.max_subscriptions = 1)
        .start()
        .await;
    let first = CallbackServer::start().await;
    subscribe_verified(&node, "message.*", &first.url, None).await;
    let second = CallbackServer::start().await;
    let fields = [
        ("hub.mode", "subscribe"),
        ("hub.topic", "UN.CEFACT.*"),
        ("hub.callback", second.url.as_str()),
    ];
    assert_eq!(
        subscribe(&node, &fields).await.status(),
        StatusCode::ACCEPTED
    );
    node.drain(VERIFY_QUEUE).await;
    {
        let seen = second.seen();
        assert_eq!(seen.verifications.len(), 1);
        let denial = &seen.verifications[0];
        assert_eq!(denial["hub.mode"], "denied");
        assert_eq!(denial["hub.topic"], "UN.CEFACT.*");
        assert!(denial["hub.reason"].contains("maximum"), "{denial:?}");
        assert!(!denial.contains_key("hub.challenge"));
        assert_eq!(
            denial["client"], "42",
            "the callback's query string is kept"
        );
    }
    let subscriptions = listed(&node).await;
    assert_eq!(subscriptions.len(), 1);
    assert_eq!(subscriptions[0]["callback"], first.url.as_str());
    // The existing subscription renews at the limit.
    subscribe_verified(&node, "message.*", &first.url, None).await;
    assert_eq!(first.seen().verifications[1]["hub.mode"], "subscribe");
}

/// A callback the SSRF policy refuses is never contacted: refused with 400 at request time,
/// and, should the policy change between request and verification, dropped then without a
/// verification or denial request.
#[tokio::test]
async fn callback_refused_by_the_callback_policy_is_never_contacted() {
    let node = TestNode::builder()
        .configure(|settings| settings.hub.allow_private_callbacks = false)
        .start()
        .await;
    let server = CallbackServer::start().await;
    let fields = [
        ("hub.mode", "subscribe"),
        ("hub.topic", "message.*"),
        ("hub.callback", server.url.as_str()),
    ];
    let response = subscribe(&node, &fields).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // A request queued while loopback callbacks were still allowed.
    let queued = VerifyJob {
        mode: "subscribe".into(),
        topic: "message.*".into(),
        callback: server.url.clone(),
        lease_seconds: 3600,
        secret: None,
    };
    node.storage()
        .enqueue(&[queued.into_new_job()])
        .await
        .unwrap();
    let report = node.drain(VERIFY_QUEUE).await;
    assert_eq!((report.done, report.dead_lettered), (1, 0));
    assert!(server.seen().verifications.is_empty(), "never contacted");
    assert!(listed(&node).await.is_empty());
}
