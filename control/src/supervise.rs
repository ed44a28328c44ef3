//! `palisade serve` under a service manager: readiness, status lines, the
//! watchdog and the stop notice, sent with [`palisade_host::notify::Notifier`].
//!
//! - `READY=1` goes out once, when the node serves: it leads (a leader in
//!   its grace period answers clients, with a retry time), or it follows a
//!   leader it knows (and redirects clients there). A node still electing
//!   is not ready, so `systemctl start` of a cluster member returns only
//!   once the cluster has a leader.
//! - `STATUS=` follows the role: `leader term 3, granting`, `follower of
//!   node 2, term 3`, `candidate in term 4, no leader known`.
//! - `WATCHDOG=1` is decided by [`palisade_host::notify::Watchdog`] from the
//!   heartbeat of every data-plane core, and sent from the control loop,
//!   so a ping also proves the control thread turns. A stuck core or a
//!   stuck control loop stops the pings and systemd restarts the node.
//! - `STOPPING=1` when shutdown begins.
//!
//! It never changes what the node does: a failed notification is logged
//! and the node goes on serving.

use std::path::Path;

use palisade_dataplane::leadership::LeadershipView;
use palisade_host::notify::{watchdog_from_env, Notifier, NotifyError, Watchdog, WatchdogAction};
use palisade_proto::Role;
use tracing::{error, info, warn};

use crate::node::Node;

/// Test hook (only with `--failpoints`): `PALISADE_TEST_STALL_CORE=N`
/// makes data-plane core N block its thread while this file exists in the
/// data directory.
pub const CORE_STALL_FAILPOINT: &str = "failpoint-stall-core";

/// Why supervision could not start. The environment's fault: the unit file
/// or the test that set the variable.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` or `$WATCHDOG_PID` is malformed.
    #[error("the service manager's environment")]
    Environment(#[source] NotifyError),
    /// `PALISADE_TEST_STALL_CORE` is not a core index.
    #[error("PALISADE_TEST_STALL_CORE={value:?} is not a core index")]
    StallCore {
        /// The variable's value.
        value: String,
        /// Why it does not parse.
        #[source]
        source: std::num::ParseIntError,
    },
}

/// Arms the core-stall test hook if `PALISADE_TEST_STALL_CORE` is set.
/// Call only when `--failpoints` was given, before the node starts.
pub fn arm_core_stall_failpoint(data_dir: &Path) -> Result<(), SuperviseError> {
    let Ok(value) = std::env::var("PALISADE_TEST_STALL_CORE") else {
        return Ok(());
    };
    let core = value
        .parse::<usize>()
        .map_err(|source| SuperviseError::StallCore {
            value: value.clone(),
            source,
        })?;
    palisade_host::heartbeat::arm_core_stall_failpoint(core, data_dir.join(CORE_STALL_FAILPOINT));
    Ok(())
}

/// The node's conversation with its service manager. Inert when the node
/// was not started by one (no `$NOTIFY_SOCKET`).
#[derive(Debug)]
pub struct Supervision {
    notifier: Option<Notifier>,
    watchdog: Option<Watchdog>,
    ready_sent: bool,
    status: String,
    beats: Vec<u64>,
    send_failed: bool,
}

impl Supervision {
    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`. A
    /// malformed value is an error: the unit file or the environment is
    /// wrong, and a service manager waiting for `READY=1` would otherwise
    /// time out with no reason given.
    pub fn from_env() -> Result<Supervision, SuperviseError> {
        let notifier = Notifier::from_env().map_err(SuperviseError::Environment)?;
        let watchdog = watchdog_from_env()
            .map_err(SuperviseError::Environment)?
            .filter(|_| notifier.is_some())
            .map(Watchdog::new);
        if let (Some(notifier), Some(dog)) = (&notifier, &watchdog) {
            info!(
                interval_ms = dog.interval_ms(),
                socket = ?notifier,
                "systemd watchdog: pinging at half the interval while every data-plane core beats"
            );
        }
        let supervision = Supervision {
            notifier,
            watchdog,
            ready_sent: false,
            status: String::new(),
            beats: Vec::new(),
            send_failed: false,
        };
        Ok(supervision)
    }

    /// Sends a status line before the node has started.
    pub fn starting(&mut self) {
        self.set_status("starting".to_string());
    }

    /// Call on every turn of the control loop, from the control thread.
    pub fn poll(&mut self, node: &Node, now_ms: u64) {
        if self.notifier.is_none() {
            return;
        }
        let view = node.leadership().load();
        let status = status_text(view, now_ms);
        if !self.ready_sent && serves(view) {
            self.ready_sent = true;
            self.status = status.clone();
            info!(status = %status, "notifying the service manager: ready");
            self.send(|n| n.ready(&status));
        } else if status != self.status {
            self.set_status(status);
        }
        if let Some(dog) = &mut self.watchdog {
            node.core_heartbeats_ms(&mut self.beats);
            match dog.poll(now_ms, &self.beats) {
                WatchdogAction::Idle => {}
                WatchdogAction::Ping { recovered } => {
                    if recovered {
                        warn!("every data-plane core beats again; watchdog pings resume");
                    }
                    self.send(Notifier::watchdog);
                }
                WatchdogAction::Withhold {
                    worker,
                    age_ms,
                    first_report,
                } => {
                    if first_report {
                        error!(
                            core = worker,
                            age_ms,
                            "data-plane core {worker} has not run for {age_ms} ms: withholding the watchdog ping, so the service manager restarts this node"
                        );
                    }
                }
            }
        }
    }

    /// Tells the service manager that shutdown has begun.
    pub fn stopping(&mut self) {
        self.send(|n| n.stopping("stopping"));
    }

    fn set_status(&mut self, status: String) {
        self.send(|n| n.status(&status));
        self.status = status;
    }

    fn send(&mut self, what: impl FnOnce(&Notifier) -> Result<(), NotifyError>) {
        let Some(notifier) = &self.notifier else {
            return;
        };
        match what(notifier) {
            Ok(()) => self.send_failed = false,
            Err(e) => {
                // Once per run of failures: a manager that went away must
                // not flood the log at the control loop's pace.
                if !self.send_failed {
                    warn!(error = %e, "could not notify the service manager");
                }
                self.send_failed = true;
            }
        }
    }
}

/// Whether a node in `view` serves clients: it leads, or it knows whom to
/// redirect them to.
fn serves(view: LeadershipView) -> bool {
    match view.role {
        Role::Leader => true,
        Role::Follower => view.leader_id != 0,
        Role::Candidate => false,
    }
}

/// The `STATUS=` text for `view`.
fn status_text(view: LeadershipView, now_ms: u64) -> String {
    let term = view.epoch;
    match view.role {
        Role::Leader if now_ms < view.grants_from_ms => {
            format!("leader term {term}, grace period (no grants yet)")
        }
        Role::Leader => format!("leader term {term}, granting"),
        Role::Follower if view.leader_id != 0 => {
            format!("follower of node {}, term {term}", view.leader_id)
        }
        Role::Follower => format!("follower in term {term}, no leader known"),
        Role::Candidate => format!("candidate in term {term}, no leader known"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(role: Role, leader_id: u16, grants_from_ms: u64) -> LeadershipView {
        LeadershipView {
            epoch: 3,
            role,
            leader_id,
            grants_from_ms,
            grants_until_ms: 0,
        }
    }

    #[test]
    fn ready_means_leading_or_following_a_known_leader() {
        assert!(serves(view(Role::Leader, 1, 0)));
        assert!(serves(view(Role::Follower, 2, 0)));
        assert!(!serves(view(Role::Follower, 0, 0)));
        assert!(!serves(view(Role::Candidate, 0, 0)));
    }

    #[test]
    fn status_names_the_role_term_and_leader() {
        assert_eq!(
            status_text(view(Role::Leader, 1, 500), 100),
            "leader term 3, grace period (no grants yet)"
        );
        assert_eq!(
            status_text(view(Role::Leader, 1, 500), 500),
            "leader term 3, granting"
        );
        assert_eq!(
            status_text(view(Role::Follower, 2, 0), 0),
            "follower of node 2, term 3"
        );
        assert_eq!(
            status_text(view(Role::Candidate, 0, 0), 0),
            "candidate in term 3, no leader known"
        );
    }
}
