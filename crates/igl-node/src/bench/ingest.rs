//! `igl bench ingest`: `POST /api/v1/messages` throughput and latency.
//!
//! Two load models:
//! - open model (`--rate R`): requests are scheduled at a constant rate; latency is measured
//!   from each request's *scheduled* time, so a slow server is charged for the queueing it
//!   causes (no coordinated omission). At most `--concurrency` requests are in flight;
//!   beyond that, sends wait (and their latency grows).
//! - closed model (`--rate 0`): `--concurrency` clients post back to back; this finds the
//!   maximum throughput.
//!
//! Without `--url`, an in-process node (Message API only, embedded SQLite in a temporary
//! directory, or `--database-url`) is started and benchmarked; with `--url` and `--token`
//! an already running node is used. The first `--warmup` seconds are not counted.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use igl_config::Component;
use serde::Serialize;
use tokio::sync::{Mutex, Semaphore};

use super::local::{LocalNode, TOKEN};
use super::report::Environment;

/// Arguments of `igl bench ingest`.
#[derive(Debug, Args)]
pub struct IngestBenchArgs {
    /// Base URL of a running node (e.g. http://127.0.0.1:8080); default: start one in-process.
    #[arg(long, value_name = "URL", requires = "token")]
    pub url: Option<String>,
    /// Bearer token for --url (e.g. the token printed by `igl node --dev`).
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Database of the in-process node (`postgres://…` uses a fresh schema, dropped after).
    #[arg(long, value_name = "URL", conflicts_with = "url")]
    pub database_url: Option<String>,
    /// Requests per second (open model); 0 = closed loop at maximum speed.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Maximum requests in flight (closed model: number of clients).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// Also write the result as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct IngestResult {
    benchmark: &'static str,
    target: String,
    /// `sqlite` or `postgres` for the in-process node; `unknown` for `--url`.
    backend: String,
    model: &'static str,
    rate: u64,
    concurrency: usize,
    seconds: f64,
    accepted: u64,
    errors: u64,
    accepted_per_second: f64,
    latency_ms: Percentiles,
    environment: Environment,
}

#[derive(Debug, Serialize)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

#[derive(Debug, Default)]
struct Samples {
    latencies_micros: Vec<u32>,
    errors: u64,
}

/// Runs the benchmark and prints its figures.
pub async fn run_ingest_bench(args: IngestBenchArgs) -> anyhow::Result<()> {
    let mut local = None;
    let mut backend = "unknown".to_owned();
    let (base, token, target) = match &args.url {
        Some(url) => {
            let token = args
                .token
                .clone()
                .context("--token is required with --url")?;
            (url.trim_end_matches('/').to_owned(), token, url.clone())
        }
        None => {
            let node = LocalNode::start(
                args.database_url.as_deref(),
                vec![Component::MessageApi],
                |_| {},
            )
            .await?;
            let base = node.base_url()?;
            let target = format!("in-process node on {}", node.backend);
            backend = node.backend.clone();
            local = Some(node);
            (base, TOKEN.to_owned(), target)
        }
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;
    let url = format!("{base}/api/v1/messages");
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let samples = Arc::new(Mutex::new(Samples::default()));
    let measure_from = Instant::now() + Duration::from_secs(args.warmup);
    let end = measure_from + Duration::from_secs(args.duration);
    let permits = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut sent: u64 = 0;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    while Instant::now() < end {
        let scheduled = if args.rate > 0 {
            let at = started + Duration::from_secs_f64(sent as f64 / args.rate as f64);
            tokio::time::sleep_until(at.into()).await;
            at
        } else {
            Instant::now()
        };
        let permit = permits.clone().acquire_owned().await?;
        let scheduled = if args.rate > 0 {
            scheduled
        } else {
            Instant::now()
        };
        let body = message_body(&run_id, sent);
        sent += 1;
        let (client, url, token, samples) =
            (client.clone(), url.clone(), token.clone(), samples.clone());
        tasks.spawn(async move {
            let result = client.post(&url).bearer_auth(&token).header("content-type", "application/json").body(body).send().await;
            let ok = matches!(&result, Ok(response) if response.status() == reqwest::StatusCode::CREATED);
            let finished = Instant::now();
            drop(permit);
            if scheduled >= measure_from && finished <= end {
                let mut samples = samples.lock().await;
                if ok {
                    let micros = finished.duration_since(scheduled).as_micros();
                    samples.latencies_micros.push(u32::try_from(micros).unwrap_or(u32::MAX));
                } else {
                    samples.errors += 1;
                }
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}

    let mut samples = std::mem::take(&mut *samples.lock().await);
    samples.latencies_micros.sort_unstable();
    let accepted = samples.latencies_micros.len() as u64;
    let seconds = args.duration as f64;
    let result = IngestResult {
        benchmark: "ingest",
        target,
        backend,
        model: if args.rate > 0 { "open" } else { "closed" },
        rate: args.rate,
        concurrency: args.concurrency,
        seconds,
        accepted,
        errors: samples.errors,
        accepted_per_second: accepted as f64 / seconds,
        latency_ms: percentiles(&samples.latencies_micros),
        environment: Environment::detect(),
    };
    print_result(&result);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(node) = local {
        node.stop().await?;
    }
    Ok(())
}

fn message_body(run_id: &str, n: u64) -> String {
    format!(
        r#"{{"sender":"AU","receiver":"SG","subject":"AU.bench.{run_id}.{n}","obj":"QmQtYtUS7K1AdKjbuMsmPmPGDLaKL38M5HYwqxW9RKW49n","predicate":"UN.CEFACT.Trade.CertificateOfOrigin.created","sender_ref":"bench-{run_id}-{n}"}}"#
    )
}

fn percentiles(sorted_micros: &[u32]) -> Percentiles {
    let at = |q: f64| -> f64 {
        if sorted_micros.is_empty() {
            return 0.0;
        }
        let index =
            ((sorted_micros.len() as f64 * q).ceil() as usize).clamp(1, sorted_micros.len());
        f64::from(sorted_micros[index - 1]) / 1000.0
    };
    Percentiles {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        p999: at(0.999),
        max: at(1.0),
    }
}

fn print_result(result: &IngestResult) {
    println!(
        "ingest benchmark: {} model={} rate={} concurrency={} cores={} commit={}",
        result.target,
        result.model,
        result.rate,
        result.concurrency,
        result.environment.cores,
        result
            .environment
            .git_commit
            .as_deref()
            .unwrap_or("unknown"),
    );
    println!(
        "{:>10} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "accepted", "errors", "msg/s", "p50 ms", "p90 ms", "p99 ms", "p999 ms", "max ms"
    );
    let l = &result.latency_ms;
    println!(
        "{:>10} {:>8} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
        result.accepted,
        result.errors,
        result.accepted_per_second,
        l.p50,
        l.p90,
        l.p99,
        l.p999,
        l.max
    );
    if !result.environment.release_build {
        println!("note: debug build; use `cargo run --release` for meaningful figures");
    }
}
