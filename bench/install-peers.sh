#!/usr/bin/env bash
# Installs the peer systems `palisade-bench compare` measures Palisade
# against, from Debian's packages: Redis, etcd 3.4 (server and etcdctl),
# ZooKeeper 3.8 and a headless Java runtime for it.
#
# Idempotent: packages already installed are skipped, and `apt-get update`
# runs only when something has to be installed. The packaged services are
# never left running or enabled: the benchmark starts its own instances on
# loopback with their data in temporary directories (bench/src/compare/
# peers.rs). During the install a policy-rc.d forbids service starts (unless
# one is already in place), and afterwards, on a host where systemd runs,
# the units are stopped and disabled.
#
# Needs root (apt-get). Usage: bench/install-peers.sh
set -euo pipefail

packages=(redis-server etcd-server etcd-client zookeeper default-jre-headless)
# Services these packages may ship, that must not run or start at boot.
services=(redis-server etcd zookeeper)

if [[ $(id -u) -ne 0 ]]; then
    echo "install-peers.sh: must run as root (it calls apt-get install); try: sudo $0" >&2
    exit 1
fi

installed() {
    [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

missing=()
for p in "${packages[@]}"; do
    if installed "$p"; then
        echo "already installed: $p"
    else
        missing+=("$p")
    fi
done

if [[ ${#missing[@]} -gt 0 ]]; then
    echo "installing: ${missing[*]}"
    # Forbid maintainer scripts from starting services (exit 101 = action
    # forbidden, see /usr/share/doc/init-system-helpers/README.policy-rc.d).
    # An existing policy-rc.d is the administrator's: leave it as it is.
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        own_policy=1
        trap 'rm -f "$policy"' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update
    apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${missing[@]}"
    if [[ $own_policy -eq 1 ]]; then
        rm -f "$policy"
        trap - EXIT
    fi
fi

# Stop and disable the packaged services where an init system manages them.
if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
    for s in "${services[@]}"; do
        if systemctl list-unit-files "$s.service" >/dev/null 2>&1 \
            && systemctl cat "$s.service" >/dev/null 2>&1; then
            systemctl disable --now "$s.service" >/dev/null 2>&1 || true
            echo "service $s: stopped and disabled (systemd)"
        fi
    done
else
    for s in "${services[@]}"; do
        if [[ -x /etc/init.d/$s ]]; then
            /etc/init.d/"$s" stop >/dev/null 2>&1 || true
            update-rc.d "$s" disable >/dev/null 2>&1 || true
            echo "service $s: stop requested, start at boot disabled (sysv)"
        fi
    done
fi

echo
echo "peer versions:"
for p in "${packages[@]}"; do
    printf '  %-22s %s\n' "$p" "$(dpkg-query -W -f='${Version}' "$p")"
done
printf '  %-22s %s\n' "redis-server binary" "$(redis-server --version)"
printf '  %-22s %s\n' "etcd binary" "$(etcd --version 2>/dev/null | head -1)"
printf '  %-22s %s\n' "java" "$(java -version 2>&1 | head -1)"
zk_jar=$(ls /usr/share/java/zookeeper-[0-9]*.jar 2>/dev/null | head -1 || true)
printf '  %-22s %s\n' "zookeeper jar" "${zk_jar:-not found under /usr/share/java}"
