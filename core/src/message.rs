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
pub type Cid = u64;
/// Regency (epoch) number; the leader of regency r is replica r mod n.
pub type Regency = u64;
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
