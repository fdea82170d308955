//! The real scheme: ed25519 signing, strict verification, batch verification.

use std::sync::Arc;

use proptest::prelude::*;
use smr_crypto::{
    canonical_message, BatchChecked, BatchVerifyError, Ed25519Verifier, IdentityKey, PublicKey,
    Signature, SignedItem, Signer, Verifier, VerifyError,
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

    fn items(&self) -> Vec<SignedItem<'_>> {
        (0..self.keys.len())
            .map(|i| SignedItem {
                key: &self.keys[i],
                message: &self.messages[i],
                signature: &self.signatures[i],
            })
            .collect()
    }

    fn verify(&self) -> Result<(), BatchVerifyError> {
        Ed25519Verifier.verify_batch(&self.items())
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

/// Issue 12, item 6: validity is a function of the message alone. A signature whose `R` (or
/// key) carries a torsion component got one verdict from single verification and another from
/// about half of the batches it shared, so a Byzantine client could make correct replicas
/// disagree on a PROPOSE. Single and batch verification must now agree for every torsion point,
/// whatever the companions in the batch.
mod torsion {
    use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
    use curve25519_dalek::edwards::EdwardsPoint;
    use curve25519_dalek::scalar::Scalar;
    use sha2::{Digest as _, Sha512};

    use super::*;

    /// An ed25519 signature made by hand: nonce `r`, commitment `[r]B + r_torsion`, published
    /// key `[a]A + key_torsion`, `s = r + k a` with `k` hashed over the published `R` and key.
    /// With both torsion points the identity this is an ordinary signature.
    fn sign_by_hand(
        signer: &IdentityKey,
        message: &[u8],
        nonce: u64,
        r_torsion: EdwardsPoint,
        key_torsion: EdwardsPoint,
    ) -> (PublicKey, Signature) {
        let a = signer.as_dalek().to_scalar();
        let key = (ED25519_BASEPOINT_POINT * a + key_torsion)
            .compress()
            .to_bytes();
        let r = Scalar::from(nonce) * Scalar::from(0x9e37_79b9_7f4a_7c15u64) + Scalar::ONE;
        let big_r = (ED25519_BASEPOINT_POINT * r + r_torsion)
            .compress()
            .to_bytes();
        let k = Scalar::from_bytes_mod_order_wide(
            &Sha512::new()
                .chain_update(big_r)
                .chain_update(key)
                .chain_update(message)
                .finalize()
                .into(),
        );
        let s = r + k * a;
        let mut signature = [0u8; 64];
        signature[..32].copy_from_slice(&big_r);
        signature[32..].copy_from_slice(s.as_bytes());
        (PublicKey(key), Signature(signature))
    }

    /// Checks that `verify_batch` gives `(key, message, signature)` the verdict `verify` gives
    /// it, in `runs` batches with different companions, sizes and positions. Returns the
    /// single verdict.
    fn batch_agrees_with_single(
        key: &PublicKey,
        message: &[u8],
        signature: &Signature,
        runs: u64,
    ) -> Result<(), VerifyError> {
        let single = Ed25519Verifier.verify(key, message, signature);
        for run in 0..runs {
            let companions: Vec<(PublicKey, Vec<u8>, Signature)> = (0..1 + run % 5)
                .map(|c| {
                    let signer = IdentityKey::from_seed([(run * 7 + c) as u8; 32]);
                    let text = format!("companion {c} of run {run}").into_bytes();
                    let signature = signer.sign(&text);
                    (signer.public_key(), text, signature)
                })
                .collect();
            let position = (run as usize) % (companions.len() + 1);
            let mut items: Vec<SignedItem<'_>> = companions
                .iter()
                .map(|(key, message, signature)| SignedItem {
                    key,
                    message,
                    signature,
                })
                .collect();
            items.insert(
                position,
                SignedItem {
                    key,
                    message,
                    signature,
                },
            );
            let expected = single.clone().map_err(|reason| BatchVerifyError {
                index: position,
                reason,
            });
            assert_eq!(
                Ed25519Verifier.verify_batch(&items),
                expected,
                "run {run}: {} items, ours at {position}",
                items.len()
            );
        }
        single
    }

    const RUNS: u64 = 48;

    #[test]
    fn torsion_in_r_gets_the_same_verdict_single_and_batched() {
        let signer = key(21);
        for (t, torsion) in EIGHT_TORSION.iter().enumerate() {
            let message = format!("request with R + T{t}").into_bytes();
            let (key, signature) = sign_by_hand(
                &signer,
                &message,
                t as u64 + 1,
                *torsion,
                EdwardsPoint::default(),
            );
            assert_eq!(key, signer.public_key());
            // Cofactored: the torsion component vanishes under [8], so the signer's own
            // signature with a torsioned R is valid, in every batch too.
            assert_eq!(
                batch_agrees_with_single(&key, &message, &signature, RUNS),
                Ok(()),
                "T{t}"
            );
            // Nobody else can add the torsion: k hashes R, so the same s no longer fits.
            let honest = signer.sign(&message);
            let mut mauled = honest.0;
            let r = curve25519_dalek::edwards::CompressedEdwardsY(mauled[..32].try_into().unwrap())
                .decompress()
                .unwrap();
            mauled[..32].copy_from_slice((r + torsion).compress().as_bytes());
            let expected = if t == 0 {
                Ok(())
            } else {
                Err(VerifyError::BadSignature)
            };
            assert_eq!(
                batch_agrees_with_single(&key, &message, &Signature(mauled), 8),
                expected,
                "mauled T{t}"
            );
        }
    }

    #[test]
    fn torsion_in_the_key_gets_the_same_verdict_single_and_batched() {
        let signer = key(22);
        for (t, torsion) in EIGHT_TORSION.iter().enumerate() {
            let message = format!("request under A + T{t}").into_bytes();
            let (key, signature) = sign_by_hand(
                &signer,
                &message,
                100 + t as u64,
                EdwardsPoint::default(),
                *torsion,
            );
            let expected = if t == 0 {
                Ok(())
            } else {
                // A mixed-order key is refused wherever it appears (crate docs).
                Err(VerifyError::MalformedKey)
            };
            assert_eq!(
                batch_agrees_with_single(&key, &message, &signature, RUNS),
                expected,
                "T{t}"
            );
            // With torsion in R as well.
            let (key, signature) =
                sign_by_hand(&signer, &message, 200 + t as u64, *torsion, *torsion);
            assert_eq!(
                batch_agrees_with_single(&key, &message, &signature, 8),
                expected,
                "T{t} in both"
            );
        }
    }

    #[test]
    fn honest_non_canonical_s_and_small_order_r_agree_too() {
        let signer = key(23);
        let message = b"an ordinary request".to_vec();
        let honest = signer.sign(&message);
        assert_eq!(
            batch_agrees_with_single(&signer.public_key(), &message, &honest, RUNS),
            Ok(())
        );

        // s + l: the same point equation, but s is not reduced.
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let s = Scalar::from_canonical_bytes(honest.0[32..].try_into().unwrap()).unwrap();
        let mut s_plus_l = [0u8; 32];
        let mut carry = 0u16;
        for i in 0..32 {
            let sum = s.as_bytes()[i] as u16 + L[i] as u16 + carry;
            s_plus_l[i] = sum as u8;
            carry = sum >> 8;
        }
        assert_eq!(carry, 0, "s + l < 2^254 fits in 32 bytes");
        let mut non_canonical = honest.0;
        non_canonical[32..].copy_from_slice(&s_plus_l);
        assert_eq!(
            batch_agrees_with_single(
                &signer.public_key(),
                &message,
                &Signature(non_canonical),
                RUNS
            ),
            Err(VerifyError::BadSignature)
        );

        // R of small order (each of the eight), any s.
        for (t, torsion) in EIGHT_TORSION.iter().enumerate() {
            let mut small_r = honest.0;
            small_r[..32].copy_from_slice(torsion.compress().as_bytes());
            assert_eq!(
                batch_agrees_with_single(&signer.public_key(), &message, &Signature(small_r), 8),
                Err(VerifyError::BadSignature),
                "R = T{t}"
            );
        }
    }
}

/// After a failed batch equation the verifier checks the items again one by one, up to the
/// first bad one, to name it; `check_batch` says how many, so that the counters of signatures
/// checked count them: a failed batch of n costs 2n checks in `verify_batch_then_each` (each
/// item twice), not the n + (n - 1 - index) that was counted. A batch of one, or one with an
/// item refused before the equation (a malformed key), is checked one by one from the start:
/// nothing is checked twice.
#[test]
fn a_failed_batch_says_how_many_items_it_checked_again() {
    for bad in 0..5 {
        let mut batch = Batch::valid(5);
        batch.messages[bad].push(b'!');
        let items = batch.items();
        assert_eq!(
            Ed25519Verifier.check_batch(&items),
            BatchChecked {
                verdict: Err(BatchVerifyError {
                    index: bad,
                    reason: VerifyError::BadSignature
                }),
                rechecked: bad + 1,
            },
            "bad {bad}"
        );
        let (verdicts, submitted) = smr_crypto::verify_batch_then_each(&Ed25519Verifier, &items);
        assert_eq!(verdicts[bad], Err(VerifyError::BadSignature));
        assert_eq!(submitted, 10, "bad {bad}");
    }
    let good = Batch::valid(5);
    assert_eq!(
        Ed25519Verifier.check_batch(&good.items()),
        BatchChecked {
            verdict: Ok(()),
            rechecked: 0
        }
    );
    let mut one = Batch::valid(1);
    one.messages[0].push(b'!');
    assert_eq!(Ed25519Verifier.check_batch(&one.items()).rechecked, 0);
    let mut malformed = Batch::valid(5);
    malformed.keys[3] = off_curve_key();
    assert_eq!(
        Ed25519Verifier.check_batch(&malformed.items()),
        BatchChecked {
            verdict: Err(BatchVerifyError {
                index: 3,
                reason: VerifyError::MalformedKey
            }),
            rechecked: 0,
        }
    );
}
