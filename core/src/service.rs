//! What an embedder implements to get a replicated service.

/// A deterministic state machine. Every correct replica executes the same ordered operations
/// in the same order, so `execute` must depend only on the state and the operation: no clocks,
/// no randomness, no I/O whose result can differ between replicas.
pub trait Service: Send + 'static {
    /// Executes an ordered operation and returns the reply for the client.
    fn execute(&mut self, op: &[u8]) -> Vec<u8>;
    /// Answers a read-only request without changing the state.
    fn query(&self, op: &[u8]) -> Vec<u8>;
    /// Serializes the whole state.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the whole state with a snapshot taken by `snapshot` (on any replica).
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String>;
    /// A digest of the state, equal on replicas with equal state.
    fn state_digest(&self) -> smr_crypto::Digest {
        smr_crypto::digest(&self.snapshot())
    }
}
