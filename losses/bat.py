"""BAT (Sun et al., "Improving Robust Fairness via Balance Adversarial Training", AAAI 2023).

Two early-stopped TRADES-KL attacks per batch, both from clamp(x + 0.001 N(0, 1), 0, 1) with the
model in eval mode: `last clean` keeps each sample's last iterate that is still classified
correctly (the start itself if that is already wrong); `first adversarial` keeps the iterate one
step after the first misclassification (tau = 1 extra step). A sample never stopped keeps the
final iterate. Then, in train mode,

    loss = CE(f(x_lc), y) + beta * KL(f(x) || f(x_fa)) + KL(f(x_lc) || u) + KL(f(x_fa) || u)

(u the uniform distribution; KL terms summed and divided by the batch size). Official code:
silvercherry/Improving-Robust-Fairness-via-Balance-Adversarial-Training, train.py (`BAT_loss`,
`train`), train_mode/stop_to_lastclean.py, stop_to_firstadv.py.

The official attacks drop each stopped sample from the batch with a per-sample Python loop; here
every sample keeps being stepped and a per-sample mask freezes what each attack keeps, on the
device, without a host sync (the same examples: each sample's gradient depends on itself alone,
the model being in eval mode). The per-sample radius and step multipliers are applied as in the
other losses (all 1 for BAT).
"""
import torch
import torch.nn.functional as F

from .attack import project_linf
from .output import LossOutput, SampleWeights, upcast
from .trades import kl_from_logits, per_sample_kl


def early_stopped_attacks(model, x, y, *, eps, step_size, num_steps: int, tau: int = 1):
    """(x_last_clean, x_first_adv), each (N, ...) detached. eps and step_size: floats or
    per-sample (N, 1, 1, 1) tensors. The caller sets the model's mode (eval)."""
    with torch.no_grad():
        logits_clean = upcast(model(x))
    x_adv = (x + 0.001 * torch.randn(x.shape, device=x.device)).clamp(0.0, 1.0).detach()
    shape = (-1,) + (1,) * (x.dim() - 1)
    last_clean, first_adv = x_adv.clone(), x_adv.clone()
    lc_open = torch.ones(len(x), dtype=torch.bool, device=x.device)  # not yet fooled
    fa_open = lc_open.clone()
    fa_extra = torch.full((len(x),), tau, device=x.device)  # steps still allowed once fooled
    previous = x_adv
    for _ in range(num_steps):
        x_adv.requires_grad_(True)
        logits = upcast(model(x_adv))
        wrong = logits.detach().argmax(1) != y
        # last clean: fooled now -> keep the iterate before (the start itself at step 0).
        stop = lc_open & wrong
        last_clean = torch.where(stop.view(shape), previous, last_clean)
        lc_open &= ~wrong
        # first adversarial: fooled now, after its tau extra steps -> keep this iterate.
        stop = fa_open & wrong & (fa_extra == 0)
        first_adv = torch.where(stop.view(shape), x_adv.detach(), first_adv)
        fa_extra = torch.where(fa_open & wrong & (fa_extra > 0), fa_extra - 1, fa_extra)
        fa_open &= ~stop
        grad, = torch.autograd.grad(kl_from_logits(logits_clean, logits), x_adv)
        previous = x_adv.detach()
        x_adv = project_linf(previous + step_size * grad.sign(), x, eps)
    # Never stopped: the final iterate (not checked again, as the official loops).
    last_clean = torch.where(lc_open.view(shape), x_adv, last_clean)
    first_adv = torch.where(fa_open.view(shape), x_adv, first_adv)
    return last_clean.detach(), first_adv.detach()


def bat_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, weights: SampleWeights,
             *, epsilon: float, step_size: float, num_steps: int, beta: float) -> LossOutput:
    """One BAT loss evaluation, both attacks included."""
    radius, step = weights.radius.view(-1, 1, 1, 1), weights.step.view(-1, 1, 1, 1)
    model.eval()
    x_lc, x_fa = early_stopped_attacks(model, x, y, eps=radius * epsilon,
                                       step_size=step * step_size, num_steps=num_steps)
    model.train()
    # The official order of the three train-mode forwards (BatchNorm statistics).
    logits_lc, logits_fa, logits = upcast(model(x_lc)), upcast(model(x_fa)), upcast(model(x))
    uniform = torch.full_like(logits, 0.0)  # equal logits: the uniform distribution
    n = x.shape[0]
    natural = (weights.natural * F.cross_entropy(logits_lc, y, reduction='none')).mean()
    robust = (weights.robust * per_sample_kl(logits, logits_fa)).sum() / n
    balance = (per_sample_kl(logits_lc, uniform) + per_sample_kl(logits_fa, uniform)).sum() / n
    return LossOutput(natural + beta * robust + balance, natural.detach(), robust.detach(),
                      logits_fa.detach())

