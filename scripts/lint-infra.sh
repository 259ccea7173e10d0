#!/usr/bin/env bash
# Lint the CloudFormation template(s) under infra/ with cfn-lint (installed with pip, quietly,
# when missing). Fails on any error or warning; informational findings are printed but pass.
# Checks the template is ignored on purpose carry a documented Metadata cfn-lint ignore_checks.
#
#   scripts/lint-infra.sh [extra cfn-lint arguments]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if ! command -v cfn-lint >/dev/null 2>&1; then
  echo "lint-infra: installing cfn-lint" >&2
  python3 -m pip install --quiet --disable-pip-version-check cfn-lint >&2
  hash -r
fi
CFN_LINT="$(command -v cfn-lint || true)"
if [ -z "$CFN_LINT" ]; then
  CFN_LINT="python3 -m cfnlint"
fi

templates=(infra/*.yaml)
echo "lint-infra: $($CFN_LINT --version) on ${templates[*]}" >&2
# --include-checks I shows informational findings too; the exit code is what decides:
# cfn-lint exits with a bit mask: 2 = error, 4 = warning, 8 = informational.
set +e
$CFN_LINT --include-checks I --format parseable "$@" -- "${templates[@]}"
rc=$?
set -e
if (( rc & 2 )); then
  echo "lint-infra: FAILED (errors)" >&2
  exit 1
fi
if (( rc & 4 )); then
  echo "lint-infra: FAILED (warnings: fix them, or ignore one in the template's Metadata with the reason)" >&2
  exit 1
fi
if (( rc & ~(2|4|8) )); then
  echo "lint-infra: cfn-lint failed to run (exit $rc)" >&2
  exit 1
fi
echo "lint-infra: OK" >&2
