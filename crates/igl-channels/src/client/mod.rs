//! The Channel API client: how a node talks to any channel endpoint (REFERENCE-WIRE §5.1),
//! tolerant of the reference dialects (§5.5).
//!
//! - The port — [`ChannelClient`], its values and errors, the routing table ([`routing`])
//!   and [`Channels`] — lives in `igl_core::channel` (the router and poller workers use it
//!   without depending on this crate) and is re-exported here.
//! - [`HttpChannelClient`] implements it over HTTP, with a timeout on every call and a
//!   [`CircuitBreaker`] per channel (gauge `igl_channel_circuit_open{channel}`).
//! - [`build_channels`] turns the `[[channels]]` settings into [`Channels`]: the routing
//!   table plus one HTTP client per channel.

mod breaker;
mod http;
mod settings;

pub use breaker::{CIRCUIT_OPEN_GAUGE, CallPermit, CircuitBreaker, CircuitBreakerConfig};
pub use http::{
    HttpChannelClient, HttpClientConfig, HttpClientError, IDEMPOTENCY_KEY_HEADER,
    MAX_RESPONSE_BYTES,
};
pub use igl_core::channel::{
    ChannelClient, ChannelError, ChannelMessage, ChannelPage, ChannelReceipt, Channels,
    CircuitState, ListQuery, ListedMessage, MissingClient, RemoteStatus, routing,
};
pub use settings::{ChannelSetupError, build_channels, routing_table};
