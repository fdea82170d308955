//! The client table: exactly-once execution and the reply cache.
//!
//! A request is identified by (client, seq). A client may have up to `window` requests in
//! flight, and must not send seq `s` before every seq at or below `s - window` has completed.
//! The table therefore remembers, per client, the replies of the last `window` sequence numbers
//! up to the highest executed one; anything older is known to be executed already. A duplicate
//! within the window gets the cached reply again, never a second execution.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::message::{ClientId, RequestId};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ClientRecord {
    max_seq: u64,
    /// seq -> reply; `None` while the service is still executing it.
    recent: BTreeMap<u64, Option<Vec<u8>>>,
}

/// Where a request stands with respect to execution.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestStatus<'a> {
    /// Never executed: it may be ordered.
    New,
    /// Executed (or executing); here is the reply if it is known.
    Executed(Option<&'a [u8]>),
    /// Older than the client's window: executed long ago, reply no longer kept.
    Stale,
}

/// Per client: the highest executed seq and the replies of the last `window` seqs up to it
/// (docs/design.md §3.7; BFT-SMaRt keeps only the last reply). Part of every checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientTable {
    window: u64,
    clients: BTreeMap<ClientId, ClientRecord>,
}

impl ClientTable {
    /// An empty table whose window is `window` sequence numbers (the engine uses
    /// `max_pending_per_client`).
    ///
    /// # Panics
    /// If `window` is 0.
    pub fn new(window: u64) -> ClientTable {
        assert!(window > 0, "client window must be positive");
        ClientTable {
            window,
            clients: BTreeMap::new(),
        }
    }

    /// Where `id` stands: new, executed (with its reply if the service has returned it), or
    /// stale (`max_seq - seq >= window`).
    pub fn status(&self, id: &RequestId) -> RequestStatus<'_> {
        let Some(record) = self.clients.get(&id.client) else {
            return RequestStatus::New;
        };
        if let Some(reply) = record.recent.get(&id.seq) {
            return RequestStatus::Executed(reply.as_deref());
        }
        if id.seq.saturating_add(self.window) <= record.max_seq {
            return RequestStatus::Stale;
        }
        RequestStatus::New
    }

    /// Marks `id` as executing. Returns the highest seq that is now outside the window (so
    /// that callers can drop pending copies of it and older requests), if the window moved.
    ///
    /// # Panics
    /// If `id` was marked before: a request would execute twice.
    pub fn mark_executing(&mut self, id: &RequestId) -> Option<u64> {
        let window = self.window;
        let record = self.clients.entry(id.client).or_default();
        let previous = record.recent.insert(id.seq, None);
        assert!(previous.is_none(), "request {id:?} executed twice");
        if id.seq > record.max_seq {
            record.max_seq = id.seq;
            if let Some(floor) = record.max_seq.checked_sub(window) {
                record.recent = record.recent.split_off(&(floor + 1));
                return Some(floor);
            }
        }
        None
    }

    /// Stores the reply of an executing request; ignored for a request not marked executing
    /// (or already outside the window).
    pub fn record_reply(&mut self, id: &RequestId, reply: Vec<u8>) {
        if let Some(slot) = self
            .clients
            .get_mut(&id.client)
            .and_then(|r| r.recent.get_mut(&id.seq))
        {
            *slot = Some(reply);
        }
    }

    /// Clients with a record: every client that has had a request executed.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smr_crypto::PublicKey;

    fn id(seq: u64) -> RequestId {
        RequestId {
            client: PublicKey([7; 32]),
            seq,
        }
    }

    #[test]
    fn duplicate_gets_cached_reply() {
        let mut table = ClientTable::new(4);
        assert_eq!(table.status(&id(1)), RequestStatus::New);
        table.mark_executing(&id(1));
        assert_eq!(table.status(&id(1)), RequestStatus::Executed(None));
        table.record_reply(&id(1), b"ok".to_vec());
        assert_eq!(
            table.status(&id(1)),
            RequestStatus::Executed(Some(&b"ok"[..]))
        );
    }

    #[test]
    fn requests_older_than_the_window_are_stale() {
        let mut table = ClientTable::new(2);
        table.mark_executing(&id(1));
        table.mark_executing(&id(3));
        assert_eq!(table.mark_executing(&id(4)), Some(2));
        assert_eq!(table.status(&id(1)), RequestStatus::Stale);
        assert_eq!(table.status(&id(2)), RequestStatus::Stale);
        assert_eq!(table.status(&id(3)), RequestStatus::Executed(None));
        assert_eq!(table.status(&id(5)), RequestStatus::New);
    }

    #[test]
    fn out_of_order_seqs_within_the_window_execute() {
        let mut table = ClientTable::new(8);
        table.mark_executing(&id(5));
        assert_eq!(table.status(&id(3)), RequestStatus::New);
        table.mark_executing(&id(3));
        assert_eq!(table.status(&id(3)), RequestStatus::Executed(None));
    }

    #[test]
    #[should_panic(expected = "executed twice")]
    fn executing_twice_is_an_invariant_violation() {
        let mut table = ClientTable::new(8);
        table.mark_executing(&id(5));
        table.mark_executing(&id(5));
    }
}
