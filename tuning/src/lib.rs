//! `palisade-tuning`: the Palisade config file schema, parsing and
//! validation, and the timing calculator.
//!
//! Every Palisade binary reads one TOML file describing the node, its
//! listener, its cluster, lease timing, resource limits, data plane tuning,
//! packet marking (QoS), tenants, logging and the admin (metrics) endpoint.
//! This crate turns that text into a [`Config`] whose every value is known
//! to be in range, or into a [`ConfigErrors`] naming *every* bad key
//! (not just the first), so an operator fixes a file in one pass.
//!
//! # What it never does
//!
//! - It never reads global state: files come through an injected [`Source`]
//!   ([`FsSource`] in binaries, [`MemSource`] in tests), and there are no
//!   environment variables or current-directory lookups.
//! - It does no networking (listen addresses are parsed, never resolved or
//!   bound) and reads no clock.
//! - It never panics on input and contains no `unsafe` code.
//!
//! # Main types
//!
//! - [`Config`] and its sections [`NodeConfig`], [`ListenConfig`],
//!   [`ClusterConfig`] (with [`PeerConfig`]), [`LeaseConfig`], [`LimitsConfig`], [`DataplaneConfig`],
//!   [`QosConfig`], [`TenantConfig`] (with [`TenantCredential`]),
//!   [`LogConfig`] (with [`LogTarget`] and [`LogFormat`]) and
//!   [`AdminConfig`].
//! - [`Config::load`], [`Config::from_toml_str`], [`Config::builtin_default`]
//!   and [`Config::to_toml`] to get and write one; [`Config::members`]
//!   (each a [`Member`]) and [`Config::peer_listen`] for the cluster.
//! - [`ConfigErrors`], a list of [`ConfigIssue`]s, each with a dotted key
//!   such as `leases.max_ttl` or `tenants[1].name`.
//! - Value helpers: [`parse_duration`] / [`format_duration`] and
//!   [`parse_dscp`] / [`dscp_name`], [`parse_rate`] / [`format_rate`];
//!   every value parser fails with a [`ValueError`].
//! - [`tune`]: the timing model behind `palisade tune` (heartbeat interval
//!   and election timeout from RTT samples and a failure model; `max_ttl`
//!   derived from the availability target with memory-only leases, kept
//!   with replicated ones), pure like the rest of this crate. The shipped
//!   profiles are in `tuning/profiles/`.
//!
//! # Example
//!
//! ```
//! use std::path::Path;
//! use std::time::Duration;
//! use palisade_tuning::{Config, CoreSelection};
//!
//! let text = r#"
//!     [node]
//!     id = 3
//!     data_dir = "data/node3"
//!     cores = [0, 2]
//!
//!     [leases]
//!     max_ttl = "10s"
//!
//!     [[tenants]]
//!     name = "billing"
//! "#;
//! let config = Config::from_toml_str(text, Some(Path::new("/etc/palisade")))?;
//! assert_eq!(config.node.id, 3);
//! assert_eq!(config.node.cores, CoreSelection::Cpus(vec![0, 2]));
//! assert_eq!(config.leases.max_ttl, Duration::from_secs(10));
//! assert_eq!(config.leases.min_ttl, Duration::from_millis(100)); // the default
//! assert_eq!(config.data_dir_resolved(), Some("/etc/palisade/data/node3".into()));
//! assert_eq!(config.tenant("billing").map(|(index, _)| index), Some(0));
//! assert_eq!(config.members().len(), 1); // no [[cluster.peers]]: a cluster of one
//! assert_eq!(config.peer_listen(), None);
//!
//! // Every bad key is reported, each under its own dotted key.
//! let errors = Config::from_toml_str(
//!     "[node]\nid = 0\n[leases]\nmax_ttl = 30\ncolour = \"red\"\n",
//!     None,
//! )
//! .unwrap_err();
//! assert!(errors.has("node.id"));
//! assert!(errors.has("leases.max_ttl"));
//! assert!(errors.has("leases.colour"));
//! # Ok::<(), palisade_tuning::ConfigErrors>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod credential;
mod dscp;
mod duration;
mod error;
mod parse;
mod rate;
mod render;
mod source;
pub mod tune;
mod validate;

pub use config::{
    AdminConfig, ClusterConfig, Config, CoreSelection, DataplaneConfig, LeaseConfig, LimitsConfig,
    ListenConfig, LogConfig, LogFormat, LogLevel, LogTarget, Member, NodeConfig, PeerConfig,
    QosConfig, Replication, TenantConfig, CLUSTER_NAME_DEFAULT, LISTEN_ADMIN_DEFAULT,
    LISTEN_CLIENT_DEFAULT, TENANT_NAME_DEFAULT,
};
pub use credential::TenantCredential;
pub use dscp::{dscp_name, parse_dscp, DSCP_MAX};
pub use duration::{format_duration, parse_duration};
pub use error::{ConfigErrors, ConfigIssue, ValueError};
pub use rate::{format_rate, parse_rate};
pub use source::{FsSource, MemSource, Source};
pub use validate::{
    CLUSTER_NAME_BYTES_MAX, INTERFACE_NAME_BYTES_MAX, QOS_RATE_BPS_MAX, QOS_RATE_BPS_MIN,
    TABLE_CAPACITY_REPLICATED_MAX, TENANT_COUNT_MAX, TENANT_NAME_CHARS_MAX,
};

#[cfg(test)]
mod tests;
