//! Delivery of announcements to subscribers' callbacks: one job per (subscription, event)
//! on the local state's job queue, run by the worker runtime (retries with backoff, then
//! dead letters).
//!
//! A delivery is `POST {callback}` with the JSON body `{"id": <message id>}`,
//! `Link: <{hub}>; rel="hub", <{topic}>; rel="self"` and, when the subscription has a
//! secret, `X-Hub-Signature: sha256=<hex HMAC-SHA256 of the body>`. Any 2xx is success;
//! 410 Gone ends the subscription; 429 and 503 with `Retry-After` are retried after that
//! delay; everything else (including connection failures and timeouts) is retried with the
//! policy's backoff.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use igl_core::ClaimedJob;
use igl_workers::{Handled, JobError, JobHandler};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderValue, LINK, RETRY_AFTER};
use serde::{Deserialize, Serialize};

use super::Shared;
use super::callback::{check_callback_url, is_refused_address, signature};
use super::observer::now_micros;

/// The signature header.
pub(crate) const SIGNATURE_HEADER: &str = "x-hub-signature";

/// The longest `Retry-After` honoured; longer ones are shortened to it.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A delivery job (versioned: add `V2` beside `V1`, never change `V1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub(crate) enum DeliveryJob {
    /// Announce `message` under `topic` to the subscription `subscription`.
    #[serde(rename = "channel.deliver.v1")]
    DeliverV1 {
        subscription: i64,
        message: i64,
        topic: String,
    },
}

impl DeliveryJob {
    pub(crate) fn to_payload(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// Delivers announcements of one endpoint.
#[derive(Debug)]
pub(crate) struct DeliveryHandler {
    pub(crate) shared: Arc<Shared>,
}

/// A failed delivery (recorded on the job).
#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("undecodable delivery job: {0}")]
    Payload(serde_json::Error),
    #[error("subscription store unavailable")]
    Store(#[source] sqlx::Error),
    #[error("callback {callback} is not allowed: {reason}")]
    Refused {
        callback: String,
        reason: &'static str,
    },
    #[error("callback {callback} failed")]
    Request {
        callback: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("callback {callback} answered {status}")]
    Status {
        callback: String,
        status: StatusCode,
    },
}

#[async_trait]
impl JobHandler for DeliveryHandler {
    fn name(&self) -> &'static str {
        "channel-delivery"
    }

    async fn handle(&self, job: &ClaimedJob) -> Result<Handled, JobError> {
        let DeliveryJob::DeliverV1 {
            subscription,
            message,
            topic,
        } = serde_json::from_value(job.payload.clone())
            .map_err(|error| JobError::permanent(DeliveryError::Payload(error)))?;
        let shared = &self.shared;
        let Some(subscriber) = shared
            .store
            .subscription(subscription)
            .await
            .map_err(|error| JobError::transient(DeliveryError::Store(error)))?
        else {
            tracing::debug!(subscription, message, "subscription gone, delivery dropped");
            return Ok(Handled::Done);
        };
        if subscriber.expires_at <= now_micros() {
            tracing::debug!(
                subscription,
                message,
                "subscription expired, delivery dropped"
            );
            return Ok(Handled::Done);
        }
        let callback =
            check_callback_url(&subscriber.callback, shared.config.allow_loopback_callbacks)
                .map_err(|error| {
                    JobError::permanent(DeliveryError::Refused {
                        callback: subscriber.callback.clone(),
                        reason: error.message(),
                    })
                })?;

        let body = serde_json::json!({ "id": message }).to_string();
        let hub = format!(
            "{}{}",
            shared.config.public_base(),
            subscriber.kind.hub_path()
        );
        let link = format!("<{hub}>; rel=\"hub\", <{topic}>; rel=\"self\"");
        let mut request = shared
            .http
            .post(callback)
            .timeout(shared.config.delivery.timeout)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(LINK, link);
        if let Some(secret) = subscriber.secret.as_deref() {
            request = request.header(SIGNATURE_HEADER, signature(secret, body.as_bytes()));
        }
        let response = match request.body(body).send().await {
            Ok(response) => response,
            Err(error) => {
                let refused = is_refused_address(&error);
                let failure = DeliveryError::Request {
                    callback: subscriber.callback.clone(),
                    source: error,
                };
                return Err(if refused {
                    JobError::permanent(failure)
                } else {
                    JobError::transient(failure)
                });
            }
        };
        let status = response.status();
        if status.is_success() {
            metrics::counter!("igl_channel_deliveries_total", "outcome" => "delivered")
                .increment(1);
            return Ok(Handled::Done);
        }
        if status == StatusCode::GONE {
            shared
                .store
                .delete_subscription_by_id(subscriber.id)
                .await
                .map_err(|error| JobError::transient(DeliveryError::Store(error)))?;
            shared.subscription_changed();
            tracing::info!(
                subscription = subscriber.id,
                callback = %subscriber.callback,
                "callback answered 410 Gone, subscription removed"
            );
            metrics::counter!("igl_channel_deliveries_total", "outcome" => "gone").increment(1);
            return Ok(Handled::Done);
        }
        metrics::counter!("igl_channel_deliveries_total", "outcome" => "failed").increment(1);
        let retry_after = matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        )
        .then(|| retry_after(response.headers().get(RETRY_AFTER)))
        .flatten();
        let failure = DeliveryError::Status {
            callback: subscriber.callback.clone(),
            status,
        };
        Err(match retry_after {
            Some(delay) => JobError::retry_after(delay, failure),
            None => JobError::transient(failure),
        })
    }
}

/// A `Retry-After` in seconds (HTTP dates are ignored: the backoff applies then).
fn retry_after(value: Option<&HeaderValue>) -> Option<Duration> {
    let seconds: u64 = value?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_payload_is_tagged_and_versioned() {
        let job = DeliveryJob::DeliverV1 {
            subscription: 3,
            message: 42,
            topic: "jurisdiction.SG".to_owned(),
        };
        let payload = job.to_payload();
        assert_eq!(
            payload,
            serde_json::json!({"type": "channel.deliver.v1", "subscription": 3, "message": 42,
                               "topic": "jurisdiction.SG"})
        );
        assert_eq!(serde_json::from_value::<DeliveryJob>(payload).unwrap(), job);
    }

    #[test]
    fn retry_after_seconds() {
        assert_eq!(
            retry_after(Some(&HeaderValue::from_static("7"))),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after(Some(&HeaderValue::from_static("999999"))),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            retry_after(Some(&HeaderValue::from_static(
                "Wed, 21 Oct 2015 07:28:00 GMT"
            ))),
            None
        );
        assert_eq!(retry_after(None), None);
    }
}
