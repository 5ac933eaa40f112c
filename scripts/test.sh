#!/usr/bin/env bash
# Set everything up (idempotent) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
# The lint first (pyproject.toml [tool.ruff.lint]: pyflakes, pycodestyle E4/E7/E9, import order): seconds.
.venv/bin/ruff check .
# One pytest-xdist worker per core; a test file's tests stay on one worker (module fixtures are built once).
exec .venv/bin/python -m pytest -q -n "${DENSESSL_TEST_WORKERS:-auto}" --dist loadfile "$@"
