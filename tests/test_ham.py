"""HAM (fairness/ham.py) against literal re-statements of its official code, yyl-github-1896/HAM
at e3ee5ff: the keep mask and the kept examples of attack_generator.py's GA_PGD_early2, the loss
of GAIRAT_wrong_early_time.py on the kept examples alone, its learning-rate schedule; in
float64."""
import argparse
import copy

import pytest
import torch
import torch.nn as nn

import models
from engine import start
from engine.cli import UserError
from engine.schedule import lr_at
from fairness.ham import mine_hard_examples
from losses import SampleWeights, weighted_loss
from losses.pgd import kept_loss

EPS, STEP = 0.031, 0.007  # GAIRAT_wrong_early_time.py l. 34-36


def official_ga_pgd_early2(model, data, target, epsilon, step_size, num_steps, classify_step,
                           x_start):
    """attack_generator.py l. 260-352, category 'Madry', loss_fn 'cent', with its random start
    given (l. 286-287 draws it with np.random.uniform) and its input normalisation left out (our
    model normalises its own inputs)."""
    model.eval()
    x_adv = torch.clamp(x_start, 0.0, 1.0)
    ind = 0
    w_logits = None
    for k in range(num_steps):
        x_adv.requires_grad_()
        output = model(x_adv)
        model.zero_grad()
        with torch.enable_grad():
            loss_adv = nn.CrossEntropyLoss(reduction="mean")(output, target)
        loss_adv.backward()
        eta = step_size * x_adv.grad.sign()
        x_adv = x_adv.detach() + eta
        x_adv = torch.min(torch.max(x_adv, data - epsilon), data + epsilon)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
        ind += 1
        logits_adv = model(x_adv).detach()
        if ind == classify_step:
            pred_adv = logits_adv.max(1, keepdim=True)[1]
            correct_early = pred_adv.eq(target.view_as(pred_adv)).float().squeeze(dim=1)
            w_logits = torch.zeros(len(target))
            w_logits[torch.where(correct_early == 0)] = 1
            if w_logits.sum() == 0:
                return x_adv, w_logits
            x_adv = x_adv[torch.where(correct_early == 0)].detach()
            target = target[torch.where(correct_early == 0)].detach()
            data = data[torch.where(correct_early == 0)].detach()
    return x_adv.detach(), w_logits


def setup(seed=0, n=24):
    torch.manual_seed(seed)
    model = models.create('small-cnn', 4, 16).double()
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 16, 16, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 4, (n,), generator=generator)
    start = x + (torch.rand(x.shape, generator=generator, dtype=torch.float64) * 2 - 1) * EPS
    return model, x, y, start


def test_the_keep_mask_and_the_kept_examples_are_the_officials():
    for classify_step in (1, 3, 10):
        model, x, y, start = setup()
        official_x, official_w = official_ga_pgd_early2(model, x, y, EPS, STEP, 10,
                                                        classify_step, start.clone())
        x_adv, keep = mine_hard_examples(model, x, y, start.clamp(0, 1), eps=EPS,
                                         step_size=STEP, num_steps=10,
                                         classify_step=classify_step)
        assert torch.equal(keep, official_w.bool())
        assert 0 < int(keep.sum()) < len(y)  # both kinds present: the test can tell them apart
        assert torch.allclose(x_adv[keep], official_x, rtol=0, atol=1e-12)


def test_the_loss_trains_on_the_kept_examples_alone():
    """GAIRAT_wrong_early_time.py l. 201-215, 262-280: train mode, logit = model(x_adv) of the
    kept examples, CE against their targets times ones, averaged: value, gradients and
    BatchNorm's running statistics."""
    model, x, y, start = setup(1)
    keep = torch.zeros(len(y), dtype=torch.bool)
    keep[::3] = True
    official = copy.deepcopy(model)
    official.train()
    logit = official(start[keep])
    target = y[keep]
    loss = nn.CrossEntropyLoss(reduction='none')(logit, target)
    loss = loss.mul(torch.ones(len(target), dtype=torch.float64)).mean()
    loss.backward()
    ones = torch.ones(len(y), dtype=torch.float64)
    ours = kept_loss(model, start, y, SampleWeights(ones, ones, ones, ones), keep, 0.0,
                     weighted_loss)
    ours.loss.backward()
    assert torch.allclose(ours.loss, loss, rtol=1e-12, atol=0)
    for (name, p), p_official in zip(model.named_parameters(), official.parameters()):
        assert torch.allclose(p.grad, p_official.grad, rtol=1e-9, atol=1e-12), name
    assert all(torch.allclose(a, b) for a, b in zip(model.buffers(), official.buffers()))
    # Training on the whole batch instead moves BatchNorm's statistics elsewhere.
    whole = copy.deepcopy(official)
    whole(start)
    assert not all(torch.allclose(a, b) for a, b in zip(whole.buffers(), official.buffers()))
    assert ours.logits_adv.shape == (len(y), 4) and bool((ours.logits_adv[~keep] == 0).all())


def test_a_batch_with_fewer_than_two_kept_is_skipped():
    model, x, y, start = setup(2)
    ones = torch.ones(len(y), dtype=torch.float64)
    before = copy.deepcopy(model.state_dict())
    for kept in (0, 1):
        keep = torch.zeros(len(y), dtype=torch.bool)
        keep[:kept] = True
        out = kept_loss(model, start, y, SampleWeights(ones, ones, ones, ones), keep, 0.0,
                        weighted_loss)
        out.loss.backward()
        assert float(out.loss.detach()) == 0 and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_the_official_schedule():
    """GAIRAT_wrong_early_time.py l. 93-104 (120 epochs, lr_schedule(epoch + 1))."""
    def official(t, epochs=120, lr_max=0.1):
        if t / epochs < 0.5:
            return lr_max
        elif t / epochs < 0.75:
            return lr_max / 10.
        elif t / epochs < (11 / 12):
            return lr_max / 100.
        return lr_max / 200.
    for epoch in range(1, 121):
        assert abs(lr_at(epoch, schedule='ham', base_lr=0.1, epochs=120) - official(epoch)) \
            < 1e-15, epoch


def test_ham_runs_in_one_process_only():
    """A batch one process skips would stall DistributedDataParallel's gradient reduction."""
    args = argparse.Namespace(rob_fairness_algorithm='ham', batch_size=32, cuda_graph=False,
                              sync_bn=False)
    dctx = argparse.Namespace(enabled=True, world=2, local_rank=0)
    with pytest.raises(UserError, match='run it in one process'):
        start.check_distributed(args, torch.device('cpu'), dctx)
