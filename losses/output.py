"""What every training loss takes besides the batch, and what it returns."""
from typing import NamedTuple

import torch


class SampleWeights(NamedTuple):
    """Per-sample factors, each (N,): a robust-fairness method's per-class tables indexed by the
    labels (all ones for plain training)."""
    natural: torch.Tensor  # weight of the clean term (TRADES' cross-entropy)
    robust: torch.Tensor   # weight of the adversarial term (TRADES' KL, PGD-AT's cross-entropy)
    radius: torch.Tensor   # multiplier of the attack radius epsilon
    step: torch.Tensor     # multiplier of the attack step size


class LossOutput(NamedTuple):
    loss: torch.Tensor        # scalar to back-propagate
    natural: torch.Tensor     # detached: the clean cross-entropy term (0 for PGD-AT)
    robust: torch.Tensor      # detached: the adversarial term (KL for TRADES, CE for PGD-AT)
    logits_adv: torch.Tensor  # detached (N, C) train-mode logits on x_adv; DAFA records these


def upcast(logits: torch.Tensor) -> torch.Tensor:
    """Logits in at least float32 for softmax, cross-entropy and KL: bf16 autocast returns bf16,
    and a float64 model (the exactness tests) keeps float64."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))
