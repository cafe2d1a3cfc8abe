//! The Message Reception API: where channels tell this node about messages for it
//! (REFERENCE-WIRE §2.4).
//!
//! - `GET /channel-message/{channel_id}` answers a channel hub's WebSub intent
//!   verification: for a configured channel, `hub.mode` subscribe/unsubscribe and a
//!   `hub.topic` naming this node's jurisdiction (`jurisdiction.AU` or `AU`), the body is
//!   `hub.challenge`; an unknown channel or a topic for another jurisdiction is 404 (a
//!   WebSub subscriber refuses a verification it did not ask for that way).
//! - `POST /channel-message/{channel_id}` with `{"id": <channel message id>}` (integer or
//!   string) queues the retrieval of that message and answers 200 with an empty body, as
//!   the reference did. An unknown channel is 404, a body without `id` 400.
//!
//! These endpoints are called by channel endpoints, which carry no bearer token in the
//! reference protocol, so they are unauthenticated. They cannot inject data: the retriever
//! fetches the announced message from the configured channel URL and validates it like a
//! B2G message; a forged notification only triggers a lookup on a trusted channel.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use igl_core::pipeline::PipelineJob;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::json::JsonBody;
use crate::state::AppState;

/// Routes of the Message Reception API.
pub fn router() -> Router<AppState> {
    Router::new().route(
        "/channel-message/{channel_id}",
        get(verify_intent).post(notify),
    )
}

fn unknown_channel(channel_id: &str) -> ApiError {
    ApiError::not_found(format!("no channel with id {channel_id:?} is configured"))
        .with_source(json!([{"channel_id": channel_id}]))
}

fn known(state: &AppState, channel_id: &str) -> bool {
    state.channel_ids.iter().any(|id| id == channel_id)
}

/// WebSub intent verification by a channel's hub.
#[utoipa::path(
    get,
    path = "/channel-message/{channel_id}",
    tag = "reception",
    params(
        ("channel_id" = String, Path, description = "Configured channel id"),
        ("hub.mode" = String, Query, description = "subscribe or unsubscribe"),
        ("hub.topic" = String, Query, description = "jurisdiction.<own code> or <own code>"),
        ("hub.challenge" = String, Query, description = "Echoed back on success"),
    ),
    responses(
        (status = 200, description = "The challenge, as text/plain", body = String),
        (status = 400, description = "Missing or invalid hub parameters"),
        (status = 404, description = "Unknown channel, or a topic for another jurisdiction"),
    )
)]
pub async fn verify_intent(
    State(state): State<AppState>,
    Path(channel_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    if !known(&state, &channel_id) {
        return Err(unknown_channel(&channel_id));
    }
    let mode = query.get("hub.mode").map(String::as_str);
    if !matches!(mode, Some("subscribe" | "unsubscribe")) {
        return Err(ApiError::bad_request(
            "hub.mode must be subscribe or unsubscribe",
        ));
    }
    let Some(challenge) = query.get("hub.challenge").filter(|c| !c.is_empty()) else {
        return Err(ApiError::bad_request("hub.challenge is required"));
    };
    let topic = query
        .get("hub.topic")
        .map(String::as_str)
        .unwrap_or_default();
    let own = state.jurisdiction.as_str();
    let topic_code = topic.strip_prefix("jurisdiction.").unwrap_or(topic);
    if !topic_code.eq_ignore_ascii_case(own) {
        return Err(ApiError::not_found(format!(
            "this node did not subscribe to {topic:?}; it receives messages for {own}"
        )));
    }
    tracing::info!(%channel_id, mode = mode.unwrap_or_default(), topic, "channel subscription verified");
    Ok(([(header::CONTENT_TYPE, "text/plain")], challenge.clone()).into_response())
}

/// A channel announces a message for this node.
#[utoipa::path(
    post,
    path = "/channel-message/{channel_id}",
    tag = "reception",
    params(("channel_id" = String, Path, description = "Configured channel id")),
    request_body(content = Object, description = "{\"id\": <channel message id>}"),
    responses(
        (status = 200, description = "The retrieval is queued (empty body)"),
        (status = 400, description = "No usable id in the body"),
        (status = 404, description = "Unknown channel"),
        (status = 415, description = "Not JSON"),
    )
)]
pub async fn notify(
    State(state): State<AppState>,
    Path(channel_id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<StatusCode, ApiError> {
    if !known(&state, &channel_id) {
        return Err(unknown_channel(&channel_id));
    }
    let message_id = match body.get("id") {
        Some(Value::String(id)) if !id.is_empty() && id.len() <= 256 => id.clone(),
        Some(Value::Number(id)) => id.to_string(),
        _ => {
            return Err(
                ApiError::bad_request("the body must be {\"id\": <channel message id>}")
                    .with_source(json!([{"body": body}])),
            );
        }
    };
    let job = PipelineJob::ChannelMessageV1 {
        channel_id: channel_id.clone(),
        message_id,
    }
    .into_new_job();
    state.storage.enqueue(&[job]).await?;
    metrics::counter!("igl_channel_notifications_total", "channel" => channel_id).increment(1);
    Ok(StatusCode::OK)
}
