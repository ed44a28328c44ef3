//! The data directory: created durably, locked against a second process,
//! and read for the single-node epoch file of earlier versions.
//!
//! | file | what |
//! |---|---|
//! | `lock` | held with `flock` while a node runs; holds its pid |
//! | `raft.log` | the raft log ([`crate::raftlog`]): term, vote, entries |
//! | `epoch` | written by versions before the cluster: `palisade-epoch v1 <n> <crc32>`; read once so that the first raft term starts above it (S1 across the upgrade) |

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use palisade_host::durable::{self, DurableError, Step};
use rustix::fs::{flock, FlockOperation};

const LEGACY_MAGIC: &str = "palisade-epoch v1";
const LEGACY_EPOCH_FILE: &str = "epoch";
const LOCK_FILE: &str = "lock";

/// Why the data directory cannot be used. Every variant stops the node.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Another process holds the data directory.
    #[error("data directory {dir} is in use by another palisade process ({holder}); stop it or use another --data-dir")]
    Locked {
        /// The directory.
        dir: PathBuf,
        /// What the lock file says about its holder.
        holder: String,
    },
    /// The old epoch file exists but does not parse.
    #[error("epoch file {path} is corrupt ({why}); refusing to start rather than guess: restore it from a backup, or, only if no client holds a token from this node, delete it")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Creating, reading or syncing failed.
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

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DataDirError + 'a {
    move |source| DataDirError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

impl From<DurableError> for DataDirError {
    fn from(error: DurableError) -> DataDirError {
        let (step, path, source) = error.into_parts();
        let action = match step {
            Step::CreateDir => "creating data directory",
            step => step.doing(),
        };
        DataDirError::Io {
            action,
            path,
            source,
        }
    }
}

/// The locked data directory. The lock lasts as long as this value.
#[derive(Debug)]
pub struct DataDir {
    dir: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates (durably) and locks `dir`.
    pub fn lock(dir: &Path) -> Result<DataDir, DataDirError> {
        // A directory that vanished in a power cut would make the next
        // start look like the first one.
        durable::create_dir_all(dir)?;
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
            return Err(DataDirError::Locked {
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
        Ok(DataDir {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The epoch an earlier single-node version left here, if any.
    pub fn legacy_epoch(&self) -> Result<Option<u32>, DataDirError> {
        let path = self.dir.join(LEGACY_EPOCH_FILE);
        match fs::read(&path) {
            Ok(bytes) => {
                let text = String::from_utf8(bytes).map_err(|_| DataDirError::Corrupt {
                    path: path.clone(),
                    why: "not text".into(),
                })?;
                parse_legacy(&text)
                    .map(Some)
                    .map_err(|why| DataDirError::Corrupt { path, why })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("reading", &path)(e)),
        }
    }
}

fn legacy_checksum(epoch: u32) -> u32 {
    crc32fast::hash(format!("{LEGACY_MAGIC} {epoch}").as_bytes())
}

fn parse_legacy(text: &str) -> Result<u32, String> {
    let line = text
        .strip_suffix('\n')
        .ok_or("missing final newline (torn write?)")?;
    let rest = line
        .strip_prefix(LEGACY_MAGIC)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or("wrong header")?;
    let (epoch, sum) = rest.split_once(' ').ok_or("missing checksum")?;
    let epoch: u32 = epoch.parse().map_err(|_| "epoch is not a number")?;
    let sum = u32::from_str_radix(sum, 16).map_err(|_| "checksum is not hex")?;
    if sum != legacy_checksum(epoch) {
        return Err("checksum mismatch".into());
    }
    Ok(epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy(epoch: u32) -> String {
        format!("{LEGACY_MAGIC} {epoch} {:08x}\n", legacy_checksum(epoch))
    }

    #[test]
    fn missing_parents_are_created_and_the_lock_is_exclusive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deep = dir.path().join("a/b/c");
        let held = DataDir::lock(&deep).expect("locks");
        assert!(deep.join(LOCK_FILE).exists());
        let err = DataDir::lock(&deep).expect_err("locked");
        assert!(matches!(err, DataDirError::Locked { .. }), "{err}");
        assert!(err.to_string().contains(&std::process::id().to_string()));
        drop(held);
        DataDir::lock(&deep).expect("free again");
    }

    #[test]
    fn the_legacy_epoch_is_read_or_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = DataDir::lock(dir.path()).expect("locks");
        assert_eq!(data.legacy_epoch().expect("none"), None);
        fs::write(dir.path().join(LEGACY_EPOCH_FILE), legacy(41)).expect("write");
        assert_eq!(data.legacy_epoch().expect("parses"), Some(41));
        let full = legacy(41);
        for cut in 0..full.len() {
            fs::write(dir.path().join(LEGACY_EPOCH_FILE), &full[..cut]).expect("write");
            assert!(data.legacy_epoch().is_err(), "accepted a file cut at {cut}");
        }
        fs::write(
            dir.path().join(LEGACY_EPOCH_FILE),
            "palisade-epoch v1 7 00000000\n",
        )
        .expect("write");
        assert!(matches!(
            data.legacy_epoch(),
            Err(DataDirError::Corrupt { .. })
        ));
    }
}
