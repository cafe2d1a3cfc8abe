//! `igl bench e2e`: AU POST → SG stored, through the whole pipeline of two in-process nodes
//! and a shared-db channel (ingest, processor, router, channel endpoint, observer, callback,
//! reception, retriever, SG processor).
//!
//! Open model: messages are posted to AU at `--rate` per second (latency is measured from
//! each message's scheduled send time, so queueing counts). SG's message store is watched
//! through its listing order (a cursor read every 2 ms), so "stored" is when SG committed
//! the message. After the run the benchmark waits for AU to see every message `accepted`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use igl_core::MessageFilter;
use igl_domain::MessageStatus;
use serde::Serialize;
use tokio::sync::{Mutex, Semaphore};

use super::report::Environment;

/// Arguments of `igl bench e2e`.
#[derive(Debug, Args)]
pub struct E2eBenchArgs {
    /// Messages per second posted to AU.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Measured seconds.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// Maximum POSTs in flight.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Also write the result as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct E2eResult {
    benchmark: &'static str,
    rate: u64,
    seconds: f64,
    posted: u64,
    post_errors: u64,
    stored_at_sg: u64,
    stored_per_second: f64,
    latency_ms: Latency,
    all_accepted_at_au_after_s: Option<f64>,
    environment: Environment,
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

/// Runs the benchmark.
pub async fn run_e2e_bench(args: E2eBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.rate > 0, "--rate must be positive");
    let directory = tempfile::tempdir()?;
    let network = igl_node::network::Network::start(directory.path()).await?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let url = format!("{}/api/v1/messages", network.au.url);
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let started = Instant::now();
    let measure_from = started + Duration::from_secs(args.warmup);
    let end = measure_from + Duration::from_secs(args.duration);
    let scheduled: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let post_errors = Arc::new(std::sync::atomic::AtomicU64::new(0));

    // Watch SG's store in commit order.
    let sg_storage = network.sg.node.backends.storage.clone();
    let watcher = {
        let scheduled = scheduled.clone();
        let prefix = format!("AU.e2e.{run}.");
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut filter = MessageFilter {
                limit: 1000,
                ..MessageFilter::default()
            };
            let give_up = end + Duration::from_secs(30);
            let mut expected: Option<u64> = None;
            loop {
                let page = match sg_storage.list_messages(&filter).await {
                    Ok(page) => page,
                    Err(error) => return Err(anyhow::Error::from(error)),
                };
                let now = Instant::now();
                for message in &page.messages {
                    let Some(n) = message.content.subject.strip_prefix(&prefix) else {
                        continue;
                    };
                    let Ok(n) = n.parse::<u64>() else { continue };
                    if let Some(at) = scheduled.lock().await.get(&n).copied()
                        && at >= measure_from
                        && at < end
                    {
                        latencies.push(now.duration_since(at).as_secs_f64() * 1000.0);
                    }
                }
                if let Some(last) = page.messages.last() {
                    filter.after = Some(igl_core::Cursor {
                        updated_at_micros: (last.updated_at.unix_timestamp_nanos() / 1000) as i64,
                        seq: i64::MAX,
                    });
                }
                if expected.is_none() && Instant::now() >= end {
                    let measured = scheduled
                        .lock()
                        .await
                        .values()
                        .filter(|at| **at >= measure_from && **at < end)
                        .count() as u64;
                    expected = Some(measured);
                }
                if expected.is_some_and(|e| latencies.len() as u64 >= e) || Instant::now() > give_up
                {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                if page.next.is_none() {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        })
    };

    let permits = Arc::new(Semaphore::new(args.concurrency));
    let mut sent: u64 = 0;
    let mut tasks = tokio::task::JoinSet::new();
    while Instant::now() < end {
        let at = started + Duration::from_secs_f64(sent as f64 / args.rate as f64);
        tokio::time::sleep_until(at.into()).await;
        let permit = permits.clone().acquire_owned().await?;
        scheduled.lock().await.insert(sent, at);
        let body = format!(
            r#"{{"sender":"AU","receiver":"SG","subject":"AU.e2e.{run}.{sent}","obj":"https://documents.example.org/coo/{sent}","predicate":"UN.CEFACT.Trade.CertificateOfOrigin.created","sender_ref":"e2e-{run}-{sent}"}}"#
        );
        let (client, url, token, errors) = (
            client.clone(),
            url.clone(),
            network.au.token.clone(),
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
    let mut latencies = watcher.await.context("watcher panicked")??;
    latencies.sort_by(f64::total_cmp);

    // Every posted message should end up accepted at AU (the channel confirmed it).
    let au_storage = network.au.node.backends.storage.clone();
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

    let result = E2eResult {
        benchmark: "e2e",
        rate: args.rate,
        seconds: args.duration as f64,
        posted: sent,
        post_errors: post_errors.load(std::sync::atomic::Ordering::Relaxed),
        stored_at_sg: latencies.len() as u64,
        stored_per_second: latencies.len() as f64 / args.duration as f64,
        latency_ms: Latency {
            p50: percentile(&latencies, 0.50),
            p90: percentile(&latencies, 0.90),
            p99: percentile(&latencies, 0.99),
            p999: percentile(&latencies, 0.999),
            max: percentile(&latencies, 1.0),
        },
        all_accepted_at_au_after_s: all_accepted,
        environment: Environment::detect(),
    };
    println!(
        "e2e benchmark (AU POST -> SG stored): rate={}/s duration={}s cores={} commit={}",
        result.rate,
        args.duration,
        result.environment.cores,
        result
            .environment
            .git_commit
            .as_deref()
            .unwrap_or("unknown")
    );
    println!(
        "{:>8} {:>7} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>12}",
        "posted",
        "errors",
        "at SG",
        "stored/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p999 ms",
        "max ms",
        "AU accepted"
    );
    let l = &result.latency_ms;
    println!(
        "{:>8} {:>7} {:>8} {:>9.0} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>12}",
        result.posted,
        result.post_errors,
        result.stored_at_sg,
        result.stored_per_second,
        l.p50,
        l.p90,
        l.p99,
        l.p999,
        l.max,
        all_accepted.map_or("no (60 s)".to_owned(), |s| format!("+{s:.1}s")),
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)?;
    }
    network.stop().await?;
    Ok(())
}
