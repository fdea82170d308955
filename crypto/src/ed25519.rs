//! The real scheme: ed25519 identities, strict single verification, batched verification, and
//! the SubjectPublicKeyInfo encoding that pins a TLS certificate to an identity.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::OsRng;

use crate::keyfile::{self, KeyFileError};
use crate::{
    verify_each, BatchVerifyError, PublicKey, Signature, SignedItem, Signer, Verifier, VerifyError,
};

/// An ed25519 identity: the secret signing key of one replica or client.
///
/// `Debug` prints only the public key; the secret never appears in logs.
#[derive(Clone)]
pub struct IdentityKey {
    signing: SigningKey,
}

impl IdentityKey {
    /// A fresh key from the operating system's RNG.
    pub fn generate() -> IdentityKey {
        IdentityKey {
            signing: SigningKey::generate(&mut OsRng),
        }
    }

    /// A deterministic key from a 32-byte seed (the ed25519 secret key itself). For tests and
    /// reproducible setups; a guessable seed is a guessable key.
    pub fn from_seed(seed: [u8; 32]) -> IdentityKey {
        IdentityKey {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key().to_bytes())
    }

    /// The secret key as PKCS#8 v2 DER, for building a self-signed TLS certificate with rcgen.
    pub fn to_pkcs8_der(&self) -> Vec<u8> {
        self.signing
            .to_pkcs8_der()
            .expect("encoding a valid ed25519 key as PKCS#8 cannot fail")
            .as_bytes()
            .to_vec()
    }

    /// Writes the secret key to `path` as text: the line `smr-ed25519-secret-key-v1`, then 64 hex
    /// characters. On unix the file is readable by its owner only (0600). An existing file is
    /// replaced atomically (write to a temporary file in the same directory, then rename).
    pub fn save(&self, path: &Path) -> Result<(), KeyFileError> {
        keyfile::write_secret(path, &self.signing.to_bytes())
    }

    /// Reads a key written by [`IdentityKey::save`]. Errors name the file and what is wrong with
    /// it, without echoing secret material.
    pub fn load(path: &Path) -> Result<IdentityKey, KeyFileError> {
        keyfile::read_secret(path).map(IdentityKey::from_seed)
    }

    /// Direct access to the dalek key, for code that must hand it to another library.
    pub fn as_dalek(&self) -> &SigningKey {
        &self.signing
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKey")
            .field("public", &self.public_key())
            .finish_non_exhaustive()
    }
}

impl Signer for IdentityKey {
    fn public_key(&self) -> PublicKey {
        IdentityKey::public_key(self)
    }

    fn sign(&self, message: &[u8]) -> Signature {
        use ed25519_dalek::Signer as _;
        Signature(self.signing.sign(message).to_bytes())
    }
}

/// The DER prefix of an ed25519 SubjectPublicKeyInfo: SEQUENCE { SEQUENCE { OID 1.3.101.112 },
/// BIT STRING (0 unused bits) }, after which come the 32 key bytes.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Length of an ed25519 SubjectPublicKeyInfo in DER.
pub const SPKI_LEN: usize = 44;

/// Extracts the key from a 44-byte ed25519 SubjectPublicKeyInfo (what rustls reports for a peer
/// certificate). `None` if the bytes are not exactly that shape.
pub fn public_key_from_der(spki_der: &[u8]) -> Option<PublicKey> {
    if spki_der.len() != SPKI_LEN || spki_der[..SPKI_PREFIX.len()] != SPKI_PREFIX {
        return None;
    }
    let key: [u8; 32] = spki_der[SPKI_PREFIX.len()..].try_into().ok()?;
    Some(PublicKey(key))
}

/// The 44-byte ed25519 SubjectPublicKeyInfo of `key`.
pub fn public_key_to_der(key: &PublicKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(SPKI_LEN);
    out.extend_from_slice(&SPKI_PREFIX);
    out.extend_from_slice(key.as_bytes());
    out
}

/// Verifies real ed25519 signatures.
///
/// - [`Verifier::verify`] uses dalek's `verify_strict`: it rejects weak (small-order) keys,
///   small-order or non-canonical `R`, and non-canonical `s`.
/// - [`Verifier::verify_batch`] first applies those same cheap per-item checks, then runs
///   `ed25519_dalek::verify_batch` over everything. If anything fails it falls back to verifying
///   one by one, so the error names the first failing item exactly as `verify` would.
///
/// One residual difference remains, inherent to cofactorless batch verification: a signature
/// whose `R` (or a key) has a mixed-order torsion component is always rejected by `verify` but
/// may be accepted by `verify_batch`. Honest signers never produce one, so this is signature
/// malleability (never forgery under an honest key). `verify_batch` is deterministic in its
/// input list, so replicas checking the same certificate as one batch agree on the verdict.
/// Never use signature bytes as an identity; hash the signed message instead.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ed25519Verifier;

fn parse_key(key: &PublicKey) -> Result<VerifyingKey, VerifyError> {
    let key = VerifyingKey::from_bytes(key.as_bytes()).map_err(|_| VerifyError::MalformedKey)?;
    if key.is_weak() {
        return Err(VerifyError::MalformedKey);
    }
    Ok(key)
}

/// Keys parsed on this thread, at most this many.
const MAX_CACHED_KEYS: usize = 4096;

thread_local! {
    /// Valid keys already parsed on this thread. Decompressing a key and checking its order
    /// costs about a fifth of a batched verification, and a replica sees the same few replica
    /// and client keys over and over. Per thread, so verify workers never contend; bounded, and
    /// emptied when full, so a flood of fresh keys costs memory only up to the bound.
    static PARSED_KEYS: RefCell<HashMap<[u8; 32], VerifyingKey>> = RefCell::new(HashMap::new());
}

/// [`parse_key`], remembering valid keys (see [`PARSED_KEYS`]).
fn parse_key_cached(key: &PublicKey) -> Result<VerifyingKey, VerifyError> {
    PARSED_KEYS.with(|cache| {
        if let Some(parsed) = cache.borrow().get(key.as_bytes()) {
            return Ok(*parsed);
        }
        let parsed = parse_key(key)?;
        let mut cache = cache.borrow_mut();
        if cache.len() >= MAX_CACHED_KEYS {
            cache.clear();
        }
        cache.insert(*key.as_bytes(), parsed);
        Ok(parsed)
    })
}

/// The canonical encodings of the curve's eight points of small order, with the sign bit
/// cleared: 0 (order 4, both signs of x), 1 (the identity), two points of order 8 (both signs
/// of x each), and p-1 (order 2). The same list as libsodium's `has_small_order`; the test
/// `small_order_blacklist_is_exactly_the_torsion_points` derives it from the curve.
const SMALL_ORDER_ENCODINGS: [[u8; 32]; 5] = [
    [0; 32],
    [
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ],
    [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc, 0x05,
    ],
    [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0x7a,
    ],
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
];

/// Whether a canonically encoded point is one of small order, without decompressing it.
fn is_small_order_encoding(encoded: &[u8; 32]) -> bool {
    let mut unsigned = *encoded;
    unsigned[31] &= 0x7f;
    SMALL_ORDER_ENCODINGS.contains(&unsigned)
}

/// Whether a compressed Edwards y-coordinate is the canonical encoding (y < p = 2^255 - 19).
/// The top bit is the sign of x and does not count.
fn is_canonical_y(encoded: &[u8; 32]) -> bool {
    // Non-canonical means y >= p: bytes 1..31 all 0xff, the top byte 0x7f (sign bit masked),
    // and the low byte >= 0xed.
    let top_is_max = encoded[31] & 0x7f == 0x7f;
    let middle_is_max = encoded[1..31].iter().all(|&b| b == 0xff);
    !(top_is_max && middle_is_max && encoded[0] >= 0xed)
}

/// The checks `verify_strict` makes on `R` that a cofactorless batch equation does not: `R` must
/// be canonically encoded and not of small order. Both are checks on the bytes (no point
/// decompression, which the batch equation does anyway); an `R` that is not on the curve at all
/// fails the batch, and the one-by-one fallback then names it.
fn strict_r_is_acceptable(signature: &Signature) -> bool {
    let r: [u8; 32] = signature.0[..32].try_into().expect("R is 32 bytes");
    is_canonical_y(&r) && !is_small_order_encoding(&r)
}

impl Verifier for Ed25519Verifier {
    fn verify(
        &self,
        key: &PublicKey,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), VerifyError> {
        let key = parse_key_cached(key)?;
        let signature = ed25519_dalek::Signature::from_bytes(signature.as_bytes());
        key.verify_strict(message, &signature)
            .map_err(|_| VerifyError::BadSignature)
    }

    fn verify_batch(&self, items: &[SignedItem<'_>]) -> Result<(), BatchVerifyError> {
        if items.len() <= 1 {
            return verify_each(self, items);
        }
        let mut keys = Vec::with_capacity(items.len());
        for item in items {
            match parse_key_cached(item.key) {
                Ok(key) if strict_r_is_acceptable(item.signature) => keys.push(key),
                _ => return verify_each(self, items),
            }
        }
        let messages: Vec<&[u8]> = items.iter().map(|item| item.message).collect();
        let signatures: Vec<ed25519_dalek::Signature> = items
            .iter()
            .map(|item| ed25519_dalek::Signature::from_bytes(item.signature.as_bytes()))
            .collect();
        match ed25519_dalek::verify_batch(&messages, &signatures, &keys) {
            Ok(()) => Ok(()),
            Err(_) => verify_each(self, items),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_y_accepts_values_below_p_and_rejects_the_rest() {
        let mut p_minus_one = [0xffu8; 32];
        p_minus_one[0] = 0xec;
        p_minus_one[31] = 0x7f;
        assert!(is_canonical_y(&p_minus_one));
        let mut with_sign_bit = p_minus_one;
        with_sign_bit[31] |= 0x80;
        assert!(is_canonical_y(&with_sign_bit));

        for low in 0xed..=0xff {
            let mut y = p_minus_one;
            y[0] = low;
            assert!(!is_canonical_y(&y), "y = p + {}", low - 0xed);
            y[31] |= 0x80;
            assert!(!is_canonical_y(&y), "y = p + {} with sign bit", low - 0xed);
        }
        assert!(is_canonical_y(&[0u8; 32]));
    }

    #[test]
    fn small_order_blacklist_is_exactly_the_torsion_points() {
        use curve25519_dalek::constants::EIGHT_TORSION;
        // Every point of small order is caught...
        for point in EIGHT_TORSION {
            let encoded = point.compress().to_bytes();
            assert!(is_small_order_encoding(&encoded), "{encoded:02x?}");
        }
        // ...and nothing else: each entry, with either sign bit, decodes to a weak point or not
        // at all (x = 0 with the sign bit set), and the entries name all eight points.
        let mut points = std::collections::BTreeSet::new();
        for entry in SMALL_ORDER_ENCODINGS {
            for sign in [0u8, 0x80] {
                let mut encoded = entry;
                encoded[31] |= sign;
                if let Ok(point) = VerifyingKey::from_bytes(&encoded) {
                    assert!(point.is_weak(), "{encoded:02x?}");
                    points.insert(point.to_edwards().compress().to_bytes());
                }
            }
        }
        assert_eq!(points.len(), 8);
        assert!(!is_small_order_encoding(
            IdentityKey::from_seed([3; 32]).public_key().as_bytes()
        ));
    }

    #[test]
    fn a_cached_key_is_checked_like_a_fresh_one() {
        let signer = IdentityKey::from_seed([5; 32]);
        let signature = signer.sign(b"m");
        for _ in 0..2 {
            assert_eq!(
                Ed25519Verifier.verify(&signer.public_key(), b"m", &signature),
                Ok(())
            );
            assert_eq!(
                Ed25519Verifier.verify(&signer.public_key(), b"n", &signature),
                Err(VerifyError::BadSignature)
            );
        }
        // Weak keys are refused every time, never cached as valid.
        for _ in 0..2 {
            assert_eq!(
                parse_key_cached(&PublicKey([0; 32])).unwrap_err(),
                VerifyError::MalformedKey
            );
        }
    }

    #[test]
    fn small_order_r_is_not_acceptable_for_batching() {
        // The identity point (y = 1) has order 1.
        let mut identity = [0u8; 64];
        identity[0] = 1;
        assert!(!strict_r_is_acceptable(&Signature(identity)));
        let honest = IdentityKey::from_seed([7; 32]).sign(b"hello");
        assert!(strict_r_is_acceptable(&honest));
    }
}
