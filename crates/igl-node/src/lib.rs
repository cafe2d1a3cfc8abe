//! The IGL node as a library: the composition root that turns [`igl_config::Settings`]
//! into running components (HTTP APIs and workers) on concrete backends. The `igl` binary
//! and the integration tests both start nodes through [`start`], and channel endpoint
//! processes through [`channel::start_channel`].

pub mod channel;
pub mod cluster;
pub mod network;
mod node;

pub use node::{
    Backends, NodeOptions, Outbox, PIPELINE_QUEUES, RunningNode, open_backends, s3_options, start,
};
