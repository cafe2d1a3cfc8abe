//! The OpenAPI 3 document of every HTTP API, generated from the handlers' `#[utoipa::path]`
//! annotations, served at `GET /api/v1/openapi.json` with a browsable Swagger UI at
//! `/api/docs` (assets compiled into the binary: works offline, nothing is downloaded at
//! build or run time).
//!
//! Adding an API module: annotate its handlers with `#[utoipa::path(..., tag = "<api>")]`,
//! list them in [`ApiDoc`]'s `paths(...)` and their body types in `components(schemas(...))`.
//! Legacy (reference-compatible) paths need nothing more: `LegacyPaths` marks every path
//! outside `/api/` as deprecated, except the operational and channel-facing ones.

use axum::Router;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Deprecated, OpenApi as OpenApiDocument};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_swagger_ui::SwaggerUi;

/// Where the document is served.
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";
/// Where the Swagger UI is served.
pub const DOCS_PATH: &str = "/api/docs";

/// The node's OpenAPI document.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "IGL node",
        description = "HTTP APIs of an Inter-Government Ledger node: Message, Document, \
            Message Reception and Admin APIs, plus the reference's legacy paths \
            (deprecated). Errors always have the body \
            `{\"errors\":[{status, code, title, detail?, source?, meta?}]}`."
    ),
    paths(
        crate::messages::post_message,
        crate::messages::list_messages,
        crate::messages::get_message,
        crate::messages::patch_message,
        crate::messages::post_message_legacy,
        crate::messages::get_message_legacy,
        legacy_patch_message,
        crate::admin::healthz,
        crate::admin::readyz,
        crate::admin::metrics_text,
        crate::admin::list_dead_letters,
        crate::admin::replay_dead_letter,
        crate::admin::list_queues,
        crate::reception::verify_intent,
        crate::reception::notify,
    ),
    // The Document API's paths and schemas come from `documents::DocumentsDoc`, merged by
    // the `DocumentApi` modifier.
    components(schemas(
        ErrorResponse,
        ErrorObject,
        NewMessageRequest,
        MessageUpdateRequest,
        crate::messages::MessageBody,
        crate::messages::MessageList,
        crate::admin::Health,
        crate::admin::Readiness,
        crate::admin::ReadinessChecks,
        crate::admin::DeadLetterBody,
        crate::admin::DeadLetterPage,
        crate::admin::Replayed,
        crate::admin::QueueDepthBody,
        crate::admin::QueueList,
    )),
    modifiers(&DocumentApi, &BearerAuth, &LegacyPaths),
    tags(
        (name = "messages", description = "Message API: post, read, update and list messages"),
        (name = "documents", description = "Document API: upload and read documents"),
        (name = "reception", description = "Message Reception API: channels announce \
            messages for this node (unauthenticated, as in the reference protocol)"),
        (name = "admin", description = "Probes, Prometheus metrics and dead-letter operations"),
        (name = "legacy", description = "Paths of the reference implementation, kept for \
            existing clients (deprecated: use the /api/v1 paths)"),
    )
)]
#[derive(Clone, Copy)]
pub struct ApiDoc;

/// The routes serving the document and the Swagger UI (unauthenticated).
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    SwaggerUi::new(DOCS_PATH)
        .url(OPENAPI_PATH, ApiDoc::openapi())
        .into()
}

/// The error body of every API (REFERENCE-WIRE §2.0).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"errors": [{"status": "Bad Request", "code": "message-validation-error",
    "title": "Message Validation Error", "detail": "Unable to validate the posted message",
    "source": ["obj is not a URI: foo"]}]}))]
pub struct ErrorResponse {
    /// Exactly one error.
    pub errors: Vec<ErrorObject>,
}

/// One error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorObject {
    /// The HTTP reason phrase, e.g. `Bad Request`.
    pub status: String,
    /// Stable kebab-case code, e.g. `message-validation-error`, `generic-http-error`.
    pub code: String,
    /// The code in words, or the reason phrase for `generic-http-error`.
    pub title: String,
    /// Explanation.
    #[schema(nullable = false)]
    pub detail: Option<String>,
    /// Where the problem is: a list of strings or objects (an object for 415).
    #[schema(nullable = false)]
    pub source: Option<serde_json::Value>,
    /// Machine-readable details (additive to the reference).
    #[schema(nullable = false)]
    pub meta: Option<serde_json::Value>,
}

/// A message to post.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"sender": "AU", "receiver": "SG", "subject": "AU.abn0000000000.XXXX-XXXXX-XXXXX-XXXXXX",
    "obj": "QmQtYtUS7K1AdKjbuMsmPmPGDLaKL38M5HYwqxW9RKW49n",
    "predicate": "UN.CEFACT.Trade.CertificateOfOrigin.created"}))]
pub struct NewMessageRequest {
    /// Sending jurisdiction: must be this node's (ISO 3166-1 alpha-2).
    pub sender: String,
    /// Receiving jurisdiction.
    pub receiver: String,
    /// What the message is about.
    pub subject: String,
    /// The object, usually a document multihash.
    pub obj: String,
    /// The message type.
    pub predicate: String,
    /// The sender's reference (string or number); generated when absent.
    #[schema(nullable = false)]
    pub sender_ref: Option<String>,
}

/// Changes to a message; every member optional.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageUpdateRequest {
    /// `accepted` or `rejected` (inbound messages only).
    pub status: Option<String>,
    /// Routing rule id of the channel (string or integer); set together with `channel_txn_id`.
    pub channel_id: Option<String>,
    /// The channel's id for the message (string or integer).
    pub channel_txn_id: Option<String>,
    /// `received`, `confirmed`, `undeliverable` or `revoked`.
    pub channel_status: Option<String>,
}

/// The legacy PATCH path is served by the same handler as the current one
/// (`messages::patch_message`); a handler carries one annotation, so this documents the
/// second path. Never routed.
#[utoipa::path(
    patch,
    path = "/message/{reference}",
    tag = "legacy",
    operation_id = "patch_message_legacy",
    params(("reference" = String, Path, description = "`{sender}:{sender_ref}`")),
    request_body(content = MessageUpdateRequest, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The updated message", body = crate::messages::MessageBody),
        (status = 400, description = "Bad reference or body", body = ErrorResponse),
        (status = 401, description = "Missing or invalid credentials", body = ErrorResponse),
        (status = 403, description = "Not allowed", body = ErrorResponse),
        (status = 404, description = "No such message", body = ErrorResponse),
        (status = 409, description = "Final status or channel already set", body = ErrorResponse),
        (status = 415, description = "Not JSON", body = ErrorResponse),
    )
)]
#[allow(dead_code)]
fn legacy_patch_message() {}

/// Merges the Document API's own document (its paths and schemas), before [`LegacyPaths`]
/// runs so that its legacy paths are marked too.
#[derive(Debug)]
struct DocumentApi;

impl Modify for DocumentApi {
    fn modify(&self, openapi: &mut OpenApiDocument) {
        openapi.merge(crate::documents::DocumentsDoc::openapi());
    }
}

/// Declares the `bearer` security scheme the operations refer to.
#[derive(Debug)]
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApiDocument) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT from the configured issuer, or a static (development) token",
                    ))
                    .build(),
            ),
        );
    }
}

/// Paths that are neither versioned (`/api/…`) nor legacy.
const CURRENT_UNVERSIONED: &[&str] = &["/healthz", "/readyz", "/metrics", "/channel-message/"];

/// Marks the reference's legacy paths (every path outside `/api/` except
/// [`CURRENT_UNVERSIONED`]) deprecated.
#[derive(Debug)]
struct LegacyPaths;

impl LegacyPaths {
    fn is_legacy(path: &str) -> bool {
        !path.starts_with("/api/")
            && !CURRENT_UNVERSIONED
                .iter()
                .any(|current| path == *current || path.starts_with(current))
    }
}

impl Modify for LegacyPaths {
    fn modify(&self, openapi: &mut OpenApiDocument) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !Self::is_legacy(path) {
                continue;
            }
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ];
            for operation in operations.into_iter().flatten() {
                operation.deprecated = Some(Deprecated::True);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_every_api() {
        let document = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let paths = &document["paths"];
        for path in [
            "/api/v1/messages",
            "/api/v1/messages/{reference}",
            "/message",
            "/message/{reference}",
            "/healthz",
            "/readyz",
            "/metrics",
            "/api/v1/admin/dead-letters",
            "/api/v1/admin/dead-letters/{id}/replay",
            "/api/v1/admin/queues",
            "/api/v1/documents",
            "/api/v1/documents/{multihash}",
            "/jurisdictions/{jurisdiction}",
            "/channel-message/{channel_id}",
        ] {
            assert!(paths.get(path).is_some(), "{path} missing");
        }
        assert_eq!(
            paths["/jurisdictions/{jurisdiction}"]["post"]["deprecated"],
            true
        );
        assert_eq!(paths["/message"]["post"]["deprecated"], true);
        assert_eq!(paths["/message/{reference}"]["patch"]["deprecated"], true);
        assert!(
            paths["/api/v1/messages"]["post"]
                .get("deprecated")
                .is_none()
        );
        assert!(paths["/healthz"]["get"].get("deprecated").is_none());
        assert!(
            paths["/channel-message/{channel_id}"]["post"]
                .get("deprecated")
                .is_none()
        );
        assert_eq!(
            document["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        assert!(document["components"]["schemas"]["ErrorResponse"].is_object());
        assert_eq!(
            document["components"]["schemas"]["ErrorObject"]["required"],
            serde_json::json!(["status", "code", "title"])
        );
        let list = &paths["/api/v1/messages"]["get"]["parameters"];
        assert!(
            list.as_array()
                .unwrap()
                .iter()
                .all(|parameter| parameter["in"] == "query"),
            "{list}"
        );
    }

    #[test]
    fn legacy_paths() {
        assert!(LegacyPaths::is_legacy("/message/{reference}"));
        assert!(LegacyPaths::is_legacy("/jurisdictions/{jurisdiction}"));
        assert!(!LegacyPaths::is_legacy("/api/v1/messages"));
        assert!(!LegacyPaths::is_legacy("/metrics"));
        assert!(!LegacyPaths::is_legacy("/channel-message/{channel_id}"));
    }
}
