#!/usr/bin/env python3
"""A Celery producer for specrun, as a scheduler would run it (FR-001).

Sends ``specrun.run`` tasks over Celery's SQS transport (kombu) and reads results from
Celery's S3 result backend, so specrun's runner can be tested against the real Python
``celery`` package rather than against our idea of it. Needs ``pip install 'celery[sqs]'``
(boto3 comes with it). Only talks to the endpoint it is given; nothing else.

Commands:

  send    --kwargs JSON|@FILE [--queue NAME] [--task NAME] ...  prints the task id
  wait    TASK_ID [--timeout S]        prints AsyncResult.get() as JSON; on failure prints
                                       the exception as JSON and exits 1; 2 on timeout
  capture NAME --out DIR [send options] sends one task, reads its raw SQS message with
                                       boto3, writes NAME.sqs-body (the exact SQS body) and
                                       NAME.decoded.json (a readable decoding) into DIR, and
                                       deletes that message (others are left to time out)

Environment:

  AWS_ENDPOINT_URL           the SQS/S3 endpoint (moto, LocalStack); unset means AWS
  AWS_REGION                 region (default us-east-1)
  AWS_ACCESS_KEY_ID/_SECRET_ACCESS_KEY   credentials (emulators accept any)
  CELERY_BROKER_URL          broker URL (default "sqs://": endpoint from AWS_ENDPOINT_URL)
  SPECRUN_CELERY_QUEUE       queue name (default "specrun"); --queue overrides
  SPECRUN_CELERY_QUEUE_URL   the queue's URL: use it as a kombu predefined queue, so kombu
                             neither lists nor creates queues
  SPECRUN_CELERY_S3_BUCKET   result bucket (required for wait)
  SPECRUN_CELERY_S3_BASE_PATH  key prefix of results (default "celery/"); Celery adds no
                             separator, the result key is BASE_PATH + "celery-task-meta-" + ID
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value else default


def make_app(args: argparse.Namespace):
    """A Celery app configured as a scheduler using specrun would configure it."""
    from celery import Celery

    region = _env("AWS_REGION", _env("AWS_DEFAULT_REGION", "us-east-1"))
    endpoint = _env("AWS_ENDPOINT_URL")
    queue = getattr(args, "queue", None) or _env("SPECRUN_CELERY_QUEUE", "specrun")
    transport_options: dict = {"region": region}
    queue_url = _env("SPECRUN_CELERY_QUEUE_URL")
    if queue_url:
        transport_options["predefined_queues"] = {queue: {"url": queue_url}}
    if getattr(args, "no_sqs_base64", False):
        transport_options["sqs_base64_encoding"] = False

    app = Celery("specrun-scheduler", broker=_env("CELERY_BROKER_URL", "sqs://"))
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=False,
        broker_connection_max_retries=1,
        task_default_queue=queue,
        task_serializer=getattr(args, "serializer", None) or "json",
        accept_content=["json", "pickle"],
        result_serializer="json",
        result_accept_content=["json"],
        task_protocol=getattr(args, "protocol", None) or 2,
        task_compression=getattr(args, "compression", None),
        result_backend="s3",
        s3_bucket=_env("SPECRUN_CELERY_S3_BUCKET", "specrun-results"),
        s3_base_path=_env("SPECRUN_CELERY_S3_BASE_PATH", "celery/"),
        s3_endpoint_url=endpoint,
        s3_region=region,
        s3_access_key_id=_env("AWS_ACCESS_KEY_ID"),
        s3_secret_access_key=_env("AWS_SECRET_ACCESS_KEY"),
    )
    return app, queue


def _load_json_arg(value: str | None, default):
    if value is None:
        return default
    if value.startswith("@"):
        with open(value[1:], encoding="utf-8") as f:
            return json.load(f)
    return json.loads(value)


def send(args: argparse.Namespace) -> str:
    app, queue = make_app(args)
    options = {}
    for name in ("countdown", "expires", "parent_id", "root_id"):
        value = getattr(args, name, None)
        if value is not None:
            options[name] = value
    result = app.send_task(
        args.task,
        args=_load_json_arg(args.args, None),
        kwargs=_load_json_arg(args.kwargs, {}),
        queue=queue,
        **options,
    )
    return result.id


def cmd_send(args: argparse.Namespace) -> int:
    print(send(args))
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    from celery.exceptions import TimeoutError as CeleryTimeout

    app, _ = make_app(args)
    result = app.AsyncResult(args.task_id)
    try:
        value = result.get(timeout=args.timeout, interval=args.interval)
    except CeleryTimeout:
        print(json.dumps({"status": result.state, "error": "timeout"}))
        return 2
    except Exception as exc:  # noqa: BLE001 - the task's own exception, reported as data
        print(json.dumps({
            "status": result.state,
            "exception_type": type(exc).__name__,
            "exception_module": type(exc).__module__,
            "message": str(exc),
            "args": [str(a) for a in exc.args],
            "traceback": result.traceback,
        }))
        return 1
    print(json.dumps({"status": result.state, "result": value,
                      "date_done": str(result.date_done)}))
    return 0


def _sqs_client():
    import boto3

    return boto3.client(
        "sqs",
        region_name=_env("AWS_REGION", _env("AWS_DEFAULT_REGION", "us-east-1")),
        endpoint_url=_env("AWS_ENDPOINT_URL"),
    )


def _decode_for_humans(body: str) -> dict:
    """Decodes the layers kombu wraps around the task, for a readable fixture companion."""
    layers = {}
    try:
        envelope_text = base64.b64decode(body, validate=True).decode("utf-8")
        layers["sqs_body_encoding"] = "base64"
    except Exception:  # noqa: BLE001
        envelope_text = body
        layers["sqs_body_encoding"] = "none"
    envelope = json.loads(envelope_text)
    layers["envelope"] = dict(envelope)
    inner = envelope.get("body")
    if envelope.get("properties", {}).get("body_encoding") == "base64":
        inner_bytes = base64.b64decode(inner)
        try:
            layers["task_body"] = json.loads(inner_bytes.decode("utf-8"))
        except Exception:  # noqa: BLE001 - pickle or compressed: show the bytes
            layers["task_body_base64"] = inner
    return layers


def cmd_capture(args: argparse.Namespace) -> int:
    app, queue = make_app(args)
    task_id = send(args)
    sqs = _sqs_client()
    queue_url = _env("SPECRUN_CELERY_QUEUE_URL") or sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        resp = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=2,
            MessageAttributeNames=["All"],
            AttributeNames=["All"],
        )
        for msg in resp.get("Messages", []):
            layers = _decode_for_humans(msg["Body"])
            if task_id not in json.dumps(layers):  # another task's message: leave it
                continue
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, f"{args.name}.sqs-body"), "w", encoding="utf-8") as f:
                f.write(msg["Body"])
            companion = {
                "task_id": task_id,
                "queue": queue,
                "queue_url_path": queue_url.split("/", 3)[-1],
                "sqs_message_attributes": msg.get("MessageAttributes", {}),
                "sqs_attribute_names": sorted(msg.get("Attributes", {})),
                "decoded": layers,
            }
            with open(os.path.join(args.out, f"{args.name}.decoded.json"), "w", encoding="utf-8") as f:
                json.dump(companion, f, indent=2, sort_keys=True, ensure_ascii=False)
                f.write("\n")
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=msg["ReceiptHandle"])
            print(task_id)
            return 0
    print(f"no message for task {task_id} arrived on {queue_url}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def send_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--kwargs", help="the run request: JSON, or @FILE")
        p.add_argument("--args", help="positional args as a JSON list (specrun refuses them)")
        p.add_argument("--task", default="specrun.run")
        p.add_argument("--queue")
        p.add_argument("--countdown", type=float)
        p.add_argument("--expires", type=float)
        p.add_argument("--parent-id")
        p.add_argument("--root-id")
        p.add_argument("--protocol", type=int, choices=[1, 2])
        p.add_argument("--serializer", choices=["json", "pickle"])
        p.add_argument("--compression", choices=["zlib", "gzip", "bzip2"])
        p.add_argument("--no-sqs-base64", action="store_true",
                       help="transport option sqs_base64_encoding=False")

    p = sub.add_parser("send", help="send a task, print its id")
    send_options(p)
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("wait", help="AsyncResult(TASK_ID).get()")
    p.add_argument("task_id")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--interval", type=float, default=0.5)
    p.set_defaults(func=cmd_wait)

    p = sub.add_parser("capture", help="send a task and save its raw SQS body")
    p.add_argument("name")
    p.add_argument("--out", required=True)
    send_options(p)
    p.set_defaults(func=cmd_capture)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
