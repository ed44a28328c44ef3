//! Following one resource's leases: grants, releases and expiries.
//!
//! The protocol's `Watch` answers when a newer token is issued; a release
//! or an expiry issues none. [`WatchTracker`] (sans-IO) therefore
//! long-polls with `Watch` while nobody holds the resource, and while
//! somebody does it re-polls every [`HELD_POLL_MS`] and asks `Check` for
//! the lease's remaining time once its expected expiry is reached (a
//! renewal moves it). A lease whose end is seen before its expected
//! expiry was released; one seen at or after it expired.
//!
//! Limits: a lease granted and ended between two polls (within
//! [`HELD_POLL_MS`]) is reported granted then released; tokens issued and
//! ended in between two answers are not reported at all (the next grant
//! says which token came after them). A release in the last
//! [`EXPIRY_SLACK_MS`] before expiry is reported as an expiry.
//!
//! [`crate::Client::watch_events`] drives it on a blocking client and
//! [`crate::AsyncClient::watch_stream`] as a `Stream`; both follow the
//! leader across the endpoint list and reconnect, as every lease call
//! does.

use crate::blocking::Watched;
use crate::lease::TokenOutcome;

/// Re-poll interval while the resource is held.
pub const HELD_POLL_MS: u64 = 250;
/// Long-poll wait while nobody holds the resource.
pub const IDLE_WAIT_MS: u64 = 30_000;
/// An end seen within this of the expected expiry counts as an expiry.
pub const EXPIRY_SLACK_MS: u64 = 10;

/// What happened to the watched resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchKind {
    /// A new lease (or, on the first answer, the lease held when the watch
    /// started).
    Granted,
    /// The lease ended before its expiry: given back (or taken over early
    /// by a leader change without replication).
    Released,
    /// The lease ran out.
    Expired,
}

impl WatchKind {
    /// Lowercase name, as the CLI prints it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            WatchKind::Granted => "granted",
            WatchKind::Released => "released",
            WatchKind::Expired => "expired",
        }
    }
}

/// One change of the watched resource's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// What happened.
    pub kind: WatchKind,
    /// The lease's token.
    pub token: u64,
}

/// The next request the tracker wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchStep {
    /// `Watch { after, wait_ms }`.
    Watch {
        /// Highest token known.
        after: u64,
        /// Longest wait.
        wait_ms: u32,
    },
    /// `Check { token }`: how long is the held lease good for?
    Check {
        /// The held lease's token.
        token: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Holder {
    token: u64,
    /// Expected expiry (client boot-time ms), once a `Check` said.
    expires_ms: Option<u64>,
    /// A `Check` is due (the expected expiry was reached, or it is unknown).
    check_due: bool,
}

/// The watch loop's state, sans-IO: ask [`WatchTracker::step`] what to send,
/// feed the answer to [`WatchTracker::on_watched`] or
/// [`WatchTracker::on_check`], and report the events they return.
#[derive(Debug, Clone)]
pub struct WatchTracker {
    after: u64,
    holder: Option<Holder>,
    started: bool,
}

impl WatchTracker {
    /// Reports leases with tokens above `after` (0: the current one too).
    #[must_use]
    pub fn new(after: u64) -> WatchTracker {
        WatchTracker {
            after,
            holder: None,
            started: false,
        }
    }

    /// The token of the lease held as far as the tracker knows.
    #[must_use]
    pub fn held_token(&self) -> Option<u64> {
        self.holder.map(|h| h.token)
    }

    /// What to send next, at boot-time `now_ms`.
    #[must_use]
    pub fn step(&self, now_ms: u64) -> WatchStep {
        let wait_ms = match self.holder {
            None if !self.started => 0,
            None => IDLE_WAIT_MS,
            Some(holder) if holder.check_due => {
                return WatchStep::Check {
                    token: holder.token,
                }
            }
            Some(Holder {
                expires_ms: Some(expires_ms),
                ..
            }) => (expires_ms + 2 * EXPIRY_SLACK_MS)
                .saturating_sub(now_ms)
                .clamp(1, HELD_POLL_MS),
            Some(_) => HELD_POLL_MS,
        };
        WatchStep::Watch {
            after: self.after,
            wait_ms: u32::try_from(wait_ms).expect("bounded waits"),
        }
    }

    fn ended(&mut self, now_ms: u64) -> Option<WatchEvent> {
        let holder = self.holder.take()?;
        let kind = match holder.expires_ms {
            Some(expires_ms) if now_ms + EXPIRY_SLACK_MS >= expires_ms => WatchKind::Expired,
            _ => WatchKind::Released,
        };
        Some(WatchEvent {
            kind,
            token: holder.token,
        })
    }

    /// A `Watch` answer arrived at `now_ms`.
    pub fn on_watched(&mut self, now_ms: u64, watched: Watched) -> Vec<WatchEvent> {
        let mut events = Vec::new();
        let first = !self.started;
        self.started = true;
        if let Some(holder) = self.holder {
            if watched.current_token != holder.token {
                events.extend(self.ended(now_ms));
            } else if holder.expires_ms.is_some_and(|e| now_ms >= e) {
                // Past the expected expiry and still current: renewed?
                self.holder = Some(Holder {
                    check_due: true,
                    ..holder
                });
            }
        }
        if watched.last_token > self.after {
            self.after = watched.last_token;
            if watched.current_token == watched.last_token {
                events.push(WatchEvent {
                    kind: WatchKind::Granted,
                    token: watched.last_token,
                });
                self.holder = Some(Holder {
                    token: watched.last_token,
                    expires_ms: None,
                    check_due: true,
                });
            } else if !first {
                // Granted and over between two polls.
                events.push(WatchEvent {
                    kind: WatchKind::Granted,
                    token: watched.last_token,
                });
                events.push(WatchEvent {
                    kind: WatchKind::Released,
                    token: watched.last_token,
                });
            }
        }
        events
    }

    /// A `Check` answer for the held lease arrived at `now_ms`.
    pub fn on_check(&mut self, now_ms: u64, outcome: &TokenOutcome) -> Vec<WatchEvent> {
        let Some(holder) = self.holder else {
            return Vec::new();
        };
        match outcome {
            TokenOutcome::Current { remaining_ms } => {
                self.holder = Some(Holder {
                    expires_ms: Some(now_ms + u64::from(*remaining_ms)),
                    check_due: false,
                    ..holder
                });
                Vec::new()
            }
            _ => self.ended(now_ms).into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watched(current_token: u64, last_token: u64, after: u64) -> Watched {
        Watched {
            current_token,
            last_token,
            changed: last_token > after,
        }
    }

    fn kinds(events: &[WatchEvent]) -> Vec<(WatchKind, u64)> {
        events.iter().map(|e| (e.kind, e.token)).collect()
    }

    #[test]
    fn grant_release_grant_expiry() {
        let mut t = WatchTracker::new(0);
        assert_eq!(
            t.step(0),
            WatchStep::Watch {
                after: 0,
                wait_ms: 0
            }
        );
        // Nothing held at the start: nothing to say.
        assert!(t.on_watched(0, watched(0, 0, 0)).is_empty());
        assert_eq!(
            t.step(0),
            WatchStep::Watch {
                after: 0,
                wait_ms: 30_000
            }
        );
        let e = t.on_watched(100, watched(5, 5, 0));
        assert_eq!(kinds(&e), [(WatchKind::Granted, 5)]);
        assert_eq!(t.step(100), WatchStep::Check { token: 5 });
        assert!(t
            .on_check(
                100,
                &TokenOutcome::Current {
                    remaining_ms: 1_000
                }
            )
            .is_empty());
        assert_eq!(
            t.step(100),
            WatchStep::Watch {
                after: 5,
                wait_ms: 250
            }
        );
        assert_eq!(
            t.step(1_000),
            WatchStep::Watch {
                after: 5,
                wait_ms: 120
            }
        );
        // Still current at 350: held. Gone at 600, long before 1 100: released.
        assert!(t.on_watched(350, watched(5, 5, 5)).is_empty());
        let e = t.on_watched(600, watched(0, 5, 5));
        assert_eq!(kinds(&e), [(WatchKind::Released, 5)]);
        // The next grant, then it runs out.
        let e = t.on_watched(700, watched(6, 6, 5));
        assert_eq!(kinds(&e), [(WatchKind::Granted, 6)]);
        let _ = t.on_check(700, &TokenOutcome::Current { remaining_ms: 300 });
        // At its expiry it is still current (the server's clock): check.
        assert!(t.on_watched(1_010, watched(6, 6, 6)).is_empty());
        assert_eq!(t.step(1_010), WatchStep::Check { token: 6 });
        let e = t.on_check(
            1_015,
            &TokenOutcome::Stale {
                current_token: 0,
                last_token: 6,
            },
        );
        assert_eq!(kinds(&e), [(WatchKind::Expired, 6)]);
    }

    #[test]
    fn a_renewal_moves_the_expected_expiry() {
        let mut t = WatchTracker::new(0);
        let _ = t.on_watched(0, watched(5, 5, 0));
        let _ = t.on_check(0, &TokenOutcome::Current { remaining_ms: 300 });
        assert!(t.on_watched(320, watched(5, 5, 5)).is_empty());
        assert_eq!(t.step(320), WatchStep::Check { token: 5 });
        let _ = t.on_check(320, &TokenOutcome::Current { remaining_ms: 280 });
        // Released at 400, before the renewed expiry at 600.
        let e = t.on_watched(400, watched(0, 5, 5));
        assert_eq!(kinds(&e), [(WatchKind::Released, 5)]);
    }

    #[test]
    fn a_takeover_between_polls_ends_the_old_lease_and_grants_the_new() {
        let mut t = WatchTracker::new(0);
        let _ = t.on_watched(0, watched(5, 5, 0));
        let _ = t.on_check(0, &TokenOutcome::Current { remaining_ms: 100 });
        let e = t.on_watched(150, watched(9, 9, 5));
        assert_eq!(
            kinds(&e),
            [(WatchKind::Expired, 5), (WatchKind::Granted, 9)]
        );
        // A lease granted and gone between polls.
        let _ = t.on_check(150, &TokenOutcome::Current { remaining_ms: 100 });
        let e = t.on_watched(200, watched(0, 12, 9));
        assert_eq!(
            kinds(&e),
            [
                (WatchKind::Released, 9),
                (WatchKind::Granted, 12),
                (WatchKind::Released, 12)
            ]
        );
        // After a failover the new leader may know no token for a free
        // resource: nothing changes, the cursor stays.
        assert!(t.on_watched(300, watched(0, 0, 12)).is_empty());
        assert_eq!(
            t.step(300),
            WatchStep::Watch {
                after: 12,
                wait_ms: 30_000
            }
        );
    }

    #[test]
    fn after_skips_older_tokens() {
        let mut t = WatchTracker::new(5);
        assert!(t.on_watched(0, watched(5, 5, 5)).is_empty());
        assert_eq!(t.held_token(), None);
    }
}
