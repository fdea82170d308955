//! Engine parameters: who the replicas are, which clients are admitted, and the limits and
//! timeouts every handler enforces.

use std::collections::BTreeSet;

use smr_crypto::PublicKey;
use smr_modes::Quorums;

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
    pub fn admits(&self, key: &PublicKey) -> bool {
        match self {
            ClientPolicy::Any => true,
            ClientPolicy::Allowed(keys) => keys.contains(key),
        }
    }
}

/// Bounds on everything a peer can make the engine hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most requests in one batch.
    pub max_batch_requests: usize,
    /// Most bytes of requests in one batch (a single larger request still goes alone).
    pub max_batch_bytes: usize,
    /// Largest operation a client may submit.
    pub max_op_bytes: usize,
    /// Requests a client may have in flight; also the size of its reply-cache window.
    pub max_pending_per_client: usize,
    /// Requests the pool holds in all.
    pub max_pending_total: usize,
    /// Consensus instances the leader runs at once.
    pub max_instances_in_flight: u64,
    /// How far past its last executed cid a replica keeps votes and proposals.
    pub max_instances_ahead: u64,
    /// Decisions sent in one answer to a query.
    pub max_decisions_per_reply: usize,
    /// Decided batches kept for peers that are behind.
    pub max_log_entries: usize,
    /// Decisions between checkpoints.
    pub checkpoint_period: u64,
    /// Largest checkpoint (service state plus client table) a replica accepts in a transfer.
    pub max_state_bytes: u64,
    /// Bytes per state-transfer chunk.
    pub state_chunk_bytes: usize,
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
        }
    }
}

/// Timeouts, in milliseconds of the engine's `now`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// A request pending this long is forwarded to the leader (and, at the next expiry, starts
    /// a leader change once the synchronization phase exists).
    pub request_timeout_ms: u64,
    /// First retransmission of votes and proposals after no progress; doubles up to the max.
    pub retransmit_initial_ms: u64,
    pub retransmit_max_ms: u64,
    /// How often the leader announces its last decided cid.
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

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub quorums: Quorums,
    pub me: ReplicaId,
    /// Public key of replica i at index i.
    pub replica_keys: Vec<PublicKey>,
    pub clients: ClientPolicy,
    pub limits: Limits,
    pub timeouts: Timeouts,
}

impl EngineConfig {
    /// Checks the invariants the engine relies on. Configuration loaded from files is validated
    /// with friendlier errors before it gets here; this guards embedders.
    pub fn validate(&self) -> Result<(), String> {
        if self.replica_keys.len() != self.quorums.n() {
            return Err(format!(
                "{} replica keys for n = {}",
                self.replica_keys.len(),
                self.quorums.n()
            ));
        }
        if self.me as usize >= self.quorums.n() {
            return Err(format!(
                "replica id {} is not below n = {}",
                self.me,
                self.quorums.n()
            ));
        }
        let l = &self.limits;
        if l.max_batch_requests == 0
            || l.max_batch_bytes == 0
            || l.max_pending_per_client == 0
            || l.max_pending_total == 0
            || l.max_instances_in_flight == 0
            || l.max_instances_ahead < l.max_instances_in_flight
            || l.max_decisions_per_reply == 0
            || l.max_log_entries == 0
            || l.checkpoint_period == 0
            || l.state_chunk_bytes == 0
        {
            return Err(format!(
                "limits must be positive and max_instances_ahead >= max_instances_in_flight: {l:?}"
            ));
        }
        let t = &self.timeouts;
        if t.request_timeout_ms == 0
            || t.retransmit_initial_ms == 0
            || t.retransmit_max_ms < t.retransmit_initial_ms
            || t.heartbeat_ms == 0
        {
            return Err(format!("timeouts must be positive: {t:?}"));
        }
        Ok(())
    }
}
