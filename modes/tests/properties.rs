//! Properties that make the thresholds safe and live, for every valid (mode, n, f) with n <= 31.
//! The arguments are the ones in docs/design.md: §3.2 (intersection and reachability), §3.8
//! (reply quorums with unordered reads), §3.9 (leader-change thresholds) and §3.10.3 (why the
//! SYNC value rule is safe).

use proptest::prelude::*;
use proptest::sample::subsequence;
use smr_modes::{Mode, Phase, Quorums};

const MAX_N: usize = 31;

fn max_f(mode: Mode, n: usize) -> usize {
    match mode {
        Mode::Bft => (n - 1) / 3,
        Mode::Cft => (n - 1) / 2,
    }
}

/// Every valid configuration with n <= 31.
fn valid_quorums() -> impl Strategy<Value = Quorums> {
    (prop_oneof![Just(Mode::Bft), Just(Mode::Cft)], 1..=MAX_N)
        .prop_flat_map(|(mode, n)| (Just(mode), Just(n), 0..=max_f(mode, n)))
        .prop_map(|(mode, n, f)| Quorums::new(mode, n, f).expect("f <= max_f is valid"))
}

/// A quorum plus two random sets of `quorum()` replica ids.
fn quorums_with_two_quorum_sets() -> impl Strategy<Value = (Quorums, Vec<usize>, Vec<usize>)> {
    valid_quorums().prop_flat_map(|q| {
        let ids: Vec<usize> = (0..q.n()).collect();
        (
            Just(q),
            subsequence(ids.clone(), q.quorum()),
            subsequence(ids, q.quorum()),
        )
    })
}

fn all_valid_quorums() -> Vec<Quorums> {
    let mut all = Vec::new();
    for mode in Mode::ALL {
        for n in 1..=MAX_N {
            for f in 0..=max_f(mode, n) {
                all.push(Quorums::new(mode, n, f).unwrap());
            }
        }
    }
    all
}

/// How many replicas any two quorums must share: f+1 in BFT (so at least one is correct), 1 in
/// CFT.
fn required_overlap(q: &Quorums) -> usize {
    match q.mode() {
        Mode::Bft => q.f() + 1,
        Mode::Cft => 1,
    }
}

fn intersection(a: &[usize], b: &[usize]) -> usize {
    a.iter().filter(|x| b.contains(x)).count()
}

#[test]
fn max_f_matches_the_refusal_bound() {
    for mode in Mode::ALL {
        for n in 1..=MAX_N {
            assert!(Quorums::new(mode, n, max_f(mode, n)).is_ok());
            assert!(Quorums::new(mode, n, max_f(mode, n) + 1).is_err());
        }
    }
}

/// The counting bound: two sets of size Q out of n share at least 2Q-n members, and the most
/// disjoint pair (the first Q ids and the last Q ids) shares exactly that many.
#[test]
fn most_disjoint_quorums_still_share_enough_replicas() {
    for q in all_valid_quorums() {
        let n = q.n();
        let size = q.quorum();
        assert!(size <= n, "{q:?}");
        let counting_bound = (2 * size).saturating_sub(n);
        assert!(counting_bound >= required_overlap(&q), "{q:?}");
        let first: Vec<usize> = (0..size).collect();
        let last: Vec<usize> = (n - size..n).collect();
        assert_eq!(intersection(&first, &last), counting_bound, "{q:?}");
    }
}

/// Decision safety needs Q-f >= f+1 correct replicas to hold what was decided, and any n-f
/// STOPDATA must reach one of them (docs/design.md §3.10.3).
#[test]
fn stopdata_always_reaches_a_correct_replica_that_accepted() {
    for q in all_valid_quorums() {
        let (n, f) = (q.n(), q.f());
        let accepted = q.accepts_to_decide();
        let faulty_among_accepted = match q.mode() {
            Mode::Bft => f,
            Mode::Cft => 0, // crashed replicas do not lie; they are simply absent
        };
        let correct_accepted = accepted - faulty_among_accepted.min(accepted);
        assert!(correct_accepted >= 1, "{q:?}");
        // The leader's n-f STOPDATA can miss at most n-(n-f) = f replicas, and in BFT up to f of
        // the ones it hears from may lie.
        let reported = q.stopdata_to_collect();
        let overlap = (accepted + reported).saturating_sub(n);
        assert!(overlap > faulty_among_accepted, "{q:?}");
    }
}

proptest! {
    #[test]
    fn any_two_quorums_intersect_enough((q, a, b) in quorums_with_two_quorum_sets()) {
        prop_assert_eq!(a.len(), q.quorum());
        prop_assert!(intersection(&a, &b) >= required_overlap(&q), "{:?} {:?} {:?}", q, a, b);
    }

    /// With the faulty replicas placed adversarially inside the intersection, BFT quorums still
    /// share a correct replica.
    #[test]
    fn bft_quorums_share_a_correct_replica((q, a, b) in quorums_with_two_quorum_sets()) {
        let shared = intersection(&a, &b);
        let faulty = match q.mode() { Mode::Bft => q.f(), Mode::Cft => 0 };
        prop_assert!(shared > faulty);
    }

    /// Every threshold can be met by the n-f replicas that are certainly correct, so no step ever
    /// waits for a faulty replica.
    #[test]
    fn every_threshold_is_reachable_with_only_correct_replicas(q in valid_quorums()) {
        let correct = q.n() - q.f();
        let mut thresholds = vec![
            q.quorum(),
            q.accepts_to_decide(),
            q.stops_to_join(),
            q.stops_to_install(),
            q.stopdata_to_collect(),
            q.replies_ordered(false),
            q.replies_ordered(true),
            q.replies_unordered(),
            q.state_transfer_digests(),
        ];
        thresholds.extend(q.writes_to_accept());
        for t in thresholds {
            prop_assert!(t >= 1 && t <= correct, "{:?}: threshold {} > n-f = {}", q, t, correct);
        }
    }

    /// In BFT, any f+1 messages include one from a correct replica: enough to join a leader change,
    /// to trust a reply, or to trust a state-transfer digest. Installing a regency needs 2f+1,
    /// which includes f+1 correct replicas.
    #[test]
    fn thresholds_that_must_include_a_correct_replica_do(q in valid_quorums()) {
        let f = q.f();
        match q.mode() {
            Mode::Bft => {
                prop_assert!(q.stops_to_join() > f);
                prop_assert!(q.replies_ordered(false) > f);
                prop_assert!(q.state_transfer_digests() > f);
                prop_assert!(q.stops_to_install() > f);
                prop_assert!(q.stops_to_install() - f >= q.stops_to_join());
                prop_assert!(q.stops_to_install() - f > f);
            }
            Mode::Cft => {
                prop_assert!(q.stops_to_join() >= 1);
                prop_assert!(q.stops_to_install() > f);
            }
        }
    }

    /// Unordered reads are linearizable only if a write's reply set and a read's reply set always
    /// intersect in a correct replica.
    #[test]
    fn reads_and_writes_reply_sets_intersect_when_unordered_reads_are_enabled(q in valid_quorums()) {
        let write_replies = q.replies_ordered(true);
        let read_replies = q.replies_unordered();
        let overlap = (write_replies + read_replies).saturating_sub(q.n());
        prop_assert!(overlap >= required_overlap(&q));
    }

    #[test]
    fn leader_is_a_replica_and_rotates_through_all_of_them(q in valid_quorums(), regency in any::<u64>()) {
        let n = q.n() as u64;
        let leader = q.leader_of(regency);
        prop_assert!((leader as u64) < n);
        prop_assert_eq!(leader as u64, regency % n);
        if let Some(next_round) = regency.checked_add(n) {
            prop_assert_eq!(q.leader_of(next_round), leader);
        }
        if let Some(next) = regency.checked_add(1) {
            prop_assert_eq!(q.leader_of(next) as u64, (leader as u64 + 1) % n);
        }
    }

    #[test]
    fn phase_plan_agrees_with_write_phase_and_signatures(q in valid_quorums()) {
        let has_write = q.phases().contains(&Phase::Write);
        prop_assert_eq!(has_write, q.runs_write_phase());
        prop_assert_eq!(has_write, q.writes_to_accept().is_some());
        prop_assert_eq!(has_write, q.requires_signatures());
        prop_assert_eq!(q.phases().first(), Some(&Phase::Propose));
        prop_assert_eq!(q.phases().last(), Some(&Phase::Accept));
    }
}
