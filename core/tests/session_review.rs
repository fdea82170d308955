//! Regressions of an adversarial review of client sessions and unordered reads (issue 15).
//! Each test failed on the code the reviewer was given and passes since its fix (design §3.7
//! "Expired sessions" and "Bounds", §3.8): a session refused as expired for seqs it used up
//! without a record, an evicted session's request replayed by a Byzantine replica, a few keys'
//! sessions filling the table, and a replica replaying its store answering unordered reads.
//! Engine-level, with the shared fixture (core/tests/common/). Each test's doc states the
//! finding as the reviewer found it.

mod common;

use std::sync::Arc;

use smr_core::client::{ClientAction, ClientConfig, ClientEngine};
use smr_core::clients::{
    Admission, ClientLimits, ClientTable, RequestStatus, SESSION_NUMBER_LIMIT,
};
use smr_core::engine::ServiceWork;
use smr_core::message::{
    Batch, Cid, Decision, Message, Regency, Reply, ReplyStatus, Request, RequestId, RequestKind,
    VoteKind, OPEN_SESSION,
};
use smr_core::{ClientPolicy, Engine, Limits, Peer};
use smr_crypto::sim::SimKey;
use smr_crypto::Signer;
use smr_modes::{Mode, Quorums};

use common::{cluster, Cluster};

fn open_cluster(limits: Limits) -> Cluster {
    let mut c = cluster(Mode::Cft, 3, 1, limits);
    c.verifier.clients = Arc::new(ClientPolicy::Any);
    c
}

fn decide(c: &Cluster, engine: &mut Engine, cid: u64, requests: Vec<Request>) -> Vec<Reply> {
    c.decide_and_execute(engine, cid, requests)
}

/// A CFT cluster whose window is `window`, replica 1 of it started, and a client engine of key
/// 9 with unordered reads on, its session (1) opened at cid 1 (replica 1's reply, and the
/// same from replica 0: Q = 2 with unordered reads on).
fn cft_replica_and_client(window: u64) -> (Cluster, Engine, Arc<SimKey>, ClientEngine) {
    let c = open_cluster(Limits {
        max_pending_per_client: window as _,
        ..Limits::default()
    });
    let mut engine = c.engine(1);
    engine.start(0);
    let key = Arc::new(SimKey::from_seed([9; 32]));
    let mut client = ClientEngine::new(
        ClientConfig {
            quorums: Quorums::new(Mode::Cft, 3, 1).unwrap(),
            unordered_reads_enabled: true,
            max_outstanding: window as usize,
            max_op_bytes: 64,
            retry_timeout_ms: 1000,
        },
        key.clone(),
        SESSION_NUMBER_LIMIT | 9,
    );
    let open = request_of(&client.open(0));
    let replies = decide(&c, &mut engine, 1, vec![open]);
    let [reply] = &replies[..] else {
        panic!("one reply to the open, got {replies:?}");
    };
    for replica in [1, 0] {
        let reply = Reply {
            replica,
            ..reply.clone()
        };
        client.on_reply(0, replica, reply);
    }
    assert_eq!(client.session(), Some(1));
    (c, engine, key, client)
}

fn request_of(actions: &[ClientAction]) -> Request {
    match &actions[0] {
        ClientAction::Broadcast(Message::Request(r)) => r.clone(),
        ClientAction::Send {
            message: Message::Request(r),
            ..
        } => r.clone(),
        other => panic!("unexpected action {other:?}"),
    }
}

/// FINDING (high): a client's seqs count its unordered reads too, but unordered reads never
/// reach the client table. A fresh session (unordered reads are on by default) whose first
/// `window` operations are reads then sends its first ordered request with seq `window + 1`
/// and no record: the table takes it for an evicted session and every correct replica refuses
/// it with `SessionExpired` (design §3.7 "Expired sessions" assumes a session with no record
/// sends at most seq `window`). The correct client's write fails; so does any read that falls
/// back to ordering after `window` unordered reads.
#[test]
fn a_write_after_a_window_of_unordered_reads_is_not_refused_as_expired() {
    let window = 4u64;
    let (c, mut engine, key, mut client) = cft_replica_and_client(window);
    // `window` unordered reads, each completed by Q = 2 matching replies.
    for _ in 0..window {
        let (seq, actions) = client
            .submit(0, RequestKind::Unordered, b"get".to_vec())
            .unwrap();
        let read = request_of(&actions);
        assert_eq!(read.body.kind, RequestKind::Unordered);
        let mut done = None;
        for replica in [0, 2] {
            done = done.or(client.on_reply(
                0,
                replica,
                Reply {
                    replica,
                    client: key.public_key(),
                    session: 1,
                    seq,
                    status: ReplyStatus::Executed,
                    regency: Regency(0),
                    result: b"0".to_vec(),
                },
            ));
        }
        assert_eq!(done.expect("read completes").status, ReplyStatus::Executed);
    }
    // Now the session's first write.
    let (seq, actions) = client
        .submit(0, RequestKind::Ordered, b"add 1".to_vec())
        .unwrap();
    assert_eq!(seq, window + 1, "seqs count the unordered reads");
    let write = request_of(&actions);
    let replies = decide(&c, &mut engine, 2, vec![write.clone()]);
    assert_eq!(replies.len(), 1);
    assert_eq!(
        replies[0].status,
        ReplyStatus::Executed,
        "a correct client's first write after {window} unordered reads was refused"
    );
}

/// FINDING (medium, `clients = "any"`): design §3.7 "Lock-out under clients = any" bounds a
/// lock-out by the number of *keys* one source network can connect (K = 256 at once) against
/// `max_clients` = 10,000 records. Records are sessions now and one key holds up to
/// `max_sessions_per_client` = 256 of them, so 40 keys (well under K, one host) fill the
/// default table with sessions active within `client_expiry_cids`, and a new client is
/// refused `TableFull` for as long as the flood keeps them active; the "T >= 224 s" bound no
/// longer holds (the keys needed shrank 256-fold).
#[test]
fn forty_keys_from_one_host_cannot_fill_the_default_table() {
    let limits = ClientLimits::default();
    let mut table = ClientTable::bounded(limits);
    let keys_needed = limits.max_clients.div_ceil(limits.max_sessions_per_client);
    assert_eq!(keys_needed, 40);
    // Batches of 100 requests: 10,000 sessions in 100 cids, all within `client_expiry_cids`.
    let mut inserted = 0u64;
    'flood: for k in 0..keys_needed {
        let key = SimKey::from_seed([k as u8 + 1; 32]).public_key();
        for _ in 0..limits.max_sessions_per_client {
            if inserted == limits.max_clients {
                break 'flood;
            }
            let cid = Cid(1 + inserted / 100);
            let tag = SESSION_NUMBER_LIMIT | inserted;
            let session = table.open_session(key, tag, cid).expect("room");
            let id = RequestId {
                client: key,
                session,
                seq: 1,
            };
            assert!(matches!(
                table.mark_executing(&id, cid),
                Admission::Execute { .. }
            ));
            table.record_reply(&id, Vec::new());
            inserted += 1;
        }
    }
    let cid = 1 + inserted / 100;
    let newcomer = SimKey::from_seed([200; 32]).public_key();
    let session = table.open_session(newcomer, SESSION_NUMBER_LIMIT, Cid(cid));
    assert!(
        session.is_some(),
        "{keys_needed} keys of one source network locked a new client out of the table"
    );
    let id = RequestId {
        client: newcomer,
        session: session.unwrap(),
        seq: 1,
    };
    assert_eq!(
        table.mark_executing(&id, Cid(cid)),
        Admission::Execute { floor: None }
    );
}

/// FINDING (high, linearizability, CFT with no Byzantine replica): design §3.8 argues that
/// "the state a correct replica answers from is a prefix of the decided sequence, and that
/// prefix only grows", except for a replica that lost its store. A replica restarted from an
/// intact store (`Engine::recover`) also goes back: it restores its checkpoint and re-executes
/// the stored decisions after it one batch at a time, and it takes part at once
/// (`participates()` is true), so it answers unordered reads from states older than the ones
/// it replied to writes from before the crash. CFT n = 3, Q = 2: write W at cid 2 replied by
/// {m, a}; m restarts; a read answered by {m (replaying, before cid 2), d (lagging)} returns
/// two matching pre-W values and completes without W. The same with BFT, n = 4: {m, d, b}.
/// Expected: no Query is handed to the service before the stored decisions are re-executed.
#[test]
fn a_replica_replaying_its_store_answers_no_unordered_read_from_before_its_crash() {
    let c = open_cluster(Limits::default());
    let decision = |cid: u64| {
        let batch = c.batch(&[cid]);
        let certificate = c.votes(
            VoteKind::Accept,
            &[0, 1, 2],
            Cid(cid),
            Regency(0),
            batch.digest(),
        );
        Decision {
            cid: Cid(cid),
            batch,
            certificate,
        }
    };
    // Before its crash, replica 1 executed (and replied to) cids 1 and 2.
    let records = vec![
        smr_core::engine::PersistRecord::Decided(decision(1)),
        smr_core::engine::PersistRecord::Decided(decision(2)),
    ];
    let (mut m, output) = Engine::recover(c.cfg(1), c.engine_signer(1), records).unwrap();
    assert!(
        matches!(output.service.as_slice(), [ServiceWork::Execute { cid, .. }] if *cid == Cid(1)),
        "replays cid 1 first: {:?}",
        output.service
    );
    m.start(0);
    let read = Request::new(
        smr_core::message::RequestBody {
            client: c.client.public_key(),
            session: 77,
            seq: 1,
            kind: RequestKind::Unordered,
            op: b"get".to_vec(),
        },
        None,
    );
    let out = c.deliver_ok(&mut m, 1, c.client_peer(), Message::Request(read));
    assert!(
        !out.service
            .iter()
            .any(|w| matches!(w, ServiceWork::Query { .. })),
        "a replica that has re-executed only up to cid 0 of its stored cid 2 answers an \
         unordered read: {:?}",
        out.service
    );
}

/// FINDING (high, BFT exactly-once): once a session's record is evicted, any of its old
/// requests with seq <= `window` "looks new" (design §3.7 "Expired sessions"). The design
/// accepts that for the session's own client retrying "while it waited for that very reply",
/// but a Byzantine replica needs no such wait: it keeps every signed request it saw and
/// forwards one of an evicted session to the correct leader, which pools and proposes it, and
/// every correct replica executes it a second time. With sessions, eviction is routine: every
/// `smr client` process is a session, and 256 (`max_sessions_per_client`) later runs of the
/// README's shared `client.key` evict the first run's session, so its `counter add 5` can be
/// replayed by one Byzantine replica at any later time. (Before sessions a key's record was
/// evicted only when idle with a full table of 10,000 keys.) Here: 2 sessions per key.
#[test]
fn a_byzantine_replica_cannot_replay_an_evicted_sessions_request() {
    let c = cluster(
        Mode::Bft,
        4,
        1,
        Limits {
            max_sessions_per_client: 2,
            ..Limits::default()
        },
    );
    let signed = |session: u64, seq: u64, op: &str| {
        Request::new(
            smr_core::message::RequestBody {
                client: c.client.public_key(),
                session,
                seq,
                kind: RequestKind::Ordered,
                op: op.as_bytes().to_vec(),
            },
            Some(&c.client as &dyn Signer),
        )
    };
    // A process's open request: its seq is its routing tag.
    let open = |tag: u64| signed(OPEN_SESSION, SESSION_NUMBER_LIMIT | tag, "");
    let decide_bft = |engine: &mut Engine, cid: u64, requests: Vec<Request>| {
        let batch = Batch {
            requests: requests.clone(),
        };
        let digest = batch.digest();
        let decision = Decision {
            cid: Cid(cid),
            batch,
            certificate: c.votes(VoteKind::Accept, &[1, 2, 3], Cid(cid), Regency(0), digest),
        };
        let out = c.deliver_ok(
            engine,
            0,
            Peer::Replica(1),
            Message::Decisions(vec![decision]),
        );
        for work in out.service {
            if let ServiceWork::Execute { cid, items } = work {
                let results = items.iter().map(|_| b"ok".to_vec()).collect();
                engine.on_executed(0, cid, results);
            }
        }
    };
    // Replica 0 leads regency 0.
    let mut leader = c.engine(0);
    leader.start(0);
    let add5 = signed(1, 1, "add 5");
    decide_bft(&mut leader, 1, vec![open(1), add5.clone()]);
    // Two later runs of the shared key: session 1 gives way (per-key bound of 2).
    decide_bft(&mut leader, 2, vec![open(2), signed(2, 1, "get")]);
    decide_bft(&mut leader, 3, vec![open(3), signed(3, 1, "get")]);
    assert_eq!(leader.stats().executed_requests, 3);
    assert_eq!(leader.stats().sessions_opened, 3);
    // Byzantine replica 3 forwards the old `add 5` it kept.
    let out = c.deliver(
        &mut leader,
        10,
        Peer::Replica(3),
        Message::Forward(vec![add5.clone()]),
    );
    let proposed = out.messages().any(|o| {
        matches!(o, smr_core::Outgoing::Broadcast(Message::Propose(p)) | smr_core::Outgoing::Send { message: Message::Propose(p), .. }
            if p.body.batch.requests.iter().any(|r| r.id() == add5.id()))
    });
    assert!(
        !proposed,
        "the correct leader proposed an evicted session's executed request again"
    );
    // Decided anyway (e.g. by a Byzantine leader): it must not execute a second time.
    decide_bft(&mut leader, 4, vec![add5]);
    assert_eq!(
        leader.stats().executed_requests,
        3,
        "`add 5` executed twice after its session was evicted"
    );
}

/// FINDING (high, same root as the unordered-read one): a session's seqs are consumed by
/// requests that never executed (timed out and abandoned while the cluster was unreachable,
/// or refused `TableFull` and tried again as that refusal's message says). After `window` of
/// them the session has no record and its next seq is above `window`: every request it sends
/// from then on is refused `SessionExpired`, for ever, though it was never evicted. E.g. an
/// application that starts its `Client` during an outage and retries `invoke` with a timeout.
#[test]
fn a_session_whose_first_window_of_requests_timed_out_is_not_expired() {
    let window = 4u64;
    let (c, mut engine, _key, mut client) = cft_replica_and_client(window);
    // The cluster is unreachable: each invocation times out and the driver abandons it.
    for _ in 0..window {
        let (seq, _) = client
            .submit(0, RequestKind::Ordered, b"add 1".to_vec())
            .unwrap();
        client.abandon(seq);
    }
    // The cluster is back.
    let (seq, actions) = client
        .submit(0, RequestKind::Ordered, b"add 1".to_vec())
        .unwrap();
    assert_eq!(seq, window + 1);
    let replies = decide(&c, &mut engine, 2, vec![request_of(&actions)]);
    assert_eq!(
        replies[0].status,
        ReplyStatus::Executed,
        "a session that never executed anything is told it expired"
    );
}

/// Second review of issue 15 (FINDING, BFT exactly-once): the table remembered its last
/// `max_clients` evictions in one list for all keys, so ONE key that opened fresh sessions fast
/// (10,000 cheap requests at the defaults; rule 2 evicts its own) flushed the memory, and a
/// victim's evicted session looked new again: a signed copy of its executed request that a
/// Byzantine replica kept would execute a second time. Session numbers now come from the
/// replicated counter, so "below the counter, no record" is expired for ever, whatever any
/// key does later.
#[test]
fn one_key_opening_sessions_fast_cannot_make_an_evicted_session_new_again() {
    let limits = ClientLimits::default();
    let mut table = ClientTable::bounded(limits);
    let key = |n: u32| {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&n.to_le_bytes());
        k[31] = 0xee;
        smr_crypto::PublicKey(k)
    };
    let execute = |table: &mut ClientTable, client, cid: u64| {
        let session = table
            .open_session(client, SESSION_NUMBER_LIMIT | cid, Cid(cid))
            .expect("room");
        let id = RequestId {
            client,
            session,
            seq: 1,
        };
        assert!(matches!(
            table.mark_executing(&id, Cid(cid)),
            Admission::Execute { .. }
        ));
        table.record_reply(&id, vec![1]);
        id
    };
    // The victim executes once (a Byzantine replica keeps the signed request) and goes idle.
    let kept = execute(&mut table, key(1), 1);
    for k in 2..=limits.max_clients as u32 {
        execute(&mut table, key(k), 2);
    }
    // Much later a new client takes the place of the idle victim.
    let late = 2 + limits.client_expiry_cids + 10;
    execute(&mut table, key(1_000_000), late);
    assert_eq!(table.status(&kept), RequestStatus::SessionExpired);
    // One attacker key opens max_clients fresh sessions (each evicting one of its own).
    let attacker = key(2_000_000);
    for i in 1..=limits.max_clients {
        execute(&mut table, attacker, late + i);
    }
    assert_eq!(
        table.status(&kept),
        RequestStatus::SessionExpired,
        "one key's {} sessions made the victim's evicted session new again",
        limits.max_clients
    );
    assert_eq!(
        table.mark_executing(&kept, Cid(late + limits.max_clients + 1)),
        Admission::SessionExpired
    );
}

/// The same review's second test, as it reads with opened sessions: a Byzantine replica that
/// replays a victim key's old open request gives the key an extra, empty session; with the
/// table full, the next newcomer then takes a session of the victim's (now crowded) key. It
/// must take the replayed empty one, never the victim's live session (executed 2 cids before),
/// and the victim's evicted session's kept request stays refused.
#[test]
fn a_replayed_open_never_costs_the_victim_its_live_session() {
    let limits = ClientLimits {
        window: 4,
        max_clients: 4,
        max_sessions_per_client: 2,
        client_expiry_cids: 5,
        ..ClientLimits::default()
    };
    let mut table = ClientTable::bounded(limits);
    let key = |n: u8| SimKey::from_seed([n; 32]).public_key();
    let run = |table: &mut ClientTable, id: &RequestId, cid: u64| {
        assert!(
            matches!(
                table.mark_executing(id, Cid(cid)),
                Admission::Execute { .. }
            ),
            "{id:?} refused"
        );
        table.record_reply(id, vec![1]);
    };
    let open = |table: &mut ClientTable, client, cid: u64| {
        table
            .open_session(client, SESSION_NUMBER_LIMIT | cid, Cid(cid))
            .expect("room")
    };
    let victim = key(50);
    let old = open(&mut table, victim, 1);
    let kept = RequestId {
        client: victim,
        session: old,
        seq: 1,
    };
    run(&mut table, &kept, 1);
    for k in 10..13 {
        let session = open(&mut table, key(k), 2);
        run(
            &mut table,
            &RequestId {
                client: key(k),
                session,
                seq: 1,
            },
            2,
        );
    }
    // The idle victim session is evicted by a newcomer.
    let session = open(&mut table, key(13), 20);
    run(
        &mut table,
        &RequestId {
            client: key(13),
            session,
            seq: 1,
        },
        20,
    );
    assert_eq!(table.status(&kept), RequestStatus::SessionExpired);
    // The victim's new process: its live session.
    let live_session = open(&mut table, victim, 21);
    let live = |seq| RequestId {
        client: victim,
        session: live_session,
        seq,
    };
    run(&mut table, &live(1), 21);
    run(&mut table, &live(2), 25);
    // A Byzantine replica replays the victim's old open (its tag, from cid 1): its session
    // has no record any more, so the copy opens a new, empty session of the victim's key,
    // which now holds two (the table is full, so a newcomer takes from it).
    table
        .open_session(victim, SESSION_NUMBER_LIMIT | 1, Cid(26))
        .expect("room");
    assert_eq!(table.status(&kept), RequestStatus::SessionExpired);
    assert_eq!(
        table.mark_executing(&kept, Cid(26)),
        Admission::SessionExpired
    );
    // A newcomer: the victim's key is the crowded one; its empty session goes.
    let session = open(&mut table, key(14), 27);
    run(
        &mut table,
        &RequestId {
            client: key(14),
            session,
            seq: 1,
        },
        27,
    );
    assert_eq!(
        table.status(&live(3)),
        RequestStatus::New,
        "the victim's only live session (executed at cid 25) was evicted at cid 27"
    );
    run(&mut table, &live(3), 28);
}
