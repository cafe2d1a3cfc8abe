//! `igl bench queue`: job-queue throughput through the real worker runtime.
//!
//! Three phases on a fresh database, each timed separately:
//! 1. `enqueue`: producers enqueue `--jobs` jobs in batches of `--batch`;
//! 2. `claim+ack`: `--workers` worker loops (the node's runtime, no-op handler) drain them;
//! 3. `pipeline`: producers and workers run at the same time; the clock stops when the
//!    last job is acked. This is the "enqueue + claim + ack" figure.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use clap::Args;
use igl_core::{ClaimedJob, JobQueue, NewJob, QueueName};
use igl_store::{DatabaseOptions, open_storage};
use igl_workers::{Handled, JobError, JobHandler, RetryPolicy, WorkerConfig, WorkerSet};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::report::Environment;

/// Arguments of `igl bench queue`.
#[derive(Debug, Args)]
pub struct QueueBenchArgs {
    /// Database to benchmark: `sqlite://…` or `postgres://…`. Default: a new SQLite file in a
    /// temporary directory. A PostgreSQL run uses a fresh schema that is dropped afterwards.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Benchmark the RabbitMQ job queue at this URL (`amqp://…`) instead of the database's
    /// `jobs` table. The queues get a fresh prefix and are deleted afterwards.
    #[arg(long, value_name = "URL")]
    pub amqp_url: Option<String>,
    /// With `--amqp-url`: enqueue through the SQL outbox (the database of `--database-url`)
    /// and an outbox relay, as a node in the broker shape does, instead of publishing
    /// directly.
    #[arg(long, requires = "amqp_url")]
    pub via_outbox: bool,
    /// Concurrent worker loops.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Concurrent producers.
    #[arg(long, default_value_t = 2)]
    pub producers: usize,
    /// Jobs per phase.
    #[arg(long, default_value_t = 100_000)]
    pub jobs: u64,
    /// Jobs per enqueue call and per claim.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Also write the result as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct PhaseResult {
    phase: &'static str,
    jobs: u64,
    seconds: f64,
    jobs_per_second: f64,
}

#[derive(Debug, Serialize)]
struct QueueBenchResult {
    benchmark: &'static str,
    backend: String,
    workers: usize,
    producers: usize,
    batch: usize,
    phases: Vec<PhaseResult>,
    environment: Environment,
}

/// Counts handled jobs and signals when a target is reached.
#[derive(Debug)]
struct CountingHandler {
    handled: AtomicU64,
    target: AtomicU64,
    reached: Notify,
}

#[async_trait]
impl JobHandler for CountingHandler {
    fn name(&self) -> &'static str {
        "bench"
    }

    async fn handle(&self, _job: &ClaimedJob) -> Result<Handled, JobError> {
        let handled = self.handled.fetch_add(1, Ordering::Relaxed) + 1;
        if handled >= self.target.load(Ordering::Relaxed) {
            self.reached.notify_one();
        }
        Ok(Handled::Done)
    }
}

const QUEUE: QueueName = QueueName::from_static("bench");

/// Runs the benchmark and prints a table (and JSON when asked).
pub async fn run_queue_bench(args: QueueBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.workers > 0 && args.producers > 0,
        "workers and producers must be > 0"
    );
    anyhow::ensure!(
        args.batch > 0 && args.jobs > 0,
        "batch and jobs must be > 0"
    );
    let directory = tempfile::tempdir().context("cannot create a temporary directory")?;
    let (url, schema) = match &args.database_url {
        Some(url) => (url.clone(), url.starts_with("postgres").then(bench_schema)),
        None => (
            format!("sqlite://{}", directory.path().join("bench.db").display()),
            None,
        ),
    };
    let mut backend = if url.starts_with("postgres") {
        "postgres"
    } else {
        "sqlite"
    }
    .to_owned();
    let options = DatabaseOptions {
        url: url.clone(),
        max_connections: u32::try_from(args.workers + args.producers + 4).unwrap_or(64),
        schema: schema.clone(),
        connect_timeout: Duration::from_secs(10),
    };
    let storage = open_storage(&options)
        .await
        .context("cannot open the database")?;
    let mut queue: Arc<dyn JobQueue> = storage.clone();
    let relay_stop = CancellationToken::new();
    let mut broker = None;
    if let Some(amqp_url) = &args.amqp_url {
        let mut options = igl_queue::AmqpOptions::new(amqp_url.clone());
        options.prefix = format!("bench{}.", uuid::Uuid::new_v4().simple());
        options.prefetch = u16::try_from(args.batch * 2).unwrap_or(u16::MAX);
        options.queues = vec![QUEUE];
        options.connection_name = "igl-bench".into();
        let amqp = igl_queue::AmqpQueue::connect(options)
            .await
            .context("cannot connect to the broker")?;
        if args.via_outbox {
            backend = format!("amqp via {backend} outbox");
            let relay = igl_queue::OutboxRelay::new(
                storage.clone(),
                amqp.clone(),
                vec![QUEUE],
                igl_queue::RelayConfig::default(),
            );
            tokio::spawn(relay.run(relay_stop.clone()));
            queue = Arc::new(igl_queue::BrokeredStorage::new(
                storage.clone(),
                amqp.clone(),
            ));
        } else {
            backend = "amqp".to_owned();
            queue = Arc::new(amqp.clone());
        }
        broker = Some(amqp);
    }

    let enqueue = timed("enqueue", args.jobs, produce(&queue, &args)).await?;
    let handler = Arc::new(CountingHandler {
        handled: AtomicU64::new(0),
        target: AtomicU64::new(args.jobs),
        reached: Notify::new(),
    });
    let drain = timed("claim+ack", args.jobs, consume(&queue, &handler, &args)).await?;
    handler.handled.store(0, Ordering::Relaxed);
    let pipeline = timed("pipeline", args.jobs, async {
        let (produced, consumed) =
            tokio::join!(produce(&queue, &args), consume(&queue, &handler, &args));
        produced.and(consumed)
    })
    .await?;
    let depth = queue.depth(&QUEUE).await?;
    anyhow::ensure!(
        depth.ready + depth.in_flight + depth.dead == 0,
        "jobs left over: {depth:?}"
    );
    relay_stop.cancel();
    if let Some(broker) = broker {
        broker.delete_topology(&[QUEUE]).await?;
        broker.close().await;
    }

    let result = QueueBenchResult {
        benchmark: "queue",
        backend,
        workers: args.workers,
        producers: args.producers,
        batch: args.batch,
        phases: vec![enqueue, drain, pipeline],
        environment: Environment::detect(),
    };
    print_table(&result);
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&result)?;
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(schema) = schema {
        drop_schema(&url, &schema).await?;
    }
    Ok(())
}

fn bench_schema() -> String {
    format!("bench_{}", uuid::Uuid::new_v4().simple())
}

async fn drop_schema(url: &str, schema: &str) -> anyhow::Result<()> {
    igl_store::PostgresStore::drop_schema(url, schema)
        .await
        .with_context(|| format!("cannot drop benchmark schema {schema}"))
}

async fn timed<F>(phase: &'static str, jobs: u64, work: F) -> anyhow::Result<PhaseResult>
where
    F: Future<Output = anyhow::Result<()>>,
{
    let start = Instant::now();
    work.await?;
    let seconds = start.elapsed().as_secs_f64();
    Ok(PhaseResult {
        phase,
        jobs,
        seconds,
        jobs_per_second: jobs as f64 / seconds,
    })
}

/// Enqueues `args.jobs` jobs from `args.producers` tasks in batches of `args.batch`.
async fn produce(queue: &Arc<dyn JobQueue>, args: &QueueBenchArgs) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut producers = tokio::task::JoinSet::new();
    for _ in 0..args.producers {
        let queue = queue.clone();
        let next = next.clone();
        let (total, batch) = (args.jobs, args.batch as u64);
        producers.spawn(async move {
            loop {
                let start = next.fetch_add(batch, Ordering::Relaxed);
                if start >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                let jobs: Vec<NewJob> = (start..(start + batch).min(total))
                    .map(|n| NewJob::new(QUEUE, serde_json::json!({"type": "bench.v1", "n": n})))
                    .collect();
                queue.enqueue(&jobs).await?;
            }
        });
    }
    while let Some(result) = producers.join_next().await {
        result??;
    }
    Ok(())
}

/// Runs `args.workers` worker loops until the handler has seen `args.jobs` jobs.
async fn consume(
    queue: &Arc<dyn JobQueue>,
    handler: &Arc<CountingHandler>,
    args: &QueueBenchArgs,
) -> anyhow::Result<()> {
    let root = CancellationToken::new();
    let mut workers = WorkerSet::new(&root);
    let config = WorkerConfig {
        claim_batch: args.batch,
        concurrency: args.batch,
        lease: Duration::from_secs(60),
        idle_poll: Duration::from_millis(50),
        retry: RetryPolicy::default(),
        ..WorkerConfig::new(QUEUE)
    };
    for _ in 0..args.workers {
        workers.spawn(queue.clone(), handler.clone(), config.clone());
    }
    while handler.handled.load(Ordering::Relaxed) < args.jobs {
        handler.reached.notified().await;
    }
    // Wait until the last batches are acked, not only handled.
    loop {
        let depth = queue.depth(&QUEUE).await?;
        if depth.ready + depth.in_flight == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    workers.shutdown(Duration::from_secs(10)).await;
    Ok(())
}

fn print_table(result: &QueueBenchResult) {
    println!(
        "queue benchmark: backend={} workers={} producers={} batch={} cores={} commit={}",
        result.backend,
        result.workers,
        result.producers,
        result.batch,
        result.environment.cores,
        result
            .environment
            .git_commit
            .as_deref()
            .unwrap_or("unknown"),
    );
    println!(
        "{:<10} {:>10} {:>10} {:>12}",
        "phase", "jobs", "seconds", "jobs/s"
    );
    for phase in &result.phases {
        println!(
            "{:<10} {:>10} {:>10.3} {:>12.0}",
            phase.phase, phase.jobs, phase.seconds, phase.jobs_per_second
        );
    }
    if !result.environment.release_build {
        println!("note: debug build; use `cargo run --release` for meaningful figures");
    }
}
