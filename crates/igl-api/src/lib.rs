//! HTTP APIs of the IGL node: one module per API, each exporting a router; [`app`] merges
//! the enabled ones and [`serve`] runs them on a listener until shutdown.

// `ApiError` (the reference error body) is returned only on the cold path of handlers;
// boxing it would buy nothing measurable.
#![allow(clippy::result_large_err)]

pub mod admin;
pub mod auth;
pub mod documents;
pub mod error;
mod json;
pub mod messages;
pub mod openapi;
pub mod reception;
pub mod state;
pub mod subscriptions;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;
pub use state::{AppContext, AppState};

/// Which APIs a router serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EnabledApis {
    /// Message API (`/api/v1/messages`, legacy `/message`).
    pub messages: bool,
    /// Document API.
    pub documents: bool,
    /// Admin API (health, metrics, dead letters).
    pub admin: bool,
    /// Message Reception API (channel-facing `/channel-message/{channel_id}`).
    pub reception: bool,
    /// Subscriptions API (the WebSub hub).
    pub subscriptions: bool,
}

impl EnabledApis {
    /// Every API.
    pub fn all() -> Self {
        Self {
            messages: true,
            documents: true,
            admin: true,
            reception: true,
            subscriptions: true,
        }
    }
}

/// The router of the enabled APIs, with the common middleware.
///
/// Every router with at least one API also serves the OpenAPI document
/// (`/api/v1/openapi.json`) and its Swagger UI (`/api/docs`), unauthenticated. Every
/// request is counted and timed by matched route ([`admin::track_requests`]).
pub fn app(state: AppState, enabled: EnabledApis) -> Router {
    let mut router = Router::new();
    if enabled.messages {
        router = router.merge(messages::router());
    }
    if enabled.documents {
        router = router.merge(documents::router());
    }
    if enabled.admin {
        router = router.merge(admin::router());
    }
    if enabled.reception {
        router = router.merge(reception::router());
    }
    if enabled.subscriptions {
        router = router.merge(subscriptions::router());
    }
    if enabled != EnabledApis::default() {
        router = router.merge(openapi::router());
    }
    admin::describe_metrics();
    router
        .fallback(|| async { ApiError::generic(axum::http::StatusCode::NOT_FOUND) })
        // Last, so that it wraps every route above (and the fallback) and sees MatchedPath.
        .layer(axum::middleware::from_fn(admin::track_requests))
        .with_state(state)
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then finishes in-flight
/// requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
