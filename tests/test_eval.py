"""Evaluation: per-class metrics and rho, PGD-20, AutoAttack, checkpoint formats, eval.py end to
end (JSON schema, figures, --baseline, --compare) and its one-line errors. CPU, under a minute."""
import argparse
import json
import os
import urllib.error
import urllib.request

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import data
import eval as eval_cli
import models
import train
import evaluation.job
from evaluation import schema, tables
from evaluation.autoattack import autoattack_predict
from evaluation.checkpoint_io import build_model, read_checkpoint
from engine.cli import UserError
from evaluation.metrics import confusion_matrix, per_class_accuracy, rho, summarize, \
    top_confusions, worst_k
from evaluation.pgd import pgd_whitebox
from evaluation.setup import stratified_eval_subset
from test_identity import write_images
from test_train import Payload

EPS, STEP, STEPS = 0.031, 0.003, 20
PNG_MAGIC = b'\x89PNG'


@pytest.fixture(autouse=True)
def one_thread():
    # The attacks here run thousands of tiny forward passes, where a second intra-op thread only
    # adds synchronisation (AutoAttack's test drops from ~15 s to ~4 s on 2 busy cores).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----- metrics ----------------------------------------------------------------------------------

def test_per_class_accuracy_divides_by_each_class_count():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2])  # imbalanced: 4, 2 and 1 samples
    correct = torch.tensor([1, 1, 1, 0, 1, 0, 0], dtype=torch.bool)
    acc = per_class_accuracy(correct, labels, 3)
    assert acc.tolist() == [75.0, 50.0, 0.0]
    s = summarize(correct, labels, ['a', 'b', 'c'])
    assert s['avg'] == pytest.approx(125 / 3)  # mean over classes, not 4/7 of the samples
    assert (s['worst'], s['worst_class'], s['best'], s['best_class']) == (0.0, 'c', 75.0, 'a')
    with pytest.raises(ValueError, match=r'\[2\]'):
        per_class_accuracy(correct[:6], labels[:6], 3)


def test_fairness_summaries_std_and_worst_k_mean():
    labels = torch.arange(10).repeat_interleave(2)
    correct = torch.zeros(20, dtype=torch.bool)
    correct[::2] = True           # every class 50%...
    correct[[1, 3]] = True        # ...but classes 0 and 1 100%
    s = summarize(correct, labels, [f'c{i}' for i in range(10)])
    assert s['worst_k'] == 3 and s['worst_k_mean'] == 50.0
    assert s['std'] == pytest.approx(20.0)  # population std of [100, 100, 50 x 8]
    assert worst_k(100) == 10 and worst_k(4) == 3 and worst_k(2) == 2
    result = {'class_names': ['a', 'b', 'c'], 'method': 'M', 'seed': 1,
              'clean': {'per_class': [90.0, 60.0, 30.0]}}
    seed2 = dict(result, seed=2, clean={'per_class': [80.0, 80.0, 80.0]})
    table = tables.spread_table([('r1/x.json', result), ('r2/x.json', seed2)])
    # std over classes 24.49 and 0 -> 12.25 ± 17.32; worst-3 = all three: 60 and 80.
    assert '| M | 12.25 ± 17.32 | 70.00 ± 14.14 |' in table


def test_confusion_matrix_and_top_confusions_of_a_class():
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 2])
    pred = torch.tensor([0, 1, 2, 2, 2, 1, 0, 2])
    m = confusion_matrix(labels, pred, 3)
    assert m.tolist() == [[1, 1, 3], [1, 1, 0], [0, 0, 1]]
    names = ['cat', 'dog', 'frog']
    assert top_confusions(m, 0, names) == [{'class': 'frog', 'percent': 60.0},
                                           {'class': 'dog', 'percent': 20.0}]
    assert top_confusions(m, 2, names) == []  # never mistaken: nothing listed


def test_rho_reproduces_the_papers_table1():
    # CIFAR-10, TRADES vs TRADES + DAFA (Lee et al., ICLR 2024, Table 1).
    assert round(rho(81.63, 67.90, 82.04, 65.70), 2) == 0.03
    assert round(rho(49.05, 30.53, 49.80, 21.31), 2) == 0.42
    assert rho(82.04, 65.70, 82.04, 65.70) == 0
    assert rho(40.0, 10.0, 50.0, 0.0) is None  # relative to a zero worst class: undefined


# ----- PGD-20 -----------------------------------------------------------------------------------

class RecordingModel(nn.Module):
    """Wraps a model and keeps every input it is called on."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.inputs = inner, []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.inner(x)


def linear_model_and_data(n=20, num_classes=10, size=8, wrong=4):
    """A linear classifier, images inside [0.2, 0.8] (so the [0, 1] box never binds at EPS) and
    labels equal to its prediction except for the first `wrong` samples."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, num_classes)).eval()
    x = 0.2 + 0.6 * torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:wrong] = (y[:wrong] + 1) % num_classes
    return model, x, y


def exactly_robust(model, x, y, eps):
    """For a linear classifier and an unconstrained L-inf ball: robust iff correct and every
    margin z_y - z_j exceeds eps * ||w_y - w_j||_1 (the worst case moves each pixel by eps)."""
    weight = model[1].weight
    with torch.no_grad():
        z = model(x)
        margin = z.gather(1, y[:, None]) - z                          # (N, C)
        reach = eps * (weight[y][:, None, :] - weight[None]).abs().sum(2)  # (N, C)
        ok = (margin > reach) | (torch.arange(z.shape[1]) == y[:, None])
    return ok.all(1)


def saturated_batch():
    x = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    x[:4] = 1.0  # saturated images: the box constraint binds
    x[4:8] = 0.0
    return x, torch.arange(16) % 4


def test_pgd_every_rule_checks_each_iterate_inside_the_ball_and_the_box():
    torch.manual_seed(0)
    model = RecordingModel(models.create('small-cnn', 4, 16)).eval()
    x, y = saturated_batch()
    clean_pred, adv_pred = pgd_whitebox(model, x, y, epsilon=EPS, step_size=STEP,
                                        num_steps=STEPS, rule='every')
    assert len(model.inputs) == 1 + STEPS + 1  # clean pass, random start, 20 iterates
    for x_adv in model.inputs:
        assert (x_adv - x).abs().max() <= EPS + 1e-6
        assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (model.inputs[-1] - x).abs().max() > EPS / 2  # the attack does move the inputs
    # Robust implies correct at the clean input and at every iterate.
    robust = adv_pred == y
    assert not (robust & (clean_pred != y)).any()
    for x_adv in model.inputs[1:]:
        with torch.no_grad():
            assert (model.inner(x_adv).argmax(1) == y)[robust].all()


def official_pgd_final(model, x, y, epsilon, num_steps, step_size):
    """A literal re-statement of the official DAFA evaluation (evaluation.py: pgd, as
    eval_classwise scores it): a perturbation tensor stepped with its own gradient, clipped to
    the ball and then to the box, scored at the final clamped point. Global RNG."""
    perturbation = torch.rand_like(x, requires_grad=True)
    perturbation.data = perturbation.data * 2 * epsilon - epsilon
    opt = torch.optim.SGD([perturbation], lr=1e-3)
    for _ in range(num_steps):
        opt.zero_grad()
        with torch.enable_grad():
            loss = nn.CrossEntropyLoss()(model(x + perturbation), y)
        loss.backward()
        perturbation.data = (perturbation + step_size * perturbation.grad.detach().sign()
                             ).clamp(-epsilon, epsilon)
        perturbation.data = torch.min(torch.max(perturbation.detach(), -x), 1 - x)
        x_pgd = torch.clamp(x.data + perturbation.data, 0, 1.0)
    return x_pgd, model(x_pgd).max(1)[1]


def test_pgd_final_rule_is_the_official_per_class_evaluation_exactly():
    model = RecordingModel(randomized_bn_resnet()).eval()
    x = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    x[:3] = 1.0
    y = torch.arange(12) % 10
    torch.manual_seed(5)
    x_official, pred_official = official_pgd_final(model, x, y, EPS, 5, STEP)
    model.inputs.clear()
    clean_pred, adv_pred = pgd_whitebox(model, x, y, epsilon=EPS, step_size=STEP, num_steps=5,
                                        rule='final',
                                        generator=torch.Generator().manual_seed(5))
    assert torch.equal(model.inputs[-1], x_official)  # the scored point, bit for bit
    assert torch.equal(adv_pred, pred_official)
    # Its first gradient is taken at the unclipped start: outside [0, 1] on saturated images.
    assert model.inputs[1].max() > 1
    assert (model.inputs[-1] - x).abs().max() <= EPS + 1e-6
    assert model.inputs[-1].min() >= 0 and model.inputs[-1].max() <= 1
    with torch.no_grad():
        assert torch.equal(clean_pred, model.inner(x).argmax(1))


def reference_attack(model, x, y, eps, step, steps, loss, norm, generator):
    """An independent re-statement of CW-inf and L2 PGD (the points ours scores): the margin
    from the two largest logits, the L2 projection with torch.renorm."""
    def margin(logits):
        top2 = logits.topk(2, dim=1)
        other = torch.where(top2.indices[:, 0] == y, top2.values[:, 1], top2.values[:, 0])
        return (other - logits[torch.arange(len(y)), y]).sum()
    objective = (lambda z: F.cross_entropy(z, y)) if loss == 'ce' else margin
    n = len(x)
    if norm == 'Linf':
        delta = torch.rand(x.shape, generator=generator) * 2 * eps - eps
    else:
        direction = torch.randn(x.shape, generator=generator)
        radius = torch.rand(n, generator=generator)
        delta = direction / direction.flatten(1).norm(dim=1).view(n, 1, 1, 1) \
            * (eps * radius).view(n, 1, 1, 1)
        delta = (x + delta).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        g, = torch.autograd.grad(objective(model(x + delta)), delta)
        with torch.no_grad():
            if norm == 'Linf':
                delta = torch.clamp(delta + step * g.sign(), -eps, eps)
                delta = torch.max(torch.min(delta, 1 - x), -x)
            else:
                g_norm = g.flatten(1).norm(dim=1).clamp(min=1e-12).view(n, 1, 1, 1)
                delta = torch.renorm(delta + step * g / g_norm, p=2, dim=0, maxnorm=eps)
                delta = (x + delta).clamp(0, 1) - x
    with torch.no_grad():
        return model((x + delta).clamp(0, 1)).argmax(1)


@pytest.mark.parametrize('loss, norm, eps, step', [('cw', 'Linf', EPS, STEP),
                                                   ('ce', 'L2', 0.5, 0.0625),
                                                   ('cw', 'L2', 0.5, 0.0625)])
def test_cw_and_l2_pgd_equal_an_independent_restatement(loss, norm, eps, step):
    torch.manual_seed(0)
    model = models.create('small-cnn', 10, 16).eval()
    x = torch.rand(24, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    x[:3] = 1.0
    with torch.no_grad():
        y = model(x).argmax(1)  # every sample correct when clean: what the attack flips shows
    _, ours = pgd_whitebox(model, x, y, epsilon=eps, step_size=step, num_steps=5,
                           generator=torch.Generator().manual_seed(5), loss=loss, norm=norm)
    reference = reference_attack(model, x, y, eps, step, 5, loss, norm,
                                 torch.Generator().manual_seed(5))
    assert torch.equal(ours, reference)
    assert (ours != y).any()  # the attack does something on this model


@pytest.mark.parametrize('rule', ['final', 'every'])
def test_pgd_never_breaks_an_exactly_robust_sample_and_lowers_accuracy(rule):
    model, x, y = linear_model_and_data()
    clean_pred, adv_pred = pgd_whitebox(model, x, y, epsilon=EPS, step_size=STEP,
                                        num_steps=STEPS, rule=rule,
                                        generator=torch.Generator().manual_seed(0))
    robust = adv_pred == y
    exact = exactly_robust(model, x, y, EPS)
    assert exact.any() and not exact.all()
    assert robust[exact].all()                 # no attack can break these
    assert not robust[clean_pred != y].any()
    assert robust.sum() < (clean_pred == y).sum()


def test_attacks_refuse_a_model_in_train_mode():
    model, x, y = linear_model_and_data()
    model.train()
    with pytest.raises(UserError, match=r'model\.eval\(\)'):
        pgd_whitebox(model, x, y, epsilon=EPS, step_size=STEP, num_steps=1)
    with pytest.raises(UserError, match=r'model\.eval\(\)'):
        autoattack_predict(model, [(x, y)], num_classes=10, epsilon=EPS, batch_size=10, seed=0)


# ----- AutoAttack -------------------------------------------------------------------------------

def test_autoattack_finds_exactly_the_non_robust_samples_of_a_linear_model():
    model, x, y = linear_model_and_data()
    chunks = [(x[:10], y[:10]), (x[10:], y[10:])]
    labels, adv_pred, warnings = autoattack_predict(model, chunks, num_classes=10, epsilon=EPS,
                                                    batch_size=10, seed=0, progress=False)
    exact = exactly_robust(model, x, y, EPS)
    with torch.no_grad():
        clean_correct = model(x).argmax(1) == y
    assert torch.equal(labels, y)
    assert exact.any() and (clean_correct & ~exact).any()  # both kinds are present
    assert torch.equal(adv_pred == y, exact)
    assert warnings == []


def test_autoattack_needs_four_classes():
    model, x, y = linear_model_and_data(num_classes=3)
    with pytest.raises(UserError, match='--attack pgd'):
        autoattack_predict(model, [(x, y)], num_classes=3, epsilon=EPS, batch_size=10, seed=0)


# ----- checkpoint formats -----------------------------------------------------------------------

def randomized_bn_resnet():
    """ResNet-18 with non-trivial BatchNorm running statistics, so eval-mode logits depend on
    every buffer being loaded."""
    torch.manual_seed(0)
    model = models.create('resnet', 10, 32)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize('prefix', ['module.', '_orig_mod.', '_orig_mod.module.'])
def test_official_resnet18_state_dict_gives_the_same_logits(tmp_path, prefix):
    source = randomized_bn_resnet()
    path = str(tmp_path / 'official.pt')
    torch.save({'state_dict': {prefix + k: v for k, v in source.state_dict().items()}}, path)
    ckpt = read_checkpoint(path)
    assert ckpt.args is None
    model = build_model('resnet', 10, 32, ckpt.state_dict, 'cpu')
    assert not model.training
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


def test_wrong_architecture_or_class_count_lists_the_mismatch(tmp_path):
    state = randomized_bn_resnet().state_dict()
    with pytest.raises(UserError) as err:
        build_model('resnet', 100, 32, state, 'cpu')
    message = str(err.value)
    assert 'linear.weight (checkpoint (10, 512), model (100, 512))' in message
    assert '\n' not in message
    with pytest.raises(UserError) as err:
        build_model('pre-resnet', 10, 32, state, 'cpu')
    assert 'missing' in str(err.value) and 'it fits --model resnet' in str(err.value)


@pytest.mark.parametrize('content, match', [
    (b'not a checkpoint', 'could not be read'),
    (None, 'does not exist'),
])
def test_unreadable_checkpoints(tmp_path, content, match):
    path = tmp_path / 'ckpt.pt'
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=match):
        read_checkpoint(str(path))


# ----- --n_eval subset --------------------------------------------------------------------------

def test_stratified_eval_subset_is_per_class_and_fixed_by_seed():
    y = torch.arange(100) % 4
    keep = stratified_eval_subset(y, 20, 4, seed=1)
    assert torch.bincount(y[keep]).tolist() == [5, 5, 5, 5]
    assert torch.equal(keep, stratified_eval_subset(y, 20, 4, seed=1))
    assert not torch.equal(keep, stratified_eval_subset(y, 20, 4, seed=2))
    assert torch.equal(keep, keep.sort().values)


@pytest.mark.parametrize('n, match', [(101, 'larger than the test set'),
                                      (22, 'multiple of 4, e.g. 20'),
                                      (2, 'multiple of 4, e.g. 4')])
def test_stratified_eval_subset_rejects_bad_sizes(n, match):
    with pytest.raises(UserError, match=match):
        stratified_eval_subset(torch.arange(100) % 4, n, 4, seed=1)


def test_stratified_eval_subset_respects_the_smallest_class():
    y = torch.tensor([0] * 10 + [1] * 3)
    with pytest.raises(UserError, match='at most 6'):
        stratified_eval_subset(y, 8, 2, seed=1)


# ----- eval.py end to end -----------------------------------------------------------------------

SYNTHETIC = ['--dataset', 'synthetic', '--model', 'small-cnn', '--synthetic_num_classes', '4',
             '--synthetic_close_groups', '0,1', '--synthetic_image_size', '8',
             '--synthetic_far_distance', '1.5', '--synthetic_n_train_per_class', '4',
             '--synthetic_n_test_per_class', '5', '--seed', '3']


def our_checkpoint(tmp_path, name='run', dafa=True):
    """A checkpoint in train.py's format: small-cnn on 4-class 8 px synthetic data, 5 test
    images per class. Random weights (what matters here is the wiring, not accuracy)."""
    args = train.parse_args(SYNTHETIC + ['--rob_fairness_algorithm', 'dafa' if dafa else 'none',
                                         '--model_dir', str(tmp_path / name), '--device', 'cpu'])
    torch.manual_seed(len(name))
    model = models.create('small-cnn', 4, 8)
    # A fresh network with unit running variances predicts one class for every image, and no
    # attack can change that; variances of 1e-3 amplify its random features, so its predictions
    # depend on the image and the attacks have something to break.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_var.fill_(1e-3)
    folder = tmp_path / name
    folder.mkdir()
    path = str(folder / 'checkpoint-latest.pt')
    similarity = torch.softmax(torch.randn(4, 4) + 3 * torch.eye(4), 1)
    state = {'similarity': similarity, 'class_weights': torch.tensor([1.2, 1.1, 0.9, 0.8])}
    torch.save({'format': 2, 'epoch': 3, 'model': model.state_dict(), 'optimizer': {},
                'args': vars(args), 'class_names': ['g0a', 'g0b', 'f2', 'f3'], 'num_classes': 4,
                'image_size': 8, 'method': {'name': 'dafa' if dafa else 'none',
                                            'state': state if dafa else {}},
                'records': {}, 'rng': None}, path)
    return path, model


def run_cli(argv, capsys):
    """eval.py's command line in-process -> (exit code, stdout, stderr)."""
    try:
        code = eval_cli.cli(argv + ['--no_progress'] if '--checkpoint' in argv else argv)
    except SystemExit as err:  # argparse's usage errors
        code = err.code
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_end_to_end_writes_a_schema_valid_json_and_figures(tmp_path, capsys):
    path, model = our_checkpoint(tmp_path)
    out_dir = tmp_path / 'out'
    code, out, _ = run_cli(['--checkpoint', path, '--attack', 'all', '--out', str(out_dir)],
                           capsys)
    assert code == 0
    result = json.loads((out_dir / 'eval_all_epoch3.json').read_text())
    assert schema.schema_problems(result) == []
    assert result['method'] == 'TRADES + DAFA' and result['model'] == 'small-cnn'
    assert result['n_eval'] == 20 and result['class_counts'] == [5, 5, 5, 5]
    assert result['class_names'] == ['g0a', 'g0b', 'f2', 'f3']  # synthetic set rebuilt
    assert result['epsilon'] == EPS and result['device'] == 'cpu'
    assert set(result['time_s']) == {'clean', 'pgd20', 'autoattack', 'total'}
    # The numbers are the model's: recompute clean accuracy on the rebuilt test set.
    cfg = data.synthetic_config_from_args(train.parse_args(SYNTHETIC))
    test = data.load_dataset('synthetic', None, seed=3, synthetic=cfg)
    with torch.no_grad():
        correct = model.eval()(test.x_test.float() / 255).argmax(1) == test.y_test
    assert result['clean']['per_class'] == per_class_accuracy(correct, test.y_test, 4).tolist()
    for name in ('pgd20', 'autoattack'):
        assert sum(map(sum, result['confusion'][name])) == 20
    # AutoAttack counts a sample misclassified when clean as not robust; the official PGD rule
    # scores the final iterate only.
    per_class = torch.tensor(result['autoattack']['per_class'])
    assert (per_class <= torch.tensor(result['clean']['per_class'])).all()
    assert result['attacks']['pgd20']['rule'] == 'final'
    assert 'correct at the final iterate (the official per-class evaluation' in out
    # AutoAttack's own log next to the JSON, and its per-image worst case over the attacks.
    log = (out_dir / 'eval_all_epoch3_autoattack.log').read_text()
    assert '== chunk 1 of 1: samples 0-19' in log and 'initial accuracy' in log
    assert 'robust accuracy after APGD-CE' in log or 'no robust datapoints left' in log
    assert 'per-image worst case' in result['attacks']['autoattack']['robust_if']
    assert out.strip().splitlines()[-1].startswith('summary: clean avg')
    for png in ('eval_all_epoch3_per_class.png', 'eval_all_epoch3_confusion_pgd20.png',
                'eval_all_epoch3_confusion_autoattack.png', 'eval_dafa_weights_similarity.png'):
        assert (out_dir / png).read_bytes()[:4] == PNG_MAGIC
    # PGD's early result, whose figures are the full result's: drawn once.
    assert (out_dir / 'eval_pgd_epoch3.json').is_file()
    assert not list(out_dir.glob('eval_pgd_epoch3*.png'))


def test_eval_official_format_needs_model_and_dataset(tmp_path, capsys):
    torch.manual_seed(0)
    source = models.create('small-cnn', 2, 8)
    path = str(tmp_path / 'official.pt')
    torch.save({'state_dict': {'module.' + k: v for k, v in source.state_dict().items()}}, path)
    code, _, err = run_cli(['--checkpoint', path, '--attack', 'none'], capsys)
    assert code == 2 and err.count('\n') == 1
    assert err.startswith('error: ') and '--model and --dataset' in err
    # No synthetic set is this file's: nothing recorded which one (its classes, size, images).
    code, _, err = run_cli(['--checkpoint', path, '--attack', 'none', '--model', 'small-cnn',
                            '--dataset', 'synthetic'], capsys)
    assert code == 2 and 'was not trained by train.py on synthetic data' in err
    write_images(tmp_path / 'data', 0)  # 2 classes, 2 test images each
    code, out, _ = run_cli(['--checkpoint', path, '--attack', 'none', '--model', 'small-cnn',
                            '--dataset', 'folder', '--data_dir', str(tmp_path / 'data'),
                            '--n_eval', '2'], capsys)
    assert code == 0 and 'summary: clean avg' in out
    # Named by its hash (no epoch) and, a subset, by its size.
    result = json.loads(next(tmp_path.glob('eval_none_sha*_n2.json')).read_text())
    assert result['method'] is None and result['n_eval'] == 2
    assert result['attacks'] == {} and list(result['confusion']) == ['clean']
    assert not (tmp_path / 'eval_dafa_weights_similarity.png').exists()


@pytest.mark.parametrize('extra, match', [
    (['--n_eval', '30'], '--n_eval 30 is larger than the test set (20)'),
    (['--n_eval', '10'], 'multiple of 4, e.g. 8'),
    (['--model', 'resnet'], 'got 8; it fits --model small-cnn'),
    (['--dataset', 'cifar10', '--data_dir', '{tmp}/missing'], 'cifar-10-batches-py'),
])
def test_eval_bad_input_is_one_line_naming_the_fix(tmp_path, capsys, monkeypatch, extra, match):
    # No network: a download attempt must fail fast and say where the data should be.
    monkeypatch.setattr(urllib.request, 'urlopen', _no_network)
    path, _ = our_checkpoint(tmp_path)
    extra = [arg.replace('{tmp}', str(tmp_path)) for arg in extra]
    code, _, err = run_cli(['--checkpoint', path, '--attack', 'none', '--out', str(tmp_path)]
                           + extra, capsys)
    assert code == 2 and err.startswith('error: ') and err.count('\n') == 1
    assert match in err


def _no_network(*args, **kwargs):
    raise urllib.error.URLError('network disabled in tests')


def test_eval_unknown_saved_dataset(tmp_path, capsys):
    path, _ = our_checkpoint(tmp_path)
    ckpt = torch.load(path, weights_only=True)
    ckpt['args']['dataset'] = 'imagenet'
    torch.save(ckpt, path)
    code, _, err = run_cli(['--checkpoint', path, '--attack', 'none'], capsys)
    assert code == 2 and "unknown dataset 'imagenet'" in err and err.count('\n') == 1


def test_eval_refuses_a_test_set_that_changed_since_training(tmp_path, capsys):
    path, _ = our_checkpoint(tmp_path)
    ckpt = torch.load(path, weights_only=True)
    cfg = data.synthetic_config_from_args(argparse.Namespace(**ckpt['args']))
    ckpt['test_set_sha256'] = data.load_dataset('synthetic', None, seed=3,
                                                synthetic=cfg).test_fingerprint
    torch.save(ckpt, path)
    assert run_cli(['--checkpoint', path, '--attack', 'none'], capsys)[0] == 0
    ckpt['test_set_sha256'] = 'f' * 64  # as if the generator had changed since training
    torch.save(ckpt, path)
    code, _, err = run_cli(['--checkpoint', path, '--attack', 'none'], capsys)
    assert code == 2 and 'test set differs' in err and err.count('\n') == 1


def test_eval_missing_checkpoint(tmp_path, capsys):
    code, _, err = run_cli(['--checkpoint', str(tmp_path / 'nope.pt')], capsys)
    assert code == 2 and 'does not exist' in err and err.count('\n') == 1


def test_baseline_rho_and_compare_table(tmp_path, capsys):
    base_path, _ = our_checkpoint(tmp_path, 'trades', dafa=False)
    dafa_path, _ = our_checkpoint(tmp_path, 'dafa')
    for path in (base_path, dafa_path):
        assert run_cli(['--checkpoint', path, '--attack', 'pgd'], capsys)[0] == 0
    base_json = os.path.join(os.path.dirname(base_path), 'eval_pgd_epoch3.json')
    dafa_json = os.path.join(os.path.dirname(dafa_path), 'eval_pgd_epoch3.json')

    # --baseline: rho of this run against the baseline's file, per evaluation.
    first = json.loads(open(dafa_json).read())
    code, out, _ = run_cli(['--checkpoint', dafa_path, '--attack', 'pgd', '--baseline',
                            base_json], capsys)
    assert code == 0
    base, dafa = (json.loads(open(p).read()) for p in (base_json, dafa_json))
    assert dafa['pgd20'] == first['pgd20']  # seeded: a rerun gives the same numbers
    expected = rho(dafa['pgd20']['avg'], dafa['pgd20']['worst'], base['pgd20']['avg'],
                   base['pgd20']['worst'])
    assert dafa['baseline']['rho']['pgd20'] == expected
    assert 'rho_nat' in out.splitlines()[-1] and 'rho_rob' in out.splitlines()[-1]

    # --compare on the paper's numbers: its Table 1 rho values come out.
    for path, (clean, robust) in ((base_json, ((82.04, 65.70), (49.80, 21.31))),
                                  (dafa_json, ((81.63, 67.90), (49.05, 30.53)))):
        result = json.loads(open(path).read())
        for name, (avg, worst) in (('clean', clean), ('pgd20', robust)):
            result[name].update(avg=avg, worst=worst)
        schema.write_json(result, path)
    code, out, _ = run_cli(['--compare', base_json, dafa_json], capsys)
    assert code == 0
    text, markdown = out.split('\n\n')[:2]
    lines = text.splitlines()
    assert lines[0].split() == ['clean', 'PGD-20']
    assert lines[1].split() == ['method', 'avg', 'worst', 'rho_nat', 'avg', 'worst', 'rho_rob']
    assert lines[2].split() == ['TRADES', '82.04', '65.70', '-', '49.80', '21.31', '-']
    assert lines[3].split() == ['TRADES', '+', 'DAFA', '81.63', '67.90', '0.03', '49.05',
                                '30.53', '0.42']
    assert markdown.splitlines()[3] == \
        '| TRADES + DAFA | 81.63 | 67.90 | 0.03 | 49.05 | 30.53 | 0.42 |'
    assert (tmp_path / 'trades' / 'compare_per_class.png').read_bytes()[:4] == PNG_MAGIC

    code, _, err = run_cli(['--compare', base_json, base_path], capsys)
    assert code == 2 and 'not' in err and err.count('\n') == 1


def test_a_subset_result_never_replaces_the_whole_test_set_result(tmp_path, capsys):
    path, _ = our_checkpoint(tmp_path)
    folder = tmp_path / 'run'
    assert run_cli(['--checkpoint', path, '--attack', 'none'], capsys)[0] == 0
    whole = (folder / 'eval_none_epoch3.json').read_bytes()
    assert run_cli(['--checkpoint', path, '--attack', 'none', '--n_eval', '8'], capsys)[0] == 0
    assert (folder / 'eval_none_epoch3.json').read_bytes() == whole
    assert json.loads((folder / 'eval_none_epoch3_n8.json').read_text())['n_eval'] == 8
    assert (folder / 'eval_none_epoch3_n8_per_class.png').is_file()


def test_autoattack_on_a_subset_keeps_clean_and_pgd_on_every_sample(tmp_path, capsys):
    path, model = our_checkpoint(tmp_path)
    code, out, _ = run_cli(['--checkpoint', path, '--attack', 'all', '--n_autoattack', '8'],
                           capsys)
    assert code == 0
    result = json.loads((tmp_path / 'run' / 'eval_all_epoch3_aa8.json').read_text())
    assert schema.schema_problems(result) == []
    assert result['n_eval'] == 20 and result['pgd20']['n'] == 20
    assert result['autoattack']['n'] == 8 and result['autoattack']['class_counts'] == [2] * 4
    assert sum(map(sum, result['confusion']['autoattack'])) == 8
    assert 'AutoAttack ran on 8 of the 20 samples (2 per class' in out
    # The subset is the one stratified_eval_subset draws with --seed (1), and AutoAttack's
    # per-class accuracy is over those samples: a sample wrong when clean is wrong under it.
    cfg = data.synthetic_config_from_args(train.parse_args(SYNTHETIC))
    test = data.load_dataset('synthetic', None, seed=3, synthetic=cfg)
    keep = stratified_eval_subset(test.y_test, 8, 4, seed=1)
    with torch.no_grad():
        correct = model.eval()(test.x_test[keep].float() / 255).argmax(1) == test.y_test[keep]
    clean_on_subset = per_class_accuracy(correct, test.y_test[keep], 4)
    assert (torch.tensor(result['autoattack']['per_class']) <= clean_on_subset).all()
    # A baseline evaluated with another AutoAttack subset is refused.
    code, _, err = run_cli(['--checkpoint', path, '--attack', 'all', '--baseline',
                            str(tmp_path / 'run' / 'eval_all_epoch3_aa8.json')], capsys)
    assert code == 2 and 'n_autoattack 8, against 20' in err


@pytest.mark.parametrize('extra, match', [
    (['--attack', 'pgd', '--n_autoattack', '8'], 'needs AutoAttack: pass --attack aa or all'),
    (['--attack', 'all', '--n_eval', '8', '--n_autoattack', '12'],
     '--n_autoattack 12 is larger than the evaluated set (8)'),
])
def test_n_autoattack_bad_input(tmp_path, capsys, extra, match):
    path, _ = our_checkpoint(tmp_path)
    code, _, err = run_cli(['--checkpoint', path] + extra, capsys)
    assert code == 2 and match in err and len(err.strip().splitlines()) <= 2


@pytest.mark.parametrize('extra,match', [
    (['--n_eval', '8'], 'n_eval 20, against 8'),
    (['--pgd_rule', 'every'], 'pgd_rule final, against every'),
])
def test_an_incomparable_baseline_is_refused_before_the_evaluation(tmp_path, capsys,
                                                                   monkeypatch, extra, match):
    base_path, _ = our_checkpoint(tmp_path, 'trades', dafa=False)
    assert run_cli(['--checkpoint', base_path, '--attack', 'pgd'], capsys)[0] == 0
    dafa_path, _ = our_checkpoint(tmp_path, 'dafa')

    def no_evaluation(*args, **kwargs):
        raise AssertionError('the evaluation ran before the baseline was checked')

    monkeypatch.setattr(evaluation.job, 'run_evaluation', no_evaluation)
    code, _, err = run_cli(['--checkpoint', dafa_path, '--attack', 'pgd', '--baseline',
                            os.path.join(os.path.dirname(base_path), 'eval_pgd_epoch3.json'),
                            *extra],
                           capsys)
    assert code == 2 and err.count('\n') == 1 and match in err


# ----- checkpoints are read safely ---------------------------------------------------------------

def test_a_checkpoint_carrying_code_is_refused_and_never_run(tmp_path, capsys):
    marker = tmp_path / 'pwned'
    evil = str(tmp_path / 'evil.pt')
    torch.save({'state_dict': models.create('small-cnn', 4, 8).state_dict(),
                'payload': Payload(marker)}, evil)
    code, _, err = run_cli(['--checkpoint', evil, '--model', 'small-cnn', '--dataset',
                            'synthetic', '--attack', 'none'], capsys)
    assert not marker.exists()
    assert code == 2 and err.count('\n') == 1
    assert 'was not loaded and nothing in it was executed' in err and 'system' in err


def test_trust_checkpoint_loads_a_file_the_safe_loader_refuses_with_a_warning(tmp_path, capsys):
    # Common in other repositories: the training args saved as an argparse.Namespace.
    source = models.create('small-cnn', 2, 8)  # fits write_images' folder
    path = str(tmp_path / 'namespace.pt')
    torch.save({'state_dict': source.state_dict(), 'args': argparse.Namespace(lr=0.1)}, path)
    write_images(tmp_path / 'data', 0)
    argv = ['--checkpoint', path, '--model', 'small-cnn', '--dataset', 'folder', '--data_dir',
            str(tmp_path / 'data'), '--attack', 'none']
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and 'Namespace' in err and '--trust_checkpoint' in err
    with pytest.warns(UserWarning, match='unsafe loader'):
        code, out, _ = run_cli(argv + ['--trust_checkpoint'], capsys)
    assert code == 0 and 'summary: clean avg' in out


def test_compare_treats_results_of_one_method_as_seeds(tmp_path, capsys):
    base_path, _ = our_checkpoint(tmp_path, 'trades', dafa=False)
    dafa_path, _ = our_checkpoint(tmp_path, 'dafa')
    paths = []
    for path in (base_path, dafa_path):
        assert run_cli(['--checkpoint', path, '--attack', 'none'], capsys)[0] == 0
        result = json.loads(open(os.path.join(os.path.dirname(path),
                                              'eval_none_epoch3.json')).read())
        for seed, (avg, worst) in enumerate(((80.0, 60.0), (82.0, 64.0)), 1):
            result['clean'].update(avg=avg + (path == dafa_path), worst=worst)
            paths.append(str(tmp_path / f"{result['method'].replace(' ', '')}{seed}.json"))
            schema.write_json(result, paths[-1])
    code, out, _ = run_cli(['--compare', *paths, '--out', str(tmp_path)], capsys)
    assert code == 0
    rows = out.split('\n\n')[1].splitlines()
    # mean ± sample std over the two seeds; rho of the means.
    assert rows[2] == '| TRADES (2 seeds) | 81.00 ± 1.41 | 62.00 ± 2.83 | - |'
    assert rows[3] == ('| TRADES + DAFA (2 seeds) | 82.00 ± 1.41 | 62.00 ± 2.83 | '
                       f'{rho(82.0, 62.0, 81.0, 62.0):.2f} |')
    # These results carry no recipe (random weights, no train.py run): said under the table.
    assert '4 of these results carry no recipe' in out
    assert (tmp_path / 'compare_per_class.png').is_file()


# RobustBench's model-card fields and their types (robustbench/model_zoo/*.json entries), and the
# block this code adds.
CARD_SCHEMA = {'name': str, 'authors': str, 'venue': str, 'architecture': str, 'eps': str,
               'dataset': str, 'clean_acc': str, 'autoattack_acc': str,
               'number_forward_passes': int, 'additional_data': bool, 'reported': str,
               'footnote': str, 'this_code': dict}


def test_export_writes_a_loadable_state_dict_and_a_model_card(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), 'scripts'))
    import export
    path, model = our_checkpoint(tmp_path)
    assert run_cli(['--checkpoint', path, '--attack', 'all', '--n_autoattack', '8'],
                   capsys)[0] == 0
    out = tmp_path / 'exported'
    assert export.main(['--result', str(tmp_path / 'run' / 'eval_all_epoch3_aa8.json'),
                        '--out', str(out)]) is None
    fresh = models.create('small-cnn', 4, 8).eval()
    fresh.load_state_dict(torch.load(out / 'model.pt', weights_only=True))  # strict, bare keys
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(fresh(x), model.eval()(x))
    card = json.loads((out / 'model_card.json').read_text())
    assert set(card) == set(CARD_SCHEMA)
    assert all(isinstance(card[k], t) for k, t in CARD_SCHEMA.items()), card
    assert card['eps'] == '0.031 (not 8/255 = 0.031373)'  # the test radius, as evaluated
    assert card['authors'] == 'Hyungyu Lee et al.' and card['venue'] == 'ICLR 2024'
    result = json.loads((tmp_path / 'run' / 'eval_all_epoch3_aa8.json').read_text())
    assert card['clean_acc'] == f"{result['clean']['avg']:.2f}"
    assert card['autoattack_acc'] == f"{result['autoattack']['avg']:.2f}"
    block = card['this_code']
    # Epoch 3 of a run of more epochs: the card does not call it the final model.
    assert block['reported_checkpoint'] == 'epoch 3' and block['epoch'] == 3
    assert 'the checkpoint of epoch 3, not the final one, is reported' in card['footnote']
    assert block['per_class']['g0a']['PGD-20'] == result['pgd20']['per_class'][0]
    assert 'AutoAttack on 8 of 20 test images' in card['footnote']
    # A checkpoint that changed since its evaluation is refused.
    torch.save(dict(torch.load(path, weights_only=False), epoch=4), path)
    with pytest.raises(UserError,
                       match='changed since it was evaluated .checkpoint_sha256 .*now epoch 4'):
        export.main(['--result', str(tmp_path / 'run' / 'eval_all_epoch3_aa8.json'),
                     '--out', str(out)])


def test_eval_cw_and_l2_write_their_own_results(tmp_path, capsys):
    path, _ = our_checkpoint(tmp_path)
    folder = tmp_path / 'run'
    assert run_cli(['--checkpoint', path, '--attack', 'cw', '--cw_num_steps', '3'], capsys)[0] == 0
    # CW-3, not the default CW-30: a file of its own (the settings' hash in its name).
    cw = json.loads(next(folder.glob('eval_cw_epoch3_s*.json')).read_text())
    assert schema.evaluations(cw) == ['clean', 'cw3'] and cw['norm'] == 'Linf'
    assert cw['attacks']['cw3']['loss'].startswith('CW margin')
    code, out, _ = run_cli(['--checkpoint', path, '--attack', 'pgd', '--norm', 'L2'], capsys)
    assert code == 0 and 'PGD-20: L2 eps 0.5, step 0.0625' in out
    l2 = json.loads((folder / 'eval_pgd_epoch3_l2.json').read_text())
    assert l2['norm'] == 'L2' and l2['epsilon'] == 0.5 and l2['attacks']['pgd20']['norm'] == 'L2'
    assert not (folder / 'eval_pgd_epoch3.json').exists()  # never in the L-inf result's place
    code, _, err = run_cli(['--checkpoint', path, '--attack', 'pgd', '--epsilon', '0.5',
                            '--baseline', str(folder / 'eval_pgd_epoch3_l2.json')], capsys)
    assert code == 2 and 'norm L2, against Linf' in err


def test_curves_draws_a_runs_training_curves(tmp_path, capsys):
    path, _ = our_checkpoint(tmp_path)  # a DAFA run: tau marked, its weights in the legend
    folder = tmp_path / 'run'
    args = train.parse_args(SYNTHETIC + ['--rob_fairness_algorithm', 'dafa', '--dafa_warmup', '2',
                                         '--model_dir', str(folder), '--device', 'cpu'])
    (folder / 'args.json').write_text(json.dumps(vars(args)))
    rows = [{'epoch': e, 'lr': 0.1, 'loss': 1.0 / e, 'loss_natural': 0.8 / e,
             'loss_robust': 0.2 / e, 'train_time_s': 1.0,
             'method_state': {'class_weights': [1.2, 1.1, 0.9, 0.8]} if e > 2 else {}}
            for e in (1, 2, 3)]
    for row in rows[1:]:
        row.update({name: {'per_class': [10.0 * row['epoch'], 20.0, 30.0, 40.0]}
                    for name in ('clean', 'pgd20')})
    (folder / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    code, out, _ = run_cli(['--curves', str(folder)], capsys)
    assert code == 0 and out.strip() == f'figure: {folder / "curves.png"}'
    assert (folder / 'curves.png').read_bytes()[:4] == PNG_MAGIC
    code, _, err = run_cli(['--curves', str(tmp_path)], capsys)
    assert code == 2 and 'no metrics.jsonl rows' in err
