#!/usr/bin/env python3
"""Deploys template.yaml itself to ministack's CloudFormation.

The template is used as written (SAM transform, queues, dead-letter queues,
event source mappings, schedule, table, IAM), with two changes a local
deployment needs, each printed:

  * each function's CodeUri becomes a zip of its bootstrap in ministack's S3
    (what `sam package` does against real S3), and its `Metadata` (the
    cargo-lambda build) is dropped because the binary is already built;
  * (only when asked with `--env K=V`) a variable is added to every
    function's environment;
  * `Architectures` becomes the host's (ministack runs the bootstrap as a
    local process; an arm64 binary cannot run on an x86_64 host);
  * a `Ref` to a `Type: Number` parameter outside environment variables
    becomes the number itself: CloudFormation hands such values to resources
    as numbers, ministack 1.5.33 hands them on as strings, and its SQS poller
    then fails comparing `MaximumConcurrency` ("'>=' not supported between
    instances of 'int' and 'str'").

Prints the stack's outputs and its functions' physical names as JSON on
stdout; on a failed stack, prints the failed resources and exits 1. With
`--observe`, prints what an operator would look at instead: the stack's
alarms, dashboards and its functions' log lines (the EMF metrics).

    .tools/venv/bin/python infra/local/deploy-ministack.py \\
        --endpoint http://127.0.0.1:4566 --stack metered-local \\
        --binaries target/debug [--parameter AppConfigParameter=/metered/x ...]

Runs with ministack's own venv (boto3 and aws-sam-translator are installed
beside it by `infra/local/servers.sh install`).
"""

import argparse
import io
import json
import os
import platform
import sys
import time
import zipfile

import boto3
import yaml

FUNCTION = "AWS::Serverless::Function"
DONE = {"CREATE_COMPLETE", "UPDATE_COMPLETE"}
FAILED = {"CREATE_FAILED", "ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "ROLLBACK_IN_PROGRESS",
          "UPDATE_ROLLBACK_COMPLETE", "DELETE_COMPLETE", "DELETE_FAILED"}


def log(msg):
    print(f"[deploy-ministack] {msg}", file=sys.stderr, flush=True)


def host_architecture():
    return {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}[
        platform.machine().lower()]


def zip_bootstrap(path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        info = zipfile.ZipInfo("bootstrap")
        info.external_attr = 0o755 << 16  # executable, as Lambda expects
        info.compress_type = zipfile.ZIP_DEFLATED
        with open(path, "rb") as f:
            zf.writestr(info, f.read())
    return buf.getvalue()


def inline_numbers(node, numbers, inside_env=False):
    """Replaces {"Ref": P} by P's value for Number parameters P, except in
    `Environment` (Lambda environment values are strings)."""
    if isinstance(node, dict):
        if set(node) == {"Ref"} and node["Ref"] in numbers and not inside_env:
            return numbers[node["Ref"]]
        return {k: inline_numbers(v, numbers, inside_env or k == "Environment") for k, v in node.items()}
    if isinstance(node, list):
        return [inline_numbers(v, numbers, inside_env) for v in node]
    return node


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--endpoint", required=True, help="ministack URL, e.g. http://127.0.0.1:4566")
    ap.add_argument("--stack", required=True, help="stack name")
    ap.add_argument("--binaries", required=True, help="folder holding one built binary per function")
    ap.add_argument("--template", default=os.path.join(os.path.dirname(__file__), "..", "..", "template.yaml"))
    ap.add_argument("--parameter", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="an environment variable added to every function (e.g. METERED_WARM_CONNECTIONS=0)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the stack")
    ap.add_argument("--delete", action="store_true", help="delete the stack (and its event source mappings) instead")
    ap.add_argument("--observe", action="store_true",
                    help="print the stack's alarms, dashboards and its functions' log lines as JSON instead")
    args = ap.parse_args()

    session = boto3.session.Session(aws_access_key_id="local", aws_secret_access_key="local",
                                    region_name="us-east-1")
    s3 = session.client("s3", endpoint_url=args.endpoint)
    cfn = session.client("cloudformation", endpoint_url=args.endpoint)
    if args.delete:
        cfn.delete_stack(StackName=args.stack)
        log(f"stack {args.stack}: deletion requested")
        return
    if args.observe:
        observe(session, cfn, args)
        return

    with open(args.template) as f:
        template = yaml.safe_load(f)
    bucket = f"{args.stack.lower()}-artifacts"
    s3.create_bucket(Bucket=bucket)
    arch = host_architecture()
    functions = {}
    for logical_id, resource in template["Resources"].items():
        if resource.get("Type") != FUNCTION:
            continue
        binary = resource.get("Metadata", {}).get("BuildProperties", {}).get("Binary")
        if not binary:
            sys.exit(f"{logical_id}: no Metadata.BuildProperties.Binary to say which binary it runs")
        path = os.path.join(args.binaries, binary)
        if not os.path.isfile(path):
            sys.exit(f"{logical_id}: {path} does not exist; build it first (cargo build -p {binary})")
        key = f"{binary}.zip"
        s3.put_object(Bucket=bucket, Key=key, Body=zip_bootstrap(path))
        props = resource.setdefault("Properties", {})
        props["CodeUri"] = {"Bucket": bucket, "Key": key}
        props["Architectures"] = [arch]
        resource.pop("Metadata", None)
        functions[logical_id] = binary
    if "Globals" in template:
        template["Globals"].get("Function", {}).pop("CodeUri", None)
        template["Globals"].get("Function", {}).pop("Architectures", None)
    for pair in args.env:
        key, _, value = pair.partition("=")
        variables = (template.setdefault("Globals", {}).setdefault("Function", {})
                     .setdefault("Environment", {}).setdefault("Variables", {}))
        variables[key] = value
        log(f"environment of every function: {key}={value}")
    log(f"uploaded {len(functions)} bootstraps to s3://{bucket}/; Architectures set to {arch} (host)")

    given = dict(p.partition("=")[::2] for p in args.parameter)
    numbers = {}
    for name, spec in template.get("Parameters", {}).items():
        if spec.get("Type") == "Number":
            value = given.get(name, spec.get("Default"))
            numbers[name] = int(value) if float(value).is_integer() else float(value)
    template["Resources"] = inline_numbers(template["Resources"], numbers)
    log(f"inlined Number parameters {numbers} (ministack passes them on as strings)")
    params = [{"ParameterKey": k, "ParameterValue": v} for k, v in given.items()]
    started = time.monotonic()
    cfn.create_stack(StackName=args.stack, TemplateBody=json.dumps(template), Parameters=params,
                     Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"])
    while True:
        stack = cfn.describe_stacks(StackName=args.stack)["Stacks"][0]
        status = stack["StackStatus"]
        if status in DONE:
            break
        if status in FAILED or time.monotonic() - started > args.timeout:
            log(f"stack {args.stack}: {status} {stack.get('StackStatusReason', '')}")
            for e in cfn.describe_stack_events(StackName=args.stack)["StackEvents"]:
                if "FAILED" in e.get("ResourceStatus", ""):
                    log(f"  {e['LogicalResourceId']} ({e['ResourceType']}): {e.get('ResourceStatusReason', '')}")
            sys.exit(1)
        time.sleep(0.5)
    log(f"stack {args.stack}: {status} in {time.monotonic() - started:.1f} s")

    resources = cfn.describe_stack_resources(StackName=args.stack)["StackResources"]
    physical = {r["LogicalResourceId"]: r.get("PhysicalResourceId") for r in resources}
    result = {
        "outputs": {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])},
        "functions": {binary: physical.get(logical_id) for logical_id, binary in functions.items()},
        "resources": {r["LogicalResourceId"]: r["ResourceType"] for r in resources},
    }
    json.dump(result, sys.stdout, indent=2)
    print()


def observe(session, cfn, args):
    """What an operator would look at: the stack's alarms (with their
    metric, dimensions and threshold), its dashboards, and every log line
    of its functions (where the EMF metrics are), per binary."""
    resources = cfn.describe_stack_resources(StackName=args.stack)["StackResources"]
    by_type = {}
    for r in resources:
        by_type.setdefault(r["ResourceType"], []).append(r.get("PhysicalResourceId"))
    cloudwatch = session.client("cloudwatch", endpoint_url=args.endpoint)
    logs = session.client("logs", endpoint_url=args.endpoint)
    names = by_type.get("AWS::CloudWatch::Alarm", [])
    alarms = cloudwatch.describe_alarms(AlarmNames=names)["MetricAlarms"] if names else []
    dashboards = [d["DashboardName"] for d in cloudwatch.list_dashboards()["DashboardEntries"]
                  if d["DashboardName"] in by_type.get("AWS::CloudWatch::Dashboard", [])]
    lines = {}
    for name in by_type.get("AWS::Lambda::Function", []):
        group, events, token = f"/aws/lambda/{name}", [], None
        try:
            while True:
                page = logs.filter_log_events(logGroupName=group, **({"nextToken": token} if token else {}))
                events += page["events"]
                token = page.get("nextToken")
                if not token:
                    break
        except logs.exceptions.ResourceNotFoundException:
            pass
        lines[name] = [e["message"] for e in events]
    json.dump({
        "alarms": [{k: a.get(k) for k in ("AlarmName", "Namespace", "MetricName", "Dimensions",
                                          "Threshold", "ComparisonOperator", "AlarmActions")}
                   for a in alarms],
        "dashboards": dashboards,
        "logs": lines,
    }, sys.stdout, indent=2, default=str)
    print()


if __name__ == "__main__":
    main()
