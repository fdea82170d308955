//! smr-core: the protocol engine of smr, and its driver.
//!
//! The engine ([`engine::Engine`]) implements BFT-SMaRt's ordering protocol (Mod-SMaRt with
//! VP-Consensus) as a sans-IO state machine: inputs are `on_*` methods that take `now_ms`, and
//! each returns an [`engine::Output`]: the records to make durable, the messages to send before
//! and after them, and the work for the service. [`runner::perform`] carries an output out, the
//! same code under the tokio driver ([`driver`]), the seeded simulator (`tests/sim`) and the
//! model checker (`tests/model.rs`). The driving loop is in the [`engine`] docs; the design
//! notes are in `docs/design.md`.
//!
//! A request's path: a client ([`client::ClientEngine`]) signs it and sends it to every
//! replica (BFT), or to the leader it believes in and to every replica if that leader is slow
//! to answer (CFT);
//! [`verify::InboundVerifier`] checks sender, sizes and signatures off the engine's thread; the
//! engine pools it ([`pool`]), the leader batches and proposes it, the replicas vote (WRITE,
//! ACCEPT) on the batch's blake3 digest, and a decided batch executes in cid order through the
//! [`service::Service`]; the client table ([`clients`]) makes execution exactly-once and caches
//! replies. [`message::Message`] documents every message: who sends it, to whom, when, and what
//! the receiver does.
//!
//! Reconfiguration (issue 14) has its first stage only: [`view`] holds the membership as data
//! ([`View`]: a number, the mode, f and the [`Member`]s; view 0 is `cluster.toml`'s) and
//! [`View::check`], the pure function that judges one [`Change`] (add a replica, remove one,
//! set f) against a view and the [`Retired`] ids and keys, returning the next view or a
//! [`ReconfigRefusal`] that says what is wrong and what to do. Nothing in the engine uses it
//! yet: the engine reads its quorums from [`EngineConfig`], and no membership change is
//! ordered or accepted.

#![warn(missing_docs)]

pub mod checkpoint;
pub mod client;
pub mod clients;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod driver;
pub mod engine;
pub mod frame_limits;
pub mod message;
pub mod metrics;
pub mod network;
pub mod pool;
pub mod rejection;
pub mod runner;
pub mod service;
pub mod settings;
pub mod storage;
pub mod sync;
pub mod verify;
pub mod view;

pub use config::{ClientPolicy, EngineConfig, InvalidConfig, Limits, Timeouts, ValidEngineConfig};
pub use engine::{Engine, Outgoing, Output, ServiceDone, ServiceWork, TimerKind};
pub use message::{Message, Request, RequestKind};
pub use network::{Network, Peer, ReplicaId};
pub use rejection::Rejection;
pub use service::Service;
pub use verify::{InboundVerifier, RequestAuth, Verified, VerifiedRequests};
pub use view::{Change, Member, ReconfigRefusal, Retired, View, ViewNumber};
