"""BAT (Sun et al., "Improving Robust Fairness via Balance Adversarial Training", AAAI 2023) as a
robust-fairness method: no per-class tables, but its own loss (losses/bat.py): cross-entropy at
each sample's last still-correct attack iterate, TRADES' KL at the iterate one step past its first
misclassification, and a KL of both towards the uniform distribution."""
from losses import bat_loss

from .base import Method, MethodError


class BAT(Method):
    name = 'bat'

    def __init__(self, args, num_classes, device):
        if args.loss != 'trades':
            raise MethodError('--rob_fairness_algorithm bat is built on TRADES; pass --loss '
                              'trades.')
        super().__init__(args, num_classes, device)

    def loss(self, default):
        return bat_loss
