//! The message processor (REFERENCE-WIRE §4.1, without its defects): for a newly stored
//! message, grant its receiver access to the referenced document, publish the stored and
//! received events, and queue the next step — routing for our own outbound messages,
//! fetching the document for inbound ones. All of it, and the ack of the job, commit in
//! one unit of work, so a crash anywhere repeats nothing and loses nothing.

use std::sync::Arc;

use async_trait::async_trait;
use igl_core::pipeline::{MessageJob, PipelineJob, stored_message_events};
use igl_core::{ClaimedJob, NewJob, Storage};
use igl_domain::{Jurisdiction, MessageRef, MessageStatus, Multihash};

use crate::{Handled, JobError, JobHandler};

/// Handles `process.v1` jobs.
#[derive(Debug, Clone)]
pub struct ProcessMessage {
    storage: Arc<dyn Storage>,
    jurisdiction: Jurisdiction,
}

impl ProcessMessage {
    /// A processor for the node of `jurisdiction`.
    pub fn new(storage: Arc<dyn Storage>, jurisdiction: Jurisdiction) -> Self {
        Self {
            storage,
            jurisdiction,
        }
    }
}

#[async_trait]
impl JobHandler for ProcessMessage {
    fn name(&self) -> &'static str {
        "message-processor"
    }

    async fn handle(&self, job: &ClaimedJob) -> Result<Handled, JobError> {
        let reference = match serde_json::from_value::<PipelineJob>(job.payload.clone()) {
            Ok(PipelineJob::ProcessV1(MessageJob { reference })) => reference,
            Ok(other) => {
                return Err(JobError::permanent(format!("not a process job: {other:?}")));
            }
            Err(error) => return Err(JobError::permanent(error)),
        };
        let reference = MessageRef::parse(&reference).map_err(JobError::permanent)?;
        let message =
            self.storage.get_message(&reference).await?.ok_or_else(|| {
                JobError::permanent(format!("message {reference} does not exist"))
            })?;

        let mut unit = self.storage.begin().await?;
        let document = Multihash::parse(&message.content.obj).ok();
        if let Some(document) = &document {
            unit.grant_object(document, message.content.receiver)
                .await?;
        }
        for event in stored_message_events(&message) {
            unit.append_event(&event).await?;
        }
        let outbound = message.content.sender == self.jurisdiction;
        let next: Option<NewJob> = match (outbound, message.status, document) {
            (true, MessageStatus::Pending, _) => Some(
                PipelineJob::RouteV1(MessageJob {
                    reference: reference.to_string(),
                })
                .into_new_job(),
            ),
            (false, MessageStatus::Received, Some(document)) => Some(
                PipelineJob::RetrieveObjectV1 {
                    reference: reference.to_string(),
                    sender: message.content.sender.to_string(),
                    object: document.to_string(),
                }
                .into_new_job(),
            ),
            _ => None,
        };
        if let Some(next) = &next {
            unit.enqueue(std::slice::from_ref(next)).await?;
        }
        unit.ack(&[job.receipt()]).await?;
        unit.commit().await?;
        tracing::debug!(
            reference = %reference,
            status = %message.status,
            next = next.as_ref().map(|job| job.queue.as_str()),
            "message processed"
        );
        Ok(Handled::AckedInTransaction)
    }
}
