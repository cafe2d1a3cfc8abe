//! The reference implementation's unsigned "demo auth" of document reads (REFERENCE-WIRE
//! §2.2), for interoperating with reference nodes only.
//!
//! **Insecure**: the identity is a claim, not a credential. Anyone can read every document
//! shared with jurisdiction X by claiming to be X. The Document API calls
//! [`legacy_document_identity`] only when `auth.insecure_legacy_document_auth` is on.

use axum::http::{HeaderMap, StatusCode, header};
use igl_domain::Jurisdiction;
use serde_json::Value;

use crate::error::ApiError;

/// The literal that starts a legacy identity header: `Authorization: JWTBODY {json}`.
pub const JWTBODY_SCHEME: &str = "JWTBODY";

/// How many characters after `JWTBODY` are parsed (the rest is ignored, as in the
/// reference).
pub const JWTBODY_MAX_CHARS: usize = 2048;

/// Why a legacy document identity is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LegacyIdentityError {
    /// `Authorization: JWTBODY …` whose content is not JSON. The reference answers 401.
    #[error("invalid auth format: the JWTBODY header is not JSON")]
    InvalidJwtBody,
    /// The claimed jurisdiction (`jurisdiction` of the JWTBODY, or `as_jurisdiction`) is not
    /// an ISO 3166-1 alpha-2 code. The reference answers 400 `bad-jurisdiction-name-error`.
    #[error("received invalid/unknown jurisdiction name: {reason}")]
    BadJurisdiction {
        /// Why the value is rejected (it quotes the value, which is not secret).
        reason: String,
    },
}

impl LegacyIdentityError {
    /// The reference's HTTP status: 401 for an unparsable `JWTBODY`, 400 for a bad
    /// jurisdiction.
    pub fn status_code(&self) -> StatusCode {
        match self {
            LegacyIdentityError::InvalidJwtBody => StatusCode::UNAUTHORIZED,
            LegacyIdentityError::BadJurisdiction { .. } => StatusCode::BAD_REQUEST,
        }
    }
}

/// The reference's error bodies: 401 `generic-http-error`, or 400
/// `bad-jurisdiction-name-error` with detail `Received invalid/unknown jurisdiction name` and
/// the reason as `source`.
impl From<LegacyIdentityError> for ApiError {
    fn from(error: LegacyIdentityError) -> Self {
        match error {
            LegacyIdentityError::InvalidJwtBody => ApiError::unauthorized("Invalid auth format"),
            LegacyIdentityError::BadJurisdiction { reason } => {
                ApiError::new(StatusCode::BAD_REQUEST, "bad-jurisdiction-name-error")
                    .with_detail("Received invalid/unknown jurisdiction name")
                    .with_source(serde_json::json!([reason]))
            }
        }
    }
}

/// The jurisdiction a document reader claims, exactly as the reference reads it
/// (REFERENCE-WIRE §2.2, `demoauth.py` + `documents.py`):
///
/// 1. `Authorization: JWTBODY {json}` (after trimming; the first 2048 characters after the
///    literal `JWTBODY` are parsed as JSON): an unparsable body is
///    [`LegacyIdentityError::InvalidJwtBody`]; an object with a `jurisdiction` key gives that
///    jurisdiction (a non-string or invalid code is
///    [`LegacyIdentityError::BadJurisdiction`]); any other JSON falls through to 2.
/// 2. Otherwise (no header, `Bearer …`, any other scheme) the `as_jurisdiction` query value,
///    if given; an invalid code is [`LegacyIdentityError::BadJurisdiction`].
/// 3. Neither: `Ok(None)`; the reference then answers 400 `bad-jurisdiction-name-error`,
///    the caller decides.
///
/// **Insecure** (see the module documentation); never treat the result as
/// authenticated outside document reads with `auth.insecure_legacy_document_auth` on.
///
/// # Errors
///
/// See above; [`LegacyIdentityError::status_code`] gives the reference's status and the
/// `From` impl the reference's error body.
pub fn legacy_document_identity(
    headers: &HeaderMap,
    as_jurisdiction: Option<&str>,
) -> Result<Option<Jurisdiction>, LegacyIdentityError> {
    if let Some(claimed) = jwtbody_jurisdiction(headers)? {
        return parse(claimed).map(Some);
    }
    as_jurisdiction
        .map(|code| parse(Value::from(code)))
        .transpose()
}

/// The `jurisdiction` value of a `JWTBODY` header, if there is one.
fn jwtbody_jurisdiction(headers: &HeaderMap) -> Result<Option<Value>, LegacyIdentityError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bytes = value.as_bytes().trim_ascii();
    let Some(rest) = bytes.strip_prefix(JWTBODY_SCHEME.as_bytes()) else {
        return Ok(None);
    };
    let rest = std::str::from_utf8(rest).map_err(|_| LegacyIdentityError::InvalidJwtBody)?;
    let content: String = rest.chars().take(JWTBODY_MAX_CHARS).collect();
    let body: Value =
        serde_json::from_str(&content).map_err(|_| LegacyIdentityError::InvalidJwtBody)?;
    match body {
        Value::Object(mut claims) => Ok(claims.remove("jurisdiction")),
        _ => Ok(None),
    }
}

fn parse(value: Value) -> Result<Jurisdiction, LegacyIdentityError> {
    match value {
        Value::String(code) => {
            Jurisdiction::parse(&code).map_err(|error| LegacyIdentityError::BadJurisdiction {
                reason: error.to_string(),
            })
        }
        other => Err(LegacyIdentityError::BadJurisdiction {
            reason: format!("{other} is not a string"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use axum::response::IntoResponse;

    use super::*;

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn jurisdiction(code: &str) -> Option<Jurisdiction> {
        Some(Jurisdiction::parse(code).unwrap())
    }

    #[test]
    fn jwtbody_wins_over_as_jurisdiction() {
        let spider = headers(Some(
            r#"JWTBODY {"sub":"documents-api","party":"spider","jurisdiction":"SG"}"#,
        ));
        assert_eq!(
            legacy_document_identity(&spider, None),
            Ok(jurisdiction("SG"))
        );
        assert_eq!(
            legacy_document_identity(&spider, Some("AU")),
            Ok(jurisdiction("SG"))
        );
        // No space after the literal, surrounding whitespace: accepted like the reference.
        let tight = headers(Some(r#"  JWTBODY{"jurisdiction":"NZ"}  "#));
        assert_eq!(
            legacy_document_identity(&tight, None),
            Ok(jurisdiction("NZ"))
        );
    }

    #[test]
    fn jwtbody_that_is_not_json_is_401() {
        for value in ["JWTBODY {not json", "JWTBODY", "JWTBODY   "] {
            let error = legacy_document_identity(&headers(Some(value)), Some("AU")).unwrap_err();
            assert_eq!(error, LegacyIdentityError::InvalidJwtBody, "{value}");
            assert_eq!(error.status_code(), StatusCode::UNAUTHORIZED);
        }
    }

    #[test]
    fn only_the_first_2048_characters_are_parsed() {
        let padded = format!(
            r#"JWTBODY {{"jurisdiction":"SG","pad":"{}"}}"#,
            "x".repeat(2048)
        );
        assert_eq!(
            legacy_document_identity(&headers(Some(&padded)), None),
            Err(LegacyIdentityError::InvalidJwtBody)
        );
        let body = r#"{"jurisdiction":"SG"}"#;
        let exact = format!("JWTBODY{}{body}", " ".repeat(2048 - body.len()));
        assert_eq!(
            legacy_document_identity(&headers(Some(&exact)), None),
            Ok(jurisdiction("SG"))
        );
    }

    #[test]
    fn jwtbody_without_jurisdiction_falls_through() {
        for value in [
            r#"JWTBODY {"sub":"x"}"#,
            "JWTBODY {}",
            "JWTBODY []",
            "JWTBODY null",
        ] {
            assert_eq!(
                legacy_document_identity(&headers(Some(value)), Some("AU")),
                Ok(jurisdiction("AU")),
                "{value}"
            );
            assert_eq!(
                legacy_document_identity(&headers(Some(value)), None),
                Ok(None)
            );
        }
    }

    #[test]
    fn other_authorization_values_fall_through_to_as_jurisdiction() {
        for value in ["Bearer abc.def.ghi", "Basic dXNlcjpwdw==", "jwtbody {}"] {
            assert_eq!(
                legacy_document_identity(&headers(Some(value)), Some("SG")),
                Ok(jurisdiction("SG")),
                "{value}"
            );
        }
        assert_eq!(
            legacy_document_identity(&headers(None), Some("AU")),
            Ok(jurisdiction("AU"))
        );
    }

    #[test]
    fn missing_both_is_none() {
        assert_eq!(legacy_document_identity(&headers(None), None), Ok(None));
        assert_eq!(
            legacy_document_identity(&headers(Some("Bearer x")), None),
            Ok(None)
        );
    }

    #[test]
    fn bad_jurisdictions_are_400() {
        let cases = [
            (Some(r#"JWTBODY {"jurisdiction":"sg"}"#), None),
            (Some(r#"JWTBODY {"jurisdiction":"XX"}"#), Some("AU")),
            (Some(r#"JWTBODY {"jurisdiction":12}"#), Some("AU")),
            (Some(r#"JWTBODY {"jurisdiction":null}"#), None),
            (None, Some("sg")),
            (None, Some("ZZ")),
            (Some("Bearer x"), Some("")),
        ];
        for (authorization, query) in cases {
            let error = legacy_document_identity(&headers(authorization), query).unwrap_err();
            assert!(
                matches!(error, LegacyIdentityError::BadJurisdiction { .. }),
                "{authorization:?} {query:?}: {error:?}"
            );
            assert_eq!(error.status_code(), StatusCode::BAD_REQUEST);
        }
    }

    #[tokio::test]
    async fn errors_render_like_the_reference() {
        let response = ApiError::from(LegacyIdentityError::BadJurisdiction {
            reason: "\"sg\" is not a two-letter upper-case code".to_owned(),
        })
        .into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let json: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["errors"][0]["code"], "bad-jurisdiction-name-error");
        assert_eq!(
            json["errors"][0]["detail"],
            "Received invalid/unknown jurisdiction name"
        );

        let response = ApiError::from(LegacyIdentityError::InvalidJwtBody).into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
}
