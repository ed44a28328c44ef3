//! What a Palisade system's nodes say about one fixed-rate run, read from
//! their own metrics (`GET /metrics` on their admin ports) before and
//! after the run:
//!
//! - the raft log's syncs (`palisade_log_sync_duration_seconds`): how many
//!   the run cost and how slow its slow ones were. The fsync probe before
//!   the runs says what the disk did then; this says what it did to the
//!   run, so a replicated grant's tail can be put beside its own log's;
//! - the time the cores spent busy polling
//!   (`palisade_core_busy_poll_seconds_total`), which the server's process
//!   CPU time includes: the report says how much of the CPU per request
//!   was polling rather than work.
//!
//! Parsing and the percentiles are plain functions of text; only
//! [`scrape`] does I/O.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

const FAMILY: &str = "palisade_log_sync_duration_seconds_bucket{le=\"";
const BUSY_POLL: &str = "palisade_core_busy_poll_seconds_total ";

/// One scrape of every node, summed.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct NodeCounters {
    pub(crate) syncs: Buckets,
    /// Seconds the cores spent busy polling.
    pub(crate) busy_poll_s: f64,
}

impl NodeCounters {
    /// The counters on one node's `/metrics` page.
    pub(crate) fn parse(page: &str) -> Result<NodeCounters> {
        let busy_poll_s = page
            .lines()
            .find_map(|line| line.strip_prefix(BUSY_POLL))
            .context("no palisade_core_busy_poll_seconds_total on the page")?
            .trim()
            .parse()
            .context("a bad palisade_core_busy_poll_seconds_total")?;
        Ok(NodeCounters {
            syncs: Buckets::parse(page)?,
            busy_poll_s,
        })
    }

    fn add(&mut self, other: &NodeCounters) -> Result<()> {
        self.syncs.add(&other.syncs)?;
        self.busy_poll_s += other.busy_poll_s;
        Ok(())
    }
}

/// Cumulative counts of the log-sync histogram: (upper bound in seconds,
/// syncs at or under it), in the page's order, `+Inf` last as infinity.
/// Summed over nodes by [`Buckets::add`].
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Buckets(Vec<(f64, u64)>);

impl Buckets {
    /// The histogram's bucket lines of one `/metrics` page. `Err` when the
    /// page has none (a node too old to time its syncs).
    pub(crate) fn parse(page: &str) -> Result<Buckets> {
        let mut buckets = Vec::new();
        for line in page.lines() {
            let Some(rest) = line.strip_prefix(FAMILY) else {
                continue;
            };
            let (le, count) = rest
                .split_once("\"} ")
                .with_context(|| format!("a malformed bucket line: {line:?}"))?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse()
                    .with_context(|| format!("a bad bucket bound: {line:?}"))?
            };
            let count = count
                .trim()
                .parse()
                .with_context(|| format!("a bad bucket count: {line:?}"))?;
            buckets.push((le, count));
        }
        if buckets.is_empty() {
            bail!("no palisade_log_sync_duration_seconds on the page");
        }
        Ok(Buckets(buckets))
    }

    /// Adds another node's counts (same bounds).
    pub(crate) fn add(&mut self, other: &Buckets) -> Result<()> {
        if self.0.is_empty() {
            self.0.clone_from(&other.0);
            return Ok(());
        }
        if self.0.len() != other.0.len() || self.0.iter().zip(&other.0).any(|(a, b)| a.0 != b.0) {
            bail!("the nodes' log-sync histograms have different buckets");
        }
        for (mine, theirs) in self.0.iter_mut().zip(&other.0) {
            mine.1 += theirs.1;
        }
        Ok(())
    }

    /// The syncs between `before` and `self` (a later scrape of the same
    /// nodes). `None` if the counts went down (a node restarted).
    pub(crate) fn since(&self, before: &Buckets) -> Option<LogSyncs> {
        if self.0.len() != before.0.len() {
            return None;
        }
        let mut delta = Vec::with_capacity(self.0.len());
        for (now, then) in self.0.iter().zip(&before.0) {
            delta.push((now.0, now.1.checked_sub(then.1)?));
        }
        let count = delta.last().map_or(0, |b| b.1);
        // The smallest bound that holds `share` of the syncs.
        let bound = |share: f64| -> Option<f64> {
            if count == 0 {
                return None;
            }
            let need = (share * count as f64).ceil() as u64;
            delta
                .iter()
                .find(|(_, n)| *n >= need)
                .map(|(le, _)| le * 1e6)
        };
        Some(LogSyncs {
            count,
            p99_le_us: bound(0.99),
            max_le_us: bound(1.0),
        })
    }
}

/// Syncs of the raft log (every node's together) during one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct LogSyncs {
    pub(crate) count: u64,
    /// The histogram bucket bound (µs) at or under which 99 % of them
    /// took; `None` with no syncs; infinite above the last bound.
    pub(crate) p99_le_us: Option<f64>,
    /// The bound the slowest one took at or under.
    pub(crate) max_le_us: Option<f64>,
}

impl LogSyncs {
    /// `", log syncs N: p99 ≤ X µs, slowest ≤ Y µs"`, or empty with none.
    pub(crate) fn summary(&self) -> String {
        match (self.p99_le_us, self.max_le_us) {
            (Some(p99), Some(max)) => format!(
                ", log syncs {}: p99 {}, slowest {}",
                self.count,
                at_most(p99),
                at_most(max)
            ),
            _ => String::new(),
        }
    }
}

/// A bucket bound for people: `≤ 500 µs`, `≤ 2.5 ms`, `> 5 s`.
pub(crate) fn at_most(us: f64) -> String {
    if us.is_infinite() {
        "> 5 s".into()
    } else if us < 1000.0 {
        format!("≤ {us:.0} µs")
    } else {
        format!("≤ {} ms", us / 1000.0)
    }
}

/// Every node's counters, summed: one `GET /metrics` each, 2 s at most.
pub(crate) fn scrape(admins: &[SocketAddr]) -> Result<NodeCounters> {
    let mut sum = NodeCounters::default();
    for &addr in admins {
        let page = get_metrics(addr).with_context(|| format!("scraping {addr}"))?;
        sum.add(&NodeCounters::parse(&page)?)?;
    }
    Ok(sum)
}

fn get_metrics(addr: SocketAddr) -> Result<String> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: palisade-bench\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw).context("a /metrics page that is not UTF-8")?;
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP head")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{}", head.lines().next().unwrap_or(head));
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(counts: &[(&str, u64)]) -> String {
        let mut page = String::from(
            "# HELP palisade_log_sync_duration_seconds x\n\
             # TYPE palisade_log_sync_duration_seconds histogram\n\
             palisade_request_duration_seconds_bucket{core=\"0\",le=\"5e-6\"} 7\n",
        );
        for (le, n) in counts {
            page.push_str(&format!(
                "palisade_log_sync_duration_seconds_bucket{{le=\"{le}\"}} {n}\n"
            ));
        }
        page.push_str("palisade_log_sync_duration_seconds_sum 0.5\n");
        page.push_str("palisade_core_busy_poll_seconds_total 0.25\n");
        page
    }

    #[test]
    fn a_page_gives_both_counters_and_nodes_add_up() {
        let page = page(&[("0.001", 3), ("+Inf", 4)]);
        let one = NodeCounters::parse(&page).expect("parse");
        assert_eq!(one.busy_poll_s, 0.25);
        let mut sum = NodeCounters::default();
        sum.add(&one).expect("one");
        sum.add(&one).expect("two");
        assert_eq!(sum.busy_poll_s, 0.5);
        assert_eq!(sum.syncs, Buckets(vec![(0.001, 6), (f64::INFINITY, 8)]));
        let older = page.replace("palisade_core_busy_poll_seconds_total 0.25\n", "");
        assert!(
            NodeCounters::parse(&older).is_err(),
            "a node without the counter"
        );
    }

    #[test]
    fn percentiles_come_from_the_counts_between_two_scrapes() {
        let before = Buckets::parse(&page(&[
            ("0.00025", 10),
            ("0.0005", 10),
            ("0.05", 10),
            ("+Inf", 10),
        ]))
        .expect("before");
        // 200 syncs since: 197 under 250 µs, 2 under 500 µs, 1 under 50 ms.
        let after = Buckets::parse(&page(&[
            ("0.00025", 207),
            ("0.0005", 209),
            ("0.05", 210),
            ("+Inf", 210),
        ]))
        .expect("after");
        let syncs = after.since(&before).expect("counts grew");
        assert_eq!(syncs.count, 200);
        assert_eq!(syncs.p99_le_us, Some(500.0));
        assert_eq!(syncs.max_le_us, Some(50_000.0));
        assert_eq!(
            syncs.summary(),
            ", log syncs 200: p99 ≤ 500 µs, slowest ≤ 50 ms"
        );
        // Nothing synced: no percentiles, nothing to say.
        let none = after.since(&after).expect("same counts");
        assert_eq!((none.count, none.p99_le_us), (0, None));
        assert_eq!(none.summary(), "");
        // A restarted node's counts went down: no figure rather than a wrong one.
        assert_eq!(before.since(&after), None);
    }

    #[test]
    fn nodes_add_up_and_bad_pages_are_errors() {
        let mut sum = Buckets::default();
        let one = Buckets::parse(&page(&[("0.001", 3), ("+Inf", 4)])).expect("one");
        sum.add(&one).expect("first");
        sum.add(&one).expect("second");
        assert_eq!(sum, Buckets(vec![(0.001, 6), (f64::INFINITY, 8)]));
        let other = Buckets::parse(&page(&[("0.002", 3), ("+Inf", 4)])).expect("other");
        assert!(sum.add(&other).is_err(), "different bounds");
        assert!(Buckets::parse("palisade_term 3\n").is_err(), "no histogram");
        assert!(Buckets::parse("palisade_log_sync_duration_seconds_bucket{le=\"x\"} 1\n").is_err());
        assert_eq!(at_most(f64::INFINITY), "> 5 s");
        assert_eq!(at_most(2500.0), "≤ 2.5 ms");
    }
}
