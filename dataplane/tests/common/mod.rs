//! What the data plane's integration tests share: a request service with
//! one tenant, leading for ever, and the shell's options as shipped.
#![allow(dead_code)] // each test file uses its own part

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use palisade_dataplane::leadership::{Leadership, LeadershipView};
use palisade_dataplane::server::{Cpus, ServerOptions};
use palisade_dataplane::service::{RequestService, ServiceConfig, Tenant};
use palisade_dataplane::table::{KeyHasher, LeaseTable};

/// A service for `cores` cores whose tenant `default` needs no proof.
pub fn shared(cores: usize) -> Arc<RequestService> {
    shared_with(cores, None)
}

/// A service for `cores` cores whose tenant `default` has `credential`.
pub fn shared_with(
    cores: usize,
    credential: Option<palisade_proto::auth::StoredCredential>,
) -> Arc<RequestService> {
    let leadership = Leadership::new(1);
    leadership.publish(LeadershipView::leading_forever(1, 1));
    Arc::new(RequestService::new(
        LeaseTable::new(1024, KeyHasher::new([3; 16])),
        leadership,
        vec![Tenant {
            name: "default".into(),
            credential,
        }],
        ServiceConfig {
            node_id: 1,
            min_ttl_ms: 100,
            max_ttl_ms: 30_000,
            lock_delay_max_ms: 60_000,
            max_drift_ppm: 10_000,
            pending_per_connection_max: 16,
            cores: u16::try_from(cores).expect("few cores"),
            start_ms: 0,
            unix_offset_ms: 0,
            members: vec![(1, "127.0.0.1:7411".into())],
            replicated: false,
        },
        palisade_dataplane::quota::Quotas::new(
            1,
            palisade_dataplane::quota::QuotaConfig::UNLIMITED,
        ),
    ))
}

/// The shell's options as shipped, on a free loopback port.
pub fn options() -> ServerOptions {
    ServerOptions {
        listen: "127.0.0.1:0".parse::<SocketAddr>().expect("address"),
        cpus: Cpus::All,
        dscp: 46,
        connections_max: 64,
        waiters_max: 64,
        frame_payload_max: 64 << 10,
        handshake_timeout: Duration::from_secs(5),
        frame_timeout: Duration::from_secs(5),
        unauthenticated_max: 64,
        idle_timeout: Duration::from_secs(60),
        write_stall_timeout: Duration::from_secs(10),
        sweep_interval: Duration::from_millis(100),
        busy_poll: Duration::from_micros(30),
        reclaim_after: Duration::from_secs(60),
        admin: None,
        replica: None,
    }
}
