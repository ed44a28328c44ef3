//! The proxy's config file: where it listens, where its fence state lives,
//! which lease service vouches for tokens, and its exports.
//!
//! ```toml
//! [proxy]
//! listen = "127.0.0.1:10809"      # NBD
//! metrics = "127.0.0.1:10810"     # GET /metrics (Prometheus text)
//! state_dir = "state"             # fence store; relative to this file
//!
//! [lease_service]
//! endpoint = "127.0.0.1:7400"     # a comma-separated list for a cluster
//! timeout = "2s"
//!
//! [[exports]]
//! name = "disk0"
//! tenant = "default"
//! resource = "disk0"
//! file = "disk0.img"              # or: nbd = "127.0.0.1:10900", nbd_export = "x"
//! size = "64MiB"                  # created with this size if missing
//! ```
//!
//! Unknown keys, missing keys and bad values are errors that name the key.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Longest export name (the NBD protocol allows 4096 bytes).
pub const EXPORT_NAME_MAX: usize = 256;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// `[proxy]`.
    pub proxy: ProxySection,
    /// `[lease_service]`.
    pub lease_service: LeaseService,
    /// `[[exports]]`.
    pub exports: Vec<Export>,
    /// The folder of the file, for relative paths (not a key).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// `[proxy]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    /// NBD listen address.
    pub listen: SocketAddr,
    /// Metrics listen address; none: no metrics endpoint.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// Fence store directory.
    pub state_dir: PathBuf,
}

/// `[lease_service]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseService {
    /// Client endpoint(s) of the lease service, comma-separated.
    pub endpoint: String,
    /// Time allowed per call.
    #[serde(default = "default_timeout", with = "duration_text")]
    pub timeout: Duration,
    /// File holding the tenant secret, for tenants that need one.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}

/// One `[[exports]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Export {
    /// Export name clients ask for (`NAME` or `NAME@TOKEN`).
    pub name: String,
    /// Lease tenant.
    pub tenant: String,
    /// Lease resource whose tokens fence this export.
    pub resource: String,
    /// File or block device backend.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Size to create a missing file with (`64MiB`, `1GiB`, bytes).
    #[serde(default, with = "size_text")]
    pub size: Option<u64>,
    /// Upstream NBD server backend (`host:port`).
    #[serde(default)]
    pub nbd: Option<SocketAddr>,
    /// Export name on the upstream server (default empty).
    #[serde(default)]
    pub nbd_export: String,
}

/// Where an export's data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendSpec {
    /// A local file or block device, created with `size` if missing.
    File {
        /// Resolved path.
        path: PathBuf,
        /// Size for a new file.
        size: Option<u64>,
    },
    /// An upstream NBD server.
    Nbd {
        /// Its address.
        addr: SocketAddr,
        /// Export name there.
        export: String,
    },
}

impl ProxyConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<ProxyConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let base = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."));
        ProxyConfig::parse(&text, base).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses and validates `text`; relative paths resolve against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<ProxyConfig, String> {
        let mut config: ProxyConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.base_dir = base.to_path_buf();
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.exports.is_empty() {
            return Err("exports: at least one [[exports]] entry is needed".into());
        }
        if self.lease_service.endpoint.trim().is_empty() {
            return Err("lease_service.endpoint: must name at least one node".into());
        }
        let mut names = HashSet::new();
        for (i, export) in self.exports.iter().enumerate() {
            let at = format!("exports[{i}]");
            if export.name.is_empty() || export.name.len() > EXPORT_NAME_MAX {
                return Err(format!(
                    "{at}.name: 1..={EXPORT_NAME_MAX} bytes, got {}",
                    export.name.len()
                ));
            }
            if export.name.contains('@') {
                return Err(format!(
                    "{at}.name: {:?} must not contain '@' (clients append @TOKEN)",
                    export.name
                ));
            }
            if !names.insert(export.name.as_str()) {
                return Err(format!("{at}.name: {:?} is listed twice", export.name));
            }
            palisade_proto::validate_resource(&export.resource)
                .map_err(|why| format!("{at}.resource: {why}"))?;
            if export.tenant.is_empty() {
                return Err(format!("{at}.tenant: must not be empty"));
            }
            match (&export.file, &export.nbd) {
                (Some(_), Some(_)) => {
                    return Err(format!("{at}: give either `file` or `nbd`, not both"))
                }
                (None, None) => return Err(format!("{at}: needs a backend: `file` or `nbd`")),
                (None, Some(_)) if export.size.is_some() => {
                    return Err(format!(
                        "{at}.size: only for `file` backends (the upstream server knows its size)"
                    ))
                }
                _ => {}
            }
            if export.size == Some(0) {
                return Err(format!("{at}.size: must be above 0"));
            }
        }
        Ok(())
    }

    /// `path` joined onto the config file's folder when relative.
    #[must_use]
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_relative() {
            self.base_dir.join(path)
        } else {
            path.to_path_buf()
        }
    }

    /// Where export `export` keeps its data.
    #[must_use]
    pub fn backend(&self, export: &Export) -> BackendSpec {
        match (&export.file, export.nbd) {
            (Some(file), _) => BackendSpec::File {
                path: self.resolve(file),
                size: export.size,
            },
            (None, Some(addr)) => BackendSpec::Nbd {
                addr,
                export: export.nbd_export.clone(),
            },
            (None, None) => unreachable!("validated: every export has a backend"),
        }
    }
}

/// `"2s"`, `"500ms"` as a [`Duration`].
mod duration_text {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        palisade_tuning::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// `"64MiB"`, `"1GiB"`, `"4096"` as bytes.
mod size_text {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        parse(&text).map(Some).map_err(serde::de::Error::custom)
    }

    pub(super) fn parse(text: &str) -> Result<u64, String> {
        let text = text.trim();
        let at = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(at);
        let value: u64 = digits
            .parse()
            .map_err(|_| format!("{text:?} is not a size like \"64MiB\""))?;
        let scale: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            _ => return Err(format!("{text:?}: units are B, KiB, MiB, GiB, TiB")),
        };
        value
            .checked_mul(scale)
            .ok_or_else(|| format!("{text:?} is too large"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[proxy]
listen = "127.0.0.1:10809"
metrics = "127.0.0.1:10810"
state_dir = "state"

[lease_service]
endpoint = "127.0.0.1:7400"

[[exports]]
name = "disk0"
tenant = "default"
resource = "disk0"
file = "disk0.img"
size = "64MiB"
"#;

    #[test]
    fn the_example_parses_and_resolves_paths() {
        let config = ProxyConfig::parse(GOOD, Path::new("/etc/p")).expect("valid");
        assert_eq!(config.lease_service.timeout, Duration::from_secs(2));
        assert_eq!(
            config.backend(&config.exports[0]),
            BackendSpec::File {
                path: PathBuf::from("/etc/p/disk0.img"),
                size: Some(64 << 20)
            }
        );
        assert_eq!(
            config.resolve(&config.proxy.state_dir),
            PathBuf::from("/etc/p/state")
        );
    }

    #[test]
    fn bad_files_name_the_key() {
        let cases = [
            (
                GOOD.replace("size = \"64MiB\"", "size = \"64 parsecs\""),
                "units",
            ),
            (
                GOOD.replace("tenant = \"default\"", "tenant = \"default\"\ncolour = 1"),
                "colour",
            ),
            (
                GOOD.replace("name = \"disk0\"", "name = \"disk@0\""),
                "must not contain '@'",
            ),
            (
                GOOD.replace("file = \"disk0.img\"", "nbd = \"127.0.0.1:1\""),
                "only for `file`",
            ),
            (
                GOOD.replace("file = \"disk0.img\"\n", ""),
                "needs a backend",
            ),
            (
                GOOD.replace("resource = \"disk0\"", "resource = \"\""),
                "exports[0].resource",
            ),
            (
                format!(
                    "{GOOD}\n{}",
                    &GOOD[GOOD.find("[[exports]]").expect("has exports")..]
                ),
                "listed twice",
            ),
            (
                GOOD.replace("listen = \"127.0.0.1:10809\"", "listen = \"nowhere\""),
                "listen",
            ),
        ];
        for (text, expected) in cases {
            let err = ProxyConfig::parse(&text, Path::new(".")).expect_err(expected);
            assert!(err.contains(expected), "{expected:?} not in {err}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(size_text::parse("4096"), Ok(4096));
        assert_eq!(size_text::parse("1GiB"), Ok(1 << 30));
        assert!(size_text::parse("99999999999TiB").is_err());
    }
}
