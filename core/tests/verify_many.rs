//! Batched verification across messages, and the cache that verifies each client signature once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use smr_core::message::{
    Batch, Cid, Message, Propose, Regency, Request, RequestBody, RequestKind, Signed,
};
use smr_core::verify::VerifiedRequests;
use smr_core::{ClientPolicy, InboundVerifier, Limits, Peer, Rejection};
use smr_crypto::{
    BatchChecked, Ed25519Verifier, IdentityKey, PublicKey, Signature, SignedItem, Signer, Verifier,
    VerifyError,
};
use smr_modes::{Mode, Quorums};

/// Real ed25519, counting batch calls and the signatures they checked (a failed batch's
/// rechecked items twice).
#[derive(Default)]
struct Counting {
    batches: AtomicUsize,
    signatures: AtomicUsize,
}

impl Verifier for Counting {
    fn verify(
        &self,
        key: &PublicKey,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), VerifyError> {
        self.signatures.fetch_add(1, Ordering::Relaxed);
        Ed25519Verifier.verify(key, message, signature)
    }

    fn check_batch(&self, items: &[SignedItem<'_>]) -> BatchChecked {
        self.batches.fetch_add(1, Ordering::Relaxed);
        let checked = Ed25519Verifier.check_batch(items);
        self.signatures
            .fetch_add(checked.submitted(items.len()), Ordering::Relaxed);
        checked
    }
}

impl Counting {
    fn take(&self) -> (usize, usize) {
        (
            self.batches.swap(0, Ordering::Relaxed),
            self.signatures.swap(0, Ordering::Relaxed),
        )
    }
}

struct Setup {
    replicas: Vec<IdentityKey>,
    client: IdentityKey,
    counting: Arc<Counting>,
    verifier: InboundVerifier,
}

fn setup() -> Setup {
    let replicas: Vec<IdentityKey> = (0..4u8)
        .map(|i| IdentityKey::from_seed([i + 1; 32]))
        .collect();
    let counting = Arc::new(Counting::default());
    let verifier = InboundVerifier {
        quorums: Quorums::new(Mode::Bft, 4, 1).unwrap(),
        replica_keys: Arc::new(replicas.iter().map(|k| k.public_key()).collect()),
        clients: Arc::new(ClientPolicy::Any),
        limits: Limits::default(),
        signatures: counting.clone(),
    };
    Setup {
        replicas,
        client: IdentityKey::from_seed([99; 32]),
        counting,
        verifier,
    }
}

impl Setup {
    fn request(&self, seq: u64) -> Request {
        let body = RequestBody {
            client: self.client.public_key(),
            session: 1,
            seq,
            kind: RequestKind::Ordered,
            op: vec![seq as u8; 3],
        };
        Request::new(body, Some(&self.client as &dyn Signer))
    }

    fn direct(&self, request: Request) -> (Peer, Message) {
        (
            Peer::Client(self.client.public_key()),
            Message::Request(request),
        )
    }

    fn propose(&self, requests: Vec<Request>) -> (Peer, Message) {
        let propose = Signed::new(
            Propose {
                leader: 0,
                cid: Cid(1),
                regency: Regency(0),
                batch: Batch { requests },
            },
            Some(&self.replicas[0] as &dyn Signer),
        );
        (Peer::Replica(0), Message::Propose(propose))
    }
}

fn tampered(mut request: Request) -> Request {
    let mut bytes = request.signature.unwrap().0;
    bytes[40] ^= 1;
    request.signature = Some(Signature(bytes));
    request
}

#[test]
fn a_run_of_good_messages_is_checked_in_one_batch() {
    let s = setup();
    let run: Vec<_> = (1..=5).map(|seq| s.direct(s.request(seq))).collect();
    let verdicts = s.verifier.verify_many(run, None);
    assert!(verdicts.iter().all(Result::is_ok));
    assert_eq!(s.counting.take(), (1, 5));
}

#[test]
fn a_bad_signature_rejects_only_the_message_that_carries_it() {
    let s = setup();
    let cache = VerifiedRequests::new(100);
    let mut run: Vec<_> = (1..=5).map(|seq| s.direct(s.request(seq))).collect();
    run[2] = s.direct(tampered(s.request(3)));
    let verdicts = s.verifier.verify_many(run, Some(&cache));
    for (i, v) in verdicts.iter().enumerate() {
        if i == 2 {
            assert!(
                matches!(v, Err(Rejection::BadSignature { index: 0, .. })),
                "{v:?}"
            );
        } else {
            assert!(v.is_ok(), "message {i}: {v:?}");
        }
    }
    // The good requests are remembered, the bad one is not.
    assert_eq!(cache.len(), 4);
}

#[test]
fn a_request_verified_directly_is_not_verified_again_inside_a_propose() {
    let s = setup();
    let cache = VerifiedRequests::new(100);
    let requests: Vec<Request> = (1..=3).map(|seq| s.request(seq)).collect();
    let direct: Vec<_> = requests.iter().map(|r| s.direct(r.clone())).collect();
    assert!(s
        .verifier
        .verify_many(direct, Some(&cache))
        .iter()
        .all(Result::is_ok));
    assert_eq!(s.counting.take(), (1, 3));
    // The PROPOSE repeats two of them and adds a new one: only the leader's signature and the
    // new request are checked.
    let mut batch = requests[..2].to_vec();
    batch.push(s.request(4));
    let verdicts = s.verifier.verify_many(vec![s.propose(batch)], Some(&cache));
    assert!(verdicts[0].is_ok(), "{verdicts:?}");
    assert_eq!(s.counting.take(), (1, 2));
    assert_eq!(cache.hits(), 2);
}

#[test]
fn a_copy_with_another_signature_is_still_checked() {
    let s = setup();
    let cache = VerifiedRequests::new(100);
    let request = s.request(1);
    assert!(s
        .verifier
        .verify_many(vec![s.direct(request.clone())], Some(&cache))[0]
        .is_ok());
    // Same body, forged signature, inside a PROPOSE: not a cache hit, and rejected.
    let verdicts = s
        .verifier
        .verify_many(vec![s.propose(vec![tampered(request)])], Some(&cache));
    assert!(
        matches!(verdicts[0], Err(Rejection::BadSignature { .. })),
        "{verdicts:?}"
    );
    assert_eq!(cache.hits(), 0);
}

#[test]
fn a_request_twice_in_one_run_is_checked_once() {
    let s = setup();
    let cache = VerifiedRequests::new(100);
    let request = s.request(1);
    let run = vec![s.direct(request.clone()), s.propose(vec![request])];
    assert!(s
        .verifier
        .verify_many(run, Some(&cache))
        .iter()
        .all(Result::is_ok));
    // The request once, the PROPOSE's own signature once.
    assert_eq!(s.counting.take(), (1, 2));
}

#[test]
fn a_propose_with_a_forged_request_is_rejected_even_after_its_good_copy() {
    let s = setup();
    let cache = VerifiedRequests::new(100);
    let request = s.request(1);
    let run = vec![
        s.direct(request.clone()),
        s.propose(vec![tampered(request)]),
        s.direct(s.request(2)),
    ];
    let verdicts = s.verifier.verify_many(run, Some(&cache));
    assert!(verdicts[0].is_ok());
    assert!(matches!(verdicts[1], Err(Rejection::BadSignature { .. })));
    assert!(verdicts[2].is_ok());
}

#[test]
fn structural_rejections_are_unchanged_and_the_cache_is_bounded() {
    let s = setup();
    let cache = VerifiedRequests::new(2);
    // A client may not send replica messages.
    let (_, propose) = s.propose(vec![]);
    let run = vec![
        (Peer::Client(s.client.public_key()), propose),
        s.direct(s.request(1)),
        s.direct(s.request(2)),
        s.direct(s.request(3)),
    ];
    let verdicts = s.verifier.verify_many(run, Some(&cache));
    assert!(matches!(verdicts[0], Err(Rejection::UnexpectedMessage(_))));
    assert!(verdicts[1..].iter().all(Result::is_ok));
    assert_eq!(cache.len(), 2);
}
