//! Fail-stop (issue 17 item 4): a replica whose storage, service or engine fails stops at once
//! and says why, so that a supervisor restarts it; it never lingers as a zombie that accepts
//! connections but takes no part.
//!
//! - a real `smr replica` process whose disk fills (a file-size limit, with SIGXFSZ ignored so
//!   the write fails with EFBIG) exits non-zero within seconds, naming the storage failure,
//!   while the rest of the cluster serves on;
//! - an embedded replica whose service panics resolves [`Replica::closed`] to the error.

mod common;

use std::time::{Duration, Instant};

use common::*;
use smr_core::Service;
use smr_crypto::IdentityKey;
use smr_demo::keygen::{self, KeygenOptions};
use smr_demo::local::{ClusterSetup, LocalCluster};
use smr_demo::{KvOp, KvReply, ServiceKind};
use smr_modes::Mode;
use smr_transport::{Client, EmptyStart, Replica, ReplicaError};

const TEST_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a failed replica may take to exit.
const EXIT_WITHIN: Duration = Duration::from_secs(5);

async fn put(client: &Client, key: String, value: Vec<u8>) {
    let op = KvOp::Put {
        key: key.into_bytes(),
        value,
    };
    let reply = client
        .invoke(op.encode())
        .await
        .unwrap_or_else(|e| panic!("put: {e}"));
    KvReply::decode(&reply).expect("a kv reply");
}

/// CFT n = 3, f = 1, kv service, data dirs. Replica 2 runs under `ulimit -f 128` (64 or
/// 128 KiB, by the shell's unit) with SIGXFSZ ignored, through a wrapper script given to the
/// cluster as its binary (so it starts with the others, and no restart is involved); 400 KB of
/// puts then cannot fit in its data dir. On the old code the engine task panicked inside tokio
/// and the process kept running (and accepting connections) until a signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_disk_fills_exits_non_zero_naming_the_storage_failure() {
    within(TEST_TIMEOUT, async {
        use std::os::unix::fs::PermissionsExt;
        init_tracing();
        let scripts = tempfile::tempdir().unwrap();
        let wrapper = scripts.path().join("smr-limited");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\ncase \" $* \" in *\" --id 2 \"*) ulimit -f 128; trap \"\" XFSZ;; esac\nexec '{SMR}' \"$@\"\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let options = KeygenOptions::new(Mode::Cft, 3);
        let setup = ClusterSetup {
            data_dirs: true,
            ..ClusterSetup::default()
        };
        let mut cluster = tokio::task::block_in_place(|| {
            LocalCluster::start_with(&wrapper, &options, ServiceKind::Kv, READY_TIMEOUT, false, &setup)
        })
        .expect("cluster starts");
        let client = client(&cluster, 0, Duration::from_secs(20)).await;
        let value = vec![7u8; 4000];
        let mut last_put = Instant::now();
        let mut exited = None;
        for i in 0..100 {
            put(&client, format!("key-{i}"), value.clone()).await;
            last_put = Instant::now();
            if let Some(status) = cluster.replica(2).unwrap().try_exit_status() {
                exited = Some((status, Instant::now()));
                break;
            }
        }
        // It must exit soon after the write that failed, and the cluster (f = 1) serves on.
        while exited.is_none() && last_put.elapsed() < EXIT_WITHIN {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if let Some(status) = cluster.replica(2).unwrap().try_exit_status() {
                exited = Some((status, Instant::now()));
            }
        }
        let text = std::fs::read_to_string(cluster.log_path(2)).unwrap_or_default();
        let Some((status, at)) = exited else {
            panic!(
                "the replica with a full disk still runs {EXIT_WITHIN:?} after the last put; its log:\n{text}"
            );
        };
        report!(
            "the limited replica exited ({status}) {:?} after the last put; its log ends:\n{}",
            at.saturating_duration_since(last_put),
            text.lines().rev().take(3).collect::<Vec<_>>().join("\n")
        );
        assert!(!status.success(), "exited with {status}; log:\n{text}");
        assert_eq!(status.code(), Some(2), "log:\n{text}");
        assert!(
            text.contains("storage failed, stopping the replica"),
            "the log does not name the storage failure:\n{text}"
        );
        assert!(
            text.contains("File too large") || text.contains("os error 27"),
            "the log does not give the I/O error:\n{text}"
        );
        for i in 100..110 {
            put(&client, format!("key-{i}"), value.clone()).await;
        }
        wait_agree(&client, &[0, 1], AGREE_TIMEOUT).await;
        client.shutdown().await;
    })
    .await;
}

/// Executes like the kv service, but panics on the operation `b"boom"`.
struct PanicsOnBoom(Box<dyn Service>);

impl Service for PanicsOnBoom {
    fn execute(&mut self, op: &[u8]) -> Vec<u8> {
        assert_ne!(op, b"boom", "the service refuses to go on");
        self.0.execute(op)
    }
    fn query(&self, op: &[u8]) -> Vec<u8> {
        self.0.query(op)
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.snapshot()
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.0.restore(snapshot)
    }
}

/// The embedding API: when the service of an embedded replica panics, [`Replica::closed`]
/// resolves to [`ReplicaError::Service`] with the panic's message, and the replicas whose
/// service did not panic keep running. On the old code the service thread died silently and
/// there was nothing to await.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_replica_whose_service_panics_resolves_closed_to_the_error() {
    within(TEST_TIMEOUT, async {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let generated =
            keygen::generate(dir.path(), &KeygenOptions::new(Mode::Cft, 3)).expect("keygen");
        let config = generated.config.clone();
        let mut replicas = Vec::new();
        for entry in &config.replicas {
            let key = IdentityKey::load(entry.key_file.as_ref().unwrap()).unwrap();
            let service: Box<dyn Service> = if entry.id == 1 {
                Box::new(PanicsOnBoom(ServiceKind::Kv.create()))
            } else {
                ServiceKind::Kv.create()
            };
            replicas.push(
                Replica::builder(&config, entry.id, key)
                    .boxed_service(service)
                    .empty_start(EmptyStart::NewCluster)
                    .start()
                    .await
                    .expect("replica starts"),
            );
        }
        let client_key = IdentityKey::load(&generated.client_keys[0]).unwrap();
        let client = Client::connect(&config, client_key)
            .await
            .unwrap()
            .with_timeout(Duration::from_secs(20));
        client
            .invoke(b"boom".to_vec())
            .await
            .expect("a quorum replies");
        let outcome = tokio::time::timeout(EXIT_WITHIN, replicas[1].closed())
            .await
            .expect("closed() resolves once the service panicked");
        match outcome {
            Err(ReplicaError::Service(reason)) => assert!(
                reason.contains("the service refuses to go on"),
                "the reason does not carry the panic's message: {reason}"
            ),
            other => panic!("expected a service failure, got {other:?}"),
        }
        // The others serve on; closed() stays pending for them.
        put(&client, "after".to_string(), b"x".to_vec()).await;
        for r in [0, 2] {
            assert!(
                tokio::time::timeout(Duration::from_millis(100), replicas[r].closed())
                    .await
                    .is_err(),
                "replica {r} stopped"
            );
        }
        client.shutdown().await;
        for replica in replicas {
            replica.shutdown().await;
        }
    })
    .await;
}
