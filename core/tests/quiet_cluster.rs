//! A quiet cluster converges: with no client traffic (so no votes, no timeouts and no leader
//! change), a replica behind its peers, the leader included, still learns it is behind, because
//! every replica says where it stands in its heartbeat. Before, only the leader sent heartbeats:
//! a follower two cids behind after the leader crashed, or a leader behind its followers after
//! partitions healed, stayed behind until the next request (simulator seeds CFT leader crash 180,
//! rolling partitions 166 and quiet rejoin 12, once junk requests were refused at the door; kept
//! in `sim/main.rs`, `quiet_cluster_seeds_that_once_did_not_converge_still_pass`).

mod common;

use smr_core::message::{Cid, Message, Regency};
use smr_core::Output;
use smr_modes::Mode;

use common::{broadcast, cluster, only_sent, send};

fn heartbeat(regency: u64, last_decided: u64) -> Message {
    Message::Heartbeat {
        regency: Regency(regency),
        last_decided: Cid(last_decided),
    }
}

#[test]
fn every_replica_broadcasts_its_heartbeat_not_only_the_leader() {
    for mode in [Mode::Bft, Mode::Cft] {
        let (n, f) = if mode == Mode::Bft { (4, 1) } else { (3, 1) };
        let c = cluster(mode, n, f, Default::default());
        for me in 0..n as u32 {
            let mut replica = c.engine(me);
            assert_eq!(replica.start(1000), Output::default());
            assert_eq!(
                replica.on_timeout(1500),
                only_sent(vec![broadcast(heartbeat(0, 0))]),
                "{mode:?} replica {me}"
            );
        }
    }
}

#[test]
fn a_replica_behind_any_peer_asks_that_peer_for_the_decisions_once_per_interval() {
    for mode in [Mode::Bft, Mode::Cft] {
        let (n, f) = if mode == Mode::Bft { (4, 1) } else { (3, 1) };
        let c = cluster(mode, n, f, Default::default());
        // The leader (replica 0) behind follower 2, and follower 1 behind follower 2.
        for me in [0, 1] {
            let mut replica = c.engine(me);
            assert_eq!(replica.start(1000), Output::default());
            assert_eq!(
                c.deliver_from(&mut replica, 1200, 2, heartbeat(0, 3)),
                only_sent(vec![send(2, Message::DecisionQuery { from_cid: Cid(1) })]),
                "{mode:?} replica {me}"
            );
            // Queries to one peer are paced (retransmit_initial_ms): a repeated claim asks
            // nothing more.
            assert_eq!(
                c.deliver_from(&mut replica, 1250, 2, heartbeat(0, 4)),
                Output::default(),
                "{mode:?} replica {me}"
            );
            // A peer no further than we are gets no query.
            assert_eq!(
                c.deliver_from(&mut replica, 1300, 1 - me, heartbeat(0, 0)),
                Output::default(),
                "{mode:?} replica {me}"
            );
        }
    }
}
