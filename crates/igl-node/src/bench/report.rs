//! What every benchmark result records about where it ran.

use serde::Serialize;

/// The machine, software and commit a result was measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    /// Logical CPUs available to the process.
    pub cores: usize,
    /// Total memory in MiB, from /proc/meminfo when available.
    pub memory_mib: Option<u64>,
    /// CPU model, from /proc/cpuinfo when available.
    pub cpu: Option<String>,
    /// Kernel release, from /proc/sys/kernel/osrelease when available.
    pub kernel: Option<String>,
    /// Version of the `igl` binary.
    pub igl_version: &'static str,
    /// The compiler that built it.
    pub rustc_version: Option<&'static str>,
    /// `git rev-parse HEAD` of the working directory, when it is a checkout.
    pub git_commit: Option<String>,
    /// Whether tracked files differed from that commit (`git status`), when a checkout.
    pub git_dirty: Option<bool>,
    /// Whether the binary was built with optimisations.
    pub release_build: bool,
}

impl Environment {
    /// Reads the environment of this process.
    pub fn detect() -> Self {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_mib = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib / 1024);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim().to_owned());
        let git_commit = std::process::Command::new("git")
            .args(["rev-parse", "HEAD"])
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned());
        let git_dirty = std::process::Command::new("git")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| !output.stdout.is_empty());
        Self {
            cores: std::thread::available_parallelism()
                .map(usize::from)
                .unwrap_or(1),
            memory_mib,
            cpu,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|release| release.trim().to_owned()),
            igl_version: env!("CARGO_PKG_VERSION"),
            rustc_version: option_env!("IGL_RUSTC_VERSION"),
            git_commit,
            git_dirty,
            release_build: !cfg!(debug_assertions),
        }
    }
}
