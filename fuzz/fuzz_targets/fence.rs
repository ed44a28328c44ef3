//! The fencing proxy's durable fence store: `palisade_fencing_proxy::fence::
//! FenceStore` opening a state directory whose fence file and `MANIFEST`
//! hold arbitrary bytes, then reading, raising and reopening.
//!
//! Input: a mode byte, then the two files. Each is either raw bytes from
//! the input, or a valid file written by the store itself (export "disk0"
//! at fence 9) with patches applied: a byte, a 64-bit field of a slot
//! (sequence or fence), a truncation, the header's name length; the
//! patched file's checksums can be recomputed (mode bit), so that damage
//! the CRCs cannot see is reached too.
//!
//! Asserts (fencing-proxy/src/fence/ module docs, DESIGN.md S3):
//! - no panic on any directory contents;
//! - it never guesses: a fence read as known is the fence field of one of
//!   the file's two slots, or 0 with no file at all; a file the manifest
//!   lists that is gone reads as damaged (Missing);
//! - every single changed byte is survived or reported: the valid file
//!   with one byte changed reads as its fence (the byte was in a slot, the
//!   twin holds the value) or as damaged (the byte was in the header);
//! - a damaged fence cannot be raised (`raise` refuses);
//! - a known fence only goes up, durably: raising it to v + 1 returns
//!   v + 1, raising it to below returns the fence unchanged, and a store
//!   opened again reads v + 1.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use palisade_fuzz::Input;
use palisade_fencing_proxy::fence::{Damage, Fence, FenceError, FenceStore};

const EXPORT: &str = "disk0";
const TEMPLATE_FENCE: u64 = 9;
const BLOCK: usize = 4096;
const FILE_SIZE: usize = 3 * BLOCK;
const SLOTS: [usize; 2] = [BLOCK, 2 * BLOCK];

struct Template {
    dir: PathBuf,
    file_name: String,
    file: Vec<u8>,
    manifest: Vec<u8>,
}

fn template() -> &'static Template {
    static TEMPLATE: OnceLock<Template> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let dir = palisade_fuzz::scratch_dir("fence");
        let store = FenceStore::open(&dir.join("template")).expect("open template store");
        store.raise(EXPORT, 5).expect("raise");
        store.raise(EXPORT, TEMPLATE_FENCE).expect("raise");
        let path = store.path_of(EXPORT);
        let file = std::fs::read(&path).expect("template fence file");
        let manifest = std::fs::read(dir.join("template/MANIFEST")).expect("template manifest");
        assert_eq!(file.len(), FILE_SIZE);
        let file_name = path
            .file_name()
            .expect("a file")
            .to_string_lossy()
            .into_owned();
        drop(store);
        Template {
            dir: dir.join("state"),
            file_name,
            file,
            manifest,
        }
    })
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    bytes
        .get(at..at + 8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// Recomputes the header's and both slots' checksums (and, if asked, the
/// slots' name checksums) so that the store's semantics, not its CRC test,
/// judge the file.
fn fix_checksums(file: &mut [u8], fix_name_crc: bool) {
    if file.len() >= 16 {
        let name_len = u32::from_le_bytes(file[12..16].try_into().expect("4")) as usize;
        let end = 16 + name_len;
        if end + 4 <= file.len().min(BLOCK) {
            let sum = crc(&file[..end]);
            file[end..end + 4].copy_from_slice(&sum.to_le_bytes());
        }
    }
    for slot in SLOTS {
        if file.len() >= slot + 32 {
            if fix_name_crc {
                let name = crc(EXPORT.as_bytes());
                file[slot + 24..slot + 28].copy_from_slice(&name.to_le_bytes());
            }
            let sum = crc(&file[slot..slot + 28]);
            file[slot + 28..slot + 32].copy_from_slice(&sum.to_le_bytes());
        }
    }
}

/// The patched template file; also says whether exactly one byte changed.
fn patched_file(input: &mut Input, base: &[u8]) -> (Vec<u8>, Option<usize>) {
    let mut file = base.to_vec();
    let patches = input.byte() % 8;
    for _ in 0..patches {
        match input.byte() % 4 {
            0 => {
                let at = usize::from(input.u16()) % FILE_SIZE;
                if at < file.len() {
                    file[at] = input.byte();
                }
            }
            1 => {
                let slot = SLOTS[usize::from(input.byte() & 1)];
                let field = slot + 8 + 8 * usize::from(input.byte() & 1);
                let value = input.choose(&[
                    0,
                    1,
                    TEMPLATE_FENCE - 1,
                    TEMPLATE_FENCE + 1,
                    u64::MAX - 1,
                    u64::MAX,
                ]);
                if field + 8 <= file.len() {
                    file[field..field + 8].copy_from_slice(&value.to_le_bytes());
                }
            }
            2 => {
                let len = usize::from(input.u16()) % (FILE_SIZE + 1);
                file.truncate(len);
            }
            _ => {
                let len = input.choose(&[0u32, 4, 5, 6, 4096, u32::MAX]);
                if file.len() >= 16 {
                    file[12..16].copy_from_slice(&len.to_le_bytes());
                }
            }
        }
    }
    let changed: Vec<usize> = (0..FILE_SIZE)
        .filter(|&i| file.get(i) != base.get(i))
        .collect();
    let single = (file.len() == base.len() && changed.len() == 1).then(|| changed[0]);
    (file, single)
}

fn reset(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("state dir");
}

fuzz_target!(|data: &[u8]| {
    let template = template();
    let mut input = Input::new(data);
    let mode = input.byte();
    let file_present = mode & 1 != 0;
    let file_from_template = mode & 2 != 0;
    let fix = mode & 4 != 0;
    let manifest_present = mode & 8 != 0;
    let manifest_from_template = mode & 16 != 0;
    let copy_as_other = mode & 32 != 0;

    let (file, single_byte) = if file_from_template {
        let (mut file, single) = patched_file(&mut input, &template.file);
        if fix {
            fix_checksums(&mut file, input.bool());
        }
        (file, if fix { None } else { single })
    } else {
        let mut file = input.blob().to_vec();
        if fix {
            fix_checksums(&mut file, input.bool());
        }
        (file, None)
    };
    let manifest = if manifest_from_template {
        template.manifest.clone()
    } else {
        input.blob().to_vec()
    };

    let dir = &template.dir;
    reset(dir);
    let path = dir.join(&template.file_name);
    if file_present {
        std::fs::write(&path, &file).expect("write fence file");
    }
    if copy_as_other {
        // The same bytes under another export's name: a copied file.
        std::fs::write(dir.join("fence-6469736b31"), &file).expect("write copy");
    }
    if manifest_present {
        std::fs::write(dir.join("MANIFEST"), &manifest).expect("write manifest");
    }

    let store = match FenceStore::open(dir) {
        Ok(store) => store,
        Err(FenceError::Io { .. }) => return,
        Err(other) => panic!("open failed: {other}"),
    };
    let _ = store.list();
    let fence = store.load(EXPORT);

    // Never guess.
    if let Fence::Known(value) = fence {
        let slots: Vec<u64> = SLOTS.iter().filter_map(|s| u64_at(&file, s + 16)).collect();
        if file_present {
            assert!(
                slots.contains(&value),
                "fence {value} is in neither slot {slots:?}"
            );
        } else {
            assert_eq!(value, 0, "no fence file, yet fence {value}");
        }
    }
    if !file_present && manifest_present && manifest_from_template {
        assert!(
            matches!(fence, Fence::Damaged(Damage::Missing { .. })),
            "a listed export's file is gone, yet {fence:?}"
        );
    }
    if file_present && file_from_template && single_byte.is_none() && file == template.file {
        assert_eq!(fence, Fence::Known(TEMPLATE_FENCE), "the untouched file");
    }
    if let (true, Some(at)) = (file_present, single_byte) {
        if at < BLOCK {
            assert!(
                matches!(fence, Fence::Damaged(_)),
                "byte {at} of the header changed, yet {fence:?}"
            );
        } else {
            assert_eq!(
                fence,
                Fence::Known(TEMPLATE_FENCE),
                "byte {at} of a slot changed"
            );
        }
    }

    match fence {
        Fence::Damaged(_) => {
            let refused = store.raise(EXPORT, u64::MAX);
            assert!(
                matches!(refused, Err(FenceError::Damaged { .. })),
                "a damaged fence was raised: {refused:?}"
            );
        }
        Fence::Known(value) => {
            let seq_max = SLOTS.iter().any(|s| u64_at(&file, s + 8) == Some(u64::MAX));
            if seq_max {
                // Once a finding (artifacts/fence/slot-sequence-u64-max): a
                // raise panicked when the winning slot's sequence was
                // u64::MAX. It must be damage, never a crash.
                let raised = store.raise(EXPORT, value.saturating_add(1));
                assert!(
                    raised.is_ok() || matches!(raised, Err(FenceError::Damaged { .. })),
                    "a used-up sequence: {raised:?}"
                );
                return;
            }
            if value > 0 {
                assert_eq!(store.raise(EXPORT, value - 1).expect("raise below"), value);
            }
            if value == u64::MAX {
                return;
            }
            assert_eq!(store.raise(EXPORT, value + 1).expect("raise"), value + 1);
            assert_eq!(store.load(EXPORT), Fence::Known(value + 1));
            drop(store);
            let store = FenceStore::open(dir).expect("reopen");
            assert_eq!(
                store.load(EXPORT),
                Fence::Known(value + 1),
                "the raise did not last"
            );
        }
    }
});
