#!/usr/bin/env bash
# Benchmark specrun's serverless path on loopback: moto (S3 + SQS), git smart HTTP,
# `specrun runner` and `specrun serve`, with the scripted agent.
#
#   scripts/bench-serverless.sh [--runs N] [--starts N] [--index-runs N] [--no-warmup] [--keep]
#
#   --runs N      counted runs per concurrency level (default 8)
#   --starts N    status API starts measured (default 5)
#   --index-runs N  older runs added to the bucket before GET /runs is timed again
#                 (default 10000; 0 skips that measurement)
#   --no-warmup   count from the first run (default: one warm-up run per level, not counted)
#   --keep        keep the temporary directory (logs, repos, process state)
#
# Set-up (idempotent, quiet unless it fails): scripts/ensure-docker.sh,
# scripts/build-image.sh, `cargo build --release -p specrun-runner`, and
# `cargo build --release -p specrun-submit -p specrun-status` (the Lambda binaries;
# only their sizes are reported, so a failure there is noted, not fatal). Then
# scripts/bench_serverless.py starts its own moto_server and a git smart-HTTP
# server (`git http-backend` behind a stdlib CGI bridge) on free 127.0.0.1 ports
# and measures:
#   1. runner throughput, `specrun runner --concurrency 1` and `--concurrency 4`:
#      each level gets a fresh bucket, queue and DLQ (localstack/create-resources.sh),
#      one runner and one `specrun serve --no-runner` for submissions; N runs are
#      POSTed to /runs at once (branches bench-c<C>-<i>) and polled with
#      GET /runs/{id} until final: runs/minute, per-run latency submit -> final
#      (mean, p50, max), and that every run succeeded and pushed its branch;
#   2. the status API's start: `specrun serve --no-runner` (S3 mode) spawned
#      --starts times, from spawn to its first 200 for GET /runs/<id> (polled
#      every 5 ms): min / median / max; plus the release sizes of
#      target/release/submit and target/release/status.
# Every process the benchmark starts is stopped by pid at the end.
#
# Prints a table and writes JSON to target/bench/serverless.json.
# Exit status: 0 when every run succeeded, 1 when any did not (each failure is
# printed), 2 on a usage error or when the set-up failed.
#
# Environment: SPECRUN_IMAGE (default specrun-job:latest), CARGO (default cargo).

# cleanup is called indirectly (trap).
# shellcheck disable=SC2317
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS=8
STARTS=5
INDEX_RUNS=10000
WARMUP_FLAG=""
KEEP=0
IMAGE="${SPECRUN_IMAGE:-specrun-job:latest}"
CARGO="${CARGO:-cargo}"

usage() {
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --runs) [ $# -ge 2 ] || { usage >&2; exit 2; }; RUNS="$2"; shift 2 ;;
        --runs=*) RUNS="${1#*=}"; shift ;;
        --starts) [ $# -ge 2 ] || { usage >&2; exit 2; }; STARTS="$2"; shift 2 ;;
        --starts=*) STARTS="${1#*=}"; shift ;;
        --index-runs) [ $# -ge 2 ] || { usage >&2; exit 2; }; INDEX_RUNS="$2"; shift 2 ;;
        --index-runs=*) INDEX_RUNS="${1#*=}"; shift ;;
        --no-warmup) WARMUP_FLAG="--no-warmup"; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench-serverless: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
for pair in "runs:$RUNS" "starts:$STARTS"; do
    name="${pair%%:*}" value="${pair#*:}"
    case "$value" in
        ''|*[!0-9]*) echo "bench-serverless: --$name needs a positive integer, got '$value'" >&2; exit 2 ;;
    esac
    [ "$value" -ge 1 ] || { echo "bench-serverless: --$name must be at least 1" >&2; exit 2; }
done

die() { echo "bench-serverless: ERROR: $*" >&2; exit 2; }

PY_PID=""
# The measuring helper stops every process it started; make sure it ends first.
bench_before_cleanup() {
    if [ -n "$PY_PID" ] && kill -0 "$PY_PID" 2>/dev/null; then
        kill -TERM "$PY_PID" 2>/dev/null || true
        wait "$PY_PID" 2>/dev/null || true
    fi
}
BENCH_NAME=bench-serverless
BENCH_SETUP_EXIT=2
# shellcheck source=scripts/lib/bench-common.sh
. "$ROOT/scripts/lib/bench-common.sh"

# --- set-up -------------------------------------------------------------------
cd "$ROOT"
log "set-up (temp dir $TMP)"
for tool in python3 git moto_server aws; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is needed (moto_server: python3 -m pip install 'moto[server]'; aws: the AWS CLI)"
done
quiet_step ensure-docker "$ROOT/scripts/ensure-docker.sh"
quiet_step build-image "$ROOT/scripts/build-image.sh" --tag "$IMAGE"
quiet_step cargo-build "$CARGO" build --release -p specrun-runner

SPECRUN="$TARGET_DIR/release/specrun"
[ -x "$SPECRUN" ] || die "release binary not found at $SPECRUN"
SPECRUN_VERSION="$("$SPECRUN" --version 2>/dev/null || echo unknown)"
IMAGE_ID="$(docker image inspect -f '{{ .Id }}' "$IMAGE")" || die "image $IMAGE not found after build-image.sh"
MOTO_VERSION="$(python3 -c 'import moto; print(moto.__version__)' 2>/dev/null || echo unknown)"

# The Lambda binaries: sizes only, so a failed build is reported rather than fatal.
LAMBDA_ARGS=()
t0="$(now_us)"
if "$CARGO" build --release -p specrun-submit -p specrun-status >"$TMP/setup/cargo-build-lambda.log" 2>&1 </dev/null; then
    echo "cargo-build-lambda $(elapsed_s "$t0")" >>"$TMP/setup/durations.txt"
    log "cargo-build-lambda ok ($(elapsed_s "$t0") s)"
    for bin in submit status; do
        [ -f "$TARGET_DIR/release/$bin" ] && LAMBDA_ARGS+=(--lambda-binary "$bin=$TARGET_DIR/release/$bin")
    done
else
    log "cargo build --release -p specrun-submit -p specrun-status failed; Lambda binary sizes not reported:"
    tail -n 20 "$TMP/setup/cargo-build-lambda.log" | sed 's/^/    | /' >&2
fi

# --- measure and report -------------------------------------------------------
# In the background so that INT/TERM reach the traps while it runs.
rc=0
python3 "$ROOT/scripts/bench_serverless.py" run \
    --tmp "$TMP" --specrun "$SPECRUN" --specrun-version "$SPECRUN_VERSION" \
    --moto-version "$MOTO_VERSION" --create-resources "$ROOT/localstack/create-resources.sh" \
    --runs "$RUNS" --starts "$STARTS" --index-runs "$INDEX_RUNS" ${WARMUP_FLAG:+"$WARMUP_FLAG"} --image "$IMAGE" --image-id "$IMAGE_ID" \
    "${LAMBDA_ARGS[@]}" --setup-durations "$TMP/setup/durations.txt" \
    --bench-start-us "$BENCH_START_US" --out "$TARGET_DIR/bench/serverless.json" </dev/null &
PY_PID=$!
wait "$PY_PID" || rc=$?
PY_PID=""

if [ "$rc" -le 1 ]; then
    echo "bench-serverless took $(elapsed_s "$BENCH_START_US") s in all; JSON: $TARGET_DIR/bench/serverless.json"
fi
exit "$rc"
