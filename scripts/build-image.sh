#!/usr/bin/env bash
# Build the specrun job image (idempotent).
#
#   scripts/build-image.sh [--target full|scripted] [--tag TAG] [--ca-bundle PATH]
#                          [--force] [--check]
#
# --target full (the default) is the image every agent runs in: Spec Kit, the
# scripted agent, Codex, Claude Code and Gemini CLI. --target scripted leaves
# out Node and the agent CLIs (no npm downloads: a fraction of the full build);
# it runs the offline scripted agent only, which is all the demo uses. Building
# full after scripted reuses the scripted image's layers.
# --check builds nothing: exit 0 when TAG is the current image of the target,
# 1 otherwise (also when Docker is not answering).
#
# Environment:
#   SPECRUN_IMAGE            image tag (default specrun-job:latest for full,
#                            specrun-job:scripted for scripted; --tag wins)
#   SPECRUN_IMAGE_TARGET     full or scripted (default full; --target wins)
#   SPECRUN_EXTRA_CA_BUNDLE  PEM bundle trusted by apt/pip/npm during the build
#                            and inside the image (default: the host bundle
#                            /etc/ssl/certs/ca-certificates.crt if it exists;
#                            --ca-bundle wins; "none" disables it)
#   SPECRUN_BASE_IMAGE       base image (default specrun-base:bookworm). When
#                            it is missing and named specrun-base:<tag> it is
#                            created once with debootstrap + `docker import`
#                            (no container registry needed).
#
# The job image carries the labels io.specrun.image.target=<target> and
# io.specrun.image.inputs=<inputs hash>; when the tagged image already has this
# target and the current hash the build is skipped. The
# inputs hash is the sha256 (hex) of the text `sha256sum` prints for
#   image/Dockerfile image/specrun-scripted-agent image/specrun-speckit-init
#   image/specrun-exec-server
#   scripts/build-image.sh
# run from the repository root, i.e. of "<hex>  image/Dockerfile\n<hex>  ..."
# (five lines, in that order). The CA bundle is not part of it: use --force
# after changing the bundle.
set -euo pipefail

START_TS=$(date +%s)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

TAG="${SPECRUN_IMAGE:-}"
TARGET="${SPECRUN_IMAGE_TARGET:-full}"
CA_BUNDLE="${SPECRUN_EXTRA_CA_BUNDLE:-}"
if [ -z "$CA_BUNDLE" ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
fi
BASE_IMAGE="${SPECRUN_BASE_IMAGE:-specrun-base:bookworm}"
FORCE=0
CHECK=0

usage() {
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --tag) [ $# -ge 2 ] || { usage >&2; exit 2; }; TAG="$2"; shift 2 ;;
        --tag=*) TAG="${1#*=}"; shift ;;
        --ca-bundle) [ $# -ge 2 ] || { usage >&2; exit 2; }; CA_BUNDLE="$2"; shift 2 ;;
        --ca-bundle=*) CA_BUNDLE="${1#*=}"; shift ;;
        --target) [ $# -ge 2 ] || { usage >&2; exit 2; }; TARGET="$2"; shift 2 ;;
        --target=*) TARGET="${1#*=}"; shift ;;
        --force) FORCE=1; shift ;;
        --check) CHECK=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "build-image: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

case "$TARGET" in
    full|scripted) ;;
    *) echo "build-image: unknown target: $TARGET (full or scripted)" >&2; usage >&2; exit 2 ;;
esac
[ -n "$TAG" ] || { [ "$TARGET" = full ] && TAG=specrun-job:latest || TAG=specrun-job:scripted; }

log() { echo "build-image: $*"; }
die() { echo "build-image: ERROR: $*" >&2; exit 1; }
elapsed() { echo "$(( $(date +%s) - $1 ))s"; }

if [ "$CA_BUNDLE" = "none" ]; then
    CA_BUNDLE=""
fi
if [ -n "$CA_BUNDLE" ] && [ ! -r "$CA_BUNDLE" ]; then
    die "CA bundle not readable: $CA_BUNDLE"
fi

# --- inputs hash -------------------------------------------------------------
INPUT_FILES=(image/Dockerfile image/specrun-scripted-agent image/specrun-speckit-init image/specrun-exec-server scripts/build-image.sh)
for f in "${INPUT_FILES[@]}"; do
    [ -f "$ROOT/$f" ] || die "missing input file: $ROOT/$f"
done
INPUTS_HASH="$(cd "$ROOT" && sha256sum "${INPUT_FILES[@]}" | sha256sum | cut -d' ' -f1)"

# "<target> <inputs hash>" of an image, from its labels; empty when there is no such image.
labels_of() {
    docker image inspect \
        -f '{{ index .Config.Labels "io.specrun.image.target" }} {{ index .Config.Labels "io.specrun.image.inputs" }}' \
        "$1" 2>/dev/null || true
}
# An image built before the targets existed has no target label: it is never current.
WANTED_LABELS="$TARGET $INPUTS_HASH"

if [ "$CHECK" -eq 1 ]; then
    if [ "$(labels_of "$TAG")" = "$WANTED_LABELS" ]; then exit 0; fi
    exit 1
fi

# --- docker -----------------------------------------------------------------
log "checking docker"
"$ROOT/scripts/ensure-docker.sh"

# Serialise concurrent builds on this machine.
LOCK_FILE="${TMPDIR:-/tmp}/specrun-build-image.lock"
exec 9>"$LOCK_FILE"
if command -v flock >/dev/null 2>&1; then
    if ! flock -n 9; then
        log "another build is running; waiting for it"
        flock 9
    fi
fi

log "image $TAG (target $TARGET), inputs hash $INPUTS_HASH"
if [ "$FORCE" -eq 0 ] && [ "$(labels_of "$TAG")" = "$WANTED_LABELS" ]; then
    log "$TAG is up to date (target $TARGET, inputs $INPUTS_HASH); use --force to rebuild"
    log "total time $(elapsed "$START_TS")"
    exit 0
fi

# --- base image --------------------------------------------------------------
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "base image $BASE_IMAGE present"
else
    case "$BASE_IMAGE" in
        specrun-base:*) ;;
        *) die "base image $BASE_IMAGE is missing and only specrun-base:<tag> images can be built here" ;;
    esac
    [ "$(id -u)" -eq 0 ] || die "building $BASE_IMAGE with debootstrap needs root"
    DEBOOTSTRAP="$(command -v debootstrap || echo /usr/sbin/debootstrap)"
    [ -x "$DEBOOTSTRAP" ] || die "debootstrap not found"
    BASE_TS=$(date +%s)
    ROOTFS="$(mktemp -d "${TMPDIR:-/tmp}/specrun-base.XXXXXX")"
    # On a tmpfs the fsync dpkg makes after every file costs nothing: debootstrap takes
    # about half the time (24 s instead of 51 s here). The rootfs is about 200 MB.
    ROOTFS_TMPFS=0
    if mount -t tmpfs -o size=1g,mode=0755 specrun-base "$ROOTFS" 2>/dev/null; then
        ROOTFS_TMPFS=1
    fi
    cleanup_rootfs() {
        if [ "$ROOTFS_TMPFS" -eq 1 ]; then umount "$ROOTFS"; fi
        rm -rf --one-file-system "$ROOTFS"
    }
    trap cleanup_rootfs EXIT
    log "building base image $BASE_IMAGE: debootstrap --variant=minbase bookworm (default mirror)"
    if ! "$DEBOOTSTRAP" --variant=minbase bookworm "$ROOTFS" >"$ROOTFS.log" 2>&1; then
        tail -n 30 "$ROOTFS.log" >&2
        die "debootstrap failed (full log: $ROOTFS.log)"
    fi
    rm -f "$ROOTFS.log"
    # Slim the rootfs: package caches and lists are refreshed in the job build.
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
           "$ROOTFS"/var/log/*.log "$ROOTFS"/tmp/* 2>/dev/null || true
    : > "$ROOTFS/etc/hostname" 2>/dev/null || true
    log "importing rootfs as $BASE_IMAGE"
    tar --numeric-owner -C "$ROOTFS" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        --message "specrun base: debootstrap --variant=minbase bookworm" \
        - "$BASE_IMAGE" >/dev/null
    cleanup_rootfs
    trap - EXIT
    log "base image $BASE_IMAGE built in $(elapsed "$BASE_TS")"
fi

# --- job image ---------------------------------------------------------------
CTX="$(mktemp -d "${TMPDIR:-/tmp}/specrun-image-ctx.XXXXXX")"
trap 'rm -rf "$CTX"' EXIT
cp "$ROOT/image/Dockerfile" "$ROOT/image/specrun-scripted-agent" "$ROOT/image/specrun-speckit-init" \
    "$ROOT/image/specrun-exec-server" "$CTX/"
if [ -n "$CA_BUNDLE" ]; then
    log "extra CA bundle: $CA_BUNDLE"
    cp "$CA_BUNDLE" "$CTX/extra-ca-bundle.crt"
else
    log "no extra CA bundle"
    : > "$CTX/extra-ca-bundle.crt"
fi

# The installed client (28.x) talks to a 20.10 daemon and has no buildx
# plugin, so use the legacy builder; the CA bundle travels in the context.
JOB_TS=$(date +%s)
log "docker build --target $TARGET -t $TAG (base $BASE_IMAGE)"
status=0
DOCKER_BUILDKIT=0 docker build \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --build-arg "INPUTS_HASH=$INPUTS_HASH" \
    --target "$TARGET" \
    -t "$TAG" \
    "$CTX" || status=$?
[ "$status" -eq 0 ] || die "docker build failed (exit $status)"
[ "$(labels_of "$TAG")" = "$WANTED_LABELS" ] || die "built image $TAG lacks the expected target and inputs labels"

# Drop dangling layers left by earlier builds of this tag.
docker image prune -f --filter "label=org.opencontainers.image.title=specrun-job" >/dev/null 2>&1 || true

SIZE="$(docker image inspect -f '{{ .Size }}' "$TAG" | awk '{ printf "%.0f MB", $1/1000/1000 }')"
log "built $TAG ($SIZE) in $(elapsed "$JOB_TS")"
log "total time $(elapsed "$START_TS")"
