//! Review of issue 13 (authenticate by channel, verify once): attacks on request
//! authentication. Each test fails on the code it was written against; see the report.

mod common;

use common::*;
use smr_core::message::{Batch, Cid, Message, Regency, Request};
use smr_core::{Peer, Rejection, RequestAuth, VerifiedRequests};

/// The fixture client's request `seq` of session `session`, re-labelled into session
/// `into` with its signature kept: bytes the client never signed.
fn relabelled(c: &Cluster, session: u64, seq: u64, into: u64) -> Request {
    let mut forged = c.request_in(session, seq);
    forged.body.session = into;
    forged
}

/// The cache key of `VerifiedRequests` (verify.rs `request_key`) hashes the client, seq,
/// kind, op and signature, but not the session, which the signature covers. A request that
/// the client sent directly in session 1 therefore makes the same request re-labelled into
/// session 2 (same signature, which does not verify for it) pass as "the same bytes came
/// directly": a Byzantine leader alone gets every correct follower to WRITE (and so decide
/// and execute) an operation in a session whose process never sent it. Sessions of one key
/// are distinct processes (design §3.7), so this breaks validity and exactly-once: the real
/// (session 2, seq 5) request of that process is then a duplicate and is answered with the
/// forged operation's cached result.
#[test]
fn a_request_relabelled_into_another_session_is_not_taken_for_the_direct_copy() {
    let c = bft();
    let forged = relabelled(&c, 1, 5, 2);
    let propose = Message::Propose(c.propose(
        0,
        Cid(1),
        Regency(0),
        Batch {
            requests: vec![forged.clone()],
        },
    ));
    // Without the direct copy, the forgery is refused: its signature is not for it.
    let err = c.verifier_rejects(Peer::Replica(0), propose.clone());
    assert!(matches!(err, Rejection::BadSignature { .. }), "{err:?}");
    // A follower that got the client's genuine session-1 request on the client's connection.
    let cache = VerifiedRequests::new(16);
    let mut follower = c.channel_engine(1);
    c.deliver_by_channel(
        &mut follower,
        0,
        c.client_peer(),
        Message::Request(c.request_in(1, 5)),
        &cache,
    );
    let verdict = c
        .verifier
        .verify_run(
            vec![(Peer::Replica(0), propose)],
            Some(&cache),
            RequestAuth::Channel,
        )
        .pop()
        .unwrap();
    let consequence = match &verdict {
        Ok(v) => format!("{:?}", follower.on_message(1, v.clone())),
        Err(_) => String::new(),
    };
    assert!(
        matches!(verdict, Err(Rejection::BadSignature { .. })),
        "a Byzantine leader's PROPOSE of a request the client never signed passed: \
         {verdict:?}; the follower then did {consequence}"
    );
}

/// The same hole through a `true` (signature-verified) cache entry, with a correct leader: the
/// genuine session-1 request reached the leader first in a Forward (verified, cached as
/// verified); a Byzantine follower then forwards it re-labelled into session 2. The leader's
/// verifier takes the forgery as verified, so it enters the pool marked `signature_checked`
/// and `authenticate_pending` never looks at it: a correct leader proposes a badly signed
/// request (and every follower that had the genuine copy directly accepts it, the others
/// refuse the PROPOSE: a split, then a correct leader replaced).
#[test]
fn a_forwarded_request_relabelled_into_another_session_is_verified_by_the_leader() {
    let c = bft();
    let cache = VerifiedRequests::new(16);
    let genuine = Message::Forward(vec![c.request_in(1, 5)]);
    let ok = c
        .verifier
        .verify_run(
            vec![(Peer::Replica(2), genuine)],
            Some(&cache),
            RequestAuth::Channel,
        )
        .pop()
        .unwrap()
        .expect("genuine");
    assert!(ok.request_signatures_checked());
    let forged = Message::Forward(vec![relabelled(&c, 1, 5, 2)]);
    let verdict = c
        .verifier
        .verify_run(
            vec![(Peer::Replica(3), forged)],
            Some(&cache),
            RequestAuth::Channel,
        )
        .pop()
        .unwrap();
    assert!(
        matches!(verdict, Err(Rejection::BadSignature { .. })),
        "a forwarded forgery passed as signature-checked: {:?}",
        verdict.map(|v| v.request_signatures_checked())
    );
}

/// CPU on the leader's engine thread, paid for by a Byzantine replica and blamed on a client.
/// A client (colluding) sends the leader one badly signed request on its own connection: the
/// verify worker caches it as channel-authenticated, the engine verifies it, drops it and counts
/// it against the client. The cache entry stays. A Byzantine follower can now forward those
/// same bytes to the leader again and again: each Forward hits the channel-only entry, passes
/// the verify worker unchecked, and makes the single engine thread verify the signature again
/// (twice, in fact: a failed batch of one, then the item alone), each time counted against the
/// client, never against the replica that relayed the bad signature (without the cache, the
/// worker would refuse the Forward off the engine thread and blame replica 3). Up to
/// `max_batch_requests` such requests per Forward, at network speed: enough to starve the
/// engine thread of a correct leader until its followers' request timers replace it.
#[test]
fn a_replica_cannot_make_the_leader_reverify_a_bad_signature_the_client_sent_directly() {
    let c = bft();
    let cache = VerifiedRequests::new(16);
    let mut leader = c.channel_engine(0);
    let bad = c.badly_signed_request(1);
    c.deliver_by_channel(
        &mut leader,
        0,
        c.client_peer(),
        Message::Request(bad.clone()),
        &cache,
    );
    assert_eq!(leader.stats().client_signatures_verified, 1);
    let mut verdicts = Vec::new();
    for t in 1..=5 {
        let verdict = c
            .verifier
            .verify_run(
                vec![(Peer::Replica(3), Message::Forward(vec![bad.clone()]))],
                Some(&cache),
                RequestAuth::Channel,
            )
            .pop()
            .unwrap();
        if let Ok(v) = &verdict {
            leader.on_message(t, v.clone());
        }
        verdicts.push(verdict.map(|v| v.request_signatures_checked()));
    }
    assert_eq!(
        leader.stats().client_signatures_verified,
        1,
        "the engine thread re-verified a known-bad signature relayed by a replica; verifier \
         verdicts of the Forwards: {verdicts:?}; rejections: {:?}",
        leader.stats().rejections
    );
    assert!(
        verdicts
            .iter()
            .all(|v| matches!(v, Err(Rejection::BadSignature { .. }))),
        "the relaying replica, not the client, answers for a bad signature: {verdicts:?}"
    );
}

/// The leader's engine thread pays twice for each badly signed request a client sends it
/// directly: `authenticate_pending` batch-verifies the cut (a batch of one is a single
/// verification in both verifiers), and when that fails verifies every item again one by one,
/// though the batch already named the first failing index. A Byzantine client sending only bad
/// signatures to the leader (cheap for it: they leave the pool at once, so its per-client pool
/// bound never throttles it, and no penalty follows `BadClientSignature`) thus buys two
/// verifications per request on the single engine thread, where before issue 13 they cost one,
/// on the verify workers.
#[test]
fn one_bad_direct_request_costs_the_leaders_engine_thread_one_verification() {
    let c = bft();
    let counting = c.counting_verifier();
    let mut leader = c.engine(0);
    leader.set_request_verifier(counting.clone());
    let cache = VerifiedRequests::new(16);
    c.deliver_by_channel(
        &mut leader,
        0,
        c.client_peer(),
        Message::Request(c.badly_signed_request(1)),
        &cache,
    );
    assert_eq!(leader.stats().client_signatures_verified, 1);
    assert_eq!(
        counting.checks(),
        1,
        "signatures the engine thread checked for one bad request"
    );
}

/// Review R2 of stop 26: `authenticate_pending` batch-verified what followed each bad
/// signature again, so a run of n badly signed requests cost batches of n, n - 1, ..., 1
/// (n(n+1)/2 signatures) on the engine thread, while `client_signatures_verified` counted n.
/// A Byzantine client's 64 bad requests sent directly to a follower (one session's window)
/// cost 2,080 checks at the request timeout, and the pool's timed-out requests are not capped
/// (up to `max_pending_total` of many keys). Now a failed batch is followed by one check per
/// remaining request (at most 2n), and the counter says what was checked. Also: with a
/// verifier whose failed batch checks its items again up to the first bad one to name it
/// (ed25519's), the counter missed those checks (2n - 1 counted of 2n here); now it counts them.
#[test]
fn a_run_of_bad_signatures_costs_the_engine_thread_linear_work_and_is_counted() {
    let c = bft();
    let counting = c.counting_verifier();
    let mut follower = c.channel_engine(1);
    follower.set_request_verifier(counting.clone());
    let cache = VerifiedRequests::new(128);
    const BAD: u64 = 64;
    for seq in 1..=BAD {
        let bad = Message::Request(c.badly_signed_request(seq));
        let out = c.deliver_by_channel(&mut follower, 0, c.client_peer(), bad, &cache);
        assert_eq!(out, smr_core::Output::default());
    }
    let out = follower.on_timeout(1000);
    let bad = Rejection::BadClientSignature {
        client: c.client.public_key(),
        reason: smr_crypto::VerifyError::BadSignature,
    };
    assert_eq!(
        out,
        smr_core::Output {
            rejections: vec![bad; BAD as usize],
            ..smr_core::Output::default()
        }
    );
    assert_eq!(follower.pending_requests(), 0);
    // One batch of 64, the first again alone (to name it, as ed25519's batch does), then the
    // 63 after it, one by one.
    assert_eq!(
        counting.checks(),
        2 * BAD,
        "signatures the engine thread checked"
    );
    assert_eq!(
        follower.stats().client_signatures_verified,
        counting.checks()
    );
}
