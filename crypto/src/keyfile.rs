//! The secret key file format: `smr-ed25519-secret-key-v1\n<64 lowercase hex chars>\n`.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The first line of every key file.
pub const KEY_FILE_HEADER: &str = "smr-ed25519-secret-key-v1";

/// Key files are tiny; refuse to read anything much bigger than one.
const MAX_KEY_FILE_BYTES: u64 = 4096;

/// Why a key file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be opened, read, written or renamed.
    #[error("key file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A new key was to be written where a file already is: it is left as it was (a key it
    /// holds would be lost).
    #[error("{} already exists: it is left as it is (a key it holds would be lost); choose another path or move it aside", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The file exists but is not a valid key file.
    #[error("key file {} is malformed: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn malformed(path: &Path, reason: impl Into<String>) -> KeyFileError {
    KeyFileError::Malformed {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Whether [`write_secret`] may replace a file already at its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Existing {
    /// Replace it, atomically.
    Replace,
    /// Refuse ([`KeyFileError::Exists`]), atomically: a file that appears meanwhile is kept.
    Keep,
}

pub(crate) fn write_secret(
    path: &Path,
    secret: &[u8; 32],
    existing: Existing,
) -> Result<(), KeyFileError> {
    let contents = format!("{KEY_FILE_HEADER}\n{}\n", hex::encode(secret));
    let file_name = path
        .file_name()
        .ok_or_else(|| malformed(path, "path does not name a file"))?;
    let mut tmp_name = file_name.to_os_string();
    // Unique per process and per call, so concurrent saves never share a temporary file.
    static SAVES: AtomicU64 = AtomicU64::new(0);
    let save_id = SAVES.fetch_add(1, Ordering::Relaxed);
    tmp_name.push(format!(".tmp-{}-{save_id}", std::process::id()));
    let tmp_path = path.with_file_name(tmp_name);

    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = (|| {
        let mut file = options.open(&tmp_path).map_err(io_error(&tmp_path))?;
        file.write_all(contents.as_bytes())
            .map_err(io_error(&tmp_path))?;
        file.sync_all().map_err(io_error(&tmp_path))?;
        match existing {
            Existing::Replace => fs::rename(&tmp_path, path).map_err(io_error(path)),
            // A hard link is created only where no file is: no window in which another
            // writer's key could be replaced.
            Existing::Keep => match fs::hard_link(&tmp_path, path) {
                Ok(()) => {
                    let _ = fs::remove_file(&tmp_path);
                    Ok(())
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(KeyFileError::Exists {
                    path: path.to_path_buf(),
                }),
                Err(e) => Err(io_error(path)(e)),
            },
        }
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp_path);
    }
    result
}

pub(crate) fn read_secret(path: &Path) -> Result<[u8; 32], KeyFileError> {
    let file = fs::File::open(path).map_err(io_error(path))?;
    let mut raw = Vec::new();
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(io_error(path))?;
    if raw.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(malformed(
            path,
            format!("file is larger than {MAX_KEY_FILE_BYTES} bytes; a key file is 91 bytes"),
        ));
    }
    if raw.is_empty() {
        return Err(malformed(path, "file is empty"));
    }
    let text = std::str::from_utf8(&raw).map_err(|_| malformed(path, "file is not UTF-8 text"))?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("");
    if header.trim_end() != KEY_FILE_HEADER {
        return Err(malformed(
            path,
            format!("bad header: the first line must be {KEY_FILE_HEADER:?}"),
        ));
    }
    let key_line = match lines.next() {
        Some(line) => line.trim(),
        None => {
            return Err(malformed(
                path,
                "truncated: the header is not followed by a key line",
            ))
        }
    };
    if !key_line.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(malformed(
            path,
            "bad hex: the key line must contain only the characters 0-9 and a-f",
        ));
    }
    if key_line.len() < 64 {
        return Err(malformed(
            path,
            format!(
                "truncated: the key line has {} hex characters, expected 64",
                key_line.len()
            ),
        ));
    }
    if key_line.len() > 64 {
        return Err(malformed(
            path,
            format!(
                "wrong length: the key line has {} hex characters, expected 64",
                key_line.len()
            ),
        ));
    }
    if lines.any(|line| !line.trim().is_empty()) {
        return Err(malformed(path, "unexpected content after the key line"));
    }
    let mut secret = [0u8; 32];
    hex::decode_to_slice(key_line, &mut secret)
        .map_err(|_| malformed(path, "bad hex in the key line"))?;
    Ok(secret)
}
