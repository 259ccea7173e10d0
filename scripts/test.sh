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
scripts/setup.sh --with cargo nextest run --workspace --no-run
cargo nextest run --workspace --no-fail-fast "$@"
