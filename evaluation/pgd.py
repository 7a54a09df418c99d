"""PGD-20 white-box evaluation, as the official DAFA evaluation runs it."""
import contextlib

import torch
import torch.nn.functional as F

from losses.attack import project_linf

from .errors import EvaluationError


@contextlib.contextmanager
def fp32(device_type: str):
    """Full fp32 for evaluation: no autocast, and no TF32 in cuDNN convolutions or matmuls
    (PyTorch lets cuDNN use TF32 by default on Ampere and later)."""
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


def require_eval_mode(model: torch.nn.Module) -> None:
    if model.training:
        raise EvaluationError('the model is in train mode, where BatchNorm uses batch statistics '
                              'and updates its running averages; call model.eval() first.')


def pgd_whitebox(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float,
                 step_size: float, num_steps: int):
    """L-inf PGD on the cross-entropy from a uniform random start, in fp32.

    A sample counts as robust only if it is classified correctly at the clean point and at every
    iterate (the official evaluation's rule), which is never above the final-iterate accuracy.
    Returns (clean_pred, adv_pred, robust): adv_pred is the prediction at the first iterate that
    fooled the model (the last iterate if none did), robust a bool per sample.
    """
    require_eval_mode(model)
    with fp32(x.device.type):
        with torch.no_grad():
            clean_pred = model(x).argmax(1)
        robust = clean_pred == y
        adv_pred = clean_pred.clone()
        noise = torch.empty(x.shape, device=x.device).uniform_(-epsilon, epsilon)
        x_adv = project_linf(x + noise, x, epsilon)
        for step in range(num_steps + 1):
            x_adv.requires_grad_(True)
            logits = model(x_adv)
            pred = logits.detach().argmax(1)
            adv_pred = torch.where(robust, pred, adv_pred)  # frozen once fooled
            robust &= pred == y
            if step == num_steps:
                break
            grad, = torch.autograd.grad(F.cross_entropy(logits, y), x_adv)
            x_adv = project_linf(x_adv.detach() + step_size * grad.sign(), x, epsilon)
    return clean_pred, adv_pred, robust


def predict_clean_and_pgd(model, loader, *, epsilon, step_size, num_steps):
    """Run pgd_whitebox over a loader; returns (labels, clean_pred, adv_pred, robust) on the
    loader's device, concatenated in loader order."""
    outs = [(y, *pgd_whitebox(model, x, y, epsilon=epsilon, step_size=step_size,
                              num_steps=num_steps)) for x, y in loader]
    return tuple(torch.cat(parts) for parts in zip(*outs))
