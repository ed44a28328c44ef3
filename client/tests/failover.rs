//! Failover on real sockets against fake nodes (tests/common): endpoint
//! lists, per-attempt deadlines, following redirects and `Unavailable`
//! until the caller's deadline, retries that keep the holder id, waiting
//! acquires re-queued with the wait that is left, and keepalive across a
//! leader change.
//!
//! Time bounds here are functional, generous limits (a hung node must cost
//! about one per-attempt deadline, not the caller's whole timeout), not
//! performance measurements.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::{table, FakeNode, Mode, Table};
#[cfg(feature = "cli")]
use palisade_client::cli::{self, ClientCommand, Common};
use palisade_client::{
    keep_alive, AcquireOptions, AcquireOutcome, AsyncClient, Client, ClientError, ConnectOptions,
    KeepAliveThread, Lease, LeaseEvent, LossReason, TokenOutcome,
};
use palisade_host::clock::boottime_ms;
use palisade_proto::{ErrorCode, Request};

/// A caller's own timeout, long enough that waiting it out would fail the
/// time bounds below.
const CALLER_TIMEOUT: Duration = Duration::from_secs(30);
/// The per-attempt deadline of the timing tests.
const ATTEMPT: Duration = Duration::from_secs(1);
/// What a hung node may cost at most with `ATTEMPT`.
const ONE_ATTEMPT_BOUND_MS: u64 = 5_000;
/// A short per-attempt deadline for tests about something else.
const QUICK_ATTEMPT: Duration = Duration::from_millis(300);

fn options(nodes: &[&FakeNode], attempt: Duration) -> ConnectOptions {
    let mut options =
        ConnectOptions::for_endpoints(nodes.iter().map(|n| n.endpoint.as_str()), "default")
            .with_attempt_timeout(attempt);
    options.request_timeout = CALLER_TIMEOUT;
    options
}

fn granted(outcome: AcquireOutcome) -> Lease {
    match outcome {
        AcquireOutcome::Granted(lease) => lease,
        other => panic!("not granted: {other:?}"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn is_acquire(r: &Request) -> bool {
    matches!(r, Request::Acquire { .. })
}

fn is_renew(r: &Request) -> bool {
    matches!(r, Request::Renew { .. })
}

fn is_release(r: &Request) -> bool {
    matches!(r, Request::Release { .. })
}

// ---------------------------------------------------------------- endpoints

#[test]
fn a_comma_separated_endpoint_is_a_list() {
    let options = ConnectOptions::new("a:1, b:2,c:3", "default");
    assert_eq!(options.endpoints(), ["a:1", "b:2", "c:3"]);
    let listed = ConnectOptions::for_endpoints(["a:1", "b:2"], "default");
    assert_eq!(listed.endpoint, "a:1,b:2");
    assert!(matches!(
        Client::connect(&ConnectOptions::new(" , ", "default")),
        Err(ClientError::InvalidArgument(_))
    ));
}

#[test]
fn connect_skips_a_dead_endpoint() {
    let dead = FakeNode::start(Mode::Serve);
    dead.kill();
    let live = FakeNode::start(Mode::Serve);
    let mut client = Client::connect(&options(&[&dead, &live], QUICK_ATTEMPT)).expect("connect");
    assert_eq!(client.endpoint(), live.endpoint);
    granted(
        client
            .acquire("disk0", AcquireOptions::new(Duration::from_secs(10)))
            .expect("acquire"),
    );
}

// ------------------------------------------------- hung nodes (point 2, 7)

#[test]
fn a_hung_first_endpoint_costs_the_blocking_client_about_one_attempt() {
    let hung = FakeNode::start(Mode::Hang);
    let live = FakeNode::start(Mode::Serve);
    let start = boottime_ms();
    let mut client = Client::connect(&options(&[&hung, &live], ATTEMPT)).expect("connect");
    granted(
        client
            .acquire("disk0", AcquireOptions::new(Duration::from_secs(10)))
            .expect("acquire"),
    );
    let took = boottime_ms() - start;
    assert!(hung.accepted() >= 1, "the hung node was tried first");
    assert!(
        took < ONE_ATTEMPT_BOUND_MS,
        "a hung node cost {took} ms with a {ATTEMPT:?} attempt deadline"
    );
}

#[test]
fn a_hung_first_endpoint_costs_the_async_client_about_one_attempt() {
    let hung = FakeNode::start(Mode::Hang);
    let live = FakeNode::start(Mode::Serve);
    let options = options(&[&hung, &live], ATTEMPT);
    let start = boottime_ms();
    runtime().block_on(async move {
        let client = AsyncClient::connect(&options).await.expect("connect");
        granted(
            client
                .acquire("disk0", AcquireOptions::new(Duration::from_secs(10)))
                .await
                .expect("acquire"),
        );
    });
    let took = boottime_ms() - start;
    assert!(hung.accepted() >= 1, "the hung node was tried first");
    assert!(took < ONE_ATTEMPT_BOUND_MS, "a hung node cost {took} ms");
}

#[test]
#[cfg(feature = "cli")]
fn a_hung_first_endpoint_costs_the_cli_about_one_attempt() {
    let hung = FakeNode::start(Mode::Hang);
    let live = FakeNode::start(Mode::Serve);
    let command = ClientCommand::Acquire {
        lease: cli::LeaseArgs {
            resource: "disk0".into(),
            ttl: Duration::from_secs(10),
            wait: None,
            lock_delay: None,
        },
        holder: Some(42),
        common: Common {
            endpoint: format!("{},{}", hung.endpoint, live.endpoint),
            tenant: "default".into(),
            secret_file: None,
            json: true,
            timeout: CALLER_TIMEOUT,
            attempt_timeout: ATTEMPT,
        },
    };
    let start = boottime_ms();
    assert_eq!(cli::run(&command), cli::EXIT_OK);
    let took = boottime_ms() - start;
    assert!(hung.accepted() >= 1, "the hung node was tried first");
    assert!(took < ONE_ATTEMPT_BOUND_MS, "a hung node cost {took} ms");
    assert_eq!(live.acquires(), [(42, 0)]);
}

#[test]
fn a_node_that_hangs_mid_session_costs_a_renewal_about_one_attempt() {
    let shared = table();
    let a = FakeNode::with_table(Mode::Serve, shared.clone());
    let b = FakeNode::with_table(Mode::Serve, shared);
    let mut client = Client::connect(&options(&[&a, &b], ATTEMPT)).expect("connect");
    let lease = granted(
        client
            .acquire("disk0", AcquireOptions::new(Duration::from_secs(20)))
            .expect("acquire"),
    );
    a.set_mode(Mode::Hang); // SIGSTOP: the connection stays, nothing answers
    let start = boottime_ms();
    let renewed = client.renew_lease(&lease).expect("renewal");
    let took = boottime_ms() - start;
    let TokenOutcome::Renewed(renewed) = renewed else {
        panic!("{renewed:?}");
    };
    assert_eq!(renewed.token, lease.token);
    assert_eq!(b.count(is_renew), 1, "renewed at the second node");
    assert!(took < ONE_ATTEMPT_BOUND_MS, "a hung node cost {took} ms");
}

// ------------------------------------------ renewal after failover (point 3)

#[test]
fn a_renewal_succeeds_at_the_second_node_after_the_first_dies() {
    let shared = table();
    let a = FakeNode::with_table(Mode::Serve, shared.clone());
    let b = FakeNode::with_table(Mode::Serve, shared);
    let mut client = Client::connect(&options(&[&a, &b], QUICK_ATTEMPT)).expect("connect");
    let lease = granted(
        client
            .acquire("disk0", AcquireOptions::new(Duration::from_secs(10)))
            .expect("acquire"),
    );
    a.kill();
    match client.renew_lease(&lease).expect("renewal") {
        TokenOutcome::Renewed(renewed) => {
            assert_eq!(renewed.token, lease.token, "the new leader kept the token");
            assert!(renewed.is_valid());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(client.endpoint(), b.endpoint);
    assert_eq!(a.count(is_renew), 0);
    assert_eq!(b.count(is_renew), 1);
}

#[test]
fn an_async_renewal_succeeds_at_the_second_node_after_the_first_dies() {
    let shared = table();
    let a = FakeNode::with_table(Mode::Serve, shared.clone());
    let b = FakeNode::with_table(Mode::Serve, shared);
    let options = options(&[&a, &b], QUICK_ATTEMPT);
    runtime().block_on(async {
        let client = AsyncClient::connect(&options).await.expect("connect");
        let lease = granted(
            client
                .acquire("disk0", AcquireOptions::new(Duration::from_secs(10)))
                .await
                .expect("acquire"),
        );
        a.kill();
        match client.renew_lease(&lease).await.expect("renewal") {
            TokenOutcome::Renewed(renewed) => assert_eq!(renewed.token, lease.token),
            other => panic!("{other:?}"),
        }
        assert_eq!(client.endpoint(), b.endpoint);
    });
    assert_eq!(b.count(is_renew), 1);
}

#[test]
fn a_renewal_is_never_waited_on_past_the_leases_validity() {
    let shared = table();
    let a = FakeNode::with_table(Mode::Serve, shared.clone());
    let b = FakeNode::with_table(Mode::Serve, shared);
    // The per-attempt deadline is longer than the lease: the lease's
    // validity must bound the renewal, not the attempt.
    let mut client = Client::connect(&options(&[&a, &b], Duration::from_secs(5))).expect("connect");
    let lease = granted(
        client
            .acquire("disk0", AcquireOptions::new(Duration::from_millis(800)))
            .expect("acquire"),
    );
    a.set_mode(Mode::Hang);
    b.set_mode(Mode::Hang);
    let result = client.renew_lease(&lease);
    let now = boottime_ms();
    assert!(result.is_err(), "{result:?}");
    assert!(
        now <= lease.valid_until_ms + 500,
        "gave up {} ms after the lease's validity ended",
        now.saturating_sub(lease.valid_until_ms)
    );
}

// --------------------------------------- following the leader (point 3)

#[test]
fn a_redirect_is_followed_to_a_leader_outside_the_list() {
    let leader = FakeNode::start(Mode::Serve);
    let follower = FakeNode::start(Mode::Redirect(leader.endpoint.clone()));
    let mut client = Client::connect(&options(&[&follower], QUICK_ATTEMPT)).expect("connect");
    let mut acquire = AcquireOptions::new(Duration::from_secs(10));
    acquire.holder = 77;
    granted(client.acquire("disk0", acquire).expect("acquire"));
    assert_eq!(follower.acquires(), [(77, 0)]);
    assert_eq!(leader.acquires(), [(77, 0)]);
    assert_eq!(client.endpoint(), leader.endpoint);
}

#[test]
fn unavailable_answers_are_waited_out_with_their_hint() {
    let node = FakeNode::start(Mode::Unavailable {
        left: 3,
        retry_after_ms: 150,
    });
    let mut client = Client::connect(&options(&[&node], QUICK_ATTEMPT)).expect("connect");
    let mut acquire = AcquireOptions::new(Duration::from_secs(10));
    acquire.holder = 5;
    let start = boottime_ms();
    granted(client.acquire("disk0", acquire).expect("acquire"));
    let took = boottime_ms() - start;
    assert_eq!(node.acquires(), [(5, 0); 4], "three refusals, then a grant");
    assert!(
        took >= 3 * 150,
        "the server's retry hint was ignored: {took} ms"
    );
}

#[test]
fn unavailable_until_the_callers_deadline_returns_the_servers_answer() {
    let node = FakeNode::start(Mode::Unavailable {
        left: u32::MAX,
        retry_after_ms: 100,
    });
    let mut options = options(&[&node], QUICK_ATTEMPT);
    options.request_timeout = Duration::from_millis(700);
    let mut client = Client::connect(&options).expect("connect");
    let start = boottime_ms();
    let result = client.acquire("disk0", AcquireOptions::new(Duration::from_secs(10)));
    let took = boottime_ms() - start;
    assert!(
        matches!(
            result,
            Err(ClientError::Server {
                code: ErrorCode::Unavailable,
                ..
            })
        ),
        "{result:?}"
    );
    assert!(
        node.count(is_acquire) >= 4,
        "asked again while time was left"
    );
    assert!(
        took < 2_000,
        "kept going past the caller's deadline: {took} ms"
    );
}

#[test]
fn the_async_client_waits_out_unavailable_and_follows_redirects() {
    let leader = FakeNode::start(Mode::Unavailable {
        left: 2,
        retry_after_ms: 50,
    });
    let follower = FakeNode::start(Mode::Redirect(leader.endpoint.clone()));
    let options = options(&[&follower], QUICK_ATTEMPT);
    runtime().block_on(async {
        let client = AsyncClient::connect(&options).await.expect("connect");
        let mut acquire = AcquireOptions::new(Duration::from_secs(10));
        acquire.holder = 6;
        granted(client.acquire("disk0", acquire).await.expect("acquire"));
    });
    assert_eq!(leader.acquires(), [(6, 0); 3]);
}

// --------------------------------- lost answers and the holder id (point 3)

#[test]
fn an_acquire_whose_answer_was_lost_comes_back_with_the_same_token() {
    let shared = table();
    let a = FakeNode::with_table(Mode::ApplyThenClose, shared.clone());
    let b = FakeNode::with_table(Mode::Serve, shared.clone());
    let mut client = Client::connect(&options(&[&a, &b], QUICK_ATTEMPT)).expect("connect");
    let lease = granted(
        client
            .acquire("disk0", AcquireOptions::new(Duration::from_secs(10)))
            .expect("acquire"),
    );
    let committed = shared.lock().expect("table").leases["disk0"];
    assert_eq!(
        lease.token, committed.token,
        "the committed grant, not a second one"
    );
    assert_eq!(lease.holder, committed.holder);
    let (a_acquires, b_acquires) = (a.acquires(), b.acquires());
    assert_eq!(a_acquires.len(), 1);
    assert_eq!(b_acquires, a_acquires, "the retry reused the holder id");
}

#[test]
fn an_acquire_cut_off_mid_request_is_retried_with_the_same_holder() {
    let a = FakeNode::start(Mode::CloseOnRequest);
    let b = FakeNode::start(Mode::Serve);
    let options = options(&[&a, &b], QUICK_ATTEMPT);
    let holder = runtime().block_on(async {
        let client = AsyncClient::connect(&options).await.expect("connect");
        let lease = granted(
            client
                .acquire("disk0", AcquireOptions::new(Duration::from_secs(10)))
                .await
                .expect("acquire"),
        );
        lease.holder
    });
    assert_eq!(a.acquires(), [(holder, 0)]);
    assert_eq!(b.acquires(), [(holder, 0)]);
}

#[test]
fn a_retried_release_that_finds_the_lease_gone_reports_released() {
    let shared = table();
    let a = FakeNode::with_table(Mode::Serve, shared.clone());
    let b = FakeNode::with_table(Mode::Serve, shared.clone());
    let mut client = Client::connect(&options(&[&a, &b], QUICK_ATTEMPT)).expect("connect");
    let lease = granted(
        client
            .acquire("disk0", AcquireOptions::new(Duration::from_secs(10)))
            .expect("acquire"),
    );
    // The release commits at A, whose answer is lost; B then finds no lease
    // and no newer token.
    a.set_mode(Mode::ApplyThenClose);
    assert_eq!(
        client.release("disk0", lease.token).expect("release"),
        TokenOutcome::Released
    );
    assert_eq!(a.count(is_release), 1);
    assert_eq!(b.count(is_release), 1);
    assert!(!shared.lock().expect("table").leases.contains_key("disk0"));
    // Without a lost answer, the same Stale is reported as it is.
    assert!(matches!(
        client.release("disk0", lease.token).expect("release"),
        TokenOutcome::Stale { last_token, current_token: 0 } if last_token == lease.token
    ));
}

// ------------------------------------------ abandoned grants (point 6)

/// Asserts that `node` received the release of `resource` at `token` and
/// that the lease is gone. The client sends such a release without
/// waiting for its answer, so the node may read it after it answered the
/// call that carried it: waited for, with a bound.
fn assert_released(node: &FakeNode, shared: &Mutex<Table>, resource: &str, token: u64) {
    let released = || {
        node.seen().into_iter().any(|s| {
            matches!(s.request, Request::Release { resource: ref r, token: t } if r == resource && t == token)
        }) && !shared.lock().expect("table").leases.contains_key(resource)
    };
    let deadline = boottime_ms() + 10_000;
    while !released() && boottime_ms() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        released(),
        "the abandoned grant of {resource} was not released"
    );
}

#[test]
fn a_grant_that_arrives_after_the_caller_gave_up_is_released() {
    let shared = table();
    let node = FakeNode::with_table(Mode::Slow { delay_ms: 700 }, shared.clone());
    // The caller's deadline passes before the slow node answers; the
    // attempt deadline is longer, so the node is not taken for failed.
    let mut options = options(&[&node], Duration::from_secs(5));
    options.request_timeout = Duration::from_millis(300);
    let mut client = Client::connect(&options).expect("connect");
    let result = client.acquire("disk0", AcquireOptions::new(Duration::from_secs(10)));
    assert!(
        matches!(result, Err(ClientError::Timeout { .. })),
        "{result:?}"
    );
    std::thread::sleep(Duration::from_millis(800)); // the grant is made
    let token = shared.lock().expect("table").leases["disk0"].token;
    node.set_mode(Mode::Serve);
    // The next call reads the late grant and gives it back.
    client.set_request_timeout(Duration::from_secs(5));
    client.check("other", 1).expect("check");
    assert_released(&node, &shared, "disk0", token);
}

#[test]
fn a_late_grant_that_arrives_with_the_next_answer_is_released() {
    // The late grant and the answer to the next call come in one write,
    // so the client reads both at once: the release it queues for the
    // grant must still go out although that call needs no further read
    // (CI once caught it sitting unsent in the client's buffer).
    let shared = table();
    let node = FakeNode::with_table(Mode::ApplyAndHold, shared.clone());
    let mut options = options(&[&node], Duration::from_secs(5));
    options.request_timeout = Duration::from_millis(300);
    let mut client = Client::connect(&options).expect("connect");
    let result = client.acquire("disk0", AcquireOptions::new(Duration::from_secs(10)));
    assert!(
        matches!(result, Err(ClientError::Timeout { .. })),
        "{result:?}"
    );
    let token = shared.lock().expect("table").leases["disk0"].token;
    node.set_mode(Mode::Serve);
    client.set_request_timeout(Duration::from_secs(5));
    client.check("other", 1).expect("check");
    assert_released(&node, &shared, "disk0", token);
}

#[test]
fn a_cancelled_async_waiting_acquire_releases_its_late_grant() {
    let shared = table();
    shared.lock().expect("table").hold("disk0", 999);
    let node = FakeNode::with_table(Mode::Serve, shared.clone());
    let options = options(&[&node], QUICK_ATTEMPT);
    runtime().block_on(async {
        let client = AsyncClient::connect(&options).await.expect("connect");
        let mut acquire = AcquireOptions::new(Duration::from_secs(10));
        acquire.wait = Duration::from_secs(5);
        let cancelled =
            tokio::time::timeout(Duration::from_millis(300), client.acquire("disk0", acquire))
                .await;
        assert!(cancelled.is_err(), "the caller gave up");
        // The holder releases; the queued acquire is granted to nobody.
        shared.lock().expect("table").leases.remove("disk0");
        let deadline = boottime_ms() + 3_000;
        while node.count(is_release) == 0 && boottime_ms() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(client);
    });
    assert_eq!(node.count(is_release), 1, "the late grant was given back");
    assert!(!shared.lock().expect("table").leases.contains_key("disk0"));
}

// ------------------------------------------- waiting acquires (point 5)

/// A resource held by someone else, a waiting acquire queued at `a`, and
/// after a while `fail(a)` plus the resource freed: the acquire must end
/// granted at `b`, re-sent with less wait.
fn requeue_case(fail: fn(&FakeNode), run_async: bool) {
    let shared = table();
    shared.lock().expect("table").hold("disk0", 999);
    let a = FakeNode::with_table(Mode::Serve, shared.clone());
    let b = FakeNode::with_table(Mode::Serve, shared.clone());
    let options = options(&[&a, &b], QUICK_ATTEMPT);
    let mut acquire = AcquireOptions::new(Duration::from_secs(10));
    acquire.wait = Duration::from_secs(5);
    acquire.holder = 31;
    let failover = std::thread::scope(|scope| {
        scope.spawn(|| {
            while a.count(is_acquire) == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(500));
            fail(&a);
            shared.lock().expect("table").leases.remove("disk0");
        });
        if run_async {
            runtime().block_on(async {
                let client = AsyncClient::connect(&options).await.expect("connect");
                client.acquire("disk0", acquire).await
            })
        } else {
            Client::connect(&options)
                .expect("connect")
                .acquire("disk0", acquire)
        }
    });
    let lease = granted(failover.expect("the caller sees no error"));
    assert_eq!(lease.holder, 31);
    let (first, again) = (a.acquires(), b.acquires());
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(first[0].0, 31);
    assert!(first[0].1 > 4_900, "first sent with {} ms", first[0].1);
    let (holder, wait_ms) = again[0];
    assert_eq!(holder, 31, "same holder id");
    assert!(
        wait_ms < 5_000 - 400 && wait_ms > 2_000,
        "re-sent with {wait_ms} ms of the 5000 ms wait"
    );
}

#[test]
fn a_waiting_acquire_is_requeued_after_its_node_dies() {
    requeue_case(FakeNode::kill, false);
}

#[test]
fn a_waiting_acquire_is_requeued_after_its_node_hangs() {
    // Nothing breaks: only the liveness probe can tell.
    requeue_case(|node| node.set_mode(Mode::Hang), false);
}

#[test]
fn an_async_waiting_acquire_is_requeued_after_its_node_dies() {
    requeue_case(FakeNode::kill, true);
}

#[test]
fn an_async_waiting_acquire_is_requeued_after_its_node_hangs() {
    requeue_case(|node| node.set_mode(Mode::Hang), true);
}

#[test]
fn a_waiting_acquire_on_a_live_node_is_not_interrupted_by_its_probes() {
    let shared = table();
    shared.lock().expect("table").hold("disk0", 999);
    let a = FakeNode::with_table(Mode::Serve, shared.clone());
    let b = FakeNode::with_table(Mode::Serve, shared.clone());
    let mut client = Client::connect(&options(&[&a, &b], QUICK_ATTEMPT)).expect("connect");
    let mut acquire = AcquireOptions::new(Duration::from_secs(10));
    acquire.wait = Duration::from_secs(3);
    acquire.holder = 32;
    let result = std::thread::scope(|scope| {
        scope.spawn(|| {
            // Several probe intervals of silence, then the holder releases.
            std::thread::sleep(Duration::from_millis(1_200));
            shared.lock().expect("table").leases.remove("disk0");
        });
        client.acquire("disk0", acquire)
    });
    granted(result.expect("acquire"));
    let queued = a.acquires();
    assert_eq!(queued.len(), 1, "queued once, never re-sent: {queued:?}");
    assert_eq!(queued[0].0, 32);
    assert!(queued[0].1 > 2_900, "{queued:?}");
    assert_eq!(b.count(is_acquire), 0, "a live node was abandoned");
    assert!(
        a.count(|r| matches!(r, Request::Status)) >= 2,
        "the silent wait was probed"
    );
}

#[test]
fn a_waiting_acquire_ends_busy_when_its_wait_ends() {
    let node = FakeNode::start(Mode::Serve);
    let mut client = Client::connect(&options(&[&node], QUICK_ATTEMPT)).expect("connect");
    let mut acquire = AcquireOptions::new(Duration::from_secs(10));
    acquire.wait = Duration::from_millis(800);
    let mut other = AcquireOptions::new(Duration::from_secs(10));
    other.holder = 999;
    granted(client.acquire("disk0", other).expect("first"));
    let outcome = client.acquire("disk0", acquire).expect("second");
    assert!(
        matches!(outcome, AcquireOutcome::Busy { .. }),
        "{outcome:?}"
    );
    assert_eq!(node.count(is_acquire), 2, "answered where it queued");
}

// -------------------------------------------------- keepalive (point 4)

#[test]
fn keepalive_keeps_the_token_across_a_failover_and_reports_loss_at_validity_end() {
    let shared = table();
    let a = FakeNode::with_table(Mode::Serve, shared.clone());
    let b = FakeNode::with_table(Mode::Serve, shared);
    let options = options(&[&a, &b], QUICK_ATTEMPT);
    runtime().block_on(async {
        let client = AsyncClient::connect(&options).await.expect("connect");
        let lease = granted(
            client
                .acquire("kept", AcquireOptions::new(Duration::from_millis(900)))
                .await
                .expect("acquire"),
        );
        let mut kept = keep_alive(client, lease.clone(), None);
        tokio::time::sleep(Duration::from_millis(700)).await;
        a.kill(); // the leader dies; b has the lease (shared table)
        tokio::time::sleep(Duration::from_millis(2_000)).await;
        let mut last = lease.clone();
        while let Ok(event) = kept.events.try_recv() {
            match event {
                LeaseEvent::Renewed(renewed) => {
                    assert_eq!(renewed.token, lease.token, "same token after failover");
                    last = renewed;
                }
                lost @ LeaseEvent::Lost { .. } => panic!("lost while b serves: {lost:?}"),
            }
        }
        assert!(b.count(is_renew) >= 2, "renewed at b after the failover");
        assert!(kept.current.borrow().is_valid());
        // Now nobody serves: b hangs. Loss comes when validity ends, not
        // before and not long after.
        b.set_mode(Mode::Hang);
        let event = tokio::time::timeout(Duration::from_secs(3), kept.events.recv())
            .await
            .expect("loss reported in time")
            .expect("event");
        let now = boottime_ms();
        let LeaseEvent::Lost {
            lease: lost,
            reason: LossReason::Expired { .. },
        } = event
        else {
            panic!("{event:?}");
        };
        assert_eq!(lost.token, lease.token);
        assert!(lost.valid_until_ms >= last.valid_until_ms);
        assert!(
            now >= lost.valid_until_ms,
            "reported lost while still valid"
        );
        assert!(
            now <= lost.valid_until_ms + 500,
            "reported {} ms after validity ended",
            now - lost.valid_until_ms
        );
    });
}

#[test]
fn keepalive_reports_a_stale_token_after_a_failover() {
    let shared = table();
    let a = FakeNode::with_table(Mode::Serve, shared.clone());
    let b = FakeNode::with_table(Mode::Serve, shared.clone());
    let options = options(&[&a, &b], QUICK_ATTEMPT);
    runtime().block_on(async {
        let client = AsyncClient::connect(&options).await.expect("connect");
        let lease = granted(
            client
                .acquire("kept", AcquireOptions::new(Duration::from_millis(900)))
                .await
                .expect("acquire"),
        );
        let mut kept = keep_alive(client, lease.clone(), None);
        a.kill();
        // The new leader does not have the lease.
        shared.lock().expect("table").leases.remove("kept");
        let event = tokio::time::timeout(Duration::from_secs(2), kept.events.recv())
            .await
            .expect("loss reported in time")
            .expect("event");
        assert!(
            matches!(
                event,
                LeaseEvent::Lost {
                    reason: LossReason::Stale { current_token: 0 },
                    ..
                }
            ),
            "{event:?}"
        );
        assert!(
            boottime_ms() < lease.valid_until_ms,
            "stale is reported at once"
        );
    });
}

#[test]
fn the_keepalive_thread_renews_through_a_hung_leader() {
    let shared = table();
    let a = FakeNode::with_table(Mode::Serve, shared.clone());
    let b = FakeNode::with_table(Mode::Serve, shared);
    let mut client = Client::connect(&options(&[&a, &b], QUICK_ATTEMPT)).expect("connect");
    let lease = granted(
        client
            .acquire("kept", AcquireOptions::new(Duration::from_millis(1_500)))
            .expect("acquire"),
    );
    let mut kept = KeepAliveThread::spawn(client, lease.clone(), None);
    std::thread::sleep(Duration::from_millis(600));
    a.set_mode(Mode::Hang);
    std::thread::sleep(Duration::from_millis(2_500));
    let mut renewals = 0;
    while let Ok(event) = kept.events.try_recv() {
        match event {
            LeaseEvent::Renewed(renewed) => {
                assert_eq!(renewed.token, lease.token);
                renewals += 1;
            }
            lost @ LeaseEvent::Lost { .. } => panic!("lost while b serves: {lost:?}"),
        }
    }
    assert!(renewals >= 3, "{renewals} renewals");
    assert!(b.count(is_renew) >= 2, "renewed at b");
    b.kill();
    let event = kept
        .events
        .recv_timeout(Duration::from_secs(3))
        .expect("loss reported in time");
    let now = boottime_ms();
    match event {
        LeaseEvent::Lost {
            lease: lost,
            reason: LossReason::Expired { .. },
        } => {
            assert!(
                now >= lost.valid_until_ms,
                "reported lost while still valid"
            );
            assert!(now <= lost.valid_until_ms + 500, "reported late");
        }
        other => panic!("{other:?}"),
    }
    kept.stop();
}

#[test]
fn a_short_lease_survives_a_hung_leader_with_the_default_attempt_timeout() {
    // Renewals at ttl/3 leave about 800 ms of validity; a full one-second
    // attempt at the hung leader would eat all of it.
    let shared = table();
    let a = FakeNode::with_table(Mode::Serve, shared.clone());
    let b = FakeNode::with_table(Mode::Serve, shared);
    let options = options(&[&a, &b], ConnectOptions::new("x:1", "t").attempt_timeout);
    assert_eq!(options.attempt_timeout, Duration::from_secs(1));
    runtime().block_on(async {
        let client = AsyncClient::connect(&options).await.expect("connect");
        let lease = granted(
            client
                .acquire("kept", AcquireOptions::new(Duration::from_millis(1_200)))
                .await
                .expect("acquire"),
        );
        let mut kept = keep_alive(client, lease.clone(), None);
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.set_mode(Mode::Hang);
        tokio::time::sleep(Duration::from_millis(3_000)).await;
        let mut renewals = 0;
        while let Ok(event) = kept.events.try_recv() {
            match event {
                LeaseEvent::Renewed(renewed) => {
                    assert_eq!(renewed.token, lease.token);
                    renewals += 1;
                }
                lost @ LeaseEvent::Lost { .. } => panic!("lost to a hung leader: {lost:?}"),
            }
        }
        assert!(renewals >= 3, "{renewals} renewals");
        assert!(b.count(is_renew) >= 3, "renewed at b");
    });
}

#[test]
fn list_follows_the_leader_on_both_clients() {
    let leader = FakeNode::start(Mode::Serve);
    let follower = FakeNode::start(Mode::Redirect(leader.endpoint.clone()));
    let mut client = Client::connect(&options(&[&follower], QUICK_ATTEMPT)).expect("connect");
    for name in ["b", "a", "c"] {
        granted(
            client
                .acquire(name, AcquireOptions::new(Duration::from_secs(10)))
                .expect("acquire"),
        );
    }
    let page = client.list("", "", 2).expect("list");
    let names: Vec<&str> = page.leases.iter().map(|l| l.resource.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert!(page.more);
    let all = client.list_all("", 2).expect("list_all");
    assert_eq!(all.len(), 3);
    assert!(matches!(
        client.list("", "", 0),
        Err(palisade_client::ClientError::InvalidArgument(_))
    ));
    runtime().block_on(async {
        let client = AsyncClient::connect(&options(&[&follower], QUICK_ATTEMPT))
            .await
            .expect("connect");
        let page = client.list("", "b", 10).await.expect("list");
        let names: Vec<&str> = page.leases.iter().map(|l| l.resource.as_str()).collect();
        assert_eq!(names, ["c"]);
        assert!(!page.more);
    });
}
