#!/usr/bin/env bash
# The whole test suite: unit, property, integration (real `palisade serve`
# processes on loopback), doc tests, benchmark smoke runs, the deterministic
# simulation of the control plane, the Python client's tests, the loom
# models of the lease table, the systemd units under a booted systemd, and
# a time-boxed run of every fuzz target.
# Needs a Rust toolchain, qemu-utils for the fencing proxy's tests and
# promtool (Debian's prometheus package) for the metrics tests; as root on
# Debian it installs them. Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each stage's header says how far into the suite it starts (bash's
# SECONDS), so a slow stage shows in any log.
stage() { echo "== $* (at ${SECONDS} s)"; }

stage "tools the integration tests drive"
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
# The metrics tests pipe /metrics through `promtool check metrics`. The
# package also ships the Prometheus server; where systemd runs it starts
# it, so stop it again: the tests need only the checker.
if ! command -v promtool >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        install_prometheus() {
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null
        }
        install_prometheus || { apt-get update -q >/dev/null && install_prometheus; }
        if [ -d /run/systemd/system ]; then
            systemctl disable --now prometheus >/dev/null 2>&1 || true
        fi
    else
        echo "promtool missing and not root: the metrics format checks will skip"
    fi
fi

# The compare benchmark's codecs are tested against real Redis, etcd and
# ZooKeeper servers (Debian's packages); as root, install them. An install
# that fails (no network) leaves those live tests printing SKIP.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    bench/install-peers.sh >/dev/null || echo "bench/install-peers.sh failed: the live peer tests will skip"
else
    echo "not root: the compare benchmark's live Redis/etcd/ZooKeeper tests skip if those are missing"
fi

stage "workspace tests"
cargo test --workspace --locked

stage "crate boundaries: the proxy without the lease table, the client library without its CLI"
# The fencing proxy checks tokens and never mints them: it must not even
# link the data plane (docs/ARCHITECTURE.md, the crate table).
if cargo tree --locked -p palisade-fencing-proxy -e normal --prefix none | grep -q "^palisade-dataplane v"; then
    echo "palisade-fencing-proxy depends on palisade-dataplane" >&2
    exit 1
fi
# An application that links palisade-client without default features gets
# no CLI dependencies (docs/ARCHITECTURE.md, the crate table).
client_deps=$(cargo tree --locked -p palisade-client --no-default-features -e normal --prefix none)
for forbidden in clap toml serde_json; do
    if grep -q "^$forbidden v" <<<"$client_deps"; then
        echo "palisade-client without default features depends on $forbidden" >&2
        exit 1
    fi
done
cargo test --locked -p palisade-client --no-default-features
# The test helpers are a dev-dependency only: no shipped crate links them.
if cargo tree --locked --workspace --exclude palisade-testkit -e normal --prefix none | grep -q "^palisade-testkit v"; then
    echo "a workspace crate has palisade-testkit as a normal dependency" >&2
    exit 1
fi

stage "systemd units (systemd-analyze verify, security) and scripts/install.sh"
scripts/test-systemd.sh

stage "systemd units under a booted systemd (systemd-nspawn): install, start, SIGKILL restart, stop"
# Root only; the first run debootstraps a minimal Debian into
# /var/cache/palisade-test/rootfs (about a minute), later runs reuse it.
scripts/test-systemd-boot.sh

stage "benchmarks compile and run once (criterion test mode)"
cargo test --locked -p palisade-dataplane -p palisade-proto --benches

stage "deterministic simulation of the control plane: 2000 seeded schedules"
# Release build: each schedule is seconds of simulated raft under faults.
PALISADE_SIM_SEEDS=2000 cargo test --locked --release -p palisade-control --test sim
stage "deterministic simulation of replicated leases with clients: 2000 seeded schedules each"
PALISADE_SIM_SEEDS=2000 cargo test --locked --release -p palisade-control --test sim_leases

stage "Python client (clients/python): codec against proto/vectors, live tests against real binaries"
# Standard library only. The live tests run the release binaries (a single
# node, a three-node cluster, the fencing proxy) and skip, saying why, when
# one is missing.
if command -v python3 >/dev/null && python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))'; then
    cargo build --locked --release --bin palisade --bin palisade-fencing-proxy
    PALISADE_BIN_DIR="$PWD/target/release" python3 -m unittest discover -s clients/python/tests -t clients/python/tests
else
    echo "SKIP: python3 >= 3.9 not found: the Python client's tests did not run"
fi

stage "loom models of the lease table"
# A separate target dir: --cfg loom rebuilds the table's dependencies.
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS=3 \
    cargo test --locked -p palisade-dataplane --no-default-features --lib --release table::loom_tests

stage "fuzzing: every cargo-fuzz target for \$PALISADE_FUZZ_SECONDS (30 s here) from its seed corpus"
# fuzz/ is its own workspace, built with libFuzzer and ASan into
# target/fuzz (about 5 minutes the first time); scripts/fuzz.sh installs
# cargo-fuzz when missing and skips, saying why, only if it cannot. Longer
# runs: PALISADE_FUZZ_SECONDS=600 scripts/fuzz.sh TARGET.
PALISADE_FUZZ_SECONDS=${PALISADE_FUZZ_SECONDS:-30} scripts/fuzz.sh

echo "== all tests passed in ${SECONDS} s"
