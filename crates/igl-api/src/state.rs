//! The state shared by every handler.

use std::sync::Arc;

use igl_core::ingest::MessageIngest;
use igl_core::{ObjectStore, Storage};
use igl_domain::Jurisdiction;

use crate::auth::Authenticator;

/// Everything handlers need, behind one `Arc` (cheap to clone per request).
pub type AppState = Arc<AppContext>;

/// The ports and settings of the APIs.
#[derive(Debug)]
pub struct AppContext {
    /// The jurisdiction this node acts for.
    pub jurisdiction: Jurisdiction,
    /// Messages, jobs, events, ACL.
    pub storage: Arc<dyn Storage>,
    /// Document bytes.
    pub objects: Arc<dyn ObjectStore>,
    /// Group-commit ingestion of new messages.
    pub ingest: MessageIngest,
    /// Caller authentication.
    pub auth: Authenticator,
    /// Lease limits of hub subscriptions.
    pub hub_leases: igl_websub::policy::LeasePolicy,
    /// Which callback URLs hub subscriptions may use.
    pub hub_callbacks: igl_websub::policy::CallbackPolicy,
    /// Ids of the configured channels (the Message Reception API accepts only these).
    pub channel_ids: Vec<String>,
    /// Largest document accepted, in bytes.
    pub max_document_bytes: u64,
    /// Serve documents to callers identified by the reference's unsigned `JWTBODY` header
    /// or `?as_jurisdiction=` (insecure; compatibility only).
    pub insecure_legacy_document_auth: bool,
    /// The process's Prometheus recorder, rendered by `GET /metrics`; `None` when no
    /// recorder is installed (then `/metrics` answers 503). One recorder serves every node
    /// of a process (see `igl_node`'s `install_metrics_recorder`).
    pub metrics: Option<crate::admin::PrometheusHandle>,
}
