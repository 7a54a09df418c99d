"""Runs the requested evaluations (clean, PGD-20, AutoAttack) over a test set and times them."""
import time
from dataclasses import dataclass, field
from typing import Dict

import torch
from tqdm import tqdm

import defaults as D
from data import Loader

from . import autoattack
from .pgd import ROBUST_IF, fp32, predict_clean_and_pgd, require_eval_mode

# --attack choice -> the attacks run after the clean pass.
ATTACK_CHOICES = {'none': (), 'pgd': ('pgd20',), 'aa': ('autoattack',),
                  'all': ('pgd20', 'autoattack')}
DISPLAY_NAMES = {'clean': 'clean', 'pgd20': f'PGD-{D.TEST_PGD_NUM_STEPS}',
                 'autoattack': 'AutoAttack'}


@dataclass
class Predictions:
    labels: torch.Tensor                 # (N,) int64, CPU
    pred: Dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (N,) predicted class
    time_s: Dict[str, float] = field(default_factory=dict)
    settings: Dict[str, dict] = field(default_factory=dict)      # attack name -> parameters


def predict_clean(model: torch.nn.Module, loader) -> torch.Tensor:
    """Clean predictions (N,) on the loader's device, in loader order, fp32."""
    require_eval_mode(model)
    with torch.no_grad():
        return torch.cat([model(x).argmax(1) for x, _ in loader])


def _elapsed(start: float, device: torch.device) -> float:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)  # the one sync per attack, for an honest time
    return time.time() - start


def run_evaluation(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, attacks,
                   num_classes: int, epsilon: float, batch_size: int, seed: int,
                   pgd_rule: str = D.PGD_RULE, progress: bool = True) -> Predictions:
    """Clean predictions plus each attack in attacks ('pgd20', 'autoattack') on uint8 images
    x (N, 3, H, W) with labels y, on the model's device. A sample counts as correct under an
    attack exactly when its prediction there equals its label (for PGD-20 under pgd_rule, see
    evaluation.pgd). Each attack is seeded with seed, so reruns give the same numbers."""
    require_eval_mode(model)
    device = next(model.parameters()).device
    out = Predictions(labels=y.cpu())
    x, y = x.to(device), y.to(device)  # once, shared by the loaders below
    loader = Loader(x, y, batch_size, device=device, train=False)

    with fp32(device.type):
        start = time.time()
        out.pred['clean'] = predict_clean(model, loader).cpu()
        out.time_s['clean'] = _elapsed(start, device)

        if 'pgd20' in attacks:
            out.settings['pgd20'] = {
                'norm': 'Linf', 'epsilon': epsilon, 'step_size': D.TEST_PGD_STEP_SIZE,
                'num_steps': D.TEST_PGD_NUM_STEPS, 'random_start': 'uniform',
                'loss': 'cross-entropy', 'seed': seed, 'rule': pgd_rule,
                'robust_if': ROBUST_IF[pgd_rule]}
            start = time.time()
            _, _, adv_pred = predict_clean_and_pgd(
                model, tqdm(loader, desc=DISPLAY_NAMES['pgd20'], unit='batch',
                            disable=not progress),
                epsilon=epsilon, step_size=D.TEST_PGD_STEP_SIZE,
                num_steps=D.TEST_PGD_NUM_STEPS, rule=pgd_rule,
                generator=torch.Generator(device).manual_seed(seed))  # the random start
            out.pred['pgd20'] = adv_pred.cpu()
            out.time_s['pgd20'] = _elapsed(start, device)

        if 'autoattack' in attacks:
            chunks = Loader(x, y, batch_size * autoattack.CHUNK_BATCHES, device=device,
                            train=False)
            start = time.time()
            _, adv_pred, warnings = autoattack.autoattack_predict(
                model, chunks, num_classes=num_classes, epsilon=epsilon,
                batch_size=batch_size, seed=seed, progress=progress)
            out.pred['autoattack'] = adv_pred.cpu()
            out.time_s['autoattack'] = _elapsed(start, device)
            out.settings['autoattack'] = dict(
                autoattack.settings(epsilon, num_classes, seed), warnings=warnings)
    return out
