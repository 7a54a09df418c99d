"""What a start of a run is, and everything checked before its folder changes: a new run, a
resume of its own checkpoint, a branch off a parent's checkpoint of the method's branch epoch
(DAFA off a plain run's epoch tau), or a fine-tune from --init_weights. build() loads the data,
the model, the optimizer and the method, restores a checkpoint (the run identity it continues,
its code history, the best-checkpoint selection so far) and opens the run folder; engine.fit
then trains. train.py wires it to the command line.
"""
import argparse
import functools
import json
import os
import random
import sys
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

import defaults as D
import fairness
import models
from data import Loader, load_dataset, synthetic_config_from_args
from evaluation.checkpoint_io import read_checkpoint
from evaluation.tables import selection_label
from evaluation.runner import pgd_name
from fairness import METHODS, EpochContext
from losses import LOSSES

from . import checkpoint, distributed, identity, run
from . import device as engine_device
from .best import BEST, BestCheckpoint
from .cli import UserError, check_finite
from .step import CUDAGraphTrainStep, TrainStep

CHECKPOINT_FORMAT = 2  # 2: 'records' and 'format' keys (fairness.upgrade_checkpoint reads 1)


def is_branch(ckpt: dict, args) -> bool:
    """The one definition of a branch: continuing a checkpoint of the epoch the run's method
    branches at (DAFA's tau), whoever wrote it (a plain parent, or a DAFA run of another
    lambda). A branch may set the method and its flags anew and starts its own selection of
    the best epoch."""
    return ckpt['epoch'] == METHODS[args.rob_fairness_algorithm].branch_epoch(args)


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def resolve_and_check(args) -> None:
    """Fill the 'auto' defaults and reject arguments that cannot work, naming the fix."""
    try:
        args.device = engine_device.resolve(args.device)
    except ValueError as err:
        raise UserError(str(err)) from err
    method = METHODS[args.rob_fairness_algorithm]
    _resolve_arithmetic(args, method)
    _check_numbers(args)
    _check_method_and_files(args, method)


def _resolve_arithmetic(args, method) -> None:
    """--fast, --amp, --tf32, --channels_last and --cuda_graph for the resolved device."""
    on_cuda = args.device == 'cuda'
    if args.fast and not on_cuda:
        raise UserError('--fast is the CUDA fast path (bf16, CUDA graph, channels_last, TF32); '
                        'on the CPU drop it, or pass --channels_last or --amp bf16 alone.')
    # The paper's arithmetic unless --fast (or defaults.FAST_ON_CUDA) asks for the fast path.
    fast = on_cuda and (D.FAST_ON_CUDA if args.fast is None else args.fast)
    args.fast = fast
    if args.amp == 'auto':
        args.amp = 'bf16' if fast else 'none'
    if args.tf32 is None:
        args.tf32 = fast
    if args.channels_last is None:
        args.channels_last = fast
    if args.cuda_graph is None:
        args.cuda_graph = fast and method.cuda_graph
    for flag in ('cuda_graph', 'tf32'):
        if getattr(args, flag) and not on_cuda:
            raise UserError(f'--{flag} needs --device cuda; drop it (or pass --no-{flag}).')
    if args.cuda_graph and not method.cuda_graph:
        raise UserError(f'--rob_fairness_algorithm {method.name} trains on a number of samples '
                        'that depends on the batch, which a CUDA graph cannot replay; drop '
                        '--cuda_graph.')


def _check_numbers(args) -> None:
    for name in ('epochs', 'batch_size', 'test_batch_size', 'eval_freq', 'save_freq',
                 'log_interval'):
        if getattr(args, name) < 1:
            raise UserError(f'--{name} must be >= 1, got {getattr(args, name)}.')
    # The optimizer and the losses compute in float32: a larger number is inf there.
    largest = torch.finfo(torch.float32).max
    for name in ('epsilon', 'pgd_step_size', 'test_epsilon', 'test_pgd_step_size', 'lr'):
        check_finite(args, name, low=0, low_open=True, high=largest)
    for name in ('beta', 'momentum', 'weight_decay'):
        check_finite(args, name, low=0, high=largest)
    for name in ('epsilon', 'test_epsilon'):
        if getattr(args, name) > D.MAX_EPSILON and not args.allow_large_epsilon:
            raise UserError(f'--{name} {getattr(args, name):g} is above 16/255 = '
                            f'{D.MAX_EPSILON:.4f}: radii are in pixel units 0-1 (8/255 = '
                            '0.031); pass that, or --allow_large_epsilon if you mean it.')
    if not 0 <= args.seed < 2 ** 32:
        raise UserError(f'--seed must be between 0 and 2**32 - 1, got {args.seed}.')
    for name in ('pgd_num_steps', 'test_pgd_num_steps', 'num_workers'):
        if getattr(args, name) < 0:
            raise UserError(f'--{name} must be >= 0, got {getattr(args, name)}.')
    if args.nesterov and args.momentum == 0:
        raise UserError('--nesterov needs --momentum > 0; pass --no-nesterov for plain SGD.')
    if args.n_train is not None and args.n_train < 1:
        raise UserError(f'--n_train must be >= 1, got {args.n_train}.')
    if args.imbalance_ratio is not None and args.n_train is not None:
        raise UserError('--imbalance_ratio cuts its own subset of the whole training set; drop '
                        '--n_train.')


def _check_method_and_files(args, method) -> None:
    if args.loss not in method.losses:
        raise UserError(f'--rob_fairness_algorithm {method.name} runs on --loss '
                        f"{' or '.join(method.losses)}, not {args.loss}.")
    method.check_arguments(args)
    if args.val_per_class is not None and (
            args.val_per_class < 0 or (method.validation_fraction and args.val_per_class == 0)):
        raise UserError(f'--val_per_class must be >= {int(bool(method.validation_fraction))} '
                        f'with --rob_fairness_algorithm {method.name}, got {args.val_per_class}.')
    if args.init_weights and not os.path.isfile(args.init_weights):
        raise UserError(f'--init_weights {args.init_weights}: no such checkpoint file.')
    teacher = teacher_path(args)
    if teacher is not None and not os.path.isfile(teacher):
        raise UserError(f'--{method.teacher_flag} {teacher}: no such checkpoint file.')
    if args.resume and not os.path.isfile(args.resume):
        raise UserError(f'--resume {args.resume}: no such checkpoint file.')


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Run:
    """What the epoch loop needs, built by build()."""
    args: argparse.Namespace
    dctx: distributed.Context
    data: object                 # data.Dataset
    model: torch.nn.Module       # the model (what is saved and evaluated)
    optimizer: torch.optim.Optimizer
    method: fairness.Method
    step: TrainStep
    train_loader: Loader
    test_loader: Loader
    ctx: EpochContext            # what the method's hooks see
    log: Callable[[str], None]
    start_epoch: int
    records: dict                # {name: {'epoch', 'value'}}: what branching runs need
    record_plan: dict            # {epoch: recorder names} for those records
    recipe: dict                 # engine/identity.py; 'code' is the version that started it
    code_history: list           # [{'from_epoch', 'commit', 'dirty', 'fingerprint', 'machine'}]
    best: Optional[BestCheckpoint]  # --keep_best's selection so far, None without it


def build(args, device, dctx) -> Run:
    device = check_distributed(args, device, dctx)
    replace = run.check_folder(args.model_dir, overwrite=args.overwrite, resume=args.resume)
    seed_everything(args.seed)
    data = load_data(args)
    train_loader, test_loader, val_loader = loaders(args, data, device, dctx)
    if args.keep_best == 'val' and val_loader is None:
        raise UserError('--keep_best val selects on the validation split, and this run holds '
                        'none out: pass --val_per_class N (e.g. 100 of CIFAR-10\'s 5,000 per '
                        'class), or --keep_best test to select on the test set.')
    best = (BestCheckpoint(args.keep_best, args.best_criterion,
                           pgd_name(args.test_pgd_num_steps))
            if args.keep_best != 'none' else None)
    this_recipe = run_recipe(args, data)
    ckpt = read_resume(args, data, this_recipe, best) if args.resume else None

    model, optimizer = model_and_optimizer(args, data, device, resumed=ckpt is not None)
    # The method's tables live for the whole run: the train step (and its CUDA graph) reads
    # them by indexing, and the method updates them in place.
    method = METHODS[args.rob_fairness_algorithm](args, data.num_classes, device)
    if method.teacher_flag:
        method.teacher = load_teacher(args, data, device)
    start_epoch, records = 1, {}
    if ckpt is not None:
        try:
            start_epoch, records = restore(ckpt, model, optimizer, method)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
            raise UserError(f'--resume {args.resume}: its state does not fit this run '
                            f'({type(err).__name__}: {str(err).splitlines()[0]}); resume from '
                            "another of the run's checkpoints, or start a new run.") from err
    train_model = wrap_distributed(model, args, dctx)
    model = getattr(train_model, 'module', train_model)  # SyncBatchNorm converts in place

    branching = ckpt is not None and is_branch(ckpt, args)
    if branching:  # the parent's checkpoint is one of this run's input files
        this_recipe['data']['parent_sha256'] = identity.file_sha256(args.resume)
    this_recipe['machine'] = engine_device.machine(device)  # provenance, not identity
    this_recipe, code_history = continue_recipe(None if branching else ckpt, this_recipe)
    log = open_run_folder(args, replace, dctx, data, device, this_recipe)
    if code_history[-1]['from_epoch'] == start_epoch > 1:
        log(f"resumed under another code version or machine ({code_history[-1]['commit'][:12]}"
            f"{', dirty' if code_history[-1]['dirty'] else ''}; "
            f"{engine_device.machine_label(code_history[-1]['machine'])}); checkpoints list each")
    if ckpt is not None:
        checkpoint.set_rng_state(ckpt['rng'])
        if dctx.is_main:  # the one writer: rank 0 also clears the folder's temporary files
            run.truncate_metrics(args.model_dir, ckpt['epoch'])
        state = method.method_state()
        log(f"resumed from {args.resume} (epoch {ckpt['epoch']})"
            + (f'; {method.name}: {json.dumps(state)}' if state else ''))
    step = train_step(args, train_model, optimizer, method)
    ctx = EpochContext(model, val_loader, data.class_names, epsilon=args.epsilon,
                       step_size=args.pgd_step_size, num_steps=args.pgd_num_steps,
                       beta=args.beta, seed=args.seed, log=log, train_loader=train_loader,
                       all_sum=functools.partial(distributed.sum_, dctx))
    return Run(args, dctx, data, model, optimizer, method, step, train_loader, test_loader, ctx,
               log, start_epoch, records, fairness.branch_records(args), this_recipe,
               code_history, best)


def model_and_optimizer(args, data, device, resumed: bool):
    model = create_model(args, data).to(device)
    if args.init_weights and not resumed:  # a resumed run's weights are the checkpoint's
        init_weights(model, args)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                nesterov=args.nesterov, weight_decay=args.weight_decay)
    return model, optimizer


def loaders(args, data, device, dctx):
    """(train, test, validation or None) loaders; under torchrun each process gets its slice
    of every global batch, and its share of the test set (the predictions are gathered)."""
    train_loader = Loader(data.x_train, data.y_train, args.batch_size, device=device,
                          train=True, seed=args.seed, pad=data.crop_pad,
                          padding_mode=args.padding_mode, shard=(dctx.rank, dctx.world))
    x_test, y_test = (torch.tensor_split(t, dctx.world)[dctx.rank]
                      for t in (data.x_test, data.y_test))
    test_loader = Loader(x_test, y_test, args.test_batch_size, device=device, train=False)
    val_loader = (Loader(data.x_val, data.y_val, args.test_batch_size, device=device,
                         train=False) if data.x_val is not None else None)
    return train_loader, test_loader, val_loader


def train_step(args, train_model, optimizer, method) -> TrainStep:
    """The attack-and-update step (engine/step.py), reading the method's class tables."""
    step_cls = CUDAGraphTrainStep if args.cuda_graph else TrainStep
    return step_cls(train_model, optimizer, method.loss(LOSSES[args.loss]), method.tables,
                    amp_dtype=torch.bfloat16 if args.amp == 'bf16' else None,
                    channels_last=args.channels_last, epsilon=args.epsilon,
                    step_size=args.pgd_step_size, num_steps=args.pgd_num_steps, beta=args.beta,
                    **({'batch_size': args.batch_size} if args.cuda_graph else {}))


def continue_recipe(ckpt, this_recipe: dict):
    """(the run's recipe, its code history): a resumed run keeps the recipe it started with and
    appends this code version and machine to its history when they differ from the last ones; a
    new run (or a branch: ckpt None) starts both anew."""
    code = dict(identity.code_version(), machine=this_recipe['machine'])
    if ckpt is None or 'recipe' not in ckpt:
        return this_recipe, [dict(code, from_epoch=ckpt['epoch'] + 1 if ckpt else 1)]
    history = list(ckpt['code_history'])
    if {k: history[-1].get(k) for k in code} != code:
        history.append(dict(code, from_epoch=ckpt['epoch'] + 1))
    return ckpt['recipe'], history


def check_distributed(args, device, dctx) -> torch.device:
    """This process's device under torchrun, and the settings that cannot run there."""
    if dctx.enabled:
        if device.type == 'cuda':
            device = torch.device('cuda', dctx.local_rank)
        if args.batch_size % dctx.world:
            raise UserError(f'--batch_size {args.batch_size} (the global batch) does not split '
                            f'over {dctx.world} processes; pass a multiple of {dctx.world}.')
        method = METHODS[args.rob_fairness_algorithm]
        if not method.cuda_graph:
            raise UserError(f'--rob_fairness_algorithm {method.name} trains on a number of '
                            'samples that depends on the batch: a process that skips a batch '
                            "would stall DistributedDataParallel's gradient reduction; run it "
                            'in one process.')
        if args.cuda_graph:  # DDP's gradient hooks are not captured: eager under torchrun
            args.cuda_graph = False
    if args.sync_bn and not (dctx.enabled and device.type == 'cuda'):
        raise UserError('--sync_bn needs several processes (torchrun) on CUDA: SyncBatchNorm '
                        'runs on GPUs only; drop it.')
    return device


def load_data(args):
    """The dataset, with the method's validation split held out (its size resolved into
    data.validation, which the recipe and the checkpoint record; --val_per_class stays as given,
    None meaning the method's share)."""
    data = load_dataset(args.dataset, args.data_dir, n_train=args.n_train, seed=args.seed,
                        num_workers=args.num_workers,
                        synthetic=synthetic_config_from_args(args),
                        imbalance_ratio=args.imbalance_ratio)
    if data.num_classes < 2:
        raise UserError(f'--dataset {args.dataset} has {data.num_classes} class '
                        f'({data.class_names}); classification needs at least 2.')
    per_class = args.val_per_class
    if per_class is None:
        # A long-tailed subset's split comes from the images it left out: count those too.
        labels = data.y_train if data.y_spare is None else torch.cat([data.y_train, data.y_spare])
        smallest = int(torch.bincount(labels, minlength=data.num_classes).min())
        per_class = METHODS[args.rob_fairness_algorithm].validation_per_class(
            args.dataset, smallest, whole=args.n_train is None)
    if per_class:
        try:
            data.hold_out_validation(per_class)
        except ValueError as err:
            raise UserError(f'--val_per_class {per_class}: {err}') from err
    return data


def create_model(args, data) -> torch.nn.Module:
    try:
        return models.create(args.model, data.num_classes, data.image_size,
                             normalize=args.normalize)
    except ValueError as err:
        fix = ('; pass --synthetic_image_size 32 or --model small-cnn'
               if args.dataset == 'synthetic' else '')
        raise UserError(f'--model {args.model} on {data.image_size} px images: {err}{fix}.') \
            from err


# Arguments that do not change what is trained: where files go and how often they are written,
# the device and the speed settings of the same computation, and where the data and the initial
# weights lie (their fingerprints, in the recipe's data, identify them).
BOOKKEEPING = frozenset({
    'model_dir', 'resume', 'overwrite', 'trust_checkpoint', 'device', 'eval_freq', 'save_freq',
    'log_interval', 'num_workers', 'data_dir', 'init_weights', 'test_batch_size', 'cuda_graph',
    'channels_last', 'fast', 'allow_large_epsilon', 'keep_best', 'best_criterion'})


def recipe_args(args) -> dict:
    """The arguments that identify a run (engine/identity.py): every resolved argument but the
    bookkeeping ones and the flags of methods it does not run."""
    args = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
    algorithm = args['rob_fairness_algorithm']
    own = set(METHODS[algorithm].flags) if algorithm in METHODS else set()
    # The flags that decide what this run records for the methods that branch off it (a plain
    # run's tau): runs that record differently are different runs.
    own |= {flag for cls in METHODS.values() if algorithm in cls.branches_from
            for flag in cls.parent_flags}
    others = {flag for cls in METHODS.values() for flag in cls.flags} - own
    # A teacher is identified by its file's fingerprint (the recipe's data), not its path.
    teachers = {cls.teacher_flag for cls in METHODS.values()}
    return {key: value for key, value in sorted(args.items())
            if key not in BOOKKEEPING and key not in others and key not in teachers}


def teacher_path(args) -> Optional[str]:
    """The checkpoint file of the run's method's teacher, if it reads one."""
    flag = METHODS[args.rob_fairness_algorithm].teacher_flag
    return getattr(args, flag) if flag else None


def run_recipe(args, data) -> dict:
    """This run's recipe: its arguments, the fingerprints of its data (training set as trained
    on, test set, validation split), initial weights and teacher, and the code's version."""
    init = identity.file_sha256(args.init_weights) if args.init_weights else None
    inputs = {'train_sha256': data.train_fingerprint(), 'test_sha256': data.test_fingerprint,
              'validation': data.validation, 'init_weights_sha256': init}
    teacher = teacher_path(args)
    if teacher is not None:
        inputs['teacher_sha256'] = identity.file_sha256(teacher)
    return {'args': recipe_args(args), 'data': inputs, 'code': identity.code_version()}


# What a changed input file is, in a refusal to resume.
_DATA_WORDS = {'data.train_sha256': 'training set', 'data.test_sha256': 'test set',
               'data.init_weights_sha256': '--init_weights file',
               'data.teacher_sha256': 'teacher checkpoint'}


def check_recipe(ckpt: dict, args, current: dict) -> None:
    """Refuse to continue a checkpoint under another run identity (engine/identity.py): resuming
    may change only --epochs under a schedule that does not depend on it, and the code (the
    code history lists each version); branching (a checkpoint of the method's branch_epoch) may
    also set the method and its flags anew. The weights of a resumed run come from the
    checkpoint, so --init_weights need not be passed again (when it is, it must be the same)."""
    saved = ckpt.get('recipe') or {'args': recipe_args(ckpt['args']), 'data': {
        'test_sha256': ckpt.get('test_set_sha256'), 'validation': ckpt.get('validation')}}
    ignore = {'code', 'data.parent_sha256'}
    # Format 1 saved --val_per_class resolved; its validation split is compared below.
    ignore |= set() if 'recipe' in ckpt else {'args.val_per_class'}
    # What the checkpoint did not record (older formats, no --init_weights) is not compared.
    ignore |= {f'data.{key}' for key in current['data'] if saved['data'].get(key) is None}
    if not args.init_weights:
        ignore.add('data.init_weights_sha256')
    if saved['args'].get('lr_schedule') == args.lr_schedule == 'constant':
        ignore.add('args.epochs')
    if is_branch(ckpt, args):
        ignore |= {'args.rob_fairness_algorithm'} | {
            f'args.{flag}' for cls in METHODS.values() for flag in cls.flags}
    diff = identity.differences(identity.run_identity(saved), identity.run_identity(current),
                                ignore)
    changed = {f: d for f, d in diff.items() if f.startswith('args.')}
    if changed:
        raise UserError(f"--resume: this run's recipe differs from the checkpoint's in "
                        f"{identity.describe(changed)}; continuing would mix two experiments. "
                        "Pass the checkpoint's values, or start a new run in another "
                        '--model_dir.')
    if diff:
        field = next(iter(diff))
        what = _DATA_WORDS.get(field, 'validation split' if field.startswith('data.validation')
                               else field)
        raise UserError(f'--resume: the {what} differs from the one the checkpoint was trained '
                        f'on ({identity.describe(diff)}: another --data_dir, --seed, --n_train '
                        'or data option, or edited files); resume with the same data, or start '
                        'a new run.')


TRAIN_CHECKPOINT_KEYS = ('epoch', 'model', 'optimizer', 'args', 'num_classes', 'image_size',
                         'method', 'rng')


def read_resume(args, data, current_recipe: dict, best: Optional[BestCheckpoint]) -> dict:
    """The --resume checkpoint, checked against this run before anything is written; best
    takes the checkpoint's selection so far."""
    ckpt = checkpoint.load(args.resume, trusted=args.trust_checkpoint)
    if isinstance(ckpt, dict) and 'selection' in ckpt:
        raise UserError(f'--resume {args.resume} is a best checkpoint (weights only, '
                        f"{selection_label(ckpt['selection'])}); resume from the run's "
                        f'{run.LATEST}, or evaluate this one with eval.py --checkpoint.')
    if not (isinstance(ckpt, dict) and all(key in ckpt for key in TRAIN_CHECKPOINT_KEYS)):
        weights_only = isinstance(ckpt, dict) and (
            'state_dict' in ckpt or all(isinstance(v, torch.Tensor) for v in ckpt.values()))
        what = ('holds model weights only (a state_dict, e.g. an official DAFA checkpoint)'
                if weights_only else 'is not a train.py checkpoint')
        raise UserError(f'--resume {args.resume} {what}: resuming needs the epoch, optimizer '
                        'and RNG state of a train.py checkpoint-*.pt. Evaluate it with eval.py '
                        '--checkpoint, or start a new run without --resume.')
    problem = checkpoint.train_checkpoint_problem(ckpt)
    if problem:
        raise UserError(f'--resume {args.resume}: {problem} (a damaged or edited file); resume '
                        f"from another of the run's checkpoints, or start a new run.")
    ckpt = fairness.upgrade_checkpoint(ckpt)
    saved = ckpt['args']
    for key in ('model', 'dataset', 'loss'):
        if saved[key] != getattr(args, key):
            raise UserError(f'--resume: the checkpoint was trained with --{key} {saved[key]}, '
                            f'this run asks for {getattr(args, key)}; pass --{key} {saved[key]}.')
    if ckpt['num_classes'] != data.num_classes or ckpt['image_size'] != data.image_size:
        raise UserError('--resume: the checkpoint was trained on data with '
                        f"{ckpt['num_classes']} classes at {ckpt['image_size']} px, this data "
                        f'has {data.num_classes} at {data.image_size} px.')
    if ckpt['epoch'] >= args.epochs:
        raise UserError(f"--resume: the checkpoint finished epoch {ckpt['epoch']} of "
                        f'--epochs {args.epochs}; nothing left to train.')
    check_lineage(ckpt, args)
    check_recipe(ckpt, args, current_recipe)
    continue_best(ckpt, args, best)
    return ckpt


def continue_best(ckpt: dict, args, best: Optional[BestCheckpoint]) -> None:
    """--keep_best on resume: the selection continues only if it ran from the first epoch,
    and is not dropped halfway, which would leave a checkpoint-best.pt that saw only part of the
    run. A branch starts its own: it selects among its own epochs (select_best)."""
    saved = ckpt.get('best')
    if is_branch(ckpt, args):
        return
    if best is None:
        if saved:
            raise UserError(f"--resume: this run keeps the best checkpoint ({BEST}, "
                            f"--keep_best {saved['split']} --best_criterion "
                            f"{saved['criterion']}); pass those, so that it covers the whole "
                            'run.')
        return
    if not saved:
        raise UserError(f'--keep_best {args.keep_best}: the checkpoint\'s run did not keep the '
                        f'best model from its first epoch, so {BEST} would miss epochs 1-'
                        f"{ckpt['epoch']}. Resume without --keep_best, or train the run (and "
                        'the run it branches off) with it from the start.')
    try:
        best.load_state_dict(saved)
    except ValueError as err:
        raise UserError(f'--resume: {err}; pass --keep_best {saved["split"]} --best_criterion '
                        f'{saved["criterion"]}, as the run began.') from None


def check_lineage(ckpt: dict, args) -> None:
    """A run continues its own method's checkpoints, or branches off a checkpoint of a method
    in its branches_from at its branch_epoch (DAFA off a plain run's epoch tau)."""
    method, trained = METHODS[args.rob_fairness_algorithm], ckpt['method']['name']
    if trained == method.name:
        return
    if trained in method.branches_from and is_branch(ckpt, args):
        return
    if trained in method.branches_from:
        epoch = method.branch_epoch(args)
        raise UserError(f"--resume: a {method.name} run branches off a {trained} run's "
                        f"checkpoint of epoch {epoch}, this one is of epoch {ckpt['epoch']}; "
                        f"pass that run's {os.path.basename(run.checkpoint_path('', epoch))}.")
    allowed = ', '.join(method.branches_from) or 'none'
    raise UserError(f'--resume: the checkpoint was trained with --rob_fairness_algorithm '
                    f'{trained}, this run asks for {method.name} (which branches off: '
                    f'{allowed}). Start a new run, or use --init_weights to start from its '
                    'weights.')


def restore(ckpt: dict, model, optimizer, method):
    """Model, optimizer and method state from ckpt; (the first epoch to train, the records)."""
    model.load_state_dict(ckpt['model'])
    optimizer.load_state_dict(ckpt['optimizer'])
    if ckpt['method']['name'] == method.name:
        method.load_state_dict(ckpt['method']['state'], ckpt['epoch'])
        return ckpt['epoch'] + 1, dict(ckpt['records'])
    method.branch(ckpt['records'], ckpt['epoch'])
    return ckpt['epoch'] + 1, {}  # the parent's records are for runs branching off it


# The arguments that make the network: a run that starts from another's weights
# (--init_weights) must have the same.
NETWORK_ARGS = ('model', 'normalize')


def init_weights(model, args) -> None:
    """--init_weights: the model's weights from a checkpoint (ours or an official state_dict);
    the optimizer, schedule and epochs start afresh."""
    ckpt = read_checkpoint(args.init_weights, trusted=args.trust_checkpoint)
    saved = {**identity.ADDED_ARGS, **ckpt.args} if isinstance(ckpt.args, dict) else {}
    for flag in NETWORK_ARGS:  # a checkpoint of ours says which network it trained
        theirs, ours = saved.get(flag, getattr(args, flag)), getattr(args, flag)
        if theirs != ours:
            raise UserError(f'--init_weights {args.init_weights} was trained with --{flag} '
                            f'{theirs}, this run has --{flag} {ours}: start from a run trained '
                            f'with --{flag} {ours}, or pass --{flag} {theirs}.')
    try:
        model.load_state_dict(ckpt.state_dict)
    except RuntimeError as err:
        raise UserError(f'--init_weights {args.init_weights}: {err}') from err


def load_teacher(args, data, device) -> torch.nn.Module:
    """The method's teacher (Method.teacher_flag): a finished run's checkpoint, ours (its
    network from its arguments, its evaluated weights) or a bare state_dict (its network from
    --<method>_teacher_model), in eval mode with its parameters frozen. The training never
    writes it; its file's fingerprint is in the recipe."""
    flag = METHODS[args.rob_fairness_algorithm].teacher_flag
    path = getattr(args, flag)
    if path is None:
        raise UserError(f'--rob_fairness_algorithm {args.rob_fairness_algorithm} distils from a '
                        f'teacher: pass --{flag} CHECKPOINT, a finished run\'s checkpoint (e.g. '
                        "a TRADES run's checkpoint-latest.pt).")
    ckpt = read_checkpoint(path, trusted=args.trust_checkpoint)
    saved = {**identity.ADDED_ARGS, **ckpt.args} if isinstance(ckpt.args, dict) else {}
    name = getattr(args, f'{flag}_model', None) or saved.get('model')
    if name is None:
        raise UserError(f'--{flag} {path} does not say its network (a bare state_dict): pass '
                        f'--{flag}_model NAME.')
    teacher = models.create(name, data.num_classes, data.image_size,
                            normalize=saved.get('normalize'))
    try:
        teacher.load_state_dict(ckpt.state_dict)
    except RuntimeError as err:
        raise UserError(f'--{flag} {path}: {str(err).splitlines()[0]}') from err
    return teacher.to(device).eval().requires_grad_(False)


def wrap_distributed(model, args, dctx) -> torch.nn.Module:
    """What the train step runs: the model, or DistributedDataParallel around it."""
    if not dctx.enabled:
        return model
    if args.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(
        model, device_ids=[dctx.local_rank] if model_device(model).type == 'cuda' else None)


def open_run_folder(args, replace: bool, dctx, data, device,
                    this_recipe: dict) -> Callable[[str], None]:
    """The first write (rank 0 only): the folder is created and, with --overwrite, the previous
    run removed; args.json and recipe.json written. Returns the log function."""
    removed = run.start(args.model_dir, replace=replace, resume=args.resume) \
        if dctx.is_main else []
    if dctx.is_main:
        run.save_json(args.model_dir, 'args.json', vars(args))
        run.save_json(args.model_dir, 'recipe.json', this_recipe)
    log = run.make_logger(args.model_dir if dctx.is_main else None,
                          prefix=f'[rank {dctx.rank}] ' if dctx.enabled else '').info
    log('python ' + ' '.join(sys.argv))
    if dctx.enabled:
        log(f'{dctx.world} processes (torchrun), global batch {args.batch_size}, '
            f'{args.batch_size // dctx.world} per process; CUDA graph off under DDP')
    if removed:
        log(f'removed {len(removed)} files of the previous run in {args.model_dir}')
    log(f'{args.dataset}: {len(data.y_train)} train / {len(data.y_test)} test images'
        + (f" ({data.validation['per_class']} per class held out for validation)"
           if data.validation else '')
        + f', {data.num_classes} classes, {data.image_size} px, device {device}')
    return log
