//! The seeded simulator: n real engines, honest and Byzantine clients, a fake clock and a
//! faulty network, all driven from one u64 seed so that any run replays exactly.
//!
//! Messages go through the real codec and the real inbound verifier, so the simulator tests the
//! same path as the driver minus sockets. Invariant checkers run during and after the run.
//!
//! Besides safety, liveness is checked: after GST (the heal, and the end of the last crash,
//! restart or isolation), with at most f faulty replicas, every request of a correct client
//! must complete within [`liveness_bound_ms`], which is derived from the timeouts (its docs
//! give the derivation; docs/design.md §4, "The liveness bound"). A request that is late fails
//! the seed at once, naming the request, when it was submitted and how long it has waited.
//! [`Fault::Hunter`] and [`SimOptions::hunting_client`] add the hunting adversary
//! ([`crate::adversary`]).

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU64;
use std::sync::Arc;

use smr_core::client::{ClientAction, ClientConfig, ClientEngine};
use smr_core::codec;
use smr_core::engine::{Output, PersistRecord, ServiceDone, ServiceWork};
use smr_core::message::{
    Batch, Cid, Message, PreparedProof, Regency, Request, RequestBody, RequestId, RequestKind,
    Signed, Stop, VoteKind,
};
use smr_core::runner::{self, Host};
use smr_core::{
    ClientPolicy, Engine, EngineConfig, InboundVerifier, Limits, Peer, RequestAuth, Service,
    Timeouts, ValidEngineConfig, VerifiedRequests,
};
use smr_crypto::sim::{SimKey, SimVerifier};
use smr_crypto::{Digest, Ed25519Verifier, IdentityKey, PublicKey, Signature, Signer, Verifier};
use smr_modes::{Mode, Quorums};

use crate::adversary::{Adversary, Shot, View};

/// splitmix64: tiny, fast, and good enough to choose faults.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi].
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// The service under test: a hash chain over every executed op. Its reply is the position of
/// the op in the execution order, so a client's answer pins where its request executed.
#[derive(Default)]
pub struct ChainService {
    count: u64,
    chain: [u8; 32],
}

impl Service for ChainService {
    fn execute(&mut self, op: &[u8]) -> Vec<u8> {
        self.count += 1;
        let mut h = blake3::Hasher::new();
        h.update(&self.chain);
        h.update(op);
        self.chain = *h.finalize().as_bytes();
        self.count.to_le_bytes().to_vec()
    }
    fn query(&self, _op: &[u8]) -> Vec<u8> {
        self.count.to_le_bytes().to_vec()
    }
    fn snapshot(&self) -> Vec<u8> {
        let mut s = self.count.to_le_bytes().to_vec();
        s.extend_from_slice(&self.chain);
        s
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        if snapshot.len() != 40 {
            return Err("bad snapshot length".into());
        }
        self.count = u64::from_le_bytes(snapshot[..8].try_into().unwrap());
        self.chain.copy_from_slice(&snapshot[8..]);
        Ok(())
    }
}

/// A faulty replica scripted into a run. At most f replicas are faulty; the checkers judge only
/// the correct ones (a crashed replica must still be consistent up to its crash).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// The leader of regency 0 crashes at `at_ms`; with `after_propose`, right after it sends its
    /// next PROPOSE, which only some followers receive.
    LeaderCrash {
        at_ms: u64,
        after_propose: bool,
    },
    /// Replica 0 runs as two honest engines sharing one key ("twins"), each talking to a
    /// different follower and hearing from a different half of the clients: it equivocates.
    Twins,
    /// Replica 0 never orders the requests of client 0.
    SilentForClient,
    /// Replica 0 tampers with its proposals: forged requests, or replays of executed batches.
    ForgingLeader,
    /// Replica n-1 broadcasts STOPs for random regencies.
    StopSpammer,
    /// Replica 1, leader of regency 1, sends SYNCs its proofs do not support.
    BadSyncLeader,
    /// Replica `slot` crashes at `crash_at_ms` and restarts at `restart_at_ms`, from its stored
    /// records or, with `wipe`, from an empty disk (and so through state transfer).
    CrashRestart {
        slot: usize,
        crash_at_ms: u64,
        restart_at_ms: u64,
        wipe: bool,
    },
    /// Replica 2 restarts from an empty disk while replica 3 lies in state transfer: wrong
    /// digests and corrupted chunks.
    LyingStateSender {
        crash_at_ms: u64,
        restart_at_ms: u64,
    },
    /// The hunting adversary ([`crate::adversary`]) drives `replica`. In BFT the replica is
    /// Byzantine: an honest engine underneath keeps it informed, a share of its honest output
    /// is dropped or equivocated (per seed), and at every step it sends messages of every kind
    /// with edge values, replays, mutations and equivocations. In CFT a replica that lies is
    /// outside the fault model, so there it stays correct (and judged by every checker) and
    /// only replays its own old messages, which the network may do anyway.
    Hunter {
        replica: u32,
    },
    /// Example 2 of issue 12: replica 0, the leader, never orders client 0's requests and sends
    /// every follower `StateInfo{checkpoints: [(1000000, any digest)], voted_up_to: 0}` every
    /// `period_ms`.
    StateInfoSpam {
        period_ms: u64,
    },
    /// Issue 17 item 1: each client submits `first_requests` and then nothing until
    /// `crash_at_ms`; meanwhile, in the quiet, replica `wiped` loses its disk at `wipe_at_ms`
    /// and rejoins at `restart_at_ms`. At `crash_at_ms` replica `crashed` crashes for good and
    /// the clients go on: the n-f left, the rejoined one included, must order the rest.
    QuietRejoinThenCrash {
        wiped: usize,
        crashed: usize,
        first_requests: usize,
        wipe_at_ms: u64,
        restart_at_ms: u64,
        crash_at_ms: u64,
    },
}

#[derive(Clone, Debug)]
pub struct SimOptions {
    pub mode: Mode,
    pub n: usize,
    pub f: usize,
    pub seed: u64,
    pub clients: usize,
    pub requests_per_client: usize,
    /// Requests each honest client keeps in flight.
    pub client_window: usize,
    pub drop_prob: f64,
    pub dup_prob: f64,
    pub min_delay_ms: u64,
    pub max_delay_ms: u64,
    /// Faults (drops, duplicates, partitions) stop at this time; delays and reordering go on.
    pub heal_at_ms: u64,
    /// Isolate one replica (maybe the leader) for a while before the heal.
    pub partition: bool,
    /// Cut off one replica after another until the heal.
    pub rolling_partitions: bool,
    /// Isolate exactly this replica from `.1` to `.2` ms (overrides `partition`).
    pub isolate: Option<(u32, u64, u64)>,
    pub byzantine_client: bool,
    pub real_crypto: bool,
    pub fault: Fault,
    /// Replace the scripted Byzantine client by the generic, hunting one ([`crate::adversary`]).
    pub hunting_client: bool,
    /// Also crash this correct replica at `.1` ms and restart it from an empty disk at `.2` ms
    /// (through rejoin and state transfer): what the hunting adversary's rejoin and
    /// state-transfer messages aim at.
    pub wipe_restart: Option<(usize, u64, u64)>,
    /// Drop every message of this kind, forever (used to prove what a phase is needed for).
    pub drop_kind: Option<&'static str>,
    /// A brand-new cluster whose replicas come up apart, each after its own delay of up to this
    /// many ms (from the seed): all but the last as `--new-cluster` starts them (nothing to
    /// recover, voting at once), the last as the driver starts one on an empty data dir
    /// without it, rejoining ([`Engine::rejoin`]).
    pub start_rejoining: Option<u64>,
    /// The service takes this many ms (drawn per batch from the range, on an RNG of its own)
    /// to execute a batch, as a real service thread does, instead of answering at once: the
    /// engine then holds decided instances that wait for the service.
    pub slow_service_ms: Option<(u64, u64)>,
    /// Overrides the sim's `limits.max_instances_ahead` (32), and lowers
    /// `max_instances_in_flight` (4) to it if needed: a window smaller than the checkpoint
    /// period lets a restarted replica hold more stored decisions than a window.
    pub max_instances_ahead: Option<u64>,
    /// Also crash replica `.0` for good at `.1` ms.
    pub crash_for_good: Option<(usize, u64)>,
    /// Also crash each replica `.0` at `.1` ms and restart it from its store at `.2` ms.
    pub restarts: Vec<(usize, u64, u64)>,
    /// Replace the scripted Byzantine client by one that splits its signatures (issue 13).
    pub split_client: Option<SplitSignatures>,
    /// Each correct replica's disk takes this many ms (drawn per fsync from the range, on an
    /// RNG of its own) to complete an fsync, and the replica does what the tokio driver does
    /// ([`runner::GroupCommit`]): [`Host::sync`] returns at once, and every later send and
    /// piece of service work waits, in order, until the fsync ends. A crash keeps what a
    /// completed fsync covered and a seeded prefix of what was written after it ([`Disk`]).
    /// `None`: the disk is durable at once.
    pub fsync_ms: Option<(u64, u64)>,
    pub max_time_ms: u64,
}

/// A Byzantine client that sends each of its requests to every replica at once, with a good
/// signature to some and a bad one (the same body) to the others (docs/design.md §5). The
/// leader is that of regency 0, replica 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitSignatures {
    /// A good copy to the leader only, bad copies to every follower.
    GoodToLeaderOnly,
    /// A bad copy to the leader only, good copies to every follower.
    BadToLeaderOnly,
    /// Bad copies to the leader and to follower 1, good copies to the others.
    BadToLeaderAndOneFollower,
    /// Bad copies to every replica.
    BadEverywhere,
}

impl SplitSignatures {
    /// Whether replica `r` gets a good copy.
    pub fn good_at(self, r: u32) -> bool {
        match self {
            SplitSignatures::GoodToLeaderOnly => r == 0,
            SplitSignatures::BadToLeaderOnly => r != 0,
            SplitSignatures::BadToLeaderAndOneFollower => r > 1,
            SplitSignatures::BadEverywhere => false,
        }
    }
}

/// A split client's request (see [`SplitSignatures`]).
struct SplitRequest {
    sent_ms: u64,
    /// Whether some replica got a good copy: then it must execute.
    good_somewhere: bool,
    executed_ms: Option<u64>,
}

impl SimOptions {
    /// Draws the fault mix for `seed`: drop, duplicate and reorder on every seed; partitions and
    /// real ed25519 on a share of them.
    pub fn for_seed(mode: Mode, n: usize, f: usize, seed: u64) -> SimOptions {
        let mut rng = Rng::new(seed.wrapping_mul(31).wrapping_add(7));
        SimOptions {
            mode,
            n,
            f,
            seed,
            clients: 4,
            requests_per_client: 125,
            client_window: rng.range(1, 8) as usize,
            drop_prob: rng.range(1, 15) as f64 / 100.0,
            dup_prob: rng.range(1, 10) as f64 / 100.0,
            min_delay_ms: 1,
            max_delay_ms: rng.range(2, 40),
            heal_at_ms: rng.range(500, 3000),
            partition: rng.chance(0.3),
            rolling_partitions: false,
            isolate: None,
            byzantine_client: true,
            real_crypto: seed % 10 == 3,
            fault: Fault::None,
            hunting_client: false,
            wipe_restart: None,
            drop_kind: None,
            start_rejoining: None,
            slow_service_ms: None,
            max_instances_ahead: None,
            crash_for_good: None,
            restarts: Vec::new(),
            split_client: None,
            fsync_ms: Some((0, 3)),
            max_time_ms: 120_000,
        }
    }

    /// A run with a faulty replica: fewer requests (the faults, not the volume, are the point),
    /// and the same drop/duplicate/reorder mix.
    pub fn with_fault(mode: Mode, n: usize, f: usize, seed: u64, fault: Fault) -> SimOptions {
        let mut opts = SimOptions::for_seed(mode, n, f, seed);
        opts.requests_per_client = 50;
        opts.fault = fault;
        opts
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Node {
    /// A replica engine by slot: slots 0..n are replicas 0..n; slot n is replica 0's twin.
    Replica(usize),
    Client(usize),
}

#[derive(Debug)]
enum Event {
    Deliver {
        to: Node,
        from: Peer,
        frame: Vec<u8>,
    },
    /// The engine's next deadline, as it was when this event was scheduled.
    ReplicaTimer {
        slot: usize,
        deadline_ms: u64,
    },
    ClientTimer {
        client: usize,
    },
    ByzantineStep,
    /// [`Fault::StateInfoSpam`]'s next StateInfo round.
    Spam,
    /// [`Fault::QuietRejoinThenCrash`]: the clients submit the rest of their requests.
    ResumeClients,
    /// `slot` crashes; with `after_propose`, right after it sends its next PROPOSE.
    Crash {
        slot: usize,
        after_propose: bool,
    },
    Restart {
        slot: usize,
        wipe: bool,
    },
    /// A slow service ([`SimOptions::slow_service_ms`]) finished a batch for `slot`'s
    /// incarnation `incarnation` (dropped if the replica crashed or restarted since).
    ServiceDone {
        slot: usize,
        incarnation: u64,
        done: ServiceDone,
    },
    /// `slot`'s disk completed fsync `number` ([`SimOptions::fsync_ms`]) for its incarnation
    /// `incarnation` (dropped if the replica crashed or restarted since).
    FsyncDone {
        slot: usize,
        incarnation: u64,
        number: u64,
    },
}

/// What a replica's group commit holds until an fsync ends ([`runner::GroupCommit`]).
#[derive(Debug)]
enum Held {
    Send { to: Vec<Peer>, message: Message },
    Service(ServiceWork),
}

/// A replica's simulated disk with a latency ([`SimOptions::fsync_ms`]): which of its stored
/// records are durable, and the group commit that holds its actions meanwhile, as the tokio
/// driver's write-ahead log and `EngineLoop::commit` do.
#[derive(Debug, Default)]
struct Disk {
    commit: runner::GroupCommit<Held>,
    /// A record other than a checkpoint was appended since the last sync (the driver's
    /// `unsynced`): a checkpoint is written and synced in one go.
    unsynced: bool,
    /// The first `durable` records of `ReplicaNode::stored` are covered by a completed fsync
    /// (or a checkpoint).
    durable: usize,
    /// How many stored records the running fsync covers: those written when it started.
    fsync_covers: Option<usize>,
    /// What freed service work produced, to feed the engine in order once the output being
    /// performed is done (the driver's service thread answers later too).
    service_done: std::collections::VecDeque<ServiceDone>,
}

struct ReplicaNode {
    id: u32,
    engine: Engine,
    signer: Arc<dyn Signer>,
    service: ChainService,
    /// The deadline a `ReplicaTimer` event is scheduled for (the engine's next deadline when
    /// this replica last handled an input).
    timer_at_ms: Option<u64>,
    crashed: bool,
    /// Whether the checkers judge this engine (false for Byzantine ones).
    correct: bool,
    regency: Regency,
    /// Crash right after the next PROPOSE this replica sends.
    crash_after_propose: bool,
    /// Batches this replica proposed, for a forging leader to replay.
    proposed: Vec<Batch>,
    /// Its "disk": what it persisted, compacted at checkpoints.
    stored: Vec<PersistRecord>,
    /// Requests it executed (not counting state it received by transfer).
    executed_count: usize,
    /// Largest decision log it held, to check that checkpoints bound memory.
    max_log_len: usize,
    /// Restarts so far: a slow service's answer goes to the incarnation that asked.
    incarnation: u64,
    /// Its verify workers' cache of authenticated requests (emptied by a restart).
    verified_requests: VerifiedRequests,
    /// Its disk's latency per fsync, if it has one ([`SimOptions::fsync_ms`]; correct
    /// replicas only).
    fsync_ms: Option<(u64, u64)>,
    disk: Disk,
    /// Whether it ever ran: restarted from an empty store, it then rejoins, as the driver
    /// starts a replica on an empty data dir (only a brand-new cluster's first start votes
    /// at once).
    started: bool,
}

struct ClientNode {
    engine: ClientEngine,
    remaining: usize,
    /// seq -> op, for everything submitted.
    submitted: BTreeMap<u64, Vec<u8>>,
    /// seq -> result.
    completed: BTreeMap<u64, Vec<u8>>,
    /// seq -> when it was submitted, for the liveness bound.
    submitted_at_ms: BTreeMap<u64, u64>,
    timer_at_ms: Option<u64>,
}

/// What a run produced, for assertions beyond the built-in checkers.
#[derive(Debug, Default)]
pub struct SimReport {
    pub messages_by_kind: BTreeMap<&'static str, u64>,
    pub decided: BTreeMap<Cid, Digest>,
    pub completed_requests: usize,
    pub expected_requests: usize,
    pub end_time_ms: u64,
    pub executed_per_replica: Vec<usize>,
    pub rejections: BTreeMap<&'static str, u64>,
    /// Final regency of each correct replica.
    pub regencies: Vec<Regency>,
    pub state_transfers: u64,
    pub lying_state_sources: u64,
    /// Largest decision log any correct replica held.
    pub max_log_len: usize,
    pub checkpoint_period: u64,
    /// Messages the hunting adversaries (replica and client) sent, by kind.
    pub adversary_sent: BTreeMap<&'static str, u64>,
    /// Rejections counted by correct replicas of messages from a Byzantine peer (the hunting
    /// replica or the Byzantine client), by kind.
    pub adversary_rejections: BTreeMap<&'static str, u64>,
    /// The liveness bound this run was held to ([`liveness_bound_ms`]).
    pub liveness_bound_ms: u64,
    /// The longest a correct client's request took, counted from its submission or from the
    /// end of the last fault (GST), whichever is later.
    pub max_elapsed_after_gst_ms: u64,
    /// The splitting client's requests ([`SimOptions::split_client`]): sent, and executed.
    pub split_requests: (usize, usize),
    /// Fsyncs started on correct replicas' disks ([`SimOptions::fsync_ms`]).
    pub fsyncs: u64,
    /// Most actions a replica's group commit held at once.
    pub max_held_actions: usize,
    /// Records written but not synced that crashes took.
    pub records_lost: u64,
    /// When a replica first sent a STOP of its own (resends and relays included, the first
    /// counts).
    pub first_stop_ms: Option<u64>,
    /// When the last crash, restart or isolation happened (0 if none).
    pub last_fault_ms: u64,
    /// Actions held for an fsync that crashes took.
    pub held_actions_lost: u64,
}

pub struct Sim {
    opts: SimOptions,
    rng: Rng,
    /// Draws a slow service's delays.
    service_rng: Rng,
    now_ms: u64,
    next_event: u64,
    queue: BTreeMap<(u64, u64), Event>,
    replicas: Vec<ReplicaNode>,
    verifier: InboundVerifier,
    clients: Vec<ClientNode>,
    client_index: BTreeMap<PublicKey, usize>,
    byzantine: Option<(Arc<dyn Signer>, u64)>,
    /// The splitting Byzantine client ([`SimOptions::split_client`]) and its next seq.
    split: Option<(Arc<dyn Signer>, u64)>,
    /// Its requests so far.
    split_requests: BTreeMap<RequestId, SplitRequest>,
    /// When the splitting client last sent its open request, while its session is not open.
    split_open_sent_ms: Option<u64>,
    /// (client, seq) -> op for every request a client really sent: signed, or on its own
    /// connection (docs/design.md §5).
    legitimately_signed: BTreeMap<RequestId, BTreeSet<Vec<u8>>>,
    /// (replica, from, until): windows in which one replica is cut off from everyone.
    isolated: Vec<(u32, u64, u64)>,
    decided: BTreeMap<Cid, Digest>,
    /// Each correct replica's votes on its disk: a vote appended and lost in a crash before
    /// any fsync covered it was never sent, and is forgotten ([`Sim::crash`]).
    votes: BTreeMap<(u32, Cid, Regency, u8), Digest>,
    /// Each correct replica's votes as they left it (WRITE, ACCEPT, and in CFT the leader's
    /// PROPOSE, its acceptance): never forgotten, a wipe included.
    sent_votes: BTreeMap<(u32, Cid, Regency, u8), Digest>,
    /// Draws fsync latencies and what a crash keeps of what was not synced.
    disk_rng: Rng,
    /// What each cid executed, as the first correct replica to execute it saw it; every other
    /// correct replica must execute exactly the same.
    executed_by_cid: BTreeMap<Cid, Vec<RequestId>>,
    replica_keys: Vec<Arc<dyn Signer>>,
    engine_configs: Vec<ValidEngineConfig>,
    report: SimReport,
    /// The first checker failure met while performing an engine's output.
    failure: Option<String>,
    /// The hunting Byzantine replica's slot and its adversary.
    hunter: Option<(usize, Adversary)>,
    /// The hunting Byzantine client.
    hunter_client: Option<Adversary>,
    /// In BFT, the share of its honest engine's messages the hunting replica drops.
    hunter_drop: f64,
    /// The sender of the message being delivered, to attribute engine rejections.
    delivering_from: Option<Peer>,
    /// When the last crash, restart or isolation ended: with `heal_at_ms`, the start of the
    /// period (GST) that the liveness bound counts from.
    last_fault_ms: u64,
    /// Largest checkpoint any replica took, in bytes: a state transfer's length.
    max_checkpoint_bytes: u64,
}

/// The sim's timeouts: short, so that leader changes happen within a run.
fn timeouts() -> Timeouts {
    Timeouts {
        request_timeout_ms: 400,
        retransmit_initial_ms: 60,
        retransmit_max_ms: 1000,
        heartbeat_ms: 300,
    }
}

/// Honest clients' `retry_timeout_ms`.
const CLIENT_RETRY_MS: u64 = 500;

/// The longest a correct client's request may take, in simulated milliseconds, counted from
/// `start_ms`: its submission or GST, whichever is later. GST is when the network heals and the
/// last crash, restart or isolation is over; from then on every message arrives within
/// `max_delay_ms` (Δ), and at most `f` replicas are faulty. `state_bytes` is the largest
/// checkpoint a replica may have to fetch. The bound is the sum of the worst case of each step
/// the request may have to wait for (docs/design.md §4, "The liveness bound"), with T the
/// request timeout, R the largest retransmit interval, R₀ the first, H the heartbeat and C the
/// client's retry timeout:
///
/// 1. `C + Δ`: the client's next retry reaches every correct replica (its first send may have
///    been lost before GST, or gone to a crashed CFT leader alone).
/// 2. `3T`: a correct replica forwards the request to the leader at its first request timeout
///    and broadcasts STOP at the second, one more T if it had just caught up (it then blames
///    its own lag for a while).
/// 3. The leader changes. The change timeout is T·2^k after k failed changes in a row, capped
///    at 64T. The k-th failure comes at least T·2^(k-1) after the one before, so at `start_ms`
///    k ≤ k₀ = ⌊log₂(start_ms/T + 1)⌋. After `start_ms` at most `1 + f + ⌈log₂((R + 4Δ)/T)⌉`
///    changes fail: the one in progress, one per faulty leader in a row, and those whose
///    timeout is still too short for a change to complete after GST. Each failed change costs
///    its timeout, T·2^min(k, 6) for k = k₀, k₀+1, ...; each change, the last, successful one
///    included, may wait one retransmission of a STOP or STOPDATA lost before GST and then
///    takes STOP → install → STOPDATA → SYNC, four message delays: `R + 4Δ`.
/// 4. `(f+1)·R + H + ⌈state_bytes / state_chunk_bytes⌉·2Δ + (A/D + 1)·(R₀ + 2Δ)`: a replica the
///    quorum needs may have to catch up first (a restarted or cut-off one): up to `f+1`
///    transfer sources stall or lie for R each, a heartbeat reveals the gap, the checkpoint
///    comes one chunk per round trip, and the decisions after it come D =
///    `max_decisions_per_reply` per query, at most A = `max_instances_ahead` of them, one query
///    per R₀.
/// 5. `R + 6Δ`: ordering under a correct leader: a retransmission of what was lost before GST,
///    then PROPOSE, WRITE, ACCEPT, execution and the reply, with a round trip of slack for a
///    batch already in flight.
pub fn liveness_bound_ms(
    timeouts: &Timeouts,
    limits: &Limits,
    client_retry_ms: u64,
    max_delay_ms: u64,
    f: u64,
    state_bytes: u64,
    start_ms: u64,
) -> u64 {
    let t = timeouts.request_timeout_ms;
    let r = timeouts.retransmit_max_ms;
    let d = max_delay_ms;
    let reach = client_retry_ms + d;
    let complain = 3 * t;
    let change_ms = r + 4 * d;
    let k0 = (start_ms / t + 1).ilog2() as u64;
    let too_short = change_ms.div_ceil(t).next_power_of_two().ilog2() as u64;
    let failed = 1 + f + too_short;
    let timeouts_ms: u64 = (k0..k0 + failed).map(|k| t << k.min(6)).sum();
    let changes = timeouts_ms + (failed + 1) * change_ms;
    let chunks = state_bytes.div_ceil(limits.state_chunk_bytes as u64);
    let queries = limits.max_instances_ahead / limits.max_decisions_per_reply as u64 + 1;
    let catch_up = (f + 1) * r
        + timeouts.heartbeat_ms
        + chunks * 2 * d
        + queries * (timeouts.retransmit_initial_ms + 2 * d);
    let order = r + 6 * d;
    reach + complain + changes + catch_up + order
}

/// Every request a message carries, at any depth a request can sit.
fn requests_in(message: &Message) -> Vec<&Request> {
    match message {
        Message::Request(r) => vec![r],
        Message::Forward(rs) => rs.iter().collect(),
        Message::Propose(p) => p.body.batch.requests.iter().collect(),
        Message::Stop(s) => s.body.pending.iter().collect(),
        Message::Decisions(ds) => ds.iter().flat_map(|d| &d.batch.requests).collect(),
        Message::StopData(sd) => sd
            .body
            .prepared
            .iter()
            .flat_map(|p| &p.batch.requests)
            .collect(),
        Message::Sync(s) => s
            .body
            .proofs
            .iter()
            .flat_map(|sd| sd.body.prepared.iter())
            .flat_map(|p| &p.batch.requests)
            .collect(),
        _ => Vec::new(),
    }
}

/// The sim's limits with `opts`' overrides.
fn limits_for(opts: &SimOptions) -> Limits {
    let mut limits = limits();
    if let Some(ahead) = opts.max_instances_ahead {
        limits.max_instances_ahead = ahead;
        limits.max_instances_in_flight = limits.max_instances_in_flight.min(ahead);
    }
    limits
}

fn limits() -> Limits {
    Limits {
        max_batch_requests: 64,
        max_batch_bytes: 64 * 1024,
        max_op_bytes: 1024,
        max_pending_per_client: 16,
        max_pending_total: 10_000,
        max_instances_in_flight: 4,
        max_instances_ahead: 32,
        max_decisions_per_reply: 8,
        max_log_entries: 100_000,
        checkpoint_period: 10,
        max_state_bytes: 1 << 20,
        // Small chunks, so that every transfer takes several.
        state_chunk_bytes: 512,
        // A client table that fits in half of max_state_bytes (EngineConfig::validate).
        max_clients: 64,
        max_client_reply_bytes: 16 * 1024,
        max_reply_cache_bytes: 256 * 1024,
        client_expiry_cids: 1000,
        max_sessions_per_client: 16,
    }
}

impl Sim {
    pub fn new(opts: SimOptions) -> Sim {
        let quorums = Quorums::new(opts.mode, opts.n, opts.f).expect("valid sim quorums");
        let mut rng = Rng::new(opts.seed);
        let mut sim_verifier = SimVerifier::new();
        let mut make_key = |label: u64| -> Arc<dyn Signer> {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&opts.seed.to_le_bytes());
            seed[8..16].copy_from_slice(&label.to_le_bytes());
            if opts.real_crypto {
                Arc::new(IdentityKey::from_seed(seed))
            } else {
                let k = SimKey::from_seed(seed);
                sim_verifier.register(&k);
                Arc::new(k)
            }
        };
        let replica_keys: Vec<Arc<dyn Signer>> = (0..opts.n as u64).map(&mut make_key).collect();
        let client_keys: Vec<Arc<dyn Signer>> = (0..opts.clients as u64)
            .map(|i| make_key(1000 + i))
            .collect();
        let byzantine_key = make_key(9999);
        let replica_pks: Vec<PublicKey> = replica_keys.iter().map(|k| k.public_key()).collect();
        let mut allowed: BTreeSet<PublicKey> = client_keys.iter().map(|k| k.public_key()).collect();
        allowed.insert(byzantine_key.public_key());
        let timeouts = timeouts();
        let signatures: Arc<dyn Verifier> = if opts.real_crypto {
            Arc::new(Ed25519Verifier)
        } else {
            Arc::new(sim_verifier)
        };
        let verifier = InboundVerifier {
            quorums,
            replica_keys: Arc::new(replica_pks.clone()),
            clients: Arc::new(ClientPolicy::Allowed(allowed)),
            limits: limits_for(&opts),
            signatures,
        };
        let mut sim = Sim {
            rng: Rng::new(rng.next_u64()),
            // Its own RNG, so that the network's schedule for a seed stays what it was.
            service_rng: Rng::new(opts.seed ^ 0x5e41_1ce5),
            now_ms: 0,
            next_event: 0,
            queue: BTreeMap::new(),
            replicas: Vec::new(),
            clients: Vec::new(),
            client_index: BTreeMap::new(),
            byzantine: (opts.byzantine_client
                && !opts.hunting_client
                && opts.split_client.is_none())
            .then(|| (byzantine_key.clone(), 1)),
            split: opts.split_client.map(|_| (byzantine_key.clone(), 1)),
            split_requests: BTreeMap::new(),
            split_open_sent_ms: None,
            legitimately_signed: BTreeMap::new(),
            isolated: Vec::new(),
            decided: BTreeMap::new(),
            votes: BTreeMap::new(),
            sent_votes: BTreeMap::new(),
            disk_rng: Rng::new(opts.seed ^ 0xd15c_f5c0),
            executed_by_cid: BTreeMap::new(),
            replica_keys: replica_keys.clone(),
            engine_configs: Vec::new(),
            report: SimReport::default(),
            failure: None,
            hunter: None,
            hunter_client: (opts.hunting_client && opts.byzantine_client)
                .then(|| Adversary::new(opts.mode, byzantine_key.clone())),
            hunter_drop: 0.0,
            delivering_from: None,
            last_fault_ms: 0,
            max_checkpoint_bytes: 0,
            verifier,
            opts: opts.clone(),
        };
        let faulty_id: Option<u32> = match opts.fault {
            Fault::None | Fault::LeaderCrash { .. } => None,
            Fault::Twins | Fault::SilentForClient | Fault::ForgingLeader => Some(0),
            Fault::StopSpammer | Fault::LyingStateSender { .. } => Some(opts.n as u32 - 1),
            Fault::BadSyncLeader => Some(1),
            Fault::CrashRestart { .. } | Fault::QuietRejoinThenCrash { .. } => None,
            Fault::Hunter { replica } => (opts.mode == Mode::Bft).then_some(replica),
            Fault::StateInfoSpam { .. } => Some(0),
        };
        if let Fault::Hunter { replica } = opts.fault {
            let key = replica_keys[replica as usize].clone();
            sim.hunter = Some((replica as usize, Adversary::new(opts.mode, key)));
            sim.hunter_drop = [0.0, 0.2, 0.6, 1.0][rng.range(0, 3) as usize];
        }
        let slots = if opts.fault == Fault::Twins {
            opts.n + 1
        } else {
            opts.n
        };
        for slot in 0..slots {
            let id = if slot == opts.n { 0 } else { slot as u32 };
            let key = replica_keys[id as usize].clone();
            let cfg = EngineConfig {
                quorums,
                me: id,
                replica_keys: replica_pks.clone(),
                clients: (*sim.verifier.clients).clone(),
                limits: limits_for(&sim.opts),
                timeouts: timeouts.clone(),
            }
            .validate()
            .expect("valid test config");
            sim.engine_configs.push(cfg.clone());
            sim.replicas.push(ReplicaNode {
                id,
                engine: channel_engine(Engine::new(cfg, key.clone()), &sim.verifier),
                signer: key,
                service: ChainService::default(),
                timer_at_ms: None,
                crashed: false,
                correct: faulty_id != Some(id),
                regency: Regency::ZERO,
                crash_after_propose: false,
                proposed: Vec::new(),
                stored: Vec::new(),
                executed_count: 0,
                max_log_len: 0,
                incarnation: 0,
                verified_requests: VerifiedRequests::new(4096),
                fsync_ms: opts.fsync_ms.filter(|_| faulty_id != Some(id)),
                disk: Disk::default(),
                started: false,
            });
        }
        for (i, key) in client_keys.iter().enumerate() {
            let cfg = ClientConfig {
                quorums,
                unordered_reads_enabled: false,
                max_outstanding: opts.client_window,
                max_op_bytes: limits().max_op_bytes,
                retry_timeout_ms: 500,
            };
            sim.client_index.insert(key.public_key(), i);
            sim.clients.push(ClientNode {
                engine: ClientEngine::new(
                    cfg,
                    key.clone(),
                    smr_core::clients::SESSION_NUMBER_LIMIT | i as u64,
                ),
                remaining: opts.requests_per_client,
                submitted: BTreeMap::new(),
                completed: BTreeMap::new(),
                submitted_at_ms: BTreeMap::new(),
                timer_at_ms: None,
            });
        }
        if let Some(isolate) = opts.isolate {
            sim.isolated.push(isolate);
        } else if opts.partition {
            let victim = rng.range(0, opts.n as u64 - 1) as u32;
            let start = rng.range(0, opts.heal_at_ms / 2);
            sim.isolated.push((victim, start, opts.heal_at_ms));
        } else if opts.rolling_partitions {
            // One replica at a time is cut off, a different one every few hundred ms: leader
            // changes pile up, with values prepared in one epoch and decided in another.
            let mut t = rng.range(0, 200);
            while t < opts.heal_at_ms {
                let len = rng.range(300, 1500);
                let victim = rng.range(0, opts.n as u64 - 1) as u32;
                sim.isolated
                    .push((victim, t, (t + len).min(opts.heal_at_ms)));
                t += len + rng.range(0, 300);
            }
        }
        match opts.fault {
            Fault::LeaderCrash {
                at_ms,
                after_propose,
            } => sim.schedule(
                at_ms,
                Event::Crash {
                    slot: 0,
                    after_propose,
                },
            ),
            Fault::CrashRestart {
                slot,
                crash_at_ms,
                restart_at_ms,
                wipe,
            } => {
                if std::env::var("SMR_SIM_TRACE").is_ok() {
                    eprintln!(
                        "crash {slot} at {crash_at_ms}, restart at {restart_at_ms}, wipe {wipe}"
                    );
                }
                sim.schedule(
                    crash_at_ms,
                    Event::Crash {
                        slot,
                        after_propose: false,
                    },
                );
                sim.schedule(restart_at_ms, Event::Restart { slot, wipe });
            }
            Fault::QuietRejoinThenCrash {
                wiped,
                crashed,
                wipe_at_ms,
                restart_at_ms,
                crash_at_ms,
                ..
            } => {
                if std::env::var("SMR_SIM_TRACE").is_ok() {
                    eprintln!(
                        "wipe {wiped} at {wipe_at_ms}, restart at {restart_at_ms}; crash {crashed} at {crash_at_ms}"
                    );
                }
                sim.schedule(
                    wipe_at_ms,
                    Event::Crash {
                        slot: wiped,
                        after_propose: false,
                    },
                );
                sim.schedule(
                    restart_at_ms,
                    Event::Restart {
                        slot: wiped,
                        wipe: true,
                    },
                );
                sim.schedule(
                    crash_at_ms,
                    Event::Crash {
                        slot: crashed,
                        after_propose: false,
                    },
                );
                sim.schedule(crash_at_ms, Event::ResumeClients);
            }
            Fault::LyingStateSender {
                crash_at_ms,
                restart_at_ms,
            } => {
                let slot = opts.n - 2;
                sim.schedule(
                    crash_at_ms,
                    Event::Crash {
                        slot,
                        after_propose: false,
                    },
                );
                sim.schedule(restart_at_ms, Event::Restart { slot, wipe: true });
            }
            _ => {}
        }
        if let Some((slot, crash_at_ms, restart_at_ms)) = opts.wipe_restart {
            if std::env::var("SMR_SIM_TRACE").is_ok() {
                eprintln!("crash {slot} at {crash_at_ms}, restart at {restart_at_ms}, wipe true");
            }
            sim.schedule(
                crash_at_ms,
                Event::Crash {
                    slot,
                    after_propose: false,
                },
            );
            sim.schedule(restart_at_ms, Event::Restart { slot, wipe: true });
        }
        for &(slot, crash_at_ms, restart_at_ms) in &opts.restarts {
            if std::env::var("SMR_SIM_TRACE").is_ok() {
                eprintln!("crash {slot} at {crash_at_ms}, restart at {restart_at_ms}, wipe false");
            }
            sim.schedule(
                crash_at_ms,
                Event::Crash {
                    slot,
                    after_propose: false,
                },
            );
            sim.schedule(restart_at_ms, Event::Restart { slot, wipe: false });
        }
        if let Some((slot, at_ms)) = opts.crash_for_good {
            if std::env::var("SMR_SIM_TRACE").is_ok() {
                eprintln!("crash {slot} for good at {at_ms}");
            }
            sim.schedule(
                at_ms,
                Event::Crash {
                    slot,
                    after_propose: false,
                },
            );
        }
        if let Some(max_delay_ms) = opts.start_rejoining {
            let mut rng = Rng::new(opts.seed ^ 0x5747);
            for slot in 0..opts.n {
                // Down until its start, then up from an empty disk: new (an empty store
                // recovered) or, the last, rejoining.
                sim.replicas[slot].crashed = true;
                let at_ms = rng.range(0, max_delay_ms);
                let wipe = slot + 1 == opts.n;
                sim.schedule(at_ms, Event::Restart { slot, wipe });
            }
        }
        sim.report.expected_requests = opts.clients * opts.requests_per_client;
        sim
    }

    fn schedule(&mut self, at_ms: u64, event: Event) {
        self.next_event += 1;
        self.queue.insert((at_ms, self.next_event), event);
    }

    fn faulty(&self) -> bool {
        self.now_ms < self.opts.heal_at_ms
    }

    fn replica_of(&self, node: Node) -> Option<u32> {
        match node {
            Node::Replica(slot) => Some(self.replicas[slot].id),
            Node::Client(_) => None,
        }
    }

    fn cut_off(&self, a: Node, b: Node) -> bool {
        let now = self.now_ms;
        self.isolated.iter().any(|(victim, start, end)| {
            now >= *start
                && now < *end
                && (self.replica_of(a) == Some(*victim)) != (self.replica_of(b) == Some(*victim))
        })
    }

    /// The engines a message addressed to `to` reaches, given who sends it. Twins split the
    /// world: twin A (slot 0) talks only with replica 1 and hears the even clients, twin B
    /// (slot n) talks only with replica 2 and hears the odd clients.
    fn targets(&self, from: Node, to: Peer) -> Vec<Node> {
        let twins = self.opts.fault == Fault::Twins;
        match to {
            Peer::Client(k) => self
                .client_index
                .get(&k)
                .map(|i| vec![Node::Client(*i)])
                .unwrap_or_default(),
            Peer::Replica(0) if twins => match from {
                Node::Client(c) => vec![Node::Replica(if c % 2 == 0 { 0 } else { self.opts.n })],
                Node::Replica(1) => vec![Node::Replica(0)],
                Node::Replica(2) => vec![Node::Replica(self.opts.n)],
                _ => vec![],
            },
            Peer::Replica(r) => {
                if twins && from == Node::Replica(0) && r != 1 {
                    return vec![];
                }
                if twins && from == Node::Replica(self.opts.n) && r != 2 {
                    return vec![];
                }
                vec![Node::Replica(r as usize)]
            }
        }
    }

    fn send(&mut self, from_node: Node, from: Peer, to: Peer, message: &Message) {
        for target in self.targets(from_node, to) {
            self.send_to(from_node, from, target, message);
        }
    }

    fn send_to(&mut self, from_node: Node, from: Peer, to: Node, message: &Message) {
        *self
            .report
            .messages_by_kind
            .entry(message.kind_name())
            .or_default() += 1;
        if self.opts.drop_kind == Some(message.kind_name()) {
            return;
        }
        if self.cut_off(from_node, to) {
            return;
        }
        if self.faulty() && self.rng.chance(self.opts.drop_prob) {
            return;
        }
        let frame = codec::encode(message);
        let copies = if self.faulty() && self.rng.chance(self.opts.dup_prob) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            self.deliver_after_a_delay(to, from, frame.clone());
        }
    }

    /// Schedules `frame` from `from` to `to` after a network delay (no loss, no duplicate).
    fn deliver_after_a_delay(&mut self, to: Node, from: Peer, frame: Vec<u8>) {
        let delay = self
            .rng
            .range(self.opts.min_delay_ms, self.opts.max_delay_ms);
        self.schedule(self.now_ms + delay, Event::Deliver { to, from, frame });
    }

    pub fn run(mut self) -> Result<SimReport, String> {
        for slot in 0..self.replicas.len() {
            if self.replicas[slot].crashed {
                continue;
            }
            self.replicas[slot].started = true;
            let output = self.replicas[slot].engine.start(0);
            self.perform(slot, output)?;
        }
        for c in 0..self.clients.len() {
            self.client_fill(c)?;
        }
        if self.byzantine.is_some()
            || self.split.is_some()
            || self.hunter.is_some()
            || self.hunter_client.is_some()
            || self.opts.fault == Fault::StopSpammer
        {
            self.schedule(5, Event::ByzantineStep);
        }
        if let Fault::StateInfoSpam { period_ms } = self.opts.fault {
            self.schedule(period_ms, Event::Spam);
        }
        while let Some(((at, _), event)) = self.queue.pop_first() {
            if at > self.opts.max_time_ms {
                break;
            }
            self.now_ms = at;
            match event {
                Event::Deliver { to, from, frame } => self.deliver(to, from, &frame)?,
                Event::ReplicaTimer { slot, deadline_ms } => {
                    let node = &mut self.replicas[slot];
                    if !node.crashed && node.timer_at_ms == Some(deadline_ms) {
                        node.timer_at_ms = None;
                        let output = node.engine.on_timeout(self.now_ms);
                        self.perform(slot, output)?;
                    }
                }
                Event::ClientTimer { client } => {
                    let node = &mut self.clients[client];
                    if node.timer_at_ms == Some(self.now_ms) {
                        node.timer_at_ms = None;
                        let actions = node.engine.on_timer(self.now_ms);
                        self.client_actions(client, actions);
                        self.arm_client_timer(client);
                        self.check_liveness_bound(client)?;
                    }
                }
                Event::ByzantineStep => self.byzantine_step(),
                Event::Spam => self.state_info_spam(),
                Event::ResumeClients => {
                    for c in 0..self.clients.len() {
                        self.client_fill(c)?;
                    }
                }
                Event::Restart { slot, wipe } => self.restart(slot, wipe)?,
                Event::ServiceDone {
                    slot,
                    incarnation,
                    done,
                } => {
                    let node = &mut self.replicas[slot];
                    if !node.crashed && node.incarnation == incarnation {
                        let output = node.engine.on_service_done(self.now_ms, done);
                        self.perform(slot, output)?;
                    }
                }
                Event::FsyncDone {
                    slot,
                    incarnation,
                    number,
                } => {
                    let node = &self.replicas[slot];
                    if !node.crashed && node.incarnation == incarnation {
                        self.fsync_done(slot, number)?;
                    }
                }
                Event::Crash {
                    slot,
                    after_propose,
                } => {
                    self.last_fault_ms = self.now_ms;
                    if after_propose {
                        self.replicas[slot].crash_after_propose = true;
                    } else {
                        self.crash(slot);
                    }
                }
            }
            if self.all_done() && self.replicas_converged() {
                break;
            }
        }
        self.report.end_time_ms = self.now_ms;
        self.report.last_fault_ms = self.last_fault_ms;
        let adversaries = self
            .hunter
            .iter()
            .map(|(_, a)| a)
            .chain(self.hunter_client.iter());
        for adversary in adversaries {
            for (kind, count) in &adversary.sent_by_kind {
                *self.report.adversary_sent.entry(kind).or_default() += count;
            }
        }
        // The bound of a request submitted at GST: the one most runs' requests are held to.
        self.report.liveness_bound_ms = self.liveness_bound_ms(self.liveness_start_ms(0));
        self.final_checks()?;
        Ok(self.report)
    }

    /// Brings a crashed replica back, from its stored records or from nothing.
    fn restart(&mut self, slot: usize, wipe: bool) -> Result<(), String> {
        self.last_fault_ms = self.now_ms;
        let cfg = self.engine_configs[slot].clone();
        let key = self.replica_keys[self.replicas[slot].id as usize].clone();
        let records = if wipe {
            Vec::new()
        } else {
            self.replicas[slot].stored.clone()
        };
        // As the driver starts a replica whose data dir is empty (a crash may leave nothing
        // when no fsync had completed): it rejoins.
        let rejoin = wipe || (records.is_empty() && self.replicas[slot].started);
        let (engine, output) = if rejoin {
            // A fresh incarnation nonce, from the seed, the slot and the time, on an RNG of
            // its own: the network's schedule for a seed stays what it was before nonces.
            let draw = Rng::new(self.opts.seed ^ ((slot as u64) << 48) ^ self.now_ms).next_u64();
            let nonce = NonZeroU64::new(draw).unwrap_or(NonZeroU64::MIN);
            Engine::rejoin(cfg, key, nonce)
        } else {
            Engine::recover(cfg, key, records)?
        };
        let node = &mut self.replicas[slot];
        node.engine = channel_engine(engine, &self.verifier);
        node.verified_requests = VerifiedRequests::new(4096);
        node.incarnation += 1;
        node.service = ChainService::default();
        node.timer_at_ms = None;
        node.crashed = false;
        node.crash_after_propose = false;
        node.started = true;
        if wipe {
            // It forgot everything, promises included; its regency starts over. Its votes do
            // not: a rejoined replica must never vote against what it voted before it lost its
            // disk (docs/design.md §3.12), so the vote checkers keep them (those the crash took
            // before any fsync covered them were never sent, and are forgotten).
            node.stored.clear();
            node.regency = Regency::ZERO;
        }
        // What the crash left counts as durable from now on, as it does in the driver: a
        // process crash leaves records that were written but not synced in the page cache,
        // and `Wal::open` (fsync = "always") syncs the log and its directory before recovery
        // reads them. (Before it did, it synced only a cut tail, and a recovered replica's
        // votes could rest on records a power loss would still take: counting only the
        // synced ones as durable here failed about one CFT slow-disk seed in four on the
        // durability check.)
        node.disk = Disk {
            durable: node.stored.len(),
            ..Disk::default()
        };
        self.perform(slot, output)?;
        let output = self.replicas[slot].engine.start(self.now_ms);
        self.perform(slot, output)
    }

    fn all_done(&self) -> bool {
        let bft = self.opts.mode == Mode::Bft;
        self.clients
            .iter()
            .all(|c| c.remaining == 0 && c.engine.outstanding() == 0)
            && self
                .split_requests
                .values()
                .all(|r| r.executed_ms.is_some() || (bft && !r.good_somewhere))
            && self.split_client_done()
    }

    /// The splitting client sends until the scripted Byzantine steps end
    /// (`heal_at_ms + 4000`); a run with it goes on two request timeouts and a few delays
    /// longer, so that every follower's timers (forward, then STOP) ran for its last request.
    fn split_client_done(&self) -> bool {
        self.opts.split_client.is_none()
            || self.now_ms
                >= self.opts.heal_at_ms
                    + 4000
                    + 2 * timeouts().request_timeout_ms
                    + 20 * self.delay_bound_ms()
    }

    /// The replicas the convergence and liveness checks judge: correct and not crashed.
    fn live_correct(&self) -> impl Iterator<Item = &ReplicaNode> {
        self.replicas.iter().filter(|r| r.correct && !r.crashed)
    }

    /// Whether every live correct replica executed up to the same cid, and its service too:
    /// nothing waits for an fsync.
    fn replicas_converged(&self) -> bool {
        if self
            .live_correct()
            .any(|r| r.disk.commit.held() > 0 || !r.disk.service_done.is_empty())
        {
            return false;
        }
        let mut live = self.live_correct();
        let first = live.next().map(|r| r.engine.last_executed());
        live.all(|r| Some(r.engine.last_executed()) == first)
    }

    fn deliver(&mut self, to: Node, from: Peer, frame: &[u8]) -> Result<(), String> {
        let message: Message =
            codec::decode(frame).map_err(|e| format!("own frame failed to decode: {e}"))?;
        match to {
            Node::Replica(slot) => {
                if self.replicas[slot].crashed {
                    return Ok(());
                }
                if let Some((hunter_slot, adversary)) = &mut self.hunter {
                    if *hunter_slot == slot && self.opts.mode == Mode::Bft {
                        adversary.observe(&message);
                    }
                }
                if matches!(
                    self.opts.fault,
                    Fault::SilentForClient | Fault::StateInfoSpam { .. }
                ) && slot == 0
                    && self.silenced(from, &message)
                {
                    return Ok(());
                }
                if std::env::var("SMR_SIM_TRACE_KINDS")
                    .is_ok_and(|k| k.split(',').any(|k| k == message.kind_name()))
                {
                    eprintln!(
                        "t={} slot {slot} <- {from:?}: {}",
                        self.now_ms,
                        match &message {
                            Message::DecisionQuery { from_cid } =>
                                format!("decision-query {from_cid}"),
                            Message::StateInfo {
                                checkpoints,
                                voted_up_to,
                                ..
                            } => format!("state-info {checkpoints:?} voted {voted_up_to}"),
                            Message::Decisions(d) => format!(
                                "decisions {:?}",
                                d.iter().map(|d| d.cid).collect::<Vec<_>>()
                            ),
                            Message::StateChunk {
                                cid,
                                offset,
                                total_len,
                                bytes,
                                decided,
                            } => format!(
                                "state-chunk cid {cid} offset {offset} of {total_len}: {} bytes, \
                                 proof {}",
                                bytes.len(),
                                decided.is_some()
                            ),
                            Message::StateFetch { cid, offset } =>
                                format!("state-fetch cid {cid} offset {offset}"),
                            Message::Abstaining { until } => format!("abstaining until {until}"),
                            Message::Request(r) => format!(
                                "request {:?} {} {}",
                                r.body.client, r.body.session, r.body.seq
                            ),
                            Message::Propose(p) => format!(
                                "propose cid {} of {} requests",
                                p.body.cid,
                                p.body.batch.requests.len()
                            ),
                            m => m.kind_name().to_string(),
                        }
                    );
                }
                // As the driver does: a request on its client's own connection is authenticated
                // by the channel, and remembered with the replica's other authenticated
                // requests (docs/design.md §5).
                let verdict = self
                    .verifier
                    .verify_run(
                        vec![(from, message)],
                        Some(&self.replicas[slot].verified_requests),
                        RequestAuth::Channel,
                    )
                    .pop()
                    .expect("one verdict per message");
                let verified = match verdict {
                    Ok(v) => v,
                    Err(rejection) => {
                        self.check_correct_sender_not_blamed(slot, from, &rejection)?;
                        self.replicas[slot].engine.count_rejection(&rejection);
                        *self.report.rejections.entry(rejection.name()).or_default() += 1;
                        if self.replicas[slot].correct && self.is_byzantine(from) {
                            *self
                                .report
                                .adversary_rejections
                                .entry(rejection.name())
                                .or_default() += 1;
                        }
                        return Ok(());
                    }
                };
                let now = self.now_ms;
                let output = self.replicas[slot].engine.on_message(now, verified);
                self.delivering_from = Some(from);
                let performed = self.perform(slot, output);
                self.delivering_from = None;
                performed?;
            }
            Node::Client(c) => {
                let (Peer::Replica(replica), Message::Reply(reply)) = (from, message) else {
                    return Err("client received something other than a reply".into());
                };
                if let Some(done) = self.clients[c].engine.on_reply(self.now_ms, replica, reply) {
                    // Correct clients in a run whose table never fills are never refused
                    // (issue 15: a refusal completes a request only at the reply quorum).
                    if done.status != smr_core::message::ReplyStatus::Executed {
                        return Err(format!(
                            "client {c} seq {} was refused: {:?}",
                            done.seq, done.status
                        ));
                    }
                    if done.seq == 0 {
                        // The session's open completed: the client starts its requests.
                        self.client_fill(c)?;
                        return Ok(());
                    }
                    let node = &mut self.clients[c];
                    if node.completed.insert(done.seq, done.result).is_some() {
                        return Err(format!("client {c} completed seq {} twice", done.seq));
                    }
                    let submitted_ms = node.submitted_at_ms[&done.seq];
                    let start_ms = self.liveness_start_ms(submitted_ms);
                    let elapsed_ms = self.now_ms.saturating_sub(start_ms);
                    let bound_ms = self.liveness_bound_ms(start_ms);
                    self.report.max_elapsed_after_gst_ms =
                        self.report.max_elapsed_after_gst_ms.max(elapsed_ms);
                    if elapsed_ms > bound_ms {
                        return Err(self.liveness_failure(c, done.seq, submitted_ms, "completed"));
                    }
                    self.report.completed_requests += 1;
                    self.client_fill(c)?;
                }
            }
        }
        Ok(())
    }

    /// A leader that ignores client 0: drops its requests, and STOPs and forwards that carry
    /// them.
    fn silenced(&self, from: Peer, message: &Message) -> bool {
        let victim = self.clients[0].engine.id();
        match message {
            Message::Request(r) => from == Peer::Client(victim) || r.body.client == victim,
            Message::Forward(rs) => rs.iter().any(|r| r.body.client == victim),
            Message::Stop(s) => s.body.pending.iter().any(|r| r.body.client == victim),
            _ => false,
        }
    }

    /// A Byzantine replica rewrites what it sends. Returns the message to send instead.
    fn tamper(&mut self, slot: usize, message: Message) -> Message {
        let node = &self.replicas[slot];
        match (self.opts.fault, message) {
            (Fault::ForgingLeader, Message::Propose(p)) if node.id == 0 => {
                let mut body = p.body.clone();
                let choice = self.rng.range(0, 3);
                if choice == 0 && !body.batch.requests.is_empty() {
                    // A forged request: the op changes under the client's signature.
                    body.batch.requests[0].body.op = b"FORGED-BY-LEADER".to_vec();
                } else if choice == 1 && !node.proposed.is_empty() {
                    // A replay of a batch that was (probably) executed already.
                    let i = self.rng.range(0, node.proposed.len() as u64 - 1) as usize;
                    body.batch = node.proposed[i].clone();
                }
                let signed = Signed::new(body, Some(node.signer.as_ref()));
                Message::Propose(signed)
            }
            (Fault::BadSyncLeader, Message::Sync(sync)) if node.id == 1 => {
                let mut body = sync.body.clone();
                match self.rng.range(0, 2) {
                    0 => {
                        body.proofs.pop();
                    }
                    1 => {
                        if let Some(sd) = body.proofs.first_mut() {
                            sd.body.prepared.push(PreparedProof {
                                cid: sd
                                    .body
                                    .last_decided
                                    .as_ref()
                                    .map_or(Cid::ZERO, |d| d.cid)
                                    .next(),
                                epoch: Regency::ZERO,
                                batch: Batch::default(),
                                writes: Vec::new(),
                            });
                        }
                    }
                    _ => {
                        for sd in &mut body.proofs {
                            sd.body.regency = sd.body.regency.next();
                        }
                    }
                }
                Message::Sync(Signed::new(body, Some(node.signer.as_ref())))
            }
            (
                Fault::LyingStateSender { .. },
                Message::StateInfo {
                    mut checkpoints,
                    voted_up_to,
                    executed,
                    for_nonce,
                    rejoin_nonce,
                },
            ) if node.id == self.opts.n as u32 - 1 => {
                // Half the time made-up digests; otherwise the true ones, and corrupt chunks.
                if self.rng.chance(0.5) {
                    for (_, digest) in &mut checkpoints {
                        *digest = Digest([self.rng.next_u64() as u8; 32]);
                    }
                }
                Message::StateInfo {
                    checkpoints,
                    voted_up_to,
                    executed,
                    for_nonce,
                    rejoin_nonce,
                }
            }
            (
                Fault::LyingStateSender { .. },
                Message::StateChunk {
                    cid,
                    offset,
                    total_len,
                    mut bytes,
                    decided,
                },
            ) if node.id == self.opts.n as u32 - 1 => {
                // Either the bytes are wrong, or (on the last chunk) the proof that the
                // checkpoint's cid was decided is withheld: both must count as a lie.
                let decided = if decided.is_some() && self.rng.chance(0.5) {
                    None
                } else {
                    if let Some(b) = bytes.first_mut() {
                        *b ^= 0x5a;
                    }
                    decided
                };
                Message::StateChunk {
                    cid,
                    offset,
                    total_len,
                    bytes,
                    decided,
                }
            }
            (_, message) => message,
        }
    }

    /// Performs an engine's output through the shared driver contract ([`runner::perform`]),
    /// with the checkers watching every record, message and execution; then checks the
    /// engine's invariants and reschedules its timer.
    fn perform(&mut self, slot: usize, output: Output) -> Result<(), String> {
        let now = self.now_ms;
        let mut host = SimHost { sim: self, slot };
        runner::perform(&mut host, now, output);
        // What service work freed by an fsync produced, in order.
        while !host.stopped() {
            let Some(done) = host.sim.replicas[slot].disk.service_done.pop_front() else {
                break;
            };
            let output = host.sim.replicas[slot].engine.on_service_done(now, done);
            runner::perform(&mut host, now, output);
        }
        if let Some(failure) = self.failure.take() {
            return Err(failure);
        }
        let node = &mut self.replicas[slot];
        if node.crashed {
            return Ok(());
        }
        node.engine.check_invariants();
        let next = node.engine.next_deadline_ms();
        if next != node.timer_at_ms {
            node.timer_at_ms = next;
            if let Some(deadline_ms) = next {
                self.schedule(
                    deadline_ms.max(self.now_ms),
                    Event::ReplicaTimer { slot, deadline_ms },
                );
            }
        }
        Ok(())
    }

    /// Starts `slot`'s fsync `number`: it covers every record written so far, and completes
    /// after the disk's latency.
    fn start_fsync(&mut self, slot: usize, number: u64) {
        let node = &mut self.replicas[slot];
        let (min_ms, max_ms) = node
            .fsync_ms
            .expect("only a disk with a latency syncs later");
        node.disk.fsync_covers = Some(node.stored.len());
        let incarnation = node.incarnation;
        self.report.fsyncs += 1;
        let at_ms = self.now_ms + self.disk_rng.range(min_ms, max_ms);
        self.schedule(
            at_ms,
            Event::FsyncDone {
                slot,
                incarnation,
                number,
            },
        );
    }

    /// `slot`'s fsync `number` completed: what it covers is durable, what waited for it goes,
    /// in order, and the next fsync starts if syncs were asked for meanwhile.
    fn fsync_done(&mut self, slot: usize, number: u64) -> Result<(), String> {
        let disk = &mut self.replicas[slot].disk;
        if let Some(covers) = disk.fsync_covers.take() {
            disk.durable = disk.durable.max(covers);
        }
        let (freed, next) = disk.commit.completed(number);
        let held = freed.len() + disk.commit.held();
        self.report.max_held_actions = self.report.max_held_actions.max(held);
        SimHost { sim: self, slot }.release(freed);
        if let Some(next) = next {
            if !self.replicas[slot].crashed {
                self.start_fsync(slot, next);
            }
        }
        self.perform(slot, Output::default())
    }

    /// `slot` crashes. Its disk keeps every record a completed fsync (or a checkpoint) covered
    /// and a seeded prefix of those written after it: none, all, or some (the log's recovery
    /// cuts at the first torn record). What its group commit held is lost with it, as is what
    /// its service produced and the engine had not taken. A vote lost with its record was never
    /// sent, and the checker of appended votes forgets it; its regency is what the disk says.
    fn crash(&mut self, slot: usize) {
        let node = &mut self.replicas[slot];
        node.crashed = true;
        if node.fsync_ms.is_none() {
            return;
        }
        let durable = node.disk.durable.min(node.stored.len());
        let written = (node.stored.len() - durable) as u64;
        let kept = match self.disk_rng.range(0, 2) {
            0 => 0,
            1 => written,
            _ => self.disk_rng.range(0, written),
        };
        let lost = node.stored.split_off(durable + kept as usize);
        self.report.records_lost += lost.len() as u64;
        self.report.held_actions_lost += node.disk.commit.held() as u64;
        node.disk = Disk::default();
        node.regency = node
            .stored
            .iter()
            .filter_map(|record| match record {
                PersistRecord::Regency(regency) => Some(*regency),
                _ => None,
            })
            .max()
            .unwrap_or(Regency::ZERO);
        if std::env::var("SMR_SIM_TRACE").is_ok() {
            eprintln!(
                "t={} replica {} crashes: {durable} records durable, {kept} of {written} written after kept",
                self.now_ms, node.id
            );
        }
        if !node.correct {
            return;
        }
        let r = node.id;
        let key = |v: &smr_core::message::Vote| {
            let phase = match v.kind {
                VoteKind::Write => 0,
                VoteKind::Accept => 1,
            };
            (r, v.cid, v.regency, phase)
        };
        let surviving: BTreeSet<_> = node
            .stored
            .iter()
            .filter_map(|record| match record {
                PersistRecord::Vote(v) => Some(key(v)),
                _ => None,
            })
            .collect();
        for record in &lost {
            if let PersistRecord::Vote(v) = record {
                if !surviving.contains(&key(v)) {
                    self.votes.remove(&key(v));
                }
            }
        }
    }

    /// Appends to a replica's "disk". A checkpoint compacts it exactly as the driver's
    /// write-ahead log does: the checkpoint, then what `Engine::durable_records_after` says
    /// must survive it.
    fn store(&mut self, slot: usize, record: PersistRecord) {
        if let PersistRecord::Checkpoint(c) = &record {
            self.max_checkpoint_bytes = self.max_checkpoint_bytes.max(c.data.len() as u64);
        }
        let node = &mut self.replicas[slot];
        if let PersistRecord::Checkpoint(c) = &record {
            let after = node.engine.durable_records_after(c.cid);
            node.stored = std::iter::once(record).chain(after).collect();
        } else {
            node.stored.push(record);
        }
    }

    fn client_fill(&mut self, c: usize) -> Result<(), String> {
        let Some(session) = self.clients[c].engine.session() else {
            // A session first (docs/design.md §3.7, "Sessions"): its open request, once.
            let node = &mut self.clients[c];
            if node.remaining > 0 && !node.engine.opening() {
                let actions = node.engine.open(self.now_ms);
                self.client_actions(c, actions);
                self.arm_client_timer(c);
            }
            return Ok(());
        };
        loop {
            let node = &mut self.clients[c];
            if node.remaining == 0 {
                break;
            }
            if let Fault::QuietRejoinThenCrash {
                first_requests,
                crash_at_ms,
                ..
            } = self.opts.fault
            {
                if self.now_ms < crash_at_ms && node.submitted.len() >= first_requests {
                    break;
                }
            }
            let op = format!("client{c}-op{}", node.submitted.len() + 1).into_bytes();
            let (seq, actions) =
                match node
                    .engine
                    .submit(self.now_ms, RequestKind::Ordered, op.clone())
                {
                    Ok(x) => x,
                    Err(_) => break,
                };
            node.remaining -= 1;
            node.submitted.insert(seq, op.clone());
            node.submitted_at_ms.insert(seq, self.now_ms);
            let id = RequestId {
                client: node.engine.id(),
                session,
                seq,
            };
            self.legitimately_signed.entry(id).or_default().insert(op);
            self.client_actions(c, actions);
        }
        self.arm_client_timer(c);
        Ok(())
    }

    fn arm_client_timer(&mut self, c: usize) {
        let Some(deadline) = self.clients[c].engine.next_deadline_ms() else {
            return;
        };
        let node = &mut self.clients[c];
        if node.timer_at_ms.is_some_and(|t| t <= deadline) {
            return;
        }
        node.timer_at_ms = Some(deadline);
        self.schedule(deadline, Event::ClientTimer { client: c });
    }

    fn client_actions(&mut self, c: usize, actions: Vec<ClientAction>) {
        let from = Peer::Client(self.clients[c].engine.id());
        if let Some(adversary) = &mut self.hunter_client {
            // The Byzantine client eavesdrops on honest clients' requests, to replay them.
            for action in &actions {
                match action {
                    ClientAction::Broadcast(m) | ClientAction::Send { message: m, .. } => {
                        adversary.observe(m)
                    }
                }
            }
        }
        for action in actions {
            match action {
                ClientAction::Broadcast(message) => {
                    for r in 0..self.opts.n as u32 {
                        self.send(Node::Client(c), from, Peer::Replica(r), &message);
                    }
                }
                ClientAction::Send { to, message } => {
                    self.send(Node::Client(c), from, Peer::Replica(to), &message);
                }
            }
        }
    }

    /// Scripted Byzantine behaviour that is not a reaction to a message: the Byzantine client's
    /// requests, and the STOP spammer's STOPs.
    fn byzantine_step(&mut self) {
        // The hunting adversaries never stop: a Byzantine peer does not heal with the network.
        let hunting = self.hunter.is_some() || self.hunter_client.is_some();
        if self.now_ms <= self.opts.heal_at_ms + 4000 {
            self.scripted_byzantine_step();
        } else if !hunting {
            return;
        }
        self.hunter_step();
        self.hunter_client_step();
        let next = self.now_ms + self.rng.range(5, 60);
        self.schedule(next, Event::ByzantineStep);
    }

    /// A correct replica never refuses, as misbehaviour, what another correct replica sent: a
    /// refusal of that kind (a malformed, oversized or badly signed message, a certificate that
    /// proves nothing, an equivocation) means the sender built a message its peers cannot take,
    /// which can cost a quorum (a STOPDATA a new leader refuses stalls the leader change).
    /// Refusals for timing (a regency or window the receiver is not in yet, a budget) are fine.
    fn check_correct_sender_not_blamed(
        &mut self,
        slot: usize,
        from: Peer,
        rejection: &smr_core::Rejection,
    ) -> Result<(), String> {
        use smr_core::Rejection as R;
        let blames_sender = matches!(
            rejection,
            R::Malformed(_)
                | R::BadSignature { .. }
                | R::MissingSignature
                | R::UnknownSender
                | R::SenderMismatch
                | R::Oversize(_)
                | R::Equivocation { .. }
                | R::BadCertificate(_)
        );
        if blames_sender
            && matches!(from, Peer::Replica(_))
            && self.replicas[slot].correct
            && !self.is_byzantine(from)
        {
            return Err(format!(
                "correct replica {} refused a message of correct {from:?} at t={}: {rejection}",
                self.replicas[slot].id, self.now_ms
            ));
        }
        Ok(())
    }

    /// Whether messages from `from` come from a Byzantine peer: the hunting replica (in BFT),
    /// a replica a scripted fault makes Byzantine, or the Byzantine client.
    fn is_byzantine(&self, from: Peer) -> bool {
        match from {
            Peer::Replica(r) => self
                .replicas
                .iter()
                .any(|node| node.id == r && !node.correct),
            Peer::Client(k) => !self.client_index.contains_key(&k),
        }
    }

    /// One step of the hunting replica: what [`Adversary::replica_step`] builds (in BFT), or a
    /// replay of one of its own old messages (in CFT, where that is all a replica may do).
    fn hunter_step(&mut self) {
        let Some((slot, mut adversary)) = self.hunter.take() else {
            return;
        };
        let node = &self.replicas[slot];
        if !node.crashed {
            let id = node.id;
            let view = View {
                n: self.opts.n as u32,
                cid: node.engine.last_executed(),
                regency: node.engine.regency(),
                max_op_bytes: limits().max_op_bytes,
            };
            let shots = if self.opts.mode == Mode::Bft {
                adversary.replica_step(&mut self.rng, view, id)
            } else {
                let replay = adversary.replay(&mut self.rng);
                replay
                    .map(|message| {
                        adversary.count(&message);
                        Shot { message, to: None }
                    })
                    .into_iter()
                    .collect()
            };
            let from = Peer::Replica(id);
            for shot in shots {
                let to = shot
                    .to
                    .unwrap_or_else(|| (0..self.opts.n as u32).filter(|r| *r != id).collect());
                for r in to {
                    self.send(Node::Replica(slot), from, Peer::Replica(r), &shot.message);
                }
            }
        }
        self.hunter = Some((slot, adversary));
    }

    /// One step of the hunting client ([`Adversary::client_step`]). Every request it signs in
    /// its own name is one it "really" signed, for the validity checker.
    fn hunter_client_step(&mut self) {
        let Some(mut adversary) = self.hunter_client.take() else {
            return;
        };
        let view = View {
            n: self.opts.n as u32,
            cid: self
                .decided
                .keys()
                .next_back()
                .copied()
                .unwrap_or(Cid::ZERO),
            regency: Regency::ZERO,
            max_op_bytes: limits().max_op_bytes,
        };
        let me = adversary.me();
        let shots = adversary.client_step(&mut self.rng, view);
        for shot in shots {
            for request in requests_in(&shot.message) {
                if request.body.client == me {
                    self.legitimately_signed
                        .entry(request.id())
                        .or_default()
                        .insert(request.body.op.clone());
                }
            }
            let to = shot.to.unwrap_or_else(|| (0..self.opts.n as u32).collect());
            for r in to {
                let frame = codec::encode(&shot.message);
                self.deliver_after_a_delay(Node::Replica(r as usize), Peer::Client(me), frame);
            }
        }
        self.hunter_client = Some(adversary);
    }

    /// Example 2 of issue 12: the leader tells every follower it holds a checkpoint at cid
    /// 1,000,000 and has voted up to nothing, every `period_ms`.
    fn state_info_spam(&mut self) {
        let Fault::StateInfoSpam { period_ms } = self.opts.fault else {
            return;
        };
        let message = Message::StateInfo {
            checkpoints: vec![(Cid(1_000_000), Digest([0xab; 32]))],
            voted_up_to: Cid::ZERO,
            executed: None,
            for_nonce: 0,
            rejoin_nonce: 0,
        };
        for r in 1..self.opts.n as u32 {
            self.send(
                Node::Replica(0),
                Peer::Replica(0),
                Peer::Replica(r),
                &message,
            );
        }
        self.schedule(self.now_ms + period_ms, Event::Spam);
    }

    /// The scripted Byzantine behaviour, until a while after the heal.
    fn scripted_byzantine_step(&mut self) {
        if self.opts.fault == Fault::StopSpammer {
            let slot = self.opts.n - 1;
            let node = &self.replicas[slot];
            let regency = node.engine.regency().saturating_add(self.rng.range(1, 50));
            let stop = Signed::new(
                Stop {
                    replica: node.id,
                    regency,
                    from_regency: node.engine.regency(),
                    pending: Vec::new(),
                },
                Some(node.signer.as_ref()),
            );
            let from = Peer::Replica(node.id);
            for j in 0..self.opts.n as u32 - 1 {
                self.send(
                    Node::Replica(slot),
                    from,
                    Peer::Replica(j),
                    &Message::Stop(stop.clone()),
                );
            }
        }
        if self.byzantine.is_some() {
            self.byzantine_client_step();
        }
        if self.split.is_some() {
            self.split_client_step();
        }
    }

    /// The splitting Byzantine client ([`SplitSignatures`]): a new request to every replica,
    /// a good copy to some and a bad one to the others, at most two of its requests
    /// unexecuted at a time.
    fn split_client_step(&mut self) {
        let (Some((key, seq)), Some(split)) = (self.split.clone(), self.opts.split_client) else {
            return;
        };
        let unexecuted = self
            .split_requests
            .values()
            .filter(|r| r.good_somewhere && r.executed_ms.is_none())
            .count();
        if unexecuted >= 2 {
            return;
        }
        let me = key.public_key();
        let signing = self.opts.mode == Mode::Bft;
        // Its session first: a good open to every replica (again every retry timeout until
        // it executes); the session number is read from a correct replica's table.
        let open = Request::new(
            RequestBody {
                client: me,
                session: smr_core::message::OPEN_SESSION,
                seq: smr_core::clients::SESSION_NUMBER_LIMIT,
                kind: RequestKind::Ordered,
                op: Vec::new(),
            },
            signing.then_some(key.as_ref()),
        );
        let session =
            self.live_correct()
                .find_map(|r| match r.engine.client_table().status(&open.id()) {
                    smr_core::clients::RequestStatus::Opened(session) => Some(session),
                    _ => None,
                });
        let Some(session) = session else {
            if self
                .split_open_sent_ms
                .is_none_or(|t| self.now_ms >= t + 500)
            {
                self.split_open_sent_ms = Some(self.now_ms);
                let frame = codec::encode(&Message::Request(open));
                for slot in 0..self.replicas.len() {
                    self.deliver_after_a_delay(
                        Node::Replica(slot),
                        Peer::Client(me),
                        frame.clone(),
                    );
                }
            }
            return;
        };
        let body = RequestBody {
            client: me,
            session,
            seq,
            kind: RequestKind::Ordered,
            op: format!("split-op{seq}").into_bytes(),
        };
        let good = Request::new(body, signing.then_some(key.as_ref()));
        let mut bad = good.clone();
        if signing {
            // Its own signature of another request: well-formed, and wrong for this one.
            let mut other = good.body.clone();
            other.op = b"another op".to_vec();
            bad.signature = Request::new(other, Some(key.as_ref())).signature;
        }
        // The client sent it (on its own connection), whatever signatures it put on it.
        self.legitimately_signed
            .entry(good.id())
            .or_default()
            .insert(good.body.op.clone());
        let good_somewhere = (0..self.opts.n as u32).any(|r| split.good_at(r));
        self.split_requests.insert(
            good.id(),
            SplitRequest {
                sent_ms: self.now_ms,
                good_somewhere,
                executed_ms: None,
            },
        );
        for slot in 0..self.replicas.len() {
            let copy = if split.good_at(self.replicas[slot].id) {
                &good
            } else {
                &bad
            };
            let frame = codec::encode(&Message::Request(copy.clone()));
            self.deliver_after_a_delay(Node::Replica(slot), Peer::Client(me), frame);
        }
        self.split = Some((key, seq + 1));
    }

    /// How long a split client's request with a good copy somewhere may take to execute: a
    /// follower's request timeout (it forwards its verified copy to a leader that dropped a
    /// bad one) and a few message delays; a STOP would take a second timeout.
    fn split_bound_ms(&self) -> u64 {
        timeouts().request_timeout_ms + 20 * self.delay_bound_ms()
    }

    /// The split client's checks (docs/design.md §5): its requests with a good copy somewhere
    /// execute within [`Sim::split_bound_ms`] (BFT; in CFT, where nothing checks a
    /// signature, every request does), a request with no good copy never executes (BFT: a
    /// correct leader never proposes it), and the correct leader is never replaced.
    fn check_split_client(&self) -> Result<(), String> {
        let Some(split) = self.opts.split_client else {
            return Ok(());
        };
        let bft = self.opts.mode == Mode::Bft;
        for (id, r) in &self.split_requests {
            let must_execute = r.good_somewhere || !bft;
            match r.executed_ms {
                Some(_) if !must_execute => {
                    return Err(format!(
                        "{split:?}: {id:?}, badly signed at every replica, executed: a correct leader proposed a bad signature"
                    ))
                }
                Some(t) if t > r.sent_ms + self.split_bound_ms() => {
                    return Err(format!(
                        "{split:?}: {id:?} sent at {} ms executed at {t} ms, beyond the bound of {} ms",
                        r.sent_ms,
                        self.split_bound_ms()
                    ))
                }
                None if must_execute && self.now_ms > r.sent_ms + self.split_bound_ms() => {
                    return Err(format!(
                        "{split:?}: {id:?} sent at {} ms not executed by {} ms",
                        r.sent_ms, self.now_ms
                    ))
                }
                _ => {}
            }
        }
        if let Some(r) = self
            .live_correct()
            .find(|r| r.engine.regency() != Regency::ZERO)
        {
            return Err(format!(
                "{split:?}: the correct leader was replaced: replica {} is in regency {}",
                r.id,
                r.engine.regency()
            ));
        }
        Ok(())
    }

    /// A scripted Byzantine client: forged signatures, impersonation, replayed seqs with new
    /// ops, and oversize ops, interleaved with a few valid requests of its own.
    fn byzantine_client_step(&mut self) {
        let Some((key, seq)) = self.byzantine.clone() else {
            return;
        };
        let me = key.public_key();
        let signing = self.opts.mode == Mode::Bft;
        let choice = self.rng.range(0, 4);
        let victim = self.clients[self.rng.range(0, self.clients.len() as u64 - 1) as usize]
            .engine
            .id();
        let (request, legit) = match choice {
            // A valid request of its own, later replayed with another op: an open request
            // (every one opens a session of its key), or a request in session 1 (opened by
            // whichever client's open executed first, so refused unless that was its own).
            0 | 1 => {
                let op = format!("byz-op{seq}-{}", self.rng.next_u64() % 3).into_bytes();
                let seq = if choice == 0 {
                    seq
                } else {
                    seq.saturating_sub(1).max(1)
                };
                let (session, seq) = if self.rng.chance(0.5) {
                    (
                        smr_core::message::OPEN_SESSION,
                        smr_core::clients::SESSION_NUMBER_LIMIT | seq,
                    )
                } else {
                    (1, seq)
                };
                let body = RequestBody {
                    client: me,
                    session,
                    seq,
                    kind: RequestKind::Ordered,
                    op,
                };
                (Request::new(body, Some(key.as_ref())), true)
            }
            // A forged signature (BFT) or a request naming another client (both modes).
            2 => {
                let body = RequestBody {
                    client: if signing { me } else { victim },
                    session: 1,
                    seq: seq + 1_000_000,
                    kind: RequestKind::Ordered,
                    op: b"FORGED".to_vec(),
                };
                let mut r = Request::new(body, Some(key.as_ref()));
                if signing {
                    r.signature = Some(Signature([7; 64]));
                }
                // In BFT it is the client's own request on its own connection: sent by it,
                // so allowed to execute should a Byzantine leader propose it to followers
                // holding this copy (docs/design.md §5); a correct leader drops it.
                (r, signing)
            }
            3 => {
                let body = RequestBody {
                    client: victim,
                    session: 1,
                    seq: 1,
                    kind: RequestKind::Ordered,
                    op: b"FORGED-IMPERSONATION".to_vec(),
                };
                (Request::new(body, Some(key.as_ref())), false)
            }
            _ => {
                let body = RequestBody {
                    client: me,
                    session: 1,
                    seq,
                    kind: RequestKind::Ordered,
                    op: vec![0xAB; limits().max_op_bytes + 1],
                };
                (Request::new(body, Some(key.as_ref())), false)
            }
        };
        if legit {
            self.legitimately_signed
                .entry(request.id())
                .or_default()
                .insert(request.body.op.clone());
        }
        let message = Message::Request(request);
        // The Byzantine client is not in the client index: it sends straight into the network.
        for slot in 0..self.replicas.len() {
            if self.rng.chance(0.7) {
                let frame = codec::encode(&message);
                self.deliver_after_a_delay(Node::Replica(slot), Peer::Client(me), frame);
            }
        }
        if choice == 0 {
            self.byzantine = Some((key, seq + 1));
        }
    }

    /// When the liveness bound starts counting for a request submitted at `submitted_ms`: at
    /// its submission or at GST (the heal, the end of the last isolation, the last crash or
    /// restart), whichever is later.
    fn liveness_start_ms(&self, submitted_ms: u64) -> u64 {
        let isolations_end = self.isolated.iter().map(|(_, _, end)| *end).max();
        submitted_ms
            .max(self.opts.heal_at_ms)
            .max(self.last_fault_ms)
            .max(isolations_end.unwrap_or(0))
    }

    /// The longest a correct replica's message takes to arrive after GST (Δ): the network's
    /// delay, and with a disk that syncs late ([`SimOptions::fsync_ms`]) two fsyncs, the one
    /// running when it was built and the next, which covers the records it waits for.
    fn delay_bound_ms(&self) -> u64 {
        let fsync_ms = self.opts.fsync_ms.map_or(0, |(_, max_ms)| max_ms);
        self.opts.max_delay_ms + 2 * fsync_ms
    }

    /// [`liveness_bound_ms`] for this run, counted from `start_ms`.
    fn liveness_bound_ms(&self, start_ms: u64) -> u64 {
        liveness_bound_ms(
            &timeouts(),
            &limits(),
            CLIENT_RETRY_MS,
            self.delay_bound_ms(),
            self.opts.f as u64,
            self.max_checkpoint_bytes,
            start_ms,
        )
    }

    /// The failure for a request of client `c` that was not done within the bound.
    fn liveness_failure(&self, c: usize, seq: u64, submitted_ms: u64, what: &str) -> String {
        let start_ms = self.liveness_start_ms(submitted_ms);
        let regencies: Vec<String> = self
            .replicas
            .iter()
            .map(|r| format!("{}:{}", r.id, r.engine.regency()))
            .collect();
        format!(
            "liveness bound exceeded: client {c}'s request seq {seq}, submitted at t={submitted_ms} ms \
             (counted from t={start_ms} ms, after GST), {what} at t={} ms: {} ms elapsed, bound {} ms; \
             regencies {}",
            self.now_ms,
            self.now_ms.saturating_sub(start_ms),
            self.liveness_bound_ms(start_ms),
            regencies.join(" ")
        )
    }

    /// Fails the run as soon as one of client `c`'s requests is older than the bound.
    fn check_liveness_bound(&self, c: usize) -> Result<(), String> {
        let node = &self.clients[c];
        for (seq, submitted_ms) in &node.submitted_at_ms {
            if node.completed.contains_key(seq) {
                continue;
            }
            let start_ms = self.liveness_start_ms(*submitted_ms);
            if self.now_ms > start_ms + self.liveness_bound_ms(start_ms) {
                return Err(self.liveness_failure(c, *seq, *submitted_ms, "still not done"));
            }
        }
        Ok(())
    }

    fn final_checks(&mut self) -> Result<(), String> {
        for c in 0..self.clients.len() {
            self.check_liveness_bound(c)?;
        }
        self.check_split_client()?;
        self.report.split_requests = (
            self.split_requests.len(),
            self.split_requests
                .values()
                .filter(|r| r.executed_ms.is_some())
                .count(),
        );
        // Liveness after heal: every honest request completed.
        if !self.all_done() {
            let missing: Vec<String> = self
                .clients
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    format!(
                        "client {i}: {} left, {} outstanding",
                        c.remaining,
                        c.engine.outstanding()
                    )
                })
                .collect();
            let regencies: Vec<String> = self
                .replicas
                .iter()
                .map(|r| {
                    format!(
                        "{}:{:?}@{}/{}",
                        r.id,
                        r.engine.phase(),
                        r.engine.regency(),
                        r.engine.last_executed()
                    )
                })
                .collect();
            return Err(format!(
                "liveness violated: not every request completed by t={} ms ({}); replicas {}",
                self.now_ms,
                missing.join("; "),
                regencies.join(" ")
            ));
        }
        // Every correct replica executed the same requests at every cid (checked as they ran);
        // the cids form one gap-free sequence in which no request appears twice.
        let mut longest = Vec::new();
        for (i, (cid, ids)) in self.executed_by_cid.iter().enumerate() {
            if *cid != Cid(i as u64 + 1) {
                return Err(format!("no correct replica executed cid {}", i + 1));
            }
            longest.extend(ids.iter().copied());
        }
        let distinct: BTreeSet<&RequestId> = longest.iter().collect();
        if distinct.len() != longest.len() {
            return Err("a request executed twice in the agreed sequence".into());
        }
        if !self.replicas_converged() {
            let cids: Vec<Cid> = self
                .live_correct()
                .map(|r| r.engine.last_executed())
                .collect();
            return Err(format!(
                "replicas did not converge after the heal: last executed cids {cids:?}"
            ));
        }
        let digests: BTreeSet<Digest> = self
            .live_correct()
            .map(|r| r.service.state_digest())
            .collect();
        if digests.len() != 1 {
            return Err("correct replicas have different state digests".into());
        }
        // Each acknowledged result is the position at which that request executed: nothing
        // acknowledged was lost or executed elsewhere in the order.
        let position: BTreeMap<RequestId, u64> = longest
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, i as u64 + 1))
            .collect();
        for c in &self.clients {
            for (seq, result) in &c.completed {
                let id = RequestId {
                    client: c.engine.id(),
                    session: c
                        .engine
                        .session()
                        .ok_or("a client completed without a session")?,
                    seq: *seq,
                };
                let Some(pos) = position.get(&id) else {
                    return Err(format!("acknowledged request {id:?} was never executed"));
                };
                if result[..] != pos.to_le_bytes() {
                    return Err(format!(
                        "client got a result for {id:?} that does not match its execution"
                    ));
                }
            }
        }
        self.report.decided = self.decided.clone();
        self.report.executed_per_replica = self.replicas.iter().map(|r| r.executed_count).collect();
        self.report.state_transfers = self
            .replicas
            .iter()
            .map(|r| r.engine.stats().state_transfers)
            .sum();
        self.report.lying_state_sources = self
            .replicas
            .iter()
            .map(|r| r.engine.stats().lying_state_sources)
            .sum();
        self.report.max_log_len = self
            .replicas
            .iter()
            .filter(|r| r.correct)
            .map(|r| r.max_log_len)
            .max()
            .unwrap_or(0);
        self.report.checkpoint_period = limits().checkpoint_period;
        self.report.regencies = self.live_correct().map(|r| r.engine.regency()).collect();
        Ok(())
    }
}

/// `engine` as the driver sets it up: direct requests reach it authenticated by their channel,
/// and it verifies their signatures where it relays them (docs/design.md §5).
fn channel_engine(mut engine: Engine, verifier: &InboundVerifier) -> Engine {
    engine.set_request_verifier(verifier.signatures.clone());
    engine
}

/// Runs one seed and turns a panic inside the engine into a failure naming the seed.
pub fn run_seed(opts: SimOptions) -> Result<SimReport, String> {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Sim::new(opts).run()));
    match result {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("panicked: {msg}"))
        }
    }
}

/// The simulator's side of the driver contract for one replica: records go to its "disk" and
/// through the safety checkers, messages through the Byzantine tampering and the faulty
/// network, and the service runs inline.
struct SimHost<'a> {
    sim: &'a mut Sim,
    slot: usize,
}

impl SimHost<'_> {
    /// Performs actions freed by an fsync (or a checkpoint), in order; what freed service work
    /// produces is fed to the engine once the output being performed is done ([`Sim::perform`]).
    fn release(&mut self, freed: Vec<Held>) {
        for action in freed {
            if self.stopped() {
                return;
            }
            match action {
                Held::Send { to, message } => self.send_out(&to, message),
                Held::Service(work) => {
                    if let Some(done) = self.run_service(work) {
                        self.sim.replicas[self.slot]
                            .disk
                            .service_done
                            .push_back(done);
                    }
                }
            }
        }
    }

    /// Checks a vote leaving a correct replica: it never sends two different votes in one cid,
    /// regency and phase, across crashes and wipes; and with a disk that syncs late, the vote's
    /// record is durable when it leaves (the group commit's promise), or something durable
    /// stands for it: a decision of the same value, a checkpoint at or past its cid, or a later
    /// regency (a vote held across a leader change and freed by a checkpoint, whose compaction
    /// keeps only the current regency's votes).
    fn check_sent_vote(&mut self, message: &Message) {
        let slot = self.slot;
        let node = &self.sim.replicas[slot];
        if !node.correct {
            return;
        }
        let r = node.id;
        let (cid, regency, kind, digest) = match message {
            Message::Write(v) => (v.body.cid, v.body.regency, VoteKind::Write, v.body.digest),
            Message::Accept(v) => (v.body.cid, v.body.regency, VoteKind::Accept, v.body.digest),
            // A CFT leader's proposal is its acceptance.
            Message::Propose(p) if self.sim.opts.mode == Mode::Cft => (
                p.body.cid,
                p.body.regency,
                VoteKind::Accept,
                p.body.batch.digest(),
            ),
            _ => return,
        };
        let phase = match kind {
            VoteKind::Write => 0,
            VoteKind::Accept => 1,
        };
        if node.fsync_ms.is_some() {
            let durable = &node.stored[..node.disk.durable.min(node.stored.len())];
            let on_disk = durable.iter().any(|record| match record {
                PersistRecord::Vote(v) => {
                    v.cid == cid && v.regency == regency && v.kind == kind && v.digest == digest
                }
                // A decision of the same value stands for it (compaction keeps the decision
                // and may drop the vote).
                PersistRecord::Decided(d) => d.cid == cid && d.batch.digest() == digest,
                PersistRecord::Checkpoint(c) => c.cid >= cid,
                // So does a later regency: the replica never votes in this one again
                // (compaction keeps only the votes of the current regency).
                PersistRecord::Regency(later) => *later > regency,
                _ => false,
            });
            if !on_disk {
                self.fail(format!(
                    "replica {r} sent a {kind:?} vote in cid {cid} regency {regency} before its \
                     record was durable"
                ));
                return;
            }
        }
        if let Some(prev) = self.sim.sent_votes.insert((r, cid, regency, phase), digest) {
            if prev != digest {
                self.fail(format!(
                    "replica {r} sent two different {kind:?} votes in cid {cid} regency {regency}"
                ));
            }
        }
    }

    fn send_out(&mut self, to: &[Peer], message: Message) {
        let slot = self.slot;
        let r = self.sim.replicas[slot].id;
        let from = Peer::Replica(r);
        let me = Node::Replica(slot);
        self.check_sent_vote(&message);
        if let Message::Stop(s) = &message {
            if s.body.replica == r && self.sim.report.first_stop_ms.is_none() {
                self.sim.report.first_stop_ms = Some(self.sim.now_ms);
            }
        }
        if std::env::var("SMR_SIM_TRACE").is_ok() {
            if let Message::Stop(s) = &message {
                let pending: Vec<(u8, u64)> = s
                    .body
                    .pending
                    .iter()
                    .map(|q| (q.body.client.0[0], q.body.seq))
                    .collect();
                eprintln!(
                    "t={} replica {r} sends STOP {:?} at cid {} pending {pending:?}",
                    self.sim.now_ms,
                    (s.body.from_regency, s.body.regency),
                    self.sim.replicas[slot].engine.last_executed()
                );
            }
        }
        if let Message::Propose(p) = &message {
            self.sim.replicas[slot].proposed.push(p.body.batch.clone());
        }
        if self.sim.hunter.as_ref().is_some_and(|(s, _)| *s == slot) {
            self.hunter_send(to, message);
            return;
        }
        let message = self.sim.tamper(slot, message);
        let crash_now =
            self.sim.replicas[slot].crash_after_propose && matches!(message, Message::Propose(_));
        for peer in to {
            // A leader crashing mid-broadcast reaches only some followers.
            if crash_now && self.sim.rng.chance(0.5) {
                continue;
            }
            self.sim.send(me, from, *peer, &message);
        }
        if crash_now {
            self.sim.crash(slot);
        }
    }

    fn run_service(&mut self, work: ServiceWork) -> Option<ServiceDone> {
        let slot = self.slot;
        let r = self.sim.replicas[slot].id;
        let correct = self.sim.replicas[slot].correct;
        match work {
            ServiceWork::Execute { cid, items } => {
                let mut results = Vec::with_capacity(items.len());
                let mut ids = Vec::with_capacity(items.len());
                for item in items {
                    if correct {
                        if let Some(r) = self.sim.split_requests.get_mut(&item.id) {
                            r.executed_ms.get_or_insert(self.sim.now_ms);
                        }
                    }
                    let signed = self.sim.legitimately_signed.get(&item.id);
                    if !signed.is_some_and(|ops| ops.contains(&item.op)) {
                        self.fail(format!("validity violated: replica {r} executed an op its client never signed: {:?}", item.id));
                        return None;
                    }
                    ids.push(item.id);
                    results.push(self.sim.replicas[slot].service.execute(&item.op));
                }
                let node = &mut self.sim.replicas[slot];
                node.executed_count += ids.len();
                node.max_log_len = node.max_log_len.max(node.engine.log_len());
                if std::env::var("SMR_SIM_TRACE").is_ok()
                    && node.engine.log_len() >= 2 * limits().checkpoint_period as usize
                {
                    eprintln!(
                        "t={} replica {r} cid {cid} log {} checkpoint {}",
                        self.sim.now_ms,
                        node.engine.log_len(),
                        node.engine.last_checkpoint()
                    );
                }
                if correct {
                    match self.sim.executed_by_cid.get(&cid) {
                        Some(first) if *first != ids => {
                            self.fail(format!(
                                "replica {r} executed a different sequence at cid {cid}"
                            ));
                            return None;
                        }
                        Some(_) => {}
                        None => {
                            self.sim.executed_by_cid.insert(cid, ids);
                        }
                    }
                }
                let done = ServiceDone::Executed { cid, results };
                if let Some((min_ms, max_ms)) = self.sim.opts.slow_service_ms {
                    let at_ms = self.sim.now_ms + self.sim.service_rng.range(min_ms, max_ms);
                    let incarnation = self.sim.replicas[slot].incarnation;
                    self.sim.schedule(
                        at_ms,
                        Event::ServiceDone {
                            slot,
                            incarnation,
                            done,
                        },
                    );
                    return None;
                }
                Some(done)
            }
            ServiceWork::TakeSnapshot { cid } => Some(ServiceDone::Snapshot {
                cid,
                snapshot: self.sim.replicas[slot].service.snapshot(),
            }),
            ServiceWork::Restore { snapshot, .. } => {
                if let Err(e) = self.sim.replicas[slot].service.restore(&snapshot) {
                    self.fail(format!("replica {r} cannot restore a checkpoint: {e}"));
                }
                None
            }
            ServiceWork::Query { id, op } => Some(ServiceDone::Queried {
                id,
                result: self.sim.replicas[slot].service.query(&op),
            }),
        }
    }

    fn fail(&mut self, failure: String) {
        self.sim.failure.get_or_insert(failure);
    }

    /// What the hunting replica does with its honest engine's output. It remembers every
    /// message, to replay it later. In BFT it drops a per-seed share of them and sends some of
    /// its PROPOSEs in two versions, each to part of the followers.
    fn hunter_send(&mut self, to: &[Peer], message: Message) {
        let slot = self.slot;
        let sim = &mut *self.sim;
        let from = Peer::Replica(sim.replicas[slot].id);
        let me = Node::Replica(slot);
        if let Some((_, adversary)) = &mut sim.hunter {
            adversary.observe(&message);
        }
        if sim.opts.mode == Mode::Bft {
            if sim.rng.chance(sim.hunter_drop) {
                return;
            }
            if let Message::Propose(p) = &message {
                if sim.rng.chance(0.25) {
                    let mut body = p.body.clone();
                    body.batch.requests.reverse();
                    if body.batch.requests.len() < 2 {
                        body.batch = Batch::default();
                    }
                    let twin = Message::Propose(Signed::new(
                        body,
                        Some(sim.replicas[slot].signer.as_ref()),
                    ));
                    for peer in to {
                        let m = if sim.rng.chance(0.5) { &twin } else { &message };
                        sim.send(me, from, *peer, m);
                    }
                    return;
                }
            }
        }
        for peer in to {
            sim.send(me, from, *peer, &message);
        }
    }
}

impl Host for SimHost<'_> {
    fn engine(&mut self) -> &mut Engine {
        &mut self.sim.replicas[self.slot].engine
    }

    fn append(&mut self, record: PersistRecord) {
        let slot = self.slot;
        let r = self.sim.replicas[slot].id;
        let correct = self.sim.replicas[slot].correct;
        match &record {
            PersistRecord::Vote(v) => {
                let kind = match v.kind {
                    VoteKind::Write => 0,
                    VoteKind::Accept => 1,
                };
                if correct {
                    if let Some(prev) = self.sim.votes.insert((r, v.cid, v.regency, kind), v.digest)
                    {
                        if prev != v.digest {
                            self.fail(format!(
                                "replica {r} voted twice in cid {} regency {}",
                                v.cid, v.regency
                            ));
                        }
                    }
                }
            }
            PersistRecord::Decided(decision) => {
                let cid = decision.cid;
                let digest = decision.batch.digest();
                if std::env::var("SMR_SIM_TRACE").is_ok() {
                    let regency = decision.certificate.first().map(|v| v.body.regency);
                    let signers: Vec<u32> = decision
                        .certificate
                        .iter()
                        .map(|v| v.body.replica)
                        .collect();
                    eprintln!("t={} replica {r} decides cid {cid} {digest:?} at regency {regency:?} by {signers:?}", self.sim.now_ms);
                }
                if correct {
                    if let Some(prev) = self.sim.decided.insert(cid, digest) {
                        if prev != digest {
                            self.fail(format!(
                                "agreement violated: cid {cid} decided as {prev:?} and {digest:?}"
                            ));
                        }
                    }
                }
            }
            PersistRecord::Regency(regency) => {
                let regency = *regency;
                let node = &mut self.sim.replicas[slot];
                if regency <= node.regency {
                    let failure = format!(
                        "replica {r} regency went from {} to {regency}",
                        node.regency
                    );
                    self.fail(failure);
                }
                let node = &mut self.sim.replicas[slot];
                node.regency = regency;
                if std::env::var("SMR_SIM_TRACE").is_ok() {
                    eprintln!("t={} replica {r} enters regency {regency}", self.sim.now_ms);
                }
            }
            PersistRecord::Prepared(_)
            | PersistRecord::Checkpoint(_)
            | PersistRecord::Sync(_)
            | PersistRecord::Rejoining { .. } => {}
        }
        let checkpoint = matches!(record, PersistRecord::Checkpoint(_));
        self.sim.store(slot, record);
        let node = &mut self.sim.replicas[slot];
        if node.fsync_ms.is_none() {
            return;
        }
        if checkpoint {
            // Written and synced in one go with what must survive it, as the driver's
            // `write_checkpoint` does: whatever waited for a sync may go (a running fsync of
            // the old log still ends, and covers nothing more).
            node.disk.unsynced = false;
            node.disk.durable = node.stored.len();
            if node.disk.fsync_covers.is_some() {
                node.disk.fsync_covers = Some(0);
            }
            let freed = node.disk.commit.all_durable();
            self.release(freed);
        } else {
            node.disk.unsynced = true;
        }
    }

    /// Group commit, as the driver does ([`runner::GroupCommit`]): the fsync completes later
    /// ([`Event::FsyncDone`]), one at a time, the next covering every sync asked for meanwhile.
    fn sync(&mut self) {
        let node = &mut self.sim.replicas[self.slot];
        if node.fsync_ms.is_none() || !std::mem::take(&mut node.disk.unsynced) {
            return;
        }
        if let Some(number) = node.disk.commit.ask() {
            self.sim.start_fsync(self.slot, number);
        }
    }

    fn send(&mut self, to: &[Peer], message: Message) {
        let commit = &mut self.sim.replicas[self.slot].disk.commit;
        if commit.must_wait() {
            commit.hold(
                Held::Send {
                    to: to.to_vec(),
                    message,
                },
                0,
            );
            return;
        }
        self.send_out(to, message);
    }

    fn service(&mut self, work: ServiceWork) -> Option<ServiceDone> {
        let disk = &mut self.sim.replicas[self.slot].disk;
        if disk.commit.must_wait() {
            disk.commit.hold(Held::Service(work), 0);
            return None;
        }
        if !disk.service_done.is_empty() {
            // Behind what freed work produced: the engine takes the service's answers in order.
            if let Some(done) = self.run_service(work) {
                self.sim.replicas[self.slot]
                    .disk
                    .service_done
                    .push_back(done);
            }
            return None;
        }
        self.run_service(work)
    }

    fn rejected(&mut self, rejection: &smr_core::Rejection) {
        *self
            .sim
            .report
            .rejections
            .entry(rejection.name())
            .or_default() += 1;
        let from_byzantine = self
            .sim
            .delivering_from
            .is_some_and(|from| self.sim.is_byzantine(from));
        if from_byzantine && self.sim.replicas[self.slot].correct {
            *self
                .sim
                .report
                .adversary_rejections
                .entry(rejection.name())
                .or_default() += 1;
        }
    }

    fn stopped(&self) -> bool {
        self.sim.failure.is_some() || self.sim.replicas[self.slot].crashed
    }
}
