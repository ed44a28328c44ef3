//! Link rate text: `"1gbit"`, `"100mbit"`, `"500kbit"`, in bits per second.
//!
//! The units are `tc`'s decimal bit units (`kbit` is 1000 bit/s), so the
//! value an operator writes here means what it means on a `tc` command
//! line. `tc`'s byte units (`bps`, `kbps`, ...) are refused with a hint:
//! `"8mbps"` reads as megabits to most people and as megabytes to `tc`.

use crate::ValueError;

/// The units, smallest first, with their size in bits per second.
const UNITS: [(&str, u64); 5] = [
    ("bit", 1),
    ("kbit", 1_000),
    ("mbit", 1_000_000),
    ("gbit", 1_000_000_000),
    ("tbit", 1_000_000_000_000),
];

/// What every rate message lists as valid input.
const RATE_EXPECTED: &str =
    "a whole number and a unit (bit, kbit, mbit, gbit, tbit), like \"1gbit\" or \"100mbit\"";

/// Parses a link rate such as `"1gbit"` or `"100mbit"` into bits per
/// second.
///
/// The number is a whole decimal number; the unit one of `bit`, `kbit`,
/// `mbit`, `gbit`, `tbit` in any letter case, optionally after a space.
/// The range the config accepts is checked by validation, not here.
///
/// # Errors
///
/// [`ValueError::Rate`], its message saying what is accepted; for `tc`'s byte units (`mbps`) it
/// says to write bits.
///
/// ```
/// use palisade_tuning::parse_rate;
///
/// assert_eq!(parse_rate("1gbit"), Ok(1_000_000_000));
/// assert_eq!(parse_rate("250 Mbit"), Ok(250_000_000));
/// assert!(parse_rate("1000").unwrap_err().reason().contains("unit"));
/// assert!(parse_rate("8mbps").unwrap_err().reason().contains("bytes"));
/// ```
pub fn parse_rate(text: &str) -> Result<u64, ValueError> {
    let trimmed = text.trim();
    let unit_start = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(unit_start);
    let unit = unit.trim_start().to_ascii_lowercase();
    if number.is_empty() {
        return Err(ValueError::Rate(format!(
            "invalid rate {text:?}; expected {RATE_EXPECTED}"
        )));
    }
    if unit.is_empty() {
        return Err(ValueError::Rate(format!(
            "rate {text:?} has no unit; expected {RATE_EXPECTED}"
        )));
    }
    if let Some(prefix) = unit.strip_suffix("bps") {
        // tc reads "bps" as bytes per second; say what that would be.
        let in_bits = number
            .parse::<u64>()
            .ok()
            .and_then(|number| number.checked_mul(8))
            .map_or_else(String::new, |bits| format!(" ({bits}{prefix}bit)"));
        return Err(ValueError::Rate(format!(
            "rate {text:?} is in bytes per second to tc{in_bits}; write the rate in bits, \
             like \"{number}{prefix}bit\" if bits were meant"
        )));
    }
    let Some(&(_, scale)) = UNITS.iter().find(|(name, _)| *name == unit) else {
        return Err(ValueError::Rate(format!(
            "unknown unit {unit:?} in rate {text:?}; expected {RATE_EXPECTED}"
        )));
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|number| number.checked_mul(scale))
        .ok_or_else(|| ValueError::Rate(format!("rate {text:?} is too large")))
}

/// Writes a rate in the largest unit that divides it exactly (`"1gbit"`,
/// `"1500kbit"`), so [`parse_rate`] reads back the same number and `tc`
/// accepts the text as it stands.
///
/// ```
/// use palisade_tuning::{format_rate, parse_rate};
///
/// assert_eq!(format_rate(1_000_000_000), "1gbit");
/// assert_eq!(format_rate(1_500_000), "1500kbit");
/// assert_eq!(parse_rate(&format_rate(123_456_789)), Ok(123_456_789));
/// ```
#[must_use]
pub fn format_rate(bits_per_second: u64) -> String {
    let (name, scale) = UNITS
        .iter()
        .rev()
        .find(|(_, scale)| bits_per_second % scale == 0 && bits_per_second != 0)
        .copied()
        .unwrap_or(UNITS[0]);
    format!("{}{name}", bits_per_second / scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_rate("1bit"), Ok(1));
        assert_eq!(parse_rate("10kbit"), Ok(10_000));
        assert_eq!(parse_rate("10MBIT"), Ok(10_000_000));
        assert_eq!(parse_rate(" 2 gbit "), Ok(2_000_000_000));
        assert_eq!(parse_rate("1tbit"), Ok(1_000_000_000_000));
    }

    #[test]
    fn bad_rates() {
        for text in [
            "", "gbit", "1", "1.5gbit", "-1gbit", "1 g", "1kib", "1gbits",
        ] {
            let error = parse_rate(text).unwrap_err();
            assert!(error.reason().contains(text.trim()), "{text:?}: {error}");
        }
        let error = parse_rate("8mbps").unwrap_err();
        assert!(error.reason().contains("(64mbit)"), "{error}");
        assert!(error.reason().contains("like \"8mbit\""), "{error}");
        assert!(parse_rate("99999999999999999999bit")
            .unwrap_err()
            .reason()
            .contains("too large"));
        assert!(parse_rate("18446744073709552tbit")
            .unwrap_err()
            .reason()
            .contains("too large"));
    }

    #[test]
    fn format_reads_back() {
        for rate in [0, 1, 999, 1_000, 1_500_000, 10_000_000, 1 << 40, u64::MAX] {
            assert_eq!(parse_rate(&format_rate(rate)), Ok(rate), "{rate}");
        }
        assert_eq!(format_rate(0), "0bit");
        assert_eq!(format_rate(20_000_000), "20mbit");
        assert_eq!(format_rate(1_000_000_000_000), "1tbit");
    }
}
