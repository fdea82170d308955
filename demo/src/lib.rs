//! smr-demo: the `smr` command and what it is built from.
//!
//! The binary (`src/main.rs`) has one subcommand per job:
//! - `smr keygen` writes replica and client keys and a `cluster.toml` for replicas on free
//!   127.0.0.1 ports ([`keygen`]);
//! - `smr replica` runs one replica of a demo service over QUIC until SIGINT or SIGTERM, and
//!   with `--metrics-addr` serves its Prometheus metrics ([`metrics_http`]);
//! - `smr client` runs one counter or key-value operation and prints the result;
//! - `smr status` asks every replica for its regency, leader, last decided cid and state digest
//!   ([`status`]), once or every second (`--watch`), as a table or as JSON (`--json`);
//! - `smr cluster` is the one-command demo: it starts replicas as child processes in a temporary
//!   directory ([`local`]), runs a short concurrent workload, shows that every replica ends with
//!   the same state digest, and cleans up;
//! - `smr bench` is the throughput/latency benchmark ([`mod@bench`]): replicas of the null service
//!   as child processes, closed-loop clients in the bench process, and a verification-ceiling
//!   microbenchmark.
//!
//! The library part holds what the binary and the process-level tests share: the demo services
//! ([`services`]: a counter and a key-value map, deterministic and with a compact binary
//! encoding), key and config generation, status formatting, the child-process cluster with
//! its kill-on-drop guards, and a linearizability checker for recorded counter histories
//! ([`history`]).

pub mod bench;
pub mod history;
pub mod keygen;
pub mod local;
pub mod metrics_http;
pub mod output;
pub mod services;
pub mod status;

pub use services::{Counter, CounterOp, CounterReply, KeyValue, KvOp, KvReply, ServiceKind};
