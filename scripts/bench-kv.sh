#!/usr/bin/env bash
# The Redis comparison of issue 6 (CheckSync thesis Tables 5.2/5.3/5.4, Figure 5-3, and
# redis-benchmark -c 50): hotspare-kv against Redis 7 on loopback, pinned as
# ../shared/BENCHMARKING.md requires. Run it on a quiet machine.
#
#   scripts/bench-kv.sh           full run, ~20 min without the failover part, ~4 GiB of
#                                 memory and ~2 GiB of /tmp (10M keys): writes
#                                 docs/results/kv-bench.jsonl, docs/kv-requests-over-time.svg
#                                 and docs/kv-failover-over-time.svg
#   scripts/bench-kv.sh --quick   ~2-3 min smoke run (1k/100k keys, 3 s per configuration):
#                                 writes target/kv-bench-quick/{kv-bench.jsonl,kv-requests-over-time.svg}
#                                 so the real results are not overwritten
#
# Any further arguments go to kv-bench (e.g. `serial --reps 5`; see `kv-bench --help`).
# The results are written to a temporary file first and moved in place only on success.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
args=()
for a in "$@"; do
    if [[ $a == --quick ]]; then quick=1; else args+=("$a"); fi
done

if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
    echo "bench-kv: installing redis-server (and redis-tools)" >&2
    sudo_=""
    [[ $(id -u) -eq 0 ]] || sudo_=sudo
    $sudo_ apt-get install -y redis-server || { $sudo_ apt-get update && $sudo_ apt-get install -y redis-server; }
fi

cargo build --release -p hotspare-bench --bin kv-bench -p examples-kv --bin hotspare-kv

if [[ $quick -eq 1 ]]; then
    dir=target/kv-bench-quick
    out=$dir/kv-bench.jsonl
    svg=$dir/kv-requests-over-time.svg
    fsvg=$dir/kv-failover-over-time.svg
    limit=10m
    args=(--quick "${args[@]}")
else
    dir=docs/results
    out=$dir/kv-bench.jsonl
    svg=docs/kv-requests-over-time.svg
    fsvg=docs/kv-failover-over-time.svg
    limit=40m
fi
mkdir -p "$dir"
tmp=$(mktemp "$out.XXXXXX")
tmpsvg=$(mktemp "$svg.XXXXXX")
tmpfsvg=$(mktemp "$fsvg.XXXXXX")
trap 'rm -f "$tmp" "$tmpsvg" "$tmpfsvg"' EXIT
# kv-bench kills every server it started when it gets SIGTERM from timeout.
timeout --signal=TERM --kill-after=30s "$limit" \
    target/release/kv-bench "${args[@]}" --svg "$tmpsvg" --failover-svg "$tmpfsvg" > "$tmp"
chmod 644 "$tmp" "$tmpsvg" "$tmpfsvg"
mv "$tmp" "$out"
echo "bench-kv: wrote $out" >&2
if [[ -s $tmpsvg ]]; then mv "$tmpsvg" "$svg" && echo "bench-kv: wrote $svg" >&2; fi
if [[ -s $tmpfsvg ]]; then mv "$tmpfsvg" "$fsvg" && echo "bench-kv: wrote $fsvg" >&2; fi
