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

/// Whose frames [`Network::recv_many_from`] takes: any peer's, or only replicas' or only
/// clients'. The driver's reader takes only one kind while it holds as many frames of the
/// other kind as it may for verify queues without room ([`Network::receive_queue_frames`]), so
/// that the other kind's frames are still taken (docs/design.md §7.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Senders {
    /// Frames of every peer, in the order [`Network::recv`] yields them.
    Any,
    /// Only frames of replicas ([`Peer::Replica`]).
    Replicas,
    /// Only frames of clients ([`Peer::Client`]).
    Clients,
}

impl Senders {
    /// Whether a frame from `peer` is one of these senders'.
    pub fn admits(self, peer: &Peer) -> bool {
        match (self, peer) {
            (Senders::Any, _) => true,
            (Senders::Replicas, Peer::Replica(_)) | (Senders::Clients, Peer::Client(_)) => true,
            (Senders::Replicas, Peer::Client(_)) | (Senders::Clients, Peer::Replica(_)) => false,
        }
    }
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
    /// The default [`Network::recv_many`] polls it once to see whether another frame is
    /// waiting and drops it if not; a frame such a future had taken would be lost.
    fn recv(&self) -> impl Future<Output = Option<InboundFrame>> + Send;
    /// Waits for the next frame, then appends it and the frames waiting right after it to
    /// `frames`, in the order [`Network::recv`] would yield them: more while fewer than
    /// `max_frames` were taken and they hold fewer than `max_bytes` (so at most `max_frames`
    /// frames, and `max_bytes` plus one frame). False once the transport has shut down (the
    /// frames taken before it are still appended).
    ///
    /// The driver's readers take their frames this way (the replica's through
    /// [`Network::recv_many_holding_room`]): a transport can then take them, and account for them,
    /// once per batch instead of once per frame. Must be cancel-safe as `recv` is: nothing may
    /// wait once the first frame is taken. By default, one [`Network::recv`] per frame (which
    /// must be cancel-safe: the frames after the first are taken by polling it once).
    fn recv_many<'a>(
        &'a self,
        frames: &'a mut Vec<InboundFrame>,
        max_frames: usize,
        max_bytes: usize,
    ) -> impl Future<Output = bool> + Send + 'a {
        async move {
            let Some(first) = self.recv().await else {
                return false;
            };
            let (mut taken, mut bytes) = (1, first.frame.len());
            frames.push(first);
            while taken < max_frames && bytes < max_bytes {
                let next = {
                    let recv = std::pin::pin!(self.recv());
                    poll_once(recv).await
                };
                match next {
                    Some(Some(frame)) => {
                        taken += 1;
                        bytes = bytes.saturating_add(frame.frame.len());
                        frames.push(frame);
                    }
                    Some(None) => return false,
                    None => break,
                }
            }
            true
        }
    }
    /// As [`Network::recv_many`], but only frames of `senders`; the frames of other senders
    /// stay queued, in their order, for a later call. Cancel-safe as `recv_many` is: a future
    /// dropped before it completes has taken no frame (the driver's reader drops it when a
    /// verify worker frees room for frames it holds first).
    ///
    /// By default, [`Senders::Any`] is [`Network::recv_many`], and a transport that cannot take
    /// one kind of sender's frames alone never completes for the others (the driver's reader
    /// then only waits for room in its verify queues, taking nothing meanwhile).
    fn recv_many_from<'a>(
        &'a self,
        frames: &'a mut Vec<InboundFrame>,
        senders: Senders,
        max_frames: usize,
        max_bytes: usize,
    ) -> impl Future<Output = bool> + Send + 'a {
        async move {
            match senders {
                Senders::Any => self.recv_many(frames, max_frames, max_bytes).await,
                Senders::Replicas | Senders::Clients => std::future::pending().await,
            }
        }
    }
    /// As [`Network::recv_many_from`], but the frames taken keep their room in the transport's
    /// receive queue (their bytes, and their sender's share of them) until it is given back
    /// with [`Network::release_room`], once per frame. The driver's reader takes frames this
    /// way, and gives their room back only once a frame is in a verify queue (or verified):
    /// the frames it holds for a full verify queue still count against their sender's share,
    /// so the transport's per-peer bounds (and QUIC flow control behind them) hold back the
    /// peer that fills a queue, not every peer of its kind (docs/design.md §7.8).
    ///
    /// By default, [`Network::recv_many_from`]: the room is given back at once, and
    /// `release_room` does nothing. The reader then bounds what it holds itself (at most
    /// `verify_queue_frames` and `verify_queue_bytes` of each kind of sender, the driver's
    /// `DriverOptions`), and takes only the other kind's frames beyond that.
    fn recv_many_holding_room<'a>(
        &'a self,
        frames: &'a mut Vec<InboundFrame>,
        senders: Senders,
        max_frames: usize,
        max_bytes: usize,
    ) -> impl Future<Output = bool> + Send + 'a {
        self.recv_many_from(frames, senders, max_frames, max_bytes)
    }
    /// For a transport that keeps the room of frames taken with
    /// [`Network::recv_many_holding_room`] until [`Network::release_room`], bounded per peer:
    /// how many frames of `senders`' kind ([`Senders::Replicas`] or [`Senders::Clients`]) its
    /// receive queue holds at most, those taken and not given back included. The driver's
    /// reader then holds up to that many frames of a kind (at least `verify_queue_frames`) for
    /// verify queues without room before it stops taking that kind, and leaves their bytes to
    /// the transport's own bounds, so that only a peer's share holds it back. Must be finite:
    /// the reader may hold that many frames in memory.
    ///
    /// `None` by default (room given back at once): the reader then holds at most
    /// `verify_queue_frames` and `verify_queue_bytes` of a kind, and beyond that one peer's
    /// flood holds up the other peers of its kind (docs/design.md §7.8).
    fn receive_queue_frames(&self, senders: Senders) -> Option<usize> {
        let _ = senders;
        None
    }
    /// Gives back the room of frames taken with [`Network::recv_many_holding_room`]: each
    /// `(sender, frame length in bytes)` once. Nothing by default.
    fn release_room(&self, frames: &[(Peer, usize)]) {
        let _ = frames;
    }
    /// Queues `frame` (a reply, or a status answer) for client `key`'s session `session` (or
    /// routing tag: what the client's connection announced, [`Network::announce_session`]):
    /// over the connection that session's requests arrive on, if the transport knows it, so
    /// that processes sharing a key each get their own replies. By default, as
    /// [`Network::send`] to `Peer::Client(key)`.
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

/// The future's output if it is ready at the first poll, else `None` (and it is dropped).
async fn poll_once<F: Future + Unpin>(mut future: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| match std::pin::Pin::new(&mut future).poll(cx) {
        std::task::Poll::Ready(output) => std::task::Poll::Ready(Some(output)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}
