//! The WebSub hub over HTTP with a real callback server: the subscriber used by these
//! tests and `websub_conformance`, malformed requests, and delivery under failure
//! (subscriber failing for a while, down past the retry policy → dead letters → replay,
//! 410, and a subscriber outage spanning a node restart).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use igl_core::pipeline::{
    DELIVER_QUEUE, PROCESS_QUEUE, REDELIVER_QUEUE, ROUTE_QUEUE, SPREAD_QUEUE, VERIFY_QUEUE,
};
use igl_domain::Multihash;
use igl_workers::RetryPolicy;
use reqwest::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::{Database, TestNode, fresh_schema, json};

/// What a subscriber's callback endpoint saw and how it answers.
#[derive(Default)]
pub struct Subscriber {
    /// Verification and denial requests seen (query parameters).
    pub verifications: Vec<HashMap<String, String>>,
    /// Deliveries seen: headers and body.
    pub deliveries: Vec<(HeaderMap, Vec<u8>)>,
    /// The status each delivery was answered with.
    pub statuses: Vec<StatusCode>,
    /// Echo a wrong challenge (refuse verification).
    pub refuse: bool,
    /// Status codes to answer deliveries with, in order; `ok` when exhausted.
    pub answers: Vec<StatusCode>,
    /// The answer to deliveries once `answers` is exhausted (200 when unset).
    pub ok: Option<StatusCode>,
    /// Answer deliveries only after this long.
    pub delay: Option<Duration>,
}

impl Subscriber {
    /// The `x-igl-event-id`s of the deliveries answered with a 2xx.
    pub fn event_ids(&self) -> BTreeSet<String> {
        self.deliveries
            .iter()
            .zip(&self.statuses)
            .filter(|(_, status)| status.is_success())
            .map(|((headers, _), _)| headers["x-igl-event-id"].to_str().unwrap().to_owned())
            .collect()
    }
}

pub type Shared = Arc<Mutex<Subscriber>>;

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
    let delay = state.lock().unwrap().delay;
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let mut subscriber = state.lock().unwrap();
    subscriber.deliveries.push((headers, body.to_vec()));
    let status = if subscriber.answers.is_empty() {
        subscriber.ok.unwrap_or(StatusCode::OK)
    } else {
        subscriber.answers.remove(0)
    };
    subscriber.statuses.push(status);
    status
}

/// A subscriber's HTTP server that can go down (its port then refuses connections) and
/// come back on the same port.
pub struct CallbackServer {
    /// `http://127.0.0.1:<port>/cb?client=42` (a query string the hub must keep).
    pub url: String,
    /// What it saw.
    pub state: Shared,
    addr: SocketAddr,
    stop: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
}

impl CallbackServer {
    /// Starts a subscriber on a free port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut server = Self {
            url: format!("http://{addr}/cb?client=42"),
            state: Arc::default(),
            addr,
            stop: None,
        };
        server.serve(listener);
        server
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/cb", get(verify).post(deliver))
            .with_state(self.state.clone());
        let token = CancellationToken::new();
        let stop = token.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .unwrap();
        });
        self.stop = Some((token, task));
    }

    /// Stops serving: connections to the port are refused until [`CallbackServer::up`].
    pub async fn down(&mut self) {
        if let Some((token, task)) = self.stop.take() {
            token.cancel();
            task.await.unwrap();
        }
    }

    /// Serves again on the same port.
    pub async fn up(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    /// The state, locked.
    pub fn seen(&self) -> std::sync::MutexGuard<'_, Subscriber> {
        self.state.lock().unwrap()
    }
}

/// POSTs a form-encoded subscription request to the hub.
pub async fn subscribe(node: &TestNode, fields: &[(&str, &str)]) -> reqwest::Response {
    node.request(Method::POST, "/api/v1/subscriptions")
        .form(fields)
        .send()
        .await
        .unwrap()
}

/// Subscribes `callback` to `topic` (optionally with a secret) and verifies the intent.
pub async fn subscribe_verified(
    node: &TestNode,
    topic: &str,
    callback: &str,
    secret: Option<&str>,
) {
    let mut fields = vec![
        ("hub.mode", "subscribe"),
        ("hub.topic", topic),
        ("hub.callback", callback),
    ];
    if let Some(secret) = secret {
        fields.push(("hub.secret", secret));
    }
    assert_eq!(
        subscribe(node, &fields).await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(node.drain(VERIFY_QUEUE).await.done, 1);
}

/// An outbound certificate of origin with this sender_ref.
pub fn coo(sender_ref: &str) -> Value {
    json!({
        "sender": "AU", "receiver": "SG", "subject": "AU.abn.1",
        "obj": Multihash::of(b"coo").to_string(),
        "predicate": "UN.CEFACT.Trade.CertificateOfOrigin.created", "sender_ref": sender_ref,
    })
}

/// The subscriptions listed by the operator API.
pub async fn listed(node: &TestNode) -> Vec<Value> {
    json(node.get("/api/v1/subscriptions").await).await["subscriptions"]
        .as_array()
        .unwrap()
        .clone()
}

/// Runs the pipeline until events are delivered: process, spread, deliver (fast lane).
pub async fn pump(node: &TestNode) {
    node.drain(PROCESS_QUEUE).await;
    node.drain(SPREAD_QUEUE).await;
    node.drain(DELIVER_QUEUE).await;
}

/// A slow-lane retry policy for tests: `attempts` tries, 20 ms apart.
fn quick_retries(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts: attempts,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(20),
    }
}

/// Drains the slow lane (with quick retries) until `done` holds, failing after 30 s.
async fn redeliver_until(node: &TestNode, attempts: u32, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "condition not met in 30 s");
        node.drain_with_retry(REDELIVER_QUEUE, quick_retries(attempts))
            .await;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn malformed_requests_get_the_reference_errors_and_never_500() {
    let node = TestNode::start().await;
    let server = CallbackServer::start().await;
    let callback = server.url.as_str();
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![("hub.mode", "subscribe"), ("hub.callback", callback)],
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
                ("hub.callback", callback),
            ],
            "topic-validation-error",
        ),
        (
            vec![
                ("hub.mode", "subscribe"),
                ("hub.topic", "UN.CEFACT"),
                ("hub.callback", callback),
            ],
            "topic-validation-error",
        ),
        (
            vec![
                ("hub.mode", "subscribe"),
                ("hub.topic", "a.b"),
                ("hub.callback", callback),
                ("hub.lease_seconds", "soon"),
            ],
            "lease-seconds-validation-error",
        ),
        (
            vec![
                ("hub.mode", "subscribe"),
                ("hub.topic", "a.b"),
                ("hub.callback", callback),
                ("hub.lease_seconds", "10"),
            ],
            "lease-seconds-validation-error",
        ),
        (
            vec![
                ("hub.mode", "publish"),
                ("hub.topic", "a.b"),
                ("hub.callback", callback),
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
        ("hub.callback", callback),
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
    assert!(
        server.seen().verifications.is_empty(),
        "nothing verified before the queue runs"
    );
}

/// A subscriber answering 500 then 503 gets every event on the slow lane; its health shows
/// an error and the last success.
#[tokio::test]
async fn subscriber_failing_for_a_while_gets_every_event() {
    let node = TestNode::start().await;
    let server = CallbackServer::start().await;
    subscribe_verified(&node, "message.*", &server.url, None).await;
    server.seen().answers = vec![
        StatusCode::INTERNAL_SERVER_ERROR,
        StatusCode::SERVICE_UNAVAILABLE,
    ];
    for reference in ["flaky-1", "flaky-2"] {
        node.post_json("/api/v1/messages", &coo(reference)).await;
    }
    pump(&node).await;
    let expected: BTreeSet<String> = ["AU:flaky-1/received", "AU:flaky-2/received"]
        .map(String::from)
        .into();
    redeliver_until(&node, 10, || server.seen().event_ids() == expected).await;
    assert_eq!(
        server.seen().deliveries.len(),
        4,
        "two failed attempts, then one delivery per event"
    );
    let health = &listed(&node).await[0];
    assert!(health["last_success_at"].is_string(), "{health}");
    // Failures are recorded at most once a second per subscription: the 500 or the 503.
    assert!(
        health["last_error"]
            .as_str()
            .unwrap()
            .contains("answered 50"),
        "{health}"
    );
    assert!(health["last_failure_at"].is_string(), "{health}");
}

/// A subscriber down longer than the retry policy: its deliveries become dead letters on
/// the `redeliver` queue, visible in the admin API; once it is back, replaying them
/// delivers them. The subscription itself stays and receives new events.
#[tokio::test]
async fn subscriber_down_past_the_policy_gets_dead_letters_that_replay_delivers() {
    let node = TestNode::start().await;
    let mut server = CallbackServer::start().await;
    subscribe_verified(&node, "message.*", &server.url, Some("dl-secret")).await;
    server.down().await;
    node.post_json("/api/v1/messages", &coo("dl-1")).await;
    pump(&node).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let report = node
            .drain_with_retry(REDELIVER_QUEUE, quick_retries(3))
            .await;
        let depth = node.storage().depth(&REDELIVER_QUEUE).await.unwrap();
        if depth.dead == 1 && report.claimed == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "not dead-lettered: {depth:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let page = json(node.get("/api/v1/admin/dead-letters?queue=redeliver").await).await;
    let letters = page["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{page}");
    assert_eq!(letters[0]["payload"]["event_id"], "AU:dl-1/received");
    assert_eq!(letters[0]["attempts"], 3);
    assert!(
        letters[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("failed"),
        "{page}"
    );
    assert_eq!(listed(&node).await.len(), 1, "the subscription stays");

    server.up().await;
    let id = letters[0]["id"].as_i64().unwrap();
    let replay = node
        .request(
            Method::POST,
            &format!("/api/v1/admin/dead-letters/{id}/replay"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::OK);
    redeliver_until(&node, 3, || !server.seen().deliveries.is_empty()).await;
    {
        let seen = server.seen();
        let (headers, body) = &seen.deliveries[0];
        assert_eq!(headers["x-igl-event-id"], "AU:dl-1/received");
        assert!(igl_websub::signature::verify(
            b"dl-secret",
            body,
            headers["x-hub-signature"].to_str().unwrap()
        ));
    }
    // New events reach it again.
    node.post_json("/api/v1/messages", &coo("dl-2")).await;
    pump(&node).await;
    redeliver_until(&node, 3, || {
        server.seen().event_ids().contains("AU:dl-2/received")
    })
    .await;
}

/// Done-when of issue 5: a subscriber with a secret receives every status change of its
/// messages, signed, across its own outage and a node restart (stop, start a new node on
/// the same data directory, deliveries resume, nothing lost).
#[tokio::test]
async fn every_status_change_arrives_across_a_subscriber_outage_and_a_node_restart() {
    outage_and_restart(Database::Sqlite).await;
}

/// [`every_status_change_arrives_across_a_subscriber_outage_and_a_node_restart`] on
/// PostgreSQL.
#[cfg_attr(igl_skip_postgres, ignore = "set IGL_TEST_POSTGRES_URL to run")]
#[tokio::test]
async fn every_status_change_arrives_across_a_subscriber_outage_and_a_node_restart_on_postgres() {
    outage_and_restart(Database::Postgres {
        schema: fresh_schema(),
    })
    .await;
}

async fn outage_and_restart(database: Database) {
    let node = TestNode::builder().database(database).start().await;
    let mut server = CallbackServer::start().await;
    subscribe_verified(&node, "message.*", &server.url, Some("restart-secret")).await;
    server.down().await;
    // Each message: the light ping `received`, then `rejected` (a lone node has no route).
    for reference in ["rs-1", "rs-2"] {
        node.post_json("/api/v1/messages", &coo(reference)).await;
    }
    node.drain(PROCESS_QUEUE).await;
    node.drain(ROUTE_QUEUE).await;
    node.drain(SPREAD_QUEUE).await;
    node.drain(DELIVER_QUEUE).await;
    // One slow-lane attempt each, failing; the retries wait 2 s, past the restart.
    let backoff = RetryPolicy {
        max_attempts: 50,
        base_delay: Duration::from_secs(2),
        max_delay: Duration::from_secs(2),
    };
    node.drain_with_retry(REDELIVER_QUEUE, backoff).await;
    assert!(server.seen().deliveries.is_empty());
    let waiting = node.storage().depth(&REDELIVER_QUEUE).await.unwrap();
    assert_eq!((waiting.scheduled, waiting.dead), (4, 0), "{waiting:?}");

    let (data_dir, database) = node.stop().await;
    let node = TestNode::builder()
        .data_dir(data_dir)
        .database(database)
        .start()
        .await;
    node.post_json("/api/v1/messages", &coo("rs-3")).await;
    node.drain(PROCESS_QUEUE).await;
    node.drain(ROUTE_QUEUE).await;
    node.drain(SPREAD_QUEUE).await;
    node.drain(DELIVER_QUEUE).await;
    server.up().await;

    let expected: BTreeSet<String> = ["rs-1", "rs-2", "rs-3"]
        .iter()
        .flat_map(|r| {
            [
                format!("AU:{r}/received"),
                format!("AU:{r}/status/rejected"),
            ]
        })
        .collect();
    redeliver_until(&node, 50, || server.seen().event_ids() == expected).await;
    let seen = server.seen();
    for (headers, body) in &seen.deliveries {
        assert!(
            igl_websub::signature::verify(
                b"restart-secret",
                body,
                headers["x-hub-signature"].to_str().unwrap()
            ),
            "signed"
        );
    }
    let statuses: Vec<Value> = seen
        .deliveries
        .iter()
        .map(|(_, body)| serde_json::from_slice(body).unwrap())
        .filter(|payload: &Value| payload["predicate"].as_str().unwrap().ends_with(".status"))
        .collect();
    assert_eq!(statuses.len(), 3, "one status change per message");
}

/// One slow subscriber among many: the fast lane delivers to the others and hands the slow
/// one's delivery to the slow lane (which delivers it with the full timeout); the next
/// event goes to the slow subscriber through the slow lane directly, without the fast lane
/// waiting on it again.
#[tokio::test]
async fn a_slow_subscriber_is_served_apart_from_the_others() {
    let node = TestNode::start().await;
    let mut fast = Vec::new();
    for _ in 0..10 {
        let server = CallbackServer::start().await;
        subscribe_verified(&node, "message.*", &server.url, None).await;
        fast.push(server);
    }
    let slow = CallbackServer::start().await;
    slow.seen().delay = Some(Duration::from_secs(3));
    subscribe_verified(&node, "message.*", &slow.url, None).await;

    node.post_json("/api/v1/messages", &coo("slow-1")).await;
    pump(&node).await;
    for server in &fast {
        assert_eq!(server.seen().event_ids().len(), 1);
    }
    let handed = node.storage().depth(&REDELIVER_QUEUE).await.unwrap();
    assert_eq!(handed.ready + handed.scheduled, 1, "{handed:?}");

    node.post_json("/api/v1/messages", &coo("slow-2")).await;
    pump(&node).await;
    for server in &fast {
        assert_eq!(server.seen().event_ids().len(), 2);
    }
    let handed = node.storage().depth(&REDELIVER_QUEUE).await.unwrap();
    assert_eq!(handed.ready + handed.scheduled, 2, "{handed:?}");

    let expected: BTreeSet<String> = ["AU:slow-1/received", "AU:slow-2/received"]
        .map(String::from)
        .into();
    redeliver_until(&node, 10, || slow.seen().event_ids() == expected).await;
}
