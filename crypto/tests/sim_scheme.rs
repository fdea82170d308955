//! The simulator's keyed-blake3 stand-in: deterministic, cheap, and unforgeable inside a
//! simulation.

use proptest::prelude::*;
use smr_crypto::sim::{CountingSimVerifier, SimKey, SimVerifier};
use smr_crypto::{
    BatchChecked, BatchVerifyError, Ed25519Verifier, PublicKey, SignedItem, Signer, Verifier,
    VerifyError,
};

fn sim_key(n: u8) -> SimKey {
    SimKey::from_seed([n; 32])
}

fn verifier_for(keys: &[&SimKey]) -> SimVerifier {
    let mut verifier = SimVerifier::new();
    for key in keys {
        verifier.register(key);
    }
    verifier
}

#[test]
fn sim_signature_verifies_for_a_registered_key() {
    let key = sim_key(1);
    let verifier = verifier_for(&[&key]);
    let signature = key.sign(b"hello");
    assert_eq!(
        verifier.verify(&key.public_key(), b"hello", &signature),
        Ok(())
    );
    assert_eq!(Signer::public_key(&key), key.public_key());
}

#[test]
fn sim_public_key_is_the_documented_derivation() {
    let seed = [9u8; 32];
    assert_eq!(
        SimKey::from_seed(seed).public_key(),
        PublicKey(blake3::derive_key("smr sim public key v1", &seed))
    );
}

#[test]
fn sim_signing_is_deterministic_and_per_identity() {
    assert_eq!(sim_key(1).sign(b"m"), sim_key(1).sign(b"m"));
    assert_ne!(sim_key(1).sign(b"m"), sim_key(2).sign(b"m"));
    assert_ne!(sim_key(1).public_key(), sim_key(2).public_key());
}

#[test]
fn sim_tampered_message_fails_verification() {
    let key = sim_key(1);
    let verifier = verifier_for(&[&key]);
    let signature = key.sign(b"pay alice 10");
    assert_eq!(
        verifier.verify(&key.public_key(), b"pay alice 99", &signature),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn sim_signature_by_another_registered_key_fails_verification() {
    let (alice, mallory) = (sim_key(1), sim_key(2));
    let verifier = verifier_for(&[&alice, &mallory]);
    let forged = mallory.sign(b"from alice");
    assert_eq!(
        verifier.verify(&alice.public_key(), b"from alice", &forged),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn sim_unknown_key_is_rejected() {
    let (known, stranger) = (sim_key(1), sim_key(2));
    let verifier = verifier_for(&[&known]);
    let signature = stranger.sign(b"hello");
    assert_eq!(
        verifier.verify(&stranger.public_key(), b"hello", &signature),
        Err(VerifyError::UnknownKey)
    );
    assert_eq!(
        SimVerifier::new().verify(&known.public_key(), b"hello", &known.sign(b"hello")),
        Err(VerifyError::UnknownKey)
    );
}

#[test]
fn sim_signatures_are_not_ed25519_signatures() {
    let key = sim_key(1);
    let signature = key.sign(b"hello");
    assert!(Ed25519Verifier
        .verify(&key.public_key(), b"hello", &signature)
        .is_err());
}

#[test]
fn sim_batch_names_the_first_failing_index() {
    let keys: Vec<SimKey> = (0..5).map(sim_key).collect();
    let stranger = sim_key(100);
    let verifier = verifier_for(&keys.iter().collect::<Vec<_>>());
    let messages: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10]).collect();
    let mut signatures: Vec<_> = keys.iter().zip(&messages).map(|(k, m)| k.sign(m)).collect();
    let mut public: Vec<PublicKey> = keys.iter().map(|k| k.public_key()).collect();
    let items = |public: &[PublicKey], signatures: &[smr_crypto::Signature]| {
        verifier.verify_batch(
            &(0..5)
                .map(|i| SignedItem {
                    key: &public[i],
                    message: &messages[i],
                    signature: &signatures[i],
                })
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(items(&public, &signatures), Ok(()));
    public[4] = stranger.public_key();
    signatures[2].0[63] ^= 0x80;
    assert_eq!(
        items(&public, &signatures),
        Err(BatchVerifyError {
            index: 2,
            reason: VerifyError::BadSignature
        })
    );
    signatures[2].0[63] ^= 0x80;
    assert_eq!(
        items(&public, &signatures),
        Err(BatchVerifyError {
            index: 4,
            reason: VerifyError::UnknownKey
        })
    );
}

#[test]
fn sim_key_debug_does_not_print_the_secret() {
    let key = sim_key(1);
    let debug = format!("{key:?}");
    let secret = blake3::derive_key("smr sim secret key v1", &[1; 32]);
    assert!(!debug.contains(&hex::encode(&secret[..4])), "{debug}");
    assert!(format!("{:?}", verifier_for(&[&key])).contains("PublicKey("));
}

proptest! {
    #[test]
    fn sim_any_single_byte_flip_of_message_or_signature_fails_verification(
        seed in any::<[u8; 32]>(),
        message in proptest::collection::vec(any::<u8>(), 1..200),
        flip_signature in any::<bool>(),
        position in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let key = SimKey::from_seed(seed);
        let verifier = verifier_for(&[&key]);
        let mut signature = key.sign(&message);
        let mut message = message;
        prop_assert_eq!(verifier.verify(&key.public_key(), &message, &signature), Ok(()));
        if flip_signature {
            signature.0[position.index(64)] ^= mask;
        } else {
            let i = position.index(message.len());
            message[i] ^= mask;
        }
        prop_assert_eq!(
            verifier.verify(&key.public_key(), &message, &signature),
            Err(VerifyError::BadSignature)
        );
    }
}

/// Five messages signed by one sim key, and a forged signature to put in place of any of them.
struct FiveSigned {
    public: PublicKey,
    messages: Vec<Vec<u8>>,
    good: Vec<smr_crypto::Signature>,
    forged: smr_crypto::Signature,
}

impl FiveSigned {
    fn new(key: &SimKey) -> FiveSigned {
        let messages: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i]).collect();
        FiveSigned {
            public: key.public_key(),
            good: messages.iter().map(|m| key.sign(m)).collect(),
            messages,
            forged: sim_key(2).sign(b"x"),
        }
    }

    /// The five items, with the forged signature at the positions `bad`.
    fn items(&self, bad: &[usize]) -> Vec<SignedItem<'_>> {
        self.messages
            .iter()
            .enumerate()
            .map(|(i, message)| SignedItem {
                key: &self.public,
                message,
                signature: if bad.contains(&i) {
                    &self.forged
                } else {
                    &self.good[i]
                },
            })
            .collect()
    }
}

/// `verify_batch_then_each`: one batch, then one check per item after the first bad one; the
/// count is every signature submitted (the items after a failed batch twice).
#[test]
fn batch_then_each_checks_only_what_follows_the_first_bad_item() {
    let key = sim_key(1);
    let verifier = verifier_for(&[&key]);
    let five = FiveSigned::new(&key);
    let items = |bad: &[usize]| five.items(bad);
    let bad = Err(VerifyError::BadSignature);
    assert_eq!(
        smr_crypto::verify_batch_then_each(&verifier, &items(&[])),
        (vec![Ok(()); 5], 5)
    );
    assert_eq!(
        smr_crypto::verify_batch_then_each(&verifier, &items(&[1, 3])),
        (
            vec![Ok(()), bad.clone(), Ok(()), bad.clone(), Ok(())],
            5 + 3
        )
    );
    assert_eq!(
        smr_crypto::verify_batch_then_each(&verifier, &items(&[4])),
        (vec![Ok(()), Ok(()), Ok(()), Ok(()), bad.clone()], 5)
    );
    assert_eq!(
        smr_crypto::verify_batch_then_each(&verifier, &[]),
        (Vec::new(), 0)
    );

    /// Names an item past the batch: a broken contract, so nothing is trusted.
    struct PastTheEnd;
    impl Verifier for PastTheEnd {
        fn verify(
            &self,
            _: &PublicKey,
            _: &[u8],
            _: &smr_crypto::Signature,
        ) -> Result<(), VerifyError> {
            Ok(())
        }
        fn check_batch(&self, items: &[SignedItem<'_>]) -> BatchChecked {
            BatchChecked {
                verdict: Err(BatchVerifyError {
                    index: items.len(),
                    reason: VerifyError::UnknownKey,
                }),
                rechecked: 0,
            }
        }
    }
    assert_eq!(
        smr_crypto::verify_batch_then_each(&PastTheEnd, &items(&[])),
        (vec![Err(VerifyError::UnknownKey); 5], 5)
    );
}

/// A verifier whose failed batch checks items again one by one to find the first bad one (as
/// ed25519's does) made more checks than `verify_batch_then_each` counted: the batch's items
/// and those after the first bad one, not the ones rechecked up to it. A run of 5 with bad
/// items at 1 and 3 costs 10 checks (5 in the batch, 2 rechecked, 3 after), and the count
/// said 8. Now the count is every check made, whatever the verifier's batch does.
#[test]
fn batch_then_each_counts_what_a_failed_batch_checks_again() {
    let key = sim_key(1);
    let verifier = CountingSimVerifier::new(verifier_for(&[&key]));
    let five = FiveSigned::new(&key);
    let items = |bad: &[usize]| five.items(bad);
    let bad = Err(VerifyError::BadSignature);
    // The batch fails at item 1: items 0 and 1 are checked again.
    assert_eq!(
        verifier.check_batch(&items(&[1, 3])),
        BatchChecked {
            verdict: Err(BatchVerifyError {
                index: 1,
                reason: VerifyError::BadSignature
            }),
            rechecked: 2,
        }
    );
    assert_eq!(verifier.checks(), 5 + 2);
    let before = verifier.checks();
    assert_eq!(
        smr_crypto::verify_batch_then_each(&verifier, &items(&[1, 3])),
        (
            vec![Ok(()), bad.clone(), Ok(()), bad.clone(), Ok(())],
            5 + 2 + 3
        )
    );
    assert_eq!(verifier.checks() - before, 10);
    // A good batch is checked once; a bad last item is rechecked with all before it.
    let before = verifier.checks();
    assert_eq!(
        smr_crypto::verify_batch_then_each(&verifier, &items(&[])),
        (vec![Ok(()); 5], 5)
    );
    assert_eq!(
        smr_crypto::verify_batch_then_each(&verifier, &items(&[4])),
        (vec![Ok(()), Ok(()), Ok(()), Ok(()), bad], 5 + 5)
    );
    assert_eq!(verifier.checks() - before, 5 + 10);
}
