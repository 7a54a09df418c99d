"""Per-class statistics recorded from the adversarial logits of every training batch, on the
device and without a host sync. A method asks for them by name (Method.records), these or its
own (Method.recorders); the engine builds them for the epoch, sums their tensors over processes
and hands each method the results.

Every recorder: update(logits, labels) per batch; tensors(), the sums over samples (summed over
processes under torchrun before result() is read); result(), a CPU tensor.
"""
import torch

from .cli import UserError


class SimilarityRecorder:
    """Class similarity S[i, j]: the mean over class-i samples of their softmax on class j.

    The softmax is taken in float32 and summed in float64, as the official DAFA code (float32
    probabilities stored in a float64 array, then averaged): over 5,000 samples per class a
    float32 sum would lose ~1e-4 of the mean. C x C sums cost nothing either way.
    """

    def __init__(self, num_classes: int, device):
        self.sums = torch.zeros(num_classes, num_classes, device=device, dtype=torch.float64)
        self.counts = torch.zeros(num_classes, device=device, dtype=torch.float64)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        probs = torch.softmax(logits.detach().float(), dim=1)
        self.sums.index_add_(0, labels, probs.double())
        # index_add_ rather than bincount: bincount syncs to size its output.
        self.counts.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))

    def tensors(self):
        return [self.sums, self.counts]

    def result(self) -> torch.Tensor:
        """(C, C) float64, CPU, rows summing to 1."""
        missing = (self.counts == 0).nonzero().flatten().tolist()
        if missing:
            raise UserError(f'class similarity: classes {missing} have no recorded samples; '
                            'every class needs training samples (raise --n_train).')
        return (self.sums / self.counts[:, None]).cpu()


class ClassAccuracy:
    """Per class, the fraction of its training adversarial examples still classified correctly."""

    def __init__(self, num_classes: int, device):
        self.correct = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.counts = torch.zeros(num_classes, dtype=torch.float64, device=device)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        correct = (logits.detach().argmax(1) == labels).double()
        self.correct.index_add_(0, labels, correct)
        self.counts.index_add_(0, labels, torch.ones_like(correct))

    def tensors(self):
        return [self.correct, self.counts]

    def result(self) -> torch.Tensor:
        """(C,) float64, CPU."""
        return (self.correct / self.counts.clamp(min=1)).cpu()


RECORDERS = {'similarity': SimilarityRecorder, 'class_accuracy': ClassAccuracy}


class Recording:
    """The recorders of one epoch, by name, fed together (what the epoch loop calls)."""

    def __init__(self, names, num_classes: int, device, known=None):
        """known: {name: recorder class}, RECORDERS by default (the engine adds the methods'
        own, fairness.recorders())."""
        known = RECORDERS if known is None else known
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise ValueError(f'unknown recorders {unknown}; known: {sorted(known)}')
        self.recorders = {name: known[name](num_classes, device) for name in sorted(names)}

    def __bool__(self) -> bool:
        return bool(self.recorders)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        for recorder in self.recorders.values():
            recorder.update(logits, labels)

    def tensors(self):
        return [t for recorder in self.recorders.values() for t in recorder.tensors()]

    def results(self) -> dict:
        return {name: recorder.result() for name, recorder in self.recorders.items()}


def class_similarity(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """S from (N, C) softmax outputs and (N,) labels at once: (C, C) float64 rows summing to 1.
    Every class needs at least one sample."""
    recorder = SimilarityRecorder(num_classes, probs.device)
    recorder.sums.index_add_(0, labels, probs.double())
    recorder.counts.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
    return recorder.result()
