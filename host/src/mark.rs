//! Packet marking of sockets: a DSCP in the IP header and the matching
//! `SO_PRIORITY` inside the host.
//!
//! Client connections carry `dataplane.client_dscp` (EF by default) and
//! peer (raft) connections `qos.peer_dscp` (CS6 by default); everything
//! else Palisade sends is unmarked (DSCP 0, best effort). Switches and the
//! node's own qdisc tree (see the control plane's `qos` module) use the
//! DSCP to send these packets ahead of bulk traffic; `SO_PRIORITY` is what
//! the host's own queueing sees (`pfifo_fast` bands, `mqprio`, VLAN PCP
//! through `egress-qos-map`).
//!
//! What it never does: change anything but the socket it is given, or fail
//! a connection because the priority needs a capability the process lacks
//! (it falls back and says so once).
//!
//! ```
//! use palisade_host::mark::{mark, marks_of, priority_for_dscp};
//! use socket2::SockRef;
//!
//! let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
//! let sock = SockRef::from(&listener);
//! let marked = mark(&sock, false, 46)?; // EF
//! assert_eq!(marked.priority, priority_for_dscp(46));
//! assert_eq!(marks_of(&sock, false)?, marked);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use socket2::SockRef;
use tracing::warn;

/// `TC_PRIO_BESTEFFORT`: unmarked traffic.
const PRIO_BESTEFFORT: u32 = 0;
/// `TC_PRIO_FILLER`: lower effort (CS1, AF1x).
const PRIO_FILLER: u32 = 1;
/// `TC_PRIO_BULK` (CS2, AF2x).
const PRIO_BULK: u32 = 2;
/// `TC_PRIO_INTERACTIVE_BULK` (CS3, CS4, AF3x, AF4x).
const PRIO_INTERACTIVE_BULK: u32 = 4;
/// `TC_PRIO_INTERACTIVE` (CS5, EF): the highest priority any process may
/// set.
pub const PRIO_INTERACTIVE: u32 = 6;
/// `TC_PRIO_CONTROL` (CS6, CS7): needs `CAP_NET_ADMIN` (or, on recent
/// kernels, `CAP_NET_RAW`).
pub const PRIO_CONTROL: u32 = 7;

/// Whether the fall-back from [`PRIO_CONTROL`] has been logged.
static PRIORITY_DENIED_LOGGED: AtomicBool = AtomicBool::new(false);

/// A socket's marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marked {
    /// The DSCP, `0..=63`.
    pub dscp: u8,
    /// The `SO_PRIORITY`, `0..=7`.
    pub priority: u32,
}

/// The `SO_PRIORITY` that goes with `dscp`, by its class selector (the top
/// three bits), named after the kernel's `TC_PRIO_*`:
///
/// | DSCP                      | class | priority               |
/// |---------------------------|-------|------------------------|
/// | 0..=7 (unmarked)          | 0     | 0 best effort          |
/// | CS1, AF1x (8..=15)        | 1     | 1 filler               |
/// | CS2, AF2x (16..=23)       | 2     | 2 bulk                 |
/// | CS3, CS4, AF3x, AF4x      | 3, 4  | 4 interactive bulk     |
/// | CS5, EF (40..=47)         | 5     | 6 interactive          |
/// | CS6, CS7 (48..=63)        | 6, 7  | 7 control              |
///
/// ```
/// use palisade_host::mark::priority_for_dscp;
/// assert_eq!(priority_for_dscp(46), 6); // EF
/// assert_eq!(priority_for_dscp(48), 7); // CS6
/// assert_eq!(priority_for_dscp(0), 0);
/// ```
#[must_use]
pub const fn priority_for_dscp(dscp: u8) -> u32 {
    match dscp >> 3 {
        0 => PRIO_BESTEFFORT,
        1 => PRIO_FILLER,
        2 => PRIO_BULK,
        3 | 4 => PRIO_INTERACTIVE_BULK,
        5 => PRIO_INTERACTIVE,
        _ => PRIO_CONTROL,
    }
}

/// Marks `sock` with DSCP `dscp` and the priority
/// [`priority_for_dscp`] gives. Call on a socket before it connects or
/// listens, and again on each accepted socket.
///
/// IPv4 sockets get `IP_TOS`; IPv6 sockets get `IPV6_TCLASS` and also
/// `IP_TOS`, which Linux uses for IPv4 peers reached through v4-mapped
/// addresses on a dual-stack socket. The priority is set last because
/// `IP_TOS` overwrites it with the kernel's legacy TOS mapping. When the
/// process lacks the capability for priority 7 it uses 6 (the highest any
/// process may set) and logs that once per process.
///
/// # Errors
///
/// The first `setsockopt` that failed, other than the fall-back above.
pub fn mark(sock: &SockRef<'_>, ipv6: bool, dscp: u8) -> io::Result<Marked> {
    assert!(dscp <= 63, "a DSCP is six bits, got {dscp}");
    let tos = u32::from(dscp) << 2;
    if ipv6 {
        sock.set_tclass_v6(tos)?;
    }
    sock.set_tos_v4(tos)?;
    let wanted = priority_for_dscp(dscp);
    let priority = match sock.set_priority(wanted) {
        Ok(()) => wanted,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied && wanted > PRIO_INTERACTIVE => {
            if !PRIORITY_DENIED_LOGGED.swap(true, Ordering::Relaxed) {
                warn!(
                    dscp,
                    wanted,
                    used = PRIO_INTERACTIVE,
                    "SO_PRIORITY {wanted} (network control) needs CAP_NET_ADMIN, which this \
                     process lacks; its sockets use priority {PRIO_INTERACTIVE} instead (the DSCP \
                     mark is unaffected)"
                );
            }
            sock.set_priority(PRIO_INTERACTIVE)?;
            PRIO_INTERACTIVE
        }
        Err(e) => return Err(e),
    };
    Ok(Marked { dscp, priority })
}

/// Reads back the marks of `sock` (the DSCP from `IPV6_TCLASS` on IPv6
/// sockets, `IP_TOS` on IPv4 ones). For tests and diagnostics.
///
/// # Errors
///
/// A failed `getsockopt`.
pub fn marks_of(sock: &SockRef<'_>, ipv6: bool) -> io::Result<Marked> {
    let tos = if ipv6 {
        sock.tclass_v6()?
    } else {
        sock.tos_v4()?
    };
    Ok(Marked {
        dscp: u8::try_from(tos >> 2).unwrap_or(u8::MAX),
        priority: sock.priority()?,
    })
}

/// Whether the priority fall-back has been logged in this process (tests).
#[must_use]
pub fn priority_fallback_logged() -> bool {
    PRIORITY_DENIED_LOGGED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::thread::{capabilities, set_capabilities, CapabilitySet};

    #[test]
    fn every_dscp_has_a_priority() {
        let expected = [(0, 0), (8, 1), (10, 1), (18, 2), (24, 4), (34, 4)];
        for (dscp, priority) in expected {
            assert_eq!(priority_for_dscp(dscp), priority, "{dscp}");
        }
        assert_eq!(priority_for_dscp(40), PRIO_INTERACTIVE, "CS5");
        assert_eq!(priority_for_dscp(46), PRIO_INTERACTIVE, "EF");
        assert_eq!(priority_for_dscp(48), PRIO_CONTROL, "CS6");
        assert_eq!(priority_for_dscp(56), PRIO_CONTROL, "CS7");
        for dscp in 0..=63 {
            assert!(priority_for_dscp(dscp) <= PRIO_CONTROL);
        }
    }

    #[test]
    fn ipv4_sockets_carry_tos_and_priority() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let sock = SockRef::from(&listener);
        for dscp in [0, 10, 46] {
            let marked = mark(&sock, false, dscp).expect("mark");
            assert_eq!(marks_of(&sock, false).expect("read"), marked);
            assert_eq!(marked.priority, priority_for_dscp(dscp));
            assert_eq!(sock.tos_v4().expect("tos"), u32::from(dscp) << 2);
        }
    }

    #[test]
    fn ipv6_sockets_carry_tclass_and_tos() {
        let listener = match std::net::TcpListener::bind("[::1]:0") {
            Ok(listener) => listener,
            Err(e) => {
                println!("SKIP: no IPv6 loopback here: {e}");
                return;
            }
        };
        let sock = SockRef::from(&listener);
        let marked = mark(&sock, true, 46).expect("mark");
        assert_eq!(
            marked,
            Marked {
                dscp: 46,
                priority: PRIO_INTERACTIVE
            }
        );
        assert_eq!(marks_of(&sock, true).expect("read"), marked);
        // For IPv4 peers of a dual-stack socket.
        assert_eq!(sock.tos_v4().expect("tos"), 46 << 2);
    }

    #[test]
    fn without_cap_net_admin_control_priority_falls_back_to_interactive() {
        // Capabilities are per thread: drop them in a thread of our own.
        let outcome = std::thread::spawn(|| {
            let mut sets = capabilities(None).expect("capget");
            let privileged = sets
                .effective
                .intersects(CapabilitySet::NET_ADMIN | CapabilitySet::NET_RAW);
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let sock = SockRef::from(&listener);
            if privileged {
                assert_eq!(mark(&sock, false, 48).expect("mark").priority, PRIO_CONTROL);
            }
            sets.effective
                .remove(CapabilitySet::NET_ADMIN | CapabilitySet::NET_RAW);
            set_capabilities(None, sets).expect("capset");
            let marked = mark(&sock, false, 48).expect("mark without the capability");
            (privileged, marked)
        })
        .join()
        .expect("thread");
        let (privileged, marked) = outcome;
        if !privileged {
            println!("note: this process never had CAP_NET_ADMIN; only the fall-back was checked");
        }
        assert_eq!(
            marked,
            Marked {
                dscp: 48,
                priority: PRIO_INTERACTIVE
            }
        );
        assert!(priority_fallback_logged());
    }
}
