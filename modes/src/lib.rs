//! Everything that differs between BFT and CFT in smr: the replication [`Mode`], the quorum
//! thresholds derived from `(mode, n, f)`, and the phase plan of one consensus instance.
//!
//! The engine never hard-codes a threshold. It builds one validated [`Quorums`] value from the
//! configuration at start-up (which refuses impossible `(n, f)` pairs with an actionable error)
//! and asks it every time it counts votes, STOPs, STOPDATA, replies or state-transfer digests.
//!
//! | purpose | BFT | CFT |
//! |---|---|---|
//! | WRITEs needed before sending ACCEPT | Q | (no WRITE phase) |
//! | ACCEPTs needed to decide | Q | Q |
//! | STOPs needed to join a leader change | f+1 | 1 |
//! | STOPs needed to install the new regency | 2f+1 | f+1 |
//! | STOPDATA the new leader collects | n-f | n-f |
//! | matching replies for an ordered request, unordered reads disabled | f+1 | 1 |
//! | matching replies for an ordered request, unordered reads enabled | Q | Q |
//! | matching replies for an unordered read | Q | Q |
//! | matching state-transfer digests | f+1 | 1 |
//!
//! where BFT needs `n >= 3f+1` and uses `Q = floor((n+f)/2)+1`, and CFT needs `n >= 2f+1` and
//! uses `Q = floor(n/2)+1`. docs/design.md §3.2 explains why these sizes are safe and live,
//! §3.3 gives the reason for each row, and §3.8 why unordered reads raise the ordered reply
//! quorum.

#![warn(missing_docs)]

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The failure model the cluster tolerates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Byzantine fault tolerance: up to f replicas may behave arbitrarily.
    Bft,
    /// Crash fault tolerance: up to f replicas may crash (and possibly recover).
    Cft,
}

impl Mode {
    /// Both modes, in a fixed order (handy for exhaustive tests).
    pub const ALL: [Mode; 2] = [Mode::Bft, Mode::Cft];

    /// The lowercase name used in configs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Bft => "bft",
            Mode::Cft => "cft",
        }
    }

    /// The smallest cluster that tolerates `f` faults in this mode.
    pub fn min_replicas(self, f: usize) -> usize {
        match self {
            Mode::Bft => f.saturating_mul(3).saturating_add(1),
            Mode::Cft => f.saturating_mul(2).saturating_add(1),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error returned when a string is not a valid [`Mode`].
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("unknown replication mode {given:?}; valid values are \"bft\" and \"cft\"")]
pub struct ParseModeError {
    /// The string that failed to parse.
    pub given: String,
}

impl FromStr for Mode {
    type Err = ParseModeError;

    fn from_str(s: &str) -> Result<Mode, ParseModeError> {
        let trimmed = s.trim();
        if trimmed.eq_ignore_ascii_case("bft") {
            Ok(Mode::Bft)
        } else if trimmed.eq_ignore_ascii_case("cft") {
            Ok(Mode::Cft)
        } else {
            Err(ParseModeError {
                given: s.to_owned(),
            })
        }
    }
}

/// One phase of a consensus instance, in the order they run (docs/design.md §3.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The leader sends the full batch; the only phase whose message carries it.
    Propose,
    /// BFT only: replicas send the batch's 32-byte blake3 hash to all before accepting; Q
    /// matching WRITEs form the prepared certificate the sync phase relies on.
    Write,
    /// Replicas vote for the batch hash; Q matching ACCEPTs decide.
    Accept,
}

const BFT_PHASES: [Phase; 3] = [Phase::Propose, Phase::Write, Phase::Accept];
const CFT_PHASES: [Phase; 2] = [Phase::Propose, Phase::Accept];

/// Why a `(mode, n, f)` configuration was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum QuorumError {
    /// `n == 0`.
    #[error("a cluster needs at least one replica, but n=0")]
    NoReplicas,
    /// `n` is below the mode's bound (`3f+1` for BFT, `2f+1` for CFT).
    #[error(
        "{} with f={f} needs n >= {} = {needed} replicas, but n={n}; add replicas or lower f",
        mode_upper(*mode),
        bound_formula(*mode)
    )]
    TooFewReplicas {
        /// The requested mode.
        mode: Mode,
        /// The requested number of replicas.
        n: usize,
        /// The requested number of tolerated faults.
        f: usize,
        /// The smallest `n` that would be accepted for this `f`.
        needed: usize,
    },
    /// `n` is larger than replica ids (`u32`) can number.
    #[error("n={n} replicas is more than the {max} that u32 replica ids can name")]
    TooManyReplicas {
        /// The requested number of replicas.
        n: usize,
        /// The largest accepted `n` ([`MAX_REPLICAS`]).
        max: usize,
    },
}

/// The largest cluster [`Quorums::new`] accepts: replica ids are `u32`, numbered `0..n`.
pub const MAX_REPLICAS: usize = u32::MAX as usize;

fn mode_upper(mode: Mode) -> &'static str {
    match mode {
        Mode::Bft => "BFT",
        Mode::Cft => "CFT",
    }
}

fn bound_formula(mode: Mode) -> &'static str {
    match mode {
        Mode::Bft => "3f+1",
        Mode::Cft => "2f+1",
    }
}

/// A validated `(mode, n, f)` and every threshold derived from it. Construct only through
/// [`Quorums::new`], so that holding a `Quorums` proves the configuration is sound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quorums {
    mode: Mode,
    n: usize,
    f: usize,
}

impl Quorums {
    /// Validates `(mode, n, f)`. Refuses `n == 0`, BFT with `n < 3f+1`, CFT with `n < 2f+1`,
    /// and `n > MAX_REPLICAS`.
    pub fn new(mode: Mode, n: usize, f: usize) -> Result<Quorums, QuorumError> {
        if n == 0 {
            return Err(QuorumError::NoReplicas);
        }
        if n > MAX_REPLICAS {
            return Err(QuorumError::TooManyReplicas {
                n,
                max: MAX_REPLICAS,
            });
        }
        let needed = mode.min_replicas(f);
        if n < needed {
            return Err(QuorumError::TooFewReplicas { mode, n, f, needed });
        }
        Ok(Quorums { mode, n, f })
    }

    /// The failure model these thresholds were derived for.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The number of replicas, `1..=MAX_REPLICAS`; replica ids are `0..n`.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The number of faulty replicas tolerated; at most `(n-1)/3` in BFT, `(n-1)/2` in CFT.
    pub fn f(&self) -> usize {
        self.f
    }

    /// Q: BFT `floor((n+f)/2)+1`, CFT `floor(n/2)+1`. Any two Q-sets intersect in at least f+1
    /// replicas (BFT), or at least one (CFT).
    pub fn quorum(&self) -> usize {
        match self.mode {
            Mode::Bft => (self.n + self.f) / 2 + 1,
            Mode::Cft => self.n / 2 + 1,
        }
    }

    /// Matching WRITEs needed before sending ACCEPT: BFT `Some(Q)`; CFT has no WRITE phase.
    pub fn writes_to_accept(&self) -> Option<usize> {
        match self.mode {
            Mode::Bft => Some(self.quorum()),
            Mode::Cft => None,
        }
    }

    /// Matching ACCEPTs needed to decide: Q.
    pub fn accepts_to_decide(&self) -> usize {
        self.quorum()
    }

    /// STOPs that make a replica join a leader change: BFT f+1 (at least one correct replica
    /// asked), CFT 1.
    pub fn stops_to_join(&self) -> usize {
        match self.mode {
            Mode::Bft => self.f + 1,
            Mode::Cft => 1,
        }
    }

    /// STOPs needed to install the new regency: BFT 2f+1, CFT f+1.
    pub fn stops_to_install(&self) -> usize {
        match self.mode {
            Mode::Bft => 2 * self.f + 1,
            Mode::Cft => self.f + 1,
        }
    }

    /// STOPDATA messages the new leader collects before sending SYNC: n-f.
    pub fn stopdata_to_collect(&self) -> usize {
        self.n - self.f
    }

    /// Matching replies a client needs for an ordered request: BFT f+1, CFT 1; Q when unordered
    /// reads are enabled, so that every write's reply set intersects every read's reply set.
    pub fn replies_ordered(&self, unordered_reads_enabled: bool) -> usize {
        if unordered_reads_enabled {
            return self.quorum();
        }
        match self.mode {
            Mode::Bft => self.f + 1,
            Mode::Cft => 1,
        }
    }

    /// Matching replies a client needs for an unordered (read-only) request: Q.
    pub fn replies_unordered(&self) -> usize {
        self.quorum()
    }

    /// Matching state-transfer digests needed before installing a transferred state: BFT f+1,
    /// CFT 1.
    pub fn state_transfer_digests(&self) -> usize {
        match self.mode {
            Mode::Bft => self.f + 1,
            Mode::Cft => 1,
        }
    }

    /// The phases of one consensus instance: BFT `[Propose, Write, Accept]`, CFT
    /// `[Propose, Accept]`.
    pub fn phases(&self) -> &'static [Phase] {
        match self.mode {
            Mode::Bft => &BFT_PHASES,
            Mode::Cft => &CFT_PHASES,
        }
    }

    /// Whether replicas exchange WRITEs before ACCEPTing (BFT only).
    pub fn runs_write_phase(&self) -> bool {
        self.mode == Mode::Bft
    }

    /// Whether replica protocol messages and client requests must carry signatures: BFT signs
    /// them so that votes form transferable certificates and a leader cannot invent requests;
    /// CFT relies on channel authentication (docs/design.md §3.6).
    pub fn requires_signatures(&self) -> bool {
        self.mode == Mode::Bft
    }

    /// The id of the leader of `regency`: `regency mod n`, so leadership rotates through every
    /// replica as leader changes install regencies 0, 1, 2, ... (docs/design.md §3.4, §3.9).
    pub fn leader_of(&self, regency: u64) -> u32 {
        let leader = regency % self.n as u64;
        u32::try_from(leader).expect("new() bounds n by MAX_REPLICAS, so ids fit in u32")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bft_with_too_few_replicas_explains_the_bound_and_the_fix() {
        let err = Quorums::new(Mode::Bft, 3, 1).unwrap_err();
        assert_eq!(
            err,
            QuorumError::TooFewReplicas {
                mode: Mode::Bft,
                n: 3,
                f: 1,
                needed: 4
            }
        );
        assert_eq!(
            err.to_string(),
            "BFT with f=1 needs n >= 3f+1 = 4 replicas, but n=3; add replicas or lower f"
        );
    }

    #[test]
    fn cft_with_too_few_replicas_explains_the_bound_and_the_fix() {
        let err = Quorums::new(Mode::Cft, 4, 2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "CFT with f=2 needs n >= 2f+1 = 5 replicas, but n=4; add replicas or lower f"
        );
    }

    #[test]
    fn zero_replicas_is_refused_in_both_modes() {
        for mode in Mode::ALL {
            for f in [0, 1, 5] {
                let err = Quorums::new(mode, 0, f).unwrap_err();
                assert_eq!(err, QuorumError::NoReplicas);
                assert_eq!(
                    err.to_string(),
                    "a cluster needs at least one replica, but n=0"
                );
            }
        }
    }

    #[test]
    fn absurd_f_is_refused_without_overflow() {
        for mode in Mode::ALL {
            let err = Quorums::new(mode, 31, usize::MAX).unwrap_err();
            assert!(matches!(
                err,
                QuorumError::TooFewReplicas {
                    needed: usize::MAX,
                    ..
                }
            ));
        }
    }

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn more_replicas_than_u32_ids_is_refused() {
        let err = Quorums::new(Mode::Cft, MAX_REPLICAS + 1, 0).unwrap_err();
        assert_eq!(
            err,
            QuorumError::TooManyReplicas {
                n: MAX_REPLICAS + 1,
                max: MAX_REPLICAS
            }
        );
        assert!(err.to_string().contains("u32 replica ids"));
    }

    #[test]
    fn largest_cluster_has_a_leader_for_every_regency() {
        let q = Quorums::new(Mode::Cft, MAX_REPLICAS, 0).unwrap();
        assert_eq!(
            q.leader_of(u64::MAX),
            (u64::MAX % MAX_REPLICAS as u64) as u32
        );
        assert_eq!(q.leader_of(MAX_REPLICAS as u64 - 1), u32::MAX - 1);
    }

    #[test]
    fn mode_parses_case_insensitively() {
        for (text, mode) in [
            ("bft", Mode::Bft),
            ("BFT", Mode::Bft),
            ("Bft", Mode::Bft),
            ("cft", Mode::Cft),
            ("CFT", Mode::Cft),
            (" cft ", Mode::Cft),
        ] {
            assert_eq!(text.parse::<Mode>(), Ok(mode), "{text:?}");
        }
    }

    #[test]
    fn unknown_mode_error_names_the_valid_values() {
        let err = "pbft".parse::<Mode>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown replication mode \"pbft\"; valid values are \"bft\" and \"cft\""
        );
        assert!("".parse::<Mode>().is_err());
    }

    #[test]
    fn mode_display_round_trips_through_from_str() {
        for mode in Mode::ALL {
            assert_eq!(mode.to_string(), mode.as_str());
            assert_eq!(mode.to_string().parse::<Mode>(), Ok(mode));
        }
        assert_eq!(Mode::Bft.to_string(), "bft");
        assert_eq!(Mode::Cft.to_string(), "cft");
    }

    #[test]
    fn mode_serializes_as_lowercase_name() {
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        struct Config {
            mode: Mode,
        }
        for (mode, text) in [
            (Mode::Bft, "mode = \"bft\"\n"),
            (Mode::Cft, "mode = \"cft\"\n"),
        ] {
            assert_eq!(toml::to_string(&Config { mode }).unwrap(), text);
            assert_eq!(toml::from_str::<Config>(text).unwrap(), Config { mode });
        }
        assert!(toml::from_str::<Config>("mode = \"Bft\"").is_err());
    }

    #[test]
    fn bft_runs_three_signed_phases() {
        let q = Quorums::new(Mode::Bft, 4, 1).unwrap();
        assert_eq!(q.phases(), &[Phase::Propose, Phase::Write, Phase::Accept]);
        assert!(q.runs_write_phase());
        assert!(q.requires_signatures());
        assert_eq!(q.writes_to_accept(), Some(3));
    }

    #[test]
    fn cft_skips_write_and_relies_on_channel_authentication() {
        let q = Quorums::new(Mode::Cft, 3, 1).unwrap();
        assert_eq!(q.phases(), &[Phase::Propose, Phase::Accept]);
        assert!(!q.runs_write_phase());
        assert!(!q.requires_signatures());
        assert_eq!(q.writes_to_accept(), None);
    }

    #[test]
    fn classic_bft_cluster_thresholds() {
        // n = 3f+1 gives Q = 2f+1.
        let q = Quorums::new(Mode::Bft, 4, 1).unwrap();
        assert_eq!(q.quorum(), 3);
        assert_eq!(q.accepts_to_decide(), 3);
        assert_eq!(q.stops_to_join(), 2);
        assert_eq!(q.stops_to_install(), 3);
        assert_eq!(q.stopdata_to_collect(), 3);
        assert_eq!(q.replies_ordered(false), 2);
        assert_eq!(q.replies_ordered(true), 3);
        assert_eq!(q.replies_unordered(), 3);
        assert_eq!(q.state_transfer_digests(), 2);
    }

    #[test]
    fn leader_rotates_round_robin_by_regency() {
        let q = Quorums::new(Mode::Bft, 4, 1).unwrap();
        let leaders: Vec<u32> = (0..9).map(|r| q.leader_of(r)).collect();
        assert_eq!(leaders, [0, 1, 2, 3, 0, 1, 2, 3, 0]);
    }
}
