//! Durable storage: a checksummed write-ahead log of opaque records, plus a checkpoint file.
//!
//! A replica must remember what it promised (its regency, its WRITE/ACCEPT votes, prepared
//! certificates, decided batches) before it sends the promise (docs/design.md §3.12). The
//! driver [`Wal::append`]s each record of an engine output's
//! [`persist`](field@crate::Output::persist), calls [`Wal::sync`] once for the whole output,
//! and only then sends its `send_after_persist` messages. Every `checkpoint_period` decisions
//! it calls [`Wal::write_checkpoint`] with the checkpoint and the few records that must
//! outlive it ([`Engine::durable_records_after`](crate::Engine::durable_records_after)), which
//! replaces the whole log. On restart, [`Wal::open`] returns the checkpoint and the records
//! after it ([`Recovered`]). The records are opaque bytes here; the driver stores codec-encoded
//! [`PersistRecord`](crate::engine::PersistRecord)s.
//!
//! **Why our own log, not redb or fjall.** The access pattern is append-only records read back
//! only at startup, one fsync per batch whose timing the driver must control (it is the
//! latency of every vote), and a whole-log rewrite at each checkpoint. That needs no index,
//! no in-place updates, no compaction and no transactions beyond one atomic rename, so a B-tree
//! or LSM store would add write amplification and a second fsync schedule we do not control,
//! plus a large dependency whose recovery behaviour we would have to take on trust. The log is
//! a few hundred lines whose every crash case is tested here.
//!
//! **Files** (layouts in [`format`](mod@format)): `MANIFEST` names the current generation; generation `g`
//! is the pair `checkpoint-g.ckp` (absent for generation 0) and `wal-g.log`. A checkpoint
//! writes generation `g+1` in full, fsyncs it and the directory, then atomically renames a new
//! `MANIFEST` into place: that rename is the commit point. A crash before it leaves generation
//! `g` current; after it, `g+1`. Files of any other generation are leftovers of an interrupted
//! checkpoint or cleanup, and `open` deletes them, except files of a generation past `g+1`:
//! only a manifest that is an older copy put back explains those, so `open` refuses the
//! directory and deletes nothing. Every file is written as a new file, so a symlink or hard
//! link found in its place is replaced, never written through. `LOCK` keeps a second process
//! out.
//!
//! **Torn tails.** A crash while records are being written can leave the end of the log
//! holding an incomplete record (the file ends inside its header or payload) or a record whose
//! checksum fails (the file was extended but not all its bytes reached the disk). None of
//! those records was acknowledged, because `sync` had not returned, so `open` cuts the file
//! back to the end of the last valid record, reports the cut in
//! [`Recovered::truncated_tail_bytes`] and logs a warning. Bad bytes *followed by a valid
//! record* are not a torn tail but damage inside the log: records after them were
//! acknowledged, and silently skipping the bad one would forget a promise, so `open` refuses
//! with [`StorageError::Corrupt`] naming the file and offset. Telling the two apart scans
//! forward from the bad record for any position where a valid record parses; every record
//! starts with the log's random sync marker, so that scan hashes each byte at most once and
//! recovery is linear in the file, and client bytes stored in records cannot pose as a record
//! ([`format`](mod@format) says how).
//!
//! One rare case lands on the refusing side: power loss during an fsync may persist the pages
//! of one unsynced batch out of order, leaving a hole followed by valid (unacknowledged)
//! records. That reads as `Corrupt`: safe, and the replica rejoins through state transfer.
//!
//! **Failures.** After any I/O error a [`Wal`] refuses further use ([`StorageError::Poisoned`]):
//! after a failed fsync the kernel may have dropped the dirty pages, so retrying could report
//! success for data that is gone. Drop it and open the directory again to recover from what
//! is on disk. No file content can make `open` panic or allocate more than the file holds.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

pub mod format;
mod lock;
mod wal;

pub use format::MAX_RECORD_BYTES;
pub use wal::{LogSync, Wal};

/// When appended records reach the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// fsync before `sync()` returns (the safe default): nothing acknowledged is lost on power loss.
    #[default]
    Always,
    /// Never fsync (data reaches the OS page cache only): survives process crashes (kill -9), not power loss.
    ///
    /// Checkpoints are not fsynced either, so after a power loss the directory may be refused
    /// as corrupt rather than merely missing recent records.
    Never,
}

impl FsyncPolicy {
    /// The names [`FromStr`] accepts.
    pub const VALID_VALUES: [&'static str; 2] = ["always", "never"];

    /// The policy's name in the config file: `"always"` or `"never"`.
    pub fn as_str(self) -> &'static str {
        match self {
            FsyncPolicy::Always => "always",
            FsyncPolicy::Never => "never",
        }
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An fsync policy name that is not one of [`FsyncPolicy::VALID_VALUES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown fsync policy {0:?}; valid values are \"always\" and \"never\"")]
pub struct ParseFsyncPolicyError(pub String);

impl FromStr for FsyncPolicy {
    type Err = ParseFsyncPolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            other => Err(ParseFsyncPolicyError(other.to_string())),
        }
    }
}

/// What a refusal to start from a damaged data directory tells the operator to do. Without
/// `--rejoin` (an embedder's `rejoin` argument) a replica on an empty data dir starts as new and
/// could vote against what it voted before.
pub const REJOIN_ADVICE: &str = "Move the data directory aside and restart the replica on an empty one; it then rejoins: it takes no part in votes until it has caught up from its peers by state transfer";

/// Operating errors of the storage layer (docs/design.md §7.6): returned, never a panic.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An operating-system call failed; the [`Wal`] is poisoned from then on.
    #[error("storage I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Damage that is not a torn tail: bad bytes followed by a valid record in the log, a
    /// checkpoint or manifest that fails its checksum or has the wrong length, or a file that
    /// is not an smr file of its kind.
    #[error("{path} is corrupt at byte {offset}: {reason}; it is not a torn tail, so the replica refuses to start. {REJOIN_ADVICE}", REJOIN_ADVICE = REJOIN_ADVICE)]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset of the damage in the file.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
    /// A file of this kind written in another format version (the last two bytes of its
    /// 8-byte magic).
    #[error("{path} has format version {found:?}, but this build reads only {supported:?}")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: String,
        /// The version this build reads.
        supported: &'static str,
    },
    /// Another live process holds the directory's `LOCK`.
    #[error("data directory {path} is locked by another process (pid {pid}); if no such process is running, remove {path}/LOCK")]
    Locked {
        /// The data directory.
        path: PathBuf,
        /// The pid recorded in the lock.
        pid: u32,
    },
    /// A file of the generation the manifest names is absent.
    #[error("{path} is missing, but the manifest names generation {generation}; the data directory is damaged, so the replica refuses to start. {REJOIN_ADVICE}", REJOIN_ADVICE = REJOIN_ADVICE)]
    MissingFile {
        /// The missing file.
        path: PathBuf,
        /// The generation the manifest names.
        generation: u64,
    },
    /// No manifest, yet log or checkpoint files that only a manifest could explain.
    #[error("{path} is missing, but the data directory holds log or checkpoint files, so which state is current is unknown and the replica refuses to start. {REJOIN_ADVICE}", REJOIN_ADVICE = REJOIN_ADVICE)]
    MissingManifest {
        /// Where the manifest should be.
        path: PathBuf,
    },
    /// [`Wal::append`] or [`Wal::write_checkpoint`] was given a record longer than
    /// [`MAX_RECORD_BYTES`]; nothing was written.
    #[error("record of {len} bytes exceeds the maximum of {max} bytes")]
    RecordTooLarge {
        /// Its length in bytes.
        len: usize,
        /// [`MAX_RECORD_BYTES`].
        max: usize,
    },
    /// An earlier I/O error left the log in an unknown state; drop the [`Wal`] and open the
    /// directory again.
    #[error("an earlier I/O error left the write-ahead log in {dir} in an unknown state; reopen the data directory to recover from what is on disk")]
    Poisoned {
        /// The data directory.
        dir: PathBuf,
    },
}

/// What `open` found on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The latest checkpoint's bytes, if any (written by `write_checkpoint`).
    pub checkpoint: Option<Vec<u8>>,
    /// Every valid record appended after that checkpoint, in append order.
    pub records: Vec<Vec<u8>>,
    /// Bytes cut from the end of the log because they were a torn/corrupt tail (0 if clean).
    pub truncated_tail_bytes: u64,
}

#[cfg(test)]
mod tests;
