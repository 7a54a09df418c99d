"""BAT (Sun et al., "Improving Robust Fairness via Balance Adversarial Training", AAAI 2023) as a
robust-fairness method: no per-class tables, but its own loss (losses/bat.py): cross-entropy at
each sample's last still-correct attack iterate, TRADES' KL at the iterate one step past its first
misclassification, and a KL of both towards the uniform distribution."""
from losses import bat_loss

from .base import Method


class BAT(Method):
    name = 'bat'
    label = 'BAT'
    losses = ('trades',)  # its loss is TRADES' with its own attack points

    def loss(self, default):
        return bat_loss
