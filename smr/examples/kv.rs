//! A replicated key-value map with its own serde request and reply types. Keys from
//! `smr keygen --out c`; `kv replica c/cluster.toml <i> --new-cluster` for each replica (the
//! first start only), then `kv put c/cluster.toml color blue` and `kv get c/cluster.toml color`.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use smr::{Client, ClusterConfig, EmptyStart, IdentityKey, Replica, Service};

#[derive(Serialize, Deserialize)]
enum Request {
    Put { key: String, value: String },
    Get { key: String },
}

/// The value before a put, or the value read; an error for bytes that are no request.
type Response = Result<Option<String>, String>;

#[derive(Default)]
struct Kv(BTreeMap<String, String>);

fn encode(response: Response) -> Vec<u8> {
    serde_json::to_vec(&response).expect("a response serializes")
}

impl Service for Kv {
    fn execute(&mut self, op: &[u8]) -> Vec<u8> {
        encode(match serde_json::from_slice(op) {
            Ok(Request::Put { key, value }) => Ok(self.0.insert(key, value)),
            Ok(Request::Get { key }) => Ok(self.0.get(&key).cloned()),
            Err(e) => Err(e.to_string()), // never panic on a client's bytes
        })
    }
    fn query(&self, op: &[u8]) -> Vec<u8> {
        encode(match serde_json::from_slice(op) {
            Ok(Request::Get { key }) => Ok(self.0.get(&key).cloned()),
            _ => Err("only a get runs unordered".into()),
        })
    }
    fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(&self.0).expect("a map serializes")
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.0 = serde_json::from_slice(snapshot).map_err(|e| e.to_string())?;
        Ok(())
    }
}

const USAGE: &str = "usage: kv replica <config> <id> [--new-cluster] | put <config> <key> <value> | get <config> <key>";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let config = ClusterConfig::load(args.get(1).ok_or(USAGE)?.as_ref())?;
    let request = match args[..] {
        ["replica", _, id, ref flags @ ..] => {
            let id: u32 = id.parse()?;
            let key = IdentityKey::load(&config.directory.join(format!("replica-{id}.key")))?;
            let start = match flags {
                ["--new-cluster"] => EmptyStart::NewCluster, // a new cluster's first start only
                _ => EmptyStart::Rejoin,
            };
            let replica = Replica::builder(&config, id, key)
                .service(Kv::default())
                .data_dir(config.directory.join(format!("kv-data-{id}")))
                .empty_start(start)
                .start()
                .await?;
            println!("replica {id} running; Ctrl-C stops it");
            tokio::select! { stop = tokio::signal::ctrl_c() => stop?, failed = replica.closed() => failed? }
            replica.shutdown().await;
            return Ok(());
        }
        ["put", _, k, v] => Request::Put {
            key: k.into(),
            value: v.into(),
        },
        ["get", _, key] => Request::Get { key: key.into() },
        _ => return Err(USAGE.into()),
    };
    let key = IdentityKey::load(&config.directory.join("client.key"))?;
    let client = Client::connect(&config, key).await?;
    let op = serde_json::to_vec(&request)?;
    let reply = match request {
        Request::Get { .. } => client.invoke_unordered(op).await?, // linearizable without ordering
        Request::Put { .. } => client.invoke(op).await?,
    };
    client.shutdown().await;
    let value: Option<String> = serde_json::from_slice::<Response>(&reply)??;
    println!("{}", value.as_deref().unwrap_or("(none)"));
    Ok(())
}
