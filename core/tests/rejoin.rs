//! Rejoining after a lost store (issue 17, items 1 and 7; docs/design.md §3.12): the rejoin
//! state is persisted and recovery honours it, a rejoining replica tells its peers the horizon it
//! waits for, and a leader with nothing to propose orders empty batches up to it, so that the
//! rejoiner takes part within a few consensus rounds even in a quiet cluster.

mod common;

use common::*;
use smr_core::engine::{Outgoing, Output, PersistRecord};
use smr_core::message::{
    Batch, Cid, Decision, Message, Participation, Regency, Signed, Vote, VoteKind,
};
use smr_core::{Engine, Limits, Peer};
use smr_modes::Mode;
use std::num::NonZeroU64;

/// BFT n = 4 with a window of 4 instances (and at most 4 in flight).
fn small_window() -> Cluster {
    let limits = Limits {
        max_instances_ahead: 4,
        max_instances_in_flight: 4,
        ..Limits::default()
    };
    cluster(Mode::Bft, 4, 1, limits)
}

fn decision(c: &Cluster, cid: u64) -> Decision {
    let batch = c.batch_of_cid(Cid(cid));
    let certificate = c.votes(
        VoteKind::Accept,
        &[0, 1, 2],
        Cid(cid),
        Regency(0),
        batch.digest(),
    );
    Decision {
        cid: Cid(cid),
        batch,
        certificate,
    }
}

/// The incarnation nonce the rejoining replicas of these tests are given.
const NONCE: u64 = 7;

fn nonce() -> NonZeroU64 {
    NonZeroU64::new(NONCE).unwrap()
}

/// What a replica that rejoined with [`NONCE`] stores once it learned `horizon` and decided
/// cids 1 and 2: its two `Rejoining` records and the decisions.
fn rejoined_until(c: &Cluster, horizon: Cid) -> Vec<PersistRecord> {
    vec![
        PersistRecord::Rejoining {
            horizon: None,
            nonce: NONCE,
        },
        PersistRecord::Rejoining {
            horizon: Some(horizon),
            nonce: NONCE,
        },
        PersistRecord::Decided(decision(c, 1)),
        PersistRecord::Decided(decision(c, 2)),
    ]
}

/// The StateQuery of a replica rejoining with [`NONCE`].
fn query() -> Message {
    Message::StateQuery {
        rejoin_nonce: NONCE,
    }
}

/// A StateInfo of a peer that executed and voted up to `cid`, with the proof, answering
/// [`NONCE`] (the peer itself not rejoining).
fn state_info(c: &Cluster, cid: u64) -> Message {
    report(c, cid, NONCE, 0)
}

/// A StateInfo reporting `cid` (executed and voted, with the proof) for the asker's nonce
/// `for_nonce`, from a replica whose own rejoin nonce is `rejoin_nonce` (0: not rejoining).
fn report(c: &Cluster, cid: u64, for_nonce: u64, rejoin_nonce: u64) -> Message {
    Message::StateInfo {
        checkpoints: vec![],
        voted_up_to: Cid(cid),
        executed: (cid > 0).then(|| c.decision_proof(Cid(cid), c.batch_of_cid(Cid(cid)).digest())),
        for_nonce,
        rejoin_nonce,
    }
}

/// The leader's PROPOSE of an empty batch at `cid` and its own WRITE, as the output holds them.
fn empty_proposal(c: &Cluster, cid: u64) -> (Signed<smr_core::message::Propose>, Signed<Vote>) {
    let empty = Batch { requests: vec![] };
    let propose = c.propose(0, Cid(cid), Regency(0), empty.clone());
    let write = c.vote(VoteKind::Write, 0, Cid(cid), Regency(0), empty.digest());
    (propose, write)
}

/// The leader's output for empty batches at `cids`: each PROPOSE behind its WRITE's record.
fn empty_proposals(c: &Cluster, cids: std::ops::RangeInclusive<u64>) -> Output {
    let mut output = Output::default();
    for cid in cids {
        let (propose, write) = empty_proposal(c, cid);
        output.persist.push(PersistRecord::Vote(write.body));
        output
            .send_after_persist
            .push(Outgoing::Broadcast(Message::Propose(propose)));
        output
            .send_after_persist
            .push(Outgoing::Broadcast(Message::Write(write)));
    }
    output
}

#[test]
fn a_rejoining_replica_persists_that_it_rejoins_before_it_asks_for_reports() {
    let c = small_window();
    let (engine, output) = Engine::rejoin(c.cfg(3), c.engine_signer(3), nonce());
    assert_eq!(
        output,
        Output {
            persist: vec![PersistRecord::Rejoining {
                horizon: None,
                nonce: NONCE
            }],
            send_after_persist: vec![broadcast(query())],
            ..Output::default()
        }
    );
    assert_eq!(
        engine.participation(),
        Participation::CollectingReports {
            reports: 0,
            needed: 3
        }
    );
}

/// Issue 17 item 1: with n-f reports the rejoiner knows its horizon (highest report 3 plus a
/// window of 4): it persists it and tells every peer, which it did not before.
#[test]
fn a_rejoiner_that_learns_its_horizon_persists_it_and_tells_its_peers() {
    let c = small_window();
    let (mut engine, _) = Engine::rejoin(c.cfg(3), c.engine_signer(3), nonce());
    engine.start(0);
    for from in [0, 1] {
        let output = c.deliver_ok(&mut engine, 1, Peer::Replica(from), state_info(&c, 3));
        assert_eq!(output, Output::default());
    }
    let output = c.deliver_ok(&mut engine, 1, Peer::Replica(2), state_info(&c, 2));
    assert_eq!(
        output,
        Output {
            persist: vec![PersistRecord::Rejoining {
                horizon: Some(Cid(7)),
                nonce: NONCE
            }],
            send_after_persist: vec![broadcast(Message::Abstaining { until: Cid(7) })],
            ..Output::default()
        }
    );
    assert_eq!(
        engine.participation(),
        Participation::CatchingUp { until: Cid(7) }
    );
    // Its retransmit timer says it again, for a leader that changed or did not hear.
    let due = engine.next_deadline_ms().unwrap();
    let output = engine.on_timeout(due);
    assert!(
        output
            .send_now
            .contains(&broadcast(Message::Abstaining { until: Cid(7) })),
        "{output:?}"
    );
}

/// Issue 17 item 1: a leader with an empty pool ordered nothing, so a rejoiner's horizon was
/// reached only by client traffic. Now it orders empty batches up to the horizon, within its
/// in-flight bound.
#[test]
fn a_leader_with_nothing_to_propose_orders_empty_batches_up_to_an_abstaining_peers_horizon() {
    let c = small_window();
    let mut leader = c.engine(0);
    leader.start(0);
    let output = c.deliver_ok(
        &mut leader,
        1,
        Peer::Replica(3),
        Message::Abstaining { until: Cid(2) },
    );
    assert_eq!(output, empty_proposals(&c, 1..=2));
    // A follower records it (it may lead later) but proposes nothing.
    let mut follower = c.engine(1);
    follower.start(0);
    let output = c.deliver_ok(
        &mut follower,
        1,
        Peer::Replica(3),
        Message::Abstaining { until: Cid(2) },
    );
    assert_eq!(output, Output::default());
}

/// The claim is unproven: one peer may raise what it waits for at most once per
/// `request_timeout_ms` (1000 ms here), and the leader never proposes beyond its in-flight
/// bound for it.
#[test]
fn an_abstaining_peer_may_raise_its_horizon_once_per_request_timeout() {
    let c = small_window();
    let mut leader = c.engine(0);
    leader.start(0);
    let output = c.deliver_ok(
        &mut leader,
        1,
        Peer::Replica(3),
        Message::Abstaining { until: Cid(1) },
    );
    assert_eq!(output, empty_proposals(&c, 1..=1));
    let output = c.deliver_ok(
        &mut leader,
        2,
        Peer::Replica(3),
        Message::Abstaining { until: Cid(2) },
    );
    assert_eq!(output, Output::default(), "raised too soon");
    assert_eq!(leader.stats().abstaining_raises_deferred, 1);
    let output = c.deliver_ok(
        &mut leader,
        1001,
        Peer::Replica(3),
        Message::Abstaining {
            until: Cid(u64::MAX),
        },
    );
    assert_eq!(
        output,
        empty_proposals(&c, 2..=4),
        "raised after the request timeout: up to the in-flight bound"
    );
    assert_eq!(leader.stats().abstaining_raises_deferred, 1);
}

/// Issue 17 item 1: a replica that crashed mid-rejoin, after persisting what it caught up
/// with, restarted as if it had never lost its disk and voted at once. `recover` now resumes
/// the rejoin from the newest `Rejoining` record.
#[test]
fn recover_resumes_a_rejoin_that_a_crash_interrupted() {
    let c = small_window();
    // Crashed while collecting reports: it asks again.
    let (engine, output) = Engine::recover(
        c.cfg(3),
        c.engine_signer(3),
        [PersistRecord::Rejoining {
            horizon: None,
            nonce: NONCE,
        }],
    )
    .unwrap();
    assert!(engine.is_rejoining());
    // With the nonce it persisted: it cast no vote since that incarnation began.
    assert_eq!(output, only_sent(vec![broadcast(query())]));

    // A collecting record with nonce 0, which no rejoin writes, is refused: answers to a
    // state transfer's query (nonce 0) would count as reports.
    let refused = Engine::recover(
        c.cfg(3),
        c.engine_signer(3),
        [PersistRecord::Rejoining {
            horizon: None,
            nonce: 0,
        }],
    )
    .err();
    assert_eq!(
        refused.as_deref(),
        Some("stored rejoin record has nonce 0, which no rejoin writes: the store is damaged")
    );

    // Crashed while catching up to cid 7, with cids 1 and 2 decided: a horizon its stored
    // decisions do not reach is not trusted as it stands (a damaged record could name any
    // cid); it executes them (one batch with the service at a time) and collects reports
    // again with the same nonce, abstaining meanwhile.
    let records = rejoined_until(&c, Cid(7));
    let (engine, output) = Engine::recover(c.cfg(3), c.engine_signer(3), records).unwrap();
    assert_eq!(
        engine.participation(),
        Participation::CollectingReports {
            reports: 0,
            needed: 3
        }
    );
    assert_eq!(engine.last_executed(), Cid(1));
    assert_eq!(
        output,
        Output {
            // Cid 1 opens the client's session as it goes to the service.
            send_now: vec![c.open_reply(3, 1), broadcast(query())],
            service: vec![c.execute(Cid(1), &[1])],
            ..Output::default()
        }
    );
    // A store compacted at a checkpoint keeps the record while the replica rejoins.
    assert_eq!(
        engine.durable_records_after(Cid(0)),
        vec![
            PersistRecord::Regency(Regency(0)),
            PersistRecord::Rejoining {
                horizon: None,
                nonce: NONCE
            },
            PersistRecord::Decided(decision(&c, 1)),
            PersistRecord::Decided(decision(&c, 2)),
        ]
    );

    // It had reached its horizon before the crash: it takes part at once.
    let records = [
        PersistRecord::Rejoining {
            horizon: Some(Cid(1)),
            nonce: NONCE,
        },
        PersistRecord::Decided(decision(&c, 1)),
    ];
    let (engine, _) = Engine::recover(c.cfg(3), c.engine_signer(3), records).unwrap();
    assert_eq!(engine.participation(), Participation::Participating);
    assert_eq!(
        engine.durable_records_after(Cid(1)),
        vec![PersistRecord::Regency(Regency(0))]
    );
}

/// Issue 17 item 7: a replica on an empty store starts rejoining (it may be a lost one), and
/// reports of cid 0 from n-f peers still leave it a window to wait for: its own votes from
/// before the loss may be in flight (see the attack-review test at the end of this file). It
/// says so (Abstaining), so a leader orders empty batches up to it; a brand-new cluster starts
/// its replicas with `--new-cluster` instead.
#[test]
fn reports_of_cid_0_still_leave_a_rejoining_replica_a_window_to_wait_for() {
    let c = small_window();
    let (mut engine, _) = Engine::rejoin(c.cfg(3), c.engine_signer(3), nonce());
    engine.start(0);
    // A rejoining replica answers a StateQuery, so new replicas starting together do not
    // wait on each other; and it asks back a peer it has no report from, at once.
    // Its answer echoes the asker's nonce and carries its own.
    let output = c.deliver_ok(
        &mut engine,
        1,
        Peer::Replica(0),
        Message::StateQuery { rejoin_nonce: 5 },
    );
    assert_eq!(
        output,
        only_sent(vec![send(0, query()), send(0, report(&c, 0, 5, NONCE))])
    );
    for from in [0, 1] {
        c.deliver_ok(&mut engine, 1, Peer::Replica(from), state_info(&c, 0));
    }
    assert!(engine.is_rejoining());
    let output = c.deliver_ok(&mut engine, 1, Peer::Replica(2), state_info(&c, 0));
    assert_eq!(
        engine.participation(),
        Participation::CatchingUp { until: Cid(4) }
    );
    assert_eq!(
        output,
        Output {
            persist: vec![PersistRecord::Rejoining {
                horizon: Some(Cid(4)),
                nonce: NONCE
            }],
            send_after_persist: vec![broadcast(Message::Abstaining { until: Cid(4) })],
            ..Output::default()
        }
    );
}

/// A leader that abstains proposes nothing, so nothing would ever reach its horizon (and it
/// would stay the fault the cluster does not know it has): a follower that hears it asks for
/// the next regency at once.
#[test]
fn a_follower_asks_for_the_next_regency_when_its_leader_abstains() {
    let c = small_window();
    let mut follower = c.engine(1);
    follower.start(0);
    let output = c.deliver_ok(
        &mut follower,
        1,
        Peer::Replica(0),
        Message::Abstaining { until: Cid(5) },
    );
    assert_eq!(
        output,
        only_sent(vec![broadcast(Message::Stop(c.stop(
            1,
            Regency(1),
            Regency(0)
        )))])
    );
}

/// Issue 17 item 7: a StateInfo counted WRITEs, so the first replicas of a brand-new BFT
/// cluster to take part, which can only WRITE until a quorum takes part, pushed the horizon of
/// the others a window ahead, where fewer than a quorum could never bring it. A report now
/// counts what was executed or accepted (prepared): what the rejoin bound needs.
#[test]
fn a_write_alone_does_not_raise_what_a_replica_reports_to_a_rejoining_peer() {
    let c = small_window();
    let mut follower = c.engine(1);
    follower.start(0);
    let batch = c.batch(&[1]);
    let output = c.deliver_ok(
        &mut follower,
        1,
        Peer::Replica(0),
        Message::Propose(c.propose(0, Cid(1), Regency(0), batch)),
    );
    assert_eq!(output.persist.len(), 1, "it wrote: {output:?}");
    let output = c.deliver_ok(&mut follower, 2, Peer::Replica(3), query());
    assert_eq!(output, only_sent(vec![send(3, state_info(&c, 0))]));
}

/// Issue 17 item 7: a StateInfo made for an earlier incarnation of the rejoiner (before its
/// store was lost, delivered late), or one not made for a rejoin at all (nonce 0), counted as
/// the peer's first report, although only a report made after the loss bounds what it voted
/// before. Now only a report echoing the current nonce counts, and then the peer's first.
#[test]
fn a_report_for_another_incarnation_does_not_count() {
    let c = small_window();
    let (mut engine, _) = Engine::rejoin(c.cfg(3), c.engine_signer(3), nonce());
    engine.start(0);
    for from in [0, 1, 2] {
        for stale in [report(&c, 0, NONCE + 1, 0), report(&c, 0, 0, 0)] {
            let output = c.deliver_ok(&mut engine, 1, Peer::Replica(from), stale);
            assert_eq!(output, Output::default());
        }
    }
    assert_eq!(
        engine.participation(),
        Participation::CollectingReports {
            reports: 0,
            needed: 3
        }
    );
    for from in [0, 1] {
        c.deliver_ok(&mut engine, 1, Peer::Replica(from), state_info(&c, 1));
    }
    let output = c.deliver_ok(&mut engine, 1, Peer::Replica(2), state_info(&c, 2));
    assert_eq!(
        output.persist,
        vec![PersistRecord::Rejoining {
            horizon: Some(Cid(6)),
            nonce: NONCE
        }]
    );
}

/// Issue 17 item 7: a replica reported what it had voted when it was asked, so in a brand-new
/// CFT cluster a leader that took part and proposed (its own acceptance) before a rejoining
/// peer's report pushed that peer's horizon a window ahead, which no quorum could reach while
/// that peer abstained. It now reports to an incarnation what it had voted when it first saw
/// that incarnation's nonce (in a query, or in a StateInfo of the rejoiner), every time.
#[test]
fn a_reporter_answers_an_incarnation_with_its_votes_when_it_first_saw_the_nonce() {
    let c = cluster(
        Mode::Cft,
        3,
        1,
        Limits {
            max_instances_ahead: 4,
            max_instances_in_flight: 4,
            ..Limits::default()
        },
    );
    let mut leader = c.engine(0);
    leader.start(0);
    let output = c.deliver_ok(&mut leader, 1, Peer::Replica(2), query());
    assert_eq!(output, only_sent(vec![send(2, report(&c, 0, NONCE, 0))]));
    // Replica 1 rejoins with nonce 9; the leader learns it from its StateInfo.
    let output = c.deliver_ok(&mut leader, 1, Peer::Replica(1), report(&c, 0, 0, 9));
    assert_eq!(output, Output::default());
    // The leader proposes cid 1: in CFT its own acceptance.
    let output = c.deliver_ok(
        &mut leader,
        2,
        c.client_peer(),
        Message::Request(c.request(1)),
    );
    assert!(!output.persist.is_empty(), "it proposed: {output:?}");
    let voted = |cid: u64, for_nonce: u64| Message::StateInfo {
        checkpoints: vec![],
        voted_up_to: Cid(cid),
        executed: None,
        for_nonce,
        rejoin_nonce: 0,
    };
    for (now, from, nonce, answer) in [
        // As of first sight, however often asked.
        (3, 2, NONCE, voted(0, NONCE)),
        (4, 2, NONCE, voted(0, NONCE)),
        (5, 1, 9, voted(0, 9)),
        // A state transfer's query gets the current value.
        (6, 2, 0, voted(1, 0)),
        // A new incarnation, first seen now.
        (7, 2, NONCE + 1, voted(1, NONCE + 1)),
    ] {
        let output = c.deliver_ok(
            &mut leader,
            now,
            Peer::Replica(from),
            Message::StateQuery {
                rejoin_nonce: nonce,
            },
        );
        assert_eq!(output, only_sent(vec![send(from, answer)]), "at {now}");
    }
}

/// Review (issue 17 item 2, hostile data dir): a `Rejoining` record whose horizon no run can
/// have persisted (a correct horizon is at most two windows past a cid some peer proved
/// executed when it was computed) was resumed as is: the replica abstained until cid
/// u64::MAX, forever, ignoring fresh reports, and asked every leader for empty batches
/// without end. Recovery must either refuse such a record or let fresh reports bound it.
#[test]
fn a_stored_rejoin_horizon_no_peer_can_vouch_for_does_not_keep_the_replica_abstaining_forever() {
    let c = small_window();
    let records = [PersistRecord::Rejoining {
        horizon: Some(Cid(u64::MAX)),
        nonce: NONCE,
    }];
    let Ok((mut engine, _)) = Engine::recover(c.cfg(3), c.engine_signer(3), records) else {
        return; // refused at recovery, naming the record: fine
    };
    engine.start(0);
    // Nothing panics on the way (retransmits say it again).
    let due = engine.next_deadline_ms().unwrap();
    let _ = engine.on_timeout(due);
    // n-f peers report cid 3, proven executed: any horizon above 3 + 2 windows is made up.
    for from in [0, 1, 2] {
        let _ = c.deliver(&mut engine, due + 1, Peer::Replica(from), state_info(&c, 3));
    }
    match engine.participation() {
        Participation::CatchingUp { until } => assert!(
            until <= Cid(3 + 2 * 4),
            "still abstaining until {until}, which no peer vouched for"
        ),
        other => assert!(
            !matches!(other, Participation::Participating),
            "must not take part before catching up: {other:?}"
        ),
    }
}

/// Review (issue 17 item 1): a replica that rejoined and took part keeps its `Rejoining`
/// record until the next checkpoint compacts its log. Restarted before that, `recover` resumes
/// "catching up" to a horizon its stored decisions already reach and broadcasts `Abstaining`
/// before re-executing them; a follower that heard it from its leader asked for the next
/// regency at once, though it had itself executed past that horizon: a routine restart of the
/// leader cost a leader change (and one more fault meanwhile, a regency with a dead leader).
/// A leader that abstains until a cid the follower has executed will take part as soon as it
/// catches up by decisions; only a horizon past the follower's execution needs a new leader.
#[test]
fn a_follower_does_not_replace_its_leader_for_a_horizon_it_has_already_executed() {
    let c = small_window();
    // Replica 0, the leader of regency 0, rejoined up to cid 2 and took part; no checkpoint
    // has compacted its log since. It restarts.
    let records = rejoined_until(&c, Cid(2));
    let (_leader, output) = Engine::recover(c.cfg(0), c.engine_signer(0), records).unwrap();
    assert!(
        output
            .send_now
            .contains(&broadcast(Message::Abstaining { until: Cid(2) })),
        "{output:?}"
    );
    // A follower that executed cids 1 and 2.
    let (mut follower, _) = Engine::recover(
        c.cfg(1),
        c.engine_signer(1),
        [
            PersistRecord::Decided(decision(&c, 1)),
            PersistRecord::Decided(decision(&c, 2)),
        ],
    )
    .unwrap();
    let _ = follower.on_executed(0, Cid(1), vec![b"r".to_vec()]);
    let _ = follower.on_executed(0, Cid(2), vec![b"r".to_vec()]);
    follower.start(0);
    assert_eq!(follower.last_executed(), Cid(2));
    let output = c.deliver_ok(
        &mut follower,
        1,
        Peer::Replica(0),
        Message::Abstaining { until: Cid(2) },
    );
    assert!(
        !output
            .send_now
            .iter()
            .chain(&output.send_after_persist)
            .any(|o| matches!(o, Outgoing::Broadcast(Message::Stop(_)))),
        "asked for the next regency: {output:?}"
    );
}

/// Attack review (i17-attack3), counting the amnesiac as correct-but-forgetful plus f = 1
/// Byzantine: a horizon of 0 when every report is 0 skips the window that covers what the
/// rejoiner may have voted past its last execution (0). Before its wipe replica 3 WROTE and
/// ACCEPTED value v at (cid 1, regency 0), on WRITEs of the Byzantine leader 0, replica 1 and
/// itself; its WRITE to replica 1 is still in flight, so replica 1 has two WRITEs and accepted
/// nothing. Replicas 0, 1, 2 first see the new nonce with nothing accepted and report 0: the
/// horizon is 0 and it votes at once. The leader now proposes v' at (1, 0); replica 3 WRITEs
/// it, and with replicas 0 and 2 v' is decided, while the delayed WRITE lets replica 1 accept
/// v and decide it with the forgotten ACCEPT and the leader's. With a horizon of one window
/// it abstains until cid 1 is executed (and a brand-new cluster starts with --new-cluster).
#[test]
fn a_rejoiner_whose_reports_are_all_0_does_not_vote_again_where_it_may_have_voted() {
    let c = small_window();
    let (mut engine, _) = Engine::rejoin(c.cfg(3), c.engine_signer(3), nonce());
    engine.start(0);
    for from in [0, 1, 2] {
        c.deliver_ok(&mut engine, 1, Peer::Replica(from), state_info(&c, 0));
    }
    let v2 = c.batch(&[2]);
    let propose = c.propose(0, Cid(1), Regency(0), v2.clone());
    let output = c.deliver(&mut engine, 2, Peer::Replica(0), Message::Propose(propose));
    let wrote = output.persist.iter().any(
        |r| matches!(r, PersistRecord::Vote(v) if v.cid == Cid(1) && v.kind == VoteKind::Write),
    );
    assert!(
        !wrote,
        "it voted in cid 1, where it may have voted for another value before its wipe: {output:?}"
    );
}

/// Issue 15 item 2 (docs/design.md §3.8): a replica that rejoins after losing its store may
/// have replied to a write it no longer holds; its answer to an unordered read, from the state
/// before that write, could complete a read that misses the write (its reply counted in both
/// quorums). It answers no unordered read until it takes part; a participating replica hands
/// the same read to its service. Before, the rejoiner handed it to its service too.
#[test]
fn a_rejoining_replica_answers_no_unordered_read() {
    use smr_core::engine::ServiceWork;
    use smr_core::message::{RequestBody, RequestKind};
    use smr_core::Request;
    let c = small_window();
    let read = Request::new(
        RequestBody {
            client: c.client.public_key(),
            session: 1,
            seq: 1,
            kind: RequestKind::Unordered,
            op: b"get".to_vec(),
        },
        c.signing().then_some(&c.client as &dyn smr_crypto::Signer),
    );
    let (mut rejoining, _) = Engine::rejoin(c.cfg(3), c.engine_signer(3), nonce());
    rejoining.start(0);
    let output = c.deliver_ok(
        &mut rejoining,
        1,
        c.client_peer(),
        Message::Request(read.clone()),
    );
    assert_eq!(output, Output::default());
    assert_eq!(rejoining.stats().unordered_reads_withheld, 1);

    let mut participating = c.engine(3);
    participating.start(0);
    let output = c.deliver_ok(
        &mut participating,
        1,
        c.client_peer(),
        Message::Request(read.clone()),
    );
    assert_eq!(
        output,
        Output {
            service: vec![ServiceWork::Query {
                id: read.id(),
                op: b"get".to_vec(),
            }],
            ..Output::default()
        }
    );
}

/// A leader that catches up by a state transfer proposes into the window the checkpoint moved.
/// Before, only an executed decision gave it the chance (`execute_ready`), and none may follow
/// a checkpoint: a leader whose in-flight bound was full of instances the cluster had decided
/// meanwhile installed a checkpoint past them and proposed nothing more, so a peer abstaining
/// up to a horizon past the checkpoint never reached it (simulator, CFT quiet rejoin seed 935:
/// with the next crash, about 80 s without progress).
#[test]
fn a_leader_that_catches_up_by_state_transfer_proposes_into_the_moved_window() {
    use smr_core::ServiceWork;
    let c = small_window();
    let mut leader = c.engine(0);
    leader.start(0);
    // Replica 3 abstains up to cid 6: the leader fills its in-flight bound (cids 1-4).
    let output = c.deliver_ok(
        &mut leader,
        1,
        Peer::Replica(3),
        Message::Abstaining { until: Cid(6) },
    );
    assert_eq!(output, empty_proposals(&c, 1..=4));
    // Replicas 1 and 2 (f+1) report a checkpoint at cid 4; the leader fetches it from replica 1.
    let checkpoint = c.checkpoint_at(Cid(4), b"service state at 4");
    c.agree_on_checkpoint(&mut leader, 10, &checkpoint, [1, 2]);
    // The whole state in one chunk: installed at cid 4, and the window (5..=8) is free, so the
    // leader proposes empty batches for cids 5 and 6, behind the checkpoint record.
    let chunk = state_chunk(&checkpoint, 0, checkpoint.data.clone(), true);
    let output = c.deliver_ok(&mut leader, 30, Peer::Replica(1), chunk);
    let mut expected = empty_proposals(&c, 5..=6);
    expected
        .persist
        .insert(0, PersistRecord::Checkpoint(checkpoint.clone()));
    expected
        .send_after_persist
        .insert(0, send(1, Message::DecisionQuery { from_cid: Cid(5) }));
    expected.service = vec![ServiceWork::Restore {
        cid: Cid(4),
        snapshot: b"service state at 4".to_vec(),
    }];
    assert_eq!(output, expected);
    assert_eq!(leader.last_executed(), Cid(4));
}
