//! Storage adapters of the IGL node: SQL backends (SQLite, PostgreSQL) for messages, job
//! queues, the event log and the object ACL, and object stores for documents.

pub mod objects;
mod sql;

pub use sql::{PostgresStore, SqliteStore};
