//! Helpers shared by the crash, restart and long-run process tests: clusters of real `smr`
//! processes (owned by a [`LocalCluster`], which kills them on drop and then removes its
//! temporary directory, data directories included), in-process clients, status polling and
//! per-process memory readings.
//!
//! Every wait here has a deadline, so a hang fails the test instead of stalling the suite.

#![allow(dead_code)]

use std::future::Future;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use smr_core::driver::InvokeError;
use smr_core::message::StatusReport;
use smr_core::ReplicaId;
use smr_crypto::IdentityKey;
use smr_demo::history::{check_counter_history, CounterCall, CounterEvent};
use smr_demo::keygen::KeygenOptions;
use smr_demo::local::{ClusterSetup, LocalCluster};
use smr_demo::{status, CounterOp, CounterReply, ServiceKind};
use smr_modes::Mode;
use smr_transport::Client;

pub const SMR: &str = env!("CARGO_BIN_EXE_smr");
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
pub const AGREE_TIMEOUT: Duration = Duration::from_secs(30);
pub const STATUS_TIMEOUT: Duration = Duration::from_millis(1000);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Runs a test body with a deadline.
pub async fn within<T>(limit: Duration, body: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, body)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {limit:?}"))
}

/// Prints to stdout (seen with `--nocapture`) and to stderr (seen in a failing test's output).
#[macro_export]
macro_rules! report {
    ($($arg:tt)*) => {{
        let line = format!($($arg)*);
        println!("{line}");
        eprintln!("{line}");
    }};
}

/// How a test cluster is set up.
#[derive(Clone, Debug)]
pub struct Setup {
    pub mode: Mode,
    pub n: usize,
    pub clients: usize,
    /// Each replica gets `--data-dir` (inside the cluster's temporary directory).
    pub data_dirs: bool,
    /// `[limits] checkpoint_period`, if not the default.
    pub checkpoint_period: Option<u64>,
}

impl Setup {
    pub fn new(mode: Mode, n: usize, clients: usize) -> Setup {
        Setup {
            mode,
            n,
            clients,
            data_dirs: false,
            checkpoint_period: None,
        }
    }

    pub fn with_data_dirs(mut self) -> Setup {
        self.data_dirs = true;
        self
    }

    pub fn checkpoint_period(mut self, period: u64) -> Setup {
        self.checkpoint_period = Some(period);
        self
    }
}

/// Replaces the value of `key = ...` in the `[section]` of a TOML text written by keygen.
pub fn set_toml_value(text: &str, section: &str, key: &str, value: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut current = String::new();
    let mut replaced = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            current = trimmed.to_string();
        }
        if current == format!("[{section}]")
            && trimmed.split('=').next().map(str::trim) == Some(key)
        {
            out.push_str(&format!("{key} = {value}\n"));
            replaced = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(replaced, "no {key} in [{section}] of:\n{text}");
    out
}

/// Starts a cluster as `setup` says. With `SMR_TEST_KEEP_DIRS` set in the environment, its
/// directory (config, keys, replica logs, data dirs) is left in place for inspection.
pub fn start_cluster(setup: &Setup) -> LocalCluster {
    init_tracing();
    let mut options = KeygenOptions::new(setup.mode, setup.n);
    options.clients = setup.clients;
    let period = setup.checkpoint_period;
    let edit = move |text: &str| match period {
        Some(p) => set_toml_value(text, "limits", "checkpoint_period", &p.to_string()),
        None => text.to_string(),
    };
    let cluster_setup = ClusterSetup {
        edit_config: Some(&edit),
        data_dirs: setup.data_dirs,
        replica_args: &[],
    };
    let cluster = tokio::task::block_in_place(|| {
        LocalCluster::start_with(
            Path::new(SMR),
            &options,
            ServiceKind::Counter,
            READY_TIMEOUT,
            false,
            &cluster_setup,
        )
    })
    .unwrap_or_else(|e| panic!("cluster did not start: {e}"));
    if let Some(p) = period {
        assert_eq!(cluster.config().limits.checkpoint_period, p);
    }
    let mut cluster = cluster;
    if std::env::var_os("SMR_TEST_KEEP_DIRS").is_some() {
        eprintln!(
            "SMR_TEST_KEEP_DIRS: keeping {}",
            cluster.keep_dir().display()
        );
    }
    cluster
}

/// A client with client key `index`, waiting at most `timeout` for each reply quorum.
pub async fn client(cluster: &LocalCluster, index: usize, timeout: Duration) -> Client {
    cluster
        .client(index)
        .await
        .expect("client connects")
        .with_timeout(timeout)
}

/// A client with at most `window` requests in flight.
pub async fn windowed_client(
    cluster: &LocalCluster,
    index: usize,
    window: usize,
    timeout: Duration,
) -> Client {
    let key = IdentityKey::load(cluster.client_key_path(index)).expect("client key");
    Client::connect_with_window(cluster.config(), key, window)
        .await
        .expect("client connects")
        .with_timeout(timeout)
}

pub async fn try_counter(client: &Client, op: CounterOp) -> Result<i64, InvokeError> {
    let reply = client.invoke(op.encode()).await?;
    match CounterReply::decode(&reply).expect("a counter reply") {
        CounterReply::Value(v) => Ok(v),
        CounterReply::Error(e) => panic!("counter refused the operation: {e}"),
    }
}

/// Runs `Add(1)` or `Get` and records it for the linearizability check.
pub async fn try_timed(client: &Client, call: CounterCall) -> Result<CounterEvent, InvokeError> {
    let op = match call {
        CounterCall::Add => CounterOp::Add(1),
        CounterCall::Get => CounterOp::Get,
    };
    let invoked = Instant::now();
    let value = try_counter(client, op).await?;
    Ok(CounterEvent {
        call,
        invoked,
        returned: Instant::now(),
        value,
    })
}

/// Like [`try_timed`]; panics if the operation fails.
pub async fn timed(client: &Client, call: CounterCall) -> CounterEvent {
    try_timed(client, call)
        .await
        .unwrap_or_else(|e| panic!("{call:?}: {e}"))
}

/// The recorded counter history has a sequential explanation that respects real time.
pub fn assert_linearizable(events: &[CounterEvent], what: &str) {
    if let Err(violation) = check_counter_history(events) {
        panic!(
            "{what}: the history of {} operations is not linearizable: {violation}",
            events.len()
        );
    }
}

/// The values the adds of a history returned.
pub fn add_values(events: &[CounterEvent]) -> Vec<i64> {
    events
        .iter()
        .filter(|e| e.call == CounterCall::Add)
        .map(|e| e.value)
        .collect()
}

pub async fn counter(client: &Client, op: CounterOp) -> i64 {
    try_counter(client, op.clone())
        .await
        .unwrap_or_else(|e| panic!("{op:?}: {e}"))
}

/// Every replica in `ids` answers, and they agree on last decided cid and state digest.
pub async fn wait_agree(
    client: &Client,
    ids: &[ReplicaId],
    timeout: Duration,
) -> Vec<StatusReport> {
    let (answers, agree) = status::wait_until_agree(client, ids, timeout).await;
    assert!(
        agree,
        "replicas {ids:?} did not answer and agree within {timeout:?}:\n{}",
        answers
            .iter()
            .map(status::format_line)
            .collect::<Vec<_>>()
            .join("\n")
    );
    answers.into_iter().map(|a| a.report.unwrap()).collect()
}

/// The status lines of the given reports, for messages.
pub fn table(reports: &[StatusReport]) -> String {
    reports
        .iter()
        .map(|r| {
            status::format_line(&status::ReplicaAnswer {
                id: r.replica,
                report: Some(r.clone()),
            })
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Keeps the log of a replica that is about to be restarted (starting it truncates its log).
pub fn keep_log(cluster: &LocalCluster, id: ReplicaId, suffix: &str) {
    let log = cluster.log_path(id);
    let _ = std::fs::copy(&log, log.with_extension(format!("log.{suffix}")));
}

/// Restarts replica `id` with `args` and waits until it serves.
pub fn restart(cluster: &mut LocalCluster, id: ReplicaId, args: &[&str]) {
    tokio::task::block_in_place(|| {
        cluster
            .start_replica(id, args)
            .unwrap_or_else(|e| panic!("replica {id} did not restart: {e}"));
        cluster
            .wait_ready(READY_TIMEOUT)
            .unwrap_or_else(|e| panic!("replica {id} did not come back: {e}"));
    });
}

/// Restarts replica `id` on its data directory ([`LocalCluster::data_dir`]), with `--rejoin`
/// if `rejoin`, and waits until it serves.
pub fn restart_on_data_dir(cluster: &mut LocalCluster, id: ReplicaId, rejoin: bool) {
    let mut args = data_dir_args(cluster, id);
    if rejoin {
        args.push("--rejoin".into());
    }
    restart(cluster, id, &as_strs(&args));
}

/// `--data-dir DIR` for replica `id`.
pub fn data_dir_args(cluster: &LocalCluster, id: ReplicaId) -> Vec<String> {
    vec![
        "--data-dir".to_string(),
        cluster.data_dir(id).to_string_lossy().into_owned(),
    ]
}

pub fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Resident memory of a process in KiB (VmRSS in /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The outcome of one `smr` command.
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Kills the child if the test gives up on it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Runs `smr ARGS` to completion (blocking the thread), failing the test if it takes longer
/// than `timeout`. Stdin is a closed pipe, so a replica started with `--exit-on-stdin-eof`
/// would stop by itself.
pub fn smr(args: &[&str], timeout: Duration) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let child = Command::new(SMR)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("smr starts");
    let mut child = KillOnDrop(child);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            panic!(
                "`smr {}` did not finish within {timeout:?}; stdout so far:\n{}\nstderr so far:\n{}",
                args.join(" "),
                std::fs::read_to_string(&out_path).unwrap_or_default(),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        status,
        stdout: std::fs::read_to_string(&out_path).unwrap(),
        stderr: std::fs::read_to_string(&err_path).unwrap(),
    }
}

pub async fn smr_async(args: &[&str], timeout: Duration) -> Run {
    tokio::task::block_in_place(|| smr(args, timeout))
}

/// Starts `smr ARGS` (with the environment variables `envs`) with stdout and stderr piped,
/// reads the first line of its stdout and closes it: a reader that stops after one line
/// (`| head -n1`). Returns the running command and that line.
pub fn smr_into_head(args: &[&str], envs: &[(&str, &Path)]) -> (std::process::Child, String) {
    let mut child = Command::new(SMR)
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("smr starts");
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("piped")),
        &mut first,
    )
    .expect("smr prints a line");
    (child, first)
}

/// Waits up to `timeout` for `child`, whose stdout reader went away, to exit (killing it and
/// failing the test after that), and checks that it exited quietly: status 0 and no panic
/// on its stderr (which must be piped).
pub fn assert_quiet_exit(mut child: std::process::Child, timeout: Duration) {
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("smr went on writing into a closed pipe for {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("piped"), &mut stderr).unwrap();
    assert!(
        status.success() && !stderr.contains("panicked"),
        "{status}: {stderr}"
    );
}
