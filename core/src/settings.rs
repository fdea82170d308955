//! The protocol settings: every part of the configuration that decides whether a message is
//! valid, or what the replicated state becomes. Replicas must agree on all of them; one whose
//! settings differ rejects what the others accept (or the reverse) and silently costs the
//! cluster its fault tolerance. smr-transport exchanges them when replicas connect and refuses
//! a peer whose settings differ, naming the settings (issue 17).
//!
//! Included: the mode, n and f; the replicas' public keys, in id order (one entry, a digest);
//! and the limits in [`PROTOCOL_LIMITS`]. Left out, as local to each replica: addresses (a
//! replica may move, and its key identifies it), timeouts, the fsync policy, and the limits
//! that bound only local resources or pace (`max_pending_total`, `max_instances_in_flight`,
//! `max_log_entries`). Also left out: which clients are admitted. It does decide validity (a
//! request of a client some replicas do not admit is refused by those), but a new client key is
//! admitted by changing the replicas' configs one at a time, and refusing each other meanwhile
//! would stall a cluster half-way through; a key is used only once every replica admits it.

use std::collections::BTreeMap;

use smr_crypto::Digest;

use crate::config::EngineConfig;

/// The limits that decide validity: what `verify.rs` and the engine refuse a peer's message for
/// (batch, operation, decision-reply and chunk sizes, the window, the largest state), when
/// checkpoints are taken (their digests must match across replicas), and the client table's
/// bounds (the table is part of the replicated state).
pub const PROTOCOL_LIMITS: [&str; 14] = [
    "max_batch_requests",
    "max_batch_bytes",
    "max_op_bytes",
    "max_pending_per_client",
    "max_instances_ahead",
    "max_decisions_per_reply",
    "checkpoint_period",
    "max_state_bytes",
    "state_chunk_bytes",
    "max_clients",
    "max_client_reply_bytes",
    "max_reply_cache_bytes",
    "client_expiry_cids",
    "max_sessions_per_client",
];

/// The limits that bound only a replica's own resources or pace, and may differ between
/// replicas: the pool, the leader's instances in flight, the decisions kept in memory. Every
/// limit of [`crate::config::LIMIT_MAXIMA`] is in exactly one of this and [`PROTOCOL_LIMITS`].
pub const LOCAL_LIMITS: [&str; 3] = [
    "max_pending_total",
    "max_instances_in_flight",
    "max_log_entries",
];

/// The most bytes the settings of a peer may take on the wire; ours take well under 1 KiB.
pub const MAX_SETTINGS_BYTES: usize = 4096;

/// The first line of the encoding, so a peer running another format is named as such.
const HEADER: &str = "smr-protocol-settings-v1";

/// The protocol settings of one configuration, as `(key, value)` pairs in a fixed order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolSettings {
    entries: Vec<(String, String)>,
}

/// One setting on which two replicas differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingDifference {
    /// The setting's key (`limits.max_op_bytes`, `mode`, `replica_keys`, ...). A key only the
    /// peer has is peer-supplied text: escape it before printing it.
    pub key: String,
    /// Our value, if we have the setting.
    pub ours: Option<String>,
    /// The peer's value, if it sent the setting (peer-supplied text).
    pub theirs: Option<String>,
}

impl ProtocolSettings {
    /// The protocol settings of `cfg` (its `me` and timeouts play no part).
    pub fn of(cfg: &EngineConfig) -> ProtocolSettings {
        let mut entries = vec![
            ("mode".to_string(), cfg.quorums.mode().as_str().to_string()),
            ("n".to_string(), cfg.quorums.n().to_string()),
            ("f".to_string(), cfg.quorums.f().to_string()),
        ];
        let mut keys = Vec::with_capacity(cfg.replica_keys.len() * 32);
        for key in &cfg.replica_keys {
            keys.extend_from_slice(key.to_hex().as_bytes());
        }
        entries.push((
            "replica_keys".to_string(),
            smr_crypto::digest(&keys).to_hex(),
        ));
        for (name, value) in cfg.limits.named() {
            if PROTOCOL_LIMITS.contains(&name) {
                entries.push((format!("limits.{name}"), value.to_string()));
            }
        }
        ProtocolSettings { entries }
    }

    /// The `(key, value)` pairs, in their fixed order.
    pub fn entries(&self) -> &[(String, String)] {
        &self.entries
    }

    /// The canonical encoding: a header line, then one `key=value` line per setting.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut text = String::from(HEADER);
        text.push('\n');
        for (key, value) in &self.entries {
            text.push_str(key);
            text.push('=');
            text.push_str(value);
            text.push('\n');
        }
        text.into_bytes()
    }

    /// The digest of [`ProtocolSettings::to_bytes`]: equal exactly when the settings are.
    pub fn digest(&self) -> Digest {
        smr_crypto::digest(&self.to_bytes())
    }

    /// Decodes a peer's [`ProtocolSettings::to_bytes`]. Refuses more than
    /// [`MAX_SETTINGS_BYTES`], text that is not UTF-8, another header, and lines without `=`.
    ///
    /// # Errors
    /// What is wrong with the bytes, for the log.
    pub fn from_bytes(bytes: &[u8]) -> Result<ProtocolSettings, String> {
        if bytes.len() > MAX_SETTINGS_BYTES {
            return Err(format!(
                "{} bytes of settings, more than {MAX_SETTINGS_BYTES}",
                bytes.len()
            ));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| "settings are not UTF-8".to_string())?;
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(format!(
                "settings do not start with {HEADER} (another version of smr?)"
            ));
        }
        let mut entries = Vec::new();
        for line in lines {
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| "a settings line without '='".to_string())?;
            entries.push((key.to_string(), value.to_string()));
        }
        Ok(ProtocolSettings { entries })
    }

    /// The settings on which `theirs` differs from ours, ours first in our order, then keys
    /// only they have. Empty exactly when the settings are equal (as sets of pairs).
    pub fn differences(&self, theirs: &ProtocolSettings) -> Vec<SettingDifference> {
        let their_map: BTreeMap<&str, &str> = theirs
            .entries
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut out = Vec::new();
        for (key, ours) in &self.entries {
            let their_value = their_map.get(key.as_str()).copied();
            if their_value != Some(ours.as_str()) {
                out.push(SettingDifference {
                    key: key.clone(),
                    ours: Some(ours.clone()),
                    theirs: their_value.map(str::to_string),
                });
            }
        }
        for (key, value) in &theirs.entries {
            if !self.entries.iter().any(|(k, _)| k == key) {
                out.push(SettingDifference {
                    key: key.clone(),
                    ours: None,
                    theirs: Some(value.clone()),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClientPolicy, Limits, Timeouts};
    use smr_crypto::IdentityKey;
    use smr_modes::{Mode, Quorums};

    fn config(me: u32) -> EngineConfig {
        EngineConfig {
            quorums: Quorums::new(Mode::Bft, 4, 1).unwrap(),
            me,
            replica_keys: (0..4u8)
                .map(|i| IdentityKey::from_seed([i + 1; 32]).public_key())
                .collect(),
            clients: ClientPolicy::Any,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
        }
    }

    fn keys_of(differences: &[SettingDifference]) -> Vec<&str> {
        differences.iter().map(|d| d.key.as_str()).collect()
    }

    #[test]
    fn every_protocol_limit_is_a_limit_and_changes_the_digest() {
        let base = config(0);
        let names: Vec<&str> = base.limits.named().iter().map(|(n, _)| *n).collect();
        for (i, limit) in PROTOCOL_LIMITS.iter().enumerate() {
            assert!(names.contains(limit), "{limit} is not a field of Limits");
            let mut changed = base.clone();
            // Change exactly one limit: through the named list's position.
            let position = names.iter().position(|n| n == limit).unwrap();
            set_limit(&mut changed.limits, position);
            let (ours, theirs) = (ProtocolSettings::of(&base), ProtocolSettings::of(&changed));
            assert_ne!(ours.digest(), theirs.digest(), "{limit} (#{i})");
            assert_eq!(
                keys_of(&ours.differences(&theirs)),
                vec![format!("limits.{limit}").as_str()]
            );
        }
    }

    /// Adds 1 to the limit at `position` in `Limits::named`.
    fn set_limit(limits: &mut Limits, position: usize) {
        match position {
            0 => limits.max_batch_requests += 1,
            1 => limits.max_batch_bytes += 1,
            2 => limits.max_op_bytes += 1,
            3 => limits.max_pending_per_client += 1,
            4 => limits.max_pending_total += 1,
            5 => limits.max_instances_in_flight += 1,
            6 => limits.max_instances_ahead += 1,
            7 => limits.max_decisions_per_reply += 1,
            8 => limits.max_log_entries += 1,
            9 => limits.checkpoint_period += 1,
            10 => limits.max_state_bytes += 1,
            11 => limits.state_chunk_bytes += 1,
            12 => limits.max_clients += 1,
            13 => limits.max_client_reply_bytes += 1,
            14 => limits.max_reply_cache_bytes += 1,
            15 => limits.client_expiry_cids += 1,
            16 => limits.max_sessions_per_client += 1,
            _ => unreachable!(),
        }
    }

    /// A new limit must be classified: as deciding validity (exchanged) or as local.
    #[test]
    fn every_limit_is_either_a_protocol_or_a_local_limit() {
        for (name, _) in crate::config::LIMIT_MAXIMA {
            let protocol = PROTOCOL_LIMITS.contains(&name);
            let local = LOCAL_LIMITS.contains(&name);
            assert!(
                protocol != local,
                "{name}: protocol {protocol}, local {local}"
            );
        }
        assert_eq!(
            PROTOCOL_LIMITS.len() + LOCAL_LIMITS.len(),
            crate::config::LIMIT_MAXIMA.len()
        );
    }

    #[test]
    fn local_settings_do_not_change_the_digest() {
        let base = ProtocolSettings::of(&config(0));
        // Another replica of the same cluster.
        assert_eq!(ProtocolSettings::of(&config(3)), base);
        let mut local = config(0);
        local.limits.max_pending_total += 1;
        local.limits.max_instances_in_flight += 1;
        local.limits.max_log_entries += 1;
        local.timeouts.request_timeout_ms += 1;
        local.timeouts.heartbeat_ms += 1;
        local.timeouts.retransmit_max_ms += 1;
        // Client keys are admitted one replica at a time.
        local.clients =
            ClientPolicy::Allowed([IdentityKey::from_seed([7; 32]).public_key()].into());
        assert_eq!(ProtocolSettings::of(&local).digest(), base.digest());
    }

    #[test]
    fn mode_and_members_change_the_digest_and_are_named() {
        let base = ProtocolSettings::of(&config(0));
        let mut cft = config(0);
        cft.quorums = Quorums::new(Mode::Cft, 4, 1).unwrap();
        let d = base.differences(&ProtocolSettings::of(&cft));
        assert_eq!(keys_of(&d), vec!["mode"]);
        let mut other_key = config(0);
        other_key.replica_keys[2] = IdentityKey::from_seed([9; 32]).public_key();
        assert_eq!(
            keys_of(&base.differences(&ProtocolSettings::of(&other_key))),
            vec!["replica_keys"]
        );
        let mut fewer = config(0);
        fewer.quorums = Quorums::new(Mode::Bft, 7, 2).unwrap();
        fewer.replica_keys = (0..7u8)
            .map(|i| IdentityKey::from_seed([i + 1; 32]).public_key())
            .collect();
        assert_eq!(
            keys_of(&base.differences(&ProtocolSettings::of(&fewer))),
            vec!["n", "f", "replica_keys"]
        );
    }

    #[test]
    fn the_encoding_round_trips_and_refuses_what_is_not_settings() {
        let ours = ProtocolSettings::of(&config(1));
        let bytes = ours.to_bytes();
        assert!(bytes.len() < 1024, "{} bytes", bytes.len());
        assert_eq!(ProtocolSettings::from_bytes(&bytes).unwrap(), ours);
        assert!(ProtocolSettings::from_bytes(b"hello").is_err());
        assert!(ProtocolSettings::from_bytes(&vec![b'a'; MAX_SETTINGS_BYTES + 1]).is_err());
        assert!(ProtocolSettings::from_bytes(b"smr-protocol-settings-v1\nno equals").is_err());
        let extra = ProtocolSettings::from_bytes(
            format!("{}x.new=1\n", String::from_utf8(bytes).unwrap()).as_bytes(),
        )
        .unwrap();
        let d = ours.differences(&extra);
        assert_eq!(
            d,
            vec![SettingDifference {
                key: "x.new".into(),
                ours: None,
                theirs: Some("1".into())
            }]
        );
    }
}
