//! `List` across the cores: each core keeps the names its connections
//! used ([`NameIndex`]); the connection's core asks every core for one
//! page after the cursor, scans the names a takeover installed
//! ([`names::AdoptedNames`]) for one more, merges the pages
//! ([`names::merge`]) and answers.

use std::collections::HashMap;

use palisade_proto::{validate_resource, ArchivedRequest, Response, HEADER_LEN};

use super::core::Core;
use super::CoreMsg;
use crate::names::{self, Live, NameIndex, Part, NOTE_GRACE_MS};
use crate::service::{Conn, ListRequest, Phase};
use crate::table::{KeyHasher, LeaseKey, LeaseTable};
use crate::waiters::WaitEvent;
use palisade_host::clock::monotonic_ms;

/// Payload bytes of a `Listed` answer besides its leases: the root and the
/// longest cursor, padded.
const LISTED_FIXED_BYTES: usize = 104 + 256 + 16;
/// Largest `Listed` payload sent whatever `limits.frame_payload_max` says:
/// the size clients are sure to accept (the Rust client's 64 KiB).
const LISTED_PAYLOAD_MAX: usize = 1 << 16;

/// A core's `List` state.
#[derive(Debug, Default)]
pub(super) struct Lists {
    /// Made on first use, with the table's key hasher.
    names: Option<NameIndex>,
    /// Pages being gathered on this core, by id.
    gathers: HashMap<u64, Gather>,
    next_id: u64,
}

#[derive(Debug)]
struct Gather {
    request: ListRequest,
    parts: Vec<Part>,
    /// Cores yet to answer.
    waiting: usize,
}

impl Lists {
    fn names(&mut self, hasher: &KeyHasher) -> &mut NameIndex {
        self.names
            .get_or_insert_with(|| NameIndex::new(hasher.clone()))
    }

    /// Starts loading what [`Lists::note_request`] will read for
    /// `request`, whose key is `key` (a hint; nothing for requests it
    /// does not note, or before the first note).
    pub(super) fn prefetch(&self, request: &ArchivedRequest, key: LeaseKey) {
        let noted = matches!(
            request,
            ArchivedRequest::Acquire { .. } | ArchivedRequest::Renew { .. }
        );
        if let (true, Some(names)) = (noted, &self.names) {
            names.prefetch(key);
        }
    }

    /// Names held.
    pub(super) fn len(&self) -> usize {
        self.names.as_ref().map_or(0, NameIndex::len)
    }

    /// Examines up to `step` names and drops those no longer live.
    pub(super) fn prune(&mut self, table: &LeaseTable, now_ms: u64, step: usize) {
        if self.names.is_none() {
            return;
        }
        self.names(table.hasher())
            .prune(now_ms, step, &mut |tenant, name| {
                live(table, tenant, name, now_ms)
            });
    }

    /// Notes the name of an acquire, or of a renewal this core has not
    /// seen, for `List`. Cheap: a map lookup (an insert the first time).
    /// `key` is the request's key if the caller computed it
    /// ([`crate::service::RequestService::lease_key`]: the name is valid).
    pub(super) fn note_request(
        &mut self,
        table: &LeaseTable,
        conn: &Conn,
        request: &ArchivedRequest,
        now_ms: u64,
        key: Option<LeaseKey>,
    ) {
        let Phase::Ready { tenant } = conn.phase else {
            return;
        };
        let (resource, keep_ms, acquire) = match request {
            ArchivedRequest::Acquire {
                resource, wait_ms, ..
            } => (resource.as_str(), u64::from(wait_ms.to_native()), true),
            ArchivedRequest::Renew { resource, .. } => (resource.as_str(), 0, false),
            _ => return,
        };
        let names = self.names(table.hasher());
        let key = match key {
            Some(key) => key,
            None => {
                if validate_resource(resource).is_err() {
                    return;
                }
                table.hasher().key(tenant, resource.as_bytes())
            }
        };
        if !acquire && names.contains_key(key) {
            return;
        }
        names.note_keyed(tenant, resource, key, now_ms + keep_ms + NOTE_GRACE_MS);
    }

    /// This core's part of a page, examining [`names::scan_budget`] names
    /// at most (a bounded piece of work, done in one go).
    fn scan(
        &mut self,
        table: &LeaseTable,
        tenant: u32,
        prefix: &str,
        after: &str,
        limit: u32,
    ) -> Part {
        let now_ms = monotonic_ms();
        let (piece, _) = self.names(table.hasher()).scan(
            tenant,
            names::Scan::new(prefix, after, limit),
            now_ms,
            &mut |name| live(table, tenant, name, now_ms),
        );
        piece
    }
}

/// A page request from another core.
#[derive(Debug)]
pub(super) struct Query {
    id: u64,
    from: usize,
    tenant: u32,
    prefix: String,
    after: String,
    limit: u32,
}

/// What the table says about a name of `tenant` now.
fn live(table: &LeaseTable, tenant: u32, resource: &str, now_ms: u64) -> Option<Live> {
    let key = table.hasher().key(tenant, resource.as_bytes());
    let lease = table.inspect(key)?;
    if !lease.held || lease.expires_at_ms <= now_ms {
        return None;
    }
    Some(Live {
        token: lease.token,
        remaining_ms: u32::try_from(lease.expires_at_ms - now_ms).unwrap_or(u32::MAX),
        waiters: table.peek(key, now_ms).waiters,
    })
}

impl Core {
    /// Starts gathering one page for a connection of this core.
    pub(super) fn list(&mut self, request: ListRequest) {
        self.lists.next_id += 1;
        let id = self.lists.next_id;
        let others: Vec<usize> = (0..self.cores).filter(|&c| c != self.index).collect();
        for &to in &others {
            let query = Query {
                id,
                from: self.index,
                tenant: request.tenant,
                prefix: request.prefix.clone(),
                after: request.after.clone(),
                limit: request.limit,
            };
            self.post(to, CoreMsg::ListQuery(Box::new(query)));
        }
        let part = self.lists.scan(
            &self.shared.table,
            request.tenant,
            &request.prefix,
            &request.after,
            request.limit,
        );
        let adopted = self.adopted_part(&request);
        self.lists.gathers.insert(
            id,
            Gather {
                request,
                parts: adopted.into_iter().collect(),
                // The other cores and this one.
                waiting: others.len() + 1,
            },
        );
        self.on_list_part(id, part);
    }

    /// The part of a page among the names this leader took over and no
    /// core may have noted yet (`names::AdoptedNames`), if it holds any.
    fn adopted_part(&self, request: &ListRequest) -> Option<Part> {
        let table = &self.shared.table;
        let tenant = self.shared.tenants.get(request.tenant as usize)?;
        let now_ms = monotonic_ms();
        self.shared.adopted.scan(
            self.shared.leadership.load().epoch,
            &tenant.name,
            names::Scan::new(&request.prefix, &request.after, request.limit),
            now_ms,
            &mut |name| live(table, request.tenant, name, now_ms),
        )
    }

    /// Another core asks for its part of a page.
    pub(super) fn on_list_query(&mut self, query: Query) {
        let part = self.lists.scan(
            &self.shared.table,
            query.tenant,
            &query.prefix,
            &query.after,
            query.limit,
        );
        self.post(query.from, CoreMsg::ListPart { id: query.id, part });
    }

    /// Another core's page arrived.
    pub(super) fn on_list_part(&mut self, id: u64, part: Part) {
        if let Some(gather) = self.lists.gathers.get_mut(&id) {
            gather.parts.push(part);
            gather.waiting -= 1;
        }
        self.finish_list(id);
    }

    /// Answers the page once every core's part is in.
    fn finish_list(&mut self, id: u64) {
        let gather = match self.lists.gathers.get(&id) {
            Some(gather) if gather.waiting == 0 => self.lists.gathers.remove(&id),
            _ => None,
        };
        let Some(Gather { request, parts, .. }) = gather else {
            return;
        };
        let bytes_max = (self.opts.frame_payload_max as usize)
            .min(LISTED_PAYLOAD_MAX)
            .saturating_sub(LISTED_FIXED_BYTES + HEADER_LEN)
            .max(1);
        // A node that stopped leading while the pages were gathered does
        // not answer for the leader's table.
        let response = match self.shared.serving(monotonic_ms()) {
            Ok(()) => {
                let page = names::merge(parts, request.limit, bytes_max);
                Response::Listed {
                    leases: page.leases,
                    next_after: page.next_after,
                    more: page.more,
                }
            }
            Err(response) => response,
        };
        self.delivered.push(WaitEvent::Reply {
            origin: request.origin,
            response,
        });
    }
}
