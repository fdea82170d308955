//! Fuzz targets for what a replica reads back from its data directory: write-ahead-log records,
//! whole data directories (recovery), checkpoint files and the client table inside them.

use smr_core::checkpoint::{Checkpoint, CheckpointData};
use smr_core::clients::{Admission, ClientLimits, ClientTable, RequestStatus};
use smr_core::codec;
use smr_core::engine::PersistRecord;
use smr_core::message::{Cid, RequestId};
use smr_core::storage::{FsyncPolicy, Wal};
use smr_core::Engine;
use smr_crypto::PublicKey;
use smr_fuzz::engine::Sim;
use smr_fuzz::{run, seeds, AllocBudget, Target};
use smr_modes::Mode;

/// Records decode into structures a few times their encoding; recovering an engine costs a
/// fixed amount on top (its tables, a re-signed vote). Measured (seed 0, default run, total
/// bytes allocated per input): beyond 16 bytes per input byte, at most 9.5 KB (wal_records),
/// 7.6 KB (client_table), 3.4 KB (checkpoint_data), 0.6 KB (checkpoint_files); the constant is
/// about three times the largest.
const RECORD_BUDGET: AllocBudget = AllocBudget {
    constant_bytes: 32 * 1024,
    per_input_byte: 16,
};

/// Rebuilds replica 1 of the harness cluster (whose records the seeds are) from `records`, as
/// the driver does at start.
fn recover(sim: &Sim, records: Vec<PersistRecord>) {
    let signer = std::sync::Arc::new(sim.replica_key(1).clone());
    if let Ok((engine, _output)) = Engine::recover(sim.config(1), signer, records) {
        engine.check_invariants();
    }
}

#[test]
fn wal_records() {
    let sim = Sim::new(Mode::Bft, None);
    run(Target {
        name: "wal_records",
        known_open: &[],
        seeds: seeds::persist_records(3),
        default_iters: 100000,
        budget: RECORD_BUDGET,
        check: &|bytes| {
            if let Ok(record) = codec::decode::<PersistRecord>(bytes) {
                recover(&sim, vec![record]);
            }
        },
    });
}

const MANIFEST: &str = "MANIFEST";

/// The files of a data directory with a checkpoint (generation 1), from the seeds; a fuzz
/// input replaces one of them: its first byte says which (0: the log, 1: the checkpoint, 2: the
/// manifest), the rest is the file's content.
fn write_data_dir(dir: &std::path::Path, background: &(Vec<u8>, Vec<u8>, Vec<u8>), input: &[u8]) {
    let (manifest, log, checkpoint) = background;
    let (which, content) = input
        .split_first()
        .map_or((0, &[][..]), |(w, c)| (*w % 3, c));
    let files = [
        (
            "wal-00000000000000000001.log",
            if which == 0 { content } else { log },
        ),
        (
            "checkpoint-00000000000000000001.ckp",
            if which == 1 { content } else { checkpoint },
        ),
        (MANIFEST, if which == 2 { content } else { manifest }),
    ];
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).expect("write a data dir file");
    }
}

#[test]
fn wal_recovery() {
    let sim = Sim::new(Mode::Bft, None);
    let dirs = seeds::data_dir_files();
    let background = dirs.last().expect("a data dir with a checkpoint").clone();
    let seeds: Vec<Vec<u8>> = (0u8..3)
        .map(|which| {
            let file = match which {
                0 => &background.1,
                1 => &background.2,
                _ => &background.0,
            };
            [&[which][..], file].concat()
        })
        .collect();
    run(Target {
        name: "wal_recovery",
        known_open: &[],
        seeds,
        default_iters: 2000,
        // Reading allocates what the files hold (the log is read once more after a bad record);
        // the engine rebuilt from it a fixed amount more. Measured: at most 27 KB per input
        // beyond 8 bytes per input byte, nearly all of it the fixed files and the engine
        // (an empty input costs 2.7 KB, a 64-byte one up to 27 KB); the constant is 2.4 times that.
        budget: AllocBudget {
            constant_bytes: 64 * 1024,
            per_input_byte: 8,
        },
        check: &|input| {
            let dir = tempfile::tempdir().expect("a temp dir");
            write_data_dir(dir.path(), &background, input);
            let total_bytes: u64 = std::fs::read_dir(dir.path())
                .expect("list")
                .map(|e| e.expect("entry").metadata().expect("metadata").len())
                .sum();
            let Ok((wal, recovered)) = Wal::open(dir.path(), FsyncPolicy::Never) else {
                return;
            };
            // Recovery is linear in the files (issue 12 item 9).
            assert!(
                wal.recovery_hashed_bytes() <= 2 * total_bytes + 64,
                "recovery hashed {} bytes of {total_bytes}",
                wal.recovery_hashed_bytes()
            );
            drop(wal);
            // What the driver does next: decode each record and rebuild the engine.
            let records: Result<Vec<PersistRecord>, _> = recovered
                .checkpoint
                .iter()
                .chain(&recovered.records)
                .map(|bytes| codec::decode::<PersistRecord>(bytes))
                .collect();
            if let Ok(records) = records {
                recover(&sim, records);
            }
            // Opening again finds a clean log holding the same records.
            let (_wal, again) = Wal::open(dir.path(), FsyncPolicy::Never)
                .expect("a directory opened once opens again");
            assert_eq!(again.truncated_tail_bytes, 0);
            assert_eq!(again.records, recovered.records);
            assert_eq!(again.checkpoint, recovered.checkpoint);
        },
    });
}

#[test]
fn checkpoint_files() {
    let sim = Sim::new(Mode::Bft, None);
    run(Target {
        name: "checkpoint_files",
        known_open: &[],
        seeds: seeds::checkpoints(4),
        default_iters: 100000,
        budget: RECORD_BUDGET,
        check: &|bytes| {
            let Ok(checkpoint) = codec::decode::<Checkpoint>(bytes) else {
                return;
            };
            let _ = Checkpoint::from_bytes(
                checkpoint.data.clone(),
                checkpoint.decided.clone(),
                &ClientLimits::default(),
            );
            recover(&sim, vec![PersistRecord::Checkpoint(checkpoint)]);
        },
    });
}

#[test]
fn checkpoint_data() {
    run(Target {
        name: "checkpoint_data",
        known_open: &[],
        seeds: seeds::checkpoint_data(4),
        default_iters: 100000,
        budget: RECORD_BUDGET,
        check: &|bytes| {
            if let Ok(data) = codec::decode::<CheckpointData>(bytes) {
                // Not necessarily canonical (a map may repeat a key), but what it decoded to
                // survives a round trip.
                assert_eq!(
                    codec::decode::<CheckpointData>(&codec::encode(&data)),
                    Ok(data)
                );
            }
        },
    });
}

#[test]
fn client_table() {
    run(Target {
        name: "client_table",
        known_open: &[],
        seeds: seeds::client_tables(),
        default_iters: 100000,
        budget: RECORD_BUDGET,
        check: &|bytes| {
            // What a replica does with a table from a checkpoint: decode, then bind it to its
            // own limits and the checkpoint's cid.
            let Ok(decoded) = codec::decode::<ClientTable>(bytes) else {
                return;
            };
            let Ok(mut table) = decoded.bind(&ClientLimits::default(), Cid(1 << 40)) else {
                return;
            };
            let mut cid = 1u64 << 40;
            // What the engine does with a table restored from a checkpoint: look up, execute
            // and answer requests of known and unknown clients at edge sequence numbers.
            for client in [0u8, 1, 2, 0xff] {
                // An open, then requests in the session it opened (if any), in session 1 and
                // in the next number, not opened yet.
                cid += 1;
                let id = RequestId {
                    client: PublicKey([client; 32]),
                    session: smr_core::message::OPEN_SESSION,
                    seq: smr_core::clients::SESSION_NUMBER_LIMIT | cid,
                };
                let opened = match table.status(&id) {
                    RequestStatus::New => table.open_session(id.client, id.seq, Cid(cid)),
                    _ => None,
                };
                let next = table.next_session();
                for (session, seq) in [1, next, opened.unwrap_or(next)]
                    .into_iter()
                    .flat_map(|s| [0, 1, 2, 7, 1 << 63, u64::MAX - 1, u64::MAX].map(|seq| (s, seq)))
                {
                    let id = RequestId {
                        client: PublicKey([client; 32]),
                        session,
                        seq,
                    };
                    // The engine marks only a request the table calls new.
                    if table.status(&id) == RequestStatus::New {
                        cid += 1;
                        if table.mark_executing(&id, Cid(cid)) == Admission::SessionExpired {
                            continue;
                        }
                        table.record_reply(&id, vec![1]);
                        assert!(
                            table.status(&id) != RequestStatus::New,
                            "{id:?} is still new once executing"
                        );
                    }
                }
            }
            let _ = table.client_count();
        },
    });
}
