//! Every message the engine can build fits the frame limit derived from its config (issue 12
//! item 10): the largest message of each type, built with the real encoder at the config's
//! limits, over n and both modes. The same for every record it can persist and the
//! write-ahead log's record limit.

use smr_core::codec::encode;
use smr_core::engine::PersistRecord;
use smr_core::frame_limits::{
    client_frame_bytes, replica_frame_bytes, MessageBounds, RecordBounds,
};
use smr_core::message::{
    Batch, Cid, Decision, DecisionProof, Message, PreparedProof, Propose, Regency, Reply, Request,
    RequestBody, RequestKind, Signed, Stop, StopData, Sync, Vote, VoteKind,
};
use smr_core::storage::MAX_RECORD_BYTES;
use smr_core::verify::MAX_REPORTED_CHECKPOINTS;
use smr_core::Limits;
use smr_crypto::{Digest, PublicKey, Signature};
use smr_modes::{Mode, Quorums};

/// Small limits, so that the largest messages are cheap to build, where a full batch reaches
/// both `max_batch_requests` and `max_batch_bytes` (every bound is then met exactly).
fn small_limits() -> Limits {
    let max_op_bytes = 100;
    Limits {
        max_op_bytes,
        max_batch_requests: 4,
        max_batch_bytes: 4 * (125 + max_op_bytes),
        max_instances_in_flight: 2,
        max_instances_ahead: 5,
        max_decisions_per_reply: 3,
        state_chunk_bytes: 1000,
        max_client_reply_bytes: 2000,
        ..Limits::default()
    }
}

struct Builder {
    n: usize,
    signed: bool,
    limits: Limits,
}

impl Builder {
    fn signature(&self) -> Option<Signature> {
        self.signed.then_some(Signature([9; 64]))
    }

    fn request(&self, seq: u64) -> Request {
        Request {
            body: RequestBody {
                client: PublicKey([7; 32]),
                session: 1,
                seq,
                kind: RequestKind::Ordered,
                op: vec![1; self.limits.max_op_bytes],
            },
            signature: self.signature(),
        }
    }

    fn requests(&self) -> Vec<Request> {
        (0..self.limits.max_batch_requests as u64)
            .map(|seq| self.request(seq))
            .collect()
    }

    fn batch(&self) -> Batch {
        let batch = Batch {
            requests: self.requests(),
        };
        assert!(batch.size_bytes() <= self.limits.max_batch_bytes);
        batch
    }

    fn votes(&self, kind: VoteKind, cid: u64) -> Vec<Signed<Vote>> {
        (0..self.n as u32)
            .map(|replica| Signed {
                body: Vote {
                    kind,
                    replica,
                    cid: Cid(cid),
                    regency: Regency(u64::MAX),
                    digest: Digest([2; 32]),
                },
                signature: self.signature(),
            })
            .collect()
    }

    fn decision_proof(&self) -> DecisionProof {
        DecisionProof {
            cid: Cid(u64::MAX),
            digest: Digest([3; 32]),
            certificate: self.votes(VoteKind::Accept, u64::MAX),
        }
    }

    fn stopdata(&self, replica: u32) -> Signed<StopData> {
        Signed {
            body: StopData {
                replica,
                regency: Regency(u64::MAX),
                last_decided: Some(self.decision_proof()),
                prepared: (0..self.limits.max_instances_ahead)
                    .map(|i| PreparedProof {
                        cid: Cid(i),
                        epoch: Regency(i),
                        batch: self.batch(),
                        writes: self.votes(VoteKind::Write, i),
                    })
                    .collect(),
            },
            signature: self.signature(),
        }
    }

    /// The largest write-ahead-log record of every type the bounds cover, by their names.
    fn largest_records(&self) -> Vec<(&'static str, PersistRecord)> {
        let vote = self.votes(VoteKind::Accept, u64::MAX).remove(0).body;
        let sync = match self.largest_messages().remove(7) {
            ("sync", Message::Sync(sync)) => sync,
            other => panic!("expected the SYNC, got {}", other.0),
        };
        vec![
            ("vote", PersistRecord::Vote(vote)),
            (
                "prepared",
                PersistRecord::Prepared(PreparedProof {
                    cid: Cid(u64::MAX),
                    epoch: Regency(u64::MAX),
                    batch: self.batch(),
                    writes: self.votes(VoteKind::Write, u64::MAX),
                }),
            ),
            (
                "decided",
                PersistRecord::Decided(Decision {
                    cid: Cid(u64::MAX),
                    batch: self.batch(),
                    certificate: self.votes(VoteKind::Accept, u64::MAX),
                }),
            ),
            ("regency", PersistRecord::Regency(Regency(u64::MAX))),
            ("sync", PersistRecord::Sync(sync)),
        ]
    }

    /// The largest message of every type the bounds cover, by the bounds' names.
    fn largest_messages(&self) -> Vec<(&'static str, Message)> {
        let n = self.n as u32;
        vec![
            ("request", Message::Request(self.request(1))),
            (
                "propose",
                Message::Propose(Signed {
                    body: Propose {
                        leader: n - 1,
                        cid: Cid(u64::MAX),
                        regency: Regency(u64::MAX),
                        batch: self.batch(),
                    },
                    signature: self.signature(),
                }),
            ),
            (
                "vote",
                Message::Accept(self.votes(VoteKind::Accept, 1).remove(0)),
            ),
            ("forward", Message::Forward(self.requests())),
            (
                "decisions",
                Message::Decisions(
                    (0..self.limits.max_decisions_per_reply as u64)
                        .map(|cid| Decision {
                            cid: Cid(cid),
                            batch: self.batch(),
                            certificate: self.votes(VoteKind::Accept, cid),
                        })
                        .collect(),
                ),
            ),
            (
                "stop",
                Message::Stop(Signed {
                    body: Stop {
                        replica: 0,
                        regency: Regency(u64::MAX),
                        from_regency: Regency(0),
                        pending: self.requests(),
                    },
                    signature: self.signature(),
                }),
            ),
            ("stopdata", Message::StopData(self.stopdata(0))),
            (
                "sync",
                Message::Sync(Signed {
                    body: Sync {
                        leader: 0,
                        regency: Regency(u64::MAX),
                        proofs: (0..n).map(|r| self.stopdata(r)).collect(),
                    },
                    signature: self.signature(),
                }),
            ),
            (
                "state-chunk",
                Message::StateChunk {
                    cid: Cid(u64::MAX),
                    offset: 0,
                    total_len: u64::MAX,
                    bytes: vec![4; self.limits.state_chunk_bytes],
                    decided: Some(self.decision_proof()),
                },
            ),
            (
                "state-info",
                Message::StateInfo {
                    checkpoints: vec![(Cid(1), Digest([5; 32])); MAX_REPORTED_CHECKPOINTS],
                    voted_up_to: Cid(u64::MAX),
                    executed: Some(self.decision_proof()),
                    for_nonce: u64::MAX,
                    rejoin_nonce: u64::MAX,
                },
            ),
            (
                "reply",
                Message::Reply(Reply {
                    replica: n - 1,
                    client: PublicKey([6; 32]),
                    session: 1,
                    status: smr_core::message::ReplyStatus::Executed,
                    seq: u64::MAX,
                    regency: Regency(u64::MAX),
                    result: vec![6; self.limits.max_client_reply_bytes as usize],
                }),
            ),
        ]
    }
}

#[test]
fn the_largest_message_of_every_type_fits_the_derived_frame_limit_for_every_n_and_mode() {
    let clusters = [
        (Mode::Bft, 4, 1),
        (Mode::Bft, 7, 2),
        (Mode::Bft, 10, 3),
        (Mode::Bft, 13, 4),
        (Mode::Cft, 3, 1),
        (Mode::Cft, 5, 2),
        (Mode::Cft, 7, 3),
        (Mode::Cft, 9, 4),
    ];
    for (mode, n, f) in clusters {
        let quorums = Quorums::new(mode, n, f).unwrap();
        let limits = small_limits();
        let bounds = MessageBounds::new(&quorums, &limits);
        let frame_limit = replica_frame_bytes(&quorums, &limits);
        let builder = Builder {
            n,
            signed: quorums.requires_signatures(),
            limits: limits.clone(),
        };
        let by_name = bounds.by_size();
        for (name, message) in builder.largest_messages() {
            let bytes = encode(&message).len() as u64;
            let (_, bound) = *by_name.iter().find(|(b, _)| *b == name).unwrap();
            assert!(
                bytes <= bound,
                "{mode:?} n = {n}: the largest {name} is {bytes} bytes, above its bound {bound}"
            );
            if builder.signed {
                // Signed, every field at its maximum: the bound is exact.
                assert_eq!(
                    bytes, bound,
                    "{mode:?} n = {n}: {name}'s bound is not tight"
                );
            }
            assert!(
                bytes as usize <= frame_limit,
                "{mode:?} n = {n}: {name} of {bytes} bytes exceeds the frame limit {frame_limit}"
            );
        }
        let request = encode(&builder.largest_messages()[0].1).len();
        assert!(request <= client_frame_bytes(&quorums, &limits));
    }
}

#[test]
fn a_leader_change_sync_at_n7_with_1mib_batches_fits_the_frame_limit() {
    // Issue 12 item 10, as filed: at n = 7 with 1 MiB batches, a SYNC of n-f STOPDATA with
    // max_instances_in_flight (4) prepared batches each is about 20 MiB, above the fixed
    // ~17 MiB frame limit (16 decisions of 1 MiB + 1 MiB) replicas used, so the SYNC was never
    // sent and followers never installed the regency.
    let quorums = Quorums::new(Mode::Bft, 7, 2).unwrap();
    let limits = Limits::default();
    let builder = Builder {
        n: 7,
        signed: true,
        limits: Limits {
            // 16 requests of 64 KiB: a batch of just under 1 MiB (max_batch_bytes).
            max_batch_requests: 15,
            max_instances_ahead: limits.max_instances_in_flight,
            ..limits.clone()
        },
    };
    let sync = Message::Sync(Signed {
        body: Sync {
            leader: 1,
            regency: Regency(1),
            proofs: (0..5).map(|r| builder.stopdata(r)).collect(),
        },
        signature: builder.signature(),
    });
    let bytes = encode(&sync).len();
    let old_limit = limits.max_batch_bytes * limits.max_decisions_per_reply + (1 << 20);
    assert!(bytes > old_limit, "the example SYNC is {bytes} bytes");
    assert!(
        bytes <= replica_frame_bytes(&quorums, &limits),
        "a {bytes}-byte SYNC does not fit the frame limit {}",
        replica_frame_bytes(&quorums, &limits)
    );
}

#[test]
fn limits_whose_largest_message_cannot_fit_a_frame_are_refused_naming_the_keys() {
    let quorums = Quorums::new(Mode::Bft, 10, 3).unwrap();
    let limits = Limits {
        max_batch_bytes: 64 << 20,
        max_op_bytes: 1 << 20,
        ..Limits::default()
    };
    let (largest, bytes) = MessageBounds::new(&quorums, &limits).largest();
    assert_eq!(largest, "sync");
    assert!(bytes > u64::from(u32::MAX));
    let config = smr_core::EngineConfig {
        quorums,
        me: 0,
        replica_keys: vec![PublicKey([1; 32]); 10],
        clients: smr_core::ClientPolicy::Any,
        limits,
        timeouts: Default::default(),
    };
    let error = config.validate().unwrap_err();
    assert_eq!(
        error,
        smr_core::InvalidConfig::MessageTooLarge {
            message: "sync",
            bytes
        }
    );
    let text = error.to_string();
    assert!(
        text.contains("limits.max_batch_bytes") && text.contains("limits.max_instances_ahead"),
        "{text}"
    );
}

const CLUSTERS: [(Mode, usize, usize); 8] = [
    (Mode::Bft, 4, 1),
    (Mode::Bft, 7, 2),
    (Mode::Bft, 10, 3),
    (Mode::Bft, 13, 4),
    (Mode::Cft, 3, 1),
    (Mode::Cft, 5, 2),
    (Mode::Cft, 7, 3),
    (Mode::Cft, 9, 4),
];

#[test]
fn the_largest_record_of_every_type_meets_its_bound_for_every_n_and_mode() {
    for (mode, n, f) in CLUSTERS {
        let quorums = Quorums::new(mode, n, f).unwrap();
        let limits = small_limits();
        let bounds = RecordBounds::new(&quorums, &limits).by_size();
        let builder = Builder {
            n,
            signed: quorums.requires_signatures(),
            limits,
        };
        let records = builder.largest_records();
        assert_eq!(records.len(), bounds.len(), "one record per bound");
        for (name, record) in records {
            let bytes = encode(&record).len() as u64;
            let (_, bound) = *bounds.iter().find(|(b, _)| *b == name).unwrap();
            assert!(
                bytes <= bound,
                "{mode:?} n = {n}: the largest {name} record is {bytes} bytes, above its bound {bound}"
            );
            if builder.signed {
                assert_eq!(
                    bytes, bound,
                    "{mode:?} n = {n}: {name}'s bound is not tight"
                );
            }
        }
    }
}

/// Review of issue 12 (finding 2 of review 23): with a 256 MiB record limit, a leader's SYNC
/// at the default limits (256.1 MiB at n = 4, 448 MiB at n = 7) and a prepared batch under a
/// validated config with 512 MiB operations could not be persisted, and the driver stops the
/// replica when an append fails. Over n, both modes, and limits from small to the largest a
/// frame allows: whatever validates persists.
#[test]
fn every_record_of_every_valid_config_fits_the_wal_for_every_n_and_mode() {
    let defaults = Limits::default();
    let variants = [
        ("defaults", defaults.clone()),
        ("small", small_limits()),
        (
            "512 MiB operations",
            Limits {
                max_op_bytes: 512 << 20,
                max_batch_requests: 1,
                max_batch_bytes: 512 << 20,
                max_decisions_per_reply: 1,
                max_instances_ahead: 1,
                max_instances_in_flight: 1,
                ..defaults.clone()
            },
        ),
        (
            "64 MiB batches",
            Limits {
                max_batch_bytes: 64 << 20,
                max_op_bytes: 1 << 20,
                ..defaults.clone()
            },
        ),
        (
            "far ahead",
            Limits {
                max_instances_ahead: 1024,
                ..defaults.clone()
            },
        ),
    ];
    let mut valid = Vec::new();
    for (name, limits) in variants {
        for (mode, n, f) in CLUSTERS {
            let quorums = Quorums::new(mode, n, f).unwrap();
            let config = smr_core::EngineConfig {
                quorums,
                me: 0,
                replica_keys: vec![PublicKey([1; 32]); n],
                clients: smr_core::ClientPolicy::Any,
                limits: limits.clone(),
                timeouts: Default::default(),
            };
            let records = RecordBounds::new(&quorums, &limits);
            let (largest, bytes) = records.largest();
            // No record is larger than the largest message, so the frame rule covers it.
            assert!(bytes <= MessageBounds::new(&quorums, &limits).largest().1);
            match config.validate() {
                Ok(_) => {
                    valid.push((name, mode, n));
                    assert!(
                        bytes <= MAX_RECORD_BYTES as u64,
                        "{name}, {mode:?} n = {n}: valid, yet a {largest} record may be {bytes} bytes, above MAX_RECORD_BYTES {MAX_RECORD_BYTES}"
                    );
                }
                Err(e) => assert!(
                    matches!(
                        e,
                        smr_core::InvalidConfig::MessageTooLarge { .. }
                            | smr_core::InvalidConfig::RecordTooLarge { .. }
                    ),
                    "{name}, {mode:?} n = {n}: {e}"
                ),
            }
        }
    }
    // The examples that failed are valid configs: the defaults at n = 4 and 7, and 512 MiB
    // operations.
    for example in [
        ("defaults", Mode::Bft, 4),
        ("defaults", Mode::Bft, 7),
        ("512 MiB operations", Mode::Bft, 4),
        ("512 MiB operations", Mode::Bft, 7),
    ] {
        assert!(valid.contains(&example), "{example:?} is refused");
    }
    eprintln!("{} of 40 configs validated: {valid:?}", valid.len());
}
