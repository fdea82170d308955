//! Timers: the engine keeps each timer's deadline in one place and the driver pulls the
//! earliest ([`Engine::next_deadline_ms`], [`Engine::on_timeout`]). Retransmission, request
//! timeouts (forward, then STOP), the leader's heartbeat and the leader-change timeout.

use crate::clients::RequestStatus;
use crate::message::{Message, Regency, Request};
use crate::network::Peer;

use super::recovery::Rejoin;
use super::{Engine, Output, TimerKind};

impl Engine {
    pub(super) fn arm_retransmit(&mut self, now_ms: u64) {
        if self.instances.is_empty()
            && self.leader_change.my_stop.is_none()
            && self.leader_change.my_stopdata.is_none()
            && self.transfer.download.is_none()
            && matches!(self.rejoin, Rejoin::Done)
        {
            self.deadlines_ms.remove(&TimerKind::Retransmit);
        } else {
            self.deadlines_ms
                .entry(TimerKind::Retransmit)
                .or_insert(now_ms.saturating_add(self.retransmit_interval_ms));
        }
    }

    /// The earliest deadline of any armed timer, in the engine's milliseconds: call
    /// [`Engine::on_timeout`] once `now_ms` reaches it. Any input can move it, so ask again
    /// after each one.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.deadlines_ms.values().min().copied()
    }

    /// The armed timers and their deadlines, for tests and diagnostics.
    pub fn timer_deadlines_ms(&self) -> impl Iterator<Item = (TimerKind, u64)> + '_ {
        self.deadlines_ms.iter().map(|(k, d)| (*k, *d))
    }

    /// Fires every timer whose deadline is at or before `now_ms`, earliest first. Calling it
    /// early, late or twice is harmless: a timer fires only once its deadline has passed.
    pub fn on_timeout(&mut self, now_ms: u64) -> Output {
        let mut due: Vec<(u64, TimerKind)> = self
            .deadlines_ms
            .iter()
            .filter(|(_, d)| **d <= now_ms)
            .map(|(k, d)| (*d, *k))
            .collect();
        due.sort_unstable();
        for (_, timer) in due {
            // An earlier timer's handler may have moved or removed this one.
            if self.deadlines_ms.get(&timer).is_none_or(|d| *d > now_ms) {
                continue;
            }
            self.deadlines_ms.remove(&timer);
            match timer {
                TimerKind::Retransmit => self.on_retransmit(now_ms),
                TimerKind::Request => self.on_request_timeout(now_ms),
                TimerKind::Heartbeat => self.on_heartbeat(now_ms),
                TimerKind::LeaderChange => self.on_leader_change_timeout(now_ms),
                TimerKind::StateFetch => self.send_state_fetch(now_ms),
                TimerKind::LeaderSilence => self.on_leader_silence(now_ms),
            }
        }
        self.finish_input()
    }

    pub(super) fn on_retransmit(&mut self, now_ms: u64) {
        self.stats.retransmissions += 1;
        for instance in self.instances.values() {
            if instance.decided.is_some() {
                continue;
            }
            if let Some(signed) = instance.proposal.as_ref().and_then(|p| p.signed.as_ref()) {
                if signed.body.leader == self.me {
                    self.out.broadcast(Message::Propose(signed.clone()));
                }
            }
            if let Some(w) = &instance.my_write {
                self.out.broadcast(Message::Write(w.clone()));
            }
            if let Some(a) = &instance.my_accept {
                self.out.broadcast(Message::Accept(a.clone()));
            }
        }
        self.drive_transfer(now_ms);
        match self.rejoin {
            Rejoin::Collecting { nonce, .. } => self.out.broadcast(Message::StateQuery {
                rejoin_nonce: nonce,
            }),
            // The leader may have changed, or not heard: say again what it waits for.
            Rejoin::CatchingUp { horizon: until, .. } => {
                self.out.broadcast(Message::Abstaining { until })
            }
            Rejoin::Done => {}
        }
        // A leader change in progress: keep asking until the regency changes.
        if let Some(stop) = &self.leader_change.my_stop {
            self.out.broadcast(Message::Stop(stop.clone()));
        }
        if let Some(sd) = &self.leader_change.my_stopdata {
            if self.leader() != self.me {
                self.out
                    .send(Peer::Replica(self.leader()), Message::StopData(sd.clone()));
            }
        }
        let peer = self.next_query_peer();
        self.maybe_query(now_ms, peer);
        self.retransmit_interval_ms = self
            .retransmit_interval_ms
            .saturating_mul(2)
            .min(self.cfg.timeouts.retransmit_max_ms);
        self.arm_retransmit(now_ms);
    }

    pub(super) fn on_request_timeout(&mut self, now_ms: u64) {
        let cutoff = now_ms.saturating_sub(self.cfg.timeouts.request_timeout_ms);
        let mut timed_out = self.pool.take_timed_out(cutoff, now_ms);
        // A replica acts against its leader only for requests its own table still calls new:
        // one that arrived while this table was behind (say, of a session it had not seen
        // opened yet, which its table now calls expired) is one a correct leader refuses too,
        // and never proposes. It leaves the pool instead (docs/design.md §3.7, "Sessions";
        // simulator: a Byzantine client's request of a session number another key was given
        // made correct followers replace a correct leader).
        timed_out.retain(|(request, _)| {
            let id = request.id();
            let new = self.clients.status(&id) == RequestStatus::New;
            if !new {
                self.pool.remove(&id);
            }
            new
        });
        // A replica acts against the leader (forward, then STOP) only for requests whose
        // signature verifies (docs/design.md §5): a client cannot get a correct leader
        // suspected with requests it signed badly.
        let requests: Vec<Request> = timed_out.iter().map(|(r, _)| r.clone()).collect();
        self.authenticate_pending(&requests);
        timed_out.retain(|(r, _)| self.pool.contains(&r.id()));
        let second_timeout = timed_out.iter().any(|(_, timeouts)| *timeouts >= 2);
        if !timed_out.is_empty() && !self.is_leader() {
            // First timeout: make sure the leader has the request.
            let requests: Vec<Request> = timed_out
                .into_iter()
                .take(self.cfg.limits.max_batch_requests)
                .map(|(r, _)| r)
                .collect();
            self.out
                .send(Peer::Replica(self.leader()), Message::Forward(requests));
            // The requests may have been decided without us noticing.
            let peer = self.next_query_peer();
            self.maybe_query(now_ms, peer);
        }
        // Second timeout: the leader has had the request and still did not order it. Or the
        // request has timed out once (the leader has had it) and the leader has said nothing
        // at all for `leader_silence_ms`: no client can make a correct leader silent, so there
        // is no point waiting for the second timeout (§3.9, "A silent leader").
        let silent = !second_timeout && self.leader_silent(now_ms);
        if (second_timeout || silent) && !self.catching_up(now_ms) {
            // Peers push the regency up (by STOPs): saturate rather than overflow.
            let target = self.regency.saturating_add(1);
            self.start_stop_for(now_ms, target, silent);
        }
        self.arm_request_timer();
        self.arm_leader_silence(now_ms);
    }

    /// Whether this replica holds back a STOP because it is behind, not its leader: certified
    /// decisions moved it forward within the last `request_timeout_ms`, or, in CFT, the
    /// leader's heartbeats show recent progress beyond it.
    fn catching_up(&self, now_ms: u64) -> bool {
        // In CFT one STOP moves everyone, so a replica whose leader's heartbeats show recent
        // progress beyond it blames its own lag, not the leader. (Not in BFT, where a Byzantine
        // leader could fake progress; there f+1 STOPs are needed anyway.)
        let behind_a_live_leader = !self.quorums.requires_signatures()
            && self.leader_progress.is_some_and(|p| {
                p.decided > self.last_executed
                    && now_ms
                        < p.rose_at_ms
                            .saturating_add(self.cfg.timeouts.request_timeout_ms)
            });
        // A state transfer in progress does not count: it starts on one peer's unsigned
        // StateInfo, and one peer alone must never hold back a STOP (a Byzantine leader could
        // otherwise keep a follower "transferring" and so silent; issue 12, item 2). Catching
        // up by certified decisions does count: those prove the cluster moved on.
        behind_a_live_leader
            || self
                .catch_up
                .last_catch_up_ms
                .is_some_and(|t| now_ms < t.saturating_add(self.cfg.timeouts.request_timeout_ms))
    }

    /// Starts a leader change to `target`, counting it as one for a silent leader if it is.
    fn start_stop_for(&mut self, now_ms: u64, target: Regency, silent: bool) {
        let sent = self.stats.stops_sent;
        self.start_leader_change(now_ms, target);
        if silent && self.stats.stops_sent > sent {
            self.stats.stops_for_silent_leader += 1;
        }
    }

    /// How long a follower waits, hearing nothing at all from its leader, before it takes the
    /// leader for crashed once a request it forwarded is pending: the longer of one request
    /// timeout and two heartbeat intervals (a correct leader broadcasts a heartbeat every
    /// `heartbeat_ms`, so only a lost or late heartbeat, never a client, can make it look
    /// silent for two).
    pub fn leader_silence_ms(&self) -> u64 {
        let t = &self.cfg.timeouts;
        t.request_timeout_ms.max(t.heartbeat_ms.saturating_mul(2))
    }

    /// When the leader counts as silent: `leader_silence_ms` after it was last heard, if this
    /// replica is a follower holding a request that timed out here (so the leader has had it)
    /// with no STOP of its own out; `None` while the rule does not apply.
    fn leader_silence_deadline_ms(&self) -> Option<u64> {
        (!self.is_leader() && self.leader_change.my_stop.is_none() && self.pool.has_timed_out())
            .then(|| {
                self.leader_heard_ms
                    .saturating_add(self.leader_silence_ms())
            })
    }

    /// Whether the leader counts as silent at `now_ms` (`leader_silence_deadline_ms`).
    fn leader_silent(&self, now_ms: u64) -> bool {
        self.leader_silence_deadline_ms()
            .is_some_and(|deadline| now_ms >= deadline)
    }

    /// Arms [`TimerKind::LeaderSilence`] at `leader_silence_deadline_ms` if the rule applies
    /// and the deadline is still ahead; disarms it otherwise. The deadline is always in the
    /// future, so the timer never fires twice at one instant.
    pub(super) fn arm_leader_silence(&mut self, now_ms: u64) {
        match self
            .leader_silence_deadline_ms()
            .filter(|deadline| *deadline > now_ms)
        {
            Some(deadline) => self.deadlines_ms.insert(TimerKind::LeaderSilence, deadline),
            None => self.deadlines_ms.remove(&TimerKind::LeaderSilence),
        };
    }

    /// [`TimerKind::LeaderSilence`] expired: if the leader is still silent (anything it sent
    /// since the timer was armed moved the deadline on), ask for the next regency.
    pub(super) fn on_leader_silence(&mut self, now_ms: u64) {
        if self.leader_silent(now_ms) && !self.catching_up(now_ms) {
            let target = self.regency.saturating_add(1);
            self.start_stop_for(now_ms, target, true);
        }
        self.arm_leader_silence(now_ms);
    }

    pub(super) fn on_heartbeat(&mut self, now_ms: u64) {
        // Every replica, not only the leader, says where it stands: in a quiet cluster (no
        // client traffic, so no votes and no timeouts) this is the only way a replica behind its
        // peers, the leader included, learns it is behind (issue 12's liveness check; before,
        // a follower two cids behind after a leader crash, or a leader behind its followers
        // after partitions healed, stayed behind until the next request).
        self.out.broadcast(Message::Heartbeat {
            regency: self.regency,
            last_decided: self.last_executed,
        });
        // Evidence that we are behind, with nothing else prompting a catch-up.
        if self.highest_seen_cid > self.last_executed {
            let peer = self.next_query_peer();
            self.maybe_query(now_ms, peer);
        }
        // Announcements can be lost: repeat the newest one until it is stable.
        if let Some(c) = self.checkpoints.own.values().next_back() {
            self.out.broadcast(Message::CheckpointAnnounce {
                cid: c.cid,
                digest: c.digest,
            });
        }
        self.deadlines_ms.insert(
            TimerKind::Heartbeat,
            now_ms.saturating_add(self.cfg.timeouts.heartbeat_ms),
        );
    }
}
