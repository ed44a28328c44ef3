//! The rate sweep: finds the highest offered rate a system sustains, then
//! measures its tails at fixed fractions of that rate.
//!
//! A step is sustained when every request of its recorded window was
//! answered, the engine never had more than `outstanding_max` requests
//! unanswered, and the p99 of request latency (from intended send time)
//! stayed within the bound. The sweep doubles the rate from `start_rate`
//! until a step fails, then bisects (geometrically) between the last
//! sustained and the first failed rate. The decision is a pure function
//! of the measured steps, tested without a server.

use serde::{Deserialize, Serialize};

use super::engine::RunResult;

/// One step of a sweep.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Step {
    /// Offered arrivals per second.
    pub(crate) rate: f64,
    /// Requests answered per second.
    pub(crate) requests_per_s: f64,
    /// p99 of request latency, µs.
    pub(crate) p99_us: f64,
    /// Why the step was not sustained; `None` if it was.
    pub(crate) failed: Option<String>,
}

impl Step {
    pub(crate) fn judge(result: &RunResult, p99_bound_us: f64) -> Step {
        let p99_us = result.requests.value_at_quantile(0.99) as f64 / 1e3;
        let failed = if let Some(why) = &result.overloaded {
            Some(why.clone())
        } else if result.unanswered > 0 {
            Some(format!("{} requests unanswered", result.unanswered))
        } else if result.requests.is_empty() {
            Some("no request completed in the recorded window".into())
        } else if result.send_lag_max_ns as f64 / 1e3 > p99_bound_us {
            // The generator's own lag is charged to the system's latency;
            // past the bound the step says nothing about the system.
            Some(format!(
                "the generator fell {:.0} µs behind its schedule (its limit, not necessarily the system's)",
                result.send_lag_max_ns as f64 / 1e3
            ))
        } else if p99_us > p99_bound_us {
            Some(format!(
                "p99 {p99_us:.0} µs over the {p99_bound_us:.0} µs bound"
            ))
        } else {
            None
        };
        Step {
            rate: result.offered_rate,
            requests_per_s: result.request_rate(),
            p99_us,
            failed,
        }
    }
}

/// Where the sweep goes next.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Next {
    /// Measure this rate.
    Try(f64),
    /// Done: the highest sustained rate, if any.
    Done(Option<f64>),
}

/// Settings of a sweep.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    /// First rate tried.
    pub(crate) start_rate: f64,
    /// Never offer more than this.
    pub(crate) max_rate: f64,
    /// Never go below this when the start rate already fails.
    pub(crate) min_rate: f64,
    /// Bisection steps after the first failure.
    pub(crate) refine: u32,
}

/// Decides the next step from the steps so far.
pub(crate) fn next(plan: &Plan, steps: &[Step]) -> Next {
    let Some(last) = steps.last() else {
        return Next::Try(plan.start_rate.min(plan.max_rate));
    };
    // One failed step on a shared machine can be a hiccup (a stalled vCPU
    // fails a 2 s step's p99 on its own): a rate counts as failed only if
    // it fails twice in a row.
    if last.failed.is_some() && steps.iter().filter(|s| s.rate == last.rate).count() == 1 {
        return Next::Try(last.rate);
    }
    // Each distinct rate, in the order first tried, with its verdict: any
    // sustained step sustains it.
    let mut rates: Vec<(f64, bool)> = Vec::new();
    for step in steps {
        match rates.iter_mut().find(|(rate, _)| *rate == step.rate) {
            Some((_, ok)) => *ok |= step.failed.is_none(),
            None => rates.push((step.rate, step.failed.is_none())),
        }
    }
    let bad = rates
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(rate, _)| *rate)
        .reduce(f64::min);
    // The best sustained rate below every failed one (a sustained step
    // above a failed one is luck, not capacity).
    let ok = rates
        .iter()
        .filter(|(rate, ok)| *ok && bad.is_none_or(|bad| *rate < bad))
        .map(|(rate, _)| *rate)
        .reduce(f64::max);
    match (ok, bad) {
        // Still climbing.
        (Some(ok), None) if ok >= plan.max_rate => Next::Done(Some(ok)),
        (Some(ok), None) => Next::Try((ok * 2.0).min(plan.max_rate)),
        // Nothing sustained yet: go down.
        (None, Some(bad)) if bad / 4.0 < plan.min_rate => Next::Done(None),
        (None, Some(bad)) => Next::Try(bad / 4.0),
        (Some(ok), Some(bad)) => {
            let first_failure = rates.iter().position(|(_, ok)| !ok).unwrap_or(0);
            let refined = rates.len() - 1 - first_failure;
            if refined >= plan.refine as usize || bad <= ok * 1.05 {
                Next::Done(Some(ok))
            } else {
                Next::Try((ok * bad).sqrt())
            }
        }
        (None, None) => Next::Done(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: Plan = Plan {
        start_rate: 1000.0,
        max_rate: 1e6,
        min_rate: 10.0,
        refine: 3,
    };

    /// Runs the sweep against a system that sustains exactly `capacity`.
    fn sweep(capacity: f64) -> (Option<f64>, Vec<f64>) {
        let mut steps = Vec::new();
        loop {
            match next(&PLAN, &steps) {
                Next::Try(rate) => steps.push(Step {
                    rate,
                    requests_per_s: rate,
                    p99_us: 1.0,
                    failed: (rate > capacity).then(|| "over".to_string()),
                }),
                Next::Done(best) => {
                    let mut rates: Vec<f64> = steps.iter().map(|s| s.rate).collect();
                    // Every failed rate was tried twice.
                    rates.dedup();
                    return (best, rates);
                }
            }
        }
    }

    #[test]
    fn doubles_then_bisects_below_the_capacity() {
        let (best, rates) = sweep(10_000.0);
        // 1k, 2k, 4k, 8k sustained; 16k fails; three bisections.
        assert_eq!(&rates[..5], &[1000.0, 2000.0, 4000.0, 8000.0, 16000.0]);
        assert_eq!(rates.len(), 8, "{rates:?}");
        let best = best.unwrap();
        assert!(best <= 10_000.0 && best > 8000.0, "{best}");
        // Geometric midpoints: sqrt(8k * 16k) = 11314 fails, sqrt(8k * 11314) = 9514 holds.
        assert!((rates[5] - 11_313.7).abs() < 1.0, "{rates:?}");
        assert!((rates[6] - 9_513.7).abs() < 1.0, "{rates:?}");
    }

    #[test]
    fn goes_down_when_the_start_fails_and_gives_up_at_the_floor() {
        let (best, rates) = sweep(300.0);
        assert_eq!(&rates[..2], &[1000.0, 250.0]);
        let best = best.unwrap();
        assert!((250.0..=300.0).contains(&best), "{best} {rates:?}");
        let (best, rates) = sweep(1.0);
        assert_eq!(best, None, "{rates:?}");
        assert!(rates.iter().all(|&r| r >= PLAN.min_rate));
    }

    #[test]
    fn a_single_hiccup_does_not_end_the_climb() {
        // 4000/s fails once (a stalled vCPU), then holds when retried.
        let mut steps: Vec<Step> = Vec::new();
        let mut hiccup = true;
        let best = loop {
            match next(&PLAN, &steps) {
                Next::Try(rate) => {
                    let failed = if rate == 4000.0 && hiccup {
                        hiccup = false;
                        true
                    } else {
                        rate > 50_000.0
                    };
                    steps.push(Step {
                        rate,
                        requests_per_s: rate,
                        p99_us: 1.0,
                        failed: failed.then(|| "p99".to_string()),
                    });
                }
                Next::Done(best) => break best.unwrap(),
            }
        };
        assert_eq!(steps[2].rate, 4000.0);
        assert_eq!(steps[3].rate, 4000.0, "retried");
        assert!(best > 32_000.0 && best <= 50_000.0, "{best}");
        // A rate that fails twice is failed: 64k was tried exactly twice.
        assert_eq!(steps.iter().filter(|s| s.rate == 64_000.0).count(), 2);
    }

    #[test]
    fn stops_at_the_rate_cap() {
        let (best, rates) = sweep(1e9);
        assert_eq!(best, Some(1e6));
        assert_eq!(*rates.last().unwrap(), 1e6);
    }
}
