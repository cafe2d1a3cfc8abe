//! The job handlers of the node's pipeline, one module per worker.

mod http;
mod poll;
mod process;
mod retrieve;
mod route;
mod spider;

pub use http::{HttpClientError, HttpStatusError};
pub use poll::{CHANNEL_POLLS_TOTAL, PollChannel};
pub use process::ProcessMessage;
pub use retrieve::{RetrieveChannelMessage, channel_sender_ref};
pub use route::{
    CHANNEL_POSTS_TOTAL, DEFAULT_FIRST_POLL_DELAY, MESSAGES_REJECTED_TOTAL, RouteMessage,
};
pub use spider::{DocumentSource, FetchObject, SpiderConfig};
