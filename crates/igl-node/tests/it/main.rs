//! Integration tests: real nodes on port 0, driven over HTTP like a client.

mod support;

mod admin;
mod broker;
mod crash;
mod documents;
mod hub;
mod messages;
mod network;
mod reception;
mod s3;
mod websub_conformance;
