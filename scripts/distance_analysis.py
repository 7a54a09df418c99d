"""The paper's motivating observation: robust fairness worsens as classes get closer, and a
class's adversarial errors go mostly to its most similar class.

    python scripts/distance_analysis.py                       # ~5 minutes on 2 CPU cores
    python scripts/distance_analysis.py --distances 0.8,1.2,2.0 --jobs 1
    python scripts/distance_analysis.py --runs results/cpu/runs/trades/seed*   # real images

With --runs (finished plain TRADES or PGD-AT runs of train.py, each evaluated by eval.py with
PGD), nothing is trained: for every class, its nearest class in the similarity the run
recorded during the warm-up (epoch tau: the p_i(j) DAFA's weights come from), and the share of
its PGD errors at the final model that go to that class, averaged over the runs, against the
share a uniform spread over the other classes would give (distance_real.png in --out by
default).

Takes the demo's data (scripts/demo.py: a star group of five close classes, the hub g0a and
the spokes g0b..g0e, plus five far classes) and sweeps the hub-spoke distance (the close group's
--synthetic_close_distance). At every distance it runs the whole demo: TRADES, TRADES+DAFA
branched off its warm-up, both evaluated per class with PGD-20 by eval.py. It then plots the
average and worst-class PGD-20 accuracy against the distance (distance_analysis.png in --out
by default) and prints a table, including where the worst class's PGD-20 errors go.

The runs are independent, so --jobs of them run at a time, each a single-threaded process.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
for path in (ROOT, HERE):
    if path not in sys.path:
        sys.path.insert(0, path)

import matplotlib  # noqa: E402
import torch  # noqa: E402

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

import demo  # noqa: E402
import train  # noqa: E402
from engine import checkpoint, identity, run  # noqa: E402
from engine.cli import UserError, run_main  # noqa: E402
from evaluation.runner import display_name, pgd_steps  # noqa: E402
from data import synthetic_config_from_args  # noqa: E402
from data.synthetic import attack_reach  # noqa: E402

# Hub-spoke L2 distances. 1.1 is the demo's; 1.549 is the largest that fits with four spokes
# and five far classes 2.0 from everything (data.synthetic.max_close_distance).
DISTANCES = (0.7, 0.8, 0.9, 1.1, 1.3, 1.5)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog='Any other option '
                                'is passed to scripts/demo.py, and through it to train.py.')
    p.add_argument('--distances', default=','.join(map(str, DISTANCES)),
                   help='hub-spoke distances to sweep, comma-separated (L2, pixels in [0, 1])')
    p.add_argument('--seed', type=int, default=1)
    p.add_argument('--jobs', type=int, default=2, help='runs at a time (one CPU thread each)')
    p.add_argument('--out', default=os.path.join(ROOT, 'runs', 'distance_analysis'),
                   help='run folders, logs and results.json')
    p.add_argument('--figure', help='where the figure goes (default: distance_analysis.png, '
                   'or with --runs distance_real.png, in --out)')
    p.add_argument('--replot', action='store_true', help='train nothing: redraw the figure and '
                   'table from the runs already in --out')
    p.add_argument('--runs', nargs='+', metavar='RUN_DIR',
                   help='real images: analyse these finished plain runs instead (see above); '
                        '--figure defaults to distance_real.png in --out')
    args, demo_extra = p.parse_known_args(argv)
    if args.runs:
        if demo_extra:
            p.error(f'--runs takes no training options, got {demo_extra}.')
        args.figure = args.figure or os.path.join(args.out, 'distance_real.png')
        return args
    args.figure = args.figure or os.path.join(args.out, 'distance_analysis.png')
    args.distances = [float(d) for d in args.distances.split(',')]
    args.demo_extra = demo_extra
    if len(args.distances) < 2 or args.jobs < 1:
        p.error('need at least two --distances and --jobs >= 1')
    return args


def run_all(args) -> None:
    """Each distance is one scripts/demo.py process writing to <out>/d<distance>/."""
    pending = list(args.distances)
    running = {}
    env = dict(os.environ, OMP_NUM_THREADS='1')
    while pending or running:
        while pending and len(running) < args.jobs:
            d = pending.pop(0)
            folder = os.path.join(args.out, f'd{d:g}')
            run.make_folder(folder, '--out')
            cmd = [sys.executable, os.path.join(HERE, 'demo.py'), '--seed', str(args.seed),
                   '--out', folder, '--threads', '1', '--synthetic_close_distance', str(d),
                   *args.demo_extra]
            log = open(os.path.join(folder, 'demo.log'), 'w')
            running[d] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                           cwd=ROOT), log, time.time())
            print(f'distance {d:g}: started ({folder}/demo.log)', flush=True)
        time.sleep(0.2)  # a finished run is seen within 0.2 s
        for d, (proc, log, start) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[d]
            if proc.returncode != 0:
                for other, _, _ in running.values():
                    other.terminate()
                raise UserError(f'distance {d:g} failed (exit {proc.returncode}); see '
                                f'{log.name}')
            print(f'distance {d:g}: done in {time.time() - start:.0f} s', flush=True)


def collect(args) -> list:
    rows = []
    for d in args.distances:
        folder = os.path.join(args.out, f'd{d:g}')
        with open(os.path.join(folder, 'summary.json')) as f:
            seed_row = json.load(f)['seeds'][0]
        with open(seed_row['result_files']['trades']) as f:
            trades = json.load(f)
        rows.append({'distance': d, **seed_row,
                     'group_error_share': group_error_share(trades),
                     'reach': hub_reach(folder, args.seed)})
    return rows


def group_error_share(result: dict) -> float:
    """Percent of the worst class's PGD-20 errors that predict a member of its close group
    (synthetic names: 'g<k><letter>'); nan when the worst class has no errors."""
    names = result['class_names']
    worst = names.index(result['pgd20']['worst_class'])
    row = result['confusion']['pgd20'][worst]
    errors = sum(row) - row[worst]
    if names[worst][0] != 'g' or errors == 0:
        return float('nan')
    group = [j for j, n in enumerate(names) if n[:2] == names[worst][:2] and j != worst]
    return 100.0 * sum(row[j] for j in group) / errors


def hub_reach(folder: str, seed: int) -> float:
    """Mean over the spokes of the L2 reach of the training epsilon along hub -> spoke."""
    # The run's arguments as its checkpoint holds them (args.json is a copy for reading).
    saved = checkpoint.load(run.checkpoint_path(os.path.join(folder, f'seed{seed}',
                                                             'trades')))['args']
    cfg = synthetic_config_from_args(argparse.Namespace(**saved))
    hub, *spokes = cfg.close_groups[0]
    return sum(attack_reach(cfg, seed, hub, s, saved['test_epsilon']) for s in spokes) / len(spokes)


def table(rows: list) -> str:
    lines = ['| hub-spoke distance | TRADES avg | TRADES worst | its errors into the group | '
             'TRADES+DAFA avg | TRADES+DAFA worst |', '|---:|---:|---:|---:|---:|---:|']
    for r in rows:
        a, b = r['trades']['pgd20'], r['trades_dafa']['pgd20']
        lines.append(f"| {r['distance']:g} | {a['avg']:.2f} | {a['worst']:.2f} "
                     f"({a['worst_class']}) | {r['group_error_share']:.0f}% | {b['avg']:.2f} | "
                     f"{b['worst']:.2f} ({b['worst_class']}) |")
    return '\n'.join(lines)


def figure(rows: list, path: str, seed: int) -> None:
    d = [r['distance'] for r in rows]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    worst_names = sorted({r['trades']['pgd20']['worst_class'] for r in rows})
    styles = (('trades', 'TRADES', '-', 'o'), ('trades_dafa', 'TRADES+DAFA', '--', 's'))
    for key, label, ls, marker in styles:
        names = {r[key]['pgd20']['worst_class'] for r in rows}
        worst_label = f' ({names.pop()})' if len(names) == 1 else ''
        ax.plot(d, [r[key]['pgd20']['avg'] for r in rows], ls=ls, marker=marker,
                color='#4c72b0', label=f'{label}: average')
        ax.plot(d, [r[key]['pgd20']['worst'] for r in rows], ls=ls, marker=marker,
                color='#c44e52', label=f'{label}: worst class{worst_label}')
    if len(worst_names) > 1:  # name the worst class of TRADES at each point
        for r in rows:
            ax.annotate(r['trades']['pgd20']['worst_class'],
                        (r['distance'], r['trades']['pgd20']['worst']),
                        textcoords='offset points', xytext=(0, -13), ha='center', fontsize=7,
                        color='#c44e52')
    reach = 2 * sum(r['reach'] for r in rows) / len(rows)
    ax.axvline(reach, color='gray', ls=':', lw=1)
    ax.text(reach, 52, f' 2 x attack reach ({reach:.2f}):\n closer than this, no linear rule\n'
            ' separates hub and spoke robustly', fontsize=7, color='gray')
    shares = [r['group_error_share'] for r in rows]
    ax.text(0.99, 0.36, f"TRADES's worst class: {', '.join(worst_names)}; "
            f'{min(shares):.0f}-{max(shares):.0f}% of its\nPGD-20 errors go to its close '
            'neighbours', transform=ax.transAxes, ha='right', fontsize=7.5)
    ax.set_xlim(min(min(d), reach) - 0.05, max(d) + 0.05)
    ax.set_xlabel('L2 distance between the hub g0a and each of its 4 close neighbours '
                  '(far classes: 2.0)')
    ax.set_ylabel('PGD-20 accuracy (%)')
    ax.set_ylim(0, 103)
    ax.set_title(f'Closer classes, worse robust fairness (synthetic, small-cnn, seed {seed})',
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc='lower right')
    fig.tight_layout()
    run.make_folder(os.path.dirname(os.path.abspath(path)), '--figure\'s folder')
    fig.savefig(path, dpi=100)
    plt.close(fig)


# What the analysis reads of a result is its PGD evaluation: AutoAttack's settings do not count.
_NOT_PGD = ('attacks.autoattack', 'evaluation.attack', 'evaluation.n_autoattack',
            'evaluation.aa_version', 'evaluation.aa_attacks')


def _pgd_identity(result: dict) -> dict:
    """The fields of a result's identity its PGD confusion depends on, less the run's seed
    (engine/identity.pooled_fields): equal for the seeds of one experiment."""
    return {field: value for field, value in identity.pooled_fields(result).items()
            if not any(field == f or field.startswith(f + '.') for f in _NOT_PGD)}


def run_errors(folder: str) -> dict:
    """A finished run's warm-up similarity and its final model's PGD confusion, from the
    eval.py results of that very file (its sha256); results of it that evaluate PGD
    differently are refused, naming the field."""
    path = run.checkpoint_path(folder)
    ckpt = checkpoint.load(path)  # a UserError naming the file when missing or unreadable
    if 'similarity' not in ckpt.get('records', {}):
        raise UserError(f'--runs {folder}: its checkpoint holds no warm-up similarity; pass '
                        'plain runs (--rob_fairness_algorithm none), which record it at epoch '
                        'tau.')
    sha, found = identity.file_sha256(path), []
    for name in sorted(os.listdir(folder)):
        if name.startswith('eval_') and name.endswith('.json'):
            try:
                with open(os.path.join(folder, name)) as f:
                    result = json.load(f)
                pgd = [k for k in result.get('confusion', {}) if pgd_steps(k) is not None]
            except (OSError, ValueError, AttributeError):
                continue  # torn or not a result
            # Results written before checkpoint_sha256 was recorded: by their epoch alone.
            if (pgd and result.get('epoch') == ckpt['epoch']
                    and result.get('checkpoint_sha256', sha) == sha):
                found.append((name, pgd[0], result))
    if not found:
        raise UserError(f'--runs {folder}: no eval.py result with PGD of its final checkpoint '
                        f'(epoch {ckpt["epoch"]}); run eval.py --checkpoint {path} first.')
    name, key, result = found[0]
    for other_name, _, other in found[1:]:
        diff = identity.differences(_pgd_identity(result), _pgd_identity(other))
        if diff:
            raise UserError(f'--runs {folder}: {name} and {other_name} evaluate its final model '
                            f'differently ({identity.describe(diff)}); move the one not to '
                            'analyse out of the folder.')
    record = ckpt['records']['similarity']
    return {'folder': folder, 'class_names': ckpt['class_names'], 'tau': record['epoch'],
            'similarity': record['value'].double(), 'attack': key,
            'confusion': result['confusion'][key], 'n_eval': result['n_eval'],
            'identity': _pgd_identity(result)}


def nearest_class_shares(runs: list) -> list:
    """Per class: its nearest class in the mean warm-up similarity, and the percent of its
    attacked errors predicting that class, per run and averaged."""
    names = runs[0]['class_names']
    if any(r['class_names'] != names for r in runs):
        raise UserError('--runs: the runs have different classes; pass runs of one dataset.')
    for other in runs[1:]:  # averaged as seeds: only the seeds of one experiment
        diff = identity.differences(runs[0]['identity'], other['identity'])
        if diff:
            raise UserError(f"--runs: {runs[0]['folder']} and {other['folder']} are not seeds of "
                            f'one experiment ({identity.describe(diff)}); pass runs of one '
                            'recipe, evaluated the same way.')
    similarity = torch.stack([r['similarity'] for r in runs]).mean(0)
    rows = []
    for i, name in enumerate(names):
        others = similarity[i].clone()
        others[i] = -1
        j = int(others.argmax())
        shares = []
        for r in runs:
            row = r['confusion'][i]
            errors = sum(row) - row[i]
            shares.append(100.0 * row[j] / errors if errors else float('nan'))
        seen = [v for v in shares if not math.isnan(v)]
        accuracy = [100.0 * r['confusion'][i][i] / sum(r['confusion'][i]) for r in runs]
        rows.append({'class': name, 'nearest': names[j], 'similarity': float(similarity[i, j]),
                     'error_share': sum(seen) / len(seen) if seen else float('nan'),
                     'error_share_per_run': shares,  # nan: a run without errors there
                     'accuracy': sum(accuracy) / len(accuracy)})
    return rows


def real_image_figure(rows: list, runs: list, path: str) -> None:
    k = len(rows)
    order = sorted(range(k), key=lambda i: rows[i]['accuracy'])  # worst class first
    fig, ax = plt.subplots(figsize=(8, 4.2))
    x = range(k)
    ax.bar(x, [rows[i]['error_share'] for i in order], color='#c44e52', alpha=0.8,
           label='share of its PGD errors that go to its nearest class')
    for run_index in range(len(runs)):
        ax.plot(x, [rows[i]['error_share_per_run'][run_index] for i in order], 'k.', ms=4,
                label='one run' if run_index == 0 else None)
    ax.axhline(100 / (k - 1), color='gray', ls='--', lw=1,
               label=f'uniform over the other {k - 1} classes ({100 / (k - 1):.0f}%)')
    ax.set_xticks(list(x))
    ax.set_xticklabels([f"{rows[i]['class']}\n-> {rows[i]['nearest']}\n"
                        f"{rows[i]['accuracy']:.0f}%" for i in order], fontsize=7)
    ax.set_ylabel("% of the class's PGD errors")
    ax.set_ylim(0, 118)
    ax.set_yticks(range(0, 101, 20))
    first = runs[0]
    ax.set_title(f"Where each class's {display_name(first['attack'])} errors go: to its nearest "
                 f"class in the warm-up similarity (epoch {first['tau']})?\nClasses by final "
                 f"{display_name(first['attack'])} accuracy, worst first; {len(runs)} run(s), "
                 f"{first['n_eval']} test images each", fontsize=9)
    ax.legend(fontsize=7.5, loc='upper center', ncol=3)
    ax.grid(alpha=0.3, axis='y')
    fig.tight_layout()
    run.make_folder(os.path.dirname(os.path.abspath(path)), '--figure\'s folder')
    fig.savefig(path, dpi=100)
    plt.close(fig)


def analyse_runs(args) -> None:
    runs = [run_errors(folder) for folder in args.runs]
    rows = nearest_class_shares(runs)
    real_image_figure(rows, runs, args.figure)
    lines = ['| class | final PGD accuracy | nearest class (warm-up similarity) | '
             'its PGD errors going there |', '|---|---:|---|---:|']
    for r in sorted(rows, key=lambda r: r['accuracy']):
        lines.append(f"| {r['class']} | {r['accuracy']:.1f}% | {r['nearest']} "
                     f"({r['similarity']:.3f}) | {r['error_share']:.0f}% |")
    print('\n'.join(lines))
    print(f"\nuniform over the other classes: {100 / (len(rows) - 1):.0f}%; runs: "
          f"{', '.join(args.runs)}\nfigure: {args.figure}")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.runs:
        analyse_runs(args)
        return
    # Fail at once on a bad pass-through option rather than in every worker.
    train.parse_args(demo.train_args(demo.parse_args(args.demo_extra), args.seed))
    start = time.time()
    if not args.replot:
        run_all(args)
    rows = collect(args)
    if not args.replot:
        with open(os.path.join(args.out, 'results.json'), 'w') as f:
            json.dump({'argv': sys.argv[1:] if argv is None else argv, 'rows': rows,
                       'total_s': time.time() - start}, f, indent=1)
    figure(rows, args.figure, args.seed)
    print('\nPGD-20 accuracy (%) against the hub-spoke distance, seed '
          f'{args.seed}:\n' + table(rows))
    print(f'\nfigure: {args.figure}\nresults: {os.path.join(args.out, "results.json")}\n'
          f'done in {time.time() - start:.0f} s')


if __name__ == '__main__':
    sys.exit(run_main(main))
