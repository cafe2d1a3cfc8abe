//! `[[channels]]`: the channels this node exchanges messages over, and the routing table.
//!
//! ```toml
//! [[channels]]
//! id = "au-sg-shared-db"              # used as channel_id and in /channel-message/{id}
//! name = "AU-SG shared database"
//! url = "http://channel.example.org/"  # base URL of the channel endpoint (Channel API)
//! receivers = ["SG"]                   # outbound messages to these jurisdictions may use it
//! predicates = ["UN.CEFACT.*"]         # optional: only these predicates (default: any)
//!
//! [channels.allow]                     # optional: per field, only these values
//! sender = ["AU"]
//!
//! [channels.deny]                      # optional: per field, never these values (deny wins)
//! subject = ["AU.test.*"]
//! ```
//!
//! The Message Reception API accepts notifications only for configured channel ids.
//!
//! **Routing** (REFERENCE-WIRE §4.2, with the reference's ignored `Predicate` and unused
//! "screening" filters made real): every entry is a routing rule, evaluated in file order.
//! A rule accepts an outbound message when
//! - the message's `receiver` is one of `receivers` (an entry without `receivers` is never
//!   used for outbound messages; it still receives inbound ones);
//! - `predicates` is absent or empty, or the `predicate` matches one of its patterns;
//! - for each field (`sender`, `receiver`, `subject`, `obj`, `predicate`) listed under
//!   `allow`, the field matches one of the patterns listed there;
//! - no pattern listed under `deny` for a field matches that field.
//!
//! A **pattern** is an exact, case-sensitive value, or a prefix when it ends with `*`
//! (`UN.CEFACT.*` matches `UN.CEFACT.Trade.CO.created`; `*` alone matches anything). The
//! router posts to the first accepting rule's channel; a message no rule accepts is
//! rejected with the reason.

use serde::Deserialize;

use crate::error::ConfigProblem;

/// One `[[channels]]` entry: a channel endpoint and the routing rule that sends outbound
/// messages to it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSettings {
    /// Stable identifier: 1 to 64 characters of `[A-Za-z0-9._-]`, unique among channels.
    /// Recorded as the `channel_id` of the messages routed to this channel.
    pub id: String,
    /// Human name, for logs and the operator API.
    #[serde(default)]
    pub name: Option<String>,
    /// Base URL of the channel endpoint (`http:` or `https:`).
    pub url: String,
    /// Send the sender's `sender_ref` with each posted message so the receiving node keeps
    /// it (our shared-db endpoints accept it; the reference endpoints reject unknown fields,
    /// so it is off by default).
    #[serde(default)]
    pub forward_sender_ref: bool,
    /// The receiving jurisdictions this channel serves (the reference's `Jurisdiction`):
    /// upper-case ISO 3166-1 alpha-2 codes. Empty (the default): not used for routing.
    #[serde(default)]
    pub receivers: Vec<String>,
    /// Predicate patterns this channel accepts; empty (the default) accepts any predicate.
    #[serde(default)]
    pub predicates: Vec<String>,
    /// Per field, the patterns a message must match (a field not listed is not
    /// restricted). A listed field must have at least one pattern.
    #[serde(default)]
    pub allow: ChannelFieldFilter,
    /// Per field, the patterns a message must not match; deny wins over allow.
    #[serde(default)]
    pub deny: ChannelFieldFilter,
}

impl ChannelSettings {
    /// A channel with `id` and `url`, no name and no routing (fill in `receivers` and the
    /// filters to route messages to it).
    pub fn new(id: impl Into<String>, url: impl Into<String>) -> Self {
        ChannelSettings {
            id: id.into(),
            url: url.into(),
            ..ChannelSettings::default()
        }
    }
}

/// `allow` / `deny` of a `[[channels]]` entry: pattern lists per message field
/// (`None` = the field is not filtered). See the module documentation for the pattern
/// syntax.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelFieldFilter {
    /// Patterns for `sender`.
    pub sender: Option<Vec<String>>,
    /// Patterns for `receiver`.
    pub receiver: Option<Vec<String>>,
    /// Patterns for `subject`.
    pub subject: Option<Vec<String>>,
    /// Patterns for `obj`.
    pub obj: Option<Vec<String>>,
    /// Patterns for `predicate`.
    pub predicate: Option<Vec<String>>,
}

impl ChannelFieldFilter {
    /// The message field names, in wire order.
    pub const FIELDS: [&'static str; 5] = ["sender", "receiver", "subject", "obj", "predicate"];

    /// The pattern lists as `(field name, patterns)`, in wire order, skipping unset fields.
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, &[String])> {
        [
            &self.sender,
            &self.receiver,
            &self.subject,
            &self.obj,
            &self.predicate,
        ]
        .into_iter()
        .zip(Self::FIELDS)
        .filter_map(|(patterns, field)| patterns.as_deref().map(|patterns| (field, patterns)))
    }

    /// Whether no field is filtered.
    pub fn is_empty(&self) -> bool {
        self.fields().next().is_none()
    }
}

/// Why `pattern` is not a routing pattern (exact value, or prefix ending in `*`), if it
/// is not one.
pub(crate) fn routing_pattern_problem(pattern: &str) -> Option<&'static str> {
    let body = pattern.strip_suffix('*').unwrap_or(pattern);
    if pattern.is_empty() {
        Some("must not be empty")
    } else if body.contains('*') {
        Some("may contain '*' only as its last character")
    } else if pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("must not contain whitespace or control characters")
    } else {
        None
    }
}

fn is_channel_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn is_jurisdiction_code(code: &str) -> bool {
    code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase())
}

/// Problems of the `channels` list, each naming its key (`channels.1.url`).
pub(crate) fn problems(channels: &[ChannelSettings]) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    for (index, channel) in channels.iter().enumerate() {
        if !is_channel_id(&channel.id) {
            problems.push(ConfigProblem::new(
                format!("channels.{index}.id"),
                format!(
                    "{:?} must be 1-64 characters of A-Z, a-z, 0-9, '.', '_', '-'",
                    channel.id
                ),
            ));
        }
        if channels[..index]
            .iter()
            .any(|earlier| earlier.id == channel.id)
        {
            problems.push(ConfigProblem::new(
                format!("channels.{index}.id"),
                format!("{:?} is used by another channel", channel.id),
            ));
        }
        let scheme_ok = channel.url.starts_with("http://") || channel.url.starts_with("https://");
        if !scheme_ok || channel.url.len() <= "https://".len() {
            problems.push(ConfigProblem::new(
                format!("channels.{index}.url"),
                format!("{:?} must be an http: or https: URL", channel.url),
            ));
        }
        routing_problems(index, channel, &mut problems);
    }
    problems
}

/// Problems of the routing keys of `channels.{index}`.
fn routing_problems(index: usize, channel: &ChannelSettings, problems: &mut Vec<ConfigProblem>) {
    for (position, receiver) in channel.receivers.iter().enumerate() {
        if !is_jurisdiction_code(receiver) {
            problems.push(ConfigProblem::new(
                format!("channels.{index}.receivers.{position}"),
                format!("{receiver:?} is not an upper-case ISO 3166-1 alpha-2 code"),
            ));
        }
    }
    for (position, pattern) in channel.predicates.iter().enumerate() {
        if let Some(problem) = routing_pattern_problem(pattern) {
            problems.push(ConfigProblem::new(
                format!("channels.{index}.predicates.{position}"),
                format!("{pattern:?} {problem}"),
            ));
        }
    }
    for (filter_name, filter) in [("allow", &channel.allow), ("deny", &channel.deny)] {
        for (field, patterns) in filter.fields() {
            let key = format!("channels.{index}.{filter_name}.{field}");
            if filter_name == "allow" && patterns.is_empty() {
                problems.push(ConfigProblem::new(
                    &key,
                    "must list at least one pattern (remove the key to allow any value)",
                ));
            }
            for (position, pattern) in patterns.iter().enumerate() {
                if let Some(problem) = routing_pattern_problem(pattern) {
                    problems.push(ConfigProblem::new(
                        format!("{key}.{position}"),
                        format!("{pattern:?} {problem}"),
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use figment::providers::Format as _;

    use super::*;

    fn channel(id: &str, url: &str) -> ChannelSettings {
        ChannelSettings::new(id, url)
    }

    fn messages(channels: &[ChannelSettings]) -> Vec<String> {
        problems(channels).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn valid_channels_have_no_problems() {
        assert!(problems(&[channel("au-sg", "http://127.0.0.1:8180/")]).is_empty());
        let routed = ChannelSettings {
            receivers: vec!["SG".into(), "NZ".into()],
            predicates: vec!["UN.CEFACT.*".into(), "urn:x".into(), "*".into()],
            allow: ChannelFieldFilter {
                sender: Some(vec!["AU".into()]),
                ..ChannelFieldFilter::default()
            },
            deny: ChannelFieldFilter {
                subject: Some(vec![]),
                obj: Some(vec!["Qm*".into()]),
                ..ChannelFieldFilter::default()
            },
            ..channel("au-sg", "https://channel.example.org/")
        };
        assert_eq!(messages(&[routed]), Vec::<String>::new());
    }

    #[test]
    fn problems_name_the_key() {
        let found = messages(&[
            channel("a", "http://x/"),
            channel("a", "ftp://x/"),
            channel("bad id", "https://y/"),
        ]);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].starts_with("channels.1.id:"), "{found:?}");
        assert!(found[1].starts_with("channels.1.url:"), "{found:?}");
        assert!(found[2].starts_with("channels.2.id:"), "{found:?}");
    }

    #[test]
    fn routing_problems_name_the_key() {
        let bad = ChannelSettings {
            receivers: vec!["SG".into(), "sg".into()],
            predicates: vec!["UN.*.created".into(), String::new(), "a b".into()],
            allow: ChannelFieldFilter {
                sender: Some(vec![]),
                predicate: Some(vec!["**".into()]),
                ..ChannelFieldFilter::default()
            },
            deny: ChannelFieldFilter {
                obj: Some(vec!["ok".into(), "*x".into()]),
                ..ChannelFieldFilter::default()
            },
            ..channel("au-sg", "http://x/")
        };
        assert_eq!(
            messages(&[bad]),
            [
                "channels.0.receivers.1: \"sg\" is not an upper-case ISO 3166-1 alpha-2 code",
                "channels.0.predicates.0: \"UN.*.created\" may contain '*' only as its last character",
                "channels.0.predicates.1: \"\" must not be empty",
                "channels.0.predicates.2: \"a b\" must not contain whitespace or control characters",
                "channels.0.allow.sender: must list at least one pattern (remove the key to allow any value)",
                "channels.0.allow.predicate.0: \"**\" may contain '*' only as its last character",
                "channels.0.deny.obj.1: \"*x\" may contain '*' only as its last character",
            ]
        );
    }

    #[test]
    fn toml_routing_keys_deserialize() {
        let text = r#"
            id = "au-sg"
            url = "http://x/"
            receivers = ["SG"]
            predicates = ["UN.CEFACT.*"]
            allow = { sender = ["AU"] }
            [deny]
            subject = ["test.*"]
        "#;
        let parsed: ChannelSettings = toml_from_str(text);
        assert_eq!(parsed.receivers, ["SG"]);
        assert_eq!(parsed.predicates, ["UN.CEFACT.*"]);
        assert_eq!(parsed.allow.sender.as_deref(), Some(&["AU".to_owned()][..]));
        assert_eq!(
            parsed.deny.fields().collect::<Vec<_>>(),
            [("subject", &["test.*".to_owned()][..])]
        );
        assert!(!parsed.deny.is_empty());
        assert!(ChannelFieldFilter::default().is_empty());
    }

    #[test]
    fn unknown_filter_fields_are_rejected() {
        let text = r#"
            id = "au-sg"
            url = "http://x/"
            allow = { sender_ref = ["x"] }
        "#;
        let error = figment::Figment::from(figment::providers::Toml::string(text))
            .extract::<ChannelSettings>()
            .unwrap_err();
        assert!(error.to_string().contains("sender_ref"), "{error}");
    }

    #[test]
    fn a_routing_table_loads_from_a_file_and_problems_name_the_key() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("igl.toml");
        std::fs::write(
            &path,
            r#"
                [[channels]]
                id = "au-sg"
                url = "http://127.0.0.1:8180/"
                receivers = ["SG"]
                predicates = ["UN.CEFACT.*"]
                [channels.deny]
                sender = ["NZ"]

                [[channels]]
                id = "au-nz"
                url = "http://127.0.0.1:8181/"
                receivers = ["NZ", "sg"]
            "#,
        )
        .unwrap();
        let error = crate::Settings::load(Some(&path), Vec::new()).unwrap_err();
        let found: Vec<String> = error.problems().iter().map(ToString::to_string).collect();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with(
                "channels.1.receivers.1: \"sg\" is not an upper-case ISO 3166-1 alpha-2 code"
            ),
            "{found:?}"
        );
        std::fs::write(
            &path,
            std::fs::read_to_string(&path)
                .unwrap()
                .replace("\"sg\"", "\"SG\""),
        )
        .unwrap();
        let settings = crate::Settings::load(Some(&path), Vec::new()).unwrap();
        assert_eq!(
            settings.channels[0].deny.sender.as_deref(),
            Some(&["NZ".to_owned()][..])
        );
        assert_eq!(settings.channels[1].receivers, ["NZ", "SG"]);
    }

    fn toml_from_str(text: &str) -> ChannelSettings {
        figment::Figment::from(figment::providers::Toml::string(text))
            .extract()
            .expect("valid channel settings")
    }
}
