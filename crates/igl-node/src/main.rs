//! `igl`: the Inter-Government Ledger node binary.
//!
//! Exit codes: 0 on success; 2 for usage or configuration errors (every problem is printed on
//! stderr, one per line); 1 when a command fails at run time (the error chain is printed on
//! stderr).
//!
//! # Layout
//!
//! - `cli`: the command line (clap derive).
//! - `commands`: one function per subcommand; configuration loading and exit codes.
//! - `telemetry`: log filter and subscriber.
//! - `shutdown`: SIGINT / SIGTERM → `CancellationToken`.
//! - `demo`: `igl demo`, two nodes in one process and a certificate between them.
//! - `run`: what `migrate` and `node` do once everything is set up (composition root).

mod bench;
mod cli;
mod commands;
mod demo;
mod run;
mod shutdown;
mod telemetry;

use std::process::ExitCode;

/// mimalloc instead of the system allocator: the node allocates many small, short-lived
/// buffers across threads, where glibc malloc showed up at ~15% of CPU in the ingest
/// profile (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // The only place that reads the process environment (STYLE R22); variables that are not
    // valid UTF-8 are skipped.
    let env = commands::ProcessEnv {
        vars: std::env::vars_os()
            .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
            .collect(),
    };
    match commands::execute(cli, env) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => error.report(),
    }
}
