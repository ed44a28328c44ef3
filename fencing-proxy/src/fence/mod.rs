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
//! use palisade_fencing_proxy::fence::{Fence, FenceStore};
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
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use palisade_host::durable::{self, tmp_path, DurableError, TMP_SUFFIX};

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

impl From<DurableError> for FenceError {
    /// Every durable-file step's failure is the local disk's: its path and
    /// `io::Error` become [`FenceError::Io`].
    fn from(error: DurableError) -> FenceError {
        let (_, path, source) = error.into_parts();
        FenceError::Io { path, source }
    }
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
        durable::create_dir_all(dir).map_err(FenceError::from)?;
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
        durable::write_synced(&tmp, &encode_file(export, seq, fence), 0o666)?;
        // From the rename on, a failure leaves the visible state uncertain.
        let done = durable::rename_synced(&tmp, path).map_err(FenceError::from);
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
        let bytes = encode_manifest(names);
        debug_assert_eq!(parse_manifest(&bytes).as_ref(), Ok(names));
        durable::replace(&path, &tmp_path(&path), &bytes, 0o666)?;
        Ok(())
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

mod format;

use format::*;

#[cfg(test)]
mod tests;
