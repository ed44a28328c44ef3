//! Replicated lease state, sans-IO: the commands a leader puts into the
//! raft log ([`Command`], encoded a batch per entry by [`encode_batch`]),
//! and the state machine every node applies them to ([`LeaseState`]).
//!
//! With `leases.replication = "quorum"` a grant or release is answered
//! only once the raft entry that carries it is committed. Renewals and
//! checks never touch the log. Every node applies committed commands in log
//! order; a node that becomes leader installs the state it holds into its
//! lease table, re-armed conservatively (see `control::consensus`), so a live
//! holder keeps its token and renews there.
//!
//! Commands name resources by tenant and resource *name*: the table's keys
//! are fingerprints under a per-process secret hash key, which differ from
//! node to node.
//!
//! Applying is order-tolerant by token: a grant replaces the record only
//! with a token at least as high, a release or expiry removes it only when
//! the token matches. Two cores of the leader may enqueue the release of T
//! and the grant of a later T' in either order; both orders end with T'.
//!
//! Batch encoding (little-endian), one per raft entry:
//!
//! ```text
//! batch    = version: u8 (1) | group: u32 | count: u32 | command*
//! command  = kind: u8 | tenant_len: u8 | tenant | resource_len: u16 | resource | token: u64 | body
//! body     = Grant (1): holder: u64 | ttl_ms: u32 | lock_delay_ms: u32
//!            Release (2), Expire (3), Renewed (4): empty
//!            Replication (5): empty names, token 1 (on) or 0 (off)
//! ```
//!
//! Snapshot encoding (the state machine, carried in raft snapshots):
//!
//! ```text
//! snapshot = version: u8 (1) | group: u32 | replicated_since: u64 (0 = no)
//!            | count: u64 | record*
//! record   = tenant_len: u8 | tenant | resource_len: u16 | resource | token: u64
//!            | holder: u64 | ttl_ms: u32 | lock_delay_ms: u32 | served_term: u64
//! ```

use imbl::OrdMap;
use palisade_proto::{RESOURCE_LEN_MAX, TENANT_LEN_MAX};

/// Encoding version of batches and snapshots.
const VERSION: u8 = 1;

/// Bytes a snapshot's state takes before its records.
const SNAPSHOT_HEADER_LEN: usize = 1 + 4 + 8 + 8;

/// Longest snapshot record: a lease with the longest tenant and resource
/// names (355 bytes).
pub const SNAPSHOT_RECORD_LEN_MAX: usize =
    1 + TENANT_LEN_MAX + 2 + RESOURCE_LEN_MAX + 8 + 8 + 4 + 4 + 8;

/// Largest encoded lease state a snapshot carries (512 MiB). The raft
/// log's record limit and the peer links' frame limit are sized from it,
/// and `leases.table_capacity` is bounded with replication on
/// (`palisade_tuning::TABLE_CAPACITY_REPLICATED_MAX`) so that a full table
/// of the longest names fits: [`LeaseState::encoded_len_max`].
pub const LEASE_STATE_LEN_MAX: usize = 512 << 20;

/// The only raft group today. Every frame carries a group; scale-out adds
/// groups (resources hashed onto them), each with its own [`LeaseState`].
pub const GROUP_DEFAULT: u32 = 0;

/// A lease's name: the tenant it belongs to (S5) and the resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseName {
    /// Tenant name, as configured in `[[tenants]]`.
    pub tenant: String,
    /// Resource name.
    pub resource: String,
}

impl LeaseName {
    /// The lease `resource` of `tenant`.
    #[must_use]
    pub fn new(tenant: impl Into<String>, resource: impl Into<String>) -> LeaseName {
        LeaseName {
            tenant: tenant.into(),
            resource: resource.into(),
        }
    }
}

/// One change to the replicated lease state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `token` was granted to `holder` (or re-granted to the same holder
    /// with a new ttl).
    Grant {
        /// The lease.
        name: LeaseName,
        /// Its fencing token.
        token: u64,
        /// The holder id that received it.
        holder: u64,
        /// Lease duration; renewals may not exceed it.
        ttl_ms: u32,
        /// Ungrantable time after an unreleased expiry.
        lock_delay_ms: u32,
    },
    /// The holder of `token` gave it back.
    Release {
        /// The lease.
        name: LeaseName,
        /// Its fencing token.
        token: u64,
    },
    /// The leader saw `token` run out (past its lock delay) unreleased.
    Expire {
        /// The lease.
        name: LeaseName,
        /// Its fencing token.
        token: u64,
    },
    /// A leader served a renewal of `token` in the term of the entry.
    Renewed {
        /// The lease.
        name: LeaseName,
        /// Its fencing token.
        token: u64,
    },
    /// `on`: from here on the log holds every lease that may be live (a
    /// leader with replication writes it once its grace period is over, so
    /// leases granted without replication before it have all run out).
    /// Off: a leader without replication serves from here on, and a later
    /// leader with replication owes the grace period again.
    Replication {
        /// Whether every live lease is in the log from here on.
        on: bool,
    },
}

/// The name a [`Command::Replication`] marker reports: no lease.
static NO_NAME: LeaseName = LeaseName {
    tenant: String::new(),
    resource: String::new(),
};

impl Command {
    /// The lease the command is about (empty names for a marker).
    #[must_use]
    pub fn name(&self) -> &LeaseName {
        match self {
            Command::Grant { name, .. }
            | Command::Release { name, .. }
            | Command::Expire { name, .. }
            | Command::Renewed { name, .. } => name,
            Command::Replication { .. } => &NO_NAME,
        }
    }

    /// The token the command is about (for a marker: 1 on, 0 off).
    #[must_use]
    pub fn token(&self) -> u64 {
        match self {
            Command::Grant { token, .. }
            | Command::Release { token, .. }
            | Command::Expire { token, .. }
            | Command::Renewed { token, .. } => *token,
            Command::Replication { on } => u64::from(*on),
        }
    }

    fn kind(&self) -> u8 {
        match self {
            Command::Grant { .. } => 1,
            Command::Release { .. } => 2,
            Command::Expire { .. } => 3,
            Command::Renewed { .. } => 4,
            Command::Replication { .. } => 5,
        }
    }
}

/// A command a data-plane core asks the control plane to log. `tag` comes
/// back in a [`Notice`] to the core `tag >> TAG_CORE_SHIFT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// Chosen by the proposing core; names its pending answer.
    pub tag: u64,
    /// The epoch the core's table change was made in. The control plane
    /// refuses a proposal of any other epoch (it was made under a
    /// leadership that has ended).
    pub epoch: u32,
    /// What to log.
    pub command: Command,
}

/// Bits of a tag below the proposing core's index.
pub const TAG_CORE_SHIFT: u32 = 48;

/// The tag for the `seq`-th proposal of core `core`.
#[must_use]
pub fn tag(core: usize, seq: u64) -> u64 {
    assert!(
        core < (1 << (64 - TAG_CORE_SHIFT)),
        "core index fits the tag"
    );
    ((core as u64) << TAG_CORE_SHIFT) | (seq & ((1 << TAG_CORE_SHIFT) - 1))
}

/// The core a tag belongs to.
#[must_use]
pub fn tag_core(tag: u64) -> usize {
    (tag >> TAG_CORE_SHIFT) as usize
}

/// What became of proposals: committed (answer now) or never to be
/// committed by this leadership (answer "retry").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notice {
    /// The proposal's tag.
    pub tag: u64,
    /// Committed in the term it was proposed in.
    pub committed: bool,
}

/// A held lease as the replicated state knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// Fencing token.
    pub token: u64,
    /// Holder id that received it.
    pub holder: u64,
    /// Lease duration.
    pub ttl_ms: u32,
    /// Ungrantable time after an unreleased expiry.
    pub lock_delay_ms: u32,
    /// The highest raft term in which a leader is known to have served
    /// this lease (its grant, a re-grant or a committed renewal). Leaders
    /// of later terms served it only if they logged a renewal.
    pub served_term: u64,
}

/// Why bytes from the log or a snapshot could not be read. The log is
/// checksummed, so this means a bug or a version this node cannot read:
/// the node must stop rather than guess.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// An unknown encoding version.
    #[error("lease state encoding version {0} is not supported (this node reads version 1)")]
    Version(u8),
    /// The bytes end early.
    #[error("lease state truncated at byte {0}")]
    Truncated(usize),
    /// An unknown command kind.
    #[error("unknown lease command kind {kind} at byte {at}")]
    Kind {
        /// The kind byte.
        kind: u8,
        /// Where.
        at: usize,
    },
    /// A name that is not UTF-8 or too long.
    #[error("invalid name at byte {0}")]
    Name(usize),
    /// Bytes left after the last command.
    #[error("{0} bytes after the end of the lease state")]
    Trailing(usize),
}

fn put_name(out: &mut Vec<u8>, name: &LeaseName) {
    assert!(name.tenant.len() <= TENANT_LEN_MAX, "tenant validated");
    assert!(
        name.resource.len() <= RESOURCE_LEN_MAX,
        "resource validated"
    );
    out.push(name.tenant.len() as u8);
    out.extend_from_slice(name.tenant.as_bytes());
    out.extend_from_slice(&(name.resource.len() as u16).to_le_bytes());
    out.extend_from_slice(name.resource.as_bytes());
}

/// A cursor over encoded bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(len)
            .ok_or(DecodeError::Truncated(self.at))?;
        let slice = self
            .bytes
            .get(self.at..end)
            .ok_or(DecodeError::Truncated(self.at))?;
        self.at = end;
        Ok(slice)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn text(&mut self, len: usize, max: usize) -> Result<String, DecodeError> {
        let at = self.at;
        if len > max {
            return Err(DecodeError::Name(at));
        }
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::Name(at))
    }
    fn name(&mut self) -> Result<LeaseName, DecodeError> {
        let tenant_len = usize::from(self.u8()?);
        let tenant = self.text(tenant_len, TENANT_LEN_MAX)?;
        let resource_len = usize::from(self.u16()?);
        let resource = self.text(resource_len, RESOURCE_LEN_MAX)?;
        Ok(LeaseName { tenant, resource })
    }
    fn finish(&self) -> Result<(), DecodeError> {
        match self.bytes.len() - self.at {
            0 => Ok(()),
            left => Err(DecodeError::Trailing(left)),
        }
    }
}

/// Encodes one raft entry's worth of commands.
#[must_use]
pub fn encode_batch(group: u32, commands: &[Command]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + commands.len() * 48);
    out.push(VERSION);
    out.extend_from_slice(&group.to_le_bytes());
    let count = u32::try_from(commands.len()).expect("a batch holds fewer than 2^32 commands");
    out.extend_from_slice(&count.to_le_bytes());
    for command in commands {
        out.push(command.kind());
        put_name(&mut out, command.name());
        out.extend_from_slice(&command.token().to_le_bytes());
        if let Command::Grant {
            holder,
            ttl_ms,
            lock_delay_ms,
            ..
        } = command
        {
            out.extend_from_slice(&holder.to_le_bytes());
            out.extend_from_slice(&ttl_ms.to_le_bytes());
            out.extend_from_slice(&lock_delay_ms.to_le_bytes());
        }
    }
    out
}

/// Decodes what [`encode_batch`] wrote: the group and its commands.
pub fn decode_batch(bytes: &[u8]) -> Result<(u32, Vec<Command>), DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    let version = r.u8()?;
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let group = r.u32()?;
    let count = r.u32()?;
    // Each command takes at least 12 bytes: never trust a count to size
    // an allocation beyond what the bytes can hold.
    let mut commands = Vec::with_capacity((count as usize).min(bytes.len() / 12));
    for _ in 0..count {
        let at = r.at;
        let kind = r.u8()?;
        let name = r.name()?;
        let token = r.u64()?;
        commands.push(match kind {
            1 => Command::Grant {
                name,
                token,
                holder: r.u64()?,
                ttl_ms: r.u32()?,
                lock_delay_ms: r.u32()?,
            },
            2 => Command::Release { name, token },
            3 => Command::Expire { name, token },
            4 => Command::Renewed { name, token },
            5 if name == NO_NAME && token <= 1 => Command::Replication { on: token == 1 },
            kind => return Err(DecodeError::Kind { kind, at }),
        });
    }
    r.finish()?;
    Ok((group, commands))
}

/// The replicated lease state of one raft group: every lease a committed
/// grant created and no committed release or expiry ended.
///
/// Its map shares structure between clones: a clone costs a reference
/// count, and the clone and the original each copy only the tree nodes on
/// the path they change afterwards. So the control thread hands a frozen
/// copy to the thread that encodes a compaction's snapshot and goes on
/// applying meanwhile (`control::node`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseState {
    leases: OrdMap<LeaseName, Record>,
    /// The term of the committed `Replication { on: true }` marker, if no
    /// `off` marker followed it: every lease that may be live is here.
    replicated_since: Option<u64>,
}

impl LeaseState {
    /// An empty state.
    #[must_use]
    pub fn new() -> LeaseState {
        LeaseState::default()
    }

    /// Applies one committed command, found in an entry of raft term
    /// `term`. Order-tolerant by token (see the module doc).
    pub fn apply(&mut self, command: &Command, term: u64) {
        match command {
            Command::Grant {
                name,
                token,
                holder,
                ttl_ms,
                lock_delay_ms,
            } => {
                let record = Record {
                    token: *token,
                    holder: *holder,
                    ttl_ms: *ttl_ms,
                    lock_delay_ms: *lock_delay_ms,
                    served_term: term,
                };
                match self.leases.get_mut(name) {
                    Some(existing) if existing.token > *token => {}
                    Some(existing) => {
                        let served_term = if existing.token == *token {
                            existing.served_term.max(term)
                        } else {
                            term
                        };
                        *existing = Record {
                            served_term,
                            ..record
                        };
                    }
                    None => {
                        self.leases.insert(name.clone(), record);
                    }
                }
            }
            Command::Release { name, token } | Command::Expire { name, token } => {
                if self.leases.get(name).is_some_and(|r| r.token == *token) {
                    self.leases.remove(name);
                }
            }
            Command::Renewed { name, token } => {
                if let Some(record) = self.leases.get_mut(name) {
                    if record.token == *token {
                        record.served_term = record.served_term.max(term);
                    }
                }
            }
            Command::Replication { on } => {
                self.replicated_since = on.then_some(term);
            }
        }
    }

    /// The term since which every lease that may be live is in this state
    /// (`None`: a leader without replication may have granted leases the
    /// log does not hold, so a new leader owes the grace period).
    #[must_use]
    pub fn replicated_since(&self) -> Option<u64> {
        self.replicated_since
    }

    /// The record of `name`, if held.
    #[must_use]
    pub fn get(&self, name: &LeaseName) -> Option<&Record> {
        self.leases.get(name)
    }

    /// Leases held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// No lease is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Every held lease, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&LeaseName, &Record)> {
        self.leases.iter()
    }

    /// The records by name, as a map of their own: a new leader keeps the
    /// state it took over as the names `List` reports until their holders
    /// renew them ([`crate::names::AdoptedNames`]).
    #[must_use]
    pub fn into_records(self) -> OrdMap<LeaseName, Record> {
        self.leases
    }

    /// Leases after `after` in name order, at most `limit` (a cursor walk
    /// that never holds the whole state).
    pub fn range_after<'a>(
        &'a self,
        after: Option<&LeaseName>,
        limit: usize,
    ) -> impl Iterator<Item = (&'a LeaseName, &'a Record)> + 'a {
        use std::ops::Bound;
        let start = match after {
            Some(name) => Bound::Excluded(name.clone()),
            None => Bound::Unbounded,
        };
        self.leases.range((start, Bound::Unbounded)).take(limit)
    }

    /// Encoded size of a state of `leases` leases, all with the longest
    /// names: an upper bound on [`LeaseState::encode`]'s length.
    #[must_use]
    pub const fn encoded_len_max(leases: usize) -> usize {
        SNAPSHOT_HEADER_LEN + leases * SNAPSHOT_RECORD_LEN_MAX
    }

    /// The state as snapshot bytes.
    #[must_use]
    pub fn encode(&self, group: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(13 + self.leases.len() * 64);
        out.push(VERSION);
        out.extend_from_slice(&group.to_le_bytes());
        out.extend_from_slice(&self.replicated_since.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&(self.leases.len() as u64).to_le_bytes());
        for (name, record) in &self.leases {
            put_name(&mut out, name);
            out.extend_from_slice(&record.token.to_le_bytes());
            out.extend_from_slice(&record.holder.to_le_bytes());
            out.extend_from_slice(&record.ttl_ms.to_le_bytes());
            out.extend_from_slice(&record.lock_delay_ms.to_le_bytes());
            out.extend_from_slice(&record.served_term.to_le_bytes());
        }
        out
    }

    /// Reads snapshot bytes. Empty bytes are the empty state (a snapshot
    /// of a version that replicated no leases).
    pub fn decode(bytes: &[u8]) -> Result<(u32, LeaseState), DecodeError> {
        if bytes.is_empty() {
            return Ok((GROUP_DEFAULT, LeaseState::new()));
        }
        let mut r = Reader { bytes, at: 0 };
        let version = r.u8()?;
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let group = r.u32()?;
        let replicated_since = Some(r.u64()?).filter(|&term| term != 0);
        let count = r.u64()?;
        let mut leases = OrdMap::new();
        for _ in 0..count {
            let name = r.name()?;
            let record = Record {
                token: r.u64()?,
                holder: r.u64()?,
                ttl_ms: r.u32()?,
                lock_delay_ms: r.u32()?,
                served_term: r.u64()?,
            };
            leases.insert(name, record);
        }
        r.finish()?;
        Ok((
            group,
            LeaseState {
                leases,
                replicated_since,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(resource: &str) -> LeaseName {
        LeaseName::new("default", resource)
    }

    fn grant(resource: &str, token: u64, ttl_ms: u32) -> Command {
        Command::Grant {
            name: name(resource),
            token,
            holder: 7,
            ttl_ms,
            lock_delay_ms: 3,
        }
    }

    #[test]
    fn batches_round_trip_and_reject_damage() {
        let commands = vec![
            grant("disk0", 1 << 32 | 1, 10_000),
            Command::Release {
                name: name("disk0"),
                token: 1 << 32 | 1,
            },
            Command::Expire {
                name: LeaseName {
                    tenant: "billing".into(),
                    resource: "x".repeat(RESOURCE_LEN_MAX),
                },
                token: 9,
            },
            Command::Renewed {
                name: name("é"),
                token: 4,
            },
            Command::Replication { on: true },
            Command::Replication { on: false },
        ];
        let bytes = encode_batch(0, &commands);
        assert_eq!(decode_batch(&bytes), Ok((0, commands.clone())));
        assert_eq!(decode_batch(&encode_batch(3, &[])), Ok((3, vec![])));
        // Every truncation is an error, never a panic or a shorter batch.
        for len in 0..bytes.len() {
            assert!(decode_batch(&bytes[..len]).is_err(), "cut at {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode_batch(&longer), Err(DecodeError::Trailing(1)));
        let mut bad = bytes.clone();
        bad[0] = 2;
        assert_eq!(decode_batch(&bad), Err(DecodeError::Version(2)));
        let mut bad = bytes;
        bad[9] = 77;
        assert_eq!(
            decode_batch(&bad),
            Err(DecodeError::Kind { kind: 77, at: 9 })
        );
        // A huge count with no bytes behind it does not allocate for it.
        let mut huge = vec![VERSION, 0, 0, 0, 0];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_batch(&huge), Err(DecodeError::Truncated(9)));
    }

    #[test]
    fn apply_is_order_tolerant_by_token() {
        let t1 = 1 << 32 | 1;
        let t2 = 1 << 32 | 2;
        let release = Command::Release {
            name: name("r"),
            token: t1,
        };
        // Release of T1 and grant of T2 arrive in either order.
        for order in [
            vec![grant("r", t1, 100), release.clone(), grant("r", t2, 200)],
            vec![grant("r", t1, 100), grant("r", t2, 200), release.clone()],
            vec![grant("r", t2, 200), grant("r", t1, 100), release.clone()],
        ] {
            let mut state = LeaseState::new();
            for command in &order {
                state.apply(command, 1);
            }
            assert_eq!(
                state.get(&name("r")).map(|r| (r.token, r.ttl_ms)),
                Some((t2, 200))
            );
        }
        // A re-grant of the same token updates ttl and the serving term.
        let mut state = LeaseState::new();
        state.apply(&grant("r", t1, 100), 1);
        state.apply(&grant("r", t1, 300), 4);
        assert_eq!(
            state.get(&name("r")),
            Some(&Record {
                token: t1,
                holder: 7,
                ttl_ms: 300,
                lock_delay_ms: 3,
                served_term: 4
            })
        );
        // A renewal logged in a later term moves only the serving term;
        // one of another token changes nothing.
        state.apply(
            &Command::Renewed {
                name: name("r"),
                token: t1,
            },
            6,
        );
        state.apply(
            &Command::Renewed {
                name: name("r"),
                token: t2,
            },
            9,
        );
        assert_eq!(state.get(&name("r")).map(|r| r.served_term), Some(6));
        // Expiry of another token leaves it; of its own token removes it.
        state.apply(
            &Command::Expire {
                name: name("r"),
                token: t2,
            },
            6,
        );
        assert_eq!(state.len(), 1);
        state.apply(
            &Command::Expire {
                name: name("r"),
                token: t1,
            },
            6,
        );
        assert!(state.is_empty());
    }

    #[test]
    fn markers_switch_the_replicated_since_term() {
        let mut state = LeaseState::new();
        state.apply(&Command::Replication { on: true }, 4);
        assert_eq!(state.replicated_since(), Some(4));
        state.apply(&Command::Replication { on: false }, 6);
        assert_eq!(state.replicated_since(), None);
        let round = LeaseState::decode(&state.encode(0)).expect("decodes").1;
        assert_eq!(round.replicated_since(), None);
        // A marker with a name is damage, not a marker.
        let mut bytes = encode_batch(0, &[Command::Replication { on: true }]);
        bytes[10] = 1;
        assert!(decode_batch(&bytes).is_err());
    }

    #[test]
    fn a_clone_stays_as_it_was_while_the_original_changes() {
        let mut state = LeaseState::new();
        for i in 0..2_000u64 {
            state.apply(&grant(&format!("r{i}"), 1 << 32 | i, 1_000), 1);
        }
        let frozen = state.clone();
        let encoded = frozen.encode(GROUP_DEFAULT);
        // Changes in many tree nodes of the original: new names, a newer
        // token, releases.
        for i in 0..2_000u64 {
            match i % 3 {
                0 => state.apply(&grant(&format!("r{i}"), 2 << 32 | i, 5_000), 2),
                1 => state.apply(
                    &Command::Release {
                        name: name(&format!("r{i}")),
                        token: 1 << 32 | i,
                    },
                    2,
                ),
                _ => state.apply(&grant(&format!("new{i}"), 2 << 32 | i, 5_000), 2),
            }
        }
        assert_eq!(frozen.encode(GROUP_DEFAULT), encoded);
        assert_eq!(frozen.len(), 2_000);
        assert_eq!(frozen.get(&name("r0")).map(|r| r.token), Some(1 << 32));
        assert_eq!(state.get(&name("r0")).map(|r| r.token), Some(2 << 32));
        assert!(state.get(&name("r1")).is_none());
        assert_eq!(state.len(), 2_000 - 667 + 666);
        // And the other way round.
        let mut thawed = frozen.clone();
        thawed.apply(
            &Command::Release {
                name: name("r0"),
                token: 1 << 32,
            },
            3,
        );
        assert_eq!(frozen.encode(GROUP_DEFAULT), encoded);
        assert_eq!(thawed.len(), 1_999);
    }

    #[test]
    fn snapshots_round_trip_and_page() {
        let mut state = LeaseState::new();
        for i in 0..50u64 {
            state.apply(&grant(&format!("r{i:02}"), 1 << 32 | (i + 1), 1_000), 2);
        }
        assert_eq!(state.replicated_since(), None);
        state.apply(&Command::Replication { on: true }, 3);
        assert_eq!(state.replicated_since(), Some(3));
        let bytes = state.encode(0);
        assert_eq!(LeaseState::decode(&bytes), Ok((0, state.clone())));
        for len in 0..bytes.len() {
            assert!(LeaseState::decode(&bytes[..len]).is_err() || len == 0);
        }
        assert_eq!(LeaseState::decode(&[]), Ok((0, LeaseState::new())));
        let mut seen = Vec::new();
        let mut cursor: Option<LeaseName> = None;
        loop {
            let page: Vec<_> = state
                .range_after(cursor.as_ref(), 7)
                .map(|(n, _)| n.clone())
                .collect();
            if page.is_empty() {
                break;
            }
            cursor = page.last().cloned();
            seen.extend(page);
        }
        assert_eq!(seen.len(), 50);
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn the_encoded_bound_is_reached_by_the_longest_names_and_never_passed() {
        let longest = |i: usize| LeaseName {
            tenant: "t".repeat(TENANT_LEN_MAX),
            resource: format!("{i:0>width$}", width = RESOURCE_LEN_MAX),
        };
        let mut state = LeaseState::new();
        assert_eq!(state.encode(0).len(), LeaseState::encoded_len_max(0));
        for i in 0..3 {
            state.apply(
                &Command::Grant {
                    name: longest(i),
                    token: u64::MAX - i as u64,
                    holder: u64::MAX,
                    ttl_ms: u32::MAX,
                    lock_delay_ms: u32::MAX,
                },
                u64::MAX,
            );
        }
        state.apply(&Command::Replication { on: true }, u64::MAX);
        assert_eq!(state.encode(u32::MAX).len(), LeaseState::encoded_len_max(3));
        state.apply(&grant("short", 1, 1_000), 1);
        assert!(state.encode(0).len() < LeaseState::encoded_len_max(4));
        assert_eq!(
            LeaseState::encoded_len_max(1) - LeaseState::encoded_len_max(0),
            355
        );
    }
}
