//! Tests of [`Authenticator`]: static tokens, anonymous access, HS256 and JWKS (file and
//! URL) JWTs. Keys are the fixtures in `testdata/` (see its README); nothing leaves
//! 127.0.0.1.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use igl_config::{AuthSettings, JwtSettings, SecretString, StaticTokenSettings};
use jsonwebtoken::{Algorithm, EncodingKey, Header, get_current_timestamp};
use serde_json::{Value, json};

use super::*;

const RSA_PRIVATE: &[u8] = include_bytes!("testdata/rsa-private.pem");
const EC_PRIVATE: &[u8] = include_bytes!("testdata/ec-private.pem");
const ED_PRIVATE: &[u8] = include_bytes!("testdata/ed25519-private.pem");
const JWKS: &str = include_str!("testdata/jwks.json");

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "igl-node";
const HS_SECRET: &str = "hs256-test-secret-0123456789abcdef";
const STATIC_TOKEN: &str = "static-token-0123456789";

fn au() -> Jurisdiction {
    Jurisdiction::parse("AU").unwrap()
}

fn sg() -> Jurisdiction {
    Jurisdiction::parse("SG").unwrap()
}

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/auth/testdata")
        .join(name)
}

fn bearer(token: &str) -> HeaderMap {
    authorization(&format!("Bearer {token}"))
}

fn authorization(value: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
    headers
}

fn static_settings() -> AuthSettings {
    AuthSettings {
        static_tokens: vec![StaticTokenSettings {
            token: SecretString::new(STATIC_TOKEN),
            party: "trade-app".to_owned(),
            jurisdiction: "SG".to_owned(),
        }],
        ..AuthSettings::default()
    }
}

fn jwt_settings() -> JwtSettings {
    JwtSettings {
        issuer: ISSUER.to_owned(),
        audience: vec!["other-api".to_owned(), AUDIENCE.to_owned()],
        leeway_secs: 5,
        ..JwtSettings::default()
    }
}

fn hs256_settings() -> AuthSettings {
    AuthSettings {
        jwt: Some(JwtSettings {
            hs256_secret: Some(SecretString::new(HS_SECRET)),
            ..jwt_settings()
        }),
        ..static_settings()
    }
}

fn jwks_file_settings(path: PathBuf) -> AuthSettings {
    AuthSettings {
        jwt: Some(JwtSettings {
            jwks_file: Some(path),
            ..jwt_settings()
        }),
        ..AuthSettings::default()
    }
}

async fn authenticator(settings: &AuthSettings) -> Authenticator {
    Authenticator::from_settings(settings, au()).await.unwrap()
}

/// Valid claims for `jurisdiction`, expiring in ten minutes.
fn claims(jurisdiction: &str) -> Value {
    let now = get_current_timestamp();
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "client-123",
        "jurisdiction": jurisdiction,
        "iat": now,
        "nbf": now - 10,
        "exp": now + 600,
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    if value.is_null() {
        claims.as_object_mut().unwrap().remove(key);
    } else {
        claims[key] = value;
    }
    claims
}

fn hs256(claims: &Value) -> String {
    sign_hs256(claims, HS_SECRET)
}

fn sign_hs256(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn sign(algorithm: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let key = match algorithm {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(EC_PRIVATE).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(ED_PRIVATE).unwrap(),
        other => panic!("no fixture key for {other:?}"),
    };
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

// ---------------------------------------------------------------- static tokens, anonymous

#[tokio::test]
async fn static_token_is_accepted() {
    let auth = authenticator(&static_settings()).await;
    let caller = auth.authenticate(&bearer(STATIC_TOKEN)).await.unwrap();
    assert_eq!(
        caller,
        Caller {
            party: "trade-app".to_owned(),
            jurisdiction: sg(),
            method: AuthMethod::StaticToken,
        }
    );
    // The scheme is case-insensitive; surrounding whitespace is ignored.
    for value in [
        format!("bearer {STATIC_TOKEN}"),
        format!("BEARER  {STATIC_TOKEN} "),
    ] {
        assert_eq!(
            auth.authenticate(&authorization(&value))
                .await
                .unwrap()
                .party,
            "trade-app"
        );
    }
}

#[tokio::test]
async fn unknown_static_token_is_refused() {
    let auth = authenticator(&static_settings()).await;
    for token in ["static-token-012345678", "static-token-01234567890", "x"] {
        assert_eq!(
            auth.authenticate(&bearer(token)).await,
            Err(AuthError::Invalid)
        );
    }
    // Without JWT validation, a JWT-shaped token is just an unknown token.
    assert_eq!(
        auth.authenticate(&bearer(&hs256(&claims("AU")))).await,
        Err(AuthError::Invalid)
    );
}

#[tokio::test]
async fn malformed_headers_are_refused() {
    let auth = authenticator(&static_settings()).await;
    let cases = [
        ("Basic dXNlcjpwYXNzd29yZA==", AuthError::NotBearer),
        (STATIC_TOKEN, AuthError::NotBearer),
        ("Bearer", AuthError::Malformed("the token is empty")),
        ("Bearer ", AuthError::Malformed("the token is empty")),
        (
            "Bearer static-token 0123456789",
            AuthError::Malformed("the token must be printable ASCII without spaces"),
        ),
        ("Bearerstatic-token-0123456789", AuthError::NotBearer),
        (r#"JWTBODY {"jurisdiction":"SG"}"#, AuthError::NotBearer),
    ];
    for (value, expected) in cases {
        assert_eq!(
            auth.authenticate(&authorization(value)).await,
            Err(expected),
            "{value}"
        );
    }
    let mut non_ascii = HeaderMap::new();
    non_ascii.insert(
        header::AUTHORIZATION,
        HeaderValue::from_bytes(b"Bearer caf\xc3\xa9-token").unwrap(),
    );
    assert!(matches!(
        auth.authenticate(&non_ascii).await,
        Err(AuthError::Malformed(_))
    ));
}

#[tokio::test]
async fn missing_header_without_anonymous_is_refused() {
    let auth = authenticator(&static_settings()).await;
    assert_eq!(
        auth.authenticate(&HeaderMap::new()).await,
        Err(AuthError::Missing)
    );
}

#[tokio::test]
async fn missing_header_with_anonymous_is_the_own_jurisdiction() {
    let settings = AuthSettings {
        anonymous: true,
        ..static_settings()
    };
    let auth = authenticator(&settings).await;
    assert_eq!(
        auth.authenticate(&HeaderMap::new()).await.unwrap(),
        Caller {
            party: ANONYMOUS_PARTY.to_owned(),
            jurisdiction: au(),
            method: AuthMethod::Anonymous,
        }
    );
    // Presented credentials are still checked: a wrong token is not anonymous.
    assert_eq!(
        auth.authenticate(&bearer("wrong-token-0123456789")).await,
        Err(AuthError::Invalid)
    );
}

#[tokio::test]
async fn default_settings_refuse_everyone() {
    let auth = authenticator(&AuthSettings::default()).await;
    assert!(!auth.accepts_any_caller());
    assert_eq!(
        auth.authenticate(&HeaderMap::new()).await,
        Err(AuthError::Missing)
    );
    assert_eq!(
        auth.authenticate(&bearer(STATIC_TOKEN)).await,
        Err(AuthError::Invalid)
    );
    let dev = auth.with_static_token(StaticToken {
        token: STATIC_TOKEN.to_owned(),
        party: "dev".to_owned(),
        jurisdiction: au(),
    });
    assert!(dev.accepts_any_caller());
    assert_eq!(
        dev.authenticate(&bearer(STATIC_TOKEN)).await.unwrap().party,
        "dev"
    );
}

#[tokio::test]
async fn invalid_settings_are_setup_errors() {
    let settings = AuthSettings {
        jwt: Some(JwtSettings::default()),
        ..AuthSettings::default()
    };
    let error = Authenticator::from_settings(&settings, au())
        .await
        .unwrap_err();
    assert!(matches!(error, AuthSetupError::Config(_)), "{error:?}");
    assert!(error.to_string().contains("auth.jwt.issuer"), "{error}");

    let mut unknown_code = static_settings();
    unknown_code.static_tokens[0].jurisdiction = "XX".to_owned();
    let error = Authenticator::from_settings(&unknown_code, au())
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "auth.static_tokens.0.jurisdiction: \"XX\" is not an ISO 3166-1 alpha-2 country code"
    );
}

#[test]
fn auth_errors_are_401_without_the_token() {
    let response = ApiError::from(AuthError::Expired).into_response();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    for error in [
        AuthError::Missing,
        AuthError::NotBearer,
        AuthError::Invalid,
        AuthError::MissingClaim("jurisdiction".to_owned()),
    ] {
        assert_eq!(ApiError::from(error).status, StatusCode::UNAUTHORIZED);
    }
}

#[test]
fn legacy_document_readers_are_marked() {
    let caller = Caller::legacy_document_reader(sg());
    assert_eq!(caller.method, AuthMethod::LegacyDocumentIdentity);
    assert_eq!(caller.party, LEGACY_DOCUMENT_PARTY);
    assert_eq!(caller.jurisdiction, sg());
}

#[test]
fn dev_tokens_are_random_hex_with_a_prefix() {
    let first = generate_dev_token();
    let second = generate_dev_token();
    assert_ne!(first, second);
    let hex = first.strip_prefix(DEV_TOKEN_PREFIX).unwrap();
    assert_eq!(hex.len(), 64);
    assert!(
        hex.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    // Usable as a configured static token.
    assert!(first.len() >= igl_config::MIN_STATIC_TOKEN_LEN);
    assert!(bearer_token(format!("Bearer {first}").as_bytes()).is_ok());
}

#[tokio::test]
async fn debug_never_shows_tokens_or_secrets() {
    let auth = authenticator(&hs256_settings()).await;
    let debug = format!("{auth:?} {auth:#?}");
    assert!(!debug.contains(STATIC_TOKEN), "{debug}");
    assert!(!debug.contains(HS_SECRET), "{debug}");
    assert!(debug.contains("trade-app"), "{debug}");
}

// ---------------------------------------------------------------- HS256

#[tokio::test]
async fn hs256_jwt_is_accepted() {
    let auth = authenticator(&hs256_settings()).await;
    let caller = auth
        .authenticate(&bearer(&hs256(&claims("SG"))))
        .await
        .unwrap();
    assert_eq!(
        caller,
        Caller {
            party: "client-123".to_owned(),
            jurisdiction: sg(),
            method: AuthMethod::Jwt,
        }
    );
    // Static tokens still work alongside JWTs.
    assert_eq!(
        auth.authenticate(&bearer(STATIC_TOKEN))
            .await
            .unwrap()
            .method,
        AuthMethod::StaticToken
    );
    // `aud` may be a list; one accepted value is enough.
    let list = with(claims("AU"), "aud", json!(["x", AUDIENCE]));
    assert_eq!(
        auth.authenticate(&bearer(&hs256(&list)))
            .await
            .unwrap()
            .jurisdiction,
        au()
    );
}

#[tokio::test]
async fn hs256_jwt_claim_checks() {
    let auth = authenticator(&hs256_settings()).await;
    let now = get_current_timestamp();
    let cases = [
        (
            with(claims("AU"), "exp", json!(now - 60)),
            AuthError::Expired,
        ),
        (
            with(claims("AU"), "nbf", json!(now + 60)),
            AuthError::NotYetValid,
        ),
        (
            with(claims("AU"), "iss", json!("https://evil.test")),
            AuthError::WrongIssuer,
        ),
        (
            with(claims("AU"), "aud", json!("someone-else")),
            AuthError::WrongAudience,
        ),
        (
            with(claims("AU"), "exp", Value::Null),
            AuthError::MissingClaim("exp".to_owned()),
        ),
        (
            with(claims("AU"), "iss", Value::Null),
            AuthError::MissingClaim("iss".to_owned()),
        ),
        (
            with(claims("AU"), "aud", Value::Null),
            AuthError::MissingClaim("aud".to_owned()),
        ),
        (
            with(claims("AU"), "jurisdiction", Value::Null),
            AuthError::MissingClaim("jurisdiction".to_owned()),
        ),
        (
            with(claims("AU"), "jurisdiction", json!(36)),
            AuthError::MissingClaim("jurisdiction".to_owned()),
        ),
        (
            with(claims("AU"), "sub", Value::Null),
            AuthError::MissingClaim("sub".to_owned()),
        ),
        (
            claims("au"),
            AuthError::BadJurisdiction {
                claim: "jurisdiction".to_owned(),
                reason: "\"au\" is not a two-letter upper-case code".to_owned(),
            },
        ),
        (
            claims("XX"),
            AuthError::BadJurisdiction {
                claim: "jurisdiction".to_owned(),
                reason: "\"XX\" is not an ISO 3166-1 alpha-2 country code".to_owned(),
            },
        ),
    ];
    for (claims, expected) in cases {
        assert_eq!(
            auth.authenticate(&bearer(&hs256(&claims))).await,
            Err(expected.clone()),
            "{claims}"
        );
    }
}

#[tokio::test]
async fn leeway_applies_to_exp() {
    let auth = authenticator(&hs256_settings()).await;
    let now = get_current_timestamp();
    // Expired two seconds ago, within the five-second leeway.
    let claims = with(claims("AU"), "exp", json!(now - 2));
    assert!(auth.authenticate(&bearer(&hs256(&claims))).await.is_ok());
}

#[tokio::test]
async fn hs256_jwt_with_a_bad_signature_is_refused() {
    let auth = authenticator(&hs256_settings()).await;
    let forged = sign_hs256(&claims("AU"), "another-secret-0123456789abcdef-x");
    assert_eq!(
        auth.authenticate(&bearer(&forged)).await,
        Err(AuthError::BadSignature)
    );
    // Same header and signature, altered payload.
    let genuine = hs256(&claims("AU"));
    let other = hs256(&claims("SG"));
    let parts: Vec<_> = genuine.split('.').collect();
    let other_payload = other.split('.').nth(1).unwrap();
    let tampered = format!("{}.{}.{}", parts[0], other_payload, parts[2]);
    assert_eq!(
        auth.authenticate(&bearer(&tampered)).await,
        Err(AuthError::BadSignature)
    );
}

#[tokio::test]
async fn hs256_only_accepts_hs256() {
    let auth = authenticator(&hs256_settings()).await;
    let rs256 = sign(Algorithm::RS256, Some("test-rsa-1"), &claims("AU"));
    assert_eq!(
        auth.authenticate(&bearer(&rs256)).await,
        Err(AuthError::AlgorithmNotAccepted("RS256".to_owned()))
    );
    assert!(matches!(
        auth.authenticate(&bearer("abc.def.ghi")).await,
        Err(AuthError::MalformedJwt(_))
    ));
    // `alg: none` is not even a parsable header.
    let none = format!(
        "{}.{}.",
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0", // {"alg":"none","typ":"JWT"}
        hs256(&claims("AU")).split('.').nth(1).unwrap()
    );
    assert!(matches!(
        auth.authenticate(&bearer(&none)).await,
        Err(AuthError::Invalid | AuthError::MalformedJwt(_))
    ));
}

#[tokio::test]
async fn claim_names_are_configurable() {
    let mut settings = hs256_settings();
    let jwt = settings.jwt.as_mut().unwrap();
    jwt.jurisdiction_claim = "custom:jurisdiction".to_owned();
    jwt.party_claim = "client_id".to_owned();
    let auth = authenticator(&settings).await;
    let claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "exp": get_current_timestamp() + 60,
        "client_id": "docspider", "custom:jurisdiction": "NZ", "jurisdiction": "AU",
    });
    let caller = auth.authenticate(&bearer(&hs256(&claims))).await.unwrap();
    assert_eq!(caller.party, "docspider");
    assert_eq!(caller.jurisdiction.as_str(), "NZ");
}

// ---------------------------------------------------------------- JWKS file

#[tokio::test]
async fn jwks_file_verifies_rs256_es256_and_eddsa() {
    let auth = authenticator(&jwks_file_settings(testdata("jwks.json"))).await;
    for (algorithm, kid) in [
        (Algorithm::RS256, "test-rsa-1"),
        (Algorithm::ES256, "test-ec-1"),
        (Algorithm::EdDSA, "test-ed25519-1"),
    ] {
        let token = sign(algorithm, Some(kid), &claims("SG"));
        let caller = auth.authenticate(&bearer(&token)).await.unwrap();
        assert_eq!(caller.jurisdiction, sg(), "{algorithm:?}");
        assert_eq!(caller.method, AuthMethod::Jwt);
    }
    // Without a kid, the only key of the algorithm is used.
    let token = sign(Algorithm::RS256, None, &claims("AU"));
    assert_eq!(
        auth.authenticate(&bearer(&token))
            .await
            .unwrap()
            .jurisdiction,
        au()
    );
}

#[tokio::test]
async fn jwks_file_refuses_unknown_kids_and_confused_algorithms() {
    let auth = authenticator(&jwks_file_settings(testdata("jwks.json"))).await;
    let unknown = sign(Algorithm::RS256, Some("rotated-away"), &claims("AU"));
    assert_eq!(
        auth.authenticate(&bearer(&unknown)).await,
        Err(AuthError::UnknownKey)
    );
    // An RSA signature presented under the EC key's id.
    let mismatched = sign(Algorithm::RS256, Some("test-ec-1"), &claims("AU"));
    assert_eq!(
        auth.authenticate(&bearer(&mismatched)).await,
        Err(AuthError::AlgorithmNotAccepted("RS256".to_owned()))
    );
    // HS256 is never accepted with a key set (no "public key as HMAC secret" confusion).
    assert_eq!(
        auth.authenticate(&bearer(&hs256(&claims("AU")))).await,
        Err(AuthError::AlgorithmNotAccepted("HS256".to_owned()))
    );
    let expired = with(claims("AU"), "exp", json!(get_current_timestamp() - 600));
    let expired = sign(Algorithm::ES256, Some("test-ec-1"), &expired);
    assert_eq!(
        auth.authenticate(&bearer(&expired)).await,
        Err(AuthError::Expired)
    );
}

#[tokio::test]
async fn unreadable_or_invalid_jwks_file_fails_at_start() {
    let missing = jwks_file_settings(testdata("no-such-file.json"));
    let error = Authenticator::from_settings(&missing, au())
        .await
        .unwrap_err();
    assert!(
        matches!(error, AuthSetupError::ReadJwksFile { .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().starts_with("cannot read JWKS file "),
        "{error}"
    );

    let dir = tempfile::tempdir().unwrap();
    for (content, reason) in [
        ("not json", "not a JWKS document"),
        (r#"{"keys": []}"#, "no usable signing key"),
        (
            r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#,
            "no usable signing key",
        ),
    ] {
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, content).unwrap();
        let error = Authenticator::from_settings(&jwks_file_settings(path), au())
            .await
            .unwrap_err();
        assert!(
            matches!(error, AuthSetupError::InvalidJwks { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains(reason), "{error}");
    }
}

// ---------------------------------------------------------------- JWKS URL

/// A JWKS endpoint on 127.0.0.1 whose document can be swapped and whose hits are counted.
struct JwksServer {
    url: String,
    document: Arc<Mutex<(StatusCode, String)>>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(document: String) -> JwksServer {
        let state = Arc::new(Mutex::new((StatusCode::OK, document)));
        let hits = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get({
                let state = Arc::clone(&state);
                let hits = Arc::clone(&hits);
                move || async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = state.lock().unwrap().clone();
                    (status, [(header::CONTENT_TYPE, "application/json")], body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        JwksServer {
            url,
            document: state,
            hits,
            task,
        }
    }

    fn serve(&self, status: StatusCode, document: String) {
        *self.document.lock().unwrap() = (status, document);
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The fixture JWKS restricted to the keys with the given ids.
fn jwks_with(kids: &[&str]) -> String {
    let mut jwks: Value = serde_json::from_str(JWKS).unwrap();
    let keys = jwks["keys"].as_array_mut().unwrap();
    keys.retain(|key| kids.contains(&key["kid"].as_str().unwrap()));
    jwks.to_string()
}

fn jwks_url_settings(url: &str) -> AuthSettings {
    AuthSettings {
        jwt: Some(JwtSettings {
            jwks_url: Some(url.to_owned()),
            jwks_timeout_secs: 5,
            ..jwt_settings()
        }),
        ..AuthSettings::default()
    }
}

async fn url_authenticator(url: &str, min_interval: Duration) -> Authenticator {
    Authenticator::from_settings_with(&jwks_url_settings(url), au(), JwksTiming { min_interval })
        .await
        .unwrap()
}

#[tokio::test]
async fn jwks_url_is_fetched_at_start_and_cached() {
    let server = JwksServer::start(jwks_with(&["test-rsa-1"])).await;
    let auth = url_authenticator(&server.url, Duration::from_secs(60)).await;
    assert_eq!(server.hits(), 1);
    for _ in 0..3 {
        let token = sign(Algorithm::RS256, Some("test-rsa-1"), &claims("SG"));
        assert_eq!(
            auth.authenticate(&bearer(&token))
                .await
                .unwrap()
                .jurisdiction,
            sg()
        );
    }
    assert_eq!(server.hits(), 1, "known keys are served from the cache");
}

#[tokio::test]
async fn jwks_url_is_refreshed_on_an_unknown_kid() {
    let server = JwksServer::start(jwks_with(&["test-rsa-1"])).await;
    let auth = url_authenticator(&server.url, Duration::ZERO).await;
    // The identity provider rotates in a new key.
    server.serve(StatusCode::OK, jwks_with(&["test-rsa-1", "test-ec-1"]));
    let token = sign(Algorithm::ES256, Some("test-ec-1"), &claims("SG"));
    assert_eq!(
        auth.authenticate(&bearer(&token))
            .await
            .unwrap()
            .jurisdiction,
        sg()
    );
    assert_eq!(server.hits(), 2);
    // A kid the provider does not know either: fetched again, still unknown.
    let unknown = sign(Algorithm::ES256, Some("never-published"), &claims("SG"));
    assert_eq!(
        auth.authenticate(&bearer(&unknown)).await,
        Err(AuthError::UnknownKey)
    );
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn unknown_kid_refreshes_at_most_once_per_interval() {
    let server = JwksServer::start(jwks_with(&["test-rsa-1"])).await;
    let auth = url_authenticator(&server.url, Duration::from_secs(60)).await;
    server.serve(StatusCode::OK, jwks_with(&["test-rsa-1", "test-ec-1"]));
    // Start-up fetched just now: an unknown kid does not trigger another fetch yet.
    let token = sign(Algorithm::ES256, Some("test-ec-1"), &claims("SG"));
    for _ in 0..5 {
        assert_eq!(
            auth.authenticate(&bearer(&token)).await,
            Err(AuthError::UnknownKey)
        );
    }
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn failed_refresh_keeps_the_previous_keys() {
    let server = JwksServer::start(jwks_with(&["test-rsa-1"])).await;
    let auth = url_authenticator(&server.url, Duration::ZERO).await;
    server.serve(StatusCode::INTERNAL_SERVER_ERROR, "oops".to_owned());
    let unknown = sign(Algorithm::ES256, Some("test-ec-1"), &claims("SG"));
    assert_eq!(
        auth.authenticate(&bearer(&unknown)).await,
        Err(AuthError::UnknownKey)
    );
    assert_eq!(server.hits(), 2);
    let known = sign(Algorithm::RS256, Some("test-rsa-1"), &claims("SG"));
    assert!(auth.authenticate(&bearer(&known)).await.is_ok());
}

#[tokio::test]
async fn keys_older_than_the_refresh_interval_are_fetched_again() {
    let server = JwksServer::start(jwks_with(&["test-rsa-1"])).await;
    let remote = jwks::RemoteJwks::start(
        &server.url,
        Duration::from_secs(5),
        Duration::ZERO,
        JwksTiming {
            min_interval: Duration::ZERO,
        },
    )
    .await
    .unwrap();
    assert_eq!(remote.keys().await.len(), 1);
    server.serve(StatusCode::OK, jwks_with(&["test-rsa-1", "test-ec-1"]));
    assert_eq!(remote.keys().await.len(), 2);
    assert_eq!(server.hits(), 3);

    let cached = jwks::RemoteJwks::start(
        &server.url,
        Duration::from_secs(5),
        Duration::from_secs(3600),
        JwksTiming::default(),
    )
    .await
    .unwrap();
    let before = server.hits();
    assert_eq!(cached.keys().await.len(), 2);
    assert_eq!(server.hits(), before);
}

#[tokio::test]
async fn unreachable_or_invalid_jwks_url_fails_at_start() {
    let server = JwksServer::start("{}".to_owned()).await;
    let error = Authenticator::from_settings(&jwks_url_settings(&server.url), au())
        .await
        .unwrap_err();
    assert!(
        matches!(error, AuthSetupError::FetchJwks { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("not a JWKS document"), "{error}");

    server.serve(StatusCode::NOT_FOUND, String::new());
    let error = Authenticator::from_settings(&jwks_url_settings(&server.url), au())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("HTTP status 404"), "{error}");

    // Nothing listens on the port of a dropped listener.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!("http://{}/jwks", listener.local_addr().unwrap());
    drop(listener);
    let error = Authenticator::from_settings(&jwks_url_settings(&closed), au())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("cannot connect"), "{error}");
}
