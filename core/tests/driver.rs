//! The tokio driver over an in-memory network: real threads and tasks, no sockets.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smr_core::client::ClientConfig;
use smr_core::codec;
use smr_core::driver::{
    start_replica, Client, DriverOptions, EmptyStart, ReplicaError, StartError,
};
use smr_core::message::Message;
use smr_core::network::{InboundFrame, Network, Peer, SendError, Senders};
use smr_core::{ClientPolicy, EngineConfig, InvalidConfig, Limits, Service, Timeouts};
use smr_crypto::sim::{SimKey, SimVerifier};
use smr_crypto::{PublicKey, Verifier};
use smr_modes::{Mode, Quorums};
use tokio::sync::mpsc;

/// A hub of channels; `endpoint(me)` gives one node's view.
#[derive(Clone, Default)]
struct Hub {
    inboxes: Arc<Mutex<BTreeMap<Peer, Arc<Mailbox>>>>,
}

/// The frames a peer may have in an endpoint's receive queue, or taken from it with their room
/// kept ([`Network::recv_many_holding_room`]): replicas, clients. As the QUIC transport's shares
/// at its defaults in a cluster of 4 (a quarter, and a sixteenth, of a lane of 64 MiB, each
/// frame charged at least 8 KiB).
const RECEIVE_SHARE_FRAMES: [usize; 2] = [2048, 512];

/// One endpoint's receive side: its two queues, and each sender's room in them. A sender whose
/// share is full has its frames wait outside the queues, in order, until room is given back
/// (as QUIC flow control holds them at the sender).
struct Mailbox {
    txs: [mpsc::UnboundedSender<InboundFrame>; 2],
    room: Mutex<Room>,
    /// Each sender's share, in frames: replicas', clients' ([`RECEIVE_SHARE_FRAMES`] unless
    /// set by [`Hub::endpoint_with_shares`]).
    share_frames: [usize; 2],
}

#[derive(Default)]
struct Room {
    /// Per sender: its frames queued or taken with their room kept.
    holding: BTreeMap<Peer, usize>,
    /// Per sender: its frames waiting for room, in order.
    waiting: BTreeMap<Peer, std::collections::VecDeque<InboundFrame>>,
}

impl Mailbox {
    fn deliver(&self, frame: InboundFrame) -> Result<(), SendError> {
        let mut room = self.room.lock().unwrap();
        let kind = usize::from(matches!(frame.from, Peer::Client(_)));
        let holding = room.holding.get(&frame.from).copied().unwrap_or(0);
        if holding >= self.share_frames[kind] || room.waiting.contains_key(&frame.from) {
            room.waiting.entry(frame.from).or_default().push_back(frame);
            return Ok(());
        }
        *room.holding.entry(frame.from).or_insert(0) += 1;
        self.txs[kind].send(frame).map_err(|_| SendError::Closed)
    }

    /// Gives back the room of one frame of `peer`'s, and lets its next waiting frame in.
    fn release(&self, peer: Peer) {
        let mut room = self.room.lock().unwrap();
        let holding = room
            .holding
            .get_mut(&peer)
            .expect("room given back once per frame");
        *holding -= 1;
        if *holding == 0 {
            room.holding.remove(&peer);
        }
        if let Some(waiting) = room.waiting.get_mut(&peer) {
            let frame = waiting.pop_front().expect("none left empty");
            if waiting.is_empty() {
                room.waiting.remove(&peer);
            }
            let kind = usize::from(matches!(peer, Peer::Client(_)));
            *room.holding.entry(peer).or_insert(0) += 1;
            let _ = self.txs[kind].send(frame);
        }
    }

    /// Frames whose room is taken, and frames waiting for room.
    fn held(&self) -> (usize, usize) {
        let room = self.room.lock().unwrap();
        (
            room.holding.values().sum(),
            room.waiting.values().map(|w| w.len()).sum(),
        )
    }
}

/// One node's view of the hub. Like the QUIC transport, it keeps replicas' and clients' frames
/// in two queues, yields replica frames first, and bounds each sender's room in them.
struct MemNetwork {
    me: Peer,
    hub: Hub,
    mailbox: Arc<Mailbox>,
    inbox: tokio::sync::Mutex<Inbox>,
    /// Calls to take frames so far, and which of them took the last replica frame.
    calls: AtomicUsize,
    last_replica_frame_call: AtomicUsize,
    /// Frames taken so far: replicas', clients'.
    taken: [AtomicUsize; 2],
    /// Frames taken whose room is not given back yet, and the most there were.
    kept: [AtomicUsize; 2],
    /// What it sent by [`Network::send_to_session`]: the client key, the session (or
    /// routing tag) and the message's kind.
    session_sends: Mutex<Vec<(PublicKey, u64, &'static str)>>,
    /// What it announced ([`Network::announce_session`]), in order.
    announced: Mutex<Vec<u64>>,
}

struct Inbox {
    replicas: mpsc::UnboundedReceiver<InboundFrame>,
    clients: mpsc::UnboundedReceiver<InboundFrame>,
}

impl Hub {
    fn endpoint(&self, me: Peer) -> Arc<MemNetwork> {
        self.endpoint_with_shares(me, RECEIVE_SHARE_FRAMES)
    }

    /// As [`Hub::endpoint`], each sender's share of its receive queue `share_frames`
    /// (replicas', clients').
    fn endpoint_with_shares(&self, me: Peer, share_frames: [usize; 2]) -> Arc<MemNetwork> {
        let (replica_tx, replicas) = mpsc::unbounded_channel();
        let (client_tx, clients) = mpsc::unbounded_channel();
        let mailbox = Arc::new(Mailbox {
            txs: [replica_tx, client_tx],
            room: Mutex::new(Room::default()),
            share_frames,
        });
        self.inboxes.lock().unwrap().insert(me, mailbox.clone());
        Arc::new(MemNetwork {
            me,
            hub: self.clone(),
            mailbox,
            inbox: tokio::sync::Mutex::new(Inbox { replicas, clients }),
            calls: AtomicUsize::new(0),
            last_replica_frame_call: AtomicUsize::new(0),
            taken: [AtomicUsize::new(0), AtomicUsize::new(0)],
            kept: [AtomicUsize::new(0), AtomicUsize::new(0)],
            session_sends: Mutex::new(Vec::new()),
            announced: Mutex::new(Vec::new()),
        })
    }
}

impl MemNetwork {
    /// Counts a frame taken by call `call`.
    fn took(&self, call: usize, frame: &InboundFrame) {
        let kind = usize::from(matches!(frame.from, Peer::Client(_)));
        self.taken[kind].fetch_add(1, Ordering::SeqCst);
        if kind == 0 {
            self.last_replica_frame_call.store(call, Ordering::SeqCst);
        }
    }

    /// The next frame of `senders` waiting now, if any.
    fn try_take(inbox: &mut Inbox, senders: Senders) -> Option<InboundFrame> {
        match senders {
            Senders::Any => inbox
                .replicas
                .try_recv()
                .or_else(|_| inbox.clients.try_recv())
                .ok(),
            Senders::Replicas => inbox.replicas.try_recv().ok(),
            Senders::Clients => inbox.clients.try_recv().ok(),
        }
    }

    /// Waits for the next frame of `senders`; `None` once its queues are closed.
    async fn take(inbox: &mut Inbox, senders: Senders) -> Option<InboundFrame> {
        match senders {
            Senders::Any => tokio::select! {
                biased;
                Some(frame) = inbox.replicas.recv() => Some(frame),
                Some(frame) = inbox.clients.recv() => Some(frame),
                else => None,
            },
            Senders::Replicas => inbox.replicas.recv().await,
            Senders::Clients => inbox.clients.recv().await,
        }
    }
}

/// Replica `replica`'s WRITE for cid 1 in regency 0, signed with its key, encoded as a frame.
fn encoded_write(keys: &[SimKey], replica: u32) -> Vec<u8> {
    use smr_core::message::{Cid, Regency, Signed, Vote, VoteKind};
    let signer: &dyn smr_crypto::Signer = &keys[replica as usize];
    codec::encode(&Message::Write(Signed::new(
        Vote {
            kind: VoteKind::Write,
            replica,
            cid: Cid::FIRST,
            regency: Regency::ZERO,
            digest: smr_crypto::digest(b"batch"),
        },
        Some(signer),
    )))
}

/// Replica keys for `n` replicas (seeds 0..n) and a verifier that knows them and `clients`.
fn sim_keys(n: usize, clients: &[&SimKey]) -> (Vec<SimKey>, SimVerifier) {
    let keys: Vec<SimKey> = (0..n as u8).map(|i| SimKey::from_seed([i; 32])).collect();
    let mut sim = SimVerifier::new();
    for k in keys.iter().chain(clients.iter().copied()) {
        sim.register(k);
    }
    (keys, sim)
}

/// Replica `me`'s config in a cluster of `keys`, admitting any client.
fn engine_config(quorums: Quorums, keys: &[SimKey], me: usize, limits: Limits) -> EngineConfig {
    EngineConfig {
        quorums,
        me: me as u32,
        replica_keys: keys.iter().map(|k| k.public_key()).collect(),
        clients: ClientPolicy::Any,
        limits,
        timeouts: Timeouts::default(),
    }
}

impl Network for MemNetwork {
    fn send(&self, to: Peer, frame: Vec<u8>) -> Result<(), SendError> {
        let mailbox = (self.hub.inboxes.lock().unwrap().get(&to).cloned())
            .ok_or(SendError::UnknownPeer(to))?;
        mailbox.deliver(InboundFrame {
            from: self.me,
            frame,
        })
    }
    /// Noted, then sent as to `Peer::Client(key)`: the hub has one endpoint per key.
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
            .unwrap()
            .push((key, session, kind));
        self.send(Peer::Client(key), frame)
    }
    fn announce_session(&self, session: u64) {
        self.announced.lock().unwrap().push(session);
    }
    async fn recv(&self) -> Option<InboundFrame> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let mut inbox = self.inbox.lock().await;
        let frame = Self::take(&mut inbox, Senders::Any).await?;
        self.took(call, &frame);
        self.mailbox.release(frame.from);
        Some(frame)
    }
    async fn recv_many_from(
        &self,
        frames: &mut Vec<InboundFrame>,
        senders: Senders,
        max_frames: usize,
        max_bytes: usize,
    ) -> bool {
        let before = frames.len();
        let open = self
            .recv_many_holding_room(frames, senders, max_frames, max_bytes)
            .await;
        for frame in &frames[before..] {
            self.kept[0].fetch_sub(1, Ordering::SeqCst);
            self.mailbox.release(frame.from);
        }
        open
    }
    /// Four senders' shares of frames, as in a cluster of 4.
    fn receive_queue_frames(&self, senders: Senders) -> Option<usize> {
        let kind = match senders {
            Senders::Replicas => 0,
            Senders::Clients => 1,
            Senders::Any => return None,
        };
        Some(4 * self.mailbox.share_frames[kind])
    }
    fn release_room(&self, frames: &[(Peer, usize)]) {
        for (peer, _) in frames {
            self.kept[0].fetch_sub(1, Ordering::SeqCst);
            self.mailbox.release(*peer);
        }
    }
    async fn recv_many_holding_room(
        &self,
        frames: &mut Vec<InboundFrame>,
        senders: Senders,
        max_frames: usize,
        max_bytes: usize,
    ) -> bool {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let mut inbox = self.inbox.lock().await;
        // Nothing waits once the first frame is taken: cancel-safe.
        let Some(first) = Self::take(&mut inbox, senders).await else {
            return false;
        };
        let (mut taken, mut bytes) = (0, 0);
        let mut next = Some(first);
        while let Some(frame) = next.take() {
            self.took(call, &frame);
            let kept = self.kept[0].fetch_add(1, Ordering::SeqCst) + 1;
            self.kept[1].fetch_max(kept, Ordering::SeqCst);
            taken += 1;
            bytes += frame.frame.len();
            frames.push(frame);
            if taken < max_frames && bytes < max_bytes {
                next = Self::try_take(&mut inbox, senders);
            }
        }
        true
    }
}

#[derive(Default)]
struct Counter(i64);

impl Service for Counter {
    fn execute(&mut self, op: &[u8]) -> Vec<u8> {
        self.0 += i64::from_le_bytes(op.try_into().unwrap_or([0; 8]));
        self.0.to_le_bytes().to_vec()
    }
    fn query(&self, _op: &[u8]) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }
    fn restore(&mut self, s: &[u8]) -> Result<(), String> {
        self.0 = i64::from_le_bytes(s.try_into().map_err(|_| "bad snapshot")?);
        Ok(())
    }
}

async fn run_cluster(mode: Mode, n: usize, f: usize) {
    let quorums = Quorums::new(mode, n, f).unwrap();
    let client_key = SimKey::from_seed([100; 32]);
    let (keys, sim) = sim_keys(n, &[&client_key]);
    let signatures: Arc<dyn Verifier> = Arc::new(sim);
    let hub = Hub::default();
    let mut handles = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let cfg = engine_config(quorums, &keys, i, Limits::default());
        let net = hub.endpoint(Peer::Replica(i as u32));
        handles.push(
            start_replica(
                cfg,
                Arc::new(key.clone()),
                signatures.clone(),
                net,
                Box::new(Counter::default()),
                DriverOptions {
                    empty_start: EmptyStart::NewCluster,
                    ..DriverOptions::default()
                },
                None,
            )
            .expect("replica starts"),
        );
    }
    let client_net = hub.endpoint(Peer::Client(client_key.public_key()));
    let client = Client::start(
        client_net,
        ClientConfig {
            quorums,
            unordered_reads_enabled: false,
            max_outstanding: 8,
            max_op_bytes: Limits::default().max_op_bytes,
            retry_timeout_ms: 1000,
        },
        Arc::new(client_key),
    );
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            client
                .invoke(1i64.to_le_bytes().to_vec(), Duration::from_secs(10))
                .await
        }));
    }
    let mut seen = Vec::new();
    for t in tasks {
        let result = t.await.unwrap().expect("invocation completes");
        seen.push(i64::from_le_bytes(result.try_into().unwrap()));
    }
    seen.sort();
    assert_eq!(
        seen,
        (1..=50).collect::<Vec<i64>>(),
        "each increment executed exactly once"
    );
    for r in 0..n as u32 {
        let status = client
            .status(r, Duration::from_secs(5))
            .await
            .expect("replica answers status");
        assert_eq!(status.replica, r);
        assert_eq!(status.mode, mode.to_string());
    }
    let digests: Vec<_> = {
        let mut d = Vec::new();
        for r in 0..n as u32 {
            // Followers may trail the reply quorum by a moment.
            let mut report = client.status(r, Duration::from_secs(5)).await.unwrap();
            for _ in 0..50 {
                if report.last_decided == handles[0].status().last_decided.max(report.last_decided)
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                report = client.status(r, Duration::from_secs(5)).await.unwrap();
            }
            d.push((report.last_decided, report.state_digest));
        }
        d
    };
    assert!(
        digests.windows(2).all(|w| w[0] == w[1]),
        "replicas agree: {digests:?}"
    );
    client.shutdown();
    for h in handles {
        h.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bft_cluster_over_the_driver_executes_concurrent_invocations_exactly_once() {
    run_cluster(Mode::Bft, 4, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cft_cluster_over_the_driver_executes_concurrent_invocations_exactly_once() {
    run_cluster(Mode::Cft, 3, 1).await;
}

fn start_persistent(
    hub: &Hub,
    quorums: Quorums,
    keys: &[SimKey],
    signatures: &Arc<dyn Verifier>,
    dirs: &[tempfile::TempDir],
    policy: smr_core::storage::FsyncPolicy,
) -> Vec<smr_core::driver::ReplicaHandle> {
    keys.iter()
        .enumerate()
        .map(|(i, key)| {
            let cfg = engine_config(
                quorums,
                keys,
                i,
                Limits {
                    checkpoint_period: 7,
                    ..Limits::default()
                },
            );
            let storage =
                smr_core::storage::Wal::open(dirs[i].path(), policy).expect("data dir opens");
            start_replica(
                cfg,
                Arc::new(key.clone()),
                signatures.clone(),
                hub.endpoint(Peer::Replica(i as u32)),
                Box::new(Counter::default()),
                DriverOptions {
                    empty_start: EmptyStart::NewCluster,
                    ..DriverOptions::default()
                },
                Some(storage),
            )
            .expect("replica starts from its data dir")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_restarted_from_its_data_dirs_loses_and_repeats_nothing() {
    restarted_from_data_dirs(smr_core::storage::FsyncPolicy::Never).await;
}

/// With `fsync = "always"` every sync's fsync runs on a blocking thread and every later send
/// and service command waits for it (group commit, `runner::GroupCommit`): a held action
/// never freed would stall the cluster here, and one freed out of order would break the
/// counter's sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_with_fsync_always_restarted_from_its_data_dirs_loses_and_repeats_nothing() {
    restarted_from_data_dirs(smr_core::storage::FsyncPolicy::Always).await;
}

async fn restarted_from_data_dirs(policy: smr_core::storage::FsyncPolicy) {
    let quorums = Quorums::new(Mode::Bft, 4, 1).unwrap();
    let client_key = SimKey::from_seed([100; 32]);
    let (keys, sim) = sim_keys(4, &[&client_key]);
    let signatures: Arc<dyn Verifier> = Arc::new(sim);
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let hub = Hub::default();
    let client_config = ClientConfig {
        quorums,
        unordered_reads_enabled: false,
        max_outstanding: 4,
        max_op_bytes: Limits::default().max_op_bytes,
        retry_timeout_ms: 1000,
    };
    let mut seen = Vec::new();
    for round in 0..2 {
        let handles = start_persistent(&hub, quorums, &keys, &signatures, &dirs, policy);
        let client = Client::start(
            hub.endpoint(Peer::Client(client_key.public_key())),
            client_config.clone(),
            Arc::new(client_key.clone()),
        );
        for _ in 0..25 {
            let result = client
                .invoke(1i64.to_le_bytes().to_vec(), Duration::from_secs(20))
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            seen.push(i64::from_le_bytes(result.try_into().unwrap()));
        }
        client.shutdown();
        for h in handles {
            h.shutdown().await;
        }
    }
    // The second round continued the counter: every acknowledged increment survived the
    // restart of every replica, and none executed twice.
    assert_eq!(seen, (1..=50).collect::<Vec<i64>>());
}

/// A config the engine cannot run with is refused before anything starts, with the rule it
/// breaks, rather than panicking in the engine.
#[tokio::test]
async fn an_invalid_config_is_an_error_not_a_panic() {
    let quorums = Quorums::new(Mode::Cft, 3, 1).unwrap();
    let (keys, sim) = sim_keys(3, &[]);
    let cfg = engine_config(
        quorums,
        &keys,
        0,
        Limits {
            max_instances_in_flight: 0,
            ..Limits::default()
        },
    );
    let hub = Hub::default();
    let result = start_replica(
        cfg,
        Arc::new(keys[0].clone()),
        Arc::new(sim),
        hub.endpoint(Peer::Replica(0)),
        Box::new(Counter::default()),
        DriverOptions::default(),
        None,
    );
    match result {
        Err(StartError::Config(InvalidConfig::LimitNotPositive { limit })) => {
            assert_eq!(limit, "max_instances_in_flight");
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("an invalid config started a replica"),
    }
}

/// A network whose `send` panics: the engine task, the only one that sends, panics on its first
/// message (the leader's heartbeat), as on a broken invariant.
struct PanicsOnSend;

impl Network for PanicsOnSend {
    fn send(&self, _to: Peer, _frame: Vec<u8>) -> Result<(), SendError> {
        panic!("a broken invariant in the engine task");
    }
    async fn recv(&self) -> Option<InboundFrame> {
        std::future::pending().await
    }
}

/// Fail-stop (issue 17 item 4): a panic in the engine task is not lost inside tokio.
/// `ReplicaHandle::closed` resolves to it, with its message, and `shutdown` still returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_engine_task_resolves_closed_to_the_error() {
    let quorums = Quorums::new(Mode::Cft, 3, 1).unwrap();
    let (keys, sim) = sim_keys(3, &[]);
    let cfg = engine_config(quorums, &keys, 0, Limits::default());
    let handle = start_replica(
        cfg,
        Arc::new(keys[0].clone()),
        Arc::new(sim),
        Arc::new(PanicsOnSend),
        Box::new(Counter::default()),
        DriverOptions::default(),
        None,
    )
    .expect("replica starts");
    let outcome = tokio::time::timeout(Duration::from_secs(10), handle.closed())
        .await
        .expect("closed() resolves once the engine task panicked");
    assert_eq!(
        outcome,
        Err(ReplicaError::Panicked {
            component: "engine task",
            message: "a broken invariant in the engine task".to_string(),
        })
    );
    assert_eq!(handle.outcome(), Some(outcome));
    tokio::time::timeout(Duration::from_secs(5), handle.shutdown())
        .await
        .expect("shutdown of a failed replica returns");
}

/// A network that delivers nothing and is closed from the start.
struct Closed;

impl Network for Closed {
    fn send(&self, _to: Peer, _frame: Vec<u8>) -> Result<(), SendError> {
        Ok(())
    }
    async fn recv(&self) -> Option<InboundFrame> {
        None
    }
}

/// Fail-stop for clients: when the client's reader ends (its network closed under it), the
/// client closes, and an invocation fails with `Closed` at once instead of waiting out its
/// timeout for replies that can no longer arrive.
#[tokio::test]
async fn a_client_whose_network_closes_fails_invocations_at_once() {
    let quorums = Quorums::new(Mode::Cft, 3, 1).unwrap();
    let client = Client::start(
        Arc::new(Closed),
        ClientConfig {
            quorums,
            unordered_reads_enabled: false,
            max_outstanding: 4,
            max_op_bytes: Limits::default().max_op_bytes,
            retry_timeout_ms: 1000,
        },
        Arc::new(SimKey::from_seed([100; 32])),
    );
    let started = std::time::Instant::now();
    let result = client
        .invoke(1i64.to_le_bytes().to_vec(), Duration::from_secs(10))
        .await;
    assert!(
        matches!(result, Err(smr_core::driver::InvokeError::Closed)),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// A verifier that panics: the verify worker that checks the first request panics.
struct PanicsOnVerify;

impl Verifier for PanicsOnVerify {
    fn verify(
        &self,
        _key: &smr_crypto::PublicKey,
        _message: &[u8],
        _signature: &smr_crypto::Signature,
    ) -> Result<(), smr_crypto::VerifyError> {
        panic!("a broken invariant in a verify worker");
    }
    fn check_batch(&self, _items: &[smr_crypto::SignedItem<'_>]) -> smr_crypto::BatchChecked {
        panic!("a broken invariant in a verify worker");
    }
}

/// Fail-stop: a verify worker (an OS thread) that panics stops the whole replica, instead of
/// leaving it running without that worker's peers; `closed` names the worker. A replica's
/// signed vote makes the worker verify (a client's request on its own connection would not:
/// it is authenticated by the channel, docs/design.md §5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_verify_worker_resolves_closed_to_the_error() {
    use smr_core::message::{Cid, Regency, Signed, Vote, VoteKind};
    let quorums = Quorums::new(Mode::Bft, 4, 1).unwrap();
    let keys: Vec<SimKey> = (0..4u8).map(|i| SimKey::from_seed([i; 32])).collect();
    let hub = Hub::default();
    let cfg = engine_config(quorums, &keys, 0, Limits::default());
    let handle = start_replica(
        cfg,
        Arc::new(keys[0].clone()),
        Arc::new(PanicsOnVerify),
        hub.endpoint(Peer::Replica(0)),
        Box::new(Counter::default()),
        DriverOptions::default(),
        None,
    )
    .expect("replica starts");
    let peer = hub.endpoint(Peer::Replica(1));
    let vote = Vote {
        kind: VoteKind::Write,
        replica: 1,
        cid: Cid::FIRST,
        regency: Regency::ZERO,
        digest: smr_crypto::digest(b"batch"),
    };
    let signer: &dyn smr_crypto::Signer = &keys[1];
    let frame = codec::encode(&Message::Write(Signed::new(vote, Some(signer))));
    peer.send(Peer::Replica(0), frame)
        .expect("replica 0 is on the hub");
    let outcome = tokio::time::timeout(Duration::from_secs(10), handle.closed())
        .await
        .expect("closed() resolves once the verify worker panicked");
    assert_eq!(
        outcome,
        Err(ReplicaError::Panicked {
            component: "verify worker",
            message: "a broken invariant in a verify worker".to_string(),
        })
    );
    handle.shutdown().await;
}

/// Issue 17 item 7: a replica started on an empty data dir, without `--rejoin`, started as a
/// brand-new replica and voted at once, though its data dir may have been lost after it voted.
/// Now it starts rejoining: with no peer answering it abstains, and says so in its status; once
/// its peers (started with `--new-cluster`) report cid 0, it waits a window past that, which
/// they reach by ordering empty batches for it, and takes part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_on_an_empty_data_dir_abstains_until_its_peers_report() {
    let quorums = Quorums::new(Mode::Bft, 4, 1).unwrap();
    let (keys, sim) = sim_keys(4, &[]);
    let signatures: Arc<dyn Verifier> = Arc::new(sim);
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::default();
    let config = |i: usize| engine_config(quorums, &keys, i, Limits::default());
    let storage = smr_core::storage::Wal::open(dir.path(), smr_core::storage::FsyncPolicy::Never)
        .expect("data dir opens");
    let mut handles = vec![start_replica(
        config(0),
        Arc::new(keys[0].clone()),
        signatures.clone(),
        hub.endpoint(Peer::Replica(0)),
        Box::new(Counter::default()),
        DriverOptions::default(),
        Some(storage),
    )
    .expect("replica starts on an empty data dir")];
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        handles[0].status().participation,
        smr_core::message::Participation::CollectingReports {
            reports: 0,
            needed: 3
        },
        "alone, on an empty data dir, replica 0 abstains"
    );
    // The others of the brand-new cluster start: everyone reports cid 0, and all take part.
    for (i, key) in keys.iter().enumerate().skip(1) {
        handles.push(
            start_replica(
                config(i),
                Arc::new(key.clone()),
                signatures.clone(),
                hub.endpoint(Peer::Replica(i as u32)),
                Box::new(Counter::default()),
                DriverOptions {
                    empty_start: EmptyStart::NewCluster,
                    ..DriverOptions::default()
                },
                None,
            )
            .expect("replica starts"),
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while handles
        .iter()
        .any(|h| !h.status().participation.participates())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a brand-new cluster takes part: {:?}",
            handles
                .iter()
                .map(|h| h.status().participation)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for h in handles {
        h.shutdown().await;
    }
}

/// Issue 13 (latency at one request in flight): the network reader decodes a lone frame that
/// needs no signature check itself and hands it to the engine, instead of waking a verify
/// worker and then the engine (two thread wake-ups per message). A signed frame still goes to
/// a worker. Before, every frame went through a worker and `frames_verified_inline` did not
/// exist.
async fn inline_checks(mode: Mode, n: usize) -> (u64, u64, u64, u64) {
    use smr_core::message::{Cid, Regency, Signed, Vote, VoteKind};
    let quorums = Quorums::new(mode, n, 1).unwrap();
    let client_key = SimKey::from_seed([100; 32]);
    let (keys, sim) = sim_keys(n, &[&client_key]);
    let hub = Hub::default();
    let cfg = engine_config(quorums, &keys, 0, Limits::default());
    let handle = start_replica(
        cfg,
        Arc::new(keys[0].clone()),
        Arc::new(sim),
        hub.endpoint(Peer::Replica(0)),
        Box::new(Counter::default()),
        DriverOptions {
            empty_start: EmptyStart::NewCluster,
            ..DriverOptions::default()
        },
        None,
    )
    .expect("replica starts");
    let metrics = handle.metrics();
    let settled = |what: &'static str, done: &dyn Fn() -> bool| {
        let started = std::time::Instant::now();
        while !done() {
            assert!(started.elapsed() < Duration::from_secs(10), "{what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    // A vote of replica 1 (signed in BFT only).
    let vote = Vote {
        kind: VoteKind::Write,
        replica: 1,
        cid: Cid::FIRST,
        regency: Regency::ZERO,
        digest: smr_crypto::digest(b"batch"),
    };
    let signer: &dyn smr_crypto::Signer = &keys[1];
    let signed = Signed::new(vote, quorums.requires_signatures().then_some(signer));
    let kind = if mode == Mode::Bft {
        Message::Write(signed)
    } else {
        Message::Accept(signed)
    };
    hub.endpoint(Peer::Replica(1))
        .send(Peer::Replica(0), codec::encode(&kind))
        .expect("replica 0 is on the hub");
    settled("the vote reached the engine", &|| {
        metrics.frames_verified_inline.get() + metrics.signature_verifications.get() >= 1
    });
    let after_vote = metrics.frames_verified_inline.get();
    // A client's frame, authenticated by its channel.
    let client = Peer::Client(client_key.public_key());
    hub.endpoint(client)
        .send(
            Peer::Replica(0),
            codec::encode(&Message::StatusQuery { route: 0 }),
        )
        .expect("replica 0 is on the hub");
    settled("the status query reached the engine", &|| {
        metrics.frames_verified_inline.get() > after_vote
    });
    let after_client_frame = metrics.frames_verified_inline.get();
    // A client frame bigger than a BFT inline run (5,000 bytes that decode to nothing): CFT's
    // reader still decodes it itself, BFT's hands it to a worker.
    hub.endpoint(client)
        .send(Peer::Replica(0), vec![0xff; 5_000])
        .expect("replica 0 is on the hub");
    settled("the big frame was decoded", &|| {
        metrics.decode_errors.get() == 1
    });
    let counts = (
        after_vote,
        after_client_frame,
        metrics.signature_verifications.get(),
        metrics.frames_verified_inline.get(),
    );
    handle.shutdown().await;
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bft_reader_checks_a_lone_client_frame_itself_and_leaves_signatures_to_the_workers() {
    // (inline after the vote, inline after the client frame, signatures verified, inline
    // after the big client frame)
    assert_eq!(inline_checks(Mode::Bft, 4).await, (0, 1, 1, 1));
}

/// In CFT, which signs nothing, the reader decodes what it took itself at any load, up to
/// `MAX_UNSIGNED_INLINE_RUN_BYTES` (a frame of 5,000 bytes too, which a BFT reader leaves to
/// a worker; before, CFT's reader did so too: `(1, 2, 0, 2)`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cft_reader_checks_lone_frames_itself() {
    assert_eq!(inline_checks(Mode::Cft, 3).await, (1, 2, 0, 3));
}

/// Issue 13's target, counted: in a fault-free BFT run where the client sends each request to
/// every replica at once, the leader verifies each client signature once (its engine, before
/// the PROPOSE) and a follower verifies a PROPOSE's request only if the PROPOSE overtook the
/// client's direct copy (which then costs nothing): every ordered request is verified or found
/// in the cache at each follower, exactly once. The counts reach the status report and the
/// metrics. (Which of the two it is at a follower is a race between the client's send and the
/// leader's PROPOSE: the exact split is asserted on the verifier in
/// `review25_verified_cache.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_free_bft_run_verifies_each_client_signature_once_across_the_replicas() {
    let (n, f) = (4, 1);
    let quorums = Quorums::new(Mode::Bft, n, f).unwrap();
    let client_key = SimKey::from_seed([100; 32]);
    let (keys, sim) = sim_keys(n, &[&client_key]);
    let signatures: Arc<dyn Verifier> = Arc::new(sim);
    let hub = Hub::default();
    let handles: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            start_replica(
                engine_config(quorums, &keys, i, Limits::default()),
                Arc::new(key.clone()),
                signatures.clone(),
                hub.endpoint(Peer::Replica(i as u32)),
                Box::new(Counter::default()),
                DriverOptions {
                    empty_start: EmptyStart::NewCluster,
                    ..DriverOptions::default()
                },
                None,
            )
            .expect("replica starts")
        })
        .collect();
    let client = Client::start(
        hub.endpoint(Peer::Client(client_key.public_key())),
        ClientConfig {
            quorums,
            unordered_reads_enabled: false,
            max_outstanding: 1,
            max_op_bytes: Limits::default().max_op_bytes,
            retry_timeout_ms: 10_000,
        },
        Arc::new(client_key),
    );
    // One at a time, so that each PROPOSE carries one request.
    for _ in 0..5 {
        client
            .invoke(1i64.to_le_bytes().to_vec(), Duration::from_secs(10))
            .await
            .expect("invocation completes");
    }
    let mut counts = Vec::new();
    for r in 0..n as u32 {
        // Followers may trail the reply quorum by a moment.
        let started = std::time::Instant::now();
        let report = loop {
            let report = client.status(r, Duration::from_secs(5)).await.unwrap();
            if report.last_decided == handles[0].status().last_decided {
                break report;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "replica {r} trails"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        counts.push((
            report.executed_requests,
            report.client_signatures_verified,
            report.client_signatures_cached,
        ));
    }
    // 5 operations executed; 6 requests ordered (the session's open request too, which the
    // service does not execute): the leader (replica 0) verified each one; each follower
    // verified or found each one, once.
    assert_eq!(counts[0], (5, 6, 0), "the leader");
    for (executed, verified, cached) in &counts[1..] {
        assert_eq!((*executed, verified + cached), (5, 6), "{counts:?}");
    }
    let metrics: Vec<(u64, u64, u64)> = handles
        .iter()
        .map(|h| {
            let m = h.metrics();
            (
                m.ops_executed.get(),
                m.client_signature_verifications.get(),
                m.client_signatures_cached.get(),
            )
        })
        .collect();
    assert_eq!(
        metrics, counts,
        "the metrics say what the status reports say"
    );
    client.shutdown();
    for h in handles {
        h.shutdown().await;
    }
}

/// A verifier that records each signature it checks, as (signer, client frames the replica had
/// refused by then), and holds its first check until the gate opens: the verify worker that
/// makes it stalls meanwhile.
struct GateVerifier {
    inner: SimVerifier,
    metrics: std::sync::OnceLock<Arc<smr_core::metrics::ReplicaMetrics>>,
    /// (a check is waiting at the gate, the gate is open)
    gate: Mutex<(bool, bool)>,
    opened: std::sync::Condvar,
    checked: Mutex<Vec<(smr_crypto::PublicKey, u64)>>,
}

impl GateVerifier {
    fn pass(&self, keys: &[&smr_crypto::PublicKey]) {
        let mut gate = self.gate.lock().unwrap();
        gate.0 = true;
        while !gate.1 {
            gate = self.opened.wait(gate).unwrap();
        }
        drop(gate);
        let refused = self.client_frames_refused();
        let mut checked = self.checked.lock().unwrap();
        checked.extend(keys.iter().map(|key| (**key, refused)));
    }

    /// Frames refused so far as messages a client may not send.
    fn client_frames_refused(&self) -> u64 {
        let rejections = self.metrics.get().unwrap().rejections();
        rejections.get("unexpected_message").copied().unwrap_or(0)
    }

    fn open(&self) {
        self.gate.lock().unwrap().1 = true;
        self.opened.notify_all();
    }
}

impl Verifier for GateVerifier {
    fn verify(
        &self,
        key: &smr_crypto::PublicKey,
        message: &[u8],
        signature: &smr_crypto::Signature,
    ) -> Result<(), smr_crypto::VerifyError> {
        self.pass(&[key]);
        self.inner.verify(key, message, signature)
    }
    fn check_batch(&self, items: &[smr_crypto::SignedItem<'_>]) -> smr_crypto::BatchChecked {
        self.pass(&items.iter().map(|item| item.key).collect::<Vec<_>>());
        self.inner.check_batch(items)
    }
}

/// Waits up to `limit` for `done`; whether it came.
async fn within(limit: Duration, done: impl Fn() -> bool) -> bool {
    let started = std::time::Instant::now();
    while !done() {
        if started.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    true
}

/// Issue 12 (no peer holds up what a quorum decides): a client that keeps its verify lane full
/// while its worker is busy made the network reader wait for room in that lane, taking nothing
/// from the transport meanwhile, so replica frames waited behind the client's. Now the reader
/// holds the client's frames that do not fit (their room in the network kept) and still takes replica
/// frames: replica 2's vote, sent after the client's flood, is queued while the worker is
/// stalled and checked in the worker's next run, before any of the client's frames. Before,
/// the vote was taken only once the client's frames the reader had in hand were queued, and
/// the worker refused those queued before it first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_filling_its_verify_lane_does_not_hold_up_replica_frames() {
    use smr_core::driver::MAX_READER_BATCH_FRAMES;
    let quorums = Quorums::new(Mode::Bft, 4, 1).unwrap();
    let client_key = SimKey::from_seed([100; 32]);
    let (keys, sim) = sim_keys(4, &[&client_key]);
    let verifier = Arc::new(GateVerifier {
        inner: sim,
        metrics: std::sync::OnceLock::new(),
        gate: Mutex::new((false, false)),
        opened: std::sync::Condvar::new(),
        checked: Mutex::new(Vec::new()),
    });
    let hub = Hub::default();
    let network = hub.endpoint(Peer::Replica(0));
    let handle = start_replica(
        engine_config(quorums, &keys, 0, Limits::default()),
        Arc::new(keys[0].clone()),
        verifier.clone(),
        network.clone(),
        Box::new(Counter::default()),
        DriverOptions {
            verify_workers: 1,
            // Lanes of 4 frames.
            verify_queue_frames: 8,
            empty_start: EmptyStart::NewCluster,
            ..DriverOptions::default()
        },
        None,
    )
    .expect("replica starts");
    assert!(verifier.metrics.set(handle.metrics()).is_ok());
    let vote = |replica: u32| encoded_write(&keys, replica);
    // Replica 1's vote: the worker takes it and stalls in its check.
    hub.endpoint(Peer::Replica(1))
        .send(Peer::Replica(0), vote(1))
        .unwrap();
    assert!(
        within(Duration::from_secs(10), || verifier.gate.lock().unwrap().0).await,
        "the worker checks replica 1's vote"
    );
    // The client sends two reader batches of frames the verifier refuses (a vote, which a
    // client may not send): 4 fill the client lane, and the reader holds (before: waited to
    // queue) the others it took.
    let client = hub.endpoint(Peer::Client(client_key.public_key()));
    let flood = 2 * MAX_READER_BATCH_FRAMES;
    let lane = 4;
    for _ in 0..flood {
        client.send(Peer::Replica(0), vote(1)).unwrap();
    }
    assert!(
        within(Duration::from_secs(10), || network.taken[1]
            .load(Ordering::SeqCst)
            > lane)
        .await,
        "the reader takes more of the client's frames than its lane holds"
    );
    // Then replica 2's vote. The reader takes it and asks for more (so it has dealt it) while
    // the worker is still stalled (before, it was not taken: this waits in vain).
    hub.endpoint(Peer::Replica(2))
        .send(Peer::Replica(0), vote(2))
        .unwrap();
    let dealt = within(Duration::from_secs(2), || {
        network.taken[0].load(Ordering::SeqCst) == 2
            && network.calls.load(Ordering::SeqCst)
                > network.last_replica_frame_call.load(Ordering::SeqCst)
    })
    .await;
    // The reader holds the client's frames its lane has no room for; their room in the
    // network's receive queue stays taken meanwhile (the client's share bounds them there).
    assert_eq!(network.mailbox.held(), (flood - lane, 0));
    verifier.open();
    assert!(
        within(Duration::from_secs(10), || verifier
            .checked
            .lock()
            .unwrap()
            .len()
            == 2)
        .await,
        "both votes are checked"
    );
    // Replica 2's vote was checked before any client frame was refused.
    assert_eq!(
        *verifier.checked.lock().unwrap(),
        vec![(keys[1].public_key(), 0), (keys[2].public_key(), 0)],
        "dealt while the worker was stalled: {dealt}"
    );
    // Every frame of the client is refused in the end: the frames held were queued once the
    // lane had room, none lost.
    assert!(
        within(Duration::from_secs(10), || verifier.client_frames_refused()
            == flood as u64)
        .await,
        "{:?}",
        handle.metrics().rejections()
    );
    assert_eq!(network.taken[1].load(Ordering::SeqCst), flood);
    // And the room of every frame was given back, once.
    assert_eq!(network.mailbox.held(), (0, 0));
    handle.shutdown().await;
}

/// A verifier that takes `per_item` for every signature of `slow`'s (a replica whose frames
/// keep its verify worker busy: a Byzantine replica sending validly signed votes faster than
/// the worker checks them).
struct SlowVerifier {
    inner: SimVerifier,
    slow: smr_crypto::PublicKey,
    per_item: Duration,
}

impl Verifier for SlowVerifier {
    fn verify(
        &self,
        key: &smr_crypto::PublicKey,
        message: &[u8],
        signature: &smr_crypto::Signature,
    ) -> Result<(), smr_crypto::VerifyError> {
        if *key == self.slow {
            std::thread::sleep(self.per_item);
        }
        self.inner.verify(key, message, signature)
    }
    fn check_batch(&self, items: &[smr_crypto::SignedItem<'_>]) -> smr_crypto::BatchChecked {
        let slow = items.iter().filter(|item| *item.key == self.slow).count();
        std::thread::sleep(self.per_item * slow as u32);
        self.inner.check_batch(items)
    }
}

/// A client key whose frames go to verify worker `worker` of 2 (the driver's `worker_for`).
fn client_key_on_worker(worker: usize) -> SimKey {
    (100u8..=255)
        .map(|seed| SimKey::from_seed([seed; 32]))
        .find(|key| usize::from(key.public_key().0[0]) % 2 == worker)
        .expect("a key for each worker")
}

/// Whether client B (whose verify worker, 1, is idle) gets an answer to its status query
/// within 2 s while replica 2 keeps worker 0 busy with its replica lane, after client A (of
/// worker 0) has sent `client_a_frames` frames.
async fn idle_worker_client_answered(client_a_frames: usize) -> bool {
    let quorums = Quorums::new(Mode::Bft, 4, 1).unwrap();
    let (a_key, b_key) = (client_key_on_worker(0), client_key_on_worker(1));
    let (keys, sim) = sim_keys(4, &[&a_key, &b_key]);
    let verifier = Arc::new(SlowVerifier {
        inner: sim,
        slow: keys[2].public_key(),
        per_item: Duration::from_millis(2),
    });
    let hub = Hub::default();
    let network = hub.endpoint(Peer::Replica(0));
    let handle = start_replica(
        engine_config(quorums, &keys, 0, Limits::default()),
        Arc::new(keys[0].clone()),
        verifier,
        network.clone(),
        Box::new(Counter::default()),
        DriverOptions {
            // Replica 2 and client A on worker 0, client B on worker 1; default lanes
            // (2,048 frames each).
            verify_workers: 2,
            empty_start: EmptyStart::NewCluster,
            ..DriverOptions::default()
        },
        None,
    )
    .expect("replica starts");
    let vote = |replica: u32| encoded_write(&keys, replica);
    let lane = DriverOptions::default().verify_queue_frames / 2;
    // Replica 2: validly signed votes, more than worker 0 checks in the test's time (2 ms
    // each: 3,000 are 6 s of its work), so its replica lane always holds a whole verify run.
    let byzantine = hub.endpoint(Peer::Replica(2));
    let flood = 3_000;
    for _ in 0..flood {
        byzantine.send(Peer::Replica(0), vote(2)).unwrap();
    }
    assert!(
        within(Duration::from_secs(10), || network.taken[0]
            .load(Ordering::SeqCst)
            > lane)
        .await,
        "the reader fills worker 0's replica lane"
    );
    // Client A (worker 0): frames its worker never reaches (it serves its replica lane
    // first, a whole run of it each time).
    let client_a = hub.endpoint(Peer::Client(a_key.public_key()));
    for _ in 0..client_a_frames {
        client_a.send(Peer::Replica(0), vote(1)).unwrap();
    }
    assert!(
        within(Duration::from_secs(10), || network.taken[1]
            .load(Ordering::SeqCst)
            >= client_a_frames.min(lane + 1))
        .await,
        "the reader takes client A's frames"
    );
    // Client B (worker 1, idle): one status query.
    let client_b = hub.endpoint(Peer::Client(b_key.public_key()));
    client_b
        .send(
            Peer::Replica(0),
            codec::encode(&Message::StatusQuery { route: 0 }),
        )
        .unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(2), client_b.recv())
        .await
        .is_ok();
    let taken = network.taken.each_ref().map(|t| t.load(Ordering::SeqCst));
    eprintln!(
        "client A frames {client_a_frames}: B answered {answered}; frames taken (replicas, clients) {taken:?}"
    );
    drop(handle);
    answered
}

/// Without client A's frames, B is answered: replica 2's full lane does not hold up client
/// frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_replica_lane_alone_does_not_hold_up_clients() {
    assert!(idle_worker_client_answered(0).await);
}

/// A Byzantine replica keeps worker 0's replica lane full. Worker 0 served that lane first, so
/// its client lane never drained; once client A (worker 0) had filled it, the reader held A's
/// frames and took no client frame at all: client B, whose worker is idle, was not answered
/// within 2 s (frames taken `[3000, 2049]`). Now every verify run leaves a quarter to waiting
/// client frames (`CLIENT_SHARE_OF_RUN_FRAMES`), so the client lane drains and B is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_keeping_its_lane_full_cannot_hold_up_every_client_behind_one_full_client_lane() {
    let lane = DriverOptions::default().verify_queue_frames / 2;
    assert!(idle_worker_client_answered(lane + 64).await);
}

/// A one-replica CFT cluster on `hub`, admitting `client`; its network endpoint and handle.
fn single_replica(
    hub: &Hub,
    client: &SimKey,
) -> (Arc<MemNetwork>, smr_core::driver::ReplicaHandle) {
    let quorums = Quorums::new(Mode::Cft, 1, 0).unwrap();
    let (keys, sim) = sim_keys(1, &[client]);
    let net = hub.endpoint(Peer::Replica(0));
    let handle = start_replica(
        engine_config(quorums, &keys, 0, Limits::default()),
        Arc::new(keys[0].clone()),
        Arc::new(sim),
        net.clone(),
        Box::new(Counter::default()),
        DriverOptions {
            empty_start: EmptyStart::NewCluster,
            ..DriverOptions::default()
        },
        None,
    )
    .expect("replica starts");
    (net, handle)
}

/// The status sends of `net` ([`MemNetwork::session_sends`] of kind "status").
fn status_sends(net: &MemNetwork) -> Vec<(PublicKey, u64, &'static str)> {
    let sends = net.session_sends.lock().unwrap();
    sends.iter().filter(|s| s.2 == "status").copied().collect()
}

/// Processes sharing a client key each announce their own routing tag, then their session
/// (docs/design.md §3.7, "Sessions"); a status query names what its connection announced and
/// the replica answers over the connection that announced it, as it sends a session's
/// replies. It sent the answer to the key's newest connection instead (`Network::send`), so
/// a process asking while another process of its key was connected got no answer. Two
/// queries of one key with routes 5 and 6 are answered by exactly two session sends, in
/// order; before the fix there were none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_answer_goes_to_the_connection_that_announced_the_query_route() {
    let hub = Hub::default();
    let client_key = SimKey::from_seed([100; 32]);
    let (replica, handle) = single_replica(&hub, &client_key);
    let key = client_key.public_key();
    let client = hub.endpoint(Peer::Client(key));
    for route in [5, 6] {
        client
            .send(
                Peer::Replica(0),
                codec::encode(&Message::StatusQuery { route }),
            )
            .unwrap();
    }
    let mut answers = Vec::new();
    for _ in 0..2 {
        let frame = tokio::time::timeout(Duration::from_secs(5), client.recv())
            .await
            .expect("the replica answers")
            .expect("the hub stays open");
        assert_eq!(frame.from, Peer::Replica(0));
        match codec::decode::<Message>(&frame.frame).unwrap() {
            Message::Status(report) => answers.push(report.replica),
            other => panic!("expected a status answer, got {}", other.kind_name()),
        }
    }
    assert_eq!(answers, vec![0, 0]);
    assert_eq!(
        *replica.session_sends.lock().unwrap(),
        vec![(key, 5, "status"), (key, 6, "status")]
    );
    handle.shutdown().await;
}

/// `Client::status` names the client's routing tag until its session opens, then the session:
/// whatever its connections announced last, so that the answer finds this process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_status_query_names_its_tag_then_its_session() {
    let hub = Hub::default();
    let client_key = SimKey::from_seed([100; 32]);
    let (replica, handle) = single_replica(&hub, &client_key);
    let key = client_key.public_key();
    let client_net = hub.endpoint(Peer::Client(key));
    let tag = Client::<MemNetwork>::new_tag();
    let client = Client::start_with_tag(
        client_net.clone(),
        ClientConfig {
            quorums: Quorums::new(Mode::Cft, 1, 0).unwrap(),
            unordered_reads_enabled: false,
            max_outstanding: 4,
            max_op_bytes: Limits::default().max_op_bytes,
            retry_timeout_ms: 1000,
        },
        Arc::new(client_key),
        tag,
    );
    let wait = Duration::from_secs(5);
    let before_open = client.status(0, wait).await.expect("the replica answers");
    assert_eq!(before_open.replica, 0);
    assert_eq!(status_sends(&replica), vec![(key, tag, "status")]);
    let session = client.open(wait).await.expect("the session opens");
    assert_eq!(*client_net.announced.lock().unwrap(), vec![tag, session]);
    let after_open = client.status(0, wait).await.expect("the replica answers");
    assert_eq!(after_open.replica, 0);
    assert_eq!(
        status_sends(&replica),
        vec![(key, tag, "status"), (key, session, "status")]
    );
    // The open's reply went by the tag too (however often it was sent).
    assert!(replica
        .session_sends
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.2 == "reply")
        .all(|s| *s == (key, tag, "reply")));
    client.shutdown();
    handle.shutdown().await;
}

/// A [`SlowVerifier`] that also notes whether it has checked a signature of `watched`.
struct WatchingVerifier {
    slow: SlowVerifier,
    watched: smr_crypto::PublicKey,
    seen: std::sync::atomic::AtomicBool,
}

impl WatchingVerifier {
    fn note(&self, keys: impl IntoIterator<Item = smr_crypto::PublicKey>) {
        if keys.into_iter().any(|key| key == self.watched) {
            self.seen.store(true, Ordering::SeqCst);
        }
    }
}

impl Verifier for WatchingVerifier {
    fn verify(
        &self,
        key: &smr_crypto::PublicKey,
        message: &[u8],
        signature: &smr_crypto::Signature,
    ) -> Result<(), smr_crypto::VerifyError> {
        let verdict = self.slow.verify(key, message, signature);
        self.note([*key]);
        verdict
    }
    fn check_batch(&self, items: &[smr_crypto::SignedItem<'_>]) -> smr_crypto::BatchChecked {
        let checked = self.slow.check_batch(items);
        self.note(items.iter().map(|item| *item.key));
        checked
    }
}

/// Whether replica 3's vote (its verify worker, 1 of 2, idle) is checked within 2 s after
/// replica 2 (worker 0) has sent `flood` validly signed votes that take worker 0 2 ms each.
async fn idle_worker_replica_vote_checked(flood: usize) -> bool {
    vote_checked_after_a_flood(
        2,
        3,
        flood,
        Duration::from_millis(2),
        RECEIVE_SHARE_FRAMES[0],
    )
    .await
}

/// Whether replica `voter`'s vote is checked within 2 s after replica 2 has sent `flood`
/// validly signed votes that take its worker `per_vote` each, with `workers` verify workers
/// (replica r's frames go to worker r mod `workers`).
async fn vote_checked_after_a_flood(
    workers: usize,
    voter: u32,
    flood: usize,
    per_vote: Duration,
    replica_share_frames: usize,
) -> bool {
    let quorums = Quorums::new(Mode::Bft, 4, 1).unwrap();
    let (keys, sim) = sim_keys(4, &[]);
    let verifier = Arc::new(WatchingVerifier {
        slow: SlowVerifier {
            inner: sim,
            slow: keys[2].public_key(),
            per_item: per_vote,
        },
        watched: keys[voter as usize].public_key(),
        seen: std::sync::atomic::AtomicBool::new(false),
    });
    let hub = Hub::default();
    let network = hub.endpoint_with_shares(
        Peer::Replica(0),
        [replica_share_frames, RECEIVE_SHARE_FRAMES[1]],
    );
    let handle = start_replica(
        engine_config(quorums, &keys, 0, Limits::default()),
        Arc::new(keys[0].clone()),
        verifier.clone(),
        network.clone(),
        Box::new(Counter::default()),
        DriverOptions {
            // Default lanes (2,048 frames each).
            verify_workers: workers,
            empty_start: EmptyStart::NewCluster,
            ..DriverOptions::default()
        },
        None,
    )
    .expect("replica starts");
    let vote = |replica: u32| encoded_write(&keys, replica);
    let lane = DriverOptions::default().verify_queue_frames / 2;
    let byzantine = hub.endpoint(Peer::Replica(2));
    for _ in 0..flood {
        byzantine.send(Peer::Replica(0), vote(2)).unwrap();
    }
    if flood > lane {
        assert!(
            within(Duration::from_secs(10), || network.taken[0]
                .load(Ordering::SeqCst)
                > lane)
            .await,
            "the reader takes more of replica 2's frames than a lane holds"
        );
    }
    hub.endpoint(Peer::Replica(voter))
        .send(Peer::Replica(0), vote(voter))
        .unwrap();
    let checked = within(Duration::from_secs(2), || {
        verifier.seen.load(Ordering::SeqCst)
    })
    .await;
    let taken = network.taken.each_ref().map(|t| t.load(Ordering::SeqCst));
    eprintln!(
        "replica 2 frames {flood}: replica {voter}'s vote checked within 2 s {checked}; frames taken (replicas, clients) {taken:?}"
    );
    drop(handle);
    checked
}

/// Without replica 2's frames, replica 3's vote is checked at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_for_an_idle_worker_is_checked_at_once() {
    assert!(idle_worker_replica_vote_checked(0).await);
}

/// Issue 12 (docs/design.md §7.8): a Byzantine replica keeps worker 0's replica lane full. The
/// reader then held replica frames and took no replica frame at all until worker 0 freed room,
/// so replica 3's vote, whose worker (1) is idle, waited behind every frame of replica 2 ahead
/// of it at the transport: here 1,920 of them (within replica 2's share of the QUIC receive
/// queue's replica lane at the defaults, 2,048 frames of 8 KiB charge), about 4 s of worker 0's
/// time; not checked within 2 s, frames taken `[3098, 0]`. Now the reader holds replica 2's
/// frames apart, their room still taken in the network (so replica 2 waits on its own share
/// there), and goes on taking the others'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_keeping_its_lane_full_does_not_hold_up_votes_for_idle_workers() {
    let lane = DriverOptions::default().verify_queue_frames / 2;
    let held = smr_core::driver::MAX_READER_BATCH_FRAMES;
    assert!(idle_worker_replica_vote_checked(lane + held + 1_920).await);
}

/// The client share of a run is a share of runs, not of time: replica 2 makes worker 0's runs
/// slow (96 of its votes each, 2 ms apiece), and client A (worker 0) keeps 480 frames waiting at
/// the transport behind its full client lane (within one client's share of the QUIC receive
/// queue's client lane at the defaults, 512 frames of 8 KiB charge). The reader took client
/// frames only as worker 0 freed room, 32 per run, so client B's status query, whose worker (1)
/// is idle, waited about 15 of worker 0's runs (not answered within 2 s, client frames taken
/// 2,375 of 2,561). Now the reader holds client A's frames apart and takes B's at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_replica_lane_and_one_client_do_not_hold_up_clients_of_idle_workers() {
    let lane = DriverOptions::default().verify_queue_frames / 2;
    let held = smr_core::driver::MAX_READER_BATCH_FRAMES;
    assert!(idle_worker_client_answered(lane + held + 480).await);
}

/// Issue 12 (per-peer resources have a per-peer bound): with one verify worker, replica 2
/// filled the whole replica lane (2,048 frames) with validly signed votes that take 1 ms each,
/// and replica 1's vote waited behind all of them, and behind those of replica 2's frames the
/// reader held or had not taken yet. Now each replica may have only a quarter of a lane queued
/// (`1 / n`), and the reader holds replica 2's others apart from replica 1's: replica 1's vote
/// waits behind at most 512 of replica 2's (about 0.5 s of the worker's time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_flooding_a_shared_worker_delays_another_replicas_vote_by_its_share_only() {
    let lane = DriverOptions::default().verify_queue_frames / 2;
    assert!(
        vote_checked_after_a_flood(
            1,
            1,
            2 * lane,
            Duration::from_millis(1),
            RECEIVE_SHARE_FRAMES[0]
        )
        .await
    );
}

/// A replica's share of the network's receive queue may be larger than what the reader holds of
/// a kind at the verify queues' bounds (4,096 frames): so it was in the QUIC transport at the
/// embedded replica's default limits, where a replica's share was raised to one frame of its
/// 256 MiB limit, the whole lane (8,192 frames). The reader then stopped taking replica frames
/// before replica 2's share held it back, and replica 3's vote, whose worker (1) is idle,
/// waited behind replica 2's frames (not checked within 2 s; frames taken 5,632 of 7,001). The
/// reader now holds up to the network's own bound for the kind
/// (`Network::receive_queue_frames`), so only replica 2's share holds it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_share_larger_than_the_verify_queues_holds_back_only_that_replica() {
    for share in [2_048, 8_192] {
        assert!(
            vote_checked_after_a_flood(2, 3, 7_000, Duration::from_millis(2), share).await,
            "replica share of {share} frames"
        );
    }
}

/// A [`SlowVerifier`] that notes every signed message it checks, in order, with its signer.
struct RecordingVerifier {
    slow: SlowVerifier,
    checked: Mutex<Vec<(smr_crypto::PublicKey, Vec<u8>)>>,
}

impl Verifier for RecordingVerifier {
    fn verify(
        &self,
        key: &smr_crypto::PublicKey,
        message: &[u8],
        signature: &smr_crypto::Signature,
    ) -> Result<(), smr_crypto::VerifyError> {
        self.checked.lock().unwrap().push((*key, message.to_vec()));
        self.slow.verify(key, message, signature)
    }
    fn check_batch(&self, items: &[smr_crypto::SignedItem<'_>]) -> smr_crypto::BatchChecked {
        self.checked
            .lock()
            .unwrap()
            .extend(items.iter().map(|item| (*item.key, item.message.to_vec())));
        self.slow.check_batch(items)
    }
}

/// Every path a frame takes through the reader gives its room in the network back exactly once,
/// and keeps its peer's order: one worker with replica lanes of 512 frames (each replica a share
/// of 128), replica 2 flooding votes that take 1 ms each, replicas 1 and 3 sending numbered
/// votes between undecodable frames, a client's status queries (verified by the reader while
/// the worker is idle, then queued or held) and undecodable frames. In the end every frame was
/// taken, none holds room (a leak would keep it; a second release panics the network), and
/// replica 1's and 3's votes were checked in the order they were sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_frame_gives_its_room_back_once_and_each_peer_keeps_its_order() {
    use smr_core::driver::MAX_READER_BATCH_FRAMES;
    use smr_core::message::{Cid, Regency, Signed, Vote, VoteKind};
    let quorums = Quorums::new(Mode::Bft, 4, 1).unwrap();
    let client_key = SimKey::from_seed([100; 32]);
    let (keys, sim) = sim_keys(4, &[&client_key]);
    let verifier = Arc::new(RecordingVerifier {
        slow: SlowVerifier {
            inner: sim,
            slow: keys[2].public_key(),
            per_item: Duration::from_millis(1),
        },
        checked: Mutex::new(Vec::new()),
    });
    let hub = Hub::default();
    let network = hub.endpoint(Peer::Replica(0));
    let handle = start_replica(
        engine_config(quorums, &keys, 0, Limits::default()),
        Arc::new(keys[0].clone()),
        verifier.clone(),
        network.clone(),
        Box::new(Counter::default()),
        DriverOptions {
            verify_workers: 1,
            verify_queue_frames: 1024,
            empty_start: EmptyStart::NewCluster,
            ..DriverOptions::default()
        },
        None,
    )
    .expect("replica starts");
    let digest = |replica: u32, i: usize| smr_crypto::digest(format!("{replica}/{i}").as_bytes());
    let vote = |replica: u32, i: usize| {
        let signer: &dyn smr_crypto::Signer = &keys[replica as usize];
        codec::encode(&Message::Write(Signed::new(
            Vote {
                kind: VoteKind::Write,
                replica,
                cid: Cid::FIRST,
                regency: Regency::ZERO,
                digest: digest(replica, i),
            },
            Some(signer),
        )))
    };
    let query = codec::encode(&Message::StatusQuery { route: 0 });
    let client = hub.endpoint(Peer::Client(client_key.public_key()));
    let replicas: Vec<_> = (1..4).map(|r| hub.endpoint(Peer::Replica(r))).collect();
    let mut sent = 0;
    // While the worker is idle: the reader checks the client's queries itself.
    for _ in 0..4 {
        client.send(Peer::Replica(0), query.clone()).unwrap();
        sent += 1;
        assert!(
            tokio::time::timeout(Duration::from_secs(5), client.recv())
                .await
                .is_ok(),
            "answered"
        );
    }
    let numbered = 300;
    for i in 0..numbered {
        for _ in 0..3 {
            replicas[1].send(Peer::Replica(0), vote(2, i)).unwrap();
            sent += 1;
        }
        replicas[0].send(Peer::Replica(0), vote(1, i)).unwrap();
        replicas[2].send(Peer::Replica(0), vote(3, i)).unwrap();
        sent += 2;
        if i % 10 == 0 {
            replicas[0].send(Peer::Replica(0), vec![0xff; 9]).unwrap();
            client.send(Peer::Replica(0), vec![0xff; 9]).unwrap();
            client.send(Peer::Replica(0), query.clone()).unwrap();
            sent += 3;
        }
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let done = within(Duration::from_secs(20), || {
        network
            .taken
            .iter()
            .map(|t| t.load(Ordering::SeqCst))
            .sum::<usize>()
            == sent
            && network.mailbox.held() == (0, 0)
    })
    .await;
    let taken = network.taken.each_ref().map(|t| t.load(Ordering::SeqCst));
    let kept = network.kept.each_ref().map(|k| k.load(Ordering::SeqCst));
    eprintln!(
        "frames sent {sent}, taken (replicas, clients) {taken:?}; frames with room taken, waiting for room {:?}; inline {}; taken with room kept now, at most {kept:?}",
        network.mailbox.held(),
        handle.metrics().frames_verified_inline.get()
    );
    assert!(done, "every frame taken and its room given back");
    assert!(
        kept[1] > 2 * MAX_READER_BATCH_FRAMES,
        "the reader held frames for lanes without room: at most {} at once",
        kept[1]
    );
    // Each of replica 1's and 3's votes checked once, in the order sent.
    let checked = verifier.checked.lock().unwrap().clone();
    for replica in [1u32, 3] {
        let key = keys[replica as usize].public_key();
        let order: Vec<usize> = checked
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, message)| {
                (0..numbered)
                    .find(|&i| {
                        let d = digest(replica, i);
                        message.windows(d.0.len()).any(|w| w == d.0.as_slice())
                    })
                    .expect("a numbered vote")
            })
            .collect();
        assert_eq!(
            order,
            (0..numbered).collect::<Vec<_>>(),
            "replica {replica}"
        );
    }
    handle.shutdown().await;
}
