//! Authenticate by channel, verify once (docs/design.md §5, issue 13): a client request that
//! arrives on its own client's connection enters the pool without a signature check; its
//! signature is verified where it is relayed (the leader before its PROPOSE, a follower before
//! a Forward or a STOP), and a request met inside a replica's message is verified unless a
//! byte-identical copy came directly. Exact outputs, as in `engine.rs`.

mod common;

use common::*;
use smr_core::engine::{Output, PersistRecord, TimerKind};
use smr_core::message::{Batch, Cid, Decision, Message, Regency, VoteKind};
use smr_core::{Peer, Rejection, RequestAuth, VerifiedRequests};
use smr_crypto::VerifyError;

/// The rejection of the fixture client's badly signed request.
fn bad_client_signature(c: &Cluster) -> Rejection {
    Rejection::BadClientSignature {
        client: c.client.public_key(),
        reason: VerifyError::BadSignature,
    }
}

// ----- the verifier -------------------------------------------------------------------------

#[test]
fn a_request_on_its_clients_connection_is_authenticated_by_the_channel_not_its_signature() {
    let c = bft();
    let bad = Message::Request(c.badly_signed_request(1));
    let by_signature = c
        .verifier
        .verify_run(
            vec![(c.client_peer(), bad.clone())],
            None,
            RequestAuth::Signature,
        )
        .pop()
        .unwrap();
    assert!(
        matches!(by_signature, Err(Rejection::BadSignature { index: 0, .. })),
        "{by_signature:?}"
    );
    let by_channel = c
        .verifier
        .verify_run(vec![(c.client_peer(), bad)], None, RequestAuth::Channel)
        .pop()
        .unwrap()
        .expect("the channel authenticates it");
    assert!(
        !by_channel.request_signatures_checked(),
        "the engine must check it before relaying it"
    );
    // The channel proves the sender, not a missing signature nor another client's name.
    let mut unsigned = c.request(2);
    unsigned.signature = None;
    let refused = c
        .verifier
        .verify_run(
            vec![(c.client_peer(), Message::Request(unsigned))],
            None,
            RequestAuth::Channel,
        )
        .pop()
        .unwrap()
        .unwrap_err();
    assert_eq!(refused, Rejection::MissingSignature);
    let impostor = Peer::Client(key(201).public_key());
    let refused = c
        .verifier
        .verify_run(
            vec![(impostor, Message::Request(c.request(3)))],
            None,
            RequestAuth::Channel,
        )
        .pop()
        .unwrap()
        .unwrap_err();
    assert_eq!(refused, Rejection::Impersonation);
}

#[test]
fn a_proposed_request_is_verified_unless_the_same_bytes_came_directly() {
    let c = bft();
    let bad = c.badly_signed_request(1);
    let propose = Message::Propose(c.propose(
        0,
        Cid(1),
        Regency(0),
        Batch {
            requests: vec![bad.clone()],
        },
    ));
    // A follower without the direct copy verifies the request inside the PROPOSE.
    let without = VerifiedRequests::new(16);
    let verdict = c
        .verifier
        .verify_run(
            vec![(Peer::Replica(0), propose.clone())],
            Some(&without),
            RequestAuth::Channel,
        )
        .pop()
        .unwrap();
    assert!(
        matches!(verdict, Err(Rejection::BadSignature { index: 1, .. })),
        "{verdict:?}"
    );
    // One that got these exact bytes from the client takes it as the client's (a correct
    // leader never proposes it: it verifies first), checking only the PROPOSE's signature;
    // also when the PROPOSE comes first in the run (the driver puts replica frames first).
    let with = VerifiedRequests::new(16);
    let run = c.verifier.verify_run(
        vec![
            (Peer::Replica(0), propose),
            (c.client_peer(), Message::Request(bad)),
        ],
        Some(&with),
        RequestAuth::Channel,
    );
    assert!(run
        .iter()
        .all(|v| v.as_ref().is_ok_and(|v| !v.request_signatures_checked())));
    assert_eq!(with.hits(), 1);
    // A good copy in the PROPOSE with another signature than the direct one is verified.
    let good = c.request(1);
    let propose = Message::Propose(c.propose(
        0,
        Cid(1),
        Regency(0),
        Batch {
            requests: vec![good],
        },
    ));
    let verdict = c
        .verifier
        .verify_run(
            vec![(Peer::Replica(0), propose)],
            Some(&with),
            RequestAuth::Channel,
        )
        .pop()
        .unwrap()
        .expect("verified");
    assert!(verdict.request_signatures_checked());
    assert_eq!(with.hits(), 1, "no cache hit: other signature bytes");
}

/// A decision's Q ACCEPTs vouch for its batch: at least one correct replica authenticated each
/// request before voting. Were the requests checked again, a replica that did not get a
/// client's direct copies could never learn a decision that replicas with those copies made.
#[test]
fn a_certified_batch_needs_no_request_signature_but_a_proposal_does() {
    let c = bft();
    let batch = Batch {
        requests: vec![c.badly_signed_request(1)],
    };
    let decision = Decision {
        cid: Cid(1),
        batch: batch.clone(),
        certificate: c.votes(
            VoteKind::Accept,
            &[0, 1, 2],
            Cid(1),
            Regency(0),
            batch.digest(),
        ),
    };
    c.verifier
        .verify_inbound(Peer::Replica(1), Message::Decisions(vec![decision]))
        .expect("certified");
    let stopdata = c.stopdata(
        1,
        Regency(1),
        None,
        vec![c.prepared(Cid(1), Regency(0), batch.clone())],
    );
    c.verifier
        .verify_inbound(Peer::Replica(1), Message::StopData(stopdata))
        .expect("prepared with Q WRITEs");
    let propose = c.propose(0, Cid(1), Regency(0), batch);
    let err = c.verifier_rejects(Peer::Replica(0), Message::Propose(propose));
    assert!(matches!(err, Rejection::BadSignature { .. }), "{err:?}");
}

// ----- the leader ---------------------------------------------------------------------------

/// The leader verifies a request authenticated by its channel before proposing it: a badly
/// signed one is dropped and counted against its client, never proposed (every follower
/// without the client's direct copy would refuse the PROPOSE, and a correct leader would be
/// replaced).
#[test]
fn the_leader_verifies_a_channel_authenticated_request_before_proposing_it() {
    let c = bft();
    let cache = VerifiedRequests::new(16);
    let mut leader = c.channel_engine(0);
    let bad = Message::Request(c.badly_signed_request(1));
    let out = c.deliver_by_channel(&mut leader, 0, c.client_peer(), bad, &cache);
    assert_eq!(out, only_rejected(bad_client_signature(&c)));
    assert_eq!(leader.pending_requests(), 0);
    assert_eq!(timers(&leader), vec![], "nothing pending, no request timer");
    assert_eq!(
        leader.stats().rejections.get("bad_client_signature"),
        Some(&1)
    );
    // A good request is verified once and proposed.
    let good = c.request(2);
    let out = c.deliver_by_channel(
        &mut leader,
        5,
        c.client_peer(),
        Message::Request(good.clone()),
        &cache,
    );
    let batch = Batch {
        requests: vec![good],
    };
    let propose = c.propose(0, Cid(1), Regency(0), batch.clone());
    let write = c.vote(VoteKind::Write, 0, Cid(1), Regency(0), batch.digest());
    assert_eq!(
        out,
        Output {
            persist: vec![PersistRecord::Vote(write.body)],
            send_after_persist: vec![
                broadcast(Message::Propose(propose)),
                broadcast(Message::Write(write)),
            ],
            ..Output::default()
        }
    );
    assert_eq!(leader.stats().client_signatures_verified, 2);
}

// ----- followers ----------------------------------------------------------------------------

/// Replica 1 (a follower) holding, from the client's own connection, a badly signed request 1
/// and a good request 2, both unchecked.
fn follower_holding_a_bad_and_a_good_request(c: &Cluster) -> smr_core::Engine {
    let cache = VerifiedRequests::new(16);
    let mut follower = c.channel_engine(1);
    for request in [c.badly_signed_request(1), c.request(2)] {
        let out = c.deliver_by_channel(
            &mut follower,
            0,
            c.client_peer(),
            Message::Request(request),
            &cache,
        );
        assert_eq!(out, Output::default(), "pooled, unchecked");
    }
    assert_eq!(follower.stats().client_signatures_verified, 0);
    follower
}

/// At its request timeout a follower forwards only requests whose signature it verified: a
/// client cannot make a correct follower send its leader a bad signature (which the leader
/// would count against the follower).
#[test]
fn a_follower_verifies_requests_before_forwarding_them_and_drops_a_bad_one() {
    let c = bft();
    let mut follower = follower_holding_a_bad_and_a_good_request(&c);
    // The leader is alive (a leader silent since 0 would also get a STOP at 1000).
    let heartbeat = Message::Heartbeat {
        regency: Regency(0),
        last_decided: Cid(0),
    };
    let out = c.deliver(&mut follower, 500, Peer::Replica(0), heartbeat);
    assert_eq!(out, Output::default());
    let out = follower.on_timeout(1000);
    assert_eq!(
        out,
        Output {
            send_now: vec![
                send(0, Message::Forward(vec![c.request(2)])),
                // The requests may have been decided unnoticed: ask a peer.
                send(2, Message::DecisionQuery { from_cid: Cid(1) }),
            ],
            rejections: vec![bad_client_signature(&c)],
            ..Output::default()
        }
    );
    assert_eq!(follower.pending_requests(), 1);
    // A failed batch of 2, then the good one after the bad one on its own: each signature
    // submitted is counted (review R2 of stop 26: the counter said 2 for that work).
    assert_eq!(follower.stats().client_signatures_verified, 3);
}

/// A request whose signature fails never brings a STOP: it leaves the pool at the first
/// timeout, so there is no second one.
#[test]
fn a_badly_signed_request_alone_never_makes_a_follower_suspect_the_leader() {
    let c = bft();
    let cache = VerifiedRequests::new(16);
    let mut follower = c.channel_engine(1);
    let bad = Message::Request(c.badly_signed_request(1));
    let out = c.deliver_by_channel(&mut follower, 0, c.client_peer(), bad, &cache);
    assert_eq!(out, Output::default());
    assert_eq!(timers(&follower), vec![(TimerKind::Request, 1000)]);
    let out = follower.on_timeout(1000);
    assert_eq!(out, only_rejected(bad_client_signature(&c)));
    assert_eq!(
        timers(&follower),
        vec![],
        "nothing pending: no second timeout"
    );
    assert_eq!(follower.on_timeout(2000), Output::default());
    assert_eq!(follower.stats().stops_sent, 0);
}

/// A STOP carries the oldest pending requests to the next leader: only verified ones.
#[test]
fn a_stop_carries_only_requests_whose_signature_verified() {
    let c = bft();
    let mut follower = follower_holding_a_bad_and_a_good_request(&c);
    // f+1 = 2 STOPs for regency 1 make it join the leader change.
    let mut outs = Vec::new();
    for r in [2, 3] {
        outs.push(c.deliver_by_channel(
            &mut follower,
            10,
            Peer::Replica(r),
            Message::Stop(c.stop(r, Regency(1), Regency(0))),
            &VerifiedRequests::new(16),
        ));
    }
    assert_eq!(outs[0], Output::default());
    let mut stop = c.stop(1, Regency(1), Regency(0));
    stop.body.pending = vec![c.request(2)];
    let stop = smr_core::message::Signed::new(stop.body, c.signer(1));
    // Its own STOP is the third (2f+1): it enters regency 1, which it leads, durably.
    assert_eq!(
        outs[1],
        Output {
            send_now: vec![broadcast(Message::Stop(stop))],
            persist: vec![PersistRecord::Regency(Regency(1))],
            rejections: vec![bad_client_signature(&c)],
            ..Output::default()
        }
    );
}
