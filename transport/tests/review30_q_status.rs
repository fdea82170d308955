//! Review Q30: two processes sharing a client key (docs/design.md §3.7, "Sessions") each get
//! their own replies, but a replica answered a status query (`smr status`, `Client::status`)
//! over the key's newest connection, not the connection that asked (`Message::Status`'s docs):
//! while a second process of the key was connected, the first one's status queries were
//! answered to the second, and the first saw every replica as unreachable.

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Duration;

use smr_core::client::ClientConfig;
use smr_core::driver::{self, DriverOptions, EmptyStart};
use smr_core::{ClientPolicy, EngineConfig, Limits, Service, Timeouts};
use smr_crypto::{Ed25519Verifier, IdentityKey};
use smr_modes::{Mode, Quorums};
use smr_transport::{QuicTransport, ReplicaEndpoint, TransportConfig};

struct Echo;

impl Service for Echo {
    fn execute(&mut self, op: &[u8]) -> Vec<u8> {
        op.to_vec()
    }
    fn query(&self, op: &[u8]) -> Vec<u8> {
        op.to_vec()
    }
    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }
    fn restore(&mut self, _snapshot: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

const WAIT: Duration = Duration::from_secs(5);

/// A client process of `key`, as `smr_transport::Client::connect` starts one: its own routing
/// tag, announced on its connections, and its session open.
async fn process(
    key: &Arc<IdentityKey>,
    replicas: &[ReplicaEndpoint],
) -> (driver::Client<QuicTransport>, Arc<QuicTransport>) {
    let tag = driver::Client::<QuicTransport>::new_tag();
    let mut config = TransportConfig::client(key.clone(), replicas.to_vec());
    config.client_session = Some(tag);
    config.reconnect_initial_ms = 50;
    config.reconnect_max_ms = 200;
    let transport = Arc::new(QuicTransport::start(config).await.unwrap());
    let client = driver::Client::start_with_tag(
        transport.clone(),
        ClientConfig {
            quorums: Quorums::new(Mode::Cft, 1, 0).unwrap(),
            unordered_reads_enabled: false,
            max_outstanding: 4,
            max_op_bytes: Limits::default().max_op_bytes,
            retry_timeout_ms: 1000,
        },
        key.clone(),
        tag,
    );
    client.open(WAIT).await.expect("the session opens");
    (client, transport)
}

/// Process A connects, opens its session and gets its status answer; process B, same key,
/// connects after it. A's ordered request is still answered to A (replies are routed by
/// session), and so must its status query be. Before the fix the replica sent the answer to
/// the key's newest connection, B's: A's `status` returned `None` ("unreachable").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_answer_goes_to_the_process_that_asked_not_to_another_of_its_key() {
    let replica_key = Arc::new(IdentityKey::from_seed([1; 32]));
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let endpoint = ReplicaEndpoint {
        id: 0,
        addr: socket.local_addr().unwrap(),
        public_key: replica_key.public_key(),
    };
    let transport = Arc::new(
        QuicTransport::start_with_socket(
            TransportConfig::replica(
                0,
                replica_key.clone(),
                vec![endpoint.clone()],
                ClientPolicy::Any,
            ),
            socket,
        )
        .await
        .unwrap(),
    );
    let replica = driver::start_replica(
        EngineConfig {
            quorums: Quorums::new(Mode::Cft, 1, 0).unwrap(),
            me: 0,
            replica_keys: vec![replica_key.public_key()],
            clients: ClientPolicy::Any,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
        },
        replica_key.clone(),
        Arc::new(Ed25519Verifier),
        transport.clone(),
        Box::new(Echo),
        DriverOptions {
            empty_start: EmptyStart::NewCluster,
            ..DriverOptions::default()
        },
        None,
    )
    .unwrap();
    let replicas = [endpoint];
    let shared = Arc::new(IdentityKey::from_seed([2; 32]));

    let (a, a_transport) = process(&shared, &replicas).await;
    assert!(
        a.status(0, WAIT).await.is_some(),
        "A alone: its status query is answered"
    );
    let (b, b_transport) = process(&shared, &replicas).await;
    assert_ne!(a.session(), b.session());
    assert_eq!(a.invoke(b"a".to_vec(), WAIT).await.unwrap(), b"a".to_vec());
    assert_eq!(b.invoke(b"b".to_vec(), WAIT).await.unwrap(), b"b".to_vec());
    let a_status = a.status(0, WAIT).await;
    let b_status = b.status(0, WAIT).await;

    a.shutdown();
    b.shutdown();
    a_transport.shutdown().await;
    b_transport.shutdown().await;
    replica.shutdown().await;
    transport.shutdown().await;
    assert!(
        b_status.is_some(),
        "B (the key's newest connection) is answered"
    );
    assert!(
        a_status.is_some(),
        "A's status query went unanswered while B, which shares its key, was connected"
    );
}
