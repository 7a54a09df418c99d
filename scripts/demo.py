"""The offline CPU demo: TRADES and TRADES+DAFA on synthetic data, evaluated per class.

    python scripts/demo.py                    # seed 1, about 1.5 minutes on 2 CPU cores
    python scripts/demo.py --seeds 1,2,3      # the per-seed table of docs/demo.md
    python scripts/demo.py --quick            # reduced (the test suite's run)
    python scripts/demo.py --epochs 30 --dafa_warmup 19   # any other option goes to train.py

Per seed: trains TRADES with small-cnn (train.py), branches TRADES+DAFA off its warm-up
checkpoint (epoch tau), evaluates both per class on the clean and PGD-20 test set (eval.py) and
prints the paper's Table 1 layout (eval.py --compare), DAFA's class weights and the per-class
PGD-20 accuracies; eval.py --compare writes the grouped per-class figure
<out>/seed<N>/compare_per_class.png. The numbers of every seed go to <out>/summary.json.

The synthetic data and every setting are in DEMO_ARGS below; docs/demo.md explains them.
"""
import contextlib
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402  (after the path set-up)

from engine import checkpoint, run  # noqa: E402
from engine.cli import ArgumentParser, run_main  # noqa: E402
from engine import device as engine_device  # noqa: E402

# Before anything else runs torch code: flushing denormals is a per-thread setting that torch's
# worker threads inherit only when they start after it (see engine/device.py).
engine_device.setup('cpu')

import eval as eval_cli  # noqa: E402
import train  # noqa: E402

# The demo data: 10 classes of 8 x 8 images, one "star" group of five close classes (g0a is the
# hub, 1.1 from each of the spokes g0b..g0e, which are 1.1 * sqrt(2) = 1.56 from each other) and
# five far classes (2.0 from every class), Gaussian pixel noise of std 0.2.
DEMO_SYNTHETIC = [
    '--synthetic_image_size', '8',
    '--synthetic_close_groups', '0,1,2,3,4',
    '--synthetic_group_layout', 'star',
    '--synthetic_close_distance', '1.1',
    '--synthetic_far_distance', '2.0',
    '--synthetic_noise', '0.2',
    '--synthetic_n_train_per_class', '500',
    '--synthetic_n_test_per_class', '500',
]
# The training recipe: the paper's TRADES settings (eps 8/255, 10 steps of 2/255, beta 6,
# SGD lr 0.1 with the bag-of-tricks steps at epochs-10 and epochs-5), scaled down in epochs.
DEMO_ARGS = ['--dataset', 'synthetic', '--model', 'small-cnn', '--device', 'cpu',
             '--loss', 'trades', '--batch_size', '128', '--lr', '0.1',
             '--lr_schedule', 'bag_of_tricks', '--epsilon', '0.031', '--pgd_num_steps', '10',
             '--pgd_step_size', '0.007', '--beta', '6.0',
             '--eval_freq', '1000', '--save_freq', '1000', '--log_interval', '1000'] \
    + DEMO_SYNTHETIC
DEMO_EPOCHS = 20      # lr 0.1 for epochs 1-9, 0.01 for 10-14, 0.001 for 15-20
DEMO_WARMUP = 10      # tau: the similarity is recorded during epoch 10
DEMO_LAMBDA = 0.5     # see docs/demo.md: 1.0 overshoots on this data

# --quick: the same pipeline on a sliver of the data, for the test suite (well under a minute).
# Constant lr 0.1 ('trades' steps only from epoch 75): bag_of_tricks would start at 0.001.
QUICK_ARGS = ['--synthetic_n_train_per_class', '40', '--synthetic_n_test_per_class', '10',
              '--batch_size', '100', '--pgd_num_steps', '3', '--pgd_step_size', '0.015',
              '--lr_schedule', 'trades']
QUICK_EPOCHS, QUICK_WARMUP = 3, 2


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split('\n\n')[0], epilog='Any other option is passed '
                       'to both train.py runs (see python train.py --help).')
    p.add_argument('--seed', type=int, default=1, help='seed of the data and the training')
    p.add_argument('--seeds', help='several seeds, e.g. 1,2,3 (overrides --seed); ends with '
                   'a per-seed table')
    p.add_argument('--out', help='output folder (default: runs/demo, runs/demo_quick with '
                   '--quick); each seed goes to <out>/seed<N>')
    p.add_argument('--quick', action='store_true', help=f'reduced run: {QUICK_EPOCHS} epochs '
                   'on 40 training images per class (a smoke test, not a result)')
    p.add_argument('--epochs', type=int, help=f'training epochs (default {DEMO_EPOCHS})')
    p.add_argument('--dafa_warmup', type=int, help=f'tau, where DAFA branches off TRADES '
                   f'(default {DEMO_WARMUP})')
    p.add_argument('--dafa_lambda', type=float, default=DEMO_LAMBDA, help='DAFA lambda')
    p.add_argument('--threads', type=int, default=1, help='CPU threads for torch. 1 keeps the '
                   "numbers independent of the machine's core count (docs/demo.md's were "
                   'measured with 1); 2 ran a TRADES step about 1.4x faster on 2 cores')
    args, train_extra = p.parse_known_args(argv)
    args.train_extra = train_extra
    try:
        args.seeds = [int(s) for s in args.seeds.split(',')] if args.seeds else [args.seed]
    except ValueError:
        p.error(f'--seeds must be comma-separated integers, got {args.seeds!r}.')
    if args.epochs is None:
        args.epochs = QUICK_EPOCHS if args.quick else DEMO_EPOCHS
    if args.dafa_warmup is None:
        args.dafa_warmup = QUICK_WARMUP if args.quick else DEMO_WARMUP
    if not 1 <= args.dafa_warmup < args.epochs:
        p.error(f'need 1 <= --dafa_warmup < --epochs, got {args.dafa_warmup} and {args.epochs}')
    if args.out is None:
        args.out = os.path.join(ROOT, 'runs', 'demo_quick' if args.quick else 'demo')
    return args


def train_args(args, seed: int) -> list:
    return (DEMO_ARGS + (QUICK_ARGS if args.quick else [])
            + ['--epochs', str(args.epochs), '--dafa_warmup', str(args.dafa_warmup),
               '--dafa_lambda', str(args.dafa_lambda), '--seed', str(seed), '--overwrite']
            + args.train_extra)


def quietly(log_path, fn, *a):
    """Run fn(*a) with its stdout going to log_path (tqdm's bars, on stderr, stay visible)."""
    with open(log_path, 'w') as f, contextlib.redirect_stdout(f):
        return fn(*a)


def step(text: str) -> None:
    print(f'\n== {text}', flush=True)


def run_seed(args, seed: int) -> dict:
    out = os.path.join(args.out, f'seed{seed}')
    trades, dafa = os.path.join(out, 'trades'), os.path.join(out, 'trades_dafa')
    os.makedirs(out, exist_ok=True)
    base = train_args(args, seed)
    times = {}

    step(f'seed {seed}: TRADES, {args.epochs} epochs -> {trades}')
    start = time.time()
    train.main(base + ['--model_dir', trades])
    times['trades_s'] = time.time() - start

    warmup = run.checkpoint_path(trades, args.dafa_warmup)
    step(f'seed {seed}: TRADES+DAFA (lambda {args.dafa_lambda:g}), epochs '
         f'{args.dafa_warmup + 1}-{args.epochs}, branched off {warmup}')
    start = time.time()
    train.main(base + ['--model_dir', dafa, '--rob_fairness_algorithm', 'dafa',
                       '--resume', warmup])
    times['dafa_s'] = time.time() - start

    step(f'seed {seed}: per-class evaluation, clean and PGD-20 (eval.py; full reports in '
         f'{out}/*/eval_pgd.log)')
    start = time.time()
    results = {}
    for name, folder in (('trades', trades), ('trades_dafa', dafa)):
        argv = ['--checkpoint', run.checkpoint_path(folder), '--attack', 'pgd',
                '--device', 'cpu', '--seed', str(seed), '--no_progress']
        quietly(os.path.join(folder, 'eval_pgd.log'), eval_cli.main, argv)
        with open(run.result_path(folder, 'pgd', None, args.epochs)) as f:
            results[name] = dict(json.load(f), file=f.name)
        print(f"{name}: {results[name]['time_s']['total']:.1f} s", flush=True)
    times['eval_s'] = time.time() - start

    step(f'seed {seed}: result (eval.py --compare)')
    eval_cli.main(['--compare', run.result_path(trades, 'pgd', None, args.epochs),
                   run.result_path(dafa, 'pgd', None, args.epochs), '--out', out])
    summary = summarize(seed, results, out, times)
    print_details(summary, args)
    return summary


def summarize(seed: int, results: dict, out: str, times: dict) -> dict:
    ckpt = checkpoint.load(run.checkpoint_path(os.path.join(out, 'trades_dafa')))
    state = ckpt['method']['state']
    row = {'seed': seed, 'class_names': results['trades']['class_names'],
           'class_weights': state['class_weights'].tolist(),
           'similarity_diag': state['similarity'].diagonal().tolist(),
           'figure': os.path.join(out, 'compare_per_class.png'),
           'result_files': {name: r['file'] for name, r in results.items()}, **times}
    for name, result in results.items():
        row[name] = {ev: {k: result[ev][k] for k in ('avg', 'worst', 'worst_class', 'per_class')}
                     for ev in ('clean', 'pgd20')}
    return row


def print_details(row: dict, args) -> None:
    names = row['class_names']
    print(f"\nDAFA class weights W (lambda {args.dafa_lambda:g}, from the class similarity S "
          f"recorded during epoch {args.dafa_warmup}; 1 = plain TRADES):")
    print(' ' * 13 + ''.join(f'{n:>7}' for n in names))
    print(f"{'S[i,i]':<13}" + ''.join(f'{v:7.2f}' for v in row['similarity_diag']))
    print(f"{'W':<13}" + ''.join(f'{v:7.2f}' for v in row['class_weights']))
    print('PGD-20 accuracy per class (%):')
    for name, label in (('trades', 'TRADES'), ('trades_dafa', 'TRADES+DAFA')):
        print(f'{label:<13}' + ''.join(f'{v:7.1f}' for v in row[name]['pgd20']['per_class']))
    a, b = row['trades']['pgd20'], row['trades_dafa']['pgd20']
    print(f"worst-class PGD-20: TRADES {a['worst']:.2f} ({a['worst_class']}) -> TRADES+DAFA "
          f"{b['worst']:.2f} ({b['worst_class']}), {b['worst'] - a['worst']:+.2f}; average "
          f"{a['avg']:.2f} -> {b['avg']:.2f}, {b['avg'] - a['avg']:+.2f}")
    print(f"time: TRADES {row['trades_s']:.0f} s, DAFA {row['dafa_s']:.0f} s, evaluation "
          f"{row['eval_s']:.0f} s")
    print(f"figure: {row['figure']}")


def seed_table(rows: list) -> str:
    """Markdown: one line per seed, PGD-20 average and worst class of both methods."""
    lines = ['| seed | TRADES avg | TRADES worst | TRADES+DAFA avg | TRADES+DAFA worst | '
             'worst change | avg change |', '|---:|---:|---:|---:|---:|---:|---:|']
    for r in rows:
        a, b = r['trades']['pgd20'], r['trades_dafa']['pgd20']
        lines.append(f"| {r['seed']} | {a['avg']:.2f} | {a['worst']:.2f} ({a['worst_class']}) | "
                     f"{b['avg']:.2f} | {b['worst']:.2f} ({b['worst_class']}) | "
                     f"{b['worst'] - a['worst']:+.2f} | {b['avg'] - a['avg']:+.2f} |")
    return '\n'.join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    rows = [run_seed(args, seed) for seed in args.seeds]
    with open(os.path.join(args.out, 'summary.json'), 'w') as f:
        json.dump({'argv': sys.argv[1:] if argv is None else argv, 'seeds': rows,
                   'total_s': time.time() - start}, f, indent=1)
    if len(rows) > 1:
        step('per seed, PGD-20 (%)')
        print(seed_table(rows))
    print(f'\ndemo done in {time.time() - start:.0f} s; summary: '
          f"{os.path.join(args.out, 'summary.json')}")


if __name__ == '__main__':
    sys.exit(run_main(main))
