//! The Document API: upload documents for reader jurisdictions and serve them to those
//! readers only (ARCHITECTURE §6.8 and §9, REFERENCE-WIRE §2.2).
//!
//! | path | success | errors |
//! |---|---|---|
//! | `POST /api/v1/documents?reader=SG` | **201** `{multihash,size,content_type,readers}` + `Location` | 400, 401, 403, 413 |
//! | `GET /api/v1/documents/{multihash}` | 200 the bytes (304 on a matching `If-None-Match`) | 400 `invalid-uri-error`, 401, 404 |
//! | `HEAD /api/v1/documents/{multihash}` | 200 the headers of GET | as GET |
//! | `POST /jurisdictions/{JUR}`, `POST /countries/{JUR}` (legacy) | **200** `{"multihash"}` | 401, 403, 415, 400, 413 as the reference |
//! | `GET /{multihash}` (legacy) | 200 the bytes | 400, 401, 404 as the reference |
//!
//! # Uploads
//!
//! `POST /api/v1/documents` takes either a `multipart/form-data` body with exactly one file
//! part (a part with a `filename`; any field name; other form fields are ignored; the part's
//! `Content-Type` is stored) or any other body as the raw document (its `Content-Type` is
//! stored; none means `application/octet-stream`). `reader` is required: one or more ISO
//! 3166-1 alpha-2 codes, repeated (`?reader=SG&reader=NZ`) or comma-separated
//! (`?reader=SG,NZ`). The legacy paths take multipart only and one reader, the path's
//! jurisdiction.
//!
//! Only callers of the node's own jurisdiction upload (403 otherwise): foreign documents
//! arrive through the object-retrieval worker, never through this API.
//!
//! The body is streamed into [`ObjectStore::put`](igl_core::ObjectStore::put), which hashes
//! it and enforces `documents.max_bytes` while streaming (413 `document-too-large-error`);
//! nothing is buffered whole. axum's default 2 MB body limit is disabled on these routes;
//! a multipart request as a whole is limited to the document limit plus
//! [`MULTIPART_OVERHEAD_BYTES`] (form fields, part headers), so that counting the parts of a
//! rejected request is bounded too. A declared `Content-Length` over the limit is refused
//! before reading anything.
//!
//! After a successful put, one unit of work grants read access to every reader **and to the
//! node's own jurisdiction** (the reference granted only the reader; our uploader's
//! jurisdiction keeps access to what it shared), then commits; only then is the upload
//! acknowledged (ARCHITECTURE §6.1). Uploading the same bytes again is idempotent (the
//! object store keeps the first content type) and adds the new readers; it answers 201
//! again.
//!
//! **Too many files, no file, broken multipart: nothing is stored.** The first file part
//! is streamed to the object store through a bounded channel; the end of that stream is
//! only signalled after the rest of the multipart body has been read. If another file part
//! follows (or the body turns out malformed, or too large), the stream ends with an error
//! instead, so the put fails and — by the [`ObjectStore`](igl_core::ObjectStore) contract —
//! leaves nothing visible; no ACL entry is written. The remaining parts are read (not
//! kept) to report the reference's `[{"files": n}]`. The one way to leave an object without
//! ACL entries is a storage failure between the put and the commit of the grants (the
//! client gets a 5xx and retries); such an object is readable by nobody, since every read
//! checks the ACL first.
//!
//! # Downloads: 404, not 403, for callers not on the ACL
//!
//! A document is served only when the caller's jurisdiction is on its ACL
//! ([`ObjectAcl::may_read`](igl_core::ObjectAcl::may_read)). Otherwise the answer is **404**,
//! exactly as for a document that does not exist: multihashes are derived from content, so
//! a 403 would tell anyone holding a guess of a document's bytes that this node stores it.
//! The reference answers 404 in both cases too. The response carries the stored
//! `Content-Type`, `Content-Length`, `ETag: "<multihash>"`, `Cache-Control: private,
//! immutable` and `X-Content-Type-Options: nosniff` (the content type is the uploader's
//! claim; browsers must not sniff it into something executable).
//!
//! # The legacy download `GET /{multihash}`
//!
//! Registered as `/{segment}`: a segment that is not a sha2-256 multihash gets the generic
//! 404 of an unknown path (the reference's 400 `invalid-uri-error` would turn every
//! unknown one-segment path of the node into a 400), so `/healthz`, `/metrics`, `/message`
//! and the other static routes are unaffected (static routes win over parameters).
//! The caller is identified by the bearer credentials of every API; when
//! `auth.insecure_legacy_document_auth` is on, also by the reference's unsigned `JWTBODY`
//! header or `?as_jurisdiction=` ([`legacy_document_identity`]): a valid bearer token wins,
//! then the legacy claim, then anonymous access if enabled; a request with no identity at
//! all gets the reference's 400 `bad-jurisdiction-name-error`. The 404 body is the
//! reference's. The response's `Content-Type` is the stored one (the reference always sent
//! `binary/octet-stream`, which clients ignore or treat as opaque bytes anyway).
//!
//! # Metrics
//!
//! `igl_documents_uploaded_total`, `igl_document_bytes_uploaded_total`, and
//! `igl_documents_downloaded_total{outcome}` for GETs (`served`, `not_modified`, `denied`,
//! `missing`, `error`).

use std::collections::BTreeSet;
use std::io;

use axum::Router;
use axum::body::Body;
use axum::extract::multipart::MultipartError;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use igl_core::{ByteStream, ObjectInfo, ObjectStoreError};
use igl_domain::{Jurisdiction, JurisdictionError, Multihash};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::auth::{Caller, legacy_document_identity};
use crate::error::ApiError;
use crate::openapi::ErrorResponse;
use crate::state::AppState;

/// The content type stored when an upload names none.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// How much a multipart request may exceed the document limit (boundaries, part headers,
/// ignored form fields).
pub const MULTIPART_OVERHEAD_BYTES: u64 = 1024 * 1024;

/// Longest content type accepted for storage.
const MAX_CONTENT_TYPE_LEN: usize = 255;

/// Chunks in flight between the multipart reader and the object store.
const CHANNEL_CHUNKS: usize = 4;

/// The multipart media type.
const MULTIPART_FORM_DATA: &str = "multipart/form-data";

/// The `Authorization` scheme of the reference's unsigned identity.
const JWTBODY: &[u8] = b"JWTBODY";

const UPLOADED_TOTAL: &str = "igl_documents_uploaded_total";
const BYTES_UPLOADED_TOTAL: &str = "igl_document_bytes_uploaded_total";
const DOWNLOADED_TOTAL: &str = "igl_documents_downloaded_total";

/// Routes of the Document API, current and legacy. The default body limit is disabled
/// here: the object store enforces `documents.max_bytes` while streaming.
pub fn router() -> Router<AppState> {
    describe_metrics();
    Router::new()
        .route("/api/v1/documents", post(upload))
        .route(
            "/api/v1/documents/{multihash}",
            get(download).head(head_document),
        )
        .route("/jurisdictions/{jurisdiction}", post(upload_legacy))
        .route("/countries/{jurisdiction}", post(upload_legacy_countries))
        .route(
            "/{multihash}",
            get(download_legacy).fallback(legacy_other_method),
        )
        .layer(DefaultBodyLimit::disable())
}

/// Describes this module's metrics to the recorder (idempotent).
pub fn describe_metrics() {
    metrics::describe_counter!(UPLOADED_TOTAL, "Documents uploaded (stored and granted)");
    metrics::describe_counter!(
        BYTES_UPLOADED_TOTAL,
        metrics::Unit::Bytes,
        "Bytes of documents uploaded"
    );
    metrics::describe_counter!(
        DOWNLOADED_TOTAL,
        "Document GETs by outcome (served, not_modified, denied, missing, error)"
    );
}

/// The OpenAPI description of the Document API, for nesting into the node's document.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    paths(
        upload,
        download,
        head_document,
        upload_legacy,
        upload_legacy_countries,
        download_legacy
    ),
    components(schemas(UploadedDocument, LegacyUploadedDocument, DocumentUploadForm))
)]
pub struct DocumentsDoc;

/// The answer to `POST /api/v1/documents`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"multihash": "QmQtYtUS7K1AdKjbuMsmPmPGDLaKL38M5HYwqxW9RKW49n",
    "size": 1234, "content_type": "application/pdf", "readers": ["AU", "SG"]}))]
pub struct UploadedDocument {
    /// The document's address: base58btc sha2-256 multihash of its bytes (`Qm…`).
    pub multihash: String,
    /// Its size in bytes.
    pub size: u64,
    /// The stored media type (that of the first upload of these bytes).
    pub content_type: String,
    /// The jurisdictions this upload granted read access to, sorted; always includes the
    /// node's own.
    pub readers: Vec<String>,
}

/// The answer to the legacy uploads (the reference's body).
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"multihash": "QmQtYtUS7K1AdKjbuMsmPmPGDLaKL38M5HYwqxW9RKW49n"}))]
pub struct LegacyUploadedDocument {
    /// The document's address (`Qm…`).
    pub multihash: String,
}

/// A multipart upload: exactly one file part, under any field name; other fields are
/// ignored.
#[derive(Debug, utoipa::ToSchema)]
pub struct DocumentUploadForm {
    /// The document; the part's `Content-Type` is stored.
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
}

// ---------------------------------------------------------------------------------------
// Uploads
// ---------------------------------------------------------------------------------------

/// Uploads a document that `reader` jurisdictions (and this node's) may read.
#[utoipa::path(
    post,
    path = "/api/v1/documents",
    tag = "documents",
    params(
        ("reader" = Vec<String>, Query, description = "Reader jurisdictions (ISO 3166-1 \
            alpha-2), repeated or comma-separated; at least one. The node's own is always added."),
    ),
    request_body(
        description = "`multipart/form-data` with exactly one file part, or the raw document \
            with its `Content-Type` (none: `application/octet-stream`)",
        content(
            (DocumentUploadForm = "multipart/form-data"),
            ("application/octet-stream"),
            ("*/*"),
        )
    ),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Stored and shared", body = UploadedDocument,
            headers(("Location" = String, description = "`/api/v1/documents/{multihash}`"))),
        (status = 400, description = "Missing or invalid reader, no file, more than one \
            file, malformed multipart or content type, body interrupted", body = ErrorResponse),
        (status = 401, description = "Missing or invalid credentials", body = ErrorResponse),
        (status = 403, description = "The caller is not of this node's jurisdiction", body = ErrorResponse),
        (status = 413, description = "Larger than `documents.max_bytes`", body = ErrorResponse),
        (status = 503, description = "Storage unavailable; retry", body = ErrorResponse),
    )
)]
pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    authorize_upload(&state, &caller)?;
    let Query(query) = query.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let mut readers = parse_readers(&query)?;
    readers.insert(state.jurisdiction);
    let content_type = request_content_type(request.headers())?;
    let info = match content_type {
        Some(value) if essence(&value).eq_ignore_ascii_case(MULTIPART_FORM_DATA) => {
            receive_multipart(&state, request).await?
        }
        other => {
            let content_type = other.unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_owned());
            receive_raw(&state, request, &content_type).await?
        }
    };
    grant(&state, &info.multihash, &readers).await?;
    record_upload(&info);
    let location = format!("/api/v1/documents/{}", info.multihash);
    let body = UploadedDocument {
        multihash: info.multihash.to_string(),
        size: info.size,
        content_type: info.content_type,
        readers: readers.iter().map(ToString::to_string).collect(),
    };
    let mut response = (StatusCode::CREATED, axum::Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// The reference's upload: one file part for the path's jurisdiction (and this node's).
#[utoipa::path(
    post,
    path = "/jurisdictions/{jurisdiction}",
    tag = "legacy",
    operation_id = "upload_document_legacy",
    params(("jurisdiction" = String, Path, description = "The reader jurisdiction (ISO 3166-1 alpha-2)")),
    request_body(content = DocumentUploadForm, content_type = "multipart/form-data"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Stored and shared", body = LegacyUploadedDocument),
        (status = 400, description = "`bad-jurisdiction-name-error`, `no-input-file-error`, \
            `too-many-files-error` (source `[{\"files\": n}]`), malformed multipart", body = ErrorResponse),
        (status = 401, description = "Missing or invalid credentials", body = ErrorResponse),
        (status = 403, description = "The caller is not of this node's jurisdiction", body = ErrorResponse),
        (status = 413, description = "Larger than `documents.max_bytes`", body = ErrorResponse),
        (status = 415, description = "Not `multipart/form-data`", body = ErrorResponse),
    )
)]
pub async fn upload_legacy(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    authorize_upload(&state, &caller)?;
    let got = request
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|value| essence(&String::from_utf8_lossy(value.as_bytes())).to_ascii_lowercase())
        .unwrap_or_default();
    if got != MULTIPART_FORM_DATA {
        return Err(ApiError::unsupported_media_type(
            &got,
            &[MULTIPART_FORM_DATA],
        ));
    }
    let Path(jurisdiction) =
        path.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let reader = Jurisdiction::parse(&jurisdiction).map_err(|error| bad_jurisdiction(&error))?;
    let info = receive_multipart(&state, request).await?;
    let readers = BTreeSet::from([reader, state.jurisdiction]);
    grant(&state, &info.multihash, &readers).await?;
    record_upload(&info);
    Ok(axum::Json(LegacyUploadedDocument {
        multihash: info.multihash.to_string(),
    })
    .into_response())
}

/// The reference's alias of `POST /jurisdictions/{jurisdiction}`.
#[utoipa::path(
    post,
    path = "/countries/{jurisdiction}",
    tag = "legacy",
    operation_id = "upload_document_legacy_countries",
    params(("jurisdiction" = String, Path, description = "The reader jurisdiction (ISO 3166-1 alpha-2)")),
    request_body(content = DocumentUploadForm, content_type = "multipart/form-data"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Stored and shared", body = LegacyUploadedDocument),
        (status = 400, description = "As `POST /jurisdictions/{jurisdiction}`", body = ErrorResponse),
        (status = 401, description = "Missing or invalid credentials", body = ErrorResponse),
        (status = 403, description = "The caller is not of this node's jurisdiction", body = ErrorResponse),
        (status = 413, description = "Larger than `documents.max_bytes`", body = ErrorResponse),
        (status = 415, description = "Not `multipart/form-data`", body = ErrorResponse),
    )
)]
pub async fn upload_legacy_countries(
    state: State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    upload_legacy(state, caller, path, request).await
}

/// B2G callers upload for their own node only.
fn authorize_upload(state: &AppState, caller: &Caller) -> Result<(), ApiError> {
    if caller.jurisdiction != state.jurisdiction {
        return Err(ApiError::forbidden(format!(
            "callers of {} cannot upload documents to the node of {}",
            caller.jurisdiction, state.jurisdiction
        )));
    }
    Ok(())
}

/// 400 `bad-jurisdiction-name-error` as the reference renders it.
fn bad_jurisdiction(error: &JurisdictionError) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad-jurisdiction-name-error")
        .with_detail("Received invalid/unknown jurisdiction name")
        .with_source(json!([error.to_string()]))
}

/// The `reader` parameters: repeated and/or comma-separated; at least one.
fn parse_readers(query: &[(String, String)]) -> Result<BTreeSet<Jurisdiction>, ApiError> {
    let mut readers = BTreeSet::new();
    let codes = query
        .iter()
        .filter(|(name, _)| name == "reader")
        .flat_map(|(_, value)| value.split(','))
        .map(str::trim)
        .filter(|code| !code.is_empty());
    for code in codes {
        let reader = Jurisdiction::parse(code)
            .map_err(|error| bad_jurisdiction(&error).with_meta(json!({"parameter": "reader"})))?;
        readers.insert(reader);
    }
    if readers.is_empty() {
        return Err(ApiError::bad_request(
            "at least one reader jurisdiction is required, e.g. ?reader=SG",
        )
        .with_source(json!([{"parameter": "reader"}])));
    }
    Ok(readers)
}

/// The media type without parameters (`text/plain; charset=utf-8` → `text/plain`).
fn essence(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}

/// The request's `Content-Type`, validated for storage; `None` when absent or empty.
fn request_content_type(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::bad_request("Content-Type is not a valid media type")
            .with_source(json!([{"header": "Content-Type"}]))
    };
    let text = value.to_str().map_err(|_| invalid())?.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if text.len() > MAX_CONTENT_TYPE_LEN || text.parse::<mime::Mime>().is_err() {
        return Err(invalid());
    }
    Ok(Some(text.to_owned()))
}

/// 413 `document-too-large-error`.
fn too_large(limit: u64) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "document-too-large-error")
        .with_detail(format!("The document exceeds the limit of {limit} bytes"))
        .with_meta(json!({"limit": limit}))
}

/// Refuses a request whose declared `Content-Length` exceeds `request_limit` before
/// reading it.
fn check_declared_length(
    headers: &HeaderMap,
    request_limit: u64,
    document_limit: u64,
) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    match declared {
        Some(length) if length > request_limit => Err(too_large(document_limit)),
        _ => Ok(()),
    }
}

/// Maps an object store failure (of a put, or of opening a document).
fn store_error(error: ObjectStoreError) -> ApiError {
    match error {
        ObjectStoreError::TooLarge { limit } => too_large(limit),
        ObjectStoreError::HashMismatch { expected, actual } => {
            ApiError::bad_request(format!("content hashes to {actual}, expected {expected}"))
        }
        ObjectStoreError::Body(source) => {
            tracing::debug!(error = %source, "document body not received");
            ApiError::bad_request("reading the request body failed").with_title("Bad Request Body")
        }
        error @ ObjectStoreError::Backend(_) => {
            tracing::error!(error = %error, cause = ?std::error::Error::source(&error), "object store failure");
            ApiError::internal()
        }
    }
}

/// Streams a raw body into the object store.
async fn receive_raw(
    state: &AppState,
    request: Request,
    content_type: &str,
) -> Result<ObjectInfo, ApiError> {
    let limit = state.max_document_bytes;
    check_declared_length(request.headers(), limit, limit)?;
    let body: ByteStream = request
        .into_body()
        .into_data_stream()
        .map_err(io::Error::other)
        .boxed();
    state
        .objects
        .put(body, content_type, None, limit)
        .await
        .map_err(store_error)
}

/// What reading a multipart body found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartsRead {
    /// No file part.
    NoFile,
    /// Exactly one file part, streamed completely.
    OneFile,
    /// More than one file part (how many).
    TooMany(u64),
    /// The object store stopped reading the first file (its result says why).
    StoreStopped,
}

/// Streams the single file part of a multipart body into the object store; see the module
/// documentation for why nothing is stored when the body has no or too many files.
async fn receive_multipart(state: &AppState, request: Request) -> Result<ObjectInfo, ApiError> {
    let limit = state.max_document_bytes;
    let request_limit = limit.saturating_add(MULTIPART_OVERHEAD_BYTES);
    check_declared_length(request.headers(), request_limit, limit)?;
    let (parts, body) = request.into_parts();
    let limited = Body::new(http_body_util::Limited::new(
        body,
        usize::try_from(request_limit).unwrap_or(usize::MAX),
    ));
    let mut multipart = Multipart::from_request(Request::from_parts(parts, limited), &())
        .await
        .map_err(|rejection| {
            ApiError::bad_request(rejection.body_text()).with_title("Malformed Multipart Body")
        })?;

    let (chunks_tx, chunks_rx) = mpsc::channel::<io::Result<Bytes>>(CHANNEL_CHUNKS);
    let (type_tx, type_rx) = oneshot::channel::<String>();
    let producer = async move {
        let read = read_parts(&mut multipart, type_tx, &chunks_tx, limit).await;
        if !matches!(read, Ok(PartsRead::OneFile)) {
            // Never let the store see a clean end of a rejected upload.
            let _ = chunks_tx
                .send(Err(io::Error::other("multipart upload rejected")))
                .await;
        }
        drop(chunks_tx);
        read
    };
    let objects = state.objects.clone();
    let consumer = async move {
        let content_type = type_rx.await.ok()?;
        let body: ByteStream = futures::stream::unfold(chunks_rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        })
        .boxed();
        Some(objects.put(body, &content_type, None, limit).await)
    };
    let (read, stored) = tokio::join!(producer, consumer);
    match read? {
        PartsRead::NoFile => Err(
            ApiError::new(StatusCode::BAD_REQUEST, "no-input-file-error")
                .with_detail("Received no input file"),
        ),
        PartsRead::TooMany(files) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "too-many-files-error",
        )
        .with_detail("Received too many files")
        .with_source(json!([{"files": files}]))),
        PartsRead::OneFile | PartsRead::StoreStopped => match stored {
            Some(Ok(info)) => Ok(info),
            Some(Err(error)) => Err(store_error(error)),
            None => {
                tracing::error!("multipart file part read but no put was started");
                Err(ApiError::internal())
            }
        },
    }
}

/// Reads every part: the first file part's chunks go to `chunks` (its content type to
/// `content_type` first); later file parts are only counted, other fields skipped.
async fn read_parts(
    multipart: &mut Multipart,
    content_type: oneshot::Sender<String>,
    chunks: &mpsc::Sender<io::Result<Bytes>>,
    limit: u64,
) -> Result<PartsRead, ApiError> {
    let mut content_type = Some(content_type);
    let mut files = 0u64;
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|error| multipart_error(&error, limit))?
    {
        if field.file_name().is_none() {
            continue;
        }
        files += 1;
        if files > 1 {
            // Counted; its bytes are skipped by the next `next_field`.
            continue;
        }
        let part_type = field
            .content_type()
            .map(str::trim)
            .filter(|value| !value.is_empty())
            .unwrap_or(DEFAULT_CONTENT_TYPE)
            .to_owned();
        if part_type.len() > MAX_CONTENT_TYPE_LEN {
            return Err(
                ApiError::bad_request("the file part's Content-Type is too long")
                    .with_source(json!([{"header": "Content-Type"}])),
            );
        }
        if let Some(sender) = content_type.take() {
            let _ = sender.send(part_type);
        }
        while let Some(chunk) = field
            .chunk()
            .await
            .map_err(|error| multipart_error(&error, limit))?
        {
            if chunks.send(Ok(chunk)).await.is_err() {
                return Ok(PartsRead::StoreStopped);
            }
        }
    }
    Ok(match files {
        0 => PartsRead::NoFile,
        1 => PartsRead::OneFile,
        n => PartsRead::TooMany(n),
    })
}

/// A multipart failure: over the request limit → 413, anything else (malformed body,
/// interrupted upload) → 400.
fn multipart_error(error: &MultipartError, limit: u64) -> ApiError {
    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return too_large(limit);
    }
    tracing::debug!(error = %error.body_text(), "multipart body not readable");
    ApiError::bad_request(format!(
        "the multipart/form-data body cannot be read: {}",
        error.body_text()
    ))
    .with_title("Malformed Multipart Body")
}

/// Grants every reader in one unit of work.
async fn grant(
    state: &AppState,
    multihash: &Multihash,
    readers: &BTreeSet<Jurisdiction>,
) -> Result<(), ApiError> {
    let mut unit = state.storage.begin().await?;
    for reader in readers {
        unit.grant_object(multihash, *reader).await?;
    }
    unit.commit().await?;
    Ok(())
}

fn record_upload(info: &ObjectInfo) {
    metrics::counter!(UPLOADED_TOTAL).increment(1);
    metrics::counter!(BYTES_UPLOADED_TOTAL).increment(info.size);
    tracing::info!(multihash = %info.multihash, size = info.size, "document uploaded");
}

// ---------------------------------------------------------------------------------------
// Downloads
// ---------------------------------------------------------------------------------------

/// Reads a document shared with the caller's jurisdiction.
#[utoipa::path(
    get,
    path = "/api/v1/documents/{multihash}",
    tag = "documents",
    params(
        ("multihash" = String, Path, description = "The document's multihash (`Qm…`)"),
        ("If-None-Match" = Option<String>, Header, description = "`\"<multihash>\"` or `*`: 304 when it matches"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The bytes, with the stored `Content-Type`",
            content(("application/octet-stream"), ("*/*")),
            headers(
                ("Content-Length" = u64, description = "Size in bytes"),
                ("ETag" = String, description = "`\"<multihash>\"`"),
                ("Cache-Control" = String, description = "`private, immutable`"),
            )),
        (status = 304, description = "`If-None-Match` matched"),
        (status = 400, description = "`invalid-uri-error`: not a multihash", body = ErrorResponse),
        (status = 401, description = "Missing or invalid credentials", body = ErrorResponse),
        (status = 404, description = "No such document, or not shared with the caller's \
            jurisdiction (not distinguished)", body = ErrorResponse),
    )
)]
pub async fn download(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let multihash = parse_multihash(path)?;
    let found = open(&state, &multihash, caller.jurisdiction, &headers, true).await;
    found.and_then(|found| found.ok_or_else(|| not_found(&multihash)))
}

/// The headers of `GET /api/v1/documents/{multihash}`, without the bytes.
#[utoipa::path(
    head,
    path = "/api/v1/documents/{multihash}",
    tag = "documents",
    operation_id = "head_document",
    params(("multihash" = String, Path, description = "The document's multihash (`Qm…`)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The document exists and is shared with the caller",
            headers(
                ("Content-Type" = String, description = "The stored media type"),
                ("Content-Length" = u64, description = "Size in bytes"),
                ("ETag" = String, description = "`\"<multihash>\"`"),
            )),
        (status = 400, description = "Not a multihash"),
        (status = 401, description = "Missing or invalid credentials"),
        (status = 404, description = "No such document, or not shared with the caller"),
    )
)]
pub async fn head_document(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let multihash = parse_multihash(path)?;
    let found = open(&state, &multihash, caller.jurisdiction, &headers, false).await;
    found.and_then(|found| found.ok_or_else(|| not_found(&multihash)))
}

/// The reference's document read, by bearer credentials or (insecure, when enabled) the
/// reference's `JWTBODY` / `as_jurisdiction` identity.
#[utoipa::path(
    get,
    path = "/{multihash}",
    tag = "legacy",
    operation_id = "download_document_legacy",
    params(
        ("multihash" = String, Path, description = "The document's multihash (`Qm…`); other \
            segments are unknown paths (404)"),
        ("as_jurisdiction" = Option<String>, Query, description = "Only with \
            `auth.insecure_legacy_document_auth`: the claimed reader jurisdiction"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The bytes, with the stored `Content-Type`",
            content(("application/octet-stream"), ("*/*"))),
        (status = 400, description = "`bad-jurisdiction-name-error` (legacy identity)", body = ErrorResponse),
        (status = 401, description = "Missing or invalid credentials, or a `JWTBODY` that is not JSON", body = ErrorResponse),
        (status = 404, description = "`Document with uri:<m> for jurisdiction:<J> not found`", body = ErrorResponse),
    )
)]
pub async fn download_legacy(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Ok(Path(segment)) = path else {
        return Err(ApiError::generic(StatusCode::NOT_FOUND));
    };
    let Ok(multihash) = Multihash::parse(&segment) else {
        return Err(ApiError::generic(StatusCode::NOT_FOUND));
    };
    let Query(query) = query.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let as_jurisdiction = query
        .iter()
        .find(|(name, _)| name == "as_jurisdiction")
        .map(|(_, value)| value.as_str());
    let reader = legacy_reader(&state, &headers, as_jurisdiction).await?;
    match open(&state, &multihash, reader, &headers, true).await? {
        Some(response) => Ok(response),
        None => Err(ApiError::not_found(format!(
            "Document with uri:{multihash} for jurisdiction:{reader} not found"
        ))
        .with_source(json!([{"uri": multihash.to_string(), "jurisdiction": reader.as_str()}]))),
    }
}

/// Other methods on `/{segment}`: 405 for a multihash, the generic 404 for anything else.
async fn legacy_other_method(path: Result<Path<String>, PathRejection>) -> ApiError {
    match path {
        Ok(Path(segment)) if Multihash::parse(&segment).is_ok() => {
            ApiError::generic(StatusCode::METHOD_NOT_ALLOWED)
        }
        _ => ApiError::generic(StatusCode::NOT_FOUND),
    }
}

/// Who reads on the legacy path: see the module documentation.
async fn legacy_reader(
    state: &AppState,
    headers: &HeaderMap,
    as_jurisdiction: Option<&str>,
) -> Result<Jurisdiction, ApiError> {
    if !state.insecure_legacy_document_auth {
        return Ok(state.auth.authenticate(headers).await?.jurisdiction);
    }
    let authorization = headers.get(header::AUTHORIZATION);
    let is_jwtbody =
        authorization.is_some_and(|value| value.as_bytes().trim_ascii_start().starts_with(JWTBODY));
    let bearer = match authorization {
        Some(_) if !is_jwtbody => Some(state.auth.authenticate(headers).await),
        _ => None,
    };
    if let Some(Ok(caller)) = &bearer {
        return Ok(caller.jurisdiction);
    }
    if let Some(claimed) = legacy_document_identity(headers, as_jurisdiction)? {
        tracing::debug!(jurisdiction = %claimed, "insecure legacy document identity");
        return Ok(claimed);
    }
    if let Some(Err(error)) = bearer {
        return Err(error.into());
    }
    match state.auth.authenticate(headers).await {
        Ok(anonymous) => Ok(anonymous.jurisdiction),
        Err(_) => Err(
            ApiError::new(StatusCode::BAD_REQUEST, "bad-jurisdiction-name-error")
                .with_detail("Received invalid/unknown jurisdiction name")
                .with_source(json!([
                    "no jurisdiction given (as_jurisdiction or JWTBODY)"
                ])),
        ),
    }
}

fn parse_multihash(path: Result<Path<String>, PathRejection>) -> Result<Multihash, ApiError> {
    let invalid = |text: &str| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid-uri-error")
            .with_detail("URI is not multihash")
            .with_source(json!([{"uri": text}]))
    };
    let Path(text) = path.map_err(|_| invalid(""))?;
    Multihash::parse(&text).map_err(|_| invalid(&text))
}

fn not_found(multihash: &Multihash) -> ApiError {
    ApiError::not_found("No document with that multihash is shared with this jurisdiction")
        .with_source(json!([{"uri": multihash.to_string()}]))
}

/// Whether `If-None-Match` names this document (or `*`).
fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag == etag || tag.strip_prefix("W/") == Some(etag))
}

fn count_download(outcome: &'static str) {
    metrics::counter!(DOWNLOADED_TOTAL, "outcome" => outcome).increment(1);
}

/// The document's response if `reader` may read it and it is stored; `None` otherwise
/// (the two are not distinguished to the client). `with_body` is false for HEAD.
async fn open(
    state: &AppState,
    multihash: &Multihash,
    reader: Jurisdiction,
    headers: &HeaderMap,
    with_body: bool,
) -> Result<Option<Response>, ApiError> {
    let count = |outcome| {
        if with_body {
            count_download(outcome);
        }
    };
    let allowed = match state.storage.may_read(multihash, reader).await {
        Ok(allowed) => allowed,
        Err(error) => {
            count("error");
            return Err(error.into());
        }
    };
    if !allowed {
        tracing::debug!(%multihash, %reader, "document not shared with the reader");
        count("denied");
        return Ok(None);
    }
    let etag = format!("\"{multihash}\"");
    let revalidating = not_modified(headers, &etag);
    let opened = if with_body && !revalidating {
        state
            .objects
            .get(multihash)
            .await
            .map(|found| found.map(|(info, stream)| (info, Some(stream))))
    } else {
        state
            .objects
            .head(multihash)
            .await
            .map(|found| found.map(|info| (info, None)))
    };
    let (info, stream) = match opened {
        Ok(Some(found)) => found,
        Ok(None) => {
            count("missing");
            return Ok(None);
        }
        Err(error) => {
            count("error");
            return Err(store_error(error));
        }
    };
    let mut response = if revalidating {
        count("not_modified");
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        count("served");
        let body = stream.map(Body::from_stream).unwrap_or_else(Body::empty);
        let mut response = body.into_response();
        let document_headers = response.headers_mut();
        let content_type = HeaderValue::from_str(&info.content_type)
            .unwrap_or(HeaderValue::from_static(DEFAULT_CONTENT_TYPE));
        document_headers.insert(header::CONTENT_TYPE, content_type);
        document_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(info.size));
        document_headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        response
    };
    let response_headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response_headers.insert(header::ETAG, value);
    }
    response_headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, immutable"),
    );
    Ok(Some(response))
}

#[cfg(test)]
mod tests {
    use utoipa::OpenApi as _;

    use super::*;

    fn query(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn readers_are_repeated_or_comma_separated() {
        let readers = parse_readers(&query(&[
            ("reader", "SG, NZ"),
            ("other", "XX"),
            ("reader", "SG,"),
        ]))
        .unwrap();
        let codes: Vec<&str> = readers.iter().map(Jurisdiction::as_str).collect();
        assert_eq!(codes, ["NZ", "SG"]);
        assert!(parse_readers(&query(&[])).is_err());
        assert!(parse_readers(&query(&[("reader", " , ")])).is_err());
        let bad = parse_readers(&query(&[("reader", "SG,sg")])).unwrap_err();
        assert_eq!(bad.code, "bad-jurisdiction-name-error");
    }

    #[test]
    fn if_none_match_lists_and_wildcards() {
        let etag = "\"QmX\"";
        let headers = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(value).unwrap());
            headers
        };
        assert!(not_modified(&headers("\"QmX\""), etag));
        assert!(not_modified(&headers("\"a\", W/\"QmX\""), etag));
        assert!(not_modified(&headers("*"), etag));
        assert!(!not_modified(&headers("\"QmY\""), etag));
        assert!(!not_modified(&HeaderMap::new(), etag));
    }

    #[test]
    fn content_types_are_validated() {
        let headers = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
            headers
        };
        assert_eq!(
            request_content_type(&headers("application/pdf")).unwrap(),
            Some("application/pdf".to_owned())
        );
        assert_eq!(request_content_type(&headers("  ")).unwrap(), None);
        assert_eq!(request_content_type(&HeaderMap::new()).unwrap(), None);
        assert!(request_content_type(&headers("pdf")).is_err());
        assert!(request_content_type(&headers(&format!("text/{}", "x".repeat(300)))).is_err());
        assert_eq!(
            essence("Multipart/Form-Data; boundary=x"),
            "Multipart/Form-Data"
        );
    }

    #[test]
    fn the_openapi_description_lists_every_route() {
        let document = serde_json::to_value(DocumentsDoc::openapi()).unwrap();
        let paths = &document["paths"];
        for (path, method) in [
            ("/api/v1/documents", "post"),
            ("/api/v1/documents/{multihash}", "get"),
            ("/api/v1/documents/{multihash}", "head"),
            ("/jurisdictions/{jurisdiction}", "post"),
            ("/countries/{jurisdiction}", "post"),
            ("/{multihash}", "get"),
        ] {
            assert!(paths[path][method].is_object(), "{method} {path}");
        }
        let schemas = &document["components"]["schemas"];
        assert!(schemas["UploadedDocument"].is_object());
        assert!(schemas["LegacyUploadedDocument"].is_object());
    }
}
