//! Checkpoints and state transfer.
//!
//! Every `checkpoint_period` decisions a replica snapshots its service together with its client
//! table (the reply cache), so that exactly-once survives a state transfer, and truncates its
//! decision log. A replica that fell further behind than the peers' logs reach fetches a
//! checkpoint instead: it asks everyone for the digest of their latest checkpoint, picks a
//! (cid, digest) that `state_transfer_digests` replicas agree on (f+1 in BFT, so one of them is
//! correct), downloads it from one of them in bounded chunks, and installs it only if the bytes
//! hash to the agreed digest. A sender that lies is dropped and another is tried. Decisions
//! after the checkpoint then arrive by ordinary decision forwarding, certificates re-checked.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use smr_crypto::Digest;

use crate::clients::ClientTable;
use crate::codec;
use crate::message::{Cid, ReplicaId};

/// What a checkpoint holds. Its encoding is what is hashed, stored and transferred.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointData {
    pub cid: Cid,
    pub service: Vec<u8>,
    pub clients: ClientTable,
}

/// A checkpoint as the engine keeps it: the encoded data and its digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub cid: Cid,
    pub digest: Digest,
    pub data: Vec<u8>,
}

impl Checkpoint {
    pub fn new(data: &CheckpointData) -> Checkpoint {
        let bytes = codec::encode(data);
        Checkpoint {
            cid: data.cid,
            digest: smr_crypto::digest(&bytes),
            data: bytes,
        }
    }

    /// Rebuilds a checkpoint from stored or transferred bytes.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<(Checkpoint, CheckpointData), codec::DecodeError> {
        let data: CheckpointData = codec::decode(&bytes)?;
        Ok((
            Checkpoint {
                cid: data.cid,
                digest: smr_crypto::digest(&bytes),
                data: bytes,
            },
            data,
        ))
    }
}

/// An ongoing state transfer (requester side).
#[derive(Debug, Default)]
pub(crate) struct Transfer {
    /// The checkpoints each peer reported it can serve.
    pub(crate) reports: BTreeMap<ReplicaId, Vec<(Cid, Digest)>>,
    /// The (cid, digest) being downloaded and from whom.
    pub(crate) target: Option<(Cid, Digest, ReplicaId)>,
    pub(crate) buffer: Vec<u8>,
    /// Peers that sent bytes not matching the agreed digest, or stalled.
    pub(crate) failed: BTreeSet<ReplicaId>,
    /// When the download last made progress.
    pub(crate) last_progress_ms: u64,
}

impl Transfer {
    /// The highest checkpoint above `above` that at least `needed` peers report identically,
    /// with a source among them that has not failed yet.
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
                replicas
                    .into_iter()
                    .find(|r| !self.failed.contains(r))
                    .map(|source| (cid, digest, source))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_needs_enough_identical_reports() {
        let mut t = Transfer::default();
        t.reports.insert(0, vec![(10, Digest([1; 32]))]);
        t.reports.insert(1, vec![(10, Digest([2; 32]))]);
        assert_eq!(
            t.agreed(0, 2),
            None,
            "two different digests agree on nothing"
        );
        t.reports.insert(2, vec![(10, Digest([1; 32]))]);
        assert_eq!(t.agreed(0, 2), Some((10, Digest([1; 32]), 0)));
        assert_eq!(t.agreed(10, 2), None, "nothing above what we have");
    }

    #[test]
    fn a_failed_source_is_not_chosen_again() {
        let mut t = Transfer::default();
        t.reports.insert(0, vec![(10, Digest([1; 32]))]);
        t.reports.insert(2, vec![(10, Digest([1; 32]))]);
        t.failed.insert(0);
        assert_eq!(t.agreed(0, 2), Some((10, Digest([1; 32]), 2)));
        t.failed.insert(2);
        assert_eq!(t.agreed(0, 2), None);
    }

    #[test]
    fn checkpoint_round_trips_through_bytes_with_the_same_digest() {
        let data = CheckpointData {
            cid: 7,
            service: vec![1, 2, 3],
            clients: ClientTable::new(4),
        };
        let c = Checkpoint::new(&data);
        let (again, decoded) = Checkpoint::from_bytes(c.data.clone()).unwrap();
        assert_eq!(again, c);
        assert_eq!(decoded, data);
    }
}
