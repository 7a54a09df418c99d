"""The training machinery that train.py wires together: steps, schedules, checkpoints, logs."""
