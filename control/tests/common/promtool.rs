//! `promtool check metrics` (Debian's `prometheus` package) on a Prometheus
//! text exposition. Shared by the control and proxy test suites.

use std::io::Write;
use std::process::{Command, Stdio};

/// Runs `promtool check metrics` on `body`; panics with promtool's
/// complaints unless it exits 0 and says nothing. Returns false (after
/// printing SKIP) only when promtool is not installed and we are not root:
/// scripts/test.sh installs it as root.
pub fn check(body: &str) -> bool {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                !rustix::process::geteuid().is_root(),
                "promtool is missing and we are root: install it (apt-get install prometheus; scripts/test.sh does)"
            );
            eprintln!("SKIP promtool check: promtool is not installed and we are not root");
            return false;
        }
        Err(e) => panic!("running promtool: {e}"),
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("feed promtool");
    let output = child.wait_with_output().expect("promtool ran");
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool refused the metrics: {complaints}\n{body}"
    );
    assert_eq!(complaints.trim(), "", "promtool complained:\n{body}");
    true
}
