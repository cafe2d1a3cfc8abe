//! `igl bench fanout`: signed WebSub deliveries per second to many local subscribers.
//!
//! Starts a node with only the spreader and deliverer, registers `--subscribers`
//! subscriptions (with secrets) to one topic, served by one local HTTP server that checks
//! every signature, then appends `--events` events and measures deliveries per second and
//! event-to-delivery latency (append committed → subscriber received).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use clap::Args;
use igl_config::Component;
use igl_core::NewEvent;
use igl_core::subscriptions::{HubSecret, NewSubscription};
use serde::Serialize;

use super::local::LocalNode;
use super::report::Environment;

/// Arguments of `igl bench fanout`.
#[derive(Debug, Args)]
pub struct FanoutBenchArgs {
    /// Subscriptions (each with its own callback URL and secret).
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Events appended.
    #[arg(long, default_value_t = 100)]
    pub events: usize,
    /// Database of the node (`postgres://…` uses a fresh schema, dropped after); default:
    /// SQLite in a temporary directory.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
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
    deliveries: usize,
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
    times: Vec<(String, Instant)>,
    bad_signatures: usize,
}

type Shared = Arc<Mutex<Arrivals>>;

async fn receive(
    State(arrivals): State<Shared>,
    Path(_subscriber): Path<usize>,
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
    arrivals.times.push((event.to_owned(), now));
    StatusCode::OK
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

    let node = LocalNode::start(
        args.database_url.as_deref(),
        vec![Component::Spreader, Component::Deliverer],
        |settings| {
            settings.hub.allow_private_callbacks = true;
            settings.queue.poll_interval_ms = 50;
        },
    )
    .await?;
    let storage = node.storage();
    for subscriber in 0..args.subscribers {
        storage
            .upsert_subscription(&NewSubscription {
                topic: "UN.CEFACT.*".into(),
                callback: format!("{base}/cb/{subscriber}"),
                secret: Some(HubSecret(SECRET.into())),
                expires_at: igl_domain::Timestamp::now_utc() + time::Duration::days(1),
            })
            .await?;
    }

    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mut published = HashMap::new();
    let started = Instant::now();
    for event in 0..args.events {
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
        published.insert(id, Instant::now());
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
    let pick = |q: f64| {
        latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    let result = FanoutResult {
        benchmark: "fanout",
        backend: node.backend.clone(),
        subscribers: args.subscribers,
        events: args.events,
        deliveries: arrivals.times.len(),
        bad_signatures: arrivals.bad_signatures,
        seconds,
        deliveries_per_second: arrivals.times.len() as f64 / seconds,
        latency_ms_p50: pick(0.5),
        latency_ms_p99: pick(0.99),
        latency_ms_max: pick(1.0),
        environment: Environment::detect(),
    };
    println!(
        "fanout benchmark: backend={} subscribers={} events={} cores={} commit={}",
        result.backend,
        result.subscribers,
        result.events,
        result.environment.cores,
        result
            .environment
            .git_commit
            .as_deref()
            .unwrap_or("unknown")
    );
    println!(
        "{:>10} {:>8} {:>12} {:>8} {:>8} {:>8} {:>6}",
        "deliveries", "seconds", "delivered/s", "p50 ms", "p99 ms", "max ms", "badsig"
    );
    println!(
        "{:>10} {:>8.2} {:>12.0} {:>8.1} {:>8.1} {:>8.1} {:>6}",
        result.deliveries,
        result.seconds,
        result.deliveries_per_second,
        result.latency_ms_p50,
        result.latency_ms_p99,
        result.latency_ms_max,
        result.bad_signatures
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)?;
    }
    node.stop().await?;
    Ok(())
}
