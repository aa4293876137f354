#!/usr/bin/env python3
"""Cold start to the first finished job, per function, on the deployed
shape: `cli/tests/ministack_stack.rs` deploys template.yaml to ministack,
which runs the eight function binaries as `provided.al2023` processes
reading their config from SSM and secrets from Secrets Manager; each
function reports, once, milliseconds from process start to the end of
init, its first DynamoDB and SQS responses and its first finished job
(`shared/src/edge/cold_start.rs`). This runs that test several times in
each mode and prints the medians as Markdown tables:

  * connections opened during init or not (`METERED_WARM_CONNECTIONS`);
  * AWS calls over plain HTTP or over TLS (`infra/local/tls-proxy.py` in
    front of ministack, its CA trusted through `SSL_CERT_FILE`).

    infra/local/servers.sh start && eval "$(infra/local/servers.sh env)"
    cargo build --profile fast -p scheduler -p complete-transfer -p recent-records \\
        -p pk-lookup -p workflow -p action-http -p action-datasource-push
    cargo build --profile fast -p hosted-get     # alone: its features stay its own
    infra/local/measure-cold-start.py --binaries target/fast --runs 3

The last four functions are started at the same time (three queued jobs
and one Hosted GET) on a 2-core machine, so their figures include waiting
for the CPU.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

FUNCTIONS = ["scheduler", "complete-transfer", "recent-records", "pk-lookup", "workflow",
             "action-http", "action-datasource-push", "hosted-get"]
COLUMNS = ["init", "first DynamoDB response", "first SQS response", "first job finished"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_once(binaries, warm, tls_env):
    env = dict(os.environ, METERED_STACK_BINARIES=os.path.abspath(binaries),
               METERED_WARM_CONNECTIONS="1" if warm else "0", METERED_STACK_ENV=tls_env)
    out = subprocess.run(["cargo", "nextest", "run", "-p", "metered-cli", "--test", "ministack_stack",
                          "--no-capture"], cwd=ROOT, env=env, capture_output=True, text=True)
    text = out.stdout + out.stderr
    if out.returncode != 0:
        sys.exit(f"the stack test failed:\n{text[-4000:]}")
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in FUNCTIONS:
            rows[cells[0]] = [None if c == "–" else float(c) for c in cells[1:]]
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binaries", required=True, help="folder of the function binaries (e.g. target/fast)")
    ap.add_argument("--runs", type=int, default=3, help="stack deployments per mode")
    ap.add_argument("--tls-port", type=int, default=4567)
    args = ap.parse_args()
    upstream = os.environ.get("METERED_TEST_SQS_URL", "").removeprefix("http://").rstrip("/")
    if not upstream:
        sys.exit("METERED_TEST_SQS_URL (ministack) is not set: eval \"$(infra/local/servers.sh env)\"")

    certs = tempfile.mkdtemp(prefix="metered-tls-")
    proxy = subprocess.Popen([sys.executable, os.path.join(ROOT, "infra/local/tls-proxy.py"),
                              "--listen", str(args.tls_port), "--upstream", upstream, "--certs", certs],
                             stdout=subprocess.PIPE, text=True)
    try:
        print(proxy.stdout.readline().strip(), file=sys.stderr)
        https = f"https://127.0.0.1:{args.tls_port}"
        tls_env = " ".join([f"SSL_CERT_FILE={certs}/ca.pem"] + [
            f"AWS_ENDPOINT_URL_{s}={https}" for s in ("DYNAMODB", "SQS", "SSM", "SECRETS_MANAGER")])
        results = {}
        for tls in (False, True):
            for warm in (False, True):
                runs = []
                for i in range(args.runs):
                    started = time.monotonic()
                    runs.append(run_once(args.binaries, warm, tls_env if tls else ""))
                    print(f"tls={tls} warm={warm} run {i + 1}: {time.monotonic() - started:.0f} s",
                          file=sys.stderr)
                results[(tls, warm)] = runs
    finally:
        proxy.terminate()

    for (tls, warm), runs in results.items():
        print(f"\n{'TLS' if tls else 'plain HTTP'}, connections {'opened during init' if warm else 'opened by the first job'}"
              f" (ms from process start, median of {len(runs)}):\n")
        print("| function | " + " | ".join(COLUMNS) + " |")
        print("|---" * (len(COLUMNS) + 1) + "|")
        for f in FUNCTIONS:
            cells = []
            for i in range(len(COLUMNS)):
                values = [r[f][i] for r in runs if f in r and r[f][i] is not None]
                cells.append(f"{statistics.median(values):.1f}" if values else "–")
            print(f"| {f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
