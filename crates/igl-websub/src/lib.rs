//! The node's WebSub hub (W3C WebSub, hub side; ARCHITECTURE §8).
//!
//! - [`policy`]: which callback URLs are acceptable (SSRF guard) and topic/lease rules;
//! - [`signature`]: `X-Hub-Signature: sha256=<hex HMAC>` over the raw body;
//! - [`VerifyIntent`], [`Spread`], [`Deliver`]: the job handlers of the `websub-verify`,
//!   `spread` and `deliver` queues.
//!
//! Flow: the Subscriptions API validates a request and queues its intent verification
//! (202); [`VerifyIntent`] GETs the callback with a single-use challenge and only an echoed
//! challenge activates (or removes) the subscription. Every event appended to the event log
//! queues a `spread.v1` job in the same transaction; [`Spread`] looks up the matching
//! subscriptions through their topic-key index and queues `deliver-batch.v1` jobs (one per
//! event and group of subscriptions); [`Deliver`] POSTs the event to all of them at once,
//! signed when the subscription has a secret, and hands every failed or slow delivery to
//! its own `deliver.v1` job on the `redeliver` queue, retried with backoff (honouring
//! `Retry-After`) until the retry policy sends it to the dead letters.

mod deliver;
pub mod policy;
pub mod signature;
mod spread;
mod verify;

pub use deliver::{BATCH_SUBSCRIPTIONS, Deliver, DeliverBatchJob, DeliverJob, EVENT_ID_HEADER};
pub use spread::Spread;
pub use verify::{VerifyIntent, VerifyJob};

/// How the hub identifies itself and treats subscribers.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The hub URL advertised in `Link: <…>; rel="hub"` (the Subscriptions API URL).
    pub hub_url: String,
    /// Callback URL policy.
    pub callbacks: policy::CallbackPolicy,
    /// Timeout of every outbound call (verification GET, slow-lane delivery POST).
    pub timeout: std::time::Duration,
    /// How long a fast-lane delivery may take before it is handed to the slow lane.
    pub fanout_budget: std::time::Duration,
    /// Most delivery requests in flight at once in this process.
    pub max_in_flight: usize,
    /// Most subscriptions the hub holds; a new subscription beyond it is denied (a
    /// `hub.mode=denied` notification is sent to its callback).
    pub max_subscriptions: u64,
    /// The slow lane's attempt budget (the `redeliver` queue's `max_attempts`): a delivery
    /// whose attempts, over all its copies, reach it is dead-lettered on that failure.
    pub slow_lane_max_attempts: u32,
}
