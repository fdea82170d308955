//! Typed reasons for refusing what a peer sent. A rejection is counted and logged by the caller;
//! it never panics and never changes protocol state.

use smr_crypto::VerifyError;

use crate::message::{Cid, Regency};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("signature {index} in the message does not verify: {reason}")]
    BadSignature { index: usize, reason: VerifyError },
    #[error("a signature is required in this mode but missing")]
    MissingSignature,
    #[error("sender is not a replica of this cluster")]
    UnknownSender,
    #[error("message names a different replica than the one that sent it")]
    SenderMismatch,
    #[error("client key is not admitted by the cluster's client policy")]
    ClientNotAdmitted,
    #[error("request names a client other than the connection's key")]
    Impersonation,
    #[error("{0} message is not expected from this kind of peer")]
    UnexpectedMessage(&'static str),
    #[error("{0} exceeds its limit")]
    Oversize(&'static str),
    #[error("proposal from replica {from}, but the leader of regency {regency} is {leader}")]
    WrongLeader {
        from: u32,
        regency: Regency,
        leader: u32,
    },
    #[error("message for regency {got}, but the current regency is {current}")]
    StaleRegency { got: Regency, current: Regency },
    #[error("message for future regency {got}; the current regency is {current}")]
    FutureRegency { got: Regency, current: Regency },
    #[error("cid {cid} is beyond the window ending at {window_end}")]
    CidBeyondWindow { cid: Cid, window_end: Cid },
    #[error("replica {replica} sent two different {what} for cid {cid}")]
    Equivocation {
        replica: u32,
        cid: Cid,
        what: &'static str,
    },
    #[error("invalid decision certificate: {0}")]
    BadCertificate(&'static str),
    #[error("request sequence number is older than the client's window")]
    StaleRequest,
    #[error("the client already has the maximum number of pending requests")]
    ClientPoolFull,
    #[error("the request pool is full")]
    PoolFull,
    #[error("a message for the leader reached a replica that is not the leader")]
    NotLeader,
    #[error("the current regency's SYNC has not been applied yet")]
    SyncInProgress,
    #[error("{0}: this peer asked for more than its share")]
    RateLimited(&'static str),
}

impl Rejection {
    /// A stable short name, used as the counter key.
    pub fn name(&self) -> &'static str {
        match self {
            Rejection::Malformed(_) => "malformed",
            Rejection::BadSignature { .. } => "bad_signature",
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
