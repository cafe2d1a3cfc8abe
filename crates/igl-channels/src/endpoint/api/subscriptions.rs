//! `POST /messages/subscriptions/by_jurisdiction` and `/by_id`: WebSub (un)subscription
//! with form parameters `hub.mode`, `hub.callback`, `hub.topic`, `hub.lease_seconds`
//! (default 432000) and `hub.secret` (at most 200 characters).
//!
//! As in the reference, the subscriber's intent is verified **before** answering: a GET to
//! the callback with `hub.mode`, `hub.topic` (as stored: `jurisdiction.<topic>` for
//! `by_jurisdiction`), `hub.challenge` and `hub.lease_seconds` must answer 2xx with the
//! challenge; otherwise the answer is 400 `{"error":"Intent verification failed"}` and
//! nothing changes. Success is 202 with an empty body. Unsubscribing a subscription that
//! does not exist is 404 (checked before calling the callback).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;

use super::{
    FORM, FieldErrors, MISSING, empty, generic_http_error, json_response, media_type, parse_form,
    unexpected,
};
use crate::endpoint::Shared;
use crate::endpoint::callback::{Verification, check_callback_url, verify_intent};
use crate::endpoint::config::{DEFAULT_LEASE_SECONDS, MAX_LEASE_SECONDS};
use crate::endpoint::observer::now_micros;
use crate::endpoint::store::{NewSubscription, SubscriptionKind};
use crate::endpoint::topic::{JURISDICTION_PREFIX, subscription_key};

/// The longest `hub.secret` (the reference's limit).
const MAX_SECRET_CHARS: usize = 200;

pub(super) async fn by_jurisdiction(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    subscription_request(&shared, SubscriptionKind::Jurisdiction, &headers, &body).await
}

pub(super) async fn by_id(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    subscription_request(&shared, SubscriptionKind::Id, &headers, &body).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Subscribe,
    Unsubscribe,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Subscribe => "subscribe",
            Self::Unsubscribe => "unsubscribe",
        }
    }
}

/// A checked subscription request.
#[derive(Debug)]
struct Request {
    mode: Mode,
    callback: url::Url,
    /// As stored and sent in verification (`jurisdiction.SG`, `42`).
    topic: String,
    topic_key: String,
    lease_seconds: i64,
    secret: Option<String>,
}

async fn subscription_request(
    shared: &Shared,
    kind: SubscriptionKind,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let media_type = media_type(headers);
    if media_type != FORM {
        return generic_http_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!(
                "Unsupported mimetype. Value: \"{media_type}\". Value must be one of ['{FORM}']."
            ),
        );
    }
    let request = match parse_request(shared, kind, body) {
        Ok(request) => request,
        Err(errors) => return errors.into_response(StatusCode::BAD_REQUEST),
    };
    let store = &shared.store;
    if request.mode == Mode::Unsubscribe {
        match store
            .subscription_exists(&request.topic_key, request.callback.as_str())
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                return generic_http_error(
                    StatusCode::NOT_FOUND,
                    "Subscription with given parameters not found",
                );
            }
            Err(error) => return unexpected(&error, "subscription not read"),
        }
    }
    let verification = Verification {
        mode: request.mode.as_str(),
        topic: &request.topic,
        lease_seconds: request.lease_seconds,
    };
    if let Err(error) = verify_intent(
        &shared.http,
        &request.callback,
        &verification,
        shared.config.verification_timeout,
    )
    .await
    {
        tracing::info!(
            callback = %request.callback,
            topic = %request.topic,
            mode = request.mode.as_str(),
            error = %crate::endpoint::error_chain(&error),
            "intent verification failed"
        );
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "Intent verification failed"}),
        );
    }
    let stored = match request.mode {
        Mode::Subscribe => store
            .upsert_subscription(
                &NewSubscription {
                    kind,
                    topic: &request.topic,
                    topic_key: &request.topic_key,
                    callback: request.callback.as_str(),
                    secret: request.secret.as_deref(),
                    lease_seconds: request.lease_seconds,
                },
                now_micros(),
            )
            .await
            .map(|_| ()),
        Mode::Unsubscribe => store
            .delete_subscription(&request.topic_key, request.callback.as_str())
            .await
            .map(|_| ()),
    };
    if let Err(error) = stored {
        return unexpected(&error, "subscription not stored");
    }
    shared.subscription_changed();
    tracing::info!(
        callback = %request.callback,
        topic = %request.topic,
        mode = request.mode.as_str(),
        lease_seconds = request.lease_seconds,
        "subscription changed"
    );
    empty(StatusCode::ACCEPTED)
}

fn parse_request(
    shared: &Shared,
    kind: SubscriptionKind,
    body: &[u8],
) -> Result<Request, FieldErrors> {
    let form = parse_form(body);
    let mut errors = FieldErrors::default();

    let mode = match form.get("hub.mode").map(String::as_str) {
        None => {
            errors.add("hub.mode", MISSING);
            None
        }
        Some("subscribe") => Some(Mode::Subscribe),
        Some("unsubscribe") => Some(Mode::Unsubscribe),
        Some(_) => {
            errors.add("hub.mode", "Must be one of: subscribe, unsubscribe.");
            None
        }
    };

    let callback = match form.get("hub.callback") {
        None => {
            errors.add("hub.callback", MISSING);
            None
        }
        Some(callback) => {
            match check_callback_url(callback, shared.config.allow_loopback_callbacks) {
                Ok(url) => Some(url),
                Err(refused) => {
                    errors.add("hub.callback", refused.message());
                    None
                }
            }
        }
    };

    let topic = match form.get("hub.topic") {
        None => {
            errors.add("hub.topic", MISSING);
            None
        }
        Some(topic) => {
            let topic = match kind {
                SubscriptionKind::Jurisdiction => format!("{JURISDICTION_PREFIX}{topic}"),
                SubscriptionKind::Id => topic.clone(),
            };
            match subscription_key(&topic) {
                Ok(key) => Some((topic, key)),
                Err(invalid) => {
                    errors.add("hub.topic", invalid.message());
                    None
                }
            }
        }
    };

    let lease_seconds = match form.get("hub.lease_seconds") {
        None => DEFAULT_LEASE_SECONDS,
        Some(value) => match value.trim().parse::<i64>() {
            Ok(lease) if lease >= 1 => lease.min(MAX_LEASE_SECONDS),
            Ok(_) => {
                errors.add("hub.lease_seconds", "Must be greater than or equal to 1.");
                DEFAULT_LEASE_SECONDS
            }
            Err(_) => {
                errors.add("hub.lease_seconds", "Not a valid integer.");
                DEFAULT_LEASE_SECONDS
            }
        },
    };

    let secret = form.get("hub.secret").cloned();
    if let Some(secret) = &secret
        && secret.chars().count() > MAX_SECRET_CHARS
    {
        errors.add(
            "hub.secret",
            format!("Longer than maximum length {MAX_SECRET_CHARS}."),
        );
    }

    match (mode, callback, topic) {
        (Some(mode), Some(callback), Some((topic, topic_key))) if errors.is_empty() => {
            Ok(Request {
                mode,
                callback,
                topic,
                topic_key,
                lease_seconds,
                secret: secret.filter(|secret| !secret.is_empty()),
            })
        }
        _ => Err(errors),
    }
}
