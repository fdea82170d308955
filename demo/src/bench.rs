//! `smr bench`: the throughput/latency benchmark, after BFT-SMaRt's ThroughputLatency.
//!
//! It starts n `smr replica` processes of the null service on 127.0.0.1 (a [`LocalCluster`]),
//! then runs k closed-loop clients in this process: each client is one async, pipelined
//! [`Client`] with its own key and `--outstanding` tasks, each of which invokes, waits for the
//! reply quorum, and invokes again. After `--warmup` seconds it measures for `--duration`
//! seconds:
//! - throughput: requests completed in the window, per second;
//! - latency: per request, from `invoke` to the reply quorum, measured in the client; p50, p90,
//!   p99 and max over the requests that completed in the window;
//! - average batch size: growth of executed requests over growth of decided instances, from the
//!   replicas' status reports at the window's edges;
//! - CPU: user+system seconds of every replica process and of this process (the clients) over
//!   the window, from `/proc/<pid>/stat`, per 1000 operations.
//!
//! In BFT it also measures the ed25519 verification ceiling on this machine, before the cluster
//! starts: the CPU cost of batch verification per signature, and `cores / (cost × n)`, the
//! throughput at which n replicas that each verify every request once would saturate every core
//! with verification alone. The run reports its throughput as a fraction of that.
//!
//! `--kill-leader-after S` kills the leader with SIGKILL S seconds into the window and reports
//! the longest gap between consecutive completions (the failover stall) and the max latency.
//!
//! `--sweep` steps the client count for BFT and then CFT, one cluster per mode, and draws the
//! throughput–latency curves on one plot.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use smr_core::message::{Request, RequestBody, RequestKind, StatusReport};
use smr_core::ReplicaId;
use smr_crypto::{Ed25519Verifier, IdentityKey, SignedItem, Signer, Verifier};
use smr_modes::Mode;
use smr_transport::{Client, UnorderedReads};

use crate::keygen::KeygenOptions;
use crate::local::{ClusterSetup, LocalCluster};
use crate::output::OutputError;
use crate::services::ServiceKind;
use crate::status;
use crate::{errln, outln};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one invocation may wait for its reply quorum (a failover takes a few seconds).
const INVOKE_TIMEOUT: Duration = Duration::from_secs(30);
/// After the window closes, how long the clients get to finish what they have in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Signatures per batch in the ceiling microbenchmark.
const CEILING_BATCH: usize = 64;
/// Width of the timeline buckets (and of the single-run plot's bars).
const BUCKET_MS: u64 = 100;

/// `smr bench` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Fault model: bft (4 replicas, f=1) or cft (3 replicas, f=1). `--sweep` runs both.
    #[arg(long, default_value = "bft")]
    pub mode: Mode,
    /// Number of replicas [default: 4 in BFT, 3 in CFT].
    #[arg(long)]
    pub replicas: Option<usize>,
    /// Closed-loop clients, each with its own key and connections.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Size of each request's operation, in bytes.
    #[arg(long, default_value_t = 0)]
    pub request_bytes: usize,
    /// Size of each reply, in bytes.
    #[arg(long, default_value_t = 0)]
    pub reply_bytes: usize,
    /// Length of the measured window, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Load before the window, not measured, in seconds.
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// Requests each client keeps in flight (at most the config's max_pending_per_client).
    #[arg(long, default_value_t = 8)]
    pub outstanding: usize,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw a plot to this file (.svg or .png): the throughput–latency curves with `--sweep`,
    /// otherwise completions over time.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Step the client count (see --sweep-clients) for BFT and CFT.
    #[arg(long)]
    pub sweep: bool,
    /// Client counts for --sweep, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32,64")]
    pub sweep_clients: Vec<usize>,
    /// Kill the leader with SIGKILL this many seconds into the measured window, and report the
    /// longest stall.
    #[arg(long)]
    pub kill_leader_after: Option<f64>,
    /// Skip the ed25519 verification ceiling microbenchmark.
    #[arg(long)]
    pub no_ceiling: bool,
    /// CPU time of the ceiling microbenchmark, in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub ceiling_seconds: f64,
    /// Also print CPU per 1000 ops for each thread group (tokio workers, verify workers,
    /// service) of every process: where the time goes.
    #[arg(long)]
    pub threads: bool,
    /// Keep the replicas' directory (config, keys, logs) and print where it is.
    #[arg(long)]
    pub keep_dir: bool,
    /// Start the replicas with `--metrics-addr 127.0.0.1:0` and print where each serves its
    /// Prometheus metrics (docs/metrics.md), to watch them under load.
    #[arg(long)]
    pub metrics: bool,
    /// Override the config's limits.max_instances_in_flight (for experiments).
    #[arg(long)]
    pub max_instances_in_flight: Option<u64>,
    /// Override the config's limits.max_batch_requests (for experiments).
    #[arg(long)]
    pub max_batch_requests: Option<usize>,
    /// Override the config's timeouts.request_timeout_ms (for experiments).
    #[arg(long)]
    pub request_timeout_ms: Option<u64>,
    /// The fraction of operations (0 to 1) that are reads, sent unordered
    /// (`Client::invoke_unordered`); the rest are ordered. Reads and ordered operations get
    /// their own throughput and latency lines besides the totals.
    #[arg(long, default_value_t = 0.0)]
    pub read_ratio: f64,
    /// The clients do not read unordered (`UnorderedReads::Disabled`), so their ordered
    /// operations complete at f+1 matching replies (BFT) or one (CFT) instead of Q, as in a
    /// deployment whose clients never read unordered (docs/design.md §3.8). Refused with a
    /// `--read-ratio` above 0.
    #[arg(long)]
    pub no_unordered_reads: bool,
    /// Start the replicas with data dirs (`--data-dir`, and the config's default
    /// `fsync = "always"`): every vote and decision is written and fsynced before the messages
    /// that promise it leave, as in a deployment. Without it the replicas keep nothing on disk.
    /// The data dirs are in the cluster's temporary directory (so on that file system).
    #[arg(long)]
    pub durable: bool,
}

/// The ed25519 verification ceiling measured on this machine.
#[derive(Clone, Debug, Serialize)]
pub struct Ceiling {
    /// CPU microseconds per signature of a batch verification of `batch` signatures.
    pub verify_us_per_sig: f64,
    /// The same batch through ed25519-dalek's `verify_batch` with the keys parsed beforehand:
    /// smr-crypto's verifier parses every key and decompresses every R once more for its
    /// strictness checks, and this shows what that costs (a lower bound for a verifier that
    /// caches parsed keys; it skips the strict R checks, so it is not a drop-in replacement).
    pub dalek_parsed_keys_us_per_sig: f64,
    /// CPU microseconds per signature verified alone (`verify_strict`).
    pub verify_single_us: f64,
    /// CPU microseconds to sign one request (the client's share).
    pub sign_us: f64,
    pub batch: usize,
    pub cores: usize,
    /// Replicas that verify each request's signature.
    pub replicas_verifying: usize,
    /// cores / (verify_us_per_sig × replicas_verifying).
    pub ceiling_ops_s: f64,
    /// cores / (verify_us_per_sig × replicas_verifying + sign_us): with the clients' signing
    /// on the same cores.
    pub ceiling_with_signing_ops_s: f64,
}

/// The operations of one kind (ordered, or unordered reads) in a run with `--read-ratio`.
#[derive(Clone, Debug, Serialize)]
pub struct KindResult {
    pub completed_ops: u64,
    pub throughput_ops_s: f64,
    pub latency_ms: Latency,
}

#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProcessCpu {
    /// "replica 0", ..., or "clients" for this process.
    pub name: String,
    pub pid: u32,
    /// User + system seconds over the window; `None` if the process died in it.
    pub cpu_s: Option<f64>,
    pub cpu_s_per_1000_ops: Option<f64>,
    /// Thread group name → CPU seconds per 1000 ops (with `--threads`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub threads_per_1000_ops: BTreeMap<String, f64>,
    /// Voluntary and involuntary context switches of all its threads, per op (with `--threads`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_switches_per_op: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Failover {
    pub killed_replica: ReplicaId,
    /// Seconds into the window.
    pub killed_at_s: f64,
    /// The longest time between consecutive completions in the window.
    pub longest_gap_ms: f64,
    /// When that gap started, in seconds into the window.
    pub gap_started_at_s: f64,
    pub max_latency_ms: f64,
}

/// One measured run.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub mode: String,
    pub replicas: usize,
    pub clients: usize,
    pub outstanding: usize,
    pub request_bytes: usize,
    pub reply_bytes: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub completed_ops: u64,
    pub failed_ops: u64,
    pub throughput_ops_s: f64,
    pub latency_ms: Latency,
    /// The fraction of operations sent as unordered reads (`--read-ratio`).
    pub read_ratio: f64,
    /// Matching replies an ordered operation waited for: Q while the clients may read
    /// unordered (the default), f+1 (BFT) or one (CFT) with `--no-unordered-reads`.
    pub ordered_reply_quorum: usize,
    /// Whether the replicas wrote and fsynced their votes to data dirs (`--durable`).
    pub durable: bool,
    /// With `--read-ratio` above 0: the ordered operations alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ordered: Option<KindResult>,
    /// With `--read-ratio` above 0: the unordered reads alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unordered_reads: Option<KindResult>,
    /// Requests per decided instance over the window.
    pub avg_batch_size: Option<f64>,
    pub decided_instances: Option<u64>,
    /// Client request signatures verified over the window, summed over the replicas that
    /// reported at both edges, per ordered operation executed in it (issue 13's target:
    /// at most 1.1 in the fault-free run).
    pub client_signature_verifications_per_op: Option<f64>,
    /// Each replica's client-signature work over the window.
    pub client_signatures: Vec<ReplicaClientSignatures>,
    /// With `--durable`: each replica's write-ahead log fsyncs over the window.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fsyncs: Vec<ReplicaFsyncs>,
    pub cpu: Vec<ProcessCpu>,
    /// CPU seconds per 1000 ops of all processes together.
    pub total_cpu_s_per_1000_ops: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ceiling: Option<Ceiling>,
    /// throughput_ops_s / ceiling.ceiling_ops_s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fraction_of_ceiling: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover: Option<Failover>,
    /// Completions per second in 100 ms buckets over warm-up and window (for plots).
    #[serde(skip)]
    pub timeline: Vec<f64>,
}

/// One replica's client-signature work over the window (from [`StatusReport`]).
#[derive(Clone, Debug, Serialize)]
pub struct ReplicaClientSignatures {
    pub replica: ReplicaId,
    /// Client request signatures it verified (verify workers and engine).
    pub verified: u64,
    /// Client request signature checks it skipped: a byte-identical copy was already
    /// authenticated there.
    pub cached: u64,
    /// Ordered requests it executed.
    pub executed_requests: u64,
}

/// One replica's write-ahead log fsyncs over the window (from [`StatusReport`]).
#[derive(Clone, Debug, Serialize)]
pub struct ReplicaFsyncs {
    pub replica: ReplicaId,
    /// Fsyncs in the window.
    pub fsyncs: u64,
    /// Per second of the window.
    pub per_s: f64,
    /// Per instance it decided in the window; `None` if it decided none.
    pub per_decided_instance: Option<f64>,
}

/// What every point of a run shares.
#[derive(Clone, Debug)]
struct Settings {
    mode: Mode,
    request_bytes: usize,
    reply_bytes: usize,
    warmup: Duration,
    duration: Duration,
    outstanding: usize,
    read_ratio: f64,
    unordered_reads: UnorderedReads,
    durable: bool,
    kill_leader_after: Option<Duration>,
    threads: bool,
    progress: bool,
    metrics: bool,
    limits: smr_core::Limits,
    timeouts: smr_core::Timeouts,
}

fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    if !value.is_finite() || value < 0.0 {
        bail!("{flag} must be a non-negative number of seconds, not {value}");
    }
    Ok(Duration::from_secs_f64(value))
}

fn default_replicas(mode: Mode) -> usize {
    match mode {
        Mode::Bft => 4,
        Mode::Cft => 3,
    }
}

/// Runs `smr bench`.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find the smr binary to start replicas")?;
    run_with_binary(&exe, args).await
}

/// Runs `smr bench` with replicas started from `binary` (an `smr` executable).
pub async fn run_with_binary(binary: &Path, args: BenchArgs) -> anyhow::Result<ExitCode> {
    let duration = seconds(args.duration, "--duration")?;
    if duration.is_zero() {
        bail!("--duration must be positive");
    }
    if args.clients == 0 || args.outstanding == 0 {
        bail!("--clients and --outstanding must be at least 1");
    }
    if let Some(plot) = &args.plot {
        plot_format(plot)?;
    }
    let kill_leader_after = args
        .kill_leader_after
        .map(|s| seconds(s, "--kill-leader-after"))
        .transpose()?;
    if !(0.0..=1.0).contains(&args.read_ratio) {
        bail!("--read-ratio must be between 0 and 1");
    }
    if args.no_unordered_reads && args.read_ratio > 0.0 {
        bail!("--no-unordered-reads leaves no way to read unordered: --read-ratio must be 0");
    }
    if kill_leader_after.is_some_and(|k| k >= duration) {
        bail!("--kill-leader-after must be less than --duration");
    }
    let settings = Settings {
        mode: args.mode,
        request_bytes: args.request_bytes,
        reply_bytes: args.reply_bytes,
        warmup: seconds(args.warmup, "--warmup")?,
        duration,
        outstanding: args.outstanding,
        read_ratio: args.read_ratio,
        unordered_reads: if args.no_unordered_reads {
            UnorderedReads::Disabled
        } else {
            UnorderedReads::Enabled
        },
        durable: args.durable,
        kill_leader_after,
        threads: args.threads,
        metrics: args.metrics,
        progress: true,
        limits: smr_core::Limits {
            max_instances_in_flight: args
                .max_instances_in_flight
                .unwrap_or(smr_core::Limits::default().max_instances_in_flight),
            max_batch_requests: args
                .max_batch_requests
                .unwrap_or(smr_core::Limits::default().max_batch_requests),
            ..Default::default()
        },
        timeouts: smr_core::Timeouts {
            request_timeout_ms: args
                .request_timeout_ms
                .unwrap_or(smr_core::Timeouts::default().request_timeout_ms),
            ..Default::default()
        },
    };
    if args.sweep {
        return sweep(binary, &args, settings).await;
    }
    let n = args.replicas.unwrap_or(default_replicas(args.mode));
    let ceiling = if args.mode == Mode::Bft && !args.no_ceiling {
        Some(measure_ceiling(&settings, n, args.ceiling_seconds).await?)
    } else {
        None
    };
    if let Some(c) = &ceiling {
        print_ceiling(c)?;
    }
    let mut cluster = start_cluster(binary, &settings, n)?;
    let outcome = run_point(&mut cluster, &settings, args.clients).await;
    finish_cluster(cluster, args.keep_dir, outcome.is_err());
    let mut result = outcome?;
    if let Some(c) = ceiling {
        result.fraction_of_ceiling = Some(result.throughput_ops_s / c.ceiling_ops_s);
        result.ceiling = Some(c);
    }
    print_result(&result)?;
    if let Some(path) = &args.json {
        write_json(path, &serde_json::to_value(&result)?)?;
    }
    if let Some(path) = &args.plot {
        plot_timeline(path, &result)?;
        outln!("plot written to {}", path.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn sweep(binary: &Path, args: &BenchArgs, settings: Settings) -> anyhow::Result<ExitCode> {
    if args.sweep_clients.is_empty() || args.sweep_clients.contains(&0) {
        bail!("--sweep-clients needs positive client counts");
    }
    let mut all = Vec::new();
    for mode in [Mode::Bft, Mode::Cft] {
        let settings = Settings {
            mode,
            ..settings.clone()
        };
        let n = match (args.replicas, args.mode == mode) {
            (Some(n), true) => n,
            _ => default_replicas(mode),
        };
        let ceiling = if mode == Mode::Bft && !args.no_ceiling {
            let c = measure_ceiling(&settings, n, args.ceiling_seconds).await?;
            print_ceiling(&c)?;
            Some(c)
        } else {
            None
        };
        let mut cluster = start_cluster(binary, &settings, n)?;
        let mut failed = None;
        for &k in &args.sweep_clients {
            match run_point(&mut cluster, &settings, k).await {
                Ok(mut r) => {
                    if let Some(c) = &ceiling {
                        r.fraction_of_ceiling = Some(r.throughput_ops_s / c.ceiling_ops_s);
                        r.ceiling = Some(c.clone());
                    }
                    outln!("{}", sweep_line(&r))?;
                    all.push(r);
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        finish_cluster(cluster, args.keep_dir, failed.is_some());
        if let Some(e) = failed {
            return Err(e);
        }
    }
    outln!()?;
    outln!("mode  clients  ops/s      p50 ms   p90 ms   p99 ms   batch   cpu s/1000 ops")?;
    for r in &all {
        outln!("{}", sweep_line(r))?;
    }
    if let Some(path) = &args.json {
        write_json(path, &serde_json::json!({ "sweep": all }))?;
    }
    if let Some(path) = &args.plot {
        plot_sweep(path, &all)?;
        outln!("plot written to {}", path.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn sweep_line(r: &BenchResult) -> String {
    format!(
        "{:<5} {:>7}  {:>9.0}  {:>7.2}  {:>7.2}  {:>7.2}  {:>6}  {}",
        r.mode,
        r.clients,
        r.throughput_ops_s,
        r.latency_ms.p50,
        r.latency_ms.p90,
        r.latency_ms.p99,
        r.avg_batch_size
            .map(|b| format!("{b:.1}"))
            .unwrap_or_else(|| "-".into()),
        r.total_cpu_s_per_1000_ops
            .map(|c| format!("{c:.3}"))
            .unwrap_or_else(|| "-".into()),
    )
}

fn write_json(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

fn start_cluster(binary: &Path, settings: &Settings, n: usize) -> anyhow::Result<LocalCluster> {
    say(format!(
        "starting {n} {} replicas of the null service as child processes",
        settings.mode
    ));
    let mut options = KeygenOptions::new(settings.mode, n);
    options.clients_any = true;
    options.limits = settings.limits.clone();
    options.timeouts = settings.timeouts.clone();
    let reply_bytes = settings.reply_bytes.to_string();
    let mut replica_args = vec!["--reply-bytes", &reply_bytes];
    if settings.metrics {
        replica_args.extend(["--metrics-addr", "127.0.0.1:0"]);
    }
    if settings.durable {
        say("with data dirs: every vote is fsynced before it is sent (--durable)");
    }
    let setup = ClusterSetup {
        data_dirs: settings.durable,
        replica_args: &replica_args,
        ..ClusterSetup::default()
    };
    let cluster = tokio::task::block_in_place(|| {
        LocalCluster::start_with(
            binary,
            &options,
            ServiceKind::Null,
            READY_TIMEOUT,
            true,
            &setup,
        )
    })?;
    if settings.metrics {
        for id in 0..n as smr_core::ReplicaId {
            let log = std::fs::read_to_string(cluster.log_path(id)).unwrap_or_default();
            if let Some(line) = log.lines().find(|l| l.contains("serves metrics on")) {
                say(line);
            }
        }
    }
    let limit = cluster.config().limits.max_pending_per_client;
    if settings.outstanding > limit {
        bail!("--outstanding {} exceeds the replicas' max_pending_per_client ({limit}); a client cannot have more in flight", settings.outstanding);
    }
    if settings.request_bytes > cluster.config().limits.max_op_bytes {
        bail!(
            "--request-bytes {} exceeds the replicas' max_op_bytes ({})",
            settings.request_bytes,
            cluster.config().limits.max_op_bytes
        );
    }
    Ok(cluster)
}

fn finish_cluster(mut cluster: LocalCluster, keep_dir: bool, failed: bool) {
    say("stopping the replicas");
    if keep_dir || failed {
        let dir = cluster.keep_dir();
        errln!("replica config, keys and logs kept in {}", dir.display());
    }
    tokio::task::block_in_place(|| cluster.stop(STOP_GRACE));
}

// ----- one measured run -----------------------------------------------------------------------

/// A completed request: when it completed and how long it took, in microseconds since the run
/// started.
#[derive(Clone, Copy)]
struct Sample {
    done_us: u64,
    latency_us: u64,
    /// An unordered read (`--read-ratio`), not an ordered operation.
    read: bool,
}

#[derive(Default)]
struct WorkerOutput {
    samples: Vec<Sample>,
    failures: u64,
}

/// Whether each operation is a read, for `read_ratio` of them: the operations whose share
/// pushes the running total of reads past a whole one (deterministic, evenly spread).
struct ReadMix {
    ratio: f64,
    credit: f64,
}

impl ReadMix {
    fn next_is_read(&mut self) -> bool {
        self.credit += self.ratio;
        if self.credit >= 1.0 {
            self.credit -= 1.0;
            true
        } else {
            false
        }
    }
}

async fn worker(
    client: Client,
    op: Vec<u8>,
    read_ratio: f64,
    start: Instant,
    stop: Arc<AtomicBool>,
    completed: Arc<AtomicU64>,
) -> WorkerOutput {
    let mut out = WorkerOutput::default();
    let mut mix = ReadMix {
        ratio: read_ratio,
        credit: 0.0,
    };
    while !stop.load(Ordering::Relaxed) {
        let read = mix.next_is_read();
        let began = Instant::now();
        let result = if read {
            client.invoke_unordered(op.clone()).await
        } else {
            client.invoke(op.clone()).await
        };
        let done = Instant::now();
        match result {
            Ok(_) => {
                out.samples.push(Sample {
                    done_us: done.duration_since(start).as_micros() as u64,
                    latency_us: done.duration_since(began).as_micros() as u64,
                    read,
                });
                completed.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                out.failures += 1;
                tracing::warn!(error = %e, "a benchmark request failed");
            }
        }
    }
    out
}

/// Everything read at one edge of the window.
struct Snapshot {
    at: Instant,
    replica_cpu: Vec<Option<CpuTimes>>,
    own_cpu: Option<CpuTimes>,
    statuses: Vec<Option<StatusReport>>,
}

async fn snapshot(cluster: &mut LocalCluster, control: &Client, pids: &[u32]) -> Snapshot {
    let at = Instant::now();
    let replica_cpu = pids.iter().map(|pid| CpuTimes::read(*pid)).collect();
    let own_cpu = CpuTimes::read(std::process::id());
    let ids: Vec<ReplicaId> = cluster.live_ids();
    let answers = status::query(control, ids, STATUS_TIMEOUT).await;
    let mut statuses = vec![None; pids.len()];
    for a in answers {
        statuses[a.id as usize] = a.report;
    }
    Snapshot {
        at,
        replica_cpu,
        own_cpu,
        statuses,
    }
}

async fn run_point(
    cluster: &mut LocalCluster,
    settings: &Settings,
    clients: usize,
) -> anyhow::Result<BenchResult> {
    let n = cluster.n();
    let config = cluster.config().clone();
    let control = cluster.client(0).await?.with_timeout(INVOKE_TIMEOUT);
    let ids: Vec<ReplicaId> = cluster.live_ids();
    let (answers, agree) = status::wait_until_agree(&control, &ids, READY_TIMEOUT).await;
    if !answers.iter().all(|a| a.report.is_some()) {
        bail!("not every replica answered a status query within {READY_TIMEOUT:?}");
    }
    if !agree {
        tracing::warn!("replicas had not converged before the run");
    }
    // One request through consensus, so that the replicas' links are up before timing.
    control
        .invoke(Vec::new())
        .await
        .map_err(|e| anyhow!("the warm-up request got no reply quorum: {e}"))?;
    let pids: Vec<u32> = (0..n as ReplicaId)
        .map(|id| cluster.replica(id).map(|p| p.pid()).unwrap_or(0))
        .collect();

    let mut handles = Vec::with_capacity(clients);
    for _ in 0..clients {
        let client = Client::builder(&config, IdentityKey::generate())
            .window(settings.outstanding)
            .unordered_reads(settings.unordered_reads)
            .connect()
            .await?
            .with_timeout(INVOKE_TIMEOUT);
        handles.push(client);
    }
    let op: Vec<u8> = (0..settings.request_bytes)
        .map(|i| (i as u8).wrapping_mul(31))
        .collect();
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for client in &handles {
        for _ in 0..settings.outstanding {
            workers.push(tokio::spawn(worker(
                client.clone(),
                op.clone(),
                settings.read_ratio,
                start,
                stop.clone(),
                completed.clone(),
            )));
        }
    }
    let total = settings.warmup + settings.duration;
    let progress = settings
        .progress
        .then(|| progress_bar(settings, clients, n, total, completed.clone()));
    // The bar shows the warm-up and the measurement on a terminal; elsewhere (a log, CI) it is
    // hidden, and one line per phase says what is going on.
    let announce = progress.as_ref().is_none_or(|(bar, _)| bar.is_hidden());
    let point = format!(
        "{} n={n}, {clients} clients x {} in flight",
        settings.mode, settings.outstanding
    );
    if announce {
        say(format!(
            "{point}: warm-up, {:.1} s",
            settings.warmup.as_secs_f64()
        ));
    }

    let mut threads_before = None;
    tokio::time::sleep_until((start + settings.warmup).into()).await;
    if announce {
        say(format!(
            "{point}: measuring, {:.1} s",
            settings.duration.as_secs_f64()
        ));
    }
    if settings.threads {
        threads_before = Some(thread_snapshot(&pids));
    }
    let before = snapshot(cluster, &control, &pids).await;
    let mut failover = None;
    if let Some(after) = settings.kill_leader_after {
        tokio::time::sleep_until((before.at + after).into()).await;
        let leader = current_leader(&before.statuses)
            .ok_or_else(|| anyhow!("no replica reported a leader"))?;
        cluster.kill(leader);
        if announce {
            say(format!("{point}: killed the leader, replica {leader}"));
        }
        failover = Some((leader, before.at.elapsed()));
    }
    tokio::time::sleep_until((before.at + settings.duration).into()).await;
    let threads_after = settings.threads.then(|| thread_snapshot(&pids));
    let after = snapshot(cluster, &control, &pids).await;
    stop.store(true, Ordering::Relaxed);
    if let Some((bar, ticker)) = progress {
        ticker.abort();
        bar.finish_and_clear();
    }

    let mut samples = Vec::new();
    let mut failed_ops = 0;
    let drain_deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    for w in workers {
        let abort = w.abort_handle();
        match tokio::time::timeout_at(drain_deadline, w).await {
            Ok(Ok(out)) => {
                samples.extend(out.samples);
                failed_ops += out.failures;
            }
            Ok(Err(_)) => {}
            Err(_) => abort.abort(),
        }
    }
    for client in &handles {
        let _ = tokio::time::timeout(Duration::from_secs(2), client.shutdown()).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), control.shutdown()).await;
    cluster
        .check_running()
        .or_else(|e| if failover.is_some() { Ok(()) } else { Err(e) })?;

    let window_start_us = before.at.duration_since(start).as_micros() as u64;
    let window_end_us = after.at.duration_since(start).as_micros() as u64;
    let window_s = (window_end_us - window_start_us) as f64 / 1e6;
    let mut in_window: Vec<Sample> = samples
        .iter()
        .copied()
        .filter(|s| s.done_us >= window_start_us && s.done_us < window_end_us)
        .collect();
    let ops = in_window.len() as u64;
    if ops == 0 {
        bail!("no request completed in the measured window ({failed_ops} failed)");
    }
    let ms = |us: u64| us as f64 / 1000.0;
    let latency = latency_of(&in_window).expect("non-empty");
    let of_kind = |read: bool| {
        let kind: Vec<Sample> = in_window
            .iter()
            .copied()
            .filter(|s| s.read == read)
            .collect();
        latency_of(&kind).map(|latency_ms| KindResult {
            completed_ops: kind.len() as u64,
            throughput_ops_s: kind.len() as f64 / window_s,
            latency_ms,
        })
    };
    let (ordered, unordered_reads) = if settings.read_ratio > 0.0 {
        (of_kind(false), of_kind(true))
    } else {
        (None, None)
    };
    in_window.sort_unstable_by_key(|s| s.done_us);
    let failover = failover.map(|(killed_replica, killed_at)| {
        let mut gap = (0, window_start_us);
        let mut previous = window_start_us;
        for s in &in_window {
            if s.done_us - previous > gap.0 {
                gap = (s.done_us - previous, previous);
            }
            previous = s.done_us;
        }
        Failover {
            killed_replica,
            killed_at_s: killed_at.as_secs_f64(),
            longest_gap_ms: ms(gap.0),
            gap_started_at_s: (gap.1 - window_start_us) as f64 / 1e6,
            max_latency_ms: latency.max,
        }
    });

    let per_1000 = |cpu: f64| cpu / ops as f64 * 1000.0;
    let mut cpu = Vec::new();
    for (i, pid) in pids.iter().enumerate() {
        let cpu_s = match (&before.replica_cpu[i], &after.replica_cpu[i]) {
            (Some(b), Some(a)) => Some(a.seconds() - b.seconds()),
            _ => None,
        };
        cpu.push(ProcessCpu {
            name: format!("replica {i}"),
            pid: *pid,
            cpu_s,
            cpu_s_per_1000_ops: cpu_s.map(per_1000),
            threads_per_1000_ops: BTreeMap::new(),
            context_switches_per_op: None,
        });
    }
    let own_s = match (&before.own_cpu, &after.own_cpu) {
        (Some(b), Some(a)) => Some(a.seconds() - b.seconds()),
        _ => None,
    };
    cpu.push(ProcessCpu {
        name: "clients".into(),
        pid: std::process::id(),
        cpu_s: own_s,
        cpu_s_per_1000_ops: own_s.map(per_1000),
        threads_per_1000_ops: BTreeMap::new(),
        context_switches_per_op: None,
    });
    if let (Some(b), Some(a)) = (threads_before, threads_after) {
        let own = pids.len();
        for (i, p) in cpu.iter_mut().enumerate() {
            let pid = if i == own {
                std::process::id()
            } else {
                pids[i]
            };
            let (Some(b), Some(a)) = (b.get(&pid), a.get(&pid)) else {
                continue;
            };
            for (name, after_s) in &a.cpu_s {
                let before_s = b.cpu_s.get(name).copied().unwrap_or(0.0);
                p.threads_per_1000_ops
                    .insert(name.clone(), per_1000(after_s - before_s));
            }
            p.context_switches_per_op =
                Some(a.context_switches.saturating_sub(b.context_switches) as f64 / ops as f64);
        }
    }
    let total_cpu: Option<f64> = cpu.iter().map(|c| c.cpu_s).sum();

    let (avg_batch_size, decided_instances) = batch_size(&before.statuses, &after.statuses);
    let (client_signatures, client_signature_verifications_per_op) =
        client_signatures(&before.statuses, &after.statuses);
    let fsyncs = if settings.durable {
        fsyncs(&before.statuses, &after.statuses, window_s)
    } else {
        Vec::new()
    };
    let mut timeline = vec![0f64; (total.as_millis() as u64 / BUCKET_MS + 1) as usize];
    for s in &samples {
        let bucket = (s.done_us / 1000 / BUCKET_MS) as usize;
        if let Some(b) = timeline.get_mut(bucket) {
            *b += 1000.0 / BUCKET_MS as f64;
        }
    }
    Ok(BenchResult {
        mode: settings.mode.to_string(),
        replicas: n,
        clients,
        outstanding: settings.outstanding,
        request_bytes: settings.request_bytes,
        reply_bytes: settings.reply_bytes,
        warmup_s: settings.warmup.as_secs_f64(),
        duration_s: window_s,
        completed_ops: ops,
        failed_ops,
        throughput_ops_s: ops as f64 / window_s,
        latency_ms: latency,
        read_ratio: settings.read_ratio,
        ordered_reply_quorum: config
            .quorums
            .replies_ordered(settings.unordered_reads == UnorderedReads::Enabled),
        durable: settings.durable,
        ordered,
        unordered_reads,
        avg_batch_size,
        decided_instances,
        client_signature_verifications_per_op,
        client_signatures,
        fsyncs,
        cpu,
        total_cpu_s_per_1000_ops: total_cpu.map(per_1000),
        ceiling: None,
        fraction_of_ceiling: None,
        failover,
        timeline,
    })
}

/// The latency percentiles of `samples`; `None` if there are none.
fn latency_of(samples: &[Sample]) -> Option<Latency> {
    if samples.is_empty() {
        // No operation of this kind completed (`--read-ratio 1` has no ordered ones).
        return None;
    }
    let mut latencies: Vec<u64> = samples.iter().map(|s| s.latency_us).collect();
    latencies.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    Some(Latency {
        p50: ms(percentile(&latencies, 0.50)),
        p90: ms(percentile(&latencies, 0.90)),
        p99: ms(percentile(&latencies, 0.99)),
        max: ms(*latencies.last()?),
        mean: latencies.iter().sum::<u64>() as f64 / latencies.len() as f64 / 1000.0,
    })
}

fn current_leader(statuses: &[Option<StatusReport>]) -> Option<ReplicaId> {
    // The leader most replicas name (they agree unless a leader change is under way).
    let mut votes: BTreeMap<ReplicaId, usize> = BTreeMap::new();
    for s in statuses.iter().flatten() {
        *votes.entry(s.leader).or_default() += 1;
    }
    votes.into_iter().max_by_key(|(_, v)| *v).map(|(l, _)| l)
}

/// The (before, after) status reports of each replica that answered at both edges of the
/// window.
fn at_both_edges<'a>(
    before: &'a [Option<StatusReport>],
    after: &'a [Option<StatusReport>],
) -> impl Iterator<Item = (&'a StatusReport, &'a StatusReport)> {
    before
        .iter()
        .zip(after)
        .filter_map(|(b, a)| Some((b.as_ref()?, a.as_ref()?)))
}

/// Each replica's client-signature work over the window, and the sum of the verifications
/// per ordered operation executed in it (the most any replica executed: all live replicas
/// execute the same ones). `None` if no replica executed one.
fn client_signatures(
    before: &[Option<StatusReport>],
    after: &[Option<StatusReport>],
) -> (Vec<ReplicaClientSignatures>, Option<f64>) {
    let per_replica: Vec<ReplicaClientSignatures> = at_both_edges(before, after)
        .map(|(b, a)| ReplicaClientSignatures {
            replica: a.replica,
            verified: a
                .client_signatures_verified
                .saturating_sub(b.client_signatures_verified),
            cached: a
                .client_signatures_cached
                .saturating_sub(b.client_signatures_cached),
            executed_requests: a.executed_requests.saturating_sub(b.executed_requests),
        })
        .collect();
    let ops = per_replica.iter().map(|r| r.executed_requests).max();
    let verified: u64 = per_replica.iter().map(|r| r.verified).sum();
    let per_op = ops
        .filter(|&ops| ops > 0)
        .map(|ops| verified as f64 / ops as f64);
    (per_replica, per_op)
}

/// Each replica's fsyncs over a window of `window_s` seconds: in all, per second and per
/// instance it decided.
fn fsyncs(
    before: &[Option<StatusReport>],
    after: &[Option<StatusReport>],
    window_s: f64,
) -> Vec<ReplicaFsyncs> {
    at_both_edges(before, after)
        .map(|(b, a)| {
            let fsyncs = a.fsyncs.saturating_sub(b.fsyncs);
            let decided = a.decided_instances.saturating_sub(b.decided_instances);
            ReplicaFsyncs {
                replica: a.replica,
                fsyncs,
                per_s: fsyncs as f64 / window_s,
                per_decided_instance: (decided > 0).then(|| fsyncs as f64 / decided as f64),
            }
        })
        .collect()
}

/// Requests per decided instance over the window, from the replica that decided the most
/// instances in it (all live replicas decide the same ones).
fn batch_size(
    before: &[Option<StatusReport>],
    after: &[Option<StatusReport>],
) -> (Option<f64>, Option<u64>) {
    let best = at_both_edges(before, after)
        .map(|(b, a)| {
            (
                a.decided_instances.saturating_sub(b.decided_instances),
                a.executed_requests.saturating_sub(b.executed_requests),
            )
        })
        .max_by_key(|(decided, _)| *decided);
    match best {
        Some((decided, executed)) if decided > 0 => {
            (Some(executed as f64 / decided as f64), Some(decided))
        }
        Some((decided, _)) => (None, Some(decided)),
        None => (None, None),
    }
}

/// The value at quantile `q` of sorted values (nearest rank).
fn percentile(sorted: &[u64], q: f64) -> u64 {
    assert!(!sorted.is_empty());
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn progress_bar(
    settings: &Settings,
    clients: usize,
    n: usize,
    total: Duration,
    completed: Arc<AtomicU64>,
) -> (indicatif::ProgressBar, tokio::task::JoinHandle<()>) {
    let ticks = total.as_millis() as u64 / BUCKET_MS;
    let bar = indicatif::ProgressBar::new(ticks.max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {elapsed_precise}/{duration_precise} {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(format!("{} n={n} k={clients}", settings.mode));
    let warmup_ticks = settings.warmup.as_millis() as u64 / BUCKET_MS;
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(BUCKET_MS));
            let mut history: std::collections::VecDeque<u64> = Default::default();
            for tick in 0..=ticks {
                interval.tick().await;
                let done = completed.load(Ordering::Relaxed);
                history.push_back(done);
                if history.len() > 11 {
                    history.pop_front();
                }
                let rate = (done - history[0]) as f64 * 1000.0
                    / (BUCKET_MS as f64 * (history.len() - 1).max(1) as f64);
                let phase = if tick < warmup_ticks {
                    "warm-up"
                } else {
                    "measuring"
                };
                bar.set_position(tick);
                bar.set_message(format!("{phase} {rate:.0} ops/s"));
            }
        })
    };
    (bar, ticker)
}

// ----- output ---------------------------------------------------------------------------------

fn print_ceiling(c: &Ceiling) -> Result<(), OutputError> {
    outln!(
        "ceiling      {:.0} ops/s from signature verification alone ({} cores / ({:.1} us x {} \
         replicas)); {:.0} ops/s counting the clients' signing",
        c.ceiling_ops_s,
        c.cores,
        c.verify_us_per_sig,
        c.replicas_verifying,
        c.ceiling_with_signing_ops_s
    )?;
    outln!(
        "  ed25519    batch verify {:.1} us/signature in batches of {} ({:.1} us in dalek with \
         keys parsed once), {:.1} us alone; sign {:.1} us",
        c.verify_us_per_sig,
        c.batch,
        c.dalek_parsed_keys_us_per_sig,
        c.verify_single_us,
        c.sign_us
    )?;
    Ok(())
}

/// Says what the benchmark is doing, once per phase, on stderr (stdout has the results).
fn say(what: impl AsRef<str>) {
    errln!("smr bench: {}", what.as_ref());
}

fn print_result(r: &BenchResult) -> Result<(), OutputError> {
    outln!(
        "smr bench: {}{}, {} replicas, {} clients x {} outstanding, {} B requests, {} B replies, ordered reply quorum {}, warm-up {:.1} s, window {:.2} s",
        r.mode,
        if r.durable { " durable (data dirs, fsync always)" } else { "" },
        r.replicas, r.clients, r.outstanding, r.request_bytes, r.reply_bytes,
        r.ordered_reply_quorum, r.warmup_s, r.duration_s
    )?;
    outln!(
        "throughput   {:.0} ops/s ({} ops completed in the window, {} failed)",
        r.throughput_ops_s,
        r.completed_ops,
        r.failed_ops
    )?;
    let l = &r.latency_ms;
    outln!(
        "latency      p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms  mean {:.2} ms",
        l.p50,
        l.p90,
        l.p99,
        l.max,
        l.mean
    )?;
    if r.read_ratio > 0.0 {
        for (name, kind) in [
            ("ordered", &r.ordered),
            ("unordered reads", &r.unordered_reads),
        ] {
            match kind {
                Some(k) => outln!(
                    "  {name:<16} {:.0} ops/s ({} ops)  p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
                    k.throughput_ops_s,
                    k.completed_ops,
                    k.latency_ms.p50,
                    k.latency_ms.p90,
                    k.latency_ms.p99,
                    k.latency_ms.max
                )?,
                None => outln!("  {name:<16} none completed in the window")?,
            }
        }
    }
    match (r.avg_batch_size, r.decided_instances) {
        (Some(b), Some(d)) => {
            outln!("batches      {b:.1} requests per decided instance on average ({d} instances)")?
        }
        _ => outln!("batches      (no replica reported its counters at both edges)")?,
    }
    if let Some(per_op) = r.client_signature_verifications_per_op {
        let each: Vec<String> = r
            .client_signatures
            .iter()
            .map(|c| format!("r{} {}/{}", c.replica, c.verified, c.cached))
            .collect();
        outln!(
            "client sigs  {per_op:.3} verified per ordered op, all replicas (verified/cached: {})",
            each.join(", ")
        )?;
    }
    if !r.fsyncs.is_empty() {
        let each: Vec<String> = r
            .fsyncs
            .iter()
            .map(|f| match f.per_decided_instance {
                Some(per) => format!("r{} {:.0}/s {per:.2}", f.replica, f.per_s),
                None => format!("r{} {:.0}/s -", f.replica, f.per_s),
            })
            .collect();
        outln!(
            "fsyncs       per second and per decided instance, each replica: {}",
            each.join(", ")
        )?;
    }
    outln!("cpu          seconds per 1000 ops (user+system over the window):")?;
    for p in &r.cpu {
        match (p.cpu_s, p.cpu_s_per_1000_ops) {
            (Some(s), Some(per)) => outln!(
                "  {:<10} {:>7.4}  ({:.2} s, {:.2} cores)",
                p.name,
                per,
                s,
                s / r.duration_s
            )?,
            _ => outln!("  {:<10} (not running at both edges of the window)", p.name)?,
        }
        let mut threads: Vec<(&String, &f64)> = p.threads_per_1000_ops.iter().collect();
        threads.sort_by(|a, b| b.1.total_cmp(a.1));
        for (name, per) in threads.into_iter().filter(|(_, v)| **v > 0.0) {
            outln!("      {name:<18} {per:>7.4}")?;
        }
        if let Some(switches) = p.context_switches_per_op {
            outln!("      {:<18} {switches:>7.2} per op", "context switches")?;
        }
    }
    if let Some(total) = r.total_cpu_s_per_1000_ops {
        outln!(
            "  {:<10} {:>7.4}  ({:.2} cores busy)",
            "total",
            total,
            total * r.throughput_ops_s / 1000.0
        )?;
    }
    if let (Some(c), Some(f)) = (&r.ceiling, r.fraction_of_ceiling) {
        outln!(
            "ceiling      {:.0} ops/s (verification alone); this run reached {:.2} of it ({:.2} of the {:.0} ops/s that counts signing)",
            c.ceiling_ops_s,
            f,
            r.throughput_ops_s / c.ceiling_with_signing_ops_s,
            c.ceiling_with_signing_ops_s
        )?;
    }
    if let Some(f) = &r.failover {
        outln!(
            "failover     killed replica {} (the leader) at {:.2} s; longest gap between completions {:.0} ms (from {:.2} s); max latency {:.0} ms",
            f.killed_replica, f.killed_at_s, f.longest_gap_ms, f.gap_started_at_s, f.max_latency_ms
        )?;
    }
    Ok(())
}

// ----- the verification ceiling ---------------------------------------------------------------

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs `f` repeatedly for about `budget` of this thread's CPU time; returns CPU per call.
fn cpu_per_call(budget: Duration, mut f: impl FnMut()) -> Duration {
    f();
    let start = thread_cpu();
    let mut calls = 0u32;
    while thread_cpu() - start < budget {
        f();
        calls += 1;
    }
    (thread_cpu() - start) / calls.max(1)
}

async fn measure_ceiling(settings: &Settings, n: usize, budget_s: f64) -> anyhow::Result<Ceiling> {
    let budget = seconds(budget_s, "--ceiling-seconds")?.max(Duration::from_millis(100));
    say(format!(
        "measuring the signature-verification ceiling ({:.1} s of CPU; --no-ceiling skips it)",
        budget.as_secs_f64()
    ));
    let request_bytes = settings.request_bytes;
    let cores = std::thread::available_parallelism()
        .map(|c| c.get())
        .unwrap_or(1);
    tokio::task::spawn_blocking(move || {
        // Signed requests shaped like the benchmark's, from distinct clients.
        let keys: Vec<IdentityKey> = (0..CEILING_BATCH)
            .map(|_| IdentityKey::generate())
            .collect();
        let requests: Vec<(smr_crypto::PublicKey, Vec<u8>, smr_crypto::Signature)> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let body = RequestBody {
                    client: key.public_key(),
                    session: 1,
                    seq: i as u64 + 1,
                    kind: RequestKind::Ordered,
                    op: vec![7; request_bytes],
                };
                let request = Request::new(body, Some(key as &dyn Signer));
                let message = Request::signing_bytes_of(&request.body);
                (
                    request.body.client,
                    message,
                    request.signature.expect("signed"),
                )
            })
            .collect();
        let items: Vec<SignedItem<'_>> = requests
            .iter()
            .map(|(key, message, signature)| SignedItem {
                key,
                message,
                signature,
            })
            .collect();
        let verifier = Ed25519Verifier;
        let batch = cpu_per_call(budget.mul_f64(0.55), || {
            verifier
                .verify_batch(&items)
                .expect("honest signatures verify");
        });
        // dalek's own batch equation with keys parsed once: the part of the cost that is not
        // parsing keys and re-decompressing R for smr-crypto's strictness checks.
        let parsed: Vec<ed25519_dalek::VerifyingKey> = requests
            .iter()
            .map(|(key, _, _)| ed25519_dalek::VerifyingKey::from_bytes(&key.0).expect("a key"))
            .collect();
        let messages: Vec<&[u8]> = requests.iter().map(|(_, m, _)| m.as_slice()).collect();
        let signatures: Vec<ed25519_dalek::Signature> = requests
            .iter()
            .map(|(_, _, s)| ed25519_dalek::Signature::from_bytes(&s.0))
            .collect();
        let raw = cpu_per_call(budget.mul_f64(0.15), || {
            ed25519_dalek::verify_batch(&messages, &signatures, &parsed)
                .expect("honest signatures verify");
        });
        let single = cpu_per_call(budget.mul_f64(0.1), || {
            let (key, message, signature) = &requests[0];
            verifier
                .verify(key, message, signature)
                .expect("an honest signature verifies");
        });
        let signer = &keys[0];
        let message = &requests[0].1;
        let sign = cpu_per_call(budget.mul_f64(0.15), || {
            std::hint::black_box(signer.sign(message));
        });
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let verify_us_per_sig = us(batch) / CEILING_BATCH as f64;
        let sign_us = us(sign);
        Ceiling {
            verify_us_per_sig,
            dalek_parsed_keys_us_per_sig: us(raw) / CEILING_BATCH as f64,
            verify_single_us: us(single),
            sign_us,
            batch: CEILING_BATCH,
            cores,
            replicas_verifying: n,
            ceiling_ops_s: cores as f64 * 1e6 / (verify_us_per_sig * n as f64),
            ceiling_with_signing_ops_s: cores as f64 * 1e6
                / (verify_us_per_sig * n as f64 + sign_us),
        }
    })
    .await
    .context("the ceiling microbenchmark panicked")
}

// ----- CPU accounting from /proc ---------------------------------------------------------------

/// User and system time of a process, in clock ticks.
#[derive(Clone, Copy, Debug)]
struct CpuTimes {
    ticks: u64,
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime (fields 14 and 15) of a `/proc/.../stat` line. The command name (field 2) may
/// contain spaces and parentheses, so fields are counted from the last ')'.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state), so field k is at index k - 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

impl CpuTimes {
    fn read(pid: u32) -> Option<CpuTimes> {
        if pid == 0 {
            return None;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // A killed child that has not been reaped yet is a zombie; its times are final but it
        // is not running.
        Some(CpuTimes {
            ticks: parse_stat_ticks(&stat)?,
        })
    }

    fn seconds(&self) -> f64 {
        self.ticks as f64 / clock_ticks_per_second()
    }
}

/// One process's threads at one moment.
#[derive(Default)]
struct ThreadTimes {
    /// CPU seconds of each thread group, by thread name with trailing digits and dashes dropped
    /// (`smr-verify-0` and `smr-verify-1` → `smr-verify`).
    cpu_s: BTreeMap<String, f64>,
    /// Context switches of all threads (voluntary and not).
    context_switches: u64,
}

/// The threads of each process (and of this one).
fn thread_snapshot(pids: &[u32]) -> BTreeMap<u32, ThreadTimes> {
    let mut out = BTreeMap::new();
    for pid in pids.iter().copied().chain([std::process::id()]) {
        let mut times = ThreadTimes::default();
        let groups = &mut times.cpu_s;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let path = task.path();
            let (Ok(stat), Ok(comm)) = (
                std::fs::read_to_string(path.join("stat")),
                std::fs::read_to_string(path.join("comm")),
            ) else {
                continue;
            };
            let Some(ticks) = parse_stat_ticks(&stat) else {
                continue;
            };
            let name = comm
                .trim()
                .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-')
                .to_string();
            *groups.entry(name).or_default() += ticks as f64 / clock_ticks_per_second();
            if let Ok(status) = std::fs::read_to_string(path.join("status")) {
                times.context_switches += status
                    .lines()
                    .filter(|l| l.contains("ctxt_switches:"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .sum::<u64>();
            }
        }
        out.insert(pid, times);
    }
    out
}

// ----- plots ----------------------------------------------------------------------------------

enum PlotFormat {
    Svg,
    Png,
}

fn plot_format(path: &Path) -> anyhow::Result<PlotFormat> {
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("svg") => Ok(PlotFormat::Svg),
        Some(e) if e.eq_ignore_ascii_case("png") => Ok(PlotFormat::Png),
        _ => bail!(
            "--plot {}: the file name must end in .svg or .png",
            path.display()
        ),
    }
}

const PLOT_SIZE: (u32, u32) = (1000, 650);

/// The plots' one typeface, DejaVu Sans, compiled into the binary (license:
/// demo/assets/DejaVuSans-LICENSE.txt). plotters draws text with the pure-Rust ab_glyph
/// rasterizer, so the `smr` binary links no font or image C library (fontconfig, freetype,
/// libpng) and needs no fonts installed on the machine.
static PLOT_FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Registers [`PLOT_FONT`] as plotters' "sans-serif" family (every text in the plots, and the
/// family plotters' own labels default to); other styles (bold, italic) fall back to it. Idempotent.
fn register_plot_font() -> anyhow::Result<()> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, PLOT_FONT)
            .is_ok()
    });
    if !ok {
        bail!("cannot draw the plot: the embedded font is not a valid TrueType font");
    }
    Ok(())
}

fn plot_sweep(path: &Path, results: &[BenchResult]) -> anyhow::Result<()> {
    register_plot_font()?;
    match plot_format(path)? {
        PlotFormat::Svg => draw_sweep(plotters::prelude::SVGBackend::new(path, PLOT_SIZE), results),
        PlotFormat::Png => draw_sweep(
            plotters::prelude::BitMapBackend::new(path, PLOT_SIZE),
            results,
        ),
    }
}

fn plot_timeline(path: &Path, result: &BenchResult) -> anyhow::Result<()> {
    register_plot_font()?;
    match plot_format(path)? {
        PlotFormat::Svg => {
            draw_timeline(plotters::prelude::SVGBackend::new(path, PLOT_SIZE), result)
        }
        PlotFormat::Png => draw_timeline(
            plotters::prelude::BitMapBackend::new(path, PLOT_SIZE),
            result,
        ),
    }
}

fn draw_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("cannot draw the plot: {e:?}")
}

fn draw_sweep<DB: plotters::prelude::DrawingBackend>(
    backend: DB,
    results: &[BenchResult],
) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = backend.into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let max_x = results
        .iter()
        .map(|r| r.throughput_ops_s)
        .fold(1.0, f64::max)
        * 1.1;
    let max_y = results.iter().map(|r| r.latency_ms.p50).fold(1.0, f64::max) * 1.15;
    let first = &results[0];
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "smr bench: throughput vs p50 latency ({} B requests, {} B replies, {} outstanding per client)",
                first.request_bytes, first.reply_bytes, first.outstanding
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("throughput (ops/s)")
        .y_desc("p50 latency (ms)")
        .draw()
        .map_err(draw_err)?;
    for (mode, color) in [("bft", RED), ("cft", BLUE)] {
        let points: Vec<&BenchResult> = results.iter().filter(|r| r.mode == mode).collect();
        if points.is_empty() {
            continue;
        }
        let n = points[0].replicas;
        chart
            .draw_series(LineSeries::new(
                points
                    .iter()
                    .map(|r| (r.throughput_ops_s, r.latency_ms.p50)),
                color.stroke_width(2),
            ))
            .map_err(draw_err)?
            .label(format!("{} (n={n})", mode.to_uppercase()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(points.iter().map(|r| {
                EmptyElement::at((r.throughput_ops_s, r.latency_ms.p50))
                    + Circle::new((0, 0), 4, color.filled())
                    + Text::new(
                        format!("{}", r.clients),
                        (6, -14),
                        ("sans-serif", 13).into_font(),
                    )
            }))
            .map_err(draw_err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(draw_err)?;
    root.present().map_err(draw_err)?;
    Ok(())
}

fn draw_timeline<DB: plotters::prelude::DrawingBackend>(
    backend: DB,
    r: &BenchResult,
) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = backend.into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let bucket_s = BUCKET_MS as f64 / 1000.0;
    let max_x = r.timeline.len() as f64 * bucket_s;
    let max_y = r.timeline.iter().copied().fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "smr bench: {} n={}, {} clients x {}, completions per second ({} ms buckets)",
                r.mode.to_uppercase(),
                r.replicas,
                r.clients,
                r.outstanding,
                BUCKET_MS
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the clients started (warm-up included)")
        .y_desc("ops/s")
        .draw()
        .map_err(draw_err)?;
    chart
        .draw_series(LineSeries::new(
            r.timeline
                .iter()
                .enumerate()
                .map(|(i, v)| (i as f64 * bucket_s, *v)),
            BLUE.stroke_width(2),
        ))
        .map_err(draw_err)?;
    let window_start = r.warmup_s;
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(window_start, 0.0), (window_start, max_y)],
            BLACK.mix(0.5),
        )))
        .map_err(draw_err)?;
    if let Some(f) = &r.failover {
        let at = window_start + f.killed_at_s;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(at, 0.0), (at, max_y)],
                RED.stroke_width(2),
            )))
            .map_err(draw_err)?
            .label(format!("leader (replica {}) killed", f.killed_replica))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(draw_err)?;
    }
    root.present().map_err(draw_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&v, 0.9), 90);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&v, 1.0), 100);
        assert_eq!(percentile(&[7], 0.99), 7);
    }

    /// Review 23 (newcomer): `smr bench --read-ratio 1` (reads only) panicked at the end of
    /// the window, "assertion failed: !sorted.is_empty()" in `percentile`: the ordered
    /// operations' line has no samples, and `latency_of` sorts and takes percentiles before
    /// its documented `None` for no samples. Run: `smr bench --read-ratio 1 --duration 3`.
    #[test]
    fn latency_of_no_samples_is_none() {
        assert!(latency_of(&[]).is_none());
    }

    #[test]
    fn stat_lines_are_parsed_after_the_command_name() {
        let line = "1234 (smr (x) y) S 1 2 3 4 5 6 7 8 9 10 111 222 13 14 15";
        assert_eq!(parse_stat_ticks(line), Some(333));
        assert_eq!(parse_stat_ticks("garbage"), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_stat_ticks(&own).is_some());
    }

    fn report(replica: ReplicaId, executed: u64, verified: u64, cached: u64) -> StatusReport {
        StatusReport {
            executed_requests: executed,
            client_signatures_verified: verified,
            client_signatures_cached: cached,
            fsyncs: 0,
            ..crate::status::tests::report(replica, 0, 0)
        }
    }

    /// The window's verifications of all replicas that reported at both edges, per ordered
    /// operation executed in it.
    #[test]
    fn client_signatures_sum_the_replicas_growth_per_executed_op() {
        let before = vec![
            Some(report(0, 100, 100, 0)),
            Some(report(1, 100, 5, 300)),
            None,
            Some(report(3, 90, 0, 0)),
        ];
        let after = vec![
            Some(report(0, 300, 300, 0)),
            Some(report(1, 300, 15, 490)),
            Some(report(2, 300, 1000, 0)),
            Some(report(3, 250, 20, 160)),
        ];
        let (each, per_op) = client_signatures(&before, &after);
        assert_eq!(
            each.iter()
                .map(|c| (c.replica, c.verified, c.cached, c.executed_requests))
                .collect::<Vec<_>>(),
            vec![(0, 200, 0, 200), (1, 10, 190, 200), (3, 20, 160, 160)]
        );
        assert_eq!(per_op, Some(230.0 / 200.0));
        let (each, per_op) = client_signatures(&[None], &[None]);
        assert!(each.is_empty());
        assert_eq!(per_op, None);
    }

    #[test]
    fn batch_size_divides_executed_by_decided_growth() {
        let report = |decided, executed| StatusReport {
            decided_instances: decided,
            ..report(0, executed, 0, 0)
        };
        let before = vec![Some(report(10, 100)), None];
        let after = vec![Some(report(20, 300)), Some(report(50, 5000))];
        assert_eq!(batch_size(&before, &after), (Some(20.0), Some(10)));
        assert_eq!(batch_size(&[None], &[None]), (None, None));
    }

    #[test]
    fn fsyncs_are_each_replicas_growth_per_second_and_per_decided_instance() {
        let report = |replica, decided, fsyncs| StatusReport {
            decided_instances: decided,
            fsyncs,
            ..report(replica, 0, 0, 0)
        };
        let before = vec![Some(report(0, 10, 100)), None, Some(report(2, 5, 7))];
        let after = vec![
            Some(report(0, 30, 150)),
            Some(report(1, 99, 99)),
            Some(report(2, 5, 11)),
        ];
        let each: Vec<(ReplicaId, u64, f64, Option<f64>)> = fsyncs(&before, &after, 2.0)
            .into_iter()
            .map(|f| (f.replica, f.fsyncs, f.per_s, f.per_decided_instance))
            .collect();
        assert_eq!(each, vec![(0, 50, 25.0, Some(2.5)), (2, 4, 2.0, None)]);
    }

    /// The plots' text is drawn with the embedded font: without a registered font plotters'
    /// ab_glyph path fails (or draws nothing), so this catches a missing registration.
    #[test]
    fn plot_text_is_rasterized_with_the_embedded_font() {
        use plotters::prelude::*;
        register_plot_font().unwrap();
        register_plot_font().unwrap();
        let font = ("sans-serif", 20).into_font();
        let (w, h) = font.box_size("ops/s").unwrap();
        assert!(w > 20 && h > 5, "layout {w}x{h}");
        let (width, height) = (120u32, 40u32);
        let mut buf = vec![255u8; (width * height * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
            root.draw(&Text::new("ops/s", (5, 10), font)).unwrap();
            root.present().unwrap();
        }
        let dark = buf.chunks(3).filter(|p| p.iter().all(|&c| c < 128)).count();
        assert!(dark > 30, "only {dark} dark pixels: the text was not drawn");
    }
}
