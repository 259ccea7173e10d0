#!/usr/bin/env bash
# Prepare a fresh machine for specrun: the system packages the build and the tests
# need, a running Docker engine, and the job image. Idempotent; every other script
# calls it first.
#
#   scripts/setup.sh [--tests] [--with COMMAND [ARG...]]
#
# --tests also installs what only the tests need (moto, the AWS CLI, RabbitMQ, PostgreSQL,
# two Celery releases, libfaketime); the demo needs none of it.
# --with runs COMMAND (the build that comes next, e.g. cargo's) while the rest of the
# set-up runs: it starts as soon as the packages a Rust build needs are there, so the
# other packages, Docker and the job image (mostly downloads) are installed and built
# while it compiles (mostly CPU); setup waits for both. The image build's output goes
# to a log file; its progress is printed every 30 s. SPECRUN_IMAGE_TARGET and
# SPECRUN_IMAGE choose the image built (scripts/build-image.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { echo "setup: $*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

# Build: git2 and octocrab link OpenSSL/ring through pkg-config and cc. Tests: git
# (http-backend), GNU time (benchmark), libcurl for the Celery producer's SQS transport,
# iptables (the runner's egress firewall rules; docker.io pulls it in too), libfaketime
# (the soak runs a runner on a skewed clock), RabbitMQ and PostgreSQL (the Celery broker
# and result backend of the AMQP tests, which start their own server processes; the
# packages' services are not used). Chromium and a font: the web console's browser tests
# (tests/browser: playwright-core drives this chromium and never downloads one), with the
# machine's Node.js 20+ and npm.
TESTS=0
if [ "${1:-}" = "--tests" ]; then TESTS=1; shift; fi
WITH=()
if [ "${1:-}" = "--with" ]; then
    shift
    [ $# -gt 0 ] || { echo "setup: --with needs a command" >&2; exit 2; }
    WITH=("$@")
fi
build_packages=(pkg-config libssl-dev git)
packages=(debootstrap iptables)
if [ "$TESTS" -eq 1 ]; then
    packages+=(time libcurl4-openssl-dev libfaketime rabbitmq-server postgresql chromium fonts-liberation)
fi
apt_updated=0
# Installs those of the given Debian packages that are missing.
install_missing() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    local started=$SECONDS
    log "installing ${missing[*]}"
    if [ "$apt_updated" -eq 0 ]; then
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        apt_updated=1
    fi
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    log "installed ${missing[*]} in $(( SECONDS - started )) s"
}
install_missing "${build_packages[@]}"

# The build starts now, beside everything below.
command_pid=""
if [ ${#WITH[@]} -gt 0 ]; then
    log "running beside the rest of the set-up: ${WITH[*]}"
    "${WITH[@]}" &
    command_pid=$!
    # A set-up step that fails ends this script: the build goes with it.
    trap '[ -z "$command_pid" ] || kill "$command_pid" 2>/dev/null || true' EXIT
fi

install_missing "${packages[@]}"

# The console's browser tests drive chromium with playwright-core, pinned by
# tests/browser/package-lock.json.
if [ "$TESTS" -eq 1 ] && [ ! -f "$ROOT/tests/browser/node_modules/playwright-core/package.json" ]; then
    command -v npm >/dev/null 2>&1 || { echo "setup: ERROR: the browser tests need Node.js 20+ and npm on PATH" >&2; exit 1; }
    log "installing playwright-core for the console's browser tests (tests/browser)"
    (cd "$ROOT/tests/browser" && npm ci --no-audit --no-fund >&2)
fi

if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest"
    cargo install --locked cargo-nextest >&2
fi

# The tests' Python side: the emulator (moto), the AWS CLI, Celery producers, the
# CloudFormation linter. Downloads mostly, so it runs beside the builds below.
python_for_tests() {
    if ! python3 -m pip install --quiet --disable-pip-version-check -r "$ROOT/tests/requirements.txt" >&2; then
        echo "setup: ERROR: pip could not install tests/requirements.txt" >&2
        exit 1
    fi

    # Celery producers of two releases for the AMQP tests, each in its own directory (pip
    # --target) with the SQLAlchemy and psycopg2 its database backend needs; kept between runs
    # in the cache directory (about a minute each to install).
    CACHE_DIR="${SPECRUN_CACHE_DIR:-$HOME/.cache/specrun}"
    install_celery() {
        local release=$1 kombu=$2 sqlalchemy=$3 dir="$CACHE_DIR/celery-$1"
        [ -f "$dir/.installed" ] && return 0
        log "installing Celery $release into $dir"
        rm -rf "$dir"
        python3 -m pip install --quiet --disable-pip-version-check --target "$dir" \
            "celery==$release" "kombu==$kombu" "sqlalchemy==$sqlalchemy" "psycopg2-binary==2.9.11" >&2
        touch "$dir/.installed"
    }
    install_celery 5.4.0 5.4.2 2.0.44
    install_celery 5.7.0 5.7.0 2.1.9

    # LocalStack, for the serverless suite's second pass (scripts/test.sh): only on request
    # (CI asks), since a fresh install takes about 11 minutes here, nearly all of it
    # downloading (1.5 min of CPU), which is why it runs beside the builds. Not fatal: the
    # suite then runs on moto only, and test.sh says so.
    if [ "${SPECRUN_LOCALSTACK:-}" = "1" ]; then
        "$ROOT/localstack/install-localstack.sh" >/dev/null \
            || log "WARNING: LocalStack did not install (see above); the serverless suite runs on moto only"
    fi
}

docker_started=$SECONDS
"$ROOT/scripts/ensure-docker.sh"
[ $(( SECONDS - docker_started )) -lt 2 ] || log "Docker ready after $(( SECONDS - docker_started )) s"

PY_LOG="${TMPDIR:-/tmp}/specrun-setup-python.log"
py_pid=""
if [ "$TESTS" -eq 1 ]; then
    log "installing the tests' Python packages in the background (log: $PY_LOG)"
    python_for_tests >"$PY_LOG" 2>&1 &
    py_pid=$!
fi
# Waits for the Python installs; their log on failure.
wait_python() {
    [ -n "$py_pid" ] || return 0
    if ! wait "$py_pid"; then
        tail -n 30 "$PY_LOG" >&2
        echo "setup: ERROR: installing the tests' Python packages failed; full log: $PY_LOG" >&2
        return 1
    fi
}

# The job image; with --tests also the demo's scripted image, which the tests check: its
# layers are the full image's, so it takes seconds after it.
build_images() {
    "$ROOT/scripts/build-image.sh" || return
    if [ "$TESTS" -eq 1 ]; then
        "$ROOT/scripts/build-image.sh" --target scripted --tag "${SPECRUN_SCRIPTED_IMAGE:-specrun-job:scripted}"
    fi
}

if [ -z "$command_pid" ]; then
    build_images
    wait_python
    exit 0
fi

# What a first build takes on an idle 2-core machine of this kind (README, first-run times).
if [ "${SPECRUN_IMAGE_TARGET:-full}" = scripted ]; then
    image_estimate="about 2 min the first time"
else
    image_estimate="about 5 min the first time"
fi
IMAGE_LOG="${TMPDIR:-/tmp}/specrun-build-image.log"
build_images >"$IMAGE_LOG" 2>&1 &
image_pid=$!
# Tell what the image build is doing while the other command prints its own progress.
(
    started=$(date +%s)
    while sleep 30; do
        kill -0 "$image_pid" 2>/dev/null || exit 0
        step="$(grep -E '^(Step [0-9]+/[0-9]+|build-image:)' "$IMAGE_LOG" | tail -n 1 | cut -c1-100)"
        log "job image still building ($(( $(date +%s) - started )) s; $image_estimate): ${step:-starting}"
    done
) &
reporter_pid=$!
log "building the job image in the background (log: $IMAGE_LOG)"

command_status=0
wait "$command_pid" || command_status=$?
command_pid=""
image_status=0
wait "$image_pid" || image_status=$?
kill "$reporter_pid" 2>/dev/null || true
wait "$reporter_pid" 2>/dev/null || true
grep -E '^build-image: (built|total time|.* is up to date)' "$IMAGE_LOG" >&2 || true
wait_python || exit 1
if [ "$image_status" -ne 0 ]; then
    tail -n 30 "$IMAGE_LOG" >&2
    echo "setup: ERROR: the job image did not build (exit $image_status); full log: $IMAGE_LOG" >&2
    exit "$image_status"
fi
exit "$command_status"
