//! Who is calling: bearer-token authentication of API callers.
//!
//! An [`Authenticator`] turns the request headers into a [`Caller`] (a party of a
//! jurisdiction) or an [`AuthError`] (401). Handlers take `Caller` as an extractor; what a
//! caller may do is decided by the handler (e.g. a B2G caller may only post messages whose
//! sender is the node's own jurisdiction).

use std::collections::HashMap;
use std::fmt;

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use igl_domain::Jurisdiction;

use crate::error::ApiError;
use crate::state::AppState;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The party (client id, subject) that called.
    pub party: String,
    /// The jurisdiction the party acts for.
    pub jurisdiction: Jurisdiction,
    /// How the caller was authenticated.
    pub method: AuthMethod,
}

/// How a [`Caller`] was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// A static development token from the configuration.
    StaticToken,
    /// No credentials; allowed only when anonymous access is enabled.
    Anonymous,
}

/// A static token's identity.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticToken {
    /// The bearer token value (secret).
    pub token: String,
    /// The party it identifies.
    pub party: String,
    /// The party's jurisdiction.
    pub jurisdiction: Jurisdiction,
}

impl fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticToken")
            .field("token", &"[redacted]")
            .field("party", &self.party)
            .field("jurisdiction", &self.jurisdiction)
            .finish()
    }
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header and anonymous access is off.
    #[error("missing bearer token")]
    Missing,
    /// The header is not `Bearer <token>`.
    #[error("the authorization header is not a bearer token")]
    NotBearer,
    /// The token is unknown or invalid.
    #[error("invalid token")]
    Invalid,
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        ApiError::unauthorized(error.to_string())
    }
}

/// Validates callers' credentials.
#[derive(Debug, Clone)]
pub struct Authenticator {
    static_tokens: HashMap<String, StaticToken>,
    anonymous: Option<Caller>,
}

impl Authenticator {
    /// An authenticator accepting `static_tokens`, and anonymous callers as
    /// `anonymous_jurisdiction` when that is `Some`.
    pub fn new(
        static_tokens: Vec<StaticToken>,
        anonymous_jurisdiction: Option<Jurisdiction>,
    ) -> Self {
        Self {
            static_tokens: static_tokens
                .into_iter()
                .map(|t| (t.token.clone(), t))
                .collect(),
            anonymous: anonymous_jurisdiction.map(|jurisdiction| Caller {
                party: "anonymous".into(),
                jurisdiction,
                method: AuthMethod::Anonymous,
            }),
        }
    }

    /// Authenticates a request by its headers.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
            return self.anonymous.clone().ok_or(AuthError::Missing);
        };
        let value = value.to_str().map_err(|_| AuthError::NotBearer)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(AuthError::NotBearer)?
            .trim();
        let known = self.static_tokens.get(token).ok_or(AuthError::Invalid)?;
        Ok(Caller {
            party: known.party.clone(),
            jurisdiction: known.jurisdiction,
            method: AuthMethod::StaticToken,
        })
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(state.auth.authenticate(&parts.headers).await?)
    }
}
