//! What an embedder implements to get a replicated service (docs/design.md §1).

/// A deterministic state machine. Every correct replica executes the same ordered operations
/// in the same order, so `execute` must depend only on the state and the operation: no clocks,
/// no randomness, no I/O whose result can differ between replicas.
///
/// The driver calls it in the order of the engine's [`ServiceWork`](crate::ServiceWork):
/// batches in cid order, with queries, snapshots and restores between them (the tokio driver
/// from its one service thread).
pub trait Service: Send + 'static {
    /// Executes an ordered operation and returns the reply for the client. Each (client, seq)
    /// executes at most once per replica; the reply is cached and resent for duplicates
    /// (docs/design.md §3.7).
    fn execute(&mut self, op: &[u8]) -> Vec<u8>;
    /// Answers a read-only request (an unordered read, §3.8) from the current state, without
    /// changing it. Replicas may answer from different states; the client needs Q identical
    /// replies.
    fn query(&self, op: &[u8]) -> Vec<u8>;
    /// Serializes the whole state, after the batch of each checkpoint cid. Must be a function
    /// of the state alone (the same bytes on every replica with the same state): a checkpoint
    /// becomes stable only when a quorum announces the same digest of it (§3.11).
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the whole state with a snapshot taken by `snapshot` (on any replica): after a
    /// restart from a stored checkpoint, or a state transfer.
    ///
    /// # Errors
    /// A message if the bytes are not a snapshot this service can read. The tokio driver then
    /// stops the replica: a checkpoint that f+1 replicas vouch for must be readable.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String>;
    /// A digest of the state, equal on replicas with equal state (reported by `smr status`);
    /// by default the blake3 digest of [`Service::snapshot`].
    fn state_digest(&self) -> smr_crypto::Digest {
        smr_crypto::digest(&self.snapshot())
    }
}
