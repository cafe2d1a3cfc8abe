//! [`SecretString`] and URL password redaction.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// The text that replaces a secret in `Debug`, `Display` and redacted URLs.
pub const REDACTED: &str = "[redacted]";

/// A string that must not appear in logs: a password, a token, a URL with credentials.
///
/// `Debug` and `Display` print `[redacted]`. The value is reachable only through
/// [`SecretString::expose_secret`], which should be called only where the value is sent over
/// the wire (a connection string, an `Authorization` header). It deliberately does not
/// implement `Serialize`, so a secret cannot be written back out by accident.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret value.
    pub fn new(secret: impl Into<String>) -> Self {
        SecretString(secret.into())
    }

    /// Returns the secret value. Never log the result.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl From<String> for SecretString {
    fn from(secret: String) -> Self {
        SecretString(secret)
    }
}

impl From<&str> for SecretString {
    fn from(secret: &str) -> Self {
        SecretString(secret.to_owned())
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(REDACTED)
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(SecretString)
    }
}

/// Query parameters whose value is a password (libpq and sqlx accept these in the URL).
const PASSWORD_QUERY_KEYS: &[&str] = &["password", "sslpassword"];

/// Returns `url` with its password replaced by `[redacted]`, for logs and summaries.
///
/// Only the password is masked: the scheme, user name, host, port, path and other query
/// parameters are kept, so the result still tells an operator where the node connects. Masked
/// parts are the password of the `user:password@` user info and the value of `password=` /
/// `sslpassword=` query parameters. The rest of the text is copied verbatim (no
/// normalisation). A value without a `scheme:` prefix is not recognisably a URL and is
/// replaced entirely by `[redacted]`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once(':') else {
        return REDACTED.to_owned();
    };
    let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !is_scheme {
        return REDACTED.to_owned();
    }

    let mut redacted = String::with_capacity(url.len());
    redacted.push_str(scheme);
    redacted.push(':');

    let after_authority = match rest.strip_prefix("//") {
        Some(after_slashes) => {
            let authority_end = after_slashes
                .find(['/', '?', '#'])
                .unwrap_or(after_slashes.len());
            let (authority, after_authority) = after_slashes.split_at(authority_end);
            redacted.push_str("//");
            match authority.rsplit_once('@') {
                Some((user_info, host)) => {
                    match user_info.split_once(':') {
                        Some((user, _password)) => {
                            redacted.push_str(user);
                            redacted.push(':');
                            redacted.push_str(REDACTED);
                        }
                        None => redacted.push_str(user_info),
                    }
                    redacted.push('@');
                    redacted.push_str(host);
                }
                None => redacted.push_str(authority),
            }
            after_authority
        }
        None => rest,
    };

    let (before_fragment, fragment) = match after_authority.split_once('#') {
        Some((before, fragment)) => (before, Some(fragment)),
        None => (after_authority, None),
    };
    match before_fragment.split_once('?') {
        Some((path, query)) => {
            redacted.push_str(path);
            redacted.push('?');
            for (index, pair) in query.split('&').enumerate() {
                if index > 0 {
                    redacted.push('&');
                }
                match pair.split_once('=') {
                    Some((key, _value))
                        if PASSWORD_QUERY_KEYS
                            .iter()
                            .any(|password_key| key.eq_ignore_ascii_case(password_key)) =>
                    {
                        redacted.push_str(key);
                        redacted.push('=');
                        redacted.push_str(REDACTED);
                    }
                    _ => redacted.push_str(pair),
                }
            }
        }
        None => redacted.push_str(before_fragment),
    }
    if let Some(fragment) = fragment {
        redacted.push('#');
        redacted.push_str(fragment);
    }
    redacted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let secret = SecretString::new("hunter2");
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(format!("{secret}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(secret.clone())), "Some([redacted])");
        assert_eq!(secret.expose_secret(), "hunter2");
    }

    #[test]
    fn redacts_only_the_password_of_the_user_info() {
        assert_eq!(
            redact_url("postgres://igl:s3cr3t@db.example:5432/igl?sslmode=require"),
            "postgres://igl:[redacted]@db.example:5432/igl?sslmode=require"
        );
        assert_eq!(
            redact_url("postgresql://igl:p%40ss:word@db/igl"),
            "postgresql://igl:[redacted]@db/igl"
        );
    }

    #[test]
    fn keeps_urls_without_password_unchanged() {
        for url in [
            "sqlite://./data/igl.db",
            "sqlite:///var/lib/igl/igl.db?mode=rwc",
            "sqlite::memory:",
            "postgres://igl@db/igl",
            "postgres://db/igl",
            "postgres:///igl?host=/run/postgresql",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }

    #[test]
    fn redacts_password_query_parameters() {
        assert_eq!(
            redact_url("postgres://db/igl?user=igl&password=s3cr3t&sslpassword=k3y#x"),
            "postgres://db/igl?user=igl&password=[redacted]&sslpassword=[redacted]#x"
        );
        assert_eq!(
            redact_url("postgres://db/igl?PASSWORD=s3cr3t"),
            "postgres://db/igl?PASSWORD=[redacted]"
        );
    }

    #[test]
    fn hides_values_that_are_not_urls() {
        assert_eq!(redact_url("s3cr3t"), "[redacted]");
        assert_eq!(redact_url("/path:with-colon"), "[redacted]");
    }
}
