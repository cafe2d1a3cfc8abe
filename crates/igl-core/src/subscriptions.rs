//! WebSub subscriptions of the node's hub (ARCHITECTURE §8, REFERENCE-WIRE §3).
//!
//! Topic semantics are the reference's: matching is case-insensitive and by dot-segment
//! prefix; `a.b`, `a.b.` and `a.b.*` are the same subscription; an event topic `a.b.c`
//! matches subscriptions to `a`, `a.b` and `a.b.c`. Subscriptions are stored under a
//! normalised *topic key* (upper case, no trailing `.` / `*`), so matching an event is an
//! index lookup of its few prefixes, never a scan of all subscriptions.

use std::fmt;

use async_trait::async_trait;
use igl_domain::Timestamp;

use crate::StoreError;

/// The normalised form of a topic pattern: `UN.CEFACT.*` → `UN.CEFACT`,
/// `message.AU:1.status` → `MESSAGE.AU:1.STATUS`. Empty for `*` (everything).
pub fn topic_key(topic: &str) -> String {
    let trimmed = topic.strip_suffix('*').unwrap_or(topic);
    let trimmed = trimmed.strip_suffix('.').unwrap_or(trimmed);
    trimmed
        .split('.')
        .filter(|segment| !segment.is_empty())
        .collect::<Vec<_>>()
        .join(".")
        .to_uppercase()
}

/// The topic keys an event topic matches: every dot-segment prefix of its key, shortest
/// first, plus the empty key (subscriptions to `*`).
pub fn matching_keys(event_topic: &str) -> Vec<String> {
    let key = topic_key(event_topic);
    let mut keys = vec![String::new()];
    let mut prefix = String::new();
    for segment in key.split('.').filter(|segment| !segment.is_empty()) {
        if !prefix.is_empty() {
            prefix.push('.');
        }
        prefix.push_str(segment);
        keys.push(prefix.clone());
    }
    keys
}

/// A secret shared with a subscriber, used to sign deliveries (never logged).
#[derive(Clone, PartialEq, Eq)]
pub struct HubSecret(pub String);

impl fmt::Debug for HubSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HubSecret([redacted])")
    }
}

/// A subscription to create or renew.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSubscription {
    /// The topic pattern as the subscriber gave it.
    pub topic: String,
    /// Where deliveries go.
    pub callback: String,
    /// Signs deliveries when present.
    pub secret: Option<HubSecret>,
    /// When the lease ends.
    pub expires_at: Timestamp,
}

/// An active (or expired, not yet purged) subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Storage id.
    pub id: i64,
    /// The topic pattern as given.
    pub topic: String,
    /// Its normalised key.
    pub topic_key: String,
    /// Where deliveries go.
    pub callback: String,
    /// Signs deliveries when present.
    pub secret: Option<HubSecret>,
    /// When the lease ends.
    pub expires_at: Timestamp,
    /// When it was first created.
    pub created_at: Timestamp,
    /// When it was last subscribed (created or renewed).
    pub updated_at: Timestamp,
    /// Last successful delivery.
    pub last_success_at: Option<Timestamp>,
    /// Last failed delivery attempt.
    pub last_failure_at: Option<Timestamp>,
    /// Error of the last failed attempt.
    pub last_error: Option<String>,
}

/// The outcome of one delivery attempt, for the subscription's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The subscriber answered 2xx.
    Delivered,
    /// The attempt failed with this error.
    Failed(String),
}

/// Storage of hub subscriptions.
#[async_trait]
pub trait SubscriptionStore: Send + Sync + std::fmt::Debug {
    /// Creates the subscription, or renews the one with the same topic key and callback
    /// (new lease and secret; no duplicate).
    async fn upsert_subscription(
        &self,
        subscription: &NewSubscription,
    ) -> Result<Subscription, StoreError>;

    /// Removes the subscription of `callback` to `topic` (by topic key); `false` when there
    /// was none.
    async fn remove_subscription(&self, topic: &str, callback: &str) -> Result<bool, StoreError>;

    /// Removes a subscription by id (e.g. after the subscriber answered 410 Gone).
    async fn remove_subscription_by_id(&self, id: i64) -> Result<bool, StoreError>;

    /// The subscription with this id, if any.
    async fn subscription(&self, id: i64) -> Result<Option<Subscription>, StoreError>;

    /// The subscriptions with these ids that still exist (expired ones included), in id
    /// order: one query for a whole fan-out batch.
    async fn subscriptions_by_id(&self, ids: &[i64]) -> Result<Vec<Subscription>, StoreError>;

    /// How many subscriptions are stored (expired, not yet purged, included).
    async fn subscription_count(&self) -> Result<u64, StoreError>;

    /// Unexpired subscriptions matching `event_topic`, at most one per callback (the most
    /// specific topic wins), ordered by id.
    async fn matching_subscriptions(
        &self,
        event_topic: &str,
        now: Timestamp,
    ) -> Result<Vec<Subscription>, StoreError>;

    /// Subscriptions with ids greater than `after`, in id order (operator listing).
    async fn list_subscriptions(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Subscription>, StoreError>;

    /// Records a delivery attempt's outcome on the subscription.
    async fn record_delivery(&self, id: i64, outcome: &DeliveryOutcome) -> Result<(), StoreError>;

    /// Records a successful delivery on each of these subscriptions, in one statement.
    async fn record_successes(&self, ids: &[i64]) -> Result<(), StoreError>;

    /// Deletes subscriptions whose lease ended before `now`; returns how many.
    async fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_keys_follow_the_reference() {
        assert_eq!(topic_key("UN.CEFACT.*"), "UN.CEFACT");
        assert_eq!(topic_key("un.cefact."), "UN.CEFACT");
        assert_eq!(topic_key("un.cefact"), "UN.CEFACT");
        assert_eq!(topic_key("message.AU:abc.status"), "MESSAGE.AU:ABC.STATUS");
        assert_eq!(topic_key("*"), "");
    }

    #[test]
    fn event_topics_match_their_prefixes() {
        assert_eq!(
            matching_keys("AA.BB.CCCC.EE"),
            ["", "AA", "AA.BB", "AA.BB.CCCC", "AA.BB.CCCC.EE"]
        );
        // A subscriber at AA.BB.CCCC does not receive AA.BB.CC or AA.BB.CC.GG.
        assert!(!matching_keys("AA.BB.CC").contains(&topic_key("AA.BB.CCCC")));
        assert!(!matching_keys("AA.BB.CC.GG").contains(&topic_key("AA.BB.CCCC")));
        assert!(matching_keys("aa.bb.cccc.ee").contains(&topic_key("AA.BB.CCCC")));
    }
}
