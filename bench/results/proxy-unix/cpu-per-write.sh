#!/usr/bin/env bash
# CPU time per 4 KiB write of one proxy build behind each upstream
# transport: targets direct (qemu-nbd on TCP), proxy-upstream (the proxy
# forwarding to that qemu-nbd over loopback TCP) and proxy-unix (the proxy
# forwarding to a second qemu-nbd on a Unix socket, same image, locking
# off, as in bench/scripts/proxy-overhead.sh), taking turns; 4
# connections, DEPTH in flight, one load round of SECONDS per target,
# ROUNDS times. Per target and round: the load's line, then
#   proxy_us   the proxy's utime+stime over the round / writes (for
#              `direct`: none, the proxy is idle)
#   qemu_us    the qemu-nbd serving this target: utime+stime / writes
#   idle_pct   the machine's idle share over the round
# With SYSCALLS=1 (SECONDS at least 3), also the syscalls per write of the
# proxy and of that qemu-nbd (perf stat on the syscalls:sys_enter_*
# tracepoints of each process over the middle SECONDS-2 s), the 8 most
# frequent of each. With PROFILE=DIR (SECONDS at least 3), a `perf record
# -e cpu-clock -g` of the proxy over the middle SECONDS-2 s of each proxy
# target's round, one file per round in DIR.
#   usage: [SYSCALLS=1] [PROFILE=DIR] cpu-per-write.sh PROXYBIN DEPTH SECONDS ROUNDS
# Needs the release binaries of palisade and the load example in
# CARGO_TARGET_DIR (or target/): run bench/scripts/proxy-overhead.sh once.
set -euo pipefail
cd "$(dirname "$0")/../../.."
proxy_bin=$1; depth=$2; seconds=$3; rounds=$4
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
bin=${CARGO_TARGET_DIR:-target}/release; load=$bin/examples/nbd_pipeline_bench
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
truncate -s 256M "$work/disk.img"
lease_port=$(free_port); nbd_port=$(free_port); proxy_port=$(free_port)
: >"$work/palisade.toml"
"$bin/palisade" serve --config "$work/palisade.toml" --listen "127.0.0.1:$lease_port" \
    --admin-listen off --data-dir "$work/lease" >"$work/lease.log" 2>&1 &
qemu-nbd -f raw --persistent --shared=64 -b 127.0.0.1 -p "$nbd_port" -x up "$work/disk.img" &
tcp_pid=$!
qemu-nbd --image-opts --persistent --shared=64 -k "$work/nbd.sock" -x up \
    "driver=raw,file.driver=file,file.filename=$work/disk.img,file.locking=off" &
unix_pid=$!
cat >"$work/proxy.toml" <<TOML
[proxy]
listen = "127.0.0.1:$proxy_port"
state_dir = "state"
[lease_service]
endpoint = "127.0.0.1:$lease_port"
[[exports]]
name = "upstream"
tenant = "default"
resource = "bench-upstream"
nbd = "127.0.0.1:$nbd_port"
nbd_export = "up"
[[exports]]
name = "unix"
tenant = "default"
resource = "bench-unix"
nbd_socket = "$work/nbd.sock"
nbd_export = "up"
TOML
for _ in $(seq 100); do
    "$bin/palisade" status --endpoint "127.0.0.1:$lease_port" >/dev/null 2>&1 && [ -S "$work/nbd.sock" ] && break
    sleep 0.1
done
RUST_LOG=warn "$proxy_bin" --config "$work/proxy.toml" >"$work/proxy.log" 2>&1 &
proxy_pid=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$proxy_port") 2>/dev/null && break; sleep 0.1; done
token() {
    "$bin/palisade" acquire "$1" --ttl 30s --json --endpoint "127.0.0.1:$lease_port" |
        python3 -c 'import json,sys;print(json.load(sys.stdin)["token"])'
}
t_up=$(token bench-upstream); t_unix=$(token bench-unix)
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
idle_ticks() { awk '/^cpu /{print $5+$6}' /proc/stat; }
all_ticks() { awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8}' /proc/stat; }
hz=$(getconf CLK_TCK)
echo "== proxy: $proxy_bin, depth $depth, ${seconds}s x $rounds rounds"
for _ in $(seq "$rounds"); do
    for target in "direct $tcp_pid $nbd_port/up" \
        "proxy-upstream $tcp_pid $proxy_port/upstream@$t_up" \
        "proxy-unix $unix_pid $proxy_port/unix@$t_unix"; do
        set -- $target
        counting=()
        if [ -n "${SYSCALLS:-}" ]; then
            for who in proxy:$proxy_pid qemu:$2; do
                (sleep 1; perf stat -e 'syscalls:sys_enter_*' -p "${who#*:}" \
                    -o "$work/${who%%:*}.stat" -- sleep $((seconds - 2))) &
                counting+=($!)
            done
        fi
        if [ -n "${PROFILE:-}" ] && [ "$1" != direct ]; then
            mkdir -p "$PROFILE"
            (sleep 1; perf record -F 4999 -e cpu-clock -g -p "$proxy_pid" \
                -o "$PROFILE/$1.$(date +%s).data" -- sleep $((seconds - 2)) 2>/dev/null) &
            counting+=($!)
        fi
        p0=$(cpu_ticks "$proxy_pid"); q0=$(cpu_ticks "$2"); i0=$(idle_ticks); a0=$(all_ticks)
        line=$("$load" --connections 4 --depth "$depth" --seconds "$seconds" --rounds 1 \
            "$1=127.0.0.1:$3" | grep -E "^1 ")
        p1=$(cpu_ticks "$proxy_pid"); q1=$(cpu_ticks "$2"); i1=$(idle_ticks); a1=$(all_ticks)
        writes=$(echo "$line" | awk '{print $3}')
        per_write() { echo "scale=2; $1 * 1000000 / $hz / ($writes * $seconds)" | bc; }
        proxy_us=$(per_write $((p1 - p0)))
        [ "$1" = direct ] && proxy_us=-
        echo "$line  proxy_us=$proxy_us qemu_us=$(per_write $((q1 - q0))) idle_pct=$(((i1 - i0) * 100 / (a1 - a0)))"
        if [ ${#counting[@]} -gt 0 ]; then
            wait "${counting[@]}"
        fi
        if [ -n "${SYSCALLS:-}" ]; then
            for who in proxy qemu; do
                echo "   $who syscalls per write:"
                awk -v w="$writes" -v s=$((seconds - 2)) '/syscalls:sys_enter_/ {
                    gsub(",", "", $1); if ($1 + 0 > 0) printf "     %-36s %7.3f\n", $2, $1 / (w * s) }' \
                    "$work/$who.stat" | sort -k2 -nr | head -8
            done
        fi
    done
done
