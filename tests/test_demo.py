"""The CPU demo (scripts/demo.sh) end to end in its reduced mode, the distance analysis on two
distances, and the synthetic data the demo is built on (star groups, per-class noise, mirror
symmetry)."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch

import data
from data.synthetic import (SyntheticConfig, attack_reach, class_templates, make_synthetic,
                            max_close_distance, target_distances, template_distances)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b'\x89PNG'
sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import demo  # noqa: E402


def demo_config(**changes) -> SyntheticConfig:
    """The demo's synthetic data, as scripts/demo.py passes it to train.py."""
    import train
    args = train.parse_args(demo.DEMO_ARGS)
    cfg = data.synthetic_config_from_args(args)
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


# ----- the demo's data ------------------------------------------------------------------------

def test_demo_data_has_the_requested_distances():
    cfg = demo_config()
    assert cfg.close_groups == ((0, 1, 2, 3, 4),) and cfg.group_layout == 'star'
    d = template_distances(cfg, seed=1)
    hub, spokes, far = 0, [1, 2, 3, 4], [5, 6, 7, 8, 9]
    expect = lambda shape, v: torch.full(shape, v, dtype=torch.float64)  # noqa: E731
    torch.testing.assert_close(d[hub, spokes], expect((4,), 1.1))
    pairs = d[spokes][:, spokes][~torch.eye(4, dtype=torch.bool)]
    torch.testing.assert_close(pairs, expect((12,), 1.1 * 2 ** 0.5))
    torch.testing.assert_close(d[:5][:, far], expect((5, 5), 2.0))
    torch.testing.assert_close(d[far][:, far][~torch.eye(5, dtype=torch.bool)], expect((20,), 2.0))
    torch.testing.assert_close(d, target_distances(cfg))


@pytest.mark.parametrize('distance', [0.7, 1.5])
def test_distance_sweep_values_are_realizable(distance):
    cfg = demo_config(close_distance=distance)
    torch.testing.assert_close(template_distances(cfg, seed=2), target_distances(cfg))


def test_demo_data_is_deterministic_by_seed_and_balanced():
    cfg = demo_config(n_train_per_class=20, n_test_per_class=5)
    a, b, c = (make_synthetic(cfg, seed) for seed in (1, 1, 2))
    for u, v in zip(a[:4], b[:4]):
        assert torch.equal(u, v)
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (200, 3, 8, 8) and torch.bincount(a[1]).tolist() == [20] * 10
    assert a[4] == ['g0a', 'g0b', 'g0c', 'g0d', 'g0e', 'f5', 'f6', 'f7', 'f8', 'f9']


def test_templates_are_mirror_symmetric_so_flips_keep_the_task():
    for cfg in (demo_config(), SyntheticConfig(),
                SyntheticConfig(image_size=9, far_distance=2.0)):  # odd: a centre column
        t = class_templates(cfg, seed=3)
        torch.testing.assert_close(t, t.flip(-1), rtol=0, atol=1e-12)


def test_unrealizable_distances_are_refused_naming_the_largest_that_fits():
    # Four orthogonal spokes 2.0 from the hub are 2.83 apart; the far classes cannot then be
    # 2.0 from all five members and from each other. The limit is 2 * sqrt(3 / 5) = 1.549.
    cfg = demo_config(close_distance=2.0)
    with pytest.raises(ValueError, match=r'close_distance <= 1\.549'):
        template_distances(cfg, seed=1)
    assert max_close_distance(cfg) == pytest.approx(2 * 0.6 ** 0.5, abs=1e-4)
    assert max_close_distance(SyntheticConfig()) == 3.0  # a simplex group always fits


def test_class_noise_sets_one_class_spread():
    cfg = SyntheticConfig(n_train_per_class=200, n_test_per_class=1, class_noise='1=0.2')
    x, y = make_synthetic(cfg, seed=0)[:2]
    std = torch.stack([(x[y == c].float() / 255).std(0).mean() for c in range(10)])
    assert std[1] > 0.17 and (std[[0] + list(range(2, 10))] < 0.11).all()
    with pytest.raises(ValueError, match='class_noise'):
        SyntheticConfig(class_noise='10=0.1')
    with pytest.raises(ValueError, match='class_noise'):
        SyntheticConfig(class_noise='0:0.1')


def test_attack_reach_is_epsilon_times_l1_over_l2():
    cfg = demo_config()
    t = class_templates(cfg, seed=1)
    u = (t[1] - t[0]).flatten()
    assert attack_reach(cfg, 1, 0, 1, 0.031) == pytest.approx(0.031 * float(u.abs().sum() /
                                                                          u.norm()))
    # A smooth dense direction in 3 * 8 * 8 values: near eps * sqrt(2 / pi * 192) = 0.34.
    assert 0.25 < attack_reach(cfg, 1, 0, 1, 0.031) < 0.45


# ----- the demo and the distance analysis, reduced ----------------------------------------------

def test_demo_quick_writes_table_figure_and_summary(tmp_path):
    start = time.time()
    proc = subprocess.run(['bash', os.path.join(ROOT, 'scripts', 'demo.sh'), '--quick',
                           '--out', str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    elapsed = time.time() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert elapsed < 60, f'the reduced demo took {elapsed:.0f} s'
    # The paper's Table 1 layout from eval.py --compare, TRADES first (the baseline of rho).
    header = next(line for line in out.splitlines() if line.startswith('method'))
    assert header.split() == ['method', 'avg', 'worst', 'rho_nat', 'avg', 'worst', 'rho_rob']
    lines = out.splitlines()
    i = lines.index(header)
    assert lines[i + 1].startswith('TRADES ') and lines[i + 2].startswith('TRADES + DAFA')
    assert 'DAFA class weights W' in out and 'worst-class PGD-20: TRADES' in out

    seed_dir = tmp_path / 'seed1'
    assert (seed_dir / 'compare_per_class.png').read_bytes()[:4] == PNG_MAGIC
    summary = json.loads((tmp_path / 'summary.json').read_text())
    row, = summary['seeds']
    assert row['seed'] == 1 and len(row['class_weights']) == 10
    assert abs(sum(row['class_weights']) - 10) < 1e-3  # DAFA keeps sum(W) = C
    for name in ('trades', 'trades_dafa'):
        result = json.loads((seed_dir / name / 'eval_pgd_epoch3.json').read_text())
        assert result['n_eval'] == 100 and result['epsilon'] == 0.031
        assert row[name]['pgd20']['per_class'] == result['pgd20']['per_class']
        assert (seed_dir / name / 'checkpoint-epoch2.pt').exists() or name == 'trades_dafa'
    dafa_args = json.loads((seed_dir / 'trades_dafa' / 'args.json').read_text())
    assert dafa_args['resume'].endswith(os.path.join('trades', 'checkpoint-epoch2.pt'))
    assert dafa_args['dafa_lambda'] == demo.DEMO_LAMBDA


def test_distance_analysis_quick_two_distances(tmp_path):
    figure = tmp_path / 'distance.png'
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'distance_analysis.py'),
                           '--distances', '0.9,1.5', '--out', str(tmp_path), '--figure',
                           str(figure), '--quick'], cwd=ROOT, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert figure.read_bytes()[:4] == PNG_MAGIC
    rows = json.loads((tmp_path / 'results.json').read_text())['rows']
    assert [r['distance'] for r in rows] == [0.9, 1.5]
    assert all(0.25 < r['reach'] < 0.45 for r in rows)
    assert '| 0.9 |' in proc.stdout and '| 1.5 |' in proc.stdout


def test_distance_analysis_of_runs_finds_each_class_nearest_and_its_error_share(tmp_path,
                                                                                capsys):
    """--runs: the nearest class by the recorded warm-up similarity, and the share of the
    class's PGD errors predicting it, averaged over runs (a run without errors there is left
    out of that class's mean)."""
    import distance_analysis
    names = ['cat', 'dog', 'ship']
    similarity = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.7, 0.05], [0.1, 0.3, 0.6]])
    confusions = ([[6, 3, 1], [2, 8, 0], [0, 0, 10]],   # cat: 3 of 4 errors to dog
                  [[8, 1, 1], [1, 9, 0], [0, 2, 8]])    # cat: 1 of 2; ship: 2 of 2 to dog
    folders = []
    for k, confusion in enumerate(confusions):
        folder = tmp_path / f'seed{k}'
        folder.mkdir()
        torch.save({'format': 2, 'epoch': 20, 'class_names': names,
                    'records': {'similarity': {'epoch': 7, 'value': similarity}}},
                   folder / 'checkpoint-latest.pt')
        (folder / 'eval_all_epoch20.json').write_text(json.dumps(
            {'epoch': 20, 'n_eval': 30, 'confusion': {'clean': confusion, 'pgd20': confusion}}))
        folders.append(str(folder))
    figure = tmp_path / 'real.png'
    distance_analysis.main(['--runs', *folders, '--figure', str(figure)])
    out = capsys.readouterr().out
    assert figure.read_bytes()[:4] == PNG_MAGIC
    assert '| cat | 70.0% | dog (0.200) | 62% |' in out  # (75% + 50%) / 2
    assert '| dog | 85.0% | cat (0.250) | 100% |' in out
    assert '| ship | 90.0% | dog (0.300) | 100% |' in out  # the first run has no ship errors
