//! Issue 12: under `clients = "any"` a flood of fresh client keys filled the replicated client
//! table (`max_clients`), and every new client was then refused at execution for as long as
//! the flood kept its keys active (docs/design.md §3.7). The transport now admits client keys
//! per source network (IPv4 /24, IPv6 /64) at a bounded rate and caps the keys connected from
//! one, so one host cannot mint keys fast enough to fill the table.

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Duration;

use smr_core::codec;
use smr_core::driver::{self, DriverOptions, EmptyStart};
use smr_core::message::{Message, Request, RequestBody, RequestKind};
use smr_core::network::{Network, Peer};
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

/// Starts a client transport on `ip`, sends one ordered request, and says whether its reply
/// came within `wait`; shuts the client down either way.
async fn one_request(
    ip: &str,
    identity: Arc<IdentityKey>,
    replicas: &[ReplicaEndpoint],
    wait: Duration,
) -> bool {
    let socket = UdpSocket::bind(format!("{ip}:0")).unwrap();
    let mut config = TransportConfig::client(identity.clone(), replicas.to_vec());
    config.reconnect_initial_ms = 50;
    config.reconnect_max_ms = 200;
    let client = QuicTransport::start_with_socket(config, socket)
        .await
        .unwrap();
    let request = Request::new(
        RequestBody {
            client: identity.public_key(),
            session: 1,
            seq: 1,
            kind: RequestKind::Ordered,
            op: b"op".to_vec(),
        },
        Some(&*identity),
    );
    let frame = codec::encode(&Message::Request(request));
    let answered = tokio::time::timeout(wait, async {
        loop {
            // Resent until answered: a refused connection is redialed, and the frame queued
            // meanwhile may be lost with it.
            let _ = client.send(Peer::Replica(0), frame.clone());
            match tokio::time::timeout(Duration::from_millis(300), client.recv()).await {
                Ok(Some(inbound)) => {
                    if let Ok(Message::Reply(_)) = codec::decode::<Message>(&inbound.frame) {
                        return;
                    }
                }
                Ok(None) => std::future::pending::<()>().await,
                Err(_) => {}
            }
        }
    })
    .await
    .is_ok();
    client.shutdown().await;
    answered
}

/// Eight fresh keys from one host, one after the other (each connects, gets its request
/// executed and leaves, as a key-minting flood does), then a new client from another network.
/// The table holds 4 clients, active for the next 10,000 cids. Before, the flood's first 4 keys
/// filled it and the new client was refused at execution, without a reply. Now the flooding
/// host gets 2 keys admitted (its burst) and no more, and the new client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_flood_from_one_host_does_not_keep_a_new_client_out() {
    let key = Arc::new(IdentityKey::from_seed([1; 32]));
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let endpoint = ReplicaEndpoint {
        id: 0,
        addr: socket.local_addr().unwrap(),
        public_key: key.public_key(),
    };
    let mut transport_config =
        TransportConfig::replica(0, key.clone(), vec![endpoint.clone()], ClientPolicy::Any);
    transport_config.max_client_keys_per_source = 2;
    transport_config.client_keys_per_source_per_minute = 0;
    let transport = Arc::new(
        QuicTransport::start_with_socket(transport_config, socket)
            .await
            .unwrap(),
    );
    let engine_config = EngineConfig {
        quorums: Quorums::new(Mode::Cft, 1, 0).unwrap(),
        me: 0,
        replica_keys: vec![key.public_key()],
        clients: ClientPolicy::Any,
        limits: Limits {
            max_clients: 4,
            ..Limits::default()
        },
        timeouts: Timeouts::default(),
    };
    let replica = driver::start_replica(
        engine_config,
        key.clone(),
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

    let mut flood_answered = 0;
    for seed in 0..8u8 {
        let flooder = Arc::new(IdentityKey::from_seed([100 + seed; 32]));
        if one_request("127.0.0.1", flooder, &replicas, Duration::from_millis(700)).await {
            flood_answered += 1;
        }
    }
    let newcomer = Arc::new(IdentityKey::from_seed([200; 32]));
    let served = one_request("127.0.1.1", newcomer, &replicas, Duration::from_secs(5)).await;
    let refused = transport.stats().connections_refused_source_limit;
    replica.shutdown().await;
    transport.shutdown().await;
    assert!(
        served,
        "a new client from another network got no reply after a flood of 8 keys from one host \
         ({flood_answered} of them answered)"
    );
    assert_eq!(flood_answered, 2, "the flooding host's burst");
    assert!(refused >= 6, "refused {refused} connections");
}
