//! The real scheme: ed25519 identities, cofactored single verification, batched verification
//! that accepts exactly what single verification accepts, and the SubjectPublicKeyInfo encoding
//! that pins a TLS certificate to an identity.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::OsRng;
use sha2::{Digest as _, Sha512};

use crate::keyfile::{self, KeyFileError};
use crate::{
    recheck_each, verify_each, BatchChecked, KeyError, PublicKey, Signature, SignedItem, Signer,
    Verifier, VerifyError,
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
        keyfile::write_secret(path, &self.signing.to_bytes(), keyfile::Existing::Replace)
    }

    /// Writes the key as [`IdentityKey::save`] does, but only where no file is yet.
    ///
    /// # Errors
    /// [`KeyFileError::Exists`] if `path` exists (it is left as it was), or
    /// [`KeyFileError::Io`].
    pub fn save_new(&self, path: &Path) -> Result<(), KeyFileError> {
        keyfile::write_secret(path, &self.signing.to_bytes(), keyfile::Existing::Keep)
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
/// certificate), validated as [`PublicKey::from_ed25519_bytes`] does.
///
/// # Errors
/// [`KeyError::NotEd25519Spki`] if the bytes are not exactly that shape, and the errors of
/// [`PublicKey::from_ed25519_bytes`] if the key in it is not valid.
pub fn public_key_from_der(spki_der: &[u8]) -> Result<PublicKey, KeyError> {
    if spki_der.len() != SPKI_LEN || spki_der[..SPKI_PREFIX.len()] != SPKI_PREFIX {
        return Err(KeyError::NotEd25519Spki);
    }
    let key: [u8; 32] = spki_der[SPKI_PREFIX.len()..]
        .try_into()
        .map_err(|_| KeyError::NotEd25519Spki)?;
    PublicKey::from_ed25519_bytes(key)
}

/// The 44-byte ed25519 SubjectPublicKeyInfo of `key`.
pub fn public_key_to_der(key: &PublicKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(SPKI_LEN);
    out.extend_from_slice(&SPKI_PREFIX);
    out.extend_from_slice(key.as_bytes());
    out
}

/// Verifies real ed25519 signatures. Validity is a function of `(key, message, signature)`
/// alone: batch and single verification give the same verdict, whatever else shares the batch
/// and whatever the caches hold (docs/design.md §3.6).
///
/// - [`Verifier::verify`] is **cofactored** (as ZIP-215 and RFC 8032 §5.1.7 allow): it accepts
///   iff `[8]([s]B - [k]A - R)` is the identity, `k = SHA-512(R || A || M)`, after cheap
///   pre-checks: `s` canonical (`s < l`), `R` canonically encoded and not of small order, and
///   the key valid ([`PublicKey::from_ed25519_bytes`]: canonical, not small order, no torsion
///   component).
/// - [`Verifier::verify_batch`] applies the same pre-checks to every item, then runs
///   `ed25519_dalek::verify_batch`, which checks `sum z_i ([s_i]B - [k_i]A_i - R_i) = 0` for
///   128-bit `z_i` derived from a transcript of all items. If anything fails it verifies one by
///   one, so the error names the first failing item exactly as `verify` would; after a failed
///   batch equation, [`Verifier::check_batch`] counts the items so checked again as rechecked.
///
/// Why they agree. Write `D_i = [s_i]B - [k_i]A_i - R_i = P_i + T_i`, with `P_i` in the
/// prime-order subgroup and `T_i` a torsion point. A batch accepts only if `sum z_i P_i = 0`,
/// which, for `z_i` the items cannot choose, means every `P_i = 0` except with probability
/// about 2^-128; and `P_i = 0` is exactly the cofactored equation `[8]D_i = 0`. So a batch
/// accepts only items `verify` accepts, and whatever a batch rejects is decided by `verify`.
/// A cofactorless single check (dalek's `verify_strict`) would not agree: it rejects
/// `T_i != 0`, which a cofactorless batch misses whenever `z_i T_i = 0` (half the time for an
/// order-2 `T_i`).
///
/// Accepting a torsion component in `R` lets a signer make several valid signatures of one
/// message (never a third party, since `k` hashes `R`); signature bytes are never used as an
/// identity here, the signed message is hashed instead.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ed25519Verifier;

/// The checks every key gets, from any source: canonical encoding, on the curve, not of small
/// order, of prime order. Returns the decompressed point.
pub(crate) fn validate_key(bytes: &[u8; 32]) -> Result<EdwardsPoint, KeyError> {
    if !is_canonical_y(bytes) {
        return Err(KeyError::NotCanonical);
    }
    let point = CompressedEdwardsY(*bytes)
        .decompress()
        .ok_or(KeyError::NotOnCurve)?;
    // The sign bit with x = 0 is the other non-canonical case; x = 0 only for y = 1 and
    // y = -1, both of small order, which this check catches whatever the sign bit.
    if is_small_order_encoding(bytes) {
        return Err(KeyError::WeakKey);
    }
    if !is_torsion_free(&point) {
        return Err(KeyError::MixedOrder);
    }
    Ok(point)
}

/// `8^-1 mod l`, little-endian.
const INVERSE_OF_EIGHT: [u8; 32] = [
    0x79, 0x2f, 0xdc, 0xe2, 0x29, 0xe5, 0x06, 0x61, 0xd0, 0xda, 0x1c, 0x7d, 0xb3, 0x9d, 0xd3, 0x07,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x06,
];

/// Whether `point` has no torsion component, in variable time (a key is public): with
/// `c = 8^-1 mod l`, `[8][c](P + T) = P` for `P` of order `l` and any torsion point `T`, so
/// the point is torsion-free iff `[8][c]` maps it to itself. About half the cost of dalek's
/// constant-time `is_torsion_free`, which multiplies by `l`.
fn is_torsion_free(point: &EdwardsPoint) -> bool {
    let inverse_of_eight = Scalar::from_bytes_mod_order(INVERSE_OF_EIGHT);
    EdwardsPoint::vartime_double_scalar_mul_basepoint(&inverse_of_eight, point, &Scalar::ZERO)
        .mul_by_cofactor()
        == *point
}

/// A key ready for verification: the dalek key (for batches) and `-A` (for single checks).
#[derive(Clone, Copy, Debug)]
struct ParsedKey {
    dalek: VerifyingKey,
    minus_a: EdwardsPoint,
}

fn parse_key(key: &PublicKey) -> Result<ParsedKey, VerifyError> {
    let point = validate_key(key.as_bytes()).map_err(|_| VerifyError::MalformedKey)?;
    let dalek = VerifyingKey::from_bytes(key.as_bytes()).map_err(|_| VerifyError::MalformedKey)?;
    Ok(ParsedKey {
        dalek,
        minus_a: -point,
    })
}

/// Keys parsed on this thread, at most this many.
const MAX_CACHED_KEYS: usize = 4096;

thread_local! {
    /// Valid keys already parsed on this thread. Decompressing a key and checking its order
    /// costs about a fifth of a batched verification, and a replica sees the same few replica
    /// and client keys over and over. Per thread, so verify workers never contend; bounded, and
    /// emptied when full, so a flood of fresh keys costs memory only up to the bound.
    static PARSED_KEYS: RefCell<HashMap<[u8; 32], ParsedKey>> = RefCell::new(HashMap::new());
}

/// [`parse_key`], remembering valid keys (see [`PARSED_KEYS`]).
fn parse_key_cached(key: &PublicKey) -> Result<ParsedKey, VerifyError> {
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

/// The pre-checks on `R`, the same in single and batch verification: canonically encoded and
/// not of small order. Both are checks on the bytes (no point decompression); an `R` that is
/// not on the curve at all fails the batch, and the one-by-one fallback then names it.
fn r_is_acceptable(signature: &Signature) -> bool {
    let r: [u8; 32] = signature.0[..32].try_into().expect("R is 32 bytes");
    is_canonical_y(&r) && !is_small_order_encoding(&r)
}

/// The cofactored check of one signature under a validated key: the pre-checks on `R` and
/// `s`, then `[8]([s]B - [k]A - R) == identity`.
fn verify_cofactored(
    key_bytes: &[u8; 32],
    key: &ParsedKey,
    message: &[u8],
    signature: &Signature,
) -> Result<(), VerifyError> {
    if !r_is_acceptable(signature) {
        return Err(VerifyError::BadSignature);
    }
    let r_bytes: [u8; 32] = signature.0[..32].try_into().expect("R is 32 bytes");
    let s_bytes: [u8; 32] = signature.0[32..].try_into().expect("s is 32 bytes");
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes))
        .ok_or(VerifyError::BadSignature)?;
    let r = CompressedEdwardsY(r_bytes)
        .decompress()
        .ok_or(VerifyError::BadSignature)?;
    let mut hash = Sha512::new();
    hash.update(r_bytes);
    hash.update(key_bytes);
    hash.update(message);
    let k = Scalar::from_bytes_mod_order_wide(&hash.finalize().into());
    let sb_minus_ka = EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &key.minus_a, &s);
    if (sb_minus_ka - r).mul_by_cofactor().is_identity() {
        Ok(())
    } else {
        Err(VerifyError::BadSignature)
    }
}

impl Verifier for Ed25519Verifier {
    fn verify(
        &self,
        key: &PublicKey,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), VerifyError> {
        let parsed = parse_key_cached(key)?;
        verify_cofactored(key.as_bytes(), &parsed, message, signature)
    }

    fn check_batch(&self, items: &[SignedItem<'_>]) -> BatchChecked {
        let one_by_one = |verdict| BatchChecked {
            verdict,
            rechecked: 0,
        };
        if items.len() <= 1 {
            return one_by_one(verify_each(self, items));
        }
        let mut keys = Vec::with_capacity(items.len());
        for item in items {
            match parse_key_cached(item.key) {
                Ok(key) if r_is_acceptable(item.signature) => keys.push(key.dalek),
                _ => return one_by_one(verify_each(self, items)),
            }
        }
        let messages: Vec<&[u8]> = items.iter().map(|item| item.message).collect();
        let signatures: Vec<ed25519_dalek::Signature> = items
            .iter()
            .map(|item| ed25519_dalek::Signature::from_bytes(item.signature.as_bytes()))
            .collect();
        // Accepts only what `verify` accepts (see the type's docs); on failure `verify` decides,
        // and what it checks again is counted.
        match ed25519_dalek::verify_batch(&messages, &signatures, &keys) {
            Ok(()) => one_by_one(Ok(())),
            Err(_) => recheck_each(self, items),
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
    fn inverse_of_eight_and_the_torsion_check_match_dalek() {
        let c = Scalar::from_bytes_mod_order(INVERSE_OF_EIGHT);
        assert_eq!(c * Scalar::from(8u8), Scalar::ONE);
        use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
        for (i, torsion) in EIGHT_TORSION.iter().enumerate() {
            for k in 1..4u8 {
                let point = ED25519_BASEPOINT_POINT * Scalar::from(k) + torsion;
                assert_eq!(
                    is_torsion_free(&point),
                    point.is_torsion_free(),
                    "T{i}, k {k}"
                );
                assert_eq!(is_torsion_free(&point), i == 0);
            }
        }
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
        assert!(!r_is_acceptable(&Signature(identity)));
        let honest = IdentityKey::from_seed([7; 32]).sign(b"hello");
        assert!(r_is_acceptable(&honest));
    }
}
