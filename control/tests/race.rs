//! Many clients race for the same resources over real sockets: exactly one
//! wins each round (S2) and tokens strictly increase (S1).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::Server;
use palisade_client::{
    AcquireOptions, AcquireOutcome, AsyncClient, Client, ConnectOptions, TokenOutcome,
};
use palisade_proto::Request;

const CLIENTS: usize = 16;
const ROUNDS: usize = 40;

#[test]
fn concurrent_clients_exactly_one_wins_each_round() {
    let server = Server::start("");
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let endpoint = server.endpoint.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut client =
                    Client::connect(&ConnectOptions::new(endpoint, "default")).expect("connect");
                let mut wins = Vec::new();
                for round in 0..ROUNDS {
                    barrier.wait();
                    let resource = format!("race-{round}");
                    let mut options = AcquireOptions::new(Duration::from_secs(30));
                    options.holder = 1 + i as u64;
                    if let AcquireOutcome::Granted(lease) =
                        client.acquire(&resource, options).expect("acquire")
                    {
                        wins.push((round, lease.token));
                    }
                }
                wins
            })
        })
        .collect();
    let mut winners = vec![Vec::new(); ROUNDS];
    for thread in threads {
        for (round, token) in thread.join().expect("client thread") {
            winners[round].push(token);
        }
    }
    for (round, tokens) in winners.iter().enumerate() {
        assert_eq!(tokens.len(), 1, "round {round}: winners {tokens:?}");
    }
}

#[test]
fn tokens_strictly_increase_under_contention() {
    // Clients loop acquire/release on one resource; every grant's token is
    // recorded with the order it was granted in (the release that ends it
    // comes before the next grant), so sorted by token the list must be
    // exactly the grant order of non-overlapping leases.
    let server = Server::start("");
    // Until the clients together have this many grants (or each tried
    // `ATTEMPTS_MAX` times): how many attempts that takes depends on how
    // fast refusals come back, which is not what this test is about.
    const GRANTS: usize = 60;
    const ATTEMPTS_MAX: usize = 20_000;
    let granted = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let endpoint = server.endpoint.clone();
            let granted = granted.clone();
            std::thread::spawn(move || {
                let mut client =
                    Client::connect(&ConnectOptions::new(endpoint, "default")).expect("connect");
                let mut tokens = Vec::new();
                for _ in 0..ATTEMPTS_MAX {
                    if granted.load(Ordering::SeqCst) >= GRANTS {
                        break;
                    }
                    let mut options = AcquireOptions::new(Duration::from_secs(30));
                    options.holder = 10 + i;
                    if let AcquireOutcome::Granted(lease) =
                        client.acquire("hot", options).expect("acquire")
                    {
                        granted.fetch_add(1, Ordering::SeqCst);
                        tokens.push(lease.token);
                        match client.release("hot", lease.token).expect("release") {
                            TokenOutcome::Released => {}
                            other => panic!("our own lease was not ours: {other:?}"),
                        }
                    }
                }
                tokens
            })
        })
        .collect();
    let mut all: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("client thread"))
        .collect();
    assert!(all.len() >= GRANTS, "only {} grants", all.len());
    let count = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), count, "a token was issued twice");
    // Within one epoch the sequence has no gaps: every grant took the next.
    assert_eq!(all.last().unwrap() - all.first().unwrap() + 1, count as u64);
}

#[test]
fn the_blocking_client_pipelines() {
    let server = Server::start("");
    let mut client =
        Client::connect(&ConnectOptions::new(server.endpoint.clone(), "default")).expect("connect");
    let requests: Vec<Request> = (0..64)
        .map(|i| Request::Acquire {
            resource: format!("p{i}"),
            holder: 1,
            ttl_ms: 5_000,
            lock_delay_ms: 0,
            wait_ms: 0,
        })
        .collect();
    let responses = client.pipeline(&requests).expect("pipeline");
    assert_eq!(responses.len(), 64);
    assert!(responses
        .iter()
        .all(|r| matches!(r, palisade_proto::Response::Granted { .. })));
}

#[test]
fn the_async_client_pipelines_concurrent_calls() {
    let server = Server::start("");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = AsyncClient::connect(&ConnectOptions::new(server.endpoint.clone(), "default"))
            .await
            .expect("connect");
        let calls: Vec<_> = (0..200)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move {
                    let resource = format!("a{}", i % 50);
                    let mut options = AcquireOptions::new(Duration::from_secs(5));
                    options.holder = 1 + i as u64;
                    client.acquire(&resource, options).await.expect("acquire")
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for call in calls {
            outcomes.push(call.await.expect("task"));
        }
        let granted = outcomes
            .iter()
            .filter(|o| matches!(o, AcquireOutcome::Granted(_)))
            .count();
        assert_eq!(granted, 50, "one grant per resource");
        let status = client.status().await.expect("status");
        assert!(status.ops_served >= 200);
    });
}

#[test]
fn a_cancelled_waiting_acquire_does_not_keep_the_lease() {
    // The caller gives up on a queued acquire (its future is dropped). When
    // the lease is later granted to that request, the client releases it
    // instead of letting it sit held by nobody until it expires.
    let server = Server::start("");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let endpoint = server.endpoint.clone();
    runtime.block_on(async move {
        let options = ConnectOptions::new(endpoint.clone(), "default");
        let holder = AsyncClient::connect(&options).await.expect("connect");
        let waiter = AsyncClient::connect(&options).await.expect("connect");
        let AcquireOutcome::Granted(lease) = holder
            .acquire("cancel-me", AcquireOptions::new(Duration::from_secs(30)))
            .await
            .expect("acquire")
        else {
            panic!("free resource");
        };
        let mut wait = AcquireOptions::new(Duration::from_secs(30));
        wait.wait = Duration::from_secs(20);
        let cancelled = tokio::time::timeout(
            Duration::from_millis(200),
            waiter.acquire("cancel-me", wait),
        )
        .await;
        assert!(cancelled.is_err(), "the acquire was still waiting");
        // The connection stays usable after the cancellation.
        waiter
            .status()
            .await
            .expect("status after a cancelled call");
        assert_eq!(
            holder
                .release("cancel-me", lease.token)
                .await
                .expect("release"),
            TokenOutcome::Released
        );
        // The queued request gets the lease, and the client hands it back.
        let third = AsyncClient::connect(&options).await.expect("connect");
        let mut got = None;
        for _ in 0..100 {
            match third
                .acquire("cancel-me", AcquireOptions::new(Duration::from_secs(5)))
                .await
                .expect("acquire")
            {
                AcquireOutcome::Granted(lease) => {
                    got = Some(lease);
                    break;
                }
                AcquireOutcome::Busy { .. } => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        assert!(got.is_some(), "the abandoned grant was never released");
    });
}
