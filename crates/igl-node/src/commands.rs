//! One function per subcommand: load the configuration, set up logging and the runtime, then
//! call into [`crate::run`].

use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use igl_config::{ConfigError, LogFormat, ObjectStoreSettings, Settings};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::cli::{BenchCommand, ChannelArgs, Cli, Command, ConfigCommand, NodeArgs};
use crate::{bench, demo, run, shutdown, telemetry};

/// How long the runtime waits for blocking tasks after a command returns.
const RUNTIME_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// The variables of the process environment, read once by `main`.
#[derive(Debug)]
pub struct ProcessEnv {
    /// Every variable (UTF-8 ones only); the loader picks the `IGL_*` ones.
    pub vars: Vec<(String, String)>,
}

impl ProcessEnv {
    fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Why a command failed; decides the exit code.
#[derive(Debug)]
pub enum CommandError {
    /// The configuration is missing or invalid: exit code 2.
    Config(ConfigError),
    /// The command failed while running: exit code 1.
    Runtime {
        /// The error, reported with its whole chain.
        error: anyhow::Error,
        /// The log format in use, to also report the error as a structured event.
        log_format: Option<LogFormat>,
    },
}

impl CommandError {
    fn runtime(error: anyhow::Error, log_format: LogFormat) -> Self {
        CommandError::Runtime {
            error,
            log_format: Some(log_format),
        }
    }

    /// Reports the error on stderr and returns the exit code: 2 for configuration errors,
    /// with one line per problem; 1 for runtime errors, with the error chain.
    pub fn report(self) -> ExitCode {
        match self {
            CommandError::Config(error) => {
                eprint!("{}", render_config_error(&error));
                ExitCode::from(2)
            }
            CommandError::Runtime { error, log_format } => {
                if log_format == Some(LogFormat::Json) {
                    // Log collectors see a structured event; the plain line below is for humans.
                    tracing::error!(error = %format_args!("{error:#}"), "command failed");
                }
                eprintln!("error: {error:#}");
                ExitCode::from(1)
            }
        }
    }
}

/// The stderr text for a configuration error: a header, then one line per problem.
fn render_config_error(error: &ConfigError) -> String {
    match error {
        ConfigError::Invalid(problems) => {
            let count = problems.len();
            let plural = if count == 1 { "" } else { "s" };
            let mut text = format!("error: invalid configuration ({count} problem{plural})\n");
            for problem in problems {
                // Continuation lines (e.g. of a TOML syntax error) stay under their problem.
                let problem = problem.to_string().replace('\n', "\n    ");
                text.push_str(&format!("  {problem}\n"));
            }
            text
        }
        other => {
            let mut text = format!("error: {other}");
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text.push('\n');
            text
        }
    }
}

/// Runs the command selected on the command line.
///
/// # Errors
///
/// [`CommandError::Config`] if the configuration cannot be loaded or is invalid,
/// [`CommandError::Runtime`] if the command itself fails.
pub fn execute(cli: Cli, env: ProcessEnv) -> Result<(), CommandError> {
    let mut settings = load_settings(cli.config.as_deref(), &env)?;
    if let Some(format) = cli.log_format {
        settings.log.format = format.into();
    }
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            check_config(&settings, cli.config.as_deref(), &env)?;
            Ok(())
        }
        Command::Migrate => migrate(settings, &env),
        Command::Node(args) => node(settings, args, &env),
        Command::Channel(args) => channel(settings, args, cli.config.as_deref(), &env),
        Command::Demo(args) => {
            // The demo's output is its story; the nodes only speak up about problems.
            settings.log.filter = "warn".into();
            init_logging(&settings, &env)?;
            let log_format = settings.log.format;
            block_on(demo::run_demo(args)).map_err(|error| CommandError::runtime(error, log_format))
        }
        Command::Bench { benchmark } => {
            init_logging(&settings, &env)?;
            let log_format = settings.log.format;
            block_on(async move {
                match benchmark {
                    BenchCommand::Queue(args) => bench::run_queue_bench(args).await,
                    BenchCommand::Ingest(args) => bench::run_ingest_bench(args).await,
                    BenchCommand::E2e(args) => bench::run_e2e_bench(args).await,
                    BenchCommand::Cluster(args) => bench::run_cluster_bench(args).await,
                    BenchCommand::Fanout(args) => bench::run_fanout_bench(args).await,
                    BenchCommand::Documents(args) => bench::run_documents_bench(args).await,
                }
            })
            .map_err(|error| CommandError::runtime(error, log_format))
        }
    }
}

fn load_settings(config_file: Option<&Path>, env: &ProcessEnv) -> Result<Settings, CommandError> {
    Settings::load(config_file, env.vars.iter().cloned()).map_err(CommandError::Config)
}

/// Sets up logging from `settings.log` and `RUST_LOG`.
fn init_logging(settings: &Settings, env: &ProcessEnv) -> Result<(), CommandError> {
    let filter = telemetry::build_filter(&settings.log, env.get("RUST_LOG"))
        .map_err(|problem| CommandError::Config(ConfigError::Invalid(vec![problem])))?;
    telemetry::init(settings.log.format, filter).map_err(|error| CommandError::Runtime {
        error,
        log_format: None,
    })
}

/// `igl config check`: prints a redacted summary on stdout.
fn check_config(
    settings: &Settings,
    config_file: Option<&Path>,
    env: &ProcessEnv,
) -> Result<(), CommandError> {
    // The log filter is only parsed by the binary; check it too.
    telemetry::build_filter(&settings.log, env.get("RUST_LOG"))
        .map_err(|problem| CommandError::Config(ConfigError::Invalid(vec![problem])))?;
    let summary = render_summary(settings, config_file);
    io::stdout()
        .write_all(summary.as_bytes())
        .context("failed to write the summary to stdout")
        .map_err(|error| CommandError::runtime(error, settings.log.format))
}

/// The redacted summary printed by `igl config check`.
fn render_summary(settings: &Settings, config_file: Option<&Path>) -> String {
    let config_file = match config_file {
        Some(path) => path.display().to_string(),
        None => "none (built-in defaults and environment)".to_owned(),
    };
    let objects = match &settings.objects {
        ObjectStoreSettings::Local { .. } => format!(
            "local directory {}",
            settings
                .local_objects_path()
                .expect("local object store has a path")
                .display()
        ),
        ObjectStoreSettings::S3(s3) => s3.describe(),
    };
    let components: Vec<&str> = settings
        .enabled_components()
        .into_iter()
        .map(|component| component.as_str())
        .collect();
    let lines = [
        ("config file", config_file),
        ("jurisdiction", settings.node.jurisdiction.clone()),
        ("data dir", settings.node.data_dir.display().to_string()),
        (
            "database",
            format!(
                "{} {}",
                settings.database.backend(),
                settings.redacted_database_url()
            ),
        ),
        ("objects", objects),
        (
            "job queue",
            match settings.queue.backend {
                igl_config::QueueBackend::Sql => "sql (the database's jobs table)".to_owned(),
                igl_config::QueueBackend::Amqp => format!(
                    "amqp {} (through the SQL outbox)",
                    settings.redacted_amqp_url().unwrap_or_default()
                ),
            },
        ),
        ("http bind", settings.http.bind.to_string()),
        (
            "log",
            format!("{} (filter {:?})", settings.log.format, settings.log.filter),
        ),
        ("components", components.join(", ")),
    ];
    let mut summary = String::from("configuration is valid\n");
    for (label, value) in lines {
        summary.push_str(&format!("  {:<13} {value}\n", format!("{label}:")));
    }
    summary
}

/// `igl migrate`.
fn migrate(settings: Settings, env: &ProcessEnv) -> Result<(), CommandError> {
    init_logging(&settings, env)?;
    let log_format = settings.log.format;
    block_on(async move { run::migrate(&settings).await })
        .map_err(|error| CommandError::runtime(error, log_format))
}

/// `igl node`: runs until SIGINT or SIGTERM.
fn node(mut settings: Settings, args: NodeArgs, env: &ProcessEnv) -> Result<(), CommandError> {
    if !args.components.is_empty() {
        settings.components = args.components;
    }
    let dev_token = if args.dev {
        if let Some(jurisdiction) = args.jurisdiction {
            settings.node.jurisdiction = jurisdiction;
        }
        if let Some(data_dir) = args.data_dir {
            settings.node.data_dir = data_dir;
        }
        if let Some(listen) = args.listen {
            settings.http.bind = listen;
        }
        // Local subscribers (a demo callback on 127.0.0.1) must work in development.
        settings.hub.allow_private_callbacks = true;
        settings.validate().map_err(CommandError::Config)?;
        Some(
            env.get("IGL_DEV_TOKEN")
                .filter(|token| !token.is_empty())
                .map(str::to_owned)
                .unwrap_or_else(igl_api::auth::generate_dev_token),
        )
    } else {
        None
    };
    init_logging(&settings, env)?;
    let log_format = settings.log.format;
    block_on(async move {
        let shutdown = CancellationToken::new();
        shutdown::spawn_signal_listener(shutdown.clone())?;
        let components: Vec<&str> = settings
            .enabled_components()
            .into_iter()
            .map(|component| component.as_str())
            .collect();
        info!(
            version = env!("CARGO_PKG_VERSION"),
            jurisdiction = %settings.node.jurisdiction,
            components = %components.join(","),
            dev = dev_token.is_some(),
            "starting node"
        );
        let jurisdiction = settings.node.jurisdiction.clone();
        let options = igl_node::NodeOptions {
            settings,
            dev_token: dev_token.clone(),
            listener: None,
        };
        let running = igl_node::start(options, shutdown).await?;
        if let (Some(token), Some(addr)) = (&dev_token, running.http_addr) {
            print_dev_banner(&jurisdiction, addr, token);
        }
        running.wait().await
    })
    .map_err(|error| CommandError::runtime(error, log_format))
}

/// `igl channel`: runs the shared-db channel endpoint until SIGINT or SIGTERM; with
/// `--check`, validates and prints its settings instead.
fn channel(
    mut settings: Settings,
    args: ChannelArgs,
    config_file: Option<&Path>,
    env: &ProcessEnv,
) -> Result<(), CommandError> {
    let endpoint = &mut settings.channel_endpoint;
    if let Some(jurisdiction) = args.jurisdiction {
        endpoint.jurisdiction = Some(jurisdiction);
    }
    if let Some(medium) = args.medium {
        endpoint.medium_url = Some(igl_config::SecretString::new(medium));
    }
    if let Some(state) = args.state {
        endpoint.state_url = Some(igl_config::SecretString::new(state));
    }
    if let Some(listen) = args.listen {
        endpoint.listen = listen;
    }
    if let Some(public_url) = args.public_url {
        endpoint.public_url = Some(public_url);
    }
    if !args.peers.is_empty() {
        endpoint.peers = args.peers;
    }
    if args.dev {
        endpoint.allow_loopback_callbacks = true;
    }
    settings.validate().map_err(CommandError::Config)?;
    if args.check {
        telemetry::build_filter(&settings.log, env.get("RUST_LOG"))
            .map_err(|problem| CommandError::Config(ConfigError::Invalid(vec![problem])))?;
        let config_file = config_file.map_or_else(
            || "none (built-in defaults and environment)".to_owned(),
            |path| path.display().to_string(),
        );
        let summary = format!(
            "configuration is valid\n  config file:      {config_file}\n  channel endpoint: {}\n  callbacks:        {}\n",
            settings
                .channel_endpoint
                .summary(&settings.node.data_dir, &settings.node.jurisdiction),
            if settings.channel_endpoint.allow_loopback_callbacks {
                "loopback and private addresses allowed"
            } else {
                "public addresses only"
            },
        );
        return io::stdout()
            .write_all(summary.as_bytes())
            .context("failed to write the summary to stdout")
            .map_err(|error| CommandError::runtime(error, settings.log.format));
    }
    init_logging(&settings, env)?;
    let log_format = settings.log.format;
    block_on(async move {
        let shutdown = CancellationToken::new();
        shutdown::spawn_signal_listener(shutdown.clone())?;
        info!(
            version = env!("CARGO_PKG_VERSION"),
            endpoint = %settings
                .channel_endpoint
                .summary(&settings.node.data_dir, &settings.node.jurisdiction),
            "starting channel endpoint"
        );
        let running = igl_node::channel::start_channel(&settings, None, shutdown).await?;
        // One parseable line on stdout once the listener is bound (port 0 gets its port).
        println!(
            "igl channel {} listening on http://{} (public url {})",
            running.jurisdiction, running.addr, running.public_url
        );
        running.wait().await
    })
    .map_err(|error| CommandError::runtime(error, log_format))
}

/// What `igl node --dev` prints on stdout once the node listens.
fn print_dev_banner(jurisdiction: &str, addr: std::net::SocketAddr, token: &str) {
    let base = format!("http://{addr}");
    println!(
        "\nIGL node {jurisdiction} (development mode) listening on {base}\n\
         development token (party \"dev\" of {jurisdiction}; fix it with IGL_DEV_TOKEN):\n\n  \
         {token}\n\n\
         try:\n  \
         curl -s -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\\n    \
         -d '{{\"sender\":\"{jurisdiction}\",\"receiver\":\"SG\",\"subject\":\"demo.subject.1\",\"obj\":\"https://example.org/coo/1\",\"predicate\":\"UN.CEFACT.Trade.CertificateOfOrigin.created\"}}' \\\n    \
         {base}/api/v1/messages\n  \
         open {base}/api/docs for the API documentation\n"
    );
}

/// Runs `future` on a new multi-threaded runtime, then shuts the runtime down, waiting at most
/// [`RUNTIME_SHUTDOWN_TIMEOUT`] for blocking tasks.
fn block_on<F>(future: F) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    let result = runtime.block_on(future);
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
    result
}

#[cfg(test)]
mod tests {
    use igl_config::{ConfigProblem, SecretString};

    use super::*;

    #[test]
    fn summary_is_redacted() {
        let mut settings = Settings::default();
        settings.database.url = Some(SecretString::new("postgres://igl:hunter2@db/igl"));
        let summary = render_summary(&settings, None);
        assert!(summary.contains("jurisdiction: AU"), "{summary}");
        assert!(
            summary.contains("postgres postgres://igl:[redacted]@db/igl"),
            "{summary}"
        );
        assert!(!summary.contains("hunter2"), "{summary}");
        assert!(
            summary.contains("local directory ./data/objects"),
            "{summary}"
        );
    }

    #[test]
    fn config_errors_render_one_problem_per_line() {
        let error = ConfigError::Invalid(vec![
            ConfigProblem::new("node.jurisdiction", "bad"),
            ConfigProblem::new("database.url", "worse"),
        ]);
        assert_eq!(
            render_config_error(&error),
            "error: invalid configuration (2 problems)\n  node.jurisdiction: bad\n  database.url: worse\n"
        );
    }

    #[test]
    fn read_errors_render_their_cause() {
        let error = ConfigError::ReadFile {
            path: "/nope/igl.toml".into(),
            source: io::Error::new(io::ErrorKind::NotFound, "not found"),
        };
        assert_eq!(
            render_config_error(&error),
            "error: cannot read configuration file /nope/igl.toml: not found\n"
        );
    }
}
