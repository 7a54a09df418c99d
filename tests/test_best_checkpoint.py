"""train.py --keep_best: checkpoint-best.pt holds the epoch that scores highest on the stated
split and criterion; it survives resume and branching; eval.py, --compare and export.py say
which checkpoint they report; reproduce.py --select best_val plans it."""
import json
import os
import shutil
import sys

import pytest
import torch

import eval as eval_cli
import train
from engine import checkpoint
from engine.best import BEST
from evaluation import schema, tables
from test_train import TINY, assert_one_error_line, cli_error, latest, metrics

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'scripts'))
import reproduce  # noqa: E402
from benchmark.plan import Plan  # noqa: E402
from benchmark import tables as benchmark_tables  # noqa: E402

# 3 epochs with a validation split; --dafa_warmup 1 so that a DAFA run can branch off epoch 1.
COMMON = ['--val_per_class', '6', '--epochs', '3', '--dafa_warmup', '1']
VAL = COMMON + ['--keep_best', 'val']


def train_in(folder, *argv):
    train.main(TINY + ['--model_dir', str(folder), *argv])
    return str(folder)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """A run selecting on validation, and the same run without the selection."""
    root = tmp_path_factory.mktemp('runs')
    return train_in(root / 'val', *VAL), train_in(root / 'plain', *COMMON)


def best_file(model_dir):
    return checkpoint.load(os.path.join(model_dir, BEST))


def expected_best(rows, key, criterion):
    """(epoch, score) of the first epoch with the highest score, from the metrics rows."""
    scores = [(r[key]['avg'] + (r[key]['worst'] if criterion == 'avg+worst' else 0), r['epoch'])
              for r in rows if key in r]
    top = max(s for s, _ in scores)
    return next(e for s, e in scores if s == top), top


def assert_same_model(a, b):
    for key, value in a['model'].items():
        assert torch.equal(value, b['model'][key]), key


def test_the_best_checkpoint_is_the_top_scoring_epoch_with_its_weights(runs):
    folder, plain = runs
    rows = metrics(folder)
    assert all('val_pgd2' in r for r in rows)  # the validation split after every epoch
    epoch, score = expected_best(rows, 'val_pgd2', 'avg')
    best = best_file(folder)
    assert best['selection'] == {'split': 'val', 'criterion': 'avg', 'attack': 'pgd2',
                                 'epoch': epoch, 'score': score}
    assert rows[-1]['best'] == best['selection'] and best['epoch'] == epoch
    assert_same_model(checkpoint.load(os.path.join(folder, f'checkpoint-epoch{epoch}.pt')), best)
    # What is trained does not depend on the selection: the final model equals a plain run's.
    assert_same_model(latest(plain), latest(folder))


def test_a_resumed_run_selects_as_an_uninterrupted_one(runs, tmp_path):
    folder = shutil.copytree(runs[0], tmp_path / 'run')
    os.remove(folder / BEST)  # written again from the checkpoint's selection
    train_in(folder, *VAL, '--resume', str(folder / 'checkpoint-epoch1.pt'))
    straight, resumed = best_file(runs[0]), best_file(folder)
    assert straight['selection'] == resumed['selection']
    assert_same_model(straight, resumed)


def test_a_branch_continues_the_selection_of_its_warmup(runs, tmp_path):
    dafa = ['--rob_fairness_algorithm', 'dafa']
    straight = train_in(tmp_path / 'straight', *VAL, *dafa)
    branch = train_in(tmp_path / 'branch', *VAL, *dafa, '--resume',
                      os.path.join(runs[0], 'checkpoint-epoch1.pt'))
    a, b = best_file(straight), best_file(branch)
    assert a['selection'] == b['selection']
    assert_same_model(a, b)


def test_keep_best_test_selects_at_the_test_evaluations_by_average_and_worst(tmp_path):
    folder = train_in(tmp_path / 'run', '--keep_best', 'test', '--best_criterion', 'avg+worst',
                      '--epochs', '3', '--eval_freq', '2')
    rows = metrics(folder)
    epoch, score = expected_best(rows, 'pgd2', 'avg+worst')
    assert epoch in (2, 3) and 'val_pgd2' not in rows[-1]
    assert best_file(folder)['selection'] == {'split': 'test', 'criterion': 'avg+worst',
                                              'attack': 'pgd2', 'epoch': epoch, 'score': score}


@pytest.mark.parametrize('which,argv,match', [
    (None, ['--keep_best', 'val'], r'--keep_best val .* --val_per_class'),
    ('plain', VAL, r'did not keep the best model from its first epoch'),
    ('val', COMMON, r'pass those'),
    ('val', VAL + ['--best_criterion', 'avg+worst'], r'--best_criterion avg, as the run began'),
    ('val', VAL, r'is a best checkpoint .* checkpoint-latest.pt'),
])
def test_a_selection_not_covering_the_whole_run_is_one_error_line(runs, tmp_path, capsys, which,
                                                                  argv, match):
    """A run keeps its selection from the first epoch to the last, or has none; and
    checkpoint-best.pt is evaluated, never resumed."""
    if which is None:
        folder, before = str(tmp_path / 'new'), None
    else:
        folder = runs[0] if which == 'val' else runs[1]
        resume = BEST if 'best checkpoint' in match else 'checkpoint-epoch1.pt'
        argv = argv + ['--resume', os.path.join(folder, resume)]
        before = {name: os.path.getmtime(os.path.join(folder, name))
                  for name in os.listdir(folder)}
    code, err = cli_error(TINY + ['--model_dir', folder, *argv], capsys)
    assert_one_error_line(code, err, match)
    after = None if which is None else {name: os.path.getmtime(os.path.join(folder, name))
                                        for name in os.listdir(folder)}
    assert after == before


def test_eval_compare_and_export_say_which_checkpoint_they_report(runs, tmp_path, capsys,
                                                                  monkeypatch):
    """eval.py names and labels a best checkpoint's result, --compare keeps it apart from the
    final model's, and export.py's card says which (a real train.py checkpoint: its recipe
    holds tuples where its result's JSON holds lists)."""
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), 'scripts'))
    import export
    folder = shutil.copytree(runs[0], tmp_path / 'run')
    for name in ('checkpoint-latest.pt', BEST):
        eval_cli.main(['--checkpoint', str(folder / name), '--attack', 'pgd',
                       '--pgd_num_steps', '2', '--device', 'cpu', '--no_progress'])
    epoch = best_file(folder)['epoch']
    paths = {stem: str(folder / f'eval_pgd_{stem}.json')
             for stem in ('epoch3', f'bestval_epoch{epoch}')}
    results = {stem: schema.read_result(path, 'x') for stem, path in paths.items()}
    best = results[f'bestval_epoch{epoch}']
    assert best['selection']['split'] == 'val' and best['epoch'] == epoch
    assert 'selection' not in results['epoch3']
    labels = [label for label, _ in tables.group_results(
        [(paths[stem], results[stem]) for stem in paths])]
    assert labels == ['TRADES', 'TRADES [best on val, PGD-2 avg]']
    assert 'selected on the data it reports' in tables.selection_label(
        dict(best['selection'], split='test'))
    cards = {}
    for stem, path in paths.items():
        named = ['--dataset_name', 'toy-4'] if stem == 'epoch3' else []
        export.main(['--result', path, '--out', str(tmp_path / stem), *named])
        cards[stem] = json.loads((tmp_path / stem / 'model_card.json').read_text())
    assert cards['epoch3']['this_code']['reported_checkpoint'] == 'final'
    # What the data is called on the card (an image folder cannot say), beside the run's name.
    assert cards['epoch3']['dataset'] == 'toy-4'
    assert cards['epoch3']['this_code']['run_dataset'] == 'synthetic'
    card = cards[f'bestval_epoch{epoch}']
    assert card['this_code']['reported_checkpoint'] == 'best_val'
    assert f'best on the validation split by PGD-2 average (epoch {epoch})' in card['footnote']


def test_reproduce_select_best_val_plans_the_selection_and_refuses_runs_without_it(tmp_path):
    # Train arguments passed on (a shorter schedule) count when the split is sized.
    argv = ['--protocol', 'tiny', '--methods', 'trades,dafa,cfa', '--seeds', '1', '--device',
            'cpu', '--out', str(tmp_path), '--epochs', '4', '--dafa_warmup', '2']
    plan = Plan(reproduce.parse_args(argv + ['--select', 'best_val']))
    trains = {t.method: plan.command(t) for t in plan.tasks if t.kind == 'train'}
    evals = {t.method: plan.command(t) for t in plan.tasks if t.kind == 'eval'}
    for method, cmd in trains.items():
        assert cmd[cmd.index('--keep_best') + 1] == 'val'
        # The 500-per-class synthetic data: CFA holds out its 2%, the others the same for it.
        assert ('--val_per_class' in cmd) == (method != 'cfa')
        if method != 'cfa':
            assert cmd[cmd.index('--val_per_class') + 1] == '10'
    assert all(cmd[cmd.index('--checkpoint') + 1].endswith(BEST) for cmd in evals.values())
    assert 'Checkpoint: each run' in '\n'.join(benchmark_tables.selection_lines(plan, []))
    # A finished run of the same recipe trained without --keep_best has no best checkpoint.
    trades = next(t for t in plan.tasks if t.kind == 'train' and t.method == 'trades')
    planned = plan.planned_identity(trades)  # the same run in all but --keep_best
    ckpt = {'recipe': dict(planned, code={'fingerprint': planned['code']}), 'best': None}
    os.makedirs(trades.folder)
    checkpoint.save_atomic(dict(ckpt, epoch=1), os.path.join(trades.folder,
                                                             'checkpoint-latest.pt'))
    assert any('without --keep_best val' in s for s in plan.stale_runs())
    final = Plan(reproduce.parse_args(argv))
    assert '--keep_best' not in ' '.join(next(final.command(t) for t in final.tasks))
