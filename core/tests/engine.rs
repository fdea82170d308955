//! Handler-level tests: feed one engine inputs and assert the exact output or rejections.

mod common;

use smr_core::engine::{Outgoing, Output, PersistRecord, ServiceWork};
use smr_core::message::{
    Batch, Cid, Decision, DecisionProof, Message, PreparedProof, Regency, Request, RequestBody,
    RequestKind, Signed, StopData, Vote, VoteKind,
};
use smr_core::{Engine, Limits, Peer, Rejection};
use smr_crypto::{Digest, PublicKey, Signature};
use smr_modes::Mode;

use common::{bft, cft, cluster, key, only_rejected, only_sent, rejected_sending, send, Cluster};

/// Replica 1, a follower, given the leader's proposal of request 1 for cid 1 in regency 0;
/// returns the follower, the proposed batch and its output, which the verifier and the engine
/// accepted.
fn follower_given_a_proposal(c: &Cluster) -> (Engine, Batch, Output) {
    let mut follower = c.engine(1);
    let batch = c.opening_batch(&[1]);
    let output = c.deliver_ok(
        &mut follower,
        0,
        Peer::Replica(0),
        Message::Propose(c.propose(0, Cid(1), Regency(0), batch.clone())),
    );
    (follower, batch, output)
}

/// A BFT replica's output for a proposal it accepts: its WRITE, persisted before it is
/// broadcast, and nothing else.
fn only_writes(my_write: &Signed<Vote>) -> Output {
    Output {
        persist: vec![PersistRecord::Vote(my_write.body)],
        send_after_persist: vec![Outgoing::Broadcast(Message::Write(my_write.clone()))],
        ..Output::default()
    }
}

#[test]
fn bft_follower_sends_no_accept_before_a_quorum_of_writes() {
    let c = bft();
    let (mut follower, batch, output) = follower_given_a_proposal(&c);
    let digest = batch.digest();
    let write = |r| c.vote(VoteKind::Write, r, Cid(1), Regency(0), digest);
    let accept = |r| c.vote(VoteKind::Accept, r, Cid(1), Regency(0), digest);
    // It persists its WRITE before broadcasting it, and sends no ACCEPT.
    let my_write = write(1);
    assert_eq!(output, only_writes(&my_write));
    // Own WRITE plus the leader's: 2 < Q = 3.
    let output = c.deliver_ok(&mut follower, 0, Peer::Replica(0), Message::Write(write(0)));
    assert_eq!(output, Output::default());
    // ACCEPTs from others alone never make this replica accept (or execute).
    for r in [0, 2] {
        let output = c.deliver_ok(
            &mut follower,
            0,
            Peer::Replica(r),
            Message::Accept(accept(r)),
        );
        assert_eq!(output, Output::default());
    }
    // The third WRITE makes Q: now it accepts, and with three ACCEPTs it decides and executes.
    let output = c.deliver_ok(&mut follower, 0, Peer::Replica(2), Message::Write(write(2)));
    let my_accept = accept(1);
    assert_eq!(
        output,
        Output {
            persist: vec![
                PersistRecord::Prepared(PreparedProof {
                    cid: Cid(1),
                    epoch: Regency(0),
                    batch: batch.clone(),
                    writes: vec![write(0), my_write, write(2)],
                }),
                PersistRecord::Vote(my_accept.body),
                PersistRecord::Decided(Decision {
                    cid: Cid(1),
                    batch,
                    certificate: vec![accept(0), my_accept.clone(), accept(2)],
                }),
            ],
            // The batch's open request opens session 1 as it executes.
            send_after_persist: vec![
                Outgoing::Broadcast(Message::Accept(my_accept)),
                c.open_reply(1, 1)
            ],
            service: vec![c.execute(Cid(1), &[1])],
            ..Output::default()
        }
    );
}

#[test]
fn cft_follower_accepts_on_the_proposal_without_any_write() {
    let c = cft();
    let (_, batch, output) = follower_given_a_proposal(&c);
    // It persists the accepted value (with no WRITEs) and its ACCEPT, then broadcasts the
    // ACCEPT: no WRITE.
    let my_accept = c.vote(VoteKind::Accept, 1, Cid(1), Regency(0), batch.digest());
    assert_eq!(
        output,
        Output {
            persist: vec![
                PersistRecord::Prepared(c.prepared(Cid(1), Regency(0), batch)),
                PersistRecord::Vote(my_accept.body),
            ],
            send_after_persist: vec![Outgoing::Broadcast(Message::Accept(my_accept))],
            ..Output::default()
        }
    );
}

#[test]
fn proposal_from_a_replica_that_is_not_the_leader_is_rejected() {
    let c = bft();
    let mut follower = c.engine(1);
    let p = c.propose(2, Cid(1), Regency(0), c.batch(&[1]));
    let output = c.deliver(&mut follower, 0, Peer::Replica(2), Message::Propose(p));
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
    let c = bft();
    let mut follower = c.engine(1);
    // Regency 4 has leader 0 as well, but it is not the current regency.
    let p = c.propose(0, Cid(1), Regency(4), Batch::default());
    let output = c.deliver(&mut follower, 0, Peer::Replica(0), Message::Propose(p));
    // Beside the rejection, the follower asks the sender for the SYNC it missed.
    assert_eq!(
        output,
        rejected_sending(
            Rejection::FutureRegency {
                got: Regency(4),
                current: Regency(0)
            },
            send(0, Message::SyncQuery)
        )
    );
}

#[test]
fn equivocating_leader_gets_one_vote_per_instance() {
    let c = bft();
    // The leader's first proposal for cid 1 (request 1) gets this replica's WRITE.
    let (mut follower, batch, output) = follower_given_a_proposal(&c);
    let my_write = c.vote(VoteKind::Write, 1, Cid(1), Regency(0), batch.digest());
    assert_eq!(output, only_writes(&my_write));
    // Its second, of request 2 for the same cid, gets no second vote: nothing but the rejection.
    let b = c.propose(0, Cid(1), Regency(0), c.batch(&[2]));
    let output = c.deliver(&mut follower, 0, Peer::Replica(0), Message::Propose(b));
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
    let c = bft();
    let mut follower = c.engine(1);
    let write = |digest| Message::Write(c.vote(VoteKind::Write, 2, Cid(1), Regency(0), digest));
    let output = c.deliver_ok(&mut follower, 0, Peer::Replica(2), write(Digest([1; 32])));
    assert_eq!(output, Output::default());
    let output = c.deliver(&mut follower, 0, Peer::Replica(2), write(Digest([2; 32])));
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
    let c = bft();
    let mut vote = c.vote(VoteKind::Write, 2, Cid(1), Regency(0), Digest([1; 32]));
    vote.body.digest = Digest([9; 32]);
    let err = c.verifier_rejects(Peer::Replica(2), Message::Write(vote));
    assert!(
        matches!(err, Rejection::BadSignature { index: 0, .. }),
        "{err:?}"
    );
}

#[test]
fn vote_claiming_another_replica_is_rejected() {
    let c = bft();
    let vote = c.vote(VoteKind::Write, 2, Cid(1), Regency(0), Digest([1; 32]));
    let err = c.verifier_rejects(Peer::Replica(3), Message::Write(vote));
    assert_eq!(err, Rejection::SenderMismatch);
}

#[test]
fn unknown_replica_id_is_rejected() {
    let c = bft();
    let err = c.verifier_rejects(
        Peer::Replica(7),
        Message::DecisionQuery { from_cid: Cid(1) },
    );
    assert_eq!(err, Rejection::UnknownSender);
}

#[test]
fn request_with_bad_signature_or_from_unknown_client_is_rejected() {
    let c = bft();
    let mut r = c.request(1);
    r.signature = Some(Signature([0; 64]));
    let err = c.verifier_rejects(c.client_peer(), Message::Request(r));
    assert!(matches!(err, Rejection::BadSignature { .. }));

    let stranger = key(99);
    let body = RequestBody {
        client: stranger.public_key(),
        session: 1,
        seq: 1,
        kind: RequestKind::Ordered,
        op: vec![],
    };
    let r = Request::new(body, Some(&stranger));
    let err = c.verifier_rejects(Peer::Client(stranger.public_key()), Message::Request(r));
    assert_eq!(err, Rejection::ClientNotAdmitted);
}

#[test]
fn oversize_op_is_rejected() {
    let c = cft();
    let body = RequestBody {
        client: c.client.public_key(),
        session: 1,
        seq: 1,
        kind: RequestKind::Ordered,
        op: vec![0; Limits::default().max_op_bytes + 1],
    };
    let err = c.verifier_rejects(c.client_peer(), Message::Request(Request::new(body, None)));
    assert_eq!(err, Rejection::Oversize("op"));
}

#[test]
fn proposal_with_a_forged_request_is_rejected() {
    let c = bft();
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
    let err = c.verifier_rejects(Peer::Replica(0), Message::Propose(p));
    assert!(matches!(err, Rejection::BadSignature { .. }), "{err:?}");
}

#[test]
fn decision_with_too_few_accepts_is_rejected() {
    let c = bft();
    let batch = c.batch(&[1]);
    let digest = batch.digest();
    let d = Decision {
        cid: Cid(1),
        batch,
        certificate: c.votes(VoteKind::Accept, &[0, 1], Cid(1), Regency(0), digest),
    };
    let err = c.verifier_rejects(Peer::Replica(0), Message::Decisions(vec![d]));
    assert!(matches!(err, Rejection::BadCertificate(_)), "{err:?}");
}

#[test]
fn decision_whose_batch_does_not_match_its_certificate_is_rejected() {
    let c = bft();
    let other = c.batch(&[2]).digest();
    let d = Decision {
        cid: Cid(1),
        batch: c.batch(&[1]),
        certificate: c.votes(VoteKind::Accept, &[0, 1, 2], Cid(1), Regency(0), other),
    };
    let err = c.verifier_rejects(Peer::Replica(0), Message::Decisions(vec![d]));
    assert!(matches!(err, Rejection::BadCertificate(_)), "{err:?}");
}

/// The CFT leader `c.engine(0)` after its client opened session 1: the open request was
/// proposed, accepted by replica 1 and executed as cid 1 (answered with the session number;
/// nothing went to the service but the empty batch).
fn cft_leader_with_session_1_open(c: &Cluster) -> Engine {
    let mut leader = c.engine(0);
    let open = c.open_request();
    let batch = Batch {
        requests: vec![open.clone()],
    };
    let digest = batch.digest();
    c.deliver_ok(&mut leader, 0, c.client_peer(), Message::Request(open));
    let their_accept = c.vote(VoteKind::Accept, 1, Cid(1), Regency(0), digest);
    let output = c.deliver_ok(
        &mut leader,
        0,
        Peer::Replica(1),
        Message::Accept(their_accept.clone()),
    );
    assert_eq!(
        output,
        Output {
            persist: vec![PersistRecord::Decided(Decision {
                cid: Cid(1),
                batch,
                certificate: vec![
                    c.vote(VoteKind::Accept, 0, Cid(1), Regency(0), digest),
                    their_accept
                ],
            })],
            send_after_persist: vec![c.open_reply(0, 1)],
            service: vec![c.execute(Cid(1), &[])],
            ..Output::default()
        }
    );
    assert_eq!(leader.on_executed(0, Cid(1), vec![]), Output::default());
    leader
}

#[test]
fn duplicate_request_gets_the_cached_reply_and_executes_once() {
    let c = cft();
    let mut leader = cft_leader_with_session_1_open(&c);
    let client = c.client_peer();
    let batch = c.batch(&[1]);
    let digest = batch.digest();
    let output = c.deliver_ok(&mut leader, 0, client, Message::Request(c.request(1)));
    // The leader proposes it at once and accepts it: the PROPOSE and its own ACCEPT leave
    // once the prepared value and the vote are on disk.
    let my_accept = c.vote(VoteKind::Accept, 0, Cid(2), Regency(0), digest);
    assert_eq!(
        output,
        Output {
            persist: vec![
                PersistRecord::Prepared(c.prepared(Cid(2), Regency(0), batch.clone())),
                PersistRecord::Vote(my_accept.body),
            ],
            send_after_persist: vec![
                Outgoing::Broadcast(Message::Propose(c.propose(
                    0,
                    Cid(2),
                    Regency(0),
                    batch.clone()
                ))),
                Outgoing::Broadcast(Message::Accept(my_accept.clone())),
            ],
            ..Output::default()
        }
    );
    // One follower's ACCEPT completes the CFT quorum of 2.
    let their_accept = c.vote(VoteKind::Accept, 1, Cid(2), Regency(0), digest);
    let output = c.deliver_ok(
        &mut leader,
        0,
        Peer::Replica(1),
        Message::Accept(their_accept.clone()),
    );
    assert_eq!(
        output,
        Output {
            persist: vec![PersistRecord::Decided(Decision {
                cid: Cid(2),
                batch,
                certificate: vec![my_accept, their_accept],
            })],
            service: vec![c.execute(Cid(2), &[1])],
            ..Output::default()
        }
    );
    let output = leader.on_executed(0, Cid(2), vec![b"result".to_vec()]);
    assert_eq!(output, only_sent(vec![c.reply(0, 1, b"result")]));
    // The retry gets the same reply and no new proposal.
    let output = c.deliver_ok(&mut leader, 0, client, Message::Request(c.request(1)));
    assert_eq!(output, only_sent(vec![c.reply(0, 1, b"result")]));
    assert_eq!(leader.stats().executed_requests, 1);
    assert_eq!(leader.stats().proposals_sent, 2);
}

#[test]
fn request_naming_another_client_is_rejected_as_impersonation() {
    let c = cft();
    let other = PublicKey([5; 32]);
    let err = c.verifier_rejects(Peer::Client(other), Message::Request(c.request(1)));
    assert_eq!(err, Rejection::Impersonation);
}

/// Issue 17 item 2: state fetches are paid from the peer's reply budget like every other reply
/// (there was also a fixed 256 fetches per second per peer, which a requester fetching 4 KiB
/// chunks over a fast link exceeded, and its excess was dropped silently). With 1 MiB chunks a
/// reply costs 1 MiB + 4 KiB: a full 64 MiB bucket pays 63 of them, the 64th is refused, and
/// the refill at 64 MiB/s pays the next 4 ms later. Another peer has its own bucket.
#[test]
fn state_fetches_are_paid_from_the_peers_reply_budget() {
    use smr_core::checkpoint::{Checkpoint, CheckpointData};
    use smr_core::clients::ClientTable;
    use smr_core::engine::PersistRecord;
    let c = bft();
    let data = CheckpointData {
        cid: Cid(2),
        service: vec![7; 2 << 20],
        clients: ClientTable::new(c.limits.max_pending_per_client as u64),
    };
    let checkpoint = Checkpoint::new(&data, c.decision_proof(Cid(2), Batch::default().digest()));
    let (mut replica, _) = Engine::recover(
        c.cfg(0),
        c.engine_signer(0),
        [PersistRecord::Checkpoint(checkpoint.clone())],
    )
    .unwrap();
    replica.start(0);
    let mut fetch = |now_ms: u64, from: u32| {
        let fetch = Message::StateFetch {
            cid: Cid(2),
            offset: 0,
        };
        c.deliver(&mut replica, now_ms, Peer::Replica(from), fetch)
    };
    let answered = |to: u32| {
        only_sent(vec![send(
            to,
            Message::StateChunk {
                cid: Cid(2),
                offset: 0,
                total_len: checkpoint.data.len() as u64,
                bytes: checkpoint.data[..1 << 20].to_vec(),
                decided: None,
            },
        )])
    };
    for _ in 0..63 {
        assert_eq!(fetch(5, 1), answered(1), "within the budget");
    }
    let dropped = only_rejected(Rejection::RateLimited("state chunks"));
    assert_eq!(fetch(5, 1), dropped);
    assert_eq!(fetch(8, 1), dropped);
    assert_eq!(fetch(8, 2), answered(2));
    assert_eq!(fetch(9, 1), answered(1));
    assert_eq!(replica.stats().rejections.get("rate_limited"), Some(&2));
}

/// A decision for `cid` (of request `cid`) with Q signed ACCEPTs from replicas 0, 1 and 3.
fn certified_decision(c: &Cluster, cid: Cid) -> Decision {
    let batch = c.batch_of_cid(cid);
    let digest = batch.digest();
    Decision {
        cid,
        batch,
        certificate: c.votes(VoteKind::Accept, &[0, 1, 3], cid, Regency(0), digest),
    }
}

/// The open finding of BENCHMARKS.md "Faults on a real network": a replica catching up by
/// decisions asked for more only when an answer made it *execute*; but the service runs one
/// batch at a time, so the rest of a full answer waits, decided, in the window, the next query
/// asked again from `last_executed + 1` for decisions it held, learned nothing and ended the
/// chain. The catch-up then went on at one answer per heartbeat (16 decisions per 500 ms), and a
/// lagging replica that the quorum needed after a leader failure held the cluster up for the
/// whole 6 s outage. Now the query asks from the first cid it lacks, goes on while answers
/// teach it decisions, pauses while the window has no room for a full answer (decisions wait
/// for the service), and resumes when execution makes that room.
#[test]
fn catch_up_goes_on_while_learned_decisions_wait_for_the_service() {
    let limits = Limits {
        max_decisions_per_reply: 2,
        max_instances_ahead: 6,
        ..Limits::default()
    };
    let c = cluster(Mode::Bft, 4, 1, limits);
    let mut replica = c.engine(2);
    let d: Vec<Decision> = (1..=6).map(|i| certified_decision(&c, Cid(i))).collect();
    let query = |from_cid: u64| {
        send(
            0,
            Message::DecisionQuery {
                from_cid: Cid(from_cid),
            },
        )
    };
    let answer = |replica: &mut Engine, now_ms: u64, cids: std::ops::RangeInclusive<usize>| {
        c.deliver_ok(
            replica,
            now_ms,
            Peer::Replica(0),
            Message::Decisions(d[cids.start() - 1..*cids.end()].to_vec()),
        )
    };
    // A full answer: cid 1 goes to the service, cid 2 waits; the next query asks from cid 3.
    assert_eq!(
        answer(&mut replica, 0, 1..=2),
        Output {
            persist: vec![
                PersistRecord::Decided(d[0].clone()),
                PersistRecord::Decided(d[1].clone())
            ],
            // Cid 1 opens the client's session as it goes to the service.
            send_after_persist: vec![c.open_reply(2, 1), query(3)],
            service: vec![c.execute(Cid(1), &[1])],
            ..Output::default()
        }
    );
    // The service is still busy with cid 1: the answer's decisions are new all the same, so the
    // catch-up goes on (before the fix: no query, the chain ended here).
    assert_eq!(
        answer(&mut replica, 1, 3..=4),
        Output {
            persist: vec![
                PersistRecord::Decided(d[2].clone()),
                PersistRecord::Decided(d[3].clone())
            ],
            send_after_persist: vec![query(5)],
            ..Output::default()
        }
    );
    // The window (last executed 1 + 6) has room for one more decision once 5 and 6 are
    // learned, less than a full answer: no query now (it would fetch two to learn one).
    assert_eq!(
        answer(&mut replica, 2, 5..=6),
        Output {
            persist: vec![
                PersistRecord::Decided(d[4].clone()),
                PersistRecord::Decided(d[5].clone())
            ],
            ..Output::default()
        }
    );
    // Execution makes room for a full answer: the catch-up resumes from cid 7 at once.
    assert_eq!(
        replica.on_executed(3, Cid(1), vec![b"ok".to_vec()]),
        Output {
            send_now: vec![c.reply(2, 1, b"ok"), query(7)],
            service: vec![c.execute(Cid(2), &[2])],
            ..Output::default()
        }
    );
}

/// Replica 2's STOPDATA for regency 1 (whose leader is replica 1), after STOPs from 0, 1, 3.
fn stopdata_for_regency_1(c: &Cluster, replica: &mut Engine) -> StopData {
    let mut sent = None;
    for from in [0u32, 1, 3] {
        let stop = c.stop(from, Regency(1), Regency(0));
        let output = c.deliver_ok(replica, 0, Peer::Replica(from), Message::Stop(stop));
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
    let limits = Limits {
        checkpoint_period: 2,
        ..Limits::default()
    };
    let c = cluster(Mode::Bft, 4, 1, limits);
    let mut replica = c.engine(2);
    let decisions = vec![
        certified_decision(&c, Cid(1)),
        certified_decision(&c, Cid(2)),
    ];
    let output = c.deliver_ok(
        &mut replica,
        0,
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
            // Cid 1 opens the client's session as it goes to the service.
            send_after_persist: vec![c.open_reply(2, 1)],
            // One batch with the service at a time: the next follows its predecessor's result.
            service: vec![c.execute(Cid(1), &[1])],
            ..Output::default()
        }
    );
    // The service executes both batches (one request each); the second reaches the barrier.
    assert_eq!(
        replica.on_executed(0, Cid(1), vec![b"ok".to_vec()]),
        Output {
            send_now: vec![c.reply(2, 1, b"ok")],
            service: vec![c.execute(Cid(2), &[2])],
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
            0,
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

    let (mut restarted, output) = Engine::recover(
        c.cfg(2),
        c.engine_signer(2),
        [PersistRecord::Checkpoint(checkpoint)],
    )
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

/// A replica restarted from its store re-executes its stored decisions one batch at a time,
/// so it holds decided instances (with the values it prepared in them) far past its last
/// executed cid. Its STOPDATA used to prove only the last executed cid and report every
/// prepared value above it: more than `max_instances_ahead` of them, and past the window the
/// verifier measures from the proven cid, so every new leader refused it as oversized; with f
/// other replicas down, no leader change could complete. It now proves the highest cid up to
/// which everything is decided here, reports only what it prepared above that, and answers a
/// new leader's query for the decisions it proved but has not executed yet.
#[test]
fn a_replica_restarted_with_many_stored_decisions_sends_a_stopdata_the_new_leader_accepts() {
    let limits = Limits {
        max_instances_ahead: 4,
        max_decisions_per_reply: 3,
        ..Limits::default()
    };
    let c = cluster(Mode::Bft, 4, 1, limits);
    // It decided cids 1..=10 and prepared each, and prepared cid 11 (the window past 10 allows
    // up to 14) without deciding it.
    let decisions: Vec<Decision> = (1..=10).map(|i| certified_decision(&c, Cid(i))).collect();
    let prepared: Vec<PreparedProof> = (1..=11)
        .map(|i| c.prepared(Cid(i), Regency(0), c.batch_of_cid(Cid(i))))
        .collect();
    let mut store: Vec<PersistRecord> = Vec::new();
    for (d, p) in decisions.iter().zip(&prepared) {
        store.push(PersistRecord::Prepared(p.clone()));
        store.push(PersistRecord::Decided(d.clone()));
    }
    store.push(PersistRecord::Prepared(prepared[10].clone()));
    let (mut replica, output) =
        Engine::recover(c.cfg(2), c.engine_signer(2), store).expect("a store it can have written");
    assert_eq!(
        output,
        Output {
            send_now: vec![c.open_reply(2, 1)],
            service: vec![c.execute(Cid(1), &[1])],
            ..Output::default()
        }
    );
    replica.start(0);

    // A leader change while cid 1 is still with the service: STOPs from 0 and 3 (f+1 to join,
    // 2f+1 with its own to install regency 1, led by replica 1).
    let stop = |r: u32| Message::Stop(c.stop(r, Regency(1), Regency(0)));
    assert_eq!(
        c.deliver_ok(&mut replica, 10, Peer::Replica(0), stop(0)),
        Output::default()
    );
    let output = c.deliver_ok(&mut replica, 10, Peer::Replica(3), stop(3));
    let last = &decisions[9];
    let stopdata = c.stopdata(
        2,
        Regency(1),
        Some(DecisionProof {
            cid: Cid(10),
            digest: last.batch.digest(),
            certificate: last.certificate.clone(),
        }),
        vec![prepared[10].clone()],
    );
    assert_eq!(
        output,
        Output {
            send_now: vec![Outgoing::Broadcast(stop(2))],
            persist: vec![PersistRecord::Regency(Regency(1))],
            send_after_persist: vec![send(1, Message::StopData(stopdata.clone()))],
            ..Output::default()
        }
    );

    // The new leader accepts it (before the fix: refused, oversized) ...
    let mut leader = c.engine(1);
    leader.start(0);
    for from in [0u32, 3] {
        c.deliver_ok(&mut leader, 10, Peer::Replica(from), stop(from));
    }
    let output = c.deliver(
        &mut leader,
        20,
        Peer::Replica(2),
        Message::StopData(stopdata),
    );
    assert_eq!(output.rejections, []);

    // ... and can fetch from it the decisions it proved, executed or not: cid 1 is with the
    // service, 2..=10 wait; a query from cid 1 is answered from both, three per reply.
    let output = c.deliver_ok(
        &mut replica,
        30,
        Peer::Replica(1),
        Message::DecisionQuery { from_cid: Cid(1) },
    );
    assert_eq!(
        output,
        only_sent(vec![send(1, Message::Decisions(decisions[0..3].to_vec()))])
    );
    let output = c.deliver_ok(
        &mut replica,
        31,
        Peer::Replica(0),
        Message::DecisionQuery { from_cid: Cid(9) },
    );
    assert_eq!(
        output,
        only_sent(vec![send(0, Message::Decisions(decisions[8..10].to_vec()))])
    );
}
