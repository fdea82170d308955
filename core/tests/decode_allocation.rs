//! What one decode allocates, measured with a counting global allocator (stats_alloc).
//!
//! The kind (issue 12 item 1): no input may make a decoder allocate more than the bytes that
//! carried it, plus a small constant. A length that a frame, a WAL record or a checkpoint claims
//! must never turn into an allocation before the bytes it claims are there.
//!
//! One `#[test]` runs every case in turn: the allocator counts every thread, so tests running in
//! parallel would count each other's allocations.

use std::alloc::System;

use smr_core::checkpoint::{Checkpoint, CheckpointData};
use smr_core::clients::ClientTable;
use smr_core::codec::{decode, encode};
use smr_core::engine::PersistRecord;
use smr_core::message::{
    Batch, Cid, Decision, DecisionProof, Message, PreparedProof, Propose, Regency, Reply, Request,
    RequestBody, RequestId, RequestKind, Signed, StatusReport, StopData, Sync, Vote, VoteKind,
};
use smr_crypto::{Digest, PublicKey, Signature};
use stats_alloc::{Region, StatsAlloc};

#[global_allocator]
static GLOBAL: StatsAlloc<System> = StatsAlloc::system();

/// What a rejected input may allocate beyond its own size: the error's text and the partial
/// value decoded before the bad length.
const SLACK_BYTES: usize = 16 * 1024;

/// How many times its size a well-formed input may take once decoded. In-memory values are
/// larger than their encodings (an absent signature is 1 byte on the wire and 65 in memory; a
/// `Vec` header is 24 bytes for an 8-byte length), and a `Vec` that grows as its elements
/// arrive holds up to twice what it needs.
const EXPANSION: usize = 8;

/// Bytes allocated (including growth by reallocation) while `f` runs.
fn allocated_by<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let region = Region::new(&GLOBAL);
    let result = f();
    let change = region.change();
    (result, change.bytes_allocated)
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn request(seq: u64, op_bytes: usize) -> Request {
    Request {
        body: RequestBody {
            client: PublicKey([7; 32]),
            session: 1,
            seq,
            kind: RequestKind::Ordered,
            op: vec![0xab; op_bytes],
        },
        signature: Some(Signature([5; 64])),
    }
}

fn vote(replica: u32, cid: u64) -> Signed<Vote> {
    Signed {
        body: Vote {
            kind: VoteKind::Write,
            replica,
            cid: Cid(cid),
            regency: Regency(1),
            digest: Digest([3; 32]),
        },
        signature: Some(Signature([6; 64])),
    }
}

fn batch(requests: usize) -> Batch {
    Batch {
        requests: (0..requests as u64).map(|s| request(s, 40)).collect(),
    }
}

fn sync() -> Message {
    let stopdata = |replica| Signed {
        body: StopData {
            replica,
            regency: Regency(2),
            last_decided: Some(DecisionProof {
                cid: Cid(9),
                digest: Digest([1; 32]),
                certificate: (0..3).map(|r| vote(r, 9)).collect(),
            }),
            prepared: (10..12)
                .map(|cid| PreparedProof {
                    cid: Cid(cid),
                    epoch: Regency(1),
                    batch: batch(3),
                    writes: (0..3).map(|r| vote(r, cid)).collect(),
                })
                .collect(),
        },
        signature: Some(Signature([8; 64])),
    };
    Message::Sync(Signed {
        body: Sync {
            leader: 2,
            regency: Regency(2),
            proofs: (0..3).map(stopdata).collect(),
        },
        signature: Some(Signature([9; 64])),
    })
}

fn checkpoint_data() -> CheckpointData {
    let mut clients = ClientTable::new(4);
    for seq in 1..4 {
        let id = RequestId {
            client: PublicKey([seq as u8; 32]),
            session: 1,
            seq,
        };
        clients.mark_executing(&id, Cid(seq));
        clients.record_reply(&id, vec![seq as u8; 20]);
    }
    CheckpointData {
        cid: Cid(1000),
        service: vec![4; 100],
        clients,
    }
}

/// Whether the bytes decode as the sample's type.
type Decodes = fn(&[u8]) -> bool;

/// Well-formed encodings of every type a decoder reads from the network or the disk.
fn samples() -> Vec<(&'static str, Vec<u8>, Decodes)> {
    let message = |bytes: &[u8]| decode::<Message>(bytes).is_ok();
    let record = |bytes: &[u8]| decode::<PersistRecord>(bytes).is_ok();
    let checkpoint = |bytes: &[u8]| decode::<CheckpointData>(bytes).is_ok();
    let data = checkpoint_data();
    let decided = DecisionProof {
        cid: Cid(1000),
        digest: Digest([2; 32]),
        certificate: (0..3).map(|r| vote(r, 1000)).collect(),
    };
    vec![
        (
            "request",
            encode(&Message::Request(request(1, 64))),
            message,
        ),
        (
            "reply",
            encode(&Message::Reply(Reply {
                replica: 1,
                client: PublicKey([7; 32]),
                session: 1,
                status: smr_core::message::ReplyStatus::Executed,
                seq: 3,
                regency: Regency(0),
                result: vec![1; 50],
            })),
            message,
        ),
        (
            "propose",
            encode(&Message::Propose(Signed {
                body: Propose {
                    leader: 0,
                    cid: Cid(5),
                    regency: Regency(0),
                    batch: batch(8),
                },
                signature: Some(Signature([1; 64])),
            })),
            message,
        ),
        (
            "decisions",
            encode(&Message::Decisions(vec![Decision {
                cid: Cid(4),
                batch: batch(4),
                certificate: (0..3).map(|r| vote(r, 4)).collect(),
            }])),
            message,
        ),
        (
            "forward",
            encode(&Message::Forward(vec![request(2, 10); 4])),
            message,
        ),
        ("sync", encode(&sync()), message),
        (
            "state-info",
            encode(&Message::StateInfo {
                checkpoints: vec![(Cid(1000), Digest([1; 32])); 3],
                voted_up_to: Cid(1004),
                executed: Some(decided.clone()),
                for_nonce: u64::MAX,
                rejoin_nonce: u64::MAX,
            }),
            message,
        ),
        (
            "state-chunk",
            encode(&Message::StateChunk {
                cid: Cid(1000),
                offset: 0,
                total_len: 300,
                bytes: vec![9; 300],
                decided: Some(decided.clone()),
            }),
            message,
        ),
        (
            "status",
            encode(&Message::Status(StatusReport {
                replica: 0,
                mode: "bft".into(),
                regency: Regency(0),
                leader: 0,
                last_decided: Cid(0),
                last_checkpoint: Cid(0),
                state_digest: Digest([0; 32]),
                pending_requests: 0,
                rejected_messages: 0,
                log_entries: 0,
                decided_instances: 0,
                executed_requests: 0,
                client_signatures_verified: 0,
                client_signatures_cached: 0,
                fsyncs: 0,
                refused_replicas: Vec::new(),
                state_over_max_state_bytes: false,
                participation: smr_core::message::Participation::CatchingUp { until: Cid(70) },
            })),
            message,
        ),
        (
            "abstaining",
            encode(&Message::Abstaining { until: Cid(70) }),
            message,
        ),
        ("checkpoint-data", encode(&data), checkpoint),
        (
            "wal-checkpoint",
            encode(&PersistRecord::Checkpoint(Checkpoint::new(&data, decided))),
            record,
        ),
        (
            "wal-decided",
            encode(&PersistRecord::Decided(Decision {
                cid: Cid(4),
                batch: batch(4),
                certificate: (0..3).map(|r| vote(r, 4)).collect(),
            })),
            record,
        ),
    ]
}

#[test]
fn no_decode_allocates_more_than_its_input_allows() {
    // Issue 12 item 1, as filed: a 56-byte Request frame whose operation claims 67,108,808
    // bytes made the decoder allocate and zero 64 MiB before finding the bytes missing.
    let frame = hex(&format!(
        "00000000{}0100000000000000{}c8ffff0300000000",
        "11".repeat(32),
        "00000000"
    ));
    assert_eq!(frame.len(), 56);
    let (result, bytes) = allocated_by(|| decode::<Message>(&frame));
    assert!(result.is_err());
    assert!(
        bytes <= frame.len() + SLACK_BYTES,
        "a 56-byte request claiming a 64 MiB operation allocated {bytes} bytes"
    );

    // A Forward (variant 5) claiming 2^40 requests, with none present: serde's own Vec visitor
    // preallocates up to 1 MiB on the claim alone.
    let mut frame = 5u32.to_le_bytes().to_vec();
    frame.extend_from_slice(&(1u64 << 40).to_le_bytes());
    let (result, bytes) = allocated_by(|| decode::<Message>(&frame));
    assert!(result.is_err());
    assert!(
        bytes <= frame.len() + SLACK_BYTES,
        "a 12-byte forward claiming 2^40 requests allocated {bytes} bytes"
    );

    // Every sample, well-formed, then with every 8-byte window replaced by a huge length: each
    // length field of each type, and every other position too. An accepted input may take
    // EXPANSION times its size; a refused one no more than its own prefix did.
    let mut worst_ratio = 0.0f64;
    for (name, bytes, decodes) in samples() {
        let (ok, allocated) = allocated_by(|| decodes(&bytes));
        assert!(ok, "{name}: the sample decodes");
        assert!(
            allocated <= EXPANSION * bytes.len() + SLACK_BYTES,
            "{name}: {} bytes decoded with {allocated} bytes allocated",
            bytes.len()
        );
        worst_ratio = worst_ratio.max(allocated as f64 / bytes.len() as f64);
        for claim in [1u64 << 26, (1 << 26) - 56, 1 << 40, u64::MAX] {
            for at in 0..bytes.len().saturating_sub(8) {
                let mut mutated = bytes.clone();
                mutated[at..at + 8].copy_from_slice(&claim.to_le_bytes());
                let (_, allocated) = allocated_by(|| decodes(&mutated));
                assert!(
                    allocated <= EXPANSION * mutated.len() + SLACK_BYTES,
                    "{name}: {claim:#x} at byte {at} of {} made the decoder allocate {allocated} bytes",
                    mutated.len()
                );
            }
        }
    }
    println!("worst allocation per input byte of a well-formed sample: {worst_ratio:.2}");
}
