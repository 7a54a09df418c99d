"""Per-class accuracy and the robust-fairness summary (average and worst class)."""
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


def summarize(correct: torch.Tensor, labels: torch.Tensor, class_names) -> dict:
    """{'avg', 'worst', 'worst_class', 'best', 'best_class', 'per_class'}, in percent.

    avg is the mean of the per-class accuracies (equal to overall accuracy on a balanced set).
    """
    acc = per_class_accuracy(correct, labels, len(class_names)).cpu()
    worst, best = int(acc.argmin()), int(acc.argmax())
    return {'avg': float(acc.mean()), 'worst': float(acc[worst]),
            'worst_class': class_names[worst], 'best': float(acc[best]),
            'best_class': class_names[best], 'per_class': acc.tolist()}
