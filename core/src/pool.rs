//! Pending requests: what replicas hold between a client's request and its execution.
//!
//! Every replica keeps the requests it has received, so that it can time them out and ask for
//! a leader change if the leader ignores them (docs/design.md §3.4 step 1, §3.9). The leader
//! cuts batches from the pool, bounded by count and bytes and fair across clients: each round
//! of a cut takes at most one request per client, starting after the client that went first
//! last time.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::message::{Cid, ClientId, Request, RequestId, SessionId};

#[derive(Clone, Debug)]
struct Entry {
    request: Request,
    arrival_ms: u64,
    /// Its place in `by_arrival` among requests of the same `arrival_ms`: the pool's count of
    /// timer starts when its timer last started.
    serial: u64,
    /// The instance this leader proposed the request in, if any.
    proposed_in: Option<Cid>,
    /// How many request timeouts this entry has gone through.
    timeouts: u32,
    /// Whether this replica verified the request's signature (or got it in a message whose
    /// signatures it verified); false for one authenticated by its client's channel only
    /// (docs/design.md §5), which is verified before it is relayed.
    signature_checked: bool,
}

/// How many sessions' windows of one client key the pool holds at most.
pub const SESSIONS_PER_KEY_IN_POOL: usize = 8;

/// Why a request was not admitted to the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolRejection {
    /// The request's session already has `max_per_session` requests pending, or its client key
    /// [`SESSIONS_PER_KEY_IN_POOL`] times that.
    ClientFull,
    /// The pool holds `max_total` requests.
    PoolFull,
}

/// The pending requests, by client and by arrival time, each marked with the instance this
/// leader proposed it in, if any. Bounded per client and in total; requests leave when they
/// execute (or fall out of their client's window).
#[derive(Clone, Debug)]
pub struct RequestPool {
    /// Per client key, its pending requests by (session, seq). Hashed (randomly seeded,
    /// against keys chosen to collide): looked up several times per request, where a B-tree of
    /// 32-byte keys cost a `memcmp` per step. Nothing depends on its iteration order (the
    /// fairness order is `client_order`'s), so the seed changes no output.
    by_client: HashMap<ClientId, BTreeMap<(u64, u64), Entry>, ahash::RandomState>,
    /// The keys of `by_client`, sorted: the order in which a cut serves clients.
    client_order: BTreeSet<ClientId>,
    /// `(arrival, serial)` of every entry, to its id: the oldest first for the request timer,
    /// and among requests of one millisecond the one whose timer started first.
    by_arrival: BTreeMap<(u64, u64), RequestId>,
    /// Timer starts so far: the next entry's serial.
    next_serial: u64,
    len: usize,
    unproposed: usize,
    /// Pending entries whose timer expired at least once here (`timeouts >= 1`).
    timed_out: usize,
    max_per_session: usize,
    max_total: usize,
    /// The client served first by the previous cut; the next cut starts after it.
    fairness_cursor: Option<ClientId>,
}

/// Outcome of [`RequestPool::insert`].
#[derive(Debug, PartialEq, Eq)]
pub enum Inserted {
    /// Added, with its timer starting now.
    New,
    /// A request with this (client, seq) was pending already; nothing changed.
    AlreadyPending,
}

impl RequestPool {
    /// An empty pool holding at most `max_per_session` requests per client session (a
    /// session's window: `max_pending_per_client`), [`SESSIONS_PER_KEY_IN_POOL`] times that per
    /// client key, and `max_total` in all. Per session, so that one busy process of a key
    /// cannot keep another process of the key (even its open request) out of the pool (review
    /// of issue 15); per key as well, so that one key's many sessions cannot take the pool.
    ///
    /// # Panics
    /// If either limit is 0.
    pub fn new(max_per_session: usize, max_total: usize) -> RequestPool {
        assert!(
            max_per_session > 0 && max_total > 0,
            "pool limits must be positive"
        );
        RequestPool {
            by_client: HashMap::default(),
            client_order: BTreeSet::new(),
            by_arrival: BTreeMap::new(),
            next_serial: 0,
            len: 0,
            unproposed: 0,
            timed_out: 0,
            max_per_session,
            max_total,
            fairness_cursor: None,
        }
    }

    /// Requests pending.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no request is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Pending requests not in any batch this leader proposed: what the next cut can take.
    pub fn unproposed(&self) -> usize {
        self.unproposed
    }

    /// Whether the request `id` is pending.
    pub fn contains(&self, id: &RequestId) -> bool {
        self.by_client
            .get(&id.client)
            .is_some_and(|m| m.contains_key(&(id.session, id.seq)))
    }

    /// Adds `request`, arrived at `now_ms`, unless a request with its id is pending already.
    /// `signature_checked` says whether its signature was verified (see
    /// [`RequestPool::signature_checked`]). A pending copy whose signature was not checked
    /// and that is in no batch yet gives way to a checked copy: a client's bad signature on
    /// its own copy cannot keep a good copy from being proposed. Whether it is new to the
    /// client table is the caller's check.
    ///
    /// # Errors
    /// [`PoolRejection::ClientFull`] or [`PoolRejection::PoolFull`] at the limits.
    pub fn insert(
        &mut self,
        request: Request,
        now_ms: u64,
        signature_checked: bool,
    ) -> Result<Inserted, PoolRejection> {
        let id = request.id();
        let per_client = match self.by_client.entry(id.client) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                self.client_order.insert(id.client);
                v.insert(BTreeMap::new())
            }
        };
        if let Some(entry) = per_client.get_mut(&(id.session, id.seq)) {
            if signature_checked && !entry.signature_checked && entry.proposed_in.is_none() {
                entry.request = request;
                entry.signature_checked = true;
            }
            return Ok(Inserted::AlreadyPending);
        }
        let of_session = per_client
            .range((id.session, 0)..=(id.session, u64::MAX))
            .count();
        if of_session >= self.max_per_session
            || per_client.len()
                >= self
                    .max_per_session
                    .saturating_mul(SESSIONS_PER_KEY_IN_POOL)
        {
            if per_client.is_empty() {
                self.forget_client(&id.client);
            }
            return Err(PoolRejection::ClientFull);
        }
        if self.len >= self.max_total {
            if per_client.is_empty() {
                self.forget_client(&id.client);
            }
            return Err(PoolRejection::PoolFull);
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        per_client.insert(
            (id.session, id.seq),
            Entry {
                request,
                arrival_ms: now_ms,
                serial,
                proposed_in: None,
                timeouts: 0,
                signature_checked,
            },
        );
        self.by_arrival.insert((now_ms, serial), id);
        self.len += 1;
        self.unproposed += 1;
        Ok(Inserted::New)
    }

    /// Whether the pending request `id`'s signature was verified here (false if it is not
    /// pending).
    pub fn signature_checked(&self, id: &RequestId) -> bool {
        self.by_client
            .get(&id.client)
            .and_then(|m| m.get(&(id.session, id.seq)))
            .is_some_and(|e| e.signature_checked)
    }

    /// Notes that the pending request `id`'s signature verified.
    pub fn mark_signature_checked(&mut self, id: &RequestId) {
        if let Some(entry) = self
            .by_client
            .get_mut(&id.client)
            .and_then(|m| m.get_mut(&(id.session, id.seq)))
        {
            entry.signature_checked = true;
        }
    }

    /// Removes the request `id` (it executed), returning it if it was pending.
    pub fn remove(&mut self, id: &RequestId) -> Option<Request> {
        let per_client = self.by_client.get_mut(&id.client)?;
        let entry = per_client.remove(&(id.session, id.seq))?;
        if per_client.is_empty() {
            self.forget_client(&id.client);
        }
        self.by_arrival.remove(&(entry.arrival_ms, entry.serial));
        self.len -= 1;
        if entry.proposed_in.is_none() {
            self.unproposed -= 1;
        }
        if entry.timeouts > 0 {
            self.timed_out -= 1;
        }
        Some(entry.request)
    }

    /// The entry of `id`, which `by_arrival` lists.
    fn timed_entry(&mut self, id: &RequestId) -> &mut Entry {
        self.by_client
            .get_mut(&id.client)
            .and_then(|m| m.get_mut(&(id.session, id.seq)))
            .expect("by_arrival and by_client agree")
    }

    /// Drops the empty request map of `client`.
    fn forget_client(&mut self, client: &ClientId) {
        self.by_client.remove(client);
        self.client_order.remove(client);
    }

    /// Drops every pending request of `session` with a sequence number at or below `seq`.
    pub fn remove_up_to(&mut self, session: &SessionId, seq: u64) {
        let Some(per_client) = self.by_client.get(&session.client) else {
            return;
        };
        let doomed: Vec<u64> = per_client
            .range((session.session, 0)..=(session.session, seq))
            .map(|((_, s), _)| *s)
            .collect();
        for s in doomed {
            self.remove(&RequestId {
                client: session.client,
                session: session.session,
                seq: s,
            });
        }
    }

    /// The arrival time of the oldest pending request, for the request timer.
    pub fn oldest_arrival_ms(&self) -> Option<u64> {
        self.by_arrival.first_key_value().map(|((t, _), _)| *t)
    }

    /// Finds every request that arrived (or last timed out) at or before `cutoff_ms`, restarts
    /// its timer at `now_ms` and counts the timeout. Returns copies of those requests, oldest
    /// first, with their timeout counts (1 at the first timeout); they stay pending.
    pub fn take_timed_out(&mut self, cutoff_ms: u64, now_ms: u64) -> Vec<(Request, u32)> {
        let expired: Vec<((u64, u64), RequestId)> = self
            .by_arrival
            .iter()
            .take_while(|((t, _), _)| *t <= cutoff_ms)
            .map(|(key, id)| (*key, *id))
            .collect();
        let mut out = Vec::with_capacity(expired.len());
        for (key, id) in expired {
            self.by_arrival.remove(&key);
            let serial = self.next_serial;
            self.next_serial += 1;
            self.by_arrival.insert((now_ms, serial), id);
            let entry = self.timed_entry(&id);
            entry.arrival_ms = now_ms;
            entry.serial = serial;
            entry.timeouts += 1;
            let first = entry.timeouts == 1;
            out.push((entry.request.clone(), entry.timeouts));
            if first {
                self.timed_out += 1;
            }
        }
        out
    }

    /// Whether any pending request has timed out here at least once (and so, at a follower,
    /// was forwarded to the leader).
    pub fn has_timed_out(&self) -> bool {
        self.timed_out > 0
    }

    /// Forgets that requests were proposed in `cid` (e.g. when the instance was decided with
    /// another batch), so that they can be proposed again.
    pub fn unmark_proposed(&mut self, cid: Cid) {
        for per_client in self.by_client.values_mut() {
            for entry in per_client.values_mut() {
                if entry.proposed_in == Some(cid) {
                    entry.proposed_in = None;
                    self.unproposed += 1;
                }
            }
        }
    }

    /// Forgets every proposal mark: a new regency voids the old leader's proposals.
    pub fn unmark_all_proposed(&mut self) {
        for per_client in self.by_client.values_mut() {
            for entry in per_client.values_mut() {
                entry.proposed_in = None;
            }
        }
        self.unproposed = self.len;
    }

    /// Restarts every request's timer and forgets its timeouts: a new regency gets the full
    /// two timeouts before anyone asks to replace its leader.
    pub fn restart_timers(&mut self, now_ms: u64) {
        // In the order the timers ran before, not the hashed map's.
        let ids: Vec<RequestId> = std::mem::take(&mut self.by_arrival).into_values().collect();
        for id in ids {
            let serial = self.next_serial;
            self.next_serial += 1;
            let entry = self.timed_entry(&id);
            entry.arrival_ms = now_ms;
            entry.serial = serial;
            entry.timeouts = 0;
            self.by_arrival.insert((now_ms, serial), id);
        }
        self.timed_out = 0;
    }

    /// Keeps only the requests for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&RequestId) -> bool) {
        let doomed: Vec<RequestId> = self
            .by_arrival
            .values()
            .filter(|id| !keep(id))
            .copied()
            .collect();
        for id in doomed {
            self.remove(&id);
        }
    }

    /// The `max` oldest pending requests (what a STOP carries to the next leader).
    pub fn oldest(&self, max: usize) -> Vec<Request> {
        self.by_arrival
            .values()
            .take(max)
            .filter_map(|id| self.by_client.get(&id.client)?.get(&(id.session, id.seq)))
            .map(|e| e.request.clone())
            .collect()
    }

    /// Cuts a batch for instance `cid`: at most `max_requests` requests and `max_bytes` bytes
    /// (but always at least one request if any is unproposed, so an oversize op cannot wedge the
    /// pool; ops are bounded separately), one request per client per round, each client's
    /// requests in sequence order.
    pub fn cut_batch(&mut self, cid: Cid, max_requests: usize, max_bytes: usize) -> Vec<Request> {
        let mut batch = Vec::new();
        if self.unproposed == 0 || max_requests == 0 {
            return batch;
        }
        let mut clients: Vec<ClientId> = self.client_order.iter().copied().collect();
        if let Some(cursor) = self.fairness_cursor {
            let start = clients.partition_point(|c| *c <= cursor);
            clients.rotate_left(start);
        }
        let mut bytes = 0usize;
        let mut first_served = None;
        'rounds: loop {
            let mut took_any = false;
            for client in &clients {
                let per_client = self.by_client.get_mut(client).expect("client listed");
                let Some(entry) = per_client.values_mut().find(|e| e.proposed_in.is_none()) else {
                    continue;
                };
                let size = entry.request.size_bytes();
                if !batch.is_empty() && bytes + size > max_bytes {
                    break 'rounds;
                }
                entry.proposed_in = Some(cid);
                self.unproposed -= 1;
                bytes += size;
                batch.push(entry.request.clone());
                first_served.get_or_insert(*client);
                took_any = true;
                if batch.len() >= max_requests {
                    break 'rounds;
                }
            }
            if !took_any {
                break;
            }
        }
        if first_served.is_some() {
            self.fairness_cursor = first_served;
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{RequestBody, RequestKind};
    use smr_crypto::PublicKey;

    fn req(client: u8, seq: u64, op_len: usize) -> Request {
        Request {
            body: RequestBody {
                client: PublicKey([client; 32]),
                session: 1,
                seq,
                kind: RequestKind::Ordered,
                op: vec![0; op_len],
            },
            signature: None,
        }
    }

    /// Among requests that arrived in the same millisecond, the one whose timer started first
    /// is the oldest (it was the one with the smallest id): what a STOP carries and what times
    /// out first follow arrival, and the order costs no comparison of client keys.
    #[test]
    fn requests_of_one_millisecond_are_oldest_in_arrival_order() {
        let mut pool = RequestPool::new(100, 1000);
        pool.insert(req(9, 1, 0), 5, true).unwrap();
        pool.insert(req(1, 1, 0), 5, true).unwrap();
        pool.insert(req(5, 1, 0), 5, true).unwrap();
        let firsts = |pool: &RequestPool| -> Vec<u8> {
            pool.oldest(10).iter().map(|r| r.body.client.0[0]).collect()
        };
        assert_eq!(firsts(&pool), vec![9, 1, 5]);
        // A timeout moves the expired to the back in their order; a restart keeps the order.
        pool.insert(req(3, 1, 0), 6, true).unwrap();
        let timed_out: Vec<(u8, u32)> = pool
            .take_timed_out(5, 7)
            .iter()
            .map(|(r, timeouts)| (r.body.client.0[0], *timeouts))
            .collect();
        assert_eq!(timed_out, vec![(9, 1), (1, 1), (5, 1)]);
        assert_eq!(firsts(&pool), vec![3, 9, 1, 5]);
        pool.restart_timers(8);
        assert_eq!(firsts(&pool), vec![3, 9, 1, 5]);
        assert_eq!(pool.oldest_arrival_ms(), Some(8));
        // Removing every request of a client takes it out of the cut's order.
        pool.remove(&req(9, 1, 0).id());
        let cut: Vec<u8> = pool
            .cut_batch(Cid(1), 10, usize::MAX)
            .iter()
            .map(|r| r.body.client.0[0])
            .collect();
        assert_eq!(cut, vec![1, 3, 5]);
    }

    #[test]
    fn batch_takes_one_request_per_client_per_round() {
        let mut pool = RequestPool::new(100, 1000);
        for seq in 1..=10 {
            pool.insert(req(1, seq, 0), 0, true).unwrap();
        }
        pool.insert(req(2, 1, 0), 0, true).unwrap();
        pool.insert(req(3, 1, 0), 0, true).unwrap();
        let batch = pool.cut_batch(Cid(1), 4, usize::MAX);
        let ids: Vec<(u8, u64)> = batch
            .iter()
            .map(|r| (r.body.client.0[0], r.body.seq))
            .collect();
        assert_eq!(ids, vec![(1, 1), (2, 1), (3, 1), (1, 2)]);
        assert_eq!(pool.unproposed(), 8);
    }

    #[test]
    fn next_batch_starts_after_the_client_served_first() {
        let mut pool = RequestPool::new(100, 1000);
        for c in 1..=3 {
            for seq in 1..=3 {
                pool.insert(req(c, seq, 0), 0, true).unwrap();
            }
        }
        let first = pool.cut_batch(Cid(1), 1, usize::MAX);
        let second = pool.cut_batch(Cid(2), 1, usize::MAX);
        assert_eq!(first[0].body.client.0[0], 1);
        assert_eq!(second[0].body.client.0[0], 2);
    }

    #[test]
    fn batch_respects_byte_limit_but_never_starves() {
        let mut pool = RequestPool::new(100, 1000);
        pool.insert(req(1, 1, 5000), 0, true).unwrap();
        pool.insert(req(2, 1, 10), 0, true).unwrap();
        let batch = pool.cut_batch(Cid(1), 100, 1000);
        assert_eq!(batch.len(), 1, "an oversize first request still goes alone");
        let batch = pool.cut_batch(Cid(2), 100, 1000);
        assert_eq!(batch.len(), 1);
        assert!(pool.cut_batch(Cid(3), 100, 1000).is_empty());
    }

    /// Review of issue 15: one session's full window does not keep another session of the key
    /// (its open included) out; the key as a whole holds at most SESSIONS_PER_KEY_IN_POOL
    /// windows.
    #[test]
    fn the_pool_bounds_each_session_and_each_key() {
        let mut pool = RequestPool::new(2, 1000);
        let in_session = |session: u64, seq: u64| Request {
            body: RequestBody {
                session,
                ..req(1, seq, 0).body
            },
            signature: None,
        };
        pool.insert(in_session(1, 1), 0, true).unwrap();
        pool.insert(in_session(1, 2), 0, true).unwrap();
        assert_eq!(
            pool.insert(in_session(1, 3), 0, true),
            Err(PoolRejection::ClientFull)
        );
        // Another process's open (session 0) and its requests still get in.
        pool.insert(in_session(0, u64::MAX), 0, true).unwrap();
        for session in 2..SESSIONS_PER_KEY_IN_POOL as u64 {
            pool.insert(in_session(session, 1), 0, true).unwrap();
            pool.insert(in_session(session, 2), 0, true).unwrap();
        }
        // 2 + 1 + 2 * 6 = 15 of the key's 16: one more, then the key is full.
        pool.insert(in_session(99, 1), 0, true).unwrap();
        assert_eq!(
            pool.insert(in_session(100, 1), 0, true),
            Err(PoolRejection::ClientFull)
        );
        pool.insert(req(2, 1, 0), 0, true).unwrap();
    }

    #[test]
    fn limits_per_client_and_total_are_enforced() {
        let mut pool = RequestPool::new(2, 3);
        pool.insert(req(1, 1, 0), 0, true).unwrap();
        pool.insert(req(1, 2, 0), 0, true).unwrap();
        assert_eq!(
            pool.insert(req(1, 3, 0), 0, true),
            Err(PoolRejection::ClientFull)
        );
        pool.insert(req(2, 1, 0), 0, true).unwrap();
        assert_eq!(
            pool.insert(req(3, 1, 0), 0, true),
            Err(PoolRejection::PoolFull)
        );
        assert_eq!(
            pool.insert(req(1, 1, 0), 0, true),
            Ok(Inserted::AlreadyPending)
        );
        assert_eq!(pool.len(), 3);
    }

    #[test]
    fn timed_out_requests_restart_their_timer() {
        let mut pool = RequestPool::new(10, 10);
        pool.insert(req(1, 1, 0), 0, true).unwrap();
        pool.insert(req(1, 2, 0), 50, true).unwrap();
        let out = pool.take_timed_out(10, 100);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1, 1);
        assert_eq!(pool.oldest_arrival_ms(), Some(50));
        pool.remove(&req(1, 2, 0).id());
        assert_eq!(pool.oldest_arrival_ms(), Some(100));
    }

    /// `has_timed_out` follows every way an entry's timeout count changes: a first timeout
    /// (not a second), removal, `retain`, and a new regency's restart of every timer.
    #[test]
    fn has_timed_out_counts_pending_requests_that_timed_out_once_or_more() {
        let mut pool = RequestPool::new(100, 1000);
        pool.insert(req(1, 1, 0), 0, true).unwrap();
        pool.insert(req(2, 1, 0), 0, true).unwrap();
        pool.insert(req(3, 1, 0), 10, true).unwrap();
        assert!(!pool.has_timed_out());
        assert_eq!(pool.take_timed_out(5, 20).len(), 2);
        assert!(pool.has_timed_out());
        // Second timeouts of the same two, and the third's first: three counted, not five.
        assert_eq!(pool.take_timed_out(20, 30).len(), 3);
        pool.remove(&req(1, 1, 0).id());
        pool.retain(|id| id.client.0[0] != 2);
        assert!(pool.has_timed_out());
        pool.remove(&req(3, 1, 0).id());
        assert!(!pool.has_timed_out());
        // A new regency forgets the timeouts of what is still pending.
        pool.insert(req(4, 1, 0), 40, true).unwrap();
        pool.take_timed_out(40, 50);
        assert!(pool.has_timed_out());
        pool.restart_timers(60);
        assert!(!pool.has_timed_out());
        pool.take_timed_out(60, 70);
        pool.remove(&req(4, 1, 0).id());
        assert!(!pool.has_timed_out());
        assert!(pool.is_empty());
    }

    /// One operation on the pool, for the counters' property test.
    #[derive(Clone, Debug)]
    enum Op {
        /// `(client, seq, signature_checked)`: a checked copy may replace an unchecked one.
        Insert(u8, u64, bool),
        /// Times out everything that arrived at least `age` ms ago.
        TakeTimedOut(u64),
        Remove(u8, u64),
        RemoveUpTo(u8, u64),
        /// Drops every request whose seq is odd (`true`) or even (`false`).
        Retain(bool),
        RestartTimers,
        CutBatch(u64, usize),
        UnmarkProposed(u64),
        UnmarkAllProposed,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0u8..4, 1u64..6, any::<bool>()).prop_map(|(c, s, k)| Op::Insert(c, s, k)),
            3 => (0u64..30).prop_map(Op::TakeTimedOut),
            2 => (0u8..4, 1u64..6).prop_map(|(c, s)| Op::Remove(c, s)),
            1 => (0u8..4, 1u64..6).prop_map(|(c, s)| Op::RemoveUpTo(c, s)),
            1 => any::<bool>().prop_map(Op::Retain),
            1 => Just(Op::RestartTimers),
            2 => (1u64..4, 1usize..4).prop_map(|(cid, max)| Op::CutBatch(cid, max)),
            1 => (1u64..4).prop_map(Op::UnmarkProposed),
            1 => Just(Op::UnmarkAllProposed),
        ]
    }

    proptest::proptest! {
        /// The pool's counters (`len`, `unproposed`, and `has_timed_out`'s count of entries
        /// with a timeout) always equal what its entries say, whatever sequence of operations
        /// adds, times out, replaces, proposes, unmarks or removes them.
        #[test]
        fn the_counters_match_the_entries_after_any_sequence_of_operations(
            ops in proptest::collection::vec((op(), 0u64..20), 0..80)
        ) {
            let mut pool = RequestPool::new(3, 12);
            let mut now = 0u64;
            for (op, elapsed_ms) in ops {
                now += elapsed_ms;
                match op {
                    Op::Insert(c, s, checked) => {
                        let _ = pool.insert(req(c, s, 1), now, checked);
                    }
                    Op::TakeTimedOut(age) => {
                        pool.take_timed_out(now.saturating_sub(age), now);
                    }
                    Op::Remove(c, s) => {
                        pool.remove(&req(c, s, 1).id());
                    }
                    Op::RemoveUpTo(c, s) => {
                        let id = req(c, s, 1).id();
                        pool.remove_up_to(
                            &SessionId { client: id.client, session: id.session },
                            s,
                        );
                    }
                    Op::Retain(odd) => pool.retain(|id| (id.seq % 2 == 1) != odd),
                    Op::RestartTimers => pool.restart_timers(now),
                    Op::CutBatch(cid, max) => {
                        pool.cut_batch(Cid(cid), max, 1 << 20);
                    }
                    Op::UnmarkProposed(cid) => pool.unmark_proposed(Cid(cid)),
                    Op::UnmarkAllProposed => pool.unmark_all_proposed(),
                }
                let entries: Vec<&Entry> =
                    pool.by_client.values().flat_map(|m| m.values()).collect();
                proptest::prop_assert_eq!(pool.len(), entries.len());
                proptest::prop_assert_eq!(pool.by_arrival.len(), entries.len());
                proptest::prop_assert_eq!(
                    pool.unproposed(),
                    entries.iter().filter(|e| e.proposed_in.is_none()).count()
                );
                proptest::prop_assert_eq!(
                    pool.timed_out,
                    entries.iter().filter(|e| e.timeouts > 0).count()
                );
                proptest::prop_assert_eq!(
                    pool.has_timed_out(),
                    entries.iter().any(|e| e.timeouts > 0)
                );
            }
        }
    }
}
