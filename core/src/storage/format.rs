//! Byte layouts of the three kinds of file in a data directory, and the checksum they share.
//!
//! Every file starts with an 8-byte magic: 6 letters naming the kind of file and 2 digits of
//! version, so a foreign file is refused as "not an smr ... file" and a file from a later
//! release as an unsupported version, rather than both as garbage. Integers are little-endian.
//! The checksum is blake3 truncated to 16 bytes: a collision needs ~2^64 work, far beyond what
//! random bit rot or a torn write produces, and blake3 is already a dependency.
//!
//! ```text
//! wal-<generation>.log          "SMRWAL01" | generation u64 | record*
//!     record                    length u32 | checksum(length || payload) [16] | payload
//! checkpoint-<generation>.ckp   "SMRCKP01" | length u64 | checksum(length || payload) [16] | payload
//! MANIFEST                      "SMRMAN01" | generation u64 | checksum(magic || generation) [16]
//! ```

/// Largest record [`super::Wal::append`] accepts. A length field above it is corrupt, so a
/// flipped bit in a length can never make recovery allocate more than this (and never more
/// than the bytes actually left in the file).
pub const MAX_RECORD_BYTES: usize = 256 * 1024 * 1024;

pub(super) const MAGIC_BYTES: usize = 8;
/// The part of the magic that names the kind of file; the last two bytes are the version.
pub(super) const MAGIC_KIND_BYTES: usize = 6;
pub(super) const CHECKSUM_BYTES: usize = 16;

pub(super) const WAL_MAGIC: &[u8; MAGIC_BYTES] = b"SMRWAL01";
pub(super) const WAL_HEADER_BYTES: usize = MAGIC_BYTES + 8;
pub(super) const RECORD_HEADER_BYTES: usize = 4 + CHECKSUM_BYTES;

pub(super) const CHECKPOINT_MAGIC: &[u8; MAGIC_BYTES] = b"SMRCKP01";
pub(super) const CHECKPOINT_HEADER_BYTES: usize = MAGIC_BYTES + 8 + CHECKSUM_BYTES;

pub(super) const MANIFEST_MAGIC: &[u8; MAGIC_BYTES] = b"SMRMAN01";
pub(super) const MANIFEST_BYTES: usize = MAGIC_BYTES + 8 + CHECKSUM_BYTES;

pub(super) fn checksum(parts: &[&[u8]]) -> [u8; CHECKSUM_BYTES] {
    let mut hasher = blake3::Hasher::new();
    for part in parts {
        hasher.update(part);
    }
    let mut out = [0u8; CHECKSUM_BYTES];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..CHECKSUM_BYTES]);
    out
}

/// How a file's magic compares with the one expected.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum MagicCheck {
    Ok,
    /// Same kind of file, different version.
    OtherVersion(String),
    /// Not this kind of smr file at all.
    Foreign(String),
}

pub(super) fn check_magic(found: &[u8], expected: &[u8; MAGIC_BYTES]) -> MagicCheck {
    if found == expected {
        MagicCheck::Ok
    } else if found.len() == MAGIC_BYTES
        && found[..MAGIC_KIND_BYTES] == expected[..MAGIC_KIND_BYTES]
    {
        MagicCheck::OtherVersion(String::from_utf8_lossy(found).into_owned())
    } else {
        MagicCheck::Foreign(String::from_utf8_lossy(found).escape_debug().to_string())
    }
}

pub(super) fn wal_header(generation: u64) -> [u8; WAL_HEADER_BYTES] {
    let mut header = [0u8; WAL_HEADER_BYTES];
    header[..MAGIC_BYTES].copy_from_slice(WAL_MAGIC);
    header[MAGIC_BYTES..].copy_from_slice(&generation.to_le_bytes());
    header
}

/// Appends one encoded record to `out`. The caller has checked `payload.len() <= MAX_RECORD_BYTES`.
pub(super) fn encode_record(out: &mut Vec<u8>, payload: &[u8]) {
    assert!(
        payload.len() <= MAX_RECORD_BYTES,
        "record over the maximum reached the encoder"
    );
    let length = (payload.len() as u32).to_le_bytes();
    out.reserve(RECORD_HEADER_BYTES + payload.len());
    out.extend_from_slice(&length);
    out.extend_from_slice(&checksum(&[&length, payload]));
    out.extend_from_slice(payload);
}

/// A record header read from disk: the payload length it claims and the checksum it carries.
pub(super) struct RecordHeader {
    pub(super) payload_len: usize,
    pub(super) checksum: [u8; CHECKSUM_BYTES],
}

/// Reads a record header and checks its length against the maximum and against the bytes
/// that follow it in the file (`bytes_after_header`), before anyone allocates for the payload.
pub(super) fn parse_record_header(
    header: &[u8; RECORD_HEADER_BYTES],
    bytes_after_header: u64,
) -> Result<RecordHeader, String> {
    let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let payload_len = length as usize;
    if payload_len > MAX_RECORD_BYTES {
        return Err(format!(
            "length field {length} exceeds the maximum record size {MAX_RECORD_BYTES}"
        ));
    }
    if u64::from(length) > bytes_after_header {
        return Err(format!(
            "record claims {length} bytes of payload but only {bytes_after_header} remain in the file"
        ));
    }
    let mut checksum = [0u8; CHECKSUM_BYTES];
    checksum.copy_from_slice(&header[4..]);
    Ok(RecordHeader {
        payload_len,
        checksum,
    })
}

pub(super) fn record_checksum_matches(header: &RecordHeader, payload: &[u8]) -> bool {
    let length = (header.payload_len as u32).to_le_bytes();
    checksum(&[&length, payload]) == header.checksum
}

/// Whether a complete, valid record starts at the beginning of `bytes`. `empty_record_checksum`
/// is the (fixed) checksum of a zero-length record, so that runs of zeros, which a filesystem
/// may leave after a power loss, are rejected without hashing at every position.
fn valid_record_at(bytes: &[u8], empty_record_checksum: &[u8; CHECKSUM_BYTES]) -> bool {
    let Some(header_bytes) = bytes.get(..RECORD_HEADER_BYTES) else {
        return false;
    };
    if header_bytes[..4] == [0; 4] {
        return header_bytes[4..] == empty_record_checksum[..];
    }
    let header: &[u8; RECORD_HEADER_BYTES] =
        header_bytes.try_into().expect("slice of header length");
    let after = (bytes.len() - RECORD_HEADER_BYTES) as u64;
    match parse_record_header(header, after) {
        Ok(parsed) => {
            let payload = &bytes[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + parsed.payload_len];
            record_checksum_matches(&parsed, payload)
        }
        Err(_) => false,
    }
}

/// The first position at or after `from` where a valid record starts, if any. This is what
/// tells a torn tail (nothing valid after the bad bytes) from corruption inside the log.
///
/// Costs one hash per position whose length field fits the remaining bytes; garbage length
/// fields mostly do not, and this runs only after a bad record was found.
pub(super) fn find_valid_record(bytes: &[u8], from: usize) -> Option<usize> {
    let empty_record_checksum = checksum(&[&0u32.to_le_bytes()]);
    (from..bytes.len().saturating_sub(RECORD_HEADER_BYTES - 1))
        .find(|&position| valid_record_at(&bytes[position..], &empty_record_checksum))
}

/// Encodes a checkpoint file.
pub(super) fn encode_checkpoint(payload: &[u8]) -> Vec<u8> {
    let length = (payload.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(CHECKPOINT_HEADER_BYTES + payload.len());
    out.extend_from_slice(CHECKPOINT_MAGIC);
    out.extend_from_slice(&length);
    out.extend_from_slice(&checksum(&[&length, payload]));
    out.extend_from_slice(payload);
    out
}

pub(super) fn encode_manifest(generation: u64) -> [u8; MANIFEST_BYTES] {
    let mut out = [0u8; MANIFEST_BYTES];
    out[..MAGIC_BYTES].copy_from_slice(MANIFEST_MAGIC);
    out[MAGIC_BYTES..MAGIC_BYTES + 8].copy_from_slice(&generation.to_le_bytes());
    let sum = checksum(&[&out[..MAGIC_BYTES + 8]]);
    out[MAGIC_BYTES + 8..].copy_from_slice(&sum);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_finds_a_record_behind_garbage_and_nothing_in_garbage_alone() {
        let mut bytes = vec![0xAB; 37];
        assert_eq!(find_valid_record(&bytes, 0), None);
        encode_record(&mut bytes, b"hello");
        assert_eq!(find_valid_record(&bytes, 0), Some(37));
        assert_eq!(find_valid_record(&bytes, 38), None);
    }

    #[test]
    fn scan_finds_an_empty_record() {
        let mut bytes = vec![0u8; 5];
        encode_record(&mut bytes, b"");
        assert_eq!(find_valid_record(&bytes, 0), Some(5));
    }

    #[test]
    fn zero_filled_bytes_are_not_a_record() {
        // A filesystem may extend a file with zeros on power loss; they must read as a torn tail.
        assert_eq!(find_valid_record(&[0u8; 4096], 0), None);
    }

    #[test]
    fn magic_check_tells_foreign_files_from_other_versions() {
        assert_eq!(check_magic(b"SMRWAL01", WAL_MAGIC), MagicCheck::Ok);
        assert!(matches!(
            check_magic(b"SMRWAL07", WAL_MAGIC),
            MagicCheck::OtherVersion(_)
        ));
        assert!(matches!(
            check_magic(b"\x7fELF\x02\x01\x01\x00", WAL_MAGIC),
            MagicCheck::Foreign(_)
        ));
        assert!(matches!(
            check_magic(b"SMR", WAL_MAGIC),
            MagicCheck::Foreign(_)
        ));
    }
}
