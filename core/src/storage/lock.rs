//! The data directory's lock file, so two replicas never write the same log.
//!
//! `LOCK` holds the pid of the process that owns the directory. It is created atomically with
//! its content (written to a private temp name, then hard-linked into place, which fails if
//! `LOCK` exists), so a concurrent opener never sees an empty lock. A lock whose pid is no
//! longer running (checked through `/proc/<pid>` on Linux) is stale, left by a killed process,
//! and is replaced. Elsewhere, or without `/proc`, an existing lock is assumed held. A `LOCK`
//! that is not a regular file (a symlink, a pipe) or holds anything but a pid is damage and
//! replaced the same way; only a regular file is ever read, and only as far as a pid goes.
//!
//! Limits, accepted for a std-only lock: a stale lock whose pid was reused by an unrelated
//! process blocks until it is removed by hand (the error names the pid); pids are per pid
//! namespace, so containers sharing one directory must not share it; and two openers racing to
//! replace the same stale lock can, in a window of microseconds, both remove it.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::StorageError;

pub(super) const LOCK_FILE: &str = "LOCK";

/// Attempts to replace a stale lock before giving up (another opener may be replacing it too).
const MAX_LOCK_ATTEMPTS: usize = 3;

/// Longest `LOCK` content read: a pid (at most 10 digits) and its newline, with room to spare.
const MAX_LOCK_BYTES: usize = 32;

/// Makes temp names unique among threads of this process opening directories at once.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Holds `LOCK` in a data directory; removes it on drop.
#[derive(Debug)]
pub(super) struct DirLock {
    path: PathBuf,
}

impl DirLock {
    pub(super) fn acquire(dir: &Path) -> Result<DirLock, StorageError> {
        let path = dir.join(LOCK_FILE);
        let pid = std::process::id();
        for _ in 0..MAX_LOCK_ATTEMPTS {
            match create_with_content(dir, &path, pid) {
                Ok(()) => {
                    remove_dead_temp_files(dir);
                    return Ok(DirLock { path });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(StorageError::Io { path, source }),
            }
            let holder = match read_holder(&path) {
                Ok(holder) => holder,
                // Released between our attempt and this read: try again.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(StorageError::Io { path, source }),
            };
            match holder {
                Some(holder) if process_may_be_alive(holder) => {
                    return Err(StorageError::Locked {
                        path: dir.to_path_buf(),
                        pid: holder,
                    });
                }
                _ => {
                    // Only `create_with_content` writes LOCK, always a regular file holding a
                    // pid, so anything else is damage, not an opener caught halfway.
                    tracing::warn!(
                        lock = %path.display(),
                        stale_pid = ?holder,
                        "removing a stale lock left by a process that is no longer running"
                    );
                    match fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(source) => return Err(StorageError::Io { path, source }),
                    }
                }
            }
        }
        let pid = read_holder(&path).ok().flatten().unwrap_or(0);
        Err(StorageError::Locked {
            path: dir.to_path_buf(),
            pid,
        })
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.path) {
            tracing::warn!(lock = %self.path.display(), error = %e, "could not remove the lock file");
        }
    }
}

/// The pid a `LOCK` holds, or `None` if it holds none: it is not a regular file (a symlink, a
/// pipe, a directory: only [`create_with_content`] makes `LOCK`, always a regular file), or
/// its content is longer than a pid or not one. Reads at most [`MAX_LOCK_BYTES`] + 1 bytes
/// and never opens anything but a regular file, so an odd `LOCK` neither blocks nor fills
/// memory.
fn read_holder(path: &Path) -> io::Result<Option<u32>> {
    if !fs::symlink_metadata(path)?.is_file() {
        return Ok(None);
    }
    let mut content = Vec::with_capacity(MAX_LOCK_BYTES + 1);
    fs::File::open(path)?
        .take(MAX_LOCK_BYTES as u64 + 1)
        .read_to_end(&mut content)?;
    if content.len() > MAX_LOCK_BYTES {
        return Ok(None);
    }
    Ok(parse_pid(&content))
}

fn parse_pid(content: &[u8]) -> Option<u32> {
    std::str::from_utf8(content).ok()?.trim().parse().ok()
}

fn temp_name(pid: u32, counter: u64) -> String {
    format!("{LOCK_FILE}.{pid}.{counter}.tmp")
}

/// Creates `path` holding `pid`, failing with `AlreadyExists` if it exists.
fn create_with_content(dir: &Path, path: &Path, pid: u32) -> io::Result<()> {
    let temp = dir.join(temp_name(pid, TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        writeln!(file, "{pid}")?;
        drop(file);
        fs::hard_link(&temp, path)
    })();
    // The temp name is ours alone; whatever happened, it is no longer needed.
    let _ = fs::remove_file(&temp);
    result
}

/// Removes lock temp files of processes that died between creating and removing them.
fn remove_dead_temp_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix(&format!("{LOCK_FILE}.")) else {
            continue;
        };
        let Some(rest) = rest.strip_suffix(".tmp") else {
            continue;
        };
        let Some(pid) = rest.split('.').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !process_may_be_alive(pid) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Whether `pid` may be a running process. Errs on "alive" when it cannot tell.
fn process_may_be_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") && Path::new("/proc/self").exists() {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pid that no running process has: above Linux's pid_max limit (2^22).
    const DEAD_PID: u32 = 4_194_304 + 17;

    #[test]
    fn second_lock_in_the_same_process_is_refused_and_drop_releases_it() {
        let dir = tempfile::tempdir().unwrap();
        let lock = DirLock::acquire(dir.path()).unwrap();
        let err = DirLock::acquire(dir.path()).unwrap_err();
        assert!(
            matches!(err, StorageError::Locked { pid, .. } if pid == std::process::id()),
            "{err}"
        );
        drop(lock);
        assert!(!dir.path().join(LOCK_FILE).exists());
        DirLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn stale_lock_and_temp_files_of_a_dead_pid_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(LOCK_FILE), format!("{DEAD_PID}\n")).unwrap();
        let dead_temp = dir.path().join(temp_name(DEAD_PID, 0));
        fs::write(&dead_temp, format!("{DEAD_PID}\n")).unwrap();
        let _lock = DirLock::acquire(dir.path()).unwrap();
        let content = fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(content.trim(), std::process::id().to_string());
        assert!(!dead_temp.exists());
    }

    #[test]
    fn garbled_lock_file_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(LOCK_FILE), b"\xff\x00not a pid").unwrap();
        let _lock = DirLock::acquire(dir.path()).unwrap();
    }
}
