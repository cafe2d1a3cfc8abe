//! `igl bench fanout`: signed WebSub deliveries per second to many local subscribers.
//!
//! Starts a node with only the spreader and deliverer, registers `--subscribers` healthy
//! subscriptions (with secrets) to one topic, served by one local HTTP server that checks
//! every signature, plus `--down` subscriptions whose callbacks refuse connections
//! (`--down-mode refuse`) or accept them and never answer (`--down-mode hang`). Then it
//! appends `--events` events, all at once (default) or at a steady `--rate` per second,
//! and measures deliveries per second and event-to-delivery latency (append committed →
//! healthy subscriber received), over the healthy subscribers only.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use clap::{Args, ValueEnum};
use igl_config::Component;
use igl_core::NewEvent;
use igl_core::subscriptions::{HubSecret, NewSubscription};
use serde::Serialize;

use super::local::LocalNode;
use super::report::Environment;

/// How the `--down` subscribers fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DownMode {
    /// Their port refuses connections.
    Refuse,
    /// Their server accepts connections and never answers (the hub times out).
    Hang,
}

/// Arguments of `igl bench fanout`.
#[derive(Debug, Args)]
pub struct FanoutBenchArgs {
    /// Healthy subscriptions (each with its own callback URL and secret).
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Events appended.
    #[arg(long, default_value_t = 100)]
    pub events: usize,
    /// Database of the node (`postgres://…` uses a fresh schema, dropped after); default:
    /// SQLite in a temporary directory.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Append events at this steady rate per second instead of all at once.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Extra subscriptions whose callbacks are down (not counted in the results).
    #[arg(long, default_value_t = 0)]
    pub down: usize,
    /// How the down subscribers fail.
    #[arg(long, value_enum, default_value_t = DownMode::Refuse)]
    pub down_mode: DownMode,
    /// `hub.fanout_budget_ms` of the node.
    #[arg(long, default_value_t = 1000)]
    pub fanout_budget_ms: u64,
    /// Also write the result as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct FanoutResult {
    benchmark: &'static str,
    backend: String,
    subscribers: usize,
    events: usize,
    rate: Option<f64>,
    down: usize,
    down_mode: DownMode,
    deliveries: usize,
    duplicates: usize,
    bad_signatures: usize,
    seconds: f64,
    deliveries_per_second: f64,
    latency_ms_p50: f64,
    latency_ms_p99: f64,
    latency_ms_max: f64,
    environment: Environment,
}

const SECRET: &str = "bench-fanout-secret";

#[derive(Default)]
struct Arrivals {
    /// First arrival of each (event, subscriber).
    times: Vec<(String, Instant)>,
    seen: std::collections::HashSet<(String, usize)>,
    duplicates: usize,
    bad_signatures: usize,
}

type Shared = Arc<Mutex<Arrivals>>;

async fn receive(
    State(arrivals): State<Shared>,
    Path(subscriber): Path<usize>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let now = Instant::now();
    let signature = headers
        .get("x-hub-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let valid = igl_websub::signature::verify(SECRET.as_bytes(), &body, signature);
    let event = headers
        .get("x-igl-event-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mut arrivals = arrivals.lock().unwrap_or_else(|p| p.into_inner());
    if !valid {
        arrivals.bad_signatures += 1;
    }
    if arrivals.seen.insert((event.to_owned(), subscriber)) {
        arrivals.times.push((event.to_owned(), now));
    } else {
        arrivals.duplicates += 1;
    }
    StatusCode::OK
}

/// A base URL whose callbacks fail as `mode` says; the returned task keeps a hanging
/// server alive.
async fn down_base(
    mode: DownMode,
) -> anyhow::Result<(String, Option<tokio::task::JoinHandle<()>>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    match mode {
        DownMode::Refuse => {
            drop(listener);
            Ok((base, None))
        }
        DownMode::Hang => {
            let task = tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok((socket, _)) = listener.accept().await {
                    held.push(socket);
                }
            });
            Ok((base, Some(task)))
        }
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Runs the benchmark.
pub async fn run_fanout_bench(args: FanoutBenchArgs) -> anyhow::Result<()> {
    let arrivals: Shared = Arc::default();
    let app = Router::new()
        .route("/cb/{subscriber}", post(receive))
        .with_state(arrivals.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (down_base, hang_task) = down_base(args.down_mode).await?;

    let node = LocalNode::start(
        args.database_url.as_deref(),
        vec![Component::Spreader, Component::Deliverer],
        |settings| {
            settings.hub.allow_private_callbacks = true;
            settings.hub.fanout_budget_ms = args.fanout_budget_ms;
            settings.queue.poll_interval_ms = 50;
        },
    )
    .await?;
    let storage = node.storage();
    let expires_at = igl_domain::Timestamp::now_utc() + time::Duration::days(1);
    let callbacks = (0..args.subscribers)
        .map(|i| format!("{base}/cb/{i}"))
        .chain((0..args.down).map(|i| format!("{down_base}/cb/{i}")));
    for callback in callbacks {
        storage
            .upsert_subscription(&NewSubscription {
                topic: "UN.CEFACT.*".into(),
                callback,
                secret: Some(HubSecret(SECRET.into())),
                expires_at,
            })
            .await?;
    }

    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let published: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let started = Instant::now();
    let interval = args
        .rate
        .map(|rate| Duration::from_secs_f64(1.0 / rate.max(0.001)));
    for event in 0..args.events {
        if let Some(interval) = interval {
            let due = started + interval.mul_f64(event as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let id = format!("bench-{run}-{event}");
        let mut unit = storage.begin().await?;
        unit.append_event(&NewEvent {
            id: id.clone(),
            kind: "message.stored".into(),
            topic: "UN.CEFACT.Trade.CertificateOfOrigin.created".into(),
            payload: serde_json::json!({"sender": "AU", "receiver": "SG", "subject": format!("AU.bench.{event}"),
                "obj": "QmQtYtUS7K1AdKjbuMsmPmPGDLaKL38M5HYwqxW9RKW49n",
                "predicate": "UN.CEFACT.Trade.CertificateOfOrigin.created", "sender_ref": id}),
        })
        .await?;
        unit.commit().await?;
        published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Instant::now());
    }
    let expected = args.subscribers * args.events;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let delivered = arrivals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .times
            .len();
        if delivered >= expected {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {delivered} of {expected} delivered in 300 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let arrivals = std::mem::take(&mut *arrivals.lock().unwrap_or_else(|p| p.into_inner()));
    let published = std::mem::take(&mut *published.lock().unwrap_or_else(|p| p.into_inner()));
    let last = arrivals
        .times
        .iter()
        .map(|(_, at)| *at)
        .max()
        .context("no deliveries")?;
    let seconds = last.duration_since(started).as_secs_f64();
    let mut latencies: Vec<f64> = arrivals
        .times
        .iter()
        .filter_map(|(event, at)| {
            published
                .get(event)
                .map(|p| at.saturating_duration_since(*p).as_secs_f64() * 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let result = FanoutResult {
        benchmark: "fanout",
        backend: node.backend.clone(),
        subscribers: args.subscribers,
        events: args.events,
        rate: args.rate,
        down: args.down,
        down_mode: args.down_mode,
        deliveries: arrivals.times.len(),
        duplicates: arrivals.duplicates,
        bad_signatures: arrivals.bad_signatures,
        seconds,
        deliveries_per_second: arrivals.times.len() as f64 / seconds,
        latency_ms_p50: percentile(&latencies, 0.5),
        latency_ms_p99: percentile(&latencies, 0.99),
        latency_ms_max: percentile(&latencies, 1.0),
        environment: Environment::detect(),
    };
    println!(
        "fanout benchmark: backend={} subscribers={} down={} ({:?}) events={} rate={} cores={} commit={}",
        result.backend,
        result.subscribers,
        result.down,
        result.down_mode,
        result.events,
        result
            .rate
            .map_or_else(|| "burst".to_owned(), |rate| format!("{rate}/s")),
        result.environment.cores,
        result
            .environment
            .git_commit
            .as_deref()
            .unwrap_or("unknown")
    );
    println!(
        "{:>10} {:>8} {:>12} {:>8} {:>8} {:>8} {:>6} {:>6}",
        "deliveries", "seconds", "delivered/s", "p50 ms", "p99 ms", "max ms", "dups", "badsig"
    );
    println!(
        "{:>10} {:>8.2} {:>12.0} {:>8.1} {:>8.1} {:>8.1} {:>6} {:>6}",
        result.deliveries,
        result.seconds,
        result.deliveries_per_second,
        result.latency_ms_p50,
        result.latency_ms_p99,
        result.latency_ms_max,
        result.duplicates,
        result.bad_signatures
    );
    println!(
        "(healthy subscribers only; deliveries counts each (event, subscriber) once, dups the repeats)"
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)?;
    }
    node.stop().await?;
    if let Some(task) = hang_task {
        task.abort();
    }
    Ok(())
}
