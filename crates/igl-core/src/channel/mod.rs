//! The Channel API port (ARCHITECTURE §7, REFERENCE-WIRE §5.1): how the node talks to a
//! channel endpoint, whatever the medium behind it, plus the routing table that picks a
//! channel for an outbound message ([`routing`]).
//!
//! The HTTP adapter (`igl_channels::client::HttpChannelClient`) implements
//! [`ChannelClient`]; the router and the channel poller (`igl_workers::handlers`) use it
//! through [`Channels`], the set of configured channels.

pub mod routing;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use igl_domain::{ChannelStatus, Jurisdiction, MessageContent, MessageFields, Timestamp};

use crate::BoxError;
use routing::RoutingTable;

/// A client of one channel endpoint's Channel API.
///
/// Contract of every method:
/// - it makes at most one request and never retries by itself: retries belong to the job
///   that called it (bounded, with backoff, dead-lettered in the end);
/// - it is bounded in time (a timeout on every call) and cancel-safe;
/// - it fails fast with [`ChannelError::CircuitOpen`] while the client considers the
///   channel down (a circuit breaker per channel), so one dead channel does not hold up
///   the workers serving the others;
/// - errors say whether a retry may help ([`ChannelError::is_transient`]).
#[async_trait]
pub trait ChannelClient: Send + Sync + fmt::Debug {
    /// The configured id of the channel (`[[channels]] id`), recorded as a message's
    /// `channel_id`.
    fn channel_id(&self) -> &str;

    /// The state of the channel's circuit breaker (for routing decisions and metrics).
    /// Clients without a breaker are always [`CircuitState::Closed`].
    fn circuit_state(&self) -> CircuitState {
        CircuitState::Closed
    }

    /// Posts a message (`POST {base}/messages` with exactly the five content fields
    /// `sender, receiver, subject, obj, predicate`) and returns the channel's id for it.
    ///
    /// **Not idempotent**: the five reference fields carry no key, so a post whose answer
    /// is lost (a timeout after the endpoint committed) and is then retried puts the
    /// message on the channel twice. Prefer [`ChannelClient::post_message_with_ref`].
    async fn post_message(&self, content: &MessageContent) -> Result<ChannelReceipt, ChannelError>;

    /// Posts a message on behalf of its sender's reference `sender_ref`, **idempotently
    /// where the endpoint supports it**: the HTTP client sends the message reference
    /// `{sender}:{sender_ref}` as an `Idempotency-Key`, and our endpoints answer a repeated
    /// post with the id of the message already stored (reference endpoints ignore the
    /// header, so with them a retried post may still reach the channel twice, which the
    /// receiving node's deduplication on `sender:sender_ref` absorbs when the reference is
    /// carried). Channels configured to carry it also get `sender_ref` in the body (our
    /// endpoints accept that extra field, so the receiving node keeps the sender's
    /// reference). The default implementation posts the five fields with
    /// [`ChannelClient::post_message`].
    async fn post_message_with_ref(
        &self,
        content: &MessageContent,
        sender_ref: &igl_domain::SenderRef,
    ) -> Result<ChannelReceipt, ChannelError> {
        let _ = sender_ref;
        self.post_message(content).await
    }

    /// The status of a message this node posted (`GET {base}/messages/{id}`).
    /// [`ChannelError::NotFound`] when the channel does not know the id.
    async fn message_status(&self, id: &str) -> Result<RemoteStatus, ChannelError>;

    /// A message with its status and content (`GET {base}/messages/{id}`), for the
    /// receiving side. The content is returned as raw fields: validate it like any message
    /// from outside. [`ChannelError::NotFound`] when the channel does not know the id.
    async fn get_message(&self, id: &str) -> Result<ChannelMessage, ChannelError>;

    /// Subscribes `callback` to the messages for jurisdiction `topic` (WebSub, form
    /// `POST {base}/messages/subscriptions/by_jurisdiction` with `hub.mode=subscribe`,
    /// `hub.callback`, `hub.topic`, `hub.lease_seconds` and `hub.secret` when given).
    /// Succeeds on 200 or 202; the channel then verifies intent against `callback`.
    async fn subscribe(
        &self,
        callback: &str,
        topic: &str,
        lease: Duration,
        secret: Option<&str>,
    ) -> Result<(), ChannelError>;

    /// Ends a subscription made with [`ChannelClient::subscribe`] (`hub.mode=unsubscribe`).
    async fn unsubscribe(&self, callback: &str, topic: &str) -> Result<(), ChannelError>;

    /// Lists messages for catching up after downtime (`GET {base}/messages?receiver=&
    /// updated_since=&after_id=&cursor=&limit=`), oldest first. Follow [`ChannelPage::next`] until it
    /// is `None`. The reference channels do not implement the listing: a 404, 405 or 501
    /// then comes back as [`ChannelError::Refused`].
    async fn list_messages(&self, query: &ListQuery) -> Result<ChannelPage, ChannelError>;
}

/// The state of a channel's circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Calls go through.
    Closed,
    /// The channel failed repeatedly: calls fail fast until the cool-down ends.
    Open,
    /// The cool-down ended: one probe call goes through; the others still fail fast.
    HalfOpen,
}

impl CircuitState {
    /// `closed`, `open` or `half-open`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message status as a channel reports it. The posting side knows `received`,
/// `confirmed`, `undeliverable` and `revoked`; the receiving side `observed`, `confirmed`
/// and `false_alarm`; the reference api-channel says `delivered`. Unknown values are kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RemoteStatus {
    /// Taken by the endpoint, not yet on the medium for good.
    Received,
    /// On the medium for good (a DB commit, N blocks).
    Confirmed,
    /// The channel gave up on the message.
    Undeliverable,
    /// A confirmation was withdrawn.
    Revoked,
    /// Receiving side: seen on the medium, not yet confirmed.
    Observed,
    /// Receiving side: what was observed turned out not to be on the medium.
    FalseAlarm,
    /// The reference api-channel: handed to the receiving side.
    Delivered,
    /// Anything else, as sent.
    Other(String),
}

impl RemoteStatus {
    /// Parses a wire status, ignoring ASCII case (`false-alarm` is accepted too).
    pub fn parse(value: &str) -> Self {
        match value.to_ascii_lowercase().replace('-', "_").as_str() {
            "received" => Self::Received,
            "confirmed" => Self::Confirmed,
            "undeliverable" => Self::Undeliverable,
            "revoked" => Self::Revoked,
            "observed" => Self::Observed,
            "false_alarm" => Self::FalseAlarm,
            "delivered" => Self::Delivered,
            _ => Self::Other(value.to_owned()),
        }
    }

    /// The wire name.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Received => "received",
            Self::Confirmed => "confirmed",
            Self::Undeliverable => "undeliverable",
            Self::Revoked => "revoked",
            Self::Observed => "observed",
            Self::FalseAlarm => "false_alarm",
            Self::Delivered => "delivered",
            Self::Other(value) => value,
        }
    }

    /// What the status means for a message this node posted: `received`/`observed` →
    /// [`ChannelStatus::Received`]; `confirmed`/`delivered` → `Confirmed`; `undeliverable`
    /// → `Undeliverable`; `revoked`/`false_alarm` → `Revoked`; unknown → `None`.
    pub fn posting_status(&self) -> Option<ChannelStatus> {
        match self {
            Self::Received | Self::Observed => Some(ChannelStatus::Received),
            Self::Confirmed | Self::Delivered => Some(ChannelStatus::Confirmed),
            Self::Undeliverable => Some(ChannelStatus::Undeliverable),
            Self::Revoked | Self::FalseAlarm => Some(ChannelStatus::Revoked),
            Self::Other(_) => None,
        }
    }
}

impl fmt::Display for RemoteStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a channel answered to a post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelReceipt {
    /// The channel's id of the message (an integer, a UUID or a transaction hash on the
    /// wire; kept as text).
    pub id: String,
    /// The status, when the answer included one.
    pub status: Option<RemoteStatus>,
}

/// A message as a channel serves it (`{id, status, message}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelMessage {
    /// The channel's id of the message.
    pub id: String,
    /// Its status on the channel.
    pub status: RemoteStatus,
    /// Its content, unvalidated; a string field that is absent or not a string is `None`
    /// (numbers and booleans are kept as their JSON text). `sender_ref` is set only when
    /// the channel passes one through.
    pub message: MessageFields,
}

/// Which messages [`ChannelClient::list_messages`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Only messages to this jurisdiction.
    pub receiver: Option<Jurisdiction>,
    /// Only messages changed at or after this time (ordered by change).
    pub updated_since: Option<Timestamp>,
    /// Only messages with a channel id after this one (ordered by id; for channels whose
    /// ids are increasing integers).
    pub after_id: Option<String>,
    /// Continue after this page (a [`ChannelPage::next`]).
    pub cursor: Option<String>,
    /// Largest page wanted.
    pub limit: Option<u32>,
}

/// One page of a channel's listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelPage {
    /// The messages, oldest change first.
    pub messages: Vec<ListedMessage>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<String>,
}

/// A message in a listing: at least its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedMessage {
    /// The channel's id of the message.
    pub id: String,
    /// Its status, when listed.
    pub status: Option<RemoteStatus>,
    /// When it last changed, as sent by the channel, when listed.
    pub updated_at: Option<String>,
    /// Its content, when listed.
    pub message: Option<MessageFields>,
}

/// Why a Channel API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The channel could not be reached, timed out, failed (5xx), or asked to slow down
    /// (408, 429). Transient.
    #[error("channel {channel} is unavailable")]
    Unavailable {
        /// The channel id.
        channel: String,
        /// How long the channel asked to wait (`Retry-After`), if it said.
        retry_after: Option<Duration>,
        /// What happened.
        #[source]
        source: BoxError,
    },
    /// Not called: the channel's circuit breaker is open after repeated failures. Transient.
    #[error("channel {channel} is not called while its circuit is open ({retry_in:?} left)")]
    CircuitOpen {
        /// The channel id.
        channel: String,
        /// How long until a probe call may go through.
        retry_in: Duration,
    },
    /// The channel refused the request itself (a 4xx such as 400 for a message it
    /// considers invalid, 409, 413, 422). Permanent: the same request fails the same way.
    #[error("channel {channel} refused the request with HTTP {status}: {detail}")]
    Refused {
        /// The channel id.
        channel: String,
        /// The HTTP status.
        status: u16,
        /// The start of the response body.
        detail: String,
    },
    /// The node is not set up to use the channel: 401 or 403 (credentials), or 404 or 405
    /// for a path every channel serves (a wrong base URL). Treated as transient, because
    /// the message is not at fault: an operator fixes the configuration and replays the
    /// dead-lettered jobs; rejecting the message would be final.
    #[error("channel {channel} answered HTTP {status}; check its configuration: {detail}")]
    Misconfigured {
        /// The channel id.
        channel: String,
        /// The HTTP status.
        status: u16,
        /// The start of the response body.
        detail: String,
    },
    /// The channel does not know this message (404). Permanent.
    #[error("channel {channel} has no message {id}")]
    NotFound {
        /// The channel id.
        channel: String,
        /// The message id asked for.
        id: String,
    },
    /// A success status with a body that breaks the Channel API (not JSON, no `id`, no
    /// `status`). Treated as transient: it is usually a misconfigured URL or a broken
    /// deployment, which an operator fixes; the job is retried, then dead-lettered.
    #[error("channel {channel} answered with an invalid response: {detail}")]
    InvalidResponse {
        /// The channel id.
        channel: String,
        /// What is wrong.
        detail: String,
    },
}

impl ChannelError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unavailable { .. }
            | Self::CircuitOpen { .. }
            | Self::Misconfigured { .. }
            | Self::InvalidResponse { .. } => true,
            Self::Refused { .. } | Self::NotFound { .. } => false,
        }
    }

    /// How long to wait before retrying, when the channel (or its circuit breaker) said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable { retry_after, .. } => *retry_after,
            Self::CircuitOpen { retry_in, .. } => Some(*retry_in),
            _ => None,
        }
    }

    /// The channel id.
    pub fn channel(&self) -> &str {
        match self {
            Self::Unavailable { channel, .. }
            | Self::CircuitOpen { channel, .. }
            | Self::Refused { channel, .. }
            | Self::Misconfigured { channel, .. }
            | Self::NotFound { channel, .. }
            | Self::InvalidResponse { channel, .. } => channel,
        }
    }
}

/// The configured channels: the routing table and a client per channel id.
#[derive(Debug, Clone, Default)]
pub struct Channels {
    routing: RoutingTable,
    clients: BTreeMap<String, Arc<dyn ChannelClient>>,
}

/// A routing rule names a channel that has no client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("routing rule {index} names channel {channel_id:?}, which has no client")]
pub struct MissingClient {
    /// Position of the rule in the table.
    pub index: usize,
    /// The channel id it names.
    pub channel_id: String,
}

impl Channels {
    /// The channels of `clients` (keyed by [`ChannelClient::channel_id`]; a later client
    /// with the same id replaces an earlier one) routed by `routing`.
    ///
    /// # Errors
    ///
    /// [`MissingClient`] when a rule names a channel without a client.
    pub fn new(
        routing: RoutingTable,
        clients: impl IntoIterator<Item = Arc<dyn ChannelClient>>,
    ) -> Result<Self, MissingClient> {
        let clients: BTreeMap<String, Arc<dyn ChannelClient>> = clients
            .into_iter()
            .map(|client| (client.channel_id().to_owned(), client))
            .collect();
        if let Some((index, rule)) = routing
            .rules()
            .iter()
            .enumerate()
            .find(|(_, rule)| !clients.contains_key(&rule.channel_id))
        {
            return Err(MissingClient {
                index,
                channel_id: rule.channel_id.clone(),
            });
        }
        Ok(Self { routing, clients })
    }

    /// The routing table.
    pub fn routing(&self) -> &RoutingTable {
        &self.routing
    }

    /// The client of channel `channel_id`.
    pub fn client(&self, channel_id: &str) -> Option<&Arc<dyn ChannelClient>> {
        self.clients.get(channel_id)
    }

    /// Every client, by channel id.
    pub fn clients(&self) -> impl Iterator<Item = &Arc<dyn ChannelClient>> {
        self.clients.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_statuses_parse_leniently() {
        assert_eq!(RemoteStatus::parse("CONFIRMED"), RemoteStatus::Confirmed);
        assert_eq!(RemoteStatus::parse("false-alarm"), RemoteStatus::FalseAlarm);
        assert_eq!(
            RemoteStatus::parse("pending"),
            RemoteStatus::Other("pending".into())
        );
        assert_eq!(RemoteStatus::Other("x".into()).as_str(), "x");
        assert_eq!(
            RemoteStatus::Delivered.posting_status(),
            Some(ChannelStatus::Confirmed)
        );
        assert_eq!(
            RemoteStatus::FalseAlarm.posting_status(),
            Some(ChannelStatus::Revoked)
        );
        assert_eq!(RemoteStatus::Other("x".into()).posting_status(), None);
    }

    #[test]
    fn error_kinds() {
        let refused = ChannelError::Refused {
            channel: "c".into(),
            status: 400,
            detail: "bad".into(),
        };
        assert!(!refused.is_transient());
        assert_eq!(
            refused.to_string(),
            "channel c refused the request with HTTP 400: bad"
        );
        let open = ChannelError::CircuitOpen {
            channel: "c".into(),
            retry_in: Duration::from_secs(2),
        };
        assert!(open.is_transient());
        assert_eq!(open.retry_after(), Some(Duration::from_secs(2)));
        assert_eq!(open.channel(), "c");
    }
}
