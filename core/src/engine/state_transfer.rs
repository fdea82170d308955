//! State transfer: a replica that is too far behind for decision forwarding downloads a
//! checkpoint that f+1 replicas (one in CFT) vouch for, chunk by chunk, and checks it against
//! the agreed digest before installing it (docs/design.md §3.11; BFT-SMaRt's `StateManager`).

use smr_crypto::Digest;
use std::collections::BTreeMap;

use crate::checkpoint::{Checkpoint, CheckpointData, Transfer};
use crate::clients::RequestStatus;
use crate::message::{Cid, DecisionProof, Message, ReplicaId};
use crate::network::Peer;
use crate::rejection::Rejection;

use super::{Engine, PersistRecord, ServiceWork, STATE_FETCHES_PER_SECOND};

/// The fields of an incoming [`Message::StateChunk`].
pub(super) struct StateChunkIn {
    pub(super) cid: Cid,
    pub(super) offset: u64,
    pub(super) total_len: u64,
    pub(super) bytes: Vec<u8>,
    pub(super) decided: Option<DecisionProof>,
}

/// A download in progress, and what this replica serves to others.
#[derive(Clone, Debug, Default)]
pub(super) struct StateTransfer {
    /// The checkpoint being fetched, if any.
    pub(super) download: Option<Transfer>,
    /// Per peer: the state fetches served in its current one-second window.
    pub(super) fetches_served: BTreeMap<ReplicaId, FetchWindow>,
}

/// The state fetches one peer was served since `start_ms`.
#[derive(Clone, Copy, Debug)]
pub(super) struct FetchWindow {
    pub(super) start_ms: u64,
    pub(super) served: u64,
}

impl Engine {
    /// What this replica tells a peer asking about its state.
    pub(super) fn state_info(&self) -> Message {
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
        Message::StateInfo {
            checkpoints: self
                .checkpoints
                .stable
                .iter()
                .chain(self.checkpoints.own.values())
                .map(|c| (c.cid, c.digest))
                .collect(),
            voted_up_to: voted.max(self.last_executed),
            executed: self.decision_proof(self.last_executed),
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
            self.out.broadcast(Message::StateQuery);
            self.arm_retransmit(now_ms);
        }
        let transfer = self.transfer.download.as_mut().expect("just ensured");
        if let Some((cid, _, source)) = transfer.target {
            if source == from && !checkpoints.iter().any(|(c, _)| *c == cid) {
                // Our source no longer has what we are downloading: start over.
                transfer.target = None;
                transfer.buffer.clear();
            }
        }
        transfer.reports.insert(from, checkpoints);
        if transfer.target.is_none() {
            self.drive_transfer(now_ms);
        }
    }

    /// Starts or restarts the download of an agreed checkpoint, or asks again if none is
    /// agreed yet or the download stalled.
    pub(super) fn drive_transfer(&mut self, now_ms: u64) {
        let needed = self.quorums.state_transfer_digests();
        let stall_ms = self.cfg.timeouts.retransmit_max_ms;
        let last_executed = self.last_executed;
        let Some(transfer) = self.transfer.download.as_mut() else {
            return;
        };
        if let Some((_, _, source)) = transfer.target {
            if now_ms < transfer.last_progress_ms.saturating_add(stall_ms) {
                return;
            }
            // The source went quiet: try another.
            transfer.failed.insert(source);
            transfer.target = None;
            transfer.buffer.clear();
        }
        match transfer.agreed(last_executed, needed) {
            Some((cid, digest, source)) => {
                transfer.target = Some((cid, digest, source));
                transfer.buffer.clear();
                transfer.last_progress_ms = now_ms;
                self.out.send(
                    Peer::Replica(source),
                    Message::StateFetch { cid, offset: 0 },
                );
            }
            None => {
                if now_ms >= transfer.last_progress_ms.saturating_add(stall_ms) {
                    // Every agreed source failed or too few agree: give up for now. The next
                    // hint that we are behind starts a fresh transfer.
                    self.transfer.download = None;
                }
            }
        }
    }

    /// Serves one chunk of a checkpoint, at most [`STATE_FETCHES_PER_SECOND`] per peer: a
    /// fetch is a few bytes and its answer up to `state_chunk_bytes`, so without a bound one
    /// Byzantine peer could make this replica send as fast as it asks. An honest requester
    /// fetches one chunk at a time and never comes near it; past it, fetches are dropped and
    /// the requester's stall timer retries.
    pub(super) fn handle_state_fetch(
        &mut self,
        now_ms: u64,
        from: ReplicaId,
        cid: Cid,
        offset: u64,
    ) -> Result<(), Rejection> {
        let window = self
            .transfer
            .fetches_served
            .entry(from)
            .or_insert(FetchWindow {
                start_ms: now_ms,
                served: 0,
            });
        if now_ms >= window.start_ms.saturating_add(1000) {
            *window = FetchWindow {
                start_ms: now_ms,
                served: 0,
            };
        }
        if window.served >= STATE_FETCHES_PER_SECOND {
            return Err(Rejection::RateLimited("state fetches"));
        }
        window.served += 1;
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
        // a source that trickles smaller ones is dropped like a quiet one.
        let end = offset.saturating_add(bytes.len() as u64);
        let full_chunk = bytes.len() == self.cfg.limits.state_chunk_bytes;
        if end > total_len || (end < total_len && !full_chunk) {
            transfer.failed.insert(source);
            transfer.target = None;
            transfer.buffer.clear();
            transfer.last_progress_ms = 0;
            self.drive_transfer(now_ms);
            return Err(Rejection::Malformed(
                "state chunk of the wrong length".into(),
            ));
        }
        transfer.buffer.extend_from_slice(&bytes);
        transfer.last_progress_ms = now_ms;
        if (transfer.buffer.len() as u64) < total_len {
            self.out.send(
                Peer::Replica(source),
                Message::StateFetch {
                    cid,
                    offset: transfer.buffer.len() as u64,
                },
            );
            return Ok(());
        }
        let data = std::mem::take(&mut transfer.buffer);
        // The proof's certificate was checked on arrival; a missing one is a lie too.
        let verified = (smr_crypto::digest(&data) == digest)
            .then_some(decided)
            .flatten()
            .and_then(|decided| {
                Checkpoint::from_bytes(data, decided, &self.cfg.limits.client_limits()).ok()
            })
            .filter(|(c, _)| c.cid == target_cid);
        let Some((checkpoint, contents)) = verified else {
            // The source lied: its bytes do not hash to the digest its peers agreed on, or it
            // withheld the proof that the checkpoint's cid was decided.
            self.stats.lying_state_sources += 1;
            transfer.failed.insert(source);
            transfer.target = None;
            transfer.last_progress_ms = 0;
            self.drive_transfer(now_ms);
            return Err(Rejection::BadCertificate(
                "state does not match the agreed digest",
            ));
        };
        self.transfer.download = None;
        self.install_transferred_state(now_ms, checkpoint, contents);
        Ok(())
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
        self.execute_ready(now_ms);
        self.arm_request_timer();
    }
}
