"""Per-class accuracy, the robust-fairness summary (average and worst class), confusion
matrices and the paper's rho."""
from typing import Optional

import torch


def per_class_accuracy(correct: torch.Tensor, labels: torch.Tensor,
                       num_classes: int) -> torch.Tensor:
    """Accuracy in percent per class, each class divided by its own count (C,) float64."""
    hits = torch.zeros(num_classes, dtype=torch.float64, device=labels.device)
    counts = torch.zeros_like(hits)
    hits.index_add_(0, labels, correct.double())
    counts.index_add_(0, labels, torch.ones_like(hits[labels]))
    if (counts == 0).any():
        missing = (counts == 0).nonzero().flatten().tolist()
        raise ValueError(f'per-class accuracy: classes {missing} have no samples.')
    return 100.0 * hits / counts


def worst_k(num_classes: int) -> int:
    """How many classes the worst-k mean takes: 3, or 10% of the classes when that is more
    (10 of CIFAR-100's 100), as robust-fairness papers report."""
    return min(num_classes, max(3, round(num_classes / 10)))


def summarize(correct: torch.Tensor, labels: torch.Tensor, class_names) -> dict:
    """{'avg', 'worst', 'worst_class', 'worst_classes', 'best', 'best_class', 'per_class',
    'std', 'worst_k', 'worst_k_mean'}, in percent. worst_class is the first class at the worst
    value, worst_classes every class at it (ties are common on small per-class counts).

    avg is the mean of the per-class accuracies (equal to overall accuracy on a balanced set);
    std their standard deviation over classes (population: the classes are all there is);
    worst_k_mean the mean of the worst_k lowest.
    """
    acc = per_class_accuracy(correct, labels, len(class_names)).cpu()
    worst, best = int(acc.argmin()), int(acc.argmax())
    k = worst_k(len(class_names))
    return {'avg': float(acc.mean()), 'worst': float(acc[worst]),
            'worst_class': class_names[worst],
            'worst_classes': [class_names[c] for c in (acc == acc[worst]).nonzero().flatten()],
            'best': float(acc[best]),
            'best_class': class_names[best], 'per_class': acc.tolist(),
            'std': float(acc.std(unbiased=False)), 'worst_k': k,
            'worst_k_mean': float(acc.sort().values[:k].mean())}


def confusion_matrix(labels: torch.Tensor, pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) int64 counts on the CPU: row = true class, column = predicted class."""
    flat = (labels * num_classes + pred).cpu()
    return torch.bincount(flat, minlength=num_classes ** 2).view(num_classes, num_classes)


def top_confusions(confusion: torch.Tensor, true_class: int, class_names, k: int = 3) -> list:
    """The k classes a true class is most often mistaken for, as [{'class', 'percent'}] with
    percent of that class's samples; classes it is never mistaken for are left out."""
    row = confusion[true_class].double()
    wrong = row.clone()
    wrong[true_class] = -1  # never count the correct prediction as a confusion
    order = wrong.sort(descending=True, stable=True).indices[:k].tolist()  # ties: lower index
    return [{'class': class_names[j], 'percent': float(100.0 * row[j] / row.sum())}
            for j in order if wrong[j] > 0]


def rho(avg: float, worst: float, avg_base: float, worst_base: float) -> Optional[float]:
    """The paper's Table 1 score against a baseline (accuracies in percent): the relative gain
    in worst-class accuracy minus the relative loss in average accuracy. None when the
    baseline's worst or average accuracy is 0, where the relative change is undefined."""
    if worst_base == 0 or avg_base == 0:
        return None
    return (worst - worst_base) / worst_base - (avg_base - avg) / avg_base
