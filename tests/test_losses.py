"""Training losses: the attack's margins, finiteness, and the train step's math."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import models
from engine.step import CUDAGraphError, CUDAGraphTrainStep, TrainStep
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
    LOSSES[name](model, x, y, table[y], epsilon=EPS, step_size=STEP, num_steps=5, beta=6.0)
    x_adv = model.train_inputs[-1]
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
    out = LOSSES[name](inner, x, y, torch.ones(len(y)), epsilon=EPS, step_size=STEP,
                       num_steps=3, beta=6.0)
    assert (out.logits_adv.max(1).values - out.logits_adv.min(1).values).max() > 200
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in inner.parameters())


def reference_trades_iteration(model, optimizer, x, y, w_table, num_steps):
    """A plain, official-style TRADES+DAFA iteration, written independently of losses/."""
    w = w_table[y]
    model.eval()
    with torch.no_grad():
        logp_clean = F.log_softmax(model(x), 1)
    x_adv = x + 0.001 * torch.randn_like(x)
    for _ in range(num_steps):
        x_adv.requires_grad_(True)
        # Same KL formula as the loss: the sign of a near-zero gradient would otherwise flip.
        kl = F.kl_div(F.log_softmax(model(x_adv), 1), logp_clean, reduction='sum',
                      log_target=True)
        grad, = torch.autograd.grad(kl, x_adv)
        x_adv = x_adv.detach() + (w * STEP).view(-1, 1, 1, 1) * grad.sign()
        lo, hi = x - (w * EPS).view(-1, 1, 1, 1), x + (w * EPS).view(-1, 1, 1, 1)
        x_adv = torch.clamp(torch.min(torch.max(x_adv, lo), hi), 0, 1)
    model.train()
    logits = model(x)
    natural = (w * F.cross_entropy(logits, y, reduction='none')).mean()
    robust = F.kl_div(F.log_softmax(model(x_adv), 1), F.log_softmax(logits, 1),
                      reduction='sum', log_target=True) / len(x)
    loss = natural + 6.0 * robust
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                           weight_decay=5e-4)


# channels_last changes the convolutions' rounding; a sign-gradient attack turns a 1e-8 change
# into a different x_adv, so that layout is compared with the attack switched off.
@pytest.mark.parametrize('channels_last,num_steps', [(False, 4), (True, 0)])
def test_fast_train_step_matches_a_plain_reference_iteration(channels_last, num_steps):
    torch.manual_seed(0)
    model = models.create('small-cnn', 3, 16)
    ref_model = copy.deepcopy(model)
    x, y = batch(n=16)
    table = torch.tensor([0.8, 1.0, 1.2])
    step = TrainStep(model, sgd(model), trades_loss, table, channels_last=channels_last,
                     epsilon=EPS, step_size=STEP, num_steps=num_steps, beta=6.0)
    ref_opt = sgd(ref_model)
    for i in range(2):  # the second iteration exercises the momentum buffers
        torch.manual_seed(10 + i)
        out = step(x, y)
        torch.manual_seed(10 + i)
        ref_loss = reference_trades_iteration(ref_model, ref_opt, x, y, table, num_steps)
        assert torch.allclose(out.loss, ref_loss, atol=1e-5)
    for (name, p), p_ref in zip(model.state_dict().items(), ref_model.state_dict().values()):
        assert torch.allclose(p.float(), p_ref.float(), atol=1e-5), name


def test_a_failed_cuda_graph_capture_names_the_fix(monkeypatch):
    class FailingCapture:
        def __init__(self, graph):
            pass

        def __enter__(self):
            raise RuntimeError('operation not permitted when stream is capturing')

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, 'CUDAGraph', lambda: None)
    monkeypatch.setattr(torch.cuda, 'graph', FailingCapture)
    model = models.create('small-cnn', 3, 16)
    step = CUDAGraphTrainStep(model, sgd(model), trades_loss, torch.ones(3), batch_size=4,
                              epsilon=EPS, step_size=STEP, num_steps=1, beta=6.0)
    step.eager_steps = step.warmup  # the warm-up needs CUDA streams; go straight to capture
    x, y = batch(n=4)
    with pytest.raises(CUDAGraphError, match='--no-cuda_graph'):
        step(x, y)
