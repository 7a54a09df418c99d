# Sourced by the scripts: make .venv (Python >= 3.10) with requirements.txt if it is missing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ] || [ ! -f .venv/.requirements-installed ] \
    || ! cmp -s requirements.txt .venv/.requirements-installed; then
    "$PY" -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 needed"'
    "$PY" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -r requirements.txt
    cp requirements.txt .venv/.requirements-installed
fi
PYTHON_BIN="$ROOT/.venv/bin/python"
