//! `[[channels]]`: the channels this node exchanges messages over.
//!
//! ```toml
//! [[channels]]
//! id = "au-sg-shared-db"              # used as channel_id and in /channel-message/{id}
//! name = "AU-SG shared database"
//! url = "http://channel.example.org/"  # base URL of the channel endpoint (Channel API)
//! ```
//!
//! The Message Reception API accepts notifications only for configured channel ids. Routing
//! rules that choose a channel per receiver and predicate are configured with the router.

use serde::Deserialize;

use crate::error::ConfigProblem;

/// One `[[channels]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSettings {
    /// Stable identifier: 1 to 64 characters of `[A-Za-z0-9._-]`, unique among channels.
    pub id: String,
    /// Human name, for logs and the operator API.
    #[serde(default)]
    pub name: Option<String>,
    /// Base URL of the channel endpoint (`http:` or `https:`).
    pub url: String,
}

fn is_channel_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
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
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(id: &str, url: &str) -> ChannelSettings {
        ChannelSettings {
            id: id.into(),
            name: None,
            url: url.into(),
        }
    }

    #[test]
    fn valid_channels_have_no_problems() {
        assert!(problems(&[channel("au-sg", "http://127.0.0.1:8180/")]).is_empty());
    }

    #[test]
    fn problems_name_the_key() {
        let found: Vec<String> = problems(&[
            channel("a", "http://x/"),
            channel("a", "ftp://x/"),
            channel("bad id", "https://y/"),
        ])
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].starts_with("channels.1.id:"), "{found:?}");
        assert!(found[1].starts_with("channels.1.url:"), "{found:?}");
        assert!(found[2].starts_with("channels.2.id:"), "{found:?}");
    }
}
