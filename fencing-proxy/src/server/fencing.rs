//! The shell's half of the fence ordering: the export's [`FenceCell`] (the
//! durable fence every thread sees, its damage and its confirmation), the
//! durable raise on a blocking thread, and the loop that awaits what
//! [`Admission`] asks of a write.

use super::*;

/// One export's fence as every thread sees it: the durable value, whether
/// the store said it cannot be trusted, and whether the lease service
/// confirmed it since the last start or lost watch.
#[derive(Debug)]
pub struct FenceCell {
    /// The durable fence: only ever raised after the store returned.
    fence: AtomicU64,
    /// Set when the store reported damage; writes are refused.
    damaged: AtomicBool,
    /// Why, for handshake refusals and logs.
    reason: Mutex<String>,
    /// Set by the watch once a serving leader told it the newest token and
    /// the fence is at least that; cleared when the watch loses the
    /// service. Only the watch sets it: it is the one that keeps the fence
    /// current while it stays set.
    confirmed: AtomicBool,
    /// Monotonic ms at which `confirmed` last went false (or the start).
    unconfirmed_since_ms: AtomicU64,
    /// The watch thread, woken early when a write waits for confirmation.
    pub(super) watcher: Mutex<Option<std::thread::Thread>>,
    pub(super) metrics: Arc<ExportMetrics>,
}

impl FenceCell {
    pub(super) fn new(loaded: &Fence, metrics: Arc<ExportMetrics>) -> FenceCell {
        let cell = FenceCell {
            fence: AtomicU64::new(0),
            damaged: AtomicBool::new(false),
            reason: Mutex::new(String::new()),
            confirmed: AtomicBool::new(false),
            unconfirmed_since_ms: AtomicU64::new(monotonic_ms()),
            watcher: Mutex::new(None),
            metrics,
        };
        match loaded {
            Fence::Known(fence) => cell.raised(*fence),
            Fence::Damaged(damage) => cell.damage(damage.to_string()),
        }
        cell
    }

    /// The durable fence.
    #[must_use]
    pub fn fence(&self) -> u64 {
        self.fence.load(Ordering::Acquire)
    }

    /// Why writes are refused, if the fence state is damaged.
    #[must_use]
    pub fn damaged(&self) -> Option<String> {
        if self.damaged.load(Ordering::Acquire) {
            Some(self.reason.lock().expect("reason lock").clone())
        } else {
            None
        }
    }

    /// Whether the lease service confirmed the fence and the watch still
    /// follows it.
    #[must_use]
    pub fn confirmed(&self) -> bool {
        self.confirmed.load(Ordering::Acquire)
    }

    /// Monotonic ms since which the fence is unconfirmed (meaningless while
    /// it is confirmed).
    #[must_use]
    pub fn unconfirmed_since_ms(&self) -> u64 {
        self.unconfirmed_since_ms.load(Ordering::Acquire)
    }

    /// The watch learnt the newest token from a serving leader and the
    /// durable fence is at least that. Returns whether it was unconfirmed.
    pub(super) fn confirm(&self) -> bool {
        let was = self.confirmed.swap(true, Ordering::AcqRel);
        self.metrics.fence_confirmed.store(1, Ordering::Relaxed);
        !was
    }

    /// The watch lost the lease service at `now_ms`. Returns whether it
    /// was confirmed. The start of an unconfirmed spell is kept: repeated
    /// failures do not extend how long writes wait.
    pub(super) fn unconfirm(&self, now_ms: u64) -> bool {
        let was = self.confirmed.swap(false, Ordering::AcqRel);
        if was {
            self.unconfirmed_since_ms.store(now_ms, Ordering::Release);
        }
        self.metrics.fence_confirmed.store(0, Ordering::Relaxed);
        was
    }

    /// Wakes the watch thread if it pauses between attempts, so that a
    /// waiting write gets its answer as soon as the service answers.
    pub(super) fn nudge_watch(&self) {
        if let Some(thread) = self.watcher.lock().expect("watcher lock").as_ref() {
            thread.unpark();
        }
    }

    fn raised(&self, durable: u64) {
        let now = self.fence.fetch_max(durable, Ordering::AcqRel).max(durable);
        self.metrics.fence.store(now, Ordering::Relaxed);
    }

    fn damage(&self, reason: String) {
        *self.reason.lock().expect("reason lock") = reason;
        self.damaged.store(true, Ordering::Release);
        self.metrics.fence_damaged.store(1, Ordering::Relaxed);
    }
}

/// Makes `token` durable for `export`, then raises `cell`. Blocking: call
/// from a blocking thread.
pub(super) fn raise_durably(
    store: &FenceStore,
    cell: &FenceCell,
    export: &str,
    token: u64,
) -> Result<u64, FenceError> {
    match store.raise(export, token) {
        Ok(durable) => {
            cell.raised(durable);
            Ok(durable)
        }
        Err(e) => {
            if let FenceError::Damaged { damage, .. } = &e {
                cell.damage(damage.to_string());
            }
            Err(e)
        }
    }
}

pub(super) async fn durable_raise(
    exports: &Exports,
    export: &ExportRt,
    token: u64,
) -> Result<u64, String> {
    let store = exports.store.clone();
    let cell = export.cell.clone();
    let name = export.config.name.clone();
    let raised =
        match tokio::task::spawn_blocking(move || raise_durably(&store, &cell, &name, token)).await
        {
            Ok(raised) => raised.map_err(|e| e.to_string()),
            Err(e) => Err(format!("the fence store's thread failed: {e}")),
        };
    raised.map_err(|e| {
        error!(export = %export.config.name, token, error = %e, "raising the fence failed");
        e
    })
}

/// The durable fence of `export` as a write or a handshake under `token`
/// sees it now. Reads the clock only while the fence is unconfirmed.
pub(super) fn durable(exports: &Exports, export: &ExportRt) -> Durable {
    let cell = &export.cell;
    let confirmed = cell.confirmed();
    let waited_ms = if confirmed {
        0
    } else {
        monotonic_ms().saturating_sub(cell.unconfirmed_since_ms())
    };
    Durable {
        fence: cell.fence(),
        damaged: cell.damaged().is_some(),
        confirmation: Confirmation::judge(
            confirmed,
            waited_ms,
            millis(exports.limits.confirm_wait),
        ),
    }
}

/// Why a write or a handshake under `token` is refused after the lease
/// service stayed silent for `waited_ms` (`lease_service.require_check`).
pub(super) fn unconfirmed_refusal(export: &ExportRt, token: u64, waited_ms: u64) -> String {
    format!(
        "the lease service has not confirmed the fence of export {} for {waited_ms} ms and the proxy requires it (lease_service.require_check = true): writes under token {token} are refused until it answers",
        export.config.name
    )
}

/// Logs (once a second, with a count) a write or handshake under `token`
/// admitted on the local fence alone.
pub(super) fn log_unconfirmed(export: &ExportRt, token: u64, waited_ms: u64) {
    if let Some(count) = export.unconfirmed_log.borrow_mut().hit(monotonic_ms()) {
        warn!(
            export = %export.config.name,
            token,
            count,
            unconfirmed_ms = waited_ms,
            "lease service unreachable: admitted {count} write(s) or handshake(s) under the fence's own token on the local fence alone (lease_service.require_check = false)"
        );
    }
}

/// Waits until the export's [`Admission`] lets a write under `token` go;
/// `Err` is why it is fenced. On `Ok` the caller must call
/// `admission.done(token)` once the backend call returned.
///
/// This only awaits what the admission asks for: confirmation, a drain, a
/// durable raise on a blocking thread. Reading the durable fence and asking
/// the admission happen with no `.await` in between.
pub(super) async fn admit(exports: &Exports, export: &ExportRt, token: u64) -> Result<(), String> {
    let mut nudged = false;
    loop {
        let step = export
            .admission
            .borrow_mut()
            .admit(token, durable(exports, export));
        match step {
            Step::Go { unconfirmed_ms } => {
                if let Some(waited_ms) = unconfirmed_ms {
                    log_unconfirmed(export, token, waited_ms);
                }
                return Ok(());
            }
            Step::Fenced { fence } => {
                return Err(format!(
                    "stale fencing token {token}: export {} is fenced at {fence}",
                    export.config.name
                ))
            }
            Step::Damaged => {
                let reason = export.cell.damaged().unwrap_or_default();
                return Err(format!("fence state damaged ({reason}): writes refused"));
            }
            Step::Unconfirmed { waited_ms } => {
                return Err(unconfirmed_refusal(export, token, waited_ms));
            }
            Step::AwaitConfirmation => {
                if !nudged {
                    export.cell.nudge_watch();
                    nudged = true;
                }
                tokio::time::sleep(CONFIRM_POLL).await;
            }
            Step::DrainFirst => tokio::time::sleep(DRAIN_POLL).await,
            Step::NeedsDurableRaise => {
                let raised = durable_raise(exports, export, token).await?;
                export.admission.borrow_mut().raised(token, raised);
            }
        }
    }
}
