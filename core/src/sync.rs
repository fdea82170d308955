//! The value rule of the synchronization phase (docs/design.md §3.10), as one pure function.
//!
//! The new leader and every follower run [`choose`] on the same n-f signed STOPDATA, so they
//! derive the same values; a SYNC carries only the proofs.
//!
//! - `start` is the highest cid any STOPDATA proves decided. Everything at or below it is
//!   decided somewhere and is recovered by decision forwarding, never re-proposed.
//! - For each cid above `start` reported by anyone, the prepared value with the highest epoch is
//!   re-proposed. If h was decided at epoch e, at least f+1 correct replicas hold a prepared
//!   proof for h at e (BFT; one in CFT), any n-f STOPDATA include one of them, and no proof for
//!   another value can exist at an epoch >= e; so the highest-epoch proof is h.
//! - A cid between `start` and the highest reported cid with no proof cannot have been decided,
//!   and gets a no-op (an empty batch), as in Multi-Paxos.

use std::collections::BTreeMap;

use smr_crypto::Digest;

use crate::message::{Batch, Cid, Regency, ReplicaId, Signed, StopData};

/// What a SYNC's proofs determine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncChoice {
    /// Highest cid proven decided by some STOPDATA.
    pub start: Cid,
    /// A replica that proved `start` decided, to fetch decisions from.
    pub start_holder: Option<ReplicaId>,
    /// The values for `start+1 ..= start+values.len()`, in cid order.
    pub values: Vec<(Cid, Batch)>,
}

impl SyncChoice {
    /// The last cid the SYNC fixes; the new leader proposes fresh values after it.
    pub fn end(&self) -> Cid {
        self.start.saturating_add(self.values.len() as u64)
    }
}

/// Applies the value rule (docs/design.md §3.10.2) to STOPDATA the verifier accepted (the new
/// leader's collected ones, or a SYNC's proofs). Pure and independent of the proofs' order, so
/// every replica derives the same choice.
///
/// `window` is `max_instances_ahead`: a correct replica prepares nothing further than that
/// past its proven last decided cid, so nothing further than that past `start` can have been
/// decided. The verifier refuses STOPDATA with a prepared proof beyond it; a proof past
/// `start + window` is ignored here too, so that the choice (and the no-ops it allocates) is
/// bounded by the config, never by a cid a peer wrote.
pub fn choose(proofs: &[Signed<StopData>], window: u64) -> SyncChoice {
    let mut start = Cid::ZERO;
    let mut start_holder = None;
    for p in proofs {
        if let Some(d) = &p.body.last_decided {
            if d.cid > start {
                start = d.cid;
                start_holder = Some(p.body.replica);
            }
        }
    }
    // cid -> (epoch, digest, batch) with the highest epoch; ties broken by digest so that the
    // choice is a function of the set of proofs, not of their order.
    let mut best: BTreeMap<Cid, (Regency, Digest, &Batch)> = BTreeMap::new();
    let window_end = start.saturating_add(window);
    for p in proofs {
        for prepared in &p.body.prepared {
            if prepared.cid <= start || prepared.cid > window_end {
                continue;
            }
            let digest = prepared.batch.digest();
            let candidate = (prepared.epoch, digest, &prepared.batch);
            match best.get(&prepared.cid) {
                Some((e, d, _)) if (*e, *d) >= (candidate.0, candidate.1) => {}
                _ => {
                    best.insert(prepared.cid, candidate);
                }
            }
        }
    }
    let end = best.keys().next_back().copied().unwrap_or(start);
    // Counted from `start` rather than `start + 1`, which a peer's cid could overflow; at most
    // `window` of them.
    let values = (start.0..end.0)
        .map(|c| Cid(c.saturating_add(1)))
        .map(|cid| {
            let batch = best
                .get(&cid)
                .map(|(_, _, b)| (*b).clone())
                .unwrap_or_default();
            (cid, batch)
        })
        .collect();
    SyncChoice {
        start,
        start_holder,
        values,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{DecisionProof, PreparedProof, Request, RequestBody, RequestKind};
    use smr_crypto::PublicKey;

    fn batch(tag: u8) -> Batch {
        Batch {
            requests: vec![Request {
                body: RequestBody {
                    client: PublicKey([tag; 32]),
                    session: 1,
                    seq: 1,
                    kind: RequestKind::Ordered,
                    op: vec![tag],
                },
                signature: None,
            }],
        }
    }

    fn stopdata(
        replica: ReplicaId,
        decided: u64,
        prepared: Vec<(u64, u64, u8)>,
    ) -> Signed<StopData> {
        Signed {
            body: StopData {
                replica,
                regency: Regency(5),
                last_decided: (decided > 0).then(|| DecisionProof {
                    cid: Cid(decided),
                    digest: Digest::default(),
                    certificate: vec![],
                }),
                prepared: prepared
                    .into_iter()
                    .map(|(cid, epoch, tag)| PreparedProof {
                        cid: Cid(cid),
                        epoch: Regency(epoch),
                        batch: batch(tag),
                        writes: vec![],
                    })
                    .collect(),
            },
            signature: None,
        }
    }

    #[test]
    fn highest_epoch_prepared_value_wins() {
        let proofs = vec![
            stopdata(0, 3, vec![(4, 1, 1)]),
            stopdata(1, 3, vec![(4, 2, 2)]),
            stopdata(2, 2, vec![(3, 0, 9), (4, 0, 3)]),
        ];
        let choice = choose(&proofs, 64);
        assert_eq!(choice.start, Cid(3));
        assert_eq!(choice.values, vec![(Cid(4), batch(2))]);
    }

    #[test]
    fn gaps_get_no_ops_and_decided_cids_are_not_reproposed() {
        let proofs = vec![
            stopdata(0, 1, vec![(1, 0, 7), (3, 1, 1)]),
            stopdata(1, 0, vec![]),
        ];
        let choice = choose(&proofs, 64);
        assert_eq!(choice.start, Cid(1));
        assert_eq!(choice.start_holder, Some(0));
        assert_eq!(
            choice.values,
            vec![(Cid(2), Batch::default()), (Cid(3), batch(1))]
        );
        assert_eq!(choice.end(), Cid(3));
    }

    #[test]
    fn choice_does_not_depend_on_proof_order() {
        let a = stopdata(0, 0, vec![(1, 1, 1)]);
        let b = stopdata(1, 0, vec![(1, 1, 2)]);
        assert_eq!(choose(&[a.clone(), b.clone()], 64), choose(&[b, a], 64));
    }

    #[test]
    fn a_prepared_cid_far_past_start_allocates_nothing() {
        // Issue 12 item 3: in CFT a prepared proof at cid 2^60 made `choose` try to allocate
        // 10^18 no-ops. Beyond the window it is ignored (the verifier refuses it already).
        let proofs = vec![
            stopdata(0, 0, vec![(1 << 60, 1, 1)]),
            stopdata(1, 0, vec![]),
        ];
        let choice = choose(&proofs, 64);
        assert_eq!(choice.start, Cid(0));
        assert_eq!(choice.values, vec![]);
        let proofs = vec![stopdata(0, u64::MAX - 1, vec![(u64::MAX, 1, 1)])];
        let choice = choose(&proofs, 64);
        assert_eq!(choice.values, vec![(Cid(u64::MAX), batch(1))]);
        assert_eq!(choice.end(), Cid(u64::MAX));
    }

    #[test]
    fn nothing_open_means_nothing_to_fix() {
        let choice = choose(&[stopdata(0, 4, vec![]), stopdata(1, 2, vec![])], 64);
        assert_eq!(choice.start, Cid(4));
        assert!(choice.values.is_empty());
    }
}
