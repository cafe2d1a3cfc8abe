//! Ports of the IGL node: the traits that use cases and workers depend on, and the values
//! that cross them. Adapters (SQLite, PostgreSQL, the filesystem, later RabbitMQ and S3)
//! implement these traits in other crates; nothing here knows a technology.
//!
//! The central idea is the [`UnitOfWork`]: a state change (a message stored or updated), the
//! jobs it causes, the events it publishes, ACL grants and the acknowledgement of the job
//! that caused it all commit in **one transaction**, or not at all (transactional outbox).

pub mod channel;
mod error;
mod events;
pub mod ingest;
mod jobs;
mod messages;
mod objects;
pub mod pipeline;
mod storage;
pub mod subscriptions;

pub use error::{BoxError, StoreError};
pub use events::{Event, EventLog, NewEvent};
pub use jobs::{
    ClaimedJob, DeadLetter, JobId, JobQueue, JobReceipt, NewJob, QueueDepth, QueueName,
    QueueNameError, TakenJobs,
};
pub use messages::{
    Cursor, InsertOutcome, Inserted, MessageFilter, MessagePage, MessageStore, Updated,
};
pub use objects::{ByteStream, ObjectAcl, ObjectInfo, ObjectStore, ObjectStoreError};
pub use storage::{Storage, UnitOfWork};
