//! The node's durable epoch (S1 on a single node).
//!
//! The data directory holds `epoch`, one line of text with a checksum:
//!
//! ```text
//! palisade-epoch v1 7 9a3c41f2
//! ```
//!
//! Every start reads it, adds one, writes the new value to `epoch.tmp`,
//! fsyncs it, renames it over `epoch` and fsyncs the directory — all before
//! the first grant — so no two runs of a node ever mint tokens in the same
//! epoch. A file that does not parse is never guessed at: the node refuses
//! to start. A `lock` file held with `flock` keeps a second process off the
//! same directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

const MAGIC: &str = "palisade-epoch v1";
const EPOCH_FILE: &str = "epoch";
const EPOCH_TMP: &str = "epoch.tmp";
const LOCK_FILE: &str = "lock";

/// Why the epoch store cannot be used. Every variant stops the node.
#[derive(Debug, thiserror::Error)]
pub enum EpochError {
    /// Another process holds the data directory.
    #[error("data directory {dir} is in use by another palisade process ({holder}); stop it or use another --data-dir")]
    Locked {
        /// The directory.
        dir: PathBuf,
        /// What the lock file says about its holder.
        holder: String,
    },
    /// The epoch file exists but does not parse.
    #[error("epoch file {path} is corrupt ({why}); refusing to start rather than guess: restore it from a backup, or, only if no client holds a token from this node, delete it")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The epoch reached its maximum.
    #[error("epoch is at its maximum; this node cannot mint new tokens")]
    Exhausted,
    /// Reading, writing or syncing failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> EpochError + 'a {
    move |source| EpochError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn checksum(epoch: u32) -> u32 {
    crc32fast::hash(format!("{MAGIC} {epoch}").as_bytes())
}

fn render(epoch: u32) -> String {
    format!("{MAGIC} {epoch} {:08x}\n", checksum(epoch))
}

fn parse(text: &str) -> Result<u32, String> {
    let line = text
        .strip_suffix('\n')
        .ok_or("missing final newline (torn write?)")?;
    let rest = line
        .strip_prefix(MAGIC)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or("wrong header")?;
    let (epoch, sum) = rest.split_once(' ').ok_or("missing checksum")?;
    let epoch: u32 = epoch.parse().map_err(|_| "epoch is not a number")?;
    let sum = u32::from_str_radix(sum, 16).map_err(|_| "checksum is not hex")?;
    if sum != checksum(epoch) {
        return Err("checksum mismatch".into());
    }
    if epoch == 0 {
        return Err("epoch 0 is never written".into());
    }
    Ok(epoch)
}

/// Creates `dir` and any missing parents, fsyncing each parent after the
/// entry is added: a directory that vanished in a power cut would make the
/// next start look like the first one (epoch 1, no grace period).
fn create_dir_durably(dir: &Path) -> Result<(), EpochError> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.exists() {
        missing.push(at.to_path_buf());
        match at.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => at = parent,
            _ => break,
        }
    }
    for path in missing.into_iter().rev() {
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err("creating data directory", &path)(e)),
        }
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsyncing directory", parent))?;
    }
    Ok(())
}

/// The locked data directory and its epoch file.
#[derive(Debug)]
pub struct EpochStore {
    dir: PathBuf,
    _lock: File,
    epoch: u32,
}

/// The outcome of opening the store at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    /// The epoch this run mints tokens in.
    pub epoch: u32,
    /// No earlier epoch existed: no lease from this directory can be
    /// outstanding, so no grace period is needed.
    pub fresh: bool,
}

impl EpochStore {
    /// Locks `dir` (creating it), reads the epoch, durably writes epoch + 1.
    pub fn open_and_bump(dir: &Path) -> Result<(EpochStore, Started), EpochError> {
        create_dir_durably(dir)?;
        let lock_path = dir.join(LOCK_FILE);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err("opening", &lock_path))?;
        if flock(&lock, FlockOperation::NonBlockingLockExclusive).is_err() {
            let mut holder = String::new();
            let _ = lock.read_to_string(&mut holder);
            return Err(EpochError::Locked {
                dir: dir.to_path_buf(),
                holder: if holder.trim().is_empty() {
                    "unknown pid".into()
                } else {
                    format!("pid {}", holder.trim())
                },
            });
        }
        lock.set_len(0).map_err(io_err("truncating", &lock_path))?;
        lock.write_all(format!("{}\n", std::process::id()).as_bytes())
            .map_err(io_err("writing", &lock_path))?;

        let path = dir.join(EPOCH_FILE);
        let previous = match fs::read_to_string(&path) {
            Ok(text) => Some(parse(&text).map_err(|why| EpochError::Corrupt {
                path: path.clone(),
                why,
            })?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(EpochError::Corrupt {
                    path,
                    why: "not text".into(),
                })
            }
            Err(e) => return Err(io_err("reading", &path)(e)),
        };
        let mut store = EpochStore {
            dir: dir.to_path_buf(),
            _lock: lock,
            epoch: previous.unwrap_or(0),
        };
        let epoch = store.bump()?;
        Ok((
            store,
            Started {
                epoch,
                fresh: previous.is_none(),
            },
        ))
    }

    /// The current epoch.
    #[must_use]
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Durably moves to the next epoch and returns it. Nothing may be
    /// granted in the new epoch before this returns.
    pub fn bump(&mut self) -> Result<u32, EpochError> {
        let next = self.epoch.checked_add(1).ok_or(EpochError::Exhausted)?;
        let tmp = self.dir.join(EPOCH_TMP);
        let path = self.dir.join(EPOCH_FILE);
        {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_err("creating", &tmp))?;
            file.write_all(render(next).as_bytes())
                .map_err(io_err("writing", &tmp))?;
            file.sync_all().map_err(io_err("fsyncing", &tmp))?;
        }
        fs::rename(&tmp, &path).map_err(io_err("renaming over", &path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsyncing directory", &self.dir))?;
        assert!(next > self.epoch, "S1: epochs strictly increase");
        self.epoch = next;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_is_fresh_and_later_starts_bump() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, started) = EpochStore::open_and_bump(dir.path()).expect("opens");
        assert_eq!(
            started,
            Started {
                epoch: 1,
                fresh: true
            }
        );
        drop(store);
        let (mut store, started) = EpochStore::open_and_bump(dir.path()).expect("opens");
        assert_eq!(
            started,
            Started {
                epoch: 2,
                fresh: false
            }
        );
        assert_eq!(store.bump().expect("bumps"), 3);
        drop(store);
        let (_, started) = EpochStore::open_and_bump(dir.path()).expect("opens");
        assert_eq!(started.epoch, 4);
    }

    #[test]
    fn missing_parents_are_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deep = dir.path().join("a/b/c");
        let (_, started) = EpochStore::open_and_bump(&deep).expect("opens");
        assert!(started.fresh);
        assert!(deep.join("epoch").exists());
    }

    #[test]
    fn a_second_process_is_locked_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_store, _) = EpochStore::open_and_bump(dir.path()).expect("opens");
        let err = EpochStore::open_and_bump(dir.path()).expect_err("locked");
        assert!(matches!(err, EpochError::Locked { .. }), "{err}");
        assert!(err.to_string().contains(&std::process::id().to_string()));
    }

    #[test]
    fn every_truncation_of_the_file_is_refused() {
        let full = render(41);
        assert_eq!(parse(&full), Ok(41));
        for cut in 0..full.len() {
            assert!(parse(&full[..cut]).is_err(), "accepted a file cut at {cut}");
        }
    }

    #[test]
    fn corrupt_files_stop_the_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        for bad in [
            "palisade-epoch v1 7 00000000\n",
            "garbage\n",
            "palisade-epoch v1 0 00000000\n",
            "",
        ] {
            fs::write(dir.path().join(EPOCH_FILE), bad).expect("write");
            let err = EpochStore::open_and_bump(dir.path()).expect_err("corrupt");
            assert!(matches!(err, EpochError::Corrupt { .. }), "{bad:?}: {err}");
        }
        fs::write(dir.path().join(EPOCH_FILE), [0xff, 0xfe, 0x00]).expect("write");
        assert!(matches!(
            EpochStore::open_and_bump(dir.path()),
            Err(EpochError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_leftover_tmp_file_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(EPOCH_FILE), render(5)).expect("write");
        fs::write(dir.path().join(EPOCH_TMP), "half a wri").expect("write");
        let (_, started) = EpochStore::open_and_bump(dir.path()).expect("opens");
        assert_eq!(started.epoch, 6);
    }
}
