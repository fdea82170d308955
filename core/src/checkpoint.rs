//! Checkpoints and state transfer (docs/design.md §3.11; BFT-SMaRt's `StateManager`). The
//! engine's side is in `engine/checkpoints.rs` and `engine/state_transfer.rs`.
//!
//! Every `checkpoint_period` decisions a replica snapshots its service together with its client
//! table (the reply cache), so that exactly-once survives a state transfer, and truncates its
//! decision log up to the checkpoint once a quorum announced the same digest. A replica that
//! fell further behind than the peers' logs reach fetches a checkpoint instead: it asks
//! everyone which checkpoints they can serve, picks the highest (cid, digest) that
//! `state_transfer_digests` replicas agree on (f+1 in BFT, so one of them is correct),
//! downloads it from one of them in bounded chunks, and installs it only if the bytes hash to
//! the agreed digest. A sender that lies is dropped and another is tried. Decisions
//! after the checkpoint then arrive by ordinary decision forwarding, certificates re-checked.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use smr_crypto::Digest;

use crate::clients::{ClientLimits, ClientTable};
use crate::codec;
use crate::message::{Cid, DecisionProof, ReplicaId};

/// What a checkpoint holds. Its encoding is what is hashed, stored and transferred.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointData {
    /// The last cid whose batch the state includes.
    pub cid: Cid,
    /// The service's own snapshot bytes ([`Service::snapshot`](crate::Service::snapshot)).
    #[serde(with = "serde_bytes")]
    pub service: Vec<u8>,
    /// The client table at `cid`: executed seqs and cached replies, so that exactly-once
    /// survives a state transfer (docs/design.md §3.7).
    pub clients: ClientTable,
}

/// A checkpoint as the engine keeps it: the encoded data, its digest, and the proof that its
/// cid was decided.
///
/// The proof travels with the checkpoint (stored with it, sent with the last chunk of a
/// transfer) because a replica whose log starts after the checkpoint must still prove, in its
/// STOPDATA, that everything up to the checkpoint is decided: otherwise a new leader could take
/// an earlier cid as the start and re-open an instance this replica executed. It is not part of
/// the digest, since two replicas hold different but equally valid certificates for one decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The checkpoint's cid (`data`'s).
    pub cid: Cid,
    /// The 32-byte blake3 digest of `data`: what replicas announce and state transfer agrees
    /// on.
    pub digest: Digest,
    /// The codec encoding of the [`CheckpointData`].
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// The proof that `cid` was decided.
    pub decided: DecisionProof,
}

impl Checkpoint {
    /// Encodes `data` and hashes it into a checkpoint carrying `decided`.
    ///
    /// # Panics
    /// If `decided` is for another cid than `data.cid`.
    pub fn new(data: &CheckpointData, decided: DecisionProof) -> Checkpoint {
        assert_eq!(
            decided.cid, data.cid,
            "a checkpoint carries its own cid's proof"
        );
        let bytes = codec::encode(data);
        Checkpoint {
            cid: data.cid,
            digest: smr_crypto::digest(&bytes),
            data: bytes,
            decided,
        }
    }

    /// Rebuilds a checkpoint from stored or transferred bytes and the proof of its cid, and
    /// returns it with the decoded contents. The digest is computed here; comparing it with
    /// the one the peers agreed on is the caller's job. The client table is checked against
    /// and bound to `client_limits`, this replica's ([`ClientTable::bind`]).
    ///
    /// # Errors
    /// A message naming the problem if the bytes do not decode (a client table that breaks
    /// its invariants does not), the proof is for another cid, or the client table breaks
    /// `client_limits` or records executions after the checkpoint's cid.
    pub fn from_bytes(
        bytes: Vec<u8>,
        decided: DecisionProof,
        client_limits: &ClientLimits,
    ) -> Result<(Checkpoint, CheckpointData), String> {
        let mut data: CheckpointData = codec::decode(&bytes).map_err(|e| e.to_string())?;
        if decided.cid != data.cid {
            return Err(format!(
                "checkpoint of cid {} comes with a decision proof for cid {}",
                data.cid, decided.cid
            ));
        }
        data.clients = data
            .clients
            .bind(client_limits, data.cid)
            .map_err(|e| e.to_string())?;
        Ok((
            Checkpoint {
                cid: data.cid,
                digest: smr_crypto::digest(&bytes),
                data: bytes,
                decided,
            },
            data,
        ))
    }
}

/// An ongoing state transfer (requester side).
#[derive(Clone, Debug, Default)]
pub(crate) struct Transfer {
    /// The checkpoints each peer reported it can serve.
    pub(crate) reports: BTreeMap<ReplicaId, Vec<(Cid, Digest)>>,
    /// The (cid, digest) being downloaded and from whom.
    pub(crate) target: Option<(Cid, Digest, ReplicaId)>,
    /// A prefix of the checkpoint `buffer_of`, at most its `total_len` (so at most
    /// `max_state_bytes`, which the verifier checks on every chunk).
    pub(crate) buffer: Vec<u8>,
    /// The checkpoint `buffer` holds a prefix of: a new source that vouches for the same one
    /// resumes at `buffer.len()` instead of starting over.
    pub(crate) buffer_of: Option<(Cid, Digest)>,
    /// The sources whose chunks are in `buffer`.
    pub(crate) contributors: BTreeSet<ReplicaId>,
    /// Peers that sent bytes not matching the agreed digest, or chunks of the wrong length:
    /// never asked again in this transfer.
    pub(crate) failed: BTreeSet<ReplicaId>,
    /// Peers that went quiet for a stall period: asked again only after every other source
    /// that vouches for the checkpoint went quiet too.
    pub(crate) silent: BTreeSet<ReplicaId>,
    /// A download assembled from several sources did not match its digest, so which one lied
    /// is unknown: from then on each download comes from one source alone, and a mismatch
    /// blames it.
    pub(crate) single_source: bool,
    /// The current source was asked to continue bytes another source sent, and has sent
    /// nothing since: if it stays quiet, that prefix may be what it cannot serve (a liar's
    /// prefix longer than the checkpoint, which no correct source answers).
    pub(crate) resumed: bool,
    /// When the download last made progress.
    pub(crate) last_progress_ms: u64,
    /// When the last StateFetch left, for pacing the next and for timing its answer.
    pub(crate) last_fetch_ms: Option<u64>,
    /// Each source's latest answer time in this transfer (from its StateFetch leaving to its
    /// chunk arriving): a source is chosen by it, the fastest first, so one slow source does
    /// not set the pace while others vouch for the same checkpoint. Slowness is not blame.
    pub(crate) answer_ms: BTreeMap<ReplicaId, u64>,
    /// The fastest answer any source gave in this transfer.
    pub(crate) fastest_answer_ms: Option<u64>,
}

impl Transfer {
    /// The highest checkpoint above `above` that at least `needed` peers report identically,
    /// with a source among them that has not failed: one that has not gone quiet if there is
    /// one, else one of those that did; among those, the fastest (a source not yet asked
    /// counts as fastest), the lowest id on a tie.
    pub(crate) fn agreed(&self, above: Cid, needed: usize) -> Option<(Cid, Digest, ReplicaId)> {
        let mut groups: BTreeMap<(Cid, Digest), Vec<ReplicaId>> = BTreeMap::new();
        for (replica, checkpoints) in &self.reports {
            for (cid, digest) in checkpoints {
                if *cid > above {
                    groups.entry((*cid, *digest)).or_default().push(*replica);
                }
            }
        }
        groups
            .into_iter()
            .rev()
            .filter(|(_, replicas)| replicas.len() >= needed)
            .find_map(|((cid, digest), replicas)| {
                let usable: Vec<ReplicaId> = replicas
                    .into_iter()
                    .filter(|r| !self.failed.contains(r))
                    .collect();
                usable
                    .iter()
                    .min_by_key(|r| (self.silent.contains(r), self.answer_of(**r)))
                    .map(|source| (cid, digest, *source))
            })
    }

    /// `source`'s latest answer time in this transfer; 0 if it was not asked yet.
    pub(crate) fn answer_of(&self, source: ReplicaId) -> u64 {
        self.answer_ms.get(&source).copied().unwrap_or(0)
    }

    /// Records that `source` answered a fetch in `took_ms`, and returns whether another
    /// source vouching for (`cid`, `digest`), neither failed nor quiet, is worth resuming
    /// from instead: `took_ms` exceeded the slowness threshold (four times the fastest answer
    /// seen before in this transfer, at least `floor_ms`, at most `stall_ms`; just `floor_ms`
    /// before any answer) and that source answered at least twice as fast, or was not asked
    /// yet. The factor two bounds the switches: each switch back to a source needs an answer
    /// twice as slow as the one that made it leave, and answers beyond `stall_ms` are silence.
    pub(crate) fn record_answer(
        &mut self,
        source: ReplicaId,
        took_ms: u64,
        (cid, digest): (Cid, Digest),
        floor_ms: u64,
        stall_ms: u64,
    ) -> bool {
        let threshold_ms = self
            .fastest_answer_ms
            .map_or(floor_ms, |f| f.saturating_mul(4).max(floor_ms))
            .min(stall_ms);
        self.answer_ms.insert(source, took_ms);
        self.fastest_answer_ms = Some(self.fastest_answer_ms.map_or(took_ms, |f| f.min(took_ms)));
        took_ms > threshold_ms
            && self.reports.iter().any(|(replica, checkpoints)| {
                *replica != source
                    && checkpoints.contains(&(cid, digest))
                    && !self.failed.contains(replica)
                    && !self.silent.contains(replica)
                    && self.answer_of(*replica).saturating_mul(2) < took_ms
            })
    }

    /// Drops the bytes downloaded so far.
    pub(crate) fn clear_buffer(&mut self) {
        self.buffer = Vec::new();
        self.buffer_of = None;
        self.contributors.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_needs_enough_identical_reports() {
        let mut t = Transfer::default();
        t.reports.insert(0, vec![(Cid(10), Digest([1; 32]))]);
        t.reports.insert(1, vec![(Cid(10), Digest([2; 32]))]);
        assert_eq!(
            t.agreed(Cid(0), 2),
            None,
            "two different digests agree on nothing"
        );
        t.reports.insert(2, vec![(Cid(10), Digest([1; 32]))]);
        assert_eq!(t.agreed(Cid(0), 2), Some((Cid(10), Digest([1; 32]), 0)));
        assert_eq!(t.agreed(Cid(10), 2), None, "nothing above what we have");
    }

    #[test]
    fn a_failed_source_is_not_chosen_again() {
        let mut t = Transfer::default();
        t.reports.insert(0, vec![(Cid(10), Digest([1; 32]))]);
        t.reports.insert(2, vec![(Cid(10), Digest([1; 32]))]);
        t.failed.insert(0);
        assert_eq!(t.agreed(Cid(0), 2), Some((Cid(10), Digest([1; 32]), 2)));
        t.failed.insert(2);
        assert_eq!(t.agreed(Cid(0), 2), None);
    }

    #[test]
    fn a_quiet_source_is_chosen_again_only_when_every_other_is_quiet() {
        let mut t = Transfer::default();
        for r in [0, 1, 2] {
            t.reports.insert(r, vec![(Cid(10), Digest([1; 32]))]);
        }
        t.silent.insert(0);
        assert_eq!(t.agreed(Cid(0), 2), Some((Cid(10), Digest([1; 32]), 1)));
        t.silent.insert(1);
        t.failed.insert(2);
        assert_eq!(
            t.agreed(Cid(0), 2),
            Some((Cid(10), Digest([1; 32]), 0)),
            "quiet, not lying: asked again"
        );
    }

    #[test]
    fn a_slow_source_is_left_for_a_faster_voucher_and_kept_when_every_voucher_is_slow() {
        let target = (Cid(10), Digest([1; 32]));
        let mut t = Transfer::default();
        for r in [0, 1, 2] {
            t.reports.insert(r, vec![target]);
        }
        // First answer: only the floor applies; replicas 1 and 2 were not asked yet.
        assert!(t.record_answer(0, 1_998, target, 100, 2_001));
        assert_eq!(t.agreed(Cid(0), 2), Some((Cid(10), Digest([1; 32]), 1)));
        // Replica 1 answers in 2 ms: not slow, and the threshold is now 4 x 2 ms, at least 100.
        assert!(!t.record_answer(1, 2, target, 100, 2_001));
        assert!(!t.record_answer(1, 100, target, 100, 2_001));
        // Replica 1 turns slow: replica 2, never asked, is tried next.
        assert!(t.record_answer(1, 600, target, 100, 2_001));
        assert_eq!(t.agreed(Cid(0), 2), Some((Cid(10), Digest([1; 32]), 2)));
        // Replica 2 is slow too, but not twice as slow as the fastest other (replica 1, 600):
        // carry on with it rather than drop the transfer or switch back and forth.
        assert!(!t.record_answer(2, 1_000, target, 100, 2_001));
        // Twice as slow as replica 1: back to replica 1, at the same offset.
        assert!(t.record_answer(2, 1_500, target, 100, 2_001));
        assert_eq!(t.agreed(Cid(0), 2), Some((Cid(10), Digest([1; 32]), 1)));
        // A quiet or failed source is no alternative, and nothing here is blame.
        t.silent.insert(0);
        t.failed.insert(2);
        assert!(!t.record_answer(1, 1_900, target, 100, 2_001));
        assert_eq!(t.agreed(Cid(0), 2), Some((Cid(10), Digest([1; 32]), 1)));
    }

    #[test]
    fn checkpoint_round_trips_through_bytes_with_the_same_digest() {
        let data = CheckpointData {
            cid: Cid(7),
            service: vec![1, 2, 3],
            clients: ClientTable::new(4),
        };
        let c = Checkpoint::new(&data, proof(Cid(7)));
        let (again, decoded) =
            Checkpoint::from_bytes(c.data.clone(), proof(Cid(7)), &limits()).unwrap();
        assert_eq!(again, c);
        assert_eq!(decoded, data);
    }

    fn limits() -> ClientLimits {
        ClientTable::new(4).limits().to_owned()
    }

    fn proof(cid: Cid) -> DecisionProof {
        DecisionProof {
            cid,
            digest: Digest([9; 32]),
            certificate: Vec::new(),
        }
    }

    #[test]
    fn checkpoint_with_a_proof_for_another_cid_is_refused() {
        let data = CheckpointData {
            cid: Cid(7),
            service: vec![1],
            clients: ClientTable::new(4),
        };
        let c = Checkpoint::new(&data, proof(Cid(7)));
        let err = Checkpoint::from_bytes(c.data, proof(Cid(6)), &limits()).unwrap_err();
        assert!(err.contains("proof for cid 6"), "{err}");
    }
}
