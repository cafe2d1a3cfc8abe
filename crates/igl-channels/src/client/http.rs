//! [`HttpChannelClient`]: the Channel API over HTTP (REFERENCE-WIRE §5.1), tolerant of the
//! reference dialects (§5.5): a post is answered 200, 201 or 202 with `id` an integer or a
//! string; subscriptions 200 or 202.

use std::time::Duration;

use async_trait::async_trait;
use igl_core::channel::{
    ChannelClient, ChannelError, ChannelMessage, ChannelPage, ChannelReceipt, CircuitState,
    ListQuery, ListedMessage, RemoteStatus,
};
use igl_domain::{MessageContent, MessageFields};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{RequestBuilder, StatusCode, Url};
use serde_json::Value;
use time::format_description::well_known::{Rfc2822, Rfc3339};

use super::breaker::{CircuitBreaker, CircuitBreakerConfig};

/// The largest response body read from a channel; a longer one is an invalid response.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// The header that makes a post idempotent on endpoints that support it (ours); its value
/// is the message reference `{sender}:{sender_ref}`.
pub const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";

/// How much of an error body is kept in [`ChannelError::Refused`].
const DETAIL_CHARS: usize = 200;

/// Timeouts and circuit breaker of an [`HttpChannelClient`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpClientConfig {
    /// Longest wait for a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Longest wait for a whole call, from sending the request to the end of the body.
    pub request_timeout: Duration,
    /// When the channel's circuit opens and for how long.
    pub breaker: CircuitBreakerConfig,
}

impl Default for HttpClientConfig {
    /// 3 s to connect, 10 s per call, [`CircuitBreakerConfig::default`].
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            breaker: CircuitBreakerConfig::default(),
        }
    }
}

/// Why an [`HttpChannelClient`] cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    /// The base URL is not an absolute `http:`/`https:` URL.
    #[error("{url:?} is not an http: or https: base URL for channel {channel}")]
    InvalidUrl {
        /// The channel id.
        channel: String,
        /// The URL as given.
        url: String,
    },
    /// The HTTP client could not be built (TLS backend initialisation).
    #[error("cannot build the http client of channel {channel}")]
    Build {
        /// The channel id.
        channel: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
}

/// A [`ChannelClient`] speaking HTTP to one channel endpoint, with a timeout on every call
/// and a [`CircuitBreaker`] of its own.
#[derive(Debug)]
pub struct HttpChannelClient {
    channel_id: String,
    base: Url,
    http: reqwest::Client,
    request_timeout: Duration,
    breaker: CircuitBreaker,
    forward_sender_ref: bool,
}

impl HttpChannelClient {
    /// Also send the sender's reference (`sender_ref`) with posted messages. Only for
    /// channels that accept it (our shared-db endpoint does; the reference endpoints reject
    /// unknown fields).
    pub fn with_sender_ref_forwarding(mut self, forward: bool) -> Self {
        self.forward_sender_ref = forward;
        self
    }

    /// A client of the channel `channel_id` served at `base_url` (`http://host:8180/`;
    /// the API paths are appended to it), with its own connection pool.
    ///
    /// # Errors
    ///
    /// [`HttpClientError`] for a base URL that is not `http:`/`https:`, or when the HTTP
    /// client cannot be built.
    pub fn new(
        channel_id: impl Into<String>,
        base_url: &str,
        config: HttpClientConfig,
    ) -> Result<Self, HttpClientError> {
        let channel_id = channel_id.into();
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|source| HttpClientError::Build {
                channel: channel_id.clone(),
                source,
            })?;
        Self::with_http_client(channel_id, base_url, http, config)
    }

    /// Like [`HttpChannelClient::new`], sharing `http` (and its connection pool) with other
    /// clients. `config.request_timeout` is applied to every request; the connect timeout
    /// and redirect policy are `http`'s own (build it without redirects: a channel that
    /// redirects is answered as an invalid response only when redirects are off).
    ///
    /// # Errors
    ///
    /// [`HttpClientError::InvalidUrl`] for a base URL that is not `http:`/`https:`.
    pub fn with_http_client(
        channel_id: impl Into<String>,
        base_url: &str,
        http: reqwest::Client,
        config: HttpClientConfig,
    ) -> Result<Self, HttpClientError> {
        let channel_id = channel_id.into();
        let base = Url::parse(base_url)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https") && !url.cannot_be_a_base())
            .ok_or_else(|| HttpClientError::InvalidUrl {
                channel: channel_id.clone(),
                url: base_url.to_owned(),
            })?;
        Ok(Self {
            breaker: CircuitBreaker::new(channel_id.clone(), config.breaker),
            channel_id,
            base,
            http,
            request_timeout: config.request_timeout,
            forward_sender_ref: false,
        })
    }

    /// The channel's circuit breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// The base URL.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// `{base}/{segments…}`, each segment percent-encoded.
    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// Sends `request` to `target` through the circuit breaker and returns the status and
    /// body of a 2xx answer.
    async fn call(
        &self,
        request: RequestBuilder,
        target: Target<'_>,
    ) -> Result<(StatusCode, Vec<u8>), ChannelError> {
        let permit = self
            .breaker
            .acquire()
            .map_err(|retry_in| ChannelError::CircuitOpen {
                channel: self.channel_id.clone(),
                retry_in,
            })?;
        let result = self
            .exchange(request.timeout(self.request_timeout), target)
            .await;
        match &result {
            Err(error) if error.is_transient() => permit.failed(),
            _ => permit.succeeded(),
        }
        result
    }

    async fn exchange(
        &self,
        request: RequestBuilder,
        target: Target<'_>,
    ) -> Result<(StatusCode, Vec<u8>), ChannelError> {
        let mut response = request
            .send()
            .await
            .map_err(|error| self.unavailable(error, None))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| self.unavailable(error, None))?
        {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(self.invalid(format!(
                    "the response body is longer than {MAX_RESPONSE_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if status.is_success() {
            return Ok((status, body));
        }
        Err(self.classify(status, detail(&body), retry_after, target))
    }

    /// The error for a non-2xx answer from `target`: unavailable (408, 429, 5xx),
    /// misconfigured (401, 403; 404 and 405 where every channel serves the path), not
    /// found (404 for a message), refused (other 4xx; 404, 405 and 501 for the listing).
    fn classify(
        &self,
        status: StatusCode,
        detail: String,
        retry_after: Option<Duration>,
        target: Target<'_>,
    ) -> ChannelError {
        let channel = self.channel_id.clone();
        let code = status.as_u16();
        match (status, target) {
            (StatusCode::NOT_FOUND, Target::Message(id)) => ChannelError::NotFound {
                channel,
                id: id.to_owned(),
            },
            (
                StatusCode::NOT_FOUND
                | StatusCode::METHOD_NOT_ALLOWED
                | StatusCode::NOT_IMPLEMENTED,
                Target::Listing,
            ) => ChannelError::Refused {
                channel,
                status: code,
                detail,
            },
            (
                StatusCode::UNAUTHORIZED
                | StatusCode::FORBIDDEN
                | StatusCode::NOT_FOUND
                | StatusCode::METHOD_NOT_ALLOWED,
                _,
            ) => ChannelError::Misconfigured {
                channel,
                status: code,
                detail,
            },
            (StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS, _) => {
                self.unavailable(HttpStatusError { status, detail }, retry_after)
            }
            (status, _) if status.is_server_error() => {
                self.unavailable(HttpStatusError { status, detail }, retry_after)
            }
            (status, _) if status.is_client_error() => ChannelError::Refused {
                channel,
                status: code,
                detail,
            },
            (status, _) => self.invalid(format!("unexpected HTTP status {status}")),
        }
    }

    fn unavailable(
        &self,
        source: impl Into<igl_core::BoxError>,
        retry_after: Option<Duration>,
    ) -> ChannelError {
        ChannelError::Unavailable {
            channel: self.channel_id.clone(),
            retry_after,
            source: source.into(),
        }
    }

    fn invalid(&self, detail: impl Into<String>) -> ChannelError {
        ChannelError::InvalidResponse {
            channel: self.channel_id.clone(),
            detail: detail.into(),
        }
    }

    fn json_object(&self, body: &[u8]) -> Result<serde_json::Map<String, Value>, ChannelError> {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(object)) => Ok(object),
            Ok(_) => Err(self.invalid("the body is not a JSON object")),
            Err(error) => Err(self.invalid(format!("the body is not JSON: {error}"))),
        }
    }

    fn status_of(
        &self,
        object: &serde_json::Map<String, Value>,
    ) -> Result<RemoteStatus, ChannelError> {
        match object.get("status") {
            Some(Value::String(status)) => Ok(RemoteStatus::parse(status)),
            _ => Err(self.invalid("the body has no string \"status\"")),
        }
    }

    /// Posts a WebSub subscription form.
    async fn subscription(&self, form: &[(&str, String)]) -> Result<(), ChannelError> {
        let url = self.endpoint(&["messages", "subscriptions", "by_jurisdiction"]);
        self.call(self.http.post(url).form(form), Target::Collection)
            .await?;
        Ok(())
    }
}

#[async_trait]
impl ChannelClient for HttpChannelClient {
    fn channel_id(&self) -> &str {
        &self.channel_id
    }

    fn circuit_state(&self) -> CircuitState {
        self.breaker.state()
    }

    async fn post_message(&self, content: &MessageContent) -> Result<ChannelReceipt, ChannelError> {
        self.post(content, None, None).await
    }

    /// Sends `Idempotency-Key: {sender}:{sender_ref}` whether or not the body carries
    /// `sender_ref`: our endpoint answers a repeated post with the message it already
    /// stored; reference endpoints ignore the header.
    async fn post_message_with_ref(
        &self,
        content: &MessageContent,
        sender_ref: &igl_domain::SenderRef,
    ) -> Result<ChannelReceipt, ChannelError> {
        let key = format!("{}:{}", content.sender, sender_ref);
        self.post(
            content,
            self.forward_sender_ref.then_some(sender_ref),
            Some(&key),
        )
        .await
    }

    async fn message_status(&self, id: &str) -> Result<RemoteStatus, ChannelError> {
        let request = self.http.get(self.endpoint(&["messages", id]));
        let (_, body) = self.call(request, Target::Message(id)).await?;
        let object = self.json_object(&body)?;
        self.status_of(&object)
    }

    async fn get_message(&self, id: &str) -> Result<ChannelMessage, ChannelError> {
        let request = self.http.get(self.endpoint(&["messages", id]));
        let (_, body) = self.call(request, Target::Message(id)).await?;
        let object = self.json_object(&body)?;
        let status = self.status_of(&object)?;
        let Some(Value::Object(message)) = object.get("message") else {
            return Err(self.invalid("the body has no \"message\" object"));
        };
        Ok(ChannelMessage {
            id: object
                .get("id")
                .and_then(id_text)
                .unwrap_or_else(|| id.to_owned()),
            status,
            message: message_fields(message),
        })
    }

    async fn subscribe(
        &self,
        callback: &str,
        topic: &str,
        lease: Duration,
        secret: Option<&str>,
    ) -> Result<(), ChannelError> {
        let mut form = vec![
            ("hub.mode", "subscribe".to_owned()),
            ("hub.callback", callback.to_owned()),
            ("hub.topic", topic.to_owned()),
            ("hub.lease_seconds", lease.as_secs().to_string()),
        ];
        if let Some(secret) = secret {
            form.push(("hub.secret", secret.to_owned()));
        }
        self.subscription(&form).await
    }

    async fn unsubscribe(&self, callback: &str, topic: &str) -> Result<(), ChannelError> {
        self.subscription(&[
            ("hub.mode", "unsubscribe".to_owned()),
            ("hub.callback", callback.to_owned()),
            ("hub.topic", topic.to_owned()),
        ])
        .await
    }

    async fn list_messages(&self, query: &ListQuery) -> Result<ChannelPage, ChannelError> {
        let mut url = self.endpoint(&["messages"]);
        {
            let mut pairs = url.query_pairs_mut();
            if let Some(receiver) = &query.receiver {
                pairs.append_pair("receiver", receiver.as_str());
            }
            if let Some(since) = &query.updated_since
                && let Ok(since) = since.format(&Rfc3339)
            {
                pairs.append_pair("updated_since", &since);
            }
            if let Some(after_id) = &query.after_id {
                pairs.append_pair("after_id", after_id);
            }
            if let Some(cursor) = &query.cursor {
                pairs.append_pair("cursor", cursor);
            }
            if let Some(limit) = query.limit {
                pairs.append_pair("limit", &limit.to_string());
            }
        }
        let (_, body) = self.call(self.http.get(url), Target::Listing).await?;
        let value: Value = serde_json::from_slice(&body)
            .map_err(|error| self.invalid(format!("the body is not JSON: {error}")))?;
        parse_page(value).ok_or_else(|| {
            self.invalid("the body is neither a list of messages nor an object with \"messages\"")
        })
    }
}

impl HttpChannelClient {
    /// `POST {base}/messages` with the five fields and, when given, `sender_ref` in the
    /// body and the [`IDEMPOTENCY_KEY_HEADER`].
    async fn post(
        &self,
        content: &MessageContent,
        sender_ref: Option<&igl_domain::SenderRef>,
        idempotency_key: Option<&str>,
    ) -> Result<ChannelReceipt, ChannelError> {
        let mut body = serde_json::json!({
            "sender": content.sender.as_str(),
            "receiver": content.receiver.as_str(),
            "subject": content.subject,
            "obj": content.obj,
            "predicate": content.predicate,
        });
        if let Some(sender_ref) = sender_ref {
            body["sender_ref"] = serde_json::Value::from(sender_ref.as_str());
        }
        let mut request = self.http.post(self.endpoint(&["messages"])).json(&body);
        if let Some(key) = idempotency_key {
            request = request.header(IDEMPOTENCY_KEY_HEADER, key);
        }
        let (_, body) = self.call(request, Target::Collection).await?;
        let object = self.json_object(&body)?;
        let id = object
            .get("id")
            .and_then(id_text)
            .ok_or_else(|| self.invalid("the body has no \"id\" (a string or an integer)"))?;
        let status = match object.get("status") {
            Some(Value::String(status)) => Some(RemoteStatus::parse(status)),
            _ => None,
        };
        Ok(ChannelReceipt { id, status })
    }
}

/// What a call addresses, for reading its error statuses.
#[derive(Debug, Clone, Copy)]
enum Target<'a> {
    /// A path every channel serves (`/messages` for posts, subscriptions): a 404 or 405
    /// means a wrong base URL.
    Collection,
    /// `/messages/{id}`: a 404 means the channel does not know the message.
    Message(&'a str),
    /// The optional listing: 404, 405 and 501 mean the channel has none.
    Listing,
}

/// A channel answered with an error status.
#[derive(Debug, thiserror::Error)]
#[error("HTTP {status}: {detail}")]
struct HttpStatusError {
    status: StatusCode,
    detail: String,
}

/// An id as text: a non-empty string, or an integer.
fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(id) if !id.is_empty() => Some(id.clone()),
        Value::Number(number) if number.is_u64() || number.is_i64() => Some(number.to_string()),
        _ => None,
    }
}

/// The raw message fields of a channel's `message` object: strings as they are, other
/// non-null values as their JSON text (so that validation names them), null as absent.
fn message_fields(object: &serde_json::Map<String, Value>) -> MessageFields {
    let field = |name: &str| match object.get(name) {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.clone()),
        Some(other) => Some(other.to_string()),
    };
    MessageFields {
        sender: field("sender"),
        receiver: field("receiver"),
        subject: field("subject"),
        obj: field("obj"),
        predicate: field("predicate"),
        sender_ref: field("sender_ref"),
    }
}

/// A listing: a JSON array of messages, or an object holding the array under `messages`
/// (or `items`, `data`, `results`) and the next cursor under `next_cursor` (or `next`,
/// `cursor`). Each message is `{id, status?, updated_at?, message?}` or a bare id.
fn parse_page(value: Value) -> Option<ChannelPage> {
    let (items, next) = match value {
        Value::Array(items) => (items, None),
        Value::Object(mut object) => {
            let items = ["messages", "items", "data", "results"]
                .into_iter()
                .find_map(|key| match object.remove(key) {
                    Some(Value::Array(items)) => Some(items),
                    _ => None,
                })?;
            let next = ["next_cursor", "next", "cursor"]
                .into_iter()
                .find_map(|key| object.get(key).and_then(id_text));
            (items, next)
        }
        _ => return None,
    };
    let messages = items
        .iter()
        .map(|item| match item {
            Value::Object(object) => Some(ListedMessage {
                id: object.get("id").and_then(id_text)?,
                status: match object.get("status") {
                    Some(Value::String(status)) => Some(RemoteStatus::parse(status)),
                    _ => None,
                },
                updated_at: match object.get("updated_at") {
                    Some(Value::String(at)) => Some(at.clone()),
                    _ => None,
                },
                message: match object.get("message") {
                    Some(Value::Object(message)) => Some(message_fields(message)),
                    _ => None,
                },
            }),
            other => id_text(other).map(|id| ListedMessage {
                id,
                status: None,
                updated_at: None,
                message: None,
            }),
        })
        .collect::<Option<Vec<_>>>()?;
    Some(ChannelPage { messages, next })
}

/// `Retry-After` as seconds or an HTTP date (capped at one hour).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    const MAX: Duration = Duration::from_secs(3600);
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let delay = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = time::OffsetDateTime::parse(value, &Rfc2822).ok()?;
            let left = at - time::OffsetDateTime::now_utc();
            Duration::try_from(left).unwrap_or(Duration::ZERO)
        }
    };
    Some(delay.min(MAX))
}

/// The start of an error body, for messages.
fn detail(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_owned();
    }
    let mut detail: String = text.chars().take(DETAIL_CHARS).collect();
    if text.chars().count() > DETAIL_CHARS {
        detail.push('…');
    }
    detail
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn ids_are_text() {
        assert_eq!(id_text(&serde_json::json!(17)), Some("17".into()));
        assert_eq!(id_text(&serde_json::json!("0xab")), Some("0xab".into()));
        assert_eq!(id_text(&serde_json::json!("")), None);
        assert_eq!(id_text(&serde_json::json!(1.5)), None);
        assert_eq!(id_text(&serde_json::json!(null)), None);
    }

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("999999"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3600)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn endpoints_append_to_the_base_path() {
        let config = HttpClientConfig::default();
        let client = HttpChannelClient::new("c", "http://h:8180/", config).unwrap();
        assert_eq!(
            client.endpoint(&["messages", "a/b"]).as_str(),
            "http://h:8180/messages/a%2Fb"
        );
        let nested = HttpChannelClient::new("c", "https://h/channel", config).unwrap();
        assert_eq!(
            nested.endpoint(&["messages"]).as_str(),
            "https://h/channel/messages"
        );
        for bad in ["ftp://h/", "not a url", "mailto:x@y"] {
            assert!(matches!(
                HttpChannelClient::new("c", bad, config),
                Err(HttpClientError::InvalidUrl { .. })
            ));
        }
    }

    #[test]
    fn pages_in_either_shape() {
        let page = parse_page(serde_json::json!([1, {"id": "x", "status": "confirmed"}])).unwrap();
        assert_eq!(page.messages.len(), 2);
        assert_eq!(page.messages[0].id, "1");
        assert_eq!(page.messages[1].status, Some(RemoteStatus::Confirmed));
        assert_eq!(page.next, None);
        let page = parse_page(serde_json::json!({
            "messages": [{"id": 3, "updated_at": "t", "message": {"sender": "AU", "obj": 5}}],
            "next_cursor": "abc",
        }))
        .unwrap();
        assert_eq!(page.next.as_deref(), Some("abc"));
        let fields = page.messages[0].message.clone().unwrap();
        assert_eq!(fields.sender.as_deref(), Some("AU"));
        assert_eq!(fields.obj.as_deref(), Some("5"));
        assert_eq!(fields.subject, None);
        assert!(parse_page(serde_json::json!({"nothing": []})).is_none());
        assert!(parse_page(serde_json::json!([{"status": "x"}])).is_none());
    }

    #[test]
    fn details_are_short() {
        assert_eq!(detail(b""), "(empty body)");
        assert_eq!(detail(b" {\"a\":1} "), "{\"a\":1}");
        assert_eq!(detail("x".repeat(500).as_bytes()).chars().count(), 201);
    }
}
