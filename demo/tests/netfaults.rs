//! Faults on a real network: a kv cluster of `smr replica` processes, each in its own Linux
//! network namespace, and concurrent clients in another, every datagram through a user-space
//! UDP relay that delays, jitters, drops, duplicates, reorders and partitions chosen links
//! (tests/netlab: the kernel here has no netem). While clients put unique values and read them
//! back, the test injects, one at a time and then mixed:
//!
//! - latency with jitter on every link, and packet loss on every link;
//! - a partition that isolates the leader (from replicas and clients), then heals;
//! - a split into halves with no quorum, then heals;
//! - a flapping link (leader <-> a follower cut and restored every 500 ms);
//! - kill -9 of a follower and of the leader, restarted on their data dirs;
//! - mixed: delay + jitter + loss + duplicates + reordering everywhere, a flapping link, and a
//!   follower killed and restarted, all at once.
//!
//! It checks that the recorded history is linearizable ([`check_register_history`]), that every
//! acknowledged put is in the final state, that all replicas end with equal state digests (what
//! `smr status` shows), and that progress resumes within [`RECOVERY_BOUND`] after each heal.
//! Each phase prints what the relay imposed and counted: the round trip it added (measured from
//! each datagram's arrival to its send), the loss rate it counted, the datagrams partitions
//! dropped, the operations done and their p50/p99 latency, and the stall or recovery time.
//!
//! Short by default (BFT n=4, about a minute of faults, for CI). `SMR_NETFAULTS=long` runs
//! every phase longer, with 100 ms RTT and 1% and 10% loss, and CFT n=3 too. `SMR_NETFAULTS=bench`
//! runs only the measurements of BENCHMARKS.md (throughput and p50/p99 under 20 ms and 100 ms
//! RTT and 1% loss, BFT and CFT; leader partitioned against leader killed), and
//! `SMR_NETFAULTS=cft` the short run in CFT (n=3) only. Without root or
//! network namespaces, the test says that it was skipped and why, and passes.
//!
//! ## The recovery bound
//!
//! From a heal to the next completed operation, with the cluster's timeouts (request 1 s,
//! client retransmission up to 2 s) and the transport's defaults (reconnect backoff up to 5 s,
//! handshake timeout 3 s, idle timeout 10 s):
//!
//! - a link cut for longer than the idle timeout is closed; its writer redials with backoff
//!   capped at 5 s, so the first attempt after the heal starts within 5 s, and one that started
//!   just before the heal and lost its first flight completes or times out within the 3 s
//!   handshake timeout, then redials at once on the peer's incoming connection: <= 5 + 3 s;
//! - a client's request lost during the cut is retransmitted within the 2 s retransmission cap;
//! - if the replicas changed leaders during the cut, or must, the change takes at most two
//!   request timeouts (2 s) after requests reach them;
//!
//! so 5 + 3 + 2 + 2 = 12 s, and [`RECOVERY_BOUND`] adds half again for a machine shared with
//! other builds: 18 s. The round trips the relay adds (at most 2 x 110 ms here) are small next
//! to that.

mod common;
mod netlab;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::within;
use netlab::{client_node, Fault, NetCluster, RelayStats};
use smr_core::message::StatusReport;
use smr_core::ReplicaId;
use smr_demo::history::{check_register_history, RegisterCall, RegisterEvent};
use smr_demo::services::{KvOp, KvReply};
use smr_demo::status;
use smr_modes::Mode;
use smr_transport::Client;

/// See the module docs for the derivation.
const RECOVERY_BOUND: Duration = Duration::from_secs(18);
/// How long a replica restarted from its data dir may take to execute what the others had
/// decided when it came back: not a timeout bound (it fetches decisions, or a checkpoint, while
/// the load goes on), so only a generous limit; the figure is printed.
const CATCH_UP_BOUND: Duration = Duration::from_secs(60);
/// Long enough that no operation gives up during a phase (a give-up would leave the history
/// undecidable); a no-quorum split lasts at most 12 s.
const INVOKE_TIMEOUT: Duration = Duration::from_secs(90);
const KEYS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Length {
    Short,
    Long,
    Bench,
    /// The short run, CFT only.
    Cft,
}

fn length() -> Length {
    match std::env::var("SMR_NETFAULTS").as_deref() {
        Ok("long") => Length::Long,
        Ok("bench") => Length::Bench,
        Ok("cft") => Length::Cft,
        _ => Length::Short,
    }
}

fn skip_reason() -> Option<String> {
    netlab::unavailable()
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn delay(one_way_ms: u64, jitter_ms: u64) -> Fault {
    Fault {
        delay_ms: one_way_ms,
        jitter_ms,
        ..Fault::default()
    }
}

fn loss(rate: f64) -> Fault {
    Fault {
        loss: rate,
        ..Fault::default()
    }
}

// ----- the workload ----------------------------------------------------------------------------

/// Clients putting unique values and reading keys, recording every operation.
struct Workload {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    /// (invoked, returned) of every completed operation, in completion order.
    completions: Arc<Mutex<Vec<(Instant, Instant)>>>,
    workers: Vec<tokio::task::JoinHandle<Result<Vec<RegisterEvent>, String>>>,
}

async fn kv(client: &Client, op: KvOp) -> Result<KvReply, String> {
    let reply = client
        .invoke(op.encode())
        .await
        .map_err(|e| format!("{op:?}: {e}"))?;
    match KvReply::decode(&reply) {
        Ok(KvReply::Error(e)) => Err(format!("{op:?} refused: {e}")),
        Ok(r) => Ok(r),
        Err(e) => Err(format!("{op:?}: undecodable reply: {e}")),
    }
}

impl Workload {
    /// `clients` clients, each `window` workers with one operation in flight each.
    fn start(clients: &[Client], window: usize) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let completions = Arc::new(Mutex::new(Vec::new()));
        let mut workers = Vec::new();
        for (c, client) in clients.iter().enumerate() {
            for w in 0..window {
                let (client, stop, done, completions) = (
                    client.clone(),
                    stop.clone(),
                    done.clone(),
                    completions.clone(),
                );
                workers.push(tokio::spawn(async move {
                    let mut events = Vec::new();
                    let mut seq = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        seq += 1;
                        let key = format!("k{}", (seq as usize + c + w) % KEYS).into_bytes();
                        let is_get = seq.is_multiple_of(4);
                        let value = format!("c{c}w{w}-{seq}").into_bytes();
                        let op = if is_get {
                            KvOp::Get { key: key.clone() }
                        } else {
                            KvOp::Put {
                                key: key.clone(),
                                value: value.clone(),
                            }
                        };
                        let invoked = Instant::now();
                        let reply = kv(&client, op).await?;
                        let returned = Instant::now();
                        let call = match (is_get, reply) {
                            (true, KvReply::Value(v)) => RegisterCall::Get { value: v },
                            (false, KvReply::Previous(p)) => {
                                RegisterCall::Put { value, previous: p }
                            }
                            (_, other) => return Err(format!("unexpected reply {other:?}")),
                        };
                        events.push(RegisterEvent {
                            key,
                            call,
                            invoked,
                            returned,
                        });
                        done.fetch_add(1, Ordering::Relaxed);
                        completions.lock().unwrap().push((invoked, returned));
                    }
                    Ok(events)
                }));
            }
        }
        Workload {
            stop,
            done,
            completions,
            workers,
        }
    }

    fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Waits until an operation completes after `since`; how long after `since` it did.
    async fn first_completion_after(&self, since: Instant, bound: Duration) -> Option<Duration> {
        let deadline = since + bound;
        loop {
            if let Some(t) = self
                .completions
                .lock()
                .unwrap()
                .iter()
                .rev()
                .map(|(_, r)| *r)
                .find(|r| *r > since)
            {
                return Some(t - since);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The longest time in `[from, to]` without a completion.
    fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        let mut times: Vec<Instant> = self
            .completions
            .lock()
            .unwrap()
            .iter()
            .map(|(_, r)| *r)
            .filter(|r| *r > from && *r < to)
            .collect();
        times.sort_unstable();
        let mut last = from;
        let mut gap = Duration::ZERO;
        for t in times.into_iter().chain([to]) {
            gap = gap.max(t - last);
            last = t;
        }
        gap
    }

    /// Latencies (ms) of the operations that returned in `[from, to)`.
    fn latencies_ms(&self, from: Instant, to: Instant) -> Vec<f64> {
        let mut l: Vec<f64> = self
            .completions
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, r)| *r >= from && *r < to)
            .map(|(i, r)| (*r - *i).as_secs_f64() * 1000.0)
            .collect();
        l.sort_by(f64::total_cmp);
        l
    }

    async fn finish(self) -> Vec<RegisterEvent> {
        self.stop.store(true, Ordering::Relaxed);
        let mut events = Vec::new();
        for w in self.workers {
            match w.await.expect("worker") {
                Ok(e) => events.extend(e),
                Err(e) => panic!("a client operation failed (none may, see INVOKE_TIMEOUT): {e}"),
            }
        }
        events
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

// ----- the scenario ------------------------------------------------------------------------------

/// One line of the closing table.
struct PhaseLine {
    name: String,
    ops: usize,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    rtt_ms: f64,
    loss_rate: f64,
    partition_drops: u64,
    dup: u64,
    reordered: u64,
    note: String,
}

struct Run<'a> {
    cluster: &'a mut NetCluster,
    observer: Client,
    load: Workload,
    lines: Vec<PhaseLine>,
    ids: Vec<ReplicaId>,
    clients: usize,
    window: usize,
}

impl Run<'_> {
    async fn statuses(&self, timeout: Duration) -> Vec<status::ReplicaAnswer> {
        status::query(&self.observer, self.ids.iter().copied(), timeout).await
    }

    /// The leader most answering replicas name.
    async fn leader(&self) -> ReplicaId {
        let deadline = Instant::now() + RECOVERY_BOUND;
        loop {
            let answers = self.statuses(Duration::from_secs(2)).await;
            let reports: Vec<&StatusReport> =
                answers.iter().filter_map(|a| a.report.as_ref()).collect();
            let mut counts = std::collections::BTreeMap::new();
            for r in &reports {
                *counts.entry(r.leader).or_insert(0usize) += 1;
            }
            if let Some((leader, c)) = counts.iter().max_by_key(|(_, c)| **c) {
                if *c * 2 > self.ids.len() {
                    return *leader;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no majority names a leader:\n{}",
                answers
                    .iter()
                    .map(status::format_line)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Records one phase that ran from `from` to now.
    fn record(
        &mut self,
        name: &str,
        from: Instant,
        stats: &RelayStats,
        leader: usize,
        note: String,
    ) {
        let to = Instant::now();
        let lat = self.load.latencies_ms(from, to);
        let n = self.ids.len();
        let cn = client_node(n);
        // Round trip client <-> leader and mean over replica pairs.
        let replica_links = stats.sum(|a, b| a < n && b < n && a != b);
        let all_links = stats.sum(|_, _| true);
        let rtt = if stats.link(cn, leader).forwarded > 0 {
            stats.rtt_ms(cn, leader)
        } else {
            2.0 * replica_links.mean_delay_ms()
        };
        let line = PhaseLine {
            name: name.to_string(),
            ops: lat.len(),
            seconds: (to - from).as_secs_f64(),
            p50_ms: percentile(&lat, 0.5),
            p99_ms: percentile(&lat, 0.99),
            rtt_ms: rtt,
            loss_rate: all_links.loss_rate(),
            partition_drops: all_links.dropped_partition,
            dup: all_links.duplicated,
            reordered: all_links.reordered,
            note,
        };
        report!(
            "phase {:<22} {:>6} ops in {:>5.1} s, p50 {:>7.1} ms p99 {:>7.1} ms | relay: RTT client-leader {:>6.1} ms (replica pairs {:>6.1} ms), {} datagrams, loss counted {:.2}%, partition drops {}, duplicated {}, reordered {} | {}",
            line.name,
            line.ops,
            line.seconds,
            line.p50_ms,
            line.p99_ms,
            line.rtt_ms,
            2.0 * replica_links.mean_delay_ms(),
            all_links.received,
            100.0 * line.loss_rate,
            line.partition_drops,
            line.dup,
            line.reordered,
            line.note
        );
        self.lines.push(line);
    }

    /// Runs the load under `fault` on every link for `length`.
    async fn steady(&mut self, name: &str, fault: Fault, length: Duration) {
        self.measured(name, fault, Duration::ZERO, length).await;
    }

    /// Runs the load under `fault` on every link for `warmup`, then measures for `length`.
    async fn measured(&mut self, name: &str, fault: Fault, warmup: Duration, length: Duration) {
        let leader = self.leader().await as usize;
        self.cluster.relay.set_all(fault);
        tokio::time::sleep(warmup).await;
        self.cluster.relay.take_stats();
        let from = Instant::now();
        let before = self.load.done();
        tokio::time::sleep(length).await;
        let stats = self.cluster.relay.take_stats();
        self.cluster.relay.set_all(Fault::default());
        assert!(
            self.load.done() > before,
            "{name}: no operation completed in {length:?}"
        );
        self.record(name, from, &stats, leader, String::new());
    }

    /// How long after `since` replica `id` executed at least `cid` (polling its status).
    async fn caught_up(
        &self,
        id: ReplicaId,
        cid: u64,
        since: Instant,
        bound: Duration,
    ) -> Duration {
        loop {
            let answers = status::query(&self.observer, [id], Duration::from_secs(1)).await;
            if answers[0]
                .report
                .as_ref()
                .is_some_and(|r| r.last_decided.0 >= cid)
            {
                return since.elapsed();
            }
            if since.elapsed() >= bound {
                let answers = self.statuses(Duration::from_secs(2)).await;
                panic!(
                    "replica {id} did not reach cid {cid} within {bound:?}:\n{}",
                    answers
                        .iter()
                        .map(status::format_line)
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn max_decided(&self) -> u64 {
        self.statuses(Duration::from_secs(2))
            .await
            .iter()
            .filter_map(|a| a.report.as_ref().map(|r| r.last_decided.0))
            .max()
            .unwrap_or(0)
    }

    /// Cuts the leader off from everyone (replicas and clients) for `length`, then heals.
    async fn isolate_leader(&mut self, length: Duration) {
        let leader = self.leader().await as usize;
        let others: Vec<usize> = (0..=self.ids.len()).filter(|k| *k != leader).collect();
        self.cluster.relay.take_stats();
        let from = Instant::now();
        self.cluster.relay.partition(&[leader], &others);
        tokio::time::sleep(length).await;
        let stall = self.load.longest_gap(from, Instant::now());
        assert!(
            stall < RECOVERY_BOUND,
            "no progress for {stall:?} after the leader was cut off"
        );
        let new_leader = self.leader().await;
        let healed = Instant::now();
        let target = self.max_decided().await;
        self.cluster.relay.heal();
        let back = self
            .caught_up(leader as ReplicaId, target, healed, RECOVERY_BOUND)
            .await;
        let stats = self.cluster.relay.take_stats();
        assert_ne!(
            new_leader as usize, leader,
            "a new leader replaced the isolated one"
        );
        self.record(
            "isolate leader",
            from,
            &stats,
            new_leader as usize,
            format!(
                "leader {leader} cut off {:.1} s: longest gap between completions {:.2} s (new leader {new_leader}); after the heal it reached cid {target} in {:.2} s",
                length.as_secs_f64(),
                stall.as_secs_f64(),
                back.as_secs_f64()
            ),
        );
    }

    /// Splits the replicas into two halves (no quorum on either side; clients reach both),
    /// then heals; progress must stop during the split and resume after it.
    async fn split_halves(&mut self, length: Duration) {
        let n = self.ids.len();
        let leader = self.leader().await as usize;
        // Two halves where n is even (BFT and CFT with n = 4: no side has n - f = 3); every
        // replica alone otherwise (no two halves of an odd n both lack a quorum).
        let sides: Vec<Vec<usize>> = if n.is_multiple_of(2) {
            vec![(0..n / 2).collect(), (n / 2..n).collect()]
        } else {
            (0..n).map(|k| vec![k]).collect()
        };
        self.cluster.relay.take_stats();
        let from = Instant::now();
        for (a, side_a) in sides.iter().enumerate() {
            for side_b in &sides[a + 1..] {
                self.cluster.relay.partition(side_a, side_b);
            }
        }
        // Operations already ordered may still complete; after a second, none may.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let stalled_at = self.load.done();
        tokio::time::sleep(length.saturating_sub(Duration::from_secs(1))).await;
        let during = self.load.done() - stalled_at;
        let healed = Instant::now();
        self.cluster.relay.heal();
        let recovery = self
            .load
            .first_completion_after(healed, RECOVERY_BOUND)
            .await
            .unwrap_or_else(|| {
                panic!("no progress within {RECOVERY_BOUND:?} of healing the split")
            });
        let stats = self.cluster.relay.take_stats();
        assert_eq!(during, 0, "operations completed while no side had a quorum");
        self.record(
            "split halves",
            from,
            &stats,
            leader,
            format!(
                "{sides:?} for {:.1} s: {during} ops completed during it; first completion {:.2} s after the heal",
                length.as_secs_f64(),
                recovery.as_secs_f64()
            ),
        );
    }

    /// Cuts and restores the link between the leader and one follower every `period`.
    async fn flap(&mut self, length: Duration, period: Duration, background: Fault, name: &str) {
        let leader = self.leader().await as usize;
        let follower = (leader + 1) % self.ids.len();
        self.cluster.relay.set_all(background);
        self.cluster.relay.take_stats();
        let from = Instant::now();
        let mut cut = false;
        let mut flips = 0;
        while from.elapsed() < length {
            cut = !cut;
            flips += 1;
            if cut {
                self.cluster.relay.partition(&[leader], &[follower]);
            } else {
                self.cluster.relay.heal();
            }
            tokio::time::sleep(period).await;
        }
        let healed = Instant::now();
        self.cluster.relay.heal();
        self.cluster.relay.set_all(Fault::default());
        let recovery = self
            .load
            .first_completion_after(healed, RECOVERY_BOUND)
            .await
            .expect("progress after the flapping stops");
        let stats = self.cluster.relay.take_stats();
        self.record(
            name,
            from,
            &stats,
            leader,
            format!(
                "link {leader}<->{follower} flipped {flips} times every {} ms; first completion {:.2} s after",
                period.as_millis(),
                recovery.as_secs_f64()
            ),
        );
    }

    /// Kills `id` with SIGKILL under `background` faults, waits `down`, restarts it on its data
    /// dir and waits until it caught up.
    async fn kill_and_restart(
        &mut self,
        id: ReplicaId,
        down: Duration,
        background: Fault,
        name: &str,
    ) {
        let leader = self.leader().await as usize;
        self.cluster.relay.set_all(background);
        self.cluster.relay.take_stats();
        let from = Instant::now();
        let status = tokio::task::block_in_place(|| self.cluster.kill(id)).expect("it ran");
        assert!(!status.success(), "killed, not stopped: {status}");
        tokio::time::sleep(down).await;
        let restarted = Instant::now();
        let stall = self.load.longest_gap(from, restarted);
        assert!(
            stall < RECOVERY_BOUND,
            "no progress for {stall:?} after replica {id} was killed"
        );
        tokio::task::block_in_place(|| {
            self.cluster.start_replica(id, false)?;
            self.cluster.wait_ready(Duration::from_secs(30))
        })
        .unwrap_or_else(|e| panic!("replica {id} did not restart: {e}"));
        let target = self.max_decided().await;
        let back = self.caught_up(id, target, restarted, CATCH_UP_BOUND).await;
        let stats = self.cluster.relay.take_stats();
        self.cluster.relay.set_all(Fault::default());
        let leader_now = self.leader().await as usize;
        self.record(
            name,
            from,
            &stats,
            leader_now,
            format!(
                "replica {id}{} killed -9, down {:.1} s: longest gap between completions {:.2} s; restarted, reached cid {target} in {:.2} s",
                if leader == id as usize { " (the leader)" } else { "" },
                down.as_secs_f64(),
                stall.as_secs_f64(),
                back.as_secs_f64()
            ),
        );
    }

    /// Everything at once: delay + jitter + loss + duplicates + reordering on every link, a
    /// flapping link between two followers, and a follower killed and restarted.
    async fn mixed(&mut self, length: Duration) {
        let n = self.ids.len();
        let leader = self.leader().await as usize;
        let victim = ((leader + 1) % n) as ReplicaId;
        let (fa, fb) = ((leader + 2) % n, (leader + 3) % n);
        let background = Fault {
            delay_ms: 15,
            jitter_ms: 10,
            loss: 0.02,
            duplicate: 0.01,
            reorder: 0.01,
            partitioned: false,
        };
        self.cluster.relay.set_all(background);
        self.cluster.relay.take_stats();
        let from = Instant::now();
        let mut killed = false;
        let mut restarted = None;
        let mut cut = false;
        while from.elapsed() < length {
            cut = !cut;
            if cut && fa != fb {
                self.cluster.relay.partition(&[fa], &[fb]);
            } else {
                self.cluster.relay.heal();
            }
            if !killed && from.elapsed() > length / 4 {
                tokio::task::block_in_place(|| self.cluster.kill(victim)).expect("it ran");
                killed = true;
            }
            if killed && restarted.is_none() && from.elapsed() > length / 2 {
                tokio::task::block_in_place(|| {
                    self.cluster.start_replica(victim, false)?;
                    self.cluster.wait_ready(Duration::from_secs(30))
                })
                .unwrap_or_else(|e| panic!("replica {victim} did not restart: {e}"));
                restarted = Some(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        let healed = Instant::now();
        self.cluster.relay.heal();
        self.cluster.relay.set_all(Fault::default());
        let recovery = self
            .load
            .first_completion_after(healed, RECOVERY_BOUND)
            .await
            .expect("progress after the mixed faults end");
        let target = self.max_decided().await;
        let back = self.caught_up(victim, target, healed, CATCH_UP_BOUND).await;
        let stats = self.cluster.relay.take_stats();
        self.record(
            "mixed",
            from,
            &stats,
            leader,
            format!(
                "15±10 ms one way, 2% loss, 1% dup, 1% reorder, link {fa}<->{fb} flapping, replica {victim} killed -9 and restarted: first completion {:.2} s after the end, replica {victim} at cid {target} {:.2} s after",
                recovery.as_secs_f64(),
                back.as_secs_f64()
            ),
        );
    }
}

/// Starts a cluster in namespaces, runs `body` on a thread in the clients' namespace, and
/// cleans everything up (also on a panic).
fn with_cluster(
    mode: Mode,
    n: usize,
    clients: usize,
    limit: Duration,
    body: impl AsyncFnOnce(&mut NetCluster) + Send,
) {
    let seed = std::env::var("SMR_NETFAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let mut cluster = NetCluster::start(mode, n, clients, &|t| t.to_string(), seed)
        .unwrap_or_else(|e| panic!("cannot set up the namespaces and the cluster: {e}"));
    report!(
        "{mode} n={n}: replicas in namespaces {} .. {}, clients in {}, relay seed {seed:#x}; dir {}",
        cluster.lab.node_ns(0),
        cluster.lab.node_ns(n - 1),
        cluster.client_ns(),
        cluster.dir().display()
    );
    let client_ns = cluster.client_ns();
    let result = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                netlab::enter(&client_ns).expect("enter the clients' namespace");
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(within(limit, body(&mut cluster)));
            })
            .join()
    });
    if let Err(panic) = result {
        if std::env::var_os("SMR_TEST_KEEP_DIRS").is_some() {
            eprintln!(
                "SMR_TEST_KEEP_DIRS: keeping {}",
                cluster.keep_dir().display()
            );
        } else {
            for id in 0..n as ReplicaId {
                eprintln!(
                    "--- replica {id} log tail\n{}",
                    smr_demo::local::log_tail(&cluster.log_path(id), 15)
                );
            }
            drop(cluster);
        }
        std::panic::resume_unwind(panic);
    }
}

/// Connects `clients` clients with `window` workers each (keys 0..clients) and an observer
/// (key `clients`), and starts the load.
async fn start_run(cluster: &mut NetCluster, clients: usize, window: usize) -> Run<'_> {
    let n = cluster.n();
    let mut cs = Vec::new();
    for i in 0..clients {
        cs.push(cluster.client(i, window, INVOKE_TIMEOUT).await);
    }
    let observer = cluster.client(clients, 4, INVOKE_TIMEOUT).await;
    let ids: Vec<ReplicaId> = (0..n as ReplicaId).collect();
    status::wait_until_agree(&observer, &ids, Duration::from_secs(30)).await;
    let load = Workload::start(&cs, window);
    Run {
        cluster,
        observer,
        load,
        lines: Vec::new(),
        ids,
        clients,
        window,
    }
}

async fn fault_scenarios(cluster: &mut NetCluster, long: bool) {
    let n = cluster.n();
    let mut run = start_run(cluster, 3, 2).await;
    let scale = if long { 3.0 } else { 1.0 };
    let started = Instant::now();

    // One at a time.
    run.steady("baseline", Fault::default(), secs(2.0 * scale))
        .await;
    run.steady("delay 20±10 ms", delay(20, 10), secs(3.0 * scale))
        .await;
    if long {
        run.steady("delay 50±10 ms", delay(50, 10), secs(3.0 * scale))
            .await;
        run.steady("delay 100±10 ms", delay(100, 10), secs(3.0 * scale))
            .await;
        run.steady("loss 1%", loss(0.01), secs(3.0 * scale)).await;
    }
    run.steady("loss 5%", loss(0.05), secs(3.0 * scale)).await;
    if long {
        run.steady("loss 10%", loss(0.10), secs(3.0 * scale)).await;
    }
    run.isolate_leader(secs(5.0 * scale)).await;
    run.split_halves(secs(4.0 * scale)).await;
    run.flap(
        secs(4.0 * scale),
        Duration::from_millis(500),
        Fault::default(),
        "flapping link",
    )
    .await;
    let leader = run.leader().await;
    let follower = (leader + 1) % n as ReplicaId;
    run.kill_and_restart(
        follower,
        secs(2.0 * scale),
        Fault::default(),
        "kill -9 follower",
    )
    .await;
    let leader = run.leader().await;
    run.kill_and_restart(leader, secs(2.0 * scale), delay(10, 5), "kill -9 leader")
        .await;
    // Mixed.
    run.mixed(secs(8.0 * scale)).await;

    finish(run, started).await;
}

/// Stops the load, checks the history and the final state, prints the closing table.
async fn finish(run: Run<'_>, started: Instant) {
    let Run {
        cluster,
        observer,
        load,
        lines,
        ids,
        clients,
        window,
    } = run;
    let total = load.done();
    let events = load.finish().await;
    let took = started.elapsed();
    let reports = {
        let (answers, agree) = status::wait_until_agree(&observer, &ids, RECOVERY_BOUND * 2).await;
        let table = answers
            .iter()
            .map(status::format_line)
            .collect::<Vec<_>>()
            .join("\n");
        report!("final status (what `smr status` shows):\n{table}");
        assert!(
            agree,
            "the replicas' state digests differ at the end:\n{table}"
        );
        answers
    };
    check_register_history(&events).unwrap_or_else(|v| {
        panic!(
            "the history of {} operations is not linearizable: {v}",
            events.len()
        )
    });
    // The check has teeth on this very history: a put made to replace what another put
    // replaced (one write lost) is refused.
    let mut damaged = events.clone();
    let puts: Vec<usize> = (0..damaged.len())
        .filter(|i| {
            damaged[*i].key == b"k0" && matches!(damaged[*i].call, RegisterCall::Put { .. })
        })
        .take(2)
        .collect();
    if let [a, b] = puts[..] {
        if let (RegisterCall::Put { previous: pa, .. }, RegisterCall::Put { previous: pb, .. }) =
            (damaged[a].call.clone(), &mut damaged[b].call)
        {
            *pb = pa;
        }
        assert!(
            check_register_history(&damaged).is_err(),
            "the checker accepts a history with a lost write"
        );
    }
    // Every key's final value is the last put of its chain (read through the cluster).
    for k in 0..KEYS {
        let key = format!("k{k}").into_bytes();
        let now = kv(&observer, KvOp::Get { key: key.clone() })
            .await
            .expect("final get");
        let written: std::collections::HashSet<Vec<u8>> = events
            .iter()
            .filter(|e| e.key == key)
            .filter_map(|e| match &e.call {
                RegisterCall::Put {
                    previous: Some(p), ..
                } => Some(p.clone()),
                _ => None,
            })
            .collect();
        let last: Vec<&Vec<u8>> = events
            .iter()
            .filter(|e| e.key == key)
            .filter_map(|e| match &e.call {
                RegisterCall::Put { value, .. } if !written.contains(value) => Some(value),
                _ => None,
            })
            .collect();
        assert_eq!(last.len(), 1, "key k{k}: one put is the last of its chain");
        assert_eq!(
            now,
            KvReply::Value(Some(last[0].clone())),
            "key k{k}'s final value"
        );
    }
    cluster
        .check_running()
        .expect("every replica runs at the end");
    let digest = status::short_digest(reports[0].report.as_ref().unwrap());
    report!(
        "{} operations ({total} counted) by {clients} clients x {window} in {:.1} s checked linearizable ({} puts, {} gets); every replica at the same state digest {digest}",
        events.len(),
        took.as_secs_f64(),
        events.iter().filter(|e| matches!(e.call, RegisterCall::Put { .. })).count(),
        events.iter().filter(|e| matches!(e.call, RegisterCall::Get { .. })).count(),
    );
    report!(
        "{:<22} {:>6} {:>6} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8}",
        "phase",
        "ops",
        "s",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "RTT ms",
        "loss %",
        "cut drops"
    );
    for l in &lines {
        report!(
            "{:<22} {:>6} {:>6.1} {:>8.0} {:>8.1} {:>8.1} {:>8.1} {:>7.2} {:>8}",
            l.name,
            l.ops,
            l.seconds,
            l.ops as f64 / l.seconds,
            l.p50_ms,
            l.p99_ms,
            l.rtt_ms,
            100.0 * l.loss_rate,
            l.partition_drops
        );
    }
    for l in lines.iter().filter(|l| !l.note.is_empty()) {
        report!("{}: {}", l.name, l.note);
    }
    observer.shutdown().await;
}

#[test]
fn bft_kv_cluster_stays_linearizable_and_recovers_under_delay_loss_partitions_flapping_and_kills_on_a_real_network(
) {
    if let Some(why) = skip_reason() {
        report!(
            "netfaults: SKIPPED, and passing: {why}. Run as root on Linux with iproute2 to run it."
        );
        return;
    }
    if matches!(length(), Length::Bench | Length::Cft) {
        report!("netfaults: SMR_NETFAULTS=bench or =cft runs only the benchmark or the CFT test");
        return;
    }
    let long = length() == Length::Long;
    let limit = Duration::from_secs(if long { 900 } else { 240 });
    with_cluster(Mode::Bft, 4, 4, limit, async |c| {
        fault_scenarios(c, long).await
    });
}

#[test]
fn cft_kv_cluster_stays_linearizable_and_recovers_under_network_faults_in_the_long_run() {
    if let Some(why) = skip_reason() {
        report!(
            "netfaults: SKIPPED, and passing: {why}. Run as root on Linux with iproute2 to run it."
        );
        return;
    }
    let long = match length() {
        Length::Long => true,
        Length::Cft => false,
        _ => {
            report!("netfaults (CFT): runs with SMR_NETFAULTS=long (or =cft for the short run) only; CI runs the BFT scenario");
            return;
        }
    };
    with_cluster(Mode::Cft, 3, 4, Duration::from_secs(900), async |c| {
        fault_scenarios(c, long).await
    });
}

/// The measurements of BENCHMARKS.md: a closed loop of 8 clients x 8 in flight (kv puts and
/// ordered gets), 2 s warm-up and 8 s measured per condition; then the leader partitioned (cut
/// off from replicas and clients for 6 s) against the leader killed (-9, down 6 s), with the
/// longest gap between completions as the stall.
async fn bench(cluster: &mut NetCluster) {
    let mut run = start_run(cluster, 8, 8).await;
    let started = Instant::now();
    let (warmup, window) = (secs(2.0), secs(8.0));
    run.measured("no fault", Fault::default(), warmup, window)
        .await;
    run.measured("RTT 20 ms", delay(10, 0), warmup, window)
        .await;
    run.measured("RTT 100 ms", delay(50, 0), warmup, window)
        .await;
    run.measured("loss 1%", loss(0.01), warmup, window).await;
    run.isolate_leader(secs(6.0)).await;
    let leader = run.leader().await;
    run.kill_and_restart(leader, secs(6.0), Fault::default(), "leader killed")
        .await;
    finish(run, started).await;
}

#[test]
fn netfaults_bench_figures_with_smr_netfaults_bench() {
    if length() != Length::Bench {
        return;
    }
    if let Some(why) = skip_reason() {
        report!("netfaults bench: SKIPPED: {why}");
        return;
    }
    report!("the machine is shared with other builds and tests: figures are indicative");
    with_cluster(Mode::Bft, 4, 9, Duration::from_secs(600), async |c| {
        bench(c).await
    });
    with_cluster(Mode::Cft, 3, 9, Duration::from_secs(600), async |c| {
        bench(c).await
    });
}

/// Diagnosis aid (SMR_NETFAULTS=trace): CFT n=3 under the bench's load, the leader cut off
/// then killed, each for 6 s, with every replica's regency, decided cid and pending requests
/// printed every 250 ms (`SMR_TRACE_ROUNDS` rounds, 3 by default). With `SMR_TEST_KEEP_DIRS`
/// set the test fails at the end on purpose, which keeps the replicas' logs; `RUST_LOG=info,
/// smr_core=debug` puts every rejection in them. It found the stalled catch-up of docs/design.md
/// §3.5, "Catching up while the service runs".
async fn trace_failover(cluster: &mut NetCluster, rounds: usize) {
    let run = start_run(cluster, 8, 8).await;
    let started = Instant::now();
    tokio::time::sleep(secs(3.0)).await;
    async fn poll(run: &Run<'_>, what: &str, length: Duration, t0: Instant) {
        let end = Instant::now() + length;
        while Instant::now() < end {
            let answers = run.statuses(Duration::from_millis(200)).await;
            let line: Vec<String> = answers
                .iter()
                .map(|a| match &a.report {
                    None => format!("r{} --", a.id),
                    Some(r) => format!(
                        "r{} reg {} dec {} pend {}",
                        a.id, r.regency, r.last_decided, r.pending_requests
                    ),
                })
                .collect();
            report!(
                "trace {:6.2} {what:10} done {:7} | {}",
                t0.elapsed().as_secs_f64(),
                run.load.done(),
                line.join(" | ")
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    for round in 0..rounds {
        let leader = run.leader().await as usize;
        let others: Vec<usize> = (0..=run.ids.len()).filter(|k| *k != leader).collect();
        let t0 = Instant::now();
        report!("trace round {round}: cut off leader {leader}");
        run.cluster.relay.partition(&[leader], &others);
        poll(&run, "cut", secs(6.0), t0).await;
        let stall = run.load.longest_gap(t0, Instant::now());
        run.cluster.relay.heal();
        report!(
            "trace round {round}: healed; stall {:.2} s",
            stall.as_secs_f64()
        );
        poll(&run, "healed", secs(4.0), t0).await;
        let leader = run.leader().await;
        let t0 = Instant::now();
        report!("trace round {round}: kill leader {leader}");
        tokio::task::block_in_place(|| run.cluster.kill(leader));
        poll(&run, "killed", secs(6.0), t0).await;
        let stall = run.load.longest_gap(t0, Instant::now());
        report!(
            "trace round {round}: restart; stall {:.2} s",
            stall.as_secs_f64()
        );
        tokio::task::block_in_place(|| {
            run.cluster.start_replica(leader, false)?;
            run.cluster.wait_ready(Duration::from_secs(30))
        })
        .unwrap_or_else(|e| panic!("replica {leader} did not restart: {e}"));
        poll(&run, "restarted", secs(4.0), t0).await;
    }
    finish(run, started).await;
}

#[test]
fn netfaults_failover_trace_with_smr_netfaults_trace() {
    if std::env::var("SMR_NETFAULTS").as_deref() != Ok("trace") {
        return;
    }
    if let Some(why) = skip_reason() {
        report!("netfaults trace: SKIPPED: {why}");
        return;
    }
    let rounds = std::env::var("SMR_TRACE_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    with_cluster(Mode::Cft, 3, 9, Duration::from_secs(900), async |c| {
        trace_failover(c, rounds).await;
        if std::env::var_os("SMR_TEST_KEEP_DIRS").is_some() {
            panic!("keep the dir");
        }
    });
}
