//! The Channel API over HTTP, compatible with the reference shared-db channel
//! (REFERENCE-WIRE §5.2), plus the `GET /messages` listing for catch-up.
//!
//! Error bodies follow the reference: validation errors are marshmallow's field → messages
//! map (`{"obj":["Missing data for required field."]}`), `GET /messages/{id}` of an unknown
//! id is a 404 with an empty body, other HTTP errors use the libtrustbridge shape
//! (`{"errors":[{"status","code","title","detail"}]}`) and unexpected failures the
//! reference's 500 body, which carries no internals (the cause is logged).

mod messages;
mod subscriptions;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};

use super::Shared;

/// The largest request body accepted (a message is a few kilobytes at most).
const MAX_BODY_BYTES: usize = 256 * 1024;

/// The Channel API routes, with the endpoint's state applied.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route(
            "/messages",
            post(messages::post_message).get(messages::list_messages),
        )
        .route("/messages/{id}", get(messages::get_message))
        .route("/messages/{id}/status", put(messages::put_status))
        .route(
            "/messages/subscriptions/by_jurisdiction",
            post(subscriptions::by_jurisdiction),
        )
        .route("/messages/subscriptions/by_id", post(subscriptions::by_id))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared)
}

/// Werkzeug's 404 for a path the API does not serve (Flask's answer in the reference).
async fn not_found() -> Response {
    werkzeug_error(
        StatusCode::NOT_FOUND,
        "The requested URL was not found on the server. If you entered the URL manually \
         please check your spelling and try again.",
    )
}

/// Werkzeug's 405 for a method a path does not serve.
async fn method_not_allowed() -> Response {
    werkzeug_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "The method is not allowed for the requested URL.",
    )
}

/// `GET /healthz` (an extension): 200 `{"status":"ok"}` while the process serves.
async fn healthz() -> Response {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

async fn index() -> Response {
    json_response(StatusCode::OK, &json!({"service": "shared-db-channel"}))
}

/// A JSON response.
fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A response with no body.
fn empty(status: StatusCode) -> Response {
    status.into_response()
}

/// Marshmallow-style validation errors: field → messages.
#[derive(Debug, Default)]
struct FieldErrors(BTreeMap<String, Vec<String>>);

impl FieldErrors {
    fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0
            .entry(field.to_owned())
            .or_default()
            .push(message.into());
    }

    fn has(&self, field: &str) -> bool {
        self.0.contains_key(field)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn into_response(self, status: StatusCode) -> Response {
        let body: serde_json::Map<String, Value> = self
            .0
            .into_iter()
            .map(|(field, messages)| (field, json!(messages)))
            .collect();
        json_response(status, &Value::Object(body))
    }
}

/// The marshmallow message of a required field that is absent.
const MISSING: &str = "Missing data for required field.";

/// The libtrustbridge `GenericHTTPError` body.
fn generic_http_error(status: StatusCode, detail: &str) -> Response {
    json_response(
        status,
        &json!({"errors": [{
            "status": status.canonical_reason().unwrap_or(""),
            "code": "generic-http-error",
            "title": "Generic Http Error",
            "detail": detail,
        }]}),
    )
}

/// Werkzeug's JSON error body (a body that is not JSON at all).
fn werkzeug_error(status: StatusCode, description: &str) -> Response {
    json_response(
        status,
        &json!({
            "code": status.as_u16(),
            "name": status.canonical_reason().unwrap_or(""),
            "description": description,
        }),
    )
}

/// The reference's body for unexpected failures; the cause is logged, not returned.
fn unexpected(error: &(dyn std::error::Error + 'static), what: &str) -> Response {
    tracing::error!(error = %super::error_chain(error), "{what}");
    json_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        &json!({"success": false, "error": {
            "type": "UnexpectedException",
            "message": "An unexpected error has occurred.",
            "details": null,
        }}),
    )
}

/// The media type of a request without parameters, lower case (`application/json`).
fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|value| value.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

const FORM: &str = "application/x-www-form-urlencoded";

/// Decodes a form body; the first value of a repeated key wins (Flask's `to_dict()`).
fn parse_form(body: &[u8]) -> BTreeMap<String, String> {
    let mut form = BTreeMap::new();
    for (key, value) in url::form_urlencoded::parse(body) {
        form.entry(key.into_owned())
            .or_insert_with(|| value.into_owned());
    }
    form
}
