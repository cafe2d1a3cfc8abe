//! `[auth]`: how callers of the node's HTTP APIs are authenticated.
//!
//! # Default: every request is refused
//!
//! **With the built-in defaults (no `static_tokens`, no `[auth.jwt]`, `anonymous = false`)
//! no caller can authenticate: every request to an authenticated API is answered with
//! `401 Unauthorized`.** This is deliberate (ARCHITECTURE §9: anonymous access is off unless
//! explicitly enabled). Configure at least one of:
//!
//! - `[auth.jwt]`: OAuth2 bearer JWTs from an identity provider (production);
//! - `[[auth.static_tokens]]`: fixed bearer tokens (development, tests); the binary's `--dev`
//!   mode adds a generated one;
//! - `anonymous = true`: requests without credentials act as party `anonymous` of the node's
//!   own jurisdiction (development only).
//!
//! ```toml
//! [auth]
//! anonymous = false
//! insecure_legacy_document_auth = false
//!
//! [[auth.static_tokens]]
//! token = "igl-dev-0123456789abcdef0123456789abcdef"
//! party = "trade-app"
//! jurisdiction = "AU"
//!
//! [auth.jwt]
//! issuer = "https://idp.example.org/realms/igl"
//! audience = ["igl-node"]            # or one string
//! jwks_url = "https://idp.example.org/realms/igl/protocol/openid-connect/certs"
//! # jwks_file = "/etc/igl/jwks.json"   # exactly one of jwks_url, jwks_file, hs256_secret
//! # hs256_secret = "…at least 32 bytes…" # development only
//! jurisdiction_claim = "jurisdiction"
//! party_claim = "sub"
//! leeway_secs = 30
//! jwks_refresh_secs = 3600
//! jwks_timeout_secs = 10
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::error::{ConfigError, ConfigProblem};
use crate::secret::SecretString;

/// Shortest static token accepted, in bytes.
pub const MIN_STATIC_TOKEN_LEN: usize = 16;

/// Shortest `hs256_secret` accepted, in bytes (RFC 7518 §3.2: at least the hash size).
pub const MIN_HS256_SECRET_LEN: usize = 32;

/// Shortest accepted `jwks_refresh_secs`; also the minimum interval between two fetches of
/// the key set triggered by tokens with an unknown `kid`.
pub const MIN_JWKS_REFRESH_SECS: u64 = 60;

/// Largest accepted `leeway_secs`.
pub const MAX_LEEWAY_SECS: u64 = 300;

/// `[auth]`: who may call the node's HTTP APIs.
///
/// **The default accepts nobody: every request to an authenticated API gets `401`.** Open
/// access with at least one of `[auth.jwt]` (production), `[[auth.static_tokens]]`
/// (development; the binary's `--dev` mode adds a generated one) or `anonymous = true`
/// (development). Requests carry `Authorization: Bearer <token>`; the token is checked
/// against the static tokens first, then, when `[auth.jwt]` is set, validated as a JWT.
///
/// ```toml
/// [auth]
/// anonymous = false                       # default
/// insecure_legacy_document_auth = false   # default
///
/// [[auth.static_tokens]]
/// token = "igl-dev-0123456789abcdef0123456789abcdef"
/// party = "trade-app"
/// jurisdiction = "AU"
///
/// [auth.jwt]
/// issuer = "https://idp.example.org/realms/igl"
/// audience = ["igl-node"]                 # or one string
/// jwks_url = "https://idp.example.org/realms/igl/protocol/openid-connect/certs"
/// ```
///
/// `Debug` output is safe to log: tokens and secrets are [`SecretString`]s.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Accept requests **without** an `Authorization` header as party `anonymous` of the node's
    /// own jurisdiction. Development only. Default `false`.
    pub anonymous: bool,
    /// Fixed bearer tokens (`[[auth.static_tokens]]`), for development and tests. Default none.
    pub static_tokens: Vec<StaticTokenSettings>,
    /// Bearer JWT validation (`[auth.jwt]`). Default: off.
    pub jwt: Option<JwtSettings>,
    /// Serve documents to callers identified only by the reference implementation's unsigned
    /// `Authorization: JWTBODY {"jurisdiction": …}` header or `?as_jurisdiction=` query
    /// parameter (REFERENCE-WIRE §2.2). **Insecure**: anyone can claim any jurisdiction. Only
    /// for interoperating with reference nodes. Default `false`.
    pub insecure_legacy_document_auth: bool,
}

impl AuthSettings {
    /// Whether any caller can authenticate at all: `false` for the default, which refuses
    /// every request.
    pub fn accepts_any_caller(&self) -> bool {
        self.anonymous || !self.static_tokens.is_empty() || self.jwt.is_some()
    }

    /// Checks the `[auth]` rules alone and reports all problems, with keys under `auth.`.
    ///
    /// [`Settings::validate`](crate::Settings::validate) includes these problems; call this
    /// when an `AuthSettings` is built in code.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] with one problem per broken rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Every broken rule, in a stable order; messages never contain secret values.
    pub(crate) fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        for (index, token) in self.static_tokens.iter().enumerate() {
            token.check(index, &self.static_tokens[..index], &mut problems);
        }
        if let Some(jwt) = &self.jwt {
            jwt.check(&mut problems);
        }
        problems
    }
}

/// One `[[auth.static_tokens]]` entry: a fixed bearer token and the identity it grants.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticTokenSettings {
    /// The bearer token: printable ASCII without spaces, at least
    /// [`MIN_STATIC_TOKEN_LEN`] bytes, unique. Secret.
    pub token: SecretString,
    /// The party the token identifies (non-empty), e.g. `trade-app`.
    pub party: String,
    /// The party's jurisdiction: an upper-case ISO 3166-1 alpha-2 code.
    pub jurisdiction: String,
}

impl StaticTokenSettings {
    fn check(
        &self,
        index: usize,
        earlier: &[StaticTokenSettings],
        problems: &mut Vec<ConfigProblem>,
    ) {
        let prefix = format!("auth.static_tokens.{index}");
        let token = self.token.expose_secret();
        if token.is_empty() {
            problems.push(ConfigProblem::new(
                format!("{prefix}.token"),
                "must not be empty",
            ));
        } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
            problems.push(ConfigProblem::new(
                format!("{prefix}.token"),
                "must be printable ASCII without spaces",
            ));
        } else if token.len() < MIN_STATIC_TOKEN_LEN {
            problems.push(ConfigProblem::new(
                format!("{prefix}.token"),
                format!("is too short (at least {MIN_STATIC_TOKEN_LEN} characters)"),
            ));
        }
        if !token.is_empty()
            && let Some(first) = earlier.iter().position(|other| other.token == self.token)
        {
            problems.push(ConfigProblem::new(
                format!("{prefix}.token"),
                format!("duplicates auth.static_tokens.{first}.token"),
            ));
        }
        if self.party.trim().is_empty() {
            problems.push(ConfigProblem::new(
                format!("{prefix}.party"),
                "must not be empty",
            ));
        }
        if !is_alpha_2(&self.jurisdiction) {
            problems.push(ConfigProblem::new(
                format!("{prefix}.jurisdiction"),
                format!(
                    "{:?} is not an upper-case ISO 3166-1 alpha-2 code",
                    self.jurisdiction
                ),
            ));
        }
    }
}

/// `[auth.jwt]`: validation of bearer JWTs (OAuth2 client-credentials access tokens).
///
/// A token is accepted when its signature verifies with a configured key, `exp` is in the
/// future and `nbf` (if present) in the past (both with `leeway_secs`), `iss` equals
/// `issuer` and `aud` contains one of `audience`. The caller's party is the
/// `party_claim` and its jurisdiction the `jurisdiction_claim` (a string holding an ISO
/// 3166-1 alpha-2 code); a token without a valid jurisdiction is refused.
///
/// Exactly one key source must be set:
/// - `jwks_url`: the identity provider's JWKS endpoint (`https://`, or `http://` on a
///   loopback host), fetched at start-up, refreshed every `jwks_refresh_secs` and when a
///   token names an unknown `kid` (at most once per minute). Keys: RS256, ES256, EdDSA.
/// - `jwks_file`: a JWKS document on disk, read once at start-up. Same algorithms.
/// - `hs256_secret`: a shared HMAC secret, HS256 only. Development only.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtSettings {
    /// Required `iss` value. Must be set.
    pub issuer: String,
    /// Accepted `aud` values: a string or a list of strings; the token's `aud` must contain
    /// one of them. Must be set. In the environment, one value
    /// (`IGL_AUTH__JWT__AUDIENCE=igl-node`).
    #[serde(deserialize_with = "string_or_list")]
    pub audience: Vec<String>,
    /// Path of a JWKS document (`{"keys": [...]}`) with the verification keys.
    pub jwks_file: Option<PathBuf>,
    /// URL of the JWKS endpoint of the identity provider.
    pub jwks_url: Option<String>,
    /// Shared secret for HS256 tokens, at least [`MIN_HS256_SECRET_LEN`] bytes. Development
    /// only: anyone holding it can mint tokens for any jurisdiction.
    pub hs256_secret: Option<SecretString>,
    /// Maximum age of the fetched key set before it is fetched again, in seconds, at least
    /// [`MIN_JWKS_REFRESH_SECS`]. Only used with `jwks_url`. Default 3600.
    pub jwks_refresh_secs: u64,
    /// Timeout of one JWKS fetch, in seconds, `1..=120`. Only used with `jwks_url`.
    /// Default 10.
    pub jwks_timeout_secs: u64,
    /// Claim holding the caller's jurisdiction. Default `jurisdiction`.
    pub jurisdiction_claim: String,
    /// Claim holding the caller's party (client id). Default `sub`.
    pub party_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds, `0..=300`. Default 30.
    pub leeway_secs: u64,
}

impl Default for JwtSettings {
    fn default() -> Self {
        JwtSettings {
            issuer: String::new(),
            audience: Vec::new(),
            jwks_file: None,
            jwks_url: None,
            hs256_secret: None,
            jwks_refresh_secs: 3600,
            jwks_timeout_secs: 10,
            jurisdiction_claim: "jurisdiction".to_owned(),
            party_claim: "sub".to_owned(),
            leeway_secs: 30,
        }
    }
}

/// The key source selected in `[auth.jwt]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwtKeySource<'a> {
    /// `jwks_file`.
    JwksFile(&'a Path),
    /// `jwks_url`.
    JwksUrl(&'a str),
    /// `hs256_secret`.
    Hs256Secret(&'a SecretString),
}

impl JwtSettings {
    /// The configured key source; `None` unless exactly one is set (validation rejects that).
    pub fn key_source(&self) -> Option<JwtKeySource<'_>> {
        match (&self.jwks_file, &self.jwks_url, &self.hs256_secret) {
            (Some(path), None, None) => Some(JwtKeySource::JwksFile(path)),
            (None, Some(url), None) => Some(JwtKeySource::JwksUrl(url)),
            (None, None, Some(secret)) => Some(JwtKeySource::Hs256Secret(secret)),
            _ => None,
        }
    }

    /// [`JwtSettings::jwks_refresh_secs`] as a [`Duration`].
    pub fn jwks_refresh(&self) -> Duration {
        Duration::from_secs(self.jwks_refresh_secs)
    }

    /// [`JwtSettings::jwks_timeout_secs`] as a [`Duration`].
    pub fn jwks_timeout(&self) -> Duration {
        Duration::from_secs(self.jwks_timeout_secs)
    }

    /// [`JwtSettings::leeway_secs`] as a [`Duration`].
    pub fn leeway(&self) -> Duration {
        Duration::from_secs(self.leeway_secs)
    }

    fn check(&self, problems: &mut Vec<ConfigProblem>) {
        let mut push = |key: &str, message: String| {
            problems.push(ConfigProblem::new(format!("auth.jwt.{key}"), message));
        };
        if self.issuer.trim().is_empty() {
            push("issuer", "must be set".to_owned());
        }
        if self.audience.is_empty() {
            push(
                "audience",
                "must be set (a string or a list of strings)".to_owned(),
            );
        } else if self.audience.iter().any(|aud| aud.trim().is_empty()) {
            push("audience", "must not contain empty values".to_owned());
        }

        let sources: Vec<&str> = [
            ("jwks_file", self.jwks_file.is_some()),
            ("jwks_url", self.jwks_url.is_some()),
            ("hs256_secret", self.hs256_secret.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        if let Some((first, others)) = sources.split_first() {
            for other in others {
                push(
                    other,
                    format!("conflicts with auth.jwt.{first} (set exactly one key source)"),
                );
            }
        }
        if let Some(path) = &self.jwks_file
            && path.as_os_str().is_empty()
        {
            push("jwks_file", "must not be empty".to_owned());
        }
        if let Some(url) = &self.jwks_url
            && let Some(message) = jwks_url_problem(url)
        {
            push("jwks_url", message);
        }
        if let Some(secret) = &self.hs256_secret
            && secret.expose_secret().len() < MIN_HS256_SECRET_LEN
        {
            push(
                "hs256_secret",
                format!("is too short (at least {MIN_HS256_SECRET_LEN} bytes)"),
            );
        }
        if self.jwks_refresh_secs < MIN_JWKS_REFRESH_SECS {
            push(
                "jwks_refresh_secs",
                format!(
                    "{} is out of range (expected at least {MIN_JWKS_REFRESH_SECS})",
                    self.jwks_refresh_secs
                ),
            );
        }
        if !(1..=120).contains(&self.jwks_timeout_secs) {
            push(
                "jwks_timeout_secs",
                format!(
                    "{} is out of range (expected 1..=120)",
                    self.jwks_timeout_secs
                ),
            );
        }
        if self.jurisdiction_claim.trim().is_empty() {
            push("jurisdiction_claim", "must not be empty".to_owned());
        }
        if self.party_claim.trim().is_empty() {
            push("party_claim", "must not be empty".to_owned());
        }
        if self.leeway_secs > MAX_LEEWAY_SECS {
            push(
                "leeway_secs",
                format!(
                    "{} is out of range (expected 0..={MAX_LEEWAY_SECS})",
                    self.leeway_secs
                ),
            );
        }
        // Reported last so that a missing source reads as the conclusion of the section.
        if sources.is_empty() {
            problems.push(ConfigProblem::new(
                "auth.jwt",
                "needs exactly one key source: jwks_url, jwks_file or hs256_secret",
            ));
        }
    }
}

/// Why `url` is not an acceptable JWKS URL.
fn jwks_url_problem(url: &str) -> Option<String> {
    let parsed = match url::Url::parse(url) {
        Ok(parsed) => parsed,
        Err(error) => return Some(format!("is not a valid URL: {error}")),
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Some("must not contain credentials".to_owned());
    }
    match parsed.scheme() {
        "https" => None,
        "http" if is_loopback(&parsed) => None,
        "http" => Some("must use https (http is only allowed for loopback hosts)".to_owned()),
        other => Some(format!("unsupported scheme {other:?} (expected https)")),
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Two upper-case ASCII letters (the domain layer checks the ISO 3166-1 list).
pub(crate) fn is_alpha_2(code: &str) -> bool {
    code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase())
}

/// Deserializes `"a"` or `["a", "b"]` into a list.
fn string_or_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct StringOrList;

    impl<'de> Visitor<'de> for StringOrList {
        type Value = Vec<String>;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("a string or a list of strings")
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
            Ok(vec![value.to_owned()])
        }

        // Lenient loading presents numeric-looking environment values as numbers; an
        // audience such as a numeric client id is still a string.
        fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
            Ok(vec![value.to_string()])
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
            Ok(vec![value.to_string()])
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(1));
            while let Some(value) = seq.next_element::<String>()? {
                values.push(value);
            }
            Ok(values)
        }
    }

    deserializer.deserialize_any(StringOrList)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems_of(auth: &AuthSettings) -> Vec<String> {
        auth.problems().iter().map(ToString::to_string).collect()
    }

    fn token(token: &str, party: &str, jurisdiction: &str) -> StaticTokenSettings {
        StaticTokenSettings {
            token: SecretString::new(token),
            party: party.to_owned(),
            jurisdiction: jurisdiction.to_owned(),
        }
    }

    fn hs256_jwt() -> JwtSettings {
        JwtSettings {
            issuer: "https://idp.example".to_owned(),
            audience: vec!["igl-node".to_owned()],
            hs256_secret: Some(SecretString::new("0123456789abcdef0123456789abcdef")),
            ..JwtSettings::default()
        }
    }

    #[test]
    fn defaults_accept_nobody_and_are_valid() {
        let auth = AuthSettings::default();
        assert!(!auth.anonymous);
        assert!(auth.static_tokens.is_empty());
        assert!(auth.jwt.is_none());
        assert!(!auth.insecure_legacy_document_auth);
        assert!(!auth.accepts_any_caller());
        assert!(auth.validate().is_ok());

        let jwt = JwtSettings::default();
        assert_eq!(jwt.jwks_refresh_secs, 3600);
        assert_eq!(jwt.jwks_timeout_secs, 10);
        assert_eq!(jwt.jurisdiction_claim, "jurisdiction");
        assert_eq!(jwt.party_claim, "sub");
        assert_eq!(jwt.leeway_secs, 30);
        assert_eq!(jwt.key_source(), None);
    }

    #[test]
    fn any_credential_opens_access() {
        let anonymous = AuthSettings {
            anonymous: true,
            ..AuthSettings::default()
        };
        assert!(anonymous.accepts_any_caller());
        let tokens = AuthSettings {
            static_tokens: vec![token("0123456789abcdef", "dev", "AU")],
            ..AuthSettings::default()
        };
        assert!(tokens.accepts_any_caller());
        let jwt = AuthSettings {
            jwt: Some(hs256_jwt()),
            ..AuthSettings::default()
        };
        assert!(jwt.accepts_any_caller());
        assert_eq!(problems_of(&jwt), Vec::<String>::new());
    }

    #[test]
    fn static_token_rules() {
        let auth = AuthSettings {
            static_tokens: vec![
                token("0123456789abcdef", "dev", "AU"),
                token("", " ", "au"),
                token("short", "a", "SG"),
                token("has a space in it!", "b", "SGP"),
                token("0123456789abcdef", "c", "NZ"),
            ],
            ..AuthSettings::default()
        };
        assert_eq!(
            problems_of(&auth),
            [
                "auth.static_tokens.1.token: must not be empty",
                "auth.static_tokens.1.party: must not be empty",
                "auth.static_tokens.1.jurisdiction: \"au\" is not an upper-case ISO 3166-1 alpha-2 code",
                "auth.static_tokens.2.token: is too short (at least 16 characters)",
                "auth.static_tokens.3.token: must be printable ASCII without spaces",
                "auth.static_tokens.3.jurisdiction: \"SGP\" is not an upper-case ISO 3166-1 alpha-2 code",
                "auth.static_tokens.4.token: duplicates auth.static_tokens.0.token",
            ]
        );
    }

    #[test]
    fn jwt_requires_issuer_audience_and_a_key_source() {
        let auth = AuthSettings {
            jwt: Some(JwtSettings::default()),
            ..AuthSettings::default()
        };
        assert_eq!(
            problems_of(&auth),
            [
                "auth.jwt.issuer: must be set",
                "auth.jwt.audience: must be set (a string or a list of strings)",
                "auth.jwt: needs exactly one key source: jwks_url, jwks_file or hs256_secret",
            ]
        );
    }

    #[test]
    fn jwt_allows_exactly_one_key_source() {
        let mut jwt = hs256_jwt();
        jwt.jwks_file = Some(PathBuf::from("/etc/igl/jwks.json"));
        jwt.jwks_url = Some("https://idp.example/jwks".to_owned());
        assert_eq!(jwt.key_source(), None);
        let auth = AuthSettings {
            jwt: Some(jwt),
            ..AuthSettings::default()
        };
        assert_eq!(
            problems_of(&auth),
            [
                "auth.jwt.jwks_url: conflicts with auth.jwt.jwks_file (set exactly one key source)",
                "auth.jwt.hs256_secret: conflicts with auth.jwt.jwks_file (set exactly one key source)",
            ]
        );

        let file = JwtSettings {
            hs256_secret: None,
            jwks_file: Some(PathBuf::from("jwks.json")),
            ..hs256_jwt()
        };
        assert_eq!(
            file.key_source(),
            Some(JwtKeySource::JwksFile(Path::new("jwks.json")))
        );
        let url = JwtSettings {
            hs256_secret: None,
            jwks_url: Some("https://idp.example/jwks".to_owned()),
            ..hs256_jwt()
        };
        assert_eq!(
            url.key_source(),
            Some(JwtKeySource::JwksUrl("https://idp.example/jwks"))
        );
    }

    #[test]
    fn jwt_value_rules() {
        let jwt = JwtSettings {
            audience: vec!["igl".to_owned(), " ".to_owned()],
            hs256_secret: Some(SecretString::new("too-short")),
            jwks_refresh_secs: 59,
            jwks_timeout_secs: 0,
            jurisdiction_claim: String::new(),
            party_claim: " ".to_owned(),
            leeway_secs: 301,
            ..hs256_jwt()
        };
        let auth = AuthSettings {
            jwt: Some(jwt),
            ..AuthSettings::default()
        };
        assert_eq!(
            problems_of(&auth),
            [
                "auth.jwt.audience: must not contain empty values",
                "auth.jwt.hs256_secret: is too short (at least 32 bytes)",
                "auth.jwt.jwks_refresh_secs: 59 is out of range (expected at least 60)",
                "auth.jwt.jwks_timeout_secs: 0 is out of range (expected 1..=120)",
                "auth.jwt.jurisdiction_claim: must not be empty",
                "auth.jwt.party_claim: must not be empty",
                "auth.jwt.leeway_secs: 301 is out of range (expected 0..=300)",
            ]
        );
    }

    #[test]
    fn jwks_url_rules() {
        for good in [
            "https://idp.example/.well-known/jwks.json",
            "http://127.0.0.1:8080/jwks",
            "http://localhost/jwks",
            "http://[::1]:9000/jwks",
        ] {
            assert_eq!(jwks_url_problem(good), None, "{good}");
        }
        let cases = [
            (
                "not a url",
                "is not a valid URL: relative URL without a base",
            ),
            (
                "http://idp.example/jwks",
                "must use https (http is only allowed for loopback hosts)",
            ),
            (
                "ftp://idp.example/jwks",
                "unsupported scheme \"ftp\" (expected https)",
            ),
            (
                "https://user:pw@idp.example/jwks",
                "must not contain credentials",
            ),
        ];
        for (url, expected) in cases {
            assert_eq!(jwks_url_problem(url).as_deref(), Some(expected), "{url}");
        }
        let auth = AuthSettings {
            jwt: Some(JwtSettings {
                hs256_secret: None,
                jwks_url: Some("http://idp.example/jwks".to_owned()),
                ..hs256_jwt()
            }),
            ..AuthSettings::default()
        };
        assert_eq!(
            problems_of(&auth),
            ["auth.jwt.jwks_url: must use https (http is only allowed for loopback hosts)"]
        );
    }

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<crate::Settings, ConfigError> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("igl.toml");
        std::fs::write(&path, toml).expect("write config file");
        let env = env
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()));
        crate::Settings::load(Some(&path), env)
    }

    fn load_problems(toml: &str, env: &[(&str, &str)]) -> Vec<String> {
        let error = load(toml, env).expect_err("configuration should be invalid");
        error.problems().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn loads_the_section_from_a_file() {
        let settings = load(
            r#"
            [auth]
            anonymous = true
            insecure_legacy_document_auth = true

            [[auth.static_tokens]]
            token = "0123456789abcdef-one"
            party = "trade-app"
            jurisdiction = "AU"

            [[auth.static_tokens]]
            token = "0123456789abcdef-two"
            party = "spider"
            jurisdiction = "SG"

            [auth.jwt]
            issuer = "https://idp.example"
            audience = "igl-node"
            jwks_url = "https://idp.example/jwks"
            jwks_refresh_secs = 600
            party_claim = "client_id"
            "#,
            &[],
        )
        .unwrap();
        let auth = &settings.auth;
        assert!(auth.anonymous);
        assert!(auth.insecure_legacy_document_auth);
        assert_eq!(auth.static_tokens.len(), 2);
        assert_eq!(auth.static_tokens[1].party, "spider");
        assert_eq!(
            auth.static_tokens[1].token.expose_secret(),
            "0123456789abcdef-two"
        );
        let jwt = auth.jwt.as_ref().unwrap();
        assert_eq!(jwt.audience, ["igl-node"]);
        assert_eq!(
            jwt.key_source(),
            Some(JwtKeySource::JwksUrl("https://idp.example/jwks"))
        );
        assert_eq!(jwt.jwks_refresh(), Duration::from_secs(600));
        assert_eq!(jwt.party_claim, "client_id");
        assert_eq!(jwt.jurisdiction_claim, "jurisdiction");
        assert_eq!(jwt.leeway(), Duration::from_secs(30));

        let list = load(
            "[auth.jwt]\nissuer = \"i\"\naudience = [\"a\", \"b\"]\njwks_file = \"k.json\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(list.auth.jwt.unwrap().audience, ["a", "b"]);
    }

    #[test]
    fn loads_the_section_from_the_environment() {
        let settings = load(
            "",
            &[
                ("IGL_AUTH__ANONYMOUS", "true"),
                ("IGL_AUTH__JWT__ISSUER", "https://idp.example"),
                ("IGL_AUTH__JWT__AUDIENCE", "igl-node"),
                (
                    "IGL_AUTH__JWT__HS256_SECRET",
                    "env-secret-0123456789abcdef-0123",
                ),
                ("IGL_AUTH__JWT__LEEWAY_SECS", "5"),
            ],
        )
        .unwrap();
        assert!(settings.auth.anonymous);
        let jwt = settings.auth.jwt.as_ref().unwrap();
        assert_eq!(jwt.audience, ["igl-node"]);
        assert_eq!(jwt.leeway_secs, 5);
        assert!(matches!(
            jwt.key_source(),
            Some(JwtKeySource::Hs256Secret(_))
        ));
        let debug = format!("{settings:?}");
        assert!(!debug.contains("env-secret"), "{debug}");
    }

    #[test]
    fn unknown_and_missing_keys_are_named() {
        assert_eq!(
            load_problems("[auth.jwt]\nissuer = \"i\"\naudiences = \"a\"\n", &[])
                .iter()
                .map(|p| p.split(" (from").next().unwrap().to_owned())
                .collect::<Vec<_>>(),
            [
                "auth.jwt.audiences: unknown field \"audiences\" (expected one of: issuer, \
                 audience, jwks_file, jwks_url, hs256_secret, jwks_refresh_secs, \
                 jwks_timeout_secs, jurisdiction_claim, party_claim, leeway_secs)"
            ]
        );
        let missing = load_problems(
            "[[auth.static_tokens]]\ntoken = \"0123456789abcdef\"\nparty = \"p\"\n",
            &[],
        );
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert!(
            missing[0].starts_with("auth.static_tokens.0.jurisdiction: is required"),
            "{missing:?}"
        );
        let wrong_type = load_problems("[auth.jwt]\naudience = true\n", &[]);
        assert!(
            wrong_type[0].starts_with("auth.jwt.audience: ")
                && wrong_type[0].contains("a string or a list of strings"),
            "{wrong_type:?}"
        );
    }

    #[test]
    fn validation_problems_name_key_and_origin() {
        let problems = load_problems(
            "[auth.jwt]\nissuer = \"i\"\naudience = \"a\"\n",
            &[("IGL_AUTH__JWT__LEEWAY_SECS", "999")],
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(
            problems[0],
            "auth.jwt.leeway_secs: 999 is out of range (expected 0..=300) \
             (from environment variable IGL_AUTH__JWT__LEEWAY_SECS)"
        );
        // The section-level problem carries the origin of whichever source set the section
        // last (here the environment), so only its text is checked.
        assert!(
            problems[1].starts_with(
                "auth.jwt: needs exactly one key source: jwks_url, jwks_file or hs256_secret"
            ),
            "{problems:?}"
        );
    }

    #[test]
    fn problems_and_debug_never_contain_secrets() {
        let auth = AuthSettings {
            static_tokens: vec![
                token("static-token-secret-1", "dev", "AU"),
                token("static-token-secret-1", "dev", "XX1"),
            ],
            jwt: Some(JwtSettings {
                hs256_secret: Some(SecretString::new("hs256-secret-value")),
                ..hs256_jwt()
            }),
            ..AuthSettings::default()
        };
        let error = auth.validate().unwrap_err().to_string();
        assert!(!error.contains("static-token-secret-1"), "{error}");
        assert!(!error.contains("hs256-secret-value"), "{error}");
        let debug = format!("{auth:?} {auth:#?}");
        assert!(!debug.contains("static-token-secret-1"), "{debug}");
        assert!(!debug.contains("hs256-secret-value"), "{debug}");
        assert!(debug.contains("[redacted]"), "{debug}");
    }
}
