//! The object spider (REFERENCE-WIRE §4.8, without its defects): downloads the document
//! an inbound message refers to from the sender jurisdiction's Document API, **verifies
//! its multihash while streaming it** into the object store (a mismatch stores nothing and
//! dead-letters the job), grants this node's jurisdiction read access, and follows the
//! `links` of JSON documents.
//!
//! # Downloading
//!
//! `GET {document_api_url}/api/v1/documents/{multihash}` (our node's Document API), or, for
//! a source marked `legacy`, the reference's `GET {document_api_url}/{multihash}
//! ?as_jurisdiction={own}`. A configured token is sent as `Authorization: Bearer <token>`;
//! OAuth2 client credentials (the reference's Cognito mode) are future work. Timeouts: a
//! connect timeout, a timeout until the response headers arrive, and a read timeout
//! between body chunks (a large document may take long in total; the worker's
//! `job_timeout` bounds the whole job, so configure it for the largest document).
//!
//! Failures: 429 and 5xx are retried after `Retry-After` (or with backoff); 401, 403, 404
//! and 408 with backoff, then dead-lettered by the retry policy; other 4xx, a hash mismatch,
//! a document over `max_bytes` and an unconfigured sender jurisdiction are permanent.
//!
//! # Links
//!
//! A stored document of at most [`SpiderConfig::max_links_document_bytes`] whose content
//! type mentions `json` or whose first non-blank byte is `{` is parsed; each item
//! `{"link": "<multihash>"}` of a top-level `links` array is queued as an
//! `object-retrieval.v2` job one level deeper, up to [`SpiderConfig::max_depth`] levels
//! below the message's document. A link to an object already in the store is not queued:
//! whoever stored that object (its own retrieval job) follows its links, which is what
//! makes cycles (A → B → A) terminate with each object fetched once. A job for an object
//! that is already stored (a retried job, a second message referring to it) does not
//! download again but still grants access and follows links, so a crash between storing an
//! object and committing its link jobs loses nothing.
//!
//! The links, the grant and the ack commit in one unit of work.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt as _, TryStreamExt as _};
use igl_core::pipeline::PipelineJob;
use igl_core::{
    ByteStream, ClaimedJob, NewJob, ObjectInfo, ObjectStore, ObjectStoreError, Storage,
};
use igl_domain::{Jurisdiction, Multihash};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use reqwest::{StatusCode, Url};
use serde_json::Value;

use super::http::{HttpClientError, HttpStatusError, endpoint, parse_base_url};
use crate::{Handled, JobError, JobHandler};

/// Content type recorded when the Document API sends none (or an unusable one).
const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// Where the documents of one jurisdiction are downloaded from (`[jurisdictions.<CODE>]`).
#[derive(Clone, PartialEq, Eq)]
pub struct DocumentSource {
    /// Base URL of the jurisdiction's Document API.
    pub base_url: String,
    /// Bearer token presented there, if any (a secret: not shown by `Debug`).
    pub token: Option<String>,
    /// Use the reference node's `GET {base_url}/{multihash}` path.
    pub legacy: bool,
}

impl fmt::Debug for DocumentSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DocumentSource")
            .field("base_url", &self.base_url)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("legacy", &self.legacy)
            .finish()
    }
}

/// Limits and timeouts of the spider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiderConfig {
    /// The largest document downloaded (`documents.max_bytes`). Default 100 MiB.
    pub max_bytes: u64,
    /// How many levels of `links` are followed below a message's document. Default 8.
    pub max_depth: u32,
    /// Documents larger than this are not parsed for links. Default 1 MiB.
    pub max_links_document_bytes: u64,
    /// At most this many links of one document are followed. Default 1000.
    pub max_links_per_document: usize,
    /// Timeout for establishing a connection. Default 10 s.
    pub connect_timeout: Duration,
    /// Timeout until the response headers arrive. Default 30 s.
    pub response_timeout: Duration,
    /// Timeout between two chunks of the body. Default 30 s.
    pub read_timeout: Duration,
}

impl Default for SpiderConfig {
    fn default() -> Self {
        Self {
            max_bytes: 100 * 1024 * 1024,
            max_depth: 8,
            max_links_document_bytes: 1024 * 1024,
            max_links_per_document: 1000,
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(30),
        }
    }
}

/// A [`DocumentSource`] ready for requests.
struct Source {
    base_url: Url,
    authorization: Option<HeaderValue>,
    legacy: bool,
}

/// Handles `object-retrieval.v1` and `.v2` jobs.
pub struct FetchObject {
    storage: Arc<dyn Storage>,
    objects: Arc<dyn ObjectStore>,
    jurisdiction: Jurisdiction,
    sources: HashMap<Jurisdiction, Source>,
    client: reqwest::Client,
    config: SpiderConfig,
}

impl fmt::Debug for FetchObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchObject")
            .field("jurisdiction", &self.jurisdiction)
            .field("sources", &self.sources.keys().collect::<Vec<_>>())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl FetchObject {
    /// A spider for the node of `jurisdiction`, storing into `objects`, downloading the
    /// documents of each jurisdiction from its [`DocumentSource`].
    ///
    /// # Errors
    ///
    /// [`HttpClientError`] for an unusable base URL or token, or a client that cannot be
    /// built.
    pub fn new(
        storage: Arc<dyn Storage>,
        objects: Arc<dyn ObjectStore>,
        jurisdiction: Jurisdiction,
        sources: impl IntoIterator<Item = (Jurisdiction, DocumentSource)>,
        config: SpiderConfig,
    ) -> Result<Self, HttpClientError> {
        let mut prepared = HashMap::new();
        for (code, source) in sources {
            let invalid = |reason: String| HttpClientError::InvalidUrl {
                name: code.to_string(),
                reason,
            };
            let base_url = parse_base_url(&source.base_url).map_err(invalid)?;
            let authorization = match &source.token {
                None => None,
                Some(token) => {
                    let mut value = HeaderValue::try_from(format!("Bearer {token}"))
                        .map_err(|_| invalid("the token is not a valid header value".into()))?;
                    value.set_sensitive(true);
                    Some(value)
                }
            };
            prepared.insert(
                code,
                Source {
                    base_url,
                    authorization,
                    legacy: source.legacy,
                },
            );
        }
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .build()
            .map_err(HttpClientError::Client)?;
        Ok(Self {
            storage,
            objects,
            jurisdiction,
            sources: prepared,
            client,
            config,
        })
    }

    /// Downloads `object` from `sender`'s Document API into the object store, verifying
    /// its multihash.
    async fn download(
        &self,
        sender: Jurisdiction,
        object: &Multihash,
    ) -> Result<ObjectInfo, JobError> {
        let source = self.sources.get(&sender).ok_or_else(|| {
            JobError::permanent(format!(
                "no Document API is configured for jurisdiction {sender} \
                 (jurisdictions.{sender}.document_api_url)"
            ))
        })?;
        let multihash = object.to_string();
        let url = if source.legacy {
            let mut url = endpoint(&source.base_url, &[&multihash]);
            url.query_pairs_mut()
                .append_pair("as_jurisdiction", self.jurisdiction.as_str());
            url
        } else {
            endpoint(&source.base_url, &["api", "v1", "documents", &multihash])
        };
        let mut request = self.client.get(url.clone());
        if let Some(authorization) = &source.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let response = tokio::time::timeout(self.config.response_timeout, request.send())
            .await
            .map_err(|_| {
                JobError::transient(format!(
                    "GET {url} gave no response within {:?}",
                    self.config.response_timeout
                ))
            })?
            .map_err(JobError::transient)?;
        if !matches!(response.status(), StatusCode::OK | StatusCode::CREATED) {
            return Err(
                HttpStatusError::new("GET", &url, response.status(), response.headers()).into(),
            );
        }
        if let Some(length) = response.content_length()
            && length > self.config.max_bytes
        {
            return Err(JobError::permanent(format!(
                "GET {url} announces {length} bytes, more than the limit of {}",
                self.config.max_bytes
            )));
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .filter(|value| !value.is_empty() && value.len() <= 255)
            .unwrap_or(DEFAULT_CONTENT_TYPE)
            .to_owned();
        let body: ByteStream = response
            .bytes_stream()
            .map_err(std::io::Error::other)
            .boxed();
        let info = self
            .objects
            .put(body, &content_type, Some(object), self.config.max_bytes)
            .await
            .map_err(|error| match error {
                ObjectStoreError::HashMismatch { .. } | ObjectStoreError::TooLarge { .. } => {
                    JobError::permanent(DownloadError {
                        url: url.clone(),
                        source: error,
                    })
                }
                ObjectStoreError::Body(_) | ObjectStoreError::Backend(_) => {
                    JobError::transient(DownloadError {
                        url: url.clone(),
                        source: error,
                    })
                }
            })?;
        tracing::info!(%object, %sender, size = info.size, "document downloaded and verified");
        metrics::counter!("igl_spider_documents_downloaded_total").increment(1);
        metrics::counter!("igl_spider_document_bytes_downloaded_total").increment(info.size);
        Ok(info)
    }

    /// The valid multihash links of a stored JSON document (none for other documents).
    async fn links_of(&self, info: &ObjectInfo) -> Result<Vec<Multihash>, JobError> {
        if info.size > self.config.max_links_document_bytes {
            return Ok(Vec::new());
        }
        let Some((_, mut chunks)) = self
            .objects
            .get(&info.multihash)
            .await
            .map_err(JobError::transient)?
        else {
            return Ok(Vec::new());
        };
        let limit = usize::try_from(self.config.max_links_document_bytes).unwrap_or(usize::MAX);
        let mut bytes = Vec::with_capacity(usize::try_from(info.size).unwrap_or(0).min(limit));
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(JobError::transient)?;
            if bytes.len() + chunk.len() > limit {
                return Ok(Vec::new());
            }
            bytes.extend_from_slice(&chunk);
        }
        let looks_like_json = info.content_type.to_ascii_lowercase().contains("json")
            || bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        if !looks_like_json {
            return Ok(Vec::new());
        }
        let max_links = self.config.max_links_per_document;
        // Parsing up to a mebibyte of JSON is too slow for a runtime thread.
        let links = tokio::task::spawn_blocking(move || parse_links(&bytes, max_links))
            .await
            .map_err(JobError::transient)?;
        Ok(links)
    }
}

/// A download that failed, naming the URL.
#[derive(Debug, thiserror::Error)]
#[error("storing the body of GET {url} failed")]
struct DownloadError {
    url: Url,
    #[source]
    source: ObjectStoreError,
}

/// The multihashes of a top-level `links` array of `{"link": "<multihash>"}` items, in
/// order, deduplicated, at most `max_links`. Anything else is ignored.
fn parse_links(bytes: &[u8], max_links: usize) -> Vec<Multihash> {
    let Ok(Value::Object(document)) = serde_json::from_slice::<Value>(bytes) else {
        return Vec::new();
    };
    let Some(Value::Array(items)) = document.get("links") else {
        return Vec::new();
    };
    let mut seen = BTreeSet::new();
    let mut links = Vec::new();
    for item in items {
        let Some(text) = item.get("link").and_then(Value::as_str) else {
            continue;
        };
        match Multihash::parse(text) {
            Ok(link) if seen.insert(link) => links.push(link),
            Ok(_) => {}
            Err(error) => tracing::debug!(%error, "document link ignored, not a multihash"),
        }
        if links.len() >= max_links {
            tracing::warn!(max_links, "document has more links than are followed");
            break;
        }
    }
    links
}

#[async_trait]
impl JobHandler for FetchObject {
    fn name(&self) -> &'static str {
        "object-spider"
    }

    async fn handle(&self, job: &ClaimedJob) -> Result<Handled, JobError> {
        let (reference, sender, object, depth) =
            match serde_json::from_value::<PipelineJob>(job.payload.clone()) {
                Ok(PipelineJob::RetrieveObjectV1 {
                    reference,
                    sender,
                    object,
                }) => (reference, sender, object, 0),
                Ok(PipelineJob::RetrieveObjectV2 {
                    reference,
                    sender,
                    object,
                    depth,
                }) => (reference, sender, object, depth),
                Ok(other) => {
                    return Err(JobError::permanent(format!(
                        "not an object-retrieval job: {other:?}"
                    )));
                }
                Err(error) => return Err(JobError::permanent(error)),
            };
        let sender_code = Jurisdiction::parse(&sender).map_err(JobError::permanent)?;
        let multihash = Multihash::parse(&object).map_err(JobError::permanent)?;

        let stored = self
            .objects
            .head(&multihash)
            .await
            .map_err(JobError::transient)?;
        let info = match stored {
            Some(info) => info,
            None => self.download(sender_code, &multihash).await?,
        };

        let mut link_jobs: Vec<NewJob> = Vec::new();
        if depth < self.config.max_depth {
            for link in self.links_of(&info).await? {
                if link == multihash {
                    continue;
                }
                let already_stored = self
                    .objects
                    .head(&link)
                    .await
                    .map_err(JobError::transient)?
                    .is_some();
                if already_stored {
                    continue;
                }
                link_jobs.push(
                    PipelineJob::RetrieveObjectV2 {
                        reference: reference.clone(),
                        sender: sender.clone(),
                        object: link.to_string(),
                        depth: depth + 1,
                    }
                    .into_new_job(),
                );
            }
        } else {
            tracing::warn!(
                %multihash,
                depth,
                "links of the document are not followed, maximum depth reached"
            );
        }

        let mut unit = self.storage.begin().await?;
        unit.grant_object(&multihash, self.jurisdiction).await?;
        if !link_jobs.is_empty() {
            unit.enqueue(&link_jobs).await?;
        }
        unit.ack(&[job.receipt()]).await?;
        unit.commit().await?;
        tracing::debug!(
            %reference,
            %multihash,
            depth,
            links = link_jobs.len(),
            "document retrieved"
        );
        Ok(Handled::AckedInTransaction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_parsed_leniently() {
        let a = Multihash::of(b"a");
        let b = Multihash::of(b"b");
        let document = serde_json::json!({
            "links": [
                {"link": a.to_string()},
                {"link": "not-a-hash"},
                {"link": a.to_string()},
                {"other": 1},
                "plain",
                {"link": b.to_string()},
            ]
        });
        let bytes = serde_json::to_vec(&document).unwrap();
        assert_eq!(parse_links(&bytes, 10), [a, b]);
        assert_eq!(parse_links(&bytes, 1), [a]);
        assert!(parse_links(b"[1,2]", 10).is_empty());
        assert!(parse_links(b"{\"links\": 3}", 10).is_empty());
        assert!(parse_links(b"not json", 10).is_empty());
    }

    #[test]
    fn debug_hides_the_token() {
        let source = DocumentSource {
            base_url: "https://sg.example/".into(),
            token: Some("s3cr3t".into()),
            legacy: false,
        };
        assert!(!format!("{source:?}").contains("s3cr3t"));
    }
}
