//! Protocol messages: what clients and replicas send each other (docs/design.md §3.4–§3.11).
//!
//! Every frame carries one [`Message`], encoded by [`crate::codec`]; each variant's docs say who
//! sends it, to whom, when, and what the receiver does. [`crate::verify`] runs the stateless
//! checks (sender, sizes, signatures, certificates) before the engine sees a message; the
//! engine runs the stateful ones (regency, leader, cid window) and acts on it.
//!
//! Votes (WRITE, ACCEPT) carry only the 32-byte blake3 digest of the batch; PROPOSE carries the
//! batch itself. Everything a replica may later have to show a third party (PROPOSE, votes,
//! STOP, STOPDATA, SYNC) is a [`Signed`] value whose signature covers the canonical encoding of
//! its body, so that certificates made of them can be checked by anyone (§3.6). In CFT the
//! signatures are absent and the authenticated channel vouches for the sender.

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

/// How a request is served (docs/design.md §3.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RequestKind {
    /// Goes through consensus and executes in the total order.
    Ordered,
    /// A read that runs on each replica without consensus: each replica answers it from its
    /// current state ([`ServiceWork::Query`](crate::ServiceWork::Query)) and the client needs
    /// Q matching replies. Valid only sent directly by its client; inside a batch, a STOP or a
    /// forward it is refused as malformed.
    Unordered,
}

/// What a client signs: a request without its signature. [`Request::signing_bytes_of`] gives
/// the signed bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestBody {
    /// The client's public key: the key the request is signed with and the client its replies
    /// go to. A request that arrives directly must name the key of the connection it came on
    /// ([`Rejection::Impersonation`](crate::Rejection::Impersonation)), and the cluster's
    /// [`ClientPolicy`](crate::ClientPolicy) must admit the key.
    pub client: ClientId,
    /// The client's session: the number the replicated client table assigned when the
    /// client's open request executed, or [`OPEN_SESSION`] for that open request itself
    /// (docs/design.md §3.7, "Sessions"). Many processes may share one key, each in its own
    /// session. Exactly-once is kept per (client, session); the signature covers it.
    pub session: u64,
    /// The request's sequence number within its session, from 1; with `client` and `session`
    /// it identifies the request ([`RequestId`]). A retry reuses it, and replicas execute each
    /// (client, session, seq) at most once (docs/design.md §3.7). A seq
    /// `max_pending_per_client` or more below the session's highest executed one is stale and
    /// answered so ([`ReplyStatus::Stale`]), never executed. In an open request
    /// ([`OPEN_SESSION`]) it is the client's routing tag instead: a random number at or above
    /// [`SESSION_NUMBER_LIMIT`](crate::clients::SESSION_NUMBER_LIMIT) that the client's
    /// connections announce, so that the open's reply reaches the process that asked.
    pub seq: u64,
    /// Ordered, or an unordered read.
    pub kind: RequestKind,
    /// The operation, opaque to smr and handed as is to
    /// [`Service::execute`](crate::Service::execute) or [`Service::query`](crate::Service::query);
    /// at most `max_op_bytes` bytes.
    #[serde(with = "serde_bytes")]
    pub op: Vec<u8>,
}

impl RequestBody {
    /// Why this body can never be a valid request, whatever the state: an open request
    /// ([`OPEN_SESSION`]) must be ordered, carry no operation, and name a routing tag at or
    /// above [`SESSION_NUMBER_LIMIT`](crate::clients::SESSION_NUMBER_LIMIT) (so that its
    /// reply's route cannot be a session number); an ordered request in any other session
    /// must name a session below that limit, since no session is ever opened there.
    /// (Unordered reads may be sent under the routing tag: docs/design.md §3.7.) Checked
    /// wherever a request is verified, alone or inside a replica's message, so every correct
    /// replica refuses the same requests.
    pub fn shape_error(&self) -> Option<&'static str> {
        let limit = crate::clients::SESSION_NUMBER_LIMIT;
        if self.session == OPEN_SESSION {
            if self.kind != RequestKind::Ordered {
                Some("an open request must be ordered")
            } else if !self.op.is_empty() {
                Some("an open request carries no operation")
            } else if self.seq < limit {
                Some("an open request's routing tag is below 2^63")
            } else {
                None
            }
        } else if self.kind == RequestKind::Ordered && self.session >= limit {
            Some("an ordered request names a session at or above 2^63, where none is opened")
        } else {
            None
        }
    }
}

/// A client request (docs/design.md §3.4 step 1, §3.7).
///
/// In BFT it carries the client's signature, so that a Byzantine leader cannot invent or alter
/// requests; in CFT the client's authenticated connection vouches for it. Besides travelling on
/// its own ([`Message::Request`]), a request is carried inside PROPOSE, STOP, forwarded requests,
/// prepared proofs and decisions, and the verifier checks its signature in each of them (once
/// per exact copy: [`crate::verify::VerifiedRequests`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Request {
    /// What the client signed.
    pub body: RequestBody,
    /// The client's signature over [`Request::signing_bytes_of`]`(&body)`: required in BFT
    /// ([`Rejection::MissingSignature`](crate::Rejection::MissingSignature) without it),
    /// `None` in CFT (and ignored if present).
    pub signature: Option<Signature>,
}

const REQUEST_DOMAIN: &str = "smr/request/v1";

impl Request {
    /// A request for `body`, signed by `signer` if one is given (BFT: the client's key, whose
    /// public key is `body.client`), unsigned otherwise (CFT).
    pub fn new(body: RequestBody, signer: Option<&dyn Signer>) -> Request {
        let signature = signer.map(|s| s.sign(&Self::signing_bytes_of(&body)));
        Request { body, signature }
    }

    /// The bytes a client signs for `body`: its codec encoding, domain-separated as
    /// `smr/request/v1` by [`canonical_message`], so that a request signature can never pass
    /// for a replica message's.
    pub fn signing_bytes_of(body: &RequestBody) -> Vec<u8> {
        canonical_message(REQUEST_DOMAIN, &codec::encode(body))
    }

    /// The request's identity, (client, session, seq): the key of deduplication, of the pool and of the
    /// reply cache.
    pub fn id(&self) -> RequestId {
        RequestId {
            client: self.body.client,
            session: self.body.session,
            seq: self.body.seq,
        }
    }

    /// The bytes this request counts for against `max_batch_bytes`: 125 for the client key,
    /// session, seq, kind, op length prefix and signature (counted even when absent), plus the
    /// op's length. The leader's cut ([`crate::pool::RequestPool::cut_batch`]) and the verifier's
    /// check of a PROPOSE use this same measure.
    pub fn size_bytes(&self) -> usize {
        // client key + session + seq + kind + op length prefix + signature
        32 + 8 + 8 + 4 + 8 + 65 + self.body.op.len()
    }
}

/// The session number of an *open request*: a request that opens a session instead of
/// running an operation (its `op` is ignored). Ordered like any request; executing it assigns
/// the client table's next session number, which every correct replica replies with (8 bytes,
/// little-endian) (docs/design.md §3.7, "Sessions").
pub const OPEN_SESSION: u64 = 0;

/// Identifies a request: its client, the client's session and the session's sequence number
/// (docs/design.md §3.7). Orders by client, then session, then seq.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId {
    /// The client's public key.
    pub client: ClientId,
    /// The client's session ([`RequestBody::session`]).
    pub session: u64,
    /// The sequence number within the session.
    pub seq: u64,
}

impl RequestId {
    /// The session the request belongs to: the key of the client table's records.
    pub fn session_id(&self) -> SessionId {
        SessionId {
            client: self.client,
            session: self.session,
        }
    }
}

/// A client session: the unit of exactly-once (docs/design.md §3.7). One key may have many
/// sessions at once (one per client process); each numbers its requests from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId {
    /// The client's public key.
    pub client: ClientId,
    /// The session number the client picked.
    pub session: u64,
}

/// An ordered batch of requests: the value one consensus instance decides. Replicas vote on
/// [`Batch::digest`]; only PROPOSE, prepared proofs and decisions carry the batch itself. An
/// empty batch is a no-op: what a SYNC fixes for a cid that no STOPDATA reports
/// (docs/design.md §3.10.2).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The requests, in execution order: at most `max_batch_requests`, at most
    /// `max_batch_bytes` by [`Batch::size_bytes`] unless there is only one, and no (client,
    /// seq) twice. All ordered.
    pub requests: Vec<Request>,
}

impl Batch {
    /// The 32-byte blake3 digest of the batch's codec encoding (signatures included): what
    /// WRITE and ACCEPT vote for and a decision certificate certifies.
    pub fn digest(&self) -> Digest {
        smr_crypto::digest(&codec::encode(self))
    }

    /// The sum of [`Request::size_bytes`] over the requests: what `max_batch_bytes` bounds.
    pub fn size_bytes(&self) -> usize {
        self.requests.iter().map(Request::size_bytes).sum()
    }
}

/// A body that a replica signs: [`Propose`], [`Vote`], [`Stop`], [`StopData`] and [`Sync`].
/// The domain keeps a signature over one message type from being replayed as another.
pub trait ReplicaSigned: Serialize {
    /// The domain-separation tag mixed into the signed bytes ([`canonical_message`]), such as
    /// `smr/vote/v1`: one per message type and encoding version.
    const DOMAIN: &'static str;
    /// The replica that must have signed this body. A message sent directly must come from it
    /// ([`Rejection::SenderMismatch`](crate::Rejection::SenderMismatch)); one relayed inside a
    /// certificate or a SYNC is checked against its configured key.
    fn signer(&self) -> ReplicaId;
}

/// A replica-signed value (docs/design.md §3.6). In CFT mode the signature is absent and
/// channel authentication vouches for the sender.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed<T> {
    /// The signed content.
    pub body: T,
    /// The signature of `body.signer()` over [`Signed::signing_bytes`]: required in BFT
    /// ([`Rejection::MissingSignature`](crate::Rejection::MissingSignature) without it),
    /// `None` in CFT (and ignored if present).
    pub signature: Option<Signature>,
}

impl<T: ReplicaSigned> Signed<T> {
    /// Signs `body` with `signer` if one is given (BFT; it must hold the key of
    /// `body.signer()`), or wraps it unsigned (CFT, where the engine holds no signer).
    pub fn new(body: T, signer: Option<&dyn Signer>) -> Signed<T> {
        let signature = signer.map(|s| s.sign(&Self::signing_bytes_of(&body)));
        Signed { body, signature }
    }

    /// The bytes signed for `body`: its codec encoding, domain-separated by `T::DOMAIN`
    /// ([`canonical_message`]).
    pub fn signing_bytes_of(body: &T) -> Vec<u8> {
        canonical_message(T::DOMAIN, &codec::encode(body))
    }

    /// The bytes this value's signature covers: [`Signed::signing_bytes_of`] its body.
    pub fn signing_bytes(&self) -> Vec<u8> {
        Self::signing_bytes_of(&self.body)
    }
}

/// PROPOSE(cid, r, batch): the leader's value for one instance (docs/design.md §3.4 step 2;
/// BFT-SMaRt's `Proposer` sends it, its `Acceptor` handles it). [`Message::Propose`] says who
/// sends it and what the receiver does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Propose {
    /// The proposing replica and signer: the leader of `regency` (replica `regency` mod n).
    pub leader: ReplicaId,
    /// The instance the batch is proposed for.
    pub cid: Cid,
    /// The regency (epoch) the proposal is made in.
    pub regency: Regency,
    /// The proposed value, carried in full.
    pub batch: Batch,
}

impl ReplicaSigned for Propose {
    const DOMAIN: &'static str = "smr/propose/v1";
    fn signer(&self) -> ReplicaId {
        self.leader
    }
}

/// Which of an instance's two votes (docs/design.md §3.4 steps 3–4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VoteKind {
    /// The first vote, BFT only: "I hold the leader's PROPOSE with this digest". Q matching
    /// WRITEs form a prepared certificate (§3.10.1).
    Write,
    /// The deciding vote: Q matching ACCEPTs decide. Sent after Q matching WRITEs in BFT, right
    /// after the PROPOSE in CFT.
    Accept,
}

/// A WRITE or ACCEPT for `digest` in instance `cid` at regency `regency` (BFT-SMaRt's
/// `ConsensusMessage` of type WRITE or ACCEPT, handled by its `Acceptor`). Signed votes make
/// certificates: Q WRITEs a [`PreparedProof`], Q ACCEPTs a decision certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Vote {
    /// WRITE or ACCEPT; must match the [`Message`] variant that carries it.
    pub kind: VoteKind,
    /// The voter and signer.
    pub replica: ReplicaId,
    /// The instance voted in.
    pub cid: Cid,
    /// The regency the vote is cast in: its epoch (§3.10.6). A replica votes only in its
    /// current regency, and counts only votes of its current regency.
    pub regency: Regency,
    /// The 32-byte [`Batch::digest`] voted for.
    pub digest: Digest,
}

impl ReplicaSigned for Vote {
    const DOMAIN: &'static str = "smr/vote/v1";
    fn signer(&self) -> ReplicaId {
        self.replica
    }
}

/// A decided batch with its certificate: Q ACCEPTs for the batch's digest, all from one
/// regency. In BFT the ACCEPTs are signed, so anyone holding the replicas' keys can check it
/// (docs/design.md §3.6). It is what decision forwarding carries (§3.5), what a replica
/// persists ([`PersistRecord::Decided`](crate::engine::PersistRecord::Decided)) and what its
/// decision log keeps for peers that are behind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The decided instance.
    pub cid: Cid,
    /// The decided value.
    pub batch: Batch,
    /// `accepts_to_decide` (Q) to n ACCEPT votes for (`cid`, one regency, `batch.digest()`),
    /// one per replica; signed in BFT, unsigned in CFT.
    pub certificate: Vec<Signed<Vote>>,
}

/// Proof that a value was prepared in `epoch` for `cid` (docs/design.md §3.10.1): in BFT the Q
/// signed WRITEs that made this replica ACCEPT; in CFT (Paxos phase 1, §3.10.5) just the
/// accepted value, vouched for by the authenticated channel. It carries the batch so that a new
/// leader can re-propose it. A replica persists it before its ACCEPT
/// ([`PersistRecord::Prepared`](crate::engine::PersistRecord::Prepared)) and reports its newest
/// one for each open cid in STOPDATA.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedProof {
    /// The instance.
    pub cid: Cid,
    /// The regency in which the value was written (BFT) or accepted (CFT); the value rule
    /// takes the highest (§3.10.2).
    pub epoch: Regency,
    /// The prepared value.
    pub batch: Batch,
    /// BFT: `writes_to_accept` (Q) to n WRITE votes for (`cid`, `epoch`, `batch.digest()`), one
    /// per replica. CFT: empty.
    pub writes: Vec<Signed<Vote>>,
}

/// Proof that `cid` was decided with `digest`: a [`Decision`]'s certificate without its batch.
/// STOPDATA carries one for the sender's last executed cid, and a checkpoint one for its own
/// cid ([`crate::checkpoint::Checkpoint::decided`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionProof {
    /// The decided instance; never 0.
    pub cid: Cid,
    /// The decided batch's 32-byte [`Batch::digest`].
    pub digest: Digest,
    /// Q to n ACCEPT votes for (`cid`, one regency, `digest`), one per replica; signed in BFT,
    /// unsigned in CFT. Checked like a [`Decision::certificate`].
    pub certificate: Vec<Signed<Vote>>,
}

/// STOP: "the leader of my regency failed me; let us move to `regency`" (docs/design.md §3.9
/// steps 2–3; BFT-SMaRt's `Synchronizer`). Carries the oldest pending requests, so that the
/// next leader has them. [`Message::Stop`] says who sends it and what the receiver does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stop {
    /// The sender and signer.
    pub replica: ReplicaId,
    /// The regency the sender asks for.
    pub regency: Regency,
    /// The regency the sender is in. A STOP from a replica behind the receiver is stale: it
    /// comes from a replica that missed a leader change (for instance one that was cut off), and
    /// must not drag the others into another change.
    pub from_regency: Regency,
    /// The sender's oldest pending requests, at most `max_batch_requests`. Receivers add them
    /// to their pools, so the next leader can order them even if their clients never reached
    /// it.
    pub pending: Vec<Request>,
}

impl ReplicaSigned for Stop {
    const DOMAIN: &'static str = "smr/stop/v1";
    fn signer(&self) -> ReplicaId {
        self.replica
    }
}

/// STOPDATA: what a replica tells the leader of a newly installed regency: how far it has
/// decided, with proof, and its highest prepared value for every open instance
/// (docs/design.md §3.9 step 4, §3.10.1; BFT-SMaRt's `Synchronizer`). [`Message::StopData`]
/// says who sends it and what the receiver does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopData {
    /// The sender and signer.
    pub replica: ReplicaId,
    /// The newly installed regency; its leader collects the STOPDATA.
    pub regency: Regency,
    /// Proof that the sender's last executed cid was decided; `None` only if it executed
    /// nothing. Everything up to that cid is decided, so the value rule never re-opens it.
    pub last_decided: Option<DecisionProof>,
    /// For each open cid above `last_decided` that the sender prepared a value for, its newest
    /// prepared proof (highest epoch): at most `max_instances_ahead`, each cid once, each epoch
    /// below `regency`. A cid without one is not mentioned.
    pub prepared: Vec<PreparedProof>,
}

impl ReplicaSigned for StopData {
    const DOMAIN: &'static str = "smr/stopdata/v1";
    fn signer(&self) -> ReplicaId {
        self.replica
    }
}

/// The new leader's SYNC: the n-f STOPDATA it collected (docs/design.md §3.9 step 5, §3.10.2,
/// §3.10.4; BFT-SMaRt's `Synchronizer`). The values for the open instances are a
/// deterministic function of these proofs ([`crate::sync::choose`]), so every replica re-derives
/// them and a leader cannot pick a value its proofs do not support. [`Message::Sync`] says who
/// sends it and what the receiver does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sync {
    /// The leader of `regency`, and the signer. Any replica may relay a SYNC, but only this
    /// leader's signature makes it valid.
    pub leader: ReplicaId,
    /// The regency the SYNC installs.
    pub regency: Regency,
    /// n-f to n STOPDATA for `regency`, one per replica, each signed by its sender and checked
    /// like a STOPDATA received directly.
    pub proofs: Vec<Signed<StopData>>,
}

impl ReplicaSigned for Sync {
    const DOMAIN: &'static str = "smr/sync/v1";
    fn signer(&self) -> ReplicaId {
        self.leader
    }
}

/// A replica's answer to a client's request (docs/design.md §3.7). Unsigned: it travels over
/// the replica's pinned, authenticated connection (§3.6, §6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The answering replica; the client ignores a reply that names another replica than the
    /// connection it came on.
    pub replica: ReplicaId,
    /// The client the reply is for: the request's `client`.
    pub client: ClientId,
    /// The request's session; the transport routes the reply to the connection that session's
    /// requests arrive on.
    pub session: u64,
    /// The request's sequence number; the client matches replies to requests by it.
    pub seq: u64,
    /// Whether the request executed (`result` is then the service's) or was refused, and why
    /// (`result` is then empty). A client acts on a refusal only with the same reply quorum
    /// it needs for a result.
    pub status: ReplyStatus,
    /// The replica's regency when it replied. A CFT client sends its ordered requests to the
    /// leader of the highest regency f+1 replicas reported (one in CFT):
    /// [`ClientEngine::believed_leader`](crate::client::ClientEngine::believed_leader).
    pub regency: Regency,
    /// What the service returned: [`Service::execute`](crate::Service::execute)'s result for
    /// an ordered request (from the reply cache for a duplicate),
    /// [`Service::query`](crate::Service::query)'s for an unordered read. The client completes
    /// once enough replies carry identical bytes.
    #[serde(with = "serde_bytes")]
    pub result: Vec<u8>,
}

impl Reply {
    /// What the client's connection announced for this reply (docs/design.md §3.7,
    /// "Sessions"): the session, or for an open request's reply the client's routing tag
    /// (the open request's seq).
    pub fn route(&self) -> u64 {
        if self.session == OPEN_SESSION {
            self.seq
        } else {
            self.session
        }
    }
}

/// What a [`Reply`] says about its request (docs/design.md §3.7, "What a client sees").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ReplyStatus {
    /// The request executed; `result` is the service's.
    Executed,
    /// The request executed before, and its reply is no longer kept (older than the session's
    /// window, or dropped to respect a byte bound): it will never execute again, and its
    /// result cannot be had any more.
    Stale,
    /// The session has no record: it was evicted (or never opened). The request was not
    /// executed now; whether it executed before is unknown. The client should open a new
    /// session.
    SessionExpired,
    /// The client table is full of sessions active within `client_expiry_cids`: the open
    /// request was decided but opened no session. It may be sent again later.
    TableFull,
}

/// Everything that travels between clients and replicas: one per frame.
///
/// Every message from a replica is first checked by [`crate::verify`] (sender, sizes,
/// signatures, certificates); what each variant's receiver does below happens in the engine
/// afterwards. The rate limits named are per receiver, so no peer can make a replica send
/// without bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// A client's request (docs/design.md §3.4 step 1, §3.7, §3.8). The client
    /// ([`ClientEngine::submit`](crate::client::ClientEngine::submit)) sends it to every
    /// replica at once in BFT; in CFT an ordered request to the leader it believes in, and to
    /// every replica once that leader is slow
    /// ([`ClientEngine::leader_wait_ms`](crate::client::ClientEngine::leader_wait_ms)) or on a
    /// retry. A replica accepts it only from the client it names, on that client's own
    /// connection (docs/design.md §5). It answers an executed request from its reply cache (never
    /// executing it twice), answers one older than the session's window as stale, runs an unordered read
    /// against its state, and otherwise pools the request and starts its request timer; a
    /// leader then proposes it.
    Request(Request),
    /// A replica's answer to a client: sent to the request's client when its batch executed
    /// ([`Engine::on_executed`](crate::Engine::on_executed)), when an unordered read was
    /// answered, and from the reply cache when the client sends an executed request again. The
    /// client ([`ClientEngine::on_reply`](crate::client::ClientEngine::on_reply)) completes the
    /// request at f+1 identical results in BFT, 1 in CFT, and Q with unordered reads enabled
    /// or for an unordered read (docs/design.md §3.3, §3.8).
    Reply(Reply),
    /// PROPOSE (docs/design.md §3.4 steps 2–3; BFT-SMaRt's `Acceptor`): broadcast by the
    /// leader of the regency when it cuts a batch from its pool (up to
    /// `max_instances_in_flight` instances at once), and again by its retransmit timer while the
    /// instance is undecided. A replica accepts it only from the leader of the PROPOSE's
    /// regency, in its own regency, inside its cid window, after that regency's SYNC, and if it
    /// holds no other value for the cid (another is an equivocation); it then records the value
    /// and votes, WRITE in BFT and ACCEPT in CFT. A PROPOSE of a newer regency makes the
    /// receiver ask the sender for its SYNC; one of an older regency gets the receiver's SYNC
    /// back; one for a cid the receiver executed gets that decision back.
    Propose(Signed<Propose>),
    /// WRITE, BFT only (refused in CFT): broadcast by every replica that accepted a value for
    /// a cid (from PROPOSE or SYNC), and again by its retransmit timer while the instance is
    /// undecided; persisted before it leaves. The receiver keeps one per replica (a different
    /// second one is an equivocation). Once it holds Q WRITEs matching its own, and the batch
    /// they are for, it keeps them as its prepared certificate and sends ACCEPT
    /// (docs/design.md §3.4 step 4, §3.10.1).
    Write(Signed<Vote>),
    /// ACCEPT: broadcast by a replica once it holds Q matching WRITEs (BFT) or right after it
    /// accepted a value (CFT), and again by its retransmit timer while the instance is
    /// undecided; persisted, with its prepared proof, before it leaves. With Q matching ACCEPTs
    /// and the batch, the receiver decides the instance; with Q ACCEPTs but not the batch, it
    /// asks one of the voters for the certified decision (docs/design.md §3.4 step 5).
    Accept(Signed<Vote>),
    /// Requests a follower has waited too long for (docs/design.md §3.9 step 1): at the first
    /// expiry of its request timer, a follower sends the leader of its regency the requests
    /// that timed out, at most `max_batch_requests`. Only the leader takes it
    /// ([`Rejection::NotLeader`](crate::Rejection::NotLeader) elsewhere); it pools each request
    /// as if its client had sent it, minus the cached reply (a stale request is skipped
    /// silently), and proposes.
    Forward(Vec<Request>),
    /// "Send me the certified decisions from `from_cid` on": how a replica that is behind
    /// catches up (docs/design.md §3.5). Sent to one peer, at most once per
    /// `retransmit_initial_ms`: to the next peer in turn whenever the retransmit timer fires,
    /// at a first request timeout, when the heartbeat timer finds a cid seen beyond execution,
    /// and after installing a transferred checkpoint; or to the peer whose message showed the
    /// replica behind (a heartbeat, a PROPOSE or vote beyond its window, Q ACCEPTs for a batch
    /// it lacks, a SYNC proving a later start, a full answer). The receiver
    /// answers with [`Message::Decisions`] from its log (at most `max_decisions_per_reply`); if
    /// it truncated those decisions up to its stable checkpoint, with [`Message::StateInfo`], a
    /// hint to transfer state instead; if it has none, not at all.
    DecisionQuery {
        /// The first cid wanted: the sender's last executed cid + 1.
        from_cid: Cid,
    },
    /// Certified decisions in cid order: the answer to a [`Message::DecisionQuery`] (at most
    /// `max_decisions_per_reply`), or a single decision sent unasked to a leader whose PROPOSE
    /// is for a cid the sender executed already. The receiver decides each one inside its
    /// window that it has not decided yet and executes what is next in cid order; if a full
    /// answer moved it forward, it asks the same peer for more at once.
    Decisions(Vec<Decision>),
    /// A replica's periodic "I am in `regency`, and executed up to `last_decided`": broadcast
    /// every `heartbeat_ms` by every replica (in a quiet cluster nothing else tells a replica,
    /// the leader included, that its peers are ahead). A receiver in an older regency asks the
    /// sender for its SYNC; one in a newer regency sends the sender its own. In the same
    /// regency, if `last_decided` is past the receiver's execution, it asks the sender for the
    /// decisions (rate-limited per peer; only certified decisions are learned); from its own
    /// leader it also notes the progress (in CFT a follower whose leader progresses blames its
    /// own lag, not the leader, for its requests' timeouts).
    Heartbeat {
        /// The leader's regency.
        regency: Regency,
        /// The highest cid the leader has executed (handed to its service).
        last_decided: Cid,
    },
    /// STOP (docs/design.md §3.9 steps 2–3; BFT-SMaRt's `Synchronizer`): broadcast by a
    /// replica at the second expiry of a pending request's timer, when the leader change it is
    /// in takes too long (asking for the next regency), or to join a change that f+1 replicas
    /// (one in CFT) asked for; resent by its retransmit timer until the regency is installed.
    /// A STOP for a regency the receiver has reached, or from a replica behind it, gets the
    /// receiver's SYNC back; one more than 2^20 regencies ahead is malformed. Otherwise the
    /// receiver records the highest regency each replica asked for, pools the carried
    /// requests, joins at f+1 STOPs (CFT: 1), and at 2f+1 (CFT: f+1) installs the regency and
    /// sends STOPDATA.
    Stop(Signed<Stop>),
    /// STOPDATA (docs/design.md §3.9 step 4): sent by every replica to the leader of the
    /// regency it has just installed, and resent by its retransmit timer until that regency's
    /// SYNC arrives. A receiver that has not installed that regency yet counts it as the
    /// sender's STOP for it. The leader collects STOPDATA for its regency and at n-f sends
    /// SYNC; a replica that does not lead the regency refuses it
    /// ([`Rejection::NotLeader`](crate::Rejection::NotLeader)), and a STOPDATA of an older
    /// regency, or one reaching a leader that already sent its SYNC, gets that SYNC back.
    StopData(Signed<StopData>),
    /// SYNC (docs/design.md §3.9 steps 5–6, §3.10.4; BFT-SMaRt's `Synchronizer`): broadcast by
    /// the new leader once it holds n-f STOPDATA for its regency, and sent again by any replica
    /// (at most once per peer per `retransmit_initial_ms`) to a peer found in an older regency
    /// or asking with [`Message::SyncQuery`]. A receiver in an older regency enters the SYNC's
    /// (the n-f STOPDATA prove it was installed); then it recomputes the values with
    /// [`crate::sync::choose`], votes for those inside its window, asks for the decisions up to
    /// the proven start if it is behind, and resumes normal operation. A SYNC of an older
    /// regency, or one already applied, is ignored.
    Sync(Signed<Sync>),
    /// "Send me the SYNC that installed your regency": how a replica that missed a leader
    /// change catches up. Sent, at most once per `retransmit_initial_ms`, to a peer whose
    /// PROPOSE, vote or heartbeat carries a newer regency; broadcast by a replica recovered in a
    /// regency above 0 (it must apply that regency's SYNC before voting); and sent to the leader
    /// by a replica that has just finished rejoining. The receiver sends back its current SYNC,
    /// if it has one (none in regency 0).
    SyncQuery,
    /// "I took a checkpoint at `cid`" (docs/design.md §3.11): broadcast by a replica once the
    /// service's snapshot at a checkpoint cid is in, and repeated on each heartbeat timer while
    /// it is not stable. The receiver keeps it if `cid` is a multiple of `checkpoint_period`
    /// above its stable checkpoint and not far ahead; its own checkpoint at `cid` becomes
    /// stable, and its log is truncated up to it, once Q replicas (itself included) announced
    /// the same digest.
    CheckpointAnnounce {
        /// The checkpoint's cid.
        cid: Cid,
        /// The 32-byte blake3 digest of the checkpoint's encoded
        /// [`CheckpointData`](crate::checkpoint::CheckpointData).
        digest: Digest,
    },
    /// "Which checkpoints can you serve, and how far have you voted?": the start of a state
    /// transfer (docs/design.md §3.11; BFT-SMaRt's `StateManager`). Broadcast when a
    /// [`Message::StateInfo`] first shows a checkpoint above the sender's execution, and by a
    /// replica rejoining after it lost its disk ([`Engine::rejoin`](crate::Engine::rejoin);
    /// repeated by its retransmit timer until n-f answered). The receiver answers with
    /// [`Message::StateInfo`].
    StateQuery {
        /// The asker's incarnation nonce while it collects rejoin reports (fresh each time a
        /// replica starts rejoining, never 0), or 0 (a state transfer's query). The answer
        /// echoes it, and its `voted_up_to` is then the answerer's as of when it first saw
        /// this nonce (docs/design.md §3.12, item 6).
        rejoin_nonce: u64,
    },
    /// A replica's checkpoints (none if it has none) and the highest cid it has executed or
    /// voted in: the answer to a [`Message::StateQuery`], to a [`Message::DecisionQuery`] for
    /// decisions truncated away (a hint that state transfer is needed), and to a
    /// [`Message::StateFetch`] for a checkpoint the replica no longer holds (so the requester
    /// switches at once). A receiver shown a checkpoint above its execution starts a transfer if
    /// none is running (broadcasting [`Message::StateQuery`]), records the report, and fetches
    /// a checkpoint once `state_transfer_digests` peers (f+1 in BFT, 1 in CFT) report the same
    /// cid and digest. A rejoining receiver also collects `voted_up_to` from n-f peers.
    StateInfo {
        /// Every checkpoint the replica can serve: its stable one and newer ones of its own,
        /// as (cid, 32-byte digest); at most
        /// [`MAX_REPORTED_CHECKPOINTS`](crate::verify::MAX_REPORTED_CHECKPOINTS).
        checkpoints: Vec<(Cid, Digest)>,
        /// The highest cid the replica has executed or accepted a value in (holds a prepared
        /// value for; a WRITE alone does not count). A rejoining replica stays silent until it
        /// has executed `max_instances_ahead` cids past the highest of n-f of these
        /// (docs/design.md §3.12), each counted only up to `max_instances_ahead` past the cid
        /// that `executed` proves.
        voted_up_to: Cid,
        /// Proof that the replica executed up to a cid: the decision of its last executed cid
        /// (none before the first). A replica votes at most `max_instances_ahead` past what it
        /// executed, so this bounds what its `voted_up_to` can truthfully be, and one peer
        /// cannot keep a rejoining replica silent with a made-up number (issue 12).
        executed: Option<DecisionProof>,
        /// The `rejoin_nonce` of the [`Message::StateQuery`] this answers, or 0 (an answer to
        /// a state transfer's query, a DecisionQuery or a StateFetch). A rejoining replica
        /// counts a report only if it echoes its current nonce: a report made for an earlier
        /// incarnation, before its store was lost, bounds nothing.
        for_nonce: u64,
        /// The sender's own incarnation nonce while it collects rejoin reports, or 0: the
        /// receiver learns that this incarnation has started (docs/design.md §3.12, item 6).
        rejoin_nonce: u64,
    },
    /// "Send me the bytes of your checkpoint `cid` from `offset`": sent by a replica
    /// transferring state to the one peer it chose among those that agree on the checkpoint,
    /// at offset 0 and then where each chunk ended, one at a time and paced to half of the
    /// receiver's reply budget for the peer
    /// ([`STATE_FETCH_BYTES_PER_SECOND`](crate::engine::STATE_FETCH_BYTES_PER_SECOND)).
    /// The receiver pays each answer from that budget (beyond it, fetches are refused as
    /// [`Rejection::RateLimited`](crate::Rejection::RateLimited)); it answers with
    /// one [`Message::StateChunk`], or with [`Message::StateInfo`] if it no longer holds the
    /// checkpoint.
    StateFetch {
        /// The checkpoint wanted.
        cid: Cid,
        /// Byte offset into the checkpoint's encoding; past its end is malformed.
        offset: u64,
    },
    /// A bounded chunk of a checkpoint's encoding: the answer to a [`Message::StateFetch`]
    /// (docs/design.md §3.11). The receiver takes it only from the source it is downloading
    /// from, for that checkpoint and at the offset it expects, and fetches the next chunk until
    /// it holds `total_len` bytes. It then installs the checkpoint if the bytes hash to the
    /// digest its peers agreed on, decode, and come with the proof of their cid; otherwise it
    /// drops the source as a liar and fetches from another.
    StateChunk {
        /// The checkpoint's cid.
        cid: Cid,
        /// Where `bytes` start in the checkpoint's encoding.
        offset: u64,
        /// The length of the whole encoding in bytes; at most `max_state_bytes`.
        total_len: u64,
        /// The encoding's bytes from `offset`: at most `state_chunk_bytes`, empty only at the
        /// end.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        /// On the chunk that completes the checkpoint: the proof that `cid` was decided,
        /// which the requester needs to report it in a later STOPDATA.
        decided: Option<DecisionProof>,
    },
    /// An operator's "how are you?", from a client connection (`smr status`,
    /// [`Client::status`](crate::driver::Client::status)). The driver answers it with
    /// [`Message::Status`] without involving the engine, which refuses it.
    StatusQuery {
        /// What the asking connection announced last (docs/design.md §3.7, "Sessions"): the
        /// client's session once open, else its routing tag. The answer goes to the newest
        /// connection of the key that announced it, as a reply to that session does
        /// ([`Network::send_to_session`](crate::network::Network::send_to_session)), so that
        /// processes sharing a key each get their own answers.
        route: u64,
    },
    /// The answer to a [`Message::StatusQuery`], sent to the connection that asked (the one
    /// that announced the query's `route`).
    Status(StatusReport),
    /// "I abstain until I have executed `until`": broadcast by a rejoining replica once it knows
    /// its horizon (docs/design.md §3.12, "Reaching the horizon"), and again by its retransmit
    /// timer until it takes part. Every receiver records it (the leader may change); a leader
    /// with no requests to propose orders empty batches up to it, so the rejoining replica
    /// takes part within a few consensus rounds even in a quiet cluster. Each receiver counts
    /// it only up to two windows past its own execution, and lets one peer raise what it asked
    /// for at most once per `request_timeout_ms`, so a Byzantine peer cannot keep the cluster
    /// busy with empty instances.
    Abstaining {
        /// The cid the sender must execute before it votes again.
        until: Cid,
    },
}

/// Whether a replica takes part in the protocol, for operators ([`StatusReport::participation`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Participation {
    /// It votes, leads and reports to new leaders.
    #[default]
    Participating,
    /// It lost its state (or started with an empty one) and is asking its peers how far they
    /// voted: `reports` of the `needed` answers are in. It casts no vote yet.
    CollectingReports {
        /// Peers that answered.
        reports: u64,
        /// Answers it needs (n-f).
        needed: u64,
    },
    /// It knows its horizon and abstains until it has executed `until`.
    CatchingUp {
        /// The cid it must execute before it votes again.
        until: Cid,
    },
}

impl Participation {
    /// Whether the replica votes.
    pub fn participates(&self) -> bool {
        matches!(self, Participation::Participating)
    }
}

impl std::fmt::Display for Participation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Participation::Participating => write!(f, "participating"),
            Participation::CollectingReports { reports, needed } => write!(
                f,
                "ABSTAINING (rejoining: collecting reports, {reports} of {needed})"
            ),
            Participation::CatchingUp { until } => {
                write!(f, "ABSTAINING (rejoining: catching up to cid {until})")
            }
        }
    }
}

/// What `smr status` prints for one replica. The driver builds it from the engine's accessors
/// when a [`Message::StatusQuery`] arrives; the service thread adds `state_digest`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The reporting replica.
    pub replica: ReplicaId,
    /// The replication mode: `"bft"` or `"cft"`.
    pub mode: String,
    /// The replica's current regency.
    pub regency: Regency,
    /// The leader of that regency.
    pub leader: ReplicaId,
    /// The highest cid the replica handed to its service
    /// ([`Engine::last_executed`](crate::Engine::last_executed)).
    pub last_decided: Cid,
    /// The cid of the replica's stable checkpoint; 0 if none
    /// ([`Engine::last_checkpoint`](crate::Engine::last_checkpoint)).
    pub last_checkpoint: Cid,
    /// Digest of the service state after executing `last_decided`
    /// ([`Service::state_digest`](crate::Service::state_digest)).
    pub state_digest: Digest,
    /// Requests in the replica's pool, not executed yet.
    pub pending_requests: u64,
    /// Messages the replica refused since it started, in the verifier or the engine.
    pub rejected_messages: u64,
    /// Decided batches held in memory (bounded by checkpoints).
    pub log_entries: u64,
    /// Consensus instances decided since the replica started (a benchmark divides the growth
    /// of `executed_requests` by the growth of this for the average batch size).
    pub decided_instances: u64,
    /// Requests executed since the replica started (duplicates skipped are not counted).
    pub executed_requests: u64,
    /// Client request signatures the replica verified since it started, wherever (verify
    /// workers and engine; vote and PROPOSE signatures not counted). A benchmark divides the
    /// growth summed over replicas by the growth of `executed_requests` (docs/design.md §5).
    pub client_signatures_verified: u64,
    /// Client request signature checks the replica skipped since it started, because a
    /// byte-identical copy was already authenticated here.
    pub client_signatures_cached: u64,
    /// Write-ahead log fsyncs since the replica started (`fsync = "always"`; checkpoint
    /// writes included; 0 without a data dir). A benchmark divides its growth by the window
    /// and by the growth of `decided_instances` (group commit, docs/design.md §3.12).
    pub fsyncs: u64,
    /// Peer replicas this one refuses because their protocol settings differ from its own
    /// ([`crate::settings`]), with the settings that differ.
    pub refused_replicas: Vec<RefusedReplica>,
    /// The replica's newest checkpoint exceeds `limits.max_state_bytes`, so no replica can
    /// receive it by state transfer
    /// ([`Engine::state_over_max_state_bytes`](crate::Engine::state_over_max_state_bytes)).
    pub state_over_max_state_bytes: bool,
    /// Whether the replica votes, or abstains while it rejoins
    /// ([`Engine::participation`](crate::Engine::participation)).
    pub participation: Participation,
}

/// A peer replica refused because its protocol settings differ ([`StatusReport`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedReplica {
    /// The refused replica.
    pub replica: ReplicaId,
    /// The keys of the settings that differ (a key only the peer sent is its text: escape it
    /// before printing).
    pub settings: Vec<String>,
}

impl Message {
    /// The variant's stable, lower-case name (`"propose"`, `"decision-query"`, ...), for logs
    /// and [`Rejection::UnexpectedMessage`](crate::Rejection::UnexpectedMessage).
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
            Message::StateQuery { .. } => "state-query",
            Message::StateInfo { .. } => "state-info",
            Message::StateFetch { .. } => "state-fetch",
            Message::StateChunk { .. } => "state-chunk",
            Message::StatusQuery { .. } => "status-query",
            Message::Status(_) => "status",
            Message::Abstaining { .. } => "abstaining",
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
