use std::net::SocketAddr;
use std::path::PathBuf;

use super::*;
use crate::{Component, DatabaseBackend, LogFormat, ObjectStoreSettings, RetryPolicy};

/// A TOML file in a temporary directory that lives as long as the value.
struct ConfigFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn config_file(toml: &str) -> ConfigFile {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("igl.toml");
    std::fs::write(&path, toml).expect("write config file");
    ConfigFile { _dir: dir, path }
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

fn load(toml: Option<&str>, pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let file = toml.map(config_file);
    Settings::load(file.as_ref().map(|file| file.path.as_path()), env(pairs))
}

/// The problems of a failed load, displayed without their origin.
fn problems(result: Result<Settings, ConfigError>) -> Vec<String> {
    let error = result.expect_err("configuration should be invalid");
    assert!(!error.problems().is_empty(), "{error}");
    error
        .problems()
        .iter()
        .map(|problem| {
            ConfigProblem {
                origin: None,
                ..problem.clone()
            }
            .to_string()
        })
        .collect()
}

#[test]
fn defaults_load_with_no_file_and_empty_env() {
    let settings = Settings::load(None, Vec::new()).expect("defaults are valid");
    assert_eq!(settings, Settings::default());
    assert_eq!(settings.node.jurisdiction, "AU");
    assert_eq!(settings.node.data_dir, PathBuf::from("./data"));
    assert_eq!(settings.database_url(), "sqlite://./data/igl.db");
    assert_eq!(settings.database.backend(), DatabaseBackend::Sqlite);
    assert_eq!(settings.database.max_connections, 8);
    assert_eq!(settings.database.connect_timeout_secs, 10);
    assert_eq!(settings.objects, ObjectStoreSettings::Local { path: None });
    assert_eq!(
        settings.local_objects_path(),
        Some(PathBuf::from("./data/objects"))
    );
    assert_eq!(settings.documents.max_bytes, 100 * 1024 * 1024);
    assert_eq!(settings.queue.poll_interval_ms, 500);
    assert_eq!(settings.queue.lease_secs, 30);
    assert_eq!(settings.queue.claim_batch, 64);
    assert_eq!(
        settings.queue.retry,
        RetryPolicy {
            max_attempts: 8,
            base_delay_ms: 1000,
            max_delay_ms: 300_000
        }
    );
    assert_eq!(
        settings.http.bind,
        "127.0.0.1:8080".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(settings.log.format, LogFormat::Pretty);
    assert_eq!(settings.log.filter, "info");
    assert_eq!(settings.components, Component::all());
}

#[test]
fn empty_file_gives_the_defaults() {
    assert_eq!(load(Some(""), &[]).unwrap(), Settings::default());
}

#[test]
fn file_overrides_defaults() {
    let settings = load(
        Some(
            r#"
            components = ["message-api", "router"]

            [node]
            jurisdiction = "SG"
            data_dir = "/var/lib/igl"

            [database]
            url = "postgres://igl:s3cr3t@db:5432/igl"
            max_connections = 32
            schema = "igl_sg"

            [objects]
            type = "local"
            path = "/srv/objects"

            [documents]
            max_bytes = 1024

            [queue]
            claim_batch = 10

            [queue.retry]
            max_attempts = 3

            [queue.queues.deliverer]
            max_delay_ms = 60000

            [http]
            bind = "0.0.0.0:9000"

            [log]
            format = "json"
            filter = "info,igl=debug"
            "#,
        ),
        &[],
    )
    .expect("valid file");
    assert_eq!(settings.node.jurisdiction, "SG");
    assert_eq!(settings.node.data_dir, PathBuf::from("/var/lib/igl"));
    assert_eq!(settings.database.backend(), DatabaseBackend::Postgres);
    assert_eq!(settings.database_url(), "postgres://igl:s3cr3t@db:5432/igl");
    assert_eq!(settings.database.max_connections, 32);
    assert_eq!(settings.database.schema.as_deref(), Some("igl_sg"));
    assert_eq!(settings.database.connect_timeout_secs, 10, "default kept");
    assert_eq!(
        settings.local_objects_path(),
        Some(PathBuf::from("/srv/objects"))
    );
    assert_eq!(settings.documents.max_bytes, 1024);
    assert_eq!(settings.queue.claim_batch, 10);
    assert_eq!(settings.queue.lease_secs, 30, "default kept");
    assert_eq!(settings.queue.retry.max_attempts, 3);
    assert_eq!(settings.queue.retry.base_delay_ms, 1000, "default kept");
    assert_eq!(
        settings.queue.retry_policy("deliverer"),
        RetryPolicy {
            max_attempts: 3,
            base_delay_ms: 1000,
            max_delay_ms: 60_000
        }
    );
    assert_eq!(settings.queue.retry_policy("router"), settings.queue.retry);
    assert_eq!(
        settings.http.bind,
        "0.0.0.0:9000".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(settings.log.format, LogFormat::Json);
    assert_eq!(settings.log.filter, "info,igl=debug");
    assert_eq!(
        settings.components,
        [Component::MessageApi, Component::Router]
    );
    assert!(settings.is_enabled(Component::Router));
    assert!(!settings.is_enabled(Component::Deliverer));
}

#[test]
fn data_dir_moves_the_derived_defaults() {
    let settings = load(Some("[node]\ndata_dir = \"/tmp/igl-au\"\n"), &[]).unwrap();
    assert_eq!(settings.database_url(), "sqlite:///tmp/igl-au/igl.db");
    assert_eq!(
        settings.local_objects_path(),
        Some(PathBuf::from("/tmp/igl-au/objects"))
    );
}

#[test]
fn env_overrides_file() {
    let settings = load(
        Some(
            "[node]\njurisdiction = \"SG\"\ndata_dir = \"/from/file\"\n[log]\nformat = \"json\"\n",
        ),
        &[
            ("IGL_NODE__JURISDICTION", "NZ"),
            ("IGL_LOG__FORMAT", "pretty"),
        ],
    )
    .unwrap();
    assert_eq!(settings.node.jurisdiction, "NZ");
    assert_eq!(
        settings.node.data_dir,
        PathBuf::from("/from/file"),
        "file kept"
    );
    assert_eq!(settings.log.format, LogFormat::Pretty);
}

#[test]
fn nested_env_sets_numbers_maps_and_secrets() {
    let settings = load(
        None,
        &[
            ("IGL_DATABASE__URL", "postgresql://igl:pw@db/igl"),
            ("IGL_DATABASE__MAX_CONNECTIONS", "16"),
            ("IGL_QUEUE__RETRY__MAX_DELAY_MS", "5000"),
            ("IGL_QUEUE__QUEUES__ROUTER__MAX_ATTEMPTS", "2"),
            ("IGL_OBJECTS__TYPE", "local"),
            ("IGL_OBJECTS__PATH", "/objects"),
            ("IGL_HTTP__BIND", "[::1]:0"),
        ],
    )
    .unwrap();
    assert_eq!(settings.database.backend(), DatabaseBackend::Postgres);
    assert_eq!(settings.database_url(), "postgresql://igl:pw@db/igl");
    assert_eq!(settings.database.max_connections, 16);
    assert_eq!(settings.queue.retry.max_delay_ms, 5000);
    assert_eq!(settings.queue.retry_policy("router").max_attempts, 2);
    assert_eq!(settings.queue.retry_policy("router").max_delay_ms, 5000);
    assert_eq!(
        settings.local_objects_path(),
        Some(PathBuf::from("/objects"))
    );
    assert_eq!(settings.http.bind, "[::1]:0".parse::<SocketAddr>().unwrap());
}

#[test]
fn env_components_is_a_comma_separated_list() {
    let settings = load(
        Some("components = [\"admin-api\"]\n"),
        &[("IGL_COMPONENTS", " message-processor, deliverer ,")],
    )
    .unwrap();
    assert_eq!(
        settings.components,
        [Component::MessageProcessor, Component::Deliverer]
    );
}

#[test]
fn unrelated_igl_variables_are_ignored() {
    let settings = load(
        None,
        &[
            ("IGL_CONFIG", "/etc/igl.toml"),
            ("IGL_TEST_QUEUE", "postgres"),
            ("PATH", "/usr/bin"),
            ("RUST_LOG", "debug"),
        ],
    )
    .unwrap();
    assert_eq!(settings, Settings::default());
}

#[test]
fn unknown_key_in_file_is_an_error_naming_it() {
    let error = load(
        Some("[node]\njurisdiction = \"AU\"\ndatadir = \"x\"\n"),
        &[],
    )
    .unwrap_err();
    let [problem] = error.problems() else {
        panic!("expected one problem: {error}");
    };
    assert_eq!(problem.key.as_deref(), Some("node.datadir"));
    assert_eq!(
        problem.message,
        "unknown field \"datadir\" (expected one of: jurisdiction, data_dir, public_url)"
    );
    let origin = problem.origin.as_deref().unwrap();
    assert!(
        origin.starts_with("file ") && origin.ends_with("igl.toml"),
        "{origin}"
    );
}

#[test]
fn unknown_keys_are_errors_at_every_level() {
    assert_eq!(
        problems(load(Some("colour = \"blue\"\n"), &[])),
        [
            "colour: unknown field \"colour\" (expected one of: node, database, objects, \
          documents, queue, http, auth, hub, channels, channel_endpoint, jurisdictions, log, \
          components)"
        ]
    );
    assert_eq!(
        problems(load(
            Some("[objects]\ntype = \"local\"\nbucket = \"b\"\n"),
            &[]
        )),
        ["objects.bucket: unknown field \"bucket\" (expected one of: path)"]
    );
    assert_eq!(
        problems(load(Some("[queue.queues.router]\nmax_attempt = 1\n"), &[])),
        [
            "queue.queues.router.max_attempt: unknown field \"max_attempt\" (expected one of: \
          max_attempts, base_delay_ms, max_delay_ms)"
        ]
    );
    assert_eq!(
        problems(load(Some("[objects]\ntype = \"s4\"\n"), &[])),
        ["objects.type: unknown value \"s4\" (expected one of: local, s3)"]
    );
    assert_eq!(
        problems(load(Some("[objects]\npath = \"/x\"\n"), &[])),
        ["objects.type: is required"]
    );
}

#[test]
fn unknown_key_in_env_names_the_variable() {
    let error = load(None, &[("IGL_DATABSE__URL", "sqlite://x.db")]).unwrap_err();
    let [problem] = error.problems() else {
        panic!("expected one problem: {error}");
    };
    assert_eq!(problem.key.as_deref(), Some("databse"));
    assert_eq!(
        problem.origin.as_deref(),
        Some("environment variable IGL_DATABSE__URL")
    );

    let error = load(None, &[("IGL_NODE__JURISDICTON", "SG")]).unwrap_err();
    assert_eq!(
        error.problems()[0].to_string(),
        "node.jurisdicton: unknown field \"jurisdicton\" (expected one of: jurisdiction, \
         data_dir, public_url) (from environment variable IGL_NODE__JURISDICTON)"
    );
}

#[test]
fn malformed_env_names_are_errors() {
    let error = load(None, &[("IGL_NODE____JURISDICTION", "SG")]).unwrap_err();
    assert_eq!(
        error.problems()[0].to_string(),
        "malformed variable name (empty segment between \"__\") \
         (from environment variable IGL_NODE____JURISDICTION)"
    );
}

#[test]
fn wrong_types_name_the_key() {
    assert_eq!(
        problems(load(None, &[("IGL_QUEUE__CLAIM_BATCH", "many")])),
        ["queue.claim_batch: invalid type: found string \"many\", expected u32"]
    );
    assert_eq!(
        problems(load(Some("[http]\nbind = \"localhost\"\n"), &[])),
        ["http.bind: invalid socket address syntax"]
    );
    assert_eq!(
        problems(load(None, &[("IGL_LOG__FORMAT", "xml")])),
        ["log.format: unknown value \"xml\" (expected one of: pretty, json)"]
    );
}

#[test]
fn toml_syntax_errors_name_the_file() {
    let error = load(Some("[node\n"), &[]).unwrap_err();
    let [problem] = error.problems() else {
        panic!("expected one problem: {error}");
    };
    assert_eq!(problem.key, None);
    assert!(problem.message.contains("line 1"), "{}", problem.message);
    assert!(problem.origin.as_deref().unwrap().ends_with("igl.toml"));
}

#[test]
fn missing_file_is_a_read_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let error = Settings::load(Some(&path), Vec::new()).unwrap_err();
    assert!(matches!(&error, ConfigError::ReadFile { path: p, .. } if *p == path));
    assert!(error.to_string().contains("absent.toml"), "{error}");
}

#[test]
fn bad_jurisdiction_names_the_key_and_the_variable() {
    let error = load(None, &[("IGL_NODE__JURISDICTION", "au")]).unwrap_err();
    assert_eq!(
        error.problems()[0].to_string(),
        "node.jurisdiction: \"au\" is not an upper-case ISO 3166-1 alpha-2 code \
         (from environment variable IGL_NODE__JURISDICTION)"
    );
}

#[test]
fn bad_url_scheme_names_the_key() {
    assert_eq!(
        problems(load(
            Some("[database]\nurl = \"mysql://root:pw@db/igl\"\n"),
            &[]
        )),
        ["database.url: unsupported scheme \"mysql\" (expected sqlite: or postgres:)"]
    );
}

#[test]
fn bad_schema_names_the_key() {
    assert_eq!(
        problems(load(
            None,
            &[
                ("IGL_DATABASE__URL", "postgres://db/igl"),
                ("IGL_DATABASE__SCHEMA", "Igl-Test")
            ]
        )),
        [
            "database.schema: \"Igl-Test\" is not a valid schema name (expected \
          [a-z_][a-z0-9_]{0,62})"
        ]
    );
}

#[test]
fn out_of_range_values_name_the_key() {
    assert_eq!(
        problems(load(
            Some("[database]\nmax_connections = 1000\n[queue]\nclaim_batch = 0\n"),
            &[]
        )),
        [
            "database.max_connections: 1000 is out of range (expected 1..=256)",
            "queue.claim_batch: 0 is out of range (expected 1..=1000)",
        ]
    );
}

#[test]
fn all_problems_are_collected_with_their_origins() {
    let error = load(
        Some(
            "[node]\njurisdiction = \"Australia\"\n[database]\nurl = \"mysql://root:hunter2@db/x\"\n",
        ),
        &[
            ("IGL_DATABASE__MAX_CONNECTIONS", "0"),
            ("IGL_QUEUE__RETRY__BASE_DELAY_MS", "999999"),
            ("IGL_COMPONENTS", ""),
        ],
    )
    .unwrap_err();
    let lines: Vec<String> = error.problems().iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 5, "{lines:#?}");
    assert!(lines[0].starts_with("node.jurisdiction: \"Australia\" is not"));
    assert!(lines[0].contains("(from file "));
    assert!(lines[1].starts_with("database.url: unsupported scheme \"mysql\""));
    assert_eq!(
        lines[2],
        "database.max_connections: 0 is out of range (expected 1..=256) \
         (from environment variable IGL_DATABASE__MAX_CONNECTIONS)"
    );
    assert_eq!(
        lines[3],
        "queue.retry.base_delay_ms: 999999 is greater than max_delay_ms (300000) \
         (from environment variable IGL_QUEUE__RETRY__BASE_DELAY_MS)"
    );
    assert_eq!(
        lines[4],
        "components: at least one component must be enabled \
         (from environment variable IGL_COMPONENTS)"
    );
    assert!(!error.to_string().contains("hunter2"), "{error}");
}

#[test]
fn unknown_component_in_env_lists_the_valid_names() {
    let error = load(None, &[("IGL_COMPONENTS", "router,routr")]).unwrap_err();
    let [problem] = error.problems() else {
        panic!("expected one problem: {error}");
    };
    assert_eq!(problem.key.as_deref(), Some("components.1"));
    assert!(
        problem
            .message
            .starts_with("unknown component \"routr\" (expected one of: message-api, "),
        "{}",
        problem.message
    );
    assert_eq!(
        problem.origin.as_deref(),
        Some("environment variable IGL_COMPONENTS")
    );
}

#[test]
fn debug_of_settings_never_contains_the_password() {
    let settings = load(
        Some("[database]\nurl = \"postgres://igl:file-pw-123@db/igl?password=query-pw-456\"\n"),
        &[],
    )
    .unwrap();
    let debug = format!("{settings:?}");
    assert!(!debug.contains("file-pw-123"), "{debug}");
    assert!(!debug.contains("query-pw-456"), "{debug}");
    assert!(debug.contains("[redacted]"), "{debug}");
    let pretty_debug = format!("{settings:#?}");
    assert!(!pretty_debug.contains("file-pw-123"));

    let redacted = settings.redacted_database_url();
    assert_eq!(
        redacted,
        "postgres://igl:[redacted]@db/igl?password=[redacted]"
    );

    let from_env = load(
        None,
        &[("IGL_DATABASE__URL", "postgres://u:env-pw-789@db/igl")],
    )
    .unwrap();
    assert!(!format!("{from_env:?}").contains("env-pw-789"));
}

#[test]
fn top_level_keys_match_the_settings_fields() {
    // `TOP_LEVEL_KEYS` decides which `IGL_*` variables without `__` are settings; it must
    // list exactly the fields of `Settings`, which figment reports for an unknown key.
    let error = Figment::from(figment::providers::Serialized::defaults(
        std::collections::BTreeMap::from([("no_such_key", 1)]),
    ))
    .extract::<Settings>()
    .unwrap_err();
    let Kind::UnknownField(_, expected) = error.kind else {
        panic!("unexpected error {error}");
    };
    assert_eq!(expected, TOP_LEVEL_KEYS);
}

#[test]
fn the_channel_endpoint_section_loads_from_file_and_environment() {
    let settings = load(
        Some("[channel_endpoint]\njurisdiction = \"SG\"\npeers = [\"AU\"]\n"),
        &[
            ("IGL_CHANNEL_ENDPOINT__LISTEN", "0.0.0.0:8181"),
            (
                "IGL_CHANNEL_ENDPOINT__MEDIUM_URL",
                "postgres://channel:medium-pw@db/au_sg",
            ),
        ],
    )
    .unwrap();
    let endpoint = &settings.channel_endpoint;
    assert_eq!(endpoint.jurisdiction_or("AU"), "SG");
    assert_eq!(endpoint.peers, ["AU"]);
    assert_eq!(endpoint.listen.to_string(), "0.0.0.0:8181");
    let summary = endpoint.summary(std::path::Path::new("/var/igl"), "AU");
    assert_eq!(
        summary,
        "SG on 0.0.0.0:8181 (medium postgres://channel:[redacted]@db/au_sg, \
         state sqlite:///var/igl/channel-sg.db, peers AU)"
    );
    assert!(!format!("{settings:?}").contains("medium-pw"));
    let error = load(Some("[channel_endpoint]\nmedium_schema = \"x\"\n"), &[]).unwrap_err();
    assert_eq!(
        problems(Err(error)),
        ["channel_endpoint.medium_schema: is only supported with a postgres URL"]
    );
}

#[test]
fn s3_objects_from_file_and_env() {
    let settings = load(
        Some(
            r#"
            [objects]
            type = "s3"
            bucket = "igl-au"
            endpoint = "http://127.0.0.1:9000"
            allow_http = true
            prefix = "au"
            access_key_id = "AKIAFILE"
            secret_access_key = "file-secret-123"
            "#,
        ),
        &[
            ("IGL_OBJECTS__REGION", "ap-southeast-2"),
            ("IGL_OBJECTS__PATH_STYLE", "false"),
        ],
    )
    .unwrap();
    let ObjectStoreSettings::S3(s3) = &settings.objects else {
        panic!("expected s3 objects, got {:?}", settings.objects);
    };
    assert_eq!(s3.bucket, "igl-au");
    assert_eq!(s3.region, "ap-southeast-2");
    assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
    assert!(s3.allow_http);
    assert!(!s3.path_style);
    assert_eq!(s3.prefix.as_deref(), Some("au"));
    assert_eq!(s3.access_key_id.as_deref(), Some("AKIAFILE"));
    assert_eq!(
        s3.secret_access_key.as_ref().map(|s| s.expose_secret()),
        Some("file-secret-123")
    );
    assert_eq!(settings.local_objects_path(), None);
    assert!(!format!("{settings:?}").contains("file-secret-123"));

    let from_env = load(
        None,
        &[
            ("IGL_OBJECTS__TYPE", "s3"),
            ("IGL_OBJECTS__BUCKET", "igl-sg"),
        ],
    )
    .unwrap();
    assert_eq!(
        from_env.objects,
        ObjectStoreSettings::S3(crate::S3ObjectSettings::new("igl-sg"))
    );
}

#[test]
fn s3_objects_problems_name_their_keys() {
    assert_eq!(
        problems(load(
            None,
            &[
                ("IGL_OBJECTS__TYPE", "s3"),
                ("IGL_OBJECTS__BUCKET", "igl-au"),
                ("IGL_OBJECTS__ALLOW_HTTP", "maybe"),
            ]
        )),
        ["objects: invalid value \"maybe\", expected a boolean (true or false)"]
    );
    assert_eq!(
        problems(load(Some("[objects]\ntype = \"s3\"\n"), &[])),
        ["objects.bucket: is required"]
    );
    assert_eq!(
        problems(load(
            Some("[objects]\ntype = \"s3\"\nbucket = \"b\"\npath = \"/x\"\n"),
            &[]
        )),
        [
            "objects.path: unknown field \"path\" (expected one of: bucket, region, endpoint, \
          path_style, allow_http, prefix, access_key_id, secret_access_key, session_token)"
        ]
    );
    assert_eq!(
        problems(load(
            Some(
                "[objects]\ntype = \"s3\"\nbucket = \"Igl_AU\"\nendpoint = \"http://s3:9000\"\n\
                 [documents]\nmax_bytes = 6000000000\n"
            ),
            &[]
        )),
        [
            "objects.bucket: \"Igl_AU\" is not a valid S3 bucket name (3-63 lower-case letters, \
             digits, dots and hyphens, starting and ending with a letter or digit)",
            "objects.endpoint: is a plain http URL but objects.allow_http is false (set it to \
             true for an S3 server on a trusted network)",
            "documents.max_bytes: 6000000000 is larger than 5368709120 (5 GiB), the largest \
             document the s3 object store accepts",
        ]
    );
}
