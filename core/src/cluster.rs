//! The cluster configuration file (TOML): mode, f, the replicas, the client policy, limits and
//! timeouts. Every bad value is refused with an error that names the key and says how to fix it.
//!
//! ```toml
//! mode = "bft"            # or "cft"
//! f = 1
//! clients = "any"         # or a list of hex public keys
//! admin_key = "<64 hex chars>"  # optional; the administrator's public key (not used yet)
//! fsync = "always"        # optional; or "never" (survives process crashes, not power loss)
//!
//! [[replicas]]
//! id = 0
//! address = "127.0.0.1:7000"
//! public_key = "<64 hex chars>"
//! key_file = "replica-0.key"   # optional; relative to this file
//!
//! [limits]                # optional; defaults shown by `smr keygen`
//! max_batch_requests = 1024
//!
//! [timeouts]              # optional
//! request_timeout_ms = 1000
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use smr_crypto::{KeyError, PublicKey};
use smr_modes::{Mode, Quorums};

use crate::config::{
    ClientPolicy, EngineConfig, InvalidConfig, Limits, Timeouts, LIMIT_MAXIMA, MAX_TIMEOUT_MS,
};
use crate::message::ReplicaId;
use crate::storage::FsyncPolicy;
use crate::view::MAX_MEMBERS;

/// Why a cluster configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A value is missing, malformed or breaks a rule.
    #[error("config {path}: {message}")]
    Invalid {
        /// Where: the key (`limits.max_batch_bytes`, `replicas[2].address`, `syntax`, ...),
        /// prefixed by the file's path when loaded from a file.
        path: String,
        /// What is wrong, and how to fix it.
        message: String,
    },
}

fn invalid(path: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_string(),
        message: message.into(),
    }
}

/// One `[[replicas]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaEntry {
    /// The replica's id, `0..n`, unique.
    pub id: ReplicaId,
    /// Where it listens (ip:port, UDP for QUIC), unique.
    pub address: SocketAddr,
    /// Its ed25519 identity key, pinned by every peer (docs/design.md §6); unique, and no
    /// client's.
    pub public_key: PublicKey,
    /// The replica's secret key file, if the config names it (resolved against the config's
    /// directory).
    pub key_file: Option<PathBuf>,
}

/// A validated cluster configuration.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The mode, n (the number of entries) and f, checked against each other
    /// (docs/design.md §3.2).
    pub quorums: Quorums,
    /// Sorted by id; `replicas[i].id == i`.
    pub replicas: Vec<ReplicaEntry>,
    /// `clients`: any key, or the listed ones.
    pub clients: ClientPolicy,
    /// `admin_key`: the administrator's public key, the key that will be allowed to change the
    /// membership (add or remove a replica, change f; issue 14). Nothing acts on it yet: no
    /// membership change is accepted, with or without it. It is never a replica's key nor a
    /// listed client's, and `smr keygen` writes its secret to `admin.key`.
    pub admin_key: Option<PublicKey>,
    /// `[limits]`, each missing key at its default.
    pub limits: Limits,
    /// `[timeouts]`, each missing key at its default.
    pub timeouts: Timeouts,
    /// When a replica's write-ahead log reaches the disk (with `--data-dir`).
    pub fsync: FsyncPolicy,
    /// Where the file was read from, for resolving relative paths.
    pub directory: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    mode: Option<String>,
    f: Option<i64>,
    clients: Option<toml::Value>,
    admin_key: Option<String>,
    fsync: Option<String>,
    #[serde(default)]
    replicas: Vec<RawReplica>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    timeouts: RawTimeouts,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplica {
    id: Option<i64>,
    address: Option<String>,
    public_key: Option<String>,
    key_file: Option<String>,
}

/// Every limit and timeout is optional in the file; missing ones take the defaults.
#[derive(Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_batch_requests: Option<u64>,
    max_batch_bytes: Option<u64>,
    max_op_bytes: Option<u64>,
    max_pending_per_client: Option<u64>,
    max_pending_total: Option<u64>,
    max_instances_in_flight: Option<u64>,
    max_instances_ahead: Option<u64>,
    max_decisions_per_reply: Option<u64>,
    max_log_entries: Option<u64>,
    checkpoint_period: Option<u64>,
    max_state_bytes: Option<u64>,
    state_chunk_bytes: Option<u64>,
    max_clients: Option<u64>,
    max_client_reply_bytes: Option<u64>,
    max_reply_cache_bytes: Option<u64>,
    client_expiry_cids: Option<u64>,
    max_sessions_per_client: Option<u64>,
}

#[derive(Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    request_timeout_ms: Option<u64>,
    retransmit_initial_ms: Option<u64>,
    retransmit_max_ms: Option<u64>,
    heartbeat_ms: Option<u64>,
}

/// The file's key an engine rule is about, for the error's path.
fn invalid_config_key(e: &InvalidConfig) -> &'static str {
    match e {
        InvalidConfig::ReplicaKeyCount { .. } | InvalidConfig::IdOutOfRange { .. } => "replicas",
        InvalidConfig::ClientsAboveMaxClients { .. } => "clients",
        InvalidConfig::TimeoutNotPositive { .. }
        | InvalidConfig::TimeoutTooLong { .. }
        | InvalidConfig::RetransmitMaxBelowInitial { .. } => "timeouts",
        _ => "limits",
    }
}

/// A public key from the file: 64 hex characters that are a valid ed25519 key (canonical, not
/// of small order, no torsion component; [`PublicKey::from_hex`]). A placeholder such as the
/// identity point `0100…00` is refused: anyone can sign for it, and in CFT the key is all that
/// authenticates a replica.
fn parse_key(path: &str, text: &str) -> Result<PublicKey, ConfigError> {
    PublicKey::from_hex(text).map_err(|e| {
        let fix = match e {
            KeyError::BadHex | KeyError::WrongLength { .. } => {
                "expected 64 hex characters, as `smr keygen` writes them"
            }
            _ => "use the public key `smr keygen` printed for this identity",
        };
        invalid(path, format!("{e}; {fix}"))
    })
}

fn positive(path: &str, value: Option<u64>, default: u64) -> Result<u64, ConfigError> {
    match value {
        None => Ok(default),
        Some(0) => Err(invalid(
            path,
            "must be at least 1; remove the key to use the default",
        )),
        Some(v) => Ok(v),
    }
}

/// [`positive`], for a limit held as a `usize`: refused, not truncated, if it does not fit.
fn positive_usize(path: &str, value: Option<u64>, default: usize) -> Result<usize, ConfigError> {
    let v = positive(path, value, default as u64)?;
    usize::try_from(v).map_err(|_| invalid(path, format!("{v} is too large for this machine")))
}

impl ClusterConfig {
    /// Reads and validates the TOML file at `path`; relative `key_file`s resolve against its
    /// directory.
    ///
    /// # Errors
    /// [`ConfigError::Unreadable`] if the file cannot be read; [`ConfigError::Invalid`], its
    /// `path` naming the file and the key, for the first bad value (see
    /// [`ClusterConfig::from_toml_str`]).
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
        let directory = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Self::from_toml_str(&text, &directory).map_err(|e| match e {
            ConfigError::Invalid { path: key, message } => ConfigError::Invalid {
                path: format!("{} ({key})", path.display()),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates a config's text, resolving relative `key_file`s against
    /// `directory`.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key of the first problem: bad TOML or an unknown
    /// key, a missing `mode`, `f`, `clients` or `[[replicas]]`, more replicas than a view
    /// may hold ([`MAX_MEMBERS`]), an (n, f) the mode does not allow, a replica id out of
    /// `0..n` or repeated, an address or public key used twice or unparsable, a client key
    /// that is a replica's, a limit or timeout of 0,
    /// `max_instances_ahead` below `max_instances_in_flight`, `max_op_bytes` above
    /// `max_batch_bytes`, `retransmit_max_ms` below `retransmit_initial_ms`, an unknown
    /// `fsync` value, an unparsable `admin_key` or one that is a replica's or a listed
    /// client's.
    pub fn from_toml_str(text: &str, directory: &Path) -> Result<ClusterConfig, ConfigError> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| invalid("syntax", e.to_string().trim().to_string()))?;
        let mode: Mode = match raw.mode.as_deref() {
            None => {
                return Err(invalid(
                    "mode",
                    "missing; add mode = \"bft\" or mode = \"cft\"",
                ))
            }
            Some(m) => m.parse().map_err(|e| invalid("mode", format!("{e}")))?,
        };
        let f = match raw.f {
            None => {
                return Err(invalid(
                    "f",
                    "missing; add f = <faults tolerated>, e.g. f = 1",
                ))
            }
            Some(f) if f < 0 => return Err(invalid("f", "must not be negative")),
            // Any f that fits is then checked against n by `Quorums::new` (saturating).
            Some(f) => usize::try_from(f)
                .map_err(|_| invalid("f", format!("{f} is too large for this machine")))?,
        };
        if raw.replicas.is_empty() {
            return Err(invalid(
                "replicas",
                "no [[replicas]] entries; add one per replica",
            ));
        }
        if raw.replicas.len() > MAX_MEMBERS {
            return Err(invalid(
                "replicas",
                format!(
                    "{} entries; a cluster may have at most {MAX_MEMBERS} replicas",
                    raw.replicas.len()
                ),
            ));
        }
        let quorums = Quorums::new(mode, raw.replicas.len(), f)
            .map_err(|e| invalid("replicas", e.to_string()))?;
        let mut by_id = BTreeMap::new();
        let mut addresses = BTreeSet::new();
        let mut keys = BTreeSet::new();
        for (i, r) in raw.replicas.iter().enumerate() {
            let at = |key: &str| format!("replicas[{i}].{key}");
            let id = r.id.ok_or_else(|| invalid(&at("id"), "missing"))?;
            if id < 0 || id as usize >= raw.replicas.len() {
                return Err(invalid(
                    &at("id"),
                    format!(
                        "{id} is out of range; ids must be 0..{} (one per replica)",
                        raw.replicas.len()
                    ),
                ));
            }
            let address: SocketAddr = r
                .address
                .as_deref()
                .ok_or_else(|| {
                    invalid(&at("address"), "missing; e.g. address = \"127.0.0.1:7000\"")
                })?
                .parse()
                .map_err(|e| {
                    invalid(
                        &at("address"),
                        format!("{e}; use ip:port, e.g. \"127.0.0.1:7000\""),
                    )
                })?;
            let public_key = parse_key(
                &at("public_key"),
                r.public_key
                    .as_deref()
                    .ok_or_else(|| invalid(&at("public_key"), "missing; `smr keygen` writes it"))?,
            )?;
            if !addresses.insert(address) {
                return Err(invalid(
                    &at("address"),
                    format!("{address} is used by two replicas; give each its own"),
                ));
            }
            if !keys.insert(public_key) {
                return Err(invalid(
                    &at("public_key"),
                    "used by two replicas; each needs its own key",
                ));
            }
            let entry = ReplicaEntry {
                id: id as ReplicaId,
                address,
                public_key,
                key_file: r.key_file.as_ref().map(|p| directory.join(p)),
            };
            if by_id.insert(id as ReplicaId, entry).is_some() {
                return Err(invalid(
                    &at("id"),
                    format!("id {id} appears twice; ids must be unique"),
                ));
            }
        }
        let replicas: Vec<ReplicaEntry> = by_id.into_values().collect();
        let clients = match raw.clients {
            None => {
                return Err(invalid(
                    "clients",
                    "missing; list the client public keys, or set clients = \"any\" for open benchmarking",
                ))
            }
            Some(toml::Value::String(s)) if s == "any" => ClientPolicy::Any,
            Some(toml::Value::Array(items)) => {
                let mut allowed = BTreeSet::new();
                for (i, item) in items.iter().enumerate() {
                    let at = format!("clients[{i}]");
                    let key = parse_key(
                        &at,
                        item.as_str()
                            .ok_or_else(|| invalid(&at, "must be a hex public key string"))?,
                    )?;
                    if keys.contains(&key) {
                        return Err(invalid(&format!("clients[{i}]"), "is a replica's key; clients need their own"));
                    }
                    allowed.insert(key);
                }
                ClientPolicy::Allowed(allowed)
            }
            Some(_) => {
                return Err(invalid("clients", "must be \"any\" or a list of hex public keys"));
            }
        };
        let admin_key = match raw.admin_key.as_deref() {
            None => None,
            Some(text) => {
                let key = parse_key("admin_key", text)?;
                if let Some(r) = replicas.iter().find(|r| r.public_key == key) {
                    return Err(invalid(
                        "admin_key",
                        format!(
                            "is replica {}'s public key; the administrator needs a key of its \
                             own, or whoever holds that replica's key could change the \
                             membership (`smr key --out admin.key` makes one)",
                            r.id
                        ),
                    ));
                }
                if let ClientPolicy::Allowed(allowed) = &clients {
                    if allowed.contains(&key) {
                        return Err(invalid(
                            "admin_key",
                            "is a listed client's public key; the administrator needs a key of \
                             its own, or whoever holds that client's key could change the \
                             membership (`smr key --out admin.key` makes one)",
                        ));
                    }
                }
                Some(key)
            }
        };
        let d = Limits::default();
        let l = &raw.limits;
        // Bounded before anything computes with them or converts them to usize (issue 12,
        // item 3: checkpoint_period = 2^63 - 1 parsed and then overflowed `4 * period`).
        let given = [
            l.max_batch_requests,
            l.max_batch_bytes,
            l.max_op_bytes,
            l.max_pending_per_client,
            l.max_pending_total,
            l.max_instances_in_flight,
            l.max_instances_ahead,
            l.max_decisions_per_reply,
            l.max_log_entries,
            l.checkpoint_period,
            l.max_state_bytes,
            l.state_chunk_bytes,
            l.max_clients,
            l.max_client_reply_bytes,
            l.max_reply_cache_bytes,
            l.client_expiry_cids,
            l.max_sessions_per_client,
        ];
        for ((name, max), value) in LIMIT_MAXIMA.into_iter().zip(given) {
            if let Some(value) = value.filter(|v| *v > max) {
                return Err(invalid(
                    &format!("limits.{name}"),
                    format!("is {value}; it may be at most {max}"),
                ));
            }
        }
        let limits = Limits {
            max_batch_requests: positive_usize(
                "limits.max_batch_requests",
                l.max_batch_requests,
                d.max_batch_requests,
            )?,
            max_batch_bytes: positive_usize(
                "limits.max_batch_bytes",
                l.max_batch_bytes,
                d.max_batch_bytes,
            )?,
            max_op_bytes: positive_usize("limits.max_op_bytes", l.max_op_bytes, d.max_op_bytes)?,
            max_pending_per_client: positive_usize(
                "limits.max_pending_per_client",
                l.max_pending_per_client,
                d.max_pending_per_client,
            )?,
            max_pending_total: positive_usize(
                "limits.max_pending_total",
                l.max_pending_total,
                d.max_pending_total,
            )?,
            max_instances_in_flight: positive(
                "limits.max_instances_in_flight",
                l.max_instances_in_flight,
                d.max_instances_in_flight,
            )?,
            max_instances_ahead: positive(
                "limits.max_instances_ahead",
                l.max_instances_ahead,
                d.max_instances_ahead,
            )?,
            max_decisions_per_reply: positive_usize(
                "limits.max_decisions_per_reply",
                l.max_decisions_per_reply,
                d.max_decisions_per_reply,
            )?,
            max_log_entries: positive_usize(
                "limits.max_log_entries",
                l.max_log_entries,
                d.max_log_entries,
            )?,
            checkpoint_period: positive(
                "limits.checkpoint_period",
                l.checkpoint_period,
                d.checkpoint_period,
            )?,
            max_state_bytes: positive(
                "limits.max_state_bytes",
                l.max_state_bytes,
                d.max_state_bytes,
            )?,
            state_chunk_bytes: positive_usize(
                "limits.state_chunk_bytes",
                l.state_chunk_bytes,
                d.state_chunk_bytes,
            )?,
            max_clients: positive("limits.max_clients", l.max_clients, d.max_clients)?,
            max_client_reply_bytes: positive(
                "limits.max_client_reply_bytes",
                l.max_client_reply_bytes,
                d.max_client_reply_bytes,
            )?,
            max_reply_cache_bytes: positive(
                "limits.max_reply_cache_bytes",
                l.max_reply_cache_bytes,
                d.max_reply_cache_bytes,
            )?,
            client_expiry_cids: positive(
                "limits.client_expiry_cids",
                l.client_expiry_cids,
                d.client_expiry_cids,
            )?,
            max_sessions_per_client: positive(
                "limits.max_sessions_per_client",
                l.max_sessions_per_client,
                d.max_sessions_per_client,
            )?,
        };
        if limits.max_instances_ahead < limits.max_instances_in_flight {
            return Err(invalid(
                "limits.max_instances_ahead",
                "must be at least limits.max_instances_in_flight",
            ));
        }
        if limits.max_op_bytes > limits.max_batch_bytes {
            return Err(invalid(
                "limits.max_op_bytes",
                "must not exceed limits.max_batch_bytes",
            ));
        }
        let (message, bytes) = crate::frame_limits::MessageBounds::new(&quorums, &limits).largest();
        if bytes > crate::frame_limits::MAX_FRAME_BYTES {
            return Err(invalid(
                "limits",
                format!(
                    "the largest {message} these limits allow at n = {} is {bytes} bytes, above the {} bytes a frame can carry; lower limits.max_batch_bytes, limits.max_batch_requests, limits.max_op_bytes, limits.max_instances_ahead or limits.max_decisions_per_reply",
                    quorums.n(),
                    crate::frame_limits::MAX_FRAME_BYTES
                ),
            ));
        }
        // The same for what a replica persists: a record its log cannot take stops it.
        crate::config::check_records_fit(
            &quorums,
            &limits,
            crate::storage::MAX_RECORD_BYTES as u64,
        )
        .map_err(|e| invalid("limits", format!("at n = {}, {e}", quorums.n())))?;
        let d = Timeouts::default();
        let t = &raw.timeouts;
        let timeouts = Timeouts {
            request_timeout_ms: positive(
                "timeouts.request_timeout_ms",
                t.request_timeout_ms,
                d.request_timeout_ms,
            )?,
            retransmit_initial_ms: positive(
                "timeouts.retransmit_initial_ms",
                t.retransmit_initial_ms,
                d.retransmit_initial_ms,
            )?,
            retransmit_max_ms: positive(
                "timeouts.retransmit_max_ms",
                t.retransmit_max_ms,
                d.retransmit_max_ms,
            )?,
            heartbeat_ms: positive("timeouts.heartbeat_ms", t.heartbeat_ms, d.heartbeat_ms)?,
        };
        for (key, ms) in [
            ("timeouts.request_timeout_ms", timeouts.request_timeout_ms),
            (
                "timeouts.retransmit_initial_ms",
                timeouts.retransmit_initial_ms,
            ),
            ("timeouts.retransmit_max_ms", timeouts.retransmit_max_ms),
            ("timeouts.heartbeat_ms", timeouts.heartbeat_ms),
        ] {
            if ms > MAX_TIMEOUT_MS {
                return Err(invalid(
                    key,
                    format!("is {ms} ms; it may be at most {MAX_TIMEOUT_MS} ms (one day)"),
                ));
            }
        }
        if timeouts.retransmit_max_ms < timeouts.retransmit_initial_ms {
            return Err(invalid(
                "timeouts.retransmit_max_ms",
                "must be at least timeouts.retransmit_initial_ms",
            ));
        }
        let fsync = match raw.fsync.as_deref() {
            None => FsyncPolicy::default(),
            Some(v) => v.parse().map_err(|e| invalid("fsync", format!("{e}")))?,
        };
        let config = ClusterConfig {
            quorums,
            replicas,
            clients,
            admin_key,
            limits,
            timeouts,
            fsync,
            directory: directory.to_path_buf(),
        };
        // Every rule the engine relies on (relations between limits, bounds on each), with
        // the engine's message; the friendlier checks above catch the common mistakes first.
        config
            .engine_config(0)?
            .validate()
            .map_err(|e| invalid(invalid_config_key(&e), e.to_string()))?;
        Ok(config)
    }

    /// BFT or CFT.
    pub fn mode(&self) -> Mode {
        self.quorums.mode()
    }

    /// Every replica's public key, replica i's at index i.
    pub fn replica_keys(&self) -> Vec<PublicKey> {
        self.replicas.iter().map(|r| r.public_key).collect()
    }

    /// The engine configuration for replica `me`.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] (key `--id`) if `me` is not a replica of this config.
    pub fn engine_config(&self, me: ReplicaId) -> Result<EngineConfig, ConfigError> {
        if me as usize >= self.replicas.len() {
            return Err(invalid(
                "--id",
                format!(
                    "replica {me} is not in the config; ids are 0..{}",
                    self.replicas.len()
                ),
            ));
        }
        Ok(EngineConfig {
            quorums: self.quorums,
            me,
            replica_keys: self.replica_keys(),
            clients: self.clients.clone(),
            limits: self.limits.clone(),
            timeouts: self.timeouts.clone(),
        })
    }

    /// Renders a config file for these settings (what `smr keygen` writes).
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "mode = \"{}\"\nf = {}\n",
            self.mode(),
            self.quorums.f()
        ));
        out.push_str(&format!(
            "# \"always\" survives power loss; \"never\" survives only process crashes\nfsync = \"{}\"\n",
            self.fsync
        ));
        match &self.clients {
            ClientPolicy::Any => out.push_str("clients = \"any\"\n"),
            ClientPolicy::Allowed(keys) => {
                out.push_str("clients = [\n");
                for k in keys {
                    out.push_str(&format!("  \"{}\",\n", k.to_hex()));
                }
                out.push_str("]\n");
            }
        }
        if let Some(key) = &self.admin_key {
            out.push_str(&format!(
                "# the administrator's public key: will be allowed to change the membership (not yet)\nadmin_key = \"{}\"\n",
                key.to_hex()
            ));
        }
        for r in &self.replicas {
            out.push_str(&format!(
                "\n[[replicas]]\nid = {}\naddress = \"{}\"\npublic_key = \"{}\"\n",
                r.id,
                r.address,
                r.public_key.to_hex()
            ));
            if let Some(k) = &r.key_file {
                let rel = k.strip_prefix(&self.directory).unwrap_or(k);
                out.push_str(&format!("key_file = \"{}\"\n", rel.display()));
            }
        }
        let l = &self.limits;
        out.push_str(&format!(
            "\n[limits]\nmax_batch_requests = {}\nmax_batch_bytes = {}\nmax_op_bytes = {}\nmax_pending_per_client = {}\nmax_pending_total = {}\nmax_instances_in_flight = {}\nmax_instances_ahead = {}\nmax_decisions_per_reply = {}\nmax_log_entries = {}\ncheckpoint_period = {}\nmax_state_bytes = {}\nstate_chunk_bytes = {}\nmax_clients = {}\nmax_client_reply_bytes = {}\nmax_reply_cache_bytes = {}\nclient_expiry_cids = {}\nmax_sessions_per_client = {}\n",
            l.max_batch_requests, l.max_batch_bytes, l.max_op_bytes, l.max_pending_per_client, l.max_pending_total,
            l.max_instances_in_flight, l.max_instances_ahead, l.max_decisions_per_reply, l.max_log_entries,
            l.checkpoint_period, l.max_state_bytes, l.state_chunk_bytes, l.max_clients,
            l.max_client_reply_bytes, l.max_reply_cache_bytes, l.client_expiry_cids,
            l.max_sessions_per_client
        ));
        let t = &self.timeouts;
        out.push_str(&format!(
            "\n[timeouts]\nrequest_timeout_ms = {}\nretransmit_initial_ms = {}\nretransmit_max_ms = {}\nheartbeat_ms = {}\n",
            t.request_timeout_ms, t.retransmit_initial_ms, t.retransmit_max_ms, t.heartbeat_ms
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    const KEY_B: &str = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c";
    const KEY_C: &str = "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025";
    const KEY_D: &str = "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e";
    /// IdentityKey::from_seed([5; 32])'s public key.
    const KEY_E: &str = "6e7a1cdd29b0b78fd13af4c5598feff4ef2a97166e3ca6f2e4fbfccd80505bf1";

    fn replicas(n: usize) -> String {
        let keys = [KEY_A, KEY_B, KEY_C, KEY_D];
        (0..n)
            .map(|i| {
                format!(
                    "[[replicas]]\nid = {i}\naddress = \"127.0.0.1:{}\"\npublic_key = \"{}\"\n",
                    7000 + i,
                    keys[i]
                )
            })
            .collect()
    }

    fn parse(text: &str) -> Result<ClusterConfig, ConfigError> {
        ClusterConfig::from_toml_str(text, Path::new("/tmp"))
    }

    fn error(text: &str) -> String {
        parse(text).expect_err("config must be refused").to_string()
    }

    #[test]
    fn valid_config_round_trips_through_to_toml() {
        let text = format!("mode = \"bft\"\nf = 1\nclients = \"any\"\n{}", replicas(4));
        let config = parse(&text).unwrap();
        assert_eq!(config.quorums.n(), 4);
        assert_eq!(config.limits, Limits::default());
        let again = parse(&config.to_toml()).unwrap();
        assert_eq!(again.replicas, config.replicas);
        assert_eq!(again.limits, config.limits);
        assert_eq!(again.timeouts, config.timeouts);
    }

    #[test]
    fn admin_key_round_trips_through_to_toml() {
        let text = format!(
            "mode = \"cft\"\nf = 1\nclients = [\"{KEY_D}\"]\nadmin_key = \"{KEY_E}\"\n{}",
            replicas(3)
        );
        let config = parse(&text).unwrap();
        let admin = PublicKey::from_hex(KEY_E).unwrap();
        assert_eq!(config.admin_key, Some(admin));
        let written = config.to_toml();
        assert!(
            written.contains(&format!("\nadmin_key = \"{KEY_E}\"\n")),
            "{written}"
        );
        let again = parse(&written).unwrap();
        assert_eq!(again.admin_key, Some(admin));
        assert_eq!(again.replicas, config.replicas);
        assert_eq!(again.clients, config.clients);
        // Optional: a config without it has none, and writes none back.
        let config = parse(&format!(
            "mode = \"cft\"\nf = 1\nclients = \"any\"\n{}",
            replicas(3)
        ))
        .unwrap();
        assert_eq!(config.admin_key, None);
        let written = config.to_toml();
        assert!(!written.contains("admin_key"), "{written}");
        assert_eq!(parse(&written).unwrap().admin_key, None);
    }

    #[test]
    fn bad_admin_keys_are_refused_naming_admin_key_and_saying_why() {
        let with_admin = |clients: &str, admin: &str| {
            error(&format!(
                "mode = \"cft\"\nf = 1\nclients = {clients}\nadmin_key = \"{admin}\"\n{}",
                replicas(3)
            ))
        };
        assert_eq!(
            with_admin("\"any\"", "zz"),
            "config admin_key: key is not valid hex (expected only the characters 0-9 and a-f); \
             expected 64 hex characters, as `smr keygen` writes them"
        );
        assert_eq!(
            with_admin("\"any\"", SMALL_ORDER_KEYS[0]),
            "config admin_key: key is a weak (small-order) ed25519 point: it proves nothing, \
             anyone can sign for it; use the public key `smr keygen` printed for this identity"
        );
        assert_eq!(
            with_admin("\"any\"", KEY_C),
            "config admin_key: is replica 2's public key; the administrator needs a key of its \
             own, or whoever holds that replica's key could change the membership (`smr key \
             --out admin.key` makes one)"
        );
        assert_eq!(
            with_admin(&format!("[\"{KEY_E}\", \"{KEY_D}\"]"), KEY_D),
            "config admin_key: is a listed client's public key; the administrator needs a key \
             of its own, or whoever holds that client's key could change the membership (`smr \
             key --out admin.key` makes one)"
        );
        let e = error(&format!(
            "mode = \"cft\"\nf = 1\nclients = \"any\"\nadmin_key = 7\n{}",
            replicas(3)
        ));
        assert!(
            e.starts_with("config syntax:") && e.contains("admin_key"),
            "{e}"
        );
    }

    #[test]
    fn numeric_keys_beyond_their_bounds_are_refused_naming_the_key() {
        // Issue 12 item 3: checkpoint_period = 2^63 - 1 was accepted, then overflowed
        // `4 * period` in the engine. Every numeric key is bounded where it is parsed.
        let base = format!("mode = \"bft\"\nf = 1\nclients = \"any\"\n{}", replicas(4));
        let e = error(&format!(
            "{base}[limits]\ncheckpoint_period = 9223372036854775807\nmax_log_entries = 9223372036854775807\n"
        ));
        assert_eq!(
            e,
            "config limits.max_log_entries: is 9223372036854775807; it may be at most 1073741824"
        );
        let e = error(&format!(
            "{base}[limits]\ncheckpoint_period = 9223372036854775807\n"
        ));
        assert_eq!(
            e,
            "config limits.checkpoint_period: is 9223372036854775807; it may be at most 1073741824"
        );
        for (name, max) in LIMIT_MAXIMA {
            let e = error(&format!("{base}[limits]\n{name} = {}\n", max + 1));
            assert!(e.starts_with(&format!("config limits.{name}: is")), "{e}");
        }
        let e = error(&format!(
            "{base}[timeouts]\nheartbeat_ms = 9223372036854775807\n"
        ));
        assert_eq!(
            e,
            "config timeouts.heartbeat_ms: is 9223372036854775807 ms; it may be at most 86400000 ms (one day)"
        );
    }

    #[test]
    fn unknown_mode_names_the_valid_ones() {
        let e = error(&format!(
            "mode = \"raft\"\nf = 1\nclients = \"any\"\n{}",
            replicas(4)
        ));
        assert!(
            e.contains("mode") && e.contains("bft") && e.contains("cft"),
            "{e}"
        );
    }

    #[test]
    fn too_few_replicas_for_f_is_refused_with_the_fix() {
        let e = error(&format!(
            "mode = \"bft\"\nf = 1\nclients = \"any\"\n{}",
            replicas(3)
        ));
        assert!(
            e.contains("replicas") && e.contains("add replicas or lower f"),
            "{e}"
        );
    }

    /// A view holds at most `view::MAX_MEMBERS` replicas, and view 0 is this file's.
    #[test]
    fn more_replicas_than_a_view_may_hold_are_refused() {
        let text: String =
            (0..=MAX_MEMBERS as u32)
                .map(|i| {
                    let mut seed = [7; 32];
                    seed[..4].copy_from_slice(&i.to_le_bytes());
                    format!(
                    "[[replicas]]\nid = {i}\naddress = \"10.0.{}.{}:7000\"\npublic_key = \"{}\"\n",
                    i / 256,
                    i % 256,
                    smr_crypto::IdentityKey::from_seed(seed).public_key().to_hex()
                )
                })
                .collect();
        let e = error(&format!("mode = \"cft\"\nf = 1\nclients = \"any\"\n{text}"));
        assert_eq!(
            e,
            "config replicas: 1025 entries; a cluster may have at most 1024 replicas"
        );
    }

    #[test]
    fn duplicate_address_is_refused() {
        let text = format!("mode = \"cft\"\nf = 1\nclients = \"any\"\n{}", replicas(3))
            .replace("127.0.0.1:7001", "127.0.0.1:7000");
        let e = error(&text);
        assert!(
            e.contains("replicas[1].address") && e.contains("two replicas"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_id_is_refused() {
        let text = format!("mode = \"cft\"\nf = 1\nclients = \"any\"\n{}", replicas(3))
            .replace("id = 1", "id = 0");
        let e = error(&text);
        assert!(e.contains("replicas[1].id") && e.contains("twice"), "{e}");
    }

    #[test]
    fn bad_public_key_is_refused() {
        let text = format!("mode = \"cft\"\nf = 1\nclients = \"any\"\n{}", replicas(3))
            .replace(KEY_B, "zz");
        let e = error(&text);
        assert!(e.contains("replicas[1].public_key"), "{e}");
    }

    /// KEY_C + (0, -1): on the curve, not of small order, but with a torsion component.
    const MIXED_ORDER_KEY: &str =
        "f1ad32719de75e5c725b812ffdcf0fa7f7e912ec45ccfc53a2146eeab76f7fda";

    /// The canonical encodings of the eight points of small order (the curve's torsion
    /// subgroup; smr-crypto derives the same list from the curve), the identity first.
    const SMALL_ORDER_KEYS: [&str; 8] = [
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    ];

    /// Issue 12, item 7: `0100…00` (the identity point) was accepted as a replica key, and TLS
    /// then accepted a handshake signed with no secret under it.
    #[test]
    fn small_order_replica_keys_are_refused_with_the_reason() {
        for (i, weak) in SMALL_ORDER_KEYS.iter().enumerate() {
            let text = format!("mode = \"cft\"\nf = 1\nclients = \"any\"\n{}", replicas(3))
                .replace(KEY_B, weak);
            let e = error(&text);
            assert_eq!(
                e,
                "config replicas[1].public_key: key is a weak (small-order) ed25519 point: it \
                 proves nothing, anyone can sign for it; use the public key `smr keygen` printed \
                 for this identity",
                "small-order point {i}"
            );
        }
    }

    #[test]
    fn small_order_client_keys_are_refused_with_the_reason() {
        for weak in SMALL_ORDER_KEYS {
            let text = format!(
                "mode = \"cft\"\nf = 1\nclients = [\"{KEY_D}\", \"{weak}\"]\n{}",
                replicas(3)
            );
            let e = error(&text);
            assert!(
                e.starts_with("config clients[1]: key is a weak (small-order) ed25519 point"),
                "{e}"
            );
        }
    }

    #[test]
    fn non_canonical_and_mixed_order_keys_are_refused() {
        // y = p + 1: another encoding of the identity point's y.
        let non_canonical = format!("ee{}7f", "ff".repeat(30));
        let e = error(
            &format!("mode = \"cft\"\nf = 1\nclients = \"any\"\n{}", replicas(3))
                .replace(KEY_A, &non_canonical),
        );
        assert!(
            e.starts_with("config replicas[0].public_key: key is not a canonical ed25519 encoding"),
            "{e}"
        );
        // KEY_C plus the point of order 2, (0, -1): (x, y) + (0, -1) = (-x, -y).
        let e = error(
            &format!("mode = \"cft\"\nf = 1\nclients = \"any\"\n{}", replicas(3))
                .replace(KEY_C, MIXED_ORDER_KEY),
        );
        assert!(
            e.starts_with("config replicas[2].public_key: key is a mixed-order ed25519 point"),
            "{e}"
        );
    }

    /// Issue 12, item 3, from files: every limit the engine relates to another is checked
    /// when the file is loaded, with the engine's message, so a config that loads is one the
    /// engine accepts (here a checkpoint period of 2^63 - 1, whose `4 * period` overflowed).
    #[test]
    fn limits_the_engine_would_refuse_are_refused_at_load() {
        let e = error(&format!(
            "mode = \"cft\"\nf = 1\nclients = \"any\"\n{}\n[limits]\ncheckpoint_period = 9223372036854775807\n",
            replicas(3)
        ));
        assert_eq!(
            e,
            "config limits.checkpoint_period: is 9223372036854775807; it may be at most 1073741824"
        );
        let e = error(&format!(
            "mode = \"cft\"\nf = 1\nclients = [\"{KEY_D}\"]\n{}\n[limits]\nmax_clients = 1\nmax_reply_cache_bytes = 10\n",
            replicas(3)
        ));
        assert!(
            e.starts_with("config limits: limits.max_reply_cache_bytes (10) is below"),
            "{e}"
        );
        let e = error(&format!(
            "mode = \"cft\"\nf = 9223372036854775807\nclients = \"any\"\n{}",
            replicas(3)
        ));
        assert!(e.starts_with("config replicas:"), "{e}");
    }

    #[test]
    fn missing_client_policy_asks_for_one() {
        let e = error(&format!("mode = \"cft\"\nf = 1\n{}", replicas(3)));
        assert!(e.contains("clients") && e.contains("\"any\""), "{e}");
    }

    #[test]
    fn misspelled_key_is_refused() {
        let e = error(&format!(
            "mode = \"cft\"\nf = 1\nclients = \"any\"\nbatch = 3\n{}",
            replicas(3)
        ));
        assert!(e.contains("batch"), "{e}");
    }

    #[test]
    fn zero_limit_is_refused_with_its_key() {
        let e = error(&format!(
            "mode = \"cft\"\nf = 1\nclients = \"any\"\n{}\n[limits]\nmax_batch_requests = 0\n",
            replicas(3)
        ));
        assert!(e.contains("limits.max_batch_requests"), "{e}");
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let e = ClusterConfig::load(Path::new("/nonexistent/cluster.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/cluster.toml"), "{e}");
    }
}
