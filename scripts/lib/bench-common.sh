# shellcheck shell=bash
# shellcheck disable=SC2034  # BENCH_START_US and TARGET_DIR are for the sourcing script
# Shared by the benchmark scripts (sourced, not run): timing without forks, a temp dir
# removed on exit, quiet set-up steps, and the release binary's path.
#
# Before sourcing, set BENCH_NAME (the prefix of messages and of the temp dir), KEEP
# (1 keeps the temp dir) and BENCH_SETUP_EXIT (exit status of a failed set-up step).
# A script that must stop something before the temp dir goes defines bench_before_cleanup.

# cleanup is called indirectly (trap).
# shellcheck disable=SC2317

log() { echo "$BENCH_NAME: $*" >&2; }

# Microseconds since the epoch, without forking (bash 5 EPOCHREALTIME; the
# decimal separator depends on the locale, so keep digits only).
now_us() {
    if [ -n "${EPOCHREALTIME:-}" ]; then
        local t="${EPOCHREALTIME//[!0-9]/}"
        echo "$((10#$t))"
    else
        echo "$(( $(date +%s%N) / 1000 ))"
    fi
}
BENCH_START_US="$(now_us)"
elapsed_s() { awk -v a="$1" -v b="$(now_us)" 'BEGIN { printf "%.1f", (b - a) / 1e6 }'; }

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/specrun-$BENCH_NAME.XXXXXX")"
cleanup() {
    local rc=$?
    if declare -F bench_before_cleanup >/dev/null; then bench_before_cleanup; fi
    if [ "$KEEP" -eq 1 ]; then
        log "kept $TMP"
    else
        rm -rf --one-file-system "$TMP" 2>/dev/null || $SUDO rm -rf --one-file-system "$TMP" || true
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$TMP/setup"

# Run a set-up step with its output in a log; show the log only if it fails.
quiet_step() {
    local name="$1"; shift
    local logf="$TMP/setup/$name.log" t0 rc=0
    t0="$(now_us)"
    "$@" >"$logf" 2>&1 </dev/null || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "$BENCH_NAME: set-up step '$name' failed (exit $rc): $*" >&2
        sed 's/^/    | /' "$logf" | tail -n 60 >&2
        exit "$BENCH_SETUP_EXIT"
    fi
    echo "$name $(elapsed_s "$t0")" >>"$TMP/setup/durations.txt"
    log "$name ok ($(elapsed_s "$t0") s)"
}

# Cargo's target directory, honouring CARGO_TARGET_DIR.
TARGET_DIR="$ROOT/target"
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
    case "$CARGO_TARGET_DIR" in /*) TARGET_DIR="$CARGO_TARGET_DIR" ;; *) TARGET_DIR="$ROOT/$CARGO_TARGET_DIR" ;; esac
fi
