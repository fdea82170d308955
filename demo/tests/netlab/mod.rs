//! A private network for process tests: one Linux network namespace per replica and one for the
//! clients, each joined by a veth pair to a relay namespace, where a user-space UDP relay (QUIC
//! is UDP) carries every replica-replica and client-replica datagram and can delay, jitter,
//! drop, duplicate, reorder and partition each directed link.
//!
//! Addresses exist only inside the namespaces: node k (replica k for k < n, the clients at
//! k = n) has `10.213.k.2/24` on its `eth0`; the relay namespace has `10.213.k.1/24` on the other
//! end. No namespace has a default route, so nothing can reach an address outside them.
//!
//! Links through the relay: replica i's config names replica j at `10.213.i.1:(20000 + j)`, a
//! relay socket on i's own veth; the relay forwards what it receives there from a socket of its
//! own per flow (like a NAT) to `10.213.j.2:7000`, where replica j listens, and sends the replies
//! back the same way. The relay so knows the directed link (i, j) of every datagram from the
//! socket it arrived on. Replicas' configs differ only in addresses, which are local settings
//! (core/src/settings.rs): identity is by pinned TLS keys, and no replica requires a peer's
//! source address to be its configured one.
//!
//! [`NetLab`] deletes its namespaces on drop (a panicking test too), after the relay and the
//! replica processes it owns are stopped; namespaces left by a test process that was killed are
//! deleted by the next run (their names carry the dead process's pid).

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smr_core::cluster::ClusterConfig;
use smr_core::ReplicaId;
use smr_crypto::IdentityKey;
use smr_demo::keygen::{self, KeygenOptions};
use smr_demo::local::READY_MARKER;
use smr_modes::Mode;
use smr_transport::Client;
use tokio::net::UdpSocket;

/// The port every replica listens on, inside its own namespace.
pub const REPLICA_PORT: u16 = 7000;
/// The relay's socket for link (i, j) is `10.213.i.1:(RELAY_PORT_BASE + j)`.
pub const RELAY_PORT_BASE: u16 = 20000;

/// Node k's address: `10.213.k.2`.
pub fn node_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 213, k as u8, 2)
}

/// The relay's address on node k's veth: `10.213.k.1`.
pub fn relay_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 213, k as u8, 1)
}

fn sock(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

/// Runs `ip ARGS`; the error says what failed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Moves the calling thread into network namespace `name` (threads it creates afterwards, and
/// sockets created on them, are in it too).
pub fn enter(name: &str) -> std::io::Result<()> {
    let file = File::open(format!("/run/netns/{name}"))?;
    rustix::thread::move_into_link_name_space(
        file.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )?;
    Ok(())
}

/// Deletes `smr-<pid>-...` namespaces whose test process no longer exists.
fn delete_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("smr-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// Deletes `smr-netfaults-<pid>-...` temp dirs whose test process no longer exists (a run killed
/// with SIGKILL cannot drop its own).
fn delete_stale_dirs() {
    let temp = std::env::temp_dir();
    let Ok(entries) = std::fs::read_dir(&temp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("smr-netfaults-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

static LABS: AtomicUsize = AtomicUsize::new(0);

/// Why the network-fault tests cannot run here, if they cannot: not root, no `ip`, or no
/// network namespaces.
pub fn unavailable() -> Option<String> {
    if !is_root() {
        return Some("not running as root (network namespaces need CAP_SYS_ADMIN)".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("the `ip` command (iproute2) is not installed".into());
    }
    let probe = format!(
        "smr-{}-probe{}",
        std::process::id(),
        LABS.fetch_add(1, Ordering::Relaxed)
    );
    if let Err(e) = ip(&["netns", "add", &probe]) {
        return Some(format!("cannot create a network namespace: {e}"));
    }
    let _ = ip(&["netns", "del", &probe]);
    None
}

/// The namespaces of one test: `nodes` nodes and the relay's, joined by veth pairs.
pub struct NetLab {
    prefix: String,
    nodes: usize,
    created: Vec<String>,
}

impl NetLab {
    /// Creates the namespaces and links for `nodes` nodes (at most 250).
    pub fn create(nodes: usize) -> Result<NetLab, String> {
        assert!(nodes <= 250);
        delete_stale_namespaces();
        let prefix = format!(
            "smr-{}-{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = NetLab {
            prefix,
            nodes,
            created: Vec::new(),
        };
        let relay = lab.relay_ns();
        lab.add_ns(&relay)?;
        ip(&["-n", &relay, "link", "set", "lo", "up"])?;
        for k in 0..nodes {
            let node = lab.node_ns(k);
            lab.add_ns(&node)?;
            let here = format!("e{k}");
            ip(&[
                "-n", &relay, "link", "add", &here, "type", "veth", "peer", "name", "eth0",
                "netns", &node,
            ])?;
            ip(&[
                "-n",
                &relay,
                "addr",
                "add",
                &format!("{}/24", relay_ip(k)),
                "dev",
                &here,
            ])?;
            ip(&["-n", &relay, "link", "set", &here, "up"])?;
            ip(&[
                "-n",
                &node,
                "addr",
                "add",
                &format!("{}/24", node_ip(k)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &node, "link", "set", "eth0", "up"])?;
            ip(&["-n", &node, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    fn add_ns(&mut self, name: &str) -> Result<(), String> {
        ip(&["netns", "add", name])?;
        self.created.push(name.to_string());
        Ok(())
    }

    pub fn relay_ns(&self) -> String {
        format!("{}-relay", self.prefix)
    }

    pub fn node_ns(&self, k: usize) -> String {
        format!("{}-n{k}", self.prefix)
    }

    pub fn nodes(&self) -> usize {
        self.nodes
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for name in self.created.iter().rev() {
            if let Err(e) = ip(&["netns", "del", name]) {
                eprintln!("netlab: {e}");
            }
        }
    }
}

// ----- the relay ------------------------------------------------------------------------------

/// What the relay does to the datagrams of one directed link.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Fault {
    /// Every datagram waits this long...
    pub delay_ms: u64,
    /// ...plus or minus up to this much (uniform).
    pub jitter_ms: u64,
    /// Probability of dropping a datagram.
    pub loss: f64,
    /// Probability of sending a datagram twice.
    pub duplicate: f64,
    /// Probability of holding a datagram back by an extra `delay_ms + jitter_ms + 5` ms, so that
    /// later ones overtake it.
    pub reorder: f64,
    /// Drop everything.
    pub partitioned: bool,
}

/// What the relay counted on one directed link.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkStats {
    pub received: u64,
    pub forwarded: u64,
    pub dropped_loss: u64,
    pub dropped_partition: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Sum and largest of the delays applied (from arrival to the send), in microseconds.
    pub delay_sum_us: u64,
    pub delay_max_us: u64,
}

impl LinkStats {
    fn add(&mut self, other: &LinkStats) {
        self.received += other.received;
        self.forwarded += other.forwarded;
        self.dropped_loss += other.dropped_loss;
        self.dropped_partition += other.dropped_partition;
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
        self.delay_sum_us += other.delay_sum_us;
        self.delay_max_us = self.delay_max_us.max(other.delay_max_us);
    }

    /// Mean delay applied to forwarded datagrams, in milliseconds.
    pub fn mean_delay_ms(&self) -> f64 {
        if self.forwarded == 0 {
            0.0
        } else {
            self.delay_sum_us as f64 / self.forwarded as f64 / 1000.0
        }
    }

    /// Share of received datagrams dropped as loss (partitions not counted).
    pub fn loss_rate(&self) -> f64 {
        let eligible = self.received - self.dropped_partition;
        if eligible == 0 {
            0.0
        } else {
            self.dropped_loss as f64 / eligible as f64
        }
    }
}

struct RelayShared {
    nodes: usize,
    faults: Mutex<Vec<Fault>>,
    stats: Mutex<Vec<LinkStats>>,
    rng: Mutex<u64>,
}

impl RelayShared {
    fn link(&self, from: usize, to: usize) -> usize {
        from * self.nodes + to
    }

    /// SplitMix64: uniform in [0, 1).
    fn random(&self) -> f64 {
        let mut state = self.rng.lock().unwrap();
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Decides the fate of one datagram on link (from, to): the delays of its copies (none if
    /// dropped).
    fn plan(&self, from: usize, to: usize) -> Vec<Duration> {
        let link = self.link(from, to);
        let fault = self.faults.lock().unwrap()[link];
        let mut stats = self.stats.lock().unwrap();
        let s = &mut stats[link];
        s.received += 1;
        if fault.partitioned {
            s.dropped_partition += 1;
            return Vec::new();
        }
        drop(stats);
        let lost = fault.loss > 0.0 && self.random() < fault.loss;
        let duplicated = !lost && fault.duplicate > 0.0 && self.random() < fault.duplicate;
        let reordered = !lost && fault.reorder > 0.0 && self.random() < fault.reorder;
        let mut delays = Vec::new();
        if !lost {
            for _ in 0..if duplicated { 2 } else { 1 } {
                let jitter = if fault.jitter_ms > 0 {
                    (self.random() * 2.0 - 1.0) * fault.jitter_ms as f64
                } else {
                    0.0
                };
                let mut ms = (fault.delay_ms as f64 + jitter).max(0.0);
                if reordered {
                    ms += (fault.delay_ms + fault.jitter_ms + 5) as f64;
                }
                delays.push(Duration::from_secs_f64(ms / 1000.0));
            }
        }
        let mut stats = self.stats.lock().unwrap();
        let s = &mut stats[link];
        if lost {
            s.dropped_loss += 1;
        }
        s.duplicated += duplicated as u64;
        s.reordered += reordered as u64;
        delays
    }

    fn sent(&self, from: usize, to: usize, applied: Duration) {
        let link = self.link(from, to);
        let us = applied.as_micros() as u64;
        let mut stats = self.stats.lock().unwrap();
        let s = &mut stats[link];
        s.forwarded += 1;
        s.delay_sum_us += us;
        s.delay_max_us = s.delay_max_us.max(us);
    }
}

/// Sends `data` on `socket` (to `to`, or to its connected peer) after each of `delays`.
fn schedule(
    shared: &Arc<RelayShared>,
    link: (usize, usize),
    socket: &Arc<UdpSocket>,
    to: Option<SocketAddr>,
    data: &[u8],
    arrived: tokio::time::Instant,
) {
    for delay in shared.plan(link.0, link.1) {
        let (shared, socket, data) = (shared.clone(), socket.clone(), data.to_vec());
        let send = async move {
            let _ = match to {
                Some(to) => socket.send_to(&data, to).await,
                None => socket.send(&data).await,
            };
            shared.sent(link.0, link.1, arrived.elapsed());
        };
        if delay.is_zero() {
            tokio::spawn(send);
        } else {
            tokio::spawn(async move {
                tokio::time::sleep_until(arrived + delay).await;
                send.await;
            });
        }
    }
}

/// Receives on the relay's socket for link (from, to) and forwards through one socket per
/// source address (flow); each flow's task carries the replies back.
async fn serve_link(shared: Arc<RelayShared>, listener: Arc<UdpSocket>, from: usize, to: usize) {
    let mut flows: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((len, source)) = listener.recv_from(&mut buf).await else {
            // Not expected on an unconnected UDP socket; never spin on it.
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let arrived = tokio::time::Instant::now();
        let flow = match flows.get(&source) {
            Some(flow) => flow.clone(),
            None => {
                let Ok(socket) = UdpSocket::bind(sock(relay_ip(to), 0)).await else {
                    continue;
                };
                if socket
                    .connect(sock(node_ip(to), REPLICA_PORT))
                    .await
                    .is_err()
                {
                    continue;
                }
                let socket = Arc::new(socket);
                flows.insert(source, socket.clone());
                let (shared, back, listener) = (shared.clone(), socket.clone(), listener.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        // A refused send (the replica is down) surfaces as an error here.
                        let Ok(len) = back.recv(&mut buf).await else {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            continue;
                        };
                        let arrived = tokio::time::Instant::now();
                        schedule(
                            &shared,
                            (to, from),
                            &listener,
                            Some(source),
                            &buf[..len],
                            arrived,
                        );
                    }
                });
                socket
            }
        };
        schedule(&shared, (from, to), &flow, None, &buf[..len], arrived);
    }
}

/// The relay: a thread in the relay namespace with its own tokio runtime, controlled through
/// [`Relay::set`] and friends. Stopped (its sockets closed) when dropped.
pub struct Relay {
    shared: Arc<RelayShared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    /// Starts a relay in `lab`'s relay namespace for `replicas` replicas (nodes `0..replicas`;
    /// every node may send to each replica but itself).
    pub fn start(lab: &NetLab, replicas: usize, seed: u64) -> Result<Relay, String> {
        let nodes = lab.nodes();
        let shared = Arc::new(RelayShared {
            nodes,
            faults: Mutex::new(vec![Fault::default(); nodes * nodes]),
            stats: Mutex::new(vec![LinkStats::default(); nodes * nodes]),
            rng: Mutex::new(seed),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let relay_ns = lab.relay_ns();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("netlab-relay".into())
            .spawn(move || {
                if let Err(e) = enter(&relay_ns) {
                    let _ = ready_tx.send(Err(format!("cannot enter {relay_ns}: {e}")));
                    return;
                }
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("relay runtime");
                runtime.block_on(async move {
                    for from in 0..nodes {
                        for to in (0..replicas).filter(|to| *to != from) {
                            let at = sock(relay_ip(from), RELAY_PORT_BASE + to as u16);
                            let listener = match UdpSocket::bind(at).await {
                                Ok(l) => Arc::new(l),
                                Err(e) => {
                                    let _ = ready_tx.send(Err(format!("relay bind {at}: {e}")));
                                    return;
                                }
                            };
                            tokio::spawn(serve_link(thread_shared.clone(), listener, from, to));
                        }
                    }
                    let _ = ready_tx.send(Ok(()));
                    let _ = stopped.await;
                });
                // Dropping the runtime cancels every task and closes every socket.
            })
            .map_err(|e| format!("cannot start the relay thread: {e}"))?;
        let mut relay = Relay {
            shared,
            stop: Some(stop),
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(relay),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                relay.stop.take();
                Err("the relay thread ended before it was ready".into())
            }
        }
    }

    /// The fault of directed link (from, to).
    pub fn set(&self, from: usize, to: usize, fault: Fault) {
        let link = self.shared.link(from, to);
        self.shared.faults.lock().unwrap()[link] = fault;
    }

    /// The same fault on both directions of every link between nodes of `group` and any node.
    pub fn set_around(&self, group: &[usize], fault: Fault) {
        for &a in group {
            for b in 0..self.shared.nodes {
                if a != b {
                    self.set(a, b, fault);
                    self.set(b, a, fault);
                }
            }
        }
    }

    /// The same fault on every link.
    pub fn set_all(&self, fault: Fault) {
        for f in self.shared.faults.lock().unwrap().iter_mut() {
            *f = fault;
        }
    }

    /// Cuts every link between a node of `side_a` and a node of `side_b`, both directions
    /// (other faults stay).
    pub fn partition(&self, side_a: &[usize], side_b: &[usize]) {
        let mut faults = self.shared.faults.lock().unwrap();
        for &a in side_a {
            for &b in side_b {
                faults[self.shared.link(a, b)].partitioned = true;
                faults[self.shared.link(b, a)].partitioned = true;
            }
        }
    }

    /// Ends every partition (other faults stay).
    pub fn heal(&self) {
        for f in self.shared.faults.lock().unwrap().iter_mut() {
            f.partitioned = false;
        }
    }

    /// Returns the counts since the last call and starts counting again.
    pub fn take_stats(&self) -> RelayStats {
        let mut stats = self.shared.stats.lock().unwrap();
        let fresh = vec![LinkStats::default(); stats.len()];
        let links = std::mem::replace(&mut *stats, fresh);
        RelayStats {
            nodes: self.shared.nodes,
            links,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The relay's counts per directed link.
#[derive(Clone, Debug)]
pub struct RelayStats {
    nodes: usize,
    links: Vec<LinkStats>,
}

impl RelayStats {
    pub fn link(&self, from: usize, to: usize) -> LinkStats {
        self.links[from * self.nodes + to]
    }

    /// Sum over the links `(from, to)` that `pick` selects.
    pub fn sum(&self, pick: impl Fn(usize, usize) -> bool) -> LinkStats {
        let mut total = LinkStats::default();
        for from in 0..self.nodes {
            for to in 0..self.nodes {
                if pick(from, to) {
                    total.add(&self.link(from, to));
                }
            }
        }
        total
    }

    /// Round trip imposed between a and b: the mean delay each way, summed (ms).
    pub fn rtt_ms(&self, a: usize, b: usize) -> f64 {
        self.link(a, b).mean_delay_ms() + self.link(b, a).mean_delay_ms()
    }
}

// ----- replicas in namespaces -----------------------------------------------------------------

/// One `smr replica` running in its namespace (through `ip netns exec`, which execs it, so the
/// child's pid is the replica's). Killed with SIGKILL and reaped on drop.
pub struct NetReplica {
    child: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

impl NetReplica {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn is_ready(&self) -> bool {
        std::fs::read_to_string(&self.log)
            .map(|t| t.contains(READY_MARKER))
            .unwrap_or(false)
    }
}

impl Drop for NetReplica {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A kv cluster whose replicas and clients are in their own namespaces, every link through the
/// relay. Field order is drop order: replicas, then the relay, then the namespaces, then the
/// directory.
pub struct NetCluster {
    replicas: Vec<Option<NetReplica>>,
    pub relay: Relay,
    pub lab: NetLab,
    n: usize,
    client_config: ClusterConfig,
    client_keys: Vec<PathBuf>,
    dir: tempfile::TempDir,
}

/// The clients' node.
pub fn client_node(n: usize) -> usize {
    n
}

impl NetCluster {
    /// Creates the namespaces, the relay and the configs, and starts every replica (kv service,
    /// data dirs, `--new-cluster`).
    pub fn start(
        mode: Mode,
        n: usize,
        clients: usize,
        edit_config: &dyn Fn(&str) -> String,
        seed: u64,
    ) -> Result<NetCluster, String> {
        let lab = NetLab::create(n + 1)?;
        let relay = Relay::start(&lab, n, seed)?;
        delete_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(&format!("smr-netfaults-{}-", std::process::id()))
            .tempdir()
            .map_err(|e| e.to_string())?;
        let mut options = KeygenOptions::new(mode, n);
        options.clients = clients;
        options.force = true;
        options.addresses = Some((0..n).map(|j| sock(node_ip(j), REPLICA_PORT)).collect());
        let generated = keygen::generate(dir.path(), &options).map_err(|e| e.to_string())?;
        let text = edit_config(
            &std::fs::read_to_string(&generated.config_path).map_err(|e| e.to_string())?,
        );
        // Replica i (and the clients, node n) reach replica j through the relay.
        let seen_from = |k: usize| {
            let mut t = text.clone();
            for j in (0..n).filter(|j| *j != k) {
                t = t.replace(
                    &format!("address = \"{}\"", sock(node_ip(j), REPLICA_PORT)),
                    &format!(
                        "address = \"{}\"",
                        sock(relay_ip(k), RELAY_PORT_BASE + j as u16)
                    ),
                );
            }
            t
        };
        for i in 0..n {
            std::fs::write(dir.path().join(format!("cluster-{i}.toml")), seen_from(i))
                .map_err(|e| e.to_string())?;
        }
        let client_path = dir.path().join("cluster-clients.toml");
        std::fs::write(&client_path, seen_from(n)).map_err(|e| e.to_string())?;
        let client_config = ClusterConfig::load(&client_path).map_err(|e| e.to_string())?;
        let mut cluster = NetCluster {
            replicas: (0..n).map(|_| None).collect(),
            relay,
            lab,
            n,
            client_config,
            client_keys: generated.client_keys.clone(),
            dir,
        };
        for id in 0..n {
            cluster.start_replica(id as ReplicaId, true)?;
        }
        cluster.wait_ready(Duration::from_secs(30))?;
        Ok(cluster)
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self, id: ReplicaId) -> PathBuf {
        self.dir.path().join(format!("replica-{id}.log"))
    }

    /// Starts replica `id` on its data dir (`--new-cluster` only on the very first start).
    pub fn start_replica(&mut self, id: ReplicaId, new_cluster: bool) -> Result<(), String> {
        let config = self.dir.path().join(format!("cluster-{id}.toml"));
        let data_dir = self.dir.path().join(format!("data-{id}"));
        let log = self.log_path(id);
        if log.exists() {
            // Keep the log of the previous run of this replica.
            let mut k = 1;
            while log.with_extension(format!("log.{k}")).exists() {
                k += 1;
            }
            let _ = std::fs::rename(&log, log.with_extension(format!("log.{k}")));
        }
        let out = File::create(&log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.lab.node_ns(id as usize)])
            .arg(crate::common::SMR)
            .arg("replica")
            .arg("--config")
            .arg(&config)
            .arg("--id")
            .arg(id.to_string())
            .args(["--service", "kv", "--exit-on-stdin-eof", "--data-dir"])
            .arg(&data_dir);
        if new_cluster {
            command.arg("--new-cluster");
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start replica {id}: {e}"))?;
        let stdin = child.stdin.take();
        self.replicas[id as usize] = Some(NetReplica { child, stdin, log });
        Ok(())
    }

    /// Waits until every running replica has printed its ready line.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut all = true;
            for (id, r) in self.replicas.iter_mut().enumerate() {
                let Some(r) = r else { continue };
                if let Ok(Some(status)) = r.child.try_wait() {
                    return Err(format!(
                        "replica {id} exited ({status}):\n{}",
                        smr_demo::local::log_tail(&r.log, 20)
                    ));
                }
                all &= r.is_ready();
            }
            if all {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("replicas not ready within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills replica `id` with SIGKILL (its data dir stays).
    pub fn kill(&mut self, id: ReplicaId) -> Option<ExitStatus> {
        let mut r = self.replicas[id as usize].take()?;
        r.stdin.take();
        let _ = r.child.kill();
        r.child.wait().ok()
    }

    /// Every replica that should run does.
    pub fn check_running(&mut self) -> Result<(), String> {
        for (id, r) in self.replicas.iter_mut().enumerate() {
            if let Some(r) = r {
                if let Ok(Some(status)) = r.child.try_wait() {
                    return Err(format!(
                        "replica {id} exited ({status}):\n{}",
                        smr_demo::local::log_tail(&r.log, 30)
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn pids(&self) -> Vec<Option<u32>> {
        self.replicas
            .iter()
            .map(|r| r.as_ref().map(NetReplica::pid))
            .collect()
    }

    /// A client with key `index`. Call it from a thread in the clients' namespace
    /// ([`NetCluster::client_ns`]).
    pub async fn client(&self, index: usize, window: usize, timeout: Duration) -> Client {
        let key = IdentityKey::load(&self.client_keys[index]).expect("client key");
        Client::connect_with_window(&self.client_config, key, window)
            .await
            .expect("client connects")
            .with_timeout(timeout)
    }

    pub fn client_ns(&self) -> String {
        self.lab.node_ns(client_node(self.n))
    }

    /// Leaves the directory (configs, keys, logs, data dirs) in place and returns its path.
    pub fn keep_dir(self) -> PathBuf {
        let NetCluster { dir, .. } = self;
        dir.keep()
    }
}
