//! Findings of an adversarial review of sessions opened by ordered open requests (review 24).
//! Each test failed on the code reviewed (2020dac) and passes since its fix; each doc comment
//! states the finding as found, and the replay test the bounded guarantee that resolves it.
//! (The fourth finding, answers to a read sent under the routing tag lost once the session is
//! announced, is `transport/src/tests.rs::a_session_announced_mid_stream_takes_over_the_connections_routing`.)
//! Engine-level with the shared fixture (core/tests/common/) or at the client table.

mod common;

use smr_core::clients::{
    Admission, ClientLimits, ClientTable, RequestStatus, SESSION_NUMBER_LIMIT,
};
use smr_core::message::{Message, Reply, ReplyStatus, Request, RequestId, RequestKind};
use smr_core::{Engine, Limits};
use smr_crypto::sim::SimKey;
use smr_modes::Mode;

use common::{cluster, Cluster};

fn decide(c: &Cluster, engine: &mut Engine, cid: u64, requests: Vec<Request>) -> Vec<Reply> {
    c.decide_and_execute(engine, cid, requests)
}

/// FINDING (low-medium liveness) as the reviewer found it: once an open's session is evicted,
/// a copy of that open is new again, and a Byzantine replica can have it ordered (a Forward is
/// enough). With the key at `max_sessions_per_client` and every session executed, the replay
/// displaced the key's least recently executed session: here t2's, though it executed.
/// Resolution (design §3.7 "Bounds and eviction"): that is the session a new process of the
/// key would displace, and no more: the replay's session is empty, so every further replay (of
/// any old open of the key) displaces only that empty session, never another that executed;
/// the displaced client is told `SessionExpired` at its next request and opens a new session.
/// Here: one replay costs t2 its session; a hundred more cost t3 nothing.
#[test]
fn replayed_opens_displace_at_most_the_session_a_new_process_would() {
    let mut table = ClientTable::bounded(ClientLimits {
        max_sessions_per_client: 2,
        ..ClientLimits::default()
    });
    let key = SimKey::from_seed([3; 32]).public_key();
    let tag = |n: u64| SESSION_NUMBER_LIMIT | n;
    let request = |session: u64, seq: u64| RequestId {
        client: key,
        session,
        seq,
    };
    let mut cid = 0;
    let mut next_cid = || {
        cid += 1;
        smr_core::message::Cid(cid)
    };
    let mut run = |table: &mut ClientTable, t: u64| {
        let session = table.open_session(key, tag(t), next_cid()).unwrap();
        assert_eq!(
            table.mark_executing(&request(session, 1), next_cid()),
            Admission::Execute { floor: None }
        );
        session
    };
    let s1 = run(&mut table, 1);
    let s2 = run(&mut table, 2);
    let s3 = run(&mut table, 3);
    assert_eq!(table.status(&request(s1, 2)), RequestStatus::SessionExpired);
    // A Byzantine replica replays t1's signed open: no record, so it is new and executes,
    // displacing s2, the key's least recently executed session (as t4 would).
    let replay = |t: u64| RequestId {
        client: key,
        session: smr_core::message::OPEN_SESSION,
        seq: tag(t),
    };
    assert_eq!(table.status(&replay(1)), RequestStatus::New);
    table
        .open_session(key, tag(1), smr_core::message::Cid(100))
        .unwrap();
    assert_eq!(table.status(&request(s2, 2)), RequestStatus::SessionExpired);
    // Every further replay, of any old open, takes only the empty session a replay opened.
    for round in 0..100u64 {
        let t = [1, 2][(round % 2) as usize];
        if table.status(&replay(t)) == RequestStatus::New {
            table
                .open_session(key, tag(t), smr_core::message::Cid(101 + round))
                .unwrap();
        }
        assert_eq!(
            table.status(&request(s3, 2)),
            RequestStatus::New,
            "replay {round} displaced session {s3}, which executed"
        );
    }
}

/// FINDING (medium liveness, embedder): the request pool bounds pending requests per client
/// *key* (`RequestPool::new(max_pending_per_client, ..)`, `by_client` keyed by `ClientId`),
/// while each *session* may have `window` = `max_pending_per_client` requests in flight
/// (design §3.7 "Why exactly-once holds per session"; `ClientEngine`'s `max_outstanding`).
/// Processes sharing a key (the README's shared `client.key`, demo/tests/sessions.rs) share
/// one window's worth of pool: once one process has a window pending, every replica refuses
/// (`client_pool_full`, dropped, no reply) another process's requests, and even its open
/// request, so the newcomer cannot open its session until the first one drains, and under
/// steady load waits retry timeouts. Here BFT, window 2: session 1 has seqs 1, 2 pending at a
/// follower; a second process's open is refused. Expected: per-session pending requests are
/// bounded per session (with a per-key bound of `max_sessions_per_client` windows, or a
/// separate small quota for opens), so one process of a key cannot starve another's open.
#[test]
fn a_full_window_of_one_session_does_not_refuse_another_process_open() {
    let c = cluster(
        Mode::Bft,
        4,
        1,
        Limits {
            max_pending_per_client: 2,
            ..Limits::default()
        },
    );
    let mut engine = c.engine(1);
    engine.start(0);
    // The first process's session 1 is open (cid 1), and it has a window of requests pending.
    decide(&c, &mut engine, 1, vec![c.open_request()]);
    for seq in [1, 2] {
        c.deliver_ok(
            &mut engine,
            1,
            c.client_peer(),
            Message::Request(c.request(seq)),
        );
    }
    // A second process of the key opens its session.
    let second_open = Request::new(
        smr_core::message::RequestBody {
            client: c.client.public_key(),
            session: smr_core::message::OPEN_SESSION,
            seq: SESSION_NUMBER_LIMIT | 0xbeef,
            kind: RequestKind::Ordered,
            op: Vec::new(),
        },
        Some(&c.client as &dyn smr_crypto::Signer),
    );
    let out = c.deliver(
        &mut engine,
        2,
        c.client_peer(),
        Message::Request(second_open),
    );
    assert_eq!(
        out.rejections,
        [],
        "another process's open was refused because one session of the key has a window pending"
    );
}

/// FINDING (HIGH, BFT safety: a correct client's write executes twice). The verified-request
/// cache (`verify.rs` `request_key`, "an unambiguous encoding of the body") hashes the client,
/// seq, kind, op and signature but NOT `body.session`, which sessions added to the signed
/// body. So a request whose session field a Byzantine leader rewrote, keeping the signature,
/// hits the cache entry of the genuine request (cached when it arrived on its client's channel,
/// or verified in an earlier PROPOSE), and its signature is never checked: correct followers
/// vote for it. (Within one `verify_run` the `seen` set dedups by the same key, so a PROPOSE
/// holding both the genuine request and the rewritten one is checked once as well.) Design
/// §3.7: "the session is in the signed RequestBody, so a Byzantine leader cannot move a request
/// into another session" does not hold. With it a Byzantine leader can (a) turn any cached
/// request (K, s, seq) into an *open* (session 0, tag = seq) and so open sessions of key K at
/// will, and (b) move the cached write (K, s, seq, op) into such a fresh session s', where seq
/// is new: every correct replica executes `op` a second time. Here replica 1 (correct,
/// driver-style: channel auth + shared cache) got the client's request (session 1, seq 1)
/// directly; the leader's PROPOSE carries that request's body and signature with the session
/// set to 0 (an open) and to 2. Expected: the PROPOSE is refused (bad signature) and no vote is
/// cast. Fix: hash `body.session` in `request_key` (better: hash `Request::signing_bytes_of`, so
/// no future field can be left out), and add a test that every body field changes the key.
#[test]
fn a_leader_cannot_move_a_cached_request_into_another_session() {
    use smr_core::message::{Batch, Cid, Regency, RequestBody, OPEN_SESSION};
    use smr_core::{Outgoing, Peer, RequestAuth};
    let c = common::bft();
    let mut engine = c.channel_engine(1);
    engine.start(0);
    let cache = smr_core::VerifiedRequests::new(1024);
    // Session 1 of the fixture client is open (cid 1).
    decide(&c, &mut engine, 1, vec![c.open_request()]);
    // The client's write arrives on its own connection (cached as authenticated) and executes
    // at cid 2.
    let genuine = c.request(1);
    let out = c.deliver_by_channel(
        &mut engine,
        1,
        c.client_peer(),
        Message::Request(genuine.clone()),
        &cache,
    );
    assert_eq!(out.rejections, []);
    let replies = decide(&c, &mut engine, 2, vec![genuine.clone()]);
    assert_eq!(replies.len(), 1);
    // The Byzantine leader's PROPOSE for cid 3: the write's body and signature, its session
    // set to 0 (an open, tag = seq 1: it opens session 2) and then to 2.
    let moved = |session: u64| Request {
        body: RequestBody {
            session,
            ..genuine.body.clone()
        },
        signature: genuine.signature,
    };
    // Moved into an open, the copy carries an operation, which no open may (refused for its
    // shape, whatever the signature); moved into session 2, only the signature can tell.
    for (batch, expected) in [
        (
            Batch {
                requests: vec![moved(OPEN_SESSION)],
            },
            "malformed",
        ),
        (
            Batch {
                requests: vec![moved(2)],
            },
            "bad signature",
        ),
    ] {
        let propose = c.propose(0, Cid(3), Regency(0), batch.clone());
        // Checked on its own (no cache), the PROPOSE is refused.
        let alone = c
            .verifier
            .verify_inbound(Peer::Replica(0), Message::Propose(propose.clone()));
        match expected {
            "malformed" => assert_eq!(
                alone.err(),
                Some(smr_core::Rejection::Malformed(
                    "an open request carries no operation".into()
                ))
            ),
            _ => assert!(matches!(
                alone,
                Err(smr_core::Rejection::BadSignature { .. })
            )),
        }
        let verdict = c
            .verifier
            .verify_run(
                vec![(Peer::Replica(0), Message::Propose(propose))],
                Some(&cache),
                RequestAuth::Channel,
            )
            .pop()
            .expect("one verdict");
        let Ok(verified) = verdict else {
            continue; // Refused: the rewritten requests were checked.
        };
        let out = engine.on_message(3, verified);
        let voted = out.messages().any(|o| {
            matches!(
                o,
                Outgoing::Broadcast(Message::Write(_) | Message::Accept(_))
            )
        });
        // Correct replicas 2 and 3 vote alike (same cache hit), so the batch is decided: the
        // write executes again, in another session.
        let again: Vec<(u64, u64)> = if voted {
            decide(&c, &mut engine, 3, batch.requests.clone())
                .into_iter()
                .filter(|r| r.status == ReplyStatus::Executed && r.result == genuine.body.op)
                .map(|r| (r.session, r.seq))
                .collect()
        } else {
            Vec::new()
        };
        assert!(
            !voted,
            "a correct replica voted for a PROPOSE whose requests carry the signature of \
             another session's body; decided, the client's write (session 1, seq 1) executed \
             again as {again:?}"
        );
    }
}

/// The same finding at the verifier, with signatures checked (`RequestAuth::Signature`, the
/// cache entry marked signature-verified): a copy whose only change is the session is a
/// cache hit, and a PROPOSE carrying it passes with `request_signatures_checked` true. (In
/// a Forward or a STOP's pending list from a Byzantine replica, the same copy is pooled by a
/// correct leader as checked and proposed; followers without the cache entry refuse that
/// PROPOSE, so a Byzantine follower can also get a correct leader replaced.)
#[test]
fn a_copy_with_another_session_is_still_checked() {
    let c = common::bft();
    let cache = smr_core::VerifiedRequests::new(100);
    let genuine = c.request(1);
    assert!(c
        .verifier
        .verify_many(
            vec![(c.client_peer(), Message::Request(genuine.clone()))],
            Some(&cache)
        )
        .pop()
        .unwrap()
        .is_ok());
    let moved = Request {
        body: smr_core::message::RequestBody {
            session: 7,
            ..genuine.body.clone()
        },
        signature: genuine.signature,
    };
    let propose = c.propose(
        0,
        smr_core::message::Cid(1),
        smr_core::message::Regency(0),
        smr_core::message::Batch {
            requests: vec![moved],
        },
    );
    let verdict = c
        .verifier
        .verify_many(
            vec![(smr_core::Peer::Replica(0), Message::Propose(propose))],
            Some(&cache),
        )
        .pop()
        .unwrap();
    assert!(
        matches!(verdict, Err(smr_core::Rejection::BadSignature { .. })),
        "a request moved into another session passed on its genuine copy's cache entry: \
         {verdict:?}"
    );
}
