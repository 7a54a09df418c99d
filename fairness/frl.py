"""FRL (Xu et al., "To be Robust or to be Fair: Towards Fairness in Adversarial Training",
ICML 2021), Reweight (rw) and Reweight + Remargin (rwrm).

Before every epoch the validation split is evaluated clean and under PGD. Where a class's clean
error, or its boundary error (clean accuracy minus robust accuracy), exceeds the average by more
than a tolerance, its Lagrange multiplier grows (clamped at 0, the sum scaled down to at most
`lim`); the multipliers give each class the weight 1/K + lambda_i - mean(lambda) of its clean
term and of its boundary (KL) term. rwrm also grows a radius multiplier with the boundary error:
exp(2 lambda), clamped to [0.98, 3]. The attack is TRADES'. Official code: hannxu123/fair_robust,
utils_frl.py (rw) and utils_frl2.py (rwrm): `frl_train`, `cost_sensitive`, `normalize_lambda`,
`evaluate`, `train_model`.

Where we depart (docs/methods.md): the weights are scaled by K and the batch is divided by its size
(the official code divides each term by the sum of its batch's weights: the same on a class-
balanced batch, without a sample's weight depending on its batch); rwrm's attack step is alpha
times the sample's own radius multiplier (officially the batch's largest radius / 4); the
validation PGD takes its first gradient at the unclipped random start (our evaluation's PGD).
"""
import functools

import torch

from engine.cli import UserError, check_finite

from .base import Method, per_class_mean, scaled_epochs, validation_pgd

VAL_STEPS, VAL_STEP_SIZE = 20, 2 / 255  # the official validation attack (configs1)
RADIUS_BOUNDS = {'rw': (0.98, 2.5), 'rwrm': (0.98, 3.0)}

FLAGS = {'frl_bound_clean': 'tolerated excess clean error of a class',
         'frl_bound_boundary': 'tolerated excess boundary error of a class',
         'frl_rate_weight': 'multiplier step of the weights, halved every --frl_halving_epochs',
         'frl_rate_margin': 'multiplier step of the radius (rwrm only)',
         'frl_lim': 'largest sum of the weight multipliers'}
# Each variant's defaults are its official script's argparse defaults (--bound0, --bound1,
# --rate1, --rate2, --lim): hannxu123/fair_robust frlrw.py lines 103-107 and frlrmrw.py lines
# 93-97. rw never reads its rate2 (utils_frl.py line 277 has the update commented out).
OFFICIAL = {'rw': {'frl_bound_clean': 0.1, 'frl_bound_boundary': 0.1, 'frl_rate_weight': 0.05,
                   'frl_rate_margin': 0.1, 'frl_lim': 0.5},
            'rwrm': {'frl_bound_clean': 0.07, 'frl_bound_boundary': 0.07,
                     'frl_rate_weight': 0.05, 'frl_rate_margin': 0.2, 'frl_lim': 0.5}}
SOURCES = {'rw': 'frlrw.py', 'rwrm': 'frlrmrw.py'}


def _official_help(flag: str) -> str:
    return ', '.join(f'{OFFICIAL[v][flag]:g} for {v} ({SOURCES[v]})' for v in OFFICIAL)


def validation_errors(ctx, num_classes: int, epoch: int):
    """Per-class clean error and boundary error (clean accuracy - PGD accuracy), and the same
    over the whole split, as fractions (float64, CPU)."""
    y, clean, adv = validation_pgd(ctx, epoch, num_steps=VAL_STEPS, step_size=VAL_STEP_SIZE)
    clean_acc = per_class_mean(clean, y, num_classes)
    adv_acc = per_class_mean(adv, y, num_classes)
    total_clean, total_adv = clean.double().mean(), adv.double().mean()
    return 1 - clean_acc, clean_acc - adv_acc, 1 - total_clean, total_clean - total_adv


def normalize_lambda(lam: torch.Tensor, lim: float) -> torch.Tensor:
    """Clamp at 0 and, if the sum exceeds lim, scale it down to lim."""
    lam = lam.clamp(min=0)
    return lim * lam / lam.sum() if lam.sum() > lim else lam


def cost_sensitive_weights(lam: torch.Tensor) -> torch.Tensor:
    """1/K + lambda_i - sum(lambda) / K: the official double loop in closed form."""
    return 1 / len(lam) + lam - lam.sum() / len(lam)


class FRL(Method):
    name = 'frl'
    label = 'FRL'
    paper = ('Han Xu et al.', 'ICML 2021')
    losses = ('trades',)
    validation_fraction = 0.06  # 300 of CIFAR-10's 5,000 images per class
    # hannxu123/fair_robust data_loader.py: the last 300 of 5,000 per class (lines 43 and 56);
    # its code has CIFAR-10 only.
    validation_official = {'cifar10': 300}

    fine_tunes = 'none'  # a TRADES model (frlrmrw.py / frlrw.py load a pretrained model)

    @classmethod
    def official_args(cls, epochs, model):
        # frlrmrw.py lines 27-28 (SGD lr 1e-3, momentum 0.9 without Nesterov, weight decay 5e-4;
        # milestones at 40 and 80 never reached in 40 epochs: constant), 32-34 (eps 8/255, step
        # 2/255), 75-76 (the weights' rate halved every 40 epochs: scaled as the epochs are),
        # 88-92 (40 epochs, beta 1.5, PreAct ResNet-18 of pre_resnet.py, without a final
        # BatchNorm); utils_frl2.py lines 203-204 (three train-mode forwards).
        scaled = str(scaled_epochs(40, epochs))
        return (['--epochs', scaled, '--lr', '0.001', '--lr_schedule', 'constant',
                 '--no-nesterov', '--beta', '1.5', '--epsilon', repr(8 / 255),
                 '--pgd_step_size', repr(2 / 255), '--frl_halving_epochs', scaled,
                 '--frl_forwards', 'official']
                + (['--model', 'pre-resnet-frl'] if model == 'resnet' else []))

    @staticmethod
    def add_arguments(group) -> None:
        group.add_argument('--frl_variant', choices=('rw', 'rwrm'), default='rwrm',
                           help='FRL: Reweight, or Reweight + Remargin')
        for flag, what in FLAGS.items():
            group.add_argument(f'--{flag}', type=float, help=f'FRL: {what} (default: the '
                               f"variant's official value, {_official_help(flag)})")
        group.add_argument('--frl_halving_epochs', type=int, default=40,
                           help='FRL: epochs between halvings of --frl_rate_weight (official '
                                '40, frlrmrw.py l. 75-76; --recipe official scales it with the '
                                'epochs)')
        group.add_argument('--frl_forwards', choices=('harness', 'official'), default='harness',
                           help="FRL: the loss's train-mode forwards; harness = TRADES' x_adv, "
                                'x; official = x, x_adv, x as utils_frl2.py l. 203-204 (the same '
                                "loss; BatchNorm's running statistics differ; the official "
                                "recipe's runs use official)")

    @classmethod
    def check_arguments(cls, args) -> None:
        for flag, value in OFFICIAL[args.frl_variant].items():
            if getattr(args, flag) is None:
                setattr(args, flag, value)
        check_finite(args, 'frl_bound_clean', 'frl_bound_boundary', low=0, high=1)
        check_finite(args, 'frl_rate_weight', 'frl_rate_margin', 'frl_lim', low=0)
        if args.frl_halving_epochs < 1:
            raise UserError(f'--frl_halving_epochs must be >= 1, got {args.frl_halving_epochs}.')

    def __init__(self, args, num_classes, device):
        super().__init__(args, num_classes, device)
        # Multipliers of the clean-error, boundary-error and radius constraints.
        self.lam = torch.zeros(3, num_classes, dtype=torch.float64)
        self.errors = None  # the last validation: per-class clean and boundary errors

    def update(self, clean_error, boundary_error, total_clean, total_boundary, epoch) -> None:
        """One multiplier update from a validation result (frl_train, before training)."""
        a = self.args
        gamma_clean = clean_error - total_clean - a.frl_bound_clean
        gamma_boundary = boundary_error - total_boundary - a.frl_bound_boundary
        rate = a.frl_rate_weight * 0.5 ** (epoch // a.frl_halving_epochs)
        lam_clean = normalize_lambda(self.lam[0] + rate * gamma_clean.clamp(min=-1000), a.frl_lim)
        lam_boundary = normalize_lambda(self.lam[1] + rate * 2 * gamma_boundary.clamp(min=-1000),
                                        a.frl_lim)
        lam_radius = self.lam[2] + (a.frl_rate_margin * gamma_boundary
                                    if a.frl_variant == 'rwrm' else 0)
        self.lam = torch.stack([lam_clean, lam_boundary, lam_radius])

    def multipliers(self):
        """(clean-term weight, boundary-term weight, radius multiplier), each (K,) float64."""
        k = self.num_classes
        low, high = RADIUS_BOUNDS[self.args.frl_variant]
        return (k * cost_sensitive_weights(self.lam[0]), k * cost_sensitive_weights(self.lam[1]),
                torch.exp(2 * self.lam[2]).clamp(low, high))

    def loss(self, default):
        if self.args.frl_forwards == 'official':
            # utils_frl2.py train_model, lines 203-204: model(data), model(x_adv), model(data).
            return functools.partial(super().loss(default), forwards=('x', 'x_adv', 'x'))
        return super().loss(default)

    def _apply(self) -> None:
        natural, robust, radius = self.multipliers()
        self.tables.set(natural=natural, robust=robust, radius=radius, step=radius)

    def before_epoch(self, epoch, ctx) -> None:
        errors = validation_errors(ctx, self.num_classes, epoch)
        self.errors = errors[:2]
        self.update(*errors, epoch)
        self._apply()

    def state_dict(self) -> dict:
        errors = None if self.errors is None else torch.stack(self.errors)
        return {'lam': self.lam, 'errors': errors}

    def load_state_dict(self, state, epoch) -> None:
        self.lam = state['lam'].clone()
        self.errors = None if state['errors'] is None else tuple(state['errors'])
        self._apply()

    def method_state(self) -> dict:
        natural, robust, radius = self.multipliers()
        state = {'lambda_clean': self.lam[0].tolist(), 'lambda_boundary': self.lam[1].tolist(),
                 'lambda_radius': self.lam[2].tolist(), 'natural_weight': natural.tolist(),
                 'robust_weight': robust.tolist(), 'radius': radius.tolist()}
        if self.errors is not None:
            state.update(val_clean_error=self.errors[0].tolist(),
                         val_boundary_error=self.errors[1].tolist())
        return state
