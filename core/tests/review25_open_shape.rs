//! Open requests and sessions whose shape no state can make valid are refused where requests
//! are verified, directly and inside a replica's message (noticed in the final reread of stop
//! 24: replicas ordered opens with a tag below 2^63, an operation, or as unordered reads, and
//! ordered requests in sessions at or above 2^63, where none is ever opened).

mod common;

use smr_core::message::{
    Batch, Cid, Message, Regency, Request, RequestBody, RequestKind, OPEN_SESSION,
};
use smr_core::Rejection;
use smr_crypto::Signer;

use common::{bft, cft, Cluster};

fn signed(c: &Cluster, session: u64, seq: u64, kind: RequestKind, op: &[u8]) -> Request {
    let body = RequestBody {
        client: c.client.public_key(),
        session,
        seq,
        kind,
        op: op.to_vec(),
    };
    Request::new(body, c.signing().then_some(&c.client as &dyn Signer))
}

#[test]
fn malformed_opens_and_sessions_are_refused_directly_and_inside_a_propose() {
    for c in [bft(), cft()] {
        let tag = Cluster::TAG;
        let cases = [
            (
                signed(&c, OPEN_SESSION, 7, RequestKind::Ordered, b""),
                "an open request's routing tag is below 2^63",
            ),
            (
                signed(&c, OPEN_SESSION, tag, RequestKind::Ordered, b"op"),
                "an open request carries no operation",
            ),
            (
                signed(&c, OPEN_SESSION, tag, RequestKind::Unordered, b""),
                "an open request must be ordered",
            ),
            (
                signed(&c, tag, 1, RequestKind::Ordered, b"op"),
                "an ordered request names a session at or above 2^63, where none is opened",
            ),
        ];
        for (request, why) in cases {
            assert_eq!(
                c.verifier_rejects(c.client_peer(), Message::Request(request.clone())),
                Rejection::Malformed(why.into()),
                "directly: {why}"
            );
            let propose = c.propose(
                0,
                Cid(1),
                Regency(0),
                Batch {
                    requests: vec![c.request(1), request],
                },
            );
            assert_eq!(
                c.verifier_rejects(smr_core::Peer::Replica(0), Message::Propose(propose)),
                Rejection::Malformed(why.into()),
                "inside a PROPOSE: {why}"
            );
        }
        // What clients send passes: the fixture's open, a request of session 1, and an
        // unordered read under the routing tag.
        for request in [
            c.open_request(),
            c.request(1),
            signed(&c, tag, 1, RequestKind::Unordered, b"get"),
        ] {
            c.verifier
                .verify_inbound(c.client_peer(), Message::Request(request))
                .expect("a well-formed request");
        }
    }
}
