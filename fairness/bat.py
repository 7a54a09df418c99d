"""BAT (Sun et al., "Improving Robust Fairness via Balance Adversarial Training", AAAI 2023) as a
robust-fairness method: no per-class tables, but its own loss (losses/bat.py): cross-entropy at
each sample's last still-correct attack iterate, TRADES' KL at the iterate one step past its first
misclassification, and a KL of both towards the uniform distribution."""
from losses import bat_loss

from .base import Method, scaled_epochs


class BAT(Method):
    name = 'bat'
    label = 'BAT'
    paper = ('Chunyu Sun et al.', 'AAAI 2023')
    losses = ('trades',)  # its loss is TRADES' with its own attack points

    @classmethod
    def official_args(cls, epochs, model):
        # train.py lines 24 (weight decay 2e-4), 28 (momentum 0.9 without Nesterov) and 166-174
        # (lr x0.1 at 75, x0.01 at 90, x0.001 at 100: our 'trades' at 100 epochs). Its default
        # of 200 epochs (line 22) adds 100 more at lr 1e-4; we stop at 100.
        return ['--epochs', str(scaled_epochs(100, epochs)), '--lr_schedule', 'trades',
                '--weight_decay', '2e-4', '--no-nesterov']

    def loss(self, default):
        return bat_loss
