#!/usr/bin/env bash
# Starts the local servers, runs every test against them, stops them.
# Called by infra/test.sh after everything is built.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
export CARGO_NET_OFFLINE=true
if [ "${METERED_IN_SANDBOX:-}" = 1 ]; then ip link set lo up; fi
trap 'infra/local/servers.sh stop' EXIT
infra/local/servers.sh start
eval "$(infra/local/servers.sh env)"

printf '\n== [%s] doc tests\n' "$(date -u +%T)"
cargo test --workspace --doc

printf '\n== [%s] tests\n' "$(date -u +%T)"
if [ "${RUNNER:-nextest}" = nextest ]; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
