"""What every training loss takes besides the batch, what it computes per sample, and what it
returns."""
from typing import NamedTuple, Optional

import torch


class SampleWeights(NamedTuple):
    """Per-sample factors, each (N,): a robust-fairness method's per-class tables indexed by the
    labels (all ones for plain training)."""
    natural: torch.Tensor  # weight of the clean term (TRADES' cross-entropy)
    robust: torch.Tensor   # weight of the adversarial term (TRADES' KL, PGD-AT's cross-entropy)
    radius: torch.Tensor   # multiplier of the attack radius epsilon
    step: torch.Tensor     # multiplier of the attack step size


class LossTerms(NamedTuple):
    """A base loss's per-sample terms after the attack and the train-mode forwards, before any
    weighting, with their autograd graph: what a method's batch_loss reweights or adds to."""
    natural: Optional[torch.Tensor]  # (N,) clean cross-entropy; None: PGD-AT has no clean term
    robust: torch.Tensor      # (N,) KL(p(x) || p(x_adv)) for TRADES, CE(f(x_adv), y) for PGD-AT
    logits_adv: torch.Tensor  # (N, C) train-mode logits on x_adv (at least fp32)
    labels: torch.Tensor      # (N,)


class LossOutput(NamedTuple):
    loss: torch.Tensor        # scalar to back-propagate
    natural: torch.Tensor     # detached: the clean cross-entropy term (0 for PGD-AT)
    robust: torch.Tensor      # detached: the adversarial term (KL for TRADES, CE for PGD-AT)
    logits_adv: torch.Tensor  # detached (N, C) train-mode logits on x_adv; DAFA records these


def weighted_loss(terms: LossTerms, weights: SampleWeights, beta: float) -> LossOutput:
    """The base losses' reduction: TRADES mean_n(a_n CE_n) + beta sum_n(b_n KL_n) / N, PGD-AT
    mean_n(b_n CE_n), with a = weights.natural and b = weights.robust."""
    adversarial = weights.robust * terms.robust
    logits_adv = terms.logits_adv.detach()
    if terms.natural is None:
        robust = adversarial.mean()
        return LossOutput(robust, torch.zeros_like(robust), robust.detach(), logits_adv)
    natural = (weights.natural * terms.natural).mean()
    robust = adversarial.sum() / adversarial.shape[0]
    return LossOutput(natural + beta * robust, natural.detach(), robust.detach(), logits_adv)


def upcast(logits: torch.Tensor) -> torch.Tensor:
    """Logits in at least float32 for softmax, cross-entropy and KL: bf16 autocast returns bf16,
    and a float64 model (the exactness tests) keeps float64."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))
