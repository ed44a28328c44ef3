//! The keepalive helper keeps a lease across many ttls and reports its loss
//! loudly: when another party's release makes the token stale, and when the
//! node disappears.

mod common;

use std::time::Duration;

use common::Server;
use palisade_client::{
    keep_alive, AcquireOptions, AcquireOutcome, AsyncClient, Client, ConnectOptions, LeaseEvent,
    LossReason, TokenOutcome,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn keepalive_renews_past_the_ttl_and_reports_a_stale_token() {
    let server = Server::start("");
    let endpoint = server.endpoint.clone();
    runtime().block_on(async move {
        let client = AsyncClient::connect(&ConnectOptions::new(endpoint.clone(), "default"))
            .await
            .expect("connect");
        let AcquireOutcome::Granted(lease) = client
            .acquire("kept", AcquireOptions::new(Duration::from_millis(300)))
            .await
            .expect("acquire")
        else {
            panic!("free resource");
        };
        let mut kept = keep_alive(client.clone(), lease.clone(), None);
        // Five ttls later the lease is still ours.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let mut renewals = 0;
        while let Ok(event) = kept.events.try_recv() {
            assert!(matches!(event, LeaseEvent::Renewed(_)), "{event:?}");
            renewals += 1;
        }
        assert!(renewals >= 3, "only {renewals} renewals");
        assert!(kept.current.borrow().is_valid());
        let mut other =
            Client::connect(&ConnectOptions::new(endpoint, "default")).expect("connect");
        assert!(matches!(
            other.check("kept", lease.token).expect("check"),
            TokenOutcome::Current { .. }
        ));
        // Someone releases it with the token (an operator, a bug): the next
        // renewal finds the token stale and the helper says so.
        assert_eq!(
            other.release("kept", lease.token).expect("release"),
            TokenOutcome::Released
        );
        let event = tokio::time::timeout(Duration::from_secs(2), kept.events.recv())
            .await
            .expect("loss reported in time")
            .expect("event");
        assert!(
            matches!(
                event,
                LeaseEvent::Lost {
                    reason: LossReason::Stale { .. },
                    ..
                }
            ),
            "{event:?}"
        );
    });
}

#[test]
fn keepalive_reports_loss_when_the_node_is_gone() {
    let mut server = Server::start("");
    let endpoint = server.endpoint.clone();
    let rt = runtime();
    rt.block_on(async move {
        let client = AsyncClient::connect(&ConnectOptions::new(endpoint, "default"))
            .await
            .expect("connect");
        let AcquireOutcome::Granted(lease) = client
            .acquire("kept", AcquireOptions::new(Duration::from_millis(600)))
            .await
            .expect("acquire")
        else {
            panic!("free resource");
        };
        let mut kept = keep_alive(client, lease.clone(), None);
        server.kill9();
        let event = tokio::time::timeout(Duration::from_secs(3), kept.events.recv())
            .await
            .expect("loss reported in time")
            .expect("event");
        match event {
            LeaseEvent::Lost {
                lease: lost,
                reason: LossReason::Expired { .. },
            } => {
                assert!(!lost.is_valid(), "reported lost only once invalid");
            }
            other => panic!("{other:?}"),
        }
        assert!(!lease.is_valid());
    });
}
