"""Adversarial training (TRADES or PGD-AT), optionally with a robust-fairness method (DAFA, WAT,
FRL, CFA, BAT), on one device or several (torchrun).

    python train.py --model_dir runs/trades_dafa --rob_fairness_algorithm dafa
    python train.py --help       # every flag, by group (engine/arguments.py)

Reads top to bottom: parse and check the arguments (engine/arguments.py), set up the device and
the processes, then engine.start.build() makes the run (data, model, optimizer, method; a new
run, a resume, a branch or a fine-tune) and engine.fit.fit() trains it epoch by epoch. The method
(dafa/, fairness/) owns everything method-specific, e.g. DAFA's warm-up, its class similarity and
its weights.
"""
import sys

from engine import device as engine_device
from engine import distributed, run, start
from engine.arguments import parse_args
from engine.cli import run_main
from engine.fit import fit


def main(argv=None) -> None:
    args = parse_args(argv)
    device = engine_device.setup(args.device, tf32=args.tf32)  # first: before torch starts threads
    dctx = distributed.setup(device.type)  # torchrun: this process's rank; else world size 1
    # One writer per run folder (rank 0 writes for all processes).
    release, note = run.lock(args.model_dir, '--model_dir') if dctx.is_main else (None, '')
    try:
        fit(start.build(args, device, dctx), note)  # no frame of main holds the run at shutdown
    finally:
        if release:
            release()
        distributed.shutdown(dctx)


def cli(argv=None) -> int:
    """main, with a user's mistake reported as one `error: ...` line; the exit status."""
    return run_main(main, argv)


if __name__ == '__main__':
    sys.exit(cli())
