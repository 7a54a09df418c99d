"""Model registry: ``create(name, num_classes, image_size)`` builds a model by name.

All models take float images in [0, 1] of shape (N, 3, H, W) with no
normalisation layer inside (as in the official DAFA code) and return logits
(N, num_classes). Parameter names match the official checkpoints.

``resnet``, ``pre-resnet``, ``wrn-28-10`` and ``wrn-34-10`` support image_size
32 (CIFAR) and 64 (STL-10 resized); ``small-cnn`` accepts any image_size >= 8.
"""
from typing import Callable, Dict

import torch.nn as nn

from .preact_resnet import preact_resnet18, preact_resnet18_frl
from .resnet import resnet18
from .small_cnn import small_cnn
from .wideresnet import wrn_28_10, wrn_34_10

MODELS: Dict[str, Callable[..., nn.Module]] = {
    "resnet": resnet18,
    "pre-resnet": preact_resnet18,
    "pre-resnet-frl": preact_resnet18_frl,
    "wrn-28-10": wrn_28_10,
    "wrn-34-10": wrn_34_10,
    "small-cnn": small_cnn,
}


def create(name: str, num_classes: int = 10, image_size: int = 32) -> nn.Module:
    """Build the registered model ``name``; raises ValueError for bad arguments."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return MODELS[name](num_classes=num_classes, image_size=image_size)


__all__ = ["MODELS", "create"]
