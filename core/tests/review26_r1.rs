//! Review R1 of the session's liveness changes (issue 12): a replica behind a SYNC, and
//! heartbeats from a Byzantine replica.

mod common;

use smr_core::engine::PersistRecord;
use smr_core::message::{Cid, Message, Regency, VoteKind};
use smr_core::{Limits, Output, Rejection};
use smr_modes::Mode;

use common::{broadcast, cluster, send};

/// A replica behind the start of a SYNC (it has not executed the cids the SYNC proves decided)
/// must not vote, in the SYNC's regency, for a value its leader proposes at one of those cids:
/// the SYNC fixed them (decided below its start, its values up to its end), and a correct
/// leader proposes only after its end. Before, such a PROPOSE was taken: a Byzantine leader of
/// regency 1 could have the f+1 correct replicas that prepared D at cid 1 but had not learned
/// its decision write X there, and with its own WRITE decide X at a cid decided D (n = 4).
#[test]
fn a_replica_behind_the_sync_refuses_a_proposal_at_a_cid_the_sync_fixed() {
    let c = cluster(Mode::Bft, 4, 1, Limits::default());
    let mut replica = c.engine(3);
    replica.start(0);
    // Regency 1's SYNC (leader 1): replica 0 proves cid 1 decided with D; replica 3 (this one)
    // prepared D at cid 1 in regency 0 but did not learn the decision.
    let d = c.batch(&[1]);
    let decided_1 = c.decision_proof(Cid(1), d.digest());
    let prepared_1 = c.prepared(Cid(1), Regency(0), d.clone());
    let proofs = vec![
        c.stopdata(0, Regency(1), Some(decided_1), vec![]),
        c.stopdata(1, Regency(1), None, vec![]),
        c.stopdata(3, Regency(1), None, vec![prepared_1]),
    ];
    let sync = c.sync(1, Regency(1), proofs);
    let out = c.deliver_from(&mut replica, 100, 1, Message::Sync(sync));
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
    // The leader proposes X at cid 1, which its own SYNC proves decided: refused, no vote.
    let x = c.batch(&[9]);
    let propose = c.propose(1, Cid(1), Regency(1), x);
    let out = c.deliver_from(&mut replica, 110, 1, Message::Propose(propose));
    assert_eq!(
        out,
        Output {
            rejections: vec![Rejection::Equivocation {
                replica: 1,
                cid: Cid(1),
                what: "a proposal at a cid its regency's SYNC fixed",
            }],
            ..Output::default()
        }
    );
    // Cid 2, after the SYNC's end (1), is the leader's to propose: written at once.
    let b2 = c.batch(&[2]);
    let propose = c.propose(1, Cid(2), Regency(1), b2.clone());
    let out = c.deliver_from(&mut replica, 120, 1, Message::Propose(propose));
    let write = c.vote(VoteKind::Write, 3, Cid(2), Regency(1), b2.digest());
    assert_eq!(
        out,
        Output {
            send_now: vec![],
            persist: vec![PersistRecord::Vote(write.body)],
            send_after_persist: vec![broadcast(Message::Write(write))],
            service: vec![],
            rejections: vec![],
        }
    );
}
