#!/usr/bin/env bash
# Stop the emulator localstack/start-moto.sh started (by the pid it recorded; nothing else).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MOTO_DIR="${MOTO_DIR:-$ROOT/.specrun/moto}"
pidfile="$MOTO_DIR/moto.pid"
if [ ! -f "$pidfile" ]; then
  echo "stop-moto: no $pidfile; nothing to stop" >&2
  exit 0
fi
pid="$(cat "$pidfile")"
if kill -0 "$pid" 2>/dev/null && grep -q moto "/proc/$pid/cmdline" 2>/dev/null; then
  kill "$pid"
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  echo "stop-moto: stopped pid $pid" >&2
else
  echo "stop-moto: pid $pid is not a running moto_server" >&2
fi
rm -f "$pidfile"
