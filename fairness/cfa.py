"""CFA (Wei et al., "CFA: Class-wise Calibrated Fair Adversarial Training", CVPR 2023).

From epoch `begin` on, r_c, class c's robust accuracy on the previous epoch's training adversarial
examples, calibrates two per-class quantities: the attack radius (lambda1 + r_c) * eps (CCM) and
the TRADES trade-off b_c = (lambda2 + r_c) beta / (1 + (lambda2 + r_c) beta) in the loss
(1 - b_c) CE + b_c KL (CCR). After each epoch the validation split is attacked (PGD-10); if its
worst class's robust accuracy is at least a threshold, an exponential moving average of the
weights, BatchNorm statistics included, takes a step (FAWA); that averaged model is the one
evaluated and reported. Official code: PKU-ML/CFA, train.py (the epoch loop), attack.py
(`cw_trades_loss`), utils.py (`weight_average`).

The loss scale is a flag: `official` is cw_trades_loss's, TRADES divided by 1 + beta (before
`begin` too, b_c = beta / (1 + beta)); `harness` (the default under our shared protocol) is that
times 1 + beta, so that before `begin` it is our TRADES exactly and every method trains at one
learning-rate scale. With weight decay the two are different runs, not one run at another lr.

Where we depart (docs/methods.md): integer buffers (BatchNorm's batch counter)
are copied, not averaged; until FAWA's first update the raw model is evaluated (officially a model
that was never updated); r_c divides by each class's own count (officially by N / K).
"""
import copy

import torch

from engine.cli import UserError, check_finite

from .base import Method, per_class_mean, preact_normalized, scaled_epochs, validation_pgd

VAL_STEPS, VAL_STEP_SIZE = 10, 2 / 255  # the official validation attack (pgd_loss, 10 steps)


def calibrated(train_robust: torch.Tensor, lambda1: float, lambda2: float, beta: float):
    """CCM's radius multiplier and CCR's trade-off b_c per class, from r_c."""
    radius = lambda1 + train_robust
    b = (lambda2 + train_robust) * beta / (1 + (lambda2 + train_robust) * beta)
    return radius, b


def validation_robust_accuracy(ctx, num_classes: int, epoch: int) -> torch.Tensor:
    """(K,) robust accuracy per class on the validation split under PGD-10 (final iterate)."""
    y, _, adv = validation_pgd(ctx, epoch, num_steps=VAL_STEPS, step_size=VAL_STEP_SIZE)
    return per_class_mean(adv, y, num_classes)


class CFA(Method):
    name = 'cfa'
    label = 'CFA'
    paper = ('Zeming Wei et al.', 'CVPR 2023')
    losses = ('trades',)
    validation_fraction = 0.02  # 100 of CIFAR-10's 5,000 images per class
    # PKU-ML/CFA generate_validation.py: the first 100 of 5,000 per class (line 27), the first
    # 25 of 500 on CIFAR-100 (line 59); ours are the last ones (the split's position is not part
    # of the method).
    validation_official = {'cifar10': 100, 'cifar100': 25}

    @classmethod
    def official_args(cls, epochs, model):
        # train.py lines 20-27 (200 epochs, PreAct ResNet-18, eps 8/255, step 2/255; the
        # validation attack, line 241, at the same 8/255), 41 (begin 10), 121-127 (lr x0.1 at
        # half, x0.01 at three quarters: our 'madry'), 180 (momentum 0.9 without Nesterov,
        # weight decay 5e-4); attack.py cw_trades_loss's scale; the inputs normalised with
        # CIFAR-10's statistics before every forward, whatever the dataset (utils.py lines
        # 22-23; train.py line 98, attack.py lines 127-143); generate_validation.py line 20
        # (crops padded by reflection).
        return (['--epochs', str(scaled_epochs(200, epochs)), '--lr_schedule', 'madry',
                 '--no-nesterov', '--cfa_loss_scale', 'official',
                 '--cfa_begin', str(round(10 * scaled_epochs(200, epochs) / 200)),
                 '--epsilon', repr(8 / 255), '--pgd_step_size', repr(2 / 255),
                 '--padding_mode', 'reflect'] + preact_normalized(model))

    @staticmethod
    def add_arguments(group) -> None:
        group.add_argument('--cfa_lambda1', type=float, default=0.5,
                           help='CFA: base of the class-wise radius (lambda1 + r_c) * eps (0.5)')
        group.add_argument('--cfa_lambda2', type=float, default=0.5,
                           help='CFA: base of the class-wise TRADES trade-off (0.5)')
        group.add_argument('--cfa_begin', type=int, default=10,
                           help='CFA: epochs before calibration starts (official 10)')
        group.add_argument('--cfa_decay', type=float, default=0.88,
                           help='CFA: FAWA moving-average decay (official 0.88)')
        group.add_argument('--cfa_threshold', type=float, default=0.24,
                           help="CFA: FAWA updates only when the validation split's worst "
                                'class robust accuracy reaches this (official 0.24, TRADES)')
        group.add_argument('--cfa_loss_scale', choices=('harness', 'official'),
                           default='harness',
                           help="CFA: official = cw_trades_loss's scale, TRADES / (1 + beta); "
                                'harness = that times 1 + beta, plain TRADES before --cfa_begin, '
                                "as every method under our protocol (the official recipe's "
                                'runs use official)')

    @classmethod
    def check_arguments(cls, args) -> None:
        check_finite(args, 'cfa_lambda1', 'cfa_lambda2', low=0)
        check_finite(args, 'cfa_decay', 'cfa_threshold', low=0, high=1)
        if args.cfa_begin < 0:
            raise UserError(f'--cfa_begin must be >= 0, got {args.cfa_begin}.')

    def __init__(self, args, num_classes, device):
        super().__init__(args, num_classes, device)
        self.train_robust = None  # (K,) r_c of the last epoch
        self.val_robust = None    # (K,) the last validation
        self.fawa = None          # the averaged model's state_dict (on the device), once begun
        self._eval_module = None

    def records(self, epoch):
        return ('class_accuracy',)

    def _apply(self, next_epoch: int) -> None:
        """The tables for epoch next_epoch: calibrated once the previous epoch is >= begin."""
        a = self.args
        if self.train_robust is None or next_epoch - 1 < a.cfa_begin:
            # float64, so that the harness's tables are exactly 1 (plain TRADES).
            radius = 1.0
            b = torch.full((self.num_classes,), a.beta / (1 + a.beta), dtype=torch.float64)
        else:
            radius, b = calibrated(self.train_robust, a.cfa_lambda1, a.cfa_lambda2, a.beta)
        # (1 - b) CE + b KL (the loss computes CE + beta KL), times 1 + beta for the harness:
        # TRADES' CE + beta KL when b = beta / (1 + beta).
        scale = 1 + a.beta if a.cfa_loss_scale == 'harness' else 1.0
        self.tables.set(natural=(1 - b) * scale, robust=b * scale / a.beta, radius=radius)

    def fawa_step(self, model) -> None:
        """weight_average: the first update copies the model, later ones move towards it."""
        current = model.state_dict()
        if self.fawa is None:
            self.fawa = {key: value.detach().clone() for key, value in current.items()}
            return
        decay = self.args.cfa_decay
        with torch.no_grad():
            for key, value in self.fawa.items():
                if value.is_floating_point():
                    value.mul_(decay).add_(current[key], alpha=1 - decay)
                else:
                    value.copy_(current[key])

    def after_epoch(self, epoch, ctx, recorded, row) -> None:
        self.train_robust = recorded['class_accuracy']
        self._apply(epoch + 1)
        self.val_robust = validation_robust_accuracy(ctx, self.num_classes, epoch)
        if self.val_robust.min() >= self.args.cfa_threshold:
            self.fawa_step(ctx.model)

    def eval_model(self, model):
        if self.fawa is None:
            return model
        if self._eval_module is None:
            self._eval_module = copy.deepcopy(model)
        self._eval_module.load_state_dict(self.fawa)
        return self._eval_module.eval()

    def eval_state_dict(self):
        return self.fawa

    def state_dict(self) -> dict:
        return {'train_robust': self.train_robust, 'val_robust': self.val_robust,
                'fawa': self.fawa}

    def load_state_dict(self, state, epoch) -> None:
        self.train_robust, self.val_robust = state.get('train_robust'), state.get('val_robust')
        fawa = state.get('fawa')
        self.fawa = None if fawa is None else {
            key: value.to(self.device) for key, value in fawa.items()}
        self._apply(epoch + 1)

    def method_state(self) -> dict:
        return {'train_robust': None if self.train_robust is None else self.train_robust.tolist(),
                'val_robust': None if self.val_robust is None else self.val_robust.tolist(),
                'fawa_started': self.fawa is not None, 'radius': self.tables.radius.tolist(),
                'natural_weight': self.tables.natural.tolist(),
                'robust_weight': self.tables.robust.tolist()}
