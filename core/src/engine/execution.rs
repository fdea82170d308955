//! Execution and replies: decided batches go to the service strictly in cid order, exactly
//! once per request, and the replies are cached and sent (docs/design.md §3.7).

use crate::clients::{Admission, RequestStatus};
use crate::message::{Cid, Message, ReplyStatus, RequestId, OPEN_SESSION};
use crate::network::Peer;

use super::{Engine, ExecuteItem, Output, Phase, ServiceDone, ServiceWork, TimerKind};

impl Engine {
    /// Hands every decided instance that is next in cid order to the service.
    pub(super) fn execute_ready(&mut self, now_ms: u64) {
        let mut progressed = false;
        // A checkpoint is a barrier: the next batch waits until the checkpointed one has
        // executed, so that the client table captured with it matches the service state.
        // And one batch is with the service at a time: the client table is replicated state,
        // and its byte bounds drop replies by an order that marking the next batch changes, so
        // marking cid c+1 before cid c's replies are recorded would make the table depend on
        // service timing (two correct replicas would checkpoint different tables). Marking
        // and recording alternate in cid order on every replica.
        while self.checkpoints.barrier.is_none()
            && self.executing.is_empty()
            && self
                .instances
                .get(&self.last_executed.saturating_add(1))
                .is_some_and(|i| i.decided.is_some())
        {
            let cid = self.last_executed.next();
            let instance = self.instances.remove(&cid).expect("checked above");
            let my_proposal = instance.proposal.as_ref().map(|p| p.digest);
            let decision = instance.decided.expect("checked above");
            assert_eq!(decision.cid, cid, "a decision stored under another cid");
            let decided_digest = decision.certificate.first().map(|a| a.body.digest);
            let mut items = Vec::with_capacity(decision.batch.requests.len());
            let mut ids = Vec::with_capacity(decision.batch.requests.len());
            for request in &decision.batch.requests {
                let id = request.id();
                self.pool.remove(&id);
                if id.session == OPEN_SESSION {
                    // An open request: a new session, numbered by the table's counter in
                    // the decided order, so every correct replica assigns the same number
                    // (docs/design.md §3.7, "Sessions"). Nothing goes to the service. A copy
                    // of an open that already has its session is a duplicate (its client is
                    // answered where its retry arrives).
                    if let RequestStatus::Opened(_) = self.clients.status(&id) {
                        self.stats.skipped_duplicates += 1;
                        continue;
                    }
                    match self.clients.open_session(id.client, id.seq, cid) {
                        Some(session) => {
                            self.stats.sessions_opened += 1;
                            self.out.send(
                                Peer::Client(id.client),
                                Message::Reply(self.reply(id, session.to_le_bytes().to_vec())),
                            );
                        }
                        None => {
                            // The client table is full of active sessions: decided, no
                            // session opened, here and on every correct replica
                            // (docs/design.md §3.7, "Bounds"), and answered so.
                            self.stats.refused_new_clients += 1;
                            self.refuse_decided(id, ReplyStatus::TableFull);
                        }
                    }
                    continue;
                }
                match self.clients.status(&id) {
                    RequestStatus::New => {}
                    RequestStatus::SessionExpired => {
                        self.refuse_decided(id, ReplyStatus::SessionExpired);
                        continue;
                    }
                    RequestStatus::Executed(_)
                    | RequestStatus::Stale
                    | RequestStatus::Opened(_) => {
                        self.stats.skipped_duplicates += 1;
                        continue;
                    }
                }
                match self.clients.mark_executing(&id, cid) {
                    Admission::Execute { floor } => {
                        if let Some(floor) = floor {
                            self.pool.remove_up_to(&id.session_id(), floor);
                        }
                    }
                    Admission::SessionExpired => {
                        self.refuse_decided(id, ReplyStatus::SessionExpired);
                        continue;
                    }
                }
                ids.push(id);
                items.push(ExecuteItem {
                    id,
                    op: request.body.op.clone(),
                });
            }
            self.stats.executed_requests += items.len() as u64;
            self.executing.push_back((cid, ids));
            assert_eq!(
                self.executing.len(),
                1,
                "one batch with the service at a time"
            );
            self.out.service(ServiceWork::Execute { cid, items });
            self.last_executed = cid;
            // The leader's requests proposed in an instance decided with another batch (only
            // possible across leader changes) become proposable again.
            if self.is_leader() && my_proposal.is_some() && my_proposal != decided_digest {
                self.pool.unmark_proposed(cid);
            }
            self.log.insert(cid, decision);
            // Checkpoints truncate the log once they are stable; this cap bounds it even if
            // they never become stable (a quorum that stopped announcing).
            while self.log.len() > self.cfg.limits.max_log_entries {
                self.log.pop_first();
            }
            if cid.is_multiple_of(self.cfg.limits.checkpoint_period) {
                self.checkpoints.barrier = Some(cid);
            }
            progressed = true;
        }
        if progressed {
            // Decisions may overtake a transfer.
            if self.transfer.download.as_ref().is_some_and(|t| {
                t.target
                    .is_some_and(|(cid, _, _)| cid <= self.last_executed)
            }) {
                self.transfer.download = None;
            }
            self.check_rejoined(now_ms);
            self.resume_catch_up(now_ms);
            self.accept_deferred_sync_values(now_ms);
            if self.phase == Phase::Normal {
                self.leader_change.change_failures = 0;
            }
            self.retransmit_interval_ms = self.cfg.timeouts.retransmit_initial_ms;
            self.deadlines_ms.remove(&TimerKind::Retransmit);
            self.arm_retransmit(now_ms);
            self.arm_request_timer();
            self.try_propose(now_ms);
        }
    }

    /// Answers a decided request that the client table refused to execute: every correct
    /// replica refuses it alike (the table is replicated state), so the client gets its reply
    /// quorum of refusals. Not rate-limited: one per decided request, as executed ones are.
    fn refuse_decided(&mut self, id: RequestId, status: ReplyStatus) {
        if status == ReplyStatus::SessionExpired {
            self.stats.session_expired_requests += 1;
        }
        self.out.send(
            Peer::Client(id.client),
            Message::Reply(self.refusal(id, status)),
        );
    }

    /// The service finished the batch of `cid` ([`ServiceWork::Execute`]), with one result per
    /// item: caches each reply in the client table and sends it to its client. After the batch
    /// at a checkpoint cid it asks the service for a snapshot
    /// ([`ServiceWork::TakeSnapshot`]).
    ///
    /// # Panics
    /// If `cid` is not the oldest batch handed to the service, or `results` does not hold one
    /// result per executed item: the driver broke its contract.
    pub fn on_executed(&mut self, now_ms: u64, cid: Cid, results: Vec<Vec<u8>>) -> Output {
        let (expected_cid, ids) = self
            .executing
            .pop_front()
            .expect("on_executed called with no batch executing");
        assert_eq!(expected_cid, cid, "batches must complete in cid order");
        assert_eq!(ids.len(), results.len(), "one result per executed request");
        for (id, result) in ids.into_iter().zip(results) {
            self.clients.record_reply(&id, result.clone());
            self.out.send(
                Peer::Client(id.client),
                Message::Reply(self.reply(id, result)),
            );
        }
        if self.checkpoints.barrier == Some(cid) && self.executing.is_empty() {
            // Everything up to `cid` has executed and nothing after it: the client table is
            // exactly the one that goes with the service state at `cid`. Execution resumes
            // once the snapshot is in, so the log never outgrows two periods.
            self.checkpoints.snapshot_clients = Some((cid, self.clients.clone()));
            self.out.service(ServiceWork::TakeSnapshot { cid });
        }
        // The next decided batch, if any (the barrier above holds it until the snapshot).
        self.execute_ready(now_ms);
        self.finish_input()
    }

    /// The result of a [`ServiceWork::Query`]: sends it to the client in a [`Message::Reply`],
    /// uncached (an unordered read is not deduplicated), if the client's reply budget
    /// (`engine/budget.rs`) pays for the result's bytes; withheld and counted
    /// ([`EngineStats::unordered_reads_withheld`](super::EngineStats::unordered_reads_withheld))
    /// otherwise. The read's overhead was paid when it was handed to the service.
    pub fn on_query_result(&mut self, now_ms: u64, id: RequestId, result: Vec<u8>) -> Output {
        let budget = super::budget::ClientReplyBudget::from_config(&self.cfg);
        // Checked apart from the bucket: a bucket that refilled while the service ran is full,
        // and a full bucket pays for any one reply (§3.8: such a result is never sent).
        let longest = budget
            .burst_bytes
            .saturating_sub(super::budget::REPLY_OVERHEAD_BYTES);
        if result.len() as u64 > longest
            || !self
                .client_reply_budgets
                .try_spend(&budget, id.client, now_ms, result.len() as u64)
        {
            self.stats.unordered_reads_withheld += 1;
            return self.finish_input();
        }
        self.out.send(
            Peer::Client(id.client),
            Message::Reply(self.reply(id, result)),
        );
        self.finish_input()
    }

    /// Hands back what the service produced, whichever kind it is: [`Engine::on_executed`],
    /// [`Engine::on_query_result`] or [`Engine::on_snapshot`].
    ///
    /// # Panics
    /// As [`Engine::on_executed`] and [`Engine::on_snapshot`] do.
    pub fn on_service_done(&mut self, now_ms: u64, done: ServiceDone) -> Output {
        match done {
            ServiceDone::Executed { cid, results } => self.on_executed(now_ms, cid, results),
            ServiceDone::Queried { id, result } => self.on_query_result(now_ms, id, result),
            ServiceDone::Snapshot { cid, snapshot } => self.on_snapshot(now_ms, cid, snapshot),
        }
    }
}
