//! The one place that knows the wire encoding (bincode 2 over serde).
//!
//! Every frame and every signed payload goes through here, so the canonical encoding that
//! signatures cover is defined once.
//!
//! # Decoding is bounded by the input
//! No input may make a decode allocate more than the bytes that carried it, plus a small
//! constant: frames come from any admitted peer before any signature is checked, and WAL
//! records and checkpoints from files. Two things in the stock serde path break that, and
//! [`decode`] wraps the deserializer (`Bounded`) to close both for every type, ours and an
//! embedder's alike:
//! - bincode's owned byte strings (`deserialize_byte_buf`, `deserialize_string`, which
//!   `serde_bytes` and `String` use) allocate and zero the claimed length before reading it.
//!   `Bounded` turns them into `deserialize_bytes` / `deserialize_str`, which borrow from the
//!   input slice: bincode checks the claimed length against the bytes left before anything is
//!   allocated, and the visitor copies exactly the bytes present.
//! - serde's `Vec`, `HashMap` and similar visitors preallocate from the claimed length
//!   (`size_hint::cautious`: up to 1 MiB per collection). `Bounded` caps every sequence's and
//!   map's size hint at [`MAX_PREALLOCATED_ELEMENTS`]; past that a collection grows as its
//!   elements actually decode.
//!
//! So a rejected input allocates at most what its valid prefix decoded into plus a few
//! preallocations, and an accepted one at most a small multiple of its size (in-memory values
//! are larger than their encodings); `core/tests/decode_allocation.rs` measures both.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeOwned, DeserializeSeed, Deserializer, Visitor};
use serde::Serialize;

/// Fixed-width little-endian integers keep encodings canonical and sizes predictable. No
/// limit: what bounds a decode's allocations is the input slice (`Bounded`), not a constant.
fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Fixint,
    bincode::config::NoLimit,
> {
    bincode::config::standard()
        .with_fixed_int_encoding()
        .with_little_endian()
}

/// The most elements a decoded sequence or map reserves room for before its elements arrive,
/// whatever length the input claims. Beyond it the collection grows as it fills.
pub const MAX_PREALLOCATED_ELEMENTS: usize = 16;

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes are not an encoding of the expected type: truncated, an unknown variant, or a
    /// length beyond the input. Holds bincode's description.
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
/// input claims, the decode allocates no more than the input's bytes allow (see the module
/// docs).
///
/// # Errors
/// [`DecodeError::Malformed`] if the bytes are not a `T`, [`DecodeError::TrailingBytes`] if
/// bytes are left after it.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, read) =
        bincode::serde::seed_decode_from_slice(BoundedSeed(PhantomData::<T>), bytes, config())
            .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if read != bytes.len() {
        return Err(DecodeError::TrailingBytes(bytes.len() - read));
    }
    Ok(value)
}

/// A deserializer that never lets a claimed length allocate (see the module docs): byte
/// strings and strings are borrowed from the input and copied only once they are known to be
/// there, and no collection reserves room for more than [`MAX_PREALLOCATED_ELEMENTS`] before
/// its elements arrive. Everything a visitor is handed (the deserializer of an option's or a
/// newtype's content, a sequence's, map's or enum's access) is wrapped in turn, so the rule
/// holds at every depth of every type.
struct Bounded<D>(D);

/// A seed whose deserializer is `Bounded`.
struct BoundedSeed<S>(S);

/// A visitor whose nested deserializers and accesses are `Bounded`.
struct BoundedVisitor<V>(V);

/// A sequence, map, enum or variant access whose nested deserializers are `Bounded`, and
/// whose size hint is capped at [`MAX_PREALLOCATED_ELEMENTS`].
struct BoundedAccess<A>(A);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for BoundedSeed<S> {
    type Value = S::Value;

    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(Bounded(deserializer))
    }
}

macro_rules! forward_deserialize {
    ($($method:ident),* $(,)?) => {$(
        #[inline]
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.0.$method(BoundedVisitor(visitor))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Bounded<D> {
    type Error = D::Error;

    forward_deserialize!(
        deserialize_any,
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_bytes,
        deserialize_option,
        deserialize_unit,
        deserialize_seq,
        deserialize_map,
        deserialize_identifier,
        deserialize_ignored_any,
    );

    /// Borrowed, then copied by the visitor: bincode's owned string allocates the claimed
    /// length first.
    #[inline]
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_str(BoundedVisitor(visitor))
    }

    /// Borrowed, then copied by the visitor: bincode's owned byte buffer allocates and zeroes
    /// the claimed length first.
    #[inline]
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_bytes(BoundedVisitor(visitor))
    }

    #[inline]
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_unit_struct(name, BoundedVisitor(visitor))
    }

    #[inline]
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_newtype_struct(name, BoundedVisitor(visitor))
    }

    #[inline]
    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_tuple(len, BoundedVisitor(visitor))
    }

    #[inline]
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_tuple_struct(name, len, BoundedVisitor(visitor))
    }

    #[inline]
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_struct(name, fields, BoundedVisitor(visitor))
    }

    #[inline]
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_enum(name, variants, BoundedVisitor(visitor))
    }

    #[inline]
    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty)),* $(,)?) => {$(
        #[inline]
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            self.0.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for BoundedVisitor<V> {
    type Value = V::Value;

    #[inline]
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }

    forward_visit!(
        visit_bool(bool),
        visit_i8(i8),
        visit_i16(i16),
        visit_i32(i32),
        visit_i64(i64),
        visit_i128(i128),
        visit_u8(u8),
        visit_u16(u16),
        visit_u32(u32),
        visit_u64(u64),
        visit_u128(u128),
        visit_f32(f32),
        visit_f64(f64),
        visit_char(char),
        visit_str(&str),
        visit_borrowed_str(&'de str),
        visit_string(String),
        visit_bytes(&[u8]),
        visit_borrowed_bytes(&'de [u8]),
        visit_byte_buf(Vec<u8>),
    );

    #[inline]
    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.0.visit_none()
    }

    #[inline]
    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.0.visit_unit()
    }

    #[inline]
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        self.0.visit_some(Bounded(deserializer))
    }

    #[inline]
    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<V::Value, D::Error> {
        self.0.visit_newtype_struct(Bounded(deserializer))
    }

    #[inline]
    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.0.visit_seq(BoundedAccess(seq))
    }

    #[inline]
    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.0.visit_map(BoundedAccess(map))
    }

    #[inline]
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.0.visit_enum(BoundedAccess(data))
    }
}

impl<'de, A: de::SeqAccess<'de>> de::SeqAccess<'de> for BoundedAccess<A> {
    type Error = A::Error;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.0.next_element_seed(BoundedSeed(seed))
    }

    #[inline]
    fn size_hint(&self) -> Option<usize> {
        self.0
            .size_hint()
            .map(|claimed| claimed.min(MAX_PREALLOCATED_ELEMENTS))
    }
}

impl<'de, A: de::MapAccess<'de>> de::MapAccess<'de> for BoundedAccess<A> {
    type Error = A::Error;

    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.0.next_key_seed(BoundedSeed(seed))
    }

    #[inline]
    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.0.next_value_seed(BoundedSeed(seed))
    }

    #[inline]
    fn size_hint(&self) -> Option<usize> {
        self.0
            .size_hint()
            .map(|claimed| claimed.min(MAX_PREALLOCATED_ELEMENTS))
    }
}

impl<'de, A: de::EnumAccess<'de>> de::EnumAccess<'de> for BoundedAccess<A> {
    type Error = A::Error;
    type Variant = BoundedAccess<A::Variant>;

    #[inline]
    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), A::Error> {
        let (value, variant) = self.0.variant_seed(BoundedSeed(seed))?;
        Ok((value, BoundedAccess(variant)))
    }
}

impl<'de, A: de::VariantAccess<'de>> de::VariantAccess<'de> for BoundedAccess<A> {
    type Error = A::Error;

    #[inline]
    fn unit_variant(self) -> Result<(), A::Error> {
        self.0.unit_variant()
    }

    #[inline]
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.0.newtype_variant_seed(BoundedSeed(seed))
    }

    #[inline]
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.0.tuple_variant(len, BoundedVisitor(visitor))
    }

    #[inline]
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.0.struct_variant(fields, BoundedVisitor(visitor))
    }
}
