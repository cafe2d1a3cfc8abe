//! The shared-db channel endpoint over real HTTP (127.0.0.1, port 0) and real databases
//! (SQLite files in temporary directories; PostgreSQL when `IGL_TEST_POSTGRES_URL` is set).
//!
//! Two endpoints, AU and SG, share one medium. A small axum server plays the SG node: it
//! answers intent verification and records the `{"id"}` callbacks.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use hmac::{KeyInit, Mac};
use igl_channels::endpoint::{EndpointConfig, RunningEndpoint, start};
use igl_core::Storage;
use igl_domain::Jurisdiction;
use igl_store::{PostgresStore, SqliteStore};
use igl_workers::RetryPolicy;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);

fn au() -> Jurisdiction {
    Jurisdiction::parse("AU").unwrap()
}

fn sg() -> Jurisdiction {
    Jurisdiction::parse("SG").unwrap()
}

fn message_to(receiver: &str) -> Value {
    json!({
        "sender": "AU",
        "receiver": receiver,
        "subject": "AU.abn0000000000.XXXX-XXXXX-XXXXX-XXXXXX",
        "obj": "QmQtYtUS7K1AdKjbuMsmPmPGDLaKL38M5HYwqxW9RKW49n",
        "predicate": "UN.CEFACT.Trade.CertificateOfOrigin.created",
    })
}

// ---------------------------------------------------------------------------------------
// The subscriber (the SG node's Reception API stand-in)
// ---------------------------------------------------------------------------------------

/// One callback POST as received.
#[derive(Debug, Clone)]
struct Delivery {
    body: Bytes,
    headers: HeaderMap,
}

impl Delivery {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|value| value.to_str().unwrap().to_owned())
    }
}

#[derive(Debug, Default)]
struct SubscriberState {
    /// Successful deliveries (answered 200).
    deliveries: Mutex<Vec<Delivery>>,
    /// Every POST, including those answered with an error.
    attempts: Mutex<usize>,
    /// Statuses to answer the next POSTs with (200 when empty).
    answers: Mutex<VecDeque<u16>>,
    /// Answer verification with a wrong challenge.
    refuse_verification: Mutex<bool>,
    /// The query of every verification request.
    verifications: Mutex<Vec<Vec<(String, String)>>>,
    changed: Notify,
}

#[derive(Debug, Clone)]
struct Subscriber {
    state: Arc<SubscriberState>,
    url: String,
}

impl Subscriber {
    async fn start() -> Self {
        let state = Arc::new(SubscriberState::default());
        let app = Router::new()
            .route("/rx", get(verify).post(receive))
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            state,
            url: format!("http://{addr}/rx"),
        }
    }

    fn answer_next(&self, statuses: &[u16]) {
        self.state
            .answers
            .lock()
            .unwrap()
            .extend(statuses.iter().copied());
    }

    fn refuse_verification(&self, refuse: bool) {
        *self.state.refuse_verification.lock().unwrap() = refuse;
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.state.deliveries.lock().unwrap().clone()
    }

    fn attempts(&self) -> usize {
        *self.state.attempts.lock().unwrap()
    }

    fn verifications(&self) -> Vec<Vec<(String, String)>> {
        self.state.verifications.lock().unwrap().clone()
    }

    /// Waits until at least `count` deliveries arrived; returns them all.
    async fn wait_for_deliveries(&self, count: usize) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let changed = self.state.changed.notified();
            let deliveries = self.deliveries();
            if deliveries.len() >= count {
                return deliveries;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!(
                    "expected {count} deliveries within {WAIT:?}, got {}: {deliveries:?}",
                    deliveries.len()
                );
            }
        }
    }

    /// Checks that nothing more than `count` deliveries arrives within `period`.
    async fn expect_no_more_than(&self, count: usize, period: Duration) {
        tokio::time::sleep(period).await;
        let deliveries = self.deliveries();
        assert_eq!(
            deliveries.len(),
            count,
            "unexpected deliveries: {deliveries:?}"
        );
    }
}

async fn verify(
    State(state): State<Arc<SubscriberState>>,
    Query(query): Query<Vec<(String, String)>>,
) -> impl IntoResponse {
    state.verifications.lock().unwrap().push(query.clone());
    let challenge = query
        .iter()
        .find(|(key, _)| key == "hub.challenge")
        .map(|(_, value)| value.clone())
        .unwrap_or_default();
    if *state.refuse_verification.lock().unwrap() {
        (StatusCode::OK, "not the challenge".to_owned())
    } else {
        (StatusCode::OK, challenge)
    }
}

async fn receive(
    State(state): State<Arc<SubscriberState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    *state.attempts.lock().unwrap() += 1;
    let answer = state.answers.lock().unwrap().pop_front().unwrap_or(200);
    let status = StatusCode::from_u16(answer).unwrap();
    if status.is_success() {
        state
            .deliveries
            .lock()
            .unwrap()
            .push(Delivery { body, headers });
    }
    state.changed.notify_waiters();
    status
}

// ---------------------------------------------------------------------------------------
// Endpoints
// ---------------------------------------------------------------------------------------

/// Where the endpoints of one test keep their data.
struct Backend {
    medium_url: String,
    medium_schema: Option<String>,
    /// PostgreSQL schemas to drop at the end.
    schemas: Vec<String>,
    dir: TempDir,
}

impl Backend {
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let medium_url = format!("sqlite://{}", dir.path().join("channel.db").display());
        Self {
            medium_url,
            medium_schema: None,
            schemas: Vec::new(),
            dir,
        }
    }

    fn postgres(url: &str) -> Self {
        let schema = unique_schema();
        Self {
            medium_url: url.to_owned(),
            medium_schema: Some(schema.clone()),
            schemas: vec![schema],
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A fresh local state (job queue) for one endpoint.
    async fn state(&mut self, name: &str) -> Arc<dyn Storage> {
        if self.medium_schema.is_some() {
            let schema = unique_schema();
            self.schemas.push(schema.clone());
            Arc::new(
                PostgresStore::connect(&self.medium_url, 4, Some(&schema))
                    .await
                    .unwrap(),
            )
        } else {
            let path = self.dir.path().join(format!("{name}-state.db"));
            Arc::new(SqliteStore::open(&path).await.unwrap())
        }
    }

    fn config(&self, jurisdiction: Jurisdiction, state: Arc<dyn Storage>) -> EndpointConfig {
        let mut config = EndpointConfig::new(jurisdiction, &self.medium_url, state, "http://unset");
        config.medium_schema = self.medium_schema.clone();
        config.allow_loopback_callbacks = true;
        config.delivery.retry = RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(200),
        };
        config.delivery.timeout = Duration::from_secs(2);
        config
    }

    async fn cleanup(self) {
        if self.medium_schema.is_some() {
            for schema in &self.schemas {
                PostgresStore::drop_schema(&self.medium_url, schema)
                    .await
                    .unwrap();
            }
        }
    }
}

fn unique_schema() -> String {
    format!("t_{}", uuid::Uuid::new_v4().simple())
}

/// Binds a port, sets `public_url` to it and starts the endpoint.
async fn serve(mut config: EndpointConfig) -> RunningEndpoint {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    config.public_url = format!("http://{addr}");
    start(config, listener, CancellationToken::new())
        .await
        .unwrap()
}

/// Two endpoints on one medium, each with its own local state.
struct Pair {
    au: RunningEndpoint,
    sg: RunningEndpoint,
    sg_state: Arc<dyn Storage>,
    http: reqwest::Client,
    backend: Backend,
}

impl Pair {
    async fn start(mut backend: Backend) -> Self {
        let au_state = backend.state("au").await;
        let sg_state = backend.state("sg").await;
        let au = serve(backend.config(au(), au_state)).await;
        let sg = serve(backend.config(sg(), sg_state.clone())).await;
        Self {
            au,
            sg,
            sg_state,
            http: reqwest::Client::new(),
            backend,
        }
    }

    async fn stop(self) {
        self.au.stop().await.unwrap();
        self.sg.stop().await.unwrap();
        self.backend.cleanup().await;
    }
}

async fn post_message(http: &reqwest::Client, endpoint: &str, message: &Value) -> i64 {
    let response = http
        .post(format!("{endpoint}/messages"))
        .json(message)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    response.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap()
}

async fn subscribe(
    http: &reqwest::Client,
    endpoint: &str,
    kind: &str,
    mode: &str,
    topic: &str,
    callback: &str,
    secret: Option<&str>,
) -> reqwest::Response {
    let mut form = vec![
        ("hub.mode", mode),
        ("hub.topic", topic),
        ("hub.callback", callback),
    ];
    if let Some(secret) = secret {
        form.push(("hub.secret", secret));
    }
    http.post(format!("{endpoint}/messages/subscriptions/{kind}"))
        .form(&form)
        .send()
        .await
        .unwrap()
}

async fn subscribe_sg(pair: &Pair, subscriber: &Subscriber, secret: Option<&str>) {
    let response = subscribe(
        &pair.http,
        &pair.sg.url(),
        "by_jurisdiction",
        "subscribe",
        "SG",
        &subscriber.url,
        secret,
    )
    .await;
    assert_eq!(response.status(), 202);
    assert_eq!(response.text().await.unwrap(), "");
}

async fn get_json(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = http.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    let value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body).unwrap()
    };
    (status, value)
}

// ---------------------------------------------------------------------------------------
// The main flow, on SQLite and on PostgreSQL
// ---------------------------------------------------------------------------------------

async fn message_flows_from_au_to_sg(backend: Backend) {
    let pair = Pair::start(backend).await;
    let subscriber = Subscriber::start().await;
    subscribe_sg(&pair, &subscriber, None).await;

    // Intent verification carried the prefixed topic and the default lease.
    let verification = &subscriber.verifications()[0];
    let param = |name: &str| {
        verification
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    assert_eq!(param("hub.mode").as_deref(), Some("subscribe"));
    assert_eq!(param("hub.topic").as_deref(), Some("jurisdiction.SG"));
    assert_eq!(param("hub.lease_seconds").as_deref(), Some("432000"));
    assert!(param("hub.challenge").is_some_and(|c| !c.is_empty()));

    let id = post_message(&pair.http, &pair.au.url(), &message_to("SG")).await;

    let deliveries = subscriber.wait_for_deliveries(1).await;
    assert_eq!(deliveries[0].json(), json!({ "id": id }));
    assert_eq!(
        deliveries[0].header("link").unwrap(),
        format!(
            "<{}/messages/subscriptions/by_jurisdiction>; rel=\"hub\", <jurisdiction.SG>; rel=\"self\"",
            pair.sg.url()
        )
    );
    assert_eq!(
        deliveries[0].header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(deliveries[0].header("x-hub-signature"), None);

    // The SG node reads the message from its own endpoint.
    let (status, body) = get_json(&pair.http, &format!("{}/messages/{id}", pair.sg.url())).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"id": id, "status": "confirmed", "message": message_to("SG")})
    );

    // A message for another jurisdiction is not announced to SG.
    post_message(&pair.http, &pair.au.url(), &message_to("CN")).await;
    subscriber
        .expect_no_more_than(1, Duration::from_millis(400))
        .await;

    // The delivery job was acked: nothing left on SG's queue.
    let queue = igl_core::QueueName::parse("channel-deliver.sg").unwrap();
    let depth = pair.sg_state.depth(&queue).await.unwrap();
    assert_eq!((depth.ready, depth.in_flight, depth.dead), (0, 0, 0));
    pair.stop().await;
}

#[tokio::test]
async fn message_flows_from_au_to_sg_on_sqlite() {
    message_flows_from_au_to_sg(Backend::sqlite()).await;
}

#[tokio::test]
#[cfg_attr(igl_skip_postgres, ignore = "set IGL_TEST_POSTGRES_URL to run")]
async fn message_flows_from_au_to_sg_on_postgres() {
    let url = std::env::var("IGL_TEST_POSTGRES_URL").expect("IGL_TEST_POSTGRES_URL");
    message_flows_from_au_to_sg(Backend::postgres(&url)).await;
}

// ---------------------------------------------------------------------------------------
// Wire compatibility (REFERENCE-WIRE §5.2)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn channel_api_matches_the_reference_wire() {
    let pair = Pair::start(Backend::sqlite()).await;
    let http = &pair.http;
    let au_url = pair.au.url();

    let (status, body) = get_json(http, &format!("{au_url}/")).await;
    assert_eq!(
        (status, body),
        (200, json!({"service": "shared-db-channel"}))
    );

    // 201 {"id"} with the Link header; plus "status": the reference answers the id only,
    // and its clients read nothing else (REFERENCE-WIRE §5.1: any 2xx with an "id").
    let response = http
        .post(format!("{au_url}/messages"))
        .json(&message_to("SG"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let link = response.headers()["link"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    let id = body["id"].as_i64().unwrap();
    assert_eq!(body, json!({ "id": id, "status": "confirmed" }));
    assert_eq!(
        link,
        format!("<{au_url}/messages/subscriptions/by_id>; rel=\"hub\", <{id}>; rel=\"self\"")
    );

    // GET, whole and filtered to top-level fields.
    let (status, body) = get_json(http, &format!("{au_url}/messages/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"id": id, "status": "confirmed", "message": message_to("SG")})
    );
    let (_, body) = get_json(http, &format!("{au_url}/messages/{id}?fields=status")).await;
    assert_eq!(body, json!({"status": "confirmed"}));
    let (_, body) = get_json(http, &format!("{au_url}/messages/{id}?fields=id,message")).await;
    assert_eq!(body, json!({"id": id, "message": message_to("SG")}));

    // 404 with an empty body, for unknown and non-numeric ids.
    for path in ["/messages/999999", "/messages/abc", "/messages/0"] {
        let response = http.get(format!("{au_url}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
        assert_eq!(response.text().await.unwrap(), "", "{path}");
    }

    // Missing fields: marshmallow's body.
    let response = http
        .post(format!("{au_url}/messages"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let missing = ["Missing data for required field."];
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"obj": missing, "predicate": missing, "receiver": missing,
               "sender": missing, "subject": missing})
    );

    // Unknown keys are rejected; non-strings too. (`sender_ref` is our one extension:
    // accepted, stored and returned, so the receiving node keeps the sender's reference.)
    let mut with_ref = message_to("SG");
    with_ref["sender_ref"] = json!("coo-77");
    let response = http
        .post(format!("{au_url}/messages"))
        .json(&with_ref)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let id = response.json::<Value>().await.unwrap()["id"].clone();
    let stored: Value = http
        .get(format!("{au_url}/messages/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stored["message"]["sender_ref"], "coo-77");
    let mut with_extra = message_to("SG");
    with_extra["colour"] = json!("abc");
    let response = http
        .post(format!("{au_url}/messages"))
        .json(&with_extra)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"colour": ["Unknown field."]})
    );
    let mut not_a_string = message_to("SG");
    not_a_string["subject"] = json!(12);
    let response = http
        .post(format!("{au_url}/messages"))
        .json(&not_a_string)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"subject": ["Not a valid string."]})
    );
    let response = http
        .post(format!("{au_url}/messages"))
        .json(&json!(["not", "an", "object"]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"_schema": ["Invalid input type."]})
    );
    let response = http
        .post(format!("{au_url}/messages"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<Value>().await.unwrap()["code"], json!(400));

    // Domain rules: jurisdictions, URIs, the posting side, the receiver.
    let mut invalid = message_to("XX");
    invalid["obj"] = json!("not a uri");
    invalid["subject"] = json!(" ");
    let response = http
        .post(format!("{au_url}/messages"))
        .json(&invalid)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    let fields: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(fields, ["obj", "receiver", "subject"], "{body}");

    let mut foreign_sender = message_to("SG");
    foreign_sender["sender"] = json!("CN");
    let response = http
        .post(format!("{au_url}/messages"))
        .json(&foreign_sender)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body["sender"][0].as_str().unwrap().contains("AU"), "{body}");

    let response = http
        .post(format!("{au_url}/messages"))
        .json(&message_to("AU"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(
        response.json::<Value>().await.unwrap()["receiver"].is_array(),
        "a message to oneself is refused"
    );
    pair.stop().await;
}

#[tokio::test]
async fn subscription_requests_are_validated() {
    let pair = Pair::start(Backend::sqlite()).await;
    let http = &pair.http;
    let sg_url = pair.sg.url();

    // Missing parameters: marshmallow's body.
    let response = http
        .post(format!("{sg_url}/messages/subscriptions/by_jurisdiction"))
        .form(&[("unknown", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let missing = ["Missing data for required field."];
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"hub.callback": missing, "hub.mode": missing, "hub.topic": missing})
    );

    // Bad values.
    let response = http
        .post(format!("{sg_url}/messages/subscriptions/by_id"))
        .form(&[
            ("hub.mode", "watch"),
            ("hub.topic", "1"),
            ("hub.callback", "ftp://example.org/"),
            ("hub.lease_seconds", "soon"),
            ("hub.secret", &"s".repeat(201)),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["hub.mode"],
        json!(["Must be one of: subscribe, unsubscribe."])
    );
    assert_eq!(body["hub.callback"], json!(["Not a valid URL."]));
    assert_eq!(body["hub.lease_seconds"], json!(["Not a valid integer."]));
    assert_eq!(
        body["hub.secret"],
        json!(["Longer than maximum length 200."])
    );

    // Form encoding only.
    let response = http
        .post(format!("{sg_url}/messages/subscriptions/by_jurisdiction"))
        .json(&json!({"hub.mode": "subscribe"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], json!("generic-http-error"));

    pair.stop().await;
}

#[tokio::test]
async fn loopback_callbacks_are_refused_unless_allowed() {
    let mut backend = Backend::sqlite();
    let state = backend.state("sg").await;
    let mut config = backend.config(sg(), state);
    config.allow_loopback_callbacks = false;
    let endpoint = serve(config).await;
    let subscriber = Subscriber::start().await;
    let http = reqwest::Client::new();
    for callback in [
        subscriber.url.as_str(),
        "http://localhost:9/rx",
        "http://10.0.0.1/rx",
    ] {
        let response = subscribe(
            &http,
            &endpoint.url(),
            "by_jurisdiction",
            "subscribe",
            "SG",
            callback,
            None,
        )
        .await;
        assert_eq!(response.status(), 400, "{callback}");
        let body: Value = response.json().await.unwrap();
        assert!(body["hub.callback"].is_array(), "{callback}: {body}");
    }
    assert!(
        subscriber.verifications().is_empty(),
        "no request reaches a refused callback"
    );
    endpoint.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Subscriptions
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn failed_intent_verification_creates_no_subscription() {
    let pair = Pair::start(Backend::sqlite()).await;
    let subscriber = Subscriber::start().await;
    subscriber.refuse_verification(true);
    let response = subscribe(
        &pair.http,
        &pair.sg.url(),
        "by_jurisdiction",
        "subscribe",
        "SG",
        &subscriber.url,
        None,
    )
    .await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"error": "Intent verification failed"})
    );

    // Nothing is delivered: there is no subscription.
    let id = post_message(&pair.http, &pair.au.url(), &message_to("SG")).await;
    subscriber
        .expect_no_more_than(0, Duration::from_millis(500))
        .await;
    assert_eq!(subscriber.attempts(), 0);

    // The message waited for a subscriber: subscribing now announces it.
    subscriber.refuse_verification(false);
    subscribe_sg(&pair, &subscriber, None).await;
    let deliveries = subscriber.wait_for_deliveries(1).await;
    assert_eq!(deliveries[0].json(), json!({ "id": id }));
    pair.stop().await;
}

#[tokio::test]
async fn unsubscribe_stops_deliveries() {
    let pair = Pair::start(Backend::sqlite()).await;
    let subscriber = Subscriber::start().await;
    subscribe_sg(&pair, &subscriber, None).await;
    let first = post_message(&pair.http, &pair.au.url(), &message_to("SG")).await;
    subscriber.wait_for_deliveries(1).await;

    let response = subscribe(
        &pair.http,
        &pair.sg.url(),
        "by_jurisdiction",
        "unsubscribe",
        "SG",
        &subscriber.url,
        None,
    )
    .await;
    assert_eq!(response.status(), 202);
    let verification = subscriber.verifications().last().unwrap().clone();
    assert!(verification.contains(&("hub.mode".to_owned(), "unsubscribe".to_owned())));
    assert!(verification.contains(&("hub.topic".to_owned(), "jurisdiction.SG".to_owned())));

    // Unsubscribing again: 404, without calling the callback.
    let verifications = subscriber.verifications().len();
    let response = subscribe(
        &pair.http,
        &pair.sg.url(),
        "by_jurisdiction",
        "unsubscribe",
        "SG",
        &subscriber.url,
        None,
    )
    .await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["errors"][0]["detail"],
        json!("Subscription with given parameters not found")
    );
    assert_eq!(subscriber.verifications().len(), verifications);

    post_message(&pair.http, &pair.au.url(), &message_to("SG")).await;
    subscriber
        .expect_no_more_than(1, Duration::from_millis(500))
        .await;
    assert_eq!(subscriber.deliveries()[0].json(), json!({ "id": first }));
    pair.stop().await;
}

#[tokio::test]
async fn deliveries_are_signed_with_the_subscription_secret() {
    let pair = Pair::start(Backend::sqlite()).await;
    let subscriber = Subscriber::start().await;
    let secret = "s3cr3t-shared-with-the-hub";
    subscribe_sg(&pair, &subscriber, Some(secret)).await;
    let id = post_message(&pair.http, &pair.au.url(), &message_to("SG")).await;

    let delivery = subscriber.wait_for_deliveries(1).await.remove(0);
    assert_eq!(delivery.json(), json!({ "id": id }));
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(&delivery.body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    assert_eq!(
        delivery.header("x-hub-signature"),
        Some(format!("sha256={expected}"))
    );
    pair.stop().await;
}

#[tokio::test]
async fn failed_deliveries_are_retried_until_they_succeed() {
    let pair = Pair::start(Backend::sqlite()).await;
    let subscriber = Subscriber::start().await;
    subscribe_sg(&pair, &subscriber, None).await;
    subscriber.answer_next(&[500, 503]);
    let id = post_message(&pair.http, &pair.au.url(), &message_to("SG")).await;

    let deliveries = subscriber.wait_for_deliveries(1).await;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].json(), json!({ "id": id }));
    assert_eq!(subscriber.attempts(), 3, "two failures, then success");
    subscriber
        .expect_no_more_than(1, Duration::from_millis(300))
        .await;
    pair.stop().await;
}

#[tokio::test]
async fn gone_ends_the_subscription() {
    let pair = Pair::start(Backend::sqlite()).await;
    let subscriber = Subscriber::start().await;
    subscribe_sg(&pair, &subscriber, None).await;
    subscriber.answer_next(&[410]);
    post_message(&pair.http, &pair.au.url(), &message_to("SG")).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while subscriber.attempts() < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery attempt"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    post_message(&pair.http, &pair.au.url(), &message_to("SG")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(subscriber.attempts(), 1, "no delivery after 410 Gone");
    assert!(subscriber.deliveries().is_empty());
    pair.stop().await;
}

// ---------------------------------------------------------------------------------------
// Durability
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_cursor_survives_a_restart_of_the_receiving_endpoint() {
    let mut backend = Backend::sqlite();
    let au_state = backend.state("au").await;
    let sg_state = backend.state("sg").await;
    let au_endpoint = serve(backend.config(au(), au_state)).await;
    // SG keeps its subscriptions and cursors in a database of its own.
    let sg_config = {
        let mut config = backend.config(sg(), sg_state);
        let local = backend.dir.path().join("sg-local.db");
        config.local_url = Some(format!("sqlite://{}", local.display()));
        config
    };
    let sg_endpoint = serve(sg_config.clone()).await;
    let http = reqwest::Client::new();
    let subscriber = Subscriber::start().await;
    let response = subscribe(
        &http,
        &sg_endpoint.url(),
        "by_jurisdiction",
        "subscribe",
        "SG",
        &subscriber.url,
        None,
    )
    .await;
    assert_eq!(response.status(), 202);
    let first = post_message(&http, &au_endpoint.url(), &message_to("SG")).await;
    subscriber.wait_for_deliveries(1).await;

    // SG's endpoint is down while AU posts three messages.
    sg_endpoint.stop().await.unwrap();
    let mut posted = vec![first];
    for _ in 0..3 {
        posted.push(post_message(&http, &au_endpoint.url(), &message_to("SG")).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(subscriber.deliveries().len(), 1);

    // Back up: the three are announced, once each; the first is not announced again.
    let sg_endpoint = serve(sg_config).await;
    subscriber.wait_for_deliveries(4).await;
    subscriber
        .expect_no_more_than(4, Duration::from_millis(500))
        .await;
    // Deliveries run concurrently: compare without order.
    let mut announced: Vec<i64> = subscriber
        .deliveries()
        .iter()
        .map(|delivery| delivery.json()["id"].as_i64().unwrap())
        .collect();
    announced.sort_unstable();
    assert_eq!(announced, posted);

    sg_endpoint.stop().await.unwrap();
    au_endpoint.stop().await.unwrap();
}

#[tokio::test]
async fn messages_posted_before_the_receiving_endpoint_first_started_are_announced() {
    let mut backend = Backend::sqlite();
    let au_state = backend.state("au").await;
    let au_endpoint = serve(backend.config(au(), au_state)).await;
    let http = reqwest::Client::new();
    let early = post_message(&http, &au_endpoint.url(), &message_to("SG")).await;

    let sg_state = backend.state("sg").await;
    let sg_endpoint = serve(backend.config(sg(), sg_state)).await;
    let subscriber = Subscriber::start().await;
    let response = subscribe(
        &http,
        &sg_endpoint.url(),
        "by_jurisdiction",
        "subscribe",
        "SG",
        &subscriber.url,
        None,
    )
    .await;
    assert_eq!(response.status(), 202);
    let deliveries = subscriber.wait_for_deliveries(1).await;
    assert_eq!(deliveries[0].json(), json!({ "id": early }));
    sg_endpoint.stop().await.unwrap();
    au_endpoint.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Status changes and catch-up listing
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn status_changes_follow_the_state_machine_and_reach_by_id_subscribers_on_sqlite() {
    status_changes_reach_by_id_subscribers(Backend::sqlite()).await;
}

#[tokio::test]
#[cfg_attr(igl_skip_postgres, ignore = "set IGL_TEST_POSTGRES_URL to run")]
async fn status_changes_follow_the_state_machine_and_reach_by_id_subscribers_on_postgres() {
    let url = std::env::var("IGL_TEST_POSTGRES_URL").expect("IGL_TEST_POSTGRES_URL");
    status_changes_reach_by_id_subscribers(Backend::postgres(&url)).await;
}

async fn status_changes_reach_by_id_subscribers(backend: Backend) {
    let pair = Pair::start(backend).await;
    let http = &pair.http;
    let by_jurisdiction = Subscriber::start().await;
    subscribe_sg(&pair, &by_jurisdiction, None).await;
    let id = post_message(http, &pair.au.url(), &message_to("SG")).await;
    by_jurisdiction.wait_for_deliveries(1).await;

    // Someone follows this message's status at the SG endpoint.
    let by_id = Subscriber::start().await;
    let response = subscribe(
        http,
        &pair.sg.url(),
        "by_id",
        "subscribe",
        &id.to_string(),
        &by_id.url,
        None,
    )
    .await;
    assert_eq!(response.status(), 202);

    let put = |status: &str| {
        http.put(format!("{}/messages/{id}/status", pair.au.url()))
            .form(&[("status", status)])
            .send()
    };
    let response = put("bogus").await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"status": ["Invalid enum value bogus"]})
    );
    let response = put("received").await.unwrap();
    assert_eq!(
        response.status(),
        409,
        "confirmed → received is not allowed"
    );

    let response = put("revoked").await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"id": id, "status": "revoked", "message": message_to("SG")})
    );
    let response = http
        .put(format!("{}/messages/999999/status", pair.au.url()))
        .form(&[("status", "revoked")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    // The change made at AU's endpoint reaches the by_id subscriber of SG's endpoint...
    let delivery = by_id.wait_for_deliveries(1).await.remove(0);
    assert_eq!(delivery.json(), json!({ "id": id }));
    assert_eq!(
        delivery.header("link").unwrap(),
        format!(
            "<{}/messages/subscriptions/by_id>; rel=\"hub\", <{id}>; rel=\"self\"",
            pair.sg.url()
        )
    );
    // ...and does not announce the message again to the jurisdiction's subscriber.
    by_jurisdiction
        .expect_no_more_than(1, Duration::from_millis(400))
        .await;
    let (_, body) = get_json(http, &format!("{}/messages/{id}", pair.sg.url())).await;
    assert_eq!(body["status"], json!("revoked"));
    pair.stop().await;
}

#[tokio::test]
async fn listing_supports_catch_up_by_receiver_and_updated_since_on_sqlite() {
    listing_supports_catch_up(Backend::sqlite()).await;
}

#[tokio::test]
#[cfg_attr(igl_skip_postgres, ignore = "set IGL_TEST_POSTGRES_URL to run")]
async fn listing_supports_catch_up_by_receiver_and_updated_since_on_postgres() {
    let url = std::env::var("IGL_TEST_POSTGRES_URL").expect("IGL_TEST_POSTGRES_URL");
    listing_supports_catch_up(Backend::postgres(&url)).await;
}

async fn listing_supports_catch_up(backend: Backend) {
    let pair = Pair::start(backend).await;
    let http = &pair.http;
    let before = time::OffsetDateTime::now_utc() - Duration::from_secs(1);
    let mut to_sg = Vec::new();
    for _ in 0..3 {
        to_sg.push(post_message(http, &pair.au.url(), &message_to("SG")).await);
    }
    let mut to_au = message_to("AU");
    to_au["sender"] = json!("SG");
    let to_au = post_message(http, &pair.sg.url(), &to_au).await;
    let rfc3339 = |at: time::OffsetDateTime| {
        at.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let ids = |body: &Value| -> Vec<i64> {
        body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|message| message["id"].as_i64().unwrap())
            .collect()
    };

    let sg_url = pair.sg.url();
    let (status, body) = get_json(
        http,
        &format!(
            "{sg_url}/messages?receiver=SG&updated_since={}",
            rfc3339(before)
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(ids(&body), to_sg);
    assert_eq!(body["next"], Value::Null);
    let first = &body["messages"][0];
    assert_eq!(first["status"], json!("confirmed"));
    assert_eq!(first["message"], message_to("SG"));
    assert!(first["updated_at"].as_str().unwrap().ends_with('Z'));

    let (_, body) = get_json(http, &format!("{sg_url}/messages?receiver=AU")).await;
    assert_eq!(ids(&body), vec![to_au]);

    let later = time::OffsetDateTime::now_utc() + Duration::from_secs(3600);
    let (_, body) = get_json(
        http,
        &format!(
            "{sg_url}/messages?receiver=SG&updated_since={}",
            rfc3339(later)
        ),
    )
    .await;
    assert_eq!(ids(&body), Vec::<i64>::new());

    // Paging: two, then the rest through the cursor.
    let (_, page) = get_json(
        http,
        &format!(
            "{sg_url}/messages?receiver=SG&limit=2&updated_since={}",
            rfc3339(before)
        ),
    )
    .await;
    assert_eq!(ids(&page), to_sg[..2]);
    let cursor = page["next"].as_str().unwrap().to_owned();
    let (_, page) = get_json(
        http,
        &format!("{sg_url}/messages?receiver=SG&limit=2&cursor={cursor}"),
    )
    .await;
    assert_eq!(ids(&page), to_sg[2..]);

    // By id: after_id.
    let (_, page) = get_json(
        http,
        &format!("{sg_url}/messages?receiver=SG&after_id={}", to_sg[0]),
    )
    .await;
    assert_eq!(ids(&page), to_sg[1..]);

    // Bad parameters.
    let (status, body) = get_json(
        http,
        &format!("{sg_url}/messages?receiver=XX&updated_since=yesterday&limit=0"),
    )
    .await;
    assert_eq!(status, 400);
    let fields: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(fields, ["limit", "receiver", "updated_since"]);
    pair.stop().await;
}

// ---------------------------------------------------------------------------------------
// Idempotent posting
// ---------------------------------------------------------------------------------------

/// Posts `message` with an optional `Idempotency-Key`; returns the status, the
/// `Idempotent-Replayed` header and the body.
async fn post_with_key(
    http: &reqwest::Client,
    endpoint: &str,
    message: &Value,
    key: Option<&str>,
) -> (u16, Option<String>, Value) {
    let mut request = http.post(format!("{endpoint}/messages")).json(message);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .map(|value| value.to_str().unwrap().to_owned());
    (status, replayed, response.json().await.unwrap())
}

/// The ids of every message AU sent, as the listing shows them.
async fn sent_by_au(http: &reqwest::Client, endpoint: &str) -> Vec<i64> {
    let (status, body) = get_json(http, &format!("{endpoint}/messages?sender=AU")).await;
    assert_eq!(status, 200);
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|message| message["id"].as_i64().unwrap())
        .collect()
}

async fn repeated_posts_return_the_stored_message(backend: Backend) {
    let pair = Pair::start(backend).await;
    let http = &pair.http;
    let au_url = pair.au.url();
    let subscriber = Subscriber::start().await;
    subscribe_sg(&pair, &subscriber, None).await;

    // The same key twice: one message, the same id, the second answer marked as a replay.
    let (status, replayed, first) =
        post_with_key(http, &au_url, &message_to("SG"), Some("AU:coo-1")).await;
    assert_eq!((status, replayed), (201, None));
    let id = first["id"].as_i64().unwrap();
    assert_eq!(
        first,
        json!({ "id": id, "status": "confirmed" }),
        "committed to the medium before the answer: confirmed"
    );
    let (status, replayed, second) =
        post_with_key(http, &au_url, &message_to("SG"), Some("AU:coo-1")).await;
    assert_eq!((status, replayed.as_deref()), (201, Some("true")));
    assert_eq!(
        second,
        json!({ "id": id }),
        "a replay does not vouch for the status"
    );
    assert_eq!(sent_by_au(http, &au_url).await, vec![id]);

    // Concurrent posts with one key (one group-committed batch or several): one message.
    let mut posts = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (http, au_url) = (http.clone(), au_url.clone());
        posts.spawn(async move {
            post_with_key(&http, &au_url, &message_to("SG"), Some("AU:coo-2")).await
        });
    }
    let answers = posts.join_all().await;
    let ids: std::collections::BTreeSet<i64> = answers
        .iter()
        .map(|(status, _, body)| {
            assert_eq!(*status, 201, "{body}");
            body["id"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    let second_id = *ids.first().unwrap();
    assert_eq!(sent_by_au(http, &au_url).await, vec![id, second_id]);

    // The same key for different content: 409, nothing stored.
    let mut other = message_to("SG");
    other["subject"] = json!("AU.abn0000000000.another-certificate");
    let (status, _, body) = post_with_key(http, &au_url, &other, Some("AU:coo-1")).await;
    assert_eq!(status, 409);
    assert_eq!(
        body,
        json!({"Idempotency-Key": [format!("Already used for a different message (id {id}).")]})
    );

    // Without a header, a forwarded sender_ref is the key ({sender}:{sender_ref}); the header
    // and the derived key name the same thing.
    let mut with_ref = message_to("SG");
    with_ref["sender_ref"] = json!("coo-3");
    let (_, _, third) = post_with_key(http, &au_url, &with_ref, None).await;
    let (_, replayed, again) = post_with_key(http, &au_url, &with_ref, None).await;
    assert_eq!(
        (again["id"].clone(), replayed.as_deref()),
        (third["id"].clone(), Some("true"))
    );
    let (_, _, keyed) = post_with_key(http, &au_url, &with_ref, Some("AU:coo-3")).await;
    assert_eq!(keyed["id"], third["id"]);
    let mut changed = with_ref.clone();
    changed["obj"] = json!("https://example.org/another");
    let (status, _, body) = post_with_key(http, &au_url, &changed, None).await;
    assert_eq!(status, 409);
    assert!(body["sender_ref"].is_array(), "{body}");

    // Keys are the sender's: SG may use the same one for its own message.
    let mut from_sg = message_to("AU");
    from_sg["sender"] = json!("SG");
    let (status, replayed, _) =
        post_with_key(http, &pair.sg.url(), &from_sg, Some("AU:coo-1")).await;
    assert_eq!((status, replayed), (201, None));

    // Posts without any key are never merged (the reference behaviour).
    let before = sent_by_au(http, &au_url).await.len();
    post_message(http, &au_url, &message_to("SG")).await;
    post_message(http, &au_url, &message_to("SG")).await;
    assert_eq!(sent_by_au(http, &au_url).await.len(), before + 2);

    // A withdrawn message does not hold its key: posting it again is a new post (how a
    // node re-posts a revoked message), and the new message takes over the key.
    let revoked = http
        .put(format!("{au_url}/messages/{id}/status"))
        .form(&[("status", "revoked")])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let (status, replayed, reposted) =
        post_with_key(http, &au_url, &message_to("SG"), Some("AU:coo-1")).await;
    assert_eq!((status, replayed), (201, None));
    let reposted = reposted["id"].as_i64().unwrap();
    assert!(reposted > id);
    let (_, replayed, again) =
        post_with_key(http, &au_url, &message_to("SG"), Some("AU:coo-1")).await;
    assert_eq!(
        (again["id"].as_i64(), replayed.as_deref()),
        (Some(reposted), Some("true"))
    );

    // Bad keys are refused.
    for key in ["", " ", &"k".repeat(256)] {
        let (status, _, body) = post_with_key(http, &au_url, &message_to("SG"), Some(key)).await;
        assert_eq!(status, 400, "{key:?}");
        assert!(body["Idempotency-Key"].is_array(), "{body}");
    }

    // SG's subscriber was told about each AU→SG message once: 2 keyed, 1 by sender_ref,
    // 1 re-posted, 2 without a key.
    subscriber.wait_for_deliveries(6).await;
    let queue = igl_core::QueueName::parse("channel-deliver.sg").unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let depth = pair.sg_state.depth(&queue).await.unwrap();
        if depth.ready + depth.scheduled + depth.in_flight == 0 {
            assert_eq!(depth.dead, 0, "{depth:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{depth:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        subscriber.deliveries().len(),
        6,
        "{:?}",
        subscriber.deliveries()
    );
    pair.stop().await;
}

#[tokio::test]
async fn repeated_posts_return_the_stored_message_on_sqlite() {
    repeated_posts_return_the_stored_message(Backend::sqlite()).await;
}

#[tokio::test]
#[cfg_attr(igl_skip_postgres, ignore = "set IGL_TEST_POSTGRES_URL to run")]
async fn repeated_posts_return_the_stored_message_on_postgres() {
    let url = std::env::var("IGL_TEST_POSTGRES_URL").expect("IGL_TEST_POSTGRES_URL");
    repeated_posts_return_the_stored_message(Backend::postgres(&url)).await;
}

#[tokio::test]
async fn errors_use_the_reference_bodies() {
    let pair = Pair::start(Backend::sqlite()).await;
    let http = &pair.http;
    let au_url = pair.au.url();

    // Werkzeug's JSON for paths and methods the API does not serve.
    let (status, body) = get_json(http, &format!("{au_url}/no/such/path")).await;
    assert_eq!(status, 404);
    assert_eq!(body["code"], json!(404));
    assert_eq!(body["name"], json!("Not Found"));
    assert!(body["description"].is_string(), "{body}");
    let response = http
        .delete(format!("{au_url}/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (body["code"].clone(), body["name"].clone()),
        (json!(405), json!("Method Not Allowed"))
    );

    // A status PUT without a status: marshmallow's body.
    let id = post_message(http, &au_url, &message_to("SG")).await;
    let response = http
        .put(format!("{au_url}/messages/{id}/status"))
        .form(&[("other", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"status": ["Missing data for required field."]})
    );
    let (_, health) = get_json(http, &format!("{au_url}/healthz")).await;
    assert_eq!(health, json!({"status": "ok"}));

    // An unexpected failure (here the medium's table is gone): the reference's 500 body,
    // without internals.
    let medium = sqlx::SqlitePool::connect(&pair.backend.medium_url)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE channel_messages RENAME TO channel_messages_moved")
        .execute(&medium)
        .await
        .unwrap();
    let unexpected = json!({"success": false, "error": {
        "type": "UnexpectedException",
        "message": "An unexpected error has occurred.",
        "details": null,
    }});
    let response = http
        .post(format!("{au_url}/messages"))
        .json(&message_to("SG"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(response.json::<Value>().await.unwrap(), unexpected);
    let (status, body) = get_json(http, &format!("{au_url}/messages/{id}")).await;
    assert_eq!((status, body), (500, unexpected));
    sqlx::query("ALTER TABLE channel_messages_moved RENAME TO channel_messages")
        .execute(&medium)
        .await
        .unwrap();
    medium.close().await;
    let (status, _) = get_json(http, &format!("{au_url}/messages/{id}")).await;
    assert_eq!(status, 200, "back once the table is back");
    pair.stop().await;
}
