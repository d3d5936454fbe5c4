#!/usr/bin/env bash
# Installs the C interfaces under PREFIX (default /usr/local): libhotspare.{so,a},
# libkmod_shim.{so,a}, hotspare.h, cpt.h and hotspare.pc.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${1:-/usr/local}
cargo build --release -p hotspare -p kmod-shim --lib
install -d "$prefix/lib" "$prefix/include" "$prefix/lib/pkgconfig"
install -m 0644 target/release/libhotspare.so target/release/libhotspare.a \
    target/release/libkmod_shim.so target/release/libkmod_shim.a "$prefix/lib/"
install -m 0644 hotspare/include/hotspare.h kmod-shim/include/cpt.h "$prefix/include/"
sed "s|@PREFIX@|$prefix|" hotspare/hotspare.pc.in > "$prefix/lib/pkgconfig/hotspare.pc"
echo "installed under $prefix"
