//! HTTP APIs of the IGL node: one module per API, each exporting a router; [`app`] merges
//! the enabled ones and [`serve`] runs them on a listener until shutdown.

pub mod auth;
pub mod error;
mod json;
pub mod messages;
pub mod state;

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
}

impl EnabledApis {
    /// Every API.
    pub fn all() -> Self {
        Self {
            messages: true,
            documents: true,
            admin: true,
        }
    }
}

/// The router of the enabled APIs, with the common middleware.
pub fn app(state: AppState, enabled: EnabledApis) -> Router {
    let mut router = Router::new();
    if enabled.messages {
        router = router.merge(messages::router());
    }
    router
        .fallback(|| async { ApiError::generic(axum::http::StatusCode::NOT_FOUND) })
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
