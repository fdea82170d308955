//! The hunting adversary: a generic Byzantine replica and a generic Byzantine client that, at
//! every step, send messages of every kind, validly signed with their own keys, with fields
//! pushed to the edges (0, 1, the current cid or regency ± a little, `u64::MAX`), mutations and
//! replays of honest messages they have seen, and their own equivocations. Nothing is scripted
//! against a known bug: what to send, to whom and with which values is drawn from the seed, so
//! every run replays exactly.
//!
//! This module only builds messages; the harness ([`super::harness`]) decides when the
//! adversary steps, routes what it builds through the faulty network, feeds it what it
//! observes, and counts what it sent and what the honest replicas refused.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use smr_core::message::{
    Batch, Cid, Decision, DecisionProof, Message, PreparedProof, Propose, Regency, Reply, Request,
    RequestBody, RequestKind, Signed, StatusReport, Stop, StopData, Sync, Vote, VoteKind,
};
use smr_crypto::{Digest, PublicKey, Signer};
use smr_modes::Mode;

use crate::harness::Rng;

/// Honest messages the adversary remembers, most recent last.
const SEEN_CAPACITY: usize = 96;

/// Every message kind, by [`Message::kind_name`]: the adversary draws one of these per message.
pub const ALL_KINDS: &[&str] = &[
    "request",
    "reply",
    "propose",
    "write",
    "accept",
    "forward",
    "decision-query",
    "decisions",
    "heartbeat",
    "stop",
    "stopdata",
    "sync",
    "sync-query",
    "checkpoint-announce",
    "state-query",
    "state-info",
    "state-fetch",
    "state-chunk",
    "abstaining",
    "status-query",
    "status",
];

/// What the adversary knows of the run when it steps: its own replica's view, which an honest
/// engine under its control keeps up to date.
#[derive(Clone, Copy, Debug)]
pub struct View {
    pub n: u32,
    pub cid: Cid,
    pub regency: Regency,
    pub max_op_bytes: usize,
}

/// The memory and the counters of one adversary (replica or client).
pub struct Adversary {
    pub mode: Mode,
    pub key: Arc<dyn Signer>,
    /// Honest messages it observed, most recent last.
    seen: VecDeque<Message>,
    /// Messages it sent, per kind.
    pub sent_by_kind: BTreeMap<&'static str, u64>,
}

/// One message to send, and to whom (replica ids); `None` means every replica.
pub struct Shot {
    pub message: Message,
    pub to: Option<Vec<u32>>,
}

fn signed<T: smr_core::message::ReplicaSigned>(
    mode: Mode,
    key: &Arc<dyn Signer>,
    body: T,
) -> Signed<T> {
    Signed::new(body, (mode == Mode::Bft).then_some(key.as_ref()))
}

/// A value biased to the edges around `current`: 0, 1, `current` ± a little, far above it,
/// the top of the range, and now and then anything.
pub fn edge(rng: &mut Rng, current: u64) -> u64 {
    match rng.range(0, 11) {
        0 => 0,
        1 => 1,
        2 => current,
        3 => current.saturating_add(1),
        4 => current.saturating_sub(1),
        5 => current.saturating_add(rng.range(2, 40)),
        6 => current.saturating_sub(rng.range(2, 40)),
        7 => u64::MAX,
        8 => u64::MAX - rng.range(1, 64),
        9 => current.saturating_add(1 << 20),
        10 => 1_000_000,
        _ => rng.next_u64(),
    }
}

impl Adversary {
    pub fn new(mode: Mode, key: Arc<dyn Signer>) -> Adversary {
        Adversary {
            mode,
            key,
            seen: VecDeque::new(),
            sent_by_kind: BTreeMap::new(),
        }
    }

    pub fn me(&self) -> PublicKey {
        self.key.public_key()
    }

    /// Remembers an honest message it observed.
    pub fn observe(&mut self, message: &Message) {
        if matches!(message, Message::StatusQuery { .. } | Message::SyncQuery) {
            return;
        }
        if self.seen.len() == SEEN_CAPACITY {
            self.seen.pop_front();
        }
        self.seen.push_back(message.clone());
    }

    pub fn count(&mut self, message: &Message) {
        *self.sent_by_kind.entry(message.kind_name()).or_default() += 1;
    }

    fn pick_seen(&self, rng: &mut Rng) -> Option<&Message> {
        if self.seen.is_empty() {
            return None;
        }
        Some(&self.seen[rng.range(0, self.seen.len() as u64 - 1) as usize])
    }

    /// A replayed honest message, unchanged.
    pub fn replay(&self, rng: &mut Rng) -> Option<Message> {
        self.pick_seen(rng).cloned()
    }

    fn seen_requests(&self) -> Vec<Request> {
        let mut out = Vec::new();
        for m in &self.seen {
            match m {
                Message::Request(r) => out.push(r.clone()),
                Message::Forward(rs) => out.extend(rs.iter().cloned()),
                Message::Propose(p) => out.extend(p.body.batch.requests.iter().cloned()),
                Message::Stop(s) => out.extend(s.body.pending.iter().cloned()),
                _ => {}
            }
        }
        out
    }

    fn seen_batches(&self) -> Vec<Batch> {
        let mut out = Vec::new();
        for m in &self.seen {
            match m {
                Message::Propose(p) => out.push(p.body.batch.clone()),
                Message::Decisions(ds) => out.extend(ds.iter().map(|d| d.batch.clone())),
                _ => {}
            }
        }
        out
    }

    /// Rejoin nonces it saw honest replicas use: a lie that echoes one counts as a report.
    fn seen_nonces(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for m in &self.seen {
            match m {
                Message::StateQuery { rejoin_nonce } | Message::StateInfo { rejoin_nonce, .. } => {
                    out.push(*rejoin_nonce)
                }
                _ => {}
            }
        }
        out
    }

    /// A nonce to put in a StateQuery or StateInfo: 0, one seen, or a random one.
    fn nonce(&self, rng: &mut Rng) -> u64 {
        let seen = self.seen_nonces();
        match rng.range(0, 2) {
            0 => 0,
            1 if !seen.is_empty() => seen[rng.range(0, seen.len() as u64 - 1) as usize],
            _ => rng.next_u64(),
        }
    }

    fn seen_decisions(&self) -> Vec<Decision> {
        let mut out = Vec::new();
        for m in &self.seen {
            if let Message::Decisions(ds) = m {
                out.extend(ds.iter().cloned());
            }
        }
        out
    }

    fn seen_stopdata(&self) -> Vec<Signed<StopData>> {
        let mut out = Vec::new();
        for m in &self.seen {
            match m {
                Message::StopData(sd) => out.push(sd.clone()),
                Message::Sync(s) => out.extend(s.body.proofs.iter().cloned()),
                _ => {}
            }
        }
        out
    }

    fn seen_votes(&self) -> Vec<Signed<Vote>> {
        let mut out = Vec::new();
        for m in &self.seen {
            match m {
                Message::Write(v) | Message::Accept(v) => out.push(v.clone()),
                Message::Decisions(ds) => {
                    out.extend(ds.iter().flat_map(|d| d.certificate.iter().cloned()))
                }
                _ => {}
            }
        }
        out
    }

    fn digest(&self, rng: &mut Rng) -> Digest {
        let votes = self.seen_votes();
        match rng.range(0, 3) {
            0 if !votes.is_empty() => {
                votes[rng.range(0, votes.len() as u64 - 1) as usize]
                    .body
                    .digest
            }
            1 => Batch::default().digest(),
            2 => Digest([rng.next_u64() as u8; 32]),
            _ => Digest([0; 32]),
        }
    }

    fn batch(&self, rng: &mut Rng, max_op_bytes: usize) -> Batch {
        let requests = self.seen_requests();
        let batches = self.seen_batches();
        match rng.range(0, 5) {
            0 => Batch::default(),
            1 if !batches.is_empty() => {
                batches[rng.range(0, batches.len() as u64 - 1) as usize].clone()
            }
            2 if !requests.is_empty() => {
                // Honest requests, maybe one twice.
                let k = rng.range(1, requests.len().min(6) as u64);
                let mut b: Vec<Request> = (0..k)
                    .map(|_| requests[rng.range(0, requests.len() as u64 - 1) as usize].clone())
                    .collect();
                if rng.chance(0.3) {
                    b.push(b[0].clone());
                }
                Batch { requests: b }
            }
            3 if !requests.is_empty() => {
                // An honest request whose op or seq changed under its client's signature.
                let mut r = requests[rng.range(0, requests.len() as u64 - 1) as usize].clone();
                if rng.chance(0.5) {
                    r.body.op = b"MUTATED".to_vec();
                } else {
                    r.body.seq = edge(rng, r.body.seq);
                }
                Batch { requests: vec![r] }
            }
            _ => Batch {
                requests: vec![self.own_request(rng, max_op_bytes)],
            },
        }
    }

    /// A request in the adversary's own name (valid when it is a client the cluster admits),
    /// with an edge session (an open request, its first opened number, or an edge of the
    /// numbers; tags of opens at the edges of the tag range too), seq, kind and op size.
    pub fn own_request(&self, rng: &mut Rng, max_op_bytes: usize) -> Request {
        let op_len = match rng.range(0, 3) {
            0 => 0,
            1 => max_op_bytes,
            2 => max_op_bytes + 1,
            _ => rng.range(1, 32) as usize,
        };
        let limit = smr_core::clients::SESSION_NUMBER_LIMIT;
        let (session, seq) = match rng.range(0, 3) {
            0 => (
                smr_core::message::OPEN_SESSION,
                [limit, limit + 1, u64::MAX, limit - 1][rng.range(0, 3) as usize],
            ),
            1 => (1, edge(rng, 1)),
            2 => (edge(rng, 1), edge(rng, 1)),
            _ => ([limit - 1, limit, u64::MAX][rng.range(0, 2) as usize], 1),
        };
        let body = RequestBody {
            client: self.me(),
            session,
            seq,
            kind: if rng.chance(0.2) {
                RequestKind::Unordered
            } else {
                RequestKind::Ordered
            },
            op: vec![0xB7; op_len],
        };
        Request::new(body, (self.mode == Mode::Bft).then_some(self.key.as_ref()))
    }

    fn decision_proof(&self, rng: &mut Rng) -> Option<DecisionProof> {
        let ds = self.seen_decisions();
        if ds.is_empty() || rng.chance(0.3) {
            return None;
        }
        let d = &ds[rng.range(0, ds.len() as u64 - 1) as usize];
        let mut proof = DecisionProof {
            cid: d.cid,
            digest: d.batch.digest(),
            certificate: d.certificate.clone(),
        };
        if rng.chance(0.3) {
            proof.cid = Cid(edge(rng, proof.cid.0));
        }
        Some(proof)
    }

    fn prepared(&self, rng: &mut Rng, view: &View) -> Vec<PreparedProof> {
        let mut out: Vec<PreparedProof> = self
            .seen_stopdata()
            .into_iter()
            .flat_map(|sd| sd.body.prepared)
            .take(rng.range(0, 3) as usize)
            .collect();
        if rng.chance(0.5) {
            // A value it "prepared" without the WRITEs to show for it.
            out.push(PreparedProof {
                cid: Cid(edge(rng, view.cid.0)),
                epoch: Regency(edge(rng, view.regency.0)),
                batch: self.batch(rng, view.max_op_bytes),
                writes: Vec::new(),
            });
        }
        out
    }

    fn stopdata(&self, rng: &mut Rng, view: &View, me: u32) -> Signed<StopData> {
        signed(
            self.mode,
            &self.key,
            StopData {
                replica: me,
                regency: Regency(edge(rng, view.regency.0)),
                last_decided: self.decision_proof(rng),
                prepared: self.prepared(rng, view),
            },
        )
    }

    fn targets(rng: &mut Rng, view: &View, me: u32) -> Option<Vec<u32>> {
        if rng.chance(0.4) {
            return None;
        }
        let to: Vec<u32> = (0..view.n)
            .filter(|r| *r != me && rng.chance(0.5))
            .collect();
        if to.is_empty() {
            None
        } else {
            Some(to)
        }
    }

    /// What the Byzantine replica `me` sends at one step: a few messages, each of a random
    /// kind, built fresh with edge values, replayed, mutated, or equivocating.
    pub fn replica_step(&mut self, rng: &mut Rng, view: View, me: u32) -> Vec<Shot> {
        let mut shots = Vec::new();
        for _ in 0..rng.range(1, 3) {
            if rng.chance(0.15) {
                if let Some(m) = self.replay(rng) {
                    shots.push(Shot {
                        message: m,
                        to: Self::targets(rng, &view, me),
                    });
                    continue;
                }
            }
            if rng.chance(0.1) {
                shots.extend(self.equivocate(rng, &view, me));
                continue;
            }
            let kind = ALL_KINDS[rng.range(0, ALL_KINDS.len() as u64 - 1) as usize];
            let message = self.build(rng, &view, me, kind);
            shots.push(Shot {
                message,
                to: Self::targets(rng, &view, me),
            });
        }
        for s in &shots {
            self.count(&s.message);
        }
        shots
    }

    /// Two conflicting messages of its own for the same slot, each to a different half of the
    /// replicas: two PROPOSEs for one cid, or two WRITEs or ACCEPTs with different digests.
    fn equivocate(&self, rng: &mut Rng, view: &View, me: u32) -> Vec<Shot> {
        let half_a: Vec<u32> = (0..view.n).filter(|r| *r != me && r % 2 == 0).collect();
        let half_b: Vec<u32> = (0..view.n).filter(|r| *r != me && r % 2 == 1).collect();
        let cid = view.cid.saturating_add(rng.range(1, 3));
        let (a, b) = if rng.chance(0.5) {
            let make = |batch: Batch| {
                Message::Propose(signed(
                    self.mode,
                    &self.key,
                    Propose {
                        leader: me,
                        cid,
                        regency: view.regency,
                        batch,
                    },
                ))
            };
            (
                make(self.batch(rng, view.max_op_bytes)),
                make(self.batch(rng, view.max_op_bytes)),
            )
        } else {
            let kind = if rng.chance(0.5) {
                VoteKind::Write
            } else {
                VoteKind::Accept
            };
            let make = |digest: Digest| {
                let v = signed(
                    self.mode,
                    &self.key,
                    Vote {
                        kind,
                        replica: me,
                        cid,
                        regency: view.regency,
                        digest,
                    },
                );
                match kind {
                    VoteKind::Write => Message::Write(v),
                    VoteKind::Accept => Message::Accept(v),
                }
            };
            (
                make(self.digest(rng)),
                make(Digest([rng.next_u64() as u8; 32])),
            )
        };
        vec![
            Shot {
                message: a,
                to: Some(half_a),
            },
            Shot {
                message: b,
                to: Some(half_b),
            },
        ]
    }

    /// A message of `kind` from replica `me`, built with edge values, mutated from something
    /// seen, or both.
    fn build(&self, rng: &mut Rng, view: &View, me: u32, kind: &str) -> Message {
        let cid = |rng: &mut Rng| Cid(edge(rng, view.cid.0));
        let regency = |rng: &mut Rng| Regency(edge(rng, view.regency.0));
        match kind {
            "request" => Message::Request(self.own_request(rng, view.max_op_bytes)),
            "reply" => Message::Reply(Reply {
                replica: me,
                client: self.me(),
                session: 1,
                status: smr_core::message::ReplyStatus::Executed,
                seq: edge(rng, 1),
                regency: regency(rng),
                result: vec![1; rng.range(0, 16) as usize],
            }),
            "propose" => Message::Propose(signed(
                self.mode,
                &self.key,
                Propose {
                    leader: if rng.chance(0.9) {
                        me
                    } else {
                        rng.range(0, view.n as u64) as u32
                    },
                    cid: cid(rng),
                    regency: if rng.chance(0.5) {
                        view.regency
                    } else {
                        regency(rng)
                    },
                    batch: self.batch(rng, view.max_op_bytes),
                },
            )),
            "write" | "accept" => {
                let vote_kind = if kind == "write" {
                    VoteKind::Write
                } else {
                    VoteKind::Accept
                };
                let v = signed(
                    self.mode,
                    &self.key,
                    Vote {
                        // Now and then the kind of the other message.
                        kind: if rng.chance(0.9) {
                            vote_kind
                        } else {
                            VoteKind::Write
                        },
                        replica: me,
                        cid: cid(rng),
                        regency: if rng.chance(0.5) {
                            view.regency
                        } else {
                            regency(rng)
                        },
                        digest: self.digest(rng),
                    },
                );
                if kind == "write" {
                    Message::Write(v)
                } else {
                    Message::Accept(v)
                }
            }
            "forward" => Message::Forward(self.batch(rng, view.max_op_bytes).requests),
            "decision-query" => Message::DecisionQuery { from_cid: cid(rng) },
            "decisions" => {
                let mut ds = self.seen_decisions();
                ds.truncate(rng.range(0, 4) as usize);
                if let Some(d) = ds.first_mut() {
                    match rng.range(0, 2) {
                        0 => d.cid = cid(rng),
                        1 => d.batch = self.batch(rng, view.max_op_bytes),
                        _ => {}
                    }
                }
                Message::Decisions(ds)
            }
            "heartbeat" => Message::Heartbeat {
                regency: if rng.chance(0.5) {
                    view.regency
                } else {
                    regency(rng)
                },
                last_decided: cid(rng),
            },
            "stop" => {
                let pending = self
                    .seen_requests()
                    .into_iter()
                    .take(rng.range(0, 3) as usize)
                    .collect();
                Message::Stop(signed(
                    self.mode,
                    &self.key,
                    Stop {
                        replica: me,
                        regency: regency(rng),
                        from_regency: regency(rng),
                        pending,
                    },
                ))
            }
            "stopdata" => Message::StopData(self.stopdata(rng, view, me)),
            "sync" => {
                if rng.chance(0.3) {
                    if let Some(m @ Message::Sync(_)) = self.pick_seen(rng) {
                        return m.clone();
                    }
                }
                let mut proofs = self.seen_stopdata();
                proofs.truncate(rng.range(0, view.n as u64) as usize);
                proofs.push(self.stopdata(rng, view, me));
                Message::Sync(signed(
                    self.mode,
                    &self.key,
                    Sync {
                        leader: me,
                        regency: regency(rng),
                        proofs,
                    },
                ))
            }
            "sync-query" => Message::SyncQuery,
            "checkpoint-announce" => Message::CheckpointAnnounce {
                cid: cid(rng),
                digest: self.digest(rng),
            },
            "state-query" => Message::StateQuery {
                rejoin_nonce: self.nonce(rng),
            },
            "state-info" => Message::StateInfo {
                checkpoints: (0..rng.range(0, 3))
                    .map(|_| (cid(rng), self.digest(rng)))
                    .collect(),
                voted_up_to: cid(rng),
                executed: self.decision_proof(rng),
                for_nonce: self.nonce(rng),
                rejoin_nonce: self.nonce(rng),
            },
            "state-fetch" => Message::StateFetch {
                cid: cid(rng),
                offset: edge(rng, 0),
            },
            "state-chunk" => Message::StateChunk {
                cid: cid(rng),
                offset: edge(rng, 0),
                total_len: edge(rng, 512),
                bytes: vec![0x5c; rng.range(0, 600) as usize],
                decided: self.decision_proof(rng),
            },
            "abstaining" => Message::Abstaining { until: cid(rng) },
            // The engine refuses it whatever its route; no draw, so seeds replay as before.
            "status-query" => Message::StatusQuery { route: 0 },
            _ => Message::Status(StatusReport {
                replica: me,
                mode: "\u{1b}[31mbft".into(),
                regency: regency(rng),
                leader: me,
                last_decided: cid(rng),
                last_checkpoint: cid(rng),
                state_digest: Digest([0; 32]),
                pending_requests: edge(rng, 0),
                rejected_messages: edge(rng, 0),
                log_entries: edge(rng, 0),
                decided_instances: edge(rng, 0),
                executed_requests: edge(rng, 0),
                client_signatures_verified: 0,
                client_signatures_cached: 0,
                fsyncs: 0,
                refused_replicas: Vec::new(),
                state_over_max_state_bytes: true,
                participation: smr_core::message::Participation::CatchingUp { until: cid(rng) },
            }),
        }
    }

    /// What the Byzantine client sends at one step: mostly requests in its own name with edge
    /// seqs, kinds and op sizes; replays of honest clients' requests (as itself, which is
    /// impersonation) and mutations of them; and now and then a message of a kind a client may
    /// not send at all.
    pub fn client_step(&mut self, rng: &mut Rng, view: View) -> Vec<Shot> {
        let mut shots = Vec::new();
        for _ in 0..rng.range(1, 2) {
            let message = match rng.range(0, 9) {
                0..=3 => Message::Request(self.own_request(rng, view.max_op_bytes)),
                4 | 5 => match self.pick_seen(rng) {
                    Some(Message::Request(r)) => {
                        let mut r = r.clone();
                        match rng.range(0, 2) {
                            // Replayed as is: another client's request on this connection.
                            0 => {}
                            // Re-signed as its own, with the victim's op and an edge seq.
                            1 => {
                                r.body.client = self.me();
                                r.body.seq = edge(rng, r.body.seq);
                                r = Request::new(
                                    r.body,
                                    (self.mode == Mode::Bft).then_some(self.key.as_ref()),
                                );
                            }
                            // The victim's request with its op changed.
                            _ => r.body.op = b"MUTATED-BY-CLIENT".to_vec(),
                        }
                        Message::Request(r)
                    }
                    _ => Message::Request(self.own_request(rng, view.max_op_bytes)),
                },
                _ => {
                    let kind = ALL_KINDS[rng.range(0, ALL_KINDS.len() as u64 - 1) as usize];
                    self.build(rng, &view, 0, kind)
                }
            };
            shots.push(Shot {
                message,
                to: Self::targets(rng, &view, u32::MAX),
            });
        }
        for s in &shots {
            self.count(&s.message);
        }
        shots
    }
}
