//! The replica's protocol engine: sans-IO and deterministic.
//!
//! Inputs are `on_*` methods that take `now_ms`; each returns the [`Action`]s the driver must
//! perform, in order. The engine never reads a clock, opens a socket, spawns a thread or draws
//! randomness, so a simulator can drive many engines through a fake network and replay any run
//! from its seed.
//!
//! # Driver contract
//! - Perform actions in the order returned. In particular a `Persist` comes before the `Send` or
//!   `Broadcast` that promises what it records; the driver must make it durable first.
//! - `Execute` actions are handed to the service in order; for each the driver calls
//!   [`Engine::on_executed`] with the replies, in the same order.
//! - `SetTimer { timer, deadline_ms }` replaces the previous deadline of that timer; when it is
//!   reached call [`Engine::on_timer`]. `CancelTimer` removes it. A late or stale timer call is
//!   harmless.
//! - Only [`Verified`] messages reach [`Engine::on_message`]; see [`crate::verify`].
//!
//! # Normal case (DESIGN.md section 3)
//! The leader of regency r (replica r mod n) cuts batches from its pending pool and sends
//! PROPOSE(cid, r, batch). Replicas check it and, in BFT, send WRITE(cid, r, blake3(batch)); on Q
//! matching WRITEs they send ACCEPT. CFT skips WRITE and accepts straight away. Q matching
//! ACCEPTs decide; decided batches execute strictly in cid order. Up to
//! `max_instances_in_flight` instances run at once.
//!
//! # Hooks for the synchronization phase
//! The regency is explicit ([`Engine::regency`]), every vote is bound to one, and pending
//! requests carry a timeout count: the second timeout of a request is where a STOP will be sent.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use smr_crypto::{Digest, Signer};
use smr_modes::Quorums;

use crate::checkpoint::{Checkpoint, CheckpointData, Transfer};
use crate::clients::{ClientTable, RequestStatus};
use crate::config::EngineConfig;
use crate::message::{
    Batch, Cid, ClientId, Decision, DecisionProof, Message, PreparedProof, Propose, Regency,
    ReplicaId, Reply, Request, RequestId, RequestKind, Signed, Stop, StopData, Sync, Vote,
    VoteKind,
};
use crate::network::Peer;
use crate::pool::{Inserted, PoolRejection, RequestPool};
use crate::rejection::Rejection;
use crate::sync::choose;
use crate::verify::Verified;

/// The engine's timers. Each has at most one deadline at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimerKind {
    /// No progress for a while: resend proposals and votes, ask a peer for decisions.
    Retransmit,
    /// The oldest pending request has waited `request_timeout_ms`.
    Request,
    /// The leader's periodic heartbeat.
    Heartbeat,
    /// A leader change has taken too long: move on to the next regency.
    LeaderChange,
}

const TIMER_KINDS: [TimerKind; 4] = [
    TimerKind::Retransmit,
    TimerKind::Request,
    TimerKind::Heartbeat,
    TimerKind::LeaderChange,
];

/// A STOP may ask for a regency at most this far beyond the current one; anything further is
/// a peer trying to exhaust the regency space.
const MAX_REGENCY_JUMP: Regency = 1 << 20;

/// State-transfer chunks (or "superseded" answers) one peer is served per second: 256 MiB/s
/// with the default 1 MiB chunks, far above what one-chunk-at-a-time transfer asks for.
pub const STATE_FETCHES_PER_SECOND: u64 = 256;

/// What the engine promises, to be made durable before the promise is sent.
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
    /// A checkpoint; every record about cids at or below it may be discarded.
    Checkpoint(Checkpoint),
}

/// One operation to execute, already deduplicated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecuteItem {
    pub id: RequestId,
    pub op: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Make this durable before performing any later action.
    Persist(PersistRecord),
    Send {
        to: Peer,
        message: Message,
    },
    /// Send to every other replica.
    Broadcast(Message),
    /// Execute these ordered operations, then call `on_executed(cid, replies)`.
    Execute {
        cid: Cid,
        items: Vec<ExecuteItem>,
    },
    /// Run a read-only operation against the current state and reply to the client directly.
    Query {
        id: RequestId,
        op: Vec<u8>,
    },
    SetTimer {
        timer: TimerKind,
        deadline_ms: u64,
    },
    CancelTimer(TimerKind),
    /// After the batch of `cid` has executed (and before any later one), snapshot the service
    /// and call [`Engine::on_snapshot`].
    TakeSnapshot {
        cid: Cid,
    },
    /// Replace the service state with `snapshot` (from a checkpoint); later batches build on it.
    Restore {
        cid: Cid,
        snapshot: Vec<u8>,
    },
}

/// Counters for operators and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub rejections: BTreeMap<&'static str, u64>,
    pub decided_instances: u64,
    pub executed_requests: u64,
    /// Requests in a decided batch that were already executed, and so skipped.
    pub skipped_duplicates: u64,
    pub proposals_sent: u64,
    pub retransmissions: u64,
    pub decisions_learned_from_peers: u64,
    pub regency_changes: u64,
    pub stops_sent: u64,
    pub state_transfers: u64,
    /// State-transfer sources whose bytes did not match the agreed digest.
    pub lying_state_sources: u64,
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

/// `Clone` lets a model checker branch one engine into every successor state; nothing in the
/// engine depends on being unique (the signer is shared behind an `Arc`).
#[derive(Clone)]
pub struct Engine {
    cfg: EngineConfig,
    quorums: Quorums,
    me: ReplicaId,
    /// Signs votes, proposals and nothing else. `None` in CFT, where channels authenticate.
    signer: Option<Arc<dyn Signer>>,
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
    deadlines: BTreeMap<TimerKind, u64>,
    emitted_deadlines: BTreeMap<TimerKind, u64>,
    query_cursor: u32,
    next_query_allowed_ms: u64,
    /// Highest regency each replica asked for with a STOP, this one included.
    stop_for: BTreeMap<ReplicaId, Regency>,
    my_stop: Option<Signed<Stop>>,
    phase: Phase,
    /// This replica's STOPDATA for the regency being synchronized, resent until SYNC arrives.
    my_stopdata: Option<Signed<StopData>>,
    /// New leader only: STOPDATA collected for the current regency.
    collected: BTreeMap<ReplicaId, Signed<StopData>>,
    /// The SYNC that installed the current regency (none for regency 0), for stragglers.
    current_sync: Option<Signed<Sync>>,
    /// Leader changes that failed in a row; the change timeout doubles with each.
    change_failures: u32,
    next_sync_query_allowed_ms: u64,
    /// Per peer: when we may next send it our SYNC.
    next_help_ms: BTreeMap<ReplicaId, u64>,
    /// Per peer: the start of its current one-second window and the state fetches served in it.
    state_fetches_served: BTreeMap<ReplicaId, (u64, u64)>,
    /// When certified decisions from a peer last moved this replica forward. A replica that is
    /// catching up blames its own lag, not the leader, for its requests' timeouts.
    last_catch_up_ms: Option<u64>,
    /// The latest stable checkpoint: one that a quorum of replicas announced with the same
    /// digest. It is what state transfer serves, and the log is truncated only below it, so a
    /// replica that runs ahead never discards decisions that the others still need.
    checkpoint: Option<Checkpoint>,
    /// Checkpoints this replica took that are not stable yet.
    own_checkpoints: BTreeMap<Cid, Checkpoint>,
    /// Checkpoint digests announced by each replica (this one included), above the stable one.
    announcements: BTreeMap<Cid, BTreeMap<ReplicaId, Digest>>,
    /// A checkpoint is due at this cid: later batches wait until it has executed.
    checkpoint_barrier: Option<Cid>,
    /// The client table captured at a checkpoint cid, waiting for the service's snapshot.
    snapshot_clients: Option<(Cid, ClientTable)>,
    transfer: Option<Transfer>,
    /// Highest cid seen in any proposal or vote of the current regency, or claimed decided.
    highest_seen_cid: Cid,
    /// The highest cid the current leader's heartbeats reported decided, and when it rose.
    leader_progress: Option<(Cid, u64)>,
    rejoin: Rejoin,
    stats: EngineStats,
}

/// Whether a replica that started from an empty store may take part yet.
#[derive(Clone, Debug, PartialEq, Eq)]
/// The fields of an incoming [`Message::StateChunk`].
struct StateChunkIn {
    cid: Cid,
    offset: u64,
    total_len: u64,
    bytes: Vec<u8>,
    decided: Option<DecisionProof>,
}

#[derive(Clone)]
enum Rejoin {
    /// It may vote, lead and send STOPDATA.
    Done,
    /// Waiting for n-f peers to say how far they have voted.
    Collecting(BTreeMap<ReplicaId, Cid>),
    /// Catching up to this cid before taking part.
    CatchingUp(Cid),
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
    /// Builds an engine. `signer` must hold this replica's configured key; it is used only in
    /// modes that sign replica messages.
    pub fn new(cfg: EngineConfig, signer: Arc<dyn Signer>) -> Engine {
        if let Err(e) = cfg.validate() {
            panic!("invalid engine configuration: {e}");
        }
        let quorums = cfg.quorums;
        let signer = quorums.requires_signatures().then_some(signer);
        Engine {
            me: cfg.me,
            pool: RequestPool::new(
                cfg.limits.max_pending_per_client,
                cfg.limits.max_pending_total,
            ),
            clients: ClientTable::new(cfg.limits.max_pending_per_client as u64),
            retransmit_interval_ms: cfg.timeouts.retransmit_initial_ms,
            query_cursor: cfg.me,
            cfg,
            quorums,
            signer,
            regency: 0,
            last_executed: 0,
            next_cid_to_propose: 1,
            instances: BTreeMap::new(),
            log: BTreeMap::new(),
            executing: VecDeque::new(),
            deadlines: BTreeMap::new(),
            emitted_deadlines: BTreeMap::new(),
            next_query_allowed_ms: 0,
            stop_for: BTreeMap::new(),
            my_stop: None,
            phase: Phase::Normal,
            my_stopdata: None,
            collected: BTreeMap::new(),
            current_sync: None,
            change_failures: 0,
            next_sync_query_allowed_ms: 0,
            next_help_ms: BTreeMap::new(),
            state_fetches_served: BTreeMap::new(),
            last_catch_up_ms: None,
            checkpoint: None,
            own_checkpoints: BTreeMap::new(),
            announcements: BTreeMap::new(),
            checkpoint_barrier: None,
            snapshot_clients: None,
            transfer: None,
            highest_seen_cid: 0,
            leader_progress: None,
            rejoin: Rejoin::Done,
            stats: EngineStats::default(),
        }
    }

    pub fn id(&self) -> ReplicaId {
        self.me
    }
    pub fn regency(&self) -> Regency {
        self.regency
    }
    pub fn leader(&self) -> ReplicaId {
        self.quorums.leader_of(self.regency)
    }
    pub fn is_leader(&self) -> bool {
        self.leader() == self.me
    }
    pub fn last_executed(&self) -> Cid {
        self.last_executed
    }
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }
    pub fn pending_requests(&self) -> usize {
        self.pool.len()
    }
    pub fn quorums(&self) -> &Quorums {
        &self.quorums
    }
    /// Instances held in memory, decided or not (bounded by `max_instances_ahead`).
    pub fn open_instances(&self) -> usize {
        self.instances.len()
    }
    pub fn log_len(&self) -> usize {
        self.log.len()
    }
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Counts a rejection; the driver logs it.
    pub fn count_rejection(&mut self, rejection: &Rejection) {
        *self.stats.rejections.entry(rejection.name()).or_default() += 1;
    }

    /// Rebuilds a replica from what it persisted before a crash, in the order it persisted
    /// it. Returns the engine and the actions that rebuild the service: a `Restore` of the
    /// latest checkpoint and the `Execute`s of the decisions after it. The driver performs
    /// them, then calls [`Engine::start`].
    ///
    /// The restarted replica keeps every promise it made: its regency, its votes and its
    /// prepared values. In a regency above 0 it waits for that regency's SYNC before voting on
    /// new proposals, and a restarted leader never proposes again in a cid it already voted in.
    pub fn recover(
        cfg: EngineConfig,
        signer: Arc<dyn Signer>,
        records: impl IntoIterator<Item = PersistRecord>,
    ) -> Result<(Engine, Vec<Action>), String> {
        let mut engine = Engine::new(cfg, signer);
        let mut actions = Vec::new();
        let mut checkpoint: Option<Checkpoint> = None;
        let mut decisions = BTreeMap::new();
        let mut prepared: BTreeMap<Cid, PreparedProof> = BTreeMap::new();
        let mut votes = Vec::new();
        for record in records {
            match record {
                PersistRecord::Checkpoint(c) => {
                    if checkpoint.as_ref().is_none_or(|old| c.cid > old.cid) {
                        checkpoint = Some(c);
                    }
                }
                PersistRecord::Regency(r) => engine.regency = engine.regency.max(r),
                PersistRecord::Decided(d) => {
                    decisions.insert(d.cid, d);
                }
                PersistRecord::Prepared(p) => {
                    if prepared.get(&p.cid).is_none_or(|old| p.epoch >= old.epoch) {
                        prepared.insert(p.cid, p);
                    }
                }
                PersistRecord::Vote(v) => votes.push(v),
            }
        }
        if let Some(c) = checkpoint {
            let (c, contents) = Checkpoint::from_bytes(c.data, c.decided)
                .map_err(|e| format!("stored checkpoint is unreadable: {e}"))?;
            actions.push(Action::Restore {
                cid: c.cid,
                snapshot: contents.service,
            });
            engine.clients = contents.clients;
            engine.last_executed = c.cid;
            engine.checkpoint = Some(c);
        }
        let base = engine.last_executed;
        let mut highest_voted = base;
        for (cid, p) in prepared.into_iter().filter(|(cid, _)| *cid > base) {
            engine.instances.entry(cid).or_default().prepared = Some(p);
        }
        for v in votes.into_iter().filter(|v| v.cid > base) {
            highest_voted = highest_voted.max(v.cid);
            if v.regency != engine.regency {
                continue;
            }
            let signed = Signed::new(v, engine.signer.as_deref());
            let instance = engine.instances.entry(v.cid).or_default();
            match v.kind {
                VoteKind::Write => {
                    instance.my_write = Some(signed.clone());
                    instance.writes.insert(engine.me, signed);
                }
                VoteKind::Accept => {
                    instance.my_accept = Some(signed.clone());
                    instance.accepts.insert(engine.me, signed);
                }
            }
        }
        for (cid, d) in decisions.into_iter().filter(|(cid, _)| *cid > base) {
            engine.instances.entry(cid).or_default().decided = Some(d);
        }
        engine.stop_for.insert(engine.me, engine.regency);
        engine.next_cid_to_propose = highest_voted + 1;
        if engine.regency > 0 {
            engine.phase = Phase::Syncing;
            actions.push(Action::Broadcast(Message::SyncQuery));
        }
        engine.execute_ready(0, &mut actions);
        Ok((engine, actions))
    }

    /// A replica that lost its durable state (a wiped disk, or a restarted in-memory replica)
    /// and may have voted before, forgetting it. It stays silent (no votes, no STOPDATA, no
    /// proposals) until every instance it can have voted in is decided and executed here:
    /// it asks n-f peers how far they have voted, and catches up one window past the highest
    /// answer (see `Engine::participates`). A brand-new replica of a brand-new cluster uses
    /// [`Engine::new`] instead.
    pub fn rejoin(cfg: EngineConfig, signer: Arc<dyn Signer>) -> (Engine, Vec<Action>) {
        let mut engine = Engine::new(cfg, signer);
        engine.rejoin = Rejoin::Collecting(BTreeMap::new());
        (engine, vec![Action::Broadcast(Message::StateQuery)])
    }

    /// Whether this replica is still rejoining (see [`Engine::rejoin`]).
    pub fn is_rejoining(&self) -> bool {
        !self.participates()
    }

    /// Arms the periodic timers. Call once after construction.
    pub fn start(&mut self, now_ms: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        // A recovered replica may have open instances or a rejoin to drive.
        self.arm_retransmit(now_ms);
        self.deadlines.insert(
            TimerKind::Heartbeat,
            now_ms + self.cfg.timeouts.heartbeat_ms,
        );
        self.sync_timers(&mut actions);
        actions
    }

    /// Handles a verified message. A rejection is counted here and returned for logging.
    pub fn on_message(&mut self, now_ms: u64, message: Verified) -> Result<Vec<Action>, Rejection> {
        let mut actions = Vec::new();
        let result = self.dispatch(now_ms, message, &mut actions);
        if let Err(rejection) = &result {
            self.count_rejection(rejection);
        }
        self.sync_timers(&mut actions);
        result.map(|()| actions)
    }

    fn dispatch(
        &mut self,
        now_ms: u64,
        verified: Verified,
        actions: &mut Vec<Action>,
    ) -> Result<(), Rejection> {
        let Verified { from, message } = verified;
        match (from, message) {
            (Peer::Client(_), Message::Request(request)) => {
                self.handle_request(now_ms, request, true, actions)
            }
            (Peer::Replica(j), Message::Forward(requests)) => {
                if !self.is_leader() {
                    return Err(Rejection::NotLeader);
                }
                let _ = j;
                for request in requests {
                    // A forwarded request may be stale or already pending; neither is the
                    // forwarder's fault.
                    match self.handle_request(now_ms, request, false, actions) {
                        Ok(()) | Err(Rejection::StaleRequest) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
            (Peer::Replica(j), Message::Propose(p)) => self.handle_propose(now_ms, j, p, actions),
            (Peer::Replica(j), Message::Write(v)) => self.handle_vote(now_ms, j, v, actions),
            (Peer::Replica(j), Message::Accept(v)) => self.handle_vote(now_ms, j, v, actions),
            (Peer::Replica(j), Message::DecisionQuery { from_cid }) => {
                self.handle_decision_query(j, from_cid, actions);
                Ok(())
            }
            (Peer::Replica(j), Message::Decisions(decisions)) => {
                let before = self.last_executed;
                let full = decisions.len() >= self.cfg.limits.max_decisions_per_reply;
                for decision in decisions {
                    self.learn_decision(now_ms, decision, actions);
                }
                if self.last_executed > before {
                    self.last_catch_up_ms = Some(now_ms);
                    // A full answer means the peer probably has more: keep the catch-up going
                    // without waiting for a timer.
                    if full {
                        self.next_query_allowed_ms = 0;
                        self.maybe_query(now_ms, j, actions);
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
                    self.request_sync(now_ms, j, actions);
                } else if regency < self.regency {
                    self.help_stale_peer(now_ms, j, actions);
                } else if j == self.leader() {
                    if self.leader_progress.is_none_or(|(d, _)| last_decided > d) {
                        self.leader_progress = Some((last_decided, now_ms));
                    }
                    if last_decided > self.last_executed {
                        self.highest_seen_cid = self.highest_seen_cid.max(last_decided);
                        self.maybe_query(now_ms, j, actions);
                    }
                }
                Ok(())
            }
            (Peer::Replica(j), Message::Stop(stop)) => self.handle_stop(now_ms, j, stop, actions),
            (Peer::Replica(j), Message::StopData(sd)) => {
                self.handle_stopdata(now_ms, j, sd, actions)
            }
            (Peer::Replica(_), Message::Sync(sync)) => {
                self.handle_sync(now_ms, sync, actions);
                Ok(())
            }
            (Peer::Replica(j), Message::SyncQuery) => {
                self.help_stale_peer(now_ms, j, actions);
                Ok(())
            }
            (Peer::Replica(j), Message::StateQuery) => {
                actions.push(Action::Send {
                    to: Peer::Replica(j),
                    message: self.state_info(),
                });
                Ok(())
            }
            (
                Peer::Replica(j),
                Message::StateInfo {
                    checkpoints,
                    voted_up_to,
                },
            ) => {
                self.note_rejoin_report(now_ms, j, voted_up_to, actions);
                self.handle_state_info(now_ms, j, checkpoints, actions);
                Ok(())
            }
            (Peer::Replica(j), Message::CheckpointAnnounce { cid, digest }) => {
                self.note_announcement(j, cid, digest);
                self.check_stable();
                Ok(())
            }
            (Peer::Replica(j), Message::StateFetch { cid, offset }) => {
                self.handle_state_fetch(now_ms, j, cid, offset, actions)
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
                actions,
            ),
            (_, message) => Err(Rejection::UnexpectedMessage(message.kind_name())),
        }
    }

    // ----- requests -------------------------------------------------------------------------

    fn handle_request(
        &mut self,
        now_ms: u64,
        request: Request,
        direct: bool,
        actions: &mut Vec<Action>,
    ) -> Result<(), Rejection> {
        let id = request.id();
        if request.body.kind == RequestKind::Unordered {
            if direct {
                actions.push(Action::Query {
                    id,
                    op: request.body.op,
                });
            }
            return Ok(());
        }
        match self.clients.status(&id) {
            RequestStatus::Executed(Some(result)) => {
                if direct {
                    actions.push(Action::Send {
                        to: Peer::Client(id.client),
                        message: Message::Reply(self.reply(id, result.to_vec())),
                    });
                }
                return Ok(());
            }
            RequestStatus::Executed(None) => return Ok(()),
            RequestStatus::Stale => return Err(Rejection::StaleRequest),
            RequestStatus::New => {}
        }
        match self.pool.insert(request, now_ms) {
            Ok(Inserted::New) => {
                if self.is_leader() {
                    self.try_propose(now_ms, actions);
                }
                self.arm_request_timer();
                Ok(())
            }
            Ok(Inserted::AlreadyPending) => Ok(()),
            Err(PoolRejection::ClientFull) => Err(Rejection::ClientPoolFull),
            Err(PoolRejection::PoolFull) => Err(Rejection::PoolFull),
        }
    }

    fn reply(&self, id: RequestId, result: Vec<u8>) -> Reply {
        Reply {
            replica: self.me,
            client: id.client,
            seq: id.seq,
            regency: self.regency,
            result,
        }
    }

    fn arm_request_timer(&mut self) {
        match self.pool.oldest_arrival_ms() {
            Some(t) => {
                self.deadlines
                    .insert(TimerKind::Request, t + self.cfg.timeouts.request_timeout_ms);
            }
            None => {
                self.deadlines.remove(&TimerKind::Request);
            }
        }
    }

    // ----- leader: proposing ----------------------------------------------------------------

    fn in_flight(&self) -> u64 {
        self.next_cid_to_propose
            .saturating_sub(self.last_executed + 1)
    }

    /// Adaptive batching, where instances are expensive. With no instance in flight, whatever is
    /// pending is proposed at once, so a lightly loaded cluster answers as fast as it can. With k
    /// instances already in flight, another one starts only if it can carry at least
    /// k × `max_batch_requests / 16` requests. In modes that sign replica messages (BFT) every
    /// instance costs a signed PROPOSE, and at every replica two signed votes and seven signature
    /// checks. Under moderate load, requests therefore wait for the running instance and go out
    /// together in a larger batch, while heavy load still fills the window. On the 2-core
    /// benchmark machine BFT is CPU-bound at every load, and a window of 4 spent a third of its
    /// CPU on instances of 1.5 requests when one client had 8 requests in flight. CFT instances
    /// cost no signatures, so CFT keeps proposing at once up to the window.
    fn worth_another_instance(&self) -> bool {
        if !self.quorums.requires_signatures() {
            return true;
        }
        let in_flight = self.in_flight();
        let step = (self.cfg.limits.max_batch_requests as u64 / 16).max(1);
        in_flight == 0 || self.pool.unproposed() as u64 >= in_flight.saturating_mul(step)
    }

    fn try_propose(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        if !self.is_leader() || self.phase != Phase::Normal || !self.participates() {
            return;
        }
        // A leader that learned decisions from peers must not propose into decided cids.
        self.next_cid_to_propose = self.next_cid_to_propose.max(self.last_executed + 1);
        while self.pool.unproposed() > 0
            && self.in_flight() < self.cfg.limits.max_instances_in_flight
            && self.worth_another_instance()
        {
            let cid = self.next_cid_to_propose;
            if self
                .instances
                .get(&cid)
                .is_some_and(|i| i.proposal.is_some() || i.decided.is_some())
            {
                // Already proposed here (or decided via a peer); move on.
                self.next_cid_to_propose += 1;
                continue;
            }
            let requests = self.pool.cut_batch(
                cid,
                self.cfg.limits.max_batch_requests,
                self.cfg.limits.max_batch_bytes,
            );
            assert!(
                !requests.is_empty(),
                "pool reported unproposed requests but cut none"
            );
            let propose = Signed::new(
                Propose {
                    leader: self.me,
                    cid,
                    regency: self.regency,
                    batch: Batch { requests },
                },
                self.signer.as_deref(),
            );
            self.next_cid_to_propose += 1;
            self.stats.proposals_sent += 1;
            actions.push(Action::Broadcast(Message::Propose(propose.clone())));
            let batch = propose.body.batch.clone();
            self.accept_proposal(now_ms, cid, batch, Some(propose), actions);
        }
    }

    // ----- consensus ------------------------------------------------------------------------

    /// Checks the regency and cid window of a replica message. `Ok(false)` means the message
    /// is about an instance this replica already executed: the sender is behind.
    fn check_instance(&mut self, cid: Cid, regency: Regency) -> Result<bool, Rejection> {
        if regency == self.regency {
            self.highest_seen_cid = self.highest_seen_cid.max(cid);
        }
        if regency < self.regency {
            return Err(Rejection::StaleRegency {
                got: regency,
                current: self.regency,
            });
        }
        if regency > self.regency {
            return Err(Rejection::FutureRegency {
                got: regency,
                current: self.regency,
            });
        }
        if cid <= self.last_executed {
            return Ok(false);
        }
        let window_end = self.last_executed + self.cfg.limits.max_instances_ahead;
        if cid > window_end {
            return Err(Rejection::CidBeyondWindow { cid, window_end });
        }
        Ok(true)
    }

    /// A peer sent something about a cid we executed long ago: send it the decision, so that
    /// it catches up without waiting for a query.
    fn help_peer_behind(&mut self, peer: ReplicaId, cid: Cid, actions: &mut Vec<Action>) {
        if let Some(decision) = self.log.get(&cid) {
            actions.push(Action::Send {
                to: Peer::Replica(peer),
                message: Message::Decisions(vec![decision.clone()]),
            });
        }
    }

    fn handle_propose(
        &mut self,
        now_ms: u64,
        from: ReplicaId,
        propose: Signed<Propose>,
        actions: &mut Vec<Action>,
    ) -> Result<(), Rejection> {
        let p = &propose.body;
        let leader = self.quorums.leader_of(p.regency);
        if from != leader {
            return Err(Rejection::WrongLeader {
                from,
                regency: p.regency,
                leader,
            });
        }
        match self.check_instance(p.cid, p.regency) {
            Ok(true) => {}
            Ok(false) => {
                self.help_peer_behind(from, p.cid, actions);
                return Ok(());
            }
            Err(e) => return Err(self.on_instance_rejection(now_ms, from, e, actions)),
        }
        if self.phase != Phase::Normal {
            // A proposal before this replica applied the regency's SYNC could conflict with
            // a value the SYNC fixes; the leader resends it.
            return Err(Rejection::SyncInProgress);
        }
        let cid = p.cid;
        if let Some(existing) = self.instances.get(&cid).and_then(|i| i.proposal.as_ref()) {
            if existing.digest != propose.body.batch.digest() {
                return Err(Rejection::Equivocation {
                    replica: from,
                    cid,
                    what: "proposals",
                });
            }
            return Ok(());
        }
        let batch = propose.body.batch.clone();
        self.accept_proposal(now_ms, cid, batch, Some(propose), actions);
        Ok(())
    }

    /// Records the value for `cid` in the current regency (from a PROPOSE or a SYNC) and casts
    /// this replica's first vote on it.
    fn accept_proposal(
        &mut self,
        now_ms: u64,
        cid: Cid,
        batch: Batch,
        signed: Option<Signed<Propose>>,
        actions: &mut Vec<Action>,
    ) {
        if !self.participates() {
            return;
        }
        let digest = batch.digest();
        let regency = self.regency;
        let runs_write = self.quorums.runs_write_phase();
        let instance = self.instances.entry(cid).or_default();
        if instance.decided.is_some() || instance.proposal.is_some() {
            return;
        }
        // A vote cast before a restart binds this replica: never vote for another value in
        // the same instance and regency.
        let voted_other = [&instance.my_write, &instance.my_accept]
            .into_iter()
            .flatten()
            .any(|v| v.body.regency == regency && v.body.digest != digest);
        if voted_other {
            return;
        }
        if !runs_write {
            // CFT accepts straight away: the accepted value is its prepared value.
            instance.prepared = Some(PreparedProof {
                cid,
                epoch: regency,
                batch: batch.clone(),
                writes: Vec::new(),
            });
        }
        instance.proposal = Some(Proposal {
            digest,
            batch,
            signed,
        });
        let kind = if runs_write {
            VoteKind::Write
        } else {
            VoteKind::Accept
        };
        self.cast_vote(now_ms, cid, kind, digest, actions);
        self.arm_retransmit(now_ms);
    }

    fn cast_vote(
        &mut self,
        now_ms: u64,
        cid: Cid,
        kind: VoteKind,
        digest: Digest,
        actions: &mut Vec<Action>,
    ) {
        let vote = Vote {
            kind,
            replica: self.me,
            cid,
            regency: self.regency,
            digest,
        };
        let signed = Signed::new(vote, self.signer.as_deref());
        if kind == VoteKind::Accept {
            if let Some(prepared) = self.instances.get(&cid).and_then(|i| i.prepared.clone()) {
                actions.push(Action::Persist(PersistRecord::Prepared(prepared)));
            }
        }
        actions.push(Action::Persist(PersistRecord::Vote(vote)));
        let message = match kind {
            VoteKind::Write => Message::Write(signed.clone()),
            VoteKind::Accept => Message::Accept(signed.clone()),
        };
        actions.push(Action::Broadcast(message));
        let instance = self
            .instances
            .get_mut(&cid)
            .expect("voting on a known instance");
        match kind {
            VoteKind::Write => {
                instance.my_write = Some(signed.clone());
                instance.writes.insert(self.me, signed);
                self.check_writes(now_ms, cid, actions);
            }
            VoteKind::Accept => {
                instance.my_accept = Some(signed.clone());
                instance.accepts.insert(self.me, signed);
                self.check_accepts(now_ms, cid, actions);
            }
        }
    }

    fn handle_vote(
        &mut self,
        now_ms: u64,
        from: ReplicaId,
        vote: Signed<Vote>,
        actions: &mut Vec<Action>,
    ) -> Result<(), Rejection> {
        let v = vote.body;
        match self.check_instance(v.cid, v.regency) {
            Ok(true) => {}
            // Late votes for executed instances are normal (only Q of n are needed). A peer
            // that is really behind asks with a DecisionQuery when its retransmit timer fires.
            Ok(false) => return Ok(()),
            Err(e) => return Err(self.on_instance_rejection(now_ms, from, e, actions)),
        }
        let instance = self.instances.entry(v.cid).or_default();
        if instance.decided.is_some() {
            return Ok(());
        }
        let (votes, what) = match v.kind {
            VoteKind::Write => (&mut instance.writes, "writes"),
            VoteKind::Accept => (&mut instance.accepts, "accepts"),
        };
        if let Some(existing) = votes.get(&from) {
            if existing.body.digest != v.digest {
                return Err(Rejection::Equivocation {
                    replica: from,
                    cid: v.cid,
                    what,
                });
            }
            return Ok(());
        }
        votes.insert(from, vote);
        self.arm_retransmit(now_ms);
        match v.kind {
            VoteKind::Write => self.check_writes(now_ms, v.cid, actions),
            VoteKind::Accept => self.check_accepts(now_ms, v.cid, actions),
        }
        Ok(())
    }

    /// BFT: after this replica's own WRITE for h and Q matching WRITEs, it accepts h.
    fn check_writes(&mut self, now_ms: u64, cid: Cid, actions: &mut Vec<Action>) {
        let needed = self
            .quorums
            .writes_to_accept()
            .expect("WRITEs only exist in BFT");
        let Some(instance) = self.instances.get_mut(&cid) else {
            return;
        };
        let Some(my_write) = &instance.my_write else {
            return;
        };
        if instance.my_accept.is_some() {
            return;
        }
        let digest = my_write.body.digest;
        let matching: Vec<Signed<Vote>> = instance
            .writes
            .values()
            .filter(|w| w.body.digest == digest)
            .cloned()
            .collect();
        if matching.len() < needed {
            return;
        }
        // After a restart the WRITE may be remembered without the batch it was for; accepting
        // needs the batch (STOPDATA must be able to re-propose it), so wait for a resend.
        let Some(batch) = instance.proposal.as_ref().map(|p| p.batch.clone()) else {
            return;
        };
        instance.prepared = Some(PreparedProof {
            cid,
            epoch: self.regency,
            batch,
            writes: matching,
        });
        self.cast_vote(now_ms, cid, VoteKind::Accept, digest, actions);
    }

    /// Q matching ACCEPTs decide, once the batch with that digest is known.
    fn check_accepts(&mut self, now_ms: u64, cid: Cid, actions: &mut Vec<Action>) {
        let needed = self.quorums.accepts_to_decide();
        let Some(instance) = self.instances.get(&cid) else {
            return;
        };
        if instance.decided.is_some() {
            return;
        }
        let mut by_digest: BTreeMap<Digest, Vec<&Signed<Vote>>> = BTreeMap::new();
        for accept in instance.accepts.values() {
            by_digest
                .entry(accept.body.digest)
                .or_default()
                .push(accept);
        }
        let Some((digest, certificate)) = by_digest.into_iter().find(|(_, v)| v.len() >= needed)
        else {
            return;
        };
        let certificate: Vec<Signed<Vote>> = certificate.into_iter().cloned().collect();
        match &instance.proposal {
            Some(p) if p.digest == digest => {
                let decision = Decision {
                    cid,
                    batch: p.batch.clone(),
                    certificate,
                };
                self.decide(now_ms, decision, actions);
            }
            // Decided, but this replica never saw the batch (or saw another one): fetch the
            // certified decision from a peer that accepted it.
            _ => {
                let peer = certificate
                    .iter()
                    .map(|a| a.body.replica)
                    .find(|r| *r != self.me)
                    .unwrap_or(self.leader());
                self.maybe_query(now_ms, peer, actions);
            }
        }
    }

    fn decide(&mut self, now_ms: u64, decision: Decision, actions: &mut Vec<Action>) {
        let cid = decision.cid;
        let instance = self.instances.entry(cid).or_default();
        if instance.decided.is_some() {
            return;
        }
        actions.push(Action::Persist(PersistRecord::Decided(decision.clone())));
        instance.decided = Some(decision);
        self.stats.decided_instances += 1;
        self.execute_ready(now_ms, actions);
    }

    /// A certified decision learned from a peer (already verified).
    fn learn_decision(&mut self, now_ms: u64, decision: Decision, actions: &mut Vec<Action>) {
        let cid = decision.cid;
        if cid <= self.last_executed
            || cid > self.last_executed + self.cfg.limits.max_instances_ahead
        {
            return;
        }
        if self
            .instances
            .get(&cid)
            .is_some_and(|i| i.decided.is_some())
        {
            return;
        }
        self.stats.decisions_learned_from_peers += 1;
        self.decide(now_ms, decision, actions);
    }

    /// Hands every decided instance that is next in cid order to the service.
    fn execute_ready(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        let mut progressed = false;
        // A checkpoint is a barrier: the next batch waits until the checkpointed one has
        // executed, so that the client table captured with it matches the service state.
        while self.checkpoint_barrier.is_none()
            && self
                .instances
                .get(&(self.last_executed + 1))
                .is_some_and(|i| i.decided.is_some())
        {
            let cid = self.last_executed + 1;
            let instance = self.instances.remove(&cid).expect("checked above");
            let my_proposal = instance.proposal.as_ref().map(|p| p.digest);
            let decision = instance.decided.expect("checked above");
            let decided_digest = decision.certificate.first().map(|a| a.body.digest);
            let mut items = Vec::with_capacity(decision.batch.requests.len());
            let mut ids = Vec::with_capacity(decision.batch.requests.len());
            for request in &decision.batch.requests {
                let id = request.id();
                self.pool.remove(&id);
                if self.clients.status(&id) != RequestStatus::New {
                    self.stats.skipped_duplicates += 1;
                    continue;
                }
                if let Some(floor) = self.clients.mark_executing(&id) {
                    self.pool.remove_up_to(&id.client, floor);
                }
                ids.push(id);
                items.push(ExecuteItem {
                    id,
                    op: request.body.op.clone(),
                });
            }
            self.stats.executed_requests += items.len() as u64;
            self.executing.push_back((cid, ids));
            actions.push(Action::Execute { cid, items });
            self.last_executed = cid;
            // The leader's requests proposed in an instance decided with another batch (only
            // possible across leader changes) become proposable again.
            if self.is_leader() && my_proposal.is_some() && my_proposal != decided_digest {
                self.pool.unmark_proposed(cid);
            }
            self.log.insert(cid, decision);
            // Checkpoints truncate the log once they are stable; this cap bounds it even if
            // they never become stable (a quorum that stopped announcing).
            while self.log.len() > self.cfg.limits.max_log_entries {
                self.log.pop_first();
            }
            if cid.is_multiple_of(self.cfg.limits.checkpoint_period) {
                self.checkpoint_barrier = Some(cid);
            }
            progressed = true;
        }
        if progressed {
            // Decisions may overtake a transfer.
            if self.transfer.as_ref().is_some_and(|t| {
                t.target
                    .is_some_and(|(cid, _, _)| cid <= self.last_executed)
            }) {
                self.transfer = None;
            }
            self.check_rejoined(now_ms, actions);
            if self.phase == Phase::Normal {
                self.change_failures = 0;
            }
            self.retransmit_interval_ms = self.cfg.timeouts.retransmit_initial_ms;
            self.deadlines.remove(&TimerKind::Retransmit);
            self.arm_retransmit(now_ms);
            self.arm_request_timer();
            self.try_propose(now_ms, actions);
        }
    }

    /// The service finished the batch of `cid`: cache the replies and send them.
    pub fn on_executed(&mut self, _now_ms: u64, cid: Cid, results: Vec<Vec<u8>>) -> Vec<Action> {
        let (expected_cid, ids) = self
            .executing
            .pop_front()
            .expect("on_executed called with no batch executing");
        assert_eq!(expected_cid, cid, "batches must complete in cid order");
        assert_eq!(ids.len(), results.len(), "one result per executed request");
        let mut actions = Vec::with_capacity(ids.len());
        for (id, result) in ids.into_iter().zip(results) {
            self.clients.record_reply(&id, result.clone());
            actions.push(Action::Send {
                to: Peer::Client(id.client),
                message: Message::Reply(self.reply(id, result)),
            });
        }
        if self.checkpoint_barrier == Some(cid) && self.executing.is_empty() {
            // Everything up to `cid` has executed and nothing after it: the client table is
            // exactly the one that goes with the service state at `cid`. Execution resumes
            // once the snapshot is in, so the log never outgrows two periods.
            self.snapshot_clients = Some((cid, self.clients.clone()));
            actions.push(Action::TakeSnapshot { cid });
        }
        actions
    }

    /// The service's snapshot at `cid` (after [`Action::TakeSnapshot`]): completes the
    /// checkpoint, persists it and truncates the log.
    ///
    /// A snapshot nobody waits for any more is dropped: a state transfer installed a newer
    /// checkpoint (and cleared the request) while the service was taking it.
    pub fn on_snapshot(&mut self, now_ms: u64, cid: Cid, snapshot: Vec<u8>) -> Vec<Action> {
        let Some((expected, clients)) = self.snapshot_clients.take() else {
            return Vec::new();
        };
        if expected != cid {
            self.snapshot_clients = Some((expected, clients));
            return Vec::new();
        }
        // The barrier held execution at `cid`, and the newest decision is always in the log.
        let decided = self
            .decision_proof(cid)
            .expect("the checkpointed decision is in the log");
        let checkpoint = Checkpoint::new(
            &CheckpointData {
                cid,
                service: snapshot,
                clients,
            },
            decided,
        );
        let mut actions = vec![
            Action::Persist(PersistRecord::Checkpoint(checkpoint.clone())),
            Action::Broadcast(Message::CheckpointAnnounce {
                cid,
                digest: checkpoint.digest,
            }),
        ];
        self.note_announcement(self.me, cid, checkpoint.digest);
        self.own_checkpoints.insert(cid, checkpoint);
        while self.own_checkpoints.len() > crate::verify::MAX_REPORTED_CHECKPOINTS - 1 {
            self.own_checkpoints.pop_first();
        }
        self.check_stable();
        self.checkpoint_barrier = None;
        self.execute_ready(now_ms, &mut actions);
        self.sync_timers(&mut actions);
        actions
    }

    fn note_announcement(&mut self, from: ReplicaId, cid: Cid, digest: Digest) {
        // Only checkpoints that can still become stable, and not arbitrarily far ahead.
        let horizon = self.last_executed
            + self.cfg.limits.max_instances_ahead
            + 4 * self.cfg.limits.checkpoint_period;
        if cid <= self.last_checkpoint()
            || cid > horizon
            || !cid.is_multiple_of(self.cfg.limits.checkpoint_period)
        {
            return;
        }
        self.announcements
            .entry(cid)
            .or_default()
            .insert(from, digest);
    }

    /// Makes the newest own checkpoint that a quorum announced identically the stable one.
    fn check_stable(&mut self) {
        let quorum = self.quorums.quorum();
        let stable = self.own_checkpoints.iter().rev().find(|(cid, c)| {
            self.announcements
                .get(cid)
                .is_some_and(|a| a.values().filter(|d| **d == c.digest).count() >= quorum)
        });
        if let Some((cid, _)) = stable {
            let cid = *cid;
            let checkpoint = self.own_checkpoints.remove(&cid).expect("found above");
            self.make_stable(checkpoint);
        }
    }

    /// What this replica tells a peer asking about its state.
    fn state_info(&self) -> Message {
        let voted = self
            .instances
            .iter()
            .filter(|(_, i)| i.my_write.is_some() || i.my_accept.is_some() || i.prepared.is_some())
            .map(|(cid, _)| *cid)
            .max()
            .unwrap_or(0);
        Message::StateInfo {
            checkpoints: self
                .checkpoint
                .iter()
                .chain(self.own_checkpoints.values())
                .map(|c| (c.cid, c.digest))
                .collect(),
            voted_up_to: voted.max(self.last_executed),
        }
    }

    /// Whether this replica may vote, lead, or report to a new leader. A replica that lost its
    /// disk may have voted before and forgotten it; it stays silent until every instance it can
    /// have voted in is decided and executed here.
    fn participates(&self) -> bool {
        matches!(self.rejoin, Rejoin::Done)
    }

    /// A rejoining replica collects n-f reports of how far each peer has executed or voted.
    /// Any instance it can have voted in before losing its disk is at most one window past an
    /// instance it had executed; that instance was accepted by Q replicas, at least one of which
    /// is among any n-f others, so the highest report plus a window bounds it.
    fn note_rejoin_report(
        &mut self,
        now_ms: u64,
        from: ReplicaId,
        voted_up_to: Cid,
        actions: &mut Vec<Action>,
    ) {
        let Rejoin::Collecting(reports) = &mut self.rejoin else {
            return;
        };
        reports.insert(from, voted_up_to);
        if reports.len() < self.quorums.stopdata_to_collect() {
            return;
        }
        let highest = reports.values().copied().max().unwrap_or(0);
        // Nobody has voted anywhere: a brand-new cluster, nothing to forget.
        let horizon = if highest == 0 {
            0
        } else {
            highest + self.cfg.limits.max_instances_ahead
        };
        self.rejoin = Rejoin::CatchingUp(horizon);
        self.check_rejoined(now_ms, actions);
    }

    fn check_rejoined(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        if let Rejoin::CatchingUp(horizon) = self.rejoin {
            if self.last_executed >= horizon {
                self.rejoin = Rejoin::Done;
                // Whatever it saw while silent is void; it learns the regency from its peers.
                for instance in self.instances.values_mut() {
                    instance.proposal = None;
                }
                let leader = self.leader();
                self.request_sync(now_ms, leader, actions);
                self.try_propose(now_ms, actions);
            }
        }
    }

    /// Makes `checkpoint` the stable one and forgets what it covers, keeping one period of
    /// decisions before it for peers that are only a little behind.
    fn make_stable(&mut self, checkpoint: Checkpoint) {
        let cid = checkpoint.cid;
        self.own_checkpoints = self.own_checkpoints.split_off(&(cid + 1));
        self.announcements = self.announcements.split_off(&(cid + 1));
        // A stable checkpoint is held by a quorum, so a peer that needs older decisions can
        // transfer it instead.
        let keep_from = cid + 1;
        self.log = self.log.split_off(&keep_from);
        self.checkpoint = Some(checkpoint);
    }

    /// Everything a store must keep after compacting at a checkpoint at `cid`: the regency,
    /// and the decisions, prepared values and votes of later instances.
    pub fn durable_records_after(&self, cid: Cid) -> Vec<PersistRecord> {
        let mut records = vec![PersistRecord::Regency(self.regency)];
        records.extend(
            self.log
                .range(cid + 1..)
                .map(|(_, d)| PersistRecord::Decided(d.clone())),
        );
        for (c, instance) in self.instances.range(cid + 1..) {
            if let Some(d) = &instance.decided {
                records.push(PersistRecord::Decided(d.clone()));
            }
            if let Some(p) = &instance.prepared {
                records.push(PersistRecord::Prepared(p.clone()));
            }
            for vote in [&instance.my_write, &instance.my_accept]
                .into_iter()
                .flatten()
            {
                debug_assert_eq!(vote.body.cid, *c);
                records.push(PersistRecord::Vote(vote.body));
            }
        }
        records
    }

    /// Proof that `cid` was decided, from the log or from the checkpoint at `cid`.
    fn decision_proof(&self, cid: Cid) -> Option<DecisionProof> {
        if let Some(d) = self.log.get(&cid) {
            return Some(DecisionProof {
                cid,
                digest: d.batch.digest(),
                certificate: d.certificate.clone(),
            });
        }
        self.checkpoint
            .iter()
            .chain(self.own_checkpoints.values())
            .find(|c| c.cid == cid)
            .map(|c| c.decided.clone())
    }

    /// Cid of the latest checkpoint (0 if none).
    pub fn last_checkpoint(&self) -> Cid {
        self.checkpoint.as_ref().map_or(0, |c| c.cid)
    }

    /// Builds the reply to an unordered request after the driver ran the query.
    pub fn query_reply(&self, id: RequestId, result: Vec<u8>) -> Action {
        Action::Send {
            to: Peer::Client(id.client),
            message: Message::Reply(self.reply(id, result)),
        }
    }

    // ----- catching up ----------------------------------------------------------------------

    fn handle_decision_query(&mut self, from: ReplicaId, from_cid: Cid, actions: &mut Vec<Action>) {
        let log_start = self
            .log
            .keys()
            .next()
            .copied()
            .unwrap_or(self.last_executed + 1);
        if from_cid < log_start {
            // Truncated away: the peer needs a checkpoint.
            if self.checkpoint.as_ref().is_some_and(|c| c.cid >= from_cid) {
                actions.push(Action::Send {
                    to: Peer::Replica(from),
                    message: self.state_info(),
                });
                return;
            }
        }
        let decisions: Vec<Decision> = self
            .log
            .range(from_cid.max(1)..)
            .take(self.cfg.limits.max_decisions_per_reply)
            .map(|(_, d)| d.clone())
            .collect();
        if !decisions.is_empty() {
            actions.push(Action::Send {
                to: Peer::Replica(from),
                message: Message::Decisions(decisions),
            });
        }
    }

    /// Asks `peer` for decisions after our last executed cid, at most once per retransmit
    /// interval so that a lying or repeated trigger cannot make us flood.
    fn maybe_query(&mut self, now_ms: u64, peer: ReplicaId, actions: &mut Vec<Action>) {
        if peer == self.me || now_ms < self.next_query_allowed_ms {
            return;
        }
        self.next_query_allowed_ms = now_ms + self.cfg.timeouts.retransmit_initial_ms;
        actions.push(Action::Send {
            to: Peer::Replica(peer),
            message: Message::DecisionQuery {
                from_cid: self.last_executed + 1,
            },
        });
    }

    fn next_query_peer(&mut self) -> ReplicaId {
        let n = self.quorums.n() as u32;
        self.query_cursor = (self.query_cursor + 1) % n;
        if self.query_cursor == self.me {
            self.query_cursor = (self.query_cursor + 1) % n;
        }
        self.query_cursor
    }

    // ----- synchronization phase (leader change) ---------------------------------------------

    /// Reacts to a stateful rejection of a replica message that says something about the
    /// sender: a future regency means we missed a leader change, a stale one that the sender
    /// did, and a cid beyond our window that we are behind.
    fn on_instance_rejection(
        &mut self,
        now_ms: u64,
        from: ReplicaId,
        rejection: Rejection,
        actions: &mut Vec<Action>,
    ) -> Rejection {
        match rejection {
            Rejection::FutureRegency { .. } => self.request_sync(now_ms, from, actions),
            Rejection::StaleRegency { .. } => self.help_stale_peer(now_ms, from, actions),
            Rejection::CidBeyondWindow { .. } => self.maybe_query(now_ms, from, actions),
            _ => {}
        }
        rejection
    }

    /// Asks `peer` for the SYNC of its regency, at most once per retransmit interval.
    fn request_sync(&mut self, now_ms: u64, peer: ReplicaId, actions: &mut Vec<Action>) {
        if peer == self.me || now_ms < self.next_sync_query_allowed_ms {
            return;
        }
        self.next_sync_query_allowed_ms = now_ms + self.cfg.timeouts.retransmit_initial_ms;
        actions.push(Action::Send {
            to: Peer::Replica(peer),
            message: Message::SyncQuery,
        });
    }

    /// Sends a peer that is in an older regency the SYNC that proves ours.
    fn help_stale_peer(&mut self, now_ms: u64, peer: ReplicaId, actions: &mut Vec<Action>) {
        // A SYNC can be large: at most one per peer per retransmit interval, however often a
        // (possibly Byzantine) peer asks.
        let next = self.next_help_ms.entry(peer).or_insert(0);
        if now_ms < *next {
            return;
        }
        *next = now_ms + self.cfg.timeouts.retransmit_initial_ms;
        if let Some(sync) = &self.current_sync {
            actions.push(Action::Send {
                to: Peer::Replica(peer),
                message: Message::Sync(sync.clone()),
            });
        }
    }

    fn change_timeout_ms(&self) -> u64 {
        self.cfg.timeouts.request_timeout_ms << self.change_failures.min(6)
    }

    /// Asks to move to regency `target` (never backwards) by broadcasting a STOP that carries
    /// the oldest pending requests, so that the next leader has them.
    fn start_leader_change(&mut self, now_ms: u64, target: Regency, actions: &mut Vec<Action>) {
        let mine = self.stop_for.get(&self.me).copied().unwrap_or(0);
        if target <= self.regency || target <= mine || !self.participates() {
            return;
        }
        self.stop_for.insert(self.me, target);
        let pending = self.pool.oldest(self.cfg.limits.max_batch_requests);
        let stop = Signed::new(
            Stop {
                replica: self.me,
                regency: target,
                from_regency: self.regency,
                pending,
            },
            self.signer.as_deref(),
        );
        self.stats.stops_sent += 1;
        actions.push(Action::Broadcast(Message::Stop(stop.clone())));
        self.my_stop = Some(stop);
        self.deadlines
            .insert(TimerKind::LeaderChange, now_ms + self.change_timeout_ms());
        self.arm_retransmit(now_ms);
        self.check_stops(now_ms, actions);
    }

    fn handle_stop(
        &mut self,
        now_ms: u64,
        from: ReplicaId,
        stop: Signed<Stop>,
        actions: &mut Vec<Action>,
    ) -> Result<(), Rejection> {
        let target = stop.body.regency;
        if target <= self.regency || stop.body.from_regency < self.regency {
            // The sender has not heard of our regency yet.
            self.help_stale_peer(now_ms, from, actions);
            return Ok(());
        }
        if target > self.regency.saturating_add(MAX_REGENCY_JUMP) {
            return Err(Rejection::Malformed(format!(
                "STOP for regency {target} is too far ahead"
            )));
        }
        let entry = self.stop_for.entry(from).or_insert(0);
        *entry = (*entry).max(target);
        for request in stop.body.pending {
            // Stale or already pending requests are fine; a full pool just drops them.
            let _ = self.handle_request(now_ms, request, false, actions);
        }
        self.check_stops(now_ms, actions);
        Ok(())
    }

    /// Joins a leader change that f+1 replicas asked for (one in CFT), and installs the regency
    /// that 2f+1 asked for (f+1 in CFT). A replica's STOP for r counts for every regency up to r.
    fn check_stops(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        let mut targets: Vec<Regency> = self
            .stop_for
            .values()
            .copied()
            .filter(|t| *t > self.regency)
            .collect();
        targets.sort_unstable_by(|a, b| b.cmp(a));
        let join = self.quorums.stops_to_join();
        if targets.len() >= join {
            let target = targets[join - 1];
            if target > self.stop_for.get(&self.me).copied().unwrap_or(0) {
                // start_leader_change calls back into check_stops with our own STOP counted.
                self.start_leader_change(now_ms, target, actions);
                return;
            }
        }
        let install = self.quorums.stops_to_install();
        if targets.len() >= install {
            let target = targets[install - 1];
            self.enter_regency(now_ms, target, actions);
            self.send_stopdata(now_ms, actions);
        }
    }

    /// Moves to `regency`: persists it first, forgets every vote of older regencies (keeping
    /// prepared proofs and decisions), and waits for the regency's SYNC.
    fn enter_regency(&mut self, now_ms: u64, regency: Regency, actions: &mut Vec<Action>) {
        assert!(regency > self.regency, "regency never decreases");
        actions.push(Action::Persist(PersistRecord::Regency(regency)));
        self.regency = regency;
        self.leader_progress = None;
        self.stats.regency_changes += 1;
        let mine = self.stop_for.entry(self.me).or_insert(0);
        *mine = (*mine).max(regency);
        if *mine <= regency {
            self.my_stop = None;
        }
        for instance in self.instances.values_mut() {
            instance.proposal = None;
            instance.writes.clear();
            instance.accepts.clear();
            instance.my_write = None;
            instance.my_accept = None;
        }
        self.pool.unmark_all_proposed();
        self.pool.restart_timers(now_ms);
        self.arm_request_timer();
        self.phase = Phase::Syncing;
        self.collected.clear();
        self.my_stopdata = None;
        self.deadlines
            .insert(TimerKind::LeaderChange, now_ms + self.change_timeout_ms());
    }

    /// Tells the leader of the newly installed regency what this replica decided and prepared.
    fn send_stopdata(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        if !self.participates() {
            return;
        }
        // Everything up to `last_executed` is decided, and this replica no longer reports
        // values for those cids: it must prove the decision, or a new leader could start below
        // it and re-open an instance this replica executed.
        let last_decided = self.decision_proof(self.last_executed);
        assert!(
            last_decided.is_some() || self.last_executed == 0,
            "no proof for the executed cid {}",
            self.last_executed
        );
        // Decided-but-unexecuted instances are reported too: this replica may be one of the
        // acceptors the value rule relies on.
        let prepared = self
            .instances
            .iter()
            .filter(|(cid, _)| **cid > self.last_executed)
            .filter_map(|(_, i)| i.prepared.clone())
            .collect();
        let stopdata = Signed::new(
            StopData {
                replica: self.me,
                regency: self.regency,
                last_decided,
                prepared,
            },
            self.signer.as_deref(),
        );
        self.my_stopdata = Some(stopdata.clone());
        self.arm_retransmit(now_ms);
        if self.is_leader() {
            self.collect_stopdata(now_ms, stopdata, actions);
        } else {
            actions.push(Action::Send {
                to: Peer::Replica(self.leader()),
                message: Message::StopData(stopdata),
            });
        }
    }

    fn handle_stopdata(
        &mut self,
        now_ms: u64,
        from: ReplicaId,
        stopdata: Signed<StopData>,
        actions: &mut Vec<Action>,
    ) -> Result<(), Rejection> {
        let regency = stopdata.body.regency;
        if regency < self.regency {
            self.help_stale_peer(now_ms, from, actions);
            return Ok(());
        }
        if regency > self.regency {
            // The sender installed a regency we have not: that counts as its STOP for it.
            if regency > self.regency.saturating_add(MAX_REGENCY_JUMP) {
                return Err(Rejection::Malformed(
                    "STOPDATA for a regency too far ahead".into(),
                ));
            }
            let entry = self.stop_for.entry(from).or_insert(0);
            *entry = (*entry).max(regency);
            self.check_stops(now_ms, actions);
            if regency != self.regency {
                return Ok(());
            }
        }
        if !self.is_leader() {
            return Err(Rejection::NotLeader);
        }
        if self.phase == Phase::Normal {
            // The sender missed our SYNC.
            self.help_stale_peer(now_ms, from, actions);
            return Ok(());
        }
        self.collect_stopdata(now_ms, stopdata, actions);
        Ok(())
    }

    /// New leader: with n-f STOPDATA, send SYNC and resume.
    fn collect_stopdata(
        &mut self,
        now_ms: u64,
        stopdata: Signed<StopData>,
        actions: &mut Vec<Action>,
    ) {
        self.collected.insert(stopdata.body.replica, stopdata);
        if self.collected.len() < self.quorums.stopdata_to_collect() {
            return;
        }
        let sync = Signed::new(
            Sync {
                leader: self.me,
                regency: self.regency,
                proofs: self.collected.values().cloned().collect(),
            },
            self.signer.as_deref(),
        );
        actions.push(Action::Broadcast(Message::Sync(sync.clone())));
        self.apply_sync(now_ms, sync, actions);
    }

    fn handle_sync(&mut self, now_ms: u64, sync: Signed<Sync>, actions: &mut Vec<Action>) {
        let regency = sync.body.regency;
        if regency < self.regency || (regency == self.regency && self.phase == Phase::Normal) {
            return;
        }
        if regency > self.regency {
            // A valid SYNC proves that n-f replicas installed its regency: adopt it.
            self.enter_regency(now_ms, regency, actions);
        }
        self.apply_sync(now_ms, sync, actions);
    }

    /// Resumes normal operation in the current regency with the values the SYNC fixes.
    fn apply_sync(&mut self, now_ms: u64, sync: Signed<Sync>, actions: &mut Vec<Action>) {
        assert_eq!(
            sync.body.regency, self.regency,
            "SYNC applies to the current regency"
        );
        let choice = choose(&sync.body.proofs);
        self.phase = Phase::Normal;
        self.current_sync = Some(sync);
        self.my_stopdata = None;
        self.my_stop = None;
        // This regency works for us now; a later failure asks for the next one afresh.
        self.stop_for.insert(self.me, self.regency);
        self.collected.clear();
        self.deadlines.remove(&TimerKind::LeaderChange);
        let window_end = self.last_executed + self.cfg.limits.max_instances_ahead;
        for (cid, batch) in choice.values.iter().cloned() {
            if cid <= self.last_executed || cid > window_end {
                continue;
            }
            self.accept_proposal(now_ms, cid, batch, None, actions);
        }
        if self.last_executed < choice.start {
            if let Some(holder) = choice.start_holder {
                self.next_query_allowed_ms = 0;
                self.maybe_query(now_ms, holder, actions);
            }
        }
        if self.is_leader() {
            self.next_cid_to_propose = (choice.end() + 1).max(self.last_executed + 1);
            self.try_propose(now_ms, actions);
        }
        self.arm_retransmit(now_ms);
        self.arm_request_timer();
    }

    /// The leader change did not complete in time: ask for the next regency, and wait twice as
    /// long for that one.
    fn on_leader_change_timeout(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        let mine = self.stop_for.get(&self.me).copied().unwrap_or(0);
        if mine <= self.regency && self.phase == Phase::Normal {
            return;
        }
        self.change_failures = self.change_failures.saturating_add(1);
        let target = mine.max(self.regency) + 1;
        self.start_leader_change(now_ms, target, actions);
    }

    // ----- state transfer -------------------------------------------------------------------

    fn handle_state_info(
        &mut self,
        now_ms: u64,
        from: ReplicaId,
        checkpoints: Vec<(Cid, Digest)>,
        actions: &mut Vec<Action>,
    ) {
        if checkpoints
            .iter()
            .all(|(cid, _)| *cid <= self.last_executed)
        {
            return;
        }
        if self.transfer.is_none() {
            // The first hint starts a transfer: ask everyone for their latest checkpoint.
            self.stats.state_transfers += 1;
            self.transfer = Some(Transfer {
                last_progress_ms: now_ms,
                ..Transfer::default()
            });
            actions.push(Action::Broadcast(Message::StateQuery));
            self.arm_retransmit(now_ms);
        }
        let transfer = self.transfer.as_mut().expect("just ensured");
        if let Some((cid, _, source)) = transfer.target {
            if source == from && !checkpoints.iter().any(|(c, _)| *c == cid) {
                // Our source no longer has what we are downloading: start over.
                transfer.target = None;
                transfer.buffer.clear();
            }
        }
        transfer.reports.insert(from, checkpoints);
        if transfer.target.is_none() {
            self.drive_transfer(now_ms, actions);
        }
    }

    /// Starts or restarts the download of an agreed checkpoint, or asks again if none is
    /// agreed yet or the download stalled.
    fn drive_transfer(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        let needed = self.quorums.state_transfer_digests();
        let stall_ms = self.cfg.timeouts.retransmit_max_ms;
        let last_executed = self.last_executed;
        let Some(transfer) = self.transfer.as_mut() else {
            return;
        };
        if let Some((_, _, source)) = transfer.target {
            if now_ms < transfer.last_progress_ms + stall_ms {
                return;
            }
            // The source went quiet: try another.
            transfer.failed.insert(source);
            transfer.target = None;
            transfer.buffer.clear();
        }
        match transfer.agreed(last_executed, needed) {
            Some((cid, digest, source)) => {
                transfer.target = Some((cid, digest, source));
                transfer.buffer.clear();
                transfer.last_progress_ms = now_ms;
                actions.push(Action::Send {
                    to: Peer::Replica(source),
                    message: Message::StateFetch { cid, offset: 0 },
                });
            }
            None => {
                if now_ms >= transfer.last_progress_ms + stall_ms {
                    // Every agreed source failed or too few agree: give up for now. The next
                    // hint that we are behind starts a fresh transfer.
                    self.transfer = None;
                }
            }
        }
    }

    /// Serves one chunk of a checkpoint, at most [`STATE_FETCHES_PER_SECOND`] per peer: a
    /// fetch is a few bytes and its answer up to `state_chunk_bytes`, so without a bound one
    /// Byzantine peer could make this replica send as fast as it asks. An honest requester
    /// fetches one chunk at a time and never comes near it; past it, fetches are dropped and
    /// the requester's stall timer retries.
    fn handle_state_fetch(
        &mut self,
        now_ms: u64,
        from: ReplicaId,
        cid: Cid,
        offset: u64,
        actions: &mut Vec<Action>,
    ) -> Result<(), Rejection> {
        let window = self.state_fetches_served.entry(from).or_insert((now_ms, 0));
        if now_ms >= window.0 + 1000 {
            *window = (now_ms, 0);
        }
        if window.1 >= STATE_FETCHES_PER_SECOND {
            return Err(Rejection::RateLimited("state fetches"));
        }
        window.1 += 1;
        let Some(c) = self
            .checkpoint
            .as_ref()
            .filter(|c| c.cid == cid)
            .or_else(|| self.own_checkpoints.get(&cid))
        else {
            // Superseded: say what we have now, so the requester switches at once.
            actions.push(Action::Send {
                to: Peer::Replica(from),
                message: self.state_info(),
            });
            return Ok(());
        };
        if offset > c.data.len() as u64 {
            return Err(Rejection::Malformed(
                "state fetch beyond the checkpoint".into(),
            ));
        }
        let start = offset as usize;
        let end = (start + self.cfg.limits.state_chunk_bytes).min(c.data.len());
        actions.push(Action::Send {
            to: Peer::Replica(from),
            message: Message::StateChunk {
                cid,
                offset,
                total_len: c.data.len() as u64,
                bytes: c.data[start..end].to_vec(),
                decided: (end == c.data.len()).then(|| c.decided.clone()),
            },
        });
        Ok(())
    }

    fn handle_state_chunk(
        &mut self,
        now_ms: u64,
        from: ReplicaId,
        chunk: StateChunkIn,
        actions: &mut Vec<Action>,
    ) -> Result<(), Rejection> {
        let StateChunkIn {
            cid,
            offset,
            total_len,
            bytes,
            decided,
        } = chunk;
        let Some(transfer) = self.transfer.as_mut() else {
            return Ok(());
        };
        let Some((target_cid, digest, source)) = transfer.target else {
            return Ok(());
        };
        if from != source || cid != target_cid || offset != transfer.buffer.len() as u64 {
            return Ok(());
        }
        if bytes.is_empty() && offset < total_len {
            return Err(Rejection::Malformed("empty state chunk".into()));
        }
        transfer.buffer.extend_from_slice(&bytes);
        transfer.last_progress_ms = now_ms;
        if (transfer.buffer.len() as u64) < total_len {
            actions.push(Action::Send {
                to: Peer::Replica(source),
                message: Message::StateFetch {
                    cid,
                    offset: transfer.buffer.len() as u64,
                },
            });
            return Ok(());
        }
        let data = std::mem::take(&mut transfer.buffer);
        // The proof's certificate was checked on arrival; a missing one is a lie too.
        let verified = (smr_crypto::digest(&data) == digest)
            .then_some(decided)
            .flatten()
            .and_then(|decided| Checkpoint::from_bytes(data, decided).ok())
            .filter(|(c, _)| c.cid == target_cid);
        let Some((checkpoint, contents)) = verified else {
            // The source lied: its bytes do not hash to the digest its peers agreed on, or it
            // withheld the proof that the checkpoint's cid was decided.
            self.stats.lying_state_sources += 1;
            transfer.failed.insert(source);
            transfer.target = None;
            transfer.last_progress_ms = 0;
            self.drive_transfer(now_ms, actions);
            return Err(Rejection::BadCertificate(
                "state does not match the agreed digest",
            ));
        };
        self.transfer = None;
        self.install_transferred_state(now_ms, checkpoint, contents, actions);
        Ok(())
    }

    /// Jumps to a verified checkpoint: the service and client table are replaced, and the
    /// decisions after it are fetched by decision forwarding.
    fn install_transferred_state(
        &mut self,
        now_ms: u64,
        checkpoint: Checkpoint,
        contents: CheckpointData,
        actions: &mut Vec<Action>,
    ) {
        let cid = checkpoint.cid;
        if cid <= self.last_executed {
            // Decisions got us there first.
            return;
        }
        actions.push(Action::Restore {
            cid,
            snapshot: contents.service,
        });
        self.clients = contents.clients;
        self.last_executed = cid;
        self.next_cid_to_propose = self.next_cid_to_propose.max(cid + 1);
        self.instances = self.instances.split_off(&(cid + 1));
        self.log.clear();
        self.checkpoint_barrier = None;
        self.snapshot_clients = None;
        let clients = &self.clients;
        self.pool
            .retain(|id| clients.status(id) == RequestStatus::New);
        actions.push(Action::Persist(PersistRecord::Checkpoint(
            checkpoint.clone(),
        )));
        self.own_checkpoints.clear();
        self.make_stable(checkpoint);
        self.last_catch_up_ms = Some(now_ms);
        let peer = self.next_query_peer();
        self.next_query_allowed_ms = 0;
        self.maybe_query(now_ms, peer, actions);
        self.execute_ready(now_ms, actions);
        self.arm_request_timer();
    }

    // ----- timers ---------------------------------------------------------------------------

    fn arm_retransmit(&mut self, now_ms: u64) {
        if self.instances.is_empty()
            && self.my_stop.is_none()
            && self.my_stopdata.is_none()
            && self.transfer.is_none()
            && !matches!(self.rejoin, Rejoin::Collecting(_))
        {
            self.deadlines.remove(&TimerKind::Retransmit);
        } else {
            self.deadlines
                .entry(TimerKind::Retransmit)
                .or_insert(now_ms + self.retransmit_interval_ms);
        }
    }

    pub fn on_timer(&mut self, now_ms: u64, timer: TimerKind) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.deadlines.get(&timer).is_some_and(|d| *d <= now_ms) {
            self.deadlines.remove(&timer);
            // The driver's copy of this deadline is gone now.
            self.emitted_deadlines.remove(&timer);
            match timer {
                TimerKind::Retransmit => self.on_retransmit(now_ms, &mut actions),
                TimerKind::Request => self.on_request_timeout(now_ms, &mut actions),
                TimerKind::Heartbeat => self.on_heartbeat(now_ms, &mut actions),
                TimerKind::LeaderChange => self.on_leader_change_timeout(now_ms, &mut actions),
            }
        }
        self.sync_timers(&mut actions);
        actions
    }

    fn on_retransmit(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        self.stats.retransmissions += 1;
        for instance in self.instances.values() {
            if instance.decided.is_some() {
                continue;
            }
            if let Some(signed) = instance.proposal.as_ref().and_then(|p| p.signed.as_ref()) {
                if signed.body.leader == self.me {
                    actions.push(Action::Broadcast(Message::Propose(signed.clone())));
                }
            }
            if let Some(w) = &instance.my_write {
                actions.push(Action::Broadcast(Message::Write(w.clone())));
            }
            if let Some(a) = &instance.my_accept {
                actions.push(Action::Broadcast(Message::Accept(a.clone())));
            }
        }
        self.drive_transfer(now_ms, actions);
        if matches!(self.rejoin, Rejoin::Collecting(_)) {
            actions.push(Action::Broadcast(Message::StateQuery));
        }
        // A leader change in progress: keep asking until the regency changes.
        if let Some(stop) = &self.my_stop {
            actions.push(Action::Broadcast(Message::Stop(stop.clone())));
        }
        if let Some(sd) = &self.my_stopdata {
            if self.leader() != self.me {
                actions.push(Action::Send {
                    to: Peer::Replica(self.leader()),
                    message: Message::StopData(sd.clone()),
                });
            }
        }
        let peer = self.next_query_peer();
        self.maybe_query(now_ms, peer, actions);
        self.retransmit_interval_ms =
            (self.retransmit_interval_ms * 2).min(self.cfg.timeouts.retransmit_max_ms);
        self.arm_retransmit(now_ms);
    }

    fn on_request_timeout(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        let cutoff = now_ms.saturating_sub(self.cfg.timeouts.request_timeout_ms);
        let timed_out = self.pool.take_timed_out(cutoff, now_ms);
        let second_timeout = timed_out.iter().any(|(_, timeouts)| *timeouts >= 2);
        if !timed_out.is_empty() && !self.is_leader() {
            // First timeout: make sure the leader has the request.
            let requests: Vec<Request> = timed_out
                .into_iter()
                .take(self.cfg.limits.max_batch_requests)
                .map(|(r, _)| r)
                .collect();
            actions.push(Action::Send {
                to: Peer::Replica(self.leader()),
                message: Message::Forward(requests),
            });
            // The requests may have been decided without us noticing.
            let peer = self.next_query_peer();
            self.maybe_query(now_ms, peer, actions);
        }
        // In CFT one STOP moves everyone, so a replica whose leader's heartbeats show recent
        // progress beyond it blames its own lag, not the leader. (Not in BFT, where a Byzantine
        // leader could fake progress; there f+1 STOPs are needed anyway.)
        let behind_a_live_leader = !self.quorums.requires_signatures()
            && self.leader_progress.is_some_and(|(decided, at_ms)| {
                decided > self.last_executed
                    && now_ms < at_ms + self.cfg.timeouts.request_timeout_ms
            });
        let catching_up = self.transfer.is_some()
            || behind_a_live_leader
            || self
                .last_catch_up_ms
                .is_some_and(|t| now_ms < t + self.cfg.timeouts.request_timeout_ms);
        if second_timeout && !catching_up {
            // Second timeout: the leader has had the request and still did not order it.
            let target = self.regency + 1;
            self.start_leader_change(now_ms, target, actions);
        }
        self.arm_request_timer();
    }

    fn on_heartbeat(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        if self.is_leader() {
            actions.push(Action::Broadcast(Message::Heartbeat {
                regency: self.regency,
                last_decided: self.last_executed,
            }));
        }
        // Evidence that we are behind, with nothing else prompting a catch-up.
        if self.highest_seen_cid > self.last_executed {
            let peer = self.next_query_peer();
            self.maybe_query(now_ms, peer, actions);
        }
        // Announcements can be lost: repeat the newest one until it is stable.
        if let Some(c) = self.own_checkpoints.values().next_back() {
            actions.push(Action::Broadcast(Message::CheckpointAnnounce {
                cid: c.cid,
                digest: c.digest,
            }));
        }
        self.deadlines.insert(
            TimerKind::Heartbeat,
            now_ms + self.cfg.timeouts.heartbeat_ms,
        );
    }

    /// Emits SetTimer/CancelTimer for every deadline that changed since the driver last heard.
    fn sync_timers(&mut self, actions: &mut Vec<Action>) {
        for timer in TIMER_KINDS {
            let want = self.deadlines.get(&timer).copied();
            let have = self.emitted_deadlines.get(&timer).copied();
            if want == have {
                continue;
            }
            match want {
                Some(deadline_ms) => {
                    self.emitted_deadlines.insert(timer, deadline_ms);
                    actions.push(Action::SetTimer { timer, deadline_ms });
                }
                None => {
                    self.emitted_deadlines.remove(&timer);
                    actions.push(Action::CancelTimer(timer));
                }
            }
        }
    }

    /// Client ids with pending requests, for diagnostics.
    pub fn pending_clients(&self) -> usize {
        self.clients.client_count()
    }

    #[doc(hidden)]
    pub fn debug_client_status(&self, client: ClientId, seq: u64) -> String {
        format!("{:?}", self.clients.status(&RequestId { client, seq }))
    }
}
