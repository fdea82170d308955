//! Process-level tests: real `smr` processes talking QUIC on 127.0.0.1.
//!
//! Every replica is a child process owned by a [`LocalCluster`], which kills it when dropped (so
//! a failing assertion cleans up too) and removes the temporary directory afterwards. Every wait
//! has a deadline, so a hang fails the test instead of stalling the suite.
//!
//! Killing the leader, restarts from data directories and long runs are in `crash_recovery.rs`
//! and `long_run.rs`.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::UdpSocket;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smr_core::codec;
use smr_core::message::{
    Cid, Message, Propose, Regency, Request, RequestBody, RequestKind, Signed,
};
use smr_core::network::{Network, Peer};
use smr_core::ReplicaId;
use smr_crypto::{IdentityKey, Signature};
use smr_demo::keygen::{self, KeygenOptions};
use smr_demo::local::{LocalCluster, ReplicaProcess};
use smr_demo::{status, CounterOp, ServiceKind};
use smr_modes::Mode;
use smr_transport::{Client, QuicTransport, ReplicaEndpoint, TransportConfig};

mod common;

use common::{add_values, assert_linearizable, counter, init_tracing, smr, timed, Run, SMR};
use smr_demo::history::CounterCall;
/// The most any one test may take.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const AGREE_TIMEOUT: Duration = Duration::from_secs(20);
const INVOKE_TIMEOUT: Duration = Duration::from_secs(20);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a test body with this file's deadline.
async fn within<T>(body: impl Future<Output = T>) -> T {
    common::within(TEST_TIMEOUT, body).await
}

fn start_cluster(mode: Mode, n: usize, clients: usize, service: ServiceKind) -> LocalCluster {
    init_tracing();
    let mut options = KeygenOptions::new(mode, n);
    options.clients = clients;
    tokio::task::block_in_place(|| {
        LocalCluster::start(Path::new(SMR), &options, service, READY_TIMEOUT, false)
    })
    .unwrap_or_else(|e| panic!("cluster did not start: {e}"))
}

async fn client(cluster: &LocalCluster, index: usize) -> Client {
    cluster
        .client(index)
        .await
        .expect("client connects")
        .with_timeout(INVOKE_TIMEOUT)
}

async fn wait_all_up(cluster: &LocalCluster, client: &Client) {
    let ids: Vec<ReplicaId> = (0..cluster.n() as ReplicaId).collect();
    let (answers, ok) = status::wait_until_agree(client, &ids, READY_TIMEOUT).await;
    assert!(ok, "not every replica answered: {answers:?}");
}

async fn smr_async(args: &[&str], timeout: Duration) -> Run {
    tokio::task::block_in_place(|| smr(args, timeout))
}

/// Three clients add 1 a hundred times each; replica 2 is killed (SIGKILL) once half the
/// increments are done. Every increment must execute exactly once, and the live replicas must
/// end with the same state.
async fn cluster_survives_kill_of_a_non_leader_mid_run(mode: Mode, n: usize) {
    const CLIENTS: usize = 3;
    const PER_CLIENT: usize = 100;
    const TOTAL: usize = CLIENTS * PER_CLIENT;
    const VICTIM: ReplicaId = 2;
    let mut cluster = start_cluster(mode, n, CLIENTS, ServiceKind::Counter);
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        clients.push(client(&cluster, i).await);
    }
    wait_all_up(&cluster, &clients[0]).await;

    let done = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = clients
        .iter()
        .map(|c| {
            let c = c.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let mut events = Vec::with_capacity(PER_CLIENT);
                for _ in 0..PER_CLIENT {
                    events.push(timed(&c, CounterCall::Add).await);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                events
            })
        })
        .collect();

    while done.load(Ordering::Relaxed) < TOTAL / 2 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let killed_at = done.load(Ordering::Relaxed);
    let exit = cluster
        .kill(VICTIM)
        .expect("replica 2 was running")
        .unwrap();
    assert!(!exit.success(), "replica 2 was killed, not stopped: {exit}");
    assert!(
        killed_at < TOTAL,
        "the kill must happen mid-run, not after the last increment"
    );

    let killed = Instant::now();
    let mut events = Vec::with_capacity(TOTAL);
    for task in tasks {
        events.extend(task.await.expect("client task"));
    }
    assert_linearizable(&events, "across the kill of a follower");
    let mut values = add_values(&events);
    eprintln!(
        "{mode}: killed replica {VICTIM} after {killed_at} of {TOTAL} increments; the other {} took {:?}",
        TOTAL - killed_at,
        killed.elapsed()
    );
    values.sort_unstable();
    assert_eq!(
        values,
        (1..=TOTAL as i64).collect::<Vec<_>>(),
        "every increment must execute exactly once"
    );
    assert_eq!(counter(&clients[0], CounterOp::Get).await, TOTAL as i64);

    let live: Vec<ReplicaId> = (0..n as ReplicaId).filter(|&r| r != VICTIM).collect();
    assert_eq!(cluster.live_ids(), live);
    let (answers, agree) = status::wait_until_agree(&clients[0], &live, AGREE_TIMEOUT).await;
    assert!(agree, "live replicas did not converge: {answers:?}");
    let reports: Vec<_> = answers.iter().map(|a| a.report.clone().unwrap()).collect();
    assert!(
        reports
            .iter()
            .all(|r| r.last_decided > Cid(0) && r.regency == Regency(0)),
        "{reports:?}"
    );
    cluster
        .check_running()
        .expect("the live replicas still run");

    // The command-line tools see the same thing.
    let config = cluster.config_path().to_str().unwrap().to_string();
    let get = smr_async(
        &["client", "--config", &config, "counter", "get"],
        COMMAND_TIMEOUT,
    )
    .await;
    assert!(get.status.success(), "{get}");
    assert_eq!(get.stdout.trim(), TOTAL.to_string(), "{get}");
    let table = smr_async(
        &["status", "--config", &config, "--timeout-ms", "1000"],
        COMMAND_TIMEOUT,
    )
    .await;
    assert!(table.status.success(), "{table}");
    assert!(table.stdout.contains("replica 2  unreachable"), "{table}");
    for r in &live {
        assert!(
            table.stdout.contains(&format!("replica {r}  up  {mode}")),
            "{table}"
        );
    }
    assert!(
        table
            .stdout
            .contains(&format!("{} of {n} replicas reachable", live.len())),
        "{table}"
    );
    assert!(table.stdout.contains("equal digests"), "{table}");
    for c in clients {
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bft_cluster_survives_kill_of_a_non_leader_mid_run() {
    within(cluster_survives_kill_of_a_non_leader_mid_run(Mode::Bft, 4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cft_cluster_survives_kill_of_a_non_leader_mid_run() {
    within(cluster_survives_kill_of_a_non_leader_mid_run(Mode::Cft, 3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_with_unknown_key_is_refused() {
    within(async {
        let cluster = start_cluster(Mode::Bft, 4, 1, ServiceKind::Counter);
        let config = cluster.config_path().to_str().unwrap().to_string();
        let stranger = cluster.dir().join("stranger.key");
        IdentityKey::generate().save(&stranger).unwrap();

        let admitted = smr_async(
            &["client", "--config", &config, "counter", "add", "5"],
            COMMAND_TIMEOUT,
        )
        .await;
        assert!(admitted.status.success(), "{admitted}");
        assert_eq!(admitted.stdout.trim(), "5", "{admitted}");

        let refused = smr_async(
            &[
                "client",
                "--config",
                &config,
                "--key",
                stranger.to_str().unwrap(),
                "--timeout-ms",
                "1500",
                "counter",
                "add",
                "1000",
            ],
            COMMAND_TIMEOUT,
        )
        .await;
        assert!(!refused.status.success(), "{refused}");
        assert!(refused.stdout.is_empty(), "{refused}");
        assert!(
            refused.stderr.contains("refused this client's key"),
            "{refused}"
        );

        // In process too: the stranger gets no reply, and its request never executes.
        let stranger_client =
            Client::connect(cluster.config(), IdentityKey::load(&stranger).unwrap())
                .await
                .unwrap()
                .with_timeout(Duration::from_millis(1500));
        let result = stranger_client.invoke(CounterOp::Add(1000).encode()).await;
        assert!(result.is_err(), "{result:?}");
        assert!(
            stranger_client
                .transport_stats()
                .connections_refused_by_peer
                > 0
        );
        stranger_client.shutdown().await;

        let admitted_client = client(&cluster, 0).await;
        assert_eq!(counter(&admitted_client, CounterOp::Get).await, 5);
        admitted_client.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_with_wrong_key_cannot_join() {
    within(async {
        let dir = tempfile::tempdir().unwrap();
        let generated = keygen::generate(dir.path(), &KeygenOptions::new(Mode::Bft, 4)).unwrap();
        let config = generated.config_path.to_str().unwrap();
        let wrong_key = dir.path().join("replica-2.key");
        let run = smr_async(
            &[
                "replica",
                "--config",
                config,
                "--id",
                "1",
                "--service",
                "counter",
                "--key",
                wrong_key.to_str().unwrap(),
            ],
            COMMAND_TIMEOUT,
        )
        .await;
        assert!(!run.status.success(), "{run}");
        assert!(run.stderr.contains("key mismatch"), "{run}");
        assert!(run.stderr.contains("replica-2.key"), "{run}");
        assert!(!run.stdout.contains("listening"), "{run}");

        // Its own key works: the same command with the default key_file gets to listening.
        let log = dir.path().join("replica-1.log");
        let mut own = ReplicaProcess::spawn(
            Path::new(SMR),
            &generated.config_path,
            1,
            ServiceKind::Counter,
            &[],
            log,
        )
        .unwrap();
        let deadline = Instant::now() + READY_TIMEOUT;
        while !own.is_ready() {
            assert!(own.try_exit_status().is_none(), "{}", own.log_tail());
            assert!(Instant::now() < deadline, "{}", own.log_tail());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Deterministic pseudo-random bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The transport's own tests cover framing abuse on a raw QUIC connection (oversize length
/// prefixes, garbage, truncated and reset streams). This one does it to whole replica
/// processes: garbage UDP datagrams (some shaped like QUIC Initial packets), then, from an
/// admitted client's authenticated connection, an undecodable frame, requests with forged
/// signatures, a proposal no client may send, and a frame larger than the replicas accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversize_frames_are_rejected_and_the_replica_keeps_serving() {
    within(async {
        let mut cluster = start_cluster(Mode::Bft, 4, 2, ServiceKind::Counter);
        let honest = client(&cluster, 0).await;
        wait_all_up(&cluster, &honest).await;
        assert_eq!(counter(&honest, CounterOp::Add(1)).await, 1);
        // Every replica has executed the honest client's session open and its add: the forged
        // requests below name session 1, which a replica that has executed that open refuses
        // at once as expired (counted), while one that has not yet puts them in its pool and
        // drops them uncounted once it learns the session belongs to another key (a lagging
        // replica 3 failed this test about 1 run in 10).
        let ids: Vec<ReplicaId> = (0..cluster.n() as ReplicaId).collect();
        let (answers, agree) = status::wait_until_agree(&honest, &ids, AGREE_TIMEOUT).await;
        assert!(agree, "{answers:?}");

        // 1. Garbage datagrams to every replica's UDP port.
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        for r in &cluster.config().replicas {
            for i in 0..300u64 {
                let mut datagram = noise(i * 7919 + r.id as u64, 1 + (i as usize * 37) % 1400);
                if i % 3 == 0 && datagram.len() >= 1200 {
                    // Long header, Initial, QUIC v1, 8-byte connection ids: it gets as far as
                    // packet decryption.
                    datagram[..6].copy_from_slice(&[0xc3, 0, 0, 0, 1, 8]);
                    datagram[14] = 8;
                }
                socket.send_to(&datagram, r.address).unwrap();
            }
        }

        // 2. Abuse over an authenticated connection (client key 1 is admitted).
        let abuser_key = Arc::new(IdentityKey::load(cluster.client_key_path(1)).unwrap());
        let endpoints: Vec<ReplicaEndpoint> = cluster
            .config()
            .replicas
            .iter()
            .map(|r| ReplicaEndpoint {
                id: r.id,
                addr: r.address,
                public_key: r.public_key,
            })
            .collect();
        let mut transport_config = TransportConfig::client(abuser_key.clone(), endpoints);
        transport_config.max_frame_bytes = 64 << 20;
        let abuser = QuicTransport::start(transport_config).await.unwrap();
        let forged_request = |seq| {
            Message::Request(Request {
                body: RequestBody {
                    client: abuser_key.public_key(),
                    session: 1,
                    seq,
                    kind: RequestKind::Ordered,
                    op: CounterOp::Add(1000).encode(),
                },
                signature: Some(Signature([0x5a; 64])),
            })
        };
        let forged_proposal = Message::Propose(Signed {
            body: Propose {
                leader: 0,
                cid: Cid(1),
                regency: Regency(0),
                batch: Default::default(),
            },
            signature: Some(Signature([0xa5; 64])),
        });
        for &r in &ids {
            let to = Peer::Replica(r);
            abuser.send(to, noise(r as u64 + 1, 300)).unwrap();
            abuser.send(to, vec![]).unwrap();
            abuser.send(to, codec::encode(&forged_request(1))).unwrap();
            abuser.send(to, codec::encode(&forged_request(2))).unwrap();
            abuser.send(to, codec::encode(&forged_proposal)).unwrap();
        }
        // Every replica counts the three well-formed but unverifiable messages as rejected.
        let deadline = Instant::now() + AGREE_TIMEOUT;
        loop {
            let answers = status::query(&honest, ids.clone(), Duration::from_secs(1)).await;
            let rejected: Vec<Option<u64>> = answers
                .iter()
                .map(|a| a.report.as_ref().map(|r| r.rejected_messages))
                .collect();
            if rejected.iter().all(|r| r.is_some_and(|r| r >= 3)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "forged messages were not all rejected: {rejected:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // 3. A frame one byte over the replicas' limit (batch bytes times decisions per
        // reply, plus 1 MiB, at least 16 MiB): each replica closes the connection carrying it.
        let limits = &cluster.config().limits;
        let max_frame = (limits.max_batch_bytes * limits.max_decisions_per_reply + (1 << 20))
            .max(TransportConfig::DEFAULT_MAX_FRAME_BYTES);
        let lost_before = abuser.stats().connections_lost;
        for &r in &ids {
            abuser
                .send(Peer::Replica(r), vec![0; max_frame + 1])
                .unwrap();
        }
        let deadline = Instant::now() + AGREE_TIMEOUT;
        while abuser.stats().connections_lost < lost_before + ids.len() as u64 {
            assert!(
                Instant::now() < deadline,
                "the replicas did not close the connections carrying oversize frames: {:?}",
                abuser.stats()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        abuser.shutdown().await;

        // Every replica is alive and the cluster still serves; nothing forged executed.
        cluster.check_running().expect("no replica died");
        assert_eq!(counter(&honest, CounterOp::Add(1)).await, 2);
        let (answers, agree) = status::wait_until_agree(&honest, &ids, AGREE_TIMEOUT).await;
        assert!(agree, "{answers:?}");
        honest.shutdown().await;
    })
    .await;
}

fn assert_demo_output(run: &Run, mode: &str, n: usize) {
    assert!(run.status.success(), "{run}");
    let out = &run.stdout;
    assert!(
        out.contains(&format!("{n} of {n} replicas reachable")),
        "{run}"
    );
    assert!(out.contains("(equal digests)"), "{run}");
    let digests: BTreeSet<&str> = out
        .lines()
        .filter(|l| l.contains(&format!("  up  {mode}  ")))
        .map(|l| {
            l.split("digest ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(digests.len(), 1, "one digest on all replicas: {run}");
    assert_eq!(
        out.lines()
            .filter(|l| l.contains(&format!("  up  {mode}  ")))
            .count(),
        n,
        "{run}"
    );
    assert!(out.contains("stopped the replicas and removed"), "{run}");
    let dir = out
        .split("stopped the replicas and removed ")
        .nth(1)
        .unwrap()
        .trim();
    assert!(!Path::new(dir).exists(), "{dir} was not removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smr_cluster_demo_exits_zero() {
    within(async {
        for (mode, n) in [("bft", 4), ("cft", 3)] {
            let run = smr_async(&["cluster", "--mode", mode], COMMAND_TIMEOUT).await;
            assert_demo_output(&run, mode, n);
            assert!(run.stdout.contains("counter get -> 300"), "{run}");
            assert!(run.stdout.contains("final counter value = 300"), "{run}");
            assert!(run.stdout.contains("exactly 1..=300, each once"), "{run}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smr_cluster_kv_demo_exits_zero_and_reads_back_its_writes() {
    within(async {
        let run = smr_async(
            &["cluster", "--mode", "cft", "--service", "kv"],
            COMMAND_TIMEOUT,
        )
        .await;
        assert_demo_output(&run, "cft", 3);
        assert!(
            run.stdout
                .contains("kv put greeting \"hello again\" -> previous \"hello\""),
            "{run}"
        );
        assert!(
            run.stdout.contains("kv get greeting -> \"hello again\""),
            "{run}"
        );
    })
    .await;
}

/// `smr cluster | head -n1` and `smr keygen ... | true`: a reader that closes stdout early
/// ends the command quietly with status 0; `smr cluster` still stops its replicas and removes
/// its directory. `println!` panicked on the closed pipe ("failed printing to stdout: Broken
/// pipe", exit 101).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_closes_stdout_early_ends_smr_quietly() {
    within(async {
        tokio::task::block_in_place(|| {
            // The reader is gone before the first line: keygen's first write fails.
            let out = tempfile::tempdir().unwrap();
            let (reader, writer) = std::io::pipe().unwrap();
            drop(reader);
            let keygen = std::process::Command::new(SMR)
                .args(["keygen", "--replicas", "4", "--mode", "bft", "--out"])
                .arg(out.path())
                .stdin(std::process::Stdio::null())
                .stdout(writer)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            common::assert_quiet_exit(keygen, COMMAND_TIMEOUT);

            // The reader stops after the first line, with the replicas starting.
            let tmp = tempfile::tempdir().unwrap();
            let (cluster, first) =
                common::smr_into_head(&["cluster", "--mode", "cft"], &[("TMPDIR", tmp.path())]);
            assert!(first.contains("starting 3 cft replicas"), "{first}");
            common::assert_quiet_exit(cluster, COMMAND_TIMEOUT);
            let left: Vec<_> = std::fs::read_dir(tmp.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert!(left.is_empty(), "smr cluster left {left:?} behind");
        });
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_writes_a_loadable_config_and_refuses_to_overwrite_it_without_force() {
    within(async {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("keys");
        let out_str = out.to_str().unwrap();
        let args = [
            "keygen",
            "--replicas",
            "3",
            "--mode",
            "cft",
            "--out",
            out_str,
        ];
        let first = smr_async(&args, COMMAND_TIMEOUT).await;
        assert!(first.status.success(), "{first}");
        let config = smr_core::cluster::ClusterConfig::load(&out.join("cluster.toml")).unwrap();
        assert_eq!((config.quorums.n(), config.quorums.f()), (3, 1));
        let client_key = IdentityKey::load(&out.join("client.key")).unwrap();
        assert!(config.clients.admits(&client_key.public_key()));
        for i in 0..3 {
            assert!(out.join(format!("replica-{i}.key")).exists());
        }
        let admin_key = IdentityKey::load(&out.join("admin.key")).unwrap();
        assert_eq!(config.admin_key, Some(admin_key.public_key()));
        assert!(
            first.stdout.contains(&format!(
                "\n  admin      {}  (",
                admin_key.public_key().to_hex()
            )),
            "{first}"
        );

        let again = smr_async(&args, COMMAND_TIMEOUT).await;
        assert!(!again.status.success(), "{again}");
        assert!(again.stderr.contains("--force"), "{again}");
        let unchanged = smr_core::cluster::ClusterConfig::load(&out.join("cluster.toml")).unwrap();
        assert_eq!(unchanged.replicas, config.replicas);

        let forced = smr_async(&[&args[..], &["--force"]].concat(), COMMAND_TIMEOUT).await;
        assert!(forced.status.success(), "{forced}");

        let too_many_faults = smr_async(
            &[
                "keygen",
                "--replicas",
                "4",
                "--mode",
                "bft",
                "--f",
                "2",
                "--out",
                out_str,
                "--force",
            ],
            COMMAND_TIMEOUT,
        )
        .await;
        assert!(!too_many_faults.status.success(), "{too_many_faults}");
    })
    .await;
}

/// A replica that dies before it is ready is reported with its exit status and its log, and
/// the cluster's directory is still removed.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_cluster_reports_a_replica_that_exits_before_ready_with_its_log() {
    within(async {
        // `sh replica --config ...` fails at once: there is no script called "replica".
        let result = tokio::task::block_in_place(|| {
            LocalCluster::start(
                Path::new("/bin/sh"),
                &KeygenOptions::new(Mode::Cft, 3),
                ServiceKind::Counter,
                READY_TIMEOUT,
                false,
            )
        });
        let error = match result {
            Ok(_) => panic!("a cluster of shells must not start"),
            Err(e) => e,
        };
        let message = error.to_string();
        assert!(
            matches!(error, smr_demo::local::LocalClusterError::Exited { .. }),
            "{message}"
        );
        assert!(message.contains("before it was ready"), "{message}");
        // Whichever shell exits first is reported (not necessarily replica 0's).
        assert!(
            (0..3).any(|i| message.contains(&format!("replica-{i}.log"))),
            "{message}"
        );
        assert!(message.contains("replica"), "{message}");
        let dir = message
            .split("its log is ")
            .nth(1)
            .and_then(|rest| rest.split("/replica-").next())
            .unwrap();
        assert!(!Path::new(dir).exists(), "{dir} was not removed");
    })
    .await;
}

/// Issue 17 item 5: replicas must agree on everything that decides whether a message is valid.
/// Replica 3 runs with `max_op_bytes = 1024`, the others with 65,536 (so it would reject a
/// 4,000-byte operation the others decide, and silently cost the cluster its fault tolerance).
/// Replica 3 must refuse the others and log an error naming `max_op_bytes`, the others must
/// refuse it, and `smr status` must show the refusals; the other three still serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_limits_differ_is_refused_and_named_in_the_log_and_status() {
    within(async {
        let mut cluster = start_cluster(Mode::Bft, 4, 1, ServiceKind::Counter);
        let client = client(&cluster, 0).await;
        wait_all_up(&cluster, &client).await;
        assert_eq!(cluster.config().limits.max_op_bytes, 65_536);

        cluster.kill(3).expect("running").unwrap();
        let text = std::fs::read_to_string(cluster.config_path()).unwrap();
        let drifted = cluster.dir().join("cluster-3.toml");
        std::fs::write(
            &drifted,
            common::set_toml_value(&text, "limits", "max_op_bytes", "1024"),
        )
        .unwrap();
        let log = cluster.dir().join("replica-3-drifted.log");
        let mut replica3 = ReplicaProcess::spawn(
            Path::new(SMR),
            &drifted,
            3,
            ServiceKind::Counter,
            &[],
            log.clone(),
        )
        .unwrap();
        let deadline = Instant::now() + READY_TIMEOUT;
        while !replica3.is_ready() {
            assert!(
                replica3.try_exit_status().is_none(),
                "{}",
                replica3.log_tail()
            );
            assert!(Instant::now() < deadline, "{}", replica3.log_tail());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        // The three others still decide (n - f = 3).
        assert_eq!(counter(&client, CounterOp::Add(1)).await, 1);

        let refuses = |report: &Option<smr_core::message::StatusReport>, ids: &[ReplicaId]| {
            report.as_ref().is_some_and(|r| {
                ids.iter().all(|id| {
                    r.refused_replicas.iter().any(|refused| {
                        refused.replica == *id
                            && refused.settings == vec!["limits.max_op_bytes".to_string()]
                    })
                })
            })
        };
        let deadline = Instant::now() + AGREE_TIMEOUT;
        let lines = loop {
            let answers = status::query(&client, 0..4, Duration::from_millis(1000)).await;
            let lines: Vec<String> = answers.iter().map(status::format_line).collect();
            let logged = std::fs::read_to_string(&log).unwrap_or_default();
            let done = answers[..3].iter().all(|a| refuses(&a.report, &[3]))
                && refuses(&answers[3].report, &[0, 1, 2])
                && logged.lines().any(|l| {
                    l.contains("ERROR")
                        && l.contains("refusing replica")
                        && l.contains("max_op_bytes")
                });
            if done {
                break lines;
            }
            assert!(
                Instant::now() < deadline,
                "the refusals did not show within {AGREE_TIMEOUT:?}:\n{}\nreplica 3's log:\n{}",
                lines.join("\n"),
                replica3.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        println!("{}", lines.join("\n"));
        assert!(
            lines[3].contains("REFUSES replica 0 (settings differ: limits.max_op_bytes)"),
            "{}",
            lines[3]
        );
        let logged = std::fs::read_to_string(&log).unwrap();
        let error = logged
            .lines()
            .find(|l| l.contains("refusing replica"))
            .unwrap();
        println!("{error}");
        assert!(
            error.contains("limits.max_op_bytes = 1024 here, 65536 there"),
            "{error}"
        );
        // Every other replica logs it too, with the values the other way round.
        let log0 = std::fs::read_to_string(cluster.log_path(0)).unwrap();
        assert!(
            log0.lines().any(|l| l.contains("ERROR")
                && l.contains("refusing replica 3")
                && l.contains("limits.max_op_bytes = 65536 here, 1024 there")),
            "{log0}"
        );
        // Nothing from the refused replica reached the others' engines: replica 3 never
        // learned the decision.
        let r3 = status::query(&client, [3], Duration::from_millis(1000)).await;
        assert_eq!(
            r3[0].report.as_ref().map(|r| r.last_decided),
            Some(Cid(0)),
            "{r3:?}"
        );
        let _ = replica3.kill();
        client.shutdown().await;
    })
    .await;
}

/// `smr key --out FILE` writes a fresh key and prints its public key in hex, alone on stdout;
/// a second run on the same path exits 2, says the file exists and that --force replaces it,
/// and leaves the key as it was; a run with --force replaces it with another fresh key, in a
/// file of the same permissions, and prints that key.
#[test]
fn smr_key_writes_a_new_key_and_replaces_one_only_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica-9.key");
    let run = |force: bool| {
        let mut command = std::process::Command::new(SMR);
        command.args(["key", "--out"]).arg(&path);
        if force {
            command.arg("--force");
        }
        command.stdin(std::process::Stdio::null()).output().unwrap()
    };
    #[cfg(unix)]
    let owner_only = |path: &Path| {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    };
    let first = run(false);
    assert_eq!(first.status.code(), Some(0), "{first:?}");
    let printed = String::from_utf8(first.stdout).unwrap();
    let key = IdentityKey::load(&path).unwrap();
    assert_eq!(printed, format!("{}\n", key.public_key().to_hex()));
    #[cfg(unix)]
    owner_only(&path);
    let second = run(false);
    assert_eq!(second.status.code(), Some(2), "{second:?}");
    assert!(second.stdout.is_empty());
    let error = String::from_utf8(second.stderr).unwrap();
    assert_eq!(
        error,
        format!(
            "error: {} already exists: it is left as it is (a key it holds would be lost); \
             choose another path, or pass --force to replace it\n",
            path.display()
        )
    );
    assert_eq!(
        IdentityKey::load(&path).unwrap().public_key(),
        key.public_key()
    );
    let forced = run(true);
    assert_eq!(forced.status.code(), Some(0), "{forced:?}");
    let replaced = IdentityKey::load(&path).unwrap();
    assert_ne!(replaced.public_key(), key.public_key());
    assert_eq!(
        String::from_utf8(forced.stdout).unwrap(),
        format!("{}\n", replaced.public_key().to_hex())
    );
    #[cfg(unix)]
    owner_only(&path);
}
