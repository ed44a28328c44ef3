//! Duration text: `"250us"`, `"250ms"`, `"10s"`, `"1.5s"`, `"2m"`, `"1h"`.
//!
//! Parsing is exact: it uses integer arithmetic only, so `"0.1s"` is exactly
//! 100ms and [`format_duration`] followed by [`parse_duration`] gives back the
//! same [`Duration`] for every value, down to the nanosecond.

use std::time::Duration;

use crate::ValueError;

const NANOS_PER_US: u128 = 1_000;
const NANOS_PER_MS: u128 = 1_000_000;
const NANOS_PER_S: u128 = 1_000_000_000;
const NANOS_PER_M: u128 = 60 * NANOS_PER_S;
const NANOS_PER_H: u128 = 60 * NANOS_PER_M;

/// The units in the order they are listed in messages.
const UNITS_TEXT: &str = "us, ms, s, m, h";

/// The most fraction digits worth looking at: no unit is as long as 10^18 ns,
/// so a further non-zero digit is always finer than a nanosecond. Bounding it
/// keeps the arithmetic inside `u128`.
const FRACTION_DIGITS_MAX: usize = 18;

/// Parses a duration such as `"250us"`, `"250ms"`, `"10s"`, `"1.5s"`, `"2m"`
/// or `"1h"`.
///
/// Call it on every duration a person wrote. The number is a non-negative
/// decimal with an optional fraction; the unit is one of `us` (or `µs`),
/// `ms`, `s`, `m`, `h`, optionally after a space. A bare number such as `"30"`
/// is an error that says to add a unit, because guessing seconds versus
/// milliseconds is how timeouts end up 1000 times off.
///
/// # Errors
///
/// [`ValueError::Duration`], its message naming the problem: no unit, unknown unit, negative, not a
/// number, finer than one nanosecond, or larger than [`Duration::MAX`].
///
/// ```
/// use std::time::Duration;
/// use palisade_tuning::parse_duration;
///
/// assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
/// assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
/// assert!(parse_duration("30").unwrap_err().reason().contains("add one"));
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, ValueError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(ValueError::Duration(format!(
            "empty duration; expected a number and a unit ({UNITS_TEXT}), like \"10s\""
        )));
    }
    if trimmed.starts_with('-') {
        return Err(ValueError::Duration(format!(
            "duration {text:?} is negative; it must be 0 or more"
        )));
    }
    let unit_start = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(unit_start);
    let unit = unit.trim_start();
    if number.is_empty() {
        return Err(ValueError::Duration(format!(
            "invalid duration {text:?}: expected a number followed by a unit ({UNITS_TEXT}), like \"10s\""
        )));
    }
    if unit.is_empty() {
        return Err(ValueError::Duration(format!(
            "duration {text:?} has no unit; add one, like \"{number}s\" or \"{number}ms\" (units: {UNITS_TEXT})"
        )));
    }
    let unit_nanos = match unit {
        "us" | "µs" => NANOS_PER_US,
        "ms" => NANOS_PER_MS,
        "s" => NANOS_PER_S,
        "m" => NANOS_PER_M,
        "h" => NANOS_PER_H,
        _ => {
            return Err(ValueError::Duration(format!(
                "unknown unit {unit:?} in duration {text:?}; use one of {UNITS_TEXT}"
            )))
        }
    };
    let (whole_text, fraction_text) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (number, None),
    };
    let malformed = whole_text.is_empty()
        || fraction_text.is_some_and(|fraction| fraction.is_empty() || fraction.contains('.'));
    if malformed {
        return Err(ValueError::Duration(format!(
            "invalid number {number:?} in duration {text:?}; write it like \"10s\" or \"1.5s\""
        )));
    }
    let too_large = || ValueError::Duration(format!("duration {text:?} is too large"));

    let whole = parse_digits(whole_text).ok_or_else(too_large)?;
    let mut nanos = whole.checked_mul(unit_nanos).ok_or_else(too_large)?;

    if let Some(fraction) = fraction_text {
        let fraction = fraction.trim_end_matches('0');
        if fraction.len() > FRACTION_DIGITS_MAX {
            return Err(ValueError::Duration(format!(
                "duration {text:?} is finer than one nanosecond"
            )));
        }
        let numerator = parse_digits(fraction)
            .expect("at most 18 digits fit in u128")
            .checked_mul(unit_nanos)
            .expect("below 10^18 times at most 3.6*10^12 fits in u128");
        let denominator = 10u128.pow(u32::try_from(fraction.len()).expect("at most 18"));
        if numerator % denominator != 0 {
            return Err(ValueError::Duration(format!(
                "duration {text:?} is finer than one nanosecond"
            )));
        }
        nanos = nanos
            .checked_add(numerator / denominator)
            .ok_or_else(too_large)?;
    }
    duration_from_nanos(nanos).ok_or_else(too_large)
}

/// Parses ASCII digits into a `u128`; `None` on overflow. An empty string
/// is zero. The caller has already checked that every byte is a digit.
fn parse_digits(digits: &str) -> Option<u128> {
    digits.bytes().try_fold(0u128, |value, byte| {
        debug_assert!(byte.is_ascii_digit());
        value.checked_mul(10)?.checked_add(u128::from(byte - b'0'))
    })
}

/// Converts nanoseconds to a [`Duration`]; `None` above [`Duration::MAX`].
pub(crate) fn duration_from_nanos(nanos: u128) -> Option<Duration> {
    let secs = u64::try_from(nanos / NANOS_PER_S).ok()?;
    let subsec_nanos = u32::try_from(nanos % NANOS_PER_S).expect("below 10^9");
    Some(Duration::new(secs, subsec_nanos))
}

/// Formats a duration so that [`parse_duration`] reads it back exactly.
///
/// Uses the largest unit that gives a whole number (`"90s"`, `"2m"`,
/// `"250us"`); a duration with nanoseconds left over is written as a
/// fraction of microseconds (`"1.5us"`). Zero is `"0s"`. Called by
/// [`Config::to_toml`](crate::Config::to_toml) and in messages.
///
/// ```
/// use std::time::Duration;
/// use palisade_tuning::format_duration;
///
/// assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
/// assert_eq!(format_duration(Duration::from_secs(120)), "2m");
/// assert_eq!(format_duration(Duration::from_nanos(1500)), "1.5us");
/// ```
#[must_use]
pub fn format_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    let units = [
        ("h", NANOS_PER_H),
        ("m", NANOS_PER_M),
        ("s", NANOS_PER_S),
        ("ms", NANOS_PER_MS),
        ("us", NANOS_PER_US),
    ];
    for (unit, unit_nanos) in units {
        if nanos % unit_nanos == 0 {
            return format!("{}{unit}", nanos / unit_nanos);
        }
    }
    let fraction = format!("{:03}", nanos % NANOS_PER_US);
    let fraction = fraction.trim_end_matches('0');
    format!("{}.{fraction}us", nanos / NANOS_PER_US)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn units() {
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("250µs"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration(" 10 s "), Ok(Duration::from_secs(10)));
    }

    #[test]
    fn zero_is_allowed() {
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0.0h"), Ok(Duration::ZERO));
    }

    #[test]
    fn fractions_are_exact() {
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.1s"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("1.5us"), Ok(Duration::from_nanos(1500)));
        assert_eq!(parse_duration("0.001us"), Ok(Duration::from_nanos(1)));
        assert_eq!(parse_duration("1.25h"), Ok(Duration::from_secs(4500)));
        assert_eq!(
            parse_duration("1.500000000000000000000000000000s"),
            Ok(Duration::from_millis(1500))
        );
        let finer = parse_duration("0.0001us").unwrap_err();
        assert!(finer.reason().contains("nanosecond"), "{finer}");
    }

    #[test]
    fn bare_number_says_add_a_unit() {
        let error = parse_duration("30").unwrap_err();
        assert!(error.reason().contains("no unit"), "{error}");
        assert!(error.reason().contains("\"30s\""), "{error}");
        assert!(parse_duration("0")
            .unwrap_err()
            .reason()
            .contains("no unit"));
    }

    #[test]
    fn negative_is_rejected() {
        let error = parse_duration("-1s").unwrap_err();
        assert!(error.reason().contains("negative"), "{error}");
    }

    #[test]
    fn overflow_is_rejected() {
        let max = format!("{}s", u64::MAX);
        assert_eq!(parse_duration(&max), Ok(Duration::from_secs(u64::MAX)));
        for text in [
            format!("{}0s", u64::MAX),
            "18446744073709551616s".to_owned(),
            "99999999999999999999999999999999999999999999h".to_owned(),
            "5124095576030432h".to_owned(),
        ] {
            let error = parse_duration(&text).unwrap_err();
            assert!(error.reason().contains("too large"), "{text}: {error}");
        }
    }

    #[test]
    fn garbage_is_rejected() {
        for text in [
            "", "  ", "s", "ms", "abc", "1.s", ".5s", "1..5s", "1.2.3s", "10x", "10 sec", "1h30m",
            "+1s", "1e3ms", "NaN", "inf",
        ] {
            assert!(parse_duration(text).is_err(), "{text:?} should be rejected");
        }
        assert!(parse_duration("10 sec")
            .unwrap_err()
            .reason()
            .contains("unknown unit"));
    }

    #[test]
    fn format_picks_the_largest_whole_unit() {
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_millis(100)), "100ms");
        assert_eq!(format_duration(Duration::from_micros(200)), "200us");
        assert_eq!(format_duration(Duration::from_nanos(1)), "0.001us");
        assert_eq!(
            format_duration(Duration::from_nanos(1_000_010)),
            "1000.01us"
        );
    }

    #[test]
    fn format_round_trips_extremes() {
        for duration in [Duration::MAX, Duration::from_nanos(1), Duration::new(1, 1)] {
            assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
        }
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(secs in any::<u64>(), nanos in 0u32..1_000_000_000) {
            let duration = Duration::new(secs, nanos);
            prop_assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,40}") {
            let _ = parse_duration(&text);
        }
    }
}
