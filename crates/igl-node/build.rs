//! Marks the PostgreSQL conformance tests as ignored (with the reason shown by the test
//! runner) when `IGL_TEST_POSTGRES_URL` is not set, so `cargo test` says what it skipped;
//! records the compiler version for benchmark results (`IGL_RUSTC_VERSION`).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(igl_skip_postgres)");
    println!("cargo::rerun-if-env-changed=IGL_TEST_POSTGRES_URL");
    if std::env::var_os("IGL_TEST_POSTGRES_URL").is_none_or(|url| url.is_empty()) {
        println!("cargo::rustc-cfg=igl_skip_postgres");
    }
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    if let Ok(output) = std::process::Command::new(rustc).arg("--version").output()
        && output.status.success()
    {
        let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        println!("cargo::rustc-env=IGL_RUSTC_VERSION={version}");
    }
}
