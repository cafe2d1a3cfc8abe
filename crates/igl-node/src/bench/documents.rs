//! `igl bench documents`: Document API upload and download throughput for small (100 KB)
//! and large (100 MB) documents, with the peak resident memory of the process.
//!
//! A node with the Document API only runs in this process (SQLite in a temporary directory,
//! or a fresh schema of `--database-url` for metadata and ACL; the documents themselves go
//! to the local object store either way). Each document is distinct (pseudo-random bytes
//! with a unique header), uploaded as a raw `application/octet-stream` body — streamed from
//! a temporary file above 8 MiB, so the client does not hold it in memory — then every
//! document is downloaded in full, hashed on the fly and checked against its multihash.
//! Transfers are sequential (one at a time); MB/s counts 10^6 bytes.
//!
//! Memory: before each phase the kernel's peak-RSS mark is reset (`/proc/self/clear_refs`),
//! and after it `VmHWM` is read from `/proc/self/status`. Client and server share the
//! process, so the figures include both (an upper bound on what the node needs).

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use igl_config::Component;
use igl_domain::Multihash;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::local::{LocalNode, TOKEN};
use super::report::Environment;

/// Arguments of `igl bench documents`.
#[derive(Debug, Args)]
pub struct DocumentsBenchArgs {
    /// Database of the in-process node (`postgres://…` uses a fresh schema, dropped after);
    /// default: SQLite in a temporary directory.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Size of the small documents, in bytes.
    #[arg(long, default_value_t = 100_000)]
    pub small_bytes: u64,
    /// How many small documents to upload and download.
    #[arg(long, default_value_t = 200)]
    pub small_count: u64,
    /// Size of the large documents, in bytes.
    #[arg(long, default_value_t = 100_000_000)]
    pub large_bytes: u64,
    /// How many large documents to upload and download.
    #[arg(long, default_value_t = 3)]
    pub large_count: u64,
    /// Also write the result as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// Bodies up to this size are sent from memory; larger ones are streamed from a file.
const IN_MEMORY_LIMIT: u64 = 8 * 1024 * 1024;

#[derive(Debug, Serialize)]
struct PhaseResult {
    operation: &'static str,
    document_bytes: u64,
    count: u64,
    seconds: f64,
    megabytes_per_second: f64,
    documents_per_second: f64,
    latency_ms_p50: f64,
    latency_ms_p99: f64,
    latency_ms_max: f64,
    rss_before_mib: f64,
    peak_rss_mib: f64,
    /// Whether the peak mark could be reset before the phase (else it is the process's
    /// peak so far).
    peak_reset: bool,
}

#[derive(Debug, Serialize)]
struct DocumentsResult {
    benchmark: &'static str,
    backend: String,
    object_store: &'static str,
    idle_rss_mib: f64,
    phases: Vec<PhaseResult>,
    environment: Environment,
}

/// A `kB` field of /proc/self/status, in MiB.
fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| {
            rest.trim_start_matches(':')
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Resets the peak-RSS mark of this process (Linux ≥ 4.0); false when not possible.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Deterministic pseudo-random bytes (xorshift64*), distinct per `seed`.
struct Filler(u64);

impl Filler {
    fn fill(&mut self, buffer: &mut [u8]) {
        for chunk in buffer.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let value = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&value[..chunk.len()]);
        }
    }
}

/// A document to upload: its bytes in memory or in a file, and its multihash.
enum Document {
    Memory(Vec<u8>),
    File(PathBuf),
}

fn make_document(
    directory: &std::path::Path,
    run: &str,
    index: u64,
    size: u64,
) -> anyhow::Result<(Document, String)> {
    let header = format!("igl bench documents {run} {size} {index}\n");
    let mut filler = Filler(0x9E37_79B9_7F4A_7C15 ^ (index + 1).wrapping_mul(size | 1));
    if size <= IN_MEMORY_LIMIT {
        let mut bytes = header.into_bytes();
        bytes.truncate(size as usize);
        let start = bytes.len();
        bytes.resize(size as usize, 0);
        filler.fill(&mut bytes[start..]);
        let multihash = Multihash::of(&bytes).to_string();
        return Ok((Document::Memory(bytes), multihash));
    }
    let mut hasher = Sha256::new();
    hasher.update(header.as_bytes());
    let mut remaining = size.saturating_sub(header.len() as u64);
    let mut chunk = vec![0u8; 1024 * 1024];
    let path = directory.join(format!("document-{index}.bin"));
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    file.write_all(header.as_bytes())?;
    while remaining > 0 {
        let take = remaining.min(chunk.len() as u64) as usize;
        filler.fill(&mut chunk[..take]);
        hasher.update(&chunk[..take]);
        file.write_all(&chunk[..take])?;
        remaining -= take as u64;
    }
    file.flush()?;
    let digest: [u8; 32] = hasher.finalize().into();
    Ok((
        Document::File(path),
        Multihash::from_digest(digest).to_string(),
    ))
}

fn pick(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn phase(
    operation: &'static str,
    size: u64,
    mut latencies: Vec<f64>,
    seconds: f64,
    rss_before_mib: f64,
    peak_reset: bool,
) -> PhaseResult {
    latencies.sort_by(f64::total_cmp);
    let count = latencies.len() as u64;
    PhaseResult {
        operation,
        document_bytes: size,
        count,
        seconds,
        megabytes_per_second: (size * count) as f64 / 1e6 / seconds.max(1e-9),
        documents_per_second: count as f64 / seconds.max(1e-9),
        latency_ms_p50: pick(&latencies, 0.5),
        latency_ms_p99: pick(&latencies, 0.99),
        latency_ms_max: pick(&latencies, 1.0),
        rss_before_mib,
        peak_rss_mib: status_mib("VmHWM"),
        peak_reset,
    }
}

/// Uploads then downloads `count` documents of `size` bytes.
async fn run_size(
    client: &reqwest::Client,
    base: &str,
    directory: &std::path::Path,
    run: &str,
    size: u64,
    count: u64,
) -> anyhow::Result<[PhaseResult; 2]> {
    let mut multihashes = Vec::new();
    let mut latencies = Vec::new();
    let mut busy = Duration::ZERO;
    let rss_before = status_mib("VmRSS");
    let reset = reset_peak_rss();
    for index in 0..count {
        // Made before the clock starts; large ones live in a file, not in memory.
        let (document, multihash) = make_document(directory, run, index, size)?;
        let body = match &document {
            Document::Memory(bytes) => reqwest::Body::from(bytes.clone()),
            Document::File(path) => reqwest::Body::from(tokio::fs::File::open(path).await?),
        };
        let started = Instant::now();
        let response = client
            .post(format!("{base}/api/v1/documents?reader=SG"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/octet-stream")
            .header("content-length", size)
            .body(body)
            .send()
            .await
            .context("uploading a document")?;
        let status = response.status();
        let answer: serde_json::Value = response.json().await.unwrap_or_default();
        let elapsed = started.elapsed();
        if status != reqwest::StatusCode::CREATED {
            bail!("upload of {size} bytes answered {status}: {answer}");
        }
        if answer["multihash"] != multihash.as_str() {
            bail!(
                "upload stored {} instead of {multihash}",
                answer["multihash"]
            );
        }
        busy += elapsed;
        latencies.push(elapsed.as_secs_f64() * 1000.0);
        if let Document::File(path) = document {
            std::fs::remove_file(path)?;
        }
        multihashes.push(multihash);
    }
    let upload = phase(
        "upload",
        size,
        std::mem::take(&mut latencies),
        busy.as_secs_f64(),
        rss_before,
        reset,
    );

    let rss_before = status_mib("VmRSS");
    let reset = reset_peak_rss();
    let mut busy = Duration::ZERO;
    for multihash in &multihashes {
        let started = Instant::now();
        let mut response = client
            .get(format!("{base}/api/v1/documents/{multihash}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .context("downloading a document")?;
        if response.status() != reqwest::StatusCode::OK {
            bail!("download of {multihash} answered {}", response.status());
        }
        let mut hasher = Sha256::new();
        let mut received = 0u64;
        while let Some(chunk) = response.chunk().await.context("reading a download")? {
            received += chunk.len() as u64;
            hasher.update(&chunk);
        }
        let elapsed = started.elapsed();
        let digest: [u8; 32] = hasher.finalize().into();
        if received != size || Multihash::from_digest(digest).to_string() != *multihash {
            bail!("download of {multihash} returned {received} bytes with another hash");
        }
        busy += elapsed;
        latencies.push(elapsed.as_secs_f64() * 1000.0);
    }
    let download = phase(
        "download",
        size,
        latencies,
        busy.as_secs_f64(),
        rss_before,
        reset,
    );
    Ok([upload, download])
}

/// Runs the benchmark.
pub async fn run_documents_bench(args: DocumentsBenchArgs) -> anyhow::Result<()> {
    let largest = args.small_bytes.max(args.large_bytes);
    let node = LocalNode::start(
        args.database_url.as_deref(),
        vec![Component::DocumentApi],
        |settings| settings.documents.max_bytes = settings.documents.max_bytes.max(largest),
    )
    .await?;
    let base = node.base_url()?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    let scratch = tempfile::tempdir()?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let idle_rss_mib = status_mib("VmRSS");
    let mut phases = Vec::new();
    for (size, count) in [
        (args.small_bytes, args.small_count),
        (args.large_bytes, args.large_count),
    ] {
        if count > 0 {
            phases.extend(run_size(&client, &base, scratch.path(), &run, size, count).await?);
        }
    }
    let result = DocumentsResult {
        benchmark: "documents",
        backend: node.backend.clone(),
        object_store: "local",
        idle_rss_mib,
        phases,
        environment: Environment::detect(),
    };
    println!(
        "documents benchmark: in-process node on {} (local object store), sequential, idle RSS {:.1} MiB, cores={} commit={}",
        result.backend,
        result.idle_rss_mib,
        result.environment.cores,
        result
            .environment
            .git_commit
            .as_deref()
            .unwrap_or("unknown")
    );
    println!(
        "{:>9} {:>12} {:>6} {:>8} {:>9} {:>8} {:>9} {:>9} {:>10} {:>10}",
        "operation",
        "bytes",
        "count",
        "seconds",
        "MB/s",
        "docs/s",
        "p50 ms",
        "p99 ms",
        "RSS MiB",
        "peak MiB"
    );
    for p in &result.phases {
        println!(
            "{:>9} {:>12} {:>6} {:>8.2} {:>9.1} {:>8.1} {:>9.1} {:>9.1} {:>10.1} {:>10.1}{}",
            p.operation,
            p.document_bytes,
            p.count,
            p.seconds,
            p.megabytes_per_second,
            p.documents_per_second,
            p.latency_ms_p50,
            p.latency_ms_p99,
            p.rss_before_mib,
            p.peak_rss_mib,
            if p.peak_reset { "" } else { "*" }
        );
    }
    if result.phases.iter().any(|p| !p.peak_reset) {
        println!("* peak RSS mark could not be reset: process peak so far");
    }
    if !result.environment.release_build {
        println!("note: debug build; use `cargo run --release` for meaningful figures");
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    node.stop().await?;
    Ok(())
}
