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
//! cursor after: a crash in between enqueues again (the dedup key drops the copies of jobs
//! still queued), it never loses an announcement. Rounds run when a commit wakes the
//! observer, a subscription changes, or the poll interval passes.

use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use igl_core::NewJob;
use igl_workers::RetryPolicy;
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

#[derive(Debug, Clone, Copy)]
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
    cursors: Option<Cursors>,
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
    let mut observer = Observer {
        shared: shared.clone(),
        cursors: None,
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
                observer.cursors = None;
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    tracing::info!("channel observer stopped");
    Ok(())
}

impl Observer {
    async fn round(&mut self) -> Result<RoundOutcome, EndpointError> {
        let shared = self.shared.clone();
        let store = &shared.store;
        let mut cursors = match self.cursors {
            Some(cursors) => cursors,
            None => Cursors {
                messages: store.cursor(MESSAGES_STREAM).await?,
                status: store.cursor(STATUS_STREAM).await?,
            },
        };
        self.cursors = Some(cursors);
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
                    store
                        .advance_cursor(MESSAGES_STREAM, last, now_micros())
                        .await?;
                    cursors.messages = last;
                    self.cursors = Some(cursors);
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
            store
                .advance_cursor(STATUS_STREAM, last, now_micros())
                .await?;
            cursors.status = last;
            self.cursors = Some(cursors);
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
