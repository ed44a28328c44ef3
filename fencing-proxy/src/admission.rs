//! The order of events around a fence change, for one export's writes
//! (S3), as a plain type: no socket, no clock, no thread, no `.await`.
//!
//! Every write-like command (WRITE, TRIM, WRITE_ZEROES) asks
//! [`Admission::admit`] with its token and the export's durable fence as
//! the shell read it just before ([`Durable`]), and does what the
//! [`Step`] says:
//!
//! 1. **Fence check.** Damaged fence state → [`Step::Damaged`]; a token
//!    below the durable fence → [`Step::Fenced`]. Nothing reaches the
//!    backend.
//! 2. **Confirmation.** A token at or above the fence while the lease
//!    service has not confirmed the fence since the start or a lost watch
//!    waits ([`Step::AwaitConfirmation`]) up to `lease_service.timeout`;
//!    then `lease_service.require_check` refuses it
//!    ([`Step::Unconfirmed`]) or lets it on, marked, to the gate.
//! 3. **Gate raise.** The gate's in-memory fence rises to the durable
//!    fence (never above it: asserted).
//! 4. **Durable raise.** A token above the durable fence
//!    ([`Step::NeedsDurableRaise`]) goes only after the fence store made it
//!    durable (the shell does that on a blocking thread, then calls
//!    [`Admission::raised`]); a failed raise never lets it go: the gate
//!    stays below it, so asking again says the same.
//! 5. **Drain.** A token at the fence waits ([`Step::DrainFirst`]) while
//!    writes under older tokens that passed the gate before the fence rose
//!    are still in flight, so they reach the backend first.
//! 6. **Go.** The write is counted in flight under its token until the
//!    shell calls [`Admission::done`] once the backend call returned.
//!
//! A handshake that binds a connection to a token follows the same order
//! through [`Admission::bind`] ([`Binding`]): damaged or stale tokens are
//! refused, the fence's own token waits for confirmation, and a token
//! above the fence is first checked with the lease service
//! ([`Admission::checked`], [`Checked`]) and made durable before the
//! handshake completes ([`Admission::bound`]).
//!
//! The shell keeps the one rule this type cannot: no `.await` between
//! reading [`Durable`] and calling `admit`, and none between a
//! [`Step::Go`] and the backend call's start other than the call itself
//! (docs/ARCHITECTURE.md, "S3 with many writes in flight").
//!
//! It never raises its fence above a durable value, never says `Go` to a
//! token below the fence, and never says `Go` to a token while an older
//! token's write is in flight.
//!
//! ```
//! use palisade_fencing_proxy::admission::{Admission, Confirmation, Durable, Step};
//!
//! let mut admission = Admission::new(5, true);
//! let at = |fence| Durable { fence, damaged: false, confirmation: Confirmation::Confirmed };
//! assert_eq!(admission.admit(5, at(5)), Step::Go { unconfirmed_ms: None });
//! // A new holder's token 7: durable first...
//! assert_eq!(admission.admit(7, at(5)), Step::NeedsDurableRaise);
//! admission.raised(7, 7);
//! // ...then the old holder's write in flight drains...
//! assert_eq!(admission.admit(7, at(7)), Step::DrainFirst);
//! assert_eq!(admission.admit(5, at(7)), Step::Fenced { fence: 7 });
//! admission.done(5);
//! // ...and only then the new token goes.
//! assert_eq!(admission.admit(7, at(7)), Step::Go { unconfirmed_ms: None });
//! ```

use crate::gate::{Admit, Gate};
use crate::lease::Verdict;

/// Whether the lease service vouched for the durable fence lately, as the
/// shell judged it from the export's `FenceCell` and the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmation {
    /// The watch learnt the newest token from a serving leader and still
    /// follows grants.
    Confirmed,
    /// Unconfirmed for `waited_ms`, less than `lease_service.timeout`:
    /// wait for the watch.
    Waiting {
        /// Since the fence became unconfirmed.
        waited_ms: u64,
    },
    /// Unconfirmed for `waited_ms`, at least `lease_service.timeout`:
    /// `lease_service.require_check` decides.
    Expired {
        /// Since the fence became unconfirmed.
        waited_ms: u64,
    },
}

impl Confirmation {
    /// Judges a fence that is `confirmed`, or unconfirmed for `waited_ms`,
    /// when writes wait at most `wait_ms` for confirmation.
    #[must_use]
    pub fn judge(confirmed: bool, waited_ms: u64, wait_ms: u64) -> Confirmation {
        if confirmed {
            Confirmation::Confirmed
        } else if waited_ms < wait_ms {
            Confirmation::Waiting { waited_ms }
        } else {
            Confirmation::Expired { waited_ms }
        }
    }
}

/// The export's durable fence as the shell read it just before asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durable {
    /// The durable fence (the `FenceCell`, raised only after the store
    /// returned).
    pub fence: u64,
    /// The store reported damage: writes are refused until a repair.
    pub damaged: bool,
    /// Whether the lease service confirmed the fence.
    pub confirmation: Confirmation,
}

/// What a write under a token does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Go to the backend; call [`Admission::done`] with the same token once
    /// the backend call returned. `unconfirmed_ms` is set when it goes on
    /// the local fence alone, the lease service silent that long
    /// (`lease_service.require_check = false`): log it.
    Go {
        /// How long the fence has been unconfirmed, if it is.
        unconfirmed_ms: Option<u64>,
    },
    /// The token is below the fence: refuse with `EPERM`.
    Fenced {
        /// The fence that refused it.
        fence: u64,
    },
    /// The fence state is damaged: refuse with `EPERM`.
    Damaged,
    /// The lease service has not confirmed the fence for `waited_ms` and
    /// the proxy requires it (`lease_service.require_check = true`):
    /// refuse with `EPERM`.
    Unconfirmed {
        /// Since the fence became unconfirmed.
        waited_ms: u64,
    },
    /// Wait (and wake the watch) until the lease service confirmed the
    /// fence, then ask again.
    AwaitConfirmation,
    /// Older-token writes are in flight: ask again once one finished.
    DrainFirst,
    /// The token is above the durable fence: make it durable, call
    /// [`Admission::raised`], ask again. If that fails, refuse the write.
    NeedsDurableRaise,
}

/// What a handshake binding a connection to a token does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// The connection is bound to the token (its writes still ask
    /// [`Admission::admit`]). `unconfirmed_ms` as in [`Step::Go`]: log it.
    Bound {
        /// How long the fence has been unconfirmed, if it is.
        unconfirmed_ms: Option<u64>,
    },
    /// The fence state is damaged: refuse the token.
    Damaged,
    /// The token is below the fence: refuse it.
    Stale {
        /// The fence that refused it.
        fence: u64,
    },
    /// Wait (and wake the watch) until the lease service confirmed the
    /// fence, then ask again.
    AwaitConfirmation,
    /// The lease service has not confirmed the fence for `waited_ms` and
    /// the proxy requires it: refuse the token.
    Unconfirmed {
        /// Since the fence became unconfirmed.
        waited_ms: u64,
    },
    /// The token is above the fence: ask the lease service whether it is
    /// current, then call [`Admission::checked`].
    AskLeaseService,
}

/// What a handshake does with the lease service's verdict on a token above
/// the fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// Make `to` durable, then call [`Admission::bound`]. `vouched` is false
    /// when the service did not answer and the local fence alone decides
    /// (`lease_service.require_check = false`): log it. If the raise fails,
    /// refuse the token.
    Raise {
        /// The token to make durable (the one asked about).
        to: u64,
        /// Whether the lease service vouched for it.
        vouched: bool,
    },
    /// The token is not the current lease: refuse it; first raise the fence
    /// to `newest` (best effort) if `raise_first`, fencing its holder
    /// sooner.
    RefuseStale {
        /// The newest token the service vouches for.
        newest: u64,
        /// Whether `newest` is above the durable fence.
        raise_first: bool,
    },
    /// The service did not answer and the proxy requires it
    /// (`lease_service.require_check = true`): refuse the token.
    RefuseUnvouched,
}

/// One export's write admission: the gate (its fence and the writes in
/// flight per token) and the confirmation policy.
#[derive(Debug)]
pub struct Admission {
    gate: Gate,
    /// `lease_service.require_check`.
    require_check: bool,
}

impl Admission {
    /// An export whose durable fence is `fence` at the start.
    #[must_use]
    pub fn new(fence: u64, require_check: bool) -> Admission {
        Admission {
            gate: Gate::new(fence),
            require_check,
        }
    }

    /// The gate's fence: the highest durable fence it was told of.
    #[must_use]
    pub fn fence(&self) -> u64 {
        self.gate.fence()
    }

    /// Writes in flight, all tokens.
    #[must_use]
    pub fn in_flight(&self) -> u32 {
        self.gate.inflight()
    }

    /// Asks whether a write under `token` may go now, the durable fence
    /// being `durable` (read just before, with no `.await` in between). On
    /// [`Step::Go`] the write is counted in flight until [`Admission::done`].
    pub fn admit(&mut self, token: u64, durable: Durable) -> Step {
        // The gate only ever learns durable values, and the durable fence
        // only rises, so the gate is never ahead of it.
        assert!(
            self.gate.fence() <= durable.fence,
            "the gate's fence {} is above the durable fence {}",
            self.gate.fence(),
            durable.fence
        );
        if durable.damaged {
            return Step::Damaged;
        }
        if token < durable.fence {
            self.gate.raise(durable.fence);
            return Step::Fenced {
                fence: durable.fence,
            };
        }
        let unconfirmed_ms = match durable.confirmation {
            Confirmation::Confirmed => None,
            Confirmation::Waiting { .. } => return Step::AwaitConfirmation,
            Confirmation::Expired { waited_ms } if self.require_check => {
                return Step::Unconfirmed { waited_ms }
            }
            Confirmation::Expired { waited_ms } => Some(waited_ms),
        };
        self.gate.raise(durable.fence);
        match self.gate.admit(token) {
            Admit::Go => {
                // S3: only the fence's own token goes, and only once no
                // older token's write is in flight (the gate checked it).
                assert_eq!(token, self.gate.fence(), "a write goes at the fence only");
                Step::Go { unconfirmed_ms }
            }
            Admit::Fenced { fence } => {
                unreachable!("token {token} at or above the durable fence was fenced at {fence}")
            }
            Admit::Drain => Step::DrainFirst,
            Admit::Unraised => Step::NeedsDurableRaise,
        }
    }

    /// The fence store made `durable` (at least `token`, higher if a newer
    /// grant raced) the export's fence, after [`Step::NeedsDurableRaise`]
    /// for `token`. Call only once the store returned `Ok`.
    pub fn raised(&mut self, token: u64, durable: u64) {
        assert!(
            durable >= token,
            "the store made {durable} durable when asked for {token}"
        );
        self.gate.raise(durable);
    }

    /// Asks whether a handshake may bind its connection to `token`, the
    /// durable fence being `durable`. `go` is false for `NBD_OPT_INFO`,
    /// which only asks and never raises the fence.
    #[must_use]
    pub fn bind(&self, token: u64, durable: Durable, go: bool) -> Binding {
        if durable.damaged {
            return Binding::Damaged;
        }
        if token < durable.fence {
            return Binding::Stale {
                fence: durable.fence,
            };
        }
        if !go {
            return Binding::Bound {
                unconfirmed_ms: None,
            };
        }
        if token > durable.fence {
            return Binding::AskLeaseService;
        }
        // The fence's own token: fine if the fence is current. After a
        // start or a lost watch, learn that first, so the holder a newer
        // grant superseded meanwhile is told so now.
        match durable.confirmation {
            Confirmation::Confirmed => Binding::Bound {
                unconfirmed_ms: None,
            },
            Confirmation::Waiting { .. } => Binding::AwaitConfirmation,
            Confirmation::Expired { waited_ms } if self.require_check => {
                Binding::Unconfirmed { waited_ms }
            }
            Confirmation::Expired { waited_ms } => Binding::Bound {
                unconfirmed_ms: Some(waited_ms),
            },
        }
    }

    /// The lease service's `verdict` on `token`, above the durable fence
    /// `fence`, after [`Binding::AskLeaseService`].
    #[must_use]
    pub fn checked(&self, token: u64, verdict: &Verdict, fence: u64) -> Checked {
        match verdict {
            Verdict::Current => Checked::Raise {
                to: token,
                vouched: true,
            },
            Verdict::Stale { newest } => Checked::RefuseStale {
                newest: *newest,
                raise_first: *newest > fence,
            },
            Verdict::Unreachable(_) if self.require_check => Checked::RefuseUnvouched,
            // The local fence still holds: accepting a higher token can
            // only fence more writers, never fewer.
            Verdict::Unreachable(_) => Checked::Raise {
                to: token,
                vouched: false,
            },
        }
    }

    /// The store made `durable` the fence after [`Checked::Raise`] for
    /// `token`: the handshake binds, unless a newer grant raced it.
    #[must_use]
    pub fn bound(&self, token: u64, durable: u64) -> Binding {
        assert!(
            durable >= token,
            "the store made {durable} durable when asked for {token}"
        );
        if token < durable {
            return Binding::Stale { fence: durable };
        }
        Binding::Bound {
            unconfirmed_ms: None,
        }
    }

    /// A write that got [`Step::Go`] under `token` finished at the backend
    /// (successfully or not).
    pub fn done(&mut self, token: u64) {
        assert!(
            self.gate.done(token),
            "done({token}) for a write that never went"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(fence: u64) -> Durable {
        Durable {
            fence,
            damaged: false,
            confirmation: Confirmation::Confirmed,
        }
    }

    const GO: Step = Step::Go {
        unconfirmed_ms: None,
    };

    #[test]
    fn a_stale_token_is_fenced() {
        let mut admission = Admission::new(5, true);
        assert_eq!(admission.admit(4, at(5)), Step::Fenced { fence: 5 });
        assert_eq!(admission.admit(1, at(5)), Step::Fenced { fence: 5 });
        assert_eq!(admission.in_flight(), 0);
        // Fenced whatever the confirmation: a token below the fence needs
        // no lease service to be refused.
        let waiting = Durable {
            confirmation: Confirmation::Waiting { waited_ms: 0 },
            ..at(5)
        };
        assert_eq!(admission.admit(4, waiting), Step::Fenced { fence: 5 });
    }

    #[test]
    fn the_fences_own_token_goes() {
        let mut admission = Admission::new(5, true);
        assert_eq!(admission.admit(5, at(5)), GO);
        assert_eq!(admission.admit(5, at(5)), GO);
        assert_eq!(admission.in_flight(), 2);
        admission.done(5);
        admission.done(5);
        assert_eq!(admission.in_flight(), 0);
    }

    #[test]
    fn a_newer_token_raises_durably_and_drains_older_writes_before_its_first_write() {
        let mut admission = Admission::new(5, true);
        assert_eq!(admission.admit(5, at(5)), GO);
        assert_eq!(admission.admit(5, at(5)), GO);
        // Token 7 arrives while the durable fence is still 5.
        assert_eq!(admission.admit(7, at(5)), Step::NeedsDurableRaise);
        admission.raised(7, 7);
        assert_eq!(admission.fence(), 7);
        // Durable now; the two older writes are still in flight.
        assert_eq!(admission.admit(7, at(7)), Step::DrainFirst);
        admission.done(5);
        assert_eq!(admission.admit(7, at(7)), Step::DrainFirst);
        admission.done(5);
        assert_eq!(admission.admit(7, at(7)), GO);
    }

    #[test]
    fn a_raise_by_the_watch_is_learnt_from_the_durable_fence() {
        let mut admission = Admission::new(5, true);
        assert_eq!(admission.admit(5, at(5)), GO);
        // The watch made 7 durable on another thread: no raise needed here.
        assert_eq!(admission.admit(7, at(7)), Step::DrainFirst);
        assert_eq!(admission.fence(), 7);
        admission.done(5);
        assert_eq!(admission.admit(7, at(7)), GO);
    }

    #[test]
    fn a_failed_durable_raise_never_lets_the_new_token_go() {
        let mut admission = Admission::new(5, true);
        for _ in 0..3 {
            // The shell's raise failed each time: it never calls `raised`,
            // and the durable fence it reads stays at 5.
            assert_eq!(admission.admit(7, at(5)), Step::NeedsDurableRaise);
            assert_eq!(admission.fence(), 5);
            assert_eq!(admission.in_flight(), 0);
        }
        // The old holder still writes: the fence never rose.
        assert_eq!(admission.admit(5, at(5)), GO);
    }

    #[test]
    fn older_writes_after_a_raise_are_fenced() {
        let mut admission = Admission::new(5, true);
        assert_eq!(admission.admit(5, at(5)), GO);
        assert_eq!(admission.admit(7, at(5)), Step::NeedsDurableRaise);
        admission.raised(7, 7);
        // Concurrent writes of the old holder, asked after the raise.
        for _ in 0..4 {
            assert_eq!(admission.admit(5, at(7)), Step::Fenced { fence: 7 });
            assert_eq!(admission.admit(6, at(7)), Step::Fenced { fence: 7 });
        }
        assert_eq!(admission.in_flight(), 1, "only the one admitted before");
        admission.done(5);
        assert_eq!(admission.admit(7, at(7)), GO);
    }

    #[test]
    fn a_raced_raise_fences_the_token_that_asked() {
        let mut admission = Admission::new(5, true);
        assert_eq!(admission.admit(7, at(5)), Step::NeedsDurableRaise);
        // A newer grant (9) was made durable while 7's raise ran.
        admission.raised(7, 9);
        assert_eq!(admission.admit(7, at(9)), Step::Fenced { fence: 9 });
    }

    #[test]
    fn damaged_state_refuses_every_token() {
        let mut admission = Admission::new(5, false);
        let damaged = Durable {
            damaged: true,
            ..at(5)
        };
        for token in [4, 5, 6] {
            assert_eq!(admission.admit(token, damaged), Step::Damaged);
        }
        assert_eq!(admission.in_flight(), 0);
    }

    #[test]
    fn an_unconfirmed_fence_waits_then_follows_require_check() {
        let waiting = Durable {
            confirmation: Confirmation::judge(false, 10, 1_000),
            ..at(5)
        };
        let expired = Durable {
            confirmation: Confirmation::judge(false, 1_000, 1_000),
            ..at(5)
        };
        let mut strict = Admission::new(5, true);
        assert_eq!(strict.admit(5, waiting), Step::AwaitConfirmation);
        assert_eq!(strict.admit(6, waiting), Step::AwaitConfirmation);
        assert_eq!(
            strict.admit(5, expired),
            Step::Unconfirmed { waited_ms: 1_000 }
        );
        assert_eq!(strict.in_flight(), 0);
        let mut lenient = Admission::new(5, false);
        assert_eq!(lenient.admit(5, waiting), Step::AwaitConfirmation);
        assert_eq!(
            lenient.admit(5, expired),
            Step::Go {
                unconfirmed_ms: Some(1_000)
            }
        );
        assert_eq!(Confirmation::judge(true, 5_000, 1), Confirmation::Confirmed);
    }

    #[test]
    #[should_panic(expected = "above the durable fence")]
    fn a_gate_ahead_of_the_durable_fence_is_a_bug() {
        let mut admission = Admission::new(5, true);
        admission.raised(7, 7);
        let _ = admission.admit(7, at(5));
    }

    #[test]
    #[should_panic(expected = "never went")]
    fn done_without_go_is_a_bug() {
        let mut admission = Admission::new(5, true);
        admission.done(5);
    }

    const BOUND: Binding = Binding::Bound {
        unconfirmed_ms: None,
    };

    #[test]
    fn a_handshake_refuses_damaged_and_stale_tokens() {
        let admission = Admission::new(5, false);
        let damaged = Durable {
            damaged: true,
            ..at(5)
        };
        assert_eq!(admission.bind(5, damaged, true), Binding::Damaged);
        assert_eq!(admission.bind(4, at(5), true), Binding::Stale { fence: 5 });
        assert_eq!(admission.bind(4, at(5), false), Binding::Stale { fence: 5 });
    }

    #[test]
    fn a_handshake_under_the_fences_own_token_waits_for_confirmation() {
        let waiting = Durable {
            confirmation: Confirmation::Waiting { waited_ms: 3 },
            ..at(5)
        };
        let expired = Durable {
            confirmation: Confirmation::Expired { waited_ms: 2_000 },
            ..at(5)
        };
        let strict = Admission::new(5, true);
        assert_eq!(strict.bind(5, at(5), true), BOUND);
        assert_eq!(strict.bind(5, waiting, true), Binding::AwaitConfirmation);
        assert_eq!(
            strict.bind(5, expired, true),
            Binding::Unconfirmed { waited_ms: 2_000 }
        );
        // The watch raised the fence while the handshake waited.
        assert_eq!(strict.bind(5, at(6), true), Binding::Stale { fence: 6 });
        let lenient = Admission::new(5, false);
        assert_eq!(
            lenient.bind(5, expired, true),
            Binding::Bound {
                unconfirmed_ms: Some(2_000)
            }
        );
        // NBD_OPT_INFO only asks: no wait, no raise.
        assert_eq!(strict.bind(5, waiting, false), BOUND);
        assert_eq!(strict.bind(9, at(5), false), BOUND);
    }

    #[test]
    fn a_token_above_the_fence_is_checked_then_raised_durably_before_it_binds() {
        let admission = Admission::new(5, true);
        assert_eq!(admission.bind(7, at(5), true), Binding::AskLeaseService);
        assert_eq!(
            admission.checked(7, &Verdict::Current, 5),
            Checked::Raise {
                to: 7,
                vouched: true
            }
        );
        assert_eq!(admission.bound(7, 7), BOUND);
        // A newer grant was made durable while the raise ran.
        assert_eq!(admission.bound(7, 9), Binding::Stale { fence: 9 });
    }

    #[test]
    fn a_stale_or_unvouched_token_above_the_fence_is_refused() {
        let strict = Admission::new(5, true);
        assert_eq!(
            strict.checked(7, &Verdict::Stale { newest: 8 }, 5),
            Checked::RefuseStale {
                newest: 8,
                raise_first: true
            }
        );
        assert_eq!(
            strict.checked(7, &Verdict::Stale { newest: 0 }, 5),
            Checked::RefuseStale {
                newest: 0,
                raise_first: false
            }
        );
        let silent = Verdict::Unreachable("timed out".into());
        assert_eq!(strict.checked(7, &silent, 5), Checked::RefuseUnvouched);
        assert_eq!(
            Admission::new(5, false).checked(7, &silent, 5),
            Checked::Raise {
                to: 7,
                vouched: false
            }
        );
    }

    proptest! {
        /// Writes, durable raises that succeed or fail, and completions in
        /// any order: once a write under a token went, no write under an
        /// older token goes; nothing goes below the durable fence; a token
        /// goes only once it is durable.
        #[test]
        fn s3_holds_whatever_the_interleaving(
            ops in proptest::collection::vec((0u8..4, 1u64..6), 1..300)
        ) {
            let mut admission = Admission::new(1, true);
            let mut durable = 1u64;
            let mut running: Vec<u64> = Vec::new();
            let mut newest_gone = 0u64;
            for (op, token) in ops {
                match op {
                    0 => match admission.admit(token, at(durable)) {
                        Step::Go { .. } => {
                            prop_assert!(token == durable);
                            prop_assert!(token >= newest_gone);
                            prop_assert!(running.iter().all(|&t| t >= token));
                            newest_gone = token;
                            running.push(token);
                        }
                        Step::Fenced { fence } => {
                            prop_assert!(token < fence);
                            prop_assert_eq!(fence, durable);
                        }
                        Step::DrainFirst => {
                            prop_assert!(running.iter().any(|&t| t < token));
                        }
                        Step::NeedsDurableRaise => prop_assert!(token > durable),
                        other => prop_assert!(false, "unexpected {:?}", other),
                    },
                    // A durable raise to `token` that succeeded (the
                    // store's max), told to the admission.
                    1 => {
                        if token > admission.fence() {
                            durable = durable.max(token);
                            admission.raised(token, durable);
                        }
                    }
                    // A raise by the watch: durable, not yet seen.
                    2 => durable = durable.max(token),
                    _ => {
                        if let Some(t) = running.pop() {
                            admission.done(t);
                        }
                    }
                }
                prop_assert!(admission.fence() <= durable);
                prop_assert_eq!(admission.in_flight() as usize, running.len());
            }
        }
    }
}
