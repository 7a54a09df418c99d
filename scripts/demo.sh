#!/usr/bin/env bash
# The offline CPU demo (README, "Demo"): TRADES vs TRADES+DAFA on synthetic data, per-class
# table and figure under runs/demo/. Sets up .venv if missing. Options: --seed N, --seeds 1,2,3,
# --quick (reduced run), --out DIR; any other option goes to train.py (e.g. --epochs 30).
source "$(dirname "$0")/_venv.sh"
exec "$PYTHON_BIN" scripts/demo.py "$@"
