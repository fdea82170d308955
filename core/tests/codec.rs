//! The decoder faces the network: arbitrary bytes must give a typed error, never a panic or a
//! huge allocation.

use proptest::prelude::*;
use smr_core::codec::{decode, encode};
use smr_core::message::{Message, Request, RequestBody, RequestKind};
use smr_crypto::PublicKey;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<Message>(&bytes);
    }

    #[test]
    fn requests_round_trip_and_any_truncation_is_an_error(seq in any::<u64>(), op in proptest::collection::vec(any::<u8>(), 0..64), cut in 1usize..40) {
        let message = Message::Request(Request {
            body: RequestBody { client: PublicKey([3; 32]), seq, kind: RequestKind::Ordered, op },
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
    // Variant 0 (Request), then a client key, seq, kind, and an op length of 2^60.
    let mut frame = vec![0u8; 4];
    frame.extend_from_slice(&[1; 32]);
    frame.extend_from_slice(&1u64.to_le_bytes());
    frame.extend_from_slice(&0u32.to_le_bytes());
    frame.extend_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(decode::<Message>(&frame).is_err());
}

#[test]
fn trailing_bytes_are_rejected() {
    let mut frame = encode(&Message::DecisionQuery { from_cid: 7 });
    frame.push(0);
    assert!(decode::<Message>(&frame).is_err());
}

/// A request body as it was encoded before `op` became a byte string: field by field, with the
/// operation as a plain sequence of u8.
#[derive(serde::Serialize)]
struct BodyWithPlainOp {
    client: PublicKey,
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
            seq: 9,
            kind: RequestKind::Ordered,
            op: op.clone(),
        };
        let plain = BodyWithPlainOp {
            client: body.client,
            seq: body.seq,
            kind: body.kind,
            op,
        };
        assert_eq!(encode(&body), encode(&plain));
    }
}
