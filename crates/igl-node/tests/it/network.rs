//! Two jurisdictions talk: AU and SG nodes (every component running, real workers) and a
//! shared-db channel endpoint pair on one SQLite medium, all on port 0.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use igl_channels::endpoint::{EndpointConfig, RunningEndpoint};
use igl_config::{ChannelSettings, Component, JurisdictionSettings, SecretString};
use igl_core::Storage;
use igl_domain::{Jurisdiction, Multihash};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

use crate::support::{TestNode, json};

/// The token each node gives the other's document spider.
const AU_READS_SG: &str = "spider-token-au-reads-sg-0123456789";
const SG_READS_AU: &str = "spider-token-sg-reads-au-0123456789";

struct TestNetwork {
    au: TestNode,
    sg: TestNode,
    _endpoints: Vec<RunningEndpoint>,
    _directory: TempDir,
}

async fn endpoint(
    jurisdiction: &str,
    medium: &str,
    medium_schema: Option<String>,
    directory: &TempDir,
) -> RunningEndpoint {
    let jurisdiction = Jurisdiction::parse(jurisdiction).unwrap();
    let state: Arc<dyn Storage> = Arc::new(
        igl_store::SqliteStore::open(&directory.path().join(format!("endpoint-{jurisdiction}.db")))
            .await
            .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut config = EndpointConfig::new(jurisdiction, medium, state, url);
    config.allow_loopback_callbacks = true;
    config.medium_schema = medium_schema;
    igl_channels::endpoint::start(config, listener, CancellationToken::new())
        .await
        .unwrap()
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

impl TestNetwork {
    /// The embedded shape: SQLite everywhere.
    async fn start() -> Self {
        Self::start_on(None).await
    }

    /// With `postgres`: both nodes and the channel medium on PostgreSQL (fresh schemas).
    async fn start_on(postgres: Option<String>) -> Self {
        let directory = tempfile::tempdir().unwrap();
        let (medium, medium_schema) = match &postgres {
            Some(url) => (url.clone(), Some(crate::support::fresh_schema())),
            None => (
                format!("sqlite://{}", directory.path().join("channel.db").display()),
                None,
            ),
        };
        let au_endpoint = endpoint("AU", &medium, medium_schema.clone(), &directory).await;
        let sg_endpoint = endpoint("SG", &medium, medium_schema, &directory).await;
        let database = |builder: crate::support::TestNodeBuilder| match &postgres {
            Some(_) => builder.database(crate::support::Database::Postgres {
                schema: crate::support::fresh_schema(),
            }),
            None => builder,
        };
        let (au_listener, au_url) = bind();
        let (sg_listener, sg_url) = bind();
        let (au_channel, sg_channel) = (au_endpoint.url(), sg_endpoint.url());
        let au = database(TestNode::builder())
            .jurisdiction("AU")
            .components(Component::all())
            .static_token(SG_READS_AU, "SG")
            .listener(au_listener)
            .configure(move |settings| {
                settings.channels = vec![channel("au-sg", &au_channel, "SG")];
                settings.jurisdictions =
                    BTreeMap::from([("SG".to_owned(), source(&sg_url, AU_READS_SG))]);
                settings.queue.poll_interval_ms = 100;
            })
            .start()
            .await;
        let sg = database(TestNode::builder())
            .jurisdiction("SG")
            .components(Component::all())
            .static_token(AU_READS_SG, "AU")
            .listener(sg_listener)
            .configure(move |settings| {
                settings.channels = vec![channel("au-sg", &sg_channel, "AU")];
                settings.jurisdictions =
                    BTreeMap::from([("AU".to_owned(), source(&au_url, SG_READS_AU))]);
                settings.queue.poll_interval_ms = 100;
            })
            .start()
            .await;
        Self {
            au,
            sg,
            _endpoints: vec![au_endpoint, sg_endpoint],
            _directory: directory,
        }
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
    let (au, sg) = (&network.au, &network.sg);
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
