//! The message pipeline's queues, job payloads and events (ARCHITECTURE §3).
//!
//! Payloads are versioned, tagged JSON (`{"type":"process.v1",…}`): add a `v2` beside a
//! `v1`, never change a `v1`, so jobs already queued survive a rolling upgrade.

use igl_domain::{Message, MessageRef, MessageStatus};
use serde::{Deserialize, Serialize};

use crate::{NewEvent, NewJob, QueueName};

/// Messages just stored, waiting for the processor.
pub const PROCESS_QUEUE: QueueName = QueueName::from_static("process");
/// Outbound messages waiting for the router.
pub const ROUTE_QUEUE: QueueName = QueueName::from_static("route");
/// Inbound messages whose document must be fetched from the sender.
pub const OBJECT_RETRIEVAL_QUEUE: QueueName = QueueName::from_static("object-retrieval");

/// Channel notifications (`{"id"}` callbacks) waiting for the retriever.
pub const CHANNEL_MESSAGE_QUEUE: QueueName = QueueName::from_static("channel-message");

/// Outbound messages posted to a channel, waiting for the poller to see them confirmed
/// (`channel-poll.v1` jobs; the poller retries them with growing delays until the channel
/// reports a final status).
pub const CHANNEL_POLL_QUEUE: QueueName = QueueName::from_static("channel-poll");

/// Events waiting to be fanned out to matching subscriptions.
pub const SPREAD_QUEUE: QueueName = QueueName::from_static("spread");
/// Deliveries of events to subscribers' callbacks, first attempts (the hub's fast lane:
/// one job per event and group of subscriptions).
pub const DELIVER_QUEUE: QueueName = QueueName::from_static("deliver");
/// Deliveries that failed or were slow on the fast lane, one job per event and
/// subscription, retried with backoff and dead-lettered when the policy gives up.
pub const REDELIVER_QUEUE: QueueName = QueueName::from_static("redeliver");
/// WebSub intent verifications of subscribe/unsubscribe requests.
pub const VERIFY_QUEUE: QueueName = QueueName::from_static("websub-verify");

/// The `spread.v1` job for an appended event (dedup by event id).
pub fn spread_job(event_id: &str) -> NewJob {
    NewJob::new(
        SPREAD_QUEUE,
        serde_json::json!({"type": "spread.v1", "event_id": event_id}),
    )
    .with_dedup_key(event_id)
}

/// A reference to a stored message, the payload of most pipeline jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageJob {
    /// `{sender}:{sender_ref}`.
    pub reference: String,
}

/// Jobs of the pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum PipelineJob {
    /// Process a newly stored message.
    #[serde(rename = "process.v1")]
    ProcessV1(MessageJob),
    /// Route an outbound message to a channel.
    #[serde(rename = "route.v1")]
    RouteV1(MessageJob),
    /// Fetch the document of an inbound message from the sender's Document API.
    #[serde(rename = "object-retrieval.v1")]
    RetrieveObjectV1 {
        /// The message that referenced the document.
        reference: String,
        /// The sending jurisdiction, whose Document API serves the document.
        sender: String,
        /// The document's multihash.
        object: String,
    },
    /// Fetch a message a channel announced (`{"id"}` callback) and store it as received.
    #[serde(rename = "channel-message.v1")]
    ChannelMessageV1 {
        /// The configured channel id the notification arrived for.
        channel_id: String,
        /// The channel's id of the message (an integer or string on the wire, kept as text).
        message_id: String,
    },
    /// [`PipelineJob::RetrieveObjectV1`] plus how deep in a chain of `links` the object
    /// is: the spider queues one per link it follows, with `depth` one more than the
    /// linking document's (a message's own document, queued as v1, is depth 0). Same
    /// queue and dedup key as v1, so v1 and v2 jobs for one object deduplicate together.
    #[serde(rename = "object-retrieval.v2")]
    RetrieveObjectV2 {
        /// The message whose document (directly or through links) referenced the object.
        reference: String,
        /// The sending jurisdiction, whose Document API serves the object.
        sender: String,
        /// The object's multihash.
        object: String,
        /// Number of links followed from the message's document to this object.
        depth: u32,
    },
    /// Check the channel status of a posted outbound message (its `channel_id` and
    /// `channel_txn_id` are read from the stored message).
    #[serde(rename = "channel-poll.v1")]
    ChannelPollV1(MessageJob),
}

impl PipelineJob {
    /// The job as a [`NewJob`] on its queue, deduplicated by message reference (and
    /// object) so that a repeated handler does not queue the same work twice.
    pub fn into_new_job(self) -> NewJob {
        let (queue, dedup_key) = match &self {
            Self::ProcessV1(job) => (PROCESS_QUEUE, job.reference.clone()),
            Self::RouteV1(job) => (ROUTE_QUEUE, job.reference.clone()),
            Self::RetrieveObjectV1 {
                reference, object, ..
            }
            | Self::RetrieveObjectV2 {
                reference, object, ..
            } => (OBJECT_RETRIEVAL_QUEUE, format!("{reference}/{object}")),
            Self::ChannelMessageV1 {
                channel_id,
                message_id,
            } => (CHANNEL_MESSAGE_QUEUE, format!("{channel_id}/{message_id}")),
            Self::ChannelPollV1(job) => (CHANNEL_POLL_QUEUE, job.reference.clone()),
        };
        let payload = serde_json::to_value(&self).unwrap_or(serde_json::Value::Null);
        NewJob::new(queue, payload).with_dedup_key(dedup_key)
    }

    /// A `process.v1` job for `reference`.
    pub fn process(reference: &MessageRef) -> Self {
        Self::ProcessV1(MessageJob {
            reference: reference.to_string(),
        })
    }

    /// A `route.v1` job for `reference`.
    pub fn route(reference: &MessageRef) -> Self {
        Self::RouteV1(MessageJob {
            reference: reference.to_string(),
        })
    }

    /// A `channel-poll.v1` job for `reference`.
    pub fn channel_poll(reference: &MessageRef) -> Self {
        Self::ChannelPollV1(MessageJob {
            reference: reference.to_string(),
        })
    }
}

/// The wire form of a message as the reference serialises it: `sender, receiver, subject,
/// obj, predicate`, then `sender_ref` and `status` (REFERENCE-WIRE §1.1).
pub fn reference_message_json(message: &Message, with_status: bool) -> serde_json::Value {
    let content = &message.content;
    let mut json = serde_json::json!({
        "sender": content.sender.as_str(),
        "receiver": content.receiver.as_str(),
        "subject": content.subject,
        "obj": content.obj,
        "predicate": content.predicate,
        "sender_ref": message.sender_ref.as_str(),
    });
    if with_status {
        json["status"] = serde_json::Value::from(message.status.as_str());
    }
    json
}

/// Event kinds.
pub mod event_kinds {
    /// A message was stored (the "fat ping" on its predicate).
    pub const MESSAGE_STORED: &str = "message.stored";
    /// A message was received (the "light ping" `message.<ref>.received`).
    pub const MESSAGE_RECEIVED: &str = "message.received";
    /// A message's status changed (`message.<ref>.status`).
    pub const MESSAGE_STATUS: &str = "message.status";
}

/// The events the processor publishes for a stored message (REFERENCE-WIRE §3.4): the fat
/// ping on the predicate (message without status) and the light ping
/// `message.<sender_ref>.received`. Ids are derived from the reference, so processing the
/// same message twice appends them once.
pub fn stored_message_events(message: &Message) -> [NewEvent; 2] {
    let reference = message.reference();
    let light_topic = format!("message.{}.received", message.sender_ref);
    [
        NewEvent {
            id: format!("{reference}/stored"),
            kind: event_kinds::MESSAGE_STORED.into(),
            topic: message.content.predicate.clone(),
            payload: reference_message_json(message, false),
        },
        NewEvent {
            id: format!("{reference}/received"),
            kind: event_kinds::MESSAGE_RECEIVED.into(),
            topic: light_topic.clone(),
            payload: serde_json::json!({"predicate": light_topic, "sender_ref": reference.to_string()}),
        },
    ]
}

/// The event for a status change of `message` to `status` (`message.<sender_ref>.status`).
pub fn status_event(message: &Message, status: MessageStatus) -> NewEvent {
    let reference = message.reference();
    let topic = format!("message.{}.status", message.sender_ref);
    NewEvent {
        id: format!("{reference}/status/{status}"),
        kind: event_kinds::MESSAGE_STATUS.into(),
        topic: topic.clone(),
        payload: serde_json::json!({"predicate": topic, "sender_ref": reference.to_string()}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_payloads_are_tagged_and_versioned() {
        let job = PipelineJob::ProcessV1(MessageJob {
            reference: "AU:r1".into(),
        });
        let new = job.clone().into_new_job();
        assert_eq!(new.queue, PROCESS_QUEUE);
        assert_eq!(new.dedup_key.as_deref(), Some("AU:r1"));
        assert_eq!(
            new.payload,
            serde_json::json!({"type": "process.v1", "reference": "AU:r1"})
        );
        let back: PipelineJob = serde_json::from_value(new.payload).unwrap();
        assert_eq!(back, job);
    }

    #[test]
    fn channel_poll_jobs_are_deduplicated_by_reference() {
        let reference = MessageRef::parse("AU:r1").unwrap();
        let new = PipelineJob::channel_poll(&reference).into_new_job();
        assert_eq!(new.queue, CHANNEL_POLL_QUEUE);
        assert_eq!(new.dedup_key.as_deref(), Some("AU:r1"));
        assert_eq!(
            new.payload,
            serde_json::json!({"type": "channel-poll.v1", "reference": "AU:r1"})
        );
        let route = PipelineJob::route(&reference).into_new_job();
        assert_eq!(route.queue, ROUTE_QUEUE);
        assert_eq!(
            route.payload,
            serde_json::json!({"type": "route.v1", "reference": "AU:r1"})
        );
    }
}
