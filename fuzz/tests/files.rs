//! Fuzz targets for the files an operator hands a replica: key files, public keys in hex and
//! DER, and the cluster config (TOML).

use smr_core::cluster::ClusterConfig;
use smr_crypto::{public_key_from_der, public_key_to_der, IdentityKey, PublicKey};
use smr_fuzz::{run, seeds, AllocBudget, Target};

#[test]
fn key_files() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("key");
    run(Target {
        name: "key_files",
        known_open: &[],
        seeds: seeds::key_files(),
        default_iters: 3000,
        // Measured: at most 393 bytes (a 135-byte file), 97 beyond 4 per input byte.
        budget: AllocBudget {
            constant_bytes: 4 * 1024,
            per_input_byte: 4,
        },
        check: &|bytes| {
            std::fs::write(&path, bytes).expect("write the key file");
            if let Ok(key) = IdentityKey::load(&path) {
                key.public_key()
                    .check_ed25519()
                    .expect("a loaded key's public key is a valid ed25519 key");
            }
        },
    });
}

#[test]
fn public_keys() {
    let seeds: Vec<Vec<u8>> = (1..=3u8)
        .flat_map(|i| {
            let key = IdentityKey::from_seed([i; 32]).public_key();
            [key.to_hex().into_bytes(), public_key_to_der(&key)]
        })
        .collect();
    run(Target {
        name: "public_keys",
        known_open: &[],
        seeds,
        default_iters: 100000,
        // Measured: at most 404 bytes (a 202-byte input), 4 beyond 4 per input byte.
        budget: AllocBudget {
            constant_bytes: 1024,
            per_input_byte: 4,
        },
        check: &|bytes| {
            if let Ok(key) = PublicKey::from_hex(&String::from_utf8_lossy(bytes)) {
                let _ = key.check_ed25519();
            }
            if let Ok(key) = public_key_from_der(bytes) {
                let _ = key.check_ed25519();
            }
        },
    });
}

#[test]
fn cluster_config() {
    let dir = tempfile::tempdir().expect("a temp dir");
    run(Target {
        name: "cluster_config",
        known_open: &[],
        seeds: seeds::configs(),
        default_iters: 6000,
        // The TOML parser builds a document tree: measured at most 157 bytes allocated per byte
        // of text (85 KB for 543 bytes), 0.6 KB beyond 256 per byte.
        budget: AllocBudget {
            constant_bytes: 16 * 1024,
            per_input_byte: 256,
        },
        check: &|bytes| {
            let text = String::from_utf8_lossy(bytes);
            let Ok(config) = ClusterConfig::from_toml_str(&text, dir.path()) else {
                return;
            };
            for replica in &config.replicas {
                let engine = config
                    .engine_config(replica.id)
                    .expect("a parsed config yields each replica's engine config");
                engine
                    .validate()
                    .expect("a parsed config's engine config validates");
            }
            let again = ClusterConfig::from_toml_str(&config.to_toml(), dir.path())
                .expect("to_toml of a parsed config parses");
            assert_eq!(again.replicas, config.replicas);
            assert_eq!(again.limits, config.limits);
            assert_eq!(again.timeouts, config.timeouts);
        },
    });
}
