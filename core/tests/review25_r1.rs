//! Review R1 of session 25 (issue 13): attacks on the verified-request cache's per-client
//! shares, the reader's inline checks, the hashed client table and pool, and the request shape
//! check. Each test names the code it fails on.

mod common;

use common::*;
use smr_core::message::{Batch, Cid, Message, Regency, Request, RequestBody, RequestKind};
use smr_core::{ClientPolicy, Peer, RequestAuth, VerifiedRequests};
use smr_crypto::sim::SimKey;

/// Request `seq` of `client`'s session 1, signed by it.
fn request_of(client: &SimKey, seq: u64) -> Request {
    let body = RequestBody {
        client: client.public_key(),
        session: 1,
        seq,
        kind: RequestKind::Ordered,
        op: Vec::new(),
    };
    Request::new(body, Some(client as &dyn smr_crypto::Signer))
}

/// Finding 1 (liveness/cost, `ClientPolicy::Any`). The per-client shares of `VerifiedRequests`
/// evict from the client holding the most entries and never look at age, so entries of keys
/// that inserted once and went quiet are never evicted while a busy client holds more: a
/// Byzantine client that sends one (unsigned-checked, channel-authenticated) request from each
/// of `capacity - 1` keys once, then disconnects, holds the cache for good. Every correct
/// client then keeps only its latest entry (its second insert makes it the largest holder, so
/// it evicts its own), and of a window of requests in flight, every follower verifies all but
/// the last again inside the PROPOSE: back to about n verifications per operation, at no
/// further cost to the attacker (the old FIFO cache at least forgot the flood after
/// `capacity` insertions). Fails on 5b0a24b: 1 hit of 4.
#[test]
fn keys_that_inserted_once_do_not_hold_the_verified_cache_for_good() {
    let c = bft();
    let mut verifier = c.verifier.clone();
    verifier.clients = std::sync::Arc::new(ClientPolicy::Any);
    let cache = VerifiedRequests::new(16);
    let direct = |from: Peer, m: Message| {
        verifier
            .verify_run(vec![(from, m)], Some(&cache), RequestAuth::Channel)
            .pop()
            .unwrap()
            .expect("direct request");
    };
    // The one-shot flood: one request from each of 15 keys, never again.
    for k in 0..15u8 {
        let attacker = key(100 + k);
        direct(
            Peer::Client(attacker.public_key()),
            Message::Request(request_of(&attacker, 1)),
        );
    }
    assert_eq!(cache.len(), 15);
    // Long after (four caches' worth of the correct client's traffic, all executed), the
    // client has 4 requests in flight, each sent to every replica, then the leader's PROPOSE.
    for seq in 1..=64 {
        direct(c.client_peer(), Message::Request(c.request(seq)));
    }
    for seq in 65..=68 {
        direct(c.client_peer(), Message::Request(c.request(seq)));
    }
    let propose = Message::Propose(c.propose(
        0,
        Cid(1),
        Regency(0),
        Batch {
            requests: (65..=68).map(|seq| c.request(seq)).collect(),
        },
    ));
    let hits = cache.hits();
    verifier
        .verify_run(
            vec![(Peer::Replica(0), propose)],
            Some(&cache),
            RequestAuth::Channel,
        )
        .pop()
        .unwrap()
        .expect("a correct leader's PROPOSE");
    assert_eq!(
        cache.hits() - hits,
        4,
        "keys that inserted once hold the cache for good: the correct client's direct copies \
         were evicted, and the follower verified them again in the PROPOSE"
    );
}
