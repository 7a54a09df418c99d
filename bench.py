"""Benchmark of the adversarial training iteration: ms per iteration and s per epoch.

    python bench.py                      # CUDA: ResNet-18, batch 128, TRADES K=10, 32 px
    python bench.py --device cpu         # a tiny version (small-cnn) that the tests run
    python bench.py --device cpu --batch_size 128 --threads 1 2   # the CPU fast path's ratios

Times `--iters` steady-state iterations (after `--warmup` ones, which include any CUDA-graph
capture) of each configuration on random CIFAR-shaped data, synchronising only around the timed
block. s/epoch = ms/iter x ceil(n_train / batch_size): the training step only, without the
data loader and the test evaluation (see BENCHMARKS.md for end-to-end epochs). The last column is
each row's time relative to the first row's.
"""
import argparse
import json
import math
import time

import torch

import defaults as D
import models
from engine import device as engine_device
from engine.step import CUDAGraphTrainStep, TrainStep
import fairness
from fairness import METHODS
from losses import LOSSES

# name -> (autocast dtype, channels_last, CUDA graph, TF32 on CUDA). 'eager-fp32' is train.py's
# default, the paper's arithmetic (fp32, no TF32); 'graph-bf16' is train.py --fast. Until
# 2026-12-06 'eager-tf32' was also the CPU's name for plain fp32 (BENCHMARKS.md's older rows).
CONFIGS = {
    'eager-fp32': (None, False, False, False),
    'eager-fp32-cl': (None, True, False, False),  # fp32, channels-last
    'eager-tf32': (None, False, False, True),
    'eager-bf16': (torch.bfloat16, True, False, True),
    'graph-tf32': (None, False, True, True),
    'graph-bf16': (torch.bfloat16, True, True, True),
}
CUDA_ONLY = ('eager-tf32', 'graph-tf32', 'graph-bf16')  # a graph, or TF32 as the only change


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--device', choices=('auto', 'cuda', 'cpu'), default='auto',
                   help='auto = cuda when visible')
    p.add_argument('--configs', nargs='+', choices=tuple(CONFIGS),
                   help='default: all on CUDA, those without a graph or TF32 on CPU')
    p.add_argument('--model', choices=tuple(models.MODELS), help='default: resnet on CUDA, '
                   'small-cnn on CPU')
    p.add_argument('--loss', choices=tuple(LOSSES), default='trades')
    p.add_argument('--method', choices=tuple(METHODS), default='none',
                   help="a robust-fairness method's training step at its initial tables (e.g. "
                        "bat: its own loss, two early-stopped attacks)")
    p.add_argument('--batch_size', type=int, help='default: 128 on CUDA, 32 on CPU')
    p.add_argument('--image_size', type=int, default=32, help='pixels (CIFAR 32, STL-10 64)')
    p.add_argument('--num_classes', type=int, default=10)
    p.add_argument('--pgd_num_steps', type=int, default=D.PGD_NUM_STEPS)
    p.add_argument('--iters', type=int, help='timed iterations (default: 50 CUDA, 3 CPU)')
    p.add_argument('--threads', type=int, nargs='+', help='CPU: time every configuration at each '
                   "of these thread counts (default: torch's, one per core)")
    p.add_argument('--warmup', type=int, default=5, help='untimed iterations first (>= 3 '
                   'for a graph: 2 eager + the capture)')
    p.add_argument('--n_train', type=int, default=50000, help='training-set size for s/epoch')
    p.add_argument('--json', help='also write the results to this file')
    p.add_argument('--profile', metavar='FILE', help='then profile 3 more iterations of each '
                   'configuration and write its top kernels by device time to FILE')
    args = p.parse_args(argv)
    try:
        args.device = engine_device.resolve(args.device)
    except ValueError as err:
        p.error(str(err))
    on_cuda = args.device == 'cuda'
    args.configs = args.configs or [c for c in CONFIGS if on_cuda or c not in CUDA_ONLY]
    if not on_cuda and set(args.configs) & set(CUDA_ONLY):
        p.error(f"{', '.join(c for c in args.configs if c in CUDA_ONLY)} need --device cuda.")
    if args.threads and (on_cuda or min(args.threads) < 1):
        p.error('--threads takes CPU thread counts >= 1, with --device cpu.')
    args.model = args.model or ('resnet' if on_cuda else 'small-cnn')
    args.batch_size = args.batch_size or (D.BATCH_SIZE if on_cuda else 32)
    args.iters = args.iters or (50 if on_cuda else 3)
    return args


def cpu_model() -> str:
    """The CPU's model name and the instruction sets that matter to bf16 (Linux's cpuinfo)."""
    try:
        with open('/proc/cpuinfo') as f:
            info = f.read()
    except OSError:
        return 'unknown model'
    name = next((line.split(':', 1)[1].strip() for line in info.splitlines()
                 if line.startswith('model name')), 'unknown model')
    flags = set(next((line.split(':', 1)[1].split() for line in info.splitlines()
                      if line.startswith('flags')), []))
    wanted = ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16')
    return f"{name}; {' '.join(f for f in wanted if f in flags) or 'none of avx2/avx512/amx'}"


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def _method(args, device):
    """args.method with its flags at their defaults (its tables as they start)."""
    parser = argparse.ArgumentParser()
    fairness.add_arguments(parser)
    method_args = parser.parse_args([])
    method_args.__dict__.update(dataset='cifar10', epochs=D.EPOCHS, loss=args.loss, beta=D.BETA)
    METHODS[args.method].check_arguments(method_args)
    return METHODS[args.method](method_args, args.num_classes, device)


def build(name, args, device):
    """A fresh model's training step for one configuration, and one batch of CIFAR-shaped data."""
    amp_dtype, channels_last, graph, tf32 = CONFIGS[name]
    if device.type == 'cuda':
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.manual_seed(0)
    model = models.create(args.model, args.num_classes, args.image_size).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=D.LR, momentum=D.MOMENTUM, nesterov=True,
                                weight_decay=D.WEIGHT_DECAY)
    method = _method(args, device)
    kwargs = dict(amp_dtype=amp_dtype, channels_last=channels_last, epsilon=D.EPSILON,
                  step_size=D.PGD_STEP_SIZE, num_steps=args.pgd_num_steps, beta=D.BETA)
    if graph:
        step = CUDAGraphTrainStep(model, optimizer, method.loss(LOSSES[args.loss]), method.tables,
                                  batch_size=args.batch_size, **kwargs)
    else:
        step = TrainStep(model, optimizer, method.loss(LOSSES[args.loss]), method.tables,
                         **kwargs)
    x = torch.rand(args.batch_size, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(args.num_classes, (args.batch_size,), device=device)
    return step, x, y


def time_steps(name, step, x, y, args, device) -> float:
    """Mean ms per training iteration over args.iters, after args.warmup untimed ones."""
    for _ in range(args.warmup):
        step(x, y)
    sync(device)
    start = time.perf_counter()
    for _ in range(args.iters):
        out = step(x, y)
    sync(device)
    elapsed = time.perf_counter() - start
    if not torch.isfinite(out.loss):
        raise RuntimeError(f'{name}: non-finite loss in the benchmark.')
    return 1000 * elapsed / args.iters


def profile_steps(step, x, y, device, iters=3):
    """(table of the top kernels by self device time, device-busy ms per iteration).

    Busy time close to an iteration's wall time means the GPU, not the host, sets the pace; on
    the CPU the busy time is the ops' own time.
    """
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == 'cuda':
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    key = 'self_device_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(iters):
            step(x, y)
        sync(device)
    events = prof.key_averages()
    if device.type == 'cuda':  # kernel rows only: an op's row would count its kernels again
        busy_us = sum(e.self_device_time_total for e in events
                      if e.device_type != torch.autograd.DeviceType.CPU)
    else:
        busy_us = sum(e.self_cpu_time_total for e in events)
    busy_ms = busy_us / 1000 / iters
    return events.table(sort_by=key, row_limit=25), busy_ms


def main(argv=None):
    args = parse_args(argv)
    device = engine_device.setup(args.device)  # first: before any torch op starts threads
    if device.type == 'cuda':
        hardware = torch.cuda.get_device_name()
    else:
        hardware = f'CPU ({cpu_model()}, {torch.get_num_threads()} threads by default)'
    per_epoch = math.ceil(args.n_train / args.batch_size)
    method = '' if args.method == 'none' else f' + {args.method}'
    print(f'{hardware}, torch {torch.__version__}: {args.model}, {args.loss}{method} '
          f'K={args.pgd_num_steps}, batch {args.batch_size}, {args.image_size} px, '
          f'{per_epoch} iterations per epoch')
    print(f"{'config':<14} {'threads':>7} {'ms/iter':>9} {'s/epoch':>9} {'ratio':>6}")
    results = []
    tables = []
    for threads in args.threads or [None]:
        if threads:
            torch.set_num_threads(threads)
        for name in args.configs:
            step, x, y = build(name, args, device)
            ms = time_steps(name, step, x, y, args, device)
            row = {'config': name, 'threads': threads or torch.get_num_threads(),
                   'ms_per_iter': ms, 's_per_epoch': ms * per_epoch / 1000,
                   'ratio_to_first': ms / (results[0]['ms_per_iter'] if results else ms)}
            if args.profile:
                table, row['busy_ms_per_iter'] = profile_steps(step, x, y, device)
                tables.append(f'== {name}: {ms:.2f} ms per iteration, device busy '
                              f"{row['busy_ms_per_iter']:.2f} ms\n{table}")
            results.append(row)
            print(f"{name:<14} {row['threads']:>7} {ms:9.2f} {row['s_per_epoch']:9.2f} "
                  f"{row['ratio_to_first']:6.2f}", flush=True)
    if args.profile:
        with open(args.profile, 'w') as f:
            f.write('\n\n'.join(tables) + '\n')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'hardware': hardware, 'torch': torch.__version__, 'args': vars(args),
                       'results': results}, f, indent=2)
    return results


if __name__ == '__main__':
    main()
