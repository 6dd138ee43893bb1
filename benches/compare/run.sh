#!/usr/bin/env bash
# detour vs nginx vs direct (and the stack's floor) on loopback, in one run: builds detour and
# the mock upstream (release), installs what is missing (Debian's nginx-light and wrk; oha from
# crates.io into benches/compare/.tools), then runs compare.py, which prints the tables the
# README quotes.
#
#   bash benches/compare/run.sh                # 5 rounds × 3 s runs: about 10 minutes
#   bash benches/compare/run.sh --quick        # 1 round × 1 s: checks the set-up (~1 minute)
#   bash benches/compare/run.sh --rounds 9 --json /tmp/compare.json
#
# Needs 2 CPUs to pin the load generator apart from the servers; root (or sudo) only for
# apt-get when nginx or wrk are missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
OHA_VERSION=1.16.0
TOOLS=benches/compare/.tools

need=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
command -v taskset >/dev/null || need+=(util-linux)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}" >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! { [ -x "$TOOLS/bin/oha" ] && "$TOOLS/bin/oha" --version | grep -q "$OHA_VERSION"; }; then
  echo "building oha $OHA_VERSION into $TOOLS (once; a few minutes)" >&2
  cargo install --quiet --locked --root "$TOOLS" oha --version "$OHA_VERSION"
fi
# The binary on its own, as `cargo run --release` and `cargo install` build it: built with an
# example, it would get the dev-dependencies' features too (tokio's test-util clock: +2%
# instructions per request).
cargo build --release --quiet --bin detour
cargo build --release --quiet --example compare-mock
exec python3 benches/compare/compare.py --oha-bin "$TOOLS/bin/oha" --nginx-bin "$(command -v nginx || echo /usr/sbin/nginx)" "$@"
