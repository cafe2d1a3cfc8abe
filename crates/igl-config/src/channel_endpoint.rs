//! `[channel_endpoint]`: our shared-db channel endpoint run as its own process by
//! `igl channel` (ARCHITECTURE §7). A node process ignores this section.
//!
//! ```toml
//! [channel_endpoint]
//! # jurisdiction = "AU"                      # default node.jurisdiction
//! # medium_url = "postgres://channel:secret@db.example.org/au_sg_channel"
//! #                                          # default sqlite://{node.data_dir}/channel-medium.db
//! # medium_schema = "au_sg"                  # PostgreSQL only
//! # state_url = "sqlite:///var/lib/igl/channel-au.db"
//! #                                          # default sqlite://{node.data_dir}/channel-{jur}.db
//! # state_schema = "channel_au"              # PostgreSQL only
//! listen = "127.0.0.1:8180"
//! # public_url = "https://channel-au.example.org"   # default http://{bound address}
//! allow_loopback_callbacks = false           # igl channel --dev: true
//! peers = []                                 # receivers this channel reaches (empty: any)
//! max_connections = 8
//! ```

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;

use serde::Deserialize;

use crate::error::ConfigProblem;
use crate::secret::{SecretString, redact_url};

/// `[channel_endpoint]` settings.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelEndpointSettings {
    /// The jurisdiction the endpoint serves: it posts messages whose sender is this
    /// jurisdiction and announces those whose receiver it is. Default `node.jurisdiction`.
    pub jurisdiction: Option<String>,
    /// The medium both endpoints of the channel share (`postgres://…` in production, a
    /// SQLite file for the embedded demo). May hold a password. Default
    /// `sqlite://{node.data_dir}/channel-medium.db`.
    pub medium_url: Option<SecretString>,
    /// PostgreSQL schema of the medium (created if missing). Default none (`public`).
    pub medium_schema: Option<String>,
    /// The endpoint's own state: its delivery queue, subscriptions (with their secrets) and
    /// observer cursors. May hold a password. Default
    /// `sqlite://{node.data_dir}/channel-{jurisdiction}.db`.
    pub state_url: Option<SecretString>,
    /// PostgreSQL schema of the state database. Default none.
    pub state_schema: Option<String>,
    /// Where the Channel API listens. Default `127.0.0.1:8180`.
    pub listen: SocketAddr,
    /// The base URL under which the Channel API is reachable, advertised in `Link`
    /// headers. Default `http://{bound address}`.
    pub public_url: Option<String>,
    /// Accept subscription callbacks on loopback and private addresses (the SSRF guard
    /// off). Default false; `igl channel --dev` turns it on.
    pub allow_loopback_callbacks: bool,
    /// The jurisdictions this channel reaches; posts to others are refused. Default empty:
    /// any receiver but the endpoint's own jurisdiction.
    pub peers: Vec<String>,
    /// Connections per database pool. Default 8.
    pub max_connections: u32,
}

impl Default for ChannelEndpointSettings {
    fn default() -> Self {
        Self {
            jurisdiction: None,
            medium_url: None,
            medium_schema: None,
            state_url: None,
            state_schema: None,
            listen: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8180)),
            public_url: None,
            allow_loopback_callbacks: false,
            peers: Vec::new(),
            max_connections: 8,
        }
    }
}

impl ChannelEndpointSettings {
    /// The jurisdiction served, with the default `node_jurisdiction` applied.
    pub fn jurisdiction_or<'a>(&'a self, node_jurisdiction: &'a str) -> &'a str {
        self.jurisdiction.as_deref().unwrap_or(node_jurisdiction)
    }

    /// The medium URL with its default applied. May hold a password: log
    /// [`redact_url`] of it instead.
    pub fn medium_url_or_default(&self, data_dir: &Path) -> String {
        match &self.medium_url {
            Some(url) => url.expose_secret().to_owned(),
            None => format!("sqlite://{}", data_dir.join("channel-medium.db").display()),
        }
    }

    /// The state database URL with its default applied (per jurisdiction, so that two
    /// endpoints sharing a data directory keep separate state). May hold a password.
    pub fn state_url_or_default(&self, data_dir: &Path, jurisdiction: &str) -> String {
        match &self.state_url {
            Some(url) => url.expose_secret().to_owned(),
            None => format!(
                "sqlite://{}",
                data_dir
                    .join(format!("channel-{}.db", jurisdiction.to_ascii_lowercase()))
                    .display()
            ),
        }
    }

    /// A one-line redacted description, for summaries and logs.
    pub fn summary(&self, data_dir: &Path, node_jurisdiction: &str) -> String {
        let jurisdiction = self.jurisdiction_or(node_jurisdiction);
        let peers = if self.peers.is_empty() {
            "any".to_owned()
        } else {
            self.peers.join(",")
        };
        format!(
            "{jurisdiction} on {} (medium {}, state {}, peers {peers})",
            self.listen,
            redact_url(&self.medium_url_or_default(data_dir)),
            redact_url(&self.state_url_or_default(data_dir, jurisdiction)),
        )
    }

    pub(crate) fn problems(
        &self,
        check_url: impl Fn(&str) -> Option<String>,
        check_schema: impl Fn(&str) -> Option<String>,
    ) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let is_code = |code: &str| code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase());
        if let Some(jurisdiction) = &self.jurisdiction
            && !is_code(jurisdiction)
        {
            problems.push(ConfigProblem::new(
                "channel_endpoint.jurisdiction",
                format!("{jurisdiction:?} is not an upper-case ISO 3166-1 alpha-2 code"),
            ));
        }
        for (key, url, schema_key, schema) in [
            (
                "channel_endpoint.medium_url",
                &self.medium_url,
                "channel_endpoint.medium_schema",
                &self.medium_schema,
            ),
            (
                "channel_endpoint.state_url",
                &self.state_url,
                "channel_endpoint.state_schema",
                &self.state_schema,
            ),
        ] {
            if let Some(message) = url.as_ref().and_then(|url| check_url(url.expose_secret())) {
                problems.push(ConfigProblem::new(key, message));
            }
            if let Some(schema) = schema {
                if let Some(message) = check_schema(schema) {
                    problems.push(ConfigProblem::new(schema_key, message));
                }
                let postgres = url.as_ref().is_some_and(|url| {
                    let url = url.expose_secret();
                    url.starts_with("postgres:") || url.starts_with("postgresql:")
                });
                if !postgres {
                    problems.push(ConfigProblem::new(
                        schema_key,
                        "is only supported with a postgres URL",
                    ));
                }
            }
        }
        if let Some(public_url) = &self.public_url {
            let valid = url::Url::parse(public_url).is_ok_and(|url| {
                matches!(url.scheme(), "http" | "https") && url.host_str().is_some()
            });
            if !valid {
                problems.push(ConfigProblem::new(
                    "channel_endpoint.public_url",
                    format!("{public_url:?} is not an http: or https: URL with a host"),
                ));
            }
        }
        for peer in &self.peers {
            if !is_code(peer) {
                problems.push(ConfigProblem::new(
                    "channel_endpoint.peers",
                    format!("{peer:?} is not an upper-case ISO 3166-1 alpha-2 code"),
                ));
            }
        }
        if !(1..=256).contains(&self.max_connections) {
            problems.push(ConfigProblem::new(
                "channel_endpoint.max_connections",
                format!(
                    "{} is out of range (expected 1..=256)",
                    self.max_connections
                ),
            ));
        }
        problems
    }
}
