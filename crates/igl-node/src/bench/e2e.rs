//! `igl bench e2e`: AU POST → SG stored and AU `accepted`, through the whole pipeline of two
//! in-process nodes and a shared-db channel (ingest, processor, router, channel endpoint,
//! observer, callback, reception, retriever, SG processor, poller).
//!
//! Open model: messages are posted to AU at a constant rate (latency is measured from each
//! message's scheduled send time, so queueing counts); the first `--warmup` seconds are not
//! measured. Two latencies are recorded per measured message: until SG committed it, and
//! until AU committed it as `accepted` (the channel confirmed it). Both stores are watched
//! through their listing order (from the newest change seen, and twice a second from two
//! seconds before it, so a late commit is not missed).
//!
//! `--ramp` runs steps of increasing rate on the same network (×`--ramp-factor` from
//! `--rate` up to `--max-rate`, then two bisection steps between the last sustained and the
//! first failed rate) and reports the highest rate **sustained**: every measured message
//! stored at SG and accepted at AU, no POST error, and p99 of both latencies ≤ 1 s.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use igl_core::{MessageFilter, Storage};
use igl_domain::MessageStatus;
use igl_node::network::{Network, NetworkOptions};
use serde::Serialize;
use tokio::sync::{Mutex, Semaphore};

use super::report::Environment;

/// Arguments of `igl bench e2e`.
#[derive(Debug, Args)]
pub struct E2eBenchArgs {
    /// Messages per second posted to AU (with --ramp: the first step's rate).
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Measured seconds (per step with --ramp).
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Seconds of load before measuring (per step with --ramp).
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// Maximum POSTs in flight.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Both nodes and the channel medium on this PostgreSQL database (fresh schemas, dropped
    /// after); default: embedded SQLite.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Find the highest rate sustained with p99 ≤ 1 s (steps of increasing rate).
    #[arg(long)]
    pub ramp: bool,
    /// With --ramp: rate multiplier between steps.
    #[arg(long, default_value_t = 1.5, requires = "ramp")]
    pub ramp_factor: f64,
    /// With --ramp: the highest rate tried.
    #[arg(long, default_value_t = 20_000, requires = "ramp")]
    pub max_rate: u64,
    /// Also write the result as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// The p99 both latencies must stay under for a ramp step to count as sustained.
const SUSTAINED_P99_MS: f64 = 1000.0;

#[derive(Debug, Serialize)]
struct E2eResult {
    benchmark: &'static str,
    backend: &'static str,
    mode: &'static str,
    steps: Vec<StepResult>,
    /// With --ramp: the highest step rate that was sustained.
    highest_sustained_rate: Option<u64>,
    environment: Environment,
}

#[derive(Debug, Serialize)]
pub(super) struct StepResult {
    rate: u64,
    seconds: f64,
    posted: u64,
    post_errors: u64,
    measured: u64,
    stored_at_sg: u64,
    pub(super) stored_per_second: f64,
    /// Scheduled POST → SG committed the message.
    latency_ms: Latency,
    accepted_at_au: u64,
    /// Scheduled POST → AU committed `accepted`.
    accepted_latency_ms: Latency,
    all_accepted_at_au_after_s: Option<f64>,
    pub(super) sustained: bool,
}

impl StepResult {
    /// One line for summaries: rate, SG and accepted percentiles, and whether it held.
    pub(super) fn summary(&self) -> String {
        format!(
            "{}/s: SG p50 {:.0} / p99 {:.0} ms, accepted p99 {:.0} ms, stored {:.0}/s, {}",
            self.rate,
            self.latency_ms.p50,
            self.latency_ms.p99,
            self.accepted_latency_ms.p99,
            self.stored_per_second,
            if self.sustained {
                "sustained"
            } else {
                "not sustained"
            }
        )
    }
}

#[derive(Debug, Serialize)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[index - 1]
}

fn latency(mut values: Vec<f64>) -> Latency {
    values.sort_by(f64::total_cmp);
    Latency {
        p50: percentile(&values, 0.50),
        p90: percentile(&values, 0.90),
        p99: percentile(&values, 0.99),
        p999: percentile(&values, 0.999),
        max: percentile(&values, 1.0),
    }
}

/// Send times of one step's messages, by number.
type Schedule = Arc<Mutex<HashMap<u64, Instant>>>;

/// What the watcher of one store needs to know about the step.
#[derive(Clone)]
struct Window {
    prefix: String,
    scheduled: Schedule,
    measure_from: Instant,
    end: Instant,
}

/// Watches `storage` for messages of the step (subject `<prefix><n>`) with `status` (any
/// when `None`) until every measured message was seen or 30 s after the step's end; returns
/// the latencies of the measured ones in ms.
async fn watch(
    storage: Arc<dyn Storage>,
    status: Option<MessageStatus>,
    window: Window,
) -> anyhow::Result<Vec<f64>> {
    let mut latencies = Vec::new();
    let mut seen = HashSet::new();
    let mut since: Option<igl_domain::Timestamp> = Some(igl_domain::Timestamp::now_utc());
    let give_up = window.end + Duration::from_secs(30);
    let mut expected: Option<usize> = None;
    let mut last_rescan = Instant::now();
    loop {
        // Every 5 ms from the newest change seen; every 500 ms from 2 s before it, for
        // changes committed late with an earlier timestamp.
        let rewind = if last_rescan.elapsed() >= Duration::from_millis(500) {
            last_rescan = Instant::now();
            time::Duration::seconds(2)
        } else {
            time::Duration::ZERO
        };
        let mut filter = MessageFilter {
            status,
            updated_since: since.map(|s| s - rewind),
            limit: 1000,
            ..MessageFilter::default()
        };
        let mut newest = None;
        loop {
            let page = storage.list_messages(&filter).await?;
            let now = Instant::now();
            for message in &page.messages {
                newest = newest.max(Some(message.updated_at));
                let Some(n) = message.content.subject.strip_prefix(&window.prefix) else {
                    continue;
                };
                let Ok(n) = n.parse::<u64>() else { continue };
                if !seen.insert(n) {
                    continue;
                }
                if let Some(at) = window.scheduled.lock().await.get(&n).copied()
                    && at >= window.measure_from
                    && at < window.end
                {
                    latencies.push(now.duration_since(at).as_secs_f64() * 1000.0);
                }
            }
            match page.next {
                Some(next) => filter.after = Some(next),
                None => break,
            }
        }
        if newest.is_some() {
            since = newest.max(since);
        }
        if expected.is_none() && Instant::now() >= window.end {
            let measured = window
                .scheduled
                .lock()
                .await
                .values()
                .filter(|at| **at >= window.measure_from && **at < window.end)
                .count();
            expected = Some(measured);
        }
        if expected.is_some_and(|e| latencies.len() >= e) || Instant::now() > give_up {
            return Ok(latencies);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The network under load: where to POST at AU (round robin over the URLs) and the two
/// stores to watch.
pub(super) struct Target {
    /// Base URLs of AU's Message API processes.
    pub au_urls: Vec<String>,
    /// A bearer token of an AU party.
    pub au_token: String,
    /// AU's store.
    pub au: Arc<dyn Storage>,
    /// SG's store.
    pub sg: Arc<dyn Storage>,
}

/// The load of each step.
#[derive(Debug, Clone, Copy)]
pub(super) struct Load {
    /// Measured seconds.
    pub duration: u64,
    /// Seconds of load before measuring.
    pub warmup: u64,
    /// Maximum POSTs in flight.
    pub concurrency: usize,
}

/// With `--ramp`: how rates grow.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ramp {
    /// Rate multiplier between steps.
    pub factor: f64,
    /// The highest rate tried.
    pub max_rate: u64,
}

/// One constant-rate step on `target`.
async fn run_step(
    target: &Target,
    client: &reqwest::Client,
    rate: u64,
    args: &Load,
) -> anyhow::Result<StepResult> {
    let urls: Vec<String> = target
        .au_urls
        .iter()
        .map(|base| format!("{base}/api/v1/messages"))
        .collect();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let started = Instant::now();
    let measure_from = started + Duration::from_secs(args.warmup);
    let end = measure_from + Duration::from_secs(args.duration);
    let window = Window {
        prefix: format!("AU.e2e.{run}."),
        scheduled: Arc::default(),
        measure_from,
        end,
    };
    let post_errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sg_watcher = tokio::spawn(watch(target.sg.clone(), None, window.clone()));
    let au_watcher = tokio::spawn(watch(
        target.au.clone(),
        Some(MessageStatus::Accepted),
        window.clone(),
    ));

    let permits = Arc::new(Semaphore::new(args.concurrency));
    let mut sent: u64 = 0;
    let mut tasks = tokio::task::JoinSet::new();
    while Instant::now() < end {
        let at = started + Duration::from_secs_f64(sent as f64 / rate as f64);
        tokio::time::sleep_until(at.into()).await;
        let permit = permits.clone().acquire_owned().await?;
        window.scheduled.lock().await.insert(sent, at);
        let body = format!(
            r#"{{"sender":"AU","receiver":"SG","subject":"AU.e2e.{run}.{sent}","obj":"https://documents.example.org/coo/{sent}","predicate":"UN.CEFACT.Trade.CertificateOfOrigin.created","sender_ref":"e2e-{run}-{sent}"}}"#
        );
        let (client, url, token, errors) = (
            client.clone(),
            urls[sent as usize % urls.len()].clone(),
            target.au_token.clone(),
            post_errors.clone(),
        );
        tasks.spawn(async move {
            let response = client
                .post(&url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            if !matches!(&response, Ok(r) if r.status() == reqwest::StatusCode::CREATED) {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            drop(permit);
        });
        sent += 1;
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let measured = window
        .scheduled
        .lock()
        .await
        .values()
        .filter(|at| **at >= measure_from && **at < end)
        .count() as u64;
    let stored = sg_watcher.await.context("watcher panicked")??;
    let accepted = au_watcher.await.context("watcher panicked")??;

    // Every posted message should end up accepted at AU (the channel confirmed it).
    let au_storage = target.au.clone();
    let wait_from = Instant::now();
    let mut all_accepted = None;
    while wait_from.elapsed() < Duration::from_secs(60) {
        let pending = au_storage
            .list_messages(&MessageFilter {
                status: Some(MessageStatus::Pending),
                limit: 1,
                ..MessageFilter::default()
            })
            .await?;
        if pending.messages.is_empty() {
            all_accepted = Some(wait_from.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let post_errors = post_errors.load(std::sync::atomic::Ordering::Relaxed);
    let (stored_at_sg, accepted_at_au) = (stored.len() as u64, accepted.len() as u64);
    let latency_ms = latency(stored);
    let accepted_latency_ms = latency(accepted);
    let sustained = post_errors == 0
        && stored_at_sg == measured
        && accepted_at_au == measured
        && latency_ms.p99 <= SUSTAINED_P99_MS
        && accepted_latency_ms.p99 <= SUSTAINED_P99_MS;
    Ok(StepResult {
        rate,
        seconds: args.duration as f64,
        posted: sent,
        post_errors,
        measured,
        stored_at_sg,
        stored_per_second: stored_at_sg as f64 / args.duration as f64,
        latency_ms,
        accepted_at_au,
        accepted_latency_ms,
        all_accepted_at_au_after_s: all_accepted,
        sustained,
    })
}

fn print_header() {
    println!(
        "{:>7} {:>8} {:>6} {:>8} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>11} {:>9}",
        "rate/s",
        "posted",
        "errors",
        "at SG",
        "stored/s",
        "SG p50",
        "SG p99",
        "SG p999",
        "acc. p50",
        "acc. p99",
        "AU drained",
        "sustained"
    );
}

fn print_step(step: &StepResult) {
    println!(
        "{:>7} {:>8} {:>6} {:>8} {:>9.0} {:>9.1} {:>9.1} {:>9.1} {:>10.1} {:>10.1} {:>11} {:>9}",
        step.rate,
        step.posted,
        step.post_errors,
        step.stored_at_sg,
        step.stored_per_second,
        step.latency_ms.p50,
        step.latency_ms.p99,
        step.latency_ms.p999,
        step.accepted_latency_ms.p50,
        step.accepted_latency_ms.p99,
        step.all_accepted_at_au_after_s
            .map_or("no (60 s)".to_owned(), |s| format!("+{s:.1}s")),
        if step.sustained { "yes" } else { "no" },
    );
}

/// Runs one step at `rate`, or with `ramp` steps of increasing rate (then two bisection
/// steps between the last sustained and the first failed rate), printing each step's row;
/// returns the steps and the highest rate sustained (with `ramp`).
pub(super) async fn run_steps(
    target: &Target,
    client: &reqwest::Client,
    rate: u64,
    load: &Load,
    ramp: Option<Ramp>,
) -> anyhow::Result<(Vec<StepResult>, Option<u64>)> {
    print_header();
    let mut steps = Vec::new();
    let mut highest = None;
    let Some(ramp) = ramp else {
        let step = run_step(target, client, rate, load).await?;
        print_step(&step);
        steps.push(step);
        return Ok((steps, None));
    };
    let first = rate;
    let mut rate = rate;
    let mut failed = None;
    while rate <= ramp.max_rate {
        let step = run_step(target, client, rate, load).await?;
        print_step(&step);
        let sustained = step.sustained;
        steps.push(step);
        if !sustained {
            failed = Some(rate);
            break;
        }
        highest = Some(rate);
        rate = ((rate as f64 * ramp.factor).ceil() as u64).max(rate + 1);
    }
    if let Some(mut high) = failed {
        let mut low = highest.unwrap_or(0);
        for _ in 0..2 {
            let mid = low + (high - low) / 2;
            if mid <= low || mid == 0 {
                break;
            }
            let step = run_step(target, client, mid, load).await?;
            print_step(&step);
            if step.sustained {
                low = mid;
                highest = Some(mid);
            } else {
                high = mid;
            }
            steps.push(step);
        }
    }
    match highest {
        Some(rate) => println!("highest rate sustained with p99 <= 1 s: {rate} msg/s"),
        None => println!("no rate sustained with p99 <= 1 s (lowest tried: {first} msg/s)"),
    }
    Ok((steps, highest))
}

/// Runs the benchmark.
pub async fn run_e2e_bench(args: E2eBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.rate > 0, "--rate must be positive");
    anyhow::ensure!(
        !args.ramp || args.ramp_factor > 1.0,
        "--ramp-factor must be greater than 1"
    );
    let directory = tempfile::tempdir()?;
    let network = Network::start_with(
        directory.path(),
        NetworkOptions {
            postgres_url: args.database_url.clone(),
        },
    )
    .await?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let environment = Environment::detect();
    println!(
        "e2e benchmark (AU POST -> SG stored, AU accepted; latencies in ms): backend={} {} duration={}s warmup={}s cores={} commit={}",
        network.backend(),
        if args.ramp { "ramp" } else { "constant rate" },
        args.duration,
        args.warmup,
        environment.cores,
        environment.git_commit.as_deref().unwrap_or("unknown")
    );
    let target = Target {
        au_urls: vec![network.au.url.clone()],
        au_token: network.au.token.clone(),
        au: network.au.node.backends.storage.clone(),
        sg: network.sg.node.backends.storage.clone(),
    };
    let load = Load {
        duration: args.duration,
        warmup: args.warmup,
        concurrency: args.concurrency,
    };
    let ramp = args.ramp.then_some(Ramp {
        factor: args.ramp_factor,
        max_rate: args.max_rate,
    });
    let (steps, highest) = run_steps(&target, &client, args.rate, &load, ramp).await?;
    let result = E2eResult {
        benchmark: "e2e",
        backend: network.backend(),
        mode: if args.ramp { "ramp" } else { "constant" },
        steps,
        highest_sustained_rate: highest,
        environment,
    };
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    network.stop().await?;
    Ok(())
}
