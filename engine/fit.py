"""A run's epochs, from engine.start's Run to its last checkpoint. Each epoch: the method's
hook before it, training (the train step reads the method's per-class tables; the recorders the
method asked for see every batch's adversarial logits), the hook after it, the test evaluation,
the best-epoch selection, the checkpoint (rank 0 writes; every process learns whether it
worked).
"""
import os
import time

import torch

import fairness
from evaluation import predict_clean_and_pgd, summarize
from evaluation.tables import selection_label
from evaluation.runner import pgd_name

from . import checkpoint, distributed, run
from .best import BEST
from .cli import UserError
from .loop import train_one_epoch
from .recorders import Recording
from .schedule import lr_at
from .start import CHECKPOINT_FORMAT, Run, model_device


def fit(r: Run, note: str = '') -> None:
    """Train from r.start_epoch to --epochs; note (e.g. about the folder's lock) is logged first."""
    if note:
        r.log(note)
    args = r.args
    keep_epochs = set(r.record_plan) | {r.method.branch_epoch(args)}
    try:
        for epoch in range(r.start_epoch, args.epochs + 1):
            keep = epoch % args.save_freq == 0 or epoch in keep_epochs \
                or epoch > args.epochs - 10
            if r.dctx.enabled:  # each process its own attack noise, re-derived on resume
                torch.manual_seed(distributed.rank_seed(args.seed, epoch, r.dctx.rank))
            start = time.time()
            r.method.before_epoch(epoch, r.ctx)
            distributed.broadcast_method(r.dctx, r.method, epoch - 1)  # state after epoch - 1
            hooks_s = time.time() - start
            names = set(r.method.records(epoch)) | set(r.record_plan.get(epoch, ()))
            row, recorded = train_epoch(r, epoch, names)
            for name in r.record_plan.get(epoch, ()):
                r.records[name] = {'epoch': epoch, 'value': recorded[name]}
            start = time.time()
            try:
                r.method.after_epoch(epoch, r.ctx, recorded, row)
                distributed.broadcast_method(r.dctx, r.method, epoch)
            except UserError:
                save(r, epoch, row, keep=True)  # the epoch trained: e.g. another lambda
                raise                           # can branch off DAFA's warm-up
            # The method's own work between epochs (WAT's and FRL's validation attacks).
            row['method_time_s'] = hooks_s + time.time() - start
            row['method_state'] = r.method.method_state()
            if epoch % args.eval_freq == 0 or epoch == args.epochs:
                row.update(evaluate(r, epoch))
            if r.best is not None and r.dctx.is_main:  # rank 0 alone writes checkpoint-best.pt
                row.update(select_best(r, epoch, row))
            save(r, epoch, row, keep)
            r.log(f"epoch {epoch} lr {row['lr']:g} loss {row['loss']:.4f} "
                  f"(natural {row['loss_natural']:.4f}, robust {row['loss_robust']:.4f}) "
                  f"{row['train_time_s']:.1f} s")
    except UserError as err:
        stopped = f'{err} {stop_note(args.model_dir)}'
        r.log(f'error: {stopped}')
        raise UserError(stopped) from None


def train_epoch(r: Run, epoch: int, record_names) -> tuple:
    """One epoch of training at the schedule's lr: its metrics row, and what the recorders
    named record_names recorded ({name: CPU tensor}, summed over processes)."""
    args = r.args
    lr = lr_at(epoch, schedule=args.lr_schedule, base_lr=args.lr, epochs=args.epochs)
    for group in r.optimizer.param_groups:
        group['lr'] = lr
    r.step.loss_version = r.method.loss_version(epoch)
    r.train_loader.set_epoch(epoch)
    recording = Recording(record_names, r.data.num_classes, model_device(r.model),
                          known=fairness.recorders())
    row = {'epoch': epoch, 'lr': lr}
    row.update(train_one_epoch(r.step, r.train_loader, epoch=epoch,
                               log_interval=args.log_interval,
                               recorder=recording if recording else None, log=r.log,
                               agree=lambda ok: distributed.all_agree(r.dctx, ok)))
    if r.dctx.enabled:  # the epoch's losses: the mean over processes
        losses = torch.tensor([row['loss'], row['loss_natural'], row['loss_robust']],
                              device=model_device(r.model))
        distributed.sum_(r.dctx, losses)
        row['loss'], row['loss_natural'], row['loss_robust'] = (losses / r.dctx.world).tolist()
    distributed.sum_(r.dctx, *recording.tensors())
    # One model everywhere before anything reads its BatchNorm statistics.
    distributed.sync_buffers(r.dctx, r.model)
    return row, recording.results()


def attack(r: Run, loader, seed: int):
    """(labels, clean predictions, PGD predictions) of the evaluated model over a loader, under
    the test attack (--test_*, --pgd_rule), with its own generator: evaluating never moves the
    training RNG."""
    args = r.args
    model = r.method.eval_model(r.model)
    model.eval()
    generator = torch.Generator(loader.device).manual_seed(seed)
    return predict_clean_and_pgd(
        model, loader, epsilon=args.test_epsilon, step_size=args.test_pgd_step_size,
        num_steps=args.test_pgd_num_steps, rule=args.pgd_rule, generator=generator)


def evaluate(r: Run, epoch: int) -> dict:
    """Clean and PGD test accuracy per class (the metrics row's 'clean' and 'pgd<K>', K =
    --test_pgd_num_steps, as eval.py names them); under torchrun each process attacks its part
    of the test set and the predictions are gathered."""
    args, dctx = r.args, r.dctx
    start = time.time()
    # Seeded like eval.py: (in one process) equal to eval.py --seed SEED on this checkpoint.
    seed = distributed.rank_seed(args.seed, 0, dctx.rank) if dctx.enabled else args.seed
    labels, clean_pred, adv_pred = distributed.gather_cat(dctx, *attack(r, r.test_loader, seed))
    names, pgd = r.data.class_names, pgd_name(args.test_pgd_num_steps)
    out = {'clean': summarize(clean_pred == labels, labels, names),
           pgd: summarize(adv_pred == labels, labels, names),
           'eval_time_s': time.time() - start}
    r.log(f"epoch {epoch} test: clean {out['clean']['avg']:.2f} "
          f"(worst {out['clean']['worst_class']} {out['clean']['worst']:.2f}), "
          f"PGD-{args.test_pgd_num_steps} ({args.pgd_rule}) {out[pgd]['avg']:.2f} "
          f"(worst {out[pgd]['worst_class']} {out[pgd]['worst']:.2f})")
    return out


def select_best(r: Run, epoch: int, row: dict) -> dict:
    """--keep_best: this epoch's score on the selection split (the validation split after every
    epoch, the test set where it was evaluated), offered to r.best; the metrics row's 'val_pgd<K>'
    (validation) and 'best' (the selection so far)."""
    best, pgd, out = r.best, pgd_name(r.args.test_pgd_num_steps), {}
    if best.split == 'val':
        start = time.time()
        labels, _, adv_pred = attack(r, r.ctx.val_loader, r.args.seed)
        out[f'val_{pgd}'] = summarize(adv_pred == labels, labels, r.data.class_names)
        out['val_time_s'] = time.time() - start
        summary = out[f'val_{pgd}']
    elif pgd in row:
        summary = row[pgd]
    else:
        return {}
    # A branching method's best epoch is one of its own (DAFA's from tau + 1), never one of
    # the warm-up it shares with its parent.
    own = epoch > (r.method.branch_epoch(r.args) or 0)
    if own and best.offer(epoch, summary, lambda: weights_state(r)):
        r.log(f'epoch {epoch}: the best so far ({selection_label(best.describe())})')
    out['best'] = best.describe()
    return out


def run_identity(r: Run) -> dict:
    """What every checkpoint of the run says about it: its arguments, data and code."""
    data = r.data
    return {'format': CHECKPOINT_FORMAT, 'args': vars(r.args), 'class_names': data.class_names,
            'num_classes': data.num_classes, 'image_size': data.image_size,
            'test_set_sha256': data.test_fingerprint, 'validation': data.validation,
            'recipe': r.recipe, 'code_history': r.code_history}


def weights_state(r: Run) -> dict:
    """The model, what eval.py evaluates when it is not 'model' (CFA's weight average) and the
    method's state: what checkpoint-best.pt keeps of its epoch."""
    method = r.method
    return {'model': r.model.state_dict(), 'eval_model': method.eval_state_dict(),
            'method': {'name': method.name, 'state': method.state_dict()}}


def checkpoint_state(r: Run, epoch: int) -> dict:
    return {**run_identity(r), 'epoch': epoch, **weights_state(r),
            'optimizer': r.optimizer.state_dict(), 'records': r.records,
            'rng': checkpoint.rng_state(),
            'best': None if r.best is None else r.best.state_dict()}


def best_checkpoint_state(r: Run) -> dict:
    """checkpoint-best.pt: the selected epoch's weights (and method state) with the run's
    identity and its 'selection'; no optimizer or RNG: it is evaluated, not resumed."""
    return {**run_identity(r), 'epoch': r.best.epoch, **r.best.snapshot,
            'selection': r.best.describe()}


def save(r: Run, epoch: int, row: dict, keep: bool) -> None:
    """Kept checkpoint, then the metrics row, then checkpoint-latest.pt: the latest is the
    commit point, so a kill before it leaves a resume that redoes this epoch. Rank 0 writes;
    every process learns whether that worked, so a failure stops all."""
    for name, weights in (('the model', r.model.state_dict()),
                          ('the evaluated model', r.method.eval_state_dict() or {})):
        bad = checkpoint.nonfinite_tensor(weights.items())
        if bad:  # the same on every process: weights and (synced) buffers are shared
            raise UserError(f'{bad} of {name} holds NaN or inf after epoch {epoch} (the loss '
                            'may still look finite); it was not saved. Lower --lr, or check '
                            'the data, the --amp setting and the method flags.')
    failure = None
    if r.dctx.is_main:
        try:
            state = checkpoint_state(r, epoch)
            if keep:
                checkpoint.save_atomic(state, run.checkpoint_path(r.args.model_dir, epoch))
            run.append_metrics(r.args.model_dir, row)
            best = r.best
            if best is not None and best.epoch is not None and best.written != best.epoch:
                checkpoint.save_atomic(best_checkpoint_state(r),
                                       os.path.join(r.args.model_dir, BEST))
                best.written = best.epoch
            checkpoint.save_atomic(state, run.checkpoint_path(r.args.model_dir))
        except Exception as err:  # re-raised below, after telling the other processes
            failure = err
    if not distributed.all_agree(r.dctx, failure is None):
        raise failure or UserError(f'rank 0 could not save epoch {epoch}; see its error. '
                                   'Training stopped.')


def stop_note(model_dir: str) -> str:
    """What a stopped run leaves to resume from (never claiming a checkpoint that is not there)."""
    path = run.checkpoint_path(model_dir)
    epoch = run.checkpoint_epoch(path)
    if epoch is None:
        return 'No checkpoint was written.'
    return f'The last good checkpoint, {path} (epoch {epoch}), is kept.'
