//! Temporary minimal smr-crypto for the transport branch: only the items smr-transport uses.
//! The real crate replaces this file at merge.

use std::fmt;

use ed25519_dalek::pkcs8::{DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};

/// A raw ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", hex::encode(self.0))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// An ed25519 signing key.
pub struct IdentityKey(SigningKey);

impl IdentityKey {
    pub fn generate() -> Self {
        Self(SigningKey::generate(&mut rand_core::OsRng))
    }

    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    pub fn to_pkcs8_der(&self) -> Vec<u8> {
        self.0
            .to_pkcs8_der()
            .expect("ed25519 PKCS#8 encoding cannot fail")
            .as_bytes()
            .to_vec()
    }
}

/// Parses a 44-byte ed25519 SubjectPublicKeyInfo.
pub fn public_key_from_der(spki_der: &[u8]) -> Option<PublicKey> {
    VerifyingKey::from_public_key_der(spki_der)
        .ok()
        .map(|k| PublicKey(k.to_bytes()))
}

/// Encodes a key as a 44-byte ed25519 SubjectPublicKeyInfo.
pub fn public_key_to_der(key: &PublicKey) -> Vec<u8> {
    match VerifyingKey::from_bytes(&key.0) {
        Ok(k) => k
            .to_public_key_der()
            .expect("ed25519 SPKI encoding cannot fail")
            .into_vec(),
        Err(_) => {
            const PREFIX: [u8; 12] = [
                0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
            ];
            let mut der = PREFIX.to_vec();
            der.extend_from_slice(&key.0);
            der
        }
    }
}
