#!/usr/bin/env bash
# Installs Palisade as systemd services: the binaries, the units
# (palisade.service, palisade@.service, palisade-fencing-proxy.service), a
# sysusers.d entry and the system user `palisade`, and a default config
# that is written only if none exists. Idempotent: a second run changes
# nothing. See docs/OPERATIONS.md, "Running as a systemd service".
#
#   scripts/install.sh                       # build (cargo build --release) and install
#   scripts/install.sh --bin-dir target/release   # install binaries built already
#   scripts/install.sh --destdir /tmp/stage  # stage into a directory (packaging, tests)
#   scripts/install.sh --prefix /opt/palisade
#   scripts/install.sh --uninstall           # remove what it installed; keeps config and state
set -euo pipefail

usage() {
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

prefix=/usr/local
destdir=
bin_dir=
uninstall=0
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
        --prefix=*) prefix=${1#--prefix=}; shift ;;
        --destdir) destdir=${2:?--destdir needs a directory}; shift 2 ;;
        --destdir=*) destdir=${1#--destdir=}; shift ;;
        --bin-dir) bin_dir=${2:?--bin-dir needs a directory}; shift 2 ;;
        --bin-dir=*) bin_dir=${1#--bin-dir=}; shift ;;
        --uninstall) uninstall=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "install.sh: unknown argument: $1" >&2; usage 2 >&2 ;;
    esac
done
case "$prefix" in
    /*) ;;
    *) echo "install.sh: --prefix must be absolute: $prefix" >&2; exit 2 ;;
esac
if [ -n "$destdir" ]; then
    mkdir -p "$destdir"
    destdir=$(cd "$destdir" && pwd)
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
user=palisade
bins=(palisade palisade-fencing-proxy)
units=(palisade.service palisade@.service palisade-fencing-proxy.service)
unit_dir=/etc/systemd/system
config_dir=/etc/palisade
config=$config_dir/palisade.toml
sysusers=/etc/sysusers.d/palisade.conf
doc_dir=$prefix/share/doc/palisade
# Every file this script owns, so --uninstall removes exactly those.
owned=()
for b in "${bins[@]}"; do owned+=("$prefix/bin/$b"); done
for u in "${units[@]}"; do owned+=("$unit_dir/$u"); done
owned+=("$sysusers" "$doc_dir/OPERATIONS.md" "$doc_dir/fencing-proxy.example.toml")

changed=0
say() { printf '%s\n' "$*"; }

# systemd is the service manager of this machine (sd_booted's test).
systemd_running() { [ -d /run/systemd/system ]; }

# Installs $1 (a file) as $2 (a path on the target) with mode $3, unless
# the target already holds exactly these bytes and that mode.
put() {
    local src=$1 dst=$destdir$2 mode=$3
    if [ -f "$dst" ] && cmp -s "$src" "$dst" && [ "$(stat -c %a "$dst")" = "${mode#0}" ]; then
        say "unchanged  $2"
        return
    fi
    mkdir -p "$(dirname "$dst")"
    # Into place with a rename: a running binary keeps its old inode.
    local tmp
    tmp=$(mktemp "$(dirname "$dst")/.install.XXXXXX")
    cp "$src" "$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$dst"
    say "installed  $2"
    changed=1
}

reload_hint() {
    if [ -n "$destdir" ]; then
        say "staged into $destdir: on the target, run systemctl daemon-reload"
    elif systemd_running; then
        systemctl daemon-reload
        say "systemctl daemon-reload: done"
    else
        say "systemd is not the service manager here (no /run/systemd/system): nothing reloaded."
        say "On a host booted with systemd, run: systemctl daemon-reload"
    fi
}

if [ "$uninstall" = 1 ]; then
    if [ -z "$destdir" ] && systemd_running; then
        for u in palisade.service palisade-fencing-proxy.service; do
            if systemctl is-active --quiet "$u" || systemctl is-enabled --quiet "$u" 2>/dev/null; then
                systemctl disable --now "$u"
            fi
        done
        for instance in $(systemctl list-units --all --plain --no-legend 'palisade@*.service' | awk '{print $1}'); do
            systemctl disable --now "$instance"
        done
    fi
    for path in "${owned[@]}"; do
        if [ -e "$destdir$path" ]; then
            rm -f "$destdir$path"
            say "removed    $path"
            changed=1
        fi
    done
    rmdir "$destdir$doc_dir" 2>/dev/null || true
    say "kept       $config_dir (config) and /var/lib/palisade* (state: raft logs, fences)"
    say "kept       user $user (it owns the state); remove it with: userdel $user"
    [ "$changed" = 1 ] && reload_hint
    exit 0
fi

if [ -z "$bin_dir" ]; then
    say "building: cargo build --release --locked --bin palisade --bin palisade-fencing-proxy"
    (cd "$repo" && cargo build --release --locked --bin palisade --bin palisade-fencing-proxy)
    bin_dir=$repo/target/release
fi
for b in "${bins[@]}"; do
    if [ ! -x "$bin_dir/$b" ]; then
        echo "install.sh: $bin_dir/$b is missing or not executable (build it, or pass --bin-dir)" >&2
        exit 1
    fi
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for b in "${bins[@]}"; do
    put "$bin_dir/$b" "$prefix/bin/$b" 0755
done
for u in "${units[@]}"; do
    # The units name /usr/local/bin; point them at this prefix.
    sed "s#/usr/local/bin/#$prefix/bin/#g; s#/usr/local/share/doc/palisade/#$doc_dir/#g" \
        "$repo/systemd/$u" > "$work/$u"
    put "$work/$u" "$unit_dir/$u" 0644
done
printf 'u %s - "Palisade lease service" /var/lib/palisade\n' "$user" > "$work/sysusers.conf"
put "$work/sysusers.conf" "$sysusers" 0644
put "$repo/docs/OPERATIONS.md" "$doc_dir/OPERATIONS.md" 0644
cat > "$work/fencing-proxy.example.toml" <<'EOF'
# Example config for palisade-fencing-proxy.service: copy it to
# /etc/palisade/fencing-proxy.toml and edit. Under the unit, state_dir and
# backing files must be absolute paths the unit may write (its
# StateDirectory, or ReadWritePaths= in a drop-in).
[proxy]
listen = "127.0.0.1:10809"
state_dir = "/var/lib/palisade-fencing-proxy"

[lease_service]
endpoint = "127.0.0.1:7400"

[[exports]]
name = "disk0"
tenant = "default"
resource = "disk0"
file = "/var/lib/palisade-fencing-proxy/disk0.img"
size = "64MiB"
EOF
put "$work/fencing-proxy.example.toml" "$doc_dir/fencing-proxy.example.toml" 0644

# The system user: static, not DynamicUser=, so the raft log and the fences
# keep one owner across restarts, upgrades and backups.
if [ -n "$destdir" ]; then
    say "staging: not creating user $user here; on the target: systemd-sysusers, or useradd --system --user-group --home-dir /var/lib/palisade --shell /usr/sbin/nologin $user"
elif getent passwd "$user" >/dev/null; then
    say "unchanged  user $user"
else
    useradd --system --user-group --home-dir /var/lib/palisade --no-create-home \
        --shell /usr/sbin/nologin --comment "Palisade lease service" "$user"
    say "created    user $user"
    changed=1
fi

# The default config, only if the operator has none: never overwrite it.
if [ -e "$destdir$config" ]; then
    say "kept       $config (exists; compare with: palisade config default)"
else
    "$bin_dir/palisade" config default > "$work/palisade.toml"
    mkdir -p "$destdir$config_dir"
    chmod 0750 "$destdir$config_dir"
    install -m 0640 "$work/palisade.toml" "$destdir$config"
    if [ -z "$destdir" ]; then
        chgrp "$user" "$destdir$config_dir" "$destdir$config"
    fi
    say "installed  $config (the built-in default)"
    changed=1
fi

if [ "$changed" = 1 ]; then
    reload_hint
    say "next: systemctl enable --now palisade (restart running services to pick up new binaries)"
else
    say "nothing changed"
fi
