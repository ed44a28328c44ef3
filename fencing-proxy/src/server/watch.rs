//! The watch threads: one per export, following the lease service's grants
//! for the export's resource and raising the fence durably on each, and
//! confirming the fence after a start or a lost watch.

use super::*;

/// Starts one watch thread per export: it confirms the fence with the
/// lease service (learning the newest token from a serving leader), then
/// raises it durably on every new grant, before the new holder's first
/// write. Threads run for the life of the process.
pub fn start_watches(
    config: &ProxyConfig,
    prepared: &[Prepared],
    store: &Arc<FenceStore>,
    link: &LeaseLink,
) {
    let policy = WatchPolicy {
        wait: config.lease_service.watch_wait,
        confirm_wait: config.lease_service.timeout,
        require_check: config.lease_service.require_check,
    };
    for export in prepared {
        let store = store.clone();
        let link = link.clone();
        let cell = export.cell.clone();
        let export_config = export.config.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("watch-{}", export_config.name))
            .spawn(move || watch_loop(&store, &link, &cell, &export_config, policy));
        match spawned {
            Ok(handle) => {
                *export.cell.watcher.lock().expect("watcher lock") = Some(handle.thread().clone());
            }
            Err(e) => {
                error!(export = %export.config.name, error = %e, "cannot start the watch thread; fences rise only at handshakes and stay unconfirmed");
            }
        }
    }
}

/// What a watch thread needs from the config.
#[derive(Debug, Clone, Copy)]
struct WatchPolicy {
    /// One watch call's wait.
    wait: Duration,
    /// `lease_service.timeout`, for the log.
    confirm_wait: Duration,
    /// `lease_service.require_check`, for the log.
    require_check: bool,
}

impl WatchPolicy {
    /// What happens to writes under the fence's token while unconfirmed.
    fn consequence(&self) -> String {
        let after = if self.require_check {
            "then refused (lease_service.require_check = true)"
        } else {
            "then admitted on the local fence alone (lease_service.require_check = false)"
        };
        format!(
            "writes under the fence's own token wait up to {} ms for the service, {after}",
            self.confirm_wait.as_millis()
        )
    }
}

fn watch_loop(
    store: &FenceStore,
    link: &LeaseLink,
    cell: &FenceCell,
    export: &Export,
    policy: WatchPolicy,
) {
    let mut backoff = WATCH_BACKOFF_MIN;
    // Whether the last attempt reached the service (for the log only).
    let mut reachable = true;
    loop {
        if cell.damaged().is_some() {
            // Nothing to raise until an operator repairs the store.
            std::thread::sleep(Duration::from_secs(5));
            continue;
        }
        let failure = match link.connect(&export.tenant) {
            Ok(mut client) => {
                // The first call waits for nothing: a serving leader answers
                // at once with the newest token, which confirms the fence.
                // The client follows the leader; only a serving leader
                // answers a watch.
                let mut wait = Duration::ZERO;
                loop {
                    let after = cell.fence();
                    let watched = match client.watch(&export.resource, after, wait) {
                        Ok(watched) => watched,
                        Err(e) => break Some(e.to_string()),
                    };
                    if watched.last_token > after {
                        match raise_durably(store, cell, &export.name, watched.last_token) {
                            Ok(durable) => info!(
                                export = %export.name,
                                fence = durable,
                                "a new grant raised the fence"
                            ),
                            Err(e) => {
                                error!(export = %export.name, error = %e, "raising the fence for a new grant failed");
                                std::thread::sleep(Duration::from_secs(1));
                                break None;
                            }
                        }
                    }
                    if cell.confirm() {
                        info!(
                            export = %export.name,
                            fence = cell.fence(),
                            endpoint = %client.endpoint(),
                            "the lease service confirmed the fence; watching grants"
                        );
                    }
                    reachable = true;
                    backoff = WATCH_BACKOFF_MIN;
                    wait = policy.wait;
                }
            }
            Err(e) => Some(e.to_string()),
        };
        let was_confirmed = cell.unconfirm(monotonic_ms());
        let why = failure.unwrap_or_else(|| "the fence store failed".into());
        if was_confirmed || reachable {
            warn!(
                export = %export.name,
                error = %why,
                "lost the lease service: the fence is unconfirmed until it answers; {}",
                policy.consequence()
            );
            reachable = false;
        } else {
            debug!(export = %export.name, error = %why, "lease service still unreachable");
        }
        // A write waiting for confirmation unparks us early.
        std::thread::park_timeout(backoff);
        backoff = (backoff * 2).min(WATCH_BACKOFF_MAX);
    }
}
