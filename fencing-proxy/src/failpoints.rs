//! The proxy's test hooks, armed only when the binary is started with
//! `--failpoints` (as the node's are): without the flag their environment
//! variables are ignored, with a warning, so a stray variable cannot slow
//! or stall a production proxy.
//!
//! - [`WRITE_DELAY_HOOK`] (`TOKEN:MS`): writes under TOKEN wait MS after the
//!   admission let them go, so tests can have writes in flight between the
//!   fence check and the backend when a newer holder arrives.
//! - [`STALL_HOOK`] (a path): while that file exists, the event loop
//!   blocks its thread (a stuck loop, for the service-manager watchdog).
//!
//! It never touches fences or client traffic itself.

use std::path::PathBuf;
use std::time::Duration;

use tracing::warn;

/// Test hook: `TOKEN:MS` holds writes under TOKEN for MS after admission.
pub const WRITE_DELAY_HOOK: &str = "PALISADE_PROXY_TEST_WRITE_DELAY";

/// Test hook: while the file this names exists, the proxy's event loop
/// blocks its thread (a stuck loop).
pub const STALL_HOOK: &str = "PALISADE_PROXY_TEST_STALL_FILE";

/// The armed test hooks; [`Failpoints::default`] arms none.
#[derive(Debug, Clone, Default)]
pub struct Failpoints {
    /// Writes under this token wait this long after admission.
    pub write_delay: Option<(u64, Duration)>,
    /// The event loop stalls while this file exists.
    pub stall_file: Option<PathBuf>,
}

impl Failpoints {
    /// The hooks the environment asks for when `armed` (`--failpoints`);
    /// none otherwise, with a warning for each hook variable that is set.
    /// A malformed write delay is ignored, as before.
    #[must_use]
    pub fn from_env(armed: bool) -> Failpoints {
        let write_delay = std::env::var(WRITE_DELAY_HOOK).ok();
        let stall_file = std::env::var_os(STALL_HOOK).map(PathBuf::from);
        if !armed {
            for (name, set) in [
                (WRITE_DELAY_HOOK, write_delay.is_some()),
                (STALL_HOOK, stall_file.is_some()),
            ] {
                if set {
                    warn!(
                        hook = name,
                        "test hook {name} is set but ignored: the proxy arms test hooks only with --failpoints"
                    );
                }
            }
            return Failpoints::default();
        }
        let write_delay = write_delay.as_deref().and_then(parse_write_delay);
        if let Some((token, wait)) = write_delay {
            warn!(
                token,
                ms = wait.as_millis(),
                "test hook {WRITE_DELAY_HOOK} holds writes; never set it in production"
            );
        }
        if let Some(file) = &stall_file {
            warn!(
                file = %file.display(),
                "test hook {STALL_HOOK} stalls the executor while the file exists; never set it in production"
            );
        }
        Failpoints {
            write_delay,
            stall_file,
        }
    }

    /// Arms the stall hook on the event loop's heartbeat. Call before the
    /// loop starts.
    pub fn arm_stall(&self) {
        if let Some(file) = &self.stall_file {
            palisade_host::heartbeat::arm_core_stall_failpoint(0, file.clone());
        }
    }
}

/// `TOKEN:MS` → (TOKEN, MS ms).
fn parse_write_delay(text: &str) -> Option<(u64, Duration)> {
    let (token, ms) = text.split_once(':')?;
    Some((token.parse().ok()?, Duration::from_millis(ms.parse().ok()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_delays_parse_or_are_ignored() {
        assert_eq!(
            parse_write_delay("7:2500"),
            Some((7, Duration::from_millis(2_500)))
        );
        for bad in ["", "7", "7:", ":5", "x:5", "7:x", "-1:5"] {
            assert_eq!(parse_write_delay(bad), None, "{bad}");
        }
    }

    #[test]
    fn nothing_is_armed_without_the_flag() {
        let none = Failpoints::from_env(false);
        assert!(none.write_delay.is_none());
        assert!(none.stall_file.is_none());
    }
}
