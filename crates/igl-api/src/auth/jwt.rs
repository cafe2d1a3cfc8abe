//! Bearer JWT validation: keys, standard claims, and the mapping of claims to a [`Caller`].

use std::fmt;

use igl_config::{JwtKeySource, JwtSettings};
use igl_domain::Jurisdiction;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::jwks::{JWKS_ALGORITHMS, KeyLookup, KeySet, RemoteJwks, VerifyingKey};
use super::{AuthError, AuthMethod, AuthSetupError, Caller, JwksTiming};

/// Where the verification keys come from.
enum Keys {
    /// `hs256_secret`: one shared secret, HS256 only.
    Hs256(DecodingKey),
    /// `jwks_file`: read once at start-up.
    File(KeySet),
    /// `jwks_url`: fetched, cached and refreshed.
    Remote(RemoteJwks),
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Keys::Hs256(_) => f.write_str("Hs256([redacted])"),
            Keys::File(keys) => f.debug_tuple("File").field(&keys.len()).finish(),
            Keys::Remote(remote) => f.debug_tuple("Remote").field(remote).finish(),
        }
    }
}

/// Validates JWTs against the configured issuer, audience and keys.
pub(super) struct JwtVerifier {
    keys: Keys,
    /// One validation per accepted algorithm (iss, aud, exp, nbf, leeway).
    validations: Vec<(Algorithm, Validation)>,
    jurisdiction_claim: String,
    party_claim: String,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let algorithms: Vec<_> = self.validations.iter().map(|(alg, _)| alg).collect();
        let issuer = self.validations.first().and_then(|(_, v)| v.iss.as_ref());
        let audience = self.validations.first().and_then(|(_, v)| v.aud.as_ref());
        f.debug_struct("JwtVerifier")
            .field("keys", &self.keys)
            .field("algorithms", &algorithms)
            .field("issuer", &issuer)
            .field("audience", &audience)
            .field("jurisdiction_claim", &self.jurisdiction_claim)
            .field("party_claim", &self.party_claim)
            .finish()
    }
}

impl JwtVerifier {
    /// Builds the verifier; reads the JWKS file or fetches the JWKS URL.
    pub(super) async fn from_settings(
        settings: &JwtSettings,
        timing: JwksTiming,
    ) -> Result<JwtVerifier, AuthSetupError> {
        let source = settings.key_source().ok_or_else(|| {
            AuthSetupError::Config(igl_config::ConfigError::Invalid(vec![
                igl_config::ConfigProblem::new(
                    "auth.jwt",
                    "needs exactly one key source: jwks_url, jwks_file or hs256_secret",
                ),
            ]))
        })?;
        let (keys, algorithms): (Keys, &[Algorithm]) = match source {
            JwtKeySource::Hs256Secret(secret) => (
                Keys::Hs256(DecodingKey::from_secret(secret.expose_secret().as_bytes())),
                &[Algorithm::HS256],
            ),
            JwtKeySource::JwksFile(path) => {
                let bytes =
                    tokio::fs::read(path)
                        .await
                        .map_err(|source| AuthSetupError::ReadJwksFile {
                            path: path.to_owned(),
                            source,
                        })?;
                let keys =
                    KeySet::from_json(&bytes).map_err(|reason| AuthSetupError::InvalidJwks {
                        origin: format!("file {}", path.display()),
                        reason,
                    })?;
                tracing::info!(path = %path.display(), keys = keys.len(), "loaded JWT verification keys");
                (Keys::File(keys), &JWKS_ALGORITHMS)
            }
            JwtKeySource::JwksUrl(url) => {
                let remote = RemoteJwks::start(
                    url,
                    settings.jwks_timeout(),
                    settings.jwks_refresh(),
                    timing,
                )
                .await?;
                (Keys::Remote(remote), &JWKS_ALGORITHMS)
            }
        };
        let validations = algorithms
            .iter()
            .map(|&algorithm| (algorithm, validation(settings, algorithm)))
            .collect();
        Ok(JwtVerifier {
            keys,
            validations,
            jurisdiction_claim: settings.jurisdiction_claim.clone(),
            party_claim: settings.party_claim.clone(),
        })
    }

    /// Validates `token` and maps its claims to a caller.
    pub(super) async fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::MalformedJwt("malformed JWT header".to_owned()))?;
        let Some(validation) = self
            .validations
            .iter()
            .find(|(algorithm, _)| *algorithm == header.alg)
            .map(|(_, validation)| validation)
        else {
            return Err(AuthError::AlgorithmNotAccepted(format!("{:?}", header.alg)));
        };
        let claims = match &self.keys {
            Keys::Hs256(key) => decode(token, key, validation)?,
            Keys::File(keys) => {
                let key = select(keys, header.kid.as_deref(), header.alg)?;
                decode(token, &key.key, validation)?
            }
            Keys::Remote(remote) => {
                let mut keys = remote.keys().await;
                if let Err(KeyLookup::Unknown) = keys.find(header.kid.as_deref(), header.alg) {
                    keys = remote.refresh_for_unknown_kid().await;
                }
                let key = select(&keys, header.kid.as_deref(), header.alg)?;
                decode(token, &key.key, validation)?
            }
        };
        self.caller(&claims)
    }

    fn caller(&self, claims: &Map<String, Value>) -> Result<Caller, AuthError> {
        let party = claims
            .get(&self.party_claim)
            .and_then(Value::as_str)
            .filter(|party| !party.trim().is_empty())
            .ok_or_else(|| AuthError::MissingClaim(self.party_claim.clone()))?;
        let jurisdiction = claims
            .get(&self.jurisdiction_claim)
            .and_then(Value::as_str)
            .ok_or_else(|| AuthError::MissingClaim(self.jurisdiction_claim.clone()))?;
        let jurisdiction =
            Jurisdiction::parse(jurisdiction).map_err(|error| AuthError::BadJurisdiction {
                claim: self.jurisdiction_claim.clone(),
                reason: error.to_string(),
            })?;
        Ok(Caller {
            party: party.to_owned(),
            jurisdiction,
            method: AuthMethod::Jwt,
        })
    }
}

/// The standard-claim rules for `algorithm`: signature, `exp` required, `nbf` checked when
/// present, `iss` and `aud` required and matched, with the configured leeway.
fn validation(settings: &JwtSettings, algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.set_issuer(&[settings.issuer.as_str()]);
    validation.set_audience(&settings.audience);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = true;
    validation.leeway = settings.leeway_secs;
    validation
}

fn select<'a>(
    keys: &'a KeySet,
    kid: Option<&str>,
    algorithm: Algorithm,
) -> Result<&'a VerifyingKey, AuthError> {
    keys.find(kid, algorithm).map_err(|lookup| match lookup {
        KeyLookup::Unknown => AuthError::UnknownKey,
        KeyLookup::AlgorithmMismatch => AuthError::AlgorithmNotAccepted(format!("{algorithm:?}")),
    })
}

fn decode(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<Map<String, Value>, AuthError> {
    jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
        .map(|data| data.claims)
        .map_err(|error| map_error(error.kind()))
}

fn map_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            AuthError::AlgorithmNotAccepted("of this token".to_owned())
        }
        ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim.clone()),
        ErrorKind::InvalidClaimFormat(claim) => {
            AuthError::MalformedJwt(format!("malformed {claim:?} claim"))
        }
        _ => AuthError::MalformedJwt("malformed JWT".to_owned()),
    }
}
