"""Model registry: ``create(name, num_classes, image_size, normalize)`` builds a model by name.

All models take float images in [0, 1] of shape (N, 3, H, W) and return logits
(N, num_classes). By default nothing is normalised inside (as in the official DAFA code);
``normalize=(mean, std)`` makes (x - mean) / std per channel the model's first step (CFA's
official code feeds every forward normalize_cifar(x)), so inputs, attacks and radii stay in
pixels [0, 1]. Parameter names match the official checkpoints, with or without it.

``resnet``, ``pre-resnet``, ``pre-resnet-frl``, ``wrn-28-10`` and ``wrn-34-10`` support
image_size 32 (CIFAR) and 64 (STL-10 resized); ``small-cnn`` accepts any image_size >= 8.
"""
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
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


class InputNormalization(nn.Module):
    """(x - mean) / std per channel. Its statistics are not in the state_dict (non-persistent
    buffers): the keys stay the architecture's, and the run's arguments say what it used."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer('mean', torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _normalize_input(model: nn.Module, inputs: tuple) -> tuple:
    return (model.input_normalization(inputs[0]),) + inputs[1:]


def create(name: str, num_classes: int = 10, image_size: int = 32,
           normalize: Optional[Tuple[Sequence[float], Sequence[float]]] = None) -> nn.Module:
    """Build the registered model ``name``; normalize: (mean, std) per channel, applied first
    inside the model. Raises ValueError for bad arguments."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    model = MODELS[name](num_classes=num_classes, image_size=image_size)
    if normalize is not None:
        # A forward pre-hook rather than a wrapper module, so the parameter names stay the
        # official ones; the hook reads the submodule, so copies and .to() carry it along.
        model.input_normalization = InputNormalization(*normalize)
        model.register_forward_pre_hook(_normalize_input)
    return model


__all__ = ["MODELS", "InputNormalization", "create"]
