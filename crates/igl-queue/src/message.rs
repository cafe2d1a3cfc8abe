//! How jobs are carried in AMQP messages.
//!
//! - **One job** ([`JobMessage`]): the payload is the body (JSON), everything else travels in
//!   `x-igl-*` headers, so that a copy republished to a delay tier or to the dead-letter
//!   queue keeps the job's identity and history.
//! - **An envelope** of several fresh jobs of one queue (the outbox relay's batches,
//!   [`encode_envelope`]): header `x-igl-envelope` = the number of jobs, `x-igl-queue`, and
//!   a JSON array body of `{"id", "enqueued_at", "dedup_key", "payload"}`. Envelopes only
//!   ever reach work queues (and, through the broker's delivery limit, dead-letter queues);
//!   retries, delays and dead letters are always single jobs.

use igl_core::{ClaimedJob, DeadLetter, JobId, QueueName};
use igl_domain::Timestamp;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// The header keys.
pub(crate) mod header {
    pub const JOB_ID: &str = "x-igl-job-id";
    pub const QUEUE: &str = "x-igl-queue";
    pub const ATTEMPTS: &str = "x-igl-attempts";
    pub const ENQUEUED_AT: &str = "x-igl-enqueued-at";
    pub const DUE: &str = "x-igl-due";
    pub const DEDUP_KEY: &str = "x-igl-dedup-key";
    pub const LAST_ERROR: &str = "x-igl-last-error";
    pub const DEAD_ID: &str = "x-igl-dead-id";
    pub const FAILED_AT: &str = "x-igl-failed-at";
    /// On an envelope: how many jobs its body carries.
    pub const ENVELOPE: &str = "x-igl-envelope";
    /// Set by RabbitMQ on quorum-queue redeliveries: how many times this message was
    /// returned to the queue before (a crashed consumer, an expired lease).
    pub const DELIVERY_COUNT: &str = "x-delivery-count";
    /// Set by RabbitMQ whenever it dead-lettered the message (a delay tier's TTL, the
    /// delivery limit, a reject): an array of tables, the most recent first.
    pub const DEATHS: &str = "x-death";
}

/// A job as carried by the broker.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JobMessage {
    pub id: JobId,
    pub queue: QueueName,
    pub payload: Vec<u8>,
    /// Attempts made by earlier incarnations of this message (a retry republishes the job
    /// with the attempt count so far; broker redeliveries add `x-delivery-count`).
    pub attempts: u32,
    pub enqueued_at_micros: i64,
    /// Not claimable before this instant (microseconds since the epoch), when set.
    pub due_micros: Option<i64>,
    pub dedup_key: Option<String>,
    pub last_error: Option<String>,
    /// Set on the copy in the dead-letter queue: its id and when it failed.
    pub dead: Option<(i64, i64)>,
    /// Why the broker dead-lettered this message last (`expired`, `delivery_limit`, …).
    pub death_reason: Option<String>,
}

/// What one broker message carries.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Carried {
    /// A single job.
    Job(JobMessage),
    /// An envelope: fresh jobs of one queue, in order (never empty).
    Envelope(Vec<JobMessage>),
}

/// A message ready to publish.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

impl From<JobMessage> for Outgoing {
    fn from(message: JobMessage) -> Self {
        Outgoing {
            properties: message.properties(),
            body: message.payload,
        }
    }
}

/// One job in an envelope's body.
#[derive(serde::Serialize)]
struct EnvelopeEntry<'a> {
    id: i64,
    enqueued_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    dedup_key: Option<&'a str>,
    payload: &'a serde_json::Value,
}

/// [`EnvelopeEntry`] as read back (the payload kept as its JSON text: it is parsed once,
/// when the job is claimed).
#[derive(serde::Deserialize)]
struct ReadEntry<'a> {
    id: i64,
    enqueued_at: i64,
    #[serde(default)]
    dedup_key: Option<String>,
    #[serde(borrow)]
    payload: &'a serde_json::value::RawValue,
}

/// One message carrying the fresh jobs `jobs` (all of `queue`, at least one; each keeps its
/// id, enqueue time, dedup key and payload).
pub(crate) fn encode_envelope(queue: &QueueName, jobs: &[&ClaimedJob]) -> Outgoing {
    let entries: Vec<EnvelopeEntry<'_>> = jobs
        .iter()
        .map(|job| EnvelopeEntry {
            id: job.id.0,
            enqueued_at: to_micros(job.enqueued_at),
            dedup_key: job.dedup_key.as_deref(),
            payload: &job.payload,
        })
        .collect();
    let body = serde_json::to_vec(&entries).expect("JSON values always serialize");
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from(header::ENVELOPE),
        AMQPValue::LongLongInt(i64::try_from(jobs.len()).unwrap_or(i64::MAX)),
    );
    headers.insert(
        ShortString::from(header::QUEUE),
        long_string(queue.as_str()),
    );
    let first = jobs.first().map_or(0, |job| job.id.0);
    Outgoing {
        properties: BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(format!("{first}+{}", jobs.len()).into())
            .with_headers(headers),
        body,
    }
}

/// Reads what a delivery carries: a job or an envelope of jobs. `redeliveries` (the
/// second value) is the broker's `x-delivery-count` (0 on a first delivery).
pub(crate) fn decode(
    properties: &BasicProperties,
    body: &[u8],
) -> Result<(Carried, u32), DecodeError> {
    let empty = FieldTable::default();
    let headers = properties.headers().as_ref().unwrap_or(&empty);
    if !headers.inner().contains_key(header::ENVELOPE) {
        return JobMessage::decode(properties, body)
            .map(|(message, redeliveries)| (Carried::Job(message), redeliveries));
    }
    let headers = Headers(headers);
    let queue = headers
        .text(header::QUEUE)?
        .ok_or(DecodeError::Missing(header::QUEUE))?;
    let queue = QueueName::parse(&queue).map_err(DecodeError::Queue)?;
    let entries: Vec<ReadEntry<'_>> = serde_json::from_slice(body).map_err(DecodeError::Body)?;
    if entries.is_empty() {
        return Err(DecodeError::EmptyEnvelope);
    }
    let death_reason = headers.death_reason();
    let jobs = entries
        .into_iter()
        .map(|entry| JobMessage {
            id: JobId(entry.id),
            queue: queue.clone(),
            payload: entry.payload.get().as_bytes().to_vec(),
            attempts: 0,
            enqueued_at_micros: entry.enqueued_at,
            due_micros: None,
            dedup_key: entry.dedup_key,
            last_error: None,
            dead: None,
            death_reason: death_reason.clone(),
        })
        .collect();
    Ok((Carried::Envelope(jobs), headers.redeliveries()?))
}

/// Typed reads of a message's headers.
struct Headers<'a>(&'a FieldTable);

impl Headers<'_> {
    fn int(&self, key: &'static str) -> Result<Option<i64>, DecodeError> {
        match self.0.inner().get(key) {
            None => Ok(None),
            Some(value) => integer(value).map(Some).ok_or(DecodeError::WrongType(key)),
        }
    }

    fn text(&self, key: &'static str) -> Result<Option<String>, DecodeError> {
        match self.0.inner().get(key) {
            None => Ok(None),
            Some(AMQPValue::LongString(value)) => {
                Ok(Some(String::from_utf8_lossy(value.as_bytes()).into_owned()))
            }
            Some(AMQPValue::ShortString(value)) => Ok(Some(value.as_str().to_owned())),
            Some(_) => Err(DecodeError::WrongType(key)),
        }
    }

    /// The broker's `x-delivery-count` (0 when absent).
    fn redeliveries(&self) -> Result<u32, DecodeError> {
        let count = self.int(header::DELIVERY_COUNT)?.unwrap_or(0);
        Ok(u32::try_from(count).unwrap_or(0))
    }

    /// Why the broker dead-lettered the message last (from `x-death`), if it did.
    fn death_reason(&self) -> Option<String> {
        let Some(AMQPValue::FieldArray(deaths)) = self.0.inner().get(header::DEATHS) else {
            return None;
        };
        let Some(AMQPValue::FieldTable(death)) = deaths.as_slice().first() else {
            return None;
        };
        match death.inner().get("reason") {
            Some(AMQPValue::LongString(reason)) => {
                Some(String::from_utf8_lossy(reason.as_bytes()).into_owned())
            }
            Some(AMQPValue::ShortString(reason)) => Some(reason.as_str().to_owned()),
            _ => None,
        }
    }
}

/// Why a delivery is not a job message.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("message has no {0} header")]
    Missing(&'static str),
    #[error("header {0} has the wrong type")]
    WrongType(&'static str),
    #[error("header {0} is not a queue name")]
    Queue(#[source] igl_core::QueueNameError),
    #[error("body is not JSON (or, in an envelope, not an array of jobs)")]
    Body(#[source] serde_json::Error),
    #[error("envelope carries no job")]
    EmptyEnvelope,
}

impl JobMessage {
    /// The AMQP properties (persistent, JSON, headers) of this job.
    pub fn properties(&self) -> BasicProperties {
        let mut headers = FieldTable::default();
        let mut put = |key: &str, value: AMQPValue| {
            headers.insert(ShortString::from(key), value);
        };
        put(header::JOB_ID, AMQPValue::LongLongInt(self.id.0));
        put(header::QUEUE, long_string(self.queue.as_str()));
        put(
            header::ATTEMPTS,
            AMQPValue::LongLongInt(i64::from(self.attempts)),
        );
        put(
            header::ENQUEUED_AT,
            AMQPValue::LongLongInt(self.enqueued_at_micros),
        );
        if let Some(due) = self.due_micros {
            put(header::DUE, AMQPValue::LongLongInt(due));
        }
        if let Some(key) = &self.dedup_key {
            put(header::DEDUP_KEY, long_string(key));
        }
        if let Some(error) = &self.last_error {
            put(header::LAST_ERROR, long_string(error));
        }
        if let Some((dead_id, failed_at)) = self.dead {
            put(header::DEAD_ID, AMQPValue::LongLongInt(dead_id));
            put(header::FAILED_AT, AMQPValue::LongLongInt(failed_at));
        }
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(self.id.0.to_string().into())
            .with_headers(headers)
    }

    /// Reads a job back from a delivery's properties and body. `redeliveries` is the
    /// broker's `x-delivery-count` (0 on a first delivery).
    pub fn decode(properties: &BasicProperties, body: &[u8]) -> Result<(Self, u32), DecodeError> {
        let empty = FieldTable::default();
        let headers = Headers(properties.headers().as_ref().unwrap_or(&empty));
        let id = headers
            .int(header::JOB_ID)?
            .ok_or(DecodeError::Missing(header::JOB_ID))?;
        let queue = headers
            .text(header::QUEUE)?
            .ok_or(DecodeError::Missing(header::QUEUE))?;
        let queue = QueueName::parse(&queue).map_err(DecodeError::Queue)?;
        serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(DecodeError::Body)?;
        let dead = match (
            headers.int(header::DEAD_ID)?,
            headers.int(header::FAILED_AT)?,
        ) {
            (Some(dead_id), Some(failed_at)) => Some((dead_id, failed_at)),
            _ => None,
        };
        Ok((
            Self {
                id: JobId(id),
                queue,
                payload: body.to_vec(),
                attempts: u32::try_from(headers.int(header::ATTEMPTS)?.unwrap_or(0)).unwrap_or(0),
                enqueued_at_micros: headers.int(header::ENQUEUED_AT)?.unwrap_or(0),
                due_micros: headers.int(header::DUE)?,
                dedup_key: headers.text(header::DEDUP_KEY)?,
                last_error: headers.text(header::LAST_ERROR)?,
                dead,
                death_reason: headers.death_reason(),
            },
            headers.redeliveries()?,
        ))
    }

    /// The claimed job of this message for attempt `attempt` under `lease_token`.
    pub fn claimed(&self, attempt: u32, lease_token: i64) -> ClaimedJob {
        ClaimedJob {
            id: self.id,
            queue: self.queue.clone(),
            payload: serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null),
            attempt,
            lease_token,
            enqueued_at: from_micros(self.enqueued_at_micros),
            dedup_key: self.dedup_key.clone(),
            last_error: self.last_error.clone(),
        }
    }

    /// The dead letter this message is, in the dead-letter queue (`redeliveries` of the
    /// broker-dead-lettered kind count as attempts).
    pub fn dead_letter(&self, redeliveries: u32) -> DeadLetter {
        let (id, failed_at) = self.dead.unwrap_or((self.id.0, self.enqueued_at_micros));
        let attempts = if self.dead.is_some() {
            self.attempts
        } else {
            self.attempts.saturating_add(redeliveries)
        };
        let last_error = match (&self.dead, &self.death_reason) {
            // Dead-lettered by the broker itself (delivery limit): say so.
            (None, Some(reason)) => Some(match &self.last_error {
                Some(error) => {
                    format!("dead-lettered by the broker ({reason}); last error: {error}")
                }
                None => format!("dead-lettered by the broker ({reason})"),
            }),
            _ => self.last_error.clone(),
        };
        DeadLetter {
            id,
            queue: self.queue.clone(),
            payload: serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null),
            attempts,
            last_error,
            dedup_key: self.dedup_key.clone(),
            enqueued_at: from_micros(self.enqueued_at_micros),
            failed_at: from_micros(failed_at),
        }
    }
}

fn long_string(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text.as_bytes()))
}

/// Any AMQP integer as an `i64` (RabbitMQ sends `x-delivery-count` as a long or a long-long).
fn integer(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        _ => None,
    }
}

/// Microseconds since the Unix epoch.
pub(crate) fn to_micros(timestamp: Timestamp) -> i64 {
    i64::try_from(timestamp.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

/// The inverse of [`to_micros`].
pub(crate) fn from_micros(micros: i64) -> Timestamp {
    Timestamp::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Now, in microseconds since the Unix epoch.
pub(crate) fn now_micros() -> i64 {
    to_micros(Timestamp::now_utc())
}

/// A fresh id that sorts roughly by creation time across processes: microseconds since the
/// epoch times 1024 plus 10 random bits (fits an `i64` until the year 2255).
pub(crate) fn time_ordered_id() -> i64 {
    now_micros()
        .saturating_mul(1024)
        .saturating_add(rand::random_range(0..1024))
}

/// `count` committed outbox jobs of `queue` as a relay takes them: ids and `n` from 1, the
/// second with a dedup key.
#[cfg(test)]
pub(crate) fn outbox_jobs(queue: &QueueName, count: i64) -> Vec<ClaimedJob> {
    (1..=count)
        .map(|n| ClaimedJob {
            id: JobId(n),
            queue: queue.clone(),
            payload: serde_json::json!({"type": "route.v1", "n": n}),
            attempt: 1,
            lease_token: 0,
            enqueued_at: from_micros(1_700_000_000_000_000 + n),
            dedup_key: (n == 2).then(|| "AU:r2".to_owned()),
            last_error: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_survives_encoding() {
        let message = JobMessage {
            id: JobId(42),
            queue: QueueName::parse("route").unwrap(),
            payload: br#"{"type":"route.v1"}"#.to_vec(),
            attempts: 3,
            enqueued_at_micros: 1_700_000_000_000_000,
            due_micros: Some(1_700_000_000_500_000),
            dedup_key: Some("AU:r1".into()),
            last_error: Some("boom".into()),
            dead: Some((7, 1_700_000_001_000_000)),
            death_reason: None,
        };
        let (decoded, redeliveries) =
            JobMessage::decode(&message.properties(), &message.payload).unwrap();
        assert_eq!(decoded, message);
        assert_eq!(redeliveries, 0);
        let claimed = decoded.claimed(4, 9);
        assert_eq!(claimed.payload["type"], "route.v1");
        assert_eq!((claimed.attempt, claimed.lease_token), (4, 9));
        let dead = decoded.dead_letter(0);
        assert_eq!((dead.id, dead.attempts), (7, 3));
    }

    #[test]
    fn an_envelope_carries_its_jobs_in_order() {
        let queue = QueueName::parse("route").unwrap();
        let jobs = outbox_jobs(&queue, 3);
        let refs: Vec<&ClaimedJob> = jobs.iter().collect();
        let outgoing = encode_envelope(&queue, &refs);
        let (carried, redeliveries) = decode(&outgoing.properties, &outgoing.body).unwrap();
        assert_eq!(redeliveries, 0);
        let Carried::Envelope(messages) = carried else {
            panic!("not an envelope: {carried:?}");
        };
        let claimed: Vec<ClaimedJob> = messages
            .iter()
            .map(|message| {
                assert_eq!((message.attempts, message.due_micros), (0, None));
                message.claimed(1, 0)
            })
            .collect();
        assert_eq!(claimed, jobs);
        // A single job still decodes as one.
        let single = JobMessage::decode(&messages[0].properties(), &messages[0].payload)
            .unwrap()
            .0;
        let (carried, _) = decode(&single.properties(), &single.payload).unwrap();
        assert_eq!(carried, Carried::Job(single));
    }

    #[test]
    fn an_empty_or_malformed_envelope_is_not_a_job() {
        let queue = QueueName::parse("route").unwrap();
        let jobs = outbox_jobs(&queue, 1);
        let outgoing = encode_envelope(&queue, &[&jobs[0]]);
        let empty = decode(&outgoing.properties, b"[]").unwrap_err();
        assert!(matches!(empty, DecodeError::EmptyEnvelope), "{empty}");
        let garbage = decode(&outgoing.properties, br#"{"id":1}"#).unwrap_err();
        assert!(matches!(garbage, DecodeError::Body(_)), "{garbage}");
    }

    #[test]
    fn foreign_messages_are_rejected() {
        let error = JobMessage::decode(&BasicProperties::default(), b"{}").unwrap_err();
        assert!(matches!(error, DecodeError::Missing(header::JOB_ID)));
    }

    #[test]
    fn ids_grow_with_time() {
        let first = time_ordered_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(time_ordered_id() > first);
    }
}
