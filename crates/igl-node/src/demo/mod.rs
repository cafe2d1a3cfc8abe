//! `igl demo`: two jurisdictions in one process, a Certificate of Origin from AU to SG, every
//! step of its journey observed and verified.
//!
//! The demo starts [`igl_node::network::Network`] (AU and SG nodes with every component and
//! a shared-db channel endpoint pair on embedded SQLite), a local subscriber (an HTTP server
//! in this process) subscribed with a secret at SG's WebSub hub, then for each certificate:
//! uploads the document to AU's Document API with SG as reader, posts a message whose `obj`
//! is the document's multihash, and watches the public HTTP APIs of both nodes (polling, as
//! any client would) until every step is seen:
//!
//! 1. document stored at AU (201, multihash equal to the one computed locally);
//! 2. message stored at AU (201, `pending`);
//! 3. routed to the channel (AU's message has a `channel_txn_id`);
//! 4. received at SG (SG's Message API has `AU:<sender_ref>`);
//! 5. document fetched and verified at SG (SG serves the document, its bytes hash to the
//!    same multihash and have the same length);
//! 6. notification delivered (SG's hub POSTed the message to the subscriber with a valid
//!    `X-Hub-Signature: sha256=…` HMAC of the subscriber's secret);
//! 7. confirmed (AU's message `accepted`, `channel_status` `confirmed`).
//!
//! Any failure (a rejected message, a wrong hash, an invalid signature, an API error) or a
//! step not seen before the deadline ends the demo with an error naming what is missing.

mod coo;

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use clap::Args;
use igl_domain::Multihash;
use igl_node::network::{Network, NetworkNode};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

/// Arguments of `igl demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Certificates of Origin to send from AU to SG (the first is traced step by step).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub messages: u64,
    /// Directory for the nodes' state, kept after the run (default: a temporary directory
    /// removed at exit). Must be new, empty, or left by an earlier demo run, whose state is
    /// replaced.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Leave both nodes running after the demo and print `curl` commands to try them; stop
    /// with Ctrl-C.
    #[arg(long)]
    pub keep: bool,
    /// Give up after this many seconds (default: 60 plus 0.1 per certificate).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Certificates in flight at once when sending many.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub concurrency: u64,
}

/// The predicate of the demo's messages, and the topic the subscriber follows at SG.
const PREDICATE: &str = "UN.CEFACT.Trade.CertificateOfOrigin.created";

/// How long a change may take between its timestamp and its commit: once a second, listings
/// re-read this much before the newest change they saw, so a late commit is not missed.
const LISTING_OVERLAP: Duration = Duration::from_secs(3);

/// The steps of one certificate's journey, in the order they usually happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    DocumentStored,
    MessageStored,
    Routed,
    ReceivedAtSg,
    DocumentVerified,
    Notified,
    Accepted,
}

impl Step {
    const ALL: [Step; 7] = [
        Step::DocumentStored,
        Step::MessageStored,
        Step::Routed,
        Step::ReceivedAtSg,
        Step::DocumentVerified,
        Step::Notified,
        Step::Accepted,
    ];

    fn label(self) -> &'static str {
        match self {
            Step::DocumentStored => "document stored at AU",
            Step::MessageStored => "message stored at AU",
            Step::Routed => "routed to the channel",
            Step::ReceivedAtSg => "received at SG",
            Step::DocumentVerified => "document fetched and verified at SG",
            Step::Notified => "notification delivered, signature valid",
            Step::Accepted => "confirmed by the channel, AU accepted",
        }
    }
}

/// One certificate on its way.
#[derive(Debug)]
struct Tracked {
    sender_ref: String,
    multihash: String,
    size: usize,
    started: Instant,
    done: [Option<Duration>; 7],
    last_direct_check: Instant,
}

impl Tracked {
    fn reference(&self) -> String {
        format!("AU:{}", self.sender_ref)
    }

    fn complete(&self) -> bool {
        self.done.iter().all(Option::is_some)
    }
}

/// Everything the demo has observed.
#[derive(Debug, Default)]
struct Tracker {
    messages: Vec<Tracked>,
    by_sender_ref: HashMap<String, usize>,
    complete: usize,
    /// The first failure; ends the demo.
    failure: Option<String>,
    /// The certificate whose steps are printed as they happen.
    traced: Option<usize>,
    /// Certificates received at SG whose document is not verified yet.
    documents_to_verify: VecDeque<usize>,
    /// In `--keep` mode, notifications for messages the demo did not send are printed.
    print_other_notifications: bool,
    /// When a step was last recorded.
    last_progress: Option<Instant>,
}

impl Tracker {
    fn add(&mut self, sender_ref: String, multihash: String, size: usize) -> usize {
        let index = self.messages.len();
        self.by_sender_ref.insert(sender_ref.clone(), index);
        let now = Instant::now();
        self.messages.push(Tracked {
            sender_ref,
            multihash,
            size,
            started: now,
            done: [None; 7],
            last_direct_check: now,
        });
        index
    }

    /// Records `step` of certificate `index` (the first observation counts); prints it when
    /// the certificate is traced.
    fn record(&mut self, index: usize, step: Step, detail: impl FnOnce(&Tracked) -> String) {
        let message = &mut self.messages[index];
        let slot = &mut message.done[step as usize];
        if slot.is_some() {
            return;
        }
        let elapsed = message.started.elapsed();
        *slot = Some(elapsed);
        self.last_progress = Some(Instant::now());
        if self.traced == Some(index) {
            println!(
                "  {:>9}  ✓ {:<41} {}",
                format!("{:.1} ms", elapsed.as_secs_f64() * 1000.0),
                step.label(),
                detail(message)
            );
        }
        if step == Step::ReceivedAtSg {
            self.documents_to_verify.push_back(index);
        }
        if message.complete() {
            self.complete += 1;
        }
    }

    fn fail(&mut self, why: String) {
        if self.failure.is_none() {
            self.failure = Some(why);
        }
    }

    /// What is still missing, for the timeout explanation.
    fn missing(&self) -> String {
        let mut text = String::new();
        for step in Step::ALL {
            let pending: Vec<&Tracked> = self
                .messages
                .iter()
                .filter(|m| m.done[step as usize].is_none())
                .collect();
            if let Some(first) = pending.first() {
                let _ = write!(
                    text,
                    "\n  {:<41} not seen for {} (e.g. {})",
                    step.label(),
                    pending.len(),
                    first.reference()
                );
            }
        }
        text
    }
}

type Shared = Arc<Mutex<Tracker>>;

fn lock(tracker: &Shared) -> MutexGuard<'_, Tracker> {
    tracker
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A node's HTTP API as a client sees it.
#[derive(Debug, Clone)]
struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    fn new(client: &reqwest::Client, node: &NetworkNode) -> Self {
        Self {
            client: client.clone(),
            base: node.url.clone(),
            token: node.token.clone(),
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

/// Answers with `expected` or explains the unexpected answer.
async fn expect_status(
    response: Result<reqwest::Response, reqwest::Error>,
    expected: StatusCode,
    what: &str,
) -> anyhow::Result<reqwest::Response> {
    let response = response.with_context(|| format!("{what}: request failed"))?;
    if response.status() != expected {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        bail!("{what}: expected {expected}, got {status}: {body}");
    }
    Ok(response)
}

/// The fields of a listed or fetched message the demo looks at.
#[derive(Debug, Deserialize)]
struct ListedMessage {
    sender_ref: String,
    status: String,
    obj: String,
    channel_id: Option<String>,
    channel_txn_id: Option<String>,
    channel_status: Option<String>,
    updated_at: String,
}

#[derive(Debug, Deserialize)]
struct MessagePage {
    messages: Vec<ListedMessage>,
    next_cursor: Option<String>,
}

/// Follows one node's changes to messages from AU through its listing: from the newest
/// change seen, and once a second from [`LISTING_OVERLAP`] before it.
#[derive(Debug)]
struct ListingWatch {
    api: Api,
    newest: Option<OffsetDateTime>,
    last_rescan: Instant,
}

impl ListingWatch {
    fn new(api: Api) -> Self {
        Self {
            api,
            newest: None,
            last_rescan: Instant::now(),
        }
    }
}

impl ListingWatch {
    async fn changes(&mut self) -> anyhow::Result<Vec<ListedMessage>> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        let since = if self.last_rescan.elapsed() >= Duration::from_secs(1) {
            self.last_rescan = Instant::now();
            self.newest.map(|newest| newest - LISTING_OVERLAP)
        } else {
            self.newest
        };
        loop {
            let mut query: Vec<(&str, String)> =
                vec![("sender", "AU".into()), ("limit", "1000".into())];
            if let Some(since) = since {
                query.push(("updated_since", since.format(&Rfc3339)?));
            }
            if let Some(cursor) = &cursor {
                query.push(("cursor", cursor.clone()));
            }
            let response = expect_status(
                self.api.get("/api/v1/messages").query(&query).send().await,
                StatusCode::OK,
                &format!("listing messages at {}", self.api.base),
            )
            .await?;
            let page: MessagePage = response.json().await.context("a message listing")?;
            all.extend(page.messages);
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        if let Some(newest) = all
            .iter()
            .filter_map(|m| OffsetDateTime::parse(&m.updated_at, &Rfc3339).ok())
            .max()
        {
            self.newest = Some(self.newest.map_or(newest, |old| old.max(newest)));
        }
        Ok(all)
    }
}

/// Records what AU's view of a message shows.
fn observe_at_au(tracker: &mut Tracker, message: &ListedMessage) {
    let Some(&index) = tracker.by_sender_ref.get(&message.sender_ref) else {
        return;
    };
    if message.channel_txn_id.is_some() {
        tracker.record(index, Step::Routed, |_| {
            format!(
                "channel {}, channel txn {}",
                message.channel_id.as_deref().unwrap_or("?"),
                message.channel_txn_id.as_deref().unwrap_or("?")
            )
        });
    }
    match message.status.as_str() {
        "accepted" => tracker.record(index, Step::Accepted, |_| {
            format!(
                "status accepted, channel_status {}",
                message.channel_status.as_deref().unwrap_or("?")
            )
        }),
        "rejected" => {
            let reference = tracker.messages[index].reference();
            tracker.fail(format!(
                "AU rejected {reference} (channel_status {:?}); the node's log on stderr has the reason",
                message.channel_status
            ));
        }
        _ => {}
    }
}

/// Records what SG's view of a message shows.
fn observe_at_sg(tracker: &mut Tracker, message: &ListedMessage) {
    let Some(&index) = tracker.by_sender_ref.get(&message.sender_ref) else {
        return;
    };
    if message.obj != tracker.messages[index].multihash {
        let reference = tracker.messages[index].reference();
        tracker.fail(format!(
            "SG received {reference} with obj {} instead of {}",
            message.obj, tracker.messages[index].multihash
        ));
        return;
    }
    tracker.record(index, Step::ReceivedAtSg, |_| {
        format!("AU:{} status {}", message.sender_ref, message.status)
    });
}

/// Fetches the document of certificate `index` from SG and checks it.
async fn verify_document(sg: &Api, tracker: &Shared, index: usize) -> anyhow::Result<bool> {
    let (multihash, size) = {
        let tracker = lock(tracker);
        let message = &tracker.messages[index];
        (message.multihash.clone(), message.size)
    };
    let response = sg
        .get(&format!("/api/v1/documents/{multihash}"))
        .send()
        .await
        .context("fetching a document from SG")?;
    match response.status() {
        // Not fetched from AU yet.
        StatusCode::NOT_FOUND => Ok(false),
        StatusCode::OK => {
            let bytes = response
                .bytes()
                .await
                .context("reading a document from SG")?;
            let actual = Multihash::of(&bytes).to_string();
            let mut tracker = lock(tracker);
            if actual != multihash || bytes.len() != size {
                let reference = tracker.messages[index].reference();
                tracker.fail(format!(
                    "SG serves the document of {reference} with {} bytes hashing to {actual}, \
                     but AU stored {size} bytes hashing to {multihash}",
                    bytes.len()
                ));
            } else {
                tracker.record(index, Step::DocumentVerified, |_| {
                    format!(
                        "{} bytes, sha2-256 multihash identical to AU's",
                        bytes.len()
                    )
                });
            }
            Ok(true)
        }
        status => {
            let body = response.text().await.unwrap_or_default();
            bail!(
                "fetching document {multihash} from SG: expected 200 or 404, got {status}: {body}"
            )
        }
    }
}

/// Watches both nodes until cancelled: listings of AU and SG, documents at SG, and a direct
/// look at certificates that made no progress for a while.
async fn observe(
    au: Api,
    sg: Api,
    tracker: Shared,
    interval: Arc<Mutex<Duration>>,
    stop: CancellationToken,
) {
    let mut au_watch = ListingWatch::new(au.clone());
    let mut sg_watch = ListingWatch::new(sg.clone());
    while !stop.is_cancelled() {
        if let Err(error) = observe_once(&au, &sg, &mut au_watch, &mut sg_watch, &tracker).await {
            lock(&tracker).fail(format!("{error:#}"));
        }
        let pause = *interval.lock().unwrap_or_else(|p| p.into_inner());
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

async fn observe_once(
    au: &Api,
    sg: &Api,
    au_watch: &mut ListingWatch,
    sg_watch: &mut ListingWatch,
    tracker: &Shared,
) -> anyhow::Result<()> {
    let (at_au, at_sg) = tokio::try_join!(au_watch.changes(), sg_watch.changes())?;
    {
        let mut tracker = lock(tracker);
        for message in &at_au {
            observe_at_au(&mut tracker, message);
        }
        for message in &at_sg {
            observe_at_sg(&mut tracker, message);
        }
    }

    // Documents of certificates received at SG, a bounded number at a time.
    let batch: Vec<usize> = {
        let mut tracker = lock(tracker);
        let take = tracker.documents_to_verify.len().min(32);
        tracker.documents_to_verify.drain(..take).collect()
    };
    let mut checks = tokio::task::JoinSet::new();
    for index in batch {
        let (sg, tracker) = (sg.clone(), tracker.clone());
        checks.spawn(async move { (index, verify_document(&sg, &tracker, index).await) });
    }
    while let Some(joined) = checks.join_next().await {
        let (index, verified) = joined.context("a document check panicked")?;
        if !verified? {
            lock(tracker).documents_to_verify.push_back(index);
        }
    }

    // When nothing progressed for 3 s, a direct look at certificates not checked for 5 s,
    // in case a listing missed a change.
    let stale: Vec<usize> = {
        let mut tracker = lock(tracker);
        let now = Instant::now();
        if tracker
            .last_progress
            .is_none_or(|at| now.duration_since(at) < Duration::from_secs(3))
        {
            return Ok(());
        }
        let stale: Vec<usize> = tracker
            .messages
            .iter()
            .enumerate()
            .filter(|(_, m)| {
                !m.complete() && now.duration_since(m.last_direct_check) > Duration::from_secs(5)
            })
            .map(|(index, _)| index)
            .take(16)
            .collect();
        for index in &stale {
            tracker.messages[*index].last_direct_check = now;
        }
        stale
    };
    for index in stale {
        let reference = lock(tracker).messages[index].reference();
        for (api, at_au) in [(au, true), (sg, false)] {
            let response = api
                .get(&format!("/api/v1/messages/{reference}"))
                .send()
                .await
                .context("fetching a message")?;
            if response.status() == StatusCode::OK {
                let message: ListedMessage = response.json().await.context("a message")?;
                let mut tracker = lock(tracker);
                if at_au {
                    observe_at_au(&mut tracker, &message);
                } else {
                    observe_at_sg(&mut tracker, &message);
                }
            }
        }
    }
    Ok(())
}

/// State of the demo subscriber.
#[derive(Clone)]
struct Subscriber {
    tracker: Shared,
    secret: Arc<str>,
    verified: Arc<AtomicBool>,
}

/// WebSub intent verification: echo the challenge for our topic.
async fn verify_intent(
    State(subscriber): State<Subscriber>,
    Query(query): Query<HashMap<String, String>>,
) -> (StatusCode, String) {
    let mode = query.get("hub.mode").map(String::as_str);
    let topic = query.get("hub.topic").map(String::as_str);
    match (mode, topic, query.get("hub.challenge")) {
        (Some("subscribe"), Some(PREDICATE), Some(challenge)) => {
            subscriber.verified.store(true, Ordering::SeqCst);
            (StatusCode::OK, challenge.clone())
        }
        _ => (StatusCode::NOT_FOUND, String::new()),
    }
}

/// A delivery from SG's hub: check the signature, then record the notification.
async fn notification(
    State(subscriber): State<Subscriber>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let signature = headers
        .get("x-hub-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let valid = igl_websub::signature::verify(subscriber.secret.as_bytes(), &body, &signature);
    let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let sender_ref = payload["sender_ref"].as_str().unwrap_or_default();
    let mut tracker = lock(&subscriber.tracker);
    match tracker.by_sender_ref.get(sender_ref).copied() {
        Some(index) if valid => tracker.record(index, Step::Notified, |_| {
            format!("X-Hub-Signature {}…", &signature[..signature.len().min(19)])
        }),
        Some(index) => {
            let reference = tracker.messages[index].reference();
            tracker.fail(format!(
                "the notification for {reference} carried an invalid signature {signature:?}"
            ));
        }
        None if tracker.print_other_notifications => println!(
            "notification from SG's hub: {} (X-Hub-Signature {})",
            payload,
            if valid { "valid" } else { "INVALID" }
        ),
        None => {}
    }
    StatusCode::OK
}

/// Waits until `done` holds, the tracker reports a failure, or `deadline` passes (checked
/// first, so a deadline already past fails at once).
async fn wait_for(
    what: &str,
    deadline: Instant,
    timeout: Duration,
    tracker: &Shared,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    loop {
        if let Some(failure) = lock(tracker).failure.clone() {
            bail!("{failure}");
        }
        if Instant::now() >= deadline {
            bail!("timed out after {} s waiting for {what}", timeout.as_secs());
        }
        if done() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Uploads certificate `n` to AU and posts its message; returns its tracker index.
async fn send_certificate(
    au: &Api,
    tracker: &Shared,
    run: &str,
    n: u64,
    issued: &str,
) -> anyhow::Result<usize> {
    let number = coo::certificate_number(run, n);
    let document = coo::certificate_of_origin(&number, n, issued);
    let local = Multihash::of(&document).to_string();
    let sender_ref = format!("demo-{run}-{}", n + 1);
    let index = lock(tracker).add(sender_ref.clone(), local.clone(), document.len());
    let size = document.len();
    let response = expect_status(
        au.post("/api/v1/documents?reader=SG")
            .header("content-type", "application/json")
            .body(document)
            .send()
            .await,
        StatusCode::CREATED,
        &format!("uploading certificate {number} to AU"),
    )
    .await?;
    let stored: Value = response.json().await.context("the upload answer")?;
    let multihash = stored["multihash"].as_str().unwrap_or_default().to_owned();
    if multihash != local {
        bail!("AU stored certificate {number} as {multihash}, but its bytes hash to {local}");
    }
    lock(tracker).record(index, Step::DocumentStored, |_| {
        format!("{size} bytes, multihash {multihash}, readers AU and SG")
    });
    let message = json!({
        "sender": "AU",
        "receiver": "SG",
        "subject": format!("AU.coo.{number}"),
        "obj": multihash,
        "predicate": PREDICATE,
        "sender_ref": sender_ref,
    });
    let response = expect_status(
        au.post("/api/v1/messages").json(&message).send().await,
        StatusCode::CREATED,
        &format!("posting the message of certificate {number} to AU"),
    )
    .await?;
    let posted: Value = response.json().await.context("the message answer")?;
    lock(tracker).record(index, Step::MessageStored, |_| {
        format!(
            "AU:{sender_ref}, status {}",
            posted["status"].as_str().unwrap_or("?")
        )
    });
    Ok(index)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// The closing table: for each step, how many certificates passed it and when (from the
/// start of the certificate's upload).
fn print_summary(tracker: &Tracker, elapsed: Duration) {
    let total = tracker.messages.len();
    println!(
        "\nsummary: {} of {total} certificate{} of origin went from AU to SG with every step verified",
        tracker.complete,
        if total == 1 { "" } else { "s" }
    );
    println!(
        "\n  {:<41} {:>7} {:>10} {:>10} {:>10}",
        "step", "count", "p50 ms", "p95 ms", "p99 ms"
    );
    let row = |label: &str, mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        println!(
            "  {:<41} {:>7} {:>10.1} {:>10.1} {:>10.1}",
            label,
            values.len(),
            percentile(&values, 0.50),
            percentile(&values, 0.95),
            percentile(&values, 0.99)
        );
    };
    for step in Step::ALL {
        row(
            step.label(),
            tracker
                .messages
                .iter()
                .filter_map(|m| m.done[step as usize])
                .map(|d| d.as_secs_f64() * 1000.0)
                .collect(),
        );
    }
    row(
        "all steps",
        tracker
            .messages
            .iter()
            .filter_map(|m| m.done.iter().copied().collect::<Option<Vec<_>>>())
            .filter_map(|d| d.into_iter().max())
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect(),
    );
    let seconds = elapsed.as_secs_f64();
    let notified = tracker
        .messages
        .iter()
        .filter(|m| m.done[Step::Notified as usize].is_some())
        .count();
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    println!(
        "\n  {} uploaded, {} posted, {} verified",
        plural(total, "document"),
        plural(total, "message"),
        plural(notified, "signed notification")
    );
    println!(
        "  throughput: {:.1} certificates/s end to end ({total} in {seconds:.2} s)",
        total as f64 / seconds.max(1e-9)
    );
    println!(
        "  times run from the start of each certificate's upload to when the demo saw the step\n  \
         (it polls the nodes' HTTP APIs, every 20 ms for the first certificate, 100 ms after)"
    );
}

/// A one-line progress display on stderr when it is a terminal, a line every 5 s otherwise.
struct Progress {
    terminal: bool,
    last: Instant,
    started: Instant,
}

impl Progress {
    fn show(&mut self, sent: usize, complete: usize, total: usize, force: bool) {
        let now = Instant::now();
        let every = if self.terminal {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(5)
        };
        if (!force || !self.terminal) && now.duration_since(self.last) < every {
            return;
        }
        self.last = now;
        let elapsed = now.duration_since(self.started).as_secs_f64();
        let rate = complete as f64 / elapsed.max(1e-9);
        if self.terminal {
            let width = 30;
            let filled = complete * width / total.max(1);
            eprint!(
                "\r  [{}{}] {complete}/{total} complete, {sent} sent, {rate:.0}/s, {elapsed:.0} s ",
                "#".repeat(filled),
                "-".repeat(width - filled)
            );
            if complete == total {
                eprintln!();
            }
        } else {
            eprintln!("  {complete}/{total} complete, {sent} sent, {rate:.0}/s, {elapsed:.0} s");
        }
    }
}

/// Runs the demo; with `--keep`, until SIGINT or SIGTERM.
pub async fn run_demo(args: DemoArgs) -> anyhow::Result<()> {
    let total = usize::try_from(args.messages).context("--messages is too large")?;
    let timeout = Duration::from_secs(args.timeout.unwrap_or(60 + args.messages.div_ceil(10)));
    let temporary = match &args.data_dir {
        Some(dir) => {
            prepare_data_dir(dir)?;
            None
        }
        None => Some(
            tempfile::Builder::new()
                .prefix("igl-demo-")
                .tempdir()
                .context("cannot create a temporary directory")?,
        ),
    };
    let directory: PathBuf = match (&temporary, &args.data_dir) {
        (Some(temporary), _) => temporary.path().to_path_buf(),
        (None, Some(dir)) => dir.clone(),
        (None, None) => unreachable!("either a temporary or the given directory"),
    };
    let directory = directory.as_path();

    println!("IGL demo: a Certificate of Origin from Australia (AU) to Singapore (SG)\n");
    let network = Network::start(directory)
        .await
        .context("cannot start the demo network")?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let (au, sg) = (
        Api::new(&client, &network.au),
        Api::new(&client, &network.sg),
    );
    let result = demo(&args, &network, &au, &sg, directory, total, timeout).await;
    drop((au, sg, client));
    println!("\nstopping the nodes");
    let stopping = Instant::now();
    network
        .stop()
        .await
        .context("the demo network stopped badly")?;
    tracing::debug!(
        elapsed_ms = stopping.elapsed().as_millis() as u64,
        "demo network stopped"
    );
    if let Some(temporary) = temporary {
        // Thousands of documents can take a while to delete on a busy disk.
        println!(
            "removing the demo's temporary state in {}",
            directory.display()
        );
        temporary
            .close()
            .context("cannot remove the demo's temporary directory")?;
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn demo(
    args: &DemoArgs,
    network: &Network,
    au: &Api,
    sg: &Api,
    directory: &Path,
    total: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let run = uuid::Uuid::new_v4().simple().to_string()[..6].to_owned();
    let tracker: Shared = Arc::default();

    // The demo subscriber: intent verification and signed notifications.
    let subscriber = Subscriber {
        tracker: tracker.clone(),
        secret: format!("demo-secret-{}", uuid::Uuid::new_v4().simple()).into(),
        verified: Arc::default(),
    };
    let app = Router::new()
        .route("/notifications", get(verify_intent).post(notification))
        .with_state(subscriber.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let callback = format!("http://{}/notifications", listener.local_addr()?);
    let server_stop = CancellationToken::new();
    let server = {
        let stop = server_stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        })
    };

    println!(
        "  AU node     {}  (message, document, subscription and admin APIs)",
        au.base
    );
    println!("  SG node     {}", sg.base);
    println!("  channel     au-sg: shared-db channel endpoints on one SQLite medium");
    println!("  state       {}", directory.display());
    println!("  subscriber  {callback}  (follows {PREDICATE} at SG)\n");

    let result = async {
        let started = Instant::now();
        let deadline = started + timeout;

        // Subscribe at SG's hub with a secret and wait for the subscription to be active.
        let form: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("hub.mode", "subscribe")
            .append_pair("hub.topic", PREDICATE)
            .append_pair("hub.callback", &callback)
            .append_pair("hub.lease_seconds", "86400")
            .append_pair("hub.secret", &subscriber.secret)
            .finish();
        expect_status(
            sg.post("/api/v1/subscriptions")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form)
                .send()
                .await,
            StatusCode::ACCEPTED,
            "subscribing the demo subscriber at SG's hub",
        )
        .await?;
        wait_for(
            "SG's hub to verify the demo subscriber's intent",
            deadline,
            timeout,
            &tracker,
            || subscriber.verified.load(Ordering::SeqCst),
        )
        .await?;
        loop {
            let listed: Value = expect_status(
                sg.get("/api/v1/subscriptions?limit=1000").send().await,
                StatusCode::OK,
                "listing SG's subscriptions",
            )
            .await?
            .json()
            .await?;
            let active = listed["subscriptions"]
                .as_array()
                .is_some_and(|all| all.iter().any(|s| s["callback"] == callback.as_str()));
            if active {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {} s waiting for the subscription to be active at SG",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        println!(
            "  {:>9}  ✓ subscriber verified by SG's hub (challenge echoed), secret set\n",
            format!("{:.1} ms", started.elapsed().as_secs_f64() * 1000.0)
        );

        let interval = Arc::new(Mutex::new(Duration::from_millis(20)));
        let observer_stop = CancellationToken::new();
        let observer = tokio::spawn(observe(
            au.clone(),
            sg.clone(),
            tracker.clone(),
            interval.clone(),
            observer_stop.clone(),
        ));
        let result = async {
            let issued = OffsetDateTime::now_utc()
                .replace_nanosecond(0)?
                .format(&Rfc3339)?;

            // The first certificate, step by step.
            println!(
                "certificate of origin {} (exporter Southern Cross Produce, Geelong → importer Lion City Fine Foods, Singapore)",
                coo::certificate_number(&run, 0)
            );
            lock(&tracker).traced = Some(0);
            let sending_started = Instant::now();
            let first = send_certificate(au, &tracker, &run, 0, &issued).await?;
            wait_for(
                &format!("every step of certificate {}", coo::certificate_number(&run, 0)),
                deadline,
                timeout,
                &tracker,
                || lock(&tracker).messages[first].complete(),
            )
            .await
            .map_err(|error| with_missing(error, &tracker))?;
            lock(&tracker).traced = None;

            // The rest, many at a time.
            if total > 1 {
                *interval.lock().unwrap_or_else(|p| p.into_inner()) = Duration::from_millis(100);
                println!("\nsending {} more certificates, {} at a time", total - 1, args.concurrency);
                let permits = Arc::new(tokio::sync::Semaphore::new(args.concurrency as usize));
                let mut senders = tokio::task::JoinSet::new();
                let mut progress = Progress {
                    terminal: std::io::stderr().is_terminal(),
                    last: Instant::now(),
                    started: Instant::now(),
                };
                let mut next = 1u64;
                let mut sent = 1usize;
                loop {
                    while next < args.messages && permits.available_permits() > 0 {
                        let permit = permits.clone().acquire_owned().await?;
                        let (au, tracker, run, issued) =
                            (au.clone(), tracker.clone(), run.clone(), issued.clone());
                        let n = next;
                        senders.spawn(async move {
                            let result = send_certificate(&au, &tracker, &run, n, &issued).await;
                            drop(permit);
                            result
                        });
                        next += 1;
                    }
                    while let Some(joined) = senders.try_join_next() {
                        joined.context("a sender panicked")??;
                        sent += 1;
                    }
                    let complete = lock(&tracker).complete;
                    progress.show(sent, complete, total, complete == total);
                    if complete == total {
                        break;
                    }
                    if let Some(failure) = lock(&tracker).failure.clone() {
                        bail!("{failure}");
                    }
                    if Instant::now() >= deadline {
                        if progress.terminal {
                            eprintln!();
                        }
                        return Err(with_missing(
                            anyhow::anyhow!(
                                "timed out after {} s with {complete} of {total} certificates through every step (raise --timeout for slow machines)",
                                timeout.as_secs()
                            ),
                            &tracker,
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            print_summary(&lock(&tracker), sending_started.elapsed());
            Ok(())
        }
        .await;
        observer_stop.cancel();
        observer.await.context("the observer panicked")?;
        result
    }
    .await;

    let result = match result {
        Ok(()) if args.keep => {
            lock(&tracker).print_other_notifications = true;
            keep_running(network, directory).await
        }
        other => other,
    };
    server_stop.cancel();
    server.await.context("the subscriber panicked")??;
    result
}

/// Marks a directory as the demo's, so a later run may replace its contents.
const DATA_DIR_MARKER: &str = ".igl-demo";

/// Makes `dir` an empty demo directory: creates it, or empties one a previous demo run left
/// (each run starts fresh: old nodes' subscriptions point at addresses that no longer
/// listen). Refuses a non-empty directory that is not the demo's.
fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    let cannot = || format!("cannot prepare the data directory {}", dir.display());
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).with_context(cannot)?.peekable();
        if entries.peek().is_some() {
            if !dir.join(DATA_DIR_MARKER).exists() {
                bail!(
                    "{} is not empty and was not made by `igl demo`; give an empty or new directory",
                    dir.display()
                );
            }
            for entry in entries {
                let path = entry.with_context(cannot)?.path();
                if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                }
                .with_context(|| format!("cannot remove {}", path.display()))?;
            }
        }
    }
    std::fs::create_dir_all(dir).with_context(cannot)?;
    std::fs::write(
        dir.join(DATA_DIR_MARKER),
        "state of `igl demo`; the next run with this --data-dir replaces it\n",
    )
    .with_context(cannot)
}

/// Adds what is still missing to a timeout error.
fn with_missing(error: anyhow::Error, tracker: &Shared) -> anyhow::Error {
    let message = format!("{error:#}");
    if !message.starts_with("timed out") {
        return error;
    }
    let missing = lock(tracker).missing();
    anyhow::anyhow!(
        "{message}; still missing:{missing}\nthe nodes log warnings and errors on stderr (RUST_LOG=info shows more)"
    )
}

/// `--keep`: print how to use the nodes, then wait for Ctrl-C.
async fn keep_running(network: &Network, directory: &Path) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    crate::shutdown::spawn_signal_listener(shutdown.clone())?;
    let sample = directory.join("sample-coo.json");
    let issued = OffsetDateTime::now_utc()
        .replace_nanosecond(0)?
        .format(&Rfc3339)?;
    std::fs::write(
        &sample,
        coo::certificate_of_origin("AU-COO-MY-000001", 7, &issued),
    )
    .with_context(|| format!("cannot write {}", sample.display()))?;
    let (au, sg) = (&network.au, &network.sg);
    println!(
        "\nboth nodes keep running; press Ctrl-C to stop. Try (paste into a shell):\n\n\
         export AU={au_url} AU_TOKEN={au_token}\n\
         export SG={sg_url} SG_TOKEN={sg_token}\n\n\
         # 1. upload a document at AU that SG may read (a sample certificate written for you)\n\
         MH=$(curl -s -H \"Authorization: Bearer $AU_TOKEN\" -H 'Content-Type: application/json' \\\n  \
           --data-binary @{sample} \"$AU/api/v1/documents?reader=SG\" | sed -E 's/.*\"multihash\":\"([^\"]+)\".*/\\1/'); echo $MH\n\n\
         # 2. post a message pointing at it\n\
         curl -s -w '\\n' -H \"Authorization: Bearer $AU_TOKEN\" -H 'Content-Type: application/json' \\\n  \
           -d '{{\"sender\":\"AU\",\"receiver\":\"SG\",\"subject\":\"AU.coo.my-1\",\"obj\":\"'$MH'\",\"predicate\":\"{PREDICATE}\",\"sender_ref\":\"my-1\"}}' \\\n  \
           \"$AU/api/v1/messages\"\n\n\
         # 3. watch it arrive: received at SG, its document at SG, accepted at AU once confirmed\n\
         curl -s -w '\\n' -H \"Authorization: Bearer $SG_TOKEN\" \"$SG/api/v1/messages/AU:my-1\"\n\
         curl -s -H \"Authorization: Bearer $SG_TOKEN\" \"$SG/api/v1/documents/$MH\" | sha256sum; sha256sum {sample}\n\
         curl -s -w '\\n' -H \"Authorization: Bearer $AU_TOKEN\" \"$AU/api/v1/messages/AU:my-1\"\n\n\
         notifications that SG's hub delivers to the demo subscriber are printed below.\n\
         API documentation: $AU/api/docs and $SG/api/docs\n",
        au_url = au.url,
        au_token = au.token,
        sg_url = sg.url,
        sg_token = sg.token,
        sample = sample.display(),
    );
    shutdown.cancelled().await;
    Ok(())
}
