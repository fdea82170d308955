//! Secret key files: round trip, permissions, and clear errors that name the file.

use std::fs;
use std::path::Path;

use smr_crypto::{IdentityKey, KeyFileError};

const HEADER: &str = "smr-ed25519-secret-key-v1";

fn load_err(path: &Path) -> KeyFileError {
    IdentityKey::load(path).expect_err("loading must fail")
}

fn assert_malformed(path: &Path, contents: &[u8], expected_reason: &str) {
    fs::write(path, contents).unwrap();
    let err = load_err(path);
    let message = err.to_string();
    assert!(
        matches!(&err, KeyFileError::Malformed { path: p, .. } if p == path),
        "{err:?}"
    );
    assert!(
        message.contains(&path.display().to_string()),
        "message must name the file: {message}"
    );
    assert!(
        message.contains(expected_reason),
        "message must say {expected_reason:?}: {message}"
    );
}

#[test]
fn key_file_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica-0.key");
    let key = IdentityKey::generate();
    key.save(&path).unwrap();
    let loaded = IdentityKey::load(&path).unwrap();
    assert_eq!(loaded.public_key(), key.public_key());
    assert_eq!(loaded.to_pkcs8_der(), key.to_pkcs8_der());
}

#[test]
fn key_file_has_the_documented_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    let seed = [0x5a; 32];
    IdentityKey::from_seed(seed).save(&path).unwrap();
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        format!("{HEADER}\n{}\n", hex::encode(seed))
    );
}

#[cfg(unix)]
#[test]
fn key_file_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    IdentityKey::generate().save(&path).unwrap();
    let mode = fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[cfg(unix)]
#[test]
fn saving_over_a_world_readable_file_replaces_it_with_a_private_one() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    fs::write(&path, "old").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let key = IdentityKey::generate();
    key.save(&path).unwrap();
    let mode = fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        IdentityKey::load(&path).unwrap().public_key(),
        key.public_key()
    );
}

#[test]
fn saving_overwrites_an_existing_key_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    IdentityKey::from_seed([1; 32]).save(&path).unwrap();
    let second = IdentityKey::from_seed([2; 32]);
    second.save(&path).unwrap();
    assert_eq!(
        IdentityKey::load(&path).unwrap().public_key(),
        second.public_key()
    );
    let entries: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 1);
}

#[test]
fn saving_into_a_missing_directory_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("k");
    let err = IdentityKey::generate().save(&path).unwrap_err();
    assert!(matches!(err, KeyFileError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-dir"), "{err}");
}

#[test]
fn missing_key_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.key");
    let err = load_err(&path);
    match &err {
        KeyFileError::Io { path: p, source } => {
            assert_eq!(p, &path);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Io, got {other:?}"),
    }
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn key_file_with_bad_header_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    assert_malformed(
        &path,
        format!("smr-ed25519-secret-key-v2\n{}\n", "ab".repeat(32)).as_bytes(),
        "bad header",
    );
    // A bare hex key without the header is refused too, and its secret is not echoed.
    let secret = "cd".repeat(32);
    assert_malformed(&path, format!("{secret}\n").as_bytes(), "bad header");
    assert!(!load_err(&path).to_string().contains(&secret));
}

#[test]
fn key_file_with_bad_hex_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    let mut line = "ab".repeat(32);
    line.replace_range(10..11, "g");
    assert_malformed(&path, format!("{HEADER}\n{line}\n").as_bytes(), "bad hex");
    assert!(!load_err(&path).to_string().contains(&line));
}

#[test]
fn truncated_key_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    assert_malformed(&path, format!("{HEADER}\n").as_bytes(), "truncated");
    assert_malformed(&path, HEADER.as_bytes(), "truncated");
    assert_malformed(
        &path,
        format!("{HEADER}\n{}", &"ab".repeat(32)[..40]).as_bytes(),
        "truncated: the key line has 40 hex characters, expected 64",
    );
    assert_malformed(&path, b"", "file is empty");
}

#[test]
fn key_file_with_too_long_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    assert_malformed(
        &path,
        format!("{HEADER}\n{}\n", "ab".repeat(33)).as_bytes(),
        "wrong length: the key line has 66 hex characters, expected 64",
    );
}

#[test]
fn key_file_with_trailing_content_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    assert_malformed(
        &path,
        format!("{HEADER}\n{}\nextra\n", "ab".repeat(32)).as_bytes(),
        "unexpected content after the key line",
    );
}

#[test]
fn key_file_tolerates_crlf_line_endings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    let seed = [0x11; 32];
    fs::write(&path, format!("{HEADER}\r\n{}\r\n", hex::encode(seed))).unwrap();
    assert_eq!(
        IdentityKey::load(&path).unwrap().public_key(),
        IdentityKey::from_seed(seed).public_key()
    );
}

#[test]
fn binary_or_huge_key_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    assert_malformed(&path, &[0xff, 0xfe, 0x00], "not UTF-8");
    assert_malformed(&path, &vec![b'a'; 10_000], "larger than");
}

#[test]
fn concurrent_saves_to_one_path_all_succeed_and_leave_a_whole_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    let keys: Vec<IdentityKey> = (0..8u8).map(|i| IdentityKey::from_seed([i; 32])).collect();
    std::thread::scope(|scope| {
        for key in &keys {
            let path = &path;
            scope.spawn(move || key.save(path).unwrap());
        }
    });
    let loaded = IdentityKey::load(&path).unwrap().public_key();
    assert!(keys.iter().any(|k| k.public_key() == loaded));
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

/// `save_new` never replaces a file: of eight concurrent writers to one path exactly one
/// succeeds, the others get `Exists`, and the file holds the winner's key, whole, with no
/// temporary file left behind.
#[test]
fn a_new_key_is_written_only_where_no_file_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    let keys: Vec<IdentityKey> = (0..8u8).map(|i| IdentityKey::from_seed([i; 32])).collect();
    let results: Vec<Result<(), KeyFileError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = keys
            .iter()
            .map(|key| {
                let path = &path;
                scope.spawn(move || key.save_new(path))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners: Vec<usize> = (0..8).filter(|&i| results[i].is_ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for (i, result) in results.iter().enumerate() {
        if i != winners[0] {
            match result {
                Err(e @ KeyFileError::Exists { path: p }) => {
                    assert_eq!(p, &path);
                    assert!(e.to_string().contains("already exists"), "{e}");
                }
                other => panic!("writer {i}: {other:?}"),
            }
        }
    }
    assert_eq!(
        IdentityKey::load(&path).unwrap().public_key(),
        keys[winners[0]].public_key()
    );
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    // An existing file of any kind is kept as it is.
    let other = dir.path().join("notes");
    fs::write(&other, "keep me").unwrap();
    assert!(matches!(
        keys[0].save_new(&other),
        Err(KeyFileError::Exists { .. })
    ));
    assert_eq!(fs::read_to_string(&other).unwrap(), "keep me");
}
