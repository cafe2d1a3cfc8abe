//! Integration tests: real nodes on port 0, driven over HTTP like a client.

mod support;

mod messages;
