//! Client sessions (issue 15, item 1, and the wall-clock lockout): exactly-once is kept per
//! (key, session), sessions are bounded per key and in all with a rule that reads only the
//! decided sequence, and a request the table refuses gets a reply that says why.
//! Engine-level, with the shared fixture (core/tests/common/); every assertion is on the
//! exact output.

mod common;

use std::sync::Arc;

use smr_core::clients::SESSION_NUMBER_LIMIT;
use smr_core::engine::{Outgoing, Output, ServiceWork};
use smr_core::message::{
    Message, Regency, Reply, ReplyStatus, Request, RequestBody, RequestKind, OPEN_SESSION,
};
use smr_core::{ClientPolicy, Engine, Limits, Peer, Rejection};
use smr_crypto::sim::SimKey;
use smr_crypto::Signer;
use smr_modes::Mode;

use common::{cluster, only_sent, Cluster};

/// A window of 4 seqs, 2 sessions per key, 4 sessions in all, eviction after 3 idle cids.
fn small_table() -> Limits {
    Limits {
        max_pending_per_client: 4,
        max_clients: 4,
        max_sessions_per_client: 2,
        client_expiry_cids: 3,
        ..Limits::default()
    }
}

/// CFT, n = 3, `clients = "any"` (requests unsigned, so any key may send).
fn open_cluster(limits: Limits) -> Cluster {
    let mut c = cluster(Mode::Cft, 3, 1, limits);
    c.verifier.clients = Arc::new(ClientPolicy::Any);
    c
}

fn request(client: &dyn Signer, session: u64, seq: u64) -> Request {
    let body = RequestBody {
        client: client.public_key(),
        session,
        seq,
        kind: RequestKind::Ordered,
        op: format!("op{session}.{seq}").into_bytes(),
    };
    Request::new(body, None)
}

/// `client`'s open request with routing tag `tag` (docs/design.md §3.7, "Sessions").
fn open(client: &dyn Signer, tag: u64) -> Request {
    let body = RequestBody {
        client: client.public_key(),
        session: OPEN_SESSION,
        seq: tag,
        kind: RequestKind::Ordered,
        op: Vec::new(),
    };
    Request::new(body, None)
}

/// Replica `replica`'s answer to the open request `open`: session `session` opened, or the
/// refusal `status`.
fn opened(replica: u32, open: &Request, session: Result<u64, ReplyStatus>) -> Outgoing {
    let (status, result) = match session {
        Ok(session) => (ReplyStatus::Executed, session.to_le_bytes().to_vec()),
        Err(refusal) => (refusal, Vec::new()),
    };
    Outgoing::Send {
        to: Peer::Client(open.body.client),
        message: Message::Reply(Reply {
            replica,
            client: open.body.client,
            session: OPEN_SESSION,
            seq: open.body.seq,
            status,
            regency: Regency(0),
            result,
        }),
    }
}

const TAG: u64 = SESSION_NUMBER_LIMIT | 1;

/// The service's result: the operation, so that two sessions' results differ.
fn result_of(request: &Request) -> Vec<u8> {
    request.body.op.clone()
}

/// Replica `replica`'s reply to `request` with `status` (the result only when executed).
fn reply(replica: u32, request: &Request, status: ReplyStatus) -> Outgoing {
    let result = if status == ReplyStatus::Executed {
        result_of(request)
    } else {
        Vec::new()
    };
    Outgoing::Send {
        to: Peer::Client(request.body.client),
        message: Message::Reply(Reply {
            replica,
            client: request.body.client,
            session: request.body.session,
            seq: request.body.seq,
            status,
            regency: Regency(0),
            result,
        }),
    }
}

/// Delivers the decision of `requests` at `cid` to `engine` (replica 1), from replica 0, runs
/// the service (no checkpoint is due in these tests), and returns every message sent.
fn decide(c: &Cluster, engine: &mut Engine, cid: u64, requests: Vec<Request>) -> Vec<Outgoing> {
    let out = c.deliver_decision(engine, cid, requests.clone());
    let mut sent: Vec<Outgoing> = out.messages().cloned().collect();
    for work in out.service {
        let ServiceWork::Execute { cid, items } = work else {
            panic!("unexpected service work {work:?}");
        };
        let results = items
            .iter()
            .map(|item| {
                result_of(
                    requests
                        .iter()
                        .find(|r| r.id() == item.id)
                        .expect("executes a request of the batch"),
                )
            })
            .collect();
        let done = engine.on_executed(0, cid, results);
        assert!(done.service.is_empty() && done.persist.is_empty());
        sent.extend(done.messages().cloned());
    }
    sent
}

/// Issue 15: two processes sharing a key both numbered from the wall clock and shared one
/// record; now each is a session of its own. Two sessions' seq 1 are two requests: both
/// execute, each reply names its session (the transport routes it by that), and a retry in
/// either session gets that session's cached reply, never the other's.
#[test]
fn two_sessions_of_one_key_each_execute_their_seqs_exactly_once() {
    let c = open_cluster(small_table());
    let mut engine = c.engine(1);
    engine.start(0);
    let key = SimKey::from_seed([7; 32]);
    // Two processes open their sessions (tags 1 and 2): numbers 1 and 2, in the decided order.
    let (open_a, open_b) = (open(&key, TAG), open(&key, TAG + 1));
    let (a1, b1) = (request(&key, 1, 1), request(&key, 2, 1));
    assert_eq!(
        decide(
            &c,
            &mut engine,
            1,
            vec![open_a.clone(), open_b.clone(), a1.clone(), b1.clone()]
        ),
        vec![
            opened(1, &open_a, Ok(1)),
            opened(1, &open_b, Ok(2)),
            reply(1, &a1, ReplyStatus::Executed),
            reply(1, &b1, ReplyStatus::Executed)
        ]
    );
    assert_eq!(engine.stats().executed_requests, 2);
    for retry in [&a1, &b1] {
        assert_eq!(
            c.deliver_ok(
                &mut engine,
                0,
                Peer::Client(key.public_key()),
                Message::Request(retry.clone())
            ),
            only_sent(vec![reply(1, retry, ReplyStatus::Executed)])
        );
    }
    // Decided again (a retry ordered twice): skipped, not executed a second time.
    assert_eq!(decide(&c, &mut engine, 2, vec![a1, b1]), vec![]);
    assert_eq!(engine.stats().executed_requests, 2);
    assert_eq!(engine.stats().skipped_duplicates, 2);
}

/// Issue 15, "a client whose clock was ahead is locked out": seqs came from the wall clock,
/// and a run with the clock an hour ahead left the key's highest seq an hour of microseconds
/// up, so a run with the right clock was refused as stale, in silence, for an hour. Now every
/// session numbers from 1 and no seq comes from a clock: a session that went far up (here
/// past its window, as an hour-ahead clock did) does not touch the next session of the key.
#[test]
fn a_new_session_of_a_key_starts_at_seq_1_whatever_seqs_an_earlier_one_used() {
    let c = open_cluster(small_table());
    let mut engine = c.engine(1);
    engine.start(0);
    let key = SimKey::from_seed([7; 32]);
    decide(&c, &mut engine, 1, vec![open(&key, TAG)]);
    for seq in 1..=12 {
        let ahead = request(&key, 1, seq);
        assert_eq!(
            decide(&c, &mut engine, seq + 1, vec![ahead.clone()]),
            vec![reply(1, &ahead, ReplyStatus::Executed)]
        );
    }
    let right = request(&key, 2, 1);
    assert_eq!(
        decide(
            &c,
            &mut engine,
            14,
            vec![open(&key, TAG + 1), right.clone()]
        ),
        vec![
            opened(1, &open(&key, TAG + 1), Ok(2)),
            reply(1, &right, ReplyStatus::Executed)
        ]
    );
    assert_eq!(engine.stats().executed_requests, 13);
}

/// A key's sessions beyond `max_sessions_per_client` (2) give way to its new ones, least
/// recently executed first, and the eviction is known for ever (the session's number is below
/// the counter and has no record): the evicted session's requests, whatever their seq, are
/// answered [`ReplyStatus::SessionExpired`] where they arrive and not ordered (its client hears
/// why instead of waiting), and one decided anyway (a Byzantine leader, or a replica that did
/// not know the eviction yet) is refused at execution, on every replica alike. Its old seq 1
/// too: a copy a Byzantine replica kept never executes again (review finding 1 of this
/// change).
#[test]
fn an_evicted_session_is_told_it_expired() {
    let c = open_cluster(small_table());
    let mut engine = c.engine(1);
    engine.start(0);
    let key = SimKey::from_seed([7; 32]);
    decide(&c, &mut engine, 1, vec![open(&key, TAG)]);
    for seq in 1..=5 {
        decide(&c, &mut engine, seq + 1, vec![request(&key, 1, seq)]);
    }
    decide(
        &c,
        &mut engine,
        7,
        vec![open(&key, TAG + 1), request(&key, 2, 1)],
    );
    // A third session of the key: session 1 (least recently executed) gives way.
    let third = request(&key, 3, 1);
    assert_eq!(
        decide(&c, &mut engine, 8, vec![open(&key, TAG + 2), third.clone()]),
        vec![
            opened(1, &open(&key, TAG + 2), Ok(3)),
            reply(1, &third, ReplyStatus::Executed)
        ]
    );
    assert_eq!(engine.pending_clients(), 2);
    for seq in [6, 1] {
        let retry = request(&key, 1, seq);
        assert_eq!(
            c.deliver(
                &mut engine,
                0,
                Peer::Client(key.public_key()),
                Message::Request(retry.clone())
            ),
            Output {
                send_now: vec![reply(1, &retry, ReplyStatus::SessionExpired)],
                rejections: vec![Rejection::StaleRequest],
                ..Output::default()
            }
        );
    }
    // Decided anyway: refused where it executes.
    let replay = request(&key, 1, 1);
    assert_eq!(
        decide(&c, &mut engine, 9, vec![replay.clone()]),
        vec![reply(1, &replay, ReplyStatus::SessionExpired)]
    );
    assert_eq!(engine.stats().executed_requests, 7);
    assert_eq!(engine.stats().session_expired_requests, 1);
}

/// A new session in a table full of sessions active within `client_expiry_cids` is refused at
/// execution (its open is decided, no session opened), and answered [`ReplyStatus::TableFull`]
/// instead of silence.
#[test]
fn a_new_session_refused_by_a_full_table_is_told_so() {
    let c = open_cluster(Limits {
        max_clients: 2,
        ..small_table()
    });
    let mut engine = c.engine(1);
    engine.start(0);
    for (cid, seed) in [(1, 1u8), (2, 2)] {
        let key = SimKey::from_seed([seed; 32]);
        decide(
            &c,
            &mut engine,
            cid,
            vec![open(&key, TAG), request(&key, cid, 1)],
        );
    }
    let late = open(&SimKey::from_seed([3; 32]), TAG);
    assert_eq!(
        decide(&c, &mut engine, 3, vec![late.clone()]),
        vec![opened(1, &late, Err(ReplyStatus::TableFull))]
    );
    assert_eq!(engine.stats().refused_new_clients, 1);
    assert_eq!(engine.stats().sessions_opened, 2);
    assert_eq!(engine.stats().executed_requests, 2);
}

/// An open request is executed once while its session has a record: a copy that arrives
/// directly (the client's retransmission, a duplicate on the network) is answered with the
/// session's number and not ordered, and one decided again (a Byzantine leader, a copy a
/// replica forwarded) opens nothing. (The simulator found the alternative: copies of opens
/// kept coming back, each ordered and opening another session, thousands of instances.) Once
/// the session is evicted, a copy opens a new, empty session: never the old one again.
#[test]
fn a_copy_of_an_open_request_is_answered_with_its_session_and_opens_nothing() {
    let c = open_cluster(small_table());
    let mut engine = c.engine(1);
    engine.start(0);
    let key = SimKey::from_seed([7; 32]);
    let first = open(&key, TAG);
    assert_eq!(
        decide(&c, &mut engine, 1, vec![first.clone()]),
        vec![opened(1, &first, Ok(1))]
    );
    assert_eq!(
        c.deliver_ok(
            &mut engine,
            0,
            Peer::Client(key.public_key()),
            Message::Request(first.clone())
        ),
        only_sent(vec![opened(1, &first, Ok(1))])
    );
    assert_eq!(engine.pending_requests(), 0, "the copy is not ordered");
    assert_eq!(decide(&c, &mut engine, 2, vec![first.clone()]), vec![]);
    assert_eq!(engine.stats().sessions_opened, 1);
    assert_eq!(engine.stats().skipped_duplicates, 1);
    // Two more sessions of the key (max 2 per key): session 1, opened by `first`, gives way.
    for (cid, tag) in [(3, TAG + 1), (4, TAG + 2)] {
        decide(&c, &mut engine, cid, vec![open(&key, tag)]);
    }
    assert_eq!(
        decide(&c, &mut engine, 5, vec![first.clone()]),
        vec![opened(1, &first, Ok(4))]
    );
    assert_eq!(engine.stats().sessions_opened, 4);
    let old = request(&key, 1, 1);
    assert_eq!(
        decide(&c, &mut engine, 6, vec![old.clone()]),
        vec![reply(1, &old, ReplyStatus::SessionExpired)]
    );
}
