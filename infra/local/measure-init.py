#!/usr/bin/env python3
"""Init time of a Lambda function binary: from process start to its first
poll of the runtime API (GET /2018-06-01/runtime/invocation/next), against a
fake runtime API on loopback. Prints the median of several starts.

    infra/local/measure-init.py target/release/complete-transfer [runs]

The function gets a complete environment (table, queues, the bundled example
config, dummy AWS credentials), so it initializes as in Lambda; nothing
answers its AWS calls, and none are made before the first poll.
"""
import http.server
import os
import statistics
import subprocess
import sys
import threading
import time

binary = sys.argv[1]
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 15
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
polled = threading.Event()


class Runtime(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        polled.set()
        self.send_response(500)
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Runtime)
threading.Thread(target=server.serve_forever, daemon=True).start()
env = dict(
    os.environ,
    AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{server.server_address[1]}",
    AWS_LAMBDA_FUNCTION_NAME="measure",
    AWS_LAMBDA_FUNCTION_MEMORY_SIZE="256",
    AWS_LAMBDA_FUNCTION_VERSION="1",
    AWS_LAMBDA_LOG_STREAM_NAME="s",
    AWS_LAMBDA_LOG_GROUP_NAME="g",
    AWS_ACCESS_KEY_ID="local",
    AWS_SECRET_ACCESS_KEY="local",
    AWS_REGION="us-east-1",
    METERED_TABLE="metered",
    METERED_APP_CONFIG=os.path.join(root, "cli/examples/booking.toml"),
    SIM_API_KEY="k",
    METERED_HOSTED_JWT_SECRET="measure-init-hs256-key-0123456789abcdef",
)
for kind in ["COMPLETE_TRANSFER", "RECENT_RECORDS", "PK_LOOKUP", "WORKFLOW", "ACTION_HTTP", "ACTION_DATASOURCE_PUSH"]:
    env[f"METERED_QUEUE_URL_{kind}"] = f"http://127.0.0.1:1/q/{kind}"
    env[f"METERED_DLQ_URL_{kind}"] = f"http://127.0.0.1:1/q/{kind}-dlq"

times = []
for _ in range(runs):
    polled.clear()
    start = time.perf_counter()
    proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not polled.wait(10):
        proc.kill()
        sys.exit(f"{binary} never polled the runtime API")
    times.append((time.perf_counter() - start) * 1000)
    proc.kill()
    proc.wait()
print(f"{os.path.basename(binary)}: init to first poll median {statistics.median(times):.1f} ms, min {min(times):.1f} ms over {runs} starts")
