//! `palisade-bench compare`: open-loop tail-latency comparison of
//! Palisade against Redis, etcd, ZooKeeper and an io_uring echo floor.
#![allow(dead_code)] // wired up step by step

pub(crate) mod codec;

// Codecs and process management of the peer systems.
pub(crate) mod etcd;
#[cfg(test)]
mod peer_tests;
pub(crate) mod peers;
pub(crate) mod redis;
pub(crate) mod zk;
