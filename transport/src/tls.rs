//! TLS 1.3 configuration with peer identities pinned to ed25519 keys.
//!
//! There is no PKI: every endpoint presents a self-signed certificate made from its ed25519 identity
//! key, and the verifiers below accept a certificate only if its SubjectPublicKeyInfo is byte-equal
//! to the encoding of a key we were configured to accept. The handshake signature (which proves
//! possession of the private key) is checked by rustls's own `verify_tls13_signature`; only ED25519
//! is offered and TLS 1.2 is refused. Session resumption is disabled on both sides, because a
//! resumed session skips these verifiers and would let a removed key come back.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use smr_core::network::{Peer, ReplicaId};
use smr_crypto::{public_key_from_der, public_key_to_der, IdentityKey, PublicKey};

use crate::{ClientPolicy, Counters, TransportError};

/// The ALPN protocol id both sides must agree on.
pub(crate) const ALPN: &[u8] = b"smr/1";

/// The DNS name we put in certificates and dial with. Verification ignores it (keys are pinned),
/// but rustls needs a syntactically valid name.
pub(crate) const SERVER_NAME: &str = "smr-replica";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Our own certificate and private key, derived from the identity key.
pub(crate) struct LocalCertificate {
    cert: CertificateDer<'static>,
    key_pkcs8: Vec<u8>,
}

impl LocalCertificate {
    pub(crate) fn from_identity(identity: &IdentityKey) -> Result<Self, TransportError> {
        let key_pkcs8 = identity.to_pkcs8_der();
        let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(key_pkcs8.as_slice()),
            &rcgen::PKCS_ED25519,
        )
        .map_err(|e| TransportError::Certificate(e.to_string()))?;
        let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])
            .map_err(|e| TransportError::Certificate(e.to_string()))?;
        let cert = params
            .self_signed(&key_pair)
            .map_err(|e| TransportError::Certificate(e.to_string()))?;
        Ok(Self {
            cert: cert.der().clone(),
            key_pkcs8,
        })
    }

    pub(crate) fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.clone()]
    }

    fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }
}

/// Extracts the pinned ed25519 key from a SubjectPublicKeyInfo, or `None` if it is not exactly the
/// canonical 44-byte ed25519 encoding (so comparing keys is comparing SPKI bytes).
pub(crate) fn key_from_spki(spki: &[u8]) -> Option<PublicKey> {
    let key = public_key_from_der(spki).ok()?;
    (public_key_to_der(&key) == spki).then_some(key)
}

/// The ed25519 key a certificate is pinned to, or `None` for anything that does not parse or is
/// not an ed25519 certificate.
pub(crate) fn key_from_cert(cert: &CertificateDer<'_>) -> Option<PublicKey> {
    let parsed = ParsedCertificate::try_from(cert).ok()?;
    key_from_spki(parsed.subject_public_key_info().as_ref())
}

/// Which keys a replica admits, and who they are.
#[derive(Debug)]
pub(crate) struct Admission {
    pub(crate) replica_by_key: BTreeMap<PublicKey, ReplicaId>,
    pub(crate) clients: ClientPolicy,
}

impl Admission {
    /// A replica's configured key always wins: it is reported as that replica, never as a client.
    pub(crate) fn identify(&self, key: &PublicKey) -> Option<Peer> {
        if let Some(id) = self.replica_by_key.get(key) {
            return Some(Peer::Replica(*id));
        }
        self.clients.admits(key).then_some(Peer::Client(*key))
    }
}

fn refused() -> rustls::Error {
    // Sent to the peer as TLS alert 49 (access_denied).
    rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
}

fn tls12_refused() -> rustls::Error {
    rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOfferedOrEnabled)
}

/// Server side: admits a client certificate iff its key is a replica's or admitted by the client
/// policy.
#[derive(Debug)]
struct PinnedClientVerifier {
    admission: Arc<Admission>,
    algorithms: WebPkiSupportedAlgorithms,
    counters: Arc<Counters>,
}

impl ClientCertVerifier for PinnedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match key_from_cert(end_entity) {
            Some(key) if self.admission.identify(&key).is_some() => {
                Ok(ClientCertVerified::assertion())
            }
            Some(key) => {
                self.counters
                    .connections_refused_unknown_key
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%key, "refused a connection from a key that is not admitted");
                Err(refused())
            }
            None => {
                self.counters
                    .connections_refused_unknown_key
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!("refused a connection whose certificate is not an ed25519 key");
                Err(refused())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Client side: accepts the server only if it presents exactly the key configured for the replica
/// we dialed.
#[derive(Debug)]
struct PinnedServerVerifier {
    expected_spki: Vec<u8>,
    expected: PublicKey,
    algorithms: WebPkiSupportedAlgorithms,
    counters: Arc<Counters>,
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let spki_matches = ParsedCertificate::try_from(end_entity)
            .map(|parsed| parsed.subject_public_key_info().as_ref() == self.expected_spki)
            .unwrap_or(false);
        if spki_matches {
            Ok(ServerCertVerified::assertion())
        } else {
            self.counters
                .connections_refused_unknown_key
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                expected = %self.expected,
                presented = ?key_from_cert(end_entity),
                "refused a replica that presented a key other than the configured one"
            );
            Err(refused())
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

fn tls_error(e: impl std::fmt::Display) -> TransportError {
    TransportError::Tls(e.to_string())
}

/// The rustls server configuration of a replica.
pub(crate) fn server_config(
    local: &LocalCertificate,
    admission: Arc<Admission>,
    counters: Arc<Counters>,
) -> Result<rustls::ServerConfig, TransportError> {
    let provider = provider();
    let verifier = PinnedClientVerifier {
        admission,
        algorithms: provider.signature_verification_algorithms,
        counters,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(local.chain(), local.private_key())
        .map_err(tls_error)?;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.max_early_data_size = 0;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The rustls client configuration for dialing a replica whose key is `server_key`.
pub(crate) fn client_config(
    local: &LocalCertificate,
    server_key: PublicKey,
    counters: Arc<Counters>,
) -> Result<rustls::ClientConfig, TransportError> {
    let provider = provider();
    let verifier = PinnedServerVerifier {
        expected_spki: public_key_to_der(&server_key),
        expected: server_key,
        algorithms: provider.signature_verification_algorithms,
        counters,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(local.chain(), local.private_key())
        .map_err(tls_error)?;
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_early_data = false;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

#[cfg(test)]
mod weak_key_tests {
    use super::*;

    /// A "key pair" for a point of small order: no secret, and for the identity point the
    /// signature (R = identity, s = 0) fits the cofactorless equation for every message (issue
    /// 12, item 7: ring accepted it in the handshake).
    struct NoSecret([u8; 32]);

    impl rcgen::RemoteKeyPair for NoSecret {
        fn public_key(&self) -> &[u8] {
            &self.0
        }
        fn sign(&self, _message: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
            let mut signature = vec![0u8; 64];
            signature[0] = 1;
            Ok(signature)
        }
        fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
            &rcgen::PKCS_ED25519
        }
    }

    fn certificate_for(key: [u8; 32]) -> CertificateDer<'static> {
        let key_pair = rcgen::KeyPair::from_remote(Box::new(NoSecret(key))).unwrap();
        let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()]).unwrap();
        params.self_signed(&key_pair).unwrap().der().clone()
    }

    /// The eight points of small order, the identity first (the same list as
    /// core/src/cluster.rs's tests; smr-crypto derives its blacklist from the curve).
    const SMALL_ORDER_KEYS: [&str; 8] = [
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    ];

    #[test]
    fn a_peer_presenting_a_small_order_key_is_refused() {
        let counters = Arc::new(Counters::default());
        for (i, hex) in SMALL_ORDER_KEYS.iter().enumerate() {
            let mut key = [0u8; 32];
            for (byte, pair) in key.iter_mut().zip(hex.as_bytes().chunks(2)) {
                *byte = u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap();
            }
            let certificate = certificate_for(key);
            // A well-formed ed25519 certificate...
            let parsed = ParsedCertificate::try_from(&certificate).unwrap();
            assert_eq!(
                parsed.subject_public_key_info().as_ref(),
                public_key_to_der(&PublicKey(key)).as_slice()
            );
            // ...whose key is never taken as an identity, even one the admission names (a
            // replica key that a config could once hold) and under clients = "any".
            assert_eq!(key_from_cert(&certificate), None, "point {i}");
            let verifier = PinnedClientVerifier {
                admission: Arc::new(Admission {
                    replica_by_key: [(PublicKey(key), 0)].into_iter().collect(),
                    clients: ClientPolicy::Any,
                }),
                algorithms: provider().signature_verification_algorithms,
                counters: counters.clone(),
            };
            assert!(verifier
                .verify_client_cert(&certificate, &[], UnixTime::now())
                .is_err());
            assert_eq!(
                counters
                    .connections_refused_unknown_key
                    .load(Ordering::Relaxed),
                i as u64 + 1
            );
        }
    }
}
