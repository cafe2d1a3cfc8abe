//! JSON Web Key Sets: parsing into verification keys, and the cached remote key set.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use super::{AuthSetupError, JwksTiming};

/// Algorithms accepted for keys from a JWKS.
pub(super) const JWKS_ALGORITHMS: [Algorithm; 3] =
    [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// Smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// Largest JWKS document accepted from a URL.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// A key that verifies one algorithm.
#[derive(Clone)]
pub(super) struct VerifyingKey {
    pub(super) kid: Option<String>,
    pub(super) algorithm: Algorithm,
    pub(super) key: DecodingKey,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Why no key could be selected for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyLookup {
    /// No key has the token's `kid` (or, without `kid`, no single key fits).
    Unknown,
    /// The key exists but is for another algorithm.
    AlgorithmMismatch,
}

/// The usable signing keys of a JWKS.
#[derive(Clone, Debug, Default)]
pub(super) struct KeySet {
    keys: Vec<VerifyingKey>,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

impl KeySet {
    /// Parses a JWKS document, keeping the keys usable for signature verification with
    /// RS256 (RSA of at least 2048 bits), ES256 (P-256) or EdDSA (Ed25519). Other keys
    /// (encryption keys, symmetric keys, other algorithms) are skipped.
    ///
    /// # Errors
    ///
    /// A reason when the document is not a JWKS or holds no usable key.
    pub(super) fn from_json(bytes: &[u8]) -> Result<KeySet, String> {
        let raw: RawJwks = serde_json::from_slice(bytes)
            .map_err(|error| format!("not a JWKS document ({{\"keys\": [...]}}): {error}"))?;
        let mut keys: Vec<VerifyingKey> = Vec::with_capacity(raw.keys.len());
        for (index, value) in raw.keys.into_iter().enumerate() {
            let jwk: Jwk = match serde_json::from_value(value) {
                Ok(jwk) => jwk,
                Err(error) => {
                    tracing::debug!(index, %error, "skipping unparsable JWKS key");
                    continue;
                }
            };
            match usable_key(&jwk) {
                Ok(key) => {
                    if key.kid.is_some() && keys.iter().any(|known| known.kid == key.kid) {
                        tracing::warn!(kid = ?key.kid, "skipping JWKS key with a duplicate kid");
                        continue;
                    }
                    keys.push(key);
                }
                Err(reason) => {
                    tracing::debug!(index, kid = ?jwk.common.key_id, reason, "skipping JWKS key");
                }
            }
        }
        if keys.is_empty() {
            return Err("no usable signing key (RS256, ES256 or EdDSA)".to_owned());
        }
        Ok(KeySet { keys })
    }

    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The key for a token with header `kid` and `alg`.
    ///
    /// With a `kid`, the key with that id. Without one, the only key for `alg`.
    pub(super) fn find(
        &self,
        kid: Option<&str>,
        algorithm: Algorithm,
    ) -> Result<&VerifyingKey, KeyLookup> {
        let key = match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|key| key.kid.as_deref() == Some(kid))
                .ok_or(KeyLookup::Unknown)?,
            None => {
                let mut candidates = self.keys.iter().filter(|key| key.algorithm == algorithm);
                match (candidates.next(), candidates.next()) {
                    (Some(only), None) => only,
                    _ => return Err(KeyLookup::Unknown),
                }
            }
        };
        if key.algorithm == algorithm {
            Ok(key)
        } else {
            Err(KeyLookup::AlgorithmMismatch)
        }
    }
}

/// The verification key of `jwk`, or why it is not usable.
fn usable_key(jwk: &Jwk) -> Result<VerifyingKey, &'static str> {
    let common = &jwk.common;
    if matches!(
        common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return Err("not a signature key (use)");
    }
    if let Some(operations) = &common.key_operations
        && !operations.contains(&KeyOperations::Verify)
    {
        return Err("not a verification key (key_ops)");
    }
    let inferred = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let modulus_bytes = rsa.n.trim_end_matches('=').len() * 3 / 4;
            if modulus_bytes < MIN_RSA_MODULUS_BYTES {
                return Err("RSA key shorter than 2048 bits");
            }
            Algorithm::RS256
        }
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        AlgorithmParameters::OctetKey(_) => return Err("symmetric keys are not accepted"),
        _ => return Err("unsupported key type or curve"),
    };
    if let Some(declared) = common.key_algorithm {
        let declared_matches = matches!(
            (declared, inferred),
            (KeyAlgorithm::RS256, Algorithm::RS256)
                | (KeyAlgorithm::ES256, Algorithm::ES256)
                | (KeyAlgorithm::EdDSA, Algorithm::EdDSA)
        );
        if !declared_matches {
            return Err("algorithm is not RS256, ES256 or EdDSA, or does not fit the key");
        }
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|_| "invalid key parameters")?;
    Ok(VerifyingKey {
        kid: common.key_id.clone(),
        algorithm: inferred,
        key,
    })
}

/// A key set fetched from a URL, cached, and fetched again when older than `refresh_every`
/// or when a token names an unknown `kid` — never more often than `timing.min_interval`.
///
/// Refreshes happen on the request path (bounded by the HTTP timeout); one request fetches
/// while concurrent ones wait for its result. A failed refresh keeps the previous keys.
pub(super) struct RemoteJwks {
    url: reqwest::Url,
    client: reqwest::Client,
    refresh_every: Duration,
    timing: JwksTiming,
    state: RwLock<RemoteState>,
    fetch_lock: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
struct RemoteState {
    keys: Arc<KeySet>,
    fetched_at: Instant,
    last_attempt: Instant,
}

impl fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = self.snapshot().keys.len();
        f.debug_struct("RemoteJwks")
            .field("url", &self.url.as_str())
            .field("refresh_every", &self.refresh_every)
            .field("keys", &keys)
            .finish_non_exhaustive()
    }
}

impl RemoteJwks {
    /// Fetches the key set once; fails if that does not give a usable key set.
    pub(super) async fn start(
        url: &str,
        timeout: Duration,
        refresh_every: Duration,
        timing: JwksTiming,
    ) -> Result<RemoteJwks, AuthSetupError> {
        let parsed = reqwest::Url::parse(url).map_err(|error| AuthSetupError::FetchJwks {
            url: url.to_owned(),
            reason: format!("invalid URL: {error}"),
        })?;
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("igl-node/", env!("CARGO_PKG_VERSION")));
        if is_loopback(&parsed) {
            // A local identity provider is never reached through the system's HTTP proxy.
            builder = builder.no_proxy();
        }
        let client = builder.build().map_err(AuthSetupError::HttpClient)?;
        let keys = fetch(&client, &parsed)
            .await
            .map_err(|reason| AuthSetupError::FetchJwks {
                url: url.to_owned(),
                reason,
            })?;
        tracing::info!(url = %parsed, keys = keys.len(), "fetched JWT verification keys");
        let now = Instant::now();
        Ok(RemoteJwks {
            url: parsed,
            client,
            refresh_every,
            timing,
            state: RwLock::new(RemoteState {
                keys: Arc::new(keys),
                fetched_at: now,
                last_attempt: now,
            }),
            fetch_lock: tokio::sync::Mutex::new(()),
        })
    }

    fn snapshot(&self) -> RemoteState {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The current keys, refreshed first if they are older than `refresh_every`.
    pub(super) async fn keys(&self) -> Arc<KeySet> {
        let state = self.snapshot();
        if state.fetched_at.elapsed() >= self.refresh_every
            && state.last_attempt.elapsed() >= self.timing.min_interval
        {
            return self.refresh(state.last_attempt).await;
        }
        state.keys
    }

    /// Fetches the keys again after a token named an unknown `kid`, unless a fetch was
    /// attempted less than `min_interval` ago; returns the (possibly unchanged) keys.
    pub(super) async fn refresh_for_unknown_kid(&self) -> Arc<KeySet> {
        let state = self.snapshot();
        if state.last_attempt.elapsed() < self.timing.min_interval {
            return state.keys;
        }
        self.refresh(state.last_attempt).await
    }

    /// Fetches unless another task attempted a fetch after `seen_attempt`.
    async fn refresh(&self, seen_attempt: Instant) -> Arc<KeySet> {
        let _guard = self.fetch_lock.lock().await;
        let state = self.snapshot();
        if state.last_attempt != seen_attempt {
            // Another request fetched while this one waited for the lock.
            return state.keys;
        }
        let attempt = Instant::now();
        let result = fetch(&self.client, &self.url).await;
        let mut guard = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.last_attempt = attempt;
        match result {
            Ok(keys) => {
                tracing::info!(url = %self.url, keys = keys.len(), "refreshed JWT verification keys");
                guard.keys = Arc::new(keys);
                guard.fetched_at = attempt;
            }
            Err(reason) => {
                tracing::warn!(url = %self.url, %reason, "cannot refresh JWT verification keys, keeping the previous ones");
            }
        }
        Arc::clone(&guard.keys)
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// GETs and parses the key set at `url`.
async fn fetch(client: &reqwest::Client, url: &reqwest::Url) -> Result<KeySet, String> {
    let mut response = client
        .get(url.clone())
        .header(
            reqwest::header::ACCEPT,
            "application/json, application/jwk-set+json",
        )
        .send()
        .await
        .map_err(|error| describe_reqwest_error(&error))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("HTTP status {status}"));
    }
    if response
        .content_length()
        .is_some_and(|length| length > MAX_JWKS_BYTES as u64)
    {
        return Err(format!("document larger than {MAX_JWKS_BYTES} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| describe_reqwest_error(&error))?
    {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!("document larger than {MAX_JWKS_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    KeySet::from_json(&body)
}

/// The error and its causes, without the URL (callers log it separately).
fn describe_reqwest_error(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "request timed out".to_owned()
    } else if error.is_connect() {
        "cannot connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWKS: &str = include_str!("testdata/jwks.json");

    #[test]
    fn parses_the_fixture_keys() {
        let keys = KeySet::from_json(JWKS.as_bytes()).unwrap();
        assert_eq!(keys.len(), 3);
        let rsa = keys.find(Some("test-rsa-1"), Algorithm::RS256).unwrap();
        assert_eq!(rsa.algorithm, Algorithm::RS256);
        assert_eq!(
            keys.find(Some("test-ec-1"), Algorithm::ES256)
                .unwrap()
                .algorithm,
            Algorithm::ES256
        );
        assert_eq!(
            keys.find(Some("test-ed25519-1"), Algorithm::EdDSA)
                .unwrap()
                .algorithm,
            Algorithm::EdDSA
        );
        assert_eq!(
            keys.find(Some("nope"), Algorithm::RS256).unwrap_err(),
            KeyLookup::Unknown
        );
        assert_eq!(
            keys.find(Some("test-rsa-1"), Algorithm::ES256).unwrap_err(),
            KeyLookup::AlgorithmMismatch
        );
        // Without kid, the only key of the algorithm.
        assert_eq!(
            keys.find(None, Algorithm::ES256).unwrap().kid.as_deref(),
            Some("test-ec-1")
        );
    }

    #[test]
    fn skips_unusable_keys() {
        let mut jwks: serde_json::Value = serde_json::from_str(JWKS).unwrap();
        let rsa = jwks["keys"][0].clone();
        let mut encryption = rsa.clone();
        encryption["kid"] = "enc".into();
        encryption["use"] = "enc".into();
        let mut rs512 = rsa.clone();
        rs512["kid"] = "rs512".into();
        rs512["alg"] = "RS512".into();
        let mut mislabelled = rsa.clone();
        mislabelled["kid"] = "mislabelled".into();
        mislabelled["alg"] = "ES256".into();
        let mut short = rsa.clone();
        short["kid"] = "short".into();
        short["n"] = "AQAB".repeat(40).into();
        let mut verify_ops = rsa.clone();
        verify_ops["kid"] = "ops".into();
        verify_ops["use"] = serde_json::Value::Null;
        verify_ops["key_ops"] = serde_json::json!(["verify"]);
        let oct = serde_json::json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"});
        let p384 = serde_json::json!({"kty": "EC", "kid": "p384", "crv": "P-384",
            "x": "AAAA", "y": "AAAA"});
        let garbage = serde_json::json!({"kty": "RSA", "kid": "garbage"});
        let mut duplicate = jwks["keys"][1].clone();
        duplicate["kid"] = "test-rsa-1".into();
        jwks["keys"] = serde_json::json!([
            rsa,
            encryption,
            rs512,
            mislabelled,
            short,
            verify_ops,
            oct,
            p384,
            garbage,
            duplicate
        ]);
        let keys = KeySet::from_json(jwks.to_string().as_bytes()).unwrap();
        let kids: Vec<_> = keys.keys.iter().map(|k| k.kid.clone().unwrap()).collect();
        assert_eq!(kids, ["test-rsa-1", "ops"]);
        // Two RS256 keys: a token without kid cannot pick one.
        assert_eq!(
            keys.find(None, Algorithm::RS256).unwrap_err(),
            KeyLookup::Unknown
        );
    }

    #[test]
    fn rejects_documents_without_usable_keys() {
        assert!(
            KeySet::from_json(b"{\"keys\": []}")
                .unwrap_err()
                .contains("no usable signing key")
        );
        assert!(
            KeySet::from_json(b"[1, 2]")
                .unwrap_err()
                .starts_with("not a JWKS document")
        );
        assert!(KeySet::from_json(b"not json").is_err());
    }
}
