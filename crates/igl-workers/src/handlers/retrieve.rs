//! The channel message retriever (REFERENCE-WIRE §4.7, without its defects): for each
//! `{"id"}` notification a channel sent to the Message Reception API, fetch the message
//! from that channel, accept it only once the channel confirmed it, validate it like a B2G
//! message, and store it as `received` with its `process` job and the ack of the
//! notification in one unit of work.
//!
//! # The sender's `sender_ref`
//!
//! The Channel API carries only `sender, receiver, subject, obj, predicate` (REFERENCE-WIRE
//! §5.1); the reference retriever invented a fresh uuid4 per retrieval, so every redelivered
//! notification created another message. This retriever keeps the wire as it is and:
//! - uses the message's `sender_ref` when the channel's message JSON carries one (an extra
//!   field our own channel endpoint may add; reference channels ignore or drop it), so the
//!   message keeps the sender's reference end to end;
//! - otherwise derives a deterministic one from the channel coordinates,
//!   `<channel_id>.<channel message id>` (or `<channel_id>.<multihash of the id>` when the id
//!   has characters a `sender_ref` may not contain, or is too long). A redelivered or
//!   duplicated notification therefore maps to the same `sender:sender_ref` and the store
//!   deduplicates it. The limit: a message that reaches the node through two channels (or
//!   is re-posted under a new channel id after a revocation) without a carried `sender_ref`
//!   is stored once per channel message.
//!
//! # Channel status
//!
//! Only `confirmed` messages are stored (invariant 7: the medium must have confirmed it).
//! `received` (or the receiving-side `observed`) is retried after a growing delay;
//! `revoked`, `undeliverable` and `false_alarm` are dropped with a warning and the
//! notification acked; any other status is a permanent error (dead letter).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt as _;
use igl_core::pipeline::PipelineJob;
use igl_core::{ClaimedJob, InsertOutcome, Storage, StoreError};
use igl_domain::{Jurisdiction, MessageFields, MessageStatus, Multihash, NewMessage, SenderRef};
use reqwest::header::{ACCEPT, HeaderMap, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde_json::{Map, Value};

use super::batch::{BatchSteps, Prepared, prepare_then_write};
use crate::{Handled, JobError, JobHandler, RetryPolicy};

/// The largest channel answer read (a message is a few kilobytes at most).
const MAX_CHANNEL_ANSWER_BYTES: usize = 1024 * 1024;

/// The longest `Retry-After` honoured; a longer one is capped.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A message as a channel's `GET {base}/messages/{id}` returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchedMessage {
    /// The channel's id of the message, as text (integer ids are rendered in decimal).
    pub id: String,
    /// The channel-side status (`received`, `confirmed`, `undeliverable`, `revoked`, …).
    pub status: String,
    /// The message object: `sender, receiver, subject, obj, predicate`, and possibly more.
    pub message: Map<String, Value>,
}

/// Reads messages from channels (the receiving half of the Channel API, REFERENCE-WIRE
/// §5.1 item 4). Implementations time out every call.
#[async_trait]
pub trait ChannelReader: Send + Sync + fmt::Debug {
    /// Fetches message `message_id` from the configured channel `channel_id`.
    ///
    /// # Errors
    ///
    /// A [`ChannelCallError`] saying whether trying again may help.
    async fn fetch(
        &self,
        channel_id: &str,
        message_id: &str,
    ) -> Result<FetchedMessage, ChannelCallError>;
}

/// Why a call to a channel failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelCallError {
    /// The channel id is not configured (permanent).
    #[error("no channel with id {0:?} is configured")]
    UnknownChannel(String),
    /// The channel answered with a non-success status.
    #[error(transparent)]
    Status(#[from] HttpStatusError),
    /// The request failed on the network (connect, timeout, reset): transient.
    #[error("request to channel failed")]
    Transport(#[source] reqwest::Error),
    /// The channel answered 2xx with a body this node does not understand (permanent).
    #[error("channel answer not understood: {0}")]
    InvalidAnswer(String),
}

impl From<ChannelCallError> for JobError {
    fn from(error: ChannelCallError) -> Self {
        match error {
            ChannelCallError::Status(status) => status.into(),
            ChannelCallError::Transport(_) => JobError::transient(error),
            ChannelCallError::UnknownChannel(_) | ChannelCallError::InvalidAnswer(_) => {
                JobError::permanent(error)
            }
        }
    }
}

/// A non-success HTTP answer from a channel or a Document API.
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
/// 404 and 408 with backoff (a grant or a message may not be visible yet, a token may be
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

/// Reads a JSON body of at most `limit` bytes.
pub(crate) async fn read_json(
    response: reqwest::Response,
    limit: usize,
) -> Result<Value, ChannelCallError> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(ChannelCallError::InvalidAnswer(format!(
            "the body is larger than {limit} bytes"
        )));
    }
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(ChannelCallError::Transport)?;
        if body.len() + chunk.len() > limit {
            return Err(ChannelCallError::InvalidAnswer(format!(
                "the body is larger than {limit} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body)
        .map_err(|error| ChannelCallError::InvalidAnswer(format!("the body is not JSON: {error}")))
}

/// A channel message id in JSON (an integer or a string) as text.
pub(crate) fn id_text(id: &Value) -> Option<String> {
    match id {
        Value::String(id) if !id.is_empty() => Some(id.clone()),
        Value::Number(id) => Some(id.to_string()),
        _ => None,
    }
}

/// Why [`HttpChannelApi::new`] failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    /// A configured base URL is unusable.
    #[error("invalid base URL for {name}: {reason}")]
    InvalidUrl {
        /// The channel id or jurisdiction whose URL it is.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The HTTP client could not be built (TLS initialisation).
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// The Channel API over HTTP (REFERENCE-WIRE §5.1), for the retriever ([`ChannelReader`])
/// and the subscriber ([`crate::ChannelSubscriber`]). Every request has a total timeout.
#[derive(Clone)]
pub struct HttpChannelApi {
    pub(crate) client: reqwest::Client,
    pub(crate) channels: Arc<HashMap<String, Url>>,
}

impl fmt::Debug for HttpChannelApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpChannelApi")
            .field("channels", &self.channels.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl HttpChannelApi {
    /// A client for the channels `(channel id, base URL)`, with a 10 s total timeout per
    /// request (connect 5 s).
    ///
    /// # Errors
    ///
    /// [`HttpClientError`] for an unusable URL or client.
    pub fn new(
        channels: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, HttpClientError> {
        Self::with_timeout(channels, Duration::from_secs(10))
    }

    /// [`HttpChannelApi::new`] with another total timeout per request.
    ///
    /// # Errors
    ///
    /// [`HttpClientError`] for an unusable URL or client.
    pub fn with_timeout(
        channels: impl IntoIterator<Item = (String, String)>,
        timeout: Duration,
    ) -> Result<Self, HttpClientError> {
        let channels = channels
            .into_iter()
            .map(|(id, url)| match parse_base_url(&url) {
                Ok(url) => Ok((id, url)),
                Err(reason) => Err(HttpClientError::InvalidUrl { name: id, reason }),
            })
            .collect::<Result<HashMap<_, _>, _>>()?;
        let client = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .timeout(timeout)
            .build()
            .map_err(HttpClientError::Client)?;
        Ok(Self {
            client,
            channels: Arc::new(channels),
        })
    }

    pub(crate) fn base(&self, channel_id: &str) -> Result<&Url, ChannelCallError> {
        self.channels
            .get(channel_id)
            .ok_or_else(|| ChannelCallError::UnknownChannel(channel_id.to_owned()))
    }
}

#[async_trait]
impl ChannelReader for HttpChannelApi {
    async fn fetch(
        &self,
        channel_id: &str,
        message_id: &str,
    ) -> Result<FetchedMessage, ChannelCallError> {
        let url = endpoint(self.base(channel_id)?, &["messages", message_id]);
        let response = self
            .client
            .get(url.clone())
            .header(ACCEPT, "application/json")
            .send()
            .await
            .map_err(ChannelCallError::Transport)?;
        if !response.status().is_success() {
            return Err(
                HttpStatusError::new("GET", &url, response.status(), response.headers()).into(),
            );
        }
        let body = read_json(response, MAX_CHANNEL_ANSWER_BYTES).await?;
        parse_fetched(body)
    }
}

/// `{"id": …, "status": "…", "message": {…}}`.
fn parse_fetched(body: Value) -> Result<FetchedMessage, ChannelCallError> {
    let Value::Object(mut body) = body else {
        return Err(ChannelCallError::InvalidAnswer(
            "the body is not a JSON object".to_owned(),
        ));
    };
    let id = body.get("id").and_then(id_text).unwrap_or_default();
    let status = match body.remove("status") {
        Some(Value::String(status)) => status,
        _ => {
            return Err(ChannelCallError::InvalidAnswer(
                "the body has no \"status\" string".to_owned(),
            ));
        }
    };
    let message = match body.remove("message") {
        Some(Value::Object(message)) => message,
        _ => {
            return Err(ChannelCallError::InvalidAnswer(
                "the body has no \"message\" object".to_owned(),
            ));
        }
    };
    Ok(FetchedMessage {
        id,
        status,
        message,
    })
}

/// The `sender_ref` of a channel message that carries none: `<channel_id>.<message_id>`,
/// or `<channel_id>.<multihash of message_id>` when that is not a valid `sender_ref`.
///
/// # Errors
///
/// The broken rule when even the hashed form is invalid (an invalid channel id).
pub fn channel_sender_ref(
    channel_id: &str,
    message_id: &str,
) -> Result<SenderRef, igl_domain::Rule> {
    SenderRef::parse(format!("{channel_id}.{message_id}")).or_else(|_| {
        SenderRef::parse(format!(
            "{channel_id}.{}",
            Multihash::of(message_id.as_bytes())
        ))
    })
}

/// Handles `channel-message.v1` jobs: fetch, check, store as `received`.
#[derive(Debug, Clone)]
pub struct RetrieveChannelMessage {
    storage: Arc<dyn Storage>,
    reader: Arc<dyn ChannelReader>,
    jurisdiction: Jurisdiction,
    unconfirmed_backoff: RetryPolicy,
}

impl RetrieveChannelMessage {
    /// A retriever for the node of `jurisdiction`, reading channels through `reader`
    /// (e.g. an [`HttpChannelApi`] built from the `[[channels]]` configuration).
    ///
    /// A message the channel has not confirmed yet is looked at again after 5 s, doubling
    /// up to 5 min ([`RetrieveChannelMessage::with_unconfirmed_backoff`]); each look counts
    /// as an attempt of the worker's retry policy, so give the `channel-message` queue
    /// enough attempts for the slowest channel's confirmation (about 10 for ~20 min).
    pub fn new(
        storage: Arc<dyn Storage>,
        reader: Arc<dyn ChannelReader>,
        jurisdiction: Jurisdiction,
    ) -> Self {
        Self {
            storage,
            reader,
            jurisdiction,
            unconfirmed_backoff: RetryPolicy {
                max_attempts: u32::MAX,
                base_delay: Duration::from_secs(5),
                max_delay: Duration::from_secs(300),
            },
        }
    }

    /// Sets the delays before looking again at an unconfirmed message: `base` doubling per
    /// attempt up to `max`.
    pub fn with_unconfirmed_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.unconfirmed_backoff.base_delay = base;
        self.unconfirmed_backoff.max_delay = max.max(base);
        self
    }

    /// Validates the channel's message and checks that it is for this node.
    fn accept(
        &self,
        channel_id: &str,
        message_id: &str,
        mut message: Map<String, Value>,
    ) -> Result<NewMessage, JobError> {
        let mut field = |name: &'static str| -> Result<Option<String>, JobError> {
            match message.remove(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(value)) => Ok(Some(value)),
                Some(other) => Err(JobError::permanent(format!(
                    "channel message field {name} is not a string: {other}"
                ))),
            }
        };
        let mut fields = MessageFields {
            sender: field("sender")?,
            receiver: field("receiver")?,
            subject: field("subject")?,
            obj: field("obj")?,
            predicate: field("predicate")?,
            sender_ref: field("sender_ref")?,
        };
        if fields.sender_ref.is_none() {
            let derived = channel_sender_ref(channel_id, message_id).map_err(|rule| {
                JobError::permanent(format!(
                    "no sender_ref can be derived from channel {channel_id:?}: {rule}"
                ))
            })?;
            fields.sender_ref = Some(derived.to_string());
        }
        let message = NewMessage::parse(fields).map_err(JobError::permanent)?;
        if message.content.receiver != self.jurisdiction {
            return Err(JobError::permanent(format!(
                "channel message is for {}, this node is {}",
                message.content.receiver, self.jurisdiction
            )));
        }
        if message.content.sender == self.jurisdiction {
            return Err(JobError::permanent(format!(
                "channel message claims to come from this node's own jurisdiction {}",
                self.jurisdiction
            )));
        }
        Ok(message)
    }
}

#[async_trait]
impl JobHandler for RetrieveChannelMessage {
    fn name(&self) -> &'static str {
        "channel-message-retriever"
    }

    async fn handle(&self, job: &ClaimedJob) -> Result<Handled, JobError> {
        prepare_then_write(self, std::slice::from_ref(job))
            .await
            .pop()
            .unwrap_or_else(|| unreachable!("one result per job"))
    }

    fn batched(&self) -> bool {
        true
    }

    /// Fetches every message of the batch concurrently, then stores them all in one unit
    /// of work.
    async fn handle_batch(&self, jobs: &[ClaimedJob]) -> Vec<Result<Handled, JobError>> {
        prepare_then_write(self, jobs).await
    }
}

/// A fetched, validated channel message to store.
#[derive(Debug)]
pub(crate) struct Retrieved {
    channel_id: String,
    message_id: String,
    message: NewMessage,
}

impl BatchSteps for RetrieveChannelMessage {
    type Write = Retrieved;

    async fn prepare(&self, job: &ClaimedJob) -> Result<Prepared<Retrieved>, JobError> {
        let (channel_id, message_id) =
            match serde_json::from_value::<PipelineJob>(job.payload.clone()) {
                Ok(PipelineJob::ChannelMessageV1 {
                    channel_id,
                    message_id,
                }) => (channel_id, message_id),
                Ok(other) => {
                    return Err(JobError::permanent(format!(
                        "not a channel-message job: {other:?}"
                    )));
                }
                Err(error) => return Err(JobError::permanent(error)),
            };
        let fetched = self.reader.fetch(&channel_id, &message_id).await?;
        let status = fetched.status.to_ascii_lowercase();
        match status.as_str() {
            "confirmed" => {}
            "received" | "observed" => {
                let delay = self.unconfirmed_backoff.ceiling(job.attempt);
                return Err(JobError::retry_after(
                    delay,
                    format!(
                        "channel {channel_id} has not confirmed message {message_id} yet (status {status})"
                    ),
                ));
            }
            "revoked" | "undeliverable" | "false_alarm" => {
                tracing::warn!(
                    %channel_id,
                    %message_id,
                    %status,
                    "channel message dropped, the channel withdrew it"
                );
                metrics::counter!("igl_channel_messages_dropped_total", "channel" => channel_id)
                    .increment(1);
                return Ok(Prepared::Finished(Handled::Done));
            }
            _ => {
                return Err(JobError::permanent(format!(
                    "channel {channel_id} reports unknown status {:?} for message {message_id}",
                    fetched.status
                )));
            }
        }
        let message = self.accept(&channel_id, &message_id, fetched.message)?;
        Ok(Prepared::Write(Retrieved {
            channel_id,
            message_id,
            message,
        }))
    }

    /// Stores the messages as `received` (a reference seen before is a duplicate, never a
    /// second message), queues processing for the new ones and acks the jobs.
    async fn write(&self, work: &[(&ClaimedJob, Retrieved)]) -> Result<(), JobError> {
        let messages: Vec<(NewMessage, MessageStatus)> = work
            .iter()
            .map(|(_, retrieved)| (retrieved.message.clone(), MessageStatus::Received))
            .collect();
        let mut unit = self.storage.begin().await?;
        let outcomes = unit.insert_messages(&messages).await?;
        let mut created = Vec::with_capacity(outcomes.len());
        let mut process = Vec::new();
        for outcome in &outcomes {
            match outcome {
                InsertOutcome::Created(message) => {
                    process.push(PipelineJob::process(&message.reference()).into_new_job());
                    created.push(true);
                }
                InsertOutcome::Existing(_) => created.push(false),
                InsertOutcome::Conflict(reference) => {
                    return Err(StoreError::MessageConflict(reference.clone()).into());
                }
            }
        }
        unit.enqueue(&process).await?;
        let receipts: Vec<_> = work.iter().map(|(job, _)| job.receipt()).collect();
        unit.ack(&receipts).await?;
        unit.commit().await?;

        for ((_, retrieved), created) in work.iter().zip(created) {
            tracing::info!(
                channel_id = %retrieved.channel_id,
                message_id = %retrieved.message_id,
                reference = %retrieved.message.reference(),
                created,
                "channel message retrieved"
            );
            metrics::counter!(
                "igl_channel_messages_retrieved_total",
                "channel" => retrieved.channel_id.clone(),
                "outcome" => if created { "created" } else { "duplicate" },
            )
            .increment(1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_sender_refs_are_deterministic_and_valid() {
        assert_eq!(
            channel_sender_ref("au-sg", "17").unwrap().as_str(),
            "au-sg.17"
        );
        let odd = channel_sender_ref("au-sg", "a/b c").unwrap();
        assert_eq!(odd, channel_sender_ref("au-sg", "a/b c").unwrap());
        assert!(odd.as_str().starts_with("au-sg.Qm"), "{odd}");
        let long = "x".repeat(300);
        assert!(channel_sender_ref("au-sg", &long).is_ok());
    }

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
