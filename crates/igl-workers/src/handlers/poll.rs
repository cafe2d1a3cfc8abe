//! The channel poller: tracks an outbound message on its channel after the router posted
//! it, until the channel reports a final status (ARCHITECTURE §6, invariant 7: `accepted`
//! means the channel confirmed the message on its medium).
//!
//! For a `channel-poll.v1` job it asks the message's channel for the status of its
//! `channel_txn_id`:
//! - `confirmed` (or the api-channel's `delivered`) → the message becomes `accepted` with
//!   `channel_status = confirmed`, and a `message.<ref>.status` event is appended;
//! - `undeliverable` → `rejected` (the event's `reason` names the channel);
//! - `received` → asked again later: the job is retried with
//!   [`JobError::RetryAfter`] and growing delays (50 ms doubling to 30 s, jittered, by
//!   default), so a slow medium (a chain waiting for N blocks) is polled less and less
//!   often;
//! - `revoked` (a confirmation withdrawn, e.g. by a chain reorganisation) →
//!   `channel_status = revoked` and a new `route.v1` job, which posts the message again.
//!   A message revoked **after** it was accepted keeps its final status `accepted`
//!   (statuses never go back): it is re-posted, and its channel fields then follow the new
//!   post (`received`, later `confirmed`). A revocation is counted and logged as a warning.
//!
//! The poller stops polling a message once the channel confirmed it. A revocation after
//! that is seen only when a `channel-poll.v1` job for the message comes again (a replayed
//! job, or a future channel status notification that queues one); such a job is handled
//! like any other (still `confirmed` → nothing changes).
//!
//! Transient channel failures (unreachable, 5xx, its circuit open, and a 404 for an id the
//! channel should know) are retried with the queue's backoff.
//!
//! **Nothing stays pending invisibly**: every retry counts against the queue's
//! `max_attempts`, so a message whose channel never reports a final status ends in the
//! dead letters (`GET /api/v1/admin/dead-letters`, `igl_jobs_total{outcome="dead_lettered"}`)
//! with its last error, still `pending`, and can be replayed. Give the `channel-poll`
//! queue a generous policy (see [`PollChannel::RECOMMENDED_RETRY`]): the default one
//! would give up on a slow channel after a few seconds of polling.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use igl_core::channel::{ChannelError, Channels, RemoteStatus};
use igl_core::pipeline::{PipelineJob, status_event};
use igl_core::{ClaimedJob, Storage};
use igl_domain::{ChannelStatus, Message, MessageRef, MessageStatus, MessageUpdate};
use metrics::counter;

use super::batch::{BatchSteps, Prepared, prepare_then_write, prepare_then_write_one};
use super::route::{job_reference, rejecting};
use crate::handler::error_chain;
use crate::{Handled, JobError, JobHandler, RetryPolicy};

/// `igl_channel_polls_total{channel, outcome}`: status polls by what the channel said
/// (`confirmed`, `received`, `undeliverable`, `revoked`, `unknown`, `failed`).
pub const CHANNEL_POLLS_TOTAL: &str = "igl_channel_polls_total";

/// Handles `channel-poll.v1` jobs.
#[derive(Debug, Clone)]
pub struct PollChannel {
    storage: Arc<dyn Storage>,
    channels: Arc<Channels>,
    poll_backoff: RetryPolicy,
}

/// The message is still `received` on its channel.
#[derive(Debug, thiserror::Error)]
#[error("channel {channel} still reports message {channel_txn_id} as {status} (poll {attempt})")]
struct NotFinalYet {
    channel: String,
    channel_txn_id: String,
    status: String,
    attempt: u32,
}

impl PollChannel {
    /// A policy for the `channel-poll` queue: 240 attempts (with the default poll
    /// backoff, about 1 h 50 min of polling a message the channel keeps `received`), and
    /// 1 s doubling to 60 s between attempts after a failure to reach the channel.
    pub const RECOMMENDED_RETRY: RetryPolicy = RetryPolicy {
        max_attempts: 240,
        base_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(60),
    };

    /// A poller over `channels`, polling a `received` message after 50 ms, then twice as
    /// long each time up to 30 s (with equal jitter).
    pub fn new(storage: Arc<dyn Storage>, channels: Arc<Channels>) -> Self {
        Self {
            storage,
            channels,
            poll_backoff: RetryPolicy {
                max_attempts: u32::MAX,
                base_delay: Duration::from_millis(50),
                max_delay: Duration::from_secs(30),
            },
        }
    }

    /// Sets the delays between polls of a `received` message: `first` doubling up to
    /// `max` (with equal jitter).
    pub fn with_poll_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.poll_backoff = RetryPolicy {
            max_attempts: u32::MAX,
            base_delay: first,
            max_delay: max.max(first),
        };
        self
    }

    /// The delay before poll `attempt + 1` of a message still `received`.
    fn poll_delay(&self, attempt: u32) -> Duration {
        self.poll_backoff.backoff(attempt, &mut rand::rng())
    }

    async fn undeliverable(
        &self,
        job: &ClaimedJob,
        message: &Message,
        channel: &str,
    ) -> Result<Handled, JobError> {
        let reference = message.reference();
        let reason = format!("channel {channel} reported the message undeliverable");
        if message.status == MessageStatus::Pending {
            tracing::warn!(%reference, channel, "message rejected: undeliverable");
            return rejecting(
                self.storage.as_ref(),
                job,
                &reference,
                Some(ChannelStatus::Undeliverable),
                "undeliverable",
                &reason,
            )
            .await;
        }
        // An accepted message posted again after a revocation: its status is final.
        tracing::error!(%reference, channel, "a re-posted accepted message is undeliverable");
        let mut unit = self.storage.begin().await?;
        let update = MessageUpdate {
            channel_status: Some(ChannelStatus::Undeliverable),
            ..MessageUpdate::default()
        };
        unit.update_message(&reference, &update).await?;
        unit.ack(&[job.receipt()]).await?;
        unit.commit().await?;
        Ok(Handled::AckedInTransaction)
    }

    async fn revoked(
        &self,
        job: &ClaimedJob,
        reference: &MessageRef,
        channel: &str,
    ) -> Result<Handled, JobError> {
        let mut unit = self.storage.begin().await?;
        let update = MessageUpdate {
            channel_status: Some(ChannelStatus::Revoked),
            ..MessageUpdate::default()
        };
        unit.update_message(reference, &update).await?;
        unit.enqueue(&[PipelineJob::route(reference).into_new_job()])
            .await?;
        unit.ack(&[job.receipt()]).await?;
        unit.commit().await?;
        tracing::warn!(%reference, channel, "channel revoked the message; posting it again");
        Ok(Handled::AckedInTransaction)
    }
}

#[async_trait]
impl JobHandler for PollChannel {
    fn name(&self) -> &'static str {
        "channel-poller"
    }

    async fn handle(&self, job: &ClaimedJob) -> Result<Handled, JobError> {
        prepare_then_write_one(self, job).await
    }

    fn batched(&self) -> bool {
        true
    }

    /// Polls the batch's messages concurrently, then records every confirmation in one
    /// unit of work (the rarer outcomes write on their own).
    async fn handle_batch(&self, jobs: &[ClaimedJob]) -> Vec<Result<Handled, JobError>> {
        prepare_then_write(self, jobs).await
    }
}

/// A message its channel confirmed, to record as accepted.
#[derive(Debug)]
pub(crate) struct Confirmed {
    reference: MessageRef,
    channel: String,
}

impl BatchSteps for PollChannel {
    type Write = Confirmed;

    async fn write(&self, work: &[(&ClaimedJob, Confirmed)]) -> Result<(), JobError> {
        let mut unit = self.storage.begin().await?;
        let update = MessageUpdate {
            status: Some(MessageStatus::Accepted),
            channel_status: Some(ChannelStatus::Confirmed),
            ..MessageUpdate::default()
        };
        let mut events = Vec::with_capacity(work.len());
        for (_, confirmed) in work {
            let updated = unit.update_message(&confirmed.reference, &update).await?;
            if updated.status_changed() {
                events.push(status_event(&updated.after, MessageStatus::Accepted));
            }
        }
        unit.append_events(&events).await?;
        let receipts: Vec<_> = work.iter().map(|(job, _)| job.receipt()).collect();
        unit.ack(&receipts).await?;
        unit.commit().await?;
        for (_, confirmed) in work {
            tracing::info!(
                reference = %confirmed.reference,
                channel = %confirmed.channel,
                "channel confirmed the message: accepted"
            );
        }
        Ok(())
    }

    async fn prepare(&self, job: &ClaimedJob) -> Result<Prepared<Confirmed>, JobError> {
        let reference = job_reference(job, false)?;
        let message =
            self.storage.get_message(&reference).await?.ok_or_else(|| {
                JobError::permanent(format!("message {reference} does not exist"))
            })?;
        let (Some(channel), Some(channel_txn_id)) = (&message.channel_id, &message.channel_txn_id)
        else {
            tracing::debug!(%reference, "not posted to a channel; nothing to poll");
            return Ok(Prepared::Finished(Handled::Done));
        };
        // `received`: waiting for the channel. `confirmed`: done, unless a revocation is
        // suspected (a poll job for a confirmed message comes from outside the normal
        // flow: a replay, a status notification).
        let tracked = matches!(
            message.status,
            MessageStatus::Pending | MessageStatus::Accepted
        ) && matches!(
            message.channel_status,
            Some(ChannelStatus::Received | ChannelStatus::Confirmed)
        );
        if !tracked {
            tracing::debug!(
                %reference,
                status = %message.status,
                channel_status = ?message.channel_status,
                "no channel status to wait for"
            );
            return Ok(Prepared::Finished(Handled::Done));
        }
        let client = self.channels.client(channel).ok_or_else(|| {
            JobError::permanent(format!(
                "message {reference} was posted to channel {channel}, which is not configured"
            ))
        })?;
        let polled = |outcome: &'static str| {
            counter!(CHANNEL_POLLS_TOTAL, "channel" => channel.clone(), "outcome" => outcome)
                .increment(1);
        };
        let remote = match client.message_status(channel_txn_id).await {
            Ok(remote) => remote,
            Err(error) => {
                polled("failed");
                return Err(match &error {
                    // Posted ids must be known: a 404 is a channel still catching up, or
                    // a lost message an operator must look at (after the retries).
                    ChannelError::NotFound { .. } => JobError::transient(error),
                    ChannelError::Unavailable {
                        retry_after: Some(delay),
                        ..
                    } => JobError::retry_after(*delay, error),
                    _ if error.is_transient() => JobError::transient(error),
                    _ => JobError::permanent(error),
                });
            }
        };
        match remote.posting_status() {
            Some(ChannelStatus::Confirmed) => {
                polled("confirmed");
                Ok(Prepared::Write(Confirmed {
                    reference,
                    channel: channel.clone(),
                }))
            }
            Some(ChannelStatus::Undeliverable) => {
                polled("undeliverable");
                self.undeliverable(job, &message, channel)
                    .await
                    .map(Prepared::Finished)
            }
            Some(ChannelStatus::Revoked) => {
                polled("revoked");
                self.revoked(job, &reference, channel)
                    .await
                    .map(Prepared::Finished)
            }
            Some(ChannelStatus::Received) | None => {
                polled(if matches!(remote, RemoteStatus::Other(_)) {
                    "unknown"
                } else {
                    "received"
                });
                if message.channel_status == Some(ChannelStatus::Confirmed) {
                    tracing::warn!(%reference, channel, remote = %remote, "channel no longer reports a confirmed message as confirmed; ignored");
                    return Ok(Prepared::Finished(Handled::Done));
                }
                let not_yet = NotFinalYet {
                    channel: channel.clone(),
                    channel_txn_id: channel_txn_id.clone(),
                    status: remote.to_string(),
                    attempt: job.attempt,
                };
                tracing::debug!(%reference, error = %error_chain(&not_yet), "not final yet");
                Err(JobError::retry_after(self.poll_delay(job.attempt), not_yet))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_delays_grow_to_the_cap() {
        let storage_free = RetryPolicy {
            max_attempts: u32::MAX,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(30),
        };
        assert_eq!(storage_free.ceiling(1), Duration::from_millis(50));
        assert_eq!(storage_free.ceiling(2), Duration::from_millis(100));
        assert_eq!(storage_free.ceiling(11), Duration::from_secs(30));
        assert!(PollChannel::RECOMMENDED_RETRY.validate().is_ok());
        // Polling time before dead-lettering with the recommended policy, at worst (no
        // jitter): the sum of the ceilings of the first max_attempts - 1 polls.
        let total: Duration = (1..PollChannel::RECOMMENDED_RETRY.max_attempts)
            .map(|attempt| storage_free.ceiling(attempt))
            .sum();
        assert!(total > Duration::from_secs(3600), "{total:?}");
    }
}
