//! The error type of this crate: every problem found in one config file.
//!
//! Loading never stops at the first problem. The operator fixes a config file
//! by hand, so one run should name every bad key at once.

use std::fmt;

use crate::parse::TOP_KEYS as SECTIONS;

/// One problem with one key of a config file.
///
/// The operator is at fault: the file or the value is wrong. Not retryable
/// until the file is edited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigIssue {
    /// Dotted path of the key, like `leases.max_ttl`, `tenants[1].name` or
    /// `node.cores[2]`. `(file)` when the file as a whole is at fault (it
    /// could not be read, or it is not valid TOML).
    pub key: String,
    /// What is wrong and, where it helps, what would be right.
    pub reason: String,
}

impl ConfigIssue {
    /// Makes an issue for `key`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Every problem found in one config file; never empty when returned as an
/// error.
///
/// `Display` writes one issue per line, as `key: reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Lines(.0))]
pub struct ConfigErrors(pub Vec<ConfigIssue>);

impl ConfigErrors {
    /// The issues, in the order they were found.
    #[must_use]
    pub fn issues(&self) -> &[ConfigIssue] {
        &self.0
    }

    /// The first issue reported for `key`, if any. Handy in tests and for
    /// callers that want to highlight one field.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&ConfigIssue> {
        self.0.iter().find(|issue| issue.key == key)
    }

    /// Whether some issue names `key`.
    #[must_use]
    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
}

impl From<ConfigIssue> for ConfigErrors {
    fn from(issue: ConfigIssue) -> Self {
        Self(vec![issue])
    }
}

/// Why one value written as text was refused: a duration, a rate, a DSCP
/// mark, a tenant credential, a keyword (replication mode, log level, log
/// format) or a log filter. The error of every value parser this crate
/// exports ([`parse_duration`](crate::parse_duration),
/// [`parse_rate`](crate::parse_rate), [`parse_dscp`](crate::parse_dscp),
/// [`TenantCredential`](crate::TenantCredential)'s `parse` and `check`, the
/// `FromStr` of [`Replication`](crate::Replication),
/// [`LogLevel`](crate::LogLevel) and [`LogFormat`](crate::LogFormat), and
/// [`LogConfig::parse_filter`](crate::LogConfig::parse_filter)).
///
/// The operator is at fault: the text is wrong. Not retryable until it is
/// edited. `Display` is the message the operator reads (the same as
/// [`reason`](Self::reason)): what is wrong and, where it helps, what would
/// be right. The config loader files it as a [`ConfigIssue`]'s reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Not a duration: no or an unknown unit, negative, not a number, finer
    /// than a nanosecond or too large.
    #[error("{0}")]
    Duration(String),
    /// Not a link rate in bits per second (no unit, a byte unit, too large).
    #[error("{0}")]
    Rate(String),
    /// Not a DSCP mark (unknown name, or a number above 63).
    #[error("{0}")]
    Dscp(String),
    /// A tenant credential that is malformed or below the strength policy.
    /// The message never echoes the keys.
    #[error("{0}")]
    Credential(String),
    /// Not one of a fixed set of words (replication mode, log level, log
    /// format); the message lists them.
    #[error("{0}")]
    Keyword(String),
    /// A log filter (`[log] level`) with a bad directive.
    #[error("{0}")]
    LogFilter(String),
}

impl ValueError {
    /// The message, as `Display` writes it.
    #[must_use]
    pub fn reason(&self) -> &str {
        match self {
            Self::Duration(reason)
            | Self::Rate(reason)
            | Self::Dscp(reason)
            | Self::Credential(reason)
            | Self::Keyword(reason)
            | Self::LogFilter(reason) => reason,
        }
    }
}

/// The config loader keeps a refused value's message as the issue's reason.
impl From<ValueError> for String {
    fn from(error: ValueError) -> Self {
        error.reason().to_owned()
    }
}

/// Writes issues one per line, without a trailing newline.
struct Lines<'a>(&'a [ConfigIssue]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, issue) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}

/// Collects issues while walking a file; the walker and the validator share
/// one so that cross-field rules can skip keys that are already known bad.
#[derive(Debug, Default)]
pub(crate) struct Issues {
    list: Vec<ConfigIssue>,
}

impl Issues {
    pub(crate) fn push(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.list.push(ConfigIssue::new(key, reason));
    }

    /// Whether `key`, or a section or list holding it, already has an
    /// issue. Later checks call this so a bad value is reported once, not
    /// again as a confusing knock-on of the default that stood in for it.
    pub(crate) fn has(&self, key: &str) -> bool {
        self.list.iter().any(|issue| covers(&issue.key, key))
    }

    /// Finishes collecting. Issues come out in file order as far as the
    /// schema knows it: file-wide issues and unknown sections first, then
    /// sections in schema order, list entries (tenants, cluster peers) by
    /// index after the keys that are not in a list. Otherwise the order
    /// found is kept (unknown keys, then keys in schema order).
    pub(crate) fn into_result(mut self) -> Result<(), ConfigErrors> {
        if self.list.is_empty() {
            return Ok(());
        }
        self.list.sort_by_key(|issue| file_order(&issue.key));
        Err(ConfigErrors(self.list))
    }
}

/// Sort key for an issue: the section's place in the schema (0 for `(file)`
/// and unknown sections), then 0 for a key outside any list, or one more
/// than the first list index in it, as in `tenants[3]` or
/// `cluster.peers[3].id`.
fn file_order(key: &str) -> (usize, usize) {
    let first = key.split('.').next().unwrap_or(key);
    let section = first.split_once('[').map_or(first, |(section, _)| section);
    let index = match key.split_once('[') {
        Some((_, rest)) => rest
            .split(']')
            .next()
            .and_then(|index| index.parse::<usize>().ok())
            .map_or(usize::MAX, |index| index.saturating_add(1)),
        None => 0,
    };
    let rank = SECTIONS
        .iter()
        .position(|known| *known == section)
        .map_or(0, |position| position + 1);
    (rank, index)
}

/// Whether an issue on `issue_key` is about `key` or something holding it:
/// `leases` covers `leases.max_ttl`, `tenants[1]` covers `tenants[1].name`.
fn covers(issue_key: &str, key: &str) -> bool {
    match key.strip_prefix(issue_key) {
        Some(rest) => rest.is_empty() || rest.starts_with('.') || rest.starts_with('['),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_issue_per_line() {
        let errors = ConfigErrors(vec![
            ConfigIssue::new("leases.max_ttl", "too long"),
            ConfigIssue::new("node.id", "too small"),
        ]);
        assert_eq!(
            errors.to_string(),
            "leases.max_ttl: too long\nnode.id: too small"
        );
        assert!(errors.has("node.id"));
        assert!(!errors.has("node"));
    }

    #[test]
    fn an_issue_covers_what_it_holds() {
        let mut issues = Issues::default();
        issues.push("tenants[1]", "bad");
        issues.push("leases", "bad");
        assert!(issues.has("tenants[1]"));
        assert!(issues.has("tenants[1].name"));
        assert!(!issues.has("tenants[10].name"));
        assert!(!issues.has("tenants"));
        assert!(issues.has("leases.max_ttl"));
        assert!(!issues.has("leasesx"));
    }

    #[test]
    fn issues_come_out_in_file_order() {
        let mut issues = Issues::default();
        for key in [
            "log.level",
            "tenants[10].name",
            "tenants[2].name",
            "leases.b",
            "node.id",
            "leases.a",
            "tenants",
            "bogus",
            "cluster.peers[10].id",
            "cluster.peers[2].bogus",
            "cluster.peers",
            "cluster.name",
        ] {
            issues.push(key, "bad");
        }
        let errors = issues.into_result().unwrap_err();
        let keys: Vec<&str> = errors.0.iter().map(|issue| issue.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "bogus",
                "node.id",
                "cluster.peers",
                "cluster.name",
                "cluster.peers[2].bogus",
                "cluster.peers[10].id",
                "leases.b",
                "leases.a",
                "tenants",
                "tenants[2].name",
                "tenants[10].name",
                "log.level"
            ]
        );
    }
}
