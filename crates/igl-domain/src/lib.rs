//! Domain model of the IGL node: identifiers, messages, statuses and their rules.
//!
//! Everything here is pure: no async, no I/O. Values of the newtypes in this crate are
//! valid by construction ("parse, don't validate"): the only way to get a
//! [`Jurisdiction`], a [`Multihash`] or a [`NewMessage`] is through a parser that checks
//! the rules of `REFERENCE-WIRE.md` §1 (with the defects of the reference fixed).

mod jurisdiction;
mod message;
mod multihash;
mod status;
mod uri;

pub use jurisdiction::{Jurisdiction, JurisdictionError};
pub use message::{
    FieldError, MAX_OBJ_LEN, MAX_PREDICATE_LEN, MAX_SENDER_REF_LEN, MAX_SUBJECT_LEN, Message,
    MessageContent, MessageFields, MessageRef, MessageRefError, MessageUpdate, NewMessage, Rule,
    SenderRef, UpdateError, ValidationErrors,
};
pub use multihash::{Multihash, MultihashError, MultihashHasher};
pub use status::{ChannelStatus, MessageStatus, StatusChange, TransitionError};
pub use uri::{UriKind, classify_uri};

/// Timestamps used throughout the domain (UTC).
pub type Timestamp = time::OffsetDateTime;
