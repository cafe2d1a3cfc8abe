//! The routing table (REFERENCE-WIRE §4.2, with the reference's ignored `Predicate` and
//! its unused per-field "screening" filters made real): ordered rules, each naming a
//! channel, that decide which channel carries an outbound message. Pure: no I/O.
//!
//! A [`RoutingRule`] accepts a message when its receiver is one of the rule's
//! `receivers`, its predicate matches one of the rule's `predicates` (when there are any),
//! every field the rule's `allow` filter lists matches one of its patterns, and no pattern
//! of the rule's `deny` filter matches (deny wins). [`route`] returns the first accepting
//! rule, or [`NoRoute`] with a reason naming what each candidate rule objected to.

use std::collections::BTreeMap;
use std::fmt;

use igl_domain::{Jurisdiction, MessageContent};

#[cfg(test)]
mod tests;

/// A value pattern: an exact, case-sensitive value, or a prefix when written with a
/// trailing `*` (`UN.CEFACT.*`; a lone `*` matches anything).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: String,
}

/// Why a string is not a [`Pattern`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pattern:?} is not a routing pattern: {reason}")]
pub struct PatternError {
    /// The rejected text.
    pub pattern: String,
    /// The broken rule.
    pub reason: &'static str,
}

impl Pattern {
    /// Parses a pattern: not empty, no whitespace or control characters, and `*` only as
    /// the last character.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let error = |reason| PatternError {
            pattern: text.to_owned(),
            reason,
        };
        if text.is_empty() {
            return Err(error("must not be empty"));
        }
        if text.strip_suffix('*').unwrap_or(text).contains('*') {
            return Err(error("may contain '*' only as its last character"));
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(error("must not contain whitespace or control characters"));
        }
        Ok(Self {
            text: text.to_owned(),
        })
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self.text.strip_suffix('*') {
            Some(prefix) => value.starts_with(prefix),
            None => value == self.text,
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({})", self.text)
    }
}

/// A content field of a message, as filters name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MessageField {
    /// `sender`.
    Sender,
    /// `receiver`.
    Receiver,
    /// `subject`.
    Subject,
    /// `obj`.
    Obj,
    /// `predicate`.
    Predicate,
}

impl MessageField {
    /// Every field, in wire order.
    pub const ALL: [Self; 5] = [
        Self::Sender,
        Self::Receiver,
        Self::Subject,
        Self::Obj,
        Self::Predicate,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sender => "sender",
            Self::Receiver => "receiver",
            Self::Subject => "subject",
            Self::Obj => "obj",
            Self::Predicate => "predicate",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|field| field.as_str() == name)
    }

    /// The value of this field in `content`.
    pub fn value_of(self, content: &MessageContent) -> &str {
        match self {
            Self::Sender => content.sender.as_str(),
            Self::Receiver => content.receiver.as_str(),
            Self::Subject => &content.subject,
            Self::Obj => &content.obj,
            Self::Predicate => &content.predicate,
        }
    }
}

impl fmt::Display for MessageField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Pattern lists per message field (the reference's `DiscreteGenericMessageFilter`). A
/// field without a list is not filtered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldFilter {
    patterns: BTreeMap<MessageField, Vec<Pattern>>,
}

impl FieldFilter {
    /// A filter with no field listed.
    pub fn new() -> Self {
        Self::default()
    }

    /// This filter with `patterns` listed for `field` (replacing an earlier list).
    pub fn with(mut self, field: MessageField, patterns: Vec<Pattern>) -> Self {
        self.patterns.insert(field, patterns);
        self
    }

    /// The patterns listed for `field`, if the field is filtered.
    pub fn patterns(&self, field: MessageField) -> Option<&[Pattern]> {
        self.patterns.get(&field).map(Vec::as_slice)
    }

    /// Whether no field is listed.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
}

/// One rule of the routing table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingRule {
    /// The channel that carries the messages this rule accepts (also recorded as their
    /// `channel_id`).
    pub channel_id: String,
    /// The receivers the channel serves; a rule without receivers accepts nothing.
    pub receivers: Vec<Jurisdiction>,
    /// Predicate patterns; empty accepts any predicate.
    pub predicates: Vec<Pattern>,
    /// Fields that must match one of their patterns.
    pub allow: FieldFilter,
    /// Fields that must match none of their patterns (deny wins over allow).
    pub deny: FieldFilter,
}

impl RoutingRule {
    /// A rule sending messages for `receivers` to `channel_id`, with no predicate patterns
    /// and no filters.
    pub fn new(channel_id: impl Into<String>, receivers: Vec<Jurisdiction>) -> Self {
        Self {
            channel_id: channel_id.into(),
            receivers,
            predicates: Vec::new(),
            allow: FieldFilter::new(),
            deny: FieldFilter::new(),
        }
    }

    /// This rule with `predicates`.
    pub fn with_predicates(mut self, predicates: Vec<Pattern>) -> Self {
        self.predicates = predicates;
        self
    }

    /// This rule with the `allow` filter.
    pub fn with_allow(mut self, allow: FieldFilter) -> Self {
        self.allow = allow;
        self
    }

    /// This rule with the `deny` filter.
    pub fn with_deny(mut self, deny: FieldFilter) -> Self {
        self.deny = deny;
        self
    }

    /// Whether the rule serves the message's receiver.
    pub fn serves(&self, content: &MessageContent) -> bool {
        self.receivers.contains(&content.receiver)
    }

    /// Checks the message against this rule.
    ///
    /// # Errors
    ///
    /// What the rule objects to, lowercase (`receiver "SG" is not served`,
    /// `predicate "X" matches none of [UN.CEFACT.*]`, `sender "AU" is denied by "AU"`).
    pub fn screen(&self, content: &MessageContent) -> Result<(), String> {
        if !self.serves(content) {
            return Err(format!(
                "receiver {:?} is not served",
                content.receiver.as_str()
            ));
        }
        if !self.predicates.is_empty()
            && !self
                .predicates
                .iter()
                .any(|pattern| pattern.matches(&content.predicate))
        {
            return Err(format!(
                "predicate {:?} matches none of {}",
                content.predicate,
                pattern_list(&self.predicates)
            ));
        }
        for field in MessageField::ALL {
            let value = field.value_of(content);
            if let Some(denied) = self
                .deny
                .patterns(field)
                .and_then(|patterns| patterns.iter().find(|pattern| pattern.matches(value)))
            {
                return Err(format!("{field} {value:?} is denied by {denied}"));
            }
        }
        for field in MessageField::ALL {
            let value = field.value_of(content);
            if let Some(allowed) = self.allow.patterns(field)
                && !allowed.iter().any(|pattern| pattern.matches(value))
            {
                return Err(format!(
                    "{field} {value:?} is not allowed (allowed: {})",
                    pattern_list(allowed)
                ));
            }
        }
        Ok(())
    }
}

fn pattern_list(patterns: &[Pattern]) -> String {
    let names: Vec<&str> = patterns.iter().map(Pattern::as_str).collect();
    format!("[{}]", names.join(", "))
}

/// No rule accepts a message; `reason` says why, naming each candidate rule's objection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no route: {reason}")]
pub struct NoRoute {
    /// Why, lowercase (`no channel serves receiver "SG"`, or `channel au-sg: predicate "X"
    /// matches none of [UN.CEFACT.*]; channel b: …`).
    pub reason: String,
}

/// The first rule of `rules` that accepts `content`.
///
/// # Errors
///
/// [`NoRoute`] when none does: either no rule serves the receiver, or the reason of every
/// rule that serves it.
pub fn route<'r>(
    content: &MessageContent,
    rules: &'r [RoutingRule],
) -> Result<&'r RoutingRule, NoRoute> {
    if let Some(rule) = matching_rules(content, rules).next() {
        return Ok(rule);
    }
    let objections: Vec<String> = rules
        .iter()
        .filter(|rule| rule.serves(content))
        .filter_map(|rule| {
            rule.screen(content)
                .err()
                .map(|objection| format!("channel {}: {objection}", rule.channel_id))
        })
        .collect();
    let reason = if objections.is_empty() {
        format!("no channel serves receiver {:?}", content.receiver.as_str())
    } else {
        objections.join("; ")
    };
    Err(NoRoute { reason })
}

/// Every rule of `rules` that accepts `content`, in order (the router tries them in turn
/// while channels are unavailable).
pub fn matching_rules<'c, 'r>(
    content: &'c MessageContent,
    rules: &'r [RoutingRule],
) -> impl Iterator<Item = &'r RoutingRule> + 'c
where
    'r: 'c,
{
    rules.iter().filter(|rule| rule.screen(content).is_ok())
}

/// The ordered routing rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingTable {
    rules: Vec<RoutingRule>,
}

impl RoutingTable {
    /// A table of `rules`, evaluated in this order.
    pub fn new(rules: Vec<RoutingRule>) -> Self {
        Self { rules }
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[RoutingRule] {
        &self.rules
    }

    /// [`route`] over this table.
    ///
    /// # Errors
    ///
    /// [`NoRoute`] when no rule accepts the message.
    pub fn route(&self, content: &MessageContent) -> Result<&RoutingRule, NoRoute> {
        route(content, &self.rules)
    }

    /// [`matching_rules`] over this table.
    pub fn matching<'c, 'r>(
        &'r self,
        content: &'c MessageContent,
    ) -> impl Iterator<Item = &'r RoutingRule> + 'c
    where
        'r: 'c,
    {
        matching_rules(content, &self.rules)
    }
}
