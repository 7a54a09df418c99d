"""The inner maximisation shared by the training losses: L-inf PGD with per-sample radii."""
import contextlib
from typing import Callable

import torch

from .output import upcast


@contextlib.contextmanager
def exact_fp32(device_type: str):
    """Full fp32: no autocast, and no TF32 in cuDNN convolutions or matmuls (PyTorch lets cuDNN
    use TF32 by default on Ampere and later)."""
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps) -> torch.Tensor:
    """Project onto the L-inf ball of radius eps (a float or a per-sample (N,1,1,1) tensor)
    around x, then onto the image box [0, 1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def pgd_linf(model: torch.nn.Module, x: torch.Tensor, x_start: torch.Tensor,
             objective: Callable[[torch.Tensor], torch.Tensor], *, eps, step_size,
             num_steps: int) -> torch.Tensor:
    """num_steps sign-gradient ascent steps on objective(model(x_adv)), each followed by the
    projection. eps and step_size are floats or per-sample (N,1,1,1) tensors (DAFA scales both
    by the class weight). The caller sets the model's mode; the result is detached."""
    x_adv = x_start.detach()
    for _ in range(num_steps):
        x_adv.requires_grad_(True)
        # fp32 objective at least: under bf16 autocast the logits come back in bf16.
        value = objective(upcast(model(x_adv)))
        grad, = torch.autograd.grad(value, x_adv)
        x_adv = project_linf(x_adv.detach() + step_size * grad.sign(), x, eps)
    return x_adv.detach()
