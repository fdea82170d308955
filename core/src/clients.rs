//! The client table: exactly-once execution and the reply cache, bounded in sessions and bytes.
//!
//! A request is identified by (client key, session, seq) (docs/design.md §3.7, "Sessions").
//! A session is *opened* by an ordered request of its own ([`OPEN_SESSION`]): executing it
//! assigns the next session number of the table's counter, so session numbers are handed out
//! in the decided order, and "below the counter without a record" means *evicted* exactly,
//! however long ago and however many sessions came and went since. One key may have many
//! sessions at once (one per client process), each numbering its requests from 1, and no seq
//! depends on a clock. A session may have up to `window` requests in flight, and must not send
//! seq `s` before every seq at or below `s - window` has completed. The table therefore
//! remembers, per session, the replies of the last `window` sequence numbers up to the highest
//! executed one; anything older is known to be executed already. A duplicate within the window
//! gets the cached reply again, never a second execution. ("Client" and "record" below mean a
//! session's record.)
//!
//! The table is replicated state (it is part of every checkpoint), so everything that bounds it
//! is a function of the decided sequence alone, applied at execution time (docs/design.md
//! §3.7, "Bounds"):
//!
//! - **Records.** A request of a session that has no record is refused at execution,
//!   [`Admission::SessionExpired`], and answered so: below the counter the session was
//!   evicted, at or above it the session was never opened. So neither its client's retry nor a
//!   copy a Byzantine replica kept can execute it again. Opening a session makes room as
//!   follows. A key's new session beyond `max_sessions_per_client` takes the place of that
//!   key's oldest session that never executed a request, else its least recently executed
//!   one. At most `max_clients` sessions of all keys have a record: a new one opened while the
//!   table is full takes the place of a session of the key with the most sessions (the same
//!   order within the key), if some key has more than one (idle or not: a key's extra
//!   sessions are what a full table gives up first); otherwise of the least recently executed
//!   record (the oldest execution stamp), provided it has executed nothing for
//!   `client_expiry_cids` cids. If even that record is more recent, the open is refused at
//!   execution ([`ClientTable::open_session`] returns `None`): decided but not executed, on
//!   every correct replica alike, and answered so. So a flood of fresh keys fills the table but
//!   never pushes out the only session of a key that executed within the last
//!   `client_expiry_cids` cids, and many sessions of a few keys cannot fill it at all. Sessions
//!   that never executed go first within a key, so copies of a key's old open requests that a
//!   Byzantine replica replays (each opens a new, empty session) displace only such empty
//!   sessions, never one that executed.
//! - **Reply bytes.** A client's cached replies hold at most `max_client_reply_bytes`, and all
//!   of them together at most `max_reply_cache_bytes`. Past either bound, replies are dropped,
//!   oldest first: the client's own oldest for the first, those of the least recently executed
//!   clients for the second. A dropped reply's seq stays known as executed.
//!
//! What a client sees when it sends a request again whose reply is no longer cached (dropped,
//! or older than its window): the request is refused as stale ([`RequestStatus::Stale`],
//! counted as `stale_request`) and answered so, never executed a second time. A session whose
//! record was evicted is told so ([`RequestStatus::SessionExpired`]), for ever.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::message::{Cid, ClientId, RequestId, SessionId, OPEN_SESSION};

/// The largest window a table accepts (the engine's `max_pending_per_client`): beyond it, one
/// client's record alone could not be bounded sensibly.
pub const MAX_CLIENT_WINDOW: u64 = 1 << 16;

/// Bytes a record is charged for besides its replies: the key, the session, the open's tag,
/// the highest seq, the last cid, the stamp and the map's length, as the codec writes them
/// (an upper bound).
const RECORD_OVERHEAD_BYTES: u64 = 32 + 8 + 6 * 10;

/// The first session number the counter hands out.
pub const FIRST_SESSION: u64 = 1;

/// Session numbers are handed out below this bound; a client's routing tag
/// ([`ClientEngine::new`](crate::client::ClientEngine::new)) is at or above it, so the two never
/// collide on a connection. Reached after 2^63 opens, that is never; opens are refused
/// beyond it rather than wrapping.
pub const SESSION_NUMBER_LIMIT: u64 = 1 << 63;

/// Bytes a cached seq is charged for besides its reply: the seq, the slot's tag and the reply's
/// length prefix (an upper bound).
const SLOT_OVERHEAD_BYTES: u64 = 10 + 1 + 10;

/// The bounds of a [`ClientTable`]; the engine takes them from its
/// [`Limits`](crate::config::Limits). Not part of the table's encoding: every replica has the
/// same limits, and a decoded table is checked against the replica's own
/// ([`ClientTable::bind`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    /// Sequence numbers remembered per client (`max_pending_per_client`), `1..=`
    /// [`MAX_CLIENT_WINDOW`].
    pub window: u64,
    /// Most sessions with a record, of all keys together (`limits.max_clients`).
    pub max_clients: u64,
    /// Most sessions with a record per client key (`limits.max_sessions_per_client`).
    pub max_sessions_per_client: u64,
    /// Most bytes of cached replies per client (`limits.max_client_reply_bytes`).
    pub max_client_reply_bytes: u64,
    /// Most bytes of cached replies in all (`limits.max_reply_cache_bytes`).
    pub max_reply_cache_bytes: u64,
    /// Cids a client must have executed nothing for before its record can be evicted
    /// (`limits.client_expiry_cids`).
    pub client_expiry_cids: u64,
}

impl Default for ClientLimits {
    /// The defaults of [`Limits`](crate::config::Limits).
    fn default() -> Self {
        ClientLimits {
            window: 64,
            max_clients: 10_000,
            max_sessions_per_client: 256,
            max_client_reply_bytes: 1 << 20,
            max_reply_cache_bytes: 64 << 20,
            client_expiry_cids: 10_000,
        }
    }
}

impl ClientLimits {
    /// The most bytes a table under these limits can encode to (records, cached seqs and
    /// replies), saturating: what a checkpoint's client table may add to `max_state_bytes`.
    pub fn max_encoded_bytes(&self) -> u64 {
        let per_record =
            RECORD_OVERHEAD_BYTES.saturating_add(self.window.saturating_mul(SLOT_OVERHEAD_BYTES));
        self.max_clients
            .saturating_mul(per_record)
            .saturating_add(self.max_reply_cache_bytes)
            .saturating_add(6 * 10)
    }

    /// Checks the rules a table relies on.
    ///
    /// # Errors
    /// [`ClientTableError::BadLimits`] naming the first broken rule: a window of 0 or above
    /// [`MAX_CLIENT_WINDOW`], `max_clients`, `max_sessions_per_client` or a reply bound of 0,
    /// or a per-client reply bound above the total.
    pub fn check(&self) -> Result<(), ClientTableError> {
        let rule = if self.window == 0 || self.window > MAX_CLIENT_WINDOW {
            "window must be 1..=65536"
        } else if self.max_clients == 0 {
            "max_clients must be at least 1"
        } else if self.max_sessions_per_client == 0 {
            "max_sessions_per_client must be at least 1"
        } else if self.max_client_reply_bytes == 0 {
            "max_client_reply_bytes must be at least 1"
        } else if self.max_reply_cache_bytes < self.max_client_reply_bytes {
            "max_reply_cache_bytes must be at least max_client_reply_bytes"
        } else {
            return Ok(());
        };
        Err(ClientTableError::BadLimits(rule))
    }
}

/// Why a decoded client table (from a checkpoint file or a state transfer) was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientTableError {
    /// The table's bounds break a rule ([`ClientLimits::check`]).
    #[error("client table limits are invalid: {0}")]
    BadLimits(&'static str),
    /// The contents break this replica's bounds or the table's invariants.
    #[error("client table is inconsistent: {0}")]
    Inconsistent(String),
}

/// One seq in a client's window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Slot {
    /// Handed to the service, no result yet.
    Executing,
    /// Executed; the reply is cached.
    Reply(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Executed; the reply was dropped to respect a byte bound.
    Dropped,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ClientRecord {
    /// The routing tag of the open request that opened the session (its seq): a copy of that
    /// open executes as a duplicate and is answered with this session's number.
    tag: u64,
    max_seq: u64,
    /// The cid of the client's last executed request.
    last_cid: Cid,
    /// When, in the table's count of executions, the client last executed a request: unique
    /// per record, the eviction order.
    stamp: u64,
    /// Seqs within the window up to `max_seq`.
    recent: BTreeMap<u64, Slot>,
    /// The sum of `recent`'s cached reply lengths, kept beside it so that executing a request
    /// costs no walk over the window (it did: about 4% of a CFT replica's CPU). Not encoded;
    /// recomputed when a table is decoded.
    #[serde(skip)]
    reply_bytes: u64,
}

impl ClientRecord {
    fn reply_bytes(&self) -> u64 {
        self.reply_bytes
    }

    /// Where this record, of session `session`, stands among its key's sessions.
    fn key_order(&self, session: u64) -> KeyOrder {
        (!self.recent.is_empty(), self.stamp, session)
    }

    /// The sum of the cached reply lengths, counted.
    fn count_reply_bytes(&self) -> u64 {
        self.recent
            .values()
            .map(|slot| match slot {
                Slot::Reply(bytes) => bytes.len() as u64,
                _ => 0,
            })
            .sum()
    }
}

/// Whether `seq` is below the window of a client whose highest executed seq is `max_seq`: the
/// window is the `window` seqs up to `max_seq`, `(max_seq - window, max_seq]`, and starts at
/// seq 0 while `max_seq < window`. The one rule behind [`ClientTable::status`], the trimming in
/// [`ClientTable::mark_executing`] and [`ClientTable::bind`], so that every table execution
/// builds binds (exact at both ends of the range: no saturating floor or ceiling).
fn below_window(seq: u64, max_seq: u64, window: u64) -> bool {
    max_seq
        .checked_sub(seq)
        .is_some_and(|distance| distance >= window)
}

/// Where a request stands with respect to execution.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestStatus<'a> {
    /// Never executed (as far as the table knows: see the module docs on eviction): it may be
    /// ordered.
    New,
    /// Executed (or executing); here is the reply if it is known.
    Executed(Option<&'a [u8]>),
    /// Executed, and the reply is no longer kept: older than the client's window, or dropped
    /// to respect a byte bound. Refused, never executed again.
    Stale,
    /// An open request ([`OPEN_SESSION`]) that already opened this session, which still has
    /// its record: a duplicate, answered with the session's number, never executed again.
    Opened(u64),
    /// The session was opened and its record evicted since. Refused, not executed.
    SessionExpired,
}

/// What [`ClientTable::mark_executing`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// The request executes. `floor`: the highest seq that is now outside the client's window,
    /// if the window moved (callers drop pending copies of it and older requests).
    Execute {
        /// See above.
        floor: Option<u64>,
    },
    /// The request's session has no record: evicted, or never opened
    /// ([`RequestStatus::SessionExpired`]). Not executed (on every correct replica alike).
    SessionExpired,
}

/// Per client: the highest executed seq and the replies of the last `window` seqs up to it
/// (docs/design.md §3.7; BFT-SMaRt keeps only the last reply), bounded in clients and bytes
/// (module docs). Part of every checkpoint. Decoding checks the invariants that need no
/// limits; [`ClientTable::bind`] then checks the contents against the replica's limits, and
/// only a bound table executes anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTable {
    limits: ClientLimits,
    /// Whether `limits` are the replica's (a new table, or a decoded one after `bind`).
    bound: bool,
    /// Executions so far: the next stamp.
    executions: u64,
    /// The records, hashed: looked up several times per request, where a B-tree of 40-byte
    /// keys cost a `memcmp` per step (BENCHMARKS.md, "Instruction counts per op"). The
    /// hasher is randomly seeded, against keys chosen to collide; its seed decides only the
    /// memory layout, because nothing depends on the map's iteration order: the encoding
    /// sorts ([`ClientTableRef`]), and `bind`'s checks give the same verdict in any order.
    clients: HashMap<SessionId, ClientRecord, ahash::RandomState>,
    /// `(stamp, session)` of every record, oldest first: the eviction order.
    by_stamp: BTreeSet<(u64, SessionId)>,
    /// `(stamp, session)` of the records that hold cached reply bytes.
    with_replies: BTreeSet<(u64, SessionId)>,
    /// Per client key, `(executed, stamp, session)` of its records: sessions that never
    /// executed a request first, then the least recently executed; the order in which a key's
    /// sessions give way to its new ones (module docs, "Records").
    /// Hashed like `clients`, for the same reasons.
    sessions_of: HashMap<ClientId, BTreeSet<KeyOrder>, ahash::RandomState>,
    /// `(sessions, key)` of every key with more than one session: in a full table a new
    /// session takes the place of a session of the key with the most (module docs).
    crowded: BTreeSet<(usize, ClientId)>,
    /// Bytes of all cached replies.
    reply_bytes: u64,
    /// The number the next opened session gets: every session below it was opened, so one
    /// below it without a record was evicted (module docs).
    next_session: u64,
    /// `(key, tag)` of every record's open request, to its session: copies of an open are
    /// duplicates while its session has a record.
    by_tag: BTreeMap<(ClientId, u64), u64>,
}

/// Where a session stands among its key's: `(executed, stamp, session)`, where `executed` is
/// whether it executed a request since it was opened (`false` orders first).
type KeyOrder = (bool, u64, u64);

/// The encoding: the execution count, the session counter and the records in the order of
/// their sessions (as a `BTreeMap` encodes: every replica's table encodes to the same bytes,
/// which checkpoint digests need). The indexes are rebuilt.
#[derive(Serialize)]
struct ClientTableRef<'a> {
    executions: u64,
    next_session: u64,
    clients: SortedRecords<'a>,
}

/// The records, sorted by session when encoded.
struct SortedRecords<'a>(&'a HashMap<SessionId, ClientRecord, ahash::RandomState>);

impl Serialize for SortedRecords<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut records: Vec<(&SessionId, &ClientRecord)> = self.0.iter().collect();
        records.sort_unstable_by_key(|(session, _)| **session);
        serializer.collect_map(records)
    }
}

#[derive(Deserialize)]
struct ClientTableWire {
    executions: u64,
    next_session: u64,
    clients: BTreeMap<SessionId, ClientRecord>,
}

impl Serialize for ClientTable {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        ClientTableRef {
            executions: self.executions,
            next_session: self.next_session,
            clients: SortedRecords(&self.clients),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ClientTable {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = ClientTableWire::deserialize(deserializer)?;
        ClientTable::unbound(wire).map_err(serde::de::Error::custom)
    }
}

impl ClientTable {
    /// A decoded table, its invariants that need no limits checked: stamps unique and below
    /// the execution count, session numbers opened (from [`FIRST_SESSION`], below the counter,
    /// which is at most [`SESSION_NUMBER_LIMIT`]), each record either never executed (no seqs,
    /// highest seq 0) or with its highest seq among its seqs and none above it, at most
    /// [`MAX_CLIENT_WINDOW`] seqs per record.
    fn unbound(wire: ClientTableWire) -> Result<ClientTable, ClientTableError> {
        let inconsistent = |what: String| Err(ClientTableError::Inconsistent(what));
        let mut table = ClientTable::bounded(ClientLimits::default());
        table.bound = false;
        table.executions = wire.executions;
        if !(FIRST_SESSION..=SESSION_NUMBER_LIMIT).contains(&wire.next_session) {
            return inconsistent(format!(
                "the session counter {} is outside {FIRST_SESSION}..={SESSION_NUMBER_LIMIT}",
                wire.next_session
            ));
        }
        table.next_session = wire.next_session;
        let mut stamps = BTreeSet::new();
        for (client, mut record) in wire.clients {
            if !(FIRST_SESSION..wire.next_session).contains(&client.session) {
                return inconsistent(format!(
                    "a record of session {} that the counter {} has not opened",
                    client.session, wire.next_session
                ));
            }
            record.reply_bytes = record.count_reply_bytes();
            if record.stamp >= wire.executions {
                return inconsistent(format!(
                    "a record's stamp {} is not below the execution count {}",
                    record.stamp, wire.executions
                ));
            }
            if !stamps.insert(record.stamp) {
                return inconsistent(format!("two records share the stamp {}", record.stamp));
            }
            let opened_only = record.recent.is_empty() && record.max_seq == 0;
            if !opened_only
                && (!record.recent.contains_key(&record.max_seq)
                    || record.recent.keys().any(|seq| *seq > record.max_seq)
                    || record.recent.len() as u64 > MAX_CLIENT_WINDOW)
            {
                return inconsistent(format!(
                    "a record's seqs do not end at its highest seq {}",
                    record.max_seq
                ));
            }
            let bytes = record.reply_bytes();
            table.by_stamp.insert((record.stamp, client));
            if table
                .by_tag
                .insert((client.client, record.tag), client.session)
                .is_some()
            {
                return inconsistent(format!(
                    "two sessions of one key were opened by the tag {}",
                    record.tag
                ));
            }
            table
                .sessions_of
                .entry(client.client)
                .or_default()
                .insert(record.key_order(client.session));
            if bytes > 0 {
                table.with_replies.insert((record.stamp, client));
            }
            table.reply_bytes = table.reply_bytes.saturating_add(bytes);
            table.clients.insert(client, record);
        }
        table.crowded = table
            .sessions_of
            .iter()
            .filter(|(_, sessions)| sessions.len() > 1)
            .map(|(key, sessions)| (sessions.len(), *key))
            .collect();
        Ok(table)
    }

    /// Checks a decoded table against `limits`, this replica's, and `cid`, the checkpoint it
    /// came with, and binds it to them: at most `max_clients` records, each record's seqs
    /// within its window, reply bytes within both bounds, no execution after `cid`.
    ///
    /// # Errors
    /// [`ClientTableError::BadLimits`] for limits that break a rule (a validated config's never
    /// do), [`ClientTableError::Inconsistent`] for contents that break them.
    pub fn bind(
        mut self,
        limits: &ClientLimits,
        cid: Cid,
    ) -> Result<ClientTable, ClientTableError> {
        limits.check()?;
        let inconsistent = |what: String| Err(ClientTableError::Inconsistent(what));
        if self.clients.len() as u64 > limits.max_clients {
            return inconsistent(format!(
                "{} records, more than max_clients = {}",
                self.clients.len(),
                limits.max_clients
            ));
        }
        if let Some((key, sessions)) = self
            .sessions_of
            .iter()
            .find(|(_, sessions)| sessions.len() as u64 > limits.max_sessions_per_client)
        {
            return inconsistent(format!(
                "key {key:?} has {} sessions, more than max_sessions_per_client = {}",
                sessions.len(),
                limits.max_sessions_per_client
            ));
        }
        for record in self.clients.values() {
            // The same predicate as execution's: while `max_seq < window` the window starts
            // at seq 0, and a table `mark_executing` built must always bind (a floor that
            // saturated at 0 refused seq 0, so no replica could install a correct peer's
            // checkpoint once a client had executed seq 0: sim seed 637).
            if let Some(seq) = record
                .recent
                .keys()
                .find(|seq| below_window(**seq, record.max_seq, limits.window))
            {
                return inconsistent(format!(
                    "a record's seq {seq} is not within its window of {} seqs up to {}",
                    limits.window, record.max_seq
                ));
            }
            let bytes = record.reply_bytes();
            if bytes > limits.max_client_reply_bytes {
                return inconsistent(format!(
                    "a record caches {bytes} reply bytes, more than max_client_reply_bytes"
                ));
            }
            if record.last_cid > cid {
                return inconsistent(format!(
                    "a record executed at cid {} in a checkpoint of cid {cid}",
                    record.last_cid
                ));
            }
        }
        if self.reply_bytes > limits.max_reply_cache_bytes {
            return inconsistent(format!(
                "{} reply bytes cached, more than max_reply_cache_bytes",
                self.reply_bytes
            ));
        }
        self.limits = *limits;
        self.bound = true;
        Ok(self)
    }
}

impl ClientTable {
    /// An empty table whose window is `window` sequence numbers, with the other bounds at
    /// their defaults ([`ClientLimits::default`]).
    ///
    /// # Panics
    /// If `window` is 0 or above [`MAX_CLIENT_WINDOW`].
    pub fn new(window: u64) -> ClientTable {
        ClientTable::bounded(ClientLimits {
            window,
            ..ClientLimits::default()
        })
    }

    /// An empty table under `limits`.
    ///
    /// # Panics
    /// If `limits` break a rule of [`ClientLimits::check`] (a validated engine config never
    /// does).
    pub fn bounded(limits: ClientLimits) -> ClientTable {
        if let Err(e) = limits.check() {
            panic!("{e}");
        }
        ClientTable {
            limits,
            bound: true,
            executions: 0,
            clients: HashMap::default(),
            by_stamp: BTreeSet::new(),
            with_replies: BTreeSet::new(),
            sessions_of: HashMap::default(),
            crowded: BTreeSet::new(),
            reply_bytes: 0,
            next_session: FIRST_SESSION,
            by_tag: BTreeMap::new(),
        }
    }

    /// The bounds the table enforces.
    pub fn limits(&self) -> &ClientLimits {
        &self.limits
    }

    /// The number the next opened session gets ([`ClientTable::open_session`]).
    pub fn next_session(&self) -> u64 {
        self.next_session
    }

    /// Where `id` stands: new, executed (with its reply if the service has returned it),
    /// stale (`max_seq - seq >= window`, or the reply was dropped), or from an expired session
    /// (opened, and its record evicted since). An open request ([`OPEN_SESSION`]) is always
    /// new; so is a request of a session this table has not opened yet (it may have been
    /// opened where the table is further along; execution refuses it if it was not).
    pub fn status(&self, id: &RequestId) -> RequestStatus<'_> {
        if id.session == OPEN_SESSION {
            return match self.by_tag.get(&(id.client, id.seq)) {
                Some(session) => RequestStatus::Opened(*session),
                None => RequestStatus::New,
            };
        }
        let Some(record) = self.clients.get(&id.session_id()) else {
            // Every session below the counter was opened and had a record: without one now,
            // it was evicted, however long ago.
            if id.session < self.next_session {
                return RequestStatus::SessionExpired;
            }
            return RequestStatus::New;
        };
        match record.recent.get(&id.seq) {
            Some(Slot::Executing) => return RequestStatus::Executed(None),
            Some(Slot::Reply(reply)) => return RequestStatus::Executed(Some(reply)),
            Some(Slot::Dropped) => return RequestStatus::Stale,
            None => {}
        }
        if below_window(id.seq, record.max_seq, self.limits.window) {
            return RequestStatus::Stale;
        }
        RequestStatus::New
    }

    /// Opens a session of `client` for its open request with routing tag `tag`, decided in
    /// `cid`, and returns its number: the counter's next, with an empty record that remembers
    /// `tag` (so copies of the open are duplicates: [`RequestStatus::Opened`]). Makes room first (module docs, "Records"): a key at
    /// `max_sessions_per_client` gives up its first session in key order (never executed,
    /// then least recently executed); a full table gives up the first session of the key
    /// with the most sessions if some key has more than one, else the least recently
    /// executed record if idle for `client_expiry_cids` cids. `None`, nothing changed, if the
    /// table is full of records active within `client_expiry_cids` (or the counter reached
    /// [`SESSION_NUMBER_LIMIT`]).
    ///
    /// # Panics
    /// If the table was decoded and not bound to limits ([`ClientTable::bind`]), or `(client,
    /// tag)` already opened a session that has its record (callers check
    /// [`ClientTable::status`] first).
    pub fn open_session(&mut self, client: ClientId, tag: u64, cid: Cid) -> Option<u64> {
        assert!(
            self.bound,
            "a decoded client table executes only once bound to limits"
        );
        assert!(
            !self.by_tag.contains_key(&(client, tag)),
            "an open request executed twice (callers check `status` first)"
        );
        if self.next_session >= SESSION_NUMBER_LIMIT || !self.make_room(client, cid) {
            return None;
        }
        let session = self.next_session;
        self.next_session += 1;
        let stamp = self.executions;
        self.executions = self.executions.saturating_add(1);
        let record = ClientRecord {
            tag,
            max_seq: 0,
            last_cid: cid,
            stamp,
            recent: BTreeMap::new(),
            reply_bytes: 0,
        };
        let id = SessionId { client, session };
        self.by_stamp.insert((stamp, id));
        let own = self.sessions_of.entry(client).or_default();
        let before = own.len();
        own.insert(record.key_order(session));
        let after = own.len();
        self.recount_sessions(client, before, after);
        let previous = self.clients.insert(id, record);
        assert!(previous.is_none(), "session {id:?} opened twice");
        self.by_tag.insert((client, tag), session);
        Some(session)
    }

    /// Evicts what the rules of [`ClientTable::open_session`] say, or returns `false` if the
    /// table is full of records active within `client_expiry_cids`.
    fn make_room(&mut self, client: ClientId, cid: Cid) -> bool {
        let own = self.sessions_of.get(&client);
        if own.is_some_and(|own| own.len() as u64 >= self.limits.max_sessions_per_client) {
            // A key's sessions give way to its new ones, whether idle or not: a key can only
            // displace its own sessions this way.
            let first = *own
                .and_then(|own| own.first())
                .expect("a key at its bound has sessions");
            self.evict_in_key_order(client, first);
        } else if self.clients.len() as u64 >= self.limits.max_clients
            && self.crowded.last().is_some()
        {
            // A full table: a key with more than one session gives up one first, the key with
            // the most sessions (then the highest key) first, idle or not. So sessions count
            // against a key like keys against a source network, and many sessions of a few
            // keys cannot lock new clients out (docs/design.md §3.7, "Bounds").
            let (_, key) = *self.crowded.last().expect("checked above");
            let first = *self.sessions_of[&key]
                .first()
                .expect("a crowded key has sessions");
            self.evict_in_key_order(key, first);
        } else if self.clients.len() as u64 >= self.limits.max_clients {
            let (stamp, oldest) = *self.by_stamp.first().expect("a full table has records");
            let last_cid = self.clients[&oldest].last_cid;
            if cid.0.saturating_sub(last_cid.0) < self.limits.client_expiry_cids {
                return false;
            }
            self.evict(stamp, oldest);
        }
        true
    }

    fn evict_in_key_order(&mut self, key: ClientId, (_, stamp, session): KeyOrder) {
        self.evict(
            stamp,
            SessionId {
                client: key,
                session,
            },
        );
    }

    /// Marks `id`, decided in `cid`, as executing, or refuses it as
    /// [`Admission::SessionExpired`] if its session has no record: evicted (below the
    /// counter) or never opened (module docs, "Records").
    ///
    /// # Panics
    /// If `id` was marked before: a request would execute twice (callers check
    /// [`ClientTable::status`] first); if `id` is an open request (callers use
    /// [`ClientTable::open_session`]).
    pub fn mark_executing(&mut self, id: &RequestId, cid: Cid) -> Admission {
        assert!(
            self.bound,
            "a decoded client table executes only once bound to limits"
        );
        assert_ne!(id.session, OPEN_SESSION, "an open request is not executed");
        let session = id.session_id();
        let stamp = self.executions;
        let window = self.limits.window;
        let Some(record) = self.clients.get_mut(&session) else {
            return Admission::SessionExpired;
        };
        self.executions = self.executions.saturating_add(1);
        let old_order = record.key_order(id.session);
        let old_stamp = record.stamp;
        let had_replies = record.reply_bytes() > 0;
        record.stamp = stamp;
        record.last_cid = record.last_cid.max(cid);
        let previous = record.recent.insert(id.seq, Slot::Executing);
        assert!(previous.is_none(), "request {id:?} executed twice");
        let mut floor = None;
        if id.seq > record.max_seq {
            record.max_seq = id.seq;
            // Drops exactly the seqs `below_window` calls old: those at or below `new_floor`.
            // One at a time from the front (a request usually moves the window by one seq),
            // not `split_off`, which builds a new tree for every execution.
            if let Some(new_floor) = record.max_seq.checked_sub(window) {
                let mut freed = 0u64;
                while let Some(oldest) = record.recent.first_entry() {
                    if *oldest.key() > new_floor {
                        break;
                    }
                    if let Slot::Reply(bytes) = oldest.remove() {
                        freed += bytes.len() as u64;
                    }
                }
                record.reply_bytes = record.reply_bytes.saturating_sub(freed);
                self.reply_bytes = self.reply_bytes.saturating_sub(freed);
                floor = Some(new_floor);
            }
        }
        let has_replies = record.reply_bytes() > 0;
        self.by_stamp.remove(&(old_stamp, session));
        self.by_stamp.insert((stamp, session));
        let own = self
            .sessions_of
            .get_mut(&id.client)
            .expect("a record's key is indexed");
        own.remove(&old_order);
        own.insert((true, stamp, id.session));
        // `with_replies` holds exactly the records with reply bytes.
        if had_replies {
            self.with_replies.remove(&(old_stamp, session));
        }
        if has_replies {
            self.with_replies.insert((stamp, session));
        }
        Admission::Execute { floor }
    }

    /// Stores the reply of an executing request (ignored for a request not marked executing,
    /// or already outside the window), then drops cached replies as the byte bounds require:
    /// the client's own oldest first, then those of the least recently executed clients.
    pub fn record_reply(&mut self, id: &RequestId, reply: Vec<u8>) {
        let limits = self.limits;
        let session = id.session_id();
        let Some(record) = self.clients.get_mut(&session) else {
            return;
        };
        let had_replies = record.reply_bytes() > 0;
        let Some(slot) = record.recent.get_mut(&id.seq) else {
            return;
        };
        if *slot != Slot::Executing {
            return;
        }
        let added = reply.len() as u64;
        *slot = Slot::Reply(reply);
        record.reply_bytes = record.reply_bytes.saturating_add(added);
        // The client's own bound: drop its oldest replies (this one too, if it alone is larger
        // than the bound).
        let mut client_bytes = record.reply_bytes();
        let mut freed = 0u64;
        for slot in record.recent.values_mut() {
            if client_bytes <= limits.max_client_reply_bytes {
                break;
            }
            if let Slot::Reply(bytes) = slot {
                client_bytes -= bytes.len() as u64;
                freed += bytes.len() as u64;
                *slot = Slot::Dropped;
            }
        }
        record.reply_bytes = client_bytes;
        debug_assert_eq!(record.reply_bytes, record.count_reply_bytes());
        let stamp = record.stamp;
        self.reply_bytes = self.reply_bytes.saturating_add(added).saturating_sub(freed);
        // `with_replies` holds exactly the records with reply bytes.
        if client_bytes > 0 && !had_replies {
            self.with_replies.insert((stamp, session));
        } else if client_bytes == 0 && had_replies {
            self.with_replies.remove(&(stamp, session));
        }
        // The total bound: whole clients' caches, least recently executed first.
        while self.reply_bytes > limits.max_reply_cache_bytes {
            let Some((stamp, client)) = self.with_replies.pop_first() else {
                break;
            };
            let record = self
                .clients
                .get_mut(&client)
                .expect("indexed records exist");
            let mut remaining = record.reply_bytes();
            for slot in record.recent.values_mut() {
                if self.reply_bytes <= limits.max_reply_cache_bytes {
                    break;
                }
                if let Slot::Reply(bytes) = slot {
                    self.reply_bytes = self.reply_bytes.saturating_sub(bytes.len() as u64);
                    remaining -= bytes.len() as u64;
                    *slot = Slot::Dropped;
                }
            }
            record.reply_bytes = remaining;
            if remaining > 0 {
                self.with_replies.insert((stamp, client));
            }
        }
    }

    fn evict(&mut self, stamp: u64, client: SessionId) {
        let record = self.clients.remove(&client).expect("indexed records exist");
        self.by_stamp.remove(&(stamp, client));
        self.with_replies.remove(&(stamp, client));
        if let Some(own) = self.sessions_of.get_mut(&client.client) {
            let before = own.len();
            own.remove(&record.key_order(client.session));
            let after = own.len();
            if own.is_empty() {
                self.sessions_of.remove(&client.client);
            }
            self.recount_sessions(client.client, before, after);
        }
        self.reply_bytes = self.reply_bytes.saturating_sub(record.reply_bytes());
        self.by_tag.remove(&(client.client, record.tag));
        // Nothing to remember: its number is below the counter and has no record now, so
        // its requests are refused as expired (module docs).
    }

    /// Keeps [`ClientTable::crowded`] in step with `key`'s session count.
    fn recount_sessions(&mut self, key: ClientId, before: usize, after: usize) {
        if before == after {
            return;
        }
        if before > 1 {
            self.crowded.remove(&(before, key));
        }
        if after > 1 {
            self.crowded.insert((after, key));
        }
    }

    /// Sessions with a record: those opened and not evicted since.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Client keys with at least one session on record.
    pub fn key_count(&self) -> usize {
        self.sessions_of.len()
    }

    /// Bytes of cached replies, in all.
    pub fn reply_bytes(&self) -> u64 {
        self.reply_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smr_crypto::PublicKey;

    /// The routing tag tests open session number `n` with.
    fn tag(n: u64) -> u64 {
        SESSION_NUMBER_LIMIT | n
    }

    /// Client 7's request `seq` in session 1 (the first a table opens).
    fn id(seq: u64) -> RequestId {
        RequestId {
            session: 1,
            ..client_id(7, seq)
        }
    }

    /// Client `client`'s request `seq`, in session number `client` (tests open their
    /// clients' sessions in that order: [`execute`]).
    fn client_id(client: u8, seq: u64) -> RequestId {
        RequestId {
            client: PublicKey([client; 32]),
            session: u64::from(client),
            seq,
        }
    }

    /// A table under `limits` whose one session (client 7, session 1) executed up to
    /// `max_seq` at cid 1, decoded as a checkpoint would bring it: how a session reaches seqs
    /// near `u64::MAX` without executing every seq below.
    fn table_at(limits: ClientLimits, max_seq: u64) -> ClientTable {
        let mut clients = HashMap::default();
        clients.insert(
            id(0).session_id(),
            ClientRecord {
                tag: tag(1),
                max_seq,
                last_cid: Cid(1),
                stamp: 0,
                recent: [(max_seq, Slot::Dropped)].into_iter().collect(),
                reply_bytes: 0,
            },
        );
        let table: ClientTable = crate::codec::decode(&crate::codec::encode(&ClientTableRef {
            executions: 1,
            next_session: 2,
            clients: SortedRecords(&clients),
        }))
        .unwrap();
        table.bind(&limits, Cid(1)).unwrap()
    }

    /// Executes `id` in `cid`, opening its session first if it is the counter's next number
    /// (so a test names sessions by the order it opens them in).
    fn execute(table: &mut ClientTable, id: &RequestId, cid: u64) -> Option<u64> {
        if id.session == table.next_session() {
            assert_eq!(
                table.open_session(id.client, tag(id.session), Cid(cid)),
                Some(id.session)
            );
        }
        match table.mark_executing(id, Cid(cid)) {
            Admission::Execute { floor } => floor,
            refused => panic!("{id:?} refused: {refused:?}"),
        }
    }

    #[test]
    fn duplicate_gets_cached_reply() {
        let mut table = ClientTable::new(4);
        assert_eq!(table.status(&id(1)), RequestStatus::New);
        execute(&mut table, &id(1), 1);
        assert_eq!(table.status(&id(1)), RequestStatus::Executed(None));
        table.record_reply(&id(1), b"ok".to_vec());
        assert_eq!(
            table.status(&id(1)),
            RequestStatus::Executed(Some(&b"ok"[..]))
        );
        assert_eq!(table.reply_bytes(), 2);
    }

    #[test]
    fn requests_older_than_the_window_are_stale() {
        let mut table = ClientTable::new(2);
        execute(&mut table, &id(1), 1);
        table.record_reply(&id(1), b"one".to_vec());
        execute(&mut table, &id(3), 2);
        assert_eq!(execute(&mut table, &id(4), 3), Some(2));
        assert_eq!(table.status(&id(1)), RequestStatus::Stale);
        assert_eq!(table.status(&id(2)), RequestStatus::Stale);
        assert_eq!(table.status(&id(3)), RequestStatus::Executed(None));
        assert_eq!(table.status(&id(5)), RequestStatus::New);
        assert_eq!(table.reply_bytes(), 0, "the reply left the window");
    }

    #[test]
    fn out_of_order_seqs_within_the_window_execute() {
        let mut table = ClientTable::new(8);
        execute(&mut table, &id(5), 1);
        assert_eq!(table.status(&id(3)), RequestStatus::New);
        execute(&mut table, &id(3), 1);
        assert_eq!(table.status(&id(3)), RequestStatus::Executed(None));
    }

    #[test]
    #[should_panic(expected = "executed twice")]
    fn executing_twice_is_an_invariant_violation() {
        let mut table = ClientTable::new(8);
        execute(&mut table, &id(5), 1);
        execute(&mut table, &id(5), 1);
    }

    #[test]
    fn seq_u64_max_executes_without_overflow() {
        let limits = ClientLimits {
            window: 1,
            ..ClientLimits::default()
        };
        let mut table = table_at(limits, u64::MAX - 1);
        assert_eq!(execute(&mut table, &id(u64::MAX), 1), Some(u64::MAX - 1));
        assert_eq!(table.status(&id(u64::MAX)), RequestStatus::Executed(None));
        assert_eq!(table.status(&id(u64::MAX - 1)), RequestStatus::Stale);
    }

    fn limits(max_clients: u64, expiry: u64) -> ClientLimits {
        ClientLimits {
            window: 4,
            max_clients,
            max_sessions_per_client: 8,
            max_client_reply_bytes: 10,
            max_reply_cache_bytes: 25,
            client_expiry_cids: expiry,
        }
    }

    #[test]
    fn a_full_table_evicts_the_least_recently_executed_idle_client() {
        let mut table = ClientTable::bounded(limits(2, 10));
        execute(&mut table, &client_id(1, 1), 1);
        execute(&mut table, &client_id(2, 1), 2);
        execute(&mut table, &client_id(1, 2), 3);
        // Client 2 executed at cid 2, client 1 at 3: at cid 11, client 2 is not yet idle for
        // 10 cids, so a third client's open is refused, and changes nothing.
        let before = table.clone();
        assert_eq!(
            table.open_session(PublicKey([3; 32]), tag(3), Cid(11)),
            None
        );
        assert_eq!(table, before);
        assert_eq!(table.status(&client_id(3, 1)), RequestStatus::New);
        // At cid 12 it is: client 2 goes, client 1 (more recent) stays.
        execute(&mut table, &client_id(3, 1), 12);
        assert_eq!(table.client_count(), 2);
        // Below the counter without a record: its requests are refused, not executed again.
        assert_eq!(
            table.status(&client_id(2, 1)),
            RequestStatus::SessionExpired
        );
        assert_eq!(
            table.status(&client_id(1, 2)),
            RequestStatus::Executed(None)
        );
    }

    /// A key's sessions beyond `max_sessions_per_client` give way to its new ones: first one
    /// that never executed, else the least recently executed, idle or not; other keys'
    /// sessions are untouched; an evicted session is expired for every seq, for ever (its
    /// number is below the counter), and a session not opened yet is refused at execution.
    #[test]
    fn a_keys_sessions_beyond_its_bound_evict_its_least_recently_executed_one() {
        let mut table = ClientTable::bounded(ClientLimits {
            max_sessions_per_client: 2,
            ..limits(10, 100)
        });
        let key = |k: u8| PublicKey([k; 32]);
        let of = |k: u8, session: u64, seq: u64| RequestId {
            client: key(k),
            session,
            seq,
        };
        execute(&mut table, &of(1, 1, 1), 1);
        execute(&mut table, &of(2, 2, 1), 2);
        execute(&mut table, &of(1, 3, 1), 3);
        execute(&mut table, &of(1, 1, 2), 4);
        assert_eq!((table.client_count(), table.key_count()), (3, 2));
        // Key 1's third session: session 3 (executed before session 1's seq 2) gives way
        // although it is not idle; key 2's session stays.
        assert_eq!(table.open_session(key(1), tag(4), Cid(5)), Some(4));
        assert_eq!((table.client_count(), table.key_count()), (3, 2));
        for seq in [1, 5] {
            assert_eq!(table.status(&of(1, 3, seq)), RequestStatus::SessionExpired);
            assert_eq!(
                table.mark_executing(&of(1, 3, seq), Cid(6)),
                Admission::SessionExpired
            );
        }
        // Session 4 is open and empty: new whatever its seq. Session 5 is not opened: new where
        // it arrives (this table may lag), refused at execution.
        assert_eq!(table.status(&of(1, 4, 500)), RequestStatus::New);
        assert_eq!(table.status(&of(1, 5, 1)), RequestStatus::New);
        assert_eq!(
            table.mark_executing(&of(1, 5, 1), Cid(6)),
            Admission::SessionExpired
        );
        // Session 4 never executed: key 1's next open takes its place, not session 1's,
        // which is older (replayed opens displace only sessions that never executed).
        assert_eq!(table.open_session(key(1), tag(5), Cid(7)), Some(5));
        assert_eq!(table.status(&of(1, 4, 1)), RequestStatus::SessionExpired);
        assert_eq!(table.status(&of(1, 1, 2)), RequestStatus::Executed(None));
        assert_eq!(table.status(&of(2, 2, 1)), RequestStatus::Executed(None));
        assert_eq!(round_trip(&table).unwrap(), table);
        // However many sessions come and go later, session 3 stays expired.
        for session in 6..40 {
            assert_eq!(
                table.open_session(key(1), tag(session), Cid(session)),
                Some(session)
            );
        }
        assert_eq!(table.status(&of(1, 3, 1)), RequestStatus::SessionExpired);
        assert_eq!(round_trip(&table).unwrap(), table);
    }

    #[test]
    fn reply_bytes_are_bounded_per_client_and_in_total() {
        let mut table = ClientTable::bounded(limits(10, 10));
        for seq in 1..=3 {
            execute(&mut table, &client_id(1, seq), seq);
            table.record_reply(&client_id(1, seq), vec![seq as u8; 4]);
        }
        // 12 bytes > 10: the oldest reply is dropped, its seq stays executed.
        assert_eq!(table.status(&client_id(1, 1)), RequestStatus::Stale);
        assert_eq!(
            table.status(&client_id(1, 3)),
            RequestStatus::Executed(Some(&[3u8; 4][..]))
        );
        assert_eq!(table.reply_bytes(), 8);
        // A reply larger than the client bound is not kept at all.
        execute(&mut table, &client_id(2, 1), 4);
        table.record_reply(&client_id(2, 1), vec![0; 11]);
        assert_eq!(table.status(&client_id(2, 1)), RequestStatus::Stale);
        // Total: 8 + 10 + 10 > 25 drops client 1's (least recently executed) replies.
        for client in [3, 4] {
            execute(&mut table, &client_id(client, 1), 5);
            table.record_reply(&client_id(client, 1), vec![client; 10]);
        }
        assert!(table.reply_bytes() <= 25);
        assert_eq!(table.status(&client_id(1, 2)), RequestStatus::Stale);
        assert_eq!(
            table.status(&client_id(4, 1)),
            RequestStatus::Executed(Some(&[4u8; 10][..]))
        );
    }

    fn round_trip(table: &ClientTable) -> Result<ClientTable, String> {
        let decoded: ClientTable =
            crate::codec::decode(&crate::codec::encode(table)).map_err(|e| e.to_string())?;
        decoded
            .bind(table.limits(), Cid(100))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_table_round_trips_and_rebuilds_its_indexes() {
        let mut table = ClientTable::bounded(limits(3, 1));
        for client in 1..=3 {
            execute(&mut table, &client_id(client, 1), client as u64);
            table.record_reply(&client_id(client, 1), vec![client; 5]);
        }
        let decoded = round_trip(&table).unwrap();
        assert_eq!(decoded, table);
    }

    /// The records are hashed with a randomly seeded hasher, so two replicas' maps hold them in
    /// different orders; their checkpoints must still encode to the same bytes (the digests
    /// of correct replicas' checkpoints must match), sorted by session as a `BTreeMap`
    /// encodes. Fails if the encoding follows the map's order.
    #[test]
    fn tables_built_alike_encode_alike_whatever_their_hash_seeds() {
        let build = || {
            let mut table = ClientTable::bounded(limits(300, 1));
            for client in 0..=255u8 {
                let session = table
                    .open_session(PublicKey([client; 32]), tag(client as u64), Cid(1))
                    .unwrap();
                let id = RequestId {
                    client: PublicKey([client; 32]),
                    session,
                    seq: 1,
                };
                assert_eq!(
                    table.mark_executing(&id, Cid(2)),
                    Admission::Execute { floor: None }
                );
                table.record_reply(&id, vec![client; 3]);
            }
            table
        };
        let first = crate::codec::encode(&build());
        for _ in 0..4 {
            assert_eq!(crate::codec::encode(&build()), first);
        }
        #[derive(Serialize)]
        struct Sorted<'a> {
            executions: u64,
            next_session: u64,
            clients: &'a BTreeMap<SessionId, ClientRecord>,
        }
        let table = build();
        let sorted: BTreeMap<SessionId, ClientRecord> = table
            .clients
            .iter()
            .map(|(session, record)| (*session, record.clone()))
            .collect();
        assert_eq!(
            crate::codec::encode(&Sorted {
                executions: table.executions,
                next_session: table.next_session,
                clients: &sorted,
            }),
            first
        );
    }

    /// Sim seed 637: a client whose first executed seqs were 15 and then 0 (window 16) left
    /// seq 0 in its window, and `bind` computed the window's floor as `15 - 16`, saturated to
    /// 0, and refused it. Every checkpoint after that was refused by every replica installing
    /// it, so replicas behind the truncated log never caught up.
    #[test]
    fn seq_0_in_a_window_that_starts_at_0_binds() {
        let mut table = ClientTable::bounded(limits(10, 10));
        execute(&mut table, &id(3), 1);
        assert_eq!(table.status(&id(0)), RequestStatus::New);
        execute(&mut table, &id(0), 2);
        assert_eq!(round_trip(&table).unwrap(), table);
        // One seq further and 0 leaves the window, on both sides of the round trip.
        execute(&mut table, &id(4), 3);
        assert_eq!(table.status(&id(0)), RequestStatus::Stale);
        assert_eq!(
            round_trip(&table).unwrap().status(&id(0)),
            RequestStatus::Stale
        );
    }

    /// At the top of the range the window is exact too: with `max_seq = u64::MAX` and a window
    /// of 4, `u64::MAX - 3` is in it (a saturating `seq + window` called it stale).
    #[test]
    fn the_window_is_exact_at_u64_max() {
        let mut table = table_at(limits(10, 10), u64::MAX - 1);
        execute(&mut table, &id(u64::MAX), 1);
        assert_eq!(table.status(&id(u64::MAX - 3)), RequestStatus::New);
        assert_eq!(table.status(&id(u64::MAX - 4)), RequestStatus::Stale);
        execute(&mut table, &id(u64::MAX - 3), 2);
        assert_eq!(round_trip(&table).unwrap(), table);
    }

    /// The kind of bug of seed 637: every table that execution builds, from any seqs a
    /// Byzantine client can send (0, the window's edges, `u64::MAX` and its neighbours,
    /// random) and any replies, binds under the same limits, and the bound copy answers
    /// `status` exactly as the original.
    #[test]
    fn every_table_execution_builds_round_trips_and_binds() {
        let mut state = 0x637u64;
        let mut next = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        for run in 0..200u64 {
            let window = [1, 2, 4, 16][(run % 4) as usize];
            let limits = ClientLimits {
                window,
                ..limits(3, 5)
            };
            let mut table = ClientTable::bounded(limits);
            let mut probes = BTreeSet::new();
            for cid in 1..=40u64 {
                let client = (next() % 4) as u8;
                let pick = next();
                if pick % 5 == 0 {
                    // An open (refused or not), or a request in any session number up to
                    // one not opened yet, of any key.
                    let _ = table.open_session(PublicKey([client; 32]), tag(cid), Cid(cid));
                } else {
                    let seq = match pick % 8 {
                        0 => 0,
                        1 => pick % (2 * window + 2),
                        2 => u64::MAX - (pick >> 8) % (window + 2),
                        3 => window.wrapping_add((pick >> 8) % 3).wrapping_sub(1),
                        _ => pick >> 40,
                    };
                    let id = RequestId {
                        client: PublicKey([client; 32]),
                        session: 1 + next() % table.next_session(),
                        seq,
                    };
                    probes.insert(id);
                    if table.status(&id) == RequestStatus::New
                        && table.mark_executing(&id, Cid(cid)) != Admission::SessionExpired
                        && next() % 4 != 0
                    {
                        table.record_reply(&id, vec![client; (next() % 7) as usize]);
                    }
                }
                let decoded: ClientTable = crate::codec::decode(&crate::codec::encode(&table))
                    .unwrap_or_else(|e| panic!("run {run} cid {cid}: {e}"));
                let bound = decoded
                    .bind(&limits, Cid(cid))
                    .unwrap_or_else(|e| panic!("run {run} cid {cid}: {e}"));
                assert_eq!(bound, table, "run {run} cid {cid}");
                for probe in &probes {
                    assert_eq!(
                        bound.status(probe),
                        table.status(probe),
                        "run {run} {probe:?}"
                    );
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "only once bound")]
    fn an_unbound_table_executes_nothing() {
        let table = ClientTable::new(4);
        let mut decoded: ClientTable = crate::codec::decode(&crate::codec::encode(&table)).unwrap();
        decoded.mark_executing(&id(1), Cid(1));
    }

    /// Issue 12, item 3: a checkpoint whose table had window 0, then a request with seq
    /// `u64::MAX`, overflowed `floor + 1`. The window now comes from the replica's validated
    /// config, and a decoded table is refused if it breaks its invariants or those limits.
    #[test]
    fn decoding_and_binding_refuse_tables_that_break_their_bounds() {
        #[derive(Serialize)]
        struct Wire {
            executions: u64,
            next_session: u64,
            clients: BTreeMap<SessionId, ClientRecord>,
        }
        let wire = |clients: Vec<(u8, ClientRecord)>| Wire {
            next_session: 2,
            executions: 10,
            clients: clients
                .into_iter()
                .map(|(c, r)| {
                    (
                        SessionId {
                            client: PublicKey([c; 32]),
                            session: 1,
                        },
                        r,
                    )
                })
                .collect(),
        };
        let record = |max_seq: u64, stamp: u64, seqs: &[u64]| ClientRecord {
            tag: tag(1),
            max_seq,
            last_cid: Cid(1),
            stamp,
            recent: seqs.iter().map(|s| (*s, Slot::Executing)).collect(),
            reply_bytes: 0,
        };
        let load = |wire: Wire, limits: ClientLimits| -> Result<ClientTable, String> {
            let table: ClientTable =
                crate::codec::decode(&crate::codec::encode(&wire)).map_err(|e| e.to_string())?;
            table.bind(&limits, Cid(5)).map_err(|e| e.to_string())
        };
        let cases = [
            (
                wire(vec![(1, record(1, 0, &[1]))]),
                ClientLimits {
                    window: 0,
                    ..limits(2, 1)
                },
                "window must be 1..=65536",
            ),
            (
                wire(vec![(1, record(u64::MAX, 0, &[u64::MAX]))]),
                ClientLimits {
                    window: MAX_CLIENT_WINDOW + 1,
                    ..limits(2, 1)
                },
                "window must be 1..=65536",
            ),
            (
                wire(vec![(1, record(1, 0, &[1])), (2, record(1, 1, &[1]))]),
                limits(1, 1),
                "more than max_clients",
            ),
            (
                wire(vec![(1, record(9, 0, &[1, 9]))]),
                limits(2, 1),
                "not within its window",
            ),
            (
                wire(vec![(1, record(9, 0, &[8]))]),
                limits(2, 1),
                "do not end at its highest",
            ),
            (
                wire(vec![(1, record(9, 0, &[9, 10]))]),
                limits(2, 1),
                "do not end at its highest",
            ),
            (
                wire(vec![(1, record(1, 3, &[1])), (2, record(1, 3, &[1]))]),
                limits(2, 1),
                "share the stamp",
            ),
            (
                wire(vec![(1, record(1, 10, &[1]))]),
                limits(2, 1),
                "stamp 10",
            ),
        ];
        for (wire, limits, expected) in cases {
            let err = load(wire, limits).expect_err(expected);
            assert!(err.contains(expected), "{err} (expected {expected})");
        }
        // The session counter and the numbers it handed out.
        let opened_only = record(0, 0, &[]);
        for (next_session, expected) in [
            (0, "outside 1..="),
            (SESSION_NUMBER_LIMIT + 1, "outside 1..="),
            (1, "counter 1 has not opened"),
        ] {
            let wire = Wire {
                next_session,
                ..wire(vec![(1, opened_only.clone())])
            };
            let err = load(wire, limits(2, 1)).expect_err(expected);
            assert!(err.contains(expected), "{err} (expected {expected})");
        }
        let mut session_0 = wire(vec![(1, opened_only.clone())]);
        let record_0 = session_0.clients.pop_first().unwrap().1;
        session_0.clients.insert(
            SessionId {
                client: PublicKey([1; 32]),
                session: OPEN_SESSION,
            },
            record_0,
        );
        let err = load(session_0, limits(2, 1)).unwrap_err();
        assert!(err.contains("record of session 0"), "{err}");
        // An opened session that never executed has no seqs and highest seq 0.
        assert!(load(wire(vec![(1, opened_only)]), limits(2, 1)).is_ok());
        let err = load(wire(vec![(1, record(3, 0, &[]))]), limits(2, 1)).unwrap_err();
        assert!(err.contains("do not end at its highest seq 3"), "{err}");
        let mut too_many_bytes = record(2, 0, &[1, 2]);
        too_many_bytes.recent.insert(1, Slot::Reply(vec![0; 6]));
        too_many_bytes.recent.insert(2, Slot::Reply(vec![0; 6]));
        let err = load(wire(vec![(1, too_many_bytes)]), limits(2, 1)).unwrap_err();
        assert!(err.contains("more than max_client_reply_bytes"), "{err}");
        let mut late = record(1, 0, &[1]);
        late.last_cid = Cid(6);
        let err = load(wire(vec![(1, late)]), limits(2, 1)).unwrap_err();
        assert!(
            err.contains("executed at cid 6 in a checkpoint of cid 5"),
            "{err}"
        );
    }
}
