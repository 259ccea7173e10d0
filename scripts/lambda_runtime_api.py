"""A loopback stand-in for the AWS Lambda Runtime API, so a benchmark can start the real
`status`/`submit` Lambda binaries and time them from process start to their first answer.
Standard library only.

No Lambda runtime can run here (no AWS, no image registry for the Runtime Interface
Emulator), so this follows the documented Runtime API (version 2018-06-01) for what a
custom runtime calls:
  GET  /2018-06-01/runtime/invocation/next          -> the event, with the
       Lambda-Runtime-Aws-Request-Id, -Deadline-Ms, -Invoked-Function-Arn and -Trace-Id
       headers
  POST /2018-06-01/runtime/invocation/{id}/response -> 202
  POST /2018-06-01/runtime/invocation/{id}/error    -> 202
  POST /2018-06-01/runtime/init/error               -> 202
Each served invocation is a Lambda function URL event (payload format 2.0).
"""

import http.server
import json
import threading
import time
import uuid

API = "/2018-06-01/runtime"
ENV = {
    "AWS_LAMBDA_FUNCTION_NAME": "specrun-bench",
    "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
    "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/specrun-bench",
    "AWS_LAMBDA_LOG_STREAM_NAME": "bench",
}


def function_url_event(method, path, query=""):
    """A function URL request in payload format 2.0, as Lambda hands it to the handler."""
    now = time.time()
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": {"host": "bench.lambda-url.us-east-1.on.aws", "user-agent": "specrun-bench"},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "bench",
            "domainName": "bench.lambda-url.us-east-1.on.aws",
            "domainPrefix": "bench",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": "127.0.0.1", "userAgent": "specrun-bench"},
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": False,
    }


class QuietServer(http.server.ThreadingHTTPServer):
    """The benchmark stops each runtime while its next poll is open; that reset is expected."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        pass


class RuntimeApi:
    """Serves `events` one by one to whichever runtime polls, and records each answer
    (perf_counter time, request id, the decoded response document)."""

    def __init__(self, events):
        self.pending = list(events)
        self.answers = []
        self.lock = threading.Lock()
        self.answered = threading.Condition(self.lock)
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                if self.path != f"{API}/invocation/next":
                    return self._reply(404, b"{}")
                with api.lock:
                    event = api.pending.pop(0) if api.pending else None
                if event is None:
                    # A real runtime API holds the poll until the next event; the
                    # benchmark stops the process instead, so hold it until then.
                    time.sleep(3600)
                    return None
                request_id = str(uuid.uuid4())
                body = json.dumps(event).encode()
                deadline_ms = int((time.time() + 30) * 1000)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Lambda-Runtime-Aws-Request-Id", request_id)
                self.send_header("Lambda-Runtime-Deadline-Ms", str(deadline_ms))
                self.send_header("Lambda-Runtime-Invoked-Function-Arn",
                                 "arn:aws:lambda:us-east-1:123456789012:function:specrun-bench")
                self.send_header("Lambda-Runtime-Trace-Id", f"Root=1-{uuid.uuid4().hex[:8]}-{uuid.uuid4().hex[:24]}")
                self.end_headers()
                self.wfile.write(body)
                return None

            def do_POST(self):
                at = time.perf_counter()
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                kind = self.path.rsplit("/", 1)[-1]
                try:
                    doc = json.loads(raw) if raw else None
                except ValueError:
                    doc = {"unparsed": raw.decode("utf-8", "replace")}
                with api.answered:
                    api.answers.append({"at": at, "kind": kind, "path": self.path, "doc": doc})
                    api.answered.notify_all()
                self._reply(202, b'{"status":"OK"}')

            def _reply(self, code, body):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_answers(self, count, timeout):
        deadline = time.monotonic() + timeout
        with self.answered:
            while len(self.answers) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.answered.wait(left)
            return list(self.answers)

    def close(self):
        self.server.shutdown()
        self.server.server_close()
