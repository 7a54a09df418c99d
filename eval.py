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
import hashlib
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

import torch

import defaults as D
from engine import device as engine_device
from engine import identity, run
from engine.cli import UserError, run_main
from evaluation import autoattack, figures, schema, tables
from evaluation.arguments import evaluation_settings, parse_args, settings_suffix
from evaluation.checkpoint_io import build_model, read_checkpoint
from evaluation.runner import ATTACK_CHOICES, run_evaluation
from evaluation.setup import load_test_set, resolve_setup, stratified_eval_subset
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


@dataclass
class Job:
    """What evaluate() has set up: the model, its test set and where results go."""
    args: argparse.Namespace
    ckpt: object       # evaluation.checkpoint_io.Checkpoint
    setup: object      # evaluation.setup.EvalSetup
    model: torch.nn.Module
    x: torch.Tensor
    y: torch.Tensor
    class_names: list
    baseline: Optional[dict]
    device: torch.device
    out: str
    tag: str           # what was evaluated: [best<split>_]epoch<E>, or sha<hash> for a foreign file
    n: Optional[int]   # the subset's size, None for the whole test set
    aa_samples: Optional[torch.Tensor]  # AutoAttack's subset (indices into x), None: all
    start: float
    provenance: dict   # the file, the data and the input convention (schema.build_result)


def evaluate(args) -> None:
    start = time.time()
    device = engine_device.setup(args.device)  # first: before any torch op starts threads
    ckpt = read_checkpoint(args.checkpoint, trusted=args.trust_checkpoint)
    l2 = args.norm == 'L2'  # the checkpoint's saved test attack is L-inf; L2 has its own
    epsilon = args.epsilon if args.epsilon is not None or not l2 else D.L2_EPSILON
    steps = args.pgd_num_steps
    if l2 and steps is None:
        steps = D.TEST_PGD_NUM_STEPS
    step_size = args.pgd_step_size
    if l2 and step_size is None:  # Madry et al.'s rule: 2.5 radii over the steps
        step_size = 2.5 * epsilon / steps
    setup = resolve_setup(ckpt, model=args.model, dataset=args.dataset, data_dir=args.data_dir,
                          epsilon=epsilon, pgd_num_steps=steps, pgd_step_size=step_size,
                          normalize=args.normalize)
    class_names, x, y = load_test_set(setup, ckpt)
    subset = args.n_eval is not None and args.n_eval != len(y)
    if subset:
        keep = stratified_eval_subset(y, args.n_eval, len(class_names), args.seed)
        x, y = x[keep], y[keep]
    aa_samples = None
    if args.n_autoattack is not None and args.n_autoattack != len(y):
        # Drawn from the evaluated samples, class-stratified and fixed by --seed.
        aa_samples = stratified_eval_subset(y, args.n_autoattack, len(class_names), args.seed,
                                            '--n_autoattack', 'the evaluated set')
    images = hashlib.sha256(x.contiguous().numpy().tobytes())
    images.update(y.contiguous().numpy().tobytes())
    inputs = {'range': [0, 1], 'normalize': None if setup.normalize is None
              else dict(zip(('mean', 'std'), setup.normalize))}
    baseline = None
    if args.baseline:  # checked before the (long) evaluation, so a mismatch fails at once
        baseline = schema.read_result(args.baseline, '--baseline')
        fields = {'class_names': list(class_names), 'n_eval': len(y), 'epsilon': setup.epsilon,
                  'seed': args.seed, 'norm': args.norm, 'images_sha256': images.hexdigest(),
                  'inputs': inputs}
        for attack, steps in (('pgd', setup.pgd_num_steps), ('cw', args.cw_num_steps)):
            if attack in ATTACK_CHOICES[args.attack]:  # as evaluation.runner records them
                fields.update({f'attack {attack}{steps} {key}': value for key, value in (
                    ('norm', args.norm), ('epsilon', setup.epsilon), ('num_steps', steps),
                    ('step_size', setup.pgd_step_size), ('seed', args.seed))})
        if 'pgd' in ATTACK_CHOICES[args.attack]:
            fields['pgd_rule'] = args.pgd_rule
        if 'autoattack' in ATTACK_CHOICES[args.attack]:
            fields['n_autoattack'] = len(y) if aa_samples is None else len(aa_samples)
            fields['aa_variant'] = autoattack.variant(args.aa_version, args.aa_attacks)
        schema.check_comparable(fields, baseline, f'--baseline {args.baseline}')
    model = build_model(setup.model, len(class_names), x.shape[-1], ckpt.state_dict, device,
                        normalize=setup.normalize)
    sha256 = identity.file_sha256(args.checkpoint)
    provenance = {'checkpoint_sha256': sha256, 'images_sha256': images.hexdigest(),
                  'data_dir': (None if setup.dataset == 'synthetic'
                               else os.path.abspath(setup.data_dir)),
                  'inputs': inputs}
    print(f'{args.checkpoint}: {setup.method or setup.model} ({setup.model}'
          + (', its weight-averaged model' if ckpt.averaged else '') + f') on '
          f'{setup.dataset}, {len(y)} test samples, {args.norm} eps {setup.epsilon:g}, device '
          f'{device}')
    out = args.out or os.path.dirname(os.path.abspath(args.checkpoint))
    run.make_folder(out, '--out')
    # Named by what was evaluated: a result never replaces another checkpoint's or subset's.
    tag = f'epoch{ckpt.epoch}' if ckpt.epoch is not None else f'sha{sha256[:8]}'
    if ckpt.selection:  # checkpoint-best.pt: never mistaken for that epoch's own checkpoint
        tag = f"best{ckpt.selection['split']}_{tag}"
        print(f'{args.checkpoint}: {tables.selection_label(ckpt.selection)}')
    job = Job(args, ckpt, setup, model, x, y, class_names, baseline, device, out, tag,
              len(y) if subset else None, aa_samples, start, provenance)
    written, done = [], None
    if args.attack == 'all':
        # PGD's result is written before AutoAttack starts. Its figures (PGD's bars and
        # confusion) are the full result's too: drawn here only if AutoAttack does not finish.
        done, pgd_result, paths = evaluate_and_write(job, 'pgd', draw=False)
        written += paths
        print('wrote: ' + ', '.join(paths), flush=True)
    try:
        _, result, paths = evaluate_and_write(job, args.attack, done)
    except BaseException:
        if done is not None:
            stem = os.path.splitext(os.path.basename(written[0]))[0]
            figures.evaluation_figures(pgd_result, job.out, stem)
        raise
    written += paths
    print('\n'.join(tables.attack_notes(result) + ['', tables.per_class_table(result), '']
                    + tables.confusion_lines(result)))
    print('time: ' + ', '.join(f'{k} {v:.1f} s' for k, v in result['time_s'].items()))
    if ckpt.method is not None and ckpt.method['name'] in METHODS:
        written += METHODS[ckpt.method['name']].figures(ckpt.method['state'], class_names, out)
    print('wrote: ' + ', '.join(written))
    print(tables.summary_line(result))


def evaluate_and_write(job: Job, attack: str, done=None, draw: bool = True):
    """Run --attack attack's evaluations that done (Predictions) does not hold, and write its
    result and (draw) its figures; (predictions, result, paths written)."""
    args, setup = job.args, job.setup
    settings = evaluation_settings(args, attack)
    stem = run.result_stem(attack, job.n, job.tag,
                           None if job.aa_samples is None else len(job.aa_samples), args.norm,
                           autoattack.variant(args.aa_version, args.aa_attacks)) \
        + settings_suffix(settings, job.ckpt.args)
    attacks = [a for a in ATTACK_CHOICES[attack] if done is None or a not in done.attacks]
    log = os.path.join(job.out, f'{stem}_autoattack.log') if 'autoattack' in attacks else None
    preds = run_evaluation(job.model, job.x, job.y, attacks=attacks,
                           num_classes=len(job.class_names), epsilon=setup.epsilon,
                           batch_size=args.batch_size, seed=args.seed, pgd_rule=args.pgd_rule,
                           pgd_num_steps=setup.pgd_num_steps, pgd_step_size=setup.pgd_step_size,
                           autoattack_samples=job.aa_samples, autoattack_log=log,
                           progress=not args.no_progress, norm=args.norm,
                           cw_num_steps=args.cw_num_steps, aa_version=args.aa_version,
                           aa_attacks=args.aa_attacks)
    if done is not None:
        preds = done.merged(preds)
    result = schema.build_result(
        checkpoint_path=args.checkpoint, epoch=job.ckpt.epoch, method=setup.method,
        model=setup.model, dataset=setup.dataset, seed=args.seed, epsilon=setup.epsilon,
        class_names=job.class_names, preds=preds, device=job.device,
        total_s=time.time() - job.start, recipe=job.ckpt.recipe, norm=args.norm,
        selection=job.ckpt.selection, provenance=job.provenance, settings=settings)
    if job.baseline:
        schema.add_baseline(result, job.baseline, args.baseline)
    schema.write_json(result, os.path.join(job.out, f'{stem}.json'))
    return preds, result, [os.path.join(job.out, f'{stem}.json')] + ([log] if log else []) + (
        figures.evaluation_figures(result, job.out, stem) if draw else [])


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
