//! The fixture the handler-level tests share (`engine.rs`, `contract.rs`): a cluster of replicas
//! with sim keys and one admitted client, engines built for it, messages signed the way its mode
//! signs them, and delivery through the [`InboundVerifier`] as a driver would do it.
//!
//! Each test target compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::Arc;

use smr_core::checkpoint::{Checkpoint, CheckpointData};
use smr_core::clients::ClientTable;
use smr_core::engine::{ExecuteItem, Outgoing, Output, PersistRecord, ServiceWork, TimerKind};
use smr_core::message::{
    Batch, Cid, Decision, DecisionProof, Message, PreparedProof, Propose, Regency, Reply, Request,
    RequestBody, RequestKind, Signed, Stop, StopData, Sync as SyncMsg, Vote, VoteKind,
};
use smr_core::{
    ClientPolicy, Engine, EngineConfig, InboundVerifier, Limits, Peer, Rejection, RequestAuth,
    Timeouts, ValidEngineConfig, VerifiedRequests,
};
use smr_crypto::sim::{CountingSimVerifier, SimKey, SimVerifier};
use smr_crypto::{Digest, Signer};
use smr_modes::{Mode, Quorums};

pub struct Cluster {
    pub quorums: Quorums,
    pub keys: Vec<SimKey>,
    pub client: SimKey,
    pub limits: Limits,
    pub verifier: InboundVerifier,
}

pub fn key(i: u8) -> SimKey {
    SimKey::from_seed([i; 32])
}

/// A cluster whose engines and verifier share `limits` (and the default timeouts: retransmit
/// 100 ms doubling to 2000 ms, request timeout 1000 ms, heartbeat 500 ms).
pub fn cluster(mode: Mode, n: usize, f: usize, limits: Limits) -> Cluster {
    let quorums = Quorums::new(mode, n, f).unwrap();
    let keys: Vec<SimKey> = (0..n as u8).map(key).collect();
    let client = key(200);
    let sim = sim_verifier(&keys, &client);
    let verifier = InboundVerifier {
        quorums,
        replica_keys: Arc::new(keys.iter().map(|k| k.public_key()).collect()),
        clients: Arc::new(ClientPolicy::Allowed(BTreeSet::from([client.public_key()]))),
        limits: limits.clone(),
        signatures: Arc::new(sim),
    };
    Cluster {
        quorums,
        keys,
        client,
        limits,
        verifier,
    }
}

/// A sim verifier that knows `replicas` and `client`.
fn sim_verifier(replicas: &[SimKey], client: &SimKey) -> SimVerifier {
    let mut sim = SimVerifier::new();
    for k in replicas.iter().chain([client]) {
        sim.register(k);
    }
    sim
}

/// Replica 3 of four BFT replicas (f = 1) whose window holds four instances
/// (`max_instances_ahead`, `max_instances_in_flight` and `max_decisions_per_reply` 4),
/// started, with a catch-up paused for replica 0: replica 0's full answer, cids 1-4 (empty
/// batches) at time 10, sends cid 1 to the service, and the window (up to 1 + 4) has room for
/// one more decision only, so the next query waits, for replica 0. Checks that exact output.
pub fn paused_catch_up() -> (Cluster, Engine) {
    let c = cluster(
        Mode::Bft,
        4,
        1,
        Limits {
            max_instances_ahead: 4,
            max_instances_in_flight: 4,
            max_decisions_per_reply: 4,
            ..Limits::default()
        },
    );
    let mut replica = c.engine(3);
    replica.start(0);
    let decisions: Vec<Decision> = (1..=4).map(|cid| c.decision(cid, vec![])).collect();
    let out = c.deliver_ok(
        &mut replica,
        10,
        Peer::Replica(0),
        Message::Decisions(decisions.clone()),
    );
    assert_eq!(
        out,
        Output {
            send_now: vec![],
            persist: decisions.into_iter().map(PersistRecord::Decided).collect(),
            send_after_persist: vec![],
            service: vec![c.execute(Cid(1), &[])],
            rejections: vec![],
        }
    );
    (c, replica)
}

/// Four BFT replicas (f = 1) with the default limits.
pub fn bft() -> Cluster {
    cluster(Mode::Bft, 4, 1, Limits::default())
}

/// Three CFT replicas (f = 1) with the default limits.
pub fn cft() -> Cluster {
    cluster(Mode::Cft, 3, 1, Limits::default())
}

impl Cluster {
    pub fn cfg(&self, me: u32) -> ValidEngineConfig {
        EngineConfig {
            quorums: self.quorums,
            me,
            replica_keys: self.keys.iter().map(|k| k.public_key()).collect(),
            clients: (*self.verifier.clients).clone(),
            limits: self.limits.clone(),
            timeouts: Timeouts::default(),
        }
        .validate()
        .expect("valid test config")
    }

    /// Replica `me`'s key, as an engine takes it.
    pub fn engine_signer(&self, me: u32) -> Arc<dyn Signer> {
        Arc::new(self.keys[me as usize].clone())
    }

    pub fn engine(&self, me: u32) -> Engine {
        Engine::new(self.cfg(me), self.engine_signer(me))
    }

    /// Replica `me`'s engine as the driver builds it: it takes direct requests authenticated
    /// by their channel ([`Cluster::deliver_by_channel`]) and verifies their signatures where
    /// it relays them (docs/design.md §5).
    /// A verifier of the cluster's identities that counts every signature check it makes,
    /// and whose failed batches check their items again up to the first bad one, as ed25519's
    /// do ([`CountingSimVerifier`]).
    pub fn counting_verifier(&self) -> Arc<CountingSimVerifier> {
        Arc::new(CountingSimVerifier::new(sim_verifier(
            &self.keys,
            &self.client,
        )))
    }

    /// The cluster's verifier, checking signatures with `signatures`.
    pub fn verifier_with(&self, signatures: Arc<dyn smr_crypto::Verifier>) -> InboundVerifier {
        InboundVerifier {
            signatures,
            ..self.verifier.clone()
        }
    }

    pub fn channel_engine(&self, me: u32) -> Engine {
        let mut engine = self.engine(me);
        engine.set_request_verifier(self.verifier.signatures.clone());
        engine
    }

    /// The fixture client's request `seq` with a signature that does not verify (the
    /// signature of another request of the client), as a Byzantine client may send.
    pub fn badly_signed_request(&self, seq: u64) -> Request {
        let mut request = self.request(seq);
        request.signature = self.request(seq + 1_000).signature;
        request
    }

    /// Verifies `message` as the driver does (direct requests authenticated by their
    /// channel, `cache` shared by the replica's verify workers), then hands it to `engine`.
    pub fn deliver_by_channel(
        &self,
        engine: &mut Engine,
        now_ms: u64,
        from: Peer,
        message: Message,
        cache: &VerifiedRequests,
    ) -> Output {
        let verified = self
            .verifier
            .verify_run(vec![(from, message)], Some(cache), RequestAuth::Channel)
            .pop()
            .expect("one verdict")
            .expect("the verifier passes it");
        engine.on_message(now_ms, verified)
    }

    pub fn signing(&self) -> bool {
        self.quorums.requires_signatures()
    }

    /// Replica `r`'s signer in modes that sign replica messages (BFT), none in CFT.
    pub fn signer(&self, r: u32) -> Option<&dyn Signer> {
        self.signing()
            .then_some(&self.keys[r as usize] as &dyn Signer)
    }

    pub fn client_peer(&self) -> Peer {
        Peer::Client(self.client.public_key())
    }

    /// The fixture client's request `seq` in session 1 (the first session a replica's table
    /// opens: [`Cluster::open_request`]).
    pub fn request(&self, seq: u64) -> Request {
        self.request_in(1, seq)
    }

    /// The fixture client's routing tag: the seq of its open requests.
    pub const TAG: u64 = smr_core::clients::SESSION_NUMBER_LIMIT | 0x0f1c;

    /// The fixture client's open request (docs/design.md §3.7, "Sessions"): executed first
    /// in a fresh table, it opens session 1.
    pub fn open_request(&self) -> Request {
        let body = RequestBody {
            client: self.client.public_key(),
            session: smr_core::message::OPEN_SESSION,
            seq: Self::TAG,
            kind: RequestKind::Ordered,
            op: Vec::new(),
        };
        Request::new(body, self.signing().then_some(&self.client as &dyn Signer))
    }

    /// Replica `replica`'s reply to the fixture client's open request: session `session`.
    pub fn open_reply(&self, replica: u32, session: u64) -> Outgoing {
        Outgoing::Send {
            to: self.client_peer(),
            message: Message::Reply(Reply {
                replica,
                client: self.client.public_key(),
                session: smr_core::message::OPEN_SESSION,
                status: smr_core::message::ReplyStatus::Executed,
                seq: Self::TAG,
                regency: Regency(0),
                result: session.to_le_bytes().to_vec(),
            }),
        }
    }

    /// The fixture client's request `seq` in `session` (op `op{seq}`, whatever the session).
    pub fn request_in(&self, session: u64, seq: u64) -> Request {
        let body = RequestBody {
            client: self.client.public_key(),
            session,
            seq,
            kind: RequestKind::Ordered,
            op: format!("op{seq}").into_bytes(),
        };
        Request::new(body, self.signing().then_some(&self.client as &dyn Signer))
    }

    /// The fixture client's requests `seqs` in session 1.
    pub fn batch(&self, seqs: &[u64]) -> Batch {
        Batch {
            requests: seqs.iter().map(|s| self.request(*s)).collect(),
        }
    }

    /// The batch of the fixture client's request `cid` for instance `cid`: the first opens
    /// session 1 ([`Cluster::opening_batch`]).
    pub fn batch_of_cid(&self, cid: Cid) -> Batch {
        if cid == Cid(1) {
            self.opening_batch(&[1])
        } else {
            self.batch(&[cid.0])
        }
    }

    /// The fixture client's first batch: its open request (which opens session 1), then its
    /// requests `seqs` in session 1.
    pub fn opening_batch(&self, seqs: &[u64]) -> Batch {
        let mut batch = self.batch(seqs);
        batch.requests.insert(0, self.open_request());
        batch
    }

    pub fn propose(
        &self,
        leader: u32,
        cid: Cid,
        regency: Regency,
        batch: Batch,
    ) -> Signed<Propose> {
        Signed::new(
            Propose {
                leader,
                cid,
                regency,
                batch,
            },
            self.signer(leader),
        )
    }

    pub fn vote(
        &self,
        kind: VoteKind,
        replica: u32,
        cid: Cid,
        regency: Regency,
        digest: Digest,
    ) -> Signed<Vote> {
        Signed::new(
            Vote {
                kind,
                replica,
                cid,
                regency,
                digest,
            },
            self.signer(replica),
        )
    }

    pub fn stop(&self, replica: u32, regency: Regency, from_regency: Regency) -> Signed<Stop> {
        Signed::new(
            Stop {
                replica,
                regency,
                from_regency,
                pending: Vec::new(),
            },
            self.signer(replica),
        )
    }

    pub fn stopdata(
        &self,
        replica: u32,
        regency: Regency,
        last_decided: Option<DecisionProof>,
        prepared: Vec<PreparedProof>,
    ) -> Signed<StopData> {
        Signed::new(
            StopData {
                replica,
                regency,
                last_decided,
                prepared,
            },
            self.signer(replica),
        )
    }

    pub fn sync(
        &self,
        leader: u32,
        regency: Regency,
        proofs: Vec<Signed<StopData>>,
    ) -> Signed<SyncMsg> {
        Signed::new(
            SyncMsg {
                leader,
                regency,
                proofs,
            },
            self.signer(leader),
        )
    }

    /// `kind` votes of `replicas` for `digest` at `cid` in `regency`, in that order.
    pub fn votes(
        &self,
        kind: VoteKind,
        replicas: &[u32],
        cid: Cid,
        regency: Regency,
        digest: Digest,
    ) -> Vec<Signed<Vote>> {
        replicas
            .iter()
            .map(|&r| self.vote(kind, r, cid, regency, digest))
            .collect()
    }

    /// A value prepared in `epoch` for `cid`: in BFT with WRITEs from replicas 0, 1 and 3 (Q),
    /// in CFT with none.
    pub fn prepared(&self, cid: Cid, epoch: Regency, batch: Batch) -> PreparedProof {
        let writes = if self.signing() {
            self.votes(VoteKind::Write, &[0, 1, 3], cid, epoch, batch.digest())
        } else {
            Vec::new()
        };
        PreparedProof {
            cid,
            epoch,
            batch,
            writes,
        }
    }

    /// Proof that `cid` was decided with `digest` in regency 0: ACCEPTs from replicas 0, 1, 2.
    pub fn decision_proof(&self, cid: Cid, digest: Digest) -> DecisionProof {
        DecisionProof {
            cid,
            digest,
            certificate: self.votes(VoteKind::Accept, &[0, 1, 2], cid, Regency(0), digest),
        }
    }

    /// What the replica `replica` sends the client once `seq` executed with `result`.
    pub fn reply(&self, replica: u32, seq: u64, result: &[u8]) -> Outgoing {
        Outgoing::Send {
            to: self.client_peer(),
            message: Message::Reply(Reply {
                replica,
                client: self.client.public_key(),
                session: 1,
                status: smr_core::message::ReplyStatus::Executed,
                seq,
                regency: Regency(0),
                result: result.to_vec(),
            }),
        }
    }

    /// Replica `replica`'s reply to the fixture client's session `session`, seq `seq`.
    pub fn reply_in(
        &self,
        replica: u32,
        session: u64,
        seq: u64,
        status: smr_core::message::ReplyStatus,
        result: &[u8],
    ) -> Outgoing {
        Outgoing::Send {
            to: self.client_peer(),
            message: Message::Reply(Reply {
                replica,
                client: self.client.public_key(),
                session,
                status,
                seq,
                regency: Regency(0),
                result: result.to_vec(),
            }),
        }
    }

    /// What the service is handed to execute `request`.
    pub fn item(&self, request: &Request) -> ExecuteItem {
        ExecuteItem {
            id: request.id(),
            op: request.body.op.clone(),
        }
    }

    /// The service work that executes the batch of requests `seqs` decided for `cid`.
    pub fn execute(&self, cid: Cid, seqs: &[u64]) -> ServiceWork {
        ServiceWork::Execute {
            cid,
            items: seqs.iter().map(|s| self.item(&self.request(*s))).collect(),
        }
    }

    /// The verifier's rejection of `message` from `from`; panics if the verifier passes it.
    pub fn verifier_rejects(&self, from: Peer, message: Message) -> Rejection {
        self.verifier.verify_inbound(from, message).unwrap_err()
    }

    /// Verifies `message` as the driver would, then hands it to `engine`. The engine's own
    /// rejections are in the output's `rejections`, beside what it produced.
    pub fn deliver(
        &self,
        engine: &mut Engine,
        now_ms: u64,
        from: Peer,
        message: Message,
    ) -> Output {
        let verified = self
            .verifier
            .verify_inbound(from, message)
            .expect("the verifier passes it");
        engine.on_message(now_ms, verified)
    }

    pub fn deliver_from(&self, engine: &mut Engine, now_ms: u64, from: u32, m: Message) -> Output {
        self.deliver(engine, now_ms, Peer::Replica(from), m)
    }

    /// Delivers the decision of `requests` at `cid` ([`Cluster::deliver_decision`]), runs the
    /// service on what it hands over (each result is the request's op) and returns every reply
    /// the engine sent.
    pub fn decide_and_execute(
        &self,
        engine: &mut Engine,
        cid: u64,
        requests: Vec<Request>,
    ) -> Vec<Reply> {
        let out = self.deliver_decision(engine, cid, requests.clone());
        let mut sent: Vec<Message> = out.messages().filter_map(sent_message).collect();
        for work in out.service {
            let ServiceWork::Execute { cid, items } = work else {
                panic!("unexpected service work {work:?}");
            };
            let results = items
                .iter()
                .map(|item| {
                    requests
                        .iter()
                        .find(|r| r.id() == item.id)
                        .expect("in the batch")
                        .body
                        .op
                        .clone()
                })
                .collect();
            let done = engine.on_executed(0, cid, results);
            sent.extend(done.messages().filter_map(sent_message));
        }
        sent.into_iter()
            .filter_map(|m| match m {
                Message::Reply(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    /// The decision of `requests` at `cid` in regency 0 (ACCEPTs of replicas 0, 1 and 2).
    pub fn decision(&self, cid: u64, requests: Vec<Request>) -> Decision {
        let batch = Batch { requests };
        let digest = batch.digest();
        Decision {
            cid: Cid(cid),
            certificate: self.votes(VoteKind::Accept, &[0, 1, 2], Cid(cid), Regency(0), digest),
            batch,
        }
    }

    /// Delivers to `engine`, from replica 0, the decision of `requests` at `cid`
    /// ([`Cluster::decision`]), which the verifier and the engine both accept.
    pub fn deliver_decision(
        &self,
        engine: &mut Engine,
        cid: u64,
        requests: Vec<Request>,
    ) -> Output {
        let decision = self.decision(cid, requests);
        self.deliver_ok(
            engine,
            0,
            Peer::Replica(0),
            Message::Decisions(vec![decision]),
        )
    }

    /// Delivers to `replica` (replica 3, started, that has executed nothing) regency 1's SYNC
    /// from its leader 1 at time 100, made of `proofs`, of which replica 0's proves a cid
    /// decided: the replica is behind the SYNC. Checks its exact output: it adopts regency 1
    /// (persisted before anything leaves) and asks replica 0 for the decisions from cid 1.
    pub fn apply_sync_behind(&self, replica: &mut Engine, proofs: Vec<Signed<StopData>>) {
        let sync = self.sync(1, Regency(1), proofs);
        let out = self.deliver_from(replica, 100, 1, Message::Sync(sync));
        assert_eq!(
            out,
            Output {
                send_now: vec![],
                persist: vec![PersistRecord::Regency(Regency(1))],
                send_after_persist: vec![send(0, Message::DecisionQuery { from_cid: Cid(1) })],
                service: vec![],
                rejections: vec![],
            }
        );
    }

    /// A checkpoint at `cid` of a service whose state is `service`, with no client sessions,
    /// built as `Engine::on_snapshot` builds one, with the proof that `cid` was decided (an
    /// empty batch, ACCEPTs of replicas 0, 1 and 2).
    pub fn checkpoint_at(&self, cid: Cid, service: &[u8]) -> Checkpoint {
        let data = CheckpointData {
            cid,
            service: service.to_vec(),
            clients: ClientTable::new(self.limits.max_pending_per_client as u64),
        };
        Checkpoint::new(&data, self.decision_proof(cid, Batch::default().digest()))
    }

    /// Delivers to `engine` a report that replica `sources[0]`, then `sources[1]` (f+1 = 2
    /// with f = 1), hold `checkpoint`, at `now_ms` and `now_ms + 10`, and checks the exact
    /// outputs: the first report starts a transfer (a query to everyone), the second makes
    /// f+1 agree and the engine fetches the state from `sources[0]`, from offset 0.
    pub fn agree_on_checkpoint(
        &self,
        engine: &mut Engine,
        now_ms: u64,
        checkpoint: &Checkpoint,
        sources: [u32; 2],
    ) {
        let out = self.deliver_from(engine, now_ms, sources[0], state_info(checkpoint));
        assert_eq!(
            out,
            only_sent(vec![broadcast(Message::StateQuery { rejoin_nonce: 0 })])
        );
        let out = self.deliver_from(engine, now_ms + 10, sources[1], state_info(checkpoint));
        assert_eq!(
            out,
            only_sent(vec![send(sources[0], state_fetch(checkpoint.cid, 0))])
        );
    }

    /// Delivers a message that the verifier and the engine both accept.
    pub fn deliver_ok(&self, engine: &mut Engine, now_ms: u64, from: Peer, m: Message) -> Output {
        let output = self.deliver(engine, now_ms, from, m);
        assert_eq!(output.rejections, [], "the engine accepts it: {output:?}");
        output
    }
}

/// Carries out every piece of service work in `output`, and in what that produces, as a
/// service that answers each operation with `b"ok"` and snapshots as `b"snapshot"`; returns
/// the outputs it produced, in order. The engine hands the service one batch at a time, so
/// a test that learns several decisions runs them through this to execute them all.
#[allow(dead_code)] // Not every test binary that includes this module runs a service.
pub fn run_service(engine: &mut Engine, now_ms: u64, output: &Output) -> Vec<Output> {
    let mut work: std::collections::VecDeque<ServiceWork> =
        output.service.iter().cloned().collect();
    let mut produced = Vec::new();
    while let Some(next) = work.pop_front() {
        let out = match next {
            ServiceWork::Execute { cid, items } => {
                engine.on_executed(now_ms, cid, vec![b"ok".to_vec(); items.len()])
            }
            ServiceWork::TakeSnapshot { cid } => {
                engine.on_snapshot(now_ms, cid, b"snapshot".to_vec())
            }
            // Restoring a snapshot has no answer.
            ServiceWork::Restore { .. } => continue,
            other => panic!("unexpected service work {other:?}"),
        };
        work.extend(out.service.iter().cloned());
        produced.push(out);
    }
    produced
}

/// A replica's report that it holds `checkpoint` and has executed up to it (an unsolicited
/// hint: no nonces).
pub fn state_info(checkpoint: &Checkpoint) -> Message {
    Message::StateInfo {
        checkpoints: vec![(checkpoint.cid, checkpoint.digest)],
        voted_up_to: checkpoint.cid,
        executed: Some(checkpoint.decided.clone()),
        for_nonce: 0,
        rejoin_nonce: 0,
    }
}

/// A fetch of the state of the checkpoint at `cid` from `offset`.
pub fn state_fetch(cid: Cid, offset: u64) -> Message {
    Message::StateFetch { cid, offset }
}

/// The chunk of `checkpoint`'s state at `offset`; the `last` one carries the decision proof.
pub fn state_chunk(checkpoint: &Checkpoint, offset: usize, bytes: Vec<u8>, last: bool) -> Message {
    Message::StateChunk {
        cid: checkpoint.cid,
        offset: offset as u64,
        total_len: checkpoint.data.len() as u64,
        bytes,
        decided: last.then(|| checkpoint.decided.clone()),
    }
}

pub fn send(to: u32, message: Message) -> Outgoing {
    Outgoing::Send {
        to: Peer::Replica(to),
        message,
    }
}

pub fn broadcast(message: Message) -> Outgoing {
    Outgoing::Broadcast(message)
}

/// An output that holds nothing but `rejection`.
pub fn only_rejected(rejection: Rejection) -> Output {
    Output {
        rejections: vec![rejection],
        ..Output::default()
    }
}

/// An output that refuses the input for `rejection` and, beside that, sends `outgoing` at once.
pub fn rejected_sending(rejection: Rejection, outgoing: Outgoing) -> Output {
    Output {
        send_now: vec![outgoing],
        rejections: vec![rejection],
        ..Output::default()
    }
}

/// An output that holds nothing but `work` for the service.
pub fn only_service(work: ServiceWork) -> Output {
    Output {
        service: vec![work],
        ..Output::default()
    }
}

/// An output that holds nothing but `outgoing`, to send at once.
pub fn only_sent(outgoing: Vec<Outgoing>) -> Output {
    Output {
        send_now: outgoing,
        ..Output::default()
    }
}

pub fn timers(engine: &Engine) -> Vec<(TimerKind, u64)> {
    engine.timer_deadlines_ms().collect()
}

/// The message of a send to one peer, if `o` is one.
fn sent_message(o: &Outgoing) -> Option<Message> {
    match o {
        Outgoing::Send { message, .. } => Some(message.clone()),
        _ => None,
    }
}
