//! Issue 12, item 6, at the verifier: a request signed with a torsion point added to `R` was
//! refused by `verify_inbound` alone but accepted in about half of the runs of several messages
//! (`verify_many` batches them), and so were PROPOSEs carrying it, so a Byzantine client could
//! make correct replicas disagree on a PROPOSE. The verdict must not depend on the run.

use std::sync::Arc;

use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
use curve25519_dalek::scalar::Scalar;
use sha2::{Digest as _, Sha512};
use smr_core::message::{
    Batch, Cid, Message, Propose, Regency, Request, RequestBody, RequestKind, Signed,
};
use smr_core::{ClientPolicy, InboundVerifier, Limits, Peer};
use smr_crypto::{Ed25519Verifier, IdentityKey, Signature, Signer};
use smr_modes::{Mode, Quorums};

fn verifier(replicas: &[IdentityKey]) -> InboundVerifier {
    InboundVerifier {
        quorums: Quorums::new(Mode::Bft, 4, 1).unwrap(),
        replica_keys: Arc::new(replicas.iter().map(|k| k.public_key()).collect()),
        clients: Arc::new(ClientPolicy::Any),
        limits: Limits::default(),
        signatures: Arc::new(Ed25519Verifier),
    }
}

/// The client's request for `seq`, signed by hand with commitment `[r]B + torsion`.
fn request_with_torsion(client: &IdentityKey, seq: u64, torsion_index: usize) -> Request {
    let body = RequestBody {
        client: client.public_key(),
        session: 1,
        seq,
        kind: RequestKind::Ordered,
        op: format!("op{seq}").into_bytes(),
    };
    let message = Request::signing_bytes_of(&body);
    let a = client.as_dalek().to_scalar();
    let r = Scalar::from(seq) * Scalar::from(0x9e37_79b9_7f4a_7c15u64) + Scalar::ONE;
    let big_r = (ED25519_BASEPOINT_POINT * r + EIGHT_TORSION[torsion_index])
        .compress()
        .to_bytes();
    let k = Scalar::from_bytes_mod_order_wide(
        &Sha512::new()
            .chain_update(big_r)
            .chain_update(client.public_key().as_bytes())
            .chain_update(&message)
            .finalize()
            .into(),
    );
    let mut signature = [0u8; 64];
    signature[..32].copy_from_slice(&big_r);
    signature[32..].copy_from_slice((r + k * a).as_bytes());
    Request {
        body,
        signature: Some(Signature(signature)),
    }
}

fn honest_request(client: &IdentityKey, seq: u64) -> Request {
    let body = RequestBody {
        client: client.public_key(),
        session: 1,
        seq,
        kind: RequestKind::Ordered,
        op: format!("companion {seq}").into_bytes(),
    };
    Request::new(body, Some(client as &dyn Signer))
}

#[test]
fn a_request_with_torsion_in_r_gets_one_verdict_alone_in_a_run_and_in_a_propose() {
    let replicas: Vec<IdentityKey> = (0..4u8)
        .map(|i| IdentityKey::from_seed([i + 1; 32]))
        .collect();
    let v = verifier(&replicas);
    let client = IdentityKey::from_seed([99; 32]);
    let direct = |request: Request| (Peer::Client(request.body.client), Message::Request(request));
    let propose = |requests: Vec<Request>| {
        let propose = Signed::new(
            Propose {
                leader: 0,
                cid: Cid(1),
                regency: Regency(0),
                batch: Batch { requests },
            },
            Some(&replicas[0] as &dyn Signer),
        );
        (Peer::Replica(0), Message::Propose(propose))
    };
    // The order-2 point (index 4 in dalek's list) is the example; all eight for good
    // measure.
    for torsion in 0..8 {
        for seq in 1..=24u64 {
            let request = request_with_torsion(&client, seq, torsion);
            let (from, message) = direct(request.clone());
            let alone = v.verify_inbound(from, message).map(|_| ());
            assert_eq!(alone, Ok(()), "T{torsion}, seq {seq}: cofactored, valid");
            // In a run with companions from other clients, directly and inside a PROPOSE.
            let companions: Vec<Request> = (0..1 + seq % 4)
                .map(|c| honest_request(&IdentityKey::from_seed([c as u8 + 10; 32]), seq))
                .collect();
            let mut run: Vec<(Peer, Message)> = companions.iter().cloned().map(direct).collect();
            run.insert((seq as usize) % (run.len() + 1), direct(request.clone()));
            let mut in_propose = companions.clone();
            in_propose.insert(0, request.clone());
            run.push(propose(in_propose));
            let verdicts = v.verify_many(run, None);
            assert!(
                verdicts.iter().all(Result::is_ok),
                "T{torsion}, seq {seq}: {verdicts:?}"
            );
        }
    }
}

#[test]
fn a_request_someone_else_mauled_with_torsion_is_refused_alone_and_in_every_run() {
    let replicas: Vec<IdentityKey> = (0..4u8)
        .map(|i| IdentityKey::from_seed([i + 1; 32]))
        .collect();
    let v = verifier(&replicas);
    let client = IdentityKey::from_seed([98; 32]);
    for seq in 1..=24u64 {
        // The honest signature with the order-2 point added to R afterwards: k no longer fits.
        let mut request = honest_request(&client, seq);
        let mut bytes = request.signature.unwrap().0;
        let r = curve25519_dalek::edwards::CompressedEdwardsY(bytes[..32].try_into().unwrap())
            .decompress()
            .unwrap();
        bytes[..32].copy_from_slice((r + EIGHT_TORSION[4]).compress().as_bytes());
        request.signature = Some(Signature(bytes));
        let from = Peer::Client(client.public_key());
        assert!(v
            .verify_inbound(from, Message::Request(request.clone()))
            .is_err());
        let companions: Vec<(Peer, Message)> = (0..1 + seq % 4)
            .map(|c| {
                let other = IdentityKey::from_seed([c as u8 + 10; 32]);
                (
                    Peer::Client(other.public_key()),
                    Message::Request(honest_request(&other, seq)),
                )
            })
            .collect();
        let mut run = companions;
        let at = (seq as usize) % (run.len() + 1);
        run.insert(at, (from, Message::Request(request)));
        let verdicts = v.verify_many(run, None);
        for (i, verdict) in verdicts.iter().enumerate() {
            assert_eq!(
                verdict.is_err(),
                i == at,
                "seq {seq}, message {i}: {verdict:?}"
            );
        }
    }
}
