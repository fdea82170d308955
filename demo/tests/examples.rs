//! The `smr` crate's examples and `smr client --unordered` against the cluster that
//! `smr cluster --keep-running` leaves up (issue 15, items 2 and 4). The examples are built by
//! `cargo test --workspace` (or `cargo build -p smr --examples`), into the target directory's
//! `examples/`, next to this test's `deps/`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The path of the `smr` crate's example `name`, built beside this test binary.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p smr --examples` (cargo test --workspace builds it)",
        path.display()
    );
    path
}

/// Runs a program to completion; its stdout, trimmed, if it succeeded.
fn run(program: &Path, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} {args:?}: {}\n{}",
        program.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The highest cid any replica decided (`smr status --json`).
fn decided(config: &str) -> u64 {
    let status = smr(&["status", "--config", config, "--json"], RUN_TIMEOUT);
    assert!(status.status.success(), "{status}");
    let json: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    json["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["last_decided"].as_u64())
        .max()
        .expect("a replica answered")
}

/// `smr cluster --keep-running`, stopped with SIGINT (which removes its directory) on drop.
struct KeptCluster(std::process::Child);

impl Drop for KeptCluster {
    fn drop(&mut self) {
        // SIGINT, as Ctrl-C: it stops its replicas and removes its directory.
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `smr cluster --keep-running` and returns it with the config path it prints.
fn keep_running_cluster() -> (KeptCluster, String) {
    let mut child = Command::new(SMR)
        .args(["cluster", "--keep-running"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let cluster = KeptCluster(child);
    let (lines, received) = mpsc::channel();
    // Reads to the end, not only up to the config line: a reader that stopped early would
    // close the pipe, and the cluster's next line (it prints its hints after the config line)
    // would fail with EPIPE and end it, removing its directory under the test (seen once in a
    // loaded whole-workspace run: the counter example found no cluster.toml).
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let _ = lines.send(line.unwrap_or_default());
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = received
            .recv_timeout(left)
            .expect("`smr cluster --keep-running` printed its config within 120 s");
        if let Some((_, config)) = line.split_once(" status --config ") {
            return (cluster, config.trim().to_string());
        }
    }
}

/// Issue 15: `smr client --unordered counter get` returns what a following ordered `get`
/// returns, without ordering anything (the decided cid does not move), and sees a write another
/// process completed just before; the `counter_client` example works against the same cluster.
/// Before, `--unordered` did not exist and every read was ordered (`Client::connect` turned
/// unordered reads off).
#[test]
fn unordered_reads_and_the_counter_client_example_work_against_smr_cluster_keep_running() {
    let counter_client = example("counter_client");
    let (_cluster, config) = keep_running_cluster();
    let config = config.as_str();
    let get = |unordered: bool| {
        let mut args = vec!["client", "--config", config];
        if unordered {
            args.push("--unordered");
        }
        args.extend(["counter", "get"]);
        let run = smr(&args, RUN_TIMEOUT);
        assert!(run.status.success(), "{run}");
        run.stdout.trim().parse::<i64>().unwrap()
    };
    let before = decided(config);
    let read = get(true);
    assert_eq!(
        decided(config),
        before,
        "the unordered read ordered nothing"
    );
    assert_eq!(get(false), read, "an ordered get after it returns the same");
    assert!(decided(config) > before, "the ordered get was ordered");

    let added: i64 = run(&counter_client, &[config, "add", "5"]).parse().unwrap();
    assert_eq!(added, read + 5);
    assert_eq!(
        get(true),
        read + 5,
        "an unordered read sees the completed write"
    );
    let via_example: i64 = run(&counter_client, &[config, "get"]).parse().unwrap();
    assert_eq!(via_example, read + 5);

    let refused = smr(
        &[
            "client",
            "--config",
            config,
            "--unordered",
            "counter",
            "add",
            "1",
        ],
        RUN_TIMEOUT,
    );
    assert!(!refused.status.success(), "{refused}");
    assert!(
        refused.stderr.contains("--unordered is for reads"),
        "{refused}"
    );
    assert_eq!(get(false), read + 5, "the refused add was not sent");
}

/// Kills the example's replica processes on drop.
struct Replicas(Vec<std::process::Child>);

impl Drop for Replicas {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts the example `program`'s four replicas (`replica <config> <i> --new-cluster`) of a
/// fresh BFT cluster from `smr keygen`; returns them and the config's path.
fn example_cluster(program: &Path, dir: &Path) -> (Replicas, String) {
    let generated = smr_demo::keygen::generate(
        dir,
        &smr_demo::keygen::KeygenOptions::new(smr_modes::Mode::Bft, 4),
    )
    .unwrap();
    let config = generated.config_path.to_str().unwrap().to_string();
    let replicas = (0..4)
        .map(|i| {
            Command::new(program)
                .args(["replica", &config, &i.to_string(), "--new-cluster"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    (Replicas(replicas), config)
}

/// The `sum` example (the README's program) adds through consensus and reads unordered.
#[test]
fn the_sum_example_adds_and_reads() {
    let sum = example("sum");
    let dir = tempfile::tempdir().unwrap();
    let (_replicas, config) = example_cluster(&sum, dir.path());
    assert_eq!(run(&sum, &["client", &config, "5"]), "5");
    assert_eq!(run(&sum, &["client", &config, "-2"]), "3");
    assert_eq!(run(&sum, &["read", &config]), "3");
}

/// Issue 15 item 4: the `kv` example (an embedded replicated key-value service with its own
/// serde types) runs as the four replicas of a cluster from `smr keygen`, and its client puts
/// and reads (unordered) against them.
#[test]
fn the_kv_example_runs_a_replicated_key_value_service() {
    let kv = example("kv");
    let dir = tempfile::tempdir().unwrap();
    let (_replicas, config) = example_cluster(&kv, dir.path());
    let config = config.as_str();
    assert_eq!(run(&kv, &["put", config, "color", "blue"]), "(none)");
    assert_eq!(run(&kv, &["get", config, "color"]), "blue");
    assert_eq!(run(&kv, &["put", config, "color", "red"]), "blue");
    assert_eq!(run(&kv, &["get", config, "color"]), "red");
    assert_eq!(run(&kv, &["get", config, "size"]), "(none)");
}
