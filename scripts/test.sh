#!/usr/bin/env bash
# Run the whole test suite: unit tests beside the code and the end-to-end tests under
# tests/ against a real Docker engine, the real job image and git over HTTP.
# Does its own set-up on a fresh machine (scripts/setup.sh).
#
#   scripts/test.sh [extra cargo-nextest arguments]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh
cargo nextest run --workspace --no-fail-fast "$@"
