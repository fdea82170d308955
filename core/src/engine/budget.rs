//! Per-peer reply budgets: every message a peer's message makes this replica send back (decisions
//! for a DecisionQuery, StateInfo, state chunks, a SYNC for a stale peer) is paid for from that
//! peer's token bucket of bytes, refilled from `now_ms` (no clock: the engine stays
//! deterministic). A peer that asks faster than the budget refills gets its excess dropped
//! ([`Rejection::RateLimited`]); an honest peer that is catching up is served at the refill
//! rate, never starved (a reply larger than the whole bucket is sent whenever the bucket is
//! full, so no reply the engine can build is refused forever).
//!
//! Clients have their own budgets ([`ClientReplyBudgets`]) for what a duplicate request makes a
//! replica send: the cached reply of a request already executed. Without one, a client whose
//! 1 MiB reply is cached could make every replica resend it for each ~100-byte copy of its
//! request (200 copies in a millisecond made one replica send 200 MiB). A client's bucket
//! holds enough to resend every reply it can have cached once
//! ([`ClientReplyBudget::from_config`]) and refills in one `retransmit_initial_ms`, so an honest
//! client that retries after a timeout is always answered. The same bucket pays for unordered
//! reads: [`REPLY_OVERHEAD_BYTES`] when a read is handed to the service, the result's bytes
//! when it is sent, so a flood of reads costs the service and the network at most a bucket per
//! interval (a reply longer than the bucket minus the overhead is never sent unordered; the
//! client falls back to an ordered request, §3.8).

use std::collections::BTreeMap;

use smr_crypto::PublicKey;

use crate::config::ValidEngineConfig;
use crate::message::{Message, ReplicaId};
use crate::rejection::Rejection;

/// Bytes of replies one peer may be sent per second: 64 MiB/s (about 512 Mbit/s), far above
/// what one query at a time needs, and a bound on what a Byzantine peer can make this replica
/// send.
pub const REPLY_BYTES_PER_SECOND: u64 = 64 << 20;

/// The reply bytes per second a state transfer asks of one source: half of
/// [`REPLY_BYTES_PER_SECOND`], so that the requester's pacing and the source's budget agree
/// with room to spare for the peer's other replies and for network jitter (a burst of
/// [`REPLY_BURST_BYTES`] absorbs more than a second of it). No fetch of a correct requester is
/// refused, and the transfer runs at up to 32 MiB/s per source.
pub const STATE_FETCH_BYTES_PER_SECOND: u64 = REPLY_BYTES_PER_SECOND / 2;

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

/// The shape of every client's cached-reply budget, from the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ClientReplyBudget {
    /// A full bucket: the client's whole reply cache (`max_client_reply_bytes`) plus
    /// [`REPLY_OVERHEAD_BYTES`] for each request of its window (`max_pending_per_client`).
    pub(super) burst_bytes: u64,
    /// An empty bucket is full again after this long: `retransmit_initial_ms`.
    pub(super) refill_ms: u64,
    /// Most clients with a bucket: `max_clients`, as many as the client table holds records.
    pub(super) max_clients: u64,
}

impl ClientReplyBudget {
    pub(super) fn from_config(cfg: &ValidEngineConfig) -> ClientReplyBudget {
        let limits = &cfg.limits;
        ClientReplyBudget {
            burst_bytes: limits.max_client_reply_bytes.saturating_add(
                (limits.max_pending_per_client as u64).saturating_mul(REPLY_OVERHEAD_BYTES),
            ),
            refill_ms: cfg.timeouts.retransmit_initial_ms.max(1),
            max_clients: limits.max_clients.max(1),
        }
    }
}

/// One client's bucket, and when it was last charged (a tick of [`ClientReplyBudgets`]).
#[derive(Clone, Copy, Debug)]
struct ClientBucket {
    bucket: Bucket,
    charged_tick: u64,
}

/// The cached-reply budgets of the clients that sent duplicates: at most
/// [`ClientReplyBudget::max_clients`] buckets. A client without one gets a full bucket; when
/// the map is full, that of the least recently charged client is dropped first (ties cannot
/// happen: every charge takes the next tick). Deterministic: driven by `now_ms` alone.
#[derive(Clone, Debug, Default)]
pub(super) struct ClientReplyBudgets {
    buckets: BTreeMap<PublicKey, ClientBucket>,
    /// The same clients, by the tick of their last charge: the eviction order.
    by_tick: BTreeMap<u64, PublicKey>,
    next_tick: u64,
}

impl ClientReplyBudgets {
    /// Takes `cost_bytes` from `client`'s bucket at `now_ms`, or says no. A bucket starts full,
    /// refills at `burst_bytes` per `refill_ms`, and a full bucket pays for any one reply.
    pub(super) fn try_spend(
        &mut self,
        budget: &ClientReplyBudget,
        client: PublicKey,
        now_ms: u64,
        cost_bytes: u64,
    ) -> bool {
        let tick = self.next_tick;
        self.next_tick += 1;
        let entry = match self.buckets.get_mut(&client) {
            Some(entry) => {
                self.by_tick.remove(&entry.charged_tick);
                entry
            }
            None => {
                while self.buckets.len() as u64 >= budget.max_clients {
                    let Some((_, oldest)) = self.by_tick.pop_first() else {
                        break;
                    };
                    self.buckets.remove(&oldest);
                }
                self.buckets.entry(client).or_insert(ClientBucket {
                    bucket: Bucket {
                        tokens: budget.burst_bytes,
                        at_ms: now_ms,
                    },
                    charged_tick: tick,
                })
            }
        };
        entry.charged_tick = tick;
        self.by_tick.insert(tick, client);
        let bucket = &mut entry.bucket;
        if now_ms > bucket.at_ms {
            let refill = u128::from(now_ms - bucket.at_ms) * u128::from(budget.burst_bytes)
                / u128::from(budget.refill_ms);
            let refill = u64::try_from(refill).unwrap_or(u64::MAX);
            bucket.tokens = bucket.tokens.saturating_add(refill).min(budget.burst_bytes);
            bucket.at_ms = now_ms;
        }
        let full = bucket.tokens >= budget.burst_bytes;
        if bucket.tokens < cost_bytes && !full {
            return false;
        }
        bucket.tokens = bucket.tokens.saturating_sub(cost_bytes);
        true
    }

    /// Clients with a bucket.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        debug_assert_eq!(self.buckets.len(), self.by_tick.len());
        self.buckets.len()
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
        Message::Reply(reply) => reply.result.len() as u64,
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

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: ClientReplyBudget = ClientReplyBudget {
        burst_bytes: 1000,
        refill_ms: 100,
        max_clients: 2,
    };

    fn key(i: u8) -> PublicKey {
        PublicKey([i; 32])
    }

    #[test]
    fn a_client_bucket_pays_its_burst_then_refills_in_one_interval() {
        let mut budgets = ClientReplyBudgets::default();
        assert!(budgets.try_spend(&BUDGET, key(1), 0, 600));
        assert!(!budgets.try_spend(&BUDGET, key(1), 0, 600));
        assert!(budgets.try_spend(&BUDGET, key(1), 0, 400));
        assert!(
            !budgets.try_spend(&BUDGET, key(1), 50, 600),
            "half refilled"
        );
        assert!(budgets.try_spend(&BUDGET, key(1), 60, 600));
        // A full bucket pays for any one reply, however large.
        assert!(budgets.try_spend(&BUDGET, key(1), 1000, 5000));
        assert!(!budgets.try_spend(&BUDGET, key(1), 1000, 1));
        // Other clients have their own.
        assert!(budgets.try_spend(&BUDGET, key(2), 1000, 1000));
    }

    #[test]
    fn the_map_keeps_at_most_max_clients_and_drops_the_least_recently_charged() {
        let mut budgets = ClientReplyBudgets::default();
        assert!(budgets.try_spend(&BUDGET, key(1), 0, 1000));
        assert!(budgets.try_spend(&BUDGET, key(2), 0, 1000));
        // Client 1 asks again (refused, but it is now the most recent).
        assert!(!budgets.try_spend(&BUDGET, key(1), 0, 1000));
        // Client 3 takes client 2's place; client 1's empty bucket is kept.
        assert!(budgets.try_spend(&BUDGET, key(3), 0, 1000));
        assert_eq!(budgets.len(), 2);
        assert!(!budgets.try_spend(&BUDGET, key(1), 0, 1000));
        // Client 2 starts over with a full bucket (it was idle, and so dropped).
        assert!(budgets.try_spend(&BUDGET, key(2), 0, 1000));
        assert_eq!(budgets.len(), 2);
    }
}
