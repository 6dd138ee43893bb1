#!/usr/bin/env bash
# User-space instructions detour spends per eth_call over one WebSocket and over one HTTP/1.1
# keep-alive connection, counted by callgrind (repeatable where wall-clock CPU is not). Runs
# `examples/websocket --clients 0 --over ws|http` against a detour under valgrind with 1 000 and
# 3 000 sequential calls and prints the slopes, so start-up and background work cancel out.
# Loopback only; takes a few minutes.
#
#   bash scripts/ws-instructions-per-call.sh [path/to/detour]    # default: the release build
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
# The binary on its own, as `cargo run --release` and `cargo install` build it: built with an
# example, it would get the dev-dependencies' features too (tokio's test-util clock: +2%
# instructions per request).
cargo build --release --quiet --bin detour
cargo build --release --quiet --example websocket
BIN=$(realpath "${1:-target/release/detour}")
WORK=$(mktemp -d -t detour-wscg.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cat >"$WORK/wrap.sh" <<WRAP
#!/bin/sh
exec valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.\$CG_TAG.out" "$BIN" "\$@"
WRAP
chmod +x "$WORK/wrap.sh"
total() { grep -E '^totals:' "$WORK/cg.$1.out" | awk '{print $2}'; }
for over in ws http; do
  for n in 1000 3000; do
    CG_TAG=$over.$n DETOUR_BIN="$WORK/wrap.sh" target/release/examples/websocket \
      --clients 0 --calls "$n" --rounds 1 --over "$over" >/dev/null 2>&1
  done
  a=$(total "$over.1000"); b=$(total "$over.3000")
  echo "$over: $(( (b - a) / 2000 )) instructions per call"
done
