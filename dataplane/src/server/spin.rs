//! When a core polls before it sleeps: a policy without I/O, fed the
//! core's turns and asked at each would-be sleep.
//!
//! A core that sleeps in `epoll_wait` between requests pays, for each
//! wake-up, a context switch and, when its CPU had gone idle, the wake-up
//! of that CPU (an IPI; in a VM, an exit to the hypervisor). Under light
//! load that is the price of an idle CPU. Near saturation the gaps between
//! requests are a few microseconds, each wake-up lands on the request that
//! caused it, and the queue behind it grows. So while the core's recent
//! load is high ([`LOAD_MIN_PERMILLE`] of a [`WINDOW_NS`] window spent on
//! turns that found work), it polls without sleeping for up to the budget
//! (`dataplane.busy_poll`) after its last piece of work. Under light load
//! it never polls, so a request costs no more CPU there.
//!
//! The load counts only turns that found work, never the polling itself:
//! polling cannot hold its own trigger on after the load drops.

/// Length of the window the load is measured over.
pub(super) const WINDOW_NS: u64 = 10_000_000;
/// Share of the last window (‰) spent on turns with work above which the
/// core polls before sleeping. At 20 000 uncontended acquire+release
/// arrivals/s on one core the loop works about 40 % of the time; at
/// 100 000/s about 80 %.
pub(super) const LOAD_MIN_PERMILLE: u64 = 600;

/// The policy's state: the budget and the load of the current and the
/// last complete window.
#[derive(Debug)]
pub(super) struct SpinPolicy {
    /// How long to poll after the last work; 0 never polls.
    budget_ns: u64,
    window_began_ns: u64,
    /// Time spent on turns with work in the current window.
    work_ns: u64,
    /// Load of the last complete window, ‰.
    last_load_permille: u64,
}

impl SpinPolicy {
    pub(super) fn new(budget_ns: u64, now_ns: u64) -> SpinPolicy {
        SpinPolicy {
            budget_ns,
            window_began_ns: now_ns,
            work_ns: 0,
            last_load_permille: 0,
        }
    }

    /// Whether the core may poll at all (a budget above zero).
    pub(super) fn enabled(&self) -> bool {
        self.budget_ns > 0
    }

    /// A turn that found work ran from `began_ns` to `ended_ns`.
    pub(super) fn worked(&mut self, began_ns: u64, ended_ns: u64) {
        if self.budget_ns == 0 {
            return;
        }
        // Counted whole in the window it ends in (which may close now).
        self.work_ns += ended_ns.saturating_sub(began_ns.max(self.window_began_ns));
        self.roll(ended_ns);
    }

    /// The core would sleep now: until when it should poll first, if at
    /// all. `last_work_ns` is when its last turn with work ended.
    pub(super) fn poll_until(&mut self, now_ns: u64, last_work_ns: u64) -> Option<u64> {
        if self.budget_ns == 0 {
            return None;
        }
        self.roll(now_ns);
        let until = last_work_ns.saturating_add(self.budget_ns);
        (self.last_load_permille >= LOAD_MIN_PERMILLE && until > now_ns).then_some(until)
    }

    /// The load of the last complete window, ‰.
    #[cfg(test)]
    pub(super) fn load_permille(&self) -> u64 {
        self.last_load_permille
    }

    /// Closes the window if `now_ns` is past it. A window that closes
    /// late (no turn for a while) counts the whole time since it began:
    /// a long sleep reads as a light load.
    fn roll(&mut self, now_ns: u64) {
        let elapsed = now_ns.saturating_sub(self.window_began_ns);
        if elapsed >= WINDOW_NS {
            self.last_load_permille = (self.work_ns.min(elapsed) * 1000) / elapsed;
            self.window_began_ns = now_ns;
            self.work_ns = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 1_000;

    /// Turns of `work` every `period`, from `from` for `span`.
    fn load(policy: &mut SpinPolicy, from: u64, span: u64, period: u64, work: u64) -> u64 {
        let mut t = from;
        while t < from + span {
            policy.worked(t, t + work);
            t += period;
        }
        t - period + work
    }

    #[test]
    fn a_busy_core_polls_for_the_budget_after_its_last_work() {
        let mut policy = SpinPolicy::new(30 * US, 0);
        // 8 µs of work every 10 µs: 80 %.
        let last = load(&mut policy, 0, 2 * WINDOW_NS, 10 * US, 8 * US);
        assert!(policy.load_permille() >= 790, "{}", policy.load_permille());
        assert_eq!(policy.poll_until(last, last), Some(last + 30 * US));
        // Partway through the budget: the same deadline.
        assert_eq!(
            policy.poll_until(last + 10 * US, last),
            Some(last + 30 * US)
        );
        // Past it: sleep.
        assert_eq!(policy.poll_until(last + 30 * US, last), None);
    }

    #[test]
    fn a_lightly_loaded_core_never_polls() {
        let mut policy = SpinPolicy::new(30 * US, 0);
        // 10 µs of work every 25 µs: 40 %, under the threshold.
        let last = load(&mut policy, 0, 3 * WINDOW_NS, 25 * US, 10 * US);
        assert!(
            (390..=410).contains(&policy.load_permille()),
            "{}",
            policy.load_permille()
        );
        assert_eq!(policy.poll_until(last, last), None);
    }

    #[test]
    fn a_budget_of_zero_never_polls() {
        let mut policy = SpinPolicy::new(0, 0);
        let last = load(&mut policy, 0, 2 * WINDOW_NS, 10 * US, 10 * US);
        assert_eq!(policy.poll_until(last, last), None);
    }

    #[test]
    fn polling_stops_once_the_load_falls() {
        let mut policy = SpinPolicy::new(30 * US, 0);
        let last = load(&mut policy, 0, 2 * WINDOW_NS, 10 * US, 9 * US);
        assert!(policy.poll_until(last, last).is_some());
        // Then light work for two windows: the polling between the turns is
        // not work, so the load reads light and the polling stops.
        let last = load(&mut policy, last, 2 * WINDOW_NS, 100 * US, 10 * US);
        assert!(policy.load_permille() <= 110, "{}", policy.load_permille());
        assert_eq!(policy.poll_until(last, last), None);
    }

    #[test]
    fn a_turn_across_the_window_end_counts_in_the_window_it_closes() {
        let mut policy = SpinPolicy::new(30 * US, 0);
        // One turn from the window's start to just past its end.
        policy.worked(0, WINDOW_NS + US);
        assert_eq!(policy.load_permille(), 1000);
    }

    #[test]
    fn a_long_sleep_reads_as_no_load() {
        let mut policy = SpinPolicy::new(30 * US, 0);
        let last = load(&mut policy, 0, 2 * WINDOW_NS, 10 * US, 9 * US);
        // One second without a turn, then a single request.
        let at = last + 1_000_000_000;
        policy.worked(at, at + 5 * US);
        assert!(policy.load_permille() < 20, "{}", policy.load_permille());
        assert_eq!(policy.poll_until(at + 5 * US, at + 5 * US), None);
    }
}
