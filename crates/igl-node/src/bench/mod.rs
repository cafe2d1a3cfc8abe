//! `igl bench …`: benchmarks that print figures (never assertions). See docs/benchmarks.md.

mod e2e;
mod fanout;
mod ingest;
mod queue;
mod report;

pub use e2e::{E2eBenchArgs, run_e2e_bench};
pub use fanout::{FanoutBenchArgs, run_fanout_bench};
pub use ingest::{IngestBenchArgs, run_ingest_bench};
pub use queue::{QueueBenchArgs, run_queue_bench};
