//! How large a frame can be, derived from the configuration (issue 12 item 10).
//!
//! Every message the engine can build must fit the frame limit of every valid config: a SYNC
//! carries up to n STOPDATA, each with up to `max_instances_ahead` prepared batches, and a
//! fixed limit (it was about 17 MiB) cut off the SYNC of a leader change at n = 7 with 1 MiB
//! batches, so that followers never installed the regency. So the limit is not fixed: it is
//! the largest encoding of any message the verifier accepts under the config's limits,
//! computed here field by field from the codec's rules (bincode, fixed-width little-endian: a
//! variant tag is 4 bytes, a length 8, an `Option` tag 1, a key 32, a signature 64, a digest
//! 32). [`EngineConfig::validate`](crate::EngineConfig::validate) refuses a config whose
//! largest message would not fit a frame's 4-byte length prefix, naming the limits to lower.
//!
//! Clients get a much smaller limit ([`client_frame_bytes`]): what a client sends is a request
//! or a status query, so a replica refuses anything longer than the largest request from a
//! client connection.
//!
//! The same holds on disk: every record the engine can persist must fit a write-ahead-log
//! record ([`RecordBounds`]; `validate` refuses a config whose largest record would not).
//!
//! `core/tests/frame_limits.rs` builds the largest message and record of each type with the
//! real encoder, over n and both modes, and checks it fits.
//!
//! # Why the replica limit is about 256 MiB at the defaults
//!
//! The largest message is the SYNC: n STOPDATA, each with up to `max_instances_ahead` (64)
//! prepared batches of `max_batch_bytes` (1 MiB), so about n × 64 MiB (256 MiB at n = 4). It
//! cannot be derived tighter from the config alone: a follower votes for any cid up to
//! `max_instances_ahead` past its *own* last decided cid (so that a correct replica that lags
//! still takes part), and a leader's `max_instances_in_flight` is not checked by followers
//! (they do not know what the leader executed). So a correct replica that lags can hold, and
//! must report, a prepared proof for every cid of that window; dropping any of them from its
//! STOPDATA could lose a value that was decided (§3.10). A tighter limit needs either
//! followers that vote at most `max_instances_in_flight` past their own decided cid (a change
//! to when a replica votes, with its own safety and liveness argument), or a SYNC split into
//! messages (the STOPDATA sent apart from the SYNC that names their digests). Until then, what
//! this limit costs is bounded elsewhere: a frame is buffered only as its bytes arrive, each
//! replica connection holds at most one partial frame (two connections per replica), and
//! clients, who get [`client_frame_bytes`], never draw from the replicas' part.

use smr_modes::Quorums;

use crate::config::Limits;
use crate::verify::MAX_REPORTED_CHECKPOINTS;

/// The largest frame any transport carries: its length prefix is a `u32`.
pub const MAX_FRAME_BYTES: u64 = u32::MAX as u64;

/// A variant tag, a length prefix, an `Option` tag.
const TAG: u64 = 4;
const LEN: u64 = 8;
const OPTION: u64 = 1;
const KEY: u64 = 32;
const SIGNATURE: u64 = 64;
const DIGEST: u64 = 32;
/// A `Signed<T>`'s signature: an `Option<Signature>`.
const SIGNED: u64 = OPTION + SIGNATURE;

/// Upper bounds, in bytes, of the encoding of each message type under one config: what the
/// verifier lets through, so what a correct engine can build. Each bound includes the
/// [`Message`](crate::Message) variant tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageBounds {
    /// A client's request ([`Message::Request`](crate::Message::Request)).
    pub request: u64,
    /// A PROPOSE with a full batch.
    pub propose: u64,
    /// A WRITE or an ACCEPT.
    pub vote: u64,
    /// Forwarded requests: at most `max_batch_requests`.
    pub forward: u64,
    /// An answer to a decision query: `max_decisions_per_reply` decisions with full batches.
    pub decisions: u64,
    /// A STOP with `max_batch_requests` pending requests.
    pub stop: u64,
    /// A STOPDATA with a decision proof and `max_instances_ahead` prepared proofs.
    pub stopdata: u64,
    /// A SYNC with n STOPDATA.
    pub sync: u64,
    /// A state-transfer chunk of `state_chunk_bytes` with the decision proof.
    pub state_chunk: u64,
    /// A state info with [`MAX_REPORTED_CHECKPOINTS`] checkpoints.
    pub state_info: u64,
    /// A reply to a client whose result is as large as one client's reply cache may hold
    /// (`max_client_reply_bytes`): the largest result the replica keeps for a retry, so one
    /// it must be able to send, and the client to receive (issue 17 item 3).
    pub reply: u64,
}

impl MessageBounds {
    /// The bounds for a cluster of `quorums.n()` replicas under `limits`. Saturates at
    /// `u64::MAX` rather than overflow.
    pub fn new(quorums: &Quorums, limits: &Limits) -> MessageBounds {
        let n = quorums.n() as u64;
        let add = |parts: &[u64]| parts.iter().fold(0u64, |sum, p| sum.saturating_add(*p));
        let times = |count: u64, each: u64| count.saturating_mul(each);

        // RequestBody { client, session, seq, kind, op } + signature.
        let request = add(&[KEY, 8, 8, TAG, LEN, limits.max_op_bytes as u64, SIGNED]);
        // A batch is at most max_batch_bytes by Request::size_bytes (which is a request's
        // encoded size), unless it holds a single larger request; and at most
        // max_batch_requests requests.
        let batch_requests = times(limits.max_batch_requests as u64, request)
            .min((limits.max_batch_bytes as u64).max(request));
        let batch = add(&[LEN, batch_requests]);
        // Vote { kind, replica, cid, regency, digest } + signature.
        let signed_vote = add(&[TAG, 4, 8, 8, DIGEST, SIGNED]);
        let certificate = add(&[LEN, times(n, signed_vote)]);
        let decision = add(&[8, batch, certificate]);
        let prepared = add(&[8, 8, batch, certificate]);
        let decision_proof = add(&[8, DIGEST, certificate]);
        let requests = add(&[LEN, times(limits.max_batch_requests as u64, request)]);
        // StopData { replica, regency, last_decided, prepared } + signature.
        let signed_stopdata = add(&[
            4,
            8,
            OPTION,
            decision_proof,
            LEN,
            times(limits.max_instances_ahead, prepared),
            SIGNED,
        ]);
        MessageBounds {
            request: add(&[TAG, request]),
            propose: add(&[TAG, 4, 8, 8, batch, SIGNED]),
            vote: add(&[TAG, signed_vote]),
            forward: add(&[TAG, requests]),
            decisions: add(&[
                TAG,
                LEN,
                times(limits.max_decisions_per_reply as u64, decision),
            ]),
            // Stop { replica, regency, from_regency, pending } + signature.
            stop: add(&[TAG, 4, 8, 8, requests, SIGNED]),
            stopdata: add(&[TAG, signed_stopdata]),
            // Sync { leader, regency, proofs } + signature.
            sync: add(&[TAG, 4, 8, LEN, times(n, signed_stopdata), SIGNED]),
            // StateChunk { cid, offset, total_len, bytes, decided }.
            state_chunk: add(&[
                TAG,
                8,
                8,
                8,
                LEN,
                limits.state_chunk_bytes as u64,
                OPTION,
                decision_proof,
            ]),
            // StateInfo { checkpoints, voted_up_to, executed, for_nonce, rejoin_nonce }.
            state_info: add(&[
                TAG,
                LEN,
                times(MAX_REPORTED_CHECKPOINTS as u64, 8 + DIGEST),
                8,
                OPTION,
                decision_proof,
                8,
                8,
            ]),
            // Reply { replica, client, session, seq, status, regency, result }.
            reply: add(&[
                TAG,
                4,
                KEY,
                8,
                8,
                TAG,
                8,
                LEN,
                limits.max_client_reply_bytes,
            ]),
        }
    }

    /// Every bound with its message type's name, largest first.
    pub fn by_size(&self) -> Vec<(&'static str, u64)> {
        let mut all = vec![
            ("request", self.request),
            ("propose", self.propose),
            ("vote", self.vote),
            ("forward", self.forward),
            ("decisions", self.decisions),
            ("stop", self.stop),
            ("stopdata", self.stopdata),
            ("sync", self.sync),
            ("state-chunk", self.state_chunk),
            ("state-info", self.state_info),
            ("reply", self.reply),
        ];
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        all
    }

    /// The largest of them: the message type and its bound.
    pub fn largest(&self) -> (&'static str, u64) {
        self.by_size()[0]
    }
}

/// Upper bounds, in bytes, of the encoding of each write-ahead-log record
/// ([`PersistRecord`](crate::engine::PersistRecord)) under one config, computed like
/// [`MessageBounds`]. Each includes the record's variant tag. A checkpoint is not among them:
/// the tokio driver writes it as a checkpoint file, whose length field is 8 bytes
/// ([`crate::storage::Wal::write_checkpoint`]), not as a log record.
///
/// [`EngineConfig::validate`](crate::EngineConfig::validate) refuses a config whose largest
/// record exceeds [`MAX_RECORD_BYTES`](crate::storage::MAX_RECORD_BYTES): the driver stops the
/// replica when an append fails, so a record the engine can build but the log cannot take
/// would stop every correct replica at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordBounds {
    /// A vote this replica is about to send (unsigned: the record holds its body).
    pub vote: u64,
    /// A prepared value with its proof (a full batch and n WRITEs).
    pub prepared: u64,
    /// A decided instance (a full batch and n ACCEPTs).
    pub decided: u64,
    /// A regency.
    pub regency: u64,
    /// The SYNC this replica is about to send as leader: as large as the message.
    pub sync: u64,
}

impl RecordBounds {
    /// The bounds for a cluster of `quorums.n()` replicas under `limits`. Saturates at
    /// `u64::MAX` rather than overflow.
    pub fn new(quorums: &Quorums, limits: &Limits) -> RecordBounds {
        let n = quorums.n() as u64;
        let add = |parts: &[u64]| parts.iter().fold(0u64, |sum, p| sum.saturating_add(*p));
        let messages = MessageBounds::new(quorums, limits);
        // The batch and certificate sizes, as in `MessageBounds::new`.
        let request = add(&[KEY, 8, 8, TAG, LEN, limits.max_op_bytes as u64, SIGNED]);
        let batch_requests = (limits.max_batch_requests as u64)
            .saturating_mul(request)
            .min((limits.max_batch_bytes as u64).max(request));
        let batch = add(&[LEN, batch_requests]);
        let vote = add(&[TAG, 4, 8, 8, DIGEST]);
        let certificate = add(&[LEN, n.saturating_mul(add(&[vote, SIGNED]))]);
        RecordBounds {
            vote: add(&[TAG, vote]),
            // PreparedProof { cid, epoch, batch, writes }.
            prepared: add(&[TAG, 8, 8, batch, certificate]),
            // Decision { cid, batch, certificate }.
            decided: add(&[TAG, 8, batch, certificate]),
            regency: add(&[TAG, 8]),
            // The record's tag replaces the message's: same size.
            sync: messages.sync,
        }
    }

    /// Every bound with its record's name, largest first.
    pub fn by_size(&self) -> Vec<(&'static str, u64)> {
        let mut all = vec![
            ("vote", self.vote),
            ("prepared", self.prepared),
            ("decided", self.decided),
            ("regency", self.regency),
            ("sync", self.sync),
        ];
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        all
    }

    /// The largest of them: the record's name and its bound.
    pub fn largest(&self) -> (&'static str, u64) {
        self.by_size()[0]
    }
}

/// Slack above the largest message bound for what the bounds leave out: a status report (a
/// few hundred bytes) and room for small encoding changes.
const HEADROOM_BYTES: u64 = 64 * 1024;

/// The frame limit between replicas (and of what a client accepts from a replica): the
/// largest message the config allows plus 64 KiB of headroom, at most [`MAX_FRAME_BYTES`].
/// A reply larger than this (a service's result is not bounded by the config) cannot be sent;
/// the driver logs that as an error.
pub fn replica_frame_bytes(quorums: &Quorums, limits: &Limits) -> usize {
    let (_, largest) = MessageBounds::new(quorums, limits).largest();
    frame_bytes(largest)
}

/// The frame limit of what a replica accepts from a client connection: the largest request
/// (or status query) the config allows, plus 64 KiB of headroom.
pub fn client_frame_bytes(quorums: &Quorums, limits: &Limits) -> usize {
    frame_bytes(MessageBounds::new(quorums, limits).request)
}

fn frame_bytes(largest: u64) -> usize {
    let bytes = largest.saturating_add(HEADROOM_BYTES).min(MAX_FRAME_BYTES);
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smr_modes::Mode;

    #[test]
    fn default_limits_fit_a_frame_up_to_large_clusters() {
        for n in [4, 7, 10, 13, 16, 31] {
            let quorums = Quorums::new(Mode::Bft, n, (n - 1) / 3).unwrap();
            let bounds = MessageBounds::new(&quorums, &Limits::default());
            let (largest, bytes) = bounds.largest();
            assert!(
                bytes <= MAX_FRAME_BYTES,
                "n = {n}: {largest} of {bytes} bytes"
            );
        }
    }

    #[test]
    fn clients_get_a_much_smaller_frame_than_replicas() {
        let quorums = Quorums::new(Mode::Bft, 4, 1).unwrap();
        let limits = Limits::default();
        assert_eq!(
            client_frame_bytes(&quorums, &limits),
            4 + 125 + limits.max_op_bytes + HEADROOM_BYTES as usize
        );
        assert!(
            client_frame_bytes(&quorums, &limits) * 100 < replica_frame_bytes(&quorums, &limits)
        );
    }
}
