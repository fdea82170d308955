//! Engine parameters: who the replicas are, which clients are admitted, and the limits and
//! timeouts every handler enforces.

use std::collections::BTreeSet;

use smr_crypto::PublicKey;
use smr_modes::Quorums;

use crate::clients::{ClientLimits, MAX_CLIENT_WINDOW};
use crate::message::ReplicaId;

/// Which client keys the replicas serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientPolicy {
    /// Any key may submit requests (for open benchmarking).
    Any,
    /// Only these keys.
    Allowed(BTreeSet<PublicKey>),
}

impl ClientPolicy {
    /// Whether `key` may submit requests. The verifier refuses a request whose client is not
    /// admitted ([`Rejection::ClientNotAdmitted`](crate::Rejection::ClientNotAdmitted)),
    /// whether it arrives directly or inside another message; smr-transport refuses the
    /// client's connection already.
    pub fn admits(&self, key: &PublicKey) -> bool {
        match self {
            ClientPolicy::Any => true,
            ClientPolicy::Allowed(keys) => keys.contains(key),
        }
    }
}

/// Bounds on everything a peer can make the engine hold (docs/design.md §7.7). The defaults
/// are in `Limits::default()`; [`EngineConfig::validate`] refuses 0 where at least 1 is
/// needed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most requests in one batch (also in one STOP or forward).
    pub max_batch_requests: usize,
    /// Most bytes of requests in one batch, by [`Request::size_bytes`](crate::Request::size_bytes)
    /// (a single larger request still goes alone).
    pub max_batch_bytes: usize,
    /// Largest operation a client may submit, in bytes.
    pub max_op_bytes: usize,
    /// Requests a client session may have in the pool at once (a key, all its sessions
    /// together, [`SESSIONS_PER_KEY_IN_POOL`](crate::pool::SESSIONS_PER_KEY_IN_POOL) times
    /// that); also the size, in sequence numbers, of a session's reply-cache window
    /// (docs/design.md §3.7).
    pub max_pending_per_client: usize,
    /// Requests the pool holds in all.
    pub max_pending_total: usize,
    /// Consensus instances the leader runs at once (docs/design.md §3.4, "Pipelining").
    pub max_instances_in_flight: u64,
    /// How many cids past its last executed one a replica keeps votes and proposals (its
    /// window); at least `max_instances_in_flight`.
    pub max_instances_ahead: u64,
    /// Most decisions sent in one answer to a decision query.
    pub max_decisions_per_reply: usize,
    /// Most decided batches kept for peers that are behind, even if no checkpoint becomes
    /// stable.
    pub max_log_entries: usize,
    /// Cids between checkpoints: one is taken after every cid that is a multiple of it
    /// (docs/design.md §3.11).
    pub checkpoint_period: u64,
    /// Largest checkpoint encoding (service state plus client table), in bytes, a replica
    /// accepts in a transfer.
    pub max_state_bytes: u64,
    /// Most checkpoint bytes per state-transfer chunk.
    pub state_chunk_bytes: usize,
    /// Most clients the client table keeps a record for (docs/design.md §3.7, "Bounds"): a
    /// new client in a full table takes the place of the least recently executed one, if that
    /// one has been idle for `client_expiry_cids`; otherwise its request is refused at
    /// execution. With an allow-list of clients, at least the list's length, so that no listed
    /// client is ever evicted.
    pub max_clients: u64,
    /// Most bytes of cached replies per client; older replies beyond it are dropped (a retry
    /// of one is then refused as stale, never executed again).
    pub max_client_reply_bytes: u64,
    /// Most bytes of cached replies in all, at least `max_client_reply_bytes`; beyond it the
    /// replies of the least recently executed clients are dropped first.
    pub max_reply_cache_bytes: u64,
    /// Cids a client must have executed nothing for before its record may be evicted: how long,
    /// in decisions, a client's retry is guaranteed an answer from the reply cache rather than
    /// a second execution.
    pub client_expiry_cids: u64,
    /// Most sessions the client table keeps per client key (docs/design.md §3.7, "Bounds"):
    /// every `Client` (every `smr client` process) opens a session, and a key's new session
    /// beyond this takes the place of that key's least recently executed one (`max_clients`
    /// bounds all sessions together).
    pub max_sessions_per_client: u64,
}

impl Limits {
    /// The client table's bounds under these limits.
    pub fn client_limits(&self) -> ClientLimits {
        ClientLimits {
            window: self.max_pending_per_client as u64,
            max_clients: self.max_clients,
            max_sessions_per_client: self.max_sessions_per_client,
            max_client_reply_bytes: self.max_client_reply_bytes,
            max_reply_cache_bytes: self.max_reply_cache_bytes,
            client_expiry_cids: self.client_expiry_cids,
        }
    }
}

/// The largest value each limit may take, by field name, in the field order of [`Limits`].
/// Every bound keeps every computation the engine makes from the limits (window ends,
/// `4 × checkpoint_period` horizons, byte sums, `as usize` conversions on 32-bit targets) far
/// from overflow, whatever cid it is added to (cid arithmetic saturates); each is still far
/// above any sensible setting.
pub const LIMIT_MAXIMA: [(&str, u64); 17] = [
    ("max_batch_requests", 1 << 20),
    ("max_batch_bytes", 1 << 30),
    ("max_op_bytes", 1 << 30),
    ("max_pending_per_client", crate::clients::MAX_CLIENT_WINDOW),
    ("max_pending_total", 1 << 30),
    ("max_instances_in_flight", 1 << 20),
    ("max_instances_ahead", 1 << 20),
    ("max_decisions_per_reply", 1 << 16),
    ("max_log_entries", 1 << 30),
    ("checkpoint_period", 1 << 30),
    ("max_state_bytes", 1 << 40),
    ("state_chunk_bytes", MAX_STATE_CHUNK_BYTES as u64),
    ("max_clients", 1 << 24),
    ("max_client_reply_bytes", 1 << 30),
    ("max_reply_cache_bytes", 1 << 40),
    ("client_expiry_cids", 1 << 40),
    ("max_sessions_per_client", 1 << 24),
];

impl Limits {
    /// Every limit with its name, in the field order (the names of [`LIMIT_MAXIMA`]).
    pub fn named(&self) -> [(&'static str, u64); 17] {
        [
            ("max_batch_requests", self.max_batch_requests as u64),
            ("max_batch_bytes", self.max_batch_bytes as u64),
            ("max_op_bytes", self.max_op_bytes as u64),
            ("max_pending_per_client", self.max_pending_per_client as u64),
            ("max_pending_total", self.max_pending_total as u64),
            ("max_instances_in_flight", self.max_instances_in_flight),
            ("max_instances_ahead", self.max_instances_ahead),
            (
                "max_decisions_per_reply",
                self.max_decisions_per_reply as u64,
            ),
            ("max_log_entries", self.max_log_entries as u64),
            ("checkpoint_period", self.checkpoint_period),
            ("max_state_bytes", self.max_state_bytes),
            ("state_chunk_bytes", self.state_chunk_bytes as u64),
            ("max_clients", self.max_clients),
            ("max_client_reply_bytes", self.max_client_reply_bytes),
            ("max_reply_cache_bytes", self.max_reply_cache_bytes),
            ("client_expiry_cids", self.client_expiry_cids),
            ("max_sessions_per_client", self.max_sessions_per_client),
        ]
    }

    /// The first limit above its bound in [`LIMIT_MAXIMA`], as [`InvalidConfig::LimitTooLarge`].
    ///
    /// # Errors
    /// The first limit, in field order, that is too large.
    pub fn check_maxima(&self) -> Result<(), InvalidConfig> {
        for ((limit, value), (_, max)) in self.named().into_iter().zip(LIMIT_MAXIMA) {
            if value > max {
                return Err(InvalidConfig::LimitTooLarge { limit, value, max });
            }
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_batch_requests: 1024,
            max_batch_bytes: 1024 * 1024,
            max_op_bytes: 64 * 1024,
            max_pending_per_client: 64,
            max_pending_total: 100_000,
            max_instances_in_flight: 4,
            max_instances_ahead: 64,
            max_decisions_per_reply: 16,
            max_log_entries: 10_000,
            checkpoint_period: 1000,
            max_state_bytes: 1 << 30,
            state_chunk_bytes: 1 << 20,
            max_clients: ClientLimits::default().max_clients,
            max_client_reply_bytes: ClientLimits::default().max_client_reply_bytes,
            max_reply_cache_bytes: ClientLimits::default().max_reply_cache_bytes,
            client_expiry_cids: ClientLimits::default().client_expiry_cids,
            max_sessions_per_client: ClientLimits::default().max_sessions_per_client,
        }
    }
}

/// Timeouts, in milliseconds of the engine's `now`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// A request pending this long is forwarded by a follower to the leader, and at its next
    /// expiry makes the replica send STOP (docs/design.md §3.9); sooner if the leader has been
    /// silent for the longer of this and two `heartbeat_ms` (§3.9, "A silent leader"). Also the
    /// first leader-change timeout, which doubles with each change that fails in a row (up to 64
    /// times).
    pub request_timeout_ms: u64,
    /// First retransmission of votes, proposals, STOP and STOPDATA after no progress; doubles
    /// up to `retransmit_max_ms` (docs/design.md §3.5). Also the least time between two
    /// decision queries, two SYNC queries, or two SYNCs sent to one stale peer.
    pub retransmit_initial_ms: u64,
    /// The longest retransmission interval; also how long a state transfer waits for its
    /// source before it tries another.
    pub retransmit_max_ms: u64,
    /// How often every replica broadcasts its heartbeat (its regency and last executed cid;
    /// docs/design.md §3.5, "Quiet clusters converge") and repeats its newest unstable
    /// checkpoint announcement. A follower that hears nothing from its leader for two of these
    /// (and at least one `request_timeout_ms`) while a forwarded request waits sends STOP
    /// (docs/design.md §3.9, "A silent leader").
    pub heartbeat_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            request_timeout_ms: 1000,
            retransmit_initial_ms: 100,
            retransmit_max_ms: 2000,
            heartbeat_ms: 500,
        }
    }
}

/// Everything an engine needs to know. Build one, then [`EngineConfig::validate`] it: the
/// engine only takes a [`ValidEngineConfig`].
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The mode, n and f, and every threshold derived from them (docs/design.md §3.3).
    pub quorums: Quorums,
    /// This replica's id, `0..n`.
    pub me: ReplicaId,
    /// Public key of replica i at index i; exactly n of them.
    pub replica_keys: Vec<PublicKey>,
    /// Which client keys may submit requests.
    pub clients: ClientPolicy,
    /// Bounds on batches, pools, windows, logs and state transfer.
    pub limits: Limits,
    /// Request, retransmission and heartbeat timeouts.
    pub timeouts: Timeouts,
}

/// A rule an [`EngineConfig`] breaks. Configuration loaded from files is checked with
/// friendlier errors before it gets here; these guard embedders. Each message says what to
/// change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidConfig {
    /// `replica_keys` must hold exactly one key per replica.
    #[error(
        "replica_keys holds {keys} keys but the quorums are for n = {n} replicas; give exactly one public key per replica, replica i's at index i"
    )]
    ReplicaKeyCount {
        /// Keys given.
        keys: usize,
        /// Replicas in the quorums.
        n: usize,
    },
    /// `me` must name one of the replicas.
    #[error("me = {me} is not a replica id; ids are 0..{n} for n = {n} replicas")]
    IdOutOfRange {
        /// The id given.
        me: ReplicaId,
        /// Replicas in the quorums.
        n: usize,
    },
    /// A limit that must be at least 1 is 0.
    #[error("limits.{limit} is 0; set it to at least 1")]
    LimitNotPositive {
        /// The field of [`Limits`].
        limit: &'static str,
    },
    /// The window of instances a replica keeps must hold every instance the leader runs at
    /// once.
    #[error(
        "limits.max_instances_ahead ({ahead}) is below limits.max_instances_in_flight ({in_flight}); raise max_instances_ahead to at least {in_flight} or lower max_instances_in_flight"
    )]
    InstancesAheadBelowInFlight {
        /// `max_instances_ahead`.
        ahead: u64,
        /// `max_instances_in_flight`.
        in_flight: u64,
    },
    /// The decision log must hold every decision since the last checkpoint: compacting the
    /// store at a checkpoint keeps the decisions after it from the log.
    #[error(
        "limits.max_log_entries ({log}) is below limits.checkpoint_period ({period}); raise max_log_entries to at least {period}"
    )]
    LogBelowCheckpointPeriod {
        /// `max_log_entries`.
        log: usize,
        /// `checkpoint_period`.
        period: u64,
    },
    /// A limit above its bound in [`LIMIT_MAXIMA`] (for `state_chunk_bytes`, what a frame can
    /// carry; for the others, what keeps the engine's arithmetic on them from overflowing).
    #[error("limits.{limit} is {value}; it may be at most {max}")]
    LimitTooLarge {
        /// The field of [`Limits`].
        limit: &'static str,
        /// The value given.
        value: u64,
        /// The largest allowed.
        max: u64,
    },
    /// The largest message the limits allow does not fit a frame
    /// ([`crate::frame_limits::MAX_FRAME_BYTES`]): the engine could build a message no
    /// transport can carry (a SYNC of n STOPDATA with `max_instances_ahead` full batches each,
    /// a reply of `max_decisions_per_reply` batches, a STOP of `max_batch_requests` requests).
    #[error(
        "the largest {message} these limits allow is {bytes} bytes, above the {max} bytes a frame can carry; lower limits.max_batch_bytes, limits.max_batch_requests, limits.max_op_bytes, limits.max_instances_ahead, limits.max_decisions_per_reply, limits.state_chunk_bytes or limits.max_client_reply_bytes (or use fewer replicas)",
        max = crate::frame_limits::MAX_FRAME_BYTES
    )]
    MessageTooLarge {
        /// The message type whose bound is too large.
        message: &'static str,
        /// Its bound, in bytes.
        bytes: u64,
    },
    /// The largest write-ahead-log record the limits allow does not fit a record
    /// ([`crate::storage::MAX_RECORD_BYTES`]): a replica would stop when it persists it (a
    /// leader's SYNC, a prepared or decided batch).
    #[error(
        "the largest {record} record these limits allow is {bytes} bytes, above the {max} bytes a write-ahead-log record can hold; lower limits.max_batch_bytes, limits.max_batch_requests, limits.max_op_bytes or limits.max_instances_ahead (or use fewer replicas)",
        max = crate::storage::MAX_RECORD_BYTES
    )]
    RecordTooLarge {
        /// The record type whose bound is too large (a [`crate::frame_limits::RecordBounds`]
        /// name).
        record: &'static str,
        /// Its bound, in bytes.
        bytes: u64,
    },
    /// The reply cache's total bound must hold one client's.
    #[error(
        "limits.max_reply_cache_bytes ({total}) is below limits.max_client_reply_bytes ({per_client}); raise max_reply_cache_bytes to at least {per_client}"
    )]
    ReplyCacheBelowPerClient {
        /// `max_reply_cache_bytes`.
        total: u64,
        /// `max_client_reply_bytes`.
        per_client: u64,
    },
    /// The largest client table these limits allow must fit in half of `max_state_bytes`
    /// (the rest is the service's), or checkpoints could outgrow what state transfer accepts.
    #[error(
        "the client table may reach {table_bytes} bytes (limits.max_clients, max_pending_per_client, max_reply_cache_bytes), more than half of limits.max_state_bytes ({max_state_bytes}); lower those limits or raise max_state_bytes"
    )]
    ClientTableAboveStateBytes {
        /// [`ClientLimits::max_encoded_bytes`].
        table_bytes: u64,
        /// `max_state_bytes`.
        max_state_bytes: u64,
    },
    /// With an allow-list, every listed client must fit in the table, so none is ever evicted.
    #[error(
        "clients lists {listed} keys but limits.max_clients is {max_clients}; raise max_clients to at least {listed}"
    )]
    ClientsAboveMaxClients {
        /// Keys in the allow-list.
        listed: usize,
        /// `max_clients`.
        max_clients: u64,
    },
    /// A timeout that must be at least 1 ms is 0.
    #[error("timeouts.{timeout} is 0; set it to at least 1 ms")]
    TimeoutNotPositive {
        /// The field of [`Timeouts`].
        timeout: &'static str,
    },
    /// Retransmission backs off from the initial interval up to the maximum, never down.
    #[error(
        "timeouts.retransmit_max_ms ({max_ms}) is below timeouts.retransmit_initial_ms ({initial_ms}); raise retransmit_max_ms to at least {initial_ms} or lower retransmit_initial_ms"
    )]
    RetransmitMaxBelowInitial {
        /// `retransmit_max_ms`.
        max_ms: u64,
        /// `retransmit_initial_ms`.
        initial_ms: u64,
    },
    /// A timeout longer than [`MAX_TIMEOUT_MS`]: a replica would look dead for longer than a
    /// day, and deadlines computed from it could leave the clock's range.
    #[error("timeouts.{timeout} is {ms} ms; it may be at most {max_ms} ms (one day)", max_ms = MAX_TIMEOUT_MS)]
    TimeoutTooLong {
        /// The field of [`Timeouts`].
        timeout: &'static str,
        /// The value given, in milliseconds.
        ms: u64,
    },
}

/// The longest any timeout may be: one day, in milliseconds.
pub const MAX_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;

/// The largest state-transfer chunk: 15 MiB. The transport's frame limit is never below
/// 16 MiB, and a chunk's frame also carries its header and, on the last chunk, the decision
/// proof (Q signed votes): the spare MiB keeps every chunk inside one frame.
pub const MAX_STATE_CHUNK_BYTES: usize = 15 * 1024 * 1024;

/// Refuses limits under which the engine could build a write-ahead-log record of more than
/// `max_record_bytes` ([`crate::frame_limits::RecordBounds`]).
pub(crate) fn check_records_fit(
    quorums: &Quorums,
    limits: &Limits,
    max_record_bytes: u64,
) -> Result<(), InvalidConfig> {
    let (record, bytes) = crate::frame_limits::RecordBounds::new(quorums, limits).largest();
    if bytes > max_record_bytes {
        return Err(InvalidConfig::RecordTooLarge { record, bytes });
    }
    Ok(())
}

impl EngineConfig {
    /// Checks the invariants the engine relies on, and hands back the config as a
    /// [`ValidEngineConfig`], the only form [`crate::Engine`] takes.
    ///
    /// # Errors
    /// The first rule the config breaks, in the order of the [`InvalidConfig`] variants (and
    /// of the fields within [`Limits`] and [`Timeouts`]).
    pub fn validate(self) -> Result<ValidEngineConfig, InvalidConfig> {
        let n = self.quorums.n();
        if self.replica_keys.len() != n {
            return Err(InvalidConfig::ReplicaKeyCount {
                keys: self.replica_keys.len(),
                n,
            });
        }
        if self.me as usize >= n {
            return Err(InvalidConfig::IdOutOfRange { me: self.me, n });
        }
        let l = &self.limits;
        let positive_limits: [(&'static str, u64); 13] = [
            ("max_batch_requests", l.max_batch_requests as u64),
            ("max_batch_bytes", l.max_batch_bytes as u64),
            ("max_pending_per_client", l.max_pending_per_client as u64),
            ("max_pending_total", l.max_pending_total as u64),
            ("max_instances_in_flight", l.max_instances_in_flight),
            ("max_decisions_per_reply", l.max_decisions_per_reply as u64),
            ("max_log_entries", l.max_log_entries as u64),
            ("checkpoint_period", l.checkpoint_period),
            ("state_chunk_bytes", l.state_chunk_bytes as u64),
            ("max_clients", l.max_clients),
            ("max_client_reply_bytes", l.max_client_reply_bytes),
            ("max_reply_cache_bytes", l.max_reply_cache_bytes),
            ("client_expiry_cids", l.client_expiry_cids),
        ];
        if let Some((limit, _)) = positive_limits.iter().find(|(_, value)| *value == 0) {
            return Err(InvalidConfig::LimitNotPositive { limit });
        }
        if l.max_instances_ahead < l.max_instances_in_flight {
            return Err(InvalidConfig::InstancesAheadBelowInFlight {
                ahead: l.max_instances_ahead,
                in_flight: l.max_instances_in_flight,
            });
        }
        if (l.max_log_entries as u64) < l.checkpoint_period {
            return Err(InvalidConfig::LogBelowCheckpointPeriod {
                log: l.max_log_entries,
                period: l.checkpoint_period,
            });
        }
        l.check_maxima()?;
        let (message, bytes) = crate::frame_limits::MessageBounds::new(&self.quorums, l).largest();
        if bytes > crate::frame_limits::MAX_FRAME_BYTES {
            return Err(InvalidConfig::MessageTooLarge { message, bytes });
        }
        check_records_fit(&self.quorums, l, crate::storage::MAX_RECORD_BYTES as u64)?;
        if l.max_pending_per_client as u64 > MAX_CLIENT_WINDOW {
            return Err(InvalidConfig::LimitTooLarge {
                limit: "max_pending_per_client",
                value: l.max_pending_per_client as u64,
                max: MAX_CLIENT_WINDOW,
            });
        }
        if l.max_reply_cache_bytes < l.max_client_reply_bytes {
            return Err(InvalidConfig::ReplyCacheBelowPerClient {
                total: l.max_reply_cache_bytes,
                per_client: l.max_client_reply_bytes,
            });
        }
        let table_bytes = l.client_limits().max_encoded_bytes();
        if table_bytes > l.max_state_bytes / 2 {
            return Err(InvalidConfig::ClientTableAboveStateBytes {
                table_bytes,
                max_state_bytes: l.max_state_bytes,
            });
        }
        if let ClientPolicy::Allowed(keys) = &self.clients {
            if keys.len() as u64 > l.max_clients {
                return Err(InvalidConfig::ClientsAboveMaxClients {
                    listed: keys.len(),
                    max_clients: l.max_clients,
                });
            }
        }
        let t = &self.timeouts;
        let positive_timeouts: [(&'static str, u64); 3] = [
            ("request_timeout_ms", t.request_timeout_ms),
            ("retransmit_initial_ms", t.retransmit_initial_ms),
            ("heartbeat_ms", t.heartbeat_ms),
        ];
        if let Some((timeout, _)) = positive_timeouts.iter().find(|(_, value)| *value == 0) {
            return Err(InvalidConfig::TimeoutNotPositive { timeout });
        }
        if t.retransmit_max_ms < t.retransmit_initial_ms {
            return Err(InvalidConfig::RetransmitMaxBelowInitial {
                max_ms: t.retransmit_max_ms,
                initial_ms: t.retransmit_initial_ms,
            });
        }
        let bounded_timeouts: [(&'static str, u64); 4] = [
            ("request_timeout_ms", t.request_timeout_ms),
            ("retransmit_initial_ms", t.retransmit_initial_ms),
            ("retransmit_max_ms", t.retransmit_max_ms),
            ("heartbeat_ms", t.heartbeat_ms),
        ];
        if let Some((timeout, ms)) = bounded_timeouts.iter().find(|(_, ms)| *ms > MAX_TIMEOUT_MS) {
            return Err(InvalidConfig::TimeoutTooLong { timeout, ms: *ms });
        }
        Ok(ValidEngineConfig(self))
    }
}

/// An [`EngineConfig`] that passed [`EngineConfig::validate`]; the only way to make one. Read
/// it through `Deref`; [`ValidEngineConfig::into_inner`] gives the config back to change it
/// (and validate it again).
#[derive(Clone, Debug)]
pub struct ValidEngineConfig(EngineConfig);

impl ValidEngineConfig {
    /// The config, to change and validate again.
    pub fn into_inner(self) -> EngineConfig {
        self.0
    }
}

impl std::ops::Deref for ValidEngineConfig {
    type Target = EngineConfig;

    fn deref(&self) -> &EngineConfig {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smr_modes::Mode;

    fn config() -> EngineConfig {
        let quorums = Quorums::new(Mode::Bft, 4, 1).expect("n = 4, f = 1 is a BFT config");
        EngineConfig {
            quorums,
            me: 3,
            replica_keys: (0..4u8).map(|i| PublicKey([i; 32])).collect(),
            clients: ClientPolicy::Any,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
        }
    }

    type ZeroLimit = fn(&mut Limits);
    type ZeroTimeout = fn(&mut Timeouts);

    fn error_of(change: impl FnOnce(&mut EngineConfig)) -> InvalidConfig {
        let mut cfg = config();
        change(&mut cfg);
        cfg.validate().expect_err("the change breaks a rule")
    }

    #[test]
    fn default_limits_and_timeouts_are_valid() {
        let valid = config().validate().expect("valid test config");
        assert_eq!(valid.me, 3, "Deref reads the config");
        assert_eq!(valid.into_inner().limits, Limits::default());
        let cft = EngineConfig {
            quorums: Quorums::new(Mode::Cft, 3, 1).expect("n = 3, f = 1 is a CFT config"),
            me: 0,
            replica_keys: vec![PublicKey([0; 32]); 3],
            ..config()
        };
        cft.validate().expect("valid CFT config");
    }

    #[test]
    fn wrong_number_of_replica_keys() {
        let err = error_of(|c| {
            c.replica_keys.pop();
        });
        assert_eq!(err, InvalidConfig::ReplicaKeyCount { keys: 3, n: 4 });
        assert!(
            err.to_string()
                .contains("exactly one public key per replica"),
            "{err}"
        );
        let err = error_of(|c| c.replica_keys.push(PublicKey([9; 32])));
        assert_eq!(err, InvalidConfig::ReplicaKeyCount { keys: 5, n: 4 });
    }

    #[test]
    fn id_out_of_range() {
        let err = error_of(|c| c.me = 4);
        assert_eq!(err, InvalidConfig::IdOutOfRange { me: 4, n: 4 });
        assert!(err.to_string().contains("ids are 0..4"), "{err}");
    }

    #[test]
    fn every_limit_that_must_be_positive() {
        let zeroed: [(&str, ZeroLimit); 13] = [
            ("max_batch_requests", |l| l.max_batch_requests = 0),
            ("max_batch_bytes", |l| l.max_batch_bytes = 0),
            ("max_pending_per_client", |l| l.max_pending_per_client = 0),
            ("max_pending_total", |l| l.max_pending_total = 0),
            ("max_instances_in_flight", |l| l.max_instances_in_flight = 0),
            ("max_decisions_per_reply", |l| l.max_decisions_per_reply = 0),
            ("max_log_entries", |l| l.max_log_entries = 0),
            ("checkpoint_period", |l| l.checkpoint_period = 0),
            ("state_chunk_bytes", |l| l.state_chunk_bytes = 0),
            ("max_clients", |l| l.max_clients = 0),
            ("max_client_reply_bytes", |l| l.max_client_reply_bytes = 0),
            ("max_reply_cache_bytes", |l| l.max_reply_cache_bytes = 0),
            ("client_expiry_cids", |l| l.client_expiry_cids = 0),
        ];
        for (name, zero) in zeroed {
            let err = error_of(|c| zero(&mut c.limits));
            assert_eq!(err, InvalidConfig::LimitNotPositive { limit: name });
            assert_eq!(
                err.to_string(),
                format!("limits.{name} is 0; set it to at least 1")
            );
        }
    }

    #[test]
    fn log_shorter_than_a_checkpoint_period() {
        // Compaction at a checkpoint keeps the decisions after it from the log: a log capped
        // below one period would drop durable decisions (found by review: max_log_entries 1,
        // checkpoint_period 4 lost cids 5 and 6 from the store).
        let err = error_of(|c| {
            c.limits.max_log_entries = 1;
            c.limits.checkpoint_period = 4;
        });
        assert_eq!(
            err,
            InvalidConfig::LogBelowCheckpointPeriod { log: 1, period: 4 }
        );
        assert!(err.to_string().contains("at least 4"), "{err}");
        let mut at_the_bound = config();
        at_the_bound.limits.max_log_entries = 4;
        at_the_bound.limits.checkpoint_period = 4;
        at_the_bound
            .validate()
            .expect("a log of one period is enough");
    }

    #[test]
    fn limits_whose_largest_record_the_log_cannot_hold_are_refused_naming_the_keys() {
        // With MAX_RECORD_BYTES equal to the frame limit no valid config reaches it (a record
        // is never larger than the largest message), so this checks the rule itself against a
        // smaller log limit.
        let c = config();
        let bounds = crate::frame_limits::RecordBounds::new(&c.quorums, &c.limits);
        let (record, bytes) = bounds.largest();
        assert_eq!(record, "sync");
        assert_eq!(check_records_fit(&c.quorums, &c.limits, bytes), Ok(()));
        let err = check_records_fit(&c.quorums, &c.limits, bytes - 1).unwrap_err();
        assert_eq!(err, InvalidConfig::RecordTooLarge { record, bytes });
        let text = err.to_string();
        for key in [
            "limits.max_batch_bytes",
            "limits.max_batch_requests",
            "limits.max_op_bytes",
            "limits.max_instances_ahead",
        ] {
            assert!(text.contains(key), "{text}");
        }
    }

    #[test]
    fn state_chunk_above_the_frame_limit() {
        let err = error_of(|c| c.limits.state_chunk_bytes = MAX_STATE_CHUNK_BYTES + 1);
        assert_eq!(
            err,
            InvalidConfig::LimitTooLarge {
                limit: "state_chunk_bytes",
                value: MAX_STATE_CHUNK_BYTES as u64 + 1,
                max: MAX_STATE_CHUNK_BYTES as u64,
            }
        );
        let mut at_the_bound = config();
        at_the_bound.limits.state_chunk_bytes = MAX_STATE_CHUNK_BYTES;
        at_the_bound.validate().expect("15 MiB chunks are valid");
    }

    #[test]
    fn every_limit_above_its_bound() {
        // Issue 12 item 3: checkpoint_period = 2^63 - 1 was accepted and then overflowed
        // `4 * period`. Every limit is bounded; the bound itself is accepted.
        for (i, (name, max)) in LIMIT_MAXIMA.into_iter().enumerate() {
            let set = |l: &mut Limits, v: u64| {
                let v = v as usize;
                match i {
                    0 => l.max_batch_requests = v,
                    1 => l.max_batch_bytes = v,
                    2 => l.max_op_bytes = v,
                    3 => l.max_pending_per_client = v,
                    4 => l.max_pending_total = v,
                    5 => l.max_instances_in_flight = v as u64,
                    6 => l.max_instances_ahead = v as u64,
                    7 => l.max_decisions_per_reply = v,
                    8 => l.max_log_entries = v,
                    9 => l.checkpoint_period = v as u64,
                    10 => l.max_state_bytes = v as u64,
                    11 => l.state_chunk_bytes = v,
                    12 => l.max_clients = v as u64,
                    13 => l.max_client_reply_bytes = v as u64,
                    14 => l.max_reply_cache_bytes = v as u64,
                    15 => l.client_expiry_cids = v as u64,
                    _ => l.max_sessions_per_client = v as u64,
                }
            };
            let mut at_bound = Limits::default();
            set(&mut at_bound, max);
            assert_eq!(at_bound.check_maxima(), Ok(()), "{name} at its bound");
            let mut above = Limits::default();
            set(&mut above, max + 1);
            let err = above.check_maxima().unwrap_err();
            assert_eq!(
                err,
                InvalidConfig::LimitTooLarge {
                    limit: name,
                    value: max + 1,
                    max
                }
            );
            assert_eq!(
                err.to_string(),
                format!("limits.{name} is {}; it may be at most {max}", max + 1)
            );
        }
        let err = error_of(|c| {
            c.limits.checkpoint_period = 9_223_372_036_854_775_807;
            c.limits.max_log_entries = usize::MAX;
        });
        assert!(matches!(
            err,
            InvalidConfig::LimitTooLarge {
                limit: "max_log_entries",
                ..
            }
        ));
    }

    #[test]
    fn client_table_bounds_are_checked_against_each_other_and_the_state_bound() {
        let err = error_of(|c| c.limits.max_pending_per_client = MAX_CLIENT_WINDOW as usize + 1);
        assert_eq!(
            err,
            InvalidConfig::LimitTooLarge {
                limit: "max_pending_per_client",
                value: MAX_CLIENT_WINDOW + 1,
                max: MAX_CLIENT_WINDOW,
            }
        );
        let err = error_of(|c| {
            c.limits.max_client_reply_bytes = 10;
            c.limits.max_reply_cache_bytes = 9;
        });
        assert_eq!(
            err,
            InvalidConfig::ReplyCacheBelowPerClient {
                total: 9,
                per_client: 10
            }
        );
        let err = error_of(|c| c.limits.max_state_bytes = 1 << 20);
        let table_bytes = Limits::default().client_limits().max_encoded_bytes();
        assert_eq!(
            err,
            InvalidConfig::ClientTableAboveStateBytes {
                table_bytes,
                max_state_bytes: 1 << 20
            }
        );
        assert!(table_bytes < 100 << 20, "defaults: {table_bytes} bytes");
        let err = error_of(|c| {
            c.clients = ClientPolicy::Allowed((0..3u8).map(|i| PublicKey([100 + i; 32])).collect());
            c.limits.max_clients = 2;
        });
        assert_eq!(
            err,
            InvalidConfig::ClientsAboveMaxClients {
                listed: 3,
                max_clients: 2
            }
        );
    }

    #[test]
    fn every_timeout_longer_than_a_day() {
        let too_long: [(&str, ZeroTimeout); 4] = [
            ("request_timeout_ms", |t| {
                t.request_timeout_ms = MAX_TIMEOUT_MS + 1
            }),
            ("retransmit_initial_ms", |t| {
                t.retransmit_initial_ms = MAX_TIMEOUT_MS + 1;
                t.retransmit_max_ms = MAX_TIMEOUT_MS + 1;
            }),
            ("retransmit_max_ms", |t| {
                t.retransmit_max_ms = MAX_TIMEOUT_MS + 1
            }),
            ("heartbeat_ms", |t| t.heartbeat_ms = MAX_TIMEOUT_MS + 1),
        ];
        for (name, lengthen) in too_long {
            let err = error_of(|c| lengthen(&mut c.timeouts));
            assert_eq!(
                err,
                InvalidConfig::TimeoutTooLong {
                    timeout: name,
                    ms: MAX_TIMEOUT_MS + 1
                }
            );
        }
        let mut at_the_bound = config();
        at_the_bound.timeouts = Timeouts {
            request_timeout_ms: MAX_TIMEOUT_MS,
            retransmit_initial_ms: MAX_TIMEOUT_MS,
            retransmit_max_ms: MAX_TIMEOUT_MS,
            heartbeat_ms: MAX_TIMEOUT_MS,
        };
        at_the_bound.validate().expect("one-day timeouts are valid");
    }

    #[test]
    fn instances_ahead_below_in_flight() {
        let err = error_of(|c| {
            c.limits.max_instances_in_flight = 8;
            c.limits.max_instances_ahead = 7;
        });
        assert_eq!(
            err,
            InvalidConfig::InstancesAheadBelowInFlight {
                ahead: 7,
                in_flight: 8
            }
        );
        assert!(
            err.to_string()
                .contains("raise max_instances_ahead to at least 8"),
            "{err}"
        );
        let mut equal = config();
        equal.limits.max_instances_in_flight = 8;
        equal.limits.max_instances_ahead = 8;
        equal
            .validate()
            .expect("a window exactly as wide as the pipeline is valid");
    }

    #[test]
    fn every_timeout_that_must_be_positive() {
        let zeroed: [(&str, ZeroTimeout); 3] = [
            ("request_timeout_ms", |t| t.request_timeout_ms = 0),
            ("retransmit_initial_ms", |t| t.retransmit_initial_ms = 0),
            ("heartbeat_ms", |t| t.heartbeat_ms = 0),
        ];
        for (name, zero) in zeroed {
            let err = error_of(|c| zero(&mut c.timeouts));
            assert_eq!(err, InvalidConfig::TimeoutNotPositive { timeout: name });
            assert_eq!(
                err.to_string(),
                format!("timeouts.{name} is 0; set it to at least 1 ms")
            );
        }
    }

    #[test]
    fn retransmit_max_below_initial() {
        let err = error_of(|c| {
            c.timeouts.retransmit_initial_ms = 300;
            c.timeouts.retransmit_max_ms = 299;
        });
        assert_eq!(
            err,
            InvalidConfig::RetransmitMaxBelowInitial {
                max_ms: 299,
                initial_ms: 300
            }
        );
        assert!(
            err.to_string()
                .contains("raise retransmit_max_ms to at least 300"),
            "{err}"
        );
    }
}
