//! The inbound half of G2G exchange against real backends: the channel message retriever,
//! the object spider and the channel subscriber, with a fresh SQLite database and local
//! object directory per test, and axum servers on port 0 standing in for a channel endpoint
//! and a foreign Document API.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use igl_channels::client::{
    ChannelClient, Channels, HttpChannelClient, HttpClientConfig, routing::RoutingTable,
};
use igl_core::pipeline::{
    CHANNEL_MESSAGE_QUEUE, OBJECT_RETRIEVAL_QUEUE, PROCESS_QUEUE, PipelineJob,
};
use igl_core::{
    DeadLetter, JobQueue, MessageFilter, MessageStore, ObjectAcl, ObjectStore, QueueDepth,
    QueueName, Storage,
};
use igl_domain::{Jurisdiction, MessageRef, MessageStatus, Multihash};
use igl_store::SqliteStore;
use igl_store::objects::ObjectLake;
use igl_workers::handlers::{DocumentSource, FetchObject, RetrieveChannelMessage, SpiderConfig};
use igl_workers::{
    ChannelSubscriptions, DrainReport, JobHandler, RetryPolicy, SubscriberConfig, WorkerConfig,
    drain,
};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

/// The longest any condition is waited for.
const DEADLINE: Duration = Duration::from_secs(20);
const PREDICATE: &str = "UN.CEFACT.Trade.CertificateOfOrigin.created";
const CHANNEL: &str = "au-sg";

fn au() -> Jurisdiction {
    Jurisdiction::parse("AU").unwrap()
}

fn sg() -> Jurisdiction {
    Jurisdiction::parse("SG").unwrap()
}

// ---------------------------------------------------------------------------------------
// the node under test

/// The SG node's backends: a SQLite database and a local object directory.
struct Node {
    _directory: TempDir,
    store: Arc<SqliteStore>,
    objects: Arc<ObjectLake>,
}

impl Node {
    async fn new() -> Self {
        let directory = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&directory.path().join("igl.db"))
            .await
            .unwrap();
        let objects = ObjectLake::local(&directory.path().join("objects")).unwrap();
        Self {
            _directory: directory,
            store: Arc::new(store),
            objects: Arc::new(objects),
        }
    }

    fn storage(&self) -> Arc<dyn Storage> {
        self.store.clone()
    }

    fn queue(&self) -> Arc<dyn JobQueue> {
        self.store.clone()
    }

    async fn enqueue(&self, job: PipelineJob) {
        self.store.enqueue(&[job.into_new_job()]).await.unwrap();
    }

    async fn depth(&self, queue: &QueueName) -> QueueDepth {
        self.store.depth(queue).await.unwrap()
    }

    async fn dead_letters(&self, queue: &QueueName) -> Vec<DeadLetter> {
        self.store
            .dead_letters(Some(queue), None, 100)
            .await
            .unwrap()
    }

    async fn all_messages(&self) -> Vec<igl_domain::Message> {
        self.store
            .list_messages(&MessageFilter::default())
            .await
            .unwrap()
            .messages
    }

    /// Drains `queue` with `handler` once (fast retries, one job at a time).
    async fn drain(&self, queue: QueueName, handler: Arc<dyn JobHandler>) -> DrainReport {
        let config = WorkerConfig {
            concurrency: 1,
            claim_batch: 8,
            retry: RetryPolicy {
                max_attempts: 3,
                base_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(5),
            },
            ..WorkerConfig::new(queue)
        };
        drain(&self.queue(), &handler, &config).await.unwrap()
    }

    /// Drains `queue` until nothing is ready or scheduled (retries included).
    async fn drain_until_settled(&self, queue: QueueName, handler: Arc<dyn JobHandler>) {
        let started = Instant::now();
        loop {
            self.drain(queue.clone(), handler.clone()).await;
            let depth = self.depth(&queue).await;
            if depth.ready + depth.scheduled + depth.in_flight == 0 {
                return;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "{queue} did not settle: {depth:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Serves `router` on 127.0.0.1:0; returns its base URL.
async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{address}")
}

/// Waits until `condition` holds.
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !condition().await {
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------
// a fake channel endpoint

#[derive(Default)]
struct ChannelState {
    /// Channel message id → the whole `GET /messages/{id}` answer.
    messages: HashMap<String, Value>,
    fetches: usize,
    /// Every subscription form received (successful or not).
    subscriptions: Vec<HashMap<String, String>>,
    /// How many subscription requests still fail with 503.
    failing_subscriptions: usize,
    /// The listing (ids, oldest first); `None`: no listing (404).
    listing: Option<Vec<u64>>,
    listing_queries: Vec<HashMap<String, String>>,
    /// Answer every `GET /messages/{id}` with 503.
    unavailable: bool,
}

#[derive(Clone, Default)]
struct FakeChannel(Arc<Mutex<ChannelState>>);

impl FakeChannel {
    async fn start(&self) -> String {
        let router = Router::new()
            .route("/messages", get(list_messages))
            .route("/messages/{id}", get(get_message))
            .route("/messages/subscriptions/by_jurisdiction", post(subscribe))
            .with_state(self.clone());
        serve(router).await
    }

    fn put(&self, id: u64, status: &str, message: Value) {
        self.0.lock().unwrap().messages.insert(
            id.to_string(),
            json!({"id": id, "status": status, "message": message}),
        );
    }

    fn set_status(&self, id: u64, status: &str) {
        let mut state = self.0.lock().unwrap();
        state.messages.get_mut(&id.to_string()).unwrap()["status"] = json!(status);
    }

    fn subscriptions(&self) -> Vec<HashMap<String, String>> {
        self.0.lock().unwrap().subscriptions.clone()
    }
}

async fn get_message(State(channel): State<FakeChannel>, Path(id): Path<String>) -> Response {
    let mut state = channel.0.lock().unwrap();
    state.fetches += 1;
    if state.unavailable {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    match state.messages.get(&id) {
        Some(answer) => axum::Json(answer.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn subscribe(
    State(channel): State<FakeChannel>,
    Form(form): Form<HashMap<String, String>>,
) -> StatusCode {
    let mut state = channel.0.lock().unwrap();
    state.subscriptions.push(form);
    if state.failing_subscriptions > 0 {
        state.failing_subscriptions -= 1;
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::ACCEPTED
    }
}

async fn list_messages(
    State(channel): State<FakeChannel>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut state = channel.0.lock().unwrap();
    state.listing_queries.push(query.clone());
    let Some(listing) = &state.listing else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let after: u64 = query
        .get("after_id")
        .map_or(0, |after| after.parse().unwrap());
    let page: Vec<Value> = listing
        .iter()
        .filter(|id| **id > after)
        .map(|id| json!({"id": id, "status": "confirmed"}))
        .collect();
    axum::Json(page).into_response()
}

fn message_json(sender: &str, receiver: &str) -> Value {
    json!({
        "sender": sender,
        "receiver": receiver,
        "subject": "AU.abn0000000000.XXXX-XXXXX-XXXXX-XXXXXX",
        "obj": Multihash::of(b"certificate").to_string(),
        "predicate": PREDICATE,
    })
}

/// The channels `(id, base URL)`, each with the real HTTP client (2 s per call).
fn channels<'a>(endpoints: impl IntoIterator<Item = (&'a str, String)>) -> Arc<Channels> {
    let config = HttpClientConfig {
        request_timeout: Duration::from_secs(2),
        ..HttpClientConfig::default()
    };
    let clients = endpoints.into_iter().map(|(id, base)| {
        let client: Arc<dyn ChannelClient> =
            Arc::new(HttpChannelClient::new(id, &base, config).unwrap());
        client
    });
    Arc::new(Channels::new(RoutingTable::default(), clients).unwrap())
}

async fn retriever(node: &Node, channel: &FakeChannel) -> Arc<dyn JobHandler> {
    let base = channel.start().await;
    Arc::new(
        RetrieveChannelMessage::new(node.storage(), channels([(CHANNEL, base)]), sg())
            .with_unconfirmed_backoff(Duration::from_millis(20), Duration::from_millis(20)),
    )
}

fn notification(message_id: u64) -> PipelineJob {
    PipelineJob::ChannelMessageV1 {
        channel_id: CHANNEL.to_owned(),
        message_id: message_id.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// retriever

#[tokio::test]
async fn a_confirmed_channel_message_is_stored_as_received_with_its_process_job() {
    let node = Node::new().await;
    let channel = FakeChannel::default();
    channel.put(17, "confirmed", message_json("AU", "SG"));
    let handler = retriever(&node, &channel).await;

    node.enqueue(notification(17)).await;
    let report = node.drain(CHANNEL_MESSAGE_QUEUE, handler).await;
    assert_eq!((report.done, report.dead_lettered), (1, 0), "{report:?}");

    let reference = MessageRef::parse("AU:au-sg.17").unwrap();
    let message = node.store.get_message(&reference).await.unwrap().unwrap();
    assert_eq!(message.status, MessageStatus::Received);
    assert_eq!(message.content.sender, au());
    assert_eq!(message.content.receiver, sg());
    assert_eq!(message.content.predicate, PREDICATE);
    assert_eq!(
        node.depth(&CHANNEL_MESSAGE_QUEUE).await,
        QueueDepth::default()
    );
    let process = node.depth(&PROCESS_QUEUE).await;
    assert_eq!(process.ready, 1, "{process:?}");
    let jobs = node
        .store
        .claim(&PROCESS_QUEUE, 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        jobs[0].payload,
        json!({"type": "process.v1", "reference": "AU:au-sg.17"})
    );
}

#[tokio::test]
async fn a_carried_sender_ref_is_kept() {
    let node = Node::new().await;
    let channel = FakeChannel::default();
    let mut message = message_json("AU", "SG");
    message["sender_ref"] = json!("1a0abd3b-5b9a-4e60-9f3c-0d5c1f2a7e11");
    channel.put(3, "confirmed", message);
    let handler = retriever(&node, &channel).await;

    node.enqueue(notification(3)).await;
    node.drain(CHANNEL_MESSAGE_QUEUE, handler).await;
    let messages = node.all_messages().await;
    assert_eq!(messages.len(), 1);
    assert_eq!(
        messages[0].sender_ref.as_str(),
        "1a0abd3b-5b9a-4e60-9f3c-0d5c1f2a7e11"
    );
}

#[tokio::test]
async fn duplicate_notifications_store_one_message() {
    let node = Node::new().await;
    let channel = FakeChannel::default();
    channel.put(5, "confirmed", message_json("AU", "SG"));
    let handler = retriever(&node, &channel).await;

    // One while the first is queued (deduplicated by key), one after it was handled.
    node.enqueue(notification(5)).await;
    node.enqueue(notification(5)).await;
    node.drain(CHANNEL_MESSAGE_QUEUE, handler.clone()).await;
    node.enqueue(notification(5)).await;
    let report = node.drain(CHANNEL_MESSAGE_QUEUE, handler).await;
    assert_eq!(report.done, 1, "{report:?}");

    assert_eq!(node.all_messages().await.len(), 1);
    assert_eq!(channel.0.lock().unwrap().fetches, 2);
    // The second retrieval found the message stored and queued no second process job.
    assert_eq!(node.depth(&PROCESS_QUEUE).await.ready, 1);
}

#[tokio::test]
async fn invalid_content_is_dead_lettered() {
    let node = Node::new().await;
    let channel = FakeChannel::default();
    let mut message = message_json("AU", "SG");
    message["predicate"] = json!("predicate");
    channel.put(8, "confirmed", message);
    let handler = retriever(&node, &channel).await;

    node.enqueue(notification(8)).await;
    let report = node.drain(CHANNEL_MESSAGE_QUEUE, handler).await;
    assert_eq!(report.dead_lettered, 1, "{report:?}");
    let dead = node.dead_letters(&CHANNEL_MESSAGE_QUEUE).await;
    let error = dead[0].last_error.as_deref().unwrap();
    assert!(error.contains("predicate is not a URI"), "{error}");
    assert!(node.all_messages().await.is_empty());
    assert_eq!(node.depth(&PROCESS_QUEUE).await, QueueDepth::default());
}

#[tokio::test]
async fn a_message_for_another_jurisdiction_is_dead_lettered() {
    let node = Node::new().await;
    let channel = FakeChannel::default();
    channel.put(9, "confirmed", message_json("AU", "NZ"));
    channel.put(10, "confirmed", message_json("SG", "SG"));
    let handler = retriever(&node, &channel).await;

    node.enqueue(notification(9)).await;
    node.enqueue(notification(10)).await;
    let report = node.drain(CHANNEL_MESSAGE_QUEUE, handler).await;
    assert_eq!(report.dead_lettered, 2, "{report:?}");
    let errors: Vec<String> = node
        .dead_letters(&CHANNEL_MESSAGE_QUEUE)
        .await
        .into_iter()
        .map(|dead| dead.last_error.unwrap())
        .collect();
    assert!(
        errors[0].contains("is for NZ, this node is SG"),
        "{errors:?}"
    );
    assert!(errors[1].contains("own jurisdiction"), "{errors:?}");
    assert!(node.all_messages().await.is_empty());
}

#[tokio::test]
async fn an_unconfirmed_message_is_retried_until_confirmed() {
    let node = Node::new().await;
    let channel = FakeChannel::default();
    channel.put(11, "received", message_json("AU", "SG"));
    let handler = retriever(&node, &channel).await;

    node.enqueue(notification(11)).await;
    let report = node.drain(CHANNEL_MESSAGE_QUEUE, handler.clone()).await;
    assert_eq!((report.retried, report.done), (1, 0), "{report:?}");
    assert!(node.all_messages().await.is_empty());
    assert_eq!(node.depth(&CHANNEL_MESSAGE_QUEUE).await.scheduled, 1);

    channel.set_status(11, "confirmed");
    node.drain_until_settled(CHANNEL_MESSAGE_QUEUE, handler)
        .await;
    let messages = node.all_messages().await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].sender_ref.as_str(), "au-sg.11");
    assert!(node.dead_letters(&CHANNEL_MESSAGE_QUEUE).await.is_empty());
}

#[tokio::test]
async fn a_revoked_message_is_dropped_and_acked() {
    let node = Node::new().await;
    let channel = FakeChannel::default();
    channel.put(12, "revoked", message_json("AU", "SG"));
    let handler = retriever(&node, &channel).await;

    node.enqueue(notification(12)).await;
    let report = node.drain(CHANNEL_MESSAGE_QUEUE, handler).await;
    assert_eq!((report.done, report.dead_lettered), (1, 0), "{report:?}");
    assert!(node.all_messages().await.is_empty());
    assert_eq!(
        node.depth(&CHANNEL_MESSAGE_QUEUE).await,
        QueueDepth::default()
    );
}

#[tokio::test]
async fn a_failing_channel_opens_its_circuit_without_holding_up_another() {
    let node = Node::new().await;
    let failing = FakeChannel::default();
    failing.0.lock().unwrap().unavailable = true;
    let healthy = FakeChannel::default();
    healthy.put(1, "confirmed", message_json("AU", "SG"));
    let (failing_url, healthy_url) = (failing.start().await, healthy.start().await);
    let handler: Arc<dyn JobHandler> = Arc::new(RetrieveChannelMessage::new(
        node.storage(),
        channels([("failing", failing_url), ("healthy", healthy_url)]),
        sg(),
    ));
    for id in 1..=6 {
        node.enqueue(PipelineJob::ChannelMessageV1 {
            channel_id: "failing".to_owned(),
            message_id: id.to_string(),
        })
        .await;
    }
    node.enqueue(PipelineJob::ChannelMessageV1 {
        channel_id: "healthy".to_owned(),
        message_id: "1".to_owned(),
    })
    .await;
    // One job at a time, so the breaker sees each failure before the next call.
    let config = WorkerConfig {
        concurrency: 1,
        claim_batch: 1,
        retry: RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_secs(60),
            max_delay: Duration::from_secs(60),
        },
        ..WorkerConfig::new(CHANNEL_MESSAGE_QUEUE)
    };
    let report = drain(&node.queue(), &handler, &config).await.unwrap();
    assert_eq!((report.done, report.retried), (1, 6), "{report:?}");
    // Five failures opened the failing channel's circuit: the sixth call never left.
    assert_eq!(failing.0.lock().unwrap().fetches, 5);
    let messages = node.all_messages().await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].sender_ref.as_str(), "healthy.1");
    let depth = node.depth(&CHANNEL_MESSAGE_QUEUE).await;
    assert_eq!((depth.scheduled, depth.dead), (6, 0), "{depth:?}");
}

// ---------------------------------------------------------------------------------------
// a fake foreign Document API

#[derive(Default)]
struct DocumentsState {
    /// Multihash text → (bytes served, content type).
    documents: HashMap<String, (Vec<u8>, &'static str)>,
    /// Requests per multihash.
    hits: HashMap<String, usize>,
    /// `Authorization` headers received.
    authorizations: Vec<Option<String>>,
    /// Queries of legacy requests.
    legacy_queries: Vec<HashMap<String, String>>,
    /// Statuses to answer before serving (per multihash), with a `Retry-After: 0`.
    failures: HashMap<String, VecDeque<StatusCode>>,
}

#[derive(Clone, Default)]
struct FakeDocuments(Arc<Mutex<DocumentsState>>);

impl FakeDocuments {
    async fn start(&self) -> String {
        let router = Router::new()
            .route("/api/v1/documents/{multihash}", get(download))
            .route("/{multihash}", get(download_legacy))
            .with_state(self.clone());
        serve(router).await
    }

    /// Serves `bytes` under their multihash; returns it.
    fn add(&self, bytes: &[u8], content_type: &'static str) -> Multihash {
        let multihash = Multihash::of(bytes);
        self.add_as(multihash, bytes, content_type);
        multihash
    }

    /// Serves `bytes` under `multihash`, whatever they hash to.
    fn add_as(&self, multihash: Multihash, bytes: &[u8], content_type: &'static str) {
        self.0
            .lock()
            .unwrap()
            .documents
            .insert(multihash.to_string(), (bytes.to_vec(), content_type));
    }

    fn fail_first(&self, multihash: &Multihash, statuses: &[StatusCode]) {
        self.0
            .lock()
            .unwrap()
            .failures
            .insert(multihash.to_string(), statuses.iter().copied().collect());
    }

    fn hits(&self, multihash: &Multihash) -> usize {
        self.0
            .lock()
            .unwrap()
            .hits
            .get(&multihash.to_string())
            .copied()
            .unwrap_or(0)
    }
}

async fn download(
    State(documents): State<FakeDocuments>,
    Path(multihash): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut state = documents.0.lock().unwrap();
    *state.hits.entry(multihash.clone()).or_default() += 1;
    state.authorizations.push(
        headers
            .get(header::AUTHORIZATION)
            .map(|value| value.to_str().unwrap().to_owned()),
    );
    if let Some(status) = state
        .failures
        .get_mut(&multihash)
        .and_then(VecDeque::pop_front)
    {
        return (status, [(header::RETRY_AFTER, "0")]).into_response();
    }
    match state.documents.get(&multihash) {
        Some((bytes, content_type)) => {
            ([(header::CONTENT_TYPE, *content_type)], bytes.clone()).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn download_legacy(
    State(documents): State<FakeDocuments>,
    Path(multihash): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    documents.0.lock().unwrap().legacy_queries.push(query);
    download(State(documents), Path(multihash), headers).await
}

async fn spider(
    node: &Node,
    documents: &FakeDocuments,
    legacy: bool,
    max_depth: u32,
) -> Arc<dyn JobHandler> {
    let base = documents.start().await;
    let source = DocumentSource {
        base_url: base,
        token: Some("spider-token-123".to_owned()),
        legacy,
    };
    let config = SpiderConfig {
        max_depth,
        connect_timeout: Duration::from_secs(5),
        response_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(5),
        ..SpiderConfig::default()
    };
    let objects: Arc<dyn ObjectStore> = node.objects.clone();
    Arc::new(FetchObject::new(node.storage(), objects, sg(), [(au(), source)], config).unwrap())
}

fn retrieval(object: &Multihash) -> PipelineJob {
    PipelineJob::RetrieveObjectV1 {
        reference: "AU:r1".to_owned(),
        sender: "AU".to_owned(),
        object: object.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// spider

#[tokio::test]
async fn the_spider_downloads_verifies_stores_and_grants() {
    let node = Node::new().await;
    let documents = FakeDocuments::default();
    let document = documents.add(b"%PDF-1.7 certificate of origin", "application/pdf");
    let handler = spider(&node, &documents, false, 8).await;

    node.enqueue(retrieval(&document)).await;
    let report = node.drain(OBJECT_RETRIEVAL_QUEUE, handler).await;
    assert_eq!((report.done, report.dead_lettered), (1, 0), "{report:?}");

    let info = node.objects.head(&document).await.unwrap().unwrap();
    assert_eq!(info.size, 30);
    assert_eq!(info.content_type, "application/pdf");
    assert!(node.store.may_read(&document, sg()).await.unwrap());
    let authorizations = documents.0.lock().unwrap().authorizations.clone();
    assert_eq!(authorizations, [Some("Bearer spider-token-123".to_owned())]);
    assert_eq!(
        node.depth(&OBJECT_RETRIEVAL_QUEUE).await,
        QueueDepth::default()
    );
}

#[tokio::test]
async fn an_already_stored_document_is_granted_without_download() {
    let node = Node::new().await;
    let documents = FakeDocuments::default();
    let bytes = b"already here";
    let document = Multihash::of(bytes);
    let body: igl_core::ByteStream = Box::pin(futures::stream::iter([Ok(
        bytes::Bytes::from_static(bytes),
    )]));
    node.objects
        .put(body, "text/plain", Some(&document), 1024)
        .await
        .unwrap();
    let handler = spider(&node, &documents, false, 8).await;

    node.enqueue(retrieval(&document)).await;
    let report = node.drain(OBJECT_RETRIEVAL_QUEUE, handler).await;
    assert_eq!(report.done, 1, "{report:?}");
    assert_eq!(documents.hits(&document), 0);
    assert!(node.store.may_read(&document, sg()).await.unwrap());
}

#[tokio::test]
async fn bytes_not_matching_the_hash_are_refused_and_nothing_is_stored() {
    let node = Node::new().await;
    let documents = FakeDocuments::default();
    let claimed = Multihash::of(b"the genuine certificate");
    documents.add_as(claimed, b"a forged certificate", "application/pdf");
    let handler = spider(&node, &documents, false, 8).await;

    node.enqueue(retrieval(&claimed)).await;
    let report = node.drain(OBJECT_RETRIEVAL_QUEUE, handler).await;
    assert_eq!(report.dead_lettered, 1, "{report:?}");
    assert_eq!(documents.hits(&claimed), 1, "a mismatch is not retried");
    assert!(node.objects.head(&claimed).await.unwrap().is_none());
    assert!(!node.store.may_read(&claimed, sg()).await.unwrap());
    let dead = node.dead_letters(&OBJECT_RETRIEVAL_QUEUE).await;
    let error = dead[0].last_error.as_deref().unwrap();
    assert!(error.contains(&format!("expected {claimed}")), "{error}");
}

#[tokio::test]
async fn links_are_followed_once_each() {
    let node = Node::new().await;
    let documents = FakeDocuments::default();
    // A → [B, C] and B → [C, C]: a diamond, C reachable twice. (A true cycle of
    // content-addressed documents cannot be built: A's hash would depend on itself. What
    // a cycle would do — reach an object that is already stored or queued — is what the
    // diamond and `root_again` below exercise.)
    let c = documents.add(br#"{"links": [], "name": "C"}"#, "application/json");
    let b_bytes = format!(r#"{{"links": [{{"link": "{c}"}}, {{"link": "{c}"}}]}}"#);
    let b = documents.add(b_bytes.as_bytes(), "application/octet-stream");
    let a_bytes = format!(
        r#"{{"name": "A", "links": [{{"link": "{b}"}}, {{"link": "{c}"}}, {{"link": "not-a-hash"}}]}}"#
    );
    let a = documents.add(a_bytes.as_bytes(), "application/json; charset=utf-8");
    let handler = spider(&node, &documents, false, 8).await;

    node.enqueue(retrieval(&a)).await;
    node.drain_until_settled(OBJECT_RETRIEVAL_QUEUE, handler.clone())
        .await;
    for (name, object) in [("A", a), ("B", b), ("C", c)] {
        assert_eq!(documents.hits(&object), 1, "{name} fetched once");
        assert!(
            node.objects.head(&object).await.unwrap().is_some(),
            "{name}"
        );
        assert!(node.store.may_read(&object, sg()).await.unwrap(), "{name}");
    }
    assert!(node.dead_letters(&OBJECT_RETRIEVAL_QUEUE).await.is_empty());

    // The same document referred to again (a second message, a redelivered job): nothing
    // is downloaded again and the links, all stored, queue nothing.
    let root_again = PipelineJob::RetrieveObjectV1 {
        reference: "AU:r2".to_owned(),
        sender: "AU".to_owned(),
        object: a.to_string(),
    };
    node.enqueue(root_again).await;
    let report = node.drain(OBJECT_RETRIEVAL_QUEUE, handler).await;
    assert_eq!(report.done, 1, "{report:?}");
    for object in [a, b, c] {
        assert_eq!(documents.hits(&object), 1);
    }
}

#[tokio::test]
async fn links_beyond_the_maximum_depth_are_not_followed() {
    let node = Node::new().await;
    let documents = FakeDocuments::default();
    let c = documents.add(b"leaf", "text/plain");
    let b = documents.add(
        format!(r#"{{"links": [{{"link": "{c}"}}]}}"#).as_bytes(),
        "application/json",
    );
    let a = documents.add(
        format!(r#"{{"links": [{{"link": "{b}"}}]}}"#).as_bytes(),
        "application/json",
    );
    let handler = spider(&node, &documents, false, 1).await;

    node.enqueue(retrieval(&a)).await;
    node.drain_until_settled(OBJECT_RETRIEVAL_QUEUE, handler)
        .await;
    assert_eq!(
        (documents.hits(&a), documents.hits(&b), documents.hits(&c)),
        (1, 1, 0)
    );
    assert!(node.objects.head(&c).await.unwrap().is_none());
}

#[tokio::test]
async fn unavailable_then_success() {
    let node = Node::new().await;
    let documents = FakeDocuments::default();
    let document = documents.add(b"eventually served", "text/plain");
    documents.fail_first(&document, &[StatusCode::SERVICE_UNAVAILABLE]);
    let handler = spider(&node, &documents, false, 8).await;

    node.enqueue(retrieval(&document)).await;
    node.drain_until_settled(OBJECT_RETRIEVAL_QUEUE, handler)
        .await;
    assert_eq!(documents.hits(&document), 2);
    assert!(node.objects.head(&document).await.unwrap().is_some());
    assert!(node.dead_letters(&OBJECT_RETRIEVAL_QUEUE).await.is_empty());
}

#[tokio::test]
async fn a_document_that_stays_missing_is_dead_lettered_after_the_retries() {
    let node = Node::new().await;
    let documents = FakeDocuments::default();
    let missing = Multihash::of(b"never uploaded");
    let handler = spider(&node, &documents, false, 8).await;

    node.enqueue(retrieval(&missing)).await;
    node.drain_until_settled(OBJECT_RETRIEVAL_QUEUE, handler)
        .await;
    assert_eq!(documents.hits(&missing), 3, "max_attempts");
    let dead = node.dead_letters(&OBJECT_RETRIEVAL_QUEUE).await;
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].last_error.as_deref().unwrap().contains("404"),
        "{dead:?}"
    );
}

#[tokio::test]
async fn the_legacy_path_is_used_when_configured() {
    let node = Node::new().await;
    let documents = FakeDocuments::default();
    let document = documents.add(b"legacy served", "text/plain");
    let handler = spider(&node, &documents, true, 8).await;

    node.enqueue(retrieval(&document)).await;
    node.drain(OBJECT_RETRIEVAL_QUEUE, handler).await;
    assert!(node.objects.head(&document).await.unwrap().is_some());
    let state = documents.0.lock().unwrap();
    assert_eq!(state.legacy_queries.len(), 1);
    assert_eq!(state.legacy_queries[0]["as_jurisdiction"], "SG");
}

#[tokio::test]
async fn an_unconfigured_sender_is_dead_lettered() {
    let node = Node::new().await;
    let documents = FakeDocuments::default();
    let handler = spider(&node, &documents, false, 8).await;
    node.enqueue(PipelineJob::RetrieveObjectV1 {
        reference: "NZ:r1".to_owned(),
        sender: "NZ".to_owned(),
        object: Multihash::of(b"x").to_string(),
    })
    .await;
    let report = node.drain(OBJECT_RETRIEVAL_QUEUE, handler).await;
    assert_eq!(report.dead_lettered, 1);
    let dead = node.dead_letters(&OBJECT_RETRIEVAL_QUEUE).await;
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("jurisdictions.NZ.document_api_url"),
        "{dead:?}"
    );
}

// ---------------------------------------------------------------------------------------
// subscriber

#[tokio::test]
async fn the_subscriber_subscribes_renews_and_survives_a_channel_that_is_down() {
    let node = Node::new().await;
    let healthy = FakeChannel::default();
    healthy.0.lock().unwrap().listing = Some(vec![1, 2]);
    let flaky = FakeChannel::default();
    flaky.0.lock().unwrap().failing_subscriptions = 4;
    let healthy_url = healthy.start().await;
    let flaky_url = flaky.start().await;
    // A third channel whose endpoint does not exist at all.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);

    let api = channels([
        ("healthy", healthy_url),
        ("flaky", flaky_url),
        ("closed", closed_url),
    ]);
    let mut config = SubscriberConfig::new(
        sg(),
        "http://sg.example:8080/",
        ["healthy", "flaky", "closed"].map(str::to_owned),
    );
    config.lease = Duration::from_secs(2);
    config.renew_before = Duration::from_millis(1800);
    config.retry = RetryPolicy {
        max_attempts: u32::MAX,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(40),
    };
    let subscriptions = ChannelSubscriptions::new(api, node.queue(), config);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(subscriptions.run(shutdown.clone()));

    // The healthy channel is subscribed, then renewed, while the others fail.
    eventually("three subscriptions of the healthy channel", || async {
        healthy.subscriptions().len() >= 3
    })
    .await;
    let form = &healthy.subscriptions()[0];
    assert_eq!(form["hub.mode"], "subscribe");
    assert_eq!(
        form["hub.callback"],
        "http://sg.example:8080/channel-message/healthy"
    );
    assert_eq!(form["hub.topic"], "SG");
    assert_eq!(form["hub.lease_seconds"], "2");
    assert!(!form.contains_key("hub.secret"));

    // The flaky channel is retried with backoff until it accepts, then renewed too.
    eventually("the flaky channel to be subscribed and renewed", || async {
        flaky.subscriptions().len() >= 6
    })
    .await;
    assert_eq!(
        flaky.subscriptions()[5]["hub.callback"],
        "http://sg.example:8080/channel-message/flaky"
    );

    // Catch-up queued the listed messages once (later rounds list after the cursor).
    eventually("catch-up jobs", || async {
        node.depth(&CHANNEL_MESSAGE_QUEUE).await.ready == 2
    })
    .await;
    let queries = healthy.0.lock().unwrap().listing_queries.clone();
    assert_eq!(queries[0]["receiver"], "SG");
    assert!(!queries[0].contains_key("after_id"));
    assert!(
        queries.iter().skip(1).all(|query| query["after_id"] == "2"),
        "{queries:?}"
    );
    // The flaky channel has no listing: skipped, no harm.
    assert!(!flaky.0.lock().unwrap().listing_queries.is_empty());

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the subscriber stops on cancellation")
        .unwrap();
    let jobs = node
        .store
        .claim(&CHANNEL_MESSAGE_QUEUE, 10, Duration::from_secs(30))
        .await
        .unwrap();
    let ids: Vec<&Value> = jobs.iter().map(|job| &job.payload["message_id"]).collect();
    assert_eq!(ids, [&json!("1"), &json!("2")]);
    assert_eq!(jobs[0].payload["channel_id"], "healthy");
}
