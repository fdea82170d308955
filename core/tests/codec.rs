//! The decoder faces the network: arbitrary bytes must give a typed error, never a panic or a
//! huge allocation.

use proptest::prelude::*;
use smr_core::codec::{decode, encode};
use smr_core::engine::PersistRecord;
use smr_core::message::{
    Batch, Cid, Message, Propose, Regency, Request, RequestBody, RequestKind, Vote, VoteKind,
};
use smr_crypto::{Digest, PublicKey};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<Message>(&bytes);
    }

    #[test]
    fn requests_round_trip_and_any_truncation_is_an_error(seq in any::<u64>(), op in proptest::collection::vec(any::<u8>(), 0..64), cut in 1usize..40) {
        let message = Message::Request(Request {
            body: RequestBody { client: PublicKey([3; 32]), session: 9, seq, kind: RequestKind::Ordered, op },
            signature: None,
        });
        let frame = encode(&message);
        prop_assert_eq!(decode::<Message>(&frame).unwrap(), message);
        let cut = cut.min(frame.len());
        prop_assert!(decode::<Message>(&frame[..frame.len() - cut]).is_err());
    }
}

#[test]
fn huge_length_prefix_is_rejected_without_allocating() {
    // Variant 0 (Request), then a client key, session, seq, kind, and an op length of 2^60.
    let mut frame = vec![0u8; 4];
    frame.extend_from_slice(&[1; 32]);
    frame.extend_from_slice(&7u64.to_le_bytes());
    frame.extend_from_slice(&1u64.to_le_bytes());
    frame.extend_from_slice(&0u32.to_le_bytes());
    frame.extend_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(decode::<Message>(&frame).is_err());
}

#[test]
fn trailing_bytes_are_rejected() {
    let mut frame = encode(&Message::DecisionQuery { from_cid: Cid(7) });
    frame.push(0);
    assert!(decode::<Message>(&frame).is_err());
}

/// A request body as it was encoded before `op` became a byte string: field by field, with the
/// operation as a plain sequence of u8.
#[derive(serde::Serialize)]
struct BodyWithPlainOp {
    client: PublicKey,
    session: u64,
    seq: u64,
    kind: RequestKind,
    op: Vec<u8>,
}

#[test]
fn byte_string_fields_encode_to_the_same_bytes_as_plain_byte_vectors() {
    for op in [
        vec![],
        vec![7],
        (0..=255).collect::<Vec<u8>>(),
        vec![0xab; 1024],
    ] {
        let body = RequestBody {
            client: PublicKey([3; 32]),
            session: 1,
            seq: 9,
            kind: RequestKind::Ordered,
            op: op.clone(),
        };
        let plain = BodyWithPlainOp {
            client: body.client,
            session: body.session,
            seq: body.seq,
            kind: body.kind,
            op,
        };
        assert_eq!(encode(&body), encode(&plain));
    }
}

/// A vote as it was encoded while `Cid` and `Regency` were aliases of `u64`.
#[derive(serde::Serialize, serde::Deserialize)]
struct VoteWithBareIds {
    kind: VoteKind,
    replica: u32,
    cid: u64,
    regency: u64,
    digest: Digest,
}

/// A proposal as it was encoded while `Cid` and `Regency` were aliases of `u64`.
#[derive(serde::Serialize)]
struct ProposeWithBareIds {
    leader: u32,
    cid: u64,
    regency: u64,
    batch: Batch,
}

fn vote(cid: u64, regency: u64) -> Vote {
    Vote {
        kind: VoteKind::Accept,
        replica: 2,
        cid: Cid(cid),
        regency: Regency(regency),
        digest: Digest([0xaa; 32]),
    }
}

/// `Cid` and `Regency` are `#[serde(transparent)]` newtypes: every frame and every record on
/// disk must keep the bytes of the bare `u64`s they replaced, or signatures and stores written
/// before would no longer check.
#[test]
fn cid_and_regency_encode_exactly_as_the_u64s_they_wrap() {
    // Spelled out once, so that a change on both sides cannot hide: variant index (u32), replica
    // (u32), cid and regency (u64), all little-endian, then the digest's 32 bytes.
    let mut expected = 1u32.to_le_bytes().to_vec();
    expected.extend_from_slice(&2u32.to_le_bytes());
    expected.extend_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
    expected.extend_from_slice(&9u64.to_le_bytes());
    expected.extend_from_slice(&[0xaa; 32]);
    assert_eq!(encode(&vote(0x0102_0304_0506_0708, 9)), expected);

    for (cid, regency) in [
        (0, 0),
        (1, 0),
        (7, 3),
        (u64::MAX, u64::MAX),
        (1 << 40, 1 << 20),
    ] {
        let v = vote(cid, regency);
        let bare = VoteWithBareIds {
            kind: v.kind,
            replica: v.replica,
            cid,
            regency,
            digest: v.digest,
        };
        assert_eq!(
            encode(&v),
            encode(&bare),
            "vote at cid {cid} regency {regency}"
        );
        let back: VoteWithBareIds = decode(&encode(&v)).expect("a vote decodes as bare ids");
        assert_eq!((back.cid, back.regency), (cid, regency));

        let batch = Batch {
            requests: vec![Request {
                body: RequestBody {
                    client: PublicKey([3; 32]),
                    session: 1,
                    seq: 4,
                    kind: RequestKind::Ordered,
                    op: vec![1, 2, 3],
                },
                signature: None,
            }],
        };
        let propose = Propose {
            leader: 1,
            cid: Cid(cid),
            regency: Regency(regency),
            batch: batch.clone(),
        };
        let bare = ProposeWithBareIds {
            leader: 1,
            cid,
            regency,
            batch,
        };
        assert_eq!(encode(&propose), encode(&bare), "propose at cid {cid}");

        // The bare forms of messages and records that carry them directly.
        let heartbeat = Message::Heartbeat {
            regency: Regency(regency),
            last_decided: Cid(cid),
        };
        let mut bare = 8u32.to_le_bytes().to_vec();
        bare.extend_from_slice(&regency.to_le_bytes());
        bare.extend_from_slice(&cid.to_le_bytes());
        assert_eq!(encode(&heartbeat), bare, "heartbeat");
        assert_eq!(
            encode(&PersistRecord::Regency(Regency(regency))),
            encode(&(3u32, regency)),
            "regency record"
        );
    }
}

proptest! {
    #[test]
    fn votes_round_trip_through_the_bare_u64_encoding(cid in any::<u64>(), regency in any::<u64>()) {
        let v = vote(cid, regency);
        let bare = VoteWithBareIds { kind: v.kind, replica: v.replica, cid, regency, digest: v.digest };
        prop_assert_eq!(encode(&v), encode(&bare));
        prop_assert_eq!(decode::<Vote>(&encode(&bare)).unwrap(), v);
    }
}
