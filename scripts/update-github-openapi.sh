#!/usr/bin/env bash
# Regenerates tests/fixtures/github-openapi-subset.json: the operations of GitHub's REST API
# that specrun calls, cut out of GitHub's OpenAPI description (generated/api.github.com.json
# in the npm package @octokit/openapi) with every $ref resolved. The fake forge in
# tests/src/forge.rs checks each request and response against it.
#
# Usage: scripts/update-github-openapi.sh [VERSION]
#   VERSION: the @octokit/openapi version to use (default: the pinned one below; "latest" for
#   the newest). The registry is the one npm is configured with.
set -euo pipefail

version="${1:-23.0.2}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$(cd "$here/.." && pwd)/tests/fixtures/github-openapi-subset.json"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

(cd "$tmp" && npm pack --silent "@octokit/openapi@$version" >/dev/null)
tarball="$(ls "$tmp"/octokit-openapi-*.tgz)"
tar -xzf "$tarball" -C "$tmp" package/package.json package/generated/api.github.com.json
resolved="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$tmp/package/package.json")"
mkdir -p "$(dirname "$out")"
python3 "$here/github_openapi_subset.py" "$tmp/package/generated/api.github.com.json" "$out" \
    "@octokit/openapi $resolved generated/api.github.com.json"
echo "wrote $out ($(wc -c <"$out") bytes) from @octokit/openapi $resolved"
