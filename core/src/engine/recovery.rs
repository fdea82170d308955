//! Recovery and rejoin: rebuilding a replica from its persisted records, and keeping a
//! replica that lost them silent until it cannot contradict what it forgot (docs/design.md §3.12).

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::sync::Arc;

use smr_crypto::Signer;

use crate::checkpoint::Checkpoint;
use crate::config::ValidEngineConfig;
use crate::message::{
    Cid, Decision, Message, Participation, PreparedProof, Regency, ReplicaId, Signed, Sync, Vote,
    VoteKind,
};

use super::{Engine, Output, PersistRecord, Phase, ServiceWork};

/// Whether a replica that started from an empty store may take part yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Rejoin {
    /// It may vote, lead and send STOPDATA.
    Done,
    /// Waiting for n-f peers to say how far they have voted.
    Collecting {
        /// This incarnation's nonce: only reports that echo it count.
        nonce: u64,
        /// The first counted report of each peer.
        reports: BTreeMap<ReplicaId, Cid>,
    },
    /// Catching up to `horizon` before taking part; `nonce` is the incarnation's, kept so that
    /// a crash before the horizon can collect reports again (see `Engine::recover`).
    CatchingUp { horizon: Cid, nonce: u64 },
}

/// The latest rejoin nonce a peer asked with, and what this replica reports to it
/// (docs/design.md §3.12 item 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PeerIncarnation {
    /// The peer's incarnation nonce.
    pub(super) nonce: u64,
    /// This replica's `voted_up_to` when it first saw `nonce`.
    pub(super) voted_up_to: Cid,
}

/// A peer that said it abstains until it has executed `until` ([`Message::Abstaining`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct AbstainingPeer {
    /// The cid it waits for, capped at two windows past this replica's execution when noted.
    pub(super) until: Cid,
    /// When `until` was last raised: a peer may raise it once per `request_timeout_ms`.
    pub(super) raised_at_ms: u64,
}

impl Engine {
    /// The highest checkpoint cid [`Engine::recover`] accepts from a store: 2^62. No run
    /// reaches it (2^62 decisions at a million a second take 146,000 years), and above it a
    /// replica's own counters (the next cid to propose, a window past its execution) would
    /// overflow within the limits a config allows (each at most 2^40). A checksum-valid
    /// checkpoint file at `u64::MAX` made a recovered leader panic on its first request.
    pub const MAX_RECOVERED_CID: Cid = Cid(1 << 62);

    /// Rebuilds a replica from what it persisted before a crash, in the order it persisted
    /// it (docs/design.md §3.12). Returns the engine and the output that rebuilds the service:
    /// a `Restore` of the latest checkpoint and the `Execute`s of the decisions after it (and,
    /// in a regency above 0, a broadcast [`Message::SyncQuery`]). The driver performs it, then
    /// calls [`Engine::start`].
    ///
    /// The restarted replica keeps every promise it made: its regency, its votes and its
    /// prepared values. In a regency above 0 it waits for that regency's SYNC before voting on
    /// new proposals, and a restarted leader never proposes again in a cid it already voted in.
    ///
    /// # Errors
    /// A message naming the problem if the newest stored checkpoint does not decode, or if a
    /// record is one this engine can never have written (`check_stored_records`): a vote of
    /// another replica, two values voted in one instance, a decision whose certificate is for
    /// another value, a cid more than `max_instances_ahead` past every decision before it
    /// (a damaged store, or a window lowered in the config since the records were written),
    /// a checkpoint above [`Engine::MAX_RECOVERED_CID`], or a SYNC of the stored regency that
    /// is not this replica's own as its leader or names a cid beyond that bound or outside a
    /// STOPDATA's window (`check_stored_sync`).
    /// File-supplied numbers never panic recovery.
    pub fn recover(
        cfg: ValidEngineConfig,
        signer: Arc<dyn Signer>,
        records: impl IntoIterator<Item = PersistRecord>,
    ) -> Result<(Engine, Output), String> {
        let mut engine = Engine::new(cfg, signer);
        let mut checkpoint: Option<Checkpoint> = None;
        let mut decisions = BTreeMap::new();
        let mut prepared: BTreeMap<Cid, PreparedProof> = BTreeMap::new();
        let mut votes = Vec::new();
        let mut own_sync: Option<Signed<Sync>> = None;
        let mut rejoining: Option<(Option<Cid>, u64)> = None;
        for record in records {
            match record {
                PersistRecord::Checkpoint(c) => {
                    if checkpoint.as_ref().is_none_or(|old| c.cid > old.cid) {
                        checkpoint = Some(c);
                    }
                }
                PersistRecord::Regency(r) => engine.regency = engine.regency.max(r),
                PersistRecord::Decided(d) => {
                    decisions.insert(d.cid, d);
                }
                PersistRecord::Prepared(p) => {
                    if prepared.get(&p.cid).is_none_or(|old| p.epoch >= old.epoch) {
                        prepared.insert(p.cid, p);
                    }
                }
                PersistRecord::Vote(v) => votes.push(v),
                PersistRecord::Rejoining { horizon, nonce } => rejoining = Some((horizon, nonce)),
                PersistRecord::Sync(s) => {
                    if own_sync
                        .as_ref()
                        .is_none_or(|old| s.body.regency > old.body.regency)
                    {
                        own_sync = Some(s);
                    }
                }
            }
        }
        if let Some(c) = checkpoint {
            let (c, contents) =
                Checkpoint::from_bytes(c.data, c.decided, &engine.cfg.limits.client_limits())
                    .map_err(|e| format!("stored checkpoint is unreadable: {e}"))?;
            // The cid its data holds, which the engine takes.
            if c.cid > Self::MAX_RECOVERED_CID {
                return Err(format!(
                    "stored checkpoint is at cid {}, beyond cid {}, the highest a store can hold: the store is damaged",
                    c.cid,
                    Self::MAX_RECOVERED_CID
                ));
            }
            engine.out.service(ServiceWork::Restore {
                cid: c.cid,
                snapshot: contents.service,
            });
            engine.clients = contents.clients;
            engine.last_executed = c.cid;
            engine.checkpoints.stable = Some(c);
        }
        let base = engine.last_executed;
        check_stored_records(
            base,
            engine.me,
            engine.cfg.limits.max_instances_ahead,
            &decisions,
            &prepared,
            &votes,
        )?;
        let highest_stored_decision = decisions.keys().next_back().copied().unwrap_or(base);
        // It executed and answered from states up to its stored decisions before the crash.
        engine.reads_withheld_until = highest_stored_decision;
        let mut highest_voted = base;
        for (cid, p) in prepared.into_iter().filter(|(cid, _)| *cid > base) {
            engine.instances.entry(cid).or_default().prepared = Some(p);
        }
        for v in votes.into_iter().filter(|v| v.cid > base) {
            highest_voted = highest_voted.max(v.cid);
            if v.regency != engine.regency {
                continue;
            }
            let signed = Signed::new(v, engine.signer.as_deref());
            let instance = engine.instances.entry(v.cid).or_default();
            match v.kind {
                VoteKind::Write => {
                    instance.my_write = Some(signed.clone());
                    instance.writes.insert(engine.me, signed);
                }
                VoteKind::Accept => {
                    instance.my_accept = Some(signed.clone());
                    instance.accepts.insert(engine.me, signed);
                }
            }
        }
        for (cid, d) in decisions.into_iter().filter(|(cid, _)| *cid > base) {
            engine.instances.entry(cid).or_default().decided = Some(d);
        }
        engine
            .leader_change
            .stop_for
            .insert(engine.me, engine.regency);
        engine.next_cid_to_propose = highest_voted.saturating_add(1);
        if engine.regency > Regency::ZERO {
            engine.phase = Phase::Syncing;
            // This replica led its regency and sent its SYNC: `start` applies it again.
            let own_sync = own_sync.filter(|s| s.body.regency == engine.regency);
            if let Some(sync) = &own_sync {
                check_stored_sync(
                    &sync.body,
                    engine.me,
                    engine.quorums.leader_of(sync.body.regency.0),
                    engine.cfg.limits.max_instances_ahead,
                )?;
            }
            engine.leader_change.recovered_sync = own_sync;
            if engine.leader_change.recovered_sync.is_none() {
                engine.out.broadcast(Message::SyncQuery);
            }
        }
        // It crashed while rejoining: it still may not vote in anything it voted in before it
        // lost its state, whatever it persisted since (a transferred checkpoint, decisions).
        // Still collecting, it asks with the nonce it persisted: it has cast no vote since that
        // incarnation began, so a report made for it still bounds every vote it forgot, and
        // peers answer it as before rather than with what they voted meanwhile (§3.12 item 6).
        // A nonce of 0 (a damaged record) would make the answers to state transfer count.
        //
        // A stored horizon its stored decisions reach is resumed: re-executing them ends the
        // rejoin. One they do not reach is not trusted as it stands (a damaged record could
        // name any cid, and it would abstain for ever): the replica collects reports again
        // with the same nonce, which is as safe as the first time (it has voted in nothing
        // since), and the fresh horizon is bounded by what its peers prove executed.
        match rejoining {
            None => {}
            Some((Some(horizon), nonce)) if horizon <= highest_stored_decision.max(base) => {
                engine.rejoin = Rejoin::CatchingUp { horizon, nonce }
            }
            Some((_, nonce)) => {
                if nonce == 0 {
                    return Err(
                        "stored rejoin record has nonce 0, which no rejoin writes: the store is damaged"
                            .to_string(),
                    );
                }
                engine.rejoin = Rejoin::Collecting {
                    nonce,
                    reports: BTreeMap::new(),
                }
            }
        }
        engine.execute_ready(0);
        engine.check_rejoined(0);
        match engine.rejoin {
            Rejoin::Done => {}
            Rejoin::Collecting { nonce, .. } => engine.out.broadcast(Message::StateQuery {
                rejoin_nonce: nonce,
            }),
            Rejoin::CatchingUp { horizon: until, .. } => {
                engine.out.broadcast(Message::Abstaining { until })
            }
        }
        let output = engine.take_output();
        Ok((engine, output))
    }

    /// A replica that lost its durable state (a wiped disk, or a restarted in-memory replica)
    /// and may have voted before, forgetting it. It stays silent (no votes, no STOPDATA, no
    /// proposals) until every instance it can have voted in is decided and executed here:
    /// it asks n-f peers how far they have voted, and catches up one window past the highest
    /// answer (see `Engine::participates`; docs/design.md §3.12). Returns the engine and its
    /// first output: a [`PersistRecord::Rejoining`] (so that a crash mid-rejoin restarts still
    /// rejoining) and a broadcast [`Message::StateQuery`]; perform it, then call
    /// [`Engine::start`].
    ///
    /// `nonce` names this incarnation: draw it fresh for every start from an empty store (the
    /// tokio driver draws it from the OS's randomness). Only reports that echo it count, so a
    /// StateInfo made for an earlier incarnation, before the store was lost, does not; and a
    /// peer reports its votes as of when it first saw the nonce (docs/design.md §3.12 item 6).
    ///
    /// A replica that starts from an empty store cannot tell a brand-new disk from a wiped
    /// one, so the tokio driver starts every such replica here: in a brand-new cluster every
    /// peer reports cid 0, the horizon is 0, and it takes part as soon as n-f peers answered
    /// (a rejoining replica answers StateQuery too, so a new cluster whose replicas all start
    /// at once does not wait on itself). [`Engine::new`] skips the question; it is for tests
    /// and simulations that know the cluster is new.
    pub fn rejoin(
        cfg: ValidEngineConfig,
        signer: Arc<dyn Signer>,
        nonce: NonZeroU64,
    ) -> (Engine, Output) {
        let mut engine = Engine::new(cfg, signer);
        let nonce = nonce.get();
        engine.rejoin = Rejoin::Collecting {
            nonce,
            reports: BTreeMap::new(),
        };
        engine.out.persist(PersistRecord::Rejoining {
            horizon: None,
            nonce,
        });
        engine.out.broadcast(Message::StateQuery {
            rejoin_nonce: nonce,
        });
        let output = engine.take_output();
        (engine, output)
    }

    /// Whether this replica is still rejoining (see [`Engine::rejoin`]): it casts no vote,
    /// proposes nothing and sends no STOP or STOPDATA yet.
    pub fn is_rejoining(&self) -> bool {
        !self.participates()
    }

    /// Whether this replica may vote, lead, or report to a new leader. A replica that lost its
    /// disk may have voted before and forgotten it; it stays silent until every instance it can
    /// have voted in is decided and executed here.
    pub(super) fn participates(&self) -> bool {
        matches!(self.rejoin, Rejoin::Done)
    }

    /// Whether this replica votes, or abstains while it rejoins and what it waits for: what
    /// `smr status` shows.
    pub fn participation(&self) -> Participation {
        match &self.rejoin {
            Rejoin::Done => Participation::Participating,
            Rejoin::Collecting { reports, .. } => Participation::CollectingReports {
                reports: reports.len() as u64,
                needed: self.quorums.stopdata_to_collect() as u64,
            },
            Rejoin::CatchingUp { horizon, .. } => Participation::CatchingUp { until: *horizon },
        }
    }

    /// The record a store must keep while this replica rejoins
    /// ([`Engine::durable_records_after`]); none once it takes part.
    pub(super) fn rejoin_record(&self) -> Option<PersistRecord> {
        match self.rejoin {
            Rejoin::Done => None,
            Rejoin::Collecting { nonce, .. } => Some(PersistRecord::Rejoining {
                horizon: None,
                nonce,
            }),
            Rejoin::CatchingUp { horizon, nonce } => Some(PersistRecord::Rejoining {
                horizon: Some(horizon),
                nonce,
            }),
        }
    }

    /// A peer abstains until it has executed `until` (docs/design.md §3.12, "Reaching the
    /// horizon"). The claim is unsigned and unproven, so it is bounded twice: it counts only up
    /// to two windows past this replica's execution (a correct rejoiner's horizon is at most
    /// one window past the highest report, and each report at most one window past a cid
    /// proven decided), and a peer may raise it at most once per `request_timeout_ms`. So one
    /// Byzantine peer makes a correct leader order at most two windows of empty batches per
    /// request timeout, and a correct rejoiner, which asks once, is served at once.
    pub(super) fn note_abstaining(&mut self, now_ms: u64, from: ReplicaId, until: Cid) {
        let ahead = self.cfg.limits.max_instances_ahead;
        let until = until.min(self.last_executed.saturating_add(ahead.saturating_mul(2)));
        // A horizon this replica has executed needs no empty batch: the peer gets there by
        // decisions (a leader restarted over the record of a rejoin it finished says so until
        // it has re-executed its own stored decisions, and must not be replaced for it).
        if until <= self.last_executed {
            return;
        }
        if from == self.leader() {
            // The leader itself abstains: it will propose nothing, so nothing would ever
            // reach its horizon. Ask for the next regency now, while the cluster may still
            // lack only this one replica (the leader can only have itself replaced this way).
            self.start_leader_change(now_ms, self.regency.saturating_add(1));
        }
        if let Some(peer) = self.abstaining.get(&from) {
            let rate_limited = now_ms
                < peer
                    .raised_at_ms
                    .saturating_add(self.cfg.timeouts.request_timeout_ms);
            if until <= peer.until {
                return;
            }
            if rate_limited {
                // Not refused as misbehaviour (a correct rejoiner's horizon may rise once its
                // reports come in), but seen: a peer raising it faster is held to the budget.
                self.stats.abstaining_raises_deferred += 1;
                return;
            }
        }
        self.abstaining.insert(
            from,
            AbstainingPeer {
                until,
                raised_at_ms: now_ms,
            },
        );
        self.try_propose(now_ms);
    }

    /// The highest cid a peer abstains until, if this replica has not executed it yet: a
    /// leader with no requests to propose orders empty batches up to it.
    pub(super) fn abstaining_until(&self) -> Option<Cid> {
        self.abstaining
            .values()
            .map(|p| p.until)
            .max()
            .filter(|until| *until > self.last_executed)
    }

    /// A rejoining replica collects n-f reports of how far each peer has executed or voted.
    /// Any instance it can have voted in before losing its disk is at most one window past an
    /// instance it had executed; that instance was accepted by Q replicas, at least one of which
    /// is among any n-f others, so the highest report plus a window bounds it.
    ///
    /// The reports are unsigned claims, and one Byzantine peer must not keep this replica
    /// silent (a report of `u64::MAX - 64` would, forever). So each counts only up to one
    /// window past the cid its sender proves it executed (`executed`, verified with its
    /// certificate): a replica votes at most one window past its execution, so a correct
    /// report is never cut, and a made-up one is bounded by what the cluster really decided
    /// (docs/design.md §3.12, "Rejoin").
    ///
    /// Only a report that echoes this incarnation's nonce counts (`for_nonce`): one made
    /// for an earlier incarnation, before the store was lost, bounds nothing; an unsolicited
    /// StateInfo (state transfer's, a DecisionQuery's answer) carries 0 and never counts.
    pub(super) fn note_rejoin_report(
        &mut self,
        now_ms: u64,
        from: ReplicaId,
        for_nonce: u64,
        voted_up_to: Cid,
        executed: Cid,
    ) {
        let Rejoin::Collecting { nonce, reports } = &mut self.rejoin else {
            return;
        };
        if for_nonce != *nonce {
            return;
        }
        let ahead = self.cfg.limits.max_instances_ahead;
        // The first report of each peer counts: a correct peer answers this nonce with the
        // same value every time (its votes when it first saw the nonce), and one that lost
        // that memory in a restart answers higher, never lower.
        reports
            .entry(from)
            .or_insert(voted_up_to.min(executed.saturating_add(ahead)));
        if reports.len() < self.quorums.stopdata_to_collect() {
            return;
        }
        let highest = reports.values().copied().max().unwrap_or(Cid::ZERO);
        // Always a window past the highest report, even when every report is 0: its own votes
        // from before the loss may still be in flight to peers that have accepted nothing yet
        // (a WRITE delayed on its way), so "nobody has voted" is never known. A brand-new
        // cluster therefore starts its replicas as new (`--new-cluster`), not rejoining.
        let horizon = highest.saturating_add(ahead);
        let nonce = *nonce;
        self.rejoin = Rejoin::CatchingUp { horizon, nonce };
        self.out.persist(PersistRecord::Rejoining {
            horizon: Some(horizon),
            nonce,
        });
        self.check_rejoined(now_ms);
        if let Rejoin::CatchingUp { horizon: until, .. } = self.rejoin {
            // Nothing may drive a quiet cluster to the horizon: ask the leader to.
            self.out.broadcast(Message::Abstaining { until });
            self.arm_retransmit(now_ms);
        }
    }

    /// A peer asked with, or reported while collecting under, its rejoin `nonce`: that
    /// incarnation has started, so it lost its store before now. Returns what this replica
    /// reports to it: its `voted_up_to` when it first saw this nonce (remembered, one entry per
    /// peer). Any later value is safe too, but might be a window past what a brand-new cluster
    /// can reach while that peer abstains (docs/design.md §3.12 item 6).
    pub(super) fn note_incarnation(&mut self, from: ReplicaId, nonce: u64) -> Cid {
        if let Some(seen) = self.peer_incarnations.get(&from) {
            if seen.nonce == nonce {
                return seen.voted_up_to;
            }
        }
        let voted_up_to = self.voted_up_to();
        self.peer_incarnations
            .insert(from, PeerIncarnation { nonce, voted_up_to });
        voted_up_to
    }

    pub(super) fn check_rejoined(&mut self, now_ms: u64) {
        if let Rejoin::CatchingUp { horizon, .. } = self.rejoin {
            if self.last_executed >= horizon {
                self.rejoin = Rejoin::Done;
                // Whatever it saw while silent is void; it learns the regency from its peers.
                for instance in self.instances.values_mut() {
                    instance.proposal = None;
                }
                let leader = self.leader();
                self.request_sync(now_ms, leader);
                self.try_propose(now_ms);
            }
        }
    }
}

/// Refuses stored records that no run of this engine can have written, before recovery uses
/// any number in them. A replica votes, prepares and learns decisions only within its window,
/// at most `ahead` past its last executed cid; every cid it executed is decided in its store
/// (stored, or covered by the checkpoint at `base`), and the store keeps records in the order
/// they were written, so nothing after them is kept without them. So every stored decision,
/// vote and prepared value is within `ahead` of `reach`, the highest cid up to which every
/// cid is decided in the store: the cid a restarted replica's STOPDATA proves decided, which
/// the verifier measures its window from (docs/design.md §3.10, "What a STOPDATA reports").
/// Its votes are its own, one value per (cid, regency, kind), and a WRITE and an ACCEPT of one
/// (cid, regency) agree; a decision's certificate is for its batch and cid.
/// The stored SYNC a restarted leader applies again is one this engine can have written: its
/// own (`leader` is `me` and leads the SYNC's regency, `leader_of_regency`), built from STOPDATA
/// of that regency, each naming a decided cid no store can pass ([`Engine::MAX_RECOVERED_CID`])
/// and prepared cids above it and at most `ahead` past it (the window a received STOPDATA is
/// held to, `verify.rs`). A damaged SYNC naming cid `u64::MAX` otherwise left a recovered
/// leader's next cid saturated, proposing nothing for its whole regency, or a follower
/// refusing every proposal of it. Signatures are not checked again: the store is the
/// replica's own, and these checks keep every number it takes from it in range.
fn check_stored_sync(
    sync: &Sync,
    me: ReplicaId,
    leader_of_regency: ReplicaId,
    ahead: u64,
) -> Result<(), String> {
    if sync.leader != me || leader_of_regency != me {
        return Err(format!(
            "stored SYNC of regency {} is signed as replica {}'s, and replica {leader_of_regency} leads that regency: a replica stores only the SYNC it sent as leader, so the store is damaged",
            sync.regency.0, sync.leader
        ));
    }
    for proof in &sync.proofs {
        if proof.body.regency != sync.regency {
            return Err(format!(
                "stored SYNC of regency {} carries a STOPDATA of regency {}: the store is damaged",
                sync.regency.0, proof.body.regency.0
            ));
        }
        let decided = proof
            .body
            .last_decided
            .as_ref()
            .map_or(Cid::ZERO, |d| d.cid);
        if decided > Engine::MAX_RECOVERED_CID {
            return Err(format!(
                "stored SYNC of regency {} names cid {decided} decided, beyond cid {}, the highest a store can hold: the store is damaged",
                sync.regency.0,
                Engine::MAX_RECOVERED_CID
            ));
        }
        let window_end = decided.saturating_add(ahead);
        if let Some(p) = proof
            .body
            .prepared
            .iter()
            .find(|p| p.cid <= decided || p.cid > window_end)
        {
            return Err(format!(
                "stored SYNC of regency {} names a value prepared for cid {}, outside cids {} to {window_end} that its STOPDATA's decided cid {decided} allows: the store is damaged",
                sync.regency.0,
                p.cid,
                decided.saturating_add(1)
            ));
        }
    }
    Ok(())
}

fn check_stored_records(
    base: Cid,
    me: ReplicaId,
    ahead: u64,
    decisions: &BTreeMap<Cid, Decision>,
    prepared: &BTreeMap<Cid, PreparedProof>,
    votes: &[Vote],
) -> Result<(), String> {
    let beyond = |what: &str, cid: Cid, reach: Cid| {
        format!(
            "stored {what} for cid {cid} is more than limits.max_instances_ahead ({ahead}) past cid {reach}, the highest cid up to which every cid is decided: the store is damaged, or max_instances_ahead was lowered since it was written"
        )
    };
    for (cid, d) in decisions {
        let digest = d.batch.digest();
        if d.certificate
            .iter()
            .any(|a| a.body.cid != *cid || a.body.digest != digest)
        {
            return Err(format!(
                "stored decision for cid {cid} carries a certificate for another cid or value"
            ));
        }
    }
    let mut reach = base;
    while let Some(next) = reach.checked_add(1).filter(|c| decisions.contains_key(c)) {
        reach = next;
    }
    let horizon = reach.saturating_add(ahead);
    if let Some(cid) = decisions.keys().find(|cid| **cid > horizon) {
        return Err(beyond("decision", *cid, reach));
    }
    if let Some((cid, _)) = prepared.iter().find(|(cid, _)| **cid > horizon) {
        return Err(beyond("prepared value", *cid, reach));
    }
    let mut own: BTreeMap<(Cid, Regency), Vote> = BTreeMap::new();
    for v in votes {
        if v.replica != me {
            return Err(format!(
                "stored vote for cid {} is replica {}'s, not this replica's ({me})",
                v.cid, v.replica
            ));
        }
        if v.cid > horizon {
            return Err(beyond("vote", v.cid, reach));
        }
        if let Some(other) = own.insert((v.cid, v.regency), *v) {
            if other.digest != v.digest {
                return Err(format!(
                    "stored votes for two values in cid {} regency {}",
                    v.cid, v.regency
                ));
            }
        }
    }
    Ok(())
}
