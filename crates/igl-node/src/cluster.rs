//! A two-jurisdiction network in the **scale-out shape**, as separate OS processes: for AU
//! and SG, every API and worker group is its own `igl node --component …` process (several
//! replicas of the busy workers), on PostgreSQL (one schema per node), RabbitMQ (one queue
//! prefix per node, `queue.backend = "amqp"` with the outbox relay) and an S3 server (one
//! key prefix per node); the AU–SG shared-db channel is a pair of `igl channel` processes on
//! a medium schema of the same PostgreSQL.
//!
//! Used by the multi-process crash test (`tests/scale_out.rs`), which kills worker processes
//! with SIGKILL and restarts them ([`Cluster::kill_and_restart`]), and by
//! `igl bench cluster`. Every process logs (JSON) to `<directory>/logs/<name>.log`, appended
//! across restarts; [`Cluster::check_running`] reports a process that died on its own with the
//! tail of its log.
//!
//! Contracts:
//! - [`Cluster::start`] returns once the schemas are migrated (`igl migrate`, once per node,
//!   before any node process starts), every channel endpoint and API process answers
//!   `/healthz`, and every worker process was spawned;
//! - [`Cluster::stop_processes`] stops every process with SIGTERM (SIGKILL after a grace
//!   period) and waits for it, so that nothing is leased any more: what is still in a queue
//!   afterwards ([`Cluster::unfinished_jobs`]) is unfinished work;
//! - [`Cluster::cleanup`] deletes the broker topology and drops the PostgreSQL schemas.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use igl_config::Component;
use igl_core::{JobQueue, QueueDepth, Storage};
use igl_queue::{AmqpOptions, AmqpQueue};
use igl_store::DatabaseOptions;

use crate::PIPELINE_QUEUES;

/// How long a process gets to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// How long a process gets to answer `/healthz` after it was spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The S3-compatible server the nodes keep their documents in (one bucket, a key prefix
/// per node and run).
#[derive(Clone)]
pub struct S3Target {
    /// `http://host:port` of the server.
    pub endpoint: String,
    /// An existing bucket.
    pub bucket: String,
    /// The region to sign for.
    pub region: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Target")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl S3Target {
    /// The server named by `<prefix>ENDPOINT`, `<prefix>BUCKET`, `<prefix>ACCESS_KEY`,
    /// `<prefix>SECRET_KEY` and `<prefix>REGION` (default `us-east-1`), e.g. with prefix
    /// `IGL_TEST_S3_`; `None` when the endpoint, bucket or keys are missing.
    pub fn from_env(prefix: &str) -> Option<Self> {
        let var = |name: &str| {
            std::env::var(format!("{prefix}{name}"))
                .ok()
                .filter(|value| !value.is_empty())
        };
        Some(Self {
            endpoint: var("ENDPOINT")?,
            bucket: var("BUCKET")?,
            access_key_id: var("ACCESS_KEY")?,
            secret_access_key: var("SECRET_KEY")?,
            region: var("REGION").unwrap_or_else(|| "us-east-1".into()),
        })
    }
}

/// Processes of one kind: the same components, `replicas` times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The name in process names and logs (`router`, `api`, …).
    pub name: String,
    /// The components each process of the group runs.
    pub components: Vec<Component>,
    /// How many processes run it.
    pub replicas: usize,
}

impl Group {
    /// `replicas` processes running `components`.
    pub fn new(name: &str, components: &[Component], replicas: usize) -> Self {
        Self {
            name: name.into(),
            components: components.to_vec(),
            replicas,
        }
    }

    /// Whether the group serves HTTP (it needs a port per replica).
    pub fn serves_http(&self) -> bool {
        self.components.iter().any(|component| component.is_api())
    }

    /// `database.max_connections` of each process of the group, given that of a worker:
    /// four times for API processes (concurrent requests), three times for routers and
    /// deliverers (each has dozens of jobs in flight, every one a read and a unit of work:
    /// with the worker default they queue for connections), twice for outbox relays (each
    /// of its per-queue loops holds a connection while the broker confirms a batch), the
    /// worker default otherwise.
    pub fn max_connections(&self, worker_connections: u32) -> u32 {
        let busy =
            |component: &Component| matches!(component, Component::Router | Component::Deliverer);
        if self.serves_http() {
            worker_connections * 4
        } else if self.components.iter().any(busy) {
            worker_connections * 3
        } else if self.components.contains(&Component::OutboxRelay) {
            worker_connections * 2
        } else {
            worker_connections
        }
    }
}

/// The process layout of each node: one process for the APIs and one group per worker,
/// two replicas of the busy workers (processor, router, retriever, spider, deliverer) and
/// of the outbox relay.
pub fn default_layout() -> Vec<Group> {
    vec![
        Group::new(
            "api",
            &[
                Component::MessageApi,
                Component::DocumentApi,
                Component::SubscriptionsApi,
                Component::MessageRxApi,
                Component::AdminApi,
            ],
            1,
        ),
        Group::new("processor", &[Component::MessageProcessor], 2),
        Group::new("router", &[Component::Router], 2),
        Group::new("poller", &[Component::ChannelPoller], 1),
        Group::new("subscriber", &[Component::ChannelSubscriber], 1),
        Group::new("retriever", &[Component::Retriever], 2),
        Group::new("spider", &[Component::ObjectSpider], 2),
        Group::new("spreader", &[Component::Spreader], 1),
        Group::new("deliverer", &[Component::Deliverer], 2),
        Group::new("relay", &[Component::OutboxRelay], 2),
    ]
}

/// A layout for small machines: one process for the APIs and `worker_replicas` processes
/// (group `workers`) that each run every worker and the outbox relay. Far fewer processes
/// than [`default_layout`] (3 per node instead of 16 by default), so less CPU goes to
/// idle work and context switches; every worker stays safe to run as several replicas.
pub fn compact_layout(worker_replicas: usize) -> Vec<Group> {
    let (apis, workers): (Vec<Component>, Vec<Component>) = Component::all()
        .iter()
        .copied()
        .partition(|component| component.is_api());
    vec![
        Group::new("api", &apis, 1),
        Group::new("workers", &workers, worker_replicas),
    ]
}

/// Changes the replica count of the named groups of `layout` (`"router=3,processor=2"`).
///
/// # Errors
///
/// An entry that is not `name=count`, names no group, or asks for zero replicas.
pub fn set_replicas(layout: &mut [Group], spec: &str) -> anyhow::Result<()> {
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, count) = entry
            .split_once('=')
            .with_context(|| format!("{entry:?} is not name=count"))?;
        let count: usize = count
            .trim()
            .parse()
            .with_context(|| format!("{entry:?}: the count is not a number"))?;
        anyhow::ensure!(count > 0, "{entry:?}: a group needs at least one process");
        let group = layout
            .iter_mut()
            .find(|group| group.name == name.trim())
            .with_context(|| format!("{entry:?}: no process group is called {name:?}"))?;
        group.replicas = count;
    }
    Ok(())
}

/// How to start a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The `igl` executable.
    pub binary: PathBuf,
    /// Configuration files, logs and the channel endpoints' own state.
    pub directory: PathBuf,
    /// A PostgreSQL database; the nodes and the medium get fresh schemas of it.
    pub postgres_url: String,
    /// A RabbitMQ vhost; the nodes get fresh queue prefixes in it.
    pub amqp_url: String,
    /// Where documents are stored.
    pub s3: S3Target,
    /// The processes of each node.
    pub layout: Vec<Group>,
    /// The log filter of every process (`[log] filter`).
    pub log_filter: String,
    /// `database.max_connections` of a worker process (routers and deliverers get three
    /// times, outbox relays twice, API processes and each channel endpoint pool four times
    /// as many, [`Group::max_connections`]): the cluster opens
    /// `2 × Σ replicas` pools on one server, which must allow it.
    pub worker_connections: u32,
    /// `queue.lease_secs`: how long a job leased by a process that died stays invisible (for
    /// the SQL outbox; broker deliveries return when the connection drops).
    pub lease_secs: u64,
}

impl ClusterOptions {
    /// Options with [`default_layout`], log filter `info`, 4 connections per worker and
    /// 15 s leases.
    pub fn new(
        binary: PathBuf,
        directory: PathBuf,
        postgres_url: String,
        amqp_url: String,
        s3: S3Target,
    ) -> Self {
        Self {
            binary,
            directory,
            postgres_url,
            amqp_url,
            s3,
            layout: default_layout(),
            log_filter: "info".into(),
            worker_connections: 4,
            lease_secs: 15,
        }
    }
}

/// One node of the cluster, as the test or benchmark sees it from outside.
#[derive(Debug)]
pub struct ClusterNode {
    /// `AU` or `SG`.
    pub jurisdiction: &'static str,
    /// Base URLs of the API processes (the first is the node's public URL).
    pub api_urls: Vec<String>,
    /// A bearer token of a party of this jurisdiction (`cluster-client`).
    pub token: String,
    /// The node's database, opened by this process for checks.
    pub storage: Arc<dyn Storage>,
    /// The node's PostgreSQL schema.
    pub schema: String,
    /// The node's RabbitMQ queue prefix.
    pub queue_prefix: String,
    /// The node's S3 key prefix.
    pub object_prefix: String,
}

impl ClusterNode {
    /// The node's public URL (its first API process).
    pub fn url(&self) -> &str {
        &self.api_urls[0]
    }
}

/// A process of the cluster: its command line and its current incarnation.
#[derive(Debug)]
struct Process {
    /// `AU/router#1`, `channel/AU`, …
    name: String,
    group: String,
    worker: bool,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Child,
    restarts: u32,
    /// CPU seconds of incarnations that were killed.
    cpu_before: f64,
}

/// The running cluster.
#[derive(Debug)]
pub struct Cluster {
    /// The AU node.
    pub au: ClusterNode,
    /// The SG node.
    pub sg: ClusterNode,
    /// The channel endpoints' base URLs (AU's, SG's).
    pub channel_urls: Vec<String>,
    options: ClusterOptions,
    medium_schema: String,
    processes: Vec<Process>,
    stopped: bool,
}

/// A loopback port nothing listens on right now (the OS picks it; it stays free until a
/// process binds it, unless something else takes it in between).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn spawn(
    binary: &Path,
    args: &[String],
    env: &[(String, String)],
    log: &Path,
) -> anyhow::Result<Child> {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let err = out.try_clone()?;
    let mut command = Command::new(binary);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // The configuration comes from the file and `env` only.
        .env_remove("RUST_LOG")
        .env_remove("IGL_CONFIG")
        .env_remove("IGL_COMPONENTS");
    for (key, value) in env {
        command.env(key, value);
    }
    command
        .spawn()
        .with_context(|| format!("cannot start {} {}", binary.display(), args.join(" ")))
}

/// The last `bytes` of a log file, for error messages.
fn log_tail(path: &Path, bytes: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(length.saturating_sub(bytes)));
    let mut tail = String::new();
    let _ = file.read_to_string(&mut tail);
    tail
}

/// CPU seconds (user + system) a live process used, from `/proc/<pid>/stat` (USER_HZ is
/// 100 on Linux); 0 where that cannot be read.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// Sends SIGTERM to `pid` (with the `kill` utility: no unsafe code here).
fn terminate(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

async fn wait_healthy(
    client: &reqwest::Client,
    url: &str,
    process: &mut Process,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(response) = client.get(format!("{url}/healthz")).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        if let Some(status) = process.child.try_wait()? {
            bail!(
                "{} exited with {status} while starting; its log ends with:\n{}",
                process.name,
                log_tail(&process.log, 4000)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "{} did not answer {url}/healthz within {} s; its log ends with:\n{}",
                process.name,
                READY_TIMEOUT.as_secs(),
                log_tail(&process.log, 4000)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the configuration of one node needs to know.
struct NodePlan<'a> {
    code: &'static str,
    peer: &'static str,
    schema: &'a str,
    queue_prefix: &'a str,
    object_prefix: &'a str,
    public_url: &'a str,
    channel_url: &'a str,
    peer_url: &'a str,
    token: &'a str,
    /// The token this node's spider presents to the peer.
    reads_peer: &'a str,
    /// The token the peer's spider presents here.
    peer_reads: &'a str,
}

fn toml_string(value: &str) -> String {
    // A TOML basic string: serde_json's escaping is a subset TOML accepts.
    serde_json::Value::String(value.to_owned()).to_string()
}

fn node_config(options: &ClusterOptions, plan: &NodePlan<'_>) -> String {
    let s = |value: &str| toml_string(value);
    let data_dir = options.directory.join(plan.code.to_lowercase());
    let mut config = String::new();
    let _ = write!(
        config,
        r#"# {code} node of the scale-out cluster (written by igl_node::cluster).
[node]
jurisdiction = "{code}"
data_dir = {data_dir}
public_url = {public_url}

[database]
url = {database}
schema = {schema}
max_connections = {connections}

[objects]
type = "s3"
bucket = {bucket}
region = {region}
endpoint = {endpoint}
path_style = true
allow_http = true
prefix = {object_prefix}
access_key_id = {access_key}
secret_access_key = {secret_key}

[queue]
backend = "amqp"
lease_secs = {lease}
poll_interval_ms = 200

[queue.amqp]
url = {amqp}
prefix = {queue_prefix}

[log]
format = "json"
filter = {filter}

[hub]
allow_private_callbacks = true

[[auth.static_tokens]]
token = {token}
party = "cluster-client"
jurisdiction = "{code}"

[[auth.static_tokens]]
token = {peer_reads}
party = "{peer}-document-spider"
jurisdiction = "{peer}"

[[channels]]
id = "au-sg"
name = "AU-SG shared database"
url = {channel}
receivers = ["{peer}"]
forward_sender_ref = true

[jurisdictions.{peer}]
document_api_url = {peer_url}
token = {reads_peer}
"#,
        code = plan.code,
        peer = plan.peer,
        data_dir = s(&data_dir.display().to_string()),
        public_url = s(plan.public_url),
        database = s(&options.postgres_url),
        schema = s(plan.schema),
        connections = options.worker_connections,
        bucket = s(&options.s3.bucket),
        region = s(&options.s3.region),
        endpoint = s(&options.s3.endpoint),
        object_prefix = s(plan.object_prefix),
        access_key = s(&options.s3.access_key_id),
        secret_key = s(&options.s3.secret_access_key),
        lease = options.lease_secs,
        amqp = s(&options.amqp_url),
        queue_prefix = s(plan.queue_prefix),
        filter = s(&options.log_filter),
        token = s(plan.token),
        peer_reads = s(plan.peer_reads),
        channel = s(plan.channel_url),
        peer_url = s(plan.peer_url),
        reads_peer = s(plan.reads_peer),
    );
    config
}

fn channel_config(
    options: &ClusterOptions,
    code: &str,
    peer: &str,
    medium_schema: &str,
    port: u16,
) -> String {
    let s = |value: &str| toml_string(value);
    let data_dir = options
        .directory
        .join(format!("channel-{}", code.to_lowercase()));
    format!(
        r#"# {code} endpoint of the AU-SG shared-db channel (written by igl_node::cluster).
[node]
jurisdiction = "{code}"
data_dir = {data_dir}

[channel_endpoint]
jurisdiction = "{code}"
medium_url = {medium}
medium_schema = {medium_schema}
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
allow_loopback_callbacks = true
peers = ["{peer}"]
max_connections = {connections}

[log]
format = "json"
filter = {filter}
"#,
        data_dir = s(&data_dir.display().to_string()),
        medium = s(&options.postgres_url),
        medium_schema = s(medium_schema),
        connections = options.worker_connections * 4,
        filter = s(&options.log_filter),
    )
}

fn random_token(label: &str) -> String {
    format!("igl-cluster-{label}-{}", uuid::Uuid::new_v4().simple())
}

impl Cluster {
    /// Writes the configuration, migrates both nodes and starts every process (see the
    /// module documentation for when it returns).
    ///
    /// # Errors
    ///
    /// A backend that cannot be reached, a migration that fails, or a process that exits or
    /// does not become healthy while starting (with the tail of its log). Processes started
    /// before the failure are killed.
    pub async fn start(options: ClusterOptions) -> anyhow::Result<Self> {
        let run = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let logs = options.directory.join("logs");
        std::fs::create_dir_all(&logs)
            .with_context(|| format!("cannot create {}", logs.display()))?;
        let medium_schema = format!("igl_cluster_{run}_medium");
        let mut processes: Vec<Process> = Vec::new();
        let result = Self::start_processes(&options, &run, &medium_schema, &mut processes).await;
        match result {
            Ok((au, sg, channel_urls)) => Ok(Self {
                au,
                sg,
                channel_urls,
                options,
                medium_schema,
                processes,
                stopped: false,
            }),
            Err(error) => {
                for process in &mut processes {
                    let _ = process.child.kill();
                    let _ = process.child.wait();
                }
                Err(error)
            }
        }
    }

    async fn start_processes(
        options: &ClusterOptions,
        run: &str,
        medium_schema: &str,
        processes: &mut Vec<Process>,
    ) -> anyhow::Result<(ClusterNode, ClusterNode, Vec<String>)> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        let logs = options.directory.join("logs");
        // The channel: AU's endpoint first (it creates the medium's schema), then SG's.
        let mut channel_urls = Vec::new();
        for (code, peer) in [("AU", "SG"), ("SG", "AU")] {
            let port = free_port()?;
            let file = options
                .directory
                .join(format!("channel-{}.toml", code.to_lowercase()));
            std::fs::write(
                &file,
                channel_config(options, code, peer, medium_schema, port),
            )?;
            let args = vec![
                "--config".into(),
                file.display().to_string(),
                "channel".into(),
            ];
            let index = launch(
                options,
                processes,
                format!("channel/{code}"),
                "channel",
                false,
                args,
                vec![],
            )?;
            let url = format!("http://127.0.0.1:{port}");
            wait_healthy(&client, &url, &mut processes[index]).await?;
            channel_urls.push(url);
        }

        // Ports of every API process, known before any configuration is written.
        let api_replicas = options
            .layout
            .iter()
            .filter(|group| group.serves_http())
            .map(|group| group.replicas)
            .sum::<usize>();
        anyhow::ensure!(
            api_replicas > 0,
            "the layout has no API process (message-api, message-rx-api, document-api …)"
        );
        let mut ports = BTreeMap::new();
        for code in ["AU", "SG"] {
            let mut list = Vec::new();
            for _ in 0..api_replicas {
                list.push(free_port()?);
            }
            ports.insert(code, list);
        }
        let url_of = |code: &str| format!("http://127.0.0.1:{}", ports[code][0]);
        let au_reads_sg = random_token("au-reads-sg");
        let sg_reads_au = random_token("sg-reads-au");
        let mut nodes = Vec::new();
        for (code, peer, channel_url) in [
            ("AU", "SG", &channel_urls[0]),
            ("SG", "AU", &channel_urls[1]),
        ] {
            let lower = code.to_lowercase();
            let schema = format!("igl_cluster_{run}_{lower}");
            let queue_prefix = format!("igl-{run}.{lower}.");
            let object_prefix = format!("igl-{run}/{lower}");
            let token = random_token(&format!("{lower}-client"));
            let (reads_peer, peer_reads) = if code == "AU" {
                (&au_reads_sg, &sg_reads_au)
            } else {
                (&sg_reads_au, &au_reads_sg)
            };
            let public_url = url_of(code);
            let peer_url = url_of(peer);
            let plan = NodePlan {
                code,
                peer,
                schema: &schema,
                queue_prefix: &queue_prefix,
                object_prefix: &object_prefix,
                public_url: &public_url,
                channel_url,
                peer_url: &peer_url,
                token: &token,
                reads_peer,
                peer_reads,
            };
            let file = options.directory.join(format!("{lower}.toml"));
            std::fs::write(&file, node_config(options, &plan))?;
            let config = file.display().to_string();

            // Migrations once, before any node process (they would race on a fresh schema).
            let log = logs.join(format!("{lower}-migrate.log"));
            let mut migrate = spawn(
                &options.binary,
                &["--config".into(), config.clone(), "migrate".into()],
                &[],
                &log,
            )?;
            let status = tokio::task::spawn_blocking(move || migrate.wait()).await??;
            if !status.success() {
                bail!(
                    "igl migrate for {code} failed ({status}):\n{}",
                    log_tail(&log, 4000)
                );
            }

            let mut apis = Vec::new();
            let mut port_index = 0;
            for group in &options.layout {
                for replica in 1..=group.replicas {
                    let mut args = vec!["--config".into(), config.clone(), "node".into()];
                    for component in &group.components {
                        args.push(format!("--component={}", component.as_str()));
                    }
                    let mut env = vec![(
                        "IGL_DATABASE__MAX_CONNECTIONS".to_owned(),
                        group
                            .max_connections(options.worker_connections)
                            .to_string(),
                    )];
                    if group.serves_http() {
                        let port = ports[code][port_index];
                        port_index += 1;
                        env.push(("IGL_HTTP__BIND".into(), format!("127.0.0.1:{port}")));
                    }
                    let name = format!("{code}/{}#{replica}", group.name);
                    let serves_http = group.serves_http();
                    let index = launch(
                        options,
                        processes,
                        name,
                        &group.name,
                        !serves_http,
                        args,
                        env.clone(),
                    )?;
                    if serves_http {
                        let bind = &env
                            .iter()
                            .find(|(k, _)| k == "IGL_HTTP__BIND")
                            .expect("bind")
                            .1;
                        apis.push((index, format!("http://{bind}")));
                    }
                }
            }
            let mut api_urls = Vec::new();
            for (index, url) in apis {
                wait_healthy(&client, &url, &mut processes[index]).await?;
                api_urls.push(url);
            }
            let storage = igl_store::open_storage(&DatabaseOptions {
                url: options.postgres_url.clone(),
                max_connections: 4,
                schema: Some(schema.clone()),
                connect_timeout: Duration::from_secs(10),
            })
            .await
            .with_context(|| format!("cannot open {code}'s database for checks"))?;
            nodes.push(ClusterNode {
                jurisdiction: code,
                api_urls,
                token,
                storage,
                schema,
                queue_prefix,
                object_prefix,
            });
        }
        let sg = nodes.pop().expect("two nodes");
        let au = nodes.pop().expect("two nodes");
        Ok((au, sg, channel_urls))
    }

    /// The names of the worker processes, the candidates for [`Cluster::kill_and_restart`]
    /// (indices into this list are what it takes).
    pub fn workers(&self) -> Vec<(usize, &str)> {
        self.processes
            .iter()
            .enumerate()
            .filter(|(_, process)| process.worker)
            .map(|(index, process)| (index, process.name.as_str()))
            .collect()
    }

    /// Every process, by name.
    pub fn process_names(&self) -> Vec<&str> {
        self.processes.iter().map(|p| p.name.as_str()).collect()
    }

    /// Kills process `index` with SIGKILL (no chance to finish anything), waits for it,
    /// and starts it again with the same command line. Returns its name.
    ///
    /// # Errors
    ///
    /// `index` is not a process, or it cannot be started again.
    pub fn kill_and_restart(&mut self, index: usize) -> anyhow::Result<String> {
        let binary = self.options.binary.clone();
        let process = self
            .processes
            .get_mut(index)
            .with_context(|| format!("no process {index}"))?;
        process.cpu_before += cpu_seconds(process.child.id());
        process.child.kill().context("cannot kill the process")?;
        process.child.wait()?;
        process.child = spawn(&binary, &process.args, &process.env, &process.log)?;
        process.restarts += 1;
        Ok(process.name.clone())
    }

    /// Fails when a process exited on its own, with the tail of its log.
    ///
    /// # Errors
    ///
    /// The first process found exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        for process in &mut self.processes {
            if let Some(status) = process.child.try_wait()? {
                bail!(
                    "{} exited on its own with {status}; its log ends with:\n{}",
                    process.name,
                    log_tail(&process.log, 6000)
                );
            }
        }
        Ok(())
    }

    /// How many times each process was killed and restarted (processes never killed are
    /// left out).
    pub fn restarts(&self) -> BTreeMap<String, u32> {
        self.processes
            .iter()
            .filter(|p| p.restarts > 0)
            .map(|p| (p.name.clone(), p.restarts))
            .collect()
    }

    /// CPU seconds used so far by each process group of each node (`AU/router`,
    /// `channel/channel`, …), every replica and incarnation together.
    pub fn cpu_by_group(&self) -> BTreeMap<String, f64> {
        let mut cpu = BTreeMap::new();
        for process in &self.processes {
            let node = process.name.split('/').next().unwrap_or_default();
            let live = if self.stopped {
                0.0
            } else {
                cpu_seconds(process.child.id())
            };
            *cpu.entry(format!("{node}/{}", process.group))
                .or_insert(0.0) += process.cpu_before + live;
        }
        cpu
    }

    /// Stops every process: SIGTERM to the nodes' processes, then to the channel
    /// endpoints, waiting for each to exit (SIGKILL after 30 s).
    ///
    /// # Errors
    ///
    /// A process that had to be killed, or that exited with an error.
    pub async fn stop_processes(&mut self) -> anyhow::Result<()> {
        if self.stopped {
            return Ok(());
        }
        for process in &mut self.processes {
            process.cpu_before += cpu_seconds(process.child.id());
        }
        let mut problems = Vec::new();
        // Node processes first (they talk to the endpoints), then the endpoints.
        for channel in [false, true] {
            let selected: Vec<&mut Process> = self
                .processes
                .iter_mut()
                .filter(|p| (p.group == "channel") == channel)
                .collect();
            for process in &selected {
                terminate(process.child.id());
            }
            let deadline = Instant::now() + STOP_GRACE;
            for process in selected {
                loop {
                    if let Some(status) = process.child.try_wait()? {
                        if !status.success() {
                            problems.push(format!(
                                "{} stopped with {status}; its log ends with:\n{}",
                                process.name,
                                log_tail(&process.log, 3000)
                            ));
                        }
                        break;
                    }
                    if Instant::now() >= deadline {
                        let _ = process.child.kill();
                        let _ = process.child.wait();
                        problems.push(format!(
                            "{} did not stop within {} s of SIGTERM and was killed",
                            process.name,
                            STOP_GRACE.as_secs()
                        ));
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        self.stopped = true;
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("{}", problems.join("\n"))
        }
    }

    async fn broker(&self, node: &ClusterNode) -> anyhow::Result<AmqpQueue> {
        let mut options = AmqpOptions::new(self.options.amqp_url.clone());
        options.prefix = node.queue_prefix.clone();
        options.queues = PIPELINE_QUEUES.to_vec();
        options.connection_name = format!("igl-cluster checks {}", node.jurisdiction);
        AmqpQueue::connect(options)
            .await
            .with_context(|| format!("cannot connect to {}'s broker queues", node.jurisdiction))
    }

    /// Jobs still in a queue of either node, by `node/queue`: in RabbitMQ (ready, waiting in
    /// a retry tier, or dead-lettered) and in the SQL outbox. Empty when all work finished.
    /// Meaningful after [`Cluster::stop_processes`], when no delivery is held by a consumer.
    ///
    /// # Errors
    ///
    /// A backend that cannot be asked.
    pub async fn unfinished_jobs(&self) -> anyhow::Result<BTreeMap<String, QueueDepth>> {
        let mut unfinished = BTreeMap::new();
        for node in [&self.au, &self.sg] {
            let broker = self.broker(node).await?;
            for queue in PIPELINE_QUEUES {
                let on_broker = broker.depth(&queue).await?;
                let in_outbox = node.storage.depth(&queue).await?;
                for (place, depth) in [("broker", on_broker), ("outbox", in_outbox)] {
                    if depth != QueueDepth::default() {
                        unfinished
                            .insert(format!("{}/{queue} ({place})", node.jurisdiction), depth);
                    }
                }
            }
            broker.close().await;
        }
        Ok(unfinished)
    }

    /// Stops what still runs and deletes both nodes' broker queues (a broker holding the
    /// quorum queues of many runs gets slow), keeping the PostgreSQL schemas for inspection.
    ///
    /// # Errors
    ///
    /// A process that did not stop cleanly, or a broker that refused the deletion.
    pub async fn delete_queues(&mut self) -> anyhow::Result<()> {
        let stopped = self.stop_processes().await;
        for node in [&self.au, &self.sg] {
            let broker = self.broker(node).await?;
            broker.delete_topology(&PIPELINE_QUEUES).await?;
            broker.close().await;
        }
        stopped
    }

    /// Stops what still runs, deletes both nodes' broker queues and drops the PostgreSQL
    /// schemas (nodes and medium). The S3 objects stay (under the run's prefixes).
    ///
    /// # Errors
    ///
    /// A process that did not stop cleanly, or a backend that refused the cleanup.
    pub async fn cleanup(mut self) -> anyhow::Result<()> {
        let stopped = self.delete_queues().await;
        for schema in [&self.au.schema, &self.sg.schema, &self.medium_schema] {
            igl_store::PostgresStore::drop_schema(&self.options.postgres_url, schema)
                .await
                .with_context(|| format!("cannot drop the schema {schema}"))?;
        }
        stopped
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.stopped {
            for process in &mut self.processes {
                let _ = process.child.kill();
                let _ = process.child.wait();
            }
        }
    }
}

/// Spawns a process of the cluster and records it; returns its index.
fn launch(
    options: &ClusterOptions,
    processes: &mut Vec<Process>,
    name: String,
    group: &str,
    worker: bool,
    args: Vec<String>,
    env: Vec<(String, String)>,
) -> anyhow::Result<usize> {
    let log = options
        .directory
        .join("logs")
        .join(format!("{}.log", name.replace(['/', '#'], "-")));
    let child = spawn(&options.binary, &args, &env, &log)?;
    processes.push(Process {
        name,
        group: group.into(),
        worker,
        args,
        env,
        log,
        child,
        restarts: 0,
        cpu_before: 0.0,
    });
    Ok(processes.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_of_named_groups_change() {
        let mut layout = default_layout();
        set_replicas(&mut layout, "router=3, processor=1").unwrap();
        let replicas = |name: &str| layout.iter().find(|g| g.name == name).unwrap().replicas;
        assert_eq!(replicas("router"), 3);
        assert_eq!(replicas("processor"), 1);
        assert_eq!(replicas("spider"), 2);
    }

    #[test]
    fn bad_replica_specs_are_refused() {
        let mut layout = default_layout();
        for spec in ["router", "router=x", "router=0", "nobody=2"] {
            assert!(set_replicas(&mut layout, spec).is_err(), "{spec}");
        }
    }

    #[test]
    fn only_the_api_group_serves_http() {
        let layout = default_layout();
        let serving: Vec<&str> = layout
            .iter()
            .filter(|g| g.serves_http())
            .map(|g| g.name.as_str())
            .collect();
        assert_eq!(serving, ["api"]);
    }

    #[test]
    fn the_compact_layout_runs_every_component_once_per_replica() {
        let layout = compact_layout(2);
        assert_eq!(layout.len(), 2);
        assert!(layout[0].serves_http() && !layout[1].serves_http());
        assert_eq!(layout[1].replicas, 2);
        let mut all: Vec<Component> = layout
            .iter()
            .flat_map(|group| group.components.iter().copied())
            .collect();
        all.sort_by_key(|component| component.as_str());
        let mut expected = Component::all().to_vec();
        expected.sort_by_key(|component| component.as_str());
        assert_eq!(all, expected);
    }

    #[test]
    fn busy_groups_get_larger_pools() {
        let pools: Vec<(String, u32)> = default_layout()
            .iter()
            .map(|group| (group.name.clone(), group.max_connections(4)))
            .collect();
        let pool = |name: &str| pools.iter().find(|(n, _)| n == name).unwrap().1;
        assert_eq!(pool("api"), 16);
        assert_eq!(pool("router"), 12);
        assert_eq!(pool("deliverer"), 12);
        assert_eq!(pool("processor"), 4);
        assert_eq!(pool("relay"), 8);
    }

    #[test]
    fn cpu_of_this_process_is_read() {
        // Burn a little CPU so the counter is not zero.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_seconds(std::process::id()) > 0.0);
    }

    fn test_options(directory: &Path) -> ClusterOptions {
        ClusterOptions::new(
            "igl".into(),
            directory.into(),
            "postgres://postgres@127.0.0.1:5432/db".into(),
            "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            S3Target {
                endpoint: "http://127.0.0.1:9000".into(),
                bucket: "bucket".into(),
                region: "us-east-1".into(),
                access_key_id: "key".into(),
                secret_access_key: "se\"cret".into(),
            },
        )
    }

    #[test]
    fn the_written_node_configuration_is_valid() {
        let directory = tempfile::tempdir().unwrap();
        let options = test_options(directory.path());
        let plan = NodePlan {
            code: "AU",
            peer: "SG",
            schema: "igl_cluster_x_au",
            queue_prefix: "igl-x.au.",
            object_prefix: "igl-x/au",
            public_url: "http://127.0.0.1:1001",
            channel_url: "http://127.0.0.1:1002",
            peer_url: "http://127.0.0.1:1003",
            token: "igl-cluster-au-client-0123456789",
            reads_peer: "igl-cluster-au-reads-sg-0123456789",
            peer_reads: "igl-cluster-sg-reads-au-0123456789",
        };
        let file = directory.path().join("au.toml");
        std::fs::write(&file, node_config(&options, &plan)).unwrap();
        let settings = igl_config::Settings::load(Some(&file), Vec::new()).unwrap();
        assert_eq!(settings.node.jurisdiction, "AU");
        assert_eq!(settings.queue.backend, igl_config::QueueBackend::Amqp);
        assert_eq!(
            settings.database.schema.as_deref(),
            Some("igl_cluster_x_au")
        );
        assert_eq!(settings.database.max_connections, 4);
        match &settings.objects {
            igl_config::ObjectStoreSettings::S3(s3) => {
                assert_eq!(s3.prefix.as_deref(), Some("igl-x/au"));
                assert_eq!(
                    s3.secret_access_key.as_ref().unwrap().expose_secret(),
                    "se\"cret"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(settings.channels[0].receivers, ["SG"]);
        assert_eq!(
            settings.jurisdictions["SG"].document_api_url,
            "http://127.0.0.1:1003"
        );
    }

    #[test]
    fn the_written_channel_configuration_is_valid() {
        let directory = tempfile::tempdir().unwrap();
        let options = test_options(directory.path());
        let file = directory.path().join("channel.toml");
        std::fs::write(
            &file,
            channel_config(&options, "SG", "AU", "igl_cluster_x_medium", 1234),
        )
        .unwrap();
        let settings = igl_config::Settings::load(Some(&file), Vec::new()).unwrap();
        let endpoint = &settings.channel_endpoint;
        assert_eq!(endpoint.jurisdiction.as_deref(), Some("SG"));
        assert_eq!(
            endpoint.medium_schema.as_deref(),
            Some("igl_cluster_x_medium")
        );
        assert_eq!(endpoint.listen.port(), 1234);
        assert_eq!(endpoint.peers, ["AU"]);
    }
}
