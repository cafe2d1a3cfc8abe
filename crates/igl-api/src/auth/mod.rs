//! Who is calling: authentication of API callers (ARCHITECTURE §9).
//!
//! An [`Authenticator`] turns the request headers into a [`Caller`] (a party of a
//! jurisdiction) or an [`AuthError`] (401). Handlers take `Caller` as an extractor; what a
//! caller may do is decided by the handler (e.g. a B2G caller may only post messages whose
//! sender is the node's own jurisdiction).
//!
//! Credentials, in the order they are tried:
//! 1. no `Authorization` header: the anonymous caller when `auth.anonymous` is on, else 401;
//! 2. `Authorization: Bearer <token>`: a static token from the configuration (compared in
//!    constant time), then, when `[auth.jwt]` is configured, a JWT (signature, `exp`, `nbf`,
//!    `iss`, `aud`; party and jurisdiction from configurable claims);
//! 3. anything else: 401.
//!
//! **With the default configuration nobody can authenticate**: every request is refused
//! with 401 ([`Authenticator::accepts_any_caller`] tells the composition root to warn).
//!
//! The reference implementation's unsigned document identity (`JWTBODY` /
//! `?as_jurisdiction=`) is not a credential of this authenticator: the Document API calls
//! [`legacy_document_identity`] itself, and only when `auth.insecure_legacy_document_auth`
//! is on.
//!
//! Tokens and secrets are never logged, never echoed in errors, and redacted in `Debug`.

mod jwks;
mod jwt;
mod legacy;
mod static_tokens;

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use igl_config::{AuthSettings, ConfigError};
use igl_domain::Jurisdiction;
use rand::RngCore;

use crate::error::ApiError;
use crate::state::AppState;

pub use legacy::{LegacyIdentityError, legacy_document_identity};

use jwt::JwtVerifier;
use static_tokens::StaticTokens;

/// The party name of callers admitted without credentials.
pub const ANONYMOUS_PARTY: &str = "anonymous";

/// The party name of callers identified by [`legacy_document_identity`].
pub const LEGACY_DOCUMENT_PARTY: &str = "legacy-document-reader";

/// Prefix of the tokens made by [`generate_dev_token`].
pub const DEV_TOKEN_PREFIX: &str = "igl-dev-";

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

impl Caller {
    /// The caller of a document read identified only by [`legacy_document_identity`]
    /// (party [`LEGACY_DOCUMENT_PARTY`], method [`AuthMethod::LegacyDocumentIdentity`]).
    pub fn legacy_document_reader(jurisdiction: Jurisdiction) -> Caller {
        Caller {
            party: LEGACY_DOCUMENT_PARTY.to_owned(),
            jurisdiction,
            method: AuthMethod::LegacyDocumentIdentity,
        }
    }
}

/// How a [`Caller`] was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// A static development token from the configuration.
    StaticToken,
    /// A bearer JWT validated against the configured issuer and keys.
    Jwt,
    /// No credentials; allowed only when anonymous access is enabled.
    Anonymous,
    /// The reference implementation's unsigned `JWTBODY` header or `?as_jurisdiction=`
    /// parameter on document reads; insecure, only with
    /// `auth.insecure_legacy_document_auth`. Set by the Document API, never by
    /// [`Authenticator::authenticate`].
    LegacyDocumentIdentity,
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

/// Why a request is not authenticated. Every variant is a 401; the message is the
/// response's `detail` and never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header and anonymous access is off.
    #[error("missing bearer token")]
    Missing,
    /// The header is not `Bearer <token>`.
    #[error("the authorization header is not a bearer token")]
    NotBearer,
    /// The header is `Bearer` but its value is unusable (empty, not ASCII, spaces).
    #[error("malformed bearer token: {0}")]
    Malformed(&'static str),
    /// The token is neither a configured static token nor (with JWT validation off) a JWT.
    #[error("invalid token")]
    Invalid,
    /// The token looks like a JWT but cannot be decoded.
    #[error("invalid token: {0}")]
    MalformedJwt(String),
    /// The JWT's `exp` is in the past (beyond the leeway).
    #[error("invalid token: expired")]
    Expired,
    /// The JWT's `nbf` is in the future (beyond the leeway).
    #[error("invalid token: not valid yet")]
    NotYetValid,
    /// The JWT's `iss` is not the configured issuer.
    #[error("invalid token: issuer is not accepted")]
    WrongIssuer,
    /// The JWT's `aud` contains none of the configured audiences.
    #[error("invalid token: audience is not accepted")]
    WrongAudience,
    /// The JWT's signature does not verify.
    #[error("invalid token: bad signature")]
    BadSignature,
    /// The JWT is signed with an algorithm that is not accepted (for this key).
    #[error("invalid token: algorithm {0} is not accepted")]
    AlgorithmNotAccepted(String),
    /// No configured key matches the JWT's `kid`.
    #[error("invalid token: signed with an unknown key")]
    UnknownKey,
    /// A required claim is missing or not a string.
    #[error("invalid token: no valid {0:?} claim")]
    MissingClaim(String),
    /// The jurisdiction claim is not an ISO 3166-1 alpha-2 code.
    #[error("invalid token: claim {claim:?} is not a valid jurisdiction: {reason}")]
    BadJurisdiction {
        /// The claim's name.
        claim: String,
        /// Why its value is not a jurisdiction.
        reason: String,
    },
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        ApiError::unauthorized(error.to_string())
    }
}

/// Why an [`Authenticator`] cannot be built from the settings.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// The `[auth]` settings break a rule of
    /// [`AuthSettings::validate`](igl_config::AuthSettings::validate).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A static token's jurisdiction is not an ISO 3166-1 alpha-2 code.
    #[error("auth.static_tokens.{index}.jurisdiction: {source}")]
    StaticTokenJurisdiction {
        /// Position in `auth.static_tokens`.
        index: usize,
        /// Why the code is rejected.
        #[source]
        source: igl_domain::JurisdictionError,
    },
    /// The JWKS file cannot be read.
    #[error("cannot read JWKS file {}", path.display())]
    ReadJwksFile {
        /// The configured path.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A JWKS document is not usable.
    #[error("invalid JWKS {origin}: {reason}")]
    InvalidJwks {
        /// `file <path>` or `from <url>`.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// The JWKS URL could not be fetched at start-up.
    #[error("cannot fetch JWKS from {url}: {reason}")]
    FetchJwks {
        /// The configured URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The HTTP client for the JWKS URL cannot be built.
    #[error("cannot build the HTTP client for the JWKS URL")]
    HttpClient(#[source] reqwest::Error),
}

/// Timing of JWKS URL fetches; tests shorten it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JwksTiming {
    /// Minimum interval between two fetches (refresh on unknown `kid`, retries after a
    /// failed refresh).
    pub(crate) min_interval: Duration,
}

impl Default for JwksTiming {
    fn default() -> Self {
        JwksTiming {
            min_interval: Duration::from_secs(igl_config::MIN_JWKS_REFRESH_SECS),
        }
    }
}

/// Validates callers' credentials. Cheap to clone (the JWT key cache is shared).
#[derive(Clone)]
pub struct Authenticator {
    static_tokens: StaticTokens,
    jwt: Option<Arc<JwtVerifier>>,
    anonymous: Option<Caller>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("static_tokens", &self.static_tokens)
            .field("jwt", &self.jwt)
            .field("anonymous", &self.anonymous)
            .finish()
    }
}

impl Authenticator {
    /// An authenticator accepting `static_tokens`, and anonymous callers as
    /// `anonymous_jurisdiction` when that is `Some`; no JWT validation.
    pub fn new(
        static_tokens: Vec<StaticToken>,
        anonymous_jurisdiction: Option<Jurisdiction>,
    ) -> Self {
        Self {
            static_tokens: StaticTokens::new(static_tokens),
            jwt: None,
            anonymous: anonymous_jurisdiction.map(|jurisdiction| Caller {
                party: ANONYMOUS_PARTY.into(),
                jurisdiction,
                method: AuthMethod::Anonymous,
            }),
        }
    }

    /// The authenticator described by `[auth]`; `own` is the node's jurisdiction (that of
    /// anonymous callers).
    ///
    /// A `jwks_file` is read and a `jwks_url` fetched now, so that a wrong path, URL or key
    /// set stops start-up instead of refusing every caller later.
    ///
    /// # Errors
    ///
    /// [`AuthSetupError`] naming the setting or the key set at fault.
    pub async fn from_settings(
        settings: &AuthSettings,
        own: Jurisdiction,
    ) -> Result<Self, AuthSetupError> {
        Self::from_settings_with(settings, own, JwksTiming::default()).await
    }

    pub(crate) async fn from_settings_with(
        settings: &AuthSettings,
        own: Jurisdiction,
        timing: JwksTiming,
    ) -> Result<Self, AuthSetupError> {
        settings.validate()?;
        let mut tokens = Vec::with_capacity(settings.static_tokens.len());
        for (index, token) in settings.static_tokens.iter().enumerate() {
            let jurisdiction = Jurisdiction::parse(&token.jurisdiction)
                .map_err(|source| AuthSetupError::StaticTokenJurisdiction { index, source })?;
            tokens.push(StaticToken {
                token: token.token.expose_secret().to_owned(),
                party: token.party.clone(),
                jurisdiction,
            });
        }
        let mut authenticator = Self::new(tokens, settings.anonymous.then_some(own));
        if let Some(jwt) = &settings.jwt {
            authenticator.jwt = Some(Arc::new(JwtVerifier::from_settings(jwt, timing).await?));
        }
        Ok(authenticator)
    }

    /// Adds a static token (e.g. the generated token of the binary's `--dev` mode).
    pub fn with_static_token(mut self, token: StaticToken) -> Self {
        self.static_tokens.push(token);
        self
    }

    /// Whether any caller can authenticate at all. `false` means every request will be
    /// refused with 401: the composition root should warn loudly.
    pub fn accepts_any_caller(&self) -> bool {
        self.anonymous.is_some() || !self.static_tokens.is_empty() || self.jwt.is_some()
    }

    /// Authenticates a request by its headers.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        let result = self.authenticate_inner(headers).await;
        if let Err(error) = &result {
            tracing::debug!(reason = %error, "request not authenticated");
        }
        result
    }

    async fn authenticate_inner(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return self.anonymous.clone().ok_or(AuthError::Missing);
        };
        let token = bearer_token(value.as_bytes())?;
        if let Some(known) = self.static_tokens.find(token) {
            return Ok(Caller {
                party: known.party.clone(),
                jurisdiction: known.jurisdiction,
                method: AuthMethod::StaticToken,
            });
        }
        match &self.jwt {
            Some(verifier) if looks_like_jwt(token) => verifier.verify(token).await,
            _ => Err(AuthError::Invalid),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive,
/// RFC 7235 §2.1).
fn bearer_token(value: &[u8]) -> Result<&str, AuthError> {
    const SCHEME: &[u8] = b"bearer";
    let value = value.trim_ascii();
    let is_bearer = value.len() > SCHEME.len()
        && value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME)
        && value[SCHEME.len()] == b' ';
    let is_bare_scheme = value.eq_ignore_ascii_case(SCHEME);
    if is_bare_scheme {
        return Err(AuthError::Malformed("the token is empty"));
    }
    if !is_bearer {
        return Err(AuthError::NotBearer);
    }
    let token = value[SCHEME.len()..].trim_ascii();
    if token.is_empty() {
        return Err(AuthError::Malformed("the token is empty"));
    }
    if !token.iter().all(u8::is_ascii_graphic) {
        return Err(AuthError::Malformed(
            "the token must be printable ASCII without spaces",
        ));
    }
    // All bytes are ASCII, so this cannot fail.
    std::str::from_utf8(token).map_err(|_| AuthError::Malformed("the token is not ASCII"))
}

/// Three non-empty segments separated by dots (the JWS compact serialization).
fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3 && token.split('.').all(|part| !part.is_empty())
}

/// A new random development token: `igl-dev-` followed by 64 hex digits (32 bytes from
/// `rand`'s thread-local CSPRNG, seeded by the operating system).
pub fn generate_dev_token() -> String {
    use std::fmt::Write as _;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let mut token = String::with_capacity(DEV_TOKEN_PREFIX.len() + 64);
    token.push_str(DEV_TOKEN_PREFIX);
    for byte in bytes {
        let _ = write!(token, "{byte:02x}");
    }
    token
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(state.auth.authenticate(&parts.headers).await?)
    }
}
