//! Ordering: client requests entering the pool, the leader cutting and proposing batches, and
//! the votes of one consensus instance (PROPOSE, WRITE, ACCEPT) up to its decision
//! (docs/design.md §3.4; BFT-SMaRt's `Acceptor`).

use std::collections::BTreeMap;

use smr_crypto::{verify_batch_then_each, Digest, SignedItem, VerifyError};

use crate::clients::RequestStatus;
use crate::message::{
    Batch, Cid, Decision, Message, PreparedProof, Propose, Regency, ReplicaId, Reply, ReplyStatus,
    Request, RequestId, RequestKind, Signed, Vote, VoteKind,
};
use crate::network::Peer;
use crate::pool::{Inserted, PoolRejection};
use crate::rejection::Rejection;

use super::{Engine, PersistRecord, Phase, Proposal, ServiceWork, TimerKind};

impl Engine {
    pub(super) fn handle_request(
        &mut self,
        now_ms: u64,
        request: Request,
        direct: bool,
        signature_checked: bool,
    ) -> Result<(), Rejection> {
        let id = request.id();
        if request.body.kind == RequestKind::Unordered {
            // An unordered read is answered from the client's reply budget (`engine/budget.rs`),
            // the bucket that pays for its cached replies: `REPLY_OVERHEAD_BYTES` here,
            // before the service does any work, and the result's bytes when it comes back
            // (`on_query_result`). Withheld (counted, not refused) once the bucket is spent:
            // the client falls back to an ordered request, or reads again after the refill.
            // A replica that rejoins may have lost state it answered from before (a write it
            // replied to): its answer could undo that write's reply in the client's quorum, so
            // it answers no unordered read until it takes part again (docs/design.md §3.8).
            // Nor does one restarted from its store before it has re-executed every stored
            // decision: its service is behind states it answered from before the crash.
            if direct && (!self.participates() || self.last_executed < self.reads_withheld_until) {
                self.stats.unordered_reads_withheld += 1;
                return Ok(());
            }
            if direct {
                if !self.spend_reply_overhead(now_ms, id) {
                    self.stats.unordered_reads_withheld += 1;
                    return Ok(());
                }
                self.out.service(ServiceWork::Query {
                    id,
                    op: request.body.op,
                });
            }
            return Ok(());
        }
        match self.clients.status(&id) {
            RequestStatus::Executed(Some(result)) => {
                // A duplicate: resent from the reply cache if the client's budget pays for it,
                // checked before the reply is copied.
                let len = result.len();
                if direct && self.pay_cached_reply(now_ms, id, len) {
                    if let RequestStatus::Executed(Some(result)) = self.clients.status(&id) {
                        let result = result.to_vec();
                        self.out.send(
                            Peer::Client(id.client),
                            Message::Reply(self.reply(id, result)),
                        );
                    }
                }
                return Ok(());
            }
            RequestStatus::Executed(None) => return Ok(()),
            // A copy of an open whose session is open: answered with the session's number
            // from the client's reply budget like a cached reply, never ordered again (an open
            // is executed once while its session has a record).
            RequestStatus::Opened(session) => {
                if direct && self.pay_cached_reply(now_ms, id, 8) {
                    let number = session.to_le_bytes().to_vec();
                    self.out.send(
                        Peer::Client(id.client),
                        Message::Reply(self.reply(id, number)),
                    );
                }
                return Ok(());
            }
            // Refusals are answered, so that a client never waits for a reply that cannot
            // come (docs/design.md §3.7, "What a client sees"); from the same budget as cached
            // replies, so that resending old seqs buys a client no more replies than resending
            // executed ones.
            RequestStatus::Stale => {
                if direct {
                    self.answer_refusal(now_ms, id, ReplyStatus::Stale);
                }
                return Err(Rejection::StaleRequest);
            }
            // The session's eviction is decided (the table remembers it): neither its
            // client's retry nor a copy a Byzantine replica forwards is ordered again. A
            // replica behind the others may not know the eviction yet and orders it; it is
            // then refused at execution, where the table is the same on every correct replica.
            // (A session is never taken for expired for its seq alone: sim seed 24 of the
            // leader-crash scenario, a lagging replica without the session's record.)
            RequestStatus::SessionExpired => {
                if direct {
                    self.answer_refusal(now_ms, id, ReplyStatus::SessionExpired);
                }
                return Err(Rejection::StaleRequest);
            }
            RequestStatus::New => {}
        }
        match self.pool.insert(request, now_ms, signature_checked) {
            Ok(Inserted::New) => {
                if self.is_leader() {
                    self.try_propose(now_ms);
                }
                self.arm_request_timer();
                Ok(())
            }
            Ok(Inserted::AlreadyPending) => Ok(()),
            Err(PoolRejection::ClientFull) => Err(Rejection::ClientPoolFull),
            Err(PoolRejection::PoolFull) => Err(Rejection::PoolFull),
        }
    }

    /// Whether the client's reply budget (`engine/budget.rs`) pays for resending a cached
    /// result of `len` bytes to `id`'s client. Withheld otherwise, counted but not refused: a
    /// client that sends its retry to every replica at once, or retries sooner than
    /// `retransmit_initial_ms`, is not misbehaving, and its next retry after the interval is
    /// answered.
    fn pay_cached_reply(&mut self, now_ms: u64, id: RequestId, len: usize) -> bool {
        let budget = super::budget::ClientReplyBudget::from_config(&self.cfg);
        let cost = super::budget::REPLY_OVERHEAD_BYTES.saturating_add(len as u64);
        let paid = self
            .client_reply_budgets
            .try_spend(&budget, id.client, now_ms, cost);
        if !paid {
            self.stats.cached_replies_withheld += 1;
        }
        paid
    }

    /// Verifies the signatures of those of `requests` (all pending) that were authenticated by
    /// their client's channel only, in one batch; a request whose signature fails leaves the
    /// pool and counts against its client ([`Rejection::BadClientSignature`]). Every request
    /// this replica puts in a PROPOSE, Forward or STOP passes through here first, so a correct
    /// replica never relays a bad signature, and a client cannot get a correct leader suspected
    /// with requests it signed badly (docs/design.md §5). Verification is a pure function of
    /// the request, so the engine stays deterministic.
    ///
    /// # Panics
    /// If a request needs checking and no verifier was set ([`Engine::set_request_verifier`]):
    /// only a driver that authenticates requests by channel produces such requests, and it
    /// must set one.
    pub(super) fn authenticate_pending(&mut self, requests: &[Request]) {
        if !self.quorums.requires_signatures() {
            return;
        }
        let unchecked: Vec<&Request> = requests
            .iter()
            .filter(|r| !self.pool.signature_checked(&r.id()))
            .collect();
        if unchecked.is_empty() {
            return;
        }
        let verifier = self.request_verifier.clone().expect(
            "a request authenticated by channel reached an engine without a request verifier",
        );
        let bytes: Vec<Vec<u8>> = unchecked
            .iter()
            .map(|r| Request::signing_bytes_of(&r.body))
            .collect();
        // The verifier refused unsigned requests; a missing one here is treated as bad.
        let (verdicts, checked): (Vec<Result<(), VerifyError>>, usize) = {
            let signed: Vec<Option<SignedItem<'_>>> = unchecked
                .iter()
                .zip(&bytes)
                .map(|(r, message)| {
                    r.signature.as_ref().map(|signature| SignedItem {
                        key: &r.body.client,
                        message,
                        signature,
                    })
                })
                .collect();
            // One batch over the signed ones, then one check per item after the first bad one
            // (`verify_batch_then_each`: a run of bad signatures costs linear work, review R2
            // of stop 26). Each signature submitted is counted (a failed batch and the checks
            // after it count twice), so the counter shows the work.
            let mut verdicts: Vec<Result<(), VerifyError>> = signed
                .iter()
                .map(|item| match item {
                    Some(_) => Ok(()),
                    None => Err(VerifyError::BadSignature),
                })
                .collect();
            let (positions, batch): (Vec<usize>, Vec<SignedItem<'_>>) = signed
                .iter()
                .enumerate()
                .filter_map(|(i, item)| item.map(|item| (i, item)))
                .unzip();
            let (batch_verdicts, checked) = verify_batch_then_each(&*verifier, &batch);
            for (i, verdict) in positions.into_iter().zip(batch_verdicts) {
                verdicts[i] = verdict;
            }
            (verdicts, checked)
        };
        self.stats.client_signatures_verified += checked as u64;
        let ids: Vec<RequestId> = unchecked.iter().map(|r| r.id()).collect();
        for (id, verdict) in ids.into_iter().zip(verdicts) {
            match verdict {
                Ok(()) => self.pool.mark_signature_checked(&id),
                Err(reason) => {
                    self.pool.remove(&id);
                    self.reject(Rejection::BadClientSignature {
                        client: id.client,
                        reason,
                    });
                }
            }
        }
        self.arm_request_timer();
    }

    /// The reply of an executed request.
    pub(super) fn reply(&self, id: RequestId, result: Vec<u8>) -> Reply {
        Reply {
            replica: self.me,
            client: id.client,
            session: id.session,
            seq: id.seq,
            status: ReplyStatus::Executed,
            regency: self.regency,
            result,
        }
    }

    /// The reply that refuses `id` for `status`, with an empty result.
    pub(super) fn refusal(&self, id: RequestId, status: ReplyStatus) -> Reply {
        Reply {
            status,
            ..self.reply(id, Vec::new())
        }
    }

    /// Takes `REPLY_OVERHEAD_BYTES` from the reply budget of `id`'s client key; false if it is
    /// spent.
    fn spend_reply_overhead(&mut self, now_ms: u64, id: RequestId) -> bool {
        let budget = super::budget::ClientReplyBudget::from_config(&self.cfg);
        self.client_reply_budgets.try_spend(
            &budget,
            id.client,
            now_ms,
            super::budget::REPLY_OVERHEAD_BYTES,
        )
    }

    /// Sends the refusal of a request that arrived directly, if the client's reply budget
    /// pays for it (withheld and counted as a cached reply otherwise).
    fn answer_refusal(&mut self, now_ms: u64, id: RequestId, status: ReplyStatus) {
        if !self.spend_reply_overhead(now_ms, id) {
            self.stats.cached_replies_withheld += 1;
            return;
        }
        self.out.send(
            Peer::Client(id.client),
            Message::Reply(self.refusal(id, status)),
        );
    }

    pub(super) fn arm_request_timer(&mut self) {
        match self.pool.oldest_arrival_ms() {
            Some(t) => {
                self.deadlines_ms.insert(
                    TimerKind::Request,
                    t.saturating_add(self.cfg.timeouts.request_timeout_ms),
                );
            }
            None => {
                self.deadlines_ms.remove(&TimerKind::Request);
            }
        }
    }

    pub(super) fn in_flight(&self) -> u64 {
        self.next_cid_to_propose
            .saturating_distance_from(self.last_executed.saturating_add(1))
    }

    /// Adaptive batching, where instances are expensive. With no instance in flight, whatever is
    /// pending is proposed at once, so a lightly loaded cluster answers as fast as it can. With k
    /// instances already in flight, another one starts only if it can carry at least
    /// k × `max_batch_requests / 16` requests. In modes that sign replica messages (BFT) every
    /// instance costs a signed PROPOSE, and at every replica two signed votes and seven signature
    /// checks. Under moderate load, requests therefore wait for the running instance and go out
    /// together in a larger batch, while heavy load still fills the window. On the 2-core
    /// benchmark machine BFT is CPU-bound at every load, and a window of 4 spent a third of its
    /// CPU on instances of 1.5 requests when one client had 8 requests in flight. CFT instances
    /// cost no signatures, so CFT keeps proposing at once up to the window.
    pub(super) fn worth_another_instance(&self) -> bool {
        if !self.quorums.requires_signatures() {
            return true;
        }
        let in_flight = self.in_flight();
        let step = (self.cfg.limits.max_batch_requests as u64 / 16).max(1);
        in_flight == 0 || self.pool.unproposed() as u64 >= in_flight.saturating_mul(step)
    }

    pub(super) fn try_propose(&mut self, now_ms: u64) {
        if !self.is_leader() || self.phase != Phase::Normal || !self.participates() {
            return;
        }
        // A leader that learned decisions from peers must not propose into decided cids.
        self.next_cid_to_propose = self
            .next_cid_to_propose
            .max(self.last_executed.saturating_add(1));
        while self.in_flight() < self.cfg.limits.max_instances_in_flight {
            let cid = self.next_cid_to_propose;
            let with_requests = self.pool.unproposed() > 0 && self.worth_another_instance();
            // With nothing to propose, a leader orders empty batches up to the cid a
            // rejoining peer waits for, so that it takes part even in a quiet cluster
            // (docs/design.md §3.12, "Reaching the horizon"), within the in-flight bound
            // like any other instance.
            let empty = self.pool.unproposed() == 0
                && self.abstaining_until().is_some_and(|until| cid <= until);
            if !with_requests && !empty {
                break;
            }
            if self.instances.get(&cid).is_some_and(|i| {
                i.proposal.is_some()
                    || i.decided.is_some()
                    || i.my_write.is_some()
                    || i.my_accept.is_some()
            }) {
                // Already proposed here (or decided via a peer), or voted in before a restart:
                // a leader never proposes two batches for one (cid, regency).
                self.next_cid_to_propose = cid.next();
                continue;
            }
            let requests = if with_requests {
                let mut requests = self.pool.cut_batch(
                    cid,
                    self.cfg.limits.max_batch_requests,
                    self.cfg.limits.max_batch_bytes,
                );
                assert!(
                    !requests.is_empty(),
                    "pool reported unproposed requests but cut none"
                );
                // A correct leader's PROPOSE carries only good signatures, so every correct
                // follower can take it (docs/design.md §5). Badly signed requests leave the
                // pool; if none is left, cut again (the pool is smaller, so this ends).
                self.authenticate_pending(&requests);
                requests.retain(|r| self.pool.contains(&r.id()));
                if requests.is_empty() {
                    continue;
                }
                requests
            } else {
                Vec::new()
            };
            let propose = Signed::new(
                Propose {
                    leader: self.me,
                    cid,
                    regency: self.regency,
                    batch: Batch { requests },
                },
                self.signer.as_deref(),
            );
            self.next_cid_to_propose = cid.next();
            self.stats.proposals_sent += 1;
            // The PROPOSE promises that this leader proposes nothing else for (cid, regency);
            // a restarted leader knows that only from its own vote record, which
            // `accept_proposal` produces next. So the PROPOSE waits for that record.
            self.out
                .broadcast_after_persist(Message::Propose(propose.clone()));
            let batch = propose.body.batch.clone();
            self.accept_proposal(now_ms, cid, batch, Some(propose));
        }
    }

    /// Checks the regency and cid window of a replica message. `Ok(false)` means the message
    /// is about an instance this replica already executed: the sender is behind.
    pub(super) fn check_instance(&mut self, cid: Cid, regency: Regency) -> Result<bool, Rejection> {
        if regency < self.regency {
            return Err(Rejection::StaleRegency {
                got: regency,
                current: self.regency,
            });
        }
        if regency > self.regency {
            return Err(Rejection::FutureRegency {
                got: regency,
                current: self.regency,
            });
        }
        if cid <= self.last_executed {
            return Ok(false);
        }
        // Only after the regency checks, and capped at the window: one peer's claim of a cid
        // far ahead is a hint to ask (rate-limited), never a number to compute with.
        self.note_seen_cid(cid);
        let window_end = self
            .last_executed
            .saturating_add(self.cfg.limits.max_instances_ahead);
        if cid > window_end {
            return Err(Rejection::CidBeyondWindow { cid, window_end });
        }
        Ok(true)
    }

    /// Notes that a peer spoke of `cid` in the current regency, which may mean this replica is
    /// behind: raises `highest_seen_cid`, capped at the end of the window (the only use of the
    /// value is "ask for decisions", and a cid past the window asks just the same).
    pub(super) fn note_seen_cid(&mut self, cid: Cid) {
        let window_end = self
            .last_executed
            .saturating_add(self.cfg.limits.max_instances_ahead);
        self.highest_seen_cid = self.highest_seen_cid.max(cid.min(window_end));
    }

    pub(super) fn handle_propose(
        &mut self,
        now_ms: u64,
        from: ReplicaId,
        propose: Signed<Propose>,
    ) -> Result<(), Rejection> {
        let p = &propose.body;
        let leader = self.quorums.leader_of(p.regency.0);
        if from != leader {
            return Err(Rejection::WrongLeader {
                from,
                regency: p.regency,
                leader,
            });
        }
        match self.check_instance(p.cid, p.regency) {
            Ok(true) => {}
            Ok(false) => {
                return self.help_peer_behind(now_ms, from, p.cid);
            }
            Err(e) => return Err(self.on_instance_rejection(now_ms, from, e)),
        }
        if self.phase != Phase::Normal {
            // A proposal before this replica applied the regency's SYNC could conflict with
            // a value the SYNC fixes; the leader resends it.
            return Err(Rejection::SyncInProgress);
        }
        let cid = p.cid;
        if cid <= self.leader_change.sync_end {
            // The regency's SYNC fixed this cid (decided up to its start, its value after), and
            // a correct leader proposes only past its end. A replica behind the SYNC, which
            // holds neither the decision nor the SYNC's value here, would otherwise vote for
            // whatever a Byzantine leader proposes at a cid decided with another value
            // (docs/design.md §3.10, "A replica behind the SYNC").
            return Err(Rejection::Equivocation {
                replica: from,
                cid,
                what: "proposals (its SYNC fixed the cid)",
            });
        }
        if let Some(existing) = self.instances.get(&cid).and_then(|i| i.proposal.as_ref()) {
            if existing.digest != propose.body.batch.digest() {
                return Err(Rejection::Equivocation {
                    replica: from,
                    cid,
                    what: "proposals",
                });
            }
            return Ok(());
        }
        let batch = propose.body.batch.clone();
        self.accept_proposal(now_ms, cid, batch, Some(propose));
        Ok(())
    }

    /// Records the value for `cid` in the current regency (from a PROPOSE or a SYNC) and casts
    /// this replica's first vote on it.
    pub(super) fn accept_proposal(
        &mut self,
        now_ms: u64,
        cid: Cid,
        batch: Batch,
        signed: Option<Signed<Propose>>,
    ) {
        if !self.participates() {
            return;
        }
        // Every caller checked the window: a PROPOSE through `check_instance`, the leader through
        // its in-flight bound, a SYNC's values by filtering.
        assert!(
            cid > self.last_executed
                && cid
                    <= self
                        .last_executed
                        .saturating_add(self.cfg.limits.max_instances_ahead),
            "a value for cid {cid} outside the window after {}",
            self.last_executed
        );
        let digest = batch.digest();
        let regency = self.regency;
        let runs_write = self.quorums.runs_write_phase();
        let instance = self.instances.entry(cid).or_default();
        if instance.decided.is_some() || instance.proposal.is_some() {
            return;
        }
        // A vote cast before a restart binds this replica: never vote for another value in
        // the same instance and regency.
        let voted_other = [&instance.my_write, &instance.my_accept]
            .into_iter()
            .flatten()
            .any(|v| v.body.regency == regency && v.body.digest != digest);
        if voted_other {
            return;
        }
        if !runs_write {
            // CFT accepts straight away: the accepted value is its prepared value.
            instance.prepared = Some(PreparedProof {
                cid,
                epoch: regency,
                batch: batch.clone(),
                writes: Vec::new(),
            });
        }
        instance.proposal = Some(Proposal {
            digest,
            batch,
            signed,
        });
        let kind = if runs_write {
            VoteKind::Write
        } else {
            VoteKind::Accept
        };
        self.cast_vote(now_ms, cid, kind, digest);
        self.arm_retransmit(now_ms);
    }

    pub(super) fn cast_vote(&mut self, now_ms: u64, cid: Cid, kind: VoteKind, digest: Digest) {
        let vote = Vote {
            kind,
            replica: self.me,
            cid,
            regency: self.regency,
            digest,
        };
        let own = self.instances.get(&cid).and_then(|i| match kind {
            VoteKind::Write => i.my_write.as_ref(),
            VoteKind::Accept => i.my_accept.as_ref(),
        });
        // A vote restored from the store may be cast again, but never for another value.
        assert!(
            own.is_none_or(|v| v.body.digest == digest),
            "a second {kind:?} value by this replica in cid {cid} regency {}",
            self.regency
        );
        let signed = Signed::new(vote, self.signer.as_deref());
        if kind == VoteKind::Accept {
            if let Some(prepared) = self.instances.get(&cid).and_then(|i| i.prepared.clone()) {
                self.out.persist(PersistRecord::Prepared(prepared));
            }
        }
        self.out.persist(PersistRecord::Vote(vote));
        let message = match kind {
            VoteKind::Write => Message::Write(signed.clone()),
            VoteKind::Accept => Message::Accept(signed.clone()),
        };
        self.out.broadcast(message);
        let instance = self
            .instances
            .get_mut(&cid)
            .expect("voting on a known instance");
        match kind {
            VoteKind::Write => {
                instance.my_write = Some(signed.clone());
                instance.writes.insert(self.me, signed);
                self.check_writes(now_ms, cid);
            }
            VoteKind::Accept => {
                instance.my_accept = Some(signed.clone());
                instance.accepts.insert(self.me, signed);
                self.check_accepts(now_ms, cid);
            }
        }
    }

    pub(super) fn handle_vote(
        &mut self,
        now_ms: u64,
        from: ReplicaId,
        vote: Signed<Vote>,
    ) -> Result<(), Rejection> {
        let v = vote.body;
        match self.check_instance(v.cid, v.regency) {
            Ok(true) => {}
            // Late votes for executed instances are normal (only Q of n are needed). A peer
            // that is really behind asks with a DecisionQuery when its retransmit timer fires.
            Ok(false) => return Ok(()),
            Err(e) => return Err(self.on_instance_rejection(now_ms, from, e)),
        }
        let instance = self.instances.entry(v.cid).or_default();
        if instance.decided.is_some() {
            return Ok(());
        }
        let (votes, what) = match v.kind {
            VoteKind::Write => (&mut instance.writes, "writes"),
            VoteKind::Accept => (&mut instance.accepts, "accepts"),
        };
        if let Some(existing) = votes.get(&from) {
            if existing.body.digest != v.digest {
                return Err(Rejection::Equivocation {
                    replica: from,
                    cid: v.cid,
                    what,
                });
            }
            return Ok(());
        }
        votes.insert(from, vote);
        self.arm_retransmit(now_ms);
        match v.kind {
            VoteKind::Write => self.check_writes(now_ms, v.cid),
            VoteKind::Accept => self.check_accepts(now_ms, v.cid),
        }
        Ok(())
    }

    /// BFT: after this replica's own WRITE for h and Q matching WRITEs, it accepts h.
    pub(super) fn check_writes(&mut self, now_ms: u64, cid: Cid) {
        let needed = self
            .quorums
            .writes_to_accept()
            .expect("WRITEs only exist in BFT");
        let Some(instance) = self.instances.get_mut(&cid) else {
            return;
        };
        let Some(my_write) = &instance.my_write else {
            return;
        };
        if instance.my_accept.is_some() {
            return;
        }
        let digest = my_write.body.digest;
        let matching: Vec<Signed<Vote>> = instance
            .writes
            .values()
            .filter(|w| w.body.digest == digest)
            .cloned()
            .collect();
        if matching.len() < needed {
            return;
        }
        // After a restart the WRITE may be remembered without the batch it was for; accepting
        // needs the batch (STOPDATA must be able to re-propose it), so wait for a resend.
        let Some(batch) = instance.proposal.as_ref().map(|p| p.batch.clone()) else {
            return;
        };
        instance.prepared = Some(PreparedProof {
            cid,
            epoch: self.regency,
            batch,
            writes: matching,
        });
        self.cast_vote(now_ms, cid, VoteKind::Accept, digest);
    }

    /// Q matching ACCEPTs decide, once the batch with that digest is known.
    pub(super) fn check_accepts(&mut self, now_ms: u64, cid: Cid) {
        let needed = self.quorums.accepts_to_decide();
        let Some(instance) = self.instances.get(&cid) else {
            return;
        };
        if instance.decided.is_some() {
            return;
        }
        let mut by_digest: BTreeMap<Digest, Vec<&Signed<Vote>>> = BTreeMap::new();
        for accept in instance.accepts.values() {
            by_digest
                .entry(accept.body.digest)
                .or_default()
                .push(accept);
        }
        let Some((digest, certificate)) = by_digest.into_iter().find(|(_, v)| v.len() >= needed)
        else {
            return;
        };
        let certificate: Vec<Signed<Vote>> = certificate.into_iter().cloned().collect();
        match &instance.proposal {
            Some(p) if p.digest == digest => {
                let decision = Decision {
                    cid,
                    batch: p.batch.clone(),
                    certificate,
                };
                self.decide(now_ms, decision);
            }
            // Decided, but this replica never saw the batch (or saw another one): fetch the
            // certified decision from a peer that accepted it.
            _ => {
                let peer = certificate
                    .iter()
                    .map(|a| a.body.replica)
                    .find(|r| *r != self.me)
                    .unwrap_or(self.leader());
                self.maybe_query(now_ms, peer);
            }
        }
    }

    pub(super) fn decide(&mut self, now_ms: u64, decision: Decision) {
        let cid = decision.cid;
        let instance = self.instances.entry(cid).or_default();
        if let Some(decided) = &instance.decided {
            // Two certified values for one cid would take more than f faulty replicas.
            assert_eq!(
                decided.batch.digest(),
                decision.batch.digest(),
                "two values decided for cid {cid}"
            );
            return;
        }
        // Certified for its own batch: the verifier checked the certificate against the
        // batch's digest (or this replica counted the ACCEPTs itself).
        debug_assert!(
            {
                let digest = decision.batch.digest();
                decision.certificate.iter().all(|a| a.body.digest == digest)
            },
            "a decision whose certificate is for another value (cid {cid})"
        );
        self.out.persist(PersistRecord::Decided(decision.clone()));
        instance.decided = Some(decision);
        self.stats.decided_instances += 1;
        self.execute_ready(now_ms);
    }

    /// A certified decision learned from a peer (already verified).
    pub(super) fn learn_decision(&mut self, now_ms: u64, decision: Decision) {
        let cid = decision.cid;
        if cid <= self.last_executed
            || cid
                > self
                    .last_executed
                    .saturating_add(self.cfg.limits.max_instances_ahead)
        {
            return;
        }
        if self
            .instances
            .get(&cid)
            .is_some_and(|i| i.decided.is_some())
        {
            return;
        }
        self.stats.decisions_learned_from_peers += 1;
        self.decide(now_ms, decision);
    }
}
