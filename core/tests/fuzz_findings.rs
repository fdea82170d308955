//! Regressions of what the engine-level fuzz targets (`fuzz/tests/engine.rs`) found, one test
//! per finding, at the handler level of the shared fixture (`common/`).
//!
//! - `a_peer_behind_the_capped_log_is_pointed_at_an_unstable_checkpoint`: fuzz input
//!   `0002d153…` of `engine_cft_peer` (issue 12 item 5's follow-up, kept in
//!   `fuzz/corpus/engine_cft_peer/`), where the leader change that followed left one replica
//!   at cid 6 and the other at cid 28 with no stable checkpoint, and the cluster changed leaders
//!   every 2 s for ever.

mod common;

use smr_core::engine::Outgoing;
use smr_core::message::{Cid, DecisionProof, Message, Regency, VoteKind};
use smr_core::{Limits, Peer};
use smr_crypto::Digest;
use smr_modes::Mode;

use common::{cluster, only_sent, run_service, send};

/// The log is capped at `max_log_entries` also while no checkpoint becomes stable (no quorum
/// announces one: here the two peers are behind or silent). A peer asking from before the
/// log's start was answered with the decisions after the gap, which it cannot execute, or with
/// nothing: it stayed behind for good, and its request timer changed leaders again and again.
/// Now it gets our StateInfo, which reports our own (unstable) checkpoints; in CFT one report
/// is enough to transfer one (BFT waits for f+1 identical ones).
#[test]
fn a_peer_behind_the_capped_log_is_pointed_at_an_unstable_checkpoint() {
    let limits = Limits {
        checkpoint_period: 4,
        max_log_entries: 4,
        ..Limits::default()
    };
    let c = cluster(Mode::Cft, 3, 1, limits);
    let mut replica = c.engine(1);
    replica.start(0);
    // Cids 1..=8 decided (with null batches) and executed; checkpoints at 4 and 8 taken and
    // announced, but nobody else announces them, so neither becomes stable.
    let mut checkpoint_digests: Vec<(Cid, Digest)> = Vec::new();
    for cid in 1..=8u64 {
        let output = c.deliver_decision(&mut replica, cid, Vec::new());
        for produced in run_service(&mut replica, 0, &output) {
            for outgoing in produced.messages() {
                if let Outgoing::Broadcast(Message::CheckpointAnnounce { cid, digest }) = outgoing {
                    checkpoint_digests.push((*cid, *digest));
                }
            }
        }
    }
    assert_eq!(replica.last_executed(), Cid(8));
    assert_eq!(
        checkpoint_digests
            .iter()
            .map(|(c, _)| *c)
            .collect::<Vec<_>>(),
        [Cid(4), Cid(8)]
    );

    // Replica 0 executed nothing and asks from cid 1: the log holds 5..=8 only.
    let output = c.deliver_ok(
        &mut replica,
        100,
        Peer::Replica(0),
        Message::DecisionQuery { from_cid: Cid(1) },
    );
    let null_digest = smr_core::message::Batch::default().digest();
    assert_eq!(
        output,
        only_sent(vec![send(
            0,
            Message::StateInfo {
                checkpoints: checkpoint_digests,
                voted_up_to: Cid(8),
                executed: Some(DecisionProof {
                    cid: Cid(8),
                    digest: null_digest,
                    certificate: c.votes(
                        VoteKind::Accept,
                        &[0, 1, 2],
                        Cid(8),
                        Regency(0),
                        null_digest
                    ),
                }),
                for_nonce: 0,
                rejoin_nonce: 0,
            }
        )])
    );
}
