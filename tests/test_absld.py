"""ABSLD (fairness/absld.py) against literal re-statements of its official code,
zhaoshiji123/ABSLD at 7407c3a (resnet18_absld_cifar10.py, absld_loss.py), in float64: the
teacher targets of both variants, one batch's loss with its per-class records, the temperatures'
update with the drops of its rate; then the teacher as the engine loads it."""
import argparse
import copy
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import models
from engine.cli import UserError
from fairness import ABSLD
from fairness.absld import absld_loss, teacher_targets, updated_temperatures
from losses import SampleWeights
from test_train import TINY, latest, run
import train

EPS, STEP = 8 / 255, 2 / 255


def official_targets(teacher_logits, labels, temp_adv, temp_nat):
    """resnet18_absld_cifar10.py l. 95-100: two .detach() views of one storage, each row
    divided in place."""
    teacher_logits_new_adv = teacher_logits.detach()
    teacher_logits_new_nat = teacher_logits.detach()
    for sample_index in range(labels.shape[0]):
        teacher_logits_new_adv[sample_index] = \
            teacher_logits_new_adv[sample_index] / temp_adv[labels[sample_index]]
        teacher_logits_new_nat[sample_index] = \
            teacher_logits_new_nat[sample_index] / temp_nat[labels[sample_index]]
    return teacher_logits_new_adv, teacher_logits_new_nat


def temperatures_and_labels(seed=0):
    generator = torch.Generator().manual_seed(seed)
    temps = 0.5 + 4.5 * torch.rand(2, 10, generator=generator, dtype=torch.float64)
    return temps, torch.randint(0, 10, (30,), generator=generator)


def test_official_targets_share_storage_and_the_paper_keeps_them_apart():
    temps, y = temperatures_and_labels()
    z = torch.randn(30, 10, dtype=torch.float64)
    official = official_targets(z.clone(), y, temps[0], temps[1])
    ours = teacher_targets(z, y, temps, shared=True)
    for a, b in zip(ours, official):
        assert torch.allclose(a, b, rtol=1e-14, atol=0)
    paper_adv, paper_nat = teacher_targets(z, y, temps, shared=False)
    assert torch.allclose(paper_adv, z / temps[0][y, None])
    assert torch.allclose(paper_nat, z / temps[1][y, None])
    assert not torch.allclose(paper_adv, official[0])


def official_batch(student, teacher, x, y, temp_adv, temp_nat):
    """resnet18_absld_cifar10.py l. 89-125 with absld_loss.py l. 26-59 (on the CPU: randn
    where the official code draws on CUDA), float64; returns (loss, per-class adv and nat CE
    sums of the batch)."""
    def kl_loss(a, b):
        return -a * b + torch.log(b + 1e-5) * b
    ce_loss = torch.nn.CrossEntropyLoss(reduction='none')
    student.train()
    with torch.no_grad():
        teacher_logits_new_adv, teacher_logits_new_nat = official_targets(
            teacher(x).detach(), y, temp_adv, temp_nat)
    # absld_inner_loss
    criterion_kl = nn.KLDivLoss(reduction='none')
    student.eval()
    x_adv = x.detach() + 0.001 * torch.randn(x.shape).detach()
    for _ in range(10):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss_kl = criterion_kl(F.log_softmax(student(x_adv), dim=1),
                                   F.softmax(teacher_logits_new_adv, dim=1))
            loss_kl = torch.sum(loss_kl)
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + STEP * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - EPS), x + EPS)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    student.train()
    adv_logits = student(torch.clamp(x_adv, 0.0, 1.0))
    nat_logits = student(x)
    sums = torch.zeros(2, 10, dtype=torch.float64)
    with torch.no_grad():
        record_adv, record_nat = ce_loss(adv_logits, y), ce_loss(nat_logits, y)
        for i in range(len(y)):
            sums[0, y[i]] += record_adv[i]
            sums[1, y[i]] += record_nat[i]
    kl_1 = torch.mean(kl_loss(torch.log(F.softmax(adv_logits, dim=1)),
                              F.softmax(teacher_logits_new_adv.detach(), dim=1)))
    kl_2 = torch.mean(kl_loss(torch.log(F.softmax(nat_logits, dim=1)),
                              F.softmax(teacher_logits_new_nat.detach(), dim=1)))
    return 5.0 / 6.0 * kl_1 + 1.0 / 6.0 * kl_2, sums


def test_one_batch_is_the_official_one():
    """Loss, gradients, BatchNorm statistics and the per-class records (official targets)."""
    torch.manual_seed(0)
    student = models.create('small-cnn', 10, 16).double()
    teacher = models.create('small-cnn', 10, 16).double().eval()
    official = copy.deepcopy(student)
    temps, y = temperatures_and_labels(1)
    x = torch.rand(30, 3, 16, 16, dtype=torch.float64)
    ones = torch.ones(30, dtype=torch.float64)
    sums = torch.zeros(2, 10, dtype=torch.float64)
    torch.manual_seed(7)
    ours = absld_loss(student, x, y, SampleWeights(ones, ones, ones, ones), epsilon=EPS,
                      step_size=STEP, num_steps=10, beta=6.0, teacher=teacher,
                      temperatures=temps, loss_sums=sums, shared=True)
    torch.manual_seed(7)
    theirs, official_sums = official_batch(official, teacher, x, y, temps[0], temps[1])
    assert torch.allclose(ours.loss, theirs, rtol=1e-10, atol=0)
    assert torch.allclose(sums, official_sums, rtol=1e-12, atol=0)
    ours.loss.backward()
    theirs.backward()
    for (name, p), q in zip(student.named_parameters(), official.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-8, atol=1e-12), name
    assert all(torch.allclose(a, b) for a, b in zip(student.buffers(), official.buffers()))


def official_update(temp, total_loss, rate, epoch):
    """resnet18_absld_cifar10.py l. 173-180 for one of the two rows."""
    if epoch in [215, 260, 285]:
        rate = rate * 0.1
    loss_gap = total_loss - torch.mean(total_loss)
    temp = temp - rate * loss_gap / torch.max(torch.abs(loss_gap))
    return torch.clamp(temp, 0.5, 5), rate


def test_the_temperature_update_and_its_rate_are_the_officials():
    """Epochs 213-217 of the official 300: the rate drops with the lr after epoch 215."""
    temps, _ = temperatures_and_labels(2)
    method = ABSLD(argparse.Namespace(absld_temperature_lr=0.1, lr=0.1, lr_schedule='absld',
                                      epochs=300, absld_targets='official'), 10, 'cpu')
    method.temperatures = temps.clone()
    official, rate = temps.clone(), 0.1
    generator = torch.Generator().manual_seed(3)
    ctx = argparse.Namespace(all_sum=lambda *tensors: None)
    for epoch in range(213, 218):
        method.loss_sums = torch.rand(2, 10, generator=generator, dtype=torch.float64) * 500
        for row in (0, 1):
            official[row], new_rate = official_update(official[row], method.loss_sums[row],
                                                      rate, epoch)
        rate = new_rate
        method.after_epoch(epoch, ctx, {}, {})
        assert torch.allclose(method.temperatures, official, rtol=1e-12, atol=0), epoch
    assert rate == pytest.approx(0.01)
    # Equal losses leave the temperatures (the official update divides by zero).
    same = updated_temperatures(official, torch.full((2, 10), 3.0, dtype=torch.float64), 0.1)
    assert torch.equal(same, official)


def test_the_teacher_is_frozen_and_its_file_is_part_of_the_identity(tmp_path):
    """The teacher's weights do not move; resuming with another teacher file is refused by
    name; a missing teacher is one error line."""
    teacher_a = run(tmp_path, 'teacher_a', '--epochs', '1')
    teacher_b = run(tmp_path, 'teacher_b', '--epochs', '1', '--seed', '2')
    path_a = os.path.join(teacher_a, 'checkpoint-latest.pt')
    before = open(path_a, 'rb').read()
    args = ['--epochs', '2', '--rob_fairness_algorithm', 'absld', '--lr_schedule', 'constant']
    student = run(tmp_path, 'student', *args, '--absld_teacher', path_a)
    assert open(path_a, 'rb').read() == before
    assert latest(student)['recipe']['data']['teacher_sha256']
    with pytest.raises(UserError, match='teacher checkpoint'):
        train.main(TINY + ['--model_dir', student, *args, '--epochs', '3', '--absld_teacher',
                           os.path.join(teacher_b, 'checkpoint-latest.pt'), '--resume',
                           os.path.join(student, 'checkpoint-latest.pt')])
    with pytest.raises(UserError, match='pass --absld_teacher'):
        run(tmp_path, 'no_teacher', *args)
