"""DAFA's rule (Lee et al., ICLR 2024, Section 4) as pure tensor functions: the class
similarity S recorded during epoch tau to the class weights W. A sample of class y is then
trained with loss weight W[y] and adversarial margin W[y] * eps (dafa.method.DAFA puts W into
the train step's class tables; the similarity itself is recorded by
engine.recorders.SimilarityRecorder).
"""
import math

import torch


def _gain_and_loss(similarity: torch.Tensor):
    """Per-class totals of the DAFA rule before scaling by lambda: W = 1 + lam * (gain - loss).

    For an ordered pair i != j: if S[i,i] < S[j,j] (class i is the harder one), i gains
    S[i,j] * S[j,j]; otherwise i loses S[j,i] * S[i,i]. Each amount one class gains the other
    class of the pair loses, so sum(W) stays C (exact ties in the diagonal make both classes lose,
    as the rule is written).
    """
    s = similarity.double()
    d = s.diagonal()
    off = ~torch.eye(len(d), dtype=torch.bool, device=s.device)
    harder = (d[:, None] < d[None, :]) & off      # harder[i, j]: S[i,i] < S[j,j]
    easier = (~harder) & off
    gain = (harder * s * d[None, :]).sum(1)       # sum_j S[i,j] * S[j,j]
    loss = (easier * s.T * d[:, None]).sum(1)     # sum_j S[j,i] * S[i,i]
    return gain, loss


def class_weights(similarity: torch.Tensor, lam: float) -> torch.Tensor:
    """DAFA class weights W (C,) from the class similarity matrix, starting from W = 1.

    Computed on the CPU in float64 whatever the input's device, so that a resumed run recomputes
    bit-identical weights from the similarity saved in its checkpoint.
    """
    gain, loss = _gain_and_loss(similarity.cpu())
    return (1.0 + lam * (gain - loss)).float()


def max_safe_lambda(similarity: torch.Tensor) -> float:
    """The supremum of the lambdas that keep every class weight > 0 (inf if all classes gain)."""
    gain, loss = _gain_and_loss(similarity.cpu())
    net_loss = loss - gain
    if (net_loss <= 0).all():
        return math.inf
    return float(1.0 / net_loss.max())
