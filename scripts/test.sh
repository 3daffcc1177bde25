#!/usr/bin/env bash
# Sets everything up, then runs the whole quality gate: ruff, mypy --strict, import-linter,
# the unit tier (no root) and the system tier (root, real namespaces). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff";          ruff check .
echo "== mypy";          mypy
echo "== import-linter"; lint-imports
echo "== unit tests";    pytest -q tests/unit bench/tests "$@"
if [ "$(id -u)" = 0 ]; then
  echo "== system tests"; pytest -q tests/system "$@"
else
  echo "system tests need root: run this script as root" >&2
  exit 1
fi
