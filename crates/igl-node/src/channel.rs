//! `igl channel`: our shared-db channel endpoint as its own process (ARCHITECTURE §7).
//!
//! [`start_channel`] turns the `[channel_endpoint]` settings into a running
//! [`igl_channels::endpoint::ChannelEndpoint`]: it opens the endpoint's state database (the
//! delivery queue, subscriptions and observer cursors) and the shared medium, serves the
//! Channel API plus `GET /healthz` and `GET /metrics` on one listener, and runs the observer
//! and the delivery worker until shutdown.
//!
//! `/metrics` is the Prometheus exposition of this process, including
//! `igl_queue_depth{queue="channel-deliver.<jur>",state}` (callbacks waiting to be delivered,
//! scheduled for a retry, in flight or dead-lettered), read at every scrape.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use igl_channels::endpoint::{ChannelEndpoint, EndpointConfig};
use igl_config::{Settings, redact_url};
use igl_core::{QueueName, Storage};
use igl_domain::Jurisdiction;
use igl_store::{DatabaseOptions, open_storage};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// The endpoint's settings resolved against their defaults.
#[derive(Debug, Clone)]
pub struct ChannelPlan {
    /// The jurisdiction served.
    pub jurisdiction: Jurisdiction,
    /// The medium URL (may hold a password).
    pub medium_url: String,
    /// The state database URL (may hold a password).
    pub state_url: String,
    /// The receivers the channel reaches (empty: any).
    pub peers: Vec<Jurisdiction>,
}

impl ChannelPlan {
    /// Resolves `settings.channel_endpoint` (defaults from `[node]`).
    ///
    /// # Errors
    ///
    /// A jurisdiction or peer that is not an ISO 3166-1 code.
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let endpoint = &settings.channel_endpoint;
        let code = endpoint.jurisdiction_or(&settings.node.jurisdiction);
        let jurisdiction = Jurisdiction::parse(code)
            .with_context(|| format!("channel_endpoint.jurisdiction {code:?}"))?;
        let peers = endpoint
            .peers
            .iter()
            .map(|peer| {
                Jurisdiction::parse(peer)
                    .with_context(|| format!("channel_endpoint.peers: {peer:?}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            jurisdiction,
            medium_url: endpoint.medium_url_or_default(&settings.node.data_dir),
            state_url: endpoint.state_url_or_default(&settings.node.data_dir, code),
            peers,
        })
    }
}

/// A serving channel endpoint process.
#[derive(Debug)]
pub struct RunningChannel {
    /// Where the Channel API listens.
    pub addr: SocketAddr,
    /// The base URL advertised in `Link` headers.
    pub public_url: String,
    /// The jurisdiction served.
    pub jurisdiction: Jurisdiction,
    shutdown: CancellationToken,
    tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
}

impl RunningChannel {
    /// Runs until shutdown is requested or a task fails, then stops the HTTP server
    /// (finishing current requests) and the background tasks (the delivery worker finishes
    /// its batch). A task failure is returned.
    ///
    /// # Errors
    ///
    /// The first task failure.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut failure = None;
        tokio::select! {
            () = self.shutdown.cancelled() => {}
            Some(joined) = self.tasks.join_next() => {
                if let Err(error) = flatten(joined) {
                    failure = Some(error);
                }
            }
        }
        self.shutdown.cancel();
        while let Some(joined) = self.tasks.join_next().await {
            if let Err(error) = flatten(joined) {
                failure.get_or_insert(error);
            }
        }
        info!(jurisdiction = %self.jurisdiction, "channel endpoint stopped");
        failure.map_or(Ok(()), Err)
    }
}

fn flatten(
    joined: Result<(&'static str, anyhow::Result<()>), tokio::task::JoinError>,
) -> anyhow::Result<()> {
    let (name, result) = joined.context("channel endpoint task panicked")?;
    result.with_context(|| format!("{name} stopped"))
}

/// Opens the endpoint of `settings.channel_endpoint` and serves it on `listener` (or on
/// `channel_endpoint.listen`) until `shutdown` is cancelled.
///
/// # Errors
///
/// Invalid settings, a database that cannot be opened or migrated, an address that
/// cannot be bound.
pub async fn start_channel(
    settings: &Settings,
    listener: Option<std::net::TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningChannel> {
    let metrics = crate::node::install_metrics_recorder();
    let endpoint_settings = &settings.channel_endpoint;
    let plan = ChannelPlan::from_settings(settings)?;
    let state = open_storage(&DatabaseOptions {
        url: plan.state_url.clone(),
        max_connections: endpoint_settings.max_connections,
        schema: endpoint_settings.state_schema.clone(),
        connect_timeout: settings.database.connect_timeout(),
    })
    .await
    .with_context(|| {
        format!(
            "cannot open the channel endpoint state {}",
            redact_url(&plan.state_url)
        )
    })?;
    let listener = match listener {
        Some(listener) => {
            listener.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(listener)?
        }
        None => tokio::net::TcpListener::bind(endpoint_settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", endpoint_settings.listen))?,
    };
    let addr = listener.local_addr()?;
    let public_url = endpoint_settings
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"))
        .trim_end_matches('/')
        .to_owned();

    let mut config = EndpointConfig::new(
        plan.jurisdiction,
        plan.medium_url.clone(),
        state.clone(),
        public_url.clone(),
    );
    config.medium_schema = endpoint_settings.medium_schema.clone();
    // Subscriptions hold callback secrets: keep them in this endpoint's own database, not
    // in the medium the other jurisdiction reads.
    config.local_url = Some(plan.state_url.clone());
    config.local_schema = endpoint_settings.state_schema.clone();
    config.allow_loopback_callbacks = endpoint_settings.allow_loopback_callbacks;
    config.peers = plan.peers.clone();
    config.max_connections = endpoint_settings.max_connections;
    config.connect_timeout = settings.database.connect_timeout();
    let delivery_queue = config.delivery.queue.clone();
    let endpoint = ChannelEndpoint::open(config).await.with_context(|| {
        format!(
            "cannot open the channel endpoint on the medium {}",
            redact_url(&plan.medium_url)
        )
    })?;

    let app = endpoint.router().route(
        "/metrics",
        axum::routing::get(move || {
            metrics_text(metrics.clone(), state.clone(), delivery_queue.clone())
        }),
    );
    let mut tasks = JoinSet::new();
    let http_shutdown = shutdown.clone();
    tasks.spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(http_shutdown.cancelled_owned())
            .await
            .context("http server failed");
        ("channel-api", result)
    });
    let background = endpoint.run_background(shutdown.clone());
    tasks.spawn(async move {
        (
            "channel-background",
            background.await.map_err(anyhow::Error::from),
        )
    });
    info!(
        jurisdiction = %plan.jurisdiction,
        %addr,
        public_url = %public_url,
        medium = %redact_url(&plan.medium_url),
        state = %redact_url(&plan.state_url),
        "channel endpoint serving"
    );
    Ok(RunningChannel {
        addr,
        public_url,
        jurisdiction: plan.jurisdiction,
        shutdown,
        tasks,
    })
}

/// `GET /metrics`: refreshes the depth gauges of the delivery queue, then renders every
/// series of the process.
async fn metrics_text(
    handle: Option<igl_api::admin::PrometheusHandle>,
    state: Arc<dyn Storage>,
    queue: QueueName,
) -> axum::response::Response {
    let Some(handle) = handle else {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "no metrics recorder is installed in this process",
        )
            .into_response();
    };
    match tokio::time::timeout(Duration::from_secs(2), state.depth(&queue)).await {
        Ok(Ok(depth)) => {
            for (name, value) in [
                ("ready", depth.ready),
                ("scheduled", depth.scheduled),
                ("in_flight", depth.in_flight),
                ("dead", depth.dead),
            ] {
                metrics::gauge!(igl_api::admin::QUEUE_DEPTH, "queue" => queue.to_string(), "state" => name)
                    .set(value as f64);
            }
        }
        Ok(Err(error)) => tracing::warn!(%queue, error = %error, "cannot read queue depth"),
        Err(_) => tracing::warn!(%queue, "queue depth read timed out"),
    }
    let mut response = handle.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(igl_api::admin::PROMETHEUS_CONTENT_TYPE),
    );
    response
}
