"""AutoAttack (L-inf or L2) through the official implementation (the pyautoattack package):
the standard version (APGD-CE, APGD-T, FAB-T, Square) by default; the 'rand' and 'plus'
versions, or a subset of a version's attacks with that version's parameters (a quick look on a
CPU), are labelled as not the standard AutoAttack wherever they are reported.

The test set goes through run_standard_evaluation in chunks of a few batches, so that the
progress bar can advance per attack and chunk; within a chunk AutoAttack packs the samples
still robust after one attack into full batches for the next, as it does on the whole set.
"""
import contextlib
import logging
from typing import List

import pyautoattack
import torch
from pyautoattack import AutoAttack
from tqdm import tqdm

from engine.cli import UserError
from .pgd import require_eval_mode

CHUNK_BATCHES = 4  # attack batches per chunk
STANDARD_TARGET_CLASSES = 9  # APGD-T and FAB-T target classes in the standard version
MIN_CLASSES = 4  # the targeted DLR loss reads the 4 largest logits


class _FollowLog(logging.Handler):
    """Reads AutoAttack's log: advances the progress bar as each attack finishes on a chunk,
    and keeps each distinct warning once (its checks rerun on every chunk), printing it above
    the bar."""

    def __init__(self, bar):
        super().__init__(logging.DEBUG)
        self.bar = bar
        self.warnings: List[str] = []

    def emit(self, record):
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            if message not in self.warnings:
                self.warnings.append(message)
                self.bar.write(f'AutoAttack warning: {message}')
        elif message.startswith('robust accuracy after '):  # pyautoattack 0.2.0's wording
            self.bar.update(1)


# Each version's attacks, in the order it runs them (pyautoattack 0.2.0, AutoAttack._set_version).
VERSIONS = {'standard': ('apgd-ce', 'apgd-t', 'fab-t', 'square'),
            'plus': ('apgd-ce', 'apgd-dlr', 'fab', 'square', 'apgd-t', 'fab-t'),
            'rand': ('apgd-ce', 'apgd-dlr')}


def variant(version: str = 'standard', attacks=None):
    """None for the standard AutoAttack, else its name in file names and tables: the version,
    and the attacks when a subset ('rand', 'standard-apgd-ce+square')."""
    subset = attacks is not None and tuple(attacks) != VERSIONS[version]
    if version == 'standard' and not subset:
        return None
    return version + ('-' + '+'.join(attacks) if subset else '')


def check_attacks(version: str, attacks) -> list:
    """The attacks to run: the version's, or the given subset in the version's order;
    ValueError naming the ones the version does not have."""
    if attacks is None:
        return list(VERSIONS[version])
    unknown = [a for a in attacks if a not in VERSIONS[version]]
    if unknown or not attacks:
        raise ValueError(f"AutoAttack {version} runs {', '.join(VERSIONS[version])}; "
                         f"{', '.join(unknown) or 'no attack'} is not one of them")
    return [a for a in VERSIONS[version] if a in attacks]


def settings(epsilon: float, num_classes: int, seed: int, norm: str = 'Linf',
             version: str = 'standard', attacks=None) -> dict:
    """The attack's parameters, as recorded in the results."""
    attacks = check_attacks(version, attacks)
    name = variant(version, attacks)
    return {'version': version, 'norm': norm, 'epsilon': epsilon, 'seed': seed,
            'attacks': attacks, 'variant': name, 'standard': name is None,
            'robust_if': f'correct under every attack (the per-image worst case over the '
                         f'{len(attacks)} attacks, as run_standard_evaluation returns it; never '
                         'an average)',
            'target_classes': min(STANDARD_TARGET_CLASSES, num_classes - 1),
            'implementation': f'pyautoattack {pyautoattack.__version__}'}


@contextlib.contextmanager
def _autoattack_log(bar, log_path):
    """Route pyautoattack's logger to the bar (and to log_path, when given) for the duration,
    then restore it; yields (logger, the handler that collects its warnings)."""
    logger = logging.getLogger('auto-attack')  # the name pyautoattack logs under
    handler = _FollowLog(bar)
    saved_level, saved_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    log_file = None
    if log_path is not None:
        log_file = logging.FileHandler(log_path, mode='w')
        log_file.setFormatter(logging.Formatter('%(message)s'))
        logger.addHandler(log_file)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # its messages reach the user through the handler only
    try:
        yield logger, handler
    finally:
        logger.removeHandler(handler)
        if log_file is not None:
            logger.removeHandler(log_file)
            log_file.close()
        logger.setLevel(saved_level)
        logger.propagate = saved_propagate


def autoattack_predict(model: torch.nn.Module, chunks, *, num_classes: int, epsilon: float,
                       batch_size: int, seed: int, progress: bool = True, log_path=None,
                       norm: str = 'Linf', version: str = 'standard', attacks=None):
    """Predictions on AutoAttack's adversarial examples.

    chunks: batches (x float in [0, 1], y) in order, e.g. a data.Loader with batch_size a few
    attack batches. Returns (labels, adv_pred, warnings): adv_pred is the prediction at the
    adversarial example AutoAttack found, or at the clean input where none fooled the model,
    so a sample is robust exactly when adv_pred == label. warnings: AutoAttack's own
    reliability checks that fired (e.g. zero gradients), each once.
    With fewer than 10 classes the targeted attacks use every other class (C - 1 targets).
    log_path: also write AutoAttack's own log there (initial accuracy, robust accuracy after each
    attack, the perturbation's size), one block per chunk. version, attacks: see settings().
    """
    require_eval_mode(model)
    if num_classes < MIN_CLASSES:
        raise UserError(f'AutoAttack needs at least {MIN_CLASSES} classes (its targeted '
                        f'DLR loss), this model has {num_classes}; use --attack pgd.')
    config = settings(epsilon, num_classes, seed, norm, version, attacks)
    steps = len(config['attacks'])
    bar = tqdm(total=len(chunks) * steps, desc='AutoAttack', unit='attack', disable=not progress)
    labels, preds = [], []
    robust = total = 0
    with bar, _autoattack_log(bar, log_path) as (logger, handler):
        adversary = AutoAttack(model, device=next(model.parameters()).device, eps=epsilon,
                               norm=norm, seed=seed, version=version)
        adversary.attacks_to_run = config['attacks']  # a subset keeps its version's parameters
        adversary.apgd_targeted.n_target_classes = config['target_classes']
        adversary.fab.n_target_classes = config['target_classes']
        start = 0
        for i, (x, y) in enumerate(chunks):
            logger.debug(f'== chunk {i + 1} of {len(chunks)}: samples {start}-{start + len(y) - 1}'
                         f' (eps {epsilon:g}, seed {seed})')
            start += len(y)
            with torch.autocast(x.device.type, enabled=False):
                _, adv_pred = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
            labels.append(y)
            preds.append(adv_pred)
            # AutoAttack syncs on every batch anyway; this count only feeds the bar.
            robust += int((adv_pred == y).sum())
            total += len(y)
            bar.update((i + 1) * steps - bar.n)  # attacks skipped once nothing was left
            bar.set_postfix(robust=f'{100.0 * robust / total:.2f}%')
    return torch.cat(labels), torch.cat(preds), handler.warnings
