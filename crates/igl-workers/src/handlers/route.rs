//! The router (REFERENCE-WIRE §4.2, without its defects): for an outbound `pending`
//! message, pick a channel from the routing table, post the message to it, and record the
//! channel's id for it — the message stays `pending` (with `channel_status = received`)
//! until the channel poller sees the channel confirm it. When the answer to the post
//! already says `confirmed` (our shared-db endpoints: their commit is the confirmation,
//! and they answer after it), the message is `accepted` in the same unit of work, with its
//! status event, and no poll is needed.
//!
//! - **Which channel**: the rules accepting the message are tried in table order; the
//!   first channel that takes the post wins. A channel that is unavailable (unreachable,
//!   timing out, 5xx, 429, its circuit open, or misconfigured: 401, 403, a 404 or 405 on
//!   `POST /messages`) is skipped for now; a channel that refuses the message itself
//!   (400 and the other 4xx) is skipped for good.
//! - **Outcomes**: posted → channel fields recorded and a `channel-poll.v1` job queued
//!   (or, confirmed in the answer, the message accepted), with the ack, in one unit of
//!   work. No rule accepts the message, or every accepting
//!   channel refused it → the message is `rejected`, and the `message.<ref>.status` event
//!   carries the reason as an extra `reason` field (also logged). Some accepting channel
//!   was only unavailable → the job is retried with backoff (`Retry-After` when the
//!   channel sent one), never rejected; after the queue's `max_attempts` it goes to the
//!   dead letters, where an operator can replay it, and the message stays `pending`.
//! - **Idempotence**: a message that already has a `channel_txn_id` (and was not revoked)
//!   is not posted again; the job only makes sure a poll job exists. A message that is no
//!   longer `pending` is skipped, except an `accepted` one whose channel revoked it, which
//!   is posted again (see [`crate::handlers::PollChannel`]).
//!
//! **Idempotent posting.** There is a window in which a post is repeated: the channel
//! commits it, and then the answer is lost (timeout), this process dies, its lease
//! expires, or the database refuses the commit (retried briefly here first). The next
//! attempt posts again through [`igl_core::channel::ChannelClient::post_message_with_ref`],
//! which carries the message reference as an idempotency key: our channel endpoints answer
//! with the id of the message they already hold, so the channel has one message and the
//! router records that id. Reference endpoints ignore the key; with them the channel may
//! hold the message twice, and the receiving side must tolerate that duplicate (our
//! retriever does, on `sender:sender_ref`, when the channel carries `sender_ref`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use igl_core::channel::routing::RoutingRule;
use igl_core::channel::{ChannelError, ChannelReceipt, Channels, RemoteStatus};
use igl_core::pipeline::{MessageJob, PipelineJob, status_event};
use igl_core::{ClaimedJob, Storage, StoreError};
use igl_domain::{ChannelStatus, Message, MessageRef, MessageStatus, MessageUpdate};
use metrics::counter;

use crate::handler::error_chain;
use crate::{Handled, JobError, JobHandler};

/// `igl_channel_posts_total{channel, outcome}`: posts to channels by outcome (`posted`,
/// `refused`, `unavailable`).
pub const CHANNEL_POSTS_TOTAL: &str = "igl_channel_posts_total";
/// `igl_messages_rejected_total{cause}`: outbound messages rejected, by cause (`no_route`,
/// `refused`, `undeliverable`).
pub const MESSAGES_REJECTED_TOTAL: &str = "igl_messages_rejected_total";

/// How long after posting the first status poll is due, by default.
pub const DEFAULT_FIRST_POLL_DELAY: Duration = Duration::from_millis(50);

/// How often recording a successful post is tried when the database is unavailable
/// before the job is left to be retried (which would post again).
const RECORD_ATTEMPTS: u32 = 3;

/// Handles `route.v1` jobs.
#[derive(Debug, Clone)]
pub struct RouteMessage {
    storage: Arc<dyn Storage>,
    channels: Arc<Channels>,
    first_poll_delay: Duration,
}

/// What the router does with a message.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// Nothing to do.
    Skip(&'static str),
    /// Already posted: make sure the poller tracks it.
    EnsurePolled,
    /// Post it.
    Post,
}

impl RouteMessage {
    /// A router over `channels` (routing table and clients).
    pub fn new(storage: Arc<dyn Storage>, channels: Arc<Channels>) -> Self {
        Self {
            storage,
            channels,
            first_poll_delay: DEFAULT_FIRST_POLL_DELAY,
        }
    }

    /// Sets how long after a post the first status poll is due (default
    /// [`DEFAULT_FIRST_POLL_DELAY`]).
    pub fn with_first_poll_delay(mut self, delay: Duration) -> Self {
        self.first_poll_delay = delay;
        self
    }

    fn plan(message: &Message) -> Plan {
        let revoked = message.channel_status == Some(ChannelStatus::Revoked);
        match message.status {
            MessageStatus::Pending if message.channel_txn_id.is_some() && !revoked => {
                Plan::EnsurePolled
            }
            MessageStatus::Pending => Plan::Post,
            MessageStatus::Accepted if revoked => Plan::Post,
            MessageStatus::Received => Plan::Skip("inbound messages are not routed"),
            MessageStatus::Accepted | MessageStatus::Rejected => Plan::Skip("status is final"),
        }
    }

    async fn ensure_polled(
        &self,
        job: &ClaimedJob,
        reference: &MessageRef,
    ) -> Result<Handled, JobError> {
        let mut unit = self.storage.begin().await?;
        unit.enqueue(&[self.poll_job(reference)]).await?;
        unit.ack(&[job.receipt()]).await?;
        unit.commit().await?;
        tracing::debug!(%reference, "already posted; poll job ensured");
        Ok(Handled::AckedInTransaction)
    }

    fn poll_job(&self, reference: &MessageRef) -> igl_core::NewJob {
        PipelineJob::channel_poll(reference)
            .into_new_job()
            .with_delay(self.first_poll_delay)
    }

    async fn post(&self, job: &ClaimedJob, message: &Message) -> Result<Handled, JobError> {
        let reference = message.reference();
        let routing = self.channels.routing();
        let candidates: Vec<&RoutingRule> = routing.matching(&message.content).collect();
        if candidates.is_empty() {
            let reason = match routing.route(&message.content) {
                Err(no_route) => no_route.reason,
                Ok(_) => "no routing rule accepts the message".to_owned(),
            };
            return self.reject(job, message, "no_route", reason).await;
        }
        let mut unavailable: Vec<ChannelError> = Vec::new();
        let mut refused: Vec<ChannelError> = Vec::new();
        for rule in candidates {
            let channel = rule.channel_id.as_str();
            let Some(client) = self.channels.client(channel) else {
                return Err(JobError::permanent(format!(
                    "routing rule names channel {channel}, which has no client"
                )));
            };
            let posting = std::time::Instant::now();
            match client
                .post_message_with_ref(&message.content, &message.sender_ref)
                .await
            {
                Ok(receipt) => {
                    counter!(CHANNEL_POSTS_TOTAL, "channel" => channel.to_owned(), "outcome" => "posted")
                        .increment(1);
                    let post_ms = posting.elapsed().as_millis() as u64;
                    return self
                        .record_post(job, &reference, rule, &receipt, post_ms)
                        .await;
                }
                Err(error) if error.is_transient() => {
                    counter!(CHANNEL_POSTS_TOTAL, "channel" => channel.to_owned(), "outcome" => "unavailable")
                        .increment(1);
                    tracing::warn!(%reference, channel, error = %error_chain(&error), "channel unavailable, trying the next one");
                    unavailable.push(error);
                }
                Err(error) => {
                    counter!(CHANNEL_POSTS_TOTAL, "channel" => channel.to_owned(), "outcome" => "refused")
                        .increment(1);
                    tracing::warn!(%reference, channel, error = %error_chain(&error), "channel refused the message");
                    refused.push(error);
                }
            }
        }
        if !unavailable.is_empty() {
            let retry_after = unavailable
                .iter()
                .filter(|error| matches!(error, ChannelError::Unavailable { .. }))
                .filter_map(ChannelError::retry_after)
                .min();
            let cause = format!(
                "no channel took the message: {}",
                describe(unavailable.iter().chain(&refused))
            );
            return Err(match retry_after {
                Some(delay) => JobError::retry_after(delay, cause),
                None => JobError::transient(cause),
            });
        }
        self.reject(job, message, "refused", describe(&refused))
            .await
    }

    /// Records the post, queues the first poll and acks, in one unit of work. A database
    /// that is briefly unavailable is retried here: failing the job now would post again.
    async fn record_post(
        &self,
        job: &ClaimedJob,
        reference: &MessageRef,
        rule: &RoutingRule,
        receipt: &ChannelReceipt,
        post_ms: u64,
    ) -> Result<Handled, JobError> {
        let recording = std::time::Instant::now();
        let confirmed = receipt
            .status
            .as_ref()
            .and_then(RemoteStatus::posting_status)
            == Some(ChannelStatus::Confirmed);
        let update = MessageUpdate {
            status: confirmed.then_some(MessageStatus::Accepted),
            channel_id: Some(rule.channel_id.clone()),
            channel_txn_id: Some(receipt.id.clone()),
            channel_status: Some(if confirmed {
                ChannelStatus::Confirmed
            } else {
                ChannelStatus::Received
            }),
        };
        let mut attempt = 1;
        loop {
            match self.try_record_post(job, reference, &update).await {
                Ok(()) => break,
                Err(StoreError::InvalidUpdate { source, .. }) => {
                    // Another router recorded a different post of this message first (a
                    // lease lost mid-post): the message is on the channel twice.
                    tracing::error!(
                        %reference,
                        channel = %rule.channel_id,
                        channel_txn_id = %receipt.id,
                        error = %source,
                        "message was posted twice; keeping the first recorded post"
                    );
                    return Ok(Handled::Done);
                }
                Err(error) if error.is_transient() && attempt < RECORD_ATTEMPTS => {
                    tracing::warn!(%reference, error = %error_chain(&error), attempt, "cannot record the post yet, retrying");
                    tokio::time::sleep(Duration::from_millis(50) * 2u32.pow(attempt)).await;
                    attempt += 1;
                }
                Err(error) => {
                    tracing::error!(
                        %reference,
                        channel = %rule.channel_id,
                        channel_txn_id = %receipt.id,
                        error = %error_chain(&error),
                        "posted but cannot record it; the retry will post again"
                    );
                    return Err(error.into());
                }
            }
        }
        tracing::info!(
            %reference,
            channel = %rule.channel_id,
            channel_txn_id = %receipt.id,
            post_ms,
            record_ms = recording.elapsed().as_millis() as u64,
            confirmed,
            "message posted to channel"
        );
        Ok(Handled::AckedInTransaction)
    }

    async fn try_record_post(
        &self,
        job: &ClaimedJob,
        reference: &MessageRef,
        update: &MessageUpdate,
    ) -> Result<(), StoreError> {
        let mut unit = self.storage.begin().await?;
        let updated = unit.update_message(reference, update).await?;
        if update.status == Some(MessageStatus::Accepted) {
            // Confirmed in the post's answer: nothing left to poll for.
            if updated.status_changed() {
                unit.append_event(&status_event(&updated.after, MessageStatus::Accepted))
                    .await?;
            }
        } else {
            unit.enqueue(&[self.poll_job(reference)]).await?;
        }
        unit.ack(&[job.receipt()]).await?;
        unit.commit().await
    }

    async fn reject(
        &self,
        job: &ClaimedJob,
        message: &Message,
        cause: &'static str,
        reason: String,
    ) -> Result<Handled, JobError> {
        let reference = message.reference();
        if message.status != MessageStatus::Pending {
            // A revoked, already accepted message: its status is final.
            return Err(JobError::permanent(format!(
                "cannot post revoked message {reference} again: {reason}"
            )));
        }
        tracing::warn!(%reference, reason = %reason, "message rejected: no channel takes it");
        reject_message(self.storage.as_ref(), job, &reference, cause, &reason).await
    }
}

/// Marks `reference` rejected with the status event carrying `reason`, and acks `job`,
/// in one unit of work.
pub(crate) async fn reject_message(
    storage: &dyn Storage,
    job: &ClaimedJob,
    reference: &MessageRef,
    cause: &'static str,
    reason: &str,
) -> Result<Handled, JobError> {
    rejecting(storage, job, reference, None, cause, reason).await
}

/// [`reject_message`], also setting the channel status.
pub(crate) async fn rejecting(
    storage: &dyn Storage,
    job: &ClaimedJob,
    reference: &MessageRef,
    channel_status: Option<ChannelStatus>,
    cause: &'static str,
    reason: &str,
) -> Result<Handled, JobError> {
    let mut unit = storage.begin().await?;
    let update = MessageUpdate {
        status: Some(MessageStatus::Rejected),
        channel_status,
        ..MessageUpdate::default()
    };
    let updated = unit.update_message(reference, &update).await?;
    if updated.status_changed() {
        let mut event = status_event(&updated.after, MessageStatus::Rejected);
        if let Some(payload) = event.payload.as_object_mut() {
            payload.insert("reason".to_owned(), reason.into());
        }
        unit.append_event(&event).await?;
    }
    unit.ack(&[job.receipt()]).await?;
    unit.commit().await?;
    if updated.status_changed() {
        counter!(MESSAGES_REJECTED_TOTAL, "cause" => cause).increment(1);
    }
    Ok(Handled::AckedInTransaction)
}

/// `channel a: …; channel b: …`.
fn describe<'e>(errors: impl IntoIterator<Item = &'e ChannelError>) -> String {
    errors
        .into_iter()
        .map(|error| error_chain(error))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The message reference of a `route.v1` or `channel-poll.v1` job.
pub(crate) fn job_reference(job: &ClaimedJob, route: bool) -> Result<MessageRef, JobError> {
    let reference = match serde_json::from_value::<PipelineJob>(job.payload.clone()) {
        Ok(PipelineJob::RouteV1(MessageJob { reference })) if route => reference,
        Ok(PipelineJob::ChannelPollV1(MessageJob { reference })) if !route => reference,
        Ok(other) => {
            return Err(JobError::permanent(format!(
                "not a {} job: {other:?}",
                if route { "route" } else { "channel-poll" }
            )));
        }
        Err(error) => return Err(JobError::permanent(error)),
    };
    MessageRef::parse(&reference).map_err(JobError::permanent)
}

#[async_trait]
impl JobHandler for RouteMessage {
    fn name(&self) -> &'static str {
        "router"
    }

    async fn handle(&self, job: &ClaimedJob) -> Result<Handled, JobError> {
        let reference = job_reference(job, true)?;
        let message =
            self.storage.get_message(&reference).await?.ok_or_else(|| {
                JobError::permanent(format!("message {reference} does not exist"))
            })?;
        match Self::plan(&message) {
            Plan::Skip(why) => {
                tracing::debug!(%reference, status = %message.status, why, "not routed");
                Ok(Handled::Done)
            }
            Plan::EnsurePolled => self.ensure_polled(job, &reference).await,
            Plan::Post => self.post(job, &message).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use igl_domain::{MessageFields, NewMessage, Timestamp};

    use super::*;

    fn message(status: MessageStatus, channel_status: Option<ChannelStatus>) -> Message {
        let new = NewMessage::parse(MessageFields {
            sender: Some("AU".into()),
            receiver: Some("SG".into()),
            subject: Some("s".into()),
            obj: Some("a.b.c".into()),
            predicate: Some("a.b.c".into()),
            sender_ref: Some("r1".into()),
        })
        .unwrap();
        let posted = channel_status.is_some();
        Message {
            sender_ref: new.sender_ref,
            content: new.content,
            status,
            channel_id: posted.then(|| "c".to_owned()),
            channel_txn_id: posted.then(|| "1".to_owned()),
            channel_status,
            created_at: Timestamp::UNIX_EPOCH,
            updated_at: Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn plans() {
        use ChannelStatus::{Confirmed, Revoked};
        use MessageStatus::{Accepted, Pending, Rejected};
        assert_eq!(RouteMessage::plan(&message(Pending, None)), Plan::Post);
        assert_eq!(
            RouteMessage::plan(&message(Pending, Some(ChannelStatus::Received))),
            Plan::EnsurePolled
        );
        assert_eq!(
            RouteMessage::plan(&message(Pending, Some(Revoked))),
            Plan::Post
        );
        assert_eq!(
            RouteMessage::plan(&message(Accepted, Some(Revoked))),
            Plan::Post
        );
        assert!(matches!(
            RouteMessage::plan(&message(Accepted, Some(Confirmed))),
            Plan::Skip(_)
        ));
        assert!(matches!(
            RouteMessage::plan(&message(Rejected, None)),
            Plan::Skip(_)
        ));
        assert!(matches!(
            RouteMessage::plan(&message(MessageStatus::Received, None)),
            Plan::Skip(_)
        ));
    }
}
