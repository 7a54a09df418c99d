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


def pgd_attack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, x_start: torch.Tensor,
               *, eps, step_size, num_steps: int):
    """PGD-AT's attack: (x_adv, None), None meaning every sample is trained on. An attack
    override (Method.loss: HAM's) returns (x_adv, keep) with keep an (N,) bool mask instead."""
    return pgd_linf(model, x, x_start, lambda logits: F.cross_entropy(logits, y, reduction='sum'),
                    eps=eps, step_size=step_size, num_steps=num_steps), None


def pgd_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
             weights: SampleWeights, *, epsilon: float, step_size: float,
             num_steps: int, beta: float = 0.0, reduce=weighted_loss,
             attack=pgd_attack) -> LossOutput:
    """One PGD-AT loss evaluation, attack included (beta is TRADES-only and unused here);
    reduce(LossTerms, weights, beta) makes the loss from the per-sample terms; attack (run in
    eval mode) may keep a subset of the samples, which alone are trained on."""
    eps = weights.radius.view(-1, 1, 1, 1) * epsilon
    model.eval()
    noise = 2 * torch.rand(x.shape, device=x.device) - 1  # layout-independent, as in trades
    x_start = project_linf(x + noise * eps, x, eps)
    x_adv, keep = attack(model, x, y, x_start, eps=eps,
                         step_size=weights.step.view(-1, 1, 1, 1) * step_size,
                         num_steps=num_steps)
    if keep is not None:
        return kept_loss(model, x_adv, y, weights, keep, beta, reduce)
    model.train()
    logits_adv = upcast(model(x_adv))
    terms = LossTerms(None, F.cross_entropy(logits_adv, y, reduction='none'), logits_adv, y)
    return reduce(terms, weights, beta)


def kept_loss(model, x_adv, y, weights: SampleWeights, keep: torch.Tensor, beta: float,
              reduce) -> LossOutput:
    """PGD-AT's loss on the kept samples alone: their train-mode forward (BatchNorm's batch
    statistics are theirs, as in HAM's official code). One host sync: the kept count sizes the
    forward. The output's logits_adv hold the kept rows' logits and zeros elsewhere. With fewer
    than two kept (BatchNorm's batch statistics need two samples where a feature map is 1 x 1),
    the batch is skipped: the loss has no path to the weights (SGD leaves them, and their
    momentum, as they are), and nothing runs in train mode."""
    index = keep.nonzero().squeeze(1)
    if len(index) < 2:
        zero = torch.zeros((), device=x_adv.device, requires_grad=True)
        with torch.no_grad():
            logits = upcast(model(x_adv))  # eval mode still: only the shape is used
        return LossOutput(zero, zero.detach(), zero.detach(), torch.zeros_like(logits))
    model.train()
    logits_adv = upcast(model(x_adv[index]))
    y_kept = y[index]
    terms = LossTerms(None, F.cross_entropy(logits_adv, y_kept, reduction='none'), logits_adv,
                      y_kept)
    out = reduce(terms, SampleWeights(*(w[index] for w in weights)), beta)
    full = out.logits_adv.new_zeros(len(y), out.logits_adv.shape[1])
    return out._replace(logits_adv=full.index_copy(0, index, out.logits_adv))
