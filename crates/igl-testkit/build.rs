//! Marks the PostgreSQL and RabbitMQ conformance tests as ignored (with the reason shown by
//! the test runner) when `IGL_TEST_POSTGRES_URL` / `IGL_TEST_AMQP_URL` is not set, so
//! `cargo test` says what it skipped.

fn main() {
    for (variable, cfg) in [
        ("IGL_TEST_POSTGRES_URL", "igl_skip_postgres"),
        ("IGL_TEST_AMQP_URL", "igl_skip_amqp"),
    ] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        println!("cargo::rerun-if-env-changed={variable}");
        if std::env::var_os(variable).is_none_or(|url| url.is_empty()) {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
