//! Append+sync timings of the write-ahead log: 10,000 records of 200 bytes under each fsync
//! policy, synced after every record and after every 100. A measurement, not a test.
//!
//! `cargo run --release -p smr-core --example wal_bench [DIR]` (DIR picks the filesystem).

use smr_core::storage::{FsyncPolicy, Wal};

fn main() {
    let base = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let record = [0xA5u8; 200];
    for policy in [FsyncPolicy::Always, FsyncPolicy::Never] {
        for sync_every in [1usize, 100] {
            let dir = base.join(format!(
                "smr-wal-bench-{}-{policy}-{sync_every}",
                std::process::id()
            ));
            let (mut wal, _) = Wal::open(&dir, policy).expect("open the log");
            let start = std::time::Instant::now();
            for i in 1..=10_000 {
                wal.append(&record).expect("append");
                if i % sync_every == 0 {
                    wal.sync().expect("sync");
                }
            }
            wal.sync().expect("sync");
            let elapsed = start.elapsed();
            println!(
                "policy={policy:<6} sync every {sync_every:>3} record(s): {:>9.1} ms total, {:>7.2} us/record",
                elapsed.as_secs_f64() * 1e3,
                elapsed.as_secs_f64() * 1e6 / 10_000.0,
            );
            drop(wal);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
