#!/usr/bin/env bash
# Deploy infra/specrun.yaml to moto's CloudFormation on loopback and report what moto made of it.
# A check of the template against an emulator, not a way to run specrun: moto creates the
# bucket, the queues, the roles, the functions (it never runs the Rust zips), the launch
# template and an empty Auto Scaling group, and skips what it has no CloudFormation support for.
# The lifecycle rules moto's CloudFormation leaves out are then put through the S3 API
# (create-resources.sh --bucket-only), as the runner does at start-up.
#
#   localstack/deploy-stack-moto.sh [--stack-name NAME] [--keep]
#
# The stack name defaults to specrun-moto-<epoch seconds>, a new one each time (moto keeps a
# half-made stack around after some failed creates, so names are not reused).
# Starts moto with start-moto.sh when nothing answers at AWS_ENDPOINT_URL
# (default http://127.0.0.1:4566). Function zips: target/lambda/specrun-{submit,status}/bootstrap.zip
# when built, else placeholders. The stack is deleted again unless --keep is given.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
STACK="specrun-moto-$(date +%s)"
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --stack-name) STACK="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n "2,18p" "$0"; exit 0 ;;
    *) echo "deploy-stack-moto: unknown argument $1" >&2; exit 2 ;;
  esac
done
ENDPOINT="${AWS_ENDPOINT_URL:-http://127.0.0.1:4566}"
case "$ENDPOINT" in
  http://127.*|http://localhost*) ;;
  *) echo "deploy-stack-moto: $ENDPOINT is not a loopback endpoint" >&2; exit 2 ;;
esac
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1
unset AWS_PROFILE AWS_SESSION_TOKEN
log() { echo "deploy-stack-moto: $*" >&2; }
aws_() { aws --endpoint-url "$ENDPOINT" --region us-east-1 "$@"; }
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$ENDPOINT/" || true)" = 000 ]; then
  port="${ENDPOINT##*:}"
  MOTO_PORT="${port%%/*}" "$HERE/start-moto.sh" >/dev/null
fi
if ! python3 -c 'import cfnlint' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check cfn-lint >&2
fi

# ---- inputs the template needs ----------------------------------------------------------------
ARTIFACTS=specrun-artifacts
aws_ s3api head-bucket --bucket "$ARTIFACTS" >/dev/null 2>&1 || aws_ s3api create-bucket --bucket "$ARTIFACTS" >/dev/null
for fn in submit status; do
  zip="$ROOT/target/lambda/specrun-$fn/bootstrap.zip"
  if [ ! -f "$zip" ]; then
    zip="$WORK/$fn.zip"
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1], "w").writestr("bootstrap", "#!/bin/sh\nexit 1\n")' "$zip"
  fi
  aws_ s3 cp --only-show-errors "$zip" "s3://$ARTIFACTS/specrun/$fn.zip"
done
secret_arn=$(aws_ secretsmanager describe-secret --secret-id specrun/forge-token --query ARN --output text 2>/dev/null \
  || aws_ secretsmanager create-secret --name specrun/forge-token --secret-string placeholder --query ARN --output text)
vpc=$(aws_ ec2 describe-vpcs --filters Name=is-default,Values=true --query 'Vpcs[0].VpcId' --output text)
subnet=$(aws_ ec2 describe-subnets --filters "Name=vpc-id,Values=$vpc" --query 'Subnets[0].SubnetId' --output text)

# moto fails the whole stack on an output that reads an attribute of a resource type it does not
# model (AWS::Lambda::Url): drop such outputs from a JSON copy of the template.
python3 - "$ROOT/infra/specrun.yaml" "$WORK/template.json" <<'PY'
import json, sys
from cfnlint.decode import decode
template, problems = decode(sys.argv[1])
assert not problems, problems
resources = template["Resources"]
unsupported = {name for name, r in resources.items() if r["Type"] in {"AWS::Lambda::Url"}}
dropped = [k for k, o in template["Outputs"].items()
           if isinstance(o["Value"], dict) and o["Value"].get("Fn::GetAtt", [None])[0] in unsupported]
for k in dropped:
    del template["Outputs"][k]
print("deploy-stack-moto: outputs left out for moto: " + ", ".join(dropped), file=sys.stderr)
json.dump(template, open(sys.argv[2], "w"))
PY

log "creating stack $STACK"
aws_ cloudformation create-stack --stack-name "$STACK" --template-body "file://$WORK/template.json" \
  --capabilities CAPABILITY_IAM --parameters \
  ParameterKey=ArtifactBucket,ParameterValue="$ARTIFACTS" \
  ParameterKey=VpcId,ParameterValue="$vpc" \
  ParameterKey=SubnetIds,ParameterValue="$subnet" \
  ParameterKey=ForgeTokenSecretArn,ParameterValue="$secret_arn" >/dev/null
status=""
for _ in $(seq 1 60); do
  status=$(aws_ cloudformation describe-stacks --stack-name "$STACK" --query 'Stacks[0].StackStatus' --output text)
  case "$status" in *_IN_PROGRESS) sleep 1 ;; *) break ;; esac
done
log "stack status: $status"
[ "$status" = CREATE_COMPLETE ] || { aws_ cloudformation describe-stack-events --stack-name "$STACK" >&2 || true; exit 1; }

aws_ cloudformation describe-stack-resources --stack-name "$STACK" --output json > "$WORK/resources.json"
aws_ cloudformation describe-stacks --stack-name "$STACK" --output json > "$WORK/stack.json"
python3 - "$WORK/template.json" "$WORK/resources.json" "$WORK/stack.json" >&2 <<'PY'
import json, sys
template = json.load(open(sys.argv[1]))
made = {r["LogicalResourceId"]: r for r in json.load(open(sys.argv[2]))["StackResources"]
        if r.get("LogicalResourceId") not in (None, "None")}
skipped = []
for name, r in template["Resources"].items():
    cond = r.get("Condition")
    if name in made:
        print(f"  created  {name:28} {r['Type']:36} {made[name]['PhysicalResourceId']}")
    elif cond:
        print(f"  (cond)   {name:28} {r['Type']:36} condition {cond} false")
    else:
        skipped.append(name)
        print(f"  SKIPPED  {name:28} {r['Type']:36} no moto CloudFormation support")
print("outputs:")
for o in json.load(open(sys.argv[3]))["Stacks"][0].get("Outputs", []):
    print(f"  {o['OutputKey']:22} {o['OutputValue']}")
PY

bucket=$(aws_ cloudformation describe-stacks --stack-name "$STACK" --query "Stacks[0].Outputs[?OutputKey=='BucketName'].OutputValue" --output text)
queue_url=$(aws_ cloudformation describe-stacks --stack-name "$STACK" --query "Stacks[0].Outputs[?OutputKey=='QueueUrl'].OutputValue" --output text)
enc=$(aws_ s3api get-bucket-encryption --bucket "$bucket" --query 'ServerSideEncryptionConfiguration.Rules[0].ApplyServerSideEncryptionByDefault.SSEAlgorithm' --output text)
log "bucket $bucket: default encryption $enc"
if aws_ s3api get-bucket-lifecycle-configuration --bucket "$bucket" >/dev/null 2>&1; then
  log "bucket $bucket: lifecycle rules present from CloudFormation"
else
  log "bucket $bucket: no lifecycle rules from CloudFormation (expected on moto); putting them through the S3 API"
  SPECRUN_BUCKET="$bucket" "$HERE/create-resources.sh" --bucket-only >/dev/null
fi
# moto names CloudFormation queues with the region's public hostname; use the emulator's form
# so that nothing ever dials that host.
local_queue_url="$ENDPOINT/${queue_url#https://*/}"
aws_ sqs get-queue-attributes --queue-url "$local_queue_url" --attribute-names \
  VisibilityTimeout ReceiveMessageWaitTimeSeconds RedrivePolicy SqsManagedSseEnabled \
  --query Attributes --output json | sed 's/^/  /' >&2

if [ "$KEEP" = 1 ]; then
  log "kept stack $STACK; for specrun:"
  echo "export AWS_ENDPOINT_URL=$ENDPOINT SPECRUN_BUCKET=$bucket SPECRUN_QUEUE_URL=$local_queue_url"
else
  aws_ cloudformation delete-stack --stack-name "$STACK"
  log "deleted stack $STACK (its bucket $bucket stays: DeletionPolicy Retain)"
fi
