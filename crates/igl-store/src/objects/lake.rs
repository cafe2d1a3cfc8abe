//! [`ObjectLake`]: the [`igl_core::ObjectStore`] adapter on top of the `object_store` crate.

use std::io;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use igl_core::{ByteStream, ObjectInfo, ObjectStore, ObjectStoreError};
use igl_domain::{Multihash, MultihashHasher};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as KeyPath;
use object_store::{GetResultPayload, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::s3::S3Options;

/// How long an unfinished upload may stay idle before [`ObjectLake::purge_stale_uploads`]
/// (run by [`ObjectLake::local`] on start-up) treats it as left over by a crash.
pub const STALE_UPLOAD_AGE: Duration = Duration::from_secs(60 * 60);

/// Part size of the generic constructor: the minimum part size of S3 multipart uploads.
const DEFAULT_PART_SIZE: usize = 5 * 1024 * 1024;
/// Parts in flight of the generic constructor (bounds memory to about two parts).
const DEFAULT_PARTS_IN_FLIGHT: usize = 1;
/// Parts in flight on S3 (overlaps hashing and receiving with one part's upload).
const S3_PARTS_IN_FLIGHT: usize = 2;
/// Part size on the local filesystem, which has no minimum.
const LOCAL_PART_SIZE: usize = 1024 * 1024;
/// Parts in flight on the local filesystem (lets hashing overlap with writing).
const LOCAL_PARTS_IN_FLIGHT: usize = 2;
/// Size of the chunks read from a local file by [`ObjectStore::get`].
const LOCAL_READ_CHUNK: usize = 256 * 1024;
/// Reported when an object has no metadata sidecar (only if someone copied files by hand).
const FALLBACK_CONTENT_TYPE: &str = "application/octet-stream";

/// Folder of finished documents, named by multihash.
const OBJECTS: &str = "objects";
/// Folder of metadata sidecars (`<multihash>.json`).
const META: &str = "meta";
/// Folder of uploads in progress (`<uuid>`).
const UPLOADS: &str = "uploads";

/// Content-addressed document storage on any `object_store` backend (local filesystem,
/// memory, Amazon S3 and S3-compatible servers).
///
/// # Layout under the key prefix
///
/// - `objects/<multihash>`: the document.
/// - `meta/<multihash>.json`: `{"content_type": …, "size": …}`, written **before** the
///   document becomes visible, so a visible document always has its metadata.
/// - `uploads/<uuid>`: a large document being received.
///
/// # How a put proceeds
///
/// [`ObjectStore::put`] reads the body while hashing and counting it, and fails with
/// `TooLarge` as soon as it passes the limit, with `Body` when the body fails, and with
/// `HashMismatch` when it hashes to something other than the expected multihash — in every
/// case leaving nothing visible.
///
/// - A body smaller than one upload part (1 MiB on the local filesystem, 5 MiB on S3) is
///   held in memory, so its multihash is known before anything is written: the sidecar is
///   written, then the document with one put under its final key (a `PutObject` on S3,
///   atomic there; a staging file renamed into place on the local filesystem).
/// - A larger body streams into a multipart upload under `uploads/<uuid>`, with at most
///   `part_size × (parts_in_flight + 1)` bytes in memory (3 MiB on the local filesystem,
///   15 MiB on S3). Once complete and verified, the sidecar is written and the upload is
///   moved to `objects/<multihash>`: an atomic `rename(2)` on the local filesystem, a
///   server-side `CopyObject` (atomic for the destination) then a delete of the upload on
///   S3 — which is why an S3 lake accepts documents up to 5 GiB, the largest single copy.
///
/// # Why a sidecar for the content type
///
/// The local filesystem backend cannot store object attributes (it rejects them), and
/// attribute support differs between S3-compatible services and is not guaranteed to
/// survive a copy; a small JSON object next to the document works on every backend, is
/// written atomically, and keeps the size with it for operators. A crash between the
/// sidecar and the document leaves an orphan sidecar, which is harmless (readers look for
/// the document first) and is overwritten by the next put of the same bytes. Concurrent
/// puts of the same bytes with different content types: the last sidecar written wins.
///
/// # Idempotence and concurrency
///
/// Documents are named by their content, so two puts of the same bytes write the same
/// object; when it already exists the new bytes are not written (a finished upload is
/// deleted). Concurrent puts both succeed: each writes identical bytes to the same key.
///
/// # Crashes
///
/// An upload left behind by a crash (or a cancelled put) stays under `uploads/` and is
/// deleted by [`ObjectLake::purge_stale_uploads`] once idle for long enough. On S3, parts
/// of an unfinished multipart upload are invisible to listing: configure the bucket's
/// `AbortIncompleteMultipartUpload` lifecycle rule for them (see `docs/deployment.md`).
#[derive(Debug, Clone)]
pub struct ObjectLake {
    backend: Arc<dyn object_store::ObjectStore>,
    prefix: KeyPath,
    part_size: usize,
    parts_in_flight: usize,
    /// The filesystem directory behind `prefix`, when the backend is the local filesystem.
    local_root: Option<PathBuf>,
}

impl ObjectLake {
    /// An object lake on `backend`, with every key under `prefix` (`""` for none).
    ///
    /// Uploads use 5 MiB parts (the S3 minimum), one in flight at a time; see
    /// [`ObjectLake::with_upload_parts`]. Stale uploads are not purged: call
    /// [`ObjectLake::purge_stale_uploads`] at start-up.
    pub fn new(
        backend: Arc<dyn object_store::ObjectStore>,
        prefix: &str,
    ) -> Result<Self, ObjectStoreError> {
        let prefix = KeyPath::parse(prefix)
            .map_err(|source| backend_error("invalid object key prefix")(source.into()))?;
        Ok(Self {
            backend,
            prefix,
            part_size: DEFAULT_PART_SIZE,
            parts_in_flight: DEFAULT_PARTS_IN_FLIGHT,
            local_root: None,
        })
    }

    /// A durable object lake in the directory `dir` of the local filesystem (created if
    /// missing); writes are fsynced before `put` returns.
    ///
    /// Spawns a purge of uploads idle for [`STALE_UPLOAD_AGE`] on the current Tokio runtime,
    /// if there is one.
    pub fn local(dir: &FsPath) -> Result<Self, ObjectStoreError> {
        std::fs::create_dir_all(dir).map_err(|source| LakeError::LocalDir {
            context: "failed to create object directory",
            path: dir.to_owned(),
            source,
        })?;
        let root = std::fs::canonicalize(dir).map_err(|source| LakeError::LocalDir {
            context: "failed to resolve object directory",
            path: dir.to_owned(),
            source,
        })?;
        let backend = LocalFileSystem::new_with_prefix(&root)
            .map_err(backend_error("failed to open object directory"))?
            .with_fsync(true);
        let lake = Self {
            backend: Arc::new(backend),
            prefix: KeyPath::default(),
            part_size: LOCAL_PART_SIZE,
            parts_in_flight: LOCAL_PARTS_IN_FLIGHT,
            local_root: Some(root),
        };
        lake.spawn_purge_of_stale_uploads();
        Ok(lake)
    }

    /// An object lake in a bucket of Amazon S3 or an S3-compatible server, every key under
    /// `options.prefix`.
    ///
    /// Uploads use 5 MiB parts (the S3 minimum) with two in flight, so a put holds at most
    /// 15 MiB; documents smaller than one part are stored with a single `PutObject`. No
    /// request is made here (call [`ObjectStore::ping`] to check the bucket); a purge of
    /// uploads idle for [`STALE_UPLOAD_AGE`] is spawned on the current Tokio runtime, if
    /// there is one.
    ///
    /// # Errors
    ///
    /// `Backend` when the options are not usable (an invalid endpoint or prefix).
    pub fn s3(options: &S3Options) -> Result<Self, ObjectStoreError> {
        let backend =
            super::s3::build_backend(options).map_err(backend_error("invalid s3 settings"))?;
        let lake = Self::new(Arc::new(backend), &options.prefix)?
            .with_upload_parts(DEFAULT_PART_SIZE, S3_PARTS_IN_FLIGHT);
        lake.spawn_purge_of_stale_uploads();
        Ok(lake)
    }

    /// A volatile object lake in memory, for tests and `--dev` runs.
    pub fn in_memory() -> Self {
        Self {
            backend: Arc::new(InMemory::new()),
            prefix: KeyPath::default(),
            part_size: LOCAL_PART_SIZE,
            parts_in_flight: LOCAL_PARTS_IN_FLIGHT,
            local_root: None,
        }
    }

    /// Uploads in parts of `part_size` bytes with up to `parts_in_flight` parts being
    /// written at once (both at least 1); memory per put stays below
    /// `part_size × (parts_in_flight + 1)`. S3 needs `part_size` ≥ 5 MiB.
    pub fn with_upload_parts(mut self, part_size: usize, parts_in_flight: usize) -> Self {
        self.part_size = part_size.max(1);
        self.parts_in_flight = parts_in_flight.max(1);
        self
    }

    /// Deletes uploads idle for longer than `older_than` (left by a crash or a cancelled
    /// put) and returns how many it deleted. Safe to run while puts are in progress, as long
    /// as `older_than` is longer than a body may stall.
    pub async fn purge_stale_uploads(
        &self,
        older_than: Duration,
    ) -> Result<usize, ObjectStoreError> {
        let cutoff = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(UNIX_EPOCH);
        let cutoff_millis = cutoff.duration_since(UNIX_EPOCH).map_or(0, |since_epoch| {
            i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
        });

        let uploads = self.uploads_prefix();
        let stale: Vec<KeyPath> = self
            .backend
            .list(Some(&uploads))
            .try_filter_map(|meta| async move {
                Ok((meta.last_modified.timestamp_millis() <= cutoff_millis)
                    .then_some(meta.location))
            })
            .try_collect()
            .await
            .map_err(backend_error("failed to list uploads"))?;
        let mut purged = 0;
        for key in stale {
            if delete_upload(self.backend.as_ref(), &key).await {
                purged += 1;
            }
        }
        if let Some(root) = &self.local_root {
            purged += purge_local_staging_files(root.join(UPLOADS), cutoff).await?;
            // A put of a small document writes `objects/<multihash>#<n>` and renames it.
            purged += purge_local_staging_files(root.join(OBJECTS), cutoff).await?;
        }
        if purged > 0 {
            info!(
                purged,
                older_than_secs = older_than.as_secs(),
                "purged stale uploads"
            );
        } else {
            debug!(
                older_than_secs = older_than.as_secs(),
                "no stale uploads to purge"
            );
        }
        Ok(purged)
    }

    fn spawn_purge_of_stale_uploads(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            debug!("no tokio runtime, not purging stale uploads");
            return;
        };
        let lake = self.clone();
        runtime.spawn(async move {
            if let Err(error) = lake.purge_stale_uploads(STALE_UPLOAD_AGE).await {
                warn!(error = ?error, "failed to purge stale uploads");
            }
        });
    }

    fn object_key(&self, multihash: &Multihash) -> KeyPath {
        self.prefix
            .clone()
            .join(OBJECTS)
            .join(multihash.to_base58())
    }

    fn sidecar_key(&self, multihash: &Multihash) -> KeyPath {
        self.prefix
            .clone()
            .join(META)
            .join(format!("{multihash}.json"))
    }

    fn uploads_prefix(&self) -> KeyPath {
        self.prefix.clone().join(UPLOADS)
    }

    /// Streams the rest of a large body into a multipart upload at `upload_key`: first the
    /// chunks `first` already read, then what `incoming` still yields. Returns its size and
    /// multihash; on any error (including a hash mismatch) the upload is aborted before
    /// returning.
    async fn receive(
        &self,
        upload_key: &KeyPath,
        first: Vec<Bytes>,
        mut incoming: Incoming,
        expected: Option<&Multihash>,
    ) -> Result<(u64, Multihash), ObjectStoreError> {
        let upload = self
            .backend
            .put_multipart(upload_key)
            .await
            .map_err(backend_error("failed to start upload"))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_size);
        for chunk in first {
            writer.put(chunk);
        }
        let streamed = loop {
            let chunk = match incoming.next_chunk().await {
                Ok(None) => break Ok(()),
                Err(error) => break Err(error),
                Ok(Some(chunk)) => chunk,
            };
            if let Err(source) = writer.wait_for_capacity(self.parts_in_flight).await {
                break Err(backend_error("failed to write upload part")(source));
            }
            writer.put(chunk);
        };
        let (size, multihash) = incoming.finish();
        let checked = streamed.and_then(|()| check_expected(expected, multihash));
        if let Err(error) = checked {
            debug!(upload = %upload_key, error = %error, "aborting upload");
            if let Err(abort_error) = writer.abort().await {
                warn!(upload = %upload_key, error = ?abort_error, "failed to abort upload");
            }
            return Err(error);
        }
        writer
            .finish()
            .await
            .map_err(backend_error("failed to complete upload"))?;
        Ok((size, multihash))
    }

    /// Stores a body that fit in memory (less than one part) straight under its content
    /// address with one put: the sidecar first, then the document. Returns the stored info
    /// (with the content type of the existing sidecar when the document was already there).
    async fn put_whole(
        &self,
        chunks: Vec<Bytes>,
        info: ObjectInfo,
    ) -> Result<ObjectInfo, ObjectStoreError> {
        if let Some(stored) = self.already_stored(&info).await? {
            debug!(multihash = %stored.multihash, size = stored.size, "document already stored");
            return Ok(stored);
        }
        self.write_sidecar(&info).await?;
        self.backend
            .put(
                &self.object_key(&info.multihash),
                PutPayload::from_iter(chunks),
            )
            .await
            .map_err(backend_error("failed to write document"))?;
        debug!(multihash = %info.multihash, size = info.size, "stored document");
        Ok(info)
    }

    /// `info` with the stored content type when its document exists already, else `None`.
    async fn already_stored(
        &self,
        info: &ObjectInfo,
    ) -> Result<Option<ObjectInfo>, ObjectStoreError> {
        if self
            .object_meta(&self.object_key(&info.multihash))
            .await?
            .is_none()
        {
            return Ok(None);
        }
        let content_type = match self.read_sidecar(&info.multihash).await? {
            Some(sidecar) => sidecar.content_type,
            None => info.content_type.clone(),
        };
        Ok(Some(ObjectInfo {
            content_type,
            ..info.clone()
        }))
    }

    /// Makes the finished upload visible as `info.multihash`, or notices that it already
    /// is. Returns the stored info and whether the upload was moved.
    async fn publish(
        &self,
        upload_key: &KeyPath,
        info: ObjectInfo,
    ) -> Result<(ObjectInfo, Publication), ObjectStoreError> {
        let object_key = self.object_key(&info.multihash);
        if let Some(stored) = self.already_stored(&info).await? {
            return Ok((stored, Publication::AlreadyStored));
        }
        self.write_sidecar(&info).await?;
        self.backend
            .rename(upload_key, &object_key)
            .await
            .map_err(backend_error("failed to move upload into place"))?;
        Ok((info, Publication::Moved))
    }

    async fn object_meta(
        &self,
        object_key: &KeyPath,
    ) -> Result<Option<object_store::ObjectMeta>, ObjectStoreError> {
        match self.backend.head(object_key).await {
            Ok(meta) => Ok(Some(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(backend_error("failed to look up document")(source)),
        }
    }

    async fn write_sidecar(&self, info: &ObjectInfo) -> Result<(), ObjectStoreError> {
        let key = self.sidecar_key(&info.multihash);
        let sidecar = Sidecar {
            content_type: info.content_type.clone(),
            size: info.size,
        };
        let json = serde_json::to_vec(&sidecar).map_err(|source| LakeError::Sidecar {
            key: key.to_string(),
            source,
        })?;
        self.backend
            .put(&key, PutPayload::from(json))
            .await
            .map_err(backend_error("failed to write metadata sidecar"))?;
        Ok(())
    }

    async fn read_sidecar(
        &self,
        multihash: &Multihash,
    ) -> Result<Option<Sidecar>, ObjectStoreError> {
        let key = self.sidecar_key(multihash);
        let json = match self.backend.get(&key).await {
            Ok(result) => result
                .bytes()
                .await
                .map_err(backend_error("failed to read metadata sidecar"))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => return Err(backend_error("failed to read metadata sidecar")(source)),
        };
        let sidecar = serde_json::from_slice(&json).map_err(|source| LakeError::Sidecar {
            key: key.to_string(),
            source,
        })?;
        Ok(Some(sidecar))
    }

    /// The content type of a document known to be visible (its sidecar was written first).
    async fn content_type(&self, multihash: &Multihash) -> Result<String, ObjectStoreError> {
        match self.read_sidecar(multihash).await? {
            Some(sidecar) => Ok(sidecar.content_type),
            None => {
                warn!(%multihash, "document has no metadata sidecar");
                Ok(FALLBACK_CONTENT_TYPE.to_owned())
            }
        }
    }
}

#[async_trait]
impl ObjectStore for ObjectLake {
    async fn put(
        &self,
        body: ByteStream,
        content_type: &str,
        expected: Option<&Multihash>,
        max_bytes: u64,
    ) -> Result<ObjectInfo, ObjectStoreError> {
        let mut incoming = Incoming::new(body, max_bytes);
        let first = incoming.read_up_to(self.part_size).await?;
        if incoming.ended {
            let (size, multihash) = incoming.finish();
            check_expected(expected, multihash)?;
            let info = ObjectInfo {
                multihash,
                size,
                content_type: content_type.to_owned(),
            };
            return self.put_whole(first, info).await;
        }
        let upload_key = self.uploads_prefix().join(Uuid::new_v4().to_string());
        let (size, multihash) = self.receive(&upload_key, first, incoming, expected).await?;
        // From here the finished upload exists; the guard deletes it unless it was moved,
        // also when this future is dropped half-way.
        let guard = UploadGuard {
            backend: Arc::clone(&self.backend),
            key: Some(upload_key.clone()),
        };
        let info = ObjectInfo {
            multihash,
            size,
            content_type: content_type.to_owned(),
        };
        match self.publish(&upload_key, info).await {
            Ok((stored, Publication::Moved)) => {
                guard.disarm();
                debug!(multihash = %stored.multihash, size, "stored document");
                Ok(stored)
            }
            Ok((stored, Publication::AlreadyStored)) => {
                guard.remove().await;
                debug!(multihash = %stored.multihash, size, "document already stored");
                Ok(stored)
            }
            Err(error) => {
                guard.remove().await;
                Err(error)
            }
        }
    }

    async fn head(&self, multihash: &Multihash) -> Result<Option<ObjectInfo>, ObjectStoreError> {
        // The document first, then its sidecar: the sidecar is written before the document
        // becomes visible, so this order never misses it.
        let Some(meta) = self.object_meta(&self.object_key(multihash)).await? else {
            return Ok(None);
        };
        let content_type = self.content_type(multihash).await?;
        Ok(Some(ObjectInfo {
            multihash: *multihash,
            size: meta.size,
            content_type,
        }))
    }

    async fn get(
        &self,
        multihash: &Multihash,
    ) -> Result<Option<(ObjectInfo, ByteStream)>, ObjectStoreError> {
        let result = match self.backend.get(&self.object_key(multihash)).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => return Err(backend_error("failed to open document")(source)),
        };
        let content_type = self.content_type(multihash).await?;
        let info = ObjectInfo {
            multihash: *multihash,
            size: result.meta.size,
            content_type,
        };
        let stream = match result.payload {
            GetResultPayload::File(mut file, path) => {
                io::Seek::seek(&mut file, io::SeekFrom::Start(result.range.start)).map_err(
                    |source| LakeError::LocalDir {
                        context: "failed to read document",
                        path,
                        source,
                    },
                )?;
                local_file_stream(file, result.range.end - result.range.start)
            }
            GetResultPayload::Stream(stream) => stream.map_err(io::Error::other).boxed(),
        };
        Ok(Some((info, stream)))
    }

    async fn ping(&self) -> Result<(), ObjectStoreError> {
        if let Some(root) = &self.local_root {
            let metadata =
                tokio::fs::metadata(root)
                    .await
                    .map_err(|source| LakeError::LocalDir {
                        context: "object directory is not accessible",
                        path: root.clone(),
                        source,
                    })?;
            if !metadata.is_dir() {
                return Err(LakeError::LocalDir {
                    context: "object directory is not a directory",
                    path: root.clone(),
                    source: io::Error::from(io::ErrorKind::NotADirectory),
                }
                .into());
            }
        }
        self.backend
            .list_with_delimiter(Some(&self.prefix))
            .await
            .map_err(backend_error("object store does not answer"))?;
        Ok(())
    }
}

/// A document body being read: hashed and counted as it passes, cut off past the limit.
struct Incoming {
    body: ByteStream,
    hasher: MultihashHasher,
    max_bytes: u64,
    /// The body has ended (no more chunks).
    ended: bool,
}

impl Incoming {
    fn new(body: ByteStream, max_bytes: u64) -> Self {
        Self {
            body,
            hasher: MultihashHasher::new(),
            max_bytes,
            ended: false,
        }
    }

    /// The next chunk, hashed; `None` at the end. Fails with `Body` when the body fails and
    /// with `TooLarge` as soon as the bytes seen would pass the limit.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ObjectStoreError> {
        if self.ended {
            return Ok(None);
        }
        match self.body.next().await {
            None => {
                self.ended = true;
                Ok(None)
            }
            Some(Err(source)) => Err(ObjectStoreError::Body(source)),
            Some(Ok(chunk)) => {
                let size_with_chunk = self.hasher.bytes_seen().saturating_add(chunk.len() as u64);
                if size_with_chunk > self.max_bytes {
                    return Err(ObjectStoreError::TooLarge {
                        limit: self.max_bytes,
                    });
                }
                self.hasher.update(&chunk);
                Ok(Some(chunk))
            }
        }
    }

    /// Reads chunks until at least `bytes` bytes are buffered or the body ends (see
    /// [`Incoming::ended`]); memory stays below `bytes` plus one chunk.
    async fn read_up_to(&mut self, bytes: usize) -> Result<Vec<Bytes>, ObjectStoreError> {
        let mut chunks = Vec::new();
        let mut buffered = 0usize;
        while buffered < bytes {
            match self.next_chunk().await? {
                Some(chunk) => {
                    buffered += chunk.len();
                    chunks.push(chunk);
                }
                None => break,
            }
        }
        Ok(chunks)
    }

    /// The size and multihash of the bytes seen.
    fn finish(self) -> (u64, Multihash) {
        (self.hasher.bytes_seen(), self.hasher.finish())
    }
}

/// `HashMismatch` unless `actual` is the expected multihash (or none was expected).
fn check_expected(expected: Option<&Multihash>, actual: Multihash) -> Result<(), ObjectStoreError> {
    match expected {
        Some(expected) if *expected != actual => Err(ObjectStoreError::HashMismatch {
            expected: *expected,
            actual,
        }),
        _ => Ok(()),
    }
}

/// What [`ObjectLake::publish`] did with the finished upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Publication {
    /// Renamed to the document's key; nothing left to clean up.
    Moved,
    /// The document existed already; the upload is redundant.
    AlreadyStored,
}

/// The metadata sidecar `meta/<multihash>.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Sidecar {
    content_type: String,
    size: u64,
}

/// Deletes a finished upload that was not moved into place: awaited by [`Self::remove`], or
/// spawned on drop (a cancelled put). Leftovers are caught by the purge of stale uploads.
#[derive(Debug)]
struct UploadGuard {
    backend: Arc<dyn object_store::ObjectStore>,
    key: Option<KeyPath>,
}

impl UploadGuard {
    fn disarm(mut self) {
        self.key = None;
    }

    async fn remove(mut self) {
        if let Some(key) = self.key.take() {
            delete_upload(self.backend.as_ref(), &key).await;
        }
    }
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            warn!(upload = %key, "no tokio runtime, leaving upload for the stale upload purge");
            return;
        };
        let backend = Arc::clone(&self.backend);
        runtime.spawn(async move {
            delete_upload(backend.as_ref(), &key).await;
        });
    }
}

/// Deletes an upload; returns whether it is gone. Failures are logged, not returned: the
/// purge of stale uploads retries them.
async fn delete_upload(backend: &dyn object_store::ObjectStore, key: &KeyPath) -> bool {
    match backend.delete(key).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => true,
        Err(error) => {
            warn!(upload = %key, error = ?error, "failed to delete upload");
            false
        }
    }
}

/// Deletes the local filesystem's staging files (`<uuid>#<n>`, parts being written) in
/// `dir` that were last modified before `cutoff`; `object_store` listings skip them.
async fn purge_local_staging_files(
    dir: PathBuf,
    cutoff: SystemTime,
) -> Result<usize, ObjectStoreError> {
    let purge = tokio::task::spawn_blocking(move || -> Result<usize, LakeError> {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(source) => {
                return Err(LakeError::LocalDir {
                    context: "failed to list upload directory",
                    path: dir,
                    source,
                });
            }
        };
        let mut purged = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let is_staging_file = entry.file_name().to_string_lossy().contains('#');
            let is_stale = entry
                .metadata()
                .and_then(|metadata| metadata.modified())
                .is_ok_and(|modified| modified <= cutoff);
            if !(is_staging_file && is_stale) {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => purged += 1,
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => {
                    warn!(path = %path.display(), error = %error, "failed to delete staging file");
                }
            }
        }
        Ok(purged)
    });
    match purge.await {
        Ok(result) => Ok(result?),
        Err(join_error) => Err(ObjectStoreError::Backend(Box::new(join_error))),
    }
}

/// Streams `len` bytes of an open local file in [`LOCAL_READ_CHUNK`] chunks (the
/// `object_store` default reads 8 KiB per blocking task, which is slow for large files).
fn local_file_stream(file: std::fs::File, len: u64) -> ByteStream {
    futures::stream::try_unfold((file, len), |(mut file, remaining)| async move {
        if remaining == 0 {
            return Ok(None);
        }
        let chunk_len =
            usize::try_from(remaining.min(LOCAL_READ_CHUNK as u64)).unwrap_or(LOCAL_READ_CHUNK);
        let (file, chunk) = tokio::task::spawn_blocking(move || {
            let mut chunk = vec![0u8; chunk_len];
            io::Read::read_exact(&mut file, &mut chunk)?;
            Ok::<_, io::Error>((file, chunk))
        })
        .await
        .map_err(io::Error::other)??;
        let read = chunk.len() as u64;
        Ok(Some((Bytes::from(chunk), (file, remaining - read))))
    })
    .boxed()
}

/// Errors of this adapter, boxed into [`ObjectStoreError::Backend`] with their context.
#[derive(Debug, thiserror::Error)]
enum LakeError {
    /// An `object_store` call failed.
    #[error("{context}")]
    Backend {
        context: &'static str,
        #[source]
        source: object_store::Error,
    },
    /// The local object directory cannot be used.
    #[error("{context}: {}", path.display())]
    LocalDir {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A metadata sidecar cannot be (de)serialised.
    #[error("metadata sidecar {key} is not valid json")]
    Sidecar {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

impl From<LakeError> for ObjectStoreError {
    fn from(error: LakeError) -> Self {
        ObjectStoreError::Backend(Box::new(error))
    }
}

/// Maps an `object_store` error to [`ObjectStoreError::Backend`] with `context`.
fn backend_error(context: &'static str) -> impl FnOnce(object_store::Error) -> ObjectStoreError {
    move |source| LakeError::Backend { context, source }.into()
}
