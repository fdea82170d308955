//! `smr keygen`: identity keys and a cluster config for replicas on this machine.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};

use smr_core::cluster::{ClusterConfig, ConfigError, ReplicaEntry};
use smr_core::{ClientPolicy, Limits, ReplicaId, Timeouts};
use smr_crypto::{IdentityKey, KeyFileError};
use smr_modes::{Mode, QuorumError, Quorums};

/// The config file name `smr keygen` writes and `smr cluster` uses.
pub const CONFIG_FILE: &str = "cluster.toml";
/// The client key file `smr keygen` writes; `smr client` and `smr status` look for it next to
/// the config.
pub const CLIENT_KEY_FILE: &str = "client.key";
/// The administrator's key file `smr keygen` writes next to the client keys; `cluster.toml`
/// names its public key as `admin_key` (the key that will be allowed to change the membership;
/// nothing acts on it yet).
pub const ADMIN_KEY_FILE: &str = "admin.key";

/// What to generate.
#[derive(Clone, Debug)]
pub struct KeygenOptions {
    pub mode: Mode,
    pub replicas: usize,
    /// Faults tolerated; `None` means the most `replicas` allows in `mode`.
    pub f: Option<usize>,
    /// How many client keys to write (`client.key`, then `client-1.key`, ...), all admitted.
    pub clients: usize,
    /// Write `clients = "any"` instead of listing the client keys.
    pub clients_any: bool,
    /// Replace an existing `cluster.toml`.
    pub force: bool,
    /// The replicas' addresses, in id order; `None` picks free ports on 127.0.0.1.
    pub addresses: Option<Vec<SocketAddr>>,
    /// The limits written to the config.
    pub limits: Limits,
    /// The timeouts written to the config.
    pub timeouts: Timeouts,
}

impl KeygenOptions {
    pub fn new(mode: Mode, replicas: usize) -> KeygenOptions {
        KeygenOptions {
            mode,
            replicas,
            f: None,
            clients: 1,
            clients_any: false,
            force: false,
            addresses: None,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
        }
    }
}

/// What was written.
#[derive(Clone, Debug)]
pub struct Generated {
    pub config_path: PathBuf,
    pub config: ClusterConfig,
    /// Client key files, `client.key` first.
    pub client_keys: Vec<PathBuf>,
    /// The administrator's key file, `admin.key`; its public key is the config's `admin_key`.
    pub admin_key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    #[error("{0} already exists; pass --force to overwrite it (its keys will be replaced)")]
    ConfigExists(PathBuf),
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--replicas {replicas} --mode {mode}: {source}")]
    Quorums {
        replicas: usize,
        mode: Mode,
        source: QuorumError,
    },
    #[error("--replicas {replicas} is too few for {mode}: it needs at least {min}")]
    TooFewReplicas {
        replicas: usize,
        mode: Mode,
        min: usize,
    },
    #[error("--clients must be at least 1")]
    NoClients,
    #[error("--addresses lists {given} addresses for --replicas {replicas}; give one per replica")]
    AddressCount { given: usize, replicas: usize },
    #[error("--addresses lists {0} twice; give each replica its own address")]
    DuplicateAddress(SocketAddr),
    #[error("cannot find free UDP ports on 127.0.0.1: {0}")]
    Ports(std::io::Error),
    #[error(transparent)]
    Key(#[from] KeyFileError),
    #[error("the generated config does not load back (a bug): {0}")]
    Config(#[from] ConfigError),
}

/// The most faults `replicas` replicas tolerate in `mode` (BFT n >= 3f+1, CFT n >= 2f+1).
pub fn max_f(mode: Mode, replicas: usize) -> usize {
    let per_fault = match mode {
        Mode::Bft => 3,
        Mode::Cft => 2,
    };
    replicas.saturating_sub(1) / per_fault
}

/// `n` distinct UDP ports on 127.0.0.1 that were free a moment ago. All sockets are held until
/// every port is chosen, so the ports differ; another process may still take one before the
/// replica binds it (the caller retries on a bind failure).
pub fn free_udp_ports(n: usize) -> std::io::Result<Vec<SocketAddr>> {
    let sockets = (0..n)
        .map(|_| UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()?;
    sockets.iter().map(UdpSocket::local_addr).collect()
}

fn client_key_name(i: usize) -> String {
    if i == 0 {
        CLIENT_KEY_FILE.to_string()
    } else {
        format!("client-{i}.key")
    }
}

/// Writes `replica-<i>.key`, the client keys, `admin.key` and `cluster.toml` into `dir`
/// (created if needed), with the replicas on free 127.0.0.1 ports.
pub fn generate(dir: &Path, options: &KeygenOptions) -> Result<Generated, KeygenError> {
    let min = options.mode.min_replicas(0).max(1);
    if options.replicas < min {
        return Err(KeygenError::TooFewReplicas {
            replicas: options.replicas,
            mode: options.mode,
            min,
        });
    }
    if options.clients == 0 {
        return Err(KeygenError::NoClients);
    }
    if let Some(addresses) = &options.addresses {
        if addresses.len() != options.replicas {
            return Err(KeygenError::AddressCount {
                given: addresses.len(),
                replicas: options.replicas,
            });
        }
        let mut seen = BTreeSet::new();
        if let Some(dup) = addresses.iter().find(|a| !seen.insert(**a)) {
            return Err(KeygenError::DuplicateAddress(*dup));
        }
    }
    let f = options
        .f
        .unwrap_or_else(|| max_f(options.mode, options.replicas));
    let quorums =
        Quorums::new(options.mode, options.replicas, f).map_err(|source| KeygenError::Quorums {
            replicas: options.replicas,
            mode: options.mode,
            source,
        })?;
    std::fs::create_dir_all(dir).map_err(|source| KeygenError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let config_path = dir.join(CONFIG_FILE);
    if config_path.exists() && !options.force {
        return Err(KeygenError::ConfigExists(config_path));
    }
    let addresses = match &options.addresses {
        Some(addresses) => addresses.clone(),
        None => free_udp_ports(options.replicas).map_err(KeygenError::Ports)?,
    };
    let mut replicas = Vec::with_capacity(options.replicas);
    for (i, address) in addresses.into_iter().enumerate() {
        let key = IdentityKey::generate();
        let key_file = dir.join(format!("replica-{i}.key"));
        key.save(&key_file)?;
        replicas.push(ReplicaEntry {
            id: i as ReplicaId,
            address,
            public_key: key.public_key(),
            key_file: Some(key_file),
        });
    }
    let mut client_keys = Vec::new();
    let mut admitted = BTreeSet::new();
    for i in 0..options.clients {
        let key = IdentityKey::generate();
        let path = dir.join(client_key_name(i));
        key.save(&path)?;
        admitted.insert(key.public_key());
        client_keys.push(path);
    }
    let admin = IdentityKey::generate();
    let admin_key = dir.join(ADMIN_KEY_FILE);
    admin.save(&admin_key)?;
    let config = ClusterConfig {
        quorums,
        replicas,
        clients: if options.clients_any {
            ClientPolicy::Any
        } else {
            ClientPolicy::Allowed(admitted)
        },
        admin_key: Some(admin.public_key()),
        limits: options.limits.clone(),
        timeouts: options.timeouts.clone(),
        fsync: Default::default(),
        directory: dir.to_path_buf(),
    };
    let text = format!(
        "# Written by `smr keygen`. Replica i runs with `smr replica --config {CONFIG_FILE} --id i`;\n\
         # key_file paths are relative to this file. On several machines, every machine gets this\n\
         # file, machine i gets replica-<i>.key, and clients get a client key. admin.key is the\n\
         # administrator's (admin_key below): keep it off the replicas and the clients.\n{}",
        config.to_toml()
    );
    std::fs::write(&config_path, text).map_err(|source| KeygenError::Write {
        path: config_path.clone(),
        source,
    })?;
    // What we wrote must be exactly what replicas will read.
    let config = ClusterConfig::load(&config_path)?;
    Ok(Generated {
        config_path,
        config,
        client_keys,
        admin_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_f_is_the_largest_tolerated_fault_count() {
        assert_eq!(max_f(Mode::Bft, 4), 1);
        assert_eq!(max_f(Mode::Bft, 6), 1);
        assert_eq!(max_f(Mode::Bft, 7), 2);
        assert_eq!(max_f(Mode::Cft, 3), 1);
        assert_eq!(max_f(Mode::Cft, 5), 2);
        assert_eq!(max_f(Mode::Cft, 1), 0);
    }

    #[test]
    fn generated_config_loads_and_admits_exactly_its_client_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = KeygenOptions::new(Mode::Bft, 4);
        options.clients = 2;
        let generated = generate(dir.path(), &options).unwrap();
        let config = &generated.config;
        assert_eq!(config.quorums.n(), 4);
        assert_eq!(config.quorums.f(), 1);
        for r in &config.replicas {
            assert!(r.address.ip().is_loopback());
            let key = IdentityKey::load(r.key_file.as_ref().unwrap()).unwrap();
            assert_eq!(key.public_key(), r.public_key);
        }
        assert_eq!(generated.client_keys[0], dir.path().join("client.key"));
        let ClientPolicy::Allowed(admitted) = &config.clients else {
            panic!("clients must be listed");
        };
        assert_eq!(admitted.len(), 2);
        for path in &generated.client_keys {
            assert!(admitted.contains(&IdentityKey::load(path).unwrap().public_key()));
        }
        let text = std::fs::read_to_string(&generated.config_path).unwrap();
        assert!(text.contains("key_file = \"replica-3.key\""), "{text}");
    }

    #[test]
    fn admin_key_is_written_next_to_the_client_keys_and_named_in_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let generated = generate(dir.path(), &KeygenOptions::new(Mode::Cft, 3)).unwrap();
        assert_eq!(generated.admin_key, dir.path().join(ADMIN_KEY_FILE));
        let admin = IdentityKey::load(&generated.admin_key).unwrap();
        // `generated.config` was loaded back from the file written.
        assert_eq!(generated.config.admin_key, Some(admin.public_key()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&generated.admin_key)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn existing_config_is_not_overwritten_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = KeygenOptions::new(Mode::Cft, 3);
        let first = generate(dir.path(), &options).unwrap();
        let e = generate(dir.path(), &options).unwrap_err().to_string();
        assert!(e.contains("--force"), "{e}");
        let unchanged = ClusterConfig::load(&first.config_path).unwrap();
        assert_eq!(unchanged.replicas, first.config.replicas);
        options.force = true;
        let second = generate(dir.path(), &options).unwrap();
        assert_ne!(second.config.replicas, first.config.replicas);
    }

    #[test]
    fn too_large_f_is_refused_with_the_mode_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = KeygenOptions::new(Mode::Bft, 4);
        options.f = Some(2);
        let e = generate(dir.path(), &options).unwrap_err().to_string();
        assert!(e.contains("--replicas 4") && e.contains("bft"), "{e}");
        assert!(!dir.path().join(CONFIG_FILE).exists());
    }

    #[test]
    fn given_addresses_are_used_in_id_order_and_must_match_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let addresses: Vec<SocketAddr> = ["10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7001"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let mut options = KeygenOptions::new(Mode::Cft, 3);
        options.addresses = Some(addresses.clone());
        let generated = generate(dir.path(), &options).unwrap();
        let got: Vec<SocketAddr> = generated
            .config
            .replicas
            .iter()
            .map(|r| r.address)
            .collect();
        assert_eq!(got, addresses);

        options.addresses = Some(addresses[..2].to_vec());
        options.force = true;
        let e = generate(dir.path(), &options).unwrap_err().to_string();
        assert!(
            e.contains("2 addresses") && e.contains("--replicas 3"),
            "{e}"
        );
        options.addresses = Some(vec![addresses[0]; 3]);
        let e = generate(dir.path(), &options).unwrap_err().to_string();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn clients_any_admits_every_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = KeygenOptions::new(Mode::Cft, 3);
        options.clients_any = true;
        let generated = generate(dir.path(), &options).unwrap();
        assert_eq!(generated.config.clients, ClientPolicy::Any);
        assert!(dir.path().join(CLIENT_KEY_FILE).exists());
    }
}
