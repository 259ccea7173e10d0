#!/usr/bin/env bash
# Run the whole test suite: unit tests beside the code and the end-to-end tests under
# tests/ against a real Docker engine, the real job image and git over HTTP.
# Does its own set-up on a fresh machine (scripts/setup.sh).
#
#   scripts/test.sh [extra cargo-nextest arguments]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# The tests' build runs while the job image builds.
scripts/setup.sh --tests --with cargo nextest run --workspace --no-run
cargo nextest run --workspace --no-fail-fast "$@"

# The serverless end-to-end suite once more against LocalStack instead of moto, when its
# virtual environment is installed (localstack/install-localstack.sh, or scripts/setup.sh
# with SPECRUN_LOCALSTACK=1: several minutes, so not done by default). About 3 minutes.
LOCALSTACK_PYTHON="${SPECRUN_CACHE_DIR:-$HOME/.cache/specrun}/localstack-venv/bin/python"
if [ "${SPECRUN_SKIP_LOCALSTACK:-}" != "1" ] && [ -x "$LOCALSTACK_PYTHON" ]; then
    SPECRUN_TEST_EMULATOR=localstack SPECRUN_LOCALSTACK_PYTHON="$LOCALSTACK_PYTHON" \
        cargo nextest run -p specrun-tests --test serverless --no-fail-fast
else
    echo "test: LocalStack is not installed; the serverless suite ran against moto only" >&2
fi
