//! Wire-level behaviour, driven by a raw quinn client that speaks (or garbles) the framing.

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use quinn::{ConnectionError, TransportErrorCode};
use smr_core::network::{InboundFrame, Network, Peer, SendError};
use smr_crypto::{public_key_to_der, IdentityKey, PublicKey};

use crate::link::{CLOSE_FRAME_TOO_LARGE, LENGTH_PREFIX_BYTES};
use crate::tls::{self, Admission};
use crate::{ClientPolicy, Counters, QuicTransport, ReplicaEndpoint, TransportConfig};

const WAIT: Duration = Duration::from_secs(5);
const MAX_FRAME_BYTES: usize = 1024;

fn key(seed: u8) -> Arc<IdentityKey> {
    Arc::new(IdentityKey::from_seed([seed; 32]))
}

/// One replica (id 0, key seed 1) on 127.0.0.1 admitting the given client keys.
async fn single_replica(clients: &[PublicKey]) -> (QuicTransport, ReplicaEndpoint) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let identity = key(1);
    let endpoint = ReplicaEndpoint {
        id: 0,
        addr: socket.local_addr().unwrap(),
        public_key: identity.public_key(),
    };
    let mut config = TransportConfig::replica(
        0,
        identity,
        vec![endpoint.clone()],
        ClientPolicy::Allowed(clients.iter().copied().collect()),
    );
    config.max_frame_bytes = MAX_FRAME_BYTES;
    let transport = QuicTransport::start_with_socket(config, socket)
        .await
        .unwrap();
    (transport, endpoint)
}

/// A bare quinn client endpoint on 127.0.0.1 presenting `identity` and expecting `server_key`.
fn raw_client(
    identity: &IdentityKey,
    server_key: PublicKey,
) -> (quinn::Endpoint, quinn::ClientConfig) {
    let local = tls::LocalCertificate::from_identity(identity).unwrap();
    let crypto = tls::client_config(&local, server_key, Arc::new(Counters::default())).unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    (endpoint, quinn::ClientConfig::new(Arc::new(crypto)))
}

async fn raw_connect(
    identity: &IdentityKey,
    replica: &ReplicaEndpoint,
) -> Result<(quinn::Endpoint, quinn::Connection), ConnectionError> {
    let (endpoint, config) = raw_client(identity, replica.public_key);
    let connecting = endpoint
        .connect_with(config, replica.addr, tls::SERVER_NAME)
        .unwrap();
    let conn = tokio::time::timeout(WAIT, connecting)
        .await
        .expect("handshake hung")?;
    Ok((endpoint, conn))
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(body);
    bytes
}

async fn recv_within(transport: &QuicTransport) -> InboundFrame {
    tokio::time::timeout(WAIT, transport.recv())
        .await
        .expect("no frame arrived in time")
        .expect("transport closed")
}

async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn closed_within(conn: &quinn::Connection) -> ConnectionError {
    tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("connection stayed open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frame_is_rejected_and_counted_and_other_peers_are_still_served() {
    let attacker = key(50);
    let honest = key(51);
    let (replica, endpoint) = single_replica(&[attacker.public_key(), honest.public_key()]).await;
    let (honest_endpoint, honest_conn) = raw_connect(&honest, &endpoint).await.unwrap();
    let mut honest_stream = honest_conn.open_uni().await.unwrap();
    honest_stream.write_all(&frame(b"before")).await.unwrap();
    assert_eq!(recv_within(&replica).await.frame, b"before".to_vec());

    for claimed_length in [MAX_FRAME_BYTES as u32 + 1, u32::MAX] {
        let (_endpoint, conn) = raw_connect(&attacker, &endpoint).await.unwrap();
        let mut stream = conn.open_uni().await.unwrap();
        stream
            .write_all(&claimed_length.to_be_bytes())
            .await
            .unwrap();
        stream.write_all(&[0xee; 100]).await.unwrap();
        match closed_within(&conn).await {
            ConnectionError::ApplicationClosed(close) => {
                assert_eq!(close.error_code, CLOSE_FRAME_TOO_LARGE)
            }
            other => panic!("expected the replica to close the connection, got {other}"),
        }
    }
    assert_eq!(replica.stats().frames_rejected_oversize, 2);

    // The honest client's connection was untouched, and new connections are still accepted.
    honest_stream.write_all(&frame(b"after")).await.unwrap();
    let got = recv_within(&replica).await;
    assert_eq!(
        (got.from, got.frame),
        (Peer::Client(honest.public_key()), b"after".to_vec())
    );
    let (_endpoint, conn) = raw_connect(&attacker, &endpoint).await.unwrap();
    let mut stream = conn.open_uni().await.unwrap();
    stream.write_all(&frame(b"behaving now")).await.unwrap();
    assert_eq!(recv_within(&replica).await.frame, b"behaving now".to_vec());
    assert_eq!(replica.stats().frames_received, 3);
    replica.shutdown().await;
    honest_endpoint.close(0u32.into(), b"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_truncated_and_reset_streams_are_survived_without_panics() {
    let client = key(52);
    let (replica, endpoint) = single_replica(&[client.public_key()]).await;
    let (_endpoint, conn) = raw_connect(&client, &endpoint).await.unwrap();

    // A good frame, an empty frame, then a body cut short by the end of the stream.
    let mut stream = conn.open_uni().await.unwrap();
    let mut bytes = frame(b"good");
    bytes.extend_from_slice(&frame(b""));
    bytes.extend_from_slice(&100u32.to_be_bytes());
    bytes.extend_from_slice(&[1; 10]);
    stream.write_all(&bytes).await.unwrap();
    stream.finish().unwrap();
    assert_eq!(recv_within(&replica).await.frame, b"good".to_vec());
    assert_eq!(recv_within(&replica).await.frame, Vec::<u8>::new());
    wait_until("the cut body is counted", || {
        replica.stats().frames_truncated == 1
    })
    .await;

    // A stream that ends inside a length prefix.
    let mut stream = conn.open_uni().await.unwrap();
    stream.write_all(&[0, 0, 1]).await.unwrap();
    stream.finish().unwrap();
    wait_until("the cut prefix is counted", || {
        replica.stats().frames_truncated == 2
    })
    .await;

    // A stream reset in the middle of a frame.
    let mut stream = conn.open_uni().await.unwrap();
    stream.write_all(&50u32.to_be_bytes()).await.unwrap();
    stream.write_all(&[2; 20]).await.unwrap();
    stream.reset(7u32.into()).unwrap();

    // Pseudo-random garbage on a fresh connection: whatever it decodes to is refused or dropped.
    let (_garbage_endpoint, garbage_conn) = raw_connect(&client, &endpoint).await.unwrap();
    let mut garbage = Vec::with_capacity(8192);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    while garbage.len() < 8192 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        garbage.extend_from_slice(&state.to_le_bytes());
    }
    let mut stream = garbage_conn.open_uni().await.unwrap();
    let _ = stream.write_all(&garbage).await;
    let _ = stream.finish();
    closed_within(&garbage_conn).await;

    // The replica still serves the first connection.
    let mut stream = conn.open_uni().await.unwrap();
    stream.write_all(&frame(b"still here")).await.unwrap();
    let got = recv_within(&replica).await;
    assert_eq!(
        (got.from, got.frame),
        (Peer::Client(client.public_key()), b"still here".to_vec())
    );
    assert_eq!(replica.stats().frames_received, 3);
    replica.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unadmitted_raw_client_sees_tls_alert_access_denied_after_connecting() {
    let (replica, endpoint) = single_replica(&[key(53).public_key()]).await;
    let stranger = key(54);
    // As docs/design.md §6 says: the handshake completes from the client's side, and the refusal
    // arrives right after, as TLS alert 49 (access_denied, QUIC CRYPTO_ERROR 0x131).
    let error = match raw_connect(&stranger, &endpoint).await {
        Ok((_endpoint, conn)) => {
            if let Ok(mut stream) = conn.open_uni().await {
                let _ = stream.write_all(&frame(b"let me in")).await;
            }
            closed_within(&conn).await
        }
        Err(error) => error,
    };
    match error {
        ConnectionError::ConnectionClosed(close) => {
            assert_eq!(close.error_code, TransportErrorCode::crypto(49))
        }
        other => panic!("expected TLS alert 49, got {other}"),
    }
    assert_eq!(replica.stats().connections_refused_unknown_key, 1);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), replica.recv())
            .await
            .is_err()
    );
    replica.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_refuses_a_replica_presenting_another_key() {
    let client = key(55);
    let (replica, mut endpoint) = single_replica(&[client.public_key()]).await;
    endpoint.public_key = key(56).public_key();
    match raw_connect(&client, &endpoint).await {
        Err(ConnectionError::TransportError(error)) => {
            assert_eq!(error.code, TransportErrorCode::crypto(49))
        }
        Err(other) => panic!("expected a local TLS error, got {other}"),
        Ok(_) => panic!("connected to a replica with the wrong key"),
    }
    assert_eq!(replica.stats().connections_incoming, 0);
    replica.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_replies_over_the_clients_most_recent_live_connection() {
    let client = key(57);
    let (replica, endpoint) = single_replica(&[client.public_key()]).await;
    let client_peer = Peer::Client(client.public_key());
    let mut conns = Vec::new();
    for i in 0..2u8 {
        let (client_endpoint, conn) = raw_connect(&client, &endpoint).await.unwrap();
        let mut stream = conn.open_uni().await.unwrap();
        stream.write_all(&frame(&[i])).await.unwrap();
        // Receiving proves the replica registered this connection.
        assert_eq!(recv_within(&replica).await.frame, vec![i]);
        conns.push((client_endpoint, conn, stream));
    }
    async fn read_reply(conn: &quinn::Connection) -> Vec<u8> {
        let mut stream = tokio::time::timeout(WAIT, conn.accept_uni())
            .await
            .unwrap()
            .unwrap();
        let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
        stream.read_exact(&mut prefix).await.unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(prefix) as usize];
        stream.read_exact(&mut body).await.unwrap();
        body
    }
    replica
        .send(client_peer, b"to the newest".to_vec())
        .unwrap();
    assert_eq!(read_reply(&conns[1].1).await, b"to the newest".to_vec());

    // When the newest goes away, replies fall back to the older connection that is still live.
    conns[1].1.close(0u32.into(), b"bye");
    wait_until("the replica forgets the closed connection", || {
        replica.stats().connections_lost >= 1
    })
    .await;
    replica.send(client_peer, b"to the older".to_vec()).unwrap();
    assert_eq!(read_reply(&conns[0].1).await, b"to the older".to_vec());

    conns[0].1.close(0u32.into(), b"bye");
    wait_until("the replica forgets both connections", || {
        replica.stats().connections_lost >= 2
    })
    .await;
    assert_eq!(
        replica.send(client_peer, vec![0]),
        Err(SendError::UnknownPeer(client_peer))
    );
    replica.shutdown().await;
}

#[test]
fn pinning_accepts_only_the_canonical_ed25519_spki() {
    let key = key(58).public_key();
    let spki = public_key_to_der(&key);
    assert_eq!(spki.len(), 44);
    assert_eq!(tls::key_from_spki(&spki), Some(key));
    let mut longer = spki.clone();
    longer.push(0);
    assert_eq!(tls::key_from_spki(&longer), None);
    assert_eq!(tls::key_from_spki(&spki[..43]), None);
    let mut other_algorithm = spki.clone();
    other_algorithm[8] ^= 1; // the OID's last byte: 1.3.101.112 (Ed25519) becomes 1.3.101.113
    assert_eq!(tls::key_from_spki(&other_algorithm), None);
    assert_eq!(tls::key_from_spki(&[]), None);

    let local = tls::LocalCertificate::from_identity(&IdentityKey::from_seed([58; 32])).unwrap();
    assert_eq!(tls::key_from_cert(&local.chain()[0]), Some(key));
    assert_eq!(
        tls::key_from_cert(&rustls::pki_types::CertificateDer::from(vec![
            0x30, 0x03, 1, 2, 3
        ])),
        None
    );
}

#[test]
fn a_replica_key_is_always_identified_as_that_replica_never_as_a_client() {
    let replica_key = key(59).public_key();
    let client_key = key(60).public_key();
    let stranger = key(61).public_key();
    let admission = Admission {
        replica_by_key: [(replica_key, 3)].into_iter().collect(),
        clients: ClientPolicy::Allowed(BTreeSet::from([replica_key, client_key])),
    };
    assert_eq!(admission.identify(&replica_key), Some(Peer::Replica(3)));
    assert_eq!(
        admission.identify(&client_key),
        Some(Peer::Client(client_key))
    );
    assert_eq!(admission.identify(&stranger), None);
    let open = Admission {
        replica_by_key: [(replica_key, 3)].into_iter().collect(),
        clients: ClientPolicy::Any,
    };
    assert_eq!(open.identify(&replica_key), Some(Peer::Replica(3)));
    assert_eq!(open.identify(&stranger), Some(Peer::Client(stranger)));
}

#[test]
fn client_binds_loopback_when_every_replica_is_on_loopback() {
    let replicas = |addrs: &[&str]| -> Vec<ReplicaEndpoint> {
        addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| ReplicaEndpoint {
                id: i as u32,
                addr: addr.parse().unwrap(),
                public_key: key(70 + i as u8).public_key(),
            })
            .collect()
    };
    let bind = |addrs: &[&str]| -> SocketAddr {
        TransportConfig::client(key(80), replicas(addrs))
            .bind_addr()
            .unwrap()
    };
    assert_eq!(
        bind(&["127.0.0.1:1", "127.0.0.1:2"]),
        "127.0.0.1:0".parse().unwrap()
    );
    assert_eq!(bind(&["[::1]:1"]), "[::1]:0".parse().unwrap());
    assert_eq!(bind(&["10.0.0.1:1"]), "0.0.0.0:0".parse().unwrap());
    assert_eq!(bind(&["[::1]:1", "127.0.0.1:1"]), "[::]:0".parse().unwrap());
}
