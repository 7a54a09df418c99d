"""WAT (Li & Liu, "WAT: Improve the Worst-class Robustness in Adversarial Training", AAAI 2023).

K + 1 weights, one per class and one for the average: after every epoch the validation split is
attacked with the TRADES attack, the TRADES cost (cross-entropy + beta * KL) of each class and of
the whole split is added to its running sum, and the weights become K * softmax(eta * sums).
A sample of class y then weighs w[y] + w[K] in both TRADES terms: the class-weighted loss plus
w[K] times the mean loss (official code: boqili/WAT, worst_class_adversarial_train.py, `train`,
`validate`).

Where we follow the method rather than the official code (docs/methods.md): the weights start at
K * softmax(0) = K / (K + 1), which the update keeps the sum at, not at 1 (the official loss
scale jumps after epoch 1); the validation means divide by the split's size (the official code
divides by batches x batch size, 3,072 for 3,000 images); the running sums are saved and resumed
(the official code restarts them at 1).
"""
import functools

import torch
import torch.nn.functional as F

from losses import kl_from_logits, per_sample_kl
from losses.attack import exact_fp32, pgd_linf

from engine.cli import check_finite

from .base import Method, scaled_epochs, validation_model


def validation_costs(ctx, num_classes: int, epoch: int) -> torch.Tensor:
    """(K + 1,) float64: the mean TRADES cost (CE + beta * KL at the TRADES adversarial example)
    of each class's validation samples, and of all of them. The model is in eval mode, as the
    official `validate`."""
    model, generator = validation_model(ctx, epoch)
    device = next(model.parameters()).device
    sums = torch.zeros(num_classes + 1, dtype=torch.float64, device=device)
    counts = torch.zeros(num_classes + 1, dtype=torch.float64, device=device)
    for x, y in ctx.val_loader:
        with exact_fp32(device.type):  # as FRL's and CFA's validations (evaluation.pgd)
            cost = _validation_cost(model, x, y, ctx, generator)
        sums[:num_classes].index_add_(0, y, cost)
        counts[:num_classes].index_add_(0, y, torch.ones_like(cost))
    sums[num_classes], counts[num_classes] = sums[:num_classes].sum(), counts[:num_classes].sum()
    return (sums / counts).cpu()


def _validation_cost(model, x, y, ctx, generator) -> torch.Tensor:
    """(N,) float64 TRADES cost of a validation batch at its TRADES adversarial example."""
    with torch.no_grad():
        logits_clean = model(x).float()
    x_start = x + 0.001 * torch.randn(x.shape, device=x.device, generator=generator)
    x_adv = pgd_linf(model, x, x_start, lambda logits: kl_from_logits(logits_clean, logits),
                     eps=ctx.epsilon, step_size=ctx.step_size, num_steps=ctx.num_steps)
    with torch.no_grad():
        return (F.cross_entropy(logits_clean, y, reduction='none')
                + ctx.beta * per_sample_kl(logits_clean, model(x_adv).float())).double()


class WAT(Method):
    name = 'wat'
    label = 'WAT'
    paper = ('Boqi Li and Weiwei Liu', 'AAAI 2023')
    losses = ('trades',)
    validation_fraction = 0.06  # 300 of CIFAR-10's 5,000 images per class
    # boqili/WAT data_loader.py: the last 300 of 5,000 per class (lines 43 and 56), the last 30
    # of 500 on CIFAR-100 (lines 127 and 140).
    validation_official = {'cifar10': 300, 'cifar100': 30}

    @staticmethod
    def add_arguments(group) -> None:
        group.add_argument('--wat_eta', type=float, default=0.1,
                           help='WAT: step of the exponentiated-gradient weight update '
                                '(official default 0.1)')

    @classmethod
    def check_arguments(cls, args) -> None:
        check_finite(args, 'wat_eta', low=0, low_open=True)

    def __init__(self, args, num_classes, device):
        super().__init__(args, num_classes, device)
        self.cost_sums = torch.zeros(num_classes + 1, dtype=torch.float64)
        self.costs = None  # the last epoch's validation costs
        self._apply()

    def weights(self) -> torch.Tensor:
        """(K + 1,) float64: K * softmax(eta * the summed validation costs)."""
        return self.num_classes * torch.softmax(self.args.wat_eta * self.cost_sums, dim=0)

    def _apply(self) -> None:
        w = self.weights()
        per_class = w[:-1] + w[-1]  # class-weighted loss + w[K] * mean loss, per sample
        self.tables.set(natural=per_class, robust=per_class)

    @classmethod
    def official_args(cls, epochs, model):
        # worst_class_adversarial_train.py lines 16-19 (100 epochs, weight decay 2e-4, momentum
        # 0.9 without Nesterov) and 165-174 (lr x0.1 at 75, x0.01 at 90: our 'trades').
        return ['--epochs', str(scaled_epochs(100, epochs)), '--lr_schedule', 'trades',
                '--weight_decay', '2e-4', '--no-nesterov']

    def loss(self, default):
        # WAT's train() runs model(data) before model(output_adv) in train mode
        # (worst_class_adversarial_train.py lines 89-90): BatchNorm's running statistics follow.
        return functools.partial(super().loss(default), forwards=('x', 'x_adv'))

    def after_epoch(self, epoch, ctx, recorded, row) -> None:
        self.costs = validation_costs(ctx, self.num_classes, epoch)
        self.cost_sums += self.costs
        self._apply()

    def state_dict(self) -> dict:
        return {'cost_sums': self.cost_sums, 'costs': self.costs}

    def load_state_dict(self, state, epoch) -> None:
        self.cost_sums, self.costs = state['cost_sums'].clone(), state['costs']
        self._apply()

    def method_state(self) -> dict:
        return {'costs': None if self.costs is None else self.costs.tolist(),
                'weights': self.weights().tolist()}
