//! `[hub]`: the node's WebSub hub (Subscriptions API, fan-out, delivery).
//!
//! ```toml
//! [hub]
//! public_url = "https://igl.example.org"   # advertised in Link rel="hub"; default http://{http.bind}
//! default_lease_secs = 864000              # 10 days
//! min_lease_secs = 3600
//! max_lease_secs = 31536000
//! allow_private_callbacks = false          # loopback/private callback addresses (igl node --dev: true)
//! timeout_secs = 10                        # per verification or delivery request
//! fanout_budget_ms = 1000                  # first attempt within a fan-out; slower ones retry alone
//! max_subscriptions = 100000               # new subscriptions beyond it are denied (hub.mode=denied)
//! ```

use serde::Deserialize;

use crate::error::ConfigProblem;

/// `[hub]` settings.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubSettings {
    /// Base URL under which subscribers reach this node; the hub URL advertised in
    /// deliveries is `{public_url}/api/v1/subscriptions`. Default `http://{http.bind}`.
    pub public_url: Option<String>,
    /// Lease granted when a subscriber asks for none, in seconds. Default 10 days.
    pub default_lease_secs: u64,
    /// Shortest lease accepted. Default 3600.
    pub min_lease_secs: u64,
    /// Longest lease accepted. Default 31536000 (a year).
    pub max_lease_secs: u64,
    /// Accept callbacks on loopback/private addresses (SSRF guard off). Default false.
    pub allow_private_callbacks: bool,
    /// Timeout of each verification or delivery request, in seconds. Default 10.
    pub timeout_secs: u64,
    /// How long the first attempt of a delivery, made together with every other
    /// subscription of the event, may take before it is dropped and retried on its own (the
    /// subscription is then served apart until it answers within this again), in
    /// milliseconds. Default 1000; at most `timeout_secs`.
    pub fanout_budget_ms: u64,
    /// Most subscriptions the hub holds; a new subscription beyond it is denied
    /// (`hub.mode=denied`). Default 100000.
    pub max_subscriptions: u64,
}

impl Default for HubSettings {
    fn default() -> Self {
        Self {
            public_url: None,
            default_lease_secs: 10 * 24 * 3600,
            min_lease_secs: 3600,
            max_lease_secs: 365 * 24 * 3600,
            allow_private_callbacks: false,
            timeout_secs: 10,
            fanout_budget_ms: 1000,
            max_subscriptions: 100_000,
        }
    }
}

impl HubSettings {
    pub(crate) fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        if self.min_lease_secs == 0 || self.min_lease_secs > self.max_lease_secs {
            problems.push(ConfigProblem::new(
                "hub.min_lease_secs",
                "must be at least 1 and at most hub.max_lease_secs",
            ));
        }
        if !(self.min_lease_secs..=self.max_lease_secs).contains(&self.default_lease_secs) {
            problems.push(ConfigProblem::new(
                "hub.default_lease_secs",
                "must be between hub.min_lease_secs and hub.max_lease_secs",
            ));
        }
        if self.fanout_budget_ms == 0
            || self.fanout_budget_ms > self.timeout_secs.saturating_mul(1000)
        {
            problems.push(ConfigProblem::new(
                "hub.fanout_budget_ms",
                "must be at least 1 and at most hub.timeout_secs * 1000",
            ));
        }
        if !(1..=300).contains(&self.timeout_secs) {
            problems.push(ConfigProblem::new(
                "hub.timeout_secs",
                "must be between 1 and 300",
            ));
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            problems.push(ConfigProblem::new(
                "hub.public_url",
                format!("{url:?} is not an http(s) URL"),
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_limits_are_checked() {
        assert!(HubSettings::default().problems().is_empty());
        let bad = HubSettings {
            min_lease_secs: 10,
            max_lease_secs: 5,
            ..HubSettings::default()
        };
        let keys: Vec<_> = bad
            .problems()
            .iter()
            .map(|p| p.key.clone().unwrap_or_default())
            .collect();
        assert!(keys.contains(&"hub.min_lease_secs".to_owned()), "{keys:?}");
        assert!(
            keys.contains(&"hub.default_lease_secs".to_owned()),
            "{keys:?}"
        );
    }
}
