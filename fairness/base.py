"""The interface every robust-fairness method implements, and the plain method ('none').

A method is one class in one file, registered in fairness/__init__.py. The class declares what
the rest of the code needs to know about it (its flags, its base losses, its validation split,
its label in tables, whether and where it branches off another run) and implements its rules as
hooks the engine calls:

- per-class tables (ClassTables) that the train step reads by indexing with the labels: the
  weight of the clean term, the weight of the adversarial term, and the multipliers of the
  attack's radius and step. The method changes them in place between epochs, so a captured CUDA
  graph reads the new values without a re-capture;
- records(epoch): the per-class statistics (engine/recorders.py, or its own `recorders`) it
  wants from this epoch's training batches; after_epoch receives them, summed over processes;
- batch_loss(): the batch's loss from the base loss's per-sample terms (FAAL's per-batch class
  weights), inside the train step; loss_version(epoch) tells the CUDA graph step when the Python
  logic of batch_loss changes; loss(): a training loss of its own (BAT);
- before_epoch / after_epoch; eval_model() (what is evaluated, CFA's average);
- state_dict / load_state_dict (exact resume), branch (start from another run's checkpoint),
  method_state (its per-class record in every metrics.jsonl row), figures (eval.py's plots).
"""
import functools
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from engine.cli import UserError
from evaluation.pgd import pgd_final_logits, pgd_whitebox
from losses import LossOutput, LossTerms, SampleWeights, weighted_loss
from losses.attack import exact_fp32


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
    # The training set's loader (a pass of a method's own before an epoch: CSR's), and the
    # in-place sum of tensors over processes (nothing in one process).
    train_loader: Optional[object] = None
    all_sum: Callable[..., None] = lambda *tensors: None


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


def training_set_attack(ctx: EpochContext, epoch: int):
    """Yields (labels, logits at the last PGD iterate) over the training set, model in eval
    mode, under the training attack (the official evaluation's PGD on the cross-entropy, from a
    uniform start): a pass of its own before epoch `epoch`, with its own shuffle, crops and
    flips (the loader's draws of epoch -epoch) and its own attack generator, so the epoch's
    training draws stay those of a run without it. Under torchrun each process attacks its
    slice of every batch."""
    model, generator = validation_model(ctx, epoch)
    loader = ctx.train_loader
    loader.set_epoch(-epoch)
    for x, y in loader:
        with exact_fp32(x.device.type):
            yield y, pgd_final_logits(model, x, y, ctx.epsilon, ctx.step_size, ctx.num_steps,
                                      generator)


def per_class_mean(values: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K,) float64 mean of values over each class's samples."""
    counts = torch.bincount(labels, minlength=num_classes).double()
    return torch.bincount(labels, weights=values.double(), minlength=num_classes) / counts


# CIFAR-10's per-channel mean and std, with which CFA's (utils.py l. 11-12), FAAL's (utils.py
# l. 8-9) and HAM's (GAIRAT_wrong_early_time.py l. 135-136) official codes normalise every input.
CIFAR10_MEAN_STD = '0.4914,0.4822,0.4465,0.2471,0.2435,0.2616'


def preact_normalized(model: str) -> List[str]:
    """The official recipes' inputs and network for CFA, FAAL and HAM: inputs normalised with
    CIFAR-10's statistics inside the model, and under the ResNet protocols PreAct ResNet-18."""
    return ['--normalize', CIFAR10_MEAN_STD] + (['--model', 'pre-resnet'] if model == 'resnet'
                                                else [])


def scaled_epochs(official: int, epochs: int) -> int:
    """An official epoch count under a protocol of `epochs` epochs instead of the paper's 110."""
    return max(1, round(official * epochs / 110))


class Method:
    """Plain adversarial training: every table stays 1."""

    name = 'none'        # the --rob_fairness_algorithm value
    label = ''           # in tables after the loss's name: 'TRADES + DAFA' ('' = plain)
    paper: Tuple[str, str] = ()  # (authors, venue) of its paper, for model cards
    losses: Tuple[str, ...] = ('trades', 'pgd')  # the --loss values it runs on
    # The fraction of each class's training images held out for its validation split (the
    # --val_per_class default, e.g. 0.06 = 300 of CIFAR-10's 5,000); 0: it reads none.
    validation_fraction = 0.0
    # Images per class its official code holds out, per dataset it was published on: the
    # default there when the whole training set is used (validation_fraction elsewhere).
    validation_official: Dict[str, int] = {}
    # The methods whose runs a run of this one may continue at branch_epoch (DAFA: off any plain
    # run's warm-up): the parent run records what parent_records asks for.
    branches_from: Tuple[str, ...] = ()
    # Its flags that parent_records depends on: part of the parent run's recipe too.
    parent_flags: Tuple[str, ...] = ()
    flags: Tuple[str, ...] = ()  # its own flags' names, filled by fairness.add_arguments
    # Recorders of its own, {name: class} with engine.recorders' interface, that records(epoch)
    # may name beside engine.recorders.RECORDERS.
    recorders: Dict[str, type] = {}
    # False: its loss syncs with the host (HAM's kept count sizes a forward), so the train
    # step runs eagerly (--cuda_graph is off by default and refused), in one process (a batch
    # one process skips would stall DistributedDataParallel's gradient reduction).
    cuda_graph = True
    # Its flag naming a finished run's checkpoint it reads, frozen (ABSLD's teacher): the
    # engine loads it into self.teacher before the loss is built, and fingerprints its file in
    # the recipe; teacher_of names the method whose run of the same seed and loss is the
    # default teacher under scripts/reproduce.py.
    teacher_flag: Optional[str] = None
    teacher_of: Optional[str] = None

    # The method's own published recipe (scripts/reproduce.py --recipe official): official_args
    # gives train.py arguments on top of the shared protocol's; fine_tunes names the method
    # whose final model of the same seed and loss it starts from (--init_weights; FRL: 'none').
    fine_tunes: Optional[str] = None

    @classmethod
    def official_args(cls, epochs: int, model: str) -> List[str]:
        """train.py arguments of the method's own recipe under a protocol of `epochs` epochs
        (the paper's 110; official epoch counts scale by epochs / 110) and `model`."""
        return []

    @classmethod
    def validation_per_class(cls, dataset: str, smallest: int, whole: bool) -> int:
        """The --val_per_class default: the official count on the whole of a dataset the
        method's code was run on, else its fraction of the smallest class (at least 1)."""
        if whole and dataset in cls.validation_official:
            return cls.validation_official[dataset]
        return max(1, round(cls.validation_fraction * smallest)) if cls.validation_fraction else 0

    @staticmethod
    def add_arguments(group) -> None:
        """The method's own command-line flags, named --<name>_*."""

    @classmethod
    def check_arguments(cls, args) -> None:
        """Fill the defaults that depend on other flags (e.g. the dataset) and check the
        method's own flags: UserError naming the flag and the fix."""

    @classmethod
    def branch_epoch(cls, args) -> Optional[int]:
        """The epoch of the parent checkpoint a run of this method branches off (None: never)."""
        return None

    @classmethod
    def parent_records(cls, args) -> Dict[int, Tuple[str, ...]]:
        """What a run it branches off must record, {epoch: recorder names}; kept in that run's
        checkpoints as 'records'."""
        return {}

    def __init__(self, args, num_classes: int, device):
        self.args, self.num_classes, self.device = args, num_classes, device
        self.tables = ClassTables(num_classes, device)
        self.teacher: Optional[torch.nn.Module] = None  # loaded by the engine (teacher_flag)

    def records(self, epoch: int) -> Tuple[str, ...]:
        """Names of the recorders (engine.recorders.RECORDERS) it needs in epoch `epoch`."""
        return ()

    def before_epoch(self, epoch: int, ctx: EpochContext) -> None:
        """Called before training epoch `epoch` (counted from 1)."""

    def after_epoch(self, epoch: int, ctx: EpochContext, recorded: dict, row: dict) -> None:
        """Called after training epoch `epoch`, before its evaluation, with what records(epoch)
        asked for ({name: CPU tensor}); adds to the epoch's metrics row. A UserError here stops
        the run after this epoch's checkpoint is kept (e.g. DAFA's weights <= 0)."""

    def state_dict(self) -> dict:
        """Tensors, numbers, strings and lists only (the safe checkpoint loader reads it)."""
        return {}

    def load_state_dict(self, state: dict, epoch: int) -> None:
        """Restore the state saved after `epoch` by a run of this method, exactly."""

    def branch(self, records: dict, epoch: int) -> None:
        """Continue another run's checkpoint of epoch branch_epoch(args), given its records
        ({name: {'epoch': int, 'value': tensor}}); UserError when they do not fit."""
        raise UserError(f'--rob_fairness_algorithm {self.name} does not branch off other runs.')

    def method_state(self) -> dict:
        """The per-class quantities for this epoch's metrics row (JSON)."""
        return {}

    def loss(self, default):
        """The training loss the train step calls, built once with the step: `default` is
        --loss's (losses/), whose per-sample terms batch_loss reduces. Overridden to pass the
        base loss an option (WAT's forwards) or to bring a loss of its own (BAT)."""
        return functools.partial(default, reduce=self.batch_loss)

    def batch_loss(self, terms: LossTerms, weights: SampleWeights, beta: float) -> LossOutput:
        """The batch's loss from the base loss's per-sample terms (with their graph) and the
        weights gathered from the tables. It runs inside the train step, and so inside its CUDA
        graph: device work only (no .item(), no Python branch on a tensor's value). Default:
        the base loss's own weighting, losses.weighted_loss."""
        return weighted_loss(terms, weights, beta)

    def loss_version(self, epoch: int) -> int:
        """Which loss batch_loss computes during epoch `epoch`. A CUDA graph replays the
        kernels of its capture, so a Python value batch_loss reads (a branch, a float
        attribute) is frozen at capture: the graph step captures anew when this number
        changes. What changes without it must live in device tensors updated in place
        (ClassTables, or a method's own buffers)."""
        return 0

    def eval_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model to evaluate and report (CFA: its weight average)."""
        return model

    def eval_state_dict(self) -> Optional[dict]:
        """The state_dict eval.py evaluates, when it is not the trained model's (else None)."""
        return None

    @classmethod
    def figures(cls, state: dict, class_names, out_dir: str) -> List[str]:
        """eval.py's figures of a checkpoint's method state; the paths written."""
        return []


class AfterWarmup(Method):
    """A method whose first --<name>_warmup epochs are plain training (default: --dafa_warmup,
    so it branches off the same checkpoint of any plain run as DAFA; 0: from the first epoch, as
    an official fine-tuning). Its rule reads self.active; its loss switches after the warm-up
    (loss_version). Subclasses add the flag with add_warmup_argument and call super()'s
    check_arguments and before_epoch."""
    branches_from = ('none',)
    rule = 'its rule'  # what the warm-up comes before, in --help and errors

    @classmethod
    def add_warmup_argument(cls, group) -> None:
        group.add_argument(f'--{cls.name}_warmup', type=int,
                           help=f'{cls.label}: plain epochs before {cls.rule} (default: '
                                '--dafa_warmup, whose plain checkpoint both branch off; 0: from '
                                'the first epoch, as the official fine-tuning)')

    @classmethod
    def warmup(cls, args) -> int:
        value = getattr(args, f'{cls.name}_warmup')
        return args.dafa_warmup if value is None else value

    @classmethod
    def check_arguments(cls, args) -> None:
        if not 0 <= cls.warmup(args) < args.epochs:
            raise UserError(f'--{cls.name}_warmup {cls.warmup(args)} must be between 0 and '
                            f'--epochs {args.epochs} - 1 ({cls.label} applies {cls.rule} in '
                            'the epochs after it).')

    @classmethod
    def branch_epoch(cls, args) -> Optional[int]:
        return cls.warmup(args) or None

    def __init__(self, args, num_classes: int, device):
        super().__init__(args, num_classes, device)
        self.warmup_epochs = self.warmup(args)
        self.active = False

    def loss_version(self, epoch: int) -> int:
        return int(epoch > self.warmup_epochs)

    def before_epoch(self, epoch: int, ctx: EpochContext) -> None:
        self.active = epoch > self.warmup_epochs

    def branch(self, records: dict, epoch: int) -> None:
        """Off a plain run's checkpoint of the warm-up's last epoch: nothing to take from it."""
