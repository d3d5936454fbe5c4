#!/usr/bin/env bash
# Builds the fuzz targets (fuzz/, cargo fuzz + libFuzzer) and runs each for SECONDS (default 30),
# one after another, at the lowest CPU priority. Fails if any target crashes, hangs or runs out
# of memory; the input that did it is left in fuzz/artifacts/<target>/. See docs/fuzzing.md.
#
#   scripts/fuzz.sh [SECONDS]
#
# Environment: FUZZ_TARGETS="a b" to run only some targets; FUZZ_ARGS for extra libFuzzer
# flags (e.g. "-runs=10000000" to stop at an execution count instead of a time).
set -euo pipefail

SECONDS_EACH="${1:-30}"
case "$SECONDS_EACH" in
    ''|*[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
FUZZ="$ROOT/fuzz"
ALL_TARGETS="wire_decoder spare_core stream_decoder image_dir_recovery"
TARGETS="${FUZZ_TARGETS:-$ALL_TARGETS}"

# libFuzzer's instrumentation flags are nightly-only; RUSTC_BOOTSTRAP lets the stable toolchain
# accept them.
export RUSTC_BOOTSTRAP=1
export PATH="$HOME/.cargo/bin:$PATH"

# libfuzzer-sys compiles libFuzzer itself (C++).
if ! command -v c++ >/dev/null && ! command -v g++ >/dev/null && ! command -v clang++ >/dev/null; then
    echo "fuzz.sh: a C++ compiler is needed to build libFuzzer (apt-get install g++)" >&2
    exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    nice -n 19 cargo install --locked cargo-fuzz
fi

# Per-target libFuzzer flags.
flags_for() {
    case "$1" in
        wire_decoder) echo "-max_len=4096 -malloc_limit_mb=64" ;;
        spare_core) echo "-max_len=4096 -malloc_limit_mb=256" ;;
        stream_decoder) echo "-max_len=65536" ;;
        image_dir_recovery) echo "-max_len=65536" ;;
        *) echo "unknown target $1" >&2; exit 2 ;;
    esac
}

# The image target's scratch directories (one per process) go in a directory of our own.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    SCRATCH="$(mktemp -d /dev/shm/hotspare-fuzz.XXXXXX)"
else
    SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/hotspare-fuzz.XXXXXX")"
fi
trap 'rm -rf "$SCRATCH"' EXIT
export HOTSPARE_FUZZ_TMP="$SCRATCH"

cd "$FUZZ"
echo "== building fuzz targets"
nice -n 19 cargo fuzz build

failed=()
summary=()
for t in $TARGETS; do
    work="$FUZZ/work/$t"
    mkdir -p "$work" "$FUZZ/artifacts/$t"
    log="$FUZZ/work/$t.log"
    echo "== $t: ${SECONDS_EACH}s (log: fuzz/work/$t.log)"
    # shellcheck disable=SC2046
    if nice -n 19 cargo fuzz run "$t" "$work" "$FUZZ/corpus/$t" -- \
        -max_total_time="$SECONDS_EACH" -timeout=10 -print_final_stats=1 \
        $(flags_for "$t") ${FUZZ_ARGS:-} >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$t")
        grep -E "panicked at|ERROR: libFuzzer|SUMMARY|Failing input" -A2 "$log" | head -20 || true
    fi
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
    summary+=("$(printf '%-20s %-7s %12s execs %8s/s' "$t" "$status" "${execs:-?}" "${rate:-?}")")
done

echo "== summary"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "crashes in: ${failed[*]} (inputs in fuzz/artifacts/<target>/; reproduce with" >&2
    echo "  cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run <target> artifacts/<target>/<file>)" >&2
    exit 1
fi
