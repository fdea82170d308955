//! The subcommands. Each returns the process exit code, or an error that `main` prints.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use smr_core::cluster::ClusterConfig;
use smr_core::driver::{InvokeError, ReplicaError};
use smr_crypto::{IdentityKey, KeyFileError, PublicKey};
use smr_demo::keygen::{self, KeygenOptions, CLIENT_KEY_FILE, CONFIG_FILE};
use smr_demo::output::{self, OutputError};
use smr_demo::{errln, outln};
use smr_demo::{status as replica_status, CounterOp, CounterReply, KvOp, KvReply};
use smr_transport::{Client, EmptyStart, Replica};

use crate::{
    ClientArgs, ClientService, CounterCommand, KeygenArgs, KvCommand, ReplicaArgs, StatusArgs,
};

mod cluster;
pub use cluster::cluster;

/// How long a command waits for its client connections to close before exiting anyway.
const CLIENT_CLOSE_GRACE: Duration = Duration::from_millis(500);

/// `smr key --out FILE [--force]`: a fresh identity key in a new file, or in place of an
/// existing one with `force`; its public key in hex on stdout, alone on its line (for
/// scripts). The file is written as `smr keygen` writes its keys ([`IdentityKey::save`]).
pub fn key(out: &Path, force: bool) -> anyhow::Result<ExitCode> {
    let key = IdentityKey::generate();
    if force {
        key.save(out)?;
    } else {
        key.save_new(out).map_err(|e| match e {
            KeyFileError::Exists { path } => anyhow!(
                "{} already exists: it is left as it is (a key it holds would be lost); choose \
                 another path, or pass --force to replace it",
                path.display()
            ),
            other => other.into(),
        })?;
    }
    outln!("{}", key.public_key().to_hex())?;
    Ok(ExitCode::SUCCESS)
}

pub fn keygen(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    let several_machines = args.addresses.is_some();
    let options = KeygenOptions {
        mode: args.mode,
        replicas: args.replicas,
        f: args.f,
        clients: args.clients,
        clients_any: args.clients_any,
        force: args.force,
        addresses: args.addresses,
        limits: Default::default(),
        timeouts: Default::default(),
    };
    let generated = keygen::generate(&args.out, &options)?;
    let config = &generated.config;
    outln!(
        "wrote {} ({}, n={}, f={}) with {} replica keys, {} client key{} and an admin key in {}",
        generated.config_path.display(),
        config.mode(),
        config.quorums.n(),
        config.quorums.f(),
        config.replicas.len(),
        generated.client_keys.len(),
        if generated.client_keys.len() == 1 {
            ""
        } else {
            "s"
        },
        args.out.display()
    )?;
    for r in &config.replicas {
        outln!(
            "  replica {}  {}  {}",
            r.id,
            r.address,
            r.public_key.to_hex()
        )?;
    }
    if let Some(admin) = &config.admin_key {
        outln!(
            "  admin      {}  ({}: keep it off the replicas and clients; it will be the key \
             allowed to change the membership)",
            admin.to_hex(),
            generated.admin_key.display()
        )?;
    }
    let last = config.replicas.len().saturating_sub(1);
    if several_machines {
        outln!(
            "copy {CONFIG_FILE} to every machine, replica-<i>.key to machine i only, and \
             {CLIENT_KEY_FILE} to the clients; on machine i (i from 0 to {last}) run:"
        )?;
        outln!(
            "  smr replica --config {CONFIG_FILE} --id i --service counter --data-dir /var/lib/smr"
        )?;
    } else {
        outln!(
            "start replica i (i from 0 to {last}), e.g. in the background with its log in a file:"
        )?;
        outln!(
            "  smr replica --config {} --id i --service counter --data-dir {} > {} 2>&1 &",
            generated.config_path.display(),
            args.out.join("data-i").display(),
            args.out.join("replica-i.log").display()
        )?;
    }
    outln!(
        "then: smr client --config {} counter add 5   (smr status --config {} shows every replica)",
        generated.config_path.display(),
        generated.config_path.display()
    )?;
    Ok(ExitCode::SUCCESS)
}

fn load_config(path: &Path) -> anyhow::Result<ClusterConfig> {
    Ok(ClusterConfig::load(path)?)
}

/// Resolves once the process is asked to stop: SIGINT, SIGTERM, or (if `stdin_eof`) the end of
/// stdin. Returns what happened, for the log.
pub async fn stop_requested(stdin_eof: bool) -> &'static str {
    let eof = async {
        if !stdin_eof {
            return std::future::pending().await;
        }
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut stdin = std::io::stdin();
            let mut buf = [0u8; 256];
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
            let _ = tx.send(());
        });
        let _ = rx.await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = terminate => "SIGTERM",
        _ = eof => "stdin closed",
    }
}

pub async fn replica(args: ReplicaArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&args.config)?;
    let id = args.id;
    let entry = config.replicas.get(id as usize).ok_or_else(|| {
        anyhow!(
            "replica {id} is not in {}; its ids are 0..{}",
            args.config.display(),
            config.replicas.len()
        )
    })?;
    let key_path = args
        .key
        .clone()
        .or_else(|| entry.key_file.clone())
        .ok_or_else(|| {
            anyhow!(
                "no --key given, and {} names no key_file for replica {id}",
                args.config.display()
            )
        })?;
    let key = IdentityKey::load(&key_path)?;
    if key.public_key() != entry.public_key {
        bail!(
            "key mismatch: {} holds public key {}, but {} lists {} for replica {id}; \
             pass replica {id}'s key file with --key, or check --id",
            key_path.display(),
            key.public_key().to_hex(),
            args.config.display(),
            entry.public_key.to_hex()
        );
    }
    let address = entry.address;
    // Bound before the replica starts, so that a taken metrics port fails the start at once.
    let metrics_listener = match args.metrics_addr {
        Some(addr) => Some(
            smr_demo::metrics_http::bind(addr)
                .await
                .with_context(|| format!("cannot bind the metrics address {addr}"))?,
        ),
        None => None,
    };
    if args.data_dir.is_none() {
        tracing::warn!(replica = id, "no --data-dir: running in memory; a restart forgets everything and rejoins by state transfer");
    }
    let mut builder = Replica::builder(&config, id, key)
        .boxed_service(args.service.create_with_reply_bytes(args.reply_bytes))
        .empty_start(if args.new_cluster {
            EmptyStart::NewCluster
        } else {
            EmptyStart::Rejoin
        });
    if let Some(dir) = &args.data_dir {
        builder = builder.data_dir(dir);
    }
    let replica = builder
        .start()
        .await
        .with_context(|| format!("replica {id} cannot start on {address}"))?;
    // Printed before the ready line, so whoever waits for that line finds this one too.
    let _metrics_server = metrics_listener.map(|listener| {
        let local = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        // A replica serves on when whoever reads its stdout goes away (its log lines on
        // stderr are dropped the same way): best effort, unlike the commands' output.
        let _ = outln!("replica {id} serves metrics on http://{local}/metrics");
        let registry = std::sync::Arc::new(replica.metrics_registry());
        AbortOnDrop(tokio::spawn(smr_demo::metrics_http::serve(
            listener,
            smr_demo::metrics_http::Limits::default(),
            smr_transport::OPENMETRICS_CONTENT_TYPE,
            std::sync::Arc::new(move |out: &mut String| {
                smr_transport::encode_registry(out, &registry)
            }),
        )))
    });
    let _ = outln!(
        "replica {id} listening on {address} ({}, n={}, f={}, service {})",
        config.mode(),
        config.quorums.n(),
        config.quorums.f(),
        args.service
    );
    // Fail-stop: a replica whose storage, service, engine or transport failed exits non-zero
    // with the reason (already logged), so that a supervisor restarts it from its data dir.
    let why = tokio::select! {
        why = stop_requested(args.exit_on_stdin_eof) => why,
        outcome = replica.closed() => {
            let status = replica.status();
            replica.shutdown().await;
            let restart = restart_advice(outcome.as_ref().err(), args.data_dir.is_some());
            let reason = match outcome {
                Err(e) => e.to_string(),
                Ok(()) => "the engine stopped without being asked to".to_string(),
            };
            bail!(
                "replica {id} stopped at cid {}: {reason}. {restart}",
                status.last_decided.0
            );
        }
    };
    let status = replica.status();
    tracing::info!(
        replica = id,
        reason = why,
        last_decided = status.last_decided.0,
        "shutting down"
    );
    replica.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Stops a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What to tell the operator after the replica stopped with `error`: a restart helps unless
/// the same failure comes back, as when the service cannot read a checkpoint (restarting, from
/// the data dir or by rejoining, restores the same state again).
fn restart_advice(error: Option<&ReplicaError>, has_data_dir: bool) -> &'static str {
    match error {
        Some(ReplicaError::Restore { .. }) => {
            "Restarting it fails the same way: run a service that can read this checkpoint (the version the other replicas run)"
        }
        Some(ReplicaError::Storage(_)) => {
            "Fix its storage (free space, permissions, file-size limits), then restart it: it recovers from its data dir"
        }
        _ if has_data_dir => "Restart it: it recovers from its data dir",
        _ => "Restart it: it ran in memory, so it rejoins and catches up from its peers",
    }
}

fn client_key_path(config: &Path, key: Option<PathBuf>) -> PathBuf {
    key.unwrap_or_else(|| {
        config
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join(CLIENT_KEY_FILE)
    })
}

async fn connect(
    config_path: &Path,
    key: Option<PathBuf>,
) -> anyhow::Result<(ClusterConfig, Client, PublicKey)> {
    let config = load_config(config_path)?;
    let key_path = client_key_path(config_path, key);
    let key = IdentityKey::load(&key_path).with_context(|| {
        format!("no usable client key; pass --key, or run `smr keygen`, which writes {CLIENT_KEY_FILE} next to the config")
    })?;
    let public_key = key.public_key();
    let client = Client::connect(&config, key)
        .await
        .context("cannot start the client")?;
    Ok((config, client, public_key))
}

async fn close(client: Client) {
    let _ = tokio::time::timeout(CLIENT_CLOSE_GRACE, client.shutdown()).await;
}

/// Why no reply came, as far as the transport can tell.
fn diagnose(client: &Client, client_key: &PublicKey, config_path: &Path) -> String {
    let stats = client.transport_stats();
    if stats.connections_refused_by_peer > 0 && stats.frames_received == 0 {
        format!(
            "the replicas refused this client's key {}: it is not listed in `clients` in {}. \
             Use a listed key (--key), or add it there and restart the replicas",
            client_key.to_hex(),
            config_path.display()
        )
    } else if stats.connections_outgoing == 0 {
        format!(
            "no replica could be reached; check that they run and that the addresses in {} \
             are right",
            config_path.display()
        )
    } else {
        format!(
            "too few replicas answered; check them with `smr status --config {}`",
            config_path.display()
        )
    }
}

fn invoke_error(
    e: InvokeError,
    client: &Client,
    client_key: &PublicKey,
    config_path: &Path,
) -> anyhow::Error {
    match e {
        InvokeError::TimedOut(timeout) => anyhow!(
            "no reply quorum within {} ms (the request may still execute later: read the state \
             before repeating it): {}",
            timeout.as_millis(),
            diagnose(client, client_key, config_path)
        ),
        other => anyhow!(other),
    }
}

pub async fn client(args: ClientArgs) -> anyhow::Result<ExitCode> {
    let (_config, client, key) = connect(&args.config, args.key).await?;
    let client = client.with_timeout(Duration::from_millis(args.timeout_ms));
    let result = run_client_op(&client, args.service, args.unordered)
        .await
        .map_err(|e| match e {
            OpError::Invoke(e) => invoke_error(e, &client, &key, &args.config),
            OpError::Other(e) => e,
        });
    close(client).await;
    result
}

enum OpError {
    Invoke(InvokeError),
    Other(anyhow::Error),
}

impl From<OutputError> for OpError {
    fn from(e: OutputError) -> Self {
        OpError::Other(e.into())
    }
}

impl From<InvokeError> for OpError {
    fn from(e: InvokeError) -> Self {
        OpError::Invoke(e)
    }
}

/// Runs `op` unordered if asked and it is a read; an unordered write is refused before it is
/// sent.
async fn invoke_op(
    client: &Client,
    op: Vec<u8>,
    read_only: bool,
    unordered: bool,
) -> Result<Vec<u8>, OpError> {
    match (unordered, read_only) {
        (false, _) => Ok(client.invoke(op).await?),
        (true, true) => Ok(client.invoke_unordered(op).await?),
        (true, false) => Err(OpError::Other(anyhow!(
            "--unordered is for reads (`get`) only: an operation that changes the state must be ordered"
        ))),
    }
}

async fn run_client_op(
    client: &Client,
    op: ClientService,
    unordered: bool,
) -> Result<ExitCode, OpError> {
    match op {
        ClientService::Counter(command) => {
            let op = match command {
                CounterCommand::Add { amount } => CounterOp::Add(amount),
                CounterCommand::Get => CounterOp::Get,
            };
            let read_only = op == CounterOp::Get;
            let reply = invoke_op(client, op.encode(), read_only, unordered).await?;
            match CounterReply::decode(&reply) {
                Ok(CounterReply::Value(v)) => {
                    outln!("{v}")?;
                    Ok(ExitCode::SUCCESS)
                }
                Ok(CounterReply::Error(message)) => Err(OpError::Other(anyhow!(
                    "the counter refused the operation: {}",
                    replica_status::escape_peer_text(&message)
                ))),
                Err(_) => Err(OpError::Other(anyhow!(
                    "the reply is not a counter reply; does the cluster run --service counter?"
                ))),
            }
        }
        ClientService::Kv(command) => {
            let (op, key) = match command {
                KvCommand::Put { key, value } => (
                    KvOp::Put {
                        key: key.clone().into_bytes(),
                        value: value.into_bytes(),
                    },
                    key,
                ),
                KvCommand::Get { key } => (
                    KvOp::Get {
                        key: key.clone().into_bytes(),
                    },
                    key,
                ),
            };
            let read_only = matches!(op, KvOp::Get { .. });
            let reply = invoke_op(client, op.encode(), read_only, unordered).await?;
            match KvReply::decode(&reply) {
                Ok(KvReply::Previous(Some(previous))) => {
                    outln!("{}", replica_status::escape_peer_bytes(&previous))?;
                    Ok(ExitCode::SUCCESS)
                }
                Ok(KvReply::Previous(None)) => {
                    errln!("(no previous value for {key:?})");
                    Ok(ExitCode::SUCCESS)
                }
                Ok(KvReply::Value(Some(value))) => {
                    outln!("{}", replica_status::escape_peer_bytes(&value))?;
                    Ok(ExitCode::SUCCESS)
                }
                Ok(KvReply::Value(None)) => {
                    errln!("not found: {key:?}");
                    Ok(ExitCode::from(1))
                }
                Ok(KvReply::Error(message)) => Err(OpError::Other(anyhow!(
                    "the kv service refused the operation: {}",
                    replica_status::escape_peer_text(&message)
                ))),
                Err(_) => Err(OpError::Other(anyhow!(
                    "the reply is not a kv reply; does the cluster run --service kv?"
                ))),
            }
        }
    }
}

pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let (config, client, key) = connect(&args.config, args.key).await?;
    let ids: Vec<_> = config.replicas.iter().map(|r| r.id).collect();
    let timeout = Duration::from_millis(args.timeout_ms);
    let clear_screen = args.watch && std::io::stdout().is_terminal();
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        let started = tokio::time::Instant::now();
        let answers = tokio::select! {
            answers = replica_status::query(&client, ids.iter().copied(), timeout) => answers,
            _ = &mut stop => break,
        };
        let mut text = String::new();
        if clear_screen {
            // Clear the screen and move the cursor home.
            text.push_str("\x1b[2J\x1b[H");
        }
        if args.json {
            text.push_str(&replica_status::ascii_json(&replica_status::to_json(
                &answers,
            )));
            text.push('\n');
        } else {
            for answer in &answers {
                text.push_str(&replica_status::format_line(answer));
                text.push('\n');
            }
            text.push_str(&replica_status::summary(&answers));
            text.push('\n');
        }
        // A closed pipe (`| head -n1`) ends the watch as Ctrl-C does.
        match output::stdout_text(&text) {
            Ok(()) => {}
            Err(OutputError::ReaderGone) => break,
            Err(e) => return Err(e.into()),
        }
        if !args.json && answers.iter().all(|a| a.report.is_none()) {
            errln!("{}", diagnose(&client, &key, &args.config));
        }
        if !args.watch {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(started + Duration::from_secs(1)) => {}
            _ = &mut stop => break,
        }
    }
    close(client).await;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smr_core::message::Cid;

    #[test]
    fn the_restart_advice_depends_on_why_the_replica_stopped() {
        let restore = ReplicaError::Restore {
            cid: Cid(20),
            error: "unknown snapshot version".into(),
        };
        for has_data_dir in [true, false] {
            assert_eq!(
                restart_advice(Some(&restore), has_data_dir),
                "Restarting it fails the same way: run a service that can read this checkpoint (the version the other replicas run)"
            );
        }
        assert_eq!(
            restart_advice(Some(&ReplicaError::Storage("disk full".into())), true),
            "Fix its storage (free space, permissions, file-size limits), then restart it: it recovers from its data dir"
        );
        let panicked = ReplicaError::Service("it panicked: boom".into());
        assert_eq!(
            restart_advice(Some(&panicked), true),
            "Restart it: it recovers from its data dir"
        );
        assert_eq!(
            restart_advice(Some(&panicked), false),
            "Restart it: it ran in memory, so it rejoins and catches up from its peers"
        );
        assert_eq!(
            restart_advice(None, true),
            "Restart it: it recovers from its data dir"
        );
    }
}
