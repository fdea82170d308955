//! Review R27 (attacker review of stop 26's liveness changes, issue 12): what a Byzantine
//! replica can do with catch-up answers.

mod common;

use smr_core::engine::PersistRecord;
use smr_core::message::{Cid, Decision, Message};
use smr_core::{Output, Peer};

use common::{only_service, paused_catch_up, run_service, send};

/// A catch-up paused because decisions waiting for the service fill the window resumes with
/// the peer whose full answer paused it. A Byzantine replica must not take that place with a
/// full answer of its own made of decisions the replica already holds plus one it does not
/// (any replica holds the log, so this costs it nothing): before, a full answer that taught
/// anything cleared the place and named its sender, the resumed query went to the liar, which
/// answers nothing, and the catch-up waited for the retransmit timer's round robin (one answer
/// per `retransmit_initial_ms` instead of one per round trip, however often it did so).
#[test]
fn a_byzantine_full_answer_does_not_take_over_a_paused_catch_up() {
    let (c, mut replica) = paused_catch_up();
    // Byzantine replica 2 sends a "full" answer: cids 2-4, which the replica holds, and cid 5,
    // the one slot left in its window. The replica learns cid 5 and sends nothing.
    let byzantine: Vec<Decision> = (2..=5).map(|cid| c.decision(cid, vec![])).collect();
    let out = c.deliver_ok(
        &mut replica,
        20,
        Peer::Replica(2),
        Message::Decisions(byzantine),
    );
    assert_eq!(
        out,
        Output {
            persist: vec![PersistRecord::Decided(c.decision(5, vec![]))],
            ..Output::default()
        }
    );
    // The service executes cids 1-5; once the window has room for a full answer, the query
    // from cid 6 goes to replica 0, whose answer paused the catch-up, not to the liar.
    let outputs = run_service(&mut replica, 30, &only_service(c.execute(Cid(1), &[])));
    let sent: Vec<_> = outputs.iter().flat_map(|o| o.messages().cloned()).collect();
    assert_eq!(
        sent,
        vec![send(0, Message::DecisionQuery { from_cid: Cid(6) })]
    );
}
