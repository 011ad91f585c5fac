"""Prints a deployed stack's dashboard and alarm as CloudWatch describes them, as one JSON object:
{"dashboard": <its body, parsed>, "alarm": <DescribeAlarms' entry>}.

usage: monitoring.py DASHBOARD_NAME ALARM_NAME   (AWS_ENDPOINT_URL must name the emulator)
"""

import json
import sys

import boto3

dashboard_name, alarm_name = sys.argv[1:]
cloudwatch = boto3.client("cloudwatch")
dashboard = json.loads(cloudwatch.get_dashboard(DashboardName=dashboard_name)["DashboardBody"])
alarms = cloudwatch.describe_alarms(AlarmNames=[alarm_name])["MetricAlarms"]
if len(alarms) != 1:
    sys.exit(f"alarm {alarm_name}: {len(alarms)} found")
print(json.dumps({"dashboard": dashboard, "alarm": alarms[0]}, default=str))
