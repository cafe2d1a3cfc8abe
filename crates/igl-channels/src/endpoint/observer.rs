//! The observer: turns new rows of the medium into delivery jobs.
//!
//! Two streams, each with a durable cursor in the endpoint store:
//! - `messages`: rows whose `receiver` is this endpoint's jurisdiction, by row id, announced
//!   to the subscribers of `jurisdiction.<JUR>`. The cursor is by id, so a status update
//!   never announces a message again; it starts at 0, so messages posted before the
//!   endpoint first started are announced too. While nobody is subscribed the cursor stays
//!   put: the messages wait for the first subscriber instead of being skipped.
//! - `status`: status changes (any message), by change sequence, announced to the `by_id`
//!   subscribers of the message.
//!
//! Each round enqueues the jobs (with dedup keys) on the local state first and advances the
//! in-memory cursor after; a separate task persists the latest cursor whenever it moved
//! (coalescing: the observer never waits for it, which matters when the cursor shares a
//! SQLite file with the other endpoint's writes) and once more when the observer stops.
//! The persisted cursor therefore never passes what was enqueued: a crash repeats the
//! announcements since the last persisted position (the dedup key drops the copies of
//! jobs still queued; delivered ones are delivered again, which subscribers tolerate as
//! WebSub delivery is at least once), it never loses one. A graceful stop repeats nothing.
//! Rounds run when a commit wakes the observer, a subscription changes, or the poll
//! interval passes.

use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use igl_core::NewJob;
use igl_workers::RetryPolicy;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::delivery::DeliveryJob;
use super::error::EndpointError;
use super::store::{MESSAGES_STREAM, STATUS_STREAM, Subscription};
use super::topic::{event_keys, jurisdiction_topic};

/// The most jobs one round enqueues (rows × subscribers).
const MAX_JOBS_PER_ROUND: usize = 4096;

/// How often expired subscriptions are removed.
const CLEANUP_INTERVAL: Duration = Duration::from_secs(600);

/// While messages wait for a first subscriber, how often they are looked at again without
/// a subscription change.
const HELD_RECHECK: Duration = Duration::from_secs(1);

/// The shortest interval between two writes of the cursors.
const PERSIST_INTERVAL: Duration = Duration::from_millis(100);

/// Backoff after failed rounds (database or state unavailable).
const FAILURE_BACKOFF: RetryPolicy = RetryPolicy {
    max_attempts: u32::MAX,
    base_delay: Duration::from_millis(100),
    max_delay: Duration::from_secs(5),
};

/// Microseconds since the Unix epoch.
pub(crate) fn now_micros() -> i64 {
    let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000;
    i64::try_from(nanos).unwrap_or(i64::MAX)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursors {
    messages: i64,
    status: i64,
}

/// What one round found.
#[derive(Debug, Default)]
struct RoundOutcome {
    /// A stream returned a full batch (or was cut short): go again at once.
    more: bool,
}

#[derive(Debug)]
struct Observer {
    shared: Arc<Shared>,
    /// How far the jobs are enqueued (loaded from the store on the first round).
    cursors: Option<Cursors>,
    /// Hands the cursors to the task that persists them.
    persist: watch::Sender<Option<Cursors>>,
    /// Set while messages wait for a subscriber: the subscription epoch and time of the
    /// last look.
    held: Option<(u64, Instant)>,
    last_cleanup: Option<Instant>,
}

/// Runs the observer until `shutdown`. Failures are logged and retried with backoff; the
/// observer never gives up.
pub(crate) async fn run_observer(
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> Result<(), EndpointError> {
    let poll = shared.config.observer.poll_interval;
    let (persist, persisted) = watch::channel(None);
    let persister = tokio::spawn(persist_cursors(shared.clone(), persisted, shutdown.clone()));
    let mut observer = Observer {
        shared: shared.clone(),
        cursors: None,
        persist,
        held: None,
        last_cleanup: None,
    };
    let mut failures: u32 = 0;
    tracing::info!(jurisdiction = %shared.config.jurisdiction, "channel observer started");
    while !shutdown.is_cancelled() {
        // Register for wake-ups before looking, so that a commit in between is not missed.
        let mut medium_changed = pin!(shared.medium.signal.notify().notified());
        medium_changed.as_mut().enable();
        let mut subscriptions_changed = pin!(shared.subscriptions_changed.notified());
        subscriptions_changed.as_mut().enable();

        match observer.round().await {
            Ok(outcome) => {
                failures = 0;
                if outcome.more {
                    continue;
                }
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    () = medium_changed => {}
                    () = subscriptions_changed => {}
                    () = tokio::time::sleep(poll) => {}
                }
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let delay = FAILURE_BACKOFF.backoff(failures, &mut rand::rng());
                tracing::warn!(
                    error = %crate::endpoint::error_chain(&error),
                    ?delay,
                    "channel observer round failed, will retry"
                );
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    // Closing the channel makes the persister write the final position, then stop.
    drop(observer);
    if let Err(error) = persister.await {
        tracing::error!(error = %error, "cursor persister ended abnormally");
    }
    tracing::info!("channel observer stopped");
    Ok(())
}

/// Persists the latest cursors when they change, at most every [`PERSIST_INTERVAL`]
/// (each write competes with the medium's writers), and once more when the observer drops
/// its sender. Writes coalesce: positions reached in between replace each other and only
/// the newest is written.
async fn persist_cursors(
    shared: Arc<Shared>,
    mut latest: watch::Receiver<Option<Cursors>>,
    shutdown: CancellationToken,
) {
    let mut persisted: Option<Cursors> = None;
    let mut failures: u32 = 0;
    loop {
        if !shutdown.is_cancelled() && persisted.is_some() {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(PERSIST_INTERVAL) => {}
            }
        }
        let open = latest.changed().await.is_ok();
        let wanted = *latest.borrow_and_update();
        if let Some(wanted) = wanted {
            while persisted != Some(wanted) {
                match write_cursors(&shared, persisted, wanted).await {
                    Ok(()) => {
                        persisted = Some(wanted);
                        failures = 0;
                    }
                    Err(error) => {
                        failures = failures.saturating_add(1);
                        let delay = FAILURE_BACKOFF.backoff(failures, &mut rand::rng());
                        tracing::warn!(
                            error = %crate::endpoint::error_chain(&error),
                            ?delay,
                            "observer cursor not persisted, will retry"
                        );
                        if !open && failures >= 5 {
                            // Stopping: the next start repeats from the last persisted
                            // position.
                            return;
                        }
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
        if !open {
            return;
        }
    }
}

async fn write_cursors(
    shared: &Shared,
    persisted: Option<Cursors>,
    wanted: Cursors,
) -> Result<(), sqlx::Error> {
    let store = &shared.store;
    if persisted.is_none_or(|p| p.messages != wanted.messages) {
        store
            .advance_cursor(MESSAGES_STREAM, wanted.messages, now_micros())
            .await?;
    }
    if persisted.is_none_or(|p| p.status != wanted.status) {
        store
            .advance_cursor(STATUS_STREAM, wanted.status, now_micros())
            .await?;
    }
    Ok(())
}

impl Observer {
    async fn round(&mut self) -> Result<RoundOutcome, EndpointError> {
        let shared = self.shared.clone();
        let store = &shared.store;
        let mut cursors = match self.cursors {
            Some(cursors) => cursors,
            None => {
                let loaded = Cursors {
                    messages: store.cursor(MESSAGES_STREAM).await?,
                    status: store.cursor(STATUS_STREAM).await?,
                };
                self.cursors = Some(loaded);
                loaded
            }
        };
        let mut outcome = RoundOutcome::default();
        let batch = shared.config.observer.batch_size;

        if self.should_look_at_messages() {
            let jurisdiction = shared.config.jurisdiction.as_str();
            let rows = shared
                .medium
                .messages_for(jurisdiction, cursors.messages, batch)
                .await?;
            if !rows.is_empty() {
                let topic = jurisdiction_topic(jurisdiction);
                let subscribers = store.matching(&event_keys(&topic), now_micros()).await?;
                if subscribers.is_empty() {
                    self.held = Some((shared.subscription_epoch(), Instant::now()));
                } else {
                    self.held = None;
                    let take = (MAX_JOBS_PER_ROUND / subscribers.len()).clamp(1, rows.len());
                    let announced = &rows[..take];
                    let jobs: Vec<NewJob> = announced
                        .iter()
                        .flat_map(|row| {
                            subscribers.iter().map(|subscriber| {
                                announcement(&shared, subscriber, row.id, &topic, "new", row.id)
                            })
                        })
                        .collect();
                    shared.config.state.enqueue(&jobs).await?;
                    let last = announced.last().map_or(cursors.messages, |row| row.id);
                    cursors.messages = last;
                    self.advance(cursors);
                    metrics::counter!("igl_channel_announcements_total")
                        .increment(jobs.len() as u64);
                    tracing::debug!(
                        messages = announced.len(),
                        jobs = jobs.len(),
                        cursor = last,
                        "announced new messages"
                    );
                    outcome.more |= rows.len() == batch || take < rows.len();
                }
            } else {
                self.held = None;
            }
        }

        let changes = shared
            .medium
            .status_changes_after(cursors.status, batch)
            .await?;
        if let Some(last) = changes.last().map(|change| change.seq) {
            let mut jobs = Vec::new();
            for change in &changes {
                let topic = change.message_id.to_string();
                let subscribers = store.matching(&event_keys(&topic), now_micros()).await?;
                jobs.extend(subscribers.iter().map(|subscriber| {
                    announcement(
                        &shared,
                        subscriber,
                        change.message_id,
                        &topic,
                        "status",
                        change.seq,
                    )
                }));
            }
            if !jobs.is_empty() {
                shared.config.state.enqueue(&jobs).await?;
            }
            cursors.status = last;
            self.advance(cursors);
            outcome.more |= changes.len() == batch;
        }

        if self
            .last_cleanup
            .is_none_or(|at| at.elapsed() >= CLEANUP_INTERVAL)
        {
            self.last_cleanup = Some(Instant::now());
            let removed = store.delete_expired(now_micros()).await?;
            if removed > 0 {
                tracing::info!(removed, "expired subscriptions removed");
            }
        }
        Ok(outcome)
    }

    /// Records that everything up to `cursors` is enqueued, and has it persisted.
    fn advance(&mut self, cursors: Cursors) {
        self.cursors = Some(cursors);
        self.persist.send_replace(Some(cursors));
    }

    /// False while messages wait for a first subscriber and neither the subscriptions
    /// changed nor [`HELD_RECHECK`] passed (no need to read the same rows again).
    fn should_look_at_messages(&self) -> bool {
        match self.held {
            None => true,
            Some((epoch, at)) => {
                epoch != self.shared.subscription_epoch() || at.elapsed() >= HELD_RECHECK
            }
        }
    }
}

/// The delivery job announcing `message` to `subscriber`; `event` and `sequence` make the
/// dedup key (one job per subscriber and event).
fn announcement(
    shared: &Shared,
    subscriber: &Subscription,
    message: i64,
    topic: &str,
    event: &str,
    sequence: i64,
) -> NewJob {
    let job = DeliveryJob::DeliverV1 {
        subscription: subscriber.id,
        message,
        topic: topic.to_owned(),
    };
    NewJob::new(shared.config.delivery.queue.clone(), job.to_payload())
        .with_dedup_key(format!("{event}/{}/{sequence}", subscriber.id))
}
