//! Per-peer reply budgets: every message a peer's message makes this replica send back (decisions
//! for a DecisionQuery, StateInfo, state chunks, a SYNC for a stale peer) is paid for from that
//! peer's token bucket of bytes, refilled from `now_ms` (no clock: the engine stays
//! deterministic). A peer that asks faster than the budget refills gets its excess dropped
//! ([`Rejection::RateLimited`]); an honest peer that is catching up is served at the refill
//! rate, never starved (a reply larger than the whole bucket is sent whenever the bucket is
//! full, so no reply the engine can build is refused forever).

use std::collections::BTreeMap;

use crate::message::{Message, ReplicaId};
use crate::rejection::Rejection;

/// Bytes of replies one peer may be sent per second: 64 MiB/s (about 512 Mbit/s), far above
/// what one query at a time needs, and a bound on what a Byzantine peer can make this replica
/// send.
pub const REPLY_BYTES_PER_SECOND: u64 = 64 << 20;

/// The most reply bytes one peer may be sent at once, after it has been quiet for a second.
pub const REPLY_BURST_BYTES: u64 = REPLY_BYTES_PER_SECOND;

/// What every reply costs at least, whatever its size: the work of building and sending a
/// message, so that a flood of tiny queries is bounded too (at most
/// `REPLY_BURST_BYTES / REPLY_OVERHEAD_BYTES` = 16,384 small replies per peer per second).
pub const REPLY_OVERHEAD_BYTES: u64 = 4096;

/// The most decision bytes (batches, by [`Batch::size_bytes`](crate::message::Batch::size_bytes),
/// plus their certificates) in one answer to a DecisionQuery, besides the count limit
/// `max_decisions_per_reply`. One decision is always sent, however large, so catching up
/// never stalls on a batch above this.
pub const MAX_DECISIONS_REPLY_BYTES: u64 = 4 << 20;

/// Bytes one signed vote in a certificate or proof is counted as in a reply (body, signature,
/// framing).
pub const REPLY_VOTE_BYTES: u64 = 160;

/// One peer's bucket.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: u64,
    at_ms: u64,
}

/// The reply budgets of every peer that asked for something (at most n entries).
#[derive(Clone, Debug, Default)]
pub(super) struct ReplyBudgets {
    buckets: BTreeMap<ReplicaId, Bucket>,
}

impl ReplyBudgets {
    /// Takes `cost_bytes` from `peer`'s bucket at `now_ms`, or says no. A bucket starts full,
    /// refills at [`REPLY_BYTES_PER_SECOND`] up to [`REPLY_BURST_BYTES`], and a full bucket pays
    /// for any one reply, however large.
    pub(super) fn try_spend(&mut self, peer: ReplicaId, now_ms: u64, cost_bytes: u64) -> bool {
        let bucket = self.buckets.entry(peer).or_insert(Bucket {
            tokens: REPLY_BURST_BYTES,
            at_ms: now_ms,
        });
        if now_ms > bucket.at_ms {
            let refill = (now_ms - bucket.at_ms).saturating_mul(REPLY_BYTES_PER_SECOND / 1000);
            bucket.tokens = bucket.tokens.saturating_add(refill).min(REPLY_BURST_BYTES);
            bucket.at_ms = now_ms;
        }
        let full = bucket.tokens == REPLY_BURST_BYTES;
        if bucket.tokens < cost_bytes && !full {
            return false;
        }
        bucket.tokens = bucket.tokens.saturating_sub(cost_bytes);
        true
    }
}

/// What a reply costs from its peer's budget: [`REPLY_OVERHEAD_BYTES`] plus an upper estimate
/// of its payload (batches by their size, each signed vote as `REPLY_VOTE_BYTES`).
pub(super) fn reply_cost_bytes(message: &Message) -> u64 {
    let payload = match message {
        Message::Decisions(decisions) => decisions.iter().map(decision_bytes).sum(),
        Message::StateInfo {
            checkpoints,
            executed,
            ..
        } => {
            40 * checkpoints.len() as u64
                + executed
                    .as_ref()
                    .map_or(0, |d| REPLY_VOTE_BYTES * d.certificate.len() as u64)
        }
        Message::StateChunk { bytes, decided, .. } => {
            bytes.len() as u64
                + decided
                    .as_ref()
                    .map_or(0, |d| REPLY_VOTE_BYTES * d.certificate.len() as u64)
        }
        Message::Sync(sync) => sync
            .body
            .proofs
            .iter()
            .map(|sd| {
                let decided = sd
                    .body
                    .last_decided
                    .as_ref()
                    .map_or(0, |d| REPLY_VOTE_BYTES * d.certificate.len() as u64);
                let prepared: u64 = sd
                    .body
                    .prepared
                    .iter()
                    .map(|p| {
                        p.batch.size_bytes() as u64 + REPLY_VOTE_BYTES * (p.writes.len() as u64 + 1)
                    })
                    .sum();
                REPLY_VOTE_BYTES + decided + prepared
            })
            .sum(),
        _ => 0,
    };
    REPLY_OVERHEAD_BYTES.saturating_add(payload)
}

/// The bytes one decision is counted as in a reply (its batch and certificate).
pub(super) fn decision_bytes(decision: &crate::message::Decision) -> u64 {
    decision.batch.size_bytes() as u64 + REPLY_VOTE_BYTES * decision.certificate.len() as u64
}

/// The rejection for a reply dropped because its peer's budget is spent.
pub(super) fn over_budget(what: &'static str) -> Rejection {
    Rejection::RateLimited(what)
}
