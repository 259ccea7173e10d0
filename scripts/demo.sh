#!/usr/bin/env bash
# The demo on the embedded default (no cloud account): makes a sample repository with
# a bare "remote", runs the pipeline with the offline scripted agent, and shows the
# pushed branch, the spec files and the run's status. Does its own set-up.
#
#   scripts/demo.sh ["feature description"]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TEXT="${1:-Let members reset a forgotten password by email, with a link that expires after one hour}"

# The demo runs the offline scripted agent only, so it needs no agent CLI: it uses the
# full job image when that is already built and current (SPECRUN_IMAGE, default
# specrun-job:latest), and otherwise builds and uses the scripted image
# (SPECRUN_SCRIPTED_IMAGE, default specrun-job:scripted), which leaves out Node and the
# agent CLIs: no npm downloads.
FULL_IMAGE="${SPECRUN_IMAGE:-specrun-job:latest}"
if scripts/build-image.sh --check --target full --tag "$FULL_IMAGE"; then
    export SPECRUN_IMAGE="$FULL_IMAGE" SPECRUN_IMAGE_TARGET=full
else
    export SPECRUN_IMAGE="${SPECRUN_SCRIPTED_IMAGE:-specrun-job:scripted}" SPECRUN_IMAGE_TARGET=scripted
fi

# The debug profile compiles in a fraction of the release build's time and is fast enough
# for one run. Without default features: a run on the embedded store that pushes a branch
# needs neither the AWS SDK, the broker clients nor octocrab (the pull request's client):
# about half the build. No incremental state: a one-off build is faster without writing
# it. Built while the job image builds.
echo "demo: setting up, and building specrun (the first time 2 to 3 minutes, with progress below)" >&2
CARGO_INCREMENTAL=0 scripts/setup.sh --with cargo build -p specrun-runner --no-default-features
SPECRUN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/specrun"

DEMO="$ROOT/.specrun/demo"
rm -rf "$DEMO" && mkdir -p "$DEMO"
export SPECRUN_STATE_DIR="$DEMO/state" SPECRUN_WORK_DIR="$DEMO/work"
export GIT_CONFIG_GLOBAL=/dev/null GIT_AUTHOR_NAME=demo GIT_AUTHOR_EMAIL=demo@example.invalid \
    GIT_COMMITTER_NAME=demo GIT_COMMITTER_EMAIL=demo@example.invalid
git init --quiet --bare -b main "$DEMO/remote.git"
git init --quiet -b main "$DEMO/seed"
printf '# Sample app\n\nA repository for the specrun demo.\n' > "$DEMO/seed/README.md"
git -C "$DEMO/seed" add README.md
git -C "$DEMO/seed" commit --quiet -m "Initial commit"
git -C "$DEMO/seed" push --quiet "$DEMO/remote.git" main

echo "demo: running the pipeline on $DEMO/remote.git" >&2
"$SPECRUN" run --repo "$DEMO/remote.git" --text "$TEXT" --agent scripted --publish branch --json > "$DEMO/run.json"
RUN_ID="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["run_id"])' "$DEMO/run.json")"
BRANCH="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["branch_name"])' "$DEMO/run.json")"

echo
echo "== branches on the remote"
git --git-dir "$DEMO/remote.git" branch --list
echo
echo "== files the run committed on $BRANCH"
git --git-dir "$DEMO/remote.git" diff --stat main "$BRANCH" -- specs
echo
echo "== specs/$BRANCH/spec.md (first lines)"
git --git-dir "$DEMO/remote.git" show "$BRANCH:specs/$BRANCH/spec.md" | head -n 20
echo
echo "== specrun status $RUN_ID"
"$SPECRUN" status "$RUN_ID"
echo
echo "demo: done in $SECONDS s; state in $SPECRUN_STATE_DIR; try: SPECRUN_STATE_DIR=$SPECRUN_STATE_DIR $SPECRUN logs $RUN_ID --phase specify"
