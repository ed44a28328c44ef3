//! Tenant credential proofs (SCRAM-SHA-256 style), pure functions.
//!
//! The server stores, per tenant, `salt`, `iterations`, `StoredKey` and
//! `ServerKey` — never the secret. At the handshake the client proves it
//! knows the secret without sending it, bound to both sides' nonces:
//!
//! ```text
//! SaltedSecret    = PBKDF2-HMAC-SHA256(secret, salt, iterations)
//! ClientKey       = HMAC(SaltedSecret, "Client Key")
//! StoredKey       = SHA256(ClientKey)
//! ServerKey       = HMAC(SaltedSecret, "Server Key")
//! AuthMessage     = "palisade-auth-v1" | tenant | client_nonce | server_nonce | salt | iterations
//! ClientProof     = ClientKey XOR HMAC(StoredKey, AuthMessage)
//! ServerSignature = HMAC(ServerKey, AuthMessage)
//! ```
//!
//! The server recovers `ClientKey` from the proof and checks that its hash is
//! `StoredKey`; a copy of the server's stored values is not enough to build a
//! proof. The server's signature lets the client check it talks to a server
//! that holds the tenant's record.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The fewest PBKDF2 iterations a credential may have (RFC 7677 asks for
/// at least 4096). The config loader refuses fewer.
pub const ITERATIONS_MIN: u32 = 4096;
/// The most PBKDF2 iterations a credential may have; more would let one
/// handshake stall a core for seconds. A client refuses a challenge that
/// asks for more, so a hostile endpoint cannot make it burn a core.
pub const ITERATIONS_MAX: u32 = 10_000_000;

/// What a server keeps for one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCredential {
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// PBKDF2 salt.
    pub salt: Vec<u8>,
    /// `SHA256(ClientKey)`.
    pub stored_key: [u8; 32],
    /// `HMAC(SaltedSecret, "Server Key")`.
    pub server_key: [u8; 32],
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn salted_secret(secret: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(secret, salt, iterations, &mut out);
    out
}

fn client_key(salted: &[u8; 32]) -> [u8; 32] {
    hmac(salted, &[b"Client Key"])
}

/// Derives the record a server stores from a tenant secret.
#[must_use]
pub fn derive_stored(secret: &[u8], salt: &[u8], iterations: u32) -> StoredCredential {
    let salted = salted_secret(secret, salt, iterations);
    let stored_key: [u8; 32] = Sha256::digest(client_key(&salted)).into();
    StoredCredential {
        iterations,
        salt: salt.to_vec(),
        stored_key,
        server_key: hmac(&salted, &[b"Server Key"]),
    }
}

/// The bytes both sides sign. Fields are length-prefixed so no two
/// different inputs produce the same message.
#[must_use]
pub fn auth_message(
    tenant: &str,
    client_nonce: &[u8],
    server_nonce: &[u8],
    salt: &[u8],
    iterations: u32,
) -> Vec<u8> {
    let mut msg = Vec::with_capacity(64 + tenant.len() + salt.len());
    msg.extend_from_slice(b"palisade-auth-v1");
    for part in [tenant.as_bytes(), client_nonce, server_nonce, salt] {
        msg.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_le_bytes());
        msg.extend_from_slice(part);
    }
    msg.extend_from_slice(&iterations.to_le_bytes());
    msg
}

/// Client side: the proof to send in `Request::Auth`, and the server
/// signature to expect in `Welcome`.
#[must_use]
pub fn client_proof(
    secret: &[u8],
    salt: &[u8],
    iterations: u32,
    auth_message: &[u8],
) -> ([u8; 32], [u8; 32]) {
    let salted = salted_secret(secret, salt, iterations);
    let ck = client_key(&salted);
    let stored_key: [u8; 32] = Sha256::digest(ck).into();
    let signature = hmac(&stored_key, &[auth_message]);
    let mut proof = [0u8; 32];
    for (i, byte) in proof.iter_mut().enumerate() {
        *byte = ck[i] ^ signature[i];
    }
    let server_key = hmac(&salted, &[b"Server Key"]);
    (proof, hmac(&server_key, &[auth_message]))
}

/// Server side: checks a client proof against the stored record, in
/// constant time. Returns the server signature to send on success.
#[must_use]
pub fn verify_proof(
    stored: &StoredCredential,
    auth_message: &[u8],
    proof: &[u8; 32],
) -> Option<[u8; 32]> {
    let signature = hmac(&stored.stored_key, &[auth_message]);
    let mut ck = [0u8; 32];
    for (i, byte) in ck.iter_mut().enumerate() {
        *byte = proof[i] ^ signature[i];
    }
    let candidate: [u8; 32] = Sha256::digest(ck).into();
    if constant_time_eq(&candidate, &stored.stored_key) {
        Some(hmac(&stored.server_key, &[auth_message]))
    } else {
        None
    }
}

/// Compares two equal-length byte strings without an early exit.
#[must_use]
pub fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for i in 0..32 {
        diff |= a[i] ^ b[i];
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALT: &[u8] = b"0123456789abcdef";

    #[test]
    fn right_secret_verifies_both_ways() {
        let stored = derive_stored(b"hunter2", SALT, 4096);
        let msg = auth_message("billing", &[1; 16], &[2; 16], SALT, 4096);
        let (proof, expected_sig) = client_proof(b"hunter2", SALT, 4096, &msg);
        let sig = verify_proof(&stored, &msg, &proof).expect("proof verifies");
        assert_eq!(sig, expected_sig);
    }

    #[test]
    fn wrong_secret_or_replayed_nonce_fails() {
        let stored = derive_stored(b"hunter2", SALT, 4096);
        let msg = auth_message("billing", &[1; 16], &[2; 16], SALT, 4096);
        let (bad, _) = client_proof(b"hunter3", SALT, 4096, &msg);
        assert!(verify_proof(&stored, &msg, &bad).is_none());
        // A proof made for one server nonce does not verify under another.
        let (proof, _) = client_proof(b"hunter2", SALT, 4096, &msg);
        let other = auth_message("billing", &[1; 16], &[3; 16], SALT, 4096);
        assert!(verify_proof(&stored, &other, &proof).is_none());
    }

    #[test]
    fn stored_record_alone_cannot_authenticate() {
        // Someone who stole StoredKey and tries it as the client key fails.
        let stored = derive_stored(b"hunter2", SALT, 4096);
        let msg = auth_message("billing", &[1; 16], &[2; 16], SALT, 4096);
        let signature = hmac(&stored.stored_key, &[&msg]);
        let mut forged = [0u8; 32];
        for (i, byte) in forged.iter_mut().enumerate() {
            *byte = stored.stored_key[i] ^ signature[i];
        }
        assert!(verify_proof(&stored, &msg, &forged).is_none());
    }

    #[test]
    fn auth_message_fields_are_unambiguous() {
        let a = auth_message("ab", b"c", b"", b"", 1);
        let b = auth_message("a", b"bc", b"", b"", 1);
        assert_ne!(a, b);
    }
}
