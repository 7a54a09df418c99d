"""Training losses, one file each. Every loss has the signature

    loss_fn(model, x, y, class_weight, *, epsilon, step_size, num_steps, beta) -> LossOutput

with x in [0,1], class_weight the per-sample DAFA weight W[y] (ones for the plain method).
"""
from .output import LossOutput
from .pgd import pgd_loss
from .trades import kl_from_logits, trades_loss

LOSSES = {'trades': trades_loss, 'pgd': pgd_loss}

__all__ = ['LOSSES', 'LossOutput', 'kl_from_logits', 'pgd_loss', 'trades_loss']
