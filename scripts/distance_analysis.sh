#!/usr/bin/env bash
# The distance analysis (README, "Distance analysis"): TRADES and TRADES+DAFA on the demo's
# synthetic data at several hub-spoke distances -> runs/distance_analysis/distance_analysis.png
# (--figure figs/distance_analysis.png updates the README's figure). Sets up .venv if
# missing. Options: --distances 0.7,0.9,..., --seed N, --jobs N, --out DIR, --figure PATH; any
# other option goes to scripts/demo.py and train.py.
source "$(dirname "$0")/_venv.sh"
exec "$PYTHON_BIN" scripts/distance_analysis.py "$@"
