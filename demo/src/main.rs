//! `smr`: generate keys, run replicas and clients, check status, and run a local demo cluster.
//!
//! Exit codes: 0 on success; 1 when `smr client kv get` finds no value for the key; 2 on any
//! error (bad arguments, unreadable config or key, no reply quorum in time).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use smr_core::ReplicaId;
use smr_demo::{errln, output, ServiceKind};
use smr_modes::Mode;

mod cmd;

// glibc malloc was 5-6% of all CPU in a whole-system profile of `smr bench` (BFT, 32 x 8): the
// frames, batches and futures are many small short-lived allocations, often freed on another
// thread than the one that allocated them. mimalloc is what BENCHMARKS.md step 8 measured.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Byzantine- or crash-fault-tolerant state machine replication, modeled on BFT-SMaRt.
///
/// Try `smr cluster` first: it runs a whole local cluster and a demo workload in one command.
#[derive(Parser, Debug)]
#[command(name = "smr", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write replica keys, client keys, an admin key (admin.key, for membership changes: not
    /// used yet) and a cluster.toml (by default for replicas on 127.0.0.1).
    Keygen(KeygenArgs),
    /// Write one fresh identity key (a replica's, a client's or the administrator's) to a new
    /// file, over an existing one only with --force, and print its public key in hex: prepare a
    /// key on the machine that will use it, and send only the public key to whoever edits
    /// cluster.toml.
    Key(KeyArgs),
    /// Run one replica until SIGINT or SIGTERM (exit status 0), or until it fails: storage,
    /// service, engine or transport (exit status 2, with the reason on stderr).
    Replica(ReplicaArgs),
    /// Run one operation on the cluster and print its result.
    #[command(
        after_help = "Exit status: 0 on success, 1 if `kv get` finds no value, 2 on errors (such as no reply quorum in time). An operation that timed out may still execute later: read the state before repeating it."
    )]
    Client(ClientArgs),
    /// Print each replica's mode, regency, leader, last decided cid and state digest, once,
    /// or every second with --watch; as a table, or as JSON with --json.
    Status(StatusArgs),
    /// Start a local cluster as child processes, run a demo workload, show equal digests.
    Cluster(ClusterArgs),
    /// Measure throughput, latency and CPU per op of a local cluster (null service, closed-loop
    /// clients); `--sweep` draws BFT and CFT throughput-latency curves.
    Bench(smr_demo::bench::BenchArgs),
}

#[derive(clap::Args, Debug)]
struct KeyArgs {
    /// The file to write (readable by its owner only); it must not exist yet, unless --force.
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing file at --out: the key it holds is lost.
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args, Debug)]
struct KeygenArgs {
    /// Number of replicas.
    #[arg(long)]
    replicas: usize,
    /// Fault model: bft (n >= 3f+1) or cft (n >= 2f+1).
    #[arg(long)]
    mode: Mode,
    /// Directory to write into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Faults tolerated [default: the most the replica count allows].
    #[arg(long)]
    f: Option<usize>,
    /// Admit any client key (clients = "any") instead of only the generated one.
    #[arg(long)]
    clients_any: bool,
    /// Number of client keys to write: client.key, then client-1.key, ...
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Overwrite an existing cluster.toml (and the keys).
    #[arg(long)]
    force: bool,
    /// The replicas' ip:port addresses in id order, comma-separated, for running on several
    /// machines [default: free ports on 127.0.0.1].
    #[arg(long, value_delimiter = ',')]
    addresses: Option<Vec<std::net::SocketAddr>>,
}

#[derive(clap::Args, Debug)]
struct ReplicaArgs {
    /// The cluster config (written by `smr keygen`).
    #[arg(long)]
    config: PathBuf,
    /// This replica's id in the config.
    #[arg(long)]
    id: ReplicaId,
    /// The replicated service.
    #[arg(long, value_enum)]
    service: ServiceKind,
    /// Secret key file [default: the config's key_file for this id].
    #[arg(long)]
    key: Option<PathBuf>,
    /// Keep durable state (write-ahead log and checkpoints) here, and recover from it on
    /// restart. Without it the replica runs in memory and forgets everything when it stops. A
    /// damaged data dir is refused with an error that names the file (see `--rejoin`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Reply size of the null service (`--service null`), in bytes.
    #[arg(long, default_value_t = 0)]
    reply_bytes: usize,
    /// Deprecated: now the default, and without effect. A replica whose data dir is empty (or
    /// that has none) starts rejoining unless given --new-cluster: it asks its peers how far
    /// they voted and stays out of votes until caught up past anything it may have voted on. A data dir that holds state is always recovered from; after a refusal to start
    /// from a damaged data dir, move the directory aside and restart: the replica then catches
    /// up from its peers by state transfer.
    #[arg(long)]
    rejoin: bool,
    /// First start of a brand-new cluster: a replica with an empty data dir (or none) votes at
    /// once instead of rejoining, and the cluster starts once any n−f replicas run. Replicas
    /// that all start rejoining wait for each other for ever. Leave it out of later starts: on a
    /// replica that lost its state it may vote against what it voted before. Ignored when the
    /// data dir holds state.
    #[arg(long, conflicts_with = "rejoin")]
    new_cluster: bool,
    /// Serve the replica's metrics for Prometheus at http://IP:PORT/metrics (OpenMetrics
    /// text; every metric is described in docs/metrics.md). Binds exactly this address: use
    /// 127.0.0.1 or a private interface, not 0.0.0.0, unless the port is firewalled.
    #[arg(long, value_name = "IP:PORT")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Shut down when stdin reaches end-of-file (used by `smr cluster` so that its children
    /// never outlive it).
    #[arg(long, hide = true)]
    exit_on_stdin_eof: bool,
}

#[derive(clap::Args, Debug)]
struct ClientArgs {
    /// The cluster config.
    #[arg(long)]
    config: PathBuf,
    /// Client secret key file [default: client.key next to the config].
    #[arg(long)]
    key: Option<PathBuf>,
    /// How long to wait for a reply quorum.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Read without ordering (`get` only): every replica answers from its state and the read
    /// completes at a quorum of equal answers, still linearizable; ordered if they disagree.
    #[arg(long)]
    unordered: bool,
    #[command(subcommand)]
    service: ClientService,
}

#[derive(Subcommand, Debug)]
enum ClientService {
    /// Operations on a cluster running `--service counter`.
    #[command(subcommand)]
    Counter(CounterCommand),
    /// Operations on a cluster running `--service kv`.
    #[command(subcommand)]
    Kv(KvCommand),
}

#[derive(Subcommand, Debug)]
enum CounterCommand {
    /// Add to the counter and print the new value.
    Add {
        #[arg(allow_negative_numbers = true)]
        amount: i64,
    },
    /// Print the counter's value.
    Get,
}

#[derive(Subcommand, Debug)]
enum KvCommand {
    /// Set KEY to VALUE and print the previous value (nothing if there was none).
    Put { key: String, value: String },
    /// Print KEY's value; exit 1 if it is not set.
    Get { key: String },
}

#[derive(clap::Args, Debug)]
struct StatusArgs {
    /// The cluster config.
    #[arg(long)]
    config: PathBuf,
    /// Client secret key file [default: client.key next to the config].
    #[arg(long)]
    key: Option<PathBuf>,
    /// How long to wait for each replica's answer.
    #[arg(long, default_value_t = 2_000)]
    timeout_ms: u64,
    /// Ask again every second and print the new answers, until Ctrl-C. On a terminal the
    /// screen is cleared between answers; otherwise (a pipe, a file) they follow each other.
    #[arg(long)]
    watch: bool,
    /// Print each set of answers as one line of JSON for scripts: {"replicas": [...],
    /// "summary": {...}}, one object per replica with the fields of the table
    /// ("reachable": false for one that did not answer). Strings a replica supplied are
    /// escaped, and the line is plain ASCII. With --watch, one line per second (JSON Lines).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct ClusterArgs {
    /// Fault model: bft (4 replicas, f=1) or cft (3 replicas, f=1).
    #[arg(long, default_value = "bft")]
    mode: Mode,
    /// The replicated service.
    #[arg(long, value_enum, default_value_t = ServiceKind::Counter)]
    service: ServiceKind,
    /// After the workload, keep the cluster up until Ctrl-C and print how to reach it.
    #[arg(long)]
    keep_running: bool,
}

fn init_logging(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen(args) => {
            init_logging("warn");
            cmd::keygen(args)
        }
        Command::Key(args) => {
            init_logging("warn");
            cmd::key(&args.out, args.force)
        }
        Command::Replica(args) => {
            init_logging("info");
            runtime().and_then(|rt| rt.block_on(cmd::replica(args)))
        }
        // The client commands explain failures themselves; transport warnings (such as every
        // reconnect to a replica that is down) would bury the answer.
        Command::Client(args) => {
            init_logging("error");
            runtime().and_then(|rt| rt.block_on(cmd::client(args)))
        }
        Command::Status(args) => {
            init_logging("error");
            runtime().and_then(|rt| rt.block_on(cmd::status(args)))
        }
        Command::Cluster(args) => {
            init_logging("warn");
            runtime().and_then(|rt| rt.block_on(cmd::cluster(args)))
        }
        Command::Bench(args) => {
            init_logging("error");
            runtime().and_then(|rt| rt.block_on(smr_demo::bench::run(args)))
        }
    };
    match result {
        Ok(code) => code,
        // The reader of stdout went away (`smr cluster | head`): it asked for no more.
        Err(e) if output::reader_gone(&e) => ExitCode::SUCCESS,
        Err(e) => {
            errln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
