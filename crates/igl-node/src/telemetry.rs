//! Logging setup: `tracing-subscriber` with an `EnvFilter`, pretty or JSON, on stderr.

use std::io::IsTerminal;

use igl_config::{ConfigProblem, LogFormat, LogSettings};
use tracing_subscriber::EnvFilter;

/// Builds the log filter: `RUST_LOG` when it is set and not empty, otherwise `log.filter`.
///
/// # Errors
///
/// A [`ConfigProblem`] naming `log.filter` (or `RUST_LOG`) when the directives do not parse.
pub fn build_filter(log: &LogSettings, rust_log: Option<&str>) -> Result<EnvFilter, ConfigProblem> {
    match rust_log.filter(|directives| !directives.trim().is_empty()) {
        Some(directives) => EnvFilter::try_new(directives).map_err(|error| ConfigProblem {
            key: None,
            message: format!("RUST_LOG is not a valid log filter: {error}"),
            origin: Some("environment variable RUST_LOG".to_owned()),
        }),
        None => EnvFilter::try_new(&log.filter).map_err(|error| {
            ConfigProblem::new("log.filter", format!("is not a valid log filter: {error}"))
        }),
    }
}

/// Installs the global subscriber: events at or above `filter` go to stderr, as
/// human-readable lines (with ANSI colours only when stderr is a terminal) or as one JSON
/// object per line.
///
/// # Errors
///
/// Fails if a global subscriber is already installed.
pub fn init(format: LogFormat, filter: EnvFilter) -> anyhow::Result<()> {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Pretty => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    result.map_err(|error| anyhow::anyhow!(error).context("failed to install the log subscriber"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_overrides_the_configured_filter() {
        let log = LogSettings {
            filter: "not a [valid filter".to_owned(),
            ..LogSettings::default()
        };
        assert!(build_filter(&log, Some("debug")).is_ok());
        let problem = build_filter(&log, None).unwrap_err();
        assert_eq!(problem.key.as_deref(), Some("log.filter"));
        let problem = build_filter(&log, Some("  ")).unwrap_err();
        assert_eq!(
            problem.key.as_deref(),
            Some("log.filter"),
            "blank RUST_LOG is unset"
        );
    }

    #[test]
    fn invalid_rust_log_names_the_variable() {
        let problem = build_filter(&LogSettings::default(), Some("igl=loudest")).unwrap_err();
        assert!(
            problem
                .to_string()
                .starts_with("RUST_LOG is not a valid log filter")
        );
    }
}
