//! The tokio driver: runs an [`Engine`] over a [`Network`], and a [`ClientEngine`] for clients.
//!
//! # Replica threads and tasks
//! - **Reader task:** takes frames from the network and deals them to the verify workers,
//!   except when what it took needs no signature check and their workers are idle: it then
//!   decodes and checks the frames itself, as one run, and hands them to the engine directly
//!   (`verify_inline`): in BFT only a few small client frames ([`MAX_INLINE_RUN_FRAMES`]: at
//!   low load a worker's run would hold them alone), in CFT, which signs nothing, any batch of
//!   small frames ([`MAX_UNSIGNED_INLINE_RUN_BYTES`]). The hop costs two thread wake-ups.
//!   Each worker has two queues (lanes), one for replica frames and one for client frames, each
//!   with half of `verify_queue_frames` and `verify_queue_bytes`, so that client frames (anyone's,
//!   under an open client policy) never fill the room replica frames need; in a lane each peer
//!   may have only a share queued (a replica `1 / n`, a client key
//!   `1 / `[`VERIFY_LANE_CLIENT_SHARES`], never less than a verify run). The reader never
//!   waits for room in a lane: it holds a frame its lane or its peer's share has no room for
//!   (and every later frame of that peer, so each peer's order is kept), and queues the held
//!   frames in turns, peer by peer, as the worker takes frames. Held frames keep their room in
//!   the transport's receive queue ([`Network::recv_many_holding_room`]) until they are queued,
//!   so the peer that keeps its share full waits on its own share there (and QUIC flow control),
//!   and every other peer's frames are still taken: one peer keeping its lane full (its worker
//!   busy or stalled) holds up no other peer beyond its share of that lane
//!   (docs/design.md §7.8). Beyond the transport's receive-queue frames of one kind of sender
//!   held ([`Network::receive_queue_frames`]; `verify_queue_frames` and `verify_queue_bytes`
//!   if it has none), the reader takes only the other kind's ([`Network::recv_many_from`]).
//! - **Verify workers** (`verify_workers` OS threads): each takes every frame waiting in its
//!   replica lane, then in its client lane (up to [`MAX_VERIFY_RUN_FRAMES`] frames or [`MAX_VERIFY_RUN_BYTES`] bytes;
//!   a quarter of each run is left to waiting client frames, [`CLIENT_SHARE_OF_RUN_FRAMES`]), decodes
//!   them and runs [`InboundVerifier::verify_run`] on the run: one batch verification of all
//!   their signatures, so the cost per signature falls as load rises. A client request on its
//!   own client's connection is authenticated by that channel, without a signature check
//!   ([`RequestAuth::Channel`], docs/design.md §5), and remembered, so that the byte-identical
//!   copy in the leader's PROPOSE is not verified either ([`VerifiedRequests`]). The engine
//!   thread verifies the signatures of such requests only where it relays them (the leader's
//!   PROPOSE, a follower's Forward or STOP; [`Engine::set_request_verifier`]).
//!   Rejections are counted and logged here.
//! - **Engine task:** the only owner of the engine. It takes verified messages, timer expiries
//!   (pulled from [`Engine::next_deadline_ms`]) and what the service produced, and performs each
//!   input's [`Output`] through the shared [`runner::perform`]: the records are appended to the
//!   write-ahead log and synced once, before any message that may promise them leaves. The
//!   messages of one verified run (up to [`MAX_VERIFY_RUN_FRAMES`]) are handled one by one and
//!   their outputs performed together ([`Output::absorb`]): one sync per run, not per message
//!   (group commit), so the fsyncs per operation fall as load rises. Without
//!   a data dir the replica keeps nothing (it says so at start), and like a replica with an
//!   empty data dir it always starts rejoining ([`Engine::rejoin`]): it abstains from votes
//!   until it has caught up past anything it can have voted on before.
//! - **Service thread:** executes batches and queries on the embedder's [`Service`], in cid
//!   order, so a slow service never stalls the network or the protocol.
//!
//! # Fail-stop
//! A replica that cannot go on stops, and says why, rather than running on half-dead: a
//! storage error (I/O, disk full), a service that panics or cannot restore a checkpoint, a
//! broken invariant (a panic) in the engine task or a verify worker, and a network that stops
//! delivering all end the engine task with a [`ReplicaError`]. It is logged once, at error
//! level, and [`ReplicaHandle::closed`] resolves to it, so the embedder (the `smr replica`
//! command exits non-zero) can stop the process and let a supervisor restart it from its data
//! dir. Nothing that may promise an unpersisted record leaves after a storage error.
//!
//! Every queue between them is bounded (the verify workers' in frames and in bytes), except the
//! two between the engine and the service.
//! The engine bounds the batches in them itself: execution holds at each checkpoint cid until
//! the service's snapshot is in, so at most `checkpoint_period` decided batches wait. Unordered
//! reads (one query each) are not bounded there; only the inbound queues limit them.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smr_crypto::{Digest, PublicKey, Signer, Verifier};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;

use crate::client::{ClientAction, ClientConfig, ClientEngine, ClientError, Completed};
use crate::codec;
use crate::engine::{Engine, ExecuteItem, Output, PersistRecord, ServiceDone, ServiceWork};
use crate::message::{
    Cid, Message, Participation, Regency, ReplicaId, ReplyStatus, RequestId, RequestKind,
    StatusReport,
};
use crate::metrics::ReplicaMetrics;
use crate::network::{InboundFrame, Network, Peer, SendError, Senders};
use crate::pool::SESSIONS_PER_KEY_IN_POOL;
use crate::rejection::Rejection;
use crate::runner::{self, GroupCommit, Host};
use crate::service::Service;
use crate::storage::FsyncPolicy;
use crate::storage::{LogSync, Recovered, StorageError, Wal};
use crate::verify::{InboundVerifier, RequestAuth, Verified, VerifiedRequests};
use crate::{EngineConfig, InvalidConfig};

/// Most frames a verify worker takes from its queue for one batch verification.
pub const MAX_VERIFY_RUN_FRAMES: usize = 128;
/// Most frame bytes a verify worker takes for one batch verification (a run stops after the
/// frame that crosses it; the client lane's share, [`CLIENT_SHARE_OF_RUN_BYTES`], comes on top
/// when replica frames took the rest).
pub const MAX_VERIFY_RUN_BYTES: usize = 256 * 1024;
/// Frames of every verify run left to the client lane while client frames wait: a replica
/// that keeps its lane full (validly signed votes faster than the worker checks them) cannot
/// keep the worker's client lane full, and with it, once the network reader holds client
/// frames, every client's frames at this replica (docs/design.md §7.8).
pub const CLIENT_SHARE_OF_RUN_FRAMES: usize = MAX_VERIFY_RUN_FRAMES / 4;
/// Frame bytes of every verify run left to the client lane while client frames wait (see
/// [`CLIENT_SHARE_OF_RUN_FRAMES`]).
pub const CLIENT_SHARE_OF_RUN_BYTES: usize = MAX_VERIFY_RUN_BYTES / 4;
/// How many client keys together can fill a verify lane: each may have `1 / 16` of it queued
/// (at least a verify run's frames), as each may hold `1 / 16` of the QUIC transport's receive
/// queue for clients.
pub const VERIFY_LANE_CLIENT_SHARES: usize = 16;
/// Most client requests the verified-request cache remembers (about 80 bytes each). It only
/// needs to span the time between a request reaching a replica directly and in a PROPOSE (a
/// few batches of every client's window), so a few thousand do.
const MAX_VERIFIED_REQUESTS: usize = 1 << 13;

/// Tuning of the driver itself (not of the protocol).
#[derive(Clone, Debug)]
pub struct DriverOptions {
    /// Threads that decode and verify inbound messages [default: half the cores, 1 to 4].
    pub verify_workers: usize,
    /// Frames queued per verify worker: half for replica frames, half for client frames, each
    /// peer a share of its half (module docs). Also the least the network reader may hold of
    /// one kind of sender for lanes without room before it takes only the other kind's (the
    /// transport's receive-queue frames, if larger: [`Network::receive_queue_frames`]).
    pub verify_queue_frames: usize,
    /// Bytes of frames queued per verify worker, half for replica frames and half for client
    /// frames (a frame larger than its peer's share passes alone, charged the share), each peer a share of its
    /// half; also the most the reader holds of one kind, in bytes, over a transport that gives
    /// room back at once. With the transport's
    /// own bounds, this keeps what a flood of large frames can pile up in memory bounded in
    /// bytes, not only in frames.
    pub verify_queue_bytes: usize,
    /// How a replica whose data dir is empty (or that has none) starts; a data dir that holds
    /// records is always recovered from, whatever this says.
    pub empty_start: EmptyStart,
}

/// How a replica with an empty data dir (or none) starts. It cannot tell a new disk from a
/// lost one, so the default assumes the worst (docs/design.md §3.12).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EmptyStart {
    /// As a replica that may have lost its state after voting ([`Engine::rejoin`]): it takes
    /// no part in votes until n−f of its peers said how far they voted and it has caught up a
    /// window past that, which the others reach by ordering empty batches for it. The safe
    /// default; replicas that all start this way wait for each other for ever.
    #[default]
    Rejoin,
    /// As a replica of a brand-new cluster that has never voted ([`Engine::new`]): it votes at
    /// once. For the first start of a new cluster (which then starts once any n−f run). Used on
    /// a replica that lost its disk, it may vote against what it voted before, which counts as
    /// a fault against `f`.
    NewCluster,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            verify_workers: default_verify_workers(),
            verify_queue_frames: 4096,
            verify_queue_bytes: 64 * 1024 * 1024,
            empty_start: EmptyStart::Rejoin,
        }
    }
}

/// Half the cores, at least one and at most four. Verification is most of a BFT replica's work,
/// but the engine, the transport and the service need the other half; and one worker per two
/// cores also makes each worker's runs, and so its verification batches, larger. (On the 2-core
/// benchmark machine, where four replicas share the cores, one worker per replica used about 10%
/// less CPU per request than two.)
fn default_verify_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() / 2)
        .unwrap_or(1)
        .clamp(1, 4)
}

/// A live view of a replica, for operators and tests; republished after every engine input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// The current regency.
    pub regency: Regency,
    /// That regency's leader.
    pub leader: ReplicaId,
    /// The highest cid handed to the service ([`Engine::last_executed`]).
    pub last_decided: Cid,
    /// Requests in the pool ([`Engine::pending_requests`]).
    pub pending_requests: u64,
    /// Messages refused since start, by the verify workers or the engine.
    pub rejected_messages: u64,
    /// Frames since start that did not decode into a [`Message`].
    pub decode_errors: u64,
    /// Messages this replica built that were larger than the transport's frame limit, and so
    /// never sent (each logged as an error). The replica frame limit is derived from the
    /// config ([`crate::frame_limits`]), so only a service's oversize reply can cause this.
    pub frames_too_large: u64,
    /// Whether the replica votes, or abstains while it rejoins ([`Engine::participation`]).
    pub participation: Participation,
}

/// What waits for an fsync in the driver's group commit ([`GroupCommit`]).
enum HeldAction {
    /// A message's frame to send to each of `to`: only the encoding, and of the message what
    /// sending needs ([`Sending`]), are held.
    Send {
        to: Vec<Peer>,
        sending: Sending,
        frame: Vec<u8>,
    },
    /// A command for the service thread.
    Service(ServiceCommand),
}

impl HeldAction {
    /// The bytes this action holds, as [`MAX_HELD_BYTES`] counts them: the action itself, and
    /// what it owns on the heap (a frame's allocation, the peers it goes to; a command's
    /// operations, each with its item, and snapshot).
    fn held_bytes(&self) -> usize {
        let owned = match self {
            HeldAction::Send { to, frame, .. } => frame
                .capacity()
                .saturating_add(to.len().saturating_mul(std::mem::size_of::<Peer>())),
            HeldAction::Service(ServiceCommand::Execute { items, .. }) => items
                .iter()
                .map(|item| {
                    item.op
                        .len()
                        .saturating_add(std::mem::size_of::<ExecuteItem>())
                })
                .fold(0usize, usize::saturating_add),
            HeldAction::Service(ServiceCommand::Query { op, .. }) => op.len(),
            HeldAction::Service(ServiceCommand::Restore { snapshot, .. }) => snapshot.len(),
            HeldAction::Service(
                ServiceCommand::Status { .. } | ServiceCommand::Snapshot { .. },
            ) => 0,
        };
        owned.saturating_add(std::mem::size_of::<HeldAction>())
    }
}

/// What sending a message needs of it once it is encoded ([`EngineLoop::send_frame`]).
#[derive(Clone, Copy, Debug)]
struct Sending {
    /// [`Message::kind_name`], for the log.
    kind: &'static str,
    /// What [`Timing`] notes as the frame leaves, and where a reply goes.
    about: SendingAbout,
}

#[derive(Clone, Copy, Debug)]
enum SendingAbout {
    /// A PROPOSE of this cid.
    Propose(Cid),
    /// A reply to this request, for the connection of this route ([`crate::message::Reply::route`]).
    Reply {
        id: RequestId,
        route: u64,
    },
    Other,
}

impl Sending {
    fn of(message: &Message) -> Sending {
        let about = match message {
            Message::Propose(propose) => SendingAbout::Propose(propose.body.cid),
            Message::Reply(reply) => SendingAbout::Reply {
                id: RequestId {
                    client: reply.client,
                    session: reply.session,
                    seq: reply.seq,
                },
                route: reply.route(),
            },
            _ => SendingAbout::Other,
        };
        Sending {
            kind: message.kind_name(),
            about,
        }
    }
}

/// How one fsync on the blocking thread ended, and how long it took.
type FsyncEnded = (Result<(), StorageError>, Duration);

/// Most actions held behind a running fsync: once they, or [`MAX_HELD_BYTES`], are reached,
/// the engine takes no input until the fsync ends (a slow disk slows the replica, and never
/// makes it hold without bound). The output that reaches the bound is held in full, so the
/// bound is passed by at most one engine output (a timer's, or one input's: a verified run).
const MAX_HELD_ACTIONS: usize = 16_384;
/// Most bytes of actions held behind a running fsync ([`HeldAction::held_bytes`]: a send by its
/// frame, a service command by its operations and snapshot).
const MAX_HELD_BYTES: usize = 64 << 20;

#[cfg(test)]
thread_local! {
    /// Smaller bounds on held actions (actions, bytes) for the replicas this thread starts:
    /// tests of the bound.
    static TEST_MAX_HELD: std::cell::Cell<Option<(usize, usize)>> =
        const { std::cell::Cell::new(None) };
}

/// The bounds on held actions (actions, bytes): [`MAX_HELD_ACTIONS`] and [`MAX_HELD_BYTES`]
/// (in test builds, what the thread's `TEST_MAX_HELD` sets).
fn held_bound() -> (usize, usize) {
    #[cfg(test)]
    if let Some(bound) = TEST_MAX_HELD.with(std::cell::Cell::get) {
        return bound;
    }
    (MAX_HELD_ACTIONS, MAX_HELD_BYTES)
}

enum ServiceCommand {
    Execute {
        cid: Cid,
        items: Vec<ExecuteItem>,
    },
    Query {
        id: RequestId,
        op: Vec<u8>,
    },
    Status {
        to: StatusRoute,
        report: StatusReport,
    },
    Snapshot {
        cid: Cid,
    },
    Restore {
        cid: Cid,
        snapshot: Vec<u8>,
    },
}

enum ServiceOutput {
    Done(ServiceDone),
    Status {
        to: StatusRoute,
        report: StatusReport,
    },
    /// The service cannot go on; the last thing the service thread sends.
    Failed(ReplicaError),
}

/// Where a status answer goes: the asking client key's connection that announced `route`
/// ([`Message::StatusQuery`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StatusRoute {
    client: PublicKey,
    route: u64,
}

enum EngineInput {
    /// A verify worker's run, in arrival order: one hand-off and one wake-up for all of it.
    Messages(Vec<Verified>),
    StatusQuery(StatusRoute),
    /// A verify worker panicked; the last thing it sends.
    Failed(ReplicaError),
}

/// Why a running replica stopped on its own (fail-stop; see the module docs). The replica
/// stops taking part at once; restart the process, which recovers from its data dir (after a
/// [`ReplicaError::Storage`] whose cause is not a full disk or a size limit, on an empty one:
/// see there).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    /// Appending to or syncing the write-ahead log, or writing a checkpoint, failed (an I/O
    /// error, a full disk, a file-size limit). Nothing that promised the lost records was sent.
    /// After a failed fsync the operating system may already have dropped the data it could not
    /// write and report that only once, so a restart on the same data dir could recover, and
    /// act on, records that are not on the disk: once the disk is fixed, move the data dir
    /// aside and restart on an empty one (the replica rejoins by state transfer; docs/design.md
    /// §3.12).
    #[error("storage failed, stopping the replica: {0}")]
    Storage(String),
    /// The service panicked or its thread ended.
    #[error("the service failed, stopping the replica: {0}")]
    Service(String),
    /// The service could not restore a checkpoint (its own from the data dir, or one that f+1
    /// replicas vouched for in a state transfer): going on would serve a state that differs
    /// from the others'. Restarting restores the same checkpoint again, so it fails again
    /// until the service can read it.
    #[error(
        "the service cannot restore the checkpoint at cid {cid}, stopping the replica: {error}"
    )]
    Restore {
        /// The checkpoint's cid.
        cid: Cid,
        /// The service's error.
        error: String,
    },
    /// A thread or task of the replica panicked: a broken invariant.
    #[error("the {component} panicked, stopping the replica: {message}")]
    Panicked {
        /// Which part: `engine task`, `verify worker`, `network reader`.
        component: &'static str,
        /// The panic's message.
        message: String,
    },
    /// The network stopped delivering messages while the replica ran (its transport failed or
    /// was shut down first).
    #[error("the network stopped delivering messages, stopping the replica")]
    NetworkClosed,
    /// The transport under the replica failed (reported by the embedding layer).
    #[error("the transport failed, stopping the replica: {0}")]
    Transport(String),
}

/// The message of a caught panic.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// How the engine task ended: `None` while it runs, then `Ok` after
/// [`ReplicaHandle::shutdown`] or the error that stopped it.
type Outcome = Option<Result<(), ReplicaError>>;

/// A running replica. Dropping the handle does not stop it; call [`ReplicaHandle::shutdown`].
pub struct ReplicaHandle {
    status: watch::Receiver<ReplicaStatus>,
    shutdown: Arc<Notify>,
    outcome: watch::Receiver<Outcome>,
    metrics: Arc<ReplicaMetrics>,
}

impl ReplicaHandle {
    /// The replica's latest status.
    pub fn status(&self) -> ReplicaStatus {
        self.status.borrow().clone()
    }

    /// The replica's metrics (docs/metrics.md), updated by the driver as it runs: register
    /// them in a `prometheus_client` registry as a collector to expose them.
    pub fn metrics(&self) -> Arc<ReplicaMetrics> {
        self.metrics.clone()
    }

    /// Resolves once the replica has stopped: `Ok` after [`ReplicaHandle::shutdown`], or the
    /// [`ReplicaError`] that stopped it on its own (already logged). Await it beside your own
    /// stop signal and exit (non-zero) on an error, so that a supervisor restarts the process.
    pub async fn closed(&self) -> Result<(), ReplicaError> {
        let mut outcome = self.outcome.clone();
        let outcome = outcome
            .wait_for(Option::is_some)
            .await
            .map(|done| done.clone());
        match outcome {
            Ok(Some(result)) => result,
            // The watchdog publishes before it drops the sender, unless the runtime is
            // dropped first.
            _ => Err(ReplicaError::Panicked {
                component: "engine watchdog",
                message: "ended without an outcome".to_string(),
            }),
        }
    }

    /// Whether the replica has stopped, and how, without waiting.
    pub fn outcome(&self) -> Option<Result<(), ReplicaError>> {
        self.outcome.borrow().clone()
    }

    /// Stops the engine task and waits for it. The network is the caller's to shut down. A
    /// failure that stopped the replica before is not repeated here: see
    /// [`ReplicaHandle::closed`].
    pub async fn shutdown(self) {
        self.shutdown.notify_one();
        let _ = self.closed().await;
    }
}

/// Why a replica could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A stored record is not a [`PersistRecord`]; holds the decoder's description.
    #[error("the data directory holds a record that does not decode ({0}); it was written by an incompatible version or is damaged. {advice}", advice = crate::storage::REJOIN_ADVICE)]
    UndecodableRecord(String),
    /// [`Engine::recover`] refused the records (a checkpoint that does not decode).
    #[error("cannot rebuild the replica from its data directory: {0}. {advice}", advice = crate::storage::REJOIN_ADVICE)]
    Recovery(String),
    /// The engine configuration breaks a rule (see [`InvalidConfig`]); nothing was started.
    #[error("invalid engine configuration: {0}")]
    Config(#[from] InvalidConfig),
    /// The operating system refused a thread of the replica (a verify worker or the service
    /// thread); what had started stops once the returned channels close.
    #[error("cannot start a thread of the replica: {0}")]
    Thread(std::io::Error),
    /// The operating system's random source failed, so a rejoining replica has no fresh
    /// incarnation nonce ([`Engine::rejoin`]).
    #[error("cannot draw a rejoin nonce from the operating system's random source: {0}")]
    Random(String),
}

/// A fresh incarnation nonce for [`Engine::rejoin`], from the operating system's random
/// source: it must differ from every earlier incarnation's of this replica, so that no report
/// made for one before the store was lost counts (docs/design.md §3.12 item 6).
fn rejoin_nonce() -> Result<NonZeroU64, StartError> {
    use rand_core::RngCore;
    let mut bytes = [0u8; 8];
    rand_core::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| StartError::Random(e.to_string()))?;
    // 0 means "not rejoining" on the wire; one nonce in 2^64 is remapped.
    Ok(NonZeroU64::new(u64::from_le_bytes(bytes)).unwrap_or(NonZeroU64::MIN))
}

/// Decodes what a store recovered into the engine's records.
fn decode_recovered(recovered: Recovered) -> Result<Vec<PersistRecord>, StartError> {
    let mut records = Vec::with_capacity(recovered.records.len() + 1);
    for bytes in recovered.checkpoint.iter().chain(recovered.records.iter()) {
        records.push(
            codec::decode::<PersistRecord>(bytes)
                .map_err(|e| StartError::UndecodableRecord(e.to_string()))?,
        );
    }
    Ok(records)
}

/// Starts a replica over `network`. With `storage` (a write-ahead log and what it recovered),
/// the replica is rebuilt from it and persists every promise before sending it; without, it
/// runs in memory. The engine, the verify workers and the service thread run until
/// [`ReplicaHandle::shutdown`].
///
/// # Errors
/// [`StartError::Config`] if `config` does not validate ([`EngineConfig::validate`]), checked
/// before anything starts; the others if the stored records cannot rebuild the replica.
pub fn start_replica<N: Network>(
    config: EngineConfig,
    signer: Arc<dyn Signer>,
    signatures: Arc<dyn Verifier>,
    network: Arc<N>,
    service: Box<dyn Service>,
    options: DriverOptions,
    storage: Option<(Wal, Recovered)>,
) -> Result<ReplicaHandle, StartError> {
    let config = config.validate()?;
    let metrics = Arc::new(ReplicaMetrics::default());
    let signatures: Arc<dyn Verifier> = Arc::new(CountingVerifier {
        inner: signatures,
        metrics: metrics.clone(),
    });
    let verifier = InboundVerifier {
        quorums: config.quorums,
        replica_keys: Arc::new(config.replica_keys.clone()),
        clients: Arc::new(config.clients.clone()),
        limits: config.limits.clone(),
        signatures,
    };
    let me = config.me;
    let mode = config.quorums.mode().to_string();
    let max_state_bytes = config.limits.max_state_bytes;
    let max_instances_ahead = config.limits.max_instances_ahead;
    let max_pending_per_client = config.limits.max_pending_per_client;
    let (engine, initial_output, wal) = match storage {
        None => {
            // A restarted in-memory replica has forgotten its votes: it always starts by
            // asking its peers how far they voted (docs/design.md §3.12).
            if options.empty_start == EmptyStart::NewCluster {
                tracing::warn!(replica = me, mode = %mode, "replica starting without a data dir as a replica of a brand-new cluster (new-cluster): it votes at once; state is kept in memory only and is lost on restart");
                (Engine::new(config, signer), Output::default(), None)
            } else {
                tracing::warn!(replica = me, mode = %mode, "replica starting without a data dir: state is kept in memory only and is lost on restart; it rejoins (abstains from votes until it has caught up with its peers)");
                let (engine, output) = Engine::rejoin(config, signer, rejoin_nonce()?);
                (engine, output, None)
            }
        }
        Some((wal, recovered)) => {
            if recovered.truncated_tail_bytes > 0 {
                tracing::warn!(replica = me, bytes = recovered.truncated_tail_bytes, dir = %wal.dir().display(), "cut a torn tail off the write-ahead log");
            }
            let records = decode_recovered(recovered)?;
            if options.empty_start == EmptyStart::NewCluster && !records.is_empty() {
                tracing::warn!(
                    replica = me,
                    "new-cluster ignored: the data dir holds this replica's state"
                );
            }
            let (engine, output) = if records.is_empty()
                && options.empty_start == EmptyStart::NewCluster
            {
                tracing::warn!(replica = me, mode = %mode, dir = %wal.dir().display(), policy = %wal.policy(), "the data dir is empty: starting as a replica of a brand-new cluster (new-cluster), which votes at once");
                (Engine::new(config, signer), Output::default())
            } else if records.is_empty() {
                // An empty data dir may be a brand-new one or a lost one, and a replica that
                // lost its disk must not vote against what it voted before: it rejoins. In a
                // brand-new cluster its peers report cid 0 and it takes part at once.
                tracing::warn!(replica = me, mode = %mode, dir = %wal.dir().display(), policy = %wal.policy(), "the data dir is empty: starting as a rejoining replica, which abstains from votes until n-f peers said how far they voted and it has caught up past that (immediately in a brand-new cluster)");
                Engine::rejoin(config, signer, rejoin_nonce()?)
            } else {
                tracing::info!(replica = me, mode = %mode, records = records.len(), dir = %wal.dir().display(), policy = %wal.policy(), "replica starting from its data dir");
                Engine::recover(config, signer, records).map_err(StartError::Recovery)?
            };
            if !engine.participation().participates() {
                tracing::warn!(replica = me, participation = %engine.participation(), "the replica abstains from votes until it has caught up");
            }
            (engine, output, Some(wal))
        }
    };

    let mut engine = engine;
    // Direct requests are authenticated by channel (the verify workers' `RequestAuth::Channel`
    // below); the engine checks their signatures where it relays them.
    engine.set_request_verifier(verifier.signatures.clone());

    let rejected = Arc::new(AtomicU64::new(0));
    let decode_errors = Arc::new(AtomicU64::new(0));
    let undecodable_log = Arc::new(LogThrottle::new(PEER_EVENT_LOG_INTERVAL_MS));
    // Inputs are whole runs: this bounds the messages waiting for the engine to about
    // `verify_queue_frames`.
    let (input_tx, input_rx) =
        mpsc::channel::<EngineInput>((options.verify_queue_frames / MAX_VERIFY_RUN_FRAMES).max(1));

    // Verify workers.
    let verified_requests = Arc::new(VerifiedRequests::new(
        verifier
            .limits
            .max_pending_total
            .clamp(1024, MAX_VERIFIED_REQUESTS),
    ));
    let mut worker_txs = Vec::new();
    let mut worker_backlogs = Vec::new();
    let lane_bytes = (options.verify_queue_bytes / 2).clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
    let lane_frames = (options.verify_queue_frames / 2).max(1);
    let replicas_in_cluster = verifier.quorums.n();
    // What the reader may hold of each kind of sender (replicas, clients) for lanes without
    // room, in frames and bytes: over a transport that keeps the frames' room taken meanwhile
    // (QUIC), its receive queue's frames for that kind, so that only the transport's per-peer
    // shares hold a peer back; else the verify queue's bounds.
    let max_held = [Senders::Replicas, Senders::Clients].map(|senders| {
        match network.receive_queue_frames(senders) {
            // Each held frame still holds its room in the transport, which bounds their bytes
            // per peer and in all.
            Some(frames) => (frames.max(options.verify_queue_frames), usize::MAX),
            None => (options.verify_queue_frames, options.verify_queue_bytes),
        }
    });
    let runtime = tokio::runtime::Handle::current();
    for w in 0..options.verify_workers.max(1) {
        let mut lanes = Vec::new();
        let mut rxs = Vec::new();
        // Each replica may have a `1 / n` share of its lane queued, each client key
        // `1 / VERIFY_LANE_CLIENT_SHARES` of its (and never less than a verify run).
        for shares in [replicas_in_cluster, VERIFY_LANE_CLIENT_SHARES] {
            let (tx, rx) = mpsc::channel::<InboundFrame>(lane_frames);
            let queued_bytes = Arc::new(QueuedBytes::new(lane_bytes, lane_frames, shares));
            lanes.push((tx, queued_bytes.clone()));
            rxs.push((rx, queued_bytes));
        }
        let client_rx = rxs.pop().expect("two lanes");
        let replica_rx = rxs.pop().expect("two lanes");
        worker_txs.push(lanes);
        let backlog = Arc::new(AtomicUsize::new(0));
        worker_backlogs.push(backlog.clone());
        let worker = VerifyWorker {
            backlog,
            verifier: verifier.clone(),
            cache: verified_requests.clone(),
            input_tx: input_tx.clone(),
            rejected: rejected.clone(),
            decode_errors: decode_errors.clone(),
            undecodable_log: undecodable_log.clone(),
            metrics: metrics.clone(),
        };
        let runtime = runtime.clone();
        std::thread::Builder::new()
            .name(format!("smr-verify-{w}"))
            .spawn(move || {
                let (mut replica_rx, mut client_rx) = (replica_rx, client_rx);
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    worker.run(&runtime, &mut replica_rx, &mut client_rx)
                }));
                // Reported while the lanes are still open, so the engine learns of the panic
                // before the reader finds a lane closed.
                if let Err(payload) = run {
                    let _ = worker.input_tx.blocking_send(EngineInput::Failed(
                        ReplicaError::Panicked {
                            component: "verify worker",
                            message: panic_message(&*payload),
                        },
                    ));
                }
            })
            .map_err(StartError::Thread)?;
    }
    // The reader verifies a lone small frame itself when its worker is idle (see
    // [`verify_inline`]); what it verifies goes to the engine on the same channel.
    let inline = VerifyWorker {
        backlog: Arc::new(AtomicUsize::new(0)),
        verifier: verifier.clone(),
        cache: verified_requests.clone(),
        input_tx,
        rejected: rejected.clone(),
        decode_errors: decode_errors.clone(),
        undecodable_log,
        metrics: metrics.clone(),
    };

    // Reader task: deal frames to workers; a peer's frames always go to the same worker and
    // lane, so that its frames stay in order and one flooding peer fills its share of one lane
    // of one worker (docs/design.md §7.8).
    let reader = {
        let network = network.clone();
        tokio::spawn(async move {
            let mut gathered: Vec<InboundFrame> = Vec::with_capacity(MAX_READER_BATCH_FRAMES);
            let mut dealer = Dealer::new(worker_txs, worker_backlogs, max_held);
            let mut open = true;
            loop {
                // Frames held for lanes without room go first, as far as there is room now.
                if !dealer.queue_held() {
                    return;
                }
                dealer.release_room(&*network);
                let senders = if open { dealer.senders() } else { None };
                let taken = if dealer.holds_nothing() {
                    if !open {
                        break;
                    }
                    // Whatever is waiting right now, in one call (the transport accounts for
                    // it once).
                    network
                        .recv_many_holding_room(
                            &mut gathered,
                            Senders::Any,
                            MAX_READER_BATCH_FRAMES,
                            MAX_READER_BATCH_BYTES,
                        )
                        .await
                } else {
                    // Frames are held: more are still taken (of a kind the reader holds too
                    // much of, none), until a worker takes frames from a lane frames are held
                    // for.
                    tokio::select! {
                        biased;
                        () = dealer.room() => continue,
                        open = network.recv_many_holding_room(
                            &mut gathered,
                            senders.unwrap_or(Senders::Any),
                            MAX_READER_BATCH_FRAMES,
                            MAX_READER_BATCH_BYTES,
                        ), if senders.is_some() => open,
                    }
                };
                open = taken;
                // Only what needs no signature check and fits an inline run is looked at
                // further (in BFT, more frames than an inline run holds go to the workers
                // whatever else holds).
                let signatures = if !inline.verifier.quorums.requires_signatures() {
                    ReaderBatch::Unsigned
                } else if gathered.len() <= MAX_INLINE_RUN_FRAMES
                    && gathered
                        .iter()
                        .all(|frame| matches!(frame.from, Peer::Client(_)))
                {
                    // Client frames are authenticated by their channel.
                    ReaderBatch::ClientFrames
                } else {
                    ReaderBatch::Signed
                };
                let inline_run = signatures != ReaderBatch::Signed && {
                    let bytes: usize = gathered.iter().map(|frame| frame.frame.len()).sum();
                    let workers_idle = gathered.iter().all(|frame| dealer.worker_idle(&frame.from));
                    verify_inline(gathered.len(), bytes, signatures, workers_idle)
                };
                if gathered.is_empty() {
                    // Closed before a frame arrived.
                } else if inline_run {
                    inline
                        .metrics
                        .frames_verified_inline
                        .add(gathered.len() as u64);
                    dealer
                        .released
                        .extend(gathered.iter().map(|f| (f.from, f.frame.len())));
                    dealer.release_room(&*network);
                    for input in inline.verify_run(gathered.drain(..)) {
                        if inline.input_tx.send(input).await.is_err() {
                            return;
                        }
                    }
                } else if !dealer.deal(&mut gathered) {
                    return;
                }
                dealer.release_room(&*network);
            }
        })
    };

    // Service thread.
    let (service_tx, service_rx) = std::sync::mpsc::channel::<ServiceCommand>();
    let (output_tx, output_rx) = mpsc::unbounded_channel::<ServiceOutput>();
    std::thread::Builder::new()
        .name(format!("smr-service-{me}"))
        .spawn(move || {
            let failed = output_tx.clone();
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_service(service, service_rx, output_tx)
            }));
            if let Err(payload) = run {
                let _ = failed.send(ServiceOutput::Failed(ReplicaError::Service(format!(
                    "it panicked: {}",
                    panic_message(&*payload)
                ))));
            }
        })
        .map_err(StartError::Thread)?;

    let (status_tx, status_rx) = watch::channel(ReplicaStatus::default());
    let shutdown = Arc::new(Notify::new());
    let (max_held_actions, max_held_bytes) = held_bound();
    let engine_task = tokio::spawn(run_engine(EngineLoop {
        engine,
        initial_output,
        wal,
        unsynced: false,
        commit: GroupCommit::default(),
        fsync: None,
        max_held_actions,
        max_held_bytes,
        failure: None,
        reader,
        network,
        mode,
        input_rx,
        output_rx,
        service_tx,
        status_tx,
        shutdown: shutdown.clone(),
        rejected,
        decode_errors,
        frames_too_large: 0,
        metrics: metrics.clone(),
        verified_requests,
        timing: Timing::new(max_pending_per_client),
        max_state_bytes,
        max_instances_ahead,
        oversize_checkpoints_logged: 0,
        unusable_checkpoints_logged: 0,
    }));
    // The one place a replica's failure is logged and published, whatever part failed: the
    // engine task ends with it (or panics) and this watchdog reports how.
    let (outcome_tx, outcome_rx) = watch::channel::<Outcome>(None);
    tokio::spawn(async move {
        let result = match engine_task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => Err(ReplicaError::Panicked {
                component: "engine task",
                message: panic_message(&*e.into_panic()),
            }),
            Err(_) => Err(ReplicaError::Panicked {
                component: "engine task",
                message: "cancelled (the runtime is shutting down)".to_string(),
            }),
        };
        if let Err(e) = &result {
            tracing::error!(replica = me, error = %e, "replica stopped");
        }
        outcome_tx.send_replace(Some(result));
    });
    Ok(ReplicaHandle {
        status: status_rx,
        shutdown,
        outcome: outcome_rx,
        metrics,
    })
}

/// Most frames the network reader takes from the transport at once
/// ([`Network::recv_many_holding_room`]): the batch in hand. What it holds for lanes without
/// room is bounded apart (the reader's `Dealer`: [`Network::receive_queue_frames`] of each
/// kind of sender, or `verify_queue_frames` and `verify_queue_bytes`).
pub const MAX_READER_BATCH_FRAMES: usize = 32;
/// Most frame bytes the network reader takes at once (plus one frame: the batch stops after
/// the frame that crosses it).
pub const MAX_READER_BATCH_BYTES: usize = 64 * 1024;

/// The network reader's side of the verify workers' lanes: it queues the reader's frames for
/// their workers, in order (a peer's frames always go to the same worker and lane), and holds
/// the frames that their lane has no room for, so that the frames of other lanes, and of other
/// peers, are still queued.
///
/// Each peer may have at most a share of a lane queued ([`QueuedBytes::try_admit`]). A frame
/// that does not fit is held, and so is every later frame of its peer (each peer's order is
/// kept); the frames held for a lane are queued in turns, one peer after another, as room comes
/// ([`Dealer::queue_held`]), and while a lane holds frames, every new frame for it is held too,
/// so a large frame cannot be passed over for ever by small ones.
///
/// Over the QUIC transport a held frame still holds its room in the transport's receive queue
/// ([`Network::recv_many_holding_room`]); the reader gives it back once the frame is queued or
/// verified ([`Dealer::released`]). So the peer that fills its share waits on its own share
/// there (and on QUIC flow control behind it), and the reader goes on taking every other peer's
/// frames. Whatever the transport, the reader holds at most `max_held` of each kind of sender
/// (plus one reader batch): the transport's receive-queue frames for the kind
/// ([`Network::receive_queue_frames`], its bytes left to the transport's bounds), or the
/// verify queues' bounds if it has none; beyond that it takes only the other kind's frames
/// ([`Dealer::senders`]).
struct Dealer {
    worker_txs: Vec<Vec<(mpsc::Sender<InboundFrame>, Arc<QueuedBytes>)>>,
    worker_backlogs: Vec<Arc<AtomicUsize>>,
    /// Per worker lane (`2 * worker + lane`): the permits and the frames of the batch in hand.
    groups: Vec<(usize, usize)>,
    /// The frames held for lanes without room.
    held: Held,
    /// The most frames and bytes held of one kind of sender before the reader stops taking it.
    max_held: [(usize, usize); 2],
    /// Frames that left the reader (queued for a worker, or verified by it), whose room in the
    /// network's receive queue is still to be given back ([`Network::release_room`]).
    released: Vec<(Peer, usize)>,
}

/// The frames the reader holds for verify lanes without room.
struct Held {
    /// Per worker lane (`2 * worker + lane`).
    lanes: Vec<HeldLane>,
    /// Frames and bytes held, of replicas and of clients.
    frames: [usize; 2],
    bytes: [usize; 2],
}

impl Held {
    /// Holds `frame` for lane `index`, after its peer's others.
    fn hold(&mut self, index: usize, frame: InboundFrame) {
        let kind = kind_of(&frame.from);
        self.frames[kind] += 1;
        self.bytes[kind] = self.bytes[kind].saturating_add(frame.frame.len());
        let lane = &mut self.lanes[index];
        let queue = lane.frames.entry(frame.from).or_default();
        if queue.is_empty() {
            lane.turns.push_back(frame.from);
        }
        queue.push_back(frame);
    }
}

/// The frames held for one verify lane: per peer in its order, the peers served in turns.
#[derive(Default)]
struct HeldLane {
    /// Peers with held frames, the next to be served first.
    turns: VecDeque<Peer>,
    frames: HashMap<Peer, VecDeque<InboundFrame>>,
}

/// What became of a frame the reader tried to queue without waiting.
enum Queued {
    Yes,
    /// Its lane has no room for it now.
    Full(InboundFrame),
    /// Its peer's share of the lane has no room for it now.
    ShareFull(InboundFrame),
    /// Its worker is gone.
    Gone,
}

/// The kind of sender a frame counts for: 0 for replicas, 1 for clients.
fn kind_of(peer: &Peer) -> usize {
    usize::from(matches!(peer, Peer::Client(_)))
}

impl Dealer {
    fn new(
        worker_txs: Vec<Vec<(mpsc::Sender<InboundFrame>, Arc<QueuedBytes>)>>,
        worker_backlogs: Vec<Arc<AtomicUsize>>,
        max_held: [(usize, usize); 2],
    ) -> Dealer {
        let lanes = 2 * worker_txs.len();
        Dealer {
            worker_txs,
            worker_backlogs,
            groups: vec![(0, 0); lanes],
            held: Held {
                lanes: (0..lanes).map(|_| HeldLane::default()).collect(),
                frames: [0, 0],
                bytes: [0, 0],
            },
            max_held,
            released: Vec::with_capacity(MAX_READER_BATCH_FRAMES),
        }
    }

    /// The worker lane (`2 * worker + lane`) of a peer's frames: 0 for replicas, 1 for clients.
    fn lane_of(&self, peer: &Peer) -> usize {
        2 * worker_for(peer, self.worker_txs.len()) + kind_of(peer)
    }

    /// Whether the worker of `peer`'s frames has nothing queued, held or in hand.
    fn worker_idle(&self, peer: &Peer) -> bool {
        self.worker_backlogs[worker_for(peer, self.worker_txs.len())].load(Ordering::Acquire) == 0
    }

    /// Whether the reader holds no frame.
    fn holds_nothing(&self) -> bool {
        self.held.frames == [0, 0]
    }

    /// Whose frames the reader may take from the network now: those of the kinds of sender it
    /// holds less than `max_held` of; none while it holds that much
    /// of both.
    fn senders(&self) -> Option<Senders> {
        let room = |kind: usize| {
            self.held.frames[kind] < self.max_held[kind].0
                && self.held.bytes[kind] < self.max_held[kind].1
        };
        match (room(0), room(1)) {
            (true, true) => Some(Senders::Any),
            (true, false) => Some(Senders::Replicas),
            (false, true) => Some(Senders::Clients),
            (false, false) => None,
        }
    }

    /// Queues `frame` for lane `index` if the lane, and its peer's share of it, have room for
    /// it now.
    fn try_queue(&self, index: usize, frame: InboundFrame) -> Queued {
        let (tx, queued_bytes) = &self.worker_txs[index / 2][index % 2];
        let entry = [(frame.from, frame.frame.len())];
        if !queued_bytes.try_admit(&entry) {
            return if tx.is_closed() {
                Queued::Gone
            } else {
                Queued::ShareFull(frame)
            };
        }
        let permits = queued_bytes.permits_for(frame.frame.len());
        match queued_bytes.permits.try_acquire_many(permits) {
            Ok(permit) => permit.forget(),
            Err(tokio::sync::TryAcquireError::NoPermits) if !tx.is_closed() => {
                queued_bytes.unadmit(entry);
                return Queued::Full(frame);
            }
            Err(_) => return Queued::Gone,
        }
        match tx.try_send(frame) {
            Ok(()) => Queued::Yes,
            Err(mpsc::error::TrySendError::Full(frame)) => {
                queued_bytes.release_permits(permits as usize);
                queued_bytes.unadmit(entry);
                Queued::Full(frame)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Queued::Gone,
        }
    }

    /// Queues held frames as far as their lanes have room now: in each lane the peers take
    /// turns, one frame each, and the lane stops at the first frame it has no room for (a peer
    /// at its share of the lane only loses its turn). False if a worker is gone.
    fn queue_held(&mut self) -> bool {
        if self.holds_nothing() {
            return true;
        }
        for index in 0..self.held.lanes.len() {
            // Each peer's turn at most once per pass without a frame queued.
            let mut misses = 0;
            while misses < self.held.lanes[index].turns.len() {
                let lane = &mut self.held.lanes[index];
                let peer = lane.turns.pop_front().expect("counted");
                let queue = lane
                    .frames
                    .get_mut(&peer)
                    .expect("a peer in turn holds frames");
                let frame = queue.pop_front().expect("a peer in turn holds frames");
                let length = frame.frame.len();
                match self.try_queue(index, frame) {
                    Queued::Yes => {
                        misses = 0;
                        self.released.push((peer, length));
                        let kind = kind_of(&peer);
                        self.held.frames[kind] -= 1;
                        self.held.bytes[kind] -= length;
                        let lane = &mut self.held.lanes[index];
                        if lane.frames[&peer].is_empty() {
                            lane.frames.remove(&peer);
                        } else {
                            lane.turns.push_back(peer);
                        }
                    }
                    Queued::ShareFull(frame) => {
                        // Its share is full: the next peer's turn.
                        let lane = &mut self.held.lanes[index];
                        lane.frames.get_mut(&peer).expect("held").push_front(frame);
                        lane.turns.push_back(peer);
                        misses += 1;
                    }
                    Queued::Full(frame) => {
                        // The lane is full: the peer keeps its turn for when room comes.
                        let lane = &mut self.held.lanes[index];
                        lane.frames.get_mut(&peer).expect("held").push_front(frame);
                        lane.turns.push_front(peer);
                        break;
                    }
                    Queued::Gone => return false,
                }
            }
        }
        true
    }

    /// Queues the reader's batch (emptying `frames`). Each worker lane's frames of the batch
    /// take their room in its queue in one step when it is there and the lane holds nothing
    /// (the common case under load), else frame by frame; a frame that does not fit, every
    /// later frame of its peer, and every frame for a lane that holds frames, are held
    /// ([`Dealer`]). False if a worker is gone.
    fn deal(&mut self, frames: &mut Vec<InboundFrame>) -> bool {
        self.groups.fill((0, 0));
        for frame in frames.iter() {
            let index = self.lane_of(&frame.from);
            let permits = self.worker_txs[index / 2][index % 2]
                .1
                .permits_for(frame.frame.len()) as usize;
            let group = &mut self.groups[index];
            group.0 = group.0.saturating_add(permits);
            group.1 += 1;
        }
        // Taken together where possible (the peers' shares, room in the queue's bytes, then
        // slots in its channel), and never before frames held for the lane.
        let mut slots = Vec::with_capacity(self.groups.len());
        for (index, group) in self.groups.iter().enumerate() {
            let (w, lane) = (index / 2, index % 2);
            let (tx, queued_bytes) = &self.worker_txs[w][lane];
            let entries = || -> Vec<(Peer, usize)> {
                frames
                    .iter()
                    .filter(|frame| self.lane_of(&frame.from) == index)
                    .map(|frame| (frame.from, frame.frame.len()))
                    .collect()
            };
            let together = group.1 > 1 && self.held.lanes[index].turns.is_empty() && {
                let entries = entries();
                if queued_bytes.try_admit(&entries) {
                    if queued_bytes.try_reserve_permits(group.0) {
                        true
                    } else {
                        queued_bytes.unadmit(entries);
                        false
                    }
                } else {
                    false
                }
            };
            slots.push(if together {
                let slots = tx.try_reserve_many(group.1).ok();
                if slots.is_none() {
                    queued_bytes.release_permits(group.0);
                    queued_bytes.unadmit(entries());
                }
                slots
            } else {
                None
            });
            if group.1 > 0 {
                // Counted before they are queued (or held): the worker uncounts them only after
                // handing its verdict to the engine.
                self.worker_backlogs[w].fetch_add(group.1, Ordering::AcqRel);
            }
        }
        for frame in frames.drain(..) {
            let index = self.lane_of(&frame.from);
            if let Some(slot) = slots[index].as_mut().and_then(Iterator::next) {
                self.released.push((frame.from, frame.frame.len()));
                slot.send(frame);
                continue;
            }
            if !self.held.lanes[index].turns.is_empty() {
                self.held.hold(index, frame);
                continue;
            }
            let entry = (frame.from, frame.frame.len());
            match self.try_queue(index, frame) {
                Queued::Yes => self.released.push(entry),
                Queued::Full(frame) | Queued::ShareFull(frame) => self.held.hold(index, frame),
                Queued::Gone => return false,
            }
        }
        true
    }

    /// Gives the room of the frames that left the reader back to `network`.
    fn release_room<N: Network>(&mut self, network: &N) {
        if !self.released.is_empty() {
            network.release_room(&self.released);
            self.released.clear();
        }
    }

    /// Waits until a worker whose lane the reader holds frames for has taken frames from it
    /// (or is gone): the room for a held frame may be there now.
    async fn room(&self) {
        use std::future::Future;
        let mut waits: Vec<_> = self
            .held
            .lanes
            .iter()
            .enumerate()
            .filter(|(_, lane)| !lane.turns.is_empty())
            .map(|(index, _)| {
                let (tx, queued_bytes) = &self.worker_txs[index / 2][index % 2];
                Box::pin(async move {
                    // A worker that is gone takes nothing.
                    tokio::select! {
                        () = queued_bytes.freed.notified() => {}
                        () = tx.closed() => {}
                    }
                })
            })
            .collect();
        std::future::poll_fn(|cx| {
            if waits
                .iter_mut()
                .any(|wait| wait.as_mut().poll(cx).is_ready())
            {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
    }
}

/// Most frames the network reader verifies itself, as one run (see the module docs).
pub const MAX_INLINE_RUN_FRAMES: usize = 4;
/// Most frame bytes the network reader verifies itself, as one run: a few votes and requests,
/// or a PROPOSE of a few requests, whose check takes tens of microseconds. More could hold up
/// the runtime's thread for longer than the hop to a worker costs.
pub const MAX_INLINE_RUN_BYTES: usize = 4 * 1024;

/// Most frame bytes the network reader decodes itself, as one run, in CFT (which signs
/// nothing): a whole reader batch of small frames. Decoding costs less than the hop to a
/// worker and back (two thread wake-ups) at any load; a batch holding a large frame (a
/// PROPOSE of a big batch) still goes to a worker, so that the runtime's thread is not held.
pub const MAX_UNSIGNED_INLINE_RUN_BYTES: usize = MAX_READER_BATCH_BYTES;

/// What the signatures of a reader batch ask for (see [`verify_inline`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReaderBatch {
    /// BFT, and some frame is a replica's: its signature needs checking.
    Signed,
    /// BFT, at most [`MAX_INLINE_RUN_FRAMES`] frames, every one a client's: authenticated by
    /// their channels (docs/design.md §5), no signature to check.
    ClientFrames,
    /// CFT: nothing is signed.
    Unsigned,
}

/// Whether the network reader decodes and checks the frames it took at once (`frames`
/// frames, `bytes` bytes: all that was waiting, up to a reader batch) itself, as one run,
/// instead of queueing them for the verify workers. Only when
/// - they need no signature check (`signatures`: client frames, authenticated by their
///   channel, or any frame in CFT, which signs nothing): a signature is tens of microseconds
///   that a worker thread runs beside the transport and the engine, and measured at one
///   request in flight, checking votes here made BFT's latency worse although it saved CPU;
/// - in BFT, they are few and small ([`MAX_INLINE_RUN_FRAMES`], [`MAX_INLINE_RUN_BYTES`]:
///   the replica is not under load, so a worker's run would hold them alone); in CFT, they
///   hold at most [`MAX_UNSIGNED_INLINE_RUN_BYTES`], at any load (decoding is cheaper than the
///   hop; measured in BENCHMARKS.md, "CFT frames decoded by the reader");
/// - the workers they belong to have nothing queued or in hand (`workers_idle`: everything
///   those workers took has reached the engine, so the frames still reach it after every
///   earlier frame of their peers).
///
/// It saves two thread wake-ups per message, each a futex wake and a context switch: on
/// BFT's critical path, the hop of the client's request at the leader; in CFT, every hop.
fn verify_inline(frames: usize, bytes: usize, signatures: ReaderBatch, workers_idle: bool) -> bool {
    workers_idle
        && match signatures {
            ReaderBatch::Signed => false,
            ReaderBatch::ClientFrames => {
                frames <= MAX_INLINE_RUN_FRAMES && bytes <= MAX_INLINE_RUN_BYTES
            }
            ReaderBatch::Unsigned => bytes <= MAX_UNSIGNED_INLINE_RUN_BYTES,
        }
}

/// One verify worker thread: see the module docs.
struct VerifyWorker {
    /// Frames queued for this worker or in its hands and not yet handed to the engine: the
    /// reader adds one before queueing a frame, the worker takes a run's off after handing it
    /// over (the reader verifies a frame itself only while its worker's is 0).
    backlog: Arc<AtomicUsize>,
    verifier: InboundVerifier,
    cache: Arc<VerifiedRequests>,
    input_tx: mpsc::Sender<EngineInput>,
    rejected: Arc<AtomicU64>,
    decode_errors: Arc<AtomicU64>,
    /// Undecodable frames are logged at most once a second, whoever sends them.
    undecodable_log: Arc<LogThrottle>,
    metrics: Arc<ReplicaMetrics>,
}

/// At most one log line per interval for an event a peer can repeat at will (an undecodable
/// frame): the events in between are counted, and the next line says how many it stands for.
/// A peer flooding junk then costs the log a line a second, not one per frame (the event's
/// own counter, such as [`ReplicaStatus::decode_errors`], still counts every one).
#[derive(Debug)]
struct LogThrottle {
    interval_ms: u64,
    /// When the next line may be logged, in ms since `epoch`.
    next_ms: AtomicU64,
    /// Events since the last line logged.
    left_out: AtomicU64,
    epoch: std::time::Instant,
}

impl LogThrottle {
    fn new(interval_ms: u64) -> Self {
        LogThrottle {
            interval_ms,
            next_ms: AtomicU64::new(0),
            left_out: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
        }
    }

    /// One event now: `Some(events left out since the last line)` if it may be logged.
    fn admit(&self) -> Option<u64> {
        self.admit_at(self.epoch.elapsed().as_millis() as u64)
    }

    /// [`LogThrottle::admit`] at `now_ms` since the throttle's epoch.
    fn admit_at(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms.saturating_add(self.interval_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.left_out.swap(0, Ordering::Relaxed));
        }
        self.left_out.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// How often an event a peer can repeat at will may be logged ([`LogThrottle`]).
const PEER_EVENT_LOG_INTERVAL_MS: u64 = 1000;

/// A [`Verifier`] that counts the signatures it checks
/// ([`ReplicaMetrics::signature_verifications`]): one atomic add per batch, of its items and
/// those a failed batch checked again ([`smr_crypto::BatchChecked::submitted`]).
struct CountingVerifier {
    inner: Arc<dyn Verifier>,
    metrics: Arc<ReplicaMetrics>,
}

impl Verifier for CountingVerifier {
    fn verify(
        &self,
        key: &smr_crypto::PublicKey,
        message: &[u8],
        signature: &smr_crypto::Signature,
    ) -> Result<(), smr_crypto::VerifyError> {
        self.metrics.signature_verifications.add(1);
        self.inner.verify(key, message, signature)
    }

    fn check_batch(&self, items: &[smr_crypto::SignedItem<'_>]) -> smr_crypto::BatchChecked {
        let checked = self.inner.check_batch(items);
        self.metrics
            .signature_verifications
            .add(checked.submitted(items.len()) as u64);
        checked
    }
}

/// What a frame of a verify run turned into, in arrival order.
enum Slot {
    StatusQuery(StatusRoute),
    /// The next verdict of the run's `verify_many`, on a message from this peer.
    Verdict(Peer),
}

/// The bytes of frames in one verify worker's queue, as semaphore permits: the reader takes a
/// frame's before queueing it, the worker gives them back as it takes the frame.
struct QueuedBytes {
    permits: tokio::sync::Semaphore,
    /// The frames and bytes each peer has queued in the lane (peers with none are left out),
    /// and the most it may: a peer's share ([`QueuedBytes::try_admit`]).
    /// Keyed by a randomly seeded aHash, not SipHash: looked up for every frame.
    queued_by_peer: Mutex<HashMap<Peer, (usize, usize), ahash::RandomState>>,
    share_frames: usize,
    share_bytes: usize,
    /// Signalled by the worker whenever it took frames from the lane ([`QueuedBytes::taken`]):
    /// the reader waits on it for room for the frames it holds ([`Dealer::room`]).
    freed: Notify,
}

impl QueuedBytes {
    /// A lane of `max_bytes` and `max_frames`, each peer allowed `1 / shares` of both, but
    /// never fewer than a verify run's frames (or the lane's, if fewer) and bytes: a peer's
    /// frames still batch.
    fn new(max_bytes: usize, max_frames: usize, shares: usize) -> QueuedBytes {
        let max_bytes = max_bytes.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        let shares = shares.max(1);
        QueuedBytes {
            permits: tokio::sync::Semaphore::new(max_bytes),
            queued_by_peer: Mutex::new(HashMap::default()),
            share_frames: (max_frames / shares).max(max_frames.min(MAX_VERIFY_RUN_FRAMES)),
            share_bytes: (max_bytes / shares).max(max_bytes.min(MAX_VERIFY_RUN_BYTES)),
            freed: Notify::new(),
        }
    }

    /// Counts `frames` (sender, length) as queued, all or none: none if a peer would have more
    /// than its share of the lane's frames or bytes queued. A frame larger than a share passes
    /// when its peer has nothing queued.
    fn try_admit(&self, frames: &[(Peer, usize)]) -> bool {
        let mut queued = self.queued_by_peer.lock().expect("verify lane lock");
        // Per peer in `frames` (a reader batch: a few peers), what it would have queued.
        let mut after: Vec<(Peer, usize, usize)> = Vec::with_capacity(4);
        for &(peer, length) in frames {
            let at = match after.iter().position(|(p, _, _)| *p == peer) {
                Some(at) => at,
                None => {
                    let (f, b) = queued.get(&peer).copied().unwrap_or((0, 0));
                    after.push((peer, f, b));
                    after.len() - 1
                }
            };
            let (_, f, b) = &mut after[at];
            if *f >= self.share_frames || (*b > 0 && b.saturating_add(length) > self.share_bytes) {
                return false;
            }
            *f += 1;
            *b = b.saturating_add(length);
        }
        for (peer, f, b) in after {
            queued.insert(peer, (f, b));
        }
        true
    }

    /// Uncounts frames counted by [`QueuedBytes::try_admit`] that were not queued after all, or
    /// that the worker took: one lookup per run of frames from one peer.
    fn unadmit(&self, frames: impl IntoIterator<Item = (Peer, usize)>) {
        let mut queued = self.queued_by_peer.lock().expect("verify lane lock");
        let mut frames = frames.into_iter().peekable();
        while let Some((peer, length)) = frames.next() {
            let (mut count, mut bytes) = (1usize, length);
            while let Some((_, length)) = frames.next_if(|(next, _)| *next == peer) {
                count += 1;
                bytes = bytes.saturating_add(length);
            }
            if let Entry::Occupied(mut entry) = queued.entry(peer) {
                let (f, b) = entry.get_mut();
                *f = f.saturating_sub(count);
                *b = b.saturating_sub(bytes);
                if *f == 0 {
                    entry.remove();
                }
            }
        }
    }

    /// The worker took `frames` from the lane: uncounts them from their peers' shares, gives
    /// back their `permits`, and tells the reader.
    fn taken<'a>(&self, frames: impl Iterator<Item = &'a InboundFrame>, permits: usize) {
        if permits == 0 {
            return;
        }
        self.unadmit(frames.map(|f| (f.from, f.frame.len())));
        self.release_permits(permits);
        self.freed.notify_one();
    }

    /// A frame's permits: its length, capped at its peer's share so that a larger frame passes
    /// alone ([`QueuedBytes::try_admit`]) and still leaves every other peer its share of the
    /// lane (the frame is in memory either way).
    fn permits_for(&self, length: usize) -> u32 {
        u32::try_from(length.clamp(1, self.share_bytes)).unwrap_or(u32::MAX)
    }

    /// Waits for room for a frame of `length` bytes; false if the semaphore closed. (The
    /// reader takes room without waiting, [`Dealer`]; the unit tests queue frames this way.)
    #[cfg(test)]
    async fn reserve(&self, length: usize) -> bool {
        match self.permits.acquire_many(self.permits_for(length)).await {
            Ok(permit) => {
                permit.forget();
                true
            }
            Err(_) => false,
        }
    }

    /// Takes `permits` (several frames' [`QueuedBytes::permits_for`], summed) without waiting;
    /// false, taking nothing, if they are not all there now.
    fn try_reserve_permits(&self, permits: usize) -> bool {
        match u32::try_from(permits).map(|permits| self.permits.try_acquire_many(permits)) {
            Ok(Ok(permit)) => {
                permit.forget();
                true
            }
            _ => false,
        }
    }

    /// Gives back `permits` (frames' [`QueuedBytes::permits_for`], summed).
    fn release_permits(&self, permits: usize) {
        if permits > 0 {
            self.permits.add_permits(permits);
        }
    }
}

impl VerifyWorker {
    /// Verifies one run after another (see [`next_run`]) until both lanes have closed or the
    /// engine is gone.
    fn run(&self, runtime: &tokio::runtime::Handle, replicas: &mut Lane, clients: &mut Lane) {
        let mut frames = Vec::with_capacity(MAX_VERIFY_RUN_FRAMES);
        while next_run(runtime, replicas, clients, &mut frames) {
            let taken = frames.len();
            for input in self.verify_run(frames.drain(..)) {
                // Returns false once the engine is gone.
                if self.input_tx.blocking_send(input).is_err() {
                    return;
                }
            }
            self.backlog.fetch_sub(taken, Ordering::AcqRel);
        }
    }

    /// Decodes and verifies one run of frames: what the engine gets of it, in order (a
    /// status query splits the run).
    fn verify_run(&self, frames: impl Iterator<Item = InboundFrame>) -> Vec<EngineInput> {
        let mut inputs = Vec::new();
        let mut slots = Vec::new();
        let mut messages = Vec::new();
        for InboundFrame { from, frame } in frames {
            let message: Message = match codec::decode(&frame) {
                Ok(m) => m,
                Err(e) => {
                    self.decode_errors.fetch_add(1, Ordering::Relaxed);
                    if let Some(left_out) = self.undecodable_log.admit() {
                        tracing::warn!(?from, error = %e, left_out, "dropping undecodable frame (left_out: those not logged since the last such line)");
                    }
                    continue;
                }
            };
            match (from, message) {
                (Peer::Client(client), Message::StatusQuery { route }) => {
                    slots.push(Slot::StatusQuery(StatusRoute { client, route }));
                }
                (from, message) => {
                    slots.push(Slot::Verdict(from));
                    messages.push((from, message));
                }
            }
        }
        let mut verdicts = self
            .verifier
            .verify_run(messages, Some(&self.cache), RequestAuth::Channel)
            .into_iter();
        let mut run = Vec::with_capacity(slots.len());
        for slot in slots {
            match slot {
                Slot::StatusQuery(to) => {
                    // Keep the order: what arrived before the query is handed over first.
                    if !run.is_empty() {
                        inputs.push(EngineInput::Messages(std::mem::take(&mut run)));
                    }
                    inputs.push(EngineInput::StatusQuery(to));
                }
                Slot::Verdict(from) => match verdicts.next().expect("one verdict per message") {
                    Ok(v) => run.push(v),
                    Err(rejection) => {
                        self.rejected.fetch_add(1, Ordering::Relaxed);
                        self.metrics.count_rejection(rejection.name());
                        tracing::debug!(?from, %rejection, "rejected message");
                    }
                },
            }
        }
        if !run.is_empty() {
            inputs.push(EngineInput::Messages(run));
        }
        inputs
    }
}

/// One lane of a verify worker's queue: its frames and their bytes.
type Lane = (mpsc::Receiver<InboundFrame>, Arc<QueuedBytes>);

/// Waits for a frame in either lane, then takes into `frames` the replica frames waiting up to
/// three quarters of a run, then client frames (at least [`CLIENT_SHARE_OF_RUN_FRAMES`] and
/// [`CLIENT_SHARE_OF_RUN_BYTES`] of them if waiting, more if replica frames left room), then
/// replica frames again, up to [`MAX_VERIFY_RUN_FRAMES`] and [`MAX_VERIFY_RUN_BYTES`]. Each
/// lane's frames keep their order. False once both lanes have closed.
fn next_run(
    runtime: &tokio::runtime::Handle,
    replicas: &mut Lane,
    clients: &mut Lane,
    frames: &mut Vec<InboundFrame>,
) -> bool {
    let first = runtime.block_on(async {
        tokio::select! {
            biased;
            Some(frame) = replicas.0.recv() => Some((frame, true)),
            Some(frame) = clients.0.recv() => Some((frame, false)),
            else => None,
        }
    });
    let Some((first, from_replica)) = first else {
        return false;
    };
    let mut run = RunSize::default();
    let first_lane = if from_replica {
        &replicas.1
    } else {
        &clients.1
    };
    run.add(&first, first_lane);
    frames.push(first);
    // Replica frames first, leaving the client lane its share of the run; then client frames
    // (at least their share, whatever bytes the replica frames took); then replica frames in
    // what is left. Each lane's frames keep their order.
    take_while(replicas, frames, &mut run, |run| {
        run.frames < MAX_VERIFY_RUN_FRAMES - CLIENT_SHARE_OF_RUN_FRAMES
            && run.bytes < MAX_VERIFY_RUN_BYTES - CLIENT_SHARE_OF_RUN_BYTES
    });
    take_while(clients, frames, &mut run, |run| {
        run.frames < MAX_VERIFY_RUN_FRAMES
            && (run.bytes < MAX_VERIFY_RUN_BYTES
                || (run.of_kind[1].0 < CLIENT_SHARE_OF_RUN_FRAMES
                    && run.of_kind[1].1 < CLIENT_SHARE_OF_RUN_BYTES))
    });
    take_while(replicas, frames, &mut run, |run| {
        run.frames < MAX_VERIFY_RUN_FRAMES && run.bytes < MAX_VERIFY_RUN_BYTES
    });
    // Each lane's permits are given back once for the run.
    replicas.1.taken(
        frames.iter().filter(|f| kind_of(&f.from) == 0),
        run.of_kind[0].2,
    );
    clients.1.taken(
        frames.iter().filter(|f| kind_of(&f.from) == 1),
        run.of_kind[1].2,
    );
    true
}

/// What a verify run holds so far: frames and bytes in all, and per kind of sender (replicas,
/// clients) frames, bytes and lane permits ([`QueuedBytes::permits_for`], summed).
#[derive(Default)]
struct RunSize {
    frames: usize,
    bytes: usize,
    of_kind: [(usize, usize, usize); 2],
}

impl RunSize {
    fn add(&mut self, frame: &InboundFrame, lane: &QueuedBytes) {
        let length = frame.frame.len();
        self.frames += 1;
        self.bytes = self.bytes.saturating_add(length);
        let kind = &mut self.of_kind[kind_of(&frame.from)];
        kind.0 += 1;
        kind.1 = kind.1.saturating_add(length);
        kind.2 += lane.permits_for(length) as usize;
    }
}

/// Takes the frames waiting in `lane` into `frames`, in order, while `room` says the run has
/// room for another.
fn take_while(
    lane: &mut Lane,
    frames: &mut Vec<InboundFrame>,
    run: &mut RunSize,
    room: impl Fn(&RunSize) -> bool,
) {
    while room(run) {
        let Ok(frame) = lane.0.try_recv() else {
            break;
        };
        run.add(&frame, &lane.1);
        frames.push(frame);
    }
}

fn worker_for(peer: &Peer, workers: usize) -> usize {
    match peer {
        Peer::Replica(r) => *r as usize % workers,
        Peer::Client(k) => k.0[0] as usize % workers,
    }
}

fn run_service(
    mut service: Box<dyn Service>,
    commands: std::sync::mpsc::Receiver<ServiceCommand>,
    outputs: mpsc::UnboundedSender<ServiceOutput>,
) {
    while let Ok(command) = commands.recv() {
        let output = match command {
            ServiceCommand::Execute { cid, items } => ServiceOutput::Done(ServiceDone::Executed {
                cid,
                results: items.iter().map(|i| service.execute(&i.op)).collect(),
            }),
            ServiceCommand::Query { id, op } => ServiceOutput::Done(ServiceDone::Queried {
                id,
                result: service.query(&op),
            }),
            ServiceCommand::Status { to, mut report } => {
                report.state_digest = service.state_digest();
                ServiceOutput::Status { to, report }
            }
            ServiceCommand::Snapshot { cid } => ServiceOutput::Done(ServiceDone::Snapshot {
                cid,
                snapshot: service.snapshot(),
            }),
            ServiceCommand::Restore { cid, snapshot } => {
                // A checkpoint that f+1 replicas vouch for but this service cannot read: going
                // on would serve a state that differs from theirs.
                if let Err(e) = service.restore(&snapshot) {
                    let _ = outputs.send(ServiceOutput::Failed(ReplicaError::Restore {
                        cid,
                        error: e.to_string(),
                    }));
                    return;
                }
                continue;
            }
        };
        if outputs.send(output).is_err() {
            break;
        }
    }
}

struct EngineLoop<N> {
    engine: Engine,
    /// What rebuilding from the store requires of the service, done before anything else.
    initial_output: Output,
    wal: Option<Wal>,
    /// Records appended since the last sync.
    unsynced: bool,
    /// Group commit: sends and service work that wait for an fsync that has not ended
    /// ([`Host::sync`] returns at once; the fsync runs on a blocking thread).
    commit: GroupCommit<HeldAction>,
    /// The fsync running, by the highest sync number it covers.
    fsync: Option<(u64, tokio::task::JoinHandle<FsyncEnded>)>,
    /// Most actions held behind the running fsync ([`MAX_HELD_ACTIONS`]).
    max_held_actions: usize,
    /// Most bytes of actions held behind the running fsync ([`MAX_HELD_BYTES`]).
    max_held_bytes: usize,
    /// Set when performing an output failed: nothing more of it is performed
    /// ([`Host::stopped`]), and the engine task ends with it.
    failure: Option<ReplicaError>,
    /// The task that reads the network; it ends only when the network closes.
    reader: tokio::task::JoinHandle<()>,
    network: Arc<N>,
    mode: String,
    input_rx: mpsc::Receiver<EngineInput>,
    output_rx: mpsc::UnboundedReceiver<ServiceOutput>,
    service_tx: std::sync::mpsc::Sender<ServiceCommand>,
    status_tx: watch::Sender<ReplicaStatus>,
    shutdown: Arc<Notify>,
    rejected: Arc<AtomicU64>,
    decode_errors: Arc<AtomicU64>,
    /// Sends refused as larger than the frame limit ([`ReplicaStatus::frames_too_large`]).
    frames_too_large: u64,
    metrics: Arc<ReplicaMetrics>,
    /// The verify workers' cache, which also counts their client-signature work.
    verified_requests: Arc<VerifiedRequests>,
    /// When the latencies in [`ReplicaMetrics`] started, by the driver's clock.
    timing: Timing,
    /// `limits.max_state_bytes`, for the error logged when a checkpoint exceeds it.
    max_state_bytes: u64,
    /// `limits.max_instances_ahead`: the window of cids whose PROPOSE [`Timing`] notes.
    max_instances_ahead: u64,
    /// The engine's `oversize_checkpoints` already logged.
    oversize_checkpoints_logged: u64,
    /// The engine's `unusable_agreed_checkpoints` already logged.
    unusable_checkpoints_logged: u64,
}

/// Most undecided cids whose PROPOSE time [`Timing`] keeps.
const MAX_TIMED_PROPOSALS: usize = 4096;
/// Most requests whose arrival time [`Timing`] keeps, over all clients.
const MAX_TIMED_REQUESTS: usize = 1 << 16;
/// Most requests of one client key whose arrival time [`Timing`] keeps, whatever the pool
/// holds of a key: a sixteenth of the map, so that one key cannot fill it under a large
/// `max_pending_per_client`, and a key's scan per arrival stays short.
const MAX_TIMED_REQUESTS_PER_CLIENT: usize = MAX_TIMED_REQUESTS / 16;
/// A request unanswered this long no longer holds room in [`Timing`] once it is full.
const TIMED_REQUEST_EXPIRY: Duration = Duration::from_secs(60);

/// When what the latency histograms of [`ReplicaMetrics`] measure started, by the driver's
/// clock (the engine has none). Bounded: past its bounds, a start is not timed.
struct Timing {
    /// The PROPOSE of each undecided cid: when this replica sent it (as leader) or first
    /// received it.
    proposed: std::collections::BTreeMap<Cid, std::time::Instant>,
    /// Each client key's requests by first arrival, oldest first: (session, seq, arrival).
    /// At most `max_requests_per_client` per key (its oldest makes room for its newest), so
    /// one client's requests that never get a reply (refused as `client_pool_full` or
    /// `rate_limited`) cannot keep other clients' requests from being timed; and while the map
    /// is full, a key holding fewer than the most takes a place (`shares`), so many keys'
    /// cannot either. Keyed by a
    /// randomly seeded aHash, not SipHash: two lookups per request, and clients choose the
    /// keys. A key's entries are few and usually answered in order, so they are scanned.
    requests: HashMap<
        crate::message::ClientId,
        VecDeque<(u64, u64, std::time::Instant)>,
        ahash::RandomState,
    >,
    /// Entries in `requests`, over all keys: at most [`MAX_TIMED_REQUESTS`].
    timed_requests: usize,
    /// Each key of `requests` by its entry count: while the map is full, a key holding fewer
    /// than the most takes the place of the oldest entry of a key holding the most, so keys
    /// minted to fill it (`clients = "any"`) cannot keep other keys' requests untimed.
    /// Kept only while `sharing`: under ordinary load the map is far from full, and the
    /// arrivals and replies pay nothing for it.
    shares: std::collections::BTreeSet<(usize, crate::message::ClientId)>,
    /// Whether `shares` is kept: from the first time a full map has to give a place until
    /// the map is less than half full again.
    sharing: bool,
    /// Entries that gave their place to another key's so far (for the tests).
    requests_displaced: u64,
    /// What the pool holds of one key at most: `limits.max_pending_per_client` times
    /// [`SESSIONS_PER_KEY_IN_POOL`], at most [`MAX_TIMED_REQUESTS_PER_CLIENT`].
    max_requests_per_client: usize,
    /// While `requests` is full: no entry can expire before this, so no sweep frees room.
    /// Without it, a map full of requests that never get a reply was swept again at every
    /// arrival.
    next_request_sweep: Option<std::time::Instant>,
    /// Sweeps of a full `requests` so far (for the tests).
    request_sweeps: u64,
}

impl Default for Timing {
    /// With the default limits.
    fn default() -> Timing {
        Timing::new(crate::config::Limits::default().max_pending_per_client)
    }
}

impl Timing {
    /// Timing for a replica whose pool holds `max_pending_per_client` requests of a session.
    fn new(max_pending_per_client: usize) -> Timing {
        Timing {
            proposed: std::collections::BTreeMap::new(),
            requests: HashMap::default(),
            timed_requests: 0,
            shares: std::collections::BTreeSet::new(),
            sharing: false,
            requests_displaced: 0,
            max_requests_per_client: max_pending_per_client
                .saturating_mul(SESSIONS_PER_KEY_IN_POOL)
                .clamp(1, MAX_TIMED_REQUESTS_PER_CLIENT),
            next_request_sweep: None,
            request_sweeps: 0,
        }
    }

    /// Notes the PROPOSE for `cid` at `at` if `cid` is in the window after `last_executed`
    /// (`window`: `limits.max_instances_ahead`). Beyond it the engine refuses the PROPOSE, so
    /// it would never be decided nor forgotten (a Byzantine peer could fill the map for good).
    fn proposed(&mut self, cid: Cid, at: std::time::Instant, last_executed: Cid, window: u64) {
        if cid <= last_executed || cid.0 > last_executed.0.saturating_add(window) {
            return;
        }
        if self.proposed.len() < MAX_TIMED_PROPOSALS {
            self.proposed.entry(cid).or_insert(at);
        }
    }

    /// How long since `cid`'s PROPOSE, if it was timed; forgets it and every earlier cid.
    fn decided(&mut self, cid: Cid) -> Option<Duration> {
        let at = self.proposed.remove(&cid);
        if self
            .proposed
            .first_key_value()
            .is_some_and(|(c, _)| *c < cid)
        {
            self.proposed = self.proposed.split_off(&cid);
        }
        at.map(|at| at.elapsed())
    }

    /// Notes request `id`'s first arrival, at `at` (arrivals come in time order). A key at its
    /// bound makes room with its own oldest entry; otherwise, while the map is full of live
    /// entries, the request takes the place of the oldest entry of a key holding more than
    /// its key does, or is not timed.
    fn request_arrived(&mut self, id: RequestId, at: std::time::Instant) {
        let held = match self.requests.get_mut(&id.client) {
            Some(timed) => {
                if timed
                    .iter()
                    .any(|&(session, seq, _)| (session, seq) == (id.session, id.seq))
                {
                    return;
                }
                if timed.len() >= self.max_requests_per_client {
                    timed.pop_front();
                    timed.push_back((id.session, id.seq, at));
                    return;
                }
                timed.len()
            }
            None => 0,
        };
        if self.timed_requests >= MAX_TIMED_REQUESTS
            && !self.sweep_requests(at)
            && !self.give_place(held)
        {
            return;
        }
        self.requests
            .entry(id.client)
            .or_default()
            .push_back((id.session, id.seq, at));
        self.timed_requests += 1;
        self.reshare(id.client, held, held + 1);
    }

    /// Frees one entry for a key holding `held`: the oldest of a key holding the most, if that
    /// is more than `held`; whether it did.
    fn give_place(&mut self, held: usize) -> bool {
        if !self.sharing {
            self.shares = self.counted_shares();
            self.sharing = true;
        }
        let Some(&(most, client)) = self.shares.last() else {
            return false;
        };
        if most <= held {
            return false;
        }
        let timed = self
            .requests
            .get_mut(&client)
            .expect("a key in shares holds entries");
        timed.pop_front();
        if timed.is_empty() {
            self.requests.remove(&client);
        }
        self.timed_requests -= 1;
        self.reshare(client, most, most - 1);
        self.requests_displaced += 1;
        true
    }

    /// Each key of `requests` with its entry count, counted afresh.
    fn counted_shares(&self) -> std::collections::BTreeSet<(usize, crate::message::ClientId)> {
        self.requests
            .iter()
            .map(|(client, timed)| (timed.len(), *client))
            .collect()
    }

    /// Moves `client` from holding `from` entries to `to` in `shares`, while it is kept; stops
    /// keeping it once the map is less than half full.
    fn reshare(&mut self, client: crate::message::ClientId, from: usize, to: usize) {
        if !self.sharing {
            return;
        }
        if self.timed_requests < MAX_TIMED_REQUESTS / 2 {
            self.sharing = false;
            self.shares.clear();
            return;
        }
        if from > 0 {
            let removed = self.shares.remove(&(from, client));
            assert!(removed, "shares holds each key's entry count");
        }
        if to > 0 {
            self.shares.insert((to, client));
        }
    }

    /// Forgets the requests older than [`TIMED_REQUEST_EXPIRY`] at `now`, at most once until
    /// one can have expired; whether there is room now.
    fn sweep_requests(&mut self, now: std::time::Instant) -> bool {
        if self.next_request_sweep.is_some_and(|next| now < next) {
            return false;
        }
        self.request_sweeps += 1;
        let live = |&(_, _, arrived): &(u64, u64, std::time::Instant)| {
            now.saturating_duration_since(arrived) < TIMED_REQUEST_EXPIRY
        };
        self.requests.retain(|_, timed| {
            timed.retain(live);
            !timed.is_empty()
        });
        self.timed_requests = self.requests.values().map(VecDeque::len).sum();
        if self.sharing {
            self.shares = self.counted_shares();
        }
        if self.timed_requests >= MAX_TIMED_REQUESTS {
            // Each key's oldest entry is its first.
            self.next_request_sweep = self
                .requests
                .values()
                .filter_map(|timed| timed.front().map(|&(_, _, arrived)| arrived))
                .min()
                .map(|oldest| oldest + TIMED_REQUEST_EXPIRY);
            return false;
        }
        self.next_request_sweep = None;
        true
    }

    /// How long since request `id` first arrived, if it was timed; forgets it.
    fn replied(&mut self, id: &RequestId) -> Option<Duration> {
        let std::collections::hash_map::Entry::Occupied(mut timed) = self.requests.entry(id.client)
        else {
            return None;
        };
        let index = timed
            .get()
            .iter()
            .position(|&(session, seq, _)| (session, seq) == (id.session, id.seq))?;
        let (_, _, at) = timed.get_mut().remove(index)?;
        let held = timed.get().len();
        if held == 0 {
            timed.remove();
        }
        self.timed_requests -= 1;
        self.reshare(id.client, held + 1, held);
        Some(at.elapsed())
    }
}

/// Milliseconds since the driver started: the engine's `now`.
fn now_ms(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

/// Runs the engine until shutdown (`Ok`) or until the replica cannot go on (the error).
async fn run_engine<N: Network>(mut l: EngineLoop<N>) -> Result<(), ReplicaError> {
    let epoch = Instant::now();
    let initial = std::mem::take(&mut l.initial_output);
    l.perform_checked(now_ms(epoch), initial)?;
    // A checkpoint recovered from the data dir may exceed a limit lowered since.
    l.log_state_over_max_state_bytes();
    let output = l.engine.start(now_ms(epoch));
    l.perform_checked(now_ms(epoch), output)?;
    loop {
        // Group commit's bound: with too much waiting for the running fsync, nothing else is
        // taken until it ends.
        if l.commit_full() {
            let (number, task) = l
                .fsync
                .as_mut()
                .expect("held actions wait for a running fsync");
            let number = *number;
            tokio::select! {
                biased;
                _ = l.shutdown.notified() => return Ok(()),
                joined = task => {
                    l.fsync = None;
                    l.fsync_ended(number, joined)?;
                }
            }
            l.publish_status();
            continue;
        }
        // Due timers first: the select below prefers inputs, and a steady stream of them (a
        // peer flooding cheap messages) must not starve request timeouts and leader changes.
        let now = now_ms(epoch);
        if l.engine.next_deadline_ms().is_some_and(|d| d <= now) {
            let output = l.engine.on_timeout(now);
            l.perform_checked(now, output)?;
            // What the timers held may have reached the bound: then no input either (else two
            // outputs could pass the bound, the timers' and an input's).
            if l.commit_full() {
                l.publish_status();
                continue;
            }
        }
        let next_deadline = l.engine.next_deadline_ms();
        let sleep_until = next_deadline
            .map(|d| epoch + Duration::from_millis(d))
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let fsync_number = l.fsync.as_ref().map(|(number, _)| *number);
        tokio::select! {
            biased;
            _ = l.shutdown.notified() => return Ok(()),
            // First after shutdown: what it frees was decided before anything below.
            joined = async { (&mut l.fsync.as_mut().expect("guarded").1).await }, if fsync_number.is_some() => {
                l.fsync = None;
                l.fsync_ended(fsync_number.expect("guarded"), joined)?;
            }
            output = l.output_rx.recv() => {
                let now = now_ms(epoch);
                match output {
                    Some(ServiceOutput::Done(done)) => {
                        if let ServiceDone::Executed { cid, .. } = &done {
                            l.metrics.last_executed_cid.set(cid.0);
                        }
                        let output = l.engine.on_service_done(now, done);
                        l.perform_checked(now, output)?;
                    }
                    Some(ServiceOutput::Status { to, report }) => l.send_status(to, report),
                    Some(ServiceOutput::Failed(e)) => return Err(e),
                    None => {
                        return Err(ReplicaError::Service("its thread ended".to_string()));
                    }
                }
            }
            input = l.input_rx.recv() => {
                let Some(input) = input else {
                    return Err(ReplicaError::NetworkClosed);
                };
                let now = now_ms(epoch);
                match input {
                    EngineInput::Messages(run) => {
                        // Group commit: the outputs of a verified run are performed together,
                        // so one sync covers every record the run produced (`Output::absorb`
                        // keeps each message after every record produced before it).
                        let arrived = std::time::Instant::now();
                        let mut group = Output::default();
                        for verified in run {
                            l.time_arrival(&verified, arrived);
                            group.absorb(l.engine.on_message(now, verified));
                        }
                        l.perform_checked(now, group)?;
                    }
                    EngineInput::StatusQuery(to) => {
                        let report = StatusReport {
                            replica: l.engine.id(),
                            mode: l.mode.clone(),
                            regency: l.engine.regency(),
                            leader: l.engine.leader(),
                            last_decided: l.engine.last_executed(),
                            last_checkpoint: l.engine.last_checkpoint(),
                            state_digest: Digest::default(),
                            pending_requests: l.engine.pending_requests() as u64,
                            rejected_messages: l.rejected.load(Ordering::Relaxed),
                            log_entries: l.engine.log_len() as u64,
                            decided_instances: l.engine.stats().decided_instances,
                            executed_requests: l.engine.stats().executed_requests,
                            client_signatures_verified: l.client_signatures_verified(),
                            client_signatures_cached: l.verified_requests.hits(),
                            fsyncs: l.metrics.fsyncs.get(),
                            refused_replicas: l.network.refused_replicas(),
                            state_over_max_state_bytes: l
                                .engine
                                .state_over_max_state_bytes()
                                .is_some(),
                            participation: l.engine.participation(),
                        };
                        // The service thread fills in the digest after the batches handed
                        // to it before this query (held behind an fsync or not), i.e.
                        // exactly at `last_decided`. If it is gone, its output channel says
                        // why.
                        let _ = l.hand_to_service(ServiceCommand::Status { to, report });
                    }
                    EngineInput::Failed(e) => return Err(e),
                }
            }
            _ = tokio::time::sleep_until(sleep_until), if next_deadline.is_some() => {
                let now = now_ms(epoch);
                let output = l.engine.on_timeout(now);
                l.perform_checked(now, output)?;
            }
            // Last: a verify worker that panicked reports it (above) before the reader can
            // find its lane closed.
            ended = &mut l.reader => {
                return Err(match ended {
                    Err(e) if e.is_panic() => ReplicaError::Panicked {
                        component: "network reader",
                        message: panic_message(&*e.into_panic()),
                    },
                    _ => ReplicaError::NetworkClosed,
                });
            }
        }
        l.publish_status();
    }
}

/// The tokio driver's side of the driver contract: a write-ahead log (or nothing), the
/// network, and a service thread.
impl<N: Network> Host for EngineLoop<N> {
    fn engine(&mut self) -> &mut Engine {
        &mut self.engine
    }

    fn append(&mut self, record: PersistRecord) {
        let Some(wal) = self.wal.as_mut() else {
            return;
        };
        let result = match &record {
            PersistRecord::Checkpoint(c) => {
                // Compact: the new log holds only what the checkpoint does not cover.
                let after: Vec<Vec<u8>> = self
                    .engine
                    .durable_records_after(c.cid)
                    .iter()
                    .map(codec::encode)
                    .collect();
                // Written and synced in one go.
                self.unsynced = false;
                let started = std::time::Instant::now();
                let result = wal.write_checkpoint(&codec::encode(&record), &after);
                if wal.policy() == FsyncPolicy::Always {
                    self.metrics.fsyncs.add(1);
                    self.metrics
                        .fsync_latency
                        .observe_duration(started.elapsed());
                }
                if result.is_ok() {
                    // The new log holds, synced, every record that must survive: whatever
                    // waited for a sync may go (a running fsync of the old log still ends).
                    let freed = self.commit.all_durable();
                    self.release(freed);
                }
                result
            }
            _ => {
                self.unsynced = true;
                wal.append(&codec::encode(&record))
            }
        };
        if let Err(e) = result {
            // A replica that cannot keep its promises must stop making them.
            self.fail(ReplicaError::Storage(e.to_string()));
        }
    }

    /// Group commit: writes the records out and returns; the fsync runs on a blocking thread
    /// (one at a time: the next covers every sync asked for meanwhile), and every later send
    /// and service command waits for it in [`EngineLoop::commit`].
    fn sync(&mut self) {
        if self.failure.is_some() || !std::mem::take(&mut self.unsynced) {
            return;
        }
        let Some(wal) = self.wal.as_mut() else {
            return;
        };
        match wal.write_for_sync() {
            Err(e) => self.fail(ReplicaError::Storage(e.to_string())),
            // `fsync = "never"`: written is all it promises.
            Ok(None) => {}
            Ok(Some(log_sync)) => {
                if let Some(number) = self.commit.ask() {
                    self.start_fsync(number, log_sync);
                }
            }
        }
    }

    fn send(&mut self, to: &[Peer], message: Message) {
        // Encoded once, however many receive it; only the frame is kept.
        let frame = codec::encode(&message);
        let sending = Sending::of(&message);
        if self.commit.must_wait() {
            self.hold(HeldAction::Send {
                to: to.to_vec(),
                sending,
                frame,
            });
        } else {
            self.send_frame(to, sending, frame);
        }
    }

    fn service(&mut self, work: ServiceWork) -> Option<ServiceDone> {
        match &work {
            ServiceWork::Execute { cid, items } => {
                self.metrics.batch_size.observe(items.len() as u64);
                if let Some(latency) = self.timing.decided(*cid) {
                    self.metrics.consensus_latency.observe_duration(latency);
                }
            }
            ServiceWork::TakeSnapshot { .. } => self.metrics.checkpoints.add(1),
            _ => {}
        }
        let command = match work {
            ServiceWork::Execute { cid, items } => ServiceCommand::Execute { cid, items },
            ServiceWork::Query { id, op } => ServiceCommand::Query { id, op },
            ServiceWork::TakeSnapshot { cid } => ServiceCommand::Snapshot { cid },
            ServiceWork::Restore { cid, snapshot } => ServiceCommand::Restore { cid, snapshot },
        };
        // The service thread answers through `output_rx`.
        if !self.hand_to_service(command) {
            self.fail(ReplicaError::Service("its thread ended".to_string()));
        }
        None
    }

    fn stopped(&self) -> bool {
        self.failure.is_some()
    }

    fn rejected(&mut self, rejection: &Rejection) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        self.metrics.count_rejection(rejection.name());
        tracing::debug!(%rejection, "engine rejected message");
    }
}

impl<N: Network> EngineLoop<N> {
    /// Sends a status answer to the connection that asked: the newest of its key's that
    /// announced the query's route, as a reply to that session goes (processes that share a
    /// key each get their own answers; docs/design.md §3.7, "Sessions").
    fn send_status(&mut self, to: StatusRoute, report: StatusReport) {
        let message = Message::Status(report);
        let sent = self
            .network
            .send_to_session(to.client, to.route, codec::encode(&message));
        self.sent(Peer::Client(to.client), message.kind_name(), sent);
    }

    /// Sends `frame`, the encoding of the message `sending` describes, to each of `to`.
    fn send_frame(&mut self, to: &[Peer], sending: Sending, frame: Vec<u8>) {
        match sending.about {
            SendingAbout::Propose(cid) => self.timing.proposed(
                cid,
                std::time::Instant::now(),
                self.engine.last_executed(),
                self.max_instances_ahead,
            ),
            SendingAbout::Reply { id, .. } => {
                if let Some(latency) = self.timing.replied(&id) {
                    self.metrics.request_latency.observe_duration(latency);
                }
            }
            SendingAbout::Other => {}
        }
        for peer in to {
            // A reply goes to the connection its session's requests arrive on, not to any of
            // its key's connections: many processes may share a key (docs/design.md §3.7).
            let sent = match (peer, sending.about) {
                (Peer::Client(key), SendingAbout::Reply { route, .. }) => {
                    self.network.send_to_session(*key, route, frame.clone())
                }
                _ => self.network.send(*peer, frame.clone()),
            };
            self.sent(*peer, sending.kind, sent);
        }
    }

    /// Hands `command` to the service thread, after every action held before it; false if
    /// the thread is gone.
    fn hand_to_service(&mut self, command: ServiceCommand) -> bool {
        if self.commit.must_wait() {
            self.hold(HeldAction::Service(command));
            return true;
        }
        self.service_tx.send(command).is_ok()
    }

    /// Holds `action` behind the syncs asked for so far, weighed by what it holds.
    fn hold(&mut self, action: HeldAction) {
        let bytes = action.held_bytes();
        self.commit.hold(action, bytes);
    }

    /// Performs actions freed by a sync, in order.
    fn release(&mut self, freed: Vec<HeldAction>) {
        for action in freed {
            match action {
                HeldAction::Send { to, sending, frame } => self.send_frame(&to, sending, frame),
                HeldAction::Service(command) => {
                    if self.service_tx.send(command).is_err() {
                        self.fail(ReplicaError::Service("its thread ended".to_string()));
                    }
                }
            }
        }
    }

    /// Starts fsync `number` on a blocking thread.
    fn start_fsync(&mut self, number: u64, log_sync: LogSync) {
        let task = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let result = log_sync.run();
            (result, started.elapsed())
        });
        self.fsync = Some((number, task));
    }

    /// Whether the actions held behind the running fsync reached their bound: the engine
    /// then takes no input (no message, service output or timer) until it ends.
    fn commit_full(&self) -> bool {
        self.commit.held() >= self.max_held_actions
            || self.commit.held_bytes() >= self.max_held_bytes
    }

    /// The fsync numbered `number` ended: what waited for it goes, in order, and the next
    /// fsync starts if syncs were asked for meanwhile. An fsync that failed stops the replica:
    /// it can no longer keep what it promised.
    fn fsync_ended(
        &mut self,
        number: u64,
        joined: Result<FsyncEnded, tokio::task::JoinError>,
    ) -> Result<(), ReplicaError> {
        let (result, took) =
            joined.map_err(|e| ReplicaError::Storage(format!("the fsync thread failed: {e}")))?;
        self.metrics.fsyncs.add(1);
        self.metrics.fsync_latency.observe_duration(took);
        result.map_err(|e| ReplicaError::Storage(e.to_string()))?;
        let (freed, next) = self.commit.completed(number);
        self.release(freed);
        if let Some(next) = next {
            let wal = self.wal.as_mut().expect("only a replica with a log syncs");
            match wal.write_for_sync() {
                Ok(Some(log_sync)) => self.start_fsync(next, log_sync),
                Ok(None) => unreachable!("only fsync = \"always\" runs fsyncs"),
                Err(e) => self.fail(ReplicaError::Storage(e.to_string())),
            }
        }
        self.failure.take().map_or(Ok(()), Err)
    }

    /// Accounts for the outcome of sending `message` to `peer`.
    fn sent(&mut self, peer: Peer, kind: &'static str, sent: Result<(), SendError>) {
        match sent {
            Ok(()) => {}
            // The frame limit is derived from the config to fit every message the engine
            // builds: a message that does not fit is lost for good (a resend is the same
            // size), so it is an error, never a debug line.
            Err(e @ SendError::FrameTooLarge { .. }) => {
                self.frames_too_large += 1;
                tracing::error!(?peer, message = kind, error = %e, "message larger than the frame limit was not sent");
            }
            // Counted by the transport; the protocol retransmits.
            Err(e) => tracing::debug!(?peer, error = %e, "send failed"),
        }
    }

    /// Performs `output`; the error if a part of it failed (the rest was not performed).
    fn perform_checked(&mut self, now_ms: u64, output: Output) -> Result<(), ReplicaError> {
        runner::perform(self, now_ms, output);
        let oversize = self.engine.stats().oversize_checkpoints;
        if oversize > self.oversize_checkpoints_logged {
            self.oversize_checkpoints_logged = oversize;
            self.log_state_over_max_state_bytes();
        }
        let unusable = self.engine.stats().unusable_agreed_checkpoints;
        if unusable > self.unusable_checkpoints_logged {
            self.unusable_checkpoints_logged = unusable;
            if let Some((cid, reason)) = self.engine.unusable_agreed_checkpoint() {
                tracing::error!(
                    %cid,
                    reason,
                    "the checkpoint f+1 peers agree on cannot be used here: this replica's \
                     settings or version differ from theirs; make them equal (see the \
                     settings refusals in `smr status`) and restart it"
                );
            }
        }
        self.failure.take().map_or(Ok(()), Err)
    }

    /// Logs an error if this replica's newest checkpoint exceeds `limits.max_state_bytes`
    /// ([`Engine::state_over_max_state_bytes`]): the replica goes on (every replica shares the
    /// limit, so stopping would stop them all), but none can receive the state by transfer.
    fn log_state_over_max_state_bytes(&self) {
        let Some((cid, state_bytes)) = self.engine.state_over_max_state_bytes() else {
            return;
        };
        let maximum = crate::config::LIMIT_MAXIMA
            .iter()
            .find(|(name, _)| *name == "max_state_bytes")
            .map_or(0, |(_, max)| *max);
        tracing::error!(
            replica = self.engine.id(),
            cid = cid.0,
            state_bytes,
            max_state_bytes = self.max_state_bytes,
            "the checkpoint at cid {} holds {state_bytes} bytes, more than limits.max_state_bytes ({}): no replica can receive it by state transfer, so a replica that loses its data dir cannot rejoin; raise limits.max_state_bytes on every replica (at most {maximum}) and restart them one at a time",
            cid.0,
            self.max_state_bytes
        );
    }

    /// Records the first failure; [`Host::stopped`] then stops performing the output.
    fn fail(&mut self, error: ReplicaError) {
        self.failure.get_or_insert(error);
    }

    /// Notes when a PROPOSE or a client's request arrived, for the latency histograms.
    fn time_arrival(&mut self, verified: &Verified, arrived: std::time::Instant) {
        match (verified.from(), verified.message()) {
            // Only the current leader's PROPOSE starts the clock: one from another replica is
            // refused (`wrong_leader`), and timing it would let a Byzantine peer make the
            // latency of cids it does not propose look as long as it likes.
            (Peer::Replica(from), Message::Propose(propose))
                if from == self.engine.leader()
                    && propose.body.regency == self.engine.regency() =>
            {
                self.timing.proposed(
                    propose.body.cid,
                    arrived,
                    self.engine.last_executed(),
                    self.max_instances_ahead,
                );
            }
            (Peer::Client(_), Message::Request(request)) => {
                let id = request.id();
                self.timing.request_arrived(id, arrived);
            }
            _ => {}
        }
    }

    /// Client request signatures this replica verified, wherever: in the verify workers (a
    /// request met in a PROPOSE, Forward, STOP or SYNC, and not known here) and in the engine
    /// (a request authenticated by its channel, before relaying it: the leader's PROPOSE, a
    /// Forward, a STOP). Vote and PROPOSE signatures are not counted (docs/design.md §5).
    fn client_signatures_verified(&self) -> u64 {
        self.engine
            .stats()
            .client_signatures_verified
            .saturating_add(self.verified_requests.signatures_verified())
    }

    /// Copies the engine's state and counters into [`ReplicaMetrics`]: relaxed stores.
    fn publish_metrics(&self) {
        let m = &self.metrics;
        let stats = self.engine.stats();
        m.last_decided_cid.set(self.engine.last_executed().0);
        m.last_checkpoint_cid.set(self.engine.last_checkpoint().0);
        m.regency.set(self.engine.regency().0);
        m.leader.set(u64::from(self.engine.leader()));
        m.participating
            .set(u64::from(self.engine.participation().participates()));
        m.pending_requests
            .set(self.engine.pending_requests() as u64);
        m.ops_executed.set(stats.executed_requests);
        m.instances_decided.set(stats.decided_instances);
        m.leader_changes.set(stats.regency_changes);
        m.proposals.set(stats.proposals_sent);
        m.retransmissions.set(stats.retransmissions);
        m.state_transfers.set(stats.state_transfers);
        m.client_signature_verifications
            .set(self.client_signatures_verified());
        m.client_signatures_cached
            .set(self.verified_requests.hits());
        m.decode_errors
            .set(self.decode_errors.load(Ordering::Relaxed));
        m.frames_too_large.set(self.frames_too_large);
    }

    fn publish_status(&self) {
        self.publish_metrics();
        let status = ReplicaStatus {
            regency: self.engine.regency(),
            leader: self.engine.leader(),
            last_decided: self.engine.last_executed(),
            pending_requests: self.engine.pending_requests() as u64,
            rejected_messages: self.rejected.load(Ordering::Relaxed),
            decode_errors: self.decode_errors.load(Ordering::Relaxed),
            frames_too_large: self.frames_too_large,
            participation: self.engine.participation(),
        };
        self.status_tx.send_if_modified(|s| {
            if s.participation != status.participation {
                let replica = self.engine.id();
                match status.participation {
                    Participation::Participating => tracing::info!(
                        replica,
                        cid = %status.last_decided,
                        "rejoin done: the replica has executed everything it can have voted on before, and takes part again"
                    ),
                    Participation::CollectingReports { .. } => {}
                    Participation::CatchingUp { until } if status.last_decided == Cid::ZERO => {
                        tracing::warn!(
                            replica,
                            %until,
                            "rejoining: abstaining from votes until cid {until} is executed here; its peers report nothing decided yet. If this is the first start of a brand-new cluster, start every replica with --new-cluster (`EmptyStart::NewCluster`): replicas that all rejoin wait for each other for ever"
                        )
                    }
                    Participation::CatchingUp { until } => tracing::warn!(
                        replica,
                        %until,
                        cid = %status.last_decided,
                        "rejoining: abstaining from votes until cid {until} is executed here"
                    ),
                }
            }
            if *s != status {
                *s = status;
                true
            } else {
                false
            }
        });
    }
}

// ----- client ---------------------------------------------------------------------------------

/// Why an invocation failed.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The client engine refused the request (an operation above `max_op_bytes`); nothing was
    /// sent.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// No reply quorum within the given time; the request was abandoned but may still
    /// execute.
    #[error("no reply quorum within {0:?}; the request may still execute")]
    TimedOut(Duration),
    /// A reply quorum of replicas refused the request (docs/design.md §3.7, "What a client
    /// sees"): [`ReplyStatus::Stale`] (it executed before and its reply is gone; it will never
    /// execute again), [`ReplyStatus::SessionExpired`] (the session's record was evicted: not
    /// executed now, whether it executed before is unknown; the next invocation opens a new
    /// session) or
    /// [`ReplyStatus::TableFull`] (not executed; try again later).
    #[error("{}", refusal_text(*.0))]
    Refused(ReplyStatus),
    /// [`Client::shutdown`] was called, or the client's own tasks failed (a panic, logged as
    /// an error, or its network closed under it): the client cannot receive replies any more.
    #[error("the client is shut down")]
    Closed,
}

/// What [`InvokeError::Refused`] says for each refusal.
fn refusal_text(status: ReplyStatus) -> &'static str {
    match status {
        ReplyStatus::Executed => "the request executed",
        ReplyStatus::Stale => "the replicas refused the request as stale: it executed before and its reply is no longer kept; it will not execute again",
        ReplyStatus::SessionExpired => "the replicas evicted this client session (newer sessions of its key, or a full client table, took its place; docs/design.md §3.7): the request was not executed now, and whether it executed before is unknown; the client's next invocation opens a new session",
        ReplyStatus::TableFull => "the replicas' client table is full of active sessions: the request was not executed; try again later",
    }
}

/// Where an invocation waits for its outcome: the status and result a reply quorum agreed on.
type Waiter = oneshot::Sender<(ReplyStatus, Vec<u8>)>;

struct ClientShared<N> {
    engine: Mutex<ClientEngine>,
    /// Set when the open request completed with a refusal: the invocations waiting for the
    /// session fail with it.
    open_refused: Mutex<Option<ReplyStatus>>,
    waiters: Mutex<HashMap<u64, Waiter>>,
    status_waiters: Mutex<HashMap<ReplicaId, Vec<oneshot::Sender<StatusReport>>>>,
    /// What the client's connections announced last ([`ClientShared::announce`]): its
    /// routing tag, then its session once open. A status query names it as its route, so
    /// that the answer comes to this process's connection.
    announced: AtomicU64,
    network: Arc<N>,
    replicas: usize,
    /// Signalled whenever a request completes or is abandoned, freeing room in the window.
    window_freed: Notify,
    closed: std::sync::atomic::AtomicBool,
    timer_changed: Notify,
    epoch: Instant,
    /// Undecodable replica frames are logged at most once a second.
    undecodable_log: LogThrottle,
}

/// A client handle for async code. It is cheap to clone, and many invocations may run at once
/// (up to the client's window); replies are matched by sequence number.
pub struct Client<N> {
    shared: Arc<ClientShared<N>>,
    tasks: Arc<Vec<tokio::task::AbortHandle>>,
}

impl<N> Clone for Client<N> {
    fn clone(&self) -> Self {
        Client {
            shared: self.shared.clone(),
            tasks: self.tasks.clone(),
        }
    }
}

impl<N: Network> Client<N> {
    /// Starts a client over `network` (already connected to the replicas) with a new routing
    /// tag ([`Client::new_tag`]); `network` should announce that tag on its connections
    /// ([`Client::start_with_tag`]), or the session's open reply may go to another process
    /// with the key.
    pub fn start(network: Arc<N>, config: ClientConfig, signer: Arc<dyn Signer>) -> Client<N> {
        Self::start_with_tag(network, config, signer, Self::new_tag())
    }

    /// A routing tag for a session's open request
    /// ([`ClientEngine::new`](crate::client::ClientEngine::new)), drawn from the operating
    /// system's random source, at or above
    /// [`SESSION_NUMBER_LIMIT`](crate::clients::SESSION_NUMBER_LIMIT): two processes that
    /// share a key pick the same one with probability 2^-63 per pair. Never from a clock
    /// (docs/design.md §3.7).
    pub fn new_tag() -> u64 {
        use rand_core::RngCore;
        rand_core::OsRng.next_u64() | crate::clients::SESSION_NUMBER_LIMIT
    }

    /// Starts a client over `network` whose connections announce `tag` (see
    /// [`Client::new_tag`]). Its first invocation opens its session (an ordered open
    /// request; docs/design.md §3.7, "Sessions"), whose number the client then announces
    /// ([`Network::announce_session`]); its requests are numbered from 1 in that session.
    ///
    /// # Panics
    /// If `tag` is below [`SESSION_NUMBER_LIMIT`](crate::clients::SESSION_NUMBER_LIMIT).
    pub fn start_with_tag(
        network: Arc<N>,
        config: ClientConfig,
        signer: Arc<dyn Signer>,
        tag: u64,
    ) -> Client<N> {
        let replicas = config.quorums.n();
        let shared = Arc::new(ClientShared {
            engine: Mutex::new(ClientEngine::new(config, signer, tag)),
            open_refused: Mutex::new(None),
            waiters: Mutex::new(HashMap::new()),
            status_waiters: Mutex::new(HashMap::new()),
            announced: AtomicU64::new(tag),
            network,
            replicas,
            window_freed: Notify::new(),
            closed: std::sync::atomic::AtomicBool::new(false),
            timer_changed: Notify::new(),
            epoch: Instant::now(),
            undecodable_log: LogThrottle::new(PEER_EVENT_LOG_INTERVAL_MS),
        });
        let reader = {
            let shared = shared.clone();
            tokio::spawn(async move {
                // Frames are taken per batch, as the replica's reader takes them: the
                // transport accounts for a batch once, and the client's locks are taken once
                // per batch instead of once per reply.
                let mut frames = Vec::with_capacity(MAX_READER_BATCH_FRAMES);
                loop {
                    let open = shared
                        .network
                        .recv_many(&mut frames, MAX_READER_BATCH_FRAMES, MAX_READER_BATCH_BYTES)
                        .await;
                    shared.take_frames(&mut frames);
                    if !open {
                        break;
                    }
                }
            })
        };
        let timer = {
            let shared = shared.clone();
            tokio::spawn(async move {
                loop {
                    let deadline = shared
                        .engine
                        .lock()
                        .expect("client lock")
                        .next_deadline_ms();
                    let wake = deadline
                        .map(|d| shared.epoch + Duration::from_millis(d))
                        .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
                    tokio::select! {
                        _ = shared.timer_changed.notified() => {}
                        _ = tokio::time::sleep_until(wake) => {
                            let now = shared.epoch.elapsed().as_millis() as u64;
                            let actions = shared.engine.lock().expect("client lock").on_timer(now);
                            shared.perform(actions);
                        }
                    }
                }
            })
        };
        let tasks = Arc::new(vec![reader.abort_handle(), timer.abort_handle()]);
        // Fail-stop: if the reader or the timer ends on its own, the client can no longer
        // complete anything; it closes, so invocations fail at once instead of by timeout.
        {
            let shared = shared.clone();
            tokio::spawn(async move {
                let (mut reader, mut timer) = (reader, timer);
                let (task, ended) = tokio::select! {
                    ended = &mut reader => ("reader", ended),
                    ended = &mut timer => ("timer", ended),
                };
                match ended {
                    // Aborted by `Client::shutdown`.
                    Err(e) if e.is_cancelled() => return,
                    Err(e) => tracing::error!(
                        task,
                        panic = %panic_message(&*e.into_panic()),
                        "a client task panicked; the client is closed"
                    ),
                    Ok(()) => {
                        tracing::warn!(task, "the client's network closed; the client is closed")
                    }
                }
                shared.close();
                reader.abort();
                timer.abort();
            });
        }
        Client { shared, tasks }
    }

    /// Runs an ordered operation and returns the result agreed by the reply quorum. Waits for
    /// room in the client's window first; `timeout` counts from when the request is sent.
    ///
    /// # Errors
    /// [`InvokeError::Client`] if the operation is too large, [`InvokeError::TimedOut`] if no
    /// quorum of replies came within `timeout`, [`InvokeError::Closed`] after shutdown.
    pub async fn invoke(&self, op: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, InvokeError> {
        self.invoke_kind(RequestKind::Ordered, op, timeout).await
    }

    /// Runs a read-only operation without consensus, needing Q matching replies; it is retried
    /// as an ordered request if they do not come within `retry_timeout_ms` (docs/design.md
    /// §3.8). Sent as an ordered request when unordered reads are disabled.
    ///
    /// # Errors
    /// As [`Client::invoke`].
    pub async fn invoke_unordered(
        &self,
        op: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, InvokeError> {
        self.invoke_kind(RequestKind::Unordered, op, timeout).await
    }

    /// Opens the client's session if it is not open yet, and waits until it is (at most
    /// `timeout`). Invocations do this on their own; calling it first moves the open's round
    /// trip out of the first invocation.
    ///
    /// # Errors
    /// [`InvokeError::TimedOut`] if the open's reply quorum did not come within `timeout`
    /// (the open goes on), [`InvokeError::Refused`] if a reply quorum refused it
    /// ([`ReplyStatus::TableFull`]: try again later), [`InvokeError::Closed`] after shutdown.
    pub async fn open(&self, timeout: Duration) -> Result<u64, InvokeError> {
        tokio::time::timeout(timeout, self.wait_open())
            .await
            .unwrap_or(Err(InvokeError::TimedOut(timeout)))
    }

    /// The client's session, once open.
    pub fn session(&self) -> Option<u64> {
        self.shared.engine.lock().expect("client lock").session()
    }

    async fn wait_open(&self) -> Result<u64, InvokeError> {
        // A refusal counts only for an open this call saw in flight: one left over from an
        // earlier open nobody waited for (a read's fallback) is stale.
        let mut saw_open = false;
        loop {
            // Register for a wake-up before looking, so a completion in between is not missed.
            let changed = self.shared.window_freed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.shared.closed.load(Ordering::Relaxed) {
                return Err(InvokeError::Closed);
            }
            {
                let mut engine = self.shared.engine.lock().expect("client lock");
                if let Some(session) = engine.session() {
                    return Ok(session);
                }
                let refusal = self.shared.open_refused.lock().expect("client lock").take();
                if let Some(refusal) = refusal.filter(|_| saw_open) {
                    return Err(InvokeError::Refused(refusal));
                }
                saw_open = true;
                if !engine.opening() {
                    let now = self.shared.epoch.elapsed().as_millis() as u64;
                    let actions = engine.open(now);
                    self.shared.perform(actions);
                    self.shared.timer_changed.notify_one();
                }
            }
            changed.await;
        }
    }

    async fn invoke_kind(
        &self,
        kind: RequestKind,
        op: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, InvokeError> {
        let (tx, rx) = oneshot::channel();
        let mut tx = Some(tx);
        let seq = loop {
            // Register for a wake-up before trying, so a completion in between is not missed.
            let freed = self.shared.window_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.shared.closed.load(Ordering::Relaxed) {
                return Err(InvokeError::Closed);
            }
            let submitted = {
                let mut engine = self.shared.engine.lock().expect("client lock");
                let now = self.shared.epoch.elapsed().as_millis() as u64;
                engine.submit(now, kind, op.clone())
            };
            match submitted {
                Ok((seq, actions)) => {
                    let tx = tx.take().expect("sender used once");
                    self.shared
                        .waiters
                        .lock()
                        .expect("client lock")
                        .insert(seq, tx);
                    self.shared.perform(actions);
                    break seq;
                }
                Err(ClientError::TooManyOutstanding(_)) => {}
                Err(ClientError::SessionNotOpen) => {
                    // The session first (an unordered read needs none).
                    self.open(timeout).await?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            freed.await;
        };
        self.shared.timer_changed.notify_one();
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok((ReplyStatus::Executed, result))) => Ok(result),
            Ok(Ok((refusal, _))) => Err(InvokeError::Refused(refusal)),
            Ok(Err(_)) => Err(InvokeError::Closed),
            Err(_) => {
                self.shared
                    .waiters
                    .lock()
                    .expect("client lock")
                    .remove(&seq);
                self.shared.engine.lock().expect("client lock").abandon(seq);
                self.shared.window_freed.notify_waiters();
                Err(InvokeError::TimedOut(timeout))
            }
        }
    }

    /// Asks one replica for its status; `None` if it does not answer in time. A replica that
    /// never answers leaves no waiter behind: only the calls still waiting hold one. The query
    /// names what this client's connections announced last (its session, or its routing tag
    /// before the session is open), and the replica answers over the connection that
    /// announced it: other processes sharing the key do not take the answer.
    pub async fn status(&self, replica: ReplicaId, timeout: Duration) -> Option<StatusReport> {
        let (tx, rx) = oneshot::channel();
        {
            let mut waiters = self.shared.status_waiters.lock().expect("client lock");
            let waiting = waiters.entry(replica).or_default();
            // Those whose call ended (timed out, or dropped by its caller).
            waiting.retain(|w| !w.is_closed());
            waiting.push(tx);
        }
        // The answer comes to the connection that announced the route, this process's.
        let route = self.shared.announced.load(Ordering::Acquire);
        let _ = self.shared.network.send(
            Peer::Replica(replica),
            codec::encode(&Message::StatusQuery { route }),
        );
        let answer = tokio::time::timeout(timeout, rx)
            .await
            .ok()
            .and_then(Result::ok);
        if answer.is_none() {
            let mut waiters = self.shared.status_waiters.lock().expect("client lock");
            if let Some(waiting) = waiters.get_mut(&replica) {
                waiting.retain(|w| !w.is_closed());
                if waiting.is_empty() {
                    waiters.remove(&replica);
                }
            }
        }
        answer
    }

    /// Stops the client's tasks. The network is the caller's to shut down.
    pub fn shutdown(&self) {
        for t in self.tasks.iter() {
            t.abort();
        }
        self.shared.close();
    }
}

impl<N> ClientShared<N> {
    /// No new invocation starts; those waiting for a reply fail with [`InvokeError::Closed`].
    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.waiters.lock().expect("client lock").clear();
        self.window_freed.notify_waiters();
    }
}

impl<N: Network> ClientShared<N> {
    /// Takes one batch of the reader's frames (emptying `frames`): replies go to the engine
    /// under one lock, the completed invocations are woken under one lock of the waiters, and
    /// the window's waiters are told once.
    fn take_frames(&self, frames: &mut Vec<InboundFrame>) {
        let mut replies = Vec::with_capacity(frames.len());
        for InboundFrame { from, frame } in frames.drain(..) {
            let Peer::Replica(replica) = from else {
                continue;
            };
            match codec::decode::<Message>(&frame) {
                Ok(Message::Reply(reply)) => replies.push((replica, reply)),
                Ok(Message::Status(report)) if report.replica == replica => {
                    if let Some(ws) = self
                        .status_waiters
                        .lock()
                        .expect("client lock")
                        .remove(&replica)
                    {
                        for w in ws {
                            let _ = w.send(report.clone());
                        }
                    }
                }
                Ok(other) => {
                    tracing::debug!(replica, kind = other.kind_name(), "unexpected message")
                }
                Err(e) => {
                    if let Some(left_out) = self.undecodable_log.admit() {
                        tracing::warn!(replica, error = %e, left_out, "undecodable frame from replica (left_out: those not logged since the last such line)")
                    }
                }
            }
        }
        if replies.is_empty() {
            return;
        }
        let now = now_ms(self.epoch);
        // Each completion with the session as it was right after it (what an open's
        // completion announces).
        let (completed, due) = {
            let mut engine = self.engine.lock().expect("client lock");
            let completed: Vec<(Completed, Option<u64>)> = replies
                .into_iter()
                .filter_map(|(replica, reply)| {
                    let done = engine.on_reply(now, replica, reply)?;
                    Some((done, engine.session()))
                })
                .collect();
            let due = engine.next_deadline_ms().is_some_and(|d| d <= now);
            (completed, due)
        };
        if due {
            // An unordered read whose replies disagree falls back now.
            self.timer_changed.notify_one();
        }
        if completed.is_empty() {
            return;
        }
        let mut invocations = Vec::with_capacity(completed.len());
        for (done, session) in completed {
            if done.seq == 0 {
                // The open request completed: the session is open (announce it, so that its
                // replies find this process), or refused.
                match session {
                    Some(session) => self.announce(session),
                    None => *self.open_refused.lock().expect("client lock") = Some(done.status),
                }
            } else {
                invocations.push(done);
            }
        }
        if !invocations.is_empty() {
            let mut waiters = self.waiters.lock().expect("client lock");
            for done in invocations {
                if let Some(w) = waiters.remove(&done.seq) {
                    let _ = w.send((done.status, done.result));
                }
            }
        }
        self.window_freed.notify_waiters();
    }

    /// Announces `number` (a session, or the routing tag) on the client's connections
    /// ([`Network::announce_session`]), then notes it for status queries. In that order: a
    /// query that reads the number before the change still names one of the connection's
    /// last two announcements, which the transport routes.
    fn announce(&self, number: u64) {
        self.network.announce_session(number);
        self.announced.store(number, Ordering::Release);
    }

    fn perform(&self, actions: Vec<ClientAction>) {
        for action in actions {
            match action {
                ClientAction::Broadcast(message) => {
                    if let Message::Request(open) = &message {
                        if open.body.session == crate::message::OPEN_SESSION {
                            // The open's reply is routed by the tag: announce it first (again,
                            // after an expired session announced its number).
                            self.announce(open.body.seq);
                        }
                    }
                    let frame = codec::encode(&message);
                    for r in 0..self.replicas as ReplicaId {
                        self.send_to(r, frame.clone());
                    }
                }
                ClientAction::Send { to, message } => self.send_to(to, codec::encode(&message)),
            }
        }
    }

    fn send_to(&self, replica: ReplicaId, frame: Vec<u8>) {
        match self.network.send(Peer::Replica(replica), frame) {
            Ok(()) => {}
            Err(e @ SendError::FrameTooLarge { .. }) => {
                tracing::error!(replica, error = %e, "request larger than the frame limit was not sent");
            }
            Err(e) => tracing::debug!(replica, error = %e, "client send failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_event_is_logged_at_most_once_an_interval_and_the_next_line_counts_the_rest() {
        let throttle = LogThrottle::new(1000);
        assert_eq!(throttle.admit_at(5), Some(0));
        for now in [5, 6, 500, 1004] {
            assert_eq!(throttle.admit_at(now), None, "at {now} ms");
        }
        assert_eq!(throttle.admit_at(1005), Some(4));
        assert_eq!(throttle.admit_at(2004), None);
        assert_eq!(throttle.admit_at(9000), Some(1));
        assert_eq!(throttle.admit_at(9001), None);
    }

    /// A network that sends nowhere, delivers nothing and stays open: a silent cluster.
    struct Silent;

    impl Network for Silent {
        fn send(&self, _to: Peer, _frame: Vec<u8>) -> Result<(), SendError> {
            Ok(())
        }
        async fn recv(&self) -> Option<InboundFrame> {
            std::future::pending().await
        }
    }

    /// A network whose inbound frames the test pushes, and which notes what is sent to
    /// client sessions: (key, route, message kind), in order.
    struct Pipe {
        inbound: tokio::sync::Mutex<mpsc::UnboundedReceiver<InboundFrame>>,
        session_sends: Mutex<Vec<(PublicKey, u64, &'static str)>>,
    }

    impl Network for Pipe {
        fn send(&self, _to: Peer, _frame: Vec<u8>) -> Result<(), SendError> {
            Ok(())
        }
        fn send_to_session(
            &self,
            key: PublicKey,
            session: u64,
            frame: Vec<u8>,
        ) -> Result<(), SendError> {
            let kind = codec::decode::<Message>(&frame)
                .expect("the driver sends messages")
                .kind_name();
            self.session_sends
                .lock()
                .expect("sends lock")
                .push((key, session, kind));
            Ok(())
        }
        async fn recv(&self) -> Option<InboundFrame> {
            self.inbound.lock().await.recv().await
        }
    }

    struct Nothing;

    impl Service for Nothing {
        fn execute(&mut self, _op: &[u8]) -> Vec<u8> {
            Vec::new()
        }
        fn query(&self, _op: &[u8]) -> Vec<u8> {
            Vec::new()
        }
        fn snapshot(&self) -> Vec<u8> {
            Vec::new()
        }
        fn restore(&mut self, _snapshot: &[u8]) -> Result<(), String> {
            Ok(())
        }
    }
    /// What [`start_with_fsyncs_stalled`] returns: the replica, its network, the sender of its
    /// inbound frames, the sender that lets the fsyncs run, the stalled blocking task, and
    /// the data dir (kept until the test ends).
    type StalledReplica = (
        ReplicaHandle,
        Arc<Pipe>,
        mpsc::UnboundedSender<InboundFrame>,
        std::sync::mpsc::Sender<()>,
        tokio::task::JoinHandle<Result<(), std::sync::mpsc::RecvError>>,
        tempfile::TempDir,
    );

    /// An unsigned ordered request from `client` on its own connection that opens a session
    /// routed by `tag`, with an empty operation.
    fn session_opening(client: PublicKey, tag: u64) -> InboundFrame {
        use crate::message::{Request, RequestBody, OPEN_SESSION};
        InboundFrame {
            from: Peer::Client(client),
            frame: codec::encode(&Message::Request(Request::new(
                RequestBody {
                    client,
                    session: OPEN_SESSION,
                    seq: tag,
                    kind: RequestKind::Ordered,
                    op: Vec::new(),
                },
                None,
            ))),
        }
    }

    /// Lets the stalled fsyncs run and waits (at most 10 s) until `sends` replies went out.
    async fn release_fsyncs_and_wait_for(
        stall_tx: std::sync::mpsc::Sender<()>,
        stall: tokio::task::JoinHandle<Result<(), std::sync::mpsc::RecvError>>,
        network: &Pipe,
        sends: usize,
    ) {
        stall_tx.send(()).expect("the stalled thread waits");
        stall.await.expect("joins").expect("released");
        let answered = async {
            while network.session_sends.lock().unwrap().len() < sends {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), answered)
            .await
            .expect("every reply leaves once the fsyncs run");
    }

    /// Starts a one-replica CFT cluster with a write-ahead log on a runtime with one blocking
    /// thread, and occupies that thread until the test sends on the returned sender: every
    /// fsync the driver asks for waits until then, while the engine goes on. `max_held` sets
    /// the held-action bound (count, bytes) for this replica, if given.
    fn start_with_fsyncs_stalled(max_held: Option<(usize, usize)>) -> StalledReplica {
        use smr_crypto::sim::{SimKey, SimVerifier};

        let (stall_tx, stall_rx) = std::sync::mpsc::channel::<()>();
        let stall = tokio::task::spawn_blocking(move || stall_rx.recv());
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Wal::open(dir.path(), FsyncPolicy::Always).expect("opens");
        let replica_key = SimKey::from_seed([1; 32]);
        let mut verifier = SimVerifier::new();
        verifier.register(&replica_key);
        let (inbound_tx, inbound_rx) = mpsc::unbounded_channel();
        let network = Arc::new(Pipe {
            inbound: tokio::sync::Mutex::new(inbound_rx),
            session_sends: Mutex::new(Vec::new()),
        });
        TEST_MAX_HELD.with(|bound| bound.set(max_held));
        let handle = start_replica(
            EngineConfig {
                quorums: smr_modes::Quorums::new(smr_modes::Mode::Cft, 1, 0).unwrap(),
                me: 0,
                replica_keys: vec![replica_key.public_key()],
                clients: crate::ClientPolicy::Any,
                limits: crate::Limits::default(),
                timeouts: crate::Timeouts::default(),
            },
            Arc::new(replica_key),
            Arc::new(verifier),
            network.clone(),
            Box::new(Nothing),
            DriverOptions {
                empty_start: EmptyStart::NewCluster,
                ..DriverOptions::default()
            },
            Some(storage),
        )
        .expect("replica starts");
        TEST_MAX_HELD.with(|bound| bound.set(None));
        (handle, network, inbound_tx, stall_tx, stall, dir)
    }

    /// Group commit's bound: with held actions at the bound behind an fsync that has not ended,
    /// the engine takes no input; when the fsync ends, what waited goes in order, and the
    /// input waiting is taken. A single CFT replica whose fsync = always, held actions bounded
    /// to 5, its fsyncs stalled (the runtime's one blocking thread is taken). The first
    /// client's open request is decided in cid 1, and its output holds 4 actions: the PROPOSE
    /// and ACCEPT broadcasts (to no peer at n = 1, held all the same), the reply that opens
    /// the session and the execution; below the bound, so the second client's is taken and
    /// proposed in cid 2, its PROPOSE and ACCEPT held: 6, past the bound by less than that one
    /// output. The third client's request is then not taken (not in the pool) until the fsync
    /// ends; then the three clients are answered, in order. Without the bound, the third is
    /// taken while the fsync is stalled.
    #[test]
    fn with_held_actions_at_their_bound_the_engine_takes_no_input_until_the_fsync_ends() {
        use smr_crypto::sim::SimKey;

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(1)
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let (handle, network, inbound_tx, stall_tx, stall, _dir) =
                start_with_fsyncs_stalled(Some((5, usize::MAX)));

            let clients: Vec<PublicKey> = (0..3u8)
                .map(|i| SimKey::from_seed([10 + i; 32]).public_key())
                .collect();
            let tag = crate::clients::SESSION_NUMBER_LIMIT;
            let open = |client: PublicKey| session_opening(client, tag);
            let mut status = handle.status.clone();
            // (last decided, requests in the pool) once each of the first two is taken.
            for (client, taken) in clients[..2].iter().zip([(Cid(1), 0), (Cid(1), 1)]) {
                inbound_tx.send(open(*client)).expect("replica reads");
                tokio::time::timeout(
                    Duration::from_secs(10),
                    status.wait_for(|s| (s.last_decided, s.pending_requests) == taken),
                )
                .await
                .expect("taken while the fsync is stalled")
                .expect("replica runs");
            }
            // 6 actions held: the bound is reached. The third request is not taken.
            inbound_tx.send(open(clients[2])).expect("replica reads");
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = handle.status();
            assert_eq!(
                (now.last_decided, now.pending_requests),
                (Cid(1), 1),
                "the engine took an input with held actions at their bound"
            );
            assert_eq!(*network.session_sends.lock().unwrap(), vec![]);

            let replies: Vec<_> = clients.iter().map(|c| (*c, tag, "reply")).collect();
            release_fsyncs_and_wait_for(stall_tx, stall, &network, replies.len()).await;
            assert_eq!(*network.session_sends.lock().unwrap(), replies);
            assert_eq!(handle.status().last_decided, Cid(3));
            handle.shutdown().await;
        });
    }

    /// Many processes may share a client key (docs/design.md §3.7): a reply held behind an
    /// fsync goes to the route its session's request named, not to any of the key's
    /// connections, once the fsync ends. One key opens two sessions with different routing
    /// tags while the replica's fsyncs are stalled; nothing is sent to a client meanwhile,
    /// and then each reply goes to its own tag, in order.
    #[test]
    fn replies_held_behind_an_fsync_go_to_the_route_of_their_session_once_it_ends() {
        use smr_crypto::sim::SimKey;

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(1)
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let (handle, network, inbound_tx, stall_tx, stall, _dir) =
                start_with_fsyncs_stalled(None);

            let client = SimKey::from_seed([10; 32]).public_key();
            let tags = [
                crate::clients::SESSION_NUMBER_LIMIT,
                crate::clients::SESSION_NUMBER_LIMIT + 1,
            ];
            let mut status = handle.status.clone();
            for (tag, pending) in tags.into_iter().zip([0, 1]) {
                inbound_tx
                    .send(session_opening(client, tag))
                    .expect("replica reads");
                tokio::time::timeout(
                    Duration::from_secs(10),
                    status.wait_for(|s| (s.last_decided, s.pending_requests) == (Cid(1), pending)),
                )
                .await
                .expect("taken while the fsync is stalled")
                .expect("replica runs");
            }
            assert_eq!(*network.session_sends.lock().unwrap(), vec![]);

            let replies: Vec<_> = tags.iter().map(|tag| (client, *tag, "reply")).collect();
            release_fsyncs_and_wait_for(stall_tx, stall, &network, replies.len()).await;
            assert_eq!(*network.session_sends.lock().unwrap(), replies);
            handle.shutdown().await;
        });
    }

    /// A held send weighs what it holds, the frame's allocation, its peers and the action
    /// itself; the message it was encoded from is not kept (a send held both, and weighed
    /// twice its frame's length).
    #[test]
    fn a_held_send_weighs_its_frame_its_peers_and_the_action() {
        let mut frame = Vec::with_capacity(1000);
        frame.extend_from_slice(&[7; 600]);
        let action = HeldAction::Send {
            to: vec![Peer::Replica(1), Peer::Replica(2), Peer::Replica(3)],
            sending: Sending::of(&Message::SyncQuery),
            frame,
        };
        assert_eq!(
            action.held_bytes(),
            1000 + 3 * std::mem::size_of::<Peer>() + std::mem::size_of::<HeldAction>()
        );
    }

    /// A replica that never answers a status query (down, or Byzantine) left one waiter per
    /// `Client::status` call in the client for good: `smr status --watch` asks every second,
    /// so its memory grew for as long as it watched a silent replica (100 after 100 calls
    /// here, before the fix). Now a call that ends unanswered takes its waiter with it.
    #[tokio::test]
    async fn a_replica_that_never_answers_leaves_no_status_waiters_behind() {
        let client = Client::start(
            Arc::new(Silent),
            ClientConfig {
                quorums: smr_modes::Quorums::new(smr_modes::Mode::Bft, 4, 1).unwrap(),
                unordered_reads_enabled: true,
                max_outstanding: 4,
                max_op_bytes: 64,
                retry_timeout_ms: 1000,
            },
            Arc::new(smr_crypto::sim::SimKey::from_seed([3; 32])),
        );
        for _ in 0..100 {
            assert_eq!(client.status(1, Duration::from_millis(1)).await, None);
        }
        // A call dropped by its caller before its timeout: the next call clears its waiter.
        let dropped = client.status(1, Duration::from_secs(60));
        assert!(tokio::time::timeout(Duration::from_millis(1), dropped)
            .await
            .is_err());
        assert_eq!(client.status(1, Duration::from_millis(1)).await, None);
        let waiters = client.shared.status_waiters.lock().expect("client lock");
        assert_eq!(waiters.get(&1).map(Vec::len), None);
        drop(waiters);
        client.shutdown();
    }

    /// `smr_signature_verifications` counted a batch's items, but not those the verifier
    /// checked again one by one after the batch failed (ed25519's does, to name the first bad
    /// item): four signatures, the third bad, through `verify_batch_then_each` as the engine
    /// checks them cost a batch of 4, the first 3 again and the last alone, 8 checks, and 5
    /// were counted.
    #[test]
    fn the_signature_counter_counts_what_a_failed_batch_checks_again() {
        use smr_crypto::sim::{CountingSimVerifier, SimKey, SimVerifier};
        use smr_crypto::{SignedItem, Signer};
        let key = SimKey::from_seed([1; 32]);
        let mut sim = SimVerifier::new();
        sim.register(&key);
        let inner = Arc::new(CountingSimVerifier::new(sim));
        let metrics = Arc::new(ReplicaMetrics::default());
        let counting = CountingVerifier {
            inner: inner.clone(),
            metrics: metrics.clone(),
        };
        let public = key.public_key();
        let messages: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i]).collect();
        let mut signatures: Vec<_> = messages.iter().map(|m| key.sign(m)).collect();
        signatures[2] = key.sign(b"another message");
        let items: Vec<SignedItem<'_>> = messages
            .iter()
            .zip(&signatures)
            .map(|(message, signature)| SignedItem {
                key: &public,
                message,
                signature,
            })
            .collect();
        let (verdicts, submitted) = smr_crypto::verify_batch_then_each(&counting, &items);
        assert_eq!(
            verdicts,
            vec![
                Ok(()),
                Ok(()),
                Err(smr_crypto::VerifyError::BadSignature),
                Ok(())
            ]
        );
        assert_eq!(inner.checks(), 4 + 3 + 1);
        assert_eq!(submitted as u64, inner.checks());
        assert_eq!(metrics.signature_verifications.get(), inner.checks());
    }

    #[test]
    fn the_reader_checks_only_unsigned_frames_of_idle_workers_itself_and_in_bft_few_small_ones() {
        use ReaderBatch::{ClientFrames, Signed, Unsigned};
        assert!(verify_inline(1, 200, ClientFrames, true));
        assert!(verify_inline(
            MAX_INLINE_RUN_FRAMES,
            MAX_INLINE_RUN_BYTES,
            ClientFrames,
            true
        ));
        // A signature: a worker checks it beside the transport and the engine.
        assert!(!verify_inline(1, 200, Signed, true));
        // A backlog: the frames would overtake their peers' earlier ones.
        assert!(!verify_inline(1, 200, ClientFrames, false));
        assert!(!verify_inline(1, 200, Unsigned, false));
        // BFT under load: the workers' runs batch it.
        assert!(!verify_inline(
            MAX_INLINE_RUN_FRAMES + 1,
            200,
            ClientFrames,
            true
        ));
        assert!(!verify_inline(
            1,
            MAX_INLINE_RUN_BYTES + 1,
            ClientFrames,
            true
        ));
        // CFT: a whole reader batch of small frames, at any load; not one holding a big frame.
        assert!(verify_inline(
            MAX_READER_BATCH_FRAMES,
            MAX_UNSIGNED_INLINE_RUN_BYTES,
            Unsigned,
            true
        ));
        assert!(!verify_inline(
            2,
            MAX_UNSIGNED_INLINE_RUN_BYTES + 1,
            Unsigned,
            true
        ));
    }

    /// Request `seq` of the client numbered `client` (any u64).
    fn client_request_id(client: u64, seq: u64) -> RequestId {
        let mut key = [0xc1; 32];
        key[..8].copy_from_slice(&client.to_le_bytes());
        RequestId {
            client: smr_crypto::PublicKey(key),
            session: 1,
            seq,
        }
    }

    fn request_id(client: u8, seq: u64) -> RequestId {
        RequestId {
            client: smr_crypto::PublicKey([client; 32]),
            session: 1,
            seq,
        }
    }

    /// Review of issue 16: once the request timing map was full of requests that never get a
    /// reply (refused as `client_pool_full` or `rate_limited`: one client can send 65536 of
    /// them in seconds), every further arrival swept the whole map again on the engine task
    /// (65536 entries per request, for 60 s).
    #[test]
    fn a_full_request_timing_map_is_swept_at_most_once_until_an_entry_can_have_expired() {
        let mut timing = Timing::default();
        let start = std::time::Instant::now();
        // Many clients (each holds at most its own bound), all their requests unanswered.
        let per_client = timing.max_requests_per_client as u64;
        for seq in 0..MAX_TIMED_REQUESTS as u64 {
            let client = seq / per_client;
            timing.request_arrived(client_request_id(client, seq), start);
        }
        assert_eq!(timing.timed_requests, MAX_TIMED_REQUESTS);
        for seq in 0..1000 {
            timing.request_arrived(request_id(200, seq), start + Duration::from_secs(1));
        }
        assert!(
            timing.request_sweeps <= 1,
            "{} sweeps",
            timing.request_sweeps
        );
        // Once the first entries can have expired, a sweep makes room again.
        timing.request_arrived(
            request_id(201, 0),
            start + TIMED_REQUEST_EXPIRY + Duration::from_secs(1),
        );
        assert_eq!((timing.requests.len(), timing.timed_requests), (1, 1));
        assert_eq!(timing.request_sweeps, 2);
    }

    /// Client 1 sends as many requests as the whole map holds, none answered; then client 2's
    /// request arrives, and must be timed.
    fn one_client_fills_then_another_arrives(timing: &mut Timing) {
        let start = std::time::Instant::now();
        for seq in 0..MAX_TIMED_REQUESTS as u64 {
            timing.request_arrived(request_id(1, seq), start);
        }
        let other = request_id(2, 0);
        timing.request_arrived(other, start + Duration::from_secs(1));
        assert!(
            timing.replied(&other).is_some(),
            "another client's request is timed"
        );
    }

    /// `shares` against the entries: each key with its count, and nothing else.
    fn check_shares(timing: &Timing) {
        if timing.sharing {
            assert_eq!(timing.shares, timing.counted_shares());
        } else {
            assert!(timing.shares.is_empty());
        }
        assert_eq!(
            timing.timed_requests,
            timing.requests.values().map(VecDeque::len).sum::<usize>()
        );
    }

    /// The per-key counts behind the fair places cost the arrivals and replies nothing until
    /// a full map has to give a place, and nothing again once the map is less than half full.
    #[test]
    fn the_timing_maps_counts_per_key_are_kept_only_while_it_is_nearly_full() {
        let mut timing = Timing::default();
        let start = std::time::Instant::now();
        let per_client = timing.max_requests_per_client as u64;
        for seq in 0..MAX_TIMED_REQUESTS as u64 - 1 {
            timing.request_arrived(client_request_id(seq / per_client, seq), start);
        }
        assert!(!timing.sharing && timing.shares.is_empty());
        // The last place, then one more arrival: the full map gives a place.
        let last = MAX_TIMED_REQUESTS as u64 - 1;
        timing.request_arrived(client_request_id(last / per_client, last), start);
        assert!(!timing.sharing);
        timing.request_arrived(request_id(7, 0), start);
        assert!(timing.sharing);
        assert_eq!(timing.shares.len(), 129);
        check_shares(&timing);
        // Replies until the map is less than half full.
        let mut answered = 0u64;
        while timing.timed_requests >= MAX_TIMED_REQUESTS / 2 {
            let client = answered / per_client;
            let seq = answered;
            answered += 1;
            timing.replied(&client_request_id(client, seq));
            if answered.is_multiple_of(4096) {
                check_shares(&timing);
            }
        }
        assert!(!timing.sharing && timing.shares.is_empty());
        check_shares(&timing);
    }

    /// Issue 12 (review): with `clients = "any"` anyone can mint keys, and 128 keys each at its bound of
    /// 512 unanswered requests (64 per session, 8 sessions) filled all 65,536 entries of the
    /// request timing map: no other key's request was timed for 60 s, so the latency
    /// histogram showed the attack's keys only. Now while the map is full a key holding fewer
    /// entries than the most takes the place of the oldest entry of a key holding the most:
    /// an honest key's requests are timed, and the attack's keys keep what they hold less one
    /// entry each, at most, per honest entry.
    #[test]
    fn keys_minted_to_fill_the_request_timing_map_cannot_keep_another_keys_requests_untimed() {
        let mut timing = Timing::default();
        let start = std::time::Instant::now();
        let per_client = timing.max_requests_per_client as u64;
        assert_eq!(per_client, 512);
        for seq in 0..MAX_TIMED_REQUESTS as u64 {
            timing.request_arrived(client_request_id(seq / per_client, seq), start);
        }
        assert_eq!(
            (timing.requests.len(), timing.timed_requests),
            (128, MAX_TIMED_REQUESTS)
        );
        // An honest key's requests, one after another (each answered), and three in flight.
        let honest = |seq| request_id(7, seq);
        let later = start + Duration::from_secs(1);
        for seq in 0..10 {
            timing.request_arrived(honest(seq), later);
            assert!(
                timing.replied(&honest(seq)).is_some(),
                "request {seq} timed"
            );
        }
        for seq in 10..13 {
            timing.request_arrived(honest(seq), later);
        }
        for seq in 10..13 {
            assert!(
                timing.replied(&honest(seq)).is_some(),
                "request {seq} timed"
            );
        }
        // Three places were given, each by the oldest entry of a key holding the most: to the
        // first request, and to the two in flight beside the place the first one freed.
        assert_eq!(timing.requests_displaced, 3);
        assert_eq!(timing.timed_requests, MAX_TIMED_REQUESTS - 3);
        assert!(timing.requests.values().all(|t| t.len() >= 511));
        check_shares(&timing);
        // An attacking key at its bound makes room with its own oldest only.
        let key_0 = timing.requests[&client_request_id(0, 0).client].clone();
        timing.request_arrived(client_request_id(0, 1 << 20), later);
        let now_0 = &timing.requests[&client_request_id(0, 0).client];
        assert_eq!(now_0.len(), 512);
        assert_eq!(now_0.front(), key_0.get(1));
        assert_eq!(
            (timing.requests_displaced, timing.timed_requests),
            (3, MAX_TIMED_REQUESTS - 3)
        );
        check_shares(&timing);
        // A key holding as many as the most takes no place: its request is not timed.
        let mut even = Timing::default();
        for client in 0..MAX_TIMED_REQUESTS as u64 {
            even.request_arrived(client_request_id(client, 0), start);
        }
        let first = request_id(8, 0);
        even.request_arrived(first, later);
        assert_eq!(even.requests_displaced, 1, "a key with none takes a place");
        even.request_arrived(request_id(8, 1), later);
        assert_eq!(even.requests_displaced, 1, "a key with one takes none");
        assert!(even.replied(&request_id(8, 1)).is_none());
        assert!(even.replied(&first).is_some());
        check_shares(&even);
    }

    /// Stop 26: the request timing map was bounded in all (65,536 entries), not per client:
    /// one client's requests that never get a reply (refused as `client_pool_full` or
    /// `rate_limited`, or sent to a replica that is not the leader) filled it, and no other
    /// client's request was timed until they expired, 60 s later.
    #[test]
    fn one_clients_unanswered_requests_cannot_fill_the_request_timing_map() {
        let mut timing = Timing::default();
        one_client_fills_then_another_arrives(&mut timing);
        // The client's newest requests are timed; its oldest made room for them.
        let newest = request_id(1, MAX_TIMED_REQUESTS as u64 - 1);
        assert!(timing.replied(&newest).is_some());
        assert!(timing.replied(&request_id(1, 0)).is_none());
    }

    /// Review R2 of stop 26: the bound per key was what the pool holds of one key, clamped
    /// only to the whole map, so with `max_pending_per_client` of 8,192 or more (valid up to
    /// 65,536) one key's unanswered requests filled all 65,536 entries again, and each of its
    /// arrivals scanned them all.
    #[test]
    fn one_client_cannot_fill_the_request_timing_map_under_a_large_client_window() {
        let mut timing = Timing::new(crate::clients::MAX_CLIENT_WINDOW as usize);
        one_client_fills_then_another_arrives(&mut timing);
        assert!(timing.timed_requests <= MAX_TIMED_REQUESTS / 16);
    }

    /// Review of issue 16: PROPOSEs were timed as they arrived, before the engine checked
    /// them, so a Byzantine replica's PROPOSEs for cids beyond the window (refused by the
    /// engine, never decided, never forgotten) filled the map for good and no consensus
    /// latency was recorded again.
    #[test]
    fn proposals_beyond_the_window_are_not_timed_and_cannot_fill_the_map() {
        let mut timing = Timing::default();
        let at = std::time::Instant::now();
        let window = 64;
        for cid in 1_000_000..1_000_000 + MAX_TIMED_PROPOSALS as u64 {
            timing.proposed(Cid(cid), at, Cid(0), window);
        }
        timing.proposed(Cid(1), at, Cid(0), window);
        assert!(timing.decided(Cid(1)).is_some());
        timing.proposed(Cid(65), at, Cid(0), window);
        assert!(timing.decided(Cid(65)).is_none());
    }

    /// Issue 17 item 8 says every refusal of a damaged data dir gives the same advice
    /// (`REJOIN_ADVICE`); a stored checkpoint that does not decode, or stored records beyond
    /// what a replica can have written (`Engine::recover`'s refusals), said only "cannot
    /// rebuild the replica from its data directory".
    #[test]
    fn every_refusal_of_a_data_dir_says_to_move_it_aside_and_rejoin() {
        for refusal in [
            StartError::UndecodableRecord("x".into()),
            StartError::Recovery("stored checkpoint is unreadable: x".into()),
        ] {
            let text = refusal.to_string();
            assert!(
                text.contains("restart the replica on an empty one; it then rejoins"),
                "{text}"
            );
        }
    }

    #[tokio::test]
    async fn a_verify_queue_is_bounded_in_bytes_and_lets_one_large_frame_through_alone() {
        let queue = QueuedBytes::new(1000, 16, 1);
        assert!(queue.reserve(600).await);
        assert!(queue
            .permits
            .try_acquire_many(queue.permits_for(600))
            .is_err());
        queue.release_permits(queue.permits_for(600) as usize);
        assert!(
            queue.reserve(5000).await,
            "alone, a larger frame takes the whole queue"
        );
        assert_eq!(queue.permits.available_permits(), 0);
        assert!(queue
            .permits
            .try_acquire_many(queue.permits_for(1))
            .is_err());
        queue.release_permits(queue.permits_for(5000) as usize);
        assert_eq!(queue.permits.available_permits(), 1000);
    }

    /// A peer may have `1 / shares` of a lane's frames and bytes queued (never less than a
    /// verify run's), a frame larger than its share only alone; uncounting forgets a peer with
    /// nothing queued.
    #[test]
    fn a_peer_may_have_only_its_share_of_a_verify_lane_queued() {
        let lane = QueuedBytes::new(1 << 24, 2048, 4);
        assert_eq!((lane.share_frames, lane.share_bytes), (512, 1 << 22));
        let small = QueuedBytes::new(1000, 16, 4);
        assert_eq!((small.share_frames, small.share_bytes), (16, 1000));
        let (a, b) = (Peer::Replica(1), Peer::Replica(2));
        let many = vec![(a, 100); 512];
        assert!(lane.try_admit(&many));
        assert!(!lane.try_admit(&[(a, 1)]), "a's share of frames is full");
        assert!(lane.try_admit(&[(b, 1)]), "b has its own share");
        // All or nothing: b's frame fits, a's does not, so neither is counted.
        assert!(!lane.try_admit(&[(b, 1), (a, 1)]));
        lane.unadmit([(a, 100)]);
        assert!(lane.try_admit(&[(b, 1), (a, 1)]));
        lane.unadmit(many.iter().copied());
        lane.unadmit([(a, 1), (b, 1), (b, 1)]);
        assert!(lane.queued_by_peer.lock().unwrap().is_empty());
        // Bytes: a frame larger than the share passes alone, charged the share against the
        // lane (so it leaves the others theirs), then nothing more of that peer.
        assert_eq!(lane.permits_for(5 << 22), 1 << 22);
        assert!(lane.try_admit(&[(a, 5 << 22)]));
        assert!(!lane.try_admit(&[(a, 1)]));
        lane.unadmit([(a, 5 << 22)]);
        assert!(lane.try_admit(&[(a, 3 << 20), (a, 1 << 20)]));
        assert!(!lane.try_admit(&[(a, 1)]), "a's share of bytes is full");
    }

    /// The reader holds what a lane has no room for, in each peer's order, and queues it in
    /// turns, one frame of each peer at a time, as the worker takes frames; the room of every
    /// frame queued is noted for the network once.
    #[tokio::test]
    async fn held_frames_are_queued_in_each_peers_order_and_in_turns() {
        let (tx, mut rx) = mpsc::channel::<InboundFrame>(2);
        let (client_tx, _client_rx) = mpsc::channel::<InboundFrame>(2);
        let lane = Arc::new(QueuedBytes::new(1 << 20, 1024, 4));
        let clients = Arc::new(QueuedBytes::new(1 << 20, 1024, 16));
        let mut dealer = Dealer::new(
            vec![vec![(tx, lane.clone()), (client_tx, clients)]],
            vec![Arc::new(AtomicUsize::new(0))],
            [(1000, 1 << 20); 2],
        );
        let (a, b) = (Peer::Replica(1), Peer::Replica(2));
        let frame = |from: Peer, body: u8| InboundFrame {
            from,
            frame: vec![body; 10],
        };
        let mut batch = vec![
            frame(a, 1),
            frame(a, 2),
            frame(a, 3),
            frame(b, 1),
            frame(b, 2),
        ];
        assert!(dealer.deal(&mut batch));
        assert_eq!(dealer.released, vec![(a, 10), (a, 10)]);
        assert_eq!(dealer.held.frames, [3, 0]);
        dealer.released.clear();
        // The worker takes both: room for two more, a's next and then b's first.
        let mut taken = Vec::new();
        while let Ok(frame) = rx.try_recv() {
            taken.push(frame);
        }
        lane.taken(taken.iter(), 20);
        assert!(dealer.queue_held());
        assert_eq!(dealer.released, vec![(a, 10), (b, 10)]);
        assert_eq!(dealer.held.frames, [1, 0]);
        while let Ok(frame) = rx.try_recv() {
            taken.push(frame);
        }
        lane.taken(taken[2..].iter(), 20);
        assert!(dealer.queue_held());
        while let Ok(frame) = rx.try_recv() {
            taken.push(frame);
        }
        assert_eq!(
            taken
                .iter()
                .map(|f| (f.from, f.frame[0]))
                .collect::<Vec<_>>(),
            vec![(a, 1), (a, 2), (a, 3), (b, 1), (b, 2)]
        );
        assert!(dealer.holds_nothing());
    }

    fn lane(max_bytes: usize) -> (mpsc::Sender<InboundFrame>, Lane) {
        let (tx, rx) = mpsc::channel(1024);
        let bytes = Arc::new(QueuedBytes::new(max_bytes, 1024, 1));
        (tx, (rx, bytes))
    }

    #[test]
    fn a_verify_run_takes_waiting_replica_frames_before_a_client_backlog() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (replica_tx, mut replicas) = lane(1 << 20);
        let (client_tx, mut clients) = lane(1 << 20);
        let client = Peer::Client(smr_crypto::IdentityKey::from_seed([9; 32]).public_key());
        let queue = |tx: &mpsc::Sender<InboundFrame>, bytes: &QueuedBytes, from, body: u8| {
            assert!(runtime.block_on(bytes.reserve(1000)));
            tx.try_send(InboundFrame {
                from,
                frame: vec![body; 1000],
            })
            .unwrap();
        };
        // A client backlog of a whole run's worth arrives first, then two replica frames.
        for i in 0..MAX_VERIFY_RUN_FRAMES as u8 {
            queue(&client_tx, &clients.1, client, i);
        }
        queue(&replica_tx, &replicas.1, Peer::Replica(1), 200);
        queue(&replica_tx, &replicas.1, Peer::Replica(2), 201);
        let mut frames = Vec::new();
        assert!(next_run(
            runtime.handle(),
            &mut replicas,
            &mut clients,
            &mut frames
        ));
        let firsts: Vec<(Peer, u8)> = frames.iter().map(|f| (f.from, f.frame[0])).collect();
        // The replica frames lead the run; the client's follow in their order, up to the
        // run's frame bound (its byte bound, 256 KiB, is not reached by 128 frames of 1000).
        let mut expected = vec![(Peer::Replica(1), 200), (Peer::Replica(2), 201)];
        expected.extend((0..MAX_VERIFY_RUN_FRAMES as u8 - 2).map(|i| (client, i)));
        assert_eq!(firsts, expected);
        assert_eq!(
            replicas.1.permits.available_permits(),
            1 << 20,
            "taken frames give their bytes back"
        );
        // Closing both lanes ends the worker once they are drained.
        drop((replica_tx, client_tx));
        frames.clear();
        while next_run(runtime.handle(), &mut replicas, &mut clients, &mut frames) {}
        assert_eq!(frames.len(), MAX_VERIFY_RUN_FRAMES + 2 - expected.len());
    }
}
