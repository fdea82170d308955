//! The tasks behind a transport: dialing replicas, accepting connections, writing and reading
//! frames.

use std::collections::hash_map::{Entry, OccupiedEntry};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use quinn::{Connection, ConnectionError, Endpoint, RecvStream, VarInt};
use smr_core::message::ReplicaId;
use smr_core::network::{InboundFrame, Peer};
use smr_core::settings::ProtocolSettings;
use smr_crypto::PublicKey;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::tls::{self, Admission};
use crate::{bump, lock, Counters, TransportConfig, TransportError};

/// Application close codes.
pub(crate) const CLOSE_SHUTDOWN: VarInt = VarInt::from_u32(0);
pub(crate) const CLOSE_FRAME_TOO_LARGE: VarInt = VarInt::from_u32(1);
pub(crate) const CLOSE_STREAM_REFUSED: VarInt = VarInt::from_u32(2);
pub(crate) const CLOSE_UNIDENTIFIED: VarInt = VarInt::from_u32(3);
pub(crate) const CLOSE_TOO_MANY_CONNECTIONS: VarInt = VarInt::from_u32(4);
pub(crate) const CLOSE_TOO_MANY_CLIENTS: VarInt = VarInt::from_u32(5);
pub(crate) const CLOSE_BUFFER_LIMIT: VarInt = VarInt::from_u32(6);
pub(crate) const CLOSE_SETTINGS_DIFFER: VarInt = VarInt::from_u32(7);
pub(crate) const CLOSE_SOURCE_LIMIT: VarInt = VarInt::from_u32(8);
pub(crate) const CLOSE_FRAME_TOO_SLOW: VarInt = VarInt::from_u32(9);
pub(crate) const CLOSE_IDLE_KEY_EVICTED: VarInt = VarInt::from_u32(10);
/// A client connection closed to give its place to a client of a network holding less than
/// its fair share of the client connection places (see [`place_donor`]).
pub(crate) const CLOSE_PLACE_GIVEN: VarInt = VarInt::from_u32(11);
/// A client connection closed because one of its streams was told to give the room its
/// partial frame held in the partial-frame budget to a stream of a network holding less than
/// its fair share (see [`PartialFrameBudget::take_room_for`]).
pub(crate) const CLOSE_ROOM_GIVEN: VarInt = VarInt::from_u32(12);

/// The slowest a client's frame may arrive once it has begun, in bytes per second: a partial
/// client frame of `length` bytes must be complete within
/// `idle_timeout_ms + (4 + length) / MIN_CLIENT_FRAME_BYTES_PER_SECOND` of its first bytes
/// ([`client_frame_deadline`]), or its connection is closed and the room it held in the
/// partial-frame budget is given back.
///
/// Why this bound: partial frames hold room for the bytes that arrived, and a stream that needs
/// more waits while keeping what it holds, so partial frames that each need more could hold the
/// whole budget and wait on each other for ever, and a client that sends part of a frame and
/// stalls (the replica's own keep-alives keep its connection open) could hold its room for ever.
/// The deadline ends both. `idle_timeout_ms` (10 s by default) is what the transport already
/// allows a silent peer; 256 KiB/s is a rate any client that can use the cluster at all
/// reaches (a 1 MiB frame gets 14 s at the defaults), including one that waited for room a
/// while. Holding room then costs a client the bytes held, sent again every deadline: holding
/// the whole 64 MiB default budget takes about 4.6 MiB/s of 1 MiB frames (and more from many
/// small ones, whose deadline is about `idle_timeout_ms`).
pub(crate) const MIN_CLIENT_FRAME_BYTES_PER_SECOND: u64 = 256 * 1024;

/// The time a client frame of `length` bytes (without its prefix) may take to arrive from its
/// first bytes: `grace` (`idle_timeout_ms`) plus its bytes at
/// [`MIN_CLIENT_FRAME_BYTES_PER_SECOND`].
pub(crate) fn client_frame_deadline(grace: Duration, length: usize) -> Duration {
    let bytes = (length as u64).saturating_add(LENGTH_PREFIX_BYTES as u64);
    grace.saturating_add(Duration::from_millis(
        bytes.saturating_mul(1000) / MIN_CLIENT_FRAME_BYTES_PER_SECOND,
    ))
}

/// How long a connected client key must have sent no bytes before a new key may take its
/// place when [`TransportConfig::max_client_keys`] keys are connected (the idlest key goes).
/// Long enough that a client between two requests, or one waiting a few seconds for a reply,
/// keeps its place; short enough that keys parked idle by a few networks cannot keep every
/// other client out for more than a few seconds at a time. An evicted client may reconnect
/// (it then competes like any new key); a request it had pending is answered to its retry,
/// from the client table.
pub(crate) const CLIENT_KEY_MIN_IDLE_BEFORE_EVICTION: Duration = Duration::from_secs(5);

/// The connection-level receive window of a client connection: what quinn buffers of a
/// client's streams that the transport has not read yet, for all the connection's streams
/// together (quinn's default is unlimited per connection and 1.25 MB per stream). A client
/// stream that waits for room in the partial-frame budget does not read, so without it each
/// waiting stream would make the replica hold about a megabyte outside every budget. Four read
/// chunks: a client's throughput is at most this much per round trip (over 1 GB/s at 0.2 ms,
/// 5 MB/s at 50 ms).
///
/// Credit once granted cannot be taken back (quinn's `set_receive_window` only stops granting
/// more), and a connection's first credit goes out in the handshake, before its key is known.
/// So every connection starts with this window ([`quic_transport_config`]), and a connection
/// known to be a replica's (accepted from one, or dialed to one) is raised to quinn's unlimited
/// default ([`REPLICA_RECEIVE_WINDOW`]): replicas' throughput is not limited by it.
pub(crate) const CLIENT_RECEIVE_WINDOW_BYTES: u32 = 4 * READ_CHUNK_BYTES as u32;

/// The connection-level receive window of a connection with a replica: quinn's default.
const REPLICA_RECEIVE_WINDOW: VarInt = VarInt::MAX;

/// Frames are a 4-byte big-endian length followed by the body.
pub(crate) const LENGTH_PREFIX_BYTES: usize = 4;

/// The writer stops draining the queue into one write once the buffer holds this much.
const COALESCE_BYTES: usize = 256 * 1024;

/// A write buffer that grew past this (for a very large frame) is released after the write.
const RETAINED_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Live incoming connections one replica may hold to us; a new one beyond this closes the
/// oldest (a restarted replica's new connection replaces its dead one).
const MAX_CONNECTIONS_PER_REPLICA: usize = 2;

/// Concurrent unidirectional streams a peer may open. We use one per direction; a few more allow
/// a stream to be replaced without waiting for the old one to be acknowledged closed.
const MAX_UNI_STREAMS: u32 = 4;

/// The round-trip estimate before the first sample. quinn's default (333 ms, made for the open
/// internet) makes a dial to a replica that is down linger in the endpoint for 3 s after it is
/// abandoned, and a dial whose first packet was lost wait a second before retrying. Replicas are
/// usually close; a low guess costs at most a few early retransmissions of handshake packets.
const INITIAL_RTT: Duration = Duration::from_millis(100);

/// An outgoing replica connection at least this old is redialed when the peer connects to us
/// anew (see [`note_replica_connected_in`]); a younger one is not, so that the two sides of a
/// reconnect do not make each other redial without end.
const REDIAL_MIN_AGE: Duration = Duration::from_secs(1);

/// A body is read in chunks of at most this size, so memory follows bytes actually received.
pub(crate) const READ_CHUNK_BYTES: usize = 64 * 1024;

/// How many clients together can fill the client lane of the receive queue: each client key may
/// hold `1 / CLIENT_SHARES` of it (at least one frame of the client limit), so one client cannot
/// hold the whole lane and keep the others out.
pub(crate) const CLIENT_SHARES: usize = 16;

/// After this many replica frames in a row while client frames wait, `recv` takes one client
/// frame: replica frames come first, but clients are never starved outright.
pub(crate) const REPLICA_FRAMES_PER_CLIENT_FRAME: u32 = 16;

/// One lane of the receive queue (replica frames, or client frames): a channel bounded in frames,
/// a byte budget for all of it, and a byte share per peer, so that no peer can hold the whole
/// lane and no lane can hold up the other.
///
/// A frame holds its length against the lane, and against its sender's share at least
/// `lane bytes / lane frames` (so a share also bounds the lane's frame slots a peer holds). Both
/// are capped at the sender's share, so that one frame larger than a share passes alone and
/// still leaves every other peer its share of the lane: the lane's bytes bound what the frames
/// are charged, and each peer holds at most one frame beyond its share (the frame is in memory
/// before it waits for room either way: a stream reads a whole frame first).
pub(crate) struct Lane {
    pub(crate) tx: mpsc::Sender<InboundFrame>,
    /// Bytes of frames in the lane, as permits.
    pub(crate) bytes: tokio::sync::Semaphore,
    pub(crate) max_bytes: usize,
    /// The most one peer may hold.
    pub(crate) share_bytes: usize,
    /// The least a frame holds against its peer's share.
    min_share_charge_bytes: usize,
    /// The shares of the peers that hold or wait for room in the lane. A share is removed once
    /// its peer holds nothing and nobody waits on it, so there are at most as many as the
    /// frames in the lane plus the readers waiting.
    /// Keyed by a randomly seeded aHash, not SipHash: looked up for every frame.
    shares: Mutex<HashMap<Peer, Arc<tokio::sync::Semaphore>, ahash::RandomState>>,
}

impl Lane {
    pub(crate) fn new(
        tx: mpsc::Sender<InboundFrame>,
        max_bytes: usize,
        max_frames: usize,
        share_bytes: usize,
    ) -> Lane {
        let max_bytes = max_bytes.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        Lane {
            tx,
            bytes: tokio::sync::Semaphore::new(max_bytes),
            max_bytes,
            share_bytes: share_bytes.clamp(1, max_bytes),
            min_share_charge_bytes: max_bytes / max_frames.max(1),
            shares: Mutex::new(HashMap::default()),
        }
    }

    fn lane_permits(&self, length: usize) -> u32 {
        u32::try_from(length.clamp(1, self.share_bytes)).unwrap_or(u32::MAX)
    }

    fn share_permits(&self, length: usize) -> u32 {
        let charge = length.max(self.min_share_charge_bytes);
        u32::try_from(charge.clamp(1, self.share_bytes)).unwrap_or(u32::MAX)
    }

    fn share(&self, peer: Peer) -> Arc<tokio::sync::Semaphore> {
        lock(&self.shares)
            .entry(peer)
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.share_bytes)))
            .clone()
    }

    /// Takes room for a frame of `length` bytes from `peer` without waiting.
    pub(crate) fn try_reserve(&self, peer: Peer, length: usize) -> bool {
        self.try_reserve_permits(peer, self.share_permits(length), self.lane_permits(length))
    }

    /// Takes room for several frames from `peer` at once, without waiting: what
    /// [`Lane::try_reserve`] takes for each, summed, in one step (one share lookup and one
    /// acquisition from each semaphore instead of one per frame). Each frame is released on
    /// its own ([`Lane::release`]), so the bounds are those of reserving one by one. False
    /// (taking nothing) if the room is not there now, or if the frames together exceed a
    /// bound that each fits alone; the caller then reserves frame by frame, waiting.
    pub(crate) fn try_reserve_many(
        &self,
        peer: Peer,
        lengths: impl IntoIterator<Item = usize>,
    ) -> bool {
        let (mut share, mut lane) = (0usize, 0usize);
        for length in lengths {
            share = share.saturating_add(self.share_permits(length) as usize);
            lane = lane.saturating_add(self.lane_permits(length) as usize);
        }
        if share > self.share_bytes || lane > self.max_bytes {
            return false;
        }
        match (u32::try_from(share), u32::try_from(lane)) {
            (Ok(share), Ok(lane)) => self.try_reserve_permits(peer, share, lane),
            _ => false,
        }
    }

    fn try_reserve_permits(&self, peer: Peer, share_permits: u32, lane_permits: u32) -> bool {
        let share = self.share(peer);
        let reserved = match share.try_acquire_many(share_permits) {
            Ok(share_permit) => match self.bytes.try_acquire_many(lane_permits) {
                Ok(permit) => {
                    permit.forget();
                    share_permit.forget();
                    true
                }
                Err(_) => false,
            },
            Err(_) => false,
        };
        drop(share);
        if !reserved {
            self.forget_idle_share(peer);
        }
        reserved
    }

    /// Waits for room for a frame of `length` bytes from `peer`: first in its share, then in
    /// the lane. False at shutdown. `held_back` counts the frames that waited because their
    /// peer's share was full; the first since start is logged as a warning, later ones at debug.
    pub(crate) async fn reserve(&self, peer: Peer, length: usize, held_back: &AtomicU64) -> bool {
        let share = self.share(peer);
        let permits = self.share_permits(length);
        let share_permit = match share.try_acquire_many(permits) {
            Ok(permit) => permit,
            Err(_) => {
                if held_back.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(
                        ?peer,
                        share_bytes = self.share_bytes,
                        "a peer filled its share of the receive queue; its frames wait"
                    );
                } else {
                    tracing::debug!(?peer, "a peer's share of the receive queue is full");
                }
                match share.acquire_many(permits).await {
                    Ok(permit) => permit,
                    Err(_) => return false,
                }
            }
        };
        match self.bytes.acquire_many(self.lane_permits(length)).await {
            Ok(permit) => {
                permit.forget();
                share_permit.forget();
                true
            }
            Err(_) => false,
        }
    }

    /// Gives back the room of a frame of `length` bytes from `peer` that left the lane.
    pub(crate) fn release(&self, peer: Peer, length: usize) {
        self.bytes.add_permits(self.lane_permits(length) as usize);
        self.release_share(
            &mut lock(&self.shares),
            peer,
            self.share_permits(length) as usize,
        );
    }

    /// Gives back `permits` of `peer`'s share (several frames' [`Lane::share_permits`],
    /// summed), with the shares' lock held.
    fn release_share(
        &self,
        shares: &mut HashMap<Peer, Arc<tokio::sync::Semaphore>, ahash::RandomState>,
        peer: Peer,
        permits: usize,
    ) {
        // One lookup (the entry) for both the release and the removal.
        if let Entry::Occupied(share) = shares.entry(peer) {
            // Only the map holds a share that no reader holds (a reader waits through its own
            // clone, taken under this lock): nobody can wait on it, so if these permits make
            // it whole it is removed without giving them back (which would take the
            // semaphore's waiter lock for nothing).
            if Arc::strong_count(share.get()) == 1
                && share.get().available_permits().saturating_add(permits) == self.share_bytes
            {
                share.remove();
            } else {
                share.get().add_permits(permits);
                self.remove_if_idle(share);
            }
        }
    }

    fn forget_idle_share(&self, peer: Peer) {
        if let Entry::Occupied(share) = lock(&self.shares).entry(peer) {
            self.remove_if_idle(share);
        }
    }

    /// Removes a share that nobody holds room in nor waits on.
    fn remove_if_idle(&self, share: OccupiedEntry<'_, Peer, Arc<tokio::sync::Semaphore>>) {
        if share.get().available_permits() == self.share_bytes
            && Arc::strong_count(share.get()) == 1
        {
            share.remove();
        }
    }

    /// How many peers have a share (for tests).
    #[cfg(test)]
    pub(crate) fn shares_held(&self) -> usize {
        lock(&self.shares).len()
    }
}

/// The room in the receive queue's lanes of frames taken from it together, given back in one
/// step ([`Releases::finish`]): per lane, one addition to its byte semaphore and one lock of
/// its shares; per run of consecutive frames from one peer, one release of its share. What is
/// given back is what [`Lane::release`] would give back for each frame.
#[derive(Default)]
pub(crate) struct Releases {
    /// Lane bytes to give back: the replica lane's, the client lane's.
    lane_permits: [usize; 2],
    /// Share permits to give back, per run of frames from one peer (a peer may appear twice).
    shares: Vec<(Peer, usize)>,
}

impl Releases {
    /// Notes a frame of `length` bytes from `peer`, taken from `lane` (`peer`'s lane).
    pub(crate) fn add(&mut self, lane: &Lane, peer: Peer, length: usize) {
        let index = usize::from(matches!(peer, Peer::Client(_)));
        self.lane_permits[index] =
            self.lane_permits[index].saturating_add(lane.lane_permits(length) as usize);
        let permits = lane.share_permits(length) as usize;
        match self.shares.last_mut() {
            Some((last, held)) if *last == peer => *held = held.saturating_add(permits),
            _ => self.shares.push((peer, permits)),
        }
    }

    /// Gives it all back.
    pub(crate) fn finish(self, shared: &Shared) {
        for (index, lane) in [&shared.replica_lane, &shared.client_lane]
            .into_iter()
            .enumerate()
        {
            if self.lane_permits[index] > 0 {
                lane.bytes.add_permits(self.lane_permits[index]);
            }
            let mut peers = self
                .shares
                .iter()
                .filter(|(peer, _)| usize::from(matches!(peer, Peer::Client(_))) == index)
                .peekable();
            if peers.peek().is_none() {
                continue;
            }
            let mut shares = lock(&lane.shares);
            for &(peer, permits) in peers {
                lane.release_share(&mut shares, peer, permits);
            }
        }
    }
}

/// Where a client connects from, as far as admission cares: its IPv4 /24 or its IPv6 /64 (an
/// IPv4-mapped IPv6 address counts as IPv4). One host, or one small network, is one source.
/// A connection's source is fixed when it is admitted: QUIC lets a client move a connection to
/// another address later, and neither its keys nor its partial frames move with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ClientSource(IpAddr);

impl ClientSource {
    pub(crate) fn of(addr: IpAddr) -> ClientSource {
        match addr {
            IpAddr::V4(v4) => ClientSource::v4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientSource::v4(v4),
                None => {
                    let bits = u128::from(v6) & !((1u128 << 64) - 1);
                    ClientSource(IpAddr::V6(bits.into()))
                }
            },
        }
    }

    fn v4(v4: std::net::Ipv4Addr) -> ClientSource {
        ClientSource(IpAddr::V4((u32::from(v4) & 0xffff_ff00).into()))
    }
}

/// Why a client connection was refused by [`ClientSources::admit`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SourceRefusal {
    /// Its source has `max_client_keys_per_source` other keys connected.
    TooManyKeys,
    /// Its source connected new keys faster than `client_keys_per_source_per_minute`.
    TooFast,
    /// Its source holds its share of the client connection places (an eighth of
    /// `client_connection_total_bytes`' connections, [`CLIENT_CONNECTION_SOURCE_SHARES`]).
    ConnectionShareTaken,
    /// Every client connection place is taken and its source holds at least its fair share
    /// of them ([`place_donor`]), so it may not take one from another network.
    PlacesTaken,
}

/// One source network may hold at most this fraction (`1 / n`) of the client connection places
/// (at least one): without it, one network (256 keys × 64 connections each at the defaults)
/// could take every place and lock every other client's new connections out.
pub(crate) const CLIENT_CONNECTION_SOURCE_SHARES: usize = 8;

/// Most client connections one source network may have open when `places` client connections
/// may be open in all: an eighth ([`CLIENT_CONNECTION_SOURCE_SHARES`]), and at least 4 (never
/// more than `places`), so that a small configuration still lets one network run a few client
/// processes (each holds one connection per replica).
pub(crate) fn client_connections_per_source(places: usize) -> usize {
    (places / CLIENT_CONNECTION_SOURCE_SHARES)
        .max(4)
        .min(places)
}

/// A network's fair share of `places` when `networks` networks want places: `places /
/// networks`, rounded down, but at least 1 (so that, when there are more networks than
/// places, a network holding none may still take one from a network holding two or more).
pub(crate) fn fair_share(places: usize, networks: usize) -> usize {
    (places / networks.max(1)).max(1)
}

/// Max-min fairness between source networks for a resource of `places` places that is full:
/// which network gives one place to a newcomer of network `newcomer`, if any. `held` lists
/// what each network holds (networks holding none may be left out; the newcomer may be in it).
///
/// The newcomer's network may take a place only while it holds less than its fair share
/// ([`fair_share`] of `places` among the networks holding any, itself included), and only
/// from the network holding the most, and only if that one holds at least two more than the
/// newcomer's (so the move raises the smallest holdings and never just swaps who is on top).
/// The donor then holds more than the fair share before giving (it holds more than the mean
/// of the others, which is above `places / networks`) and at least the fair share after, so
/// a network holding no more than its fair share never loses a place to another network. So
/// with N networks that take all they can, every other network can still get
/// `places / (N + 1)` places (if the per-network cap allows that many), whatever N, and the
/// holdings converge to the max-min fair ones: the smallest as large as possible.
///
/// Why this rule rather than a fixed share per network (what the per-network caps are):
/// fixed shares of `1 / k` are all taken by k networks, and an attacker holding addresses in
/// k /24s is cheap; a share that shrinks as networks appear cannot be exhausted by any number
/// of them. Why not weights or reputations: they need state that outlives connections and that
/// an attacker can farm; this needs only what each network holds now.
pub(crate) fn place_donor<S: Copy + Eq>(
    places: usize,
    held: impl IntoIterator<Item = (S, usize)>,
    newcomer: S,
) -> Option<S> {
    let mut networks = 1usize;
    let mut newcomer_held = 0;
    let mut largest: Option<(S, usize)> = None;
    for (source, count) in held {
        if source == newcomer {
            newcomer_held = count;
            continue;
        }
        if count == 0 {
            continue;
        }
        networks = networks.saturating_add(1);
        if largest.is_none_or(|(_, most)| count > most) {
            largest = Some((source, count));
        }
    }
    let fair = fair_share(places, networks);
    if newcomer_held >= fair {
        return None;
    }
    // (When the resource is full, `most > fair` follows from the rest; it matters for the
    // partial-frame budget, which may be short of a stream's need without being full.)
    largest
        .filter(|&(_, most)| most >= newcomer_held.saturating_add(2) && most > fair)
        .map(|(source, _)| source)
}

/// An open client connection's place in its source's count.
struct Place {
    key: PublicKey,
    /// When bytes last arrived on the connection (ms since [`Shared::epoch`]): the idlest
    /// connection of a network gives its place first.
    last_active_ms: Arc<AtomicU64>,
    /// The connection, to close it when it gives its place (`None` in unit tests).
    conn: Option<Connection>,
    /// Its key gave its place in the key table to another network's ([`ClientSources::key_donor`])
    /// and no longer counts in the source's keys; the connection still holds its connection
    /// place until it ends.
    key_given: bool,
}

/// One source's open client connections, its connected client keys (with their connection
/// counts) and its bucket of key admissions.
struct Source {
    keys: HashMap<PublicKey, usize>,
    /// Its open connections, by link id.
    places: HashMap<u64, Place>,
    tokens: f64,
    at: Instant,
}

/// What [`ClientSources`] guards with its lock.
struct SourcesState {
    sources: HashMap<ClientSource, Source>,
    /// Client connections open from all sources: the sum of their `places`.
    open: usize,
}

/// A connection that gave its place to a newcomer of another network ([`place_donor`]): its
/// place is no longer counted, and the caller closes it.
pub(crate) struct Displaced {
    pub(crate) key: PublicKey,
    pub(crate) source: ClientSource,
    pub(crate) conn: Option<Connection>,
}

/// Client admission per source (replica role; see [`ClientSource`]): the client connection
/// places (at most `max_open` connections from all sources, at most `max_connections` from
/// one, shared between sources by max-min fairness, [`place_donor`]), at most
/// `max_keys` distinct keys connected at once from one source, and a key that is not already
/// connected from it is admitted only with a token of the source's bucket, which holds
/// `max_keys` and refills at `per_minute`. So one source network cannot mint keys faster than that,
/// which is what keeps a flood of fresh keys from filling the replicated client table under
/// `clients = "any"` (docs/design.md §3.7). Not replicated state: it only decides which
/// connections reach the engine.
pub(crate) struct ClientSources {
    max_keys: usize,
    per_minute: u64,
    /// Most connections open from one source at once.
    max_connections: usize,
    /// Most client connections open at once from all sources.
    max_open: usize,
    /// Most sources remembered; beyond it, sources with no connection open are forgotten.
    max_sources: usize,
    state: Mutex<SourcesState>,
}

impl ClientSources {
    /// `max_open`: most client connections open at once; `max_connections`: most one source
    /// may have open at once (at least 1).
    pub(crate) fn new(
        max_keys: usize,
        per_minute: u64,
        max_sources: usize,
        max_open: usize,
        max_connections: usize,
    ) -> ClientSources {
        ClientSources {
            max_keys,
            per_minute,
            max_connections: max_connections.max(1),
            max_open,
            max_sources: max_sources.max(1),
            state: Mutex::new(SourcesState {
                sources: HashMap::new(),
                open: 0,
            }),
        }
    }

    /// Admits connection `id` of `key` connecting from `addr`, or says why not. The guard
    /// holds its place until the connection ends. When every place is taken, a network below
    /// its fair share takes the place of the idlest connection of the network holding the
    /// most ([`place_donor`]), returned for the caller to close.
    pub(crate) fn admit(
        self: &Arc<Self>,
        addr: IpAddr,
        key: PublicKey,
        id: u64,
        last_active_ms: Arc<AtomicU64>,
        conn: Option<Connection>,
    ) -> Result<(SourceGuard, Option<Displaced>), SourceRefusal> {
        let source = ClientSource::of(addr);
        let now = Instant::now();
        let mut state = lock(&self.state);
        let SourcesState { sources, open } = &mut *state;
        if sources.len() >= self.max_sources && !sources.contains_key(&source) {
            sources.retain(|_, s| !s.places.is_empty());
        }
        let capacity = self.max_keys as f64;
        let fresh = || Source {
            keys: HashMap::new(),
            places: HashMap::new(),
            tokens: capacity,
            at: now,
        };
        let entry = sources.entry(source).or_insert_with(fresh);
        let elapsed = now.saturating_duration_since(entry.at).as_secs_f64();
        entry.tokens = (entry.tokens + elapsed * self.per_minute as f64 / 60.0).min(capacity);
        entry.at = now;
        // Every place taken: only a network below its fair share may take one (from the
        // network holding the most), once the checks below admit it.
        let full = *open >= self.max_open;
        let donor = match full {
            true => Some(
                place_donor(
                    self.max_open,
                    sources.iter().map(|(s, held)| (*s, held.places.len())),
                    source,
                )
                .ok_or(SourceRefusal::PlacesTaken)?,
            ),
            false => None,
        };
        let entry = sources.entry(source).or_insert_with(fresh);
        if entry.places.len() >= self.max_connections {
            return Err(SourceRefusal::ConnectionShareTaken);
        }
        let new_key = !entry.keys.contains_key(&key);
        if new_key && entry.keys.len() >= self.max_keys {
            return Err(SourceRefusal::TooManyKeys);
        }
        if new_key && entry.tokens < 1.0 {
            return Err(SourceRefusal::TooFast);
        }
        let mut displaced = None;
        if let Some(donor) = donor {
            let giver = sources.get_mut(&donor).ok_or(SourceRefusal::PlacesTaken)?;
            let idlest = giver
                .places
                .iter()
                .min_by_key(|(_, place)| place.last_active_ms.load(Ordering::Relaxed))
                .map(|(id, _)| *id)
                .ok_or(SourceRefusal::PlacesTaken)?;
            if let Some(place) = giver.places.remove(&idlest) {
                if !place.key_given {
                    release_key(&mut giver.keys, &place.key);
                }
                displaced = Some(Displaced {
                    key: place.key,
                    source: donor,
                    conn: place.conn,
                });
            }
        } else {
            *open += 1;
        }
        // Present (inserted above, under the same lock): `fresh` is never called here.
        let entry = sources.entry(source).or_insert_with(fresh);
        if new_key {
            entry.tokens -= 1.0;
        }
        *entry.keys.entry(key).or_insert(0) += 1;
        entry.places.insert(
            id,
            Place {
                key,
                last_active_ms,
                conn,
                key_given: false,
            },
        );
        Ok((
            SourceGuard {
                sources: self.clone(),
                source,
                id,
            },
            displaced,
        ))
    }

    /// When the key table ([`TransportConfig::max_client_keys`] places) is full and `key`, just
    /// admitted from `addr`, is not in it: the key of another network that gives its place,
    /// by the same max-min fairness between networks as the connection places
    /// ([`place_donor`], over the keys each network has connected): the idlest key (by its
    /// connections from that network) of the network with the most keys, if `key`'s network
    /// has fewer than its fair share. Only keys `in_table` are considered. The key given no
    /// longer counts in that network's keys (its connections still hold their connection
    /// places until they end); the caller closes its connections.
    pub(crate) fn key_donor(
        &self,
        addr: IpAddr,
        key: PublicKey,
        places: usize,
        in_table: impl Fn(&PublicKey) -> bool,
    ) -> Option<(PublicKey, ClientSource)> {
        let newcomer = ClientSource::of(addr);
        let mut state = lock(&self.state);
        let held = state.sources.iter().map(|(source, held)| {
            // The newcomer's own key was counted at its admission: not yet in the table.
            let own = usize::from(*source == newcomer && held.keys.contains_key(&key));
            (*source, held.keys.len().saturating_sub(own))
        });
        let donor = place_donor(places, held, newcomer)?;
        let giver = state.sources.get_mut(&donor)?;
        let mut last_active: HashMap<PublicKey, u64> = HashMap::new();
        for place in giver.places.values() {
            if place.key_given || !in_table(&place.key) {
                continue;
            }
            let at = place.last_active_ms.load(Ordering::Relaxed);
            let entry = last_active.entry(place.key).or_insert(at);
            *entry = (*entry).max(at);
        }
        let (idlest, _) = last_active.into_iter().min_by_key(|&(_, at)| at)?;
        giver.keys.remove(&idlest);
        for place in giver.places.values_mut() {
            if place.key == idlest {
                place.key_given = true;
            }
        }
        Some((idlest, donor))
    }

    /// Client connections open from `addr`'s source network (for tests).
    #[cfg(test)]
    pub(crate) fn held(&self, addr: IpAddr) -> usize {
        lock(&self.state)
            .sources
            .get(&ClientSource::of(addr))
            .map_or(0, |source| source.places.len())
    }

    /// Client connections open from all sources (for tests).
    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        lock(&self.state).open
    }
}

/// Counts one connection of `key` less in a source's `keys`, forgetting the key at none.
fn release_key(keys: &mut HashMap<PublicKey, usize>, key: &PublicKey) {
    if let Some(count) = keys.get_mut(key) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            keys.remove(key);
        }
    }
}

/// A client connection's place in its source's count (and in the total); released when
/// dropped, unless it was given to another network's newcomer already.
pub(crate) struct SourceGuard {
    sources: Arc<ClientSources>,
    source: ClientSource,
    id: u64,
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        let mut state = lock(&self.sources.state);
        let SourcesState { sources, open } = &mut *state;
        if let Some(source) = sources.get_mut(&self.source) {
            if let Some(place) = source.places.remove(&self.id) {
                if !place.key_given {
                    release_key(&mut source.keys, &place.key);
                }
                *open = open.saturating_sub(1);
            }
        }
    }
}

/// State shared by the transport handle and all of its tasks.
pub(crate) struct Shared {
    pub(crate) me: String,
    /// Client role: the first frame of every stream we open to a replica, announcing our
    /// session ([`session_hello`]).
    pub(crate) client_hello: Mutex<Option<Vec<u8>>>,
    /// Replica role: most live connections per client key.
    pub(crate) max_connections_per_client_key: usize,
    pub(crate) max_frame_bytes: usize,
    pub(crate) max_client_frame_bytes: usize,
    pub(crate) client_send_queue_frames: usize,
    pub(crate) client_send_queue_bytes: usize,
    pub(crate) max_client_keys: usize,
    /// Most client connections open at once: `client_connection_total_bytes` over
    /// `CLIENT_CONNECTION_HELD_BYTES` (replica role).
    pub(crate) max_client_connections: usize,
    /// Client admission per source address (replica role).
    pub(crate) client_sources: Arc<ClientSources>,
    /// The receive queue's lane for replica frames (our own loopback frames included): a
    /// reader takes a frame's room before queueing it, and `recv` gives it back.
    pub(crate) replica_lane: Lane,
    /// The receive queue's lane for client frames, with a share per client key.
    pub(crate) client_lane: Lane,
    /// Bytes in all send queues together.
    pub(crate) send_queue_total: Arc<ByteBudget>,
    /// Bytes of partial frames buffered from all client connections together.
    pub(crate) client_partial_frames: PartialFrameBudget,
    /// What a client frame may take to arrive beyond its bytes at the minimum rate
    /// (`idle_timeout_ms`; see [`client_frame_deadline`]).
    pub(crate) client_frame_grace: Duration,
    /// Start of the transport: client keys' last-activity times are milliseconds since then.
    pub(crate) epoch: Instant,
    /// When `max_client_keys` keys are connected: no connected key can have been idle for
    /// [`CLIENT_KEY_MIN_IDLE_BEFORE_EVICTION`] before this time (ms since `epoch`), as found
    /// by the last scan for the idlest key, so new keys are refused without a scan until then.
    pub(crate) client_keys_idle_not_before_ms: AtomicU64,
    /// Scans of the client key table for the idlest key (for tests).
    #[cfg(test)]
    pub(crate) client_key_scans: AtomicU64,
    pub(crate) reconnect_initial: Duration,
    pub(crate) reconnect_max: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) admission: Arc<Admission>,
    pub(crate) counters: Arc<Counters>,
    /// Replica role, when protocol settings are checked: ours, and the peers refused.
    pub(crate) settings: Option<Settings>,
    /// Replica role: the live connections each client opened to us, oldest first (at most
    /// `max_connections_per_client_key` per key). A session's replies go over the newest one
    /// that announced the session ([`session_link`]).
    /// Keyed by a randomly seeded aHash, not SipHash: looked up for every reply.
    pub(crate) client_links: Mutex<HashMap<PublicKey, Vec<ClientLink>, ahash::RandomState>>,
    /// Replica role: the live connections each replica opened to us, oldest first.
    pub(crate) replica_links: Mutex<HashMap<smr_core::message::ReplicaId, Vec<(u64, Connection)>>>,
    /// Per peer replica: bumped whenever that peer connects to us (see
    /// [`note_replica_connected_in`]); our outgoing link to it then redials.
    pub(crate) redial: HashMap<smr_core::message::ReplicaId, watch::Sender<u64>>,
    pub(crate) next_link_id: AtomicU64,
    pub(crate) shutdown_tx: watch::Sender<bool>,
    pub(crate) tasks: Mutex<Tasks>,
    /// The first failure of the transport itself (a task that panicked, an acceptor or
    /// replica link that ended before shutdown); see [`crate::QuicTransport::failed`].
    pub(crate) failure: watch::Sender<Option<String>>,
}

pub(crate) struct Tasks {
    pub(crate) set: JoinSet<()>,
    /// Set at shutdown; nothing is spawned afterwards.
    pub(crate) closed: bool,
}

pub(crate) struct ClientLink {
    id: u64,
    pub(crate) queue: SendQueue,
    /// The last two numbers the client announced on this connection ([`session_hello`]),
    /// [`NO_SESSION`] where it announced none: its routing tag, then its session once open
    /// (docs/design.md §3.7, "Sessions"). Two, so that answers to what it sent under the tag
    /// just before (an unordered read) still find it.
    session: Arc<Announced>,
    conn: Connection,
    /// When bytes last arrived on this connection (or when it was accepted), in ms since
    /// [`Shared::epoch`].
    last_frame_ms: Arc<AtomicU64>,
}

/// The last two numbers a client connection announced (see [`ClientLink`]).
#[derive(Default)]
pub(crate) struct Announced {
    latest: AtomicU64,
    previous: AtomicU64,
}

impl Announced {
    /// Notes an announcement of `number`: it becomes the latest, the latest the previous.
    fn announce(&self, number: u64) {
        let latest = self.latest.swap(number, Ordering::Relaxed);
        if latest != number {
            self.previous.store(latest, Ordering::Relaxed);
        }
    }

    /// Whether `number` is one of the last two announced.
    fn routes(&self, number: u64) -> bool {
        self.latest.load(Ordering::Relaxed) == number
            || self.previous.load(Ordering::Relaxed) == number
    }

    /// Whether nothing was announced.
    fn none(&self) -> bool {
        self.latest.load(Ordering::Relaxed) == NO_SESSION
    }
}

/// What a connection that announced no session holds in place of one: the open requests'
/// session number, which a client never announces (it announces a routing tag instead).
const NO_SESSION: u64 = smr_core::message::OPEN_SESSION;

/// What opens a client's session announcement: not the start of any protocol message (those
/// open with a little-endian `u32` variant tag below 256).
const SESSION_HELLO_MAGIC: &[u8] = b"smr-client-session-v1:";

/// The frame, length-prefixed, that opens every stream a client opens to a replica: the magic
/// and the session (or routing tag), little-endian. It tells the replica which session's
/// replies belong on this connection, so that processes sharing a key each get their own.
pub(crate) fn session_hello(session: u64) -> Vec<u8> {
    let body = session_announcement(session);
    let mut hello = Vec::with_capacity(LENGTH_PREFIX_BYTES + body.len());
    hello.extend_from_slice(&(body.len() as u32).to_be_bytes());
    hello.extend_from_slice(&body);
    hello
}

/// A session announcement as a frame's body (without its length prefix): what a client sends
/// on a connection it already has when its session opens.
pub(crate) fn session_announcement(session: u64) -> Vec<u8> {
    let mut body = Vec::with_capacity(SESSION_HELLO_MAGIC.len() + 8);
    body.extend_from_slice(SESSION_HELLO_MAGIC);
    body.extend_from_slice(&session.to_le_bytes());
    body
}

/// The session a frame announces, if it is a session announcement.
fn announced_session(frame: &[u8]) -> Option<u64> {
    let session = frame.strip_prefix(SESSION_HELLO_MAGIC)?;
    Some(u64::from_le_bytes(session.try_into().ok()?))
}

/// The connection a reply for `session` goes over: the newest that announced it (as one of its
/// last two announcements); else the
/// newest that announced none (a client that does not announce sessions); else none, and the
/// reply is refused as for a client not connected (its client retries, and gets the reply
/// from the cache over the connection it has by then).
pub(crate) fn session_link(links: &[ClientLink], session: u64) -> Option<&ClientLink> {
    links
        .iter()
        .rev()
        .find(|link| session != NO_SESSION && link.session.routes(session))
        .or_else(|| links.iter().rev().find(|link| link.session.none()))
}

/// A count of bytes held against a bound, shared by several holders.
#[derive(Debug)]
pub(crate) struct ByteBudget {
    held: AtomicUsize,
    max: usize,
}

impl ByteBudget {
    pub(crate) fn new(max: usize) -> ByteBudget {
        ByteBudget {
            held: AtomicUsize::new(0),
            max,
        }
    }

    /// Holds `bytes` if that stays within the bound, or if nothing is held (so that one frame
    /// larger than the bound can still pass alone).
    pub(crate) fn try_hold(&self, bytes: usize) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                let total = held.checked_add(bytes)?;
                (held == 0 || total <= self.max).then_some(total)
            })
            .is_ok()
    }

    pub(crate) fn release(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::AcqRel);
    }

    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// How many source networks together can hold the whole [`PartialFrameBudget`]: each may hold
/// `1 / PARTIAL_FRAME_SOURCE_SHARES` of it (at least one client frame), so that one source network cannot
/// take all the room and make every other client's large frames wait.
pub(crate) const PARTIAL_FRAME_SOURCE_SHARES: usize = 8;

/// The bytes of partial client frames buffered over all client connections: what readers
/// hold of a frame whose body has not fully arrived (the bytes that arrived, never the length
/// its prefix claims), in total and per source network ([`ClientSource`]). A reader that
/// needs more than is left waits (and so stops reading its stream, which pushes back on the
/// client through QUIC flow control, [`CLIENT_RECEIVE_WINDOW_BYTES`]) until room comes, its
/// connection ends or its frame's deadline ([`client_frame_deadline`]) closes the connection;
/// one waiter at a time may take the overdraft instead. Replicas
/// never draw from it: each replica connection has its own bound of one replica frame (at most
/// two connections per replica), so the replicas' part is reserved by construction and
/// clients cannot starve it.
pub(crate) struct PartialFrameBudget {
    permits: tokio::sync::Semaphore,
    max_bytes: usize,
    /// The most one source network may hold.
    share_bytes: usize,
    /// The shares of the sources with client streams open.
    shares: Mutex<HashMap<ClientSource, Arc<tokio::sync::Semaphore>>>,
    /// Bytes in client streams' buffers now, held against the budget or not (a stream's first
    /// read of a frame, at most one chunk, is read before it is held): what
    /// [`crate::QuicTransport::client_partial_frame_bytes`] reports.
    buffered: AtomicUsize,
    /// One permit: a stream that must wait for room may instead take this and read the rest of
    /// its frame without holding more, until the frame is complete. Streams that wait while
    /// holding room could otherwise wait on each other until their deadlines closed them
    /// (honest clients of one network with more large frames in flight than its share, say);
    /// with it one of them always makes progress. It costs at most one client frame beyond the
    /// budget, and a holder that stalls is closed at its frame's deadline.
    ///
    /// Taken in turns by source network: a source that held it last does not take it again
    /// while a stream of another source waits for it ([`PartialFrameBudget::overdraft_turn`]),
    /// so one network cannot hold it for longer than one frame in a row (the semaphore alone is
    /// FIFO by stream, and one network can keep a stream of its own always first in line).
    overdraft: tokio::sync::Semaphore,
    /// Who held the overdraft last, and how many streams of each source wait for room.
    overdraft_turns: Mutex<OverdraftTurns>,
    /// The streams holding room now, by stream: which network, since when, and how to make
    /// one give its room to another network's stream ([`PartialFrameBudget::take_room_for`]).
    holding: Mutex<HashMap<u64, Holding>>,
    next_stream: AtomicU64,
}

/// A stream holding room in the [`PartialFrameBudget`].
struct Holding {
    source: ClientSource,
    /// When it began to hold room for its current partial frame.
    since: Instant,
    given: Arc<RoomGiven>,
}

/// How a stream holding room is told to give it to another network's stream: `notify` wakes
/// its reader, which ends the stream (closing its connection); the room it held then goes to
/// `to`, not back to the budget, where the first stream in line (any network's) would take it.
#[derive(Default)]
pub(crate) struct RoomGiven {
    notify: tokio::sync::Notify,
    to: Mutex<Option<tokio::sync::oneshot::Sender<usize>>>,
    /// The room the stream holds now (what it would give), so that the frame asked is one
    /// that holds what the asking stream needs ([`PartialFrameBudget::take_room_for`]).
    held_bytes: AtomicUsize,
}

/// Resolves once the stream of `given` has been told to give its room (never without one).
pub(crate) async fn room_asked(given: &Option<Arc<RoomGiven>>) {
    match given {
        Some(given) => given.notify.notified().await,
        None => std::future::pending().await,
    }
}

/// Whose turn the [`PartialFrameBudget::overdraft`] is.
#[derive(Default)]
struct OverdraftTurns {
    /// The source network that took it last.
    last: Option<ClientSource>,
    /// Streams waiting for room (and so for the overdraft), per source network.
    waiting: HashMap<ClientSource, usize>,
}

impl PartialFrameBudget {
    /// A budget of `max_bytes` in all, for client frames of at most `max_frame_bytes`.
    pub(crate) fn new(max_bytes: usize, max_frame_bytes: usize) -> PartialFrameBudget {
        let max_bytes = max_bytes.clamp(1, u32::MAX as usize);
        let share_bytes = (max_bytes / PARTIAL_FRAME_SOURCE_SHARES)
            .max(max_frame_bytes.saturating_add(LENGTH_PREFIX_BYTES))
            .clamp(1, max_bytes);
        PartialFrameBudget {
            permits: tokio::sync::Semaphore::new(max_bytes),
            max_bytes,
            share_bytes,
            shares: Mutex::new(HashMap::new()),
            buffered: AtomicUsize::new(0),
            overdraft: tokio::sync::Semaphore::new(1),
            overdraft_turns: Mutex::new(OverdraftTurns::default()),
            holding: Mutex::new(HashMap::new()),
            next_stream: AtomicU64::new(0),
        }
    }

    /// Max-min fairness between source networks for the budget ([`place_donor`], in bytes):
    /// when a stream of `source` needs `need_bytes` of room that the total lacks and its
    /// network holds less than its fair share (the budget over the networks holding any), a
    /// stream of the network holding the most is told to give its room (its connection is
    /// closed), and the room comes to the receiver returned, not back to the budget: the one
    /// that began holding room the longest ago of those holding at least `need_bytes`, or, if
    /// none does, the one holding the most (the asking stream then asks again for the rest,
    /// [`PartialHeld::hold`]). So a network cannot answer with a frame of a few bytes kept
    /// oldest. `None` if no network is to give.
    fn take_room_for(
        &self,
        source: ClientSource,
        need_bytes: usize,
    ) -> Option<tokio::sync::oneshot::Receiver<usize>> {
        let held: Vec<(ClientSource, usize)> = lock(&self.shares)
            .iter()
            .map(|(s, share)| {
                (
                    *s,
                    self.share_bytes.saturating_sub(share.available_permits()),
                )
            })
            .collect();
        let donor = place_donor(self.max_bytes, held, source)?;
        let holding = lock(&self.holding);
        let candidates = || {
            holding
                .values()
                .filter(|h| h.source == donor && lock(&h.given.to).is_none())
        };
        let held = |h: &Holding| h.given.held_bytes.load(Ordering::Relaxed);
        let giver = candidates()
            .filter(|h| held(h) >= need_bytes)
            .min_by_key(|h| h.since)
            .or_else(|| candidates().max_by_key(|h| (held(h), std::cmp::Reverse(h.since))))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        *lock(&giver.given.to) = Some(tx);
        giver.given.notify.notify_one();
        Some(rx)
    }

    /// Whether a stream of `source` that got the overdraft may keep it: not if its source
    /// took it last and a stream of another source waits for room. If so, it is its source's
    /// now.
    fn overdraft_turn(&self, source: ClientSource) -> bool {
        let mut turns = lock(&self.overdraft_turns);
        let others_wait = turns
            .waiting
            .iter()
            .any(|(waiting, count)| *waiting != source && *count > 0);
        if turns.last == Some(source) && others_wait {
            return false;
        }
        turns.last = Some(source);
        true
    }

    /// Counts a stream of `source` as waiting for room until the guard is dropped.
    fn note_waiting(&self, source: ClientSource) -> WaitingForRoom<'_> {
        *lock(&self.overdraft_turns)
            .waiting
            .entry(source)
            .or_insert(0) += 1;
        WaitingForRoom {
            budget: self,
            source,
        }
    }

    pub(crate) fn buffered(&self) -> usize {
        self.buffered.load(Ordering::Acquire)
    }

    /// How many sources have a share (for tests).
    #[cfg(test)]
    pub(crate) fn shares_held(&self) -> usize {
        lock(&self.shares).len()
    }

    pub(crate) fn holder(&self, source: ClientSource) -> PartialHeld<'_> {
        let share = lock(&self.shares)
            .entry(source)
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.share_bytes)))
            .clone();
        PartialHeld {
            budget: self,
            source,
            share,
            held_bytes: 0,
            buffered_bytes: 0,
            overdraft: None,
            stream: self.next_stream.fetch_add(1, Ordering::Relaxed),
            given: Arc::new(RoomGiven::default()),
        }
    }
}

/// Room of the [`PartialFrameBudget`]'s total given to a waiting stream by other networks'
/// streams ([`PartialFrameBudget::take_room_for`]) and not used yet: out of the budget's
/// permits, and back to them when dropped.
struct Gift<'a> {
    budget: &'a PartialFrameBudget,
    bytes: usize,
}

impl Gift<'_> {
    fn give_back(&mut self) {
        self.budget.permits.add_permits(self.bytes);
        self.bytes = 0;
    }
}

impl Drop for Gift<'_> {
    fn drop(&mut self) {
        self.give_back();
    }
}

/// A stream of `source` waiting for room in the [`PartialFrameBudget`] (see
/// [`PartialFrameBudget::note_waiting`]).
struct WaitingForRoom<'a> {
    budget: &'a PartialFrameBudget,
    source: ClientSource,
}

impl Drop for WaitingForRoom<'_> {
    fn drop(&mut self) {
        let mut turns = lock(&self.budget.overdraft_turns);
        if let Some(count) = turns.waiting.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                turns.waiting.remove(&self.source);
            }
        }
    }
}

/// What one client stream holds of the [`PartialFrameBudget`] (the same bytes in its source's
/// share and in the total), and what its buffer holds (for the gauge); both given back when
/// the stream ends.
pub(crate) struct PartialHeld<'a> {
    budget: &'a PartialFrameBudget,
    source: ClientSource,
    share: Arc<tokio::sync::Semaphore>,
    held_bytes: usize,
    buffered_bytes: usize,
    /// Held while the stream reads its current frame beyond what it holds (see
    /// [`PartialFrameBudget::overdraft`]).
    overdraft: Option<tokio::sync::SemaphorePermit<'a>>,
    /// Its key in [`PartialFrameBudget::holding`].
    stream: u64,
    /// Set when it is told to give its room to another network's stream.
    given: Arc<RoomGiven>,
}

impl<'a> PartialHeld<'a> {
    /// Notes that the frame being read is complete: an overdraft taken for it is given back.
    pub(crate) fn frame_done(&mut self) {
        self.overdraft = None;
    }

    /// What tells this stream to give its room to another network's (its reader ends the
    /// stream when it resolves).
    pub(crate) fn room_given(&self) -> Arc<RoomGiven> {
        self.given.clone()
    }

    fn give_back(&mut self, bytes: usize) {
        self.share.add_permits(bytes);
        self.budget.permits.add_permits(bytes);
        self.held_bytes -= bytes;
        self.given
            .held_bytes
            .store(self.held_bytes, Ordering::Relaxed);
        if self.held_bytes == 0 {
            lock(&self.budget.holding).remove(&self.stream);
        }
    }

    /// Notes that the stream holds `bytes` now, more than before.
    fn took(&mut self, bytes: usize) {
        if self.held_bytes == 0 {
            lock(&self.budget.holding).insert(
                self.stream,
                Holding {
                    source: self.source,
                    since: Instant::now(),
                    given: self.given.clone(),
                },
            );
        }
        self.held_bytes = bytes;
        self.given.held_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Holds `bytes`, the bytes of the partial frame the stream's buffer holds now (capped at
    /// a source's share, which holds at least one frame of the client limit): room follows the
    /// bytes that arrived, never a length prefix. Shrinking gives back at once; growing takes
    /// the difference from its source's share and then from the total, waiting while either is
    /// spent, and keeps what it holds meanwhile (those bytes are in memory). Streams that wait
    /// while holding could wait on each other for ever (the whole budget held by partial frames
    /// that each need more); the caller ends that with the frame's deadline
    /// ([`client_frame_deadline`]): a frame not complete in time closes its connection and so
    /// gives its room back; and while waiting it may take the budget's overdraft instead
    /// ([`PartialFrameBudget::overdraft`]), so that one waiting stream always makes progress.
    /// Cancel-safe: what it waits on is given back on drop. False at shutdown. `held_back`
    /// counts the waits; the first is logged as a warning.
    pub(crate) async fn hold(&mut self, bytes: usize, held_back: &AtomicU64, peer: Peer) -> bool {
        let bytes = bytes.min(self.budget.share_bytes);
        if bytes <= self.held_bytes {
            self.give_back(self.held_bytes - bytes);
            return true;
        }
        if self.overdraft.is_some() {
            return true;
        }
        let more = u32::try_from(bytes - self.held_bytes).expect("the budget fits u32");
        let fast = match self.share.try_acquire_many(more) {
            Ok(share) => match self.budget.permits.try_acquire_many(more) {
                Ok(total) => {
                    share.forget();
                    total.forget();
                    true
                }
                Err(_) => false,
            },
            Err(_) => false,
        };
        if fast {
            self.took(bytes);
            return true;
        }
        if held_back.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!(
                ?peer,
                source = ?self.source,
                client_partial_frame_bytes = self.budget.max_bytes,
                source_share_bytes = self.budget.share_bytes,
                "the budget for partial client frames (or its network's share) is spent; client streams wait"
            );
        } else {
            tracing::debug!(?peer, "waiting for room for a partial client frame");
        }
        let budget: &'a PartialFrameBudget = self.budget;
        let share = self.share.clone();
        let make_room = || {
            let share = share.clone();
            Box::pin(async move {
                let share = share.acquire_many(more).await.ok()?;
                let total = budget.permits.acquire_many(more).await.ok()?;
                share.forget();
                total.forget();
                Some(())
            })
        };
        let mut room = Some(make_room());
        let _waiting = budget.note_waiting(self.source);
        // If its network has room in its share but the total has none, and the network holds
        // less than its fair share, a network holding more gives room to this stream.
        let source = self.source;
        let ask = |short: usize| {
            if share.available_permits() >= more as usize {
                budget.take_room_for(source, short)
            } else {
                None
            }
        };
        let mut given = ask(more as usize);
        // The room given so far, out of the budget until this stream uses it (back to the
        // budget if it does not: on return, or when the wait is dropped).
        let mut gift = Gift { budget, bytes: 0 };
        loop {
            tokio::select! {
                room = async { room.as_mut().expect("guarded").await }, if room.is_some() => return match room {
                    Some(()) => {
                        self.took(bytes);
                        true
                    }
                    None => false,
                },
                given_bytes = async { given.as_mut().expect("guarded").await }, if given.is_some() => {
                    given = None;
                    if let Ok(given_bytes) = given_bytes {
                        gift.bytes = gift.bytes.saturating_add(given_bytes);
                    }
                    if gift.bytes < more as usize {
                        // Not all it needs: the network holding the most now (still above its
                        // fair share, this one still below) gives more; if none is to give,
                        // what was given goes back to the budget. Either way the stream waits
                        // for room as before meanwhile (the wait gives back what it took of
                        // the share first, so that the ask sees the share as it is).
                        drop(room.take());
                        given = ask(more as usize - gift.bytes);
                        if given.is_none() {
                            gift.give_back();
                        }
                        room = Some(make_room());
                        continue;
                    }
                    // The room comes from the total; this network's share pays for it as
                    // usual (the wait for room gives back what it took of the share first).
                    // What is not needed goes back to the budget.
                    drop(room.take());
                    let paid = match self.share.try_acquire_many(more) {
                        Ok(share_paid) => {
                            share_paid.forget();
                            true
                        }
                        Err(_) => false,
                    };
                    if paid {
                        gift.bytes -= more as usize;
                        self.took(bytes);
                        return true;
                    }
                    // Its own network's streams took the share meanwhile: back to the
                    // budget, and wait as before.
                    gift.give_back();
                    room = Some(make_room());
                }
                overdraft = budget.overdraft.acquire() => match overdraft {
                    Ok(overdraft) if budget.overdraft_turn(self.source) => {
                        self.overdraft = Some(overdraft);
                        return true;
                    }
                    // Our network had it last and another waits: its turn. Queue again
                    // behind it (the semaphore is FIFO).
                    Ok(not_our_turn) => {
                        drop(not_our_turn);
                        tokio::task::yield_now().await;
                    }
                    Err(_) => return false,
                },
            }
        }
    }

    /// Notes that the stream's buffer holds `bytes`.
    fn buffered(&mut self, bytes: usize) {
        if bytes >= self.buffered_bytes {
            self.budget
                .buffered
                .fetch_add(bytes - self.buffered_bytes, Ordering::AcqRel);
        } else {
            self.budget
                .buffered
                .fetch_sub(self.buffered_bytes - bytes, Ordering::AcqRel);
        }
        self.buffered_bytes = bytes;
    }
}

impl Drop for PartialHeld<'_> {
    fn drop(&mut self) {
        // Told to give its room to another network's stream: the total's part goes there.
        let to = lock(&self.given.to).take();
        if let Some(to) = to {
            let bytes = self.held_bytes;
            self.share.add_permits(bytes);
            self.held_bytes = 0;
            self.given.held_bytes.store(0, Ordering::Relaxed);
            lock(&self.budget.holding).remove(&self.stream);
            if let Err(bytes) = to.send(bytes) {
                self.budget.permits.add_permits(bytes);
            }
        }
        self.give_back(self.held_bytes);
        self.buffered(0);
        let mut shares = lock(&self.budget.shares);
        // The map's and ours: nobody else holds or waits on this share.
        if Arc::strong_count(&self.share) == 2
            && self.share.available_permits() == self.budget.share_bytes
        {
            shares.remove(&self.source);
        }
    }
}

/// The sending half of a send queue bounded in frames and in bytes, per peer and (through
/// the shared total) over all peers. A frame that would cross a bound is refused and dropped
/// by the caller (counted as `frames_dropped_queue_full`); the first refusal after a
/// success is logged, so a peer that stops reading shows in the log once per episode.
#[derive(Clone)]
pub(crate) struct SendQueue {
    tx: mpsc::Sender<Vec<u8>>,
    bytes: Arc<ByteBudget>,
    total: Arc<ByteBudget>,
    full_logged: Arc<std::sync::atomic::AtomicBool>,
}

/// The receiving half of a [`SendQueue`]: releases each frame's bytes as the writer takes it.
pub(crate) struct SendQueueRx {
    rx: mpsc::Receiver<Vec<u8>>,
    bytes: Arc<ByteBudget>,
    total: Arc<ByteBudget>,
}

impl SendQueue {
    pub(crate) fn new(
        frames: usize,
        bytes: usize,
        total: Arc<ByteBudget>,
    ) -> (SendQueue, SendQueueRx) {
        let (tx, rx) = mpsc::channel(frames);
        let bytes = Arc::new(ByteBudget::new(bytes));
        (
            SendQueue {
                tx,
                bytes: bytes.clone(),
                total: total.clone(),
                full_logged: Default::default(),
            },
            SendQueueRx { rx, bytes, total },
        )
    }

    /// Queues `frame` if the frame and byte bounds allow it.
    pub(crate) fn try_send(
        &self,
        frame: Vec<u8>,
    ) -> Result<(), mpsc::error::TrySendError<Vec<u8>>> {
        use mpsc::error::TrySendError;
        if self.tx.is_closed() {
            return Err(TrySendError::Closed(frame));
        }
        let length = frame.len();
        if !self.bytes.try_hold(length) {
            return Err(self.full(frame));
        }
        if !self.total.try_hold(length) {
            self.bytes.release(length);
            return Err(self.full(frame));
        }
        match self.tx.try_send(frame) {
            Ok(()) => {
                self.full_logged
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.bytes.release(length);
                self.total.release(length);
                match e {
                    TrySendError::Full(frame) => Err(self.full(frame)),
                    closed => Err(closed),
                }
            }
        }
    }

    fn full(&self, frame: Vec<u8>) -> mpsc::error::TrySendError<Vec<u8>> {
        if !self
            .full_logged
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                queued_bytes = self.bytes.held(),
                all_queues_bytes = self.total.held(),
                "a send queue is full (the peer is not reading, or the link is too slow); dropping frames to it until it drains"
            );
        }
        mpsc::error::TrySendError::Full(frame)
    }
}

impl SendQueueRx {
    async fn recv(&mut self) -> Option<Vec<u8>> {
        let frame = self.rx.recv().await?;
        self.taken(&frame);
        Some(frame)
    }

    fn try_recv(&mut self) -> Option<Vec<u8>> {
        let frame = self.rx.try_recv().ok()?;
        self.taken(&frame);
        Some(frame)
    }

    fn taken(&self, frame: &[u8]) {
        self.bytes.release(frame.len());
        self.total.release(frame.len());
    }
}

impl Drop for SendQueueRx {
    fn drop(&mut self) {
        // What is still queued is never sent: give its bytes back to the shared total.
        self.rx.close();
        while let Ok(frame) = self.rx.try_recv() {
            self.taken(&frame);
        }
    }
}

impl Shared {
    /// Spawns a task of the transport. One that panics (a broken invariant) is reported as
    /// the transport's failure rather than lost in the set.
    pub(crate) fn spawn(self: &Arc<Self>, task: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = lock(&self.tasks);
        if tasks.closed {
            return;
        }
        // Reap finished tasks so the set stays as small as the number of live ones.
        while tasks.set.try_join_next().is_some() {}
        let shared = self.clone();
        tasks.set.spawn(async move {
            if let Err(payload) = std::panic::AssertUnwindSafe(task).catch_unwind().await {
                shared.fail(format!(
                    "a transport task panicked: {}",
                    smr_core::driver::panic_message(&*payload)
                ));
            }
        });
    }

    /// Like [`Shared::spawn`], for a task that must run until shutdown (the acceptor, a link
    /// to a replica): its ending before shutdown is the transport's failure.
    pub(crate) fn spawn_essential(
        self: &Arc<Self>,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let shared = self.clone();
        self.spawn(async move {
            task.await;
            if !shared.is_shut_down() {
                shared.fail(format!("the {name} ended before shutdown"));
            }
        });
    }

    /// Records the transport's first failure and logs it.
    pub(crate) fn fail(&self, reason: String) {
        tracing::error!(me = %self.me, %reason, "transport failed");
        self.failure.send_if_modified(|failure| {
            if failure.is_none() {
                *failure = Some(reason);
                true
            } else {
                false
            }
        });
    }

    pub(crate) fn begin_shutdown(&self) {
        lock(&self.tasks).closed = true;
        self.shutdown_tx.send_replace(true);
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        *self.shutdown_tx.borrow()
    }

    pub(crate) fn shutdown_rx(&self) -> watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }

    /// The receive queue's lane for frames from `peer`.
    pub(crate) fn lane(&self, peer: Peer) -> &Lane {
        match peer {
            Peer::Replica(_) => &self.replica_lane,
            Peer::Client(_) => &self.client_lane,
        }
    }

    /// The largest frame accepted from `peer`.
    pub(crate) fn frame_limit(&self, peer: Peer) -> usize {
        match peer {
            Peer::Replica(_) => self.max_frame_bytes,
            Peer::Client(_) => self.max_client_frame_bytes,
        }
    }
}

/// The key of the stateless resets our endpoint sends, derived from our identity key, so that
/// it is the same in every run of this replica and secret like the identity key; also the key
/// of our connection ids ([`StatelessResetKey::connection_id_key`]).
///
/// A peer that still holds a connection to a run of ours that crashed sends its next packet to
/// our address; the new run does not know the connection and answers with a stateless reset,
/// whose token is a MAC of the connection id under this key. With keys drawn at random per run
/// (quinn's default) the new run would not even recognise the connection id as one of its own
/// and would drop the packet, or its token would not match the one the old run gave the peer:
/// the peer would hold the dead connection until its idle timeout (10 s by default), losing
/// everything it sent meanwhile. With the same keys the peer (a replica or a client) drops the
/// connection at its next packet, and reconnects.
pub(crate) struct StatelessResetKey([u8; 32]);

impl StatelessResetKey {
    /// The tag length, blake3's output; a reset token is its first 16 bytes (quinn's
    /// `RESET_TOKEN_SIZE`).
    const TAG_BYTES: usize = 32;

    pub(crate) fn derive(identity: &smr_crypto::IdentityKey) -> StatelessResetKey {
        StatelessResetKey(blake3::derive_key(
            "smr transport 2026 QUIC stateless reset key",
            &identity.as_dalek().to_bytes(),
        ))
    }

    /// The key of quinn's `HashedConnectionIdGenerator`, which checks that a packet's
    /// connection id is one this endpoint's key made before it answers (with a reset, here): the
    /// same in every run, so that a new run answers for the old run's ids. It is not a secret
    /// (the check only spares work on packets that are not QUIC).
    pub(crate) fn connection_id_key(&self) -> u64 {
        let derived = blake3::keyed_hash(&self.0, b"connection ids");
        u64::from_le_bytes(derived.as_bytes()[..8].try_into().expect("8 bytes"))
    }
}

impl quinn::crypto::HmacKey for StatelessResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let tag = blake3::keyed_hash(&self.0, data);
        let n = signature_out.len().min(Self::TAG_BYTES);
        signature_out[..n].copy_from_slice(&tag.as_bytes()[..n]);
    }

    fn signature_len(&self) -> usize {
        Self::TAG_BYTES
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        // blake3::Hash compares in constant time.
        let tag = blake3::keyed_hash(&self.0, data);
        match <[u8; 32]>::try_from(signature) {
            Ok(bytes) if tag == blake3::Hash::from(bytes) => Ok(()),
            _ => Err(quinn::crypto::CryptoError),
        }
    }
}

/// Our protocol settings and what they made us refuse (see
/// [`TransportConfig::protocol_settings`](crate::TransportConfig::protocol_settings)).
pub(crate) struct Settings {
    pub(crate) ours: Arc<ProtocolSettings>,
    /// The first frame of every stream we open to a replica: our settings, length-prefixed.
    pub(crate) hello: Vec<u8>,
    /// The replicas refused now, with the keys of the settings that differ; a replica leaves
    /// when it connects with our settings.
    pub(crate) refused: Mutex<BTreeMap<ReplicaId, Vec<String>>>,
}

/// The most characters of one peer-supplied setting value or key that a log line or the
/// status report shows.
const SHOWN_SETTING_CHARS: usize = 80;

/// The most differing settings reported per refused replica (ours are 16; a peer may send more).
const MAX_REPORTED_SETTINGS: usize = 32;

fn shown(text: &str) -> String {
    let cut: String = text.chars().take(SHOWN_SETTING_CHARS).collect();
    cut.escape_debug().to_string()
}

impl Shared {
    /// Checks the first frame of a stream from replica `from`: its protocol settings. Logs an
    /// error naming the settings that differ (once per peer and difference) and notes the
    /// refusal; false if the connection must be refused.
    fn check_settings(&self, from: ReplicaId, frame: &[u8]) -> bool {
        let Some(settings) = &self.settings else {
            return true;
        };
        if frame == &settings.hello[LENGTH_PREFIX_BYTES..] {
            if lock(&settings.refused).remove(&from).is_some() {
                tracing::info!(me = %self.me, peer = from,
                    "replica connected with our protocol settings; no longer refused");
            }
            return true;
        }
        bump(&self.counters.connections_refused_settings, 1);
        let (keys, detail) = match ProtocolSettings::from_bytes(frame) {
            Ok(theirs) => {
                let differences = settings.ours.differences(&theirs);
                // Raw (the status report escapes them when printed), cut to a bound.
                let keys: Vec<String> = differences
                    .iter()
                    .take(MAX_REPORTED_SETTINGS)
                    .map(|d| d.key.chars().take(SHOWN_SETTING_CHARS).collect())
                    .collect();
                let mut detail = differences
                    .iter()
                    .take(MAX_REPORTED_SETTINGS)
                    .map(|d| {
                        format!(
                            "{} = {} here, {} there",
                            shown(&d.key),
                            d.ours.as_deref().unwrap_or("(none)"),
                            d.theirs.as_deref().map_or("(none)".to_string(), shown)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                if differences.len() > MAX_REPORTED_SETTINGS {
                    detail.push_str(&format!(
                        "; and {} more",
                        differences.len() - MAX_REPORTED_SETTINGS
                    ));
                }
                (keys, detail)
            }
            Err(why) => (
                vec!["(settings unreadable)".to_string()],
                format!("its settings are unreadable: {why}"),
            ),
        };
        let changed = lock(&settings.refused).insert(from, keys.clone()) != Some(keys);
        if changed {
            let short = |d: smr_crypto::Digest| d.to_hex()[..16].to_string();
            tracing::error!(me = %self.me, peer = from, differing = %detail,
                our_digest = %short(settings.ours.digest()),
                their_digest = %short(smr_crypto::digest(frame)),
                "refusing replica {from}: its protocol settings differ from ours, and replicas must agree on everything that decides whether a message is valid; make mode, f, [[replicas]] keys and the [limits] of README's protocol settings equal in every config file");
        } else {
            tracing::debug!(me = %self.me, peer = from, "refused replica connected again with the same differing settings");
        }
        false
    }

    pub(crate) fn refused_replicas(&self) -> Vec<smr_core::message::RefusedReplica> {
        let Some(settings) = &self.settings else {
            return Vec::new();
        };
        lock(&settings.refused)
            .iter()
            .map(|(replica, keys)| smr_core::message::RefusedReplica {
                replica: *replica,
                settings: keys.clone(),
            })
            .collect()
    }
}

/// Resolves once shutdown has begun.
pub(crate) async fn shutdown_signaled(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which also means we are shutting down.
    let _ = shutdown.wait_for(|down| *down).await;
}

pub(crate) fn quic_transport_config(
    config: &TransportConfig,
) -> Result<quinn::TransportConfig, TransportError> {
    let idle = Duration::from_millis(config.idle_timeout_ms);
    let idle_timeout = quinn::IdleTimeout::try_from(idle)
        .map_err(|_| TransportError::InvalidConfig("idle_timeout_ms is too large".into()))?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .max_concurrent_uni_streams(VarInt::from_u32(MAX_UNI_STREAMS))
        // Raised for replica connections once they are known (see the constant).
        .receive_window(VarInt::from_u32(CLIENT_RECEIVE_WINDOW_BYTES))
        .max_idle_timeout(Some(idle_timeout))
        .keep_alive_interval(Some(idle / 3))
        .initial_rtt(INITIAL_RTT);
    Ok(transport)
}

/// Why a writer stopped writing on a connection.
enum WriteEnd {
    Shutdown,
    /// Every sender of the queue is gone (the link was evicted).
    QueueClosed,
    ConnectionLost(String),
}

/// Writes queued frames onto one unidirectional stream of `conn` until something ends it. A
/// `hello` (our protocol settings, to a replica) opens the stream, at once.
async fn write_frames(
    shared: &Shared,
    peer: Peer,
    conn: &Connection,
    queue: &mut SendQueueRx,
    shutdown: &mut watch::Receiver<bool>,
    hello: Option<&[u8]>,
) -> WriteEnd {
    let counters = &shared.counters;
    let mut stream = None;
    let mut buffer = Vec::new();
    // Made once and polled by every wait below: made anew for each batch of frames, their
    // registrations (a lock of the connection's state, two of each signal's waiter list) were
    // about 1% of a BFT client process's CPU under load. Each returns at once when ready.
    let shutdown = shutdown_signaled(shutdown);
    let closed = conn.closed();
    tokio::pin!(shutdown, closed);
    if hello.is_some() {
        let result = tokio::select! {
            biased;
            _ = &mut shutdown => return WriteEnd::Shutdown,
            result = write_buffer(conn, &mut stream, hello, &[]) => result,
        };
        if let Err(error) = result {
            return WriteEnd::ConnectionLost(error);
        }
    }
    loop {
        let first = tokio::select! {
            biased;
            _ = &mut shutdown => return WriteEnd::Shutdown,
            error = &mut closed => return WriteEnd::ConnectionLost(error.to_string()),
            frame = queue.recv() => match frame {
                Some(frame) => frame,
                None => return WriteEnd::QueueClosed,
            },
        };
        buffer.clear();
        let mut frames = 0u64;
        let mut payload_bytes = 0u64;
        let mut next = Some(first);
        while let Some(frame) = next.take() {
            // The length fits: send() refuses frames over max_frame_bytes, which is <= u32::MAX.
            let length = u32::try_from(frame.len()).expect("frame length checked by send");
            buffer.extend_from_slice(&length.to_be_bytes());
            buffer.extend_from_slice(&frame);
            frames += 1;
            payload_bytes += frame.len() as u64;
            if buffer.len() < COALESCE_BYTES {
                next = queue.try_recv();
            }
        }
        let result = tokio::select! {
            biased;
            _ = &mut shutdown => return WriteEnd::Shutdown,
            result = write_buffer(conn, &mut stream, hello, &buffer) => result,
        };
        match result {
            Ok(()) => {
                bump(&counters.frames_sent, frames);
                bump(&counters.bytes_sent, payload_bytes);
                counters.peers.sent(peer, frames, payload_bytes);
            }
            Err(error) => {
                bump(&counters.frames_dropped_connection_lost, frames);
                return WriteEnd::ConnectionLost(error);
            }
        }
        if buffer.capacity() > RETAINED_BUFFER_BYTES {
            buffer = Vec::new();
        }
    }
}

async fn write_buffer(
    conn: &Connection,
    stream: &mut Option<quinn::SendStream>,
    hello: Option<&[u8]>,
    buffer: &[u8],
) -> Result<(), String> {
    let send = match stream {
        Some(send) => send,
        None => {
            let send = stream.insert(conn.open_uni().await.map_err(|e| e.to_string())?);
            if let Some(hello) = hello {
                send.write_all(hello).await.map_err(|e| e.to_string())?;
            }
            send
        }
    };
    send.write_all(buffer).await.map_err(|e| e.to_string())
}

/// Counts and logs the end of an established connection.
fn connection_ended(shared: &Shared, peer: Peer, conn: &Connection, end: &str) {
    match conn.close_reason() {
        Some(ConnectionError::ConnectionClosed(close)) if is_tls_alert(&close) => {
            bump(&shared.counters.connections_refused_by_peer, 1);
            tracing::warn!(me = %shared.me, ?peer, reason = %close,
                "peer refused our connection; is our key in its configuration?");
        }
        Some(ConnectionError::ApplicationClosed(close))
            if close.error_code == CLOSE_SETTINGS_DIFFER =>
        {
            bump(&shared.counters.connections_refused_by_peer, 1);
            // Once we refuse it too, our error log has named the settings already.
            let known = match (peer, &shared.settings) {
                (Peer::Replica(id), Some(settings)) => lock(&settings.refused).contains_key(&id),
                _ => false,
            };
            if known {
                tracing::debug!(me = %shared.me, ?peer, "peer refused our connection again: protocol settings differ");
            } else {
                tracing::warn!(me = %shared.me, ?peer,
                    "peer refused our connection: its protocol settings differ from ours (our log names them when it connects to us)");
            }
        }
        Some(ConnectionError::LocallyClosed) if shared.is_shut_down() => {}
        _ => {
            bump(&shared.counters.connections_lost, 1);
            tracing::info!(me = %shared.me, ?peer, reason = %end, "connection lost");
        }
    }
}

/// QUIC reports TLS alerts as CRYPTO_ERROR transport codes 0x100..=0x1ff.
fn is_tls_alert(close: &quinn::ConnectionClose) -> bool {
    let code = u64::from(close.error_code);
    (0x100..=0x1ff).contains(&code)
}

/// Keeps one outgoing connection to a replica alive and writes its queue onto it.
pub(crate) async fn run_replica_link(
    shared: Arc<Shared>,
    endpoint: Endpoint,
    target: crate::ReplicaEndpoint,
    client_config: quinn::ClientConfig,
    mut queue: SendQueueRx,
) {
    let peer = Peer::Replica(target.id);
    let mut shutdown = shared.shutdown_rx();
    let mut redial = shared.redial.get(&target.id).map(|r| r.subscribe());
    let mut backoff = shared.reconnect_initial;
    loop {
        let dialed = tokio::select! {
            biased;
            _ = shutdown_signaled(&mut shutdown) => return,
            dialed = dial(&shared, &endpoint, &target, &client_config) => dialed,
        };
        match dialed {
            Ok(conn) => {
                bump(&shared.counters.connections_outgoing, 1);
                tracing::info!(me = %shared.me, ?peer, addr = %target.addr, "connected");
                let connected_at = Instant::now();
                // Replies to a client come back on the connection it opened.
                shared.spawn(read_connection(shared.clone(), conn.clone(), peer, None));
                if let Some(redial) = redial.as_mut() {
                    redial.mark_unchanged();
                }
                // `None`: the peer connected to us anew, and this connection is presumed dead.
                // A connection younger than REDIAL_MIN_AGE is kept: it was dialed after the
                // peer's restart, or in answer to it.
                let hello = shared
                    .settings
                    .as_ref()
                    .map(|s| s.hello.as_slice())
                    .map(<[u8]>::to_vec)
                    .or_else(|| lock(&shared.client_hello).clone());
                let hello = hello.as_deref();
                let write = write_frames(&shared, peer, &conn, &mut queue, &mut shutdown, hello);
                tokio::pin!(write);
                // The redial signal first: frames queued in answer to what the peer sent on its
                // new connection must not go out on the dead one.
                let end = loop {
                    tokio::select! {
                        biased;
                        () = peer_reconnected(redial.as_mut()) => {
                            if connected_at.elapsed() >= REDIAL_MIN_AGE {
                                break None;
                            }
                        }
                        end = &mut write => break Some(end),
                    }
                };
                match end {
                    Some(WriteEnd::Shutdown | WriteEnd::QueueClosed) => {
                        conn.close(CLOSE_SHUTDOWN, b"shutdown");
                        return;
                    }
                    Some(WriteEnd::ConnectionLost(reason)) => {
                        connection_ended(&shared, peer, &conn, &reason);
                        conn.close(CLOSE_SHUTDOWN, b"reconnecting");
                    }
                    None => {
                        bump(&shared.counters.connections_lost, 1);
                        tracing::info!(me = %shared.me, ?peer, "peer connected to us anew; redialing it");
                        conn.close(CLOSE_SHUTDOWN, b"redialing");
                        backoff = shared.reconnect_initial;
                        continue;
                    }
                }
                // A connection that lived a while earns a fresh backoff; one that the peer closes
                // right away (e.g. refusing our key) keeps backing off.
                if connected_at.elapsed() >= shared.reconnect_max {
                    backoff = shared.reconnect_initial;
                }
            }
            Err(DialError::Refused(reason)) => {
                bump(&shared.counters.connections_refused_by_peer, 1);
                tracing::warn!(me = %shared.me, ?peer, addr = %target.addr, %reason,
                    "peer refused our connection; is our key in its configuration?");
            }
            Err(DialError::Failed(reason)) => {
                bump(&shared.counters.handshake_failures, 1);
                tracing::debug!(me = %shared.me, ?peer, addr = %target.addr, %reason,
                    retry_in_ms = backoff.as_millis() as u64, "dial failed");
            }
        }
        // A peer that connects to us is up: dial it at once rather than at the end of the
        // backoff (a restarted replica must not wait up to `reconnect_max_ms` for our frames).
        tokio::select! {
            biased;
            _ = shutdown_signaled(&mut shutdown) => return,
            () = peer_reconnected(redial.as_mut()) => {
                tracing::debug!(me = %shared.me, ?peer, "peer connected to us; dialing it now");
                backoff = shared.reconnect_initial;
                continue;
            }
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(shared.reconnect_max);
    }
}

/// Resolves when the peer replica connected to us anew (see [`note_replica_connected_in`]);
/// never without a redial signal.
async fn peer_reconnected(redial: Option<&mut watch::Receiver<u64>>) {
    match redial {
        Some(redial) => {
            if redial.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

enum DialError {
    /// The peer answered with a TLS alert (e.g. it does not admit our key).
    Refused(String),
    Failed(String),
}

async fn dial(
    shared: &Shared,
    endpoint: &Endpoint,
    target: &crate::ReplicaEndpoint,
    client_config: &quinn::ClientConfig,
) -> Result<Connection, DialError> {
    let connecting = endpoint
        .connect_with(client_config.clone(), target.addr, tls::SERVER_NAME)
        .map_err(|e| DialError::Failed(e.to_string()))?;
    match tokio::time::timeout(shared.connect_timeout, connecting).await {
        Ok(Ok(conn)) => {
            // We only dial replicas.
            conn.set_receive_window(REPLICA_RECEIVE_WINDOW);
            Ok(conn)
        }
        Ok(Err(ConnectionError::ConnectionClosed(close))) if is_tls_alert(&close) => {
            Err(DialError::Refused(close.to_string()))
        }
        Ok(Err(e)) => Err(DialError::Failed(e.to_string())),
        Err(_) => Err(DialError::Failed(format!(
            "no handshake within {} ms",
            shared.connect_timeout.as_millis()
        ))),
    }
}

/// The connected client key that sent no bytes for the longest time, if it has been idle for
/// [`CLIENT_KEY_MIN_IDLE_BEFORE_EVICTION`]: the one that gives its place when the key table or
/// the client connection places are full. The scan is O(keys), under the lock every send to a
/// client takes, so it is not repeated for every connection of a flood: it finds when the
/// first key can have been idle long enough (activity times only grow, and keys join with the
/// time they join), and until then answers `None` without a scan.
fn idlest_client_key(
    shared: &Shared,
    all_links: &HashMap<PublicKey, Vec<ClientLink>, ahash::RandomState>,
    now_ms: u64,
) -> Option<PublicKey> {
    let min_idle_ms = CLIENT_KEY_MIN_IDLE_BEFORE_EVICTION.as_millis() as u64;
    let not_before = &shared.client_keys_idle_not_before_ms;
    if now_ms < not_before.load(Ordering::Relaxed) {
        return None;
    }
    #[cfg(test)]
    shared.client_key_scans.fetch_add(1, Ordering::Relaxed);
    let idlest = all_links
        .iter()
        .map(|(key, links)| {
            let last = links
                .iter()
                .map(|link| link.last_frame_ms.load(Ordering::Relaxed))
                .max()
                .unwrap_or(0);
            (*key, last)
        })
        .min_by_key(|&(_, last)| last);
    match idlest {
        Some((key, last)) if now_ms.saturating_sub(last) >= min_idle_ms => Some(key),
        Some((_, last)) => {
            not_before.store(last.saturating_add(min_idle_ms), Ordering::Relaxed);
            None
        }
        None => None,
    }
}

/// Closes the connections of the client key idle longest, if one has been idle long enough
/// ([`idlest_client_key`]), and counts it; their places are given back as they end.
fn evict_idlest_client_key(shared: &Shared, now_ms: u64, for_key: Peer) {
    let evicted = {
        let mut all_links = lock(&shared.client_links);
        idlest_client_key(shared, &all_links, now_ms)
            .and_then(|idle_key| all_links.remove(&idle_key).map(|links| (idle_key, links)))
    };
    let Some((idle_key, links)) = evicted else {
        return;
    };
    let count = shared
        .counters
        .client_keys_evicted_idle
        .fetch_add(1, Ordering::Relaxed);
    if count == 0 {
        tracing::warn!(me = %shared.me, evicted = ?Peer::Client(idle_key), ?for_key,
            "the client connection places are taken; closing the connections of the key idle longest");
    } else {
        tracing::debug!(me = %shared.me, evicted = ?Peer::Client(idle_key), ?for_key,
            "closing the connections of the client key idle longest");
    }
    for link in links {
        link.conn
            .close(CLOSE_IDLE_KEY_EVICTED, b"idle client key evicted");
    }
}

/// Closes a client connection that gave its place to `for_peer`, a newcomer of a network
/// below its fair share of the client connection places ([`place_donor`]), and counts it. Its
/// client sees the connection closed with [`CLOSE_PLACE_GIVEN`]; it may reconnect at once,
/// and is admitted while its network holds less than its fair share (or places are free).
fn close_displaced(
    shared: &Shared,
    displaced: Displaced,
    for_peer: Peer,
    remote: std::net::SocketAddr,
) {
    let count = shared
        .counters
        .client_connections_displaced
        .fetch_add(1, Ordering::Relaxed);
    let evicted = Peer::Client(displaced.key);
    let network = displaced.source;
    if count == 0 {
        tracing::warn!(me = %shared.me, ?evicted, ?network, ?for_peer, %remote,
            "the client connection places are taken: the network holding the most gives its idlest connection's place to a network below its fair share");
    } else {
        tracing::debug!(me = %shared.me, ?evicted, ?network, ?for_peer, %remote,
            "a client connection gives its place to a network below its fair share");
    }
    if let Some(conn) = displaced.conn {
        conn.close(
            CLOSE_PLACE_GIVEN,
            b"place given to a client of another network",
        );
    }
}

/// Replica role: accepts connections until shutdown.
pub(crate) async fn run_acceptor(shared: Arc<Shared>, endpoint: Endpoint) {
    let mut shutdown = shared.shutdown_rx();
    loop {
        let incoming = tokio::select! {
            biased;
            _ = shutdown_signaled(&mut shutdown) => return,
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else {
            return;
        };
        shared.spawn(handle_incoming(shared.clone(), incoming));
    }
}

async fn handle_incoming(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let conn = match tokio::time::timeout(shared.connect_timeout, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            bump(&shared.counters.handshake_failures, 1);
            tracing::debug!(me = %shared.me, %remote, error = %e, "incoming handshake failed");
            return;
        }
        Err(_) => {
            bump(&shared.counters.handshake_failures, 1);
            tracing::debug!(me = %shared.me, %remote, "incoming handshake timed out");
            return;
        }
    };
    // The verifier admitted the key; identify it again from the certificate the connection holds.
    let peer = peer_key(&conn).and_then(|key| shared.admission.identify(&key));
    let Some(peer) = peer else {
        tracing::warn!(me = %shared.me, %remote, "connection without an admitted identity");
        conn.close(CLOSE_UNIDENTIFIED, b"unidentified");
        return;
    };
    bump(&shared.counters.connections_incoming, 1);
    tracing::info!(me = %shared.me, ?peer, %remote, "accepted connection");
    let id = shared.next_link_id.fetch_add(1, Ordering::Relaxed);
    if let Peer::Replica(replica) = peer {
        conn.set_receive_window(REPLICA_RECEIVE_WINDOW);
        if shared.settings.is_none() {
            note_replica_connected_in(&shared, replica);
        }
        let evicted = {
            let mut links = lock(&shared.replica_links);
            let links = links.entry(replica).or_default();
            links.push((id, conn.clone()));
            let excess = links.len().saturating_sub(MAX_CONNECTIONS_PER_REPLICA);
            links.drain(..excess).collect::<Vec<_>>()
        };
        for (_, old) in evicted {
            bump(&shared.counters.connections_evicted, 1);
            tracing::info!(me = %shared.me, ?peer, "closing a replica's oldest incoming connection");
            old.close(CLOSE_TOO_MANY_CONNECTIONS, b"too many connections");
        }
        read_connection(shared.clone(), conn, peer, None).await;
        let mut all_links = lock(&shared.replica_links);
        if let Some(links) = all_links.get_mut(&replica) {
            links.retain(|(link, _)| *link != id);
        }
        return;
    }
    // A client connection's place in its source's count and in the total of client
    // connections, held until the connection ends (or given to another network's newcomer).
    let mut _source = None;
    let mut client = None;
    if let Peer::Client(key) = peer {
        let now_ms = u64::try_from(shared.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last_frame_ms = Arc::new(AtomicU64::new(now_ms));
        let admitted = shared.client_sources.admit(
            remote.ip(),
            key,
            id,
            last_frame_ms.clone(),
            Some(conn.clone()),
        );
        _source = match admitted {
            Ok((guard, displaced)) => {
                if let Some(displaced) = displaced {
                    close_displaced(&shared, displaced, peer, remote);
                }
                Some(guard)
            }
            Err(SourceRefusal::PlacesTaken) => {
                let count = shared
                    .counters
                    .connections_refused_client_bytes
                    .fetch_add(1, Ordering::Relaxed);
                if count == 0 {
                    tracing::warn!(me = %shared.me, ?peer, %remote,
                        max_client_connections = shared.max_client_connections,
                        "refusing a client connection: client_connection_total_bytes is taken by the client connections open, and its network holds its fair share of them");
                } else {
                    tracing::debug!(me = %shared.me, ?peer, %remote,
                        "refusing a client connection: client_connection_total_bytes is taken");
                }
                // Idle connections must not keep their places for ever (a few networks'
                // worth of them take every place): the key idle longest gives its places,
                // and this client's retry finds one.
                evict_idlest_client_key(&shared, now_ms, peer);
                conn.close(CLOSE_TOO_MANY_CLIENTS, b"too many client connections");
                return;
            }
            Err(refusal) => {
                let count = shared
                    .counters
                    .connections_refused_source_limit
                    .fetch_add(1, Ordering::Relaxed);
                let why = match refusal {
                    SourceRefusal::TooManyKeys => "max_client_keys_per_source other client keys are connected from its network",
                    SourceRefusal::TooFast => "its network connected new client keys faster than client_keys_per_source_per_minute",
                    SourceRefusal::ConnectionShareTaken | SourceRefusal::PlacesTaken => "its network holds its share (an eighth) of the client connection places of client_connection_total_bytes",
                };
                if count == 0 {
                    tracing::warn!(me = %shared.me, ?peer, %remote, "refusing a client connection: {why}");
                } else {
                    tracing::debug!(me = %shared.me, ?peer, %remote, "refusing a client connection: {why}");
                }
                conn.close(
                    CLOSE_SOURCE_LIMIT,
                    b"too many client keys from this network",
                );
                return;
            }
        };
        let (queue_tx, queue_rx) = SendQueue::new(
            shared.client_send_queue_frames,
            shared.client_send_queue_bytes,
            shared.send_queue_total.clone(),
        );
        let session = Arc::new(Announced::default());
        let (evicted, idle_evicted, key_given) = {
            let mut all_links = lock(&shared.client_links);
            let mut idle_evicted = None;
            let mut key_given = None;
            if !all_links.contains_key(&key) && all_links.len() >= shared.max_client_keys {
                // The table is full: the key that sent no bytes for the longest time gives
                // its place, if it has been idle long enough; active keys are never evicted.
                //
                // The scan is O(keys), under the lock every send to a client takes, so it is
                // not repeated for every key of a flood: it finds when the first key can have
                // been idle long enough (activity times only grow, and keys join with the time
                // they join), and until then new keys are refused without a scan.
                //
                // But first, max-min fairness between networks: a network with fewer keys
                // than its fair share takes the place of the idlest key of the network with
                // the most (active or not), so that no number of networks can fill the table.
                let in_table = |k: &PublicKey| all_links.contains_key(k);
                let fair = shared.client_sources.key_donor(
                    remote.ip(),
                    key,
                    shared.max_client_keys,
                    in_table,
                );
                if let Some((given, network)) = fair {
                    key_given = all_links
                        .remove(&given)
                        .map(|links| (given, network, links));
                }
                if key_given.is_none() {
                    match idlest_client_key(&shared, &all_links, now_ms) {
                        Some(idle_key) => {
                            idle_evicted =
                                all_links.remove(&idle_key).map(|links| (idle_key, links));
                        }
                        None => {
                            drop(all_links);
                            let count = shared
                                .counters
                                .connections_refused_client_limit
                                .fetch_add(1, Ordering::Relaxed);
                            if count == 0 {
                                tracing::warn!(me = %shared.me, ?peer, max_client_keys = shared.max_client_keys,
                                "refusing a connection: max_client_keys client keys are connected, none idle for {:?}",
                                CLIENT_KEY_MIN_IDLE_BEFORE_EVICTION);
                            } else {
                                tracing::debug!(me = %shared.me, ?peer,
                                "refusing a connection: max_client_keys client keys are connected and active");
                            }
                            conn.close(CLOSE_TOO_MANY_CLIENTS, b"too many clients");
                            return;
                        }
                    }
                }
            }
            let links = all_links.entry(key).or_default();
            links.push(ClientLink {
                id,
                queue: queue_tx,
                session: session.clone(),
                conn: conn.clone(),
                last_frame_ms: last_frame_ms.clone(),
            });
            let excess = links
                .len()
                .saturating_sub(shared.max_connections_per_client_key);
            (
                links.drain(..excess).collect::<Vec<_>>(),
                idle_evicted,
                key_given,
            )
        };
        if let Some((given, network, links)) = key_given {
            let count = shared
                .counters
                .client_keys_displaced
                .fetch_add(1, Ordering::Relaxed);
            if count == 0 {
                tracing::warn!(me = %shared.me, evicted = ?Peer::Client(given), ?network, for_key = ?peer, %remote,
                    "max_client_keys client keys are connected: the network with the most gives its idlest key's place to a network below its fair share");
            } else {
                tracing::debug!(me = %shared.me, evicted = ?Peer::Client(given), ?network, for_key = ?peer,
                    "a client key gives its place to a network below its fair share");
            }
            for link in links {
                link.conn.close(
                    CLOSE_PLACE_GIVEN,
                    b"place given to a client of another network",
                );
            }
        }
        if let Some((idle_key, links)) = idle_evicted {
            let count = shared
                .counters
                .client_keys_evicted_idle
                .fetch_add(1, Ordering::Relaxed);
            if count == 0 {
                tracing::warn!(me = %shared.me, evicted = ?Peer::Client(idle_key), for_key = ?peer,
                    "max_client_keys client keys are connected; closing the connections of the key idle longest");
            } else {
                tracing::debug!(me = %shared.me, evicted = ?Peer::Client(idle_key), for_key = ?peer,
                    "closing the connections of the client key idle longest");
            }
            for link in links {
                link.conn
                    .close(CLOSE_IDLE_KEY_EVICTED, b"idle client key evicted");
            }
        }
        for link in evicted {
            bump(&shared.counters.connections_evicted, 1);
            tracing::info!(me = %shared.me, ?peer, "closing a client's oldest connection");
            link.conn
                .close(CLOSE_TOO_MANY_CONNECTIONS, b"too many connections");
        }
        shared.spawn(run_client_link(
            shared.clone(),
            conn.clone(),
            key,
            id,
            queue_rx,
        ));
        // A client's partial frames are charged to the network it was admitted from, whatever
        // address its connection moves to later (QUIC migration).
        client = Some(ClientReader {
            source: ClientSource::of(remote.ip()),
            last_frame_ms,
            session,
        });
    }
    read_connection(shared, conn, peer, client).await;
}

/// Called when a replica's connection is accepted (with protocol settings, once its settings
/// are found equal to ours).
///
/// A peer replica that connects to us has most likely (re)started, or found its network again,
/// and then our outgoing connection to it, if we hold one, is dead as well: quinn would only find
/// out at the idle timeout (or at a stateless reset, see `stateless_reset_key`), and until then
/// everything we send it would vanish. So every inbound connection from a replica signals our
/// link to it: a link waiting out its reconnect backoff dials at once, and a connected link
/// older than [`REDIAL_MIN_AGE`] redials. A link younger than that was dialed after the peer's
/// restart or in answer to it, so two replicas never make each other redial in turn.
fn note_replica_connected_in(shared: &Shared, replica: smr_core::message::ReplicaId) {
    if let Some(redial) = shared.redial.get(&replica) {
        redial.send_modify(|generation| *generation += 1);
    }
}

fn peer_key(conn: &Connection) -> Option<PublicKey> {
    let identity = conn.peer_identity()?;
    let certs = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    tls::key_from_cert(certs.first()?)
}

/// Replica role: writes to a client over a connection it opened, until that connection ends.
async fn run_client_link(
    shared: Arc<Shared>,
    conn: Connection,
    key: PublicKey,
    id: u64,
    mut queue: SendQueueRx,
) {
    let peer = Peer::Client(key);
    let mut shutdown = shared.shutdown_rx();
    let end = write_frames(&shared, peer, &conn, &mut queue, &mut shutdown, None).await;
    {
        let mut all_links = lock(&shared.client_links);
        if let Some(links) = all_links.get_mut(&key) {
            links.retain(|link| link.id != id);
            if links.is_empty() {
                all_links.remove(&key);
            }
        }
    }
    match end {
        WriteEnd::Shutdown | WriteEnd::QueueClosed => {}
        WriteEnd::ConnectionLost(reason) => {
            connection_ended(&shared, peer, &conn, &reason);
            conn.close(CLOSE_SHUTDOWN, b"write failed");
        }
    }
}

/// What the reader of a client connection needs besides the connection.
#[derive(Clone)]
pub(crate) struct ClientReader {
    /// The network the connection was admitted from: its partial frames are charged to it.
    source: ClientSource,
    /// Where to note when bytes last arrived (see [`ClientLink`]).
    last_frame_ms: Arc<AtomicU64>,
    /// Where to note the session the client announces (see [`ClientLink`]).
    session: Arc<Announced>,
}

/// Reads every unidirectional stream `peer` opens on `conn`; a client's partial frames are
/// charged to the network it was admitted from (`client`).
pub(crate) async fn read_connection(
    shared: Arc<Shared>,
    conn: Connection,
    peer: Peer,
    client: Option<ClientReader>,
) {
    let mut shutdown = shared.shutdown_rx();
    // A peer may open a few streams; together they buffer at most one frame of its limit
    // (plus the chunks being cut), which is all a sender that uses one stream ever needs.
    let buffered = Arc::new(ByteBudget::new(
        shared
            .frame_limit(peer)
            .saturating_add(2 * READ_CHUNK_BYTES),
    ));
    // Set by the first of the connection's streams that closes it over its buffer bound, so
    // that the closure is counted once however many streams hit the bound at once.
    let closed_over_buffer = Arc::new(AtomicBool::new(false));
    loop {
        let stream = tokio::select! {
            biased;
            _ = shutdown_signaled(&mut shutdown) => return,
            stream = conn.accept_uni() => stream,
        };
        match stream {
            Ok(stream) => shared.spawn(read_stream(
                shared.clone(),
                conn.clone(),
                stream,
                peer,
                client.clone(),
                buffered.clone(),
                closed_over_buffer.clone(),
            )),
            // The connection ended; whoever writes on it counts that.
            Err(_) => return,
        }
    }
}

/// Why a stream stopped yielding frames.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum StreamEnd {
    /// The stream finished on a frame boundary.
    Finished,
    /// The stream finished inside a frame.
    Truncated,
    /// A length prefix exceeded the limit.
    Oversize { length_bytes: u64 },
    /// The connection's streams together buffered more than one frame's worth.
    BufferLimit,
    /// The stream or connection failed.
    Failed(String),
    /// Nobody takes frames any more.
    Closed,
    /// A replica's stream did not open with our protocol settings.
    SettingsDiffer,
    /// A client's partial frame did not complete within its deadline
    /// ([`client_frame_deadline`]).
    TooSlow { length_bytes: usize },
    /// The stream was told to give the room its partial frame held to a stream of a network
    /// holding less than its fair share of the partial-frame budget.
    RoomGiven,
}

async fn read_stream(
    shared: Arc<Shared>,
    conn: Connection,
    mut stream: RecvStream,
    peer: Peer,
    client: Option<ClientReader>,
    buffered: Arc<ByteBudget>,
    closed_over_buffer: Arc<AtomicBool>,
) {
    let mut shutdown = shared.shutdown_rx();
    let end = tokio::select! {
        biased;
        _ = shutdown_signaled(&mut shutdown) => StreamEnd::Closed,
        end = read_frames(&shared, &conn, &mut stream, peer, client, &buffered) => end,
    };
    match end {
        StreamEnd::Finished | StreamEnd::Closed => {}
        StreamEnd::Truncated => {
            bump(&shared.counters.frames_truncated, 1);
            tracing::debug!(me = %shared.me, ?peer, "stream ended inside a frame");
        }
        StreamEnd::Oversize { length_bytes } => {
            bump(&shared.counters.frames_rejected_oversize, 1);
            tracing::warn!(me = %shared.me, ?peer, length_bytes,
                max_frame_bytes = shared.frame_limit(peer),
                "rejected an oversize frame; closing the connection");
            conn.close(CLOSE_FRAME_TOO_LARGE, b"frame exceeds max_frame_bytes");
        }
        StreamEnd::BufferLimit => {
            if closed_over_buffer.swap(true, Ordering::AcqRel) {
                return;
            }
            bump(&shared.counters.connections_closed_buffer_limit, 1);
            tracing::warn!(me = %shared.me, ?peer, max_frame_bytes = shared.frame_limit(peer),
                "a connection's streams buffered more than one frame; closing it");
            conn.close(CLOSE_BUFFER_LIMIT, b"too many partial frames");
        }
        StreamEnd::SettingsDiffer => {
            conn.close(CLOSE_SETTINGS_DIFFER, b"protocol settings differ");
        }
        StreamEnd::TooSlow { length_bytes } => {
            let count = shared
                .counters
                .connections_closed_slow_frame
                .fetch_add(1, Ordering::Relaxed);
            let deadline = client_frame_deadline(shared.client_frame_grace, length_bytes);
            if count == 0 {
                tracing::warn!(me = %shared.me, ?peer, length_bytes, ?deadline,
                    "a client frame did not arrive within its deadline; closing the connection");
            } else {
                tracing::debug!(me = %shared.me, ?peer, length_bytes, ?deadline,
                    "a client frame did not arrive within its deadline; closing the connection");
            }
            conn.close(CLOSE_FRAME_TOO_SLOW, b"frame too slow");
        }
        StreamEnd::RoomGiven => {
            let count = shared
                .counters
                .connections_closed_room_given
                .fetch_add(1, Ordering::Relaxed);
            if count == 0 {
                tracing::warn!(me = %shared.me, ?peer,
                    "the partial-frame budget is spent: the network holding the most gives a partial frame's room to a network below its fair share; closing that frame's connection");
            } else {
                tracing::debug!(me = %shared.me, ?peer,
                    "a partial client frame gives its room to a network below its fair share");
            }
            conn.close(
                CLOSE_ROOM_GIVEN,
                b"partial frame room given to another network",
            );
        }
        StreamEnd::Failed(reason) => {
            tracing::debug!(me = %shared.me, ?peer, %reason, "stream failed");
            let _ = stream.stop(CLOSE_STREAM_REFUSED);
        }
    }
}

/// Reads frames from one stream and hands them to `recv`'s queue.
///
/// It reads whatever the stream has (up to [`READ_CHUNK_BYTES`] at a time) and cuts every
/// complete frame out of that, so a burst of small frames costs one read, not two per frame. What
/// it holds is at most one incomplete frame plus one chunk: memory follows the bytes that actually
/// arrived, never a length prefix, and an oversize prefix is refused before its body is read.
async fn read_frames(
    shared: &Shared,
    conn: &Connection,
    stream: &mut RecvStream,
    peer: Peer,
    client: Option<ClientReader>,
    buffered: &ByteBudget,
) -> StreamEnd {
    let max_frame_bytes = shared.frame_limit(peer);
    // A replica's stream opens with its protocol settings, when we check them.
    let mut settings_from = match peer {
        Peer::Replica(id) if shared.settings.is_some() => Some(id),
        _ => None,
    };
    let mut buffer: Vec<u8> = Vec::new();
    let mut held = Held {
        budget: buffered,
        bytes: 0,
    };
    // A client's partial frames are also held against the budget of all clients together,
    // and its source network's share of it.
    let mut partial = match (peer, &client) {
        (Peer::Client(_), Some(client)) => Some(shared.client_partial_frames.holder(client.source)),
        _ => None,
    };
    // A client announces its session (routing tag, then session) on any of its streams, at
    // any frame (clients only); the last announcement holds.
    let session_from = client.as_ref().map(|client| client.session.clone());
    // Resolves when the stream is told to give its room to another network's stream.
    let room_given = partial.as_ref().map(|partial| partial.room_given());
    // When the partial frame at the head of the buffer began to arrive (clients only).
    let mut frame_began: Option<Instant> = None;
    // The complete frames cut from the buffer in one pass, as (body offset, length).
    let mut cut: Vec<(usize, usize)> = Vec::new();
    loop {
        let mut start = 0;
        // Set when a prefix is refused: the frames cut before it are still handed off.
        let mut end = None;
        cut.clear();
        while buffer.len() - start >= LENGTH_PREFIX_BYTES {
            let prefix: [u8; LENGTH_PREFIX_BYTES] = buffer[start..start + LENGTH_PREFIX_BYTES]
                .try_into()
                .expect("prefix length");
            let length_bytes = u32::from_be_bytes(prefix);
            let length = match usize::try_from(length_bytes) {
                Ok(length) if length <= max_frame_bytes => length,
                _ => {
                    end = Some(StreamEnd::Oversize {
                        length_bytes: u64::from(length_bytes),
                    });
                    break;
                }
            };
            let body = start + LENGTH_PREFIX_BYTES;
            if buffer.len() - body < length {
                break;
            }
            if let Some(from) = settings_from.take() {
                if !shared.check_settings(from, &buffer[body..body + length]) {
                    return StreamEnd::SettingsDiffer;
                }
                // Only a peer we accept makes our link to it dial: two replicas that refuse
                // each other would otherwise wake each other's links in a loop.
                note_replica_connected_in(shared, from);
                start = body + length;
                continue;
            }
            if let Some(session) = &session_from {
                if let Some(announced) = announced_session(&buffer[body..body + length]) {
                    session.announce(announced);
                    start = body + length;
                    continue;
                }
            }
            cut.push((body, length));
            start = body + length;
        }
        // Counted before the hand-off so that whoever receives a frame already sees it
        // counted.
        let cut_bytes: u64 = cut.iter().map(|&(_, length)| length as u64).sum();
        bump(&shared.counters.frames_received, cut.len() as u64);
        bump(&shared.counters.bytes_received, cut_bytes);
        shared
            .counters
            .peers
            .received(peer, cut.len() as u64, cut_bytes);
        let lane = shared.lane(peer);
        // Several frames from one read take their room in the receive queue in one step when
        // it is there (the common case under load); otherwise frame by frame, waiting.
        let reserved_together =
            cut.len() > 1 && lane.try_reserve_many(peer, cut.iter().map(|&(_, length)| length));
        // And their slots in the lane's channel, in one step when they are free now.
        let slots = match reserved_together {
            true => lane.tx.try_reserve_many(cut.len()).ok(),
            false => None,
        };
        if let Some(slots) = slots {
            for (slot, &(body, length)) in slots.zip(cut.iter()) {
                slot.send(InboundFrame {
                    from: peer,
                    frame: buffer[body..body + length].to_vec(),
                });
            }
            cut.clear();
        }
        for (i, &(body, length)) in cut.iter().enumerate() {
            if !reserved_together
                && !lane
                    .reserve(peer, length, &shared.counters.frames_held_back_peer_share)
                    .await
            {
                return StreamEnd::Closed;
            }
            let frame = buffer[body..body + length].to_vec();
            if lane
                .tx
                .send(InboundFrame { from: peer, frame })
                .await
                .is_err()
            {
                let unsent = if reserved_together {
                    &cut[i..]
                } else {
                    &cut[i..=i]
                };
                for &(_, length) in unsent {
                    lane.release(peer, length);
                }
                return StreamEnd::Closed;
            }
        }
        if let Some(end) = end {
            return end;
        }
        buffer.drain(..start);
        held.set(buffer.len());
        let mut read_bytes = READ_CHUNK_BYTES;
        let mut deadline = None;
        if let Some(partial) = &mut partial {
            partial.buffered(buffer.len());
            // A client's partial frame holds room for the bytes of it that arrived (the last
            // chunk, at most READ_CHUNK_BYTES, is read before it is held), and reads stop at
            // the frame's end, so the buffer never holds more than one partial frame. It must
            // be complete by its deadline, counted from when its first bytes arrived (in the
            // read that completed the frame before it, if any).
            if start > 0 {
                partial.frame_done();
            }
            if buffer.is_empty() {
                frame_began = None;
            } else if start > 0 || frame_began.is_none() {
                frame_began = Some(Instant::now());
            }
            let length = match buffer.get(..LENGTH_PREFIX_BYTES) {
                None => 0,
                Some(prefix) => {
                    let prefix: [u8; LENGTH_PREFIX_BYTES] = prefix.try_into().expect("prefix");
                    // Checked against the frame limit by the loop above.
                    u32::from_be_bytes(prefix) as usize
                }
            };
            deadline = frame_began
                .map(|began| began + client_frame_deadline(shared.client_frame_grace, length));
            // A stream that waits does not read, so it would not see its connection end; it
            // stops waiting then, or every connection a client ever closed would leave a task
            // and a chunk behind for as long as the budget stays spent.
            let held = tokio::select! {
                held = partial.hold(buffer.len(), &shared.counters.frames_held_back_partial_budget, peer) => held,
                error = conn.closed() => return StreamEnd::Failed(error.to_string()),
                _ = until(deadline) => return StreamEnd::TooSlow { length_bytes: length },
                _ = room_asked(&room_given) => return StreamEnd::RoomGiven,
            };
            if !held {
                return StreamEnd::Closed;
            }
            read_bytes = match buffer.len() {
                0 => READ_CHUNK_BYTES,
                short if short < LENGTH_PREFIX_BYTES => LENGTH_PREFIX_BYTES - short,
                _ => (LENGTH_PREFIX_BYTES + length)
                    .saturating_sub(buffer.len())
                    .clamp(1, READ_CHUNK_BYTES),
            };
        }
        let read = tokio::select! {
            read = stream.read_chunk(read_bytes, true) => read,
            _ = room_asked(&room_given) => return StreamEnd::RoomGiven,
            _ = until(deadline) => {
                let length_bytes = buffer
                    .get(..LENGTH_PREFIX_BYTES)
                    .map_or(0, |p| u32::from_be_bytes(p.try_into().expect("prefix")) as usize);
                return StreamEnd::TooSlow { length_bytes };
            }
        };
        match read {
            Ok(Some(chunk)) => {
                // Any bytes are activity, not only whole frames: a client uploading one large
                // frame over a slow link for longer than CLIENT_KEY_MIN_IDLE_BEFORE_EVICTION
                // must not be evicted as idle in the middle of it.
                if let Some(client) = &client {
                    let now_ms =
                        u64::try_from(shared.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
                    client.last_frame_ms.fetch_max(now_ms, Ordering::Relaxed);
                }
                buffer.extend_from_slice(&chunk.bytes);
                if let Some(partial) = &mut partial {
                    partial.buffered(buffer.len());
                }
                if !held.set(buffer.len()) {
                    return StreamEnd::BufferLimit;
                }
            }
            Ok(None) if buffer.is_empty() => return StreamEnd::Finished,
            Ok(None) => return StreamEnd::Truncated,
            Err(e) => return StreamEnd::Failed(e.to_string()),
        }
        if buffer.capacity() > RETAINED_BUFFER_BYTES && buffer.len() < READ_CHUNK_BYTES {
            buffer.shrink_to(READ_CHUNK_BYTES);
        }
    }
}

/// Resolves at `deadline`, or never without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The bytes one stream's buffer holds against its connection's [`ByteBudget`]; given back
/// when the stream ends.
struct Held<'a> {
    budget: &'a ByteBudget,
    bytes: usize,
}

impl Held<'_> {
    /// Holds `bytes` in all; false (holding what it held before) if the budget refuses.
    fn set(&mut self, bytes: usize) -> bool {
        if bytes > self.bytes {
            if !self.budget.try_hold(bytes - self.bytes) {
                return false;
            }
        } else {
            self.budget.release(self.bytes - bytes);
        }
        self.bytes = bytes;
        true
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}
