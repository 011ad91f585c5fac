"""Deploys infra/template.yaml into the local AWS emulator the way `sam deploy` does in AWS:
`sam package` uploads the functions' code directories, then CloudFormation creates the stack.

usage: deploy.py STAGE_DIR STACK_NAME KEY=VALUE...   (AWS_ENDPOINT_URL must name the emulator)
Prints the stack outputs as one JSON object; on failure, the failed resources and exits 1.
"""

import json
import os
import subprocess
import sys
import time

import boto3


def main() -> None:
    stage, stack, *pairs = sys.argv[1:]
    parameters = [dict(zip(("ParameterKey", "ParameterValue"), p.split("=", 1))) for p in pairs]
    artifacts = f"{stack}-artifacts"
    boto3.client("s3").create_bucket(Bucket=artifacts)
    sam = os.path.join(os.path.dirname(sys.executable), "sam")
    subprocess.run(
        [sam, "package", "--template-file", "infra/template.yaml", "--s3-bucket", artifacts,
         "--output-template-file", "packaged.yaml"],
        cwd=stage, check=True, stdout=subprocess.DEVNULL,
    )
    cloudformation = boto3.client("cloudformation")
    with open(os.path.join(stage, "packaged.yaml")) as packaged:
        cloudformation.create_stack(
            StackName=stack,
            TemplateBody=packaged.read(),
            Parameters=parameters,
            Capabilities=["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"],
        )
    for _ in range(300):
        described = cloudformation.describe_stacks(StackName=stack)["Stacks"][0]
        if not described["StackStatus"].endswith("IN_PROGRESS"):
            break
        time.sleep(0.5)
    if described["StackStatus"] != "CREATE_COMPLETE":
        for event in cloudformation.describe_stack_events(StackName=stack)["StackEvents"]:
            if "FAILED" in event["ResourceStatus"]:
                print(event["LogicalResourceId"], event.get("ResourceStatusReason"), file=sys.stderr)
        sys.exit(f"stack {stack}: {described['StackStatus']}")
    print(json.dumps({o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}))


if __name__ == "__main__":
    main()
