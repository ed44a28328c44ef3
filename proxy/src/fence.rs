//! The durable fence store: for each export, the highest fencing token the
//! proxy has accepted, kept in a state directory so it survives restarts (S3).
//!
//! It owns: the state directory (one fence file per export, a `MANIFEST` of
//! the exports that have one, and a `LOCK` file held with `flock` for the
//! store's lifetime), their on-disk format, and the order of writes and
//! fsyncs that keeps them crash-safe.
//!
//! It must never: let a fence go backwards, return a raised fence before it
//! is durable, or guess. When it cannot tell an export's fence for sure it
//! says [`Fence::Damaged`], and [`FenceStore::raise`] refuses, until an
//! operator runs [`FenceStore::repair`]. It never mints tokens and knows
//! nothing about leases or the NBD protocol. Its I/O is blocking std I/O:
//! call it from a blocking thread.
//!
//! Main types: [`FenceStore`], [`Fence`], [`Damage`], [`FenceError`].
//!
//! ```
//! use palisade_proxy::fence::{Fence, FenceStore};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let store = FenceStore::open(dir.path()).unwrap();
//! assert_eq!(store.load("disk0"), Fence::Known(0));
//! assert_eq!(store.raise("disk0", 7).unwrap(), 7);
//! assert_eq!(store.raise("disk0", 3).unwrap(), 7); // never lowers
//! drop(store);
//! let store = FenceStore::open(dir.path()).unwrap();
//! assert_eq!(store.load("disk0"), Fence::Known(7));
//! ```
//!
//! # Files
//!
//! - `fence-<hex>`: one per export, `<hex>` the lowercase hex of the name's
//!   UTF-8 bytes when that is at most 200 characters (names up to 100
//!   bytes), else `fence-h<32 hex>`, two 64-bit hashes of the name (ext4
//!   allows 255-byte file names; names may be 256 bytes). The header holds
//!   the full name, so a hash collision, or a file copied over another, is
//!   seen as [`Damage::WrongExport`], never read as this export's fence.
//! - A fence file is exactly 12288 bytes: a 4096-byte header block, then two
//!   4096-byte slots A and B. All integers are little-endian.
//!   - Header: magic `PLSDFNC1`, format version u32 (1), name length u32,
//!     the name bytes, CRC32 of everything before it; the rest is zero.
//!   - Slot: magic `PLSDSLOT`, sequence u64, fence u64, CRC32 of the name
//!     (binds the slot to its export), CRC32 of the 28 slot bytes before it;
//!     the rest is zero.
//!   - The zero padding of every block is checked too: a block with a
//!     non-zero byte after its CRC was not written whole by this store and
//!     is not trusted. So *every* byte of a fence file matters, and a
//!     single damaged byte anywhere is either survived (a slot: its twin
//!     holds the same value) or reported (the header, which has no twin).
//! - `MANIFEST`: a magic line `PLSDMAN1`, one hex-encoded export name per
//!   line (sorted), a final `crc <8 hex>` line: CRC32 of every byte before
//!   it. It lists the exports that have a fence file, so a deleted fence file
//!   reads as [`Damage::Missing`] instead of as a new export at fence 0.
//! - `LOCK`: empty; `flock`ed so that two processes never share the state.
//! - `*.tmp`: a file being written before its atomic rename; ignored.
//!
//! # Why a raise is crash-safe
//!
//! A raise to `v` writes the slot pair with a new sequence `s` = the current
//! sequence + 1: it `pwrite`s one slot with `(s, v)` and `fdatasync`s, then
//! the other slot and `fdatasync`s again, so after a completed raise both
//! slots are equal. Normally A is written first. A read validates the header
//! (else [`Damage::BadHeader`]) and that it names the export (else
//! [`Damage::WrongExport`]), then each slot on its own (magic, CRCs,
//! padding, fully present in the file); of the valid slots it takes the one
//! with the higher sequence; if none is valid the fence is
//! [`Damage::BothSlotsBad`].
//!
//! A crash tears at most the slot being written, and the other slot then
//! holds either the last completed value (tear in the first slot written)
//! or the new value (tear in the second, after the first was synced). A
//! crash between the two writes leaves the first slot newer; taking it is
//! safe, as a higher fence always is. Media damage to one slot leaves its
//! twin with the same value.
//!
//! After such a crash or damage the two slots differ. The next raise then
//! writes first the slot that does *not* hold the current value (the torn,
//! damaged or older one) and only then the one that does, so that a tear in
//! that raise again leaves the current value in the untouched slot. Writing
//! A first there would be wrong: with A newer than B, a tear in A would leave
//! B's older value, and the fence would go backwards.
//!
//! A new export's file is written whole to `<name>.tmp`, fsynced, renamed
//! into place, and the directory fsynced; only then is the export added to
//! the manifest (rewritten the same way). A crash in between leaves a fence
//! file that the manifest does not list: it reads normally, and
//! [`FenceStore::open`] or the next raise adds it to the manifest.
//!
//! If the manifest is corrupt, or missing while fence files exist, an export
//! whose fence file exists still reads normally, but one without a file
//! cannot be told apart from a deleted one, so it is
//! [`Damage::ManifestCorrupt`] (even a never-seen export) until
//! [`FenceStore::repair`] rewrites the manifest. A raise never rewrites a
//! broken manifest, since that would silently turn lost exports into new
//! ones; only the operator's repair does.
//!
//! If a write or fsync fails part-way, what the disk holds is uncertain
//! (the page cache may show the new value while the disk has the old one),
//! so the export reads as [`Damage::WriteFailed`] for the rest of this
//! store's life, or until a repair succeeds.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::config::EXPORT_NAME_MAX;

/// Size of the header and of each slot.
const BLOCK_SIZE: usize = 4096;
/// Exact size of a fence file: header, slot A, slot B.
const FILE_SIZE: usize = 3 * BLOCK_SIZE;
/// Byte offsets of slot A and slot B.
const SLOT_OFFSETS: [usize; 2] = [BLOCK_SIZE, 2 * BLOCK_SIZE];
/// Slot names for log lines, indexed like `SLOT_OFFSETS`.
const SLOT_NAMES: [&str; 2] = ["A", "B"];

const HEADER_MAGIC: &[u8; 8] = b"PLSDFNC1";
const FORMAT_VERSION: u32 = 1;
/// Magic, version, name length.
const HEADER_FIXED_SIZE: usize = 16;

const SLOT_MAGIC: &[u8; 8] = b"PLSDSLOT";
/// Magic, sequence, fence, name CRC: the bytes the slot CRC covers.
const SLOT_CRC_OFFSET: usize = 28;
/// Bytes of a slot before its zero padding.
const SLOT_USED_SIZE: usize = SLOT_CRC_OFFSET + 4;

const FILE_PREFIX: &str = "fence-";
/// Marks a file name made of the name's hash (`h` is not a hex digit).
const HASHED_MARK: &str = "h";
/// Longest hex name used as is; longer names are hashed (ext4: 255 bytes).
const HEX_NAME_MAX: usize = 200;
const TMP_SUFFIX: &str = ".tmp";
const MANIFEST_NAME: &str = "MANIFEST";
const MANIFEST_MAGIC: &str = "PLSDMAN1";
const LOCK_NAME: &str = "LOCK";

const _: () = assert!(HEADER_FIXED_SIZE + EXPORT_NAME_MAX + 4 <= BLOCK_SIZE);
const _: () = assert!(SLOT_USED_SIZE <= BLOCK_SIZE);
const _: () = assert!(FILE_PREFIX.len() + HEX_NAME_MAX + TMP_SUFFIX.len() <= 255);
const _: () = assert!(HEX_NAME_MAX <= 2 * EXPORT_NAME_MAX);

/// An export's fence as read from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fence {
    /// The durable fence (0 for an export never raised).
    Known(u64),
    /// The state cannot be trusted; writes must be refused until `repair`.
    Damaged(Damage),
}

impl Fence {
    /// The fence if it is known.
    #[must_use]
    pub fn known(&self) -> Option<u64> {
        match self {
            Fence::Known(fence) => Some(*fence),
            Fence::Damaged(_) => None,
        }
    }
}

/// Why an export's fence cannot be trusted. Every variant is fixed by an
/// operator: restore the file, or run [`FenceStore::repair`] with the right
/// fence (at least the highest token ever granted for the export's resource).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// The manifest lists the export but its fence file is gone.
    Missing {
        /// The fence file that should exist.
        path: PathBuf,
    },
    /// The export has no fence file and the manifest, which would tell
    /// whether it ever had one, is corrupt or missing.
    ManifestCorrupt {
        /// The fence file that does not exist.
        path: PathBuf,
        /// The manifest.
        manifest: PathBuf,
        /// What is wrong with the manifest.
        reason: String,
    },
    /// The fence file's header is invalid (truncated, bad checksum, ...).
    BadHeader {
        /// The fence file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The fence file belongs to another export (copied or renamed over, or
    /// a hash collision of long names).
    WrongExport {
        /// The fence file.
        path: PathBuf,
        /// The export its header names.
        found: String,
    },
    /// Neither slot of the fence file is valid.
    BothSlotsBad {
        /// The fence file.
        path: PathBuf,
        /// Why slot A is invalid.
        reason_a: String,
        /// Why slot B is invalid.
        reason_b: String,
    },
    /// The fence file could not be read.
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: String,
    },
    /// The winning slot's sequence is at its maximum (2^64 − 1): no raise
    /// can be ordered after it. Only a damaged or forged file holds that.
    SequenceExhausted {
        /// The fence file.
        path: PathBuf,
    },
    /// An earlier write or fsync of this export's state failed in this
    /// process, so what the disk holds is uncertain.
    WriteFailed {
        /// The file being written.
        path: PathBuf,
        /// The I/O error.
        error: String,
    },
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Missing { path } => write!(
                f,
                "fence file {} is missing but the manifest lists the export; \
                 restore it or run repair with the right fence",
                path.display()
            ),
            Damage::ManifestCorrupt {
                path,
                manifest,
                reason,
            } => write!(
                f,
                "no fence file {} and the manifest {} is unusable ({reason}), \
                 so it is unknown whether the export had a fence; run repair",
                path.display(),
                manifest.display()
            ),
            Damage::BadHeader { path, reason } => write!(
                f,
                "fence file {} has a bad header ({reason}); run repair",
                path.display()
            ),
            Damage::WrongExport { path, found } => write!(
                f,
                "fence file {} belongs to export {found:?}, not this one; \
                 restore the right file or run repair",
                path.display()
            ),
            Damage::BothSlotsBad {
                path,
                reason_a,
                reason_b,
            } => write!(
                f,
                "both slots of fence file {} are invalid (A: {reason_a}; B: {reason_b}); \
                 run repair",
                path.display()
            ),
            Damage::Io { path, error } => {
                write!(f, "cannot read {}: {error}", path.display())
            }
            Damage::WriteFailed { path, error } => write!(
                f,
                "an earlier write or fsync of {} failed ({error}), so its contents are \
                 uncertain; restart the proxy or run repair",
                path.display()
            ),
            Damage::SequenceExhausted { path } => write!(
                f,
                "fence file {} has used up its write sequence (a damaged or forged file); \
                 run repair",
                path.display()
            ),
        }
    }
}

/// Errors of [`FenceStore`] operations.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// Another process holds the state directory lock. Operator's fault:
    /// two proxies configured with one state directory.
    #[error("fence state directory {} is locked by another process", dir.display())]
    Locked {
        /// The state directory.
        dir: PathBuf,
    },
    /// The export's fence state is damaged; writes must stay refused until
    /// an operator runs [`FenceStore::repair`]. The disk's or an operator's
    /// fault (lost, truncated, copied or corrupted files); not retryable.
    #[error("fence state of export {export:?} is damaged: {damage}")]
    Damaged {
        /// The export.
        export: String,
        /// What is wrong.
        damage: Damage,
    },
    /// I/O failed (fsync etc.): the raise did not happen durably. The local
    /// disk's fault; the caller may retry.
    #[error("fence store I/O on {} failed", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// The durable fence of every export, in one state directory.
///
/// Shared through an `Arc`; every method blocks on disk I/O and on the
/// store's one mutex, which serializes raises and repairs.
#[derive(Debug)]
pub struct FenceStore {
    dir: PathBuf,
    /// Holds the `flock` on `<dir>/LOCK` until the store is dropped.
    _lock: File,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Exports whose write or fsync failed part-way, with the file and error.
    write_failed: BTreeMap<String, (PathBuf, String)>,
}

/// One valid slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SlotValue {
    seq: u64,
    fence: u64,
}

/// The slots of a fence file whose header is valid; at least one is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slots {
    slots: [Option<SlotValue>; 2],
}

impl Slots {
    /// The index and value of the slot that holds the fence: the valid one
    /// with the higher sequence (then the higher fence, then A).
    fn winner(&self) -> (usize, SlotValue) {
        match self.slots {
            [Some(a), Some(b)] => {
                if (b.seq, b.fence) > (a.seq, a.fence) {
                    (1, b)
                } else {
                    (0, a)
                }
            }
            [Some(a), None] => (0, a),
            [None, Some(b)] => (1, b),
            [None, None] => unreachable!("Slots always holds a valid slot"),
        }
    }

    /// The order in which a raise writes the slots: A then B when both hold
    /// the current value, else first the slot that does not, so a tear
    /// leaves the current value in the other (see the module doc).
    fn write_order(&self) -> [usize; 2] {
        match self.slots {
            [Some(a), Some(b)] if a == b => [0, 1],
            _ => {
                let (winner, _) = self.winner();
                [1 - winner, winner]
            }
        }
    }
}

/// What the disk says about one export.
enum State {
    /// No fence file and the (valid) manifest, given, does not list it:
    /// never raised.
    New(BTreeSet<String>),
    /// A fence file that names the export.
    File(Slots),
}

/// The manifest as read.
enum Manifest {
    Valid(BTreeSet<String>),
    /// Corrupt, unreadable, or missing while fence files exist.
    Unusable(String),
}

/// A fence file found in the directory.
struct FoundFile {
    path: PathBuf,
    /// The export, from the file name or (hashed names) the header; `None`
    /// if a hashed file's header cannot be read or does not hash to it.
    export: Option<String>,
}

impl FenceStore {
    /// Creates the directory if missing (fsyncing the parent), takes an
    /// exclusive non-blocking flock on `<dir>/LOCK` (held for the store's
    /// lifetime; error Locked if another process has it).
    ///
    /// Call once at startup. It also writes an empty manifest into a new
    /// directory, and adds to the manifest any fence file it does not list
    /// (left by a crash between creating the file and recording it).
    pub fn open(dir: &Path) -> Result<FenceStore, FenceError> {
        create_dir_durably(dir).map_err(|source| FenceError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let lock_path = dir.join(LOCK_NAME);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|source| FenceError::Io {
                path: lock_path.clone(),
                source,
            })?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(errno) if errno == rustix::io::Errno::WOULDBLOCK => {
                return Err(FenceError::Locked {
                    dir: dir.to_path_buf(),
                });
            }
            Err(errno) => {
                return Err(FenceError::Io {
                    path: lock_path,
                    source: errno.into(),
                });
            }
        }
        let store = FenceStore {
            dir: dir.to_path_buf(),
            _lock: lock,
            inner: Mutex::new(Inner::default()),
        };
        store.reconcile_manifest()?;
        Ok(store)
    }

    /// Reads the export's durable fence. A never-seen export (not in the
    /// manifest and no file) is Known(0).
    ///
    /// Reads the disk on every call; call it when an export is opened, not
    /// per request. Logs an error naming the file when it finds damage.
    pub fn load(&self, export: &str) -> Fence {
        let inner = self.lock_inner();
        self.load_locked(&inner, export)
    }

    /// Makes max(current, token) durable before returning it. Returns the new
    /// fence. Refuses (FenceError::Damaged) if the state is damaged. If
    /// token <= current it returns current without writing.
    ///
    /// Call before the first write under `token` is acknowledged; raise the
    /// in-memory gate only after this returned `Ok`.
    pub fn raise(&self, export: &str, token: u64) -> Result<u64, FenceError> {
        let mut inner = self.lock_inner();
        let path = self.path_of(export);
        let state = self
            .state(&inner, export, &path)
            .map_err(|damage| self.damaged(export, damage))?;
        match state {
            State::New(mut names) => {
                if token == 0 {
                    return Ok(0);
                }
                self.create_file(&mut inner, export, &path, 1, token)?;
                // The manifest as read before the file existed: valid, even
                // if it was missing from an empty directory.
                let inserted = names.insert(export.to_owned());
                assert!(inserted, "a new export is not in the manifest");
                self.write_manifest(&names)?;
            }
            State::File(slots) => {
                let (_, current) = slots.winner();
                if token <= current.fence {
                    self.record_in_manifest(export)?;
                    return Ok(current.fence);
                }
                self.write_slots(&mut inner, export, &path, &slots, token)?;
                self.record_in_manifest(export)?;
            }
        }
        debug_assert_eq!(self.load_locked(&inner, export), Fence::Known(token));
        tracing::debug!(export, path = %path.display(), fence = token, "fence raised");
        Ok(token)
    }

    /// Operator repair: writes a fresh, valid fence file for `export` at
    /// exactly `token` (even if damaged, even if lower — the operator
    /// decides), durably, and records the export in the manifest.
    ///
    /// If the manifest is corrupt or missing, it is rewritten from the fence
    /// files present plus this export: exports whose files were lost can no
    /// longer be told apart from new ones afterwards, and read as fence 0.
    /// The names the broken manifest still showed are logged.
    pub fn repair(&self, export: &str, token: u64) -> Result<(), FenceError> {
        let mut inner = self.lock_inner();
        let path = self.path_of(export);
        self.create_file(&mut inner, export, &path, 1, token)?;
        inner.write_failed.remove(export);
        match self.read_manifest() {
            Manifest::Valid(mut names) => {
                if names.insert(export.to_owned()) {
                    self.write_manifest(&names)?;
                }
            }
            Manifest::Unusable(reason) => {
                let found = self.scan().map_err(|source| FenceError::Io {
                    path: self.dir.clone(),
                    source,
                })?;
                let mut names: BTreeSet<String> =
                    found.into_iter().filter_map(|file| file.export).collect();
                names.insert(export.to_owned());
                let dropped: Vec<String> = fs::read(self.manifest_path())
                    .map(|bytes| salvage_manifest(&bytes))
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|name| !names.contains(name))
                    .collect();
                tracing::warn!(
                    manifest = %self.manifest_path().display(),
                    %reason,
                    exports = names.len(),
                    ?dropped,
                    "rewriting the unusable manifest from the fence files present; \
                     exports without a file (the broken manifest still showed `dropped`) \
                     now read as new"
                );
                self.write_manifest(&names)?;
            }
        }
        tracing::warn!(export, path = %path.display(), fence = token, "fence repaired by operator");
        Ok(())
    }

    /// Every export the store knows (manifest entries plus fence files
    /// found), with its fence, sorted by name.
    ///
    /// A hashed-name fence file whose header cannot be read cannot be named;
    /// it is logged and left out (its export, if listed in the manifest or
    /// loaded by name, still reads as damaged).
    pub fn list(&self) -> Vec<(String, Fence)> {
        let inner = self.lock_inner();
        let mut names = match self.read_manifest() {
            Manifest::Valid(names) => names,
            Manifest::Unusable(_) => BTreeSet::new(),
        };
        match self.scan() {
            Ok(found) => {
                for file in found {
                    match file.export {
                        Some(export) => {
                            names.insert(export);
                        }
                        None => tracing::error!(
                            path = %file.path.display(),
                            "fence file whose export cannot be told (unreadable header); \
                             restore or remove it"
                        ),
                    }
                }
            }
            Err(error) => tracing::error!(
                dir = %self.dir.display(),
                %error,
                "cannot list the fence state directory"
            ),
        }
        names.extend(inner.write_failed.keys().cloned());
        names
            .into_iter()
            .map(|export| {
                let fence = self.load_locked(&inner, &export);
                (export, fence)
            })
            .collect()
    }

    /// The path of the export's fence file (for log lines and tests).
    ///
    /// Panics if `export` is empty or longer than [`EXPORT_NAME_MAX`] bytes
    /// (the config rejects such names).
    pub fn path_of(&self, export: &str) -> PathBuf {
        self.dir.join(file_name_of(export))
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock_inner(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the disk as a crash would,
        // which the format survives, so the state stays usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn manifest_path(&self) -> PathBuf {
        self.dir.join(MANIFEST_NAME)
    }

    fn load_locked(&self, inner: &Inner, export: &str) -> Fence {
        let path = self.path_of(export);
        match self.state(inner, export, &path) {
            Ok(State::New(_)) => Fence::Known(0),
            Ok(State::File(slots)) => Fence::Known(slots.winner().1.fence),
            Err(damage) => {
                tracing::error!(
                    export,
                    path = %path.display(),
                    %damage,
                    "fence state damaged; writes refused until repair"
                );
                Fence::Damaged(damage)
            }
        }
    }

    fn damaged(&self, export: &str, damage: Damage) -> FenceError {
        tracing::error!(export, %damage, "fence raise refused: state damaged");
        FenceError::Damaged {
            export: export.to_owned(),
            damage,
        }
    }

    fn state(&self, inner: &Inner, export: &str, path: &Path) -> Result<State, Damage> {
        if let Some((path, error)) = inner.write_failed.get(export) {
            return Err(Damage::WriteFailed {
                path: path.clone(),
                error: error.clone(),
            });
        }
        if let Some(slots) = read_fence_file(path, export)? {
            return Ok(State::File(slots));
        }
        match self.read_manifest() {
            Manifest::Valid(names) if names.contains(export) => Err(Damage::Missing {
                path: path.to_path_buf(),
            }),
            Manifest::Valid(names) => Ok(State::New(names)),
            Manifest::Unusable(reason) => Err(Damage::ManifestCorrupt {
                path: path.to_path_buf(),
                manifest: self.manifest_path(),
                reason,
            }),
        }
    }

    /// Writes a whole fence file via `.tmp` and rename.
    fn create_file(
        &self,
        inner: &mut Inner,
        export: &str,
        path: &Path,
        seq: u64,
        fence: u64,
    ) -> Result<(), FenceError> {
        let tmp = tmp_path(path);
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| FenceError::Io { path, source }
        };
        write_file_synced(&tmp, &encode_file(export, seq, fence)).map_err(io_err(&tmp))?;
        // From the rename on, a failure leaves the visible state uncertain.
        let done = fs::rename(&tmp, path)
            .map_err(io_err(path))
            .and_then(|()| sync_dir(&self.dir).map_err(io_err(&self.dir)));
        if let Err(error) = &done {
            self.mark_write_failed(inner, export, path, error);
        }
        done
    }

    /// Writes `(seq + 1, fence)` into both slots of an existing file.
    fn write_slots(
        &self,
        inner: &mut Inner,
        export: &str,
        path: &Path,
        slots: &Slots,
        fence: u64,
    ) -> Result<(), FenceError> {
        let (_, current) = slots.winner();
        assert!(fence > current.fence, "a raise only raises");
        let Some(seq) = current.seq.checked_add(1) else {
            return Err(FenceError::Damaged {
                export: export.to_owned(),
                damage: Damage::SequenceExhausted {
                    path: path.to_path_buf(),
                },
            });
        };
        let block = encode_slot(name_crc(export), seq, fence);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| FenceError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        for index in slots.write_order() {
            let offset = u64::try_from(SLOT_OFFSETS[index]).expect("small offset");
            let done = file
                .write_all_at(&block, offset)
                .and_then(|()| file.sync_data())
                .map_err(|source| FenceError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            if let Err(error) = &done {
                self.mark_write_failed(inner, export, path, error);
                return done;
            }
        }
        Ok(())
    }

    fn mark_write_failed(&self, inner: &mut Inner, export: &str, path: &Path, error: &FenceError) {
        let error = match error {
            FenceError::Io { path, source } => format!("{}: {source}", path.display()),
            other => other.to_string(),
        };
        tracing::error!(
            export,
            path = %path.display(),
            %error,
            "fence write failed part-way; export stays damaged until restart or repair"
        );
        inner
            .write_failed
            .insert(export.to_owned(), (path.to_path_buf(), error));
    }

    /// Adds the export (whose fence file exists) to a valid manifest. A
    /// broken manifest is left for the operator's repair.
    fn record_in_manifest(&self, export: &str) -> Result<(), FenceError> {
        match self.read_manifest() {
            Manifest::Valid(mut names) => {
                if names.insert(export.to_owned()) {
                    self.write_manifest(&names)?;
                }
                Ok(())
            }
            Manifest::Unusable(reason) => {
                tracing::warn!(
                    export,
                    manifest = %self.manifest_path().display(),
                    %reason,
                    "manifest unusable; not recording the export until repair"
                );
                Ok(())
            }
        }
    }

    /// At open: an empty manifest for a new directory, and every fence file
    /// that a valid manifest does not list added to it.
    fn reconcile_manifest(&self) -> Result<(), FenceError> {
        let manifest = self.manifest_path();
        let found = self.scan().map_err(|source| FenceError::Io {
            path: self.dir.clone(),
            source,
        })?;
        match fs::read(&manifest) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                if found.is_empty() {
                    self.write_manifest(&BTreeSet::new())?;
                } else {
                    tracing::error!(
                        manifest = %manifest.display(),
                        fence_files = found.len(),
                        "manifest missing while fence files exist; exports without a \
                         fence file read as damaged until repair"
                    );
                }
            }
            Err(error) => tracing::error!(
                manifest = %manifest.display(),
                %error,
                "cannot read the manifest; exports without a fence file read as damaged"
            ),
            Ok(bytes) => match parse_manifest(&bytes) {
                Ok(mut names) => {
                    let before = names.len();
                    names.extend(found.into_iter().filter_map(|file| file.export));
                    if names.len() != before {
                        tracing::info!(
                            manifest = %manifest.display(),
                            added = names.len() - before,
                            "recording fence files the manifest did not list"
                        );
                        self.write_manifest(&names)?;
                    }
                }
                Err(reason) => tracing::error!(
                    manifest = %manifest.display(),
                    %reason,
                    "manifest corrupt; exports without a fence file read as damaged until repair"
                ),
            },
        }
        Ok(())
    }

    fn read_manifest(&self) -> Manifest {
        let path = self.manifest_path();
        match fs::read(&path) {
            Ok(bytes) => match parse_manifest(&bytes) {
                Ok(names) => Manifest::Valid(names),
                Err(reason) => Manifest::Unusable(reason),
            },
            Err(error) if error.kind() == io::ErrorKind::NotFound => match self.scan() {
                Ok(found) if found.is_empty() => Manifest::Valid(BTreeSet::new()),
                Ok(found) => {
                    Manifest::Unusable(format!("missing while {} fence files exist", found.len()))
                }
                Err(error) => Manifest::Unusable(format!(
                    "missing, and cannot list {}: {error}",
                    self.dir.display()
                )),
            },
            Err(error) => Manifest::Unusable(format!("unreadable: {error}")),
        }
    }

    fn write_manifest(&self, names: &BTreeSet<String>) -> Result<(), FenceError> {
        let path = self.manifest_path();
        let mut tmp = path.clone().into_os_string();
        tmp.push(TMP_SUFFIX);
        let tmp = PathBuf::from(tmp);
        let bytes = encode_manifest(names);
        debug_assert_eq!(parse_manifest(&bytes).as_ref(), Ok(names));
        write_file_synced(&tmp, &bytes).map_err(|source| FenceError::Io {
            path: tmp.clone(),
            source,
        })?;
        fs::rename(&tmp, &path).map_err(|source| FenceError::Io {
            path: path.clone(),
            source,
        })?;
        sync_dir(&self.dir).map_err(|source| FenceError::Io {
            path: self.dir.clone(),
            source,
        })
    }

    /// The fence files in the directory (not `.tmp` files nor foreign ones).
    fn scan(&self) -> io::Result<Vec<FoundFile>> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            let Some(rest) = file_name.strip_prefix(FILE_PREFIX) else {
                continue;
            };
            if rest.ends_with(TMP_SUFFIX) {
                continue;
            }
            let path = entry.path();
            if let Some(hash) = rest.strip_prefix(HASHED_MARK) {
                if hash.len() != 32 || decode_hex(hash).is_none() {
                    continue;
                }
                let export =
                    read_header_name(&path).filter(|export| file_name_of(export) == file_name);
                found.push(FoundFile { path, export });
            } else if let Some(export) = decode_hex(rest)
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .filter(|export| valid_export(export) && file_name_of(export) == file_name)
            {
                found.push(FoundFile {
                    path,
                    export: Some(export),
                });
            }
        }
        Ok(found)
    }
}

/// Whether the name is one the store accepts (as the config does).
fn valid_export(export: &str) -> bool {
    !export.is_empty() && export.len() <= EXPORT_NAME_MAX
}

/// The fence file name of an export.
fn file_name_of(export: &str) -> String {
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

fn tmp_path(path: &Path) -> PathBuf {
    let mut tmp = OsString::from(path.as_os_str());
    tmp.push(TMP_SUFFIX);
    PathBuf::from(tmp)
}

/// FNV-1a, 64 bits. Part of the file name format: do not change.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A second, unrelated 64-bit hash (multiply-xorshift over the bytes in
/// reverse, murmur3's finalizer). Part of the file name format: do not change.
fn mix64(bytes: &[u8]) -> u64 {
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

fn encode_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut hex = String::with_capacity(2 * bytes.len());
    for byte in bytes {
        write!(hex, "{byte:02x}").expect("writing to a String");
    }
    hex
}

/// Decodes lowercase hex only, so that every name has one spelling.
fn decode_hex(hex: &str) -> Option<Vec<u8>> {
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

fn name_crc(export: &str) -> u32 {
    crc32fast::hash(export.as_bytes())
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn encode_header(export: &str) -> [u8; BLOCK_SIZE] {
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
fn decode_header(block: &[u8]) -> Result<String, String> {
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

fn encode_slot(name_crc: u32, seq: u64, fence: u64) -> [u8; BLOCK_SIZE] {
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
fn decode_slot(block: &[u8], name_crc: u32) -> Result<SlotValue, &'static str> {
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
fn encode_file(export: &str, seq: u64, fence: u64) -> Vec<u8> {
    let slot = encode_slot(name_crc(export), seq, fence);
    let mut bytes = Vec::with_capacity(FILE_SIZE);
    bytes.extend_from_slice(&encode_header(export));
    bytes.extend_from_slice(&slot);
    bytes.extend_from_slice(&slot);
    assert_eq!(bytes.len(), FILE_SIZE);
    bytes
}

/// Decodes a fence file's bytes (at most `FILE_SIZE` are looked at).
fn decode_file(bytes: &[u8], export: &str, path: &Path) -> Result<Slots, Damage> {
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
fn read_fence_file(path: &Path, export: &str) -> Result<Option<Slots>, Damage> {
    let io_damage = |error: io::Error| Damage::Io {
        path: path.to_path_buf(),
        error: error.to_string(),
    };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_damage(error)),
    };
    let mut bytes = [0u8; FILE_SIZE];
    let len = read_prefix(&file, &mut bytes).map_err(io_damage)?;
    decode_file(&bytes[..len], export, path).map(Some)
}

/// The export named by a fence file's header, if it is valid.
fn read_header_name(path: &Path) -> Option<String> {
    let file = File::open(path).ok()?;
    let mut block = [0u8; BLOCK_SIZE];
    let len = read_prefix(&file, &mut block).ok()?;
    decode_header(&block[..len])
        .ok()
        .filter(|name| valid_export(name))
}

/// Reads from offset 0 until `buf` is full or the file ends.
fn read_prefix(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut len = 0;
    while len < buf.len() {
        let offset = u64::try_from(len).expect("small offset");
        match file.read_at(&mut buf[len..], offset) {
            Ok(0) => break,
            Ok(read) => len += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(len)
}

fn encode_manifest(names: &BTreeSet<String>) -> Vec<u8> {
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

fn parse_manifest(bytes: &[u8]) -> Result<BTreeSet<String>, String> {
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
fn salvage_manifest(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter_map(|line| String::from_utf8(decode_hex(line)?).ok())
        .filter(|name| valid_export(name))
        .collect()
}

fn write_file_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `create_dir_all`, then fsyncs the parent of every directory it created.
fn create_dir_durably(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at {
        if path.as_os_str().is_empty() || fs::symlink_metadata(path).is_ok() {
            break;
        }
        missing.push(path);
        at = path.parent();
    }
    if missing.is_empty() {
        return Ok(());
    }
    fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        let parent = created
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        sync_dir(parent)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn open(dir: &Path) -> FenceStore {
        FenceStore::open(dir).expect("open fence store")
    }

    fn assert_damaged(fence: &Fence) {
        assert!(matches!(fence, Fence::Damaged(_)), "{fence:?}");
    }

    #[test]
    fn store_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<FenceStore>();
        check::<std::sync::Arc<FenceStore>>();
    }

    #[test]
    fn new_export_raise_persists_and_never_lowers() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        assert_eq!(store.load("disk0"), Fence::Known(0));
        assert_eq!(store.raise("disk0", 0).unwrap(), 0);
        assert!(
            !store.path_of("disk0").exists(),
            "raise to 0 writes nothing"
        );
        assert_eq!(store.raise("disk0", 5).unwrap(), 5);
        assert_eq!(store.raise("disk0", 9).unwrap(), 9);
        assert_eq!(store.load("disk0"), Fence::Known(9));
        drop(store);

        let store = open(dir.path());
        assert_eq!(store.load("disk0"), Fence::Known(9));
        let before = fs::read(store.path_of("disk0")).unwrap();
        assert_eq!(store.raise("disk0", 3).unwrap(), 9);
        assert_eq!(store.raise("disk0", 9).unwrap(), 9);
        assert_eq!(
            fs::read(store.path_of("disk0")).unwrap(),
            before,
            "no write"
        );
        assert_eq!(store.load("disk0"), Fence::Known(9));
        assert_eq!(store.raise("disk0", u64::MAX).unwrap(), u64::MAX);
        assert_eq!(store.load("disk0"), Fence::Known(u64::MAX));
        assert_eq!(store.load("other"), Fence::Known(0));
        assert_eq!(
            store.list(),
            vec![("disk0".to_owned(), Fence::Known(u64::MAX))]
        );
        assert_eq!(before.len(), FILE_SIZE);
    }

    #[test]
    fn a_used_up_sequence_is_damage_not_a_crash() {
        // Found by the `fence` fuzz target: a file whose slots carry the
        // largest sequence (valid checksums) made the next raise panic.
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        assert_eq!(store.raise("disk0", 5).unwrap(), 5);
        fs::write(store.path_of("disk0"), encode_file("disk0", u64::MAX, 9)).unwrap();
        drop(store);
        let store = open(dir.path());
        assert_eq!(
            store.load("disk0"),
            Fence::Known(9),
            "the value still reads"
        );
        match store.raise("disk0", 10) {
            Err(FenceError::Damaged {
                damage: Damage::SequenceExhausted { .. },
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(store.load("disk0"), Fence::Known(9), "nothing was written");
    }

    #[test]
    fn open_creates_missing_directories() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/b/state");
        let store = open(&state);
        assert_eq!(store.raise("x", 1).unwrap(), 1);
        assert!(state.join(MANIFEST_NAME).exists());
        assert!(state.join(LOCK_NAME).exists());
    }

    #[test]
    fn second_open_is_locked_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        match FenceStore::open(dir.path()) {
            Err(FenceError::Locked { dir: locked }) => assert_eq!(locked, dir.path()),
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(store);
        let _store = open(dir.path());
    }

    /// A store with `export` raised to 7 and then 42 (both slots: seq 2, 42).
    fn store_at_42(dir: &Path, export: &str) -> (FenceStore, Vec<u8>) {
        let store = open(dir);
        assert_eq!(store.raise(export, 7).unwrap(), 7);
        assert_eq!(store.raise(export, 42).unwrap(), 42);
        let bytes = fs::read(store.path_of(export)).unwrap();
        assert_eq!(bytes.len(), FILE_SIZE);
        (store, bytes)
    }

    #[test]
    fn every_truncation_reads_the_fence_or_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let (store, bytes) = store_at_42(dir.path(), "disk0");
        let path = store.path_of("disk0");
        for len in 0..=FILE_SIZE {
            fs::write(&path, &bytes[..len]).unwrap();
            let fence = store.load("disk0");
            if len >= SLOT_OFFSETS[1] {
                // Slot A is whole.
                assert_eq!(fence, Fence::Known(42), "truncated to {len}");
            } else {
                assert_damaged(&fence);
            }
        }
    }

    #[test]
    fn raise_after_truncation_of_slot_b_keeps_the_fence() {
        let dir = tempfile::tempdir().unwrap();
        let (store, bytes) = store_at_42(dir.path(), "disk0");
        let path = store.path_of("disk0");
        fs::write(&path, &bytes[..SLOT_OFFSETS[1] + 10]).unwrap();
        assert_eq!(store.raise("disk0", 43).unwrap(), 43);
        assert_eq!(fs::metadata(&path).unwrap().len(), 12288);
        drop(store);
        assert_eq!(open(dir.path()).load("disk0"), Fence::Known(43));
    }

    /// Tear points inside a slot: every byte of the used part, some padding.
    fn tear_points() -> Vec<usize> {
        (0..=SLOT_USED_SIZE + 1)
            .chain([100, 511, 512, 513, 2048, BLOCK_SIZE - 1, BLOCK_SIZE])
            .collect()
    }

    /// The slot `new` written over `old` up to `at`; the rest is `old`'s
    /// bytes, zeros (sectors not written) or garbage.
    fn torn(new: &[u8], old: &[u8], at: usize, rest: u8) -> Vec<u8> {
        let mut block = new[..at].to_vec();
        match rest {
            0 => block.extend_from_slice(&old[at..]),
            1 => block.resize(BLOCK_SIZE, 0),
            _ => block.resize(BLOCK_SIZE, 0xa5),
        }
        block
    }

    fn with_slots(bytes: &[u8], a: &[u8], b: &[u8]) -> Vec<u8> {
        let mut file = bytes[..BLOCK_SIZE].to_vec();
        file.extend_from_slice(a);
        file.extend_from_slice(b);
        file
    }

    #[test]
    fn torn_writes_read_the_old_or_the_new_fence() {
        let dir = tempfile::tempdir().unwrap();
        let (store, bytes) = store_at_42(dir.path(), "disk0");
        let path = store.path_of("disk0");
        let old = bytes[SLOT_OFFSETS[0]..SLOT_OFFSETS[1]].to_vec();
        assert_eq!(old, bytes[SLOT_OFFSETS[1]..]);
        assert_eq!(decode_slot(&old, name_crc("disk0")).unwrap().seq, 2);
        let new = encode_slot(name_crc("disk0"), 3, 99);
        for at in tear_points() {
            for rest in 0..3 {
                let slot = torn(&new, &old, at, rest);
                // Tear in A, written first: B still holds 42.
                fs::write(&path, with_slots(&bytes, &slot, &old)).unwrap();
                let fence = store.load("disk0");
                let whole = at == BLOCK_SIZE || (at >= SLOT_USED_SIZE && rest != 2);
                let expect = if whole { 99 } else { 42 };
                assert_eq!(fence, Fence::Known(expect), "A torn at {at}, rest {rest}");
                // Tear in B, after A was synced: A holds 99.
                fs::write(&path, with_slots(&bytes, &new, &slot)).unwrap();
                assert_eq!(
                    store.load("disk0"),
                    Fence::Known(99),
                    "B torn at {at}, rest {rest}"
                );
            }
        }
        // Crash between the two writes: A new, B old.
        fs::write(&path, with_slots(&bytes, &new, &old)).unwrap();
        assert_eq!(store.load("disk0"), Fence::Known(99));
    }

    #[test]
    fn raise_after_a_crash_writes_the_stale_slot_first() {
        let crc = name_crc("disk0");
        let old = encode_slot(crc, 2, 42);
        let new = encode_slot(crc, 3, 99);
        let next = encode_slot(crc, 4, 120);
        let bad = [0u8; BLOCK_SIZE];
        let dir = tempfile::tempdir().unwrap();
        let (store, bytes) = store_at_42(dir.path(), "disk0");
        let path = store.path_of("disk0");
        // (A, B, the current fence) after some crash or damage.
        let cases: [(&[u8], &[u8], u64); 5] = [
            (&old, &old, 42),
            (&new, &old, 99),
            (&old, &new, 99),
            (&bad, &old, 42),
            (&old, &bad, 42),
        ];
        for (a, b, current) in cases {
            let file = with_slots(&bytes, a, b);
            let slots = decode_file(&file, "disk0", &path).unwrap();
            assert_eq!(slots.winner().1.fence, current);
            let order = slots.write_order();
            // The next raise (to 120) tears its first write anywhere, or
            // crashes between its writes: the fence never drops.
            for at in tear_points() {
                let mut after = [a.to_vec(), b.to_vec()];
                after[order[0]] = torn(&next, &after[order[0]], at, 0);
                fs::write(&path, with_slots(&bytes, &after[0], &after[1])).unwrap();
                let fence = store.load("disk0").known().expect("readable");
                assert!(fence == current || fence == 120, "{fence} at {at}");
                // And a tear of its second write, after the first completed.
                let mut after = [a.to_vec(), b.to_vec()];
                after[order[0]] = next.to_vec();
                after[order[1]] = torn(&next, &after[order[1]], at, 0);
                fs::write(&path, with_slots(&bytes, &after[0], &after[1])).unwrap();
                assert_eq!(store.load("disk0"), Fence::Known(120));
            }
            // The store itself gets there from that state.
            fs::write(&path, &file).unwrap();
            assert_eq!(store.raise("disk0", 120).unwrap(), 120);
            let written = fs::read(&path).unwrap();
            assert_eq!(
                written[SLOT_OFFSETS[0]..SLOT_OFFSETS[1]],
                written[SLOT_OFFSETS[1]..]
            );
            assert_eq!(store.load("disk0"), Fence::Known(120));
        }
    }

    #[test]
    fn single_byte_flips_in_one_slot_are_survived() {
        let dir = tempfile::tempdir().unwrap();
        let (store, bytes) = store_at_42(dir.path(), "disk0");
        let path = store.path_of("disk0");
        // Every byte of both slots, padding included (it must be zero).
        for at in BLOCK_SIZE..FILE_SIZE {
            for mask in [0x01, 0xff] {
                let mut file = bytes.clone();
                file[at] ^= mask;
                fs::write(&path, &file).unwrap();
                assert_eq!(store.load("disk0"), Fence::Known(42), "flip at {at}");
            }
        }
    }

    #[test]
    fn flips_in_both_slots_or_the_header_are_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (store, bytes) = store_at_42(dir.path(), "disk0");
        let path = store.path_of("disk0");
        for at in (0..SLOT_USED_SIZE).chain([SLOT_USED_SIZE, 1000, BLOCK_SIZE - 1]) {
            let mut file = bytes.clone();
            file[SLOT_OFFSETS[0] + at] ^= 0x10;
            file[SLOT_OFFSETS[1] + (at * 7) % BLOCK_SIZE] ^= 0x01;
            fs::write(&path, &file).unwrap();
            match store.load("disk0") {
                Fence::Damaged(Damage::BothSlotsBad { .. }) => {}
                other => panic!("flip at {at}: {other:?}"),
            }
        }
        for at in 0..BLOCK_SIZE {
            let mut file = bytes.clone();
            file[at] ^= 0x04;
            fs::write(&path, &file).unwrap();
            match store.load("disk0") {
                Fence::Damaged(Damage::BadHeader { .. }) => {}
                other => panic!("header flip at {at}: {other:?}"),
            }
        }
        assert!(matches!(
            store.raise("disk0", 50),
            Err(FenceError::Damaged { .. })
        ));
    }

    #[test]
    fn deleted_fence_file_is_missing_until_repair() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store_at_42(dir.path(), "disk0");
        let path = store.path_of("disk0");
        fs::remove_file(&path).unwrap();
        let damage = Damage::Missing { path: path.clone() };
        assert_eq!(store.load("disk0"), Fence::Damaged(damage.clone()));
        assert!(damage.to_string().contains(&path.display().to_string()));
        match store.raise("disk0", 100) {
            Err(FenceError::Damaged { export, damage: d }) => {
                assert_eq!(export, "disk0");
                assert_eq!(d, damage);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            store.list(),
            vec![("disk0".to_owned(), Fence::Damaged(damage))]
        );
        // Still missing after a restart.
        drop(store);
        let store = open(dir.path());
        assert_damaged(&store.load("disk0"));
        store.repair("disk0", 50).unwrap();
        assert_eq!(store.load("disk0"), Fence::Known(50));
        assert_eq!(store.list(), vec![("disk0".to_owned(), Fence::Known(50))]);
        assert_eq!(store.raise("disk0", 51).unwrap(), 51);
    }

    #[test]
    fn repair_may_lower_and_fixes_any_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store_at_42(dir.path(), "disk0");
        let path = store.path_of("disk0");
        fs::write(&path, b"garbage").unwrap();
        assert_damaged(&store.load("disk0"));
        store.repair("disk0", 10).unwrap();
        assert_eq!(store.load("disk0"), Fence::Known(10));
        store.repair("new", 3).unwrap();
        assert_eq!(store.load("new"), Fence::Known(3));
        assert_eq!(
            parse_manifest(&fs::read(store.manifest_path()).unwrap())
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn a_copied_fence_file_is_the_wrong_export() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.raise("a", 5).unwrap();
        store.raise("b", 500).unwrap();
        fs::copy(store.path_of("b"), store.path_of("a")).unwrap();
        let expect = Damage::WrongExport {
            path: store.path_of("a"),
            found: "b".into(),
        };
        assert_eq!(store.load("a"), Fence::Damaged(expect));
        assert!(store.raise("a", 600).is_err());
        assert_eq!(store.load("b"), Fence::Known(500));
        // Slots bound to another export are invalid even under a good header.
        let mut file = fs::read(store.path_of("a")).unwrap();
        file[..BLOCK_SIZE].copy_from_slice(&encode_header("a"));
        fs::write(store.path_of("a"), &file).unwrap();
        assert!(matches!(
            store.load("a"),
            Fence::Damaged(Damage::BothSlotsBad { .. })
        ));
    }

    fn corrupt_manifest(store: &FenceStore) {
        let path = store.manifest_path();
        let mut bytes = fs::read(&path).unwrap();
        bytes[12] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
    }

    #[test]
    fn corrupt_manifest_damages_only_exports_without_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.raise("a", 5).unwrap();
        store.raise("b", 8).unwrap();
        fs::remove_file(store.path_of("b")).unwrap();
        corrupt_manifest(&store);
        assert_eq!(store.load("a"), Fence::Known(5));
        for export in ["b", "never-seen"] {
            match store.load(export) {
                Fence::Damaged(Damage::ManifestCorrupt { path, .. }) => {
                    assert_eq!(path, store.path_of(export));
                }
                other => panic!("{export}: {other:?}"),
            }
            assert!(matches!(
                store.raise(export, 1),
                Err(FenceError::Damaged { .. })
            ));
        }
        // A raise works on a present file and leaves the manifest broken.
        assert_eq!(store.raise("a", 6).unwrap(), 6);
        assert_damaged(&store.load("never-seen"));
        assert_eq!(store.list(), vec![("a".to_owned(), Fence::Known(6))]);
        // Reopening does not paper over it either.
        drop(store);
        let store = open(dir.path());
        assert_damaged(&store.load("b"));
        // Repair rewrites the manifest from the files present plus `b`.
        store.repair("b", 9).unwrap();
        assert_eq!(store.load("a"), Fence::Known(6));
        assert_eq!(store.load("b"), Fence::Known(9));
        assert_eq!(store.load("never-seen"), Fence::Known(0));
        let names = parse_manifest(&fs::read(store.manifest_path()).unwrap()).unwrap();
        assert_eq!(names, BTreeSet::from(["a".to_owned(), "b".to_owned()]));
        fs::remove_file(store.path_of("a")).unwrap();
        assert!(matches!(
            store.load("a"),
            Fence::Damaged(Damage::Missing { .. })
        ));
    }

    #[test]
    fn missing_manifest_with_fence_files_is_like_a_corrupt_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.raise("a", 5).unwrap();
        fs::remove_file(store.manifest_path()).unwrap();
        assert_eq!(store.load("a"), Fence::Known(5));
        assert!(matches!(
            store.load("new"),
            Fence::Damaged(Damage::ManifestCorrupt { .. })
        ));
        drop(store);
        let store = open(dir.path());
        assert!(!store.manifest_path().exists(), "open does not guess");
        assert_damaged(&store.load("new"));
        store.repair("new", 0).unwrap();
        assert_eq!(store.load("new"), Fence::Known(0));
        assert_eq!(store.load("a"), Fence::Known(5));
        assert_eq!(store.load("other"), Fence::Known(0));
    }

    #[test]
    fn empty_directory_without_manifest_is_new() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        fs::remove_file(store.manifest_path()).unwrap();
        assert_eq!(store.load("a"), Fence::Known(0));
        assert_eq!(store.raise("a", 3).unwrap(), 3);
        // The raise wrote the manifest it had read as empty.
        assert_eq!(store.load("b"), Fence::Known(0));
        fs::remove_file(store.path_of("a")).unwrap();
        assert!(matches!(
            store.load("a"),
            Fence::Damaged(Damage::Missing { .. })
        ));
    }

    #[test]
    fn unrecorded_fence_file_reads_and_is_recorded() {
        // A crash after renaming a new fence file into place, before the
        // manifest listed it.
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.raise("a", 1).unwrap();
        let manifest = fs::read(store.manifest_path()).unwrap();
        store.raise("b", 4).unwrap();
        fs::write(store.manifest_path(), &manifest).unwrap();
        assert_eq!(store.load("b"), Fence::Known(4));
        assert_eq!(store.list().len(), 2);
        // The next raise records it, even one that writes no fence.
        assert_eq!(store.raise("b", 2).unwrap(), 4);
        let names = parse_manifest(&fs::read(store.manifest_path()).unwrap()).unwrap();
        assert!(names.contains("b"));
        // So does open.
        fs::write(store.manifest_path(), &manifest).unwrap();
        drop(store);
        let store = open(dir.path());
        fs::remove_file(store.path_of("b")).unwrap();
        assert!(matches!(
            store.load("b"),
            Fence::Damaged(Damage::Missing { .. })
        ));
    }

    #[test]
    fn odd_and_long_names_stay_inside_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let long_ascii = "x".repeat(EXPORT_NAME_MAX);
        let long_unicode = "é".repeat(EXPORT_NAME_MAX / 2);
        let hex_max = "y".repeat(HEX_NAME_MAX / 2);
        let hashed_min = "y".repeat(HEX_NAME_MAX / 2 + 1);
        let names: Vec<String> = [
            "/",
            "..",
            ".",
            "../escape",
            "a/b",
            "日本語/..",
            "with\nnewline",
            "nul\0byte",
            "UPPER",
            "h",
        ]
        .iter()
        .map(|name| (*name).to_owned())
        .chain([long_ascii, long_unicode, hex_max, hashed_min])
        .collect();
        let store = open(dir.path());
        for (fence, name) in (1..).zip(&names) {
            let path = store.path_of(name);
            assert_eq!(path.parent(), Some(dir.path()), "{name:?}");
            let file_name = path.file_name().unwrap().to_str().unwrap();
            assert!(file_name.len() + TMP_SUFFIX.len() <= 255, "{file_name}");
            assert!(file_name.starts_with(FILE_PREFIX));
            assert_eq!(store.raise(name, fence).unwrap(), fence);
        }
        drop(store);
        let store = open(dir.path());
        let mut expect: Vec<(String, Fence)> = (1..)
            .zip(&names)
            .map(|(fence, name)| (name.clone(), Fence::Known(fence)))
            .collect();
        expect.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(store.list(), expect);
        for (fence, name) in (1..).zip(&names) {
            assert_eq!(store.load(name), Fence::Known(fence));
        }
        let entries = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(entries, names.len() + 2, "fence files, MANIFEST, LOCK");
    }

    #[test]
    fn file_names_are_stable() {
        // Part of the on-disk format: a change would lose every fence.
        assert_eq!(file_name_of("disk0"), "fence-6469736b30");
        assert_eq!(
            file_name_of(&"y".repeat(100)),
            format!("fence-{}", "79".repeat(100))
        );
        let hashed = file_name_of(&"y".repeat(101));
        assert_eq!(hashed.len(), FILE_PREFIX.len() + 1 + 32);
        assert_eq!(hashed, "fence-h52847ec6b587ab90da4619f0cde4034a");
        assert_ne!(file_name_of(&"y".repeat(102)), hashed);
    }

    #[test]
    fn hashed_name_collision_is_wrong_export() {
        // Stand in for a collision: another long name's file at this path.
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let a = "a".repeat(200);
        let b = "b".repeat(200);
        store.raise(&b, 9).unwrap();
        fs::rename(store.path_of(&b), store.path_of(&a)).unwrap();
        assert!(matches!(
            store.load(&a),
            Fence::Damaged(Damage::WrongExport { found, .. }) if found == b
        ));
        assert!(matches!(
            store.load(&b),
            Fence::Damaged(Damage::Missing { .. })
        ));
    }

    #[test]
    fn manifest_round_trips_and_rejects_damage() {
        let names: BTreeSet<String> = ["a", "é/..", "x\ny"].map(String::from).into();
        let bytes = encode_manifest(&names);
        assert_eq!(parse_manifest(&bytes), Ok(names.clone()));
        assert_eq!(
            parse_manifest(&encode_manifest(&BTreeSet::new())),
            Ok(BTreeSet::new())
        );
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x01;
            assert!(parse_manifest(&bad).is_err(), "flip at {at}");
        }
        for len in 0..bytes.len() {
            assert!(parse_manifest(&bytes[..len]).is_err(), "truncated to {len}");
        }
        assert_eq!(
            salvage_manifest(&bytes)
                .into_iter()
                .collect::<BTreeSet<_>>(),
            names
        );
    }

    #[test]
    fn damage_messages_name_the_file() {
        let path = PathBuf::from("/state/fence-61");
        let damages = [
            Damage::Missing { path: path.clone() },
            Damage::ManifestCorrupt {
                path: path.clone(),
                manifest: "/state/MANIFEST".into(),
                reason: "checksum mismatch".into(),
            },
            Damage::BadHeader {
                path: path.clone(),
                reason: "bad magic".into(),
            },
            Damage::WrongExport {
                path: path.clone(),
                found: "b".into(),
            },
            Damage::BothSlotsBad {
                path: path.clone(),
                reason_a: "bad magic".into(),
                reason_b: "truncated".into(),
            },
            Damage::Io {
                path: path.clone(),
                error: "EIO".into(),
            },
            Damage::WriteFailed {
                path: path.clone(),
                error: "EIO".into(),
            },
        ];
        for damage in damages {
            let text = damage.to_string();
            assert!(text.contains("/state/fence-61"), "{text}");
            assert!(!text.contains('\n'), "{text}");
        }
    }

    #[test]
    fn write_failure_poisons_the_export_until_repair() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store_at_42(dir.path(), "disk0");
        let path = store.path_of("disk0");
        let error = FenceError::Io {
            path: path.clone(),
            source: io::Error::other("fsync failed"),
        };
        store.mark_write_failed(&mut store.lock_inner(), "disk0", &path, &error);
        assert!(matches!(
            store.load("disk0"),
            Fence::Damaged(Damage::WriteFailed { .. })
        ));
        assert!(store.raise("disk0", 50).is_err());
        store.repair("disk0", 42).unwrap();
        assert_eq!(store.load("disk0"), Fence::Known(42));
    }

    #[test]
    fn concurrent_raises_end_at_the_max() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(open(dir.path()));
        let threads: Vec<_> = (0..4u64)
            .map(|thread| {
                let store = std::sync::Arc::clone(&store);
                std::thread::spawn(move || {
                    for round in 0..8u64 {
                        let token = round * 4 + thread + 1;
                        let fence = store.raise("disk0", token).unwrap();
                        assert!(fence >= token);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(store.load("disk0"), Fence::Known(32));
        let bytes = fs::read(store.path_of("disk0")).unwrap();
        assert_eq!(
            bytes[SLOT_OFFSETS[0]..SLOT_OFFSETS[1]],
            bytes[SLOT_OFFSETS[1]..]
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Raise(usize, u64),
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..3usize, 0..50u64).prop_map(|(export, token)| Op::Raise(export, token)),
            1 => (0..3usize, any::<u64>()).prop_map(|(export, token)| Op::Raise(export, token)),
            2 => Just(Op::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 24,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn load_is_the_max_raised(ops in proptest::collection::vec(op(), 1..16)) {
            let exports = ["a", "é/..", &"z".repeat(EXPORT_NAME_MAX)];
            let dir = tempfile::tempdir().unwrap();
            let mut store = open(dir.path());
            let mut model = [0u64; 3];
            for op in ops {
                match op {
                    Op::Raise(export, token) => {
                        let fence = store.raise(exports[export], token).unwrap();
                        model[export] = model[export].max(token);
                        prop_assert_eq!(fence, model[export]);
                    }
                    Op::Reopen => {
                        drop(store);
                        store = open(dir.path());
                    }
                }
                for (export, fence) in exports.iter().zip(model) {
                    prop_assert_eq!(store.load(export), Fence::Known(fence));
                }
            }
        }
    }
}
