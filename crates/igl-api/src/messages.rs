//! The Message API: post, read, update and list messages.
//!
//! | path | success | notes |
//! |---|---|---|
//! | `POST /api/v1/messages` | 201 + `Location` (new), 200 (same content again) | 409 different content |
//! | `GET /api/v1/messages/{ref}` | 200 | |
//! | `PATCH /api/v1/messages/{ref}` | 200 | 409 on a final status |
//! | `GET /api/v1/messages` | 200 | filters + cursor pagination |
//! | `POST /message` (legacy) | 201, also for a repeat with the same content | as the reference |
//! | `GET /message/{ref}` (legacy) | **201**, as the reference | |
//! | `PATCH /message/{ref}` (legacy) | 200 | |

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use igl_core::ingest::IngestError;
use igl_core::pipeline::status_event;
use igl_core::{Cursor, InsertOutcome, MessageFilter, StoreError};
use igl_domain::{
    ChannelStatus, Jurisdiction, Message, MessageFields, MessageRef, MessageStatus, MessageUpdate,
    NewMessage, Rule, Timestamp, TransitionError, UpdateError,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::json::JsonBody;
use crate::state::AppState;

/// Routes of the Message API, current and legacy.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/messages", post(post_message).get(list_messages))
        .route(
            "/api/v1/messages/{reference}",
            get(get_message).patch(patch_message),
        )
        .route("/message", post(post_message_legacy))
        .route(
            "/message/{reference}",
            get(get_message_legacy).patch(patch_message),
        )
}

/// A message as the API returns it: the reference's fields, then additive ones.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MessageBody {
    /// Sending jurisdiction (ISO 3166-1 alpha-2).
    pub sender: String,
    /// Receiving jurisdiction.
    pub receiver: String,
    /// What the message is about.
    pub subject: String,
    /// The object, usually a document multihash.
    pub obj: String,
    /// The message type, e.g. `UN.CEFACT.Trade.CertificateOfOrigin.created`.
    pub predicate: String,
    /// The sender's reference.
    pub sender_ref: String,
    /// `pending`, `received`, `accepted` or `rejected`.
    pub status: String,
    /// Routing rule id of the channel the message went to.
    pub channel_id: Option<String>,
    /// The channel's id for the message.
    pub channel_txn_id: Option<String>,
    /// Status on the channel: `received`, `confirmed`, `undeliverable`, `revoked`.
    pub channel_status: Option<String>,
    /// When the message was stored (RFC 3339).
    pub created_at: String,
    /// When it last changed (RFC 3339).
    pub updated_at: String,
}

fn rfc3339(timestamp: Timestamp) -> String {
    timestamp.format(&Rfc3339).unwrap_or_default()
}

impl From<&Message> for MessageBody {
    fn from(message: &Message) -> Self {
        let content = &message.content;
        Self {
            sender: content.sender.to_string(),
            receiver: content.receiver.to_string(),
            subject: content.subject.clone(),
            obj: content.obj.clone(),
            predicate: content.predicate.clone(),
            sender_ref: message.sender_ref.to_string(),
            status: message.status.to_string(),
            channel_id: message.channel_id.clone(),
            channel_txn_id: message.channel_txn_id.clone(),
            channel_status: message.channel_status.map(|s| s.to_string()),
            created_at: rfc3339(message.created_at),
            updated_at: rfc3339(message.updated_at),
        }
    }
}

fn message_response(status: StatusCode, message: &Message) -> Response {
    (status, Json(MessageBody::from(message))).into_response()
}

/// Which flavour of a path answered: the legacy paths keep the reference's status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavour {
    Current,
    Legacy,
}

/// Posts a message of this node's jurisdiction. Idempotent on `sender:sender_ref`: the same
/// content again returns the stored message with 200, different content 409.
#[utoipa::path(
    post,
    path = "/api/v1/messages",
    tag = "messages",
    request_body(content = crate::openapi::NewMessageRequest, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Stored; `Location` names the message", body = MessageBody,
            headers(("Location" = String, description = "`/api/v1/messages/{reference}`"))),
        (status = 200, description = "Already stored with the same content", body = MessageBody),
        (status = 400, description = "Empty, malformed or invalid message", body = crate::openapi::ErrorResponse),
        (status = 401, description = "Missing or invalid credentials", body = crate::openapi::ErrorResponse),
        (status = 403, description = "The sender is not this node's jurisdiction", body = crate::openapi::ErrorResponse),
        (status = 409, description = "Stored with different content", body = crate::openapi::ErrorResponse),
        (status = 415, description = "Not JSON", body = crate::openapi::ErrorResponse),
        (status = 503, description = "Storage unavailable; retry", body = crate::openapi::ErrorResponse),
    )
)]
async fn post_message(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    accept_post(state, caller, body, Flavour::Current).await
}

/// The reference's `POST /message`: like `POST /api/v1/messages`, but 201 also for a
/// repeat with the same content.
#[utoipa::path(
    post,
    path = "/message",
    tag = "legacy",
    operation_id = "post_message_legacy",
    request_body(content = crate::openapi::NewMessageRequest, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Stored, or already stored with the same content", body = MessageBody),
        (status = 400, description = "Empty, malformed or invalid message", body = crate::openapi::ErrorResponse),
        (status = 401, description = "Missing or invalid credentials", body = crate::openapi::ErrorResponse),
        (status = 403, description = "The sender is not this node's jurisdiction", body = crate::openapi::ErrorResponse),
        (status = 409, description = "Stored with different content", body = crate::openapi::ErrorResponse),
        (status = 415, description = "Not JSON", body = crate::openapi::ErrorResponse),
        (status = 503, description = "Storage unavailable; retry", body = crate::openapi::ErrorResponse),
    )
)]
async fn post_message_legacy(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    accept_post(state, caller, body, Flavour::Legacy).await
}

async fn accept_post(
    state: AppState,
    caller: Caller,
    body: Value,
    flavour: Flavour,
) -> Result<Response, ApiError> {
    let message = parse_new_message(&body)?;
    authorize_post(&state.jurisdiction, &caller, &message)?;
    let outcome = state
        .ingest
        .submit(message, MessageStatus::Pending)
        .await
        .map_err(|error| match error {
            IngestError::Store(store) if !store.is_transient() => {
                tracing::error!(error = %store, "message not stored");
                ApiError::internal()
            }
            other => ApiError::unavailable(format!("message not stored: {other}; retry")),
        })?;
    match outcome {
        InsertOutcome::Created(message) => {
            metrics::counter!("igl_messages_posted_total", "outcome" => "created").increment(1);
            let mut response = message_response(StatusCode::CREATED, &message);
            let location = format!("/api/v1/messages/{}", message.reference());
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            Ok(response)
        }
        InsertOutcome::Existing(message) => {
            metrics::counter!("igl_messages_posted_total", "outcome" => "existing").increment(1);
            let status = match flavour {
                Flavour::Current => StatusCode::OK,
                Flavour::Legacy => StatusCode::CREATED,
            };
            Ok(message_response(status, &message))
        }
        InsertOutcome::Conflict(reference) => {
            metrics::counter!("igl_messages_posted_total", "outcome" => "conflict").increment(1);
            Err(ApiError::conflict(format!(
                "message {reference} already exists with different content"
            ))
            .with_source(json!([{"reference": reference.to_string()}])))
        }
    }
}

/// B2G callers post only their own jurisdiction's outbound messages; foreign messages
/// enter through the channel side.
fn authorize_post(
    own: &Jurisdiction,
    caller: &Caller,
    message: &NewMessage,
) -> Result<(), ApiError> {
    if caller.jurisdiction != *own {
        return Err(ApiError::forbidden(format!(
            "callers of {} cannot post messages to the node of {own}",
            caller.jurisdiction
        )));
    }
    if message.content.sender != *own {
        return Err(ApiError::forbidden(format!(
            "sender must be this node's jurisdiction {own}; foreign messages arrive through channels"
        ))
        .with_source(json!([{"sender": message.content.sender.as_str()}])));
    }
    Ok(())
}

/// Validates a posted body field by field (REFERENCE-WIRE §1.2 with the defects fixed).
fn parse_new_message(body: &Value) -> Result<NewMessage, ApiError> {
    let object = match body {
        Value::Object(object) if !object.is_empty() => object,
        _ => {
            return Err(
                ApiError::new(StatusCode::BAD_REQUEST, "message-data-empty-error")
                    .with_detail("Unable to get data from the request"),
            );
        }
    };
    let mut type_errors = Vec::new();
    let mut text = |field: &'static str| match object.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(value)) => Some(value.clone()),
        Some(other) => {
            type_errors.push(json!({"field": field, "rule": "not-a-string", "value": other}));
            Some(String::new())
        }
    };
    let mut fields = MessageFields {
        sender: text("sender"),
        receiver: text("receiver"),
        subject: text("subject"),
        obj: text("obj"),
        predicate: text("predicate"),
        sender_ref: None,
    };
    // Like the reference, any JSON scalar is accepted as sender_ref and kept as text.
    fields.sender_ref = match object.get("sender_ref") {
        None | Some(Value::Null) => None,
        Some(Value::String(value)) => Some(value.clone()),
        Some(Value::Number(number)) => Some(number.to_string()),
        Some(Value::Bool(flag)) => Some(flag.to_string()),
        Some(other) => {
            type_errors
                .push(json!({"field": "sender_ref", "rule": "not-a-string", "value": other}));
            Some(String::new())
        }
    };
    if !type_errors.is_empty() {
        let source: Vec<String> = type_errors
            .iter()
            .map(|e| {
                format!(
                    "{} is not a string",
                    e["field"].as_str().unwrap_or_default()
                )
            })
            .collect();
        return Err(
            ApiError::new(StatusCode::BAD_REQUEST, "message-deserialization-error")
                .with_detail("Unable to deserialize the posted message")
                .with_source(json!(source))
                .with_meta(json!({"fields": type_errors})),
        );
    }
    NewMessage::parse(fields).map_err(|errors| {
        let structural = errors
            .errors()
            .iter()
            .any(|e| matches!(e.rule, Rule::Missing | Rule::NotJurisdiction(_)));
        let (code, detail) = if structural {
            (
                "message-deserialization-error",
                "Unable to deserialize the posted message",
            )
        } else {
            (
                "message-validation-error",
                "Unable to validate the posted message",
            )
        };
        let source: Vec<String> = errors.errors().iter().map(ToString::to_string).collect();
        let fields: Vec<Value> = errors
            .errors()
            .iter()
            .map(
                |e| json!({"field": e.field, "rule": e.rule.code(), "message": e.rule.to_string()}),
            )
            .collect();
        ApiError::new(StatusCode::BAD_REQUEST, code)
            .with_detail(detail)
            .with_source(json!(source))
            .with_meta(json!({"fields": fields}))
    })
}

fn parse_reference(text: &str) -> Result<MessageRef, ApiError> {
    MessageRef::parse(text).map_err(|error| {
        ApiError::bad_request(error.to_string())
            .with_title("Bad Message Reference")
            .with_source(json!([{"reference": text}]))
    })
}

fn not_found(reference: &str) -> ApiError {
    ApiError::not_found("No message with that reference can be found for this auth")
        .with_title("Message Not Found Error")
        .with_source(json!([{"reference": reference}]))
}

/// Reads a message.
#[utoipa::path(
    get,
    path = "/api/v1/messages/{reference}",
    tag = "messages",
    params(("reference" = String, Path, description = "`{sender}:{sender_ref}`")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The message", body = MessageBody),
        (status = 400, description = "Bad reference", body = crate::openapi::ErrorResponse),
        (status = 401, description = "Missing or invalid credentials", body = crate::openapi::ErrorResponse),
        (status = 404, description = "No such message", body = crate::openapi::ErrorResponse),
    )
)]
async fn get_message(
    State(state): State<AppState>,
    _caller: Caller,
    Path(reference): Path<String>,
) -> Result<Response, ApiError> {
    read(&state, &reference)
        .await
        .map(|m| message_response(StatusCode::OK, &m))
}

/// The reference answers a successful GET with 201; legacy clients may check for it.
#[utoipa::path(
    get,
    path = "/message/{reference}",
    tag = "legacy",
    operation_id = "get_message_legacy",
    params(("reference" = String, Path, description = "`{sender}:{sender_ref}`")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The message (201, as the reference answers)", body = MessageBody),
        (status = 400, description = "Bad reference", body = crate::openapi::ErrorResponse),
        (status = 401, description = "Missing or invalid credentials", body = crate::openapi::ErrorResponse),
        (status = 404, description = "No such message", body = crate::openapi::ErrorResponse),
    )
)]
async fn get_message_legacy(
    State(state): State<AppState>,
    _caller: Caller,
    Path(reference): Path<String>,
) -> Result<Response, ApiError> {
    read(&state, &reference)
        .await
        .map(|m| message_response(StatusCode::CREATED, &m))
}

async fn read(state: &AppState, text: &str) -> Result<Message, ApiError> {
    let reference = parse_reference(text)?;
    state
        .storage
        .get_message(&reference)
        .await?
        .ok_or_else(|| not_found(text))
}

/// Parses a PATCH body: `status` (`accepted`/`rejected`/null), `channel_id`,
/// `channel_txn_id` (string or integer), `channel_status` (additive). Unknown keys are
/// ignored, as in the reference.
fn parse_update(body: &Value) -> Result<MessageUpdate, ApiError> {
    let object = match body {
        Value::Object(object) if !object.is_empty() => object,
        _ => {
            return Err(
                ApiError::new(StatusCode::BAD_REQUEST, "message-data-empty-error")
                    .with_detail("Unable to get data from the request"),
            );
        }
    };
    let status = match object.get("status") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "accepted" => Some(MessageStatus::Accepted),
        Some(Value::String(s)) if s == "rejected" => Some(MessageStatus::Rejected),
        Some(other) => {
            let shown = other
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| other.to_string());
            return Err(
                ApiError::new(StatusCode::BAD_REQUEST, "unexpected-message-status-error")
                    .with_detail(format!("Unexpected message status value: {shown}"))
                    .with_source(
                        json!([{"value": other, "expected": ["accepted", "rejected", null]}]),
                    ),
            );
        }
    };
    let id_field = |field: &str| -> Result<Option<String>, ApiError> {
        match object.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(other) => Err(ApiError::bad_request(format!(
                "{field} must be a non-empty string or an integer, got {other}"
            ))),
        }
    };
    let channel_status = match object.get("channel_status") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.parse::<ChannelStatus>().map_err(ApiError::bad_request)?),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "channel_status must be a string, got {other}"
            )));
        }
    };
    Ok(MessageUpdate {
        status,
        channel_id: id_field("channel_id")?,
        channel_txn_id: id_field("channel_txn_id")?,
        channel_status,
    })
}

/// Updates a message's status (inbound messages: `accepted`/`rejected`) and channel fields.
/// Also served at the legacy `PATCH /message/{reference}`.
#[utoipa::path(
    patch,
    path = "/api/v1/messages/{reference}",
    tag = "messages",
    params(("reference" = String, Path, description = "`{sender}:{sender_ref}`")),
    request_body(content = crate::openapi::MessageUpdateRequest, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The updated message", body = MessageBody),
        (status = 400, description = "Bad reference or body", body = crate::openapi::ErrorResponse),
        (status = 401, description = "Missing or invalid credentials", body = crate::openapi::ErrorResponse),
        (status = 403, description = "Not allowed (foreign caller, or the status of an outbound message)", body = crate::openapi::ErrorResponse),
        (status = 404, description = "No such message", body = crate::openapi::ErrorResponse),
        (status = 409, description = "Final status, transition not allowed, or channel already set", body = crate::openapi::ErrorResponse),
        (status = 415, description = "Not JSON", body = crate::openapi::ErrorResponse),
    )
)]
async fn patch_message(
    State(state): State<AppState>,
    caller: Caller,
    Path(text): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let reference = parse_reference(&text)?;
    let update = parse_update(&body)?;
    if caller.jurisdiction != state.jurisdiction {
        return Err(ApiError::forbidden(format!(
            "callers of {} cannot update messages on the node of {}",
            caller.jurisdiction, state.jurisdiction
        )));
    }
    if update.status.is_some() && reference.sender == state.jurisdiction {
        // Our own outbound messages are accepted or rejected by their channel (ARCHITECTURE
        // §6.7: status tells the truth), not by a client.
        return Err(ApiError::forbidden(
            "the status of an outbound message follows its channel and cannot be set",
        ));
    }
    let mut unit = state.storage.begin().await?;
    let updated = match unit.update_message(&reference, &update).await {
        Ok(updated) => updated,
        Err(StoreError::MessageNotFound(_)) => return Err(not_found(&text)),
        Err(StoreError::InvalidUpdate { source, .. }) => return Err(update_error(source)),
        Err(other) => return Err(other.into()),
    };
    if updated.status_changed() {
        unit.append_event(&status_event(&updated.after, updated.after.status))
            .await?;
    }
    unit.commit().await?;
    Ok(message_response(StatusCode::OK, &updated.after))
}

fn update_error(error: UpdateError) -> ApiError {
    match error {
        UpdateError::Status(TransitionError::Final { current }) => {
            ApiError::conflict(format!("Message status is final: {current}"))
        }
        UpdateError::Status(error @ TransitionError::NotAllowed { .. }) => {
            ApiError::conflict(error.to_string())
        }
        error @ UpdateError::ChannelAlreadySet { .. } => ApiError::conflict(error.to_string()),
        error @ UpdateError::IncompleteChannel => ApiError::bad_request(error.to_string()),
    }
}

/// Query parameters of `GET /api/v1/messages`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only messages with this status.
    status: Option<String>,
    /// Only messages with this predicate; a trailing `*` matches a prefix.
    predicate: Option<String>,
    /// Only messages from this jurisdiction.
    sender: Option<String>,
    /// Only messages to this jurisdiction.
    receiver: Option<String>,
    /// Only messages updated at or after this RFC 3339 time.
    updated_since: Option<String>,
    /// Continue after this cursor (from `next_cursor` of the previous page).
    cursor: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<u32>,
}

/// A page of messages.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessageList {
    /// The messages, oldest change first.
    pub messages: Vec<MessageBody>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

fn bad_query(parameter: &str, detail: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("{parameter}: {detail}"))
        .with_source(json!([{"parameter": parameter}]))
}

/// Lists messages, oldest change first, with filters and cursor pagination.
#[utoipa::path(
    get,
    path = "/api/v1/messages",
    tag = "messages",
    params(ListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of messages", body = MessageList),
        (status = 400, description = "Bad query parameter", body = crate::openapi::ErrorResponse),
        (status = 401, description = "Missing or invalid credentials", body = crate::openapi::ErrorResponse),
    )
)]
async fn list_messages(
    State(state): State<AppState>,
    _caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<MessageList>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let jurisdiction = |name: &str, value: Option<String>| {
        value
            .map(|v| Jurisdiction::parse(&v).map_err(|e| bad_query(name, e)))
            .transpose()
    };
    let filter = MessageFilter {
        status: query
            .status
            .map(|s| {
                s.parse::<MessageStatus>()
                    .map_err(|e| bad_query("status", e))
            })
            .transpose()?,
        predicate: query.predicate,
        sender: jurisdiction("sender", query.sender)?,
        receiver: jurisdiction("receiver", query.receiver)?,
        updated_since: query
            .updated_since
            .map(|t| Timestamp::parse(&t, &Rfc3339).map_err(|e| bad_query("updated_since", e)))
            .transpose()?,
        after: query
            .cursor
            .map(|c| Cursor::decode(&c).map_err(|e| bad_query("cursor", e)))
            .transpose()?,
        limit: match query.limit {
            Some(limit) if (1..=MessageFilter::MAX_LIMIT).contains(&limit) => limit,
            Some(limit) => return Err(bad_query("limit", format!("{limit} is not in 1..=1000"))),
            None => 100,
        },
    };
    let page = state.storage.list_messages(&filter).await?;
    Ok(Json(MessageList {
        messages: page.messages.iter().map(MessageBody::from).collect(),
        next_cursor: page.next.map(|cursor| cursor.encode()),
    }))
}
