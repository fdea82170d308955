//! The client table: exactly-once execution and the reply cache, bounded in sessions and bytes.
//!
//! A request is identified by (client key, session, seq) (docs/design.md §3.7, "Sessions"):
//! every client process picks a random session and numbers its requests from 1 in it, so one
//! key may have many sessions at once and no seq depends on a clock. A session may have up to
//! `window` requests in flight, and must not send seq `s` before every seq at or below
//! `s - window` has completed. The table therefore remembers, per session, the replies of the
//! last `window` sequence numbers up to the highest executed one; anything older is known to be
//! executed already. A duplicate within the window gets the cached reply again, never a second
//! execution. ("Client" and "record" below mean a session's record.)
//!
//! The table is replicated state (it is part of every checkpoint), so everything that bounds it
//! is a function of the decided sequence alone, applied at execution time (docs/design.md
//! §3.7, "Bounds"):
//!
//! - **Records.** The table remembers the last `max_clients` sessions it evicted: a request of
//!   one of them is refused at execution, [`Admission::SessionExpired`], and answered so, so
//!   neither its client's retry nor a copy a Byzantine replica kept can execute it again. A
//!   session with no record that is not remembered is new, whatever its seq (a session can
//!   use up seqs without a record: unordered reads, invocations that timed out, refusals).
//!   A key's new session beyond `max_sessions_per_client`
//!   takes the place of that key's least recently executed session. At most `max_clients`
//!   sessions of all keys have a record: a new one whose request executes while the table is
//!   full takes the place of the least recently executed session of the key with the most
//!   sessions, if some key has more than one (idle or not: a key's extra sessions are what a
//!   full table gives up first); otherwise of the least recently executed record (the oldest
//!   execution stamp), provided it has executed nothing for `client_expiry_cids` cids. If even
//!   that record is more recent, the request is refused at execution ([`Admission::Refused`]):
//!   decided but not executed, on every correct replica alike, and answered so; it never ran.
//!   So a flood of fresh keys fills the table but never pushes out the only session of a key
//!   that executed within the last `client_expiry_cids` cids, and many sessions of a few keys
//!   cannot fill it at all.
//! - **Reply bytes.** A client's cached replies hold at most `max_client_reply_bytes`, and all
//!   of them together at most `max_reply_cache_bytes`. Past either bound, replies are dropped,
//!   oldest first: the client's own oldest for the first, those of the least recently executed
//!   clients for the second. A dropped reply's seq stays known as executed.
//!
//! What a client sees when it sends a request again whose reply is no longer cached (dropped,
//! or older than its window): the request is refused as stale ([`RequestStatus::Stale`],
//! counted as `stale_request`) and answered so, never executed a second time. A session whose
//! record was evicted is told so ([`RequestStatus::SessionExpired`]) while it is among the
//! last `max_clients` evictions; like Raft's and BFT-SMaRt's expired sessions, a request of a
//! session evicted longer ago than that looks new and may execute again (its client's retry,
//! or a signed copy a Byzantine replica kept all that time).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::message::{Cid, ClientId, RequestId, SessionId};

/// The largest window a table accepts (the engine's `max_pending_per_client`): beyond it, one
/// client's record alone could not be bounded sensibly.
pub const MAX_CLIENT_WINDOW: u64 = 1 << 16;

/// Bytes a record is charged for besides its replies: the key, the highest seq, the last cid,
/// the stamp and the map's length, as the codec writes them (an upper bound).
const RECORD_OVERHEAD_BYTES: u64 = 32 + 8 + 4 * 10;

/// Bytes a remembered evicted session takes in the encoding: its key and session number.
const EXPIRED_ENTRY_BYTES: u64 = 32 + 10;

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
            .saturating_mul(per_record.saturating_add(EXPIRED_ENTRY_BYTES))
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
    /// The session's record was evicted (it is among the evictions the table remembers).
    /// Refused, not executed.
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
    /// The table is full of clients active within `client_expiry_cids`: this new client's
    /// request is not executed (on every correct replica alike).
    Refused,
    /// The request's session was evicted ([`RequestStatus::SessionExpired`]): not executed
    /// (on every correct replica alike).
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
    clients: BTreeMap<SessionId, ClientRecord>,
    /// `(stamp, session)` of every record, oldest first: the eviction order.
    by_stamp: BTreeSet<(u64, SessionId)>,
    /// `(stamp, session)` of the records that hold cached reply bytes.
    with_replies: BTreeSet<(u64, SessionId)>,
    /// Per client key, `(stamp, session)` of its records, oldest first: the order in which a
    /// key's sessions give way to its new ones (`max_sessions_per_client`).
    sessions_of: BTreeMap<ClientId, BTreeSet<(u64, u64)>>,
    /// `(sessions, key)` of every key with more than one session: in a full table a new
    /// session takes the place of a session of the key with the most (module docs).
    crowded: BTreeSet<(usize, ClientId)>,
    /// Bytes of all cached replies.
    reply_bytes: u64,
    /// The last `max_clients` sessions evicted, oldest first, and the same as a set: their
    /// requests are refused as expired (module docs, "Records").
    expired: std::collections::VecDeque<SessionId>,
    expired_set: BTreeSet<SessionId>,
}

/// The encoding: the execution count and the records. The indexes are rebuilt.
#[derive(Serialize)]
struct ClientTableRef<'a> {
    executions: u64,
    clients: &'a BTreeMap<SessionId, ClientRecord>,
    expired: &'a std::collections::VecDeque<SessionId>,
}

#[derive(Deserialize)]
struct ClientTableWire {
    executions: u64,
    clients: BTreeMap<SessionId, ClientRecord>,
    expired: Vec<SessionId>,
}

impl Serialize for ClientTable {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        ClientTableRef {
            executions: self.executions,
            clients: &self.clients,
            expired: &self.expired,
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
    /// the execution count, each record's highest seq among its seqs and none above it, at
    /// most [`MAX_CLIENT_WINDOW`] seqs per record.
    fn unbound(wire: ClientTableWire) -> Result<ClientTable, ClientTableError> {
        let inconsistent = |what: String| Err(ClientTableError::Inconsistent(what));
        let mut table = ClientTable::bounded(ClientLimits::default());
        table.bound = false;
        table.executions = wire.executions;
        let mut stamps = BTreeSet::new();
        for (client, mut record) in wire.clients {
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
            if !record.recent.contains_key(&record.max_seq)
                || record.recent.keys().any(|seq| *seq > record.max_seq)
                || record.recent.len() as u64 > MAX_CLIENT_WINDOW
            {
                return inconsistent(format!(
                    "a record's seqs do not end at its highest seq {}",
                    record.max_seq
                ));
            }
            let bytes = record.reply_bytes();
            table.by_stamp.insert((record.stamp, client));
            table
                .sessions_of
                .entry(client.client)
                .or_default()
                .insert((record.stamp, client.session));
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
        for session in wire.expired {
            if table.clients.contains_key(&session) || !table.expired_set.insert(session) {
                return inconsistent(format!(
                    "session {session:?} is remembered as evicted twice, or has a record too"
                ));
            }
            table.expired.push_back(session);
        }
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
        if self.expired.len() as u64 > limits.max_clients {
            return inconsistent(format!(
                "{} evicted sessions remembered, more than max_clients = {}",
                self.expired.len(),
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
            clients: BTreeMap::new(),
            by_stamp: BTreeSet::new(),
            with_replies: BTreeSet::new(),
            sessions_of: BTreeMap::new(),
            crowded: BTreeSet::new(),
            reply_bytes: 0,
            expired: std::collections::VecDeque::new(),
            expired_set: BTreeSet::new(),
        }
    }

    /// The bounds the table enforces.
    pub fn limits(&self) -> &ClientLimits {
        &self.limits
    }

    /// Where `id` stands: new, executed (with its reply if the service has returned it),
    /// stale (`max_seq - seq >= window`, or the reply was dropped), or from an expired session
    /// (one of the last `max_clients` evicted).
    pub fn status(&self, id: &RequestId) -> RequestStatus<'_> {
        let Some(record) = self.clients.get(&id.session_id()) else {
            // Only a remembered eviction says a session had a record: a seq says nothing (a
            // session uses up seqs without a record through unordered reads, timeouts and
            // refusals).
            if self.expired_set.contains(&id.session_id()) {
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

    /// Marks `id`, decided in `cid`, as executing, or refuses it (module docs, "Records"): a
    /// session with no record and a seq beyond `window` is expired; a new session of a key
    /// with `max_sessions_per_client` sessions evicts that key's least recently executed one;
    /// a new session in a table of `max_clients` records evicts the least recently executed
    /// record if idle for `client_expiry_cids` cids, and is refused otherwise.
    ///
    /// # Panics
    /// If `id` was marked before: a request would execute twice (callers check
    /// [`ClientTable::status`] first).
    pub fn mark_executing(&mut self, id: &RequestId, cid: Cid) -> Admission {
        assert!(
            self.bound,
            "a decoded client table executes only once bound to limits"
        );
        let session = id.session_id();
        if !self.clients.contains_key(&session) {
            if self.expired_set.contains(&session) {
                return Admission::SessionExpired;
            }
            let own = self.sessions_of.get(&id.client);
            if own.is_some_and(|own| own.len() as u64 >= self.limits.max_sessions_per_client) {
                // A key's sessions give way to its new ones, least recently executed first,
                // whether idle or not: a key can only displace its own sessions this way.
                let (stamp, oldest) = *own
                    .and_then(|own| own.first())
                    .expect("a key at its bound has sessions");
                self.evict(
                    stamp,
                    SessionId {
                        client: id.client,
                        session: oldest,
                    },
                );
            } else if self.clients.len() as u64 >= self.limits.max_clients
                && self.crowded.last().is_some()
            {
                // A full table: a key with more than one session gives up its least recently
                // executed one first, the key with the most sessions (then the highest key)
                // first, idle or not. So sessions count against a key like keys against a
                // source network, and many sessions of a few keys cannot lock new clients out
                // (docs/design.md §3.7, "Bounds").
                let (_, key) = *self.crowded.last().expect("checked above");
                let (stamp, oldest) = *self.sessions_of[&key]
                    .first()
                    .expect("a crowded key has sessions");
                self.evict(
                    stamp,
                    SessionId {
                        client: key,
                        session: oldest,
                    },
                );
            } else if self.clients.len() as u64 >= self.limits.max_clients {
                let (stamp, oldest) = *self.by_stamp.first().expect("a full table has records");
                let last_cid = self.clients[&oldest].last_cid;
                if cid.0.saturating_sub(last_cid.0) < self.limits.client_expiry_cids {
                    return Admission::Refused;
                }
                self.evict(stamp, oldest);
            }
        }
        let stamp = self.executions;
        self.executions = self.executions.saturating_add(1);
        let window = self.limits.window;
        let record = self.clients.entry(session).or_insert_with(|| ClientRecord {
            max_seq: 0,
            last_cid: cid,
            stamp,
            recent: BTreeMap::new(),
            reply_bytes: 0,
        });
        let old_stamp = record.stamp;
        record.stamp = stamp;
        record.last_cid = record.last_cid.max(cid);
        let previous = record.recent.insert(id.seq, Slot::Executing);
        assert!(previous.is_none(), "request {id:?} executed twice");
        let mut floor = None;
        if id.seq > record.max_seq {
            record.max_seq = id.seq;
            // Drops exactly the seqs `below_window` calls old: those at or below `new_floor`.
            if let Some(new_floor) = record.max_seq.checked_sub(window) {
                // new_floor < u64::MAX since window >= 1.
                let kept = record.recent.split_off(&new_floor.saturating_add(1));
                let dropped = std::mem::replace(&mut record.recent, kept);
                let freed: u64 = dropped
                    .values()
                    .map(|slot| match slot {
                        Slot::Reply(bytes) => bytes.len() as u64,
                        _ => 0,
                    })
                    .sum();
                record.reply_bytes = record.reply_bytes.saturating_sub(freed);
                self.reply_bytes = self.reply_bytes.saturating_sub(freed);
                floor = Some(new_floor);
            }
        }
        let has_replies = record.reply_bytes() > 0;
        self.by_stamp.remove(&(old_stamp, session));
        self.by_stamp.insert((stamp, session));
        let own = self.sessions_of.entry(id.client).or_default();
        let before = own.len();
        own.remove(&(old_stamp, id.session));
        own.insert((stamp, id.session));
        let after = own.len();
        self.recount_sessions(id.client, before, after);
        self.with_replies.remove(&(old_stamp, session));
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
        if client_bytes > 0 {
            self.with_replies.insert((stamp, session));
        } else {
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
            own.remove(&(stamp, client.session));
            let after = own.len();
            if own.is_empty() {
                self.sessions_of.remove(&client.client);
            }
            self.recount_sessions(client.client, before, after);
        }
        self.reply_bytes = self.reply_bytes.saturating_sub(record.reply_bytes());
        // Remembered, so that its requests are refused rather than executed again; the oldest
        // memory goes once `max_clients` are kept.
        if self.expired.len() as u64 >= self.limits.max_clients {
            if let Some(forgotten) = self.expired.pop_front() {
                self.expired_set.remove(&forgotten);
            }
        }
        self.expired.push_back(client);
        self.expired_set.insert(client);
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

    /// Sessions with a record: those that executed a request and were not evicted since.
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

    fn id(seq: u64) -> RequestId {
        client_id(7, seq)
    }

    fn client_id(client: u8, seq: u64) -> RequestId {
        RequestId {
            client: PublicKey([client; 32]),
            session: 1,
            seq,
        }
    }

    fn session_of(client: u8, session: u64, seq: u64) -> RequestId {
        RequestId {
            client: PublicKey([client; 32]),
            session,
            seq,
        }
    }

    /// A table under `limits` whose one session (client 7, session 1) executed up to
    /// `max_seq` at cid 1, decoded as a checkpoint would bring it: how a session reaches seqs
    /// near `u64::MAX` without executing every seq below.
    fn table_at(limits: ClientLimits, max_seq: u64) -> ClientTable {
        let mut clients = BTreeMap::new();
        clients.insert(
            id(0).session_id(),
            ClientRecord {
                max_seq,
                last_cid: Cid(1),
                stamp: 0,
                recent: [(max_seq, Slot::Dropped)].into_iter().collect(),
                reply_bytes: 0,
            },
        );
        let table: ClientTable = crate::codec::decode(&crate::codec::encode(&ClientTableRef {
            executions: 1,
            clients: &clients,
            expired: &std::collections::VecDeque::new(),
        }))
        .unwrap();
        table.bind(&limits, Cid(1)).unwrap()
    }

    fn execute(table: &mut ClientTable, id: &RequestId, cid: u64) -> Option<u64> {
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
        // 10 cids, so a third client is refused.
        assert_eq!(
            table.mark_executing(&client_id(3, 1), Cid(11)),
            Admission::Refused
        );
        assert_eq!(table.status(&client_id(3, 1)), RequestStatus::New);
        // At cid 12 it is: client 2 goes, client 1 (more recent) stays.
        execute(&mut table, &client_id(3, 1), 12);
        assert_eq!(table.client_count(), 2);
        // Remembered as evicted: its requests are refused, not executed again.
        assert_eq!(
            table.status(&client_id(2, 1)),
            RequestStatus::SessionExpired
        );
        assert_eq!(
            table.status(&client_id(1, 2)),
            RequestStatus::Executed(None)
        );
    }

    /// A key's sessions beyond `max_sessions_per_client` give way to its new ones, least
    /// recently executed first, idle or not; other keys' sessions are untouched; an evicted
    /// session is expired for every seq, while the table remembers it (the last
    /// `max_clients` evictions); and a session never seen is new whatever its seq.
    #[test]
    fn a_keys_sessions_beyond_its_bound_evict_its_least_recently_executed_one() {
        let mut table = ClientTable::bounded(ClientLimits {
            max_sessions_per_client: 2,
            ..limits(10, 100)
        });
        execute(&mut table, &session_of(1, 10, 1), 1);
        execute(&mut table, &session_of(2, 10, 1), 2);
        execute(&mut table, &session_of(1, 11, 1), 3);
        execute(&mut table, &session_of(1, 10, 2), 4);
        assert_eq!((table.client_count(), table.key_count()), (3, 2));
        // Key 1's third session: session 11 (executed at stamp 2, before session 10's seq 2)
        // gives way although it is not idle; key 2's session stays.
        execute(&mut table, &session_of(1, 12, 1), 5);
        assert_eq!((table.client_count(), table.key_count()), (3, 2));
        assert_eq!(
            table.status(&session_of(1, 11, 1)),
            RequestStatus::SessionExpired
        );
        assert_eq!(
            table.status(&session_of(1, 11, 5)),
            RequestStatus::SessionExpired
        );
        // A session that used up seqs without a record (reads, timeouts) is not expired.
        assert_eq!(table.status(&session_of(1, 13, 500)), RequestStatus::New);
        assert_eq!(
            table.mark_executing(&session_of(1, 11, 5), Cid(6)),
            Admission::SessionExpired
        );
        assert_eq!(
            table.status(&session_of(1, 10, 2)),
            RequestStatus::Executed(None)
        );
        assert_eq!(
            table.status(&session_of(2, 10, 1)),
            RequestStatus::Executed(None)
        );
        assert_eq!(round_trip(&table).unwrap(), table);
        // Ten more evictions of key 1's sessions (max_clients = 10 remembered): session 11,
        // the oldest memory, is forgotten and looks new again; session 13's is kept.
        for (i, session) in (13..23).enumerate() {
            execute(&mut table, &session_of(1, session, 1), 7 + i as u64);
        }
        assert_eq!(table.status(&session_of(1, 11, 1)), RequestStatus::New);
        assert_eq!(
            table.status(&session_of(1, 13, 1)),
            RequestStatus::SessionExpired
        );
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
                let seq = match pick % 8 {
                    0 => 0,
                    1 => pick % (2 * window + 2),
                    2 => u64::MAX - (pick >> 8) % (window + 2),
                    3 => window.wrapping_add((pick >> 8) % 3).wrapping_sub(1),
                    _ => pick >> 40,
                };
                let id = client_id(client, seq);
                probes.insert(id);
                if table.status(&id) == RequestStatus::New
                    && table.mark_executing(&id, Cid(cid)) != Admission::Refused
                    && next() % 4 != 0
                {
                    table.record_reply(&id, vec![client; (next() % 7) as usize]);
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
            clients: BTreeMap<SessionId, ClientRecord>,
            expired: Vec<SessionId>,
        }
        let wire = |clients: Vec<(u8, ClientRecord)>| Wire {
            expired: Vec::new(),
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
