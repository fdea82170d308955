//! Stateless checks of inbound messages: sender, sizes and signatures.
//!
//! This runs before the engine sees a message, and off the engine's thread in the driver: it
//! needs only the configuration, never engine state, so many messages can be verified in
//! parallel. Its output type, [`Verified`], can only be built here, so the engine only ever sees
//! messages that passed. Stateful checks (regency, leader, cid window) stay in the engine.
//!
//! # Verifying many messages at once
//! [`InboundVerifier::verify_many`] checks a run of messages with one batch verification of all
//! their signatures, which costs about half as much per signature as verifying one at a time. If
//! the batch fails, it falls back to checking each message on its own, so that a bad signature
//! only ever rejects the message that carries it; a peer that sends bad signatures costs at most
//! the message-by-message price (plus the one failed batch), never more.
//!
//! # Requests are authenticated by their channel (BFT, docs/design.md §5)
//! A client request that arrives on its own client's connection was sent by that client: the
//! transport pinned the connection's key by TLS ([`Peer::Client`] is that key), the verifier
//! refuses a request naming another key ([`Rejection::Impersonation`]), and QUIC authenticates
//! every packet. With [`RequestAuth::Channel`] such a request skips its signature check (the
//! signature must still be present: it is what lets the request be relayed) and reaches the
//! engine marked [`Verified::request_signatures_checked`] false. The engine verifies it before
//! it relays it in any replica message (a PROPOSE, a Forward, a STOP).
//!
//! # Each request is authenticated once
//! A request can reach a replica twice: directly from its client and again inside the leader's
//! PROPOSE (or a STOP, or a Forward). A [`VerifiedRequests`] cache remembers, by the blake3
//! hash of the exact signed bytes and the signature, client requests authenticated here: by
//! their signature, or by their channel. A byte-identical request met again inside a replica's
//! message skips only the signature check; every other check still runs on it.
//!
//! # Certified batches carry no request check
//! The batch of a decision (Q signed ACCEPTs) or of a BFT prepared proof (Q signed WRITEs) was
//! accepted by at least one correct replica, which authenticated each of its requests (by
//! signature or channel) before voting. The certificate vouches for the requests, so their
//! signatures are not checked again: a follower that accepted a Byzantine leader's PROPOSE on
//! the strength of its client's direct copies must not leave the replicas that did not get
//! those copies unable to learn the decision or apply a SYNC (docs/design.md §5).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use smr_crypto::{
    BatchChecked, BatchVerifyError, Digest, PublicKey, Signature, SignedItem, Verifier,
};

use crate::config::{ClientPolicy, Limits};
use crate::message::{
    Batch, Cid, Decision, DecisionProof, Message, ReplicaSigned, Request, RequestBody, RequestKind,
    Signed, StopData, Sync, Vote, VoteKind,
};
use crate::network::Peer;
use crate::rejection::Rejection;
use smr_modes::Quorums;

/// Most checkpoints a replica reports in a `StateInfo` (its stable one and a few of its own).
pub const MAX_REPORTED_CHECKPOINTS: usize = 8;

/// A message that passed [`InboundVerifier::verify_inbound`] (or [`InboundVerifier::verify_many`]).
/// Its fields are private to smr-core, so no other crate can build one and
/// [`crate::Engine::on_message`] never sees an unchecked message (docs/design.md §3.6).
#[derive(Debug, Clone)]
pub struct Verified {
    pub(crate) from: Peer,
    pub(crate) message: Message,
    /// The positions, ascending, of the message's client requests that were authenticated by
    /// their client's channel only (docs/design.md §5); every other request's signature was
    /// verified here (or by an earlier verification of the same bytes). The engine verifies
    /// such a request before relaying it. Per request, not per message: one channel-only
    /// request must not make the engine verify the others again. Usually empty (no
    /// allocation).
    pub(crate) channel_only: ChannelOnly,
}

/// Positions of client requests in a message (see [`Verified`]): index 0 for a direct
/// request, the index in the batch of a PROPOSE, in a Forward, or in a STOP's pending list.
pub(crate) type ChannelOnly = Vec<u32>;

/// Whether the request at `position` is not among the `channel_only` ones (ascending).
pub(crate) fn signature_checked(channel_only: &[u32], position: usize) -> bool {
    u32::try_from(position).is_ok_and(|p| channel_only.binary_search(&p).is_err())
}

/// How a client request that arrives on its own client's connection is authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestAuth {
    /// By its signature, like a request met inside a replica's message.
    Signature,
    /// By the connection (docs/design.md §5): its signature must be present but is not
    /// checked; the engine checks it before relaying the request, so the engine must have a
    /// request verifier ([`crate::Engine::set_request_verifier`]).
    Channel,
}

impl Verified {
    /// The authenticated peer the message came from.
    pub fn from(&self) -> Peer {
        self.from
    }
    /// The verified message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// Whether every client signature in the message was verified, by this replica or by an
    /// earlier verification of the same bytes; false when one of its requests was
    /// authenticated by its client's channel only (docs/design.md §5).
    pub fn request_signatures_checked(&self) -> bool {
        self.channel_only.is_empty()
    }

    /// Whether the signature of the message's client request at `position` was verified (see
    /// [`Verified::request_signatures_checked`]): position 0 for a direct request, the index in
    /// a PROPOSE's batch, in a Forward, or in a STOP's pending requests.
    pub fn request_signature_checked(&self, position: usize) -> bool {
        signature_checked(&self.channel_only, position)
    }
}

/// Everything verification needs; cheap to clone and share across threads.
#[derive(Clone)]
pub struct InboundVerifier {
    /// The mode (whether signatures are required) and the thresholds certificates must reach.
    pub quorums: Quorums,
    /// Public key of replica i at index i: what replica signatures are checked against.
    pub replica_keys: Arc<Vec<PublicKey>>,
    /// Which client keys may have requests verified.
    pub clients: Arc<ClientPolicy>,
    /// Size and count limits checked on every message.
    pub limits: Limits,
    /// The signature scheme: ed25519 in production, a deterministic stand-in in the
    /// simulator.
    pub signatures: Arc<dyn Verifier>,
}

/// Where a client request was met, which decides how it is authenticated.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RequestAt {
    /// On its client's own connection.
    Direct,
    /// Inside a replica's PROPOSE.
    Relayed,
    /// Inside a replica's Forward or STOP: a copy this replica authenticated only by its
    /// client's channel is not enough; the signature is checked here, and a bad one is the
    /// relaying replica's (a correct replica verifies before it forwards or STOPs). Otherwise a
    /// Byzantine replica could make the leader's engine re-verify, again and again, a bad
    /// signature its client once sent directly, and the blame would fall on the client
    /// (review of issue 13, finding 2).
    Forwarded,
    /// Inside a batch with Q signed votes: a decision or a BFT prepared proof.
    Certified,
}

/// Identifies a client request's exact body and signature in [`VerifiedRequests`] (a blake3
/// hash of both).
pub type RequestKey = [u8; 32];

/// A blake3 hash of an unambiguous encoding of the body (every field fixed-size but the op,
/// which is length-prefixed) and the signature. The signed bytes are a function of the body, so
/// equal keys mean the same (key, message, signature) triple. Computed without serializing the
/// body, so a cache hit costs one pass of blake3 over the op. Every field of the body is
/// hashed, the destructuring makes a new field a compile error here: the session was left out
/// once, and a Byzantine leader could relabel a client's signed request into another session
/// of its key and have followers take it for the copy they had verified (review of issue 13).
fn request_key(body: &RequestBody, signature: &Signature) -> RequestKey {
    let RequestBody {
        client,
        session,
        seq,
        kind,
        op,
    } = body;
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"smr/verified-request/v2");
    hasher.update(client.as_bytes());
    hasher.update(&session.to_le_bytes());
    hasher.update(&seq.to_le_bytes());
    hasher.update(&[match kind {
        RequestKind::Ordered => 0,
        RequestKind::Unordered => 1,
    }]);
    hasher.update(&(op.len() as u64).to_le_bytes());
    hasher.update(op);
    hasher.update(signature.as_bytes());
    *hasher.finalize().as_bytes()
}

/// Client requests authenticated here, by signature or by channel: see the module docs. Shared
/// by the verify workers.
///
/// # Each client gets a bounded share
/// Every entry belongs to the client that signed the request, and when the cache is full it
/// evicts the oldest entry among those of the clients holding the most entries. A client that
/// holds more entries than another can therefore only evict its own: a Byzantine client
/// sending junk or stale requests on its own connection (cached before the engine's pool
/// bounds have a say) no longer flushes the correct clients' direct copies, which made every
/// follower verify their requests again inside each PROPOSE (review 24 of issue 13). Shares
/// converge to equal: of k clients that keep inserting, each keeps about `capacity / k`
/// entries. Under [`ClientPolicy::Any`] keys are free, so a
/// client with many keys still gets one share per key; when there are more clients than
/// room, the oldest entries go first.
///
/// # Entries age out
/// Shares alone never look at age: keys that inserted once and went quiet held their entries
/// for good while a busy client held more, so a Byzantine client that sent one request from
/// each of `capacity` keys once (under [`ClientPolicy::Any`]) left every correct client its
/// latest entry only, and every follower verified all but the last of a window of requests
/// again inside the PROPOSE (review R1 of session 25). An entry that has outlived
/// [`VerifiedRequests::MAX_AGE_IN_CAPACITIES`] times the capacity in insertions is therefore
/// evicted first, whoever holds it: holding a share now takes inserting at the rate of the
/// traffic it displaces. A single key's flood still evicts only its own entries until it has
/// inserted that many times the capacity after a correct client's entry, which takes far
/// longer than a direct copy waits for its PROPOSE.
///
/// # Hot-path cost
/// Per new entry, under the lock: one lookup of its key and one of its client's, both in
/// randomly seeded aHash maps (clients choose the keys), a push onto the age queue, and two
/// updates of the ordered set of shares, which holds one small entry per client (not per
/// request). Entries and clients live in slots that are reused, threaded into per-client
/// lists, so inserting allocates nothing once the cache has filled (the age queue and the
/// set's nodes grow amortized to their bounds).
pub struct VerifiedRequests {
    inner: Mutex<VerifiedInner>,
    capacity: usize,
    /// Client signature checks skipped because the request was already authenticated here.
    hits: AtomicU64,
    /// Client signatures verified by the runs that used this cache.
    verified: AtomicU64,
}

/// The end of a list of slots.
const NO_SLOT: u32 = u32::MAX;

/// One remembered request, in [`VerifiedInner::entries`].
struct Entry {
    key: RequestKey,
    /// Its insertion number; [`FREE`] while the slot is free.
    number: u64,
    /// Its client's slot in [`VerifiedInner::clients`].
    client: u32,
    /// The client's next younger entry, or [`NO_SLOT`].
    younger: u32,
    /// Whether the request's signature was verified (true) or only its channel (false).
    signature_verified: bool,
}

/// The insertion number of a free entry slot: no live entry has it.
const FREE: u64 = u64::MAX;

/// One client's entries, in [`VerifiedInner::clients`]: a list through [`Entry::younger`].
struct ClientEntries {
    key: PublicKey,
    oldest: u32,
    youngest: u32,
    count: u32,
}

struct VerifiedInner {
    /// Each entry's slot in `entries`, by key.
    index: HashMap<RequestKey, u32, ahash::RandomState>,
    entries: Vec<Entry>,
    free_entries: Vec<u32>,
    /// Each client's slot in `clients`, by key; a client is there while it holds an entry.
    client_index: HashMap<PublicKey, u32, ahash::RandomState>,
    clients: Vec<ClientEntries>,
    free_clients: Vec<u32>,
    /// The clients by how many entries they hold, then by how old their oldest entry is: the
    /// last is the client that holds the most and, among those, the oldest entry.
    shares: BTreeSet<Share>,
    /// (insertion number, entry slot) of every entry, oldest first, for evicting entries that
    /// outlived [`VerifiedRequests::max_age`] insertions. A pair whose entry was evicted by
    /// its share is dropped when it reaches the front: the front is then the globally oldest
    /// entry, so the queue holds at most about `max_age` pairs.
    by_age: VecDeque<(u64, u32)>,
    /// The insertion number of the next new entry.
    next: u64,
}

/// A client's place in [`VerifiedInner::shares`]: its entry count, its oldest entry's
/// insertion number (reversed, so that the oldest sorts last), its slot. Numbers are unique,
/// so the slot never decides the order.
type Share = (u32, std::cmp::Reverse<u64>, u32);

impl VerifiedInner {
    fn new(capacity: usize) -> VerifiedInner {
        // Room for a full cache at once, within reason (the driver's is at most 8192).
        let room = capacity.saturating_add(1).min(1 << 16);
        VerifiedInner {
            index: HashMap::with_capacity_and_hasher(room, ahash::RandomState::new()),
            entries: Vec::with_capacity(room),
            free_entries: Vec::new(),
            client_index: HashMap::with_hasher(ahash::RandomState::new()),
            clients: Vec::new(),
            free_clients: Vec::new(),
            shares: BTreeSet::new(),
            by_age: VecDeque::with_capacity(room),
            next: 0,
        }
    }

    /// The place in `shares` of the client in `slot` (which holds an entry).
    fn share(&self, slot: u32) -> Share {
        let client = &self.clients[slot as usize];
        let oldest = self.entries[client.oldest as usize].number;
        (client.count, std::cmp::Reverse(oldest), slot)
    }

    /// Adds `key` to `client`'s entries (it is not held yet).
    fn add(&mut self, key: RequestKey, client: PublicKey, signature_verified: bool) {
        let number = self.next;
        self.next += 1;
        let slot = match self.client_index.get(&client) {
            Some(&slot) => {
                let share = self.share(slot);
                self.shares.remove(&share);
                slot
            }
            None => {
                let entries = ClientEntries {
                    key: client,
                    oldest: NO_SLOT,
                    youngest: NO_SLOT,
                    count: 0,
                };
                let slot = match self.free_clients.pop() {
                    Some(slot) => {
                        self.clients[slot as usize] = entries;
                        slot
                    }
                    None => {
                        self.clients.push(entries);
                        slot_number(self.clients.len() - 1)
                    }
                };
                self.client_index.insert(client, slot);
                slot
            }
        };
        let entry = Entry {
            key,
            number,
            client: slot,
            younger: NO_SLOT,
            signature_verified,
        };
        let at = match self.free_entries.pop() {
            Some(at) => {
                self.entries[at as usize] = entry;
                at
            }
            None => {
                self.entries.push(entry);
                slot_number(self.entries.len() - 1)
            }
        };
        self.index.insert(key, at);
        self.by_age.push_back((number, at));
        let holder = &mut self.clients[slot as usize];
        match holder.youngest {
            NO_SLOT => holder.oldest = at,
            youngest => self.entries[youngest as usize].younger = at,
        }
        holder.youngest = at;
        holder.count += 1;
        let share = self.share(slot);
        self.shares.insert(share);
    }

    /// Evicts the globally oldest entry if it has outlived `max_age` insertions, else the
    /// oldest entry among those of the clients holding the most entries.
    fn evict_one(&mut self, max_age: u64) {
        // Pairs of entries evicted by their share go first: the front is then live.
        while let Some(&(number, at)) = self.by_age.front() {
            if self.entries[at as usize].number == number {
                break;
            }
            self.by_age.pop_front();
        }
        let aged = self
            .by_age
            .front()
            .filter(|(number, _)| self.next - *number > max_age)
            .map(|&(_, at)| self.entries[at as usize].client);
        let slot = match aged {
            // The globally oldest entry is its client's oldest (each list is in insertion
            // order).
            Some(slot) => {
                let share = self.share(slot);
                self.shares.remove(&share);
                slot
            }
            None => match self.shares.pop_last() {
                Some((_, _, slot)) => slot,
                None => return,
            },
        };
        let holder = &mut self.clients[slot as usize];
        let at = holder.oldest;
        let entry = &mut self.entries[at as usize];
        holder.oldest = entry.younger;
        holder.count -= 1;
        entry.number = FREE;
        let key = entry.key;
        self.index.remove(&key);
        self.free_entries.push(at);
        if holder.count == 0 {
            let client = holder.key;
            self.client_index.remove(&client);
            self.free_clients.push(slot);
        } else {
            let share = self.share(slot);
            self.shares.insert(share);
        }
    }
}

/// A slot's number: slots are at most `capacity + 1` (entries) or one per entry (clients),
/// and a cache of 2^32 entries is not one this fits.
fn slot_number(index: usize) -> u32 {
    let slot = u32::try_from(index).expect("fewer than 2^32 slots");
    assert!(slot != NO_SLOT, "fewer than 2^32 - 1 slots");
    slot
}

impl VerifiedRequests {
    /// A cache of at most `capacity` requests (at least 1).
    pub fn new(capacity: usize) -> VerifiedRequests {
        let capacity = capacity.max(1);
        VerifiedRequests {
            inner: Mutex::new(VerifiedInner::new(capacity)),
            capacity,
            hits: AtomicU64::new(0),
            verified: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VerifiedInner> {
        // The data is a set of hashes; a panic elsewhere cannot leave it inconsistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the request is known, and then whether its signature was verified (true) or
    /// only its channel (false). Counts nothing: the verifier counts the hits it uses.
    pub fn lookup(&self, key: &RequestKey) -> Option<bool> {
        let inner = self.lock();
        let at = *inner.index.get(key)?;
        Some(inner.entries[at as usize].signature_verified)
    }

    /// Remembers requests, each with the client that signed it; `signature_verified` says how
    /// they were authenticated (a verified signature upgrades a channel-only entry, never the
    /// reverse).
    fn insert_all(
        &self,
        keys: impl IntoIterator<Item = (RequestKey, PublicKey)>,
        signature_verified: bool,
    ) {
        let mut inner = self.lock();
        for (key, client) in keys {
            self.insert_locked(&mut inner, key, client, signature_verified);
        }
    }

    /// Remembers one request, signed by `client`, as authenticated by its signature
    /// (`signature_verified`) or by its channel; a verified signature upgrades a channel-only
    /// entry, never the reverse. Returns whether its signature is known to verify (now, or by
    /// an earlier entry). The verifier inserts what it authenticated; a caller that inserts a
    /// key as verified vouches for it.
    pub fn insert(&self, key: RequestKey, client: PublicKey, signature_verified: bool) -> bool {
        let mut inner = self.lock();
        self.insert_locked(&mut inner, key, client, signature_verified)
    }

    fn insert_locked(
        &self,
        inner: &mut VerifiedInner,
        key: RequestKey,
        client: PublicKey,
        signature_verified: bool,
    ) -> bool {
        if let Some(&at) = inner.index.get(&key) {
            let known = &mut inner.entries[at as usize].signature_verified;
            *known |= signature_verified;
            return *known;
        }
        inner.add(key, client, signature_verified);
        if inner.index.len() > self.capacity {
            inner.evict_one(self.max_age());
        }
        signature_verified
    }

    /// Insertions an entry outlives before it goes first, whatever its client's share:
    /// [`VerifiedRequests::MAX_AGE_IN_CAPACITIES`] times the capacity.
    fn max_age(&self) -> u64 {
        (self.capacity as u64).saturating_mul(Self::MAX_AGE_IN_CAPACITIES)
    }

    /// An entry that has outlived this many times the cache's capacity in insertions is
    /// evicted first, whoever holds it (see the type's docs): far longer than a direct copy
    /// waits for its PROPOSE (a few milliseconds), far shorter than for ever.
    pub const MAX_AGE_IN_CAPACITIES: u64 = 4;

    /// Requests held.
    pub fn len(&self) -> usize {
        self.lock().index.len()
    }

    /// Whether it holds no request.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Client signature checks skipped so far because the request was already authenticated
    /// here: a relayed request whose signature was verified, or (inside a PROPOSE) whose
    /// direct copy came on its client's channel. A copy known by channel only and met in a
    /// Forward or STOP is verified, so it is not a hit.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Client request signatures verified so far by the runs of
    /// [`InboundVerifier::verify_run`] that used this cache, each submission of a signature to
    /// a check counted: a batch's, the verifier's own check again of the items up to the first
    /// bad one when the batch fails ([`smr_crypto::BatchChecked::rechecked`]), and the run's
    /// retry message by message (so a failed run checks a request's signature up to three
    /// times). Replica signatures (votes, PROPOSEs, STOPs) are not counted.
    pub fn signatures_verified(&self) -> u64 {
        self.verified.load(Ordering::Relaxed)
    }

    fn count_hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts the client request signatures `checked` submitted, of a batch whose items are
    /// client requests' signatures where `is_request` says so: each of them once, and again
    /// each of those among the items the verifier rechecked (the first ones).
    fn count_verified(&self, is_request: &[bool], checked: &BatchChecked) {
        let requests = |items: &[bool]| items.iter().filter(|&&r| r).count();
        let rechecked = &is_request[..checked.rechecked.min(is_request.len())];
        let signatures = requests(is_request) + requests(rechecked);
        if signatures > 0 {
            self.verified
                .fetch_add(signatures as u64, Ordering::Relaxed);
        }
    }
}

/// A message of a run with its stateless verdict so far and its signatures to check.
/// Signatures collected from one message, checked in a batch at the end.
struct Pending<'c> {
    messages: Vec<Vec<u8>>,
    keys: Vec<PublicKey>,
    signatures: Vec<smr_crypto::Signature>,
    /// For each item, the request key if it is a client request's signature (with a cache);
    /// the item's key is then its client's.
    request_keys: Vec<Option<RequestKey>>,
    cache: Option<&'c VerifiedRequests>,
    auth: RequestAuth,
    /// The positions of the message's requests authenticated by channel only (directly, or
    /// by a channel-only cache entry), ascending.
    channel_only: ChannelOnly,
    /// A request received directly and authenticated by channel, with its client, for the
    /// cache.
    channel_key: Option<(RequestKey, PublicKey)>,
}

impl<'c> Pending<'c> {
    fn new(cache: Option<&'c VerifiedRequests>, auth: RequestAuth) -> Pending<'c> {
        Pending {
            messages: Vec::new(),
            keys: Vec::new(),
            signatures: Vec::new(),
            request_keys: Vec::new(),
            cache,
            auth,
            channel_only: ChannelOnly::new(),
            channel_key: None,
        }
    }

    fn push(
        &mut self,
        message: Vec<u8>,
        key: PublicKey,
        signature: Signature,
        request: Option<RequestKey>,
    ) {
        self.messages.push(message);
        self.keys.push(key);
        self.signatures.push(signature);
        self.request_keys.push(request);
    }

    fn item(&self, i: usize) -> SignedItem<'_> {
        SignedItem {
            key: &self.keys[i],
            message: &self.messages[i],
            signature: &self.signatures[i],
        }
    }
}

impl InboundVerifier {
    fn signing(&self) -> bool {
        self.quorums.requires_signatures()
    }

    /// Runs every stateless check on one message from `from`: that this kind of peer may send
    /// it, that a replica message names its sender as signer, sizes and counts within
    /// [`Limits`], client admission, certificates, and (BFT) every signature it carries, in one
    /// batch verification. Uses no [`VerifiedRequests`] cache.
    ///
    /// # Errors
    /// The first check that fails, as a [`Rejection`].
    pub fn verify_inbound(&self, from: Peer, message: Message) -> Result<Verified, Rejection> {
        let mut pending = Pending::new(None, RequestAuth::Signature);
        self.collect(&from, &message, &mut pending)?;
        self.finish(&pending)?;
        Ok(Verified {
            from,
            message,
            channel_only: ChannelOnly::new(),
        })
    }

    /// Verifies a run of messages, with one batch verification of all their signatures when they
    /// are all good (see the module docs); returns one verdict per message, in order. Requests
    /// found in `cache` skip their signature check, and requests verified here are added to it.
    /// Every request's signature is checked unless the cache knows it
    /// ([`RequestAuth::Signature`]); [`InboundVerifier::verify_run`] may authenticate direct
    /// requests by channel.
    pub fn verify_many(
        &self,
        inputs: Vec<(Peer, Message)>,
        cache: Option<&VerifiedRequests>,
    ) -> Vec<Result<Verified, Rejection>> {
        self.verify_run(inputs, cache, RequestAuth::Signature)
    }

    /// [`InboundVerifier::verify_many`], with client requests that arrive on their client's
    /// own connection authenticated as `auth` says (module docs). Such requests are added to
    /// `cache` as authenticated by channel, so a byte-identical copy in a PROPOSE skips its
    /// signature check.
    pub fn verify_run(
        &self,
        inputs: Vec<(Peer, Message)>,
        cache: Option<&VerifiedRequests>,
        auth: RequestAuth,
    ) -> Vec<Result<Verified, Rejection>> {
        // Direct client requests first, so that a PROPOSE in the same run finds their copies
        // in the cache whatever the order of arrival (the driver puts replica frames first).
        // The messages stay where they are until they leave as `Verified` (a message is
        // large: each move is a copy).
        let direct = |(from, message): &(Peer, Message)| {
            matches!((from, message), (Peer::Client(_), Message::Request(_)))
        };
        let mut checked: Vec<Option<Result<Pending<'_>, Rejection>>> =
            (0..inputs.len()).map(|_| None).collect();
        for first in [true, false] {
            for (input, slot) in inputs.iter().zip(checked.iter_mut()) {
                if direct(input) == first {
                    let mut pending = Pending::new(cache, auth);
                    let result = self.collect(&input.0, &input.1, &mut pending);
                    *slot = Some(result.map(|()| pending));
                }
            }
        }
        let collected: Vec<Result<Pending<'_>, Rejection>> = checked
            .into_iter()
            .map(|c| c.expect("every index collected"))
            .collect();
        // Everything in one batch; a request that appears twice (a client's own copy and the
        // leader's PROPOSE, say) is checked once.
        let mut seen: HashMap<RequestKey, PublicKey> = HashMap::new();
        let mut items: Vec<SignedItem<'_>> = Vec::new();
        // With a cache, exactly the client requests' signatures carry a request key.
        let mut is_request: Vec<bool> = Vec::new();
        for pending in &collected {
            let Ok(pending) = pending else { continue };
            for i in 0..pending.signatures.len() {
                if let Some(key) = pending.request_keys[i] {
                    if seen.insert(key, pending.keys[i]).is_some() {
                        continue;
                    }
                }
                items.push(pending.item(i));
                is_request.push(pending.request_keys[i].is_some());
            }
        }
        let all_good = items.is_empty() || {
            let checked = self.signatures.check_batch(&items);
            if let Some(cache) = cache {
                cache.count_verified(&is_request, &checked);
            }
            checked.verdict.is_ok()
        };
        drop(items);
        if all_good {
            if let Some(cache) = cache {
                cache.insert_all(seen, true);
            }
            return inputs
                .into_iter()
                .zip(collected)
                .map(|((from, message), pending)| {
                    pending.map(|p| Verified {
                        from,
                        message,
                        channel_only: p.channel_only,
                    })
                })
                .collect();
        }
        // Something is bad: find out which messages, one at a time. Requests that a message
        // earlier in the run proved good are not checked again. (Per message, not
        // `smr_crypto::verify_batch_then_each` per signature: a message's verdict is its first
        // bad signature, and the cache counts what each message's batch submits.)
        let mut good: HashSet<RequestKey> = HashSet::new();
        inputs
            .into_iter()
            .zip(collected)
            .map(|((from, message), pending)| {
                let pending = pending?;
                let mut index_of = Vec::new();
                let items: Vec<SignedItem<'_>> = (0..pending.signatures.len())
                    .filter(|i| pending.request_keys[*i].is_none_or(|k| !good.contains(&k)))
                    .map(|i| {
                        index_of.push(i);
                        pending.item(i)
                    })
                    .collect();
                let checked = self.signatures.check_batch(&items);
                if let Some(cache) = cache {
                    let is_request: Vec<bool> = index_of
                        .iter()
                        .map(|&i| pending.request_keys[i].is_some())
                        .collect();
                    cache.count_verified(&is_request, &checked);
                }
                checked
                    .verdict
                    .map_err(
                        |BatchVerifyError { index, reason }| Rejection::BadSignature {
                            index: index_of[index],
                            reason,
                        },
                    )?;
                let verified: Vec<(RequestKey, PublicKey)> = pending
                    .request_keys
                    .iter()
                    .zip(&pending.keys)
                    .filter_map(|(key, client)| key.map(|key| (key, *client)))
                    .collect();
                good.extend(verified.iter().map(|(key, _)| *key));
                if let Some(cache) = cache {
                    cache.insert_all(verified, true);
                }
                Ok(Verified {
                    from,
                    message,
                    channel_only: pending.channel_only,
                })
            })
            .collect()
    }

    /// The stateless checks of one message; its signatures are queued in `pending`.
    fn collect(
        &self,
        from: &Peer,
        message: &Message,
        pending: &mut Pending<'_>,
    ) -> Result<(), Rejection> {
        match (from, message) {
            (Peer::Client(key), Message::Request(request)) => {
                if request.body.client != *key {
                    return Err(Rejection::Impersonation);
                }
                self.check_request(request, 0, pending, RequestAt::Direct)?;
                // Known at once to later messages of the same run (a PROPOSE right behind). A
                // copy whose signature this replica already verified (in a PROPOSE, a Forward
                // or a STOP that came first) is marked checked: the engine need not verify it
                // again before relaying it.
                if let (Some(cache), Some((key, client))) =
                    (pending.cache, pending.channel_key.take())
                {
                    if cache.insert(key, client, false) {
                        pending.channel_only.clear();
                    }
                }
            }
            (Peer::Client(_), Message::StatusQuery { .. }) => {}
            (Peer::Replica(_), Message::Reply(_)) | (Peer::Client(_), _) => {
                return Err(Rejection::UnexpectedMessage(message.kind_name()));
            }
            (Peer::Replica(j), msg) => {
                self.check_replica(*j)?;
                match msg {
                    Message::Propose(p) => {
                        self.check_signed(*j, p, pending)?;
                        self.check_batch(&p.body.batch, pending, false)?;
                    }
                    Message::Write(v) | Message::Accept(v) => {
                        let expected = match msg {
                            Message::Write(_) => VoteKind::Write,
                            _ => VoteKind::Accept,
                        };
                        if v.body.kind != expected {
                            return Err(Rejection::Malformed(
                                "vote kind does not match message".into(),
                            ));
                        }
                        if expected == VoteKind::Write && !self.quorums.runs_write_phase() {
                            return Err(Rejection::UnexpectedMessage("write"));
                        }
                        self.check_signed(*j, v, pending)?;
                    }
                    Message::Forward(requests) => {
                        if requests.len() > self.limits.max_batch_requests {
                            return Err(Rejection::Oversize("forwarded requests"));
                        }
                        for (i, r) in (0u32..).zip(requests) {
                            self.check_request(r, i, pending, RequestAt::Forwarded)?;
                        }
                    }
                    Message::DecisionQuery { .. }
                    | Message::Heartbeat { .. }
                    | Message::SyncQuery
                    | Message::StateQuery { .. }
                    | Message::Abstaining { .. }
                    | Message::CheckpointAnnounce { .. }
                    | Message::StateFetch { .. } => {}
                    Message::StateInfo {
                        checkpoints,
                        executed,
                        ..
                    } => {
                        if checkpoints.len() > MAX_REPORTED_CHECKPOINTS {
                            return Err(Rejection::Oversize("reported checkpoints"));
                        }
                        if let Some(proof) = executed {
                            self.check_decision_proof(proof, pending)?;
                        }
                    }
                    Message::StateChunk {
                        cid,
                        total_len,
                        bytes,
                        decided,
                        ..
                    } => {
                        if bytes.len() > self.limits.state_chunk_bytes {
                            return Err(Rejection::Oversize("state chunk"));
                        }
                        if *total_len > self.limits.max_state_bytes {
                            return Err(Rejection::Oversize("state"));
                        }
                        if let Some(proof) = decided {
                            if proof.cid != *cid {
                                return Err(Rejection::BadCertificate(
                                    "checkpoint proof for another cid",
                                ));
                            }
                            self.check_decision_proof(proof, pending)?;
                        }
                    }
                    Message::Stop(stop) => {
                        self.check_signed(*j, stop, pending)?;
                        if stop.body.pending.len() > self.limits.max_batch_requests {
                            return Err(Rejection::Oversize("stop pending requests"));
                        }
                        for (i, r) in (0u32..).zip(&stop.body.pending) {
                            self.check_request(r, i, pending, RequestAt::Forwarded)?;
                        }
                    }
                    Message::StopData(sd) => {
                        self.check_signed(*j, sd, pending)?;
                        self.check_stopdata(sd, pending)?;
                    }
                    // A SYNC may be relayed by any replica (answering a SyncQuery); it must be
                    // signed by the leader of its regency.
                    Message::Sync(sync) => self.check_sync(sync, pending)?,
                    Message::Decisions(decisions) => {
                        if decisions.len() > self.limits.max_decisions_per_reply {
                            return Err(Rejection::Oversize("decisions"));
                        }
                        for d in decisions {
                            self.check_decision(d, pending)?;
                        }
                    }
                    Message::Request(_)
                    | Message::Reply(_)
                    | Message::StatusQuery { .. }
                    | Message::Status(_) => {
                        return Err(Rejection::UnexpectedMessage(msg.kind_name()))
                    }
                }
            }
        }
        Ok(())
    }

    fn check_replica(&self, j: u32) -> Result<(), Rejection> {
        if (j as usize) < self.quorums.n() {
            Ok(())
        } else {
            Err(Rejection::UnknownSender)
        }
    }

    /// One client request, at `position` in its message (see [`Verified`]).
    fn check_request(
        &self,
        request: &Request,
        position: u32,
        pending: &mut Pending<'_>,
        at: RequestAt,
    ) -> Result<(), Rejection> {
        let direct = at == RequestAt::Direct;
        if !self.clients.admits(&request.body.client) {
            return Err(Rejection::ClientNotAdmitted);
        }
        if request.body.op.len() > self.limits.max_op_bytes {
            return Err(Rejection::Oversize("op"));
        }
        if let Some(why) = request.body.shape_error() {
            return Err(Rejection::Malformed(why.into()));
        }
        if !direct && request.body.kind != RequestKind::Ordered {
            return Err(Rejection::Malformed(
                "unordered request inside a batch".into(),
            ));
        }
        if self.signing() {
            let signature = request.signature.ok_or(Rejection::MissingSignature)?;
            if at == RequestAt::Certified {
                return Ok(());
            }
            if direct && pending.auth == RequestAuth::Channel {
                pending.channel_only.push(position);
                if pending.cache.is_some() {
                    pending.channel_key =
                        Some((request_key(&request.body, &signature), request.body.client));
                }
                return Ok(());
            }
            let key = match pending.cache {
                Some(cache) => {
                    let key = request_key(&request.body, &signature);
                    match cache.lookup(&key) {
                        Some(true) => {
                            cache.count_hit();
                            return Ok(());
                        }
                        Some(false) if at == RequestAt::Relayed => {
                            cache.count_hit();
                            pending.channel_only.push(position);
                            return Ok(());
                        }
                        // Unknown, or known by its channel only and relayed in a Forward or
                        // STOP: checked here.
                        _ => Some(key),
                    }
                }
                None => None,
            };
            let bytes = Request::signing_bytes_of(&request.body);
            pending.push(bytes, request.body.client, signature, key);
        }
        Ok(())
    }

    fn check_signed<T: ReplicaSigned>(
        &self,
        sender: u32,
        signed: &Signed<T>,
        pending: &mut Pending<'_>,
    ) -> Result<(), Rejection> {
        if signed.body.signer() != sender {
            return Err(Rejection::SenderMismatch);
        }
        self.queue_replica_signature(signed, pending)
    }

    fn queue_replica_signature<T: ReplicaSigned>(
        &self,
        signed: &Signed<T>,
        pending: &mut Pending<'_>,
    ) -> Result<(), Rejection> {
        let signer = signed.body.signer();
        self.check_replica(signer)?;
        if self.signing() {
            let signature = signed.signature.ok_or(Rejection::MissingSignature)?;
            pending.push(
                signed.signing_bytes(),
                self.replica_keys[signer as usize],
                signature,
                None,
            );
        }
        Ok(())
    }

    /// A batch's structure and requests. `certified`: the batch comes with Q signed votes (a
    /// decision, a BFT prepared proof), which vouch for its requests (module docs), so their
    /// signatures are required but not checked.
    fn check_batch(
        &self,
        batch: &Batch,
        pending: &mut Pending<'_>,
        certified: bool,
    ) -> Result<(), Rejection> {
        if batch.requests.len() > self.limits.max_batch_requests {
            return Err(Rejection::Oversize("batch requests"));
        }
        // One request may exceed the byte limit on its own (it then travels alone).
        if batch.requests.len() > 1 && batch.size_bytes() > self.limits.max_batch_bytes {
            return Err(Rejection::Oversize("batch bytes"));
        }
        let mut ids = BTreeSet::new();
        for (position, request) in (0u32..).zip(&batch.requests) {
            if !ids.insert(request.id()) {
                return Err(Rejection::Malformed(
                    "request appears twice in a batch".into(),
                ));
            }
            let at = if certified {
                RequestAt::Certified
            } else {
                RequestAt::Relayed
            };
            self.check_request(request, position, pending, at)?;
        }
        Ok(())
    }

    /// A decision certificate is valid when it holds `accepts_to_decide` ACCEPTs from distinct
    /// replicas, all for this cid, one regency and the batch's digest, each correctly signed.
    pub(crate) fn check_certificate(
        &self,
        cid: Cid,
        digest: Digest,
        certificate: &[Signed<Vote>],
    ) -> Result<(), Rejection> {
        if certificate.len() < self.quorums.accepts_to_decide()
            || certificate.len() > self.quorums.n()
        {
            return Err(Rejection::BadCertificate("wrong number of accepts"));
        }
        let regency = certificate[0].body.regency;
        let mut signers = BTreeSet::new();
        for vote in certificate {
            let v = &vote.body;
            if v.kind != VoteKind::Accept
                || v.cid != cid
                || v.regency != regency
                || v.digest != digest
            {
                return Err(Rejection::BadCertificate(
                    "accept does not match the decision",
                ));
            }
            if !signers.insert(v.replica) {
                return Err(Rejection::BadCertificate("replica counted twice"));
            }
            self.check_replica(v.replica)?;
        }
        Ok(())
    }

    /// A claim that `proof.cid` was decided with `proof.digest`: Q signed ACCEPTs for exactly
    /// that (CFT: trusted, as the channel is authenticated).
    fn check_decision_proof(
        &self,
        proof: &DecisionProof,
        pending: &mut Pending<'_>,
    ) -> Result<(), Rejection> {
        if proof.cid == Cid::ZERO {
            return Err(Rejection::BadCertificate("decision proof for cid 0"));
        }
        self.check_certificate(proof.cid, proof.digest, &proof.certificate)?;
        for vote in &proof.certificate {
            self.queue_replica_signature(vote, pending)?;
        }
        Ok(())
    }

    fn check_stopdata(
        &self,
        sd: &Signed<StopData>,
        pending: &mut Pending<'_>,
    ) -> Result<(), Rejection> {
        let body = &sd.body;
        if body.prepared.len() as u64 > self.limits.max_instances_ahead {
            return Err(Rejection::Oversize("stopdata prepared proofs"));
        }
        let decided = body.last_decided.as_ref().map_or(Cid::ZERO, |d| d.cid);
        if let Some(proof) = &body.last_decided {
            self.check_decision_proof(proof, pending)?;
        }
        let mut cids = BTreeSet::new();
        // A replica prepares only inside its window, at most `max_instances_ahead` past its
        // last executed cid, which is what `last_decided` proves: a cid beyond is refused here,
        // before `sync::choose` sizes anything by it.
        let window_end = decided.saturating_add(self.limits.max_instances_ahead);
        for prepared in &body.prepared {
            if prepared.cid <= decided || !cids.insert(prepared.cid) {
                return Err(Rejection::Malformed(
                    "prepared proof for a decided or repeated cid".into(),
                ));
            }
            if prepared.cid > window_end {
                return Err(Rejection::Malformed(format!(
                    "prepared proof for cid {} beyond the window after the decided cid {decided}",
                    prepared.cid
                )));
            }
            if prepared.epoch >= body.regency {
                return Err(Rejection::Malformed(
                    "prepared proof from a future epoch".into(),
                ));
            }
            // Certified by its Q WRITEs (checked below) in BFT; CFT checks no signature.
            self.check_batch(&prepared.batch, pending, true)?;
            if let Some(needed) = self.quorums.writes_to_accept() {
                let digest = prepared.batch.digest();
                if prepared.writes.len() < needed || prepared.writes.len() > self.quorums.n() {
                    return Err(Rejection::BadCertificate(
                        "prepared proof needs a quorum of writes",
                    ));
                }
                let mut signers = BTreeSet::new();
                for w in &prepared.writes {
                    let v = &w.body;
                    if v.kind != VoteKind::Write
                        || v.cid != prepared.cid
                        || v.regency != prepared.epoch
                        || v.digest != digest
                    {
                        return Err(Rejection::BadCertificate(
                            "write does not match the prepared value",
                        ));
                    }
                    if !signers.insert(v.replica) {
                        return Err(Rejection::BadCertificate("replica counted twice"));
                    }
                    self.queue_replica_signature(w, pending)?;
                }
            }
        }
        Ok(())
    }

    fn check_sync(&self, sync: &Signed<Sync>, pending: &mut Pending<'_>) -> Result<(), Rejection> {
        let body = &sync.body;
        if body.leader != self.quorums.leader_of(body.regency.0) {
            return Err(Rejection::WrongLeader {
                from: body.leader,
                regency: body.regency,
                leader: self.quorums.leader_of(body.regency.0),
            });
        }
        self.queue_replica_signature(sync, pending)?;
        if body.proofs.len() < self.quorums.stopdata_to_collect()
            || body.proofs.len() > self.quorums.n()
        {
            return Err(Rejection::BadCertificate("sync needs n-f stopdata"));
        }
        let mut signers = BTreeSet::new();
        for sd in &body.proofs {
            if sd.body.regency != body.regency {
                return Err(Rejection::BadCertificate("stopdata from another regency"));
            }
            if !signers.insert(sd.body.replica) {
                return Err(Rejection::BadCertificate("replica counted twice"));
            }
            self.queue_replica_signature(sd, pending)?;
            self.check_stopdata(sd, pending)?;
        }
        Ok(())
    }

    fn check_decision(
        &self,
        decision: &Decision,
        pending: &mut Pending<'_>,
    ) -> Result<(), Rejection> {
        self.check_batch(&decision.batch, pending, true)?;
        let digest = decision.batch.digest();
        self.check_certificate(decision.cid, digest, &decision.certificate)?;
        for vote in &decision.certificate {
            self.queue_replica_signature(vote, pending)?;
        }
        Ok(())
    }

    fn finish(&self, pending: &Pending<'_>) -> Result<(), Rejection> {
        if pending.signatures.is_empty() {
            return Ok(());
        }
        let items: Vec<SignedItem<'_>> = (0..pending.signatures.len())
            .map(|i| pending.item(i))
            .collect();
        self.signatures
            .verify_batch(&items)
            .map_err(|BatchVerifyError { index, reason }| Rejection::BadSignature { index, reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smr_crypto::PublicKey;

    fn client(i: u8) -> PublicKey {
        PublicKey([i; 32])
    }

    fn entry(c: u8, n: u32) -> (RequestKey, PublicKey) {
        let mut key = [0u8; 32];
        key[0] = c;
        key[1..5].copy_from_slice(&n.to_le_bytes());
        (key, client(c))
    }

    /// The clients' entry counts, and the cache's bookkeeping checked against its entries.
    fn shares(cache: &VerifiedRequests) -> Vec<(u8, usize)> {
        let inner = cache.lock();
        let mut out = Vec::new();
        let mut listed = 0;
        for (client, &slot) in &inner.client_index {
            let holder = &inner.clients[slot as usize];
            assert_eq!(holder.key, *client);
            assert!(inner.shares.contains(&inner.share(slot)));
            // The list: in insertion order, every entry indexed by its key and in by_age.
            let (mut at, mut count, mut last) = (holder.oldest, 0, None);
            while at != NO_SLOT {
                let entry = &inner.entries[at as usize];
                assert_eq!(entry.client, slot);
                assert_eq!(inner.index.get(&entry.key), Some(&at));
                assert!(last < Some(entry.number));
                assert!(inner.by_age.contains(&(entry.number, at)));
                last = Some(entry.number);
                if entry.younger == NO_SLOT {
                    assert_eq!(holder.youngest, at);
                }
                at = entry.younger;
                count += 1;
            }
            assert_eq!(count, holder.count);
            listed += count as usize;
            out.push((client.0[0], count as usize));
        }
        assert_eq!(listed, inner.index.len());
        assert_eq!(inner.shares.len(), inner.client_index.len());
        assert_eq!(
            inner.entries.len() - inner.free_entries.len(),
            inner.index.len()
        );
        out.sort();
        out
    }

    /// A full cache evicts from the client holding the most entries, the one with the oldest
    /// entry among equals: a client evicts another's entry only while it holds fewer.
    #[test]
    fn a_full_cache_evicts_the_largest_holders_oldest_entry() {
        let cache = VerifiedRequests::new(6);
        cache.insert_all([entry(1, 0), entry(1, 1), entry(2, 0)], false);
        for n in 0..10 {
            cache.insert_all([entry(3, n)], false);
        }
        // Client 3 filled the room left, then evicted its own oldest entries.
        assert_eq!(shares(&cache), vec![(1, 2), (2, 1), (3, 3)]);
        assert_eq!(cache.lookup(&entry(3, 6).0), None);
        assert_eq!(cache.lookup(&entry(3, 7).0), Some(false));
        assert_eq!(cache.lookup(&entry(1, 0).0), Some(false));
        // Client 2 (1 entry) takes room from the largest holder until it holds as many, then
        // pays with its own oldest.
        cache.insert_all([entry(2, 1), entry(2, 2)], true);
        assert_eq!(shares(&cache), vec![(1, 2), (2, 2), (3, 2)]);
        assert_eq!(cache.lookup(&entry(3, 7).0), None);
        assert_eq!(cache.lookup(&entry(2, 0).0), None);
        // Among equals, the oldest entry goes: client 1's first.
        cache.insert_all([entry(4, 0)], false);
        assert_eq!(shares(&cache), vec![(1, 1), (2, 2), (3, 2), (4, 1)]);
        assert_eq!(cache.lookup(&entry(1, 0).0), None);
        // An upgrade keeps the entry where it is; a channel-only insert reports whether the
        // signature is known to verify.
        let (key, c) = entry(3, 9);
        assert!(!cache.insert(key, c, false));
        let (key, c) = entry(2, 2);
        assert!(cache.insert(key, c, false));
        let (key, c) = entry(3, 9);
        assert!(cache.insert(key, c, true));
        assert_eq!(cache.lookup(&key), Some(true));
        assert_eq!(cache.len(), 6);
    }

    /// An entry that outlived `MAX_AGE_IN_CAPACITIES` times the capacity in insertions goes
    /// first, though its client holds fewer entries than the inserting one.
    #[test]
    fn an_entry_that_outlived_four_capacities_of_insertions_goes_first() {
        let cache = VerifiedRequests::new(4);
        cache.insert_all([entry(1, 0), entry(2, 0), entry(3, 0)], false);
        // Client 4 inserts 13 times (numbers 3..=15): only its own entries go while client
        // 1's (number 0) has outlived at most 16 insertions.
        for n in 0..13 {
            cache.insert_all([entry(4, n)], false);
        }
        assert_eq!(shares(&cache), vec![(1, 1), (2, 1), (3, 1), (4, 1)]);
        cache.insert_all([entry(4, 13)], false);
        assert_eq!(shares(&cache), vec![(2, 1), (3, 1), (4, 2)]);
        assert_eq!(cache.lookup(&entry(1, 0).0), None);
        assert_eq!(cache.lookup(&entry(4, 12).0), Some(false));
    }

    /// The eviction rules, written as plainly as possible: entries in insertion order with
    /// their numbers; a full cache evicts the globally oldest entry if it outlived `max_age`
    /// insertions, else the oldest entry of the client holding the most (the oldest such
    /// entry among equals).
    struct Reference {
        capacity: usize,
        max_age: u64,
        next: u64,
        entries: Vec<(u64, RequestKey, PublicKey, bool)>,
    }

    impl Reference {
        fn insert(&mut self, key: RequestKey, client: PublicKey, verified: bool) -> bool {
            if let Some(e) = self.entries.iter_mut().find(|e| e.1 == key) {
                e.3 |= verified;
                return e.3;
            }
            self.entries.push((self.next, key, client, verified));
            self.next += 1;
            if self.entries.len() > self.capacity {
                let oldest = self.entries[0].0;
                let victim = if self.next - oldest > self.max_age {
                    0
                } else {
                    let count = |c: &PublicKey| self.entries.iter().filter(|e| e.2 == *c).count();
                    let most = self.entries.iter().map(|e| count(&e.2)).max().unwrap();
                    // Entries are in insertion order: the first of a largest holder is the
                    // oldest entry among the largest holders' oldest.
                    self.entries
                        .iter()
                        .position(|e| count(&e.2) == most)
                        .unwrap()
                };
                self.entries.remove(victim);
            }
            verified
        }

        fn lookup(&self, key: &RequestKey) -> Option<bool> {
            self.entries.iter().find(|e| e.1 == *key).map(|e| e.3)
        }
    }

    /// The slot-and-list cache keeps exactly the reference's entries through long random runs
    /// of inserts (repeats and upgrades included) by few and many clients, and of every
    /// capacity size class, with the bookkeeping checked throughout.
    #[test]
    fn the_cache_keeps_exactly_what_the_eviction_rules_say() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move |below: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % below
        };
        for (capacity, clients, keys) in [
            (1, 3, 8),
            (4, 2, 12),
            (6, 5, 40),
            (16, 3, 200),
            (16, 40, 200),
        ] {
            let cache = VerifiedRequests::new(capacity);
            let mut reference = Reference {
                capacity,
                max_age: cache.max_age(),
                next: 0,
                entries: Vec::new(),
            };
            for step in 0..3000 {
                let client = random(clients) as u8;
                let (key, c) = entry(client, random(keys) as u32);
                let verified = random(3) == 0;
                assert_eq!(
                    cache.insert(key, c, verified),
                    reference.insert(key, c, verified),
                    "capacity {capacity}, step {step}"
                );
                // The same entries: as many, and each of the reference's held alike.
                assert_eq!(cache.len(), reference.entries.len(), "step {step}");
                for (_, key, _, _) in &reference.entries {
                    assert_eq!(cache.lookup(key), reference.lookup(key), "step {step}");
                }
                if step % 97 == 0 {
                    shares(&cache);
                }
            }
            assert_eq!(cache.len(), reference.entries.len());
        }
    }

    /// With more clients than room, the oldest entry goes: no early set of keys holds the cache.
    #[test]
    fn a_cache_of_one_entry_keeps_the_latest() {
        let cache = VerifiedRequests::new(0);
        cache.insert_all([entry(1, 0), entry(2, 0)], false);
        assert_eq!(shares(&cache), vec![(2, 1)]);
    }

    /// Every field of a request's body, and its signature, changes its cache key (the session
    /// once did not: review of issue 13, finding 1).
    #[test]
    fn every_field_of_a_request_changes_its_cache_key() {
        let body = RequestBody {
            client: PublicKey([1; 32]),
            session: 2,
            seq: 3,
            kind: RequestKind::Ordered,
            op: b"op".to_vec(),
        };
        let signature = Signature([9; 64]);
        let key = request_key(&body, &signature);
        let variants = [
            RequestBody {
                client: PublicKey([4; 32]),
                ..body.clone()
            },
            RequestBody {
                session: 5,
                ..body.clone()
            },
            RequestBody {
                seq: 6,
                ..body.clone()
            },
            RequestBody {
                kind: RequestKind::Unordered,
                ..body.clone()
            },
            RequestBody {
                op: b"oq".to_vec(),
                ..body.clone()
            },
        ];
        for variant in &variants {
            assert_ne!(request_key(variant, &signature), key, "{variant:?}");
        }
        assert_ne!(request_key(&body, &Signature([8; 64])), key);
        assert_eq!(request_key(&body.clone(), &signature), key);
    }
}
