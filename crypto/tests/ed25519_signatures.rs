//! The real scheme: ed25519 signing, strict verification, batch verification.

use std::sync::Arc;

use proptest::prelude::*;
use smr_crypto::{
    canonical_message, BatchVerifyError, Ed25519Verifier, IdentityKey, PublicKey, Signature,
    SignedItem, Signer, Verifier, VerifyError,
};

fn key(n: u8) -> IdentityKey {
    IdentityKey::from_seed([n; 32])
}

/// 32 bytes that do not decompress to an ed25519 point (found by search, checked below).
fn off_curve_key() -> PublicKey {
    (0u8..=255)
        .map(|b| {
            let mut bytes = [0u8; 32];
            bytes[0] = b;
            bytes[1] = 1;
            PublicKey(bytes)
        })
        .find(|k| k.check_ed25519() == Err(smr_crypto::KeyError::NotOnCurve))
        .expect("some small y is not on the curve")
}

/// The identity point: a weak key for which (R = identity, s = 0) satisfies the cofactorless
/// verification equation for every message.
fn identity_point() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    bytes[0] = 1;
    bytes
}

#[test]
fn signature_verifies_under_the_signing_key() {
    let signer = key(1);
    let message = canonical_message("test", b"hello");
    let signature = signer.sign(&message);
    assert_eq!(
        Ed25519Verifier.verify(&signer.public_key(), &message, &signature),
        Ok(())
    );
}

#[test]
fn tampered_message_fails_verification() {
    let signer = key(1);
    let signature = signer.sign(b"pay alice 10");
    assert_eq!(
        Ed25519Verifier.verify(&signer.public_key(), b"pay alice 99", &signature),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn wrong_key_fails_verification() {
    let signature = key(1).sign(b"hello");
    assert_eq!(
        Ed25519Verifier.verify(&key(2).public_key(), b"hello", &signature),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn signature_for_another_domain_fails_verification() {
    let signer = key(1);
    let signature = signer.sign(&canonical_message("write", b"payload"));
    assert_eq!(
        Ed25519Verifier.verify(
            &signer.public_key(),
            &canonical_message("accept", b"payload"),
            &signature
        ),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn off_curve_key_is_malformed() {
    let signature = key(1).sign(b"hello");
    assert_eq!(
        Ed25519Verifier.verify(&off_curve_key(), b"hello", &signature),
        Err(VerifyError::MalformedKey)
    );
}

#[test]
fn weak_key_is_malformed_even_with_a_signature_that_fits_the_equation() {
    let weak = PublicKey(identity_point());
    let mut bytes = [0u8; 64];
    bytes[..32].copy_from_slice(&identity_point());
    let trivial = Signature(bytes);
    assert_eq!(
        Ed25519Verifier.verify(&weak, b"anything", &trivial),
        Err(VerifyError::MalformedKey)
    );
}

#[test]
fn signing_is_deterministic_and_seeds_give_distinct_keys() {
    assert_eq!(key(1).sign(b"m"), key(1).sign(b"m"));
    assert_eq!(key(1).public_key(), key(1).public_key());
    assert_ne!(key(1).public_key(), key(2).public_key());
    assert_ne!(
        IdentityKey::generate().public_key(),
        IdentityKey::generate().public_key()
    );
    assert_eq!(key(1).public_key().check_ed25519(), Ok(()));
}

#[test]
fn identity_key_debug_does_not_print_the_secret() {
    let seed = [0xab; 32];
    let debug = format!("{:?}", IdentityKey::from_seed(seed));
    assert!(!debug.contains(&hex::encode(seed)), "{debug}");
    assert!(!debug.contains("abab"), "{debug}");
    assert!(
        debug.starts_with("IdentityKey { public: PublicKey("),
        "{debug}"
    );
}

#[test]
fn signers_and_verifiers_work_behind_trait_objects() {
    let signer: Arc<dyn Signer> = Arc::new(key(3));
    let verifier: Box<dyn Verifier> = Box::new(Ed25519Verifier);
    let signature = signer.sign(b"m");
    assert_eq!(
        verifier.verify(&signer.public_key(), b"m", &signature),
        Ok(())
    );
    let items = [SignedItem {
        key: &signer.public_key(),
        message: b"m",
        signature: &signature,
    }];
    assert_eq!(verifier.verify_batch(&items), Ok(()));
}

struct Batch {
    keys: Vec<PublicKey>,
    messages: Vec<Vec<u8>>,
    signatures: Vec<Signature>,
}

impl Batch {
    fn valid(len: usize) -> Batch {
        let signers: Vec<IdentityKey> = (0..len).map(|i| key(i as u8 % 5)).collect();
        let messages: Vec<Vec<u8>> = (0..len)
            .map(|i| canonical_message("batch", format!("message {i}").as_bytes()))
            .collect();
        let signatures = signers
            .iter()
            .zip(&messages)
            .map(|(s, m)| s.sign(m))
            .collect();
        Batch {
            keys: signers.iter().map(|s| s.public_key()).collect(),
            messages,
            signatures,
        }
    }

    fn verify(&self) -> Result<(), BatchVerifyError> {
        let items: Vec<SignedItem<'_>> = (0..self.keys.len())
            .map(|i| SignedItem {
                key: &self.keys[i],
                message: &self.messages[i],
                signature: &self.signatures[i],
            })
            .collect();
        Ed25519Verifier.verify_batch(&items)
    }
}

#[test]
fn empty_batch_verifies() {
    assert_eq!(Batch::valid(0).verify(), Ok(()));
}

#[test]
fn batch_of_valid_signatures_verifies() {
    for len in [1, 2, 3, 17, 64] {
        assert_eq!(Batch::valid(len).verify(), Ok(()), "len {len}");
    }
}

#[test]
fn batch_with_one_bad_item_names_its_index() {
    for len in [1, 2, 5, 16] {
        for bad in 0..len {
            let mut batch = Batch::valid(len);
            batch.messages[bad].push(b'!');
            assert_eq!(
                batch.verify(),
                Err(BatchVerifyError {
                    index: bad,
                    reason: VerifyError::BadSignature
                }),
                "len {len}, bad {bad}"
            );
        }
    }
}

#[test]
fn batch_with_several_bad_items_names_the_first() {
    let mut batch = Batch::valid(10);
    batch.signatures[7].0[40] ^= 1;
    batch.keys[3] = key(99).public_key();
    batch.keys[8] = off_curve_key();
    assert_eq!(
        batch.verify(),
        Err(BatchVerifyError {
            index: 3,
            reason: VerifyError::BadSignature
        })
    );
}

#[test]
fn batch_with_malformed_key_names_its_index() {
    let mut batch = Batch::valid(6);
    batch.keys[4] = off_curve_key();
    let err = batch.verify().unwrap_err();
    assert_eq!(
        err,
        BatchVerifyError {
            index: 4,
            reason: VerifyError::MalformedKey
        }
    );
    assert_eq!(
        err.to_string(),
        "batch item 4 failed verification: public key is malformed: not a valid key for this signature scheme"
    );
}

/// The cofactorless batch equation alone would accept this item; the batch must refuse it exactly
/// as single verification does.
#[test]
fn batch_rejects_weak_key_signature_that_single_verification_rejects() {
    let mut batch = Batch::valid(4);
    batch.keys[2] = PublicKey(identity_point());
    let mut trivial = [0u8; 64];
    trivial[..32].copy_from_slice(&identity_point());
    batch.signatures[2] = Signature(trivial);
    assert_eq!(
        batch.verify(),
        Err(BatchVerifyError {
            index: 2,
            reason: VerifyError::MalformedKey
        })
    );
}

#[test]
fn batch_with_non_canonical_s_names_its_index() {
    let mut batch = Batch::valid(3);
    // s >= the group order is rejected by strict verification.
    batch.signatures[1].0[32..].copy_from_slice(&[0xff; 32]);
    assert_eq!(
        batch.verify(),
        Err(BatchVerifyError {
            index: 1,
            reason: VerifyError::BadSignature
        })
    );
}

proptest! {
    #[test]
    fn any_single_byte_flip_of_message_or_signature_fails_verification(
        seed in any::<[u8; 32]>(),
        message in proptest::collection::vec(any::<u8>(), 1..200),
        flip_signature in any::<bool>(),
        position in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let signer = IdentityKey::from_seed(seed);
        let key = signer.public_key();
        let mut signature = signer.sign(&message);
        let mut message = message;
        prop_assert_eq!(Ed25519Verifier.verify(&key, &message, &signature), Ok(()));
        if flip_signature {
            signature.0[position.index(64)] ^= mask;
        } else {
            let i = position.index(message.len());
            message[i] ^= mask;
        }
        prop_assert_eq!(
            Ed25519Verifier.verify(&key, &message, &signature),
            Err(VerifyError::BadSignature)
        );
        let items = [SignedItem { key: &key, message: &message, signature: &signature }];
        prop_assert!(Ed25519Verifier.verify_batch(&items).is_err());
    }
}
