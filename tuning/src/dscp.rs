//! DSCP (Differentiated Services Code Point) names and numbers.
//!
//! The data plane marks client replies with a DSCP so that switches can put
//! lease traffic ahead of bulk traffic. Operators know the names (`EF`,
//! `AF41`, `CS6`), so the config accepts them as well as the raw number.

use crate::ValueError;

/// The largest DSCP: it is a 6-bit field.
pub const DSCP_MAX: u8 = 63;

/// What every DSCP message lists as valid input.
pub(crate) const DSCP_EXPECTED: &str = "a DSCP name (EF, CS0..CS7, AF11..AF43) or a number 0..=63";

/// Expedited Forwarding, RFC 3246.
const EF: u8 = 46;

/// Parses a DSCP name or a decimal number.
///
/// Names are `EF` (46), `CS0`..`CS7` (class selectors, 8 × n) and
/// `AF11`..`AF43` (assured forwarding class x, drop precedence y: 8x + 2y),
/// in any letter case. A number must be `0..=63`. The config file may also
/// give the number as a TOML integer; the walker handles that case itself.
///
/// # Errors
///
/// [`ValueError::Dscp`], its message saying what is accepted.
///
/// ```
/// use palisade_tuning::parse_dscp;
///
/// assert_eq!(parse_dscp("EF"), Ok(46));
/// assert_eq!(parse_dscp("af41"), Ok(34));
/// assert_eq!(parse_dscp("10"), Ok(10));
/// assert!(parse_dscp("64").is_err());
/// ```
pub fn parse_dscp(text: &str) -> Result<u8, ValueError> {
    let trimmed = text.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|byte| byte.is_ascii_digit()) {
        return match trimmed.parse::<u8>() {
            Ok(value) if value <= DSCP_MAX => Ok(value),
            _ => Err(ValueError::Dscp(format!(
                "DSCP {text:?} is out of range; expected {DSCP_EXPECTED}"
            ))),
        };
    }
    let upper = trimmed.to_ascii_uppercase();
    dscp_by_name(&upper)
        .ok_or_else(|| ValueError::Dscp(format!("unknown DSCP {text:?}; expected {DSCP_EXPECTED}")))
}

/// Looks up an upper-case DSCP name.
fn dscp_by_name(name: &str) -> Option<u8> {
    if name == "EF" {
        return Some(EF);
    }
    if let Some(class) = name.strip_prefix("CS") {
        let class = single_digit(class, 0..=7)?;
        return Some(8 * class);
    }
    if let Some(digits) = name.strip_prefix("AF") {
        if digits.len() != 2 || !digits.is_char_boundary(1) {
            return None;
        }
        let (class, drop_precedence) = digits.split_at(1);
        let class = single_digit(class, 1..=4)?;
        let drop_precedence = single_digit(drop_precedence, 1..=3)?;
        return Some(8 * class + 2 * drop_precedence);
    }
    None
}

/// Parses one ASCII digit within `range`.
fn single_digit(text: &str, range: std::ops::RangeInclusive<u8>) -> Option<u8> {
    let [byte] = text.as_bytes() else {
        return None;
    };
    let digit = byte.checked_sub(b'0')?;
    range.contains(&digit).then_some(digit)
}

/// The conventional name of a DSCP, if it has one (`46` is `"EF"`, `0` is
/// `"CS0"`).
#[must_use]
pub fn dscp_name(dscp: u8) -> Option<&'static str> {
    const CS: [&str; 8] = ["CS0", "CS1", "CS2", "CS3", "CS4", "CS5", "CS6", "CS7"];
    const AF: [[&str; 3]; 4] = [
        ["AF11", "AF12", "AF13"],
        ["AF21", "AF22", "AF23"],
        ["AF31", "AF32", "AF33"],
        ["AF41", "AF42", "AF43"],
    ];
    if dscp == EF {
        return Some("EF");
    }
    if dscp % 8 == 0 {
        return CS.get(usize::from(dscp / 8)).copied();
    }
    let class = dscp / 8;
    let rest = dscp % 8;
    if (1..=4).contains(&class) && rest % 2 == 0 {
        let drop_precedence = rest / 2;
        return AF
            .get(usize::from(class - 1))
            .and_then(|row| row.get(usize::from(drop_precedence).checked_sub(1)?))
            .copied();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(parse_dscp("EF"), Ok(46));
        assert_eq!(parse_dscp("ef"), Ok(46));
        assert_eq!(parse_dscp("CS0"), Ok(0));
        assert_eq!(parse_dscp("CS1"), Ok(8));
        assert_eq!(parse_dscp("cs7"), Ok(56));
        assert_eq!(parse_dscp("AF11"), Ok(10));
        assert_eq!(parse_dscp("AF12"), Ok(12));
        assert_eq!(parse_dscp("AF13"), Ok(14));
        assert_eq!(parse_dscp("AF21"), Ok(18));
        assert_eq!(parse_dscp("AF31"), Ok(26));
        assert_eq!(parse_dscp("AF41"), Ok(34));
        assert_eq!(parse_dscp("AF43"), Ok(38));
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_dscp("0"), Ok(0));
        assert_eq!(parse_dscp("63"), Ok(63));
        assert!(parse_dscp("64").is_err());
        assert!(parse_dscp("256").is_err());
        assert!(parse_dscp("99999999999999999999").is_err());
    }

    #[test]
    fn bad_names() {
        for text in [
            "", "E", "EFF", "CS8", "CS", "CS10", "AF10", "AF14", "AF51", "AF1", "AF111", "AFé1",
            "-1", "BE",
        ] {
            let error = parse_dscp(text).unwrap_err();
            assert!(error.reason().contains("EF, CS0..CS7"), "{text:?}: {error}");
        }
    }

    #[test]
    fn every_name_reads_back() {
        let mut named = 0;
        for dscp in 0..=DSCP_MAX {
            if let Some(name) = dscp_name(dscp) {
                assert_eq!(parse_dscp(name), Ok(dscp), "{name}");
                named += 1;
            }
        }
        // EF, eight class selectors and twelve assured-forwarding codes.
        assert_eq!(named, 1 + 8 + 12);
        assert_eq!(dscp_name(1), None);
        assert_eq!(dscp_name(64), None);
    }
}
