"""PGD-AT (Madry et al., 2018) with class-wise weights and margins.

loss = mean_n(b_n * CE(f(x_adv_n), y_n)), x_adv_n found by PGD on the cross-entropy inside the
L-inf ball of radius r_n * eps with step s_n * alpha, from a uniform random start, where
(b, r, s) are the sample's robust weight, radius and step multipliers (DAFA: all W[y]).
The official madry_loss takes a second, unweighted step and projection inside each iteration,
which cancels the class-wise margins; this is the method as the paper describes it.
"""
import torch
import torch.nn.functional as F

from .attack import pgd_linf, project_linf
from .output import LossOutput, LossTerms, SampleWeights, upcast, weighted_loss


def pgd_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
             weights: SampleWeights, *, epsilon: float, step_size: float,
             num_steps: int, beta: float = 0.0, reduce=weighted_loss) -> LossOutput:
    """One PGD-AT loss evaluation, attack included (beta is TRADES-only and unused here);
    reduce(LossTerms, weights, beta) makes the loss from the per-sample terms."""
    eps = weights.radius.view(-1, 1, 1, 1) * epsilon
    model.eval()
    noise = 2 * torch.rand(x.shape, device=x.device) - 1  # layout-independent, as in trades
    x_start = project_linf(x + noise * eps, x, eps)
    x_adv = pgd_linf(model, x, x_start, lambda logits: F.cross_entropy(logits, y, reduction='sum'),
                     eps=eps, step_size=weights.step.view(-1, 1, 1, 1) * step_size,
                     num_steps=num_steps)
    model.train()
    logits_adv = upcast(model(x_adv))
    terms = LossTerms(None, F.cross_entropy(logits_adv, y, reduction='none'), logits_adv, y)
    return reduce(terms, weights, beta)
