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
//! uses `Q = floor(n/2)+1`.

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

/// One phase of a consensus instance, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The leader sends the full batch.
    Propose,
    /// BFT only: replicas echo the batch hash to all before accepting.
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
}

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
    /// Validates `(mode, n, f)`. Refuses `n == 0`, BFT with `n < 3f+1` and CFT with `n < 2f+1`.
    pub fn new(mode: Mode, n: usize, f: usize) -> Result<Quorums, QuorumError> {
        if n == 0 {
            return Err(QuorumError::NoReplicas);
        }
        let needed = mode.min_replicas(f);
        if n < needed {
            return Err(QuorumError::TooFewReplicas { mode, n, f, needed });
        }
        Ok(Quorums { mode, n, f })
    }

    /// The failure model.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The number of replicas.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The number of faults tolerated.
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

    /// Whether protocol messages must carry signatures. CFT relies on channel authentication.
    pub fn requires_signatures(&self) -> bool {
        self.mode == Mode::Bft
    }

    /// The leader of `regency`: `regency mod n`.
    pub fn leader_of(&self, regency: u64) -> u32 {
        let leader = regency % self.n as u64;
        u32::try_from(leader).expect("replica ids fit in u32")
    }
}
