//! A small deterministic cluster for the engine-level target: honest engines of one mode, one
//! admitted client, and optionally one Byzantine replica whose every message the fuzz input
//! chooses (validly signed with that replica's key, so the verifier passes what is well formed
//! and the engine sees it). Messages go through [`InboundVerifier::verify_inbound`] and
//! [`runner::perform`] exactly as in the driver; the service is a toy whose results depend on
//! the order of execution, so a disagreement shows.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use smr_core::engine::{ExecuteItem, PersistRecord, ServiceDone, ServiceWork};
use smr_core::message::{
    Batch, Cid, Decision, DecisionProof, Message, PreparedProof, Propose, Regency, Reply, Request,
    RequestBody, RequestKind, Signed, Stop, StopData, Sync as SyncMsg, Vote, VoteKind,
};
use smr_core::runner::{self, Host};
use smr_core::{
    ClientPolicy, Engine, EngineConfig, InboundVerifier, Limits, Peer, ReplicaId, Timeouts,
};
use smr_crypto::sim::{SimKey, SimVerifier};
use smr_crypto::{Digest, Signer};
use smr_modes::{Mode, Quorums};

use crate::ByteReader;

/// Most messages kept in flight; more are dropped (a lossy network), so no script can make the
/// harness itself grow without bound.
const MAX_QUEUED: usize = 4096;
/// Most honest messages the Byzantine replica remembers for replays.
const MAX_SEEN: usize = 128;

/// The toy service's state per replica: a running hash of what it executed.
#[derive(Clone, Debug, Default)]
struct Toy {
    state: [u8; 32],
}

impl Toy {
    fn run(&mut self, work: ServiceWork) -> Option<ServiceDone> {
        match work {
            ServiceWork::Execute { cid, items } => {
                let results = items
                    .iter()
                    .map(|item| {
                        let mut input = self.state.to_vec();
                        input.extend_from_slice(&item.op);
                        self.state = *smr_crypto::digest(&input).as_bytes();
                        self.state[..8].to_vec()
                    })
                    .collect();
                Some(ServiceDone::Executed { cid, results })
            }
            ServiceWork::Query { id, op } => Some(ServiceDone::Queried {
                id,
                result: [&self.state[..4], &op[..op.len().min(4)]].concat(),
            }),
            ServiceWork::TakeSnapshot { cid } => Some(ServiceDone::Snapshot {
                cid,
                snapshot: self.state.to_vec(),
            }),
            ServiceWork::Restore { snapshot, .. } => {
                let mut state = [0u8; 32];
                let len = snapshot.len().min(32);
                state[..len].copy_from_slice(&snapshot[..len]);
                self.state = state;
                None
            }
        }
    }
}

/// Everything the cluster produced, for seeds and checks.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Every message sent, in order.
    pub messages: Vec<Message>,
    /// Every record persisted, in order, with the replica that persisted it.
    pub records: Vec<(ReplicaId, PersistRecord)>,
}

struct Node {
    engine: Engine,
    toy: Toy,
}

/// The cluster.
pub struct Sim {
    /// Quorum sizes and mode.
    pub quorums: Quorums,
    keys: Vec<SimKey>,
    client: SimKey,
    verifier: InboundVerifier,
    nodes: Vec<Option<Node>>,
    byzantine: Option<ReplicaId>,
    queue: VecDeque<(Peer, Peer, Message)>,
    now_ms: u64,
    next_seq: u64,
    /// Honest messages the Byzantine replica received, for replays.
    seen: VecDeque<Message>,
    /// Per cid, the operations the first honest replica to execute it executed.
    executed: BTreeMap<Cid, Vec<ExecuteItem>>,
    /// What was sent and persisted, if recording.
    pub recorded: Option<Recorded>,
    /// Whether honest replicas must execute the same operations at every cid (true by
    /// default; a CFT cluster with a Byzantine peer is outside its fault model).
    pub check_agreement: bool,
    /// Instances the Byzantine replica's STOPDATA claimed prepared beyond the honest
    /// replicas' execution, summed over the script (see [`Sim::instances_claimed_by`]).
    pub claimed_instances: u64,
    /// Steps of the script that moved the clock (each can fire every timer once).
    pub advance_steps: u64,
    /// Claimed instances that the script's clock steps can make replicas retransmit their
    /// votes in: for each clock step, the instances claimed so far, at most
    /// `max_instances_ahead` (a lost message moves no clock and fires no timer).
    pub retransmitted_claims: u64,
}

/// The limits every engine of the harness runs with: small enough that checkpoints, log
/// truncation and state transfer happen within a short script.
pub fn limits() -> Limits {
    Limits {
        checkpoint_period: 4,
        max_log_entries: 16,
        max_decisions_per_reply: 4,
        max_batch_requests: 8,
        state_chunk_bytes: 64,
        ..Limits::default()
    }
}

struct NodeHost<'a> {
    me: ReplicaId,
    node: &'a mut Node,
    queue: &'a mut VecDeque<(Peer, Peer, Message)>,
    executed: &'a mut BTreeMap<Cid, Vec<ExecuteItem>>,
    recorded: Option<&'a mut Recorded>,
    check_agreement: bool,
}

impl Host for NodeHost<'_> {
    fn engine(&mut self) -> &mut Engine {
        &mut self.node.engine
    }

    fn append(&mut self, record: PersistRecord) {
        if let Some(recorded) = self.recorded.as_deref_mut() {
            recorded.records.push((self.me, record));
        }
    }

    fn sync(&mut self) {}

    fn send(&mut self, to: &[Peer], message: Message) {
        if let Some(recorded) = self.recorded.as_deref_mut() {
            recorded.messages.push(message.clone());
        }
        for peer in to {
            if self.queue.len() < MAX_QUEUED {
                self.queue
                    .push_back((Peer::Replica(self.me), *peer, message.clone()));
            }
        }
    }

    fn service(&mut self, work: ServiceWork) -> Option<ServiceDone> {
        if let ServiceWork::Execute { cid, items } = &work {
            // Agreement: every honest replica executes the same operations at each cid.
            match self.executed.get(cid) {
                Some(first) if self.check_agreement => assert_eq!(
                    first, items,
                    "replica {} executed other operations at cid {cid} than another honest replica",
                    self.me
                ),
                Some(_) => {}
                None => {
                    self.executed.insert(*cid, items.clone());
                }
            }
        }
        self.node.toy.run(work)
    }
}

impl Sim {
    /// A cluster of `mode` (BFT: n = 4, CFT: n = 3, f = 1 either way), replica `byzantine`
    /// (if any) played by the script.
    pub fn new(mode: Mode, byzantine: Option<ReplicaId>) -> Sim {
        let n = match mode {
            Mode::Bft => 4,
            Mode::Cft => 3,
        };
        let quorums = Quorums::new(mode, n, 1).expect("valid quorums");
        let keys: Vec<SimKey> = (0..n as u8)
            .map(|i| SimKey::from_seed([i + 1; 32]))
            .collect();
        let client = SimKey::from_seed([200; 32]);
        let mut sim = SimVerifier::new();
        for key in keys.iter().chain([&client]) {
            sim.register(key);
        }
        let clients = ClientPolicy::Allowed(BTreeSet::from([client.public_key()]));
        let verifier = InboundVerifier {
            quorums,
            replica_keys: Arc::new(keys.iter().map(|k| k.public_key()).collect()),
            clients: Arc::new(clients.clone()),
            limits: limits(),
            signatures: Arc::new(sim),
        };
        let nodes = (0..n as ReplicaId)
            .map(|me| {
                (Some(me) != byzantine).then(|| {
                    let config = EngineConfig {
                        quorums,
                        me,
                        replica_keys: keys.iter().map(|k| k.public_key()).collect(),
                        clients: clients.clone(),
                        limits: limits(),
                        timeouts: Timeouts::default(),
                    }
                    .validate()
                    .expect("valid harness config");
                    let signer: Arc<dyn Signer> = Arc::new(keys[me as usize].clone());
                    Node {
                        engine: Engine::new(config, signer),
                        toy: Toy::default(),
                    }
                })
            })
            .collect();
        let mut sim = Sim {
            quorums,
            keys,
            client,
            verifier,
            nodes,
            byzantine,
            queue: VecDeque::new(),
            now_ms: 0,
            next_seq: 1,
            seen: VecDeque::new(),
            executed: BTreeMap::new(),
            recorded: None,
            check_agreement: true,
            claimed_instances: 0,
            advance_steps: 0,
            retransmitted_claims: 0,
        };
        for me in 0..n as ReplicaId {
            sim.with_node(me, |engine, now| engine.start(now));
        }
        sim
    }

    /// How many instances `message` of the Byzantine replica, sent to replica `to`, can make
    /// the honest replicas run: for a STOPDATA, the instances from `to`'s last executed cid up
    /// to the highest cid it claims a value prepared in, at most `max_instances_ahead` (the
    /// window a SYNC fixes values in, `sync::choose`, which starts at the newest decision its
    /// STOPDATA prove, the new leader's own among them); 0 for any other message or an
    /// honest replica that is not `to`'s. In CFT nothing certifies a prepared value, so one
    /// STOPDATA to the next leader makes the cluster re-propose that many instances (null
    /// ones where nobody prepared a value): what the fuzz target's allocation bound charges
    /// the script for. (In BFT a prepared value needs a WRITE quorum; this over-counts there.)
    pub fn instances_claimed_by(&self, message: &Message, to: ReplicaId) -> u64 {
        let Message::StopData(stopdata) = message else {
            return 0;
        };
        let Some(Some(node)) = self.nodes.get(to as usize) else {
            return 0;
        };
        let window = limits().max_instances_ahead;
        let executed = node.engine.last_executed().0;
        // A SYNC's window starts at the newest decision its STOPDATA prove, which no honest
        // replica's execution trails by more than a window: a claim beyond that end fixes
        // nothing.
        let window_end = self
            .nodes
            .iter()
            .flatten()
            .map(|node| node.engine.last_executed().0)
            .max()
            .unwrap_or(0)
            .saturating_add(window.saturating_mul(2));
        stopdata
            .body
            .prepared
            .iter()
            .filter(|p| p.cid.0 <= window_end)
            .map(|p| p.cid.0.saturating_sub(executed))
            .max()
            .unwrap_or(0)
            .min(window)
    }

    /// A clock step of the script: it can make the replicas resend their votes of every
    /// undecided instance once, the claimed ones included.
    fn note_retransmission_round(&mut self) {
        self.retransmitted_claims = self
            .retransmitted_claims
            .saturating_add(self.claimed_instances.min(limits().max_instances_ahead));
    }

    /// How many cids some honest replica executed.
    pub fn executed_cids(&self) -> usize {
        self.executed.len()
    }

    /// Rejections the honest engines counted (verifier's and their own).
    pub fn rejections(&self) -> u64 {
        self.nodes
            .iter()
            .flatten()
            .flat_map(|node| node.engine.stats().rejections.values())
            .sum()
    }

    /// The verifier every replica of the cluster runs.
    pub fn verifier(&self) -> &InboundVerifier {
        &self.verifier
    }

    /// The admitted client's key.
    pub fn client_key(&self) -> &SimKey {
        &self.client
    }

    /// Replica `me`'s key.
    pub fn replica_key(&self, me: ReplicaId) -> &SimKey {
        &self.keys[me as usize]
    }

    /// Replica `me`'s engine configuration.
    pub fn config(&self, me: ReplicaId) -> smr_core::ValidEngineConfig {
        EngineConfig {
            quorums: self.quorums,
            me,
            replica_keys: self.keys.iter().map(|k| k.public_key()).collect(),
            clients: (*self.verifier.clients).clone(),
            limits: limits(),
            timeouts: Timeouts::default(),
        }
        .validate()
        .expect("valid harness config")
    }

    fn n(&self) -> usize {
        self.quorums.n()
    }

    fn signing(&self) -> bool {
        self.quorums.requires_signatures()
    }

    /// Runs `input` on replica `me`'s engine (if honest) and performs its output.
    fn with_node(
        &mut self,
        me: ReplicaId,
        input: impl FnOnce(&mut Engine, u64) -> smr_core::Output,
    ) {
        let now = self.now_ms;
        let Some(node) = self.nodes[me as usize].as_mut() else {
            return;
        };
        let output = input(&mut node.engine, now);
        let mut host = NodeHost {
            me,
            node,
            queue: &mut self.queue,
            executed: &mut self.executed,
            recorded: self.recorded.as_mut(),
            check_agreement: self.check_agreement,
        };
        runner::perform(&mut host, now, output);
        host.node.engine.check_invariants();
    }

    /// Verifies and hands `message` from `from` to replica `to`, as a driver would.
    fn deliver(&mut self, from: Peer, to: ReplicaId, message: Message) {
        if Some(to) == self.byzantine {
            if self.seen.len() >= MAX_SEEN {
                self.seen.pop_front();
            }
            self.seen.push_back(message);
            return;
        }
        match self.verifier.verify_inbound(from, message) {
            Ok(verified) => self.with_node(to, |engine, now| engine.on_message(now, verified)),
            Err(rejection) => {
                if let Some(node) = self.nodes[to as usize].as_mut() {
                    node.engine.count_rejection(&rejection);
                }
            }
        }
    }

    /// Delivers up to `count` queued messages, oldest first.
    pub fn step(&mut self, count: usize) {
        for _ in 0..count {
            let Some((from, to, message)) = self.queue.pop_front() else {
                return;
            };
            match to {
                Peer::Replica(to) => self.deliver(from, to, message),
                Peer::Client(_) => {}
            }
        }
    }

    /// Moves the clock forward and fires every timer that is due.
    pub fn advance(&mut self, ms: u64) {
        self.now_ms = self.now_ms.saturating_add(ms);
        for me in 0..self.n() as ReplicaId {
            for _ in 0..8 {
                let due = self.nodes[me as usize]
                    .as_ref()
                    .and_then(|node| node.engine.next_deadline_ms())
                    .is_some_and(|deadline| deadline <= self.now_ms);
                if !due {
                    break;
                }
                self.with_node(me, |engine, now| engine.on_timeout(now));
            }
        }
    }

    /// A request of the client, signed in BFT.
    pub fn request(&self, seq: u64, op: Vec<u8>, kind: RequestKind) -> Request {
        let body = RequestBody {
            client: self.client.public_key(),
            session: 1,
            seq,
            kind,
            op,
        };
        Request::new(body, self.signing().then_some(&self.client as &dyn Signer))
    }

    /// The client sends a new ordered request to every replica.
    pub fn submit(&mut self, op: Vec<u8>) {
        let client = Peer::Client(self.client.public_key());
        if self.next_seq == 1 {
            // The client's session first (docs/design.md §3.7, "Sessions"): ordered before
            // its requests, it opens session 1, the table's first number.
            let open = Request::new(
                RequestBody {
                    client: self.client.public_key(),
                    session: smr_core::message::OPEN_SESSION,
                    seq: smr_core::clients::SESSION_NUMBER_LIMIT,
                    kind: RequestKind::Ordered,
                    op: Vec::new(),
                },
                self.signing().then_some(&self.client as &dyn Signer),
            );
            for to in 0..self.n() as ReplicaId {
                self.deliver(client, to, Message::Request(open.clone()));
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let request = self.request(seq, op, RequestKind::Ordered);
        for to in 0..self.n() as ReplicaId {
            self.deliver(client, to, Message::Request(request.clone()));
        }
    }

    /// Delivers everything queued (up to `max` messages), advancing time whenever nothing is
    /// queued so that timers fire (a silent leader is replaced), until 20 s of simulated time
    /// pass without a message.
    pub fn settle(&mut self, max: usize) {
        let mut delivered = 0;
        let mut idle_ms = 0;
        while delivered < max && idle_ms < 20_000 {
            if self.queue.is_empty() {
                self.advance(100);
                idle_ms += 100;
                continue;
            }
            idle_ms = 0;
            self.step(16);
            delivered += 16;
        }
    }

    fn byz(&self) -> ReplicaId {
        self.byzantine.expect("a Byzantine replica")
    }

    fn sign<T: smr_core::message::ReplicaSigned>(&self, body: T) -> Signed<T> {
        let signer = self
            .signing()
            .then_some(&self.keys[self.byz() as usize] as &dyn Signer);
        Signed::new(body, signer)
    }

    fn some_digest(&self, r: &mut ByteReader<'_>) -> Digest {
        match r.u8() % 3 {
            0 => Digest([r.u8(); 32]),
            1 => self
                .executed
                .values()
                .next_back()
                .map(|items| {
                    let batch = Batch {
                        requests: items
                            .iter()
                            .map(|i| self.request(i.id.seq, i.op.clone(), RequestKind::Ordered))
                            .collect(),
                    };
                    batch.digest()
                })
                .unwrap_or(Digest([0; 32])),
            _ => self.batch(r).digest(),
        }
    }

    fn batch(&self, r: &mut ByteReader<'_>) -> Batch {
        let count = usize::from(r.u8() % 4);
        Batch {
            requests: (0..count)
                .map(|_| {
                    let seq = r.edgy(self.next_seq);
                    let kind = if r.u8().is_multiple_of(8) {
                        RequestKind::Unordered
                    } else {
                        RequestKind::Ordered
                    };
                    let op = r.bytes(16);
                    self.request(seq, op, kind)
                })
                .collect(),
        }
    }

    fn votes(
        &self,
        r: &mut ByteReader<'_>,
        kind: VoteKind,
        cid: Cid,
        regency: Regency,
        digest: Digest,
    ) -> Vec<Signed<Vote>> {
        // Votes of replicas the Byzantine one cannot sign for are copied from what it saw.
        let mut votes = vec![self.sign(Vote {
            kind,
            replica: self.byz(),
            cid,
            regency,
            digest,
        })];
        let extra = usize::from(r.u8() % 4);
        votes.extend(
            self.seen
                .iter()
                .filter_map(|m| match m {
                    Message::Write(v) if kind == VoteKind::Write => Some(v.clone()),
                    Message::Accept(v) if kind == VoteKind::Accept => Some(v.clone()),
                    _ => None,
                })
                .take(extra),
        );
        votes
    }

    fn seen_decision_proof(&self) -> Option<DecisionProof> {
        self.seen.iter().rev().find_map(|m| match m {
            Message::Decisions(ds) => ds.first().map(|d| DecisionProof {
                cid: d.cid,
                digest: d.batch.digest(),
                certificate: d.certificate.clone(),
            }),
            _ => None,
        })
    }

    /// One message of the Byzantine replica, every field chosen by `r`.
    fn byzantine_message(&self, r: &mut ByteReader<'_>) -> Message {
        let byz = self.byz();
        let base_cid = self.executed.keys().next_back().map_or(0, |c| c.0);
        let cid = Cid(r.edgy(base_cid + 1));
        let regency = Regency(r.edgy(0));
        match r.u8() % 20 {
            0 => Message::Propose(self.sign(Propose {
                leader: byz,
                cid,
                regency,
                batch: self.batch(r),
            })),
            1 => {
                let digest = self.some_digest(r);
                Message::Write(self.sign(Vote {
                    kind: VoteKind::Write,
                    replica: byz,
                    cid,
                    regency,
                    digest,
                }))
            }
            2 => {
                let digest = self.some_digest(r);
                Message::Accept(self.sign(Vote {
                    kind: VoteKind::Accept,
                    replica: byz,
                    cid,
                    regency,
                    digest,
                }))
            }
            3 => Message::Stop(self.sign(Stop {
                replica: byz,
                regency,
                from_regency: Regency(r.edgy(regency.0)),
                pending: self.batch(r).requests,
            })),
            4 => {
                let batch = self.batch(r);
                let epoch = Regency(r.edgy(0));
                let digest = batch.digest();
                let writes = self.votes(r, VoteKind::Write, cid, epoch, digest);
                let prepared = if r.u8().is_multiple_of(2) {
                    vec![PreparedProof {
                        cid,
                        epoch,
                        batch,
                        writes,
                    }]
                } else {
                    Vec::new()
                };
                let last_decided = if r.u8().is_multiple_of(2) {
                    self.seen_decision_proof()
                } else {
                    None
                };
                Message::StopData(self.sign(StopData {
                    replica: byz,
                    regency,
                    last_decided,
                    prepared,
                }))
            }
            5 => {
                let proofs = self
                    .seen
                    .iter()
                    .filter_map(|m| match m {
                        Message::StopData(s) => Some(s.clone()),
                        Message::Sync(s) => s.body.proofs.first().cloned(),
                        _ => None,
                    })
                    .take(usize::from(r.u8() % 4))
                    .collect();
                Message::Sync(self.sign(SyncMsg {
                    leader: byz,
                    regency,
                    proofs,
                }))
            }
            6 => Message::Heartbeat {
                regency,
                last_decided: cid,
            },
            7 => Message::DecisionQuery { from_cid: cid },
            8 => {
                let mut decisions: Vec<Decision> = self
                    .seen
                    .iter()
                    .filter_map(|m| match m {
                        Message::Decisions(ds) => Some(ds.clone()),
                        _ => None,
                    })
                    .flatten()
                    .take(usize::from(r.u8() % 4))
                    .collect();
                if r.u8().is_multiple_of(2) {
                    let batch = self.batch(r);
                    let digest = batch.digest();
                    let certificate = self.votes(r, VoteKind::Accept, cid, regency, digest);
                    decisions.push(Decision {
                        cid,
                        batch,
                        certificate,
                    });
                }
                Message::Decisions(decisions)
            }
            9 => Message::CheckpointAnnounce {
                cid,
                digest: self.some_digest(r),
            },
            // A few nonces, so that queries of one incarnation repeat and answers echo them.
            10 => Message::StateQuery {
                rejoin_nonce: u64::from(r.u8() % 3),
            },
            11 => Message::SyncQuery,
            12 => {
                let count = usize::from(r.u8() % 4);
                let checkpoints = (0..count)
                    .map(|_| (Cid(r.edgy(base_cid)), self.some_digest(r)))
                    .collect();
                Message::StateInfo {
                    checkpoints,
                    voted_up_to: Cid(r.edgy(base_cid)),
                    executed: self.seen_decision_proof(),
                    for_nonce: u64::from(r.u8() % 3),
                    rejoin_nonce: u64::from(r.u8() % 3),
                }
            }
            13 => Message::StateFetch {
                cid,
                offset: r.edgy(0),
            },
            14 => Message::StateChunk {
                cid,
                offset: r.edgy(0),
                total_len: r.edgy(64),
                bytes: r.bytes(64),
                decided: if r.u8().is_multiple_of(2) {
                    self.seen_decision_proof()
                } else {
                    None
                },
            },
            15 => Message::Forward(self.batch(r).requests),
            16 => Message::Request(self.request(
                r.edgy(self.next_seq),
                r.bytes(8),
                RequestKind::Ordered,
            )),
            17 => Message::Reply(Reply {
                replica: byz,
                client: self.client.public_key(),
                session: 1,
                status: smr_core::message::ReplyStatus::Executed,
                seq: r.edgy(self.next_seq),
                regency,
                result: r.bytes(8),
            }),
            // The engine refuses it whatever its route; a constant keeps the stored inputs'
            // paths as they were.
            18 => Message::StatusQuery { route: 0 },
            _ => {
                // A replay of something an honest replica sent it.
                let index = usize::from(r.u8());
                self.seen
                    .get(index % self.seen.len().max(1))
                    .cloned()
                    .unwrap_or(Message::SyncQuery)
            }
        }
    }

    /// Runs a script read from fuzz bytes: client requests, deliveries, time, and messages of
    /// the Byzantine replica (if any) to chosen honest replicas; then lets the cluster settle.
    /// Panics if an honest engine panics or breaks an invariant, or honest replicas disagree.
    pub fn run_script(&mut self, bytes: &[u8]) {
        let mut r = ByteReader::new(bytes);
        let mut steps = 0;
        while !r.is_empty() && steps < 256 {
            steps += 1;
            match r.u8() % 6 {
                0 => {
                    let op = r.bytes(16);
                    self.submit(op);
                }
                1 => {
                    let count = usize::from(r.u8() % 32) + 1;
                    self.step(count);
                }
                2 => {
                    let ms = u64::from(r.u8()) * 20;
                    self.advance_steps += 1;
                    self.note_retransmission_round();
                    self.advance(ms);
                }
                3 | 4 if self.byzantine.is_some() => {
                    let message = self.byzantine_message(&mut r);
                    let to = ReplicaId::from(r.u8()) % self.n() as ReplicaId;
                    self.claimed_instances = self
                        .claimed_instances
                        .saturating_add(self.instances_claimed_by(&message, to));
                    self.deliver(Peer::Replica(self.byz()), to, message);
                }
                _ => {
                    // The network loses a message. It moves no clock, so it fires no
                    // retransmit timer and buys no retransmission round.
                    let at = usize::from(r.u8());
                    if !self.queue.is_empty() {
                        let at = at % self.queue.len();
                        self.queue.remove(at);
                    }
                }
            }
        }
        self.settle(2000);
    }
}
