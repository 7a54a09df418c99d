"""FAAL (fairness/faal.py) against its official code, TrustAI/FAAL at b20ee9d: the per-batch class
distribution against the official cvxpy problem's solutions, its optimality by duality, and the
loss against a literal re-statement of ft_prn.py; then training: the warm-up shared with the
plain run, the official recipe's schedule."""
import argparse
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.schedule import lr_at
from fairness import FAAL, METHODS
from fairness.faal import cw_margins, worst_case_distribution
from losses import LossTerms, SampleWeights, per_sample_kl
from test_train import assert_same_state, latest, metrics, run

# (r, class counts in the batch, per-class mean margins, p): FAAL.py's DAW(train_batch_size=10,
# output_return='weights', learning_approach='kl', r_choice=r).solve_weight(y, class_margin)
# (l. 32-76, 101-127), run here once with cvxpy 1.9.3 and ECOS 2.0.14 (the first solver it
# tries; torchattacks and mosek stubbed, neither on that path), on labels y with these counts.
# The last batch lacks class 3, whose NaN mean ft_prn.py l. 230 sets to -1.
OFFICIAL = [
    (0.1, [12, 12, 8, 18, 12, 12, 14, 9, 12, 19],
     [0.20133395, -0.70172054, -0.21172617, 0.72680724, -0.77766162, 0.61905193, 0.57797039,
      0.59530878, -0.18657202, 0.4472422],
     [0.083070546, 0.051143747, 0.067168824, 0.21546273, 0.049542524, 0.11679574, 0.12342341,
      0.1000203, 0.065505475, 0.12786672]),
    (0.5, [16, 16, 6, 13, 12, 24, 13, 14, 5, 9],
     [0.96832269, -0.43153942, -0.41348436, -0.68104088, -0.20977411, -0.33190092, 0.74691325,
      0.97448301, -0.69034672, -0.62290639],
     [0.43053845, 0.032984186, 0.040341526, 0.030531131, 0.040267654, 0.031601883, 0.10469911,
      0.21572737, 0.038458917, 0.034849774]),
    (1.0, [15, 9, 14, 11, 9, 22, 9, 15, 12, 12],
     [-0.51186264, -0.2817339, 0.42918596, 0.50918478, -0.15836422, -0.55819339, -0.80936158,
      -0.5922603, -0.034158301, -0.65751696],
     [0.017067378, 0.026832674, 0.5439567, 0.28341269, 0.03061486, 0.012874082, 0.017556533,
      0.01572524, 0.035145082, 0.016814781]),
    (0.5, [7, 2, 7, 0, 6, 9, 12, 7, 7, 7],
     [0.51552337, 0.84502524, 0.92865402, -1.0, 0.9077881, -0.37324104, -0.091204613,
      -0.40889585, -0.62498504, -0.51348466],
     [0.090387069, 0.058954503, 0.46031013, 0.045129962, 0.18475859, 0.030782606, 0.039180208,
      0.032301638, 0.02808303, 0.030112261]),
]


@pytest.mark.parametrize('r,counts,margins,official', OFFICIAL)
def test_the_class_distribution_is_the_official_solvers(r, counts, margins, official):
    counts, margins = torch.tensor(counts).double(), torch.tensor(margins).double()
    p = worst_case_distribution(counts * margins, r)
    # ECOS's tolerance: its solutions are within ~4e-7 of the exact optimum.
    assert torch.allclose(p, torch.tensor(official).double(), atol=1e-6, rtol=0)
    # The objective sums over the batch's samples: the class means alone give another p (a
    # rule off by a constant factor would not: the problem is invariant to scaling a).
    wrong = worst_case_distribution(margins, r)
    assert (wrong - torch.tensor(official).double()).abs().max() > 1e-3


def dual_minimum(a: torch.Tensor, r: float) -> float:
    """min over nu > max a of the Lagrange dual of max a.p s.t. p in the simplex, KL(u||p) <= r,
    with its multiplier of the KL constraint minimised out: D(nu) = nu - exp(sum_c u_c log(nu -
    a_c) - r). Brute force: a dense grid in log(nu - max a), refined around its minimum."""
    low, high = -30.0, 30.0
    for _ in range(6):
        t = torch.linspace(low, high, 20001, dtype=torch.float64)
        nu = a.max() + t.exp()
        dual = nu - torch.exp(torch.log(nu[:, None] - a).mean(1) - r)
        best = int(dual.argmin())
        low, high = float(t[max(best - 2, 0)]), float(t[min(best + 2, len(t) - 1)])
    return float(dual.min())


@pytest.mark.parametrize('r', [0.05, 0.5, 2.0])
def test_the_class_distribution_is_optimal_by_duality(r):
    """Feasible, with the KL constraint tight, and its objective equals the dual's minimum:
    by weak duality nothing feasible does better (a certificate, whatever solved it)."""
    generator = torch.Generator().manual_seed(int(r * 100))
    for a in [torch.randn(10, generator=generator, dtype=torch.float64) * 20,
              torch.tensor([3.0, 3.0, 3.0, -1.0, 0.0, 2.0, -5.0, 1.0, 0.5, -2.0]).double(),
              torch.rand(100, generator=generator, dtype=torch.float64) * 4 - 2]:
        p = worst_case_distribution(a, r)
        u = 1 / len(a)
        assert bool((p >= 0).all()) and abs(float(p.sum()) - 1) < 1e-12
        kl = float((u * torch.log(u / p)).sum())
        assert abs(kl - r) < 1e-7
        assert abs(float(a @ p) - dual_minimum(a, r)) < 1e-6 * (1 + float(a.abs().max()))


def test_equal_class_margins_give_the_uniform_distribution():
    p = worst_case_distribution(torch.full((10,), -3.0, dtype=torch.float64), 0.5)
    assert torch.allclose(p, torch.full((10,), 0.1, dtype=torch.float64), atol=1e-12)


def official_cw(outputs, y):
    """ft_prn.py l. 18-29, `cw` (10 classes)."""
    outputs = F.softmax(outputs, 1)
    label_mask = torch.nn.functional.one_hot(y, 10).to(torch.bool)
    label_logit = outputs[label_mask]
    others = outputs[~label_mask].reshape(-1, 9)
    top_other_logit, _ = torch.max(others, dim=1)
    return top_other_logit - label_logit


def official_faal_loss(output, output_clean, y, r, loss):
    """ft_prn.py l. 219-253 re-stated (output = f(x_adv), output_clean = f(x), both train mode),
    in float64; the class distribution from the solver tested above (DAW.solve_weight)."""
    criterion = nn.CrossEntropyLoss(reduction='none')
    loss_margin = official_cw(output, y)
    loss_ce = criterion(output, y)
    class_margin = torch.zeros(10, dtype=torch.float64)
    for cc in range(10):
        class_margin[cc] += (loss_margin[y == cc]).mean()
    class_margin = torch.where(torch.isnan(class_margin), -torch.ones_like(class_margin),
                               class_margin)
    valid_num = len(class_margin)
    # The objective sum_i p[y_i] class_margin[y_i] (FAAL.py l. 60) over the batch's labels.
    counts = torch.bincount(y, minlength=10).double()
    weights = worst_case_distribution(counts * class_margin.detach(), r)
    if loss == 'pgd':  # --loss AT
        return (loss_ce * weights[y]).sum() * valid_num / len(y)
    loss_kl = F.kl_div(F.log_softmax(output, dim=1), F.softmax(output_clean, dim=1),
                       reduction='none').sum(1) * 6 + criterion(output_clean, y)
    return (loss_kl * weights[y]).sum() * valid_num / len(y)


@pytest.mark.parametrize('loss', ['pgd', 'trades'])
def test_the_loss_is_the_official_one(loss):
    """FAAL.batch_loss on the base loss's per-sample terms, value and gradient, against the
    re-statement; a batch without class 3 takes the official -1 path."""
    generator = torch.Generator().manual_seed(3)
    y = torch.randint(0, 10, (40,), generator=generator)
    y[y == 3] = 4
    adv = (torch.randn(40, 10, generator=generator, dtype=torch.float64) * 3).requires_grad_()
    clean = (torch.randn(40, 10, generator=generator, dtype=torch.float64) * 3).requires_grad_()
    method = FAAL(argparse.Namespace(faal_radius=0.5, faal_warmup=0, dafa_warmup=70,
                                     loss=loss), 10, 'cpu')
    method.before_epoch(1, None)
    if loss == 'pgd':
        terms = LossTerms(None, F.cross_entropy(adv, y, reduction='none'), adv, y)
    else:
        terms = LossTerms(F.cross_entropy(clean, y, reduction='none'),
                          per_sample_kl(clean, adv), adv, y)
    ones = torch.ones(40, dtype=torch.float64)
    ours = method.batch_loss(terms, SampleWeights(ones, ones, ones, ones), 6.0).loss
    theirs = official_faal_loss(adv, clean, y, 0.5, loss)
    assert torch.allclose(ours, theirs, rtol=1e-6, atol=0)
    grads = [torch.autograd.grad(value, (adv, clean), allow_unused=True)
             for value in (ours, theirs)]
    for g_ours, g_theirs in zip(*grads):
        if g_theirs is not None:
            assert torch.allclose(g_ours, g_theirs, rtol=1e-5, atol=1e-9)
    # The epoch's record: the batch's K p, mean 1.
    method.after_epoch(1, None, {}, {})
    assert abs(float(method.class_weights.mean()) - 1) < 1e-6


def test_cw_margin_is_the_official_one():
    generator = torch.Generator().manual_seed(4)
    logits, y = torch.randn(30, 10, generator=generator), torch.randint(0, 10, (30,),
                                                                        generator=generator)
    assert torch.allclose(cw_margins(logits, y), official_cw(logits, y), atol=1e-7)


def test_a_faal_run_branches_off_the_plain_warmup_as_it_trains_it(tmp_path):
    """The plain run keeps its checkpoint of epoch --faal_warmup although it records nothing
    there and keeps no other (--save_freq 100): a FAAL run continuing it equals one trained
    from scratch, the warm-up included."""
    args = ['--epochs', '3', '--dafa_warmup', '2', '--faal_warmup', '1', '--save_freq', '100']
    plain = run(tmp_path, 'plain', *args)
    assert os.path.exists(os.path.join(plain, 'checkpoint-epoch1.pt'))
    branched = run(tmp_path, 'branched', *args, '--rob_fairness_algorithm', 'faal',
                   '--resume', os.path.join(plain, 'checkpoint-epoch1.pt'))
    straight = run(tmp_path, 'straight', *args, '--rob_fairness_algorithm', 'faal')
    assert_same_state(latest(branched), latest(straight))
    rows = metrics(straight)
    assert rows[0]['method_state'] == {} and len(rows[-1]['method_state']['class_weights']) == 4


def test_the_official_recipe_fine_tunes_two_epochs_the_second_at_a_tenth():
    """ft_prn.py l. 147-148 (epochs 2: MultiStepLR at epochs / 2, gamma 0.1) stepped after each
    epoch (l. 297): lr 0.01, then 0.001; a 1-epoch run stays at 0.01."""
    assert [lr_at(e, schedule='half', base_lr=0.01, epochs=2) for e in (1, 2)] == [0.01, 0.01 * 0.1]
    assert lr_at(1, schedule='half', base_lr=0.01, epochs=1) == 0.01
    args = METHODS['faal'].official_args(110, 'resnet')
    assert args[args.index('--epochs') + 1] == '2' and args[args.index('--lr') + 1] == '0.01'
    assert args[args.index('--model') + 1] == 'pre-resnet'
