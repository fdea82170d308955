//! Protocol messages: what clients and replicas send each other.
//!
//! Votes (WRITE, ACCEPT) carry only the 32-byte blake3 digest of the batch; PROPOSE carries the
//! batch itself. Everything a replica may later have to show a third party (proposals, votes) is
//! a [`Signed`] value whose signature covers the canonical encoding of its body, so that
//! certificates made of them can be checked by anyone.

use serde::{Deserialize, Serialize};
use smr_crypto::{canonical_message, Digest, PublicKey, Signature, Signer};

use crate::codec;
pub use crate::network::ReplicaId;

/// Consensus instance id. Instances are numbered from 1; 0 means "none yet".
///
/// A newtype, so that a cid cannot be passed where a regency or a count is expected. It
/// encodes exactly as the `u64` it wraps (`serde(transparent)`), on the wire and on disk.
///
/// The arithmetic is deliberately small: a cid plus a count is a cid (`cid + count`, which
/// panics on overflow and is for the replica's own counters, and [`Cid::saturating_add`] for
/// anything a peer supplied), and the distance between two cids is a count
/// ([`Cid::checked_distance_from`], [`Cid::saturating_distance_from`]). There is no
/// `Cid + Cid`, no conversion from `u64` and no `Deref`: `Cid(n)` and `cid.0` are the only
/// ways between the two.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Cid(pub u64);

impl Cid {
    /// "No instance yet": the cid before the first one.
    pub const ZERO: Cid = Cid(0);
    /// The first consensus instance.
    pub const FIRST: Cid = Cid(1);
    /// The highest cid; a peer may name it, no run reaches it.
    pub const MAX: Cid = Cid(u64::MAX);

    /// The instance after this one.
    ///
    /// # Panics
    /// At [`Cid::MAX`]. Only for counters this replica advances one instance at a time; a cid
    /// a peer supplied takes [`Cid::saturating_add`].
    pub fn next(self) -> Cid {
        self + 1
    }

    /// `count` instances later, or `None` past [`Cid::MAX`].
    pub fn checked_add(self, count: u64) -> Option<Cid> {
        self.0.checked_add(count).map(Cid)
    }

    /// `count` instances later, stopping at [`Cid::MAX`]: safe on a cid from a peer.
    pub fn saturating_add(self, count: u64) -> Cid {
        Cid(self.0.saturating_add(count))
    }

    /// How many instances `self` is past `earlier`, or `None` if it is before it.
    pub fn checked_distance_from(self, earlier: Cid) -> Option<u64> {
        self.0.checked_sub(earlier.0)
    }

    /// How many instances `self` is past `earlier`; 0 if it is not past it.
    pub fn saturating_distance_from(self, earlier: Cid) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// Whether this cid is a multiple of `period` (a checkpoint cid). `period` 0 matches only
    /// cid 0, as [`u64::is_multiple_of`] does.
    pub fn is_multiple_of(self, period: u64) -> bool {
        self.0.is_multiple_of(period)
    }
}

impl std::ops::Add<u64> for Cid {
    type Output = Cid;

    /// `count` instances later.
    ///
    /// # Panics
    /// On overflow, in every build: only for the replica's own counters; a cid a peer supplied
    /// takes [`Cid::saturating_add`].
    fn add(self, count: u64) -> Cid {
        self.checked_add(count)
            .unwrap_or_else(|| panic!("cid {self} + {count} overflows"))
    }
}

impl std::fmt::Display for Cid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

/// Regency (epoch) number; the leader of regency r is replica r mod n
/// ([`Quorums::leader_of`](smr_modes::Quorums::leader_of)`(regency.0)`).
///
/// A newtype like [`Cid`], encoded exactly as the `u64` it wraps. Regencies only ever move
/// forward, so the arithmetic is [`Regency::next`] and [`Regency::saturating_add`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Regency(pub u64);

impl Regency {
    /// The regency every cluster starts in.
    pub const ZERO: Regency = Regency(0);
    /// The highest regency; a peer may name it, no run reaches it.
    pub const MAX: Regency = Regency(u64::MAX);

    /// The regency after this one.
    ///
    /// # Panics
    /// At [`Regency::MAX`]. A regency that peers can push up (the current one, a STOP's)
    /// takes [`Regency::saturating_add`]`(1)`.
    pub fn next(self) -> Regency {
        Regency(
            self.0
                .checked_add(1)
                .unwrap_or_else(|| panic!("regency {self} has no successor")),
        )
    }

    /// `count` regencies later, stopping at [`Regency::MAX`]: safe on a regency from a peer.
    pub fn saturating_add(self, count: u64) -> Regency {
        Regency(self.0.saturating_add(count))
    }
}

impl std::fmt::Display for Regency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

/// A client is identified by its public key, so that a request names the key that signed it.
pub type ClientId = PublicKey;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RequestKind {
    /// Goes through consensus and executes in the total order.
    Ordered,
    /// A read that runs on each replica without consensus.
    Unordered,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestBody {
    pub client: ClientId,
    pub seq: u64,
    pub kind: RequestKind,
    #[serde(with = "serde_bytes")]
    pub op: Vec<u8>,
}

/// A client request. In BFT mode it carries the client's signature, so that a Byzantine leader
/// cannot invent requests.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Request {
    pub body: RequestBody,
    pub signature: Option<Signature>,
}

const REQUEST_DOMAIN: &str = "smr/request/v1";

impl Request {
    pub fn new(body: RequestBody, signer: Option<&dyn Signer>) -> Request {
        let signature = signer.map(|s| s.sign(&Self::signing_bytes_of(&body)));
        Request { body, signature }
    }

    pub fn signing_bytes_of(body: &RequestBody) -> Vec<u8> {
        canonical_message(REQUEST_DOMAIN, &codec::encode(body))
    }

    pub fn id(&self) -> RequestId {
        RequestId {
            client: self.body.client,
            seq: self.body.seq,
        }
    }

    /// Bytes this request contributes to a batch, used for batch limits.
    pub fn size_bytes(&self) -> usize {
        // client key + seq + kind + op length prefix + signature
        32 + 8 + 4 + 8 + 65 + self.body.op.len()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId {
    pub client: ClientId,
    pub seq: u64,
}

/// An ordered batch of requests; consensus runs on `digest()`. An empty batch is a no-op.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub requests: Vec<Request>,
}

impl Batch {
    pub fn digest(&self) -> Digest {
        smr_crypto::digest(&codec::encode(self))
    }

    pub fn size_bytes(&self) -> usize {
        self.requests.iter().map(Request::size_bytes).sum()
    }
}

/// A body that can be signed by a replica. The domain keeps a signature over one message type
/// from being replayed as another.
pub trait ReplicaSigned: Serialize {
    const DOMAIN: &'static str;
    /// The replica that must have signed this body.
    fn signer(&self) -> ReplicaId;
}

/// A replica-signed value. In CFT mode the signature is absent and channel authentication
/// vouches for the sender.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed<T> {
    pub body: T,
    pub signature: Option<Signature>,
}

impl<T: ReplicaSigned> Signed<T> {
    pub fn new(body: T, signer: Option<&dyn Signer>) -> Signed<T> {
        let signature = signer.map(|s| s.sign(&Self::signing_bytes_of(&body)));
        Signed { body, signature }
    }

    pub fn signing_bytes_of(body: &T) -> Vec<u8> {
        canonical_message(T::DOMAIN, &codec::encode(body))
    }

    pub fn signing_bytes(&self) -> Vec<u8> {
        Self::signing_bytes_of(&self.body)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Propose {
    pub leader: ReplicaId,
    pub cid: Cid,
    pub regency: Regency,
    pub batch: Batch,
}

impl ReplicaSigned for Propose {
    const DOMAIN: &'static str = "smr/propose/v1";
    fn signer(&self) -> ReplicaId {
        self.leader
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VoteKind {
    Write,
    Accept,
}

/// A WRITE or ACCEPT for `digest` in instance `cid` at regency `regency`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Vote {
    pub kind: VoteKind,
    pub replica: ReplicaId,
    pub cid: Cid,
    pub regency: Regency,
    pub digest: Digest,
}

impl ReplicaSigned for Vote {
    const DOMAIN: &'static str = "smr/vote/v1";
    fn signer(&self) -> ReplicaId {
        self.replica
    }
}

/// A decided batch with its certificate: Q signed ACCEPTs for the batch's digest, all from one
/// regency. Anyone holding the replicas' keys can check it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub cid: Cid,
    pub batch: Batch,
    pub certificate: Vec<Signed<Vote>>,
}

/// Proof that a value was prepared in `epoch` for `cid`: in BFT the Q signed WRITEs that made
/// this replica ACCEPT; in CFT (Paxos phase 1) just the accepted value, vouched for by the
/// authenticated channel. It carries the batch so that a new leader can re-propose it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedProof {
    pub cid: Cid,
    pub epoch: Regency,
    pub batch: Batch,
    pub writes: Vec<Signed<Vote>>,
}

/// Proof that `cid` was decided with `digest`: Q signed ACCEPTs (empty in CFT).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionProof {
    pub cid: Cid,
    pub digest: Digest,
    pub certificate: Vec<Signed<Vote>>,
}

/// "The leader of my regency failed me; let us move to `regency`." Carries requests that timed
/// out, so that the next leader has them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stop {
    pub replica: ReplicaId,
    /// The regency the sender asks for.
    pub regency: Regency,
    /// The regency the sender is in. A STOP from a replica behind the receiver is stale: it
    /// comes from a replica that missed a leader change (for instance one that was cut off), and
    /// must not drag the others into another change.
    pub from_regency: Regency,
    pub pending: Vec<Request>,
}

impl ReplicaSigned for Stop {
    const DOMAIN: &'static str = "smr/stop/v1";
    fn signer(&self) -> ReplicaId {
        self.replica
    }
}

/// What a replica tells the leader of a newly installed regency: how far it has decided, with
/// proof, and its highest prepared value for every open instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopData {
    pub replica: ReplicaId,
    pub regency: Regency,
    pub last_decided: Option<DecisionProof>,
    pub prepared: Vec<PreparedProof>,
}

impl ReplicaSigned for StopData {
    const DOMAIN: &'static str = "smr/stopdata/v1";
    fn signer(&self) -> ReplicaId {
        self.replica
    }
}

/// The new leader's SYNC: the n-f STOPDATA it collected. The values for the open instances are a
/// deterministic function of these proofs ([`crate::sync::choose`]), so every replica re-derives
/// them and a leader cannot pick a value its proofs do not support.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sync {
    pub leader: ReplicaId,
    pub regency: Regency,
    pub proofs: Vec<Signed<StopData>>,
}

impl ReplicaSigned for Sync {
    const DOMAIN: &'static str = "smr/sync/v1";
    fn signer(&self) -> ReplicaId {
        self.leader
    }
}

/// A replica's answer to a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub replica: ReplicaId,
    pub client: ClientId,
    pub seq: u64,
    pub regency: Regency,
    #[serde(with = "serde_bytes")]
    pub result: Vec<u8>,
}

/// Everything that travels between clients and replicas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Client to replicas.
    Request(Request),
    /// Replica to client.
    Reply(Reply),
    Propose(Signed<Propose>),
    Write(Signed<Vote>),
    Accept(Signed<Vote>),
    /// Requests a follower has waited too long for, sent to the leader.
    Forward(Vec<Request>),
    /// "Send me the decisions from `from_cid` on": how a replica that is behind catches up.
    DecisionQuery {
        from_cid: Cid,
    },
    /// Certified decisions, answering a query or a peer seen to be behind.
    Decisions(Vec<Decision>),
    /// The leader's periodic "I am here, and decided up to this cid".
    Heartbeat {
        regency: Regency,
        last_decided: Cid,
    },
    Stop(Signed<Stop>),
    StopData(Signed<StopData>),
    Sync(Signed<Sync>),
    /// "Send me the SYNC that installed your regency": how a replica that missed a leader
    /// change catches up.
    SyncQuery,
    /// "I took a checkpoint at `cid`": a quorum of identical announcements makes it stable.
    CheckpointAnnounce {
        cid: Cid,
        digest: Digest,
    },
    /// "What is your latest checkpoint?": the start of a state transfer.
    StateQuery,
    /// A replica's latest checkpoint (cid 0 if none), and the highest cid it has executed or
    /// voted in. Also the answer to a `DecisionQuery` for decisions that were truncated away:
    /// a hint that state transfer is needed.
    StateInfo {
        /// Every checkpoint the replica can serve: its stable one and newer ones of its own.
        checkpoints: Vec<(Cid, Digest)>,
        voted_up_to: Cid,
    },
    /// "Send me the bytes of your checkpoint `cid` from `offset`."
    StateFetch {
        cid: Cid,
        offset: u64,
    },
    /// A bounded chunk of a checkpoint.
    StateChunk {
        cid: Cid,
        offset: u64,
        total_len: u64,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        /// On the chunk that completes the checkpoint: the proof that `cid` was decided,
        /// which the requester needs to report it in a later STOPDATA.
        decided: Option<DecisionProof>,
    },
    /// An operator's "how are you?", from a client connection.
    StatusQuery,
    /// The answer to a `StatusQuery`.
    Status(StatusReport),
}

/// What `smr status` prints for one replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub replica: ReplicaId,
    pub mode: String,
    pub regency: Regency,
    pub leader: ReplicaId,
    pub last_decided: Cid,
    pub last_checkpoint: Cid,
    /// Digest of the service state after executing `last_decided`.
    pub state_digest: Digest,
    pub pending_requests: u64,
    pub rejected_messages: u64,
    /// Decided batches held in memory (bounded by checkpoints).
    pub log_entries: u64,
    /// Consensus instances decided since the replica started (a benchmark divides the growth
    /// of `executed_requests` by the growth of this for the average batch size).
    pub decided_instances: u64,
    /// Requests executed since the replica started (duplicates skipped are not counted).
    pub executed_requests: u64,
}

impl Message {
    pub fn kind_name(&self) -> &'static str {
        match self {
            Message::Request(_) => "request",
            Message::Reply(_) => "reply",
            Message::Propose(_) => "propose",
            Message::Write(_) => "write",
            Message::Accept(_) => "accept",
            Message::Forward(_) => "forward",
            Message::DecisionQuery { .. } => "decision-query",
            Message::Decisions(_) => "decisions",
            Message::Heartbeat { .. } => "heartbeat",
            Message::Stop(_) => "stop",
            Message::StopData(_) => "stopdata",
            Message::Sync(_) => "sync",
            Message::SyncQuery => "sync-query",
            Message::CheckpointAnnounce { .. } => "checkpoint-announce",
            Message::StateQuery => "state-query",
            Message::StateInfo { .. } => "state-info",
            Message::StateFetch { .. } => "state-fetch",
            Message::StateChunk { .. } => "state-chunk",
            Message::StatusQuery => "status-query",
            Message::Status(_) => "status",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cid_arithmetic() {
        assert_eq!(Cid::ZERO.next(), Cid::FIRST);
        assert_eq!(Cid(5) + 3, Cid(8));
        assert_eq!(Cid(5).checked_add(3), Some(Cid(8)));
        assert_eq!(Cid::MAX.checked_add(1), None);
        assert_eq!(Cid(u64::MAX - 1).saturating_add(5), Cid::MAX);
        assert_eq!(Cid(9).checked_distance_from(Cid(4)), Some(5));
        assert_eq!(Cid(4).checked_distance_from(Cid(9)), None);
        assert_eq!(Cid(4).saturating_distance_from(Cid(9)), 0);
        assert_eq!(Cid(9).saturating_distance_from(Cid(9)), 0);
        assert!(Cid(2000).is_multiple_of(1000));
        assert!(!Cid(2001).is_multiple_of(1000));
        assert!(Cid::ZERO.is_multiple_of(7));
    }

    #[test]
    #[should_panic(expected = "overflows")]
    fn cid_next_panics_at_the_top_instead_of_wrapping() {
        let _ = Cid::MAX.next();
    }

    #[test]
    fn regency_arithmetic() {
        assert_eq!(Regency::ZERO.next(), Regency(1));
        assert_eq!(Regency(3).saturating_add(4), Regency(7));
        assert_eq!(Regency::MAX.saturating_add(1), Regency::MAX);
        assert!(Regency(2) > Regency(1));
    }

    #[test]
    #[should_panic(expected = "has no successor")]
    fn regency_next_panics_at_the_top_instead_of_wrapping() {
        let _ = Regency::MAX.next();
    }

    #[test]
    fn display_prints_the_bare_number_and_honours_the_format() {
        assert_eq!(Cid(42).to_string(), "42");
        assert_eq!(Regency(7).to_string(), "7");
        assert_eq!(format!("{:>4}|{:03}", Cid(5), Regency(9)), "   5|009");
    }
}
