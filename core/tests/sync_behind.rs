//! A replica that applies a SYNC while behind it votes for the values the SYNC fixed past its
//! window once execution brings them into the window. Before, those values were dropped: a new
//! leader that built its SYNC while far behind (it had lagged at cid 3 while the others were at
//! 43) caught up by decisions and then never voted for the SYNC's cids 44-47; with one replica
//! crashed and one rejoining, nothing decided them and the cluster stalled for about 80 s
//! (simulator, CFT quiet rejoin seed 145, kept in `quiet_cluster_seeds_that_once_did_not_converge_still_pass`).

mod common;

use smr_core::engine::PersistRecord;
use smr_core::message::{Batch, Cid, Message, Regency, VoteKind};
use smr_core::{Limits, Output};
use smr_modes::Mode;

use common::{broadcast, cluster};

#[test]
fn sync_values_past_the_window_are_voted_for_once_caught_up() {
    let c = cluster(
        Mode::Bft,
        4,
        1,
        Limits {
            max_instances_ahead: 2,
            max_instances_in_flight: 2,
            ..Limits::default()
        },
    );
    let mut replica = c.engine(3);
    replica.start(0);
    // Regency 1's SYNC (leader 1): replicas 0 and 1 decided up to cid 2 and prepared b3 for
    // cid 3 in regency 0; replica 3 (this one) reported nothing. Replica 3 has executed nothing,
    // so cid 3 is past its window (0 + 2).
    let empty = Batch::default();
    let b3 = c.batch(&[3]);
    let decided_2 = c.decision_proof(Cid(2), empty.digest());
    let prepared_3 = c.prepared(Cid(3), Regency(0), b3.clone());
    let proofs = vec![
        c.stopdata(
            0,
            Regency(1),
            Some(decided_2.clone()),
            vec![prepared_3.clone()],
        ),
        c.stopdata(1, Regency(1), Some(decided_2), vec![prepared_3]),
        c.stopdata(3, Regency(1), None, vec![]),
    ];
    // It adopts the regency (persisted before anything leaves) and asks the holder of the
    // decided cid 2 for the decisions; it cannot vote for cid 3 yet.
    c.apply_sync_behind(&mut replica, proofs);
    // Decision 1 arrives; its hand-off to the service moves the window to 1 + 2 and so brings
    // cid 3 into it: the replica writes the SYNC's value for it, persisted first, in the same
    // output.
    let learned = c.deliver_decision(&mut replica, 1, vec![]);
    let write = c.vote(VoteKind::Write, 3, Cid(3), Regency(1), b3.digest());
    assert_eq!(
        learned,
        Output {
            send_now: vec![],
            persist: vec![
                PersistRecord::Decided(c.decision(1, vec![])),
                PersistRecord::Vote(write.body),
            ],
            send_after_persist: vec![broadcast(Message::Write(write))],
            service: vec![c.execute(Cid(1), &[])],
            rejections: vec![],
        }
    );
}
