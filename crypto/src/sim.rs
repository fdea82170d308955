//! A cheap deterministic stand-in for signatures, for the simulator only.
//!
//! **NEVER use this in production.** A "signature" here is a keyed blake3 MAC: whoever holds the
//! verifier holds every identity's secret and could sign as anyone. It cannot be forged *inside a
//! simulation* because only the owning [`SimKey`] and the shared [`SimVerifier`] hold the secret,
//! and simulated Byzantine replicas are only given their own keys. It exists because ed25519 is
//! far too slow to run hundreds of seeded simulations in the default test run; some seeds and
//! every multi-process test still use real ed25519 (docs/design.md §4).
//!
//! - public key = `blake3::derive_key("smr sim public key v1", seed)`
//! - secret = `blake3::derive_key("smr sim secret key v1", seed)`
//! - signature = `keyed_blake3(secret, message)` followed by
//!   `keyed_blake3(secret, "smr sim signature second half v1" || message)`, so that all 64 bytes
//!   are checked and a flip anywhere is detected.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{
    recheck_each, verify_each, BatchChecked, PublicKey, Signature, SignedItem, Signer, Verifier,
    VerifyError,
};

const PUBLIC_KEY_CONTEXT: &str = "smr sim public key v1";
const SECRET_KEY_CONTEXT: &str = "smr sim secret key v1";
const SECOND_HALF_TAG: &[u8] = b"smr sim signature second half v1";

fn mac(secret: &[u8; 32], message: &[u8]) -> Signature {
    let first = blake3::keyed_hash(secret, message);
    let mut hasher = blake3::Hasher::new_keyed(secret);
    hasher.update(SECOND_HALF_TAG);
    hasher.update(message);
    let second = hasher.finalize();
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(first.as_bytes());
    out[32..].copy_from_slice(second.as_bytes());
    Signature(out)
}

/// A simulator identity. NOT a real signature key; see the module docs.
#[derive(Clone)]
pub struct SimKey {
    public: PublicKey,
    secret: [u8; 32],
}

impl SimKey {
    /// The identity derived from `seed`.
    pub fn from_seed(seed: [u8; 32]) -> SimKey {
        SimKey {
            public: PublicKey(blake3::derive_key(PUBLIC_KEY_CONTEXT, &seed)),
            secret: blake3::derive_key(SECRET_KEY_CONTEXT, &seed),
        }
    }

    /// The public identity.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }
}

impl fmt::Debug for SimKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl Signer for SimKey {
    fn public_key(&self) -> PublicKey {
        self.public
    }

    fn sign(&self, message: &[u8]) -> Signature {
        mac(&self.secret, message)
    }
}

/// Checks [`SimKey`] signatures for the identities registered with it. An unregistered key is
/// [`VerifyError::UnknownKey`]. NOT for production; see the module docs.
#[derive(Clone, Default)]
pub struct SimVerifier {
    secrets: HashMap<PublicKey, [u8; 32]>,
}

impl SimVerifier {
    /// A verifier that knows no identities.
    pub fn new() -> Self {
        SimVerifier::default()
    }

    /// Teaches the verifier `key`'s identity.
    pub fn register(&mut self, key: &SimKey) {
        self.secrets.insert(key.public, key.secret);
    }

    /// How many identities are registered.
    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    /// Whether no identity is registered.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }
}

impl fmt::Debug for SimVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<&PublicKey> = self.secrets.keys().collect();
        keys.sort();
        f.debug_struct("SimVerifier").field("keys", &keys).finish()
    }
}

impl Verifier for SimVerifier {
    fn verify(
        &self,
        key: &PublicKey,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), VerifyError> {
        let secret = self.secrets.get(key).ok_or(VerifyError::UnknownKey)?;
        if mac(secret, message) == *signature {
            Ok(())
        } else {
            Err(VerifyError::BadSignature)
        }
    }

    fn check_batch(&self, items: &[SignedItem<'_>]) -> BatchChecked {
        BatchChecked {
            verdict: verify_each(self, items),
            rechecked: 0,
        }
    }
}

/// A [`SimVerifier`] whose batches behave as [`crate::Ed25519Verifier`]'s do, counting every
/// signature check it makes, for tests of the counters of signatures checked: a batch of two
/// or more is one check of all its items (counted once each), and when it fails the items are
/// checked again one by one up to the first bad one ([`recheck_each`], counted once each); a
/// batch of one is a single check. NOT for production; see the module docs.
#[derive(Debug, Default)]
pub struct CountingSimVerifier {
    inner: SimVerifier,
    checks: AtomicU64,
}

impl CountingSimVerifier {
    /// Counts the checks of `inner`'s identities.
    pub fn new(inner: SimVerifier) -> Self {
        CountingSimVerifier {
            inner,
            checks: AtomicU64::new(0),
        }
    }

    /// Signatures checked so far: each item of each batch, and each single check.
    pub fn checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }
}

impl Verifier for CountingSimVerifier {
    fn verify(
        &self,
        key: &PublicKey,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), VerifyError> {
        self.checks.fetch_add(1, Ordering::Relaxed);
        self.inner.verify(key, message, signature)
    }

    fn check_batch(&self, items: &[SignedItem<'_>]) -> BatchChecked {
        if items.len() <= 1 {
            // A batch of one is a single check, as ed25519's is.
            return BatchChecked {
                verdict: verify_each(self, items),
                rechecked: 0,
            };
        }
        self.checks.fetch_add(items.len() as u64, Ordering::Relaxed);
        let all_good = items.iter().all(|item| {
            self.inner
                .verify(item.key, item.message, item.signature)
                .is_ok()
        });
        if all_good {
            BatchChecked {
                verdict: Ok(()),
                rechecked: 0,
            }
        } else {
            recheck_each(self, items)
        }
    }
}
