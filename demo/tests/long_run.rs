//! A long run against real `smr replica` processes: the decision log stays under two
//! checkpoint periods and the replicas' memory stays flat however many requests go through.
//!
//! The default run sends [`DEFAULT_REQUESTS`] (50,000) increments from 8 clients with 16 in
//! flight each. They are ordered in batches of about 20, so about 2,500 decisions: the test
//! uses `checkpoint_period = `[`DEFAULT_PERIOD`] to span over twenty checkpoints. The figure of
//! the checkpoint issue, 50,000 requests with `checkpoint_period = 1000`, needs small batches to
//! span ten checkpoints (one request per batch: about 50,000 decisions, 49 checkpoints, under
//! three minutes on 2 cores):
//!
//! ```text
//! SMR_LONG_RUN_CHECKPOINT_PERIOD=1000 SMR_LONG_RUN_CLIENTS=4 SMR_LONG_RUN_WINDOW=1 \
//!     cargo test -p smr-demo --test long_run -- --nocapture
//! ```
//!
//! It prints a table of samples: requests done, and per replica the last decided cid, the
//! last stable checkpoint, the decision log's entries, resident memory and data-dir bytes.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use smr_core::ReplicaId;
use smr_demo::history::CounterCall;
use smr_demo::CounterOp;
use smr_modes::Mode;

const DEFAULT_REQUESTS: usize = 50_000;
const DEFAULT_PERIOD: u64 = 100;
const DEFAULT_CLIENTS: usize = 8;
/// Requests each client keeps in flight. Few enough that batches stay small (32 requests in
/// flight), so 50,000 requests make well over `MIN_CHECKPOINTS` periods of decisions.
const DEFAULT_WINDOW: usize = 4;
const INVOKE_TIMEOUT: Duration = Duration::from_secs(30);
const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// Memory after the run may exceed memory after the first fifth of it by this factor...
const RSS_FACTOR: f64 = 1.5;
/// ...plus this much (allocator slack, QUIC buffers).
const RSS_SLACK_KIB: u64 = 8 * 1024;
/// A run must span at least this many checkpoints to show that the log stays bounded.
const MIN_CHECKPOINTS: u64 = 10;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a valid number")),
        Err(_) => default,
    }
}

#[derive(Clone, Debug)]
struct ReplicaSample {
    decided: u64,
    checkpoint: u64,
    log_entries: u64,
    rss_kib: u64,
    disk_bytes: u64,
}

#[derive(Clone, Debug)]
struct Sample {
    at: Duration,
    done: usize,
    replicas: Vec<ReplicaSample>,
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn sample_header(n: usize) -> String {
    let mut header = format!("{:>6} {:>7}", "t(s)", "done");
    for r in 0..n {
        header.push_str(&format!(
            " | r{r} {:>6} {:>6} {:>5} {:>7} {:>6}",
            "decid", "ckpt", "log", "rssKiB", "diskKiB"
        ));
    }
    header
}

fn sample_line(s: &Sample) -> String {
    let mut line = format!("{:>6.1} {:>7}", s.at.as_secs_f64(), s.done);
    for r in &s.replicas {
        line.push_str(&format!(
            " |    {:>6} {:>6} {:>5} {:>7} {:>6}",
            r.decided,
            r.checkpoint,
            r.log_entries,
            r.rss_kib,
            r.disk_bytes / 1024
        ));
    }
    line
}

fn print_samples(samples: &[Sample], n: usize) {
    report!("{}", sample_header(n));
    for s in samples {
        report!("{}", sample_line(s));
    }
}

struct Run {
    mode: Mode,
    n: usize,
    requests: usize,
    period: u64,
    clients: usize,
    window: usize,
}

async fn long_run(run: Run) {
    let Run {
        mode,
        n,
        requests,
        period,
        clients: client_count,
        window,
    } = run;
    // One more key for the observer: two clients sharing a key would share its sequence
    // numbers and reply routing (replies go to the key's most recent connection).
    let setup = Setup::new(mode, n, client_count + 1)
        .with_data_dirs()
        .checkpoint_period(period);
    let mut cluster = start_cluster(&setup);
    let ids: Vec<ReplicaId> = (0..n as ReplicaId).collect();
    let pids: Vec<u32> = ids
        .iter()
        .map(|id| cluster.replica(*id).expect("running").pid())
        .collect();
    let data_dirs: Vec<_> = ids.iter().map(|id| cluster.data_dir(*id)).collect();
    let mut clients = Vec::new();
    for i in 0..client_count {
        clients.push(windowed_client(&cluster, i, window, INVOKE_TIMEOUT).await);
    }
    let observer = client(&cluster, client_count, INVOKE_TIMEOUT).await;
    wait_agree(&observer, &ids, AGREE_TIMEOUT).await;

    let issued = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let seen: Arc<Vec<AtomicBool>> =
        Arc::new((0..requests).map(|_| AtomicBool::new(false)).collect());
    let mut workers = Vec::new();
    for c in &clients {
        for _ in 0..window {
            let (c, issued, done, seen) = (c.clone(), issued.clone(), done.clone(), seen.clone());
            workers.push(tokio::spawn(async move {
                let mut events = Vec::new();
                while issued.fetch_add(1, Ordering::Relaxed) < requests {
                    let event = timed(&c, CounterCall::Add).await;
                    let v = event.value;
                    events.push(event);
                    assert!(
                        (1..=requests as i64).contains(&v),
                        "increment returned {v}, beyond the {requests} sent"
                    );
                    let again = seen[v as usize - 1].swap(true, Ordering::Relaxed);
                    assert!(!again, "increment returned {v} twice");
                    done.fetch_add(1, Ordering::Relaxed);
                }
                events
            }));
        }
    }

    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    eprintln!("{}", sample_header(n));
    let sample =
        |at: Duration, done: usize, reports: Vec<smr_demo::status::ReplicaAnswer>| Sample {
            at,
            done,
            replicas: reports
                .iter()
                .zip(&pids)
                .zip(&data_dirs)
                .map(|((a, pid), dir)| {
                    let r = a.report.as_ref().unwrap_or_else(|| {
                        panic!("replica {} did not answer a status query", a.id)
                    });
                    ReplicaSample {
                        decided: r.last_decided.0,
                        checkpoint: r.last_checkpoint.0,
                        log_entries: r.log_entries,
                        rss_kib: rss_kib(*pid).unwrap_or_else(|| panic!("no VmRSS for pid {pid}")),
                        disk_bytes: dir_bytes(dir),
                    }
                })
                .collect(),
        };
    loop {
        let finished = workers.iter().all(|w| w.is_finished());
        let now_done = done.load(Ordering::Relaxed);
        let answers =
            smr_demo::status::query(&observer, ids.iter().copied(), Duration::from_secs(2)).await;
        samples.push(sample(started.elapsed(), now_done, answers));
        // As it goes, so that a run that stalls shows where.
        eprintln!("{}", sample_line(samples.last().unwrap()));
        if finished {
            break;
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
        cluster.check_running().expect("every replica runs");
    }
    let took = started.elapsed();
    let mut events = Vec::with_capacity(requests);
    for w in workers {
        events.extend(w.await.expect("client worker"));
    }
    assert_linearizable(&events, "the long run");
    assert_eq!(done.load(Ordering::Relaxed), requests);
    assert!(
        seen.iter().all(|s| s.load(Ordering::Relaxed)),
        "every value 1..={requests} returned once"
    );
    assert_eq!(counter(&observer, CounterOp::Get).await, requests as i64);
    let reports = wait_agree(&observer, &ids, AGREE_TIMEOUT).await;
    let answers =
        smr_demo::status::query(&observer, ids.iter().copied(), Duration::from_secs(2)).await;
    samples.push(sample(started.elapsed(), requests, answers));

    report!(
        "{mode} n={n}: {requests} increments from {client_count} clients x {window} in flight in {took:.1?} \
         ({:.0} ops/s); {} decisions ({:.1} requests per batch), checkpoint_period {period} ({} checkpoints)",
        requests as f64 / took.as_secs_f64(),
        reports[0].last_decided,
        requests as f64 / reports[0].last_decided.0 as f64,
        reports[0].last_decided.0 / period,
    );
    print_samples(&samples, n);

    let max_log = samples
        .iter()
        .flat_map(|s| s.replicas.iter().map(|r| r.log_entries))
        .max()
        .unwrap();
    report!(
        "max decision log entries over all samples and replicas: {max_log} (bound {})",
        2 * period
    );
    assert!(
        max_log < 2 * period,
        "the decision log reached {max_log} entries, not under 2 checkpoint periods ({})",
        2 * period
    );
    assert!(
        reports[0].last_decided.0 >= MIN_CHECKPOINTS * period,
        "only {} decisions for checkpoint_period {period}: fewer than {MIN_CHECKPOINTS} checkpoints, \
         too few to show a bound; send more requests or fewer at once (smaller batches)",
        reports[0].last_decided
    );

    // Memory after the first fifth of the requests against memory at the end.
    let baseline = samples
        .iter()
        .find(|s| s.done >= requests / 5)
        .expect("a sample after the first fifth");
    let end = samples.last().unwrap();
    for (r, (base, last)) in baseline.replicas.iter().zip(&end.replicas).enumerate() {
        let bound = (base.rss_kib as f64 * RSS_FACTOR) as u64 + RSS_SLACK_KIB;
        let growth_per_request = (last.rss_kib as f64 - base.rss_kib as f64) * 1024.0
            / (requests - baseline.done).max(1) as f64;
        report!(
            "replica {r}: RSS {} KiB after {} requests, {} KiB at the end (bound {bound} KiB; \
             {growth_per_request:+.1} bytes per request since); data dir {} KiB then, {} KiB at the end",
            base.rss_kib,
            baseline.done,
            last.rss_kib,
            base.disk_bytes / 1024,
            last.disk_bytes / 1024
        );
        assert!(
            last.rss_kib <= bound,
            "replica {r}'s memory grew from {} KiB to {} KiB",
            base.rss_kib,
            last.rss_kib
        );
    }
    observer.shutdown().await;
    for c in clients {
        c.shutdown().await;
    }
}

/// Runs [`DEFAULT_REQUESTS`] requests with checkpoint period [`DEFAULT_PERIOD`]; the
/// environment may change the request count (`SMR_LONG_RUN_REQUESTS`), the period
/// (`SMR_LONG_RUN_CHECKPOINT_PERIOD`), the clients and the requests each keeps in flight
/// (`SMR_LONG_RUN_CLIENTS`, `SMR_LONG_RUN_WINDOW`), and the mode (`SMR_LONG_RUN_MODE=cft`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_run_keeps_the_log_under_two_checkpoint_periods_and_memory_flat() {
    let mode = env_or("SMR_LONG_RUN_MODE", Mode::Bft);
    let run = Run {
        mode,
        n: if mode == Mode::Bft { 4 } else { 3 },
        requests: env_or("SMR_LONG_RUN_REQUESTS", DEFAULT_REQUESTS),
        period: env_or("SMR_LONG_RUN_CHECKPOINT_PERIOD", DEFAULT_PERIOD),
        clients: env_or("SMR_LONG_RUN_CLIENTS", DEFAULT_CLIENTS),
        window: env_or("SMR_LONG_RUN_WINDOW", DEFAULT_WINDOW),
    };
    // Generous: about 200 requests a second at worst, and never under two minutes.
    let limit = Duration::from_secs((run.requests as u64 / 200).max(120));
    within(limit, long_run(run)).await;
}
