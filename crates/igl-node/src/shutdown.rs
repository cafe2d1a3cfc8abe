//! Shutdown plumbing: SIGINT / SIGTERM cancel one root [`CancellationToken`].

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Installs SIGINT and SIGTERM handlers and spawns a task that cancels `shutdown` on the first
/// signal. A second signal exits the process at once with status `128 + signal number`, for
/// when graceful shutdown hangs.
///
/// The handlers are installed before this function returns, so a signal arriving right after
/// start-up is not lost. Must be called inside a Tokio runtime.
///
/// # Errors
///
/// Fails if the signal handlers cannot be installed.
pub fn spawn_signal_listener(shutdown: CancellationToken) -> anyhow::Result<JoinHandle<()>> {
    let mut signals = Signals::install()?;
    Ok(tokio::spawn(async move {
        let first = signals.recv().await;
        info!(signal = first.name, "shutdown signal received, stopping");
        shutdown.cancel();
        let second = signals.recv().await;
        warn!(
            signal = second.name,
            "second shutdown signal received, exiting now"
        );
        std::process::exit(128 + second.number);
    }))
}

/// A received signal.
#[derive(Clone, Copy, Debug)]
struct Received {
    name: &'static str,
    number: i32,
}

#[cfg(unix)]
#[derive(Debug)]
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> anyhow::Result<Self> {
        use anyhow::Context;
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())
                .context("failed to install the SIGINT handler")?,
            terminate: signal(SignalKind::terminate())
                .context("failed to install the SIGTERM handler")?,
        })
    }

    async fn recv(&mut self) -> Received {
        tokio::select! {
            Some(()) = self.interrupt.recv() => Received { name: "SIGINT", number: 2 },
            Some(()) = self.terminate.recv() => Received { name: "SIGTERM", number: 15 },
            else => std::future::pending().await,
        }
    }
}

#[cfg(not(unix))]
#[derive(Debug)]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Signals)
    }

    async fn recv(&mut self) -> Received {
        match tokio::signal::ctrl_c().await {
            Ok(()) => Received {
                name: "ctrl-c",
                number: 2,
            },
            Err(error) => {
                warn!(%error, "cannot listen for ctrl-c");
                std::future::pending().await
            }
        }
    }
}
