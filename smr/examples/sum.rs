// Embedding smr: your own replicated service, its replicas, and a client, in one program.
//
// Keys and a config come from `smr keygen` (or are written by your own tooling):
//
// ```sh
// smr keygen --replicas 4 --mode bft --out c     # c/cluster.toml, c/replica-<i>.key, c/client.key
// cargo run -p smr --example sum -- replica c/cluster.toml 0 --new-cluster &  # and 1, 2, 3
//                                   (the first start only; later starts leave it out)
// cargo run -p smr --example sum -- client c/cluster.toml 5      # prints the new total
// cargo run -p smr --example sum -- read c/cluster.toml          # the total, read unordered
// ```

use std::path::Path;

use smr::{Client, ClusterConfig, EmptyStart, IdentityKey, Replica, Service};

/// The replicated state machine: a sum. An operation is an `i64` (8 bytes, little-endian) to
/// add; the reply is the new total. It must be deterministic: every replica executes the same
/// operations in the same order and must reach the same state.
#[derive(Default)]
struct Sum(i64);

impl Service for Sum {
    fn execute(&mut self, op: &[u8]) -> Vec<u8> {
        let Ok(amount) = <[u8; 8]>::try_from(op) else {
            return b"error: an operation is 8 bytes".to_vec();
        };
        self.0 = self.0.wrapping_add(i64::from_le_bytes(amount));
        self.0.to_le_bytes().to_vec()
    }

    fn query(&self, _op: &[u8]) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }

    fn snapshot(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let bytes = <[u8; 8]>::try_from(snapshot).map_err(|_| "a snapshot is 8 bytes")?;
        self.0 = i64::from_le_bytes(bytes);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // smr logs through `tracing`: without a subscriber an embedded replica logs nothing.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let args: Vec<String> = std::env::args().collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[1..] {
        ["replica", config, id] => {
            run_replica(Path::new(config), id.parse()?, EmptyStart::Rejoin).await
        }
        // The first start of a brand-new cluster only: an empty data dir votes at once.
        ["replica", config, id, "--new-cluster"] => {
            run_replica(Path::new(config), id.parse()?, EmptyStart::NewCluster).await
        }
        ["client", config, amount] => run_client(Path::new(config), Some(amount.parse()?)).await,
        ["read", config] => run_client(Path::new(config), None).await,
        _ => Err("usage: sum replica <cluster.toml> <id> [--new-cluster] | sum client <cluster.toml> <amount> | sum read <cluster.toml>".into()),
    }
}

async fn run_replica(
    config_path: &Path,
    id: u32,
    empty_start: EmptyStart,
) -> Result<(), Box<dyn std::error::Error>> {
    let config = ClusterConfig::load(config_path)?;
    // `smr keygen` writes replica-<id>.key and names it in the config (`key_file`, resolved
    // against the config's directory).
    let key_file = config.replicas[id as usize]
        .key_file
        .clone()
        .ok_or("the config names no key_file for this replica")?;
    let key = IdentityKey::load(&key_file)?;
    // Durable state (write-ahead log and checkpoints) in this directory; without `data_dir` it
    // is kept in memory. `EmptyStart::Rejoin` (the default): an empty data dir may be a lost
    // one, so the replica asks its peers before it votes; `NewCluster` on a brand-new
    // cluster's first start.
    let replica = Replica::builder(&config, id, key)
        .service(Sum::default())
        .data_dir(config.directory.join(format!("sum-data-{id}")))
        .empty_start(empty_start)
        .start()
        .await?;
    println!("replica {id} running; Ctrl-C stops it");
    // Fail-stop: if the replica fails on its own (its storage, its service, ...), `closed`
    // resolves with the reason; exit non-zero so that a supervisor restarts the process.
    tokio::select! {
        stop = tokio::signal::ctrl_c() => stop?,
        failed = replica.closed() => {
            replica.shutdown().await;
            return Err(format!("replica {id} stopped: {failed:?}").into());
        }
    }
    replica.shutdown().await;
    Ok(())
}

async fn run_client(
    config_path: &Path,
    amount: Option<i64>,
) -> Result<(), Box<dyn std::error::Error>> {
    let config = ClusterConfig::load(config_path)?;
    // `smr keygen` writes client.key next to the config and lists its public key in `clients`.
    let key = IdentityKey::load(&config.directory.join("client.key"))?;
    let client = Client::connect(&config, key).await?;
    let reply = match amount {
        // Ordered through consensus; returns once a reply quorum gave this reply.
        Some(amount) => client.invoke(amount.to_le_bytes().to_vec()).await?,
        // Read without ordering (`Service::query` on every replica), still linearizable; falls
        // back to ordering if the replicas' answers disagree.
        None => client.invoke_unordered(Vec::new()).await?,
    };
    let total = i64::from_le_bytes(<[u8; 8]>::try_from(reply.as_slice())?);
    println!("{total}");
    client.shutdown().await;
    Ok(())
}
