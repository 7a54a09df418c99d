"""Runs the requested evaluations (clean, PGD-K, CW-K, AutoAttack) over a test set and times them.

An evaluation's name is its key in a result: 'clean', 'pgd<K>' (PGD with K steps, 'pgd20' for
the paper's PGD-20), 'cw<K>' (PGD with K steps on the CW margin loss) and 'autoattack'."""
import re
import time
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
from tqdm import tqdm

from data import Loader

from . import autoattack
from .pgd import ROBUST_IF, fp32, predict_clean_and_pgd, require_eval_mode

# --attack choice -> the attacks run after the clean pass ('pgd': PGD with --pgd_num_steps).
ATTACK_CHOICES = {'none': (), 'pgd': ('pgd',), 'cw': ('cw',), 'aa': ('autoattack',),
                  'all': ('pgd', 'autoattack')}


def pgd_name(num_steps: int) -> str:
    return f'pgd{num_steps}'


def pgd_steps(name: str, attack: str = 'pgd'):
    """K of an evaluation named '<attack><K>' (attack 'pgd' or 'cw'), else None."""
    match = re.fullmatch(attack + r'(\d+)', name)
    return int(match.group(1)) if match else None


def attack_of(name: str) -> str:
    """The ATTACK_CHOICES entry an evaluation name belongs to: 'pgd', 'cw', or the name."""
    return next((a for a in ('pgd', 'cw') if pgd_steps(name, a) is not None), name)


def display_name(name: str) -> str:
    """'clean', 'PGD-20', 'CW-30', 'AutoAttack'."""
    for attack, shown in (('pgd', 'PGD'), ('cw', 'CW')):
        if pgd_steps(name, attack) is not None:
            return f'{shown}-{pgd_steps(name, attack)}'
    return {'autoattack': 'AutoAttack'}.get(name, name)


@dataclass
class Predictions:
    labels: torch.Tensor                 # (N,) int64, CPU
    pred: Dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (N,) predicted class
    time_s: Dict[str, float] = field(default_factory=dict)
    settings: Dict[str, dict] = field(default_factory=dict)      # attack name -> parameters
    # attack name -> indices (into labels) of the samples it ran on, for an attack run on a
    # subset (AutoAttack under --n_autoattack); absent: every sample
    samples: Dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def attacks(self) -> set:
        """The ATTACK_CHOICES entries these predictions hold ('pgd', 'autoattack')."""
        return {attack_of(name) for name in self.settings}

    def merged(self, other: 'Predictions') -> 'Predictions':
        """These predictions with other's added (the clean pass, deterministic, counted once)."""
        return Predictions(self.labels, dict(self.pred, **other.pred),
                           dict(other.time_s, **self.time_s), dict(self.settings, **other.settings),
                           dict(self.samples, **other.samples))

    def labels_of(self, name: str) -> torch.Tensor:
        """The labels of the samples evaluation `name` ran on."""
        return self.labels[self.samples[name]] if name in self.samples else self.labels


def predict_clean(model: torch.nn.Module, loader) -> torch.Tensor:
    """Clean predictions (N,) on the loader's device, in loader order, fp32."""
    require_eval_mode(model)
    with torch.no_grad():
        return torch.cat([model(x).argmax(1) for x, _ in loader])


def _elapsed(start: float, device: torch.device) -> float:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)  # the one sync per attack, for an honest time
    return time.time() - start


def _gradient_attack_settings(norm, epsilon, step_size, steps, loss, seed, rule) -> dict:
    """What a result records of a PGD or CW attack."""
    return {'norm': norm, 'epsilon': epsilon, 'step_size': step_size, 'num_steps': steps,
            'random_start': 'uniform' if norm == 'Linf' else
            'uniform direction, radius eps * U(0, 1)',
            'loss': 'cross-entropy' if loss == 'ce' else 'CW margin (max_{j != y} z_j - z_y)',
            'seed': seed, 'rule': rule, 'robust_if': ROBUST_IF[rule]}


def run_evaluation(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, attacks,
                   num_classes: int, epsilon: float, batch_size: int, seed: int,
                   pgd_rule: str, pgd_num_steps: int, pgd_step_size: float,
                   autoattack_samples: Optional[torch.Tensor] = None,
                   autoattack_log: Optional[str] = None, progress: bool = True,
                   norm: str = 'Linf', cw_num_steps: int = 30, aa_version: str = 'standard',
                   aa_attacks=None) -> Predictions:
    """Clean predictions plus each attack in attacks ('pgd', 'cw', 'autoattack') on uint8 images
    x (N, 3, H, W) with labels y, on the model's device, in the norm's ball of radius epsilon;
    PGD's predictions are named pgd<pgd_num_steps>, CW's cw<cw_num_steps> (the same step size,
    the official rule). A sample counts as correct under an attack exactly when its
    prediction there equals its label (for PGD under pgd_rule, see evaluation.pgd). Each attack
    is seeded with seed, so reruns give the same numbers. autoattack_samples (indices into x)
    restricts AutoAttack to those samples, e.g. a class-stratified subset that fits the time;
    autoattack_log: a file for AutoAttack's own log; aa_version, aa_attacks: which AutoAttack
    (evaluation.autoattack.settings)."""
    require_eval_mode(model)
    device = next(model.parameters()).device
    out = Predictions(labels=y.cpu())
    x, y = x.to(device), y.to(device)  # once, shared by the loaders below
    loader = Loader(x, y, batch_size, device=device, train=False)

    with fp32(device.type):
        start = time.time()
        out.pred['clean'] = predict_clean(model, loader).cpu()
        out.time_s['clean'] = _elapsed(start, device)

        for attack, loss, steps, rule in (('pgd', 'ce', pgd_num_steps, pgd_rule),
                                          ('cw', 'cw', cw_num_steps, 'final')):
            if attack not in attacks:
                continue
            name = f'{attack}{steps}'
            out.settings[name] = _gradient_attack_settings(norm, epsilon, pgd_step_size, steps,
                                                           loss, seed, rule)
            start = time.time()
            _, _, adv_pred = predict_clean_and_pgd(
                model, tqdm(loader, desc=display_name(name), unit='batch', disable=not progress),
                epsilon=epsilon, step_size=pgd_step_size, num_steps=steps, rule=rule,
                generator=torch.Generator(device).manual_seed(seed),  # the random start
                loss=loss, norm=norm)
            out.pred[name] = adv_pred.cpu()
            out.time_s[name] = _elapsed(start, device)

        if 'autoattack' in attacks:
            if autoattack_samples is not None:
                out.samples['autoattack'] = autoattack_samples.cpu()
                x, y = x[autoattack_samples.to(device)], y[autoattack_samples.to(device)]
            chunks = Loader(x, y, batch_size * autoattack.CHUNK_BATCHES, device=device,
                            train=False)
            start = time.time()
            _, adv_pred, warnings = autoattack.autoattack_predict(
                model, chunks, num_classes=num_classes, epsilon=epsilon,
                batch_size=batch_size, seed=seed, progress=progress, log_path=autoattack_log,
                norm=norm, version=aa_version, attacks=aa_attacks)
            out.pred['autoattack'] = adv_pred.cpu()
            out.time_s['autoattack'] = _elapsed(start, device)
            out.settings['autoattack'] = dict(
                autoattack.settings(epsilon, num_classes, seed, norm, aa_version, aa_attacks),
                warnings=warnings)
    return out
