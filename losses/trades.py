"""TRADES (Zhang et al., 2019) with class-wise weights and margins.

loss = mean_n(a_n * CE(f(x_n), y_n)) + beta * sum_n(b_n * KL(p(x_n) || p(x_adv_n))) / N, with
x_adv_n found inside the L-inf ball of radius r_n * eps (step s_n * alpha), where (a, b, r, s)
are the sample's class entries of a robust-fairness method's tables (all 1 for plain TRADES).
DAFA sets a = r = s = W[y] and b = 1: as in the official DAFA code its KL term is not
class-weighted; the class weight acts on it through the margin.
"""
import functools
from typing import Tuple

import torch
import torch.nn.functional as F

from .attack import exact_fp32, pgd_linf
from .output import LossOutput, LossTerms, SampleWeights, upcast, weighted_loss


def kl_from_logits(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """sum over the batch of KL(p || q), p = softmax(logits_p), q = softmax(logits_q).

    Computed from log-probabilities (log_target=True): exact, and finite where a probability
    underflows to 0. The official code feeds probabilities to nn.KLDivLoss, whose backward then
    meets 0 * log 0 and turns NaN within ten iterations at lr 0.1 on torch >= 1.13.
    """
    return F.kl_div(F.log_softmax(logits_q, dim=1), F.log_softmax(logits_p, dim=1),
                    reduction='sum', log_target=True)


def per_sample_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """(N,) KL(p_n || q_n), from log-probabilities as kl_from_logits."""
    return F.kl_div(F.log_softmax(logits_q, dim=1), F.log_softmax(logits_p, dim=1),
                    reduction='none', log_target=True).sum(dim=1)


def kl_attack(model: torch.nn.Module, x: torch.Tensor, target_logits: torch.Tensor, *, eps,
              step_size, num_steps: int) -> torch.Tensor:
    """TRADES' inner maximisation: from x + 0.001 N(0, I), num_steps sign steps on
    sum_n KL(softmax(target_logits_n) || softmax(f(x_adv_n))), the model as the caller left it
    (eval mode). The start and the first step in fp32: under bf16 autocast the start's 0.001
    offsets and the logit gap they make are below bf16's resolution, and the first step would
    follow rounding (docs/speed.md); without autocast this is the arithmetic of one call."""
    attack = functools.partial(pgd_linf, model, x, eps=eps, step_size=step_size,
                               objective=lambda logits: kl_from_logits(target_logits, logits))
    with exact_fp32(x.device.type):
        # randn(shape), not randn_like: the noise must not depend on the memory layout.
        x_start = x + 0.001 * torch.randn(x.shape, device=x.device)
        x_adv = attack(x_start=x_start, num_steps=min(num_steps, 1))
    return attack(x_start=x_adv, num_steps=num_steps - 1)


def trades_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                weights: SampleWeights, *, epsilon: float, step_size: float,
                num_steps: int, beta: float, forwards: Tuple[str, ...] = ('x_adv', 'x'),
                reduce=weighted_loss) -> LossOutput:
    """One TRADES loss evaluation, attack included.

    x: (N,3,H,W) in [0,1]; y: (N,) labels; weights: the per-sample factors. The attack runs
    with the model in eval mode (as the official code), the loss in train mode, one forward per
    entry of `forwards`, in that order: x_adv then x as the official TRADES / DAFA code, or a
    method's own official order (WAT: x, x_adv; FRL: x, x_adv, x). The cross-entropy reads the
    first forward of x, the KL's target the last (the same logits in train mode; with three
    forwards, the gradient reaches both, as officially).
    """
    radius, step = weights.radius.view(-1, 1, 1, 1), weights.step.view(-1, 1, 1, 1)
    model.eval()
    with exact_fp32(x.device.type), torch.no_grad():
        logits_clean = upcast(model(x))
    x_adv = kl_attack(model, x, logits_clean, eps=radius * epsilon, step_size=step * step_size,
                      num_steps=num_steps)
    model.train()
    # BatchNorm's running statistics (which the next iteration's eval-mode attack reads) depend
    # on the order and number of the train-mode forwards.
    outputs = [upcast(model(x_adv if name == 'x_adv' else x)) for name in forwards]
    clean = [out for name, out in zip(forwards, outputs) if name == 'x']
    logits, logits_adv = clean[0], outputs[forwards.index('x_adv')]
    terms = LossTerms(F.cross_entropy(logits, y, reduction='none'),
                      per_sample_kl(clean[-1], logits_adv), logits_adv, y)
    return reduce(terms, weights, beta)
