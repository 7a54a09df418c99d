#!/usr/bin/env bash
# The test suite on CPU (what .ci/run calls): sets up .venv if missing, then runs pytest.
source "$(dirname "$0")/_venv.sh"
exec "$PYTHON_BIN" -m pytest -q tests "$@"
