//! The model against values computed by hand (the arithmetic is in the
//! comments), its edge cases, and properties it must keep.

use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::{Config, Replication};

/// `|got − want| ≤ tol·|want|` (or `≤ tol` near zero).
fn close(got: f64, want: f64, tol: f64) -> bool {
    (got - want).abs() <= tol * want.abs().max(1e-300)
}

fn ms(value: u64) -> Duration {
    Duration::from_millis(value)
}

/// Inputs with round numbers for hand computation: 3 members,
/// λ = 1/1e6 s, f = 0.01, A = 0.9999, h_min = 10ms, drift 0.01,
/// lock_delay_max 10s, min_ttl 100ms, memory-only leases (step 10; the
/// max_ttl and fsync given are not used).
fn round_inputs() -> TuneInputs {
    TuneInputs {
        members: 3,
        mtbf: Duration::from_secs(1_000_000),
        fp_fraction: 0.01,
        availability: 0.9999,
        heartbeat_min: ms(10),
        max_drift: 0.01,
        lock_delay_max: Duration::from_secs(10),
        min_ttl: ms(100),
        replication: Replication::None,
        max_ttl: Duration::from_secs(30),
        fsync: ms(10),
    }
}

/// [`round_inputs`] with replicated leases (step 11): max_ttl 30s kept,
/// fsync 10ms.
fn quorum_inputs() -> TuneInputs {
    TuneInputs {
        replication: Replication::Quorum,
        ..round_inputs()
    }
}

#[test]
fn samples_file_skips_blanks_and_comments() {
    let text = "# RTTs from node 1, µs\n\n100\n  200.5   # a slow one\n\t\n# end\n3e2\n";
    assert_eq!(parse_samples(text), Ok(vec![100.0, 200.5, 300.0]));
    assert_eq!(parse_samples(""), Ok(vec![]));
}

#[test]
fn a_bad_sample_line_is_named() {
    let cases = [
        ("100\n\nabc\n", 3, "expected an RTT in microseconds"),
        ("100\n0\n", 2, "more than 0"),
        ("-5\n", 1, "more than 0"),
        ("100\nNaN\n", 2, "finite"),
        ("inf\n", 1, "finite"),
        ("1\n2\n3\n2e7\n", 4, "above"),
        ("12 ms\n", 1, "expected an RTT in microseconds"),
        ("1,5\n", 1, "expected an RTT"),
    ];
    for (text, line, words) in cases {
        match parse_samples(text) {
            Err(TuneError::BadSample { line: got, reason }) => {
                assert_eq!(got, line, "{text:?}");
                assert!(reason.contains(words), "{text:?}: {reason}");
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }
    let message = parse_samples("1\nx\n").unwrap_err().to_string();
    assert!(message.starts_with("line 2: "), "{message}");
}

#[test]
fn fit_of_one_to_a_hundred() {
    // Samples 1..=100 µs: min 1, max 100, mean 5050/100 = 50.5, the 99th
    // percentile by nearest rank is the ceil(0.99·100) = 99th value = 99,
    // jitter mean m = 50.5 − 1 = 49.5.
    let samples: Vec<f64> = (1..=100).map(f64::from).collect();
    let fit = RttFit::from_samples(&samples).expect("fit");
    assert_eq!(fit.count, 100);
    assert_eq!(fit.min_us, 1.0);
    assert_eq!(fit.max_us, 100.0);
    assert!(close(fit.mean_us, 50.5, 1e-12));
    assert_eq!(fit.p99_us, 99.0);
    assert!(close(fit.jitter_mean_us(), 49.5, 1e-12));

    // 30 samples: rank ceil(0.99·30) = ceil(29.7) = 30, the maximum.
    let samples: Vec<f64> = (1..=30).rev().map(f64::from).collect();
    let fit = RttFit::from_samples(&samples).expect("fit");
    assert_eq!(fit.p99_us, 30.0);
    assert_eq!(fit.min_us, 1.0);
}

#[test]
fn too_few_and_bad_samples() {
    let samples = vec![100.0; SAMPLES_MIN - 1];
    assert_eq!(
        RttFit::from_samples(&samples),
        Err(TuneError::TooFewSamples {
            got: 29,
            min: SAMPLES_MIN
        })
    );
    let message = RttFit::from_samples(&[]).unwrap_err().to_string();
    assert!(message.contains("at least 30"), "{message}");
    let mut samples = vec![100.0; 40];
    samples[7] = f64::NAN;
    assert!(matches!(
        RttFit::from_samples(&samples),
        Err(TuneError::BadSample { line: 8, .. })
    ));
    samples[7] = 0.0;
    assert!(RttFit::from_samples(&samples).is_err());
    assert!(
        RttFit::from_summary(10.0, 5.0, 20.0, 30.0).is_err(),
        "mean < min"
    );
    assert!(
        RttFit::from_summary(10.0, 20.0, 40.0, 30.0).is_err(),
        "p99 > max"
    );
    assert!(
        RttFit::from_summary(10.0, 20.0, 20.0, 3e7).is_err(),
        "absurd max"
    );
}

#[test]
fn laplace_gap_tail_by_hand() {
    // For X₁, X₂ ~ Exp(mean m), s ≥ 0:
    // P(X₂ − X₁ > s) = ∫₀^∞ (1/m)e^{−x/m} · e^{−(s+x)/m} dx = ½·e^{−s/m}.
    // h = 10ms, m = 1ms:
    // t = 13ms: ½·e^{−3} = 0.024893534183931972
    assert!(close(
        gap_exceeds_probability(0.010, 0.001, 0.013),
        0.024_893_534_183_931_972,
        1e-12
    ));
    // t = h: ½.
    assert!(close(
        gap_exceeds_probability(0.010, 0.001, 0.010),
        0.5,
        1e-12
    ));
    // t = 8ms < h, the other half: 1 − ½·e^{−2} = 1 − 0.06766764161830635.
    assert!(close(
        gap_exceeds_probability(0.010, 0.001, 0.008),
        0.932_332_358_381_693_6,
        1e-12
    ));
    // No jitter: a step at h.
    assert_eq!(gap_exceeds_probability(0.010, 0.0, 0.011), 0.0);
    assert_eq!(gap_exceeds_probability(0.010, 0.0, 0.009), 1.0);
}

#[test]
fn false_positive_rate_by_hand() {
    // m = 2000 − 1000 µs = 1ms, n = 3, h = 10ms, k = 5: the shortest
    // timeout is (k − 1)·h = 40ms, so
    // r_fp = (n − 1)/h · ½·e^{−(40 − 10)/1} = 2/0.01 · ½ · e^{−30}
    //      = 100 · 9.357622968840175e-14 = 9.357622968840175e-12 per second.
    let fit = RttFit::from_summary(1000.0, 2000.0, 9000.0, 12_000.0).expect("fit");
    let rate = false_positive_rate_per_s(&fit, 3, ms(10), 5);
    assert!(close(rate, 9.357_622_968_840_175e-12, 1e-9), "{rate:e}");
    // k = 3: ½·e^{−10}·200 = 100 · 4.539992976248485e-5 = 4.539992976248485e-3.
    let rate = false_positive_rate_per_s(&fit, 3, ms(10), 3);
    assert!(close(rate, 4.539_992_976_248_485e-3, 1e-9), "{rate:e}");
    // Five members double the followers: twice the rate.
    let five = false_positive_rate_per_s(&fit, 5, ms(10), 3);
    assert!(close(five, 2.0 * rate, 1e-12));
}

#[test]
fn recommendation_by_hand_set_by_false_positives() {
    // Fit: min 1ms, mean 2ms, p99 9ms, max 12ms: m = 1ms.
    // Step 7: h = max(10ms, 9ms) = 10ms.
    // Step 5: f·λ = 0.01 · 1e-6 = 1e-8 per second;
    //   ln((n − 1)/(2·h·f·λ)) = ln(2/(2 · 0.01 · 1e-8)) = ln(1e10) = 23.02585093;
    //   m·ln(..) = 23.02585ms → (k − 2) ≥ 2.3026 → k_fp = 5.
    // Step 6: 1 + ceil((10 + 12)/(10 · 0.99)) = 1 + ceil(2.2222) = 4.
    // Config: 3. So k = 5, T = 50ms, set by the false-positive rule.
    let fit = RttFit::from_summary(1000.0, 2000.0, 9000.0, 12_000.0).expect("fit");
    let inputs = round_inputs();
    let advice = recommend(&fit, &inputs).expect("advice");
    assert_eq!(advice.heartbeat_interval, ms(10));
    assert_eq!(advice.election_ticks, 5);
    assert_eq!(advice.election_timeout, ms(50));
    assert_eq!(advice.binding, Binding::FalsePositives);

    // Step 10: budget (1 − A)·mtbf = 1e-4 · 1e6 = 100s;
    //   before grace 2T + 3·rtt_max = 0.1 + 0.036 = 0.136s;
    //   max_ttl ≤ (100 − 0.136)/1.01 − 10 − 0.05 = 98.87525 − 10.05 = 88.82525s
    //   → less 1ms for the grace's rounding, down to a second: 88s.
    assert_eq!(advice.max_ttl, Duration::from_secs(88));

    let p = &advice.prediction;
    assert!(close(p.failure_rate_per_s, 1e-6, 1e-12));
    assert!(close(p.fp_budget_per_s, 1e-8, 1e-12));
    assert!(close(p.fp_rate_per_s, 9.357_622_968_840_175e-12, 1e-9));
    // Grace (88 + 10 + 0.05)·1.01 = 99.0305s → 99.031s (rounded up to a ms).
    assert_eq!(p.grace, ms(99_031));
    // Detection: T·(1 + 1/3) = 66.667ms mean, 2T = 100ms worst.
    assert!(close(
        p.detection_expected.as_secs_f64(),
        0.05 * 4.0 / 3.0,
        1e-7
    ));
    assert!(close(p.detection_max.as_secs_f64(), 0.1, 1e-7));
    // Election: 3·2ms = 6ms mean, 3·12ms = 36ms worst.
    assert!(close(p.election_expected.as_secs_f64(), 0.006, 1e-7));
    assert!(close(p.election_max.as_secs_f64(), 0.036, 1e-7));
    // Failover 72.667ms mean, 136ms worst; grants resume after
    // 136ms + 99.031s = 99.167s worst, inside the 100s budget.
    assert!(close(
        p.failover_expected.as_secs_f64(),
        0.072_666_667,
        1e-6
    ));
    assert!(close(p.failover_max.as_secs_f64(), 0.136, 1e-7));
    assert!(close(p.grants_resume_max.as_secs_f64(), 99.167, 1e-7));
    assert!(close(p.unavailability_budget.as_secs_f64(), 100.0, 1e-7));
}

#[test]
fn recommendation_by_hand_set_by_the_round_trip() {
    // A long link: min 100ms, mean 100.5ms, p99 120ms, max 300ms.
    // h = max(10ms, 120ms) = 120ms.
    // Step 6: 1 + ceil((120 + 300)/(120 · 0.99)) = 1 + ceil(3.5354) = 5.
    // Step 5: m = 0.5ms, λ = 1/604800 (one week), f = 0.01:
    //   ln(2/(2 · 0.12 · 0.01/604800)) = ln(5.04e8) = 20.0379;
    //   m·ln = 10.02ms → (k − 2) ≥ 0.0835 → k_fp = 3. So k = 5, T = 600ms.
    let fit = RttFit::from_summary(100_000.0, 100_500.0, 120_000.0, 300_000.0).expect("fit");
    let inputs = TuneInputs {
        mtbf: Duration::from_secs(604_800),
        ..round_inputs()
    };
    let advice = recommend(&fit, &inputs).expect("advice");
    assert_eq!(advice.heartbeat_interval, ms(120));
    assert_eq!(advice.election_ticks, 5);
    assert_eq!(advice.election_timeout, ms(600));
    assert_eq!(advice.binding, Binding::RoundTrip);
    // Step 10: budget 1e-4 · 604800 = 60.48s; before grace 1.2 + 0.9 = 2.1s;
    //   (60.48 − 2.1)/1.01 − 10 − 0.6 = 57.80198 − 10.6 = 47.20198s → 47s.
    assert_eq!(advice.max_ttl, Duration::from_secs(47));
}

#[test]
fn quorum_by_hand_keeps_max_ttl_and_owes_no_grace() {
    // The fit of the false-positive case: min 1ms, mean 2ms, p99 9ms,
    // max 12ms. Steps 7 and 8 do not depend on the mode: h = 10ms, k = 5,
    // T = 50ms, set by the false-positive rule.
    let fit = RttFit::from_summary(1000.0, 2000.0, 9000.0, 12_000.0).expect("fit");
    let inputs = quorum_inputs();
    let advice = recommend(&fit, &inputs).expect("advice");
    assert_eq!(advice.heartbeat_interval, ms(10));
    assert_eq!(advice.election_ticks, 5);
    assert_eq!(advice.election_timeout, ms(50));
    assert_eq!(advice.binding, Binding::FalsePositives);
    // Step 11: max_ttl is the one given, not the 88s of step 10.
    assert_eq!(advice.max_ttl, Duration::from_secs(30));
    assert_eq!(advice.max_ttl_rule, MaxTtlRule::Kept);

    let p = &advice.prediction;
    assert_eq!(p.replication, Replication::Quorum);
    // Failover as for none: detection T·(1 + 1/3) = 66.667ms mean, 2T =
    // 100ms worst; election 3·2 = 6ms mean, 3·12 = 36ms worst; so
    // 72.667ms mean, 136ms worst.
    assert!(close(
        p.failover_expected.as_secs_f64(),
        0.072_666_667,
        1e-6
    ));
    assert!(close(p.failover_max.as_secs_f64(), 0.136, 1e-7));
    // Then three fsyncs of 10ms, no grace: grants resume after
    // 72.667 + 30 = 102.667ms mean, 136 + 30 = 166ms worst.
    assert_eq!(p.election_syncs, ms(30));
    assert!(close(
        p.grants_resume_expected.as_secs_f64(),
        0.102_666_667,
        1e-6
    ));
    assert!(close(p.grants_resume_max.as_secs_f64(), 0.166, 1e-7));
    // Budget (1 − A)·mtbf = 100s; worst availability 1 − 1e-6 · 0.166.
    assert!(close(p.unavailability_budget.as_secs_f64(), 100.0, 1e-7));
    assert!(close(p.availability_worst, 1.0 - 1.66e-7, 1e-12));
    // Re-armed max_ttl: (30000 + 5·10) ms · 1.01/0.99 = 30050 · 101/99
    // = 3035050/99 = 30657.07 → 30658ms (rounded up, as the node does).
    assert_eq!(p.rearmed_ttl_max, Some(ms(30_658)));
    // A dead holder's resource: 166ms + 30.658s + lock_delay_max 10s.
    assert_eq!(p.held_resource_free_max, ms(40_824));
    // The grace is still reported (owed once): (30 + 10 + 0.05)·1.01 =
    // 40.4505s → 40.451s; it is not in grants_resume.
    assert_eq!(p.grace, ms(40_451));
}

#[test]
fn quorum_by_hand_on_a_long_link() {
    // The round-trip case's link (h = 120ms, k = 5, T = 600ms) with
    // replicated leases and max_ttl 30s, one failure a week.
    let fit = RttFit::from_summary(100_000.0, 100_500.0, 120_000.0, 300_000.0).expect("fit");
    let inputs = TuneInputs {
        mtbf: Duration::from_secs(604_800),
        ..quorum_inputs()
    };
    let advice = recommend(&fit, &inputs).expect("advice");
    assert_eq!(advice.heartbeat_interval, ms(120));
    assert_eq!(advice.election_timeout, ms(600));
    assert_eq!(advice.binding, Binding::RoundTrip);
    assert_eq!(advice.max_ttl, Duration::from_secs(30));
    let p = &advice.prediction;
    // Detection 0.8s mean, 1.2s worst; election 301.5ms mean, 900ms
    // worst; fsyncs 30ms: 1.1315s mean, 2.13s worst.
    assert!(close(p.grants_resume_expected.as_secs_f64(), 1.1315, 1e-7));
    assert!(close(p.grants_resume_max.as_secs_f64(), 2.13, 1e-7));
    // 2.13/604800 = 3.521825396825397e-6 of the time at worst.
    assert!(close(
        p.availability_worst,
        1.0 - 3.521_825_396_825_397e-6,
        1e-12
    ));
    // (30000 + 600)·101/99 = 3090600/99 = 31218.18 → 31219ms; plus 2.13s
    // and 10s: 43.349s.
    assert_eq!(p.rearmed_ttl_max, Some(ms(31_219)));
    assert_eq!(p.held_resource_free_max, ms(43_349));
    // Once only: (30 + 10 + 0.6)·1.01 = 41.006s.
    assert_eq!(p.grace, ms(41_006));
}

#[test]
fn rearmed_ttl_is_the_nodes_arithmetic() {
    // (ttl + T)·(1 + d)/(1 − d) in whole ms, rounded up.
    // d = 0: ttl + T exactly.
    assert_eq!(
        rearmed_ttl(0.0, ms(10), ms(50), Duration::from_secs(30)),
        ms(30_050)
    );
    // d = 0.01: 10050·101/99 = 1015050/99 = 10253.03 → 10254ms.
    assert_eq!(
        rearmed_ttl(0.01, ms(10), ms(50), Duration::from_secs(10)),
        ms(10_254)
    );
    // d = 0.05: (1000 + 30)·1.05/0.95 = 1030·21/19 = 21630/19 = 1138.42
    // → 1139ms.
    assert_eq!(rearmed_ttl(0.05, ms(10), ms(30), ms(1000)), ms(1139));
    // The node counts the election timeout in whole ticks, at least 3:
    // 55ms with a 10ms tick is 5 ticks, 50ms; 20ms is 3 ticks, 30ms.
    assert_eq!(rearmed_ttl(0.0, ms(10), ms(55), ms(1000)), ms(1050));
    assert_eq!(rearmed_ttl(0.0, ms(10), ms(20), ms(1000)), ms(1030));
    // Drift is taken in ppm rounded up: 0.0000001 is 1 ppm,
    // 1000·1000001/999999 = 1000.002 → 1001ms.
    assert_eq!(rearmed_ttl(1e-7, ms(10), ms(0), ms(970)), ms(1001));
}

#[test]
fn with_quorum_only_the_failover_meets_the_budget() {
    // Budget (1 − 0.99999985)·1e6 = 0.15s. The failover alone takes
    // 136ms worst (the false-positive case above).
    let fit = RttFit::from_summary(1000.0, 2000.0, 9000.0, 12_000.0).expect("fit");
    let tight = TuneInputs {
        availability: 0.999_999_85,
        ..quorum_inputs()
    };
    // Three fsyncs of 10ms: 166ms > 150ms, impossible, and the error says
    // what took the time.
    let error = recommend(&fit, &tight).unwrap_err();
    match &error {
        TuneError::Infeasible(why) => {
            for words in ["availability", "fsyncs of 10ms", "166ms", "150ms"] {
                assert!(why.contains(words), "{words}: {why}");
            }
        }
        other => panic!("{other:?}"),
    }
    // Three of 4ms: 148ms fits, whatever max_ttl and lock_delay_max are
    // (neither enters the failover).
    let fast_disk = TuneInputs {
        fsync: ms(4),
        max_ttl: Duration::from_secs(24 * 3600),
        lock_delay_max: ms(65_535),
        ..tight.clone()
    };
    let advice = recommend(&fit, &fast_disk).expect("fits");
    assert_eq!(advice.election_timeout, ms(50));
    assert_eq!(advice.max_ttl, Duration::from_secs(24 * 3600));
    assert!(close(
        advice.prediction.grants_resume_max.as_secs_f64(),
        0.148,
        1e-7
    ));
    // The same budget cannot carry any grace period: with none it fails.
    let none = TuneInputs {
        replication: Replication::None,
        ..fast_disk
    };
    let error = recommend(&fit, &none).unwrap_err().to_string();
    assert!(error.contains("lock_delay_max"), "{error}");
}

#[test]
fn no_jitter_gives_the_config_minimum() {
    // m = 0: no false suspicions at any k ≥ 2; step 6 gives
    // 1 + ceil((10 + 0.1)/9.9) = 3; the config minimum is 3 too, and a tie
    // is reported as the config minimum.
    let fit = RttFit::from_summary(100.0, 100.0, 100.0, 100.0).expect("fit");
    let advice = recommend(&fit, &round_inputs()).expect("advice");
    assert_eq!(advice.heartbeat_interval, ms(10));
    assert_eq!(advice.election_timeout, ms(30));
    assert_eq!(advice.binding, Binding::ConfigMinimum);
    assert_eq!(advice.prediction.fp_rate_per_s, 0.0);
}

#[test]
fn a_fine_heartbeat_floor_still_keeps_ten_milliseconds() {
    // h_min = 1ms on a 100 µs link: h = 1ms, and T ≥ 10ms needs k = 10.
    let fit = RttFit::from_summary(100.0, 100.0, 100.0, 100.0).expect("fit");
    let inputs = TuneInputs {
        heartbeat_min: ms(1),
        ..round_inputs()
    };
    let advice = recommend(&fit, &inputs).expect("advice");
    assert_eq!(advice.heartbeat_interval, ms(1));
    assert_eq!(advice.election_timeout, ms(10));
    assert_eq!(advice.election_ticks, 10);
}

#[test]
fn impossible_targets_say_why() {
    // Seconds of jitter: the election timeout would pass 60s.
    let fit = RttFit::from_summary(1000.0, 5_000_000.0, 9_000_000.0, 10_000_000.0).expect("fit");
    let error = recommend(&fit, &round_inputs()).unwrap_err();
    assert!(
        matches!(&error, TuneError::Infeasible(why) if why.contains("60s")),
        "{error}"
    );
    // Eight nines with a weekly failure leave 6ms per failover.
    let fit = RttFit::from_summary(100.0, 150.0, 300.0, 500.0).expect("fit");
    let inputs = TuneInputs {
        availability: 0.999_999_99,
        ..round_inputs()
    };
    let error = recommend(&fit, &inputs).unwrap_err().to_string();
    assert!(error.contains("availability"), "{error}");
    assert!(error.contains("lock_delay_max"), "{error}");
}

#[test]
fn bad_inputs_are_named() {
    let fit = RttFit::from_summary(100.0, 150.0, 300.0, 500.0).expect("fit");
    let cases: [(TuneInputs, &str); 13] = [
        (
            TuneInputs {
                members: 1,
                ..round_inputs()
            },
            "members",
        ),
        (
            TuneInputs {
                members: 0,
                ..round_inputs()
            },
            "members",
        ),
        (
            TuneInputs {
                fp_fraction: 0.0,
                ..round_inputs()
            },
            "--fp-fraction",
        ),
        (
            TuneInputs {
                fp_fraction: -0.1,
                ..round_inputs()
            },
            "--fp-fraction",
        ),
        (
            TuneInputs {
                fp_fraction: f64::NAN,
                ..round_inputs()
            },
            "--fp-fraction",
        ),
        (
            TuneInputs {
                availability: 1.0,
                ..round_inputs()
            },
            "--availability",
        ),
        (
            TuneInputs {
                mtbf: Duration::ZERO,
                ..round_inputs()
            },
            "--mtbf",
        ),
        (
            TuneInputs {
                mtbf: Duration::MAX,
                ..round_inputs()
            },
            "--mtbf",
        ),
        (
            TuneInputs {
                heartbeat_min: Duration::ZERO,
                ..round_inputs()
            },
            "--heartbeat-min",
        ),
        (
            TuneInputs {
                max_drift: 0.7,
                ..round_inputs()
            },
            "leases.max_drift",
        ),
        (
            TuneInputs {
                fsync: Duration::from_secs(11),
                ..quorum_inputs()
            },
            "--fsync",
        ),
        (
            TuneInputs {
                max_ttl: ms(50),
                ..quorum_inputs()
            },
            "leases.max_ttl",
        ),
        (
            TuneInputs {
                max_ttl: Duration::from_secs(25 * 3600),
                ..quorum_inputs()
            },
            "leases.max_ttl",
        ),
    ];
    for (inputs, name) in cases {
        match recommend(&fit, &inputs) {
            Err(TuneError::BadInput { name: got, .. }) => assert_eq!(got, name),
            other => panic!("{name}: {other:?}"),
        }
    }
    // With none, max_ttl is derived and fsync is not in the model: both
    // are ignored.
    let ignored = TuneInputs {
        fsync: Duration::from_secs(11),
        max_ttl: ms(50),
        ..round_inputs()
    };
    assert!(recommend(&fit, &ignored).is_ok());
}

#[test]
fn violations_name_each_broken_rule() {
    let fit = RttFit::from_summary(1000.0, 2000.0, 9000.0, 12_000.0).expect("fit");
    let inputs = round_inputs();
    // The hand-computed advice breaks nothing.
    assert!(violations(&fit, &inputs, ms(10), ms(50), Duration::from_secs(88)).is_empty());
    // k = 2, so fewer than 3 heartbeats, false suspicions far over budget
    // (½·e^{0}·200 = 100/s), and a 10ms grant window below 22ms; a 200s
    // max_ttl overruns the 100s budget; 50ms is below min_ttl.
    let broken = violations(&fit, &inputs, ms(10), ms(20), Duration::from_secs(200));
    assert_eq!(broken.len(), 4, "{broken:#?}");
    assert!(broken[0].contains("fewer than 3 heartbeats"));
    assert!(broken[1].contains("false suspicions"));
    assert!(broken[2].contains("grant window"));
    assert!(broken[3].contains("unavailability"));
    let broken = violations(&fit, &inputs, ms(10), ms(50), ms(50));
    assert_eq!(broken.len(), 1, "{broken:#?}");
    assert!(broken[0].contains("below min_ttl"));

    // With quorum the 200s max_ttl breaks nothing: no grace per failover.
    let inputs = quorum_inputs();
    let secs = Duration::from_secs;
    assert!(violations(&fit, &inputs, ms(10), ms(50), secs(200)).is_empty());
    // Its failover alone (166ms) against a 150ms budget does.
    let tight = TuneInputs {
        availability: 0.999_999_85,
        ..inputs
    };
    let broken = violations(&fit, &tight, ms(10), ms(50), secs(30));
    assert_eq!(broken.len(), 1, "{broken:#?}");
    assert!(broken[0].contains("unavailability"), "{broken:#?}");
}

#[test]
fn the_snippet_loads_with_the_config_loader() {
    let fit = RttFit::from_summary(1000.0, 2000.0, 9000.0, 12_000.0).expect("fit");
    let inputs = round_inputs();
    let advice = recommend(&fit, &inputs).expect("advice");
    let text = snippet(&advice, &inputs, &["made by a test".to_owned()]);
    assert!(text.starts_with("# made by a test\n"), "{text}");
    let config = Config::from_toml_str(&text, None).expect("the snippet validates");
    assert_eq!(config.cluster.heartbeat_interval, ms(10));
    assert_eq!(config.cluster.election_timeout, ms(50));
    assert_eq!(config.leases.max_ttl, Duration::from_secs(88));
    assert_eq!(config.leases.min_ttl, ms(100));
    assert_eq!(config.leases.max_drift, 0.01);
    assert_eq!(config.leases.replication, Replication::None);
    assert_eq!(config.grace_period(), advice.prediction.grace);
    assert!(text.contains("grace period after every failover"), "{text}");

    // With quorum the snippet keeps max_ttl, says why, and names the
    // re-armed figure.
    let inputs = quorum_inputs();
    let advice = recommend(&fit, &inputs).expect("advice");
    let text = snippet(&advice, &inputs, &[]);
    let config = Config::from_toml_str(&text, None).expect("the snippet validates");
    assert_eq!(config.leases.replication, Replication::Quorum);
    assert_eq!(config.leases.max_ttl, Duration::from_secs(30));
    assert_eq!(config.cluster.election_timeout, ms(50));
    for words in [
        "3 fsyncs of 10ms",
        "kept",
        "re-armed to 30.658s",
        "free at most 40.824s",
    ] {
        assert!(text.contains(words), "{words}: {text}");
    }
}

#[test]
fn from_config_takes_members_and_lease_settings() {
    let text = "[node]\nid = 2\n[leases]\nlock_delay_max = \"2s\"\nmax_drift = 0.05\nmin_ttl = \"1s\"\n\
                max_ttl = \"20s\"\nreplication = \"none\"\n\
                [[cluster.peers]]\nid = 1\npeer = \"127.0.0.1:7421\"\nclient = \"127.0.0.1:7411\"\n\
                [[cluster.peers]]\nid = 2\npeer = \"127.0.0.1:7422\"\nclient = \"127.0.0.1:7400\"\n";
    let config = Config::from_toml_str(text, None).expect("config");
    let inputs = TuneInputs::from_config(&config);
    assert_eq!(inputs.members, 2);
    assert_eq!(inputs.lock_delay_max, Duration::from_secs(2));
    assert_eq!(inputs.max_drift, 0.05);
    assert_eq!(inputs.min_ttl, Duration::from_secs(1));
    assert_eq!(inputs.max_ttl, Duration::from_secs(20));
    assert_eq!(inputs.replication, Replication::None);
    assert_eq!(inputs.fp_fraction, TuneInputs::default().fp_fraction);
    assert_eq!(inputs.fsync, TuneInputs::default().fsync);
    // A config that says nothing gets the defaults: quorum, 30s.
    let config = Config::from_toml_str("", None).expect("config");
    let inputs = TuneInputs::from_config(&config);
    assert_eq!(inputs.replication, Replication::Quorum);
    assert_eq!(inputs.max_ttl, Duration::from_secs(30));
    assert_eq!(TuneInputs::default().replication, Replication::Quorum);
    assert_eq!(TuneInputs::default().max_ttl, Duration::from_secs(30));
}

/// A fit with the given minimum, jitter mean, p99 and max (µs), made valid.
fn fit_of(min: f64, jitter: f64, p99_extra: f64, max_extra: f64) -> RttFit {
    let mean = min + jitter;
    let p99 = min + p99_extra;
    let max = mean.max(p99) + max_extra;
    RttFit::from_summary(min, mean, p99, max).expect("valid by construction")
}

fn mode(quorum: bool) -> Replication {
    if quorum {
        Replication::Quorum
    } else {
        Replication::None
    }
}

fn timeout_of(fit: &RttFit, inputs: &TuneInputs) -> Option<Duration> {
    recommend(fit, inputs)
        .ok()
        .map(|advice| advice.election_timeout)
}

proptest! {
    #[test]
    fn more_jitter_never_shortens_the_timeout(
        min in 10.0f64..100_000.0,
        jitter in 0.0f64..50_000.0,
        more in 0.0f64..50_000.0,
        p99_extra in 0.0f64..100_000.0,
        max_extra in 0.0f64..200_000.0,
        members in 2usize..8,
        fp_exp in -4.0f64..0.0,
        quorum in any::<bool>(),
    ) {
        let inputs = TuneInputs {
            members,
            fp_fraction: 10f64.powf(fp_exp),
            replication: mode(quorum),
            ..TuneInputs::default()
        };
        // Same p99 and max; only the mean (the jitter) grows.
        let calm = fit_of(min, jitter, p99_extra.max(jitter + more), max_extra);
        let rough = RttFit { mean_us: calm.mean_us + more, ..calm };
        let calm_t = timeout_of(&calm, &inputs);
        let rough_t = timeout_of(&rough, &inputs);
        match (calm_t, rough_t) {
            (Some(calm_t), Some(rough_t)) => prop_assert!(rough_t >= calm_t),
            // An impossible calm link cannot become possible with more jitter.
            (None, rough_t) => prop_assert!(rough_t.is_none()),
            (Some(_), None) => {}
        }
    }

    #[test]
    fn a_smaller_fp_fraction_never_shortens_the_timeout(
        min in 10.0f64..100_000.0,
        jitter in 0.0f64..50_000.0,
        p99_extra in 0.0f64..100_000.0,
        max_extra in 0.0f64..200_000.0,
        fp_exp in -6.0f64..0.0,
        smaller_by in 0.0f64..3.0,
        quorum in any::<bool>(),
    ) {
        let fit = fit_of(min, jitter, p99_extra, max_extra);
        let loose = TuneInputs {
            fp_fraction: 10f64.powf(fp_exp),
            replication: mode(quorum),
            ..TuneInputs::default()
        };
        let strict = TuneInputs { fp_fraction: 10f64.powf(fp_exp - smaller_by), ..loose.clone() };
        match (timeout_of(&fit, &loose), timeout_of(&fit, &strict)) {
            (Some(loose_t), Some(strict_t)) => prop_assert!(strict_t >= loose_t),
            (None, strict_t) => prop_assert!(strict_t.is_none()),
            (Some(_), None) => {}
        }
    }

    #[test]
    fn every_recommendation_meets_the_model_and_loads(
        samples in proptest::collection::vec(1.0f64..2_000_000.0, SAMPLES_MIN..200),
        members in 2usize..8,
        fp_exp in -5.0f64..0.0,
        mtbf_h in 1u64..10_000,
        quorum in any::<bool>(),
        max_ttl_ms in 100u64..=86_400_000,
        fsync_ms in 0u64..=100,
    ) {
        let fit = RttFit::from_samples(&samples).expect("valid samples");
        let inputs = TuneInputs {
            members,
            fp_fraction: 10f64.powf(fp_exp),
            mtbf: Duration::from_secs(mtbf_h * 3600),
            replication: mode(quorum),
            max_ttl: ms(max_ttl_ms),
            fsync: ms(fsync_ms),
            ..TuneInputs::default()
        };
        if let Ok(advice) = recommend(&fit, &inputs) {
            let p = &advice.prediction;
            prop_assert!(p.fp_rate_per_s <= p.fp_budget_per_s * (1.0 + 1e-9));
            prop_assert!(p.grants_resume_max <= p.unavailability_budget);
            prop_assert!(p.availability_worst >= inputs.availability - 1e-12);
            prop_assert!(p.held_resource_free_max >= p.grants_resume_max);
            if quorum {
                // Kept, and a dead holder's resource waits at least its
                // ttl stretched by the drift, after the failover.
                prop_assert_eq!(advice.max_ttl, inputs.max_ttl);
                prop_assert_eq!(advice.max_ttl_rule, MaxTtlRule::Kept);
                let rearmed = p.rearmed_ttl_max.expect("quorum re-arms");
                prop_assert!(rearmed >= advice.max_ttl + advice.election_timeout);
                prop_assert_eq!(
                    p.held_resource_free_max,
                    p.grants_resume_max + rearmed + inputs.lock_delay_max
                );
                prop_assert_eq!(p.election_syncs, inputs.fsync * 3);
            } else {
                prop_assert_eq!(advice.max_ttl_rule, MaxTtlRule::Availability);
                prop_assert_eq!(p.rearmed_ttl_max, None);
                prop_assert_eq!(p.grants_resume_max, p.failover_max + p.grace);
            }
            let text = snippet(&advice, &inputs, &[]);
            let config = Config::from_toml_str(&text, None);
            prop_assert!(config.is_ok(), "{text}\n{config:?}");
            let config = config.expect("checked");
            prop_assert_eq!(config.leases.replication, inputs.replication);
            prop_assert_eq!(config.leases.max_ttl, advice.max_ttl);
        }
    }

    #[test]
    fn with_quorum_max_ttl_and_lock_delay_never_change_the_timing(
        samples in proptest::collection::vec(1.0f64..2_000_000.0, SAMPLES_MIN..100),
        mtbf_h in 1u64..1000,
        availability_nines in 2.0f64..8.0,
        max_ttl_ms in 100u64..=86_400_000,
        lock_delay_ms in 0u64..=65_535,
    ) {
        let fit = RttFit::from_samples(&samples).expect("valid samples");
        let base = TuneInputs {
            mtbf: Duration::from_secs(mtbf_h * 3600),
            availability: 1.0 - 10f64.powf(-availability_nines),
            ..TuneInputs::default()
        };
        let other = TuneInputs {
            max_ttl: ms(max_ttl_ms),
            lock_delay_max: ms(lock_delay_ms),
            ..base.clone()
        };
        match (recommend(&fit, &base), recommend(&fit, &other)) {
            (Ok(a), Ok(b)) => {
                prop_assert_eq!(a.heartbeat_interval, b.heartbeat_interval);
                prop_assert_eq!(a.election_timeout, b.election_timeout);
                prop_assert_eq!(a.prediction.grants_resume_max, b.prediction.grants_resume_max);
                prop_assert_eq!(b.max_ttl, other.max_ttl);
            }
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            (a, b) => prop_assert!(false, "feasibility changed: {a:?} vs {b:?}"),
        }
    }
}
