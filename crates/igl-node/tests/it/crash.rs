//! Crash safety with real processes: `kill -9` a node while clients are posting, restart
//! it on the same storage, and check that every acknowledged message is there and gets
//! processed (ARCHITECTURE §6, invariant 1).

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use igl_core::Storage;
use igl_core::pipeline::{PROCESS_QUEUE, ROUTE_QUEUE};
use igl_domain::MessageRef;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::fresh_schema;

const TOKEN: &str = "igl-dev-crash-test";

/// An `igl node --dev` child process.
struct NodeProcess {
    child: Child,
    base: String,
}

impl NodeProcess {
    fn start(data_dir: &Path, components: &[&str], database: &[(&str, String)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_igl"));
        command
            .args(["node", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("IGL_DEV_TOKEN", TOKEN)
            .env("IGL_QUEUE__POLL_INTERVAL_MS", "50")
            .env_remove("IGL_COMPONENTS")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for component in components {
            command.args(["--component", component]);
        }
        for (key, value) in database {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("igl starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("the node prints its banner")
                .expect("utf-8");
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.trim().to_owned();
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, base }
    }

    fn kill_9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }
}

fn message(n: usize) -> serde_json::Value {
    json!({
        "sender": "AU", "receiver": "SG", "subject": format!("AU.crash.{n}"),
        "obj": "QmQtYtUS7K1AdKjbuMsmPmPGDLaKL38M5HYwqxW9RKW49n",
        "predicate": "UN.CEFACT.Trade.CertificateOfOrigin.created",
        "sender_ref": format!("crash-{n}"),
    })
}

/// Posts from 16 clients until killed; records every reference acknowledged with 201.
fn post_until_killed(
    base: &str,
    acked: Arc<Mutex<HashSet<String>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let client = reqwest::Client::new();
    (0..16)
        .map(|worker| {
            let (client, base, acked) = (client.clone(), base.to_owned(), acked.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    let n = i * 16 + worker;
                    let response = client
                        .post(format!("{base}/api/v1/messages"))
                        .bearer_auth(TOKEN)
                        .json(&message(n))
                        .send()
                        .await;
                    match response {
                        Ok(response) if response.status() == StatusCode::CREATED => {
                            acked.lock().unwrap().insert(format!("AU:crash-{n}"));
                        }
                        _ => return,
                    }
                }
            })
        })
        .collect()
}

async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where the crashing node keeps its state.
enum Backend {
    Sqlite,
    Postgres { url: String, schema: String },
}

impl Backend {
    fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::Sqlite => Vec::new(),
            Self::Postgres { url, schema } => {
                vec![
                    ("IGL_DATABASE__URL", url.clone()),
                    ("IGL_DATABASE__SCHEMA", schema.clone()),
                ]
            }
        }
    }

    async fn open(&self, data_dir: &Path) -> Arc<dyn Storage> {
        match self {
            Self::Sqlite => Arc::new(
                igl_store::SqliteStore::open(&data_dir.join("igl.db"))
                    .await
                    .unwrap(),
            ),
            Self::Postgres { url, schema } => Arc::new(
                igl_store::PostgresStore::connect(url, 4, Some(schema))
                    .await
                    .unwrap(),
            ),
        }
    }
}

async fn crash_and_recover(backend: Backend) {
    let database = backend.env();
    let data_dir = tempfile::tempdir().unwrap();
    let acked = Arc::new(Mutex::new(HashSet::new()));

    // 1. API only: messages are stored and queued, nobody processes them. Kill it mid-load.
    let first = NodeProcess::start(data_dir.path(), &["message-api"], &database);
    let clients = post_until_killed(&first.base, acked.clone());
    wait_until("300 acknowledged messages", || async {
        acked.lock().unwrap().len() >= 300
    })
    .await;
    first.kill_9();
    for client in clients {
        let _ = client.await;
    }
    let acked: HashSet<String> = acked.lock().unwrap().clone();
    assert!(acked.len() >= 300);

    // 2. Restart with the processor: every acknowledged message is there and processed
    //    once (the router stays off so the route queue shows what processing produced).
    let second = NodeProcess::start(
        data_dir.path(),
        &["message-api", "message-processor"],
        &database,
    );
    let client = reqwest::Client::new();
    for reference in &acked {
        let response = client
            .get(format!("{}/api/v1/messages/{reference}", second.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{reference} was acknowledged"
        );
    }
    let storage = backend.open(data_dir.path()).await;
    wait_until("processing to finish", || {
        let storage = storage.clone();
        async move {
            let depth = storage.depth(&PROCESS_QUEUE).await.unwrap();
            depth.ready + depth.scheduled + depth.in_flight == 0
        }
    })
    .await;
    let routed = storage.depth(&ROUTE_QUEUE).await.unwrap();
    let stored = storage
        .list_messages(&igl_core::MessageFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .messages
        .len();
    assert!(stored >= acked.len(), "no acknowledged message lost");
    assert_eq!(
        routed.ready as usize, stored,
        "every stored message processed exactly once"
    );
    for reference in &acked {
        let reference = MessageRef::parse(reference).unwrap();
        assert!(storage.get_message(&reference).await.unwrap().is_some());
    }
    second.kill_9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_loses_nothing_acknowledged_on_sqlite() {
    crash_and_recover(Backend::Sqlite).await;
}

#[cfg_attr(igl_skip_postgres, ignore = "set IGL_TEST_POSTGRES_URL to run")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_loses_nothing_acknowledged_on_postgres() {
    let url = std::env::var("IGL_TEST_POSTGRES_URL").unwrap();
    crash_and_recover(Backend::Postgres {
        url,
        schema: fresh_schema(),
    })
    .await;
}
