//! The Admin API over HTTP: probes, metrics, dead letters, queues, and the OpenAPI
//! document and docs page.
//!
//! Every node of this test process shares one Prometheus registry (one global recorder per
//! process), so metric assertions look for series this test caused, never for exact totals.

use igl_core::NewJob;
use igl_core::pipeline::PROCESS_QUEUE;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{TestNode, json};

#[tokio::test]
async fn healthz_answers_without_credentials() {
    let node = TestNode::start().await;
    let response = node
        .anonymous(Method::GET, "/healthz")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json(response).await, json!({"status": "ok"}));
}

#[tokio::test]
async fn readyz_reports_each_check() {
    let node = TestNode::start().await;
    let response = node.anonymous(Method::GET, "/readyz").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        json(response).await,
        json!({"status": "ready", "checks": {"database": "ok", "objects": "ok"}})
    );
}

#[tokio::test]
async fn readyz_is_503_when_the_object_store_is_gone() {
    let node = TestNode::start().await;
    std::fs::remove_dir_all(node.data_path().join("objects")).expect("remove objects dir");
    let response = node.anonymous(Method::GET, "/readyz").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = json(response).await;
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["checks"]["database"], "ok");
    let objects = body["checks"]["objects"].as_str().unwrap();
    assert!(objects.starts_with("unavailable: "), "{objects}");
    assert!(
        !objects.contains(node.data_path().to_str().unwrap()),
        "no internal paths on an unauthenticated probe: {objects}"
    );
    // Liveness does not depend on it.
    let health = node
        .anonymous(Method::GET, "/healthz")
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn metrics_count_requests_by_matched_route_and_show_queue_depth() {
    let node = TestNode::start().await;
    let unknown = node.get("/api/v1/messages/AU:metrics-probe-unknown").await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);

    let response = node
        .anonymous(Method::GET, "/metrics")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    let counted = text.lines().any(|line| {
        line.starts_with("igl_http_requests_total{")
            && line.contains(r#"route="/api/v1/messages/{reference}""#)
            && line.contains(r#"method="GET""#)
            && line.contains(r#"status="404""#)
    });
    assert!(counted, "no request count by matched route in:\n{text}");
    assert!(
        !text.contains("metrics-probe-unknown"),
        "raw paths must never become labels"
    );
    assert!(
        text.contains("igl_http_request_duration_seconds_bucket{"),
        "latency is a histogram:\n{text}"
    );
    for state in ["ready", "scheduled", "in_flight", "dead"] {
        let gauge = text.lines().any(|line| {
            line.starts_with("igl_queue_depth{")
                && line.contains(r#"queue="process""#)
                && line.contains(&format!(r#"state="{state}""#))
        });
        assert!(gauge, "no igl_queue_depth for process/{state} in:\n{text}");
    }
}

#[tokio::test]
async fn unmatched_paths_are_counted_under_one_label() {
    let node = TestNode::start().await;
    let response = node
        .anonymous(Method::GET, "/no/such/path/4f0c")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let text = node.metrics().await;
    assert!(text.contains(r#"route="unmatched""#), "{text}");
    assert!(!text.contains("4f0c"));
}

/// Enqueues a job the processor cannot decode and drains the queue: the processor
/// dead-letters it as a permanent failure. Returns the payload.
async fn make_dead_letter(node: &TestNode) -> Value {
    let payload = json!({"type": "no-such-job.v1", "marker": uuid::Uuid::new_v4().to_string()});
    node.storage()
        .enqueue(&[NewJob::new(PROCESS_QUEUE, payload.clone())])
        .await
        .unwrap();
    node.drain(PROCESS_QUEUE).await;
    payload
}

#[tokio::test]
async fn dead_letters_are_listed_and_replayed() {
    let node = TestNode::start().await;
    let payload = make_dead_letter(&node).await;

    let response = node
        .get("/api/v1/admin/dead-letters?queue=process&limit=10")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let page = json(response).await;
    let letters = page["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{page}");
    let letter = &letters[0];
    assert_eq!(letter["queue"], "process");
    assert_eq!(letter["payload"], payload);
    assert_eq!(letter["attempts"], 1);
    assert!(letter["last_error"].as_str().is_some_and(|e| !e.is_empty()));
    assert!(letter["enqueued_at"].as_str().unwrap().ends_with('Z'));
    assert!(letter["failed_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(page["next_after"], Value::Null);
    let id = letter["id"].as_i64().unwrap();

    // Another queue's filter does not show it.
    let other = json(node.get("/api/v1/admin/dead-letters?queue=route").await).await;
    assert_eq!(other["dead_letters"], json!([]));

    let queues = json(node.get("/api/v1/admin/queues").await).await;
    let process = queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "process")
        .unwrap()
        .clone();
    assert_eq!(process["dead"], 1);
    assert_eq!(process["ready"], 0);

    let replay = node
        .request(
            Method::POST,
            &format!("/api/v1/admin/dead-letters/{id}/replay"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::OK);
    assert_eq!(json(replay).await, json!({"replayed": true}));

    // Back on its queue, no longer a dead letter.
    let depth = node.storage().depth(&PROCESS_QUEUE).await.unwrap();
    assert_eq!((depth.ready, depth.dead), (1, 0));
    let page = json(node.get("/api/v1/admin/dead-letters").await).await;
    assert_eq!(page["dead_letters"], json!([]));
    let claimed = node
        .storage()
        .claim(&PROCESS_QUEUE, 10, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].payload, payload);
    assert_eq!(claimed[0].attempt, 1, "the attempt count is reset");

    // Replaying it again: it is gone.
    let again = node
        .request(
            Method::POST,
            &format!("/api/v1/admin/dead-letters/{id}/replay"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
    let body = json(again).await;
    assert_eq!(body["errors"][0]["code"], "generic-http-error");
}

#[tokio::test]
async fn dead_letters_paginate() {
    let node = TestNode::start().await;
    for _ in 0..3 {
        make_dead_letter(&node).await;
    }
    let first = json(node.get("/api/v1/admin/dead-letters?limit=2").await).await;
    assert_eq!(first["dead_letters"].as_array().unwrap().len(), 2);
    let after = first["next_after"].as_i64().expect("a next page");
    assert_eq!(after, first["dead_letters"][1]["id"].as_i64().unwrap());
    let second = json(
        node.get(&format!("/api/v1/admin/dead-letters?limit=2&after={after}"))
            .await,
    )
    .await;
    assert_eq!(second["dead_letters"].as_array().unwrap().len(), 1);
    assert_eq!(second["next_after"], Value::Null);
    assert!(second["dead_letters"][0]["id"].as_i64().unwrap() > after);
}

#[tokio::test]
async fn dead_letter_requests_are_validated() {
    let node = TestNode::start().await;
    for query in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "queue=Not%20A%20Queue",
        "after=x",
    ] {
        let response = node
            .get(&format!("/api/v1/admin/dead-letters?{query}"))
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        let body = json(response).await;
        assert_eq!(body["errors"][0]["status"], "Bad Request", "{query}");
    }
    let response = node
        .request(Method::POST, "/api/v1/admin/dead-letters/abc/replay")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = node
        .request(Method::POST, "/api/v1/admin/dead-letters/424242/replay")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn admin_operations_need_credentials() {
    let node = TestNode::start().await;
    for (method, path) in [
        (Method::GET, "/api/v1/admin/dead-letters"),
        (Method::POST, "/api/v1/admin/dead-letters/1/replay"),
        (Method::GET, "/api/v1/admin/queues"),
    ] {
        let response = node.anonymous(method.clone(), path).send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{method} {path}"
        );
        let body = json(response).await;
        assert_eq!(body["errors"][0]["status"], "Unauthorized");
        let response = node
            .anonymous(method.clone(), path)
            .bearer_auth("not-a-token")
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn admin_operations_are_for_the_own_jurisdiction_only() {
    const FOREIGN: &str = "sg-operator-token-0123456789";
    let node = TestNode::builder()
        .static_token(FOREIGN, "SG")
        .start()
        .await;
    make_dead_letter(&node).await;
    for (method, path) in [
        (Method::GET, "/api/v1/admin/dead-letters"),
        (Method::POST, "/api/v1/admin/dead-letters/1/replay"),
        (Method::GET, "/api/v1/admin/queues"),
    ] {
        let response = node
            .anonymous(method.clone(), path)
            .bearer_auth(FOREIGN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{method} {path}");
        let body = json(response).await;
        assert_eq!(body["errors"][0]["status"], "Forbidden");
    }
    // Nothing was replayed.
    let depth = node.storage().depth(&PROCESS_QUEUE).await.unwrap();
    assert_eq!((depth.ready, depth.dead), (0, 1));
}

#[tokio::test]
async fn openapi_document_lists_every_api() {
    let node = TestNode::start().await;
    let response = node
        .anonymous(Method::GET, "/api/v1/openapi.json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let document = json(response).await;
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let paths = document["paths"].as_object().unwrap();
    for path in [
        "/api/v1/messages",
        "/api/v1/messages/{reference}",
        "/message",
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/v1/admin/dead-letters",
        "/api/v1/admin/dead-letters/{id}/replay",
        "/api/v1/admin/queues",
        "/api/v1/documents",
        "/channel-message/{channel_id}",
    ] {
        assert!(paths.contains_key(path), "{path} not documented");
    }
    assert_eq!(document["paths"]["/message"]["post"]["deprecated"], true);
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert!(document["components"]["schemas"]["ErrorResponse"].is_object());
}

#[tokio::test]
async fn docs_page_is_served_offline() {
    let node = TestNode::start().await;
    // `/api/docs` redirects to `/api/docs/`; the client follows.
    let response = node
        .anonymous(Method::GET, "/api/docs")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let page = response.text().await.unwrap();
    assert!(page.contains("swagger-ui"), "{page}");
    // The assets come from the binary, not a CDN.
    assert!(!page.contains("https://"), "{page}");
    let config = node
        .anonymous(Method::GET, "/api/docs/swagger-initializer.js")
        .send()
        .await
        .unwrap();
    assert_eq!(config.status(), StatusCode::OK);
    assert!(
        config
            .text()
            .await
            .unwrap()
            .contains("/api/v1/openapi.json")
    );
    let bundle = node
        .anonymous(Method::GET, "/api/docs/swagger-ui-bundle.js")
        .send()
        .await
        .unwrap();
    assert_eq!(bundle.status(), StatusCode::OK);
    assert!(bundle.bytes().await.unwrap().len() > 100_000);
}
