//! The one place that knows the wire encoding (bincode 2 over serde).
//!
//! Every frame and every signed payload goes through here, so the canonical encoding that
//! signatures cover is defined once. Decoding is bounded: a peer-supplied length can never make
//! us allocate more than the frame it came in.

use serde::{de::DeserializeOwned, Serialize};

/// Fixed-width integers keep encodings canonical and sizes predictable; the limit bounds every
/// allocation the decoder makes to the size of the input frame.
fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Fixint,
    bincode::config::Limit<{ MAX_DECODE_BYTES }>,
> {
    bincode::config::standard()
        .with_fixed_int_encoding()
        .with_little_endian()
        .with_limit::<{ MAX_DECODE_BYTES }>()
}

/// Upper bound on what one decode may allocate, whatever lengths the input claims.
pub const MAX_DECODE_BYTES: usize = 64 * 1024 * 1024;

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes are not an encoding of the expected type: truncated, an unknown variant, a
    /// length beyond the input or beyond [`MAX_DECODE_BYTES`]. Holds bincode's description.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A value decoded, but this many bytes were left after it: a frame holds exactly one
    /// value, so the frame is refused.
    #[error("frame has {0} trailing bytes after the message")]
    TrailingBytes(usize),
}

/// The canonical encoding of `value`: bincode 2 with fixed-width little-endian integers. What
/// frames carry, what signatures and digests cover, and what the write-ahead log stores.
///
/// # Panics
/// Only if `value`'s `Serialize` implementation fails, which none of smr's types does.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Encoding our own in-memory types into a Vec cannot fail unless a type's Serialize impl is
    // broken, which is an invariant violation.
    bincode::serde::encode_to_vec(value, config()).expect("encoding an in-memory value cannot fail")
}

/// Decodes exactly one `T` from `bytes` (the inverse of [`encode`]). Whatever lengths the
/// input claims, one decode allocates at most [`MAX_DECODE_BYTES`].
///
/// # Errors
/// [`DecodeError::Malformed`] if the bytes are not a `T`, [`DecodeError::TrailingBytes`] if
/// bytes are left after it.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, read) = bincode::serde::decode_from_slice::<T, _>(bytes, config())
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if read != bytes.len() {
        return Err(DecodeError::TrailingBytes(bytes.len() - read));
    }
    Ok(value)
}
