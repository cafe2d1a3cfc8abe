//! The worker runtime of the IGL node: the one generic loop with which every worker (process,
//! router, channel poller, spreader, deliverer, …) consumes its [`igl_core::JobQueue`].
//!
//! A worker is a [`JobHandler`] (what to do with one job) plus a [`WorkerConfig`] (which
//! queue, how many jobs at once, leases, the [`RetryPolicy`]). [`run_worker`] claims jobs in
//! batches, handles them concurrently, acks the successful ones in one batched call, retries
//! failures with exponential backoff and jitter, dead-letters what keeps failing (ARCHITECTURE
//! §6, invariants 2, 3 and 8), and stops between batches when its `CancellationToken` is
//! cancelled. [`drain`] runs the same steps until the queue has nothing due, for tests.
//!
//! # Layout
//!
//! - `handler`: [`JobHandler`], [`Handled`], [`JobError`];
//! - `retry`: [`RetryPolicy`] and its backoff;
//! - `config`: [`WorkerConfig`];
//! - `runtime`: [`run_worker`], [`drain`], [`DrainReport`];
//! - `supervisor`: [`WorkerSet`], which runs several workers for the node binary;
//! - `subscriber`: [`ChannelSubscriptions`], the long-running task that keeps the node
//!   subscribed to its channels (not a job handler);
//! - [`metrics`]: the names of the metrics every worker reports;
//! - `error`: [`WorkerError`].

mod config;
mod error;
mod handler;
pub mod handlers;
pub mod metrics;
mod retry;
mod runtime;
mod subscriber;
mod supervisor;

pub use config::WorkerConfig;
pub use error::WorkerError;
pub use handler::{Handled, JobError, JobHandler};
pub use retry::RetryPolicy;
pub use runtime::{DrainReport, drain, run_worker};
pub use subscriber::{ChannelSubscriptions, SubscriberConfig, SubscriptionRequest};
pub use supervisor::WorkerSet;
