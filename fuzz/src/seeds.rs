//! Valid inputs generated from the real types, so the seeds follow the format as it changes.

use smr_core::checkpoint::{Checkpoint, CheckpointData};
use smr_core::clients::ClientTable;
use smr_core::codec;
use smr_core::engine::PersistRecord;
use smr_core::message::{Cid, Message, Regency, RequestId, RequestKind, StatusReport};
use smr_core::storage::{FsyncPolicy, Wal};
use smr_crypto::{Digest, IdentityKey, PublicKey};
use smr_modes::Mode;

use crate::engine::Sim;

/// What a few short runs of the harness cluster sent, and what replica 1 persisted: normal
/// operation in both modes, and a leader change (the first leader silent) with checkpoints.
pub fn recorded() -> (Vec<Message>, Vec<PersistRecord>) {
    let mut messages = Vec::new();
    let mut records = Vec::new();
    for mode in [Mode::Bft, Mode::Cft] {
        for silent in [None, Some(0)] {
            let mut sim = Sim::new(mode, silent);
            sim.recorded = Some(Default::default());
            for i in 0..10u8 {
                sim.submit(vec![i; usize::from(i)]);
                sim.settle(200);
            }
            sim.advance(5000);
            sim.settle(2000);
            let recorded = sim.recorded.take().expect("recording");
            messages.extend(recorded.messages);
            records.extend(
                recorded
                    .records
                    .into_iter()
                    .filter(|(me, _)| *me == 1)
                    .map(|(_, record)| record),
            );
        }
    }
    (messages, records)
}

/// One encoding of each kind of message seen (up to `per_kind` of each), plus the kinds a
/// short run does not send.
pub fn messages(per_kind: usize) -> Vec<Vec<u8>> {
    let (mut messages, _) = recorded();
    let client = PublicKey([7; 32]);
    messages.push(Message::StateFetch {
        cid: Cid(4),
        offset: 64,
    });
    messages.push(Message::StateChunk {
        cid: Cid(4),
        offset: 0,
        total_len: 3,
        bytes: vec![1, 2, 3],
        decided: None,
    });
    messages.push(Message::StatusQuery { route: 1 << 63 });
    messages.push(Message::Status(StatusReport {
        replica: 1,
        mode: "bft".into(),
        regency: Regency(2),
        leader: 2,
        last_decided: Cid(9),
        last_checkpoint: Cid(8),
        state_digest: Digest([3; 32]),
        pending_requests: 1,
        rejected_messages: 2,
        log_entries: 3,
        decided_instances: 9,
        executed_requests: 10,
        client_signatures_verified: 0,
        client_signatures_cached: 0,
        fsyncs: 4,
        refused_replicas: vec![smr_core::message::RefusedReplica {
            replica: 3,
            settings: vec!["limits.max_op_bytes".into()],
        }],
        state_over_max_state_bytes: true,
        participation: smr_core::message::Participation::CatchingUp { until: Cid(70) },
    }));
    messages.push(Message::Abstaining { until: Cid(70) });
    messages.push(Message::Reply(smr_core::message::Reply {
        replica: 0,
        client,
        session: 1,
        status: smr_core::message::ReplyStatus::Executed,
        seq: 1,
        regency: Regency(0),
        result: b"ok".to_vec(),
    }));
    // The answer to an open request (session number 1), routed by the client's tag.
    messages.push(Message::Reply(smr_core::message::Reply {
        replica: 0,
        client,
        session: smr_core::message::OPEN_SESSION,
        status: smr_core::message::ReplyStatus::Executed,
        seq: smr_core::clients::SESSION_NUMBER_LIMIT | 1,
        regency: Regency(0),
        result: 1u64.to_le_bytes().to_vec(),
    }));
    let mut per = std::collections::BTreeMap::<&str, usize>::new();
    messages
        .into_iter()
        .filter(|m| {
            let count = per.entry(m.kind_name()).or_default();
            *count += 1;
            *count <= per_kind
        })
        .map(|m| codec::encode(&m))
        .collect()
}

/// Encoded write-ahead-log records of every kind seen (up to `per_kind` each).
pub fn persist_records(per_kind: usize) -> Vec<Vec<u8>> {
    let (_, records) = recorded();
    let mut per = std::collections::BTreeMap::<u8, usize>::new();
    records
        .into_iter()
        .filter(|r| {
            let kind = match r {
                PersistRecord::Vote(_) => 0,
                PersistRecord::Prepared(_) => 1,
                PersistRecord::Decided(_) => 2,
                PersistRecord::Regency(_) => 3,
                PersistRecord::Checkpoint(_) => 4,
                PersistRecord::Sync(_) => 5,
                PersistRecord::Rejoining { .. } => 6,
            };
            let count = per.entry(kind).or_default();
            *count += 1;
            *count <= per_kind
        })
        .map(|r| codec::encode(&r))
        .collect()
}

/// Checkpoints the harness took, each encoded as the [`Checkpoint`] a checkpoint file stores.
pub fn checkpoints(max: usize) -> Vec<Vec<u8>> {
    let (_, records) = recorded();
    records
        .into_iter()
        .filter_map(|r| match r {
            PersistRecord::Checkpoint(c) => Some(codec::encode(&c)),
            _ => None,
        })
        .take(max)
        .collect()
}

/// The [`CheckpointData`] inside those checkpoints.
pub fn checkpoint_data(max: usize) -> Vec<Vec<u8>> {
    checkpoints(max)
        .into_iter()
        .filter_map(|bytes| codec::decode::<Checkpoint>(&bytes).ok())
        .map(|c| c.data)
        .collect()
}

/// Client tables with a few clients, executing and executed requests and cached replies.
pub fn client_tables() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for window in [1u64, 4, 64] {
        let mut table = ClientTable::new(window);
        out.push(codec::encode(&table));
        for client in 0..3u8 {
            // Each client opens a session (one stays empty), then executes in it.
            let key = PublicKey([client; 32]);
            let tag = smr_core::clients::SESSION_NUMBER_LIMIT | u64::from(client);
            let session = table.open_session(key, tag, Cid(1)).expect("room");
            table.open_session(key, tag + 8, Cid(1)).expect("room");
            for seq in 1..=6u64 {
                let id = RequestId {
                    client: key,
                    session,
                    seq,
                };
                table.mark_executing(&id, Cid(seq));
                if seq % 3 != 0 {
                    table.record_reply(&id, vec![client, seq as u8]);
                }
            }
        }
        out.push(codec::encode(&table));
    }
    let data = CheckpointData {
        cid: Cid(8),
        service: vec![1, 2, 3],
        clients: ClientTable::new(2),
    };
    out.extend(checkpoint_data(2));
    out.push(codec::encode(&data.clients));
    out
}

/// Key files as `IdentityKey::save` writes them.
pub fn key_files() -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().expect("a temp dir");
    [1u8, 2, 0xff]
        .iter()
        .map(|seed| {
            let path = dir.path().join(format!("key-{seed}"));
            IdentityKey::from_seed([*seed; 32])
                .save(&path)
                .expect("save a key");
            std::fs::read(&path).expect("read a key")
        })
        .collect()
}

/// Cluster configs: each mode and client policy, with and without every optional section.
pub fn configs() -> Vec<Vec<u8>> {
    let keys: Vec<String> = (1..=4u8)
        .map(|i| IdentityKey::from_seed([i; 32]).public_key().to_hex())
        .collect();
    let replicas = |n: usize| -> String {
        (0..n)
            .map(|i| {
                format!(
                    "[[replicas]]\nid = {i}\naddress = \"127.0.0.1:{}\"\npublic_key = \"{}\"\n",
                    7000 + i,
                    keys[i]
                )
            })
            .collect()
    };
    let full = format!(
        "mode = \"bft\"\nf = 1\nfsync = \"never\"\nclients = [\"{}\"]\n\n[limits]\nmax_batch_requests = 512\nmax_batch_bytes = 1048576\nmax_op_bytes = 65536\nmax_pending_per_client = 64\nmax_pending_total = 100000\nmax_instances_in_flight = 4\nmax_instances_ahead = 64\nmax_decisions_per_reply = 16\nmax_log_entries = 10000\ncheckpoint_period = 1000\nmax_state_bytes = 1073741824\nstate_chunk_bytes = 1048576\n\n[timeouts]\nrequest_timeout_ms = 1000\nretransmit_initial_ms = 100\nretransmit_max_ms = 2000\nheartbeat_ms = 500\n\n{}",
        keys[3],
        replicas(4)
    );
    let mut out = vec![
        format!("mode = \"bft\"\nf = 1\nclients = \"any\"\n{}", replicas(4)).into_bytes(),
        format!("mode = \"cft\"\nf = 1\nclients = \"any\"\n{}", replicas(3)).into_bytes(),
        full.into_bytes(),
    ];
    if let Ok(config) = smr_core::cluster::ClusterConfig::from_toml_str(
        &String::from_utf8_lossy(&out[2]),
        std::path::Path::new("/tmp"),
    ) {
        out.push(config.to_toml().into_bytes());
    }
    out
}

/// A data directory's files as the write-ahead log leaves them: a checkpoint (one of
/// [`checkpoints`], as the driver stores it) and records after it. Returned as the encoding the
/// WAL-recovery target reads: see `tests/storage.rs`.
pub fn data_dir_files() -> Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    let (_, records) = recorded();
    let checkpoint = records
        .iter()
        .find(|r| matches!(r, PersistRecord::Checkpoint(_)))
        .map(codec::encode);
    let after: Vec<Vec<u8>> = records
        .iter()
        .filter(|r| !matches!(r, PersistRecord::Checkpoint(_)))
        .take(6)
        .map(codec::encode)
        .collect();
    let mut out = Vec::new();
    for with_checkpoint in [false, true] {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (mut wal, _) = Wal::open(dir.path(), FsyncPolicy::Never).expect("open");
        if with_checkpoint {
            if let Some(c) = &checkpoint {
                wal.write_checkpoint(c, &after[..2]).expect("checkpoint");
            }
        }
        for record in &after {
            wal.append(record).expect("append");
        }
        wal.sync().expect("sync");
        let generation = wal.generation();
        drop(wal);
        let read = |name: String| std::fs::read(dir.path().join(name)).unwrap_or_default();
        out.push((
            read("MANIFEST".to_string()),
            read(format!("wal-{generation:020}.log")),
            read(format!("checkpoint-{generation:020}.ckp")),
        ));
    }
    out
}

/// Requests of every kind for the client-side and replica-side service decoders.
pub fn request_kinds() -> [RequestKind; 2] {
    [RequestKind::Ordered, RequestKind::Unordered]
}
