//! The channel message retriever (REFERENCE-WIRE §4.7, without its defects): for each
//! `{"id"}` notification a channel sent to the Message Reception API, fetch the message
//! from that channel (through the channel's [`ChannelClient`], the same client, timeouts
//! and circuit breaker the router and the poller use), accept it only once the channel confirmed it, validate it like a B2G
//! message, and store it as `received` with its `process` job and the ack of the
//! notification in one unit of work.
//!
//! # The sender's `sender_ref`
//!
//! The Channel API carries only `sender, receiver, subject, obj, predicate` (REFERENCE-WIRE
//! §5.1); the reference retriever invented a fresh uuid4 per retrieval, so every redelivered
//! notification created another message. This retriever keeps the wire as it is and:
//! - uses the message's `sender_ref` when the channel's message JSON carries one (an extra
//!   field our own channel endpoint may add; reference channels ignore or drop it), so the
//!   message keeps the sender's reference end to end;
//! - otherwise derives a deterministic one from the channel coordinates,
//!   `<channel_id>.<channel message id>` (or `<channel_id>.<multihash of the id>` when the id
//!   has characters a `sender_ref` may not contain, or is too long). A redelivered or
//!   duplicated notification therefore maps to the same `sender:sender_ref` and the store
//!   deduplicates it. The limit: a message that reaches the node through two channels (or
//!   is re-posted under a new channel id after a revocation) without a carried `sender_ref`
//!   is stored once per channel message.
//!
//! # Channel status
//!
//! Only `confirmed` messages are stored (invariant 7: the medium must have confirmed it).
//! `received` (or the receiving-side `observed`) is retried after a growing delay;
//! `revoked`, `undeliverable` and `false_alarm` are dropped with a warning and the
//! notification acked; any other status is a permanent error (dead letter).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use igl_core::channel::{ChannelError, Channels};
use igl_core::pipeline::PipelineJob;
use igl_core::{ClaimedJob, InsertOutcome, Storage, StoreError};
use igl_domain::{Jurisdiction, MessageFields, MessageStatus, Multihash, NewMessage, SenderRef};

use super::batch::{BatchSteps, Prepared, prepare_then_write, prepare_then_write_one};
use crate::{Handled, JobError, JobHandler, RetryPolicy};

/// The `sender_ref` of a channel message that carries none: `<channel_id>.<message_id>`,
/// or `<channel_id>.<multihash of message_id>` when that is not a valid `sender_ref`.
///
/// # Errors
///
/// The broken rule when even the hashed form is invalid (an invalid channel id).
pub fn channel_sender_ref(
    channel_id: &str,
    message_id: &str,
) -> Result<SenderRef, igl_domain::Rule> {
    SenderRef::parse(format!("{channel_id}.{message_id}")).or_else(|_| {
        SenderRef::parse(format!(
            "{channel_id}.{}",
            Multihash::of(message_id.as_bytes())
        ))
    })
}

/// Handles `channel-message.v1` jobs: fetch, check, store as `received`.
#[derive(Debug, Clone)]
pub struct RetrieveChannelMessage {
    storage: Arc<dyn Storage>,
    channels: Arc<Channels>,
    jurisdiction: Jurisdiction,
    unconfirmed_backoff: RetryPolicy,
}

/// A message as its channel serves it, for [`RetrieveChannelMessage::accept`].
#[derive(Debug)]
struct FetchedMessage {
    /// The channel-side status as the channel names it.
    status: String,
    /// The message fields, unvalidated.
    message: MessageFields,
}

/// What a failed Channel API call means for the job: a message the channel does not show
/// (404) is asked for again with backoff (a notification may outrun a replica; bounded by
/// the retry policy), `Retry-After` and an open circuit delay the retry, other transient
/// failures retry with backoff, a refusal is permanent.
fn job_error(error: ChannelError) -> JobError {
    match &error {
        ChannelError::NotFound { .. } => JobError::transient(error),
        ChannelError::Unavailable {
            retry_after: Some(delay),
            ..
        } => JobError::retry_after(*delay, error),
        ChannelError::CircuitOpen { retry_in, .. } => JobError::retry_after(*retry_in, error),
        _ if error.is_transient() => JobError::transient(error),
        _ => JobError::permanent(error),
    }
}

impl RetrieveChannelMessage {
    /// A retriever for the node of `jurisdiction`, reading messages through the clients of
    /// `channels` (the `[[channels]]` configuration; a notification naming a channel
    /// without a client is dead-lettered).
    ///
    /// A message the channel has not confirmed yet is looked at again after 5 s, doubling
    /// up to 5 min ([`RetrieveChannelMessage::with_unconfirmed_backoff`]); each look counts
    /// as an attempt of the worker's retry policy, so give the `channel-message` queue
    /// enough attempts for the slowest channel's confirmation (about 10 for ~20 min).
    pub fn new(
        storage: Arc<dyn Storage>,
        channels: Arc<Channels>,
        jurisdiction: Jurisdiction,
    ) -> Self {
        Self {
            storage,
            channels,
            jurisdiction,
            unconfirmed_backoff: RetryPolicy {
                max_attempts: u32::MAX,
                base_delay: Duration::from_secs(5),
                max_delay: Duration::from_secs(300),
            },
        }
    }

    /// Sets the delays before looking again at an unconfirmed message: `base` doubling per
    /// attempt up to `max`.
    pub fn with_unconfirmed_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.unconfirmed_backoff.base_delay = base;
        self.unconfirmed_backoff.max_delay = max.max(base);
        self
    }

    /// `GET {channel}/messages/{message_id}` through the channel's client.
    async fn fetch(&self, channel_id: &str, message_id: &str) -> Result<FetchedMessage, JobError> {
        let client = self.channels.client(channel_id).ok_or_else(|| {
            JobError::permanent(format!("no channel with id {channel_id:?} is configured"))
        })?;
        let fetched = client.get_message(message_id).await.map_err(job_error)?;
        Ok(FetchedMessage {
            status: fetched.status.as_str().to_owned(),
            message: fetched.message,
        })
    }

    /// Validates the channel's message and checks that it is for this node.
    fn accept(
        &self,
        channel_id: &str,
        message_id: &str,
        mut fields: MessageFields,
    ) -> Result<NewMessage, JobError> {
        if fields.sender_ref.is_none() {
            let derived = channel_sender_ref(channel_id, message_id).map_err(|rule| {
                JobError::permanent(format!(
                    "no sender_ref can be derived from channel {channel_id:?}: {rule}"
                ))
            })?;
            fields.sender_ref = Some(derived.to_string());
        }
        let message = NewMessage::parse(fields).map_err(JobError::permanent)?;
        if message.content.receiver != self.jurisdiction {
            return Err(JobError::permanent(format!(
                "channel message is for {}, this node is {}",
                message.content.receiver, self.jurisdiction
            )));
        }
        if message.content.sender == self.jurisdiction {
            return Err(JobError::permanent(format!(
                "channel message claims to come from this node's own jurisdiction {}",
                self.jurisdiction
            )));
        }
        Ok(message)
    }
}

#[async_trait]
impl JobHandler for RetrieveChannelMessage {
    fn name(&self) -> &'static str {
        "channel-message-retriever"
    }

    async fn handle(&self, job: &ClaimedJob) -> Result<Handled, JobError> {
        prepare_then_write_one(self, job).await
    }

    fn batched(&self) -> bool {
        true
    }

    /// Fetches every message of the batch concurrently, then stores them all in one unit
    /// of work.
    async fn handle_batch(&self, jobs: &[ClaimedJob]) -> Vec<Result<Handled, JobError>> {
        prepare_then_write(self, jobs).await
    }
}

/// A fetched, validated channel message to store.
#[derive(Debug)]
pub(crate) struct Retrieved {
    channel_id: String,
    message_id: String,
    message: NewMessage,
}

impl BatchSteps for RetrieveChannelMessage {
    type Write = Retrieved;

    async fn prepare(&self, job: &ClaimedJob) -> Result<Prepared<Retrieved>, JobError> {
        let (channel_id, message_id) =
            match serde_json::from_value::<PipelineJob>(job.payload.clone()) {
                Ok(PipelineJob::ChannelMessageV1 {
                    channel_id,
                    message_id,
                }) => (channel_id, message_id),
                Ok(other) => {
                    return Err(JobError::permanent(format!(
                        "not a channel-message job: {other:?}"
                    )));
                }
                Err(error) => return Err(JobError::permanent(error)),
            };
        let fetched = self.fetch(&channel_id, &message_id).await?;
        let status = fetched.status.to_ascii_lowercase();
        match status.as_str() {
            "confirmed" => {}
            "received" | "observed" => {
                let delay = self.unconfirmed_backoff.ceiling(job.attempt);
                return Err(JobError::retry_after(
                    delay,
                    format!(
                        "channel {channel_id} has not confirmed message {message_id} yet (status {status})"
                    ),
                ));
            }
            "revoked" | "undeliverable" | "false_alarm" => {
                tracing::warn!(
                    %channel_id,
                    %message_id,
                    %status,
                    "channel message dropped, the channel withdrew it"
                );
                metrics::counter!("igl_channel_messages_dropped_total", "channel" => channel_id)
                    .increment(1);
                return Ok(Prepared::Finished(Handled::Done));
            }
            _ => {
                return Err(JobError::permanent(format!(
                    "channel {channel_id} reports unknown status {:?} for message {message_id}",
                    fetched.status
                )));
            }
        }
        let message = self.accept(&channel_id, &message_id, fetched.message)?;
        Ok(Prepared::Write(Retrieved {
            channel_id,
            message_id,
            message,
        }))
    }

    /// Stores the messages as `received` (a reference seen before is a duplicate, never a
    /// second message), queues processing for the new ones and acks the jobs.
    async fn write(&self, work: &[(&ClaimedJob, Retrieved)]) -> Result<(), JobError> {
        let messages: Vec<(NewMessage, MessageStatus)> = work
            .iter()
            .map(|(_, retrieved)| (retrieved.message.clone(), MessageStatus::Received))
            .collect();
        let mut unit = self.storage.begin().await?;
        let outcomes = unit.insert_messages(&messages).await?;
        let mut created = Vec::with_capacity(outcomes.len());
        let mut process = Vec::new();
        for outcome in &outcomes {
            match outcome {
                InsertOutcome::Created(message) => {
                    process.push(PipelineJob::process(&message.reference()).into_new_job());
                    created.push(true);
                }
                InsertOutcome::Existing(_) => created.push(false),
                InsertOutcome::Conflict(reference) => {
                    return Err(StoreError::MessageConflict(reference.clone()).into());
                }
            }
        }
        unit.enqueue(&process).await?;
        let receipts: Vec<_> = work.iter().map(|(job, _)| job.receipt()).collect();
        unit.ack(&receipts).await?;
        unit.commit().await?;

        for ((_, retrieved), created) in work.iter().zip(created) {
            tracing::info!(
                channel_id = %retrieved.channel_id,
                message_id = %retrieved.message_id,
                reference = %retrieved.message.reference(),
                created,
                "channel message retrieved"
            );
            metrics::counter!(
                "igl_channel_messages_retrieved_total",
                "channel" => retrieved.channel_id.clone(),
                "outcome" => if created { "created" } else { "duplicate" },
            )
            .increment(1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_sender_refs_are_deterministic_and_valid() {
        assert_eq!(
            channel_sender_ref("au-sg", "17").unwrap().as_str(),
            "au-sg.17"
        );
        let odd = channel_sender_ref("au-sg", "a/b c").unwrap();
        assert_eq!(odd, channel_sender_ref("au-sg", "a/b c").unwrap());
        assert!(odd.as_str().starts_with("au-sg.Qm"), "{odd}");
        let long = "x".repeat(300);
        assert!(channel_sender_ref("au-sg", &long).is_ok());
    }

    #[test]
    fn channel_errors_map_to_retries() {
        let not_found = ChannelError::NotFound {
            channel: "c".into(),
            id: "1".into(),
        };
        assert!(matches!(job_error(not_found), JobError::Transient(_)));
        let open = ChannelError::CircuitOpen {
            channel: "c".into(),
            retry_in: Duration::from_secs(2),
        };
        assert!(
            matches!(job_error(open), JobError::RetryAfter(d, _) if d == Duration::from_secs(2))
        );
        let refused = ChannelError::Refused {
            channel: "c".into(),
            status: 410,
            detail: String::new(),
        };
        assert!(matches!(job_error(refused), JobError::Permanent(_)));
    }
}
