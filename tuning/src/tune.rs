//! The timing calculator behind `palisade tune`: from round-trip-time
//! samples and a failure model to a heartbeat interval, an election
//! timeout and a `max_ttl`, with the false-positive rate, the failover
//! time and the time until new grants resume that they predict, for either
//! lease replication mode.
//!
//! It owns the model and nothing else. It never does I/O, reads no clock
//! and spawns nothing: the binary measures (over the real peer transport)
//! or reads a samples file, and hands the numbers in. Every function here
//! is deterministic, so the tests check it against values computed by hand.
//!
//! # The model
//!
//! Inputs: round-trip times between members (µs), the cluster size `n`, the
//! mean time between failures of one node `mtbf`, the false-positive
//! fraction `f`, the availability target `A`, a heartbeat floor `h_min`, the
//! time of one fsync of the raft log, and from the config
//! `leases.replication`, `max_drift`, `lock_delay_max`, `min_ttl` and (with
//! replication) `max_ttl`.
//!
//! 1. **Failures** of the leader arrive as a Poisson process with rate
//!    `λ = 1 / mtbf` (the leader is one node; only its failure forces a
//!    failover).
//! 2. **Delay fit.** A heartbeat's one-way delay is a shifted exponential,
//!    `D = d₀ + X`, `X ~ Exp(mean m)`. Fitted from the RTT samples by the
//!    exponential's maximum-likelihood estimate with the shift at the
//!    minimum: `m = mean(rtt) − min(rtt)`. That attributes the whole round
//!    trip's variation to the heartbeat's direction, which overstates the
//!    jitter of a symmetric path (conservative).
//! 3. **Gaps.** Heartbeat `i` is sent at `i·h` and arrives at
//!    `i·h + D_i`, so the gap between two arrivals is `G = h + X₂ − X₁`.
//!    The difference of two independent `Exp(m)` is `Laplace(0, m)`, hence
//!    for `t ≥ h`: `P(G > t) = ½·e^{−(t − h)/m}`.
//! 4. **Suspicion.** The control plane ticks once per heartbeat interval
//!    and a follower campaigns after `r` ticks without a heartbeat, `r`
//!    drawn from `[k, 2k)` where `k = election_timeout / h` (raft's
//!    randomized timeout). Since the count resets between ticks, the
//!    shortest real time after which a follower can suspect is `(k − 1)·h`;
//!    the model uses it (conservative). A false suspicion is a gap longer
//!    than that while the leader is healthy.
//! 5. **False-positive rate.** Each of the `n − 1` followers sees `1/h`
//!    gaps per second: `r_fp = (n − 1)/h · ½·e^{−(k − 2)·h/m}`.
//!    Requirement: `r_fp ≤ f·λ`, i.e.
//!    `(k − 2)·h ≥ m·ln((n − 1) / (2·h·f·λ))`.
//! 6. **Round trip.** The jitter fit says nothing about the largest delay
//!    actually seen, so also: `(k − 1)·h·(1 − max_drift) ≥ h + rtt_max`.
//!    A healthy leader's confirmation round (sent every tick, needs a round
//!    trip) lands inside its grant window `(k − 1)·h·(1 − max_drift)`, and
//!    no observed delay alone makes a follower suspect. This is the seed's
//!    `Θ ≥ 2d` with the heartbeat interval added.
//! 7. **Heartbeat interval.** `h = max(h_min, p99(rtt))`, rounded up to a
//!    millisecond. More than one confirmation round per round trip only
//!    queues rounds behind each other; the floor bounds control traffic
//!    (`2·(n − 1)/h` messages per second) and timer granularity on a busy
//!    host.
//! 8. **Election timeout** `T = k·h` with the smallest `k` meeting 5, 6,
//!    `k ≥ 3` (the config rule) and `T ≥ 10ms` (the config minimum).
//! 9. **Failover.** Detection: the first of `n − 1` timeouts uniform on
//!    `[T, 2T)` fires after `T·(1 + 1/n)` on average (the heartbeat's age
//!    at the crash and the tick phase, each `h/2` on average, cancel); at
//!    most `2T`. Election: pre-vote, vote and the new leader's first commit,
//!    three round trips: `3·mean(rtt)`, at most `3·rtt_max`. When new
//!    grants resume after that depends on `leases.replication`
//!    ([`TuneInputs::replication`]): step 10 or step 11.
//! 10. **`replication = "none"`.** Leases live only in the leader's
//!     memory, so every failover costs a further grace
//!     `(max_ttl + lock_delay_max + T)·(1 + max_drift)` (the code's
//!     `Config::grace_period`) before new grants; disk syncs are not in
//!     this model (the grace dwarfs them). The longest unavailability of
//!     new grants per failure, `U = 2T + 3·rtt_max + grace`, must keep
//!     `λ·U ≤ 1 − A`, so `max_ttl ≤ ((1 − A)·mtbf − 2T − 3·rtt_max)/(1 +
//!     max_drift) − lock_delay_max − T`, rounded down (to a second from 10s
//!     up, else to a millisecond) and capped at 24h. Below `min_ttl` the
//!     target cannot be met and [`recommend`] says so.
//! 11. **`replication = "quorum"`** (the default). A new leader keeps every
//!     lease and grants a free resource as soon as it has committed an
//!     entry of its term, so there is no grace per failover. What the
//!     election takes beyond its three round trips is three fsyncs of the
//!     raft log in a row, each assumed to take [`TuneInputs::fsync`]: the
//!     candidate's new term and vote (before it asks for votes), the
//!     voter's vote (before it answers), and the first entry of the term
//!     on a majority (the leader's own write runs alongside the followers',
//!     so one counts). Pre-vote changes no state and syncs nothing.
//!     Applying the log's tail and installing the lease table at the
//!     takeover is memory work and left out. So
//!     `U = 2T + 3·rtt_max + 3·fsync` worst, `T·(1 + 1/n) + 3·mean(rtt) +
//!     3·fsync` mean, and [`recommend`] only checks `λ·U ≤ 1 − A` (there is
//!     nothing left to trade against it: `T` is set by steps 5, 6 and 8).
//!     `max_ttl` is not derived: the advice keeps [`TuneInputs::max_ttl`]
//!     (the config's, else the built-in 30s). It bounds how long a dead
//!     holder's resource stays taken: at a takeover its lease is re-armed
//!     to `(ttl + T)·(1 + d)/(1 − d)` (`ControlCore::rearm_ms`, `d` =
//!     `max_drift`), then its lock delay runs, so such a resource is free
//!     at most `U + (max_ttl + T)·(1 + d)/(1 − d) + lock_delay_max` after
//!     the failure. The grace of step 10 is still owed once: by the first
//!     leader after an upgrade from a version without replicated leases or
//!     a switch from `"none"`, and when a new cluster's first election
//!     splits. It is reported, not budgeted.
//!
//! What it leaves out: process pauses on the leader are real failures, not
//! noise, so they are not in the jitter; delays of successive heartbeats on
//! one TCP stream are correlated, the model treats them as independent;
//! samples are measured from one node to its peers only (run it on each
//! node, or feed the worst link); the fsync time is assumed, not measured
//! (give the one your raft log's disk has at its worst).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use palisade_tuning::tune::{recommend, MaxTtlRule, RttFit, TuneInputs};
//! use palisade_tuning::Replication;
//!
//! // 100 samples: 200 µs on a quiet link, a few slower ones.
//! let mut samples = vec![200.0; 90];
//! samples.extend([400.0; 10]);
//! let fit = RttFit::from_samples(&samples)?;
//! let advice = recommend(&fit, &TuneInputs::default())?;
//! assert!(advice.election_timeout >= 3 * advice.heartbeat_interval);
//! assert!(advice.prediction.fp_rate_per_s <= advice.prediction.fp_budget_per_s);
//! // Replicated leases (the default): max_ttl is kept, not derived.
//! assert_eq!(advice.max_ttl, Duration::from_secs(30));
//! assert_eq!(advice.max_ttl_rule, MaxTtlRule::Kept);
//!
//! // Memory-only leases: max_ttl is what the availability target allows
//! // once the grace period after every failover is paid.
//! let none = TuneInputs { replication: Replication::None, ..TuneInputs::default() };
//! let advice = recommend(&fit, &none)?;
//! assert_eq!(advice.max_ttl_rule, MaxTtlRule::Availability);
//! assert!(advice.prediction.grants_resume_max <= advice.prediction.unavailability_budget);
//! # Ok::<(), palisade_tuning::tune::TuneError>(())
//! ```

use std::time::Duration;

use crate::config::{Config, LeaseConfig, Replication};
use crate::duration::format_duration;

/// Fewest RTT samples [`RttFit::from_samples`] accepts: with fewer, the
/// 99th percentile is just the maximum and the mean moves with every sample.
pub const SAMPLES_MIN: usize = 30;
/// Largest RTT accepted, in µs (10 s): the heartbeat interval cannot exceed
/// 10 s, and a link slower than that cannot carry a raft cluster.
pub const RTT_US_MAX: f64 = 10_000_000.0;
/// Fewest ticks in an election timeout (the config's rule).
const ELECTION_TICKS_MIN: u32 = 3;
/// The config's bounds the recommendation must stay inside.
const ELECTION_TIMEOUT_MIN: Duration = Duration::from_millis(10);
const ELECTION_TIMEOUT_MAX: Duration = Duration::from_secs(60);
const HEARTBEAT_MAX: Duration = Duration::from_secs(10);
const MAX_TTL_MIN: Duration = Duration::from_millis(10);
const MAX_TTL_MAX: Duration = Duration::from_secs(24 * 3600);
/// Longest fsync time accepted: a disk slower than that cannot keep a
/// raft log.
const FSYNC_MAX: Duration = Duration::from_secs(10);
/// Fsyncs of the raft log in a row on the way to a new leader's first
/// commit (step 11): the candidate's term and vote, a voter's vote, the
/// term's first entry on a majority.
const ELECTION_SYNCS: u32 = 3;
/// Longest `mtbf` accepted: 100 years, far beyond any machine, and small
/// enough for the floating-point arithmetic to stay exact to the
/// millisecond.
const MTBF_MAX: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
const MS: f64 = 1e-3;
const US: f64 = 1e-6;

/// What went wrong; the operator is at fault in every case (bad samples,
/// bad inputs, or targets no timing can meet). Not retryable as is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TuneError {
    /// A line of a samples file is not a usable RTT.
    #[error("line {line}: {reason}")]
    BadSample {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Too few samples to fit.
    #[error("{got} RTT samples; at least {min} are needed to fit the delay distribution")]
    TooFewSamples {
        /// Samples given.
        got: usize,
        /// [`SAMPLES_MIN`].
        min: usize,
    },
    /// A model input is out of range.
    #[error("{name}: {reason}")]
    BadInput {
        /// The input, as the command line names it (like `--fp-fraction`).
        name: &'static str,
        /// What is wrong and what would be right.
        reason: String,
    },
    /// No timing meets the targets with these inputs.
    #[error("no timing meets the targets: {0}")]
    Infeasible(String),
}

/// Parses a samples file: one RTT in microseconds per line (a decimal such
/// as `153` or `153.5`). Blank lines and `#` comments (whole-line or after
/// the number) are skipped. Call it on the text of `--samples FILE`.
///
/// # Errors
///
/// [`TuneError::BadSample`] naming the first bad line: not a number, not
/// finite, zero or negative, or above [`RTT_US_MAX`].
pub fn parse_samples(text: &str) -> Result<Vec<f64>, TuneError> {
    let mut samples = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let value = raw.split('#').next().unwrap_or("").trim();
        if value.is_empty() {
            continue;
        }
        let rtt_us: f64 = value.parse().map_err(|_| TuneError::BadSample {
            line,
            reason: format!("expected an RTT in microseconds like 153.5, got {value:?}"),
        })?;
        check_sample(rtt_us).map_err(|reason| TuneError::BadSample { line, reason })?;
        samples.push(rtt_us);
    }
    Ok(samples)
}

/// Why `rtt_us` is not a usable RTT, if it is not.
fn check_sample(rtt_us: f64) -> Result<(), String> {
    if !rtt_us.is_finite() {
        return Err(format!("RTT must be a finite number, got {rtt_us}"));
    }
    if rtt_us <= 0.0 {
        return Err(format!("RTT must be more than 0 µs, got {rtt_us}"));
    }
    if rtt_us > RTT_US_MAX {
        return Err(format!(
            "RTT of {rtt_us} µs is above the {RTT_US_MAX} µs (10 s) a raft cluster can run over"
        ));
    }
    Ok(())
}

/// The fitted delay distribution: summary statistics of the RTT samples.
/// The jitter mean `m` of the model is [`RttFit::jitter_mean_us`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RttFit {
    /// Samples fitted (0 for a fit given as a summary).
    pub count: usize,
    /// Smallest RTT, µs.
    pub min_us: f64,
    /// Mean RTT, µs.
    pub mean_us: f64,
    /// 99th percentile (nearest rank), µs.
    pub p99_us: f64,
    /// Largest RTT, µs.
    pub max_us: f64,
}

impl RttFit {
    /// Fits samples (µs). Call with the output of [`parse_samples`] or
    /// with measured RTTs.
    ///
    /// # Errors
    ///
    /// [`TuneError::TooFewSamples`] below [`SAMPLES_MIN`];
    /// [`TuneError::BadSample`] (line = 1-based index) for a value that is
    /// not finite, not positive or above [`RTT_US_MAX`].
    pub fn from_samples(samples: &[f64]) -> Result<RttFit, TuneError> {
        for (index, &rtt_us) in samples.iter().enumerate() {
            check_sample(rtt_us).map_err(|reason| TuneError::BadSample {
                line: index + 1,
                reason,
            })?;
        }
        if samples.len() < SAMPLES_MIN {
            return Err(TuneError::TooFewSamples {
                got: samples.len(),
                min: SAMPLES_MIN,
            });
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let count = sorted.len();
        // Nearest rank: the smallest value with at least 99% at or below it.
        let p99_rank = (count * 99).div_ceil(100);
        let fit = RttFit {
            count,
            min_us: sorted[0],
            mean_us: sorted.iter().sum::<f64>() / count as f64,
            p99_us: sorted[p99_rank - 1],
            max_us: sorted[count - 1],
        };
        debug_assert!(fit.min_us <= fit.p99_us && fit.p99_us <= fit.max_us);
        Ok(fit)
    }

    /// A fit given by its statistics (µs), as the shipped profiles state
    /// their inputs.
    ///
    /// # Errors
    ///
    /// [`TuneError::BadInput`] unless every value is a valid RTT and
    /// `min ≤ mean ≤ max`, `min ≤ p99 ≤ max`.
    pub fn from_summary(
        min_us: f64,
        mean_us: f64,
        p99_us: f64,
        max_us: f64,
    ) -> Result<RttFit, TuneError> {
        for value in [min_us, mean_us, p99_us, max_us] {
            check_sample(value).map_err(|reason| TuneError::BadInput {
                name: "rtt summary",
                reason,
            })?;
        }
        let ordered =
            min_us <= mean_us && mean_us <= max_us && min_us <= p99_us && p99_us <= max_us;
        if !ordered {
            return Err(TuneError::BadInput {
                name: "rtt summary",
                reason: format!(
                    "need min <= mean <= max and min <= p99 <= max, got min {min_us}, mean \
                     {mean_us}, p99 {p99_us}, max {max_us}"
                ),
            });
        }
        Ok(RttFit {
            count: 0,
            min_us,
            mean_us,
            p99_us,
            max_us,
        })
    }

    /// The model's jitter mean `m = mean − min`, µs (step 2).
    #[must_use]
    pub fn jitter_mean_us(&self) -> f64 {
        (self.mean_us - self.min_us).max(0.0)
    }
}

/// Everything besides the samples that the model takes.
#[derive(Debug, Clone, PartialEq)]
pub struct TuneInputs {
    /// Cluster size `n`, at least 2 (a cluster of one sends no heartbeats).
    pub members: usize,
    /// Mean time between failures of one node; `λ = 1/mtbf`.
    pub mtbf: Duration,
    /// False suspicions allowed, as a fraction of the true failure rate,
    /// `0 < f ≤ 1`.
    pub fp_fraction: f64,
    /// Availability target for new grants, `0 < A < 1`.
    pub availability: f64,
    /// Shortest heartbeat interval to recommend, `1ms..=10s`.
    pub heartbeat_min: Duration,
    /// `leases.max_drift`.
    pub max_drift: f64,
    /// `leases.lock_delay_max`.
    pub lock_delay_max: Duration,
    /// `leases.min_ttl`: the recommended `max_ttl` is never below it.
    pub min_ttl: Duration,
    /// `leases.replication`: with [`Replication::None`] every failover
    /// costs the grace period and `max_ttl` is derived from the
    /// availability target (step 10); with [`Replication::Quorum`] it
    /// costs three fsyncs instead and `max_ttl` is kept (step 11).
    pub replication: Replication,
    /// `leases.max_ttl` to keep with [`Replication::Quorum`]; unused with
    /// [`Replication::None`], which derives it.
    pub max_ttl: Duration,
    /// How long one fsync of the raft log takes at worst, `0..=10s`
    /// (step 11; unused with [`Replication::None`]).
    pub fsync: Duration,
}

impl Default for TuneInputs {
    /// Three members, one failure a week per node, false positives at 1%
    /// of real failures, 99.99% availability, a 10ms heartbeat floor, a
    /// 10ms fsync (a SATA SSD or a network volume having a slow moment; an
    /// NVMe drive with power-loss protection syncs in tens of µs), and the
    /// lease defaults (replication `quorum`, `max_ttl` 30s).
    fn default() -> Self {
        let leases = LeaseConfig::default();
        Self {
            members: 3,
            mtbf: Duration::from_secs(7 * 24 * 3600),
            fp_fraction: 0.01,
            availability: 0.9999,
            heartbeat_min: Duration::from_millis(10),
            max_drift: leases.max_drift,
            lock_delay_max: leases.lock_delay_max,
            min_ttl: leases.min_ttl,
            replication: leases.replication,
            max_ttl: leases.max_ttl,
            fsync: Duration::from_millis(10),
        }
    }
}

impl TuneInputs {
    /// The defaults with the cluster size and lease settings of `config`
    /// (its replication mode and `max_ttl` included).
    #[must_use]
    pub fn from_config(config: &Config) -> TuneInputs {
        TuneInputs {
            members: config.members().len(),
            max_drift: config.leases.max_drift,
            lock_delay_max: config.leases.lock_delay_max,
            min_ttl: config.leases.min_ttl,
            replication: config.leases.replication,
            max_ttl: config.leases.max_ttl,
            ..TuneInputs::default()
        }
    }

    /// Checks every input's range.
    ///
    /// # Errors
    ///
    /// [`TuneError::BadInput`] naming the first bad input.
    pub fn check(&self) -> Result<(), TuneError> {
        let bad = |name, reason: String| Err(TuneError::BadInput { name, reason });
        if self.members < 2 {
            return bad(
                "members",
                format!(
                    "a cluster of {} has no followers and no heartbeats to tune; list at least \
                     2 members",
                    self.members
                ),
            );
        }
        if self.mtbf < Duration::from_secs(1) || self.mtbf > MTBF_MAX {
            return bad(
                "--mtbf",
                format!(
                    "must be between 1s and {} (100 years), got {}",
                    format_duration(MTBF_MAX),
                    format_duration(self.mtbf)
                ),
            );
        }
        if !(self.fp_fraction > 0.0 && self.fp_fraction <= 1.0) {
            return bad(
                "--fp-fraction",
                format!(
                    "must be more than 0 and at most 1, got {}",
                    self.fp_fraction
                ),
            );
        }
        if !(self.availability > 0.0 && self.availability < 1.0) {
            return bad(
                "--availability",
                format!(
                    "must be more than 0 and less than 1 (like 0.9999), got {}",
                    self.availability
                ),
            );
        }
        if self.heartbeat_min < Duration::from_millis(1) || self.heartbeat_min > HEARTBEAT_MAX {
            return bad(
                "--heartbeat-min",
                format!(
                    "must be between 1ms and 10s, got {}",
                    format_duration(self.heartbeat_min)
                ),
            );
        }
        crate::validate::check_max_drift(self.max_drift)
            .or_else(|reason| bad("leases.max_drift", reason))?;
        if self.replication == Replication::Quorum {
            if self.fsync > FSYNC_MAX {
                return bad(
                    "--fsync",
                    format!(
                        "must be at most {}, got {}",
                        format_duration(FSYNC_MAX),
                        format_duration(self.fsync)
                    ),
                );
            }
            if self.max_ttl < MAX_TTL_MIN || self.max_ttl > MAX_TTL_MAX {
                return bad(
                    "leases.max_ttl",
                    format!(
                        "must be between {} and {}, got {}",
                        format_duration(MAX_TTL_MIN),
                        format_duration(MAX_TTL_MAX),
                        format_duration(self.max_ttl)
                    ),
                );
            }
            if self.max_ttl < self.min_ttl {
                return bad(
                    "leases.max_ttl",
                    format!(
                        "must not be below leases.min_ttl ({}), got {}",
                        format_duration(self.min_ttl),
                        format_duration(self.max_ttl)
                    ),
                );
            }
        }
        Ok(())
    }

    /// `λ`, leader failures per second.
    fn failure_rate_per_s(&self) -> f64 {
        1.0 / self.mtbf.as_secs_f64()
    }
}

/// Which rule set the election timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// The config's minimum: 3 heartbeats, or 10ms.
    ConfigMinimum,
    /// The false-positive bound (step 5).
    FalsePositives,
    /// The largest observed round trip (step 6).
    RoundTrip,
}

impl Binding {
    /// A short name for output, like `"false-positives"`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ConfigMinimum => "config-minimum",
            Self::FalsePositives => "false-positives",
            Self::RoundTrip => "round-trip",
        }
    }
}

/// Where the recommended `max_ttl` comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxTtlRule {
    /// Derived from the availability target through the grace period
    /// (step 10, `replication = "none"`).
    Availability,
    /// Kept as given (step 11, `replication = "quorum"`): a failover
    /// keeps every lease, so `max_ttl` does not bound availability.
    Kept,
}

impl MaxTtlRule {
    /// A short name for output, like `"kept"`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Availability => "availability",
            Self::Kept => "kept",
        }
    }
}

/// What the model predicts for one set of timings.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The replication mode predicted for ([`TuneInputs::replication`]).
    pub replication: Replication,
    /// `λ`, leader failures per second.
    pub failure_rate_per_s: f64,
    /// `f·λ`, false suspicions per second allowed.
    pub fp_budget_per_s: f64,
    /// `r_fp`, false suspicions per second predicted (whole cluster).
    pub fp_rate_per_s: f64,
    /// Mean time from a leader crash until a follower campaigns.
    pub detection_expected: Duration,
    /// Longest such time, `2T`.
    pub detection_max: Duration,
    /// Mean election time, three mean round trips.
    pub election_expected: Duration,
    /// Longest election time, three largest round trips.
    pub election_max: Duration,
    /// The fsyncs in a row before the new leader's first commit,
    /// `3·fsync` with quorum (step 11); zero with none (step 10 leaves
    /// disk syncs out).
    pub election_syncs: Duration,
    /// The grace period (`Config::grace_period`): with none the new leader
    /// waits it after every failover (it is in `grants_resume_*`); with
    /// quorum only once, after an upgrade, a switch from none or a split
    /// first election (it is not).
    pub grace: Duration,
    /// Detection + election, mean: a new leader exists.
    pub failover_expected: Duration,
    /// Detection + election, worst.
    pub failover_max: Duration,
    /// Mean time from a leader failure until new grants resume: failover
    /// + grace (none) or failover + `election_syncs` (quorum).
    pub grants_resume_expected: Duration,
    /// The same at worst: the `U` of steps 10 and 11.
    pub grants_resume_max: Duration,
    /// `(1 − A)·mtbf`: the most `U` may be.
    pub unavailability_budget: Duration,
    /// `1 − λ·U`: the availability of new grants if every failure took
    /// the worst `U`.
    pub availability_worst: f64,
    /// With quorum, how long after a takeover a lease of `max_ttl` whose
    /// holder died stays taken before its lock delay:
    /// `(max_ttl + T)·(1 + d)/(1 − d)` ([`rearmed_ttl`]). `None` with
    /// none, which forgets every lease at a failover.
    pub rearmed_ttl_max: Option<Duration>,
    /// Longest time from a leader failure until a resource whose holder
    /// died with it can be granted again: `U + rearmed_ttl_max +
    /// lock_delay_max` with quorum, `U` with none.
    pub held_resource_free_max: Duration,
}

/// The model's advice.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    /// `cluster.heartbeat_interval`.
    pub heartbeat_interval: Duration,
    /// `k`, ticks per election timeout.
    pub election_ticks: u32,
    /// `cluster.election_timeout`, `k·h`.
    pub election_timeout: Duration,
    /// `leases.max_ttl`.
    pub max_ttl: Duration,
    /// Where `max_ttl` comes from.
    pub max_ttl_rule: MaxTtlRule,
    /// The rule that set `k`.
    pub binding: Binding,
    /// What these timings give.
    pub prediction: Prediction,
}

/// `P(G > t)` for heartbeat interval `h` and jitter mean `m` (step 3):
/// `½·e^{−(t − h)/m}` for `t ≥ h`; for `t < h` the Laplace's other half,
/// `1 − ½·e^{−(h − t)/m}`. All in seconds. `m = 0` is a step at `h`.
#[must_use]
pub fn gap_exceeds_probability(heartbeat_s: f64, jitter_mean_s: f64, t_s: f64) -> f64 {
    if jitter_mean_s <= 0.0 {
        return if t_s < heartbeat_s { 1.0 } else { 0.0 };
    }
    if t_s >= heartbeat_s {
        0.5 * (-(t_s - heartbeat_s) / jitter_mean_s).exp()
    } else {
        1.0 - 0.5 * (-(heartbeat_s - t_s) / jitter_mean_s).exp()
    }
}

/// `r_fp` (step 5): false suspicions per second in the whole cluster with
/// `members` nodes, heartbeat `h` and `k` election ticks.
#[must_use]
pub fn false_positive_rate_per_s(
    fit: &RttFit,
    members: usize,
    heartbeat: Duration,
    ticks: u32,
) -> f64 {
    let h = heartbeat.as_secs_f64();
    let followers = members.saturating_sub(1) as f64;
    let shortest_timeout = f64::from(ticks.saturating_sub(1)) * h;
    followers / h * gap_exceeds_probability(h, fit.jitter_mean_us() * US, shortest_timeout)
}

/// What the model predicts for these timings. Call it to judge a config
/// (the shipped profiles' test does) or through [`recommend`].
#[must_use]
pub fn predict(
    fit: &RttFit,
    inputs: &TuneInputs,
    heartbeat: Duration,
    election_timeout: Duration,
    max_ttl: Duration,
) -> Prediction {
    let ticks = election_ticks(heartbeat, election_timeout);
    let t = election_timeout.as_secs_f64();
    let n = inputs.members.max(1) as f64;
    let failure_rate_per_s = inputs.failure_rate_per_s();
    let detection_expected = t * (1.0 + 1.0 / n);
    let detection_max = 2.0 * t;
    let election_expected = 3.0 * fit.mean_us * US;
    let election_max = 3.0 * fit.max_us * US;
    let grace = grace(inputs, election_timeout, max_ttl);
    let secs = Duration::from_secs_f64;
    let failover_expected = secs(detection_expected + election_expected);
    let failover_max = secs(detection_max + election_max);
    // Step 10 or 11: what new grants wait for after the failover.
    let (election_syncs, wait) = match inputs.replication {
        Replication::None => (Duration::ZERO, grace),
        Replication::Quorum => {
            let syncs = inputs.fsync.saturating_mul(ELECTION_SYNCS);
            (syncs, syncs)
        }
    };
    let grants_resume_max = failover_max.saturating_add(wait);
    let rearmed_ttl_max = match inputs.replication {
        Replication::None => None,
        Replication::Quorum => Some(rearmed_ttl(
            inputs.max_drift,
            heartbeat,
            election_timeout,
            max_ttl,
        )),
    };
    let held_resource_free_max = rearmed_ttl_max.map_or(grants_resume_max, |rearmed| {
        grants_resume_max
            .saturating_add(rearmed)
            .saturating_add(inputs.lock_delay_max)
    });
    Prediction {
        replication: inputs.replication,
        failure_rate_per_s,
        fp_budget_per_s: inputs.fp_fraction * failure_rate_per_s,
        fp_rate_per_s: false_positive_rate_per_s(fit, inputs.members, heartbeat, ticks),
        detection_expected: secs(detection_expected),
        detection_max: secs(detection_max),
        election_expected: secs(election_expected),
        election_max: secs(election_max),
        election_syncs,
        grace,
        failover_expected,
        failover_max,
        grants_resume_expected: failover_expected.saturating_add(wait),
        grants_resume_max,
        unavailability_budget: secs((1.0 - inputs.availability) * inputs.mtbf.as_secs_f64()),
        availability_worst: 1.0 - failure_rate_per_s * grants_resume_max.as_secs_f64(),
        rearmed_ttl_max,
        held_resource_free_max,
    }
}

/// A lease's expiry re-armed at a takeover with replicated leases,
/// `(ttl + T)·(1 + d)/(1 − d)` for `d = max_drift`, exactly as the node
/// computes it (`ControlCore::rearm_ms`): whole milliseconds, the heartbeat
/// as the tick, the election timeout as whole ticks (at least 3), `d` in
/// parts per million rounded up, the result rounded up. A holder that
/// died keeps its resource this long after the takeover at most, then its
/// lock delay.
#[must_use]
pub fn rearmed_ttl(
    max_drift: f64,
    heartbeat: Duration,
    election_timeout: Duration,
    ttl: Duration,
) -> Duration {
    let millis = |d: Duration| u128::from(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let tick_ms = millis(heartbeat).max(1);
    let election_ms = (millis(election_timeout) / tick_ms).max(3) * tick_ms;
    // `as` saturates: NaN and negative drift become 0.
    let ppm = u128::from(((max_drift * 1e6).ceil() as u32).min(999_999));
    let base_ms = millis(ttl) + election_ms;
    let scaled_ms = (base_ms * (1_000_000 + ppm)).div_ceil(1_000_000 - ppm);
    Duration::from_millis(u64::try_from(scaled_ms).unwrap_or(u64::MAX))
}

/// Ticks per election timeout, as the node computes them (rounded down).
fn election_ticks(heartbeat: Duration, election_timeout: Duration) -> u32 {
    let ticks = election_timeout.as_nanos() / heartbeat.as_nanos().max(1);
    u32::try_from(ticks).unwrap_or(u32::MAX)
}

/// The grace period exactly as the node computes it.
fn grace(inputs: &TuneInputs, election_timeout: Duration, max_ttl: Duration) -> Duration {
    let mut config = Config::builtin_default();
    config.cluster.election_timeout = election_timeout;
    config.leases.max_ttl = max_ttl;
    config.leases.lock_delay_max = inputs.lock_delay_max;
    config.leases.max_drift = inputs.max_drift;
    config.grace_period()
}

/// The rules of the model that these timings break (steps 5, 6, 8, and 10
/// or 11);
/// empty when they meet every one. The shipped profiles' test calls it, and
/// [`recommend`] asserts its own advice passes.
#[must_use]
pub fn violations(
    fit: &RttFit,
    inputs: &TuneInputs,
    heartbeat: Duration,
    election_timeout: Duration,
    max_ttl: Duration,
) -> Vec<String> {
    let mut broken = Vec::new();
    let ticks = election_ticks(heartbeat, election_timeout);
    if ticks < ELECTION_TICKS_MIN {
        broken.push(format!(
            "election timeout {} is fewer than {ELECTION_TICKS_MIN} heartbeats of {}",
            format_duration(election_timeout),
            format_duration(heartbeat)
        ));
    }
    let p = predict(fit, inputs, heartbeat, election_timeout, max_ttl);
    // Relative slack for floating-point rounding in the comparisons below.
    let slack = 1.0 + 1e-9;
    if p.fp_rate_per_s > p.fp_budget_per_s * slack {
        broken.push(format!(
            "false suspicions {:.3e}/s exceed the budget f·λ = {:.3e}/s",
            p.fp_rate_per_s, p.fp_budget_per_s
        ));
    }
    let h = heartbeat.as_secs_f64();
    let window = f64::from(ticks.saturating_sub(1)) * h * (1.0 - inputs.max_drift);
    let needed = h + fit.max_us * US;
    if window * slack < needed {
        broken.push(format!(
            "grant window (k−1)·h·(1−drift) = {:.3}ms is shorter than h + rtt_max = {:.3}ms",
            window / MS,
            needed / MS
        ));
    }
    if p.grants_resume_max > p.unavailability_budget {
        broken.push(format!(
            "worst unavailability per failure {} exceeds (1 − A)·mtbf = {}",
            format_duration(round_up_ms(p.grants_resume_max)),
            format_duration(round_up_ms(p.unavailability_budget))
        ));
    }
    if max_ttl < inputs.min_ttl {
        broken.push(format!(
            "max_ttl {} is below min_ttl {}",
            format_duration(max_ttl),
            format_duration(inputs.min_ttl)
        ));
    }
    broken
}

/// The model's advice for `fit` and `inputs` (steps 7, 8, and 10 or 11).
///
/// # Errors
///
/// [`TuneError::BadInput`] for an input out of range;
/// [`TuneError::Infeasible`] when the election timeout would pass 60s, or
/// with none no `max_ttl` of at least `min_ttl` meets the availability
/// target, or with quorum the failover alone does not.
pub fn recommend(fit: &RttFit, inputs: &TuneInputs) -> Result<Recommendation, TuneError> {
    inputs.check()?;
    // Step 7.
    let heartbeat = round_up_ms(Duration::from_secs_f64(fit.p99_us * US).max(inputs.heartbeat_min));
    assert!(heartbeat <= HEARTBEAT_MAX, "p99 <= RTT_US_MAX = 10s");
    let h = heartbeat.as_secs_f64();

    // Step 8: the smallest k for each rule.
    let k_config = ELECTION_TICKS_MIN.max(ceil_ticks(ELECTION_TIMEOUT_MIN.as_secs_f64() / h));
    let m = fit.jitter_mean_us() * US;
    let log_term = ((inputs.members - 1) as f64
        / (2.0 * h * inputs.fp_fraction * inputs.failure_rate_per_s()))
    .ln();
    let k_fp = 2 + ceil_ticks((m * log_term).max(0.0) / h);
    let k_rtt = 1 + ceil_ticks((h + fit.max_us * US) / (h * (1.0 - inputs.max_drift)));
    let (election_ticks, binding) = [
        (k_config, Binding::ConfigMinimum),
        (k_fp, Binding::FalsePositives),
        (k_rtt, Binding::RoundTrip),
    ]
    .into_iter()
    .fold((0, Binding::ConfigMinimum), |best, next| {
        if next.0 > best.0 {
            next
        } else {
            best
        }
    });
    let election_timeout = heartbeat.saturating_mul(election_ticks);
    if election_timeout > ELECTION_TIMEOUT_MAX {
        return Err(TuneError::Infeasible(format!(
            "the election timeout would be {} ({election_ticks} heartbeats of {}, set by the {} \
             rule), above the 60s maximum; the link's jitter (mean {:.0} µs) or round trips \
             (max {:.0} µs) are too large, or --fp-fraction / --mtbf ask too much",
            format_duration(election_timeout),
            format_duration(heartbeat),
            binding.as_str(),
            fit.jitter_mean_us(),
            fit.max_us
        )));
    }

    let (max_ttl, max_ttl_rule) = match inputs.replication {
        Replication::None => (
            max_ttl_for_availability(fit, inputs, election_timeout)?,
            MaxTtlRule::Availability,
        ),
        // Step 11: keep it; only the failover itself meets the budget.
        Replication::Quorum => (inputs.max_ttl, MaxTtlRule::Kept),
    };
    let prediction = predict(fit, inputs, heartbeat, election_timeout, max_ttl);
    if prediction.grants_resume_max > prediction.unavailability_budget {
        assert_eq!(inputs.replication, Replication::Quorum, "step 10 fits U");
        let shorter_timeout = match binding {
            Binding::ConfigMinimum => "a lower --heartbeat-min",
            Binding::FalsePositives => "a larger --fp-fraction",
            Binding::RoundTrip => "a link with smaller worst round trips",
        };
        return Err(TuneError::Infeasible(format!(
            "availability {} with an mtbf of {} allows {} without grants per failure, but \
             detection (up to 2 x the election timeout {}), election (3 round trips, up to {}) \
             and {ELECTION_SYNCS} fsyncs of {} take up to {}. Accept a lower --availability, \
             give a faster disk's --fsync, or shorten the election timeout (set by the {} \
             rule) with {shorter_timeout}",
            inputs.availability,
            format_duration(inputs.mtbf),
            readable(prediction.unavailability_budget),
            format_duration(election_timeout),
            readable(prediction.election_max),
            format_duration(inputs.fsync),
            readable(prediction.grants_resume_max),
            binding.as_str()
        )));
    }
    let advice = Recommendation {
        heartbeat_interval: heartbeat,
        election_ticks,
        election_timeout,
        max_ttl,
        max_ttl_rule,
        binding,
        prediction,
    };
    let broken = violations(fit, inputs, heartbeat, election_timeout, max_ttl);
    assert!(
        broken.is_empty(),
        "the advice meets its own model: {broken:?}"
    );
    Ok(advice)
}

/// Step 10 (`replication = "none"`): the longest `max_ttl` whose grace
/// still fits the availability budget.
fn max_ttl_for_availability(
    fit: &RttFit,
    inputs: &TuneInputs,
    election_timeout: Duration,
) -> Result<Duration, TuneError> {
    let t = election_timeout.as_secs_f64();
    let budget = (1.0 - inputs.availability) * inputs.mtbf.as_secs_f64();
    let before_grace = 2.0 * t + 3.0 * fit.max_us * US;
    let max_ttl_s = (budget - before_grace) / (1.0 + inputs.max_drift)
        - inputs.lock_delay_max.as_secs_f64()
        - t;
    let floor = inputs.min_ttl.max(MAX_TTL_MIN);
    // The exact grace rounds up to a millisecond; leave that millisecond.
    let max_ttl = round_down_ttl(max_ttl_s - MS).min(MAX_TTL_MAX);
    if max_ttl_s <= 0.0 || max_ttl < floor {
        return Err(TuneError::Infeasible(format!(
            "availability {} with an mtbf of {} allows {:.3}s without grants per failure, but \
             detection and election take up to {:.3}s and the grace period adds \
             lock_delay_max {} + election timeout {} before any max_ttl; max_ttl would be \
             {:.3}s, below min_ttl {}. Lower leases.lock_delay_max, or accept a lower \
             --availability (or replicate leases: leases.replication = \"quorum\" owes no \
             grace per failover)",
            inputs.availability,
            format_duration(inputs.mtbf),
            budget,
            before_grace,
            format_duration(inputs.lock_delay_max),
            format_duration(election_timeout),
            max_ttl_s,
            format_duration(floor)
        )));
    }
    Ok(max_ttl)
}

/// A config snippet with the advice and the lease inputs it assumed; it
/// loads on its own with [`Config::from_toml_str`]. `header` lines are
/// written as comments first.
#[must_use]
pub fn snippet(advice: &Recommendation, inputs: &TuneInputs, header: &[String]) -> String {
    let mut out = String::new();
    for line in header {
        out.push_str(&format!("# {line}\n"));
    }
    let p = &advice.prediction;
    assert_eq!(p.replication, inputs.replication, "advice for these inputs");
    let ms = readable;
    let after_failover = match p.replication {
        Replication::None => "the grace period after every failover".to_owned(),
        Replication::Quorum => format!(
            "{ELECTION_SYNCS} fsyncs of {}, no grace period",
            format_duration(inputs.fsync)
        ),
    };
    out.push_str(&format!(
        "# predicted false suspicions {:.3e}/s (budget {:.3e}/s); failover {} mean, {} worst; \
         grants resume after {} worst ({after_failover})\n",
        p.fp_rate_per_s,
        p.fp_budget_per_s,
        ms(p.failover_expected),
        ms(p.failover_max),
        ms(p.grants_resume_max),
    ));
    if let Some(rearmed) = p.rearmed_ttl_max {
        out.push_str(&format!(
            "# a dead holder's resource is free at most {} after a failure: max_ttl re-armed to \
             {} at the takeover, then lock_delay_max\n",
            ms(p.held_resource_free_max),
            ms(rearmed),
        ));
    }
    out.push_str(&format!(
        "[cluster]\nheartbeat_interval = \"{}\"\nelection_timeout = \"{}\"  # {} heartbeats, set by the {} rule\n\n",
        format_duration(advice.heartbeat_interval),
        format_duration(advice.election_timeout),
        advice.election_ticks,
        advice.binding.as_str()
    ));
    let (replication_note, max_ttl_note, inputs_note) = match advice.max_ttl_rule {
        MaxTtlRule::Availability => (
            "the model assumed it: every failover costs the grace period",
            "the longest the availability target allows",
            "the grace period",
        ),
        MaxTtlRule::Kept => (
            "the model assumed it: a failover keeps every lease",
            "kept: with quorum it does not bound availability, only how long a dead holder's \
             resource stays taken",
            "the re-armed expiry and the one-off grace period",
        ),
    };
    out.push_str(&format!(
        "[leases]\nreplication = \"{}\"  # {replication_note}\nmax_ttl = \"{}\"  # {max_ttl_note}\n\
         # inputs of {inputs_note}:\nmin_ttl = \"{}\"\nlock_delay_max = \"{}\"\n\
         max_drift = {:?}\n",
        p.replication.as_str(),
        format_duration(advice.max_ttl),
        format_duration(inputs.min_ttl),
        format_duration(inputs.lock_delay_max),
        inputs.max_drift
    ));
    out
}

/// `x` ticks rounded up, for a non-negative finite `x`.
fn ceil_ticks(x: f64) -> u32 {
    let rounded = x.ceil().max(0.0);
    if rounded >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        rounded as u32
    }
}

/// A figure for people: seconds to the millisecond (rounded up) from 1s,
/// else milliseconds to the microsecond, like `"40.824s"` or `"1.2ms"`.
fn readable(duration: Duration) -> String {
    if duration >= Duration::from_secs(1) {
        return format!("{:.3}s", round_up_ms(duration).as_secs_f64());
    }
    let ms = format!("{:.3}", duration.as_secs_f64() / MS);
    format!("{}ms", ms.trim_end_matches('0').trim_end_matches('.'))
}

fn round_up_ms(duration: Duration) -> Duration {
    let nanos = duration.as_nanos();
    let ms = nanos.div_ceil(1_000_000);
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// Seconds rounded down: to a second from 10s up, else to a millisecond.
fn round_down_ttl(seconds: f64) -> Duration {
    if seconds <= 0.0 {
        return Duration::ZERO;
    }
    let capped = seconds.min(MAX_TTL_MAX.as_secs_f64());
    if capped >= 10.0 {
        Duration::from_secs(capped.floor() as u64)
    } else {
        Duration::from_millis((capped * 1e3).floor() as u64)
    }
}

#[cfg(test)]
mod tests;
