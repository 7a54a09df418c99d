"""Training losses, one file each. Every loss has the signature

    loss_fn(model, x, y, weights, *, epsilon, step_size, num_steps, beta) -> LossOutput

with x in [0,1] and weights a SampleWeights: the per-sample factors of a robust-fairness
method (clean-term and adversarial-term weights, radius and step multipliers; ones for plain
training).
"""
from .bat import bat_loss
from .output import LossOutput, SampleWeights
from .pgd import pgd_loss
from .trades import kl_from_logits, per_sample_kl, trades_loss

LOSSES = {'trades': trades_loss, 'pgd': pgd_loss}  # --loss; BAT's loss comes with its method

__all__ = ['LOSSES', 'LossOutput', 'SampleWeights', 'bat_loss', 'kl_from_logits',
           'per_sample_kl', 'pgd_loss', 'trades_loss']
