//! The [`Component`] enum: every API and worker the `igl` binary can run.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One API or worker of the node.
///
/// Every component is enabled by default ([`Component::all`]); a scale-out deployment runs
/// `igl node --component <name>` per process. A component never assumes that another one runs
/// in the same process.
///
/// The textual name (used in configuration, `IGL_COMPONENTS`, the CLI and logs) is the
/// kebab-case form returned by [`Component::as_str`]; [`FromStr`] and serde accept exactly those
/// names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    /// B2G Message API (`message-api`): accepts and serves messages.
    MessageApi,
    /// Document API (`document-api`): stores documents and serves them to allowed jurisdictions.
    DocumentApi,
    /// Subscriptions API (`subscriptions-api`): the WebSub hub endpoints.
    SubscriptionsApi,
    /// Message Reception API (`message-rx-api`): channel-facing inbound notifications.
    MessageRxApi,
    /// Channel API (`channel-api`): served by our own channel endpoints.
    ChannelApi,
    /// Admin API (`admin-api`): health, metrics, replay and dead letters.
    AdminApi,
    /// Message processor worker (`message-processor`): ACL, events and follow-up jobs.
    MessageProcessor,
    /// Router worker (`router`): picks a channel from the routing table and posts to it.
    Router,
    /// Channel poller worker (`channel-poller`): tracks posted messages until confirmed.
    ChannelPoller,
    /// Channel subscriber worker (`channel-subscriber`): keeps WebSub subscriptions on channels.
    ChannelSubscriber,
    /// Retriever worker (`retriever`): fetches inbound channel messages.
    Retriever,
    /// Object spider worker (`object-spider`): downloads and verifies foreign documents.
    ObjectSpider,
    /// Spreader worker (`spreader`): fans events out to matching subscriptions.
    Spreader,
    /// Deliverer worker (`deliverer`): POSTs signed callbacks with retries.
    Deliverer,
    /// Outbox relay worker (`outbox-relay`): publishes committed outbox rows to a broker.
    OutboxRelay,
}

impl Component {
    /// Every component, in declaration order (APIs first, then workers).
    ///
    /// This is also the default set of enabled components.
    pub const fn all() -> &'static [Component] {
        &[
            Component::MessageApi,
            Component::DocumentApi,
            Component::SubscriptionsApi,
            Component::MessageRxApi,
            Component::ChannelApi,
            Component::AdminApi,
            Component::MessageProcessor,
            Component::Router,
            Component::ChannelPoller,
            Component::ChannelSubscriber,
            Component::Retriever,
            Component::ObjectSpider,
            Component::Spreader,
            Component::Deliverer,
            Component::OutboxRelay,
        ]
    }

    /// The stable kebab-case name, e.g. `"message-api"` or `"router"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Component::MessageApi => "message-api",
            Component::DocumentApi => "document-api",
            Component::SubscriptionsApi => "subscriptions-api",
            Component::MessageRxApi => "message-rx-api",
            Component::ChannelApi => "channel-api",
            Component::AdminApi => "admin-api",
            Component::MessageProcessor => "message-processor",
            Component::Router => "router",
            Component::ChannelPoller => "channel-poller",
            Component::ChannelSubscriber => "channel-subscriber",
            Component::Retriever => "retriever",
            Component::ObjectSpider => "object-spider",
            Component::Spreader => "spreader",
            Component::Deliverer => "deliverer",
            Component::OutboxRelay => "outbox-relay",
        }
    }

    /// `true` for the HTTP APIs, `false` for the workers.
    pub const fn is_api(self) -> bool {
        matches!(
            self,
            Component::MessageApi
                | Component::DocumentApi
                | Component::SubscriptionsApi
                | Component::MessageRxApi
                | Component::ChannelApi
                | Component::AdminApi
        )
    }

    /// Parses a comma-separated list such as `"message-api, router"` (the `IGL_COMPONENTS`
    /// form).
    ///
    /// Whitespace around names is ignored, and so are empty entries, so `""` yields an empty
    /// list. Order and duplicates are preserved as written.
    ///
    /// # Errors
    ///
    /// Returns [`ParseComponentError`] for the first name that is not a component.
    pub fn parse_list(list: &str) -> Result<Vec<Component>, ParseComponentError> {
        list.split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(str::parse)
            .collect()
    }
}

impl fmt::Display for Component {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for Component {
    type Err = ParseComponentError;

    /// Accepts exactly the names returned by [`Component::as_str`] (case-sensitive).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Component::all()
            .iter()
            .copied()
            .find(|component| component.as_str() == name)
            .ok_or_else(|| ParseComponentError {
                name: name.to_owned(),
            })
    }
}

impl Serialize for Component {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Component {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// The error of [`Component::from_str`]: an unknown component name.
///
/// Its message lists every valid name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown component {name:?} (expected one of: {})", ValidNames)]
pub struct ParseComponentError {
    name: String,
}

impl ParseComponentError {
    /// The name that was not recognised.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Displays the comma-separated list of valid component names.
struct ValidNames;

impl fmt::Display for ValidNames {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, component) in Component::all().iter().enumerate() {
            if index > 0 {
                formatter.write_str(", ")?;
            }
            formatter.write_str(component.as_str())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_component_round_trips_through_its_name() {
        for &component in Component::all() {
            let name = component.as_str();
            assert_eq!(name.parse::<Component>(), Ok(component));
            assert_eq!(component.to_string(), name);
            assert!(
                name.bytes()
                    .all(|byte| byte.is_ascii_lowercase() || byte == b'-'),
                "{name} is not kebab-case"
            );
        }
    }

    #[test]
    fn all_lists_fifteen_distinct_components() {
        let mut names: Vec<&str> = Component::all().iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 15);
    }

    #[test]
    fn names_match_the_documented_spelling() {
        assert_eq!(Component::MessageRxApi.as_str(), "message-rx-api");
        assert_eq!(Component::OutboxRelay.as_str(), "outbox-relay");
        assert_eq!(Component::Router.as_str(), "router");
    }

    #[test]
    fn unknown_name_error_lists_the_valid_names() {
        let error = "routr".parse::<Component>().unwrap_err();
        assert_eq!(error.name(), "routr");
        let message = error.to_string();
        assert!(message.starts_with("unknown component \"routr\" (expected one of: "));
        for component in Component::all() {
            assert!(message.contains(component.as_str()), "{message}");
        }
    }

    #[test]
    fn names_are_case_sensitive() {
        assert!("Router".parse::<Component>().is_err());
        assert!("MessageApi".parse::<Component>().is_err());
    }

    #[test]
    fn parse_list_trims_and_skips_empty_entries() {
        assert_eq!(
            Component::parse_list(" message-api, router,,deliverer "),
            Ok(vec![
                Component::MessageApi,
                Component::Router,
                Component::Deliverer
            ])
        );
        assert_eq!(Component::parse_list(""), Ok(vec![]));
        assert_eq!(
            Component::parse_list("router,nope").unwrap_err().name(),
            "nope"
        );
    }

    #[test]
    fn api_and_worker_split() {
        let apis = Component::all().iter().filter(|c| c.is_api()).count();
        assert_eq!(apis, 6);
        assert!(!Component::OutboxRelay.is_api());
    }
}
