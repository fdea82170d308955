//! Review A29 (issue 12, kind 3 from files): a stored checkpoint's cid is bounded before use.
//! Fails on the engine before the fix (noted per test).

mod common;

use smr_core::checkpoint::Checkpoint;
use smr_core::engine::{Outgoing, PersistRecord};
use smr_core::message::{Batch, Cid, Message, Regency, VoteKind};
use smr_core::{Engine, Output};

use common::cft;

/// A checksum-valid checkpoint file whose cid is `u64::MAX` (or any cid within a window of
/// it) was recovered as is: `last_executed` became `u64::MAX`, and as leader the replica
/// proposed at that cid on its first request and panicked at `cid.next()` ("cid
/// 18446744073709551615 + 1 overflows"), every restart again. Recovery now refuses a stored
/// checkpoint beyond [`Engine::MAX_RECOVERED_CID`], naming it, and a replica recovered at that
/// bound still proposes. Before the fix the first `recover` returned `Ok` and the request
/// panicked the leader.
#[test]
fn recovery_refuses_a_checkpoint_at_a_cid_no_run_reaches() {
    let c = cft();
    // The record's own cid field says 5: what counts is the cid its data holds.
    let recover = |cid: Cid| {
        let checkpoint = Checkpoint {
            cid: Cid(5),
            ..c.checkpoint_at(cid, b"state")
        };
        Engine::recover(
            c.cfg(0),
            c.engine_signer(0),
            vec![PersistRecord::Checkpoint(checkpoint)],
        )
    };
    for cid in [
        Cid::MAX,
        Cid(u64::MAX - 3),
        Cid(Engine::MAX_RECOVERED_CID.0 + 1),
    ] {
        let err = match recover(cid) {
            Err(err) => err,
            Ok((mut leader, _)) => {
                // What happened before the fix: the first request panics the leader.
                leader.start(0);
                c.deliver_ok(
                    &mut leader,
                    1,
                    c.client_peer(),
                    Message::Request(c.open_request()),
                );
                panic!("a checkpoint at cid {cid} was recovered");
            }
        };
        assert_eq!(
            err,
            format!(
                "stored checkpoint is at cid {cid}, beyond cid 4611686018427387904, the highest a store can hold: the store is damaged"
            )
        );
    }
    // At the bound itself the leader recovers, and proposes the next cid.
    let at = Engine::MAX_RECOVERED_CID;
    let (mut leader, _) = recover(at).expect("a checkpoint at the bound");
    assert_eq!(leader.last_executed(), at);
    leader.start(0);
    let open = c.open_request();
    let output = c.deliver_ok(
        &mut leader,
        1,
        c.client_peer(),
        Message::Request(open.clone()),
    );
    let next = Cid(at.0 + 1);
    let batch = Batch {
        requests: vec![open],
    };
    let my_accept = c.vote(VoteKind::Accept, 0, next, Regency(0), batch.digest());
    assert_eq!(
        output,
        Output {
            persist: vec![
                PersistRecord::Prepared(c.prepared(next, Regency(0), batch.clone())),
                PersistRecord::Vote(my_accept.body),
            ],
            send_after_persist: vec![
                Outgoing::Broadcast(Message::Propose(c.propose(0, next, Regency(0), batch))),
                Outgoing::Broadcast(Message::Accept(my_accept)),
            ],
            ..Output::default()
        }
    );
}
