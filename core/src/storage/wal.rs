//! The write-ahead log itself: open and recover, append, sync, checkpoint.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::{
    self, Hashed, MagicCheck, SyncMarker, CHECKPOINT_HEADER_BYTES, CHECKPOINT_MAGIC, MAGIC_BYTES,
    MANIFEST_BYTES, MANIFEST_MAGIC, MAX_RECORD_BYTES, RECORD_HEADER_BYTES, SYNC_BYTES,
    WAL_HEADER_BYTES, WAL_MAGIC,
};
use super::lock::DirLock;
use super::{FsyncPolicy, Recovered, StorageError};

pub(super) const MANIFEST_FILE: &str = "MANIFEST";
pub(super) const MANIFEST_TEMP_FILE: &str = "MANIFEST.tmp";

/// Appended bytes kept in memory before they are written to the file (without fsync). Bounds
/// the buffer when the driver appends a lot between syncs.
const WRITE_BUFFER_BYTES: usize = 1024 * 1024;
const READ_BUFFER_BYTES: usize = 1024 * 1024;

pub(super) fn wal_file_name(generation: u64) -> String {
    format!("wal-{generation:020}.log")
}

pub(super) fn checkpoint_file_name(generation: u64) -> String {
    format!("checkpoint-{generation:020}.ckp")
}

/// The generation a log or checkpoint file name belongs to, if it is one.
fn generation_of(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix("wal-")
        .and_then(|rest| rest.strip_suffix(".log"))
        .or_else(|| {
            name.strip_prefix("checkpoint-")
                .and_then(|rest| rest.strip_suffix(".ckp"))
        })?;
    if digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Makes `file` (named `path`) durable: its data and, with `all`, its metadata too (`fsync`,
/// else `fdatasync`). Every fsync of the store goes through here; test builds note which file
/// each made durable (`synced_files`).
fn fsync(file: &File, path: &Path, all: bool) -> io::Result<()> {
    #[cfg(test)]
    SYNCED_FILES.with(|synced| synced.borrow_mut().push(path.to_path_buf()));
    #[cfg(not(test))]
    let _ = path;
    if all {
        file.sync_all()
    } else {
        file.sync_data()
    }
}

#[cfg(test)]
thread_local! {
    static SYNCED_FILES: std::cell::RefCell<Vec<PathBuf>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The files this thread's store calls made durable since the last call, in order (test
/// builds only).
#[cfg(test)]
pub(super) fn synced_files() -> Vec<PathBuf> {
    SYNCED_FILES.with(|synced| std::mem::take(&mut *synced.borrow_mut()))
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

/// Refuses a file whose magic is not `expected`.
fn require_magic(
    path: &Path,
    found: &[u8],
    expected: &'static [u8; MAGIC_BYTES],
    kind: &str,
) -> Result<(), StorageError> {
    match format::check_magic(found, expected) {
        MagicCheck::Ok => Ok(()),
        MagicCheck::OtherVersion(found) => Err(StorageError::UnsupportedVersion {
            path: path.to_path_buf(),
            found,
            supported: std::str::from_utf8(expected).expect("magic is ASCII"),
        }),
        MagicCheck::Foreign(found) => Err(corrupt(
            path,
            0,
            format!(
                "not an smr {kind} file (it starts with \"{found}\", expected \"{}\")",
                std::str::from_utf8(expected).expect("magic is ASCII")
            ),
        )),
    }
}

/// A checksummed, append-only log of opaque records in a locked data directory.
pub struct Wal {
    dir: PathBuf,
    policy: FsyncPolicy,
    generation: u64,
    log_path: PathBuf,
    /// The current log, shared with the [`LogSync`]s taken of it: one descriptor per log
    /// generation, however many fsyncs run.
    log: Arc<File>,
    /// The current log's sync marker, which starts each of its records.
    sync: SyncMarker,
    /// Bytes `open` hashed while reading the log.
    recovery_hashed_bytes: u64,
    /// Bytes written to the log file so far (its length, once `pending` is empty).
    written_bytes: u64,
    /// Encoded records appended but not yet written to the file.
    pending: Vec<u8>,
    poisoned: bool,
    /// Declared last so the lock is released after the files are closed.
    _lock: DirLock,
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("policy", &self.policy)
            .field("generation", &self.generation)
            .field("log_bytes", &self.log_bytes())
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl Wal {
    /// Opens (creating if needed) the data directory and recovers what it holds.
    ///
    /// Takes the directory's lock (a lock left by a process that is no longer running does not
    /// block), deletes leftovers of an interrupted checkpoint, cuts a torn tail off the log, and
    /// refuses a damaged directory rather than start without something it promised. With
    /// [`FsyncPolicy::Always`] what it recovered is durable when it returns (fsynced log and
    /// directory): it may have been in the page cache only, written out by a process that
    /// stopped before the fsync.
    ///
    /// # Errors
    /// [`StorageError::Locked`] if another process holds the directory; `Corrupt`,
    /// `UnsupportedVersion`, `MissingFile` or `MissingManifest` for a damaged or foreign
    /// directory; `Io` if the operating system fails.
    pub fn open(dir: &Path, policy: FsyncPolicy) -> Result<(Wal, Recovered), StorageError> {
        create_data_dir(dir, policy)?;
        let lock = DirLock::acquire(dir)?;

        let generation = match read_manifest(dir)? {
            Some(generation) => generation,
            None => {
                initialize(dir, policy)?;
                0
            }
        };
        let checkpoint = if generation == 0 {
            None
        } else {
            Some(read_checkpoint(
                &dir.join(checkpoint_file_name(generation)),
                generation,
            )?)
        };

        let log_path = dir.join(wal_file_name(generation));
        let scanned = read_log(&log_path, generation)?;
        // Only once the current generation is known good: a refused directory is left as found.
        remove_other_generations(dir, generation)?;
        let mut log = OpenOptions::new()
            .write(true)
            .open(&log_path)
            .map_err(io_error(&log_path))?;
        if scanned.truncated_tail_bytes > 0 {
            tracing::warn!(
                log = %log_path.display(),
                offset = scanned.valid_bytes,
                truncated_bytes = scanned.truncated_tail_bytes,
                reason = %scanned.tail_reason,
                "cutting a torn tail off the write-ahead log (records a crash left half-written; none was acknowledged)"
            );
            log.set_len(scanned.valid_bytes)
                .map_err(io_error(&log_path))?;
        }
        if policy == FsyncPolicy::Always {
            // What was read may be in the page cache only: records a process that crashed
            // (or stopped) had written out but whose fsync had not ended (the driver's group
            // commit writes records out well before their fsync ends), or the manifest's
            // switch of an interrupted checkpoint. The replica acts on what it recovers, and
            // may send what it promises (a restarted leader resends its PROPOSE), so it must
            // be durable first: a power loss after those sends must not take it back.
            fsync(&log, &log_path, true).map_err(io_error(&log_path))?;
            sync_dir(dir, policy)?;
        }
        log.seek(SeekFrom::Start(scanned.valid_bytes))
            .map_err(io_error(&log_path))?;

        let wal = Wal {
            dir: dir.to_path_buf(),
            policy,
            generation,
            log_path,
            log: Arc::new(log),
            sync: scanned.sync,
            recovery_hashed_bytes: scanned.hashed_bytes,
            written_bytes: scanned.valid_bytes,
            pending: Vec::new(),
            poisoned: false,
            _lock: lock,
        };
        let recovered = Recovered {
            checkpoint,
            records: scanned.records,
            truncated_tail_bytes: scanned.truncated_tail_bytes,
        };
        Ok((wal, recovered))
    }

    /// Appends records (buffered); they are durable (per policy) only after `sync`.
    ///
    /// Records appended but not synced may be lost if the `Wal` is dropped, as in a crash
    /// (dropping does not write the buffer).
    ///
    /// # Errors
    /// [`StorageError::RecordTooLarge`] above [`MAX_RECORD_BYTES`](super::MAX_RECORD_BYTES);
    /// [`StorageError::Io`] if writing the buffer out fails (the `Wal` is poisoned from then
    /// on); [`StorageError::Poisoned`] after an earlier I/O error.
    pub fn append(&mut self, record: &[u8]) -> Result<(), StorageError> {
        self.check_usable()?;
        check_record_size(record.len())?;
        format::encode_record(&mut self.pending, &self.sync, record);
        if self.pending.len() >= WRITE_BUFFER_BYTES {
            self.write_pending()?;
        }
        Ok(())
    }

    /// Makes every appended record durable according to the policy: written and, with
    /// [`FsyncPolicy::Always`], fsynced. The driver calls this once per engine output, before
    /// sending any message that promises what was appended.
    ///
    /// # Errors
    /// [`StorageError::Io`] (the `Wal` is poisoned from then on), or
    /// [`StorageError::Poisoned`] after an earlier one.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        if let Some(log_sync) = self.write_for_sync()? {
            let result = log_sync.run();
            self.poison_on_error(result)?;
        }
        Ok(())
    }

    /// Writes every appended record to the file, without an fsync, and returns what makes
    /// them durable on another thread ([`LogSync::run`]), so that the caller can go on while
    /// the disk works (the tokio driver's group commit, [`crate::runner::GroupCommit`]).
    /// `None` under [`FsyncPolicy::Never`], whose promise writing alone keeps.
    ///
    /// Records appended later are not covered by the returned `LogSync`, though its fsync may
    /// happen to make some of them durable too.
    ///
    /// # Errors
    /// As [`Wal::sync`]: [`StorageError::Io`] (the `Wal` is poisoned from then on), or
    /// [`StorageError::Poisoned`] after an earlier one.
    pub fn write_for_sync(&mut self) -> Result<Option<LogSync>, StorageError> {
        self.check_usable()?;
        self.write_pending()?;
        if self.policy != FsyncPolicy::Always {
            return Ok(None);
        }
        Ok(Some(LogSync {
            file: Arc::clone(&self.log),
            path: self.log_path.clone(),
        }))
    }

    /// Atomically replaces the checkpoint and starts a fresh log containing exactly
    /// `records_after` (the records that must survive after this checkpoint). Crash at any
    /// point leaves either the old (checkpoint, log) pair or the new one, never a mix. Both
    /// are durable when it returns (with [`FsyncPolicy::Always`]).
    ///
    /// Records appended since the last `sync` are discarded: `records_after` supersedes them.
    ///
    /// # Errors
    /// [`StorageError::RecordTooLarge`] before anything is written; [`StorageError::Io`] (the
    /// `Wal` is poisoned from then on); [`StorageError::Poisoned`] after an earlier one.
    ///
    pub fn write_checkpoint(
        &mut self,
        checkpoint: &[u8],
        records_after: &[Vec<u8>],
    ) -> Result<(), StorageError> {
        self.check_usable()?;
        for record in records_after {
            check_record_size(record.len())?;
        }
        let old = self.generation;
        // `open` refuses a manifest naming `u64::MAX`, and each checkpoint adds one.
        let next = old
            .checked_add(1)
            .expect("open refuses the last generation");
        let result = (|| {
            let (new_log, sync) = self.prepare_generation(next, checkpoint, records_after)?;
            self.commit_generation(next)?;
            let new_log_path = self.dir.join(wal_file_name(next));
            self.written_bytes = new_log.metadata().map_err(io_error(&new_log_path))?.len();
            self.log = Arc::new(new_log);
            self.sync = sync;
            self.log_path = new_log_path;
            self.generation = next;
            self.pending.clear();
            self.remove_generation(old)
        })();
        self.poison_on_error(result)
    }

    /// Bytes in the current log file (for tests and metrics), counting appended records not
    /// yet written: after `sync` it equals the file's length.
    pub fn log_bytes(&self) -> u64 {
        self.written_bytes + self.pending.len() as u64
    }

    /// Bytes that [`Wal::open`] ran the checksum over while reading the log: the work of
    /// recovery, at most about twice the log's length however the log was damaged (the records
    /// once, and after a bad record every candidate record once; `format`'s docs say why).
    pub fn recovery_hashed_bytes(&self) -> u64 {
        self.recovery_hashed_bytes
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// When appended records reach the disk.
    pub fn policy(&self) -> FsyncPolicy {
        self.policy
    }

    /// The current checkpoint generation (0 before the first checkpoint).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Step 1 of a checkpoint: writes generation `next` in full and makes it durable. Until
    /// the manifest names it, it is an uncommitted leftover that `open` deletes. Returns the
    /// new log, positioned at its end, and its sync marker.
    pub(super) fn prepare_generation(
        &self,
        next: u64,
        checkpoint: &[u8],
        records_after: &[Vec<u8>],
    ) -> Result<(File, SyncMarker), StorageError> {
        let checkpoint_path = self.dir.join(checkpoint_file_name(next));
        write_new_file(
            &checkpoint_path,
            &format::encode_checkpoint(checkpoint),
            self.policy,
        )?;

        let log_path = self.dir.join(wal_file_name(next));
        let sync = new_sync_marker(&log_path)?;
        let mut log_bytes = format::wal_header(next, &sync).to_vec();
        for record in records_after {
            format::encode_record(&mut log_bytes, &sync, record);
        }
        let log = write_new_file(&log_path, &log_bytes, self.policy)?;
        sync_dir(&self.dir, self.policy)?;
        Ok((log, sync))
    }

    /// Step 2, the commit point: atomically points the manifest at generation `next`.
    pub(super) fn commit_generation(&self, next: u64) -> Result<(), StorageError> {
        write_manifest(&self.dir, next, self.policy)
    }

    /// Step 3: deletes the files of a generation that is no longer current. A crash before this
    /// finishes leaves files that the next `open` deletes.
    pub(super) fn remove_generation(&self, generation: u64) -> Result<(), StorageError> {
        for name in [checkpoint_file_name(generation), wal_file_name(generation)] {
            remove_if_present(&self.dir.join(name))?;
        }
        Ok(())
    }

    fn check_usable(&self) -> Result<(), StorageError> {
        if self.poisoned {
            Err(StorageError::Poisoned {
                dir: self.dir.clone(),
            })
        } else {
            Ok(())
        }
    }

    fn poison_on_error<T>(&mut self, result: Result<T, StorageError>) -> Result<T, StorageError> {
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn write_pending(&mut self) -> Result<(), StorageError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let result = (&*self.log)
            .write_all(&self.pending)
            .map_err(io_error(&self.log_path));
        self.poison_on_error(result)?;
        self.written_bytes += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }
}

/// An fsync of a log, for another thread: see [`Wal::write_for_sync`].
#[derive(Debug)]
pub struct LogSync {
    /// The log file. Shared with the `Wal` while it is current; after a checkpoint has moved
    /// the `Wal` to a new log (already synced in full), this one still fsyncs the old file,
    /// open though its name may be gone.
    file: Arc<File>,
    path: PathBuf,
}

impl LogSync {
    /// Makes durable every record written before [`Wal::write_for_sync`] returned this
    /// (`fdatasync`, through the store's one fsync helper). It blocks for the disk's round
    /// trip.
    ///
    /// # Errors
    /// [`StorageError::Io`]: the records may be lost, so the replica that asked must stop
    /// promising them (the `Wal` is not poisoned from here; its owner fails instead).
    pub fn run(self) -> Result<(), StorageError> {
        fsync(&self.file, &self.path, false).map_err(io_error(&self.path))
    }
}

/// A fresh sync marker for a new log file, from the operating system's random source: it must
/// be unpredictable to clients, whose operation bytes the log stores verbatim, or they could
/// embed records that recovery would find in a torn tail.
fn new_sync_marker(path: &Path) -> Result<SyncMarker, StorageError> {
    use rand_core::RngCore;
    let mut sync = [0u8; SYNC_BYTES];
    rand_core::OsRng
        .try_fill_bytes(&mut sync)
        .map_err(|e| StorageError::Io {
            path: path.to_path_buf(),
            source: io::Error::other(e.to_string()),
        })?;
    Ok(sync)
}

/// Refuses a record of `len` bytes above [`MAX_RECORD_BYTES`] (what `append` and
/// `write_checkpoint` check before writing anything).
pub(super) fn check_record_size(len: usize) -> Result<(), StorageError> {
    if len > MAX_RECORD_BYTES {
        Err(StorageError::RecordTooLarge {
            len,
            max: MAX_RECORD_BYTES,
        })
    } else {
        Ok(())
    }
}

/// Creates (or replaces) `path` holding exactly `bytes`, fsynced per policy. Whatever held the
/// name is unlinked and a new file created in its place, so a symlink or hard link found there
/// is never written through (the file it points to is left as it was).
fn write_new_file(path: &Path, bytes: &[u8], policy: FsyncPolicy) -> Result<File, StorageError> {
    remove_if_present(path)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_error(path))?;
    file.write_all(bytes).map_err(io_error(path))?;
    if policy == FsyncPolicy::Always {
        fsync(&file, path, true).map_err(io_error(path))?;
    }
    Ok(file)
}

/// Makes renames and new files in `dir` durable (on Unix a directory's entries are synced
/// through the directory itself).
fn sync_dir(dir: &Path, policy: FsyncPolicy) -> Result<(), StorageError> {
    if policy == FsyncPolicy::Always && cfg!(unix) {
        File::open(dir)
            .and_then(|d| fsync(&d, dir, true))
            .map_err(io_error(dir))?;
    }
    Ok(())
}

/// Creates `dir` and any missing ancestors, and makes their entries durable: a log fsynced
/// inside a directory whose own entry was lost would be lost with it.
fn create_data_dir(dir: &Path, policy: FsyncPolicy) -> Result<(), StorageError> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|p| !p.as_os_str().is_empty() && !p.exists())
        .collect();
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    for created in missing {
        let parent = match created.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        sync_dir(parent, policy)?;
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<(), StorageError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StorageError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn write_manifest(dir: &Path, generation: u64, policy: FsyncPolicy) -> Result<(), StorageError> {
    let temp = dir.join(MANIFEST_TEMP_FILE);
    write_new_file(&temp, &format::encode_manifest(generation), policy)?;
    let path = dir.join(MANIFEST_FILE);
    fs::rename(&temp, &path).map_err(io_error(&path))?;
    sync_dir(dir, policy)
}

/// The generation the manifest names, or `None` if there is no manifest.
fn read_manifest(dir: &Path) -> Result<Option<u64>, StorageError> {
    let path = dir.join(MANIFEST_FILE);
    let Some((mut file, _)) = open_regular_file(&path)? else {
        return Ok(None);
    };
    // One byte more than a manifest holds, to notice a longer file without reading all of it.
    let mut bytes = Vec::with_capacity(MANIFEST_BYTES + 1);
    (&mut file)
        .take(MANIFEST_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error(&path))?;
    require_magic(
        &path,
        &bytes[..bytes.len().min(MAGIC_BYTES)],
        MANIFEST_MAGIC,
        "manifest",
    )?;
    if bytes.len() != MANIFEST_BYTES {
        return Err(corrupt(
            &path,
            bytes.len().min(MANIFEST_BYTES) as u64,
            format!("a manifest is {MANIFEST_BYTES} bytes long, this one is not"),
        ));
    }
    let (body, sum) = bytes.split_at(MAGIC_BYTES + 8);
    if format::checksum(&[body]) != sum {
        return Err(corrupt(&path, 0, "manifest checksum mismatch"));
    }
    let generation = u64::from_le_bytes(body[MAGIC_BYTES..].try_into().expect("8 bytes"));
    // The next checkpoint's generation must exist: refused here, so that writing it never
    // overflows on a number the file supplied.
    if generation == u64::MAX {
        return Err(corrupt(
            &path,
            MAGIC_BYTES as u64,
            "the manifest names the last possible generation",
        ));
    }
    Ok(Some(generation))
}

/// Sets up generation 0 in a directory with no manifest. Refuses if the directory holds state
/// that only a manifest could explain; an empty log left by an interrupted initialization is
/// not such state.
fn initialize(dir: &Path, policy: FsyncPolicy) -> Result<(), StorageError> {
    let entries = fs::read_dir(dir).map_err(io_error(dir))?;
    for entry in entries {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        let Some(generation) = name.to_str().and_then(generation_of) else {
            continue;
        };
        let path = entry.path();
        // Not followed if it is a symlink: `initialize` makes only regular files, and a link's
        // own length says nothing of the log it points to.
        let metadata = entry.metadata().map_err(io_error(&path))?;
        let is_empty_first_log = generation == 0
            && name.to_str() == Some(wal_file_name(0).as_str())
            && metadata.is_file()
            && metadata.len() <= WAL_HEADER_BYTES as u64;
        if !is_empty_first_log {
            return Err(StorageError::MissingManifest {
                path: dir.join(MANIFEST_FILE),
            });
        }
    }
    let log_path = dir.join(wal_file_name(0));
    let sync = new_sync_marker(&log_path)?;
    write_new_file(&log_path, &format::wal_header(0, &sync), policy)?;
    sync_dir(dir, policy)?;
    write_manifest(dir, 0, policy)
}

/// Deletes files of generations other than `current` and a leftover manifest temp file.
///
/// A checkpoint writes only the generation after the current one, and the manifest's switch
/// to it is what makes it current; so files of a later generation than that were current once,
/// and a manifest naming an earlier one is an older copy put back. That directory is refused,
/// before anything is deleted: those files hold what the replica promised since.
fn remove_other_generations(dir: &Path, current: u64) -> Result<(), StorageError> {
    let mut leftovers = Vec::new();
    let entries = fs::read_dir(dir).map_err(io_error(dir))?;
    for entry in entries {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        match generation_of(name) {
            Some(generation) if generation > current.saturating_add(1) => {
                return Err(corrupt(
                    &dir.join(MANIFEST_FILE),
                    MAGIC_BYTES as u64,
                    format!(
                        "it names generation {current}, but {} is of generation {generation}, \
                         and a checkpoint writes only the generation after the current one: \
                         the manifest is an older copy",
                        entry.path().display()
                    ),
                ));
            }
            Some(generation) if generation != current => leftovers.push(entry.path()),
            Some(_) => {}
            None if name == MANIFEST_TEMP_FILE => leftovers.push(entry.path()),
            None => {}
        }
    }
    for path in leftovers {
        tracing::info!(
            file = %path.display(),
            current_generation = current,
            "deleting a leftover of an interrupted checkpoint"
        );
        remove_if_present(&path)?;
    }
    Ok(())
}

/// Opens a file the manifest names; its absence is `MissingFile`, not an I/O error.
fn open_named_file(path: &Path, generation: u64) -> Result<(File, u64), StorageError> {
    open_regular_file(path)?.ok_or_else(|| StorageError::MissingFile {
        path: path.to_path_buf(),
        generation,
    })
}

/// Opens a file of the data dir and returns it with its length, or `None` if it does not
/// exist. Anything but a regular file (a pipe, a device, a directory, reached by name or
/// through a symlink) is refused as corrupt before it is opened: its length says nothing of
/// what it yields, a read from it may never end, and opening a pipe with no writer blocks.
fn open_regular_file(path: &Path) -> Result<Option<(File, u64)>, StorageError> {
    let not_regular = || corrupt(path, 0, "not a regular file");
    match fs::metadata(path) {
        Ok(metadata) if !metadata.is_file() => return Err(not_regular()),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StorageError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StorageError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    // Checked again on what was opened: the name may have been replaced in between.
    let metadata = file.metadata().map_err(io_error(path))?;
    if !metadata.is_file() {
        return Err(not_regular());
    }
    Ok(Some((file, metadata.len())))
}

/// Reads and verifies a checkpoint file. It was written atomically, so any damage, including
/// a short file, is corruption.
fn read_checkpoint(path: &Path, generation: u64) -> Result<Vec<u8>, StorageError> {
    let (file, file_len) = open_named_file(path, generation)?;
    let mut reader = BufReader::with_capacity(read_buffer_bytes(file_len), file);
    let mut header = [0u8; CHECKPOINT_HEADER_BYTES];
    let header_len = read_up_to(&mut reader, &mut header).map_err(io_error(path))?;
    require_magic(
        path,
        &header[..header_len.min(MAGIC_BYTES)],
        CHECKPOINT_MAGIC,
        "checkpoint",
    )?;
    if header_len < CHECKPOINT_HEADER_BYTES {
        return Err(corrupt(
            path,
            header_len as u64,
            format!("file ends inside the {CHECKPOINT_HEADER_BYTES}-byte checkpoint header"),
        ));
    }
    let length_bytes: [u8; 8] = header[MAGIC_BYTES..MAGIC_BYTES + 8]
        .try_into()
        .expect("8 bytes");
    let length = u64::from_le_bytes(length_bytes);
    // The header was read, so a file that still is as long as it was opened holds it.
    let available = remaining_after(path, file_len, CHECKPOINT_HEADER_BYTES as u64)?;
    if length != available {
        return Err(corrupt(
            path,
            MAGIC_BYTES as u64,
            format!(
                "length field says {length} bytes of checkpoint but the file holds {available}"
            ),
        ));
    }
    // The file's length is not bytes on disk (a sparse file holds none), and nothing bounds a
    // checkpoint's size: an allocation the process cannot make is refused, naming the file,
    // rather than aborting it.
    let does_not_fit = || {
        corrupt(
            path,
            MAGIC_BYTES as u64,
            format!("length field says {length} bytes of checkpoint, more than this process can allocate"),
        )
    };
    let mut payload = Vec::new();
    payload
        .try_reserve_exact(usize::try_from(length).map_err(|_| does_not_fit())?)
        .map_err(|_| does_not_fit())?;
    reader
        .take(length)
        .read_to_end(&mut payload)
        .map_err(io_error(path))?;
    if payload.len() as u64 != length {
        return Err(corrupt(
            path,
            CHECKPOINT_HEADER_BYTES as u64 + payload.len() as u64,
            "the file shrank while it was read",
        ));
    }
    if format::checksum(&[&length_bytes, &payload])[..] != header[MAGIC_BYTES + 8..] {
        return Err(corrupt(
            path,
            CHECKPOINT_HEADER_BYTES as u64,
            "checkpoint checksum mismatch",
        ));
    }
    Ok(payload)
}

/// What reading a log found.
struct ScannedLog {
    /// The log's sync marker.
    sync: SyncMarker,
    records: Vec<Vec<u8>>,
    /// End of the last valid record: where the log continues.
    valid_bytes: u64,
    truncated_tail_bytes: u64,
    /// Why the tail was cut (empty if it was not).
    tail_reason: String,
    /// Bytes run through the checksum.
    hashed_bytes: u64,
}

/// Reads every valid record of a log, and classifies what follows the last one as nothing, a
/// torn tail (to cut), or corruption (an error).
fn read_log(path: &Path, generation: u64) -> Result<ScannedLog, StorageError> {
    let (file, file_len) = open_named_file(path, generation)?;
    let mut reader = BufReader::with_capacity(read_buffer_bytes(file_len), file);

    // The header is written and fsynced before the manifest names the log, so it is never torn.
    let mut header = [0u8; WAL_HEADER_BYTES];
    let header_len = read_up_to(&mut reader, &mut header).map_err(io_error(path))?;
    require_magic(
        path,
        &header[..header_len.min(MAGIC_BYTES)],
        WAL_MAGIC,
        "write-ahead log",
    )?;
    if header_len < WAL_HEADER_BYTES {
        return Err(corrupt(
            path,
            header_len as u64,
            format!("file ends inside the {WAL_HEADER_BYTES}-byte log header"),
        ));
    }
    let (header_generation, sync) = format::parse_wal_header(&header)
        .map_err(|reason| corrupt(path, MAGIC_BYTES as u64, reason))?;
    if header_generation != generation {
        return Err(corrupt(
            path,
            MAGIC_BYTES as u64,
            format!("log header names generation {header_generation}, but the manifest names {generation}"),
        ));
    }

    let mut hashed = Hashed::default();
    let mut records = Vec::new();
    let mut offset = WAL_HEADER_BYTES as u64;
    let bad_record_reason = loop {
        let remaining = remaining_after(path, file_len, offset)?;
        if remaining == 0 {
            break None;
        }
        if remaining < RECORD_HEADER_BYTES as u64 {
            break Some(format!(
                "file ends inside a record header ({remaining} of {RECORD_HEADER_BYTES} bytes)"
            ));
        }
        let mut record_header = [0u8; RECORD_HEADER_BYTES];
        reader
            .read_exact(&mut record_header)
            .map_err(io_error(path))?;
        let parsed = match format::parse_record_header(
            &record_header,
            &sync,
            remaining - RECORD_HEADER_BYTES as u64,
            &mut hashed,
        ) {
            Ok(parsed) => parsed,
            Err(reason) => break Some(reason),
        };
        let mut payload = vec![0u8; parsed.payload_len];
        reader.read_exact(&mut payload).map_err(io_error(path))?;
        if !format::record_checksum_matches(&parsed, &payload, &mut hashed) {
            break Some("record checksum mismatch".to_string());
        }
        records.push(payload);
        offset += (RECORD_HEADER_BYTES + parsed.payload_len) as u64;
    };

    let Some(reason) = bad_record_reason else {
        return Ok(ScannedLog {
            sync,
            records,
            valid_bytes: offset,
            truncated_tail_bytes: 0,
            tail_reason: String::new(),
            hashed_bytes: hashed.bytes,
        });
    };

    // A valid record anywhere after the bad one means the log was damaged, not torn.
    let mut file = reader.into_inner();
    file.seek(SeekFrom::Start(offset)).map_err(io_error(path))?;
    // Only as far as the length taken at open: a file someone appends to meanwhile is not
    // read without end.
    let mut rest = Vec::new();
    file.take(remaining_after(path, file_len, offset)?)
        .read_to_end(&mut rest)
        .map_err(io_error(path))?;
    if let Some(position) = format::find_valid_record(&rest, 1, &sync, &mut hashed) {
        return Err(corrupt(
            path,
            offset,
            format!(
                "{reason}, and a valid record follows at byte {}",
                offset + position as u64
            ),
        ));
    }
    Ok(ScannedLog {
        sync,
        records,
        valid_bytes: offset,
        truncated_tail_bytes: file_len - offset,
        tail_reason: reason,
        hashed_bytes: hashed.bytes,
    })
}

/// Bytes of a file `file_len` long after the first `read` of them, which were read; a file
/// that was shorter when it was opened than what was then read of it changed meanwhile, and
/// is refused as corrupt rather than read on with a length that no longer holds.
fn remaining_after(path: &Path, file_len: u64, read: u64) -> Result<u64, StorageError> {
    file_len
        .checked_sub(read)
        .ok_or_else(|| corrupt(path, file_len, "the file grew while it was read"))
}

/// The read buffer for a file of `file_len` bytes: never more than the file holds, so reading a
/// small file allocates little.
fn read_buffer_bytes(file_len: u64) -> usize {
    usize::try_from(file_len).map_or(READ_BUFFER_BYTES, |len| len.min(READ_BUFFER_BYTES))
}

/// Fills `buf` as far as the reader allows; returns how many bytes were read.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_file_names_round_trip_and_others_are_not_generations() {
        assert_eq!(generation_of(&wal_file_name(7)), Some(7));
        assert_eq!(
            generation_of(&checkpoint_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(generation_of("wal-7.log"), None);
        assert_eq!(generation_of("wal-0000000000000000000x.log"), None);
        assert_eq!(generation_of(MANIFEST_FILE), None);
        assert_eq!(generation_of("LOCK"), None);
    }
}
