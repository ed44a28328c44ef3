//! Per-core heartbeats: proof that each core's executor still runs tasks.
//!
//! Every core (each of the data plane's cores, the fencing proxy's one
//! executor) runs a task on its most important queue that stores the
//! monotonic time into the core's slot every [`HEARTBEAT_PERIOD`]. glommio
//! is cooperative, so a task that never yields (a blocking call, a loop
//! without `yield_if_needed`) stops every task of its core, and with them
//! the heartbeat. The service-manager watchdog ([`crate::notify::Watchdog`])
//! reads the slots and stops vouching for a process one of whose cores has
//! gone quiet.
//!
//! The slots and the stall failpoint are plain std; the beating task
//! (`beat`) needs the `glommio` feature.
//!
//! It never decides anything itself.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tracing::warn;

/// How often each core stores its heartbeat. A watchdog interval should be
/// many of these (the units use 30 s). Short, because a late heartbeat is
/// also how the data plane's kick thread finds a core that glommio put to
/// sleep with runnable tasks (`palisade_dataplane::server::nudge`): the
/// period bounds how long such a core goes unnoticed. A timer wake every
/// 10 ms costs a core a few microseconds of it.
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

/// One monotonic-ms slot per core (or per executor of another glommio
/// process, such as the fencing proxy), all set to `now_ms`.
#[must_use]
pub fn slots(cores: usize, now_ms: u64) -> Arc<[AtomicU64]> {
    (0..cores).map(|_| AtomicU64::new(now_ms)).collect()
}

/// The heartbeat task of core `index`: spawn it on the executor's most
/// important task queue.
#[cfg(feature = "glommio")]
pub async fn beat(slots: Arc<[AtomicU64]>, index: usize) {
    loop {
        slots[index].store(
            crate::clock::monotonic_ms(),
            std::sync::atomic::Ordering::Relaxed,
        );
        stall_if_armed(index);
        glommio::timer::sleep(HEARTBEAT_PERIOD).await;
    }
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
