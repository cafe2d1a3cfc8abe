//! Signed delivery of events to subscribers (`deliver.v1` jobs).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use igl_core::pipeline::DELIVER_QUEUE;
use igl_core::subscriptions::DeliveryOutcome;
use igl_core::{ClaimedJob, NewJob, Storage};
use igl_domain::Timestamp;
use igl_workers::{Handled, JobError, JobHandler};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use crate::HubConfig;
use crate::signature::sign;

/// Header carrying the stable event id, so subscribers can drop duplicates.
pub const EVENT_ID_HEADER: &str = "x-igl-event-id";

/// One event for one subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "deliver.v1")]
pub struct DeliverJob {
    /// The event.
    pub event_id: String,
    /// The subscription.
    pub subscription_id: i64,
}

impl DeliverJob {
    /// The job on the delivery queue, deduplicated by (event, subscription).
    pub fn into_new_job(self) -> NewJob {
        let key = format!("{}/{}", self.event_id, self.subscription_id);
        NewJob::new(
            DELIVER_QUEUE,
            serde_json::to_value(&self).unwrap_or_default(),
        )
        .with_dedup_key(key)
    }
}

/// POSTs an event's JSON to the subscription's callback with `Content-Type`, `Link:
/// <hub>; rel="hub", <topic>; rel="self"`, the event id header and, when the subscription
/// has a secret, `X-Hub-Signature: sha256=…`. 2xx delivers; 410 ends the subscription;
/// `Retry-After` (seconds) is honoured on 429/503; other failures retry with the worker's
/// backoff until the policy dead-letters the delivery. A subscription that expired or was
/// removed meanwhile is skipped.
#[derive(Debug, Clone)]
pub struct Deliver {
    storage: Arc<dyn Storage>,
    client: reqwest::Client,
    config: HubConfig,
    /// When each subscription's last success was recorded: successes are written at most
    /// once a second per subscription (a write per delivery would cost a commit each).
    recorded_success: Arc<std::sync::Mutex<std::collections::HashMap<i64, std::time::Instant>>>,
}

impl Deliver {
    /// A deliverer using `client` for outbound calls.
    pub fn new(storage: Arc<dyn Storage>, client: reqwest::Client, config: HubConfig) -> Self {
        Self {
            storage,
            client,
            config,
            recorded_success: Arc::default(),
        }
    }

    async fn record(&self, subscription_id: i64, outcome: DeliveryOutcome) {
        {
            let now = std::time::Instant::now();
            let mut recorded = self
                .recorded_success
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if outcome == DeliveryOutcome::Delivered {
                match recorded.get(&subscription_id) {
                    Some(at) if now.duration_since(*at) < Duration::from_secs(1) => return,
                    _ => {
                        recorded.insert(subscription_id, now);
                    }
                }
            } else {
                recorded.remove(&subscription_id);
            }
        }
        if let Err(error) = self
            .storage
            .record_delivery(subscription_id, &outcome)
            .await
        {
            tracing::warn!(%error, subscription_id, "delivery outcome not recorded");
        }
    }
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
        let DeliverJob {
            event_id,
            subscription_id,
        } = serde_json::from_value(job.payload.clone()).map_err(JobError::permanent)?;
        let Some(subscription) = self.storage.subscription(subscription_id).await? else {
            tracing::debug!(subscription_id, "subscription gone; delivery skipped");
            return Ok(Handled::Done);
        };
        if subscription.expires_at <= Timestamp::now_utc() {
            tracing::debug!(subscription_id, "subscription expired; delivery skipped");
            return Ok(Handled::Done);
        }
        let event = self
            .storage
            .get_event(&event_id)
            .await?
            .ok_or_else(|| JobError::permanent(format!("event {event_id} does not exist")))?;
        let body = serde_json::to_vec(&event.payload).map_err(JobError::permanent)?;
        let link = format!(
            "<{}>; rel=\"hub\", <{}>; rel=\"self\"",
            self.config.hub_url, event.topic
        );
        let mut request = self
            .client
            .post(&subscription.callback)
            .timeout(self.config.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::LINK, link)
            .header(EVENT_ID_HEADER, &event.id);
        if let Some(secret) = &subscription.secret {
            request = request.header("x-hub-signature", sign(secret.0.as_bytes(), &body));
        }
        let started = std::time::Instant::now();
        let response = match request.body(body).send().await {
            Ok(response) => response,
            Err(error) => {
                let error = format!("delivery to {} failed: {error}", subscription.callback);
                self.record(subscription_id, DeliveryOutcome::Failed(error.clone()))
                    .await;
                metrics::counter!("igl_websub_deliveries_total", "outcome" => "failed")
                    .increment(1);
                return Err(JobError::transient(error));
            }
        };
        metrics::histogram!("igl_websub_delivery_seconds").record(started.elapsed().as_secs_f64());
        let status = response.status();
        if status.is_success() {
            self.record(subscription_id, DeliveryOutcome::Delivered)
                .await;
            metrics::counter!("igl_websub_deliveries_total", "outcome" => "delivered").increment(1);
            let lag = (Timestamp::now_utc() - event.created_at).as_seconds_f64();
            metrics::histogram!("igl_websub_event_to_delivery_seconds").record(lag.max(0.0));
            return Ok(Handled::Done);
        }
        if status == StatusCode::GONE {
            self.storage
                .remove_subscription_by_id(subscription_id)
                .await?;
            metrics::counter!("igl_websub_deliveries_total", "outcome" => "gone").increment(1);
            tracing::info!(callback = %subscription.callback, "subscriber answered 410 gone; subscription removed");
            return Ok(Handled::Done);
        }
        let error = format!("subscriber {} answered {status}", subscription.callback);
        self.record(subscription_id, DeliveryOutcome::Failed(error.clone()))
            .await;
        metrics::counter!("igl_websub_deliveries_total", "outcome" => "failed").increment(1);
        match retry_after(&response) {
            Some(delay) => Err(JobError::retry_after(delay, error)),
            None => Err(JobError::transient(error)),
        }
    }
}
