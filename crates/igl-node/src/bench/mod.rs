//! `igl bench …`: benchmarks that print figures (never assertions). See docs/benchmarks.md.

mod queue;
mod report;

pub use queue::{QueueBenchArgs, run_queue_bench};
