//! Checkpoints: a snapshot every `checkpoint_period` cids, announced to the others; the newest
//! one a quorum announced identically becomes stable, and only then is the log truncated up to
//! it (docs/design.md §3.11).

use crate::clients::ClientTable;
use smr_crypto::Digest;
use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Unbounded};

use crate::checkpoint::{Checkpoint, CheckpointData};
use crate::message::{Cid, DecisionProof, Message, ReplicaId};

use super::{Engine, Output, PersistRecord};

/// This replica's checkpoints and what its peers announced.
#[derive(Clone, Debug, Default)]
pub(super) struct Checkpoints {
    /// The latest stable checkpoint: one that a quorum of replicas announced with the same
    /// digest. It is what state transfer serves, and the log is truncated only up to it, so a
    /// replica that runs ahead never discards decisions that the others still need.
    pub(super) stable: Option<Checkpoint>,
    /// Checkpoints this replica took that are not stable yet.
    pub(super) own: BTreeMap<Cid, Checkpoint>,
    /// Checkpoint digests announced by each replica (this one included), above the stable one.
    pub(super) announcements: BTreeMap<Cid, BTreeMap<ReplicaId, Digest>>,
    /// A checkpoint is due at this cid: later batches wait until it has executed.
    pub(super) barrier: Option<Cid>,
    /// The client table captured at a checkpoint cid, waiting for the service's snapshot.
    pub(super) snapshot_clients: Option<(Cid, ClientTable)>,
}

impl Engine {
    /// The service's snapshot at `cid` (after
    /// [`ServiceWork::TakeSnapshot`](super::ServiceWork::TakeSnapshot)): completes the
    /// checkpoint (snapshot, client table and the proof that `cid` was decided), persists it,
    /// announces its digest to the other replicas, and lets execution go past `cid` again. The
    /// log is truncated once a quorum announced the same digest (docs/design.md §3.11).
    ///
    /// A snapshot nobody waits for any more is dropped: a state transfer installed a newer
    /// checkpoint (and cleared the request) while the service was taking it.
    ///
    /// # Panics
    /// If the engine is not holding execution at `cid` for this snapshot, or has no proof
    /// that `cid` was decided: the engine's own state is broken.
    pub fn on_snapshot(&mut self, now_ms: u64, cid: Cid, snapshot: Vec<u8>) -> Output {
        let Some((expected, clients)) = self.checkpoints.snapshot_clients.take() else {
            return self.finish_input();
        };
        if expected != cid {
            self.checkpoints.snapshot_clients = Some((expected, clients));
            return self.finish_input();
        }
        // The barrier held execution at `cid`, and the newest decision is always in the log.
        assert_eq!(
            self.checkpoints.barrier,
            Some(cid),
            "a snapshot at cid {cid} without the barrier that holds execution there"
        );
        let decided = self
            .decision_proof(cid)
            .expect("the checkpointed decision is in the log");
        let checkpoint = Checkpoint::new(
            &CheckpointData {
                cid,
                service: snapshot,
                clients,
            },
            decided,
        );
        if checkpoint.data.len() as u64 > self.cfg.limits.max_state_bytes {
            // No replica can receive it (a requester refuses any chunk claiming more), but
            // stopping would stop every replica at once: keep it, count it, and let the
            // driver tell the operator to raise the limit.
            self.stats.oversize_checkpoints += 1;
        }
        self.out
            .persist(PersistRecord::Checkpoint(checkpoint.clone()));
        self.out.broadcast(Message::CheckpointAnnounce {
            cid,
            digest: checkpoint.digest,
        });
        self.note_announcement(self.me, cid, checkpoint.digest);
        self.checkpoints.own.insert(cid, checkpoint);
        while self.checkpoints.own.len() > crate::verify::MAX_REPORTED_CHECKPOINTS - 1 {
            self.checkpoints.own.pop_first();
        }
        self.check_stable();
        self.checkpoints.barrier = None;
        self.execute_ready(now_ms);
        self.finish_input()
    }

    pub(super) fn note_announcement(&mut self, from: ReplicaId, cid: Cid, digest: Digest) {
        // Only checkpoints that can still become stable, and not arbitrarily far ahead.
        let horizon = self
            .last_executed
            .saturating_add(self.cfg.limits.max_instances_ahead)
            .saturating_add(self.cfg.limits.checkpoint_period.saturating_mul(4));
        if cid <= self.last_checkpoint()
            || cid > horizon
            || !cid.is_multiple_of(self.cfg.limits.checkpoint_period)
        {
            return;
        }
        self.checkpoints
            .announcements
            .entry(cid)
            .or_default()
            .insert(from, digest);
    }

    /// Makes the newest own checkpoint that a quorum announced identically the stable one.
    pub(super) fn check_stable(&mut self) {
        let quorum = self.quorums.quorum();
        let stable = self.checkpoints.own.iter().rev().find(|(cid, c)| {
            self.checkpoints
                .announcements
                .get(cid)
                .is_some_and(|a| a.values().filter(|d| **d == c.digest).count() >= quorum)
        });
        if let Some((cid, _)) = stable {
            let cid = *cid;
            let checkpoint = self.checkpoints.own.remove(&cid).expect("found above");
            self.make_stable(checkpoint);
        }
    }

    /// Makes `checkpoint` the stable one and forgets what it covers: the decisions, the
    /// announcements and this replica's older checkpoints at or below its cid. A peer that
    /// needs those decisions transfers the checkpoint instead.
    pub(super) fn make_stable(&mut self, checkpoint: Checkpoint) {
        let cid = checkpoint.cid;
        assert!(
            cid <= self.last_executed,
            "checkpoint {cid} is ahead of execution at {}",
            self.last_executed
        );
        // A transferred checkpoint's cid came from a peer: no overflow at the top of the range.
        let after = cid.saturating_add(1);
        self.checkpoints.own = self.checkpoints.own.split_off(&after);
        self.checkpoints.announcements = self.checkpoints.announcements.split_off(&after);
        // A stable checkpoint is held by a quorum, so a peer that needs older decisions can
        // transfer it instead.
        let keep_from = after;
        self.log = self.log.split_off(&keep_from);
        self.checkpoints.stable = Some(checkpoint);
    }

    /// Everything a store must keep after compacting at a checkpoint at `cid`: the regency,
    /// the rejoin state while the replica rejoins ([`PersistRecord::Rejoining`]), and the
    /// decisions, prepared values and own votes of later instances (docs/design.md §3.12). The tokio driver writes them into the fresh log of
    /// [`Wal::write_checkpoint`](crate::storage::Wal::write_checkpoint).
    pub fn durable_records_after(&self, cid: Cid) -> Vec<PersistRecord> {
        let mut records = vec![PersistRecord::Regency(self.regency)];
        // A replica still rejoining stays so across a restart.
        records.extend(self.rejoin_record());
        // This leader's SYNC for its regency: it must not build another after a restart.
        if let Some(sync) = self
            .leader_change
            .current_sync
            .as_ref()
            .filter(|s| s.body.leader == self.me && s.body.regency == self.regency)
        {
            records.push(PersistRecord::Sync(sync.clone()));
        }
        records.extend(
            self.log
                .range((Excluded(cid), Unbounded))
                .map(|(_, d)| PersistRecord::Decided(d.clone())),
        );
        for (c, instance) in self.instances.range((Excluded(cid), Unbounded)) {
            if let Some(d) = &instance.decided {
                records.push(PersistRecord::Decided(d.clone()));
            }
            if let Some(p) = &instance.prepared {
                records.push(PersistRecord::Prepared(p.clone()));
            }
            for vote in [&instance.my_write, &instance.my_accept]
                .into_iter()
                .flatten()
            {
                debug_assert_eq!(vote.body.cid, *c);
                records.push(PersistRecord::Vote(vote.body));
            }
        }
        records
    }

    /// Proof that `cid` was decided, from the log or from the checkpoint at `cid`.
    pub(super) fn decision_proof(&self, cid: Cid) -> Option<DecisionProof> {
        if let Some(d) = self.log.get(&cid) {
            return Some(DecisionProof {
                cid,
                digest: d.batch.digest(),
                certificate: d.certificate.clone(),
            });
        }
        self.checkpoints
            .stable
            .iter()
            .chain(self.checkpoints.own.values())
            .find(|c| c.cid == cid)
            .map(|c| c.decided.clone())
    }

    /// Proof that `cid` was decided, as [`Engine::decision_proof`], or from a decided instance
    /// that still waits for the service (learned, or recovered from the store).
    pub(super) fn decided_proof(&self, cid: Cid) -> Option<DecisionProof> {
        self.decision_proof(cid).or_else(|| {
            let d = self.instances.get(&cid)?.decided.as_ref()?;
            Some(DecisionProof {
                cid,
                digest: d.batch.digest(),
                certificate: d.certificate.clone(),
            })
        })
    }

    /// Cid of the stable checkpoint: the newest one a quorum announced with the same digest,
    /// or one installed by state transfer (0 if none).
    pub fn last_checkpoint(&self) -> Cid {
        self.checkpoints
            .stable
            .as_ref()
            .map_or(Cid::ZERO, |c| c.cid)
    }

    /// The cid and size in bytes of this replica's newest checkpoint (its own or the stable
    /// one) if that exceeds `limits.max_state_bytes`: no replica can receive it by state
    /// transfer, so a replica that loses its data dir cannot rejoin until the limit is raised
    /// on every replica. `None` if the newest checkpoint fits (or there is none).
    pub fn state_over_max_state_bytes(&self) -> Option<(Cid, u64)> {
        self.checkpoints
            .own
            .values()
            .next_back()
            .into_iter()
            .chain(self.checkpoints.stable.as_ref())
            .max_by_key(|c| c.cid)
            .map(|c| (c.cid, c.data.len() as u64))
            .filter(|(_, bytes)| *bytes > self.cfg.limits.max_state_bytes)
    }
}
