//! Stateless checks of inbound messages: sender, sizes and signatures.
//!
//! This runs before the engine sees a message, and off the engine's thread in the driver: it
//! needs only the configuration, never engine state, so many messages can be verified in
//! parallel. Its output type, [`Verified`], can only be built here, so the engine only ever sees
//! messages that passed. Stateful checks (regency, leader, cid window) stay in the engine.

use std::collections::BTreeSet;
use std::sync::Arc;

use smr_crypto::{BatchVerifyError, Digest, PublicKey, SignedItem, Verifier};

use crate::config::{ClientPolicy, Limits};
use crate::message::{
    Batch, Decision, Message, ReplicaSigned, Request, RequestKind, Signed, StopData, Sync, Vote,
    VoteKind,
};
use crate::network::Peer;
use crate::rejection::Rejection;
use smr_modes::Quorums;

/// Most checkpoints a replica reports in a `StateInfo` (its stable one and a few of its own).
pub const MAX_REPORTED_CHECKPOINTS: usize = 8;

/// A message that passed [`Verifier::verify_inbound`].
#[derive(Debug, Clone)]
pub struct Verified {
    pub(crate) from: Peer,
    pub(crate) message: Message,
}

impl Verified {
    pub fn from(&self) -> Peer {
        self.from
    }
    pub fn message(&self) -> &Message {
        &self.message
    }
}

/// Everything verification needs; cheap to clone and share across threads.
#[derive(Clone)]
pub struct InboundVerifier {
    pub quorums: Quorums,
    pub replica_keys: Arc<Vec<PublicKey>>,
    pub clients: Arc<ClientPolicy>,
    pub limits: Limits,
    pub signatures: Arc<dyn Verifier>,
}

/// Signatures collected from one message, checked in one batch at the end.
struct Pending {
    messages: Vec<Vec<u8>>,
    keys: Vec<PublicKey>,
    signatures: Vec<smr_crypto::Signature>,
}

impl InboundVerifier {
    fn signing(&self) -> bool {
        self.quorums.requires_signatures()
    }

    pub fn verify_inbound(&self, from: Peer, message: Message) -> Result<Verified, Rejection> {
        let mut pending = Pending {
            messages: Vec::new(),
            keys: Vec::new(),
            signatures: Vec::new(),
        };
        match (&from, &message) {
            (Peer::Client(key), Message::Request(request)) => {
                if request.body.client != *key {
                    return Err(Rejection::Impersonation);
                }
                self.check_request(request, &mut pending, true)?;
            }
            (Peer::Client(_), Message::StatusQuery) => {}
            (Peer::Replica(_), Message::Reply(_)) | (Peer::Client(_), _) => {
                return Err(Rejection::UnexpectedMessage(message.kind_name()));
            }
            (Peer::Replica(j), msg) => {
                self.check_replica(*j)?;
                match msg {
                    Message::Propose(p) => {
                        self.check_signed(*j, p, &mut pending)?;
                        self.check_batch(&p.body.batch, &mut pending)?;
                    }
                    Message::Write(v) | Message::Accept(v) => {
                        let expected = match msg {
                            Message::Write(_) => VoteKind::Write,
                            _ => VoteKind::Accept,
                        };
                        if v.body.kind != expected {
                            return Err(Rejection::Malformed(
                                "vote kind does not match message".into(),
                            ));
                        }
                        if expected == VoteKind::Write && !self.quorums.runs_write_phase() {
                            return Err(Rejection::UnexpectedMessage("write"));
                        }
                        self.check_signed(*j, v, &mut pending)?;
                    }
                    Message::Forward(requests) => {
                        if requests.len() > self.limits.max_batch_requests {
                            return Err(Rejection::Oversize("forwarded requests"));
                        }
                        for r in requests {
                            self.check_request(r, &mut pending, false)?;
                        }
                    }
                    Message::DecisionQuery { .. }
                    | Message::Heartbeat { .. }
                    | Message::SyncQuery
                    | Message::StateQuery
                    | Message::CheckpointAnnounce { .. }
                    | Message::StateFetch { .. } => {}
                    Message::StateInfo { checkpoints, .. } => {
                        if checkpoints.len() > MAX_REPORTED_CHECKPOINTS {
                            return Err(Rejection::Oversize("reported checkpoints"));
                        }
                    }
                    Message::StateChunk {
                        total_len, bytes, ..
                    } => {
                        if bytes.len() > self.limits.state_chunk_bytes {
                            return Err(Rejection::Oversize("state chunk"));
                        }
                        if *total_len > self.limits.max_state_bytes {
                            return Err(Rejection::Oversize("state"));
                        }
                    }
                    Message::Stop(stop) => {
                        self.check_signed(*j, stop, &mut pending)?;
                        if stop.body.pending.len() > self.limits.max_batch_requests {
                            return Err(Rejection::Oversize("stop pending requests"));
                        }
                        for r in &stop.body.pending {
                            self.check_request(r, &mut pending, false)?;
                        }
                    }
                    Message::StopData(sd) => {
                        self.check_signed(*j, sd, &mut pending)?;
                        self.check_stopdata(sd, &mut pending)?;
                    }
                    // A SYNC may be relayed by any replica (answering a SyncQuery); it must be
                    // signed by the leader of its regency.
                    Message::Sync(sync) => self.check_sync(sync, &mut pending)?,
                    Message::Decisions(decisions) => {
                        if decisions.len() > self.limits.max_decisions_per_reply {
                            return Err(Rejection::Oversize("decisions"));
                        }
                        for d in decisions {
                            self.check_decision(d, &mut pending)?;
                        }
                    }
                    Message::Request(_)
                    | Message::Reply(_)
                    | Message::StatusQuery
                    | Message::Status(_) => {
                        return Err(Rejection::UnexpectedMessage(msg.kind_name()))
                    }
                }
            }
        }
        self.finish(&pending)?;
        Ok(Verified { from, message })
    }

    fn check_replica(&self, j: u32) -> Result<(), Rejection> {
        if (j as usize) < self.quorums.n() {
            Ok(())
        } else {
            Err(Rejection::UnknownSender)
        }
    }

    fn check_request(
        &self,
        request: &Request,
        pending: &mut Pending,
        direct: bool,
    ) -> Result<(), Rejection> {
        if !self.clients.admits(&request.body.client) {
            return Err(Rejection::ClientNotAdmitted);
        }
        if request.body.op.len() > self.limits.max_op_bytes {
            return Err(Rejection::Oversize("op"));
        }
        if !direct && request.body.kind != RequestKind::Ordered {
            return Err(Rejection::Malformed(
                "unordered request inside a batch".into(),
            ));
        }
        if self.signing() {
            let signature = request.signature.ok_or(Rejection::MissingSignature)?;
            pending
                .messages
                .push(Request::signing_bytes_of(&request.body));
            pending.keys.push(request.body.client);
            pending.signatures.push(signature);
        }
        Ok(())
    }

    fn check_signed<T: ReplicaSigned>(
        &self,
        sender: u32,
        signed: &Signed<T>,
        pending: &mut Pending,
    ) -> Result<(), Rejection> {
        if signed.body.signer() != sender {
            return Err(Rejection::SenderMismatch);
        }
        self.queue_replica_signature(signed, pending)
    }

    fn queue_replica_signature<T: ReplicaSigned>(
        &self,
        signed: &Signed<T>,
        pending: &mut Pending,
    ) -> Result<(), Rejection> {
        let signer = signed.body.signer();
        self.check_replica(signer)?;
        if self.signing() {
            let signature = signed.signature.ok_or(Rejection::MissingSignature)?;
            pending.messages.push(signed.signing_bytes());
            pending.keys.push(self.replica_keys[signer as usize]);
            pending.signatures.push(signature);
        }
        Ok(())
    }

    fn check_batch(&self, batch: &Batch, pending: &mut Pending) -> Result<(), Rejection> {
        if batch.requests.len() > self.limits.max_batch_requests {
            return Err(Rejection::Oversize("batch requests"));
        }
        // One request may exceed the byte limit on its own (it then travels alone).
        if batch.requests.len() > 1 && batch.size_bytes() > self.limits.max_batch_bytes {
            return Err(Rejection::Oversize("batch bytes"));
        }
        let mut ids = BTreeSet::new();
        for request in &batch.requests {
            if !ids.insert(request.id()) {
                return Err(Rejection::Malformed(
                    "request appears twice in a batch".into(),
                ));
            }
            self.check_request(request, pending, false)?;
        }
        Ok(())
    }

    /// A decision certificate is valid when it holds `accepts_to_decide` ACCEPTs from distinct
    /// replicas, all for this cid, one regency and the batch's digest, each correctly signed.
    pub(crate) fn check_certificate(
        &self,
        cid: u64,
        digest: Digest,
        certificate: &[Signed<Vote>],
    ) -> Result<(), Rejection> {
        if certificate.len() < self.quorums.accepts_to_decide()
            || certificate.len() > self.quorums.n()
        {
            return Err(Rejection::BadCertificate("wrong number of accepts"));
        }
        let regency = certificate[0].body.regency;
        let mut signers = BTreeSet::new();
        for vote in certificate {
            let v = &vote.body;
            if v.kind != VoteKind::Accept
                || v.cid != cid
                || v.regency != regency
                || v.digest != digest
            {
                return Err(Rejection::BadCertificate(
                    "accept does not match the decision",
                ));
            }
            if !signers.insert(v.replica) {
                return Err(Rejection::BadCertificate("replica counted twice"));
            }
            self.check_replica(v.replica)?;
        }
        Ok(())
    }

    fn check_stopdata(
        &self,
        sd: &Signed<StopData>,
        pending: &mut Pending,
    ) -> Result<(), Rejection> {
        let body = &sd.body;
        if body.prepared.len() as u64 > self.limits.max_instances_ahead {
            return Err(Rejection::Oversize("stopdata prepared proofs"));
        }
        let decided = body.last_decided.as_ref().map_or(0, |d| d.cid);
        if let Some(proof) = &body.last_decided {
            if proof.cid == 0 {
                return Err(Rejection::BadCertificate("decision proof for cid 0"));
            }
            self.check_certificate(proof.cid, proof.digest, &proof.certificate)?;
            for vote in &proof.certificate {
                self.queue_replica_signature(vote, pending)?;
            }
        }
        let mut cids = BTreeSet::new();
        for prepared in &body.prepared {
            if prepared.cid <= decided || !cids.insert(prepared.cid) {
                return Err(Rejection::Malformed(
                    "prepared proof for a decided or repeated cid".into(),
                ));
            }
            if prepared.epoch >= body.regency {
                return Err(Rejection::Malformed(
                    "prepared proof from a future epoch".into(),
                ));
            }
            self.check_batch(&prepared.batch, pending)?;
            if let Some(needed) = self.quorums.writes_to_accept() {
                let digest = prepared.batch.digest();
                if prepared.writes.len() < needed || prepared.writes.len() > self.quorums.n() {
                    return Err(Rejection::BadCertificate(
                        "prepared proof needs a quorum of writes",
                    ));
                }
                let mut signers = BTreeSet::new();
                for w in &prepared.writes {
                    let v = &w.body;
                    if v.kind != VoteKind::Write
                        || v.cid != prepared.cid
                        || v.regency != prepared.epoch
                        || v.digest != digest
                    {
                        return Err(Rejection::BadCertificate(
                            "write does not match the prepared value",
                        ));
                    }
                    if !signers.insert(v.replica) {
                        return Err(Rejection::BadCertificate("replica counted twice"));
                    }
                    self.queue_replica_signature(w, pending)?;
                }
            }
        }
        Ok(())
    }

    fn check_sync(&self, sync: &Signed<Sync>, pending: &mut Pending) -> Result<(), Rejection> {
        let body = &sync.body;
        if body.leader != self.quorums.leader_of(body.regency) {
            return Err(Rejection::WrongLeader {
                from: body.leader,
                regency: body.regency,
                leader: self.quorums.leader_of(body.regency),
            });
        }
        self.queue_replica_signature(sync, pending)?;
        if body.proofs.len() < self.quorums.stopdata_to_collect()
            || body.proofs.len() > self.quorums.n()
        {
            return Err(Rejection::BadCertificate("sync needs n-f stopdata"));
        }
        let mut signers = BTreeSet::new();
        for sd in &body.proofs {
            if sd.body.regency != body.regency {
                return Err(Rejection::BadCertificate("stopdata from another regency"));
            }
            if !signers.insert(sd.body.replica) {
                return Err(Rejection::BadCertificate("replica counted twice"));
            }
            self.queue_replica_signature(sd, pending)?;
            self.check_stopdata(sd, pending)?;
        }
        Ok(())
    }

    fn check_decision(&self, decision: &Decision, pending: &mut Pending) -> Result<(), Rejection> {
        self.check_batch(&decision.batch, pending)?;
        let digest = decision.batch.digest();
        self.check_certificate(decision.cid, digest, &decision.certificate)?;
        for vote in &decision.certificate {
            self.queue_replica_signature(vote, pending)?;
        }
        Ok(())
    }

    fn finish(&self, pending: &Pending) -> Result<(), Rejection> {
        if pending.signatures.is_empty() {
            return Ok(());
        }
        let items: Vec<SignedItem<'_>> = (0..pending.signatures.len())
            .map(|i| SignedItem {
                key: &pending.keys[i],
                message: &pending.messages[i],
                signature: &pending.signatures[i],
            })
            .collect();
        self.signatures
            .verify_batch(&items)
            .map_err(|BatchVerifyError { index, reason }| Rejection::BadSignature { index, reason })
    }
}
