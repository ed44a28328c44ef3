//! Tenant credentials: the server side of a SCRAM-SHA-256 secret.
//!
//! The config holds only the salted verifier (RFC 5802 `StoredKey` and
//! `ServerKey`), never the password, so a leaked config file does not let
//! anyone log in. `palisade tenant-credential` makes the text form.

use std::fmt::Write as _;

use crate::ValueError;

/// The text form starts with this scheme name.
const SCHEME: &str = "scram-sha256";

/// A credential verifier for one tenant.
///
/// Text form:
/// `scram-sha256$<iterations>$<salt hex>$<stored_key hex>$<server_key hex>`,
/// where both keys are 64 hex digits (32 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantCredential {
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// PBKDF2 salt.
    pub salt: Vec<u8>,
    /// `H(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; 32],
}

impl TenantCredential {
    /// The fewest PBKDF2 iterations [`check`](Self::check) accepts (RFC 7677
    /// asks for at least 4096).
    pub const ITERATIONS_MIN: u32 = palisade_proto::auth::ITERATIONS_MIN;
    /// The most PBKDF2 iterations [`check`](Self::check) accepts; more would
    /// let one handshake stall a core for seconds.
    pub const ITERATIONS_MAX: u32 = palisade_proto::auth::ITERATIONS_MAX;
    /// The shortest salt [`check`](Self::check) accepts, in bytes.
    pub const SALT_BYTES_MIN: usize = 16;
    /// The longest salt [`check`](Self::check) accepts, in bytes.
    pub const SALT_BYTES_MAX: usize = 64;

    /// Parses the text form.
    ///
    /// Checks the format only: scheme, field count, a decimal iteration
    /// count, a non-empty hex salt and two 32-byte hex keys (hex in either
    /// case). Call [`check`](Self::check) for the strength policy; the config
    /// loader calls both.
    ///
    /// # Errors
    ///
    /// [`ValueError::Credential`], its message naming the bad field. It
    /// never echoes the keys.
    pub fn parse(text: &str) -> Result<Self, ValueError> {
        let fields: Vec<&str> = text.trim().split('$').collect();
        let [scheme, iterations, salt, stored_key, server_key] = fields.as_slice() else {
            return Err(ValueError::Credential(format!(
                "expected 5 fields separated by '$' \
                 (\"{SCHEME}$<iterations>$<salt hex>$<stored_key hex>$<server_key hex>\"), \
                 got {}",
                fields.len()
            )));
        };
        if *scheme != SCHEME {
            return Err(ValueError::Credential(format!(
                "unknown credential scheme {scheme:?}; expected \"{SCHEME}\""
            )));
        }
        let all_digits = !iterations.is_empty() && iterations.bytes().all(|b| b.is_ascii_digit());
        let iterations = all_digits
            .then(|| iterations.parse::<u32>().ok())
            .flatten()
            .ok_or_else(|| {
                ValueError::Credential(format!(
                    "iterations {iterations:?} is not a whole number from 0 to {}",
                    u32::MAX
                ))
            })?;
        let salt =
            decode_hex(salt).map_err(|why| ValueError::Credential(format!("salt: {why}")))?;
        if salt.is_empty() {
            return Err(ValueError::Credential("salt is empty".to_owned()));
        }
        let stored_key = decode_key(stored_key)
            .map_err(|why| ValueError::Credential(format!("stored_key: {why}")))?;
        let server_key = decode_key(server_key)
            .map_err(|why| ValueError::Credential(format!("server_key: {why}")))?;
        Ok(Self {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }

    /// Renders the text form that [`parse`](Self::parse) reads back; hex is
    /// lower case.
    #[must_use]
    pub fn to_text(&self) -> String {
        format!(
            "{SCHEME}${}${}${}${}",
            self.iterations,
            encode_hex(&self.salt),
            encode_hex(&self.stored_key),
            encode_hex(&self.server_key)
        )
    }

    /// Checks the strength policy: iterations within
    /// [`ITERATIONS_MIN`](Self::ITERATIONS_MIN)..=[`ITERATIONS_MAX`](Self::ITERATIONS_MAX)
    /// and a salt of
    /// [`SALT_BYTES_MIN`](Self::SALT_BYTES_MIN)..=[`SALT_BYTES_MAX`](Self::SALT_BYTES_MAX)
    /// bytes. Call it on any credential built by hand before using it.
    ///
    /// # Errors
    ///
    /// [`ValueError::Credential`] with every policy violation, joined with
    /// `"; "`.
    pub fn check(&self) -> Result<(), ValueError> {
        let mut problems = Vec::new();
        if !(Self::ITERATIONS_MIN..=Self::ITERATIONS_MAX).contains(&self.iterations) {
            problems.push(format!(
                "iterations must be between {} and {}, got {}",
                Self::ITERATIONS_MIN,
                Self::ITERATIONS_MAX,
                self.iterations
            ));
        }
        if !(Self::SALT_BYTES_MIN..=Self::SALT_BYTES_MAX).contains(&self.salt.len()) {
            problems.push(format!(
                "salt must be {} to {} bytes, got {}",
                Self::SALT_BYTES_MIN,
                Self::SALT_BYTES_MAX,
                self.salt.len()
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ValueError::Credential(problems.join("; ")))
        }
    }
}

/// Decodes exactly 64 hex digits.
fn decode_key(text: &str) -> Result<[u8; 32], String> {
    if text.is_ascii() && text.len() != 64 {
        return Err(format!("expected 64 hex digits, got {}", text.len()));
    }
    let bytes = decode_hex(text)?;
    if bytes.len() != 32 {
        return Err(format!("expected 64 hex digits, got {}", 2 * bytes.len()));
    }
    Ok(bytes.try_into().expect("64 hex digits decode to 32 bytes"))
}

/// Decodes hex digits in either case.
fn decode_hex(text: &str) -> Result<Vec<u8>, String> {
    if !text.is_ascii() {
        return Err("not hex: contains non-ASCII characters".to_owned());
    }
    if text.len() % 2 != 0 {
        return Err(format!("odd number of hex digits ({})", text.len()));
    }
    text.as_bytes()
        .chunks_exact(2)
        .enumerate()
        .map(|(index, pair)| {
            let high = hex_value(pair[0]);
            let low = hex_value(pair[1]);
            match (high, low) {
                (Some(high), Some(low)) => Ok(high << 4 | low),
                _ => Err(format!(
                    "not hex at character {}",
                    2 * index + usize::from(high.is_some())
                )),
            }
        })
        .collect()
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

fn encode_hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        write!(text, "{byte:02x}").expect("writing to a String cannot fail");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> TenantCredential {
        TenantCredential {
            iterations: 4096,
            salt: (0u8..16).collect(),
            stored_key: [0xab; 32],
            server_key: [0x01; 32],
        }
    }

    #[test]
    fn round_trip() {
        let credential = sample();
        let text = credential.to_text();
        assert_eq!(
            text,
            format!(
                "scram-sha256$4096$000102030405060708090a0b0c0d0e0f${}${}",
                "ab".repeat(32),
                "01".repeat(32)
            )
        );
        assert_eq!(TenantCredential::parse(&text), Ok(credential.clone()));
        assert_eq!(
            TenantCredential::parse(&text.to_uppercase().replace("SCRAM-SHA256", "scram-sha256")),
            Ok(credential)
        );
    }

    #[test]
    fn bad_inputs() {
        let key = "ab".repeat(32);
        let salt = "00".repeat(16);
        let cases = [
            (String::new(), "5 fields"),
            ("scram-sha256$4096".to_owned(), "got 2"),
            (format!("scram-sha1$4096${salt}${key}${key}"), "scheme"),
            (format!("scram-sha256$-1${salt}${key}${key}"), "iterations"),
            (format!("scram-sha256$${salt}${key}${key}"), "iterations"),
            (
                format!("scram-sha256$4294967296${salt}${key}${key}"),
                "iterations",
            ),
            (format!("scram-sha256$4096$${key}${key}"), "salt is empty"),
            (format!("scram-sha256$4096$abc${key}${key}"), "odd number"),
            (
                format!("scram-sha256$4096$zz${key}${key}"),
                "not hex at character 0",
            ),
            (
                format!("scram-sha256$4096$0z${key}${key}"),
                "not hex at character 1",
            ),
            (format!("scram-sha256$4096$é0${key}${key}"), "non-ASCII"),
            (
                format!("scram-sha256$4096${salt}$abcd${key}"),
                "stored_key: expected 64",
            ),
            (
                format!("scram-sha256$4096${salt}${key}${}", "g".repeat(64)),
                "server_key: not hex",
            ),
            (
                format!("scram-sha256$4096${salt}${key}${key}$extra"),
                "got 6",
            ),
        ];
        for (text, expected) in cases {
            let error = TenantCredential::parse(&text).unwrap_err();
            assert!(error.reason().contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn policy() {
        assert_eq!(sample().check(), Ok(()));
        let mut weak = sample();
        weak.iterations = 4095;
        assert!(weak.check().unwrap_err().reason().contains("iterations"));
        weak.iterations = 10_000_000;
        assert_eq!(weak.check(), Ok(()));
        weak.iterations = 10_000_001;
        assert!(weak.check().is_err());
        weak.iterations = 4096;
        weak.salt = vec![0; 15];
        assert!(weak.check().unwrap_err().reason().contains("salt"));
        weak.salt = vec![0; 64];
        assert_eq!(weak.check(), Ok(()));
        weak.salt = vec![0; 65];
        weak.iterations = 1;
        let both = weak.check().unwrap_err();
        assert!(
            both.reason().contains("iterations") && both.reason().contains("salt"),
            "{both}"
        );
    }

    proptest! {
        #[test]
        fn to_text_then_parse_is_identity(
            iterations in any::<u32>(),
            salt in proptest::collection::vec(any::<u8>(), 1..80),
            stored_key in any::<[u8; 32]>(),
            server_key in any::<[u8; 32]>(),
        ) {
            let credential = TenantCredential { iterations, salt, stored_key, server_key };
            prop_assert_eq!(TenantCredential::parse(&credential.to_text()), Ok(credential));
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,200}") {
            let _ = TenantCredential::parse(&text);
        }
    }
}
