#!/usr/bin/env python3
"""Measure specrun's serverless path on loopback (driven by scripts/bench-serverless.sh).
Standard library only.

  bench_serverless.py git-server --root DIR --port-file FILE [--log FILE]
      Serve the bare repositories under DIR over git's smart HTTP protocol (clone and
      push, anonymous) on 127.0.0.1: a small CGI bridge to `git http-backend`.

  bench_serverless.py run --tmp DIR --specrun BIN --runs N --image IMAGE --out JSON ...
      Start moto and the git server, then measure
        1. runner throughput: for each --concurrency level a fresh bucket and queue (+DLQ,
           made by localstack/create-resources.sh), one `specrun runner` and one
           `specrun serve --no-runner` for submissions; one warm-up run (not counted),
           then N runs submitted at once with POST /runs and polled with GET /runs/{id};
        2. the status API's start: `specrun serve --no-runner` (S3 mode) spawned --starts
           times, from spawn to the first 200 answer to GET /runs/<id> (polled every 5 ms);
        2b. the status Lambda binary itself against a loopback Lambda Runtime API
           (scripts/lambda_runtime_api.py): spawn -> its answer to the first event;
        3. GET /runs?limit=20 on a warm server, before and after --index-runs older runs
           (each a run.json and its index key, put straight into moto) join the bucket;
      print a plain-text table and write the JSON document to --out.

Exit status of `run`: 0 when every counted run succeeded and pushed its branch,
1 otherwise (each failure is printed), 2 when the set-up itself failed.
"""

import argparse
import concurrent.futures
import http.client
import http.server
import json
import os
import re
import signal
import socket
import socketserver
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from datetime import datetime, timezone

from bench_common import parse_ts, stats
from lambda_runtime_api import ENV as LAMBDA_ENV, RuntimeApi, function_url_event

FINAL = {"succeeded", "no_changes", "needs_clarification", "failed", "cancelled"}
FEATURE_TEXT = (
    "Add user login with email and password, a logout button, and a session that "
    "expires after 30 minutes of inactivity."
)
REPO_NAME = "bench"
POLL_S = 0.1  # status polling while runs are in flight
START_POLL_S = 0.005  # status polling while a serve process starts
PROCESS_READY_TIMEOUT_S = 60
STOP_GRACE_S = 15

HERMETIC_GIT = {
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "specrun bench",
    "GIT_AUTHOR_EMAIL": "bench@specrun.invalid",
    "GIT_COMMITTER_NAME": "specrun bench",
    "GIT_COMMITTER_EMAIL": "bench@specrun.invalid",
    "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z",
}


# --------------------------------------------------------------------------------------
# git smart HTTP server (git http-backend as CGI)
# --------------------------------------------------------------------------------------


class GitCgiHandler(http.server.BaseHTTPRequestHandler):
    """GET and POST to `git http-backend`; the request body is passed on stdin."""

    server_version = "specrun-bench-git/1"
    root = ""
    backend = ""
    log_file = None
    log_lock = threading.Lock()

    def do_GET(self):
        self._cgi()

    def do_POST(self):
        self._cgi()

    def _read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            while True:
                size_line = self.rfile.readline()
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _cgi(self):
        path, _, query = self.path.partition("?")
        body = self._read_body() if self.command == "POST" else b""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": self.root,
            "GIT_HTTP_EXPORT_ALL": "1",
            # Anonymous push: http-backend refuses receive-pack without REMOTE_USER
            # unless http.receivepack is set explicitly.
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "http.receivepack",
            "GIT_CONFIG_VALUE_0": "true",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": self.request_version,
            "SERVER_SOFTWARE": self.server_version,
            "REQUEST_METHOD": self.command,
            "PATH_INFO": urllib.parse.unquote(path),
            "QUERY_STRING": query,
            "REMOTE_ADDR": self.client_address[0],
            "CONTENT_TYPE": self.headers.get("Content-Type") or "",
            "CONTENT_LENGTH": str(len(body)),
        }
        for name, value in self.headers.items():
            key = "HTTP_" + name.upper().replace("-", "_")
            if key not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH", "HTTP_TRANSFER_ENCODING"):
                env[key] = value
        proc = subprocess.run(
            [self.backend], input=body, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out = proc.stdout
        sep = out.find(b"\r\n\r\n")
        sep_len = 4
        if sep < 0 or (0 <= out.find(b"\n\n") < sep):
            sep, sep_len = out.find(b"\n\n"), 2
        status, headers = 200, []
        if proc.returncode != 0 or sep < 0:
            status = 500
            payload = proc.stderr or b"git http-backend failed\n"
            headers = [("Content-Type", "text/plain")]
        else:
            for line in out[:sep].decode("latin-1").splitlines():
                name, _, value = line.partition(":")
                if name.strip().lower() == "status":
                    status = int(value.strip().split()[0])
                elif name.strip():
                    headers.append((name.strip(), value.strip()))
            payload = out[sep + sep_len:]
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in ("content-length", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)
        self.close_connection = True
        if self.log_file:
            with self.log_lock, open(self.log_file, "a", encoding="utf-8") as f:
                f.write(f"{self.command} {self.path} {status}\n")

    def log_message(self, *args):
        pass


class ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def git_server_main(args):
    exec_path = subprocess.run(
        ["git", "--exec-path"], check=True, stdout=subprocess.PIPE, text=True
    ).stdout.strip()
    GitCgiHandler.root = os.path.abspath(args.root)
    GitCgiHandler.backend = os.path.join(exec_path, "git-http-backend")
    GitCgiHandler.log_file = args.log
    if not os.path.isfile(GitCgiHandler.backend):
        sys.exit(f"git-server: {GitCgiHandler.backend} not found")
    server = ThreadingServer(("127.0.0.1", 0), GitCgiHandler)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(str(server.server_address[1]))
    os.replace(tmp, args.port_file)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------

def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(msg):
    print(f"bench-serverless: {msg}", file=sys.stderr, flush=True)


class SetupError(Exception):
    pass


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def tail(path, lines=40):
    """The last lines of a log, without terminal colour codes."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return ANSI.sub("", "".join(f.readlines()[-lines:]))
    except OSError:
        return ""


def http_call(method, host, port, path, body=None, timeout=10.0):
    """(status, parsed JSON or None, raw bytes). Raises OSError when unreachable."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = None
        return resp.status, doc, raw
    finally:
        conn.close()


def aws_env(endpoint):
    env = dict(os.environ)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_SQS",
                 "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(name, None)
    env.update({
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    })
    return env


class Child:
    """A background process we started, with stdout+stderr in a log file."""

    def __init__(self, name, argv, logf, env=None, cwd=None):
        self.name = name
        self.argv = argv
        self.log = logf
        self.spawned = time.perf_counter()
        with open(logf, "wb") as out:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, cwd=cwd,
            )

    def alive(self):
        return self.proc.poll() is None

    def wait_for_line(self, needle, timeout=PROCESS_READY_TIMEOUT_S):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = tail(self.log, 10_000)
            for line in text.splitlines():
                if needle in line:
                    return line
            if not self.alive():
                raise SetupError(f"{self.name} exited ({self.proc.returncode}) before printing "
                                 f"{needle!r}; its log:\n{tail(self.log)}")
            time.sleep(0.02)
        raise SetupError(f"{self.name} did not print {needle!r} within {timeout} s; its log:\n"
                         f"{tail(self.log)}")

    def stop(self):
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def quiet(name, argv, logdir, env=None, cwd=None):
    """Run a set-up command with its output in a log; raise with the log when it fails."""
    logf = os.path.join(logdir, f"{name}.log")
    with open(logf, "wb") as out:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=out, env=env, cwd=cwd)
    if proc.returncode != 0:
        raise SetupError(f"set-up step '{name}' failed (exit {proc.returncode}): "
                         f"{' '.join(argv)}\n{tail(logf)}")
    return proc.stdout.decode("utf-8", "replace")


def hgit(*args, cwd=None):
    env = dict(os.environ)
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT"):
        env.pop(name, None)
    env.update(HERMETIC_GIT)
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True).stdout


# --------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = os.path.abspath(args.tmp)
        self.setup_dir = os.path.join(self.tmp, "setup")
        self.children = []
        self.setup_s = {}
        os.makedirs(self.setup_dir, exist_ok=True)

    def timed(self, name, fn, *a, **kw):
        t0 = time.perf_counter()
        result = fn(*a, **kw)
        self.setup_s[name] = self.setup_s.get(name, 0.0) + time.perf_counter() - t0
        return result

    def spawn(self, name, argv, env=None):
        child = Child(name, argv, os.path.join(self.tmp, "logs", f"{name}.log"), env=env, cwd=self.tmp)
        self.children.append(child)
        return child

    def stop_all(self):
        for child in reversed(self.children):
            child.stop()

    # --- fixtures ---------------------------------------------------------------------

    def start_moto(self):
        port = free_port()
        self.endpoint = f"http://127.0.0.1:{port}"
        self.moto = self.spawn("moto", ["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                               env=aws_env(self.endpoint))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                http_call("GET", "127.0.0.1", port, "/", timeout=2)
                return
            except OSError:
                if not self.moto.alive():
                    raise SetupError(f"moto_server exited; its log:\n{tail(self.moto.log)}")
                time.sleep(0.05)
        raise SetupError(f"moto_server did not answer within 20 s; its log:\n{tail(self.moto.log)}")

    def start_git(self):
        self.git_root = os.path.join(self.tmp, "git")
        os.makedirs(self.git_root, exist_ok=True)
        seed = os.path.join(self.tmp, "seed")
        os.makedirs(os.path.join(seed, "src"), exist_ok=True)
        files = {
            "README.md": "# bench-app\n\nA tiny example application used by the specrun benchmark.\n",
            "src/app.py": ('from src.util import greet\n\n\ndef main() -> None:\n    print(greet("world"))\n'
                           '\n\nif __name__ == "__main__":\n    main()\n'),
            "src/util.py": 'def greet(name: str) -> str:\n    return f"hello, {name}"\n',
            ".gitignore": "__pycache__/\n*.pyc\n",
        }
        for rel, text in files.items():
            with open(os.path.join(seed, rel), "w", encoding="utf-8") as f:
                f.write(text)
        hgit("init", "-q", "-b", "main", cwd=seed)
        hgit("add", "-A", cwd=seed)
        hgit("commit", "-q", "-m", "Initial commit", cwd=seed)
        self.bare = os.path.join(self.git_root, f"{REPO_NAME}.git")
        hgit("clone", "-q", "--bare", seed, self.bare)
        self.repo_files = len(hgit("ls-tree", "-r", "--name-only", "main", cwd=self.bare).split())

        port_file = os.path.join(self.tmp, "git-server.port")
        self.git_log = os.path.join(self.tmp, "logs", "git-requests.log")
        self.git = self.spawn("git-server", [sys.executable, os.path.abspath(__file__), "git-server",
                                             "--root", self.git_root, "--port-file", port_file,
                                             "--log", self.git_log])
        deadline = time.monotonic() + 10
        while not os.path.exists(port_file):
            if not self.git.alive() or time.monotonic() > deadline:
                raise SetupError(f"git server did not start; its log:\n{tail(self.git.log)}")
            time.sleep(0.02)
        with open(port_file, encoding="utf-8") as f:
            self.git_port = int(f.read().strip())
        self.git_host = f"127.0.0.1:{self.git_port}"
        self.repo_url = f"http://{self.git_host}/{REPO_NAME}.git"
        # Check clone and push over HTTP before specrun depends on them.
        probe = os.path.join(self.tmp, "probe")
        hgit("clone", "-q", self.repo_url, probe)
        hgit("push", "-q", "origin", "main:refs/heads/bench-probe", cwd=probe)
        hgit("push", "-q", "origin", ":refs/heads/bench-probe", cwd=probe)

    def create_resources(self, level):
        bucket = f"specrun-bench-c{level}-{os.getpid()}"
        queue = f"specrun-bench-c{level}-{os.getpid()}"
        env = aws_env(self.endpoint)
        env.update({"SPECRUN_BUCKET": bucket, "SPECRUN_QUEUE_NAME": queue})
        out = quiet(f"create-resources-c{level}", [self.args.create_resources], self.setup_dir, env=env)
        exports = dict(re.findall(r"^export (\w+)=(.*)$", out, re.M))
        if not exports.get("SPECRUN_QUEUE_URL"):
            raise SetupError(f"create-resources.sh printed no SPECRUN_QUEUE_URL:\n{out}")
        return bucket, exports["SPECRUN_QUEUE_URL"], exports.get("SPECRUN_DLQ_URL")

    def create_all_resources(self):
        with concurrent.futures.ThreadPoolExecutor(len(self.args.levels)) as pool:
            futures = {c: pool.submit(self.create_resources, c) for c in self.args.levels}
            return {c: f.result() for c, f in futures.items()}

    def specrun_env(self, name):
        env = aws_env(self.endpoint)
        for var in list(env):
            if var.startswith("SPECRUN_"):
                del env[var]
        state = os.path.join(self.tmp, "state", name)
        work = os.path.join(self.tmp, "work", name)
        os.makedirs(state, exist_ok=True)
        os.makedirs(work, exist_ok=True)
        env.update({
            "SPECRUN_DEFAULT_AGENT": "scripted",
            "SPECRUN_IMAGE": self.args.image,
            "SPECRUN_STATE_DIR": state,
            "SPECRUN_WORK_DIR": work,
            "SPECRUN_SHUTDOWN_GRACE_SECS": "5",
            "SPECRUN_LOG": "info",
            "NO_COLOR": "1",
        })
        return env

    def start_serve(self, name, bucket, queue_url, port):
        argv = [self.args.specrun, "serve", "--no-runner", "--listen", f"127.0.0.1:{port}",
                "--bucket", bucket, "--queue-url", queue_url, "--allow-repo-host", self.git_host]
        return self.spawn(name, argv, env=self.specrun_env(name))

    # --- 1. throughput ----------------------------------------------------------------

    def submit(self, port, branch):
        body = json.dumps({
            "repository": self.repo_url,
            "specify_text": FEATURE_TEXT,
            "agent": "scripted",
            "publish": "branch",
            "branch_name": branch,
        }).encode()
        t = time.perf_counter()
        status, doc, raw = http_call("POST", "127.0.0.1", port, "/runs", body=body)
        if status != 202 or not (doc or {}).get("run_id"):
            raise SetupError(f"POST /runs for {branch} answered {status}: {raw[:500]!r}")
        return {"branch": branch, "run_id": doc["run_id"], "submit_t": t}

    def poll_until_final(self, port, runs, deadline):
        pending = list(runs)
        while pending:
            for run in list(pending):
                try:
                    status, doc, _ = http_call("GET", "127.0.0.1", port, f"/runs/{run['run_id']}")
                except OSError as e:
                    run["poll_error"] = str(e)
                    continue
                if status == 200 and doc and doc.get("status") in FINAL:
                    run["final_t"] = time.perf_counter()
                    run["record"] = doc
                    pending.remove(run)
            if pending:
                if time.monotonic() > deadline:
                    for run in pending:
                        run["timed_out"] = True
                    return
                time.sleep(POLL_S)

    def level(self, level):
        n = self.args.runs
        log(f"concurrency {level}: runner and serve --no-runner on a fresh bucket and queue")
        bucket, queue_url, dlq_url = self.resources[level]
        runner = self.spawn(f"runner-c{level}", [
            self.args.specrun, "runner", "--bucket", bucket, "--queue-url", queue_url,
            "--concurrency", str(level), "--allow-repo-host", self.git_host,
        ], env=self.specrun_env(f"runner-c{level}"))
        port = free_port()
        serve = self.start_serve(f"serve-c{level}", bucket, queue_url, port)
        self.timed(f"processes_c{level}", runner.wait_for_line, "runner taking runs")
        self.timed(f"processes_c{level}", serve.wait_for_line, "serving POST /runs")

        timeout = max(600.0, 120.0 * n / level)
        result = {"concurrency": level, "bucket": bucket, "queue_url": queue_url,
                  "dlq_url": dlq_url, "loadavg_1m_before": loadavg(), "warmup": None, "runs": []}
        if not self.args.no_warmup:
            t0 = time.perf_counter()
            warm = [self.submit(port, f"bench-c{level}-warmup")]
            self.poll_until_final(port, warm, time.monotonic() + timeout)
            result["warmup"] = self.summarise(warm[0], t0)
            log(f"concurrency {level}: warm-up {result['warmup']['status'] or 'timed out'} "
                f"({time.perf_counter() - t0:.1f} s, not counted)")

        log(f"concurrency {level}: submitting {n} runs")
        runs = [self.submit(port, f"bench-c{level}-{i}") for i in range(1, n + 1)]
        first = runs[0]["submit_t"]
        submitted = time.perf_counter()
        self.poll_until_final(port, runs, time.monotonic() + timeout)
        done = [r for r in runs if "final_t" in r]
        last = max((r["final_t"] for r in done), default=None)
        result["runs"] = [self.summarise(r, first) for r in runs]
        result["submit_all_ms"] = (submitted - first) * 1000.0
        result["wall_s"] = (last - first) if last else None
        ok = [r for r in result["runs"] if r["ok"]]
        result["runs_succeeded"] = len(ok)
        result["runs_per_minute"] = (len(ok) / result["wall_s"] * 60.0) if result["wall_s"] and ok else None
        created = [parse_ts(r["record_times"]["created_at"]) for r in result["runs"]]
        finished = [parse_ts(r["record_times"]["finished_at"]) for r in result["runs"]]
        if all(created) and all(finished):
            span = (max(finished) - min(created)).total_seconds()
            result["record_span_s"] = span
            result["runs_per_minute_by_record"] = len(ok) / span * 60.0 if span > 0 and ok else None
        result["latency_ms"] = stats([r["latency_ms"] for r in result["runs"]])
        result["queue_wait_ms"] = stats([r["queue_wait_ms"] for r in result["runs"]])
        result["run_ms"] = stats([r["run_ms"] for r in result["runs"]])
        result["runners_seen"] = sorted({r["runner_id"] for r in result["runs"] if r["runner_id"]})
        result["max_in_flight"] = max_overlap(result["runs"])
        result["loadavg_1m_after"] = loadavg()
        log(f"concurrency {level}: {len(ok)}/{n} succeeded in "
            f"{result['wall_s'] or float('nan'):.1f} s")
        warm_ok = result["warmup"] is None or result["warmup"]["ok"]
        result["runner_log_tail"] = tail(runner.log, 30) if len(ok) < n or not warm_ok else None
        serve.stop()
        runner.stop()
        self.last_bucket, self.last_queue = bucket, queue_url
        self.sample_run_id = next((r["run_id"] for r in result["runs"] if r["run_id"]), None)
        return result

    def summarise(self, run, origin):
        rec = run.get("record") or {}
        times = {k: rec.get(k) for k in ("created_at", "started_at", "finished_at")}
        c, s, f = (parse_ts(times[k]) for k in ("created_at", "started_at", "finished_at"))
        branches = set(hgit("for-each-ref", "--format=%(refname:short)", "refs/heads/",
                            cwd=self.bare).split())
        pushed = run["branch"] in branches
        status = rec.get("status")
        return {
            "branch": run["branch"],
            "run_id": run["run_id"],
            "status": status,
            "ok": status == "succeeded" and pushed,
            "branch_pushed": pushed,
            "timed_out": bool(run.get("timed_out")),
            "submitted_at_ms": (run["submit_t"] - origin) * 1000.0,
            "final_seen_at_ms": (run["final_t"] - origin) * 1000.0 if "final_t" in run else None,
            "latency_ms": (run["final_t"] - run["submit_t"]) * 1000.0 if "final_t" in run else None,
            "queue_wait_ms": (s - c).total_seconds() * 1000.0 if c and s else None,
            "run_ms": (f - s).total_seconds() * 1000.0 if s and f else None,
            "record_times": times,
            "runner_id": rec.get("runner_id"),
            "attempt": rec.get("attempt"),
            "error": rec.get("error"),
        }

    # --- 2. status API start ----------------------------------------------------------

    def starts(self):
        results = []
        path = f"/runs/{self.sample_run_id}"
        for k in range(1, self.args.starts + 1):
            port = free_port()
            child = self.start_serve(f"serve-start-{k}", self.last_bucket, self.last_queue, port)
            spawned = child.spawned
            first_connect = None
            answer = None
            polls = 0
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                polls += 1
                try:
                    status, doc, _ = http_call("GET", "127.0.0.1", port, path, timeout=5)
                    now = time.perf_counter()
                    if first_connect is None:
                        first_connect = now
                    if status == 200 and doc and doc.get("run_id") == self.sample_run_id:
                        answer = now
                        break
                except OSError:
                    if not child.alive():
                        break
                time.sleep(START_POLL_S)
            warm = []
            if answer is not None:
                for _ in range(20):
                    t0 = time.perf_counter()
                    status, _, _ = http_call("GET", "127.0.0.1", port, path)
                    if status == 200:
                        warm.append((time.perf_counter() - t0) * 1000.0)
            child.stop()
            results.append({
                "attempt": k,
                "first_answer_ms": (answer - spawned) * 1000.0 if answer else None,
                "first_connect_ms": (first_connect - spawned) * 1000.0 if first_connect else None,
                "polls": polls,
                "warm_get_ms_median": statistics.median(warm) if warm else None,
                "log_tail": None if answer else tail(child.log, 20),
            })
        return results

    def lambda_starts(self, binary):
        """The real status Lambda binary, started --starts times against a loopback Runtime
        API: process start -> its answer to the first event. Two kinds of first event: one
        the handler refuses without reading the store (process start and the handler alone),
        and GET /runs/<id> (plus one S3 GET to moto). A second event per process gives the
        warm answer time."""
        results = []
        first_events = {
            "no_store": function_url_event("GET", "/runs", "limit=bad"),
            "get_run": function_url_event("GET", f"/runs/{self.sample_run_id}"),
        }
        for kind, first in first_events.items():
            for k in range(1, self.args.starts + 1):
                api = RuntimeApi([first, function_url_event("GET", f"/runs/{self.sample_run_id}")])
                env = aws_env(self.endpoint)
                env.update(LAMBDA_ENV)
                env.update({"AWS_LAMBDA_RUNTIME_API": api.address, "SPECRUN_BUCKET": self.last_bucket})
                child = self.spawn(f"lambda-status-{kind}-{k}", [binary], env=env)
                answers = api.wait_answers(2, timeout=30)
                child.stop()
                api.close()
                first_ok = bool(answers) and answers[0]["kind"] == "response"
                expected = 400 if kind == "no_store" else 200
                code = (answers[0]["doc"] or {}).get("statusCode") if answers else None
                results.append({
                    "kind": kind,
                    "attempt": k,
                    "first_answer_ms": (answers[0]["at"] - child.spawned) * 1000.0 if first_ok else None,
                    "first_status": code,
                    "expected_status": expected,
                    "second_answer_gap_ms": (answers[1]["at"] - answers[0]["at"]) * 1000.0
                    if len(answers) > 1 else None,
                    "log_tail": None if first_ok and code == expected else tail(child.log, 20),
                })
        return results

    # --- 3. GET /runs with many runs in the bucket ---------------------------------------

    def put_object(self, key, body):
        """A plain PUT to moto (path style; moto does not check signatures)."""
        u = urllib.parse.urlparse(self.endpoint)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        try:
            conn.request("PUT", f"/{self.last_bucket}/{key}", body=body,
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise SetupError(f"PUT {key} to moto answered {resp.status}")
        finally:
            conn.close()

    def add_old_runs(self, count, created_ms_from, name):
        """`count` runs older than every real one, created from `created_ms_from` on: a copy
        of the sample run.json each, under its own id, and its index key (the layout of
        keys::run_index)."""
        status, sample, _ = http_call("GET", "127.0.0.1", self.listing_port, f"/runs/{self.sample_run_id}")
        if status != 200 or not sample:
            raise SetupError(f"GET /runs/{self.sample_run_id} answered {status}")
        sample.pop("artifact_urls", None)

        def one(i):
            run_id = f"00000000-bench-{name}-{i:06d}"
            doc = dict(sample, run_id=run_id)
            created_ms = created_ms_from + i
            self.put_object(f"runs/{run_id}/run.json", json.dumps(doc).encode())
            self.put_object(f"index/runs/{9_999_999_999_999 - created_ms:013d}-{run_id}", b"")

        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(one, range(count)))

    def list_latency(self, samples=20):
        times = []
        for _ in range(samples):
            t0 = time.perf_counter()
            status, doc, _ = http_call("GET", "127.0.0.1", self.listing_port, "/runs?limit=20")
            if status != 200 or not isinstance((doc or {}).get("runs"), list):
                raise SetupError(f"GET /runs answered {status}")
            times.append((time.perf_counter() - t0) * 1000.0)
        return stats(times)

    def listing(self):
        self.listing_port = free_port()
        child = self.start_serve("serve-listing", self.last_bucket, self.last_queue, self.listing_port)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if http_call("GET", "127.0.0.1", self.listing_port, f"/runs/{self.sample_run_id}")[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        # A full page first, so that both timings load the same 20 run.json objects and
        # differ only in how many runs the bucket holds beyond them.
        self.add_old_runs(20, 1_700_000_000_000, "page")
        before = self.list_latency()
        t0 = time.perf_counter()
        self.add_old_runs(self.args.index_runs, 1_600_000_000_000, "old")
        added_s = time.perf_counter() - t0
        after = self.list_latency()
        child.stop()
        return {"index_runs_added": self.args.index_runs, "adding_s": added_s,
                "get_runs_ms_before": before, "get_runs_ms_after": after}

    # --- driver -----------------------------------------------------------------------

    def run(self):
        os.makedirs(os.path.join(self.tmp, "logs"), exist_ok=True)
        self.timed("moto", self.start_moto)
        self.timed("git_server", self.start_git)
        log(f"moto at {self.endpoint}, git at {self.repo_url} ({self.repo_files} files)")
        # Every level's bucket and queues up front, in parallel (the AWS CLI is slow to start).
        log(f"creating {len(self.args.levels)} buckets and queue pairs with localstack/create-resources.sh")
        self.resources = self.timed("resources", self.create_all_resources)
        levels = [self.level(c) for c in self.args.levels]
        start_results = []
        if self.sample_run_id:
            log(f"status API start: {self.args.starts} x serve --no-runner, "
                f"spawn -> first 200 for GET /runs/<id>")
            start_results = self.starts()
            status_bin = (self.args.lambda_sizes.get("status") or {}).get("path")
            if status_bin:
                log(f"status Lambda start: {self.args.starts} x 2 starts of {status_bin} "
                    "against a loopback Runtime API")
                self.lambda_start_results = self.lambda_starts(status_bin)
            if self.args.index_runs > 0:
                log(f"GET /runs?limit=20 before and after adding {self.args.index_runs} older runs")
                self.listing_result = self.listing()
        return levels, start_results


def loadavg():
    """The 1-minute load average (other work on the host skews the figures)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def max_overlap(runs):
    """Most runs running at once, from run.json's started_at/finished_at."""
    events = []
    for r in runs:
        s, f = parse_ts(r["record_times"]["started_at"]), parse_ts(r["record_times"]["finished_at"])
        if s and f:
            events += [(s, 1), (f, -1)]
    best = cur = 0
    for _, d in sorted(events, key=lambda e: (e[0], e[1])):
        cur += d
        best = max(best, cur)
    return best


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------


def fmt(v, unit_s=False):
    if v is None:
        return "-"
    if unit_s:
        return f"{v / 1000.0:.1f}"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def mib(n):
    return f"{n / (1024 * 1024):.1f} MiB" if n is not None else "-"


def report(args, levels, starts, setup_s, bench, elapsed_s):
    out = sys.stdout
    total = sum(len(lv["runs"]) for lv in levels)
    good = sum(lv["runs_succeeded"] for lv in levels)
    print(f"specrun serverless benchmark: {args.runs} runs per level, scripted agent, "
          f"publish branch, image {args.image} (id {args.image_id.split(':', 1)[-1][:12]})", file=out)
    print(f"{args.specrun_version}; moto (S3+SQS) {args.moto_version}; git smart HTTP on loopback; "
          f"repo with {bench.repo_files} files; {os.cpu_count()} CPUs; "
          f"{'1 warm-up run per level not counted' if not args.no_warmup else 'no warm-up'}; "
          f"{good}/{total} runs succeeded", file=out)
    print(file=out)
    print("1. runner throughput: N runs submitted at once (POST /runs), polled every "
          f"{POLL_S * 1000:.0f} ms (GET /runs/{{id}})", file=out)
    width = 34
    head = f"{'':<{width}}" + "".join(f"{'--concurrency ' + str(lv['concurrency']):>18}" for lv in levels)
    print(head, file=out)

    def line(label, cells):
        print(f"{label:<{width}}" + "".join(f"{c:>18}" for c in cells), file=out)

    line("runs succeeded", [f"{lv['runs_succeeded']}/{len(lv['runs'])}" for lv in levels])
    line("wall, 1st submit -> last final (s)",
         [fmt(lv["wall_s"] * 1000.0, True) if lv["wall_s"] else "-" for lv in levels])
    line("runs/minute", [f"{lv['runs_per_minute']:.2f}" if lv["runs_per_minute"] else "-" for lv in levels])
    line("most runs in flight (run.json)", [str(lv["max_in_flight"]) for lv in levels])
    line("host load avg 1 min, before/after",
         [f"{lv['loadavg_1m_before']:.1f} / {lv['loadavg_1m_after']:.1f}"
          if lv["loadavg_1m_before"] is not None else "-" for lv in levels])
    for key, label in (("latency_ms", "latency submit -> final"), ("queue_wait_ms", "  queued (run.json)"),
                       ("run_ms", "  running (run.json)")):
        for stat in ("mean", "median", "max"):
            name = {"median": "p50"}.get(stat, stat)
            line(f"{label if stat == 'mean' else '':<25}{name:>4} (s)",
                 [fmt(lv[key][stat], True) if lv[key] else "-" for lv in levels])
    print("(latency: from just before POST /runs to the first poll answering a final status;", file=out)
    print(" queued = started_at - created_at, running = finished_at - started_at, from each run.json)",
          file=out)
    print(file=out)

    firsts = [s["first_answer_ms"] for s in starts]
    ok_firsts = [v for v in firsts if v is not None]
    print(f"2. status API start: `specrun serve --no-runner` on S3, spawn -> first 200 to GET /runs/<id>, "
          f"polled every {START_POLL_S * 1000:.0f} ms (x{len(starts)})", file=out)
    print(f"{'':<26}{'min':>9}{'median':>9}{'max':>9}  (ms)", file=out)
    if ok_firsts:
        print(f"{'first answer':<26}{fmt(min(ok_firsts)):>9}{fmt(statistics.median(ok_firsts)):>9}"
              f"{fmt(max(ok_firsts)):>9}  each: {', '.join(fmt(v) for v in firsts)}", file=out)
        warm = [s["warm_get_ms_median"] for s in starts if s["warm_get_ms_median"] is not None]
        if warm:
            print(f"{'warm GET (after start)':<26}{fmt(min(warm)):>9}{fmt(statistics.median(warm)):>9}"
                  f"{fmt(max(warm)):>9}  median of 20 GETs per start", file=out)
    else:
        print("  no start answered", file=out)
    lambda_starts = getattr(bench, "lambda_start_results", None) or []
    if lambda_starts:
        print(file=out)
        print(f"2b. status Lambda start: the release `status` binary against a loopback Lambda Runtime API, "
              f"spawn -> its answer to the first event (x{args.starts} each)", file=out)
        print(f"{'':<26}{'min':>9}{'median':>9}{'max':>9}  (ms)", file=out)
        for kind, label in (("no_store", "first answer, no S3 call"), ("get_run", "first GET /runs/<id>")):
            vals = [s["first_answer_ms"] for s in lambda_starts
                    if s["kind"] == kind and s["first_answer_ms"] is not None
                    and s["first_status"] == s["expected_status"]]
            if vals:
                print(f"{label:<26}{fmt(min(vals)):>9}{fmt(statistics.median(vals)):>9}{fmt(max(vals)):>9}",
                      file=out)
        gaps = [s["second_answer_gap_ms"] for s in lambda_starts if s["second_answer_gap_ms"] is not None]
        if gaps:
            print(f"{'warm GET /runs/<id>':<26}{fmt(min(gaps)):>9}{fmt(statistics.median(gaps)):>9}"
                  f"{fmt(max(gaps)):>9}  the second event of each process", file=out)
    listing = getattr(bench, "listing_result", None)
    if listing:
        b, a = listing["get_runs_ms_before"], listing["get_runs_ms_after"]
        print(file=out)
        print(f"3. GET /runs?limit=20 (median of 20): {fmt(b['median'])} ms, then "
              f"{fmt(a['median'])} ms with {listing['index_runs_added']} more runs in the bucket "
              f"(added in {listing['adding_s']:.0f} s)", file=out)
    sizes = args.lambda_sizes
    if sizes:
        parts = []
        for name in ("submit", "status"):
            e = sizes.get(name)
            if e:
                extra = f" ({mib(e['stripped_bytes'])} stripped)" if e["stripped_bytes"] else ""
                parts.append(f"target/release/{name} {mib(e['bytes'])}{extra}")
        print("Lambda binaries, release profile: " + ", ".join(parts), file=out)
    else:
        print("Lambda binaries: `cargo build --release -p specrun-submit -p specrun-status` failed; sizes not measured",
              file=out)
    print("Note: this is the process start of the same handlers on this host; a real Lambda cold start also "
          "includes the Lambda runtime's init (sandbox, bootstrap download), not measured here.", file=out)

    if setup_s:
        print(file=out)
        print("set-up: " + ", ".join(f"{k} {v:.1f} s" for k, v in setup_s.items()), file=out)

    failed = [(lv["concurrency"], r) for lv in levels
              for r in ([lv["warmup"]] if lv["warmup"] else []) + lv["runs"] if not r["ok"]]
    failed_starts = [s for s in starts if s["first_answer_ms"] is None] + [
        s for s in (getattr(bench, "lambda_start_results", None) or [])
        if s["first_answer_ms"] is None or s["first_status"] != s["expected_status"]]
    if failed or failed_starts:
        print(file=out)
    if failed:
        print(f"FAILED: {len(failed)} run(s) did not succeed:", file=out)
        for level, r in failed:
            why = "timed out" if r["timed_out"] else f"status {r['status']}"
            if r["status"] == "succeeded" and not r["branch_pushed"]:
                why = "succeeded but its branch is not on the git server"
            print(f"  concurrency {level}, {r['branch']} (run {r['run_id']}): {why}", file=out)
            err = r["error"] or {}
            if err:
                print(f"    error {err.get('code', '?')}: {err.get('message', '')}", file=out)
                for l in (err.get("log_excerpt") or "").strip().splitlines()[-10:]:
                    print(f"    | {l}", file=out)
        for lv in levels:
            if lv.get("runner_log_tail"):
                print(f"  runner (concurrency {lv['concurrency']}) log tail:", file=out)
                for l in lv["runner_log_tail"].splitlines()[-15:]:
                    print(f"    | {l}", file=out)
    for s in failed_starts:
        print(f"FAILED: start {s['attempt']} never answered; log tail:", file=out)
        for l in (s["log_tail"] or "").splitlines()[-10:]:
            print(f"    | {l}", file=out)

    document = {
        "schema_version": 1,
        "generated_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "specrun_version": args.specrun_version,
        "moto_version": args.moto_version,
        "image": {"tag": args.image, "id": args.image_id},
        "agent": "scripted",
        "publish": "branch",
        "runs_per_level": args.runs,
        "warmup_per_level": not args.no_warmup,
        "cpus": os.cpu_count(),
        "repo_files": bench.repo_files,
        "units": {"durations": "ms unless the key ends in _s", "sizes": "bytes"},
        "poll_interval_ms": {"runs": POLL_S * 1000.0, "start": START_POLL_S * 1000.0},
        "throughput": levels,
        "status_api_start": {
            "what": "spawn of `specrun serve --no-runner` (S3 mode) -> first 200 to GET /runs/<id>",
            "first_answer_ms": stats(ok_firsts),
            "attempts": starts,
            "note": "a real Lambda cold start also includes the Lambda runtime's init; not measured here",
        },
        "status_lambda_start": {
            "what": "spawn of the release `status` binary with a loopback Lambda Runtime API -> its answer "
                    "to the first event (no_store: a request refused before any S3 call; get_run: GET /runs/<id>)",
            "attempts": getattr(bench, "lambda_start_results", None),
        },
        "listing": getattr(bench, "listing_result", None),
        "lambda_binaries": sizes or None,
        "setup_s": setup_s,
        "bench_elapsed_s_before_report": elapsed_s,
        "runs_succeeded": good,
        "runs_total": total,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".tmp", "w", encoding="utf-8") as f:
        json.dump(document, f, indent=2)
        f.write("\n")
    os.replace(args.out + ".tmp", args.out)
    return 1 if (failed or failed_starts or good < total or total == 0) else 0


def run_main(args):
    args.levels = [int(x) for x in args.levels.split(",") if x.strip()]
    args.specrun = os.path.abspath(args.specrun)
    args.create_resources = os.path.abspath(args.create_resources)
    sizes = {}
    for item in args.lambda_binary or []:
        name, _, path = item.partition("=")
        try:
            entry = {"path": path, "bytes": os.path.getsize(path), "stripped_bytes": None}
        except OSError:
            continue
        stripped = os.path.join(args.tmp, f"{name}.stripped")
        try:
            subprocess.run(["strip", "-o", stripped, path], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            entry["stripped_bytes"] = os.path.getsize(stripped)
        except (OSError, subprocess.CalledProcessError):
            pass
        sizes[name] = entry
    args.lambda_sizes = sizes
    setup_s = {}
    if args.setup_durations and os.path.exists(args.setup_durations):
        with open(args.setup_durations, encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2:
                    setup_s[parts[0]] = float(parts[1])

    bench = Bench(args)

    def on_term(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        levels, starts = bench.run()
    except SetupError as e:
        print(f"bench-serverless: ERROR: {e}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:
        print(f"bench-serverless: ERROR: {' '.join(map(str, e.cmd))} failed (exit {e.returncode}):\n"
              f"{(e.stderr or '')}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"bench-serverless: ERROR: {e}", file=sys.stderr)
        return 2
    finally:
        bench.stop_all()
    for k, v in bench.setup_s.items():
        setup_s[k] = v
    elapsed = (time.time() * 1e6 - args.bench_start_us) / 1e6 if args.bench_start_us else None
    return report(args, levels, starts, setup_s, bench, elapsed)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("git-server")
    g.add_argument("--root", required=True)
    g.add_argument("--port-file", required=True)
    g.add_argument("--log")
    r = sub.add_parser("run")
    r.add_argument("--tmp", required=True)
    r.add_argument("--specrun", required=True)
    r.add_argument("--specrun-version", default="unknown")
    r.add_argument("--moto-version", default="unknown")
    r.add_argument("--create-resources", required=True)
    r.add_argument("--runs", type=int, default=8)
    r.add_argument("--levels", default="1,4")
    r.add_argument("--starts", type=int, default=5)
    r.add_argument("--index-runs", type=int, default=10000)
    r.add_argument("--no-warmup", action="store_true")
    r.add_argument("--image", default="specrun-job:latest")
    r.add_argument("--image-id", default="")
    r.add_argument("--lambda-binary", action="append", help="NAME=PATH")
    r.add_argument("--setup-durations")
    r.add_argument("--bench-start-us", type=int)
    r.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.cmd == "git-server":
        git_server_main(args)
        return 0
    return run_main(args)


if __name__ == "__main__":
    sys.exit(main())
