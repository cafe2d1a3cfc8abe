//! Two jurisdictions talk: AU and SG nodes (every component running, real workers) and a
//! shared-db channel endpoint pair on one SQLite medium, all on port 0.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use igl_channels::endpoint::{EndpointConfig, RunningEndpoint};
use igl_config::{
    ChannelSettings, Component, JurisdictionSettings, RetryPolicyOverride, SecretString,
};
use igl_core::Storage;
use igl_domain::{Jurisdiction, Multihash};
use igl_workers::RetryPolicy;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

use crate::support::{TestNode, json};

/// The token each node gives the other's document spider.
const AU_READS_SG: &str = "spider-token-au-reads-sg-0123456789";
const SG_READS_AU: &str = "spider-token-sg-reads-au-0123456789";

/// How a [`TestNetwork`] is set up.
#[derive(Debug, Clone, Default)]
struct NetworkOptions {
    /// Both nodes and the channel medium on this PostgreSQL database (fresh schemas).
    postgres: Option<String>,
    /// Attempts of the SG endpoint's callback deliveries before they are dead-lettered
    /// (default: the endpoint's own policy).
    sg_callback_attempts: Option<u32>,
}

/// What it takes to start a node of the network again on the same state and port.
struct NodeSetup {
    jurisdiction: &'static str,
    peer: &'static str,
    channel_url: String,
    peer_url: String,
    /// The token this node presents to the peer's Document API.
    token_for_peer: &'static str,
    /// The token the peer's spider presents here.
    token_of_peer: &'static str,
    addr: std::net::SocketAddr,
}

struct TestNetwork {
    au: TestNode,
    sg: Option<TestNode>,
    setups: [NodeSetup; 2],
    /// AU's and SG's endpoints (`None` while stopped) and how to start them again.
    endpoints: [(
        Option<RunningEndpoint>,
        EndpointConfig,
        std::net::SocketAddr,
    ); 2],
    _directory: TempDir,
}

/// Starts an endpoint on `addr` (port 0 for a new one).
async fn serve_endpoint(mut config: EndpointConfig, addr: std::net::SocketAddr) -> RunningEndpoint {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    config.public_url = format!("http://{}", listener.local_addr().unwrap());
    igl_channels::endpoint::start(config, listener, CancellationToken::new())
        .await
        .unwrap()
}

async fn endpoint_config(
    jurisdiction: &str,
    medium: &str,
    medium_schema: Option<String>,
    directory: &TempDir,
) -> EndpointConfig {
    let jurisdiction = Jurisdiction::parse(jurisdiction).unwrap();
    let state: Arc<dyn Storage> = Arc::new(
        igl_store::SqliteStore::open(&directory.path().join(format!("endpoint-{jurisdiction}.db")))
            .await
            .unwrap(),
    );
    let mut config = EndpointConfig::new(jurisdiction, medium, state, "http://unset");
    config.allow_loopback_callbacks = true;
    config.medium_schema = medium_schema;
    config
}

fn bind() -> (std::net::TcpListener, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (listener, url)
}

fn channel(id: &str, url: &str, receiver: &str) -> ChannelSettings {
    ChannelSettings {
        id: id.into(),
        url: url.into(),
        receivers: vec![receiver.into()],
        forward_sender_ref: true,
        ..Default::default()
    }
}

fn source(url: &str, token: &str) -> JurisdictionSettings {
    JurisdictionSettings {
        document_api_url: url.into(),
        token: Some(SecretString::new(token)),
        legacy_document_api: false,
    }
}

/// Fast retries for the queues that wait on a channel, so a channel that comes back is
/// used within a second (the circuit breaker's 5 s cool-down aside).
fn fast_channel_retries() -> RetryPolicyOverride {
    RetryPolicyOverride {
        max_attempts: Some(500),
        base_delay_ms: Some(50),
        max_delay_ms: Some(500),
    }
}

/// A builder of the node of `setup`, serving on `listener` (bound to `setup.addr`).
fn node_builder(
    setup: &NodeSetup,
    listener: std::net::TcpListener,
) -> crate::support::TestNodeBuilder {
    let (peer, channel_url, peer_url, token_for_peer) = (
        setup.peer,
        setup.channel_url.clone(),
        setup.peer_url.clone(),
        setup.token_for_peer,
    );
    TestNode::builder()
        .jurisdiction(setup.jurisdiction)
        .components(Component::all())
        .static_token(setup.token_of_peer, peer)
        .listener(listener)
        .configure(move |settings| {
            settings.channels = vec![channel("au-sg", &channel_url, peer)];
            settings.jurisdictions =
                BTreeMap::from([(peer.to_owned(), source(&peer_url, token_for_peer))]);
            settings.queue.poll_interval_ms = 100;
            for queue in ["route", "channel-poll", "channel-message"] {
                settings
                    .queue
                    .queues
                    .insert(queue.to_owned(), fast_channel_retries());
            }
        })
}

impl TestNetwork {
    /// The embedded shape: SQLite everywhere.
    async fn start() -> Self {
        Self::start_with(NetworkOptions::default()).await
    }

    /// With `postgres`: both nodes and the channel medium on PostgreSQL (fresh schemas).
    async fn start_on(postgres: Option<String>) -> Self {
        Self::start_with(NetworkOptions {
            postgres,
            ..NetworkOptions::default()
        })
        .await
    }

    async fn start_with(options: NetworkOptions) -> Self {
        let directory = tempfile::tempdir().unwrap();
        let (medium, medium_schema) = match &options.postgres {
            Some(url) => (url.clone(), Some(crate::support::fresh_schema())),
            None => (
                format!("sqlite://{}", directory.path().join("channel.db").display()),
                None,
            ),
        };
        let au_config = endpoint_config("AU", &medium, medium_schema.clone(), &directory).await;
        let mut sg_config = endpoint_config("SG", &medium, medium_schema, &directory).await;
        if let Some(attempts) = options.sg_callback_attempts {
            sg_config.delivery.retry = RetryPolicy {
                max_attempts: attempts,
                base_delay: Duration::from_millis(20),
                max_delay: Duration::from_millis(100),
            };
        }
        let any_port: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        let au_endpoint = serve_endpoint(au_config.clone(), any_port).await;
        let sg_endpoint = serve_endpoint(sg_config.clone(), any_port).await;
        let (au_listener, au_url) = bind();
        let (sg_listener, sg_url) = bind();
        let au_setup = NodeSetup {
            jurisdiction: "AU",
            peer: "SG",
            channel_url: au_endpoint.url(),
            peer_url: sg_url.clone(),
            token_for_peer: AU_READS_SG,
            token_of_peer: SG_READS_AU,
            addr: au_listener.local_addr().unwrap(),
        };
        let sg_setup = NodeSetup {
            jurisdiction: "SG",
            peer: "AU",
            channel_url: sg_endpoint.url(),
            peer_url: au_url.clone(),
            token_for_peer: SG_READS_AU,
            token_of_peer: AU_READS_SG,
            addr: sg_listener.local_addr().unwrap(),
        };
        let database = |builder: crate::support::TestNodeBuilder| match &options.postgres {
            Some(_) => builder.database(crate::support::Database::Postgres {
                schema: crate::support::fresh_schema(),
            }),
            None => builder,
        };
        let au = database(node_builder(&au_setup, au_listener)).start().await;
        let sg = database(node_builder(&sg_setup, sg_listener)).start().await;
        let (au_addr, sg_addr) = (au_endpoint.local_addr(), sg_endpoint.local_addr());
        let endpoints = [
            (Some(au_endpoint), au_config, au_addr),
            (Some(sg_endpoint), sg_config, sg_addr),
        ];
        Self {
            au,
            sg: Some(sg),
            setups: [au_setup, sg_setup],
            endpoints,
            _directory: directory,
        }
    }

    /// Stops the channel endpoint of `jurisdiction` (0 AU, 1 SG) gracefully.
    async fn stop_endpoint(&mut self, index: usize) {
        let endpoint = self.endpoints[index].0.take().expect("endpoint running");
        endpoint.stop().await.unwrap();
    }

    /// Starts the stopped endpoint `index` again, on the same address, state and medium.
    async fn restart_endpoint(&mut self, index: usize) {
        let (running, config, addr) = &mut self.endpoints[index];
        assert!(running.is_none(), "endpoint {index} is running");
        *running = Some(serve_endpoint(config.clone(), *addr).await);
    }

    /// The running endpoint `index`.
    fn endpoint(&self, index: usize) -> &RunningEndpoint {
        self.endpoints[index].0.as_ref().expect("endpoint running")
    }

    /// The SG node.
    fn sg(&self) -> &TestNode {
        self.sg.as_ref().expect("SG running")
    }

    /// Stops the SG node gracefully; returns its state for [`TestNetwork::restart_sg`].
    async fn stop_sg(&mut self) -> (TempDir, crate::support::Database) {
        self.sg.take().expect("SG running").stop().await
    }

    /// Starts SG again on `state` and its former address.
    async fn restart_sg(&mut self, (data_dir, database): (TempDir, crate::support::Database)) {
        let listener = std::net::TcpListener::bind(self.setups[1].addr).unwrap();
        let sg = node_builder(&self.setups[1], listener)
            .data_dir(data_dir)
            .database(database)
            .start()
            .await;
        self.sg = Some(sg);
    }
}

async fn eventually<F, Fut, T>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Uploads `bytes` at `from` for `reader` and posts a message referring to them.
async fn send(
    from: &TestNode,
    sender: &str,
    receiver: &str,
    sender_ref: &str,
    bytes: &[u8],
) -> String {
    let upload = from
        .request(
            Method::POST,
            &format!("/api/v1/documents?reader={receiver}"),
        )
        .header("content-type", "application/json")
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), StatusCode::CREATED);
    let multihash = json(upload).await["multihash"].as_str().unwrap().to_owned();
    let message = json!({
        "sender": sender, "receiver": receiver, "subject": format!("{sender}.coo.{sender_ref}"),
        "obj": multihash, "predicate": "UN.CEFACT.Trade.CertificateOfOrigin.created",
        "sender_ref": sender_ref,
    });
    let posted = from.post_json("/api/v1/messages", &message).await;
    assert_eq!(posted.status(), StatusCode::CREATED);
    multihash
}

async fn received_at(node: &TestNode, sender: &str, subject: &str) -> Option<Value> {
    let page = json(node.get(&format!("/api/v1/messages?sender={sender}")).await).await;
    page["messages"]
        .as_array()?
        .iter()
        .find(|m| m["subject"] == subject)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_travels_from_au_to_sg_and_back() {
    exchange(TestNetwork::start().await).await;
}

#[cfg_attr(igl_skip_postgres, ignore = "set IGL_TEST_POSTGRES_URL to run")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_travels_from_au_to_sg_and_back_on_postgres() {
    let url = std::env::var("IGL_TEST_POSTGRES_URL").unwrap();
    exchange(TestNetwork::start_on(Some(url)).await).await;
}

async fn exchange(network: TestNetwork) {
    let (au, sg) = (&network.au, network.sg());
    let document = br#"{"certificate":"CoO-1","exporter":"AU exporter","goods":[{"hs":"0201"}]}"#;
    let multihash = send(au, "AU", "SG", "coo-1", document).await;

    let at_sg = eventually("the message at SG", || {
        received_at(sg, "AU", "AU.coo.coo-1")
    })
    .await;
    assert_eq!(at_sg["status"], "received");
    assert_eq!(
        at_sg["sender_ref"], "coo-1",
        "the sender's reference crossed the channel"
    );
    assert_eq!(at_sg["receiver"], "SG");
    assert_eq!(at_sg["obj"], multihash);

    let bytes = eventually("the document fetched and verified at SG", || async {
        let response = sg.get(&format!("/api/v1/documents/{multihash}")).await;
        (response.status() == StatusCode::OK).then_some(())?;
        Some(response.bytes().await.unwrap())
    })
    .await;
    assert_eq!(&bytes[..], &document[..]);
    assert_eq!(Multihash::of(&bytes).to_string(), multihash);

    let accepted = eventually("AU's message accepted after confirmation", || async {
        let message = json(au.get("/api/v1/messages/AU:coo-1").await).await;
        (message["status"] == "accepted").then_some(message)
    })
    .await;
    assert_eq!(accepted["channel_id"], "au-sg");
    assert_eq!(accepted["channel_status"], "confirmed");
    assert!(accepted["channel_txn_id"].is_string());

    // And back: SG answers AU over the same channel.
    let reply = send(sg, "SG", "AU", "reply-1", b"{\"acknowledged\":\"CoO-1\"}").await;
    eventually("the reply at AU", || {
        received_at(au, "SG", "SG.coo.reply-1")
    })
    .await;
    eventually("the reply's document at AU", || async {
        let response = au.get(&format!("/api/v1/documents/{reply}")).await;
        (response.status() == StatusCode::OK).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_rejects_with_a_reason() {
    let network = TestNetwork::start().await;
    let message = json!({
        "sender": "AU", "receiver": "NZ", "subject": "AU.coo.nz",
        "obj": "https://example.org/doc", "predicate": "UN.CEFACT.Trade.CertificateOfOrigin.created",
        "sender_ref": "to-nz",
    });
    network.au.post_json("/api/v1/messages", &message).await;
    eventually("the message rejected", || async {
        let message = json(network.au.get("/api/v1/messages/AU:to-nz").await).await;
        (message["status"] == "rejected").then_some(())
    })
    .await;
    let events = network.au.storage().read_events(0, 100).await.unwrap();
    let rejection = events
        .iter()
        .find(|e| e.id.starts_with("AU:to-nz/status"))
        .unwrap();
    assert!(
        rejection.payload["reason"].as_str().unwrap().contains("NZ"),
        "{:?}",
        rejection.payload
    );
}

// ---------------------------------------------------------------------------------------
// Failure paths
// ---------------------------------------------------------------------------------------

const AU_ENDPOINT: usize = 0;

/// Posts a message without a document at `from`; returns its subject.
async fn post_plain(from: &TestNode, sender: &str, receiver: &str, sender_ref: &str) -> String {
    let subject = format!("{sender}.coo.{sender_ref}");
    let message = json!({
        "sender": sender, "receiver": receiver, "subject": subject,
        "obj": format!("https://example.org/coo/{sender_ref}"),
        "predicate": "UN.CEFACT.Trade.CertificateOfOrigin.created",
        "sender_ref": sender_ref,
    });
    let posted = from.post_json("/api/v1/messages", &message).await;
    assert_eq!(posted.status(), StatusCode::CREATED);
    subject
}

/// Every message `node` holds from `sender`, by subject.
async fn messages_from(node: &TestNode, sender: &str) -> Vec<Value> {
    let page = json(
        node.get(&format!("/api/v1/messages?sender={sender}&limit=1000"))
            .await,
    )
    .await;
    page["messages"].as_array().unwrap().clone()
}

/// Waits until `node` has a message from `sender` for every subject, then checks that it
/// holds each exactly once.
async fn arrive_once(node: &TestNode, sender: &str, subjects: &[String]) {
    eventually("every message at the receiver", || async {
        let held = messages_from(node, sender).await;
        subjects
            .iter()
            .all(|subject| held.iter().any(|m| &m["subject"] == subject))
            .then_some(())
    })
    .await;
    let held = messages_from(node, sender).await;
    for subject in subjects {
        let copies = held.iter().filter(|m| &m["subject"] == subject).count();
        assert_eq!(copies, 1, "{subject} held {copies} times");
    }
}

/// Waits until AU's message `sender_ref` is accepted; returns it.
async fn accepted_at_au(network: &TestNetwork, sender_ref: &str) -> Value {
    eventually("AU's message accepted", || async {
        let message = json(
            network
                .au
                .get(&format!("/api/v1/messages/AU:{sender_ref}"))
                .await,
        )
        .await;
        (message["status"] == "accepted").then_some(message)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_wait_while_the_channel_endpoint_is_down_then_flow_once() {
    channel_endpoint_down(TestNetwork::start().await).await;
}

#[cfg_attr(igl_skip_postgres, ignore = "set IGL_TEST_POSTGRES_URL to run")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_wait_while_the_channel_endpoint_is_down_then_flow_once_on_postgres() {
    let url = std::env::var("IGL_TEST_POSTGRES_URL").unwrap();
    channel_endpoint_down(TestNetwork::start_on(Some(url)).await).await;
}

async fn channel_endpoint_down(mut network: TestNetwork) {
    network.stop_endpoint(AU_ENDPOINT).await;

    let refs: Vec<String> = (1..=5).map(|i| format!("while-down-{i}")).collect();
    let mut subjects = Vec::new();
    for sender_ref in &refs {
        subjects.push(post_plain(&network.au, "AU", "SG", sender_ref).await);
    }
    // The router tried, failed and keeps them waiting: pending, each with a route job
    // scheduled for a retry, none dead, and the waiting jobs are visible to operators.
    let route = igl_core::QueueName::parse("route").unwrap();
    eventually("every route job waiting for a retry", || async {
        let depth = network.au.storage().depth(&route).await.unwrap();
        (depth.scheduled == refs.len() as u64).then_some(())
    })
    .await;
    for sender_ref in &refs {
        let message = json(
            network
                .au
                .get(&format!("/api/v1/messages/AU:{sender_ref}"))
                .await,
        )
        .await;
        assert_eq!(message["status"], "pending", "{message}");
        assert!(message["channel_txn_id"].is_null(), "{message}");
    }
    let queues = json(network.au.get("/api/v1/admin/queues").await).await;
    let route_depth = queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "route")
        .cloned()
        .unwrap();
    assert_eq!(
        route_depth["scheduled"].as_u64().unwrap()
            + route_depth["ready"].as_u64().unwrap()
            + route_depth["in_flight"].as_u64().unwrap(),
        refs.len() as u64,
        "{queues}"
    );
    let metrics = network.au.metrics().await;
    assert!(
        metrics.contains("igl_queue_depth{queue=\"route\",state=\"scheduled\"}"),
        "waiting route jobs are a metric"
    );
    assert!(
        messages_from(network.sg(), "AU").await.is_empty(),
        "nothing reached SG"
    );

    // The endpoint comes back on the same state and medium: every message flows, once.
    network.restart_endpoint(AU_ENDPOINT).await;
    arrive_once(network.sg(), "AU", &subjects).await;
    let mut channel_ids = Vec::new();
    for sender_ref in &refs {
        let accepted = accepted_at_au(&network, sender_ref).await;
        assert_eq!(accepted["channel_status"], "confirmed");
        channel_ids.push(accepted["channel_txn_id"].as_str().unwrap().to_owned());
    }
    let at_sg = messages_from(network.sg(), "AU").await;
    let kept: Vec<&str> = at_sg
        .iter()
        .filter_map(|m| m["sender_ref"].as_str())
        .collect();
    for sender_ref in &refs {
        assert!(kept.contains(&sender_ref.as_str()), "{kept:?}");
    }
    // The medium holds each message once.
    let listing: Value = reqwest::get(format!(
        "{}/messages?sender=AU",
        network.endpoint(AU_ENDPOINT).url()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let mut on_medium: Vec<String> = listing["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].to_string())
        .collect();
    on_medium.sort();
    channel_ids.sort();
    assert_eq!(on_medium, channel_ids);
    let depth = network.au.storage().depth(&route).await.unwrap();
    assert_eq!(depth.dead, 0, "{depth:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_channel_callbacks_store_one_message() {
    let network = TestNetwork::start().await;
    let subject = post_plain(&network.au, "AU", "SG", "callback-twice").await;
    arrive_once(network.sg(), "AU", std::slice::from_ref(&subject)).await;
    let accepted = accepted_at_au(&network, "callback-twice").await;
    let id: i64 = accepted["channel_txn_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // The channel calls back again (a retried delivery, a second subscription): twice.
    for _ in 0..2 {
        let response = network
            .sg()
            .anonymous(Method::POST, "/channel-message/au-sg")
            .json(&json!({ "id": id }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let queue = igl_core::QueueName::parse("channel-message").unwrap();
    eventually("the repeated notifications handled", || async {
        let depth = network.sg().storage().depth(&queue).await.unwrap();
        (depth.ready + depth.scheduled + depth.in_flight == 0).then_some(depth)
    })
    .await;
    arrive_once(network.sg(), "AU", &[subject]).await;
    let depth = network.sg().storage().depth(&queue).await.unwrap();
    assert_eq!(depth.dead, 0, "{depth:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sg_catches_up_through_the_listing_after_its_downtime() {
    catch_up_after_downtime(None).await;
}

#[cfg_attr(igl_skip_postgres, ignore = "set IGL_TEST_POSTGRES_URL to run")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sg_catches_up_through_the_listing_after_its_downtime_on_postgres() {
    catch_up_after_downtime(Some(std::env::var("IGL_TEST_POSTGRES_URL").unwrap())).await;
}

async fn catch_up_after_downtime(postgres: Option<String>) {
    // SG's endpoint gives up on a callback at the first failure: what SG misses while it
    // is down reaches it only through catch-up.
    let mut network = TestNetwork::start_with(NetworkOptions {
        postgres,
        sg_callback_attempts: Some(1),
    })
    .await;
    let first = post_plain(&network.au, "AU", "SG", "before-downtime").await;
    arrive_once(network.sg(), "AU", std::slice::from_ref(&first)).await;

    let sg_state = network.stop_sg().await;
    let refs: Vec<String> = (1..=3).map(|i| format!("during-downtime-{i}")).collect();
    let mut subjects = vec![first];
    for sender_ref in &refs {
        subjects.push(post_plain(&network.au, "AU", "SG", sender_ref).await);
    }
    for sender_ref in &refs {
        accepted_at_au(&network, sender_ref).await;
    }
    // The SG endpoint's callbacks for them failed and were dead-lettered.
    let sg_endpoint = network.endpoint(1).endpoint().config().clone();
    eventually("the missed callbacks dead-lettered", || async {
        let depth = sg_endpoint
            .state
            .depth(&sg_endpoint.delivery.queue)
            .await
            .unwrap();
        (depth.dead == refs.len() as u64).then_some(())
    })
    .await;

    network.restart_sg(sg_state).await;
    arrive_once(network.sg(), "AU", &subjects).await;
}

/// `igl_node::network::Network` (what `igl demo` and `igl bench e2e` run) on PostgreSQL:
/// a message crosses and is accepted, and stopping drops the schemas it created.
#[cfg_attr(igl_skip_postgres, ignore = "set IGL_TEST_POSTGRES_URL to run")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_network_runs_on_postgres_and_drops_its_schemas() {
    let url = std::env::var("IGL_TEST_POSTGRES_URL").unwrap();
    let directory = tempfile::tempdir().unwrap();
    let network = igl_node::network::Network::start_with(
        directory.path(),
        igl_node::network::NetworkOptions {
            postgres_url: Some(url.clone()),
        },
    )
    .await
    .unwrap();
    assert_eq!(network.backend(), "postgres");
    let client = reqwest::Client::new();
    let posted = client
        .post(format!("{}/api/v1/messages", network.au.url))
        .bearer_auth(&network.au.token)
        .json(&json!({
            "sender": "AU", "receiver": "SG", "subject": "AU.coo.pg-1",
            "obj": "https://example.org/coo/pg-1",
            "predicate": "UN.CEFACT.Trade.CertificateOfOrigin.created", "sender_ref": "pg-1",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), StatusCode::CREATED);
    let get = |base: String, token: String| {
        let client = client.clone();
        async move {
            let response = client
                .get(format!("{base}/api/v1/messages/AU:pg-1"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            (response.status() == StatusCode::OK).then_some(())?;
            Some(response.json::<Value>().await.unwrap())
        }
    };
    let at_sg = eventually("the message at SG", || {
        get(network.sg.url.clone(), network.sg.token.clone())
    })
    .await;
    assert_eq!(at_sg["status"], "received");
    eventually("the message accepted at AU", || {
        let probe = get(network.au.url.clone(), network.au.token.clone());
        async move { probe.await.filter(|m| m["status"] == "accepted") }
    })
    .await;
    // Stopping drops the three schemas (an error here means one could not be dropped).
    network.stop().await.unwrap();
}
