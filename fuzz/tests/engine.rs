//! The engine-level target: honest engines and one arbitrary peer. The fuzz input is a script
//! (see `smr_fuzz::engine::Sim::run_script`): client requests, deliveries, time, lost messages,
//! and messages of every type from the Byzantine replica, validly signed with its key, with
//! fields biased to the edges (0, 1, the current cid ± small, `u64::MAX`) and replays of honest
//! messages it received. Checks: no honest engine panics or breaks an invariant
//! (`Engine::check_invariants` after every input), honest replicas execute the same operations
//! at every cid (BFT, where one Byzantine replica is within the fault model), and the heap.

use smr_fuzz::engine::Sim;
use smr_fuzz::{run, AllocBudget, Target};
use smr_modes::Mode;

/// Scripts that run the cluster normally, with a few Byzantine messages mixed in.
fn scripts() -> Vec<Vec<u8>> {
    let normal: Vec<u8> = (0..8u8)
        .flat_map(|i| [0, 2, i, i, 1, 31, 2, 3, 1, 31])
        .collect();
    let mut byzantine = normal.clone();
    for kind in 0u8..20 {
        // A Byzantine message: cid and regency picks, the kind, a few field bytes, the target.
        byzantine.extend_from_slice(&[
            3,
            kind % 10,
            kind % 10,
            kind,
            1,
            2,
            3,
            4,
            5,
            6,
            7,
            kind % 3,
        ]);
        byzantine.extend_from_slice(&[1, 31, 2, 10]);
    }
    vec![
        normal,
        byzantine,
        vec![2, 255, 2, 255, 1, 31, 3, 6, 6, 12, 3, 0, 0, 0, 0, 1],
    ]
}

/// Each input builds a cluster of four engines (260–400 KB allocated for an empty script); a
/// script adds what its requests and messages carry, many times over (every replica signs,
/// sends, logs and executes every request): about 3.5 KB per script byte, measured. Beyond
/// 4096 bytes per input byte the most one input allocated was 0.94 MB as BFT follower, 0.57 MB
/// as BFT leader and 0.32 MB in CFT; each constant is about twice (three times in CFT) that.
const fn engine_budget(constant_bytes: usize) -> AllocBudget {
    AllocBudget {
        constant_bytes,
        per_input_byte: 4096,
    }
}

#[test]
fn engine_bft_follower() {
    run(Target {
        name: "engine_bft_follower",
        known_open: &[],
        seeds: scripts(),
        default_iters: 6000,
        budget: engine_budget(2 * 1024 * 1024),
        check: &|bytes| Sim::new(Mode::Bft, Some(3)).run_script(bytes),
    });
}

#[test]
fn engine_bft_leader() {
    run(Target {
        name: "engine_bft_leader",
        known_open: &[],
        seeds: scripts(),
        default_iters: 6000,
        budget: engine_budget(3 * 512 * 1024),
        check: &|bytes| Sim::new(Mode::Bft, Some(0)).run_script(bytes),
    });
}

#[test]
fn engine_cft_peer() {
    // One arbitrary peer is outside CFT's fault model, so agreement is not asserted here: only
    // that no engine panics, breaks an invariant, or allocates beyond the bound.
    run(Target {
        name: "engine_cft_peer",
        known_open: &[],
        seeds: scripts(),
        default_iters: 6000,
        budget: engine_budget(1024 * 1024),
        check: &|bytes| {
            let mut sim = Sim::new(Mode::Cft, Some(2));
            sim.check_agreement = false;
            sim.run_script(bytes)
        },
    });
}

/// The harness itself works: the normal script decides its requests with the Byzantine replica
/// silent, and the Byzantine script's messages reach the engines (and are mostly refused).
#[test]
fn harness_decides_and_the_byzantine_replica_is_heard() {
    let scripts = scripts();
    let mut sim = Sim::new(Mode::Bft, Some(3));
    sim.run_script(&scripts[0]);
    assert!(
        sim.executed_cids() >= 4,
        "{} cids executed",
        sim.executed_cids()
    );
    let mut sim = Sim::new(Mode::Bft, Some(0));
    sim.run_script(&scripts[0]);
    assert!(
        sim.executed_cids() >= 1,
        "a silent leader is replaced: {} cids executed",
        sim.executed_cids()
    );
    let mut sim = Sim::new(Mode::Bft, Some(3));
    sim.run_script(&scripts[1]);
    assert!(sim.rejections() > 0);
}
