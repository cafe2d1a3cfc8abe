//! The Message Reception API (channel-facing) over HTTP.

use igl_core::pipeline::CHANNEL_MESSAGE_QUEUE;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::TestNode;

async fn node() -> TestNode {
    TestNode::builder()
        .channel("au-sg", "http://127.0.0.1:9/")
        .start()
        .await
}

#[tokio::test]
async fn intent_verification_echoes_the_challenge_for_our_subscriptions() {
    let node = node().await;
    let verify = |query: &str| {
        node.anonymous(Method::GET, &format!("/channel-message/au-sg?{query}"))
            .send()
    };
    let ok = verify("hub.mode=subscribe&hub.topic=jurisdiction.AU&hub.challenge=abc123&hub.lease_seconds=432000")
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.text().await.unwrap(), "abc123");
    let bare = verify("hub.mode=unsubscribe&hub.topic=AU&hub.challenge=x")
        .await
        .unwrap();
    assert_eq!(bare.status(), StatusCode::OK);

    let other = verify("hub.mode=subscribe&hub.topic=jurisdiction.SG&hub.challenge=x")
        .await
        .unwrap();
    assert_eq!(
        other.status(),
        StatusCode::NOT_FOUND,
        "not our subscription"
    );
    let mode = verify("hub.mode=publish&hub.topic=AU&hub.challenge=x")
        .await
        .unwrap();
    assert_eq!(mode.status(), StatusCode::BAD_REQUEST);
    let no_challenge = verify("hub.mode=subscribe&hub.topic=AU").await.unwrap();
    assert_eq!(no_challenge.status(), StatusCode::BAD_REQUEST);
    let unknown = node
        .anonymous(
            Method::GET,
            "/channel-message/nope?hub.mode=subscribe&hub.topic=AU&hub.challenge=x",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn notifications_queue_one_retrieval_per_channel_message() {
    let node = node().await;
    let post = |channel: &'static str, body: serde_json::Value| {
        node.anonymous(Method::POST, &format!("/channel-message/{channel}"))
            .json(&body)
            .send()
    };
    let first = post("au-sg", json!({"id": 17})).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert!(first.text().await.unwrap().is_empty());
    assert_eq!(
        post("au-sg", json!({"id": 17})).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        post("au-sg", json!({"id": "0xabc"}))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let depth = node.storage().depth(&CHANNEL_MESSAGE_QUEUE).await.unwrap();
    assert_eq!(depth.ready, 2, "a repeated notification is queued once");

    assert_eq!(
        post("nope", json!({"id": 1})).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        post("au-sg", json!({"x": 1})).await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    let text = node
        .anonymous(Method::POST, "/channel-message/au-sg")
        .header("content-type", "text/plain")
        .body("17")
        .send()
        .await
        .unwrap();
    assert_eq!(text.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        node.storage()
            .depth(&CHANNEL_MESSAGE_QUEUE)
            .await
            .unwrap()
            .ready,
        2
    );
}
