//! [`Settings::load`]: built-in defaults → optional TOML file → `IGL_*` environment.

use std::path::Path;
use std::sync::Arc;

use figment::error::Kind;
use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};

use crate::error::{ConfigError, ConfigProblem};
use crate::settings::Settings;

#[cfg(test)]
mod tests;

/// Prefix of the environment variables read as settings.
pub const ENV_PREFIX: &str = "IGL_";

/// Separator between nesting levels in environment variable names
/// (`IGL_DATABASE__URL` → `database.url`).
pub const ENV_NESTING_SEPARATOR: &str = "__";

/// The top-level keys of [`Settings`], for deciding which `IGL_*` variables are settings.
const TOP_LEVEL_KEYS: &[&str] = &[
    "node",
    "database",
    "objects",
    "documents",
    "queue",
    "http",
    "auth",
    "hub",
    "channels",
    "channel_endpoint",
    "jurisdictions",
    "log",
    "components",
];

/// Figment metadata name of [`EnvProvider`], also used to recognise its errors.
const ENV_METADATA_NAME: &str = "environment variable";

impl Settings {
    /// Loads and validates the settings: built-in defaults, then `config_file` (TOML) if
    /// given, then the `IGL_*` variables of `env`. Later sources override earlier ones key by
    /// key.
    ///
    /// `env` is passed explicitly (the binary passes `std::env::vars()`, tests pass their own
    /// pairs); this function never reads the process environment, and never looks for a file
    /// that was not given.
    ///
    /// Environment rules:
    /// - A variable is a setting when its name starts with `IGL_` and either contains `__`
    ///   or names a top-level key (`IGL_COMPONENTS`). The rest of the name is lower-cased and
    ///   split on `__`: `IGL_NODE__DATA_DIR` sets `node.data_dir`,
    ///   `IGL_QUEUE__QUEUES__ROUTER__MAX_ATTEMPTS` sets `queue.queues.router.max_attempts`.
    ///   Other `IGL_*` variables (`IGL_CONFIG`, `IGL_TEST_QUEUE`) belong to other tools and are
    ///   ignored.
    /// - Values are strings, converted to numbers or booleans where the field needs one.
    /// - `IGL_COMPONENTS` is a comma-separated list (`message-api,router`).
    ///
    /// Values are interpreted leniently (`"8"` is accepted for a number, `"yes"` for a bool)
    /// in the file too.
    ///
    /// # Errors
    ///
    /// - [`ConfigError::ReadFile`] if `config_file` cannot be read.
    /// - [`ConfigError::Invalid`] if the file is not valid TOML, a key is unknown, a value has
    ///   the wrong type (these stop at the first such problem), or if [`Settings::validate`]
    ///   finds problems (all of them are reported). Each problem names the key and, when
    ///   known, where the value came from.
    pub fn load(
        config_file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = config_file {
            // Figment silently skips missing files; an explicitly named file must exist.
            if let Err(source) = std::fs::read(path) {
                return Err(ConfigError::ReadFile {
                    path: path.to_owned(),
                    source,
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(EnvProvider::from_vars(env)?);

        let settings: Settings = figment
            .extract_lossy()
            .map_err(|error| ConfigError::Invalid(problems_from_figment(error)))?;
        settings.validate().map_err(|error| match error {
            ConfigError::Invalid(problems) => ConfigError::Invalid(
                problems
                    .into_iter()
                    .map(|problem| with_origin(problem, &figment))
                    .collect(),
            ),
            other => other,
        })?;
        Ok(settings)
    }
}

/// A figment provider over an explicit set of `IGL_*` variables.
#[derive(Debug)]
struct EnvProvider {
    values: Dict,
    /// Every variable read, as (key path, variable name), to name it in errors.
    variables: Arc<Vec<(Vec<String>, String)>>,
}

impl EnvProvider {
    /// Builds the nested dictionary of the `IGL_*` settings variables in `env`.
    fn from_vars(env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        // Sorted, so that the result does not depend on the iteration order of `env`.
        let variables: std::collections::BTreeMap<String, String> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX))
            .collect();
        let mut values = Dict::new();
        let mut names = Vec::new();
        let mut problems = Vec::new();
        for (name, value) in variables {
            let key = name[ENV_PREFIX.len()..].to_ascii_lowercase();
            let is_setting = key.contains(ENV_NESTING_SEPARATOR) || TOP_LEVEL_KEYS.contains(&&*key);
            if !is_setting {
                continue;
            }
            let path: Vec<&str> = key.split(ENV_NESTING_SEPARATOR).collect();
            if path.iter().any(|segment| segment.is_empty()) {
                problems.push(ConfigProblem {
                    key: None,
                    message: format!(
                        "malformed variable name (empty segment between {ENV_NESTING_SEPARATOR:?})"
                    ),
                    origin: Some(format!("{ENV_METADATA_NAME} {name}")),
                });
                continue;
            }
            let value = if path == ["components"] {
                Value::from(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|component| !component.is_empty())
                        .map(str::to_owned)
                        .collect::<Vec<String>>(),
                )
            } else {
                Value::from(value)
            };
            insert_nested(&mut values, &path, value);
            names.push((path.iter().map(|s| (*s).to_owned()).collect(), name));
        }
        if problems.is_empty() {
            Ok(EnvProvider {
                values,
                variables: Arc::new(names),
            })
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

/// Inserts `value` at `path` (non-empty), creating or replacing intermediate dictionaries.
fn insert_nested(dict: &mut Dict, path: &[&str], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = dict;
    for segment in parents {
        let entry = current
            .entry((*segment).to_owned())
            .or_insert_with(|| Value::from(Dict::new()));
        if !matches!(entry, Value::Dict(..)) {
            *entry = Value::from(Dict::new());
        }
        let Value::Dict(_, child) = entry else {
            unreachable!("entry was just made a dictionary");
        };
        current = child;
    }
    current.insert((*last).to_owned(), value);
}

impl Provider for EnvProvider {
    fn metadata(&self) -> Metadata {
        let variables = Arc::clone(&self.variables);
        Metadata::named(ENV_METADATA_NAME).interpolater(move |_profile: &Profile, keys: &[&str]| {
            variable_for_key(&variables, keys).unwrap_or_else(|| {
                format!(
                    "{ENV_PREFIX}{}",
                    keys.join(ENV_NESTING_SEPARATOR).to_ascii_uppercase()
                )
            })
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.values.clone()))
    }
}

/// The variable that set `keys`: the one with exactly that path, else the one whose path is
/// a prefix of it (`IGL_COMPONENTS` for `components.1`), else the first one below it
/// (`IGL_DATABSE__URL` for the unknown key `databse`).
fn variable_for_key(variables: &[(Vec<String>, String)], keys: &[&str]) -> Option<String> {
    let exact = variables.iter().find(|(path, _)| path == keys);
    let parent = || {
        variables.iter().find(|(path, _)| {
            keys.starts_with(&path.iter().map(String::as_str).collect::<Vec<_>>())
        })
    };
    let child = || {
        variables
            .iter()
            .find(|(path, _)| path.len() > keys.len() && path.iter().zip(keys).all(|(a, b)| a == b))
    };
    exact
        .or_else(parent)
        .or_else(child)
        .map(|(_, name)| name.clone())
}

/// Converts figment's chain of errors into problems naming the key and the origin.
fn problems_from_figment(error: figment::Error) -> Vec<ConfigProblem> {
    error
        .into_iter()
        .map(|error| {
            let mut path = error.path.clone();
            let field = match &error.kind {
                Kind::UnknownField(field, _) => Some(field.as_str()),
                Kind::MissingField(field) => Some(&**field),
                _ => None,
            };
            if let Some(field) = field
                && path.last().map(String::as_str) != Some(field)
            {
                path.push(field.to_owned());
            }
            ConfigProblem {
                key: (!path.is_empty()).then(|| path.join(".")),
                message: describe_kind(&error.kind),
                origin: error
                    .metadata
                    .as_ref()
                    .map(|metadata| describe_origin(metadata, &path)),
            }
        })
        .collect()
}

/// Figment's message for `kind`, with readable lists of the expected names.
fn describe_kind(kind: &Kind) -> String {
    match kind {
        Kind::UnknownField(field, expected) => format!(
            "unknown field {field:?} (expected one of: {})",
            expected.join(", ")
        ),
        Kind::UnknownVariant(variant, expected) => format!(
            "unknown value {variant:?} (expected one of: {})",
            expected.join(", ")
        ),
        Kind::MissingField(_) => "is required".to_owned(),
        other => other.to_string().trim_end().to_owned(),
    }
}

/// Adds the origin of the problem's key, if a provider (not the defaults) supplied it.
fn with_origin(mut problem: ConfigProblem, figment: &Figment) -> ConfigProblem {
    if problem.origin.is_none()
        && let Some(key) = &problem.key
        && let Some(metadata) = figment.find_metadata(key)
    {
        let path: Vec<String> = key.split('.').map(str::to_owned).collect();
        problem.origin = Some(describe_origin(metadata, &path));
    }
    problem
}

/// `file <path>`, `environment variable IGL_<KEY>`, or the provider's name.
fn describe_origin(metadata: &Metadata, path: &[String]) -> String {
    match &metadata.source {
        Some(Source::File(file)) => format!("file {}", file.display()),
        _ if metadata.name == ENV_METADATA_NAME && !path.is_empty() => format!(
            "{ENV_METADATA_NAME} {}",
            metadata.interpolate(&Profile::Default, path)
        ),
        _ => metadata.name.to_string(),
    }
}
