#!/usr/bin/env bash
# Everything CI checks: set-up, lint, types, then every test (unit and integration).
# Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh --for-tests
echo "test: ruff check"
.venv/bin/ruff check
echo "test: mypy"
.venv/bin/mypy
echo "test: pytest"
.venv/bin/pytest -q
