//! The leader's adaptive batching in BFT: an idle leader proposes at once; with instances in
//! flight it starts another only when the waiting requests make a batch worth an instance. CFT
//! instances carry no signatures, and CFT proposes at once up to the window.

use std::sync::Arc;

use smr_core::message::{Message, Request, RequestBody, RequestKind};
use smr_core::{
    ClientPolicy, Engine, EngineConfig, InboundVerifier, Limits, Outgoing, Peer, Timeouts,
};
use smr_crypto::sim::{SimKey, SimVerifier};
use smr_modes::{Mode, Quorums};

const MAX_BATCH: usize = 64;
/// `MAX_BATCH / 16`: the requests each instance already in flight asks of a new one.
const STEP: usize = 4;

fn setup(mode: Mode, n: usize) -> (Engine, InboundVerifier, SimKey) {
    let quorums = Quorums::new(mode, n, 1).unwrap();
    let keys: Vec<SimKey> = (0..n as u8).map(|i| SimKey::from_seed([i; 32])).collect();
    let client = SimKey::from_seed([77; 32]);
    let mut sim = SimVerifier::new();
    for k in keys.iter().chain([&client]) {
        sim.register(k);
    }
    let limits = Limits {
        max_batch_requests: MAX_BATCH,
        max_instances_in_flight: 4,
        ..Limits::default()
    };
    let cfg = EngineConfig {
        quorums,
        me: 0,
        replica_keys: keys.iter().map(|k| k.public_key()).collect(),
        clients: ClientPolicy::Any,
        limits: limits.clone(),
        timeouts: Timeouts::default(),
    }
    .validate()
    .expect("valid test config");
    let verifier = InboundVerifier {
        quorums,
        replica_keys: Arc::new(cfg.replica_keys.clone()),
        clients: Arc::new(ClientPolicy::Any),
        limits,
        signatures: Arc::new(sim),
    };
    (
        Engine::new(cfg, Arc::new(keys[0].clone())),
        verifier,
        client,
    )
}

/// Delivers request `seq` to the leader; returns the sizes of the batches it proposed.
fn request(
    engine: &mut Engine,
    verifier: &InboundVerifier,
    client: &SimKey,
    seq: u64,
) -> Vec<usize> {
    let request = Request::new(
        RequestBody {
            client: client.public_key(),
            session: 1,
            seq,
            kind: RequestKind::Ordered,
            op: vec![1],
        },
        verifier
            .quorums
            .requires_signatures()
            .then_some(client as &dyn smr_crypto::Signer),
    );
    let verified = verifier
        .verify_inbound(Peer::Client(client.public_key()), Message::Request(request))
        .unwrap();
    let output = engine.on_message(0, verified);
    assert_eq!(output.rejections, [], "{output:?}");
    output
        .messages()
        .filter_map(|o| match o {
            Outgoing::Broadcast(Message::Propose(p)) => Some(p.body.batch.requests.len()),
            _ => None,
        })
        .collect()
}

#[test]
fn an_idle_bft_leader_proposes_at_once_and_a_busy_one_waits_for_a_worthwhile_batch() {
    let (mut leader, verifier, client) = setup(Mode::Bft, 4);
    let mut seq = 0;
    let mut next = |leader: &mut Engine| {
        seq += 1;
        request(leader, &verifier, &client, seq)
    };
    // Nothing in flight: the first request goes out alone, at once.
    assert_eq!(next(&mut leader), vec![1]);
    // One instance in flight: a second one needs STEP requests.
    for _ in 1..STEP {
        assert!(next(&mut leader).is_empty());
    }
    assert_eq!(next(&mut leader), vec![STEP]);
    // Two in flight: a third needs 2 x STEP.
    for _ in 1..2 * STEP {
        assert!(next(&mut leader).is_empty());
    }
    assert_eq!(next(&mut leader), vec![2 * STEP]);
    assert_eq!(leader.stats().proposals_sent, 3);
}

#[test]
fn a_cft_leader_proposes_at_once_up_to_the_window() {
    let (mut leader, verifier, client) = setup(Mode::Cft, 3);
    for seq in 1..=4 {
        assert_eq!(request(&mut leader, &verifier, &client, seq), vec![1]);
    }
    // The window of 4 is full.
    assert!(request(&mut leader, &verifier, &client, 5).is_empty());
}
