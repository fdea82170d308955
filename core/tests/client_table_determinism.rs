//! The client table is replicated state: found by the issue-12 review (an attacker's view),
//! kept as a regression.

mod common;

use std::sync::Arc;

use smr_core::engine::{Output, PersistRecord, ServiceWork};
use smr_core::message::{
    Batch, Cid, Decision, Message, Regency, Request, RequestBody, RequestKind, VoteKind,
};
use smr_core::{ClientPolicy, Engine, Limits, Peer};
use smr_crypto::sim::SimKey;
use smr_modes::Mode;

use common::{cluster, Cluster};

fn open_cluster(limits: Limits) -> Cluster {
    let mut c = cluster(Mode::Cft, 3, 1, limits);
    c.verifier.clients = Arc::new(ClientPolicy::Any);
    c
}

/// A request whose service result is `reply_len` bytes long (the service below reads op[0]).
fn request(client: &SimKey, seq: u64, reply_len: u8) -> Request {
    Request::new(
        RequestBody {
            client: client.public_key(),
            seq,
            kind: RequestKind::Ordered,
            op: vec![reply_len, seq as u8],
        },
        None,
    )
}

fn decision(c: &Cluster, cid: u64, requests: Vec<Request>) -> Decision {
    let batch = Batch { requests };
    let digest = batch.digest();
    Decision {
        cid: Cid(cid),
        batch,
        certificate: c.votes(VoteKind::Accept, &[0, 1, 2], Cid(cid), Regency(0), digest),
    }
}

/// Runs every piece of service work in `out` to completion, in order; returns the bytes of
/// every checkpoint persisted.
fn run_service(engine: &mut Engine, out: Output) -> Vec<Vec<u8>> {
    let mut checkpoints = Vec::new();
    let mut work: Vec<ServiceWork> = out.service;
    while !work.is_empty() {
        let next = match work.remove(0) {
            ServiceWork::Execute { cid, items } => {
                let results = items.iter().map(|i| vec![b'r'; i.op[0] as usize]).collect();
                engine.on_executed(0, cid, results)
            }
            ServiceWork::TakeSnapshot { cid } => engine.on_snapshot(0, cid, b"service".to_vec()),
            other => panic!("unexpected service work {other:?}"),
        };
        checkpoints.extend(next.persist.iter().filter_map(|r| match r {
            PersistRecord::Checkpoint(cp) => Some(cp.data.clone()),
            _ => None,
        }));
        work.extend(next.service);
    }
    checkpoints
}

/// The client table is replicated state (it is in every checkpoint, and its digest must
/// agree across replicas for a checkpoint to become stable or a transfer to be agreed), so
/// it must be a function of the decided sequence alone. But `ClientTable::record_reply`
/// enforces `max_reply_cache_bytes` by dropping the caches of the clients with the oldest
/// *stamp at the time the reply arrives*, and the engine marks cid c+1 executing (which
/// restamps its clients) before the service has returned cid c's results whenever both are
/// decided (`execute_ready` hands every ready batch to the service at once). So a replica
/// that learned cids 1..3 together and one that learned them one at a time drop different
/// replies: their checkpoints differ, and client A's retry is answered by one and refused as
/// stale by the other.
#[test]
fn client_table_is_a_function_of_the_decided_sequence_not_of_service_timing() {
    let limits = Limits {
        max_client_reply_bytes: 10,
        max_reply_cache_bytes: 10,
        checkpoint_period: 4,
        ..Limits::default()
    };
    let c = open_cluster(limits);
    let client_c = SimKey::from_seed([31; 32]);
    let client_a = SimKey::from_seed([32; 32]);
    let decisions = vec![
        decision(&c, 1, vec![request(&client_c, 1, 6)]),
        decision(&c, 2, vec![request(&client_a, 1, 6)]),
        decision(&c, 3, vec![request(&client_c, 2, 1)]),
        decision(&c, 4, vec![request(&client_a, 2, 1)]),
    ];

    // Replica 1 learns each decision alone and its service keeps up.
    let mut one_by_one = c.engine(1);
    one_by_one.start(0);
    let mut cps_one = Vec::new();
    for d in &decisions {
        let out = c.deliver_ok(
            &mut one_by_one,
            0,
            Peer::Replica(0),
            Message::Decisions(vec![d.clone()]),
        );
        cps_one.extend(run_service(&mut one_by_one, out));
    }

    // Replica 2 learns cids 1..=3 in one answer (catch-up), then cid 4.
    let mut together = c.engine(2);
    together.start(0);
    let mut cps_together = Vec::new();
    let out = c.deliver_ok(
        &mut together,
        0,
        Peer::Replica(0),
        Message::Decisions(decisions[..3].to_vec()),
    );
    cps_together.extend(run_service(&mut together, out));
    let out = c.deliver_ok(
        &mut together,
        0,
        Peer::Replica(0),
        Message::Decisions(vec![decisions[3].clone()]),
    );
    cps_together.extend(run_service(&mut together, out));

    assert_eq!(cps_one.len(), 1);
    assert_eq!(cps_together.len(), 1);
    assert!(
        cps_one == cps_together,
        "two correct replicas built different checkpoints at cid 4 from the same decisions"
    );
}
