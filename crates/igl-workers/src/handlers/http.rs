//! HTTP helpers of the handlers that call other parties' APIs directly (the object spider
//! and a foreign Document API). Channels are called through the Channel API port
//! (`igl_core::channel::ChannelClient`), not with these.

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{StatusCode, Url};

use crate::JobError;

/// The longest `Retry-After` honoured; a longer one is capped.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Why an HTTP client of a handler cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    /// A configured base URL is unusable.
    #[error("invalid base URL for {name}: {reason}")]
    InvalidUrl {
        /// The jurisdiction (or other name) whose URL it is.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The HTTP client could not be built (TLS initialisation).
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// A non-success HTTP answer from a Document API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{method} {url} answered {status}")]
pub struct HttpStatusError {
    /// The request method.
    pub method: &'static str,
    /// The URL called (base URLs carry no credentials; validated by the configuration).
    pub url: String,
    /// The HTTP status.
    pub status: StatusCode,
    /// The delay the server asked for with `Retry-After`, if any (capped at one hour).
    pub retry_after: Option<Duration>,
}

impl HttpStatusError {
    pub(crate) fn new(
        method: &'static str,
        url: &Url,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Self {
        Self {
            method,
            url: url.to_string(),
            status,
            retry_after: retry_after(headers),
        }
    }
}

/// 429 and 5xx are retried after `Retry-After` when given (else with backoff); 401, 403,
/// 404 and 408 with backoff (a grant or a document may not be visible yet, a token may be
/// fixed by the operator), bounded by the retry policy; any other status is permanent.
impl From<HttpStatusError> for JobError {
    fn from(error: HttpStatusError) -> Self {
        let status = error.status;
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            match error.retry_after {
                Some(delay) => JobError::retry_after(delay, error),
                None => JobError::transient(error),
            }
        } else if matches!(
            status,
            StatusCode::UNAUTHORIZED
                | StatusCode::FORBIDDEN
                | StatusCode::NOT_FOUND
                | StatusCode::REQUEST_TIMEOUT
        ) {
            JobError::transient(error)
        } else {
            JobError::permanent(error)
        }
    }
}

/// Parses `Retry-After`: delay-seconds or an HTTP-date (IMF-fixdate), capped at one hour.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let delay = if let Ok(seconds) = value.parse::<u64>() {
        Duration::from_secs(seconds)
    } else {
        let format = time::macros::format_description!(
            "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
        );
        let date = time::PrimitiveDateTime::parse(value, format)
            .ok()?
            .assume_utc();
        let now = time::OffsetDateTime::now_utc();
        Duration::try_from(date - now).unwrap_or(Duration::ZERO)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// `base` with `segments` appended as path segments (percent-encoded).
pub(crate) fn endpoint(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

/// Parses a configured base URL: `http:` or `https:`, usable as a base.
pub(crate) fn parse_base_url(value: &str) -> Result<Url, String> {
    let url = Url::parse(value).map_err(|error| format!("{value:?} is not a URL: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(format!("{value:?} is not an http: or https: base URL"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(RETRY_AFTER, "999999".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
        headers.insert(
            RETRY_AFTER,
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        let later = time::OffsetDateTime::now_utc() + time::Duration::seconds(120);
        let format = time::macros::format_description!(
            "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
        );
        headers.insert(RETRY_AFTER, later.format(format).unwrap().parse().unwrap());
        let delay = retry_after(&headers).unwrap();
        assert!(
            delay > Duration::from_secs(100) && delay <= Duration::from_secs(120),
            "{delay:?}"
        );
        headers.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn endpoints_append_encoded_segments() {
        let base = parse_base_url("http://channel.example/api/").unwrap();
        assert_eq!(
            endpoint(&base, &["messages", "a/b"]).as_str(),
            "http://channel.example/api/messages/a%2Fb"
        );
        let bare = parse_base_url("http://channel.example").unwrap();
        assert_eq!(
            endpoint(&bare, &["messages", "1"]).as_str(),
            "http://channel.example/messages/1"
        );
        assert!(parse_base_url("mailto:x@y").is_err());
    }

    #[test]
    fn status_errors_map_to_retries() {
        let url = Url::parse("http://x/").unwrap();
        let error = |status: u16, retry: Option<u64>| {
            JobError::from(HttpStatusError {
                method: "GET",
                url: url.to_string(),
                status: StatusCode::from_u16(status).unwrap(),
                retry_after: retry.map(Duration::from_secs),
            })
        };
        assert!(
            matches!(error(503, Some(3)), JobError::RetryAfter(d, _) if d == Duration::from_secs(3))
        );
        assert!(matches!(error(429, None), JobError::Transient(_)));
        assert!(matches!(error(404, None), JobError::Transient(_)));
        assert!(matches!(error(400, None), JobError::Permanent(_)));
        assert!(matches!(error(410, None), JobError::Permanent(_)));
    }
}
