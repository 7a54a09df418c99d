"""Adversarial training (TRADES or PGD-AT), optionally with DAFA, on one device.

    python train.py --model_dir runs/trades_dafa --rob_fairness_algorithm dafa

Reads top to bottom: arguments, data, model, optimizer, (resume), then the epoch loop. Epochs
1..tau train the plain method; during epoch tau the adversarial softmax of every training sample
is recorded into the class similarity S; with DAFA the class weights W computed from S at the end
of epoch tau set every later sample's loss weight W[y] and margin W[y] * eps.
"""
import argparse
import os
import random
import sys
import time

import numpy as np
import torch

import dafa
import defaults as D
import models
from dafa import ClassWeightError
from data import (DATASETS, DatasetUnavailable, Loader, add_synthetic_arguments, load_dataset,
                  synthetic_config_from_args)
from engine import checkpoint, run
from engine import device as engine_device
from engine.loop import NonFiniteLoss, train_one_epoch
from engine.schedule import SCHEDULES, lr_at
from engine.step import CUDAGraphError, CUDAGraphTrainStep, TrainStep
from evaluation import predict_clean_and_pgd, summarize
from losses import LOSSES


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group('run')
    g.add_argument('--model_dir', default='runs/default', help='run folder (logs, checkpoints)')
    g.add_argument('--resume', metavar='PATH', help='checkpoint to continue from; with '
                   '--rob_fairness_algorithm dafa, a warm-up checkpoint of a plain run '
                   '(checkpoint-epochTAU.pt) branches a DAFA run off it')
    g.add_argument('--overwrite', action='store_true', help='replace a run already in --model_dir')
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
    g.add_argument('--pgd_step_size', type=float, default=D.PGD_STEP_SIZE, help='training attack step (~2/255)')
    g.add_argument('--beta', type=float, default=D.BETA, help='TRADES weight of the robust KL')
    g.add_argument('--test_epsilon', type=float, default=D.TEST_EPSILON,
                   help='evaluation PGD radius (8/255)')
    g.add_argument('--test_pgd_num_steps', type=int, default=D.TEST_PGD_NUM_STEPS,
                   help='evaluation PGD steps')
    g.add_argument('--test_pgd_step_size', type=float, default=D.TEST_PGD_STEP_SIZE,
                   help='evaluation PGD step')

    g = p.add_argument_group('DAFA')
    g.add_argument('--rob_fairness_algorithm', choices=('dafa', 'none'), default='none',
                   help='dafa: class-wise loss weights and margins after the warm-up')
    g.add_argument('--dafa_warmup', type=int, default=D.DAFA_WARMUP,
                   help='tau: plain epochs; the class similarity is recorded during epoch tau')
    g.add_argument('--dafa_lambda', type=float, help='DAFA strength lambda (default: 1.0 for '
                   'cifar10, 1.5 for cifar100 and stl10, 1.0 otherwise)')

    g = p.add_argument_group('speed (CUDA only; evaluation is always fp32 eager)')
    g.add_argument('--amp', choices=('auto', 'bf16', 'none'), default='auto',
                   help='autocast for training passes; auto = bf16 on CUDA, none on CPU')
    g.add_argument('--cuda_graph', action=argparse.BooleanOptionalAction,
                   help='capture the training iteration in a CUDA graph (default: on CUDA)')
    g.add_argument('--channels_last', action=argparse.BooleanOptionalAction,
                   help='channels-last memory format (default: on CUDA)')
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
    if args.dafa_lambda < 0:
        parser.error(f'--dafa_lambda must be >= 0, got {args.dafa_lambda}.')
    if args.rob_fairness_algorithm == 'dafa' and args.dafa_warmup >= args.epochs:
        parser.error(f'--dafa_warmup {args.dafa_warmup} leaves no DAFA epochs out of --epochs '
                     f'{args.epochs}; use a warm-up below the number of epochs.')
    if args.resume and not os.path.isfile(args.resume):
        parser.error(f'--resume {args.resume}: no such checkpoint file.')


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def checkpoint_state(epoch, model, optimizer, args, data, class_weights, similarity) -> dict:
    return {'epoch': epoch, 'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
            'args': vars(args), 'class_names': data.class_names,
            'num_classes': data.num_classes, 'image_size': data.image_size,
            'test_set_sha256': data.test_fingerprint,
            'class_weights': class_weights.cpu(),
            'similarity': None if similarity is None else similarity.cpu(),
            'rng': checkpoint.rng_state()}


def check_resumable(ckpt: dict, args, data) -> None:
    saved = ckpt['args']
    for key in ('model', 'dataset', 'loss'):
        if saved[key] != getattr(args, key):
            raise SystemExit(f'--resume: the checkpoint was trained with --{key} {saved[key]}, '
                             f'this run asks for {getattr(args, key)}; pass --{key} {saved[key]}.')
    if ckpt['num_classes'] != data.num_classes or ckpt['image_size'] != data.image_size:
        raise SystemExit('--resume: the checkpoint was trained on data with '
                         f"{ckpt['num_classes']} classes at {ckpt['image_size']} px, this data "
                         f'has {data.num_classes} at {data.image_size} px.')
    if ckpt['epoch'] >= args.epochs:
        raise SystemExit(f"--resume: the checkpoint finished epoch {ckpt['epoch']} of "
                         f'--epochs {args.epochs}; nothing left to train.')


def dafa_weights(similarity, args, data, log) -> torch.Tensor:
    weights = dafa.class_weights(similarity, args.dafa_lambda)
    dafa.check_class_weights(weights, similarity, args.dafa_lambda, data.class_names)
    log('DAFA class weights: ' + ', '.join(
        f'{name} {w:.3f}' for name, w in zip(data.class_names, weights.tolist())))
    return weights


def main(argv=None) -> None:
    args = parse_args(argv)
    device = engine_device.setup(args.device)  # first: before any torch op starts threads
    run.prepare(args.model_dir, overwrite=args.overwrite, resume=args.resume)
    run.save_args(args.model_dir, args)
    logger = run.make_logger(args.model_dir)
    log = logger.info
    log('python ' + ' '.join(sys.argv))
    seed_everything(args.seed)

    data = load_dataset(args.dataset, args.data_dir, n_train=args.n_train, seed=args.seed,
                        num_workers=args.num_workers,
                        synthetic=synthetic_config_from_args(args))
    log(f'{args.dataset}: {len(data.y_train)} train / {len(data.y_test)} test images, '
        f'{data.num_classes} classes, {data.image_size} px, device {device}')
    train_loader = Loader(data.x_train, data.y_train, args.batch_size, device=device,
                          train=True, seed=args.seed, pad=data.crop_pad)
    test_loader = Loader(data.x_test, data.y_test, args.test_batch_size, device=device,
                         train=False)

    ckpt = checkpoint.load(args.resume, device) if args.resume else None
    if ckpt is not None:
        check_resumable(ckpt, args, data)

    model = models.create(args.model, data.num_classes, data.image_size).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                nesterov=args.nesterov, weight_decay=args.weight_decay)
    # One tensor for the whole run: the train step (and its CUDA graph) reads it by indexing.
    class_weights = torch.ones(data.num_classes, device=device)
    similarity = None
    tau = args.dafa_warmup
    use_dafa = args.rob_fairness_algorithm == 'dafa'
    start_epoch = 1

    if ckpt is not None:
        model.load_state_dict(ckpt['model'])
        optimizer.load_state_dict(ckpt['optimizer'])
        checkpoint.set_rng_state(ckpt['rng'])
        start_epoch = ckpt['epoch'] + 1
        similarity = ckpt['similarity']
        if use_dafa and ckpt['epoch'] >= tau:
            if similarity is None:
                raise SystemExit(f'--resume: the checkpoint is past epoch {tau} but holds no '
                                 'class similarity; resume from its checkpoint-epochTAU.pt.')
            # Recomputed, not loaded: identical for a DAFA checkpoint, and what branches a DAFA
            # run (any lambda) off a plain run's warm-up checkpoint.
            class_weights.copy_(dafa_weights(similarity, args, data, log))
        run.truncate_metrics(args.model_dir, ckpt['epoch'])
        log(f"resumed from {args.resume} (epoch {ckpt['epoch']})")

    step_cls = CUDAGraphTrainStep if args.cuda_graph else TrainStep
    step_kwargs = {'batch_size': args.batch_size} if args.cuda_graph else {}
    step = step_cls(model, optimizer, LOSSES[args.loss], class_weights,
                    amp_dtype=torch.bfloat16 if args.amp == 'bf16' else None,
                    channels_last=args.channels_last, epsilon=args.epsilon,
                    step_size=args.pgd_step_size, num_steps=args.pgd_num_steps, beta=args.beta,
                    **step_kwargs)

    def save(epoch, keep):
        state = checkpoint_state(epoch, model, optimizer, args, data, class_weights, similarity)
        checkpoint.save_atomic(state, run.checkpoint_path(args.model_dir))
        if keep:
            checkpoint.save_atomic(state, run.checkpoint_path(args.model_dir, epoch))

    for epoch in range(start_epoch, args.epochs + 1):
        lr = lr_at(epoch, schedule=args.lr_schedule, base_lr=args.lr, epochs=args.epochs)
        for group in optimizer.param_groups:
            group['lr'] = lr
        train_loader.set_epoch(epoch)
        recorder = dafa.SimilarityRecorder(data.num_classes, device) if epoch == tau else None
        row = {'epoch': epoch, 'lr': lr}
        row.update(train_one_epoch(step, train_loader, epoch=epoch,
                                   log_interval=args.log_interval, recorder=recorder, log=log))

        if recorder is not None:
            similarity = recorder.similarity().cpu()
            row['similarity_diag'] = similarity.diagonal().tolist()
            if use_dafa:
                try:
                    class_weights.copy_(dafa_weights(similarity, args, data, log))
                except dafa.ClassWeightError:
                    # Keep the warm-up checkpoint: a smaller lambda can branch off it.
                    save(epoch, keep=True)
                    raise
                row['class_weights'] = class_weights.tolist()

        if epoch % args.eval_freq == 0 or epoch == args.epochs:
            start = time.time()
            model.eval()
            labels, clean_pred, _, robust = predict_clean_and_pgd(
                model, test_loader, epsilon=args.test_epsilon,
                step_size=args.test_pgd_step_size, num_steps=args.test_pgd_num_steps)
            row['clean'] = summarize(clean_pred == labels, labels, data.class_names)
            row['pgd20'] = summarize(robust, labels, data.class_names)
            row['eval_time_s'] = time.time() - start
            log(f"epoch {epoch} test: clean {row['clean']['avg']:.2f} "
                f"(worst {row['clean']['worst_class']} {row['clean']['worst']:.2f}), "
                f"PGD-{args.test_pgd_num_steps} {row['pgd20']['avg']:.2f} "
                f"(worst {row['pgd20']['worst_class']} {row['pgd20']['worst']:.2f})")

        save(epoch, keep=epoch % args.save_freq == 0 or epoch == tau or epoch > args.epochs - 10)
        run.append_metrics(args.model_dir, row)
        log(f"epoch {epoch} lr {lr:g} loss {row['loss']:.4f} "
            f"(natural {row['loss_natural']:.4f}, robust {row['loss_robust']:.4f}) "
            f"{row['train_time_s']:.1f} s")


if __name__ == '__main__':
    try:
        main()
    except (DatasetUnavailable, NonFiniteLoss, ClassWeightError, FileExistsError,
            CUDAGraphError) as err:
        sys.exit(f'error: {err}')
