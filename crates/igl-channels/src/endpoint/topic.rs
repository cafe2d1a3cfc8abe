//! WebSub topics with the reference semantics (REFERENCE-WIRE §3.1, §3.3): a subscription to
//! `a.b` (or `a.b.*`) receives events whose topic is `a.b` or starts with `a.b.`, matched
//! case-insensitively on whole dot-separated segments.

/// The prefix `by_jurisdiction` subscriptions get (`hub.topic=SG` is stored as
/// `jurisdiction.SG`), and the topic of the observer's announcements.
pub(crate) const JURISDICTION_PREFIX: &str = "jurisdiction.";

/// Why a topic cannot be subscribed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TopicError {
    Empty,
    Slash,
    Wildcard,
}

impl TopicError {
    /// The marshmallow-style message.
    pub(crate) fn message(&self) -> &'static str {
        match self {
            Self::Empty => "Topic must not be empty.",
            Self::Slash => "Topic must not contain '/'.",
            Self::Wildcard => "A '*' is only allowed as the last segment (\"a.b.*\").",
        }
    }
}

/// Checks a topic pattern and returns its matching key: upper case, without one trailing
/// `.` and one trailing `*`, empty segments dropped (`UN.CEFACT.*` → `UN.CEFACT`).
pub(crate) fn subscription_key(topic: &str) -> Result<String, TopicError> {
    if topic.contains('/') {
        return Err(TopicError::Slash);
    }
    let without_dot = topic.strip_suffix('.').unwrap_or(topic);
    let (body, had_wildcard) = match without_dot.strip_suffix('*') {
        Some(body) => (body, true),
        None => (without_dot, false),
    };
    if had_wildcard && !(body.is_empty() || body.ends_with('.')) {
        return Err(TopicError::Wildcard);
    }
    if body.contains('*') {
        return Err(TopicError::Wildcard);
    }
    let key = segments(body).join(".");
    if key.is_empty() {
        return Err(TopicError::Empty);
    }
    Ok(key)
}

/// The keys of the subscriptions an event with `topic` goes to: every leading run of its
/// segments (`jurisdiction.SG` → `JURISDICTION`, `JURISDICTION.SG`).
pub(crate) fn event_keys(topic: &str) -> Vec<String> {
    let parts = segments(topic);
    (1..=parts.len()).map(|n| parts[..n].join(".")).collect()
}

/// The topic of the announcement of a message for `receiver`.
pub(crate) fn jurisdiction_topic(receiver: &str) -> String {
    format!("{JURISDICTION_PREFIX}{receiver}")
}

fn segments(topic: &str) -> Vec<String> {
    topic
        .split('.')
        .filter(|part| !part.is_empty())
        .map(str::to_uppercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_reference_normalisation() {
        assert_eq!(subscription_key("UN.CEFACT.*").unwrap(), "UN.CEFACT");
        assert_eq!(subscription_key("un.cefact.").unwrap(), "UN.CEFACT");
        assert_eq!(
            subscription_key("jurisdiction.SG").unwrap(),
            "JURISDICTION.SG"
        );
        assert_eq!(subscription_key("jurisdiction.*").unwrap(), "JURISDICTION");
        assert_eq!(subscription_key("42").unwrap(), "42");
        assert_eq!(subscription_key("*"), Err(TopicError::Empty));
        assert_eq!(subscription_key(""), Err(TopicError::Empty));
        assert_eq!(subscription_key("a/b"), Err(TopicError::Slash));
        assert_eq!(subscription_key("xx.yy*"), Err(TopicError::Wildcard));
        assert_eq!(subscription_key("a.*.b"), Err(TopicError::Wildcard));
    }

    #[test]
    fn events_match_on_segment_prefixes() {
        assert_eq!(
            event_keys("jurisdiction.sg"),
            vec!["JURISDICTION".to_owned(), "JURISDICTION.SG".to_owned()]
        );
        let keys = event_keys("AA.BB.CCCC.EE");
        assert!(keys.contains(&subscription_key("AA.BB.CCCC").unwrap()));
        assert!(!keys.contains(&subscription_key("AA.BB.CC").unwrap()));
        assert_eq!(event_keys("42"), vec!["42".to_owned()]);
    }
}
