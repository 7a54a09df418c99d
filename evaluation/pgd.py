"""PGD-20 white-box evaluation under two counting rules: the official per-class one (final
iterate) and a stricter one (every iterate); the CW attack (PGD on the CW margin loss) and the
L2 threat model under the official rule."""
import torch
import torch.nn.functional as F

from losses.attack import exact_fp32, project_linf

from engine.cli import UserError


fp32 = exact_fp32  # evaluation is always full fp32


def require_eval_mode(model: torch.nn.Module) -> None:
    if model.training:
        raise UserError('the model is in train mode, where BatchNorm uses batch statistics '
                        'and updates its running averages; call model.eval() first.')


PGD_RULES = ('final', 'every')
NORMS = ('Linf', 'L2')
LOSSES = ('ce', 'cw')  # cross-entropy (PGD), or the CW margin (Carlini & Wagner, 2017)
ROBUST_IF = {
    'final': 'correct at the final iterate (the official per-class evaluation, eval_classwise)',
    'every': 'correct at the clean input, at the random start and at every iterate (stricter '
             'than the official evaluation)',
}


def cw_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of max_{j != y} z_j - z_y, the CW loss's margin (no confidence
    cut-off): positive exactly when the sample is misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float('-inf'))
    return (other.max(1).values - true).sum()


def pgd_whitebox(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float,
                 step_size: float, num_steps: int, rule: str = 'final', generator=None,
                 loss: str = 'ce', norm: str = 'Linf'):
    """PGD on the cross-entropy (loss 'cw': the CW margin) from a random start, in fp32; L-inf
    (norm 'L2': the L2 ball, official rule only, see pgd_final_logits).

    rule 'final' is the official per-class evaluation step for step: the perturbation delta
    starts uniform in [-eps, eps] and the first gradient is taken at the unclipped x + delta;
    each step clips delta to [-eps, eps] and then so that x + delta stays in [0, 1]; the sample
    is scored at clamp(x + delta, 0, 1) after the last step. Rule 'every' counts a sample as
    robust only if it is correct at the clean input, the (projected) start and every iterate.
    generator: the random start's source (seed it for reproducible numbers).
    Returns (clean_pred, adv_pred): adv_pred is the prediction the rule scores (final: at the
    last iterate; every: at the first point that fooled the model, else the last iterate), so
    a sample is robust exactly when adv_pred == y.
    """
    if rule not in PGD_RULES or loss not in LOSSES or norm not in NORMS:
        raise ValueError(f'unknown PGD rule, loss or norm {(rule, loss, norm)}; choose from '
                         f'{PGD_RULES}, {LOSSES}, {NORMS}.')
    if rule == 'every' and (loss, norm) != ('ce', 'Linf'):
        raise UserError("--pgd_rule every is for L-inf PGD on the cross-entropy; the CW attack "
                        "and L2 use the official rule 'final'.")
    require_eval_mode(model)
    with fp32(x.device.type):
        with torch.no_grad():
            clean_pred = model(x).argmax(1)
        if rule == 'final':
            return clean_pred, pgd_final_logits(model, x, y, epsilon, step_size, num_steps,
                                                generator, loss, norm).argmax(1)
        robust = clean_pred == y
        adv_pred = clean_pred.clone()
        noise = torch.empty(x.shape, device=x.device).uniform_(-epsilon, epsilon,
                                                               generator=generator)
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
    return clean_pred, adv_pred


def _l2_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm, shaped (N, 1, 1, 1)."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def pgd_final_logits(model, x, y, epsilon, step_size, num_steps, generator, loss='ce',
                     norm='Linf') -> torch.Tensor:
    """The logits at the last iterate of the official evaluation's PGD, in its own arithmetic
    (delta space), so that its predictions are reproduced exactly, not to within rounding. L-inf: a uniform start in the
    ball, sign steps, clipping. L2: a start of uniform direction and radius eps * U(0, 1),
    steps along the L2-normalised gradient, the L2 ball's projection (scaling), then the box."""
    objective = F.cross_entropy if loss == 'ce' else cw_margin
    if norm == 'Linf':
        delta = torch.rand(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        delta = delta * 2 * epsilon - epsilon
    else:
        delta = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        radius = torch.rand(len(x), device=x.device, dtype=x.dtype, generator=generator)
        delta = delta / _l2_norm(delta) * epsilon * radius.view(-1, *([1] * (x.dim() - 1)))
        delta = (x + delta).clamp(0.0, 1.0) - x
    for _ in range(num_steps):
        x_in = (x + delta).requires_grad_(True)
        grad, = torch.autograd.grad(objective(model(x_in), y), x_in)
        if norm == 'Linf':
            delta = (delta + step_size * grad.sign()).clamp(-epsilon, epsilon)
            delta = torch.min(torch.max(delta, -x), 1 - x)
        else:
            delta = delta + step_size * grad / _l2_norm(grad).clamp(min=1e-12)
            delta = delta * (epsilon / _l2_norm(delta).clamp(min=1e-12)).clamp(max=1.0)
            delta = (x + delta).clamp(0.0, 1.0) - x
    with torch.no_grad():
        return model((x + delta).clamp(0.0, 1.0))


def predict_clean_and_pgd(model, loader, *, epsilon, step_size, num_steps, rule='final',
                          generator=None, loss='ce', norm='Linf'):
    """Run pgd_whitebox over a loader; returns (labels, clean_pred, adv_pred) on the loader's
    device, concatenated in loader order (robust exactly where adv_pred == labels)."""
    outs = [(y, *pgd_whitebox(model, x, y, epsilon=epsilon, step_size=step_size,
                              num_steps=num_steps, rule=rule, generator=generator, loss=loss,
                              norm=norm))
            for x, y in loader]
    return tuple(torch.cat(parts) for parts in zip(*outs))
