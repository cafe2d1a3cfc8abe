//! From `[[channels]]` settings to the routing table and the HTTP clients.

use std::sync::Arc;

use igl_config::{ChannelFieldFilter, ChannelSettings};
use igl_core::channel::routing::{FieldFilter, MessageField, Pattern, RoutingRule, RoutingTable};
use igl_core::channel::{ChannelClient, Channels};
use igl_domain::Jurisdiction;

use super::http::{HttpChannelClient, HttpClientConfig, HttpClientError};

/// Why the configured channels cannot be set up; names the configuration key.
#[derive(Debug, thiserror::Error)]
pub enum ChannelSetupError {
    /// A routing value is invalid (`channels.0.receivers.1: "XX" is not …`).
    #[error("{key}: {message}")]
    Invalid {
        /// The dotted key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A channel's HTTP client cannot be built.
    #[error("channels.{index}: cannot set up the channel client")]
    Client {
        /// Position of the channel in `[[channels]]`.
        index: usize,
        /// The cause.
        #[source]
        source: HttpClientError,
    },
}

/// The routing table of `channels`: one rule per entry that has `receivers`, in file
/// order, named by the entry's `id`.
///
/// # Errors
///
/// [`ChannelSetupError::Invalid`] for a receiver that is not an ISO 3166-1 alpha-2 code or
/// a malformed pattern (settings that passed `Settings::validate` fail only on codes that
/// are well formed but not assigned, like `XX`).
pub fn routing_table(channels: &[ChannelSettings]) -> Result<RoutingTable, ChannelSetupError> {
    let mut rules = Vec::new();
    for (index, channel) in channels.iter().enumerate() {
        if channel.receivers.is_empty() {
            continue;
        }
        let receivers = channel
            .receivers
            .iter()
            .enumerate()
            .map(|(position, code)| {
                Jurisdiction::parse(code).map_err(|error| ChannelSetupError::Invalid {
                    key: format!("channels.{index}.receivers.{position}"),
                    message: error.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let predicates = patterns(&format!("channels.{index}.predicates"), &channel.predicates)?;
        let allow = field_filter(&format!("channels.{index}.allow"), &channel.allow)?;
        let deny = field_filter(&format!("channels.{index}.deny"), &channel.deny)?;
        rules.push(
            RoutingRule::new(channel.id.clone(), receivers)
                .with_predicates(predicates)
                .with_allow(allow)
                .with_deny(deny),
        );
    }
    Ok(RoutingTable::new(rules))
}

/// The configured channels: [`routing_table`] plus an [`HttpChannelClient`] per entry
/// (every entry, routed or not, so that receiving-side workers find their client too).
///
/// # Errors
///
/// [`ChannelSetupError`] naming the key of the first problem.
pub fn build_channels(
    channels: &[ChannelSettings],
    config: HttpClientConfig,
) -> Result<Channels, ChannelSetupError> {
    let routing = routing_table(channels)?;
    let mut clients: Vec<Arc<dyn ChannelClient>> = Vec::with_capacity(channels.len());
    for (index, channel) in channels.iter().enumerate() {
        let client = HttpChannelClient::new(channel.id.clone(), &channel.url, config)
            .map_err(|source| ChannelSetupError::Client { index, source })?
            .with_sender_ref_forwarding(channel.forward_sender_ref);
        clients.push(Arc::new(client));
    }
    Channels::new(routing, clients).map_err(|missing| ChannelSetupError::Invalid {
        key: format!("channels.{}", missing.index),
        message: missing.to_string(),
    })
}

fn patterns(key: &str, texts: &[String]) -> Result<Vec<Pattern>, ChannelSetupError> {
    texts
        .iter()
        .enumerate()
        .map(|(position, text)| {
            Pattern::parse(text).map_err(|error| ChannelSetupError::Invalid {
                key: format!("{key}.{position}"),
                message: error.to_string(),
            })
        })
        .collect()
}

fn field_filter(key: &str, filter: &ChannelFieldFilter) -> Result<FieldFilter, ChannelSetupError> {
    let mut result = FieldFilter::new();
    for (name, texts) in filter.fields() {
        let field = MessageField::parse(name).ok_or_else(|| ChannelSetupError::Invalid {
            key: format!("{key}.{name}"),
            message: "is not a message field".to_owned(),
        })?;
        result = result.with(field, patterns(&format!("{key}.{name}"), texts)?);
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use igl_domain::MessageContent;

    use super::*;

    fn settings() -> Vec<ChannelSettings> {
        vec![
            ChannelSettings::new("inbound-only", "http://127.0.0.1:1/"),
            ChannelSettings {
                receivers: vec!["SG".into()],
                predicates: vec!["UN.CEFACT.*".into()],
                deny: ChannelFieldFilter {
                    subject: Some(vec!["test.*".into()]),
                    ..ChannelFieldFilter::default()
                },
                ..ChannelSettings::new("au-sg", "http://127.0.0.1:2/")
            },
        ]
    }

    fn content(subject: &str) -> MessageContent {
        MessageContent {
            sender: Jurisdiction::parse("AU").unwrap(),
            receiver: Jurisdiction::parse("SG").unwrap(),
            subject: subject.into(),
            obj: "a.b.c".into(),
            predicate: "UN.CEFACT.Trade.CO.created".into(),
        }
    }

    #[test]
    fn settings_become_rules_in_file_order() {
        let table = routing_table(&settings()).unwrap();
        assert_eq!(
            table.rules().len(),
            1,
            "entries without receivers do not route"
        );
        assert_eq!(table.route(&content("x")).unwrap().channel_id, "au-sg");
        assert_eq!(
            table.route(&content("test.1")).unwrap_err().reason,
            "channel au-sg: subject \"test.1\" is denied by test.*"
        );
        let channels = build_channels(&settings(), HttpClientConfig::default()).unwrap();
        assert!(channels.client("inbound-only").is_some());
        assert!(channels.client("au-sg").is_some());
        assert_eq!(channels.clients().count(), 2);
    }

    #[test]
    fn unassigned_codes_name_their_key() {
        let mut channels = settings();
        channels[1].receivers.push("XX".into());
        let error = routing_table(&channels).unwrap_err();
        assert_eq!(
            error.to_string(),
            "channels.1.receivers.1: \"XX\" is not an ISO 3166-1 alpha-2 country code"
        );
        let mut channels = settings();
        channels[0].url = "ftp://x/".into();
        let error = build_channels(&channels, HttpClientConfig::default()).unwrap_err();
        assert!(error.to_string().starts_with("channels.0:"), "{error}");
    }
}
