"""The epoch loop: runs the train step over a loader, keeps the loss history on the device and
checks it only every log_interval batches (the only host syncs of an epoch)."""
import time

import torch
from tqdm import tqdm

from .cli import UserError


def _check_finite(history: torch.Tensor, upto: int, epoch: int, agree) -> None:
    finite = torch.isfinite(history[:upto]).all(dim=1)
    if not agree(bool(finite.all())):  # several processes: one's failure stops all
        if bool(finite.all()):
            raise UserError(f'non-finite training loss in another process at epoch {epoch}; '
                            'training stopped. Lower --lr, or check the data and --amp '
                            'setting.')
        batch = int((~finite).nonzero()[0]) + 1
        raise UserError(
            f'non-finite training loss at epoch {epoch}, batch {batch}; training stopped. Lower '
            '--lr, or check the data and --amp setting.')


def train_one_epoch(step, loader, *, epoch: int, log_interval: int, recorder=None,
                    log=print, agree=lambda ok: ok) -> dict:
    """One pass over loader. recorder (engine.recorders.Recording) receives the adversarial
    logits of every sample when given. agree(ok) -> whether every process's losses are finite
    (the identity in one process). Returns the epoch's mean losses and its time."""
    start = time.time()
    n = len(loader)
    # Columns: loss, natural term, robust term, batch size.
    history = None
    # disable=None: a bar on a terminal only; redirected logs get the log_interval lines.
    bar = tqdm(loader, total=n, desc=f'epoch {epoch}', leave=False, dynamic_ncols=True,
               disable=None)
    for i, (x, y) in enumerate(bar, 1):
        out = step(x, y)
        if history is None:
            history = torch.zeros(n, 4, device=out.loss.device)
        history[i - 1] = torch.stack([out.loss.detach(), out.natural, out.robust,
                                      torch.full_like(out.natural, y.shape[0])])
        if recorder is not None:
            recorder.update(out.logits_adv, y)
        if i % log_interval == 0 or i == n:
            _check_finite(history, i, epoch, agree)
            mean = history[:i, 0].mean().item()
            bar.set_postfix(loss=f'{mean:.4f}')
            if i % log_interval == 0:
                log(f'epoch {epoch} [{i}/{n}] loss {mean:.4f}')
    weights = history[:, 3] / history[:, 3].sum()
    loss, natural, robust = (weights @ history[:, :3]).tolist()
    return {'loss': loss, 'loss_natural': natural, 'loss_robust': robust,
            'train_time_s': time.time() - start}
