"""Training losses: the attack's margins, finiteness, and the train step's math."""
import argparse
import contextlib
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import models
from engine.cli import UserError
from engine.step import CUDAGraphTrainStep, TrainStep
from fairness import ClassTables, Method
from losses import LOSSES, kl_from_logits, trades_loss
from losses.attack import pgd_linf

EPS, STEP = 8 / 255, 2 / 255


class RecordingModel(nn.Module):
    """Wraps a model and keeps every input it sees in train mode (the loss's x and x_adv)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.train_inputs = inner, []

    def forward(self, x):
        if self.training:
            self.train_inputs.append(x.detach().clone())
        return self.inner(x)


def batch(n=12, c=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    return x, torch.arange(n) % c


@pytest.mark.parametrize('name', ['trades', 'pgd'])
def test_attack_stays_in_each_class_ball_and_the_image_box(name):
    torch.manual_seed(0)
    model = RecordingModel(models.create('small-cnn', 3, 16))
    x, y = batch()
    x[:4] = 1.0  # saturated pixels: the box constraint binds
    table = torch.tensor([0.5, 1.0, 1.7])
    tables = ClassTables(3, 'cpu')
    tables.set(radius=table, step=table)
    LOSSES[name](model, x, y, tables.gather(y), epsilon=EPS, step_size=STEP, num_steps=5,
                 beta=6.0)
    x_adv = model.train_inputs[0]  # TRADES: x_adv, then x
    dist = (x_adv - x).abs().flatten(1).max(1).values
    assert torch.all(dist <= table[y] * EPS + 1e-6)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    # The attack actually uses the larger margins (the bound is not trivially met).
    assert torch.all(dist[y == 2] > EPS)


def test_pgd_linf_respects_per_sample_radii():
    torch.manual_seed(0)
    model = models.create('small-cnn', 3, 16).eval()
    x, y = batch()
    eps = torch.linspace(0.0, 0.1, len(x)).view(-1, 1, 1, 1)
    x_adv = pgd_linf(model, x, x, lambda z: F.cross_entropy(z, y, reduction='sum'),
                     eps=eps, step_size=eps / 4, num_steps=6)
    dist = (x_adv - x).abs().flatten(1).max(1).values
    assert torch.all(dist <= eps.flatten() + 1e-6)
    assert dist[0] == 0


def test_kl_is_finite_for_extreme_logits():
    # Gaps > 200 make softmax probabilities underflow to exactly 0.
    p = torch.tensor([[300.0, 0.0, -300.0], [0.0, 250.0, 0.0]], requires_grad=True)
    q = torch.tensor([[-300.0, 300.0, 0.0], [250.0, 0.0, -250.0]], requires_grad=True)
    assert torch.softmax(p, 1).min() == 0
    kl = kl_from_logits(p, q)
    kl.backward()
    assert torch.isfinite(kl) and kl > 100
    assert torch.isfinite(p.grad).all() and torch.isfinite(q.grad).all()


@pytest.mark.parametrize('name', ['trades', 'pgd'])
def test_loss_and_gradients_finite_for_a_model_with_huge_logits(name):
    torch.manual_seed(0)
    inner = models.create('small-cnn', 3, 16)
    with torch.no_grad():
        inner.linear.weight.mul_(1e4)  # logit gaps in the hundreds
    x, y = batch()
    out = LOSSES[name](inner, x, y, ClassTables(3, 'cpu').gather(y), epsilon=EPS,
                       step_size=STEP, num_steps=3, beta=6.0)
    assert (out.logits_adv.max(1).values - out.logits_adv.min(1).values).max() > 200
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in inner.parameters())


def official_trades_iteration(model, optimizer, x, y, w_table, num_steps, beta=6.0):
    """A literal re-statement of one official DAFA iteration (losses.py trades_loss, then
    train.py's backward and step), written independently of losses/: the KL on probabilities
    with nn.KLDivLoss, the attack in eval mode, then model(x_adv) before model(x) in train mode."""
    criterion_kl = nn.KLDivLoss(reduction='sum')
    model.eval()
    w = w_table[y]
    x_adv = x.detach() + 0.
    x_adv += 0.001 * torch.randn(x.shape)
    logits_nat = model(x)
    for _ in range(num_steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss_kl = criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(logits_nat, dim=1))
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + (w * STEP).view(-1, 1, 1, 1) * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - (w * EPS).view(-1, 1, 1, 1)),
                          x + (w * EPS).view(-1, 1, 1, 1))
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    model.train()
    optimizer.zero_grad()
    logits = model(x_adv)
    logits_nat = model(x)
    loss_natural = (nn.CrossEntropyLoss(reduction='none')(logits_nat, y) * w).mean()
    loss_robust = criterion_kl(F.log_softmax(logits, dim=1), F.softmax(logits_nat, dim=1)) / len(x)
    loss = loss_natural + beta * loss_robust
    loss.backward()
    optimizer.step()
    return loss.detach()


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                           weight_decay=5e-4)


def momentum(optimizer):
    return [optimizer.state[p]['momentum_buffer'] for group in optimizer.param_groups
            for p in group['params']]


# float64, so that the two formulas of the KL (ours from log-probabilities, the official from
# probabilities) agree to ~1e-16 and no sign of an attack gradient flips. channels_last changes
# the convolutions' rounding, so that layout is compared with the attack switched off.
@pytest.mark.parametrize('channels_last,num_steps', [(False, 4), (True, 0)])
def test_train_step_equals_the_official_iteration_after_one_and_two_steps(channels_last,
                                                                           num_steps):
    torch.manual_seed(0)
    model = models.create('small-cnn', 3, 16).double()
    official = copy.deepcopy(model)
    x, y = batch(n=16)
    x = x.double()
    table = torch.tensor([0.8, 1.0, 1.2])
    tables = ClassTables(3, 'cpu')
    tables.set(natural=table, radius=table, step=table)  # DAFA's, as the official code applies W
    step = TrainStep(model, sgd(model), trades_loss, tables, channels_last=channels_last,
                     epsilon=EPS, step_size=STEP, num_steps=num_steps, beta=6.0)
    official_opt = sgd(official)
    for i in range(2):  # the second iteration's attack reads the first one's BatchNorm stats
        torch.manual_seed(10 + i)
        out = step(x, y)
        torch.manual_seed(10 + i)
        official_loss = official_trades_iteration(official, official_opt, x, y, table, num_steps)
        assert torch.allclose(out.loss, official_loss, rtol=1e-12, atol=0)
        # Parameters and BatchNorm running statistics and counts.
        for (name, p), p_official in zip(model.state_dict().items(),
                                         official.state_dict().values()):
            assert torch.allclose(p, p_official, rtol=0, atol=1e-12), (i, name)
        for m, m_official in zip(momentum(step.optimizer), momentum(official_opt)):
            assert torch.allclose(m, m_official, rtol=0, atol=1e-12)


def test_a_failed_cuda_graph_capture_names_the_fix(monkeypatch):
    class FailingCapture:
        def __init__(self, graph, **kwargs):
            pass

        def __enter__(self):
            raise RuntimeError('operation not permitted when stream is capturing')

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, 'CUDAGraph', lambda: None)
    monkeypatch.setattr(torch.cuda, 'Stream', lambda: None)
    monkeypatch.setattr(torch.cuda, 'graph', FailingCapture)
    model = models.create('small-cnn', 3, 16)
    step = CUDAGraphTrainStep(model, sgd(model), trades_loss, ClassTables(3, 'cpu'),
                              batch_size=4, epsilon=EPS, step_size=STEP, num_steps=1, beta=6.0)
    step.eager_steps = step.warmup  # the warm-up needs CUDA streams; go straight to capture
    x, y = batch(n=4)
    with pytest.raises(UserError, match='--no-cuda_graph'):
        step(x, y)


class SwitchingLoss(Method):
    """A loss whose Python logic switches at epoch 2, the lr unchanged: afterwards it reports
    -1 as its clean term."""
    switched = False

    def loss_version(self, epoch):
        return int(epoch >= 2)

    def batch_loss(self, terms, weights, beta):
        out = super().batch_loss(terms, weights, beta)
        return out._replace(natural=torch.tensor(-1.0)) if self.switched else out


def test_the_graph_step_captures_anew_when_the_loss_switches_at_an_epoch(monkeypatch):
    """The CUDA graph step's logic on the CPU, with a simulated graph: as a real one, its replay
    repeats the work recorded at capture, here the Python branch the loss took then; replays
    never run the Python code again. A loss that switches at an epoch without an lr change
    switches under the graph because the engine hands the step the method's loss_version."""
    method = SwitchingLoss(argparse.Namespace(), 3, 'cpu')
    model = models.create('small-cnn', 3, 16)
    step = CUDAGraphTrainStep(model, sgd(model), method.loss(trades_loss), method.tables,
                              batch_size=4, epsilon=EPS, step_size=STEP, num_steps=1, beta=6.0)

    class SimulatedGraph:
        def replay(self):
            now, method.switched = method.switched, self.recorded
            try:
                step.static_out = TrainStep.__call__(step, step.static_x, step.static_y)
            finally:
                method.switched = now

    @contextlib.contextmanager
    def capture(graph, stream=None):
        graph.recorded = method.switched
        yield

    monkeypatch.setattr(torch.cuda, 'CUDAGraph', SimulatedGraph)
    monkeypatch.setattr(torch.cuda, 'Stream', lambda: None)
    monkeypatch.setattr(torch.cuda, 'graph', capture)
    step.eager_steps = step.warmup  # the warm-up needs CUDA streams; go straight to capture
    x, y = batch(n=4)
    naturals = []
    for epoch in (1, 2, 3):  # what engine.fit does: before_epoch, then the step's loss_version
        method.switched = epoch >= 2
        step.loss_version = method.loss_version(epoch)
        naturals += [float(step(x, y).natural) for _ in range(2)]
    assert naturals[:2] != [-1.0, -1.0] and naturals[2:] == [-1.0] * 4


def test_bf16_autocast_takes_the_first_attack_step_in_fp32():
    """Under bf16 autocast the start's 0.001 offsets are below bf16's resolution; the clean pass
    and the first step run in fp32, so one step gives fp32's example exactly (without that, the
    step follows rounding: on a trained small-cnn its signs agreed with float64's on 56% of the
    pixels, docs/speed.md)."""
    from losses import trades_loss
    torch.manual_seed(0)
    base = models.create('small-cnn', 3, 16)
    x, y = batch()
    examples = {}
    for autocast in (False, True):
        model = RecordingModel(copy.deepcopy(base))  # BatchNorm statistics as they start
        torch.manual_seed(1)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast, cache_enabled=False):
            trades_loss(model, x, y, ClassTables(3, 'cpu').gather(y), epsilon=EPS,
                        step_size=STEP, num_steps=1, beta=6.0)
        examples[autocast] = model.train_inputs[0]  # x_adv, the first train-mode input
    assert not torch.equal(examples[False], x)
    assert torch.equal(examples[True], examples[False])
