//! Marks the tests of optional backends as ignored (with the reason shown by the test
//! runner) when their variable is not set, so `cargo test` says what it skipped:
//! PostgreSQL (`IGL_TEST_POSTGRES_URL`), RabbitMQ (`IGL_TEST_AMQP_URL`), RabbitMQ's TLS
//! listener (`IGL_TEST_AMQPS_URL`) and S3 (`IGL_TEST_S3_ENDPOINT`).

fn main() {
    for (variable, cfg) in [
        ("IGL_TEST_POSTGRES_URL", "igl_skip_postgres"),
        ("IGL_TEST_AMQP_URL", "igl_skip_amqp"),
        ("IGL_TEST_AMQPS_URL", "igl_skip_amqps"),
        ("IGL_TEST_S3_ENDPOINT", "igl_skip_s3"),
    ] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        println!("cargo::rerun-if-env-changed={variable}");
        if std::env::var_os(variable).is_none_or(|value| value.is_empty()) {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
