//! Review R27 (attacker review of stop 26's liveness changes, issue 12): what a Byzantine
//! replica can do with catch-up answers.

mod common;

use smr_core::engine::{PersistRecord, ServiceWork};
use smr_core::message::{Batch, Cid, Decision, Message, Regency, VoteKind};
use smr_core::{Limits, Output, Peer};
use smr_modes::Mode;

use common::{cluster, run_service, send};

/// A catch-up paused because decisions waiting for the service fill the window resumes with
/// the peer whose full answer paused it. A Byzantine replica must not take that place with a
/// full answer of its own made of decisions the replica already holds plus one it does not
/// (any replica holds the log, so this costs it nothing): before, a full answer that taught
/// anything cleared the place and named its sender, the resumed query went to the liar, which
/// answers nothing, and the catch-up waited for the retransmit timer's round robin (one answer
/// per `retransmit_initial_ms` instead of one per round trip, however often it did so).
#[test]
fn a_byzantine_full_answer_does_not_take_over_a_paused_catch_up() {
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
    // Replica 0 answers with a full reply, cids 1-4: cid 1 goes to the service, and the window
    // (up to 1 + 4) has room for one more decision only, so the next query waits, for replica 0.
    let decisions: Vec<Decision> = (1..=4).map(|cid| empty_decision(&c, cid)).collect();
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
    // Byzantine replica 2 sends a "full" answer: cids 2-4, which the replica holds, and cid 5,
    // the one slot left in its window. The replica learns cid 5 and sends nothing.
    let byzantine: Vec<Decision> = (2..=5).map(|cid| empty_decision(&c, cid)).collect();
    let out = c.deliver_ok(
        &mut replica,
        20,
        Peer::Replica(2),
        Message::Decisions(byzantine),
    );
    assert_eq!(
        out,
        Output {
            persist: vec![PersistRecord::Decided(empty_decision(&c, 5))],
            ..Output::default()
        }
    );
    // The service executes cids 1-5; once the window has room for a full answer, the query
    // from cid 6 goes to replica 0, whose answer paused the catch-up, not to the liar.
    let outputs = run_service(&mut replica, 30, &out_with(c.execute(Cid(1), &[])));
    let sent: Vec<_> = outputs.iter().flat_map(|o| o.messages().cloned()).collect();
    assert_eq!(
        sent,
        vec![send(0, Message::DecisionQuery { from_cid: Cid(6) })]
    );
}

/// An output that holds nothing but `work` for the service.
fn out_with(work: ServiceWork) -> Output {
    Output {
        service: vec![work],
        ..Output::default()
    }
}

/// The decision of an empty batch at `cid` in regency 0 (ACCEPTs of replicas 0, 1 and 2).
fn empty_decision(c: &common::Cluster, cid: u64) -> Decision {
    let batch = Batch::default();
    let digest = batch.digest();
    Decision {
        cid: Cid(cid),
        certificate: c.votes(VoteKind::Accept, &[0, 1, 2], Cid(cid), Regency(0), digest),
        batch,
    }
}
