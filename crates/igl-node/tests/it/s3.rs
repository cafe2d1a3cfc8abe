//! Documents through a node whose objects live on an S3-compatible server
//! (`[objects] type = "s3"`, a fresh key prefix of the `IGL_TEST_S3_*` bucket per test):
//! small and multi-part uploads and downloads over HTTP, the bytes really in the bucket and
//! not on local disk, readiness, and a clear start-up error for a missing bucket.

use igl_config::{ObjectStoreSettings, S3ObjectSettings, SecretString};
use igl_core::ObjectStore;
use igl_domain::{Multihash, MultihashHasher};
use igl_node::NodeOptions;
use igl_store::objects::{ObjectLake, S3Options};
use reqwest::multipart::{Form, Part};
use reqwest::{Method, StatusCode, header};
use serde_json::json;

use crate::support::{TestNode, json};

const IGNORED: &str = "set IGL_TEST_S3_ENDPOINT (and _BUCKET, _ACCESS_KEY, _SECRET_KEY) to run";

/// The node's `[objects]` settings for `options` (the test bucket under a fresh prefix).
fn s3_settings(options: &S3Options) -> S3ObjectSettings {
    let credentials = options.credentials.as_ref().expect("test credentials");
    S3ObjectSettings {
        endpoint: options.endpoint.clone(),
        region: options.region.clone(),
        allow_http: options.allow_http,
        prefix: Some(options.prefix.clone()),
        access_key_id: Some(credentials.access_key_id.clone()),
        secret_access_key: Some(SecretString::new(credentials.secret_access_key.clone())),
        ..S3ObjectSettings::new(options.bucket.clone())
    }
}

/// A node (AU, every API, no workers) on the test bucket under a fresh prefix, and a lake
/// on the same prefix to look into the bucket directly.
async fn node_on_s3() -> (TestNode, ObjectLake) {
    let options = igl_testkit::backends::s3_options().expect(IGNORED);
    let objects = ObjectStoreSettings::S3(s3_settings(&options));
    let node = TestNode::builder()
        .configure(move |settings| settings.objects = objects)
        .start()
        .await;
    let lake = ObjectLake::s3(&options).expect("lake on the node's prefix");
    (node, lake)
}

/// `total` deterministic bytes in 64 KiB chunks.
fn pattern(total: usize) -> impl Iterator<Item = Vec<u8>> {
    const CHUNK: usize = 64 * 1024;
    (0..total.div_ceil(CHUNK)).map(move |index| {
        let start = index * CHUNK;
        (start..total.min(start + CHUNK))
            .map(|position| (position.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect()
    })
}

fn pattern_multihash(total: usize) -> Multihash {
    let mut hasher = MultihashHasher::new();
    pattern(total).for_each(|chunk| hasher.update(&chunk));
    hasher.finish()
}

async fn hash_body(response: reqwest::Response) -> (u64, Multihash) {
    use futures::StreamExt;
    let mut hasher = MultihashHasher::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        hasher.update(&chunk.expect("body chunk"));
    }
    (hasher.bytes_seen(), hasher.finish())
}

#[cfg_attr(
    igl_skip_s3,
    ignore = "set IGL_TEST_S3_ENDPOINT (and _BUCKET, _ACCESS_KEY, _SECRET_KEY) to run"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn small_document_round_trips_through_s3() {
    let (node, lake) = node_on_s3().await;
    let certificate = b"%PDF-1.7\ncertificate of origin stored on s3\n%%EOF\n";
    let form = Form::new().part(
        "document",
        Part::bytes(certificate.to_vec())
            .file_name("coo.pdf")
            .mime_str("application/pdf")
            .unwrap(),
    );
    let response = node
        .request(Method::POST, "/api/v1/documents?reader=SG")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let multihash = Multihash::of(certificate);
    assert_eq!(
        json(response).await,
        json!({
            "multihash": multihash.to_string(),
            "size": certificate.len(),
            "content_type": "application/pdf",
            "readers": ["AU", "SG"],
        })
    );

    let read = node.get(&format!("/api/v1/documents/{multihash}")).await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(read.headers()[header::CONTENT_TYPE], "application/pdf");
    assert_eq!(read.bytes().await.unwrap().as_ref(), certificate);

    // The bytes are in the bucket under the node's prefix, not on local disk.
    let stored = lake.head(&multihash).await.expect("head in the bucket");
    assert_eq!(stored.map(|info| info.size), Some(certificate.len() as u64));
    assert!(
        !node.data_path().join("objects").exists(),
        "a node on s3 wrote objects to its data directory"
    );
}

#[cfg_attr(
    igl_skip_s3,
    ignore = "set IGL_TEST_S3_ENDPOINT (and _BUCKET, _ACCESS_KEY, _SECRET_KEY) to run"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multi_part_document_streams_through_s3() {
    // Five 5 MiB parts and a bit: a multipart upload, then a server-side copy into place.
    const SIZE: usize = 25 * 1024 * 1024 + 12_345;
    let (node, lake) = node_on_s3().await;
    let expected = pattern_multihash(SIZE);
    let chunks = futures::stream::iter(pattern(SIZE).map(Ok::<_, std::io::Error>));
    let response = node
        .request(Method::POST, "/api/v1/documents?reader=SG")
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body = json(response).await;
    assert_eq!(body["multihash"], expected.to_string());
    assert_eq!(body["size"], SIZE as u64);

    let head = node
        .request(Method::HEAD, &format!("/api/v1/documents/{expected}"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()[header::CONTENT_LENGTH],
        SIZE.to_string().as_str()
    );
    let read = node.get(&format!("/api/v1/documents/{expected}")).await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(hash_body(read).await, (SIZE as u64, expected));

    let stored = lake.head(&expected).await.expect("head in the bucket");
    assert_eq!(stored.map(|info| info.size), Some(SIZE as u64));
    let leftover = lake
        .purge_stale_uploads(std::time::Duration::ZERO)
        .await
        .expect("list uploads");
    assert_eq!(leftover, 0, "the finished upload was not removed");
}

#[cfg_attr(
    igl_skip_s3,
    ignore = "set IGL_TEST_S3_ENDPOINT (and _BUCKET, _ACCESS_KEY, _SECRET_KEY) to run"
)]
#[tokio::test]
async fn readyz_checks_the_bucket() {
    let (node, _lake) = node_on_s3().await;
    let response = node.anonymous(Method::GET, "/readyz").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        json(response).await,
        json!({"status": "ready", "checks": {"database": "ok", "objects": "ok"}})
    );
}

#[cfg_attr(
    igl_skip_s3,
    ignore = "set IGL_TEST_S3_ENDPOINT (and _BUCKET, _ACCESS_KEY, _SECRET_KEY) to run"
)]
#[tokio::test]
async fn a_missing_bucket_stops_the_start_with_a_clear_error() {
    let mut options = igl_testkit::backends::s3_options().expect(IGNORED);
    options.bucket = format!("igl-missing-{}", uuid::Uuid::new_v4().simple());
    let secret = options
        .credentials
        .as_ref()
        .map(|credentials| credentials.secret_access_key.clone())
        .expect("test credentials");
    let data_dir = tempfile::tempdir().unwrap();
    let mut settings = igl_config::Settings::default();
    settings.node.data_dir = data_dir.path().to_path_buf();
    settings.http.bind = "127.0.0.1:0".parse().unwrap();
    settings.objects = ObjectStoreSettings::S3(s3_settings(&options));
    settings.validate().expect("valid settings");
    let error = igl_node::start(
        NodeOptions::new(settings),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect_err("a node on a missing bucket must not start");
    let message = format!("{error:#}");
    assert!(
        message.contains("object store does not answer"),
        "{message}"
    );
    assert!(!message.contains(&secret), "{message}");
}

#[test]
fn configured_credentials_win_over_the_environment() {
    let environment = vec![
        ("AWS_ACCESS_KEY_ID".to_owned(), "AKIAENV".to_owned()),
        ("AWS_SECRET_ACCESS_KEY".to_owned(), "env-secret".to_owned()),
    ];
    let mut settings = S3ObjectSettings::new("igl-au");
    let from_environment = igl_node::s3_options(&settings, environment.clone());
    assert!(from_environment.credentials.is_none());
    assert_eq!(from_environment.environment, environment);
    assert_eq!(from_environment.prefix, "");

    settings.access_key_id = Some("AKIACONF".to_owned());
    settings.secret_access_key = Some(SecretString::new("conf-secret"));
    settings.prefix = Some("au".to_owned());
    let configured = igl_node::s3_options(&settings, environment);
    let credentials = configured.credentials.expect("configured credentials");
    assert_eq!(credentials.access_key_id, "AKIACONF");
    assert_eq!(credentials.secret_access_key, "conf-secret");
    assert!(
        configured.environment.is_empty(),
        "environment kept despite configured credentials"
    );
    assert_eq!(configured.prefix, "au");
}
