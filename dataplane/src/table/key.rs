//! Table keys: 128-bit keyed fingerprints of (tenant, resource).

use siphasher::sip128::{Hasher128, SipHasher13};
use std::hash::Hasher;

/// A table key: the tenant index in the top 16 bits, then SipHash-1-3
/// (128-bit) of the tenant index and the resource name under the table's
/// secret key, with the two low bits reserved for the slot kind.
///
/// The fingerprint stands in for the name. Keys of different tenants never
/// collide (their top bits differ); two resources of one tenant collide
/// with probability about 2^-110 per pair, and because the hash key is
/// random per process and never leaves it, a client cannot search for
/// collisions offline. The tenant bits let the table count each tenant's
/// leases ([`LeaseKey::tenant`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseKey(u128);

impl LeaseKey {
    /// The fingerprint without kind bits.
    #[must_use]
    pub fn hash(self) -> u128 {
        self.0
    }

    /// A key with an explicit fingerprint (tests that need collisions).
    #[must_use]
    pub fn from_raw(hash: u128) -> LeaseKey {
        LeaseKey(hash & !0b11)
    }

    /// The tenant index this key belongs to (keys built by
    /// [`KeyHasher::key`]; raw test keys belong to tenant 0 unless their
    /// top bits say otherwise).
    #[must_use]
    pub fn tenant(self) -> u32 {
        (self.0 >> TENANT_SHIFT) as u32
    }

    pub(crate) fn from_word(word: u128) -> LeaseKey {
        LeaseKey::from_raw(word)
    }

    pub(crate) fn word(self, kind: u128) -> u128 {
        self.0 | kind
    }
}

/// Where the tenant index sits in a key: its top 16 bits (a config lists at
/// most 65 536 tenants).
const TENANT_SHIFT: u32 = 112;

/// Turns (tenant, resource) into [`LeaseKey`]s under a secret 128-bit key.
#[derive(Clone)]
pub struct KeyHasher {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHasher { .. }")
    }
}

impl KeyHasher {
    /// A hasher with the given secret key. Servers pass 16 random bytes.
    #[must_use]
    pub fn new(secret: [u8; 16]) -> KeyHasher {
        let mut k0 = [0u8; 8];
        let mut k1 = [0u8; 8];
        k0.copy_from_slice(&secret[..8]);
        k1.copy_from_slice(&secret[8..]);
        KeyHasher {
            k0: u64::from_le_bytes(k0),
            k1: u64::from_le_bytes(k1),
        }
    }

    /// The key for `resource` of tenant number `tenant`. The tenant is part
    /// of the hashed input and fills the key's top bits, so tenants never
    /// share a key (S5).
    ///
    /// # Panics
    ///
    /// If `tenant` does not fit in 16 bits (config validation bounds the
    /// tenant count).
    #[must_use]
    pub fn key(&self, tenant: u32, resource: &[u8]) -> LeaseKey {
        assert!(tenant <= u32::from(u16::MAX), "tenant index fits 16 bits");
        let mut hasher = SipHasher13::new_with_keys(self.k0, self.k1);
        // The tenant prefix has a fixed width, so (tenant, resource) splits
        // unambiguously.
        hasher.write(&tenant.to_le_bytes());
        hasher.write(resource);
        let fingerprint = hasher.finish128().as_u128() & ((1u128 << TENANT_SHIFT) - 1);
        LeaseKey::from_raw(fingerprint | (u128::from(tenant) << TENANT_SHIFT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_and_names_separate_keys() {
        let hasher = KeyHasher::new([1; 16]);
        let a = hasher.key(0, b"disk0");
        assert_eq!(a, hasher.key(0, b"disk0"));
        assert_ne!(a, hasher.key(1, b"disk0"));
        assert_ne!(a, hasher.key(0, b"disk1"));
        assert_eq!(a.hash() & 0b11, 0);
        assert_eq!(a.tenant(), 0);
        assert_eq!(hasher.key(65_535, b"disk0").tenant(), 65_535);
    }

    #[test]
    fn secret_changes_keys() {
        let a = KeyHasher::new([1; 16]).key(0, b"disk0");
        let b = KeyHasher::new([2; 16]).key(0, b"disk0");
        assert_ne!(a, b);
    }
}
