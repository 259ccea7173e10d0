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

# The debug profile compiles in a fraction of the release build's time, shares its
# artifacts with the test suite, and is fast enough for one run; built while the job
# image builds.
echo "demo: setting up, and building specrun (the first time about 8 minutes, with progress below)" >&2
scripts/setup.sh --with cargo build -p specrun-runner
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
echo "demo: state in $SPECRUN_STATE_DIR; try: SPECRUN_STATE_DIR=$SPECRUN_STATE_DIR $SPECRUN logs $RUN_ID --phase specify"
