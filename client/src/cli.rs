//! The client half of the `palisade` command line: `hold` (lock and run),
//! `acquire`, `renew`, `release`, `check`, `watch`, `leases`, `status`.
//!
//! Exit codes: 0 ok, 2 busy or denied (including the grace period after a
//! restart), 3 stale token, 1 any other error (the message says what to do).
//! `hold` exits with its command's status, or with its own codes
//! ([`crate::hold::EXIT_NOT_GRANTED`] and friends, see `palisade hold
//! --help`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use palisade_proto::{token_epoch, token_seq, ErrorCode};
use serde_json::{json, Value};

use crate::blocking::{random_holder, AcquireOptions, Client, ConnectOptions};
use crate::lease::{AcquireOutcome, TokenOutcome};
use crate::ClientError;
use palisade_host::clock::{boottime_ms, unix_ms};

/// Success.
pub const EXIT_OK: i32 = 0;
/// Any error not covered below.
pub const EXIT_ERROR: i32 = 1;
/// Busy, or denied for now (grace period, waiter limit).
pub const EXIT_BUSY: i32 = 2;
/// The token is stale.
pub const EXIT_STALE: i32 = 3;

fn duration(text: &str) -> Result<Duration, palisade_tuning::ValueError> {
    palisade_tuning::parse_duration(text)
}

/// A `--token` argument that is not a number.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a token (a decimal or 0x-hex number)")]
struct NotAToken(String);

fn token(text: &str) -> Result<u64, NotAToken> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| NotAToken(text.to_owned()))
}

/// Options every client command takes.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Node to talk to; a comma-separated list is tried in order until one
    /// answers (any node of a cluster redirects to its leader), and the
    /// command fails over along it until --timeout.
    #[arg(long, default_value = "127.0.0.1:7400", env = "PALISADE_ENDPOINT")]
    pub endpoint: String,
    /// Tenant to act for.
    #[arg(long, default_value = "default", env = "PALISADE_TENANT")]
    pub tenant: String,
    /// File holding the tenant secret (or set PALISADE_SECRET).
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// Print one JSON object on stdout (`hold`: one JSON line per event
    /// on stderr; `watch` always prints JSON lines).
    #[arg(long)]
    pub json: bool,
    /// Time allowed for the command, across every node it tries (a
    /// waiting acquire gets its --wait added).
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub timeout: Duration,
    /// Time allowed for one node to connect or answer before the next
    /// endpoint is tried.
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub attempt_timeout: Duration,
}

/// What `palisade hold --help` says after the options.
const HOLD_AFTER_HELP: &str = "\
CMD runs with PALISADE_RESOURCE, PALISADE_TOKEN and PALISADE_VALID_UNTIL_UNIX_MS
(the validity at start) in its environment, and `{token}` in its arguments
replaced by the token. It runs in its own process group; SIGINT and SIGTERM
sent to `palisade hold` are passed on to that group.

The lease is renewed every third of the ttl. If renewals fail until the
lease's validity (as this client computes it) comes within --kill-before,
or the node says the lease is gone, CMD's process group gets SIGTERM, then
SIGKILL after --kill-after and in any case 5 ms before the validity ends:
CMD never runs past the lease. When CMD exits the lease is released at once.

Exit status:
  CMD's own       CMD exited while the lease was held (128+N: killed by signal N)
  121             the lease was not granted (busy until --wait ran out, or denied for now)
  122             the lease was lost while CMD ran; CMD was stopped
  123             palisade hold failed (bad arguments, no node reachable)
  126 / 127       CMD could not be run / was not found

--json prints one JSON line per event on stderr: granted, renewed, lost,
signal, exited, released (or not_granted, error).";

/// What `acquire` and `hold` ask for.
#[derive(Args, Debug, Clone)]
pub struct LeaseArgs {
    /// Resource name.
    pub resource: String,
    /// Lease duration.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub ttl: Duration,
    /// Queue (FIFO) up to this long if the resource is busy.
    #[arg(long, value_parser = duration)]
    pub wait: Option<Duration>,
    /// Keep the resource ungrantable this long if the lease expires
    /// without a release.
    #[arg(long, value_parser = duration)]
    pub lock_delay: Option<Duration>,
}

/// Client subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum ClientCommand {
    /// Acquire a lease, run a command while holding it, release it when the
    /// command exits; stop the command before the lease could be lost.
    #[command(after_help = HOLD_AFTER_HELP)]
    Hold {
        /// The lease wanted.
        #[command(flatten)]
        lease: LeaseArgs,
        /// Send CMD SIGTERM once the lease's validity is this close without a
        /// renewal (default: a tenth of the ttl).
        #[arg(long, value_parser = duration)]
        kill_before: Option<Duration>,
        /// Send SIGKILL this long after SIGTERM (default: half of
        /// --kill-before; never later than the validity allows).
        #[arg(long, value_parser = duration)]
        kill_after: Option<Duration>,
        /// Connection and output options (--json: events on stderr).
        #[command(flatten)]
        common: Common,
        /// The command and its arguments (after `--`).
        #[arg(required = true, last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Print one JSON line each time a resource's lease changes (granted,
    /// released, expired), following the leader; Ctrl-C ends it (exit 0).
    Watch {
        /// Resource name.
        resource: String,
        /// Report only tokens above this (default: starting with the
        /// current lease).
        #[arg(long, value_parser = token, default_value = "0")]
        after: u64,
        /// Connection options.
        #[command(flatten)]
        common: Common,
    },
    /// List your tenant's live leases (resource, token, time left, waiters)
    /// in resource-name order.
    Leases {
        /// Only resources whose name starts with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Leases per page (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Continue after this resource name (the `next_after` of the last
        /// page).
        #[arg(long, default_value = "")]
        after: String,
        /// Fetch every page, not just one.
        #[arg(long)]
        all: bool,
        /// Connection and output options.
        #[command(flatten)]
        common: Common,
    },
    /// Take a lease on a resource.
    Acquire {
        /// The lease wanted.
        #[command(flatten)]
        lease: LeaseArgs,
        /// Holder id; repeating an acquire with the same id while holding
        /// returns the same token. Default: random.
        #[arg(long)]
        holder: Option<u64>,
        /// Connection and output options.
        #[command(flatten)]
        common: Common,
    },
    /// Extend a lease you hold.
    Renew {
        /// Resource name.
        resource: String,
        /// Token the lease was granted with.
        #[arg(value_parser = token)]
        token: u64,
        /// New duration from now.
        #[arg(long, default_value = "10s", value_parser = duration)]
        ttl: Duration,
        /// Connection and output options.
        #[command(flatten)]
        common: Common,
    },
    /// Give a lease back.
    Release {
        /// Resource name.
        resource: String,
        /// Token the lease was granted with.
        #[arg(value_parser = token)]
        token: u64,
        /// Connection and output options.
        #[command(flatten)]
        common: Common,
    },
    /// Is this token the current lease? Exit 0 if so, 3 if stale.
    Check {
        /// Resource name.
        resource: String,
        /// Token to check.
        #[arg(value_parser = token)]
        token: u64,
        /// Connection and output options.
        #[command(flatten)]
        common: Common,
    },
    /// Node status.
    Status {
        /// Connection and output options.
        #[command(flatten)]
        common: Common,
    },
}

impl ClientCommand {
    fn common(&self) -> &Common {
        match self {
            ClientCommand::Acquire { common, .. }
            | ClientCommand::Hold { common, .. }
            | ClientCommand::Watch { common, .. }
            | ClientCommand::Leases { common, .. }
            | ClientCommand::Renew { common, .. }
            | ClientCommand::Release { common, .. }
            | ClientCommand::Check { common, .. }
            | ClientCommand::Status { common } => common,
        }
    }
}

pub(crate) fn secret(common: &Common) -> Result<Option<Vec<u8>>, String> {
    crate::handshake::read_secret(common.secret_file.as_deref()).map_err(|e| match e {
        ClientError::InvalidArgument(why) => why,
        other => other.to_string(),
    })
}

/// What to print and how to exit.
pub(crate) struct Report {
    pub(crate) code: i32,
    pub(crate) json: Value,
    pub(crate) human: String,
}

fn lease_json(resource: &str, tenant: &str, lease: &crate::Lease) -> Value {
    let valid_for_ms = lease.valid_until_ms.saturating_sub(boottime_ms());
    json!({
        "status": "granted",
        "resource": resource,
        "tenant": tenant,
        "token": lease.token,
        "epoch": token_epoch(lease.token),
        "seq": token_seq(lease.token),
        "ttl_ms": lease.ttl_ms,
        "holder": lease.holder,
        "waited_ms": lease.waited_ms,
        "valid_for_ms": valid_for_ms,
        "valid_until_unix_ms": unix_ms() + valid_for_ms,
    })
}

fn stale_report(resource: &str, token: u64, current_token: u64, last_token: u64) -> Report {
    Report {
        code: EXIT_STALE,
        json: json!({
            "status": "stale",
            "resource": resource,
            "token": token,
            "current_token": if current_token == 0 { Value::Null } else { json!(current_token) },
            "last_token": if last_token == 0 { Value::Null } else { json!(last_token) },
        }),
        human: if current_token == 0 {
            format!("stale: token {token} is not the current lease on {resource} (no holder now)")
        } else {
            format!(
                "stale: token {token} is not the current lease on {resource}; current token is {current_token}"
            )
        },
    }
}

pub(crate) fn error_report(err: &ClientError) -> Report {
    let (code, kind, retry_after_ms) = match err {
        ClientError::Server {
            code: code @ (ErrorCode::Unavailable | ErrorCode::TooManyWaiters),
            retry_after_ms,
            ..
        } => (EXIT_BUSY, code.as_str(), *retry_after_ms),
        ClientError::Server {
            code,
            retry_after_ms,
            ..
        } => (EXIT_ERROR, code.as_str(), *retry_after_ms),
        ClientError::Io { .. } => (EXIT_ERROR, "connection", 0),
        ClientError::Redirect { .. } => (EXIT_ERROR, "no_leader", 0),
        ClientError::Timeout { .. } => (EXIT_ERROR, "timeout", 0),
        ClientError::Protocol(_) => (EXIT_ERROR, "protocol", 0),
        ClientError::Auth(_) => (EXIT_ERROR, "auth", 0),
        ClientError::InvalidArgument(_) => (EXIT_ERROR, "invalid_argument", 0),
    };
    let hint = match err {
        ClientError::Io { endpoint, .. } => format!(
            " (is a node running at {endpoint}? start one with `palisade serve`, or pass --endpoint HOST:PORT)"
        ),
        ClientError::Timeout { .. } => " (the node is overloaded or unreachable; retry, or raise --timeout)".into(),
        ClientError::Redirect { .. } => " (the cluster has no reachable leader right now: is a majority of nodes up and connected? `palisade status` on each node tells)".into(),
        ClientError::Server {
            code: ErrorCode::Unavailable,
            retry_after_ms,
            ..
        } => format!(" (retry in {retry_after_ms} ms; `palisade status` shows when grants resume)"),
        _ => String::new(),
    };
    let status = if code == EXIT_BUSY { "denied" } else { "error" };
    Report {
        code,
        json: json!({
            "status": status,
            "error": kind,
            "message": err.to_string(),
            "retry_after_ms": retry_after_ms,
        }),
        human: format!("error: {err}{hint}"),
    }
}

/// Connects to the first endpoint of the list that completes the
/// handshake within --attempt-timeout, so a node that accepts connections
/// and never answers costs one attempt, not the whole --timeout. The
/// command then follows the leader along the same list. Only node failures
/// (unreachable, broken, silent, overloaded) move on to the next endpoint:
/// a node that answers and refuses (unknown tenant, bad secret) is an
/// answer.
fn connect_any(common: &Common, secret: Option<Vec<u8>>) -> Result<Client, ClientError> {
    Client::connect(&connect_options(common, secret))
}

/// The client options the common flags describe.
pub(crate) fn connect_options(common: &Common, secret: Option<Vec<u8>>) -> ConnectOptions {
    let mut options = ConnectOptions::new(common.endpoint.clone(), common.tenant.clone());
    options.request_timeout = common.timeout;
    options.attempt_timeout = common.attempt_timeout;
    options.identity.client_name = format!("palisade-cli/{}", env!("CARGO_PKG_VERSION"));
    if let Some(secret) = secret {
        options = options.with_secret(secret);
    }
    options
}

fn run_inner(command: &ClientCommand) -> Result<Report, ClientError> {
    let common = command.common();
    let secret = secret(common).map_err(ClientError::InvalidArgument)?;
    if let ClientCommand::Leases {
        prefix,
        limit,
        after,
        all,
        ..
    } = command
    {
        return crate::commands::leases(common, secret, prefix, *limit, after, *all);
    }
    let mut client = connect_any(common, secret)?;
    let tenant = common.tenant.as_str();
    Ok(match command {
        ClientCommand::Acquire { lease, holder, .. } => {
            let resource = &lease.resource;
            let options = AcquireOptions {
                ttl: lease.ttl,
                holder: holder.unwrap_or_else(random_holder),
                lock_delay: lease.lock_delay.unwrap_or_default(),
                wait: lease.wait.unwrap_or_default(),
            };
            match client.acquire(resource, options)? {
                AcquireOutcome::Granted(lease) => Report {
                    code: EXIT_OK,
                    json: lease_json(resource, tenant, &lease),
                    human: format!(
                        "granted {resource}: token {} (epoch {}, seq {}), ttl {} ms, holder {}",
                        lease.token,
                        token_epoch(lease.token),
                        token_seq(lease.token),
                        lease.ttl_ms,
                        lease.holder
                    ),
                },
                AcquireOutcome::Busy {
                    token,
                    remaining_ms,
                    waiters,
                    waited_ms,
                } => Report {
                    code: EXIT_BUSY,
                    json: json!({
                        "status": "busy",
                        "resource": resource,
                        "token": if token == 0 { Value::Null } else { json!(token) },
                        "remaining_ms": remaining_ms,
                        "waiters": waiters,
                        "waited_ms": waited_ms,
                    }),
                    human: if token == 0 {
                        format!("busy: {resource} is not grantable for another {remaining_ms} ms (lock delay or queued waiters)")
                    } else {
                        format!("busy: {resource} is held with token {token} for another {remaining_ms} ms")
                    },
                },
            }
        }
        ClientCommand::Renew {
            resource,
            token,
            ttl,
            ..
        } => match client.renew(resource, *token, *ttl, 0)? {
            TokenOutcome::Renewed(lease) => {
                let mut value = lease_json(resource, tenant, &lease);
                value["status"] = json!("renewed");
                value
                    .as_object_mut()
                    .expect("lease_json is an object")
                    .remove("holder");
                Report {
                    code: EXIT_OK,
                    json: value,
                    human: format!("renewed {resource}: token {token}, ttl {} ms", lease.ttl_ms),
                }
            }
            TokenOutcome::Stale {
                current_token,
                last_token,
            } => stale_report(resource, *token, current_token, last_token),
            other => return Err(ClientError::Protocol(format!("renew answered {other:?}"))),
        },
        ClientCommand::Release {
            resource, token, ..
        } => match client.release(resource, *token)? {
            TokenOutcome::Released => Report {
                code: EXIT_OK,
                json: json!({"status": "released", "resource": resource, "token": token}),
                human: format!("released {resource}: token {token}"),
            },
            TokenOutcome::Stale {
                current_token,
                last_token,
            } => stale_report(resource, *token, current_token, last_token),
            other => return Err(ClientError::Protocol(format!("release answered {other:?}"))),
        },
        ClientCommand::Check {
            resource, token, ..
        } => match client.check(resource, *token)? {
            TokenOutcome::Current { remaining_ms } => Report {
                code: EXIT_OK,
                json: json!({
                    "status": "current",
                    "resource": resource,
                    "token": token,
                    "remaining_ms": remaining_ms,
                }),
                human: format!(
                    "current: token {token} holds {resource} for another {remaining_ms} ms"
                ),
            },
            TokenOutcome::Stale {
                current_token,
                last_token,
            } => stale_report(resource, *token, current_token, last_token),
            other => return Err(ClientError::Protocol(format!("check answered {other:?}"))),
        },
        ClientCommand::Hold { .. } | ClientCommand::Watch { .. } | ClientCommand::Leases { .. } => {
            unreachable!("run() dispatches these before run_inner")
        }
        ClientCommand::Status { .. } => {
            let s = client.status()?;
            let grants_resume = if s.grace_remaining_ms == 0 {
                "grants allowed".to_string()
            } else {
                format!("grants resume in {} ms", s.grace_remaining_ms)
            };
            Report {
                code: EXIT_OK,
                json: json!({
                    "node": s.node_id,
                    "role": s.role.as_str(),
                    "epoch": s.epoch,
                    "leader": s.leader_id,
                    "cores": s.cores,
                    "leases_held": s.leases_held,
                    "ops_served": s.ops_served,
                    "connections": s.connections,
                    "waiters": s.waiters,
                    "grants_from_ms": s.grants_from_unix_ms,
                    "grace_remaining_ms": s.grace_remaining_ms,
                    "uptime_ms": s.uptime_ms,
                    "table_capacity": s.table_capacity,
                    "peers": s.peers.iter().map(|p| json!({"id": p.id, "endpoint": p.endpoint})).collect::<Vec<_>>(),
                    "version": s.version,
                }),
                human: format!(
                    "node {} {} epoch {} on {} cores: {} leases held, {} ops served, {} connections, {grants_resume}",
                    s.node_id,
                    s.role.as_str(),
                    s.epoch,
                    s.cores,
                    s.leases_held,
                    s.ops_served,
                    s.connections
                ),
            }
        }
    })
}

/// Runs one client command, prints its result and returns the exit code.
#[must_use]
pub fn run(command: &ClientCommand) -> i32 {
    match command {
        ClientCommand::Hold {
            lease,
            kill_before,
            kill_after,
            common,
            command,
        } => {
            let args = crate::commands::HoldArgs {
                resource: &lease.resource,
                ttl: lease.ttl,
                wait: lease.wait.unwrap_or_default(),
                lock_delay: lease.lock_delay.unwrap_or_default(),
                kill_before: *kill_before,
                kill_after: *kill_after,
                command,
            };
            return crate::commands::hold(common, &args);
        }
        ClientCommand::Watch {
            resource,
            after,
            common,
        } => return crate::commands::watch(common, resource, *after),
        _ => {}
    }
    let json = command.common().json;
    let report = run_inner(command).unwrap_or_else(|e| error_report(&e));
    if json {
        println!("{}", report.json);
    }
    if report.code == EXIT_ERROR || report.code == EXIT_BUSY && report.json["status"] == "denied" {
        eprintln!("{}", report.human);
    } else if !json {
        println!("{}", report.human);
    }
    report.code
}
