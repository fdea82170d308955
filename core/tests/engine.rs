//! Handler-level tests: feed one engine inputs and assert the exact output or rejections.

use std::collections::BTreeSet;
use std::sync::Arc;

use smr_core::engine::{ExecuteItem, Outgoing, Output, PersistRecord, ServiceWork};
use smr_core::message::{
    Batch, Cid, Decision, Message, PreparedProof, Propose, Regency, Reply, Request, RequestBody,
    RequestKind, Signed, Vote, VoteKind,
};
use smr_core::{
    ClientPolicy, Engine, EngineConfig, InboundVerifier, Limits, Peer, Rejection, Timeouts,
};
use smr_crypto::sim::{SimKey, SimVerifier};
use smr_crypto::{Digest, PublicKey, Signature, Signer};
use smr_modes::{Mode, Quorums};

struct Cluster {
    quorums: Quorums,
    keys: Vec<SimKey>,
    client: SimKey,
    verifier: InboundVerifier,
}

fn key(i: u8) -> SimKey {
    SimKey::from_seed([i; 32])
}

fn cluster(mode: Mode, n: usize, f: usize) -> Cluster {
    let quorums = Quorums::new(mode, n, f).unwrap();
    let keys: Vec<SimKey> = (0..n as u8).map(key).collect();
    let client = key(200);
    let mut sim = SimVerifier::new();
    for k in keys.iter().chain([&client]) {
        sim.register(k);
    }
    let verifier = InboundVerifier {
        quorums,
        replica_keys: Arc::new(keys.iter().map(|k| k.public_key()).collect()),
        clients: Arc::new(ClientPolicy::Allowed(BTreeSet::from([client.public_key()]))),
        limits: Limits::default(),
        signatures: Arc::new(sim),
    };
    Cluster {
        quorums,
        keys,
        client,
        verifier,
    }
}

impl Cluster {
    fn engine(&self, me: u32) -> Engine {
        let cfg = EngineConfig {
            quorums: self.quorums,
            me,
            replica_keys: self.keys.iter().map(|k| k.public_key()).collect(),
            clients: (*self.verifier.clients).clone(),
            limits: Limits::default(),
            timeouts: Timeouts::default(),
        }
        .validate()
        .expect("valid test config");
        Engine::new(cfg, Arc::new(self.keys[me as usize].clone()))
    }

    fn signing(&self) -> bool {
        self.quorums.requires_signatures()
    }

    fn request(&self, seq: u64) -> Request {
        let body = RequestBody {
            client: self.client.public_key(),
            seq,
            kind: RequestKind::Ordered,
            op: format!("op{seq}").into_bytes(),
        };
        Request::new(body, self.signing().then_some(&self.client as &dyn Signer))
    }

    fn propose(&self, leader: u32, cid: Cid, regency: Regency, batch: Batch) -> Signed<Propose> {
        Signed::new(
            Propose {
                leader,
                cid,
                regency,
                batch,
            },
            self.signing()
                .then_some(&self.keys[leader as usize] as &dyn Signer),
        )
    }

    fn vote(&self, kind: VoteKind, replica: u32, cid: Cid, digest: Digest) -> Signed<Vote> {
        Signed::new(
            Vote {
                kind,
                replica,
                cid,
                regency: Regency(0),
                digest,
            },
            self.signing()
                .then_some(&self.keys[replica as usize] as &dyn Signer),
        )
    }

    /// Verifies `message` and hands it to `engine`. A rejection by the verifier is the `Err`;
    /// the engine's own rejections are in the output's `rejections`, beside what it produced.
    fn deliver(
        &self,
        engine: &mut Engine,
        from: Peer,
        message: Message,
    ) -> Result<Output, Rejection> {
        let verified = self.verifier.verify_inbound(from, message)?;
        Ok(engine.on_message(0, verified))
    }

    /// Delivers a message that the verifier and the engine both accept.
    fn deliver_ok(&self, engine: &mut Engine, from: Peer, message: Message) -> Output {
        let output = self
            .deliver(engine, from, message)
            .expect("the verifier passes it");
        assert_eq!(output.rejections, [], "the engine accepts it: {output:?}");
        output
    }

    /// What the replica `replica` sends a client once `seq` executed with `result`.
    fn reply(&self, replica: u32, seq: u64, result: &[u8]) -> Outgoing {
        Outgoing::Send {
            to: Peer::Client(self.client.public_key()),
            message: Message::Reply(Reply {
                replica,
                client: self.client.public_key(),
                seq,
                regency: Regency(0),
                result: result.to_vec(),
            }),
        }
    }

    /// What the service is handed to execute `request`.
    fn item(&self, request: &Request) -> ExecuteItem {
        ExecuteItem {
            id: request.id(),
            op: request.body.op.clone(),
        }
    }
}

/// An output that holds nothing but `rejection`.
fn only_rejected(rejection: Rejection) -> Output {
    Output {
        rejections: vec![rejection],
        ..Output::default()
    }
}

#[test]
fn bft_follower_sends_no_accept_before_a_quorum_of_writes() {
    let c = cluster(Mode::Bft, 4, 1);
    let mut follower = c.engine(1);
    let batch = Batch {
        requests: vec![c.request(1)],
    };
    let digest = batch.digest();
    let output = c.deliver_ok(
        &mut follower,
        Peer::Replica(0),
        Message::Propose(c.propose(0, Cid(1), Regency(0), batch.clone())),
    );
    // It persists its WRITE before broadcasting it, and sends no ACCEPT.
    let my_write = c.vote(VoteKind::Write, 1, Cid(1), digest);
    assert_eq!(
        output,
        Output {
            persist: vec![PersistRecord::Vote(my_write.body)],
            send_after_persist: vec![Outgoing::Broadcast(Message::Write(my_write.clone()))],
            ..Output::default()
        }
    );
    // Own WRITE plus the leader's: 2 < Q = 3.
    let output = c.deliver_ok(
        &mut follower,
        Peer::Replica(0),
        Message::Write(c.vote(VoteKind::Write, 0, Cid(1), digest)),
    );
    assert_eq!(output, Output::default());
    // ACCEPTs from others alone never make this replica accept (or execute).
    for r in [0, 2] {
        let output = c.deliver_ok(
            &mut follower,
            Peer::Replica(r),
            Message::Accept(c.vote(VoteKind::Accept, r, Cid(1), digest)),
        );
        assert_eq!(output, Output::default());
    }
    // The third WRITE makes Q: now it accepts, and with three ACCEPTs it decides and executes.
    let output = c.deliver_ok(
        &mut follower,
        Peer::Replica(2),
        Message::Write(c.vote(VoteKind::Write, 2, Cid(1), digest)),
    );
    let my_accept = c.vote(VoteKind::Accept, 1, Cid(1), digest);
    assert_eq!(
        output,
        Output {
            persist: vec![
                PersistRecord::Prepared(PreparedProof {
                    cid: Cid(1),
                    epoch: Regency(0),
                    batch: batch.clone(),
                    writes: vec![
                        c.vote(VoteKind::Write, 0, Cid(1), digest),
                        my_write,
                        c.vote(VoteKind::Write, 2, Cid(1), digest),
                    ],
                }),
                PersistRecord::Vote(my_accept.body),
                PersistRecord::Decided(Decision {
                    cid: Cid(1),
                    batch,
                    certificate: vec![
                        c.vote(VoteKind::Accept, 0, Cid(1), digest),
                        my_accept.clone(),
                        c.vote(VoteKind::Accept, 2, Cid(1), digest),
                    ],
                }),
            ],
            send_after_persist: vec![Outgoing::Broadcast(Message::Accept(my_accept))],
            service: vec![ServiceWork::Execute {
                cid: Cid(1),
                items: vec![c.item(&c.request(1))],
            }],
            ..Output::default()
        }
    );
}

#[test]
fn cft_follower_accepts_on_the_proposal_without_any_write() {
    let c = cluster(Mode::Cft, 3, 1);
    let mut follower = c.engine(1);
    let batch = Batch {
        requests: vec![c.request(1)],
    };
    let digest = batch.digest();
    let output = c.deliver_ok(
        &mut follower,
        Peer::Replica(0),
        Message::Propose(c.propose(0, Cid(1), Regency(0), batch.clone())),
    );
    // It persists the accepted value and its ACCEPT, then broadcasts the ACCEPT: no WRITE.
    let my_accept = c.vote(VoteKind::Accept, 1, Cid(1), digest);
    assert_eq!(
        output,
        Output {
            persist: vec![
                PersistRecord::Prepared(PreparedProof {
                    cid: Cid(1),
                    epoch: Regency(0),
                    batch,
                    writes: Vec::new(),
                }),
                PersistRecord::Vote(my_accept.body),
            ],
            send_after_persist: vec![Outgoing::Broadcast(Message::Accept(my_accept))],
            ..Output::default()
        }
    );
}

#[test]
fn proposal_from_a_replica_that_is_not_the_leader_is_rejected() {
    let c = cluster(Mode::Bft, 4, 1);
    let mut follower = c.engine(1);
    let p = c.propose(
        2,
        Cid(1),
        Regency(0),
        Batch {
            requests: vec![c.request(1)],
        },
    );
    let output = c
        .deliver(&mut follower, Peer::Replica(2), Message::Propose(p))
        .expect("the verifier passes it");
    assert_eq!(
        output,
        only_rejected(Rejection::WrongLeader {
            from: 2,
            regency: Regency(0),
            leader: 0,
        })
    );
    assert_eq!(follower.stats().rejections.get("wrong_leader"), Some(&1));
}

#[test]
fn proposal_for_a_stale_or_future_regency_is_rejected() {
    let c = cluster(Mode::Bft, 4, 1);
    let mut follower = c.engine(1);
    // Regency 4 has leader 0 as well, but it is not the current regency.
    let p = c.propose(0, Cid(1), Regency(4), Batch::default());
    let output = c
        .deliver(&mut follower, Peer::Replica(0), Message::Propose(p))
        .expect("the verifier passes it");
    // Beside the rejection, the follower asks the sender for the SYNC it missed.
    assert_eq!(
        output,
        Output {
            send_now: vec![Outgoing::Send {
                to: Peer::Replica(0),
                message: Message::SyncQuery,
            }],
            rejections: vec![Rejection::FutureRegency {
                got: Regency(4),
                current: Regency(0)
            }],
            ..Output::default()
        }
    );
}

#[test]
fn equivocating_leader_gets_one_vote_per_instance() {
    let c = cluster(Mode::Bft, 4, 1);
    let mut follower = c.engine(1);
    let a = c.propose(
        0,
        Cid(1),
        Regency(0),
        Batch {
            requests: vec![c.request(1)],
        },
    );
    let b = c.propose(
        0,
        Cid(1),
        Regency(0),
        Batch {
            requests: vec![c.request(2)],
        },
    );
    let my_write = c.vote(VoteKind::Write, 1, Cid(1), a.body.batch.digest());
    let output = c.deliver_ok(&mut follower, Peer::Replica(0), Message::Propose(a));
    assert_eq!(
        output,
        Output {
            persist: vec![PersistRecord::Vote(my_write.body)],
            send_after_persist: vec![Outgoing::Broadcast(Message::Write(my_write))],
            ..Output::default()
        }
    );
    let output = c
        .deliver(&mut follower, Peer::Replica(0), Message::Propose(b))
        .expect("the verifier passes it");
    // No second vote: nothing but the rejection.
    assert_eq!(
        output,
        only_rejected(Rejection::Equivocation {
            replica: 0,
            cid: Cid(1),
            what: "proposals",
        })
    );
}

#[test]
fn double_voting_replica_is_rejected() {
    let c = cluster(Mode::Bft, 4, 1);
    let mut follower = c.engine(1);
    let output = c.deliver_ok(
        &mut follower,
        Peer::Replica(2),
        Message::Write(c.vote(VoteKind::Write, 2, Cid(1), Digest([1; 32]))),
    );
    assert_eq!(output, Output::default());
    let output = c
        .deliver(
            &mut follower,
            Peer::Replica(2),
            Message::Write(c.vote(VoteKind::Write, 2, Cid(1), Digest([2; 32]))),
        )
        .expect("the verifier passes it");
    assert_eq!(
        output,
        only_rejected(Rejection::Equivocation {
            replica: 2,
            cid: Cid(1),
            what: "writes",
        })
    );
}

#[test]
fn tampered_vote_signature_is_rejected_with_its_index() {
    let c = cluster(Mode::Bft, 4, 1);
    let mut vote = c.vote(VoteKind::Write, 2, Cid(1), Digest([1; 32]));
    vote.body.digest = Digest([9; 32]);
    let err = c
        .verifier
        .verify_inbound(Peer::Replica(2), Message::Write(vote))
        .unwrap_err();
    assert!(
        matches!(err, Rejection::BadSignature { index: 0, .. }),
        "{err:?}"
    );
}

#[test]
fn vote_claiming_another_replica_is_rejected() {
    let c = cluster(Mode::Bft, 4, 1);
    let vote = c.vote(VoteKind::Write, 2, Cid(1), Digest([1; 32]));
    let err = c
        .verifier
        .verify_inbound(Peer::Replica(3), Message::Write(vote))
        .unwrap_err();
    assert_eq!(err, Rejection::SenderMismatch);
}

#[test]
fn unknown_replica_id_is_rejected() {
    let c = cluster(Mode::Bft, 4, 1);
    let err = c
        .verifier
        .verify_inbound(
            Peer::Replica(7),
            Message::DecisionQuery { from_cid: Cid(1) },
        )
        .unwrap_err();
    assert_eq!(err, Rejection::UnknownSender);
}

#[test]
fn request_with_bad_signature_or_from_unknown_client_is_rejected() {
    let c = cluster(Mode::Bft, 4, 1);
    let mut r = c.request(1);
    r.signature = Some(Signature([0; 64]));
    let err = c
        .verifier
        .verify_inbound(Peer::Client(c.client.public_key()), Message::Request(r))
        .unwrap_err();
    assert!(matches!(err, Rejection::BadSignature { .. }));

    let stranger = key(99);
    let body = RequestBody {
        client: stranger.public_key(),
        seq: 1,
        kind: RequestKind::Ordered,
        op: vec![],
    };
    let r = Request::new(body, Some(&stranger));
    let err = c
        .verifier
        .verify_inbound(Peer::Client(stranger.public_key()), Message::Request(r))
        .unwrap_err();
    assert_eq!(err, Rejection::ClientNotAdmitted);
}

#[test]
fn oversize_op_is_rejected() {
    let c = cluster(Mode::Cft, 3, 1);
    let body = RequestBody {
        client: c.client.public_key(),
        seq: 1,
        kind: RequestKind::Ordered,
        op: vec![0; Limits::default().max_op_bytes + 1],
    };
    let err = c
        .verifier
        .verify_inbound(
            Peer::Client(c.client.public_key()),
            Message::Request(Request::new(body, None)),
        )
        .unwrap_err();
    assert_eq!(err, Rejection::Oversize("op"));
}

#[test]
fn proposal_with_a_forged_request_is_rejected() {
    let c = cluster(Mode::Bft, 4, 1);
    let mut forged = c.request(1);
    forged.body.op = b"something else".to_vec();
    let p = c.propose(
        0,
        Cid(1),
        Regency(0),
        Batch {
            requests: vec![forged],
        },
    );
    let err = c
        .verifier
        .verify_inbound(Peer::Replica(0), Message::Propose(p))
        .unwrap_err();
    assert!(matches!(err, Rejection::BadSignature { .. }), "{err:?}");
}

#[test]
fn decision_with_too_few_accepts_is_rejected() {
    let c = cluster(Mode::Bft, 4, 1);
    let batch = Batch {
        requests: vec![c.request(1)],
    };
    let digest = batch.digest();
    let certificate = vec![
        c.vote(VoteKind::Accept, 0, Cid(1), digest),
        c.vote(VoteKind::Accept, 1, Cid(1), digest),
    ];
    let d = Decision {
        cid: Cid(1),
        batch,
        certificate,
    };
    let err = c
        .verifier
        .verify_inbound(Peer::Replica(0), Message::Decisions(vec![d]))
        .unwrap_err();
    assert!(matches!(err, Rejection::BadCertificate(_)), "{err:?}");
}

#[test]
fn decision_whose_batch_does_not_match_its_certificate_is_rejected() {
    let c = cluster(Mode::Bft, 4, 1);
    let batch = Batch {
        requests: vec![c.request(1)],
    };
    let other = Batch {
        requests: vec![c.request(2)],
    }
    .digest();
    let certificate = (0..3)
        .map(|r| c.vote(VoteKind::Accept, r, Cid(1), other))
        .collect();
    let d = Decision {
        cid: Cid(1),
        batch,
        certificate,
    };
    let err = c
        .verifier
        .verify_inbound(Peer::Replica(0), Message::Decisions(vec![d]))
        .unwrap_err();
    assert!(matches!(err, Rejection::BadCertificate(_)), "{err:?}");
}

#[test]
fn duplicate_request_gets_the_cached_reply_and_executes_once() {
    let c = cluster(Mode::Cft, 3, 1);
    let mut leader = c.engine(0);
    let client = Peer::Client(c.client.public_key());
    let batch = Batch {
        requests: vec![c.request(1)],
    };
    let digest = batch.digest();
    let output = c.deliver_ok(&mut leader, client, Message::Request(c.request(1)));
    // The leader proposes it at once, then persists and broadcasts its own ACCEPT.
    let my_accept = c.vote(VoteKind::Accept, 0, Cid(1), digest);
    assert_eq!(
        output,
        Output {
            send_now: vec![Outgoing::Broadcast(Message::Propose(c.propose(
                0,
                Cid(1),
                Regency(0),
                batch.clone()
            )))],
            persist: vec![
                PersistRecord::Prepared(PreparedProof {
                    cid: Cid(1),
                    epoch: Regency(0),
                    batch: batch.clone(),
                    writes: Vec::new(),
                }),
                PersistRecord::Vote(my_accept.body),
            ],
            send_after_persist: vec![Outgoing::Broadcast(Message::Accept(my_accept.clone()))],
            ..Output::default()
        }
    );
    // One follower's ACCEPT completes the CFT quorum of 2.
    let their_accept = c.vote(VoteKind::Accept, 1, Cid(1), digest);
    let output = c.deliver_ok(
        &mut leader,
        Peer::Replica(1),
        Message::Accept(their_accept.clone()),
    );
    assert_eq!(
        output,
        Output {
            persist: vec![PersistRecord::Decided(Decision {
                cid: Cid(1),
                batch,
                certificate: vec![my_accept, their_accept],
            })],
            service: vec![ServiceWork::Execute {
                cid: Cid(1),
                items: vec![c.item(&c.request(1))],
            }],
            ..Output::default()
        }
    );
    let output = leader.on_executed(0, Cid(1), vec![b"result".to_vec()]);
    assert_eq!(
        output,
        Output {
            send_now: vec![c.reply(0, 1, b"result")],
            ..Output::default()
        }
    );
    // The retry gets the same reply and no new proposal.
    let output = c.deliver_ok(&mut leader, client, Message::Request(c.request(1)));
    assert_eq!(
        output,
        Output {
            send_now: vec![c.reply(0, 1, b"result")],
            ..Output::default()
        }
    );
    assert_eq!(leader.stats().executed_requests, 1);
    assert_eq!(leader.stats().proposals_sent, 1);
}

#[test]
fn request_naming_another_client_is_rejected_as_impersonation() {
    let c = cluster(Mode::Cft, 3, 1);
    let other = PublicKey([5; 32]);
    let err = c
        .verifier
        .verify_inbound(Peer::Client(other), Message::Request(c.request(1)))
        .unwrap_err();
    assert_eq!(err, Rejection::Impersonation);
}

#[test]
fn state_fetches_beyond_a_peers_share_per_second_are_dropped() {
    use smr_core::engine::STATE_FETCHES_PER_SECOND;
    let c = cluster(Mode::Bft, 4, 1);
    let mut replica = c.engine(0);
    let mut fetch = |now_ms: u64, from: u32| {
        let verified = c
            .verifier
            .verify_inbound(
                Peer::Replica(from),
                Message::StateFetch {
                    cid: Cid(100),
                    offset: 0,
                },
            )
            .unwrap();
        replica.on_message(now_ms, verified)
    };
    // No checkpoint 100 here: each fetch within the share is answered with what this replica
    // has (nothing).
    let answered = |to: u32| Output {
        send_now: vec![Outgoing::Send {
            to: Peer::Replica(to),
            message: Message::StateInfo {
                checkpoints: Vec::new(),
                voted_up_to: Cid(0),
            },
        }],
        ..Output::default()
    };
    for _ in 0..STATE_FETCHES_PER_SECOND {
        assert_eq!(fetch(5, 1), answered(1), "within the share");
    }
    let dropped = only_rejected(Rejection::RateLimited("state fetches"));
    assert_eq!(fetch(5, 1), dropped);
    assert_eq!(fetch(1004, 1), dropped);
    // Another peer has its own share, and the next second brings a new one.
    assert_eq!(fetch(1004, 2), answered(2));
    assert_eq!(fetch(1005, 1), answered(1));
    assert_eq!(replica.stats().rejections.get("rate_limited"), Some(&2));
}

/// A decision for `cid` with Q signed ACCEPTs from replicas 0, 1 and 3.
fn certified_decision(c: &Cluster, cid: Cid) -> Decision {
    let batch = Batch {
        requests: vec![c.request(cid.0)],
    };
    let digest = batch.digest();
    Decision {
        cid,
        batch,
        certificate: [0, 1, 3]
            .into_iter()
            .map(|r| c.vote(VoteKind::Accept, r, cid, digest))
            .collect(),
    }
}

/// Replica 2's STOPDATA for regency 1 (whose leader is replica 1), after STOPs from 0, 1, 3.
fn stopdata_for_regency_1(c: &Cluster, replica: &mut Engine) -> smr_core::message::StopData {
    let mut sent = None;
    for from in [0u32, 1, 3] {
        let stop = Signed::new(
            smr_core::message::Stop {
                replica: from,
                regency: Regency(1),
                from_regency: Regency(0),
                pending: Vec::new(),
            },
            Some(&c.keys[from as usize] as &dyn Signer),
        );
        let output = c.deliver_ok(replica, Peer::Replica(from), Message::Stop(stop));
        assert!(
            !output
                .send_now
                .iter()
                .any(|o| matches!(o.message(), Message::StopData(_))),
            "STOPDATA promises the regency: it never leaves before the record of it: {output:?}"
        );
        for outgoing in &output.send_after_persist {
            if let Outgoing::Send {
                to: Peer::Replica(1),
                message: Message::StopData(sd),
            } = outgoing
            {
                assert!(
                    output.persist.contains(&PersistRecord::Regency(Regency(1))),
                    "{output:?}"
                );
                sent = Some(sd.body.clone());
            }
        }
    }
    sent.expect("replica 2 sent STOPDATA to the new leader")
}

/// The bug behind simulator seed 240: a replica whose log starts after its checkpoint sent
/// STOPDATA without proof that the checkpointed cid was decided, so a new leader could re-open
/// it. Checked here on both paths that empty the log: a stable checkpoint truncating it, and a
/// restart from a store that holds only the checkpoint.
#[test]
fn stopdata_proves_the_checkpointed_cid_decided_after_truncation_and_after_a_restart() {
    let c = cluster(Mode::Bft, 4, 1);
    let limits = Limits {
        checkpoint_period: 2,
        ..Limits::default()
    };
    let cfg = EngineConfig {
        quorums: c.quorums,
        me: 2,
        replica_keys: c.keys.iter().map(|k| k.public_key()).collect(),
        clients: (*c.verifier.clients).clone(),
        limits,
        timeouts: Timeouts::default(),
    }
    .validate()
    .expect("valid test config");
    let signer = Arc::new(c.keys[2].clone());
    let mut replica = Engine::new(cfg.clone(), signer.clone());
    let decisions = vec![
        certified_decision(&c, Cid(1)),
        certified_decision(&c, Cid(2)),
    ];
    let output = c.deliver_ok(
        &mut replica,
        Peer::Replica(0),
        Message::Decisions(decisions.clone()),
    );
    assert_eq!(
        output,
        Output {
            persist: decisions
                .iter()
                .cloned()
                .map(PersistRecord::Decided)
                .collect(),
            service: vec![
                ServiceWork::Execute {
                    cid: Cid(1),
                    items: vec![c.item(&c.request(1))],
                },
                ServiceWork::Execute {
                    cid: Cid(2),
                    items: vec![c.item(&c.request(2))],
                },
            ],
            ..Output::default()
        }
    );
    // The service executes both batches (one request each); the second reaches the barrier.
    assert_eq!(
        replica.on_executed(0, Cid(1), vec![b"ok".to_vec()]),
        Output {
            send_now: vec![c.reply(2, 1, b"ok")],
            ..Output::default()
        }
    );
    assert_eq!(
        replica.on_executed(0, Cid(2), vec![b"ok".to_vec()]),
        Output {
            send_now: vec![c.reply(2, 2, b"ok")],
            service: vec![ServiceWork::TakeSnapshot { cid: Cid(2) }],
            ..Output::default()
        }
    );
    // A snapshot nobody asked for (one a state transfer superseded) is dropped, and does not
    // disturb the one that is awaited.
    assert!(replica.on_snapshot(0, Cid(1), b"stale".to_vec()).is_empty());
    let output = replica.on_snapshot(0, Cid(2), b"service state at 2".to_vec());
    assert!(replica.on_snapshot(0, Cid(2), b"again".to_vec()).is_empty());
    let [PersistRecord::Checkpoint(checkpoint)] = &output.persist[..] else {
        panic!("expected the checkpoint persisted: {output:?}");
    };
    let checkpoint = checkpoint.clone();
    assert_eq!(checkpoint.cid, Cid(2));
    // Persisted before it is announced.
    assert_eq!(
        output,
        Output {
            persist: vec![PersistRecord::Checkpoint(checkpoint.clone())],
            send_after_persist: vec![Outgoing::Broadcast(Message::CheckpointAnnounce {
                cid: Cid(2),
                digest: checkpoint.digest,
            })],
            ..Output::default()
        }
    );
    for from in [0u32, 1] {
        let output = c.deliver_ok(
            &mut replica,
            Peer::Replica(from),
            Message::CheckpointAnnounce {
                cid: Cid(2),
                digest: checkpoint.digest,
            },
        );
        assert_eq!(output, Output::default());
    }
    assert_eq!(replica.last_checkpoint(), Cid(2), "a quorum made it stable");

    let sd = stopdata_for_regency_1(&c, &mut replica);
    let proof = sd.last_decided.expect("a proof for the executed cid");
    assert_eq!(proof.cid, Cid(2));
    assert_eq!(proof.digest, certified_decision(&c, Cid(2)).batch.digest());
    assert!(sd.prepared.is_empty());

    let (mut restarted, output) =
        Engine::recover(cfg, signer, [PersistRecord::Checkpoint(checkpoint)])
            .expect("recovers from the checkpoint");
    // Recovery rebuilds the service from the checkpoint, and does nothing else.
    assert_eq!(
        output,
        Output {
            service: vec![ServiceWork::Restore {
                cid: Cid(2),
                snapshot: b"service state at 2".to_vec(),
            }],
            ..Output::default()
        }
    );
    let sd = stopdata_for_regency_1(&c, &mut restarted);
    assert_eq!(sd.last_decided.map(|p| p.cid), Some(Cid(2)));
}
