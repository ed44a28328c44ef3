#!/usr/bin/env bash
# The whole test suite: unit, property, integration (real `palisade serve`
# processes on loopback), doc tests, benchmark smoke runs, the deterministic
# simulation of the control plane, and the loom models of the lease table.
# Needs a Rust toolchain, and qemu-utils for the fencing proxy's tests (as
# root on Debian it installs them); run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== tools the integration tests drive"
# The fencing proxy's tests run unmodified qemu-io / qemu-img / qemu-nbd
# clients. As root on Debian, install them when missing; otherwise those
# tests print SKIP and pass.
if ! command -v qemu-io >/dev/null || ! command -v qemu-nbd >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-utils >/dev/null ||
            { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-utils >/dev/null; }
    else
        echo "qemu-utils missing and not root: the proxy's NBD tests will skip"
    fi
fi

echo "== workspace tests"
cargo test --workspace --locked

echo "== systemd units (systemd-analyze verify, security) and scripts/install.sh"
scripts/test-systemd.sh

echo "== benchmarks compile and run once (criterion test mode)"
cargo test --locked -p palisade-dataplane --benches

echo "== deterministic simulation of the control plane: 2000 seeded schedules"
# Release build: each schedule is seconds of simulated raft under faults.
PALISADE_SIM_SEEDS=2000 cargo test --locked --release -p palisade-control --test sim

echo "== loom models of the lease table"
# A separate target dir: --cfg loom rebuilds the table's dependencies.
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS=3 \
    cargo test --locked -p palisade-dataplane --no-default-features --lib --release table::loom_tests

echo "== all tests passed"
