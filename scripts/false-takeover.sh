#!/usr/bin/env bash
# The issue's "live primary taken over under ordinary load", as a command: a spare and
# `hotspare-kv --cpt-every-write` on loopback with default detection (5 x 10 ms), loaded by
# `redis-benchmark -c 50 -t set,get`; one JSON line per trial with the throughput and whether the
# spare took over the live primary (it must not). Everything it starts it kills by PID.
#   scripts/false-takeover.sh [TRIALS]      (needs redis-benchmark, redis-cli; release build)
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
trials=${1:-8}
for t in $(seq "$trials"); do
    d=$(mktemp -d)
    head -c 32 /dev/urandom | base64 > "$d/key"; chmod 600 "$d/key"
    sp=$((20000 + RANDOM % 20000)); kp=$((sp + 1))
    "$BIN/hotspare-resume" --listen 127.0.0.1:$sp --image-dir "$d/spare" --key-file "$d/key" \
        --exec /bin/true > "$d/spare.log" 2>&1 &
    spid=$!
    sleep 0.3
    HOTSPARE_SPARE=127.0.0.1:$sp HOTSPARE_KEY_FILE="$d/key" HOTSPARE_IMAGE_DIR="$d/spool" \
        HOTSPARE_HEAP_SIZE=256M "$BIN/hotspare-kv" --port $kp --cpt-every-write > "$d/kv.log" 2>&1 &
    kpid=$!
    for _ in $(seq 50); do redis-cli -p $kp ping >/dev/null 2>&1 && break; sleep 0.1; done
    out=$(timeout 120 redis-benchmark -p $kp -c 50 -n 50000 -t set,get -r 100000 -q 2>&1 \
        | tr '\r' '\n' | grep -E '^(SET|GET): [0-9]' | tr '\n' ' ')
    alive=$(kill -0 $kpid 2>/dev/null && echo true || echo false)
    took=$(grep -c "took over\|taking over" "$d/spare.log")
    echo "{\"trial\":$t,\"benchmark\":\"${out% }\",\"primary_alive\":$alive,\"takeovers\":$took}"
    kill -9 $kpid $spid 2>/dev/null; wait $kpid $spid 2>/dev/null
    rm -rf "$d"
done
