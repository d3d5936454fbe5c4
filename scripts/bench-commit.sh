#!/usr/bin/env bash
# Every-write ("strong consistency") throughput: hotspare-kv --cpt-every-write with a spare
# (HOTSPARE_DURABILITY=fsynced / received) and without one, against Redis appendonly +
# appendfsync always, redis-benchmark SET -c 50 -n 50000 and -c 1 -n 5000 (pinned), interleaved,
# 3 repetitions; see `kv-bench commit --help` and docs/benchmarks.md. ~5 min on loopback.
#
#   scripts/bench-commit.sh                    writes docs/results/commit-bench.jsonl
#   scripts/bench-commit.sh --link tbf         the spare in a network namespace behind a veth
#                                              pair shaped with tbf 1gbit (needs root, ip, tc):
#                                              writes docs/results/commit-bench-tbf.jsonl
#   scripts/bench-commit.sh --out FILE ...     writes FILE instead
#   scripts/bench-commit.sh --kv-bin before=/tmp/hotspare-kv-before \
#       --resume-bin /tmp/hotspare-resume-before --kv-bin after=target/release/hotspare-kv \
#       --resume-bin target/release/hotspare-resume
#                                              two builds compared in one interleaved run
#
# Other arguments go to `kv-bench commit` (e.g. --reps 5, --loads serial). KV_BENCH=PATH runs
# that kv-bench instead of building one (then pass --kv-bin/--resume-bin, or have hotspare-kv
# and hotspare-resume beside it).
#
# While it measures it pauses (SIGSTOP, by PID) the project's background fuzzers
# (release/spare_core, release/image_dir_recovery) and resumes them (SIGCONT, same PIDs) on exit,
# whatever the exit. The results go to a temporary file first, moved in place only on success.
set -euo pipefail
cd "$(dirname "$0")/.."

out=""
link=loopback
has_netns=0
args=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --out) out=$2; shift 2; continue ;;
        --link) link=$2 ;;
        --link=*) link=${1#--link=} ;;
        --netns|--netns=*) has_netns=1 ;;
    esac
    args+=("$1")
    shift
done
if [[ -z $out ]]; then
    if [[ $link == tbf ]]; then out=docs/results/commit-bench-tbf.jsonl; else out=docs/results/commit-bench.jsonl; fi
fi
netns=""
if [[ $link == tbf && $has_netns -eq 0 ]]; then
    netns=kvbc$$
    args+=(--netns "$netns")
fi

if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
    echo "bench-commit: installing redis-server (and redis-tools)" >&2
    sudo_=""
    [[ $(id -u) -eq 0 ]] || sudo_=sudo
    $sudo_ apt-get install -y redis-server || { $sudo_ apt-get update && $sudo_ apt-get install -y redis-server; }
fi

if [[ -n ${KV_BENCH:-} ]]; then
    bench=$KV_BENCH
else
    cargo build --release -p hotspare-bench --bin kv-bench -p examples-kv --bin hotspare-kv -p hotspare --bin hotspare-resume
    bench=target/release/kv-bench
fi

mkdir -p "$(dirname "$out")"
tmp=$(mktemp "$out.XXXXXX")
# The fuzzers run in batches (a new process every few minutes), so one pause at the start is
# not enough: a pauser loop stops every new one within 0.2 s, by PID, and notes it in $pausefile;
# one that somebody else stopped already is left alone and not resumed by us.
fuzz_re='release/(spare_core|image_dir_recovery)'
pausefile=$(mktemp)
pauser_pid=""
pauser() {
    local p state
    while :; do
        for p in $(pgrep -f "$fuzz_re" || true); do
            grep -qx "$p" "$pausefile" 2>/dev/null && continue
            grep -qx "skip $p" "$pausefile" 2>/dev/null && continue
            state=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | cut -d' ' -f1)
            if [[ $state == T ]]; then
                echo "skip $p" >> "$pausefile"
                echo "bench-commit: fuzzer pid $p is already stopped (not by us): left as it is" >&2
            else
                # Noted before it is stopped: if this loop is killed in between, the cleanup
                # still resumes it (SIGCONT to a running process does nothing).
                echo "$p" >> "$pausefile"
                kill -STOP "$p" 2>/dev/null &&
                    echo "bench-commit: paused fuzzer pid $p: $(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | cut -c1-90)" >&2
            fi
        done
        sleep 0.2
    done
}
cleanup() {
    local p
    if [[ -n $pauser_pid ]]; then kill "$pauser_pid" 2>/dev/null || true; wait "$pauser_pid" 2>/dev/null || true; fi
    for p in $(grep -x '[0-9]*' "$pausefile" 2>/dev/null); do
        # Only a PID that is still the fuzzer we paused (not reused by something else).
        if tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -Eq "$fuzz_re"; then
            kill -CONT "$p" 2>/dev/null && echo "bench-commit: resumed fuzzer pid $p" >&2
        fi
    done
    # kv-bench deletes its namespace itself (also on SIGTERM); this covers a SIGKILLed kv-bench.
    # (kv-bench creates the namespace first, the veth after, so a leftover veth means a leftover
    # namespace of that name: only then is the veth touched.)
    if [[ -n $netns ]] && ip netns list | grep -qw "^$netns"; then
        ip netns del "$netns" 2>/dev/null || true
        ip link del "${netns}a" 2>/dev/null || true
    fi
    rm -f "$tmp" "$pausefile"
}
bpid=""
# A signal to this script is passed on to kv-bench (through timeout), which kills what it
# started and deletes its namespace; then the EXIT trap resumes the fuzzers.
stop() {
    if [[ -n $bpid ]]; then kill -TERM "$bpid" 2>/dev/null || true; wait "$bpid" 2>/dev/null || true; fi
    exit "$1"
}
trap cleanup EXIT
trap 'stop 130' INT
trap 'stop 143' TERM
trap 'stop 129' HUP

pauser &
pauser_pid=$!
sleep 0.5

# kv-bench kills every process it started, and deletes its namespace, on SIGTERM. It runs in
# the background so that a signal to this script is handled at once (bash runs traps only
# between commands), and gets no terminal input.
timeout --signal=TERM --kill-after=30s 60m "$bench" commit "${args[@]}" > "$tmp" < /dev/null &
bpid=$!
wait "$bpid"
bpid=""
chmod 644 "$tmp"
mv "$tmp" "$out"
echo "bench-commit: wrote $out" >&2
