//! smr: Byzantine- and crash-fault-tolerant state machine replication, modeled on BFT-SMaRt.
//! This is the crate to depend on to embed smr in your program: it runs replicas of your own
//! service, and clients of them, over QUIC.
//!
//! # Embedding
//!
//! 1. Implement [`Service`] for your state machine: [`execute`](Service::execute) an ordered
//!    operation and return the reply, [`query`](Service::query) the state for a read,
//!    [`snapshot`](Service::snapshot) and [`restore`](Service::restore) the whole state. It
//!    must be deterministic: every replica executes the same operations in the same order and
//!    must reach the same state.
//! 2. Describe the cluster in a `cluster.toml` (mode, f, every replica's address and public
//!    key, the admitted client keys): `smr keygen` writes one, with a key file per replica and
//!    a client key. Load it with [`ClusterConfig::load`] and the keys with
//!    [`IdentityKey::load`]; a replica's key file is its [`ReplicaEntry::key_file`], resolved
//!    against the config's directory, and `smr keygen` writes `client.key` next to the config.
//! 3. On each server, start its replica:
//!    `Replica::builder(&config, id, key).service(s).data_dir(d).start().await?`
//!    ([`Replica::builder`]; without [`data_dir`](ReplicaBuilder::data_dir) the state is in
//!    memory only, and [`EmptyStart::NewCluster`] is for the very first start of a new
//!    cluster). Await [`Replica::closed`] beside your stop signal: it resolves with a
//!    [`ReplicaError`] if the replica fails on its own (storage, service, a broken invariant),
//!    and the process should then exit non-zero so that a supervisor restarts it;
//!    [`Replica::shutdown`] stops it.
//! 4. In a client, [`Client::connect`] (or [`Client::builder`] for the window, the timeout and
//!    [`UnorderedReads`]) with an admitted key; [`Client::invoke`] runs an operation through
//!    consensus and returns the reply, and [`Client::invoke_unordered`] runs a read-only one
//!    without ordering, still linearizable (`docs/design.md` §3.8).
//! 5. Install a [`tracing`](https://docs.rs/tracing) subscriber (e.g.
//!    `tracing_subscriber::fmt().init()`): smr logs through `tracing`, and an embedded replica
//!    logs nothing without one.
//!
//! A whole program, with a replicated sum as the service (`smr/examples/sum.rs` in the
//! repository; `cargo run -p smr --example sum`):
//!
//! ```no_run
#![doc = include_str!("../examples/sum.rs")]
//! ```
//!
//! `smr/examples/kv.rs` is a replicated key-value map with its own serde request and reply
//! types, and `smr/examples/counter_client.rs` a client of the counter service that
//! `smr cluster --keep-running` leaves running.
//!
//! # Underneath
//! The layers are crates of their own, re-exported here for what this front page does not
//! cover: [`smr_core`] (the sans-IO, deterministic protocol engine and its tokio driver),
//! [`smr_transport`] (QUIC with identities pinned to ed25519 keys), [`smr_crypto`] (keys,
//! signatures, digests) and [`smr_modes`] (what differs between BFT and CFT: quorums).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use smr_core;
pub use smr_crypto;
pub use smr_modes;
pub use smr_transport;

pub use smr_core::cluster::{ClusterConfig, ConfigError, ReplicaEntry};
pub use smr_core::driver::{InvokeError, ReplicaStatus};
pub use smr_core::{ReplicaId, Service};
pub use smr_crypto::{IdentityKey, KeyFileError, PublicKey};
pub use smr_modes::Mode;
pub use smr_transport::{
    encode_registry, prometheus_client, Client, ClientBuilder, EmptyStart, NoService, Replica,
    ReplicaBuilder, ReplicaError, StartError, UnorderedReads, OPENMETRICS_CONTENT_TYPE,
};

/// The Rust snippets of the repository's README.md, compiled as doc-tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
