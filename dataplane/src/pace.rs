//! Background work spread over time, sans-IO.
//!
//! A core's background work (the table sweep, the `List` index prune) is
//! cut into pieces of a few microseconds. Done one piece per turn, back to
//! back, a sweep of half a million slots kept the core's thread on its CPU
//! for 3–6 ms when no request came: on a CPU the core shares with the
//! control thread, the scheduler let the control thread (and the fsync a
//! replicated grant waits for) wait that long behind it (`perf sched
//! timehist`, `bench/results/grants-vs-fsync/pacing/`). A [`Paced`] round
//! instead hands out its pieces in steps at least [`STEP_GAP_MS`] apart,
//! each step as small as lets the round end within its window, so the core
//! sleeps between steps and whatever shares its CPU runs there.
//!
//! What it never does: read the clock (time is an argument) or decide what
//! a piece is.

/// Least time between two steps of one round.
pub const STEP_GAP_MS: u64 = 4;

/// One round of `pieces` pieces of background work, to be done by a
/// deadline in steps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Paced {
    left: usize,
    deadline_ms: u64,
    next_ms: u64,
}

impl Paced {
    /// A round of `pieces` pieces starting at `now_ms`, to be done within
    /// `window_ms` (a round whose window has passed hands out the rest at
    /// once).
    #[must_use]
    pub fn start(pieces: usize, now_ms: u64, window_ms: u64) -> Paced {
        Paced {
            left: pieces,
            deadline_ms: now_ms.saturating_add(window_ms),
            next_ms: now_ms,
        }
    }

    /// Whether pieces are left.
    #[must_use]
    pub fn is_active(&self) -> bool {
        self.left > 0
    }

    /// Pieces left.
    #[must_use]
    pub fn left(&self) -> usize {
        self.left
    }

    /// When the next step is due, if any piece is left.
    #[must_use]
    pub fn next_ms(&self) -> Option<u64> {
        self.is_active().then_some(self.next_ms)
    }

    /// How many pieces to do now (0 when no step is due): the rest spread
    /// evenly over the steps left before the deadline, at least one.
    pub fn due(&mut self, now_ms: u64) -> usize {
        if self.left == 0 || now_ms < self.next_ms {
            return 0;
        }
        let steps_left = (self.deadline_ms.saturating_sub(now_ms) / STEP_GAP_MS).max(1);
        let steps_left = usize::try_from(steps_left).unwrap_or(usize::MAX);
        let pieces = self.left.div_ceil(steps_left);
        self.left -= pieces;
        self.next_ms = now_ms + STEP_GAP_MS;
        pieces
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a round with a step whenever one is due, from `start` on every
    /// `tick_ms`; returns (time, pieces) of each step.
    fn run(mut paced: Paced, start: u64, tick_ms: u64) -> Vec<(u64, usize)> {
        let mut steps = Vec::new();
        let mut now = start;
        while paced.is_active() {
            let due = paced.due(now);
            if due > 0 {
                steps.push((now, due));
            }
            now += tick_ms;
            assert!(now < start + 1_000_000, "the round never ends");
        }
        steps
    }

    #[test]
    fn a_round_is_spread_over_its_window_in_small_steps() {
        // A sweep of 1 024 pieces within 750 ms: every step as small as the
        // steps that fit in the window allow.
        let steps = run(Paced::start(1_024, 5_000, 750), 5_000, 1);
        assert_eq!(steps.iter().map(|s| s.1).sum::<usize>(), 1_024);
        let fit = usize::try_from(750 / STEP_GAP_MS).unwrap();
        let most = 1_024_usize.div_ceil(fit) + 1;
        assert!(
            steps.iter().all(|&(_, n)| (1..=most).contains(&n)),
            "{steps:?}"
        );
        assert!(steps.len() >= fit - 1, "{} steps", steps.len());
        let last = steps.last().unwrap().0;
        assert!(last <= 5_750, "done by the deadline: {last}");
        assert!(steps.windows(2).all(|w| w[1].0 - w[0].0 >= STEP_GAP_MS));
    }

    #[test]
    fn fewer_pieces_than_steps_go_one_at_a_time() {
        let steps = run(Paced::start(10, 0, 100), 0, 1);
        assert_eq!(steps.len(), 10);
        assert!(steps.iter().all(|&(_, n)| n == 1));
    }

    #[test]
    fn a_late_caller_catches_up_and_still_ends_by_the_deadline() {
        // Nobody asks between 0 and 90 ms (a long turn): the rest goes in
        // the steps left.
        let mut paced = Paced::start(100, 0, 100);
        let first = paced.due(0);
        assert_eq!(first, 100_usize.div_ceil((100 / STEP_GAP_MS) as usize));
        let mut done = first;
        let mut now = 90;
        while paced.is_active() {
            let due = paced.due(now);
            assert!(due <= 99, "not all at once while steps are left");
            done += due;
            now += 1;
        }
        assert_eq!(done, 100);
        assert!(now <= 101, "ended at {now}");
    }

    #[test]
    fn past_the_deadline_everything_left_is_due() {
        let mut paced = Paced::start(50, 0, 10);
        assert_eq!(paced.due(500), 50);
        assert!(!paced.is_active());
        assert_eq!(paced.next_ms(), None);
        assert_eq!(paced.due(501), 0);
    }

    #[test]
    fn no_step_before_its_time() {
        let mut paced = Paced::start(1_000, 0, 100_000);
        assert_eq!(paced.due(0), 1);
        assert_eq!(paced.next_ms(), Some(STEP_GAP_MS));
        assert_eq!(paced.due(STEP_GAP_MS - 1), 0);
        assert_eq!(paced.left(), 999);
    }

    #[test]
    fn an_empty_round_is_done() {
        let mut paced = Paced::start(0, 0, 10);
        assert!(!paced.is_active());
        assert_eq!(paced.due(0), 0);
        assert_eq!(Paced::default().next_ms(), None);
    }
}
