//! The priority qdisc tree: when the node's own link is congested, packets
//! marked with the client or peer DSCP leave before bulk traffic.
//!
//! Marking sockets (`palisade_host::mark`) only helps where something
//! reads the mark. A host that sends bulk traffic (backups, replication of
//! another service) on the same interface queues lease replies and raft
//! heartbeats behind it in its own egress queue. With `qos.enabled` the
//! node installs, at start, an `htb` tree on `qos.interface` whose root
//! class is capped at `qos.rate` (so the queue forms here, where it can be
//! ordered, rather than in the device), with two leaves:
//!
//! - `d5c0:10`, priority 0, guaranteed a tenth of the rate and allowed all
//!   of it: every packet whose DSCP is the client or the peer DSCP (`u32`
//!   filters on the IPv4 TOS byte and the IPv6 traffic class);
//! - `d5c0:20`, priority 1, the rest of the rate: everything else (the
//!   default class).
//!
//! Only `htb` and `u32` are needed, because some kernels have nothing
//! else (no `prio`, `fq`, `ets` or `netem`). The tree's handle `d5c0:`
//! marks it as Palisade's: a tree left by a crashed run is replaced, any
//! other root qdisc is left alone, and the tree is removed at shutdown.
//! Without `CAP_NET_ADMIN`, without `tc`, or on a kernel lacking `htb` or
//! `u32`, the node says so in its log and serves without the tree.
//!
//! [`TreePlan`] builds the `tc` command lines and [`classify_root`] and
//! [`TcFailure::from_stderr`] read `tc`'s answers; they do no I/O and are
//! tested directly. [`install`] and [`Installed`] are the thin shell that
//! runs `tc`.
//!
//! What it never does: touch a root qdisc it did not install, or stop the
//! node from serving.
//!
//! ```
//! use palisade_control::qos::TreePlan;
//!
//! let plan = TreePlan::new("eth0", 1_000_000_000, &[46, 48]);
//! let lines: Vec<String> = plan.install_commands().iter().map(ToString::to_string).collect();
//! assert_eq!(lines[0], "tc qdisc add dev eth0 root handle d5c0: htb default 20");
//! assert_eq!(lines.len(), 8); // root, 3 classes, 2 DSCPs x (IPv4, IPv6)
//! ```

use std::fmt;
use std::io;
use std::process::Command;

use palisade_tuning::{format_rate, Config};
use tracing::{debug, info, warn};

/// The major number of the tree's handle (`d5c0:`): it marks a root qdisc
/// as installed by Palisade.
pub const HANDLE_MAJOR: u16 = 0xd5c0;
/// Minor number of the root class, capped at the link rate.
const CLASS_ROOT: u16 = 0x1;
/// Minor number of the priority class (marked packets).
const CLASS_PRIORITY: u16 = 0x10;
/// Minor number of the bulk class (everything else; the default).
const CLASS_BULK: u16 = 0x20;
/// The priority class is guaranteed `rate / PRIORITY_SHARE_DIVISOR`.
const PRIORITY_SHARE_DIVISOR: u64 = 10;
/// Bytes a class may send per round when classes of one priority share
/// spare rate: above a jumbo frame, and set so that `htb` does not derive
/// one from the rate (and warn that it is too large or too small).
const QUANTUM_BYTES: u32 = 60_000;
/// The DSCP field within the IPv4 TOS byte and the IPv6 traffic class (the
/// low two bits are ECN).
const DSCP_MASK: u8 = 0xfc;

/// One `tc` command line: the arguments after `tc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcCommand(pub Vec<String>);

impl TcCommand {
    fn new(args: &[&str]) -> TcCommand {
        TcCommand(args.iter().map(|arg| (*arg).to_owned()).collect())
    }
}

impl fmt::Display for TcCommand {
    /// The command as an operator would type it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tc")?;
        for arg in &self.0 {
            write!(f, " {arg}")?;
        }
        Ok(())
    }
}

/// What to install: the interface, its rate and the DSCPs sent first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreePlan {
    interface: String,
    rate_bps: u64,
    priority_dscps: Vec<u8>,
}

impl TreePlan {
    /// A plan for `interface` at `rate_bps` that sends `dscps` first.
    /// Zero (unmarked) and repeated DSCPs are dropped: sending unmarked
    /// packets first would put bulk traffic in the priority class.
    ///
    /// # Panics
    ///
    /// When no DSCP is left, a DSCP is above 63, or the rate is below
    /// `PRIORITY_SHARE_DIVISOR` bit/s: a validated config never does
    /// that.
    #[must_use]
    pub fn new(interface: &str, rate_bps: u64, dscps: &[u8]) -> TreePlan {
        let mut priority_dscps: Vec<u8> = dscps.iter().copied().filter(|&d| d != 0).collect();
        priority_dscps.sort_unstable();
        priority_dscps.dedup();
        assert!(!priority_dscps.is_empty(), "a tree needs a marked DSCP");
        assert!(priority_dscps.iter().all(|&d| d <= 63), "DSCPs are 6 bits");
        assert!(rate_bps >= PRIORITY_SHARE_DIVISOR, "rate too low to share");
        TreePlan {
            interface: interface.to_owned(),
            rate_bps,
            priority_dscps,
        }
    }

    /// The plan `config` asks for: `None` unless `qos.enabled`.
    #[must_use]
    pub fn from_config(config: &Config) -> Option<TreePlan> {
        let qos = &config.qos;
        if !qos.enabled {
            return None;
        }
        let interface = qos
            .interface
            .as_deref()
            .expect("validated: enabled has one");
        let rate_bps = qos.rate_bps.expect("validated: enabled has a rate");
        let dscps = [config.dataplane.client_dscp, qos.peer_dscp];
        Some(TreePlan::new(interface, rate_bps, &dscps))
    }

    /// The interface the tree goes on.
    #[must_use]
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The DSCPs the tree sends first, ascending.
    #[must_use]
    pub fn priority_dscps(&self) -> &[u8] {
        &self.priority_dscps
    }

    fn handle(minor: Option<u16>) -> String {
        match minor {
            None => format!("{HANDLE_MAJOR:x}:"),
            Some(minor) => format!("{HANDLE_MAJOR:x}:{minor:x}"),
        }
    }

    /// The commands that build the tree on an interface whose root qdisc is
    /// the kernel's default, in order. The first one fails if another root
    /// qdisc is there (`add`, not `replace`).
    #[must_use]
    pub fn install_commands(&self) -> Vec<TcCommand> {
        let dev = self.interface.as_str();
        let root = Self::handle(None);
        let rate = self.rate_bps;
        let priority_rate = rate / PRIORITY_SHARE_DIVISOR;
        let bulk_rate = rate - priority_rate;
        let quantum = QUANTUM_BYTES.to_string();
        let bulk = format!("{CLASS_BULK:x}");
        let mut commands = vec![TcCommand::new(&[
            "qdisc", "add", "dev", dev, "root", "handle", &root, "htb", "default", &bulk,
        ])];
        let classes = [
            (root.clone(), CLASS_ROOT, rate, None),
            (
                Self::handle(Some(CLASS_ROOT)),
                CLASS_PRIORITY,
                priority_rate,
                Some("0"),
            ),
            (
                Self::handle(Some(CLASS_ROOT)),
                CLASS_BULK,
                bulk_rate,
                Some("1"),
            ),
        ];
        for (parent, minor, class_rate, prio) in classes {
            let classid = Self::handle(Some(minor));
            let class_rate = format_rate(class_rate);
            let ceil = format_rate(rate);
            let mut args = vec![
                "class",
                "add",
                "dev",
                dev,
                "parent",
                &parent,
                "classid",
                &classid,
                "htb",
                "rate",
                &class_rate,
                "ceil",
                &ceil,
            ];
            if let Some(prio) = prio {
                args.extend(["prio", prio]);
            }
            args.extend(["quantum", &quantum]);
            commands.push(TcCommand::new(&args));
        }
        let flowid = Self::handle(Some(CLASS_PRIORITY));
        let mask = format!("{DSCP_MASK:#04x}");
        // u32 filters of one protocol share a filter priority; IPv4 and
        // IPv6 need one each.
        let families = [("ip", "1", "dsfield"), ("ipv6", "2", "priority")];
        for (protocol, filter_prio, field) in families {
            let match_family = if protocol == "ip" { "ip" } else { "ip6" };
            for &dscp in &self.priority_dscps {
                let value = format!("{:#04x}", dscp << 2);
                commands.push(TcCommand::new(&[
                    "filter",
                    "add",
                    "dev",
                    dev,
                    "parent",
                    &root,
                    "protocol",
                    protocol,
                    "prio",
                    filter_prio,
                    "u32",
                    "match",
                    match_family,
                    field,
                    &value,
                    &mask,
                    "flowid",
                    &flowid,
                ]));
            }
        }
        commands
    }

    /// Asks for the interface's root qdisc, as JSON for [`classify_root`].
    #[must_use]
    pub fn show_root_command(&self) -> TcCommand {
        TcCommand::new(&["-j", "qdisc", "show", "dev", &self.interface, "root"])
    }

    /// Removes the root qdisc (and so the whole tree); the kernel puts its
    /// default back. Run it only after [`classify_root`] said
    /// [`RootQdisc::Ours`].
    #[must_use]
    pub fn remove_command(&self) -> TcCommand {
        TcCommand::new(&["qdisc", "del", "dev", &self.interface, "root"])
    }
}

/// Whose root qdisc an interface has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootQdisc {
    /// The kernel's default (handle `0:`, like `noqueue`, `pfifo_fast` or
    /// `mq`), or none at all: free to replace.
    Default,
    /// An `htb` with handle `d5c0:`: installed by Palisade.
    Ours,
    /// Someone else's; never touched.
    Foreign {
        /// Its kind, like `"htb"`.
        kind: String,
        /// Its handle, like `"1:"`.
        handle: String,
    },
}

/// Reads the output of `tc -j qdisc show dev IF root`.
///
/// # Errors
///
/// Output that is not the JSON list `tc` prints.
pub fn classify_root(json: &str) -> Result<RootQdisc, String> {
    let value: serde_json::Value = serde_json::from_str(json.trim())
        .map_err(|e| format!("unexpected `tc -j qdisc show` output ({e}): {json:?}"))?;
    let list = value
        .as_array()
        .ok_or_else(|| format!("`tc -j qdisc show` printed no list: {json:?}"))?;
    let root = list
        .iter()
        .find(|qdisc| qdisc.get("root").and_then(serde_json::Value::as_bool) == Some(true))
        .or_else(|| list.first());
    let Some(root) = root else {
        return Ok(RootQdisc::Default);
    };
    let field = |name: &str| {
        root.get(name)
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let (kind, handle) = (field("kind"), field("handle"));
    if handle == "0:" || handle.is_empty() {
        return Ok(RootQdisc::Default);
    }
    if kind == "htb" && handle == TreePlan::handle(None) {
        return Ok(RootQdisc::Ours);
    }
    Ok(RootQdisc::Foreign { kind, handle })
}

/// Why a `tc` command failed, read from its error output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcFailure {
    /// The process lacks `CAP_NET_ADMIN` in the interface's network
    /// namespace.
    NoPermission,
    /// The kernel has no such qdisc (here: `htb`, `CONFIG_NET_SCH_HTB`).
    QdiscUnsupported,
    /// The kernel has no such classifier (here: `u32`,
    /// `CONFIG_NET_CLS_U32`).
    ClassifierUnsupported,
    /// There is no such interface.
    NoDevice,
    /// `tc` could not be run (iproute2 not installed?).
    TcMissing(String),
    /// Anything else: what `tc` said.
    Other(String),
}

impl TcFailure {
    /// Classifies `tc`'s error output.
    #[must_use]
    pub fn from_stderr(stderr: &str) -> TcFailure {
        let text = stderr.trim();
        if text.contains("Operation not permitted") {
            TcFailure::NoPermission
        } else if text.contains("qdisc kind is unknown") {
            TcFailure::QdiscUnsupported
        } else if text.contains("classifier not found") {
            TcFailure::ClassifierUnsupported
        } else if text.contains("Cannot find device") {
            TcFailure::NoDevice
        } else {
            TcFailure::Other(text.lines().collect::<Vec<_>>().join("; "))
        }
    }
}

impl fmt::Display for TcFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TcFailure::NoPermission => f.write_str(
                "no permission to change qdiscs: the node needs CAP_NET_ADMIN (run it as root or \
                 grant the capability, e.g. AmbientCapabilities=CAP_NET_ADMIN in its unit)",
            ),
            TcFailure::QdiscUnsupported => {
                f.write_str("this kernel has no htb qdisc (CONFIG_NET_SCH_HTB)")
            }
            TcFailure::ClassifierUnsupported => {
                f.write_str("this kernel has no u32 classifier (CONFIG_NET_CLS_U32)")
            }
            TcFailure::NoDevice => f.write_str("there is no such interface"),
            TcFailure::TcMissing(why) => write!(f, "cannot run tc (install iproute2): {why}"),
            TcFailure::Other(said) => write!(f, "tc said: {said}"),
        }
    }
}

/// Why the tree was not installed.
#[derive(Debug, thiserror::Error)]
pub enum QosError {
    /// A `tc` command failed; the tree (if begun) was removed again.
    #[error("`{command}` failed: {failure}")]
    Tc {
        /// The command line.
        command: String,
        /// What went wrong.
        failure: TcFailure,
    },
    /// The interface already has a root qdisc Palisade did not install.
    #[error(
        "{interface} already has a root qdisc ({kind} {handle}) that palisade did not install; \
         left alone (remove it, or disable qos)"
    )]
    Foreign {
        /// The interface.
        interface: String,
        /// The qdisc's kind.
        kind: String,
        /// Its handle.
        handle: String,
    },
    /// `tc` printed something [`classify_root`] could not read.
    #[error("{0}")]
    Unreadable(String),
}

/// Runs one `tc` command; its standard output on success.
fn run(command: &TcCommand) -> Result<String, QosError> {
    let failed = |failure| QosError::Tc {
        command: command.to_string(),
        failure,
    };
    let output = Command::new("tc")
        .args(&command.0)
        .output()
        .map_err(|e: io::Error| failed(TcFailure::TcMissing(e.to_string())))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(failed(TcFailure::from_stderr(&stderr)));
    }
    if !stderr.trim().is_empty() {
        debug!(command = %command, said = %stderr.trim(), "tc warning");
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn root_of(plan: &TreePlan) -> Result<RootQdisc, QosError> {
    classify_root(&run(&plan.show_root_command())?).map_err(QosError::Unreadable)
}

/// The installed tree; dropping it removes the tree (if it is still ours).
#[derive(Debug)]
pub struct Installed {
    plan: TreePlan,
}

impl Installed {
    /// The plan that was installed.
    #[must_use]
    pub fn plan(&self) -> &TreePlan {
        &self.plan
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let interface = self.plan.interface();
        match root_of(&self.plan) {
            Ok(RootQdisc::Ours) => match run(&self.plan.remove_command()) {
                Ok(_) => info!(interface, "qos: removed the priority qdisc tree"),
                Err(e) => warn!(interface, error = %e, "qos: could not remove the qdisc tree"),
            },
            Ok(_) => info!(
                interface,
                "qos: the root qdisc is no longer palisade's; left alone"
            ),
            Err(e) => warn!(interface, error = %e, "qos: could not look at the qdisc tree"),
        }
    }
}

/// Installs the tree of `plan`: replaces a tree of ours a previous run
/// left, refuses a root qdisc someone else installed, and on a failure
/// part-way removes what it built. Installing is also the probe of what
/// the kernel offers: a missing `htb` or `u32` shows as
/// [`TcFailure::QdiscUnsupported`] or [`TcFailure::ClassifierUnsupported`].
///
/// # Errors
///
/// What stopped it; the interface is left as it was found (or with the
/// kernel's default root qdisc, when a stale tree of ours was removed).
pub fn install(plan: &TreePlan) -> Result<Installed, QosError> {
    let interface = plan.interface();
    match root_of(plan)? {
        RootQdisc::Default => {}
        RootQdisc::Ours => {
            info!(
                interface,
                "qos: replacing the qdisc tree a previous run left"
            );
            run(&plan.remove_command())?;
        }
        RootQdisc::Foreign { kind, handle } => {
            return Err(QosError::Foreign {
                interface: interface.to_owned(),
                kind,
                handle,
            });
        }
    }
    let mut commands = plan.install_commands().into_iter();
    let root = commands.next().expect("the root qdisc comes first");
    run(&root)?;
    // From here the root is ours: dropping the guard removes it again.
    let installed = Installed { plan: plan.clone() };
    for command in commands {
        run(&command)?;
    }
    Ok(installed)
}

/// Installs the tree `config` asks for, if any, and logs the outcome.
/// Never fails: without the tree the node still serves, only without
/// local priority.
#[must_use]
pub fn start(config: &Config) -> Option<Installed> {
    let plan = TreePlan::from_config(config)?;
    let interface = plan.interface().to_owned();
    match install(&plan) {
        Ok(installed) => {
            info!(
                interface,
                rate = %format_rate(config.qos.rate_bps.unwrap_or(0)),
                dscps = ?plan.priority_dscps(),
                "qos: priority qdisc tree installed (handle d5c0:)"
            );
            Some(installed)
        }
        Err(QosError::Tc {
            failure: TcFailure::NoPermission,
            ..
        }) => {
            warn!(
                interface,
                "qos: no permission to install the priority qdisc tree: the node needs \
                 CAP_NET_ADMIN; serving without it (sockets are still marked)"
            );
            None
        }
        Err(e) => {
            warn!(interface, error = %e, "qos: priority qdisc tree not installed; serving without it");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(commands: &[TcCommand]) -> Vec<String> {
        commands.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_default_tree() {
        let plan = TreePlan::new("eth0", 1_000_000_000, &[46, 48]);
        assert_eq!(
            lines(&plan.install_commands()),
            [
                "tc qdisc add dev eth0 root handle d5c0: htb default 20",
                "tc class add dev eth0 parent d5c0: classid d5c0:1 htb rate 1gbit ceil 1gbit \
                 quantum 60000",
                "tc class add dev eth0 parent d5c0:1 classid d5c0:10 htb rate 100mbit ceil 1gbit \
                 prio 0 quantum 60000",
                "tc class add dev eth0 parent d5c0:1 classid d5c0:20 htb rate 900mbit ceil 1gbit \
                 prio 1 quantum 60000",
                "tc filter add dev eth0 parent d5c0: protocol ip prio 1 u32 match ip dsfield 0xb8 \
                 0xfc flowid d5c0:10",
                "tc filter add dev eth0 parent d5c0: protocol ip prio 1 u32 match ip dsfield 0xc0 \
                 0xfc flowid d5c0:10",
                "tc filter add dev eth0 parent d5c0: protocol ipv6 prio 2 u32 match ip6 priority \
                 0xb8 0xfc flowid d5c0:10",
                "tc filter add dev eth0 parent d5c0: protocol ipv6 prio 2 u32 match ip6 priority \
                 0xc0 0xfc flowid d5c0:10",
            ]
        );
        assert_eq!(
            plan.remove_command().to_string(),
            "tc qdisc del dev eth0 root"
        );
        assert_eq!(
            plan.show_root_command().to_string(),
            "tc -j qdisc show dev eth0 root"
        );
    }

    #[test]
    fn unmarked_and_repeated_dscps_are_not_sent_first() {
        let plan = TreePlan::new("eth1", 10_000_000, &[0, 48, 48]);
        assert_eq!(plan.priority_dscps(), [48]);
        let text = lines(&plan.install_commands());
        assert_eq!(text.len(), 4 + 2, "one DSCP: one filter per family");
        assert!(text.iter().all(|line| !line.contains("dsfield 0x00")));
        assert!(text[2].contains("rate 1mbit ceil 10mbit"), "{}", text[2]);
        assert!(text[3].contains("rate 9mbit ceil 10mbit"), "{}", text[3]);
        // Rates that are not round are written exactly, in bits.
        let plan = TreePlan::new("eth1", 1_234_567, &[46]);
        let text = lines(&plan.install_commands());
        assert!(
            text[1].contains("rate 1234567bit ceil 1234567bit"),
            "{}",
            text[1]
        );
        assert!(text[2].contains("rate 123456bit "), "{}", text[2]);
        assert!(text[3].contains("rate 1111111bit "), "{}", text[3]);
    }

    #[test]
    #[should_panic(expected = "a tree needs a marked DSCP")]
    fn nothing_marked_is_a_bug() {
        let _ = TreePlan::new("eth0", 1_000_000, &[0, 0]);
    }

    #[test]
    fn plans_from_config() {
        let mut config = Config::builtin_default();
        assert_eq!(TreePlan::from_config(&config), None);
        config.qos.enabled = true;
        config.qos.interface = Some("bond0".into());
        config.qos.rate_bps = Some(2_000_000_000);
        let plan = TreePlan::from_config(&config).expect("enabled");
        assert_eq!(plan.interface(), "bond0");
        assert_eq!(plan.priority_dscps(), [46, 48], "EF and CS6 by default");
        config.dataplane.client_dscp = 0;
        let plan = TreePlan::from_config(&config).expect("enabled");
        assert_eq!(plan.priority_dscps(), [48]);
    }

    #[test]
    fn root_qdiscs() {
        let default = r#"[{"kind":"noqueue","handle":"0:","root":true,"refcnt":2,"options":{}}]"#;
        assert_eq!(classify_root(default), Ok(RootQdisc::Default));
        assert_eq!(classify_root("[]\n"), Ok(RootQdisc::Default));
        let mq = r#"[{"kind":"mq","handle":"0:","root":true,"options":{}}]"#;
        assert_eq!(classify_root(mq), Ok(RootQdisc::Default));
        let ours = r#"[{"kind":"htb","handle":"d5c0:","root":true,"refcnt":3,
            "options":{"r2q":10,"default":"0x20","direct_packets_stat":0}}]"#;
        assert_eq!(classify_root(ours), Ok(RootQdisc::Ours));
        let foreign = r#"[{"kind":"htb","handle":"1:","root":true,"options":{}}]"#;
        assert_eq!(
            classify_root(foreign),
            Ok(RootQdisc::Foreign {
                kind: "htb".into(),
                handle: "1:".into()
            })
        );
        // Our handle on another kind is not ours.
        let tbf = r#"[{"kind":"tbf","handle":"d5c0:","root":true}]"#;
        assert!(matches!(classify_root(tbf), Ok(RootQdisc::Foreign { .. })));
        assert!(classify_root("Cannot find device").is_err());
        assert!(classify_root(r#"{"kind":"htb"}"#).is_err());
    }

    #[test]
    fn tc_failures() {
        let cases = [
            (
                "RTNETLINK answers: Operation not permitted",
                TcFailure::NoPermission,
            ),
            (
                "Error: Specified qdisc kind is unknown.",
                TcFailure::QdiscUnsupported,
            ),
            (
                "Error: TC classifier not found.\nWe have an error talking to the kernel",
                TcFailure::ClassifierUnsupported,
            ),
            ("Cannot find device \"eth9\"", TcFailure::NoDevice),
            (
                "RTNETLINK answers: File exists\n",
                TcFailure::Other("RTNETLINK answers: File exists".into()),
            ),
        ];
        for (stderr, failure) in cases {
            assert_eq!(TcFailure::from_stderr(stderr), failure, "{stderr}");
        }
        assert!(TcFailure::NoPermission
            .to_string()
            .contains("CAP_NET_ADMIN"));
    }
}
