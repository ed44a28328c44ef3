//! The store's on-disk format: file names, the header and slot blocks, the
//! manifest (see the module doc of [`super`]). Pure functions of bytes,
//! except the readers at the end, which read a file and decode it.

use super::*;

/// Whether the name is one the store accepts (as the config does).
pub(super) fn valid_export(export: &str) -> bool {
    !export.is_empty() && export.len() <= EXPORT_NAME_MAX
}

/// The fence file name of an export.
pub(super) fn file_name_of(export: &str) -> String {
    assert!(!export.is_empty(), "export names are not empty");
    assert!(
        export.len() <= EXPORT_NAME_MAX,
        "export names are at most {EXPORT_NAME_MAX} bytes"
    );
    let bytes = export.as_bytes();
    let name = if 2 * bytes.len() <= HEX_NAME_MAX {
        format!("{FILE_PREFIX}{}", encode_hex(bytes))
    } else {
        format!(
            "{FILE_PREFIX}{HASHED_MARK}{:016x}{:016x}",
            fnv1a64(bytes),
            mix64(bytes)
        )
    };
    debug_assert!(name.len() + TMP_SUFFIX.len() <= 255);
    name
}

/// FNV-1a, 64 bits. Part of the file name format: do not change.
pub(super) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A second, unrelated 64-bit hash (multiply-xorshift over the bytes in
/// reverse, murmur3's finalizer). Part of the file name format: do not change.
pub(super) fn mix64(bytes: &[u8]) -> u64 {
    let len = u64::try_from(bytes.len()).expect("short name");
    let mut hash: u64 = 0x9e37_79b9_7f4a_7c15 ^ len;
    for &byte in bytes.iter().rev() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        hash ^= hash >> 29;
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

pub(super) fn encode_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut hex = String::with_capacity(2 * bytes.len());
    for byte in bytes {
        write!(hex, "{byte:02x}").expect("writing to a String");
    }
    hex
}

/// Decodes lowercase hex only, so that every name has one spelling.
pub(super) fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let hex = hex.as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    hex.chunks_exact(2)
        .map(|pair| Some((digit(pair[0])? << 4) | digit(pair[1])?))
        .collect()
}

pub(super) fn name_crc(export: &str) -> u32 {
    crc32fast::hash(export.as_bytes())
}

pub(super) fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

pub(super) fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

pub(super) fn encode_header(export: &str) -> [u8; BLOCK_SIZE] {
    assert!(valid_export(export));
    let name = export.as_bytes();
    let mut block = [0u8; BLOCK_SIZE];
    block[..8].copy_from_slice(HEADER_MAGIC);
    block[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    let name_len = u32::try_from(name.len()).expect("name of at most 256 bytes");
    block[12..16].copy_from_slice(&name_len.to_le_bytes());
    let end = HEADER_FIXED_SIZE + name.len();
    block[HEADER_FIXED_SIZE..end].copy_from_slice(name);
    let crc = crc32fast::hash(&block[..end]);
    block[end..end + 4].copy_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(decode_header(&block).as_deref(), Ok(export));
    block
}

/// The export a header names, or why the header is invalid.
pub(super) fn decode_header(block: &[u8]) -> Result<String, String> {
    if block.len() < BLOCK_SIZE {
        return Err(format!(
            "file is {} bytes, shorter than its {BLOCK_SIZE}-byte header",
            block.len()
        ));
    }
    let block = &block[..BLOCK_SIZE];
    if &block[..8] != HEADER_MAGIC {
        return Err("bad magic".into());
    }
    let version = read_u32(block, 8);
    if version != FORMAT_VERSION {
        return Err(format!("unknown format version {version}"));
    }
    let name_len = usize::try_from(read_u32(block, 12)).unwrap_or(usize::MAX);
    if name_len == 0 || name_len > EXPORT_NAME_MAX {
        return Err(format!("name length {name_len} out of range"));
    }
    let end = HEADER_FIXED_SIZE + name_len;
    if crc32fast::hash(&block[..end]) != read_u32(block, end) {
        return Err("checksum mismatch".into());
    }
    if block[end + 4..].iter().any(|&byte| byte != 0) {
        return Err("non-zero bytes after the checksum".into());
    }
    String::from_utf8(block[HEADER_FIXED_SIZE..end].to_vec())
        .map_err(|_| "name is not UTF-8".into())
}

pub(super) fn encode_slot(name_crc: u32, seq: u64, fence: u64) -> [u8; BLOCK_SIZE] {
    let mut block = [0u8; BLOCK_SIZE];
    block[..8].copy_from_slice(SLOT_MAGIC);
    block[8..16].copy_from_slice(&seq.to_le_bytes());
    block[16..24].copy_from_slice(&fence.to_le_bytes());
    block[24..28].copy_from_slice(&name_crc.to_le_bytes());
    let crc = crc32fast::hash(&block[..SLOT_CRC_OFFSET]);
    block[SLOT_CRC_OFFSET..SLOT_USED_SIZE].copy_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(decode_slot(&block, name_crc), Ok(SlotValue { seq, fence }));
    block
}

/// A slot's value, or why it is invalid. `block` is what the file holds of
/// the slot: shorter than a block if the file was truncated.
pub(super) fn decode_slot(block: &[u8], name_crc: u32) -> Result<SlotValue, &'static str> {
    if block.len() < BLOCK_SIZE {
        return Err("truncated");
    }
    if &block[..8] != SLOT_MAGIC {
        return Err("bad magic");
    }
    if crc32fast::hash(&block[..SLOT_CRC_OFFSET]) != read_u32(block, SLOT_CRC_OFFSET) {
        return Err("checksum mismatch");
    }
    if read_u32(block, 24) != name_crc {
        return Err("written for another export");
    }
    if block[SLOT_USED_SIZE..BLOCK_SIZE]
        .iter()
        .any(|&byte| byte != 0)
    {
        return Err("non-zero bytes after the checksum");
    }
    Ok(SlotValue {
        seq: read_u64(block, 8),
        fence: read_u64(block, 16),
    })
}

/// The bytes of a fence file whose two slots hold `(seq, fence)`.
pub(super) fn encode_file(export: &str, seq: u64, fence: u64) -> Vec<u8> {
    let slot = encode_slot(name_crc(export), seq, fence);
    let mut bytes = Vec::with_capacity(FILE_SIZE);
    bytes.extend_from_slice(&encode_header(export));
    bytes.extend_from_slice(&slot);
    bytes.extend_from_slice(&slot);
    assert_eq!(bytes.len(), FILE_SIZE);
    bytes
}

/// Decodes a fence file's bytes (at most `FILE_SIZE` are looked at).
pub(super) fn decode_file(bytes: &[u8], export: &str, path: &Path) -> Result<Slots, Damage> {
    let found = decode_header(bytes).map_err(|reason| Damage::BadHeader {
        path: path.to_path_buf(),
        reason,
    })?;
    if found != export {
        return Err(Damage::WrongExport {
            path: path.to_path_buf(),
            found,
        });
    }
    let crc = name_crc(export);
    let decoded = SLOT_OFFSETS.map(|offset| {
        let end = bytes.len().min(offset + BLOCK_SIZE);
        decode_slot(bytes.get(offset..end).unwrap_or_default(), crc)
    });
    match decoded {
        [Err(reason_a), Err(reason_b)] => Err(Damage::BothSlotsBad {
            path: path.to_path_buf(),
            reason_a: reason_a.into(),
            reason_b: reason_b.into(),
        }),
        _ => {
            for (index, result) in decoded.iter().enumerate() {
                if let Err(reason) = result {
                    tracing::warn!(
                        path = %path.display(),
                        slot = SLOT_NAMES[index],
                        reason,
                        "fence slot invalid (torn write or damage); using its twin"
                    );
                }
            }
            let slots = Slots {
                slots: decoded.map(Result::ok),
            };
            if let [Some(a), Some(b)] = slots.slots {
                if a.seq == b.seq && a.fence != b.fence {
                    tracing::warn!(
                        path = %path.display(),
                        "fence slots have one sequence but different fences; using the higher"
                    );
                }
            }
            Ok(slots)
        }
    }
}

/// Reads and decodes a fence file; `Ok(None)` if it does not exist.
pub(super) fn read_fence_file(path: &Path, export: &str) -> Result<Option<Slots>, Damage> {
    let mut bytes = [0u8; FILE_SIZE];
    let len = match durable::read_prefix(path, &mut bytes) {
        Ok(Some(len)) => len,
        Ok(None) => return Ok(None),
        Err(error) => {
            let (_, path, error) = error.into_parts();
            return Err(Damage::Io {
                path,
                error: error.to_string(),
            });
        }
    };
    decode_file(&bytes[..len], export, path).map(Some)
}

/// The export named by a fence file's header, if it is valid.
pub(super) fn read_header_name(path: &Path) -> Option<String> {
    let mut block = [0u8; BLOCK_SIZE];
    let len = durable::read_prefix(path, &mut block).ok()??;
    decode_header(&block[..len])
        .ok()
        .filter(|name| valid_export(name))
}

pub(super) fn encode_manifest(names: &BTreeSet<String>) -> Vec<u8> {
    let mut text = String::new();
    text.push_str(MANIFEST_MAGIC);
    text.push('\n');
    for name in names {
        assert!(valid_export(name));
        text.push_str(&encode_hex(name.as_bytes()));
        text.push('\n');
    }
    let crc = crc32fast::hash(text.as_bytes());
    text.push_str(&format!("crc {crc:08x}\n"));
    text.into_bytes()
}

pub(super) fn parse_manifest(bytes: &[u8]) -> Result<BTreeSet<String>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())?;
    let body = text
        .strip_suffix('\n')
        .ok_or_else(|| "does not end with a newline".to_owned())?;
    let (covered, crc_line) = match body.rfind('\n') {
        Some(at) => (&text[..=at], &body[at + 1..]),
        None => return Err("too short".into()),
    };
    let crc = crc_line
        .strip_prefix("crc ")
        .filter(|hex| hex.len() == 8)
        .and_then(decode_hex)
        .ok_or_else(|| "no checksum line".to_owned())?;
    let crc = u32::from_be_bytes(crc.try_into().expect("4 bytes"));
    if crc32fast::hash(covered.as_bytes()) != crc {
        return Err("checksum mismatch".into());
    }
    let mut lines = covered.split_terminator('\n');
    if lines.next() != Some(MANIFEST_MAGIC) {
        return Err("bad magic line".into());
    }
    let mut names = BTreeSet::new();
    for (index, line) in lines.enumerate() {
        let name = decode_hex(line)
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .filter(|name| valid_export(name))
            .ok_or_else(|| format!("entry {} is not a hex-encoded export name", index + 1))?;
        if !names.insert(name) {
            return Err(format!("entry {} is listed twice", index + 1));
        }
    }
    Ok(names)
}

/// The names a broken manifest still shows, for the operator's log.
pub(super) fn salvage_manifest(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter_map(|line| String::from_utf8(decode_hex(line)?).ok())
        .filter(|name| valid_export(name))
        .collect()
}
