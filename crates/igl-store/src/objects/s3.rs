//! Amazon S3 and S3-compatible servers as the backend of [`ObjectLake`](super::ObjectLake).

use std::fmt;

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use tracing::info;

/// The process environment variables [`ObjectLake::s3`](super::ObjectLake::s3) reads
/// credentials from when [`S3Options::credentials`] is `None`: static keys, web identity
/// (EKS service accounts), ECS container credentials and the instance metadata endpoint.
/// Other `AWS_*` variables (endpoint, region, bucket) are deliberately not read: those come
/// from the node's configuration only.
pub const S3_CREDENTIAL_VARIABLES: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_ENDPOINT_URL_STS",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_METADATA_ENDPOINT",
    "AWS_IMDSV1_FALLBACK",
];

/// Where and how [`ObjectLake::s3`](super::ObjectLake::s3) stores documents. `Debug` hides
/// the secret key, the session token and the environment's values.
#[derive(Clone)]
pub struct S3Options {
    /// The bucket (must exist).
    pub bucket: String,
    /// Region used for request signing.
    pub region: String,
    /// Base URL of an S3-compatible server; `None` for Amazon S3 in `region`.
    pub endpoint: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`) when true, virtual-hosted style
    /// (`bucket.endpoint/key`) when false.
    pub path_style: bool,
    /// Whether a plain `http://` endpoint may be used.
    pub allow_http: bool,
    /// Key prefix of every object (`""` for the bucket root).
    pub prefix: String,
    /// Static credentials; `None` reads [`S3_CREDENTIAL_VARIABLES`] from `environment`, and
    /// without those the instance metadata service is asked.
    pub credentials: Option<S3Credentials>,
    /// The process environment (`std::env::vars()`), consulted only for
    /// [`S3_CREDENTIAL_VARIABLES`] when `credentials` is `None`.
    pub environment: Vec<(String, String)>,
}

impl fmt::Debug for S3Options {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let variables: Vec<&str> = self
            .environment
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| S3_CREDENTIAL_VARIABLES.contains(name))
            .collect();
        formatter
            .debug_struct("S3Options")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("path_style", &self.path_style)
            .field("allow_http", &self.allow_http)
            .field("prefix", &self.prefix)
            .field("credentials", &self.credentials)
            .field("credential_variables", &variables)
            .finish()
    }
}

/// Static S3 credentials. `Debug` shows only the access key id.
#[derive(Clone)]
pub struct S3Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"[redacted]")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

/// Builds the `object_store` S3 client for `options` (no request is made).
pub(super) fn build_backend(options: &S3Options) -> Result<AmazonS3, object_store::Error> {
    install_crypto_provider();
    let mut builder = AmazonS3Builder::new();
    let source = match &options.credentials {
        Some(credentials) => {
            builder = builder
                .with_access_key_id(&credentials.access_key_id)
                .with_secret_access_key(&credentials.secret_access_key);
            if let Some(token) = &credentials.session_token {
                builder = builder.with_token(token);
            }
            "configuration"
        }
        None => {
            let mut found = false;
            for (name, value) in &options.environment {
                if !S3_CREDENTIAL_VARIABLES.contains(&name.as_str()) {
                    continue;
                }
                if let Ok(key) = name.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                    builder = builder.with_config(key, value);
                    found = true;
                }
            }
            if found {
                "environment"
            } else {
                "instance metadata"
            }
        }
    };
    builder = builder
        .with_bucket_name(&options.bucket)
        .with_region(&options.region)
        .with_virtual_hosted_style_request(!options.path_style)
        .with_allow_http(options.allow_http)
        // Objects are never tagged; some S3-compatible servers reject the tagging header.
        .with_disable_tagging(true);
    if let Some(endpoint) = &options.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    let backend = builder.build()?;
    info!(
        bucket = %options.bucket,
        region = %options.region,
        endpoint = options.endpoint.as_deref().unwrap_or("amazon s3"),
        path_style = options.path_style,
        prefix = %options.prefix,
        credentials = source,
        "s3 object store configured"
    );
    Ok(backend)
}

/// The S3 client's HTTP stack (reqwest 0.13 built without a bundled crypto provider)
/// takes rustls' process-wide provider: install `ring`, unless one is installed already.
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Fails only when another thread installed one first, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secrets() {
        let options = S3Options {
            bucket: "igl-au".into(),
            region: "us-east-1".into(),
            endpoint: Some("http://127.0.0.1:9000".into()),
            path_style: true,
            allow_http: true,
            prefix: "au".into(),
            credentials: Some(S3Credentials {
                access_key_id: "AKIA123".into(),
                secret_access_key: "hunter2".into(),
                session_token: Some("t0ken".into()),
            }),
            environment: vec![
                ("AWS_SECRET_ACCESS_KEY".into(), "env-secret".into()),
                ("HOME".into(), "/root".into()),
            ],
        };
        let debug = format!("{options:?}");
        assert!(debug.contains("AKIA123"), "{debug}");
        assert!(debug.contains("AWS_SECRET_ACCESS_KEY"), "{debug}");
        for secret in ["hunter2", "t0ken", "env-secret", "HOME"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
    }
}
