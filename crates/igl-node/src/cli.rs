//! The command line of `igl` (clap derive).
//!
//! Flags control process behaviour (where the config file is, log format, which components
//! this process runs); everything about topology lives in the configuration (STYLE R25).

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand, ValueEnum};
use igl_config::{Component, LogFormat};

/// The `igl` command line.
#[derive(Debug, Parser)]
#[command(
    name = "igl",
    version,
    about = "Inter-Government Ledger node",
    propagate_version = true
)]
pub struct Cli {
    /// TOML configuration file; without it, built-in defaults and IGL_* variables are used.
    #[arg(long, global = true, env = "IGL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log output format; overrides `log.format` from the configuration.
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormatArg>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `igl`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inspect the configuration.
    Config {
        /// What to do with the configuration.
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Create or upgrade the database schema, then exit.
    Migrate,
    /// Run the node (every enabled component) until SIGINT or SIGTERM.
    Node(NodeArgs),
    /// Run our shared-db channel endpoint (`[channel_endpoint]`) until SIGINT or SIGTERM.
    Channel(ChannelArgs),
    /// Start AU and SG nodes and a channel in this process, send Certificates of Origin
    /// from AU to SG and show every step of their journey (no configuration needed).
    Demo(crate::demo::DemoArgs),
    /// Run a benchmark and print its figures (see docs/benchmarks.md).
    Bench {
        /// Which benchmark.
        #[command(subcommand)]
        benchmark: BenchCommand,
    },
}

/// The subcommands of `igl bench`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Job queue throughput: enqueue, claim+ack, and both at once, through the worker runtime.
    Queue(crate::bench::QueueBenchArgs),
    /// `POST /api/v1/messages` throughput and latency (open or closed load model).
    Ingest(crate::bench::IngestBenchArgs),
    /// AU POST → SG stored through two in-process nodes and a shared-db channel.
    E2e(crate::bench::E2eBenchArgs),
    /// The e2e benchmark on the multi-process scale-out shape (PostgreSQL + RabbitMQ + S3),
    /// optionally as a replica curve of one process group.
    Cluster(crate::bench::ClusterBenchArgs),
    /// Signed WebSub deliveries per second to many local subscribers.
    Fanout(crate::bench::FanoutBenchArgs),
    /// Document API upload/download MB/s for small and large documents, with peak RSS.
    Documents(crate::bench::DocumentsBenchArgs),
}

/// The subcommands of `igl config`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load and validate the configuration and print a redacted summary; exit code 2 and
    /// every problem on stderr if it is invalid.
    Check,
}

/// Arguments of `igl node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Run only this component; repeat the flag for several. Overrides `components` from the
    /// configuration.
    #[arg(
        long = "component",
        value_name = "NAME",
        env = "IGL_COMPONENTS",
        value_delimiter = ',',
        value_parser = component_parser(),
    )]
    pub components: Vec<Component>,

    /// Development mode: a complete node on embedded storage with every API on one
    /// address and a development bearer token printed at start (fix its value with
    /// IGL_DEV_TOKEN). Anonymous access stays off. Never implied by any configuration.
    #[arg(long)]
    pub dev: bool,

    /// With --dev: the jurisdiction of the node (default: node.jurisdiction).
    #[arg(long, value_name = "CODE", requires = "dev")]
    pub jurisdiction: Option<String>,

    /// With --dev: the data directory (default: node.data_dir).
    #[arg(long, value_name = "DIR", requires = "dev")]
    pub data_dir: Option<std::path::PathBuf>,

    /// With --dev: the address of the HTTP APIs (default: http.bind).
    #[arg(long, value_name = "ADDR", requires = "dev")]
    pub listen: Option<std::net::SocketAddr>,
}

/// Arguments of `igl channel`; each overrides its `[channel_endpoint]` key.
#[derive(Debug, Args)]
pub struct ChannelArgs {
    /// The jurisdiction the endpoint serves (`channel_endpoint.jurisdiction`).
    #[arg(long, value_name = "CODE")]
    pub jurisdiction: Option<String>,

    /// The shared medium: `postgres://…` or `sqlite://FILE` (`channel_endpoint.medium_url`).
    #[arg(long, value_name = "URL")]
    pub medium: Option<String>,

    /// The endpoint's own state database (`channel_endpoint.state_url`).
    #[arg(long, value_name = "URL")]
    pub state: Option<String>,

    /// The listen address of the Channel API (`channel_endpoint.listen`).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,

    /// The URL advertised in `Link` headers (`channel_endpoint.public_url`).
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,

    /// A receiver this channel reaches; repeat for several (`channel_endpoint.peers`).
    #[arg(long = "peer", value_name = "CODE", value_delimiter = ',')]
    pub peers: Vec<String>,

    /// Development: accept subscription callbacks on loopback and private addresses
    /// (`channel_endpoint.allow_loopback_callbacks = true`).
    #[arg(long)]
    pub dev: bool,

    /// Validate the configuration, print the endpoint's settings and exit (exit code 2 and
    /// every problem on stderr when invalid).
    #[arg(long)]
    pub check: bool,
}

/// Accepts exactly the names of [`Component::all`], listing them in `--help` and in errors.
fn component_parser() -> impl TypedValueParser<Value = Component> {
    PossibleValuesParser::new(Component::all().iter().map(|component| component.as_str())).map(
        |name| {
            name.parse::<Component>()
                .expect("clap only passes the possible values, which are component names")
        },
    )
}

/// `--log-format` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(format: LogFormatArg) -> Self {
        match format {
            LogFormatArg::Pretty => LogFormat::Pretty,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn node_components_are_repeatable_and_comma_separated() {
        let cli = Cli::try_parse_from([
            "igl",
            "node",
            "--component",
            "message-api,router",
            "--component",
            "deliverer",
        ])
        .unwrap();
        let Command::Node(args) = cli.command else {
            panic!("expected the node command");
        };
        assert_eq!(
            args.components,
            [
                Component::MessageApi,
                Component::Router,
                Component::Deliverer
            ]
        );
    }

    #[test]
    fn unknown_component_is_a_usage_error() {
        let error = Cli::try_parse_from(["igl", "node", "--component", "routr"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::InvalidValue);
        assert!(error.to_string().contains("router"), "{error}");
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "igl",
            "config",
            "check",
            "--config",
            "igl.toml",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.config, Some(PathBuf::from("igl.toml")));
        assert_eq!(cli.log_format, Some(LogFormatArg::Json));
    }
}
