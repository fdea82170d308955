//! Findings of the issue-12 review (an attacker's view of the fixes), kept as regressions: each
//! test failed on the reviewed code and demonstrated a real bug.

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

fn decision(c: &Cluster, cid: u64, requests: Vec<Request>) -> Decision {
    let batch = Batch { requests };
    let digest = batch.digest();
    Decision {
        cid: Cid(cid),
        batch,
        certificate: c.votes(VoteKind::Accept, &[0, 1, 2], Cid(cid), Regency(0), digest),
    }
}

/// `client`'s open request (CFT: unsigned), which opens session 1 in a fresh table.
fn open_request(client: smr_crypto::PublicKey) -> Request {
    Request::new(
        RequestBody {
            client,
            session: smr_core::message::OPEN_SESSION,
            seq: Cluster::TAG,
            kind: RequestKind::Ordered,
            op: Vec::new(),
        },
        None,
    )
}

/// Replica 1 of `c`, having learned cid 1 opening session 1 of `request`'s client and deciding
/// `request`, and executed it with `reply`.
fn executed(c: &Cluster, request: &Request, reply: Vec<u8>) -> Engine {
    let mut engine = c.engine(1);
    engine.start(0);
    let out = c.deliver_ok(
        &mut engine,
        0,
        Peer::Replica(0),
        Message::Decisions(vec![decision(
            c,
            1,
            vec![open_request(request.body.client), request.clone()],
        )]),
    );
    let cid = match &out.service[..] {
        [ServiceWork::Execute { cid, items }] if items.len() == 1 => *cid,
        other => panic!("expected one execution, got {other:?}"),
    };
    engine.on_executed(0, cid, vec![reply]);
    engine
}

/// Issue 12 kind 4, "every reply that a peer's message triggers is rate-limited per peer and
/// bounded in bytes": the replica-side budgets (`engine/budget.rs`) cover decisions, state
/// info, chunks and SYNCs, but not the cached reply a client gets back for a duplicate
/// request (`handle_request`, `RequestStatus::Executed(Some(_))`). A client whose reply of
/// `max_client_reply_bytes` (1 MiB by default) is cached resends its ~100-byte request: every
/// copy makes every replica clone and send the whole reply again, with no per-client budget,
/// a 10,000x amplification in replica CPU and bandwidth. Any key may do this under
/// `clients = "any"`. Here 200 copies in one millisecond make one replica send 200 MiB to
/// one client, over three times the per-peer burst the replica budgets allow.
#[test]
fn duplicate_requests_do_not_make_a_replica_resend_a_cached_reply_without_bound() {
    let c = open_cluster(Limits::default());
    let client = SimKey::from_seed([41; 32]);
    let big = Request::new(
        RequestBody {
            client: client.public_key(),
            session: 1,
            seq: 1,
            kind: RequestKind::Ordered,
            op: b"big".to_vec(),
        },
        None,
    );
    let reply_len = Limits::default().max_client_reply_bytes as usize;
    let mut engine = executed(&c, &big, vec![7u8; reply_len]);

    let mut sent_bytes = 0u64;
    for _ in 0..200 {
        let out = c.deliver_ok(
            &mut engine,
            1,
            Peer::Client(client.public_key()),
            Message::Request(big.clone()),
        );
        for m in out.messages() {
            if let smr_core::Outgoing::Send {
                message: Message::Reply(r),
                ..
            } = m
            {
                sent_bytes += r.result.len() as u64;
            }
        }
    }
    assert!(
        sent_bytes <= smr_core::engine::REPLY_BURST_BYTES,
        "200 duplicate requests (about 20 KB) in one ms made the replica send {} MiB of cached replies to one client",
        sent_bytes >> 20
    );
}

/// The other side of the budget above: an honest client whose reply was lost retries after a
/// timeout and gets its cached reply, every time. Copies within one `retransmit_initial_ms`
/// of an answer are withheld (counted, not refused); the copy after the interval is answered.
#[test]
fn an_honest_retry_after_the_retransmit_interval_gets_its_cached_reply() {
    use smr_core::message::Reply;
    use smr_core::{Outgoing, Timeouts};
    let c = open_cluster(Limits::default());
    let interval_ms = Timeouts::default().retransmit_initial_ms;
    let client = SimKey::from_seed([42; 32]);
    let request = Request::new(
        RequestBody {
            client: client.public_key(),
            session: 1,
            seq: 1,
            kind: RequestKind::Ordered,
            op: b"op".to_vec(),
        },
        None,
    );
    // The largest reply a client can have cached.
    let result = vec![7u8; Limits::default().max_client_reply_bytes as usize];
    let mut engine = executed(&c, &request, result.clone());
    let answered = Output {
        send_now: vec![Outgoing::Send {
            to: Peer::Client(client.public_key()),
            message: Message::Reply(Reply {
                replica: 1,
                client: client.public_key(),
                session: 1,
                status: smr_core::message::ReplyStatus::Executed,
                seq: 1,
                regency: Regency(0),
                result,
            }),
        }],
        ..Output::default()
    };
    let mut retry = |now_ms: u64| {
        c.deliver(
            &mut engine,
            now_ms,
            Peer::Client(client.public_key()),
            Message::Request(request.clone()),
        )
    };

    assert_eq!(retry(10), answered, "the first retry");
    assert_eq!(retry(10), Output::default(), "a copy at once");
    assert_eq!(
        retry(10 + interval_ms / 2),
        Output::default(),
        "half an interval later"
    );
    assert_eq!(retry(10 + interval_ms), answered, "one interval later");
    assert_eq!(retry(10 + interval_ms), Output::default());
    assert_eq!(retry(10 + 10 * interval_ms), answered, "much later");
    assert_eq!(engine.stats().cached_replies_withheld, 3);
    assert_eq!(engine.stats().rejections.get("rate_limited"), None);
}

/// A request whose service result is `reply_len` bytes long (the service below reads op[0]).
fn request_with_reply_len(client: &SimKey, seq: u64, reply_len: u8) -> Request {
    Request::new(
        RequestBody {
            client: client.public_key(),
            session: 1,
            seq,
            kind: RequestKind::Ordered,
            op: vec![reply_len, seq as u8],
        },
        None,
    )
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
        decision(&c, 1, vec![request_with_reply_len(&client_c, 1, 6)]),
        decision(&c, 2, vec![request_with_reply_len(&client_a, 1, 6)]),
        decision(&c, 3, vec![request_with_reply_len(&client_c, 2, 1)]),
        decision(&c, 4, vec![request_with_reply_len(&client_a, 2, 1)]),
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

/// An unordered read from `client`.
fn unordered_read(client: &SimKey, seq: u64) -> Request {
    Request::new(
        RequestBody {
            client: client.public_key(),
            session: 1,
            seq,
            kind: RequestKind::Unordered,
            op: b"read".to_vec(),
        },
        None,
    )
}

/// Unordered reads pay from their client's reply budget (`engine/budget.rs`), like cached
/// replies: `REPLY_OVERHEAD_BYTES` when the read is handed to the service, the result's bytes
/// when it is sent. Before, every read was answered: a client could make a replica run the
/// service and send a reply for each ~100-byte request, without bound. Here a burst of 12,288
/// bytes (a 4 KiB reply cache plus 2 × 4 KiB) pays for one read with a 3,000-byte answer
/// (7,096 bytes) and the overhead of a second (1,096 left), whose answer is then withheld; the
/// third is withheld before the service sees it. Another client is answered all along, and
/// after a full refill interval the first one is answered again.
#[test]
fn a_flood_of_unordered_reads_is_answered_up_to_the_clients_budget_and_no_more() {
    use smr_core::engine::{Outgoing, ServiceDone};
    use smr_core::message::{Reply, RequestId};
    use smr_core::Timeouts;
    let limits = Limits {
        max_client_reply_bytes: 4096,
        max_reply_cache_bytes: 4096,
        max_pending_per_client: 2,
        ..Limits::default()
    };
    let interval_ms = Timeouts::default().retransmit_initial_ms;
    let c = open_cluster(limits);
    let mut engine = c.engine(1);
    engine.start(0);
    let flooder = SimKey::from_seed([51; 32]);
    let other = SimKey::from_seed([52; 32]);
    let answer = vec![b'a'; 3000];
    let query = |id: RequestId| Output {
        service: vec![ServiceWork::Query {
            id,
            op: b"read".to_vec(),
        }],
        ..Output::default()
    };
    let reply = |id: RequestId| Output {
        send_now: vec![Outgoing::Send {
            to: Peer::Client(id.client),
            message: Message::Reply(Reply {
                replica: 1,
                client: id.client,
                session: 1,
                status: smr_core::message::ReplyStatus::Executed,
                seq: id.seq,
                regency: Regency(0),
                result: answer.clone(),
            }),
        }],
        ..Output::default()
    };
    // One read: delivered at `now_ms`; if handed to the service, answered at `result_ms`.
    let read = |engine: &mut Engine, client: &SimKey, seq: u64, now_ms: u64, result_ms: u64| {
        let request = unordered_read(client, seq);
        let id = request.id();
        let asked = c.deliver(
            engine,
            now_ms,
            Peer::Client(client.public_key()),
            Message::Request(request),
        );
        if asked.is_empty() {
            return (asked, None);
        }
        let done = engine.on_service_done(
            result_ms,
            ServiceDone::Queried {
                id,
                result: answer.clone(),
            },
        );
        (asked, Some(done))
    };
    let id = |client: &SimKey, seq: u64| RequestId {
        client: client.public_key(),
        session: 1,
        seq,
    };

    assert_eq!(
        read(&mut engine, &flooder, 1, 10, 10),
        (query(id(&flooder, 1)), Some(reply(id(&flooder, 1)))),
        "the first read is within the budget"
    );
    assert_eq!(
        read(&mut engine, &flooder, 2, 10, 10),
        (query(id(&flooder, 2)), Some(Output::default())),
        "the service runs the second read, but its answer is withheld"
    );
    assert_eq!(
        read(&mut engine, &flooder, 3, 10, 10),
        (Output::default(), None),
        "the third read is withheld before the service runs it"
    );
    assert_eq!(
        read(&mut engine, &other, 1, 10, 10),
        (query(id(&other, 1)), Some(reply(id(&other, 1)))),
        "another client is answered"
    );
    assert_eq!(engine.stats().unordered_reads_withheld, 2);
    assert_eq!(
        read(
            &mut engine,
            &flooder,
            4,
            10 + 3 * interval_ms,
            10 + 3 * interval_ms
        ),
        (query(id(&flooder, 4)), Some(reply(id(&flooder, 4)))),
        "after a full interval the flooder is answered again"
    );
    assert_eq!(engine.stats().unordered_reads_withheld, 2);
    assert_eq!(engine.stats().rejections.get("rate_limited"), None);
}

/// Review finding: design.md §3.8 says a result longer than the client's bucket less 4 KiB is
/// never sent unordered, but a result that came back after the bucket had refilled met a full
/// bucket, which pays for any one reply however large: a slow service (or a long queue of
/// reads) made oversized unordered replies go out, one per refill interval per client.
#[test]
fn an_unordered_result_longer_than_the_bucket_is_never_sent_even_after_a_refill() {
    use smr_core::engine::ServiceDone;
    use smr_core::Timeouts;
    let limits = Limits {
        max_client_reply_bytes: 4096,
        max_reply_cache_bytes: 4096,
        max_pending_per_client: 2,
        ..Limits::default()
    };
    // A bucket of 4096 + 2 × 4096 bytes.
    let burst = 3 * 4096;
    let interval_ms = Timeouts::default().retransmit_initial_ms;
    let c = open_cluster(limits);
    let mut engine = c.engine(1);
    engine.start(0);
    let client = SimKey::from_seed([53; 32]);
    let request = unordered_read(&client, 1);
    let id = request.id();
    let asked = c.deliver(
        &mut engine,
        10,
        Peer::Client(client.public_key()),
        Message::Request(request),
    );
    assert_eq!(asked.service.len(), 1, "the read is handed to the service");
    let done = engine.on_service_done(
        10 + 2 * interval_ms,
        ServiceDone::Queried {
            id,
            result: vec![b'x'; burst + 1],
        },
    );
    assert!(
        done.send_now.is_empty(),
        "a {}-byte unordered result was sent from a bucket of {burst}",
        burst + 1
    );
    assert_eq!(engine.stats().unordered_reads_withheld, 1);
}
