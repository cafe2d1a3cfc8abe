//! The Subscriptions API: the node's WebSub hub endpoint (REFERENCE-WIRE §2.3, W3C WebSub).
//!
//! `POST /api/v1/subscriptions` and the legacy `POST /subscriptions`, form-encoded:
//! `hub.mode` (subscribe|unsubscribe), `hub.topic`, `hub.callback`, optional
//! `hub.lease_seconds` and `hub.secret` (< 200 bytes); unknown parameters are ignored. A
//! valid request is answered **202** and its intent verified asynchronously (see
//! `igl_websub::VerifyIntent`); a malformed one gets 4xx with the reference error body,
//! checked in the reference's order: required keys → callback → topic → lease → mode.
//! Unsubscribing from a subscription that does not exist is 404, as in the reference.
//! `GET /api/v1/subscriptions` lists subscriptions with their delivery health (operators).

use std::collections::HashMap;

use axum::extract::{Query, RawForm, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use axum::{Json, Router};
use igl_websub::VerifyJob;
use igl_websub::policy::{check_callback, check_topic};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// Routes of the Subscriptions API.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/subscriptions", post(subscribe).get(list))
        .route("/subscriptions", post(subscribe))
}

const FORM: &str = "application/x-www-form-urlencoded";
const MAX_SECRET_BYTES: usize = 199;

/// Subscribe to, or unsubscribe from, a topic (form-encoded WebSub request).
#[utoipa::path(
    post,
    path = "/api/v1/subscriptions",
    tag = "subscriptions",
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "hub.mode, hub.topic, hub.callback, optional hub.lease_seconds and hub.secret"),
    responses(
        (status = 202, description = "Accepted; intent verification follows"),
        (status = 400, description = "Malformed request", body = crate::openapi::ErrorResponse),
        (status = 404, description = "Unsubscribe from an unknown subscription"),
        (status = 415, description = "Not form-encoded"),
    ),
    security(("bearer" = []))
)]
pub async fn subscribe(
    State(state): State<AppState>,
    _caller: Caller,
    headers: HeaderMap,
    RawForm(form): RawForm,
) -> Result<StatusCode, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .eq_ignore_ascii_case(FORM)
    {
        return Err(ApiError::unsupported_media_type(content_type, &[FORM]));
    }
    let params: HashMap<String, String> = url::form_urlencoded::parse(&form).into_owned().collect();
    let missing: Vec<&str> = ["hub.mode", "hub.callback", "hub.topic"]
        .into_iter()
        .filter(|key| params.get(*key).is_none_or(|value| value.is_empty()))
        .collect();
    if !missing.is_empty() {
        let listed = missing
            .iter()
            .map(|k| format!("'{k}'"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(
            ApiError::new(StatusCode::BAD_REQUEST, "missing-attributes-error")
                .with_detail(format!("Missing required attributes: [{listed}]."))
                .with_source(json!(missing)),
        );
    }
    let callback = &params["hub.callback"];
    let topic = &params["hub.topic"];
    let mode = &params["hub.mode"];
    check_callback(callback, state.hub_callbacks).map_err(|reason| {
        ApiError::new(StatusCode::BAD_REQUEST, "callback-url-validation-error")
            .with_detail("Invalid callback URL")
            .with_source(json!([reason]))
    })?;
    check_topic(topic).map_err(|reason| {
        ApiError::new(StatusCode::BAD_REQUEST, "topic-validation-error")
            .with_detail("Invalid topic")
            .with_source(json!([reason]))
    })?;
    let leases = state.hub_leases;
    let lease_seconds = match params.get("hub.lease_seconds").filter(|v| !v.is_empty()) {
        None => leases.default.as_secs(),
        Some(value) => match value.parse::<u64>() {
            Ok(seconds) if (leases.min.as_secs()..=leases.max.as_secs()).contains(&seconds) => {
                seconds
            }
            _ => {
                return Err(ApiError::new(StatusCode::BAD_REQUEST, "lease-seconds-validation-error")
                    .with_detail("Invalid hub.lease_seconds")
                    .with_source(json!([{"value": value, "min": leases.min.as_secs(), "max": leases.max.as_secs()}])));
            }
        },
    };
    if mode != "subscribe" && mode != "unsubscribe" {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "unknown-mode-error")
            .with_detail(format!("Unknown hub.mode {mode:?}"))
            .with_source(json!([{"value": mode, "expected": ["subscribe", "unsubscribe"]}])));
    }
    let secret = params.get("hub.secret").filter(|s| !s.is_empty()).cloned();
    if secret.as_ref().is_some_and(|s| s.len() > MAX_SECRET_BYTES) {
        return Err(ApiError::bad_request(
            "hub.secret must be shorter than 200 bytes",
        ));
    }
    if mode == "unsubscribe" {
        let key = igl_core::subscriptions::topic_key(topic);
        let exists = state
            .storage
            .matching_subscriptions(topic, igl_domain::Timestamp::now_utc())
            .await?
            .iter()
            .any(|s| s.callback == *callback && s.topic_key == key);
        if !exists {
            return Err(ApiError::not_found(
                "Subscription with given parameters not found",
            ));
        }
    }
    let job = VerifyJob {
        mode: mode.clone(),
        topic: topic.clone(),
        callback: callback.clone(),
        lease_seconds,
        secret,
    };
    state.storage.enqueue(&[job.into_new_job()]).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Query of the subscription listing.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Continue after this id.
    after: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<u32>,
}

/// A subscription with its delivery health (the secret is never shown).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SubscriptionBody {
    id: i64,
    topic: String,
    callback: String,
    has_secret: bool,
    expires_at: String,
    created_at: String,
    updated_at: String,
    last_success_at: Option<String>,
    last_failure_at: Option<String>,
    last_error: Option<String>,
}

/// Subscriptions, in id order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SubscriptionList {
    subscriptions: Vec<SubscriptionBody>,
    /// Pass as `after` for the next page; absent on the last page.
    next_after: Option<i64>,
}

fn rfc3339(timestamp: igl_domain::Timestamp) -> String {
    timestamp
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// List subscriptions with their delivery health (operators of the node's jurisdiction).
#[utoipa::path(
    get,
    path = "/api/v1/subscriptions",
    tag = "subscriptions",
    params(ListQuery),
    responses((status = 200, body = SubscriptionList), (status = 403, description = "Foreign caller")),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> Result<Json<SubscriptionList>, ApiError> {
    if caller.jurisdiction != state.jurisdiction {
        return Err(ApiError::forbidden(
            "only callers of this node's jurisdiction list subscriptions",
        ));
    }
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let page = state
        .storage
        .list_subscriptions(query.after.unwrap_or(0), limit)
        .await?;
    let next_after = (page.len() == limit as usize)
        .then(|| page.last().map(|s| s.id))
        .flatten();
    Ok(Json(SubscriptionList {
        subscriptions: page
            .into_iter()
            .map(|s| SubscriptionBody {
                id: s.id,
                topic: s.topic,
                callback: s.callback,
                has_secret: s.secret.is_some(),
                expires_at: rfc3339(s.expires_at),
                created_at: rfc3339(s.created_at),
                updated_at: rfc3339(s.updated_at),
                last_success_at: s.last_success_at.map(rfc3339),
                last_failure_at: s.last_failure_at.map(rfc3339),
                last_error: s.last_error,
            })
            .collect(),
        next_after,
    }))
}
