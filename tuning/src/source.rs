//! Where config text comes from.
//!
//! Loading takes a [`Source`] instead of reading files itself, so tests and
//! the simulator hand it text without touching the disk (as linkerd's
//! `Strings` trait does for environment variables).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

/// Something that can read a config file by path.
pub trait Source {
    /// Reads the whole file at `path` as UTF-8 text.
    ///
    /// # Errors
    ///
    /// Any I/O error, including [`io::ErrorKind::NotFound`].
    fn read_to_string(&self, path: &Path) -> io::Result<String>;
}

/// Reads the real file system. Use it in binaries.
#[derive(Debug, Clone, Copy, Default)]
pub struct FsSource;

impl Source for FsSource {
    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// Files held in memory, keyed by exact path. Use it in tests.
///
/// A path that is not in the map reads as [`io::ErrorKind::NotFound`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemSource(pub HashMap<PathBuf, String>);

impl MemSource {
    /// An empty source: every read fails with `NotFound`.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the file at `path`; returns `self` for chaining.
    #[must_use]
    pub fn with(mut self, path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        self.insert(path, text);
        self
    }

    /// Adds (or replaces) the file at `path`.
    pub fn insert(&mut self, path: impl Into<PathBuf>, text: impl Into<String>) {
        self.0.insert(path.into(), text.into());
    }
}

impl Source for MemSource {
    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        self.0
            .get(path)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file in MemSource"))
    }
}

impl<S: Source + ?Sized> Source for &S {
    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        (**self).read_to_string(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_source_reads_what_was_inserted() {
        let source = MemSource::new().with("/etc/palisade.toml", "[node]\nid = 2\n");
        assert_eq!(
            source.read_to_string(Path::new("/etc/palisade.toml")).ok(),
            Some("[node]\nid = 2\n".to_owned())
        );
        let missing = source.read_to_string(Path::new("/etc/other.toml"));
        assert_eq!(
            missing.map_err(|error| error.kind()),
            Err(io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn fs_source_reports_missing_files() {
        let missing = FsSource.read_to_string(Path::new("/nonexistent/palisade/config.toml"));
        assert_eq!(
            missing.map_err(|error| error.kind()),
            Err(io::ErrorKind::NotFound)
        );
    }
}
