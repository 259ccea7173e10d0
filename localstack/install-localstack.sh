#!/usr/bin/env bash
# Install LocalStack (the community runtime, no account needed) into a virtual environment
# under the cache directory, for running the serverless tests against it instead of moto:
#
#   localstack/install-localstack.sh          # prints the venv's python
#   SPECRUN_TEST_EMULATOR=localstack cargo nextest run -p specrun-tests --test serverless
#
# LocalStack 2026.3 needs Python >= 3.12: PYTHON (default: pyenv's newest 3.12+, else
# python3.13/python3.12 on PATH). Idempotent; the venv is kept in
# ${SPECRUN_CACHE_DIR:-~/.cache/specrun}/localstack-venv. Takes several minutes.
set -euo pipefail
CACHE_DIR="${SPECRUN_CACHE_DIR:-$HOME/.cache/specrun}"
VENV="$CACHE_DIR/localstack-venv"
VERSION="2026.3.0"
if [ -f "$VENV/.installed-$VERSION" ]; then
    echo "$VENV/bin/python"
    exit 0
fi
python="${PYTHON:-}"
if [ -z "$python" ] && command -v pyenv >/dev/null 2>&1; then
    for v in $(ls "$(pyenv root)/versions" 2>/dev/null | sort -V -r); do
        case "$v" in 3.1[2-9]*) python="$(pyenv root)/versions/$v/bin/python"; break ;; esac
    done
fi
if [ -z "$python" ]; then
    python="$(command -v python3.13 || command -v python3.12 || true)"
fi
if [ -z "$python" ]; then
    echo "install-localstack: no Python >= 3.12 found; set PYTHON" >&2
    exit 1
fi
echo "install-localstack: installing localstack-core $VERSION with $python into $VENV" >&2
rm -rf "$VENV"
"$python" -m venv "$VENV"
# cbor2 6 and pyOpenSSL 24.3+ break this LocalStack release.
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "localstack-core[runtime]==$VERSION" "cbor2<6" "pyOpenSSL<24.3" >&2
touch "$VENV/.installed-$VERSION"
echo "$VENV/bin/python"
