#!/usr/bin/env bash
# Installs and runs the local AWS protocol servers the tests need, from the
# package registries alone:
#   - Amazon's DynamoDB Local (its jar ships inside the npm package
#     amplify-dynamodb-simulator), on the machine's Java;
#   - ministack (PyPI) for SQS;
#   - cargo-lambda (PyPI) for `cargo lambda watch` in the end-to-end test.
#
#   infra/local/servers.sh install      # into .tools/ (idempotent, cached)
#   infra/local/servers.sh linters      # SAM CLI and cfn-lint (PyPI) into .tools/sam
#   infra/local/servers.sh start        # start both on loopback, wait until they answer
#   infra/local/servers.sh stop
#   infra/local/servers.sh env          # print the variables the tests read
#
# Ports: METERED_DYNAMODB_PORT (default 8000), METERED_SQS_PORT (default 4566).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS="$ROOT/.tools"
RUN="$TOOLS/run"
DDB_VERSION="2.9.30"        # amplify-dynamodb-simulator, carries DynamoDB Local 1.25.x
MINISTACK_VERSION="1.5.33"
SAM_CLI_VERSION="1.170.0"
CARGO_LAMBDA_VERSION="1.9.2"
CFN_LINT_VERSION="1.58.0"
SAM_TRANSLATOR_VERSION="1.115.0"
MINISTACK_BOTOCORE="1.43.106"  # ministack 1.5.33 pins botocore==1.43.106; boto3 of the same number matches
DDB_PORT="${METERED_DYNAMODB_PORT:-8000}"
SQS_PORT="${METERED_SQS_PORT:-4566}"

log() { printf '[servers] %s\n' "$*" >&2; }

install() {
  mkdir -p "$TOOLS" "$RUN"
  if [ ! -f "$TOOLS/dynamodb-local/DynamoDBLocal.jar" ]; then
    command -v java >/dev/null || { log "java is required for DynamoDB Local (apt-get install openjdk-17-jre-headless)"; exit 1; }
    log "fetching DynamoDB Local from npm (amplify-dynamodb-simulator@$DDB_VERSION)"
    local tmp; tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack --silent "amplify-dynamodb-simulator@$DDB_VERSION" >/dev/null && tar xzf ./*.tgz package/emulator)
    rm -rf "$TOOLS/dynamodb-local" && mv "$tmp/package/emulator" "$TOOLS/dynamodb-local" && rm -rf "$tmp"
  fi
  if [ ! -x "$TOOLS/cargo-lambda/bin/cargo-lambda" ]; then
    log "installing cargo-lambda==$CARGO_LAMBDA_VERSION from PyPI"
    python3 -m venv "$TOOLS/cargo-lambda"
    "$TOOLS/cargo-lambda/bin/pip" install --quiet --disable-pip-version-check "cargo-lambda==$CARGO_LAMBDA_VERSION"
  fi
  if [ ! -x "$TOOLS/venv/bin/ministack" ] || ! "$TOOLS/venv/bin/python" -c 'import samtranslator, boto3' 2>/dev/null; then
    # aws-sam-translator lets ministack's CloudFormation take template.yaml
    # as written (the SAM transform); boto3 drives the deployment. boto3 is
    # pinned to the botocore ministack pins.
    log "installing ministack==$MINISTACK_VERSION, aws-sam-translator, boto3 from PyPI"
    python3 -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "ministack==$MINISTACK_VERSION" \
      "aws-sam-translator==$SAM_TRANSLATOR_VERSION" "boto3==$MINISTACK_BOTOCORE"
  fi
}

linters() {
  if [ ! -x "$TOOLS/sam/bin/sam" ] || [ ! -x "$TOOLS/sam/bin/cfn-lint" ]; then
    log "installing aws-sam-cli==$SAM_CLI_VERSION and cfn-lint==$CFN_LINT_VERSION from PyPI"
    python3 -m venv "$TOOLS/sam"
    "$TOOLS/sam/bin/pip" install --quiet --disable-pip-version-check "aws-sam-cli==$SAM_CLI_VERSION" "cfn-lint==$CFN_LINT_VERSION"
  fi
}

wait_for() { # name url
  local name="$1" url="$2"
  for _ in $(seq 1 150); do
    if curl -s -o /dev/null --max-time 1 "$url"; then log "$name answers at $url"; return 0; fi
    sleep 0.2
  done
  log "$name did not answer at $url within 30 s; its log:"; tail -n 30 "$RUN/$name.log" >&2 || true
  return 1
}

start() {
  install
  mkdir -p "$RUN"
  # DynamoDB Local has no bind-address option and listens on every
  # interface: run it where loopback is the only interface (test.sh runs
  # everything inside a private network namespace) or accept that.
  (cd "$TOOLS/dynamodb-local" && exec java -Djava.library.path=./DynamoDBLocal_lib -jar DynamoDBLocal.jar \
      -inMemory -sharedDb -disableTelemetry -port "$DDB_PORT") >"$RUN/dynamodb.log" 2>&1 &
  echo $! >"$RUN/dynamodb.pid"
  # AWS_ENDPOINT_URL is handed to the functions ministack runs (the stack
  # deployed by deploy-ministack.py), so their SDK calls come back here.
  (BIND_HOST=127.0.0.1 GATEWAY_PORT="$SQS_PORT" AWS_ENDPOINT_URL="http://127.0.0.1:$SQS_PORT" \
    exec "$TOOLS/venv/bin/ministack") >"$RUN/ministack.log" 2>&1 &
  echo $! >"$RUN/ministack.pid"
  wait_for dynamodb "http://127.0.0.1:$DDB_PORT/"
  wait_for ministack "http://127.0.0.1:$SQS_PORT/"
}

stop() {
  for name in dynamodb ministack; do
    if [ -f "$RUN/$name.pid" ]; then
      kill "$(cat "$RUN/$name.pid")" 2>/dev/null || true
      rm -f "$RUN/$name.pid"
    fi
  done
}

env_vars() {
  cat <<VARS
export METERED_TEST_DYNAMODB_URL=http://127.0.0.1:$DDB_PORT
export METERED_TEST_SQS_URL=http://127.0.0.1:$SQS_PORT
export AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local AWS_REGION=us-east-1
export PATH="$TOOLS/cargo-lambda/bin:\$PATH"
VARS
}

case "${1:-}" in
  install) install ;;
  linters) linters ;;
  start) start ;;
  stop) stop ;;
  env) env_vars ;;
  *) echo "usage: $0 install|linters|start|stop|env" >&2; exit 2 ;;
esac
