//! Review Q30 (kind 3, from files): recovery bounded a stored checkpoint's cid
//! (`Engine::MAX_RECOVERED_CID`), a decision's, a vote's and a prepared value's, but took the
//! leader's own stored SYNC as it stood. A checksum-valid SYNC whose STOPDATA claimed cid
//! `u64::MAX` decided left the recovered leader's next cid saturated: it proposed nothing for
//! any request for as long as its regency lasted. A stored SYNC is now held to what this
//! replica can have written (`check_stored_sync` in `engine/recovery.rs`).

mod common;

use smr_core::engine::{Outgoing, PersistRecord};
use smr_core::message::{Cid, Message, PreparedProof, Regency, Signed, StopData};
use smr_core::{Engine, Limits};
use smr_modes::Mode;

use common::{cluster, Cluster};

/// Three CFT replicas (f = 1) whose window holds four instances (`max_instances_ahead` and
/// `max_instances_in_flight` 4).
fn cft() -> Cluster {
    cluster(
        Mode::Cft,
        3,
        1,
        Limits {
            max_instances_ahead: 4,
            max_instances_in_flight: 4,
            ..Limits::default()
        },
    )
}

/// Recovers replica `me` (CFT, n = 3; replica 1 leads regency 1) from regency 1 and a SYNC of
/// regency 1 signed as `leader`'s, whose first STOPDATA (replica 0's) names `last_decided` and
/// `prepared`; starts it and hands it an open request: the cids it proposes then, or the
/// recovery error.
fn recovered_proposes(
    me: u32,
    leader: u32,
    last_decided: Option<Cid>,
    prepared: Vec<PreparedProof>,
) -> Result<Vec<Cid>, String> {
    let c = cft();
    let digest = c.batch(&[1]).digest();
    let proofs: Vec<Signed<StopData>> = vec![
        c.stopdata(
            0,
            Regency(1),
            last_decided.map(|cid| c.decision_proof(cid, digest)),
            prepared,
        ),
        c.stopdata(1, Regency(1), None, vec![]),
    ];
    let store = vec![
        PersistRecord::Regency(Regency(1)),
        PersistRecord::Sync(c.sync(leader, Regency(1), proofs)),
    ];
    let (mut replica, _) = Engine::recover(c.cfg(me), c.engine_signer(me), store)?;
    replica.start(0);
    let output = c.deliver(
        &mut replica,
        1,
        c.client_peer(),
        Message::Request(c.open_request()),
    );
    assert_eq!(output.rejections, []);
    Ok(output
        .send_after_persist
        .iter()
        .chain(&output.send_now)
        .filter_map(|o| match o {
            Outgoing::Broadcast(Message::Propose(p)) => Some(p.body.cid),
            _ => None,
        })
        .collect())
}

#[test]
fn a_stored_sync_naming_a_cid_no_store_can_hold_is_refused() {
    // The control: the same SYNC without the claim; the recovered leader proposes cid 1.
    assert_eq!(recovered_proposes(1, 1, None, vec![]), Ok(vec![Cid(1)]));
    // Before: recovered, and the leader proposed nothing (`left: []`).
    assert_eq!(
        recovered_proposes(1, 1, Some(Cid::MAX), vec![]),
        Err(format!(
            "stored SYNC of regency 1 names cid {} decided, beyond cid {}, the highest a store can hold: the store is damaged",
            Cid::MAX,
            Engine::MAX_RECOVERED_CID
        ))
    );
    let just_beyond = Cid(Engine::MAX_RECOVERED_CID.0 + 1);
    assert_eq!(
        recovered_proposes(1, 1, Some(just_beyond), vec![]),
        Err(format!(
            "stored SYNC of regency 1 names cid {just_beyond} decided, beyond cid {}, the highest a store can hold: the store is damaged",
            Engine::MAX_RECOVERED_CID
        ))
    );
    // At the bound it recovers; the leader catches up to that cid before it proposes.
    assert_eq!(
        recovered_proposes(1, 1, Some(Engine::MAX_RECOVERED_CID), vec![]),
        Ok(vec![])
    );
}

#[test]
fn a_stored_sync_with_a_prepared_value_outside_its_stopdatas_window_is_refused() {
    // The window (max_instances_ahead) is 4: cids 1 to 4 after decided cid 0.
    let c = cft();
    let prepared = |cid| c.prepared(Cid(cid), Regency(0), c.batch(&[9]));
    assert_eq!(
        recovered_proposes(1, 1, None, vec![prepared(5)]),
        Err("stored SYNC of regency 1 names a value prepared for cid 5, outside cids 1 to 4 that its STOPDATA's decided cid 0 allows: the store is damaged".to_string())
    );
    assert_eq!(
        recovered_proposes(1, 1, None, vec![prepared(u64::MAX)]),
        Err(format!("stored SYNC of regency 1 names a value prepared for cid {}, outside cids 1 to 4 that its STOPDATA's decided cid 0 allows: the store is damaged", u64::MAX))
    );
    // Inside the window, the SYNC fixes cid 2's value (and a no-op for cid 1); the recovered
    // leader proposes the request after them. At the window's edge (cid 4) it recovers too, and
    // the four cids the SYNC fixes fill `max_instances_in_flight`.
    assert_eq!(
        recovered_proposes(1, 1, None, vec![prepared(2)]),
        Ok(vec![Cid(3)])
    );
    assert_eq!(
        recovered_proposes(1, 1, None, vec![prepared(4)]),
        Ok(vec![])
    );
}

#[test]
fn a_stored_sync_is_only_ever_the_replicas_own_as_leader() {
    // Replica 2 does not lead regency 1: a SYNC in its store (signed as replica 1's, or as its
    // own) is not one it wrote. Before, it recovered and applied it.
    assert_eq!(
        recovered_proposes(2, 1, None, vec![]),
        Err("stored SYNC of regency 1 is signed as replica 1's, and replica 1 leads that regency: a replica stores only the SYNC it sent as leader, so the store is damaged".to_string())
    );
    assert_eq!(
        recovered_proposes(2, 2, None, vec![]),
        Err("stored SYNC of regency 1 is signed as replica 2's, and replica 1 leads that regency: a replica stores only the SYNC it sent as leader, so the store is damaged".to_string())
    );
}
