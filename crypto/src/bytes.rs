//! Byte newtypes: public keys, signatures, digests, and the canonical signed-message encoding.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};

/// Why a key could not be parsed.
///
/// Every ed25519 public key that enters through a parser is checked the same way
/// ([`PublicKey::from_ed25519_bytes`]): canonically encoded, a curve point, not of small order,
/// and of prime order (no torsion component). See the crate docs, "Which keys are valid".
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The text is not hexadecimal.
    #[error("key is not valid hex (expected only the characters 0-9 and a-f)")]
    BadHex,
    /// The key has the wrong number of bytes.
    #[error("key has the wrong length: expected {expected} bytes, got {got}")]
    WrongLength {
        /// Bytes expected.
        expected: usize,
        /// Bytes found.
        got: usize,
    },
    /// The y-coordinate is not reduced (y >= 2^255 - 19): another encoding of some point, so
    /// two byte strings would name one key.
    #[error("key is not a canonical ed25519 encoding (its y-coordinate is not reduced)")]
    NotCanonical,
    /// The bytes are not the encoding of a point on the ed25519 curve.
    #[error("key is not a point on the ed25519 curve")]
    NotOnCurve,
    /// The key is a small-order ("weak") point, for which signatures prove nothing: with the
    /// identity point, for example, (R = identity, s = 0) verifies for every message.
    #[error(
        "key is a weak (small-order) ed25519 point: it proves nothing, anyone can sign for it"
    )]
    WeakKey,
    /// The key has a small-order (torsion) component: no honest key generator makes one.
    #[error(
        "key is a mixed-order ed25519 point (it has a torsion component); honest keys never do"
    )]
    MixedOrder,
    /// DER bytes that are not an ed25519 SubjectPublicKeyInfo (44 bytes: the algorithm
    /// 1.3.101.112, then the 32 key bytes).
    #[error(
        "not an ed25519 SubjectPublicKeyInfo (expected 44 DER bytes for algorithm 1.3.101.112)"
    )]
    NotEd25519Spki,
}

/// Length of the short hex prefix that `Debug` prints.
const SHORT_HEX_BYTES: usize = 4;

fn fmt_short_hex(name: &str, bytes: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    write!(f, "{name}({})", hex::encode(&bytes[..SHORT_HEX_BYTES]))
}

fn decode_hex_array<const N: usize>(s: &str) -> Result<[u8; N], KeyError> {
    let s = s.trim();
    if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(KeyError::BadHex);
    }
    if s.len() != 2 * N {
        // An odd number of digits rounds down; the point is that the length is wrong.
        return Err(KeyError::WrongLength {
            expected: N,
            got: s.len() / 2,
        });
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).map_err(|_| KeyError::BadHex)?;
    Ok(out)
}

/// A 32-byte identity: an ed25519 public key, or a simulator identity (see [`crate::sim`]).
///
/// `Debug` prints a short hex prefix (`PublicKey(1a2b3c4d)`), `Display` the full lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Full lowercase hex (64 characters).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters (either case; surrounding whitespace is ignored) as an ed25519
    /// key, validated as [`PublicKey::from_ed25519_bytes`] does: this is how keys are read from
    /// configuration files, and `FromStr` and the human-readable serde form (TOML, JSON) go
    /// through it too.
    ///
    /// # Errors
    /// [`KeyError::BadHex`] or [`KeyError::WrongLength`] for bad text, and the errors of
    /// [`PublicKey::from_ed25519_bytes`] for bytes that are not a valid key.
    pub fn from_hex(s: &str) -> Result<PublicKey, KeyError> {
        decode_hex_array(s).and_then(PublicKey::from_ed25519_bytes)
    }

    /// The key with these bytes, if they are a valid ed25519 public key: canonically encoded,
    /// on the curve, not of small order, and with no torsion component. Every parser of keys
    /// (configuration hex, TLS certificates, key files) goes through this; keys inside protocol
    /// messages are checked the same way by [`crate::Ed25519Verifier`] before any signature
    /// under them counts.
    ///
    /// # Errors
    /// [`KeyError::NotCanonical`], [`KeyError::NotOnCurve`], [`KeyError::WeakKey`] or
    /// [`KeyError::MixedOrder`], in that order of checking.
    pub fn from_ed25519_bytes(bytes: [u8; 32]) -> Result<PublicKey, KeyError> {
        crate::ed25519::validate_key(&bytes)?;
        Ok(PublicKey(bytes))
    }

    /// The raw 32 bytes: for ed25519, the compressed Edwards point as in RFC 8032.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Checks that these bytes are a valid ed25519 public key, as
    /// [`PublicKey::from_ed25519_bytes`] does. For keys built from raw bytes (the field is
    /// public, because simulator identities are not curve points).
    ///
    /// # Errors
    /// As [`PublicKey::from_ed25519_bytes`].
    pub fn check_ed25519(&self) -> Result<(), KeyError> {
        crate::ed25519::validate_key(&self.0).map(|_| ())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_short_hex("PublicKey", &self.0, f)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::str::FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<PublicKey, KeyError> {
        PublicKey::from_hex(s)
    }
}

/// A 64-byte signature. `Debug` prints a short hex prefix.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl Signature {
    /// Full lowercase hex (128 characters).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 128 hex characters (either case; surrounding whitespace is ignored). Does not
    /// check that the bytes are a well-formed signature; verification does.
    pub fn from_hex(s: &str) -> Result<Signature, KeyError> {
        decode_hex_array(s).map(Signature)
    }

    /// The raw 64 bytes: for ed25519, `R` (32 bytes) then `s` (32 bytes), as in RFC 8032.
    pub fn as_bytes(&self) -> &[u8; 64] {
        &self.0
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_short_hex("Signature", &self.0, f)
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A blake3 digest. `Debug` prints a short hex prefix, `Display` the full lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Full lowercase hex (64 characters).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters (either case; surrounding whitespace is ignored). Errors are
    /// [`KeyError::BadHex`] or [`KeyError::WrongLength`].
    pub fn from_hex(s: &str) -> Result<Digest, KeyError> {
        decode_hex_array(s).map(Digest)
    }

    /// The raw 32 bytes of the blake3 output.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_short_hex("Digest", &self.0, f)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The blake3 digest of `bytes` (unkeyed, 32 bytes). Batches are named by it in WRITE and
/// ACCEPT (docs/design.md §3.4).
pub fn digest(bytes: &[u8]) -> Digest {
    Digest(*blake3::hash(bytes).as_bytes())
}

/// The exact bytes that get signed: the domain tag's length as a little-endian `u64`, the tag,
/// then the payload. The length prefix makes the split between tag and payload unambiguous, so
/// `("ab", "c")` and `("a", "bc")` never produce the same bytes. Every signed protocol message
/// and client request goes through this (docs/design.md §3.6).
pub fn canonical_message(domain: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + domain.len() + payload.len());
    out.extend_from_slice(&(domain.len() as u64).to_le_bytes());
    out.extend_from_slice(domain.as_bytes());
    out.extend_from_slice(payload);
    out
}

// Serde: fixed-size tuples of bytes in binary formats (no length prefix, and a short input is an
// error, never a panic), lowercase hex strings in human-readable formats.

fn serialize_fixed<S: Serializer, const N: usize>(
    bytes: &[u8; N],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    if serializer.is_human_readable() {
        serializer.serialize_str(&hex::encode(bytes))
    } else {
        let mut tuple = serializer.serialize_tuple(N)?;
        for byte in bytes {
            tuple.serialize_element(byte)?;
        }
        tuple.end()
    }
}

struct FixedBytesVisitor<const N: usize>;

impl<'de, const N: usize> Visitor<'de> for FixedBytesVisitor<N> {
    type Value = [u8; N];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{N} bytes, or {} hex characters", 2 * N)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; N], A::Error> {
        let mut out = [0u8; N];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = seq
                .next_element()?
                .ok_or_else(|| de::Error::invalid_length(i, &self))?;
        }
        if seq.next_element::<de::IgnoredAny>()?.is_some() {
            return Err(de::Error::invalid_length(N + 1, &self));
        }
        Ok(out)
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<[u8; N], E> {
        <[u8; N]>::try_from(v).map_err(|_| E::invalid_length(v.len(), &self))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<[u8; N], E> {
        decode_hex_array(v).map_err(E::custom)
    }
}

fn deserialize_fixed<'de, D: Deserializer<'de>, const N: usize>(
    deserializer: D,
) -> Result<[u8; N], D::Error> {
    if deserializer.is_human_readable() {
        deserializer.deserialize_any(FixedBytesVisitor::<N>)
    } else {
        deserializer.deserialize_tuple(N, FixedBytesVisitor::<N>)
    }
}

macro_rules! serde_fixed_bytes {
    ($($name:ident),*) => {$(
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serialize_fixed(&self.0, serializer)
            }
        }
    )*};
}

serde_fixed_bytes!(PublicKey, Signature, Digest);

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Signature, D::Error> {
        deserialize_fixed(deserializer).map(Signature)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Digest, D::Error> {
        deserialize_fixed(deserializer).map(Digest)
    }
}

/// In human-readable formats (configuration, status JSON) a key is validated like
/// [`PublicKey::from_hex`]. In binary formats (protocol messages, checkpoints) it is 32 raw bytes
/// and is not: it may be a simulator identity, and the verifier checks every key a signature
/// is made under ([`crate::Ed25519Verifier`]) before the message counts.
impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<PublicKey, D::Error> {
        let human_readable = deserializer.is_human_readable();
        let bytes = deserialize_fixed(deserializer)?;
        if human_readable {
            PublicKey::from_ed25519_bytes(bytes).map_err(de::Error::custom)
        } else {
            Ok(PublicKey(bytes))
        }
    }
}
