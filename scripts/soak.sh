#!/usr/bin/env bash
# The fault-injection soak benchmark: many scripted-agent runs through the serverless
# path (moto S3 + SQS, `specrun serve --no-runner` for submissions, `specrun runner`
# processes, each reaching the emulator through its own relay that can fail) while faults
# land at random moments: runners SIGKILLed or SIGTERMed and replaced, the store and queue
# refusing connections or answering 503, messages duplicated, job containers killed, one
# runner partitioned from the store, a runner on a skewed clock, runners SIGKILLed during
# a push or a pull request call, a lease lapsing during a run's final write.
#
#   scripts/soak.sh [--runs N] [--runners N] [--seed N] [--agent-sleep SECS]
#                   [--max-fault-gap SECS] [--deadline SECS]
#
# Defaults: 30 runs, 2 runners, seed 42, the agent sleeps 2 s in specify, a fault at
# least every 6 s, 900 s for every run to settle. The same seed gives the same fault
# schedule (what the faults hit still depends on timing).
#
# Prints faults injected (by kind), runs submitted, succeeded, failed (by error code), and
# the counts that must be 0: lost runs (no final state), runs whose final state disagrees
# with what was pushed, duplicated pushes, duplicated pull requests, runs that reached a
# final state twice; then runs taken over and the wall time; writes the same to
# target/bench/soak.txt. Exit status: 0 when all those counts are 0, 1 otherwise.
#
# Set-up (idempotent): scripts/setup.sh (Docker, the job image, moto and the AWS CLI).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh --tests >&2
mkdir -p target/bench
cargo build --quiet -p specrun-runner --bin specrun
cargo run --quiet -p specrun-tests --bin specrun-soak -- "$@" | tee target/bench/soak.txt
