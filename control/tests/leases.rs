//! `List` / `palisade leases`: a tenant pages through its own live leases,
//! each exactly once, and never sees another tenant's (S5).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::Server;
use palisade_client::{
    AcquireOptions, AcquireOutcome, Client, ConnectOptions, ListedLease, TokenOutcome,
};
use palisade_proto::{ErrorCode, Request, Response};

const LEASES: usize = 10_000;
/// Connections the leases are acquired on: with several data-plane cores
/// the kernel spreads them, so the names land in several cores' indexes.
const CONNECTIONS: usize = 8;

fn connect(server: &Server, tenant: &str) -> Client {
    Client::connect(&ConnectOptions::new(server.endpoint.clone(), tenant)).expect("connect")
}

/// Acquires `names` on `tenant`, spread over several connections, in
/// pipelined batches. Returns the tokens by name.
fn acquire_all(server: &Server, tenant: &str, names: &[String]) -> Vec<(String, u64)> {
    let mut granted = Vec::new();
    let chunk = names.len().div_ceil(CONNECTIONS);
    for part in names.chunks(chunk) {
        let mut client = connect(server, tenant);
        for batch in part.chunks(500) {
            let requests: Vec<Request> = batch
                .iter()
                .map(|name| Request::Acquire {
                    resource: name.clone(),
                    holder: 1,
                    ttl_ms: 30_000,
                    lock_delay_ms: 0,
                    wait_ms: 0,
                })
                .collect();
            for (name, response) in batch
                .iter()
                .zip(client.pipeline(&requests).expect("pipeline"))
            {
                match response {
                    Response::Granted { token, .. } => granted.push((name.clone(), token)),
                    other => panic!("{name}: {other:?}"),
                }
            }
        }
    }
    granted
}

fn walk(client: &mut Client, prefix: &str, limit: u32) -> Vec<ListedLease> {
    let mut all = Vec::new();
    let mut after = String::new();
    let mut pages = 0;
    loop {
        let page = client.list(prefix, &after, limit).expect("list");
        assert!(
            page.leases.len() <= limit as usize,
            "a page holds at most limit"
        );
        all.extend(page.leases);
        pages += 1;
        assert!(pages <= 100_000, "the cursor must move");
        if !page.more {
            return all;
        }
        assert!(page.next_after > after, "the cursor moves forward");
        after = page.next_after;
    }
}

#[test]
fn pages_return_every_live_lease_once_in_order_and_only_the_tenants_own() {
    let server = Server::start(
        "[node]\ncores = 2\n\n[[tenants]]\nname = \"default\"\n\n[[tenants]]\nname = \"other\"\n",
    );
    let names: Vec<String> = (0..LEASES).map(|i| format!("vol/{i:05}")).collect();
    let granted = acquire_all(&server, "default", &names);
    // Another tenant holds some of the same names, and names of its own.
    let theirs: Vec<String> = (0..50)
        .map(|i| format!("vol/{i:05}"))
        .chain((0..50).map(|i| format!("secret/{i}")))
        .collect();
    let their_tokens = acquire_all(&server, "other", &theirs);

    let mut client = connect(&server, "default");
    // Release a few and let one expire: only live leases are listed.
    for (name, token) in granted.iter().take(10) {
        client.release(name, *token).expect("release");
    }
    match client
        .acquire("short", AcquireOptions::new(Duration::from_millis(200)))
        .expect("acquire")
    {
        AcquireOutcome::Granted(_) => {}
        other => panic!("{other:?}"),
    }
    common::sleep_ms(400);

    let listed = walk(&mut client, "", 7);
    let want: Vec<(String, u64)> = granted.iter().skip(10).cloned().collect();
    let got: Vec<(String, u64)> = listed
        .iter()
        .map(|l| (l.resource.clone(), l.token))
        .collect();
    assert_eq!(got.len(), want.len(), "each live lease exactly once");
    assert_eq!(got, want, "in name order, with their tokens");
    assert!(listed.iter().all(|l| l.remaining_ms > 0 && !l.waiters));

    // A prefix, and a large page.
    let some = walk(&mut client, "vol/0999", 1_000);
    let some: Vec<&str> = some.iter().map(|l| l.resource.as_str()).collect();
    assert_eq!(
        some,
        [
            "vol/09990",
            "vol/09991",
            "vol/09992",
            "vol/09993",
            "vol/09994",
            "vol/09995",
            "vol/09996",
            "vol/09997",
            "vol/09998",
            "vol/09999"
        ]
    );
    let big = walk(&mut client, "", 1_000);
    assert_eq!(big.len(), want.len());

    // The other tenant sees its own 100 and none of default's 9 990.
    let mut other = connect(&server, "other");
    let seen: BTreeSet<(String, u64)> = walk(&mut other, "", 13)
        .into_iter()
        .map(|l| (l.resource, l.token))
        .collect();
    let theirs: BTreeSet<(String, u64)> = their_tokens.into_iter().collect();
    assert_eq!(seen, theirs);
    assert!(
        walk(&mut client, "secret/", 100).is_empty(),
        "default never sees other's names"
    );

    // Out-of-range limits are refused; an unknown tenant gets no listing.
    match client.call(&Request::List {
        prefix: String::new(),
        after: String::new(),
        limit: 1_001,
    }) {
        Ok(Response::Error { code, .. }) => assert_eq!(code, ErrorCode::InvalidArgument),
        other => panic!("{other:?}"),
    }
    let stranger = Client::connect(&ConnectOptions::new(server.endpoint.clone(), "stranger"));
    assert!(
        stranger.is_err(),
        "unknown tenants are refused at the handshake"
    );

    // The command line walks every page too.
    let (code, all) = server.cli(&["leases", "--prefix", "vol/", "--limit", "250", "--all"]);
    assert_eq!(code, 0, "{all}");
    assert_eq!(all["leases"].as_array().expect("leases").len(), want.len());
    assert_eq!(all["more"], false);
    let (code, page) = server.cli(&["leases", "--limit", "3", "--after", "vol/00100"]);
    assert_eq!(code, 0, "{page}");
    let page_names: Vec<&str> = page["leases"]
        .as_array()
        .expect("leases")
        .iter()
        .map(|l| l["resource"].as_str().expect("resource"))
        .collect();
    assert_eq!(page_names, ["vol/00101", "vol/00102", "vol/00103"]);
    assert_eq!(page["more"], true);
    assert_eq!(page["next_after"], "vol/00103");
}

/// A restarted node (replication on, the default) still holds every lease
/// (`restart.rs`), and lists them from its first page on, before any holder
/// renews there: the takeover keeps the names it installed.
#[test]
fn a_restarted_node_lists_the_leases_it_took_over_before_any_renewal() {
    const CONFIG: &str =
        "[node]\ncores = 2\n\n[[tenants]]\nname = \"default\"\n\n[[tenants]]\nname = \"other\"\n";
    let work = tempfile::tempdir().expect("tempdir");
    let data_dir = work.path().join("data");
    let mut server = Server::start_in(CONFIG, &data_dir, work.path());
    let names: Vec<String> = (0..2_000).map(|i| format!("vol/{i:05}")).collect();
    let granted = acquire_all(&server, "default", &names);
    let theirs: Vec<String> = (0..20)
        .map(|i| format!("vol/{i:05}"))
        .chain((0..20).map(|i| format!("secret/{i}")))
        .collect();
    let their_tokens = acquire_all(&server, "other", &theirs);
    let mut client = connect(&server, "default");
    for (name, token) in granted.iter().take(10) {
        client.release(name, *token).expect("release");
    }
    drop(client);
    server.kill9();

    let server = Server::start_in(CONFIG, &data_dir, work.path());
    assert_eq!(server.ready["epoch"], 2, "a new term after the crash");
    let mut client = connect(&server, "default");
    let want: Vec<(String, u64)> = granted.iter().skip(10).cloned().collect();
    let listed = |client: &mut Client, limit: u32| -> Vec<(String, u64)> {
        walk(client, "", limit)
            .into_iter()
            .map(|l| (l.resource, l.token))
            .collect()
    };
    let got = listed(&mut client, 50);
    assert_eq!(got.len(), want.len(), "every lease held across the restart");
    assert!(got == want, "each once, in name order, with its token");
    let some: Vec<String> = walk(&mut client, "vol/0199", 7)
        .into_iter()
        .map(|l| l.resource)
        .collect();
    assert_eq!(some.len(), 10, "a prefix: {some:?}");
    let mut other = connect(&server, "other");
    let seen: BTreeSet<(String, u64)> = listed(&mut other, 13).into_iter().collect();
    assert_eq!(
        seen,
        their_tokens.into_iter().collect(),
        "each tenant sees its own (S5)"
    );

    // A lease released after the restart leaves the listing; one renewed
    // there (its core notes the name too) is listed once.
    let (gone, gone_token) = &want[0];
    let released = client.release(gone, *gone_token).expect("release");
    assert!(matches!(released, TokenOutcome::Released), "{released:?}");
    let (kept, kept_token) = &want[1];
    let renewed = client
        .renew(kept, *kept_token, Duration::from_secs(30), 1)
        .expect("renew");
    assert!(matches!(renewed, TokenOutcome::Renewed(_)), "{renewed:?}");
    let after = listed(&mut client, 1_000);
    assert_eq!(after, want[1..], "released gone, renewed listed once");
    let (code, all) = server.cli(&["leases", "--prefix", "vol/", "--limit", "250", "--all"]);
    assert_eq!(code, 0, "{all}");
    assert_eq!(
        all["leases"].as_array().expect("leases").len(),
        want.len() - 1
    );
}
