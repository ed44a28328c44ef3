//! Per-core heartbeats: proof that each core's executor still runs tasks.
//!
//! Every core runs a task on its `lease-rpc` queue that stores the
//! monotonic time into the core's slot every [`HEARTBEAT_PERIOD`]. glommio
//! is cooperative, so a task that never yields (a blocking call, a loop
//! without `yield_if_needed`) stops every task of its core, and with them
//! the heartbeat. The service-manager watchdog reads the slots
//! ([`super::Server::core_heartbeats_ms`]) and stops vouching for a
//! process one of whose cores has gone quiet.
//!
//! It never decides anything itself and never touches the lease table.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tracing::warn;

use crate::clock::monotonic_ms;

/// How often each core stores its heartbeat. A watchdog interval should be
/// many of these (the units use 30 s).
pub const HEARTBEAT_PERIOD: Duration = Duration::from_millis(100);

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
pub async fn beat(slots: Arc<[AtomicU64]>, index: usize) {
    loop {
        slots[index].store(monotonic_ms(), Ordering::Relaxed);
        stall_if_armed(index);
        glommio::timer::sleep(HEARTBEAT_PERIOD).await;
    }
}

fn stall_if_armed(index: usize) {
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
