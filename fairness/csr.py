"""CSR, confusional spectral regularisation (Jin et al., "Enhancing Robust Fairness via
Confusional Spectral Regularization", ICLR 2025), on TRADES.

Before each epoch, a pass of its own over the training set (model in eval mode, PGD on the
cross-entropy under the training attack) counts the adversarial confusion C[i, j]: training
samples of class j predicted as i != j, the true class's logit first shrunk by a tenth
(o_y <- (1 - 0.1) o_y, the official gamma_true). With u, v the top singular pair of C,
G = u v^T (the gradient of C's spectral norm) is min-max scaled to G <- 2 (G - min G) /
(max G - min G) + 0.01, and each batch's loss becomes

    (1 - w) CE(f(x), y) + beta KL_TRADES + w sum_n G[y_hat_n, y_n] (log G[y_hat_n, y_n]
                                                          - log p_{y_n}(x_adv_n)) / N

with y_hat_n the train-mode prediction on x_adv_n and w = --csr_weight (0.3): the last term is
the official KLDivLoss against the target G[y_hat, y] onehot(y). Official code:
Alexkael/CONFUSIONAL-SPECTRAL-REGULARIZATION (HEAD 92856c7), CIFAR10_TRADES_fairness/
train_fair.py l. 60 (gamma_true), 122-148 (the pass; its attack, _pgd_whitebox, l. 94-120),
trades_fair.py l. 80-98 (the loss).

Departures: C with no off-diagonal count (nothing misclassified) gives G = 1, where the official
min-max scaling divides by zero. Under the shared recipe CSR trains plainly for --csr_warmup
epochs (default --dafa_warmup: it branches off the plain run's warm-up, as DAFA does); the
official recipe fine-tunes the same seed's finished TRADES run for 2 epochs (scaled) at lr 0.001.
"""
import functools

import torch
import torch.nn.functional as F

from engine.cli import UserError
from losses import LossOutput, weighted_loss

from .base import AfterWarmup, scaled_epochs, training_set_attack


def confusion_weights(confusion: torch.Tensor) -> torch.Tensor:
    """(K, K) float64 G from the (K, K) adversarial confusion counts (rows predicted, columns
    true, zero diagonal)."""
    confusion = confusion.double()
    if not bool((confusion > 0).any()):
        return torch.ones_like(confusion)
    u, _, vh = torch.linalg.svd(confusion)
    g = torch.outer(u[:, 0], vh[0])  # invariant to the pair's joint sign
    return 2 * (g - g.min()) / (g.max() - g.min()) + 0.01


def adversarial_confusion(pairs, num_classes: int, true_logit_shrink: float) -> torch.Tensor:
    """(K, K) float64 counts C[pred, true] of the misclassified samples, from (labels, logits)
    batches, the true class's logit first scaled by (1 - true_logit_shrink)."""
    counts = None
    for y, logits in pairs:
        if counts is None:
            counts = torch.zeros(num_classes * num_classes, dtype=torch.float64,
                                 device=y.device)
        true = F.one_hot(y, num_classes).bool()
        pred = torch.where(true, logits * (1 - true_logit_shrink), logits).argmax(1)
        counts.index_add_(0, pred * num_classes + y, (pred != y).double())
    return counts.view(num_classes, num_classes)


class CSR(AfterWarmup):
    name = 'csr'
    label = 'CSR'
    rule = 'the regularisation'
    paper = ('Gaojie Jin, Sihao Wu, Jiaxu Liu, Tianjin Huang, Ronghui Mu', 'ICLR 2025')
    losses = ('trades',)
    fine_tunes = 'none'  # train_fair.py l. 227-228 fine-tunes a finished TRADES model

    @classmethod
    def official_args(cls, epochs, model):
        # CIFAR10_TRADES_fairness/train_fair.py l. 21-54: 2 epochs, lr 0.001 (its drops at 100
        # and 150 never reached, l. 212-220: constant), momentum 0.9 without Nesterov (l. 229),
        # weight decay 5e-4, eps 8/255, 10 steps of 2/255, beta 6; trades_fair.py l. 80-85:
        # four train-mode forwards, x, x_adv, x, x_adv.
        return ['--epochs', str(scaled_epochs(2, epochs)), '--lr', '0.001',
                '--lr_schedule', 'constant', '--no-nesterov', '--epsilon', repr(8 / 255),
                '--pgd_step_size', repr(2 / 255), '--beta', '6', '--csr_warmup', '0',
                '--csr_forwards', 'official']

    @classmethod
    def add_arguments(cls, group) -> None:
        group.add_argument('--csr_weight', type=float, default=0.3,
                           help='CSR: w, the spectral term\'s weight; the clean cross-entropy '
                                'gets 1 - w (official 0.3 and 0.7, trades_fair.py l. 98)')
        group.add_argument('--csr_true_logit_shrink', type=float, default=0.1,
                           help='CSR: the confusion pass scales the true logit by (1 - this) '
                                'before the prediction (official gamma_true: 0.1, '
                                'train_fair.py l. 60, 135-137; 0: off)')
        cls.add_warmup_argument(group)
        group.add_argument('--csr_forwards', choices=('harness', 'official'), default='harness',
                           help="CSR: the loss's train-mode forwards; harness = TRADES' x_adv, "
                                'x; official = x, x_adv, x, x_adv (trades_fair.py l. 80-85: '
                                "BatchNorm's running statistics move four times)")

    @classmethod
    def check_arguments(cls, args) -> None:
        if not 0 <= args.csr_weight <= 1:
            raise UserError(f'--csr_weight {args.csr_weight} must be in [0, 1] (the clean '
                            'cross-entropy gets 1 - it; official 0.3).')
        if not 0 <= args.csr_true_logit_shrink < 1:
            raise UserError(f'--csr_true_logit_shrink {args.csr_true_logit_shrink} must be in '
                            '[0, 1) (official 0.1).')
        super().check_arguments(args)

    def __init__(self, args, num_classes, device):
        super().__init__(args, num_classes, device)
        # G on the device, changed in place before each epoch (the CUDA graph reads it).
        self.pair_weights = torch.ones(num_classes, num_classes, device=device)
        self.confusion = None  # (K, K) CPU counts of the last pass

    def loss(self, default):
        if self.args.csr_forwards == 'official':
            return functools.partial(super().loss(default),
                                     forwards=('x', 'x_adv', 'x', 'x_adv'))
        return super().loss(default)

    def before_epoch(self, epoch, ctx) -> None:
        super().before_epoch(epoch, ctx)
        if not self.active:
            return
        confusion = adversarial_confusion(training_set_attack(ctx, epoch), self.num_classes,
                                          self.args.csr_true_logit_shrink)
        ctx.all_sum(confusion)
        self.confusion = confusion.cpu()
        self.pair_weights.copy_(confusion_weights(self.confusion))

    def batch_loss(self, terms, weights, beta):
        if not self.active:
            return weighted_loss(terms, weights, beta)
        w = self.args.csr_weight
        base = weighted_loss(terms, weights._replace(natural=weights.natural * (1 - w)), beta)
        g = self.pair_weights[terms.logits_adv.detach().argmax(1), terms.labels]
        log_p = F.log_softmax(terms.logits_adv, dim=1).gather(1, terms.labels[:, None])
        spectral = (g * (g.log() - log_p.squeeze(1))).sum() / g.shape[0]
        return LossOutput(base.loss + w * spectral, base.natural, base.robust, base.logits_adv)

    def state_dict(self) -> dict:
        return {'confusion': self.confusion, 'pair_weights': self.pair_weights.cpu()}

    def load_state_dict(self, state, epoch) -> None:
        self.confusion = state.get('confusion')
        self.pair_weights.copy_(state['pair_weights'])

    def method_state(self) -> dict:
        return {} if self.confusion is None else {
            'pair_weights': self.pair_weights.tolist(), 'confusion': self.confusion.tolist()}
