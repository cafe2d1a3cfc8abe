use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use igl_core::{ClaimedJob, JobId, JobQueue, JobReceipt, StoreError};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, error, info, info_span, warn};

use crate::handler::error_chain;
use crate::metrics::WorkerMetrics;
use crate::{Handled, JobError, JobHandler, RetryPolicy, WorkerConfig, WorkerError};

/// Backoff after failed queue calls of the runtime itself (claim, ack): 50 ms doubling to
/// 5 s, with equal jitter. `max_attempts` is unused: the loop never gives up.
const STORAGE_BACKOFF: RetryPolicy = RetryPolicy {
    max_attempts: u32::MAX,
    base_delay: Duration::from_millis(50),
    max_delay: Duration::from_secs(5),
};

/// How many times [`run_worker`] tries to ack a batch before leaving its jobs to come back
/// after their leases (about 0.75 s of backoff in all).
const ACK_ATTEMPTS: u32 = 5;

/// The shortest interval between two lease extensions of a batch.
const MIN_HEARTBEAT: Duration = Duration::from_millis(10);

/// What [`drain`] did, summed over every batch it claimed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Jobs claimed (each claim of a job counts).
    pub claimed: u64,
    /// Jobs handled successfully (acked by the runtime or by the handler).
    pub done: u64,
    /// Failed jobs put back on the queue for a later attempt.
    pub retried: u64,
    /// Jobs moved to the dead-letter store.
    pub dead_lettered: u64,
    /// Jobs whose lease was lost before the runtime could ack, retry or dead-letter them
    /// (another consumer took them over after the lease expired).
    pub leases_lost: u64,
}

impl DrainReport {
    fn add(&mut self, other: &Self) {
        self.claimed += other.claimed;
        self.done += other.done;
        self.retried += other.retried;
        self.dead_lettered += other.dead_lettered;
        self.leases_lost += other.leases_lost;
    }
}

/// Runs one worker: claims jobs of `config.queue` and hands them to `handler` until
/// `shutdown` is cancelled.
///
/// The worker holds at most `max(concurrency, claim_batch)` jobs (claimed and not yet
/// acked, retried or dead-lettered) and handles up to `config.concurrency` of them at once,
/// each on its own task inside a `job` span. It claims again (up to `claim_batch`) as soon
/// as a quarter of that capacity is free, so a slow job holds up its own slot only, never
/// the next claim. A batched handler ([`JobHandler::batched`]) gets each claim as one batch
/// and the worker claims the next one when the batch is finished.
/// - a job claimed more than `retry.max_attempts` times (its earlier holders crashed or lost
///   the lease) is dead-lettered without calling the handler, so a poison job that kills
///   the process cannot do so forever;
/// - [`Handled::Done`] jobs are acked together: before every claim, whenever the worker
///   runs out of work, and (while the queue is empty) once a quarter of the capacity is
///   done;
///   [`Handled::AckedInTransaction`] jobs are left alone;
/// - [`JobError::Transient`] (and a handler that panics or exceeds `job_timeout`) is
///   retried after [`RetryPolicy::backoff`], [`JobError::RetryAfter`] after its own delay,
///   and both are dead-lettered instead when the attempt was the last one;
///   [`JobError::Permanent`] is dead-lettered at once;
/// - the leases of held jobs are extended every third of `config.lease`, also while the
///   worker waits for a claim or an ack (a slow queue call never lets them run out).
///
/// When a claim comes back short (the queue had no more due jobs), the worker claims again
/// only after [`JobQueue::wait_for_jobs`] returns (a wake-up, or `config.idle_poll` for
/// scheduled retries): a wake-up from an enqueue meanwhile ends the wait at once, and an
/// idle queue costs no empty claims.
///
/// On `shutdown` the worker stops claiming, finishes and acks the jobs it holds, then
/// returns (graceful shutdown). To bound the wait, the caller can drop the future after a
/// grace period; the jobs it held come back after their leases.
///
/// Storage errors never stop the worker: a failed claim is logged, counted in
/// `igl_worker_storage_errors_total` and retried after an exponential backoff (50 ms to
/// 5 s, reset by the next successful claim), whatever its kind. Exiting on a
/// non-transient error would make the supervisor stop the whole node (STYLE R29), APIs
/// included, over what is usually a blip or one bad row; an operator sees the error logs,
/// the counter and `/readyz` instead. A failed ack is retried a few times, then left: the
/// jobs come back after their leases and handlers are idempotent.
///
/// # Errors
///
/// [`WorkerError::InvalidConfig`] when `config` fails [`WorkerConfig::validate`]; nothing
/// is claimed then. Otherwise the worker returns `Ok(())` once `shutdown` is cancelled.
pub async fn run_worker(
    queue: Arc<dyn JobQueue>,
    handler: Arc<dyn JobHandler>,
    config: WorkerConfig,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let worker = handler.name();
    config
        .validate()
        .map_err(|reason| WorkerError::InvalidConfig { worker, reason })?;
    let span = info_span!("worker", worker, queue = %config.queue);
    let runtime = Arc::new(Runtime::new(queue, handler, config));
    runtime.run(shutdown).instrument(span).await;
    Ok(())
}

/// Handles every job of `config.queue` that is due now, then returns: claims and handles
/// batches (exactly as [`run_worker`] does) until a claim returns nothing, without waiting
/// for new or scheduled jobs. Jobs retried with a delay stay scheduled, so a test can check
/// the backoff and drain again once they are due.
///
/// This is how tests run workers deterministically instead of sleeping.
///
/// # Errors
///
/// [`WorkerError::InvalidConfig`] for an invalid `config`; [`WorkerError::Store`] for the
/// first failed queue call (claim, ack, retry or dead-letter) — after finishing the batch
/// in which it happened.
pub async fn drain(
    queue: &Arc<dyn JobQueue>,
    handler: &Arc<dyn JobHandler>,
    config: &WorkerConfig,
) -> Result<DrainReport, WorkerError> {
    let worker = handler.name();
    config
        .validate()
        .map_err(|reason| WorkerError::InvalidConfig { worker, reason })?;
    let span = info_span!("drain", worker, queue = %config.queue);
    let runtime = Arc::new(Runtime::new(
        Arc::clone(queue),
        Arc::clone(handler),
        config.clone(),
    ));
    runtime.drain().instrument(span).await
}

/// What one worker needs, shared by the loop and its job tasks.
#[derive(Debug)]
struct Runtime {
    queue: Arc<dyn JobQueue>,
    handler: Arc<dyn JobHandler>,
    config: WorkerConfig,
    metrics: WorkerMetrics,
}

/// The result of one batch.
#[derive(Debug, Default)]
struct BatchReport {
    counts: DrainReport,
    /// The first failed queue call, if any.
    storage_error: Option<StoreError>,
}

/// What a handler made of one job: its result, or a panic or timeout (retried).
#[derive(Debug)]
enum Attempt {
    Handled(Result<Handled, JobError>),
    Failed(String),
}

/// The span of one job's handling.
fn job_span(worker: &'static str, job: &ClaimedJob) -> tracing::Span {
    info_span!(
        "job",
        worker,
        queue = %job.queue,
        job.id = job.id.0,
        attempt = job.attempt,
    )
}

/// What became of one job.
#[derive(Debug)]
enum JobOutcome {
    /// Handled; the runtime acks it with the batch.
    Ack(JobReceipt),
    /// Handled and acked by the handler.
    AckedInTransaction,
    Retried,
    DeadLettered,
    /// The retry or dead-letter call found the lease gone.
    LeaseLost,
    /// The retry or dead-letter call failed; the job comes back after its lease.
    StorageFailed(StoreError),
}

impl Runtime {
    fn new(queue: Arc<dyn JobQueue>, handler: Arc<dyn JobHandler>, config: WorkerConfig) -> Self {
        let metrics = WorkerMetrics::new(&config.queue, handler.name());
        Self {
            queue,
            handler,
            config,
            metrics,
        }
    }

    /// How many jobs the worker holds at most (claimed and not yet acked, retried or
    /// dead-lettered), and how many must be free before it claims again. A batched handler
    /// takes a whole claim at once, so its worker claims only when it holds nothing.
    fn capacity(&self) -> (usize, usize) {
        if self.handler.batched() {
            (self.config.claim_batch, self.config.claim_batch)
        } else {
            let capacity = self.config.concurrency.max(self.config.claim_batch);
            (capacity, (capacity / 4).max(1))
        }
    }

    async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let (capacity, refill) = self.capacity();
        info!(
            concurrency = self.config.concurrency,
            claim_batch = self.config.claim_batch,
            capacity,
            "worker started"
        );
        let mut flight = Flight::default();
        let mut heartbeat = self.heartbeat();
        let mut failed_claims: u32 = 0;
        // The end of the backoff after a failed claim.
        let mut backoff: Option<tokio::time::Instant> = None;
        // Whether the last claim came back short: the queue had nothing more due, so the
        // next claim waits for a wake-up (an enqueue meanwhile leaves one behind) or
        // `idle_poll` (scheduled retries).
        let mut queue_empty = false;
        let mut stopping = false;
        // Lets a broker start pushing before the first claim (RabbitMQ starts the queue's
        // consumer here), so a worker that starts on a backlog, and never goes idle, is not
        // left pulling one job per round trip; a no-op wait elsewhere.
        self.queue
            .wait_for_jobs(&self.config.queue, Duration::ZERO)
            .await;
        loop {
            stopping |= shutdown.is_cancelled();
            // Everything that finished meanwhile first, so that the next claim (and the
            // ack before it) covers all the room there is: fast handlers claim and ack in
            // whole batches, like slow ones.
            while let Some(joined) = flight.running.try_join_next_with_id() {
                flight.record(joined);
            }
            flight.start(&self);
            let room = flight.room(capacity);
            if !stopping && !queue_empty && backoff.is_none() && room >= refill {
                // Acking first frees the leases (and a broker's prefetch window) at once.
                self.flush_acks(&mut flight, &mut heartbeat, ACK_ATTEMPTS)
                    .await;
                let max = flight.room(capacity).min(self.config.claim_batch);
                let claimed = self
                    .beating(&mut heartbeat, &mut flight.held, self.claim(max))
                    .await;
                match claimed {
                    Ok(jobs) => {
                        failed_claims = 0;
                        queue_empty = jobs.len() < max;
                        flight.add(jobs);
                    }
                    Err(store_error) => {
                        self.storage_error("claim", &store_error);
                        failed_claims = failed_claims.saturating_add(1);
                        let delay = STORAGE_BACKOFF.backoff(failed_claims, &mut rand::rng());
                        backoff = Some(tokio::time::Instant::now() + delay);
                    }
                }
                continue;
            }
            if flight.running.is_empty() {
                // Idle: nothing claimed is unfinished.
                self.flush_acks(&mut flight, &mut heartbeat, ACK_ATTEMPTS)
                    .await;
                if stopping {
                    break;
                }
                if let Some(until) = backoff {
                    tokio::select! {
                        () = shutdown.cancelled() => stopping = true,
                        () = tokio::time::sleep_until(until) => backoff = None,
                    }
                } else if queue_empty {
                    tokio::select! {
                        biased;
                        () = shutdown.cancelled() => stopping = true,
                        () = self.queue.wait_for_jobs(&self.config.queue, self.config.idle_poll) => {
                            queue_empty = false;
                        }
                    }
                }
                continue;
            }
            let may_wait_for_jobs = !stopping && queue_empty && backoff.is_none() && room >= refill;
            tokio::select! {
                joined = flight.running.join_next_with_id() => {
                    if let Some(joined) = joined {
                        flight.record(joined);
                    }
                    // The next claim acks first; without one coming (the queue is empty),
                    // done jobs are released once a quarter of the capacity is done.
                    if queue_empty && flight.to_ack.len() >= refill {
                        self.flush_acks(&mut flight, &mut heartbeat, ACK_ATTEMPTS).await;
                    }
                }
                _ = heartbeat.tick() => self.extend_leases(&mut flight.held).await,
                () = self.queue.wait_for_jobs(&self.config.queue, self.config.idle_poll),
                    if may_wait_for_jobs => queue_empty = false,
                () = async { tokio::time::sleep_until(backoff.unwrap_or_else(tokio::time::Instant::now)).await },
                    if backoff.is_some() => backoff = None,
                () = shutdown.cancelled(), if !stopping => stopping = true,
            }
        }
        info!("worker stopped");
    }

    async fn drain(self: Arc<Self>) -> Result<DrainReport, WorkerError> {
        let mut total = DrainReport::default();
        loop {
            let jobs = self
                .claim(self.config.claim_batch)
                .await
                .inspect_err(|store_error| {
                    self.storage_error("claim", store_error);
                })?;
            if jobs.is_empty() {
                debug!(?total, "queue drained");
                return Ok(total);
            }
            let batch = self.process_batch(jobs, 1).await;
            total.add(&batch.counts);
            if let Some(store_error) = batch.storage_error {
                return Err(store_error.into());
            }
        }
    }

    async fn claim(&self, max: usize) -> Result<Vec<ClaimedJob>, StoreError> {
        self.queue
            .claim(&self.config.queue, max, self.config.lease)
            .await
    }

    /// Awaits `operation` (a claim, an ack) while extending the leases in `held` on every
    /// `heartbeat` tick, so that a slow queue call never lets the leases of the other jobs
    /// the worker holds run out.
    ///
    /// The operation keeps being driven while the extensions run: it may hold the very
    /// connection they wait for (SQLite has one writer), and an operation left unpolled
    /// would never release it.
    async fn beating<T>(
        &self,
        heartbeat: &mut tokio::time::Interval,
        held: &mut HashMap<JobId, JobReceipt>,
        operation: impl Future<Output = T>,
    ) -> T {
        tokio::pin!(operation);
        loop {
            tokio::select! {
                biased;
                output = &mut operation => return output,
                _ = heartbeat.tick() => {
                    let extend = self.extend_leases(held);
                    tokio::pin!(extend);
                    tokio::select! {
                        biased;
                        output = &mut operation => {
                            extend.await;
                            return output;
                        }
                        () = &mut extend => {}
                    }
                }
            }
        }
    }

    /// Acks the done jobs of `flight` in one call (retrying up to `attempts` times, leases
    /// extended meanwhile) and releases them.
    async fn flush_acks(
        &self,
        flight: &mut Flight,
        heartbeat: &mut tokio::time::Interval,
        attempts: u32,
    ) {
        let to_ack = flight.take_acks();
        if to_ack.is_empty() {
            return;
        }
        let acked = self
            .beating(heartbeat, &mut flight.held, self.ack(&to_ack, attempts))
            .await;
        flight.record_acks(to_ack.len(), acked);
    }

    /// Extends the leases of held jobs every third of the lease.
    fn heartbeat(&self) -> tokio::time::Interval {
        let period = (self.config.lease / 3).max(MIN_HEARTBEAT);
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        heartbeat
    }

    /// Handles a claimed batch with up to `concurrency` jobs in flight, extending the leases
    /// of unfinished jobs meanwhile, then acks the `Done` ones in one call.
    async fn process_batch(
        self: &Arc<Self>,
        jobs: Vec<ClaimedJob>,
        ack_attempts: u32,
    ) -> BatchReport {
        let mut flight = Flight::default();
        flight.add(jobs);
        let mut heartbeat = self.heartbeat();
        loop {
            flight.start(self);
            tokio::select! {
                joined = flight.running.join_next_with_id() => {
                    // Nothing running means nothing waiting either (concurrency >= 1).
                    let Some(joined) = joined else { break };
                    flight.record(joined);
                }
                _ = heartbeat.tick() => self.extend_leases(&mut flight.held).await,
            }
        }
        self.flush_acks(&mut flight, &mut heartbeat, ack_attempts)
            .await;
        flight.report
    }

    /// Acks `receipts`, trying up to `attempts` times with backoff.
    async fn ack(&self, receipts: &[JobReceipt], attempts: u32) -> Result<u64, StoreError> {
        let mut failures = 0;
        loop {
            match self.queue.ack(receipts).await {
                Ok(acked) => return Ok(acked),
                Err(store_error) => {
                    self.storage_error("ack", &store_error);
                    failures += 1;
                    if failures >= attempts {
                        return Err(store_error);
                    }
                    let delay = STORAGE_BACKOFF.backoff(failures, &mut rand::rng());
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Extends the leases still held by the batch; forgets those that are gone.
    ///
    /// A lease is gone either because the job's own task already acked (in its
    /// transaction), retried or dead-lettered it, or because it expired: the first is
    /// normal, and the second is reported when the job's outcome is recorded (its ack,
    /// retry or dead-letter finds the lease gone), so neither is a warning here.
    async fn extend_leases(&self, held: &mut HashMap<JobId, JobReceipt>) {
        let receipts: Vec<JobReceipt> = held.values().copied().collect();
        for receipt in receipts {
            match self.queue.extend_lease(receipt, self.config.lease).await {
                Ok(true) => {}
                Ok(false) => {
                    debug!(job.id = receipt.id.0, "lease no longer held");
                    held.remove(&receipt.id);
                }
                Err(store_error) => {
                    // Best effort: the next heartbeat tries again.
                    self.storage_error("extend_lease", &store_error);
                    return;
                }
            }
        }
    }

    /// Dead-letters, without handling it, a job claimed more often than the policy allows
    /// (its earlier holders crashed or lost the lease): `None` for every other job.
    async fn dead_letter_poison(&self, job: &ClaimedJob) -> Option<JobOutcome> {
        let max_attempts = self.config.retry.max_attempts;
        if job.attempt <= max_attempts {
            return None;
        }
        let last_error = job.last_error.as_deref().unwrap_or("none recorded");
        let reason = format!("exceeded {max_attempts} attempts; last error: {last_error}");
        error!(
            error = %reason,
            "job dead-lettered without handling, earlier attempts did not finish"
        );
        Some(self.dead_letter(job, &reason).await)
    }

    /// Handles one job (inside its span) and records a failure.
    async fn handle_job(self: Arc<Self>, job: ClaimedJob) -> Vec<(JobId, JobOutcome)> {
        if let Some(outcome) = self.dead_letter_poison(&job).await {
            return vec![(job.id, outcome)];
        }
        let started = Instant::now();
        let handled = tokio::time::timeout(
            self.config.job_timeout,
            AssertUnwindSafe(self.handler.handle(&job)).catch_unwind(),
        )
        .await;
        let attempt = match handled {
            Ok(Ok(result)) => Attempt::Handled(result),
            Ok(Err(panic)) => {
                Attempt::Failed(format!("handler panicked: {}", panic_message(&*panic)))
            }
            Err(_elapsed) => Attempt::Failed(format!(
                "handler timed out after {:?}",
                self.config.job_timeout
            )),
        };
        let outcome = self.finish(&job, attempt, started.elapsed()).await;
        vec![(job.id, outcome)]
    }

    /// Handles a claimed batch with one call of [`JobHandler::handle_batch`] (inside the
    /// batch's span), then records each job's result in its own span.
    async fn handle_jobs(self: Arc<Self>, jobs: Vec<ClaimedJob>) -> Vec<(JobId, JobOutcome)> {
        let mut outcomes = Vec::with_capacity(jobs.len());
        let mut ready = Vec::with_capacity(jobs.len());
        for job in jobs {
            match self.dead_letter_poison(&job).await {
                Some(outcome) => outcomes.push((job.id, outcome)),
                None => ready.push(job),
            }
        }
        if ready.is_empty() {
            return outcomes;
        }
        let started = Instant::now();
        let handled = tokio::time::timeout(
            self.config.job_timeout,
            AssertUnwindSafe(self.handler.handle_batch(&ready)).catch_unwind(),
        )
        .await;
        let elapsed = started.elapsed();
        let failed = |reason: String| {
            ready
                .iter()
                .map(|_| Attempt::Failed(reason.clone()))
                .collect::<Vec<_>>()
        };
        let attempts = match handled {
            Ok(Ok(results)) if results.len() == ready.len() => {
                results.into_iter().map(Attempt::Handled).collect()
            }
            Ok(Ok(results)) => failed(format!(
                "handler returned {} results for a batch of {} jobs",
                results.len(),
                ready.len()
            )),
            Ok(Err(panic)) => failed(format!("handler panicked: {}", panic_message(&*panic))),
            Err(_elapsed) => failed(format!(
                "handler timed out after {:?}",
                self.config.job_timeout
            )),
        };
        debug!(
            jobs = ready.len(),
            elapsed_ms = elapsed.as_millis() as u64,
            "batch handled"
        );
        for (job, attempt) in ready.iter().zip(attempts) {
            let span = job_span(self.handler.name(), job);
            let outcome = self.finish(job, attempt, elapsed).instrument(span).await;
            outcomes.push((job.id, outcome));
        }
        outcomes
    }

    /// Records what became of one handled job: ack it with the batch, retry it or
    /// dead-letter it.
    async fn finish(&self, job: &ClaimedJob, attempt: Attempt, elapsed: Duration) -> JobOutcome {
        self.metrics.job_duration(elapsed);
        let since_enqueue = igl_domain::Timestamp::now_utc() - job.enqueued_at;
        let queued = Duration::try_from(since_enqueue)
            .unwrap_or_default()
            .saturating_sub(elapsed);
        self.metrics.job_queued(queued);
        match attempt {
            Attempt::Handled(Ok(handled)) => {
                debug!(
                    elapsed_ms = elapsed.as_millis() as u64,
                    queued_ms = queued.as_millis() as u64,
                    ?handled,
                    "job done"
                );
                self.metrics.job_done();
                match handled {
                    Handled::Done => JobOutcome::Ack(job.receipt()),
                    Handled::AckedInTransaction => JobOutcome::AckedInTransaction,
                }
            }
            Attempt::Handled(Err(JobError::Permanent(cause))) => {
                let reason = error_chain(cause.as_ref());
                error!(error = %reason, "job failed permanently, dead-lettered");
                self.dead_letter(job, &reason).await
            }
            Attempt::Handled(Err(JobError::Transient(cause))) => {
                self.retry_or_give_up(job, None, error_chain(cause.as_ref()))
                    .await
            }
            Attempt::Handled(Err(JobError::RetryAfter(delay, cause))) => {
                self.retry_or_give_up(job, Some(delay), error_chain(cause.as_ref()))
                    .await
            }
            Attempt::Failed(reason) => self.retry_or_give_up(job, None, reason).await,
        }
    }

    /// Retries a failed job after `delay` (or the policy's backoff), or dead-letters it when
    /// this was its last attempt.
    async fn retry_or_give_up(
        &self,
        job: &ClaimedJob,
        delay: Option<Duration>,
        reason: String,
    ) -> JobOutcome {
        let max_attempts = self.config.retry.max_attempts;
        if job.attempt >= max_attempts {
            error!(error = %reason, max_attempts, "job failed on its last attempt, dead-lettered");
            return self.dead_letter(job, &reason).await;
        }
        let delay =
            delay.unwrap_or_else(|| self.config.retry.backoff(job.attempt, &mut rand::rng()));
        warn!(error = %reason, ?delay, "job failed, will retry");
        match self.queue.retry(job.receipt(), delay, &reason).await {
            Ok(true) => {
                self.metrics.job_retried();
                JobOutcome::Retried
            }
            Ok(false) => {
                warn!("lease lost before the retry was recorded");
                JobOutcome::LeaseLost
            }
            Err(store_error) => {
                self.storage_error("retry", &store_error);
                JobOutcome::StorageFailed(store_error)
            }
        }
    }

    async fn dead_letter(&self, job: &ClaimedJob, reason: &str) -> JobOutcome {
        match self.queue.dead_letter(job.receipt(), reason).await {
            Ok(true) => {
                self.metrics.job_dead_lettered();
                JobOutcome::DeadLettered
            }
            Ok(false) => {
                warn!("lease lost before the job was dead-lettered");
                JobOutcome::LeaseLost
            }
            Err(store_error) => {
                self.storage_error("dead_letter", &store_error);
                JobOutcome::StorageFailed(store_error)
            }
        }
    }

    fn storage_error(&self, operation: &'static str, store_error: &StoreError) {
        self.metrics.storage_error();
        let chain = error_chain(store_error);
        if store_error.is_transient() {
            warn!(operation, error = %chain, "job queue unavailable");
        } else {
            error!(operation, error = %chain, "job queue failed");
        }
    }
}

/// The jobs a worker holds: claimed and waiting for a free slot, being handled, or handled
/// and waiting for the ack that releases them.
#[derive(Default)]
struct Flight {
    /// Claimed, not started yet (all slots busy).
    waiting: VecDeque<ClaimedJob>,
    running: JoinSet<Vec<(JobId, JobOutcome)>>,
    /// The jobs of each running task, to account for a task that never reports.
    tasks: HashMap<tokio::task::Id, Vec<JobId>>,
    /// Claimed jobs without an outcome yet (waiting or running).
    unfinished: usize,
    /// Every job whose lease the worker still needs (extended by the heartbeat): not yet
    /// finished, or done and waiting in `to_ack`.
    held: HashMap<JobId, JobReceipt>,
    /// Done jobs, acked together.
    to_ack: Vec<JobReceipt>,
    report: BatchReport,
}

impl Flight {
    fn add(&mut self, jobs: Vec<ClaimedJob>) {
        self.report.counts.claimed += jobs.len() as u64;
        self.unfinished += jobs.len();
        for job in jobs {
            self.held.insert(job.id, job.receipt());
            self.waiting.push_back(job);
        }
    }

    /// How many more jobs the worker may claim.
    fn room(&self, capacity: usize) -> usize {
        capacity.saturating_sub(self.unfinished + self.to_ack.len())
    }

    /// Starts waiting jobs while slots are free: each on its own task, or all of them as
    /// one batch for a batched handler.
    fn start(&mut self, runtime: &Arc<Runtime>) {
        if runtime.handler.batched() {
            if self.waiting.is_empty() {
                return;
            }
            let jobs: Vec<ClaimedJob> = self.waiting.drain(..).collect();
            let ids = jobs.iter().map(|job| job.id).collect();
            let span = info_span!("batch", worker = runtime.handler.name(), jobs = jobs.len());
            let task = self
                .running
                .spawn(Arc::clone(runtime).handle_jobs(jobs).instrument(span));
            self.tasks.insert(task.id(), ids);
            return;
        }
        while self.running.len() < runtime.config.concurrency {
            let Some(job) = self.waiting.pop_front() else {
                break;
            };
            let span = job_span(runtime.handler.name(), &job);
            let id = job.id;
            let task = self
                .running
                .spawn(Arc::clone(runtime).handle_job(job).instrument(span));
            self.tasks.insert(task.id(), vec![id]);
        }
    }

    /// Records what a finished task made of its jobs.
    fn record(
        &mut self,
        joined: Result<(tokio::task::Id, Vec<(JobId, JobOutcome)>), tokio::task::JoinError>,
    ) {
        match joined {
            Ok((task, outcomes)) => {
                self.tasks.remove(&task);
                self.unfinished = self.unfinished.saturating_sub(outcomes.len());
                for (job_id, outcome) in outcomes {
                    if !matches!(outcome, JobOutcome::Ack(_)) {
                        self.held.remove(&job_id);
                    }
                    self.report.record(outcome, &mut self.to_ack);
                }
            }
            // Handler panics are caught inside the task, so this is the runtime shutting
            // down; the jobs come back after their leases.
            Err(join_error) => {
                error!(error = %join_error, "job task failed");
                for job_id in self.tasks.remove(&join_error.id()).unwrap_or_default() {
                    self.held.remove(&job_id);
                    self.unfinished = self.unfinished.saturating_sub(1);
                }
            }
        }
    }

    /// Takes the done jobs to ack; their leases are no longer extended.
    fn take_acks(&mut self) -> Vec<JobReceipt> {
        let to_ack = std::mem::take(&mut self.to_ack);
        for receipt in &to_ack {
            self.held.remove(&receipt.id);
        }
        to_ack
    }

    /// Records how acking `count` jobs went.
    fn record_acks(&mut self, count: usize, acked: Result<u64, StoreError>) {
        match acked {
            Ok(acked) => {
                let lost = (count as u64).saturating_sub(acked);
                if lost > 0 {
                    warn!(
                        lost,
                        "leases lost before ack, those jobs will be handled again"
                    );
                    self.report.counts.leases_lost += lost;
                }
            }
            Err(store_error) => {
                error!(
                    jobs = count,
                    error = %error_chain(&store_error),
                    "giving up acking jobs, they will be handled again after their leases"
                );
                self.report.storage_error.get_or_insert(store_error);
            }
        }
    }
}

impl BatchReport {
    fn record(&mut self, outcome: JobOutcome, to_ack: &mut Vec<JobReceipt>) {
        match outcome {
            JobOutcome::Ack(receipt) => {
                to_ack.push(receipt);
                self.counts.done += 1;
            }
            JobOutcome::AckedInTransaction => self.counts.done += 1,
            JobOutcome::Retried => self.counts.retried += 1,
            JobOutcome::DeadLettered => self.counts.dead_lettered += 1,
            JobOutcome::LeaseLost => self.counts.leases_lost += 1,
            JobOutcome::StorageFailed(store_error) => {
                self.storage_error.get_or_insert(store_error);
            }
        }
    }
}

/// The message of a caught panic (`panic!("…")` payloads are `&str` or `String`).
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&'static str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_messages() {
        let payload = std::panic::catch_unwind(|| panic!("boom {}", 1)).unwrap_err();
        assert_eq!(panic_message(&*payload), "boom 1");
        let payload = std::panic::catch_unwind(|| panic!("static boom")).unwrap_err();
        assert_eq!(panic_message(&*payload), "static boom");
        let payload = std::panic::catch_unwind(|| std::panic::panic_any(7_u8)).unwrap_err();
        assert_eq!(panic_message(&*payload), "non-string panic payload");
    }

    #[test]
    fn storage_backoff_is_capped() {
        let mut rng = rand::rng();
        assert!(STORAGE_BACKOFF.backoff(1, &mut rng) <= Duration::from_millis(50));
        assert!(STORAGE_BACKOFF.backoff(u32::MAX, &mut rng) <= Duration::from_secs(5));
    }
}
