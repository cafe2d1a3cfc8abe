//! `igl bench …`: benchmarks that print figures (never assertions). See docs/benchmarks.md.

mod ingest;
mod queue;
mod report;

pub use ingest::{IngestBenchArgs, run_ingest_bench};
pub use queue::{QueueBenchArgs, run_queue_bench};
