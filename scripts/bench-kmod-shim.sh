#!/usr/bin/env bash
# Reproduces docs/results/cpt-bench-*.jsonl (about 10 minutes, up to ~12 GiB of memory).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p hotspare-bench --bin cpt-bench
b=target/release/cpt-bench
mkdir -p docs/results
$b --cpu 1 > docs/results/cpt-bench-4k.jsonl
$b --cpu 1 --thp --sizes 1G --dirty 0.1,1,10 > docs/results/cpt-bench-thp.jsonl
{
  $b --cpu 1 --sizes 1G --dirty 0.1,1,10 --backends uffd-wp
  $b --cpu 1 --sizes 1G --dirty 0.1,1,10 --backends uffd-wp --ballast 4G
} > docs/results/cpt-bench-ballast.jsonl
