#!/usr/bin/env bash
# scripts/reproduce.py with the project's .venv (set up if missing); all options pass through, e.g.
#   bash scripts/reproduce.sh --protocol tiny --methods trades,dafa --seeds 1,2 --out runs/tiny
source "$(dirname "$0")/_venv.sh"
exec "$PYTHON_BIN" scripts/reproduce.py "$@"
