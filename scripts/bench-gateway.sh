#!/usr/bin/env bash
# The model gateway's added latency per model request: time to the first byte and to the
# end of a streamed answer, direct to a local upstream versus through the gateway (both on
# loopback, so what is measured is the gateway itself), then four runs' gateways streaming
# at once and the process's memory before and after. Prints one JSON object.
#
# Usage: scripts/bench-gateway.sh [REQUESTS]   (default 200; --release build)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --release -p specrun-gateway --example latency -- "${1:-200}"
