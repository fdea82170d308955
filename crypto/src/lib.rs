//! Identity keys, signatures, batch verification and digests for smr.
//!
//! Every other crate talks to cryptography through this one, so that the protocol engine never
//! names an ed25519 type and the simulator can swap in a cheap deterministic scheme:
//!
//! - [`PublicKey`], [`Signature`] and [`Digest`] are plain byte newtypes that serialize compactly
//!   (fixed-size tuples in binary formats, lowercase hex in human-readable ones such as TOML).
//! - [`Signer`] signs, [`Verifier`] checks one signature or a batch. A batch failure names the
//!   first failing item, so that the caller can reject exactly that message; and
//!   [`Verifier::check_batch`] says how many items a failed batch checked again to find it, so
//!   that counters of signatures checked count them.
//! - [`IdentityKey`] and [`Ed25519Verifier`] are the real scheme (ed25519, cofactored
//!   verification, batched when possible; a batch accepts exactly what single verification
//!   accepts, so validity never depends on what else shared the batch).
//!   [`IdentityKey::save`]/[`IdentityKey::load`] are the only file I/O.
//! - [`sim::SimKey`] and [`sim::SimVerifier`] are a keyed-blake3 stand-in for the deterministic
//!   simulator. They are not signatures and must never be used in production.
//! - [`canonical_message`] prefixes every signed payload with a domain-separation tag, so that a
//!   signature made for one purpose can never be replayed as another.
//!
//! # Which keys are valid
//!
//! An ed25519 public key is valid if it is canonically encoded (y < 2^255 - 19), a point of the
//! curve, not of small order (the eight torsion points, such as the identity `0100…00`, for
//! which anyone can make signatures), and of prime order (no torsion component: no honest key
//! generator makes one, and refusing them keeps one rule everywhere). Every parser checks it
//! ([`PublicKey::from_hex`], `FromStr`, the human-readable serde form, [`public_key_from_der`]),
//! and [`Ed25519Verifier`] checks the key of every signature it verifies. The binary serde form
//! is unchecked, because simulator identities ([`sim`]) are not curve points; a message's keys
//! count only through the verifier. Parsing a new key costs one variable-time scalar
//! multiplication (the order check); the verifier caches parsed keys per thread.
//!
//! There is no async and no global state here; everything is a pure function of its inputs
//! (except key generation, which reads the OS RNG).
//!
//! ```
//! use smr_crypto::{canonical_message, Ed25519Verifier, IdentityKey, SignedItem, Signer, Verifier};
//!
//! let replica = IdentityKey::from_seed([7; 32]);
//! let message = canonical_message("smr/accept/v1", b"cid=42 regency=0 hash=...");
//! let signature = replica.sign(&message);
//! let key = replica.public_key();
//! assert!(Ed25519Verifier.verify(&key, &message, &signature).is_ok());
//!
//! let items = [SignedItem { key: &key, message: &message, signature: &signature }];
//! assert!(Ed25519Verifier.verify_batch(&items).is_ok());
//! ```

#![warn(missing_docs)]

mod bytes;
mod ed25519;
mod keyfile;
pub mod sim;

pub use bytes::{canonical_message, digest, Digest, KeyError, PublicKey, Signature};
pub use ed25519::{public_key_from_der, public_key_to_der, Ed25519Verifier, IdentityKey};
pub use keyfile::KeyFileError;

use std::sync::Arc;

/// Why one signature was rejected.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// The signature does not verify for this key and message (tampered message, wrong key,
    /// forged or corrupted signature).
    #[error("signature does not verify for this key and message")]
    BadSignature,
    /// The public key bytes are not a valid key for this scheme (see "Which keys are valid":
    /// not canonical, not a curve point, of small order, or with a torsion component).
    #[error("public key is malformed: not a valid key for this signature scheme")]
    MalformedKey,
    /// The verifier does not know this key (simulator: the identity was never registered).
    #[error("public key is not known to this verifier")]
    UnknownKey,
}

/// Why a batch was rejected: the index of the first item that fails, and why it fails.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("batch item {index} failed verification: {reason}")]
pub struct BatchVerifyError {
    /// Index into the slice passed to [`Verifier::verify_batch`] of the first failing item.
    pub index: usize,
    /// Why that item fails.
    pub reason: VerifyError,
}

/// Something that can sign on behalf of one identity.
pub trait Signer: Send + Sync {
    /// The identity signatures are made under.
    fn public_key(&self) -> PublicKey;
    /// Signs `message` (normally the output of [`canonical_message`]).
    fn sign(&self, message: &[u8]) -> Signature;
}

/// One `(key, message, signature)` triple to check in a batch.
#[derive(Clone, Copy, Debug)]
pub struct SignedItem<'a> {
    /// The claimed signer.
    pub key: &'a PublicKey,
    /// The exact bytes that were signed.
    pub message: &'a [u8],
    /// The claimed signature.
    pub signature: &'a Signature,
}

/// Checks signatures.
pub trait Verifier: Send + Sync {
    /// Checks one signature.
    fn verify(
        &self,
        key: &PublicKey,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), VerifyError>;

    /// Verifies all items. On failure, names the FIRST failing item's index. An empty batch
    /// verifies. The verdict of [`Verifier::check_batch`].
    fn verify_batch(&self, items: &[SignedItem<'_>]) -> Result<(), BatchVerifyError> {
        self.check_batch(items).verdict
    }

    /// [`Verifier::verify_batch`]'s verdict, and how many items it checked a second time
    /// ([`BatchChecked::rechecked`]), so that counters of signatures checked count them.
    fn check_batch(&self, items: &[SignedItem<'_>]) -> BatchChecked;
}

/// What [`Verifier::check_batch`] found, and the checks beyond one per item it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchChecked {
    /// The batch's verdict, as [`Verifier::verify_batch`] returns it.
    pub verdict: Result<(), BatchVerifyError>,
    /// How many items were checked again, one by one, after the batch as a whole failed: the
    /// first `rechecked` items of the batch, each submitted to a second check (up to and
    /// including the first bad one, or all of them if none is bad alone). [`Ed25519Verifier`]
    /// rechecks after a failed batch equation; a verifier that checks a batch one by one from
    /// the start (the simulator's, a batch of one, an item refused before the equation)
    /// rechecks none.
    pub rechecked: usize,
}

impl BatchChecked {
    /// Signatures submitted to checks for a batch of `items`: each item once, plus the
    /// rechecked ones a second time. What every counter of signatures checked adds.
    pub fn submitted(&self, items: usize) -> usize {
        items + self.rechecked.min(items)
    }
}

/// [`verify_each`] after a batch check of `items` failed: its verdict, and as rechecked the
/// items it checked again (up to and including the first bad one, or all of them).
pub fn recheck_each<V: Verifier + ?Sized>(verifier: &V, items: &[SignedItem<'_>]) -> BatchChecked {
    let verdict = verify_each(verifier, items);
    let rechecked = match &verdict {
        Ok(()) => items.len(),
        Err(error) => error.index + 1,
    };
    BatchChecked { verdict, rechecked }
}

/// Verifies items one by one and returns the first failure: the reference semantics of
/// [`Verifier::verify_batch`], and the fallback that batch implementations use to find the index
/// ([`recheck_each`] after a failed batch check).
pub fn verify_each<V: Verifier + ?Sized>(
    verifier: &V,
    items: &[SignedItem<'_>],
) -> Result<(), BatchVerifyError> {
    for (index, item) in items.iter().enumerate() {
        verifier
            .verify(item.key, item.message, item.signature)
            .map_err(|reason| BatchVerifyError { index, reason })?;
    }
    Ok(())
}

/// One verdict per item of `items`, found with one [`Verifier::verify_batch`] and, if it fails,
/// one [`Verifier::verify`] per item after the first bad one: the items before it verified in
/// the batch, that one fails for the reason the batch gives, and the ones after it are checked
/// on their own. A bad signature costs one failed batch, not a second check of every item, and
/// a run of bad ones costs at most two checks each, not a batch over what follows each of them
/// (n bad signatures would cost n(n+1)/2).
///
/// Also returns how many signatures were submitted to a check: the batch's items, plus those
/// the verifier checked again to find the first bad one ([`BatchChecked::rechecked`]), plus
/// each item checked on its own after it. With [`Ed25519Verifier`] a failed batch of n items
/// thus counts 2n, each item twice; with the simulator's, n plus the items after the first bad
/// one. An empty `items` submits none. A verifier whose failed batch names an index past the batch
/// breaks its contract: every item then gets that failure, rather than being trusted.
pub fn verify_batch_then_each<V: Verifier + ?Sized>(
    verifier: &V,
    items: &[SignedItem<'_>],
) -> (Vec<Result<(), VerifyError>>, usize) {
    let mut verdicts: Vec<Result<(), VerifyError>> = vec![Ok(()); items.len()];
    if items.is_empty() {
        return (verdicts, 0);
    }
    let checked = verifier.check_batch(items);
    let mut submitted = checked.submitted(items.len());
    if let Err(BatchVerifyError { index, reason }) = checked.verdict {
        match verdicts.get_mut(index) {
            Some(bad) => {
                *bad = Err(reason);
                for (verdict, item) in verdicts[index + 1..].iter_mut().zip(&items[index + 1..]) {
                    submitted += 1;
                    *verdict = verifier.verify(item.key, item.message, item.signature);
                }
            }
            None => verdicts.fill(Err(reason)),
        }
    }
    (verdicts, submitted)
}

macro_rules! forward_through_pointer {
    ($($pointer:ident),*) => {$(
        impl<S: Signer + ?Sized> Signer for $pointer<S> {
            fn public_key(&self) -> PublicKey {
                (**self).public_key()
            }
            fn sign(&self, message: &[u8]) -> Signature {
                (**self).sign(message)
            }
        }

        impl<V: Verifier + ?Sized> Verifier for $pointer<V> {
            fn verify(
                &self,
                key: &PublicKey,
                message: &[u8],
                signature: &Signature,
            ) -> Result<(), VerifyError> {
                (**self).verify(key, message, signature)
            }
            fn verify_batch(&self, items: &[SignedItem<'_>]) -> Result<(), BatchVerifyError> {
                (**self).verify_batch(items)
            }
            fn check_batch(&self, items: &[SignedItem<'_>]) -> BatchChecked {
                (**self).check_batch(items)
            }
        }
    )*};
}

forward_through_pointer!(Arc, Box);
