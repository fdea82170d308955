//! Regression tests for the client table's bounds (issue 12): item 8, "every per-client
//! structure is bounded", and the client-table part of item 3, "numbers from files and peers
//! are checked and bounded". Engine-level, with the shared fixture (core/tests/common/).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use smr_core::checkpoint::Checkpoint;
use smr_core::engine::{Output, PersistRecord, ServiceWork};
use smr_core::message::{
    Batch, Cid, Message, ReplyStatus, Request, RequestBody, RequestKind, SessionId,
};
use smr_core::{ClientPolicy, Engine, Limits};
use smr_crypto::sim::SimKey;
use smr_crypto::{PublicKey, Signer};
use smr_modes::Mode;

use common::{cluster, only_sent, Cluster};

/// Small bounds, so that a few hundred requests cross them: 8 clients, a window of 4 seqs, 48
/// reply bytes each (three 16-byte replies), 256 in all, eviction after 3 idle cids, a
/// checkpoint every 4 cids.
fn small_table() -> Limits {
    Limits {
        max_pending_per_client: 4,
        max_clients: 8,
        max_client_reply_bytes: 48,
        max_reply_cache_bytes: 256,
        client_expiry_cids: 3,
        checkpoint_period: 4,
        ..Limits::default()
    }
}

/// CFT (requests unsigned, so minted keys need no registration), n = 3, `clients = "any"`.
fn open_cluster(limits: Limits) -> Cluster {
    let mut c = cluster(Mode::Cft, 3, 1, limits);
    c.verifier.clients = Arc::new(ClientPolicy::Any);
    c
}

fn request(client: &dyn Signer, seq: u64) -> Request {
    let body = RequestBody {
        client: client.public_key(),
        session: 1,
        seq,
        kind: RequestKind::Ordered,
        op: format!("op{seq}").into_bytes(),
    };
    Request::new(body, None)
}

/// `client`'s open request (unsigned: CFT), which opens a session in its name.
fn open_request(client: &dyn Signer) -> Request {
    let body = RequestBody {
        client: client.public_key(),
        session: smr_core::message::OPEN_SESSION,
        seq: Cluster::TAG,
        kind: RequestKind::Ordered,
        op: Vec::new(),
    };
    Request::new(body, None)
}

/// The service's result for a request: 16 bytes naming it.
fn result_of(request: &Request) -> Vec<u8> {
    let mut result = format!("{}:{}", request.body.client, request.body.seq).into_bytes();
    result.resize(16, b'.');
    result
}

/// Runs the service for `out` (executing every item, snapshotting when asked) and returns the
/// sizes of the checkpoints the engine persisted.
fn run_service(engine: &mut Engine, out: Output, requests: &[Request]) -> Vec<usize> {
    let mut checkpoints = Vec::new();
    let mut work: Vec<ServiceWork> = out.service;
    while let Some(item) = (!work.is_empty()).then(|| work.remove(0)) {
        let next = match item {
            ServiceWork::Execute { cid, items } => {
                let results = items
                    .iter()
                    .map(|item| {
                        let request = requests
                            .iter()
                            .find(|r| r.id() == item.id)
                            .expect("executes a request of the batch");
                        result_of(request)
                    })
                    .collect();
                engine.on_executed(0, cid, results)
            }
            ServiceWork::TakeSnapshot { cid } => engine.on_snapshot(0, cid, b"service".to_vec()),
            other => panic!("unexpected service work {other:?}"),
        };
        checkpoints.extend(next.persist.iter().filter_map(|record| match record {
            PersistRecord::Checkpoint(checkpoint) => Some(checkpoint.data.len()),
            _ => None,
        }));
        work.extend(next.service);
    }
    checkpoints
}

/// Delivers the decision of `requests` at `cid` (ACCEPTs of all three) to `engine`, from
/// replica 0, and runs the service.
fn decide(c: &Cluster, engine: &mut Engine, cid: u64, requests: Vec<Request>) -> Vec<usize> {
    let out = c.deliver_decision(engine, cid, requests.clone());
    run_service(engine, out, &requests)
}

/// Item 8: under `clients = "any"`, every key that ever executed a request kept its record and
/// up to 64 cached replies, in memory and in every checkpoint, so a client minting keys grew
/// checkpoints without bound. Now the table holds at most `max_clients` records and the
/// checkpoints stop growing, while a client that keeps executing is never evicted and its
/// retry is answered from the cache. (Each minted key opens a session, which takes a record
/// like a first request did before sessions were opened by ordered requests.)
#[test]
fn minting_client_keys_keeps_the_table_and_checkpoints_bounded() {
    let c = open_cluster(small_table());
    let mut engine = c.engine(1);
    engine.start(0);
    let active = &c.client;
    let mut checkpoint_sizes = Vec::new();
    let mut minted = 0u32;
    for cid in 1..=60u64 {
        let mut requests = vec![request(active, cid)];
        if cid == 1 {
            // The active client's open: session 1.
            requests.insert(0, open_request(active));
        }
        for _ in 0..4 {
            minted += 1;
            let mut seed = [0u8; 32];
            seed[..4].copy_from_slice(&minted.to_le_bytes());
            requests.push(open_request(&SimKey::from_seed(seed)));
        }
        checkpoint_sizes.extend(decide(&c, &mut engine, cid, requests));
        assert!(engine.pending_clients() <= 8, "cid {cid}");
    }
    assert_eq!(minted, 240);
    assert_eq!(checkpoint_sizes.len(), 15);
    // Every checkpoint is within the bound the config was validated against, and the last
    // ones (after 240 keys) are no larger than the first full table's.
    let bound = small_table().client_limits().max_encoded_bytes() as usize + 64;
    assert!(
        checkpoint_sizes.iter().all(|size| *size <= bound),
        "{checkpoint_sizes:?} vs {bound}"
    );
    let full = checkpoint_sizes[2];
    assert!(
        checkpoint_sizes[2..].iter().all(|size| *size <= full + 64),
        "{checkpoint_sizes:?}"
    );
    // With 4 new keys per cid and eviction only after 3 idle cids, many new keys found the
    // table full of recent clients: their opens refused at execution, no session opened (the
    // same ones on every replica: the rule reads only the decided sequence).
    assert_eq!(engine.stats().refused_new_clients, 100);
    assert_eq!(engine.stats().sessions_opened, 1 + 140);
    assert_eq!(engine.stats().executed_requests, 60);

    // The active client executed at every cid: still known, and its retries of the last
    // replies its 48 bytes hold (3 of 16 bytes) are answered from the cache, exactly.
    for seq in 58..=60 {
        let retry = request(active, seq);
        assert_eq!(
            c.deliver_ok(
                &mut engine,
                0,
                c.client_peer(),
                Message::Request(retry.clone())
            ),
            only_sent(vec![c.reply(1, seq, &result_of(&retry))]),
            "seq {seq}"
        );
    }
    // Seq 57's reply was dropped for the per-client bound (it is still in the window), 56 is
    // out of the window: each is refused as stale, never executed again, and answered so
    // (issue 15: it was refused in silence, and its client waited for a reply that could not
    // come). Each a minute apart, so that the client's reply budget (which the retries
    // above spent) pays for the answer.
    for (seq, now_ms) in [(57, 60_000), (56, 120_000)] {
        let out = c.deliver(
            &mut engine,
            now_ms,
            c.client_peer(),
            Message::Request(request(active, seq)),
        );
        assert_eq!(
            out,
            Output {
                send_now: vec![c.reply_in(1, 1, seq, ReplyStatus::Stale, b"")],
                rejections: vec![smr_core::Rejection::StaleRequest],
                ..Output::default()
            },
            "seq {seq}"
        );
    }
}

/// What a checkpoint's bytes look like: the checkpoint's cid, the service's bytes, and the
/// client table (its execution count, its records).
#[derive(Serialize)]
struct CheckpointBytes {
    cid: Cid,
    #[serde(with = "serde_bytes")]
    service: Vec<u8>,
    clients: TableBytes,
}

#[derive(Serialize)]
struct TableBytes {
    executions: u64,
    /// The number the next opened session gets.
    next_session: u64,
    clients: BTreeMap<SessionId, RecordBytes>,
}

/// A client's record: its open's tag, its highest seq, the cid and stamp of its last execution, and its seqs
/// (each `Executing`, the slot's first variant).
#[derive(Serialize)]
struct RecordBytes {
    /// The routing tag of the open that opened the session.
    tag: u64,
    max_seq: u64,
    last_cid: Cid,
    stamp: u64,
    recent: BTreeMap<u64, SlotBytes>,
}

#[derive(Serialize)]
enum SlotBytes {
    Executing,
}

fn stored_checkpoint(c: &Cluster, records: Vec<(PublicKey, RecordBytes)>) -> Checkpoint {
    let data = smr_core::codec::encode(&CheckpointBytes {
        cid: Cid(4),
        service: b"service".to_vec(),
        clients: TableBytes {
            executions: 100,
            next_session: 2,
            clients: records
                .into_iter()
                .map(|(client, record)| (SessionId { client, session: 1 }, record))
                .collect(),
        },
    });
    Checkpoint {
        cid: Cid(4),
        digest: smr_crypto::digest(&data),
        data,
        decided: c.decision_proof(Cid(4), Batch::default().digest()),
    }
}

fn record(max_seq: u64, stamp: u64, seqs: &[u64]) -> RecordBytes {
    RecordBytes {
        tag: Cluster::TAG,
        max_seq,
        last_cid: Cid(1),
        stamp,
        recent: seqs
            .iter()
            .map(|seq| (*seq, SlotBytes::Executing))
            .collect(),
    }
}

/// Item 3, from files: a stored checkpoint whose client table had window 0, followed by a
/// request with seq `u64::MAX`, panicked in clients.rs (`floor + 1`). The window now comes
/// from the replica's validated config, not the file, and a stored table that breaks the
/// table's invariants or the replica's limits is refused where it is decoded, with a typed
/// error: recovery reports the stored checkpoint as unreadable. A valid one still recovers,
/// and a request with seq `u64::MAX` then executes without overflow.
#[test]
fn a_stored_checkpoint_whose_client_table_breaks_its_bounds_is_refused() {
    let c = open_cluster(small_table());
    let cases = [
        (
            (1..=9)
                .map(|i| (PublicKey([i; 32]), record(1, i as u64, &[1])))
                .collect(),
            "9 records, more than max_clients = 8",
        ),
        (
            vec![(PublicKey([1; 32]), record(u64::MAX, 0, &[1, u64::MAX]))],
            "not within its window",
        ),
        (
            vec![(PublicKey([1; 32]), record(3, 0, &[2]))],
            "do not end at its highest seq 3",
        ),
        (
            vec![(PublicKey([1; 32]), record(1, 100, &[1]))],
            "stamp 100 is not below the execution count 100",
        ),
    ];
    for (records, expected) in cases {
        let err = Engine::recover(
            c.cfg(1),
            c.engine_signer(1),
            [PersistRecord::Checkpoint(stored_checkpoint(&c, records))],
        )
        .map(|_| ())
        .expect_err(expected);
        assert!(
            err.starts_with("stored checkpoint is unreadable") && err.contains(expected),
            "{err}"
        );
    }

    // The fixture's client, at the top of the seq range.
    let valid = stored_checkpoint(
        &c,
        vec![(
            c.client.public_key(),
            record(u64::MAX - 1, 0, &[u64::MAX - 2, u64::MAX - 1]),
        )],
    );
    let (mut engine, _) = Engine::recover(
        c.cfg(1),
        c.engine_signer(1),
        [PersistRecord::Checkpoint(valid)],
    )
    .expect("a valid stored checkpoint recovers");
    engine.start(0);
    assert_eq!(engine.pending_clients(), 1);
    let at_the_top = request(&c.client, u64::MAX);
    let checkpoints = decide(&c, &mut engine, 5, vec![at_the_top.clone()]);
    assert_eq!(checkpoints, Vec::<usize>::new());
    assert_eq!(engine.stats().executed_requests, 1);
    assert_eq!(
        c.deliver_ok(
            &mut engine,
            0,
            c.client_peer(),
            Message::Request(at_the_top.clone())
        ),
        only_sent(vec![c.reply(1, u64::MAX, &result_of(&at_the_top))])
    );
}
