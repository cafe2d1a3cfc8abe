//! [`Settings::validate`]: the rules serde types cannot express.

use std::fmt::Display;

use crate::error::{ConfigError, ConfigProblem};
use crate::settings::{
    DatabaseBackend, ObjectStoreSettings, QueueBackend, RetryPolicy, Settings, is_postgres_scheme,
    url_scheme,
};

impl Settings {
    /// Checks every rule and reports **all** problems, each naming its key.
    ///
    /// [`Settings::load`](crate::Settings::load) calls this; call it again after changing
    /// settings in code. The rules are documented on each field. Messages never repeat the
    /// database URL (it may hold a password), only its scheme.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] with one [`ConfigProblem`] per broken rule, in a stable order.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Problems::default();
        self.validate_node(&mut problems);
        self.validate_database(&mut problems);
        self.validate_objects(&mut problems);
        at_least(
            &mut problems,
            "documents.max_bytes",
            self.documents.max_bytes,
            1,
        );
        self.validate_queue(&mut problems);
        problems.0.extend(self.auth.problems());
        problems.0.extend(crate::channels::problems(&self.channels));
        problems.0.extend(self.hub.problems());
        problems.0.extend(
            self.channel_endpoint
                .problems(database_url_problem, |schema| {
                    (!is_schema_identifier(schema)).then(|| {
                format!("{schema:?} is not a valid schema name (expected [a-z_][a-z0-9_]{{0,62}})")
            })
                }),
        );
        problems
            .0
            .extend(crate::jurisdictions::problems(&self.jurisdictions));
        if self.log.filter.trim().is_empty() {
            problems.push("log.filter", "must not be empty");
        }
        if self.components.is_empty() {
            problems.push("components", "at least one component must be enabled");
        }
        if problems.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems.0))
        }
    }

    fn validate_node(&self, problems: &mut Problems) {
        let jurisdiction = &self.node.jurisdiction;
        let is_alpha_2 =
            jurisdiction.len() == 2 && jurisdiction.bytes().all(|b| b.is_ascii_uppercase());
        if !is_alpha_2 {
            problems.push(
                "node.jurisdiction",
                format!("{jurisdiction:?} is not an upper-case ISO 3166-1 alpha-2 code"),
            );
        }
        if self.node.data_dir.as_os_str().is_empty() {
            problems.push("node.data_dir", "must not be empty");
        }
        problems.0.extend(crate::jurisdictions::public_url_problems(
            self.node.public_url.as_deref(),
        ));
    }

    fn validate_database(&self, problems: &mut Problems) {
        let database = &self.database;
        if let Some(url) = &database.url
            && let Some(message) = database_url_problem(url.expose_secret())
        {
            problems.push("database.url", message);
        }
        in_range(
            problems,
            "database.max_connections",
            database.max_connections,
            1,
            256,
        );
        if let Some(schema) = &database.schema {
            if !is_schema_identifier(schema) {
                problems.push(
                    "database.schema",
                    format!(
                        "{schema:?} is not a valid schema name (expected [a-z_][a-z0-9_]{{0,62}})"
                    ),
                );
            }
            if database.backend() != DatabaseBackend::Postgres {
                problems.push(
                    "database.schema",
                    "is only supported with postgres (the database is sqlite)",
                );
            }
        }
        at_least(
            problems,
            "database.connect_timeout_secs",
            database.connect_timeout_secs,
            1,
        );
    }

    fn validate_objects(&self, problems: &mut Problems) {
        match &self.objects {
            ObjectStoreSettings::Local { path } => {
                if path
                    .as_ref()
                    .is_some_and(|path| path.as_os_str().is_empty())
                {
                    problems.push("objects.path", "must not be empty");
                }
            }
            ObjectStoreSettings::S3(s3) => {
                problems.0.extend(s3.problems(self.documents.max_bytes));
            }
        }
    }

    fn validate_queue(&self, problems: &mut Problems) {
        let queue = &self.queue;
        at_least(
            problems,
            "queue.poll_interval_ms",
            queue.poll_interval_ms,
            1,
        );
        at_least(problems, "queue.lease_secs", queue.lease_secs, 1);
        in_range(problems, "queue.claim_batch", queue.claim_batch, 1, 1000);
        validate_retry_policy(problems, "queue.retry", &queue.retry);
        for (queue_name, policy_override) in &queue.queues {
            let prefix = format!("queue.queues.{queue_name}");
            if !is_queue_name(queue_name) {
                problems.push(
                    &prefix,
                    format!("{queue_name:?} is not a valid queue name (expected [a-z][a-z0-9_-]*)"),
                );
            }
            validate_retry_policy(problems, &prefix, &policy_override.apply_to(&queue.retry));
        }
        let amqp = &queue.amqp;
        match (&amqp.url, queue.backend) {
            (None, QueueBackend::Amqp) => {
                problems.push(
                    "queue.amqp.url",
                    "is required when queue.backend = \"amqp\"",
                );
            }
            (Some(url), _) => match url_scheme(url.expose_secret()).as_deref() {
                Some("amqps") => {}
                Some("amqp") if amqp.ca_file.is_some() => problems.push(
                    "queue.amqp.ca_file",
                    "is only used with TLS: the url must be amqps://",
                ),
                Some("amqp") => {}
                Some(scheme) => problems.push(
                    "queue.amqp.url",
                    format!("scheme {scheme:?} is not supported (expected amqp:// or amqps://)"),
                ),
                None => problems.push("queue.amqp.url", "is not a URL (expected amqp://…)"),
            },
            (None, QueueBackend::Sql) => {}
        }
        let prefix_ok = !amqp.prefix.is_empty()
            && amqp.prefix.len() <= 64
            && amqp
                .prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if !prefix_ok {
            problems.push(
                "queue.amqp.prefix",
                format!("{:?} is not 1-64 characters of [a-z0-9._-]", amqp.prefix),
            );
        }
        in_range(problems, "queue.amqp.prefetch", amqp.prefetch, 1, 10_000);
        at_least(
            problems,
            "queue.amqp.delivery_limit",
            amqp.delivery_limit,
            1,
        );
        in_range(
            problems,
            "queue.amqp.relay_batch",
            amqp.relay_batch,
            1,
            10_000,
        );
        in_range(
            problems,
            "queue.amqp.jobs_per_message",
            amqp.jobs_per_message,
            1,
            1_000,
        );
    }
}

/// Checks a (possibly merged) retry policy; keys are `{prefix}.{field}`.
fn validate_retry_policy(problems: &mut Problems, prefix: &str, policy: &RetryPolicy) {
    at_least(
        problems,
        &format!("{prefix}.max_attempts"),
        policy.max_attempts,
        1,
    );
    if policy.base_delay_ms > policy.max_delay_ms {
        problems.push(
            format!("{prefix}.base_delay_ms"),
            format!(
                "{} is greater than max_delay_ms ({})",
                policy.base_delay_ms, policy.max_delay_ms
            ),
        );
    }
}

/// Returns why `url` is not an acceptable database URL, without repeating the URL.
fn database_url_problem(url: &str) -> Option<String> {
    if url.trim().is_empty() {
        return Some("must not be empty (unset it to use the default sqlite file)".to_owned());
    }
    let Some(scheme) = url_scheme(url) else {
        return Some("is not a URL (expected sqlite: or postgres:)".to_owned());
    };
    if scheme == "sqlite" {
        let rest = &url["sqlite:".len()..];
        let path = rest.strip_prefix("//").unwrap_or(rest);
        if path.is_empty() || path.starts_with('?') {
            return Some("sqlite URL has no database path".to_owned());
        }
        return None;
    }
    if is_postgres_scheme(&scheme) {
        return match url::Url::parse(url) {
            Ok(_) => None,
            Err(error) => Some(format!("is not a valid postgres URL: {error}")),
        };
    }
    Some(format!(
        "unsupported scheme {scheme:?} (expected sqlite: or postgres:)"
    ))
}

/// `[a-z_][a-z0-9_]{0,62}`: an unquoted PostgreSQL identifier that fits in 63 bytes.
fn is_schema_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    let Some(first) = bytes.next() else {
        return false;
    };
    name.len() <= 63
        && (first.is_ascii_lowercase() || first == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `[a-z][a-z0-9_-]*`.
fn is_queue_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn in_range<T: PartialOrd + Display>(problems: &mut Problems, key: &str, value: T, min: T, max: T) {
    if value < min || value > max {
        problems.push(
            key,
            format!("{value} is out of range (expected {min}..={max})"),
        );
    }
}

fn at_least<T: PartialOrd + Display>(problems: &mut Problems, key: &str, value: T, min: T) {
    if value < min {
        problems.push(
            key,
            format!("{value} is out of range (expected at least {min})"),
        );
    }
}

#[derive(Default)]
struct Problems(Vec<ConfigProblem>);

impl Problems {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigProblem::new(key, message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SecretString;

    fn problems_of(settings: &Settings) -> Vec<String> {
        match settings.validate() {
            Ok(()) => vec![],
            Err(error) => error.problems().iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(problems_of(&Settings::default()), Vec::<String>::new());
    }

    #[test]
    fn jurisdiction_shape() {
        for good in ["AU", "SG", "ZZ"] {
            let mut settings = Settings::default();
            settings.node.jurisdiction = good.to_owned();
            assert!(settings.validate().is_ok(), "{good}");
        }
        for bad in ["au", "AUS", "A", "", "A1", "ÄU"] {
            let mut settings = Settings::default();
            settings.node.jurisdiction = bad.to_owned();
            assert_eq!(
                problems_of(&settings),
                [format!(
                    "node.jurisdiction: {bad:?} is not an upper-case ISO 3166-1 alpha-2 code"
                )],
            );
        }
    }

    #[test]
    fn database_url_schemes() {
        for good in [
            "sqlite://./data/igl.db",
            "sqlite:igl.db",
            "sqlite::memory:",
            "SQLite:///tmp/x.db",
            "postgres://igl:pw@localhost:5432/igl",
            "postgresql://localhost/igl",
        ] {
            let mut settings = Settings::default();
            settings.database.url = Some(SecretString::new(good));
            assert_eq!(problems_of(&settings), Vec::<String>::new(), "{good}");
        }
        let cases = [
            (
                "mysql://root:pw@db/igl",
                "database.url: unsupported scheme \"mysql\" (expected sqlite: or postgres:)",
            ),
            (
                "/var/lib/igl.db",
                "database.url: is not a URL (expected sqlite: or postgres:)",
            ),
            ("sqlite://", "database.url: sqlite URL has no database path"),
            (
                "",
                "database.url: must not be empty (unset it to use the default sqlite file)",
            ),
            (
                "postgres://igl:pw@[::1/igl",
                "database.url: is not a valid postgres URL: invalid IPv6 address",
            ),
        ];
        for (url, expected) in cases {
            let mut settings = Settings::default();
            settings.database.url = Some(SecretString::new(url));
            assert_eq!(problems_of(&settings), [expected], "{url}");
        }
    }

    #[test]
    fn database_url_problems_never_repeat_the_password() {
        let mut settings = Settings::default();
        settings.database.url = Some(SecretString::new("mysql://root:hunter2@db/igl"));
        let message = settings.validate().unwrap_err().to_string();
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn schema_rules() {
        let mut settings = Settings::default();
        settings.database.url = Some(SecretString::new("postgres://localhost/igl"));
        settings.database.schema = Some("igl_test_01".to_owned());
        assert!(settings.validate().is_ok());

        let long_but_valid = format!("a{}", "b".repeat(62));
        settings.database.schema = Some(long_but_valid);
        assert!(settings.validate().is_ok());

        for bad in ["Igl", "1igl", "igl-test", "", &"a".repeat(64)] {
            settings.database.schema = Some(bad.to_owned());
            assert_eq!(
                problems_of(&settings),
                [format!(
                    "database.schema: {bad:?} is not a valid schema name (expected [a-z_][a-z0-9_]{{0,62}})"
                )],
            );
        }

        let mut sqlite = Settings::default();
        sqlite.database.schema = Some("igl".to_owned());
        assert_eq!(
            problems_of(&sqlite),
            ["database.schema: is only supported with postgres (the database is sqlite)"],
        );
    }

    #[test]
    fn ranges() {
        let mut settings = Settings::default();
        settings.database.max_connections = 0;
        settings.database.connect_timeout_secs = 0;
        settings.documents.max_bytes = 0;
        settings.queue.poll_interval_ms = 0;
        settings.queue.lease_secs = 0;
        settings.queue.claim_batch = 1001;
        settings.queue.retry.max_attempts = 0;
        settings.queue.retry.base_delay_ms = 10;
        settings.queue.retry.max_delay_ms = 5;
        settings.log.filter = " ".to_owned();
        settings.components.clear();
        assert_eq!(
            problems_of(&settings),
            [
                "database.max_connections: 0 is out of range (expected 1..=256)",
                "database.connect_timeout_secs: 0 is out of range (expected at least 1)",
                "documents.max_bytes: 0 is out of range (expected at least 1)",
                "queue.poll_interval_ms: 0 is out of range (expected at least 1)",
                "queue.lease_secs: 0 is out of range (expected at least 1)",
                "queue.claim_batch: 1001 is out of range (expected 1..=1000)",
                "queue.retry.max_attempts: 0 is out of range (expected at least 1)",
                "queue.retry.base_delay_ms: 10 is greater than max_delay_ms (5)",
                "log.filter: must not be empty",
                "components: at least one component must be enabled",
            ]
        );
    }

    #[test]
    fn range_bounds_are_inclusive() {
        let mut settings = Settings::default();
        settings.database.max_connections = 256;
        settings.queue.claim_batch = 1000;
        assert!(settings.validate().is_ok());
        settings.database.max_connections = 1;
        settings.queue.claim_batch = 1;
        assert!(settings.validate().is_ok());
    }

    #[test]
    fn amqp_queue_settings_are_checked() {
        let mut settings = Settings::default();
        settings.queue.backend = QueueBackend::Amqp;
        settings.queue.amqp.prefix = "IGL".into();
        settings.queue.amqp.prefetch = 0;
        let error = settings.validate().unwrap_err().to_string();
        assert!(
            error.contains("queue.amqp.url: is required when queue.backend = \"amqp\""),
            "{error}"
        );
        assert!(error.contains("queue.amqp.prefix"), "{error}");
        assert!(error.contains("queue.amqp.prefetch"), "{error}");
        settings.queue.amqp = crate::AmqpSettings {
            url: Some("amqps://igl:hunter2@broker/igl".into()),
            ..crate::AmqpSettings::default()
        };
        settings.validate().unwrap();
        settings.queue.amqp.url = Some("amqp://igl:hunter2@broker/igl".into());
        settings.queue.amqp.ca_file = Some("/etc/igl/broker-ca.pem".into());
        let error = settings.validate().unwrap_err().to_string();
        assert!(
            error.contains("queue.amqp.ca_file: is only used with TLS"),
            "{error}"
        );
        assert!(!error.contains("hunter2"), "{error}");
        settings.queue.amqp.ca_file = None;
        settings.validate().unwrap();
        assert_eq!(
            settings.redacted_amqp_url().as_deref(),
            Some("amqp://igl:[redacted]@broker/igl")
        );
        assert!(!format!("{settings:?}").contains("hunter2"));
    }

    #[test]
    fn per_queue_overrides_are_checked_after_merging() {
        let mut settings = Settings::default();
        settings.queue.queues.insert(
            "deliverer".to_owned(),
            crate::RetryPolicyOverride {
                base_delay_ms: Some(600_000),
                ..Default::default()
            },
        );
        settings.queue.queues.insert(
            "Bad Name".to_owned(),
            crate::RetryPolicyOverride {
                max_attempts: Some(0),
                ..Default::default()
            },
        );
        assert_eq!(
            problems_of(&settings),
            [
                "queue.queues.Bad Name: \"Bad Name\" is not a valid queue name (expected [a-z][a-z0-9_-]*)",
                "queue.queues.Bad Name.max_attempts: 0 is out of range (expected at least 1)",
                "queue.queues.deliverer.base_delay_ms: 600000 is greater than max_delay_ms (300000)",
            ]
        );
    }
}
