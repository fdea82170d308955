//! Catching up: decision forwarding (asking peers for certified decisions past our last
//! executed cid, answering their queries) and helping a peer that is in an older regency
//! (docs/design.md §3.5; BFT-SMaRt's REQ_DECISION/FWD_DECISION). Every send
//! here is rate-limited, so no peer can make this replica send without bound: answers are paid
//! from the asking peer's reply budget (`engine/budget.rs`) and bounded in bytes, and this
//! replica's own queries are limited per peer, so a peer whose messages trigger queries to itself
//! spends only its own allowance, never the one that catching up from the others needs.

use crate::message::{Cid, Decision, Message, ReplicaId};
use crate::network::Peer;
use crate::rejection::Rejection;
use std::collections::BTreeMap;

use super::budget::{decision_bytes, MAX_DECISIONS_REPLY_BYTES};
use super::Engine;

/// Whom to ask next, and the per-peer budgets that keep catching up from turning into a flood.
#[derive(Clone, Debug)]
pub(super) struct CatchUp {
    /// The peer last asked for decisions; queries go round the others in turn.
    pub(super) query_cursor: ReplicaId,
    /// Per peer: no decision query to it before this time (one per `retransmit_initial_ms`).
    /// Per peer, so that one peer that keeps provoking queries to itself (votes beyond the
    /// window, say) cannot use up the allowance for asking the others.
    pub(super) next_query_allowed_ms: BTreeMap<ReplicaId, u64>,
    /// Per peer: no SYNC query to it before this time (one per `retransmit_initial_ms`).
    pub(super) next_sync_query_allowed_ms: BTreeMap<ReplicaId, u64>,
    /// Per peer: when we may next send it our SYNC.
    pub(super) next_help_ms: BTreeMap<ReplicaId, u64>,
    /// When certified decisions from a peer last moved this replica forward. A replica that is
    /// catching up blames its own lag, not the leader, for its requests' timeouts.
    pub(super) last_catch_up_ms: Option<u64>,
    /// The peer a catch-up was asking when the window filled with decisions that still wait
    /// for the service: asked again as soon as execution makes room (see
    /// [`Engine::maybe_query`]). The sender of a full answer takes the place; otherwise the
    /// first peer named keeps it, so that no peer's claim (a heartbeat, a vote beyond the
    /// window) takes it from the peer that was answering.
    pub(super) resume_from: Option<ReplicaId>,
}

impl CatchUp {
    /// Queries start with the peer after `me`.
    pub(super) fn new(me: ReplicaId) -> CatchUp {
        CatchUp {
            query_cursor: me,
            next_query_allowed_ms: BTreeMap::new(),
            next_sync_query_allowed_ms: BTreeMap::new(),
            next_help_ms: BTreeMap::new(),
            last_catch_up_ms: None,
            resume_from: None,
        }
    }
}

impl Engine {
    /// A peer sent something about a cid we executed long ago: send it the decision, so that
    /// it catches up without waiting for a query.
    pub(super) fn help_peer_behind(
        &mut self,
        now_ms: u64,
        peer: ReplicaId,
        cid: Cid,
    ) -> Result<(), Rejection> {
        if let Some(decision) = self.log.get(&cid) {
            let message = Message::Decisions(vec![decision.clone()]);
            self.reply_to_peer(now_ms, peer, message, "decisions")?;
        }
        Ok(())
    }

    /// Answers a DecisionQuery with the certified decisions from `from_cid` on: at most
    /// `max_decisions_per_reply` of them and [`MAX_DECISIONS_REPLY_BYTES`] (one at least), paid
    /// from the asker's reply budget; or, if the log no longer reaches back that far, with our
    /// StateInfo so that it transfers the checkpoint instead.
    pub(super) fn handle_decision_query(
        &mut self,
        now_ms: u64,
        from: ReplicaId,
        from_cid: Cid,
    ) -> Result<(), Rejection> {
        let log_start = self
            .log
            .keys()
            .next()
            .copied()
            .unwrap_or(self.last_executed.saturating_add(1));
        if from_cid < log_start {
            // Truncated away: the peer needs a checkpoint. Not only a stable one: the log is
            // also capped at `max_log_entries` while no checkpoint becomes stable (a quorum
            // that stopped announcing), and then the decisions the peer needs are gone while
            // our own checkpoints still cover them. Our StateInfo reports those too, and the
            // peer transfers one once `state_transfer_digests` replicas report it identically;
            // answering with the decisions after the gap instead would leave it stuck for good.
            let newest_held = self
                .checkpoints
                .own
                .keys()
                .next_back()
                .copied()
                .into_iter()
                .chain(self.checkpoints.stable.as_ref().map(|c| c.cid))
                .max();
            if newest_held.is_some_and(|cid| cid >= from_cid) {
                let info = self.state_info();
                return self.reply_to_peer(now_ms, from, info, "state info");
            }
        }
        let mut bytes = 0u64;
        let mut decisions: Vec<Decision> = Vec::new();
        // Executed decisions from the log, then those decided here that still wait for the
        // service, up to `decided_up_to`: what this replica's STOPDATA proves decided, so a
        // new leader that starts after it can fetch it here (docs/design.md §3.10).
        let first = from_cid.max(Cid::FIRST);
        let waiting_from = first.max(self.last_executed.saturating_add(1));
        let waiting_to = self.decided_up_to();
        // (`range` panics on an empty range given backwards.)
        let waiting = self
            .instances
            .range(waiting_from..)
            .take_while(move |(cid, _)| **cid <= waiting_to)
            .filter_map(|(_, i)| i.decided.as_ref());
        for d in self
            .log
            .range(first..)
            .map(|(_, d)| d)
            .chain(waiting)
            .take(self.cfg.limits.max_decisions_per_reply)
        {
            bytes = bytes.saturating_add(decision_bytes(d));
            if !decisions.is_empty() && bytes > MAX_DECISIONS_REPLY_BYTES {
                break;
            }
            decisions.push(d.clone());
        }
        if decisions.is_empty() {
            return Ok(());
        }
        self.reply_to_peer(now_ms, from, Message::Decisions(decisions), "decisions")
    }

    /// The first cid after the last executed one for which this replica holds no decision.
    /// Execution is asynchronous (one batch with the service at a time), so decisions learned
    /// from a peer can wait, decided, in the window: asking from `last_executed + 1` would
    /// fetch them again and learn nothing new (docs/design.md §3.5, "Catching up while the
    /// service runs").
    pub(super) fn first_undecided_cid(&self) -> Cid {
        let mut cid = self.last_executed.saturating_add(1);
        while self
            .instances
            .get(&cid)
            .is_some_and(|i| i.decided.is_some())
        {
            cid = cid.saturating_add(1);
        }
        cid
    }

    /// The highest cid up to which every cid is decided here: executed, or decided and waiting
    /// for the service. What a STOPDATA proves decided.
    pub(super) fn decided_up_to(&self) -> Cid {
        let first_undecided = self.first_undecided_cid();
        assert!(
            first_undecided > Cid::ZERO,
            "the first undecided cid is past cid 0"
        );
        Cid(first_undecided.0 - 1)
    }

    /// Asks `peer` for the decisions this replica lacks, from [`Engine::first_undecided_cid`],
    /// at most once per retransmit interval so that a lying or repeated trigger cannot make us
    /// flood. If the window has no room left for a full answer (decisions waiting for the
    /// service fill it), the query waits until execution makes that room, then goes to `peer`:
    /// asking for every slot that frees would fetch a whole answer to learn one decision.
    pub(super) fn maybe_query(&mut self, now_ms: u64, peer: ReplicaId) {
        if peer == self.me {
            return;
        }
        let from_cid = self.first_undecided_cid();
        let window_end = self
            .last_executed
            .saturating_add(self.cfg.limits.max_instances_ahead);
        let answer = (self.cfg.limits.max_decisions_per_reply as u64)
            .clamp(1, self.cfg.limits.max_instances_ahead.max(1));
        let room = window_end
            .saturating_add(1)
            .saturating_distance_from(from_cid);
        if room < answer {
            // The first peer named keeps the place: a full answer names its sender (the
            // Decisions handler clears the place first), and any peer's heartbeat or vote
            // beyond the window would otherwise take it over, a liar's included, so the
            // resumed query went to a peer with nothing to send (review R1).
            self.catch_up.resume_from.get_or_insert(peer);
            return;
        }
        let next = self.catch_up.next_query_allowed_ms.entry(peer).or_insert(0);
        if now_ms < *next {
            return;
        }
        *next = now_ms.saturating_add(self.cfg.timeouts.retransmit_initial_ms);
        self.out
            .send(Peer::Replica(peer), Message::DecisionQuery { from_cid });
    }

    /// Execution made room in the window: resume a catch-up that paused because it was full.
    pub(super) fn resume_catch_up(&mut self, now_ms: u64) {
        if let Some(peer) = self.catch_up.resume_from.take() {
            self.allow_query_now(peer);
            self.maybe_query(now_ms, peer);
        }
    }

    pub(super) fn next_query_peer(&mut self) -> ReplicaId {
        let n = self.quorums.n() as u32;
        self.catch_up.query_cursor = (self.catch_up.query_cursor + 1) % n;
        if self.catch_up.query_cursor == self.me {
            self.catch_up.query_cursor = (self.catch_up.query_cursor + 1) % n;
        }
        self.catch_up.query_cursor
    }

    /// Reacts to a stateful rejection of a replica message that says something about the
    /// sender: a future regency means we missed a leader change, a stale one that the sender
    /// did, and a cid beyond our window that we are behind.
    pub(super) fn on_instance_rejection(
        &mut self,
        now_ms: u64,
        from: ReplicaId,
        rejection: Rejection,
    ) -> Rejection {
        match rejection {
            Rejection::FutureRegency { .. } => self.request_sync(now_ms, from),
            Rejection::StaleRegency { .. } => self.help_stale_peer(now_ms, from),
            Rejection::CidBeyondWindow { .. } => self.maybe_query(now_ms, from),
            _ => {}
        }
        rejection
    }

    /// Asks `peer` for the SYNC of its regency, at most once per retransmit interval.
    pub(super) fn request_sync(&mut self, now_ms: u64, peer: ReplicaId) {
        if peer == self.me {
            return;
        }
        let next = self
            .catch_up
            .next_sync_query_allowed_ms
            .entry(peer)
            .or_insert(0);
        if now_ms < *next {
            return;
        }
        *next = now_ms.saturating_add(self.cfg.timeouts.retransmit_initial_ms);
        self.out.send(Peer::Replica(peer), Message::SyncQuery);
    }

    /// Sends a peer that is in an older regency the SYNC that proves ours, if this replica has
    /// one yet (it may be in the regency by STOPs, waiting for the SYNC).
    pub(super) fn help_stale_peer(&mut self, now_ms: u64, peer: ReplicaId) {
        // Without a SYNC there is nothing to send, and no pacing slot is spent: the peer's
        // next ask, once the SYNC is here, gets it at once.
        let Some(sync) = &self.leader_change.current_sync else {
            return;
        };
        // A SYNC can be large: at most one per peer per retransmit interval, however often a
        // (possibly Byzantine) peer asks. The slot goes with each SYNC this replica tries to
        // send, one the peer's reply budget refuses included (so a peer over its budget does
        // not get a SYNC cloned at each of its messages).
        let next = self.catch_up.next_help_ms.entry(peer).or_insert(0);
        if now_ms < *next {
            return;
        }
        *next = now_ms.saturating_add(self.cfg.timeouts.retransmit_initial_ms);
        let message = Message::Sync(sync.clone());
        // A dropped SYNC is the stale peer's loss only; it asks again.
        let _ = self.reply_to_peer(now_ms, peer, message, "syncs");
    }

    /// Allows the next decision query to `peer` at once (an answer showed it has more).
    pub(super) fn allow_query_now(&mut self, peer: ReplicaId) {
        self.catch_up.next_query_allowed_ms.insert(peer, 0);
    }

    /// Sends `message` to `peer` in answer to something it sent, if its reply budget
    /// (`engine/budget.rs`) pays for it; refuses it as [`Rejection::RateLimited`] otherwise.
    pub(super) fn reply_to_peer(
        &mut self,
        now_ms: u64,
        peer: ReplicaId,
        message: Message,
        what: &'static str,
    ) -> Result<(), Rejection> {
        let cost = super::budget::reply_cost_bytes(&message);
        if !self.reply_budgets.try_spend(peer, now_ms, cost) {
            return Err(super::budget::over_budget(what));
        }
        self.out.send(Peer::Replica(peer), message);
        Ok(())
    }
}
