#!/usr/bin/env bash
# Logs that stream: the tail latency (from the agent printing a line in the job to the
# line being readable through GET /runs/{id}/logs/{phase}, p50/p95/max) and the store
# requests a run's runner makes with streaming off and at each flush interval (PUT, GET,
# LIST, and the PUTs streaming adds). Real engine, job image and embedded store; the
# agent prints a timestamped line every 250 ms in specify; a reader polls the status
# API's handler every 100 ms. See tests/tests/bench_logs.rs.
#
# Usage: scripts/bench-logs.sh [--ticks N] [--flush-ms LIST]
#   --ticks N         lines the agent prints (default 60: 15 s of output)
#   --flush-ms LIST   flush intervals to compare, comma-separated, 0 = off (default 0,2000,500)
#
# Prints a table; writes JSON to target/bench/logs.json (BENCH_LOGS_OUT overrides).
# Needs Docker and the job image (scripts/setup.sh); SPECRUN_IMAGE picks the image.
set -euo pipefail
cd "$(dirname "$0")/.."
ticks=60
flush=0,2000,500
while [ $# -gt 0 ]; do
    case "$1" in
        --ticks) ticks="${2:?--ticks needs a number}"; shift 2 ;;
        --flush-ms) flush="${2:?--flush-ms needs a list}"; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-logs: unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$ticks" in ''|*[!0-9]*) echo "bench-logs: --ticks needs a whole number" >&2; exit 2 ;; esac
export BENCH_LOGS_TICKS="$ticks" BENCH_LOGS_FLUSH_MS="$flush"
target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
export BENCH_LOGS_OUT="${BENCH_LOGS_OUT:-$target/bench/logs.json}"
case "$BENCH_LOGS_OUT" in /*) ;; *) BENCH_LOGS_OUT="$PWD/$BENCH_LOGS_OUT" ;; esac
# A debug build, as the tests: the latency is the flush interval's and the reader's poll,
# not the runner's CPU time.
exec cargo test --quiet -p specrun-tests --test bench_logs -- --ignored --nocapture
