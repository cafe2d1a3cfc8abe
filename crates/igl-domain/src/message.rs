use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::status::{ChannelStatus, MessageStatus};
use crate::uri::classify_uri;
use crate::{Jurisdiction, JurisdictionError, Timestamp};

/// Longest accepted `sender_ref` (the reference outbox column is `varchar(256)`).
pub const MAX_SENDER_REF_LEN: usize = 256;
/// Longest accepted `subject`.
pub const MAX_SUBJECT_LEN: usize = 2048;
/// Longest accepted `predicate`.
pub const MAX_PREDICATE_LEN: usize = 512;
/// Longest accepted `obj`.
pub const MAX_OBJ_LEN: usize = 2048;

/// The sender's own reference for a message; with the sender it identifies the message.
///
/// Rules: 1 to 256 characters, no whitespace or control characters, and none of `/ ? #`
/// (the reference appears in URL paths). A `:` is allowed: a [`MessageRef`] is split on its
/// first `:` only.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SenderRef(String);

impl SenderRef {
    /// Parses a sender reference, naming the broken rule on failure.
    pub fn parse(value: impl Into<String>) -> Result<Self, Rule> {
        let value = value.into();
        if value.is_empty() {
            return Err(Rule::Empty);
        }
        if value.chars().count() > MAX_SENDER_REF_LEN {
            return Err(Rule::TooLong {
                max: MAX_SENDER_REF_LEN,
            });
        }
        if value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '?' | '#'))
        {
            return Err(Rule::InvalidCharacters {
                forbidden: "whitespace, control, / ? #",
            });
        }
        Ok(Self(value))
    }

    /// A fresh random reference (a UUID v4), for messages posted without one.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    /// The reference text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SenderRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SenderRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SenderRef({})", self.0)
    }
}

impl TryFrom<String> for SenderRef {
    type Error = Rule;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<SenderRef> for String {
    fn from(value: SenderRef) -> Self {
        value.0
    }
}

/// A message reference `{sender}:{sender_ref}`, unique per node (`AU:1a0abd3b-…`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageRef {
    /// The sending jurisdiction.
    pub sender: Jurisdiction,
    /// The sender's reference.
    pub sender_ref: SenderRef,
}

/// Why a string is not a [`MessageRef`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageRefError {
    /// There is no `:` separating sender and sender_ref.
    #[error("{0:?} is not a message reference of the form <sender>:<sender_ref>")]
    MissingSeparator(String),
    /// The part before the first `:` is not a jurisdiction.
    #[error("{value:?} has an invalid sender: {source}")]
    Sender {
        /// The whole reference.
        value: String,
        /// What is wrong with the sender.
        source: JurisdictionError,
    },
    /// The part after the first `:` is not a valid sender reference.
    #[error("{value:?} has an invalid sender_ref: {rule}")]
    SenderRef {
        /// The whole reference.
        value: String,
        /// The broken rule.
        rule: Rule,
    },
}

impl MessageRef {
    /// Builds a reference from its parts.
    pub fn new(sender: Jurisdiction, sender_ref: SenderRef) -> Self {
        Self { sender, sender_ref }
    }

    /// Parses `{sender}:{sender_ref}`, splitting on the first `:`.
    pub fn parse(value: &str) -> Result<Self, MessageRefError> {
        let (sender, sender_ref) = value
            .split_once(':')
            .ok_or_else(|| MessageRefError::MissingSeparator(value.to_owned()))?;
        let sender = Jurisdiction::parse(sender).map_err(|source| MessageRefError::Sender {
            value: value.to_owned(),
            source,
        })?;
        let sender_ref =
            SenderRef::parse(sender_ref).map_err(|rule| MessageRefError::SenderRef {
                value: value.to_owned(),
                rule,
            })?;
        Ok(Self { sender, sender_ref })
    }
}

impl fmt::Display for MessageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.sender, self.sender_ref)
    }
}

impl FromStr for MessageRef {
    type Err = MessageRefError;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::parse(value)
    }
}

/// A validation rule that a field broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rule {
    /// The field is required but absent.
    #[error("is required")]
    Missing,
    /// The field is present but empty (or only whitespace).
    #[error("is empty")]
    Empty,
    /// The field is longer than allowed.
    #[error("is longer than {max} characters")]
    TooLong {
        /// The maximum length in characters.
        max: usize,
    },
    /// The field contains characters it may not contain.
    #[error("contains forbidden characters ({forbidden})")]
    InvalidCharacters {
        /// A description of the forbidden characters.
        forbidden: &'static str,
    },
    /// The field is not a jurisdiction code.
    #[error("is not a jurisdiction: {0}")]
    NotJurisdiction(JurisdictionError),
    /// The field is not one of the accepted URI forms.
    #[error("is not a URI (CID, URL, URN, multihash or a dotted name with 3+ segments)")]
    NotUri,
}

impl Rule {
    /// A stable kebab-case code for the rule, for machine-readable error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Empty => "empty",
            Self::TooLong { .. } => "too-long",
            Self::InvalidCharacters { .. } => "invalid-characters",
            Self::NotJurisdiction(_) => "not-a-jurisdiction",
            Self::NotUri => "not-a-uri",
        }
    }
}

/// One field that failed validation, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field name as on the wire (`sender`, `obj`, …).
    pub field: &'static str,
    /// The broken rule.
    pub rule: Rule,
    /// The rejected value, when there was one.
    pub value: Option<String>,
}

impl fmt::Display for FieldError {
    /// Formats like the reference: `obj is not a URI: foo`, `subject is empty`,
    /// `missing attr: sender`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.rule, &self.value) {
            (Rule::Missing, _) => write!(f, "missing attr: {}", self.field),
            (Rule::NotJurisdiction(_), Some(value)) => {
                write!(f, "{} is not a jurisdiction: {value}", self.field)
            }
            (Rule::NotUri, Some(value)) => write!(f, "{} is not a URI: {value}", self.field),
            (rule, _) => write!(f, "{} {rule}", self.field),
        }
    }
}

/// Every field error of one validation, in field order. Never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    /// The individual errors.
    pub fn errors(&self) -> &[FieldError] {
        &self.0
    }
}

/// The raw text fields of a message as they arrive from a client or a channel, before
/// validation. `None` means the field was absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageFields {
    /// `sender`.
    pub sender: Option<String>,
    /// `receiver`.
    pub receiver: Option<String>,
    /// `subject`.
    pub subject: Option<String>,
    /// `obj`.
    pub obj: Option<String>,
    /// `predicate`.
    pub predicate: Option<String>,
    /// `sender_ref`; generated when absent.
    pub sender_ref: Option<String>,
}

/// The G2G content of a message: the triple plus its parties. Equality of content is what
/// makes a re-submission with the same reference idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MessageContent {
    /// Sending jurisdiction.
    pub sender: Jurisdiction,
    /// Receiving jurisdiction.
    pub receiver: Jurisdiction,
    /// What the message is about (non-empty, at most 2048 characters).
    pub subject: String,
    /// The object, usually the multihash of a document (a URI, at most 2048 characters).
    pub obj: String,
    /// The message type, e.g. `UN.CEFACT.Trade.CertificateOfOrigin.created` (a URI, at most
    /// 512 characters).
    pub predicate: String,
}

/// A validated message that has not been stored yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The sender's reference (given or generated).
    pub sender_ref: SenderRef,
    /// The content.
    pub content: MessageContent,
}

impl NewMessage {
    /// Validates raw fields, collecting every broken rule. A missing `sender_ref` is
    /// generated; a present one must be valid.
    pub fn parse(fields: MessageFields) -> Result<Self, ValidationErrors> {
        let mut errors = Vec::new();
        let sender = parse_jurisdiction("sender", fields.sender, &mut errors);
        let receiver = parse_jurisdiction("receiver", fields.receiver, &mut errors);
        let subject = parse_text("subject", fields.subject, MAX_SUBJECT_LEN, &mut errors);
        let obj = parse_uri("obj", fields.obj, MAX_OBJ_LEN, &mut errors);
        let predicate = parse_uri(
            "predicate",
            fields.predicate,
            MAX_PREDICATE_LEN,
            &mut errors,
        );
        let sender_ref = match fields.sender_ref {
            None => Some(SenderRef::generate()),
            Some(value) => match SenderRef::parse(value.clone()) {
                Ok(sender_ref) => Some(sender_ref),
                Err(rule) => {
                    errors.push(FieldError {
                        field: "sender_ref",
                        rule,
                        value: Some(value),
                    });
                    None
                }
            },
        };
        match (sender, receiver, subject, obj, predicate, sender_ref) {
            (Some(sender), Some(receiver), Some(subject), Some(obj), Some(predicate), Some(sr))
                if errors.is_empty() =>
            {
                Ok(Self {
                    sender_ref: sr,
                    content: MessageContent {
                        sender,
                        receiver,
                        subject,
                        obj,
                        predicate,
                    },
                })
            }
            _ => Err(ValidationErrors(errors)),
        }
    }

    /// The message reference `{sender}:{sender_ref}`.
    pub fn reference(&self) -> MessageRef {
        MessageRef::new(self.content.sender, self.sender_ref.clone())
    }
}

fn parse_jurisdiction(
    field: &'static str,
    value: Option<String>,
    errors: &mut Vec<FieldError>,
) -> Option<Jurisdiction> {
    let Some(value) = value else {
        errors.push(FieldError {
            field,
            rule: Rule::Missing,
            value: None,
        });
        return None;
    };
    match Jurisdiction::parse(&value) {
        Ok(jurisdiction) => Some(jurisdiction),
        Err(error) => {
            errors.push(FieldError {
                field,
                rule: Rule::NotJurisdiction(error),
                value: Some(value),
            });
            None
        }
    }
}

fn parse_text(
    field: &'static str,
    value: Option<String>,
    max: usize,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    let Some(value) = value else {
        errors.push(FieldError {
            field,
            rule: Rule::Missing,
            value: None,
        });
        return None;
    };
    let rule = if value.trim().is_empty() {
        Rule::Empty
    } else if value.chars().count() > max {
        Rule::TooLong { max }
    } else if value.chars().any(char::is_control) {
        Rule::InvalidCharacters {
            forbidden: "control characters",
        }
    } else {
        return Some(value);
    };
    errors.push(FieldError {
        field,
        rule,
        value: Some(value),
    });
    None
}

fn parse_uri(
    field: &'static str,
    value: Option<String>,
    max: usize,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    let value = parse_text(field, value, max, errors)?;
    if classify_uri(&value).is_some() {
        return Some(value);
    }
    errors.push(FieldError {
        field,
        rule: Rule::NotUri,
        value: Some(value),
    });
    None
}

/// A stored message with its status and channel tracking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The sender's reference.
    pub sender_ref: SenderRef,
    /// The content.
    pub content: MessageContent,
    /// The node-side status.
    pub status: MessageStatus,
    /// The routing rule id of the channel the message was posted to.
    pub channel_id: Option<String>,
    /// The channel's id for the message.
    pub channel_txn_id: Option<String>,
    /// The status on the channel.
    pub channel_status: Option<ChannelStatus>,
    /// When the message was first stored.
    pub created_at: Timestamp,
    /// When the message last changed.
    pub updated_at: Timestamp,
}

impl Message {
    /// The message reference `{sender}:{sender_ref}`.
    pub fn reference(&self) -> MessageRef {
        MessageRef::new(self.content.sender, self.sender_ref.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn valid_fields() -> MessageFields {
        MessageFields {
            sender: Some("AU".into()),
            receiver: Some("SG".into()),
            subject: Some("AU.abn0000000000.XXXX-XXXXX-XXXXX-XXXXXX".into()),
            obj: Some("QmQtYtUS7K1AdKjbuMsmPmPGDLaKL38M5HYwqxW9RKW49n".into()),
            predicate: Some("UN.CEFACT.Trade.CertificateOfOrigin.created".into()),
            sender_ref: None,
        }
    }

    #[test]
    fn valid_message_gets_a_generated_sender_ref() {
        let message = NewMessage::parse(valid_fields()).unwrap();
        assert_eq!(message.content.sender.as_str(), "AU");
        assert_eq!(message.sender_ref.as_str().len(), 36);
        assert_eq!(
            message.reference().to_string(),
            format!("AU:{}", message.sender_ref)
        );
    }

    #[test]
    fn every_error_is_collected_and_named() {
        let fields = MessageFields {
            sender: Some("au".into()),
            receiver: None,
            subject: Some("   ".into()),
            obj: Some("foo".into()),
            predicate: Some("a.b".into()),
            sender_ref: Some("with space".into()),
        };
        let errors = NewMessage::parse(fields).unwrap_err();
        let text: Vec<String> = errors.errors().iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            vec![
                "sender is not a jurisdiction: au",
                "missing attr: receiver",
                "subject is empty",
                "obj is not a URI: foo",
                "predicate is not a URI: a.b",
                "sender_ref contains forbidden characters (whitespace, control, / ? #)",
            ]
        );
        let codes: Vec<&str> = errors.errors().iter().map(|e| e.rule.code()).collect();
        assert_eq!(
            codes,
            [
                "not-a-jurisdiction",
                "missing",
                "empty",
                "not-a-uri",
                "not-a-uri",
                "invalid-characters"
            ]
        );
    }

    #[test]
    fn subject_must_really_be_non_empty() {
        let mut fields = valid_fields();
        fields.subject = Some(String::new());
        let errors = NewMessage::parse(fields).unwrap_err();
        assert_eq!(errors.errors()[0].rule, Rule::Empty);
    }

    #[test]
    fn urns_and_bare_urls_are_accepted() {
        let mut fields = valid_fields();
        fields.predicate = Some("urn:un:cefact:coo".into());
        fields.obj = Some("https://documents.example.org".into());
        assert!(NewMessage::parse(fields).is_ok());
    }

    #[test]
    fn length_limits() {
        let mut fields = valid_fields();
        fields.subject = Some("x".repeat(MAX_SUBJECT_LEN + 1));
        fields.sender_ref = Some("r".repeat(MAX_SENDER_REF_LEN + 1));
        let errors = NewMessage::parse(fields).unwrap_err();
        assert_eq!(errors.errors().len(), 2);
        assert!(errors.errors().iter().all(|e| e.rule.code() == "too-long"));
    }

    #[test]
    fn message_ref_splits_on_first_colon() {
        let reference = MessageRef::parse("AU:abc:def").unwrap();
        assert_eq!(reference.sender.as_str(), "AU");
        assert_eq!(reference.sender_ref.as_str(), "abc:def");
        assert!(matches!(
            MessageRef::parse("AUabc"),
            Err(MessageRefError::MissingSeparator(_))
        ));
        assert!(matches!(
            MessageRef::parse("XX:abc"),
            Err(MessageRefError::Sender { .. })
        ));
        assert!(matches!(
            MessageRef::parse("AU:"),
            Err(MessageRefError::SenderRef { .. })
        ));
    }

    proptest! {
        #[test]
        fn message_ref_round_trips(sender_ref in "[A-Za-z0-9:._~-]{1,64}") {
            let text = format!("SG:{sender_ref}");
            let reference = MessageRef::parse(&text).unwrap();
            prop_assert_eq!(reference.to_string(), text);
        }

        #[test]
        fn message_ref_parse_never_panics(input in "\\PC{0,80}") {
            let _ = MessageRef::parse(&input);
        }

        #[test]
        fn parse_never_panics(
            sender in proptest::option::of("\\PC{0,4}"),
            subject in proptest::option::of("\\PC{0,10}"),
            obj in proptest::option::of("\\PC{0,50}"),
        ) {
            let fields = MessageFields { sender, subject, obj, ..valid_fields() };
            match NewMessage::parse(fields) {
                Ok(message) => prop_assert!(!message.content.subject.trim().is_empty()),
                Err(errors) => prop_assert!(!errors.errors().is_empty()),
            }
        }
    }
}

/// A requested change to a stored message: any of a new status, channel tracking fields and
/// a channel status. Absent fields are left as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageUpdate {
    /// New node-side status (checked by [`MessageStatus::transition`]).
    pub status: Option<MessageStatus>,
    /// The routing rule id of the channel the message was posted to.
    pub channel_id: Option<String>,
    /// The channel's id for the message.
    pub channel_txn_id: Option<String>,
    /// New channel status (checked by [`ChannelStatus::transition`]).
    pub channel_status: Option<ChannelStatus>,
}

/// Why a [`MessageUpdate`] cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    /// The status transition is not allowed.
    #[error(transparent)]
    Status(#[from] crate::TransitionError),
    /// The message is already tracked on a channel under other ids, and the channel has not
    /// revoked it (only a revoked message may be re-posted under new ids).
    #[error("message is already on channel {channel_id} as {channel_txn_id}")]
    ChannelAlreadySet {
        /// The current channel id.
        channel_id: String,
        /// The current channel transaction id.
        channel_txn_id: String,
    },
    /// Only one of `channel_id` and `channel_txn_id` was given for an untracked message.
    #[error("channel_id and channel_txn_id must be given together")]
    IncompleteChannel,
}

impl Message {
    /// Applies `update` at time `now`, returning whether anything changed. On error the
    /// message is left untouched.
    ///
    /// Rules: statuses follow their state machines; channel ids may be set once (both
    /// together), repeated with the same values, or replaced after the channel revoked the
    /// message (re-posting). `updated_at` moves only when something changed.
    pub fn apply(&mut self, update: &MessageUpdate, now: Timestamp) -> Result<bool, UpdateError> {
        let status = match update.status {
            Some(to) => self.status.transition(to)?.current(),
            None => self.status,
        };
        let channel_status = match (self.channel_status, update.channel_status) {
            (Some(from), Some(to)) => Some(from.transition(to)?.current()),
            (None, requested) => requested,
            (current, None) => current,
        };
        let (channel_id, channel_txn_id) = match (
            &update.channel_id,
            &update.channel_txn_id,
            &self.channel_id,
            &self.channel_txn_id,
        ) {
            (None, None, id, txn) => (id.clone(), txn.clone()),
            (Some(id), Some(txn), Some(current_id), Some(current_txn))
                if (id, txn) != (current_id, current_txn)
                    && self.channel_status != Some(ChannelStatus::Revoked) =>
            {
                return Err(UpdateError::ChannelAlreadySet {
                    channel_id: current_id.clone(),
                    channel_txn_id: current_txn.clone(),
                });
            }
            (Some(id), Some(txn), _, _) => (Some(id.clone()), Some(txn.clone())),
            _ => return Err(UpdateError::IncompleteChannel),
        };
        let changed = status != self.status
            || channel_status != self.channel_status
            || channel_id != self.channel_id
            || channel_txn_id != self.channel_txn_id;
        if changed {
            self.status = status;
            self.channel_status = channel_status;
            self.channel_id = channel_id;
            self.channel_txn_id = channel_txn_id;
            self.updated_at = now;
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod update_tests {
    use super::*;

    fn stored(status: MessageStatus) -> Message {
        let new = NewMessage::parse(MessageFields {
            sender: Some("AU".into()),
            receiver: Some("SG".into()),
            subject: Some("s".into()),
            obj: Some("a.b.c".into()),
            predicate: Some("a.b.c".into()),
            sender_ref: Some("r1".into()),
        })
        .unwrap();
        Message {
            sender_ref: new.sender_ref,
            content: new.content,
            status,
            channel_id: None,
            channel_txn_id: None,
            channel_status: None,
            created_at: Timestamp::UNIX_EPOCH,
            updated_at: Timestamp::UNIX_EPOCH,
        }
    }

    fn later() -> Timestamp {
        Timestamp::UNIX_EPOCH + time::Duration::seconds(5)
    }

    #[test]
    fn routing_sets_channel_fields_once() {
        let mut message = stored(MessageStatus::Pending);
        let route = MessageUpdate {
            channel_id: Some("rule-1".into()),
            channel_txn_id: Some("42".into()),
            channel_status: Some(ChannelStatus::Received),
            ..MessageUpdate::default()
        };
        assert!(message.apply(&route, later()).unwrap());
        assert_eq!(message.updated_at, later());
        assert!(
            !message.apply(&route, later()).unwrap(),
            "repeating is a no-op"
        );
        let other = MessageUpdate {
            channel_id: Some("rule-2".into()),
            channel_txn_id: Some("7".into()),
            ..MessageUpdate::default()
        };
        assert!(matches!(
            message.apply(&other, later()),
            Err(UpdateError::ChannelAlreadySet { .. })
        ));
        assert_eq!(message.channel_id.as_deref(), Some("rule-1"));
    }

    #[test]
    fn revoked_messages_may_be_reposted() {
        let mut message = stored(MessageStatus::Pending);
        message.channel_id = Some("rule-1".into());
        message.channel_txn_id = Some("42".into());
        message.channel_status = Some(ChannelStatus::Revoked);
        let repost = MessageUpdate {
            channel_id: Some("rule-1".into()),
            channel_txn_id: Some("43".into()),
            channel_status: Some(ChannelStatus::Received),
            ..MessageUpdate::default()
        };
        assert!(message.apply(&repost, later()).unwrap());
        assert_eq!(message.channel_txn_id.as_deref(), Some("43"));
    }

    #[test]
    fn failed_update_changes_nothing() {
        let mut message = stored(MessageStatus::Accepted);
        let before = message.clone();
        let update = MessageUpdate {
            status: Some(MessageStatus::Rejected),
            channel_status: Some(ChannelStatus::Confirmed),
            ..MessageUpdate::default()
        };
        assert!(matches!(
            message.apply(&update, later()),
            Err(UpdateError::Status(_))
        ));
        assert_eq!(message, before);
        let half = MessageUpdate {
            channel_id: Some("x".into()),
            ..MessageUpdate::default()
        };
        assert_eq!(
            message.apply(&half, later()),
            Err(UpdateError::IncompleteChannel)
        );
    }
}
