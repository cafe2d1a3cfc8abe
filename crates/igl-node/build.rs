//! Marks the tests of optional backends as ignored (with the reason shown by the test
//! runner) when their variable is not set, so `cargo test` says what it skipped:
//! PostgreSQL (`IGL_TEST_POSTGRES_URL`), RabbitMQ (`IGL_TEST_AMQP_URL`), the broker shape
//! (`igl_skip_broker_shape` when either of those is missing), S3 (`IGL_TEST_S3_ENDPOINT`)
//! and the multi-process scale-out shape (`igl_skip_scale_out` when any of the three is
//! missing); records the compiler version for benchmark results (`IGL_RUSTC_VERSION`).

fn main() {
    let mut broker_shape = true;
    let mut scale_out = true;
    for (variable, cfg) in [
        ("IGL_TEST_POSTGRES_URL", "igl_skip_postgres"),
        ("IGL_TEST_AMQP_URL", "igl_skip_amqp"),
        ("IGL_TEST_S3_ENDPOINT", "igl_skip_s3"),
    ] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        println!("cargo::rerun-if-env-changed={variable}");
        if std::env::var_os(variable).is_none_or(|value| value.is_empty()) {
            println!("cargo::rustc-cfg={cfg}");
            scale_out = false;
            if variable != "IGL_TEST_S3_ENDPOINT" {
                broker_shape = false;
            }
        }
    }
    // Tests of the broker shape need both PostgreSQL and RabbitMQ.
    println!("cargo::rustc-check-cfg=cfg(igl_skip_broker_shape)");
    if !broker_shape {
        println!("cargo::rustc-cfg=igl_skip_broker_shape");
    }
    // The multi-process scale-out test needs all three.
    println!("cargo::rustc-check-cfg=cfg(igl_skip_scale_out)");
    if !scale_out {
        println!("cargo::rustc-cfg=igl_skip_scale_out");
    }
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    if let Ok(output) = std::process::Command::new(rustc).arg("--version").output()
        && output.status.success()
    {
        let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        println!("cargo::rustc-env=IGL_RUSTC_VERSION={version}");
    }
}
