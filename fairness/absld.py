"""ABSLD, anti-bias soft label distillation (Zhao et al., "Improving Adversarial Robust
Fairness via Anti-Bias Soft Label Distillation", NeurIPS 2024).

The student learns from a frozen robust teacher's soft labels on the clean images, sharpened or
smoothed per class: class c's temperatures tau_adv[c] and tau_nat[c] (start 1) give the targets
q_adv = softmax(z_T / tau_adv[y]) and q_nat = softmax(z_T / tau_nat[y]). The attack (model in
eval mode) maximises sum_n KL(q_adv_n || p(x'_n)) from x + 0.001 N(0, I), as TRADES'; then, in
train mode,

    loss = 5/6 D(q_adv, f(x_adv)) + 1/6 D(q_nat, f(x)),   D(q, s) = mean_{n,j} q (log(q + 1e-5)
                                                                       - log softmax(s))

(the mean over all N x K entries). After each epoch, from the per-class sums L_c of the
student's cross-entropy over the epoch (on x_adv for tau_adv, on x for tau_nat), with
g = L - mean(L): tau <- clip(tau - beta g / max|g|, 0.5, 5), beta = --absld_temperature_lr
times the learning rate's factor of the next epoch (the official beta is divided by 10 at each
of the lr's drops). Harder classes get a lower temperature: sharper targets.

Official code: zhaoshiji123/ABSLD (HEAD 7407c3a), resnet18_absld_cifar10.py l. 58-59 (kl_loss),
66-72 (temperatures, beta, bounds), 89-127 (a batch), 173-189 (the drops and the update),
absld_loss.py l. 26-59 (absld_inner_loss).

The official targets: teacher_logits_new_adv and _nat are two .detach() views of the same
storage divided in place row by row (l. 95-100), so both become z_T / (tau_adv[y] tau_nat[y]).
--absld_targets official reproduces that; paper (the default) gives each its own temperature,
as the paper's equations. The student's log-probabilities come from log_softmax, where the
official torch.log(softmax) turns -inf when a probability underflows. A class whose losses all
equal (max |g| = 0) keeps its temperatures, where the official update divides by zero.
"""
import functools

import torch
import torch.nn.functional as F

from engine.cli import UserError
from engine.schedule import lr_at
from losses import LossOutput, SampleWeights
from losses.attack import exact_fp32
from losses.output import upcast
from losses.trades import kl_attack

from .base import Method, scaled_epochs

TEMPERATURE_BOUNDS = (0.5, 5.0)  # resnet18_absld_cifar10.py l. 71-72
ADV_SHARE = 5 / 6                # l. 125


def teacher_targets(z: torch.Tensor, y: torch.Tensor, temperatures: torch.Tensor,
                    shared: bool):
    """(q_adv, q_nat) logits-to-be: the teacher's logits z divided by the samples' class
    temperatures (temperatures: (2, K), adv then nat); shared: both by their product, as the
    official code's shared storage does."""
    tau_adv, tau_nat = temperatures[0][y, None], temperatures[1][y, None]
    if shared:
        both = z / tau_adv / tau_nat
        return both, both
    return z / tau_adv, z / tau_nat


def distillation(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """mean_{n,j} q (log(q + 1e-5) - log softmax(logits)), q = softmax(target_logits)."""
    q = F.softmax(target_logits, dim=1)
    return (q * (torch.log(q + 1e-5) - F.log_softmax(logits, dim=1))).mean()


def absld_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, weights: SampleWeights,
               *, epsilon: float, step_size: float, num_steps: int, beta: float, teacher,
               temperatures: torch.Tensor, loss_sums: torch.Tensor, shared: bool) -> LossOutput:
    """One ABSLD loss evaluation, attack included; adds the student's per-class cross-entropy
    sums (adv, nat) to loss_sums in place. beta is TRADES' and unused."""
    radius, step = weights.radius.view(-1, 1, 1, 1), weights.step.view(-1, 1, 1, 1)
    with exact_fp32(x.device.type), torch.no_grad():
        z = upcast(teacher(x))
    target_adv, target_nat = teacher_targets(z, y, temperatures, shared)
    model.eval()
    x_adv = kl_attack(model, x, target_adv, eps=radius * epsilon, step_size=step * step_size,
                      num_steps=num_steps)
    model.train()
    logits_adv, logits = upcast(model(x_adv)), upcast(model(x))  # the official order
    with torch.no_grad():
        for row, out in zip(loss_sums, (logits_adv, logits)):
            row.index_add_(0, y, F.cross_entropy(out, y, reduction='none').to(row.dtype))
    adversarial, natural = distillation(target_adv, logits_adv), distillation(target_nat, logits)
    return LossOutput(ADV_SHARE * adversarial + (1 - ADV_SHARE) * natural, natural.detach(),
                      adversarial.detach(), logits_adv.detach())


def updated_temperatures(temperatures: torch.Tensor, loss_sums: torch.Tensor,
                         rate: float) -> torch.Tensor:
    """(2, K): each row's tau - rate g / max|g|, g = L - mean(L), clipped to the bounds."""
    gap = loss_sums - loss_sums.mean(dim=1, keepdim=True)
    scale = gap.abs().max(dim=1, keepdim=True).values
    step = torch.where(scale > 0, gap / scale.clamp(min=torch.finfo(gap.dtype).tiny), 0.0)
    return (temperatures - rate * step).clamp(*TEMPERATURE_BOUNDS)


class ABSLD(Method):
    name = 'absld'
    label = 'ABSLD'
    paper = ('Shiji Zhao, Ranjie Duan, Xizhe Wang, Xingxing Wei', 'NeurIPS 2024')
    losses = ('trades',)  # the attack is TRADES' KL, towards the teacher's targets
    teacher_flag = 'absld_teacher'
    teacher_of = 'none'  # scripts/reproduce.py: the same seed's TRADES run

    @classmethod
    def official_args(cls, epochs, model):
        # resnet18_absld_cifar10.py l. 20-22 (300 epochs, batch 128, eps 8/255), 54 (SGD lr
        # 0.1, momentum 0.9 without Nesterov, weight decay 2e-4), 173-176 (x0.1 after epochs
        # 215, 260, 285), 104 (absld_inner_loss: 10 steps of 2/255).
        return ['--epochs', str(scaled_epochs(300, epochs)), '--lr', '0.1',
                '--lr_schedule', 'absld', '--no-nesterov', '--weight_decay', '2e-4',
                '--epsilon', repr(8 / 255), '--pgd_step_size', repr(2 / 255),
                '--absld_targets', 'official']

    @staticmethod
    def add_arguments(group) -> None:
        group.add_argument('--absld_teacher', metavar='CHECKPOINT',
                           help="ABSLD: the teacher, a finished run's checkpoint (the official "
                                "teacher is TRADES' WRN-34-10; scripts/reproduce.py passes the "
                                "same seed's TRADES run); its fingerprint is in the recipe")
        group.add_argument('--absld_teacher_model',
                           help='ABSLD: the teacher\'s network when --absld_teacher is a bare '
                                'state_dict (default: the checkpoint\'s own --model)')
        group.add_argument('--absld_temperature_lr', type=float, default=0.1,
                           help='ABSLD: beta, the temperatures\' step per epoch (official 0.1, '
                                'resnet18_absld_cifar10.py l. 69; x0.1 with each lr drop)')
        group.add_argument('--absld_targets', choices=('paper', 'official'), default='paper',
                           help='ABSLD: the teacher targets; paper = each its own temperature, '
                                'official = both divided by tau_adv * tau_nat (the official '
                                'code\'s shared storage, l. 95-100)')

    @classmethod
    def check_arguments(cls, args) -> None:
        if not args.absld_temperature_lr >= 0:
            raise UserError(f'--absld_temperature_lr {args.absld_temperature_lr} must be >= 0 '
                            '(official 0.1).')

    def __init__(self, args, num_classes, device):
        super().__init__(args, num_classes, device)
        # (2, K) adv then nat, on the device: the loss reads them by indexing; changed in place.
        self.temperatures = torch.ones(2, num_classes, device=device)
        self.loss_sums = torch.zeros(2, num_classes, dtype=torch.float64, device=device)

    def loss(self, default):
        return functools.partial(absld_loss, teacher=self.teacher,
                                 temperatures=self.temperatures, loss_sums=self.loss_sums,
                                 shared=self.args.absld_targets == 'official')

    def before_epoch(self, epoch, ctx) -> None:
        self.loss_sums.zero_()

    def after_epoch(self, epoch, ctx, recorded, row) -> None:
        ctx.all_sum(self.loss_sums)
        a = self.args
        rate = a.absld_temperature_lr * lr_at(epoch + 1, schedule=a.lr_schedule, base_lr=a.lr,
                                              epochs=a.epochs) / a.lr
        self.temperatures.copy_(updated_temperatures(self.temperatures.double(),
                                                     self.loss_sums, rate))

    def state_dict(self) -> dict:
        return {'temperatures': self.temperatures.cpu()}

    def load_state_dict(self, state, epoch) -> None:
        self.temperatures.copy_(state['temperatures'])

    def method_state(self) -> dict:
        adv, nat = self.temperatures.tolist()
        return {'temperature_adv': adv, 'temperature_nat': nat}
