"""Reproduce the paper's Table 1: train every method and seed, evaluate each final checkpoint per
class (clean, PGD-20, AutoAttack), and write the table with the paper's numbers beside ours.

    python scripts/reproduce.py --protocol paper --dataset cifar10 --methods trades,dafa \
        --seeds 1,2,3 --jobs 2 --out results/cifar10
    python scripts/reproduce.py --protocol tiny --methods trades,dafa --seeds 1,2 --out runs/tiny

Every run is a train.py process and every evaluation an eval.py process, --jobs of them at a time
(one CPU thread each on the CPU). A method that branches off another run (fairness.Method.
branches_from: DAFA off the plain run at its epoch tau) starts from the same seed's run of its
parent, so the shared epochs are trained once per seed. Which methods exist, their losses and
their validation splits come from the method registry (fairness.METHODS). Rerunning the same
command skips what is finished, resumes unfinished runs from their latest checkpoints and retries
failed ones; a failure is reported at the end (with its log), and what depends on it is reported
as blocked.
Options it does not know go to every train.py run (e.g. --data_dir, --amp none).

This is the command line of the benchmark/ package (protocols, plan, processes, tables).

Outputs in --out: runs/<method>/seed<N>/ (train.py's run folder, eval.py's results, the logs of
both), table.md, results.json and per_class.png.
"""
import argparse
import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmark.protocols import PROTOCOLS, variants  # noqa: E402  (after the path set-up)
from benchmark.reproduce import reproduce, resolve  # noqa: E402
from engine.cli import ArgumentParser, UserError  # noqa: E402


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split('\n\n')[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--protocol', choices=tuple(PROTOCOLS), default='paper')
    p.add_argument('--dataset', choices=('cifar10', 'cifar100', 'stl10', 'folder'),
                   default='cifar10', help='ignored by --protocol tiny (synthetic data); '
                   'folder: --data_dir DIR with train/<class>/ and test/<class>/')
    p.add_argument('--paper_dataset', choices=('cifar10', 'cifar100', 'stl10'),
                   help="whose paper numbers to show beside ours (default: --dataset; for "
                        "'folder', cifar10)")
    p.add_argument('--data_label', help='how the table names the data, e.g. "CIFAR-10 (JPEG '
                   'copy)" (default: the dataset name)')
    p.add_argument('--methods', default='trades,dafa',
                   help=f"comma-separated, from {', '.join(variants())}; a branched method "
                        'adds the method it branches off')
    p.add_argument('--seeds', default='1,2,3', help='comma-separated integers')
    p.add_argument('--recipe', choices=('shared', 'official'), default='shared',
                   help="shared: every method on the protocol's TRADES recipe (the DAFA "
                        "paper's comparison); official: each baseline on its own published "
                        'recipe (epochs scaled with the protocol, schedule, weight decay, beta, '
                        'attack, model, FRL fine-tuning the TRADES run; fairness.Method.'
                        'official_args), DAFA and the plain runs on the shared one')
    p.add_argument('--jobs', type=int, default=2, help='runs and evaluations at a time (two '
                   'training processes share one GPU at ~1.95x the throughput of one)')
    p.add_argument('--out', required=True, help='results folder')
    p.add_argument('--device', choices=('auto', 'cuda', 'cpu'), default='auto')
    p.add_argument('--attack', choices=('pgd', 'all'), default='all',
                   help='evaluation: all = clean, PGD-20 and AutoAttack (the table); pgd = '
                        'without AutoAttack')
    p.add_argument('--select', choices=('final', 'best_val'), default='final',
                   help="which checkpoint of each run the table reports: its final model, or "
                        'its best epoch on a validation split (train.py --keep_best val, by '
                        'PGD average unless --best_criterion is passed on); a method without '
                        "its own split then holds out the smallest of the baselines' (CFA's)")
    p.add_argument('--reuse_other_code', action='store_true',
                   help='reuse runs and results in --out made by another version of the code '
                        '(another code fingerprint: engine/identity.py); the table lists which '
                        'code made which run. Default: such a run is refused, by name')
    p.add_argument('--epochs', type=int, help="override the protocol's epochs")
    p.add_argument('--n_eval', type=int, help="override the protocol's evaluation subset")
    p.add_argument('--n_autoattack', type=int,
                   help="override the protocol's AutoAttack subset (of the evaluated images)")
    p.add_argument('--sweep', metavar='FLAG=V1,V2,...',
                   help='a sensitivity study: every run whose recipe has train.py --FLAG is made '
                        'once per value (runs/<method>/FLAG=V/seed<N>); runs without it, e.g. '
                        "a DAFA sweep's TRADES warm-ups, are shared. The table has a row per "
                        'value and sweep.png plots average and worst class against it')
    args, train_args = p.parse_known_args(argv)
    try:
        return resolve(args, train_args)  # checked before anything is trained
    except UserError as err:
        p.error(str(err))


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM as Ctrl-C: the runs in flight are stopped too


def main(argv=None) -> int:
    """The exit status: 0 when every task finished, 1 when some did not, 2 for a user's
    mistake (one `error:` line), 130 when interrupted."""
    try:
        args = parse_args(argv)
        if __name__ == '__main__':
            signal.signal(signal.SIGTERM, _interrupt)
        return reproduce(args)
    except UserError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('error: interrupted; the runs in flight were stopped. Rerun the same command to '
              'resume them.', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
