"""Per-class evaluation of a checkpoint: clean, PGD-20 and AutoAttack accuracy, average and
worst class, confusions, rho against a baseline, and figures.

    python eval.py --checkpoint runs/trades_dafa/checkpoint-latest.pt --attack all
    python eval.py --checkpoint official.pt --model resnet --dataset cifar10 --n_eval 1000
    python eval.py --compare runs/trades/eval_all_epoch110.json \
        runs/trades_dafa/eval_all_epoch110.json

Writes eval_<attack>_<what>[_n<N>][_aa<M>].json and PNG figures into --out (default: the
checkpoint's folder), <what> being epoch<E> for our checkpoints (best<split>_epoch<E> for a
train.py --keep_best checkpoint-best.pt) and sha<hash> for others; the JSON schema is in
evaluation/report.py.
"""
import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

import torch

import defaults as D
import models
from data import DATASETS
from engine import device as engine_device
from engine import identity, run
from engine.cli import ArgumentParser, UserError, run_main
from evaluation import autoattack, figures, report
from evaluation.checkpoint_io import build_model, read_checkpoint
from evaluation.pgd import NORMS, PGD_RULES
from evaluation.runner import ATTACK_CHOICES, run_evaluation
from evaluation.setup import load_test_set, resolve_setup, stratified_eval_subset
from fairness import METHODS


def build_parser() -> ArgumentParser:
    # Defaults are written into the help texts: most are None, meaning 'from the checkpoint'.
    p = ArgumentParser(description=__doc__.split('\n\n')[0])
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument('--checkpoint', metavar='PATH', help='train.py checkpoint, or an official '
                      "state_dict / {'state_dict': ...} (then pass --model and --dataset)")
    what.add_argument('--compare', nargs='+', metavar='RESULT.json',
                      help="print the paper's Table 1 for these eval_*.json files (the first "
                           "file's method is the baseline of rho; several files of one method are "
                           'its seeds: mean ± std) and plot their per-class accuracies')
    what.add_argument('--curves', metavar='RUN_DIR',
                      help="draw a train.py run's curves from its metrics.jsonl: loss, lr and "
                           'per-class clean and PGD test accuracy per evaluated epoch, with the '
                           "method's branch epoch (DAFA's tau) and class weights marked")
    p.add_argument('--attack', choices=tuple(ATTACK_CHOICES), default='pgd',
                   help='after the clean pass: pgd = PGD-20 (default), cw = PGD on the CW '
                        'margin loss (--cw_num_steps), aa = AutoAttack, all = PGD and '
                        'AutoAttack, none = clean only')
    p.add_argument('--norm', choices=NORMS, default='Linf',
                   help='threat model of PGD, CW and AutoAttack; L2: --epsilon defaults to '
                        f'{D.L2_EPSILON} '
                        '(RobustBench\'s CIFAR L2) and the step to 2.5 eps / steps')
    p.add_argument('--cw_num_steps', type=int, default=D.TEST_CW_NUM_STEPS,
                   help='CW attack steps (CW-30 by default; the step is --pgd_step_size); '
                        'the result key is cw<K>')
    p.add_argument('--pgd_rule', choices=PGD_RULES, default=D.PGD_RULE,
                   help='final (default): robust if correct at the last PGD iterate, as the '
                        'official per-class evaluation; every: correct at the clean input and '
                        'at every iterate')
    p.add_argument('--n_eval', type=int, metavar='N',
                   help='evaluate N test samples, N/C per class chosen by --seed '
                        '(default: the whole test set)')
    p.add_argument('--n_autoattack', type=int, metavar='M',
                   help='run AutoAttack on M of the evaluated samples, M/C per class chosen by '
                        '--seed (default: all of them); clean and PGD still run on all')
    p.add_argument('--aa_version', choices=tuple(autoattack.VERSIONS), default='standard',
                   help="AutoAttack's version (default standard; the others are labelled as "
                        'not the standard AutoAttack in every result and table)')
    p.add_argument('--aa_attacks', metavar='A,B',
                   help="only these of the version's attacks, with its parameters (e.g. "
                        'apgd-ce for a quick look on a CPU; labelled as not the standard '
                        'AutoAttack)')
    p.add_argument('--batch_size', type=int, default=D.TEST_BATCH_SIZE,
                   help=f'images per attack batch (default {D.TEST_BATCH_SIZE})')
    p.add_argument('--out', metavar='DIR', help="where the JSON and figures go (default: the "
                   "checkpoint's folder; with --compare, the first file's folder)")
    p.add_argument('--baseline', metavar='RESULT.json',
                   help="an eval_*.json of the baseline model: adds the paper's rho")
    p.add_argument('--seed', type=int, default=D.SEED,
                   help=f"fixes the --n_eval subset and the attacks' random starts "
                        f'(default {D.SEED})')
    p.add_argument('--device', choices=('auto', 'cuda', 'cpu'), default='auto',
                   help='auto (default) = cuda when available')
    p.add_argument('--no_progress', action='store_true', help='no progress bars')
    p.add_argument('--trust_checkpoint', action='store_true',
                   help='read --checkpoint with the unsafe loader, which can run code in the '
                        'file; only for a file from a source you trust')
    g = p.add_argument_group('overrides (default: the checkpoint\'s saved training args)')
    g.add_argument('--normalize', metavar='M1,M2,M3,S1,S2,S3',
                   help="the model expects (x - mean) / std per channel: applied inside the "
                        "attacked model, so attacks and eps stay in pixels [0, 1] (our "
                        "checkpoints need none: they normalise nothing)")
    g.add_argument('--model', choices=tuple(models.MODELS))
    g.add_argument('--dataset', choices=DATASETS)
    g.add_argument('--data_dir')
    g.add_argument('--epsilon', type=float, help=f'radius, pixels in [0, 1] (L-inf: saved '
                   f'test_epsilon, else {D.TEST_EPSILON}; L2: 0.5)')
    g.add_argument('--pgd_num_steps', type=int, help='PGD steps (saved test_pgd_num_steps, '
                   f'else {D.TEST_PGD_NUM_STEPS}); the result key says it: pgd<K>')
    g.add_argument('--pgd_step_size', type=float, help='PGD step, pixels in [0, 1] (saved '
                   f'test_pgd_step_size, else {D.TEST_PGD_STEP_SIZE})')
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    for flag in ('n_eval', 'n_autoattack', 'cw_num_steps'):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f'--{flag} must be >= 1, got {getattr(args, flag)}.')
    if args.n_autoattack is not None and 'autoattack' not in ATTACK_CHOICES[args.attack]:
        p.error(f'--n_autoattack needs AutoAttack: pass --attack aa or all (got '
                f'{args.attack}).')
    if args.batch_size < 1:
        p.error(f'--batch_size must be >= 1, got {args.batch_size}.')
    for flag in ('epsilon', 'pgd_step_size'):
        value = getattr(args, flag)
        if value is not None and not (math.isfinite(value) and value > 0):
            p.error(f'--{flag} must be a finite number > 0, got {value}.')
    if args.norm == 'Linf' and args.epsilon is not None and args.epsilon > 1:
        p.error(f'--epsilon {args.epsilon:g}: an L-inf radius is in pixel units 0-1 (8/255 = '
                '0.031); pass that.')
    if args.normalize is not None:
        try:
            values = [float(v) for v in args.normalize.split(',')]
        except ValueError:
            values = []
        if len(values) != 6 or not all(math.isfinite(v) for v in values) or not all(
                v > 0 for v in values[3:]):
            p.error(f'--normalize {args.normalize}: pass 3 means and 3 positive stds, e.g. '
                    '0.4914,0.4822,0.4465,0.2471,0.2435,0.2616.')
        args.normalize = (values[:3], values[3:])
    if args.aa_attacks is not None:
        try:
            args.aa_attacks = autoattack.check_attacks(
                args.aa_version, [a for a in args.aa_attacks.split(',') if a])
        except ValueError as err:
            p.error(f'--aa_attacks {args.aa_attacks}: {err}.')
    if (args.aa_version != 'standard' or args.aa_attacks) and (
            'autoattack' not in ATTACK_CHOICES[args.attack]):
        p.error(f'--aa_version / --aa_attacks choose the AutoAttack: pass --attack aa or all '
                f'(got {args.attack}).')
    try:
        args.device = engine_device.resolve(args.device)
    except ValueError as err:
        p.error(str(err))
    return args


def compare(args) -> None:
    results = [(path, report.read_result(path, '--compare')) for path in args.compare]
    text, markdown = report.compare_tables(results)
    print(text + '\n\n' + markdown + '\n\nHow the class accuracies spread:\n\n'
          + report.spread_table(results) + '\n\n'
          + '\n'.join(report.comparison_notes(results) + report.machine_lines(results)))
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
    provenance: dict   # the file, the data and the input convention (report.build_result)


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
                          epsilon=epsilon, pgd_num_steps=steps, pgd_step_size=step_size)
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
    inputs = {'range': [0, 1], 'normalize': None if args.normalize is None
              else dict(zip(('mean', 'std'), args.normalize))}
    baseline = None
    if args.baseline:  # checked before the (long) evaluation, so a mismatch fails at once
        baseline = report.read_result(args.baseline, '--baseline')
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
        report.check_comparable(fields, baseline, f'--baseline {args.baseline}')
    model = build_model(setup.model, len(class_names), x.shape[-1], ckpt.state_dict, device,
                        normalize=args.normalize)
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
        print(f'{args.checkpoint}: {report.selection_label(ckpt.selection)}')
    job = Job(args, ckpt, setup, model, x, y, class_names, baseline, device, out, tag,
              len(y) if subset else None, aa_samples, start, provenance)
    written, done = [], None
    if args.attack == 'all':  # PGD's result is written before AutoAttack starts
        done, _, paths = evaluate_and_write(job, 'pgd')
        written += paths
        print('wrote: ' + ', '.join(paths), flush=True)
    _, result, paths = evaluate_and_write(job, args.attack, done)
    written += paths
    print('\n'.join(report.attack_notes(result) + ['', report.per_class_table(result), '']
                    + report.confusion_lines(result)))
    print('time: ' + ', '.join(f'{k} {v:.1f} s' for k, v in result['time_s'].items()))
    if ckpt.method is not None and ckpt.method['name'] in METHODS:
        written += METHODS[ckpt.method['name']].figures(ckpt.method['state'], class_names, out)
    print('wrote: ' + ', '.join(written))
    print(report.summary_line(result))


# The settings a result's file name states in words (run.result_stem); any other that is not
# eval.py's default goes into the name as a hash, so no evaluation replaces another's file.
_NAMED_SETTINGS = ('attack', 'norm', 'n_eval', 'n_autoattack', 'aa_version', 'aa_attacks')


def evaluation_settings(args, attack: str) -> dict:
    """What an evaluation of --attack attack was asked to do, as eval.py's arguments
    (identity.EVALUATION_SETTINGS; None: the checkpoint's value or the default): a result
    records it, and reproduce.py finds its results by it."""
    settings = {key: getattr(args, key) for key in identity.EVALUATION_SETTINGS}
    settings['attack'] = attack
    if settings['data_dir'] is not None:
        settings['data_dir'] = os.path.abspath(settings['data_dir'])
    return json.loads(json.dumps(settings))


# An override that equals what the checkpoint's saved training args give is no change.
_SAVED_AS = {'model': 'model', 'dataset': 'dataset', 'data_dir': 'data_dir',
             'epsilon': 'test_epsilon', 'pgd_num_steps': 'test_pgd_num_steps',
             'pgd_step_size': 'test_pgd_step_size'}


def settings_suffix(settings: dict, saved: Optional[dict]) -> str:
    """'' when an evaluation's settings (evaluation_settings) are the defaults for the
    checkpoint (saved: its training args, None for a foreign file, which has no default model,
    dataset or data folder), else '_s' and 8 hex digits of the settings the name does not
    state in words: two evaluations of one checkpoint never share a file."""
    parser, saved = build_parser(), saved or {}
    changed = {}
    for key, value in settings.items():
        if key in _NAMED_SETTINGS or value is None:
            continue
        accepted = [parser.get_default(key)]
        if key in _SAVED_AS:
            if _SAVED_AS[key] not in saved and key in ('model', 'dataset', 'data_dir'):
                continue  # a foreign file: these are required, not a change
            accepted.append(saved.get(_SAVED_AS[key]))
        if key == 'data_dir' and saved.get('data_dir'):
            accepted.append(os.path.abspath(saved['data_dir']))
        if key == 'epsilon' and settings['norm'] == 'L2':
            accepted.append(D.L2_EPSILON)
        if value not in json.loads(json.dumps(accepted)):
            changed[key] = value
    if not changed:
        return ''
    return '_s' + hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:8]


def evaluate_and_write(job: Job, attack: str, done=None):
    """Run --attack attack's evaluations that done (Predictions) does not hold, and write its
    result and figures; (predictions, result, paths written)."""
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
    result = report.build_result(
        checkpoint_path=args.checkpoint, epoch=job.ckpt.epoch, method=setup.method,
        model=setup.model, dataset=setup.dataset, seed=args.seed, epsilon=setup.epsilon,
        class_names=job.class_names, preds=preds, device=job.device,
        total_s=time.time() - job.start, recipe=job.ckpt.recipe, norm=args.norm,
        selection=job.ckpt.selection, provenance=job.provenance, settings=settings)
    if job.baseline:
        report.add_baseline(result, job.baseline, args.baseline)
    report.write_json(result, os.path.join(job.out, f'{stem}.json'))
    return preds, result, [os.path.join(job.out, f'{stem}.json')] + ([log] if log else []) + \
        figures.evaluation_figures(result, job.out, stem)


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
