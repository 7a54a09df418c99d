"""The interface every robust-fairness method implements, and the plain method ('none').

A method owns per-class tables (ClassTables) that the train step reads by indexing with the
labels: the weight of the clean term, the weight of the adversarial term, and the multipliers of
the attack's radius and step. It changes them in place between epochs, through its hooks, so a
captured CUDA graph reads the new values without a re-capture. Its state goes into every
checkpoint and comes back exactly on resume; method_state() is the per-class record written into
each metrics.jsonl row.

Every method records the class similarity during epoch tau (dafa.SimilarityRecorder), so that a
DAFA run can branch off the warm-up checkpoint of any run.
"""
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch

import dafa
from evaluation.pgd import pgd_whitebox
from losses import SampleWeights


class MethodError(ValueError):
    """A method cannot run with these arguments or this checkpoint; the message names the fix."""


class ClassTables:
    """The (C,) tensors, on the training device, that SampleWeights are gathered from."""

    def __init__(self, num_classes: int, device):
        for name in SampleWeights._fields:
            setattr(self, name, torch.ones(num_classes, device=device))

    def gather(self, y: torch.Tensor) -> SampleWeights:
        return SampleWeights(*(getattr(self, name)[y] for name in SampleWeights._fields))

    def set(self, **tables) -> None:
        """In place: table name -> values (anything torch.as_tensor takes, or a number)."""
        for name, values in tables.items():
            table = getattr(self, name)
            table.copy_(torch.as_tensor(values, dtype=table.dtype).expand_as(table))

    def tolist(self) -> dict:
        return {name: getattr(self, name).tolist() for name in SampleWeights._fields}


@dataclass
class EpochContext:
    """What a method's hooks may use between epochs."""
    model: torch.nn.Module
    val_loader: Optional[object]  # data.Loader over the validation split, or None
    class_names: List[str]
    epsilon: float                # the training attack (pixels in [0, 1])
    step_size: float
    num_steps: int
    beta: float
    seed: int
    log: Callable[[str], None]


def validation_model(ctx: EpochContext, epoch: int):
    """The model in eval mode, and a generator for this epoch's validation attack: its own, so
    it never moves the training RNG and a resumed run draws the same numbers."""
    ctx.model.eval()
    device = next(ctx.model.parameters()).device
    return ctx.model, torch.Generator(device).manual_seed(ctx.seed * 100003 + epoch)


def validation_pgd(ctx: EpochContext, epoch: int, *, num_steps: int, step_size: float):
    """(labels, clean correct, PGD correct at the final iterate) over the validation split,
    CPU tensors: what FRL's and CFA's validations count."""
    model, generator = validation_model(ctx, epoch)
    parts = []
    for x, y in ctx.val_loader:
        clean_pred, adv_pred = pgd_whitebox(model, x, y, epsilon=ctx.epsilon,
                                            step_size=step_size, num_steps=num_steps,
                                            rule='final', generator=generator)
        parts.append((y, clean_pred == y, adv_pred == y))
    return tuple(torch.cat(t).cpu() for t in zip(*parts))


def per_class_mean(values: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K,) float64 mean of values over each class's samples."""
    counts = torch.bincount(labels, minlength=num_classes).double()
    return torch.bincount(labels, weights=values.double(), minlength=num_classes) / counts


class Method:
    """Plain adversarial training: every table stays 1."""

    name = 'none'
    needs_validation = False  # whether it reads a validation split (--val_per_class)

    @staticmethod
    def add_arguments(group) -> None:
        """The method's own command-line flags."""

    def __init__(self, args, num_classes: int, device):
        self.args, self.num_classes, self.device = args, num_classes, device
        self.tables = ClassTables(num_classes, device)
        self.tau = args.dafa_warmup
        self.similarity: Optional[torch.Tensor] = None  # (C, C) float64, CPU

    def before_epoch(self, epoch: int, ctx: EpochContext) -> None:
        """Called before training epoch `epoch` (counted from 1)."""

    def recorder(self, epoch: int):
        """Receives the adversarial logits of every training batch of this epoch (update), or
        None. Its tensors() are sums over samples: under torchrun they are summed over processes
        before after_epoch reads them."""
        return dafa.SimilarityRecorder(self.num_classes, self.device) if epoch == self.tau else None

    def after_epoch(self, epoch: int, ctx: EpochContext, recorder, row: dict) -> None:
        """Called after training epoch `epoch`, before its evaluation; adds to its metrics row."""
        if recorder is not None:
            self.similarity = recorder.similarity().cpu()
            row['similarity_diag'] = self.similarity.diagonal().tolist()

    def state_dict(self) -> dict:
        """Tensors, numbers, strings and lists only (the safe checkpoint loader reads it)."""
        return {'similarity': self.similarity}

    def load_state_dict(self, state: dict, epoch: int) -> None:
        """Restore the state saved after `epoch`, exactly."""
        self.similarity = state.get('similarity')

    def method_state(self) -> dict:
        """The per-class quantities for this epoch's metrics row (JSON)."""
        return {}

    def class_weights(self) -> torch.Tensor:
        """The checkpoint's 'class_weights' (DAFA's W, drawn by eval.py; ones otherwise)."""
        return torch.ones(self.num_classes)

    def loss(self, default):
        """The training loss (losses/; default: --loss's). BAT brings its own."""
        return default

    def eval_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model to evaluate and report (CFA: its weight average)."""
        return model

    def eval_state_dict(self) -> Optional[dict]:
        """The state_dict eval.py evaluates, when it is not the trained model's (else None)."""
        return None
