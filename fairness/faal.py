"""FAAL (Zhang et al., "Towards Fairness-Aware Adversarial Learning", CVPR 2024).

Each batch, after the attack and the train-mode forwards: the CW margin of every adversarial
example on the softmax, m_n = max_{j != y_n} p_j(x_adv_n) - p_{y_n}(x_adv_n), summed per class,
a_c = sum_{n: y_n = c} m_n (= n_c times the class mean: the official objective sums over the
batch's samples). The class distribution p solves

    maximise_p  sum_c a_c p_c   subject to  p >= 0,  sum_c p_c = 1,  KL(u || p) <= r

(u uniform over the K classes; r = --faal_radius), and sample n gets the weight K p_{y_n} on its
loss terms: PGD-AT's loss is mean_n(K p_{y_n} CE_n), TRADES' mean_n(K p_{y_n} (CE_n + beta
KL_n)). Official code: TrustAI/FAAL (HEAD b20ee9d), ft_prn.py l. 18-29 (`cw`), 217-232 (the
margins, a missing class's mean set to -1 with no sample to weigh), 237-243 (the problem, built
each batch), 245-253 (the losses), FAAL.py l. 32-76 and 101-127 (cvxpy, ECOS first).

The problem is solved here without a solver, on the device and without a host sync, from its
optimality conditions: p_c = 1 / (nu - a_c), normalised, where nu > max a solves
sum_c u_c log(nu - a_c) + log sum_c u_c / (nu - a_c) = r (the KL constraint is tight unless
every a_c is equal, when p = u). nu is found by a grid search in log(nu - max a) refined
five times (a bracket of 1e-10 in that logarithm).

Under the shared recipe FAAL trains plainly for --faal_warmup epochs (default: --dafa_warmup, so
a FAAL run branches off the plain run's warm-up that DAFA branches off), then reweights. The
official recipe fine-tunes the same seed's finished plain run of its loss for 2 epochs
(scaled).
"""
import torch

from engine.cli import UserError
from losses import weighted_loss

from .base import AfterWarmup, preact_normalized, scaled_epochs

GRID = 256          # points per refinement of log(nu - max a)
REFINEMENTS = 5
LOG_GAP = (-50.0, 50.0)  # nu - max a between e^-50 and e^50


def cw_margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N,) max_{j != y} softmax_j - softmax_y, in [-1, 1]."""
    probs = torch.softmax(logits, dim=1)
    label = probs.gather(1, y[:, None]).squeeze(1)
    others = probs.scatter(1, y[:, None], float('-inf'))
    return others.max(dim=1).values - label


def worst_case_distribution(a: torch.Tensor, r: float) -> torch.Tensor:
    """(K,) float64 p maximising a . p over the simplex with KL(uniform || p) <= r (r > 0)."""
    a = a.double()
    gaps = a.max() - a  # >= 0
    uniform = 1.0 / a.numel()
    low, high = (torch.tensor(v, dtype=torch.float64, device=a.device) for v in LOG_GAP)
    for _ in range(REFINEMENTS):
        t = low + (high - low) * torch.linspace(0, 1, GRID, dtype=torch.float64,
                                                device=a.device)
        distance = t.exp()[:, None] + gaps  # nu - a_c, (GRID, K)
        kl = uniform * distance.log().sum(1) + torch.log(uniform * (1 / distance).sum(1))
        # kl falls as nu grows: the root lies after the last grid point still above r.
        above = (kl > r).sum().clamp(1, GRID - 1).view(1)
        low, high = t.index_select(0, above - 1), t.index_select(0, above)
    inverse = 1 / (high.exp() + gaps)
    return inverse / inverse.sum()


def faal_class_weights(logits_adv: torch.Tensor, y: torch.Tensor, num_classes: int,
                       r: float) -> torch.Tensor:
    """(K,) float32 K p: FAAL's class weights for one batch (mean 1)."""
    sums = torch.zeros(num_classes, dtype=torch.float64, device=y.device)
    sums.index_add_(0, y, cw_margins(logits_adv.detach().float(), y).double())
    return (num_classes * worst_case_distribution(sums, r)).float()


class FAAL(AfterWarmup):
    name = 'faal'
    label = 'FAAL'
    rule = 'the reweighting'
    paper = ('Yanghao Zhang, Tianle Zhang, Ronghui Mu, Xiaowei Huang, Wenjie Ruan', 'CVPR 2024')
    fine_tunes = 'none'  # ft_prn.py fine-tunes a finished PGD-AT (or TRADES) model

    @classmethod
    def official_args(cls, epochs, model):
        # README / run_prn.py l. 9: --epochs 2 --lr-max 0.01 --lr-schedule multistep (x0.1 at
        # epochs / 2, ft_prn.py l. 147-148) --epsilon 8 --steps 10 --alpha 2 --scale 0.5
        # --normalization std (utils.py l. 8-9); SGD momentum 0.9 without Nesterov, weight decay
        # 5e-4 (ft_prn.py l. 45-46, 128); preact_resnet.py's PreActResNet18. The loss is the
        # variant's: pgd_faal is the README's FAAL_AT from PGD-AT, faal FAAL on TRADES' loss
        # (--loss TRADES, l. 249-253) from TRADES.
        return (['--epochs', str(scaled_epochs(2, epochs)), '--lr', '0.01',
                 '--lr_schedule', 'half', '--no-nesterov', '--epsilon', repr(8 / 255),
                 '--pgd_step_size', repr(2 / 255), '--faal_radius', '0.5', '--faal_warmup', '0']
                + preact_normalized(model))

    @classmethod
    def add_arguments(cls, group) -> None:
        group.add_argument('--faal_radius', type=float, default=0.5,
                           help='FAAL: r, the KL radius around the uniform class distribution '
                                '(every official run uses 0.5: README, run_prn.py l. 7; the '
                                'argparse default, ft_prn.py l. 44, is 1)')
        cls.add_warmup_argument(group)

    @classmethod
    def check_arguments(cls, args) -> None:
        if not args.faal_radius > 0:
            raise UserError(f'--faal_radius {args.faal_radius} must be > 0 (FAAL: the KL '
                            'radius; the official runs use 0.5).')
        super().check_arguments(args)

    def __init__(self, args, num_classes, device):
        super().__init__(args, num_classes, device)
        # The epoch's sum of the batches' K p and their count, on the device (method_state).
        self.weight_sums = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.batches = torch.zeros((), dtype=torch.float64, device=device)
        self.class_weights = None  # (K,) the last epoch's mean K p, CPU

    def before_epoch(self, epoch, ctx) -> None:
        super().before_epoch(epoch, ctx)
        self.weight_sums.zero_()
        self.batches.zero_()

    def batch_loss(self, terms, weights, beta):
        if not self.active:
            return weighted_loss(terms, weights, beta)
        kp = faal_class_weights(terms.logits_adv, terms.labels, self.num_classes,
                                self.args.faal_radius)
        self.weight_sums += kp.double()
        self.batches += 1
        sample = kp[terms.labels]
        return weighted_loss(terms, weights._replace(natural=weights.natural * sample,
                                                     robust=weights.robust * sample), beta)

    def after_epoch(self, epoch, ctx, recorded, row) -> None:
        if self.active:
            self.class_weights = (self.weight_sums / self.batches).float().cpu()

    def state_dict(self) -> dict:
        return {'class_weights': self.class_weights}

    def load_state_dict(self, state, epoch) -> None:
        self.class_weights = state.get('class_weights')

    def method_state(self) -> dict:
        return {} if self.class_weights is None else {
            'class_weights': self.class_weights.tolist()}
