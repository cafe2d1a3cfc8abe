//! Fan-out (`spread.v1` jobs): one delivery job per matching subscription.

use std::sync::Arc;

use async_trait::async_trait;
use igl_core::{ClaimedJob, Storage};
use igl_domain::Timestamp;
use igl_workers::{Handled, JobError, JobHandler};
use serde::Deserialize;

use crate::deliver::{BATCH_SUBSCRIPTIONS, DeliverBatchJob};

#[derive(Debug, Deserialize)]
struct SpreadJob {
    event_id: String,
}

/// Looks up the subscriptions matching an event's topic (an index lookup of the topic's
/// prefixes, one subscription per callback) and queues `deliver-batch.v1` jobs covering
/// them in groups of at most [`BATCH_SUBSCRIPTIONS`], acking the spread job in the same
/// unit of work.
#[derive(Debug, Clone)]
pub struct Spread {
    storage: Arc<dyn Storage>,
}

impl Spread {
    /// A spreader over `storage`.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Self { storage }
    }
}

#[async_trait]
impl JobHandler for Spread {
    fn name(&self) -> &'static str {
        "spreader"
    }

    async fn handle(&self, job: &ClaimedJob) -> Result<Handled, JobError> {
        let SpreadJob { event_id } =
            serde_json::from_value(job.payload.clone()).map_err(JobError::permanent)?;
        let event = self
            .storage
            .get_event(&event_id)
            .await?
            .ok_or_else(|| JobError::permanent(format!("event {event_id} does not exist")))?;
        let subscriptions = self
            .storage
            .matching_subscriptions(&event.topic, Timestamp::now_utc())
            .await?;
        let deliveries: Vec<_> = subscriptions
            .chunks(BATCH_SUBSCRIPTIONS)
            .map(|group| {
                DeliverBatchJob {
                    event_id: event.id.clone(),
                    subscription_ids: group.iter().map(|subscription| subscription.id).collect(),
                }
                .into_new_job()
            })
            .collect();
        let mut unit = self.storage.begin().await?;
        unit.enqueue(&deliveries).await?;
        unit.ack(&[job.receipt()]).await?;
        unit.commit().await?;
        metrics::counter!("igl_websub_fanout_total").increment(subscriptions.len() as u64);
        tracing::debug!(event = %event.id, topic = %event.topic, subscriptions = subscriptions.len(), "event spread");
        Ok(Handled::AckedInTransaction)
    }
}
