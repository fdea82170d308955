//! Fuzz targets for frames: what a replica's verify worker does with a frame (decode, then
//! verify as from each kind of peer, alone and in a run), and what a client does with a frame
//! from a replica (decode, then a reply or a status report), including the demo services'
//! operation and reply decoders and how `smr` prints what a peer sent.

use smr_core::client::{ClientConfig, ClientEngine};
use smr_core::codec;
use smr_core::message::{Message, RequestKind};
use smr_core::verify::VerifiedRequests;
use smr_core::{Peer, Service};
use smr_demo::status::{self, ReplicaAnswer};
use smr_demo::{Counter, CounterOp, CounterReply, KeyValue, KvOp, KvReply};
use smr_fuzz::engine::Sim;
use smr_fuzz::{run, seeds, AllocBudget, Target};
use smr_modes::Mode;

/// Decoded messages are a few times larger in memory than on the wire (vectors of requests,
/// signatures as options); verification copies what it checks once more. Measured (seed 0,
/// default run, total bytes allocated per input): beyond 16 bytes per input byte, at most 5.1
/// KB (replica_frames, client_frames) and 2.7 KB (service_operations); the constant is about
/// three times that, so an allocation of a few tens of KB that no input byte pays for fails.
const DECODE_BUDGET: AllocBudget = AllocBudget {
    constant_bytes: 16 * 1024,
    per_input_byte: 16,
};

#[test]
fn replica_frames() {
    let sim = Sim::new(Mode::Bft, None);
    let verifier = sim.verifier();
    let client = Peer::Client(sim.client_key().public_key());
    let cache = VerifiedRequests::new(64);
    run(Target {
        name: "replica_frames",
        known_open: &[],
        seeds: seeds::messages(3),
        default_iters: 100000,
        budget: DECODE_BUDGET,
        check: &|bytes| {
            let Ok(message) = codec::decode::<Message>(bytes) else {
                return;
            };
            for from in [Peer::Replica(0), Peer::Replica(1), client] {
                let _ = verifier.verify_inbound(from, message.clone());
            }
            let run = vec![(Peer::Replica(2), message.clone()), (client, message)];
            let _ = verifier.verify_many(run, Some(&cache));
        },
    });
}

#[test]
fn client_frames() {
    let sim = Sim::new(Mode::Bft, None);
    let key = sim.client_key().clone();
    run(Target {
        name: "client_frames",
        known_open: &[],
        seeds: seeds::messages(2),
        default_iters: 100000,
        budget: DECODE_BUDGET,
        check: &|bytes| {
            let Ok(message) = codec::decode::<Message>(bytes) else {
                return;
            };
            let mut client = ClientEngine::new(
                ClientConfig {
                    quorums: sim.quorums,
                    unordered_reads_enabled: true,
                    max_outstanding: 4,
                    max_op_bytes: 1024,
                    retry_timeout_ms: 1000,
                },
                std::sync::Arc::new(key.clone()),
                smr_core::clients::SESSION_NUMBER_LIMIT | 1,
            );
            // Its open is outstanding (a reply may open the session, or refuse it); reads go
            // out in the routing tag meanwhile.
            let _ = client.open(0);
            for kind in seeds::request_kinds() {
                let _ = client.submit(0, kind, b"op".to_vec());
            }
            match message {
                Message::Reply(reply) => {
                    for from in 0..4 {
                        if let Some(done) = client.on_reply(10, from, reply.clone()) {
                            // What `smr client` prints of a result.
                            let shown = status::escape_peer_bytes(&done.result);
                            assert!(!shown.chars().any(char::is_control), "{shown:?}");
                        }
                    }
                    let _ = client.on_timer(5000);
                    if let Ok(CounterReply::Error(e)) = CounterReply::decode(&reply.result) {
                        assert!(!status::escape_peer_text(&e).chars().any(char::is_control));
                    }
                    let _ = KvReply::decode(&reply.result);
                }
                Message::Status(report) => {
                    let line = status::format_line(&ReplicaAnswer {
                        id: report.replica,
                        report: Some(report),
                    });
                    assert!(
                        !line.chars().any(char::is_control),
                        "a status line holds a control character: {line:?}"
                    );
                }
                _ => {}
            }
        },
    });
}

#[test]
fn service_operations() {
    let seeds = vec![
        CounterOp::Add(5).encode(),
        CounterOp::Get.encode(),
        KvOp::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        }
        .encode(),
        KvOp::Get { key: b"k".to_vec() }.encode(),
    ];
    run(Target {
        name: "service_operations",
        known_open: &[],
        seeds,
        default_iters: 100000,
        budget: DECODE_BUDGET,
        check: &|bytes| {
            let mut counter = Counter::default();
            let mut kv = KeyValue::default();
            let _ = CounterReply::decode(&counter.execute(bytes));
            let _ = KvReply::decode(&kv.execute(bytes));
            let _ = counter.query(bytes);
            let _ = kv.query(bytes);
            let _ = counter.restore(bytes);
            let _ = kv.restore(bytes);
            let _ = RequestKind::Ordered;
        },
    });
}
