//! The job handlers of the node's pipeline, one module per worker.

mod process;

pub use process::ProcessMessage;
