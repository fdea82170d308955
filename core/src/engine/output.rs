//! What one input to the engine produced: the engine's output, grouped by what the driver must
//! do with it and in which order (the shape of raft-rs's `Ready`).
//!
//! Handlers never return output: they push it into the engine's own [`Output`] buffer, and each
//! public input method hands the whole buffer over when it returns. A handler that rejects a
//! message after it already produced something therefore cannot lose what it produced: the
//! rejection is reported in [`Output::rejections`], beside the output, never instead of it.

use crate::message::{Cid, Message, RequestId};
use crate::network::{Peer, ReplicaId};
use crate::rejection::Rejection;

use super::PersistRecord;

/// One operation to execute, already deduplicated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecuteItem {
    /// The client and sequence number the reply goes to.
    pub id: RequestId,
    /// The operation, as the client signed it.
    pub op: Vec<u8>,
}

/// A message to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// To one peer (a replica or a client).
    Send {
        /// The receiver.
        to: Peer,
        /// The message.
        message: Message,
    },
    /// To every other replica.
    Broadcast(Message),
}

impl Outgoing {
    /// The message carried, whoever receives it.
    pub fn message(&self) -> &Message {
        match self {
            Outgoing::Send { message, .. } | Outgoing::Broadcast(message) => message,
        }
    }

    /// The peers that receive it when replica `me` of `n` sends it, and the message.
    pub fn into_parts(self, me: ReplicaId, n: usize) -> (Vec<Peer>, Message) {
        match self {
            Outgoing::Send { to, message } => (vec![to], message),
            Outgoing::Broadcast(message) => (
                (0..n as ReplicaId)
                    .filter(|r| *r != me)
                    .map(Peer::Replica)
                    .collect(),
                message,
            ),
        }
    }
}

/// Work for the service, performed strictly in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceWork {
    /// Execute these ordered operations, then call [`super::Engine::on_executed`] with one
    /// result per item, in order.
    Execute {
        /// The instance these operations were decided in.
        cid: Cid,
        /// The operations not executed before, in batch order.
        items: Vec<ExecuteItem>,
    },
    /// Run a read-only operation against the current state, then call
    /// [`super::Engine::on_query_result`].
    Query {
        /// Who asked.
        id: RequestId,
        /// The read-only operation.
        op: Vec<u8>,
    },
    /// After the batch of `cid` has executed (and before any later one), snapshot the service
    /// and call [`super::Engine::on_snapshot`].
    TakeSnapshot {
        /// The checkpoint's instance.
        cid: Cid,
    },
    /// Replace the service state with `snapshot` (from a checkpoint); later batches build on it.
    Restore {
        /// The instance the snapshot was taken after.
        cid: Cid,
        /// The service's own snapshot bytes.
        snapshot: Vec<u8>,
    },
}

/// What the service produced for a [`ServiceWork`], to be handed back to the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceDone {
    /// The results of an [`ServiceWork::Execute`], one per item.
    Executed {
        /// The executed instance.
        cid: Cid,
        /// One result per executed item, in order.
        results: Vec<Vec<u8>>,
    },
    /// The result of a [`ServiceWork::Query`].
    Queried {
        /// Who asked.
        id: RequestId,
        /// The query's result.
        result: Vec<u8>,
    },
    /// The snapshot asked for by [`ServiceWork::TakeSnapshot`].
    Snapshot {
        /// The checkpoint's instance.
        cid: Cid,
        /// The service's snapshot bytes.
        snapshot: Vec<u8>,
    },
}

/// The output of one input, in the order the driver performs it (the driving loop is in the
/// [`engine`](super) module docs; [`crate::runner::perform`] implements it):
///
/// 1. count and log [`Output::rejections`] (the engine has counted them in its stats already);
/// 2. send [`Output::send_now`]: these messages promise nothing that is not durable already;
/// 3. append every record of [`Output::persist`](field@Output::persist), in order, and make them durable with one
///    sync;
/// 4. send [`Output::send_after_persist`]: these may promise what step 3 recorded;
/// 5. hand [`Output::service`](field@Output::service) to the service, in order.
///
/// A message is put in `send_now` only if no record was persisted before it in the same
/// input, so performing the groups in this order keeps every message after every record that
/// was produced before it: the order the handlers produced them in, with one sync per input
/// instead of one per record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// Messages that may leave at once.
    pub send_now: Vec<Outgoing>,
    /// Records to make durable before any of `send_after_persist` leaves.
    pub persist: Vec<PersistRecord>,
    /// Messages that may leave only once every record in `persist` is durable.
    pub send_after_persist: Vec<Outgoing>,
    /// Work for the service, in order.
    pub service: Vec<ServiceWork>,
    /// Why (part of) the input was refused, beside whatever it produced. Already counted in
    /// [`super::EngineStats::rejections`].
    pub rejections: Vec<Rejection>,
}

/// Appends `more` to `to`; moves it when `to` is empty (the common case when
/// [`Output::absorb`] collects a run's outputs), so nothing is copied or reallocated.
fn append<T>(to: &mut Vec<T>, more: Vec<T>) {
    if to.is_empty() {
        *to = more;
    } else {
        to.extend(more);
    }
}

impl Output {
    /// Whether the input produced nothing at all.
    pub fn is_empty(&self) -> bool {
        self.send_now.is_empty()
            && self.persist.is_empty()
            && self.send_after_persist.is_empty()
            && self.service.is_empty()
            && self.rejections.is_empty()
    }

    /// Appends the output of a later input, so that a driver can perform the outputs of
    /// several inputs with one sync (group commit): the records of both are made durable
    /// together, before every message that either input made wait for its records. A message
    /// of `later` that may leave at once waits too if `self` has records: it may promise what
    /// `self` recorded (a vote sent again, say), which the engine took to be durable when it
    /// produced it. So every message still leaves after every record produced before it.
    pub fn absorb(&mut self, later: Output) {
        let Output {
            send_now,
            persist,
            send_after_persist,
            service,
            rejections,
        } = later;
        if self.persist.is_empty() {
            append(&mut self.send_now, send_now);
        } else {
            append(&mut self.send_after_persist, send_now);
        }
        append(&mut self.persist, persist);
        append(&mut self.send_after_persist, send_after_persist);
        append(&mut self.service, service);
        append(&mut self.rejections, rejections);
    }

    /// Every message, in the order it must be sent.
    pub fn messages(&self) -> impl Iterator<Item = &Outgoing> {
        self.send_now.iter().chain(self.send_after_persist.iter())
    }

    /// Records `record` to be made durable before any later message.
    pub(crate) fn persist(&mut self, record: PersistRecord) {
        self.persist.push(record);
    }

    fn outgoing(&mut self, outgoing: Outgoing) {
        if self.persist.is_empty() {
            self.send_now.push(outgoing);
        } else {
            self.send_after_persist.push(outgoing);
        }
    }

    /// Sends `message` to `to`, after every record persisted so far.
    pub(crate) fn send(&mut self, to: Peer, message: Message) {
        self.outgoing(Outgoing::Send { to, message });
    }

    /// Sends `message` to every other replica, after every record persisted so far.
    pub(crate) fn broadcast(&mut self, message: Message) {
        self.outgoing(Outgoing::Broadcast(message));
    }

    /// Sends `message` to every other replica only once every record of this input is durable,
    /// including records produced after it: for a message whose promise is recorded later in
    /// the same input (a PROPOSE, whose leader's own vote follows it).
    pub(crate) fn broadcast_after_persist(&mut self, message: Message) {
        self.send_after_persist.push(Outgoing::Broadcast(message));
    }

    /// Hands `work` to the service, after everything before it.
    pub(crate) fn service(&mut self, work: ServiceWork) {
        self.service.push(work);
    }
}
