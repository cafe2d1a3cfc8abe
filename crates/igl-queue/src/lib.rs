//! Job queues of the IGL node on a message broker: [`AmqpQueue`] implements
//! [`igl_core::JobQueue`] on RabbitMQ (AMQP 0-9-1, `lapin`), [`BrokeredStorage`] combines it
//! with a SQL [`igl_core::Storage`] that serves as the transactional outbox, and
//! [`OutboxRelay`] moves committed outbox rows to the broker (ARCHITECTURE §4, §6 invariant
//! on the outbox). The SQL adapters of the same port live in `igl-store`.
//!
//! See `docs/storage.md` ("The broker shape") for the topology and the contract.

mod amqp;
mod brokered;
mod message;
mod relay;

pub use amqp::{AmqpOptions, AmqpQueue, DELAY_TIERS, PUSHED_IDLE_POLL, redact_amqp_url};
pub use brokered::BrokeredStorage;
pub use relay::{
    OUTBOX_PUBLISH_LAG_SECONDS, OUTBOX_RELAY_ERRORS_TOTAL, OUTBOX_RELAY_ROUND_SECONDS,
    OUTBOX_RELAYED_TOTAL, OutboxRelay, RelayConfig,
};

/// Renders an error and its sources as `"outer: middle: inner"`.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
