//! Typed reasons for refusing what a peer sent (docs/design.md §7.6): misbehaviour by a peer, or
//! a message that is merely late or early, is a value, counted and logged by the caller, never a
//! panic. The verifier returns one instead of a [`crate::Verified`] message; the engine reports
//! one in [`Output::rejections`](crate::Output::rejections) *beside* whatever the input produced
//! before it was refused (§7.2), so a rejection does not undo what its handler already did.

use smr_crypto::VerifyError;

use crate::message::{Cid, ClientId, Regency};

/// Why a message (or part of one) was refused. The first group comes from the stateless
/// checks of [`crate::verify`], the second from the engine's stateful ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A field breaks a structural rule, named in the text: a vote whose kind differs from its
    /// message, an unordered request inside a batch, a request twice in one batch, a prepared
    /// proof for a decided, repeated or future cid, a STOP or STOPDATA more than 2^20
    /// regencies ahead, a state fetch past the checkpoint's end, an empty state chunk before
    /// the end.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A signature failed verification (BFT). The whole message is refused; other messages of
    /// the same verification run are not.
    #[error("signature {index} in the message does not verify: {reason}")]
    BadSignature {
        /// Position of the failing signature among those queued for the message: its own
        /// first, then those of the requests and votes inside it, in order (a request whose
        /// exact copy was verified here before is not queued).
        index: usize,
        /// Why it failed.
        reason: VerifyError,
    },
    /// A client request that this replica authenticated by its client's channel (docs/design.md
    /// §5) carries a signature that does not verify, found when the replica was about to relay
    /// it (propose, forward, or carry it in a STOP). The client sent it; the request is
    /// dropped, and the rejection counts against the client, never against a replica.
    #[error("client {client}'s own request carries a signature that does not verify: {reason}")]
    BadClientSignature {
        /// The client that sent it.
        client: ClientId,
        /// Why it failed.
        reason: VerifyError,
    },
    /// A request or replica message lacks the signature BFT requires.
    #[error("a signature is required in this mode but missing")]
    MissingSignature,
    /// A replica id outside `0..n`: the sender, or a signer named inside a certificate.
    #[error("sender is not a replica of this cluster")]
    UnknownSender,
    /// A replica message sent directly whose body names another replica as its signer
    /// ([`ReplicaSigned::signer`](crate::message::ReplicaSigned::signer)).
    #[error("message names a different replica than the one that sent it")]
    SenderMismatch,
    /// A request from a client key the cluster's [`ClientPolicy`](crate::ClientPolicy) does
    /// not admit, directly or inside another message.
    #[error("client key is not admitted by the cluster's client policy")]
    ClientNotAdmitted,
    /// A client sent a request naming another client's key.
    #[error("request names a client other than the connection's key")]
    Impersonation,
    /// A message kind this kind of peer may not send (a client's PROPOSE, a replica's
    /// request, a WRITE in CFT), or one the engine does not take; names the kind
    /// ([`Message::kind_name`](crate::Message::kind_name)).
    #[error("{0} message is not expected from this kind of peer")]
    UnexpectedMessage(&'static str),
    /// A count or size above its configured limit (an op above `max_op_bytes`, a batch above
    /// `max_batch_requests` or `max_batch_bytes`, a state chunk above `state_chunk_bytes`,
    /// ...); names what.
    #[error("{0} exceeds its limit")]
    Oversize(&'static str),
    /// A PROPOSE sent, or a SYNC signed, by a replica that does not lead the regency it names.
    #[error("proposal from replica {from}, but the leader of regency {regency} is {leader}")]
    WrongLeader {
        /// The replica that proposed or signed.
        from: u32,
        /// The regency the message names.
        regency: Regency,
        /// That regency's leader (`regency` mod n).
        leader: u32,
    },
    /// A PROPOSE or vote of a regency older than the receiver's; the receiver sends the
    /// sender its SYNC.
    #[error("message for regency {got}, but the current regency is {current}")]
    StaleRegency {
        /// The message's regency.
        got: Regency,
        /// The receiver's regency.
        current: Regency,
    },
    /// A PROPOSE or vote of a regency newer than the receiver's; the receiver asks the sender
    /// for its SYNC.
    #[error("message for future regency {got}; the current regency is {current}")]
    FutureRegency {
        /// The message's regency.
        got: Regency,
        /// The receiver's regency.
        current: Regency,
    },
    /// A PROPOSE or vote for a cid more than `max_instances_ahead` past the receiver's last
    /// executed one; the receiver asks the sender for decisions.
    #[error("cid {cid} is beyond the window ending at {window_end}")]
    CidBeyondWindow {
        /// The message's cid.
        cid: Cid,
        /// The last cid the receiver keeps votes for.
        window_end: Cid,
    },
    /// A replica sent two different PROPOSEs, WRITEs or ACCEPTs for one cid in one regency; the
    /// first one stands.
    #[error("replica {replica} sent two different {what} for cid {cid}")]
    Equivocation {
        /// The equivocating replica.
        replica: u32,
        /// The instance.
        cid: Cid,
        /// `"proposals"`, `"writes"` or `"accepts"` (a leader's SYNC counts as its proposal for
        /// every cid the SYNC fixes).
        what: &'static str,
    },
    /// A certificate that proves nothing: a decision certificate with too few ACCEPTs,
    /// mismatched or repeated voters, a prepared proof without Q matching WRITEs, a SYNC
    /// without n-f STOPDATA of its regency, or transferred state that does not hash to the
    /// agreed digest; names what is wrong.
    #[error("invalid decision certificate: {0}")]
    BadCertificate(&'static str),
    /// A request `max_pending_per_client` or more below its session's highest executed seq, or
    /// whose reply was dropped: executed before, its reply no longer cached (docs/design.md
    /// §3.7). Counted, and answered [`ReplyStatus::Stale`](crate::message::ReplyStatus::Stale)
    /// when it came from its client directly. Also a request of a session whose eviction
    /// the table remembers (answered
    /// [`ReplyStatus::SessionExpired`](crate::message::ReplyStatus::SessionExpired)): it is
    /// not ordered again.
    #[error(
        "request sequence number is older than the client's window, or its session was evicted"
    )]
    StaleRequest,
    /// The client already has `max_pending_per_client` requests in the pool.
    #[error("the client already has the maximum number of pending requests")]
    ClientPoolFull,
    /// The pool holds `max_pending_total` requests.
    #[error("the request pool is full")]
    PoolFull,
    /// Forwarded requests or a STOPDATA reached a replica that does not lead the regency.
    #[error("a message for the leader reached a replica that is not the leader")]
    NotLeader,
    /// A PROPOSE arrived before this replica applied its regency's SYNC, whose values it could
    /// contradict; the leader's retransmission brings it again.
    #[error("the current regency's SYNC has not been applied yet")]
    SyncInProgress,
    /// A peer asked for more than its share of a rate-limited answer (its reply budget,
    /// `engine/budget.rs`); names what.
    #[error("{0}: this peer asked for more than its share")]
    RateLimited(&'static str),
}

impl Rejection {
    /// A stable short name in snake case (`"bad_signature"`, `"stale_regency"`, ...): the key
    /// of [`EngineStats::rejections`](crate::engine::EngineStats::rejections).
    pub fn name(&self) -> &'static str {
        match self {
            Rejection::Malformed(_) => "malformed",
            Rejection::BadSignature { .. } => "bad_signature",
            Rejection::BadClientSignature { .. } => "bad_client_signature",
            Rejection::MissingSignature => "missing_signature",
            Rejection::UnknownSender => "unknown_sender",
            Rejection::SenderMismatch => "sender_mismatch",
            Rejection::ClientNotAdmitted => "client_not_admitted",
            Rejection::Impersonation => "impersonation",
            Rejection::UnexpectedMessage(_) => "unexpected_message",
            Rejection::Oversize(_) => "oversize",
            Rejection::WrongLeader { .. } => "wrong_leader",
            Rejection::StaleRegency { .. } => "stale_regency",
            Rejection::FutureRegency { .. } => "future_regency",
            Rejection::CidBeyondWindow { .. } => "cid_beyond_window",
            Rejection::Equivocation { .. } => "equivocation",
            Rejection::BadCertificate(_) => "bad_certificate",
            Rejection::StaleRequest => "stale_request",
            Rejection::ClientPoolFull => "client_pool_full",
            Rejection::PoolFull => "pool_full",
            Rejection::NotLeader => "not_leader",
            Rejection::SyncInProgress => "sync_in_progress",
            Rejection::RateLimited(_) => "rate_limited",
        }
    }
}
