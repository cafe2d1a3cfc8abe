//! Conformance suite of the [`ObjectStore`] port.
//!
//! Every case is a public async function taking a fresh, empty store and panicking when the
//! store breaks the contract. [`object_store_conformance!`](crate::object_store_conformance)
//! turns the whole suite into one `#[tokio::test]` per case for an adapter factory:
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use igl_core::ObjectStore;
//! use igl_store::objects::ObjectLake;
//!
//! async fn local_lake() -> (Arc<dyn ObjectStore>, tempfile::TempDir) {
//!     let dir = tempfile::tempdir().expect("failed to create a temporary directory");
//!     let lake = ObjectLake::local(dir.path()).expect("failed to open the object lake");
//!     (Arc::new(lake), dir)
//! }
//!
//! igl_testkit::object_store_conformance!(local_filesystem, local_lake);
//! # fn main() {}
//! ```

use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, stream};
use igl_core::{ByteStream, ObjectInfo, ObjectStore, ObjectStoreError};
use igl_domain::{Multihash, MultihashHasher};

/// A generous limit for cases that are not about the limit.
const NO_LIMIT: u64 = 1 << 40;
/// Content type used by most cases.
const PDF: &str = "application/pdf";
/// Size of the large document case.
const LARGE_DOCUMENT_BYTES: u64 = 20 * 1024 * 1024;
/// Chunk sizes of the large document, cycled; odd sizes cross every part boundary.
const LARGE_DOCUMENT_CHUNKS: [usize; 5] = [64 * 1024, 1, 333_333, 7, 1024 * 1024 + 5];
/// How long a put of an endless body may take to be rejected.
const ENDLESS_BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// Generates one `#[tokio::test]` per conformance case of the [`ObjectStore`] port, in a
/// module named `$suite`.
///
/// `$make` is called once per test and must return a future of
/// `(Arc<dyn ObjectStore>, guard)`: a fresh, empty store and whatever must live as long as
/// the test (a `tempfile::TempDir`, a container, or `()`). It is resolved from the module
/// that invokes the macro. Attributes after it are put on every test, e.g.
/// `#[cfg_attr(igl_skip_s3, ignore = "set IGL_TEST_S3_ENDPOINT to run")]` for a backend
/// that is not always available. The invoking crate needs `tokio` with the `macros` and
/// `rt-multi-thread` features.
#[macro_export]
macro_rules! object_store_conformance {
    ($suite:ident, $make:expr $(, #[$attr:meta])* $(,)?) => {
        mod $suite {
            #[allow(unused_imports)]
            use super::*;

            $crate::object_store_conformance!(
                @cases [$(#[$attr])*] $make;
                put_then_get_round_trips,
                multihash_is_sha256_of_the_bytes,
                put_with_expected_hash_succeeds,
                put_with_wrong_expected_hash_stores_nothing,
                failed_put_leaves_existing_document_untouched,
                put_over_the_limit_stores_nothing,
                put_exactly_at_the_limit_succeeds,
                endless_body_is_cut_off_at_the_limit,
                failing_body_stores_nothing,
                failing_large_body_stores_nothing,
                put_of_same_bytes_is_idempotent,
                put_of_same_large_bytes_is_idempotent,
                empty_document_round_trips,
                large_multi_chunk_document_streams_back,
                absent_document_is_none,
                concurrent_puts_of_same_bytes_store_one_document,
                ping_succeeds,
            );
        }
    };
    (@cases $attrs:tt $make:expr; $($case:ident),+ $(,)?) => {
        $(
            $crate::object_store_conformance!(@case $attrs $make; $case);
        )+
    };
    (@case [$(#[$attr:meta])*] $make:expr; $case:ident) => {
        $(#[$attr])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $case() {
            let (store, _guard) = ($make)().await;
            $crate::conformance::objects::$case(::std::convert::AsRef::as_ref(&store)).await;
        }
    };
}

/// A put stores the bytes, content type and size, and `head` and `get` return them.
pub async fn put_then_get_round_trips(store: &dyn ObjectStore) {
    let document = b"%PDF-1.7 certificate of origin".to_vec();
    let info = put_bytes(store, &document, PDF).await;
    assert_eq!(info.size, document.len() as u64);
    assert_eq!(info.content_type, PDF);

    let head = store.head(&info.multihash).await.expect("head failed");
    assert_eq!(
        head.as_ref(),
        Some(&info),
        "head differs from what put returned"
    );

    let (got_info, stored) = get_bytes(store, &info.multihash).await;
    assert_eq!(got_info, info, "get differs from what put returned");
    assert_eq!(stored, document, "stored bytes differ");
}

/// The multihash of a stored document is the sha2-256 multihash of its bytes.
pub async fn multihash_is_sha256_of_the_bytes(store: &dyn ObjectStore) {
    let document = b"hello world".to_vec();
    let info = put_bytes(store, &document, "text/plain").await;
    assert_eq!(info.multihash, Multihash::of(&document));
    assert_eq!(
        info.multihash.to_base58(),
        "QmaozNR7DZHQK1ZcU9p7QdrshMvXqWK6gpu5rmrkPdT3L4"
    );
}

/// A put whose bytes match the expected multihash succeeds.
pub async fn put_with_expected_hash_succeeds(store: &dyn ObjectStore) {
    let document = b"expected content".to_vec();
    let expected = Multihash::of(&document);
    let info = store
        .put(body_of(&document), PDF, Some(&expected), NO_LIMIT)
        .await
        .expect("put with the right expected hash failed");
    assert_eq!(info.multihash, expected);
    assert!(store.head(&expected).await.expect("head failed").is_some());
}

/// A put whose bytes do not match the expected multihash fails with `HashMismatch` naming
/// both hashes, and stores nothing under either.
pub async fn put_with_wrong_expected_hash_stores_nothing(store: &dyn ObjectStore) {
    let document = b"actual content".to_vec();
    let actual = Multihash::of(&document);
    let wrong = Multihash::of(b"other content");
    let result = store
        .put(body_of(&document), PDF, Some(&wrong), NO_LIMIT)
        .await;
    match result {
        Err(ObjectStoreError::HashMismatch {
            expected,
            actual: reported,
        }) => {
            assert_eq!(
                expected, wrong,
                "HashMismatch names the wrong expected hash"
            );
            assert_eq!(reported, actual, "HashMismatch names the wrong actual hash");
        }
        other => panic!("expected HashMismatch, got {other:?}"),
    }
    assert_absent(store, &actual).await;
    assert_absent(store, &wrong).await;
}

/// A failed put of bytes that are already stored leaves the stored document as it was.
pub async fn failed_put_leaves_existing_document_untouched(store: &dyn ObjectStore) {
    let document = b"stored before".to_vec();
    let info = put_bytes(store, &document, PDF).await;
    let wrong = Multihash::of(b"something else");
    let result = store
        .put(body_of(&document), "text/plain", Some(&wrong), NO_LIMIT)
        .await;
    assert!(
        matches!(result, Err(ObjectStoreError::HashMismatch { .. })),
        "expected HashMismatch, got {result:?}"
    );
    let result = store.put(body_of(&document), "text/plain", None, 3).await;
    assert!(
        matches!(result, Err(ObjectStoreError::TooLarge { limit: 3 })),
        "expected TooLarge, got {result:?}"
    );
    let (got_info, stored) = get_bytes(store, &info.multihash).await;
    assert_eq!(got_info, info);
    assert_eq!(stored, document);
}

/// A body longer than `max_bytes` fails with `TooLarge` and stores nothing.
pub async fn put_over_the_limit_stores_nothing(store: &dyn ObjectStore) {
    let document = vec![42u8; 1001];
    let result = store.put(body_of(&document), PDF, None, 1000).await;
    assert!(
        matches!(result, Err(ObjectStoreError::TooLarge { limit: 1000 })),
        "expected TooLarge, got {result:?}"
    );
    assert_absent(store, &Multihash::of(&document)).await;
    // The first 1000 bytes must not have been stored either.
    assert_absent(store, &Multihash::of(&document[..1000])).await;
}

/// A body of exactly `max_bytes` is accepted.
pub async fn put_exactly_at_the_limit_succeeds(store: &dyn ObjectStore) {
    let document = vec![42u8; 1000];
    let info = store
        .put(chunked_body(&document, 7), PDF, None, 1000)
        .await
        .expect("put of exactly max_bytes failed");
    assert_eq!(info.size, 1000);
    assert_eq!(info.multihash, Multihash::of(&document));
}

/// The limit is enforced while streaming: a body that never ends is rejected once it
/// passes the limit, instead of being read to its end.
pub async fn endless_body_is_cut_off_at_the_limit(store: &dyn ObjectStore) {
    static CHUNK: [u8; 64 * 1024] = [7u8; 64 * 1024];
    let endless: ByteStream = stream::repeat_with(|| Ok(Bytes::from_static(&CHUNK))).boxed();
    let limit = 1024 * 1024;
    let result = tokio::time::timeout(ENDLESS_BODY_TIMEOUT, store.put(endless, PDF, None, limit))
        .await
        .expect("put of an endless body did not stop at the limit");
    assert!(
        matches!(result, Err(ObjectStoreError::TooLarge { limit: reported }) if reported == limit),
        "expected TooLarge, got {result:?}"
    );
}

/// A body that fails midway fails the put with `Body` and stores nothing.
pub async fn failing_body_stores_nothing(store: &dyn ObjectStore) {
    let first = Bytes::from(vec![1u8; 100_000]);
    let second = Bytes::from(vec![2u8; 100_000]);
    let mut received = first.to_vec();
    received.extend_from_slice(&second);
    let body: ByteStream = stream::iter([
        Ok(first),
        Ok(second),
        Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "client went away",
        )),
    ])
    .boxed();
    let result = store.put(body, PDF, None, NO_LIMIT).await;
    match result {
        Err(ObjectStoreError::Body(error)) => {
            assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
        }
        other => panic!("expected Body, got {other:?}"),
    }
    assert_absent(store, &Multihash::of(&received)).await;
}

/// A large body (several upload parts) that fails after its first megabytes fails the put
/// with `Body` and stores nothing.
pub async fn failing_large_body_stores_nothing(store: &dyn ObjectStore) {
    let mut sent = MultihashHasher::new();
    let chunks: Vec<Result<Bytes, io::Error>> = (0..12u8)
        .map(|index| {
            let chunk = Bytes::from(vec![index; 1024 * 1024]);
            sent.update(&chunk);
            Ok(chunk)
        })
        .chain([Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "upload cut short",
        ))])
        .collect();
    let result = store
        .put(stream::iter(chunks).boxed(), PDF, None, NO_LIMIT)
        .await;
    match result {
        Err(ObjectStoreError::Body(error)) => {
            assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        }
        other => panic!("expected Body, got {other:?}"),
    }
    assert_absent(store, &sent.finish()).await;
}

/// Putting the same bytes again succeeds with the same multihash and size and leaves one
/// readable document, whatever content type the second put declares.
pub async fn put_of_same_bytes_is_idempotent(store: &dyn ObjectStore) {
    let document = b"the same document twice".to_vec();
    let first = put_bytes(store, &document, PDF).await;
    let second = put_bytes(store, &document, PDF).await;
    assert_eq!(
        second, first,
        "a second identical put returned different info"
    );
    let third = put_bytes(store, &document, "application/octet-stream").await;
    assert_eq!(third.multihash, first.multihash);
    assert_eq!(third.size, first.size);

    let (_, stored) = get_bytes(store, &first.multihash).await;
    assert_eq!(stored, document);
}

/// Putting the same large document (several upload parts) twice succeeds both times with
/// the same info, keeps the first content type, and leaves one readable document.
pub async fn put_of_same_large_bytes_is_idempotent(store: &dyn ObjectStore) {
    let document: Vec<u8> = (0..11 * 1024 * 1024 + 3)
        .map(|index: u32| (index.wrapping_mul(31) % 253) as u8)
        .collect();
    let first = store
        .put(chunked_body(&document, 256 * 1024), PDF, None, NO_LIMIT)
        .await
        .expect("first put of a large document failed");
    let second = store
        .put(
            chunked_body(&document, 1024 * 1024),
            "application/octet-stream",
            Some(&first.multihash),
            NO_LIMIT,
        )
        .await
        .expect("second put of a large document failed");
    assert_eq!(second, first, "a second put returned different info");
    let (info, stored) = get_bytes(store, &first.multihash).await;
    assert_eq!(info, first);
    assert!(stored == document, "stored bytes differ");
}

/// An empty document is a valid document.
pub async fn empty_document_round_trips(store: &dyn ObjectStore) {
    let body: ByteStream = stream::empty().boxed();
    let info = store
        .put(body, "text/plain", None, 0)
        .await
        .expect("put of an empty document failed");
    assert_eq!(info.size, 0);
    assert_eq!(info.multihash, Multihash::of(b""));
    let (got_info, stored) = get_bytes(store, &info.multihash).await;
    assert_eq!(got_info, info);
    assert!(stored.is_empty());
}

/// A 20 MiB document sent in many odd-sized chunks is stored whole and streams back
/// equal (checked by hashing both streams; neither side is buffered).
pub async fn large_multi_chunk_document_streams_back(store: &dyn ObjectStore) {
    let mut expected_hasher = MultihashHasher::new();
    let mut generated = large_document();
    while let Some(chunk) = generated.next().await {
        expected_hasher.update(&chunk.expect("generated chunks never fail"));
    }
    let expected = expected_hasher.finish();

    let info = store
        .put(large_document(), PDF, Some(&expected), LARGE_DOCUMENT_BYTES)
        .await
        .expect("put of a large document failed");
    assert_eq!(info.size, LARGE_DOCUMENT_BYTES);
    assert_eq!(info.multihash, expected);

    let (got_info, mut stream) = store
        .get(&expected)
        .await
        .expect("get failed")
        .expect("large document is missing");
    assert_eq!(got_info, info);
    let mut returned_hasher = MultihashHasher::new();
    while let Some(chunk) = stream.next().await {
        returned_hasher.update(&chunk.expect("reading the stored document failed"));
    }
    assert_eq!(returned_hasher.bytes_seen(), LARGE_DOCUMENT_BYTES);
    assert_eq!(
        returned_hasher.finish(),
        expected,
        "streamed back different bytes"
    );
}

/// `head` and `get` of a document that was never stored return `None`.
pub async fn absent_document_is_none(store: &dyn ObjectStore) {
    assert_absent(store, &Multihash::of(b"never stored")).await;
}

/// Several concurrent puts of the same bytes all succeed and leave one readable document.
pub async fn concurrent_puts_of_same_bytes_store_one_document(store: &dyn ObjectStore) {
    const PUTS: usize = 8;
    let document: Vec<u8> = (0..3 * 1024 * 1024 + 17)
        .map(|index: u32| (index % 251) as u8)
        .collect();
    let puts =
        (0..PUTS).map(|_| store.put(chunked_body(&document, 64 * 1024), PDF, None, NO_LIMIT));
    let results = futures::future::join_all(puts).await;
    let expected = Multihash::of(&document);
    for result in results {
        let info = result.expect("a concurrent put failed");
        assert_eq!(info.multihash, expected);
        assert_eq!(info.size, document.len() as u64);
    }
    let (info, stored) = get_bytes(store, &expected).await;
    assert_eq!(info.content_type, PDF);
    assert!(
        stored == document,
        "stored bytes differ after concurrent puts"
    );
}

/// A working store answers `ping`.
pub async fn ping_succeeds(store: &dyn ObjectStore) {
    store.ping().await.expect("ping failed");
}

/// Stores `document` in one chunk without an expected hash or limit.
async fn put_bytes(store: &dyn ObjectStore, document: &[u8], content_type: &str) -> ObjectInfo {
    store
        .put(body_of(document), content_type, None, NO_LIMIT)
        .await
        .expect("put failed")
}

/// Reads a stored document whole (for small documents only).
async fn get_bytes(store: &dyn ObjectStore, multihash: &Multihash) -> (ObjectInfo, Vec<u8>) {
    let (info, mut stream) = store
        .get(multihash)
        .await
        .expect("get failed")
        .expect("stored document is missing");
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.expect("reading the stored document failed"));
    }
    (info, bytes)
}

/// Asserts that neither `head` nor `get` finds `multihash`.
async fn assert_absent(store: &dyn ObjectStore, multihash: &Multihash) {
    let head = store.head(multihash).await.expect("head failed");
    assert!(head.is_none(), "head found {multihash}: {head:?}");
    let got = store.get(multihash).await.expect("get failed");
    assert!(got.is_none(), "get found {multihash}");
}

/// `document` as a one-chunk body.
fn body_of(document: &[u8]) -> ByteStream {
    stream::once(std::future::ready(Ok(Bytes::copy_from_slice(document)))).boxed()
}

/// `document` as a body of `chunk_size`-byte chunks.
fn chunked_body(document: &[u8], chunk_size: usize) -> ByteStream {
    let chunks: Vec<Result<Bytes, io::Error>> = document
        .chunks(chunk_size)
        .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
        .collect();
    stream::iter(chunks).boxed()
}

/// The deterministic [`LARGE_DOCUMENT_BYTES`] document, generated chunk by chunk.
fn large_document() -> ByteStream {
    stream::unfold((0u64, 0usize), |(offset, chunk_index)| async move {
        if offset >= LARGE_DOCUMENT_BYTES {
            return None;
        }
        let wanted = LARGE_DOCUMENT_CHUNKS[chunk_index % LARGE_DOCUMENT_CHUNKS.len()] as u64;
        let len = wanted.min(LARGE_DOCUMENT_BYTES - offset);
        let chunk: Vec<u8> = (offset..offset + len)
            .map(|position| (position.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        Some((Ok(Bytes::from(chunk)), (offset + len, chunk_index + 1)))
    })
    .boxed()
}
