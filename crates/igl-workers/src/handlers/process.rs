//! The message processor (REFERENCE-WIRE §4.1, without its defects): for a newly stored
//! message, grant its receiver access to the referenced document, publish the stored and
//! received events, and queue the next step — routing for our own outbound messages,
//! fetching the document for inbound ones. All of it, and the ack of the job, commit in
//! one unit of work, so a crash anywhere repeats nothing and loses nothing.

use std::sync::Arc;

use async_trait::async_trait;
use igl_core::pipeline::{MessageJob, PipelineJob, stored_message_events};
use igl_core::{ClaimedJob, NewJob, Storage};
use igl_domain::{Jurisdiction, Message, MessageRef, MessageStatus, Multihash};

use super::batch::{BatchSteps, Prepared, prepare_then_write, prepare_then_write_one};
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

/// What processing one message writes.
#[derive(Debug)]
pub(crate) struct Plan {
    message: Message,
    document: Option<Multihash>,
    next: Option<NewJob>,
}

impl BatchSteps for ProcessMessage {
    type Write = Plan;

    async fn prepare(&self, job: &ClaimedJob) -> Result<Prepared<Plan>, JobError> {
        self.plan(job).await.map(Prepared::Write)
    }

    async fn write(&self, work: &[(&ClaimedJob, Plan)]) -> Result<(), JobError> {
        self.apply(work).await
    }
}

impl ProcessMessage {
    /// Reads the job's message and decides what to write.
    async fn plan(&self, job: &ClaimedJob) -> Result<Plan, JobError> {
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
        let document = Multihash::parse(&message.content.obj).ok();
        let outbound = message.content.sender == self.jurisdiction;
        let next = match (outbound, message.status, &document) {
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
        Ok(Plan {
            message,
            document,
            next,
        })
    }

    /// Writes the plans of `jobs` and acks the jobs, in one unit of work.
    async fn apply(&self, work: &[(&ClaimedJob, Plan)]) -> Result<(), JobError> {
        let mut unit = self.storage.begin().await?;
        for (_, plan) in work {
            if let Some(document) = &plan.document {
                unit.grant_object(document, plan.message.content.receiver)
                    .await?;
            }
        }
        let events: Vec<_> = work
            .iter()
            .flat_map(|(_, plan)| stored_message_events(&plan.message))
            .collect();
        unit.append_events(&events).await?;
        let next: Vec<NewJob> = work
            .iter()
            .filter_map(|(_, plan)| plan.next.clone())
            .collect();
        unit.enqueue(&next).await?;
        let receipts: Vec<_> = work.iter().map(|(job, _)| job.receipt()).collect();
        unit.ack(&receipts).await?;
        unit.commit().await?;
        for (_, plan) in work {
            tracing::debug!(
                reference = %plan.message.reference(),
                status = %plan.message.status,
                next = plan.next.as_ref().map(|job| job.queue.as_str()),
                "message processed"
            );
        }
        Ok(())
    }
}

#[async_trait]
impl JobHandler for ProcessMessage {
    fn name(&self) -> &'static str {
        "message-processor"
    }

    async fn handle(&self, job: &ClaimedJob) -> Result<Handled, JobError> {
        prepare_then_write_one(self, job).await
    }

    fn batched(&self) -> bool {
        true
    }

    /// Plans every job (concurrent reads), then writes them all in one unit of work.
    async fn handle_batch(&self, jobs: &[ClaimedJob]) -> Vec<Result<Handled, JobError>> {
        prepare_then_write(self, jobs).await
    }
}
