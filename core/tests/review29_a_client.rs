//! Review A29 (issue 12, kind 5 on the client side): what one Byzantine replica's replies make a
//! client hold is bounded per request, whatever their size. Measured with a counting global
//! allocator (stats_alloc), so this target holds one `#[test]`.

use std::alloc::System;
use std::sync::Arc;

use smr_core::client::{ClientConfig, ClientEngine};
use smr_core::clients::SESSION_NUMBER_LIMIT;
use smr_core::message::{Regency, Reply, ReplyStatus, RequestKind, OPEN_SESSION};
use smr_crypto::sim::SimKey;
use smr_modes::{Mode, Quorums};
use stats_alloc::{Region, StatsAlloc};

#[global_allocator]
static GLOBAL: StatsAlloc<System> = StatsAlloc::system();

/// The client's window: the replicas' default `max_pending_per_client`.
const WINDOW: usize = 64;
/// The size of each of the Byzantine replica's results: the default `max_client_reply_bytes`.
/// A client takes frames from replicas up to the replica frame limit (about 256 MiB at the
/// defaults), so a Byzantine replica may send far larger ones.
const LIE_BYTES: usize = 1 << 20;
/// What the client may keep per request and replica beyond the reply's size (its map entry).
const HELD_PER_REPLY_BYTES: usize = 1024;

fn reply(client: &ClientEngine, replica: u32, seq: u64, result: Vec<u8>) -> Reply {
    Reply {
        replica,
        client: client.id(),
        session: client.session().unwrap_or(OPEN_SESSION),
        status: ReplyStatus::Executed,
        seq,
        regency: Regency::ZERO,
        result,
    }
}

/// A BFT client (n = 4, f = 1) with a full window of requests outstanding gets, for each, a
/// 1 MiB result from Byzantine replica 3 before the correct replicas answer. The client kept
/// every such result until its request completed: 64 MiB held from one replica, up to window
/// × frame limit (16 GiB at the defaults) per Byzantine replica. It now keeps what it needs to
/// count matching replies (a digest), and still completes each request with the correct
/// replicas' result. Before the fix the client held 64 MiB here.
#[test]
fn a_byzantine_replicas_replies_do_not_pile_up_in_the_client() {
    let quorums = Quorums::new(Mode::Bft, 4, 1).unwrap();
    let mut client = ClientEngine::new(
        ClientConfig {
            quorums,
            unordered_reads_enabled: true,
            max_outstanding: WINDOW,
            max_op_bytes: 64,
            retry_timeout_ms: 1000,
        },
        Arc::new(SimKey::from_seed([1; 32])),
        SESSION_NUMBER_LIMIT | 7,
    );
    client.open(0);
    for replica in 0..4 {
        let mut open = reply(&client, replica, client.tag(), 1u64.to_le_bytes().to_vec());
        open.session = OPEN_SESSION;
        client.on_reply(0, replica, open);
    }
    assert_eq!(client.session(), Some(1));
    let seqs: Vec<u64> = (0..WINDOW)
        .map(|_| {
            client
                .submit(0, RequestKind::Ordered, b"op".to_vec())
                .expect("room in the window")
                .0
        })
        .collect();

    // Replica 3's lies, each made inside the measured region: what the client keeps of them
    // stays allocated at its end.
    let region = Region::new(&GLOBAL);
    for &seq in &seqs {
        let lie = vec![seq as u8 ^ 0x5a; LIE_BYTES];
        assert_eq!(client.on_reply(1, 3, reply(&client, 3, seq, lie)), None);
    }
    let change = region.change();
    let held = change
        .bytes_allocated
        .saturating_sub(change.bytes_deallocated);
    assert!(
        held <= WINDOW * HELD_PER_REPLY_BYTES,
        "one Byzantine replica's {WINDOW} replies of {LIE_BYTES} bytes left {held} bytes held"
    );

    // The correct replicas' Q = 3 matching results complete every request with theirs.
    for &seq in &seqs {
        let truth = format!("result {seq}").into_bytes();
        assert_eq!(
            client.on_reply(2, 0, reply(&client, 0, seq, truth.clone())),
            None
        );
        assert_eq!(
            client.on_reply(2, 1, reply(&client, 1, seq, truth.clone())),
            None
        );
        let done = client
            .on_reply(2, 2, reply(&client, 2, seq, truth.clone()))
            .expect("Q matching replies");
        assert_eq!(
            (done.seq, done.status, done.result),
            (seq, ReplyStatus::Executed, truth)
        );
    }
    assert_eq!(client.outstanding(), 0);
}
