//! The process shells of `palisade hold`, `palisade watch` and `palisade
//! leases`: they read the clock, the child and the signals, and carry out
//! what the sans-IO layers ([`crate::hold::Supervisor`],
//! [`crate::watch::WatchTracker`]) decide.

use std::io::Write;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use palisade_proto::{token_epoch, token_seq, ErrorCode};
use rustix::process::{kill_process_group, Pid, Signal as Sig};
use serde_json::{json, Value};

use crate::blocking::{AcquireOptions, Client};
use crate::cli::{connect_options, error_report, secret, Common, Report, EXIT_ERROR, EXIT_OK};
use crate::hold::{
    Action, ChildExit, HoldEvent, Signal, StopReason, Supervisor, SupervisorConfig,
    EXIT_CANNOT_RUN, EXIT_HOLD_ERROR, EXIT_NOT_FOUND, EXIT_NOT_GRANTED,
};
use crate::keepalive::{KeepAliveThread, LeaseEvent, LossReason};
use crate::lease::{AcquireOutcome, Lease, TokenOutcome};
use crate::ClientError;
use palisade_host::clock::{boottime_ms, unix_ms};

/// How often the shells look at the child, the keepalive and the signals
/// when no deadline is nearer.
const POLL: Duration = Duration::from_millis(5);

/// `palisade hold`'s arguments.
#[derive(Debug)]
pub(crate) struct HoldArgs<'a> {
    pub(crate) resource: &'a str,
    pub(crate) ttl: Duration,
    pub(crate) wait: Duration,
    pub(crate) lock_delay: Duration,
    pub(crate) kill_before: Option<Duration>,
    pub(crate) kill_after: Option<Duration>,
    pub(crate) command: &'a [String],
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Boot-time `valid_until_ms` as Unix ms, for people and children.
fn unix_of(boot_ms: u64) -> u64 {
    let now_boot = boottime_ms();
    let now_unix = unix_ms();
    if boot_ms >= now_boot {
        now_unix + (boot_ms - now_boot)
    } else {
        now_unix.saturating_sub(now_boot - boot_ms)
    }
}

fn signal_name(signal: i32) -> String {
    match signal {
        libc_sig::SIGINT => "SIGINT".into(),
        libc_sig::SIGTERM => "SIGTERM".into(),
        libc_sig::SIGKILL => "SIGKILL".into(),
        other => format!("signal {other}"),
    }
}

/// The signal numbers the shells use (Linux).
mod libc_sig {
    pub const SIGINT: i32 = 2;
    pub const SIGKILL: i32 = 9;
    pub const SIGTERM: i32 = 15;
}

/// Installs flags for SIGINT and SIGTERM (replacing their default action).
fn signal_flags() -> Result<[(i32, Arc<AtomicBool>); 2], ClientError> {
    let flags = [
        (libc_sig::SIGINT, Arc::new(AtomicBool::new(false))),
        (libc_sig::SIGTERM, Arc::new(AtomicBool::new(false))),
    ];
    for (signal, flag) in &flags {
        signal_hook::flag::register(*signal, flag.clone()).map_err(|e| {
            ClientError::InvalidArgument(format!("installing a signal handler: {e}"))
        })?;
    }
    Ok(flags)
}

/// Prints one event line on stderr (with `--json`).
struct Events {
    json: bool,
    resource: String,
}

impl Events {
    fn emit(&self, event: &str, mut fields: Value) {
        if !self.json {
            return;
        }
        fields["event"] = json!(event);
        fields["resource"] = json!(self.resource);
        fields["unix_ms"] = json!(unix_ms());
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{fields}");
    }

    fn lease(&self, event: &str, lease: &Lease, valid_until_unix_ms: u64) {
        self.emit(
            event,
            json!({
                "token": lease.token,
                "epoch": token_epoch(lease.token),
                "seq": token_seq(lease.token),
                "ttl_ms": lease.ttl_ms,
                "holder": lease.holder,
                "valid_until_unix_ms": valid_until_unix_ms,
            }),
        );
    }

    /// Says what went wrong: a JSON line with --json, a sentence otherwise.
    fn fail(&self, code: i32, event: &str, message: &str) -> i32 {
        if self.json {
            self.emit(event, json!({ "message": message, "exit_code": code }));
        } else {
            eprintln!("palisade hold: {message}");
        }
        code
    }
}

fn stop_reason(reason: &StopReason) -> Value {
    match reason {
        StopReason::ValidityEnding => json!({"reason": "validity_ending"}),
        StopReason::Lost(LossReason::Stale { current_token }) => {
            json!({"reason": "stale", "current_token": current_token})
        }
        StopReason::Lost(LossReason::Expired { last_error }) => {
            json!({"reason": "expired", "last_error": last_error})
        }
    }
}

/// `{token}` in an argument becomes the token.
fn with_token(arg: &str, token: u64) -> String {
    arg.replace("{token}", &token.to_string())
}

fn spawn_child(
    command: &[String],
    lease: &Lease,
    valid_until_unix_ms: u64,
) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let (program, args) = command.split_first().expect("clap requires CMD");
    Command::new(program)
        .args(args.iter().map(|a| with_token(a, lease.token)))
        .env("PALISADE_RESOURCE", &lease.resource)
        .env("PALISADE_TOKEN", lease.token.to_string())
        .env(
            "PALISADE_VALID_UNTIL_UNIX_MS",
            valid_until_unix_ms.to_string(),
        )
        // Its own process group: SIGTERM and SIGKILL reach everything it
        // started, not just the first process.
        .process_group(0)
        .spawn()
}

fn signal_child(child: &Child, signal: Signal) -> i32 {
    let number = match signal {
        Signal::Term => libc_sig::SIGTERM,
        Signal::Kill => libc_sig::SIGKILL,
        Signal::Forward(number) => number,
    };
    let sig = Sig::from_named_raw(number).unwrap_or(Sig::TERM);
    if let Some(group) = i32::try_from(child.id()).ok().and_then(Pid::from_raw) {
        // The group is gone if the child already exited: nothing to stop.
        let _ = kill_process_group(group, sig);
    }
    number
}

fn child_exit(status: std::process::ExitStatus) -> ChildExit {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ChildExit::Code(code),
        (None, Some(signal)) => ChildExit::Signalled(signal),
        (None, None) => ChildExit::Code(EXIT_ERROR),
    }
}

/// `palisade hold`: acquire, run, supervise, release. Returns the exit code.
pub(crate) fn hold(common: &Common, args: &HoldArgs<'_>) -> i32 {
    let events = Events {
        json: common.json,
        resource: args.resource.to_owned(),
    };
    let secret = match secret(common) {
        Ok(secret) => secret,
        Err(why) => return events.fail(EXIT_HOLD_ERROR, "error", &why),
    };
    let ttl_ms = millis(args.ttl);
    let mut config = SupervisorConfig::for_ttl(ttl_ms);
    if let Some(kill_before) = args.kill_before {
        config.kill_before_ms = millis(kill_before).max(1);
        config.kill_after_ms = config.kill_before_ms / 2;
    }
    if let Some(kill_after) = args.kill_after {
        config.kill_after_ms = millis(kill_after);
    }
    if config.kill_before_ms >= ttl_ms {
        return events.fail(
            EXIT_HOLD_ERROR,
            "error",
            "--kill-before must be shorter than --ttl",
        );
    }
    let options = connect_options(common, secret);
    let connected = Client::connect(&options).and_then(|client| {
        let renewer = Client::connect(&options)?;
        Ok((client, renewer))
    });
    let (mut client, renewer) = match connected {
        Ok(clients) => clients,
        Err(e) => return events.fail(EXIT_HOLD_ERROR, "error", &error_report(&e).human),
    };
    let acquire = AcquireOptions {
        ttl: args.ttl,
        holder: crate::random_holder(),
        lock_delay: args.lock_delay,
        wait: args.wait,
    };
    let lease = match client.acquire(args.resource, acquire) {
        Ok(AcquireOutcome::Granted(lease)) => lease,
        Ok(AcquireOutcome::Busy {
            token,
            remaining_ms,
            waiters,
            waited_ms,
        }) => {
            if common.json {
                events.emit(
                    "not_granted",
                    json!({"token": token, "remaining_ms": remaining_ms, "waiters": waiters, "waited_ms": waited_ms, "exit_code": EXIT_NOT_GRANTED}),
                );
            } else {
                eprintln!(
                    "palisade hold: {} is busy (token {token}, {remaining_ms} ms left); not running the command",
                    args.resource
                );
            }
            return EXIT_NOT_GRANTED;
        }
        Err(
            e @ ClientError::Server {
                code: ErrorCode::Unavailable | ErrorCode::TooManyWaiters,
                ..
            },
        ) => return events.fail(EXIT_NOT_GRANTED, "not_granted", &error_report(&e).human),
        Err(e) => return events.fail(EXIT_HOLD_ERROR, "error", &error_report(&e).human),
    };
    let valid_until_unix_ms = unix_of(lease.valid_until_ms);
    events.lease("granted", &lease, valid_until_unix_ms);
    let signals = match signal_flags() {
        Ok(flags) => flags,
        Err(e) => {
            let _ = client.release(args.resource, lease.token);
            return events.fail(EXIT_HOLD_ERROR, "error", &e.to_string());
        }
    };
    let mut child = match spawn_child(args.command, &lease, valid_until_unix_ms) {
        Ok(child) => child,
        Err(e) => {
            let _ = client.release(args.resource, lease.token);
            let code = match e.kind() {
                std::io::ErrorKind::NotFound => EXIT_NOT_FOUND,
                std::io::ErrorKind::PermissionDenied => EXIT_CANNOT_RUN,
                _ => EXIT_HOLD_ERROR,
            };
            let message = format!("cannot run {:?}: {e}", args.command[0]);
            return events.fail(code, "error", &message);
        }
    };
    let keepalive = KeepAliveThread::spawn(renewer, lease.clone(), None);
    let mut supervisor = Supervisor::new(config, lease);
    loop {
        let now_ms = boottime_ms();
        for (signal, flag) in &signals {
            if flag.swap(false, Ordering::SeqCst) {
                supervisor.handle_signal(*signal);
            }
        }
        while let Ok(event) = keepalive.events.try_recv() {
            match event {
                LeaseEvent::Renewed(lease) => supervisor.handle_renewed(lease, now_ms),
                LeaseEvent::Lost { reason, .. } => supervisor.handle_lost(reason, now_ms),
            }
        }
        supervisor.handle_timeout(now_ms);
        match child.try_wait() {
            Ok(Some(status)) => {
                let exit = child_exit(status);
                let fields = match exit {
                    ChildExit::Code(code) => json!({ "code": code }),
                    ChildExit::Signalled(signal) => json!({ "signal": signal_name(signal) }),
                };
                events.emit("exited", fields);
                supervisor.handle_child_exit(exit);
            }
            Ok(None) => {}
            Err(e) => {
                // Cannot happen for our own child; stop it to be safe.
                let _ = signal_child(&child, Signal::Kill);
                let _ = child.wait();
                let message = format!("waiting for the command: {e}");
                return events.fail(EXIT_HOLD_ERROR, "error", &message);
            }
        }
        while let Some(action) = supervisor.poll_action() {
            match action {
                Action::Emit(HoldEvent::Renewed(lease)) => {
                    events.lease("renewed", &lease, unix_of(lease.valid_until_ms));
                }
                Action::Emit(HoldEvent::Lost { reason }) => {
                    if !common.json {
                        eprintln!(
                            "palisade hold: the lease on {} is lost ({}); stopping the command",
                            args.resource,
                            stop_reason(&reason)["reason"]
                        );
                    }
                    let mut fields = stop_reason(&reason);
                    fields["token"] = json!(supervisor.lease().token);
                    events.emit("lost", fields);
                }
                Action::Emit(HoldEvent::Signalled { .. }) => {}
                Action::Signal(signal) => {
                    let number = signal_child(&child, signal);
                    events.emit("signal", json!({ "signal": signal_name(number) }));
                }
                Action::Finish { release, code } => {
                    // Stop renewing without waiting for a renewal in
                    // flight: the process ends now, a late renewal of a
                    // released lease is refused as stale.
                    std::mem::forget(keepalive);
                    let token = supervisor.lease().token;
                    if release {
                        if code == crate::hold::EXIT_LOST {
                            // Best effort: the node may be the reason.
                            client.set_request_timeout(common.attempt_timeout);
                        }
                        match client.release(args.resource, token) {
                            Ok(TokenOutcome::Released) => {
                                events.emit("released", json!({ "token": token }));
                            }
                            Ok(other) => events.emit(
                                "release_failed",
                                json!({"token": token, "message": format!("{other:?}")}),
                            ),
                            Err(e) => events.emit(
                                "release_failed",
                                json!({"token": token, "message": e.to_string()}),
                            ),
                        }
                    }
                    return code;
                }
            }
        }
        let now_ms = boottime_ms();
        let pause = supervisor.poll_timeout().map_or(POLL, |at| {
            Duration::from_millis(at.saturating_sub(now_ms)).min(POLL)
        });
        std::thread::sleep(pause);
    }
}

/// `palisade watch`: one JSON line on stdout per change, until SIGINT or
/// SIGTERM (exit 0).
pub(crate) fn watch(common: &Common, resource: &str, after: u64) -> i32 {
    let secret = match secret(common) {
        Ok(secret) => secret,
        Err(why) => {
            eprintln!("error: {why}");
            return EXIT_ERROR;
        }
    };
    let signals = match signal_flags() {
        Ok(flags) => flags,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_ERROR;
        }
    };
    let options = connect_options(common, secret);
    // The watch blocks in long polls; it runs on its own thread so that a
    // signal ends the command at once.
    let (tx, rx) = mpsc::channel();
    let resource_owned = resource.to_owned();
    std::thread::spawn(move || {
        let mut client = loop {
            match Client::connect(&options) {
                Ok(client) => break client,
                Err(e) => {
                    if tx.send(Err(e)).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        };
        let mut events = client.watch_events(&resource_owned, after);
        loop {
            let item = events.next().expect("the watch never ends");
            let failed = item.is_err();
            if tx.send(item).is_err() {
                return;
            }
            if failed {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    });
    loop {
        if signals.iter().any(|(_, flag)| flag.load(Ordering::SeqCst)) {
            let _ = std::io::stdout().flush();
            return EXIT_OK;
        }
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(Ok(event)) => {
                let line = json!({
                    "event": event.kind.as_str(),
                    "resource": resource,
                    "token": event.token,
                    "epoch": token_epoch(event.token),
                    "seq": token_seq(event.token),
                    "unix_ms": unix_ms(),
                });
                let mut out = std::io::stdout().lock();
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    // Nobody reads any more (a closed pipe).
                    return EXIT_OK;
                }
            }
            Ok(Err(e)) => {
                let report = error_report(&e);
                eprintln!(
                    "{}",
                    json!({"event": "error", "resource": resource, "error": report.json["error"], "message": e.to_string()})
                );
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return EXIT_ERROR,
        }
    }
}

/// `palisade leases`: one page (or, with `--all`, every page).
pub(crate) fn leases(
    common: &Common,
    secret: Option<Vec<u8>>,
    prefix: &str,
    limit: u32,
    after: &str,
    all: bool,
) -> Result<Report, ClientError> {
    let mut client = Client::connect(&connect_options(common, secret))?;
    let mut listed = Vec::new();
    let mut cursor = after.to_owned();
    let (next_after, more) = loop {
        let page = client.list(prefix, &cursor, limit)?;
        listed.extend(page.leases);
        if !all || !page.more {
            break (page.next_after, page.more);
        }
        cursor = page.next_after;
    };
    let mut human = String::new();
    for lease in &listed {
        human.push_str(&format!(
            "{}\ttoken {} (epoch {}, seq {})\t{} ms left{}\n",
            lease.resource,
            lease.token,
            token_epoch(lease.token),
            token_seq(lease.token),
            lease.remaining_ms,
            if lease.waiters {
                "\twaiters queued"
            } else {
                ""
            }
        ));
    }
    if more {
        human.push_str(&format!(
            "more: continue with --after {next_after:?} (or pass --all)"
        ));
    } else {
        human.push_str(&format!("{} leases", listed.len()));
    }
    Ok(Report {
        code: EXIT_OK,
        json: json!({
            "leases": listed.iter().map(|l| json!({
                "resource": l.resource,
                "token": l.token,
                "epoch": token_epoch(l.token),
                "seq": token_seq(l.token),
                "remaining_ms": l.remaining_ms,
                "waiters": l.waiters,
            })).collect::<Vec<_>>(),
            "next_after": next_after,
            "more": more,
        }),
        human,
    })
}
