//! The Admin API: probes, Prometheus metrics and dead-letter operations (ARCHITECTURE §10).
//!
//! | path | auth | success | notes |
//! |---|---|---|---|
//! | `GET /healthz` | none | 200 `{"status":"ok"}` | the process is up |
//! | `GET /readyz` | none | 200 `{"status":"ready","checks":{…}}` | 503 naming the failing check |
//! | `GET /metrics` | none | 200 Prometheus text | restrict at the network level |
//! | `GET /api/v1/admin/dead-letters` | own jurisdiction | 200 page of dead letters | `queue`, `after`, `limit` |
//! | `POST /api/v1/admin/dead-letters/{id}/replay` | own jurisdiction | 200 `{"replayed":true}` | 404 unknown id |
//! | `GET /api/v1/admin/queues` | own jurisdiction | 200 depth per pipeline queue | |
//!
//! The probes and `/metrics` are unauthenticated so that orchestrators and Prometheus can
//! reach them without credentials; they reveal no message data, but `/metrics` does reveal
//! traffic volumes, so expose it only on an internal network (or run the Admin API on its
//! own listener, see `EnabledApis`).
//!
//! # Metrics
//!
//! Everything is recorded through the `metrics` facade; the composition root installs one
//! Prometheus recorder per process (see [`prometheus_builder`]) and hands its handle to
//! [`AppContext::metrics`](crate::AppContext::metrics). This module records:
//!
//! - [`HTTP_REQUESTS_TOTAL`] `{method,route,status}`: requests answered, counted by
//!   [`track_requests`]; `route` is the matched route template (`/api/v1/messages/{reference}`),
//!   never the raw path, or `unmatched` for requests no route matched;
//! - [`HTTP_REQUEST_DURATION_SECONDS`] `{method,route,status}`: time to the response head;
//! - [`QUEUE_DEPTH`] `{queue,state}`: jobs per pipeline queue and state (`ready`,
//!   `scheduled`, `in_flight`, `dead`), refreshed on every scrape.
//!
//! Workers and ingestion record their own series (`igl_jobs_total`, …) through the same
//! facade; they appear in the same exposition.

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use igl_core::pipeline::{OBJECT_RETRIEVAL_QUEUE, PROCESS_QUEUE, ROUTE_QUEUE};
use igl_core::{DeadLetter, QueueDepth, QueueName};
use igl_domain::Timestamp;
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::Matcher;
pub use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::openapi::ErrorResponse;
use crate::state::AppState;

/// Requests answered, by `method`, `route` (matched template) and `status`.
pub const HTTP_REQUESTS_TOTAL: &str = "igl_http_requests_total";
/// Time from receiving a request to sending its response head, in seconds, by `method`,
/// `route` and `status`.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "igl_http_request_duration_seconds";
/// Jobs per pipeline queue, by `queue` and `state`; refreshed when `/metrics` is scraped.
pub const QUEUE_DEPTH: &str = "igl_queue_depth";
/// Failed queue-depth reads during a scrape, by `queue` (the gauges keep their last value).
pub const QUEUE_DEPTH_ERRORS_TOTAL: &str = "igl_queue_depth_errors_total";

/// The Prometheus content type of the text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long each readiness check and each queue-depth read may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Default and largest page of dead letters.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

/// Histogram buckets of every `*_seconds` metric (HTTP latency, job durations): 1 ms to 30 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The queues of the message pipeline, reported by `/metrics` and `/api/v1/admin/queues`.
pub fn known_queues() -> [QueueName; 9] {
    use igl_core::pipeline::{
        CHANNEL_MESSAGE_QUEUE, CHANNEL_POLL_QUEUE, DELIVER_QUEUE, REDELIVER_QUEUE, SPREAD_QUEUE,
        VERIFY_QUEUE,
    };
    [
        PROCESS_QUEUE,
        ROUTE_QUEUE,
        CHANNEL_POLL_QUEUE,
        CHANNEL_MESSAGE_QUEUE,
        OBJECT_RETRIEVAL_QUEUE,
        SPREAD_QUEUE,
        DELIVER_QUEUE,
        REDELIVER_QUEUE,
        VERIFY_QUEUE,
    ]
}

/// The node's Prometheus recorder configuration: every metric whose name ends in
/// `_seconds` is a real histogram with buckets from 1 ms to 30 s (otherwise the exporter
/// renders summaries). The caller installs it (`install_recorder`) once per process.
pub fn prometheus_builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .expect("the bucket list is not empty")
}

/// Registers the help texts of this module's metrics with the installed recorder.
pub fn describe_metrics() {
    describe_counter!(HTTP_REQUESTS_TOTAL, Unit::Count, "HTTP requests answered");
    describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "time from receiving an HTTP request to sending its response head"
    );
    describe_gauge!(
        QUEUE_DEPTH,
        Unit::Count,
        "jobs in a pipeline queue by state, read when metrics are scraped"
    );
    describe_counter!(
        QUEUE_DEPTH_ERRORS_TOTAL,
        Unit::Count,
        "failed queue depth reads while scraping metrics"
    );
}

/// Middleware (`axum::middleware::from_fn`) counting and timing every request by matched
/// route. Add it with `Router::layer` after every route is merged, so that the
/// [`MatchedPath`] is known when it runs.
pub async fn track_requests(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    counter!(
        HTTP_REQUESTS_TOTAL,
        "method" => method,
        "route" => route.clone(),
        "status" => status.clone()
    )
    .increment(1);
    histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        "method" => method,
        "route" => route,
        "status" => status
    )
    .record(started.elapsed());
    response
}

/// A bounded label for the method: extension methods are folded into `OTHER`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Routes of the Admin API.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/api/v1/admin/dead-letters", get(list_dead_letters))
        .route(
            "/api/v1/admin/dead-letters/{id}/replay",
            post(replay_dead_letter),
        )
        .route("/api/v1/admin/queues", get(list_queues))
}

/// Body of `/healthz`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// The process is up (liveness). Never checks dependencies.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "admin",
    responses((status = 200, description = "The process is up", body = Health))
)]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Body of `/readyz`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    #[schema(example = "ready")]
    pub status: &'static str,
    /// The result of each check.
    pub checks: ReadinessChecks,
}

/// Each dependency's state: `ok` or `unavailable: <short reason>`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReadinessChecks {
    /// The database (messages, jobs, events, ACL).
    #[schema(example = "ok")]
    pub database: String,
    /// The object store (documents).
    #[schema(example = "ok")]
    pub objects: String,
}

/// The node can serve traffic (readiness): the database and the object store answer within
/// 2 s each (checked concurrently). 503 names the failing check; the full cause is logged.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "admin",
    responses(
        (status = 200, description = "Every dependency answers", body = Readiness),
        (status = 503, description = "A dependency does not answer", body = Readiness,
            example = json!({"status": "unavailable",
                "checks": {"database": "ok", "objects": "unavailable: object store backend failed"}})),
    )
)]
async fn readyz(State(state): State<AppState>) -> Response {
    let (database, objects) = tokio::join!(
        check("database", state.storage.ping()),
        check("objects", state.objects.ping()),
    );
    let ready = database.is_ok() && objects.is_ok();
    let describe = |result: Result<(), String>| match result {
        Ok(()) => "ok".to_owned(),
        Err(reason) => format!("unavailable: {reason}"),
    };
    let body = Readiness {
        status: if ready { "ready" } else { "unavailable" },
        checks: ReadinessChecks {
            database: describe(database),
            objects: describe(objects),
        },
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Runs one readiness check with [`CHECK_TIMEOUT`]; the error is a short reason without
/// internal details (paths, addresses), which are logged instead.
async fn check<E>(
    name: &'static str,
    probe: impl Future<Output = Result<(), E>>,
) -> Result<(), String>
where
    E: std::error::Error,
{
    match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => {
            tracing::warn!(
                check = name,
                error = %error,
                cause = ?std::error::Error::source(&error),
                "readiness check failed"
            );
            Err(error.to_string())
        }
        Err(_) => {
            tracing::warn!(check = name, timeout = ?CHECK_TIMEOUT, "readiness check timed out");
            Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs()))
        }
    }
}

/// Prometheus text exposition of every metric recorded in this process, after refreshing
/// the queue depth gauges. Unauthenticated: restrict it at the network level.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "admin",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4",
            content_type = "text/plain; version=0.0.4", body = String),
        (status = 503, description = "No metrics recorder is installed in this process",
            body = ErrorResponse),
    )
)]
async fn metrics_text(State(state): State<AppState>) -> Response {
    let Some(handle) = state.metrics.clone() else {
        return ApiError::unavailable("no metrics recorder is installed in this process")
            .into_response();
    };
    for (queue, depth) in read_depths(&state).await {
        if let Some(depth) = depth {
            record_depth(&queue, depth);
        }
    }
    let body = handle.render();
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
    );
    response
}

/// Reads the depth of every known queue concurrently; `None` where the read failed or
/// timed out (logged and counted).
async fn read_depths(state: &AppState) -> Vec<(QueueName, Option<QueueDepth>)> {
    let reads = known_queues().map(|queue| async move {
        let result = tokio::time::timeout(CHECK_TIMEOUT, state.storage.depth(&queue)).await;
        let depth = match result {
            Ok(Ok(depth)) => Some(depth),
            Ok(Err(error)) => {
                tracing::warn!(%queue, error = %error, "cannot read queue depth");
                None
            }
            Err(_) => {
                tracing::warn!(%queue, "queue depth read timed out");
                None
            }
        };
        if depth.is_none() {
            counter!(QUEUE_DEPTH_ERRORS_TOTAL, "queue" => queue.to_string()).increment(1);
        }
        (queue, depth)
    });
    futures::future::join_all(reads).await
}

fn record_depth(queue: &QueueName, depth: QueueDepth) {
    let states = [
        ("ready", depth.ready),
        ("scheduled", depth.scheduled),
        ("in_flight", depth.in_flight),
        ("dead", depth.dead),
    ];
    for (state, value) in states {
        // Gauges are f64; queue depths stay far below 2^53.
        #[allow(clippy::cast_precision_loss)]
        gauge!(QUEUE_DEPTH, "queue" => queue.to_string(), "state" => state).set(value as f64);
    }
}

/// Only callers of the node's own jurisdiction operate it.
fn authorize_operator(state: &AppState, caller: &Caller) -> Result<(), ApiError> {
    if caller.jurisdiction == state.jurisdiction {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "callers of {} cannot operate the node of {}",
            caller.jurisdiction, state.jurisdiction
        )))
    }
}

/// Query parameters of `GET /api/v1/admin/dead-letters`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    /// Only dead letters of this queue (`process`, `route`, `object-retrieval`, …).
    queue: Option<String>,
    /// Continue after this id (`next_after` of the previous page).
    after: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<u32>,
}

/// A job that exhausted its retries or failed permanently.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetterBody {
    /// Id of the dead letter (use it to replay).
    pub id: i64,
    /// The queue the job came from.
    pub queue: String,
    /// The job's payload as it was enqueued.
    #[schema(value_type = Object)]
    pub payload: Value,
    /// How many attempts were made.
    pub attempts: u32,
    /// The last error.
    pub last_error: Option<String>,
    /// The job's dedup key, if any.
    pub dedup_key: Option<String>,
    /// When the job was first enqueued (RFC 3339).
    pub enqueued_at: String,
    /// When it was dead-lettered (RFC 3339).
    pub failed_at: String,
}

impl From<DeadLetter> for DeadLetterBody {
    fn from(letter: DeadLetter) -> Self {
        Self {
            id: letter.id,
            queue: letter.queue.to_string(),
            payload: letter.payload,
            attempts: letter.attempts,
            last_error: letter.last_error,
            dedup_key: letter.dedup_key,
            enqueued_at: rfc3339(letter.enqueued_at),
            failed_at: rfc3339(letter.failed_at),
        }
    }
}

fn rfc3339(timestamp: Timestamp) -> String {
    timestamp.format(&Rfc3339).unwrap_or_default()
}

/// A page of dead letters.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetterPage {
    /// Dead letters, oldest first.
    pub dead_letters: Vec<DeadLetterBody>,
    /// Pass as `after` to get the next page; `null` on the last page.
    pub next_after: Option<i64>,
}

fn bad_query(parameter: &str, detail: impl fmt::Display) -> ApiError {
    ApiError::bad_request(format!("{parameter}: {detail}"))
        .with_source(json!([{"parameter": parameter}]))
}

/// Lists dead letters, oldest first, optionally of one queue.
#[utoipa::path(
    get,
    path = "/api/v1/admin/dead-letters",
    tag = "admin",
    params(DeadLetterQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of dead letters", body = DeadLetterPage),
        (status = 400, description = "Bad query parameter", body = ErrorResponse),
        (status = 401, description = "Missing or invalid credentials", body = ErrorResponse),
        (status = 403, description = "The caller is not of this node's jurisdiction",
            body = ErrorResponse),
        (status = 503, description = "Storage unavailable", body = ErrorResponse),
    )
)]
async fn list_dead_letters(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<DeadLetterQuery>, QueryRejection>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    authorize_operator(&state, &caller)?;
    let Query(query) = query.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let queue = query
        .queue
        .map(|name| QueueName::parse(&name).map_err(|e| bad_query("queue", e)))
        .transpose()?;
    let limit = match query.limit {
        Some(limit) if (1..=MAX_LIMIT).contains(&limit) => limit,
        Some(limit) => return Err(bad_query("limit", format!("{limit} is not in 1..=1000"))),
        None => DEFAULT_LIMIT,
    };
    // One more than asked tells whether there is a next page.
    let mut letters = state
        .storage
        .dead_letters(queue.as_ref(), query.after, limit + 1)
        .await?;
    let more = letters.len() > limit as usize;
    letters.truncate(limit as usize);
    let next_after = if more {
        letters.last().map(|letter| letter.id)
    } else {
        None
    };
    Ok(Json(DeadLetterPage {
        dead_letters: letters.into_iter().map(DeadLetterBody::from).collect(),
        next_after,
    }))
}

/// Result of a replay.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Replayed {
    /// Always `true`: the job is back on its queue with a fresh attempt count.
    pub replayed: bool,
}

/// Puts a dead letter back on its queue as a fresh job (attempt count reset) and removes
/// it from the dead letters.
#[utoipa::path(
    post,
    path = "/api/v1/admin/dead-letters/{id}/replay",
    tag = "admin",
    params(("id" = i64, Path, description = "Id of the dead letter")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Replayed", body = Replayed),
        (status = 400, description = "The id is not an integer", body = ErrorResponse),
        (status = 401, description = "Missing or invalid credentials", body = ErrorResponse),
        (status = 403, description = "The caller is not of this node's jurisdiction",
            body = ErrorResponse),
        (status = 404, description = "No dead letter has this id", body = ErrorResponse),
        (status = 503, description = "Storage unavailable", body = ErrorResponse),
    )
)]
async fn replay_dead_letter(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<Replayed>, ApiError> {
    authorize_operator(&state, &caller)?;
    let Path(id) = id.map_err(|_| {
        ApiError::bad_request("the dead letter id must be an integer")
            .with_source(json!([{"parameter": "id"}]))
    })?;
    if !state.storage.replay_dead_letter(id).await? {
        return Err(ApiError::not_found(format!("no dead letter with id {id}"))
            .with_source(json!([{"id": id}])));
    }
    tracing::info!(dead_letter = id, party = %caller.party, "dead letter replayed");
    Ok(Json(Replayed { replayed: true }))
}

/// Depth of one queue, by state.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QueueDepthBody {
    /// The queue.
    pub queue: String,
    /// Claimable now.
    pub ready: u64,
    /// Waiting for a delay or retry backoff.
    pub scheduled: u64,
    /// Leased to a worker.
    pub in_flight: u64,
    /// Dead letters of this queue.
    pub dead: u64,
}

/// Depth of every pipeline queue.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QueueList {
    /// One entry per pipeline queue.
    pub queues: Vec<QueueDepthBody>,
}

/// Depth of every pipeline queue, by state.
#[utoipa::path(
    get,
    path = "/api/v1/admin/queues",
    tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Depth per queue", body = QueueList),
        (status = 401, description = "Missing or invalid credentials", body = ErrorResponse),
        (status = 403, description = "The caller is not of this node's jurisdiction",
            body = ErrorResponse),
        (status = 503, description = "Storage unavailable", body = ErrorResponse),
    )
)]
async fn list_queues(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<QueueList>, ApiError> {
    authorize_operator(&state, &caller)?;
    let mut queues = Vec::new();
    for queue in known_queues() {
        let depth = state.storage.depth(&queue).await?;
        record_depth(&queue, depth);
        queues.push(QueueDepthBody {
            queue: queue.to_string(),
            ready: depth.ready,
            scheduled: depth.scheduled,
            in_flight: depth.in_flight,
            dead: depth.dead,
        });
    }
    Ok(Json(QueueList { queues }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_bounded_labels() {
        assert_eq!(method_label(&Method::GET), "GET");
        let custom = Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(method_label(&custom), "OTHER");
    }

    #[test]
    fn the_recorder_configuration_builds() {
        let recorder = prometheus_builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            histogram!(HTTP_REQUEST_DURATION_SECONDS, "route" => "/x").record(0.003);
        });
        let text = handle.render();
        assert!(
            text.contains("igl_http_request_duration_seconds_bucket"),
            "{text}"
        );
    }
}
