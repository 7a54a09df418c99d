"""CSR (fairness/csr.py) against literal re-statements of its official code,
Alexkael/CONFUSIONAL-SPECTRAL-REGULARIZATION at 92856c7, CIFAR10_TRADES_fairness/: the confusion
counts and G of train_fair.py, the loss of trades_fair.py, in float64; then training: the pass
over the training set leaves the epoch's own draws alone."""
import argparse

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fairness import CSR
from fairness.csr import adversarial_confusion, confusion_weights
from losses import LossTerms, SampleWeights, per_sample_kl
from test_train import metrics, run


def official_confusion(output_adv, y, gamma_true=True):
    """train_fair.py l. 126-144 for one batch of adversarial logits (10 classes)."""
    cmt = torch.zeros(10, 10, dtype=torch.float64)
    output_adv = output_adv.clone()
    if gamma_true:
        for ii in range(len(y)):
            output_adv[ii][y[ii]] -= output_adv[ii][y[ii]] * 0.1
    pred = output_adv.max(1, keepdim=True)[1]
    pred_2 = torch.reshape(pred, (-1,))
    for i in range(len(y)):
        if y[i] != pred_2[i]:
            cmt[pred_2[i]][y[i]] += 1
    return cmt


def official_gm(cmt):
    """train_fair.py l. 146-148."""
    u, s, v = torch.svd(cmt)
    gm = torch.outer(u[:, 0], v[:, 0])
    return 2 * (gm - gm.min()) / (gm.max() - gm.min()) + 0.01


def official_csr_loss(logits, output_adv, y, gm, beta):
    """trades_fair.py l. 80-98 from the train-mode logits (the four forwards give the same
    values: logits and its second clean forward, output_adv and its first x_adv forward)."""
    criterion_kl = nn.KLDivLoss(reduction='sum')  # size_average=False
    batch_size = len(y)
    loss_natural = F.cross_entropy(logits, y)
    loss_robust = (1.0 / batch_size) * criterion_kl(F.log_softmax(output_adv, dim=1),
                                                    F.softmax(logits, dim=1))
    pred = output_adv.max(1, keepdim=True)[1]
    pred_2 = torch.reshape(pred, (-1,))
    reweight_target = torch.zeros(len(y), dtype=torch.float64)
    for ii in range(len(y)):
        reweight_target[ii] = gm[pred_2[ii]][y[ii]]
    yy = F.one_hot(y, 10).double()  # num_classes given: the official call omits it
    yy = (yy.transpose(0, 1) * reweight_target).transpose(0, 1)
    loss_yy = (1.0 / yy.size()[0]) * criterion_kl(F.log_softmax(output_adv, dim=1), yy)
    return 0.7 * loss_natural + beta * loss_robust + 0.3 * loss_yy


def batches(seed, n=3):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 10, (50,), generator=generator),
             torch.randn(50, 10, generator=generator, dtype=torch.float64) * 2)
            for _ in range(n)]


@pytest.mark.parametrize('shrink', [0.1, 0.0])
def test_confusion_counts_are_the_official_ones(shrink):
    pairs = batches(0)
    ours = adversarial_confusion(pairs, 10, shrink)
    official = sum(official_confusion(logits, y, gamma_true=shrink > 0) for y, logits in pairs)
    assert torch.equal(ours, official)
    assert ours.diagonal().sum() == 0 and ours.sum() > 0


def test_pair_weights_are_the_official_g():
    for seed in range(3):
        counts = adversarial_confusion(batches(seed), 10, 0.1)
        g = confusion_weights(counts)
        assert torch.allclose(g, official_gm(counts), atol=1e-12)
        # Predicted and true are not interchangeable: G of the transpose is another table.
        assert (confusion_weights(counts.T) - g).abs().max() > 1e-3
    assert torch.equal(confusion_weights(torch.zeros(10, 10)), torch.ones(10, 10).double())


def test_the_loss_is_the_official_one():
    generator = torch.Generator().manual_seed(5)
    y = torch.randint(0, 10, (40,), generator=generator)
    logits = (torch.randn(40, 10, generator=generator, dtype=torch.float64) * 2).requires_grad_()
    adv = (torch.randn(40, 10, generator=generator, dtype=torch.float64) * 2).requires_grad_()
    gm = official_gm(adversarial_confusion(batches(7), 10, 0.1))
    method = CSR(argparse.Namespace(csr_weight=0.3, csr_warmup=0, dafa_warmup=70,
                                    csr_true_logit_shrink=0.1), 10, 'cpu')
    method.pair_weights = gm.clone()
    method.active = True
    terms = LossTerms(F.cross_entropy(logits, y, reduction='none'), per_sample_kl(logits, adv),
                      adv, y)
    ones = torch.ones(40, dtype=torch.float64)
    ours = method.batch_loss(terms, SampleWeights(ones, ones, ones, ones), 6.0).loss
    theirs = official_csr_loss(logits, adv, y, gm, 6.0)
    assert torch.allclose(ours, theirs, rtol=1e-12, atol=0)
    for g_ours, g_theirs in zip(torch.autograd.grad(ours, (logits, adv)),
                                torch.autograd.grad(theirs, (logits, adv))):
        assert torch.allclose(g_ours, g_theirs, rtol=1e-10, atol=1e-14)


def test_the_confusion_pass_leaves_the_epochs_draws_alone(tmp_path):
    """Its pass draws its own shuffle, crops and attack starts: with a weight of 0 (the loss
    is then TRADES') a CSR run trains exactly as the plain run, while its pass still counts."""
    args = ['--epochs', '2', '--dafa_warmup', '1']
    plain = run(tmp_path, 'plain', *args)
    csr = run(tmp_path, 'csr', *args, '--rob_fairness_algorithm', 'csr', '--csr_weight', '0')
    rows_plain, rows_csr = metrics(plain), metrics(csr)
    assert [r['loss'] for r in rows_csr] == [r['loss'] for r in rows_plain]
    assert rows_csr[-1]['pgd2'] == rows_plain[-1]['pgd2']
    assert 'confusion' in rows_csr[-1]['method_state']
