"""eval.py's command line: its arguments and their checks, and what an evaluation was asked to
do (evaluation_settings: a result records it, the benchmark finds results by it). A package module,
so the benchmark (benchmark/plan.py) reads an evaluation's settings exactly as eval.py will
without importing an entry point."""
import hashlib
import json
import math
import os
from typing import Optional

import defaults as D
import models
from data import DATASETS
from engine import device as engine_device
from engine import identity
from engine.cli import ArgumentParser, channel_statistics

from . import autoattack
from .pgd import NORMS, PGD_RULES
from .runner import ATTACK_CHOICES

DESCRIPTION = ('Per-class evaluation of a checkpoint: clean, PGD-20 and AutoAttack accuracy, '
               'average and worst class, confusions, rho against a baseline, and figures.')


def build_parser() -> ArgumentParser:
    # Defaults are written into the help texts: most are None, meaning 'from the checkpoint'.
    p = ArgumentParser(description=DESCRIPTION)
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
    _add_attack_arguments(p)
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
    _add_overrides(p)
    return p


def _add_attack_arguments(p: ArgumentParser) -> None:
    """Which attacks run, and how."""
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


def _add_overrides(p: ArgumentParser) -> None:
    """What a checkpoint's saved training arguments say unless these are given."""
    g = p.add_argument_group('overrides (default: the checkpoint\'s saved training args)')
    g.add_argument('--normalize', metavar='M1,M2,M3,S1,S2,S3', type=channel_statistics,
                   help="the model expects (x - mean) / std per channel: applied inside the "
                        "attacked model, so attacks and eps stay in pixels [0, 1] (default: "
                        "the checkpoint's train.py --normalize, else none)")
    g.add_argument('--model', choices=tuple(models.MODELS))
    g.add_argument('--dataset', choices=DATASETS)
    g.add_argument('--data_dir')
    g.add_argument('--epsilon', type=float, help=f'radius, pixels in [0, 1] (L-inf: saved '
                   f'test_epsilon, else {D.TEST_EPSILON}; L2: 0.5)')
    g.add_argument('--pgd_num_steps', type=int, help='PGD steps (saved test_pgd_num_steps, '
                   f'else {D.TEST_PGD_NUM_STEPS}); the result key says it: pgd<K>')
    g.add_argument('--pgd_step_size', type=float, help='PGD step, pixels in [0, 1] (saved '
                   f'test_pgd_step_size, else {D.TEST_PGD_STEP_SIZE})')


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
