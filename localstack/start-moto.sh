#!/usr/bin/env bash
# Start moto's S3/SQS (and CloudFormation, IAM, ...) emulator on loopback, in the background.
# Installs moto[server] with pip, quietly, when moto_server is missing. Idempotent: if the
# emulator already answers on the port, nothing is started.
#
#   localstack/start-moto.sh            # 127.0.0.1:4566
#   MOTO_PORT=4567 localstack/start-moto.sh
#
# Writes its pid to $MOTO_DIR/moto.pid and its log to $MOTO_DIR/moto.log
# (MOTO_DIR defaults to .specrun/moto in the repository). Stop it with localstack/stop-moto.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOST=127.0.0.1
PORT="${MOTO_PORT:-4566}"
MOTO_DIR="${MOTO_DIR:-$ROOT/.specrun/moto}"
URL="http://$HOST:$PORT"
log() { echo "start-moto: $*" >&2; }

# Any HTTP answer counts (moto answers / with an S3 listing; LocalStack too).
up() { [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$URL/" 2>/dev/null)" != 000 ]; }

if up; then
  log "an emulator already answers at $URL"
  echo "$URL"
  exit 0
fi

if ! command -v moto_server >/dev/null 2>&1; then
  log "installing moto[server]"
  python3 -m pip install --quiet --disable-pip-version-check 'moto[server]' >&2
  hash -r
fi

mkdir -p "$MOTO_DIR"
# setsid: the server outlives this script and its terminal; only loopback is bound.
setsid moto_server -H "$HOST" -p "$PORT" >"$MOTO_DIR/moto.log" 2>&1 < /dev/null &
echo $! > "$MOTO_DIR/moto.pid"

for _ in $(seq 1 100); do
  if up; then
    log "moto_server up at $URL (pid $(cat "$MOTO_DIR/moto.pid"), log $MOTO_DIR/moto.log)"
    echo "$URL"
    exit 0
  fi
  if ! kill -0 "$(cat "$MOTO_DIR/moto.pid")" 2>/dev/null; then
    log "moto_server exited; its log:"; cat "$MOTO_DIR/moto.log" >&2; exit 1
  fi
  sleep 0.1
done
log "moto_server did not answer at $URL within 10 s; its log:"; cat "$MOTO_DIR/moto.log" >&2
exit 1
