#!/usr/bin/env python3
"""A Celery producer for specrun on RabbitMQ and PostgreSQL, as a scheduler runs it.

Sends ``specrun.run`` tasks over Celery's AMQP transport and reads their results from
Celery's database result backend, with nothing but Celery's own configuration. Run it
with the Celery under test first on the path (``PYTHONPATH=<celery-5.4 dir>``); it needs
``celery``, ``sqlalchemy`` and ``psycopg2``.

Commands:

  send --kwargs JSON [--countdown S] prints the task id
  wait TASK_ID [--timeout S]         prints {"celery", "status", "result", "traceback"}
                                     as JSON and exits 0 when get() returned; on failure
                                     prints {"celery", "status", "exception", "message",
                                     "traceback"} and exits 1; exits 2 on a timeout

Environment:

  CELERY_BROKER_URL        amqp://user:password@host:port/vhost
  CELERY_RESULT_BACKEND    db+postgresql+psycopg2://user:password@host:port/db
  SPECRUN_CELERY_QUEUE     the queue (default "specrun")
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def make_app():
    from celery import Celery

    app = Celery(
        "specrun-scheduler",
        broker=os.environ["CELERY_BROKER_URL"],
        backend=os.environ["CELERY_RESULT_BACKEND"],
    )
    app.conf.update(
        task_default_queue=os.environ.get("SPECRUN_CELERY_QUEUE", "specrun"),
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=False,
        broker_connection_max_retries=1,
    )
    return app


def main() -> int:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    send = commands.add_parser("send")
    send.add_argument("--kwargs", required=True)
    send.add_argument("--countdown", type=float)
    wait = commands.add_parser("wait")
    wait.add_argument("task_id")
    wait.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()

    import celery
    from celery.exceptions import TimeoutError as CeleryTimeout

    app = make_app()
    if args.command == "send":
        result = app.send_task(
            "specrun.run", kwargs=json.loads(args.kwargs), countdown=args.countdown
        )
        print(result.id)
        return 0

    result = app.AsyncResult(args.task_id)
    try:
        value = result.get(timeout=args.timeout, interval=0.5)
    except CeleryTimeout:
        print(json.dumps({"celery": celery.__version__, "status": result.state}))
        return 2
    except Exception as error:  # noqa: BLE001 - the run's failure, raised by get()
        print(
            json.dumps(
                {
                    "celery": celery.__version__,
                    "status": result.state,
                    "exception": type(error).__name__,
                    "message": str(error),
                    "traceback": result.traceback,
                }
            )
        )
        return 1
    print(
        json.dumps(
            {
                "celery": celery.__version__,
                "status": result.state,
                "result": value,
                "traceback": result.traceback,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
