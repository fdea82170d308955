//! The client's side of the protocol, sans-IO like the replica engine.
//!
//! A client completes a request when enough replicas sent the same result: f+1 in BFT (one
//! of them is correct), 1 in CFT, and Q for unordered reads (which go to every replica at
//! once).
//!
//! **BFT: every request to every replica at once**, as BFT-SMaRt's clients do. Every follower
//! then holds an ordered request, received on the client's own authenticated connection and
//! so taken without a signature check (docs/design.md §5), before the leader's PROPOSE repeats
//! it: the follower skips the signature check of the PROPOSE's copy too, and its request timer
//! runs from the start, so a silent or censoring leader is replaced after the replicas' own
//! timeouts with no client-side wait in front of them. A request with no result after
//! `retry_timeout_ms` is sent to every replica again, once per `retry_timeout_ms`.
//!
//! **CFT: an ordered request goes first to the replica believed to lead.** Nothing is
//! verified in CFT, so copies at the followers would only cost: on the 2-core benchmark,
//! sending every request to all three replicas took CFT from about 70k to about 30k ops/s
//! (issue 13). The followers learn the request from the leader's PROPOSE. If no result
//! arrives in time the request goes to every replica, which starts the followers' request
//! timers: a silent or censoring leader is then replaced as if the client had broadcast from
//! the start, that much later. "In time" adapts like TCP's retransmission timeout: the
//! smoothed latency of requests the leader alone completed plus four times its mean
//! deviation, at least [`MIN_LEADER_WAIT_MS`] and at most half the retry timeout (also the
//! value before any sample), so a failover costs little more than the replicas' own timeouts
//! and an overloaded cluster does not make its clients broadcast.
//!
//! The believed leader is that of the highest regency at least f+1 replicas reported in their
//! replies (any one in CFT), so a lying replica cannot steer the client's first sends. Many
//! requests may be outstanding, up to the window the replicas allow per client; replies are
//! matched by sequence number. A request that times out is resent with the same seq, which the
//! replicas deduplicate, so retries stay exactly-once.
//!
//! Each engine is one *session* (docs/design.md §3.7, "Sessions"): before its first request
//! it sends an *open request* ([`ClientEngine::open`], [`OPEN_SESSION`]) to every replica,
//! and the replicated client table assigns it the next session number when the open executes;
//! the engine takes the number once as many replicas sent it as a result needs. Every request
//! then carries (and signs) that session, with seqs from 1. Exactly-once is kept per (key,
//! session), so any number of processes may share a key, and no seq depends on a clock. The
//! open's replies find this process by its *routing tag*, a random number the caller picks
//! (at or above [`SESSION_NUMBER_LIMIT`]) and its connections announce. A request the
//! replicas refuse (stale, from an expired session, or with the client table full) completes
//! with that [`ReplyStatus`] once as many replicas said so as a result needs, so one lying
//! replica cannot make a client give up.

use std::collections::BTreeMap;
use std::sync::Arc;

use smr_crypto::{Digest, Signer};
use smr_modes::Quorums;

use crate::clients::SESSION_NUMBER_LIMIT;
use crate::message::{
    ClientId, Message, Regency, ReplicaId, Reply, ReplyStatus, Request, RequestBody, RequestKind,
    OPEN_SESSION,
};

/// Why [`ClientEngine::submit`] refused a request; nothing was sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClientError {
    /// The window is full: `max_outstanding` requests are outstanding, or the next seq would
    /// be a whole window above the oldest outstanding one. Holds the number outstanding; retry
    /// once one completes or is abandoned.
    #[error("{0} requests are already outstanding, the most this client may have in flight")]
    TooManyOutstanding(usize),
    /// The operation is longer than `max_op_bytes`; replicas would refuse it.
    #[error("operation of {size_bytes} bytes exceeds the limit of {max_bytes} bytes")]
    OpTooLarge {
        /// The operation's length in bytes.
        size_bytes: usize,
        /// The configured `max_op_bytes`.
        max_bytes: usize,
    },
    /// The session is not open yet: call [`ClientEngine::open`] and wait until
    /// [`ClientEngine::session`] is set (the open's reply quorum).
    #[error("the client session is not open yet")]
    SessionNotOpen,
}

/// A message the client driver must send: the client engine's only kind of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAction {
    /// Send to every replica.
    Broadcast(Message),
    /// Send to one replica.
    Send {
        /// The replica.
        to: ReplicaId,
        /// The message (a [`Message::Request`]).
        message: Message,
    },
}

/// A finished request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    /// The request's sequence number, as [`ClientEngine::submit`] returned it; 0 for the open
    /// request ([`ClientEngine::open`]), whose result is the session number (8 bytes,
    /// little-endian) when `status` is [`ReplyStatus::Executed`].
    pub seq: u64,
    /// What enough replicas agreed on: [`ReplyStatus::Executed`] with the service's result,
    /// or a refusal with an empty result.
    pub status: ReplyStatus,
    /// The result that enough replicas agreed on.
    pub result: Vec<u8>,
}

/// The shortest wait for the leader before a request goes to every replica.
pub const MIN_LEADER_WAIT_MS: u64 = 100;

#[derive(Debug)]
struct Outstanding {
    request: Request,
    /// Status and the digest of the result, per replica that answered: replies are counted,
    /// not kept, so what a Byzantine replica's results make the client hold does not grow
    /// with their size (the reply that completes a request carries the result).
    replies: BTreeMap<ReplicaId, (ReplyStatus, Digest)>,
    deadline_ms: u64,
    needed: usize,
    submitted_ms: u64,
    /// Sent to every replica (from the start, or after the leader took too long).
    broadcast: bool,
    /// An unordered read of a client with no session yet, due to fall back to ordering once
    /// the session is open.
    falling_back: bool,
}

/// Counts `from`'s reply toward `entry` and returns its (status, result) once `entry.needed`
/// replicas sent it alike, or else the size of the largest group of alike replies so far.
/// Alike means the same status and result digest (blake3: no replica can make two results
/// collide); only the digest is kept.
fn tally(
    entry: &mut Outstanding,
    from: ReplicaId,
    status: ReplyStatus,
    result: Vec<u8>,
) -> Result<(ReplyStatus, Vec<u8>), usize> {
    let alike = (status, smr_crypto::digest(&result));
    entry.replies.insert(from, alike);
    let mut counts: BTreeMap<(ReplyStatus, Digest), usize> = BTreeMap::new();
    for reply in entry.replies.values() {
        *counts.entry(*reply).or_default() += 1;
    }
    if counts.get(&alike).is_some_and(|c| *c >= entry.needed) {
        return Ok((status, result));
    }
    Err(counts.values().copied().max().unwrap_or(0))
}

/// What a client needs to know about the cluster and its own limits.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The cluster's mode and thresholds: how many matching replies complete a request, and
    /// which replica leads a regency.
    pub quorums: Quorums,
    /// Whether [`RequestKind::Unordered`] reads skip consensus. Off, they are sent as ordered
    /// requests; on, ordered requests too need Q matching replies (docs/design.md §3.8).
    pub unordered_reads_enabled: bool,
    /// Requests in flight; must not exceed the replicas' `max_pending_per_client`.
    pub max_outstanding: usize,
    /// Longest operation, in bytes: the replicas' `max_op_bytes`.
    pub max_op_bytes: usize,
    /// How long, in milliseconds, a request sent to every replica waits for its replies before
    /// it is sent to every replica again; half of it caps the wait for the leader alone.
    pub retry_timeout_ms: u64,
}

/// The sans-IO client (see the module docs): it numbers, signs and tracks requests, counts
/// replies, and says what to send; the driver ([`crate::driver::Client`]) does the sending and
/// keeps the clock.
pub struct ClientEngine {
    cfg: ClientConfig,
    id: ClientId,
    /// The open's routing tag (module docs).
    tag: u64,
    /// The session, once the open's reply quorum gave it.
    session: Option<u64>,
    /// The open request, while it waits for its reply quorum.
    opening: Option<Outstanding>,
    signer: Option<Arc<dyn Signer>>,
    next_seq: u64,
    outstanding: BTreeMap<u64, Outstanding>,
    /// The highest regency each replica reported in a reply.
    reported_regency: BTreeMap<ReplicaId, Regency>,
    /// Smoothed latency and mean deviation (ms) of requests the leader alone completed.
    leader_latency_ms: Option<(f64, f64)>,
    /// Sends to every replica that [`ClientEngine::on_timer`] made, counted per request: the
    /// first after the wait for the leader alone, then each retry.
    pub retries: u64,
}

impl ClientEngine {
    /// A client whose identity is `signer`'s public key, with no session yet: call
    /// [`ClientEngine::open`] first. It signs requests with `signer` only in BFT. `tag` routes
    /// the open's replies to this process: the caller picks it at random, at or above
    /// [`SESSION_NUMBER_LIMIT`] (the driver does: [`crate::driver::Client::new_tag`]), and its
    /// connections announce it; no clock is involved.
    ///
    /// # Panics
    /// If `cfg.max_outstanding` is 0, or `tag` is below [`SESSION_NUMBER_LIMIT`].
    pub fn new(cfg: ClientConfig, signer: Arc<dyn Signer>, tag: u64) -> ClientEngine {
        assert!(
            cfg.max_outstanding > 0,
            "a client needs a window of at least one request"
        );
        assert!(
            tag >= SESSION_NUMBER_LIMIT,
            "a routing tag is at or above SESSION_NUMBER_LIMIT, where no session number is"
        );
        let id = signer.public_key();
        let signer = cfg.quorums.requires_signatures().then_some(signer);
        ClientEngine {
            cfg,
            id,
            tag,
            session: None,
            opening: None,
            signer,
            next_seq: 1,
            outstanding: BTreeMap::new(),
            reported_regency: BTreeMap::new(),
            leader_latency_ms: None,
            retries: 0,
        }
    }

    /// How long a request sent to the leader alone (CFT) waits before going to every replica
    /// (see the module docs).
    pub fn leader_wait_ms(&self) -> u64 {
        let ceiling = (self.cfg.retry_timeout_ms / 2).max(1);
        match self.leader_latency_ms {
            None => ceiling,
            Some((smoothed, deviation)) => ((smoothed + 4.0 * deviation).ceil() as u64)
                .max(MIN_LEADER_WAIT_MS)
                .min(ceiling),
        }
    }

    /// The leader of the highest regency that f+1 replicas reported (one in CFT, where replicas
    /// do not lie); regency 0 until then.
    pub fn believed_leader(&self) -> ReplicaId {
        let vouching = if self.cfg.quorums.requires_signatures() {
            self.cfg.quorums.f() + 1
        } else {
            1
        };
        let mut reported: Vec<Regency> = self.reported_regency.values().copied().collect();
        reported.sort_unstable_by(|a, b| b.cmp(a));
        let regency = reported.get(vouching - 1).copied().unwrap_or(Regency::ZERO);
        self.cfg.quorums.leader_of(regency.0)
    }

    /// The client's identity: its public key.
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// The client's session, once open ([`ClientEngine::open`]).
    pub fn session(&self) -> Option<u64> {
        self.session
    }

    /// The routing tag the open's replies find this process by ([`ClientEngine::new`]).
    pub fn tag(&self) -> u64 {
        self.tag
    }

    /// Whether the open request waits for its reply quorum.
    pub fn opening(&self) -> bool {
        self.opening.is_some()
    }

    /// Starts opening the session at `now_ms`, unless it is open or opening: an open request
    /// ([`OPEN_SESSION`], seq = the routing tag, no operation) to every replica, resent like
    /// any request at its deadline ([`ClientEngine::on_timer`]). It completes in
    /// [`ClientEngine::on_reply`] (as [`Completed`] with seq 0) once as many replicas sent the
    /// same session number as an ordered request's result needs; [`ClientEngine::session`]
    /// is then set. A refusal (`TableFull`) completes it too, and `open` may be called again.
    pub fn open(&mut self, now_ms: u64) -> Vec<ClientAction> {
        if self.session.is_some() || self.opening.is_some() {
            return Vec::new();
        }
        let request = Request::new(
            RequestBody {
                client: self.id,
                session: OPEN_SESSION,
                seq: self.tag,
                kind: RequestKind::Ordered,
                op: Vec::new(),
            },
            self.signer.as_deref(),
        );
        self.opening = Some(Outstanding {
            request: request.clone(),
            replies: BTreeMap::new(),
            deadline_ms: now_ms + self.cfg.retry_timeout_ms,
            needed: self
                .cfg
                .quorums
                .replies_ordered(self.cfg.unordered_reads_enabled),
            submitted_ms: now_ms,
            broadcast: true,
            falling_back: false,
        });
        vec![ClientAction::Broadcast(Message::Request(request))]
    }

    /// Requests submitted and neither completed nor abandoned.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Starts a request at `now_ms`; returns its seq and what to send: in CFT an ordered
    /// request to the [`believed_leader`](ClientEngine::believed_leader), with a deadline
    /// ([`ClientEngine::next_deadline_ms`]) [`leader_wait_ms`](ClientEngine::leader_wait_ms)
    /// later; otherwise (BFT, and unordered reads) the request to every replica, with a
    /// deadline `retry_timeout_ms` later.
    ///
    /// # Errors
    /// [`ClientError::SessionNotOpen`] before the session is open,
    /// [`ClientError::TooManyOutstanding`] when the window is full,
    /// [`ClientError::OpTooLarge`] when `op` exceeds `max_op_bytes`.
    pub fn submit(
        &mut self,
        now_ms: u64,
        kind: RequestKind,
        op: Vec<u8>,
    ) -> Result<(u64, Vec<ClientAction>), ClientError> {
        // An unordered read needs no session: it is never deduplicated, and until the session
        // is open it carries the routing tag, which this process's connections announce, so
        // its answers find it. One that falls back to ordering waits for the session
        // ([`ClientEngine::on_timer`]).
        let reads_unordered = self.cfg.unordered_reads_enabled && kind == RequestKind::Unordered;
        let session = match self.session {
            Some(session) => session,
            None if reads_unordered => self.tag,
            None => return Err(ClientError::SessionNotOpen),
        };
        if self.outstanding.len() >= self.cfg.max_outstanding {
            return Err(ClientError::TooManyOutstanding(self.outstanding.len()));
        }
        if op.len() > self.cfg.max_op_bytes {
            return Err(ClientError::OpTooLarge {
                size_bytes: op.len(),
                max_bytes: self.cfg.max_op_bytes,
            });
        }
        // The replicas' window is anchored at the highest executed seq; sending a seq more than
        // a window above the oldest outstanding one would let them forget it.
        if let Some(oldest) = self.outstanding.keys().next() {
            if self.next_seq >= oldest + self.cfg.max_outstanding as u64 {
                return Err(ClientError::TooManyOutstanding(self.outstanding.len()));
            }
        }
        // Unordered reads are linearizable only if ordered requests also wait for Q replies;
        // with that off, a read goes through ordering like everything else.
        let kind = if self.cfg.unordered_reads_enabled {
            kind
        } else {
            RequestKind::Ordered
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let needed = match kind {
            RequestKind::Ordered => self
                .cfg
                .quorums
                .replies_ordered(self.cfg.unordered_reads_enabled),
            RequestKind::Unordered => self.cfg.quorums.replies_unordered(),
        };
        let request = Request::new(
            RequestBody {
                client: self.id,
                session,
                seq,
                kind,
                op,
            },
            self.signer.as_deref(),
        );
        // In CFT, ordered requests go to the leader alone at first; in BFT, every request
        // goes to every replica at once (see the module docs).
        let leader_first = kind == RequestKind::Ordered && !self.cfg.quorums.requires_signatures();
        let (action, wait_ms, broadcast) = if leader_first {
            (
                ClientAction::Send {
                    to: self.believed_leader(),
                    message: Message::Request(request.clone()),
                },
                self.leader_wait_ms(),
                false,
            )
        } else {
            (
                ClientAction::Broadcast(Message::Request(request.clone())),
                self.cfg.retry_timeout_ms,
                true,
            )
        };
        self.outstanding.insert(
            seq,
            Outstanding {
                request,
                replies: BTreeMap::new(),
                deadline_ms: now_ms + wait_ms,
                needed,
                submitted_ms: now_ms,
                broadcast,
                falling_back: false,
            },
        );
        Ok((seq, vec![action]))
    }

    /// Takes a reply that arrived on replica `from`'s authenticated connection, and returns the
    /// request it completes, if it does: once `replies_ordered` (f+1 in BFT, 1 in CFT; Q with
    /// unordered reads enabled) or, for an unordered read, `replies_unordered` (Q) replicas
    /// sent identical results. A refusal (a status other than [`ReplyStatus::Executed`])
    /// completes the request the same way: only once as many replicas sent it. An unordered
    /// read that can no longer reach Q identical results (the replicas answered from different
    /// states) becomes due at once: the caller's next [`ClientEngine::on_timer`], at `now_ms`
    /// ([`ClientEngine::next_deadline_ms`]), sends it again as an ordered request. A reply
    /// naming another replica, client or session is ignored; any other reply's regency counts
    /// toward [`ClientEngine::believed_leader`], even a late one.
    pub fn on_reply(&mut self, now_ms: u64, from: ReplicaId, reply: Reply) -> Option<Completed> {
        if reply.replica != from || reply.client != self.id {
            return None;
        }
        let to_open = reply.session == OPEN_SESSION && reply.seq == self.tag;
        if !to_open && Some(reply.session) != self.session && reply.session != self.tag {
            return None;
        }
        let reported = self.reported_regency.entry(from).or_insert(Regency::ZERO);
        *reported = (*reported).max(reply.regency);
        if to_open {
            return self.on_open_reply(now_ms, from, reply);
        }
        let n = self.cfg.quorums.n();
        let entry = self
            .outstanding
            .get_mut(&reply.seq)
            .filter(|entry| entry.request.body.session == reply.session)?;
        let (status, winner) = match tally(entry, from, reply.status, reply.result) {
            Ok(won) => won,
            Err(most) => {
                // An unordered read whose replies already disagree too much for any result
                // to reach Q, even if every replica still silent agreed with the largest
                // group, falls back to ordering at once (at the next `on_timer`) rather than
                // at its deadline.
                let silent = n.saturating_sub(entry.replies.len());
                if entry.request.body.kind == RequestKind::Unordered
                    && most.saturating_add(silent) < entry.needed
                {
                    entry.deadline_ms = entry.deadline_ms.min(now_ms);
                }
                return None;
            }
        };
        let done = self.outstanding.remove(&reply.seq).expect("found above");
        if !done.broadcast {
            // Only requests that went to the leader alone measure the leader path (as TCP
            // samples no retransmitted segment).
            self.note_leader_latency(now_ms.saturating_sub(done.submitted_ms) as f64);
        }
        if status == ReplyStatus::SessionExpired && Some(done.request.body.session) == self.session
        {
            // A reply quorum says the session was evicted: the next ordered request opens a
            // new one ([`ClientEngine::open`]); seqs go on from here, which is fine in a new
            // session.
            self.session = None;
        }
        Some(Completed {
            seq: reply.seq,
            status,
            result: winner,
        })
    }

    /// A reply to the open request: at the reply quorum, the session is open (or the open
    /// was refused, and may be tried again).
    fn on_open_reply(&mut self, now_ms: u64, from: ReplicaId, reply: Reply) -> Option<Completed> {
        let entry = self.opening.as_mut()?;
        let (status, winner) = tally(entry, from, reply.status, reply.result).ok()?;
        if status == ReplyStatus::Executed {
            // f+1 (BFT) or Q matching replies include a correct replica's, which is a number
            // the table assigned: never outside FIRST_SESSION..SESSION_NUMBER_LIMIT.
            let number = <[u8; 8]>::try_from(winner.as_slice()).map(u64::from_le_bytes);
            match number {
                Ok(session) if (1..SESSION_NUMBER_LIMIT).contains(&session) => {
                    self.session = Some(session);
                    // Reads that fell back to ordering waited for the session: due now.
                    for o in self.outstanding.values_mut() {
                        if o.request.body.session == self.tag && o.falling_back {
                            o.deadline_ms = o.deadline_ms.min(now_ms);
                        }
                    }
                }
                _ => return None,
            }
        }
        self.opening = None;
        Some(Completed {
            seq: 0,
            status,
            result: winner,
        })
    }

    /// RFC 6298's estimator: gains 1/8 for the mean and 1/4 for the deviation.
    fn note_leader_latency(&mut self, sample_ms: f64) {
        self.leader_latency_ms = Some(match self.leader_latency_ms {
            None => (sample_ms, sample_ms / 2.0),
            Some((smoothed, deviation)) => (
                smoothed + (sample_ms - smoothed) / 8.0,
                deviation + ((sample_ms - smoothed).abs() - deviation) / 4.0,
            ),
        });
    }

    /// Forgets a request the caller gave up on. It may still execute; its reply is ignored.
    pub fn abandon(&mut self, seq: u64) {
        self.outstanding.remove(&seq);
    }

    /// The earliest retry deadline, in the caller's milliseconds, if any request is
    /// outstanding: call [`ClientEngine::on_timer`] then.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.outstanding
            .values()
            .chain(self.opening.as_ref())
            .map(|o| o.deadline_ms)
            .min()
    }

    /// Sends every request whose deadline is at or before `now_ms` to every replica, and sets
    /// its next deadline `retry_timeout_ms` later. An unordered read that timed out is retried
    /// as an ordered request (same seq, signed again), as its replies may have disagreed during
    /// concurrent writes.
    pub fn on_timer(&mut self, now_ms: u64) -> Vec<ClientAction> {
        let mut actions = Vec::new();
        let mut needs_session = false;
        for o in self.outstanding.values_mut().chain(self.opening.as_mut()) {
            if o.deadline_ms > now_ms {
                continue;
            }
            if o.request.body.kind == RequestKind::Unordered {
                let Some(session) = self.session else {
                    // An ordered request needs a session: open it, and meanwhile ask again
                    // unordered; the open's completion makes this due again.
                    needs_session = true;
                    o.falling_back = true;
                    o.deadline_ms = now_ms + self.cfg.retry_timeout_ms;
                    o.replies.clear();
                    actions.push(ClientAction::Broadcast(Message::Request(o.request.clone())));
                    continue;
                };
                let mut body = o.request.body.clone();
                body.kind = RequestKind::Ordered;
                body.session = session;
                o.request = Request::new(body, self.signer.as_deref());
                o.needed = self
                    .cfg
                    .quorums
                    .replies_ordered(self.cfg.unordered_reads_enabled);
                o.replies.clear();
            }
            o.deadline_ms = now_ms + self.cfg.retry_timeout_ms;
            o.broadcast = true;
            self.retries += 1;
            actions.push(ClientAction::Broadcast(Message::Request(o.request.clone())));
        }
        if needs_session {
            actions.extend(self.open(now_ms));
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smr_crypto::sim::SimKey;
    use smr_modes::Mode;

    const TAG: u64 = SESSION_NUMBER_LIMIT | 0x7a6;

    /// A BFT client (n = 4, f = 1) whose session 1 is open.
    fn client(unordered_reads_enabled: bool) -> ClientEngine {
        client_in(Mode::Bft, unordered_reads_enabled)
    }

    /// A client of four BFT replicas or three CFT ones (f = 1), retry timeout 100 ms.
    fn client_in(mode: Mode, unordered_reads_enabled: bool) -> ClientEngine {
        let n = if mode == Mode::Bft { 4 } else { 3 };
        let cfg = ClientConfig {
            quorums: Quorums::new(mode, n, 1).unwrap(),
            unordered_reads_enabled,
            max_outstanding: 4,
            max_op_bytes: 16,
            retry_timeout_ms: 100,
        };
        opened(ClientEngine::new(
            cfg,
            Arc::new(SimKey::from_seed([1; 32])),
            TAG,
        ))
    }

    /// `c` with its session open as number 1: the open request and the replies of every
    /// replica.
    fn opened(mut c: ClientEngine) -> ClientEngine {
        c.open(0);
        for replica in 0..c.cfg.quorums.n() as ReplicaId {
            c.on_reply(
                0,
                replica,
                open_reply(&c, replica, ReplyStatus::Executed, 1),
            );
        }
        assert_eq!(c.session(), Some(1));
        c
    }

    fn open_reply(
        c: &ClientEngine,
        replica: ReplicaId,
        status: ReplyStatus,
        session: u64,
    ) -> Reply {
        Reply {
            replica,
            client: c.id(),
            session: OPEN_SESSION,
            status,
            seq: c.tag(),
            regency: Regency::ZERO,
            result: if status == ReplyStatus::Executed {
                session.to_le_bytes().to_vec()
            } else {
                Vec::new()
            },
        }
    }

    /// Issue 15 (second review): a session's number comes from the replicated table through
    /// an ordered open request, sent to every replica and taken at the reply quorum; nothing
    /// is submitted before; a refusal completes the open and it may be tried again; replies
    /// for another tag are ignored.
    #[test]
    fn the_session_opens_at_the_reply_quorum_of_its_open_request() {
        let cfg = client(false).cfg;
        let mut c = ClientEngine::new(cfg, Arc::new(SimKey::from_seed([1; 32])), TAG);
        assert_eq!(
            c.submit(0, RequestKind::Ordered, b"op".to_vec()),
            Err(ClientError::SessionNotOpen)
        );
        let open = Request::new(
            RequestBody {
                client: c.id(),
                session: OPEN_SESSION,
                seq: TAG,
                kind: RequestKind::Ordered,
                op: Vec::new(),
            },
            Some(&SimKey::from_seed([1; 32])),
        );
        assert_eq!(
            c.open(5),
            vec![ClientAction::Broadcast(Message::Request(open.clone()))]
        );
        assert_eq!(c.open(6), Vec::new(), "one open at a time");
        assert_eq!(c.next_deadline_ms(), Some(105));
        // Refused by f+1: the open completes unopened, and may be sent again.
        assert_eq!(
            c.on_reply(7, 0, open_reply(&c, 0, ReplyStatus::TableFull, 0)),
            None
        );
        assert_eq!(
            c.on_reply(7, 1, open_reply(&c, 1, ReplyStatus::TableFull, 0)),
            Some(Completed {
                seq: 0,
                status: ReplyStatus::TableFull,
                result: Vec::new(),
            })
        );
        assert_eq!((c.session(), c.opening()), (None, false));
        assert_eq!(
            c.open(8),
            vec![ClientAction::Broadcast(Message::Request(open.clone()))]
        );
        // Resent at its deadline like any request.
        assert_eq!(
            c.on_timer(108),
            vec![ClientAction::Broadcast(Message::Request(open))]
        );
        // One replica's number (perhaps a lie), another tag's reply: not enough.
        assert_eq!(
            c.on_reply(110, 3, open_reply(&c, 3, ReplyStatus::Executed, 9)),
            None
        );
        let other_tag = Reply {
            seq: TAG + 1,
            ..open_reply(&c, 0, ReplyStatus::Executed, 4)
        };
        assert_eq!(c.on_reply(110, 0, other_tag), None);
        assert_eq!(
            c.on_reply(110, 1, open_reply(&c, 1, ReplyStatus::Executed, 4)),
            None
        );
        assert_eq!(
            c.on_reply(110, 2, open_reply(&c, 2, ReplyStatus::Executed, 4)),
            Some(Completed {
                seq: 0,
                status: ReplyStatus::Executed,
                result: 4u64.to_le_bytes().to_vec(),
            })
        );
        assert_eq!(c.session(), Some(4));
        let (seq, actions) = c.submit(111, RequestKind::Ordered, b"op".to_vec()).unwrap();
        let [ClientAction::Broadcast(Message::Request(sent))] = &actions[..] else {
            panic!("expected one request, got {actions:?}");
        };
        assert_eq!((sent.body.session, sent.body.seq, seq), (4, 1, 1));
    }

    fn reply(c: &ClientEngine, replica: ReplicaId, seq: u64, result: &[u8]) -> Reply {
        Reply {
            replica,
            client: c.id(),
            session: 1,
            status: crate::message::ReplyStatus::Executed,
            seq,
            regency: Regency::ZERO,
            result: result.to_vec(),
        }
    }

    #[test]
    fn ordered_request_completes_at_f_plus_one_matching_replies() {
        let mut c = client(false);
        let (seq, _) = c.submit(0, RequestKind::Ordered, b"op".to_vec()).unwrap();
        assert!(c.on_reply(0, 0, reply(&c, 0, seq, b"a")).is_none());
        assert!(
            c.on_reply(0, 1, reply(&c, 1, seq, b"b")).is_none(),
            "different results do not match"
        );
        let done = c
            .on_reply(0, 2, reply(&c, 2, seq, b"a"))
            .expect("two matching replies");
        assert_eq!(done.result, b"a");
    }

    fn refusal(c: &ClientEngine, replica: ReplicaId, seq: u64, status: ReplyStatus) -> Reply {
        Reply {
            status,
            ..reply(c, replica, seq, b"")
        }
    }

    /// Issue 15: a request refused as stale gets an answer that says so, and one Byzantine
    /// replica saying so is not enough to make the client give up: a refusal needs the same
    /// f+1 matching replies as a result.
    #[test]
    fn a_refusal_completes_a_request_only_at_the_reply_quorum() {
        let mut c = client(false);
        let (seq, _) = c.submit(0, RequestKind::Ordered, b"op".to_vec()).unwrap();
        assert!(c
            .on_reply(0, 3, refusal(&c, 3, seq, ReplyStatus::Stale))
            .is_none());
        assert!(c
            .on_reply(0, 0, refusal(&c, 0, seq, ReplyStatus::SessionExpired))
            .is_none());
        assert_eq!(
            c.on_reply(0, 1, refusal(&c, 1, seq, ReplyStatus::Stale)),
            Some(Completed {
                seq,
                status: ReplyStatus::Stale,
                result: Vec::new(),
            })
        );
        // A Byzantine refusal does not outvote the correct replicas' result either.
        let (seq, _) = c.submit(0, RequestKind::Ordered, b"op".to_vec()).unwrap();
        assert!(c
            .on_reply(0, 3, refusal(&c, 3, seq, ReplyStatus::Stale))
            .is_none());
        assert!(c.on_reply(0, 0, reply(&c, 0, seq, b"r")).is_none());
        assert_eq!(
            c.on_reply(0, 1, reply(&c, 1, seq, b"r")),
            Some(Completed {
                seq,
                status: ReplyStatus::Executed,
                result: b"r".to_vec(),
            })
        );
    }

    /// A session the replicas evicted is told so at the reply quorum, and the client opens a
    /// new one for its next ordered request instead of failing every call from then on.
    #[test]
    fn an_expired_session_is_replaced_by_a_new_one() {
        let mut c = client(false);
        let (seq, _) = c.submit(0, RequestKind::Ordered, b"op".to_vec()).unwrap();
        for replica in 0..2 {
            c.on_reply(
                0,
                replica,
                refusal(&c, replica, seq, ReplyStatus::SessionExpired),
            );
        }
        assert_eq!(c.session(), None);
        assert_eq!(
            c.submit(0, RequestKind::Ordered, b"op".to_vec()),
            Err(ClientError::SessionNotOpen)
        );
        assert_eq!(c.open(0).len(), 1);
        for replica in 0..2 {
            c.on_reply(
                0,
                replica,
                open_reply(&c, replica, ReplyStatus::Executed, 7),
            );
        }
        assert_eq!(c.session(), Some(7));
        let (seq, actions) = c.submit(0, RequestKind::Ordered, b"op".to_vec()).unwrap();
        let [ClientAction::Broadcast(Message::Request(sent))] = &actions[..] else {
            panic!("expected one request, got {actions:?}");
        };
        assert_eq!((sent.body.session, sent.body.seq), (7, seq));
    }

    /// Issue 15: an unordered read needs no session, so a fresh process's `--unordered` read
    /// orders nothing: it carries the routing tag until the session is open. One that falls
    /// back to ordering opens the session first, asks again unordered meanwhile, and goes out
    /// ordered, in the session, once it is open.
    #[test]
    fn an_unordered_read_needs_no_session_and_its_fallback_opens_one() {
        let cfg = client(true).cfg;
        let key = SimKey::from_seed([1; 32]);
        let mut c = ClientEngine::new(cfg, Arc::new(key.clone()), TAG);
        let (seq, actions) = c
            .submit(0, RequestKind::Unordered, b"get".to_vec())
            .unwrap();
        let read = Request::new(
            RequestBody {
                client: c.id(),
                session: TAG,
                seq,
                kind: RequestKind::Unordered,
                op: b"get".to_vec(),
            },
            Some(&key),
        );
        assert_eq!(
            actions,
            vec![ClientAction::Broadcast(Message::Request(read.clone()))]
        );
        assert!(!c.opening(), "no open for a read");
        // Q = 3 matching answers for the tag complete it.
        for replica in 0..2 {
            let answer = Reply {
                session: TAG,
                ..reply(&c, replica, seq, b"7")
            };
            assert_eq!(c.on_reply(1, replica, answer), None);
        }
        let answer = Reply {
            session: TAG,
            ..reply(&c, 2, seq, b"7")
        };
        assert_eq!(
            c.on_reply(1, 2, answer).map(|done| done.result),
            Some(b"7".to_vec())
        );
        // A read that times out: it opens the session and asks again unordered.
        let (seq, _) = c
            .submit(10, RequestKind::Unordered, b"get".to_vec())
            .unwrap();
        let again = Request::new(
            RequestBody {
                seq,
                ..read.body.clone()
            },
            Some(&key),
        );
        let open = Request::new(
            RequestBody {
                client: c.id(),
                session: OPEN_SESSION,
                seq: TAG,
                kind: RequestKind::Ordered,
                op: Vec::new(),
            },
            Some(&key),
        );
        assert_eq!(
            c.on_timer(110),
            vec![
                ClientAction::Broadcast(Message::Request(again)),
                ClientAction::Broadcast(Message::Request(open)),
            ]
        );
        for replica in 0..3 {
            c.on_reply(
                120,
                replica,
                open_reply(&c, replica, ReplyStatus::Executed, 5),
            );
        }
        assert_eq!(c.session(), Some(5));
        assert_eq!(c.next_deadline_ms(), Some(120), "the read is due at once");
        let ordered = Request::new(
            RequestBody {
                client: c.id(),
                session: 5,
                seq,
                kind: RequestKind::Ordered,
                op: b"get".to_vec(),
            },
            Some(&key),
        );
        assert_eq!(
            c.on_timer(120),
            vec![ClientAction::Broadcast(Message::Request(ordered))]
        );
    }

    /// Replies are for one session: another process's replies on the same key (should the
    /// transport deliver them here) never count.
    #[test]
    fn a_reply_for_another_session_of_the_key_is_ignored() {
        let mut c = client(false);
        assert_eq!(c.session(), Some(1));
        let (seq, actions) = c.submit(0, RequestKind::Ordered, b"op".to_vec()).unwrap();
        let ClientAction::Broadcast(Message::Request(sent)) = &actions[0] else {
            panic!("expected a request");
        };
        assert_eq!(
            (sent.body.session, sent.body.seq),
            (1, 1),
            "seqs start at 1"
        );
        for replica in 0..4 {
            let other = Reply {
                session: 2,
                ..reply(&c, replica, seq, b"theirs")
            };
            assert!(c.on_reply(0, replica, other).is_none());
        }
        assert_eq!(c.outstanding(), 1);
    }

    #[test]
    fn reply_claiming_another_replica_is_ignored() {
        let mut c = client(false);
        let (seq, _) = c.submit(0, RequestKind::Ordered, b"op".to_vec()).unwrap();
        assert!(c.on_reply(0, 0, reply(&c, 0, seq, b"a")).is_none());
        // Replica 0 cannot vote twice by claiming to be replica 1.
        assert!(c.on_reply(0, 0, reply(&c, 1, seq, b"a")).is_none());
    }

    #[test]
    fn unordered_read_is_ordered_when_unordered_reads_are_disabled() {
        let mut c = client(false);
        let (_, actions) = c
            .submit(0, RequestKind::Unordered, b"get".to_vec())
            .unwrap();
        let ClientAction::Broadcast(Message::Request(r)) = &actions[0] else {
            panic!("expected a request");
        };
        assert_eq!(r.body.kind, RequestKind::Ordered);
        let mut c = client(true);
        let (_, actions) = c
            .submit(0, RequestKind::Unordered, b"get".to_vec())
            .unwrap();
        let ClientAction::Broadcast(Message::Request(r)) = &actions[0] else {
            panic!("expected a request");
        };
        assert_eq!(r.body.kind, RequestKind::Unordered);
    }

    fn destinations(actions: &[ClientAction]) -> Vec<Option<ReplicaId>> {
        actions
            .iter()
            .map(|a| match a {
                ClientAction::Send { to, .. } => Some(*to),
                ClientAction::Broadcast(_) => None,
            })
            .collect()
    }

    fn reply_in(c: &ClientEngine, replica: ReplicaId, seq: u64, regency: Regency) -> Reply {
        Reply {
            regency,
            ..reply(c, replica, seq, b"r")
        }
    }

    /// BFT (issue 13): every follower holds the request before the PROPOSE, authenticated by
    /// its channel (docs/design.md §5).
    #[test]
    fn bft_ordered_request_goes_to_every_replica_at_once_and_again_each_retry_timeout() {
        let mut c = client(false);
        let (_, actions) = c.submit(0, RequestKind::Ordered, b"op".to_vec()).unwrap();
        assert_eq!(destinations(&actions), vec![None], "every replica at once");
        assert_eq!(c.next_deadline_ms(), Some(100));
        assert!(c.on_timer(99).is_empty());
        assert_eq!(destinations(&c.on_timer(100)), vec![None], "again");
        assert_eq!(c.next_deadline_ms(), Some(200), "then every retry timeout");
        assert!(c.on_timer(199).is_empty(), "never more often");
        assert_eq!(c.retries, 1);
    }

    #[test]
    fn cft_ordered_request_goes_to_the_leader_and_to_everyone_after_half_the_retry_timeout() {
        let mut c = client_in(Mode::Cft, false);
        let (_, actions) = c.submit(0, RequestKind::Ordered, b"op".to_vec()).unwrap();
        assert_eq!(destinations(&actions), vec![Some(0)], "leader of regency 0");
        assert_eq!(c.next_deadline_ms(), Some(50));
        assert!(c.on_timer(49).is_empty());
        assert_eq!(destinations(&c.on_timer(50)), vec![None], "then everyone");
        assert_eq!(c.next_deadline_ms(), Some(150), "then every retry timeout");
    }

    #[test]
    fn the_believed_leader_follows_a_regency_that_f_plus_one_replicas_report() {
        let mut c = client(false);
        let (seq, _) = c.submit(0, RequestKind::Ordered, b"op".to_vec()).unwrap();
        // One replica (perhaps lying) reports regency 2: not enough in BFT with f = 1.
        c.on_reply(0, 3, reply_in(&c, 3, seq, Regency(2)));
        assert_eq!(c.believed_leader(), 0);
        c.on_reply(0, 1, reply_in(&c, 1, seq, Regency(1)));
        assert_eq!(
            c.believed_leader(),
            1,
            "two replicas are at regency 1 or more"
        );
        // An old reply does not move it back.
        let (seq, _) = c.submit(0, RequestKind::Ordered, b"op".to_vec()).unwrap();
        c.on_reply(0, 1, reply_in(&c, 1, seq, Regency(0)));
        assert_eq!(c.believed_leader(), 1);
    }

    fn complete(c: &mut ClientEngine, submitted_ms: u64, done_ms: u64) -> Vec<ClientAction> {
        let (seq, actions) = c
            .submit(submitted_ms, RequestKind::Ordered, b"op".to_vec())
            .unwrap();
        c.on_reply(done_ms, 0, reply(c, 0, seq, b"r"))
            .expect("one reply completes in CFT");
        actions
    }

    #[test]
    fn the_wait_for_the_leader_follows_its_latency_between_a_floor_and_half_the_retry_timeout() {
        let cfg = ClientConfig {
            retry_timeout_ms: 2000,
            ..client_in(Mode::Cft, false).cfg
        };
        let mut c = opened(ClientEngine::new(
            cfg,
            Arc::new(SimKey::from_seed([1; 32])),
            TAG,
        ));
        assert_eq!(
            c.leader_wait_ms(),
            1000,
            "no sample yet: half the retry timeout"
        );
        for i in 0..50 {
            complete(&mut c, i * 100, i * 100 + 10);
        }
        assert_eq!(
            c.leader_wait_ms(),
            MIN_LEADER_WAIT_MS,
            "10 ms replies: the floor"
        );
        let (_, _) = c
            .submit(10_000, RequestKind::Ordered, b"op".to_vec())
            .unwrap();
        assert_eq!(c.next_deadline_ms(), Some(10_000 + MIN_LEADER_WAIT_MS));
        let mut c2 = opened(ClientEngine::new(
            c.cfg.clone(),
            Arc::new(SimKey::from_seed([2; 32])),
            TAG,
        ));
        for i in 0..50 {
            complete(&mut c2, i * 1000, i * 1000 + 300);
        }
        let wait = c2.leader_wait_ms();
        assert!((300..=400).contains(&wait), "300 ms replies: {wait} ms");
        for i in 50..100 {
            complete(&mut c2, i * 10_000, i * 10_000 + 5000);
        }
        assert_eq!(
            c2.leader_wait_ms(),
            1000,
            "capped at half the retry timeout"
        );
    }

    #[test]
    fn a_request_that_went_to_everyone_does_not_count_as_a_leader_sample() {
        let mut c = client_in(Mode::Cft, false);
        let (seq, _) = c.submit(0, RequestKind::Ordered, b"op".to_vec()).unwrap();
        assert_eq!(destinations(&c.on_timer(50)), vec![None]);
        c.on_reply(70, 0, reply(&c, 0, seq, b"r"))
            .expect("completes");
        assert_eq!(c.leader_wait_ms(), 50, "still no sample");
    }

    #[test]
    fn unordered_read_goes_to_every_replica_at_once() {
        let mut c = client(true);
        let (_, actions) = c
            .submit(0, RequestKind::Unordered, b"get".to_vec())
            .unwrap();
        assert_eq!(destinations(&actions), vec![None]);
        assert_eq!(c.next_deadline_ms(), Some(100));
    }

    #[test]
    fn an_unordered_read_whose_replies_cannot_reach_q_falls_back_to_ordering_at_once() {
        let mut c = client(true);
        let (seq, _) = c
            .submit(0, RequestKind::Unordered, b"get".to_vec())
            .unwrap();
        // n = 4, Q = 3: "a" and "b" can still each reach 3 with the two silent replicas.
        assert!(c.on_reply(10, 0, reply(&c, 0, seq, b"a")).is_none());
        assert!(c.on_reply(10, 1, reply(&c, 1, seq, b"b")).is_none());
        assert_eq!(
            c.next_deadline_ms(),
            Some(100),
            "still at the retry timeout"
        );
        // A third distinct result: at most 1 + 1 < 3 can match now.
        assert!(c.on_reply(20, 2, reply(&c, 2, seq, b"c")).is_none());
        assert_eq!(c.next_deadline_ms(), Some(20), "due at once");
        let actions = c.on_timer(20);
        let [ClientAction::Broadcast(Message::Request(r))] = &actions[..] else {
            panic!("expected one broadcast request, got {actions:?}");
        };
        assert_eq!((r.body.seq, r.body.kind), (seq, RequestKind::Ordered));
        // The ordered retry completes at Q matching replies (unordered reads are on).
        assert!(c.on_reply(30, 0, reply(&c, 0, seq, b"v")).is_none());
        assert!(c.on_reply(30, 1, reply(&c, 1, seq, b"v")).is_none());
        let done = c
            .on_reply(30, 2, reply(&c, 2, seq, b"v"))
            .expect("Q replies");
        assert_eq!(done.result, b"v");
    }

    #[test]
    fn window_and_op_size_are_enforced() {
        let mut c = client(false);
        for _ in 0..4 {
            c.submit(0, RequestKind::Ordered, vec![]).unwrap();
        }
        assert_eq!(
            c.submit(0, RequestKind::Ordered, vec![]),
            Err(ClientError::TooManyOutstanding(4))
        );
        let mut c = client(false);
        assert!(matches!(
            c.submit(0, RequestKind::Ordered, vec![0; 17]),
            Err(ClientError::OpTooLarge { .. })
        ));
    }
}
