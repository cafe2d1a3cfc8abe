//! The one error body of every API, compatible with the reference (REFERENCE-WIRE §2.0):
//!
//! ```json
//! {"errors":[{"status":"Bad Request","code":"message-validation-error",
//!             "title":"Message Validation Error","detail":"Unable to validate the posted message",
//!             "source":["obj is not a URI: foo"]}]}
//! ```
//! `status` is the HTTP reason phrase, `code` a stable kebab-case identifier, `title` the
//! code in words; `detail` and `source` are optional. Additive members (`meta`) carry
//! machine-readable details where the reference had none. 5xx responses never carry
//! internal details: the cause is logged once, with the request's span.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

/// An error response.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable kebab-case code (`message-validation-error`, `generic-http-error`, …).
    pub code: &'static str,
    /// Human title; the code in words unless given.
    pub title: String,
    /// Explanation.
    pub detail: Option<String>,
    /// Where the problem is (a list of strings or objects, as the reference uses it).
    pub source: Option<Value>,
    /// Additional machine-readable details (not in the reference; additive).
    pub meta: Option<Value>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    errors: [ErrorObject<'a>; 1],
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    status: &'a str,
    code: &'a str,
    title: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<&'a Value>,
}

/// `message-validation-error` → `Message Validation Error`.
fn title_of(code: &str) -> String {
    code.split('-')
        .map(|word| {
            let mut chars = word.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect::<String>(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl ApiError {
    /// An error with `code`, titled after the code.
    pub fn new(status: StatusCode, code: &'static str) -> Self {
        Self {
            status,
            code,
            title: title_of(code),
            detail: None,
            source: None,
            meta: None,
        }
    }

    /// A `generic-http-error` titled with the status's reason phrase (the reference's
    /// rendering of HTTP-level and use-case errors).
    pub fn generic(status: StatusCode) -> Self {
        let title = status.canonical_reason().unwrap_or("Error").to_owned();
        Self {
            title,
            ..Self::new(status, "generic-http-error")
        }
    }

    /// Sets the title.
    pub fn with_title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    /// Sets the detail.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Sets the source.
    pub fn with_source(mut self, source: Value) -> Self {
        self.source = Some(source);
        self
    }

    /// Sets the meta member.
    pub fn with_meta(mut self, meta: Value) -> Self {
        self.meta = Some(meta);
        self
    }

    /// 400 `generic-http-error` with a detail.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::generic(StatusCode::BAD_REQUEST).with_detail(detail)
    }

    /// 401: no or invalid credentials.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::generic(StatusCode::UNAUTHORIZED).with_detail(detail)
    }

    /// 403: authenticated but not allowed.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::generic(StatusCode::FORBIDDEN).with_detail(detail)
    }

    /// 404 with a detail.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::generic(StatusCode::NOT_FOUND).with_detail(detail)
    }

    /// 409 with a detail.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::generic(StatusCode::CONFLICT).with_detail(detail)
    }

    /// 415 for a body that is not one of `expected` (the reference's exact wording).
    pub fn unsupported_media_type(got: &str, expected: &[&str]) -> Self {
        let list = expected
            .iter()
            .map(|e| format!("'{e}'"))
            .collect::<Vec<_>>()
            .join(", ");
        Self::generic(StatusCode::UNSUPPORTED_MEDIA_TYPE)
            .with_detail(format!(
                "Unsupported mimetype. Value: \"{got}\". Value must be one of [{list}]."
            ))
            .with_source(serde_json::json!({"value": got, "include": expected, "exclude": []}))
    }

    /// 500 without internal details; log the cause before returning this.
    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal-server-error")
            .with_detail("Unexpected server error occurred.")
    }

    /// 503: a dependency is unavailable; the client may retry.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "service-unavailable-error").with_detail(detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status.canonical_reason().unwrap_or("Error");
        let body = ErrorBody {
            errors: [ErrorObject {
                status,
                code: self.code,
                title: &self.title,
                detail: self.detail.as_deref(),
                source: self.source.as_ref(),
                meta: self.meta.as_ref(),
            }],
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = (self.status, bytes).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// Maps storage failures: transient ones to 503, everything else to a logged 500.
impl From<igl_core::StoreError> for ApiError {
    fn from(error: igl_core::StoreError) -> Self {
        if error.is_transient() {
            tracing::warn!(error = %error, cause = ?std::error::Error::source(&error), "storage unavailable");
            return Self::unavailable("storage is temporarily unavailable, retry later");
        }
        tracing::error!(error = %error, cause = ?std::error::Error::source(&error), "storage failure");
        Self::internal()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_the_code_in_words() {
        assert_eq!(
            title_of("message-validation-error"),
            "Message Validation Error"
        );
    }

    #[tokio::test]
    async fn body_has_the_reference_shape() {
        let response = ApiError::new(StatusCode::BAD_REQUEST, "message-validation-error")
            .with_detail("Unable to validate the posted message")
            .with_source(serde_json::json!(["obj is not a URI: foo"]))
            .into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let json: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"errors": [{
                "status": "Bad Request", "code": "message-validation-error",
                "title": "Message Validation Error",
                "detail": "Unable to validate the posted message",
                "source": ["obj is not a URI: foo"]}]})
        );
    }

    #[tokio::test]
    async fn unsupported_media_type_matches_the_reference() {
        let response =
            ApiError::unsupported_media_type("text/plain", &["application/json"]).into_response();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let json: Value = serde_json::from_slice(&body).unwrap();
        let error = &json["errors"][0];
        assert_eq!(error["title"], "Unsupported Media Type");
        assert_eq!(
            error["detail"],
            "Unsupported mimetype. Value: \"text/plain\". Value must be one of ['application/json']."
        );
        assert_eq!(
            error["source"]["include"],
            serde_json::json!(["application/json"])
        );
    }
}
