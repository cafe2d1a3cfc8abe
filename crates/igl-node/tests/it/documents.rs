//! The Document API over HTTP: uploads (multipart and raw), downloads, HEAD, the legacy
//! paths of the reference with every error case, size limits, streaming, and the ACL.

use std::path::Path;

use futures::StreamExt;
use igl_domain::{Jurisdiction, Multihash, MultihashHasher};
use reqwest::multipart::{Form, Part};
use reqwest::{Method, Response, StatusCode, header};
use serde_json::{Value, json};

use crate::support::{TestNode, json};

const CERTIFICATE: &[u8] = b"%PDF-1.7\ncertificate of origin AU -> SG\n%%EOF\n";

fn first_error(body: &Value) -> &Value {
    &body["errors"][0]
}

fn jurisdiction(code: &str) -> Jurisdiction {
    Jurisdiction::parse(code).unwrap()
}

fn file_part(bytes: &[u8], file_name: &str, content_type: &str) -> Part {
    Part::bytes(bytes.to_vec())
        .file_name(file_name.to_owned())
        .mime_str(content_type)
        .unwrap()
}

/// A form with one file part (and an ignored text field before it).
fn one_file(bytes: &[u8], content_type: &str) -> Form {
    Form::new()
        .text("note", "ignored form field")
        .part("document", file_part(bytes, "coo.pdf", content_type))
}

async fn post_form(node: &TestNode, path: &str, form: Form) -> Response {
    node.request(Method::POST, path)
        .multipart(form)
        .send()
        .await
        .expect("request")
}

async fn post_raw(
    node: &TestNode,
    path: &str,
    bytes: &[u8],
    content_type: Option<&str>,
) -> Response {
    let mut request = node.request(Method::POST, path).body(bytes.to_vec());
    if let Some(content_type) = content_type {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    request.send().await.expect("request")
}

async fn assert_error(response: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status);
    let body = json(response).await;
    assert_eq!(first_error(&body)["code"], code, "{body}");
    body
}

/// Whether any file under the node's object directory is named after `multihash`.
fn stored_on_disk(node: &TestNode, multihash: &Multihash) -> bool {
    fn walk(dir: &Path, needle: &str) -> bool {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return false;
        };
        entries.flatten().any(|entry| {
            let path = entry.path();
            entry.file_name().to_string_lossy().contains(needle)
                || (path.is_dir() && walk(&path, needle))
        })
    }
    walk(&node.data_path().join("objects"), &multihash.to_string())
}

/// A deterministic pseudo-random chunk stream of `total` bytes.
fn pattern_chunks(total: usize) -> impl Iterator<Item = Vec<u8>> {
    const CHUNK: usize = 64 * 1024;
    let mut state = 0x2545_f491_u32;
    (0..total.div_ceil(CHUNK)).map(move |index| {
        let len = CHUNK.min(total - index * CHUNK);
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect()
    })
}

fn streamed_body(total: usize) -> reqwest::Body {
    let chunks = futures::stream::iter(pattern_chunks(total).map(Ok::<_, std::io::Error>));
    reqwest::Body::wrap_stream(chunks)
}

fn pattern_multihash(total: usize) -> Multihash {
    let mut hasher = MultihashHasher::new();
    for chunk in pattern_chunks(total) {
        hasher.update(&chunk);
    }
    hasher.finish()
}

/// Reads a response body chunk by chunk: (size, multihash).
async fn hash_body(response: Response) -> (u64, Multihash) {
    let mut hasher = MultihashHasher::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        hasher.update(&chunk.expect("body chunk"));
    }
    (hasher.bytes_seen(), hasher.finish())
}

// ---------------------------------------------------------------------------------------
// Current API
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn multipart_upload_then_download_streams_the_same_bytes() {
    let node = TestNode::start().await;
    let response = post_form(
        &node,
        "/api/v1/documents?reader=SG",
        one_file(CERTIFICATE, "application/pdf"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let multihash = Multihash::of(CERTIFICATE);
    let location = response.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(location, format!("/api/v1/documents/{multihash}"));
    assert_eq!(
        json(response).await,
        json!({
            "multihash": multihash.to_string(),
            "size": CERTIFICATE.len(),
            "content_type": "application/pdf",
            "readers": ["AU", "SG"],
        })
    );

    let read = node.get(&location).await;
    assert_eq!(read.status(), StatusCode::OK);
    let headers = read.headers().clone();
    assert_eq!(headers[header::CONTENT_TYPE], "application/pdf");
    assert_eq!(
        headers[header::CONTENT_LENGTH],
        CERTIFICATE.len().to_string().as_str()
    );
    assert_eq!(
        headers[header::ETAG].to_str().unwrap(),
        format!("\"{multihash}\"")
    );
    assert_eq!(headers[header::CACHE_CONTROL], "private, immutable");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(read.bytes().await.unwrap().as_ref(), CERTIFICATE);

    let storage = node.storage();
    assert!(
        storage
            .may_read(&multihash, jurisdiction("SG"))
            .await
            .unwrap()
    );
    assert!(
        storage
            .may_read(&multihash, jurisdiction("AU"))
            .await
            .unwrap()
    );
    assert!(
        !storage
            .may_read(&multihash, jurisdiction("NZ"))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn raw_body_upload_stores_its_content_type() {
    let node = TestNode::start().await;
    let response = post_raw(
        &node,
        "/api/v1/documents?reader=SG,NZ&reader=SG",
        CERTIFICATE,
        Some("application/pdf"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body = json(response).await;
    let multihash = Multihash::of(CERTIFICATE);
    assert_eq!(body["multihash"], multihash.to_string());
    assert_eq!(body["content_type"], "application/pdf");
    assert_eq!(body["readers"], json!(["AU", "NZ", "SG"]));
    let read = node.get(&format!("/api/v1/documents/{multihash}")).await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(read.headers()[header::CONTENT_TYPE], "application/pdf");
    assert_eq!(read.bytes().await.unwrap().as_ref(), CERTIFICATE);
    assert_eq!(
        node.storage().readers(&multihash).await.unwrap(),
        vec![jurisdiction("AU"), jurisdiction("NZ"), jurisdiction("SG")]
    );

    // No Content-Type: application/octet-stream.
    let untyped = post_raw(&node, "/api/v1/documents?reader=SG", b"opaque", None).await;
    assert_eq!(untyped.status(), StatusCode::CREATED);
    assert_eq!(
        json(untyped).await["content_type"],
        "application/octet-stream"
    );

    // A content type that is not a media type is refused.
    let bad = post_raw(
        &node,
        "/api/v1/documents?reader=SG",
        b"x",
        Some("not a media type"),
    )
    .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn head_and_conditional_get() {
    let node = TestNode::start().await;
    let uploaded = post_raw(
        &node,
        "/api/v1/documents?reader=SG",
        CERTIFICATE,
        Some("text/plain; charset=utf-8"),
    )
    .await;
    assert_eq!(uploaded.status(), StatusCode::CREATED);
    let multihash = Multihash::of(CERTIFICATE);
    let path = format!("/api/v1/documents/{multihash}");
    let etag = format!("\"{multihash}\"");

    let head = node.request(Method::HEAD, &path).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()[header::CONTENT_TYPE],
        "text/plain; charset=utf-8"
    );
    assert_eq!(
        head.headers()[header::CONTENT_LENGTH],
        CERTIFICATE.len().to_string().as_str()
    );
    assert_eq!(head.headers()[header::ETAG].to_str().unwrap(), etag);
    assert!(head.bytes().await.unwrap().is_empty());

    let revalidated = node
        .request(Method::GET, &path)
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(revalidated.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(revalidated.headers()[header::ETAG].to_str().unwrap(), etag);

    let other = node
        .request(Method::GET, &path)
        .header(header::IF_NONE_MATCH, "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::OK);

    let unknown = Multihash::of(b"never uploaded");
    let missing = node
        .request(Method::HEAD, &format!("/api/v1/documents/{unknown}"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let missing = node.get(&format!("/api/v1/documents/{unknown}")).await;
    assert_error(missing, StatusCode::NOT_FOUND, "generic-http-error").await;
}

#[tokio::test]
async fn readers_are_required_and_validated() {
    let node = TestNode::start().await;
    let multihash = Multihash::of(CERTIFICATE);
    for path in [
        "/api/v1/documents",
        "/api/v1/documents?reader=",
        "/api/v1/documents?reader=,",
    ] {
        let response = post_raw(&node, path, CERTIFICATE, Some("application/pdf")).await;
        let body = assert_error(response, StatusCode::BAD_REQUEST, "generic-http-error").await;
        assert_eq!(
            first_error(&body)["source"],
            json!([{"parameter": "reader"}])
        );
    }
    for path in [
        "/api/v1/documents?reader=sg",
        "/api/v1/documents?reader=SG,XX",
        "/api/v1/documents?reader=SG&reader=AUS",
    ] {
        let response = post_raw(&node, path, CERTIFICATE, Some("application/pdf")).await;
        let body = assert_error(
            response,
            StatusCode::BAD_REQUEST,
            "bad-jurisdiction-name-error",
        )
        .await;
        assert_eq!(
            first_error(&body)["detail"],
            "Received invalid/unknown jurisdiction name"
        );
    }
    // Multipart uploads follow the file rules of the legacy paths.
    let no_file = post_form(
        &node,
        "/api/v1/documents?reader=SG",
        Form::new().text("note", "no file here"),
    )
    .await;
    assert_error(no_file, StatusCode::BAD_REQUEST, "no-input-file-error").await;

    let read = node.get(&format!("/api/v1/documents/{multihash}")).await;
    assert_eq!(read.status(), StatusCode::NOT_FOUND, "nothing was stored");
    assert!(!stored_on_disk(&node, &multihash));
}

#[tokio::test]
async fn bad_multihash_is_400() {
    let node = TestNode::start().await;
    for segment in [
        "not-a-multihash",
        "QmQtYtUS7K1AdKjbuMsmPmPGDLaKL38M5HYwqxW9RKW49",
        // base58 of the right length, but not sha2-256
        "zQtYtUS7K1AdKjbuMsmPmPGDLaKL38M5HYwqxW9RKW49n",
    ] {
        let response = node.get(&format!("/api/v1/documents/{segment}")).await;
        let body = assert_error(response, StatusCode::BAD_REQUEST, "invalid-uri-error").await;
        assert_eq!(first_error(&body)["detail"], "URI is not multihash");
        assert_eq!(first_error(&body)["title"], "Invalid Uri Error");
        let head = node
            .request(Method::HEAD, &format!("/api/v1/documents/{segment}"))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn unauthenticated_callers_get_401() {
    let node = TestNode::start().await;
    let uploaded = post_raw(&node, "/api/v1/documents?reader=SG", CERTIFICATE, None).await;
    assert_eq!(uploaded.status(), StatusCode::CREATED);
    let multihash = Multihash::of(CERTIFICATE);

    let upload = node
        .anonymous(Method::POST, "/api/v1/documents?reader=SG")
        .body(b"anonymous".to_vec())
        .send()
        .await
        .unwrap();
    assert_error(upload, StatusCode::UNAUTHORIZED, "generic-http-error").await;
    let legacy_upload = node
        .anonymous(Method::POST, "/jurisdictions/SG")
        .multipart(one_file(b"anonymous", "text/plain"))
        .send()
        .await
        .unwrap();
    assert_error(
        legacy_upload,
        StatusCode::UNAUTHORIZED,
        "generic-http-error",
    )
    .await;
    for path in [
        format!("/api/v1/documents/{multihash}"),
        format!("/{multihash}"),
        format!("/{multihash}?as_jurisdiction=AU"),
    ] {
        let read = node.anonymous(Method::GET, &path).send().await.unwrap();
        assert_error(read, StatusCode::UNAUTHORIZED, "generic-http-error").await;
    }
    let legacy_identity = node
        .anonymous(Method::GET, &format!("/{multihash}"))
        .header(header::AUTHORIZATION, r#"JWTBODY {"jurisdiction":"AU"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        legacy_identity.status(),
        StatusCode::UNAUTHORIZED,
        "JWTBODY is no credential unless insecure_legacy_document_auth is on"
    );
    assert!(!stored_on_disk(&node, &Multihash::of(b"anonymous")));
}

#[tokio::test]
async fn oversized_uploads_are_413_and_store_nothing() {
    let node = TestNode::builder().max_document_bytes(1024).start().await;
    let big = vec![b'x'; 4096];
    let multihash = Multihash::of(&big);

    let legacy = post_form(&node, "/jurisdictions/SG", one_file(&big, "text/plain")).await;
    let body = assert_error(
        legacy,
        StatusCode::PAYLOAD_TOO_LARGE,
        "document-too-large-error",
    )
    .await;
    assert_eq!(first_error(&body)["meta"]["limit"], 1024);

    let multipart = post_form(
        &node,
        "/api/v1/documents?reader=SG",
        one_file(&big, "text/plain"),
    )
    .await;
    assert_error(
        multipart,
        StatusCode::PAYLOAD_TOO_LARGE,
        "document-too-large-error",
    )
    .await;

    // Content-Length declared: refused before reading.
    let raw = post_raw(
        &node,
        "/api/v1/documents?reader=SG",
        &big,
        Some("text/plain"),
    )
    .await;
    assert_error(
        raw,
        StatusCode::PAYLOAD_TOO_LARGE,
        "document-too-large-error",
    )
    .await;

    // Chunked, no Content-Length: the object store stops it while streaming.
    let chunked = node
        .request(Method::POST, "/api/v1/documents?reader=SG")
        .body(streamed_body(4096))
        .send()
        .await
        .unwrap();
    assert_error(
        chunked,
        StatusCode::PAYLOAD_TOO_LARGE,
        "document-too-large-error",
    )
    .await;
    let chunked_multipart = post_form(
        &node,
        "/api/v1/documents?reader=SG",
        Form::new().part(
            "file",
            Part::stream(streamed_body(4096)).file_name("big.bin"),
        ),
    )
    .await;
    assert_error(
        chunked_multipart,
        StatusCode::PAYLOAD_TOO_LARGE,
        "document-too-large-error",
    )
    .await;

    assert!(!stored_on_disk(&node, &multihash));
    assert!(!stored_on_disk(&node, &pattern_multihash(4096)));
    assert!(node.storage().readers(&multihash).await.unwrap().is_empty());

    // At the limit: accepted.
    let exact = vec![b'y'; 1024];
    let accepted = post_raw(&node, "/api/v1/documents?reader=SG", &exact, None).await;
    assert_eq!(accepted.status(), StatusCode::CREATED);
    assert_eq!(json(accepted).await["size"], 1024);
}

#[tokio::test]
async fn a_20_mib_upload_streams_through() {
    const SIZE: usize = 20 * 1024 * 1024;
    let node = TestNode::start().await;
    let expected = pattern_multihash(SIZE);

    let response = node
        .request(Method::POST, "/api/v1/documents?reader=SG")
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(streamed_body(SIZE))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body = json(response).await;
    assert_eq!(body["multihash"], expected.to_string());
    assert_eq!(body["size"], SIZE as u64);

    let read = node.get(&format!("/api/v1/documents/{expected}")).await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(
        read.headers()[header::CONTENT_LENGTH],
        SIZE.to_string().as_str()
    );
    assert_eq!(hash_body(read).await, (SIZE as u64, expected));

    // The same bytes as one streamed multipart file part, on the legacy path.
    let part = Part::stream_with_length(streamed_body(SIZE), SIZE as u64)
        .file_name("big.bin")
        .mime_str("application/octet-stream")
        .unwrap();
    let legacy = post_form(&node, "/jurisdictions/NZ", Form::new().part("file", part)).await;
    assert_eq!(legacy.status(), StatusCode::OK);
    assert_eq!(
        json(legacy).await,
        json!({"multihash": expected.to_string()})
    );
    let legacy_read = node.get(&format!("/{expected}")).await;
    assert_eq!(legacy_read.status(), StatusCode::OK);
    assert_eq!(hash_body(legacy_read).await, (SIZE as u64, expected));
}

// ---------------------------------------------------------------------------------------
// Legacy paths (REFERENCE-WIRE §2.2)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn legacy_upload_and_download() {
    let node = TestNode::start().await;
    let multihash = Multihash::of(CERTIFICATE);
    let response = post_form(
        &node,
        "/jurisdictions/SG",
        one_file(CERTIFICATE, "application/pdf"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        json(response).await,
        json!({"multihash": multihash.to_string()})
    );
    let alias = post_form(
        &node,
        "/countries/NZ",
        one_file(CERTIFICATE, "application/pdf"),
    )
    .await;
    assert_eq!(alias.status(), StatusCode::OK);
    assert_eq!(
        json(alias).await,
        json!({"multihash": multihash.to_string()})
    );
    assert_eq!(
        node.storage().readers(&multihash).await.unwrap(),
        vec![jurisdiction("AU"), jurisdiction("NZ"), jurisdiction("SG")]
    );

    let read = node.get(&format!("/{multihash}")).await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(read.headers()[header::CONTENT_TYPE], "application/pdf");
    assert_eq!(read.bytes().await.unwrap().as_ref(), CERTIFICATE);
    let current = node.get(&format!("/api/v1/documents/{multihash}")).await;
    assert_eq!(current.bytes().await.unwrap().as_ref(), CERTIFICATE);

    let unknown = Multihash::of(b"never uploaded");
    let missing = node.get(&format!("/{unknown}")).await;
    let body = assert_error(missing, StatusCode::NOT_FOUND, "generic-http-error").await;
    assert_eq!(
        first_error(&body)["detail"],
        format!("Document with uri:{unknown} for jurisdiction:AU not found")
    );
    assert_eq!(
        first_error(&body)["source"],
        json!([{"uri": unknown.to_string(), "jurisdiction": "AU"}])
    );

    // Other one-segment paths are unknown paths, and the static routes still answer.
    let other = node.get("/not-a-multihash").await;
    let body = assert_error(other, StatusCode::NOT_FOUND, "generic-http-error").await;
    assert_eq!(first_error(&body).get("detail"), None);
    let delete = node
        .request(Method::DELETE, &format!("/{multihash}"))
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), StatusCode::METHOD_NOT_ALLOWED);
    let delete_other = node
        .request(Method::DELETE, "/not-a-multihash")
        .send()
        .await
        .unwrap();
    assert_eq!(delete_other.status(), StatusCode::NOT_FOUND);
    let health = node
        .anonymous(Method::GET, "/healthz")
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let messages = node.get("/api/v1/messages").await;
    assert_eq!(messages.status(), StatusCode::OK);
}

#[tokio::test]
async fn legacy_upload_errors_match_the_reference() {
    let node = TestNode::start().await;

    // 415 first, even before the jurisdiction is checked.
    for path in ["/jurisdictions/SG", "/jurisdictions/XX"] {
        let response = node
            .request(Method::POST, path)
            .json(&json!({"not": "multipart"}))
            .send()
            .await
            .unwrap();
        let body = assert_error(
            response,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "generic-http-error",
        )
        .await;
        let error = first_error(&body);
        assert_eq!(error["title"], "Unsupported Media Type");
        assert_eq!(
            error["detail"],
            "Unsupported mimetype. Value: \"application/json\". Value must be one of ['multipart/form-data']."
        );
        assert_eq!(
            error["source"],
            json!({"value": "application/json", "include": ["multipart/form-data"], "exclude": []})
        );
    }

    for path in ["/jurisdictions/XX", "/countries/sg", "/jurisdictions/AUS"] {
        let response = post_form(&node, path, one_file(CERTIFICATE, "application/pdf")).await;
        let body = assert_error(
            response,
            StatusCode::BAD_REQUEST,
            "bad-jurisdiction-name-error",
        )
        .await;
        let error = first_error(&body);
        assert_eq!(error["title"], "Bad Jurisdiction Name Error");
        assert_eq!(
            error["detail"],
            "Received invalid/unknown jurisdiction name"
        );
        assert!(error["source"][0].is_string(), "{body}");
    }

    let no_file = post_form(
        &node,
        "/jurisdictions/SG",
        Form::new().text("document", "a text field is not a file"),
    )
    .await;
    let body = assert_error(no_file, StatusCode::BAD_REQUEST, "no-input-file-error").await;
    assert_eq!(first_error(&body)["detail"], "Received no input file");
    let empty = post_form(&node, "/jurisdictions/SG", Form::new()).await;
    assert_eq!(empty.status(), StatusCode::BAD_REQUEST);

    let second = b"a second file".as_slice();
    for (files, form) in [
        (
            2,
            Form::new()
                .part("a", file_part(CERTIFICATE, "a.pdf", "application/pdf"))
                .part("b", file_part(second, "b.txt", "text/plain")),
        ),
        (
            3,
            Form::new()
                .part("a", file_part(CERTIFICATE, "a.pdf", "application/pdf"))
                .text("note", "between")
                .part("a", file_part(second, "b.txt", "text/plain"))
                .part("c", file_part(b"third", "c.txt", "text/plain")),
        ),
    ] {
        let response = post_form(&node, "/jurisdictions/SG", form).await;
        let body = assert_error(response, StatusCode::BAD_REQUEST, "too-many-files-error").await;
        assert_eq!(first_error(&body)["source"], json!([{"files": files}]));
    }
    // Nothing was stored or shared.
    for bytes in [CERTIFICATE, second] {
        let multihash = Multihash::of(bytes);
        assert!(!stored_on_disk(&node, &multihash), "{multihash} stored");
        assert!(node.storage().readers(&multihash).await.unwrap().is_empty());
        let read = node.get(&format!("/{multihash}")).await;
        assert_eq!(read.status(), StatusCode::NOT_FOUND);
    }

    // A malformed multipart body is a 400, not a 500.
    let broken = node
        .request(Method::POST, "/jurisdictions/SG")
        .header(header::CONTENT_TYPE, "multipart/form-data; boundary=xyz")
        .body(
            "--xyz\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a\"\r\n\r\ntruncated",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(broken.status(), StatusCode::BAD_REQUEST);
    let no_boundary = node
        .request(Method::POST, "/jurisdictions/SG")
        .header(header::CONTENT_TYPE, "multipart/form-data")
        .body("whatever")
        .send()
        .await
        .unwrap();
    assert_eq!(no_boundary.status(), StatusCode::BAD_REQUEST);
}

// ---------------------------------------------------------------------------------------
// ACL
// ---------------------------------------------------------------------------------------

/// The dev token of a test node is of the node's jurisdiction; restarting the same data
/// directory as an SG node gives a caller of SG against the same storage.
#[tokio::test]
async fn jurisdictions_not_on_the_acl_never_get_the_bytes() {
    let au = TestNode::start().await;
    let for_sg = b"shared with SG".as_slice();
    let for_nz = b"shared with NZ only".as_slice();
    for (bytes, reader) in [(for_sg, "SG"), (for_nz, "NZ")] {
        let response = post_raw(
            &au,
            &format!("/api/v1/documents?reader={reader}"),
            bytes,
            Some("text/plain"),
        )
        .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let (data_dir, database) = au.stop().await;
    let sg = TestNode::builder()
        .jurisdiction("SG")
        .data_dir(data_dir)
        .database(database)
        .start()
        .await;

    let shared = Multihash::of(for_sg);
    let read = sg.get(&format!("/api/v1/documents/{shared}")).await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(read.bytes().await.unwrap().as_ref(), for_sg);
    let legacy = sg.get(&format!("/{shared}")).await;
    assert_eq!(legacy.bytes().await.unwrap().as_ref(), for_sg);

    let not_shared = Multihash::of(for_nz);
    assert!(stored_on_disk(&sg, &not_shared), "the bytes are there");
    let denied = sg.get(&format!("/api/v1/documents/{not_shared}")).await;
    let mut denied = assert_error(denied, StatusCode::NOT_FOUND, "generic-http-error").await;
    let absent = sg
        .get(&format!("/api/v1/documents/{}", Multihash::of(b"absent")))
        .await;
    let mut absent = json(absent).await;
    for body in [&mut denied, &mut absent] {
        body["errors"][0].as_object_mut().unwrap().remove("source");
    }
    assert_eq!(
        denied, absent,
        "a denied document looks exactly like a missing one"
    );
    let head = sg
        .request(Method::HEAD, &format!("/api/v1/documents/{not_shared}"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::NOT_FOUND);
    let revalidate = sg
        .request(Method::GET, &format!("/api/v1/documents/{not_shared}"))
        .header(header::IF_NONE_MATCH, "*")
        .send()
        .await
        .unwrap();
    assert_eq!(revalidate.status(), StatusCode::NOT_FOUND);
    let legacy = sg.get(&format!("/{not_shared}")).await;
    let body = assert_error(legacy, StatusCode::NOT_FOUND, "generic-http-error").await;
    assert_eq!(
        first_error(&body)["detail"],
        format!("Document with uri:{not_shared} for jurisdiction:SG not found")
    );
    let storage = sg.storage();
    assert!(
        !storage
            .may_read(&not_shared, jurisdiction("SG"))
            .await
            .unwrap()
    );
    assert!(storage.may_read(&shared, jurisdiction("SG")).await.unwrap());
}

const SG_TOKEN: &str = "sg-test-token-0123456789";

#[tokio::test]
async fn foreign_callers_read_only_what_is_shared_with_them() {
    let node = TestNode::builder()
        .static_token(SG_TOKEN, "SG")
        .start()
        .await;
    let as_sg = |method: Method, path: &str| node.anonymous(method, path).bearer_auth(SG_TOKEN);

    // Only the node's own jurisdiction uploads.
    let upload = as_sg(Method::POST, "/api/v1/documents?reader=SG")
        .body(b"from SG".to_vec())
        .send()
        .await
        .unwrap();
    assert_error(upload, StatusCode::FORBIDDEN, "generic-http-error").await;
    let legacy_upload = as_sg(Method::POST, "/jurisdictions/SG")
        .multipart(one_file(b"from SG", "text/plain"))
        .send()
        .await
        .unwrap();
    assert_error(legacy_upload, StatusCode::FORBIDDEN, "generic-http-error").await;
    assert!(!stored_on_disk(&node, &Multihash::of(b"from SG")));

    let for_sg = b"shared with SG".as_slice();
    let for_nz = b"shared with NZ only".as_slice();
    for (bytes, reader) in [(for_sg, "SG"), (for_nz, "NZ")] {
        let response = post_raw(
            &node,
            &format!("/api/v1/documents?reader={reader}"),
            bytes,
            Some("text/plain"),
        )
        .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let shared = Multihash::of(for_sg);
    for path in [format!("/api/v1/documents/{shared}"), format!("/{shared}")] {
        let read = as_sg(Method::GET, &path).send().await.unwrap();
        assert_eq!(read.status(), StatusCode::OK, "{path}");
        assert_eq!(read.bytes().await.unwrap().as_ref(), for_sg);
    }
    let not_shared = Multihash::of(for_nz);
    for method in [Method::GET, Method::HEAD] {
        let read = as_sg(method, &format!("/api/v1/documents/{not_shared}"))
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), StatusCode::NOT_FOUND);
    }
    let legacy = as_sg(Method::GET, &format!("/{not_shared}"))
        .send()
        .await
        .unwrap();
    let body = assert_error(legacy, StatusCode::NOT_FOUND, "generic-http-error").await;
    assert_eq!(
        first_error(&body)["detail"],
        format!("Document with uri:{not_shared} for jurisdiction:SG not found")
    );
    // The node's own callers read both.
    let own = node.get(&format!("/api/v1/documents/{not_shared}")).await;
    assert_eq!(own.bytes().await.unwrap().as_ref(), for_nz);
}

#[tokio::test]
async fn legacy_identity_only_behind_the_insecure_flag() {
    let node = TestNode::builder()
        .insecure_legacy_document_auth(true)
        .start()
        .await;
    let uploaded = post_form(
        &node,
        "/jurisdictions/SG",
        one_file(CERTIFICATE, "text/plain"),
    )
    .await;
    assert_eq!(uploaded.status(), StatusCode::OK);
    let multihash = Multihash::of(CERTIFICATE);
    let path = format!("/{multihash}");
    let get = |query: &str, authorization: Option<&str>| {
        let mut request = node.anonymous(Method::GET, &format!("{path}{query}"));
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        request.send()
    };

    // The reference's identities, as the reference reads them.
    for (query, authorization) in [
        ("?as_jurisdiction=SG", None),
        (
            "",
            Some(r#"JWTBODY {"jurisdiction":"SG","party":"spider"}"#),
        ),
        (
            "?as_jurisdiction=NZ",
            Some(r#"JWTBODY {"jurisdiction":"SG"}"#),
        ),
        // Bearer values the node does not know are ignored, as by the reference.
        (
            "?as_jurisdiction=SG",
            Some("Bearer unknown-token-0123456789"),
        ),
        // A valid bearer token wins over the claim (AU, the uploader, is a reader).
        ("?as_jurisdiction=NZ", Some("Bearer igl-dev-test-token")),
    ] {
        let read = get(query, authorization).await.unwrap();
        assert_eq!(read.status(), StatusCode::OK, "{query} {authorization:?}");
        assert_eq!(read.bytes().await.unwrap().as_ref(), CERTIFICATE);
    }

    for (query, authorization) in [
        ("?as_jurisdiction=NZ", None),
        ("", Some(r#"JWTBODY {"jurisdiction":"NZ"}"#)),
    ] {
        let read = get(query, authorization).await.unwrap();
        let body = assert_error(read, StatusCode::NOT_FOUND, "generic-http-error").await;
        assert_eq!(
            first_error(&body)["source"],
            json!([{"uri": multihash.to_string(), "jurisdiction": "NZ"}])
        );
    }

    for (query, authorization) in [
        ("?as_jurisdiction=sg", None),
        ("?as_jurisdiction=XX", None),
        ("", Some(r#"JWTBODY {"jurisdiction":"EU"}"#)),
        // No identity at all: the reference's missing as_jurisdiction.
        ("", None),
        ("", Some(r#"JWTBODY {"party":"no jurisdiction"}"#)),
    ] {
        let read = get(query, authorization).await.unwrap();
        let body = assert_error(read, StatusCode::BAD_REQUEST, "bad-jurisdiction-name-error").await;
        assert_eq!(
            first_error(&body)["detail"],
            "Received invalid/unknown jurisdiction name"
        );
    }

    let unparsable = get("?as_jurisdiction=SG", Some("JWTBODY {not json"))
        .await
        .unwrap();
    assert_eq!(unparsable.status(), StatusCode::UNAUTHORIZED);
    let bad_bearer = get("", Some("Bearer unknown-token-0123456789"))
        .await
        .unwrap();
    assert_eq!(bad_bearer.status(), StatusCode::UNAUTHORIZED);

    // The current API never accepts the legacy identity.
    let current = node
        .anonymous(
            Method::GET,
            &format!("/api/v1/documents/{multihash}?as_jurisdiction=SG"),
        )
        .header(header::AUTHORIZATION, r#"JWTBODY {"jurisdiction":"SG"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(current.status(), StatusCode::UNAUTHORIZED);
}
