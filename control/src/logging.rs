//! Logging set-up for the daemon: `[log]` from the config (level, per-target
//! directives, text or JSON lines on stderr), with `RUST_LOG` overriding the
//! level when set.
//!
//! What it never does: log anything itself, or read the config file.
//! raft-rs's own messages (it logs through `slog`) are forwarded under the
//! target `raft` by [`raft_logger`]: its info and above at debug, the rest
//! at trace, so the default `info` level leaves them out and
//! `log.level = "info,raft=debug"` shows elections step by step (pre-votes,
//! votes ignored while a follower still hears a leader, role changes).
//!
//! ```
//! let config = palisade_tuning::Config::builtin_default();
//! let filter = palisade_control::logging::filter(&config.log, None).expect("valid");
//! assert_eq!(filter.to_string(), "info");
//! ```

use palisade_tuning::{LogConfig, LogFormat};
use tracing_subscriber::filter::ParseError;
use tracing_subscriber::EnvFilter;

/// Why logging could not be set up. The operator's to fix (a bad filter),
/// or a bug (a second subscriber).
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// `RUST_LOG` is not a filter `EnvFilter` accepts. The environment's
    /// fault.
    #[error("RUST_LOG={directives:?} is not a valid log filter")]
    Env {
        /// The variable's value.
        directives: String,
        /// What `EnvFilter` said.
        #[source]
        source: ParseError,
    },
    /// The config's `log.level` is not a filter `EnvFilter` accepts (config
    /// validation should have refused it first).
    #[error("log.level = {directives:?} is not a valid log filter")]
    Config {
        /// The directives.
        directives: String,
        /// What `EnvFilter` said.
        #[source]
        source: ParseError,
    },
    /// A log subscriber is already installed in this process: a bug.
    #[error("installing the log subscriber: {0}")]
    Install(Box<dyn std::error::Error + Send + Sync>),
}

/// The filter to log with: `RUST_LOG` (`env`) when given, else the
/// config's `log.level` directives.
///
/// # Errors
///
/// A `RUST_LOG` (or, should the config's syntax ever drift from
/// `EnvFilter`'s, a `log.level`) that `EnvFilter` refuses, named.
pub fn filter(log: &LogConfig, env: Option<&str>) -> Result<EnvFilter, LoggingError> {
    match env {
        Some(directives) => EnvFilter::try_new(directives).map_err(|source| LoggingError::Env {
            directives: directives.to_owned(),
            source,
        }),
        None => {
            let directives = log.filter();
            EnvFilter::try_new(&directives)
                .map_err(|source| LoggingError::Config { directives, source })
        }
    }
}

/// Installs the process's log subscriber: lines on stderr, text or one
/// JSON object per line, filtered by [`filter`] with `RUST_LOG` from the
/// environment. Call once, first thing after the config is loaded.
///
/// # Errors
///
/// A bad filter, or a subscriber already installed.
pub fn init(log: &LogConfig) -> Result<(), LoggingError> {
    let env = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let filter = filter(log, env.as_deref())?;
    // Colours only for a person at a terminal, not for journald or a file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let installed = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .with_ansi(false)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    installed.map_err(LoggingError::Install)
}

/// A `slog` logger for raft-rs that forwards to `tracing` under the target
/// `raft` (raft-rs tags each line with `raft_id` itself). Formatting
/// happens only when the event is enabled.
pub fn raft_logger() -> slog::Logger {
    slog::Logger::root(RaftDrain, slog::o!())
}

/// The drain behind [`raft_logger`].
struct RaftDrain;

/// Key-value pairs of a slog record as ` key=value` text.
struct KvText(String);

impl slog::Serializer for KvText {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        use std::fmt::Write as _;
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl slog::Drain for RaftDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        let debug = record.level().is_at_least(slog::Level::Info);
        let enabled = if debug {
            tracing::enabled!(target: "raft", tracing::Level::DEBUG)
        } else {
            tracing::enabled!(target: "raft", tracing::Level::TRACE)
        };
        if !enabled {
            return Ok(());
        }
        let mut kv = KvText(String::new());
        let _ = slog::KV::serialize(&record.kv(), record, &mut kv);
        let _ = slog::KV::serialize(values, record, &mut kv);
        if debug {
            tracing::debug!(target: "raft", "{}{}", record.msg(), kv.0);
        } else {
            tracing::trace!(target: "raft", "{}{}", record.msg(), kv.0);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_tuning::Config;

    /// Directives as a sorted list: `EnvFilter` prints them in its own order.
    fn directives(text: &str) -> Vec<String> {
        let mut list: Vec<String> = text.split(',').map(str::to_owned).collect();
        list.sort();
        list
    }

    #[test]
    fn every_config_filter_is_an_env_filter() {
        for level in [
            "info",
            "warn,palisade_control=debug",
            "error,palisade_dataplane::server=trace,raft=warn",
        ] {
            let config = Config::from_toml_str(&format!("[log]\nlevel = \"{level}\"\n"), None)
                .expect("valid config");
            let filter = filter(&config.log, None).expect("EnvFilter accepts it");
            assert_eq!(directives(&filter.to_string()), directives(level));
        }
    }

    #[test]
    fn rust_log_overrides_and_a_bad_one_is_named() {
        let config = Config::builtin_default();
        let filter = filter(&config.log, Some("debug,raft=off")).expect("valid");
        assert_eq!(directives(&filter.to_string()), ["debug", "raft=off"]);
        let error = super::filter(&config.log, Some("palisade=[")).expect_err("bad");
        assert!(
            format!("{error:#}").contains("RUST_LOG=\"palisade=[\""),
            "{error:#}"
        );
    }
}
