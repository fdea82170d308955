//! The seeded simulator as its own test target.
//!
//! `cargo test -p smr-core --test sim` runs the default sweep (200 seeds per mode).
//! `SMR_SIM_SEEDS=20000 cargo test --release -p smr-core --test sim` runs a long one, and
//! `SMR_SIM_SEED=1234 cargo test -p smr-core --test sim` replays one seed in every test.

mod harness;

use harness::{run_seed, SimOptions};
use smr_modes::Mode;

const DEFAULT_SEEDS: u64 = 200;

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("SMR_SIM_SEED") {
        return vec![s.parse().expect("SMR_SIM_SEED must be a u64")];
    }
    let count = std::env::var("SMR_SIM_SEEDS")
        .map(|s| s.parse().expect("SMR_SIM_SEEDS must be a number"))
        .unwrap_or(DEFAULT_SEEDS);
    (0..count).collect()
}

/// Runs every seed; collects failures and names the command that replays each.
fn sweep(test: &str, make: impl Fn(u64) -> SimOptions) {
    let mut failures = Vec::new();
    let seeds = seeds();
    for &seed in &seeds {
        let opts = make(seed);
        if let Err(e) = run_seed(opts) {
            eprintln!("seed {seed} failed: {e}");
            eprintln!("replay: SMR_SIM_SEED={seed} cargo test -p smr-core --test sim {test}");
            failures.push(seed);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed: {:?}; replay one with SMR_SIM_SEED=<seed> cargo test -p smr-core --test sim {test}",
        failures.len(),
        seeds.len(),
        failures
    );
}

#[test]
fn bft_n4_f1_holds_every_invariant_under_drop_duplicate_reorder_and_partition() {
    sweep("bft_n4_f1", |seed| {
        SimOptions::for_seed(Mode::Bft, 4, 1, seed)
    });
}

#[test]
fn cft_n3_f1_holds_every_invariant_under_drop_duplicate_reorder_and_partition() {
    sweep("cft_n3_f1", |seed| {
        SimOptions::for_seed(Mode::Cft, 3, 1, seed)
    });
}

#[test]
fn cft_mode_sends_no_write_messages() {
    for seed in seeds().into_iter().take(20) {
        let report = run_seed(SimOptions::for_seed(Mode::Cft, 3, 1, seed)).expect("run succeeds");
        assert_eq!(report.messages_by_kind.get("write"), None, "seed {seed}");
        assert!(report.messages_by_kind.get("accept").copied().unwrap_or(0) > 0);
    }
}

#[test]
fn bft_mode_decides_nothing_when_every_write_is_lost() {
    let mut opts = SimOptions::for_seed(Mode::Bft, 4, 1, 1);
    opts.drop_kind = Some("write");
    opts.max_time_ms = 5_000;
    opts.partition = false;
    let err = run_seed(opts).expect_err("no request can complete without WRITEs");
    assert!(err.contains("liveness"), "unexpected failure: {err}");
}

#[test]
fn bft_mode_with_real_ed25519_holds_every_invariant() {
    for seed in seeds().into_iter().take(10) {
        let mut opts = SimOptions::for_seed(Mode::Bft, 4, 1, seed);
        opts.real_crypto = true;
        run_seed(opts).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    }
}

#[test]
fn larger_clusters_hold_every_invariant() {
    for seed in seeds().into_iter().take(10) {
        run_seed(SimOptions::for_seed(Mode::Bft, 7, 2, seed))
            .unwrap_or_else(|e| panic!("bft n=7 seed {seed}: {e}"));
        run_seed(SimOptions::for_seed(Mode::Cft, 5, 2, seed))
            .unwrap_or_else(|e| panic!("cft n=5 seed {seed}: {e}"));
    }
}

#[test]
fn a_default_seed_orders_every_request_with_real_batches() {
    let report = run_seed(SimOptions::for_seed(Mode::Bft, 4, 1, 0)).expect("seed 0 runs");
    eprintln!("{report:#?}");
    assert_eq!(report.completed_requests, report.expected_requests);
    assert!(report.expected_requests >= 500);
    assert!(report.executed_per_replica.iter().all(|e| *e >= 500));
    // Batching works: fewer instances than requests.
    assert!(report.decided.len() < report.expected_requests);
}
