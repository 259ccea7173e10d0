#!/usr/bin/env bash
# Check that the S3/SQS emulator at AWS_ENDPOINT_URL (default http://127.0.0.1:4566) behaves
# the way specrun relies on, on throw-away resources it creates and deletes itself:
#   S3:  conditional create (If-None-Match: *) and compare-and-swap (If-Match) -> 412,
#        lifecycle configuration round-trip, presigned GET and PUT
#   SQS: long polling, visibility change, redrive to the DLQ after maxReceiveCount
# Uses boto3 (it comes with moto). Prints one line per check and "N passed, N failed".
#
#   localstack/check-emulator.sh
set -euo pipefail
ENDPOINT="${AWS_ENDPOINT_URL:-http://127.0.0.1:4566}"
case "$ENDPOINT" in
  http://127.*|http://localhost*) ;;
  *) echo "check-emulator: $ENDPOINT is not a loopback endpoint" >&2; exit 2 ;;
esac
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1
unset AWS_PROFILE AWS_SESSION_TOKEN
exec python3 - "$ENDPOINT" <<'PY'
import json, sys, time, uuid, urllib.request, urllib.error
import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

endpoint = sys.argv[1]
cfg = Config(s3={"addressing_style": "path"}, signature_version="s3v4", retries={"max_attempts": 1})
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=cfg)
sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1", config=cfg)
tag = uuid.uuid4().hex[:8]
bucket, qname = f"specrun-check-{tag}", f"specrun-check-{tag}"
results = []

def check(name, fn):
    try:
        fn()
        results.append(True); print(f"ok    {name}")
    except Exception as e:  # noqa: BLE001 - report and go on
        results.append(False); print(f"FAIL  {name}: {e!r}")

def status_of(fn):
    try:
        fn(); return 200
    except ClientError as e:
        return e.response["ResponseMetadata"]["HTTPStatusCode"]

s3.create_bucket(Bucket=bucket)
key = "runs/r1/run.json"

def conditional_create():
    s3.put_object(Bucket=bucket, Key=key, Body=b"{}", IfNoneMatch="*")
    st = status_of(lambda: s3.put_object(Bucket=bucket, Key=key, Body=b"{}", IfNoneMatch="*"))
    assert st == 412, f"second create answered {st}, want 412"

def compare_and_swap():
    etag = s3.head_object(Bucket=bucket, Key=key)["ETag"]
    s3.put_object(Bucket=bucket, Key=key, Body=b'{"v":2}', IfMatch=etag)
    st = status_of(lambda: s3.put_object(Bucket=bucket, Key=key, Body=b'{"v":3}', IfMatch=etag))
    assert st == 412, f"stale If-Match answered {st}, want 412"

def lifecycle_round_trip():
    rules = [{"ID": "specrun-runs-retention", "Status": "Enabled", "Filter": {"Prefix": "runs/"},
              "Expiration": {"Days": 30}},
             {"ID": "specrun-abort-incomplete-multipart", "Status": "Enabled", "Filter": {"Prefix": ""},
              "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}]
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules})
    got = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert got["specrun-runs-retention"]["Expiration"]["Days"] == 30, got
    assert got["specrun-abort-incomplete-multipart"]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 1, got

def presigned():
    put = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "runs/r1/artifacts/a.txt"}, ExpiresIn=60)
    # An explicit content type: urllib's default (form-urlencoded) makes moto store an empty body.
    req = urllib.request.Request(put, data=b"artifact", method="PUT",
                                 headers={"Content-Type": "application/octet-stream"})
    urllib.request.urlopen(req, timeout=10).read()
    get = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "runs/r1/artifacts/a.txt"}, ExpiresIn=60)
    assert "X-Amz-Signature=" in get, get
    body = urllib.request.urlopen(get, timeout=10).read()
    assert body == b"artifact", body

check("s3 conditional create (If-None-Match: *) -> 412", conditional_create)
check("s3 compare-and-swap (If-Match) -> 412 on a stale ETag", compare_and_swap)
check("s3 lifecycle configuration round-trip", lifecycle_round_trip)
check("s3 presigned PUT then GET", presigned)

dlq_url = sqs.create_queue(QueueName=qname + "-dlq")["QueueUrl"]
dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
q_url = sqs.create_queue(QueueName=qname, Attributes={
    "VisibilityTimeout": "30", "ReceiveMessageWaitTimeSeconds": "20",
    "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 2})})["QueueUrl"]

def long_polling():
    t0 = time.monotonic()
    got = sqs.receive_message(QueueUrl=q_url, WaitTimeSeconds=2).get("Messages", [])
    waited = time.monotonic() - t0
    assert not got and waited >= 1.5, f"empty receive returned after {waited:.2f}s"
    sqs.send_message(QueueUrl=q_url, MessageBody="run")
    got = sqs.receive_message(QueueUrl=q_url, WaitTimeSeconds=5).get("Messages", [])
    assert len(got) == 1, got
    global receipt
    receipt = got[0]["ReceiptHandle"]

def visibility_change():
    assert not sqs.receive_message(QueueUrl=q_url, WaitTimeSeconds=1).get("Messages"), "in-flight message was visible"
    sqs.change_message_visibility(QueueUrl=q_url, ReceiptHandle=receipt, VisibilityTimeout=0)
    got = sqs.receive_message(QueueUrl=q_url, WaitTimeSeconds=5).get("Messages", [])
    assert len(got) == 1, "message did not come back after visibility 0"
    sqs.change_message_visibility(QueueUrl=q_url, ReceiptHandle=got[0]["ReceiptHandle"], VisibilityTimeout=0)

def redrive():
    # two receives so far; the third attempt moves it to the DLQ
    got = sqs.receive_message(QueueUrl=q_url, WaitTimeSeconds=1).get("Messages", [])
    assert not got, f"message received a third time: {got}"
    moved = sqs.receive_message(QueueUrl=dlq_url, WaitTimeSeconds=5).get("Messages", [])
    assert len(moved) == 1 and moved[0]["Body"] == "run", moved

receipt = None
check("sqs long polling (empty receive waits; a message arrives)", long_polling)
check("sqs visibility change (hidden while in flight, back at 0)", visibility_change)
check("sqs redrive to the DLQ after maxReceiveCount", redrive)

for u in (q_url, dlq_url):
    sqs.delete_queue(QueueUrl=u)
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
    for o in page.get("Contents", []):
        s3.delete_object(Bucket=bucket, Key=o["Key"])
s3.delete_bucket(Bucket=bucket)
passed, failed = results.count(True), results.count(False)
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
