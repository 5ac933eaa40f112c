#!/usr/bin/env bash
# Set everything up (idempotent) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
# One pytest-xdist worker per core; a test file's tests stay on one worker (module fixtures are built once).
exec .venv/bin/python -m pytest -q -n "${DENSESSL_TEST_WORKERS:-auto}" --dist loadfile "$@"
