//! The membership as data: a numbered [`View`] (its members, the mode and f), the one
//! [`Change`] a reconfiguration makes, and [`View::check`], the one pure function that judges a
//! proposed change and returns the next view, or a [`ReconfigRefusal`] that says what is wrong
//! and what the operator can do (issue 14; docs/design.md §3.13).
//!
//! Stage 1 of reconfiguration: nothing in the engine uses this module yet. The engine still
//! reads its quorums from [`crate::EngineConfig`], no membership change is ordered or
//! accepted, and nothing here is on the wire or in the write-ahead log.
//!
//! The shapes:
//!
//! - View 0 is `cluster.toml`'s ([`View::genesis`]). Each later view is the one `check`
//!   returned for the view before it: number + 1, exactly one change applied.
//! - A view's members are in ascending id order, with distinct ids, keys and addresses, at
//!   most [`MAX_MEMBERS`] of them, each key a valid ed25519 key (as `cluster.toml` requires:
//!   not weak, on the curve), and `(mode, n, f)` is one [`Quorums::new`] accepts. Every
//!   `View` holds these: the only ways to get one are `genesis` (from a validated config) and
//!   `check`.
//! - Ids and keys are never reused: a removed replica's id and key go into [`Retired`] (the
//!   caller records them), and `check` refuses them for a new member. A replacement is a new
//!   replica with a new id and a new key: remove, then add.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use smr_crypto::{KeyError, PublicKey};
use smr_modes::{Mode, QuorumError, Quorums};

use crate::cluster::ClusterConfig;
use crate::network::ReplicaId;

/// The most members a view may hold: 1,024. `cluster.toml` is held to it too, and `check`
/// refuses an addition past it. A documented bound, not a measured one: the largest messages
/// and write-ahead-log records grow with n (a SYNC carries n − f STOPDATA, a certificate Q
/// votes), so a membership that changes needs a bound of its own that frame limits can be
/// sized by. Far above the clusters the tests run (the threshold table in
/// `modes/tests/data/quorums.tsv` goes to n = 31).
pub const MAX_MEMBERS: usize = 1024;

/// A view's number: 0 for `cluster.toml`'s, one more for each change since.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct ViewNumber(pub u64);

impl ViewNumber {
    /// View 0: the membership `cluster.toml` lists.
    pub const GENESIS: ViewNumber = ViewNumber(0);
}

impl fmt::Display for ViewNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// One replica of a view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its id; never reused once the replica is removed.
    pub id: ReplicaId,
    /// Its ed25519 identity key, pinned by every peer (docs/design.md §6); never reused.
    pub public_key: PublicKey,
    /// Where it listens, `ip:port` as `cluster.toml` writes it (the canonical form of a
    /// `SocketAddr`, e.g. `127.0.0.1:7000` or `[::1]:7000`).
    pub address: String,
}

/// The membership of one view: which replicas count, in which mode, tolerating how many
/// faults. Read through its accessors; see the module docs for what every `View` satisfies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    number: ViewNumber,
    mode: Mode,
    f: usize,
    members: Vec<Member>,
}

/// One membership change: what a reconfiguration request will carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Add a new replica, with an id and key no replica has ever had.
    Add(Member),
    /// Remove a member.
    Remove {
        /// The member to remove.
        id: ReplicaId,
    },
    /// Change the number of faults tolerated.
    SetF {
        /// The new f.
        f: usize,
    },
}

/// The ids and keys of every replica removed so far: never given to a new member. The caller
/// records a removed member with [`Retired::retire`] when it adopts the view that removed it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retired {
    ids: BTreeSet<ReplicaId>,
    keys: BTreeSet<PublicKey>,
}

impl Retired {
    /// Nothing retired yet (view 0).
    pub fn new() -> Retired {
        Retired::default()
    }

    /// Records a removed member's id and key.
    pub fn retire(&mut self, member: &Member) {
        self.ids.insert(member.id);
        self.keys.insert(member.public_key);
    }

    /// Whether `id` belonged to a removed replica.
    pub fn has_id(&self, id: ReplicaId) -> bool {
        self.ids.contains(&id)
    }

    /// Whether `key` belonged to a removed replica.
    pub fn has_key(&self, key: &PublicKey) -> bool {
        self.keys.contains(key)
    }
}

/// Why a proposed change was refused. Each message says what is wrong and what the operator
/// can do; the view is left as it was.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReconfigRefusal {
    /// Removing `id` would leave fewer replicas than the mode needs for f.
    #[error(
        "removing replica {id} leaves {}, and {} with f = {f} needs at least {needed}; add a \
         replica first or lower f",
        replicas(*n),
        upper(*mode)
    )]
    RemoveBelowBound {
        /// The member to remove.
        id: ReplicaId,
        /// The mode.
        mode: Mode,
        /// The members left.
        n: usize,
        /// The view's f.
        f: usize,
        /// The fewest members f needs: BFT 3f+1, CFT 2f+1.
        needed: usize,
    },
    /// The requested f needs more replicas than the view has.
    #[error(
        "{} with f = {f} needs at least {needed} replicas, and the view has {n}; add {} first \
         (one change at a time) or set f to at most {}",
        upper(*mode),
        replicas(needed - n),
        max_f(*mode, *n)
    )]
    FAboveBound {
        /// The mode.
        mode: Mode,
        /// The view's members.
        n: usize,
        /// The f asked for.
        f: usize,
        /// The fewest members that f needs: BFT 3f+1, CFT 2f+1.
        needed: usize,
    },
    /// The requested f is the view's f already.
    #[error("f is already {f}; there is nothing to change")]
    Unchanged {
        /// The view's f.
        f: usize,
    },
    /// The member to remove is the only one.
    #[error(
        "replica {id} is the view's only member, and a view needs at least one; add another \
         replica first, then remove this one"
    )]
    LastMember {
        /// The member to remove.
        id: ReplicaId,
    },
    /// The id to remove is not a member of the view.
    #[error(
        "replica {id} is not a member of view {view} (its members are {}); remove one of those",
        ids(members)
    )]
    NotMember {
        /// The id asked for.
        id: ReplicaId,
        /// The view.
        view: ViewNumber,
        /// The view's members' ids, ascending.
        members: Vec<ReplicaId>,
    },
    /// The id to add is a member's.
    #[error(
        "replica {id} is already a member; give the new replica an id no replica has ever had \
         (ids are never reused)"
    )]
    AlreadyMember {
        /// The id asked for.
        id: ReplicaId,
    },
    /// The id to add was a removed replica's.
    #[error(
        "id {id} belonged to a removed replica, and ids are never reused; give the new replica \
         an id no replica has ever had"
    )]
    IdRetired {
        /// The id asked for.
        id: ReplicaId,
    },
    /// The key to add is a member's.
    #[error(
        "the new replica's public key is replica {id}'s; each replica needs its own: make one \
         with `smr key --out FILE` on the new replica's machine"
    )]
    KeyOfMember {
        /// The member that has this key.
        id: ReplicaId,
    },
    /// The key to add was a removed replica's.
    #[error(
        "public key {key} belonged to a removed replica, and keys are never reused; make a \
         fresh one with `smr key --out FILE` on the new replica's machine"
    )]
    KeyRetired {
        /// The key asked for.
        key: PublicKey,
    },
    /// The key to add is not a valid ed25519 public key (weak, not on the curve, ...), as
    /// `cluster.toml` refuses it: no signature under it would count.
    #[error(
        "public key {key} cannot identify a replica: {reason}; make a fresh one with `smr key \
         --out FILE` on the new replica's machine"
    )]
    BadKey {
        /// The key asked for.
        key: PublicKey,
        /// What is wrong with it.
        reason: KeyError,
    },
    /// The address to add is not `ip:port` in the form `cluster.toml` writes.
    #[error(
        "address {address:?} is not ip:port as cluster.toml writes it (e.g. \"127.0.0.1:7000\" \
         or \"[::1]:7000\"); give the address the new replica listens on"
    )]
    BadAddress {
        /// The address asked for.
        address: String,
    },
    /// The address to add is a member's.
    #[error(
        "address {address} is replica {id}'s; give the new replica an address of its own (to \
         move a replica, remove it first, then add its replacement)"
    )]
    AddressOfMember {
        /// The address asked for.
        address: String,
        /// The member at that address.
        id: ReplicaId,
    },
    /// The view is full.
    #[error(
        "the view has {max} members, the most a view may hold; remove a replica before \
         adding one"
    )]
    TooManyMembers {
        /// [`MAX_MEMBERS`].
        max: usize,
    },
}

fn upper(mode: Mode) -> &'static str {
    match mode {
        Mode::Bft => "BFT",
        Mode::Cft => "CFT",
    }
}

fn replicas(n: usize) -> String {
    if n == 1 {
        "1 replica".to_string()
    } else {
        format!("{n} replicas")
    }
}

fn ids(members: &[ReplicaId]) -> String {
    members
        .iter()
        .map(ReplicaId::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The most faults `n` replicas tolerate in `mode`.
fn max_f(mode: Mode, n: usize) -> usize {
    match mode {
        Mode::Bft => n.saturating_sub(1) / 3,
        Mode::Cft => n.saturating_sub(1) / 2,
    }
}

/// `address` in the canonical form `cluster.toml` writes, or `None`.
fn canonical_address(address: &str) -> Option<SocketAddr> {
    let parsed: SocketAddr = address.parse().ok()?;
    (parsed.to_string() == address).then_some(parsed)
}

impl View {
    /// View 0: the membership, mode and f of a loaded `cluster.toml`.
    ///
    /// # Panics
    /// If `config` breaks what [`ClusterConfig::from_toml_str`] checks (more than
    /// [`MAX_MEMBERS`] replicas, an n that differs from its quorums'): a config that did not
    /// come from a file.
    pub fn genesis(config: &ClusterConfig) -> View {
        assert!(
            config.replicas.len() == config.quorums.n() && config.replicas.len() <= MAX_MEMBERS,
            "a loaded config has n = quorums.n() <= MAX_MEMBERS replicas; this one has {} (n = {})",
            config.replicas.len(),
            config.quorums.n()
        );
        let members = config
            .replicas
            .iter()
            .map(|r| Member {
                id: r.id,
                public_key: r.public_key,
                address: r.address.to_string(),
            })
            .collect();
        View {
            number: ViewNumber::GENESIS,
            mode: config.mode(),
            f: config.quorums.f(),
            members,
        }
    }

    /// The view's number.
    pub fn number(&self) -> ViewNumber {
        self.number
    }

    /// BFT or CFT; no change alters it.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The number of faults tolerated.
    pub fn f(&self) -> usize {
        self.f
    }

    /// The members, in ascending id order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The member with this id, if it is one.
    pub fn member(&self, id: ReplicaId) -> Option<&Member> {
        self.members
            .binary_search_by_key(&id, |m| m.id)
            .ok()
            .map(|at| &self.members[at])
    }

    /// The thresholds of this view: mode, n = the number of members, f.
    pub fn quorums(&self) -> Quorums {
        Quorums::new(self.mode, self.members.len(), self.f)
            .expect("every View holds an (n, f) its mode allows: genesis and check ensure it")
    }

    /// Judges `change` against this view and the ids and keys `retired` holds, and returns
    /// the view it makes: number + 1, the change applied. Deterministic, no I/O.
    ///
    /// # Errors
    /// The first rule the change breaks, as a [`ReconfigRefusal`]. Add: an id that is a
    /// member's ([`ReconfigRefusal::AlreadyMember`]) or retired ([`ReconfigRefusal::IdRetired`]),
    /// a key that is a member's or retired, an address not in `cluster.toml`'s form or a
    /// member's, a full view. Remove: an id that is not a member, the only member, or leaving
    /// fewer members than f needs ([`ReconfigRefusal::RemoveBelowBound`]). Set f: the same f,
    /// or one that needs more members than the view has ([`ReconfigRefusal::FAboveBound`]).
    /// The bounds are [`Quorums::new`]'s: a change that breaks none of the other rules is
    /// accepted exactly when `Quorums::new` accepts the (mode, n, f) of the view it makes, so
    /// f = 0 is allowed wherever `Quorums` allows it.
    pub fn check(&self, change: &Change, retired: &Retired) -> Result<View, ReconfigRefusal> {
        let mut members = self.members.clone();
        let mut f = self.f;
        match change {
            Change::Add(new) => {
                let at = match members.binary_search_by_key(&new.id, |m| m.id) {
                    Ok(_) => return Err(ReconfigRefusal::AlreadyMember { id: new.id }),
                    Err(at) => at,
                };
                if retired.has_id(new.id) {
                    return Err(ReconfigRefusal::IdRetired { id: new.id });
                }
                if let Some(owner) = members.iter().find(|m| m.public_key == new.public_key) {
                    return Err(ReconfigRefusal::KeyOfMember { id: owner.id });
                }
                if retired.has_key(&new.public_key) {
                    return Err(ReconfigRefusal::KeyRetired {
                        key: new.public_key,
                    });
                }
                if let Err(reason) = new.public_key.check_ed25519() {
                    return Err(ReconfigRefusal::BadKey {
                        key: new.public_key,
                        reason,
                    });
                }
                if canonical_address(&new.address).is_none() {
                    return Err(ReconfigRefusal::BadAddress {
                        address: new.address.clone(),
                    });
                }
                if let Some(owner) = members.iter().find(|m| m.address == new.address) {
                    return Err(ReconfigRefusal::AddressOfMember {
                        address: new.address.clone(),
                        id: owner.id,
                    });
                }
                if members.len() >= MAX_MEMBERS {
                    return Err(ReconfigRefusal::TooManyMembers { max: MAX_MEMBERS });
                }
                members.insert(at, new.clone());
            }
            Change::Remove { id } => {
                let Ok(at) = members.binary_search_by_key(id, |m| m.id) else {
                    return Err(ReconfigRefusal::NotMember {
                        id: *id,
                        view: self.number,
                        members: members.iter().map(|m| m.id).collect(),
                    });
                };
                if members.len() == 1 {
                    return Err(ReconfigRefusal::LastMember { id: *id });
                }
                members.remove(at);
            }
            Change::SetF { f: wanted } => {
                if *wanted == self.f {
                    return Err(ReconfigRefusal::Unchanged { f: self.f });
                }
                f = *wanted;
            }
        }
        match Quorums::new(self.mode, members.len(), f) {
            Ok(_) => {}
            Err(QuorumError::TooFewReplicas { mode, n, f, needed }) => {
                return Err(match change {
                    Change::Remove { id } => ReconfigRefusal::RemoveBelowBound {
                        id: *id,
                        mode,
                        n,
                        f,
                        needed,
                    },
                    Change::SetF { .. } => ReconfigRefusal::FAboveBound { mode, n, f, needed },
                    Change::Add(_) => {
                        unreachable!("adding a member to a view with a valid (n, f) keeps it valid")
                    }
                })
            }
            Err(e) => unreachable!(
                "1 <= n <= MAX_MEMBERS < smr_modes::MAX_REPLICAS here, so only the bound can fail: {e}"
            ),
        }
        let number = ViewNumber(
            self.number
                .0
                .checked_add(1)
                .expect("view numbers grow by one per decided change: u64::MAX is never reached"),
        );
        Ok(View {
            number,
            mode: self.mode,
            f,
            members,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proptest::prelude::*;
    use smr_crypto::IdentityKey;

    use super::*;

    /// Replica `id`'s key and address: distinct for distinct ids.
    fn member(id: ReplicaId) -> Member {
        let mut seed = [0xad; 32];
        seed[..4].copy_from_slice(&id.to_le_bytes());
        Member {
            id,
            public_key: IdentityKey::from_seed(seed).public_key(),
            address: format!("127.0.0.1:{}", 7000 + id),
        }
    }

    /// View `number` with members `0..n`; (mode, n, f) must be valid.
    fn view(number: u64, mode: Mode, n: u32, f: usize) -> View {
        let view = View {
            number: ViewNumber(number),
            mode,
            f,
            members: (0..n).map(member).collect(),
        };
        view.quorums();
        view
    }

    #[test]
    fn a_weak_key_is_refused_as_cluster_toml_refuses_it() {
        // Small order (the identity point): cluster.toml refuses it; so must a change.
        let mut weak = [0u8; 32];
        weak[0] = 1;
        let change = Change::Add(Member {
            public_key: PublicKey(weak),
            ..member(9)
        });
        let refusal = bft4().check(&change, &Retired::new()).unwrap_err();
        assert_eq!(
            refusal,
            ReconfigRefusal::BadKey {
                key: PublicKey(weak),
                reason: KeyError::WeakKey,
            }
        );
        assert_eq!(
            refusal.to_string(),
            format!(
                "public key {} cannot identify a replica: {}; make a fresh one with `smr key \
                 --out FILE` on the new replica's machine",
                PublicKey(weak).to_hex(),
                KeyError::WeakKey
            )
        );
    }

    fn bft4() -> View {
        view(7, Mode::Bft, 4, 1)
    }

    fn cft3() -> View {
        view(7, Mode::Cft, 3, 1)
    }

    #[test]
    fn genesis_is_cluster_toml_as_view_0() {
        let text = format!(
            "mode = \"cft\"\nf = 1\nclients = \"any\"\n{}",
            (0..3)
                .map(|i| format!(
                    "[[replicas]]\nid = {i}\naddress = \"{}\"\npublic_key = \"{}\"\n",
                    member(i).address,
                    member(i).public_key.to_hex()
                ))
                .collect::<String>()
        );
        let config = ClusterConfig::from_toml_str(&text, Path::new("/tmp")).unwrap();
        let genesis = View::genesis(&config);
        assert_eq!(genesis, view(0, Mode::Cft, 3, 1));
        assert_eq!(genesis.quorums(), config.quorums);
        assert_eq!(genesis.member(2), Some(&member(2)));
        assert_eq!(genesis.member(3), None);
    }

    #[test]
    fn accepted_changes_make_the_next_view() {
        let retired = Retired::new();
        let next = bft4().check(&Change::Add(member(9)), &retired).unwrap();
        assert_eq!(next.number(), ViewNumber(8));
        assert_eq!(
            next.members(),
            &[member(0), member(1), member(2), member(3), member(9)]
        );
        assert_eq!(next.quorums(), Quorums::new(Mode::Bft, 5, 1).unwrap());
        // Added in id order, not at the end.
        let gap = next.check(&Change::Remove { id: 1 }, &retired).unwrap();
        let filled = gap.check(&Change::Add(member(5)), &retired).unwrap();
        assert_eq!(
            filled.members().iter().map(|m| m.id).collect::<Vec<_>>(),
            [0, 2, 3, 5, 9]
        );
        assert_eq!(filled.number(), ViewNumber(10));
        // f = 0 is allowed wherever Quorums allows it; the members are unchanged.
        let f0 = bft4().check(&Change::SetF { f: 0 }, &retired).unwrap();
        assert_eq!(f0.quorums(), Quorums::new(Mode::Bft, 4, 0).unwrap());
        assert_eq!(f0.members(), bft4().members());
        let one = view(0, Mode::Cft, 2, 0)
            .check(&Change::Remove { id: 0 }, &retired)
            .unwrap();
        assert_eq!(one.members(), &[member(1)]);
        // Raising f once there are members enough.
        let seven = view(0, Mode::Bft, 7, 1);
        let f2 = seven.check(&Change::SetF { f: 2 }, &retired).unwrap();
        assert_eq!(f2.quorums(), Quorums::new(Mode::Bft, 7, 2).unwrap());
        // IPv6, in cluster.toml's form.
        let v6 = Member {
            address: "[::1]:7000".to_string(),
            ..member(4)
        };
        let added = bft4().check(&Change::Add(v6.clone()), &retired).unwrap();
        assert_eq!(added.member(4), Some(&v6));
    }

    /// Every refusal, with its exact value and its exact message.
    #[test]
    fn every_refusal_names_the_problem_and_the_fix() {
        let mut retired = Retired::new();
        retired.retire(&member(20));
        let full = View {
            number: ViewNumber(3),
            mode: Mode::Cft,
            f: 1,
            members: (0..MAX_MEMBERS as u32).map(member).collect(),
        };
        let cases: Vec<(View, Change, ReconfigRefusal, String)> = vec![
            (
                bft4(),
                Change::Remove { id: 3 },
                ReconfigRefusal::RemoveBelowBound {
                    id: 3,
                    mode: Mode::Bft,
                    n: 3,
                    f: 1,
                    needed: 4,
                },
                "removing replica 3 leaves 3 replicas, and BFT with f = 1 needs at least 4; add \
                 a replica first or lower f"
                    .into(),
            ),
            (
                cft3(),
                Change::Remove { id: 0 },
                ReconfigRefusal::RemoveBelowBound {
                    id: 0,
                    mode: Mode::Cft,
                    n: 2,
                    f: 1,
                    needed: 3,
                },
                "removing replica 0 leaves 2 replicas, and CFT with f = 1 needs at least 3; add \
                 a replica first or lower f"
                    .into(),
            ),
            (
                bft4(),
                Change::SetF { f: 2 },
                ReconfigRefusal::FAboveBound {
                    mode: Mode::Bft,
                    n: 4,
                    f: 2,
                    needed: 7,
                },
                "BFT with f = 2 needs at least 7 replicas, and the view has 4; add 3 replicas \
                 first (one change at a time) or set f to at most 1"
                    .into(),
            ),
            (
                view(0, Mode::Cft, 4, 1),
                Change::SetF { f: 2 },
                ReconfigRefusal::FAboveBound {
                    mode: Mode::Cft,
                    n: 4,
                    f: 2,
                    needed: 5,
                },
                "CFT with f = 2 needs at least 5 replicas, and the view has 4; add 1 replica \
                 first (one change at a time) or set f to at most 1"
                    .into(),
            ),
            (
                bft4(),
                Change::SetF { f: 1 },
                ReconfigRefusal::Unchanged { f: 1 },
                "f is already 1; there is nothing to change".into(),
            ),
            (
                view(0, Mode::Bft, 1, 0),
                Change::Remove { id: 0 },
                ReconfigRefusal::LastMember { id: 0 },
                "replica 0 is the view's only member, and a view needs at least one; add another \
                 replica first, then remove this one"
                    .into(),
            ),
            (
                bft4(),
                Change::Remove { id: 4 },
                ReconfigRefusal::NotMember {
                    id: 4,
                    view: ViewNumber(7),
                    members: vec![0, 1, 2, 3],
                },
                "replica 4 is not a member of view 7 (its members are 0, 1, 2, 3); remove one of \
                 those"
                    .into(),
            ),
            (
                bft4(),
                Change::Add(Member { id: 2, ..member(9) }),
                ReconfigRefusal::AlreadyMember { id: 2 },
                "replica 2 is already a member; give the new replica an id no replica has ever \
                 had (ids are never reused)"
                    .into(),
            ),
            (
                bft4(),
                Change::Add(Member {
                    id: 20,
                    ..member(9)
                }),
                ReconfigRefusal::IdRetired { id: 20 },
                "id 20 belonged to a removed replica, and ids are never reused; give the new \
                 replica an id no replica has ever had"
                    .into(),
            ),
            (
                bft4(),
                Change::Add(Member {
                    public_key: member(1).public_key,
                    ..member(9)
                }),
                ReconfigRefusal::KeyOfMember { id: 1 },
                "the new replica's public key is replica 1's; each replica needs its own: make \
                 one with `smr key --out FILE` on the new replica's machine"
                    .into(),
            ),
            (
                bft4(),
                Change::Add(Member {
                    public_key: member(20).public_key,
                    ..member(9)
                }),
                ReconfigRefusal::KeyRetired {
                    key: member(20).public_key,
                },
                format!(
                    "public key {} belonged to a removed replica, and keys are never reused; make \
                     a fresh one with `smr key --out FILE` on the new replica's machine",
                    member(20).public_key.to_hex()
                ),
            ),
            (
                bft4(),
                Change::Add(Member {
                    address: "127.0.0.1:07009".into(),
                    ..member(9)
                }),
                ReconfigRefusal::BadAddress {
                    address: "127.0.0.1:07009".into(),
                },
                "address \"127.0.0.1:07009\" is not ip:port as cluster.toml writes it (e.g. \
                 \"127.0.0.1:7000\" or \"[::1]:7000\"); give the address the new replica listens \
                 on"
                .into(),
            ),
            (
                bft4(),
                Change::Add(Member {
                    address: "replica-9.example:7000".into(),
                    ..member(9)
                }),
                ReconfigRefusal::BadAddress {
                    address: "replica-9.example:7000".into(),
                },
                "address \"replica-9.example:7000\" is not ip:port as cluster.toml writes it \
                 (e.g. \"127.0.0.1:7000\" or \"[::1]:7000\"); give the address the new replica \
                 listens on"
                    .into(),
            ),
            (
                bft4(),
                Change::Add(Member {
                    address: member(3).address,
                    ..member(9)
                }),
                ReconfigRefusal::AddressOfMember {
                    address: "127.0.0.1:7003".into(),
                    id: 3,
                },
                "address 127.0.0.1:7003 is replica 3's; give the new replica an address of its \
                 own (to move a replica, remove it first, then add its replacement)"
                    .into(),
            ),
            (
                full.clone(),
                Change::Add(Member {
                    id: 5000,
                    public_key: member(5000).public_key,
                    address: "10.0.0.1:7000".into(),
                }),
                ReconfigRefusal::TooManyMembers { max: MAX_MEMBERS },
                "the view has 1024 members, the most a view may hold; remove a replica before \
                 adding one"
                    .into(),
            ),
        ];
        for (view, change, refusal, message) in cases {
            assert_eq!(
                view.check(&change, &retired),
                Err(refusal.clone()),
                "{change:?}"
            );
            assert_eq!(refusal.to_string(), message);
        }
        // The largest view still takes a removal, and then an addition.
        let fewer = full.check(&Change::Remove { id: 5 }, &retired).unwrap();
        assert_eq!(fewer.members().len(), MAX_MEMBERS - 1);
        let again = fewer
            .check(
                &Change::Add(Member {
                    id: 5000,
                    public_key: member(5000).public_key,
                    address: "10.0.0.1:7000".into(),
                }),
                &retired,
            )
            .unwrap();
        assert_eq!(again.members().len(), MAX_MEMBERS);
    }

    /// A change the rules about ids, keys and addresses accept; the bound alone decides.
    #[derive(Clone, Debug)]
    enum Step {
        Add,
        /// Removes the member at this index (modulo n).
        Remove(usize),
        SetF(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => Just(Step::Add),
            3 => any::<usize>().prop_map(Step::Remove),
            2 => (0usize..12).prop_map(Step::SetF),
        ]
    }

    proptest! {
        /// From any valid view, over any sequence of changes: every view `check` returns has
        /// an (n, f) that `Quorums::new` accepts for its mode, its members ascending and
        /// distinct; and `check` refuses a change exactly when `Quorums::new` refuses the
        /// (mode, n, f) it would make, with the refusal that names those numbers.
        #[test]
        fn check_accepts_exactly_the_views_quorums_accepts(
            bft in any::<bool>(),
            n in 1u32..16,
            f_seed in 0usize..8,
            steps in proptest::collection::vec(step(), 1..60),
        ) {
            let mode = if bft { Mode::Bft } else { Mode::Cft };
            let f = f_seed.min(max_f(mode, n as usize));
            let mut current = view(0, mode, n, f);
            let mut retired = Retired::new();
            let mut next_id = n;
            for step in steps {
                let n = current.members().len();
                let (change, after_n, after_f) = match step {
                    Step::Add => (Change::Add(member(next_id)), n + 1, current.f()),
                    Step::Remove(i) => {
                        let id = current.members()[i % n].id;
                        (Change::Remove { id }, n - 1, current.f())
                    }
                    Step::SetF(f) if f == current.f() => continue,
                    Step::SetF(f) => (Change::SetF { f }, n, f),
                };
                let expected = Quorums::new(mode, after_n, after_f);
                match (current.check(&change, &retired), expected) {
                    (Ok(next), Ok(quorums)) => {
                        prop_assert_eq!(next.quorums(), quorums);
                        prop_assert_eq!(next.number().0, current.number().0 + 1);
                        prop_assert!(next.members().windows(2).all(|w| w[0].id < w[1].id));
                        let keys: BTreeSet<_> = next.members().iter().map(|m| m.public_key).collect();
                        prop_assert_eq!(keys.len(), next.members().len());
                        if let Change::Remove { id } = change {
                            retired.retire(current.member(id).unwrap());
                        }
                        if let Change::Add(_) = change {
                            next_id += 1;
                        }
                        current = next;
                    }
                    (Err(ReconfigRefusal::LastMember { .. }), Err(QuorumError::NoReplicas)) => {}
                    (
                        Err(ReconfigRefusal::RemoveBelowBound { n, f, needed, .. }),
                        Err(QuorumError::TooFewReplicas { n: qn, f: qf, needed: qneeded, .. }),
                    )
                    | (
                        Err(ReconfigRefusal::FAboveBound { n, f, needed, .. }),
                        Err(QuorumError::TooFewReplicas { n: qn, f: qf, needed: qneeded, .. }),
                    ) => {
                        prop_assert_eq!((n, f, needed), (qn, qf, qneeded));
                    }
                    (got, expected) => {
                        prop_assert!(false, "{:?} on {:?}: check {:?}, Quorums::new {:?}", change, current, got, expected);
                    }
                }
            }
        }
    }
}
