"""The CUDA fast path: the captured iteration against the eager one, bf16, and train.py with the
CUDA defaults. Skipped without a CUDA device (CI has none); scripts/gpu_check.sh runs it first.
"""
import copy

import pytest
import torch

import models
import train
from engine.step import CUDAGraphTrainStep, TrainStep
from evaluation.pgd import fp32
from fairness import ClassTables
from losses import LOSSES, trades_loss
from test_train import TINY, latest, metrics

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')

BATCH, CLASSES = 32, 10
LOSS_KWARGS = dict(epsilon=8 / 255, step_size=2 / 255, num_steps=3, beta=6.0)


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                           weight_decay=5e-4)


def drive(step, optimizer, tables):
    """Eight iterations that meet every case of the graph step: two eager warm-ups, the
    capture, replays, DAFA weights changed in place, an lr change (re-capture) and a partial
    batch (eager). Returns the loss of each iteration."""
    g = torch.Generator().manual_seed(0)
    # Seeded once: the attack noise of later iterations must come from the graph's replays
    # advancing the CUDA generator exactly as the eager iterations do.
    torch.manual_seed(100)
    losses = []
    for i in range(8):
        if i == 4:
            w = torch.linspace(0.7, 1.3, CLASSES)
            tables.set(natural=w, radius=w, step=w, robust=w.flip(0))  # in place, as methods do
        if i == 5:
            for group in optimizer.param_groups:
                group['lr'] = 0.01
        n = BATCH // 2 if i == 6 else BATCH
        x = torch.rand(n, 3, 32, 32, generator=g).cuda()
        y = torch.randint(CLASSES, (n,), generator=g).cuda()
        losses.append(step(x, y).loss.detach().clone())  # a replay overwrites its output
    return torch.stack(losses)


@pytest.mark.parametrize('loss', ['trades', 'pgd'])
def test_graph_step_matches_the_eager_step_in_fp32(monkeypatch, loss):
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', False)
    monkeypatch.setattr(torch.backends.cudnn, 'deterministic', True)
    torch.manual_seed(0)
    model = models.create('resnet', CLASSES, 32).cuda()
    twin = copy.deepcopy(model)
    results = []
    for net, cls, kwargs in ((model, TrainStep, {}),
                             (twin, CUDAGraphTrainStep, {'batch_size': BATCH})):
        optimizer, tables = sgd(net), ClassTables(CLASSES, 'cuda')
        step = cls(net, optimizer, LOSSES[loss], tables, **LOSS_KWARGS, **kwargs)
        with fp32('cuda'):  # no TF32: both runs must take the same kernels
            results.append(drive(step, optimizer, tables))
    eager, graph = results
    assert torch.allclose(eager, graph, rtol=1e-4, atol=1e-5), (eager, graph)
    for (name, p), q in zip(model.state_dict().items(), twin.state_dict().values()):
        diff = (p.float() - q.float()).abs().max().item()
        assert diff <= 1e-4, f'{name}: max |eager - graph| = {diff:.3g}'


def test_bf16_channels_last_graph_step_tracks_fp32_on_the_first_iteration(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', True)  # as train.py runs it
    torch.manual_seed(0)
    model = models.create('resnet', CLASSES, 32).cuda()
    fast_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    tables = ClassTables(CLASSES, 'cuda')
    plain = TrainStep(model, sgd(model), trades_loss, tables, **LOSS_KWARGS)
    fast = CUDAGraphTrainStep(fast_model, sgd(fast_model), trades_loss, tables,
                              amp_dtype=torch.bfloat16, channels_last=True, batch_size=BATCH,
                              **LOSS_KWARGS)
    x = torch.rand(BATCH, 3, 32, 32, device='cuda')
    y = torch.randint(CLASSES, (BATCH,), device='cuda')
    reference = plain(x, y).loss.item()
    losses = [fast(x, y).loss.item() for _ in range(4)]  # warm-ups, capture + replay, replay
    # The first is the same state as the fp32 step; bf16 rounding moves it by well under 2%.
    assert losses[0] == pytest.approx(reference, rel=0.02)
    assert all(torch.isfinite(torch.tensor(losses)))


def test_train_py_with_the_cuda_defaults_trains_dafa(tmp_path):
    model_dir = str(tmp_path / 'run')
    cuda = TINY[:-1] + ['cuda']  # TINY ends with --device cpu
    train.main(cuda + ['--model_dir', model_dir, '--epochs', '3', '--dafa_warmup', '1',
                       '--rob_fairness_algorithm', 'dafa'])
    ckpt = latest(model_dir)
    assert (ckpt['args']['amp'], ckpt['args']['cuda_graph'], ckpt['args']['channels_last']) \
        == ('bf16', True, True)
    rows = metrics(model_dir)
    assert [r['epoch'] for r in rows] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r['loss'])) for r in rows)
    assert not torch.allclose(ckpt['method']['state']['class_weights'], torch.ones(4))
    assert 'pgd2' in rows[-1]  # TINY's --test_pgd_num_steps 2


@pytest.mark.parametrize('graph', [False, True])
def test_every_parameter_changes_in_a_bf16_step(monkeypatch, graph):
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', True)
    torch.manual_seed(0)
    model = models.create('resnet', CLASSES, 32).cuda().to(memory_format=torch.channels_last)
    cls, kwargs = (CUDAGraphTrainStep, {'batch_size': BATCH}) if graph else (TrainStep, {})
    step = cls(model, sgd(model), trades_loss, ClassTables(CLASSES, 'cuda'),
               amp_dtype=torch.bfloat16, channels_last=True, **LOSS_KWARGS, **kwargs)
    x = torch.rand(BATCH, 3, 32, 32, device='cuda')
    y = torch.randint(CLASSES, (BATCH,), device='cuda')
    for _ in range(3 if graph else 0):  # two eager warm-ups and the capture (+ its replay)
        step(x, y)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    step(x, y)
    unchanged = [name for name, p in model.named_parameters() if torch.equal(p, before[name])]
    assert unchanged == []


def test_a_run_learns_on_the_fast_path(tmp_path):
    model_dir = str(tmp_path / 'learn')
    cuda = TINY[:-1] + ['cuda']
    train.main(cuda + ['--model_dir', model_dir, '--epochs', '6', '--lr_schedule',
                       'bag_of_tricks', '--fast'])
    rows = metrics(model_dir)
    # On the CPU (eager fp32) this run goes from loss 1.54 to 0.70 and 25% to 81% clean.
    assert rows[-1]['loss'] < 0.7 * rows[0]['loss']
    assert rows[-1]['clean']['avg'] >= 50


def test_resume_and_branching_on_cuda(tmp_path):
    cuda = TINY[:-1] + ['cuda']
    args = ['--epochs', '3', '--dafa_warmup', '1', '--rob_fairness_algorithm', 'dafa']
    straight = str(tmp_path / 'straight')
    train.main(cuda + ['--model_dir', straight, *args])
    # The checkpoint's RNG states must come back as CPU ByteTensors whatever the device.
    train.main(cuda + ['--model_dir', straight, *args,
                       '--resume', f'{straight}/checkpoint-epoch2.pt'])
    assert [r['epoch'] for r in metrics(straight)] == [1, 2, 3]
    branched = str(tmp_path / 'branched')
    train.main(cuda + ['--model_dir', branched, *args,
                       '--resume', f'{straight}/checkpoint-epoch1.pt'])
    assert torch.equal(latest(branched)['method']['state']['class_weights'],
                       latest(straight)['method']['state']['class_weights'])
