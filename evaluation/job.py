"""One evaluation of one checkpoint, as eval.py runs it: prepare() reads the checkpoint, resolves
the attack, cuts the evaluated subset, checks a --baseline against it and builds the model;
run_and_write() runs an --attack choice and writes its result JSON and figures."""
import argparse
import hashlib
import os
import time
from dataclasses import dataclass
from typing import Optional

import torch

import defaults as D
from engine import device as engine_device
from engine import identity, run

from . import autoattack, figures, schema, tables
from .arguments import evaluation_settings, settings_suffix
from .checkpoint_io import Checkpoint, build_model, read_checkpoint
from .runner import ATTACK_CHOICES, run_evaluation
from .setup import EvalSetup, load_test_set, resolve_setup, stratified_eval_subset


@dataclass
class Job:
    """What prepare() has set up: the model, its test set and where results go."""
    args: argparse.Namespace
    ckpt: Checkpoint
    setup: EvalSetup
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


def prepare(args) -> Job:
    start = time.time()
    device = engine_device.setup(args.device)  # first: before any torch op starts threads
    ckpt = read_checkpoint(args.checkpoint, trusted=args.trust_checkpoint)
    setup = resolve_setup(ckpt, model=args.model, dataset=args.dataset, data_dir=args.data_dir,
                          normalize=args.normalize, **_attack_radius(args))
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
        schema.check_comparable(
            _baseline_fields(args, setup, class_names, len(y), images.hexdigest(), inputs,
                             len(y) if aa_samples is None else len(aa_samples)),
            baseline, f'--baseline {args.baseline}')
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
    return Job(args, ckpt, setup, model, x, y, class_names, baseline, device, out, tag,
               len(y) if subset else None, aa_samples, start, provenance)


def _attack_radius(args) -> dict:
    """epsilon, steps and step size given on the command line; under L2 what is not given is
    L2's default (the checkpoint's saved test attack is L-inf)."""
    if args.norm != 'L2':
        return {'epsilon': args.epsilon, 'pgd_num_steps': args.pgd_num_steps,
                'pgd_step_size': args.pgd_step_size}
    epsilon = D.L2_EPSILON if args.epsilon is None else args.epsilon
    steps = D.TEST_PGD_NUM_STEPS if args.pgd_num_steps is None else args.pgd_num_steps
    step_size = args.pgd_step_size
    if step_size is None:  # Madry et al.'s rule: 2.5 radii over the steps
        step_size = 2.5 * epsilon / steps
    return {'epsilon': epsilon, 'pgd_num_steps': steps, 'pgd_step_size': step_size}


def _baseline_fields(args, setup: EvalSetup, class_names, n_eval: int, images_sha256: str,
                     inputs: dict, n_autoattack: int) -> dict:
    """The fields of this evaluation a --baseline result must share, as evaluation.runner and
    schema.build_result record them."""
    fields = {'class_names': list(class_names), 'n_eval': n_eval, 'epsilon': setup.epsilon,
              'seed': args.seed, 'norm': args.norm, 'images_sha256': images_sha256,
              'inputs': inputs}
    for attack, steps in (('pgd', setup.pgd_num_steps), ('cw', args.cw_num_steps)):
        if attack in ATTACK_CHOICES[args.attack]:
            fields.update({f'attack {attack}{steps} {key}': value for key, value in (
                ('norm', args.norm), ('epsilon', setup.epsilon), ('num_steps', steps),
                ('step_size', setup.pgd_step_size), ('seed', args.seed))})
    if 'pgd' in ATTACK_CHOICES[args.attack]:
        fields['pgd_rule'] = args.pgd_rule
    if 'autoattack' in ATTACK_CHOICES[args.attack]:
        fields['n_autoattack'] = n_autoattack
        fields['aa_variant'] = autoattack.variant(args.aa_version, args.aa_attacks)
    return fields


def run_and_write(job: Job, attack: str, done=None, draw: bool = True):
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
