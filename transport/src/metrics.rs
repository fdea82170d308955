//! The transport's metrics: traffic per peer, connected peers, send-queue depth and the
//! transport's drop and refusal counters, as a `prometheus_client` collector read at scrape
//! time (docs/metrics.md). Counting a frame is a relaxed atomic add, on the same path as the
//! transport's other counters ([`crate::TransportStats`]).

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use smr_core::metrics::{encode_labelled, encode_value};
use smr_core::network::Peer;

use crate::QuicTransport;

/// Frames and bytes in and out of one peer (or of all clients together).
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
    frames_received: AtomicU64,
    bytes_received: AtomicU64,
}

/// Traffic by peer: one entry per configured replica id, and one for all clients together (a
/// label per client key would let anyone with a key grow the scrape without bound).
#[derive(Debug, Default)]
pub(crate) struct PeerTraffic {
    replicas: Box<[Traffic]>,
    clients: Traffic,
}

impl PeerTraffic {
    /// Room for replicas `0..replicas`; traffic of a higher id is not counted per peer.
    pub(crate) fn new(replicas: usize) -> PeerTraffic {
        PeerTraffic {
            replicas: (0..replicas).map(|_| Traffic::default()).collect(),
            clients: Traffic::default(),
        }
    }

    fn of(&self, peer: Peer) -> Option<&Traffic> {
        match peer {
            Peer::Replica(id) => self.replicas.get(id as usize),
            Peer::Client(_) => Some(&self.clients),
        }
    }

    /// Counts `frames` frames of `bytes` payload bytes written to `peer`.
    pub(crate) fn sent(&self, peer: Peer, frames: u64, bytes: u64) {
        if let Some(t) = self.of(peer) {
            t.frames_sent.fetch_add(frames, Ordering::Relaxed);
            t.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Counts `frames` frames of `bytes` payload bytes in all, read from `peer`.
    pub(crate) fn received(&self, peer: Peer, frames: u64, bytes: u64) {
        if let Some(t) = self.of(peer) {
            t.frames_received.fetch_add(frames, Ordering::Relaxed);
            t.bytes_received.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    fn samples(&self, field: impl Fn(&Traffic) -> &AtomicU64) -> Vec<(String, u64)> {
        let mut samples: Vec<(String, u64)> = self
            .replicas
            .iter()
            .enumerate()
            .map(|(id, t)| (id.to_string(), field(t).load(Ordering::Relaxed)))
            .collect();
        samples.push((
            "clients".to_string(),
            field(&self.clients).load(Ordering::Relaxed),
        ));
        samples
    }
}

/// One counter of a [`Traffic`].
type TrafficField = fn(&Traffic) -> &AtomicU64;

/// A [`QuicTransport`]'s metrics, read from it at each scrape.
#[derive(Clone)]
pub(crate) struct TransportMetrics(pub(crate) QuicTransport);

impl std::fmt::Debug for TransportMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TransportMetrics")
    }
}

impl Collector for TransportMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let e = &mut encoder;
        let transport = &self.0;
        let traffic = transport.peer_traffic();
        let per_peer: [(&str, &str, TrafficField); 4] = [
            (
                "smr_peer_frames_sent",
                "Frames written to a peer (peer: replica id, or clients for all clients).",
                |t| &t.frames_sent,
            ),
            (
                "smr_peer_sent_bytes",
                "Frame payload bytes written to a peer.",
                |t| &t.bytes_sent,
            ),
            (
                "smr_peer_frames_received",
                "Frames read from a peer.",
                |t| &t.frames_received,
            ),
            (
                "smr_peer_received_bytes",
                "Frame payload bytes read from a peer.",
                |t| &t.bytes_received,
            ),
        ];
        for (name, help, field) in per_peer {
            encode_labelled(e, name, help, Counter, "peer", &traffic.samples(field))?;
        }
        let (replicas, clients) = transport.connected_peers();
        encode_labelled(
            e,
            "smr_connected_peers",
            "Peers with a live connection to this replica (kind: replica or client).",
            Gauge,
            "kind",
            &[
                ("replica".to_string(), replicas as u64),
                ("client".to_string(), clients as u64),
            ],
        )?;
        encode_value(
            e,
            "smr_send_queue_bytes",
            "Bytes waiting in all send queues together.",
            Gauge,
            transport.send_queue_bytes() as u64,
        )?;
        let stats = transport.stats();
        encode_labelled(
            e,
            "smr_frames_dropped",
            "Outgoing frames dropped (reason: queue_full, connection_lost).",
            Counter,
            "reason",
            &[
                ("queue_full".to_string(), stats.frames_dropped_queue_full),
                (
                    "connection_lost".to_string(),
                    stats.frames_dropped_connection_lost,
                ),
            ],
        )?;
        encode_labelled(
            e,
            "smr_connections_refused",
            "Connections refused (reason: client_limit, client_bytes, source_limit, unknown_key, settings, by_peer).",
            Counter,
            "reason",
            &[
                (
                    "client_limit".to_string(),
                    stats.connections_refused_client_limit,
                ),
                (
                    "client_bytes".to_string(),
                    stats.connections_refused_client_bytes,
                ),
                (
                    "source_limit".to_string(),
                    stats.connections_refused_source_limit,
                ),
                (
                    "unknown_key".to_string(),
                    stats.connections_refused_unknown_key,
                ),
                ("settings".to_string(), stats.connections_refused_settings),
                ("by_peer".to_string(), stats.connections_refused_by_peer),
            ],
        )?;
        encode_labelled(
            e,
            "smr_connections_closed",
            "Connections this replica closed (reason: buffer_limit, slow_frame, key_limit, idle_key, place_given, key_given, room_given).",
            Counter,
            "reason",
            &[
                (
                    "buffer_limit".to_string(),
                    stats.connections_closed_buffer_limit,
                ),
                (
                    "slow_frame".to_string(),
                    stats.connections_closed_slow_frame,
                ),
                ("key_limit".to_string(), stats.connections_evicted),
                ("idle_key".to_string(), stats.client_keys_evicted_idle),
                (
                    "place_given".to_string(),
                    stats.client_connections_displaced,
                ),
                ("key_given".to_string(), stats.client_keys_displaced),
                (
                    "room_given".to_string(),
                    stats.connections_closed_room_given,
                ),
            ],
        )?;
        encode_labelled(
            e,
            "smr_frames_held_back",
            "Incoming frames that waited for room (reason: peer_share, partial_budget).",
            Counter,
            "reason",
            &[
                ("peer_share".to_string(), stats.frames_held_back_peer_share),
                (
                    "partial_budget".to_string(),
                    stats.frames_held_back_partial_budget,
                ),
            ],
        )?;
        encode_value(
            e,
            "smr_connections_lost",
            "Established connections that ended other than by shutdown.",
            Counter,
            stats.connections_lost,
        )?;
        encode_value(
            e,
            "smr_handshake_failures",
            "Dials or incoming handshakes that failed or timed out.",
            Counter,
            stats.handshake_failures,
        )
    }
}
