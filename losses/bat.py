"""BAT (Sun et al., "Improving Robust Fairness via Balance Adversarial Training", AAAI 2023).

Two early-stopped TRADES-KL attacks per batch with the model in eval mode, each from its own
random start clamp(x + 0.001 N(0, 1), 0, 1), drawn in the official order (last clean's first):
`last clean` keeps each sample's last iterate that is still classified correctly (the start itself
if that is already wrong); `first adversarial` keeps the iterate one step after the first
misclassification (tau = 1 extra step). A sample never stopped keeps the final iterate. Then, in
train mode,

    loss = CE(f(x_lc), y) + beta * KL(f(x) || f(x_fa)) + KL(f(x_lc) || u) + KL(f(x_fa) || u)

(u the uniform distribution; KL terms summed and divided by the batch size). Official code:
silvercherry/Improving-Robust-Fairness-via-Balance-Adversarial-Training, train.py (`BAT_loss`,
`train`: stop_to_lastclean, then stop_to_firstadv), train_mode/stop_to_lastclean.py,
train_mode/stop_to_firstadv.py (each draws its own torch.randn start).

The official attacks drop each stopped sample from the batch with a per-sample Python loop; here
every sample keeps being stepped and a per-sample mask freezes what each attack keeps, on the
device, without a host sync (the same examples: each sample's gradient depends on itself alone,
the model being in eval mode). The start is drawn on x's device (the official code draws it on
the CPU and copies it), and the official loops' per-step noise of amplitude omega = 0 is not
drawn. The per-sample radius and step multipliers are applied as in the other losses (all 1 for
BAT).
"""
import contextlib
from functools import partial

import torch
import torch.nn.functional as F

from .attack import exact_fp32, project_linf
from .output import LossOutput, SampleWeights, upcast
from .trades import kl_from_logits, per_sample_kl


def early_stopped_attack(model, x, y, logits_clean, *, eps, step_size, num_steps: int, tau: int,
                         before: bool):
    """The TRADES-KL attack from its own random start, stopped for each sample at its (tau + 1)-th
    misclassified iterate; returns that iterate, or the one before it if `before` (the start
    itself if the start is misclassified), and the final iterate for a sample never stopped.
    (N, ...) detached. eps and step_size: floats or per-sample (N, 1, 1, 1) tensors."""
    # randn(shape) on the default generator, as the official torch.randn(data.shape).
    x_adv = (x + 0.001 * torch.randn(x.shape, device=x.device)).clamp(0.0, 1.0).detach()
    shape = (-1,) + (1,) * (x.dim() - 1)
    kept = x_adv.clone()
    running = torch.ones(len(x), dtype=torch.bool, device=x.device)
    extra = torch.full((len(x),), tau, device=x.device)  # misclassified steps still allowed
    previous = x_adv
    for i in range(num_steps):
        x_adv.requires_grad_(True)
        # The first step in fp32, as TRADES' (losses/trades.py): the start is below bf16's grain.
        with exact_fp32(x.device.type) if i == 0 else contextlib.nullcontext():
            logits = upcast(model(x_adv))
        wrong = running & (logits.detach().argmax(1) != y)
        stop = wrong & (extra == 0)
        kept = torch.where(stop.view(shape), previous if before else x_adv.detach(), kept)
        extra = torch.where(wrong, extra - 1, extra)
        running &= ~stop
        grad, = torch.autograd.grad(kl_from_logits(logits_clean, logits), x_adv)
        previous = x_adv.detach()
        x_adv = project_linf(previous + step_size * grad.sign(), x, eps)
    # Never stopped: the final iterate (not checked again, as the official loops).
    return torch.where(running.view(shape), x_adv, kept).detach()


def early_stopped_attacks(model, x, y, *, eps, step_size, num_steps: int, tau: int = 1):
    """(x_last_clean, x_first_adv): two attacks, each from its own start, in the official order.
    The caller sets the model's mode (eval)."""
    with torch.no_grad(), exact_fp32(x.device.type):
        logits_clean = upcast(model(x))
    attack = partial(early_stopped_attack, model, x, y, logits_clean, eps=eps,
                     step_size=step_size, num_steps=num_steps)
    x_last_clean = attack(tau=0, before=True)  # stop_to_lastclean
    x_first_adv = attack(tau=tau, before=False)  # stop_to_firstadv
    return x_last_clean, x_first_adv


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
