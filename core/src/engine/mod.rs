//! The replica's protocol engine: sans-IO and deterministic.
//!
//! The engine never reads a clock, opens a socket, spawns a thread or draws randomness: every
//! input takes `now_ms`, and every effect is data in the [`Output`] the input returns. So the
//! seeded simulator and the model checker run the very code the tokio driver runs, and any
//! run replays from its seed.
//!
//! # The driving loop
//! [`crate::runner`] implements this loop once, for the tokio driver, the simulator and the
//! model checker alike; a new driver should use it rather than copy it.
//! 1. Build the engine: [`Engine::recover`] from the records a store kept, or
//!    [`Engine::rejoin`] from an empty store (a new one or a lost one cannot be told apart; the
//!    tokio driver always does this), or [`Engine::new`] where the cluster is known to be new
//!    (tests, simulations). Perform
//!    the output `recover`/`rejoin` return, then the output of [`Engine::start`].
//! 2. Feed it inputs, one at a time, each with the current `now_ms` (milliseconds on a
//!    monotonic clock; only differences matter):
//!    - [`Engine::on_message`] with each message the verifier passed ([`Verified`]; see
//!      [`crate::verify`]);
//!    - [`Engine::on_timeout`] once `now_ms` reaches [`Engine::next_deadline_ms`];
//!    - [`Engine::on_executed`], [`Engine::on_snapshot`] and [`Engine::on_query_result`] (or
//!      [`Engine::on_service_done`] for any of them) with what the service produced for the
//!      engine's [`ServiceWork`].
//! 3. Perform each input's [`Output`] before the next input, in this order: count and log
//!    `rejections`; send `send_now`; append every record of `persist` and make them durable
//!    (one sync); send `send_after_persist`; hand `service` to the service, in order. A
//!    message whose promise this input records (a vote, a STOPDATA after a new regency, a
//!    leader's PROPOSE behind its own vote, a SYNC behind [`PersistRecord::Sync`]) is in
//!    `send_after_persist`, behind the record. A resend of something already durable (a
//!    retransmitted vote) may be in `send_now`.
//! 4. After each input, ask [`Engine::next_deadline_ms`] again: any input can move the next
//!    deadline. A timeout call with nothing due does nothing.
//!
//! # Normal case (docs/design.md §3.4)
//! The leader of regency r (replica r mod n) cuts batches from its pending pool and sends
//! PROPOSE(cid, r, batch). Replicas check it and, in BFT, send WRITE(cid, r, blake3(batch)); on Q
//! matching WRITEs they send ACCEPT. CFT skips WRITE and accepts straight away. Q matching
//! ACCEPTs decide; decided batches execute strictly in cid order. Up to
//! `max_instances_in_flight` instances run at once.
//!
//! # Synchronization phase (docs/design.md §3.9, §3.10; BFT-SMaRt's `Synchronizer`)
//! The regency is explicit ([`Engine::regency`]), every vote is bound to one, and pending
//! requests carry a timeout count: at a request's first timeout a follower forwards it to the
//! leader, at its second it broadcasts STOP. f+1 STOPs (CFT: 1) make a replica join, 2f+1
//! (CFT: f+1) install the next regency; every replica then sends the new leader its STOPDATA,
//! and the leader's SYNC carries n-f of them, from which every replica derives the same values
//! ([`crate::sync::choose`]). Until it applies the SYNC a replica is in [`Phase::Syncing`] and
//! accepts no proposal. A change that does not finish within its timeout asks for the next
//! regency, with twice the timeout.
//!
//! # Catching up, checkpoints and state transfer (§3.5, §3.11)
//! Lost messages are resent by the retransmit timer; a replica that is behind asks peers for
//! certified decisions, and one that is behind the peers' logs fetches a checkpoint that f+1
//! of them (CFT: 1) vouch for. Every `checkpoint_period` cids the service is snapshotted with
//! the reply cache; the log is truncated up to a checkpoint once a quorum announced the same
//! digest.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use smr_crypto::{Digest, Signer, Verifier};
use smr_modes::Quorums;

use crate::checkpoint::Checkpoint;
use crate::clients::ClientTable;
use crate::config::ValidEngineConfig;
use crate::message::{
    Batch, Cid, ClientId, Decision, Message, PreparedProof, Propose, Regency, ReplicaId, RequestId,
    Signed, Vote,
};
use crate::network::Peer;
use crate::pool::RequestPool;
use crate::rejection::Rejection;
use crate::verify::Verified;

use budget::{ClientReplyBudgets, ReplyBudgets};
use catch_up::CatchUp;
use checkpoints::Checkpoints;
use leader_change::LeaderChange;
use recovery::Rejoin;
use state_transfer::StateChunkIn;
use state_transfer::StateTransfer;

mod budget;
mod catch_up;
mod checkpoints;
mod execution;
mod invariants;
mod leader_change;
mod ordering;
mod output;
mod recovery;
mod state_transfer;
mod timers;

pub use budget::{
    MAX_DECISIONS_REPLY_BYTES, REPLY_BURST_BYTES, REPLY_BYTES_PER_SECOND, REPLY_OVERHEAD_BYTES,
    REPLY_VOTE_BYTES, STATE_FETCH_BYTES_PER_SECOND,
};
pub use output::{ExecuteItem, Outgoing, Output, ServiceDone, ServiceWork};

/// The engine's timers (docs/design.md §7.4). Each has at most one deadline at a time, in the
/// engine's milliseconds; [`Engine::timer_deadlines_ms`] lists them and
/// [`Engine::on_timeout`] fires those that are due.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimerKind {
    /// No progress for a while (§3.5): resend this replica's PROPOSEs, WRITEs and ACCEPTs of
    /// undecided instances, its STOP and STOPDATA, and a rejoining replica's StateQuery; restart
    /// a stalled state transfer; ask the next peer for decisions. Armed while anything is
    /// open; the interval starts at `retransmit_initial_ms`, doubles on each expiry up to
    /// `retransmit_max_ms`, and resets when an instance executes.
    Retransmit,
    /// The oldest pending request has waited `request_timeout_ms` (§3.9 steps 1–2). At a
    /// request's first timeout a follower forwards it to the leader; at its second the replica
    /// asks for the next regency with STOP, unless certified decisions moved it forward within
    /// the last `request_timeout_ms` (or, in CFT, the leader's heartbeats show recent progress
    /// beyond it), and so it blames its own lag. A state transfer in progress never holds the
    /// STOP back: one peer's word starts it.
    Request,
    /// Every `heartbeat_ms`: every replica broadcasts [`Message::Heartbeat`] and asks
    /// for decisions if it has seen a cid beyond its execution, and repeats its newest
    /// checkpoint announcement until that checkpoint is stable.
    Heartbeat,
    /// A leader change has not finished within `request_timeout_ms` doubled per failed change
    /// in a row (at most 64 times): ask for the next regency (§3.9, "Growing timeouts").
    LeaderChange,
    /// A state transfer's next StateFetch is due: fetches are paced so that a correct
    /// requester never asks a source for more than half of its reply budget
    /// (docs/design.md §3.11, "Paced").
    StateFetch,
    /// A follower holds a request that timed out (and so was forwarded) and has heard nothing
    /// at all from its leader for [`Engine::leader_silence_ms`]: it asks for the next regency
    /// without waiting for the request's second timeout (§3.9, "A silent leader"). Armed at
    /// the time of the last message from the leader plus that span, while such a request is
    /// pending and no STOP of this replica's is out.
    LeaderSilence,
}

/// A STOP may ask for a regency at most this far beyond the current one; anything further is
/// a peer trying to exhaust the regency space.
const MAX_REGENCY_JUMP: u64 = 1 << 20;

/// What the engine promises, to be made durable before the promise is sent (docs/design.md
/// §3.12). The driver appends them in order ([`crate::runner::Host::append`]) and syncs once
/// per output before [`Output::send_after_persist`]; their codec encoding is a write-ahead-log
/// record, and [`Engine::recover`] rebuilds a replica from them. At a checkpoint record a store
/// may replace everything before it with [`Engine::durable_records_after`] the checkpoint's
/// cid, as the tokio driver does ([`crate::storage::Wal::write_checkpoint`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PersistRecord {
    /// A WRITE or ACCEPT this replica is about to send.
    Vote(Vote),
    /// The value this replica is about to ACCEPT, with its proof: what its STOPDATA must
    /// report after a restart.
    Prepared(PreparedProof),
    /// A decided instance, with its batch and certificate.
    Decided(Decision),
    /// This replica entered `regency`; it must never vote in a lower one, even after a restart.
    Regency(Regency),
    /// A checkpoint; every record about cids at or below it may be discarded (the regency may
    /// not: [`Engine::durable_records_after`] says what a store keeps).
    Checkpoint(Checkpoint),
    /// The SYNC this replica, as the leader of its regency, is about to send: after a restart
    /// it sends this one again and never another for that regency (the value rule counts on
    /// one SYNC per regency; docs/design.md §3.10).
    Sync(Signed<crate::message::Sync>),
    /// This replica lost its state (or started with none) and must not vote until it has
    /// executed `horizon`: `None` while it is still asking its peers how far they voted. The
    /// newest such record is what [`Engine::recover`] resumes from, so a replica that crashes
    /// mid-rejoin, after persisting a transferred checkpoint, restarts still abstaining
    /// (docs/design.md §3.12). A store keeps it until the horizon is executed.
    Rejoining {
        /// The cid to execute before voting again, once known.
        horizon: Option<Cid>,
        /// The incarnation nonce [`Engine::rejoin`] was given: a recovery still collecting
        /// reports asks with it again (it cast no vote since it was drawn; §3.12 item 6).
        nonce: u64,
    },
}

/// Counters for operators and tests, all counts since the engine was built (recovery does not
/// count what it rebuilds).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Rejections by [`Rejection::name`]: the engine's own and those counted through
    /// [`Engine::count_rejection`].
    pub rejections: BTreeMap<&'static str, u64>,
    /// Instances decided, by this replica's vote counting or from certified decisions of
    /// peers.
    pub decided_instances: u64,
    /// Client signatures the engine verified before relaying requests that were
    /// authenticated by their channel only (docs/design.md §5): each signature submitted to
    /// a check, so a failed batch and the checks after its first bad item count twice. The
    /// verify workers count their own.
    pub client_signatures_verified: u64,
    /// Requests handed to the service to execute (duplicates skipped are not counted).
    pub executed_requests: u64,
    /// Requests in a decided batch that were already executed, and so skipped.
    pub skipped_duplicates: u64,
    /// Duplicates of executed requests whose cached reply was not resent because their
    /// client's cached-reply budget (`engine/budget.rs`) was spent.
    pub cached_replies_withheld: u64,
    /// Unordered reads not answered because their client's reply budget (`engine/budget.rs`,
    /// the same bucket as cached replies) was spent: counted once when the read is not
    /// handed to the service, or once when its result is not sent. Also the reads a
    /// rejoining replica does not answer (docs/design.md §3.8).
    pub unordered_reads_withheld: u64,
    /// Sessions opened: decided open requests
    /// ([`OPEN_SESSION`](crate::message::OPEN_SESSION)) that got a session number.
    pub sessions_opened: u64,
    /// Decided open requests that opened no session because the client table was full of
    /// sessions active within `client_expiry_cids`; answered
    /// [`ReplyStatus::TableFull`](crate::message::ReplyStatus::TableFull).
    pub refused_new_clients: u64,
    /// Requests refused because their session has no record (evicted, or never opened);
    /// answered [`ReplyStatus::SessionExpired`](crate::message::ReplyStatus::SessionExpired).
    pub session_expired_requests: u64,
    /// PROPOSEs made as leader; retransmissions not counted.
    pub proposals_sent: u64,
    /// Expiries of the retransmit timer.
    pub retransmissions: u64,
    /// Decisions taken from certified decisions peers sent (decision forwarding), not from
    /// this replica's own count of ACCEPTs.
    pub decisions_learned_from_peers: u64,
    /// Regencies entered.
    pub regency_changes: u64,
    /// STOPs started, one per regency asked for; resends not counted.
    pub stops_sent: u64,
    /// Of `stops_sent`, those started because the leader was silent
    /// ([`TimerKind::LeaderSilence`]), before a request's second timeout.
    pub stops_for_silent_leader: u64,
    /// State transfers started.
    pub state_transfers: u64,
    /// State-transfer sources whose bytes did not match the agreed digest.
    pub lying_state_sources: u64,
    /// Checkpoints this replica took whose state exceeds `limits.max_state_bytes`, so that no
    /// replica can receive them by state transfer (the checkpoint is kept and announced: a
    /// replica does not stop over a limit every replica shares). The driver logs each; see
    /// [`Engine::state_over_max_state_bytes`].
    pub oversize_checkpoints: u64,
    /// Downloaded checkpoints whose bytes matched the digest f+1 peers vouch for, but which
    /// this replica cannot use (their contents break its limits or do not decode here: its
    /// configuration or version differs from the replicas that took them). Not blamed on the
    /// source; the driver logs each; see [`Engine::unusable_agreed_checkpoint`].
    pub unusable_agreed_checkpoints: u64,
    /// `Abstaining` messages that raised a peer's horizon sooner than one `request_timeout_ms`
    /// after its last raise, and were held back: the empty-batch budget of one peer (at most
    /// two windows per request timeout) at work.
    pub abstaining_raises_deferred: u64,
}

#[derive(Clone, Debug)]
struct Proposal {
    digest: Digest,
    batch: Batch,
    /// The leader's signed PROPOSE; `None` for values fixed by a SYNC.
    signed: Option<Signed<Propose>>,
}

/// One consensus instance in the current regency.
#[derive(Clone, Debug, Default)]
struct Instance {
    proposal: Option<Proposal>,
    writes: BTreeMap<ReplicaId, Signed<Vote>>,
    accepts: BTreeMap<ReplicaId, Signed<Vote>>,
    my_write: Option<Signed<Vote>>,
    my_accept: Option<Signed<Vote>>,
    /// The value this replica accepted with the highest epoch, with its proof (the Q WRITEs
    /// in BFT). It survives regency changes: it is what STOPDATA reports.
    prepared: Option<PreparedProof>,
    decided: Option<Decision>,
}

/// One replica's protocol state machine: ordering (BFT-SMaRt's `Acceptor`), leader change
/// (`Synchronizer`), checkpoints and state transfer (`StateManager`), and execution in cid
/// order. It does no I/O: the module docs give the driving loop, and [`crate::runner::perform`]
/// carries out each [`Output`].
///
/// `Clone` lets a model checker branch one engine into every successor state; nothing in the
/// engine depends on being unique (the signer is shared behind an `Arc`).
#[derive(Clone)]
pub struct Engine {
    cfg: ValidEngineConfig,
    quorums: Quorums,
    me: ReplicaId,
    /// Signs votes, proposals and nothing else. `None` in CFT, where channels authenticate.
    signer: Option<Arc<dyn Signer>>,
    /// Verifies the signatures of pending requests that were authenticated by their client's
    /// channel only, before they are relayed (docs/design.md §5); see
    /// [`Engine::set_request_verifier`].
    request_verifier: Option<Arc<dyn Verifier>>,
    regency: Regency,
    /// Highest cid handed to the service.
    last_executed: Cid,
    /// Leader only: the next cid it will propose.
    next_cid_to_propose: Cid,
    instances: BTreeMap<Cid, Instance>,
    /// Decided batches kept for peers that are behind, bounded by `max_log_entries`.
    log: BTreeMap<Cid, Decision>,
    pool: RequestPool,
    clients: ClientTable,
    /// Batches handed to the service whose replies have not come back yet.
    executing: VecDeque<(Cid, Vec<RequestId>)>,
    retransmit_interval_ms: u64,
    /// The one place timers live: each kind's deadline, pulled by the driver through
    /// [`Engine::next_deadline_ms`].
    deadlines_ms: BTreeMap<TimerKind, u64>,
    /// What the input being handled has produced so far; handed over when it returns.
    out: Output,
    phase: Phase,
    leader_change: LeaderChange,
    catch_up: CatchUp,
    checkpoints: Checkpoints,
    transfer: StateTransfer,
    /// Highest cid seen in any proposal or vote of the current regency, or claimed decided.
    highest_seen_cid: Cid,
    /// The highest cid the current leader's heartbeats reported decided, and when it rose.
    leader_progress: Option<LeaderProgress>,
    /// When this replica last received any message from the current regency's leader (or
    /// entered the regency, or started).
    leader_heard_ms: u64,
    rejoin: Rejoin,
    /// A replica restarted from its store re-executes the stored decisions after its
    /// checkpoint: until it has executed this cid (the highest stored decision), its service
    /// is behind states it answered from before the crash, and it answers no unordered read
    /// (docs/design.md §3.8). Cid 0 otherwise.
    reads_withheld_until: Cid,
    /// Per peer that said it abstains ([`Message::Abstaining`]): the cid it waits for, and
    /// when that was last raised. The leader orders empty batches up to the highest.
    abstaining: BTreeMap<ReplicaId, recovery::AbstainingPeer>,
    /// Per peer: the latest rejoin nonce seen from it, and this replica's `voted_up_to` when
    /// it first saw that nonce, which is what it reports to that incarnation (§3.12 item 6).
    peer_incarnations: BTreeMap<ReplicaId, recovery::PeerIncarnation>,
    /// Per peer: what it may still make this replica send in reply (`engine/budget.rs`).
    reply_budgets: ReplyBudgets,
    /// Per client: what its duplicate requests may still make this replica resend from the
    /// reply cache (`engine/budget.rs`).
    client_reply_budgets: ClientReplyBudgets,
    stats: EngineStats,
}

/// What the current leader's heartbeats showed: the highest cid it reported decided, and when
/// that last rose.
#[derive(Clone, Copy, Debug)]
struct LeaderProgress {
    decided: Cid,
    rose_at_ms: u64,
}

/// Where the replica is in the synchronization phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Ordering requests in the current regency.
    Normal,
    /// The current regency is installed, but its SYNC has not been applied yet: no proposals
    /// are accepted in it until then.
    Syncing,
}

impl Engine {
    /// Builds the engine of a replica of a new cluster, from a validated config
    /// ([`crate::EngineConfig::validate`]): regency 0, nothing executed, an empty pool. Call
    /// [`Engine::start`] before the first input. `signer` must hold this replica's configured
    /// key; it is used only in modes that sign replica messages (BFT). A replica that has
    /// stored state uses [`Engine::recover`], one that lost it [`Engine::rejoin`].
    pub fn new(cfg: ValidEngineConfig, signer: Arc<dyn Signer>) -> Engine {
        let quorums = cfg.quorums;
        let signer = quorums.requires_signatures().then_some(signer);
        let me = cfg.me;
        Engine {
            me,
            pool: RequestPool::new(
                cfg.limits.max_pending_per_client,
                cfg.limits.max_pending_total,
            ),
            clients: ClientTable::bounded(cfg.limits.client_limits()),
            retransmit_interval_ms: cfg.timeouts.retransmit_initial_ms,
            cfg,
            quorums,
            signer,
            request_verifier: None,
            regency: Regency::ZERO,
            last_executed: Cid::ZERO,
            next_cid_to_propose: Cid::FIRST,
            instances: BTreeMap::new(),
            log: BTreeMap::new(),
            executing: VecDeque::new(),
            deadlines_ms: BTreeMap::new(),
            out: Output::default(),
            phase: Phase::Normal,
            leader_change: LeaderChange::default(),
            catch_up: CatchUp::new(me),
            checkpoints: Checkpoints::default(),
            transfer: StateTransfer::default(),
            highest_seen_cid: Cid::ZERO,
            leader_progress: None,
            leader_heard_ms: 0,
            rejoin: Rejoin::Done,
            reads_withheld_until: Cid::ZERO,
            abstaining: BTreeMap::new(),
            peer_incarnations: BTreeMap::new(),
            reply_budgets: ReplyBudgets::default(),
            client_reply_budgets: ClientReplyBudgets::default(),
            stats: EngineStats::default(),
        }
    }

    /// This replica's id, `0..n`.
    pub fn id(&self) -> ReplicaId {
        self.me
    }
    /// The current regency: the highest this replica installed (or recovered); it never
    /// decreases (docs/design.md §3.10.6).
    pub fn regency(&self) -> Regency {
        self.regency
    }
    /// The leader of the current regency: replica `regency` mod n.
    pub fn leader(&self) -> ReplicaId {
        self.quorums.leader_of(self.regency.0)
    }
    /// Whether this replica leads the current regency (it proposes only once that regency's
    /// SYNC is applied).
    pub fn is_leader(&self) -> bool {
        self.leader() == self.me
    }
    /// The highest cid handed to the service: every cid up to it is decided and executes in
    /// order (0 before the first).
    pub fn last_executed(&self) -> Cid {
        self.last_executed
    }
    /// Counters since the engine was built.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }
    /// Requests in the pool: received, not yet executed; at most `max_pending_total`.
    pub fn pending_requests(&self) -> usize {
        self.pool.len()
    }
    /// The cluster's thresholds and leader rotation.
    pub fn quorums(&self) -> &Quorums {
        &self.quorums
    }
    /// Instances held in memory, decided or not (bounded by `max_instances_ahead`).
    pub fn open_instances(&self) -> usize {
        self.instances.len()
    }
    /// Decided batches held for peers that are behind: only cids above the stable checkpoint,
    /// and at most `max_log_entries`.
    pub fn log_len(&self) -> usize {
        self.log.len()
    }
    /// Whether the current regency's SYNC has been applied.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Counts, in [`EngineStats::rejections`], a rejection that happened before the engine saw
    /// the message (in the verifier).
    pub fn count_rejection(&mut self, rejection: &Rejection) {
        *self.stats.rejections.entry(rejection.name()).or_default() += 1;
    }

    /// Counts a rejection of (part of) the input being handled and reports it beside the
    /// input's output.
    fn reject(&mut self, rejection: Rejection) {
        self.count_rejection(&rejection);
        self.out.rejections.push(rejection);
    }

    /// Hands over everything the input produced.
    fn take_output(&mut self) -> Output {
        std::mem::take(&mut self.out)
    }

    /// Gives the engine the signature scheme for client requests. A driver that authenticates
    /// direct requests by their channel ([`crate::verify::RequestAuth::Channel`]) must set it:
    /// the engine then verifies such a request's signature before it relays it in a PROPOSE,
    /// a Forward or a STOP (docs/design.md §5). Verification is a pure function, so the engine
    /// stays deterministic. Not needed when every request reaches the engine with its
    /// signature checked ([`crate::verify::RequestAuth::Signature`]), nor in CFT.
    pub fn set_request_verifier(&mut self, verifier: Arc<dyn Verifier>) {
        self.request_verifier = Some(verifier);
    }

    /// Arms the timers, counting from `now_ms`: the heartbeat, and the retransmit and request
    /// timers if anything is open or pending (a recovered replica's records, a rejoin). Call it
    /// once, after [`Engine::new`], or after performing the output of [`Engine::recover`] or
    /// [`Engine::rejoin`]; perform its output like any other.
    pub fn start(&mut self, now_ms: u64) -> Output {
        // A recovered replica may have open instances or a rejoin to drive. Recovery ran
        // before there was a clock, so its timers start now.
        self.deadlines_ms.clear();
        self.leader_heard_ms = now_ms;
        self.arm_retransmit(now_ms);
        self.arm_request_timer();
        self.deadlines_ms.insert(
            TimerKind::Heartbeat,
            now_ms.saturating_add(self.cfg.timeouts.heartbeat_ms),
        );
        if self.phase == Phase::Syncing {
            // Recovered into a regency whose SYNC it has not applied (docs/design.md §3.9).
            if let Some(sync) = self.leader_change.recovered_sync.take() {
                // It led the regency and sent this SYNC before the crash: the same one again,
                // for followers still waiting, and never another.
                self.out.broadcast(Message::Sync(sync.clone()));
                self.apply_sync(now_ms, sync);
            } else {
                // Report to the regency's leader again (resent until its SYNC arrives), and
                // move on to the next regency if that does not happen in time.
                self.send_stopdata(now_ms);
                self.deadlines_ms.insert(
                    TimerKind::LeaderChange,
                    now_ms.saturating_add(self.change_timeout_ms()),
                );
            }
        }
        self.finish_input()
    }

    /// Handles a verified message ([`Message`] says what each kind makes the engine do). A
    /// rejection is counted and reported in [`Output::rejections`], beside whatever the message
    /// produced before it was refused.
    pub fn on_message(&mut self, now_ms: u64, message: Verified) -> Output {
        if let Err(rejection) = self.dispatch(now_ms, message) {
            self.reject(rejection);
        }
        self.finish_input()
    }

    /// Ends an input: checks the invariants (in debug builds) and hands the output over.
    fn finish_input(&mut self) -> Output {
        #[cfg(debug_assertions)]
        self.check_invariants();
        self.take_output()
    }

    fn dispatch(&mut self, now_ms: u64, verified: Verified) -> Result<(), Rejection> {
        let Verified {
            from,
            message,
            channel_only,
        } = verified;
        let checked = |position: usize| crate::verify::signature_checked(&channel_only, position);
        // Any message from the leader, even one refused below, shows it is not silent.
        if from == Peer::Replica(self.leader()) {
            self.leader_heard_ms = now_ms;
        }
        match (from, message) {
            (Peer::Client(_), Message::Request(request)) => {
                self.handle_request(now_ms, request, true, checked(0))
            }
            (Peer::Replica(j), Message::Forward(requests)) => {
                if !self.is_leader() {
                    return Err(Rejection::NotLeader);
                }
                let _ = j;
                for (position, request) in requests.into_iter().enumerate() {
                    // A forwarded request may be stale or already pending; neither is the
                    // forwarder's fault. One request the pool refuses does not stop the
                    // others, and never undoes what earlier ones started (a proposal).
                    match self.handle_request(now_ms, request, false, checked(position)) {
                        Ok(()) | Err(Rejection::StaleRequest) => {}
                        Err(e) => self.reject(e),
                    }
                }
                Ok(())
            }
            (Peer::Replica(j), Message::Propose(p)) => self.handle_propose(now_ms, j, p),
            (Peer::Replica(j), Message::Write(v)) => self.handle_vote(now_ms, j, v),
            (Peer::Replica(j), Message::Accept(v)) => self.handle_vote(now_ms, j, v),
            (Peer::Replica(j), Message::DecisionQuery { from_cid }) => {
                self.handle_decision_query(now_ms, j, from_cid)
            }
            (Peer::Replica(j), Message::Decisions(decisions)) => {
                let before = self.last_executed;
                let learned_before = self.stats.decisions_learned_from_peers;
                // Full by count, or by bytes (the sender stops before the decision that would
                // take the answer past `MAX_DECISIONS_REPLY_BYTES`), counting only the
                // decisions new here: an answer padded with decisions this replica holds shows
                // nothing about what its sender has, and must not buy it an immediate query
                // nor the paused catch-up's place (review R27: a Byzantine replica's three
                // held decisions and one new one took the place, and the resumed query went
                // to it, which answers nothing).
                let (mut taught, mut taught_bytes) = (0usize, 0u64);
                for decision in decisions {
                    let size = budget::decision_bytes(&decision);
                    let known = self.stats.decisions_learned_from_peers;
                    self.learn_decision(now_ms, decision);
                    if self.stats.decisions_learned_from_peers > known {
                        taught += 1;
                        taught_bytes = taught_bytes.saturating_add(size);
                    }
                }
                let full = taught >= self.cfg.limits.max_decisions_per_reply
                    || taught_bytes >= MAX_DECISIONS_REPLY_BYTES / 2;
                // Learned, not only executed: the service runs one batch at a time, so the
                // decisions of a full answer mostly wait in the window, and the catch-up must
                // go on meanwhile (docs/design.md §3.5, "Catching up while the service runs").
                let learned = self.stats.decisions_learned_from_peers > learned_before;
                if self.last_executed > before || learned {
                    self.catch_up.last_catch_up_ms = Some(now_ms);
                    // A full answer means the peer probably has more: keep the catch-up going
                    // without waiting for a timer.
                    if full {
                        // The peer that showed it has more resumes a paused catch-up.
                        self.catch_up.resume_from = None;
                        self.allow_query_now(j);
                        self.maybe_query(now_ms, j);
                    }
                }
                Ok(())
            }
            (
                Peer::Replica(j),
                Message::Heartbeat {
                    regency,
                    last_decided,
                },
            ) => {
                if regency > self.regency {
                    self.request_sync(now_ms, j);
                } else if regency < self.regency {
                    self.help_stale_peer(now_ms, j);
                } else {
                    // Only the leader's word counts as the leader's progress (CFT's "blame my
                    // own lag"); anyone's claim to be ahead is worth one decision query to it,
                    // rate-limited per peer, and answered only with certified decisions, so a
                    // false claim costs a query and suppresses nothing.
                    if j == self.leader()
                        && self
                            .leader_progress
                            .is_none_or(|p| last_decided > p.decided)
                    {
                        self.leader_progress = Some(LeaderProgress {
                            decided: last_decided,
                            rose_at_ms: now_ms,
                        });
                    }
                    if last_decided > self.last_executed {
                        self.note_seen_cid(last_decided);
                        self.maybe_query(now_ms, j);
                    }
                }
                Ok(())
            }
            (Peer::Replica(j), Message::Stop(stop)) => self.handle_stop(now_ms, j, stop, &checked),
            (Peer::Replica(j), Message::StopData(sd)) => self.handle_stopdata(now_ms, j, sd),
            (Peer::Replica(_), Message::Sync(sync)) => {
                self.handle_sync(now_ms, sync);
                Ok(())
            }
            (Peer::Replica(j), Message::SyncQuery) => {
                self.help_stale_peer(now_ms, j);
                Ok(())
            }
            (Peer::Replica(j), Message::StateQuery { rejoin_nonce }) => {
                let info = if rejoin_nonce == 0 {
                    self.state_info()
                } else {
                    let voted_up_to = self.note_incarnation(j, rejoin_nonce);
                    self.state_info_for(rejoin_nonce, voted_up_to)
                };
                // A peer that asks has (re)started: if this replica is rejoining too and has
                // no report from it yet, it asks back at once rather than at its next,
                // backed-off retransmission, so replicas of a new cluster that start apart
                // all take part within a round trip of the last one's start.
                if let Rejoin::Collecting { nonce, reports } = &self.rejoin {
                    if !reports.contains_key(&j) {
                        let rejoin_nonce = *nonce;
                        self.out
                            .send(Peer::Replica(j), Message::StateQuery { rejoin_nonce });
                    }
                }
                self.reply_to_peer(now_ms, j, info, "state info")
            }
            (
                Peer::Replica(j),
                Message::StateInfo {
                    checkpoints,
                    voted_up_to,
                    executed,
                    for_nonce,
                    rejoin_nonce,
                },
            ) => {
                if rejoin_nonce != 0 {
                    self.note_incarnation(j, rejoin_nonce);
                }
                let executed = executed.map_or(Cid::ZERO, |proof| proof.cid);
                self.note_rejoin_report(now_ms, j, for_nonce, voted_up_to, executed);
                self.handle_state_info(now_ms, j, checkpoints);
                Ok(())
            }
            (Peer::Replica(j), Message::Abstaining { until }) => {
                self.note_abstaining(now_ms, j, until);
                Ok(())
            }
            (Peer::Replica(j), Message::CheckpointAnnounce { cid, digest }) => {
                self.note_announcement(j, cid, digest);
                self.check_stable();
                Ok(())
            }
            (Peer::Replica(j), Message::StateFetch { cid, offset }) => {
                self.handle_state_fetch(now_ms, j, cid, offset)
            }
            (
                Peer::Replica(j),
                Message::StateChunk {
                    cid,
                    offset,
                    total_len,
                    bytes,
                    decided,
                },
            ) => self.handle_state_chunk(
                now_ms,
                j,
                StateChunkIn {
                    cid,
                    offset,
                    total_len,
                    bytes,
                    decided,
                },
            ),
            (_, message) => Err(Rejection::UnexpectedMessage(message.kind_name())),
        }
    }

    /// Clients the client table remembers (each with a request executed here or in a
    /// checkpoint installed here), for diagnostics.
    pub fn pending_clients(&self) -> usize {
        self.clients.client_count()
    }

    /// The replicated client table (sessions, executed seqs, cached replies), for inspection:
    /// tests and tools read a session's standing with [`ClientTable::status`].
    pub fn client_table(&self) -> &ClientTable {
        &self.clients
    }

    #[doc(hidden)]
    pub fn debug_client_status(&self, client: ClientId, session: u64, seq: u64) -> String {
        format!(
            "{:?}",
            self.clients.status(&RequestId {
                client,
                session,
                seq
            })
        )
    }
}
