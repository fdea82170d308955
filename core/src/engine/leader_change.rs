//! The synchronization phase (leader change): STOP, STOPDATA and SYNC (docs/design.md §3.9 and
//! §3.10; BFT-SMaRt's `Synchronizer`).

use crate::message::{Batch, Cid, Message, Regency, ReplicaId, Signed, Stop, StopData, Sync};
use crate::network::Peer;
use crate::rejection::Rejection;
use crate::sync::choose;
use std::collections::BTreeMap;

use super::{Engine, PersistRecord, Phase, TimerKind, MAX_REGENCY_JUMP};

/// What the synchronization phase keeps between inputs.
#[derive(Clone, Debug, Default)]
pub(super) struct LeaderChange {
    /// Highest regency each replica asked for with a STOP, this one included.
    pub(super) stop_for: BTreeMap<ReplicaId, Regency>,
    /// This replica's STOP for the regency it asks for, resent until that regency is installed.
    pub(super) my_stop: Option<Signed<Stop>>,
    /// This replica's STOPDATA for the regency being synchronized, resent until SYNC arrives.
    pub(super) my_stopdata: Option<Signed<StopData>>,
    /// New leader only: STOPDATA collected for the current regency.
    pub(super) collected: BTreeMap<ReplicaId, Signed<StopData>>,
    /// The SYNC that installed the current regency (none for regency 0), for stragglers.
    pub(super) current_sync: Option<Signed<Sync>>,
    /// Leader changes that failed in a row; the change timeout doubles with each.
    pub(super) change_failures: u32,
    /// The SYNC this replica sent as leader of its regency before a restart, applied again at
    /// [`Engine::start`].
    pub(super) recovered_sync: Option<Signed<Sync>>,
    /// Values the current regency's SYNC fixed for cids that were past this replica's window
    /// when it applied the SYNC (it was behind): accepted as execution brings them into the
    /// window, so that a replica, the new leader included, that catches up after the SYNC
    /// still votes for them. At most `max_instances_ahead` entries (one SYNC's choice);
    /// cleared when a regency is entered.
    pub(super) deferred_sync_values: BTreeMap<Cid, Batch>,
    /// The last cid the current regency's SYNC fixed (its choice's end; cid 0 before any
    /// SYNC): decided up to its start, its values after. In this regency a PROPOSE is taken
    /// only past it (docs/design.md §3.10, "A replica behind the SYNC").
    pub(super) sync_end: Cid,
}

impl Engine {
    pub(super) fn change_timeout_ms(&self) -> u64 {
        self.cfg.timeouts.request_timeout_ms << self.leader_change.change_failures.min(6)
    }

    /// The highest regency this replica asked for with a STOP (or entered).
    pub(super) fn my_stop_target(&self) -> Regency {
        self.leader_change
            .stop_for
            .get(&self.me)
            .copied()
            .unwrap_or(Regency::ZERO)
    }

    /// Asks to move to regency `target` (never backwards) by broadcasting a STOP that carries
    /// the oldest pending requests, so that the next leader has them.
    pub(super) fn start_leader_change(&mut self, now_ms: u64, target: Regency) {
        let mine = self.my_stop_target();
        if target <= self.regency || target <= mine || !self.participates() {
            return;
        }
        self.leader_change.stop_for.insert(self.me, target);
        // Only requests whose signature verifies go into a STOP (docs/design.md §5).
        let mut pending = self.pool.oldest(self.cfg.limits.max_batch_requests);
        self.authenticate_pending(&pending);
        pending.retain(|r| self.pool.contains(&r.id()));
        let stop = Signed::new(
            Stop {
                replica: self.me,
                regency: target,
                from_regency: self.regency,
                pending,
            },
            self.signer.as_deref(),
        );
        self.stats.stops_sent += 1;
        self.out.broadcast(Message::Stop(stop.clone()));
        self.leader_change.my_stop = Some(stop);
        self.deadlines_ms.insert(
            TimerKind::LeaderChange,
            now_ms.saturating_add(self.change_timeout_ms()),
        );
        self.arm_retransmit(now_ms);
        self.check_stops(now_ms);
    }

    pub(super) fn handle_stop(
        &mut self,
        now_ms: u64,
        from: ReplicaId,
        stop: Signed<Stop>,
        signature_checked: &dyn Fn(usize) -> bool,
    ) -> Result<(), Rejection> {
        let target = stop.body.regency;
        if target <= self.regency || stop.body.from_regency < self.regency {
            // The sender has not heard of our regency yet.
            self.help_stale_peer(now_ms, from);
            return Ok(());
        }
        if target > self.regency.saturating_add(MAX_REGENCY_JUMP) {
            return Err(Rejection::Malformed(format!(
                "STOP for regency {target} is too far ahead"
            )));
        }
        let entry = self
            .leader_change
            .stop_for
            .entry(from)
            .or_insert(Regency::ZERO);
        *entry = (*entry).max(target);
        for (position, request) in stop.body.pending.into_iter().enumerate() {
            // Stale or already pending requests are fine; a full pool just drops them.
            let checked = signature_checked(position);
            let _ = self.handle_request(now_ms, request, false, checked);
        }
        self.check_stops(now_ms);
        Ok(())
    }

    /// Joins a leader change that f+1 replicas asked for (one in CFT), and installs the regency
    /// that 2f+1 asked for (f+1 in CFT). A replica's STOP for r counts for every regency up to r.
    pub(super) fn check_stops(&mut self, now_ms: u64) {
        let mut targets: Vec<Regency> = self
            .leader_change
            .stop_for
            .values()
            .copied()
            .filter(|t| *t > self.regency)
            .collect();
        targets.sort_unstable_by(|a, b| b.cmp(a));
        let join = self.quorums.stops_to_join();
        if targets.len() >= join {
            let target = targets[join - 1];
            if target > self.my_stop_target() {
                // start_leader_change calls back into check_stops with our own STOP counted.
                self.start_leader_change(now_ms, target);
                return;
            }
        }
        let install = self.quorums.stops_to_install();
        if targets.len() >= install {
            let target = targets[install - 1];
            self.enter_regency(now_ms, target);
            self.send_stopdata(now_ms);
        }
    }

    /// Moves to `regency`: persists it first, forgets every vote of older regencies (keeping
    /// prepared proofs and decisions), and waits for the regency's SYNC.
    pub(super) fn enter_regency(&mut self, now_ms: u64, regency: Regency) {
        assert!(regency > self.regency, "regency never decreases");
        self.out.persist(PersistRecord::Regency(regency));
        self.regency = regency;
        self.leader_progress = None;
        // The new leader has had no chance to speak yet: its silence counts from here.
        self.leader_heard_ms = now_ms;
        self.deadlines_ms.remove(&TimerKind::LeaderSilence);
        self.stats.regency_changes += 1;
        let mine = self
            .leader_change
            .stop_for
            .entry(self.me)
            .or_insert(Regency::ZERO);
        *mine = (*mine).max(regency);
        if *mine <= regency {
            self.leader_change.my_stop = None;
        }
        self.leader_change.deferred_sync_values.clear();
        for instance in self.instances.values_mut() {
            instance.proposal = None;
            instance.writes.clear();
            instance.accepts.clear();
            instance.my_write = None;
            instance.my_accept = None;
        }
        self.pool.unmark_all_proposed();
        self.pool.restart_timers(now_ms);
        self.arm_request_timer();
        self.phase = Phase::Syncing;
        self.leader_change.collected.clear();
        self.leader_change.my_stopdata = None;
        self.deadlines_ms.insert(
            TimerKind::LeaderChange,
            now_ms.saturating_add(self.change_timeout_ms()),
        );
        // A STOPDATA that reached the new leader before it entered the regency was refused
        // there (simulator: the new leader waited 300 ms for one resent).
        self.restart_retransmission(now_ms);
    }

    /// Tells the leader of the newly installed regency what this replica decided and prepared.
    pub(super) fn send_stopdata(&mut self, now_ms: u64) {
        if !self.participates() {
            return;
        }
        // Everything up to `last_decided` (the highest cid with every cid up to it decided
        // here, executed or still waiting for the service) is decided, and this replica no
        // longer reports values for those cids: it must prove the decision, or a new leader
        // could start below it and re-open an instance this replica decided. Proving the
        // highest contiguous decision, not the last executed one, keeps the report inside the
        // window the verifier allows (docs/design.md §3.10, "What a STOPDATA reports"): a
        // replica restarted from its store, or one whose service lags, holds decided
        // instances past `last_executed`, and their prepared proofs with them, possibly more
        // than `max_instances_ahead` of them.
        let decided_up_to = self.decided_up_to();
        let last_decided = self.decided_proof(decided_up_to);
        assert!(
            last_decided.is_some() || decided_up_to == Cid::ZERO,
            "no proof for the decided cid {decided_up_to}"
        );
        // Everything prepared above it is reported: this replica may be one of the acceptors
        // the value rule relies on (a correct replica prepares only within its window, at
        // most `max_instances_ahead` past a cid it had executed, and so at most that far past
        // `decided_up_to`).
        //
        // Only values prepared in epochs before this regency: one prepared in this regency
        // exists only after its leader sent the regency's SYNC, after which no STOPDATA for it
        // is collected, so leaving it out changes no SYNC; the verifier refuses it ("from a
        // future epoch"). A replica recovered into its regency before the SYNC came back
        // (`start`) sends its STOPDATA again to get that SYNC, and must not be refused for
        // what it voted in the regency before its crash (docs/design.md §3.10.7).
        let prepared: Vec<_> = self
            .instances
            .range(decided_up_to.saturating_add(1)..)
            .filter_map(|(_, i)| i.prepared.clone())
            .filter(|p| p.epoch < self.regency)
            .collect();
        assert!(
            prepared.len() as u64 <= self.cfg.limits.max_instances_ahead,
            "{} prepared proofs past the decided cid {decided_up_to}: more than the window",
            prepared.len()
        );
        let stopdata = Signed::new(
            StopData {
                replica: self.me,
                regency: self.regency,
                last_decided,
                prepared,
            },
            self.signer.as_deref(),
        );
        self.leader_change.my_stopdata = Some(stopdata.clone());
        self.arm_retransmit(now_ms);
        if self.is_leader() {
            self.collect_stopdata(now_ms, stopdata);
        } else {
            self.out
                .send(Peer::Replica(self.leader()), Message::StopData(stopdata));
        }
    }

    pub(super) fn handle_stopdata(
        &mut self,
        now_ms: u64,
        from: ReplicaId,
        stopdata: Signed<StopData>,
    ) -> Result<(), Rejection> {
        let regency = stopdata.body.regency;
        if regency < self.regency {
            self.help_stale_peer(now_ms, from);
            return Ok(());
        }
        if regency > self.regency {
            // The sender installed a regency we have not: that counts as its STOP for it.
            if regency > self.regency.saturating_add(MAX_REGENCY_JUMP) {
                return Err(Rejection::Malformed(
                    "STOPDATA for a regency too far ahead".into(),
                ));
            }
            let entry = self
                .leader_change
                .stop_for
                .entry(from)
                .or_insert(Regency::ZERO);
            *entry = (*entry).max(regency);
            self.check_stops(now_ms);
            if regency != self.regency {
                return Ok(());
            }
        }
        if !self.is_leader() {
            return Err(Rejection::NotLeader);
        }
        if self.phase == Phase::Normal {
            // The sender missed our SYNC.
            self.help_stale_peer(now_ms, from);
            return Ok(());
        }
        self.collect_stopdata(now_ms, stopdata);
        Ok(())
    }

    /// New leader: with n-f STOPDATA, send SYNC and resume.
    pub(super) fn collect_stopdata(&mut self, now_ms: u64, stopdata: Signed<StopData>) {
        assert!(
            self.is_leader() && self.phase == Phase::Syncing,
            "STOPDATA collected by a replica that is not synchronizing its own regency"
        );
        assert_eq!(
            stopdata.body.regency, self.regency,
            "STOPDATA of another regency collected"
        );
        self.leader_change
            .collected
            .insert(stopdata.body.replica, stopdata);
        if self.leader_change.collected.len() < self.quorums.stopdata_to_collect() {
            return;
        }
        let sync = Signed::new(
            Sync {
                leader: self.me,
                regency: self.regency,
                proofs: self.leader_change.collected.values().cloned().collect(),
            },
            self.signer.as_deref(),
        );
        self.out.persist(PersistRecord::Sync(sync.clone()));
        self.out.broadcast(Message::Sync(sync.clone()));
        self.apply_sync(now_ms, sync);
    }

    pub(super) fn handle_sync(&mut self, now_ms: u64, sync: Signed<Sync>) {
        let regency = sync.body.regency;
        if regency < self.regency || (regency == self.regency && self.phase == Phase::Normal) {
            return;
        }
        if regency > self.regency {
            // A valid SYNC proves that n-f replicas installed its regency: adopt it.
            self.enter_regency(now_ms, regency);
        }
        self.apply_sync(now_ms, sync);
    }

    /// Resumes normal operation in the current regency with the values the SYNC fixes.
    pub(super) fn apply_sync(&mut self, now_ms: u64, sync: Signed<Sync>) {
        assert_eq!(
            sync.body.regency, self.regency,
            "SYNC applies to the current regency"
        );
        let choice = choose(&sync.body.proofs, self.cfg.limits.max_instances_ahead);
        self.phase = Phase::Normal;
        self.leader_change.current_sync = Some(sync);
        self.leader_change.my_stopdata = None;
        self.leader_change.my_stop = None;
        // This regency works for us now; a later failure asks for the next one afresh.
        self.leader_change.stop_for.insert(self.me, self.regency);
        self.leader_change.collected.clear();
        self.deadlines_ms.remove(&TimerKind::LeaderChange);
        let window_end = self
            .last_executed
            .saturating_add(self.cfg.limits.max_instances_ahead);
        self.leader_change.deferred_sync_values.clear();
        self.leader_change.sync_end = choice.end();
        for (cid, batch) in choice.values.iter().cloned() {
            if cid <= self.last_executed {
                continue;
            }
            if cid > window_end {
                // Behind the SYNC: vote for it once caught up (before, such values were
                // dropped; a new leader that built its SYNC while behind then never voted
                // for them and, with one replica crashed and one rejoining, the instances
                // never decided: simulator, CFT quiet rejoin seed 145).
                self.leader_change.deferred_sync_values.insert(cid, batch);
                continue;
            }
            self.accept_proposal(now_ms, cid, batch, None);
        }
        if self.last_executed < choice.start {
            if let Some(holder) = choice.start_holder {
                self.allow_query_now(holder);
                self.maybe_query(now_ms, holder);
            }
        }
        if self.is_leader() {
            // The SYNC's cids came from peers: saturate rather than overflow.
            self.next_cid_to_propose =
                (choice.end().saturating_add(1)).max(self.last_executed.saturating_add(1));
            self.try_propose(now_ms);
        }
        // What raced the SYNC (a PROPOSE that reaches a follower before the SYNC is refused,
        // `SyncInProgress`) is resent soon (simulator: cid 36 waited 300 ms after a leader
        // crash for a PROPOSE a follower had refused).
        self.restart_retransmission(now_ms);
        self.arm_request_timer();
    }

    /// A regency boundary (entered, or its SYNC applied) restarts retransmission at
    /// `retransmit_initial_ms`: messages of the new regency that reached a peer before it
    /// entered the regency or applied its SYNC were refused there (a STOPDATA, a PROPOSE), and
    /// must not wait for the interval that the outage before doubled up to
    /// `retransmit_max_ms` (docs/design.md §3.9, "A silent leader").
    fn restart_retransmission(&mut self, now_ms: u64) {
        self.retransmit_interval_ms = self.cfg.timeouts.retransmit_initial_ms;
        self.deadlines_ms.remove(&TimerKind::Retransmit);
        self.arm_retransmit(now_ms);
    }

    /// Accepts the values of the current regency's SYNC that execution has brought into the
    /// window since the SYNC was applied (see `LeaderChange::deferred_sync_values`).
    pub(super) fn accept_deferred_sync_values(&mut self, now_ms: u64) {
        if self.leader_change.deferred_sync_values.is_empty()
            || self.phase != Phase::Normal
            || !self.participates()
        {
            return;
        }
        let window_end = self
            .last_executed
            .saturating_add(self.cfg.limits.max_instances_ahead);
        let later = self
            .leader_change
            .deferred_sync_values
            .split_off(&window_end.saturating_add(1));
        let due = std::mem::replace(&mut self.leader_change.deferred_sync_values, later);
        for (cid, batch) in due {
            if cid > self.last_executed {
                self.accept_proposal(now_ms, cid, batch, None);
            }
        }
    }

    /// The leader change did not complete in time: ask for the next regency, and wait twice as
    /// long for that one.
    pub(super) fn on_leader_change_timeout(&mut self, now_ms: u64) {
        let mine = self.my_stop_target();
        if mine <= self.regency && self.phase == Phase::Normal {
            return;
        }
        self.leader_change.change_failures = self.leader_change.change_failures.saturating_add(1);
        // Peers push regencies up (by STOPs): saturate rather than overflow.
        let target = mine.max(self.regency).saturating_add(1);
        self.start_leader_change(now_ms, target);
    }
}
