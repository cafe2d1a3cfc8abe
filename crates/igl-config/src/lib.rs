//! Typed configuration of the IGL node, and the [`Component`] enum.
//!
//! One [`Settings`] value is loaded once at start-up by the binary with [`Settings::load`]
//! (built-in defaults → optional TOML file → `IGL_*` environment variables with `__` nesting),
//! validated, and then passed down explicitly. Nothing in this crate reads the process
//! environment: the loader takes the variables as a parameter, so tests pass their own.
//!
//! ```
//! use igl_config::{Component, DatabaseBackend, Settings};
//!
//! let env = [("IGL_NODE__JURISDICTION".to_owned(), "SG".to_owned())];
//! let settings = Settings::load(None, env)?;
//! assert_eq!(settings.node.jurisdiction, "SG");
//! assert_eq!(settings.database.backend(), DatabaseBackend::Sqlite);
//! assert!(settings.is_enabled(Component::Router));
//! # Ok::<(), igl_config::ConfigError>(())
//! ```
//!
//! # Layout
//!
//! - `settings`: the [`Settings`] tree, defaults and derived values (`database_url`, …).
//! - `load`: [`Settings::load`] and the environment provider.
//! - `validate`: [`Settings::validate`], which reports every problem at once.
//! - `jurisdictions`: the `[jurisdictions.<CODE>]` section ([`JurisdictionSettings`]):
//!   other jurisdictions' Document APIs and the spider's credentials for them.
//! - `auth`: the `[auth]` section ([`AuthSettings`]): static tokens, JWT validation,
//!   anonymous and legacy document access. **Its default accepts nobody** (every
//!   authenticated request gets 401).
//! - `channel_endpoint`: the `[channel_endpoint]` section ([`ChannelEndpointSettings`]) of
//!   `igl channel`, our shared-db channel endpoint as a process.
//! - `component`: [`Component`], every API and worker of the binary.
//! - `objects`: the `[objects] type = "s3"` settings ([`S3ObjectSettings`]).
//! - `secret`: [`SecretString`] and [`redact_url`], so `Debug` of settings is safe to log.
//! - `error`: [`ConfigError`] and [`ConfigProblem`].
#![warn(missing_docs)]

mod auth;
mod channel_endpoint;
mod channels;
mod component;
mod error;
mod hub;
mod jurisdictions;
mod load;
mod objects;
mod secret;
mod settings;
mod validate;

pub use auth::{
    AuthSettings, JwtKeySource, JwtSettings, MAX_LEEWAY_SECS, MIN_HS256_SECRET_LEN,
    MIN_JWKS_REFRESH_SECS, MIN_STATIC_TOKEN_LEN, StaticTokenSettings,
};
pub use channel_endpoint::ChannelEndpointSettings;
pub use channels::{ChannelFieldFilter, ChannelSettings};
pub use component::{Component, ParseComponentError};
pub use error::{ConfigError, ConfigProblem};
pub use hub::HubSettings;
pub use jurisdictions::JurisdictionSettings;
pub use load::{ENV_NESTING_SEPARATOR, ENV_PREFIX};
pub use objects::{S3_DEFAULT_REGION, S3_MAX_DOCUMENT_BYTES, S3ObjectSettings};
pub use secret::{REDACTED, SecretString, redact_url};
pub use settings::{
    AmqpSettings, DatabaseBackend, DatabaseSettings, DocumentSettings, HttpSettings, LogFormat,
    LogSettings, NodeSettings, ObjectStoreSettings, ParseLogFormatError, QueueBackend,
    QueueSettings, RetryPolicy, RetryPolicyOverride, Settings,
};
