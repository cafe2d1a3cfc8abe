//! [`ConfigError`] and [`ConfigProblem`].

use std::fmt;
use std::path::PathBuf;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file given explicitly could not be read (missing, unreadable).
    #[error("cannot read configuration file {}", path.display())]
    ReadFile {
        /// The path as given.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration was read but is invalid; holds every problem found, at least one.
    ///
    /// Problems found while parsing (syntax, unknown keys, wrong types) stop loading before
    /// validation, so they are reported without the validation problems.
    #[error("invalid configuration: {}", ProblemList(.0))]
    Invalid(Vec<ConfigProblem>),
}

impl ConfigError {
    /// The problems of an [`ConfigError::Invalid`] error; empty for other errors.
    pub fn problems(&self) -> &[ConfigProblem] {
        match self {
            ConfigError::Invalid(problems) => problems,
            ConfigError::ReadFile { .. } => &[],
        }
    }
}

/// One problem with the configuration, naming the offending key.
///
/// Displays as `key: message`, followed by ` (from origin)` when the origin is known, e.g.
/// `node.jurisdiction: "au" is not an upper-case ISO 3166-1 alpha-2 code (from environment
/// variable IGL_NODE__JURISDICTION)`. Messages never contain secret values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The dotted key path, e.g. `database.url` or `queue.queues.router.max_attempts`; `None`
    /// when the problem is not about one key (e.g. a TOML syntax error).
    pub key: Option<String>,
    /// What is wrong, lower-case, without trailing punctuation.
    pub message: String,
    /// Where the offending value came from, e.g. `file ./igl.toml` or
    /// `environment variable IGL_DATABASE__URL`; `None` for built-in defaults and values set
    /// in code.
    pub origin: Option<String>,
}

impl ConfigProblem {
    /// A problem with `key` that has no known origin yet.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigProblem {
            key: Some(key.into()),
            message: message.into(),
            origin: None,
        }
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(key) = &self.key {
            write!(formatter, "{key}: ")?;
        }
        formatter.write_str(&self.message)?;
        if let Some(origin) = &self.origin {
            write!(formatter, " (from {origin})")?;
        }
        Ok(())
    }
}

/// Displays problems separated by `; `.
struct ProblemList<'a>(&'a [ConfigProblem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, problem) in self.0.iter().enumerate() {
            if index > 0 {
                formatter.write_str("; ")?;
            }
            write!(formatter, "{problem}")?;
        }
        Ok(())
    }
}
