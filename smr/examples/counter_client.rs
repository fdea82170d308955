//! A client of smr's own counter service, for the cluster that `smr cluster --keep-running`
//! leaves up: `counter_client <cluster.toml> add 5`, `counter_client <cluster.toml> get`
//! (the config's path is the one `smr cluster` prints).
//!
//! The counter's operations are its own serde types, encoded with `smr_core::codec` (bincode,
//! fixed-width integers), so these mirror `smr_demo::CounterOp` and `CounterReply`.
use serde::{Deserialize, Serialize};
use smr::smr_core::codec;
use smr::{Client, ClusterConfig, IdentityKey};

#[derive(Serialize)]
enum CounterOp {
    Add(i64),
    Get,
}

#[derive(Deserialize)]
enum CounterReply {
    Value(i64),
    Error(String),
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (config, op) = match args[..] {
        [config, "add", n] => (config, CounterOp::Add(n.parse()?)),
        [config, "get"] => (config, CounterOp::Get),
        _ => return Err("usage: counter_client <cluster.toml> add <n> | get".into()),
    };
    let config = ClusterConfig::load(config.as_ref())?;
    // `smr keygen` (which `smr cluster` runs) writes client.key next to the config.
    let key = IdentityKey::load(&config.directory.join("client.key"))?;
    let client = Client::connect(&config, key).await?;
    let reply = match op {
        CounterOp::Get => client.invoke_unordered(codec::encode(&op)).await?,
        CounterOp::Add(_) => client.invoke(codec::encode(&op)).await?,
    };
    client.shutdown().await;
    match codec::decode(&reply)? {
        CounterReply::Value(value) => println!("{value}"),
        CounterReply::Error(e) => return Err(e.into()),
    }
    Ok(())
}
