#!/usr/bin/env bash
# User-space instructions detour spends per proxied request, counted by callgrind (repeatable on
# a noisy shared machine, unlike wall-clock time). Runs the overhead harness twice against a
# detour under valgrind, with 2 000 and 6 000 requests, and prints the slope, so start-up and
# background work cancel out. Loopback only; takes a few minutes.
#
#   bash scripts/instructions-per-request.sh [path/to/detour]    # default: the release build
#   CACHE=hit bash scripts/instructions-per-request.sh           # answered from the cache
#   CACHE=miss bash scripts/instructions-per-request.sh          # every lookup a miss
#   QUOTA=1 bash scripts/instructions-per-request.sh             # the upstream has quotas
#   REDIS=redis://127.0.0.1:6379 bash scripts/instructions-per-request.sh   # [shared] Redis
#   BLOCK_NUMBER=1 bash scripts/instructions-per-request.sh  # eth_blockNumber, not eth_call
#
# CACHE (off by default) is the overhead harness's --cache: off, hit or miss.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
# The binary on its own, as `cargo run --release` and `cargo install` build it: built with an
# example, it would get the dev-dependencies' features too (tokio's test-util clock: +2%
# instructions per request).
cargo build --release --quiet --bin detour
cargo build --release --quiet --example overhead
BIN=$(realpath "${1:-target/release/detour}")
WORK=$(mktemp -d -t detour-cg.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cat >"$WORK/wrap.sh" <<WRAP
#!/bin/sh
exec valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.\$CG_TAG.out" "$BIN" "\$@"
WRAP
chmod +x "$WORK/wrap.sh"
total() { grep -E '^totals:' "$WORK/cg.$1.out" | awk '{print $2}'; }
for n in 2000 6000; do
  CG_TAG=$n DETOUR_BIN="$WORK/wrap.sh" target/release/examples/overhead --workers 1 --requests "$n" --rounds 1 --cache "${CACHE:-off}" ${QUOTA:+--quota} ${REDIS:+--redis "$REDIS"} ${BLOCK_NUMBER:+--block-number} >/dev/null 2>&1
done
a=$(total 2000); b=$(total 6000)
echo "instructions: $a (2 000 requests), $b (6 000 requests)"
echo "per request: $(( (b - a) / 4000 ))"
