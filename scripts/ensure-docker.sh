#!/usr/bin/env bash
# Make sure a working Docker daemon (and debootstrap, used to build the base
# image without any container registry) is available. Idempotent.
#
#   scripts/ensure-docker.sh
#
# Exit 0 when `docker info` works, non-zero with a clear message otherwise.
set -euo pipefail

log() { echo "ensure-docker: $*" >&2; }
die() { echo "ensure-docker: ERROR: $*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
fi

apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        log "apt-get update"
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 \
            || die "apt-get update failed"
        apt_updated=1
    fi
    log "apt-get install -y $*"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 \
        || die "apt-get install $* failed"
}

# debootstrap builds specrun-base:bookworm (no registry can be reached).
if ! command -v debootstrap >/dev/null 2>&1 && [ ! -x /usr/sbin/debootstrap ]; then
    apt_install debootstrap
fi

docker_ok() { docker info >/dev/null 2>&1; }

if command -v docker >/dev/null 2>&1 && docker_ok; then
    exit 0
fi

if ! command -v dockerd >/dev/null 2>&1 && [ ! -x /usr/sbin/dockerd ]; then
    apt_install docker.io
fi
command -v docker >/dev/null 2>&1 || die "docker client not found on PATH even after installing docker.io"

if docker_ok; then
    exit 0
fi

DOCKERD_LOG="${SPECRUN_DOCKERD_LOG:-/tmp/specrun-dockerd.log}"
if pgrep -x dockerd >/dev/null 2>&1; then
    log "dockerd is already running; waiting for it to answer"
else
    log "starting dockerd (log: $DOCKERD_LOG)"
    DOCKERD_BIN="$(command -v dockerd || echo /usr/sbin/dockerd)"
    # setsid: keep the daemon alive after this script (and its process group) ends.
    $SUDO setsid nohup "$DOCKERD_BIN" >>"$DOCKERD_LOG" 2>&1 < /dev/null &
fi

for _ in $(seq 1 30); do
    if docker_ok; then
        log "docker is up"
        exit 0
    fi
    sleep 1
done

echo "ensure-docker: ERROR: docker daemon did not become ready within 30 s." >&2
if [ -f "$DOCKERD_LOG" ]; then
    echo "ensure-docker: last lines of $DOCKERD_LOG:" >&2
    tail -n 20 "$DOCKERD_LOG" >&2 || true
fi
exit 1
