#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every test of the workspace (Rust and C).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --all-targets
cargo test --workspace -- --test-threads=2
