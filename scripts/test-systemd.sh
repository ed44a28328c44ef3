#!/usr/bin/env bash
# Tests the systemd units and scripts/install.sh against the binaries of
# this build (target/debug, built if missing):
#   1. install --destdir into a temp dir; a second run changes nothing and
#      the operator's edited config survives;
#   2. `systemd-analyze verify` on the installed units (ExecStart pointed at
#      the staged binaries) exits 0 with NOTHING on stderr (it only warns,
#      exit 0, on unknown keys and bad values); a unit with a bad key is
#      caught, so the check can fail;
#   3. `systemd-analyze security --offline=true` rates every unit "OK"
#      (exposure below 3.0);
#   4. --uninstall removes what was installed, keeps config and state.
# Skips 2 and 3, saying why, only where systemd-analyze is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

fail() { echo "FAIL: $*" >&2; exit 1; }

cargo build --locked --bin palisade --bin palisade-fencing-proxy
bins=$repo/target/debug
stage=$(mktemp -d)
scratch=$(mktemp -d)
trap 'rm -rf "$stage" "$scratch"' EXIT

echo "== install.sh --destdir: first run"
scripts/install.sh --destdir "$stage" --bin-dir "$bins" | tee "$scratch/first.txt"
for f in usr/local/bin/palisade usr/local/bin/palisade-fencing-proxy \
    etc/systemd/system/palisade.service etc/systemd/system/palisade@.service \
    etc/systemd/system/palisade-fencing-proxy.service etc/palisade/palisade.toml \
    etc/sysusers.d/palisade.conf; do
    [ -f "$stage/$f" ] || fail "$f not installed"
done
"$bins/palisade" config check "$stage/etc/palisade/palisade.toml" >/dev/null ||
    fail "the installed default config does not validate"
"$bins/palisade" config default | cmp -s - "$stage/etc/palisade/palisade.toml" ||
    fail "the installed config is not the built-in default"

echo "== install.sh --destdir: second run changes nothing"
snapshot() { (cd "$stage" && find . -printf '%p %s %m %T@\n' | sort); }
snapshot > "$scratch/before.txt"
scripts/install.sh --destdir "$stage" --bin-dir "$bins" | tee "$scratch/second.txt"
snapshot > "$scratch/after.txt"
diff -u "$scratch/before.txt" "$scratch/after.txt" || fail "the second run changed files"
grep -q '^nothing changed$' "$scratch/second.txt" || fail "the second run did not say 'nothing changed'"
grep -q '^installed' "$scratch/second.txt" && fail "the second run installed something"

echo "== an operator's config is never overwritten"
echo '# edited by the operator' >> "$stage/etc/palisade/palisade.toml"
cp "$stage/etc/palisade/palisade.toml" "$scratch/edited.toml"
scripts/install.sh --destdir "$stage" --bin-dir "$bins" >/dev/null
cmp -s "$scratch/edited.toml" "$stage/etc/palisade/palisade.toml" || fail "the config was overwritten"

if command -v systemd-analyze >/dev/null; then
    echo "== systemd-analyze verify: exit 0 and nothing on stderr"
    units=(palisade.service palisade@.service palisade-fencing-proxy.service)
    mkdir "$scratch/units"
    for u in "${units[@]}"; do
        # verify checks that ExecStart exists: point it at the staged binary.
        sed "s#/usr/local/bin/#$stage/usr/local/bin/#g" "$stage/etc/systemd/system/$u" > "$scratch/units/$u"
    done
    verify() {
        local rc=0
        systemd-analyze verify "$1" 2> "$scratch/verify.err" || rc=$?
        [ "$rc" = 0 ] && [ ! -s "$scratch/verify.err" ]
    }
    for u in "${units[@]}"; do
        verify "$scratch/units/$u" || { cat "$scratch/verify.err" >&2; fail "systemd-analyze verify $u"; }
        echo "verify $u: clean"
    done
    # The check must be able to fail: one bad key makes stderr non-empty.
    { cat "$scratch/units/palisade.service"; printf '[Service]\nWatchdogSecs=30s\n'; } > "$scratch/units/bad.service"
    verify "$scratch/units/bad.service" && fail "verify did not catch an unknown key"
    grep -q WatchdogSecs "$scratch/verify.err" || fail "verify's warning does not name the bad key"
    echo "verify catches an unknown key: $(head -1 "$scratch/verify.err")"

    echo "== systemd-analyze security --offline=true"
    for u in "${units[@]}"; do
        line=$(systemd-analyze security --offline=true "$scratch/units/$u" | tail -1)
        echo "$line"
        score=$(echo "$line" | sed -n 's/.*: \([0-9.]*\) .*/\1/p')
        [ -n "$score" ] || fail "no exposure score for $u: $line"
        awk -v s="$score" 'BEGIN { exit !(s < 3.0) }' || fail "$u exposure $score is not below 3.0"
    done
else
    echo "SKIP: systemd-analyze is not installed (Debian: apt-get install systemd); units not verified"
fi

echo "== install.sh --uninstall keeps config and state"
mkdir -p "$stage/var/lib/palisade"
echo state > "$stage/var/lib/palisade/raft.log"
scripts/install.sh --destdir "$stage" --uninstall
for f in usr/local/bin/palisade usr/local/bin/palisade-fencing-proxy \
    etc/systemd/system/palisade.service etc/systemd/system/palisade@.service \
    etc/systemd/system/palisade-fencing-proxy.service etc/sysusers.d/palisade.conf \
    usr/local/share/doc/palisade/OPERATIONS.md; do
    [ ! -e "$stage/$f" ] || fail "$f survived --uninstall"
done
cmp -s "$scratch/edited.toml" "$stage/etc/palisade/palisade.toml" || fail "--uninstall touched the config"
[ -f "$stage/var/lib/palisade/raft.log" ] || fail "--uninstall removed state"
scripts/install.sh --destdir "$stage" --uninstall | grep -q '^removed' && fail "a second --uninstall removed something"

echo "== systemd units and install.sh: all passed"
