//! Marks the PostgreSQL tests as ignored (with the reason shown by the test
//! runner) when `IGL_TEST_POSTGRES_URL` is not set, so `cargo test` says what it skipped.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(igl_skip_postgres)");
    println!("cargo::rerun-if-env-changed=IGL_TEST_POSTGRES_URL");
    if std::env::var_os("IGL_TEST_POSTGRES_URL").is_none_or(|url| url.is_empty()) {
        println!("cargo::rustc-cfg=igl_skip_postgres");
    }
}
