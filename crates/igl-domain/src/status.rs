use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The node-side status of a message (REFERENCE-WIRE §1.3).
///
/// ```text
///   pending ──► accepted | rejected        (outbound: the channel confirmed or refused it)
///   received ─► accepted | rejected        (inbound: the local application decided)
/// ```
/// `accepted` and `rejected` are final. Setting a status to its current value is a no-op.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageStatus {
    /// Outbound, not yet confirmed by a channel.
    Pending,
    /// Inbound, received from a channel (or posted with a foreign sender).
    Received,
    /// Final: confirmed on the channel's medium (outbound) or accepted locally (inbound).
    Accepted,
    /// Final: refused by routing or the channel (outbound) or rejected locally (inbound).
    Rejected,
}

/// The outcome of a valid transition request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusChange<S> {
    /// The requested status equals the current one; nothing changes.
    Unchanged(S),
    /// The status moves `from` → `to`.
    Changed {
        /// Status before the change.
        from: S,
        /// Status after the change.
        to: S,
    },
}

impl<S: Copy> StatusChange<S> {
    /// The status after the change.
    pub fn current(&self) -> S {
        match *self {
            Self::Unchanged(status) => status,
            Self::Changed { to, .. } => to,
        }
    }

    /// Whether the status actually changed.
    pub fn is_change(&self) -> bool {
        matches!(self, Self::Changed { .. })
    }
}

/// A transition that the state machine forbids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The current status is final and the request asks for a different one.
    #[error("message status is final: {current}")]
    Final {
        /// The final status the message has.
        current: String,
    },
    /// The transition is not part of the state machine (e.g. `accepted` → `pending`).
    #[error("status cannot change from {from} to {to}")]
    NotAllowed {
        /// Current status.
        from: String,
        /// Requested status.
        to: String,
    },
}

impl MessageStatus {
    /// Every status, in wire order.
    pub const ALL: [Self; 4] = [
        Self::Pending,
        Self::Received,
        Self::Accepted,
        Self::Rejected,
    ];

    /// The wire name (`pending`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Received => "received",
            Self::Accepted => "accepted",
            Self::Rejected => "rejected",
        }
    }

    /// `accepted` and `rejected` are final.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Accepted | Self::Rejected)
    }

    /// The status a new message starts with: `pending` when this node is its sender
    /// (outbound), `received` otherwise (inbound).
    pub fn initial(sender_is_own_jurisdiction: bool) -> Self {
        if sender_is_own_jurisdiction {
            Self::Pending
        } else {
            Self::Received
        }
    }

    /// Checks the transition `self → to`.
    pub fn transition(self, to: Self) -> Result<StatusChange<Self>, TransitionError> {
        if self == to {
            return Ok(StatusChange::Unchanged(self));
        }
        if self.is_final() {
            return Err(TransitionError::Final {
                current: self.to_string(),
            });
        }
        match to {
            Self::Accepted | Self::Rejected => Ok(StatusChange::Changed { from: self, to }),
            Self::Pending | Self::Received => Err(TransitionError::NotAllowed {
                from: self.to_string(),
                to: to.to_string(),
            }),
        }
    }
}

impl fmt::Display for MessageStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MessageStatus {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == value)
            .ok_or_else(|| format!("unknown message status {value:?}"))
    }
}

/// The status of a message on its channel (ARCHITECTURE §7, REFERENCE-WIRE §5.1).
///
/// ```text
///   received ──► confirmed ──► revoked ──► received (re-posted)
///      └───────► undeliverable        └──► confirmed (re-posted, confirmed in the answer)
///      └───────► revoked
/// ```
/// `undeliverable` is final. `revoked` (e.g. a chain reorganisation removed the message)
/// may go back to `received` when the node posts the message again, or straight to
/// `confirmed` when the channel's answer to that post already confirms it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelStatus {
    /// The channel endpoint took the message; the medium has not confirmed it yet.
    Received,
    /// The medium confirmed the message (a DB commit, N blocks on a chain).
    Confirmed,
    /// The channel gave up on the message.
    Undeliverable,
    /// A confirmation was withdrawn.
    Revoked,
}

impl ChannelStatus {
    /// Every status, in wire order.
    pub const ALL: [Self; 4] = [
        Self::Received,
        Self::Confirmed,
        Self::Undeliverable,
        Self::Revoked,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::Confirmed => "confirmed",
            Self::Undeliverable => "undeliverable",
            Self::Revoked => "revoked",
        }
    }

    /// Checks the transition `self → to`.
    pub fn transition(self, to: Self) -> Result<StatusChange<Self>, TransitionError> {
        use ChannelStatus::*;
        if self == to {
            return Ok(StatusChange::Unchanged(self));
        }
        match (self, to) {
            (Received, Confirmed | Undeliverable | Revoked)
            | (Confirmed, Revoked)
            | (Revoked, Received | Confirmed) => Ok(StatusChange::Changed { from: self, to }),
            (Undeliverable, _) => Err(TransitionError::Final {
                current: self.to_string(),
            }),
            _ => Err(TransitionError::NotAllowed {
                from: self.to_string(),
                to: to.to_string(),
            }),
        }
    }
}

impl fmt::Display for ChannelStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ChannelStatus {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == value)
            .ok_or_else(|| format!("unknown channel status {value:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::MessageStatus::*;
    use super::*;

    #[test]
    fn message_transitions_follow_the_reference() {
        assert!(Pending.transition(Accepted).unwrap().is_change());
        assert!(Pending.transition(Rejected).unwrap().is_change());
        assert!(Received.transition(Accepted).unwrap().is_change());
        assert!(Received.transition(Rejected).unwrap().is_change());
        assert_eq!(
            Accepted.transition(Accepted).unwrap(),
            StatusChange::Unchanged(Accepted)
        );
        assert_eq!(
            Accepted.transition(Rejected).unwrap_err().to_string(),
            "message status is final: accepted"
        );
        assert!(matches!(
            Pending.transition(Received),
            Err(TransitionError::NotAllowed { .. })
        ));
        assert!(matches!(
            Rejected.transition(Pending),
            Err(TransitionError::Final { .. })
        ));
    }

    #[test]
    fn every_pair_is_decided_consistently() {
        for from in MessageStatus::ALL {
            for to in MessageStatus::ALL {
                let result = from.transition(to);
                if from == to {
                    assert_eq!(result, Ok(StatusChange::Unchanged(from)));
                } else if from.is_final() {
                    assert!(matches!(result, Err(TransitionError::Final { .. })));
                } else {
                    assert_eq!(result.is_ok(), to.is_final(), "{from} -> {to}");
                }
            }
        }
    }

    #[test]
    fn channel_transitions() {
        use ChannelStatus as C;
        assert!(C::Received.transition(C::Confirmed).unwrap().is_change());
        assert!(C::Confirmed.transition(C::Revoked).unwrap().is_change());
        assert!(C::Revoked.transition(C::Received).unwrap().is_change());
        assert!(C::Revoked.transition(C::Confirmed).unwrap().is_change());
        assert!(matches!(
            C::Undeliverable.transition(C::Confirmed),
            Err(TransitionError::Final { .. })
        ));
        assert!(matches!(
            C::Confirmed.transition(C::Received),
            Err(TransitionError::NotAllowed { .. })
        ));
    }

    #[test]
    fn wire_names_round_trip() {
        for status in MessageStatus::ALL {
            assert_eq!(status.as_str().parse::<MessageStatus>().unwrap(), status);
            assert_eq!(
                serde_json::to_string(&status).unwrap(),
                format!("\"{status}\"")
            );
        }
        for status in ChannelStatus::ALL {
            assert_eq!(status.as_str().parse::<ChannelStatus>().unwrap(), status);
        }
        assert!("PENDING".parse::<MessageStatus>().is_err());
    }
}
