//! Per-core heartbeats: proof that each event loop still turns.
//!
//! Every loop (each of the data plane's cores, the fencing proxy's one
//! event loop) stores the monotonic time into its slot at least every
//! [`HEARTBEAT_PERIOD`]. A loop stuck in one piece of work (a blocking
//! call, an endless loop) stops storing it. The service-manager watchdog
//! ([`crate::notify::Watchdog`]) reads the slots and stops vouching for a
//! process one of whose loops has gone quiet.
//!
//! It never decides anything itself.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tracing::warn;

/// How often each loop stores its heartbeat. A watchdog interval should be
/// many of these (the units use 30 s). A timer wake every 10 ms costs a
/// loop a few microseconds of it.
pub const HEARTBEAT_PERIOD: Duration = Duration::from_millis(10);

/// Test hook: which core stalls, and the file that arms the stall.
static STALL_FAILPOINT: OnceLock<(usize, PathBuf)> = OnceLock::new();

/// Test hook: while `file` exists, core `core` blocks its thread in its
/// heartbeat task, as a core stuck in a task that never yields would be.
/// Call once, before the executors start; only `palisade serve
/// --failpoints` and the proxy's test hook call it.
pub fn arm_core_stall_failpoint(core: usize, file: PathBuf) {
    warn!(core, file = %file.display(), "test failpoint: this core stalls while the file exists");
    let _ = STALL_FAILPOINT.set((core, file));
}

/// One monotonic-ms slot per core (or per event loop of another process,
/// such as the fencing proxy), all set to `now_ms`.
#[must_use]
pub fn slots(cores: usize, now_ms: u64) -> Arc<[AtomicU64]> {
    (0..cores).map(|_| AtomicU64::new(now_ms)).collect()
}

/// Test hook: while the stall failpoint of core `index` is armed (see
/// [`arm_core_stall_failpoint`]), blocks the calling thread. A core's loop
/// calls it once per turn; it costs a load when no failpoint is armed.
pub fn stall_if_armed(index: usize) {
    let Some((core, file)) = STALL_FAILPOINT.get() else {
        return;
    };
    if *core != index || !file.exists() {
        return;
    }
    warn!(core, "test failpoint: stalling this core's thread");
    while file.exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    warn!(core, "test failpoint: core resumes");
}
