//! The Channel API client against a fake channel (a small axum server on 127.0.0.1:0)
//! speaking the reference dialects, and the router and channel poller driven through
//! `igl_workers::drain` against a real SQLite store and that fake channel.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Form, Path, State};
use axum::http::{HeaderValue, StatusCode, header::RETRY_AFTER};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use igl_channels::client::routing::{Pattern, RoutingRule, RoutingTable};
use igl_channels::client::{
    ChannelClient, ChannelError, Channels, CircuitBreakerConfig, CircuitState, HttpChannelClient,
    HttpClientConfig, ListQuery, RemoteStatus,
};
use igl_core::pipeline::{CHANNEL_POLL_QUEUE, PipelineJob, ROUTE_QUEUE};
use igl_core::{EventLog, JobQueue, MessageStore, QueueName, Storage};
use igl_domain::{
    ChannelStatus, Jurisdiction, Message, MessageContent, MessageFields, MessageRef, MessageStatus,
    NewMessage,
};
use igl_store::SqliteStore;
use igl_workers::handlers::{PollChannel, RouteMessage};
use igl_workers::{DrainReport, JobHandler, RetryPolicy, WorkerConfig, drain};
use serde_json::{Value, json};
use tempfile::TempDir;

/// The longest any condition here is waited for.
const DEADLINE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// the fake channel

/// A scripted answer.
#[derive(Debug, Clone)]
struct Reply {
    status: StatusCode,
    body: String,
    retry_after: Option<&'static str>,
}

impl Reply {
    fn json(status: StatusCode, body: Value) -> Self {
        Self {
            status,
            body: body.to_string(),
            retry_after: None,
        }
    }

    fn text(status: StatusCode, body: &str) -> Self {
        Self {
            status,
            body: body.to_owned(),
            retry_after: None,
        }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body).into_response();
        if let Some(retry_after) = self.retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static(retry_after));
        }
        response
    }
}

/// What the fake channel received and how it answers: scripted replies first, then the
/// shared-db dialect (201 with an integer id; messages `received` until told otherwise).
#[derive(Debug, Default)]
struct FakeChannel {
    posts: Mutex<Vec<Value>>,
    post_replies: Mutex<VecDeque<Reply>>,
    status_replies: Mutex<VecDeque<Reply>>,
    statuses: Mutex<HashMap<String, String>>,
    subscriptions: Mutex<Vec<HashMap<String, String>>>,
    delay: Mutex<Option<Duration>>,
}

impl FakeChannel {
    fn script_post(&self, reply: Reply) {
        self.post_replies.lock().unwrap().push_back(reply);
    }

    fn script_status(&self, reply: Reply) {
        self.status_replies.lock().unwrap().push_back(reply);
    }

    fn set_status(&self, id: &str, status: &str) {
        self.statuses
            .lock()
            .unwrap()
            .insert(id.to_owned(), status.to_owned());
    }

    fn posts(&self) -> Vec<Value> {
        self.posts.lock().unwrap().clone()
    }

    async fn pause(&self) {
        let delay = *self.delay.lock().unwrap();
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
    }
}

async fn post_message(State(fake): State<Arc<FakeChannel>>, Json(body): Json<Value>) -> Reply {
    fake.pause().await;
    let id = {
        let mut posts = fake.posts.lock().unwrap();
        posts.push(body);
        posts.len()
    };
    if let Some(reply) = fake.post_replies.lock().unwrap().pop_front() {
        return reply;
    }
    fake.set_status(&id.to_string(), "received");
    Reply::json(StatusCode::CREATED, json!({"id": id}))
}

async fn get_message(State(fake): State<Arc<FakeChannel>>, Path(id): Path<String>) -> Reply {
    fake.pause().await;
    if let Some(reply) = fake.status_replies.lock().unwrap().pop_front() {
        return reply;
    }
    let status = fake.statuses.lock().unwrap().get(&id).cloned();
    let message = id
        .parse::<usize>()
        .ok()
        .and_then(|index| fake.posts.lock().unwrap().get(index - 1).cloned());
    match (status, message) {
        (Some(status), Some(message)) => Reply::json(
            StatusCode::OK,
            json!({"id": id.parse::<u64>().unwrap(), "status": status, "message": message}),
        ),
        _ => Reply::text(StatusCode::NOT_FOUND, ""),
    }
}

async fn subscribe(
    State(fake): State<Arc<FakeChannel>>,
    Form(form): Form<HashMap<String, String>>,
) -> StatusCode {
    fake.subscriptions.lock().unwrap().push(form);
    StatusCode::ACCEPTED
}

async fn list_messages(
    State(fake): State<Arc<FakeChannel>>,
    axum::extract::Query(query): axum::extract::Query<HashMap<String, String>>,
) -> Json<Value> {
    let count = fake.posts.lock().unwrap().len();
    Json(json!({
        "messages": (1..=count).map(|id| json!({"id": id, "status": "confirmed"})).collect::<Vec<_>>(),
        "next": query.get("cursor").map_or(json!("c1"), |_| Value::Null),
    }))
}

/// A fake channel served on 127.0.0.1:0 (until the test ends).
async fn serve(fake: Arc<FakeChannel>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_on(listener, fake).await
}

async fn serve_on(listener: tokio::net::TcpListener, fake: Arc<FakeChannel>) -> SocketAddr {
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/messages", post(post_message).get(list_messages))
        .route("/messages/{id}", get(get_message))
        .route("/messages/subscriptions/by_jurisdiction", post(subscribe))
        .with_state(fake);
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// An address nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

fn client(addr: SocketAddr) -> HttpChannelClient {
    client_with(addr, HttpClientConfig::default())
}

fn client_with(addr: SocketAddr, config: HttpClientConfig) -> HttpChannelClient {
    HttpChannelClient::new("au-sg", &format!("http://{addr}/"), config).unwrap()
}

fn jurisdiction(code: &str) -> Jurisdiction {
    Jurisdiction::parse(code).unwrap()
}

fn content(receiver: &str) -> MessageContent {
    MessageContent {
        sender: jurisdiction("AU"),
        receiver: jurisdiction(receiver),
        subject: "AU.abn0000000000.XXXX-XXXXX".into(),
        obj: "QmQtYtUS7K1AdKjbuMsmPmPGDLaKL38M5HYwqxW9RKW49n".into(),
        predicate: "UN.CEFACT.Trade.CertificateOfOrigin.created".into(),
    }
}

// ---------------------------------------------------------------------------------------
// the client and the dialects

#[tokio::test]
async fn shared_db_dialect_201_with_an_integer_id() {
    let fake = Arc::new(FakeChannel::default());
    let client = client(serve(fake.clone()).await);
    let receipt = client.post_message(&content("SG")).await.unwrap();
    assert_eq!(receipt.id, "1");
    assert_eq!(receipt.status, None);
    assert_eq!(
        fake.posts(),
        [json!({
            "sender": "AU",
            "receiver": "SG",
            "subject": "AU.abn0000000000.XXXX-XXXXX",
            "obj": "QmQtYtUS7K1AdKjbuMsmPmPGDLaKL38M5HYwqxW9RKW49n",
            "predicate": "UN.CEFACT.Trade.CertificateOfOrigin.created",
        })],
        "exactly the five content fields"
    );
    assert_eq!(
        client.message_status("1").await.unwrap(),
        RemoteStatus::Received
    );
    fake.set_status("1", "confirmed");
    assert_eq!(
        client.message_status("1").await.unwrap(),
        RemoteStatus::Confirmed
    );
    let message = client.get_message("1").await.unwrap();
    assert_eq!(message.id, "1");
    assert_eq!(message.status, RemoteStatus::Confirmed);
    assert_eq!(
        message.message,
        MessageFields {
            sender: Some("AU".into()),
            receiver: Some("SG".into()),
            subject: Some("AU.abn0000000000.XXXX-XXXXX".into()),
            obj: Some("QmQtYtUS7K1AdKjbuMsmPmPGDLaKL38M5HYwqxW9RKW49n".into()),
            predicate: Some("UN.CEFACT.Trade.CertificateOfOrigin.created".into()),
            sender_ref: None,
        }
    );
    assert_eq!(client.circuit_state(), CircuitState::Closed);
}

#[tokio::test]
async fn ethereum_dialect_200_with_a_string_id_and_status() {
    let fake = Arc::new(FakeChannel::default());
    fake.script_post(Reply::json(
        StatusCode::OK,
        json!({"id": "0x5f3c", "status": "received", "message": {"sender": "AU"}}),
    ));
    let client = client(serve(fake).await);
    let receipt = client.post_message(&content("SG")).await.unwrap();
    assert_eq!(receipt.id, "0x5f3c");
    assert_eq!(receipt.status, Some(RemoteStatus::Received));
}

#[tokio::test]
async fn api_channel_dialect_202() {
    let fake = Arc::new(FakeChannel::default());
    fake.script_post(Reply::json(
        StatusCode::ACCEPTED,
        json!({"id": "8a1f0b9e-2f4c-4bb5-9c1e-0c0f1b0b5c3d"}),
    ));
    let client = client(serve(fake).await);
    let receipt = client.post_message(&content("SG")).await.unwrap();
    assert_eq!(receipt.id, "8a1f0b9e-2f4c-4bb5-9c1e-0c0f1b0b5c3d");
}

#[tokio::test]
async fn a_success_without_an_id_is_an_invalid_response() {
    let fake = Arc::new(FakeChannel::default());
    fake.script_post(Reply::json(StatusCode::CREATED, json!({"ok": true})));
    fake.script_post(Reply::text(StatusCode::OK, "<html>hello</html>"));
    let client = client(serve(fake).await);
    for _ in 0..2 {
        let error = client.post_message(&content("SG")).await.unwrap_err();
        assert!(
            matches!(error, ChannelError::InvalidResponse { .. }),
            "{error:?}"
        );
        assert!(error.is_transient());
    }
}

#[tokio::test]
async fn server_errors_are_transient_then_the_retry_succeeds() {
    let fake = Arc::new(FakeChannel::default());
    fake.script_post(Reply::text(StatusCode::INTERNAL_SERVER_ERROR, "boom"));
    fake.script_post(Reply {
        retry_after: Some("3"),
        ..Reply::text(StatusCode::SERVICE_UNAVAILABLE, "")
    });
    fake.script_post(Reply {
        retry_after: Some("1"),
        ..Reply::text(StatusCode::TOO_MANY_REQUESTS, "slow down")
    });
    let client = client(serve(fake.clone()).await);
    let error = client.post_message(&content("SG")).await.unwrap_err();
    assert!(error.is_transient());
    assert_eq!(error.retry_after(), None);
    assert_eq!(
        igl_chain(&error),
        "channel au-sg is unavailable: HTTP 500 Internal Server Error: boom"
    );
    let error = client.post_message(&content("SG")).await.unwrap_err();
    assert_eq!(error.retry_after(), Some(Duration::from_secs(3)));
    let error = client.post_message(&content("SG")).await.unwrap_err();
    assert!(error.is_transient());
    assert_eq!(error.retry_after(), Some(Duration::from_secs(1)));
    let receipt = client.post_message(&content("SG")).await.unwrap();
    assert_eq!(receipt.id, "4");
}

#[tokio::test]
async fn every_call_times_out() {
    let fake = Arc::new(FakeChannel::default());
    *fake.delay.lock().unwrap() = Some(Duration::from_secs(5));
    let config = HttpClientConfig {
        request_timeout: Duration::from_millis(200),
        ..HttpClientConfig::default()
    };
    let client = client_with(serve(fake).await, config);
    let started = Instant::now();
    let error = client.post_message(&content("SG")).await.unwrap_err();
    assert!(
        matches!(error, ChannelError::Unavailable { .. }),
        "{error:?}"
    );
    let error = client.message_status("1").await.unwrap_err();
    assert!(
        matches!(error, ChannelError::Unavailable { .. }),
        "{error:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "calls were not cut short"
    );
}

#[tokio::test]
async fn not_found_and_refused_are_permanent() {
    let fake = Arc::new(FakeChannel::default());
    fake.script_post(Reply::json(
        StatusCode::BAD_REQUEST,
        json!({"obj": ["Missing data for required field."]}),
    ));
    let client = client(serve(fake).await);
    let error = client.message_status("42").await.unwrap_err();
    assert!(
        matches!(&error, ChannelError::NotFound { id, .. } if id == "42"),
        "{error:?}"
    );
    assert!(!error.is_transient());
    assert!(matches!(
        client.get_message("42").await,
        Err(ChannelError::NotFound { .. })
    ));
    let error = client.post_message(&content("SG")).await.unwrap_err();
    assert!(
        matches!(error, ChannelError::Refused { status: 400, .. }),
        "{error:?}"
    );
    assert!(!error.is_transient());
    assert!(error.to_string().contains("Missing data"), "{error}");
    assert_eq!(
        client.circuit_state(),
        CircuitState::Closed,
        "4xx prove the channel alive"
    );
}

#[tokio::test]
async fn configuration_errors_are_not_blamed_on_the_message() {
    let fake = Arc::new(FakeChannel::default());
    fake.script_post(Reply::text(StatusCode::UNAUTHORIZED, "token expired"));
    fake.script_post(Reply::text(StatusCode::NOT_FOUND, "no such path"));
    let client = client(serve(fake).await);
    for status in [401, 404] {
        let error = client.post_message(&content("SG")).await.unwrap_err();
        assert!(
            matches!(error, ChannelError::Misconfigured { status: s, .. } if s == status),
            "{error:?}"
        );
        assert!(
            error.is_transient(),
            "retried, then dead-lettered; never rejected"
        );
    }
    // A channel without the listing says so with a permanent error.
    let wrong_base = HttpChannelClient::new(
        "au-sg",
        &format!("{}nowhere/", client.base_url()),
        HttpClientConfig::default(),
    )
    .unwrap();
    let error = wrong_base
        .list_messages(&ListQuery::default())
        .await
        .unwrap_err();
    assert!(
        matches!(error, ChannelError::Refused { status: 404, .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn subscriptions_are_form_posts() {
    let fake = Arc::new(FakeChannel::default());
    let client = client(serve(fake.clone()).await);
    client
        .subscribe(
            "http://au.example/channel-message/au-sg",
            "AU",
            Duration::from_secs(3600),
            Some("s3cret"),
        )
        .await
        .unwrap();
    client
        .unsubscribe("http://au.example/channel-message/au-sg", "AU")
        .await
        .unwrap();
    let subscriptions = fake.subscriptions.lock().unwrap().clone();
    assert_eq!(subscriptions.len(), 2);
    assert_eq!(subscriptions[0]["hub.mode"], "subscribe");
    assert_eq!(
        subscriptions[0]["hub.callback"],
        "http://au.example/channel-message/au-sg"
    );
    assert_eq!(subscriptions[0]["hub.topic"], "AU");
    assert_eq!(subscriptions[0]["hub.lease_seconds"], "3600");
    assert_eq!(subscriptions[0]["hub.secret"], "s3cret");
    assert_eq!(subscriptions[1]["hub.mode"], "unsubscribe");
}

#[tokio::test]
async fn listings_page_with_cursors() {
    let fake = Arc::new(FakeChannel::default());
    let client = client(serve(fake).await);
    client.post_message(&content("SG")).await.unwrap();
    let query = ListQuery {
        receiver: Some(jurisdiction("AU")),
        ..ListQuery::default()
    };
    let page = client.list_messages(&query).await.unwrap();
    assert_eq!(page.messages.len(), 1);
    assert_eq!(page.messages[0].id, "1");
    assert_eq!(page.messages[0].status, Some(RemoteStatus::Confirmed));
    assert_eq!(page.next.as_deref(), Some("c1"));
    let next = ListQuery {
        cursor: page.next,
        ..query
    };
    assert_eq!(client.list_messages(&next).await.unwrap().next, None);
}

#[tokio::test]
async fn a_dead_channel_opens_its_circuit_and_fails_fast() {
    let config = HttpClientConfig {
        breaker: CircuitBreakerConfig {
            failure_threshold: 2,
            cool_down: Duration::from_secs(60),
        },
        ..HttpClientConfig::default()
    };
    let client = client_with(closed_port().await, config);
    for _ in 0..2 {
        let error = client.post_message(&content("SG")).await.unwrap_err();
        assert!(
            matches!(error, ChannelError::Unavailable { .. }),
            "{error:?}"
        );
    }
    assert_eq!(client.circuit_state(), CircuitState::Open);
    let error = client.message_status("1").await.unwrap_err();
    assert!(
        matches!(error, ChannelError::CircuitOpen { retry_in, .. } if retry_in > Duration::from_secs(50)),
        "{error:?}"
    );
    assert!(error.is_transient());
}

#[tokio::test]
async fn a_circuit_closes_again_after_a_successful_probe() {
    let config = HttpClientConfig {
        breaker: CircuitBreakerConfig {
            failure_threshold: 1,
            cool_down: Duration::from_millis(50),
        },
        ..HttpClientConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = client_with(addr, config);
    assert!(client.post_message(&content("SG")).await.is_err());
    assert_eq!(client.circuit_state(), CircuitState::Open);
    // The channel comes back on the same address.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    serve_on(listener, Arc::new(FakeChannel::default())).await;
    let deadline = Instant::now() + DEADLINE;
    while client.circuit_state() == CircuitState::Open {
        assert!(Instant::now() < deadline, "cool-down never ended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(client.circuit_state(), CircuitState::HalfOpen);
    client.post_message(&content("SG")).await.unwrap();
    assert_eq!(client.circuit_state(), CircuitState::Closed);
}

/// The error and its sources, `"outer: inner"`.
fn igl_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

// ---------------------------------------------------------------------------------------
// the router and the poller

/// A fresh SQLite node store and the routing to one channel (`au-sg`, serving SG).
struct Node {
    _directory: TempDir,
    store: Arc<SqliteStore>,
    channels: Arc<Channels>,
}

impl Node {
    async fn new(channel: SocketAddr) -> Self {
        let directory = tempfile::tempdir().unwrap();
        let store = Arc::new(
            SqliteStore::open(&directory.path().join("igl.db"))
                .await
                .unwrap(),
        );
        let routing = RoutingTable::new(vec![
            RoutingRule::new("au-sg", vec![jurisdiction("SG")])
                .with_predicates(vec![Pattern::parse("UN.CEFACT.*").unwrap()]),
        ]);
        let client: Arc<dyn ChannelClient> = Arc::new(client(channel));
        let channels = Arc::new(Channels::new(routing, [client]).unwrap());
        Self {
            _directory: directory,
            store,
            channels,
        }
    }

    fn storage(&self) -> Arc<dyn Storage> {
        self.store.clone()
    }

    fn router(&self) -> Arc<dyn JobHandler> {
        Arc::new(
            RouteMessage::new(self.storage(), self.channels.clone())
                .with_first_poll_delay(Duration::ZERO),
        )
    }

    fn poller(&self) -> Arc<dyn JobHandler> {
        Arc::new(
            PollChannel::new(self.storage(), self.channels.clone())
                .with_poll_backoff(Duration::from_millis(20), Duration::from_millis(40)),
        )
    }

    /// Stores a pending outbound message and its route job, as the processor would.
    async fn submit(&self, sender_ref: &str, receiver: &str) -> MessageRef {
        let new = NewMessage::parse(MessageFields {
            sender: Some("AU".into()),
            receiver: Some(receiver.into()),
            subject: Some("AU.abn0000000000.XXXX-XXXXX".into()),
            obj: Some("QmQtYtUS7K1AdKjbuMsmPmPGDLaKL38M5HYwqxW9RKW49n".into()),
            predicate: Some("UN.CEFACT.Trade.CertificateOfOrigin.created".into()),
            sender_ref: Some(sender_ref.into()),
        })
        .unwrap();
        let mut unit = self.store.begin().await.unwrap();
        unit.insert_message(&new, MessageStatus::Pending)
            .await
            .unwrap();
        let reference = new.reference();
        self.enqueue_route_in(&mut *unit, &reference).await;
        unit.commit().await.unwrap();
        reference
    }

    async fn enqueue_route_in(&self, unit: &mut dyn igl_core::UnitOfWork, reference: &MessageRef) {
        unit.enqueue(&[PipelineJob::route(reference).into_new_job()])
            .await
            .unwrap();
    }

    async fn enqueue(&self, job: PipelineJob) {
        self.store.enqueue(&[job.into_new_job()]).await.unwrap();
    }

    async fn route(&self) -> DrainReport {
        let queue: Arc<dyn JobQueue> = self.store.clone();
        drain(&queue, &self.router(), &config(ROUTE_QUEUE))
            .await
            .unwrap()
    }

    async fn poll(&self) -> DrainReport {
        let queue: Arc<dyn JobQueue> = self.store.clone();
        drain(&queue, &self.poller(), &config(CHANNEL_POLL_QUEUE))
            .await
            .unwrap()
    }

    async fn message(&self, reference: &MessageRef) -> Message {
        self.store.get_message(reference).await.unwrap().unwrap()
    }

    /// The payload of the status event `{reference}/status/{status}`, if appended.
    async fn status_event(&self, reference: &MessageRef, status: &str) -> Option<Value> {
        let id = format!("{reference}/status/{status}");
        self.store
            .read_events(0, 1000)
            .await
            .unwrap()
            .into_iter()
            .find(|event| event.id == id)
            .map(|event| event.payload)
    }
}

fn config(queue: QueueName) -> WorkerConfig {
    WorkerConfig {
        queue,
        concurrency: 2,
        claim_batch: 8,
        lease: Duration::from_secs(30),
        idle_poll: Duration::from_millis(50),
        job_timeout: Duration::from_secs(20),
        // Retries are due 10-40 ms later: one drain makes one attempt per job.
        retry: RetryPolicy {
            max_attempts: 50,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(40),
        },
    }
}

#[tokio::test]
async fn a_pending_message_is_posted_tracked_and_accepted() {
    let fake = Arc::new(FakeChannel::default());
    let node = Node::new(serve(fake.clone()).await).await;
    let reference = node.submit("r1", "SG").await;

    let report = node.route().await;
    assert_eq!((report.done, report.retried), (1, 0), "{report:?}");
    assert_eq!(fake.posts().len(), 1);
    let message = node.message(&reference).await;
    assert_eq!(message.status, MessageStatus::Pending);
    assert_eq!(message.channel_id.as_deref(), Some("au-sg"));
    assert_eq!(message.channel_txn_id.as_deref(), Some("1"));
    assert_eq!(message.channel_status, Some(ChannelStatus::Received));

    // Still `received` on the channel: polled again later, message still pending.
    let report = node.poll().await;
    assert!(report.done == 0 && report.retried >= 1, "{report:?}");
    assert_eq!(
        node.message(&reference).await.status,
        MessageStatus::Pending
    );
    assert!(node.status_event(&reference, "accepted").await.is_none());

    fake.set_status("1", "confirmed");
    let deadline = Instant::now() + DEADLINE;
    while node.message(&reference).await.status == MessageStatus::Pending {
        assert!(Instant::now() < deadline, "never accepted");
        node.poll().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let message = node.message(&reference).await;
    assert_eq!(message.status, MessageStatus::Accepted);
    assert_eq!(message.channel_status, Some(ChannelStatus::Confirmed));
    assert_eq!(
        node.status_event(&reference, "accepted").await,
        Some(json!({"predicate": "message.r1.status", "sender_ref": "AU:r1"}))
    );
    let depth = node.store.depth(&CHANNEL_POLL_QUEUE).await.unwrap();
    assert_eq!(depth.ready + depth.scheduled + depth.dead, 0, "{depth:?}");
}

/// A channel whose answer to the post already says `confirmed` (our shared-db endpoint)
/// gets no poll: the router accepts the message, with its status event, in the unit of
/// work that records the post.
#[tokio::test]
async fn a_message_confirmed_in_the_post_answer_is_accepted_without_a_poll() {
    let fake = Arc::new(FakeChannel::default());
    fake.script_post(Reply::json(
        StatusCode::CREATED,
        json!({"id": 1, "status": "confirmed"}),
    ));
    let node = Node::new(serve(fake.clone()).await).await;
    let reference = node.submit("confirmed-1", "SG").await;

    let report = node.route().await;
    assert_eq!((report.done, report.retried), (1, 0), "{report:?}");
    let message = node.message(&reference).await;
    assert_eq!(message.status, MessageStatus::Accepted);
    assert_eq!(message.channel_status, Some(ChannelStatus::Confirmed));
    assert_eq!(message.channel_txn_id.as_deref(), Some("1"));
    assert_eq!(
        node.status_event(&reference, "accepted").await,
        Some(json!({"predicate": "message.confirmed-1.status", "sender_ref": "AU:confirmed-1"}))
    );
    let depth = node.store.depth(&CHANNEL_POLL_QUEUE).await.unwrap();
    assert_eq!(depth, Default::default(), "no poll job");

    // A repeated route job changes nothing and posts nothing.
    node.enqueue(PipelineJob::route(&reference)).await;
    node.route().await;
    assert_eq!(fake.posts().len(), 1);
    assert_eq!(
        node.message(&reference).await.status,
        MessageStatus::Accepted
    );
}

#[tokio::test]
async fn a_message_no_rule_accepts_is_rejected_with_the_reason() {
    let fake = Arc::new(FakeChannel::default());
    let node = Node::new(serve(fake.clone()).await).await;
    let reference = node.submit("r2", "NZ").await;

    let report = node.route().await;
    assert_eq!(report.done, 1, "{report:?}");
    assert!(fake.posts().is_empty());
    let message = node.message(&reference).await;
    assert_eq!(message.status, MessageStatus::Rejected);
    assert_eq!(message.channel_id, None);
    assert_eq!(
        node.status_event(&reference, "rejected").await,
        Some(json!({
            "predicate": "message.r2.status",
            "sender_ref": "AU:r2",
            "reason": "no channel serves receiver \"NZ\"",
        }))
    );
}

#[tokio::test]
async fn a_channel_that_is_down_delays_the_message_without_losing_it() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let node = Node::new(addr).await;
    let reference = node.submit("r3", "SG").await;

    let report = node.route().await;
    assert!(report.done == 0 && report.retried >= 1, "{report:?}");
    let message = node.message(&reference).await;
    assert_eq!(message.status, MessageStatus::Pending);
    assert_eq!(message.channel_txn_id, None);
    let depth = node.store.depth(&ROUTE_QUEUE).await.unwrap();
    assert_eq!(
        (depth.scheduled + depth.ready, depth.dead),
        (1, 0),
        "{depth:?}"
    );

    // The channel comes back: the retried job posts the message.
    let fake = Arc::new(FakeChannel::default());
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    serve_on(listener, fake.clone()).await;
    let deadline = Instant::now() + DEADLINE;
    while node.message(&reference).await.channel_txn_id.is_none() {
        assert!(Instant::now() < deadline, "never posted");
        node.route().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fake.posts().len(), 1);
    assert_eq!(
        node.message(&reference).await.status,
        MessageStatus::Pending
    );
}

#[tokio::test]
async fn a_message_the_channel_refuses_is_rejected() {
    let fake = Arc::new(FakeChannel::default());
    fake.script_post(Reply::json(
        StatusCode::BAD_REQUEST,
        json!({"obj": ["Missing data for required field."]}),
    ));
    let node = Node::new(serve(fake.clone()).await).await;
    let reference = node.submit("r4", "SG").await;

    let report = node.route().await;
    assert_eq!((report.done, report.retried), (1, 0), "{report:?}");
    assert_eq!(
        node.message(&reference).await.status,
        MessageStatus::Rejected
    );
    let event = node.status_event(&reference, "rejected").await.unwrap();
    let reason = event["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("channel au-sg refused the request with HTTP 400"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_repeated_route_job_does_not_post_twice() {
    let fake = Arc::new(FakeChannel::default());
    let node = Node::new(serve(fake.clone()).await).await;
    let reference = node.submit("r5", "SG").await;
    node.route().await;
    assert_eq!(fake.posts().len(), 1);

    node.enqueue(PipelineJob::route(&reference)).await;
    let report = node.route().await;
    assert_eq!(report.done, 1, "{report:?}");
    assert_eq!(fake.posts().len(), 1, "posted again");
    let message = node.message(&reference).await;
    assert_eq!(message.channel_txn_id.as_deref(), Some("1"));
    let depth = node.store.depth(&CHANNEL_POLL_QUEUE).await.unwrap();
    assert_eq!(depth.ready + depth.scheduled, 1, "one poll job: {depth:?}");
}

#[tokio::test]
async fn an_undeliverable_message_is_rejected() {
    let fake = Arc::new(FakeChannel::default());
    let node = Node::new(serve(fake.clone()).await).await;
    let reference = node.submit("r6", "SG").await;
    node.route().await;
    fake.set_status("1", "undeliverable");

    let report = node.poll().await;
    assert_eq!(report.done, 1, "{report:?}");
    let message = node.message(&reference).await;
    assert_eq!(message.status, MessageStatus::Rejected);
    assert_eq!(message.channel_status, Some(ChannelStatus::Undeliverable));
    let event = node.status_event(&reference, "rejected").await.unwrap();
    assert_eq!(
        event["reason"],
        "channel au-sg reported the message undeliverable"
    );
}

#[tokio::test]
async fn a_message_revoked_before_confirmation_is_posted_again() {
    let fake = Arc::new(FakeChannel::default());
    let node = Node::new(serve(fake.clone()).await).await;
    let reference = node.submit("r7", "SG").await;
    node.route().await;
    fake.set_status("1", "revoked");

    let report = node.poll().await;
    assert_eq!(report.done, 1, "{report:?}");
    let message = node.message(&reference).await;
    assert_eq!(message.status, MessageStatus::Pending);
    assert_eq!(message.channel_status, Some(ChannelStatus::Revoked));

    node.route().await;
    assert_eq!(fake.posts().len(), 2, "posted again");
    let message = node.message(&reference).await;
    assert_eq!(message.channel_txn_id.as_deref(), Some("2"));
    assert_eq!(message.channel_status, Some(ChannelStatus::Received));

    fake.set_status("2", "confirmed");
    node.poll().await;
    let message = node.message(&reference).await;
    assert_eq!(message.status, MessageStatus::Accepted);
    assert_eq!(message.channel_status, Some(ChannelStatus::Confirmed));
}

#[tokio::test]
async fn a_message_revoked_after_acceptance_is_posted_again_and_stays_accepted() {
    let fake = Arc::new(FakeChannel::default());
    let node = Node::new(serve(fake.clone()).await).await;
    let reference = node.submit("r8", "SG").await;
    node.route().await;
    fake.set_status("1", "confirmed");
    node.poll().await;
    assert_eq!(
        node.message(&reference).await.status,
        MessageStatus::Accepted
    );

    // A poll of a confirmed message (a replay or a status notification) that finds the
    // confirmation withdrawn.
    fake.set_status("1", "revoked");
    node.enqueue(PipelineJob::channel_poll(&reference)).await;
    let report = node.poll().await;
    assert_eq!(report.done, 1, "{report:?}");
    assert_eq!(
        node.message(&reference).await.channel_status,
        Some(ChannelStatus::Revoked)
    );

    node.route().await;
    assert_eq!(fake.posts().len(), 2, "posted again");
    let message = node.message(&reference).await;
    assert_eq!(message.status, MessageStatus::Accepted, "final status kept");
    assert_eq!(message.channel_txn_id.as_deref(), Some("2"));
    assert_eq!(message.channel_status, Some(ChannelStatus::Received));

    fake.set_status("2", "confirmed");
    node.poll().await;
    let message = node.message(&reference).await;
    assert_eq!(message.channel_status, Some(ChannelStatus::Confirmed));
    assert_eq!(message.status, MessageStatus::Accepted);

    // Polling a confirmed message again changes nothing.
    node.enqueue(PipelineJob::channel_poll(&reference)).await;
    assert_eq!(node.poll().await.done, 1);
    assert_eq!(node.message(&reference).await, message);
}

#[tokio::test]
async fn a_channel_failing_to_answer_a_poll_is_asked_again_later() {
    let fake = Arc::new(FakeChannel::default());
    let node = Node::new(serve(fake.clone()).await).await;
    let reference = node.submit("r9", "SG").await;
    node.route().await;
    fake.script_status(Reply {
        retry_after: Some("60"),
        ..Reply::text(StatusCode::SERVICE_UNAVAILABLE, "maintenance")
    });

    let report = node.poll().await;
    assert_eq!((report.done, report.retried), (0, 1), "{report:?}");
    let message = node.message(&reference).await;
    assert_eq!(message.status, MessageStatus::Pending);
    assert_eq!(message.channel_status, Some(ChannelStatus::Received));
    let depth = node.store.depth(&CHANNEL_POLL_QUEUE).await.unwrap();
    assert_eq!(
        (depth.scheduled, depth.dead),
        (1, 0),
        "waits for Retry-After: {depth:?}"
    );
}

#[tokio::test]
async fn a_misconfigured_channel_delays_the_message_instead_of_rejecting_it() {
    let fake = Arc::new(FakeChannel::default());
    fake.script_post(Reply::text(StatusCode::FORBIDDEN, ""));
    let node = Node::new(serve(fake.clone()).await).await;
    let reference = node.submit("r10", "SG").await;

    let report = node.route().await;
    assert!(report.done == 0 && report.retried >= 1, "{report:?}");
    assert_eq!(
        node.message(&reference).await.status,
        MessageStatus::Pending
    );

    // Fixed (here: the next answer is a normal one); the retry posts it.
    let deadline = Instant::now() + DEADLINE;
    while node.message(&reference).await.channel_txn_id.is_none() {
        assert!(Instant::now() < deadline, "never posted");
        node.route().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        node.message(&reference).await.status,
        MessageStatus::Pending
    );
}

// ---------------------------------------------------------------------------------------
// idempotent posting against our real endpoint

/// What the lossy proxy saw.
#[derive(Debug, Default)]
struct ProxyState {
    /// The `Idempotency-Key` of every `POST /messages` forwarded.
    post_keys: Mutex<Vec<Option<String>>>,
    /// How many answers to `POST /messages` to drop (replaced by a 502) after the upstream
    /// handled the request.
    lose_answers: Mutex<usize>,
}

/// A proxy in front of `upstream` that forwards every request, and answers the first
/// `lose_answers` posts with 502 Bad Gateway *after* the upstream committed them: the
/// channel holds the message, the router never learns its id.
async fn lossy_proxy(upstream: String, lose_answers: usize) -> (SocketAddr, Arc<ProxyState>) {
    let state = Arc::new(ProxyState {
        lose_answers: Mutex::new(lose_answers),
        ..ProxyState::default()
    });
    let http = reqwest::Client::new();
    let app = Router::new().fallback({
        let state = state.clone();
        move |method: axum::http::Method,
              uri: axum::http::Uri,
              headers: axum::http::HeaderMap,
              body: axum::body::Bytes| {
            let (state, http, upstream) = (state.clone(), http.clone(), upstream.clone());
            async move {
                let is_post = method == axum::http::Method::POST && uri.path() == "/messages";
                let mut request = http.request(method, format!("{upstream}{uri}")).body(body);
                for (name, value) in &headers {
                    if name != axum::http::header::HOST {
                        request = request.header(name, value);
                    }
                }
                let answer = request.send().await.unwrap();
                let status = answer.status();
                let body = answer.bytes().await.unwrap();
                if is_post {
                    let key = headers
                        .get("idempotency-key")
                        .map(|value| value.to_str().unwrap().to_owned());
                    state.post_keys.lock().unwrap().push(key);
                    let mut lose = state.lose_answers.lock().unwrap();
                    if *lose > 0 {
                        *lose -= 1;
                        return (StatusCode::BAD_GATEWAY, "upstream answer lost").into_response();
                    }
                }
                (status, body).into_response()
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, state)
}

/// Our shared-db endpoint for AU on a SQLite medium in `directory`.
async fn real_endpoint(directory: &TempDir) -> (igl_channels::endpoint::RunningEndpoint, String) {
    let medium = format!("sqlite://{}", directory.path().join("channel.db").display());
    let state: Arc<dyn Storage> = Arc::new(
        SqliteStore::open(&directory.path().join("endpoint.db"))
            .await
            .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint_url = format!("http://{}", listener.local_addr().unwrap());
    let config = igl_channels::endpoint::EndpointConfig::new(
        jurisdiction("AU"),
        medium,
        state,
        endpoint_url.clone(),
    );
    let endpoint =
        igl_channels::endpoint::start(config, listener, tokio_util::sync::CancellationToken::new())
            .await
            .unwrap();
    (endpoint, endpoint_url)
}

/// The messages AU posted, as the endpoint lists them.
async fn listed_from_au(endpoint_url: &str) -> Vec<Value> {
    let listing: Value = reqwest::get(format!("{endpoint_url}/messages?sender=AU"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    listing["messages"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_post_whose_answer_was_lost_is_not_stored_twice_on_the_channel() {
    let directory = tempfile::tempdir().unwrap();
    let (endpoint, endpoint_url) = real_endpoint(&directory).await;
    let (proxy, seen) = lossy_proxy(endpoint_url.clone(), 1).await;
    let node = Node::new(proxy).await;
    let reference = node.submit("lost-answer-1", "SG").await;

    // First attempt: the endpoint commits the message, the router gets a 502 and retries
    // (on a slow machine the retry may already be due within the same drain).
    let report = node.route().await;
    assert!(report.retried >= 1, "{report:?}");

    let deadline = Instant::now() + DEADLINE;
    while node.message(&reference).await.channel_txn_id.is_none() {
        assert!(Instant::now() < deadline, "never recorded");
        node.route().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Posted twice with the message reference as the key; stored once.
    let keys = seen.post_keys.lock().unwrap().clone();
    assert_eq!(
        keys,
        vec![Some("AU:lost-answer-1".to_owned()); 2],
        "two posts, one key"
    );
    let stored = listed_from_au(&endpoint_url).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    let message = node.message(&reference).await;
    assert_eq!(
        message.channel_txn_id.as_deref(),
        Some(stored[0]["id"].to_string().as_str())
    );
    assert_eq!(message.status, MessageStatus::Pending);

    // And the poller confirms it as usual (commit is confirmation on this medium).
    let deadline = Instant::now() + DEADLINE;
    while node.message(&reference).await.status == MessageStatus::Pending {
        assert!(Instant::now() < deadline, "never accepted");
        node.poll().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        node.message(&reference).await.status,
        MessageStatus::Accepted
    );
    endpoint.stop().await.unwrap();
}

#[tokio::test]
async fn a_message_revoked_on_our_endpoint_is_posted_again_under_a_new_id() {
    let directory = tempfile::tempdir().unwrap();
    let (endpoint, endpoint_url) = real_endpoint(&directory).await;
    let node = Node::new(endpoint.local_addr()).await;
    let reference = node.submit("revoked-1", "SG").await;
    node.route().await;
    let deadline = Instant::now() + DEADLINE;
    while node.message(&reference).await.status != MessageStatus::Accepted {
        assert!(Instant::now() < deadline, "never accepted");
        node.poll().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first = node.message(&reference).await.channel_txn_id.unwrap();

    // The channel withdraws it; a poll of the message (a replayed job) notices.
    let revoked = reqwest::Client::new()
        .put(format!("{endpoint_url}/messages/{first}/status"))
        .form(&[("status", "revoked")])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::OK);
    node.enqueue(PipelineJob::channel_poll(&reference)).await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let message = node.message(&reference).await;
        if message.channel_txn_id.as_deref() != Some(first.as_str())
            && message.channel_status == Some(ChannelStatus::Confirmed)
        {
            break;
        }
        assert!(Instant::now() < deadline, "never re-posted: {message:?}");
        node.poll().await;
        node.route().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Re-posted with the same idempotency key, yet stored anew: the revoked message does
    // not hold the key any more.
    let message = node.message(&reference).await;
    assert_eq!(message.status, MessageStatus::Accepted);
    let listed = listed_from_au(&endpoint_url).await;
    let statuses: Vec<(String, String)> = listed
        .iter()
        .map(|m| {
            (
                m["id"].to_string(),
                m["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            (first, "revoked".to_owned()),
            (message.channel_txn_id.unwrap(), "confirmed".to_owned())
        ]
    );
    endpoint.stop().await.unwrap();
}
