//! `POST /messages`, `GET /messages/{id}`, `GET /messages` and `PUT /messages/{id}/status`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use igl_domain::{ChannelStatus, FieldError, MessageFields, NewMessage, Rule};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{
    FORM, FieldErrors, MISSING, empty, json_response, media_type, parse_form, unexpected,
    werkzeug_error,
};
use crate::endpoint::Shared;
use crate::endpoint::medium::{
    ListFilter, ListPosition, Post, PostOutcome, StatusUpdate, StoredMessage, WireMessage,
};

/// The fields of a posted message, in wire order.
const MESSAGE_FIELDS: [&str; 5] = ["sender", "receiver", "subject", "obj", "predicate"];

/// Default and largest page of `GET /messages`.
const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;

/// The request header that makes a post idempotent.
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The longest idempotency key accepted.
const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

/// `POST /messages`: validates the five fields (marshmallow's rules, then the domain's),
/// commits the row (confirmed at once: commit is confirmation) and answers 201 `{"id"}`
/// with the `Link` header of the reference.
///
/// **Idempotent** (an extension; reference clients send no key and see no difference): a
/// post carrying an `Idempotency-Key` header — or, without one, a forwarded `sender_ref`,
/// whose key is then `{sender}:{sender_ref}` — that the same sender already used is not
/// stored again. With the same content it is answered like the first post (201, the same
/// `id`, plus `Idempotent-Replayed: true`); with different content it is a 409 naming the
/// field (`Idempotency-Key` or `sender_ref`) and nothing is stored. So a poster that lost
/// the answer to a post (timeout, crash before recording the id) can post again safely.
/// A key whose message was withdrawn (`revoked`, `undeliverable`) names a new post: the
/// message is stored again under a new id (how a node re-posts a revoked message).
pub(super) async fn post_message(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header_key = match idempotency_key(&headers) {
        Ok(key) => key,
        Err(errors) => return errors.into_response(StatusCode::BAD_REQUEST),
    };
    let value: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(error) => {
            return werkzeug_error(
                StatusCode::BAD_REQUEST,
                &format!("Failed to decode JSON object: {error}"),
            );
        }
    };
    let message = match validate_message(&shared, value) {
        Ok(message) => message,
        Err(errors) => return errors.into_response(StatusCode::BAD_REQUEST),
    };
    let (key_field, idempotency_key) = match (header_key, &message.sender_ref) {
        (Some(key), _) => ("Idempotency-Key", Some(key)),
        (None, Some(sender_ref)) => (
            "sender_ref",
            Some(format!("{}:{sender_ref}", message.sender)),
        ),
        (None, None) => ("Idempotency-Key", None),
    };
    let post = Post {
        message,
        idempotency_key,
    };
    let (id, replayed) = match shared.writer.post(post).await {
        Ok(PostOutcome::Created(id)) => (id, false),
        Ok(PostOutcome::Existing(id)) => {
            tracing::info!(id, "repeated post answered with the message already stored");
            (id, true)
        }
        Ok(PostOutcome::Conflict(id)) => {
            let mut errors = FieldErrors::default();
            errors.add(
                key_field,
                format!("Already used for a different message (id {id})."),
            );
            return errors.into_response(StatusCode::CONFLICT);
        }
        Err(error) => return unexpected(&error, "message not posted"),
    };
    let link = format!(
        "<{}/messages/subscriptions/by_id>; rel=\"hub\", <{id}>; rel=\"self\"",
        shared.config.public_base()
    );
    // A message created now was committed to the medium before this answer: it is
    // confirmed (the node's router accepts it without polling). A replayed post answers
    // with the id only: the stored message's status may have changed since.
    let body = if replayed {
        json!({ "id": id })
    } else {
        json!({ "id": id, "status": "confirmed" })
    };
    let mut response = json_response(StatusCode::CREATED, &body);
    if let Ok(link) = HeaderValue::from_str(&link) {
        response.headers_mut().insert(header::LINK, link);
    }
    if replayed {
        response.headers_mut().insert(
            header::HeaderName::from_static("idempotent-replayed"),
            HeaderValue::from_static("true"),
        );
    }
    response
}

/// The `Idempotency-Key` header, if any: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, FieldErrors> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value.to_str().ok().map(str::trim).filter(|key| {
        !key.is_empty()
            && key.chars().count() <= MAX_IDEMPOTENCY_KEY_CHARS
            && key.chars().all(|c| c.is_ascii_graphic())
    });
    match key {
        Some(key) => Ok(Some(key.to_owned())),
        None => {
            let mut errors = FieldErrors::default();
            errors.add(
                "Idempotency-Key",
                format!("Must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} visible ASCII characters."),
            );
            Err(errors)
        }
    }
}

fn validate_message(shared: &Shared, value: Value) -> Result<WireMessage, FieldErrors> {
    let mut errors = FieldErrors::default();
    let Value::Object(object) = value else {
        errors.add("_schema", "Invalid input type.");
        return Err(errors);
    };
    let mut fields: BTreeMap<&'static str, String> = BTreeMap::new();
    let mut sender_ref = None;
    for (key, value) in object {
        // Extension: a node may forward its sender_ref so the receiver keeps it.
        if key == "sender_ref" {
            match value {
                Value::String(text) => match igl_domain::SenderRef::parse(text.clone()) {
                    Ok(_) => sender_ref = Some(text),
                    Err(rule) => errors.add("sender_ref", rule.to_string()),
                },
                _ => errors.add("sender_ref", "Not a valid string."),
            }
            continue;
        }
        match MESSAGE_FIELDS.iter().find(|field| **field == key) {
            None => errors.add(&key, "Unknown field."),
            Some(field) => match value {
                Value::String(text) => {
                    fields.insert(field, text);
                }
                _ => errors.add(field, "Not a valid string."),
            },
        }
    }
    for field in MESSAGE_FIELDS {
        if !fields.contains_key(field) && !errors.has(field) {
            errors.add(field, MISSING);
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let take = |fields: &mut BTreeMap<&'static str, String>, name| fields.remove(name);
    let message = WireMessage {
        sender: take(&mut fields, "sender").unwrap_or_default(),
        receiver: take(&mut fields, "receiver").unwrap_or_default(),
        subject: take(&mut fields, "subject").unwrap_or_default(),
        obj: take(&mut fields, "obj").unwrap_or_default(),
        predicate: take(&mut fields, "predicate").unwrap_or_default(),
        sender_ref,
    };
    let parsed = NewMessage::parse(MessageFields {
        sender: Some(message.sender.clone()),
        receiver: Some(message.receiver.clone()),
        subject: Some(message.subject.clone()),
        obj: Some(message.obj.clone()),
        predicate: Some(message.predicate.clone()),
        sender_ref: Some("channel-endpoint".to_owned()),
    });
    match parsed {
        Err(invalid) => {
            for error in invalid.errors() {
                errors.add(error.field, rule_message(error));
            }
        }
        Ok(parsed) => {
            let own = shared.config.jurisdiction;
            let content = parsed.content;
            if content.sender != own {
                errors.add(
                    "sender",
                    format!("Must be {own}: this channel endpoint posts for {own} only."),
                );
            } else if content.receiver == own {
                errors.add(
                    "receiver",
                    format!("Must not be {own}, the sender's own jurisdiction."),
                );
            } else if !shared.config.peers.is_empty()
                && !shared.config.peers.contains(&content.receiver)
            {
                let peers: Vec<&str> = shared.config.peers.iter().map(|p| p.as_str()).collect();
                errors.add(
                    "receiver",
                    format!(
                        "Not reachable through this channel (it reaches {}).",
                        peers.join(", ")
                    ),
                );
            }
        }
    }
    if errors.is_empty() {
        Ok(message)
    } else {
        Err(errors)
    }
}

/// A marshmallow-style message for a broken domain rule.
fn rule_message(error: &FieldError) -> String {
    match &error.rule {
        Rule::Missing => MISSING.to_owned(),
        Rule::Empty => "Must not be empty.".to_owned(),
        Rule::TooLong { max } => format!("Longer than maximum length {max}."),
        Rule::InvalidCharacters { forbidden } => format!("Must not contain {forbidden}."),
        Rule::NotJurisdiction(_) => {
            "Not a valid jurisdiction (an ISO 3166-1 alpha-2 code such as \"AU\").".to_owned()
        }
        Rule::NotUri => "Not a valid URI (a CID, URL, URN, multihash or a dotted name with \
                         at least 3 segments)."
            .to_owned(),
    }
}

/// The JSON of a message: `{"id","status","message":{…}}` as in the reference.
fn message_json(message: &StoredMessage) -> serde_json::Map<String, Value> {
    let mut object = serde_json::Map::new();
    object.insert("id".to_owned(), json!(message.id));
    object.insert("status".to_owned(), json!(message.status));
    object.insert("message".to_owned(), json!(message.message));
    object
}

/// Parses a path id; anything but a positive integer is "not found".
fn parse_id(id: &str) -> Option<i64> {
    id.parse::<i64>().ok().filter(|id| *id > 0)
}

/// `GET /messages/{id}?fields=a,b`: 200 with the message (only the top-level `fields` when
/// given), 404 with an empty body.
pub(super) async fn get_message(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let Some(id) = parse_id(&id) else {
        return empty(StatusCode::NOT_FOUND);
    };
    let message = match shared.medium.get(id).await {
        Ok(Some(message)) => message,
        Ok(None) => return empty(StatusCode::NOT_FOUND),
        Err(error) => return unexpected(&error, "message not read"),
    };
    let mut object = message_json(&message);
    if let Some((_, fields)) = query.iter().find(|(key, _)| key == "fields") {
        let wanted: Vec<&str> = fields.split(',').map(str::trim).collect();
        object.retain(|key, _| wanted.contains(&key.as_str()));
    }
    json_response(StatusCode::OK, &Value::Object(object))
}

/// `GET /messages?receiver=&sender=&status=&updated_since=&after_id=&cursor=&limit=`: a
/// page of messages for catch-up, `{"messages":[{id,status,message,created_at,updated_at}],
/// "next": <cursor or null>}`.
///
/// Order: by id when `after_id` is given (or nothing positions the page), otherwise by
/// (`updated_at`, id) from `updated_since`. `next` is set when the page is full; pass it
/// back as `cursor` with the same filters for the next page. Ids and `updated_at` appear in
/// commit order on the medium, so paging never skips a row that commits late.
pub(super) async fn list_messages(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let filter = match parse_list_query(&query) {
        Ok(filter) => filter,
        Err(errors) => return errors.into_response(StatusCode::BAD_REQUEST),
    };
    let page = match shared.medium.list(&filter).await {
        Ok(page) => page,
        Err(error) => return unexpected(&error, "messages not listed"),
    };
    let full = i64::try_from(page.len()).unwrap_or(i64::MAX) >= filter.limit;
    let next = full
        .then(|| page.last())
        .flatten()
        .map(|last| match filter.position {
            ListPosition::AfterId(_) => format!("i{}", last.id),
            ListPosition::AfterUpdate { .. } => format!("u{}.{}", last.updated_at, last.id),
        });
    let messages: Vec<Value> = page
        .iter()
        .map(|message| {
            let mut object = message_json(message);
            object.insert(
                "created_at".to_owned(),
                json!(format_micros(message.created_at)),
            );
            object.insert(
                "updated_at".to_owned(),
                json!(format_micros(message.updated_at)),
            );
            Value::Object(object)
        })
        .collect();
    json_response(StatusCode::OK, &json!({"messages": messages, "next": next}))
}

fn parse_list_query(query: &[(String, String)]) -> Result<ListFilter, FieldErrors> {
    let mut errors = FieldErrors::default();
    let param = |name: &str| {
        query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    let mut jurisdiction = |name: &str| {
        let value = param(name)?;
        if igl_domain::Jurisdiction::parse(value).is_err() {
            errors.add(
                name,
                "Not a valid jurisdiction (an ISO 3166-1 alpha-2 code such as \"AU\").",
            );
        }
        Some(value.to_owned())
    };
    let receiver = jurisdiction("receiver");
    let sender = jurisdiction("sender");
    let status = param("status").map(str::to_owned);
    if let Some(value) = &status
        && value.parse::<ChannelStatus>().is_err()
    {
        errors.add("status", format!("Invalid enum value {value}"));
    }
    let limit = match param("limit") {
        None => DEFAULT_LIMIT,
        Some(value) => match value.parse::<i64>() {
            Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => limit,
            _ => {
                errors.add(
                    "limit",
                    format!("Must be an integer between 1 and {MAX_LIMIT}."),
                );
                DEFAULT_LIMIT
            }
        },
    };
    let mut position = ListPosition::AfterId(0);
    if let Some(value) = param("updated_since") {
        match OffsetDateTime::parse(value, &Rfc3339) {
            Ok(since) => {
                let micros = i64::try_from(since.unix_timestamp_nanos() / 1_000).unwrap_or(0);
                // After (since, id 0): every row with updated_at >= since.
                position = ListPosition::AfterUpdate {
                    updated_at: micros,
                    id: 0,
                };
            }
            Err(_) => errors.add(
                "updated_since",
                "Not a valid datetime (RFC 3339, e.g. 2024-01-31T12:00:00Z).",
            ),
        }
    }
    if let Some(value) = param("after_id") {
        match value.parse::<i64>() {
            Ok(id) if id >= 0 => position = ListPosition::AfterId(id),
            _ => errors.add("after_id", "Not a valid integer."),
        }
    }
    if let Some(value) = param("cursor") {
        match parse_cursor(value) {
            Some(cursor) => position = cursor,
            None => errors.add("cursor", "Not a cursor returned by this endpoint."),
        }
    }
    if errors.is_empty() {
        Ok(ListFilter {
            receiver,
            sender,
            status,
            position,
            limit,
        })
    } else {
        Err(errors)
    }
}

fn parse_cursor(value: &str) -> Option<ListPosition> {
    if let Some(id) = value.strip_prefix('i') {
        return id.parse().ok().map(ListPosition::AfterId);
    }
    let (updated_at, id) = value.strip_prefix('u')?.split_once('.')?;
    Some(ListPosition::AfterUpdate {
        updated_at: updated_at.parse().ok()?,
        id: id.parse().ok()?,
    })
}

/// RFC 3339 in UTC with microseconds.
fn format_micros(micros: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .ok()
        .and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// `PUT /messages/{id}/status`, form `status=received|confirmed|revoked|undeliverable`:
/// an operator's tool. The change must be allowed by [`ChannelStatus::transition`] (409
/// otherwise); it is recorded so that both endpoints announce it to `by_id` subscribers.
pub(super) async fn put_status(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(id) = parse_id(&id) else {
        return empty(StatusCode::NOT_FOUND);
    };
    let form = if media_type(&headers) == FORM {
        parse_form(&body)
    } else {
        BTreeMap::new()
    };
    let mut errors = FieldErrors::default();
    let status = match form.get("status") {
        None => {
            errors.add("status", MISSING);
            None
        }
        Some(value) => match value.parse::<ChannelStatus>() {
            Ok(status) => Some(status),
            Err(_) => {
                errors.add("status", format!("Invalid enum value {value}"));
                None
            }
        },
    };
    let Some(status) = status else {
        return errors.into_response(StatusCode::BAD_REQUEST);
    };
    match shared.medium.update_status(id, status).await {
        Ok(StatusUpdate::NotFound) => empty(StatusCode::NOT_FOUND),
        Ok(StatusUpdate::Refused(refused)) => {
            let mut errors = FieldErrors::default();
            errors.add("status", format!("Not allowed: {refused}."));
            errors.into_response(StatusCode::CONFLICT)
        }
        Ok(StatusUpdate::Done { message, changed }) => {
            if changed {
                tracing::info!(id, status = %status, "channel message status changed");
            }
            json_response(StatusCode::OK, &Value::Object(message_json(&message)))
        }
        Err(error) => unexpected(&error, "status not updated"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        assert_eq!(parse_cursor("i42"), Some(ListPosition::AfterId(42)));
        assert_eq!(
            parse_cursor("u1700000000000000.7"),
            Some(ListPosition::AfterUpdate {
                updated_at: 1_700_000_000_000_000,
                id: 7
            })
        );
        assert_eq!(parse_cursor("x1"), None);
        assert_eq!(parse_cursor("u1"), None);
    }

    #[test]
    fn micros_format_as_rfc3339() {
        assert_eq!(format_micros(1_000_000), "1970-01-01T00:00:01Z");
        assert_eq!(format_micros(1_500_000), "1970-01-01T00:00:01.5Z");
    }
}
