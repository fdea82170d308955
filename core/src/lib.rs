//! The protocol engine (placeholder in the transport branch: only the network seam).

pub mod network;
