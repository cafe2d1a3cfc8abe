//! Signed delivery of events to subscribers: a fast lane (`deliver` queue, one
//! `deliver-batch.v1` job per event and group of subscriptions) and a slow lane
//! (`redeliver` queue, one `deliver.v1` job per event and subscription, retried with
//! backoff until the retry policy dead-letters it).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use igl_core::pipeline::{DELIVER_QUEUE, REDELIVER_QUEUE};
use igl_core::subscriptions::{DeliveryOutcome, Subscription};
use igl_core::{ClaimedJob, Event, NewJob, Storage};
use igl_domain::Timestamp;
use igl_workers::{Handled, JobError, JobHandler};
use reqwest::StatusCode;
use reqwest::header::HeaderValue;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::HubConfig;
use crate::signature::sign;

/// Header carrying the stable event id, so subscribers can drop duplicates.
pub const EVENT_ID_HEADER: &str = "x-igl-event-id";

/// Most subscriptions one fast-lane job covers; the spreader splits larger fan-outs.
pub const BATCH_SUBSCRIPTIONS: usize = 500;

/// One event for one subscription: a slow-lane (`redeliver`) job, retried with backoff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "deliver.v1")]
pub struct DeliverJob {
    /// The event.
    pub event_id: String,
    /// The subscription.
    pub subscription_id: i64,
    /// Attempts spent by earlier copies of this delivery. A copy replaces the job when an
    /// attempt is deferred (the subscription already had [`SLOW_LANE_PER_SUBSCRIPTION`]
    /// attempts in flight), so deferrals never use up the retry budget.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub spent: u32,
    /// How often the delivery was deferred (the next deferral waits longer).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deferrals: u32,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// How long a deferred slow-lane delivery waits: 250 ms, doubling with each deferral up to
/// 8 s.
fn deferral_delay(deferrals: u32) -> Duration {
    Duration::from_millis(250).saturating_mul(1 << deferrals.min(5))
}

impl DeliverJob {
    /// The job on the slow lane (`redeliver`), deduplicated by (event, subscription) and, for
    /// a deferred copy, its deferral count. The copy must not share the key of the job it
    /// replaces: in the broker shape that job's outbox row may still exist (published, not
    /// yet deleted by the relay), and a copy with its key would be dropped as a duplicate.
    pub fn into_new_job(self) -> NewJob {
        let key = if self.deferrals == 0 {
            format!("{}/{}", self.event_id, self.subscription_id)
        } else {
            format!(
                "{}/{}/deferred/{}",
                self.event_id, self.subscription_id, self.deferrals
            )
        };
        NewJob::new(
            REDELIVER_QUEUE,
            serde_json::to_value(&self).unwrap_or_default(),
        )
        .with_dedup_key(key)
    }
}

/// One event for a group of subscriptions: a fast-lane (`deliver`) job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "deliver-batch.v1")]
pub struct DeliverBatchJob {
    /// The event.
    pub event_id: String,
    /// The subscriptions (at most [`BATCH_SUBSCRIPTIONS`]).
    pub subscription_ids: Vec<i64>,
}

impl DeliverBatchJob {
    /// The job on the fast lane, deduplicated by (event, first subscription).
    pub fn into_new_job(self) -> NewJob {
        let key = format!(
            "{}/batch/{}",
            self.event_id,
            self.subscription_ids.first().copied().unwrap_or_default()
        );
        NewJob::new(
            DELIVER_QUEUE,
            serde_json::to_value(&self).unwrap_or_default(),
        )
        .with_dedup_key(key)
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum AnyDeliveryJob {
    Batch(DeliverBatchJob),
    One(DeliverJob),
}

/// What one POST to a callback came to.
#[derive(Debug)]
enum Attempt {
    Delivered,
    Gone,
    Failed {
        error: String,
        retry_after: Option<Duration>,
    },
}

/// Delivery state shared by both lanes of one process.
#[derive(Debug, Default)]
struct Shared {
    /// When each subscription's last success was recorded: successes are written at most
    /// once a second per subscription (a write per delivery would cost a commit each).
    recorded_success: Mutex<HashMap<i64, Instant>>,
    /// When each subscription's last failure was recorded (same rule as successes).
    recorded_failure: Mutex<HashMap<i64, Instant>>,
    /// Subscriptions whose last attempt failed or overran on the fast lane: the fast lane
    /// hands their events straight to the slow lane, until a slow-lane attempt succeeds
    /// within [`STRAGGLER_GRACE`] (and the budget).
    slow: Mutex<HashSet<i64>>,
    /// Slow-lane attempts in flight per subscription (at most [`SLOW_LANE_PER_SUBSCRIPTION`]).
    slow_in_flight: Mutex<HashMap<i64, usize>>,
}

/// Most slow-lane attempts in flight to one subscription. Further slow-lane jobs of that
/// subscription are deferred at once (replaced by a later copy, without using an attempt)
/// instead of waiting on a subscriber that hangs, so a worker's batch is held up by at most
/// a few requests to it.
pub const SLOW_LANE_PER_SUBSCRIPTION: usize = 4;

/// A slow-lane slot of one subscription, given back on drop.
struct SlowSlot<'a> {
    shared: &'a Shared,
    subscription_id: i64,
}

impl Drop for SlowSlot<'_> {
    fn drop(&mut self) {
        let mut in_flight = lock(&self.shared.slow_in_flight);
        if let Some(count) = in_flight.get_mut(&self.subscription_id) {
            *count -= 1;
            if *count == 0 {
                in_flight.remove(&self.subscription_id);
            }
        }
    }
}

impl Shared {
    fn slow_slot(&self, subscription_id: i64) -> Option<SlowSlot<'_>> {
        let mut in_flight = lock(&self.slow_in_flight);
        let count = in_flight.entry(subscription_id).or_default();
        if *count >= SLOW_LANE_PER_SUBSCRIPTION {
            return None;
        }
        *count += 1;
        Some(SlowSlot {
            shared: self,
            subscription_id,
        })
    }
}

/// POSTs an event's JSON to subscriptions' callbacks with `Content-Type`, `Link: <hub>;
/// rel="hub", <topic>; rel="self"`, the event id header and, when the subscription has a
/// secret, `X-Hub-Signature: sha256=<hex HMAC-SHA256 of the raw body>`. 2xx delivers;
/// 410 ends the subscription; `Retry-After` (seconds) is honoured. A subscription that
/// expired or was removed meanwhile is skipped.
///
/// One handler serves two queues:
/// - **fast lane** (`deliver`, [`DeliverBatchJob`]): the event is loaded and serialised
///   once, the subscriptions loaded in one query, and every callback POSTed concurrently
///   (at most `HubConfig::max_in_flight` requests in the process), each within
///   `HubConfig::fanout_budget`; once nine in ten of a batch (of at least ten) have
///   answered, the rest get four times as long as that took (at least 250 ms). Every
///   delivery that failed, overran (its request is dropped; the subscriber may see the
///   event twice and can drop the duplicate by its event id) or belongs to a subscription
///   known to be slow or failing becomes a [`DeliverJob`] on the slow lane, enqueued in
///   the same transaction as the fast-lane job's ack. So one slow or dead subscriber holds
///   the others up once, by about 250 ms (at most one budget), not on every event.
/// - **slow lane** (`redeliver`, [`DeliverJob`]): one event, one subscription, the full
///   `HubConfig::timeout`, at most [`SLOW_LANE_PER_SUBSCRIPTION`] attempts in flight per
///   subscription; failures are retried by the worker with exponential backoff
///   (or after `Retry-After`) until the retry policy sends the delivery to the dead
///   letters. A delivery is thus tried once on the fast lane, then up to the slow lane's
///   `max_attempts` times.
#[derive(Debug, Clone)]
pub struct Deliver {
    storage: Arc<dyn Storage>,
    client: reqwest::Client,
    config: HubConfig,
    in_flight: Arc<Semaphore>,
    shared: Arc<Shared>,
}

impl Deliver {
    /// A deliverer using `client` for outbound calls.
    pub fn new(storage: Arc<dyn Storage>, client: reqwest::Client, config: HubConfig) -> Self {
        Self {
            storage,
            client,
            in_flight: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            config,
            shared: Arc::default(),
        }
    }

    fn is_slow(&self, subscription_id: i64) -> bool {
        lock(&self.shared.slow).contains(&subscription_id)
    }

    fn set_slow(&self, subscription_id: i64, slow: bool) {
        let mut set = lock(&self.shared.slow);
        if slow {
            set.insert(subscription_id);
        } else {
            set.remove(&subscription_id);
        }
    }

    /// The successes among `ids` not recorded in the last second (and marks them recorded).
    fn successes_to_record(&self, ids: &[i64]) -> Vec<i64> {
        let now = Instant::now();
        let mut recorded = lock(&self.shared.recorded_success);
        ids.iter()
            .copied()
            .filter(|id| match recorded.get(id) {
                Some(at) if now.duration_since(*at) < Duration::from_secs(1) => false,
                _ => {
                    recorded.insert(*id, now);
                    true
                }
            })
            .collect()
    }

    async fn record_successes(&self, ids: &[i64]) {
        {
            let mut failures = lock(&self.shared.recorded_failure);
            for id in ids {
                failures.remove(id);
            }
        }
        let ids = self.successes_to_record(ids);
        if ids.is_empty() {
            return;
        }
        if let Err(error) = self.storage.record_successes(&ids).await {
            tracing::warn!(%error, subscriptions = ids.len(), "delivery successes not recorded");
        }
    }

    /// Records a failure for the subscription's health, at most once a second per
    /// subscription (a down subscriber fails every delivery; each write is a commit).
    async fn record_failure(&self, subscription_id: i64, error: &str) {
        lock(&self.shared.recorded_success).remove(&subscription_id);
        {
            let now = Instant::now();
            let mut recorded = lock(&self.shared.recorded_failure);
            match recorded.get(&subscription_id) {
                Some(at) if now.duration_since(*at) < Duration::from_secs(1) => return,
                _ => {
                    recorded.insert(subscription_id, now);
                }
            }
        }
        if let Err(store_error) = self
            .storage
            .record_delivery(subscription_id, &DeliveryOutcome::Failed(error.to_owned()))
            .await
        {
            tracing::warn!(error = %store_error, subscription_id, "delivery failure not recorded");
        }
    }

    /// POSTs the event to the subscription's callback within `timeout`.
    async fn attempt(
        &self,
        subscription: &Subscription,
        event: &Event,
        prepared: &Prepared,
        timeout: Duration,
    ) -> Attempt {
        let body = prepared.body.clone();
        let mut request = self
            .client
            .post(&subscription.callback)
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, JSON.clone())
            .header(reqwest::header::LINK, prepared.link.clone())
            .header(EVENT_ID_HEADER, prepared.event_id.clone());
        if let Some(secret) = &subscription.secret {
            request = request.header("x-hub-signature", sign(secret.0.as_bytes(), &body));
        }
        let started = Instant::now();
        let response = match request.body(body).send().await {
            Ok(response) => response,
            Err(error) => {
                metrics::counter!("igl_websub_deliveries_total", "outcome" => "failed")
                    .increment(1);
                let error = if error.is_timeout() {
                    format!(
                        "delivery to {} timed out after {timeout:?}",
                        subscription.callback
                    )
                } else {
                    format!("delivery to {} failed: {error}", subscription.callback)
                };
                return Attempt::Failed {
                    error,
                    retry_after: None,
                };
            }
        };
        metrics::histogram!("igl_websub_delivery_seconds").record(started.elapsed().as_secs_f64());
        let status = response.status();
        if status.is_success() {
            metrics::counter!("igl_websub_deliveries_total", "outcome" => "delivered").increment(1);
            let lag = (Timestamp::now_utc() - event.created_at).as_seconds_f64();
            metrics::histogram!("igl_websub_event_to_delivery_seconds").record(lag.max(0.0));
            return Attempt::Delivered;
        }
        if status == StatusCode::GONE {
            metrics::counter!("igl_websub_deliveries_total", "outcome" => "gone").increment(1);
            return Attempt::Gone;
        }
        metrics::counter!("igl_websub_deliveries_total", "outcome" => "failed").increment(1);
        Attempt::Failed {
            error: format!("subscriber {} answered {status}", subscription.callback),
            retry_after: retry_after(&response),
        }
    }

    async fn remove_gone(&self, subscription: &Subscription) -> Result<(), JobError> {
        self.storage
            .remove_subscription_by_id(subscription.id)
            .await?;
        self.set_slow(subscription.id, false);
        tracing::info!(callback = %subscription.callback, "subscriber answered 410 gone; subscription removed");
        Ok(())
    }

    async fn load_event(&self, event_id: &str) -> Result<Event, JobError> {
        self.storage
            .get_event(event_id)
            .await?
            .ok_or_else(|| JobError::permanent(format!("event {event_id} does not exist")))
    }

    /// What every delivery of `event` sends: the body serialised once, the header values
    /// validated once.
    fn prepare(&self, event: &Event) -> Result<Prepared, JobError> {
        let link = format!(
            "<{}>; rel=\"hub\", <{}>; rel=\"self\"",
            self.config.hub_url, event.topic
        );
        Ok(Prepared {
            body: Bytes::from(serde_json::to_vec(&event.payload).map_err(JobError::permanent)?),
            link: HeaderValue::try_from(link).map_err(JobError::permanent)?,
            event_id: HeaderValue::try_from(event.id.as_str()).map_err(JobError::permanent)?,
        })
    }

    /// The fast lane: one event to many subscriptions.
    async fn handle_batch(
        &self,
        job: &ClaimedJob,
        batch: DeliverBatchJob,
    ) -> Result<Handled, JobError> {
        tracing::debug!(
            event = %batch.event_id,
            subscriptions = batch.subscription_ids.len(),
            job = %job.id,
            attempt = job.attempt,
            "fast-lane delivery"
        );
        let event = self.load_event(&batch.event_id).await?;
        let subscriptions = self
            .storage
            .subscriptions_by_id(&batch.subscription_ids)
            .await?;
        let now = Timestamp::now_utc();
        let prepared = self.prepare(&event)?;
        let budget = self.config.fanout_budget;
        let mut handed_over = Vec::new();
        let mut pending = HashSet::with_capacity(subscriptions.len());
        let mut attempts = FuturesUnordered::new();
        for subscription in &subscriptions {
            if subscription.expires_at <= now {
                continue;
            }
            if self.is_slow(subscription.id) {
                handed_over.push((subscription.id, Duration::ZERO));
                continue;
            }
            pending.insert(subscription.id);
            let (event, prepared, semaphore) = (&event, &prepared, &self.in_flight);
            attempts.push(async move {
                let _permit = semaphore.acquire().await;
                let attempt = self.attempt(subscription, event, prepared, budget).await;
                (subscription, attempt)
            });
        }
        let mut delivered = Vec::with_capacity(subscriptions.len());
        let total = pending.len();
        let started = Instant::now();
        let mut cutoff: Option<Instant> = None;
        loop {
            let next = match cutoff {
                Some(cutoff) => {
                    match tokio::time::timeout_at(cutoff.into(), attempts.next()).await {
                        Ok(next) => next,
                        Err(_) => break,
                    }
                }
                None => attempts.next().await,
            };
            let Some((subscription, attempt)) = next else {
                break;
            };
            pending.remove(&subscription.id);
            match attempt {
                Attempt::Delivered => delivered.push(subscription.id),
                Attempt::Gone => self.remove_gone(subscription).await?,
                Attempt::Failed { error, retry_after } => {
                    tracing::debug!(%error, subscription = subscription.id, "fast-lane delivery failed; handed to the slow lane");
                    self.set_slow(subscription.id, true);
                    self.record_failure(subscription.id, &error).await;
                    handed_over.push((subscription.id, retry_after.unwrap_or(FIRST_RETRY)));
                }
            }
            // Once nine in ten have answered, the stragglers get four times as long as
            // that took (at least STRAGGLER_GRACE, at most the budget).
            if cutoff.is_none() && total >= 10 && (total - pending.len()) * 10 >= total * 9 {
                let grace = (started.elapsed() * 4).clamp(STRAGGLER_GRACE, budget);
                cutoff = Some(started + grace);
            }
        }
        drop(attempts);
        for subscription_id in pending {
            tracing::debug!(
                subscription = subscription_id,
                "fast-lane delivery much slower than the others; handed to the slow lane"
            );
            self.set_slow(subscription_id, true);
            handed_over.push((subscription_id, Duration::ZERO));
        }
        self.record_successes(&delivered).await;
        tracing::debug!(
            event = %event.id,
            delivered = delivered.len(),
            handed_over = handed_over.len(),
            "fast-lane delivery done"
        );
        if handed_over.is_empty() {
            return Ok(Handled::Done);
        }
        let retries: Vec<NewJob> = handed_over
            .iter()
            .map(|(subscription_id, delay)| {
                DeliverJob {
                    event_id: event.id.clone(),
                    subscription_id: *subscription_id,
                    spent: 0,
                    deferrals: 0,
                }
                .into_new_job()
                .with_delay(*delay)
            })
            .collect();
        let mut unit = self.storage.begin().await?;
        unit.enqueue(&retries).await?;
        if unit.ack(&[job.receipt()]).await? == 0 {
            // Another consumer took the job over after our lease ended; it hands the
            // failures over itself.
            tracing::warn!(event = %event.id, "lease lost before the fast-lane job was acked");
            return Ok(Handled::AckedInTransaction);
        }
        unit.commit().await?;
        metrics::counter!("igl_websub_handed_to_slow_lane_total").increment(retries.len() as u64);
        Ok(Handled::AckedInTransaction)
    }

    /// Replaces a slow-lane job whose attempt cannot start now by a copy due after
    /// [`deferral_delay`] that carries the attempts spent so far (acked and enqueued in one
    /// unit of work).
    async fn defer(&self, job: &ClaimedJob, one: DeliverJob) -> Result<Handled, JobError> {
        let delay = deferral_delay(one.deferrals);
        let copy = DeliverJob {
            spent: one.spent.saturating_add(job.attempt.saturating_sub(1)),
            deferrals: one.deferrals.saturating_add(1),
            ..one
        };
        let mut unit = self.storage.begin().await?;
        if unit.ack(&[job.receipt()]).await? == 0 {
            tracing::warn!(event = %copy.event_id, "lease lost before a deferred delivery was acked");
            return Ok(Handled::AckedInTransaction);
        }
        unit.enqueue(&[copy.into_new_job().with_delay(delay)])
            .await?;
        unit.commit().await?;
        metrics::counter!("igl_websub_deferred_total").increment(1);
        Ok(Handled::AckedInTransaction)
    }

    /// The slow lane: one event to one subscription, retried by the worker.
    async fn handle_one(&self, job: &ClaimedJob, one: DeliverJob) -> Result<Handled, JobError> {
        let DeliverJob {
            ref event_id,
            subscription_id,
            spent,
            ..
        } = one;
        let Some(subscription) = self.storage.subscription(subscription_id).await? else {
            tracing::debug!(subscription_id, "subscription gone; delivery skipped");
            return Ok(Handled::Done);
        };
        if subscription.expires_at <= Timestamp::now_utc() {
            tracing::debug!(subscription_id, "subscription expired; delivery skipped");
            return Ok(Handled::Done);
        }
        let Some(_slot) = self.shared.slow_slot(subscription_id) else {
            tracing::debug!(
                subscription_id,
                "{SLOW_LANE_PER_SUBSCRIPTION} deliveries already in flight; deferred"
            );
            return self.defer(job, one).await;
        };
        let event = self.load_event(event_id).await?;
        let prepared = self.prepare(&event)?;
        let started = Instant::now();
        let attempt = {
            let _permit = self.in_flight.acquire().await;
            self.attempt(&subscription, &event, &prepared, self.config.timeout)
                .await
        };
        match attempt {
            Attempt::Delivered => {
                if started.elapsed() < STRAGGLER_GRACE.min(self.config.fanout_budget) {
                    self.set_slow(subscription_id, false);
                }
                self.record_successes(&[subscription_id]).await;
                Ok(Handled::Done)
            }
            Attempt::Gone => {
                self.remove_gone(&subscription).await?;
                Ok(Handled::Done)
            }
            Attempt::Failed { error, retry_after } => {
                self.set_slow(subscription_id, true);
                self.record_failure(subscription_id, &error).await;
                let used = spent.saturating_add(job.attempt);
                if used >= self.config.slow_lane_max_attempts {
                    return Err(JobError::permanent(format!(
                        "{error} (attempt {used} of {})",
                        self.config.slow_lane_max_attempts
                    )));
                }
                match retry_after {
                    Some(delay) => Err(JobError::retry_after(delay, error)),
                    None => Err(JobError::transient(error)),
                }
            }
        }
    }
}

/// An event ready to send.
#[derive(Debug)]
struct Prepared {
    body: Bytes,
    link: HeaderValue,
    event_id: HeaderValue,
}

static JSON: HeaderValue = HeaderValue::from_static("application/json");

/// The least time a fast-lane delivery gets when the others of its batch were quicker; a
/// slow-lane delivery this quick brings its subscription back to the fast lane.
const STRAGGLER_GRACE: Duration = Duration::from_millis(250);

/// Delay before the slow lane's first try of a delivery that failed on the fast lane
/// (without `Retry-After`).
const FIRST_RETRY: Duration = Duration::from_millis(500);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    value
        .trim()
        .parse::<u64>()
        .ok()
        .map(|seconds| Duration::from_secs(seconds.min(3600)))
}

#[async_trait]
impl JobHandler for Deliver {
    fn name(&self) -> &'static str {
        "deliverer"
    }

    async fn handle(&self, job: &ClaimedJob) -> Result<Handled, JobError> {
        match serde_json::from_value(job.payload.clone()).map_err(JobError::permanent)? {
            AnyDeliveryJob::Batch(batch) => self.handle_batch(job, batch).await,
            AnyDeliveryJob::One(one) => self.handle_one(job, one).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(deferrals: u32) -> DeliverJob {
        DeliverJob {
            event_id: "AU:ref-1/stored".into(),
            subscription_id: 7,
            spent: 2,
            deferrals,
        }
    }

    #[test]
    fn a_deferred_copy_does_not_share_the_key_of_the_job_it_replaces() {
        let keys: Vec<Option<String>> = (0..3)
            .map(|deferrals| job(deferrals).into_new_job().dedup_key)
            .collect();
        assert_eq!(keys[0].as_deref(), Some("AU:ref-1/stored/7"));
        assert_ne!(keys[0], keys[1]);
        assert_ne!(keys[1], keys[2]);
    }

    #[test]
    fn deferral_delays_grow_to_a_cap() {
        assert_eq!(deferral_delay(0), Duration::from_millis(250));
        assert_eq!(deferral_delay(1), Duration::from_millis(500));
        assert_eq!(deferral_delay(5), Duration::from_secs(8));
        assert_eq!(deferral_delay(50), Duration::from_secs(8));
    }

    #[test]
    fn the_budget_fields_are_left_out_of_a_first_job() {
        let json = serde_json::to_value(job(0)).unwrap();
        assert_eq!(json["spent"], 2);
        assert!(json.get("deferrals").is_none());
        let old: DeliverJob = serde_json::from_value(serde_json::json!({
            "type": "deliver.v1", "event_id": "e", "subscription_id": 1
        }))
        .unwrap();
        assert_eq!((old.spent, old.deferrals), (0, 0));
    }
}
