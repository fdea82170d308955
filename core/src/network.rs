//! The seam between the engine's driver and a transport.
//!
//! A transport moves opaque, length-delimited byte frames between authenticated peers. It owns
//! framing, connection management and peer authentication; it knows nothing about the protocol.
//! Decoding and validating a frame is the driver's job, so a transport can be swapped (QUIC in
//! production, channels in tests) without touching protocol code.

use std::future::Future;

use smr_crypto::PublicKey;

/// Index of a replica in the cluster configuration, `0..n`.
pub type ReplicaId = u32;

/// Who a frame came from or goes to. The transport guarantees that a `Peer` it reports was
/// authenticated: a `Replica(i)` proved possession of replica i's configured key, and a
/// `Client(k)` proved possession of key `k` (and `k` is admitted by the cluster's client policy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// Replica i of the configuration.
    Replica(ReplicaId),
    /// A client, named by its public key.
    Client(PublicKey),
}

/// A frame received from an authenticated peer.
#[derive(Debug)]
pub struct InboundFrame {
    /// Who sent it, as the transport authenticated it.
    pub from: Peer,
    /// One encoded [`Message`](crate::Message), not yet decoded or verified.
    pub frame: Vec<u8>,
}

/// Why a frame was not queued for sending.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    /// No connection to this peer can exist (not a configured replica, or a client that is
    /// not connected).
    #[error("peer {0:?} is not known to this transport")]
    UnknownPeer(Peer),
    /// The frame is larger than the transport carries.
    #[error("frame of {size_bytes} bytes exceeds the maximum frame size of {max_bytes} bytes")]
    FrameTooLarge {
        /// The frame's size in bytes.
        size_bytes: usize,
        /// The transport's maximum frame size in bytes.
        max_bytes: usize,
    },
    /// The peer's bounded send queue is full; the frame was dropped, and the protocol's
    /// retransmission makes up for it.
    #[error("send queue to {0:?} is full; the frame was dropped")]
    QueueFull(Peer),
    /// The transport has shut down.
    #[error("the transport is shut down")]
    Closed,
}

/// What the driver needs from a transport.
///
/// `send` never blocks: it queues the frame in a bounded per-peer queue and returns. Delivery is
/// best effort; the protocol retransmits what matters. `recv` yields the next frame from any
/// authenticated peer, or `None` once the transport has shut down.
pub trait Network: Send + Sync + 'static {
    /// Queues `frame` (one encoded message) for `to`, without blocking.
    ///
    /// # Errors
    /// [`SendError`] if the frame cannot be queued; it is then dropped.
    fn send(&self, to: Peer, frame: Vec<u8>) -> Result<(), SendError>;
    /// The next frame from any authenticated peer, or `None` once the transport has shut down.
    ///
    /// Must be cancel-safe: a future dropped before it completes must not have taken a frame.
    /// The driver's reader polls it once to see whether another frame is waiting (`recv_now`
    /// in `driver.rs`) and drops it if not; a frame such a future had taken would be lost.
    fn recv(&self) -> impl Future<Output = Option<InboundFrame>> + Send;
    /// Queues `frame` (a reply) for client `key`'s session `session`: over the connection
    /// that session's requests arrive on, if the transport knows it, so that processes sharing
    /// a key each get their own replies. By default, as [`Network::send`] to
    /// `Peer::Client(key)`.
    ///
    /// # Errors
    /// As [`Network::send`].
    fn send_to_session(
        &self,
        key: PublicKey,
        session: u64,
        frame: Vec<u8>,
    ) -> Result<(), SendError> {
        let _ = session;
        self.send(Peer::Client(key), frame)
    }
    /// Client role: from now on, announce `session` on the connections to the replicas, so
    /// that the session's replies come over them (a client's connections first announce its
    /// routing tag, for its open request's reply; docs/design.md §3.7, "Sessions"). Nothing
    /// by default.
    fn announce_session(&self, session: u64) {
        let _ = session;
    }
    /// Peer replicas the transport refuses because their protocol settings differ from ours
    /// ([`crate::settings`]), for the status report. None by default.
    fn refused_replicas(&self) -> Vec<crate::message::RefusedReplica> {
        Vec::new()
    }
}
