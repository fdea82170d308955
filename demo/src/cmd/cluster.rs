//! `smr cluster`: the one-command demo.
//!
//! It generates keys and a config in a temporary directory, starts the replicas as child
//! processes of this same binary (`smr replica`), waits until every replica answers a status
//! query, runs a short workload from three concurrent clients, waits until every replica has
//! decided the same cid with the same state digest and prints the table, then stops the
//! replicas and removes the directory. The children are killed on every exit path: they are
//! owned by a [`LocalCluster`] whose processes are killed when dropped, and they exit by
//! themselves if this process dies (their stdin is a pipe from us).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use smr_core::ReplicaId;
use smr_demo::keygen::KeygenOptions;
use smr_demo::local::LocalCluster;
use smr_demo::output::{self, OutputError};
use smr_demo::{errln, outln};
use smr_demo::{status, CounterOp, CounterReply, KvOp, KvReply, ServiceKind};
use smr_modes::Mode;
use smr_transport::Client;
use tokio::task::JoinSet;

use super::stop_requested;
use crate::ClusterArgs;

/// Concurrent clients, each with its own key.
const CLIENTS: usize = 3;
/// Operations per client.
const OPS_PER_CLIENT: usize = 100;
/// Operations each client keeps in flight.
const IN_FLIGHT_PER_CLIENT: usize = 10;
const READY_TIMEOUT: Duration = Duration::from_secs(15);
const AGREE_TIMEOUT: Duration = Duration::from_secs(10);
const INVOKE_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_GRACE: Duration = Duration::from_secs(3);

struct Clock(Instant);

impl Clock {
    fn say(&self, what: impl AsRef<str>) -> Result<(), OutputError> {
        outln!(
            "[{:6.2}s] {}",
            self.0.elapsed().as_secs_f64(),
            what.as_ref()
        )
    }
}

pub async fn cluster(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    if args.service == ServiceKind::Null {
        bail!("the null service has no demo workload; run `smr bench` to measure it, or pick --service counter or kv");
    }
    let clock = Clock(Instant::now());
    let exe = std::env::current_exe().context("cannot find the smr binary to start replicas")?;
    let n = match args.mode {
        Mode::Bft => 4,
        Mode::Cft => 3,
    };
    let mut options = KeygenOptions::new(args.mode, n);
    options.clients = CLIENTS;
    clock.say(format!(
        "starting {n} {} replicas of the {} service as child processes of {}",
        args.mode,
        args.service,
        exe.display()
    ))?;
    let mut cluster = tokio::task::block_in_place(|| {
        LocalCluster::start(&exe, &options, args.service, READY_TIMEOUT, true)
    })?;
    let config = cluster.config();
    let up = format!(
        "{} replicas up ({}, n={}, f={}); config, keys and logs in {}",
        n,
        config.mode(),
        config.quorums.n(),
        config.quorums.f(),
        cluster.dir().display()
    );

    // A signal ends the demo at any step; the replicas are stopped below either way.
    let outcome = tokio::select! {
        outcome = async {
            clock.say(up)?;
            demo(&mut cluster, &args, &clock).await
        } => outcome,
        why = stop_requested(false) => {
            clock.say(format!("{why}: stopping the replicas")).map_err(Into::into)
        }
    };
    // When the reader of stdout went away the demo stops there, and the replicas and the
    // directory go as on success (nothing failed); `main` then exits quietly.
    let reader_gone = match outcome {
        Ok(()) => None,
        Err(e) if output::reader_gone(&e) => Some(e),
        Err(e) => {
            let dir = cluster.keep_dir();
            errln!(
                "the demo failed; replica logs are kept in {}/replica-<i>.log",
                dir.display()
            );
            return Err(e);
        }
    };
    let dir = cluster.dir().to_path_buf();
    tokio::task::block_in_place(|| cluster.stop(STOP_GRACE));
    drop(cluster);
    if let Some(e) = reader_gone {
        return Err(e);
    }
    clock.say(format!(
        "stopped the replicas and removed {}",
        dir.display()
    ))?;
    Ok(ExitCode::SUCCESS)
}

async fn demo(cluster: &mut LocalCluster, args: &ClusterArgs, clock: &Clock) -> anyhow::Result<()> {
    let ids: Vec<ReplicaId> = (0..cluster.n() as ReplicaId).collect();
    let mut clients = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        clients.push(cluster.client(i).await?.with_timeout(INVOKE_TIMEOUT));
    }
    let (answers, all_up) = status::wait_until_agree(&clients[0], &ids, READY_TIMEOUT).await;
    if !all_up {
        for a in &answers {
            errln!("{}", status::format_line(a));
        }
        bail!("not every replica answered a status query within {READY_TIMEOUT:?}");
    }
    clock.say(format!("all {} replicas answer status queries", ids.len()))?;

    // Replicas dial each other as they start, and a dial to a peer that is not up yet is
    // retried with backoff, so the first requests can wait a few hundred milliseconds for the
    // replica-to-replica links. One read through consensus, decided everywhere, gets that out of
    // the way before anything is timed.
    let warm_up = match args.service {
        ServiceKind::Counter => CounterOp::Get.encode(),
        ServiceKind::Kv => KvOp::Get {
            key: b"warm-up".to_vec(),
        }
        .encode(),
        ServiceKind::Null => Vec::new(),
    };
    clients[0]
        .invoke(warm_up)
        .await
        .context("the warm-up request got no reply quorum")?;
    let (_, agree) = status::wait_until_agree(&clients[0], &ids, READY_TIMEOUT).await;
    if !agree {
        bail!("the replicas did not all decide the warm-up request within {READY_TIMEOUT:?}");
    }
    clock.say("warm-up: one ordered read decided on every replica")?;

    let result = match args.service {
        ServiceKind::Counter => counter_workload(&clients, clock).await,
        ServiceKind::Kv => kv_workload(&clients, clock).await,
        ServiceKind::Null => Ok(()),
    };
    if let Err(e) = result {
        cluster.check_running()?;
        return Err(e);
    }

    let (answers, agree) = status::wait_until_agree(&clients[0], &ids, AGREE_TIMEOUT).await;
    clock.say("status of every replica:")?;
    for a in &answers {
        outln!("    {}", status::format_line(a))?;
    }
    outln!("    {}", status::summary(&answers))?;
    if !agree {
        cluster.check_running()?;
        bail!(
            "the replicas did not reach the same decided cid and digest within {AGREE_TIMEOUT:?}"
        );
    }
    if args.keep_running {
        keep_running(cluster, args.service, clock)?;
        // Until a signal ends the demo (see `cluster`).
        std::future::pending::<()>().await;
    }
    for client in clients {
        let _ = tokio::time::timeout(Duration::from_millis(500), client.shutdown()).await;
    }
    Ok(())
}

/// Runs `OPS_PER_CLIENT` operations on each client, `IN_FLIGHT_PER_CLIENT` at a time; `op(c, i)`
/// makes client c's i-th operation. Returns every reply, and the elapsed time.
async fn run_concurrently(
    clients: &[Client],
    op: fn(usize, usize) -> Vec<u8>,
) -> anyhow::Result<(Vec<Vec<u8>>, Duration)> {
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for (c, client) in clients.iter().enumerate() {
        for lane in 0..IN_FLIGHT_PER_CLIENT {
            let client = client.clone();
            tasks.spawn(async move {
                let mut replies = Vec::new();
                for i in (lane..OPS_PER_CLIENT).step_by(IN_FLIGHT_PER_CLIENT) {
                    let reply = client
                        .invoke(op(c, i))
                        .await
                        .with_context(|| format!("client {c}, operation {i}"))?;
                    replies.push(reply);
                }
                anyhow::Ok(replies)
            });
        }
    }
    let mut replies = Vec::with_capacity(clients.len() * OPS_PER_CLIENT);
    while let Some(joined) = tasks.join_next().await {
        replies.extend(joined.context("a client task panicked")??);
    }
    Ok((replies, start.elapsed()))
}

fn rate(ops: usize, elapsed: Duration) -> String {
    format!(
        "{ops} operations in {:.2} s ({:.0} ops/s)",
        elapsed.as_secs_f64(),
        ops as f64 / elapsed.as_secs_f64().max(1e-9)
    )
}

async fn counter_value(client: &Client, op: CounterOp) -> anyhow::Result<i64> {
    match CounterReply::decode(&client.invoke(op.encode()).await?)? {
        CounterReply::Value(v) => Ok(v),
        CounterReply::Error(e) => bail!(
            "the counter refused the operation: {}",
            status::escape_peer_text(&e)
        ),
    }
}

async fn counter_workload(clients: &[Client], clock: &Clock) -> anyhow::Result<()> {
    let total = clients.len() * OPS_PER_CLIENT;
    let (replies, elapsed) = run_concurrently(clients, |_, _| CounterOp::Add(1).encode()).await?;
    let mut values = replies
        .iter()
        .map(|r| match CounterReply::decode(r) {
            Ok(CounterReply::Value(v)) => Ok(v),
            other => Err(anyhow!("unexpected reply to add: {other:?}")),
        })
        .collect::<anyhow::Result<Vec<i64>>>()?;
    values.sort_unstable();
    let expected: Vec<i64> = (1..=total as i64).collect();
    if values != expected {
        bail!(
            "the add replies are not exactly 1..={total}: some increment ran twice or not at all"
        );
    }
    clock.say(format!(
        "{} clients did {OPS_PER_CLIENT} increments each, {IN_FLIGHT_PER_CLIENT} in flight per client: {}",
        clients.len(),
        rate(total, elapsed)
    ))?;
    clock.say(format!(
        "the {total} add replies are exactly 1..={total}, each once: every increment executed exactly once, in one order"
    ))?;
    let value = counter_value(&clients[0], CounterOp::Get).await?;
    clock.say(format!("counter get -> {value}"))?;
    if value != total as i64 {
        bail!("the counter is {value}, expected {total}");
    }
    clock.say(format!("final counter value = {value}"))?;
    Ok(())
}

async fn kv(client: &Client, op: KvOp) -> anyhow::Result<KvReply> {
    match KvReply::decode(&client.invoke(op.encode()).await?)? {
        KvReply::Error(e) => bail!(
            "the kv service refused the operation: {}",
            status::escape_peer_text(&e)
        ),
        reply => Ok(reply),
    }
}

fn show(value: &Option<Vec<u8>>) -> String {
    match value {
        Some(v) => format!("{:?}", String::from_utf8_lossy(v)),
        None => "(none)".to_string(),
    }
}

async fn kv_workload(clients: &[Client], clock: &Clock) -> anyhow::Result<()> {
    let total = clients.len() * OPS_PER_CLIENT;
    let (replies, elapsed) = run_concurrently(clients, |c, i| {
        KvOp::Put {
            key: format!("client-{c}/key-{i:03}").into_bytes(),
            value: format!("value-{i}").into_bytes(),
        }
        .encode()
    })
    .await?;
    if let Some(bad) = replies
        .iter()
        .find(|r| KvReply::decode(r).ok() != Some(KvReply::Previous(None)))
    {
        bail!("a put of a fresh key did not answer \"no previous value\": {bad:?}");
    }
    clock.say(format!(
        "{} clients put {OPS_PER_CLIENT} distinct keys each, {IN_FLIGHT_PER_CLIENT} in flight per client: {}",
        clients.len(),
        rate(total, elapsed)
    ))?;
    let key = b"greeting".to_vec();
    let put = |value: &str| KvOp::Put {
        key: key.clone(),
        value: value.as_bytes().to_vec(),
    };
    let KvReply::Previous(first) = kv(&clients[0], put("hello")).await? else {
        bail!("put did not answer with the previous value");
    };
    clock.say(format!(
        "kv put greeting hello -> previous {}",
        show(&first)
    ))?;
    let KvReply::Previous(second) = kv(&clients[1], put("hello again")).await? else {
        bail!("put did not answer with the previous value");
    };
    clock.say(format!(
        "kv put greeting \"hello again\" -> previous {}",
        show(&second)
    ))?;
    let KvReply::Value(got) = kv(&clients[2], KvOp::Get { key: key.clone() }).await? else {
        bail!("get did not answer with a value");
    };
    clock.say(format!("kv get greeting -> {}", show(&got)))?;
    let KvReply::Value(missing) = kv(
        &clients[2],
        KvOp::Get {
            key: b"no-such-key".to_vec(),
        },
    )
    .await?
    else {
        bail!("get did not answer with a value");
    };
    clock.say(format!("kv get no-such-key -> {}", show(&missing)))?;
    let sample = b"client-1/key-042".to_vec();
    let KvReply::Value(sampled) = kv(&clients[0], KvOp::Get { key: sample }).await? else {
        bail!("get did not answer with a value");
    };
    clock.say(format!("kv get client-1/key-042 -> {}", show(&sampled)))?;
    if first.is_some()
        || second.as_deref() != Some(b"hello")
        || got.as_deref() != Some(b"hello again")
        || missing.is_some()
        || sampled.as_deref() != Some(b"value-42")
    {
        bail!("the kv answers are not what the operations imply");
    }
    Ok(())
}

fn keep_running(
    cluster: &LocalCluster,
    service: ServiceKind,
    clock: &Clock,
) -> Result<(), OutputError> {
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "smr".to_string());
    let config = cluster.config_path().display().to_string();
    clock.say("the cluster keeps running; from another terminal, try:")?;
    outln!("    {exe} status --config {config}")?;
    match service {
        ServiceKind::Counter => {
            outln!("    {exe} client --config {config} counter get")?;
            outln!("    {exe} client --config {config} counter add 5")?;
        }
        ServiceKind::Kv => {
            outln!("    {exe} client --config {config} kv get greeting")?;
            outln!("    {exe} client --config {config} kv put color blue")?;
        }
        ServiceKind::Null => {}
    }
    outln!(
        "    replica logs: {}/replica-<i>.log",
        cluster.dir().display()
    )?;
    outln!("press Ctrl-C to stop the replicas and remove the directory")
}
