//! Byte layouts of the three kinds of file in a data directory, and the checksum they share.
//!
//! Every file starts with an 8-byte magic: 6 letters naming the kind of file and 2 digits of
//! version, so a foreign file is refused as "not an smr ... file" and a file from a later
//! release as an unsupported version, rather than both as garbage. Integers are little-endian.
//! The checksum is blake3 truncated to 16 bytes: a collision needs ~2^64 work, far beyond what
//! random bit rot or a torn write produces, and blake3 is already a dependency.
//!
//! ```text
//! wal-<generation>.log          "SMRWAL02" | generation u64 | sync [8]
//!                               | checksum(magic || generation || sync) [16] | record*
//!     record                    sync [8] | length u32 | checksum(sync || length) [first 4]
//!                               | checksum(length || payload) [16] | payload
//! checkpoint-<generation>.ckp   "SMRCKP01" | length u64 | checksum(length || payload) [16] | payload
//! MANIFEST                      "SMRMAN01" | generation u64 | checksum(magic || generation) [16]
//! ```
//!
//! **Why every record starts with the log's sync marker.** After a bad record, recovery looks
//! for a valid record anywhere behind it (that tells damage inside the log from a torn tail).
//! Version 01 tried every byte position and hashed as many bytes as the length field there
//! claimed, so recovery was quadratic in the tail: payloads hold client-chosen operation bytes
//! verbatim, and 512 KiB of `00 00 04 00` took 2.4 s (16 MiB, 40 minutes). Now a position is a
//! candidate only if it holds the 8 random bytes drawn when the file was created (as the sync
//! marker of Avro's container files) and a header check over them and the length; only then is
//! the payload hashed. Clients never see the marker, so their bytes cannot form a candidate,
//! and the payload spans of real records do not overlap, so the scan hashes each byte of the
//! file at most once (`find_valid_record`): recovery is linear in the file. Version 01 files
//! exist in no released data directory (nothing was released), so they are refused as an
//! unsupported version rather than read.

/// Largest record [`super::Wal::append`] accepts: whatever a record header's 4-byte length
/// field can say (4 GiB - 1). [`crate::EngineConfig::validate`] refuses a config under which
/// the engine could build a larger record
/// ([`RecordBounds`](crate::frame_limits::RecordBounds)), so a correct replica never fails
/// an append for its size (it was 256 MiB, below a SYNC the default limits allow at n = 4).
///
/// Recovery does not trust the length field for how much to allocate: `parse_record_header`
/// refuses a length above the bytes left in the file before the payload is read, so a flipped
/// bit in a length makes recovery allocate at most the file's size.
pub const MAX_RECORD_BYTES: usize = u32::MAX as usize;

pub(super) const MAGIC_BYTES: usize = 8;
/// The part of the magic that names the kind of file; the last two bytes are the version.
pub(super) const MAGIC_KIND_BYTES: usize = 6;
pub(super) const CHECKSUM_BYTES: usize = 16;
/// The per-log random marker every record of the log starts with.
pub(super) const SYNC_BYTES: usize = 8;
/// The truncated checksum over a record's sync marker and length.
const HEADER_CHECK_BYTES: usize = 4;

pub(super) const WAL_MAGIC: &[u8; MAGIC_BYTES] = b"SMRWAL02";
pub(super) const WAL_HEADER_BYTES: usize = MAGIC_BYTES + 8 + SYNC_BYTES + CHECKSUM_BYTES;
pub(super) const RECORD_HEADER_BYTES: usize = SYNC_BYTES + 4 + HEADER_CHECK_BYTES + CHECKSUM_BYTES;

pub(super) const CHECKPOINT_MAGIC: &[u8; MAGIC_BYTES] = b"SMRCKP01";
pub(super) const CHECKPOINT_HEADER_BYTES: usize = MAGIC_BYTES + 8 + CHECKSUM_BYTES;

pub(super) const MANIFEST_MAGIC: &[u8; MAGIC_BYTES] = b"SMRMAN01";
pub(super) const MANIFEST_BYTES: usize = MAGIC_BYTES + 8 + CHECKSUM_BYTES;

/// A log's sync marker.
pub(super) type SyncMarker = [u8; SYNC_BYTES];

pub(super) fn checksum(parts: &[&[u8]]) -> [u8; CHECKSUM_BYTES] {
    let mut hasher = blake3::Hasher::new();
    for part in parts {
        hasher.update(part);
    }
    let mut out = [0u8; CHECKSUM_BYTES];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..CHECKSUM_BYTES]);
    out
}

/// [`checksum`] that adds the bytes it hashed to a counter: what recovery reports as its work
/// ([`super::Wal::recovery_hashed_bytes`]).
#[derive(Debug, Default)]
pub(super) struct Hashed {
    pub(super) bytes: u64,
}

impl Hashed {
    pub(super) fn checksum(&mut self, parts: &[&[u8]]) -> [u8; CHECKSUM_BYTES] {
        self.bytes = parts.iter().fold(self.bytes, |sum, part| {
            sum.saturating_add(part.len() as u64)
        });
        checksum(parts)
    }
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

pub(super) fn wal_header(generation: u64, sync: &SyncMarker) -> [u8; WAL_HEADER_BYTES] {
    let mut header = [0u8; WAL_HEADER_BYTES];
    let body = MAGIC_BYTES + 8 + SYNC_BYTES;
    header[..MAGIC_BYTES].copy_from_slice(WAL_MAGIC);
    header[MAGIC_BYTES..MAGIC_BYTES + 8].copy_from_slice(&generation.to_le_bytes());
    header[MAGIC_BYTES + 8..body].copy_from_slice(sync);
    let sum = checksum(&[&header[..body]]);
    header[body..].copy_from_slice(&sum);
    header
}

/// A log header read from disk (its magic already checked): the generation and the sync
/// marker it names, or why it is not a valid header.
pub(super) fn parse_wal_header(
    header: &[u8; WAL_HEADER_BYTES],
) -> Result<(u64, SyncMarker), String> {
    let body = MAGIC_BYTES + 8 + SYNC_BYTES;
    if checksum(&[&header[..body]])[..] != header[body..] {
        return Err("log header checksum mismatch".to_string());
    }
    let generation = u64::from_le_bytes(
        header[MAGIC_BYTES..MAGIC_BYTES + 8]
            .try_into()
            .expect("8 bytes"),
    );
    let sync: SyncMarker = header[MAGIC_BYTES + 8..body]
        .try_into()
        .expect("sync bytes");
    Ok((generation, sync))
}

fn header_check(sync: &SyncMarker, length: &[u8; 4]) -> [u8; HEADER_CHECK_BYTES] {
    let sum = checksum(&[sync, length]);
    [sum[0], sum[1], sum[2], sum[3]]
}

/// Appends one encoded record to `out`. The caller has checked `payload.len() <= MAX_RECORD_BYTES`.
pub(super) fn encode_record(out: &mut Vec<u8>, sync: &SyncMarker, payload: &[u8]) {
    assert!(
        payload.len() <= MAX_RECORD_BYTES,
        "record over the maximum reached the encoder"
    );
    let length = (payload.len() as u32).to_le_bytes();
    out.reserve(RECORD_HEADER_BYTES + payload.len());
    out.extend_from_slice(sync);
    out.extend_from_slice(&length);
    out.extend_from_slice(&header_check(sync, &length));
    out.extend_from_slice(&checksum(&[&length, payload]));
    out.extend_from_slice(payload);
}

/// A record header read from disk: the payload length it claims and the checksum it carries.
pub(super) struct RecordHeader {
    pub(super) payload_len: usize,
    pub(super) checksum: [u8; CHECKSUM_BYTES],
}

/// Reads a record header: checks the sync marker, the header check, and the length against
/// the maximum and against the bytes that follow it in the file (`bytes_after_header`),
/// before anyone allocates for or hashes the payload.
pub(super) fn parse_record_header(
    header: &[u8],
    sync: &SyncMarker,
    bytes_after_header: u64,
    hashed: &mut Hashed,
) -> Result<RecordHeader, String> {
    let Some(header) = header.get(..RECORD_HEADER_BYTES) else {
        return Err(format!(
            "file ends inside a record header ({} of {RECORD_HEADER_BYTES} bytes)",
            header.len()
        ));
    };
    if header[..SYNC_BYTES] != sync[..] {
        return Err("no record starts here (the log's sync marker is missing)".to_string());
    }
    let length: [u8; 4] = header[SYNC_BYTES..SYNC_BYTES + 4]
        .try_into()
        .expect("4 bytes");
    let check_at = SYNC_BYTES + 4;
    let check = hashed.checksum(&[sync, &length]);
    if check[..HEADER_CHECK_BYTES] != header[check_at..check_at + HEADER_CHECK_BYTES] {
        return Err("record header check mismatch".to_string());
    }
    let length = u32::from_le_bytes(length);
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
    checksum.copy_from_slice(&header[check_at + HEADER_CHECK_BYTES..]);
    Ok(RecordHeader {
        payload_len,
        checksum,
    })
}

pub(super) fn record_checksum_matches(
    header: &RecordHeader,
    payload: &[u8],
    hashed: &mut Hashed,
) -> bool {
    let length = (header.payload_len as u32).to_le_bytes();
    hashed.checksum(&[&length, payload]) == header.checksum
}

/// The first position at or after `from` where a valid record starts, if any. This is what
/// tells a torn tail (nothing valid after the bad bytes) from corruption inside the log.
///
/// Linear in `bytes`: candidates are the positions holding the sync marker (a search for 8
/// fixed bytes) whose header check passes, and only a candidate's payload is hashed. A
/// candidate starting inside the payload of an earlier one that failed its checksum is
/// skipped: that earlier one had an intact header, so it is a real (torn) record, and a real
/// record never starts inside another. So no byte is hashed twice.
pub(super) fn find_valid_record(
    bytes: &[u8],
    from: usize,
    sync: &SyncMarker,
    hashed: &mut Hashed,
) -> Option<usize> {
    let mut hashed_until = 0;
    let mut position = from;
    while let Some(found) = bytes
        .get(position..)?
        .windows(SYNC_BYTES)
        .position(|window| window == sync)
    {
        let start = position + found;
        position = start + 1;
        if start < hashed_until {
            continue;
        }
        let after_header = bytes.len().saturating_sub(start + RECORD_HEADER_BYTES) as u64;
        let Ok(parsed) = parse_record_header(&bytes[start..], sync, after_header, hashed) else {
            continue;
        };
        let payload_start = start + RECORD_HEADER_BYTES;
        let payload_end = payload_start + parsed.payload_len;
        if record_checksum_matches(&parsed, &bytes[payload_start..payload_end], hashed) {
            return Some(start);
        }
        hashed_until = payload_end;
    }
    None
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

    const SYNC: SyncMarker = *b"\x91sync\x07\x13\x00";

    #[test]
    fn scan_finds_a_record_behind_garbage_and_nothing_in_garbage_alone() {
        let mut bytes = vec![0xAB; 37];
        let mut hashed = Hashed::default();
        assert_eq!(find_valid_record(&bytes, 0, &SYNC, &mut hashed), None);
        encode_record(&mut bytes, &SYNC, b"hello");
        assert_eq!(find_valid_record(&bytes, 0, &SYNC, &mut hashed), Some(37));
        assert_eq!(find_valid_record(&bytes, 38, &SYNC, &mut hashed), None);
        assert_eq!(find_valid_record(&bytes, 1000, &SYNC, &mut hashed), None);
    }

    #[test]
    fn scan_finds_an_empty_record() {
        let mut bytes = vec![0u8; 5];
        encode_record(&mut bytes, &SYNC, b"");
        let mut hashed = Hashed::default();
        assert_eq!(find_valid_record(&bytes, 0, &SYNC, &mut hashed), Some(5));
    }

    #[test]
    fn zero_filled_bytes_are_not_a_record_and_cost_no_hashing() {
        // A filesystem may extend a file with zeros on power loss; they must read as a torn tail.
        let mut hashed = Hashed::default();
        assert_eq!(find_valid_record(&[0u8; 4096], 0, &SYNC, &mut hashed), None);
        assert_eq!(hashed.bytes, 0);
    }

    #[test]
    fn a_record_of_another_log_is_not_a_record_of_this_one() {
        let mut bytes = Vec::new();
        encode_record(&mut bytes, b"another!", b"hello");
        let mut hashed = Hashed::default();
        assert_eq!(find_valid_record(&bytes, 0, &SYNC, &mut hashed), None);
        assert_eq!(hashed.bytes, 0);
    }

    #[test]
    fn scan_hashes_each_byte_at_most_once_even_behind_torn_records_claiming_the_rest() {
        // Torn records whose headers are intact and whose lengths claim the rest of the file,
        // with headers of more torn records inside their payloads: a quadratic scan would hash
        // the tail once per header.
        let mut bytes = Vec::new();
        let count = 64;
        let tail = 64 * 1024;
        for i in 0..count {
            let length = ((count - 1 - i) * RECORD_HEADER_BYTES + tail) as u32;
            let length = length.to_le_bytes();
            bytes.extend_from_slice(&SYNC);
            bytes.extend_from_slice(&length);
            bytes.extend_from_slice(&header_check(&SYNC, &length));
            bytes.extend_from_slice(&[0xEE; CHECKSUM_BYTES]);
        }
        bytes.resize(bytes.len() + tail, 0x11);
        let mut hashed = Hashed::default();
        assert_eq!(find_valid_record(&bytes, 0, &SYNC, &mut hashed), None);
        assert!(
            hashed.bytes <= 2 * bytes.len() as u64,
            "hashed {} bytes of a {}-byte tail",
            hashed.bytes,
            bytes.len()
        );
    }

    #[test]
    fn header_round_trips_and_a_flipped_bit_anywhere_in_it_is_refused() {
        let header = wal_header(7, &SYNC);
        assert_eq!(parse_wal_header(&header), Ok((7, SYNC)));
        for at in MAGIC_BYTES..WAL_HEADER_BYTES {
            let mut damaged = header;
            damaged[at] ^= 1;
            assert!(parse_wal_header(&damaged).is_err(), "flip at {at}");
        }
    }

    #[test]
    fn magic_check_tells_foreign_files_from_other_versions() {
        assert_eq!(check_magic(b"SMRWAL02", WAL_MAGIC), MagicCheck::Ok);
        assert!(matches!(
            check_magic(b"SMRWAL01", WAL_MAGIC),
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
