//! `igl bench cluster`: the e2e benchmark (AU POST → SG stored, AU `accepted`) on the
//! multi-process scale-out shape of [`igl_node::cluster`]: every API group and worker of AU
//! and SG its own `igl node --component …` process of this executable, on PostgreSQL +
//! RabbitMQ + S3, with a pair of `igl channel` processes.
//!
//! `--layout compact` runs each node as one API process plus two processes that each run
//! every worker, instead. `--curve GROUP=1,2,3` repeats the run with that many replicas of one process group (a
//! fresh cluster each time) to show whether adding replicas of it raises throughput. After
//! each run the CPU seconds used by every process group are printed: on a saturated
//! machine they say where the time goes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use igl_node::cluster::{
    Cluster, ClusterOptions, Group, S3Target, compact_layout, default_layout, set_replicas,
};
use serde::Serialize;

use super::e2e::{Load, Ramp, StepResult, Target, run_steps};
use super::report::Environment;

/// Arguments of `igl bench cluster`.
#[derive(Debug, Args)]
pub struct ClusterBenchArgs {
    /// Messages per second posted to AU (with --ramp: the first step's rate).
    #[arg(long, default_value_t = 300)]
    pub rate: u64,
    /// Measured seconds (per step with --ramp).
    #[arg(long, default_value_t = 15)]
    pub duration: u64,
    /// Seconds of load before measuring (per step with --ramp).
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// Maximum POSTs in flight.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Find the highest rate sustained with p99 ≤ 1 s (steps of increasing rate).
    #[arg(long)]
    pub ramp: bool,
    /// With --ramp: rate multiplier between steps.
    #[arg(long, default_value_t = 1.5, requires = "ramp")]
    pub ramp_factor: f64,
    /// With --ramp: the highest rate tried.
    #[arg(long, default_value_t = 20_000, requires = "ramp")]
    pub max_rate: u64,
    /// PostgreSQL database for both nodes and the channel medium (fresh schemas, dropped
    /// after).
    #[arg(long, value_name = "URL", env = "IGL_BENCH_DATABASE_URL")]
    pub database_url: String,
    /// RabbitMQ vhost for both nodes' job queues (fresh queue prefixes, deleted after).
    #[arg(long, value_name = "URL", env = "IGL_BENCH_AMQP_URL")]
    pub amqp_url: String,
    /// Replicas per process group, e.g. `router=3,processor=1` (groups: api, processor,
    /// router, poller, subscriber, retriever, spider, spreader, deliverer, relay; default
    /// two of processor, router, retriever, spider, deliverer and relay, one of the rest;
    /// with `--layout compact`: api, workers).
    #[arg(long, value_name = "GROUP=N,…", default_value = "")]
    pub replicas: String,
    /// The process layout of each node: one process per API group and worker
    /// (`per-component`), or one API process plus `workers` processes that each run every
    /// worker and the relay (`compact`, two replicas by default: `--replicas workers=N`).
    #[arg(long, value_enum, default_value = "per-component")]
    pub layout: Layout,
    /// Repeat the run with each replica count of one group, e.g. `processor=1,2,3`.
    #[arg(long, value_name = "GROUP=N,N,…")]
    pub curve: Option<String>,
    /// The processes' log filter.
    #[arg(long, default_value = "warn")]
    pub log_filter: String,
    /// Keep the configuration files and process logs (printed at the end).
    #[arg(long)]
    pub keep: bool,
    /// Also write the result as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// The process layout `igl bench cluster` starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Layout {
    /// [`default_layout`]: every API group and worker its own process.
    PerComponent,
    /// [`compact_layout`]: the APIs in one process, all workers in each of the others.
    Compact,
}

impl Layout {
    fn groups(self) -> Vec<Group> {
        match self {
            Self::PerComponent => default_layout(),
            Self::Compact => compact_layout(2),
        }
    }
}

#[derive(Debug, Serialize)]
struct ClusterRun {
    /// Replicas of each process group, per node.
    replicas: BTreeMap<String, usize>,
    processes: usize,
    steps: Vec<StepResult>,
    highest_sustained_rate: Option<u64>,
    /// CPU seconds by `node/group` over the whole run (both nodes and the channel).
    cpu_seconds: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize)]
struct ClusterResult {
    benchmark: &'static str,
    shape: &'static str,
    runs: Vec<ClusterRun>,
    environment: Environment,
}

/// `processor=1,2,3` → (`processor`, [1, 2, 3]).
fn parse_curve(spec: &str) -> anyhow::Result<(String, Vec<usize>)> {
    let (group, counts) = spec
        .split_once('=')
        .with_context(|| format!("--curve {spec:?} is not GROUP=N,N,…"))?;
    let counts = counts
        .split(',')
        .map(|count| {
            count
                .trim()
                .parse::<usize>()
                .with_context(|| format!("--curve {spec:?}: {count:?} is not a number"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!counts.is_empty(), "--curve {spec:?} names no count");
    Ok((group.trim().to_owned(), counts))
}

async fn run_once(
    args: &ClusterBenchArgs,
    s3: &S3Target,
    replicas: &str,
    keep: bool,
) -> anyhow::Result<ClusterRun> {
    let mut layout = args.layout.groups();
    set_replicas(&mut layout, replicas)?;
    let directory = tempfile::Builder::new()
        .prefix("igl-bench-cluster-")
        .tempdir()?;
    let mut options = ClusterOptions::new(
        std::env::current_exe().context("cannot find this executable")?,
        directory.path().to_path_buf(),
        args.database_url.clone(),
        args.amqp_url.clone(),
        s3.clone(),
    );
    options.layout = layout.clone();
    options.log_filter = args.log_filter.clone();
    let mut cluster = Cluster::start(options).await?;
    let replicas: BTreeMap<String, usize> = layout
        .iter()
        .map(|group| (group.name.clone(), group.replicas))
        .collect();
    println!(
        "\n{} processes; replicas per node: {}",
        cluster.process_names().len(),
        replicas
            .iter()
            .map(|(name, count)| format!("{name}={count}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let target = Target {
        au_urls: cluster.au.api_urls.clone(),
        au_token: cluster.au.token.clone(),
        au: cluster.au.storage.clone(),
        sg: cluster.sg.storage.clone(),
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let load = Load {
        duration: args.duration,
        warmup: args.warmup,
        concurrency: args.concurrency,
    };
    let ramp = args.ramp.then_some(Ramp {
        factor: args.ramp_factor,
        max_rate: args.max_rate,
    });
    let result = run_steps(&target, &client, args.rate, &load, ramp).await;
    let cpu = cluster.cpu_by_group();
    let check = cluster.check_running();
    let processes = cluster.process_names().len();
    let cleanup = cluster.cleanup().await;
    if keep {
        println!(
            "configuration and logs kept in {}",
            directory.keep().display()
        );
    }
    let (steps, highest) = result?;
    check?;
    cleanup?;
    let total: f64 = cpu.values().sum();
    println!("CPU seconds by process group (whole run, {total:.1} s in all):");
    let mut by_use: Vec<(&String, &f64)> = cpu.iter().collect();
    by_use.sort_by(|a, b| b.1.total_cmp(a.1));
    for (group, seconds) in by_use {
        println!(
            "  {group:<16} {seconds:>7.1} s  {:>5.1}%",
            seconds / total.max(f64::EPSILON) * 100.0
        );
    }
    Ok(ClusterRun {
        replicas,
        processes,
        steps,
        highest_sustained_rate: highest,
        cpu_seconds: cpu,
    })
}

/// Runs the benchmark.
pub async fn run_cluster_bench(args: ClusterBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.rate > 0, "--rate must be positive");
    anyhow::ensure!(
        !args.ramp || args.ramp_factor > 1.0,
        "--ramp-factor must be greater than 1"
    );
    let s3 = S3Target::from_env("IGL_BENCH_S3_").context(
        "set IGL_BENCH_S3_ENDPOINT, IGL_BENCH_S3_BUCKET, IGL_BENCH_S3_ACCESS_KEY and \
         IGL_BENCH_S3_SECRET_KEY (and IGL_BENCH_S3_REGION) to an S3 server and bucket",
    )?;
    let environment = Environment::detect();
    println!(
        "cluster benchmark (multi-process: AU POST -> SG stored, AU accepted; latencies in ms): postgres + rabbitmq + s3, {} duration={}s warmup={}s cores={} commit={}",
        if args.ramp { "ramp" } else { "constant rate" },
        args.duration,
        args.warmup,
        environment.cores,
        environment.git_commit.as_deref().unwrap_or("unknown")
    );
    let mut runs = Vec::new();
    match &args.curve {
        None => runs.push(run_once(&args, &s3, &args.replicas, args.keep).await?),
        Some(curve) => {
            let (group, counts) = parse_curve(curve)?;
            for count in counts {
                let replicas = if args.replicas.is_empty() {
                    format!("{group}={count}")
                } else {
                    format!("{},{group}={count}", args.replicas)
                };
                runs.push(run_once(&args, &s3, &replicas, args.keep).await?);
            }
            println!("\nreplica curve of {group}:");
            for run in &runs {
                let count = run.replicas.get(&group).copied().unwrap_or_default();
                if !args.ramp {
                    // One constant-rate step per run: its latencies are the curve.
                    let step = run.steps.last().map_or_else(String::new, |s| s.summary());
                    println!("  {group}={count:<3} {step}");
                    continue;
                }
                let best = run
                    .steps
                    .iter()
                    .map(|step| step.stored_per_second)
                    .fold(0.0, f64::max);
                println!(
                    "  {group}={count:<3} highest sustained {:>6}  best stored/s {best:>7.0}",
                    run.highest_sustained_rate
                        .map_or("none".to_owned(), |rate| format!("{rate}/s")),
                );
            }
        }
    }
    if let Some(path) = &args.json {
        let result = ClusterResult {
            benchmark: "cluster",
            shape: "multi-process",
            runs,
            environment,
        };
        std::fs::write(path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_curve;

    #[test]
    fn curves_parse() {
        assert_eq!(
            parse_curve("processor=1, 2,3").unwrap(),
            ("processor".to_owned(), vec![1, 2, 3])
        );
        assert!(parse_curve("processor").is_err());
        assert!(parse_curve("processor=a").is_err());
    }
}
