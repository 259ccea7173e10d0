#!/usr/bin/env bash
# Benchmark `specrun run` end to end with the scripted agent.
#
#   scripts/bench.sh [--runs N] [--concurrency C] [--batch B] [--noisy-mib M] [--keep]
#
#   --runs N          counted runs (default 5), after one warm-up run that is not counted
#   --concurrency C   then C runs started at once (separate `specrun run` processes on one
#                     engine): the time until the last ends, as a ratio to one run's median
#   --batch B         then B runs in flight at once in ONE runner process (`specrun batch`
#                     over B copies of the repository, at most B at once): its wall time
#                     and peak RSS (with --noisy-mib, each of the B agents is the noisy one)
#   --noisy-mib M     then one run whose agent prints M MiB of output in the specify phase
#                     before writing the spec: the runner's peak RSS with that much output
#                     (logs are streamed and capped, so it should not grow with M)
#   --keep            keep the temporary directory (repo, run.json files, logs)
#
# Set-up (idempotent, quiet unless it fails): scripts/ensure-docker.sh,
# scripts/build-image.sh, `cargo build --release -p specrun-runner`, and
# /usr/bin/time (Debian package `time`) when missing. A small bare git repo is
# made in a temp dir; every run pushes its own branch (bench-1 .. bench-N) to
# it with `--publish branch`. Each run is measured with /usr/bin/time (peak RSS
# of the runner, wall seconds) and its run.json (phase durations, in-run total).
# The floor is measured in the same invocation, N times each: a bare
# `docker run --rm --network none IMAGE true`, a `git clone` of the repo and a
# `git push` of a new branch with one small commit.
#
# The report gives the floor of one run (the three floor medians added), the ratio of
# the run wall's median to it, the host's busy CPU time per run (one at a time, and at
# --concurrency) and per floor container (all processes, from /proc/stat), each phase's share of the run wall, and the requests one
# run made of the state store and of the Docker API, by kind (`specrun run --counts-file`).
#
# Prints a table and writes the same data as JSON to target/bench/latest.json.
# Exit status: 0 when every run succeeded, 1 when any did not (each failure is
# printed with its run.json error), 2 on a usage error.
#
# Environment: SPECRUN_IMAGE (default specrun-job:latest), CARGO (default cargo).

# cleanup and install_time are called indirectly (trap, quiet_step).
# shellcheck disable=SC2317
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS=5
CONCURRENCY=0
NOISY_MIB=0
BATCH=0
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
        --concurrency) [ $# -ge 2 ] || { usage >&2; exit 2; }; CONCURRENCY="$2"; shift 2 ;;
        --concurrency=*) CONCURRENCY="${1#*=}"; shift ;;
        --batch) [ $# -ge 2 ] || { usage >&2; exit 2; }; BATCH="$2"; shift 2 ;;
        --batch=*) BATCH="${1#*=}"; shift ;;
        --noisy-mib) [ $# -ge 2 ] || { usage >&2; exit 2; }; NOISY_MIB="$2"; shift 2 ;;
        --noisy-mib=*) NOISY_MIB="${1#*=}"; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
case "$RUNS" in
    ''|*[!0-9]*) echo "bench: --runs needs a positive integer, got '$RUNS'" >&2; exit 2 ;;
esac
[ "$RUNS" -ge 1 ] || { echo "bench: --runs must be at least 1" >&2; exit 2; }
case "$NOISY_MIB" in
    ''|*[!0-9]*) echo "bench: --noisy-mib needs a whole number, got '$NOISY_MIB'" >&2; exit 2 ;;
esac
case "$CONCURRENCY" in
    ''|*[!0-9]*) echo "bench: --concurrency needs a whole number, got '$CONCURRENCY'" >&2; exit 2 ;;
esac
case "$BATCH" in
    ''|*[!0-9]*) echo "bench: --batch needs a whole number, got '$BATCH'" >&2; exit 2 ;;
esac

die() { echo "bench: ERROR: $*" >&2; exit 1; }

BENCH_NAME=bench
BENCH_SETUP_EXIT=1
# shellcheck source=scripts/lib/bench-common.sh
. "$ROOT/scripts/lib/bench-common.sh"
mkdir -p "$TMP/runs" "$TMP/floor"

# --- set-up -------------------------------------------------------------------
cd "$ROOT"
log "set-up (temp dir $TMP)"
quiet_step ensure-docker "$ROOT/scripts/ensure-docker.sh"
quiet_step build-image "$ROOT/scripts/build-image.sh" --tag "$IMAGE"

install_time() {
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends time
}
if [ ! -x /usr/bin/time ]; then
    command -v apt-get >/dev/null 2>&1 || die "/usr/bin/time is missing and apt-get is not available to install it"
    quiet_step install-time install_time
    [ -x /usr/bin/time ] || die "/usr/bin/time still missing after installing the 'time' package"
fi
command -v python3 >/dev/null 2>&1 || die "python3 is needed for the report (scripts/bench_report.py)"
command -v git >/dev/null 2>&1 || die "git is needed"

quiet_step cargo-build "$CARGO" build --release -p specrun-runner
SPECRUN="$TARGET_DIR/release/specrun"
[ -x "$SPECRUN" ] || die "release binary not found at $SPECRUN"
SPECRUN_VERSION="$("$SPECRUN" --version 2>/dev/null || echo unknown)"

IMAGE_ID="$(docker image inspect -f '{{ .Id }}' "$IMAGE")" || die "image $IMAGE not found after build-image.sh"

# --- the repository -------------------------------------------------------------
# Hermetic git: no user/system config, fixed author and dates.
hgit() {
    env GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1 \
        GIT_AUTHOR_NAME="specrun bench" GIT_AUTHOR_EMAIL="bench@specrun.invalid" \
        GIT_COMMITTER_NAME="specrun bench" GIT_COMMITTER_EMAIL="bench@specrun.invalid" \
        GIT_AUTHOR_DATE="2024-01-01T00:00:00Z" GIT_COMMITTER_DATE="2024-01-01T00:00:00Z" \
        git "$@"
}

SEED="$TMP/seed"
REMOTE="$TMP/remote.git"
mkdir -p "$SEED/src"
cat >"$SEED/README.md" <<'EOF'
# bench-app

A tiny example application used by the specrun benchmark.
EOF
cat >"$SEED/src/app.py" <<'EOF'
from src.util import greet


def main() -> None:
    print(greet("world"))


if __name__ == "__main__":
    main()
EOF
cat >"$SEED/src/util.py" <<'EOF'
def greet(name: str) -> str:
    return f"hello, {name}"
EOF
printf '__pycache__/\n*.pyc\n' >"$SEED/.gitignore"
hgit -C "$SEED" init -q -b main
hgit -C "$SEED" add -A
hgit -C "$SEED" commit -q -m "Initial commit"
hgit clone -q --bare "$SEED" "$REMOTE"
REPO_FILES="$(hgit -C "$REMOTE" ls-tree -r --name-only main | wc -l | tr -d ' ')"
log "repo $REMOTE (main, $REPO_FILES files)"

# --- the runs -----------------------------------------------------------------
FEATURE_TEXT="Add user login with email and password, a logout button, and a session that expires after 30 minutes of inactivity."

# run_one NAME BRANCH [GROUP [AGENT]]: one `specrun run` under /usr/bin/time, never aborts
# the script.
run_one() {
    local name="$1" branch="$2" dir="$TMP/${3:-runs}/$1" agent="${4:-scripted}" rc=0
    mkdir -p "$dir"
    /usr/bin/time -f '%M %e' -o "$dir/time.txt" \
        "$SPECRUN" run --repo "$REMOTE" --text "$FEATURE_TEXT" --agent "$agent" \
        --publish branch --branch-name "$branch" --json --counts-file "$dir/counts.json" \
        --state-dir "$TMP/state" --work-dir "$TMP/work" --image "$IMAGE" \
        >"$dir/run.json" 2>"$dir/stderr.log" </dev/null || rc=$?
    echo "$rc" >"$dir/exit_code"
    echo "$branch" >"$dir/branch"
    return 0
}

log "warm-up run (not counted)"
t0="$(now_us)"
run_one warmup bench-warmup
WARMUP_RC="$(cat "$TMP/runs/warmup/exit_code")"
log "warm-up finished, exit $WARMUP_RC ($(elapsed_s "$t0") s)"

# The machine's busy CPU time (every process: the runner, dockerd, containerd, runc, the
# agent) in ms, from /proc/stat: what one run costs the host, which bounds how many runs
# the cores can take at once.
busy_ms() {
    awk -v hz="$(getconf CLK_TCK)" '/^cpu / { printf "%.0f\n", ($2 + $3 + $4 + $7 + $8 + $9) * 1000 / hz }' /proc/stat
}
CPU_BEFORE="$(busy_ms)"
for i in $(seq 1 "$RUNS"); do
    t0="$(now_us)"
    run_one "run-$i" "bench-$i"
    log "run $i/$RUNS finished, exit $(cat "$TMP/runs/run-$i/exit_code") ($(elapsed_s "$t0") s)"
done
echo $(( ($(busy_ms) - CPU_BEFORE) / RUNS )) >"$TMP/runs/host_cpu_ms_per_run.txt"

if [ "$CONCURRENCY" -gt 0 ]; then
    log "$CONCURRENCY runs at once"
    mkdir -p "$TMP/concurrent"
    t0="$(now_us)"
    CPU_BEFORE="$(busy_ms)"
    for i in $(seq 1 "$CONCURRENCY"); do
        run_one "run-$i" "bench-c$i" concurrent &
    done
    wait
    echo $(( ($(busy_ms) - CPU_BEFORE) / CONCURRENCY )) >"$TMP/concurrent/host_cpu_ms_per_run.txt"
    awk -v a="$t0" -v b="$(now_us)" 'BEGIN { printf "%.3f\n", (b - a) / 1000 }' >"$TMP/concurrent/batch.txt"
    log "$CONCURRENCY runs at once finished ($(elapsed_s "$t0") s)"
fi

if [ "$NOISY_MIB" -gt 0 ]; then
    cat >"$TMP/agents.toml" <<EOF
[agents.noisy]
extends = "scripted"
[agents.noisy.phases]
specify = ["sh", "-c", "yes 'a noisy agent prints this line again and again' | head -c \$((\$2 * 1048576)); exec specrun-scripted-agent specify \"\$1\"", "noisy", "{text}", "$NOISY_MIB"]
EOF
fi

if [ "$BATCH" -gt 0 ]; then
    batch_agent=scripted batch_env=()
    [ "$NOISY_MIB" -eq 0 ] || { batch_agent=noisy; batch_env=(SPECRUN_AGENTS_FILE="$TMP/agents.toml"); }
    log "$BATCH runs in one process (specrun batch, agent $batch_agent)"
    mkdir -p "$TMP/batch"
    batch_repos=()
    for i in $(seq 1 "$BATCH"); do
        hgit clone -q --bare "$SEED" "$TMP/batch/remote-$i.git"
        batch_repos+=(--repo "$TMP/batch/remote-$i.git")
    done
    t0="$(now_us)"
    rc=0
    env "${batch_env[@]}" /usr/bin/time -f '%M %e' -o "$TMP/batch/time.txt" \
        "$SPECRUN" --state-dir "$TMP/batch-state" batch "${batch_repos[@]}" \
        --text "$FEATURE_TEXT" --agent "$batch_agent" --publish branch \
        --max-in-flight "$BATCH" --json --work-dir "$TMP/work" --image "$IMAGE" \
        >"$TMP/batch/batch.json" 2>"$TMP/batch/stderr.log" </dev/null || rc=$?
    echo "$rc" >"$TMP/batch/exit_code"
    log "$BATCH runs in one process finished, exit $rc ($(elapsed_s "$t0") s)"
fi

if [ "$NOISY_MIB" -gt 0 ]; then
    log "one run whose agent prints $NOISY_MIB MiB"
    t0="$(now_us)"
    SPECRUN_AGENTS_FILE="$TMP/agents.toml" run_one "run-1" bench-noisy noisy noisy
    log "noisy run finished, exit $(cat "$TMP/noisy/run-1/exit_code") ($(elapsed_s "$t0") s)"
fi

# --- the floor ----------------------------------------------------------------
# time_ms FILE CMD...: append CMD's wall time in ms to FILE; abort if CMD fails.
time_ms() {
    local out="$1"; shift
    local t0 t1 rc=0
    t0="$(now_us)"
    "$@" >/dev/null 2>"$TMP/floor/last.err" </dev/null || rc=$?
    t1="$(now_us)"
    if [ "$rc" -ne 0 ]; then
        echo "bench: floor command failed (exit $rc): $*" >&2
        sed 's/^/    | /' "$TMP/floor/last.err" >&2
        exit 1
    fi
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", (b - a) / 1000 }' >>"$out"
}

log "floor: docker run --rm --network none $IMAGE true (x$RUNS)"
: >"$TMP/floor/docker_run.txt"
CPU_BEFORE="$(busy_ms)"
for i in $(seq 1 "$RUNS"); do
    time_ms "$TMP/floor/docker_run.txt" docker run --rm --network none "$IMAGE" true
done
echo $(( ($(busy_ms) - CPU_BEFORE) / RUNS )) >"$TMP/floor/host_cpu_ms_per_docker_run.txt"

log "floor: git clone (x$RUNS)"
: >"$TMP/floor/git_clone.txt"
for i in $(seq 1 "$RUNS"); do
    time_ms "$TMP/floor/git_clone.txt" hgit clone -q "$REMOTE" "$TMP/floor/clone-$i"
done

log "floor: git push of a new branch with one commit (x$RUNS)"
: >"$TMP/floor/git_push.txt"
PUSHER="$TMP/floor/pusher"
hgit clone -q "$REMOTE" "$PUSHER"
for i in $(seq 1 "$RUNS"); do
    hgit -C "$PUSHER" checkout -q -b "floor-push-$i" main
    echo "floor push $i" >"$PUSHER/floor-$i.txt"
    hgit -C "$PUSHER" add "floor-$i.txt"
    hgit -C "$PUSHER" commit -q -m "floor push $i"
    time_ms "$TMP/floor/git_push.txt" hgit -C "$PUSHER" push -q origin "floor-push-$i"
done

# The floor of --concurrency C: C bare containers started at once (what the engine alone
# needs for C jobs), three times.
if [ "$CONCURRENCY" -gt 0 ]; then
    log "floor: $CONCURRENCY bare containers at once (x3)"
    : >"$TMP/floor/docker_run_at_once.txt"
    for _ in 1 2 3; do
        t0="$(now_us)"
        for i in $(seq 1 "$CONCURRENCY"); do
            docker run --rm --network none "$IMAGE" true >/dev/null 2>"$TMP/floor/at-once-$i.err" </dev/null &
        done
        wait
        awk -v a="$t0" -v b="$(now_us)" 'BEGIN { printf "%.3f\n", (b - a) / 1000 }' >>"$TMP/floor/docker_run_at_once.txt"
    done
fi

# --- report -------------------------------------------------------------------
report_rc=0
python3 "$ROOT/scripts/bench_report.py" \
    --tmp "$TMP" --runs "$RUNS" --image "$IMAGE" --image-id "$IMAGE_ID" \
    --repo-files "$REPO_FILES" --specrun-version "$SPECRUN_VERSION" \
    --concurrency "$CONCURRENCY" --batch "$BATCH" --noisy-mib "$NOISY_MIB" \
    --bench-start-us "$BENCH_START_US" --bench-now-us "$(now_us)" \
    --out "$TARGET_DIR/bench/latest.json" || report_rc=$?

echo "bench took $(elapsed_s "$BENCH_START_US") s in all; JSON: $TARGET_DIR/bench/latest.json"
exit "$report_rc"
