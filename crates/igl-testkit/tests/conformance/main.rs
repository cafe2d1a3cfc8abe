//! Runs every port conformance suite against every adapter: SQLite always, PostgreSQL when
//! `IGL_TEST_POSTGRES_URL` is set (otherwise those tests are listed as ignored, with the
//! reason), RabbitMQ for the job queue when `IGL_TEST_AMQP_URL` is set.

mod amqp;
mod objects;
mod storage;
