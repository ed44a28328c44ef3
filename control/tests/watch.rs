//! `Watch`: a long poll that answers when a newer token is issued.

mod common;

use std::time::Duration;

use common::Server;
use palisade_client::{AcquireOptions, AcquireOutcome, Client, ConnectOptions};

fn connect(server: &Server) -> Client {
    Client::connect(&ConnectOptions::new(server.endpoint.clone(), "default")).expect("connect")
}

fn acquire(client: &mut Client, resource: &str) -> u64 {
    match client
        .acquire(resource, AcquireOptions::new(Duration::from_secs(5)))
        .expect("acquire")
    {
        AcquireOutcome::Granted(lease) => lease.token,
        other => panic!("not granted: {other:?}"),
    }
}

#[test]
fn a_watch_answers_when_a_newer_token_is_issued() {
    let server = Server::start("");
    let mut client = connect(&server);
    let first = acquire(&mut client, "disk0");

    // Nothing newer than the current token: the wait runs out, unchanged.
    let idle = client
        .watch("disk0", first, Duration::from_millis(200))
        .expect("watch");
    assert!(!idle.changed, "{idle:?}");
    assert_eq!(idle.current_token, first);
    assert_eq!(idle.last_token, first);

    // Already newer: answered at once.
    let known = client
        .watch("disk0", first - 1, Duration::from_secs(30))
        .expect("watch");
    assert!(known.changed && known.last_token == first, "{known:?}");

    // A grant while the watch waits wakes it with the new token.
    let mut watcher = connect(&server);
    let waiting = std::thread::spawn(move || {
        watcher
            .watch("disk0", first, Duration::from_secs(30))
            .expect("watch")
    });
    std::thread::sleep(Duration::from_millis(200));
    client
        .release("disk0", first)
        .expect("release the first lease");
    let second = acquire(&mut client, "disk0");
    let seen = waiting.join().expect("watcher");
    assert!(seen.changed, "{seen:?}");
    assert_eq!(seen.last_token, second);
    assert!(second > first);
}

#[test]
fn a_watch_of_an_unknown_resource_and_a_too_long_wait() {
    let server = Server::start("");
    let mut client = connect(&server);
    let none = client
        .watch("never-held", 0, Duration::from_millis(50))
        .expect("watch");
    assert_eq!(
        (none.current_token, none.last_token, none.changed),
        (0, 0, false)
    );
    let err = client
        .watch("x", 0, Duration::from_secs(61))
        .expect_err("too long");
    assert!(err.to_string().contains("60000ms"), "{err}");
}
