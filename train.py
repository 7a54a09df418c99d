"""Adversarial training (TRADES or PGD-AT), optionally with a robust-fairness method (DAFA, WAT,
FRL, CFA, BAT), on one device or several (torchrun).

    python train.py --model_dir runs/trades_dafa --rob_fairness_algorithm dafa

Reads top to bottom: main parses the arguments, setup() builds the run (data, model, optimizer,
method, resume) and fit() runs the epoch loop. Each epoch: the method's hook before it, training
(the train step reads the method's per-class tables; the recorders the method asked for see
every batch's adversarial logits), the hook after it, the test evaluation, the checkpoint. The
method (fairness/) owns everything method-specific, e.g. DAFA's warm-up, its class similarity
and its weights.
"""
import argparse
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

import defaults as D
import fairness
import models
from data import DATASETS, Loader, add_synthetic_arguments, load_dataset, synthetic_config_from_args
from engine import checkpoint, distributed, identity, run
from engine.best import BEST, CRITERIA, BestCheckpoint
from engine import device as engine_device
from engine.cli import ArgumentParser, UserError, check_finite, run_main
from engine.loop import train_one_epoch
from engine.recorders import Recording
from engine.schedule import SCHEDULES, lr_at
from engine.step import CUDAGraphTrainStep, TrainStep
from evaluation import PGD_RULES, predict_clean_and_pgd, summarize
from evaluation.checkpoint_io import read_checkpoint
from evaluation.report import selection_label
from evaluation.runner import pgd_name
from fairness import METHODS, EpochContext
from losses import LOSSES

CHECKPOINT_FORMAT = 2  # 2: 'records' and 'format' keys (fairness.upgrade_checkpoint reads 1)


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help, except None: such a flag's help says what fills it."""
    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=_DefaultsHelp)
    _run_arguments(p)
    _data_arguments(p)
    _optimisation_arguments(p)
    _attack_arguments(p)
    _fairness_arguments(p)
    _speed_arguments(p)
    fairness.add_arguments(p)
    args = p.parse_args(argv)
    try:
        resolve_and_check(args)
    except UserError as err:
        p.error(str(err))
    return args


def _run_arguments(p) -> None:
    g = p.add_argument_group('run')
    g.add_argument('--model_dir', default='runs/default', help='run folder (logs, checkpoints)')
    g.add_argument('--resume', metavar='PATH', help='checkpoint to continue from; with '
                   '--rob_fairness_algorithm dafa, a warm-up checkpoint of a plain run '
                   '(checkpoint-epochTAU.pt) branches a DAFA run off it')
    g.add_argument('--overwrite', action='store_true',
                   help="replace a run already in --model_dir (its files are deleted once this "
                        'run has checked its arguments, data and model)')
    g.add_argument('--trust_checkpoint', action='store_true',
                   help='load --resume with the unsafe loader, which can run code in the file; '
                        'only for a file from a source you trust')
    g.add_argument('--seed', type=int, default=D.SEED, help='seeds the model, the attack noise '
                   'and the data order')
    g.add_argument('--device', choices=('auto', 'cuda', 'cpu'), default='auto',
                   help='auto = cuda when visible')
    g.add_argument('--eval_freq', type=int, default=D.EVAL_FREQ,
                   help='epochs between clean + PGD-20 test evaluations (and the last epoch)')
    g.add_argument('--save_freq', type=int, default=D.SAVE_FREQ,
                   help='epochs between kept checkpoints (also kept: epoch tau, last 10 epochs)')
    g.add_argument('--log_interval', type=int, default=100,
                   help='batches between loss reports (the only host syncs of an epoch)')
    g.add_argument('--keep_best', choices=('none', 'val', 'test'), default='none',
                   help='also keep checkpoint-best.pt, the epoch that scores highest under the '
                        'test PGD: val = on the validation split after every epoch (needs one: '
                        '--val_per_class); test = at the test evaluations (--eval_freq), only '
                        'to compare with papers that selected on the test set, and labelled '
                        'so. The final model is what a run reports either way.')
    g.add_argument('--best_criterion', choices=tuple(CRITERIA), default='avg',
                   help='what --keep_best maximises: the PGD accuracy averaged over classes, or '
                        'that plus the worst class (ties keep the earlier epoch)')


def _data_arguments(p) -> None:
    g = p.add_argument_group('data')
    g.add_argument('--dataset', choices=DATASETS, default='cifar10',
                   help='folder: DIR/train/<class>/*, DIR/test/<class>/*; synthetic: made by code')
    g.add_argument('--data_dir', default='datasets',
                   help='download/cache root; for --dataset folder, the folder with train/ test/')
    g.add_argument('--n_train', type=int, help='train on the first N samples, class-stratified')
    g.add_argument('--num_workers', type=int, default=0,
                   help='processes decoding a --dataset folder once (batches come from memory)')
    add_synthetic_arguments(p)


def _optimisation_arguments(p) -> None:
    g = p.add_argument_group('model and optimisation')
    g.add_argument('--model', choices=tuple(models.MODELS), default='resnet',
                   help='resnet = ResNet-18; small-cnn is a tiny net for tests and the CPU demo')
    g.add_argument('--epochs', type=int, default=D.EPOCHS, help='training epochs')
    g.add_argument('--batch_size', type=int, default=D.BATCH_SIZE, help='training images per step')
    g.add_argument('--test_batch_size', type=int, default=D.TEST_BATCH_SIZE,
                   help='images per evaluation batch')
    g.add_argument('--lr', type=float, default=D.LR, help='initial SGD learning rate')
    g.add_argument('--momentum', type=float, default=D.MOMENTUM, help='SGD momentum')
    g.add_argument('--nesterov', action=argparse.BooleanOptionalAction, default=True,
                   help='Nesterov momentum')
    g.add_argument('--weight_decay', type=float, default=D.WEIGHT_DECAY, help='L2 penalty')
    g.add_argument('--lr_schedule', choices=SCHEDULES, default=D.LR_SCHEDULE,
                   help='bag_of_tricks: x0.1 from epoch epochs-10, x0.01 from epochs-5')


def _attack_arguments(p) -> None:
    g = p.add_argument_group('adversarial training (L-inf, pixels in [0,1])')
    g.add_argument('--loss', choices=tuple(LOSSES), default='trades',
                   help='trades (Zhang et al. 2019) or pgd (PGD-AT, Madry et al. 2018)')
    g.add_argument('--epsilon', type=float, default=D.EPSILON,
                   help='training radius in pixel units, 0-1 (0.031 ~ 8/255)')
    g.add_argument('--pgd_num_steps', type=int, default=D.PGD_NUM_STEPS,
                   help='training attack steps K')
    g.add_argument('--pgd_step_size', type=float, default=D.PGD_STEP_SIZE,
                   help='training attack step (~2/255)')
    g.add_argument('--beta', type=float, default=D.BETA, help='TRADES weight of the robust KL')
    g.add_argument('--test_epsilon', type=float, default=D.TEST_EPSILON,
                   help='evaluation PGD radius (8/255)')
    g.add_argument('--test_pgd_num_steps', type=int, default=D.TEST_PGD_NUM_STEPS,
                   help='evaluation PGD steps')
    g.add_argument('--test_pgd_step_size', type=float, default=D.TEST_PGD_STEP_SIZE,
                   help='evaluation PGD step')
    g.add_argument('--pgd_rule', choices=PGD_RULES, default=D.PGD_RULE,
                   help='final: robust if correct at the last iterate (the official per-class '
                        'evaluation); every: correct at the clean input and every iterate')
    g.add_argument('--allow_large_epsilon', action='store_true',
                   help=f'accept --epsilon / --test_epsilon above {D.MAX_EPSILON:.4f} '
                        '(16/255); without it, a larger value is taken for a slip (8 for 8/255)')


def _fairness_arguments(p) -> None:
    g = p.add_argument_group('robust fairness (fairness/: one file per method)')
    g.add_argument('--rob_fairness_algorithm', choices=tuple(METHODS), default='none',
                   help='the method (docs/methods.md); its own flags are in its group below')
    g.add_argument('--val_per_class', type=int,
                   help='hold out the last N training images of each class for validation, '
                        "never trained on (default: the method's official count on the dataset "
                        "it was published on, e.g. 300 of CIFAR-10's 5,000 for wat and frl, 100 "
                        'for cfa, else its share of the smallest class; 0 for methods without '
                        'validation; docs/methods.md)')
    g.add_argument('--init_weights', metavar='PATH',
                   help="start from this checkpoint's model weights (ours or an official "
                        'state_dict) with a new optimizer, e.g. FRL fine-tuning a TRADES model')


def _speed_arguments(p) -> None:
    g = p.add_argument_group('speed (CUDA only; evaluation is always fp32 eager)')
    g.add_argument('--amp', choices=('auto', 'bf16', 'none'), default='auto',
                   help='autocast for training passes; auto = bf16 on CUDA, none on CPU')
    g.add_argument('--cuda_graph', action=argparse.BooleanOptionalAction,
                   help='capture the training iteration in a CUDA graph (default: on CUDA)')
    g.add_argument('--channels_last', action=argparse.BooleanOptionalAction,
                   help='channels-last memory format (default: on CUDA)')
    g.add_argument('--sync_bn', action='store_true',
                   help='under torchrun: BatchNorm statistics over the global batch '
                        '(SyncBatchNorm); default: per process, as DataParallel')


def resolve_and_check(args) -> None:
    """Fill the 'auto' defaults and reject arguments that cannot work, naming the fix."""
    try:
        args.device = engine_device.resolve(args.device)
    except ValueError as err:
        raise UserError(str(err)) from err
    on_cuda = args.device == 'cuda'
    if args.amp == 'auto':
        args.amp = 'bf16' if on_cuda else 'none'
    for flag in ('cuda_graph', 'channels_last'):
        if getattr(args, flag) is None:
            setattr(args, flag, on_cuda)
    if args.cuda_graph and not on_cuda:
        raise UserError('--cuda_graph needs --device cuda; drop it (or pass --no-cuda_graph).')
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
    method = METHODS[args.rob_fairness_algorithm]
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
    if args.resume and not os.path.isfile(args.resume):
        raise UserError(f'--resume {args.resume}: no such checkpoint file.')


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----- setup: everything is checked before the run folder changes ------------------------------

@dataclass
class Run:
    """What the epoch loop needs, built by setup()."""
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


def setup(args, device, dctx) -> Run:
    device = check_distributed(args, device, dctx)
    replace = run.check_folder(args.model_dir, overwrite=args.overwrite, resume=args.resume)
    seed_everything(args.seed)
    data = load_data(args)
    train_loader = Loader(data.x_train, data.y_train, args.batch_size, device=device,
                          train=True, seed=args.seed, pad=data.crop_pad,
                          shard=(dctx.rank, dctx.world))
    # The test set is split over the processes and their predictions gathered.
    x_test, y_test = (torch.tensor_split(t, dctx.world)[dctx.rank]
                      for t in (data.x_test, data.y_test))
    test_loader = Loader(x_test, y_test, args.test_batch_size, device=device, train=False)
    val_loader = (Loader(data.x_val, data.y_val, args.test_batch_size, device=device,
                         train=False) if data.x_val is not None else None)
    if args.keep_best == 'val' and val_loader is None:
        raise UserError('--keep_best val selects on the validation split, and this run holds '
                        'none out: pass --val_per_class N (e.g. 100 of CIFAR-10\'s 5,000 per '
                        'class), or --keep_best test to select on the test set.')
    best = (BestCheckpoint(args.keep_best, args.best_criterion,
                           pgd_name(args.test_pgd_num_steps))
            if args.keep_best != 'none' else None)
    this_recipe = run_recipe(args, data)
    ckpt = read_resume(args, data, this_recipe, best) if args.resume else None

    model = create_model(args, data).to(device)
    if args.init_weights and ckpt is None:  # a resumed run's weights are the checkpoint's
        init_weights(model, args)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                nesterov=args.nesterov, weight_decay=args.weight_decay)
    # The method's tables live for the whole run: the train step (and its CUDA graph) reads
    # them by indexing, and the method updates them in place.
    method = METHODS[args.rob_fairness_algorithm](args, data.num_classes, device)
    start_epoch, records = 1, {}
    if ckpt is not None:
        start_epoch, records = restore(ckpt, model, optimizer, method)
    train_model = wrap_distributed(model, args, dctx)
    model = getattr(train_model, 'module', train_model)  # SyncBatchNorm converts in place

    branching = ckpt is not None and ckpt['epoch'] == method.branch_epoch(args)
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
    step_cls = CUDAGraphTrainStep if args.cuda_graph else TrainStep
    step = step_cls(train_model, optimizer, method.loss(LOSSES[args.loss]), method.tables,
                    amp_dtype=torch.bfloat16 if args.amp == 'bf16' else None,
                    channels_last=args.channels_last, epsilon=args.epsilon,
                    step_size=args.pgd_step_size, num_steps=args.pgd_num_steps, beta=args.beta,
                    **({'batch_size': args.batch_size} if args.cuda_graph else {}))
    ctx = EpochContext(model, val_loader, data.class_names, epsilon=args.epsilon,
                       step_size=args.pgd_step_size, num_steps=args.pgd_num_steps,
                       beta=args.beta, seed=args.seed, log=log)
    return Run(args, dctx, data, model, optimizer, method, step, train_loader, test_loader, ctx,
               log, start_epoch, records, fairness.branch_records(args), this_recipe,
               code_history, best)


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
                        synthetic=synthetic_config_from_args(args))
    if data.num_classes < 2:
        raise UserError(f'--dataset {args.dataset} has {data.num_classes} class '
                        f'({data.class_names}); classification needs at least 2.')
    per_class = args.val_per_class
    if per_class is None:
        smallest = int(torch.bincount(data.y_train, minlength=data.num_classes).min())
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
        return models.create(args.model, data.num_classes, data.image_size)
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
    'channels_last', 'allow_large_epsilon', 'keep_best', 'best_criterion'})


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
    return {key: value for key, value in sorted(args.items())
            if key not in BOOKKEEPING and key not in others}


def run_recipe(args, data) -> dict:
    """This run's recipe: its arguments, the fingerprints of its data (training set as trained
    on, test set, validation split) and initial weights, and the code's version."""
    init = identity.file_sha256(args.init_weights) if args.init_weights else None
    return {'args': recipe_args(args),
            'data': {'train_sha256': data.train_fingerprint(),
                     'test_sha256': data.test_fingerprint, 'validation': data.validation,
                     'init_weights_sha256': init},
            'code': identity.code_version()}


# What a changed input file is, in a refusal to resume.
_DATA_WORDS = {'data.train_sha256': 'training set', 'data.test_sha256': 'test set',
               'data.init_weights_sha256': '--init_weights file'}


def check_recipe(ckpt: dict, args, current: dict) -> None:
    """Refuse to continue a checkpoint under another run identity (engine/identity.py): resuming
    may change only --epochs under a schedule that does not depend on it, and the code (the
    code history lists each version); branching (a checkpoint of the method's branch_epoch) may
    also set the method and its flags anew. The weights of a resumed run come from the
    checkpoint, so --init_weights need not be passed again (when it is, it must be the same)."""
    method = METHODS[args.rob_fairness_algorithm]
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
    if ckpt['epoch'] == method.branch_epoch(args):
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
    branching = ckpt['method']['name'] != args.rob_fairness_algorithm
    if branching:
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
    if trained in method.branches_from and ckpt['epoch'] == method.branch_epoch(args):
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


def init_weights(model, args) -> None:
    """--init_weights: the model's weights from a checkpoint (ours or an official state_dict);
    the optimizer, schedule and epochs start afresh."""
    ckpt = read_checkpoint(args.init_weights, trusted=args.trust_checkpoint)
    try:
        model.load_state_dict(ckpt.state_dict)
    except RuntimeError as err:
        raise UserError(f'--init_weights {args.init_weights}: {err}') from err


def wrap_distributed(model, args, dctx) -> torch.nn.Module:
    """What the train step runs: the model, or DistributedDataParallel around it."""
    if not dctx.enabled:
        return model
    if args.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(
        model, device_ids=[dctx.local_rank] if model_device(model).type == 'cuda' else None)


def model_device(model) -> torch.device:
    return next(model.parameters()).device


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


# ----- the epoch loop -----------------------------------------------------------------------

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
    r.train_loader.set_epoch(epoch)
    recording = Recording(record_names, r.data.num_classes, model_device(r.model))
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


# ----- saving ------------------------------------------------------------------------------

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


def main(argv=None) -> None:
    args = parse_args(argv)
    device = engine_device.setup(args.device)  # first: before any torch op starts threads
    dctx = distributed.setup(device.type)  # torchrun: this process's rank; else world size 1
    # One writer per run folder (rank 0 writes for all processes).
    release, note = run.lock(args.model_dir, '--model_dir') if dctx.is_main else (None, '')
    try:
        fit(setup(args, device, dctx), note)  # no frame of main holds the run at shutdown
    finally:
        if release:
            release()
        distributed.shutdown(dctx)


def cli(argv=None) -> int:
    """main, with a user's mistake reported as one `error: ...` line; the exit status."""
    return run_main(main, argv)


if __name__ == '__main__':
    sys.exit(cli())
