//! Runs the built `igl` binary as a user would and checks its output and exit codes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const IGL: &str = env!("CARGO_BIN_EXE_igl");

/// A temporary working directory, so nothing is written into the source tree.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        Sandbox {
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write_config(&self, toml: &str) -> PathBuf {
        let path = self.dir.path().join("igl.toml");
        std::fs::write(&path, toml).expect("write config file");
        path
    }

    /// `igl` with a clean environment (no inherited `IGL_*` or `RUST_LOG`), run in the sandbox.
    fn igl(&self) -> Command {
        let mut command = Command::new(IGL);
        command.env_clear().current_dir(self.dir.path());
        command
    }
}

fn run(command: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().expect("run igl");
    (
        status.code().expect("exit code (not killed by a signal)"),
        String::from_utf8(stdout).expect("utf-8 stdout"),
        String::from_utf8(stderr).expect("utf-8 stderr"),
    )
}

#[test]
fn version_prints_the_crate_version() {
    let sandbox = Sandbox::new();
    for flag in ["--version", "-V"] {
        let (code, stdout, _) = run(sandbox.igl().arg(flag));
        assert_eq!(code, 0);
        assert_eq!(stdout.trim(), format!("igl {}", env!("CARGO_PKG_VERSION")));
    }
}

#[test]
fn config_check_with_defaults_succeeds() {
    let sandbox = Sandbox::new();
    let (code, stdout, stderr) = run(sandbox.igl().args(["config", "check"]));
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(stdout.contains("jurisdiction: AU"), "{stdout}");
    assert!(stdout.contains("sqlite sqlite://./data/igl.db"), "{stdout}");
    assert!(stdout.contains("message-api"), "{stdout}");
    assert!(
        !sandbox.path().join("data").exists(),
        "config check must not create files"
    );
}

#[test]
fn config_check_with_valid_file_prints_a_redacted_summary() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config(
        r#"
        components = ["message-api", "router"]

        [node]
        jurisdiction = "SG"

        [database]
        url = "postgres://igl:correct-horse-battery@db.internal:5432/igl"
        schema = "igl_sg"
        "#,
    );
    let (code, stdout, stderr) = run(sandbox
        .igl()
        .args(["config", "check", "--config"])
        .arg(&config));
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(stdout.contains("jurisdiction: SG"), "{stdout}");
    assert!(
        stdout.contains("postgres postgres://igl:[redacted]@db.internal:5432/igl"),
        "{stdout}"
    );
    assert!(stdout.contains("message-api, router"), "{stdout}");
    assert!(!stdout.contains("correct-horse-battery"), "{stdout}");
    assert!(!stderr.contains("correct-horse-battery"), "{stderr}");
}

#[test]
fn config_file_can_come_from_igl_config() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config("[node]\njurisdiction = \"NZ\"\n");
    let (code, stdout, stderr) = run(sandbox
        .igl()
        .args(["config", "check"])
        .env("IGL_CONFIG", &config));
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(stdout.contains("jurisdiction: NZ"), "{stdout}");
}

#[test]
fn config_check_with_invalid_file_exits_2_and_names_every_key() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config(
        r#"
        [node]
        jurisdiction = "Australia"

        [database]
        url = "mysql://root:hunter2@db/igl"
        max_connections = 0
        "#,
    );
    let (code, stdout, stderr) = run(sandbox
        .igl()
        .args(["--config"])
        .arg(&config)
        .args(["config", "check"]));
    assert_eq!(code, 2, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines[0], "error: invalid configuration (3 problems)",
        "{stderr}"
    );
    assert!(
        lines[1].contains("node.jurisdiction: \"Australia\""),
        "{stderr}"
    );
    assert!(
        lines[2].contains("database.url: unsupported scheme \"mysql\""),
        "{stderr}"
    );
    assert!(lines[3].contains("database.max_connections: 0"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn unknown_key_exits_2_and_names_it() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config("[node]\njurisdiction = \"AU\"\ncolour = \"blue\"\n");
    let (code, _, stderr) = run(sandbox
        .igl()
        .args(["config", "check", "--config"])
        .arg(&config));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("node.colour: unknown field \"colour\""),
        "{stderr}"
    );
}

#[test]
fn bad_jurisdiction_from_env_exits_2() {
    let sandbox = Sandbox::new();
    let (code, stdout, stderr) = run(sandbox
        .igl()
        .args(["config", "check"])
        .env("IGL_NODE__JURISDICTION", "au"));
    assert_eq!(code, 2, "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stderr.contains(
            "node.jurisdiction: \"au\" is not an upper-case ISO 3166-1 alpha-2 code \
             (from environment variable IGL_NODE__JURISDICTION)"
        ),
        "{stderr}"
    );
}

#[test]
fn missing_config_file_exits_2() {
    let sandbox = Sandbox::new();
    let (code, _, stderr) = run(sandbox
        .igl()
        .args(["config", "check", "--config", "absent.toml"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.starts_with("error: cannot read configuration file absent.toml: "),
        "{stderr}"
    );
}

#[test]
fn invalid_log_filter_exits_2() {
    let sandbox = Sandbox::new();
    let (code, _, stderr) = run(sandbox
        .igl()
        .args(["config", "check"])
        .env("IGL_LOG__FILTER", "igl=loudest"));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("log.filter: is not a valid log filter"),
        "{stderr}"
    );
}

#[test]
fn unknown_component_flag_is_a_usage_error() {
    let sandbox = Sandbox::new();
    let (code, _, stderr) = run(sandbox.igl().args(["node", "--component", "routr"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("routr"), "{stderr}");
}

#[test]
fn migrate_creates_the_database_and_logs_json() {
    let sandbox = Sandbox::new();
    let data_dir = sandbox.path().join("data");
    let (code, _, stderr) = run(sandbox
        .igl()
        .args(["migrate", "--log-format", "json"])
        .env("IGL_NODE__DATA_DIR", &data_dir));
    assert_eq!(code, 0, "{stderr}");
    let first_line = stderr.lines().next().expect("a log line");
    assert!(
        first_line.starts_with('{') && first_line.contains("\"level\":\"INFO\""),
        "{stderr}"
    );
    assert!(stderr.contains("database schema is up to date"), "{stderr}");
    assert!(data_dir.join("igl.db").is_file(), "the SQLite file exists");
}

#[test]
fn migrate_failure_exits_1_without_leaking_the_password() {
    let sandbox = Sandbox::new();
    let (code, _, stderr) = run(sandbox
        .igl()
        .args(["migrate"])
        .env(
            "IGL_DATABASE__URL",
            "postgres://igl:migrate-pw@db.invalid/igl",
        )
        .env("IGL_DATABASE__CONNECT_TIMEOUT_SECS", "2"));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot migrate the database"), "{stderr}");
    assert!(!stderr.contains("migrate-pw"), "{stderr}");
}

#[cfg(unix)]
#[test]
fn node_stops_cleanly_on_sigterm() {
    let sandbox = Sandbox::new();
    let mut child = sandbox
        .igl()
        .args(["node", "--component", "admin-api", "--component", "router"])
        .env("IGL_NODE__DATA_DIR", sandbox.path().join("data"))
        .env("IGL_HTTP__BIND", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn igl node");

    // Read stderr on a thread so the wait below has a deadline.
    let stderr = child.stderr.take().expect("piped stderr");
    let (lines_tx, lines_rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    let mut seen = Vec::new();
    loop {
        let line = match lines_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(error) => {
                let _ = child.kill();
                panic!("no \"starting node\" log line ({error}); got {seen:#?}");
            }
        };
        let started = line.contains("starting node");
        seen.push(line);
        if started {
            break;
        }
    }
    assert!(
        seen.last().unwrap().contains("admin-api,router"),
        "{seen:#?}"
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());

    let exit = child.wait().expect("wait for igl node");
    reader.join().expect("stderr reader");
    seen.extend(lines_rx.try_iter());
    assert_eq!(exit.code(), Some(0), "{seen:#?}");
    assert!(
        seen.iter()
            .any(|line| line.contains("shutdown signal received") && line.contains("SIGTERM")),
        "{seen:#?}"
    );
}

/// `examples/channel.toml` of the repository.
fn channel_example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/channel.toml")
}

#[test]
fn the_channel_example_configuration_is_valid() {
    let sandbox = Sandbox::new();
    let (code, stdout, stderr) = run(sandbox
        .igl()
        .args(["channel", "--check", "--config"])
        .arg(channel_example()));
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(
        stdout.contains("channel endpoint: AU on 127.0.0.1:8180"),
        "{stdout}"
    );
    assert!(stdout.contains("peers SG"), "{stdout}");
    let (code, _, stderr) = run(sandbox
        .igl()
        .args(["config", "check", "--config"])
        .arg(channel_example()));
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(
        !sandbox.path().join("data").exists(),
        "a check must not create files"
    );
}

#[test]
fn an_invalid_channel_configuration_exits_2_and_hides_the_password() {
    let sandbox = Sandbox::new();
    let (code, _, stderr) = run(sandbox.igl().args([
        "channel",
        "--check",
        "--jurisdiction",
        "Australia",
        "--medium",
        "mysql://channel:medium-pw@db/channel",
        "--peer",
        "sg",
    ]));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("channel_endpoint.jurisdiction: \"Australia\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("channel_endpoint.medium_url: unsupported scheme \"mysql\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("channel_endpoint.peers: \"sg\""),
        "{stderr}"
    );
    assert!(!stderr.contains("medium-pw"), "{stderr}");
}

/// Reads lines of a child's pipe on a thread, so that waits have a deadline.
fn line_reader(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    lines_rx
}

#[cfg(unix)]
#[test]
fn channel_serves_the_channel_api_and_stops_on_sigterm() {
    let sandbox = Sandbox::new();
    let medium = sandbox.path().join("medium.db");
    let mut child = sandbox
        .igl()
        .args(["channel", "--dev", "--jurisdiction", "AU", "--peer", "SG"])
        .args(["--listen", "127.0.0.1:0", "--medium"])
        .arg(format!("sqlite://{}", medium.display()))
        .env("IGL_NODE__DATA_DIR", sandbox.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn igl channel");
    let stdout = line_reader(child.stdout.take().expect("piped stdout"));
    let stderr = line_reader(child.stderr.take().expect("piped stderr"));

    // The one stdout line names the bound address.
    let line = match stdout.recv_timeout(Duration::from_secs(30)) {
        Ok(line) => line,
        Err(error) => {
            let _ = child.kill();
            let logs: Vec<String> = stderr.try_iter().collect();
            panic!("no listening line ({error}); stderr: {logs:#?}");
        }
    };
    let base = line
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_owned();
    assert!(line.starts_with("igl channel AU listening on "), "{line}");

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let http = reqwest::Client::new();
        let health = http.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200);
        let message = serde_json::json!({
            "sender": "AU", "receiver": "SG", "subject": "AU.coo.cli-1",
            "obj": "QmQtYtUS7K1AdKjbuMsmPmPGDLaKL38M5HYwqxW9RKW49n",
            "predicate": "UN.CEFACT.Trade.CertificateOfOrigin.created",
        });
        let posted = http
            .post(format!("{base}/messages"))
            .header("Idempotency-Key", "AU:cli-1")
            .json(&message)
            .send()
            .await
            .unwrap();
        assert_eq!(posted.status(), 201);
        let id = posted.json::<serde_json::Value>().await.unwrap()["id"].clone();
        let read: serde_json::Value = http
            .get(format!("{base}/messages/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            read,
            serde_json::json!({"id": id, "status": "confirmed", "message": message})
        );
        // A receiver the channel does not reach is refused.
        let mut to_nz = message.clone();
        to_nz["receiver"] = "NZ".into();
        let refused = http
            .post(format!("{base}/messages"))
            .json(&to_nz)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 400);
        let metrics = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("igl_queue_depth{queue=\"channel-deliver.au\",state=\"ready\"}"),
            "{metrics}"
        );
    });

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let exit = child.wait().expect("wait for igl channel");
    let logs: Vec<String> = stderr.iter().collect();
    assert_eq!(exit.code(), Some(0), "{logs:#?}");
    assert!(
        logs.iter()
            .any(|line| line.contains("channel endpoint stopped")),
        "{logs:#?}"
    );
    assert!(medium.is_file(), "the medium is the given SQLite file");
}

#[test]
fn demo_sends_certificates_from_au_to_sg_and_verifies_every_step() {
    let sandbox = Sandbox::new();
    let data = sandbox.path().join("demo-data");
    let (code, stdout, stderr) = run(sandbox
        .igl()
        .args(["demo", "--messages", "5", "--data-dir"])
        .arg(&data));
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains("✓ subscriber verified by SG's hub"),
        "{stdout}"
    );
    // The first certificate is traced step by step.
    for step in [
        "document stored at AU",
        "message stored at AU",
        "routed to the channel",
        "received at SG",
        "document fetched and verified at SG",
        "notification delivered, signature valid",
        "confirmed by the channel, AU accepted",
    ] {
        assert!(
            stdout
                .lines()
                .any(|line| line.contains(&format!("✓ {step}"))),
            "no traced line for {step:?}:\n{stdout}"
        );
        let row = stdout
            .lines()
            .find(|line| line.trim_start().starts_with(step) && !line.contains('✓'))
            .unwrap_or_else(|| panic!("no summary row for {step:?}:\n{stdout}"));
        assert_eq!(
            row.split_whitespace().nth(step.split_whitespace().count()),
            Some("5"),
            "{row}"
        );
    }
    assert!(
        stdout.contains(
            "summary: 5 of 5 certificates of origin went from AU to SG with every step verified"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("5 documents uploaded, 5 messages posted, 5 signed notifications verified"),
        "{stdout}"
    );
    assert!(stdout.contains("throughput:"), "{stdout}");
    assert!(data.join("au").join("igl.db").exists());
    assert!(data.join("sg").join("igl.db").exists());
}

#[test]
fn demo_that_times_out_exits_1_and_says_what_it_waited_for() {
    let sandbox = Sandbox::new();
    let (code, _, stderr) = run(sandbox.igl().args(["demo", "--timeout", "0"]));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(
            "error: timed out after 0 s waiting for SG's hub to verify the demo subscriber's intent"
        ),
        "{stderr}"
    );
}

/// Every `*.toml` file under `dir` and its subdirectories, sorted.
fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path
                .extension()
                .is_some_and(|extension| extension == "toml")
            {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn config_check_accepts_every_shipped_config_file() {
    let repository = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let files: Vec<PathBuf> = ["deploy", "examples"]
        .iter()
        .flat_map(|dir| toml_files(&repository.join(dir)))
        .collect();
    assert!(
        files.len() >= 4,
        "expected the example and deployment configs, found {files:?}"
    );
    let sandbox = Sandbox::new();
    for file in &files {
        let (code, stdout, stderr) = run(sandbox
            .igl()
            .args(["config", "check", "--config"])
            .arg(file));
        assert_eq!(
            code,
            0,
            "igl config check rejects {}:\n{stderr}",
            file.display()
        );
        assert!(stdout.starts_with("configuration is valid"), "{stdout}");
    }
}

#[test]
fn config_check_summarises_s3_objects_without_secrets() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config(
        "[objects]\ntype = \"s3\"\nbucket = \"igl-au\"\nendpoint = \"http://127.0.0.1:9000\"\n\
         allow_http = true\naccess_key_id = \"AKIATEST\"\nsecret_access_key = \"hunter2-s3\"\n",
    );
    let (code, stdout, stderr) = run(sandbox
        .igl()
        .args(["config", "check", "--config"])
        .arg(&config));
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(
        stdout.contains(
            "objects:      s3 bucket igl-au at http://127.0.0.1:9000 (region us-east-1, \
             path-style, credentials from configuration)"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("hunter2-s3"), "{stdout}");

    let (code, _, stderr) = run(sandbox
        .igl()
        .args(["config", "check"])
        .env("IGL_OBJECTS__TYPE", "s3")
        .env("IGL_OBJECTS__BUCKET", "Bad_Bucket")
        .env("IGL_OBJECTS__SECRET_ACCESS_KEY", "hunter2-env"));
    assert_eq!(code, 2, "stderr: {stderr}");
    assert!(stderr.contains("objects.bucket"), "{stderr}");
    assert!(
        stderr.contains("objects.access_key_id: is required when objects.secret_access_key is set"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2-env"), "{stderr}");
}
