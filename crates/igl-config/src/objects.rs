//! The `[objects] type = "s3"` settings ([`S3ObjectSettings`]) and their validation.

use serde::{Deserialize, Deserializer};

use crate::error::ConfigProblem;
use crate::secret::SecretString;

/// The largest document an S3 object store accepts: S3 copies at most 5 GiB in one
/// `CopyObject` request, and a finished upload is copied to its content address.
pub const S3_MAX_DOCUMENT_BYTES: u64 = 5 * 1024 * 1024 * 1024;

/// Region used when `objects.region` is not set (the AWS default, and what most
/// S3-compatible servers accept).
pub const S3_DEFAULT_REGION: &str = "us-east-1";

/// `[objects] type = "s3"`: documents in a bucket of Amazon S3 or an S3-compatible server.
///
/// ```toml
/// [objects]
/// type = "s3"
/// bucket = "igl-au-documents"
/// region = "ap-southeast-2"
/// # endpoint = "http://127.0.0.1:9000"   # S3-compatible server; default: AWS for the region
/// # path_style = true                      # false: virtual-hosted style (bucket.host)
/// # allow_http = false                     # must be true for an http:// endpoint
/// # prefix = "au"                          # every key under this prefix
/// # access_key_id = "…"                    # else AWS_ACCESS_KEY_ID, web identity, …
/// # secret_access_key = "…"
/// ```
///
/// **Credentials**: `access_key_id` + `secret_access_key` (+ `session_token`) when set;
/// otherwise the standard AWS variables of the process environment (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, web identity with
/// `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`, ECS container credentials), then the EC2
/// instance metadata service. `Debug` never shows the secret key or the session token.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3ObjectSettings {
    /// Bucket name (S3 rules: 3–63 lower-case letters, digits, `.` and `-`, starting and
    /// ending with a letter or digit). Required; the bucket must exist.
    pub bucket: String,
    /// Region used for request signing. Default `us-east-1`.
    #[serde(default = "default_region")]
    pub region: String,
    /// Base URL of an S3-compatible server (`http://host:port` or `https://…`), without
    /// credentials, query or fragment. Default none: Amazon S3 for `region`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`, what most S3-compatible servers expect)
    /// when true; virtual-hosted style (`bucket.endpoint/key`) when false. Default true.
    #[serde(default = "default_true", deserialize_with = "lenient_bool")]
    pub path_style: bool,
    /// Whether a plain `http://` endpoint is allowed. Default false; set it only for a
    /// server on a trusted network.
    #[serde(default, deserialize_with = "lenient_bool")]
    pub allow_http: bool,
    /// Key prefix under which the node keeps its objects (`/`-separated segments of
    /// `[A-Za-z0-9._-]`, no empty, `.` or `..` segment), so that several nodes can share a
    /// bucket. Default none (the bucket root).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Access key id; set together with `secret_access_key`. Default: from the environment.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Secret access key; set together with `access_key_id`.
    #[serde(default)]
    pub secret_access_key: Option<SecretString>,
    /// Session token of temporary credentials; only with `access_key_id`.
    #[serde(default)]
    pub session_token: Option<SecretString>,
}

fn default_region() -> String {
    S3_DEFAULT_REGION.to_owned()
}

fn default_true() -> bool {
    true
}

/// A boolean, also written as a string (`"true"`, `"false"`, `"yes"`, `"no"`, `"1"`, `"0"`,
/// any case): values from `IGL_*` variables are strings, and inside the tagged `[objects]`
/// enum figment's own lenient conversion does not apply.
fn lenient_bool<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum BoolOrString {
        Bool(bool),
        String(String),
    }
    match BoolOrString::deserialize(deserializer)? {
        BoolOrString::Bool(value) => Ok(value),
        BoolOrString::String(text) => match text.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err(serde::de::Error::custom(format!(
                "invalid value {text:?}, expected a boolean (true or false)"
            ))),
        },
    }
}

impl S3ObjectSettings {
    /// Settings for `bucket` with every other key at its default.
    pub fn new(bucket: impl Into<String>) -> Self {
        S3ObjectSettings {
            bucket: bucket.into(),
            region: default_region(),
            endpoint: None,
            path_style: true,
            allow_http: false,
            prefix: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
        }
    }

    /// Whether the credentials come from these settings (`access_key_id` is set) rather
    /// than from the environment.
    pub fn has_static_credentials(&self) -> bool {
        self.access_key_id.is_some()
    }

    /// A one-line description without secrets, for summaries and logs, e.g.
    /// `s3 bucket igl-au at http://127.0.0.1:9000 (region us-east-1, path-style, prefix au,
    /// credentials from configuration)`.
    pub fn describe(&self) -> String {
        let endpoint = self.endpoint.as_deref().unwrap_or("amazon s3");
        let style = if self.path_style {
            "path-style"
        } else {
            "virtual-hosted style"
        };
        let prefix = match &self.prefix {
            Some(prefix) => format!(", prefix {prefix}"),
            None => String::new(),
        };
        let credentials = if self.has_static_credentials() {
            "configuration"
        } else {
            "environment"
        };
        format!(
            "s3 bucket {} at {endpoint} (region {}, {style}{prefix}, credentials from {credentials})",
            self.bucket, self.region
        )
    }

    /// Every rule serde cannot express; keys are `objects.<field>`. `max_document_bytes` is
    /// `documents.max_bytes`, checked against [`S3_MAX_DOCUMENT_BYTES`].
    pub(crate) fn problems(&self, max_document_bytes: u64) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut push = |key: &str, message: String| problems.push(ConfigProblem::new(key, message));
        if !is_bucket_name(&self.bucket) {
            push(
                "objects.bucket",
                format!(
                    "{:?} is not a valid S3 bucket name (3-63 lower-case letters, digits, dots \
                     and hyphens, starting and ending with a letter or digit)",
                    self.bucket
                ),
            );
        }
        let region_is_valid = !self.region.is_empty()
            && self
                .region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !region_is_valid {
            push(
                "objects.region",
                format!(
                    "{:?} is not a region name (letters, digits, - and _)",
                    self.region
                ),
            );
        }
        if let Some(endpoint) = &self.endpoint
            && let Some(message) = endpoint_problem(endpoint, self.allow_http)
        {
            push("objects.endpoint", message);
        }
        if let Some(prefix) = &self.prefix
            && !is_key_prefix(prefix)
        {
            push(
                "objects.prefix",
                format!(
                    "{prefix:?} is not a key prefix (segments of [A-Za-z0-9._-] separated by /, \
                     none empty, . or ..)"
                ),
            );
        }
        match (&self.access_key_id, &self.secret_access_key) {
            (Some(key_id), _) if key_id.trim().is_empty() => {
                push("objects.access_key_id", "must not be empty".to_owned());
            }
            (Some(_), None) => push(
                "objects.secret_access_key",
                "is required when objects.access_key_id is set".to_owned(),
            ),
            (None, Some(_)) => push(
                "objects.access_key_id",
                "is required when objects.secret_access_key is set".to_owned(),
            ),
            _ => {}
        }
        if self
            .secret_access_key
            .as_ref()
            .is_some_and(|secret| secret.expose_secret().is_empty())
        {
            push("objects.secret_access_key", "must not be empty".to_owned());
        }
        if self.session_token.is_some() && self.access_key_id.is_none() {
            push(
                "objects.session_token",
                "is only used with objects.access_key_id and objects.secret_access_key".to_owned(),
            );
        }
        if max_document_bytes > S3_MAX_DOCUMENT_BYTES {
            push(
                "documents.max_bytes",
                format!(
                    "{max_document_bytes} is larger than {S3_MAX_DOCUMENT_BYTES} (5 GiB), the \
                     largest document the s3 object store accepts"
                ),
            );
        }
        problems
    }
}

/// Why `endpoint` is not a usable S3 endpoint, without repeating credentials it may hold.
fn endpoint_problem(endpoint: &str, allow_http: bool) -> Option<String> {
    let url = match url::Url::parse(endpoint) {
        Ok(url) => url,
        Err(error) => return Some(format!("is not a valid URL: {error}")),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Some(
            "must not contain credentials (use objects.access_key_id and \
             objects.secret_access_key)"
                .to_owned(),
        );
    }
    match url.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => {
            return Some(
                "is a plain http URL but objects.allow_http is false (set it to true for an \
                 S3 server on a trusted network)"
                    .to_owned(),
            );
        }
        other => {
            return Some(format!(
                "unsupported scheme {other:?} (expected http or https)"
            ));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Some("has no host".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Some("must not have a query or fragment".to_owned());
    }
    None
}

/// The S3 bucket naming rules for new buckets (without the rarely relevant reserved
/// prefixes and suffixes).
fn is_bucket_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && !name.contains("..")
}

/// `/`-separated segments of `[A-Za-z0-9._-]`, none empty, `.` or `..`.
fn is_key_prefix(prefix: &str) -> bool {
    prefix.split('/').all(|segment| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(settings: &S3ObjectSettings) -> Vec<String> {
        settings
            .problems(100)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn defaults_with_a_bucket_are_valid() {
        assert_eq!(
            problems(&S3ObjectSettings::new("igl-au")),
            Vec::<String>::new()
        );
        let mut full = S3ObjectSettings::new("igl.au-docs.1");
        full.region = "ap-southeast-2".to_owned();
        full.endpoint = Some("http://127.0.0.1:9000".to_owned());
        full.allow_http = true;
        full.prefix = Some("nodes/au".to_owned());
        full.access_key_id = Some("AKIA".to_owned());
        full.secret_access_key = Some("secret".into());
        full.session_token = Some("token".into());
        assert_eq!(problems(&full), Vec::<String>::new());
    }

    #[test]
    fn bucket_names_follow_the_s3_rules() {
        for bad in [
            "ab",
            "Igl",
            "igl_au",
            "-igl",
            "igl-",
            "a..b",
            &"a".repeat(64),
        ] {
            let settings = S3ObjectSettings::new(bad);
            assert_eq!(problems(&settings).len(), 1, "{bad}");
            assert!(
                problems(&settings)[0].starts_with("objects.bucket: "),
                "{bad}"
            );
        }
    }

    #[test]
    fn endpoint_rules() {
        let cases = [
            (
                "s3.example",
                "objects.endpoint: is not a valid URL: relative URL without a base",
            ),
            (
                "http://s3.internal:9000",
                "objects.endpoint: is a plain http URL but objects.allow_http is false (set it \
                 to true for an S3 server on a trusted network)",
            ),
            (
                "https://key:secret@s3.example",
                "objects.endpoint: must not contain credentials (use objects.access_key_id and \
                 objects.secret_access_key)",
            ),
            (
                "ftp://s3.example",
                "objects.endpoint: unsupported scheme \"ftp\" (expected http or https)",
            ),
            (
                "https://s3.example/?x=1",
                "objects.endpoint: must not have a query or fragment",
            ),
        ];
        for (endpoint, expected) in cases {
            let mut settings = S3ObjectSettings::new("igl-au");
            settings.endpoint = Some(endpoint.to_owned());
            assert_eq!(problems(&settings), [expected], "{endpoint}");
        }
        let mut https = S3ObjectSettings::new("igl-au");
        https.endpoint = Some("https://s3.example:8443".to_owned());
        assert_eq!(problems(&https), Vec::<String>::new());
    }

    #[test]
    fn credentials_come_in_pairs_and_never_show() {
        let mut key_only = S3ObjectSettings::new("igl-au");
        key_only.access_key_id = Some("AKIA".to_owned());
        assert_eq!(
            problems(&key_only),
            ["objects.secret_access_key: is required when objects.access_key_id is set"]
        );
        let mut secret_only = S3ObjectSettings::new("igl-au");
        secret_only.secret_access_key = Some("hunter2".into());
        secret_only.session_token = Some("t0ken".into());
        assert_eq!(
            problems(&secret_only),
            [
                "objects.access_key_id: is required when objects.secret_access_key is set",
                "objects.session_token: is only used with objects.access_key_id and \
                 objects.secret_access_key",
            ]
        );
        let debug = format!("{secret_only:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("t0ken"),
            "{debug}"
        );
        assert!(!secret_only.describe().contains("hunter2"));
    }

    #[test]
    fn prefix_and_region_rules() {
        for bad in ["/au", "au/", "a//b", "a/../b", "a b", ""] {
            let mut settings = S3ObjectSettings::new("igl-au");
            settings.prefix = Some(bad.to_owned());
            assert_eq!(problems(&settings).len(), 1, "{bad:?}");
        }
        let mut settings = S3ObjectSettings::new("igl-au");
        settings.region = "eu west".to_owned();
        assert_eq!(
            problems(&settings),
            ["objects.region: \"eu west\" is not a region name (letters, digits, - and _)"]
        );
    }

    #[test]
    fn documents_larger_than_one_copy_are_refused() {
        let settings = S3ObjectSettings::new("igl-au");
        assert!(settings.problems(S3_MAX_DOCUMENT_BYTES).is_empty());
        let problems: Vec<String> = settings
            .problems(S3_MAX_DOCUMENT_BYTES + 1)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            problems,
            [
                "documents.max_bytes: 5368709121 is larger than 5368709120 (5 GiB), the largest \
              document the s3 object store accepts"
            ]
        );
    }

    #[test]
    fn describe_names_where_without_secrets() {
        let mut settings = S3ObjectSettings::new("igl-au");
        settings.endpoint = Some("http://127.0.0.1:9000".to_owned());
        settings.prefix = Some("au".to_owned());
        settings.access_key_id = Some("AKIA".to_owned());
        settings.secret_access_key = Some("hunter2".into());
        assert_eq!(
            settings.describe(),
            "s3 bucket igl-au at http://127.0.0.1:9000 (region us-east-1, path-style, prefix au, \
             credentials from configuration)"
        );
    }
}
