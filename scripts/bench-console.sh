#!/usr/bin/env bash
# The web console's page latency against `specrun serve` (embedded store, no runner) with
# RUNS queued runs in it: time to first byte and total of `/` (the app page, with a
# session cookie), of the console's scripts and sheet, of GET /runs (the JSON the list
# draws from, bearer token), and the full load of the run list and of a run page in
# headless Chromium (navigation to the drawn list or run status). Medians and p95 of N
# requests each, as one JSON object.
#
# Usage: scripts/bench-console.sh [N] [RUNS]   (defaults 50 and 40; SPECRUN_BIN picks the
# binary, else a --release build)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
N="${1:-50}"
RUNS="${2:-40}"
if [ -z "${SPECRUN_BIN:-}" ]; then
    cargo build --quiet --release -p specrun-runner --bin specrun
    SPECRUN_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/specrun"
fi
[ -f tests/browser/node_modules/playwright-core/package.json ] || scripts/setup.sh --tests

work="$(mktemp -d)"
token="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
cleanup() { [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
SPECRUN_CONSOLE_TOKEN="$token" SPECRUN_STATE_DIR="$work/state" \
    "$SPECRUN_BIN" serve --listen 127.0.0.1:0 --no-runner --allow-repo-host bench.invalid \
    2>"$work/serve.log" &
pid=$!
for _ in $(seq 100); do grep -q "serving POST" "$work/serve.log" 2>/dev/null && break; sleep 0.1; done
base="$(grep -o 'http://[0-9.:]*' "$work/serve.log" | head -n 1)"
[ -n "$base" ] || { cat "$work/serve.log" >&2; exit 1; }

auth=(-H "Authorization: Bearer $token")
run_id=""
for i in $(seq "$RUNS"); do
    run_id="$(curl -sf "${auth[@]}" -H 'Content-Type: application/json' \
        -d "{\"repository\":\"https://bench.invalid/o/r$i\",\"specify_text\":\"bench $i\",\"publish\":\"none\"}" \
        "$base/runs" | python3 -c 'import json,sys; print(json.load(sys.stdin)["run_id"])')"
done
cookie="$(curl -s -o /dev/null -D - --data-urlencode "token=$token" "$base/console/login" \
    | tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: \([^;]*\).*/\1/p')"

# Medians and p95 of curl's time_starttransfer and time_total, in ms.
measure() {
    local name=$1; shift
    for _ in $(seq "$N"); do curl -s -o /dev/null -w '%{time_starttransfer} %{time_total}\n' "$@"; done |
        python3 -c '
import json, statistics, sys
rows = [tuple(float(x) * 1000 for x in line.split()) for line in sys.stdin]
def q(values, p): values = sorted(values); return round(values[min(len(values) - 1, int(p * len(values)))], 2)
print(json.dumps({"'"$name"'": {"ttfb_ms_median": round(statistics.median(r[0] for r in rows), 2), "total_ms_median": round(statistics.median(r[1] for r in rows), 2), "total_ms_p95": q([r[1] for r in rows], 0.95)}}))'
}
{
    measure app_page -H "Cookie: $cookie" "$base/"
    measure app_js -H "Cookie: $cookie" "$base/console/assets/run.js"
    measure runs_json_25 "${auth[@]}" "$base/runs?limit=25"
    measure run_json "${auth[@]}" "$base/runs/$run_id"
    (cd tests/browser && CONSOLE_URL="$base" CONSOLE_TOKEN="$token" RUN_ID="$run_id" N="$N" node bench.mjs)
} > "$work/results"
python3 - "$work/results" "$N" "$RUNS" "$SPECRUN_BIN" <<'PY'
import json, sys
merged = {"requests_each": int(sys.argv[2]), "runs_stored": int(sys.argv[3]), "binary": sys.argv[4]}
for line in open(sys.argv[1]):
    merged.update(json.loads(line))
print(json.dumps(merged, indent=2))
PY
