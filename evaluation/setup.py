"""What to evaluate: model, dataset and epsilon from the checkpoint's saved args unless given
on the command line, and the (optionally class-stratified) test set."""
import argparse
from dataclasses import dataclass
from typing import Optional

import torch

import defaults as D
import fairness
from data import load_dataset, stratified_subset, synthetic_config_from_args

from .checkpoint_io import Checkpoint
from engine.cli import UserError


@dataclass
class EvalSetup:
    model: str
    dataset: str
    data_dir: Optional[str]
    epsilon: float         # L-inf radius for pixels in [0, 1]
    method: Optional[str]  # e.g. 'TRADES + DAFA'; None for an official checkpoint
    pgd_num_steps: int = D.TEST_PGD_NUM_STEPS
    pgd_step_size: float = D.TEST_PGD_STEP_SIZE  # pixels in [0, 1]
    normalize: Optional[list] = None  # [means, stds] applied inside the model, or None


def resolve_setup(ckpt: Checkpoint, *, model=None, dataset=None, data_dir=None,
                  epsilon=None, pgd_num_steps=None, pgd_step_size=None,
                  normalize=None) -> EvalSetup:
    """Command-line values win; otherwise the checkpoint's saved args (its training run's test
    attack, so train-time PGD equals eval.py's); an official checkpoint (no args) needs --model
    and --dataset."""
    saved = ckpt.args or {}
    model, dataset = model or saved.get('model'), dataset or saved.get('dataset')
    if model is None or dataset is None:
        raise UserError(f'checkpoint {ckpt.path!r} has no saved training args (official '
                        'format); pass --model and --dataset (e.g. --model resnet '
                        '--dataset cifar10).')
    if epsilon is None:
        epsilon = saved.get('test_epsilon', D.TEST_EPSILON)
    if not epsilon > 0:
        raise UserError(f'--epsilon must be > 0, got {epsilon}.')
    method = None
    if ckpt.args is not None:  # 'TRADES', 'TRADES + DAFA', ...
        method = fairness.label(saved.get('loss'), saved.get('rob_fairness_algorithm', 'none'))
    if pgd_num_steps is None:
        pgd_num_steps = saved.get('test_pgd_num_steps', D.TEST_PGD_NUM_STEPS)
    if pgd_step_size is None:
        pgd_step_size = saved.get('test_pgd_step_size', D.TEST_PGD_STEP_SIZE)
    if pgd_num_steps < 1 or not pgd_step_size > 0:
        raise UserError(f'--pgd_num_steps must be >= 1 and --pgd_step_size > 0, got '
                        f'{pgd_num_steps} and {pgd_step_size}.')
    return EvalSetup(model, dataset, data_dir or saved.get('data_dir', 'datasets'), epsilon,
                     method, pgd_num_steps, pgd_step_size, normalize or saved.get('normalize'))


def _shown(names, k=5) -> str:
    return ', '.join(names[:k]) + (f' (+{len(names) - k} more)' if len(names) > k else '')


def load_test_set(setup: EvalSetup, ckpt: Checkpoint):
    """(class_names, x_test uint8 (N, 3, H, W), y_test int64 (N,)) on the CPU.

    Synthetic data is rebuilt exactly from the checkpoint's seed and synthetic_* args (when
    it was trained on it), so the test set is the one training evaluated on.
    """
    saved = ckpt.args or {}
    synthetic = None
    if setup.dataset == 'synthetic' and saved.get('dataset') != 'synthetic':
        # Its classes, image size and images come from a training run's synthetic_* flags and
        # seed, which only a train.py checkpoint of synthetic data records.
        raise UserError(f'--dataset synthetic: {ckpt.path} was not trained by train.py on '
                        'synthetic data, so nothing says which synthetic set it knows; '
                        'evaluate it on the dataset it was trained on.')
    if setup.dataset == 'synthetic':
        synthetic = synthetic_config_from_args(argparse.Namespace(**saved))
    # A folder needs only DIR/test here: its training images are never decoded for evaluation.
    data = load_dataset(setup.dataset, setup.data_dir, seed=saved.get('seed', D.SEED),
                        synthetic=synthetic, test_only=True)
    if ckpt.class_names is not None and list(ckpt.class_names) != list(data.class_names):
        raise UserError(
            f'the checkpoint was trained on classes {_shown(ckpt.class_names)} but --dataset '
            f"{setup.dataset} has {_shown(data.class_names)}; pass --dataset "
            f"{saved.get('dataset')} (and its --data_dir).")
    if ckpt.image_size is not None and ckpt.image_size != data.image_size:
        raise UserError(
            f'the checkpoint was trained on {ckpt.image_size} px images but --dataset '
            f"{setup.dataset} has {data.image_size} px; pass --dataset {saved.get('dataset')}.")
    if (ckpt.test_set_sha256 is not None and setup.dataset == saved.get('dataset')
            and ckpt.test_set_sha256 != data.test_fingerprint):
        raise UserError(
            f'the {setup.dataset} test set differs from the one this checkpoint was trained '
            'with (the data, its generator or its options changed since); retrain, or '
            'evaluate with the code and data of the training run.')
    return data.class_names, data.x_test, data.y_test


def stratified_eval_subset(y: torch.Tensor, n_eval: int, num_classes: int,
                           seed: int, flag: str = '--n_eval',
                           pool: str = 'the test set') -> torch.Tensor:
    """Indices (ascending) of n_eval / C random samples of y per class, fixed by seed; flag and
    pool (what y is) name the option and the set in errors."""
    if n_eval > len(y):
        raise UserError(f'{flag} {n_eval} is larger than {pool} ({len(y)}); '
                        f'pass at most {len(y)}, or leave it out for the whole set.')
    if n_eval < num_classes or n_eval % num_classes:
        below = max(num_classes, n_eval // num_classes * num_classes)
        raise UserError(f'{flag} {n_eval} does not split evenly over {num_classes} '
                        f'classes; pass a multiple of {num_classes}, e.g. {below}.')
    smallest = int(torch.bincount(y, minlength=num_classes).min())
    if n_eval // num_classes > smallest:
        raise UserError(f'{flag} {n_eval} takes {n_eval // num_classes} per class but '
                        f'the smallest class has {smallest} samples; pass at most '
                        f'{smallest * num_classes}.')
    # stratified_subset keeps each class's first samples, so shuffling first makes them random.
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    return order[stratified_subset(y[order], n_eval, num_classes)].sort().values
