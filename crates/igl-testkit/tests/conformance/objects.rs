//! The `ObjectStore` port on `ObjectLake`: the conformance suite on the local filesystem
//! (a fresh temporary directory per test), in memory, and on an S3-compatible server (a
//! fresh key prefix per test, when `IGL_TEST_S3_ENDPOINT` is set), then checks of what the
//! local filesystem and S3 adapters leave behind.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, stream};
use igl_core::{ByteStream, ObjectStore, ObjectStoreError};
use igl_domain::Multihash;
use igl_store::objects::ObjectLake;
use igl_testkit::backends;
use igl_testkit::conformance::objects as suite;
use tempfile::TempDir;

/// A local filesystem lake in a fresh temporary directory, removed when the test ends.
async fn local_lake() -> (Arc<dyn ObjectStore>, TempDir) {
    let (lake, dir) = local_lake_with_dir();
    (Arc::new(lake), dir)
}

/// A fresh in-memory lake.
async fn memory_lake() -> (Arc<dyn ObjectStore>, ()) {
    (Arc::new(ObjectLake::in_memory()), ())
}

igl_testkit::object_store_conformance!(local_filesystem, local_lake);
igl_testkit::object_store_conformance!(in_memory, memory_lake);
igl_testkit::object_store_conformance!(
    s3,
    s3_lake,
    #[cfg_attr(igl_skip_s3, ignore = "set IGL_TEST_S3_ENDPOINT (and _BUCKET, _ACCESS_KEY, _SECRET_KEY) to run")]
);

/// An S3 lake under a fresh prefix of the test bucket.
async fn s3_lake() -> (Arc<dyn ObjectStore>, ()) {
    (Arc::new(backends::s3_lake().0), ())
}

fn local_lake_with_dir() -> (ObjectLake, TempDir) {
    let dir = tempfile::tempdir().expect("failed to create a temporary directory");
    let lake = ObjectLake::local(dir.path()).expect("failed to open the local object lake");
    (lake, dir)
}

/// Names of the entries in `dir` (none when it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(read) => read
            .map(|entry| {
                entry
                    .expect("failed to read a directory entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => panic!("failed to list {}: {error}", dir.display()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_failed_and_repeated_puts_leave_no_uploads() {
    let (lake, dir) = local_lake_with_dir();
    suite::put_with_wrong_expected_hash_stores_nothing(&lake).await;
    suite::put_over_the_limit_stores_nothing(&lake).await;
    suite::endless_body_is_cut_off_at_the_limit(&lake).await;
    suite::failing_body_stores_nothing(&lake).await;
    suite::put_of_same_bytes_is_idempotent(&lake).await;
    suite::concurrent_puts_of_same_bytes_store_one_document(&lake).await;

    assert_eq!(entries(&dir.path().join("uploads")), Vec::<String>::new());
    // Two documents (the idempotent and the concurrent one), each with its sidecar.
    assert_eq!(entries(&dir.path().join("objects")).len(), 2);
    assert_eq!(entries(&dir.path().join("meta")).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_document_has_a_metadata_sidecar() {
    let (lake, dir) = local_lake_with_dir();
    let document = Bytes::from_static(b"<xml>certificate</xml>");
    let body: ByteStream = stream::once(std::future::ready(Ok(document.clone()))).boxed();
    let info = lake
        .put(body, "application/xml", None, 1024)
        .await
        .expect("put failed");

    let multihash = Multihash::of(&document);
    let stored = std::fs::read(dir.path().join("objects").join(multihash.to_base58()))
        .expect("document file is missing");
    assert_eq!(stored, document);
    let sidecar = std::fs::read(dir.path().join("meta").join(format!("{multihash}.json")))
        .expect("metadata sidecar is missing");
    let sidecar: serde_json::Value =
        serde_json::from_slice(&sidecar).expect("metadata sidecar is not json");
    assert_eq!(
        sidecar,
        serde_json::json!({"content_type": "application/xml", "size": info.size})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_cancelled_put_leaves_no_upload() {
    let (lake, dir) = local_lake_with_dir();
    // Two parts' worth of bytes, then a body that never sends more nor ends.
    let stalled: ByteStream = stream::iter([Ok(Bytes::from(vec![9u8; 3 * 1024 * 1024]))])
        .chain(stream::pending())
        .boxed();
    let put = lake.put(stalled, "application/pdf", None, 1 << 30);
    let cancelled = tokio::time::timeout(Duration::from_millis(500), put).await;
    assert!(cancelled.is_err(), "a put of a stalled body returned");

    // Dropping the upload deletes its staging file in the background.
    let uploads = dir.path().join("uploads");
    for _ in 0..100 {
        if entries(&uploads).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cancelled put left uploads behind: {:?}", entries(&uploads));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_purge_deletes_stale_uploads_only() {
    let (lake, dir) = local_lake_with_dir();
    let uploads = dir.path().join("uploads");
    std::fs::create_dir_all(&uploads).expect("failed to create the upload directory");
    // A finished upload and a staging file, as a crash would leave them.
    std::fs::write(uploads.join("crashed-after-finish"), b"finished").expect("write failed");
    std::fs::write(uploads.join("crashed-midway#1"), b"partial").expect("write failed");
    suite::put_then_get_round_trips(&lake).await;

    let purged = lake
        .purge_stale_uploads(Duration::from_secs(3600))
        .await
        .expect("purge failed");
    assert_eq!(purged, 0, "fresh uploads must be kept");
    assert_eq!(entries(&uploads).len(), 2);

    tokio::time::sleep(Duration::from_millis(100)).await;
    let purged = lake
        .purge_stale_uploads(Duration::from_millis(10))
        .await
        .expect("purge failed");
    assert_eq!(purged, 2);
    assert_eq!(entries(&uploads), Vec::<String>::new());
    assert_eq!(
        entries(&dir.path().join("objects")).len(),
        1,
        "documents are kept"
    );
}

#[tokio::test]
async fn local_ping_fails_when_the_directory_is_gone() {
    let (lake, dir) = local_lake_with_dir();
    lake.ping().await.expect("ping of a fresh lake failed");
    std::fs::remove_dir_all(dir.path()).expect("failed to remove the lake directory");
    let result = lake.ping().await;
    assert!(
        matches!(result, Err(ObjectStoreError::Backend(_))),
        "expected Backend, got {result:?}"
    );
}

const S3_IGNORED: &str = "set IGL_TEST_S3_ENDPOINT (and _BUCKET, _ACCESS_KEY, _SECRET_KEY) to run";

#[cfg_attr(
    igl_skip_s3,
    ignore = "set IGL_TEST_S3_ENDPOINT (and _BUCKET, _ACCESS_KEY, _SECRET_KEY) to run"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_failed_and_repeated_puts_leave_no_uploads() {
    let (lake, _) = backends::s3_lake();
    suite::put_with_wrong_expected_hash_stores_nothing(&lake).await;
    suite::failing_large_body_stores_nothing(&lake).await;
    suite::put_of_same_large_bytes_is_idempotent(&lake).await;
    suite::concurrent_puts_of_same_bytes_store_one_document(&lake).await;
    suite::large_multi_chunk_document_streams_back(&lake).await;
    // Every finished upload was moved or deleted before its put returned.
    let leftover = lake
        .purge_stale_uploads(Duration::ZERO)
        .await
        .expect("listing uploads failed");
    assert_eq!(leftover, 0, "puts left uploads behind");
}

#[cfg_attr(
    igl_skip_s3,
    ignore = "set IGL_TEST_S3_ENDPOINT (and _BUCKET, _ACCESS_KEY, _SECRET_KEY) to run"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_prefixes_keep_lakes_apart() {
    let (first, _) = backends::s3_lake();
    let (second, _) = backends::s3_lake();
    let document = Bytes::from_static(b"only in the first lake");
    let body: ByteStream = stream::once(std::future::ready(Ok(document.clone()))).boxed();
    let info = first
        .put(body, "text/plain", None, 1024)
        .await
        .expect("put failed");
    assert!(
        first
            .head(&info.multihash)
            .await
            .expect("head failed")
            .is_some()
    );
    assert!(
        second
            .head(&info.multihash)
            .await
            .expect("head failed")
            .is_none(),
        "a lake under another prefix sees the document"
    );
}

#[cfg_attr(
    igl_skip_s3,
    ignore = "set IGL_TEST_S3_ENDPOINT (and _BUCKET, _ACCESS_KEY, _SECRET_KEY) to run"
)]
#[tokio::test]
async fn s3_ping_fails_for_a_missing_bucket_or_wrong_credentials() {
    let mut missing_bucket = backends::s3_options().expect(S3_IGNORED);
    missing_bucket.bucket = format!("igl-missing-{}", uuid::Uuid::new_v4().simple());
    let lake = ObjectLake::s3(&missing_bucket).expect("failed to configure the lake");
    let result = lake.ping().await;
    assert!(
        matches!(result, Err(ObjectStoreError::Backend(_))),
        "expected Backend for a missing bucket, got {result:?}"
    );

    let mut wrong_secret = backends::s3_options().expect(S3_IGNORED);
    if let Some(credentials) = &mut wrong_secret.credentials {
        credentials.secret_access_key = "not-the-secret".to_owned();
    }
    let lake = ObjectLake::s3(&wrong_secret).expect("failed to configure the lake");
    let result = lake.ping().await;
    assert!(
        matches!(result, Err(ObjectStoreError::Backend(_))),
        "expected Backend for a wrong secret key, got {result:?}"
    );
}

#[cfg_attr(
    igl_skip_s3,
    ignore = "set IGL_TEST_S3_ENDPOINT (and _BUCKET, _ACCESS_KEY, _SECRET_KEY) to run"
)]
#[tokio::test]
async fn s3_lake_debug_hides_the_secret_key() {
    let (lake, options) = backends::s3_lake();
    let secret = options
        .credentials
        .as_ref()
        .map(|credentials| credentials.secret_access_key.clone())
        .expect("test options have credentials");
    for debug in [format!("{lake:?}"), format!("{options:?}")] {
        assert!(!debug.contains(&secret), "secret key in {debug}");
    }
}

#[cfg_attr(
    igl_skip_s3,
    ignore = "set IGL_TEST_S3_ENDPOINT (and _BUCKET, _ACCESS_KEY, _SECRET_KEY) to run"
)]
#[tokio::test]
async fn s3_credentials_from_the_aws_environment_variables() {
    let mut options = backends::s3_options().expect(S3_IGNORED);
    let credentials = options.credentials.take().expect("test credentials");
    options.environment = vec![
        ("AWS_ACCESS_KEY_ID".to_owned(), credentials.access_key_id),
        (
            "AWS_SECRET_ACCESS_KEY".to_owned(),
            credentials.secret_access_key,
        ),
        // Not a credential variable: must not replace the configured endpoint.
        ("AWS_ENDPOINT".to_owned(), "http://127.0.0.1:9".to_owned()),
    ];
    let lake = ObjectLake::s3(&options).expect("failed to configure the lake");
    lake.ping()
        .await
        .expect("ping with credentials from the environment failed");
    suite::put_then_get_round_trips(&lake).await;
}
