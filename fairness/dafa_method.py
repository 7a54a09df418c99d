"""DAFA (Lee et al., ICLR 2024) as a robust-fairness method: from the class similarity recorded
during epoch tau, class weights W that weight the loss of class y by W[y] and scale its attack
radius and step by W[y] for the rest of training. The formulas live in the dafa package."""
import torch

import dafa

from .base import Method, MethodError


class DAFA(Method):
    name = 'dafa'

    def __init__(self, args, num_classes, device):
        super().__init__(args, num_classes, device)
        self.weights = None  # (C,) float32, CPU, once computed

    def _apply(self, class_names=None) -> None:
        weights = dafa.class_weights(self.similarity, self.args.dafa_lambda)
        dafa.check_class_weights(weights, self.similarity, self.args.dafa_lambda, class_names)
        self.weights = weights
        # TRADES: the clean cross-entropy is weighted, the KL is not (the official code);
        # PGD-AT's only term is the adversarial cross-entropy.
        robust = weights if self.args.loss == 'pgd' else 1.0
        self.tables.set(natural=weights, robust=robust, radius=weights, step=weights)

    def after_epoch(self, epoch, ctx, recorder, row) -> None:
        super().after_epoch(epoch, ctx, recorder, row)
        if epoch == self.tau:
            self._apply(ctx.class_names)
            ctx.log('DAFA class weights: ' + ', '.join(
                f'{name} {w:.3f}' for name, w in zip(ctx.class_names, self.weights.tolist())))
            row['class_weights'] = self.weights.tolist()

    def load_state_dict(self, state, epoch) -> None:
        super().load_state_dict(state, epoch)
        if epoch >= self.tau:
            if self.similarity is None:
                raise MethodError(f'--resume: the checkpoint is past epoch {self.tau} but holds '
                                  'no class similarity; resume from its checkpoint-epochTAU.pt.')
            # Recomputed, not loaded: identical for a DAFA checkpoint, and what branches a DAFA
            # run (any lambda) off a plain run's warm-up checkpoint.
            self._apply()

    def method_state(self) -> dict:
        return {} if self.weights is None else {'class_weights': self.weights.tolist()}

    def class_weights(self) -> torch.Tensor:
        return torch.ones(self.num_classes) if self.weights is None else self.weights.clone()
