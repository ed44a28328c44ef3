#!/usr/bin/env bash
# Syscalls per request of the echo runtimes (glommio, uring, uring waiting
# past its sends, epoll) and
# Redis at one fixed rate, for issue 17's choice of a data-plane loop.
#
# Each server runs on CPU 0, loaded by `palisade-bench open-loop`
# (uncontended acquire+release cycles, two requests per arrival) on CPU 1,
# twice: under `strace -c -f` (which syscalls; ptrace slows every syscall,
# so the server batches more than it would and the counts are a lower
# bound) and under `perf stat -e raw_syscalls:sys_enter` (the total, at
# almost no cost to the server). Requests are counted as the generator's
# answered requests/s times warm-up + recorded time, like `compare`'s CPU
# per request.
#
# Needs strace, perf, redis-server and a release build:
#   cargo build --release -p palisade-bench
# Usage (the bench lock keeps benchmarks from overlapping):
#   flock /tmp/bench.lock nice -n -10 bench/scripts/echo-syscalls.sh OUT [RATE] [CONNS] [DURATION]
# Writes OUT/strace-<system>-<rate>-<conns>.txt, OUT/perf-...txt and
# prints one summary line per system (also OUT/syscalls-<rate>-<conns>.txt).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: echo-syscalls.sh OUT [RATE] [CONNS] [DURATION]}
rate=${2:-20000}
conns=${3:-1}
duration=${4:-4s}
warmup=1s
bench=target/release/palisade-bench
mkdir -p "$out"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
summary="$out/syscalls-$rate-$conns.txt"
: >"$summary"

# start_server TRACER SYSTEM: starts SYSTEM on CPU 0 under TRACER (strace
# or perf); sets tracer_pid, server_pid, addr.
start_server() {
    local tracer=$1 system=$2 file=$out/$1-$2-$rate-$conns.txt
    local trace
    if [ "$tracer" = strace ]; then
        trace=(strace -c -f -o "$file" --)
    else
        local events=raw_syscalls:sys_enter
        for call in io_uring_enter epoll_wait epoll_pwait read write recvfrom sendto futex; do
            events+=,syscalls:sys_enter_$call
        done
        trace=(perf stat -e "$events" -x, -o "$file" --)
    fi
    : >"$work/stdout"
    case $system in
    redis)
        local port=6391
        "${trace[@]}" taskset -c 0 redis-server --port $port --bind 127.0.0.1 --save "" \
            --appendonly no --daemonize no --logfile "" --dir "$work" >"$work/stdout" 2>&1 &
        addr=127.0.0.1:$port
        ;;
    *)
        local flags=(--runtime "${system#echo-}")
        [ "$system" = echo ] && flags=(--runtime glommio)
        [ "$system" = echo-uring-past-sends ] && flags=(--runtime uring --uring-wait-past-sends)
        "${trace[@]}" taskset -c 0 $bench echo-server "${flags[@]}" --cpu 0 >"$work/stdout" &
        addr=
        ;;
    esac
    tracer_pid=$!
    for _ in $(seq 100); do
        server_pid=$(ps --ppid "$tracer_pid" -o pid= | tr -d ' ' || true)
        if [ -n "$server_pid" ]; then
            if [ "$system" = redis ]; then
                (exec 3<>/dev/tcp/127.0.0.1/${addr##*:}) 2>/dev/null && return 0
            else
                addr=$(sed -n 's/^listening //p' "$work/stdout")
                [ -n "$addr" ] && return 0
            fi
        fi
        sleep 0.1
    done
    echo "$system did not start under $tracer" >&2
    exit 1
}

stop_server() {
    kill -TERM "$server_pid"
    wait "$tracer_pid" || true
}

load() { # SYSTEM -> prints requests answered
    local protocol=$1
    case $protocol in echo*) protocol=echo ;; esac
    $bench open-loop --system "$protocol" --echo-size 64 --endpoint "$addr" --rate "$rate" \
        --connections "$conns" --duration "$duration" --warmup "$warmup" --cpu 1 --json \
        >"$work/load.json"
    python3 - "$work/load.json" "$duration" "$warmup" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
secs = lambda s: float(s[:-2]) / 1000 if s.endswith("ms") else float(s[:-1])
print(round(m["requests_per_s"] * (secs(sys.argv[2]) + secs(sys.argv[3]))))
EOF
}

for system in echo echo-uring echo-uring-past-sends echo-epoll redis; do
    start_server strace $system
    strace_requests=$(load $system)
    stop_server
    sleep 1
    start_server perf $system
    perf_requests=$(load $system)
    stop_server
    sleep 1
    python3 - "$system" "$out/strace-$system-$rate-$conns.txt" "$strace_requests" \
        "$out/perf-$system-$rate-$conns.txt" "$perf_requests" <<'EOF' | tee -a "$summary"
import sys
system, strace_file, strace_req, perf_file, perf_req = sys.argv[1:]
strace_req, perf_req = int(strace_req), int(perf_req)
calls = {}
for line in open(strace_file):
    f = line.split()
    if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
        calls[f[-1]] = int(f[3])
total = sum(calls.values())
top = sorted(calls.items(), key=lambda kv: -kv[1])[:5]
perf_total, perf_calls = 0, {}
for line in open(perf_file):
    f = line.strip().split(",")
    if len(f) > 2 and f[0].isdigit():
        if f[2].startswith("raw_syscalls:sys_enter"):
            perf_total = int(f[0])
        elif int(f[0]) > 0:
            perf_calls[f[2].split("sys_enter_")[-1]] = int(f[0])
per = lambda n, r: f"{n / max(r, 1):.2f}"
print(f"{system}: perf {per(perf_total, perf_req)} syscalls/request ({perf_total} for {perf_req} requests: "
      + ", ".join(f"{k} {per(n, perf_req)}" for k, n in sorted(perf_calls.items(), key=lambda kv: -kv[1]))
      + f"); strace {per(total, strace_req)} ({total} for {strace_req}: "
      + ", ".join(f"{name} {per(n, strace_req)}" for name, n in top) + ")")
EOF
done
