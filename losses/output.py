"""What every training loss returns."""
from typing import NamedTuple

import torch


class LossOutput(NamedTuple):
    loss: torch.Tensor        # scalar to back-propagate
    natural: torch.Tensor     # detached: the clean cross-entropy term (0 for PGD-AT)
    robust: torch.Tensor      # detached: the adversarial term (KL for TRADES, CE for PGD-AT)
    logits_adv: torch.Tensor  # detached (N, C) train-mode logits on x_adv; DAFA records these
