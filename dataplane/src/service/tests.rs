//! Tests of the request service, driven without sockets.

use super::*;
use crate::leadership::LeadershipView;
use crate::table::KeyHasher;
use palisade_proto::auth::{client_proof, derive_stored};
use palisade_proto::{access_request, encode_request, frame::decode_frame, Decoded, FrameBuf};
use palisade_proto::{Request, Role};

const META: RequestMeta = RequestMeta {
    request_id: 7,
    group: 0,
};

fn shared(grants_from_ms: u64) -> RequestService {
    let leadership = Leadership::new(1);
    leadership.publish(LeadershipView {
        grants_from_ms,
        ..LeadershipView::leading_forever(4, 1)
    });
    RequestService::new(
        LeaseTable::new(64, KeyHasher::new([9; 16])),
        leadership,
        vec![
            Tenant {
                name: "default".into(),
                credential: None,
            },
            Tenant {
                name: "billing".into(),
                credential: Some(derive_stored(b"s3cret", b"0123456789abcdef", 4096)),
            },
        ],
        ServiceConfig {
            node_id: 1,
            min_ttl_ms: 100,
            max_ttl_ms: 30_000,
            lock_delay_max_ms: 60_000,
            max_drift_ppm: 10_000,
            pending_per_connection_max: 2,
            cores: 1,
            start_ms: 0,
            unix_offset_ms: 1_700_000_000_000,
            members: vec![(1, "127.0.0.1:7411".into()), (2, "127.0.0.1:7412".into())],
            replicated: false,
        },
        Quotas::new(2, crate::quota::QuotaConfig::UNLIMITED),
    )
}

fn run(s: &RequestService, conn: &mut Conn, request: &Request, now_ms: u64) -> Outcome {
    let mut buf = FrameBuf::new();
    encode_request(&mut buf, META.request_id, 0, 4096, request).expect("encodes");
    let Ok(Decoded::Frame { payload, .. }) = decode_frame(&buf, 4096) else {
        panic!("frame");
    };
    let archived = access_request(payload).expect("valid");
    s.handle(conn, META, archived, now_ms, &mut || [5; NONCE_LEN])
}

fn hello(tenant: &str) -> Request {
    Request::Hello {
        tenant: tenant.into(),
        client_nonce: [1; NONCE_LEN],
        client_name: "test".into(),
    }
}

fn ready(s: &RequestService) -> Conn {
    let mut conn = Conn::new(0, 1);
    assert!(matches!(
        run(s, &mut conn, &hello("default"), 0),
        Outcome::Reply(Response::Welcome(_))
    ));
    conn
}

fn acquire(resource: &str, holder: u64, ttl_ms: u32, wait_ms: u32) -> Request {
    Request::Acquire {
        resource: resource.into(),
        holder,
        ttl_ms,
        lock_delay_ms: 0,
        wait_ms,
    }
}

fn code(outcome: &Outcome) -> Option<ErrorCode> {
    match outcome {
        Outcome::Reply(Response::Error { code, .. })
        | Outcome::ReplyAndClose(Response::Error { code, .. }) => Some(*code),
        _ => None,
    }
}

fn archived<'a>(request: &Request, buf: &'a mut FrameBuf) -> &'a ArchivedRequest {
    buf.clear();
    encode_request(buf, META.request_id, 0, 4096, request).expect("encodes");
    let Ok(Decoded::Frame { payload, .. }) = decode_frame(buf, 4096) else {
        panic!("frame");
    };
    access_request(payload).expect("valid")
}

#[test]
fn a_key_computed_ahead_is_the_key_the_request_uses() {
    let s = shared(0);
    let mut buf = FrameBuf::new();
    let before = Conn::new(0, 9);
    // Before the handshake, and for requests without a lease: no key.
    assert_eq!(
        s.lease_key(&before, archived(&acquire("d", 1, 1000, 0), &mut buf)),
        None
    );
    let mut conn = ready(&s);
    assert_eq!(
        s.lease_key(&conn, archived(&Request::Status, &mut buf)),
        None
    );
    // An invalid name has none either: the request is answered as without.
    let bad = acquire("", 1, 1000, 0);
    assert_eq!(s.lease_key(&conn, archived(&bad, &mut buf)), None);
    assert_eq!(
        code(&run(&s, &mut conn, &bad, 0)),
        Some(ErrorCode::InvalidArgument)
    );
    let expected = s.table.hasher().key(0, b"disk0");
    let mut token = 0;
    for request in [
        acquire("disk0", 1, 1000, 0),
        Request::Check {
            resource: "disk0".into(),
            token: 0,
        },
    ] {
        let request = archived(&request, &mut buf);
        let key = s.lease_key(&conn, request);
        assert_eq!(key, Some(expected));
        let out = s.handle_keyed(&mut conn, META, request, 10, &mut || [5; NONCE_LEN], key);
        if let Outcome::Reply(Response::Granted { token: t, .. }) = out {
            token = t;
        }
    }
    assert_ne!(token, 0, "the keyed acquire was granted");
    // The lease is in the table under that key: a release without the
    // key computed ahead finds it.
    let release = Request::Release {
        resource: "disk0".into(),
        token,
    };
    assert!(matches!(
        run(&s, &mut conn, &release, 20),
        Outcome::Reply(Response::Released { token: t }) if t == token
    ));
}

#[test]
fn requests_before_the_handshake_close_the_connection() {
    let s = shared(0);
    let mut conn = Conn::new(0, 1);
    let out = run(&s, &mut conn, &Request::Status, 0);
    assert!(matches!(out, Outcome::ReplyAndClose(_)));
    assert_eq!(code(&out), Some(ErrorCode::NotAuthenticated));
    let out = run(&s, &mut Conn::new(0, 2), &hello("nobody"), 0);
    assert!(matches!(out, Outcome::ReplyAndClose(_)));
    assert_eq!(code(&out), Some(ErrorCode::UnknownTenant));
    let out = run(&s, &mut Conn::new(0, 3), &hello("bad name"), 0);
    assert_eq!(code(&out), Some(ErrorCode::InvalidArgument));
}

#[test]
fn credential_handshake_proves_without_sending_the_secret() {
    let s = shared(0);
    for (secret, ok) in [(&b"s3cret"[..], true), (&b"wrong"[..], false)] {
        let mut conn = Conn::new(0, 1);
        let Outcome::Reply(Response::Challenge {
            salt,
            iterations,
            server_nonce,
        }) = run(&s, &mut conn, &hello("billing"), 0)
        else {
            panic!("challenge expected");
        };
        assert_eq!(server_nonce, [5; NONCE_LEN]);
        let message = auth_message("billing", &[1; NONCE_LEN], &server_nonce, &salt, iterations);
        let (proof, expected) = client_proof(secret, &salt, iterations, &message);
        let out = run(&s, &mut conn, &Request::Auth { proof }, 0);
        if ok {
            match out {
                Outcome::Reply(Response::Welcome(w)) => {
                    assert_eq!(w.server_signature, Some(expected));
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(conn.phase, Phase::Ready { tenant: 1 });
        } else {
            assert!(matches!(out, Outcome::ReplyAndClose(_)));
            assert_eq!(code(&out), Some(ErrorCode::AuthFailed));
        }
    }
}

#[test]
fn lease_lifecycle_through_the_service() {
    let s = shared(0);
    let mut a = ready(&s);
    let mut b = ready(&s);
    let Outcome::Reply(Response::Granted { token, ttl_ms, .. }) =
        run(&s, &mut a, &acquire("disk0", 1, 10_000, 0), 100)
    else {
        panic!("grant expected");
    };
    assert_eq!(ttl_ms, 10_000);
    assert_eq!(token >> 32, 4, "token carries the epoch");
    assert_eq!(
        run(&s, &mut b, &acquire("disk0", 2, 10_000, 0), 200),
        Outcome::Reply(Response::Busy {
            token,
            // Granted at 100 for 10 000 ms: it ends at 10 101.
            remaining_ms: 9_901,
            waiters: false,
            waited_ms: 0
        })
    );
    let renew = Request::Renew {
        resource: "disk0".into(),
        token,
        ttl_ms: 5_000,
    };
    assert_eq!(
        run(&s, &mut a, &renew, 300),
        Outcome::Reply(Response::Renewed {
            token,
            ttl_ms: 5_000
        })
    );
    let check = |t| Request::Check {
        resource: "disk0".into(),
        token: t,
    };
    // A renewal never moves the server's expiry back (10 101).
    assert_eq!(
        run(&s, &mut b, &check(token), 400),
        Outcome::Reply(Response::Current {
            token,
            remaining_ms: 9_701
        })
    );
    assert!(matches!(
        run(&s, &mut b, &check(token - 1), 400),
        Outcome::Reply(Response::Stale { current_token, .. }) if current_token == token
    ));
    let release = Request::Release {
        resource: "disk0".into(),
        token,
    };
    assert_eq!(
        run(&s, &mut a, &release, 500),
        Outcome::Reply(Response::Released { token })
    );
    let Outcome::Reply(Response::Granted { token: next, .. }) =
        run(&s, &mut b, &acquire("disk0", 2, 10_000, 0), 600)
    else {
        panic!("grant expected");
    };
    assert!(next > token, "S1");
    assert!(matches!(
        run(&s, &mut a, &release, 700),
        Outcome::Reply(Response::Stale { .. })
    ));
    assert_eq!(s.status(700).epoch, 4);
}

#[test]
fn bad_arguments_are_refused_without_closing() {
    let s = shared(0);
    let mut conn = ready(&s);
    for request in [
        acquire("", 1, 1_000, 0),
        acquire(&"x".repeat(300), 1, 1_000, 0),
        acquire("r", 0, 1_000, 0),
        acquire("r", 1, 50, 0),
        acquire("r", 1, 30_001, 0),
        Request::Acquire {
            resource: "r".into(),
            holder: 1,
            ttl_ms: 1_000,
            lock_delay_ms: 60_001,
            wait_ms: 0,
        },
        Request::Renew {
            resource: "r".into(),
            token: 1,
            ttl_ms: 0,
        },
    ] {
        let out = run(&s, &mut conn, &request, 0);
        assert!(matches!(out, Outcome::Reply(_)), "{out:?}");
        assert_eq!(code(&out), Some(ErrorCode::InvalidArgument), "{request:?}");
    }
    assert!(matches!(conn.phase, Phase::Ready { .. }));
}

#[test]
fn grace_period_refuses_or_queues() {
    let s = shared(5_000);
    let mut conn = ready(&s);
    match run(&s, &mut conn, &acquire("r", 1, 1_000, 0), 1_000) {
        Outcome::Reply(Response::Error {
            code: ErrorCode::Unavailable,
            retry_after_ms,
            ..
        }) => assert_eq!(retry_after_ms, 4_000),
        other => panic!("{other:?}"),
    }
    // A wait that ends before the grace period does not queue.
    assert_eq!(
        code(&run(&s, &mut conn, &acquire("r", 1, 1_000, 2_000), 1_000)),
        Some(ErrorCode::Unavailable)
    );
    match run(&s, &mut conn, &acquire("r", 1, 1_000, 10_000), 1_000) {
        Outcome::Wait(w) => {
            assert_eq!(w.deadline_ms, 11_000);
            assert_eq!(w.origin.request_id, META.request_id);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn waits_are_bounded_per_connection() {
    let s = shared(0);
    let mut holder = ready(&s);
    assert!(matches!(
        run(&s, &mut holder, &acquire("r", 1, 1_000, 0), 0),
        Outcome::Reply(Response::Granted { .. })
    ));
    let mut conn = ready(&s);
    assert!(matches!(
        run(&s, &mut conn, &acquire("r", 2, 1_000, 500), 0),
        Outcome::Wait(_)
    ));
    assert!(matches!(
        run(&s, &mut conn, &acquire("r", 3, 1_000, 500), 0),
        Outcome::Wait(_)
    ));
    assert_eq!(
        code(&run(&s, &mut conn, &acquire("r", 4, 1_000, 500), 0)),
        Some(ErrorCode::TooManyWaiters)
    );
    assert_eq!(conn.pending, 2);
}

fn limited() -> RequestService {
    let mut s = shared(0);
    s.table = LeaseTable::new(64, KeyHasher::new([9; 16])).with_tenant_quota(2, 2);
    s.quotas = Quotas::new(
        2,
        crate::quota::QuotaConfig {
            tenant_connections_max: 3,
            tenant_waiters_max: 2,
            waiters_per_connection_max: 1,
            wait_max_ms: 60_000,
        },
    );
    s.config.pending_per_connection_max = 100;
    s
}

#[test]
fn tenant_quotas_refuse_new_things_with_their_own_codes() {
    let s = limited();
    let mut a = ready(&s);
    let mut b = ready(&s);
    let mut c = ready(&s);
    let out = run(&s, &mut Conn::new(0, 4), &hello("default"), 0);
    assert!(matches!(out, Outcome::ReplyAndClose(_)), "{out:?}");
    assert_eq!(code(&out), Some(ErrorCode::TenantConnectionQuota));
    for (resource, holder) in [("r1", 1), ("r2", 2)] {
        assert!(matches!(
            run(&s, &mut a, &acquire(resource, holder, 1_000, 0), 0),
            Outcome::Reply(Response::Granted { .. })
        ));
    }
    assert_eq!(
        code(&run(&s, &mut a, &acquire("r3", 3, 1_000, 0), 0)),
        Some(ErrorCode::TenantLeaseQuota)
    );
    // Waits: one per connection, two per tenant.
    assert!(matches!(
        run(&s, &mut a, &acquire("r1", 4, 1_000, 500), 0),
        Outcome::Wait(_)
    ));
    assert_eq!(
        code(&run(&s, &mut a, &acquire("r2", 5, 1_000, 500), 0)),
        Some(ErrorCode::TooManyWaiters)
    );
    let Outcome::Wait(waiting) = run(&s, &mut b, &acquire("r2", 6, 1_000, 500), 0) else {
        panic!("second waiter of the tenant queues");
    };
    assert!(waiting.origin.queued);
    assert_eq!(
        code(&run(&s, &mut c, &acquire("r2", 7, 1_000, 500), 0)),
        Some(ErrorCode::TenantWaiterQuota)
    );
    // An answered wait frees its slot; a closed connection frees the
    // rest and its connection.
    s.answered(&mut b, &waiting.origin);
    assert_eq!(s.quotas.tenant_waiters(0), 1);
    assert!(matches!(
        run(&s, &mut c, &acquire("r2", 7, 1_000, 500), 0),
        Outcome::Wait(_)
    ));
    s.closed(&mut a);
    assert_eq!(s.quotas.tenant_waiters(0), 1);
    assert_eq!(s.quotas.tenant_connections(0), 2);
    assert!(matches!(
        run(&s, &mut Conn::new(0, 5), &hello("default"), 0),
        Outcome::Reply(Response::Welcome(_))
    ));
}

#[test]
fn waits_beyond_wait_max_are_refused() {
    let s = limited();
    let mut conn = ready(&s);
    let out = run(&s, &mut conn, &acquire("r", 1, 1_000, 60_001), 0);
    assert_eq!(code(&out), Some(ErrorCode::InvalidArgument));
    assert!(
        matches!(out, Outcome::Reply(_)),
        "the connection stays open"
    );
    assert!(matches!(
        run(&s, &mut conn, &acquire("r", 1, 1_000, 60_000), 0),
        Outcome::Reply(Response::Granted { .. })
    ));
}

#[test]
fn failed_proofs_slow_their_source_down() {
    let s = shared(0);
    let peer: std::net::IpAddr = "192.0.2.7".parse().expect("ip");
    let attempt = || {
        let mut conn = Conn::new(0, 1);
        conn.peer = Some(peer);
        let out = run(&s, &mut conn, &hello("billing"), 0);
        if code(&out) == Some(ErrorCode::SlowDown) {
            return out;
        }
        run(&s, &mut conn, &Request::Auth { proof: [0; 32] }, 0)
    };
    for _ in 0..=crate::quota::AUTH_FAILURE_BURST {
        assert_eq!(code(&attempt()), Some(ErrorCode::AuthFailed));
    }
    let out = attempt();
    assert!(matches!(out, Outcome::ReplyAndClose(_)));
    assert!(matches!(
        out,
        Outcome::ReplyAndClose(Response::Error { code: ErrorCode::SlowDown, retry_after_ms, .. })
            if retry_after_ms > 0
    ));
    // Another source is not affected.
    let mut other = Conn::new(0, 2);
    other.peer = Some("192.0.2.8".parse().expect("ip"));
    assert!(matches!(
        run(&s, &mut other, &hello("billing"), 0),
        Outcome::Reply(Response::Challenge { .. })
    ));
}

#[test]
fn followers_refuse_lease_requests() {
    let s = shared(0);
    s.leadership.publish(LeadershipView {
        epoch: 5,
        role: Role::Follower,
        leader_id: 2,
        grants_from_ms: 0,
        grants_until_ms: 0,
    });
    let mut conn = ready(&s);
    for request in [
        acquire("r", 1, 1_000, 0),
        Request::Check {
            resource: "r".into(),
            token: 1,
        },
        list("", "", 10),
    ] {
        assert_eq!(
            run(&s, &mut conn, &request, 0),
            Outcome::Reply(Response::Redirect {
                leader_id: 2,
                endpoint: "127.0.0.1:7412".into()
            })
        );
    }
    assert!(matches!(
        run(&s, &mut conn, &Request::Status, 0),
        Outcome::Reply(Response::Status(StatusInfo {
            role: Role::Follower,
            ..
        }))
    ));
}

fn list(prefix: &str, after: &str, limit: u32) -> Request {
    Request::List {
        prefix: prefix.into(),
        after: after.into(),
        limit,
    }
}

#[test]
fn a_list_is_gathered_for_the_callers_tenant_only_and_bounded() {
    let s = shared(0);
    let mut b = Conn::new(0, 9);
    b.phase = Phase::Ready { tenant: 1 };
    match run(&s, &mut b, &list("vol/", "vol/a", 1_000), 0) {
        Outcome::List(request) => {
            assert_eq!(
                request.tenant, 1,
                "the connection's tenant, never the wire's"
            );
            assert_eq!(request.prefix, "vol/");
            assert_eq!(request.after, "vol/a");
            assert_eq!(request.limit, 1_000);
            assert_eq!(request.origin.conn, 9);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(b.pending, 1);
    let mut conn = ready(&s);
    for bad in [
        list("", "", 0),
        list("", "", LIST_LIMIT_MAX + 1),
        list(&"p".repeat(257), "", 10),
        list("", "a\nb", 10),
    ] {
        assert_eq!(
            code(&run(&s, &mut conn, &bad, 0)),
            Some(ErrorCode::InvalidArgument)
        );
    }
    assert_eq!(conn.pending, 0);
}

#[test]
fn requests_for_another_group_are_refused() {
    let s = shared(0);
    let mut conn = ready(&s);
    let mut buf = FrameBuf::new();
    encode_request(&mut buf, 9, 3, 4096, &acquire("r", 1, 1_000, 0)).expect("encodes");
    let Ok(Decoded::Frame { payload, .. }) = decode_frame(&buf, 4096) else {
        panic!("frame");
    };
    let archived = access_request(payload).expect("valid");
    let meta = RequestMeta {
        request_id: 9,
        group: 3,
    };
    let out = s.handle(&mut conn, meta, archived, 0, &mut || [5; NONCE_LEN]);
    assert_eq!(code(&out), Some(ErrorCode::InvalidArgument));
    assert!(
        matches!(out, Outcome::Reply(_)),
        "the connection stays open"
    );
}

#[test]
fn tenants_never_see_each_other() {
    let s = shared(0);
    let mut a = ready(&s);
    let Outcome::Reply(Response::Granted { token, .. }) =
        run(&s, &mut a, &acquire("disk0", 1, 10_000, 0), 0)
    else {
        panic!("grant expected");
    };
    // Tenant "billing" authenticates and finds disk0 free.
    let mut b = Conn::new(0, 9);
    b.phase = Phase::Ready { tenant: 1 };
    assert!(matches!(
        run(
            &s,
            &mut b,
            &Request::Check {
                resource: "disk0".into(),
                token
            },
            1
        ),
        Outcome::Reply(Response::Stale {
            current_token: 0,
            ..
        })
    ));
    assert!(matches!(
        run(
            &s,
            &mut b,
            &Request::Release {
                resource: "disk0".into(),
                token
            },
            1
        ),
        Outcome::Reply(Response::Stale { .. })
    ));
    assert!(matches!(
        run(
            &s,
            &mut a,
            &Request::Check {
                resource: "disk0".into(),
                token
            },
            2
        ),
        Outcome::Reply(Response::Current { .. })
    ));
}
