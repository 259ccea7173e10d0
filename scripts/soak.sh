#!/usr/bin/env bash
# The fault-injection soak benchmark: many scripted-agent runs through the serverless
# path (moto S3 + SQS, `specrun serve --no-runner` for submissions, `specrun runner`
# processes reaching the emulator through a relay that can fail) while faults land at
# random moments: runners SIGKILLed or SIGTERMed and replaced, the store and queue
# refusing connections or answering 503, messages duplicated, job containers killed.
#
#   scripts/soak.sh [--runs N] [--runners N] [--seed N] [--agent-sleep SECS]
#                   [--max-fault-gap SECS] [--deadline SECS]
#
# Defaults: 30 runs, 2 runners, seed 42, the agent sleeps 2 s in specify, a fault at
# least every 6 s, 900 s for every run to settle. The same seed gives the same fault
# schedule (what the faults hit still depends on timing).
#
# Prints faults injected (by kind), runs submitted, completed, failed (by error code),
# duplicated effects (extra pushes and extra pull requests; must be 0), lost runs (no final state; must be 0),
# runs taken over, and the wall time; writes the same to target/bench/soak.txt.
# Exit status: 0 when nothing was lost or duplicated, 1 otherwise.
#
# Set-up (idempotent): scripts/setup.sh (Docker, the job image, moto and the AWS CLI).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh >&2
mkdir -p target/bench
cargo build --quiet -p specrun-runner --bin specrun
cargo run --quiet -p specrun-tests --bin specrun-soak -- "$@" | tee target/bench/soak.txt
