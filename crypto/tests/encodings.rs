//! Byte newtypes and their encodings: hex, Debug/Display, serde (binary and human-readable),
//! digests, canonical messages, SubjectPublicKeyInfo and PKCS#8.

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePublicKey};
use serde::de::value::{BytesDeserializer, Error as ValueError, SeqDeserializer};
use serde::{Deserialize, Serialize};
use smr_crypto::{
    canonical_message, digest, public_key_from_der, public_key_to_der, Digest, IdentityKey,
    KeyError, PublicKey, Signature, Signer,
};

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode_config()).unwrap()
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(bytes, bincode_config()).map(|(value, _)| value)
}

fn sample_signature() -> Signature {
    IdentityKey::from_seed([5; 32]).sign(b"sample")
}

#[test]
fn public_key_hex_round_trips() {
    let key = IdentityKey::from_seed([1; 32]).public_key();
    let hex = key.to_hex();
    assert_eq!(hex.len(), 64);
    assert_eq!(hex, hex.to_lowercase());
    assert_eq!(PublicKey::from_hex(&hex), Ok(key));
    assert_eq!(PublicKey::from_hex(&hex.to_uppercase()), Ok(key));
    assert_eq!(hex.parse::<PublicKey>(), Ok(key));
    assert_eq!(key.to_string(), hex);
}

#[test]
fn public_key_from_bad_hex_is_refused() {
    let err = PublicKey::from_hex(&"zz".repeat(32)).unwrap_err();
    assert_eq!(err, KeyError::BadHex);
    assert!(err.to_string().contains("not valid hex"));
}

#[test]
fn public_key_of_wrong_length_is_refused() {
    assert_eq!(
        PublicKey::from_hex(&"ab".repeat(31)),
        Err(KeyError::WrongLength {
            expected: 32,
            got: 31
        })
    );
    assert_eq!(
        PublicKey::from_hex(&"ab".repeat(33)),
        Err(KeyError::WrongLength {
            expected: 32,
            got: 33
        })
    );
    assert!(matches!(
        PublicKey::from_hex(&"a".repeat(63)),
        Err(KeyError::WrongLength { expected: 32, .. })
    ));
    assert_eq!(
        PublicKey::from_hex("").unwrap_err().to_string(),
        "key has the wrong length: expected 32 bytes, got 0"
    );
}

#[test]
fn debug_prints_a_short_prefix_and_display_the_full_hex() {
    let mut bytes = [0u8; 32];
    bytes[..4].copy_from_slice(&[0x1a, 0x2b, 0x3c, 0x4d]);
    let key = PublicKey(bytes);
    assert_eq!(format!("{key:?}"), "PublicKey(1a2b3c4d)");
    assert_eq!(format!("{key}"), format!("1a2b3c4d{}", "00".repeat(28)));
    assert_eq!(format!("{:?}", Digest(bytes)), "Digest(1a2b3c4d)");
    assert_eq!(Digest(bytes).to_string(), key.to_string());
    let mut sig = [0u8; 64];
    sig[..4].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(format!("{:?}", Signature(sig)), "Signature(deadbeef)");
}

#[test]
fn digest_is_blake3() {
    assert_eq!(
        digest(b"").to_hex(),
        "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    );
    assert_eq!(digest(b"abc").0, *blake3::hash(b"abc").as_bytes());
    assert_eq!(Digest::default(), Digest([0; 32]));
    assert!(digest(b"a") != digest(b"b"));
}

#[test]
fn canonical_message_length_prefixes_the_domain() {
    assert_eq!(
        canonical_message("ab", b"c"),
        [&2u64.to_le_bytes()[..], b"ab", b"c"].concat()
    );
    assert_ne!(canonical_message("ab", b"c"), canonical_message("a", b"bc"));
    assert_ne!(canonical_message("", b"x"), canonical_message("x", b""));
}

#[test]
fn binary_encodings_are_fixed_size_without_length_prefix() {
    let key = IdentityKey::from_seed([1; 32]).public_key();
    let signature = sample_signature();
    let digest = digest(b"x");
    assert_eq!(encode(&key), key.0);
    assert_eq!(encode(&signature), signature.0);
    assert_eq!(encode(&digest), digest.0);
    assert_eq!(decode::<PublicKey>(&encode(&key)).unwrap(), key);
    assert_eq!(decode::<Signature>(&encode(&signature)).unwrap(), signature);
    assert_eq!(decode::<Digest>(&encode(&digest)).unwrap(), digest);
}

#[test]
fn truncated_signature_fails_to_deserialize() {
    let bytes = encode(&sample_signature());
    for len in [0, 1, 32, 63] {
        assert!(decode::<Signature>(&bytes[..len]).is_err(), "len {len}");
    }
    let key = encode(&PublicKey([7; 32]));
    assert!(decode::<PublicKey>(&key[..31]).is_err());
}

#[test]
fn wrong_length_byte_strings_fail_to_deserialize() {
    for len in [0, 63, 65] {
        let bytes = vec![1u8; len];
        let result = Signature::deserialize(BytesDeserializer::<ValueError>::new(&bytes));
        let err = result.expect_err("wrong length must be refused");
        assert!(err.to_string().contains("invalid length"), "{err}");
    }
    let exact = [1u8; 64];
    assert_eq!(
        Signature::deserialize(BytesDeserializer::<ValueError>::new(&exact)).unwrap(),
        Signature(exact)
    );
}

#[test]
fn wrong_length_sequences_fail_to_deserialize() {
    for len in [63, 65] {
        let seq = SeqDeserializer::<_, ValueError>::new(vec![1u8; len].into_iter());
        assert!(Signature::deserialize(seq).is_err(), "len {len}");
    }
    let seq = SeqDeserializer::<_, ValueError>::new(vec![1u8; 64].into_iter());
    assert_eq!(Signature::deserialize(seq).unwrap(), Signature([1; 64]));
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Config {
    key: PublicKey,
    signature: Signature,
    digest: Digest,
}

#[test]
fn human_readable_formats_use_hex_strings() {
    let key = IdentityKey::from_seed([0xab; 32]).public_key();
    let config = Config {
        key,
        signature: Signature([0xcd; 64]),
        digest: Digest([0xef; 32]),
    };
    let text = toml::to_string(&config).unwrap();
    assert!(
        text.contains(&format!("key = \"{}\"", key.to_hex())),
        "{text}"
    );
    assert!(
        text.contains(&format!("signature = \"{}\"", "cd".repeat(64))),
        "{text}"
    );
    assert_eq!(toml::from_str::<Config>(&text).unwrap(), config);
}

#[test]
fn human_readable_hex_of_wrong_length_is_refused_with_a_clear_error() {
    let text = format!(
        "key = \"{}\"\nsignature = \"{}\"\ndigest = \"{}\"\n",
        "ab".repeat(31),
        "cd".repeat(64),
        "ef".repeat(32)
    );
    let err = toml::from_str::<Config>(&text).unwrap_err().to_string();
    assert!(err.contains("expected 32 bytes, got 31"), "{err}");
}

#[test]
fn spki_der_round_trips_and_matches_dalek() {
    let identity = IdentityKey::from_seed([3; 32]);
    let key = identity.public_key();
    let der = public_key_to_der(&key);
    assert_eq!(der.len(), 44);
    assert_eq!(public_key_from_der(&der), Ok(key));
    let dalek_der = identity
        .as_dalek()
        .verifying_key()
        .to_public_key_der()
        .unwrap();
    assert_eq!(der, dalek_der.as_bytes());
}

#[test]
fn spki_of_another_shape_is_not_a_key() {
    let der = public_key_to_der(&IdentityKey::from_seed([9; 32]).public_key());
    let not_spki = Err(KeyError::NotEd25519Spki);
    assert_eq!(public_key_from_der(&der[..43]), not_spki);
    assert_eq!(
        public_key_from_der(&[der.as_slice(), &[0]].concat()),
        not_spki
    );
    assert_eq!(public_key_from_der(&[]), not_spki);
    let mut wrong_oid = der.clone();
    wrong_oid[8] = 0x71; // 1.3.101.113 is Ed448
    assert_eq!(public_key_from_der(&wrong_oid), not_spki);
}

#[test]
fn pkcs8_der_round_trips_through_dalek() {
    let identity = IdentityKey::from_seed([4; 32]);
    let der = identity.to_pkcs8_der();
    let decoded = ed25519_dalek::SigningKey::from_pkcs8_der(&der).unwrap();
    assert_eq!(decoded.verifying_key().to_bytes(), identity.public_key().0);
}
