"""Several processes (torchrun, gloo on the CPU): the sharded loader, summed per-class
statistics, a DAFA run of 2 processes, and resuming across process counts."""
import json
import os
import re
import subprocess
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from data import Loader
from engine import checkpoint, distributed
from engine.recorders import SimilarityRecorder
from test_train import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sharded_loader_splits_every_global_batch_and_sees_each_sample_once():
    x = torch.arange(23 * 3 * 4 * 4, dtype=torch.int64).remainder(256).to(torch.uint8)
    x = x.view(23, 3, 4, 4)
    x[:, 0, 0, 0] = torch.arange(23, dtype=torch.uint8)  # the sample's index, in a pixel
    y = torch.arange(23)
    whole = Loader(x, y, 8, device='cpu', train=True, seed=3, pad=0)
    shards = [Loader(x, y, 8, device='cpu', train=True, seed=3, pad=0, shard=(r, 2))
              for r in range(2)]
    for loader in [whole] + shards:
        loader.set_epoch(5)
    assert len(shards[0]) == len(shards[1]) == len(whole) == 3  # 8 + 8 + 7
    seen = []
    for (xa, ya), (x0, y0), (x1, y1) in zip(whole, *shards):
        # Each process gets its contiguous half of the global batch, augmented the same way.
        assert torch.equal(torch.cat([y0, y1]), ya) and torch.equal(torch.cat([x0, x1]), xa)
        seen += torch.cat([y0, y1]).tolist()
    assert sorted(seen) == list(range(23))
    tiny = [Loader(x[:17], y[:17], 8, device='cpu', train=True, pad=0, shard=(r, 2))
            for r in range(2)]
    assert len(tiny[0]) == 2  # a last batch of 1 image cannot give each process one: left out


def _join(rank, store):
    """Join a 2-process gloo group through a file in the test's own folder: no port to share
    with another test or a process a previous one left behind."""
    os.environ.update(RANK=str(rank), WORLD_SIZE='2', LOCAL_RANK=str(rank))
    dist.init_process_group('gloo', init_method=f'file://{store}', rank=rank, world_size=2)
    return distributed.setup('cpu')


def _similarity_worker(rank, path, logits, labels):
    ctx = _join(rank, f'{path}.store')
    recorder = SimilarityRecorder(4, 'cpu')
    half = torch.tensor_split(torch.arange(len(labels)), 2)[rank]
    recorder.update(logits[half], labels[half])
    distributed.sum_(ctx, recorder.sums, recorder.counts)
    if rank == 0:
        torch.save(recorder.result(), path)
    distributed.shutdown(ctx)


def test_summed_similarity_equals_one_process_over_the_same_samples(tmp_path):
    g = torch.Generator().manual_seed(0)
    logits, labels = 3 * torch.randn(50, 4, generator=g), torch.arange(50) % 4
    path = str(tmp_path / 's.pt')
    mp.spawn(_similarity_worker, args=(path, logits, labels), nprocs=2)
    single = SimilarityRecorder(4, 'cpu')
    single.update(logits, labels)
    assert torch.allclose(torch.load(path), single.result(), rtol=0, atol=1e-12)


def torchrun(*args, nproc=2):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone',
                           '--nproc_per_node', str(nproc), 'tests/torchrun_train.py', *TINY,
                           *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


def rows(model_dir):
    with open(os.path.join(model_dir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f]


def test_two_processes_train_dafa_write_once_and_resume_in_one_and_back(tmp_path):
    model_dir = str(tmp_path / 'ddp')
    # A constant schedule: a resume may extend --epochs only where no lr depends on it.
    args = ['--epochs', '3', '--dafa_warmup', '1', '--rob_fairness_algorithm', 'dafa',
            '--lr_schedule', 'constant']
    proc = torchrun('--model_dir', model_dir, '--epochs', '2', *args[2:])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    weights = re.findall(r'\[rank (\d)\] DAFA class weights: (.*)', proc.stdout)
    assert sorted(rank for rank, _ in weights) == ['0', '1']
    assert weights[0][1] == weights[1][1]  # every process computed the same weights
    assert [r['epoch'] for r in rows(model_dir)] == [1, 2]
    assert sorted(os.listdir(model_dir)) == ['args.json', 'checkpoint-epoch1.pt',
                                             'checkpoint-epoch2.pt', 'checkpoint-latest.pt',
                                             'metrics.jsonl', 'recipe.json', 'training.log']
    ckpt = checkpoint.load(os.path.join(model_dir, 'checkpoint-latest.pt'))
    assert not torch.allclose(ckpt['method']['state']['class_weights'], torch.ones(4))
    assert not any(k.startswith('module.') for k in ckpt['model'])  # the unwrapped model
    # 2 processes -> 1 process.
    import train
    train.main(TINY + ['--model_dir', model_dir, *args,
                       '--resume', os.path.join(model_dir, 'checkpoint-latest.pt')])
    assert [r['epoch'] for r in rows(model_dir)] == [1, 2, 3]
    # 1 process -> 2 processes.
    single = str(tmp_path / 'single')
    train.main(TINY + ['--model_dir', single, '--epochs', '1', '--lr_schedule', 'constant'])
    proc = torchrun('--model_dir', single, '--epochs', '2', '--lr_schedule', 'constant',
                    '--resume', os.path.join(single, 'checkpoint-latest.pt'))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [r['epoch'] for r in rows(single)] == [1, 2]


def test_a_global_batch_that_does_not_split_stops_every_process(tmp_path):
    proc = torchrun('--model_dir', str(tmp_path / 'x'), '--batch_size', '33')
    assert proc.returncode != 0
    assert proc.stderr.count('error: --batch_size 33 (the global batch) does not split over 2 '
                             'processes') == 2
    assert not (tmp_path / 'x').exists()


def test_launchers_start_torchrun_with_nproc():
    env = dict(os.environ, NPROC='2', PYTHON=sys.executable, OMP_NUM_THREADS='1')
    proc = subprocess.run(['bash', 'scripts/trades.sh', '--help'], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count('usage: train.py') == 2  # both processes parsed the arguments


def bn_free_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 4))


def _step_worker(rank, path, x, y):
    from torch.nn.parallel import DistributedDataParallel
    from engine.step import TrainStep
    from fairness import ClassTables
    from losses import trades_loss
    ctx = _join(rank, f'{path}.store')
    model = bn_free_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = TrainStep(DistributedDataParallel(model), optimizer, trades_loss,
                     ClassTables(4, 'cpu'), epsilon=0.03, step_size=0.01, num_steps=0, beta=6.0)
    half = torch.tensor_split(torch.arange(len(y)), 2)[rank]
    for _ in range(2):
        step(x[half], y[half])
    if rank == 0:
        torch.save(model.state_dict(), path)
    del step  # the wrapper holds the group: shutdown frees it once nothing else does
    distributed.shutdown(ctx)


def test_two_processes_take_the_one_process_step_on_the_global_batch(tmp_path):
    # Without BatchNorm the per-process losses average to the global batch's: DDP's averaged
    # gradients must give the one-process step. With no attack step, the only difference is the
    # 0.001-scale start noise each process draws for its half.
    from engine.step import TrainStep
    from fairness import ClassTables
    from losses import trades_loss
    x = torch.rand(32, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.arange(32) % 4
    path = str(tmp_path / 'ddp.pt')
    mp.spawn(_step_worker, args=(path, x, y), nprocs=2)
    model = bn_free_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = TrainStep(model, optimizer, trades_loss, ClassTables(4, 'cpu'), epsilon=0.03,
                     step_size=0.01, num_steps=0, beta=6.0)
    for _ in range(2):
        step(x, y)
    start = bn_free_model().state_dict()
    for key, value in torch.load(path).items():
        assert not torch.allclose(value, start[key])  # the step moved the weights
        assert torch.allclose(value, model.state_dict()[key], rtol=0, atol=1e-5), key


def _method_worker(rank, path):
    import argparse
    import fairness
    from fairness import METHODS
    ctx = _join(rank, f'{path}.store')
    parser = argparse.ArgumentParser()
    fairness.add_arguments(parser)
    args = parser.parse_args([])
    args.__dict__.update(dataset='cifar10', epochs=110, loss='trades', beta=6.0)
    METHODS['cfa'].check_arguments(args)
    cfa = METHODS['cfa'](args, 3, 'cpu')
    # Each rank's own validation numbers: CFA's averaging threshold passes on rank 1 only.
    cfa.train_robust = torch.tensor([0.2, 0.5, 0.35], dtype=torch.float64) + rank
    cfa.val_robust = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64) + rank
    cfa.fawa = {'w': torch.full((2,), float(rank))} if rank == 1 else None
    cfa._apply(13)  # as after_epoch(12) leaves its tables
    distributed.broadcast_method(ctx, cfa, epoch=12)
    torch.save({'state': cfa.state_dict(), 'radius': cfa.tables.radius.clone()},
               f'{path}.{rank}')
    distributed.shutdown(ctx)


def test_every_rank_ends_an_epoch_with_rank_0s_method_state(tmp_path):
    path = str(tmp_path / 'method')
    mp.spawn(_method_worker, args=(path,), nprocs=2)
    ranks = [torch.load(f'{path}.{rank}', weights_only=True) for rank in (0, 1)]
    for key in ('train_robust', 'val_robust'):
        assert torch.equal(ranks[1]['state'][key], ranks[0]['state'][key]), key
    assert ranks[0]['state']['fawa'] is None and ranks[1]['state']['fawa'] is None
    assert torch.equal(ranks[1]['radius'], ranks[0]['radius'])  # the tables follow the state
