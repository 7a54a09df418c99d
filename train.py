"""Adversarial training (TRADES or PGD-AT), optionally with a robust-fairness method (DAFA, WAT,
FRL, CFA, BAT), on one device.

    python train.py --model_dir runs/trades_dafa --rob_fairness_algorithm dafa

Reads top to bottom: arguments, data, model, optimizer, method, (resume), then the epoch loop.
Each epoch: the method's hook before it, training (the train step reads the method's per-class
tables), the hook after it, the test evaluation, the checkpoint. DAFA: epochs 1..tau train the
plain method; during epoch tau the adversarial softmax of every training sample is recorded into
the class similarity S, and the class weights W computed from S set every later sample's loss
weight W[y] and margin W[y] * eps.
"""
import argparse
import json
import os
import random
import sys
import time

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

import dafa
import defaults as D
import models
from dafa import ClassWeightError
from data import (DATASETS, DatasetUnavailable, Loader, add_synthetic_arguments, load_dataset,
                  synthetic_config_from_args)
from engine import checkpoint, distributed, run
from engine.cli import ArgumentParser, run_main
from engine import device as engine_device
from engine.loop import NonFiniteLoss, train_one_epoch
from engine.schedule import SCHEDULES, lr_at
from engine.step import CUDAGraphError, CUDAGraphTrainStep, TrainStep
from evaluation import PGD_RULES, EvaluationError, predict_clean_and_pgd, summarize
from evaluation.checkpoint_io import read_checkpoint
from fairness import METHODS, EpochContext, MethodError
from losses import LOSSES


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split('\n\n')[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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

    g = p.add_argument_group('data')
    g.add_argument('--dataset', choices=DATASETS, default='cifar10',
                   help='folder: DIR/train/<class>/*, DIR/test/<class>/*; synthetic: made by code')
    g.add_argument('--data_dir', default='datasets',
                   help='download/cache root; for --dataset folder, the folder with train/ test/')
    g.add_argument('--n_train', type=int, help='train on the first N samples, class-stratified')
    g.add_argument('--num_workers', type=int, default=0,
                   help='processes decoding a --dataset folder once (batches come from memory)')
    add_synthetic_arguments(p)

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

    g = p.add_argument_group('adversarial training (L-inf, pixels in [0,1])')
    g.add_argument('--loss', choices=tuple(LOSSES), default='trades',
                   help='trades (Zhang et al. 2019) or pgd (PGD-AT, Madry et al. 2018)')
    g.add_argument('--epsilon', type=float, default=D.EPSILON, help='training radius (~8/255)')
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

    g = p.add_argument_group('robust fairness (fairness/: one file per method)')
    g.add_argument('--rob_fairness_algorithm', choices=tuple(METHODS), default='none',
                   help='dafa: class-wise loss weights and margins after the warm-up; wat, frl, '
                        'cfa: class-wise quantities from a validation split or the training '
                        'attacks; bat: its own loss (README, Robust-fairness methods)')
    g.add_argument('--val_per_class', type=int,
                   help='hold out the last N training images of each class for validation, '
                        'never trained on (default: 300 for wat, frl and cfa, 0 otherwise)')
    g.add_argument('--init_weights', metavar='PATH',
                   help="start from this checkpoint's model weights (ours or an official "
                        'state_dict) with a new optimizer, e.g. FRL fine-tuning a TRADES model')
    g.add_argument('--dafa_warmup', type=int, default=D.DAFA_WARMUP,
                   help='tau: plain epochs; the class similarity is recorded during epoch tau')
    g.add_argument('--dafa_lambda', type=float, help='DAFA strength lambda (default: 1.0 for '
                   'cifar10, 1.5 for cifar100 and stl10, 1.0 otherwise)')
    for method in METHODS.values():
        method.add_arguments(g)

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
    args = p.parse_args(argv)
    resolve_and_check(p, args)
    return args


def resolve_and_check(parser, args) -> None:
    """Fill the 'auto' defaults and reject arguments that cannot work, naming the fix."""
    try:
        args.device = engine_device.resolve(args.device)
    except ValueError as err:
        parser.error(str(err))
    on_cuda = args.device == 'cuda'
    if args.amp == 'auto':
        args.amp = 'bf16' if on_cuda else 'none'
    for flag in ('cuda_graph', 'channels_last'):
        if getattr(args, flag) is None:
            setattr(args, flag, on_cuda)
    if args.cuda_graph and not on_cuda:
        parser.error('--cuda_graph needs --device cuda; drop it (or pass --no-cuda_graph).')
    if args.dafa_lambda is None:
        args.dafa_lambda = D.DAFA_LAMBDA.get(args.dataset, D.DAFA_LAMBDA_DEFAULT)
    for name in ('epochs', 'batch_size', 'test_batch_size', 'eval_freq', 'save_freq',
                 'log_interval', 'dafa_warmup'):
        if getattr(args, name) < 1:
            parser.error(f'--{name} must be >= 1, got {getattr(args, name)}.')
    for name in ('epsilon', 'pgd_step_size', 'test_epsilon', 'test_pgd_step_size', 'lr'):
        if not getattr(args, name) > 0:
            parser.error(f'--{name} must be > 0, got {getattr(args, name)}.')
    for name in ('pgd_num_steps', 'test_pgd_num_steps', 'beta', 'momentum', 'weight_decay',
                 'num_workers'):
        if not getattr(args, name) >= 0:
            parser.error(f'--{name} must be >= 0, got {getattr(args, name)}.')
    if args.nesterov and args.momentum == 0:
        parser.error('--nesterov needs --momentum > 0; pass --no-nesterov for plain SGD.')
    if args.n_train is not None and args.n_train < 1:
        parser.error(f'--n_train must be >= 1, got {args.n_train}.')
    if args.dafa_lambda < 0:
        parser.error(f'--dafa_lambda must be >= 0, got {args.dafa_lambda}.')
    needs_validation = METHODS[args.rob_fairness_algorithm].needs_validation
    if args.val_per_class is None:
        args.val_per_class = D.VAL_PER_CLASS if needs_validation else 0
    if args.val_per_class < 0 or (needs_validation and args.val_per_class == 0):
        parser.error(f'--val_per_class must be >= {int(needs_validation)} with '
                     f'--rob_fairness_algorithm {args.rob_fairness_algorithm}, got '
                     f'{args.val_per_class}.')
    if args.init_weights and args.resume:
        parser.error('--init_weights starts a new run, --resume continues one: pass one.')
    if args.init_weights and not os.path.isfile(args.init_weights):
        parser.error(f'--init_weights {args.init_weights}: no such checkpoint file.')
    if args.rob_fairness_algorithm == 'dafa' and args.dafa_warmup >= args.epochs:
        parser.error(f'--dafa_warmup {args.dafa_warmup} leaves no DAFA epochs out of --epochs '
                     f'{args.epochs}; use a warm-up below the number of epochs.')
    if args.resume and not os.path.isfile(args.resume):
        parser.error(f'--resume {args.resume}: no such checkpoint file.')


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def checkpoint_state(epoch, model, optimizer, args, data, method) -> dict:
    return {'epoch': epoch, 'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
            'args': vars(args), 'class_names': data.class_names,
            'num_classes': data.num_classes, 'image_size': data.image_size,
            'test_set_sha256': data.test_fingerprint, 'validation': data.validation,
            'method': {'name': method.name, 'state': method.state_dict()},
            # What eval.py evaluates when it is not 'model' (CFA's weight average).
            'eval_model': method.eval_state_dict(),
            # For eval.py's figure of DAFA's weights and the similarity they came from.
            'class_weights': method.class_weights(), 'similarity': method.similarity,
            'rng': checkpoint.rng_state()}


class UsageError(RuntimeError):
    """A problem with the user's input (data, model, --resume file); the message names the fix."""


def load_data(args):
    try:
        data = load_dataset(args.dataset, args.data_dir, n_train=args.n_train, seed=args.seed,
                            num_workers=args.num_workers,
                            synthetic=synthetic_config_from_args(args))
    except ValueError as err:  # inconsistent folder, bad synthetic options, --n_train
        raise UsageError(f'--dataset {args.dataset}: {err}') from err
    if data.num_classes < 2:
        raise UsageError(f'--dataset {args.dataset} has {data.num_classes} class '
                         f'({data.class_names}); classification needs at least 2.')
    if args.val_per_class:
        try:
            data.hold_out_validation(args.val_per_class)
        except ValueError as err:
            raise UsageError(f'--val_per_class {args.val_per_class}: {err}') from err
    return data


def create_model(args, data) -> torch.nn.Module:
    try:
        return models.create(args.model, data.num_classes, data.image_size)
    except ValueError as err:
        fix = ('; pass --synthetic_image_size 32 or --model small-cnn'
               if args.dataset == 'synthetic' else '')
        raise UsageError(f'--model {args.model} on {data.image_size} px images: {err}{fix}.') \
            from err


TRAIN_CHECKPOINT_KEYS = ('epoch', 'model', 'optimizer', 'args', 'num_classes', 'image_size',
                         'similarity', 'rng')


def read_resume(args, data) -> dict:
    """The --resume checkpoint, checked against this run before anything is written."""
    ckpt = checkpoint.load(args.resume, trusted=args.trust_checkpoint)
    if not (isinstance(ckpt, dict) and all(key in ckpt for key in TRAIN_CHECKPOINT_KEYS)):
        weights_only = isinstance(ckpt, dict) and (
            'state_dict' in ckpt or all(isinstance(v, torch.Tensor) for v in ckpt.values()))
        what = ('holds model weights only (a state_dict, e.g. an official DAFA checkpoint)'
                if weights_only else 'is not a train.py checkpoint')
        raise UsageError(f'--resume {args.resume} {what}: resuming needs the epoch, optimizer '
                         'and RNG state of a train.py checkpoint-*.pt. Evaluate it with eval.py '
                         '--checkpoint, or start a new run without --resume.')
    saved = ckpt['args']
    for key in ('model', 'dataset', 'loss'):
        if saved[key] != getattr(args, key):
            raise UsageError(f'--resume: the checkpoint was trained with --{key} {saved[key]}, '
                             f'this run asks for {getattr(args, key)}; pass --{key} {saved[key]}.')
    if ckpt['num_classes'] != data.num_classes or ckpt['image_size'] != data.image_size:
        raise UsageError('--resume: the checkpoint was trained on data with '
                         f"{ckpt['num_classes']} classes at {ckpt['image_size']} px, this data "
                         f'has {data.num_classes} at {data.image_size} px.')
    if ckpt['epoch'] >= args.epochs:
        raise UsageError(f"--resume: the checkpoint finished epoch {ckpt['epoch']} of "
                         f'--epochs {args.epochs}; nothing left to train.')
    trained = saved['rob_fairness_algorithm']
    # A DAFA run may branch off a plain run's warm-up; any other method resumes its own runs.
    if trained != args.rob_fairness_algorithm and (trained, args.rob_fairness_algorithm) != (
            'none', 'dafa'):
        raise UsageError(f'--resume: the checkpoint was trained with --rob_fairness_algorithm '
                         f'{trained}, this run asks for {args.rob_fairness_algorithm}; only a '
                         'DAFA run branches off a plain one. Start a new run, or use '
                         '--init_weights to start from its weights.')
    if saved.get('val_per_class', 0) != args.val_per_class:
        raise UsageError(f"--resume: the checkpoint held out --val_per_class "
                         f"{saved.get('val_per_class', 0)}, this run asks for "
                         f'{args.val_per_class}; pass the same.')
    return ckpt


def method_state_of(ckpt: dict) -> dict:
    """The fairness method's state in a checkpoint (those before the interface kept only S)."""
    return ckpt['method']['state'] if 'method' in ckpt else {'similarity': ckpt['similarity']}


def init_weights(model, args) -> None:
    """--init_weights: the model's weights from a checkpoint (ours or an official state_dict);
    the optimizer, schedule and epochs start afresh."""
    try:
        ckpt = read_checkpoint(args.init_weights, trusted=args.trust_checkpoint)
        model.load_state_dict(ckpt.state_dict)
    except (EvaluationError, RuntimeError) as err:
        raise UsageError(f'--init_weights {args.init_weights}: {err}') from err


def stop_note(model_dir: str) -> str:
    """What a stopped run leaves to resume from (never claiming a checkpoint that is not there)."""
    path = run.checkpoint_path(model_dir)
    if not os.path.isfile(path):
        return 'No checkpoint was written.'
    epoch = checkpoint.load(path)['epoch']
    return f'The last good checkpoint, {path} (epoch {epoch}), is kept.'


def main(argv=None) -> None:
    args = parse_args(argv)
    device = engine_device.setup(args.device)  # first: before any torch op starts threads
    dctx = distributed.setup(device.type)  # torchrun: this process's rank; else world size 1
    try:
        train(args, device, dctx)
    finally:
        distributed.shutdown(dctx)


def train(args, device, dctx) -> None:
    if dctx.enabled:
        if device.type == 'cuda':
            device = torch.device('cuda', dctx.local_rank)
        if args.batch_size % dctx.world:
            raise UsageError(f'--batch_size {args.batch_size} (the global batch) does not split '
                             f'over {dctx.world} processes; pass a multiple of {dctx.world}.')
        if args.cuda_graph:  # DDP's gradient hooks are not captured: eager under torchrun
            args.cuda_graph = False
    if args.sync_bn and not (dctx.enabled and device.type == 'cuda'):
        raise UsageError('--sync_bn needs several processes (torchrun) on CUDA: SyncBatchNorm '
                         'runs on GPUs only; drop it.')
    # Everything is checked before the run folder changes: a mistake leaves it as it was.
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
                         train=False) if args.val_per_class else None)
    ckpt = read_resume(args, data) if args.resume else None

    model = create_model(args, data).to(device)
    if args.init_weights:
        init_weights(model, args)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                nesterov=args.nesterov, weight_decay=args.weight_decay)
    # The method's tables live for the whole run: the train step (and its CUDA graph) reads
    # them by indexing, and the method updates them in place.
    method = METHODS[args.rob_fairness_algorithm](args, data.num_classes, device)
    start_epoch = 1
    if ckpt is not None:
        model.load_state_dict(ckpt['model'])
        optimizer.load_state_dict(ckpt['optimizer'])
        start_epoch = ckpt['epoch'] + 1
        method.load_state_dict(method_state_of(ckpt), ckpt['epoch'])

    train_model = model  # what the train step runs: the model, or DDP around it
    if dctx.enabled:
        if args.sync_bn:
            train_model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            model = train_model
        train_model = DistributedDataParallel(
            train_model, device_ids=[dctx.local_rank] if device.type == 'cuda' else None)

    # The first write (rank 0 only): the folder is created and, with --overwrite, the
    # previous run removed.
    removed = run.start(args.model_dir, replace=replace, resume=args.resume) \
        if dctx.is_main else []
    if dctx.is_main:
        run.save_args(args.model_dir, args)
    logger = run.make_logger(args.model_dir if dctx.is_main else None,
                             prefix=f'[rank {dctx.rank}] ' if dctx.enabled else '')
    log = logger.info
    log('python ' + ' '.join(sys.argv))
    if dctx.enabled:
        log(f'{dctx.world} processes (torchrun), global batch {args.batch_size}, '
            f'{args.batch_size // dctx.world} per process; CUDA graph off under DDP')
    if removed:
        log(f'removed {len(removed)} files of the previous run in {args.model_dir}')
    log(f'{args.dataset}: {len(data.y_train)} train / {len(data.y_test)} test images'
        + (f' ({args.val_per_class} per class held out for validation)'
           if args.val_per_class else '')
        + f', {data.num_classes} classes, {data.image_size} px, device {device}')
    if ckpt is not None:
        checkpoint.set_rng_state(ckpt['rng'])
        run.truncate_metrics(args.model_dir, ckpt['epoch'])
        log(f"resumed from {args.resume} (epoch {ckpt['epoch']})"
            + (f'; {method.name}: {json.dumps(method.method_state())}'
               if method.method_state() else ''))

    step_cls = CUDAGraphTrainStep if args.cuda_graph else TrainStep
    step_kwargs = {'batch_size': args.batch_size} if args.cuda_graph else {}
    step = step_cls(train_model, optimizer, method.loss(LOSSES[args.loss]), method.tables,
                    amp_dtype=torch.bfloat16 if args.amp == 'bf16' else None,
                    channels_last=args.channels_last, epsilon=args.epsilon,
                    step_size=args.pgd_step_size, num_steps=args.pgd_num_steps, beta=args.beta,
                    **step_kwargs)
    ctx = EpochContext(model, val_loader, data.class_names, epsilon=args.epsilon,
                       step_size=args.pgd_step_size, num_steps=args.pgd_num_steps,
                       beta=args.beta, seed=args.seed, log=log)

    def save(epoch, row, keep):
        """Kept checkpoint, then the metrics row, then checkpoint-latest.pt: the latest is the
        commit point, so a kill before it leaves a resume that redoes this epoch. Rank 0
        writes; every process learns whether that worked, so a failure stops all."""
        bad = checkpoint.nonfinite_tensor(model.state_dict().items())
        if bad:  # the same on every process: weights and (synced) buffers are shared
            raise checkpoint.NonFiniteTensor(
                f'{bad} holds NaN or inf after epoch {epoch} (the loss may still look finite); '
                'the model was not saved. Lower --lr, or check the data and --amp setting.')
        failure = None
        if dctx.is_main:
            try:
                state = checkpoint_state(epoch, model, optimizer, args, data, method)
                if keep:
                    checkpoint.save_atomic(state, run.checkpoint_path(args.model_dir, epoch))
                run.append_metrics(args.model_dir, row)
                checkpoint.save_atomic(state, run.checkpoint_path(args.model_dir))
            except Exception as err:  # re-raised below, after telling the other processes
                failure = err
        if not distributed.all_agree(dctx, failure is None):
            raise failure or checkpoint.CheckpointError(
                f'rank 0 could not save epoch {epoch}; see its error. Training stopped.')

    try:
        for epoch in range(start_epoch, args.epochs + 1):
            keep = epoch % args.save_freq == 0 or epoch == args.dafa_warmup \
                or epoch > args.epochs - 10
            if dctx.enabled:  # each process its own attack noise, re-derived on resume
                torch.manual_seed(distributed.rank_seed(args.seed, epoch, dctx.rank))
            start = time.time()
            method.before_epoch(epoch, ctx)
            hooks_s = time.time() - start
            row = train_epoch(epoch, args, step, train_loader, method.recorder(epoch), log,
                              dctx)
            start = time.time()
            try:
                method.after_epoch(epoch, ctx, row.pop('recorder'), row)
            except dafa.ClassWeightError:
                save(epoch, row, keep=True)  # the warm-up: a smaller lambda can branch off it
                raise
            # The method's own work between epochs (WAT's and FRL's validation attacks).
            row['method_time_s'] = hooks_s + time.time() - start
            row['method_state'] = method.method_state()
            if epoch % args.eval_freq == 0 or epoch == args.epochs:
                row.update(evaluate(args, method.eval_model(model), test_loader, data, epoch,
                                    log, dctx))
            save(epoch, row, keep)
            log(f"epoch {epoch} lr {row['lr']:g} loss {row['loss']:.4f} "
                f"(natural {row['loss_natural']:.4f}, robust {row['loss_robust']:.4f}) "
                f"{row['train_time_s']:.1f} s")
    except (NonFiniteLoss, checkpoint.NonFiniteTensor) as err:
        stopped = type(err)(f'{err} {stop_note(args.model_dir)}')
        log(f'error: {stopped}')
        raise stopped from None
    except dafa.ClassWeightError as err:
        log(f'error: {err}')
        raise


def train_epoch(epoch, args, step, train_loader, recorder, log, dctx) -> dict:
    """One epoch of training at the schedule's lr; its metrics row (the recorder, if any, under
    'recorder', for the method to read; summed over processes)."""
    lr = lr_at(epoch, schedule=args.lr_schedule, base_lr=args.lr, epochs=args.epochs)
    for group in step.optimizer.param_groups:
        group['lr'] = lr
    train_loader.set_epoch(epoch)
    row = {'epoch': epoch, 'lr': lr}
    row.update(train_one_epoch(step, train_loader, epoch=epoch,
                               log_interval=args.log_interval, recorder=recorder, log=log,
                               agree=lambda ok: distributed.all_agree(dctx, ok)))
    if dctx.enabled:  # the epoch's losses: the mean over processes
        losses = torch.tensor([row['loss'], row['loss_natural'], row['loss_robust']],
                              device=next(step.model.parameters()).device)
        distributed.sum_(dctx, losses)
        row['loss'], row['loss_natural'], row['loss_robust'] = (losses / dctx.world).tolist()
    if recorder is not None:
        distributed.sum_(dctx, *recorder.tensors())
    # One model everywhere before anything reads its BatchNorm statistics.
    distributed.sync_buffers(dctx, step.model)
    row['recorder'] = recorder
    return row


def evaluate(args, model, test_loader, data, epoch, log, dctx) -> dict:
    """Clean and PGD-20 test accuracy per class (the metrics row's 'clean' and 'pgd20'); under
    torchrun each process attacks its part of the test set and the predictions are gathered."""
    start = time.time()
    model.eval()
    # Its own generator, seeded like eval.py's: evaluating never moves the training RNG, and
    # (in one process) equals eval.py --seed SEED on this epoch's checkpoint.
    seed = distributed.rank_seed(args.seed, 0, dctx.rank) if dctx.enabled else args.seed
    generator = torch.Generator(test_loader.device).manual_seed(seed)
    labels, clean_pred, adv_pred = distributed.gather_cat(dctx, *predict_clean_and_pgd(
        model, test_loader, epsilon=args.test_epsilon, step_size=args.test_pgd_step_size,
        num_steps=args.test_pgd_num_steps, rule=args.pgd_rule, generator=generator))
    out = {'clean': summarize(clean_pred == labels, labels, data.class_names),
           'pgd20': summarize(adv_pred == labels, labels, data.class_names),
           'eval_time_s': time.time() - start}
    log(f"epoch {epoch} test: clean {out['clean']['avg']:.2f} "
        f"(worst {out['clean']['worst_class']} {out['clean']['worst']:.2f}), "
        f"PGD-{args.test_pgd_num_steps} ({args.pgd_rule}) {out['pgd20']['avg']:.2f} "
        f"(worst {out['pgd20']['worst_class']} {out['pgd20']['worst']:.2f})")
    return out


ERRORS = (UsageError, DatasetUnavailable, NonFiniteLoss, checkpoint.NonFiniteTensor,
          ClassWeightError, MethodError, FileExistsError, CUDAGraphError,
          checkpoint.CheckpointError)


def cli(argv=None) -> int:
    """main, with a user's mistake reported as one `error: ...` line; the exit status."""
    return run_main(main, ERRORS, argv)


if __name__ == '__main__':
    sys.exit(cli())
