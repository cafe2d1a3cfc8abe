//! `igl bench …`: benchmarks that print figures (never assertions). See docs/benchmarks.md.

mod cluster;
mod documents;
mod e2e;
mod fanout;
mod ingest;
mod local;
mod queue;
mod report;

pub use cluster::{ClusterBenchArgs, run_cluster_bench};
pub use documents::{DocumentsBenchArgs, run_documents_bench};
pub use e2e::{E2eBenchArgs, run_e2e_bench};
pub use fanout::{FanoutBenchArgs, run_fanout_bench};
pub use ingest::{IngestBenchArgs, run_ingest_bench};
pub use queue::{QueueBenchArgs, run_queue_bench};
