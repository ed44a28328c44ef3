//! The proxy's config file: where it listens, where its fence state lives,
//! which lease service vouches for tokens, and its exports.
//!
//! ```toml
//! [proxy]
//! listen = "127.0.0.1:10809"      # NBD
//! metrics = "127.0.0.1:10810"     # GET /metrics (Prometheus text)
//! state_dir = "state"             # fence store; relative to this file
//! connections_max = 1024          # NBD clients at once; more are closed at accept
//! handshake_timeout = "10s"       # a client must finish the NBD handshake within this
//! idle_timeout = "1h"             # a connection with a token, idle this long, is closed
//! read_only_idle_timeout = "5m"   # the same for read-only connections (no token)
//! requests_in_flight_max = 128    # NBD requests one connection may have in flight
//! in_flight_bytes_max = "32MiB"   # their read and write bytes, per connection
//!
//! [lease_service]
//! endpoint = "127.0.0.1:7400"     # a comma-separated list for a cluster
//! timeout = "2s"                  # per call, across every node it tries
//! attempt_timeout = "1s"          # per node; default: the smaller of 1s and timeout / 2
//! watch_wait = "10s"              # one watch call's wait
//! require_check = false           # true: no write unless the service confirmed the fence
//!
//! [[exports]]
//! name = "disk0"
//! tenant = "default"
//! resource = "disk0"
//! file = "disk0.img"              # or: nbd = "127.0.0.1:10900", nbd_export = "x"
//! size = "64MiB"                  # created with this size if missing
//!
//! [[exports]]
//! name = "disk1"
//! tenant = "default"
//! resource = "disk1"
//! nbd_socket = "/run/qemu-nbd/disk1.sock" # an upstream NBD server's Unix socket
//! nbd_export = "disk1"            # its export name (default empty)
//! ```
//!
//! An export has exactly one backend: `file`, `nbd` (an upstream NBD
//! server's TCP address) or `nbd_socket` (its Unix-domain socket, an
//! absolute path: a server on the same host, one loopback TCP hop less).
//!
//! Unknown keys, missing keys and bad values are errors that name the key.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Why a config cannot be used; always the operator's to fix. The
/// message names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, an unknown or missing key, or a value of the wrong type.
    #[error(transparent)]
    Syntax(#[from] toml::de::Error),
    /// A value out of its range, or values that do not fit together; the
    /// message names the key.
    #[error("{0}")]
    Invalid(String),
    /// One of the above, in this file.
    #[error("{}", path.display())]
    InFile {
        /// The config file.
        path: PathBuf,
        /// What is wrong in it.
        #[source]
        source: Box<ConfigError>,
    },
}

/// Longest export name (the NBD protocol allows 4096 bytes).
pub const EXPORT_NAME_MAX: usize = 256;
/// Longest `exports[].nbd_socket` in bytes: a Unix socket address holds
/// 108 bytes of path, the last one the terminating NUL.
pub const NBD_SOCKET_PATH_MAX: usize = 107;
/// Largest `proxy.connections_max`.
pub const CONNECTIONS_MAX_LIMIT: usize = 65_536;
/// Shortest `proxy.handshake_timeout`, `proxy.idle_timeout` and
/// `proxy.read_only_idle_timeout`: below it a slow network or a busy
/// machine would cut off healthy clients.
pub const CONNECTION_TIMEOUT_MIN: Duration = Duration::from_secs(1);
/// Longest `proxy.handshake_timeout`.
pub const HANDSHAKE_TIMEOUT_MAX: Duration = Duration::from_secs(600);
/// Longest `proxy.idle_timeout` and `proxy.read_only_idle_timeout`.
pub const IDLE_TIMEOUT_MAX: Duration = Duration::from_secs(7 * 24 * 3600);
/// Largest `proxy.requests_in_flight_max`.
pub const REQUESTS_IN_FLIGHT_LIMIT: usize = 4096;
/// Smallest `proxy.in_flight_bytes_max`.
pub const IN_FLIGHT_BYTES_MIN: u64 = 64 << 10;
/// Largest `proxy.in_flight_bytes_max`.
pub const IN_FLIGHT_BYTES_LIMIT: u64 = 1 << 30;
/// Shortest `lease_service.attempt_timeout`.
pub const ATTEMPT_TIMEOUT_MIN: Duration = Duration::from_millis(10);
/// Longest `lease_service.timeout`: a call that may take longer holds a
/// blocking thread and a waiting handshake for too long.
pub const LEASE_TIMEOUT_MAX: Duration = Duration::from_secs(60);
/// Shortest and longest `lease_service.watch_wait` (the service caps a
/// watch's wait at 60 s).
pub const WATCH_WAIT_MIN: Duration = Duration::from_secs(1);
/// See [`WATCH_WAIT_MIN`].
pub const WATCH_WAIT_MAX: Duration = Duration::from_secs(60);

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
    /// NBD clients connected at once; a client beyond it is closed at
    /// accept. Each connection holds two file descriptors (its socket and
    /// its backend handle).
    #[serde(default = "default_connections_max")]
    pub connections_max: usize,
    /// Time a client has from connecting to finishing the NBD handshake.
    #[serde(default = "default_handshake_timeout", with = "duration_text")]
    pub handshake_timeout: Duration,
    /// A connection bound to a token that sends no request for this long
    /// is closed.
    #[serde(default = "default_idle_timeout", with = "duration_text")]
    pub idle_timeout: Duration,
    /// A read-only connection (no token: anyone may open one) that sends
    /// no request for this long is closed.
    #[serde(default = "default_read_only_idle_timeout", with = "duration_text")]
    pub read_only_idle_timeout: Duration,
    /// NBD requests one connection may have in flight (taken in and not
    /// yet answered on the socket). A client that sends more waits: the
    /// proxy stops reading its socket until a reply went out.
    #[serde(default = "default_requests_in_flight_max")]
    pub requests_in_flight_max: usize,
    /// Read and write bytes one connection may have in flight; with
    /// `requests_in_flight_max` it bounds a connection's memory. A request
    /// larger than this still goes alone (nothing else in flight).
    #[serde(default = "default_in_flight_bytes_max", with = "size_default")]
    pub in_flight_bytes_max: u64,
}

fn default_requests_in_flight_max() -> usize {
    128
}

fn default_in_flight_bytes_max() -> u64 {
    32 << 20
}

fn default_connections_max() -> usize {
    1024
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(3600)
}

fn default_read_only_idle_timeout() -> Duration {
    Duration::from_secs(300)
}

/// `[lease_service]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseService {
    /// Client endpoint(s) of the lease service, comma-separated.
    pub endpoint: String,
    /// Time allowed per call, across every node it tries. Also how long a
    /// write under the fence's own token waits for the service to confirm
    /// the fence after a start or a lost watch (see `require_check`).
    #[serde(default = "default_timeout", with = "duration_text")]
    pub timeout: Duration,
    /// Time allowed per node and attempt (connect and handshake, or one
    /// answer): a node that accepts connections and never answers costs
    /// this, not the whole `timeout`. None: the smaller of 1 s and
    /// `timeout / 2` ([`LeaseService::attempt_timeout`]).
    #[serde(default, with = "optional_duration_text")]
    pub attempt_timeout: Option<Duration>,
    /// How long one watch call waits for a new grant. A watch that cannot
    /// reach a serving leader is noticed (and the fences count as
    /// unconfirmed) at most about `watch_wait + timeout` later.
    #[serde(default = "default_watch_wait", with = "duration_text")]
    pub watch_wait: Duration,
    /// What to do with a write under a token the service could not vouch
    /// for: the fence's own token while the fence is unconfirmed (after a
    /// start or a lost watch, once `timeout` passed), or a token above the
    /// fence while the service does not answer. `true`: refuse it (EPERM,
    /// or a refused handshake). `false` (default): admit it on the local
    /// fence alone and log a warning.
    #[serde(default)]
    pub require_check: bool,
    /// File holding the tenant secret, for tenants that need one.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_watch_wait() -> Duration {
    Duration::from_secs(10)
}

impl LeaseService {
    /// The per-attempt deadline: `attempt_timeout` if set, else the
    /// smaller of 1 s and `timeout / 2` (so a hung node leaves at least
    /// half of every call to the others).
    #[must_use]
    pub fn attempt_timeout(&self) -> Duration {
        self.attempt_timeout
            .unwrap_or_else(|| (self.timeout / 2).min(Duration::from_secs(1)))
            .max(ATTEMPT_TIMEOUT_MIN)
    }
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
    /// Upstream NBD server backend on this host: the absolute path of the
    /// Unix-domain socket it listens on (`qemu-nbd -k PATH`,
    /// `nbdkit -U PATH`).
    #[serde(default)]
    pub nbd_socket: Option<PathBuf>,
    /// Export name on the upstream server (default empty); for `nbd` and
    /// `nbd_socket` only.
    #[serde(default)]
    pub nbd_export: String,
}

/// Where an upstream NBD server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdAddr {
    /// A TCP address (`nbd`).
    Tcp(SocketAddr),
    /// A Unix-domain stream socket's absolute path (`nbd_socket`).
    Unix(PathBuf),
}

impl fmt::Display for NbdAddr {
    /// `127.0.0.1:10900`, or `unix:/run/qemu-nbd/disk0.sock`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NbdAddr::Tcp(addr) => write!(f, "{addr}"),
            NbdAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
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
        addr: NbdAddr,
        /// Export name there.
        export: String,
    },
}

impl ProxyConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<ProxyConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
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
        ProxyConfig::parse(&text, base).map_err(|e| ConfigError::InFile {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// Parses and validates `text`; relative paths resolve against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<ProxyConfig, ConfigError> {
        let mut config: ProxyConfig = toml::from_str(text)?;
        config.base_dir = base.to_path_buf();
        config.validate().map_err(ConfigError::Invalid)?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.exports.is_empty() {
            return Err("exports: at least one [[exports]] entry is needed".into());
        }
        if self.lease_service.endpoint.trim().is_empty() {
            return Err("lease_service.endpoint: must name at least one node".into());
        }
        self.validate_limits()?;
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
            validate_backend(export).map_err(|why| format!("{at}{why}"))?;
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), String> {
        let proxy = &self.proxy;
        if !(1..=CONNECTIONS_MAX_LIMIT).contains(&proxy.connections_max) {
            return Err(format!(
                "proxy.connections_max: 1..={CONNECTIONS_MAX_LIMIT}, got {}",
                proxy.connections_max
            ));
        }
        if !(1..=REQUESTS_IN_FLIGHT_LIMIT).contains(&proxy.requests_in_flight_max) {
            return Err(format!(
                "proxy.requests_in_flight_max: 1..={REQUESTS_IN_FLIGHT_LIMIT}, got {}",
                proxy.requests_in_flight_max
            ));
        }
        if !(IN_FLIGHT_BYTES_MIN..=IN_FLIGHT_BYTES_LIMIT).contains(&proxy.in_flight_bytes_max) {
            return Err(format!(
                "proxy.in_flight_bytes_max: {IN_FLIGHT_BYTES_MIN}..={IN_FLIGHT_BYTES_LIMIT} bytes, got {}",
                proxy.in_flight_bytes_max
            ));
        }
        in_range(
            "proxy.handshake_timeout",
            proxy.handshake_timeout,
            CONNECTION_TIMEOUT_MIN,
            HANDSHAKE_TIMEOUT_MAX,
        )?;
        in_range(
            "proxy.idle_timeout",
            proxy.idle_timeout,
            CONNECTION_TIMEOUT_MIN,
            IDLE_TIMEOUT_MAX,
        )?;
        in_range(
            "proxy.read_only_idle_timeout",
            proxy.read_only_idle_timeout,
            CONNECTION_TIMEOUT_MIN,
            IDLE_TIMEOUT_MAX,
        )?;
        let lease = &self.lease_service;
        in_range(
            "lease_service.timeout",
            lease.timeout,
            ATTEMPT_TIMEOUT_MIN,
            LEASE_TIMEOUT_MAX,
        )?;
        if let Some(attempt) = lease.attempt_timeout {
            in_range(
                "lease_service.attempt_timeout",
                attempt,
                ATTEMPT_TIMEOUT_MIN,
                lease.timeout,
            )
            .map_err(|e| format!("{e} (at most lease_service.timeout)"))?;
        }
        in_range(
            "lease_service.watch_wait",
            lease.watch_wait,
            WATCH_WAIT_MIN,
            WATCH_WAIT_MAX,
        )?;
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
        let addr = match (&export.file, export.nbd, &export.nbd_socket) {
            (Some(file), _, _) => {
                return BackendSpec::File {
                    path: self.resolve(file),
                    size: export.size,
                }
            }
            (None, Some(addr), _) => NbdAddr::Tcp(addr),
            (None, None, Some(path)) => NbdAddr::Unix(path.clone()),
            (None, None, None) => unreachable!("validated: every export has a backend"),
        };
        BackendSpec::Nbd {
            addr,
            export: export.nbd_export.clone(),
        }
    }
}

/// One export's backend keys: exactly one of `file`, `nbd`, `nbd_socket`,
/// and only the keys that go with it. The message starts with `.key: `
/// or `: ` (the caller puts `exports[i]` in front).
fn validate_backend(export: &Export) -> Result<(), String> {
    let given: Vec<&str> = [
        ("file", export.file.is_some()),
        ("nbd", export.nbd.is_some()),
        ("nbd_socket", export.nbd_socket.is_some()),
    ]
    .into_iter()
    .filter_map(|(key, set)| set.then_some(key))
    .collect();
    match given.as_slice() {
        [] => {
            return Err(
                ": needs a backend: `file`, `nbd` (host:port) or `nbd_socket` (a Unix socket path)"
                    .into(),
            )
        }
        [_] => {}
        both => {
            return Err(format!(
                ": `{}` name {} backends; give exactly one",
                both.join("` and `"),
                both.len()
            ))
        }
    }
    if export.file.is_some() {
        if !export.nbd_export.is_empty() {
            return Err(".nbd_export: only for `nbd` and `nbd_socket` backends".into());
        }
        if export.size == Some(0) {
            return Err(".size: must be above 0".into());
        }
        return Ok(());
    }
    if export.size.is_some() {
        return Err(".size: only for `file` backends (the upstream server knows its size)".into());
    }
    if let Some(path) = &export.nbd_socket {
        let bytes = path.as_os_str().as_bytes();
        if bytes.is_empty() {
            return Err(".nbd_socket: must not be empty".into());
        }
        if !path.is_absolute() {
            return Err(format!(
                ".nbd_socket: {path:?} must be an absolute path (the upstream server's socket, not a path relative to this file)"
            ));
        }
        if bytes.contains(&0) {
            return Err(format!(".nbd_socket: {path:?} contains a NUL byte"));
        }
        if bytes.len() > NBD_SOCKET_PATH_MAX {
            return Err(format!(
                ".nbd_socket: {} bytes; a Unix socket path has at most {NBD_SOCKET_PATH_MAX}",
                bytes.len()
            ));
        }
    }
    Ok(())
}

fn in_range(key: &str, value: Duration, min: Duration, max: Duration) -> Result<(), String> {
    if value < min || value > max {
        return Err(format!(
            "{key}: {} ms is outside {}..={} ms",
            value.as_millis(),
            min.as_millis(),
            max.as_millis()
        ));
    }
    Ok(())
}

/// An optional `"2s"`, `"500ms"`.
mod optional_duration_text {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        palisade_tuning::parse_duration(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
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

/// A required-with-default `"32MiB"` as bytes.
mod size_default {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        super::size_text::parse(&text).map_err(serde::de::Error::custom)
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
            config.lease_service.attempt_timeout(),
            Duration::from_secs(1)
        );
        assert_eq!(config.lease_service.watch_wait, Duration::from_secs(10));
        assert!(!config.lease_service.require_check);
        assert_eq!(config.proxy.connections_max, 1024);
        assert_eq!(config.proxy.handshake_timeout, Duration::from_secs(10));
        assert_eq!(config.proxy.idle_timeout, Duration::from_secs(3600));
        assert_eq!(
            config.proxy.read_only_idle_timeout,
            Duration::from_secs(300)
        );
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
            (
                GOOD.replace("state_dir", "connections_max = 0\nstate_dir"),
                "proxy.connections_max",
            ),
            (
                GOOD.replace("state_dir", "connections_max = 100000\nstate_dir"),
                "proxy.connections_max",
            ),
            (
                GOOD.replace("state_dir", "requests_in_flight_max = 0\nstate_dir"),
                "proxy.requests_in_flight_max",
            ),
            (
                GOOD.replace("state_dir", "in_flight_bytes_max = \"4KiB\"\nstate_dir"),
                "proxy.in_flight_bytes_max",
            ),
            (
                GOOD.replace("state_dir", "handshake_timeout = \"10ms\"\nstate_dir"),
                "proxy.handshake_timeout",
            ),
            (
                GOOD.replace("state_dir", "idle_timeout = \"0s\"\nstate_dir"),
                "proxy.idle_timeout",
            ),
            (
                GOOD.replace("state_dir", "read_only_idle_timeout = \"9999h\"\nstate_dir"),
                "proxy.read_only_idle_timeout",
            ),
            (
                GOOD.replace("state_dir", "idle_timeout = \"soon\"\nstate_dir"),
                "idle_timeout",
            ),
            (
                GOOD.replace(
                    "endpoint = \"127.0.0.1:7400\"",
                    "endpoint = \"127.0.0.1:7400\"\nattempt_timeout = \"3s\"",
                ),
                "lease_service.attempt_timeout",
            ),
            (
                GOOD.replace(
                    "endpoint = \"127.0.0.1:7400\"",
                    "endpoint = \"127.0.0.1:7400\"\nwatch_wait = \"2m\"",
                ),
                "lease_service.watch_wait",
            ),
            (
                GOOD.replace(
                    "endpoint = \"127.0.0.1:7400\"",
                    "endpoint = \"127.0.0.1:7400\"\ntimeout = \"0s\"",
                ),
                "lease_service.timeout",
            ),
            (
                GOOD.replace(
                    "endpoint = \"127.0.0.1:7400\"",
                    "endpoint = \"127.0.0.1:7400\"\nrequire_check = \"yes\"",
                ),
                "require_check",
            ),
        ];
        for (text, expected) in cases {
            let err = ProxyConfig::parse(&text, Path::new("."))
                .expect_err(expected)
                .to_string();
            assert!(err.contains(expected), "{expected:?} not in {err}");
        }
    }

    /// The export's backend lines of GOOD replaced by `lines`.
    fn with_backend(lines: &str) -> String {
        GOOD.replace("file = \"disk0.img\"\nsize = \"64MiB\"\n", lines)
    }

    #[test]
    fn upstream_backends_parse_by_address_or_socket_path() {
        let tcp = with_backend("nbd = \"127.0.0.1:10900\"\nnbd_export = \"up\"\n");
        let config = ProxyConfig::parse(&tcp, Path::new("/etc/p")).expect("valid");
        assert_eq!(
            config.backend(&config.exports[0]),
            BackendSpec::Nbd {
                addr: NbdAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 10900))),
                export: "up".into()
            }
        );
        let unix = with_backend("nbd_socket = \"/run/qemu-nbd/disk0.sock\"\nnbd_export = \"up\"\n");
        let config = ProxyConfig::parse(&unix, Path::new("/etc/p")).expect("valid");
        let spec = config.backend(&config.exports[0]);
        assert_eq!(
            spec,
            BackendSpec::Nbd {
                addr: NbdAddr::Unix(PathBuf::from("/run/qemu-nbd/disk0.sock")),
                export: "up".into()
            }
        );
        let BackendSpec::Nbd { addr, .. } = spec else {
            unreachable!("matched above")
        };
        assert_eq!(addr.to_string(), "unix:/run/qemu-nbd/disk0.sock");
        // No export name: the upstream's default (empty) export.
        let unnamed = with_backend("nbd_socket = \"/run/x.sock\"\n");
        let config = ProxyConfig::parse(&unnamed, Path::new(".")).expect("valid");
        assert_eq!(config.exports[0].nbd_export, "");
        // The longest path a Unix socket address holds is accepted.
        let longest = format!("/{}", "s".repeat(NBD_SOCKET_PATH_MAX - 1));
        let text = with_backend(&format!("nbd_socket = \"{longest}\"\n"));
        ProxyConfig::parse(&text, Path::new(".")).expect("107 bytes fit");
    }

    #[test]
    fn every_bad_backend_combination_is_named() {
        let too_long = format!("/{}", "s".repeat(NBD_SOCKET_PATH_MAX));
        let cases = [
            (
                "file = \"d.img\"\nnbd_socket = \"/run/x.sock\"\n".to_owned(),
                "exports[0]: `file` and `nbd_socket` name 2 backends; give exactly one",
            ),
            (
                "file = \"d.img\"\nnbd = \"127.0.0.1:1\"\n".to_owned(),
                "exports[0]: `file` and `nbd` name 2 backends",
            ),
            (
                "nbd = \"127.0.0.1:1\"\nnbd_socket = \"/run/x.sock\"\n".to_owned(),
                "exports[0]: `nbd` and `nbd_socket` name 2 backends",
            ),
            (
                "file = \"d.img\"\nnbd = \"127.0.0.1:1\"\nnbd_socket = \"/run/x.sock\"\n"
                    .to_owned(),
                "`file` and `nbd` and `nbd_socket` name 3 backends",
            ),
            (
                "nbd_export = \"up\"\n".to_owned(),
                "exports[0]: needs a backend: `file`, `nbd` (host:port) or `nbd_socket`",
            ),
            (
                "nbd_socket = \"\"\n".to_owned(),
                "exports[0].nbd_socket: must not be empty",
            ),
            (
                "nbd_socket = \"run/x.sock\"\n".to_owned(),
                "exports[0].nbd_socket: \"run/x.sock\" must be an absolute path",
            ),
            (
                "nbd_socket = \"/run/x\\u0000.sock\"\n".to_owned(),
                "exports[0].nbd_socket: \"/run/x\\0.sock\" contains a NUL byte",
            ),
            (
                format!("nbd_socket = \"{too_long}\"\n"),
                "exports[0].nbd_socket: 108 bytes; a Unix socket path has at most 107",
            ),
            (
                "nbd_socket = \"/run/x.sock\"\nsize = \"1MiB\"\n".to_owned(),
                "exports[0].size: only for `file` backends",
            ),
            (
                "file = \"d.img\"\nnbd_export = \"up\"\n".to_owned(),
                "exports[0].nbd_export: only for `nbd` and `nbd_socket` backends",
            ),
            (
                "file = \"d.img\"\nsize = \"0\"\n".to_owned(),
                "exports[0].size: must be above 0",
            ),
            ("nbd_socket = 7\n".to_owned(), "nbd_socket"),
        ];
        for (lines, expected) in cases {
            let err = ProxyConfig::parse(&with_backend(&lines), Path::new("."))
                .expect_err(expected)
                .to_string();
            assert!(err.contains(expected), "{expected:?} not in {err}");
        }
    }

    #[test]
    fn limits_and_policy_parse() {
        let text = GOOD
            .replace(
                "state_dir",
                "connections_max = 64\nhandshake_timeout = \"5s\"\nidle_timeout = \"2m\"\nread_only_idle_timeout = \"30s\"\nrequests_in_flight_max = 16\nin_flight_bytes_max = \"1MiB\"\nstate_dir",
            )
            .replace(
                "endpoint = \"127.0.0.1:7400\"",
                "endpoint = \"a:1, b:2,c:3\"\ntimeout = \"3s\"\nattempt_timeout = \"250ms\"\nwatch_wait = \"5s\"\nrequire_check = true",
            );
        let config = ProxyConfig::parse(&text, Path::new(".")).expect("valid");
        assert_eq!(config.proxy.connections_max, 64);
        assert_eq!(config.proxy.requests_in_flight_max, 16);
        assert_eq!(config.proxy.in_flight_bytes_max, 1 << 20);
        assert_eq!(config.proxy.handshake_timeout, Duration::from_secs(5));
        assert_eq!(config.proxy.idle_timeout, Duration::from_secs(120));
        assert_eq!(config.proxy.read_only_idle_timeout, Duration::from_secs(30));
        let lease = &config.lease_service;
        assert_eq!(lease.attempt_timeout(), Duration::from_millis(250));
        assert_eq!(lease.watch_wait, Duration::from_secs(5));
        assert!(lease.require_check);
        // Without attempt_timeout: half of a short timeout.
        let short = GOOD.replace(
            "endpoint = \"127.0.0.1:7400\"",
            "endpoint = \"127.0.0.1:7400\"\ntimeout = \"600ms\"",
        );
        let config = ProxyConfig::parse(&short, Path::new(".")).expect("valid");
        assert_eq!(
            config.lease_service.attempt_timeout(),
            Duration::from_millis(300)
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(size_text::parse("4096"), Ok(4096));
        assert_eq!(size_text::parse("1GiB"), Ok(1 << 30));
        assert!(size_text::parse("99999999999TiB").is_err());
    }
}
