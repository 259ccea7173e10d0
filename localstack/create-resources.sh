#!/usr/bin/env bash
# Create specrun's bucket and queues in a local S3/SQS emulator (moto or LocalStack) with the
# AWS CLI, the way infra/specrun.yaml declares them: the state bucket (SSE, public access
# blocked, bucket-owner-enforced ownership, the retention lifecycle rules), the run queue
# (long polling, visibility timeout, redrive to the DLQ) and the dead-letter queue (14 days).
# Idempotent: existing resources are updated in place. Checks the lifecycle rules read back.
#
#   localstack/create-resources.sh [--env-file FILE] [--bucket-only]
#
# --bucket-only configures an existing or new bucket (SPECRUN_BUCKET) and skips the queues:
# deploy-stack-moto.sh uses it to put the lifecycle rules CloudFormation-on-moto leaves out.
#
# Settings (environment):
#   AWS_ENDPOINT_URL         emulator endpoint (default http://127.0.0.1:4566)
#   SPECRUN_BUCKET           bucket name (default specrun-state)
#   SPECRUN_QUEUE_NAME       run queue name (default specrun-runs; its DLQ is <name>-dlq)
#   SPECRUN_RETENTION_DAYS   days kept under runs/, celery/, idempotency/ (default 30, at least 7)
#   SPECRUN_VISIBILITY_TIMEOUT_SECS  run queue visibility timeout (default 1800)
#   SPECRUN_MAX_RECEIVE_COUNT        receives before a message moves to the DLQ (default 3)
#
# Prints `export` lines for SPECRUN_BUCKET, SPECRUN_QUEUE_URL, SPECRUN_DLQ_URL and
# AWS_ENDPOINT_URL on stdout (eval them, or pass --env-file to also write them to a file).
set -euo pipefail

ENV_FILE=""
BUCKET_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --env-file) ENV_FILE="$2"; shift 2 ;;
    --bucket-only) BUCKET_ONLY=1; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "create-resources: unknown argument $1" >&2; exit 2 ;;
  esac
done

ENDPOINT="${AWS_ENDPOINT_URL:-http://127.0.0.1:4566}"
case "$ENDPOINT" in
  http://127.*|http://localhost*|http://\[::1\]*) ;;
  *) echo "create-resources: $ENDPOINT is not a loopback endpoint; this script is for local emulators only" >&2; exit 2 ;;
esac
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1
unset AWS_PROFILE AWS_SESSION_TOKEN
BUCKET="${SPECRUN_BUCKET:-specrun-state}"
QUEUE="${SPECRUN_QUEUE_NAME:-specrun-runs}"
DLQ="$QUEUE-dlq"
RETENTION="${SPECRUN_RETENTION_DAYS:-30}"
VISIBILITY="${SPECRUN_VISIBILITY_TIMEOUT_SECS:-1800}"
MAX_RECEIVE="${SPECRUN_MAX_RECEIVE_COUNT:-3}"
log() { echo "create-resources: $*" >&2; }
aws_() { aws --endpoint-url "$ENDPOINT" --region us-east-1 --output json "$@"; }

if ! [[ "$RETENTION" =~ ^[0-9]+$ ]] || [ "$RETENTION" -lt 7 ]; then
  log "SPECRUN_RETENTION_DAYS=$RETENTION: must be a whole number of days, at least 7"; exit 2
fi
command -v aws >/dev/null || { log "the AWS CLI (aws) is required"; exit 2; }

# ---- state bucket -------------------------------------------------------------------------
if aws_ s3api head-bucket --bucket "$BUCKET" >/dev/null 2>&1; then
  log "bucket $BUCKET exists"
else
  aws_ s3api create-bucket --bucket "$BUCKET" >/dev/null
  log "bucket $BUCKET created"
fi
aws_ s3api put-bucket-encryption --bucket "$BUCKET" --server-side-encryption-configuration \
  '{"Rules":[{"ApplyServerSideEncryptionByDefault":{"SSEAlgorithm":"AES256"}}]}'
aws_ s3api put-public-access-block --bucket "$BUCKET" --public-access-block-configuration \
  'BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true'
aws_ s3api put-bucket-ownership-controls --bucket "$BUCKET" --ownership-controls \
  '{"Rules":[{"ObjectOwnership":"BucketOwnerEnforced"}]}'

# The same rule IDs and filters as infra/specrun.yaml (and the runner's start-up check).
lifecycle=$(cat <<JSON
{"Rules": [
  {"ID": "specrun-runs-retention", "Status": "Enabled", "Filter": {"Prefix": "runs/"},
   "Expiration": {"Days": $RETENTION}, "NoncurrentVersionExpiration": {"NoncurrentDays": $RETENTION}},
  {"ID": "specrun-celery-retention", "Status": "Enabled", "Filter": {"Prefix": "celery/"},
   "Expiration": {"Days": $RETENTION}, "NoncurrentVersionExpiration": {"NoncurrentDays": $RETENTION}},
  {"ID": "specrun-idempotency-retention", "Status": "Enabled", "Filter": {"Prefix": "idempotency/"},
   "Expiration": {"Days": $RETENTION}, "NoncurrentVersionExpiration": {"NoncurrentDays": $RETENTION}},
  {"ID": "specrun-index-retention", "Status": "Enabled", "Filter": {"Prefix": "index/"},
   "Expiration": {"Days": $RETENTION}, "NoncurrentVersionExpiration": {"NoncurrentDays": $RETENTION}},
  {"ID": "specrun-abort-incomplete-multipart", "Status": "Enabled", "Filter": {"Prefix": ""},
   "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}
]}
JSON
)
aws_ s3api put-bucket-lifecycle-configuration --bucket "$BUCKET" --lifecycle-configuration "$lifecycle"
got=$(aws_ s3api get-bucket-lifecycle-configuration --bucket "$BUCKET")
python3 - "$got" "$RETENTION" <<'PY'
import json, sys
rules = {r["ID"]: r for r in json.loads(sys.argv[1])["Rules"]}
days = int(sys.argv[2])
for rid, prefix in (("specrun-runs-retention", "runs/"), ("specrun-celery-retention", "celery/"),
                    ("specrun-idempotency-retention", "idempotency/"), ("specrun-index-retention", "index/")):
    r = rules.get(rid)
    assert r, f"lifecycle rule {rid} missing after put: {sorted(rules)}"
    assert r["Status"] == "Enabled", r
    assert r.get("Filter", {}).get("Prefix", r.get("Prefix")) == prefix, r
    assert r["Expiration"]["Days"] == days, r
r = rules.get("specrun-abort-incomplete-multipart")
assert r and r["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 1, r
PY
log "lifecycle on $BUCKET: runs/, celery/, idempotency/ expire after $RETENTION days; incomplete uploads aborted after 1 day (read back and checked)"

if [ "$BUCKET_ONLY" = 1 ]; then
  exit 0
fi

# ---- dead-letter queue and run queue ------------------------------------------------------
dlq_url=$(aws_ sqs create-queue --queue-name "$DLQ" --attributes \
  'MessageRetentionPeriod=1209600,SqsManagedSseEnabled=true' --query QueueUrl --output text)
dlq_arn=$(aws_ sqs get-queue-attributes --queue-url "$dlq_url" --attribute-names QueueArn \
  --query Attributes.QueueArn --output text)
attrs=$(python3 -c 'import json,sys; print(json.dumps({
  "VisibilityTimeout": sys.argv[1], "ReceiveMessageWaitTimeSeconds": "20",
  "MessageRetentionPeriod": "345600", "SqsManagedSseEnabled": "true",
  "RedrivePolicy": json.dumps({"deadLetterTargetArn": sys.argv[2], "maxReceiveCount": int(sys.argv[3])})}))' \
  "$VISIBILITY" "$dlq_arn" "$MAX_RECEIVE")
if queue_url=$(aws_ sqs get-queue-url --queue-name "$QUEUE" --query QueueUrl --output text 2>/dev/null); then
  aws_ sqs set-queue-attributes --queue-url "$queue_url" --attributes "$attrs"
  log "queue $QUEUE exists; attributes updated"
else
  queue_url=$(aws_ sqs create-queue --queue-name "$QUEUE" --attributes "$attrs" --query QueueUrl --output text)
  log "queue $QUEUE created"
fi
redrive=$(aws_ sqs get-queue-attributes --queue-url "$queue_url" --attribute-names RedrivePolicy \
  --query Attributes.RedrivePolicy --output text)
case "$redrive" in
  *"$dlq_arn"*) log "queue $QUEUE redrives to $DLQ after $MAX_RECEIVE receives; visibility ${VISIBILITY}s; long polling 20 s" ;;
  *) log "redrive policy did not read back: $redrive"; exit 1 ;;
esac

exports=$(cat <<ENV
export AWS_ENDPOINT_URL=$ENDPOINT
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1
export SPECRUN_BUCKET=$BUCKET
export SPECRUN_QUEUE_URL=$queue_url
export SPECRUN_DLQ_URL=$dlq_url
ENV
)
if [ -n "$ENV_FILE" ]; then
  printf '%s\n' "$exports" > "$ENV_FILE"
  log "wrote $ENV_FILE"
fi
printf '%s\n' "$exports"
