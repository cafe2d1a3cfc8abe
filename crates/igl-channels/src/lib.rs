//! Channels: G2G links between jurisdictions (ARCHITECTURE §7).
//!
//! - [`client`]: how a node talks to any channel endpoint through the Channel API
//!   (REFERENCE-WIRE §5.1), tolerant of the reference dialects.
//! - [`endpoint`]: our own channel endpoint serving the Channel API over a shared-database
//!   medium (REFERENCE-WIRE §5.2), runnable inside a node process or as `igl channel`.

pub mod client;
pub mod endpoint;
