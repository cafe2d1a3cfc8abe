//! The subscriber to channels (REFERENCE-WIRE §4.6, without its defects): keeps this
//! node's Message Reception API subscribed to every configured channel for the node's own
//! jurisdiction, and catches up on messages announced while it was not listening.
//!
//! It is a long-running task, not a job handler: [`ChannelSubscriptions::run`] runs one
//! independent loop per channel, so a channel that is down only delays itself. Each loop:
//! 1. subscribes `{public_url}/channel-message/{channel_id}` with `hub.topic` = the own
//!    jurisdiction and `hub.lease_seconds` = [`SubscriberConfig::lease`] (the reference sent
//!    no lease and relied on the hub's five-day default);
//! 2. on success, catches up through the channel's listing (below), then sleeps until
//!    [`SubscriberConfig::renew_before`] ahead of the lease's end (minus a little jitter)
//!    and renews — per channel (the reference kept one timestamp for all channels, so one
//!    success postponed the renewal of the others);
//! 3. on failure, retries with exponential backoff and jitter
//!    ([`SubscriberConfig::retry`]), for as long as it takes;
//! 4. stops as soon as the `CancellationToken` is cancelled, even mid-request.
//!
//! # Catch-up
//!
//! Callbacks sent while the node was down are lost by the reference channels (3 attempts).
//! After every successful subscription the loop lists
//! `GET {base}/messages?receiver=<own>[&after_id=<last id seen>]` and queues a
//! `channel-message.v1` job per listed id (the same job a callback queues; the dedup key and
//! the retriever's idempotent store make repeats harmless). Calls go through the channel's
//! [`ChannelClient`] (the one the router and retriever use), which accepts the listing
//! shapes of `igl_channels::client` (an array, or an object with a `messages` array). Pages are followed with `after_id` until one is empty or makes no progress (at
//! most [`SubscriberConfig::catch_up_max_pages`] per round). A channel without the listing
//! (404, 405, 501: no reference channel has one) is skipped with an informational log.
//! The cursor lives in memory only, so after a restart the first round lists the channel
//! from the start; a durable cursor is future work.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use igl_core::channel::{ChannelClient, ChannelError, Channels, ListQuery};
use igl_core::pipeline::PipelineJob;
use igl_core::{JobQueue, NewJob};
use igl_domain::Jurisdiction;
use rand::Rng as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::RetryPolicy;

/// A WebSub subscription request to a channel's hub.
#[derive(Clone, PartialEq, Eq)]
pub struct SubscriptionRequest {
    /// `hub.callback`: where the channel posts `{"id"}` notifications.
    pub callback: String,
    /// `hub.topic`: the jurisdiction whose messages are wanted.
    pub topic: String,
    /// `hub.lease_seconds`.
    pub lease: Duration,
    /// `hub.secret`, if any (not shown by `Debug`).
    pub secret: Option<String>,
}

impl fmt::Debug for SubscriptionRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionRequest")
            .field("callback", &self.callback)
            .field("topic", &self.topic)
            .field("lease", &self.lease)
            .field("secret", &self.secret.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// Why a channel call of the subscriber failed.
#[derive(Debug, thiserror::Error)]
enum SubscribeError {
    /// The channel id has no client (not in `[[channels]]`).
    #[error("no channel with id {0:?} is configured")]
    UnknownChannel(String),
    /// The Channel API call failed.
    #[error(transparent)]
    Channel(#[from] ChannelError),
}

/// Whether a listing refusal means "this channel has no listing" (404, 405, 501: no
/// reference channel implements it).
fn has_no_listing(error: &ChannelError) -> bool {
    matches!(
        error,
        ChannelError::Refused {
            status: 404 | 405 | 501,
            ..
        }
    )
}

/// How the subscriber works.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriberConfig {
    /// This node's jurisdiction: the subscribed topic and the listed receiver.
    pub jurisdiction: Jurisdiction,
    /// The base URL at which channels reach this node's Message Reception API
    /// (`node.public_url`); the callback is `{public_url}/channel-message/{channel_id}`.
    pub public_url: String,
    /// The configured channel ids to subscribe to.
    pub channel_ids: Vec<String>,
    /// The lease asked for. Default 1 day.
    pub lease: Duration,
    /// How long before the lease ends a renewal starts. Default 12 h (half the lease), so
    /// a failing channel has hours of retries before the subscription lapses.
    pub renew_before: Duration,
    /// Backoff after a failed subscription (`max_attempts` unused: it never gives up).
    /// Default 1 s doubling to 5 min, with jitter.
    pub retry: RetryPolicy,
    /// `hub.secret` sent with the subscription, if any. Default none.
    pub secret: Option<String>,
    /// Whether to catch up through the channel listing after subscribing. Default true.
    pub catch_up: bool,
    /// The most listing pages read per catch-up round. Default 100.
    pub catch_up_max_pages: u32,
}

impl SubscriberConfig {
    /// The defaults for `jurisdiction` reachable at `public_url`, subscribing to
    /// `channel_ids`.
    pub fn new(
        jurisdiction: Jurisdiction,
        public_url: impl Into<String>,
        channel_ids: impl IntoIterator<Item = String>,
    ) -> Self {
        Self {
            jurisdiction,
            public_url: public_url.into(),
            channel_ids: channel_ids.into_iter().collect(),
            lease: Duration::from_secs(24 * 3600),
            renew_before: Duration::from_secs(12 * 3600),
            retry: RetryPolicy {
                max_attempts: u32::MAX,
                base_delay: Duration::from_secs(1),
                max_delay: Duration::from_secs(300),
            },
            secret: None,
            catch_up: true,
            catch_up_max_pages: 100,
        }
    }

    /// The callback URL registered for `channel_id`.
    pub fn callback_url(&self, channel_id: &str) -> String {
        format!(
            "{}/channel-message/{channel_id}",
            self.public_url.trim_end_matches('/')
        )
    }

    /// How long after a successful subscription to renew it (before jitter).
    fn renewal_delay(&self) -> Duration {
        self.lease
            .saturating_sub(self.renew_before)
            .max(Duration::from_millis(10))
    }
}

/// The subscriber task; see the module documentation.
#[derive(Debug, Clone)]
pub struct ChannelSubscriptions {
    channels: Arc<Channels>,
    queue: Arc<dyn JobQueue>,
    config: Arc<SubscriberConfig>,
}

impl ChannelSubscriptions {
    /// A subscriber that talks to channels through the clients of `channels` (the same
    /// clients, timeouts and circuit breakers the router uses) and queues catch-up jobs on
    /// `queue`.
    pub fn new(
        channels: Arc<Channels>,
        queue: Arc<dyn JobQueue>,
        config: SubscriberConfig,
    ) -> Self {
        Self {
            channels,
            queue,
            config: Arc::new(config),
        }
    }

    fn client(&self, channel_id: &str) -> Result<&Arc<dyn ChannelClient>, SubscribeError> {
        self.channels
            .client(channel_id)
            .ok_or_else(|| SubscribeError::UnknownChannel(channel_id.to_owned()))
    }

    /// Subscribes `request.callback` at the channel (WebSub, `by_jurisdiction`).
    async fn subscribe(
        &self,
        channel_id: &str,
        request: &SubscriptionRequest,
    ) -> Result<(), SubscribeError> {
        self.client(channel_id)?
            .subscribe(
                &request.callback,
                &request.topic,
                request.lease.max(Duration::from_secs(1)),
                request.secret.as_deref(),
            )
            .await
            .map_err(SubscribeError::from)
    }

    /// The ids of the channel's messages for `receiver` after `after_id` (all when
    /// `None`), oldest first; `Ok(None)` when the channel has no listing.
    async fn list_messages(
        &self,
        channel_id: &str,
        receiver: Jurisdiction,
        after_id: Option<&str>,
    ) -> Result<Option<Vec<String>>, SubscribeError> {
        let query = ListQuery {
            receiver: Some(receiver),
            after_id: after_id.map(str::to_owned),
            ..ListQuery::default()
        };
        match self.client(channel_id)?.list_messages(&query).await {
            Ok(page) => Ok(Some(
                page.messages.into_iter().map(|listed| listed.id).collect(),
            )),
            Err(error) if has_no_listing(&error) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// Keeps every channel subscribed until `shutdown` is cancelled, then returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut loops = JoinSet::new();
        for channel_id in &self.config.channel_ids {
            let span = info_span!("channel-subscription", channel = %channel_id);
            loops.spawn(
                self.clone()
                    .maintain(channel_id.clone(), shutdown.clone())
                    .instrument(span),
            );
        }
        info!(channels = loops.len(), "channel subscriber started");
        while let Some(joined) = loops.join_next().await {
            if let Err(error) = joined {
                warn!(%error, "channel subscription loop ended abnormally");
            }
        }
        info!("channel subscriber stopped");
    }

    /// The loop of one channel.
    async fn maintain(self, channel_id: String, shutdown: CancellationToken) {
        let request = SubscriptionRequest {
            callback: self.config.callback_url(&channel_id),
            topic: self.config.jurisdiction.to_string(),
            lease: self.config.lease,
            secret: self.config.secret.clone(),
        };
        let mut failures: u32 = 0;
        let mut catch_up_state = CatchUp::default();
        loop {
            let round = async {
                match self.subscribe(&channel_id, &request).await {
                    Ok(()) => {
                        failures = 0;
                        info!(callback = %request.callback, lease_secs = request.lease.as_secs(), "subscribed to channel");
                        metrics::counter!("igl_channel_subscriptions_total", "channel" => channel_id.clone(), "outcome" => "ok").increment(1);
                        if self.config.catch_up {
                            self.catch_up(&channel_id, &mut catch_up_state).await;
                        }
                        let delay = self.config.renewal_delay();
                        // Renew up to 10% early, so channels do not renew in lockstep.
                        delay.mul_f64(1.0 - rand::rng().random_range(0.0..0.1))
                    }
                    Err(error) => {
                        failures = failures.saturating_add(1);
                        let delay = self.config.retry.backoff(failures, &mut rand::rng());
                        warn!(
                            error = %crate::handler::error_chain(&error),
                            failures,
                            retry_in_ms = delay.as_millis() as u64,
                            "subscribing to channel failed"
                        );
                        metrics::counter!("igl_channel_subscriptions_total", "channel" => channel_id.clone(), "outcome" => "failed").increment(1);
                        delay
                    }
                }
            };
            let delay = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                delay = round => delay,
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Lists the channel's messages for this node after the cursor and queues their
    /// retrieval. Failures are logged; the next round tries again.
    async fn catch_up(&self, channel_id: &str, state: &mut CatchUp) {
        let receiver = self.config.jurisdiction;
        let mut queued = 0usize;
        for _ in 0..self.config.catch_up_max_pages {
            let listed = self
                .list_messages(channel_id, receiver, state.cursor.as_deref())
                .await;
            let ids = match listed {
                Ok(Some(ids)) => ids,
                Ok(None) => {
                    if !state.reported_unsupported {
                        info!("channel has no message listing, catch-up skipped");
                        state.reported_unsupported = true;
                    }
                    return;
                }
                Err(error) => {
                    warn!(error = %crate::handler::error_chain(&error), "channel catch-up failed");
                    return;
                }
            };
            let Some(last) = ids.last().cloned() else {
                break;
            };
            let jobs: Vec<NewJob> = ids
                .into_iter()
                .map(|message_id| {
                    PipelineJob::ChannelMessageV1 {
                        channel_id: channel_id.to_owned(),
                        message_id,
                    }
                    .into_new_job()
                })
                .collect();
            if let Err(error) = self.queue.enqueue(&jobs).await {
                warn!(error = %crate::handler::error_chain(&error), "queueing catch-up jobs failed");
                return;
            }
            queued += jobs.len();
            if state.cursor.as_deref() == Some(last.as_str()) {
                // The channel ignores `after_id`; stop rather than loop.
                break;
            }
            state.cursor = Some(last);
        }
        if queued > 0 {
            info!(queued, "channel catch-up queued messages");
        } else {
            debug!("channel catch-up found nothing new");
        }
    }
}

/// The catch-up state of one channel.
#[derive(Debug, Default)]
struct CatchUp {
    /// The last id listed.
    cursor: Option<String>,
    /// Whether the missing listing was logged already.
    reported_unsupported: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_missing_route_means_no_listing() {
        let refused = |status| ChannelError::Refused {
            channel: "c".into(),
            status,
            detail: String::new(),
        };
        assert!(has_no_listing(&refused(404)));
        assert!(has_no_listing(&refused(501)));
        assert!(!has_no_listing(&refused(400)));
    }

    #[test]
    fn callback_urls() {
        let config = SubscriberConfig::new(
            Jurisdiction::parse("SG").unwrap(),
            "https://sg.example/igl/",
            ["au-sg".to_owned()],
        );
        assert_eq!(
            config.callback_url("au-sg"),
            "https://sg.example/igl/channel-message/au-sg"
        );
        assert_eq!(config.renewal_delay(), Duration::from_secs(12 * 3600));
    }
}
