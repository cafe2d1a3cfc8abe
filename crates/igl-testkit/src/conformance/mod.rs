//! Port conformance suites: each function takes a fresh adapter and checks one part of the
//! port's contract, panicking with a clear message when the adapter breaks it. Test
//! binaries instantiate every case for every adapter (see `tests/conformance`).

pub mod acl;
pub mod events;
pub mod jobs;
pub mod messages;
pub mod objects;
pub mod subscriptions;
pub mod unit_of_work;
