"""Training losses, one file each. Every loss has the signature

    loss_fn(model, x, y, weights, *, epsilon, step_size, num_steps, beta,
            reduce=weighted_loss) -> LossOutput

with x in [0,1] and weights a SampleWeights: the per-sample factors of a robust-fairness
method (clean-term and adversarial-term weights, radius and step multipliers; ones for plain
training). TRADES and PGD-AT hand their per-sample terms (LossTerms) to `reduce`, which a method
replaces to reweight samples or add a term without touching the attack (Method.batch_loss).
"""
from .bat import bat_loss
from .output import LossOutput, LossTerms, SampleWeights, weighted_loss
from .pgd import pgd_loss
from .trades import kl_from_logits, per_sample_kl, trades_loss

LOSSES = {'trades': trades_loss, 'pgd': pgd_loss}  # --loss; BAT's loss comes with its method

__all__ = ['LOSSES', 'LossOutput', 'LossTerms', 'SampleWeights', 'bat_loss', 'kl_from_logits',
           'per_sample_kl', 'pgd_loss', 'trades_loss', 'weighted_loss']
