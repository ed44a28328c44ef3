#!/usr/bin/env bash
# Boots a real systemd (Debian bookworm, in systemd-nspawn) and runs the
# units under it, with this build's binaries and scripts/install.sh:
#   1. debootstrap a minimal bookworm with systemd (cached: built once into
#      $PALISADE_TEST_ROOTFS, default /var/cache/palisade-test/rootfs);
#   2. boot it with systemd-nspawn (a throw-away overlay over the cached
#      tree, its own network namespace, the repository bind-mounted
#      read-only at /palisade);
#   3. scripts/install.sh inside, then `systemctl enable --now` the node and
#      the fencing proxy: both active (running), READY, with the STATUS text
#      the daemons send ("leader term 1, granting"; "serving NBD on ...");
#   4. a lease acquired with the CLI inside;
#   5. SIGKILL of the node (`systemctl kill -s KILL`): systemd restarts it
#      (NRestarts goes up, active again, a higher term);
#   6. the lease is still held with the same token (`palisade check`
#      answers current) and its holder renews it: leases are replicated
#      through raft (leases.replication = "quorum", the default);
#   6b. the same across `systemctl restart palisade` (a clean stop and
#      start): check answers current, renew succeeds, same token;
#   7. `systemctl stop` of both: inactive, Result=success, exit status 0;
#   8. the container is powered off.
# Needs root, debootstrap, systemd-nspawn (Debian: systemd-container) and
# nsenter; as root on Debian it installs the first two. Skips, saying why,
# only when not root, or when the first debootstrap cannot download.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

rootfs=${PALISADE_TEST_ROOTFS:-/var/cache/palisade-test/rootfs}
suite=bookworm
include=systemd,systemd-sysv,dbus
machine=palisade-boot-$$
start_s=$(date +%s)
step_s=$start_s

fail() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "SKIP: $*"; exit 0; }
elapsed() {
    local now
    now=$(date +%s)
    echo "   ($(( now - step_s ))s; $(( now - start_s ))s in all)"
    step_s=$now
}

[ "$(id -u)" = 0 ] || skip "not root: systemd-nspawn and debootstrap need root; the units were not booted"
if ! command -v debootstrap >/dev/null || ! command -v systemd-nspawn >/dev/null; then
    if command -v apt-get >/dev/null; then
        install_tools() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap systemd-container >/dev/null; }
        install_tools || { apt-get update -q >/dev/null && install_tools; } ||
            skip "debootstrap / systemd-nspawn are missing and apt-get could not install them"
    else
        skip "debootstrap / systemd-nspawn are missing (Debian: apt-get install debootstrap systemd-container)"
    fi
fi
command -v nsenter >/dev/null || fail "nsenter (util-linux) is missing"

echo "== rootfs: $rootfs"
stamp="$suite minbase $include"
mkdir -p "$(dirname "$rootfs")"
# Runs on one machine share the cache: one debootstrap at a time.
exec 9>"$rootfs.lock"
flock 9
if [ ! -f "$rootfs/.palisade-rootfs" ] || [ "$(cat "$rootfs/.palisade-rootfs")" != "$stamp" ]; then
    echo "debootstrap --variant=minbase --include=$include $suite (first run only; cached afterwards)"
    rm -rf "$rootfs.tmp"
    if ! debootstrap --variant=minbase --include="$include" "$suite" "$rootfs.tmp" >"$(dirname "$rootfs")/debootstrap.log" 2>&1; then
        tail -5 "$(dirname "$rootfs")/debootstrap.log"
        rm -rf "$rootfs.tmp"
        skip "debootstrap failed (no network to the Debian mirror?); see $(dirname "$rootfs")/debootstrap.log"
    fi
    echo "$stamp" > "$rootfs.tmp/.palisade-rootfs"
    rm -rf "$rootfs"
    mv "$rootfs.tmp" "$rootfs"
else
    echo "cached ($(cat "$rootfs/.palisade-rootfs"))"
fi
# Shared from here on (every boot overlays it read-only); a rebuild waits
# for the boots that use the old tree.
flock -s 9
elapsed

echo "== build the release binaries"
cargo build --locked --release --bin palisade --bin palisade-fencing-proxy
elapsed

log=$(mktemp /tmp/palisade-boot.XXXXXX.log)
nspawn_pid=
pid1=
inside() { nsenter -t "$pid1" -a "$@"; }
teardown() {
    local rc=$?
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        if [ -n "$pid1" ]; then
            inside systemctl poweroff --no-block >/dev/null 2>&1 || true
        fi
        for _ in $(seq 1 60); do
            kill -0 "$nspawn_pid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$nspawn_pid" 2>/dev/null; then
            echo "the container did not power off within 30s: killing systemd-nspawn" >&2
            kill -KILL "$nspawn_pid" 2>/dev/null || true
        fi
        wait "$nspawn_pid" 2>/dev/null || true
    fi
    if [ "$rc" != 0 ]; then
        echo "--- container console (last 60 lines of $log)" >&2
        tail -60 "$log" >&2 || true
    else
        rm -f "$log"
    fi
}
trap teardown EXIT

echo "== boot: systemd-nspawn -b (overlay over the cached rootfs, private network)"
# --volatile=overlay: every write goes to a tmpfs overlay, so the cached
# tree stays pristine and nothing needs cleaning afterwards.
systemd-nspawn -D "$rootfs" -b --register=no --keep-unit -M "$machine" \
    --volatile=overlay --private-network --bind-ro="$repo:/palisade" \
    --setenv=PALISADE_BOOT_TEST="$machine" \
    >"$log" 2>&1 </dev/null &
nspawn_pid=$!
# The container's PID 1: pid 1 in its own namespace, with the marker this
# run put into its environment.
for _ in $(seq 1 100); do
    for pid in $(pgrep -x systemd 2>/dev/null || true); do
        nspid=$(awk '/^NSpid:/ { print $NF }' "/proc/$pid/status" 2>/dev/null || true)
        if [ "$nspid" = 1 ] && [ "$pid" != 1 ] &&
            tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx "PALISADE_BOOT_TEST=$machine"; then
            pid1=$pid
            break 2
        fi
    done
    kill -0 "$nspawn_pid" 2>/dev/null || fail "systemd-nspawn exited during boot"
    sleep 0.2
done
[ -n "$pid1" ] || fail "no systemd PID 1 appeared in the container within 20s"
state=
for _ in $(seq 1 120); do
    state=$(inside systemctl is-system-running 2>/dev/null || true)
    case "$state" in running|degraded) break ;; esac
    sleep 0.5
done
case "$state" in
    running|degraded) ;;
    *) fail "the container's systemd did not finish booting within 60s (state: ${state:-none})" ;;
esac
echo "booted: $(inside systemctl --version | head -1), state $state, host pid of PID 1: $pid1"
elapsed

echo "== scripts/install.sh inside the container"
inside /palisade/scripts/install.sh --bin-dir /palisade/target/release | tee "$log.install"
grep -q '^created    user palisade' "$log.install" || fail "install.sh did not create the user"
grep -q '^systemctl daemon-reload: done' "$log.install" || fail "install.sh did not reload systemd"
inside /palisade/scripts/install.sh --bin-dir /palisade/target/release | grep -q '^nothing changed$' ||
    fail "a second install.sh changed something"
rm -f "$log.install"
inside install -m 0640 -g palisade /usr/local/share/doc/palisade/fencing-proxy.example.toml \
    /etc/palisade/fencing-proxy.toml
elapsed

# `systemctl show` of unit $1, property $2.
prop() { inside systemctl show -P "$2" "$1"; }
expect_running() {
    local unit=$1 active sub
    active=$(prop "$unit" ActiveState)
    sub=$(prop "$unit" SubState)
    [ "$active/$sub" = active/running ] || {
        inside systemctl status --no-pager "$unit" >&2 || true
        inside journalctl --no-pager -n 30 -u "$unit" >&2 || true
        fail "$unit is $active ($sub), not active (running)"
    }
}
# Waits up to $3 seconds for unit $1's STATUS= text to match the regex $2.
wait_status() {
    local unit=$1 pattern=$2 limit=$3 text=
    for _ in $(seq 1 $(( limit * 4 ))); do
        text=$(prop "$unit" StatusText)
        if [[ "$text" =~ $pattern ]]; then
            echo "$unit: active (running), STATUS: \"$text\""
            return 0
        fi
        sleep 0.25
    done
    fail "$unit STATUS is \"$text\" after ${limit}s, expected /$pattern/"
}

echo "== systemctl enable --now palisade"
# Type=notify: returns once the node sent READY=1.
inside systemctl enable --now palisade 2>&1 | sed 's/^/   /'
expect_running palisade.service
wait_status palisade.service '^leader term 1, granting$' 60
restarts_before=$(prop palisade.service NRestarts)
elapsed

echo "== systemctl enable --now palisade-fencing-proxy"
inside systemctl enable --now palisade-fencing-proxy 2>&1 | sed 's/^/   /'
expect_running palisade-fencing-proxy.service
wait_status palisade-fencing-proxy.service '^serving NBD on 127\.0\.0\.1:10809, 1 export\(s\)$' 30
elapsed

echo "== a lease through the CLI inside the container"
json=$(inside /usr/local/bin/palisade acquire disk0 --ttl 30s --json) || fail "palisade acquire failed: $json"
echo "   $json"
token=$(echo "$json" | sed -n 's/.*"token":\([0-9]*\).*/\1/p')
[ -n "$token" ] || fail "no token in the acquire answer"
inside /usr/local/bin/palisade check disk0 "$token" --json >/dev/null || fail "the fresh lease does not check as current"
elapsed

echo "== SIGKILL the node: systemd restarts it"
inside systemctl kill -s KILL palisade
restarted=0
for _ in $(seq 1 120); do
    if [ "$(prop palisade.service NRestarts)" -gt "$restarts_before" ] &&
        [ "$(prop palisade.service ActiveState)" = active ]; then
        restarted=1
        break
    fi
    sleep 0.25
done
[ "$restarted" = 1 ] || fail "palisade was not restarted within 30s (NRestarts $(prop palisade.service NRestarts), $(prop palisade.service ActiveState))"
expect_running palisade.service
echo "NRestarts $restarts_before -> $(prop palisade.service NRestarts)"
# A restart starts a higher term; READY comes in the grace period or after.
wait_status palisade.service '^leader term [2-9][0-9]*, (granting|grace period \(no grants yet\))$' 30
elapsed

# A lease kept: `check` answers current (retried through the election or
# the takeover), then its holder renews it with the same token.
expect_kept() {
    local when=$1 kept=0 answer= rc
    for _ in $(seq 1 20); do
        rc=0
        answer=$(inside /usr/local/bin/palisade check disk0 "$token" --json 2>&1) || rc=$?
        if [ "$rc" = 0 ]; then
            kept=1
            break
        fi
        # 2: busy or unavailable (an election, a takeover): retry shortly.
        [ "$rc" = 2 ] || break
        sleep 0.5
    done
    [ "$kept" = 1 ] || fail "token $token on disk0 is not current $when: $answer"
    echo "   check: $answer"
    answer=$(inside /usr/local/bin/palisade renew disk0 "$token" --ttl 30s --json 2>&1) ||
        fail "the holder cannot renew token $token $when: $answer"
    echo "   renew: $answer"
}

echo "== the lease survives the SIGKILL (same token, current, renewable)"
expect_kept "after the SIGKILL restart"
elapsed

echo "== systemctl restart palisade: the lease survives it too"
inside systemctl restart palisade
expect_running palisade.service
wait_status palisade.service '^leader term ([3-9]|[1-9][0-9]+), (granting|grace period \(no grants yet\))$' 30
expect_kept "after systemctl restart"
elapsed

echo "== systemctl stop: both stop cleanly"
inside systemctl stop palisade-fencing-proxy palisade
for unit in palisade-fencing-proxy.service palisade.service; do
    active=$(prop "$unit" ActiveState)
    result=$(prop "$unit" Result)
    code=$(prop "$unit" ExecMainCode)
    status=$(prop "$unit" ExecMainStatus)
    echo "$unit: $active, Result=$result, ExecMainCode=$code, ExecMainStatus=$status"
    [ "$active" = inactive ] || fail "$unit is $active after stop"
    [ "$result" = success ] || fail "$unit stopped with Result=$result"
    # ExecMainCode 1 is CLD_EXITED: the daemon exited by itself on SIGTERM.
    [ "$code" = 1 ] && [ "$status" = 0 ] || fail "$unit did not exit 0 on SIGTERM (code $code, status $status)"
done
elapsed

echo "== power off the container"
inside systemctl poweroff --no-block >/dev/null 2>&1 || true
for _ in $(seq 1 60); do
    kill -0 "$nspawn_pid" 2>/dev/null || break
    sleep 0.5
done
kill -0 "$nspawn_pid" 2>/dev/null && fail "the container did not power off within 30s"
wait "$nspawn_pid" 2>/dev/null || true
nspawn_pid=
elapsed
echo "== systemd boot test: all passed in $(( $(date +%s) - start_s ))s"
