//! Issue 15's acceptance for client sessions, with real processes: rounds of concurrent
//! `smr client --config c/cluster.toml counter add 1` processes that all use the default
//! `client.key`, on a 4-replica BFT cluster with data dirs. Each process is a session of its
//! own: none takes another's replies, none collides in sequence numbers, and no seq comes from
//! the clock, so every call succeeds and the counter counts every add exactly once.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{start_cluster, within, Setup, SMR};
use smr_modes::Mode;

const ROUNDS: usize = 10;
const PROCESSES: usize = 6;
/// What one `smr client` process may take, failover included.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(40);

/// Runs `PROCESSES` `smr client ... counter add 1` at once and returns each one's outcome.
fn round(config: &str) -> Vec<Result<i64, String>> {
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            Command::new(SMR)
                .args(["client", "--config", config, "counter", "add", "1"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("smr starts")
        })
        .collect();
    let deadline = Instant::now() + PROCESS_TIMEOUT;
    children
        .into_iter()
        .map(|mut child| {
            while child.try_wait().unwrap().is_none() {
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("did not finish within {PROCESS_TIMEOUT:?}"));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let out = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
            match (out.status.success(), stdout.parse::<i64>()) {
                (true, Ok(value)) => Ok(value),
                _ => Err(format!(
                    "{}: stdout {stdout:?}, stderr {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                )),
            }
        })
        .collect()
}

/// `kill_after_round`: kill replica 1 (not the first leader) after that many rounds.
async fn concurrent_processes_sharing_a_key(kill_after_round: Option<usize>) {
    let mut cluster = start_cluster(&Setup::new(Mode::Bft, 4, 1).with_data_dirs());
    let config = cluster.config_path().to_str().unwrap().to_string();
    let started = Instant::now();
    let mut values = Vec::new();
    let mut failures = Vec::new();
    for r in 0..ROUNDS {
        if kill_after_round == Some(r) {
            cluster.kill(1).expect("replica 1 runs").expect("killed");
        }
        let config = config.clone();
        for outcome in tokio::task::block_in_place(|| round(&config)) {
            match outcome {
                Ok(value) => values.push(value),
                Err(e) => failures.push(format!("round {r}: {e}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} calls failed:\n{}",
        failures.len(),
        ROUNDS * PROCESSES,
        failures.join("\n")
    );
    // Every add was counted once: the results are exactly 1..=60, each once.
    values.sort_unstable();
    let total = (ROUNDS * PROCESSES) as i64;
    assert_eq!(values, (1..=total).collect::<Vec<_>>());
    let get = tokio::task::block_in_place(|| {
        Command::new(SMR)
            .args(["client", "--config", &config, "counter", "get"])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    });
    assert!(get.status.success(), "{get:?}");
    assert_eq!(
        String::from_utf8_lossy(&get.stdout).trim(),
        total.to_string()
    );
    eprintln!(
        "{ROUNDS} rounds of {PROCESSES} processes sharing client.key{}: {} calls in {:.1} s",
        if kill_after_round.is_some() {
            ", replica 1 killed"
        } else {
            ""
        },
        total,
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_client_processes_sharing_the_default_key_all_succeed_exactly_once() {
    within(
        Duration::from_secs(300),
        concurrent_processes_sharing_a_key(None),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_client_processes_sharing_a_key_all_succeed_with_a_replica_killed() {
    within(
        Duration::from_secs(300),
        concurrent_processes_sharing_a_key(Some(3)),
    )
    .await;
}
