//! Storage adapters of the IGL node: SQL backends (SQLite, PostgreSQL) for messages, job
//! queues, the event log and the object ACL, and object stores for documents.

mod connect;
pub mod objects;
mod sql;

pub use connect::{DatabaseOptions, open_storage};
pub use sql::{PostgresStore, SqliteStore, postgres_pool_options};
