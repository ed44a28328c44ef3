#!/usr/bin/env bash
# What the fencing proxy costs: 4 KiB random writes through the proxy vs
# directly against the same backend, all targets in one run, alternating,
# at 1, 4 and 16 requests in flight per connection.
#
# Targets (the same 256 MiB image file, one target at a time):
#   direct          qemu-nbd serving the file
#   proxy-file      palisade-fencing-proxy, file backend on the same file
#   proxy-upstream  palisade-fencing-proxy forwarding to that qemu-nbd
#                   (one more loopback hop than `direct`)
#   proxy-unix      palisade-fencing-proxy forwarding to a second qemu-nbd,
#                   same options and same image, listening on a Unix socket
#                   (`nbd_socket`; the hop is a Unix socket, not TCP)
# qemu-nbd cannot listen on TCP and a Unix socket at once, hence a second
# one. It serves the same file (not a copy) so that every target writes
# the same pages and extents and proxy-upstream and proxy-unix differ in
# the hop alone; it runs with image locking off (`file.locking=off`),
# since qemu's lock would refuse a second writer. That is safe here: the
# targets take turns, never two write at once.
# The writers hold live leases: every write goes through the fence check.
#
# The load is fencing-proxy/examples/nbd_pipeline_bench.rs: per connection a closed
# loop keeping DEPTH writes in flight, replies matched by cookie; per round
# and target writes/s and p50/p99/p99.9, then min and median over rounds
# and ratios to `direct` in the same round.
#
# Then a real client: qemu-img convert with 16 coroutines and out-of-order
# writes (-m 16 -W) of 256 MiB onto each target, seconds per round.
#
# Needs qemu-utils (qemu-nbd, qemu-img) and bc. Usage:
#   bench/scripts/proxy-overhead.sh [connections, default 4] [seconds per target per round, default 3]
#       [rounds, default 5] [depths, default "1 4 16"]
# CARGO_TARGET_DIR is honoured (the binaries are taken from it).
# PROXY_BIN=path runs another build of the proxy instead of this one.
# SETTLE=1 fsyncs the image before each target's turn (untimed), so no
# target runs during the writeback of what the target before it wrote
# (proxy-upstream otherwise always follows proxy-file, whose tens of
# thousands of writes a second leave dirty pages behind).
# UNIX_FIRST=1 runs proxy-unix before proxy-upstream (right after
# proxy-file, where proxy-upstream runs otherwise), to see what the order
# does to the two.
# BASELINE_PROXY_BIN=path also runs that build, as targets base-file and
# base-upstream in the same rounds (a before/after comparison in one run);
# it gets no Unix-socket export, so it may predate `nbd_socket` (PROXY_BIN
# may not).
set -euo pipefail
cd "$(dirname "$0")/../.."
connections=${1:-4}
seconds=${2:-3}
seconds=${seconds%s}
rounds=${3:-5}
depths=${4:-1 4 16}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

command -v qemu-nbd >/dev/null || { echo "qemu-nbd missing: apt-get install qemu-utils" >&2; exit 1; }
cargo build --release --locked -p palisade-control -p palisade-fencing-proxy
cargo build --release --locked -p palisade-fencing-proxy --example nbd_pipeline_bench
bin=${CARGO_TARGET_DIR:-target}/release
load=$bin/examples/nbd_pipeline_bench
proxy_bin=${PROXY_BIN:-$bin/palisade-fencing-proxy}
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

echo "== machine: $(nproc) CPUs, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
truncate -s 256M "$work/disk.img"

lease_port=$(free_port); nbd_port=$(free_port); proxy_port=$(free_port)
: >"$work/palisade.toml"
"$bin/palisade" serve --config "$work/palisade.toml" --listen "127.0.0.1:$lease_port" --admin-listen off \
    --data-dir "$work/lease" >"$work/lease.log" 2>&1 &
qemu-nbd -f raw --persistent --shared=64 -b 127.0.0.1 -p "$nbd_port" -x up "$work/disk.img" &
qemu-nbd --image-opts --persistent --shared=64 -k "$work/nbd.sock" -x up \
    "driver=raw,file.driver=file,file.filename=$work/disk.img,file.locking=off" &
proxy_config() { # listen port, state dir, [unix: add the Unix-socket export]
cat <<TOML
[proxy]
listen = "127.0.0.1:$1"
state_dir = "$2"
[lease_service]
endpoint = "127.0.0.1:$lease_port"
[[exports]]
name = "file"
tenant = "default"
resource = "bench-file"
file = "disk.img"
[[exports]]
name = "upstream"
tenant = "default"
resource = "bench-upstream"
nbd = "127.0.0.1:$nbd_port"
nbd_export = "up"
TOML
if [ "${3:-}" = unix ]; then
cat <<TOML
[[exports]]
name = "unix"
tenant = "default"
resource = "bench-unix"
nbd_socket = "$work/nbd.sock"
nbd_export = "up"
TOML
fi
}
proxy_config "$proxy_port" state unix >"$work/proxy.toml"
for _ in $(seq 100); do [ -S "$work/nbd.sock" ] && break; sleep 0.1; done
[ -S "$work/nbd.sock" ] || { echo "qemu-nbd on $work/nbd.sock did not start" >&2; exit 1; }
for _ in $(seq 100); do
    "$bin/palisade" status --endpoint "127.0.0.1:$lease_port" >/dev/null 2>&1 && break; sleep 0.1
done
RUST_LOG=warn "$proxy_bin" --config "$work/proxy.toml" >"$work/proxy.log" 2>&1 &
baseline=()
if [ -n "${BASELINE_PROXY_BIN:-}" ]; then
    base_port=$(free_port)
    proxy_config "$base_port" base-state >"$work/base.toml"
    RUST_LOG=warn "$BASELINE_PROXY_BIN" --config "$work/base.toml" >"$work/base.log" 2>&1 &
fi
for port in "$proxy_port" ${base_port:-}; do
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1
    done
done
token() {
    "$bin/palisade" acquire "$1" --ttl 30s --json --endpoint "127.0.0.1:$lease_port" |
        python3 -c 'import json,sys;print(json.load(sys.stdin)["token"])'
}
t_file=$(token bench-file); t_up=$(token bench-upstream); t_unix=$(token bench-unix)
if [ -n "${base_port:-}" ]; then
    baseline=("base-file=127.0.0.1:$base_port/file@$t_file" "base-upstream=127.0.0.1:$base_port/upstream@$t_up")
    echo "== baseline proxy: $BASELINE_PROXY_BIN"
fi

echo "== proxy: $proxy_bin"
up_targets=("proxy-upstream=127.0.0.1:$proxy_port/upstream@$t_up" "proxy-unix=127.0.0.1:$proxy_port/unix@$t_unix")
up_convert=("proxy-upstream=nbd://127.0.0.1:$proxy_port/upstream@$t_up"
    "proxy-unix=nbd://127.0.0.1:$proxy_port/unix@$t_unix")
if [ -n "${UNIX_FIRST:-}" ]; then
    echo "== UNIX_FIRST: proxy-unix runs before proxy-upstream"
    up_targets=("${up_targets[1]}" "${up_targets[0]}")
    up_convert=("${up_convert[1]}" "${up_convert[0]}")
fi
if [ -n "${SETTLE:-}" ]; then echo "== SETTLE: the image is fsynced before each target's turn"; fi
for depth in $depths; do
    echo
    "$load" --connections "$connections" --depth "$depth" --seconds "$seconds" --rounds "$rounds" \
        ${SETTLE:+--settle "$work/disk.img"} \
        "direct=127.0.0.1:$nbd_port/up" \
        "proxy-file=127.0.0.1:$proxy_port/file@$t_file" "${up_targets[@]}" "${baseline[@]}"
done
# A real client: qemu-img convert (16 coroutines, out-of-order writes) of
# 256 MiB of random data onto each target, several rounds alternating.
echo
echo "== qemu-img convert -m 16 -W, 256 MiB random data (seconds, each round)"
head -c 256M /dev/urandom >"$work/source.img"
convert_targets=("direct=nbd://127.0.0.1:$nbd_port/up"
    "proxy-file=nbd://127.0.0.1:$proxy_port/file@$t_file" "${up_convert[@]}")
if [ -n "${base_port:-}" ]; then
    convert_targets+=("base-file=nbd://127.0.0.1:$base_port/file@$t_file"
        "base-upstream=nbd://127.0.0.1:$base_port/upstream@$t_up")
fi
for target in "${convert_targets[@]}"; do
    printf '%-16s' "${target%%=*}"
    for _ in $(seq "$rounds"); do
        start=$(date +%s.%N)
        qemu-img convert -n -f raw -O raw -m 16 -W "$work/source.img" "${target#*=}"
        printf ' %6.2f' "$(echo "$(date +%s.%N) - $start" | bc)"
    done
    echo
done
echo "== proxy warnings and errors (none expected)"
grep -hE "WARN|ERROR" "$work/proxy.log" "$work/base.log" 2>/dev/null | head -5 || true
