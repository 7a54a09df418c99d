"""Per-class evaluation of a checkpoint: clean, PGD-20 and AutoAttack accuracy, average and
worst class, confusions, rho against a baseline, and figures.

    python eval.py --checkpoint runs/trades_dafa/checkpoint-latest.pt --attack all
    python eval.py --checkpoint official.pt --model resnet --dataset cifar10 --n_eval 1000
    python eval.py --compare runs/trades/eval_all_epoch110.json \
        runs/trades_dafa/eval_all_epoch110.json

Writes eval_<attack>_<what>[_n<N>][_aa<M>].json and PNG figures into --out (default: the
checkpoint's folder), <what> being epoch<E> for our checkpoints (best<split>_epoch<E> for a
train.py --keep_best checkpoint-best.pt) and sha<hash> for others; the JSON schema is in
evaluation/schema.py.
"""
import argparse
import os
import sys

from engine import run
from engine.cli import UserError, run_main
from evaluation import figures, schema, tables
from evaluation.arguments import parse_args
from evaluation.checkpoint_io import read_checkpoint
from evaluation.job import prepare, run_and_write
from fairness import METHODS


def compare(args) -> None:
    results = [(path, schema.read_result(path, '--compare')) for path in args.compare]
    text, markdown = tables.compare_tables(results)
    print(text + '\n\n' + markdown + '\n\nHow the class accuracies spread:\n\n'
          + tables.spread_table(results) + '\n\n'
          + '\n'.join(tables.comparison_notes(results) + tables.machine_lines(results)))
    out = args.out or os.path.dirname(os.path.abspath(args.compare[0]))
    run.make_folder(out, '--out')
    print('figure: ' + figures.compare_figure(results,
                                              os.path.join(out, 'compare_per_class.png')))


def evaluate(args) -> None:
    job = prepare(args)
    written, done = [], None
    if args.attack == 'all':
        # PGD's result is written before AutoAttack starts. Its figures (PGD's bars and
        # confusion) are the full result's too: drawn here only if AutoAttack does not finish.
        done, pgd_result, paths = run_and_write(job, 'pgd', draw=False)
        written += paths
        print('wrote: ' + ', '.join(paths), flush=True)
    try:
        _, result, paths = run_and_write(job, args.attack, done)
    except BaseException:
        if done is not None:
            stem = os.path.splitext(os.path.basename(written[0]))[0]
            figures.evaluation_figures(pgd_result, job.out, stem)
        raise
    written += paths
    print('\n'.join(tables.attack_notes(result) + ['', tables.per_class_table(result), '']
                    + tables.confusion_lines(result)))
    print('time: ' + ', '.join(f'{k} {v:.1f} s' for k, v in result['time_s'].items()))
    method = job.ckpt.method
    if method is not None and method['name'] in METHODS:
        written += METHODS[method['name']].figures(method['state'], job.class_names, job.out)
    print('wrote: ' + ', '.join(written))
    print(tables.summary_line(result))


def curves(args) -> None:
    rows = run.metrics_rows(args.curves)
    if not rows:
        raise UserError(f'--curves {args.curves}: no metrics.jsonl rows there; pass a run folder '
                        'of train.py with at least one finished epoch.')
    ckpt = read_checkpoint(run.checkpoint_path(args.curves))
    if not isinstance(ckpt.args, dict):
        raise UserError(f'--curves {args.curves}: its checkpoint holds no train.py arguments; '
                        'pass a run folder of train.py.')
    # The run's arguments as its checkpoint holds them (args.json is a copy for reading).
    run_args = argparse.Namespace(**ckpt.args)
    method = METHODS.get(str(run_args.rob_fairness_algorithm))
    epoch = method.branch_epoch(run_args) if method else None
    marks = {f'{method.name} from epoch {epoch + 1}': epoch} if epoch else {}
    weights = rows[-1].get('method_state', {}).get('class_weights')
    out = args.out or args.curves
    run.make_folder(out, '--out')
    print('figure: ' + figures.curves_figure(rows, ckpt.class_names, os.path.join(
        out, 'curves.png'), marks=marks, class_weights=weights))


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.curves:
        curves(args)
    elif args.compare:
        compare(args)
    else:
        evaluate(args)


def cli(argv=None) -> int:
    """main, with a user's mistake reported as one `error: ...` line; the exit status."""
    return run_main(main, argv)


if __name__ == '__main__':
    sys.exit(cli())
