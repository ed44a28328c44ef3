#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time, starting from
# the committed seed corpus (fuzz/seeds/<target>/), with AddressSanitizer.
# Part of scripts/test.sh. See fuzz/README.md.
#
#   scripts/fuzz.sh                      # every target, $PALISADE_FUZZ_SECONDS each (default 30)
#   scripts/fuzz.sh frame service        # only these targets
#   PALISADE_FUZZ_SECONDS=600 scripts/fuzz.sh raftlog
#   scripts/fuzz.sh --reproduce          # replay fuzz/artifacts/ with the known-finding masks off
#
# Needs cargo-fuzz; installs it (cargo install --locked cargo-fuzz) when
# missing, and skips, saying why, only when that fails (no network). The
# stable toolchain builds it with RUSTC_BOOTSTRAP=1 (sanitizer flags).
# Builds into target/fuzz; the corpus a run grows stays there too
# (target/fuzz/corpus/<target>), and so do crash inputs
# (target/fuzz/artifacts/<target>/): nothing in the repository changes.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

seconds=${PALISADE_FUZZ_SECONDS:-30}
case "$seconds" in
    ''|*[!0-9]*) echo "fuzz.sh: PALISADE_FUZZ_SECONDS must be a whole number of seconds: $seconds" >&2; exit 2 ;;
esac
reproduce=0
targets=()
for arg in "$@"; do
    case "$arg" in
        --reproduce) reproduce=1 ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "fuzz.sh: unknown option $arg" >&2; exit 2 ;;
        *) targets+=("$arg") ;;
    esac
done

export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="$repo/target/fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: cargo install --locked cargo-fuzz"
    if ! cargo install --locked cargo-fuzz; then
        echo "SKIP: cargo-fuzz is not installed and cannot be (no network to crates.io?): the fuzz targets did not run"
        exit 0
    fi
fi

cd fuzz
if [ ${#targets[@]} = 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
echo "== building ${#targets[@]} fuzz targets (release, debug assertions, ASan)"
build_start=$(date +%s)
mkdir -p "$CARGO_TARGET_DIR"
if ! cargo fuzz build --target-dir "$CARGO_TARGET_DIR" >"$CARGO_TARGET_DIR/build.log" 2>&1; then
    tail -40 "$CARGO_TARGET_DIR/build.log" >&2
    echo "FAIL: the fuzz targets do not build (fuzz/ follows the crates' public APIs)" >&2
    exit 1
fi
triple=$(rustc -vV | sed -n 's/^host: //p')
bin_dir=$CARGO_TARGET_DIR/$triple/release
for t in "${targets[@]}"; do
    [ -x "$bin_dir/$t" ] || { echo "FAIL: fuzz target $t did not build" >&2; exit 1; }
done
echo "built in $(( $(date +%s) - build_start ))s"

if [ "$reproduce" = 1 ]; then
    # Each committed reproducer, with the masks for known findings off:
    # "still fails" until the code is fixed.
    export PALISADE_FUZZ_UNMASK=1
    for t in "${targets[@]}"; do
        for input in artifacts/"$t"/*; do
            [ -f "$input" ] || continue
            if "$bin_dir/$t" -timeout=10 -runs=1 "$input" >"$CARGO_TARGET_DIR/reproduce.log" 2>&1; then
                echo "fixed:       $input"
            else
                echo "still fails: $input ($(grep -m1 -E 'panicked at|ERROR: libFuzzer' "$CARGO_TARGET_DIR/reproduce.log" || echo 'see the log'))"
            fi
        done
    done
    exit 0
fi

failed=()
for t in "${targets[@]}"; do
    corpus=$CARGO_TARGET_DIR/corpus/$t
    artifacts=$CARGO_TARGET_DIR/artifacts/$t
    mkdir -p "$corpus" "$artifacts"
    log=$CARGO_TARGET_DIR/$t.log
    echo "== fuzz $t for ${seconds}s (seeds: fuzz/seeds/$t)"
    # New inputs go to the first corpus directory; the seeds are only read.
    rc=0
    "$bin_dir/$t" "$corpus" "seeds/$t" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1 || rc=$?
    stats=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    echo "$t: ${execs:-?} inputs run, ${stats:-no final stats}"
    if [ "$rc" != 0 ]; then
        failed+=("$t")
        echo "FAIL: fuzz target $t (exit $rc); the end of its log ($log):" >&2
        # The panic and its message, the sanitizer's verdict, the input.
        grep -E -A1 'panicked at' "$log" | head -4 >&2 || true
        grep -E 'ERROR: (libFuzzer|AddressSanitizer)|^SUMMARY|Test unit written to' "$log" >&2 || tail -30 "$log" >&2
        echo "reproduce (with a backtrace): RUST_BACKTRACE=1 $bin_dir/$t <that file>" >&2
    fi
done
if [ ${#failed[@]} != 0 ]; then
    echo "FAIL: fuzzing found failures in: ${failed[*]}" >&2
    exit 1
fi
echo "== fuzz: ${#targets[@]} targets ran ${seconds}s each without a failure"
