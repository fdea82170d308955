//! State transfer: a replica that is too far behind for decision forwarding downloads a
//! checkpoint that f+1 replicas (one in CFT) vouch for, chunk by chunk, and checks it against
//! the agreed digest before installing it (docs/design.md §3.11; BFT-SMaRt's `StateManager`).

use smr_crypto::Digest;

use crate::checkpoint::{Checkpoint, CheckpointData, Transfer};
use crate::clients::RequestStatus;
use crate::message::{Cid, DecisionProof, Message, ReplicaId};
use crate::network::Peer;
use crate::rejection::Rejection;

use super::budget::{REPLY_OVERHEAD_BYTES, REPLY_VOTE_BYTES, STATE_FETCH_BYTES_PER_SECOND};
use super::recovery::Rejoin;
use super::{Engine, PersistRecord, ServiceWork, TimerKind};

/// The fields of an incoming [`Message::StateChunk`].
pub(super) struct StateChunkIn {
    pub(super) cid: Cid,
    pub(super) offset: u64,
    pub(super) total_len: u64,
    pub(super) bytes: Vec<u8>,
    pub(super) decided: Option<DecisionProof>,
}

/// A download in progress.
#[derive(Clone, Debug, Default)]
pub(super) struct StateTransfer {
    /// The checkpoint being fetched, if any.
    pub(super) download: Option<Transfer>,
    /// The latest agreed checkpoint whose bytes matched the digest f+1 peers vouch for but
    /// which this replica cannot use (its contents break this replica's limits, or do not
    /// decode here), and why: never fetched again, and no source is blamed for it.
    pub(super) unusable: Option<(Cid, Digest, String)>,
}

/// The least time between two StateFetches of one download: the time a source's reply budget
/// takes to refill twice the largest chunk reply ([`STATE_FETCH_BYTES_PER_SECOND`] is half of
/// [`REPLY_BYTES_PER_SECOND`](super::budget::REPLY_BYTES_PER_SECOND)), rounded up, so that a
/// correct requester never asks a source for more than half of what the source serves it.
/// With 1 MiB chunks 32 ms (32 MiB/s), with 4 KiB chunks 1 ms; a slower network paces it
/// instead (one fetch is outstanding at a time).
pub(super) fn state_fetch_interval_ms(chunk_bytes: usize, n: usize) -> u64 {
    let reply = REPLY_OVERHEAD_BYTES
        .saturating_add(chunk_bytes as u64)
        .saturating_add(REPLY_VOTE_BYTES.saturating_mul(n as u64));
    reply
        .saturating_mul(1000)
        .div_ceil(STATE_FETCH_BYTES_PER_SECOND)
        .max(1)
}

/// The least answer time for which a state source counts as slow, whatever the fastest answer
/// seen: below it, network jitter, not a source, sets the pace.
pub(super) const SLOW_STATE_SOURCE_FLOOR_MS: u64 = 100;

impl Engine {
    /// How long a download's source may send nothing before another is asked: the longest
    /// retransmit timeout plus one pacing interval.
    fn state_stall_ms(&self) -> u64 {
        let interval_ms =
            state_fetch_interval_ms(self.cfg.limits.state_chunk_bytes, self.quorums.n());
        self.cfg
            .timeouts
            .retransmit_max_ms
            .saturating_add(interval_ms)
    }

    /// What this replica tells a peer asking about its state, as of now (not for a rejoining
    /// incarnation: see [`Engine::state_info_for`]).
    pub(super) fn state_info(&self) -> Message {
        self.state_info_for(0, self.voted_up_to())
    }

    /// The highest cid this replica has executed or accepted a value in: what a rejoining
    /// peer's horizon counts (docs/design.md §3.12).
    pub(super) fn voted_up_to(&self) -> Cid {
        // What a rejoining peer's horizon needs is a bound on the cids that were *decided*
        // with this replica among the Q that accepted (docs/design.md §3.12): its accepted
        // (prepared) values and its execution, not its WRITEs. WRITEs alone would let replicas
        // that took part early in a brand-new cluster, and can only WRITE until a quorum takes
        // part, push the horizon of those still asking a window ahead, which then no quorum
        // could reach (issue 17 item 7).
        let voted = self
            .instances
            .iter()
            .filter(|(_, i)| i.prepared.is_some())
            .map(|(cid, _)| *cid)
            .max()
            .unwrap_or(Cid::ZERO);
        voted.max(self.last_executed)
    }

    /// This replica's StateInfo answering a query with `for_nonce` (0 for none), reporting
    /// `voted_up_to`, and carrying its own rejoin nonce while it collects reports.
    pub(super) fn state_info_for(&self, for_nonce: u64, voted_up_to: Cid) -> Message {
        let rejoin_nonce = match self.rejoin {
            Rejoin::Collecting { nonce, .. } => nonce,
            _ => 0,
        };
        Message::StateInfo {
            checkpoints: self
                .checkpoints
                .stable
                .iter()
                .chain(self.checkpoints.own.values())
                .map(|c| (c.cid, c.digest))
                .collect(),
            voted_up_to,
            executed: self.decision_proof(self.last_executed),
            for_nonce,
            rejoin_nonce,
        }
    }

    pub(super) fn handle_state_info(
        &mut self,
        now_ms: u64,
        from: ReplicaId,
        checkpoints: Vec<(Cid, Digest)>,
    ) {
        if checkpoints
            .iter()
            .all(|(cid, _)| *cid <= self.last_executed)
        {
            return;
        }
        if self.transfer.download.is_none() {
            // The first hint starts a transfer: ask everyone for their latest checkpoint. One
            // peer's hint costs one StateQuery per stall period at most (a transfer with no
            // agreed checkpoint gives up after `retransmit_max_ms`), only a checkpoint that
            // `state_transfer_digests` peers report identically is fetched, and a transfer in
            // progress holds back no timer, STOP or vote.
            self.stats.state_transfers += 1;
            self.transfer.download = Some(Transfer {
                last_progress_ms: now_ms,
                ..Transfer::default()
            });
            self.out.broadcast(Message::StateQuery { rejoin_nonce: 0 });
            self.arm_retransmit(now_ms);
        }
        let transfer = self.transfer.download.as_mut().expect("just ensured");
        if let Some((cid, _, source)) = transfer.target {
            if source == from && !checkpoints.iter().any(|(c, _)| *c == cid) {
                // Our source no longer has what we are downloading: resume from another that
                // does, or start on the newest agreed one.
                transfer.target = None;
            }
        }
        transfer.reports.insert(from, checkpoints);
        if transfer.target.is_none() {
            self.drive_transfer(now_ms);
        }
    }

    /// Starts the download of an agreed checkpoint, or resumes it from another source that
    /// vouches for the same one when its source went quiet for a stall period (keeping the
    /// bytes it has, so a transfer progresses at whatever rate its sources allow), or asks
    /// again if none is agreed yet. A quiet source is not blamed as a liar (it may have lost a
    /// message); once every voucher went quiet the download is dropped, and the next hint
    /// starts a fresh one with fresh reports.
    pub(super) fn drive_transfer(&mut self, now_ms: u64) {
        let needed = self.quorums.state_transfer_digests();
        let stall_ms = self.state_stall_ms();
        let last_executed = self.last_executed;
        let unusable = self
            .transfer
            .unusable
            .as_ref()
            .map(|(cid, digest, _)| (*cid, *digest));
        let Some(transfer) = self.transfer.download.as_mut() else {
            return;
        };
        if let Some((_, _, source)) = transfer.target {
            if now_ms < transfer.last_progress_ms.saturating_add(stall_ms) {
                return;
            }
            if std::mem::take(&mut transfer.resumed) {
                // Asked to continue another source's bytes, it sent nothing: a correct source
                // does not answer an offset beyond its checkpoint, so those bytes may be a
                // liar's prefix longer than the real one. Which source lied is unknown: from
                // now on every download comes from one source alone, starting again with
                // this one from byte 0 (it is not blamed for the quiet).
                transfer.single_source = true;
            } else {
                // The source went quiet: resume from another.
                transfer.silent.insert(source);
            }
            transfer.target = None;
        }
        match transfer
            .agreed(last_executed, needed)
            .filter(|(_, _, source)| !transfer.silent.contains(source))
            .filter(|(cid, digest, _)| unusable != Some((*cid, *digest)))
        {
            Some((cid, digest, source)) => {
                let foreign =
                    transfer.single_source && transfer.contributors.iter().any(|c| *c != source);
                if transfer.buffer_of != Some((cid, digest)) || foreign {
                    transfer.clear_buffer();
                    transfer.buffer_of = Some((cid, digest));
                }
                transfer.resumed = transfer.contributors.iter().any(|c| *c != source);
                transfer.target = Some((cid, digest, source));
                transfer.last_progress_ms = now_ms;
                self.send_state_fetch(now_ms);
            }
            None => {
                if now_ms >= transfer.last_progress_ms.saturating_add(stall_ms) {
                    // Every agreed source lied or went quiet, or too few agree: give up for
                    // now. The next hint that we are behind starts a fresh transfer, with
                    // fresh reports from everyone.
                    self.transfer.download = None;
                    self.deadlines_ms.remove(&TimerKind::StateFetch);
                }
            }
        }
    }

    /// Asks the download's source for the next chunk, at once if the last fetch left at least
    /// [`state_fetch_interval_ms`] ago, else when the `StateFetch` timer fires.
    pub(super) fn send_state_fetch(&mut self, now_ms: u64) {
        let interval_ms =
            state_fetch_interval_ms(self.cfg.limits.state_chunk_bytes, self.quorums.n());
        let Some(transfer) = self.transfer.download.as_mut() else {
            return;
        };
        let Some((cid, _, source)) = transfer.target else {
            return;
        };
        let due_ms = transfer
            .last_fetch_ms
            .map_or(now_ms, |t| t.saturating_add(interval_ms));
        if due_ms > now_ms {
            self.deadlines_ms.insert(TimerKind::StateFetch, due_ms);
            return;
        }
        self.deadlines_ms.remove(&TimerKind::StateFetch);
        transfer.last_fetch_ms = Some(now_ms);
        let offset = transfer.buffer.len() as u64;
        self.out
            .send(Peer::Replica(source), Message::StateFetch { cid, offset });
    }

    /// Serves one chunk of a checkpoint, paid from the peer's reply budget like every other
    /// reply (`engine/budget.rs`): a fetch is a few bytes and its answer up to
    /// `state_chunk_bytes`, so without a bound one Byzantine peer could make this replica send
    /// as fast as it asks. A correct requester paces its fetches to half that budget
    /// ([`state_fetch_interval_ms`]), so none of its fetches is refused.
    pub(super) fn handle_state_fetch(
        &mut self,
        now_ms: u64,
        from: ReplicaId,
        cid: Cid,
        offset: u64,
    ) -> Result<(), Rejection> {
        let Some(c) = self
            .checkpoints
            .stable
            .as_ref()
            .filter(|c| c.cid == cid)
            .or_else(|| self.checkpoints.own.get(&cid))
        else {
            // Superseded: say what we have now, so the requester switches at once.
            let info = self.state_info();
            return self.reply_to_peer(now_ms, from, info, "state info");
        };
        if offset > c.data.len() as u64 {
            return Err(Rejection::Malformed(
                "state fetch beyond the checkpoint".into(),
            ));
        }
        // Checked against the length above, so it fits a usize.
        let start = offset as usize;
        let end = start
            .saturating_add(self.cfg.limits.state_chunk_bytes)
            .min(c.data.len());
        let chunk = Message::StateChunk {
            cid,
            offset,
            total_len: c.data.len() as u64,
            bytes: c.data[start..end].to_vec(),
            decided: (end == c.data.len()).then(|| c.decided.clone()),
        };
        self.reply_to_peer(now_ms, from, chunk, "state chunks")
    }

    pub(super) fn handle_state_chunk(
        &mut self,
        now_ms: u64,
        from: ReplicaId,
        chunk: StateChunkIn,
    ) -> Result<(), Rejection> {
        let StateChunkIn {
            cid,
            offset,
            total_len,
            bytes,
            decided,
        } = chunk;
        let stall_ms = self.state_stall_ms();
        let Some(transfer) = self.transfer.download.as_mut() else {
            return Ok(());
        };
        let Some((target_cid, digest, source)) = transfer.target else {
            return Ok(());
        };
        if from != source || cid != target_cid || offset != transfer.buffer.len() as u64 {
            return Ok(());
        }
        if bytes.is_empty() && offset < total_len {
            return Err(Rejection::Malformed("empty state chunk".into()));
        }
        // A source serves full chunks of `state_chunk_bytes` up to the last one (everyone
        // runs the same limits), so a transfer takes at most total_len / chunk stall periods;
        // a source that trickles smaller ones is dropped like a liar.
        let end = offset.saturating_add(bytes.len() as u64);
        let full_chunk = bytes.len() == self.cfg.limits.state_chunk_bytes;
        if end > total_len || (end < total_len && !full_chunk) {
            transfer.failed.insert(source);
            if transfer.contributors.contains(&source) {
                transfer.clear_buffer();
            }
            transfer.target = None;
            transfer.last_progress_ms = 0;
            self.drive_transfer(now_ms);
            return Err(Rejection::Malformed(
                "state chunk of the wrong length".into(),
            ));
        }
        transfer.buffer.extend_from_slice(&bytes);
        transfer.contributors.insert(source);
        transfer.resumed = false;
        transfer.last_progress_ms = now_ms;
        if (transfer.buffer.len() as u64) < total_len {
            // Timed from the fetch leaving, not from when the pacing made it due.
            let took_ms = now_ms.saturating_sub(transfer.last_fetch_ms.unwrap_or(now_ms));
            if transfer.record_answer(
                source,
                took_ms,
                (target_cid, digest),
                SLOW_STATE_SOURCE_FLOOR_MS,
                stall_ms,
            ) {
                // A slow source, while a faster one vouches for the same checkpoint: resume
                // from that one at the same offset (by the same rules as after a quiet
                // source). Not blamed: it answered correctly.
                transfer.target = None;
                self.drive_transfer(now_ms);
                return Ok(());
            }
            self.send_state_fetch(now_ms);
            return Ok(());
        }
        let data = std::mem::take(&mut transfer.buffer);
        let contributors = std::mem::take(&mut transfer.contributors);
        transfer.buffer_of = None;
        // The proof's certificate was checked on arrival; a missing one is a lie too.
        let verified = (smr_crypto::digest(&data) == digest)
            .then_some(decided)
            .flatten()
            .map(|decided| {
                Checkpoint::from_bytes(data, decided, &self.cfg.limits.client_limits()).and_then(
                    |(c, contents)| {
                        if c.cid == target_cid {
                            Ok((c, contents))
                        } else {
                            Err(format!("its proof is for cid {}", c.cid))
                        }
                    },
                )
            });
        if let Some(Err(reason)) = verified {
            // The bytes are the ones f+1 peers vouch for, so a correct replica made them: the
            // source did not lie, and no other source can send anything else. This replica
            // cannot use that checkpoint (its limits or its version differ from the one that
            // took it); it is counted, logged by the driver and not fetched again, and the
            // replica catches up from a later checkpoint or by decisions if it can.
            self.stats.unusable_agreed_checkpoints += 1;
            self.transfer.unusable = Some((target_cid, digest, reason));
            self.transfer.download = None;
            self.deadlines_ms.remove(&TimerKind::StateFetch);
            return Ok(());
        }
        let Some(Ok((checkpoint, contents))) = verified else {
            // A source lied: the bytes do not hash to the digest its peers agreed on, or the
            // proof that the checkpoint's cid was decided was withheld. If one source sent them
            // all, it is the liar; if several did, which one is unknown, so every later
            // download comes from a single source.
            self.stats.lying_state_sources += 1;
            transfer.target = None;
            transfer.last_progress_ms = 0;
            if contributors.len() > 1 {
                transfer.single_source = true;
                self.drive_transfer(now_ms);
                return Ok(());
            }
            transfer.failed.insert(source);
            self.drive_transfer(now_ms);
            return Err(Rejection::BadCertificate(
                "state does not match the agreed digest",
            ));
        };
        self.transfer.download = None;
        self.deadlines_ms.remove(&TimerKind::StateFetch);
        self.install_transferred_state(now_ms, checkpoint, contents);
        Ok(())
    }

    /// The latest checkpoint this replica downloaded and could not use although its bytes
    /// matched the digest f+1 peers vouch for, and why (counted in
    /// [`EngineStats::unusable_agreed_checkpoints`](super::EngineStats::unusable_agreed_checkpoints)).
    pub fn unusable_agreed_checkpoint(&self) -> Option<(Cid, &str)> {
        self.transfer
            .unusable
            .as_ref()
            .map(|(cid, _, reason)| (*cid, reason.as_str()))
    }

    /// Jumps to a verified checkpoint: the service and client table are replaced, and the
    /// decisions after it are fetched by decision forwarding.
    pub(super) fn install_transferred_state(
        &mut self,
        now_ms: u64,
        checkpoint: Checkpoint,
        contents: CheckpointData,
    ) {
        let cid = checkpoint.cid;
        if cid <= self.last_executed {
            // Decisions got us there first.
            return;
        }
        self.out.service(ServiceWork::Restore {
            cid,
            snapshot: contents.service,
        });
        self.clients = contents.clients;
        self.last_executed = cid;
        // The checkpoint's cid came from a peer: no overflow at the top of the range.
        let after = cid.saturating_add(1);
        self.next_cid_to_propose = self.next_cid_to_propose.max(after);
        self.instances = self.instances.split_off(&after);
        self.log.clear();
        self.checkpoints.barrier = None;
        self.checkpoints.snapshot_clients = None;
        let clients = &self.clients;
        self.pool
            .retain(|id| clients.status(id) == RequestStatus::New);
        self.out
            .persist(PersistRecord::Checkpoint(checkpoint.clone()));
        self.checkpoints.own.clear();
        self.make_stable(checkpoint);
        self.catch_up.last_catch_up_ms = Some(now_ms);
        let peer = self.next_query_peer();
        self.allow_query_now(peer);
        self.maybe_query(now_ms, peer);
        // A rejoining replica whose checkpoint reaches its horizon has executed everything it
        // may have voted on: it takes part now. `execute_ready` checks only when a decision
        // executes, and in a quiet cluster none may follow the checkpoint (simulator, quiet
        // rejoin scenario seed 8 once opens shifted the cids: a checkpoint at exactly the
        // horizon, and the replica abstained for ever).
        self.check_rejoined(now_ms);
        self.accept_deferred_sync_values(now_ms);
        self.execute_ready(now_ms);
        self.arm_request_timer();
        // The window moved: a leader proposes into it (requests, or empty batches up to a
        // rejoining peer's horizon). `execute_ready` does so only when a decision executes,
        // and none may follow the checkpoint: a leader that caught up by a transfer then
        // proposed nothing, and in a quiet cluster with a peer abstaining up to a horizon past
        // the checkpoint nothing ever decided (simulator, CFT quiet rejoin seed 935).
        self.try_propose(now_ms);
    }
}
