//! An in-process two-jurisdiction network: AU and SG nodes with every component, and a
//! shared-db channel endpoint pair on one medium, all on loopback ports chosen by the OS.
//! Embedded by default (SQLite files and document directories under one directory); with
//! [`NetworkOptions::postgres_url`] both nodes' databases and the channel medium are fresh
//! schemas of that PostgreSQL database, dropped by [`Network::stop`] (documents and the
//! endpoints' own bookkeeping stay in the directory). Used by `igl demo` and
//! `igl bench e2e`: the same composition as separate processes would run, only in one.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use igl_channels::endpoint::{EndpointConfig, RunningEndpoint};
use igl_config::{ChannelSettings, Component, JurisdictionSettings, SecretString, Settings};
use igl_core::Storage;
use igl_domain::Jurisdiction;
use tokio_util::sync::CancellationToken;

use crate::{NodeOptions, RunningNode};

/// One node of the network.
#[derive(Debug)]
pub struct NetworkNode {
    /// The running node.
    pub node: RunningNode,
    /// Its base URL.
    pub url: String,
    /// A bearer token of its own jurisdiction (development token).
    pub token: String,
}

/// How to start a [`Network`].
#[derive(Debug, Clone, Default)]
pub struct NetworkOptions {
    /// A PostgreSQL database for both nodes and the channel medium (fresh schemas);
    /// `None` = embedded SQLite.
    pub postgres_url: Option<String>,
}

/// AU + SG + their channel.
#[derive(Debug)]
pub struct Network {
    /// The AU node.
    pub au: NetworkNode,
    /// The SG node.
    pub sg: NetworkNode,
    endpoints: Vec<RunningEndpoint>,
    shutdown: CancellationToken,
    /// PostgreSQL schemas to drop at stop: (url, schema).
    schemas: Vec<(String, String)>,
}

fn bind() -> anyhow::Result<(std::net::TcpListener, String)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    Ok((listener, url))
}

async fn endpoint(
    jurisdiction: Jurisdiction,
    medium: &str,
    medium_schema: Option<&str>,
    directory: &Path,
    shutdown: &CancellationToken,
) -> anyhow::Result<RunningEndpoint> {
    let state: Arc<dyn Storage> = Arc::new(
        igl_store::SqliteStore::open(&directory.join(format!("endpoint-{jurisdiction}.db")))
            .await
            .context("cannot open the endpoint state")?,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let mut config = EndpointConfig::new(jurisdiction, medium, state, url);
    config.allow_loopback_callbacks = true;
    config.medium_schema = medium_schema.map(str::to_owned);
    igl_channels::endpoint::start(config, listener, shutdown.child_token())
        .await
        .context("cannot start the channel endpoint")
}

fn node_settings(
    jurisdiction: &str,
    directory: &Path,
    channel_url: &str,
    peer: &str,
    peer_url: &str,
    peer_token: &str,
    token_for_peer: &str,
) -> Settings {
    let mut settings = Settings::default();
    settings.node.jurisdiction = jurisdiction.into();
    settings.node.data_dir = directory.join(jurisdiction.to_lowercase());
    settings.components = Component::all().to_vec();
    settings.hub.allow_private_callbacks = true;
    settings.queue.poll_interval_ms = 100;
    settings.channels = vec![ChannelSettings {
        id: "au-sg".into(),
        name: Some("AU-SG shared database".into()),
        url: channel_url.into(),
        receivers: vec![peer.into()],
        forward_sender_ref: true,
        ..Default::default()
    }];
    settings.jurisdictions = BTreeMap::from([(
        peer.to_owned(),
        JurisdictionSettings {
            document_api_url: peer_url.into(),
            token: Some(SecretString::new(peer_token)),
            legacy_document_api: false,
        },
    )]);
    settings
        .auth
        .static_tokens
        .push(igl_config::StaticTokenSettings {
            token: SecretString::new(token_for_peer),
            party: format!("{peer}-document-spider"),
            jurisdiction: peer.into(),
        });
    settings
}

impl Network {
    /// Starts the embedded network with its state under `directory`.
    pub async fn start(directory: &Path) -> anyhow::Result<Self> {
        Self::start_with(directory, NetworkOptions::default()).await
    }

    /// Starts the network with its local state under `directory`.
    pub async fn start_with(directory: &Path, options: NetworkOptions) -> anyhow::Result<Self> {
        let shutdown = CancellationToken::new();
        let run = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let mut schemas = Vec::new();
        let (medium, medium_schema) = match &options.postgres_url {
            Some(url) => {
                let schema = format!("igl_net_{run}_channel");
                schemas.push((url.clone(), schema.clone()));
                (url.clone(), Some(schema))
            }
            None => (
                format!("sqlite://{}", directory.join("channel.db").display()),
                None,
            ),
        };
        let au_code = Jurisdiction::parse("AU")?;
        let sg_code = Jurisdiction::parse("SG")?;
        let au_endpoint = endpoint(
            au_code,
            &medium,
            medium_schema.as_deref(),
            directory,
            &shutdown,
        )
        .await?;
        let sg_endpoint = endpoint(
            sg_code,
            &medium,
            medium_schema.as_deref(),
            directory,
            &shutdown,
        )
        .await?;
        let (au_listener, au_url) = bind()?;
        let (sg_listener, sg_url) = bind()?;
        let au_reads_sg = format!("igl-dev-au-reads-sg-{}", uuid::Uuid::new_v4().simple());
        let sg_reads_au = format!("igl-dev-sg-reads-au-{}", uuid::Uuid::new_v4().simple());
        let au_settings = node_settings(
            "AU",
            directory,
            &au_endpoint.url(),
            "SG",
            &sg_url,
            &au_reads_sg,
            &sg_reads_au,
        );
        let sg_settings = node_settings(
            "SG",
            directory,
            &sg_endpoint.url(),
            "AU",
            &au_url,
            &sg_reads_au,
            &au_reads_sg,
        );
        let mut au_settings = au_settings;
        let mut sg_settings = sg_settings;
        if let Some(url) = &options.postgres_url {
            for (settings, code) in [(&mut au_settings, "au"), (&mut sg_settings, "sg")] {
                let schema = format!("igl_net_{run}_{code}");
                settings.database.url = Some(SecretString::new(url));
                settings.database.schema = Some(schema.clone());
                settings.database.max_connections = 16;
                schemas.push((url.clone(), schema));
            }
        }
        let au_token = igl_api::auth::generate_dev_token();
        let sg_token = igl_api::auth::generate_dev_token();
        let au = crate::start(
            NodeOptions {
                settings: au_settings,
                dev_token: Some(au_token.clone()),
                listener: Some(au_listener),
            },
            shutdown.child_token(),
        )
        .await
        .context("cannot start the AU node")?;
        let sg = crate::start(
            NodeOptions {
                settings: sg_settings,
                dev_token: Some(sg_token.clone()),
                listener: Some(sg_listener),
            },
            shutdown.child_token(),
        )
        .await
        .context("cannot start the SG node")?;
        Ok(Self {
            au: NetworkNode {
                node: au,
                url: au_url,
                token: au_token,
            },
            sg: NetworkNode {
                node: sg,
                url: sg_url,
                token: sg_token,
            },
            endpoints: vec![au_endpoint, sg_endpoint],
            shutdown,
            schemas,
        })
    }

    /// The database backend of the nodes and the medium: `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        if self.schemas.is_empty() {
            "sqlite"
        } else {
            "postgres"
        }
    }

    /// Stops every node and endpoint, then drops the PostgreSQL schemas it created.
    pub async fn stop(self) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        self.shutdown.cancel();
        self.au.node.wait().await?;
        self.sg.node.wait().await?;
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "network nodes stopped"
        );
        for endpoint in self.endpoints {
            endpoint
                .stop()
                .await
                .context("channel endpoint stopped badly")?;
        }
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "network endpoints stopped"
        );
        for (url, schema) in self.schemas {
            igl_store::PostgresStore::drop_schema(&url, &schema)
                .await
                .with_context(|| format!("cannot drop the schema {schema}"))?;
        }
        Ok(())
    }
}
