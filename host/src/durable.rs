//! Files and directories that survive a power cut, and the read-back of
//! what they hold.
//!
//! A file is durable once its bytes are fsynced *and* the directory entry
//! naming it is fsynced; a replacement is atomic when it is written whole
//! to a temporary file first and renamed over the old one. Each helper does
//! one of those steps, so a caller that must treat a failure before the
//! rename differently from one after it (the fencing proxy marks the file
//! uncertain) can do so:
//!
//! | step | helper |
//! |---|---|
//! | create missing directories, fsync each parent | [`create_dir_all`] |
//! | create or truncate, write, fsync | [`write_synced`] |
//! | rename over, fsync the directory | [`rename_synced`] |
//! | all three for one file | [`replace`] |
//! | fsync a directory | [`sync_dir`] |
//! | read the first bytes of a file back | [`read_prefix`] |
//!
//! Every error is a [`DurableError`]: the [`Step`] that failed, the path it
//! failed on, and the `io::Error` itself.
//!
//! What it never does: retry an fsync (after a failed fsync the kernel may
//! have dropped the dirty pages, so only the caller's recovery may decide
//! what the file holds), or read a clock.
//!
//! ```
//! use palisade_host::durable::{self, Step};
//!
//! let dir = tempfile::tempdir()?;
//! let state = dir.path().join("a/b/state");
//! durable::create_dir_all(state.parent().unwrap())?;
//! durable::replace(&state, &durable::tmp_path(&state), b"v1", 0o600)?;
//! let err = durable::write_synced(&dir.path().join("none/x"), b"", 0o600).unwrap_err();
//! assert_eq!(err.step(), Step::Create);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The suffix [`tmp_path`] adds.
pub const TMP_SUFFIX: &str = ".tmp";

/// One step of making a file durable; the step an error happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Creating a directory.
    CreateDir,
    /// Creating (or truncating) a file.
    Create,
    /// Opening a file to read it.
    Open,
    /// Reading a file.
    Read,
    /// Writing a file.
    Write,
    /// Fsyncing a file.
    Sync,
    /// Renaming a file over another.
    Rename,
    /// Fsyncing a directory.
    SyncDir,
}

impl Step {
    /// What the step is doing, as an error message says it ("fsyncing
    /// directory /var/lib/x: ...").
    #[must_use]
    pub const fn doing(self) -> &'static str {
        match self {
            Step::CreateDir => "creating directory",
            Step::Create => "creating",
            Step::Open => "opening",
            Step::Read => "reading",
            Step::Write => "writing",
            Step::Sync => "fsyncing",
            Step::Rename => "renaming over",
            Step::SyncDir => "fsyncing directory",
        }
    }
}

/// A durable-file step failed. The fault is the host's (disk, permissions,
/// a full file system), never the caller's input; what the file holds after
/// a failed [`Step::Write`], [`Step::Sync`], [`Step::Rename`] or
/// [`Step::SyncDir`] is unknown until it is read back.
#[derive(Debug, thiserror::Error)]
#[error("{} {}: {source}", step.doing(), path.display())]
pub struct DurableError {
    /// The step that failed.
    step: Step,
    /// The file or directory it failed on.
    path: PathBuf,
    /// The error.
    #[source]
    source: io::Error,
}

impl DurableError {
    fn at(step: Step, path: &Path) -> impl FnOnce(io::Error) -> DurableError + '_ {
        move |source| DurableError {
            step,
            path: path.to_path_buf(),
            source,
        }
    }

    /// The step that failed.
    #[must_use]
    pub fn step(&self) -> Step {
        self.step
    }

    /// The file or directory it failed on.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying error.
    #[must_use]
    pub fn io(&self) -> &io::Error {
        &self.source
    }

    /// The step, the path and the underlying error, for a caller that wraps
    /// them in its own error type.
    #[must_use]
    pub fn into_parts(self) -> (Step, PathBuf, io::Error) {
        (self.step, self.path, self.source)
    }
}

/// `path` with [`TMP_SUFFIX`] appended (`fence.bin` → `fence.bin.tmp`): where
/// a replacement is written before its rename.
#[must_use]
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut tmp = OsString::from(path.as_os_str());
    tmp.push(TMP_SUFFIX);
    PathBuf::from(tmp)
}

/// The directory holding `path`'s entry (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Fsyncs directory `dir`, making the entries added to or renamed in it
/// durable.
pub fn sync_dir(dir: &Path) -> Result<(), DurableError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(DurableError::at(Step::SyncDir, dir))
}

/// Creates `dir` and any missing parents, fsyncing the parent of each
/// directory it creates: a directory that vanished in a power cut would make
/// the next start look like the first one. An existing entry (even a
/// dangling symlink) ends the walk up.
pub fn create_dir_all(dir: &Path) -> Result<(), DurableError> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at {
        if path.as_os_str().is_empty() || fs::symlink_metadata(path).is_ok() {
            break;
        }
        missing.push(path);
        at = path.parent();
    }
    for created in missing.into_iter().rev() {
        match fs::create_dir(created) {
            Ok(()) => {}
            // Made by someone else meanwhile: not ours to fsync.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(DurableError::at(Step::CreateDir, created)(e)),
        }
        sync_dir(parent_of(created))?;
    }
    Ok(())
}

/// Creates (or truncates) `path` with permission bits `mode` (before the
/// umask; `0o666` is what `File::create` uses), writes `bytes` and fsyncs
/// the file. The directory entry is not synced: rename the file into place
/// with [`rename_synced`], or call [`sync_dir`].
pub fn write_synced(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DurableError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(DurableError::at(Step::Create, path))?;
    file.write_all(bytes)
        .map_err(DurableError::at(Step::Write, path))?;
    file.sync_all().map_err(DurableError::at(Step::Sync, path))
}

/// Renames `from` over `to` and fsyncs `to`'s directory. From the rename
/// on, a failure leaves it unknown which of the two files a restart sees.
pub fn rename_synced(from: &Path, to: &Path) -> Result<(), DurableError> {
    fs::rename(from, to).map_err(DurableError::at(Step::Rename, to))?;
    sync_dir(parent_of(to))
}

/// Replaces `path` atomically with `bytes`: [`write_synced`] to `tmp` (in
/// the same directory; [`tmp_path`] names one), then [`rename_synced`].
/// A crash at any point leaves either the old file or the new one.
pub fn replace(path: &Path, tmp: &Path, bytes: &[u8], mode: u32) -> Result<(), DurableError> {
    write_synced(tmp, bytes, mode)?;
    rename_synced(tmp, path)
}

/// Reads `path` from offset 0 until `buf` is full or the file ends, and
/// returns how many bytes were read; `Ok(None)` if the file does not exist.
/// A torn or short file is the caller's to judge: this only reads.
pub fn read_prefix(path: &Path, buf: &mut [u8]) -> Result<Option<usize>, DurableError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DurableError::at(Step::Open, path)(e)),
    };
    let mut len = 0;
    while len < buf.len() {
        let offset = u64::try_from(len).expect("a buffer's length fits in u64");
        match file.read_at(&mut buf[len..], offset) {
            Ok(0) => break,
            Ok(read) => len += read,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(DurableError::at(Step::Read, path)(e)),
        }
    }
    Ok(Some(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn missing_parents_are_created_and_existing_ones_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deep = dir.path().join("a/b/c");
        create_dir_all(&deep).expect("creates");
        assert!(deep.is_dir());
        create_dir_all(&deep).expect("exists already");
        create_dir_all(Path::new("")).expect("nothing to do");
        let file = dir.path().join("f");
        fs::write(&file, b"x").expect("write");
        let err = create_dir_all(&file.join("under")).expect_err("a file is no directory");
        assert_eq!(err.step(), Step::CreateDir);
        assert_eq!(err.path(), file.join("under"));
    }

    #[test]
    fn replace_writes_whole_files_with_their_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state");
        let tmp = tmp_path(&path);
        assert_eq!(tmp, dir.path().join("state.tmp"));
        replace(&path, &tmp, b"first", 0o600).expect("replace");
        replace(&path, &tmp, b"2nd", 0o600).expect("replace again");
        assert_eq!(fs::read(&path).expect("read"), b"2nd");
        assert!(!tmp.exists(), "the temporary file is renamed away");
        let mode = fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn errors_name_the_step_and_the_path_and_keep_the_io_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let gone = dir.path().join("gone");
        let err = rename_synced(&gone, &dir.path().join("to")).expect_err("no source");
        assert_eq!(err.step(), Step::Rename);
        assert_eq!(err.io().kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().starts_with("renaming over "), "{err}");
        let err = sync_dir(&gone).expect_err("no directory");
        assert_eq!(err.step(), Step::SyncDir);
        assert!(
            err.to_string()
                .starts_with(&format!("fsyncing directory {}: ", gone.display())),
            "{err}"
        );
        let (step, path, source) = err.into_parts();
        assert_eq!(
            (step, path, source.kind()),
            (Step::SyncDir, gone, io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn read_prefix_reads_up_to_the_buffer_or_the_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let mut buf = [0u8; 4];
        assert_eq!(read_prefix(&path, &mut buf).expect("absent"), None);
        fs::write(&path, b"ab").expect("write");
        assert_eq!(read_prefix(&path, &mut buf).expect("short"), Some(2));
        assert_eq!(&buf[..2], b"ab");
        fs::write(&path, b"abcdef").expect("write");
        assert_eq!(read_prefix(&path, &mut buf).expect("long"), Some(4));
        assert_eq!(&buf, b"abcd");
        let err = read_prefix(dir.path(), &mut buf).expect_err("a directory");
        assert_eq!(err.step(), Step::Read);
    }
}
