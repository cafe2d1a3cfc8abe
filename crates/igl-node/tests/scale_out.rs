//! The multi-process crash test of the scale-out shape (issue 7): AU and SG each as one
//! OS process per API group and worker (two replicas of the busy workers and of the outbox
//! relay), a pair of `igl channel` processes, on PostgreSQL + RabbitMQ + S3
//! ([`igl_node::cluster`]). AU sends 2,000 Certificates of Origin with their documents to
//! SG while a random worker process is killed with SIGKILL every one to three seconds and
//! started again.
//!
//! Checked at the end, and printed (also to `$CARGO_TARGET_TMPDIR/scale-out-report.txt`,
//! which `.ci/run` shows):
//! - every message AU acknowledged (201) is `accepted` at AU (the channel confirmed it);
//! - SG's store holds each of them exactly once, and nothing else;
//! - SG serves each document with the bytes AU stored (same multihash, same length);
//! - every event in either node's log reached the subscriber (subscribed to `*` at both
//!   hubs, with a secret) at least once, with a valid signature;
//! - after a graceful stop, no job is left in any queue of either node: none ready, none
//!   waiting for a retry, none dead-lettered, none in the SQL outbox.
//!
//! Needs `IGL_TEST_POSTGRES_URL`, `IGL_TEST_AMQP_URL` and `IGL_TEST_S3_*` (ignored, with the
//! reason, otherwise); `IGL_CHAOS_SEED` replays a run's choice of victims and pauses.
//! `IGL_SCALE_OUT_MESSAGES` changes the number of messages (default 2,000);
//! `IGL_SCALE_OUT_KEEP=1` keeps the configuration and process logs after a passing run too
//! (a failing run always keeps them).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use igl_core::{MessageFilter, Storage};
use igl_domain::{Jurisdiction, MessageStatus, Multihash};
use igl_node::cluster::{Cluster, ClusterOptions, S3Target};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const PREDICATE: &str = "UN.CEFACT.Trade.CertificateOfOrigin.created";
/// Concurrent senders (each uploads a document, then posts its message).
const SENDERS: usize = 32;
/// At least this many kills, even when sending ends sooner.
const MIN_KILLS: usize = 8;
/// How long the network gets to finish after the last kill.
const SETTLE: Duration = Duration::from_secs(300);

/// What the subscriber received.
#[derive(Default)]
struct Received {
    /// (hub, event id) delivered with a valid signature and answered 200.
    events: HashSet<(String, String)>,
    /// Deliveries per (hub, event id), refused ones included.
    attempts: HashMap<(String, String), u32>,
    deliveries: u64,
    refused: u64,
    bad_signatures: u64,
}

/// Whether the subscriber refuses the first delivery of this event (one in ten), so that
/// the hub's retry lane (`redeliver`) is exercised too.
fn refuse_first(event: &str) -> bool {
    event.bytes().map(u32::from).sum::<u32>() % 10 == 0
}

#[derive(Clone)]
struct Subscriber {
    secret: Arc<str>,
    received: Arc<Mutex<Received>>,
    verified: Arc<AtomicUsize>,
}

async fn verify_intent(
    State(subscriber): State<Subscriber>,
    Query(query): Query<HashMap<String, String>>,
) -> (StatusCode, String) {
    match (
        query.get("hub.mode").map(String::as_str),
        query.get("hub.challenge"),
    ) {
        (Some("subscribe"), Some(challenge)) => {
            subscriber.verified.fetch_add(1, Ordering::SeqCst);
            (StatusCode::OK, challenge.clone())
        }
        _ => (StatusCode::NOT_FOUND, String::new()),
    }
}

async fn notification(
    State(subscriber): State<Subscriber>,
    Path(hub): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let signature = header("x-hub-signature");
    let event = header(igl_websub::EVENT_ID_HEADER);
    let valid = igl_websub::signature::verify(subscriber.secret.as_bytes(), &body, &signature);
    let mut received = subscriber.received.lock().expect("lock");
    received.deliveries += 1;
    if !valid {
        received.bad_signatures += 1;
        return StatusCode::OK;
    }
    let key = (hub, event);
    let attempts = received.attempts.entry(key.clone()).or_insert(0);
    *attempts += 1;
    if *attempts == 1 && refuse_first(&key.1) {
        received.refused += 1;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    received.events.insert(key);
    StatusCode::OK
}

struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    fn new(client: &reqwest::Client, base: &str, token: &str) -> Self {
        Self {
            client: client.clone(),
            base: base.to_owned(),
            token: token.to_owned(),
        }
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }
}

async fn subscribe_everything(hub: &Api, callback: &str, secret: &str) -> anyhow::Result<()> {
    let form: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("hub.mode", "subscribe")
        .append_pair("hub.topic", "*")
        .append_pair("hub.callback", callback)
        .append_pair("hub.lease_seconds", "86400")
        .append_pair("hub.secret", secret)
        .finish();
    let response = hub
        .post("/api/v1/subscriptions")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await?;
    ensure!(
        response.status() == StatusCode::ACCEPTED,
        "subscribing at {}: {} {}",
        hub.base,
        response.status(),
        response.text().await.unwrap_or_default()
    );
    Ok(())
}

/// Waits until `probe` says done, failing after `timeout` with `what` and what the probe
/// last reported.
async fn until<F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Result<(), String>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe().await? {
            Ok(()) => return Ok(()),
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            bail!(
                "timed out after {} s waiting for {what}: {last}",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every message of `storage` (optionally with `status`), by sender_ref, with how often
/// each occurs.
async fn messages_by_ref(
    storage: &Arc<dyn Storage>,
    status: Option<MessageStatus>,
) -> anyhow::Result<HashMap<String, usize>> {
    let mut filter = MessageFilter {
        status,
        limit: 1000,
        ..MessageFilter::default()
    };
    let mut refs = HashMap::new();
    loop {
        let page = storage.list_messages(&filter).await?;
        for message in &page.messages {
            *refs.entry(message.sender_ref.to_string()).or_insert(0) += 1;
        }
        match page.next {
            Some(next) => filter.after = Some(next),
            None => return Ok(refs),
        }
    }
}

/// Every event id in `storage`'s log.
async fn event_ids(storage: &Arc<dyn Storage>) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    let mut after = 0;
    loop {
        let events = storage.read_events(after, 1000).await?;
        let Some(last) = events.last() else {
            return Ok(ids);
        };
        after = last.seq;
        ids.extend(events.into_iter().map(|event| event.id));
    }
}

/// The document of certificate `n` (unique per run and number).
fn certificate(run: &str, n: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": "CertificateOfOrigin",
        "id": format!("AU-COO-{run}-{n:05}"),
        "exporter": {"name": "Southern Cross Produce", "country": "AU"},
        "importer": {"name": "Lion City Fine Foods", "country": "SG"},
        "goods": [{"description": "Chilled beef, boneless", "hs_code": "0201.30", "kg": 1000 + n}],
        "issued_by": "Australian Chamber of Commerce and Industry",
        "notes": "x".repeat(1024),
    }))
    .expect("json")
}

/// Uploads certificate `n` to AU and posts its message; returns (sender_ref, multihash,
/// size).
async fn send(au: &Api, run: &str, n: usize) -> anyhow::Result<(String, String, usize)> {
    let document = certificate(run, n);
    let response = au
        .post("/api/v1/documents?reader=SG")
        .header("content-type", "application/json")
        .body(document.clone())
        .send()
        .await?;
    ensure!(
        response.status() == StatusCode::CREATED,
        "uploading certificate {n}: {} {}",
        response.status(),
        response.text().await.unwrap_or_default()
    );
    let stored: Value = response.json().await?;
    let multihash = stored["multihash"].as_str().unwrap_or_default().to_owned();
    ensure!(
        multihash == Multihash::of(&document).to_string(),
        "AU stored certificate {n} as {multihash}"
    );
    let sender_ref = format!("mp-{run}-{n}");
    let response = au
        .post("/api/v1/messages")
        .json(&json!({
            "sender": "AU",
            "receiver": "SG",
            "subject": format!("AU.coo.{run}.{n}"),
            "obj": multihash,
            "predicate": PREDICATE,
            "sender_ref": sender_ref,
        }))
        .send()
        .await?;
    ensure!(
        response.status() == StatusCode::CREATED,
        "posting message {n}: {} {}",
        response.status(),
        response.text().await.unwrap_or_default()
    );
    Ok((sender_ref, multihash, document.len()))
}

/// Checks the document behind `multihash` at SG; `Ok(false)` while SG has not fetched it.
async fn document_at_sg(sg: &Api, multihash: &str, size: usize) -> anyhow::Result<bool> {
    let response = sg
        .get(&format!("/api/v1/documents/{multihash}"))
        .send()
        .await?;
    match response.status() {
        StatusCode::NOT_FOUND => Ok(false),
        StatusCode::OK => {
            let bytes = response.bytes().await?;
            let actual = Multihash::of(&bytes).to_string();
            ensure!(
                actual == multihash && bytes.len() == size,
                "SG serves {multihash} as {} bytes hashing to {actual}, AU stored {size} bytes",
                bytes.len()
            );
            Ok(true)
        }
        status => bail!(
            "GET document {multihash} at SG: {status} {}",
            response.text().await.unwrap_or_default()
        ),
    }
}

/// Runs the whole test; returns the report of what was checked.
async fn crash_run(directory: &std::path::Path) -> anyhow::Result<String> {
    let messages: usize = std::env::var("IGL_SCALE_OUT_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let seed: u64 = std::env::var("IGL_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    let postgres = std::env::var("IGL_TEST_POSTGRES_URL").context("IGL_TEST_POSTGRES_URL")?;
    let amqp = std::env::var("IGL_TEST_AMQP_URL").context("IGL_TEST_AMQP_URL")?;
    let s3 = S3Target::from_env("IGL_TEST_S3_").context("IGL_TEST_S3_*")?;
    let mut options = ClusterOptions::new(
        env!("CARGO_BIN_EXE_igl").into(),
        directory.to_path_buf(),
        postgres,
        amqp,
        s3,
    );
    options.log_filter = std::env::var("IGL_SCALE_OUT_LOG").unwrap_or_else(|_| "info".into());
    let started = Instant::now();
    let mut cluster = Cluster::start(options).await?;
    let start_time = started.elapsed();
    let result = exercise(&mut cluster, messages, seed, start_time).await;
    if result.is_err() {
        // Keep the schemas to look at; stop the processes and delete the queues.
        if let Err(error) = cluster.delete_queues().await {
            eprintln!("cleaning up after the failure: {error:#}");
        }
        eprintln!(
            "kept for inspection: PostgreSQL schemas {} and {}",
            cluster.au.schema, cluster.sg.schema
        );
        return result;
    }
    cluster.cleanup().await.context("cleaning up the cluster")?;
    result
}

async fn exercise(
    cluster: &mut Cluster,
    messages: usize,
    seed: u64,
    start_time: Duration,
) -> anyhow::Result<String> {
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let au = Arc::new(Api::new(&client, cluster.au.url(), &cluster.au.token));
    let sg = Arc::new(Api::new(&client, cluster.sg.url(), &cluster.sg.token));

    // The subscriber, at both hubs, for every topic.
    let subscriber = Subscriber {
        secret: format!("scale-out-secret-{}", uuid::Uuid::new_v4().simple()).into(),
        received: Arc::default(),
        verified: Arc::default(),
    };
    let app = Router::new()
        .route("/events/{hub}", get(verify_intent).post(notification))
        .with_state(subscriber.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let callbacks = BTreeMap::from([
        ("AU", format!("http://{}/events/AU", listener.local_addr()?)),
        ("SG", format!("http://{}/events/SG", listener.local_addr()?)),
    ]);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    for (hub, name) in [(&au, "AU"), (&sg, "SG")] {
        subscribe_everything(hub, &callbacks[name], &subscriber.secret).await?;
    }
    until(
        "both hubs to verify the subscriber",
        Duration::from_secs(60),
        || {
            let verified = subscriber.verified.load(Ordering::SeqCst);
            async move {
                Ok(if verified >= 2 {
                    Ok(())
                } else {
                    Err(format!("{verified} of 2 verified"))
                })
            }
        },
    )
    .await?;
    for (hub, name) in [(&au, "AU"), (&sg, "SG")] {
        until(
            &format!("the subscription to be active at {name}"),
            Duration::from_secs(30),
            || async {
                let listed: Value = hub
                    .get("/api/v1/subscriptions?limit=1000")
                    .send()
                    .await?
                    .json()
                    .await?;
                let active = listed["subscriptions"].as_array().is_some_and(|all| {
                    all.iter()
                        .any(|s| s["callback"] == callbacks[name].as_str())
                });
                Ok(if active {
                    Ok(())
                } else {
                    Err("not listed".into())
                })
            },
        )
        .await?;
    }

    // Senders.
    let next = Arc::new(AtomicUsize::new(0));
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..SENDERS {
        let (au, next, run) = (au.clone(), next.clone(), run.clone());
        senders.spawn(async move {
            let mut sent = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= messages {
                    return anyhow::Ok(sent);
                }
                sent.push(send(&au, &run, n).await?);
            }
        });
    }

    // Chaos while the senders run (and until MIN_KILLS kills): SIGKILL a random worker
    // process every 1-3 s and start it again.
    let mut rng = StdRng::seed_from_u64(seed);
    let sending_started = Instant::now();
    let mut kills: Vec<(f64, String)> = Vec::new();
    let mut sent = Vec::new();
    let mut sending_time = None;
    loop {
        let pause = Duration::from_millis(rng.random_range(1000..3000));
        let pause_end = tokio::time::Instant::now() + pause;
        // Collect senders that finished during the pause.
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(pause_end) => break,
                joined = senders.join_next(), if !senders.is_empty() => {
                    let batch = joined.context("no sender")?.context("a sender panicked")??;
                    sent.extend(batch);
                    if senders.is_empty() {
                        sending_time = Some(sending_started.elapsed());
                    }
                }
            }
        }
        cluster.check_running()?;
        if senders.is_empty() && kills.len() >= MIN_KILLS {
            break;
        }
        let workers = cluster.workers();
        let (victim, _) = workers[rng.random_range(0..workers.len())];
        let name = cluster.kill_and_restart(victim)?;
        kills.push((sending_started.elapsed().as_secs_f64(), name));
    }
    let sending_time = sending_time.unwrap_or_default();
    ensure!(sent.len() == messages, "{} of {messages} sent", sent.len());
    let chaos_end = Instant::now();

    // Convergence: AU accepted all, SG holds all, documents at SG, every event delivered.
    let expected: HashSet<String> = sent
        .iter()
        .map(|(sender_ref, _, _)| sender_ref.clone())
        .collect();
    let au_storage = cluster.au.storage.clone();
    let sg_storage = cluster.sg.storage.clone();
    until("every message accepted at AU", SETTLE, || async {
        let accepted = messages_by_ref(&au_storage, Some(MessageStatus::Accepted)).await?;
        let missing = expected
            .iter()
            .filter(|r| !accepted.contains_key(*r))
            .count();
        Ok(if missing == 0 {
            Ok(())
        } else {
            Err(format!("{missing} not accepted yet"))
        })
    })
    .await?;
    let au_done = chaos_end.elapsed();
    until("every message stored at SG", SETTLE, || async {
        let at_sg = messages_by_ref(&sg_storage, None).await?;
        let missing = expected.iter().filter(|r| !at_sg.contains_key(*r)).count();
        Ok(if missing == 0 {
            Ok(())
        } else {
            Err(format!("{missing} not at SG yet"))
        })
    })
    .await?;
    let unverified: Arc<Mutex<Vec<(String, usize)>>> = Arc::new(Mutex::new(
        sent.iter()
            .map(|(_, multihash, size)| (multihash.clone(), *size))
            .collect(),
    ));
    let documents = sent.len();
    until("every document fetched by SG", SETTLE, || {
        let (sg, unverified) = (sg.clone(), unverified.clone());
        async move {
            let pending = std::mem::take(&mut *unverified.lock().expect("lock"));
            let mut still = Vec::new();
            for chunk in pending.chunks(32) {
                let checks = chunk
                    .iter()
                    .map(|(multihash, size)| document_at_sg(&sg, multihash, *size));
                let results = futures::future::join_all(checks).await;
                for ((multihash, size), result) in chunk.iter().zip(results) {
                    if !result? {
                        still.push((multihash.clone(), *size));
                    }
                }
            }
            let left = still.len();
            *unverified.lock().expect("lock") = still;
            Ok(if left == 0 {
                Ok(())
            } else {
                Err(format!("{left} documents not at SG yet"))
            })
        }
    })
    .await?;
    let mut event_counts = BTreeMap::new();
    for (name, storage) in [("AU", &au_storage), ("SG", &sg_storage)] {
        let ids = event_ids(storage).await?;
        until(
            &format!("every event of {name} delivered"),
            SETTLE,
            || async {
                let received = subscriber.received.lock().expect("lock");
                let missing: Vec<&String> = ids
                    .iter()
                    .filter(|id| !received.events.contains(&(name.to_owned(), (*id).clone())))
                    .collect();
                Ok(if missing.is_empty() {
                    Ok(())
                } else {
                    let tried: Vec<(&String, u32)> = missing
                        .iter()
                        .take(8)
                        .map(|id| {
                            let key = (name.to_owned(), (*id).clone());
                            (*id, received.attempts.get(&key).copied().unwrap_or(0))
                        })
                        .collect();
                    Err(format!(
                        "{} of {} not delivered yet; e.g. (event, deliveries received): {tried:?}; {} bad signatures so far",
                        missing.len(),
                        ids.len(),
                        received.bad_signatures
                    ))
                })
            },
        )
        .await?;
        event_counts.insert(name, ids.len());
    }
    let settled = chaos_end.elapsed();

    // Exactly once at SG, and nothing else there.
    let at_sg = messages_by_ref(&sg_storage, None).await?;
    let duplicates: Vec<_> = at_sg.iter().filter(|(_, count)| **count > 1).collect();
    ensure!(duplicates.is_empty(), "duplicates at SG: {duplicates:?}");
    let unexpected: Vec<_> = at_sg.keys().filter(|r| !expected.contains(*r)).collect();
    ensure!(
        unexpected.is_empty(),
        "unexpected messages at SG: {unexpected:?}"
    );
    let au_sender = Jurisdiction::parse("AU")?;
    let from_au = sg_storage
        .list_messages(&MessageFilter {
            sender: Some(au_sender),
            limit: 1,
            ..MessageFilter::default()
        })
        .await?;
    ensure!(!from_au.messages.is_empty(), "SG lists nothing from AU");

    // Nothing left to do once every process stopped (nothing is leased any more).
    let cpu_before_stop = cluster.cpu_by_group();
    cluster.stop_processes().await?;
    let unfinished = cluster.unfinished_jobs().await?;
    ensure!(unfinished.is_empty(), "unfinished jobs: {unfinished:?}");
    let (deliveries, refused, bad_signatures) = {
        let received = subscriber.received.lock().expect("lock");
        (
            received.deliveries,
            received.refused,
            received.bad_signatures,
        )
    };
    ensure!(
        refused > 0,
        "the subscriber refused no delivery: the retry lane went untested"
    );
    ensure!(
        bad_signatures == 0,
        "{bad_signatures} deliveries had a bad signature"
    );
    server.abort();

    let mut text = String::new();
    let processes = cluster.process_names();
    writeln!(
        text,
        "scale-out crash test: {} processes ({}), seed {seed} (IGL_CHAOS_SEED)",
        processes.len(),
        processes.join(" ")
    )?;
    writeln!(
        text,
        "  cluster started in {:.1} s",
        start_time.as_secs_f64()
    )?;
    writeln!(
        text,
        "  messages acknowledged by AU (201): {} in {:.1} s ({:.0}/s, each with a {}-byte document)",
        sent.len(),
        sending_time.as_secs_f64(),
        sent.len() as f64 / sending_time.as_secs_f64().max(0.001),
        sent.first().map_or(0, |s| s.2)
    )?;
    writeln!(
        text,
        "  kills survived: {} (SIGKILL + restart); by process: {:?}",
        kills.len(),
        cluster.restarts()
    )?;
    writeln!(
        text,
        "  accepted at AU: {} of {} (last {:.1} s after the last kill)",
        expected.len(),
        sent.len(),
        au_done.as_secs_f64()
    )?;
    writeln!(
        text,
        "  stored at SG: {} distinct, 0 duplicates, 0 others",
        at_sg.len()
    )?;
    writeln!(
        text,
        "  documents verified at SG (multihash and length): {documents} of {}",
        sent.len()
    )?;
    writeln!(
        text,
        "  events delivered at least once: AU {} of {}, SG {} of {} ({deliveries} deliveries; {refused} first deliveries refused with 503 and retried; 0 bad signatures)",
        event_counts["AU"], event_counts["AU"], event_counts["SG"], event_counts["SG"],
    )?;
    writeln!(
        text,
        "  jobs unfinished after stop (broker ready/retrying/dead, SQL outbox): 0"
    )?;
    writeln!(
        text,
        "  settled {:.1} s after the last kill",
        settled.as_secs_f64()
    )?;
    writeln!(
        text,
        "  CPU seconds by process group: {cpu_before_stop:.1?}"
    )?;
    Ok(text)
}

#[cfg_attr(
    igl_skip_scale_out,
    ignore = "set IGL_TEST_POSTGRES_URL, IGL_TEST_AMQP_URL and IGL_TEST_S3_* to run"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_arrives_exactly_once_while_workers_are_killed() {
    let directory = tempfile::Builder::new()
        .prefix("igl-scale-out-")
        .tempdir()
        .unwrap();
    match crash_run(directory.path()).await {
        Ok(report) => {
            print!("{report}");
            if std::env::var_os("IGL_SCALE_OUT_KEEP").is_some() {
                println!(
                    "configuration and process logs kept in {}",
                    directory.keep().display()
                );
            }
            let file =
                std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("scale-out-report.txt");
            std::fs::write(&file, &report).unwrap();
        }
        Err(error) => {
            let kept = directory.keep();
            panic!(
                "{error:#}\n(configuration and process logs kept in {})",
                kept.display()
            );
        }
    }
}
