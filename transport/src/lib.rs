//! smr-transport: run a replica or a client of an smr cluster over QUIC. To embed smr in your
//! program, depend on the `smr` crate: it re-exports [`Replica`] and [`Client`] (with their
//! builders, [`Replica::builder`] and [`Client::builder`]), the service trait, the config and
//! key types, and its front page walks through a whole program.
//!
//! The replicas' engine is [`smr_core::engine::Engine`] (sans-IO and deterministic) run by
//! [`smr_core::driver`]; `docs/design.md` in the repository explains the protocol.
//!
//! # The transport underneath
//! [`QuicTransport`] implements core's [`Network`] seam over QUIC (quinn 0.11, rustls 0.23 with
//! the *ring* provider). It moves opaque byte frames between peers that it has authenticated. It
//! knows nothing about the protocol: decoding and validating frames is the driver's job.
//!
//! # Identities are pinned keys
//! Every endpoint presents a self-signed certificate made (with rcgen) from its ed25519 identity
//! key. There is no certificate authority: a custom rustls verifier compares the peer's
//! SubjectPublicKeyInfo bytes with the keys in the configuration, and rustls checks the TLS 1.3
//! handshake signature that proves possession of the private key. Only TLS 1.3 and ED25519 are
//! offered, and session resumption is disabled on both sides (a resumed session would skip the
//! verifiers; docs/design.md §6). The peer a frame is attributed to comes only from the pinned
//! key:
//! - an incoming connection whose key is replica j's configured key is `Peer::Replica(j)`;
//! - otherwise, if the [`ClientPolicy`] admits the key, it is `Peer::Client(key)`;
//! - otherwise the handshake is refused with TLS alert 49 (access_denied).
//!
//! A client that is refused still sees its QUIC handshake complete (TLS 1.3 clients finish before
//! the server has checked their certificate); the refusal arrives as a connection close right
//! after, counted in [`TransportStats::connections_refused_by_peer`]. Nothing it wrote is ever
//! delivered. Outgoing connections check that the dialed replica presents exactly the key
//! configured for it.
//!
//! A replica started with an identity key that is not the key configured for its id fails in
//! [`QuicTransport::start`] with [`TransportError::IdentityMismatch`].
//!
//! # Connections
//! Every replica dials every other replica and *sends* on that outgoing connection; it *receives*
//! on the connections others opened to it. So there are two connections per pair of replicas and no
//! tie-breaking; a replica may hold two incoming connections to us (a third closes the oldest).
//! Clients dial every replica, and open every stream with their session (a random number a
//! [`Client`] picks when it connects; [`TransportConfig::client_session`]). A replica answers a
//! session over the most recent live connection that announced it
//! ([`Network::send_to_session`]), so processes that share a key each get their own replies
//! (docs/design.md §3.7, "Sessions"); a client that announces none is answered over its key's
//! most recent connection that announced none. A key may hold
//! [`TransportConfig::max_connections_per_client_key`] connections (64); opening more closes the
//! oldest.
//! At most [`TransportConfig::max_client_keys`] distinct client keys may be connected at once.
//! When that many are, a further key takes the place of the connected key that has sent no
//! bytes for the longest time (a key uploading a frame is active), if that is at least 5 s: the idle key's connections are closed
//! (counted, [`TransportStats::client_keys_evicted_idle`]; the first is logged) and it may
//! reconnect later; if every key sent bytes within 5 s, the new key's connection is refused,
//! counted and logged (the first as a warning; one scan of the key table finds when the first
//! key can become idle, and until then further keys are refused without one). So keys parked idle keep nobody out for more than a few seconds, while
//! active keys are never evicted by that rule. A flood of keys that all keep sending from
//! enough networks would still fill the table, so the key places are shared between source
//! networks by max-min fairness, as the client connection places are (see "What a client
//! connection can make a replica hold" below): when the table is full, a new key from a
//! network with fewer keys connected than its fair share takes the place of the idlest key
//! of the network with the most keys, active or not (its connections are closed with
//! application code 11, counted in [`TransportStats::client_keys_displaced`]; it may
//! reconnect), and a network with no fewer than its fair share falls back to the idle rule
//! above (docs/design.md §3.7). From one source network (an IPv4
//! /24, an IPv6 /64) at most [`TransportConfig::max_client_keys_per_source`] keys may be
//! connected at once, and keys not already connected from it are admitted at most
//! [`TransportConfig::client_keys_per_source_per_minute`] a minute after a burst of that many;
//! further ones are refused, counted and logged, so that one source network cannot mint keys
//! fast enough to fill the client table under [`ClientPolicy::Any`] (docs/design.md §3.7).
//! A source network is not a host or a customer: an IPv6 customer often holds a /56 or a /48,
//! that is 256 or 65,536 /64s, so every per-network bound here is worth that many times as
//! much to one such customer;
//! a frame for a client with no live connection is refused with [`SendError::UnknownPeer`]. Frames sent by a replica to itself are looped back to its own
//! [`Network::recv`] without touching the network.
//!
//! A restarted replica is recognised at once. Its QUIC endpoint's stateless-reset and
//! connection-id keys are derived from its identity key, so the new run answers a packet its
//! peers or clients send on a connection to the old run with a stateless reset they accept, and
//! they reconnect instead of waiting out [`TransportConfig::idle_timeout_ms`]. Every incoming
//! connection from a replica (with protocol settings, once they are found equal to ours) also
//! makes our link to it dial at once if it is waiting out its reconnect backoff, or redial if
//! its connection is older than a second.
//!
//! # Protocol settings
//! With [`TransportConfig::protocol_settings`] (which [`Replica`] always sets), a replica opens
//! every stream to a replica with its settings ([`smr_core::settings`]: mode, n, f, keys,
//! the limits that decide validity), and closes a replica connection whose
//! first frame is not exactly its own settings, before any frame of it reaches
//! [`Network::recv`]. It logs an error naming each setting that differs, with both values,
//! counts it ([`TransportStats::connections_refused_settings`]) and reports the peer in
//! [`QuicTransport::refused_replicas`] (and so in `smr status`) until it connects with equal
//! settings.
//!
//! # Framing
//! A sender opens one long-lived unidirectional stream on the connection it sends over (on first
//! use) and writes frames to it, each a `u32` big-endian length followed by that many bytes. A frame longer than
//! [`TransportConfig::max_frame_bytes`] (from a replica) or
//! [`TransportConfig::max_client_frame_bytes`] (from a client) is rejected: it is counted, logged
//! with `tracing::warn`, and the connection that carried it is closed, while every other peer is
//! still served. A frame body is buffered only as its bytes arrive, so a peer cannot make us
//! allocate by lying about a length, and all streams of one connection together buffer at most
//! one frame of the peer's limit (more closes the connection, counted). Partial frames from
//! clients also share one total, [`TransportConfig::client_partial_frame_bytes`]: a client
//! stream holds room for the bytes of its partial frame that have arrived (never for the length
//! its prefix claims), taken after each read of at most 64 KiB, and reads no further than the
//! frame's end. A stream that needs more room than is left waits, keeping what it holds,
//! unread (until room comes, its connection ends or its frame's deadline passes), which pushes
//! back on its client through QUIC flow control. One source network (an IPv4 /24, an IPv6 /64)
//! may hold at most an eighth of the total (at least one client frame), so one network cannot
//! make every other client's large frames wait; and since eight networks could, the total is
//! shared between networks by max-min fairness, as the client connection places are (see
//! "What a client connection can make a replica hold"): a stream that needs room the total
//! lacks, of a network holding less than its fair share of it (the total over the networks
//! holding any, its own counted), makes a partial frame of the network holding the most give
//! its room, which goes to that stream directly (not back to the budget, where the first
//! stream in line, of any network, would take it): the frame that began holding room longest
//! ago of those holding what the stream needs, or, if none does, the one holding the most,
//! and then the next, until what the stream was given covers its need (so a network cannot
//! answer with a frame of a few bytes it keeps oldest).
//! The frame that gives is refused: its connection is closed with application code 12
//! ("partial frame room given to another network"; counted in
//! [`TransportStats::connections_closed_room_given`], the first logged), and its client
//! reconnects and sends the request again, like after any lost connection. Every partial client frame has a deadline:
//! it must be complete within [`TransportConfig::idle_timeout_ms`] plus its length at
//! 256 KiB/s from its first bytes (14 s for 1 MiB at the defaults), or its connection is
//! closed (counted, [`TransportStats::connections_closed_slow_frame`]; the first is logged)
//! and its room given back. So holding room costs a client the bytes held, sent again every
//! deadline, and streams that wait while holding room cannot wait on each other for ever;
//! besides, one waiting stream at a time may read the rest of its frame without room (an
//! overdraft of one client frame), so waiting streams always make progress without waiting
//! for a deadline. The overdraft goes in turns by source network: a network that held it
//! last does not take it again while a stream of another network waits, so one network
//! cannot hold it for more than one frame in a row. Replica frames never count against the total, so clients cannot starve
//! them. A stream that ends in the middle of a frame is counted as truncated.
//!
//! What a client connection can make a replica hold, and the total: quinn buffers at most
//! 256 KiB of a client connection's unread stream data (its connection-level receive window,
//! for all its streams together; replica connections keep quinn's unlimited default, for
//! throughput); the transport's buffers of its partial frames hold at most one client frame
//! plus two 64 KiB chunks per connection, and over all clients at most
//! `client_partial_frame_bytes` plus one client frame (the overdraft) plus one 64 KiB chunk
//! per waiting stream. Per client connection that is at most 256 KiB + 4 × 64 KiB = 512 KiB
//! ([`TransportConfig::CLIENT_CONNECTION_HELD_BYTES`]) outside the partial-frame budget.
//! The total has a bound of its own, [`TransportConfig::client_connection_total_bytes`]
//! (2 GiB at the defaults): every live client connection counts its 512 KiB worst case
//! against it, so at most `client_connection_total_bytes / 512 KiB` client connections are
//! open at once (4096 at the defaults) and a further one is refused at once, before it
//! holds anything (counted, [`TransportStats::connections_refused_client_bytes`]). So all
//! client connections together make a replica hold at most `client_connection_total_bytes`
//! outside the partial-frame budget (and `client_partial_frame_bytes` plus one client frame
//! inside it), whatever `max_client_keys` and `max_connections_per_client_key` allow (before
//! this bound, 4096 keys × 64 connections could hold 128 GiB). Replica connections never
//! count against it. One source network (an IPv4 /24, an IPv6 /64) may hold at most an eighth
//! of those places (at least 4: 512 at the defaults; refused beyond it and counted in
//! [`TransportStats::connections_refused_source_limit`]): without that share, one network's
//! 256 keys × 64 connections could take every place and lock every other client's new
//! connections out.
//!
//! Fixed shares alone are not enough: eight networks (eight /24s, or eight /64s of one
//! customer's /61) would take every place, and keep it by keeping their connections active.
//! So the places are shared between networks by **max-min fairness**: when every place is
//! taken, a connection from a network holding fewer than its *fair share* (the places divided
//! by the number of networks holding any, its own counted, rounded down, at least 1) takes the
//! place of the connection of the network holding the most that received bytes longest ago
//! (active or not), if that network holds at least two more; a network at or above its fair
//! share is refused as before (counted in
//! [`TransportStats::connections_refused_client_bytes`], logged). A network never loses a
//! place to another while it holds no more than its fair share, so with N networks taking
//! all they can, every other network still gets `places / (N + 1)` places (up to the eighth),
//! whatever N: at the defaults, with a thousand attacking networks, 4 connections, one
//! client process per network against a cluster of 4. In particular a client already
//! connected and active, in a network that holds no more than its fair share, is never
//! displaced by newcomers of other networks. The displaced connection is counted
//! ([`TransportStats::client_connections_displaced`], the first logged) and closed with
//! application code 11 ("place given to a client of another network"); its client sees a
//! closed connection, and a [`Client`] redials (with its reconnect backoff): it gets in again
//! while its network holds less than its fair share, and a request it had pending is
//! answered to its retry (from the client table's reply cache). The place changes hands under
//! one lock, so the total stays bounded. A connection refused for want of a place still
//! closes the connections of the client key idle longest if it sent nothing for 5 s (as the
//! key table does), so idle connections cannot keep out even a network at its fair share.
//! Why this rule: a share that shrinks as networks appear cannot be exhausted by any number
//! of them; weights or reputations would need state that outlives connections and that an
//! attacker can farm, while this needs only what each network holds now.
//!
//! # Sending and the overflow policy
//! [`Network::send`] never blocks. It pushes the frame onto a per-peer queue that a writer task
//! drains, bounded in frames and in bytes ([`TransportConfig::send_queue_frames`] and
//! [`TransportConfig::send_queue_bytes`] to a replica, the much smaller `client_send_queue_*` to
//! a client connection) and, over all queues, by [`TransportConfig::send_queue_total_bytes`]. When
//! a bound would be crossed the *new* frame is dropped, counted (the first drop of an episode is
//! logged), and [`SendError::QueueFull`] is returned, so a peer that stops reading costs us at
//! most its queue: delivery is best
//! effort and the protocol retransmits what matters. The writer coalesces: it drains every frame
//! already queued into one buffer and issues one write, which is what makes small messages cheap.
//! If an outgoing connection breaks, the writer reconnects with exponential backoff
//! ([`TransportConfig::reconnect_initial_ms`] doubling up to
//! [`TransportConfig::reconnect_max_ms`]); frames queued meanwhile are kept, up to the bound. Frames
//! that were in the write that failed are lost, and counted.
//!
//! # Receiving
//! Frames from all connections funnel into the queue read by [`Network::recv`], bounded in frames
//! ([`TransportConfig::recv_queue_frames`]) and in bytes ([`TransportConfig::recv_queue_bytes`]).
//! It has two lanes, each with half of both bounds: one for replica frames, one for client frames,
//! so that clients (anyone, under [`ClientPolicy::Any`]) cannot make protocol messages wait behind
//! theirs. Within a lane each peer may hold only a share: a replica `1 / replicas` of its lane,
//! a client key `1 / 16` (a frame larger than a share passes alone, charged the whole share
//! against both its share and the lane, so it leaves every other peer its share);
//! a frame counts against its share at least `lane bytes / lane frames`, so a share also bounds
//! the frame slots a peer holds. `recv` takes replica frames first, but after 16
//! in a row one waiting client frame. When a share or a lane is full, that peer's readers wait
//! (counted in [`TransportStats::frames_held_back_peer_share`], the first logged), which pushes
//! back on the peer through QUIC flow control; no frame is dropped. [`Network::recv_many`] takes
//! what is waiting in the same order as `recv` would, and gives the frames' room back together; a
//! reader takes the room of the frames of one read together when it is there. Either way each frame
//! holds and gives back exactly what it would alone. [`Network::recv_many_from`] takes only one
//! lane's frames when asked for replicas' or clients' alone; the other lane's wait.
//! The driver's reader takes frames with [`Network::recv_many_holding_room`]: their room stays
//! taken until it gives it back ([`Network::release_room`]) once they are in a verify queue, so
//! a peer whose frames the reader holds for a full verify queue is held back by its own share.
//!
//! # Threading
//! Everything runs as tasks on the caller's tokio runtime (multi-threaded recommended): one
//! acceptor (replicas only), one writer per outgoing connection and per client connection, and one
//! reader per incoming stream. [`QuicTransport`] is a cheap handle (`Clone`, an `Arc` inside).
//! [`QuicTransport::shutdown`] closes the endpoint, stops every task and releases the UDP port;
//! [`Network::recv`] returns `None` and [`Network::send`] returns [`SendError::Closed`] afterwards.
//! Dropping the last handle without `shutdown` closes the endpoint too, but does not wait.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod embed;
mod link;
mod metrics;
mod tls;

pub use embed::{
    Client, ClientBuilder, NoService, Replica, ReplicaBuilder, StartError, UnorderedReads,
};
/// The metrics crate whose registry [`Replica::register_metrics`] fills: use this re-export to
/// be sure of the same version.
pub use prometheus_client;

/// The HTTP content type of [`Replica::encode_metrics`]'s text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Appends `registry` in the OpenMetrics text format, `# EOF` included. Writing to a `String`
/// cannot fail, and the collectors of this crate and of smr-core never fail.
pub fn encode_registry(out: &mut String, registry: &prometheus_client::registry::Registry) {
    if prometheus_client::encoding::text::encode(out, registry).is_err() {
        tracing::error!("a metrics collector failed to encode");
    }
}
pub use smr_core::driver::{EmptyStart, ReplicaError};

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smr_core::network::{InboundFrame, Network, Peer, ReplicaId, SendError, Senders};
use smr_crypto::{IdentityKey, PublicKey};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// Where a replica listens and which key it must present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaEndpoint {
    /// The replica's id, `0..n`; frames from it are attributed to `Peer::Replica(id)`. Unique
    /// within a [`TransportConfig`].
    pub id: ReplicaId,
    /// The UDP address the replica binds (an IP it owns, not a wildcard) and its peers dial.
    pub addr: SocketAddr,
    /// The ed25519 key the replica's TLS certificate must carry. Compared byte for byte with
    /// the certificate's SubjectPublicKeyInfo, in both directions (docs/design.md §6). Unique
    /// within a [`TransportConfig`].
    pub public_key: PublicKey,
}

/// Which client keys a replica admits (core's policy, shared so both layers agree). Replicas'
/// own keys are always admitted, as replicas.
pub use smr_core::ClientPolicy;

/// What this transport instance is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The replica with this id: binds its configured address, accepts connections from
    /// replicas and admitted clients, and dials every other replica.
    Replica(ReplicaId),
    /// A client: binds an ephemeral port, accepts nothing, and dials every replica.
    Client,
}

/// Everything [`QuicTransport::start`] needs.
#[derive(Clone)]
pub struct TransportConfig {
    /// Replica or client; decides what is bound, accepted and dialed.
    pub role: Role,
    /// Our key. The TLS certificate is self-signed with it; a replica's must equal its
    /// configured [`ReplicaEndpoint::public_key`].
    pub identity: Arc<IdentityKey>,
    /// Every replica of the cluster, this one included. Ids and keys must be unique, and the
    /// list non-empty.
    pub replicas: Vec<ReplicaEndpoint>,
    /// Which client keys a replica admits. Ignored in the client role.
    pub clients: ClientPolicy,
    /// Largest frame accepted from or sent to a replica (and sent to a client), at most
    /// `u32::MAX`. [`Replica`] and [`Client`] derive it from the cluster's limits
    /// ([`smr_core::frame_limits::replica_frame_bytes`]).
    pub max_frame_bytes: usize,
    /// Largest frame accepted from a client connection: a request, far smaller than what
    /// replicas exchange. [`Replica`] derives it from `max_op_bytes`
    /// ([`smr_core::frame_limits::client_frame_bytes`]).
    pub max_client_frame_bytes: usize,
    /// Bound of each send queue to a replica, in frames.
    pub send_queue_frames: usize,
    /// Bound of each send queue to a replica, in bytes. A frame larger than this is still
    /// queued when the queue is empty, so every frame up to `max_frame_bytes` can be sent.
    pub send_queue_bytes: usize,
    /// Bound of each send queue to a client connection, in frames.
    pub client_send_queue_frames: usize,
    /// Bound of each send queue to a client connection, in bytes (a frame larger than this
    /// is still queued when the queue is empty).
    pub client_send_queue_bytes: usize,
    /// Bound of all send queues together, in bytes: a frame that would cross it is dropped
    /// (unless nothing is queued at all).
    pub send_queue_total_bytes: usize,
    /// Bound of the queue that [`Network::recv`] reads, in frames: half for replica frames,
    /// half for client frames.
    pub recv_queue_frames: usize,
    /// Bound of the queue that [`Network::recv`] reads, in bytes: half for replica frames,
    /// half for client frames, each peer with a share of its half (see the crate docs,
    /// "Receiving"). Readers wait (pushing back on peers through QUIC flow control) while
    /// their peer's share or lane is full.
    pub recv_queue_bytes: usize,
    /// Bound of the bytes of partial frames (frames whose body has not fully arrived) buffered
    /// from all client connections together (replica role), held for the bytes that arrived.
    /// A client stream that needs more waits, which pushes back on its client through QUIC
    /// flow control; a partial frame not complete by its deadline (`idle_timeout_ms` plus its
    /// length at 256 KiB/s) closes its connection. One source network (IPv4 /24, IPv6 /64)
    /// may hold an eighth of it, at least one client frame, and a network below its fair
    /// share of it takes room from the network holding the most (max-min fairness; see the
    /// crate docs, "Framing"). Replica frames
    /// never count against it: each replica connection has its own bound of one frame. Must
    /// hold at least one client frame (`max_client_frame_bytes` + 4); replicas and clients
    /// started from a cluster config ([`Replica`], [`Client`]) raise it to at least eight, so that an
    /// eighth still holds one whatever `max_op_bytes` is.
    pub client_partial_frame_bytes: usize,
    /// Most distinct client keys with live connections at once (replica role). A further key
    /// from a network with fewer keys than its fair share takes the place of the idlest key of
    /// the network with the most (max-min fairness between source networks); otherwise it
    /// takes the place of the key idle longest if that one sent no bytes for 5 s (the key's
    /// connections are closed, counted); otherwise its connection is refused, counted and
    /// logged. Matters under [`ClientPolicy::Any`], where anyone can mint keys.
    pub max_client_keys: usize,
    /// Most distinct client keys connected at once from one source network: an IPv4 /24 or an
    /// IPv6 /64 (replica role). A connection from a further key is refused, counted and
    /// logged. With [`TransportConfig::client_keys_per_source_per_minute`], it bounds how fast
    /// one source network can mint client keys under [`ClientPolicy::Any`] (docs/design.md
    /// §3.7). A network is not a customer: IPv6 customers often hold a /56 (256 /64s) or more.
    pub max_client_keys_per_source: usize,
    /// How many keys not already connected from it one source network may connect per
    /// minute, after a burst of [`TransportConfig::max_client_keys_per_source`] (replica
    /// role); a further one is refused, counted and logged. 0 admits no key beyond the burst.
    pub client_keys_per_source_per_minute: u64,
    /// First delay before redialing a replica; doubles on every failure.
    pub reconnect_initial_ms: u64,
    /// Largest delay between dials.
    pub reconnect_max_ms: u64,
    /// How long a dial (QUIC and TLS handshake) may take before it counts as failed.
    pub connect_timeout_ms: u64,
    /// A connection with no traffic for this long is considered dead. Keep-alives are sent at a
    /// third of it, so this bounds how long a silently vanished peer goes unnoticed.
    pub idle_timeout_ms: u64,
    /// The protocol settings of the cluster ([`smr_core::settings`]), if replicas are to check
    /// them: a replica then opens every stream to a replica with its settings, and refuses
    /// (closes, logging an error naming the settings that differ, and reporting it in
    /// [`QuicTransport::refused_replicas`]) a replica whose settings differ or that sends
    /// none, before any of its frames reaches [`Network::recv`]. [`Replica`] sets it from the
    /// cluster's config; with `None` nothing is sent or checked.
    pub protocol_settings: Option<Arc<smr_core::settings::ProtocolSettings>>,
    /// Client role: what this client announces first: the routing tag of its open request
    /// ([`smr_core::driver::Client::new_tag`]), until [`Network::announce_session`] announces
    /// its session. Every stream it opens to a replica starts with the announcement, so that
    /// the replica sends the replies over this connection, not over another process's that
    /// shares the key ([`Network::send_to_session`]). `None` announces nothing: replies then
    /// go to the key's newest connection that announced no session.
    pub client_session: Option<u64>,
    /// Most live connections one client key may hold to a replica (replica role); a further
    /// one closes the key's oldest, counted (a client that reconnects after a network blip
    /// must not wait for its dead connections to time out, and one that opens connections in
    /// a loop must not grow our memory). Each client process holds one per replica, so this
    /// is also how many processes may share a key at once (it was a fixed 4).
    pub max_connections_per_client_key: usize,
    /// Most bytes all client connections together may make the replica hold outside the
    /// partial-frame budget (replica role): each live client connection counts its worst case,
    /// [`TransportConfig::CLIENT_CONNECTION_HELD_BYTES`], so at most this divided by that many
    /// client connections are open at once (4096 at the default, 2 GiB). A further client
    /// connection is refused, counted ([`TransportStats::connections_refused_client_bytes`])
    /// and logged (the first); replica connections never count against it. One source network
    /// may hold an eighth of the places (at least 4), and when every place is taken a network
    /// below its fair share takes one from the network holding the most (max-min fairness).
    /// Must be at least one connection's worth. See the crate docs, "What a client connection
    /// can make a replica hold".
    pub client_connection_total_bytes: usize,
}

impl TransportConfig {
    /// Default [`TransportConfig::max_frame_bytes`]: 16 MiB. [`Replica`] and [`Client`] raise it
    /// when the cluster's limits allow larger messages (a batch of forwarded decisions).
    pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
    /// Default [`TransportConfig::max_client_frame_bytes`]: 1 MiB.
    pub const DEFAULT_MAX_CLIENT_FRAME_BYTES: usize = 1024 * 1024;
    /// Default [`TransportConfig::send_queue_frames`]: 4096 frames per replica.
    pub const DEFAULT_SEND_QUEUE_FRAMES: usize = 4096;
    /// Default [`TransportConfig::send_queue_bytes`]: 64 MiB per replica.
    pub const DEFAULT_SEND_QUEUE_BYTES: usize = 64 * 1024 * 1024;
    /// Default [`TransportConfig::client_send_queue_frames`]: 256 frames per client
    /// connection (a client has at most `max_pending_per_client` requests in flight).
    pub const DEFAULT_CLIENT_SEND_QUEUE_FRAMES: usize = 256;
    /// Default [`TransportConfig::client_send_queue_bytes`]: 4 MiB per client connection.
    pub const DEFAULT_CLIENT_SEND_QUEUE_BYTES: usize = 4 * 1024 * 1024;
    /// Default [`TransportConfig::send_queue_total_bytes`]: 1 GiB.
    pub const DEFAULT_SEND_QUEUE_TOTAL_BYTES: usize = 1024 * 1024 * 1024;
    /// Default [`TransportConfig::recv_queue_frames`]: 16384 frames from all peers together.
    pub const DEFAULT_RECV_QUEUE_FRAMES: usize = 16384;
    /// Default [`TransportConfig::recv_queue_bytes`]: 128 MiB from all peers together.
    pub const DEFAULT_RECV_QUEUE_BYTES: usize = 128 * 1024 * 1024;
    /// Default [`TransportConfig::client_partial_frame_bytes`]: 64 MiB, 64 client frames of
    /// the default limit.
    pub const DEFAULT_CLIENT_PARTIAL_FRAME_BYTES: usize = 64 * 1024 * 1024;
    /// Default [`TransportConfig::max_connections_per_client_key`]: 64.
    pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT_KEY: usize = 64;
    /// What one client connection can make a replica hold outside the partial-frame budget,
    /// at most: quinn's buffer of its unread stream data (its connection-level receive
    /// window, 256 KiB) and the transport's read chunks of its streams beside their room in
    /// the budget (4 × 64 KiB). [`TransportConfig::client_connection_total_bytes`] counts
    /// every client connection at this.
    pub const CLIENT_CONNECTION_HELD_BYTES: usize =
        link::CLIENT_RECEIVE_WINDOW_BYTES as usize + 4 * link::READ_CHUNK_BYTES;
    /// Default [`TransportConfig::client_connection_total_bytes`]: 2 GiB, 4096 client
    /// connections.
    pub const DEFAULT_CLIENT_CONNECTION_TOTAL_BYTES: usize = 2 * 1024 * 1024 * 1024;
    /// Default [`TransportConfig::max_client_keys`]: 4096.
    pub const DEFAULT_MAX_CLIENT_KEYS: usize = 4096;
    /// Default [`TransportConfig::max_client_keys_per_source`]: 256 (`smr bench --sweep` runs
    /// 127 keys from one host).
    pub const DEFAULT_MAX_CLIENT_KEYS_PER_SOURCE: usize = 256;
    /// Default [`TransportConfig::client_keys_per_source_per_minute`]: 600, ten a second.
    pub const DEFAULT_CLIENT_KEYS_PER_SOURCE_PER_MINUTE: u64 = 600;
    /// Default [`TransportConfig::reconnect_initial_ms`]: 100 ms.
    pub const DEFAULT_RECONNECT_INITIAL_MS: u64 = 100;
    /// Default [`TransportConfig::reconnect_max_ms`]: 5 s.
    pub const DEFAULT_RECONNECT_MAX_MS: u64 = 5_000;
    /// Default [`TransportConfig::connect_timeout_ms`]: 3 s. A handshake takes a round trip or
    /// two, so this leaves room for slow links while a dead address is retried soon enough.
    pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 3_000;
    /// Default [`TransportConfig::idle_timeout_ms`]: 10 s, so keep-alives go out every 3.3 s.
    pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 10_000;

    /// A replica's configuration with default limits and timeouts.
    pub fn replica(
        id: ReplicaId,
        identity: Arc<IdentityKey>,
        replicas: Vec<ReplicaEndpoint>,
        clients: ClientPolicy,
    ) -> Self {
        Self::with_defaults(Role::Replica(id), identity, replicas, clients)
    }

    /// A client's configuration with default limits and timeouts.
    pub fn client(identity: Arc<IdentityKey>, replicas: Vec<ReplicaEndpoint>) -> Self {
        Self::with_defaults(Role::Client, identity, replicas, ClientPolicy::Any)
    }

    fn with_defaults(
        role: Role,
        identity: Arc<IdentityKey>,
        replicas: Vec<ReplicaEndpoint>,
        clients: ClientPolicy,
    ) -> Self {
        Self {
            role,
            identity,
            replicas,
            clients,
            max_frame_bytes: Self::DEFAULT_MAX_FRAME_BYTES,
            max_client_frame_bytes: Self::DEFAULT_MAX_CLIENT_FRAME_BYTES,
            send_queue_frames: Self::DEFAULT_SEND_QUEUE_FRAMES,
            send_queue_bytes: Self::DEFAULT_SEND_QUEUE_BYTES,
            client_send_queue_frames: Self::DEFAULT_CLIENT_SEND_QUEUE_FRAMES,
            client_send_queue_bytes: Self::DEFAULT_CLIENT_SEND_QUEUE_BYTES,
            send_queue_total_bytes: Self::DEFAULT_SEND_QUEUE_TOTAL_BYTES,
            recv_queue_frames: Self::DEFAULT_RECV_QUEUE_FRAMES,
            recv_queue_bytes: Self::DEFAULT_RECV_QUEUE_BYTES,
            client_partial_frame_bytes: Self::DEFAULT_CLIENT_PARTIAL_FRAME_BYTES,
            max_client_keys: Self::DEFAULT_MAX_CLIENT_KEYS,
            max_client_keys_per_source: Self::DEFAULT_MAX_CLIENT_KEYS_PER_SOURCE,
            client_keys_per_source_per_minute: Self::DEFAULT_CLIENT_KEYS_PER_SOURCE_PER_MINUTE,
            reconnect_initial_ms: Self::DEFAULT_RECONNECT_INITIAL_MS,
            reconnect_max_ms: Self::DEFAULT_RECONNECT_MAX_MS,
            connect_timeout_ms: Self::DEFAULT_CONNECT_TIMEOUT_MS,
            idle_timeout_ms: Self::DEFAULT_IDLE_TIMEOUT_MS,
            protocol_settings: None,
            client_session: None,
            max_connections_per_client_key: Self::DEFAULT_MAX_CONNECTIONS_PER_CLIENT_KEY,
            client_connection_total_bytes: Self::DEFAULT_CLIENT_CONNECTION_TOTAL_BYTES,
        }
    }

    /// Checks the configuration; for a replica, also that `identity` is its configured key.
    fn validate(&self) -> Result<(), TransportError> {
        let invalid = |why: String| Err(TransportError::InvalidConfig(why));
        if self.replicas.is_empty() {
            return invalid("no replicas are configured".into());
        }
        let mut ids = BTreeSet::new();
        let mut keys = BTreeSet::new();
        for replica in &self.replicas {
            if !ids.insert(replica.id) {
                return invalid(format!("replica id {} is configured twice", replica.id));
            }
            if !keys.insert(replica.public_key) {
                return invalid(format!(
                    "key {} is configured for more than one replica",
                    replica.public_key
                ));
            }
        }
        for (name, value) in [
            ("max_frame_bytes", self.max_frame_bytes),
            ("max_client_frame_bytes", self.max_client_frame_bytes),
            (
                "client_partial_frame_bytes",
                self.client_partial_frame_bytes,
            ),
        ] {
            if value == 0 || u32::try_from(value).is_err() {
                return invalid(format!("{name} must be in 1..={}, not {value}", u32::MAX));
            }
        }
        for (name, value) in [
            ("send_queue_frames", self.send_queue_frames),
            ("send_queue_bytes", self.send_queue_bytes),
            ("client_send_queue_frames", self.client_send_queue_frames),
            ("client_send_queue_bytes", self.client_send_queue_bytes),
            ("send_queue_total_bytes", self.send_queue_total_bytes),
            ("recv_queue_frames", self.recv_queue_frames),
            ("recv_queue_bytes", self.recv_queue_bytes),
            ("max_client_keys", self.max_client_keys),
            (
                "max_client_keys_per_source",
                self.max_client_keys_per_source,
            ),
        ] {
            if value == 0 {
                return invalid(format!("{name} must be at least 1"));
            }
        }
        // A stream holds room for its frame's whole length; with less than one frame, it would
        // hold the whole budget and still read to the frame's end, past the bound.
        let one_client_frame = self
            .max_client_frame_bytes
            .saturating_add(link::LENGTH_PREFIX_BYTES);
        if self.client_partial_frame_bytes < one_client_frame {
            return invalid(format!(
                "client_partial_frame_bytes ({}) must hold at least one client frame \
                 (max_client_frame_bytes + {} = {one_client_frame})",
                self.client_partial_frame_bytes,
                link::LENGTH_PREFIX_BYTES
            ));
        }
        if self.client_connection_total_bytes < Self::CLIENT_CONNECTION_HELD_BYTES {
            return invalid(format!(
                "client_connection_total_bytes ({}) must hold at least one client connection \
                 ({} bytes)",
                self.client_connection_total_bytes,
                Self::CLIENT_CONNECTION_HELD_BYTES
            ));
        }
        if self.recv_queue_bytes > tokio::sync::Semaphore::MAX_PERMITS {
            return invalid(format!(
                "recv_queue_bytes must be at most {}",
                tokio::sync::Semaphore::MAX_PERMITS
            ));
        }
        if self.reconnect_initial_ms == 0 || self.reconnect_initial_ms > self.reconnect_max_ms {
            return invalid(format!(
                "need 0 < reconnect_initial_ms ({}) <= reconnect_max_ms ({})",
                self.reconnect_initial_ms, self.reconnect_max_ms
            ));
        }
        if self.connect_timeout_ms == 0 || self.idle_timeout_ms < 3 {
            return invalid("connect_timeout_ms and idle_timeout_ms must be positive".into());
        }
        if let Role::Replica(id) = self.role {
            let ours = self.own_endpoint(id)?;
            let actual = self.identity.public_key();
            if ours.public_key != actual {
                return Err(TransportError::IdentityMismatch {
                    id,
                    configured: ours.public_key,
                    actual,
                });
            }
        }
        Ok(())
    }

    fn own_endpoint(&self, id: ReplicaId) -> Result<&ReplicaEndpoint, TransportError> {
        self.replicas
            .iter()
            .find(|r| r.id == id)
            .ok_or(TransportError::UnknownReplicaId(id))
    }

    /// The address a transport in this role binds when no socket is given.
    fn bind_addr(&self) -> Result<SocketAddr, TransportError> {
        match self.role {
            Role::Replica(id) => Ok(self.own_endpoint(id)?.addr),
            Role::Client => {
                let all_loopback = self.replicas.iter().all(|r| r.addr.ip().is_loopback());
                let any_v6 = self.replicas.iter().any(|r| r.addr.is_ipv6());
                let ip: IpAddr = match (any_v6, all_loopback) {
                    (false, true) => Ipv4Addr::LOCALHOST.into(),
                    (false, false) => Ipv4Addr::UNSPECIFIED.into(),
                    (true, true) if self.replicas.iter().all(|r| r.addr.is_ipv6()) => {
                        Ipv6Addr::LOCALHOST.into()
                    }
                    (true, _) => Ipv6Addr::UNSPECIFIED.into(),
                };
                Ok(SocketAddr::new(ip, 0))
            }
        }
    }
}

impl std::fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportConfig")
            .field("role", &self.role)
            .field("identity", &self.identity.public_key())
            .field("replicas", &self.replicas)
            .field("clients", &self.clients)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("max_client_frame_bytes", &self.max_client_frame_bytes)
            .field("send_queue_frames", &self.send_queue_frames)
            .field("send_queue_bytes", &self.send_queue_bytes)
            .field("client_send_queue_frames", &self.client_send_queue_frames)
            .field("client_send_queue_bytes", &self.client_send_queue_bytes)
            .field("send_queue_total_bytes", &self.send_queue_total_bytes)
            .field("recv_queue_frames", &self.recv_queue_frames)
            .field("recv_queue_bytes", &self.recv_queue_bytes)
            .field(
                "client_partial_frame_bytes",
                &self.client_partial_frame_bytes,
            )
            .field("max_client_keys", &self.max_client_keys)
            .field(
                "max_client_keys_per_source",
                &self.max_client_keys_per_source,
            )
            .field(
                "client_keys_per_source_per_minute",
                &self.client_keys_per_source_per_minute,
            )
            .field("reconnect_initial_ms", &self.reconnect_initial_ms)
            .field("reconnect_max_ms", &self.reconnect_max_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("idle_timeout_ms", &self.idle_timeout_ms)
            .field(
                "client_connection_total_bytes",
                &self.client_connection_total_bytes,
            )
            .finish()
    }
}

/// Why the transport could not start. These are operating errors, returned by
/// [`QuicTransport::start`] and [`QuicTransport::start_with_socket`]; a misbehaving peer never
/// produces one (it is counted in [`TransportStats`] instead).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A replica was started with a key other than the one configured for its id: most likely
    /// the wrong `--id` or the wrong key file. Peers would refuse it, so it does not start.
    #[error(
        "identity key {actual} is not the key {configured} configured for replica {id}; \
         check the replica id and the key file"
    )]
    IdentityMismatch {
        /// The id the replica was started as.
        id: ReplicaId,
        /// The key the configuration lists for `id`.
        configured: PublicKey,
        /// The public half of the identity key actually given.
        actual: PublicKey,
    },
    /// [`Role::Replica`] names an id that no [`ReplicaEndpoint`] has.
    #[error("replica id {0} is not in the configured replica set")]
    UnknownReplicaId(ReplicaId),
    /// The configuration is inconsistent; the message names the field and what is accepted.
    /// Refused: no replicas, a duplicate id or key, a zero queue bound, a frame bound of 0 or
    /// beyond `u32::MAX`, a zero timeout (`idle_timeout_ms` needs at least 3, since keep-alives
    /// go out at a third of it), and `reconnect_initial_ms > reconnect_max_ms`.
    #[error("invalid transport configuration: {0}")]
    InvalidConfig(String),
    /// The UDP socket could not be bound: the address is in use, or is not one of this
    /// machine's.
    #[error("cannot bind UDP socket {addr}: {source}")]
    Bind {
        /// The address that was being bound.
        addr: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// quinn could not set up its endpoint on the socket (or the socket's address could not be
    /// read, or it could not be made non-blocking).
    #[error("cannot create the QUIC endpoint: {0}")]
    Endpoint(std::io::Error),
    /// rcgen could not turn the identity key into a self-signed certificate.
    #[error("cannot make a certificate from the identity key: {0}")]
    Certificate(String),
    /// rustls or quinn refused the TLS configuration built from the certificate.
    #[error("TLS configuration error: {0}")]
    Tls(String),
}

/// A snapshot of the transport's counters, all monotonic since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Frames written to a QUIC stream (loopback frames are not counted anywhere).
    pub frames_sent: u64,
    /// Payload bytes of `frames_sent`, without length prefixes.
    pub bytes_sent: u64,
    /// Frames read from the network and handed to `recv`'s queue.
    pub frames_received: u64,
    /// Payload bytes of `frames_received`.
    pub bytes_received: u64,
    /// New frames dropped because the peer's send queue was full.
    pub frames_dropped_queue_full: u64,
    /// Incoming frames that waited because their peer held its whole share of its lane of the
    /// receive queue (see the crate docs, "Receiving"); the first is logged.
    pub frames_held_back_peer_share: u64,
    /// Times a client stream waited to buffer more of a partial frame because the budget of
    /// all clients' partial frames ([`TransportConfig::client_partial_frame_bytes`]) was
    /// spent; the first is logged.
    pub frames_held_back_partial_budget: u64,
    /// Frames lost because the connection failed while they were being written.
    pub frames_dropped_connection_lost: u64,
    /// Incoming frames whose length prefix exceeded the peer's frame limit (`max_frame_bytes`,
    /// or `max_client_frame_bytes` from a client); each closed a connection.
    pub frames_rejected_oversize: u64,
    /// Connections closed because their streams together buffered more partial-frame bytes
    /// than one frame of the peer's limit.
    pub connections_closed_buffer_limit: u64,
    /// Connections refused because `max_client_keys` distinct client keys were connected and
    /// none had been idle (no bytes) for 5 s.
    pub connections_refused_client_limit: u64,
    /// Client connections refused because
    /// [`TransportConfig::client_connection_total_bytes`] was taken by the client connections
    /// open (each counted at [`TransportConfig::CLIENT_CONNECTION_HELD_BYTES`]); the first is
    /// logged.
    pub connections_refused_client_bytes: u64,
    /// Older connections closed because a peer opened more than its per-key limit.
    pub connections_evicted: u64,
    /// Incoming streams that ended inside a frame.
    pub frames_truncated: u64,
    /// Outgoing connections established (to replicas).
    pub connections_outgoing: u64,
    /// Incoming connections accepted and authenticated.
    pub connections_incoming: u64,
    /// Handshakes we refused because the peer's key is not admitted (incoming), or because a
    /// replica we dialed presented a key other than its configured one (outgoing).
    pub connections_refused_unknown_key: u64,
    /// Our connections that the peer closed with a TLS alert, e.g. because it does not admit
    /// our key.
    pub connections_refused_by_peer: u64,
    /// Dials or incoming handshakes that failed or timed out.
    pub handshake_failures: u64,
    /// Established connections that ended other than by our own shutdown.
    pub connections_lost: u64,
    /// Connections from replicas we closed because their protocol settings differ from ours
    /// (see [`TransportConfig::protocol_settings`]).
    pub connections_refused_settings: u64,
    /// Client connections refused because their source network (IPv4 /24, IPv6 /64) had
    /// [`TransportConfig::max_client_keys_per_source`] keys connected, or connected new keys
    /// faster than [`TransportConfig::client_keys_per_source_per_minute`], or held its share
    /// of the client connection places (see
    /// [`TransportConfig::client_connection_total_bytes`]); the first is logged.
    pub connections_refused_source_limit: u64,
    /// Client connections closed because a partial frame did not complete within its deadline
    /// (`idle_timeout_ms` plus its length at 256 KiB/s; see the crate docs, "Receiving"); the
    /// room it held in the partial-frame budget is given back. The first is logged.
    pub connections_closed_slow_frame: u64,
    /// Client keys whose connections were closed to make room for a new key when
    /// [`TransportConfig::max_client_keys`] keys were connected: each the key that had sent no
    /// frame for the longest time, at least 5 s. The first is logged.
    pub client_keys_evicted_idle: u64,
    /// Client connections closed to give their place to a client of another network when
    /// every client connection place was taken: each the idlest connection of the network
    /// holding the most, given to a network holding less than its fair share (max-min
    /// fairness between networks; see the crate docs, "What a client connection can make a
    /// replica hold"). The first is logged.
    pub client_connections_displaced: u64,
    /// Client keys whose connections were closed to give their place in the key table to a
    /// key of another network when [`TransportConfig::max_client_keys`] keys were connected:
    /// each the idlest key of the network with the most keys, given to a network with fewer
    /// than its fair share (max-min fairness between networks, as for connection places).
    /// The first is logged.
    pub client_keys_displaced: u64,
    /// Client connections closed because a stream of theirs gave the room its partial frame
    /// held to a stream of a network holding less than its fair share of
    /// [`TransportConfig::client_partial_frame_bytes`]: each a partial frame of the network
    /// holding the most, the one that began holding room longest ago of those holding what
    /// the stream needs (else the largest; max-min fairness between networks). The first is
    /// logged.
    pub connections_closed_room_given: u64,
}

/// The receive queue's two lanes, read by `recv` (see the crate docs, "Receiving").
struct Inbound {
    replicas: mpsc::Receiver<InboundFrame>,
    clients: mpsc::Receiver<InboundFrame>,
    /// Replica frames taken in a row since the last client frame.
    replica_streak: u32,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
    frames_received: AtomicU64,
    bytes_received: AtomicU64,
    frames_dropped_queue_full: AtomicU64,
    frames_held_back_peer_share: AtomicU64,
    pub(crate) frames_held_back_partial_budget: AtomicU64,
    frames_dropped_connection_lost: AtomicU64,
    frames_rejected_oversize: AtomicU64,
    connections_closed_buffer_limit: AtomicU64,
    connections_refused_client_limit: AtomicU64,
    pub(crate) connections_refused_client_bytes: AtomicU64,
    connections_evicted: AtomicU64,
    frames_truncated: AtomicU64,
    connections_outgoing: AtomicU64,
    connections_incoming: AtomicU64,
    connections_refused_unknown_key: AtomicU64,
    connections_refused_by_peer: AtomicU64,
    handshake_failures: AtomicU64,
    connections_lost: AtomicU64,
    pub(crate) connections_refused_settings: AtomicU64,
    pub(crate) connections_refused_source_limit: AtomicU64,
    /// Frames and bytes by peer, for the metrics (`metrics.rs`).
    pub(crate) peers: metrics::PeerTraffic,
    pub(crate) connections_closed_slow_frame: AtomicU64,
    pub(crate) client_keys_evicted_idle: AtomicU64,
    pub(crate) client_connections_displaced: AtomicU64,
    pub(crate) client_keys_displaced: AtomicU64,
    pub(crate) connections_closed_room_given: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> TransportStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransportStats {
            frames_sent: get(&self.frames_sent),
            bytes_sent: get(&self.bytes_sent),
            frames_received: get(&self.frames_received),
            bytes_received: get(&self.bytes_received),
            frames_dropped_queue_full: get(&self.frames_dropped_queue_full),
            frames_held_back_peer_share: get(&self.frames_held_back_peer_share),
            frames_held_back_partial_budget: get(&self.frames_held_back_partial_budget),
            frames_dropped_connection_lost: get(&self.frames_dropped_connection_lost),
            frames_rejected_oversize: get(&self.frames_rejected_oversize),
            connections_closed_buffer_limit: get(&self.connections_closed_buffer_limit),
            connections_refused_client_limit: get(&self.connections_refused_client_limit),
            connections_refused_client_bytes: get(&self.connections_refused_client_bytes),
            connections_evicted: get(&self.connections_evicted),
            frames_truncated: get(&self.frames_truncated),
            connections_outgoing: get(&self.connections_outgoing),
            connections_incoming: get(&self.connections_incoming),
            connections_refused_unknown_key: get(&self.connections_refused_unknown_key),
            connections_refused_by_peer: get(&self.connections_refused_by_peer),
            handshake_failures: get(&self.handshake_failures),
            connections_lost: get(&self.connections_lost),
            connections_refused_settings: get(&self.connections_refused_settings),
            connections_refused_source_limit: get(&self.connections_refused_source_limit),
            connections_closed_slow_frame: get(&self.connections_closed_slow_frame),
            client_keys_evicted_idle: get(&self.client_keys_evicted_idle),
            client_connections_displaced: get(&self.client_connections_displaced),
            client_keys_displaced: get(&self.client_keys_displaced),
            connections_closed_room_given: get(&self.connections_closed_room_given),
        }
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// How long `shutdown` waits for connections to drain and tasks to stop before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The QUIC transport. Cheap to clone; all clones share one endpoint.
#[derive(Clone)]
pub struct QuicTransport {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<link::Shared>,
    role: Role,
    /// Outgoing queues to the replicas we dial (every replica but ourselves).
    replica_queues: BTreeMap<ReplicaId, link::SendQueue>,
    inbound_rx: tokio::sync::Mutex<Inbound>,
    endpoint: Mutex<Option<quinn::Endpoint>>,
    local_addr: SocketAddr,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.begin_shutdown();
        if let Some(endpoint) = lock(&self.endpoint).take() {
            endpoint.close(link::CLOSE_SHUTDOWN, b"shutdown");
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked while holding it; the data (a map of
    // senders, an endpoint handle) is still consistent.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl QuicTransport {
    /// Starts the transport, binding the replica's configured address (replica role) or an
    /// ephemeral port of the right address family (client role).
    ///
    /// A replica checks that `identity` is the key configured for its id, accepts connections,
    /// and dials every other replica; a client dials every replica. Dials that fail are retried
    /// with backoff in the background, so `start` does not wait for peers.
    pub async fn start(config: TransportConfig) -> Result<QuicTransport, TransportError> {
        config.validate()?;
        let addr = config.bind_addr()?;
        let socket =
            UdpSocket::bind(addr).map_err(|source| TransportError::Bind { addr, source })?;
        Self::start_with_socket(config, socket).await
    }

    /// Like [`QuicTransport::start`], on a socket the caller has already bound.
    pub async fn start_with_socket(
        config: TransportConfig,
        socket: UdpSocket,
    ) -> Result<QuicTransport, TransportError> {
        config.validate()?;
        let local_addr = socket.local_addr().map_err(TransportError::Endpoint)?;
        socket
            .set_nonblocking(true)
            .map_err(TransportError::Endpoint)?;

        let replica_ids = config.replicas.iter().map(|r| r.id as usize + 1).max();
        let counters = Arc::new(Counters {
            peers: metrics::PeerTraffic::new(replica_ids.unwrap_or(0)),
            ..Counters::default()
        });
        let local_cert = tls::LocalCertificate::from_identity(&config.identity)?;
        let transport_config = Arc::new(link::quic_transport_config(&config)?);
        let admission = Arc::new(tls::Admission {
            replica_by_key: config
                .replicas
                .iter()
                .map(|r| (r.public_key, r.id))
                .collect(),
            clients: config.clients.clone(),
        });

        let server_config = match config.role {
            Role::Replica(_) => {
                let crypto = tls::server_config(&local_cert, admission.clone(), counters.clone())?;
                let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
                    .map_err(|e| TransportError::Tls(e.to_string()))?;
                let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
                server.transport_config(transport_config.clone());
                Some(server)
            }
            Role::Client => None,
        };
        let reset_key = link::StatelessResetKey::derive(&config.identity);
        let cid_key = reset_key.connection_id_key();
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        let endpoint = quinn::Endpoint::new(
            endpoint_config,
            server_config,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(TransportError::Endpoint)?;

        let me = match config.role {
            Role::Replica(id) => format!("replica {id}"),
            Role::Client => format!("client {}", config.identity.public_key()),
        };
        let lane_frames = (config.recv_queue_frames / 2).max(1);
        let lane_bytes = (config.recv_queue_bytes / 2).max(1);
        let (replica_tx, replica_rx) = mpsc::channel(lane_frames);
        let (client_tx, client_rx) = mpsc::channel(lane_frames);
        let replica_lane = link::Lane::new(
            replica_tx,
            lane_bytes,
            lane_frames,
            // A replica's share is `1 / replicas` of the lane whatever its frame limit (a frame
            // larger than the share passes alone, charged the whole share against the share
            // and the lane, `link::Lane`): raised to one
            // frame of the limit, it would be the whole lane at the embedded replica's default
            // limits (a frame limit of 256 MiB), and one replica could hold the lane.
            lane_bytes / config.replicas.len().max(1),
        );
        let client_lane = link::Lane::new(
            client_tx,
            lane_bytes,
            lane_frames,
            // Likewise a client key's, `1 / 16` of the lane.
            lane_bytes / link::CLIENT_SHARES,
        );
        let (shutdown_tx, _) = watch::channel(false);
        let settings = match config.role {
            Role::Replica(_) => config.protocol_settings.clone().map(|settings| {
                let bytes = settings.to_bytes();
                let mut hello = Vec::with_capacity(link::LENGTH_PREFIX_BYTES + bytes.len());
                let length = u32::try_from(bytes.len()).expect("settings are a few hundred bytes");
                hello.extend_from_slice(&length.to_be_bytes());
                hello.extend_from_slice(&bytes);
                link::Settings {
                    ours: settings,
                    hello,
                    refused: Mutex::new(Default::default()),
                }
            }),
            Role::Client => None,
        };
        let client_hello = Mutex::new(match config.role {
            Role::Client => config.client_session.map(link::session_hello),
            Role::Replica(_) => None,
        });
        let shared = Arc::new(link::Shared {
            me,
            settings,
            client_hello,
            max_connections_per_client_key: config.max_connections_per_client_key.max(1),
            max_frame_bytes: config.max_frame_bytes,
            max_client_frame_bytes: config.max_client_frame_bytes,
            client_send_queue_frames: config.client_send_queue_frames,
            client_send_queue_bytes: config.client_send_queue_bytes,
            max_client_keys: config.max_client_keys,
            max_client_connections: config.client_connection_total_bytes
                / TransportConfig::CLIENT_CONNECTION_HELD_BYTES,
            client_sources: Arc::new(link::ClientSources::new(
                config.max_client_keys_per_source,
                config.client_keys_per_source_per_minute,
                config.max_client_keys.saturating_mul(2),
                config.client_connection_total_bytes
                    / TransportConfig::CLIENT_CONNECTION_HELD_BYTES,
                link::client_connections_per_source(
                    config.client_connection_total_bytes
                        / TransportConfig::CLIENT_CONNECTION_HELD_BYTES,
                ),
            )),
            replica_lane,
            client_lane,
            send_queue_total: Arc::new(link::ByteBudget::new(config.send_queue_total_bytes)),
            client_partial_frames: link::PartialFrameBudget::new(
                config.client_partial_frame_bytes,
                config.max_client_frame_bytes,
            ),
            client_frame_grace: Duration::from_millis(config.idle_timeout_ms),
            epoch: tokio::time::Instant::now(),
            client_keys_idle_not_before_ms: AtomicU64::new(0),
            #[cfg(test)]
            client_key_scans: AtomicU64::new(0),
            reconnect_initial: Duration::from_millis(config.reconnect_initial_ms),
            reconnect_max: Duration::from_millis(config.reconnect_max_ms),
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
            admission,
            counters,
            client_links: Mutex::new(Default::default()),
            replica_links: Mutex::new(Default::default()),
            redial: config
                .replicas
                .iter()
                .map(|r| (r.id, watch::channel(0).0))
                .collect(),
            next_link_id: AtomicU64::new(0),
            shutdown_tx,
            failure: watch::channel(None).0,
            tasks: Mutex::new(link::Tasks {
                set: JoinSet::new(),
                closed: false,
            }),
        });

        let mut replica_queues = BTreeMap::new();
        for replica in &config.replicas {
            if config.role == Role::Replica(replica.id) {
                continue;
            }
            let crypto =
                tls::client_config(&local_cert, replica.public_key, shared.counters.clone())?;
            let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
                .map_err(|e| TransportError::Tls(e.to_string()))?;
            let mut client_config = quinn::ClientConfig::new(Arc::new(crypto));
            client_config.transport_config(transport_config.clone());
            let (tx, rx) = link::SendQueue::new(
                config.send_queue_frames,
                config.send_queue_bytes,
                shared.send_queue_total.clone(),
            );
            replica_queues.insert(replica.id, tx);
            shared.spawn_essential(
                "link to a replica",
                link::run_replica_link(
                    shared.clone(),
                    endpoint.clone(),
                    replica.clone(),
                    client_config,
                    rx,
                ),
            );
        }
        if let Role::Replica(_) = config.role {
            shared.spawn_essential(
                "connection acceptor",
                link::run_acceptor(shared.clone(), endpoint.clone()),
            );
        }
        tracing::info!(me = %shared.me, %local_addr, "transport started");

        Ok(QuicTransport {
            inner: Arc::new(Inner {
                shared,
                role: config.role,
                replica_queues,
                inbound_rx: tokio::sync::Mutex::new(Inbound {
                    replicas: replica_rx,
                    clients: client_rx,
                    replica_streak: 0,
                }),
                endpoint: Mutex::new(Some(endpoint)),
                local_addr,
            }),
        })
    }

    /// Resolves with the reason once the transport has failed on its own: one of its tasks
    /// panicked, or its connection acceptor or a link to a replica ended before
    /// [`QuicTransport::shutdown`]. Never resolves while it works.
    pub async fn failed(&self) -> String {
        let mut failure = self.inner.shared.failure.subscribe();
        let reason = failure
            .wait_for(Option::is_some)
            .await
            .map(|reason| reason.clone());
        match reason {
            Ok(reason) => reason.unwrap_or_default(),
            // The sender lives as long as the transport.
            Err(_) => std::future::pending().await,
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TransportStats {
        self.inner.shared.counters.snapshot()
    }

    /// Bytes waiting in all send queues together (bounded by
    /// [`TransportConfig::send_queue_total_bytes`]).
    pub fn send_queue_bytes(&self) -> usize {
        self.inner.shared.send_queue_total.held()
    }

    /// Replica role: the replicas and the client keys with a live connection to us now.
    pub fn connected_peers(&self) -> (usize, usize) {
        let shared = &self.inner.shared;
        let replicas = lock(&shared.replica_links)
            .values()
            .filter(|links| !links.is_empty())
            .count();
        let clients = lock(&shared.client_links)
            .values()
            .filter(|links| !links.is_empty())
            .count();
        (replicas, clients)
    }

    pub(crate) fn peer_traffic(&self) -> &metrics::PeerTraffic {
        &self.inner.shared.counters.peers
    }

    /// Registers the transport's metrics (docs/metrics.md) in `registry`, read at each scrape.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(metrics::TransportMetrics(self.clone())));
    }

    /// The replicas refused now because their protocol settings differ from ours (see
    /// [`TransportConfig::protocol_settings`]), with the keys of the settings that differ.
    pub fn refused_replicas(&self) -> Vec<smr_core::message::RefusedReplica> {
        self.inner.shared.refused_replicas()
    }

    /// Bytes of partial client frames buffered now, over all client connections (a gauge):
    /// at most [`TransportConfig::client_partial_frame_bytes`] plus the first chunk of a frame
    /// (at most 64 KiB, in practice one packet) per client stream.
    pub fn client_partial_frame_bytes(&self) -> usize {
        self.inner.shared.client_partial_frames.buffered()
    }

    /// The address the endpoint is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Closes every connection and the endpoint, stops the transport's tasks and releases the UDP
    /// port (so a new transport can bind the same address). Afterwards `recv` returns `None` and
    /// `send` fails with [`SendError::Closed`]. Calling it again does nothing.
    pub async fn shutdown(&self) {
        let shared = &self.inner.shared;
        shared.begin_shutdown();
        let endpoint = lock(&self.inner.endpoint).take();
        let Some(endpoint) = endpoint else {
            return;
        };
        endpoint.close(link::CLOSE_SHUTDOWN, b"shutdown");
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, endpoint.wait_idle()).await;
        let mut tasks = std::mem::take(&mut lock(&shared.tasks).set);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(me = %shared.me, "tasks still running after shutdown; aborting them");
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        drop(endpoint);
        // quinn's endpoint driver owns the socket and lets go of it asynchronously once the last
        // handle is gone; wait until the port can be bound again so a restart cannot race it.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while UdpSocket::bind(self.inner.local_addr).is_err()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tracing::info!(me = %shared.me, "transport shut down");
    }

    /// Waits for the next frame of `senders` in the lanes' alternation: replica frames first
    /// until `REPLICA_FRAMES_PER_CLIENT_FRAME` of them came in a row, then a client frame
    /// first (only one lane's frames for [`Senders::Replicas`] or [`Senders::Clients`]);
    /// `None` at shutdown or when the lanes are closed. With [`QuicTransport::try_take`], the
    /// one place that order is decided, for [`QuicTransport::next_frame`] and
    /// [`QuicTransport::next_frames`].
    ///
    /// A frame already waiting is taken at once, without waiting on the shutdown signal as
    /// well: registering for that signal and dropping the registration again, on every call,
    /// was about 1% of a BFT client process's CPU under load. The signal is read first, so a
    /// call after shutdown still takes nothing.
    async fn take_next(
        inbound: &mut Inbound,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
        senders: Senders,
    ) -> Option<InboundFrame> {
        if *shutdown.borrow() {
            return None;
        }
        if let Some(frame) = Self::try_take(inbound, senders) {
            return Some(frame);
        }
        match senders {
            Senders::Any if inbound.replica_streak < link::REPLICA_FRAMES_PER_CLIENT_FRAME => {
                tokio::select! {
                    biased;
                    _ = link::shutdown_signaled(shutdown) => None,
                    Some(frame) = inbound.replicas.recv() => Some(frame),
                    Some(frame) = inbound.clients.recv() => Some(frame),
                    else => None,
                }
            }
            Senders::Any => {
                tokio::select! {
                    biased;
                    _ = link::shutdown_signaled(shutdown) => None,
                    Some(frame) = inbound.clients.recv() => Some(frame),
                    Some(frame) = inbound.replicas.recv() => Some(frame),
                    else => None,
                }
            }
            Senders::Replicas => {
                tokio::select! {
                    biased;
                    _ = link::shutdown_signaled(shutdown) => None,
                    frame = inbound.replicas.recv() => frame,
                }
            }
            Senders::Clients => {
                tokio::select! {
                    biased;
                    _ = link::shutdown_signaled(shutdown) => None,
                    frame = inbound.clients.recv() => frame,
                }
            }
        }
    }

    /// The frame of `senders` that [`QuicTransport::take_next`] would take if one is waiting
    /// now, in the lanes' alternation.
    fn try_take(inbound: &mut Inbound, senders: Senders) -> Option<InboundFrame> {
        match senders {
            Senders::Any => {
                let (before, after) =
                    if inbound.replica_streak < link::REPLICA_FRAMES_PER_CLIENT_FRAME {
                        (&mut inbound.replicas, &mut inbound.clients)
                    } else {
                        (&mut inbound.clients, &mut inbound.replicas)
                    };
                before.try_recv().or_else(|_| after.try_recv()).ok()
            }
            Senders::Replicas => inbound.replicas.try_recv().ok(),
            Senders::Clients => inbound.clients.try_recv().ok(),
        }
    }

    async fn next_frame(&self) -> Option<InboundFrame> {
        let mut shutdown = self.inner.shared.shutdown_rx();
        if *shutdown.borrow() {
            return None;
        }
        let mut guard = self.inner.inbound_rx.lock().await;
        let inbound = &mut *guard;
        let frame = Self::take_next(inbound, &mut shutdown, Senders::Any).await;
        if let Some(frame) = &frame {
            inbound.replica_streak = match frame.from {
                Peer::Replica(_) => inbound.replica_streak.saturating_add(1),
                Peer::Client(_) => 0,
            };
            self.inner
                .shared
                .lane(frame.from)
                .release(frame.from, frame.frame.len());
        }
        frame
    }

    /// [`Network::recv_many_from`]: the first frame of `senders` as [`QuicTransport::next_frame`]
    /// takes it, then the frames of `senders` waiting now, in the order `next_frame` would take
    /// them (the lanes' alternation included, for [`Senders::Any`]), under one lock of the
    /// receive queue; their room in the lanes is given back together, once per run of frames
    /// from one peer. Only one lane is read for [`Senders::Replicas`] or [`Senders::Clients`]:
    /// the other's frames stay queued. Cancel-safe: once the first frame is taken, nothing
    /// waits.
    ///
    /// With `keep_room`, the frames' room stays taken, to be given back by
    /// [`Network::release_room`].
    async fn next_frames(
        &self,
        frames: &mut Vec<InboundFrame>,
        senders: Senders,
        max_frames: usize,
        max_bytes: usize,
        keep_room: bool,
    ) -> bool {
        let mut shutdown = self.inner.shared.shutdown_rx();
        if *shutdown.borrow() {
            return false;
        }
        let mut guard = self.inner.inbound_rx.lock().await;
        let inbound = &mut *guard;
        let first = Self::take_next(inbound, &mut shutdown, senders).await;
        // Nothing below waits: once the first frame is taken, the call completes.
        let Some(first) = first else {
            return false;
        };
        let shared = &self.inner.shared;
        let mut releases = link::Releases::default();
        let (mut taken, mut bytes) = (0usize, 0usize);
        let mut next = Some(first);
        while let Some(frame) = next.take() {
            inbound.replica_streak = match frame.from {
                Peer::Replica(_) => inbound.replica_streak.saturating_add(1),
                Peer::Client(_) => 0,
            };
            if !keep_room {
                releases.add(shared.lane(frame.from), frame.from, frame.frame.len());
            }
            taken += 1;
            bytes = bytes.saturating_add(frame.frame.len());
            frames.push(frame);
            if taken >= max_frames || bytes >= max_bytes {
                break;
            }
            next = Self::try_take(inbound, senders);
        }
        releases.finish(shared);
        true
    }

    fn queue_full(&self, to: Peer) -> SendError {
        bump(&self.inner.shared.counters.frames_dropped_queue_full, 1);
        SendError::QueueFull(to)
    }
}

/// What every send checks first: the transport is running and the frame fits its limit.
fn sendable(shared: &link::Shared, length: usize) -> Result<(), SendError> {
    if shared.is_shut_down() {
        return Err(SendError::Closed);
    }
    if length > shared.max_frame_bytes {
        return Err(SendError::FrameTooLarge {
            size_bytes: length,
            max_bytes: shared.max_frame_bytes,
        });
    }
    Ok(())
}

impl Network for QuicTransport {
    fn refused_replicas(&self) -> Vec<smr_core::message::RefusedReplica> {
        QuicTransport::refused_replicas(self)
    }

    fn send(&self, to: Peer, frame: Vec<u8>) -> Result<(), SendError> {
        use mpsc::error::TrySendError;
        let shared = &self.inner.shared;
        sendable(shared, frame.len())?;
        match to {
            Peer::Replica(id) if self.inner.role == Role::Replica(id) => {
                let lane = &shared.replica_lane;
                if !lane.try_reserve(to, frame.len()) {
                    return Err(self.queue_full(to));
                }
                let length = frame.len();
                match lane.tx.try_send(InboundFrame { from: to, frame }) {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        lane.release(to, length);
                        match e {
                            TrySendError::Full(_) => Err(self.queue_full(to)),
                            TrySendError::Closed(_) => Err(SendError::Closed),
                        }
                    }
                }
            }
            Peer::Replica(id) => {
                let queue = self
                    .inner
                    .replica_queues
                    .get(&id)
                    .ok_or(SendError::UnknownPeer(to))?;
                match queue.try_send(frame) {
                    Ok(()) => Ok(()),
                    Err(TrySendError::Full(_)) => Err(self.queue_full(to)),
                    Err(TrySendError::Closed(_)) => Err(SendError::Closed),
                }
            }
            Peer::Client(key) => {
                // Queued under the lock (`try_send` does not wait), so the queue is not cloned
                // (four reference counts up and down) for every frame.
                let links = lock(&shared.client_links);
                let link = links
                    .get(&key)
                    .and_then(|links| links.last())
                    .ok_or(SendError::UnknownPeer(to))?;
                self.send_on_client_queue(to, &link.queue, frame)
            }
        }
    }

    fn send_to_session(
        &self,
        key: PublicKey,
        session: u64,
        frame: Vec<u8>,
    ) -> Result<(), SendError> {
        let shared = &self.inner.shared;
        let to = Peer::Client(key);
        sendable(shared, frame.len())?;
        // Queued under the lock, as in `send`.
        let links = lock(&shared.client_links);
        let link = links
            .get(&key)
            .and_then(|links| link::session_link(links, session))
            .ok_or(SendError::UnknownPeer(to))?;
        self.send_on_client_queue(to, &link.queue, frame)
    }

    fn recv(&self) -> impl std::future::Future<Output = Option<InboundFrame>> + Send {
        self.next_frame()
    }

    fn recv_many<'a>(
        &'a self,
        frames: &'a mut Vec<InboundFrame>,
        max_frames: usize,
        max_bytes: usize,
    ) -> impl std::future::Future<Output = bool> + Send + 'a {
        self.next_frames(frames, Senders::Any, max_frames, max_bytes, false)
    }

    fn recv_many_from<'a>(
        &'a self,
        frames: &'a mut Vec<InboundFrame>,
        senders: Senders,
        max_frames: usize,
        max_bytes: usize,
    ) -> impl std::future::Future<Output = bool> + Send + 'a {
        self.next_frames(frames, senders, max_frames, max_bytes, false)
    }

    fn recv_many_holding_room<'a>(
        &'a self,
        frames: &'a mut Vec<InboundFrame>,
        senders: Senders,
        max_frames: usize,
        max_bytes: usize,
    ) -> impl std::future::Future<Output = bool> + Send + 'a {
        self.next_frames(frames, senders, max_frames, max_bytes, true)
    }

    /// A lane's frames. The replicas' frames taken and not given back stay within it (each
    /// counts against its sender's share at least `lane bytes / lane frames`, and the shares add
    /// up to the lane); the clients' reach it once 16 keys fill their shares.
    fn receive_queue_frames(&self, senders: Senders) -> Option<usize> {
        let shared = &self.inner.shared;
        match senders {
            Senders::Replicas => Some(shared.replica_lane.tx.max_capacity()),
            Senders::Clients => Some(shared.client_lane.tx.max_capacity()),
            Senders::Any => None,
        }
    }

    /// Gives the room back together: per lane one addition, per run of frames from one peer
    /// one release of its share (as taking frames with their room given back does).
    fn release_room(&self, frames: &[(Peer, usize)]) {
        let shared = &self.inner.shared;
        let mut releases = link::Releases::default();
        for &(peer, length) in frames {
            releases.add(shared.lane(peer), peer, length);
        }
        releases.finish(shared);
    }

    /// Client role: every stream opened from now on starts with `session`'s announcement,
    /// and each replica's queue gets the announcement now, for the connection it has.
    fn announce_session(&self, session: u64) {
        if !matches!(self.inner.role, Role::Client) {
            return;
        }
        *lock(&self.inner.shared.client_hello) = Some(link::session_hello(session));
        for replica in self.inner.replica_queues.keys() {
            // A full or closed queue: the connection that replaces it opens with the new
            // announcement.
            let _ = self.send(Peer::Replica(*replica), link::session_announcement(session));
        }
    }
}

impl QuicTransport {
    fn send_on_client_queue(
        &self,
        to: Peer,
        queue: &link::SendQueue,
        frame: Vec<u8>,
    ) -> Result<(), SendError> {
        use mpsc::error::TrySendError;
        match queue.try_send(frame) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(self.queue_full(to)),
            // The connection ended between the lookup and now.
            Err(TrySendError::Closed(_)) => Err(SendError::UnknownPeer(to)),
        }
    }
}

#[cfg(test)]
mod tests;
