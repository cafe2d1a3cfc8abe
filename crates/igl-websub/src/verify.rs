//! WebSub intent verification (`websub-verify.v1` jobs).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use igl_core::pipeline::VERIFY_QUEUE;
use igl_core::subscriptions::{HubSecret, NewSubscription, topic_key};
use igl_core::{ClaimedJob, NewJob, Storage};
use igl_domain::Timestamp;
use igl_workers::{Handled, JobError, JobHandler};
use serde::{Deserialize, Serialize};

use crate::HubConfig;
use crate::policy::check_callback;

/// A subscribe or unsubscribe request waiting for verification.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "websub-verify.v1")]
pub struct VerifyJob {
    /// `subscribe` or `unsubscribe`.
    pub mode: String,
    /// The topic pattern.
    pub topic: String,
    /// The subscriber's callback URL.
    pub callback: String,
    /// The granted lease.
    pub lease_seconds: u64,
    /// The subscriber's secret, when given (stored with the subscription).
    pub secret: Option<String>,
}

impl std::fmt::Debug for VerifyJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyJob")
            .field("mode", &self.mode)
            .field("topic", &self.topic)
            .field("callback", &self.callback)
            .field("lease_seconds", &self.lease_seconds)
            .field("secret", &self.secret.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl VerifyJob {
    /// The job on the verification queue. No dedup key: a repeated request is verified
    /// again with a fresh challenge, and the last verified one wins.
    pub fn into_new_job(self) -> NewJob {
        NewJob::new(
            VERIFY_QUEUE,
            serde_json::to_value(&self).unwrap_or_default(),
        )
    }
}

/// Verifies intents: GETs the callback (keeping its query string) with `hub.mode`,
/// `hub.topic`, a single-use random `hub.challenge` and `hub.lease_seconds`. Only a 2xx
/// whose body equals the challenge activates (or removes) the subscription; any other
/// answer leaves the previous state unchanged. Network failures are retried.
///
/// Before that, two policies: a callback the callback policy refuses (it may have changed
/// since the request) is never contacted; a subscription the hub refuses by policy (see
/// `HubConfig::max_subscriptions`) is denied with a `hub.mode=denied` notification.
#[derive(Debug, Clone)]
pub struct VerifyIntent {
    storage: Arc<dyn Storage>,
    client: reqwest::Client,
    config: HubConfig,
}

impl VerifyIntent {
    /// A verifier using `client` for outbound calls.
    pub fn new(storage: Arc<dyn Storage>, client: reqwest::Client, config: HubConfig) -> Self {
        Self {
            storage,
            client,
            config,
        }
    }
}

impl VerifyIntent {
    /// Why the hub refuses this subscription by policy, if it does: a new (topic,
    /// callback) pair beyond `HubConfig::max_subscriptions`. Renewals are never denied.
    async fn denial(&self, request: &VerifyJob) -> Result<Option<String>, JobError> {
        if self.storage.subscription_count().await? < self.config.max_subscriptions {
            return Ok(None);
        }
        let key = topic_key(&request.topic);
        let renewal = self
            .storage
            .matching_subscriptions(&request.topic, Timestamp::now_utc())
            .await?
            .iter()
            .any(|s| s.callback == request.callback && s.topic_key == key);
        Ok((!renewal).then(|| {
            format!(
                "the hub holds its maximum of {} subscriptions",
                self.config.max_subscriptions
            )
        }))
    }

    /// Tells the subscriber its subscription was denied (W3C WebSub §5.2): GET the
    /// callback with `hub.mode=denied`, `hub.topic` and `hub.reason`. The answer is not
    /// looked at; a network failure retries the job (which checks the policy again).
    async fn notify_denial(
        &self,
        mut url: url::Url,
        request: &VerifyJob,
        reason: &str,
    ) -> Result<(), JobError> {
        url.query_pairs_mut()
            .append_pair("hub.mode", "denied")
            .append_pair("hub.topic", &request.topic)
            .append_pair("hub.reason", reason);
        self.client
            .get(url)
            .timeout(self.config.timeout)
            .send()
            .await
            .map_err(|error| JobError::transient(format!("denial notification failed: {error}")))?;
        metrics::counter!("igl_websub_verifications_total", "outcome" => "denied").increment(1);
        tracing::info!(callback = %request.callback, topic = %request.topic, %reason, "subscription denied; subscriber notified");
        Ok(())
    }
}

#[async_trait]
impl JobHandler for VerifyIntent {
    fn name(&self) -> &'static str {
        "websub-verify"
    }

    async fn handle(&self, job: &ClaimedJob) -> Result<Handled, JobError> {
        let request: VerifyJob =
            serde_json::from_value(job.payload.clone()).map_err(JobError::permanent)?;
        let mut url = match check_callback(&request.callback, self.config.callbacks) {
            Ok(url) => url,
            Err(reason) => {
                // The policy may have changed since the request was accepted. A callback
                // the policy refuses is never contacted, not even to tell it so.
                tracing::warn!(callback = %request.callback, %reason, "callback refused by the callback policy; not contacted");
                metrics::counter!("igl_websub_verifications_total", "outcome" => "refused-callback")
                    .increment(1);
                return Ok(Handled::Done);
            }
        };
        if request.mode == "subscribe"
            && let Some(reason) = self.denial(&request).await?
        {
            self.notify_denial(url, &request, &reason).await?;
            return Ok(Handled::Done);
        }
        let challenge = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        url.query_pairs_mut()
            .append_pair("hub.mode", &request.mode)
            .append_pair("hub.topic", &request.topic)
            .append_pair("hub.challenge", &challenge)
            .append_pair("hub.lease_seconds", &request.lease_seconds.to_string());
        let response = self
            .client
            .get(url)
            .timeout(self.config.timeout)
            .send()
            .await
            .map_err(|error| {
                JobError::transient(format!("verification request failed: {error}"))
            })?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if !status.is_success() || body != challenge {
            tracing::info!(
                callback = %request.callback,
                topic = %request.topic,
                mode = %request.mode,
                %status,
                "intent not verified; subscription unchanged"
            );
            metrics::counter!("igl_websub_verifications_total", "outcome" => "refused")
                .increment(1);
            return Ok(Handled::Done);
        }
        match request.mode.as_str() {
            "subscribe" => {
                let lease = Duration::from_secs(request.lease_seconds);
                let expires_at = Timestamp::now_utc() + lease;
                self.storage
                    .upsert_subscription(&NewSubscription {
                        topic: request.topic.clone(),
                        callback: request.callback.clone(),
                        secret: request.secret.clone().map(HubSecret),
                        expires_at,
                    })
                    .await?;
            }
            "unsubscribe" => {
                self.storage
                    .remove_subscription(&request.topic, &request.callback)
                    .await?;
            }
            other => return Err(JobError::permanent(format!("unknown mode {other:?}"))),
        }
        metrics::counter!("igl_websub_verifications_total", "outcome" => "verified").increment(1);
        tracing::info!(callback = %request.callback, topic = %request.topic, mode = %request.mode, "intent verified");
        Ok(Handled::Done)
    }
}
