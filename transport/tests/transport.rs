//! Behaviour of the QUIC transport through its public API, on 127.0.0.1 only.

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Duration;

use smr_core::network::{InboundFrame, Network, Peer, SendError};
use smr_crypto::{IdentityKey, PublicKey};
use smr_transport::{
    ClientPolicy, QuicTransport, ReplicaEndpoint, TransportConfig, TransportError,
};

/// Anything a test waits for must happen within this, or the test fails instead of hanging.
const WAIT: Duration = Duration::from_secs(5);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn key(seed: u8) -> Arc<IdentityKey> {
    Arc::new(IdentityKey::from_seed([seed; 32]))
}

fn loopback_socket() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

/// n replicas on pre-bound loopback sockets; replica i's key has seed i + 1.
struct Cluster {
    keys: Vec<Arc<IdentityKey>>,
    sockets: Vec<Option<UdpSocket>>,
    endpoints: Vec<ReplicaEndpoint>,
}

impl Cluster {
    fn new(n: u32) -> Self {
        let keys: Vec<_> = (0..n).map(|i| key(i as u8 + 1)).collect();
        let sockets: Vec<_> = (0..n).map(|_| loopback_socket()).collect();
        let endpoints = (0..n)
            .map(|i| ReplicaEndpoint {
                id: i,
                addr: sockets[i as usize].local_addr().unwrap(),
                public_key: keys[i as usize].public_key(),
            })
            .collect();
        Self {
            keys,
            sockets: sockets.into_iter().map(Some).collect(),
            endpoints,
        }
    }

    fn config(&self, id: u32, clients: ClientPolicy) -> TransportConfig {
        fast(TransportConfig::replica(
            id,
            self.keys[id as usize].clone(),
            self.endpoints.clone(),
            clients,
        ))
    }

    async fn start(&mut self, id: u32, clients: ClientPolicy) -> QuicTransport {
        let socket = self.sockets[id as usize]
            .take()
            .expect("socket already used");
        QuicTransport::start_with_socket(self.config(id, clients), socket)
            .await
            .expect("replica starts")
    }

    fn client_config(&self, identity: Arc<IdentityKey>) -> TransportConfig {
        fast(TransportConfig::client(identity, self.endpoints.clone()))
    }
}

/// Short timeouts so reconnects happen within a test's patience.
fn fast(mut config: TransportConfig) -> TransportConfig {
    config.reconnect_initial_ms = 20;
    config.reconnect_max_ms = 200;
    config.connect_timeout_ms = 500;
    config
}

fn allowed(keys: &[PublicKey]) -> ClientPolicy {
    ClientPolicy::Allowed(keys.iter().copied().collect())
}

async fn recv_within(transport: &QuicTransport) -> InboundFrame {
    tokio::time::timeout(WAIT, transport.recv())
        .await
        .expect("no frame arrived in time")
        .expect("transport closed")
}

async fn assert_nothing_arrives(transport: &QuicTransport, for_ms: u64) {
    let got = tokio::time::timeout(Duration::from_millis(for_ms), transport.recv()).await;
    if let Ok(frame) = got {
        panic!("expected no frame, got {frame:?}");
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_exchange_frames_attributed_to_the_sending_replica() {
    init_tracing();
    let mut cluster = Cluster::new(3);
    let mut replicas = Vec::new();
    for id in 0..3 {
        replicas.push(cluster.start(id, allowed(&[])).await);
    }
    for (from, transport) in replicas.iter().enumerate() {
        for to in 0..3u32 {
            if to as usize != from {
                transport
                    .send(Peer::Replica(to), format!("{from}->{to}").into_bytes())
                    .unwrap();
            }
        }
    }
    for (to, transport) in replicas.iter().enumerate() {
        let mut seen = BTreeMap::new();
        for _ in 0..2 {
            let frame = recv_within(transport).await;
            let text = String::from_utf8(frame.frame).unwrap();
            let (from, dest) = text.split_once("->").unwrap();
            assert_eq!(dest, to.to_string());
            assert_eq!(frame.from, Peer::Replica(from.parse().unwrap()));
            seen.insert(frame.from, text);
        }
        assert_eq!(seen.len(), 2, "replica {to} heard from both others");
    }
    for transport in &replicas {
        // The writer counts after its write returns, which may be after the peer has the frame.
        wait_until("both frames are counted as sent", || {
            transport.stats().frames_sent == 2
        })
        .await;
        let stats = transport.stats();
        assert_eq!(stats.frames_received, 2);
        assert_eq!(stats.connections_refused_unknown_key, 0);
    }
    for transport in &replicas {
        transport.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_sent_to_self_is_looped_back() {
    init_tracing();
    let mut cluster = Cluster::new(2);
    let r0 = cluster.start(0, allowed(&[])).await;
    r0.send(Peer::Replica(0), b"me".to_vec()).unwrap();
    let frame = recv_within(&r0).await;
    assert_eq!(
        (frame.from, frame.frame),
        (Peer::Replica(0), b"me".to_vec())
    );
    r0.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_and_one_large_frame_arrive_intact_and_in_order() {
    init_tracing();
    let mut cluster = Cluster::new(2);
    let r0 = cluster.start(0, allowed(&[])).await;
    let r1 = cluster.start(1, allowed(&[])).await;
    const FRAMES: u32 = 20_000;
    let sender = r0.clone();
    let send_all = tokio::spawn(async move {
        for i in 0..FRAMES {
            let mut frame = i.to_be_bytes().to_vec();
            if i == FRAMES / 2 {
                frame.resize(1024 * 1024, 0xab);
            }
            loop {
                match sender.send(Peer::Replica(1), frame.clone()) {
                    Ok(()) => break,
                    Err(SendError::QueueFull(_)) => tokio::task::yield_now().await,
                    Err(e) => panic!("send failed: {e}"),
                }
            }
        }
    });
    for i in 0..FRAMES {
        let frame = recv_within(&r1).await;
        assert_eq!(frame.from, Peer::Replica(0));
        assert_eq!(frame.frame[..4], i.to_be_bytes());
        if i == FRAMES / 2 {
            assert_eq!(frame.frame.len(), 1024 * 1024);
            assert!(frame.frame[4..].iter().all(|b| *b == 0xab));
        } else {
            assert_eq!(frame.frame.len(), 4);
        }
    }
    tokio::time::timeout(WAIT, send_all).await.unwrap().unwrap();
    wait_until("every frame is counted as sent", || {
        r0.stats().frames_sent == u64::from(FRAMES)
    })
    .await;
    assert_eq!(r0.stats().frames_dropped_connection_lost, 0);
    r0.shutdown().await;
    r1.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_client_gets_replies_on_its_own_connection() {
    init_tracing();
    let mut cluster = Cluster::new(3);
    let client_key = key(100);
    let policy = allowed(&[client_key.public_key()]);
    let mut replicas = Vec::new();
    for id in 0..3 {
        replicas.push(cluster.start(id, policy.clone()).await);
    }
    let client = QuicTransport::start(cluster.client_config(client_key.clone()))
        .await
        .unwrap();
    assert!(client.local_addr().ip().is_loopback());
    for id in 0..3 {
        client
            .send(Peer::Replica(id), format!("request for {id}").into_bytes())
            .unwrap();
    }
    for (id, replica) in replicas.iter().enumerate() {
        let request = recv_within(replica).await;
        assert_eq!(request.from, Peer::Client(client_key.public_key()));
        assert_eq!(request.frame, format!("request for {id}").into_bytes());
        replica
            .send(request.from, format!("reply from {id}").into_bytes())
            .unwrap();
    }
    let mut replies = BTreeMap::new();
    for _ in 0..3 {
        let reply = recv_within(&client).await;
        replies.insert(reply.from, String::from_utf8(reply.frame).unwrap());
    }
    let expected: BTreeMap<_, _> = (0..3)
        .map(|id| (Peer::Replica(id), format!("reply from {id}")))
        .collect();
    assert_eq!(replies, expected);
    // A client accepts no connections: the replies came back on the ones it opened.
    let stats = client.stats();
    assert_eq!(stats.connections_outgoing, 3);
    assert_eq!(stats.connections_incoming, 0);
    // A client only talks to replicas.
    assert_eq!(
        client.send(Peer::Client(client_key.public_key()), vec![1]),
        Err(SendError::UnknownPeer(Peer::Client(
            client_key.public_key()
        )))
    );
    client.shutdown().await;
    for replica in &replicas {
        replica.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_with_unadmitted_key_is_refused_and_delivers_nothing() {
    init_tracing();
    let mut cluster = Cluster::new(1);
    let admitted = key(100);
    let stranger = key(200);
    let replica = cluster.start(0, allowed(&[admitted.public_key()])).await;
    let client = QuicTransport::start(cluster.client_config(stranger.clone()))
        .await
        .unwrap();
    client
        .send(Peer::Replica(0), b"let me in".to_vec())
        .unwrap();

    // The stranger observes the refusal; the replica counts it.
    wait_until("the stranger sees the refusal", || {
        client.stats().connections_refused_by_peer >= 1
    })
    .await;
    assert!(replica.stats().connections_refused_unknown_key >= 1);
    assert_nothing_arrives(&replica, 300).await;
    let stats = replica.stats();
    assert_eq!(stats.frames_received, 0);
    assert_eq!(stats.connections_incoming, 0);
    let stranger_peer = Peer::Client(stranger.public_key());
    assert_eq!(
        replica.send(stranger_peer, vec![1]),
        Err(SendError::UnknownPeer(stranger_peer))
    );
    client.shutdown().await;
    replica.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_started_with_a_key_not_configured_for_its_id_fails_with_identity_mismatch() {
    init_tracing();
    let cluster = Cluster::new(2);
    let mut config = cluster.config(1, allowed(&[]));
    config.identity = cluster.keys[0].clone();
    match QuicTransport::start(config).await {
        Err(TransportError::IdentityMismatch {
            id,
            configured,
            actual,
        }) => {
            assert_eq!(id, 1);
            assert_eq!(configured, cluster.keys[1].public_key());
            assert_eq!(actual, cluster.keys[0].public_key());
        }
        Err(other) => panic!("expected IdentityMismatch, got {other}"),
        Ok(_) => panic!("a replica with the wrong key started"),
    }
    let config = TransportConfig::replica(7, key(7), cluster.endpoints.clone(), allowed(&[]));
    assert!(matches!(
        QuicTransport::start(config).await,
        Err(TransportError::UnknownReplicaId(7))
    ));
}

/// An impostor configures itself as replica 1 with its own key and takes replica 1's address.
fn impostor_config(cluster: &Cluster, impostor: &Arc<IdentityKey>) -> TransportConfig {
    let mut replicas = cluster.endpoints.clone();
    replicas[1].public_key = impostor.public_key();
    fast(TransportConfig::replica(
        1,
        impostor.clone(),
        replicas,
        ClientPolicy::Any,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impostor_with_a_replica_id_but_another_key_is_refused_when_clients_are_restricted() {
    init_tracing();
    let mut cluster = Cluster::new(2);
    let impostor_key = key(66);
    let r0 = cluster.start(0, allowed(&[])).await;
    let impostor_socket = cluster.sockets[1].take().unwrap();
    let impostor =
        QuicTransport::start_with_socket(impostor_config(&cluster, &impostor_key), impostor_socket)
            .await
            .unwrap();
    impostor
        .send(Peer::Replica(0), b"I am replica 1".to_vec())
        .unwrap();
    r0.send(Peer::Replica(1), b"for the real replica 1".to_vec())
        .unwrap();

    // r0 refuses the impostor's connection, and refuses to talk to it as replica 1.
    wait_until("r0 refused the impostor both ways", || {
        r0.stats().connections_refused_unknown_key >= 2
    })
    .await;
    wait_until("the impostor saw the refusal", || {
        impostor.stats().connections_refused_by_peer >= 1
    })
    .await;
    assert_nothing_arrives(&r0, 300).await;
    assert_nothing_arrives(&impostor, 100).await;
    assert_eq!(r0.stats().frames_received, 0);
    assert_eq!(impostor.stats().frames_received, 0);
    impostor.shutdown().await;
    r0.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impostor_with_a_replica_id_is_at_most_a_client_when_any_client_is_admitted() {
    init_tracing();
    let mut cluster = Cluster::new(2);
    let impostor_key = key(66);
    let r0 = cluster.start(0, ClientPolicy::Any).await;
    let impostor_socket = cluster.sockets[1].take().unwrap();
    let impostor =
        QuicTransport::start_with_socket(impostor_config(&cluster, &impostor_key), impostor_socket)
            .await
            .unwrap();
    impostor
        .send(Peer::Replica(0), b"I am replica 1".to_vec())
        .unwrap();
    let frame = recv_within(&r0).await;
    assert_eq!(frame.from, Peer::Client(impostor_key.public_key()));
    assert_ne!(frame.from, Peer::Replica(1));
    // r0's own connection to "replica 1" is refused: the impostor cannot show replica 1's key.
    r0.send(Peer::Replica(1), b"for the real replica 1".to_vec())
        .unwrap();
    wait_until("r0 refused the impostor's server key", || {
        r0.stats().connections_refused_unknown_key >= 1
    })
    .await;
    assert_nothing_arrives(&impostor, 300).await;
    impostor.shutdown().await;
    r0.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_restarted_on_the_same_address_gets_frames_queued_during_the_outage() {
    init_tracing();
    let mut cluster = Cluster::new(2);
    let r0 = cluster.start(0, allowed(&[])).await;
    let r1 = cluster.start(1, allowed(&[])).await;
    r0.send(Peer::Replica(1), b"before".to_vec()).unwrap();
    assert_eq!(recv_within(&r1).await.frame, b"before".to_vec());

    r1.shutdown().await;
    assert!(r1.recv().await.is_none(), "recv after shutdown is None");
    assert_eq!(r1.send(Peer::Replica(0), vec![1]), Err(SendError::Closed));
    wait_until("r0 notices the connection loss", || {
        r0.stats().connections_lost >= 1
    })
    .await;
    r0.send(Peer::Replica(1), b"during the outage".to_vec())
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Same address, same key: a new process bound through the config, not a pre-bound socket.
    let r1 = QuicTransport::start(cluster.config(1, allowed(&[])))
        .await
        .expect("restart binds the same address");
    assert_eq!(r1.local_addr(), cluster.endpoints[1].addr);
    let frame = recv_within(&r1).await;
    assert_eq!(
        (frame.from, frame.frame),
        (Peer::Replica(0), b"during the outage".to_vec())
    );
    r1.send(Peer::Replica(0), b"back".to_vec()).unwrap();
    let frame = recv_within(&r0).await;
    assert_eq!(
        (frame.from, frame.frame),
        (Peer::Replica(1), b"back".to_vec())
    );
    r1.shutdown().await;
    r0.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_send_queue_returns_queue_full_and_counts_the_drop() {
    init_tracing();
    let cluster = Cluster::new(2);
    // Replica 1's socket stays bound but nobody serves it, so no connection ever comes up and
    // the queue to replica 1 only fills.
    let mut config = cluster.config(0, allowed(&[]));
    config.send_queue_frames = 4;
    config.max_frame_bytes = 64;
    let mut cluster = cluster;
    let socket = cluster.sockets[0].take().unwrap();
    let r0 = QuicTransport::start_with_socket(config, socket)
        .await
        .unwrap();
    for i in 0..4u8 {
        r0.send(Peer::Replica(1), vec![i]).unwrap();
    }
    assert_eq!(
        r0.send(Peer::Replica(1), vec![4]),
        Err(SendError::QueueFull(Peer::Replica(1)))
    );
    assert_eq!(r0.stats().frames_dropped_queue_full, 1);
    assert_eq!(
        r0.send(Peer::Replica(1), vec![0; 65]),
        Err(SendError::FrameTooLarge {
            size_bytes: 65,
            max_bytes: 64
        })
    );
    assert_eq!(
        r0.send(Peer::Replica(9), vec![0]),
        Err(SendError::UnknownPeer(Peer::Replica(9)))
    );
    r0.shutdown().await;
}

#[tokio::test]
async fn invalid_configurations_are_refused_with_clear_errors() {
    let cluster = Cluster::new(2);
    let mut config = cluster.config(0, allowed(&[]));
    config.send_queue_frames = 0;
    assert!(matches!(
        QuicTransport::start(config).await,
        Err(TransportError::InvalidConfig(_))
    ));
    let mut config = cluster.config(0, allowed(&[]));
    config.replicas[1].id = 0;
    assert!(matches!(
        QuicTransport::start(config).await,
        Err(TransportError::InvalidConfig(_))
    ));
    let mut config = cluster.client_config(key(9));
    config.replicas.clear();
    assert!(matches!(
        QuicTransport::start(config).await,
        Err(TransportError::InvalidConfig(_))
    ));
}

/// A replica killed without a word (its runtime dropped: no CONNECTION_CLOSE, no reset) and
/// restarted on the same address gets frames from a peer at once: the peer sees it connect in
/// again and redials, instead of writing into its dead connection until the idle timeout.
#[test]
fn replica_killed_without_closing_and_restarted_gets_frames_long_before_the_idle_timeout() {
    init_tracing();
    let idle_timeout = Duration::from_secs(30);
    let mut cluster = Cluster::new(2);
    let long_idle = |mut config: TransportConfig| {
        config.idle_timeout_ms = idle_timeout.as_millis() as u64;
        config
    };
    let main = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let socket0 = cluster.sockets[0].take().unwrap();
    let socket1 = cluster.sockets[1].take().unwrap();
    let r0 = main.block_on(async {
        QuicTransport::start_with_socket(long_idle(cluster.config(0, allowed(&[]))), socket0)
            .await
            .unwrap()
    });
    let r1 = doomed.block_on(async {
        QuicTransport::start_with_socket(long_idle(cluster.config(1, allowed(&[]))), socket1)
            .await
            .unwrap()
    });
    main.block_on(async {
        r0.send(Peer::Replica(1), b"before".to_vec()).unwrap();
    });
    doomed.block_on(async {
        assert_eq!(recv_within(&r1).await.frame, b"before".to_vec());
        r1.send(Peer::Replica(0), b"hello".to_vec()).unwrap();
    });
    main.block_on(async {
        assert_eq!(recv_within(&r0).await.frame, b"hello".to_vec());
        // Let r0's connection to r1 age past the redial threshold.
        tokio::time::sleep(Duration::from_millis(1200)).await;
    });
    // The crash: every task of r1 is dropped where it stands (its endpoint driver too, so no
    // close is ever sent), then the handle, which releases the socket.
    doomed.shutdown_timeout(Duration::from_millis(100));
    drop(r1);

    main.block_on(async {
        let restarted_at = tokio::time::Instant::now();
        let r1 = QuicTransport::start(long_idle(cluster.config(1, allowed(&[]))))
            .await
            .expect("restart binds the same address");
        // r0 keeps sending, as a replica does; the first frame to arrive proves the new link.
        let frame = loop {
            r0.send(Peer::Replica(1), b"after".to_vec()).unwrap();
            match tokio::time::timeout(Duration::from_millis(100), r1.recv()).await {
                Ok(frame) => break frame.expect("transport open"),
                Err(_) => assert!(
                    restarted_at.elapsed() < WAIT,
                    "no frame from r0 within {WAIT:?} of the restart (idle timeout {idle_timeout:?})"
                ),
            }
        };
        assert_eq!(
            (frame.from, frame.frame),
            (Peer::Replica(0), b"after".to_vec())
        );
        eprintln!(
            "first frame at the restarted replica {} ms after the restart",
            restarted_at.elapsed().as_millis()
        );
        r1.shutdown().await;
        r0.shutdown().await;
    });
}
