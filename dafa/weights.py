"""Class similarity and class weights, the two formulas of DAFA (Section 4 of the paper)."""
import math

import torch


def class_similarity(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """S[i, j] = mean over the samples of class i of their probability on class j.

    probs: (N, C) softmax outputs; labels: (N,) class indices. Returns a (C, C) float64 tensor
    whose rows sum to 1. Every class must have at least one sample.
    """
    recorder = SimilarityRecorder(num_classes, probs.device)
    recorder.sums.index_add_(0, labels, probs.double())
    recorder.counts.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
    return recorder.similarity()


class SimilarityRecorder:
    """Accumulates class similarity on the device, batch by batch, without a host sync.

    The softmax is taken in float32 and summed in float64, as the official code (float32
    probabilities stored in a float64 array, then averaged): over 5,000 samples per class a
    float32 sum would lose ~1e-4 of the mean. C x C sums cost nothing either way.
    """

    def __init__(self, num_classes: int, device):
        self.num_classes = num_classes
        self.sums = torch.zeros(num_classes, num_classes, device=device, dtype=torch.float64)
        self.counts = torch.zeros(num_classes, device=device, dtype=torch.float64)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        probs = torch.softmax(logits.detach().float(), dim=1)
        self.sums.index_add_(0, labels, probs.double())
        # index_add_ rather than bincount: bincount syncs to size its output.
        self.counts.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))

    def tensors(self):
        """What is summed over samples: summed over processes, it is one process's record."""
        return [self.sums, self.counts]

    def similarity(self) -> torch.Tensor:
        """The (C, C) float64 similarity matrix; called once, at the end of the recording epoch."""
        missing = (self.counts == 0).nonzero().flatten().tolist()
        if missing:
            raise ValueError(f'class similarity: classes {missing} have no recorded samples; '
                             'every class needs training samples (raise --n_train).')
        return self.sums / self.counts[:, None]


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


class ClassWeightError(ValueError):
    """A lambda so large that a class weight is <= 0."""


def check_class_weights(weights: torch.Tensor, similarity: torch.Tensor, lam: float,
                        class_names=None) -> None:
    """Raise ClassWeightError if a weight is <= 0: its margin W*eps would vanish or flip sign."""
    bad = (weights <= 0).nonzero().flatten().tolist()
    if not bad:
        return
    i = bad[0]
    name = f' ({class_names[i]})' if class_names else ''
    raise ClassWeightError(
        f'DAFA weight of class {i}{name} is {weights[i]:.4f} <= 0 with --dafa_lambda {lam}; '
        f'lambdas below {max_safe_lambda(similarity):.4f} keep every weight positive for this '
        'similarity matrix: rerun with a smaller --dafa_lambda (e.g. branch off the warm-up '
        'checkpoint with --resume).')
