"""Seconds per training epoch of every method of a leaderboard track, measured back to back on
one machine, so that the leaderboard's time column compares the methods and not the load that
each run happened to share its machine with.

    python scripts/time_methods.py --protocol cpu --dataset folder --data_dir DIR \
        --out runs/timing-cpu [--rounds 2] [train.py options ...]
    cp runs/timing-cpu/timing.json leaderboard/cpu/timing.json

A round trains, with scripts/reproduce.py, every method (seed 1, the track's recipe, its
validation split) for EPOCHS = 2 epochs with the warm-up shortened to 1 epoch, so a branched
method's epoch 2 runs its rule (DAFA's weights, FAAL's solver, HAM's mining) and every method's
epoch 2 is past the process's first steps. The figure per method and round: epoch 2's steps plus
the method's work between epochs (benchmark.tables.train_seconds; the validation-split selection
is left out, as for the runs). Rounds alternate the methods' order; timing.json keeps every
round and each method's minimum, with the machine, the load average before and after, the
code's fingerprint and this command. Run it on a machine that runs nothing else.
"""
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmark.leaderboard import read_json  # noqa: E402
from benchmark.protocols import PROTOCOLS  # noqa: E402
from benchmark.tables import train_seconds  # noqa: E402
from engine import identity, run  # noqa: E402
from engine.cli import ArgumentParser, UserError, run_main  # noqa: E402

EPOCHS = 2
METHODS = ('trades', 'pgd', 'dafa', 'wat', 'frl', 'cfa', 'bat', 'faal', 'absld', 'csr', 'ham')


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--protocol', choices=tuple(PROTOCOLS), required=True)
    p.add_argument('--out', required=True, help='folder of the rounds and timing.json')
    p.add_argument('--methods', default=','.join(METHODS))
    p.add_argument('--rounds', type=int, default=2)
    args, passed = p.parse_known_args(argv)
    args.methods = [m for m in args.methods.split(',') if m]
    if 'trades' not in args.methods or args.rounds < 1:
        p.error('--methods must include trades (the reference) and --rounds must be >= 1.')
    args.passed = passed  # to scripts/reproduce.py, then to train.py
    return args


def reproduce(command) -> None:
    done = subprocess.run(command, stdout=subprocess.DEVNULL)
    if done.returncode:
        raise UserError(f'scripts/reproduce.py exited {done.returncode} for '
                        f"{' '.join(command[2:])}: see its log above and the run's folder.")


def time_round(args, folder: str, order) -> dict:
    """{method: seconds of epoch 2} of one round, each method trained in order."""
    seconds = {}
    for method in order:
        command = [sys.executable, os.path.join(ROOT, 'scripts', 'reproduce.py'),
                   '--protocol', args.protocol, '--methods', method, '--seeds', '1',
                   '--epochs', str(EPOCHS), '--n_eval', '100', '--attack', 'pgd',
                   '--select', 'best_val', '--jobs', '1', '--out', folder,
                   '--dafa_warmup', '1', '--eval_freq', str(EPOCHS), *args.passed]
        reproduce(command)
        run_folder = os.path.join(folder, 'runs', method, 'seed1')
        seconds[method] = train_seconds(run_folder) - train_seconds(run_folder, upto=EPOCHS - 1)
        print(f'{method}: {seconds[method]:.2f} s', flush=True)
    return seconds


def main(argv=None) -> None:
    args = parse_args(argv)
    if os.path.exists(os.path.join(args.out, 'round1')):
        # reproduce.py would reuse those runs, and their seconds were timed then, not now
        raise UserError(f'{args.out} holds the rounds of an earlier timing; pass a new --out.')
    os.makedirs(args.out, exist_ok=True)
    load_before = os.getloadavg()
    rounds = []
    for r in range(args.rounds):
        order = args.methods if r % 2 == 0 else args.methods[::-1]
        started = time.time()
        seconds = time_round(args, os.path.join(args.out, f'round{r + 1}'), order)
        rounds.append({'order': list(order), 's_per_epoch': seconds,
                       'wall_s': round(time.time() - started, 1)})
    best = {m: min(r['s_per_epoch'][m] for r in rounds) for m in args.methods}
    run.save_json(args.out, 'timing.json', {
        'track': args.protocol, 'epoch': EPOCHS, 'warmup': 1,
        'what': ('seconds of epoch 2 of a 2-epoch run (warm-up 1): its steps and the '
                 "method's work between epochs; the minimum over rounds"),
        'command': 'python scripts/time_methods.py ' + ' '.join(argv or sys.argv[1:]),
        # the timed processes' (reproduce.py gives each run its share of the threads)
        'machine': read_json(os.path.join(args.out, 'round1', 'runs', 'trades', 'seed1',
                                              'recipe.json'))['machine'],
        'code': identity.code_version(),
        'load_average': {'before': list(load_before), 'after': list(os.getloadavg())},
        'rounds': rounds, 's_per_epoch': best})
    for m in args.methods:
        print(f"{m}: {best[m]:.2f} s per epoch, {best[m] / best['trades']:.2f}x TRADES")


if __name__ == '__main__':
    sys.exit(run_main(main))
