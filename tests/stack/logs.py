"""Prints the stack's function logs from CloudWatch Logs (shown when a stack test fails).

usage: logs.py FUNCTION_NAME...   (AWS_ENDPOINT_URL must name the emulator)
"""

import sys

import boto3

logs = boto3.client("logs")
for function in sys.argv[1:]:
    print(f"--- /aws/lambda/{function}")
    try:
        events = logs.filter_log_events(logGroupName=f"/aws/lambda/{function}")["events"]
    except logs.exceptions.ResourceNotFoundException:
        print("(no log group)")
        continue
    for event in events[-200:]:
        print(event["message"].rstrip())
