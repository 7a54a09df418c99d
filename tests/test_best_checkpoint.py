"""train.py --keep_best: checkpoint-best.pt holds the epoch that scores highest on the stated
split and criterion; it survives resume and branching; eval.py, --compare and export.py say
which checkpoint they report; reproduce.py --select best_val plans it."""
import json
import os
import sys

import pytest
import torch

import eval as eval_cli
import train
from engine import checkpoint
from engine.best import BEST
from evaluation import report
from test_train import TINY, assert_one_error_line, cli_error, latest, metrics, run

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'scripts'))
import reproduce  # noqa: E402

VAL = ['--keep_best', 'val', '--val_per_class', '6', '--epochs', '4']


def best_file(model_dir):
    return checkpoint.load(os.path.join(model_dir, BEST))


def expected_best(rows, key, criterion):
    """(epoch, score) of the first epoch with the highest score, from the metrics rows."""
    scores = [(r[key]['avg'] + (r[key]['worst'] if criterion == 'avg+worst' else 0), r['epoch'])
              for r in rows if key in r]
    top = max(s for s, _ in scores)
    return next(e for s, e in scores if s == top), top


@pytest.mark.parametrize('criterion', ['avg', 'avg+worst'])
def test_the_best_checkpoint_is_the_top_scoring_epoch_with_its_weights(tmp_path, criterion):
    folder = run(tmp_path, 'run', *VAL, '--best_criterion', criterion)
    rows = metrics(folder)
    assert all('val_pgd2' in r for r in rows)  # the validation split after every epoch
    epoch, score = expected_best(rows, 'val_pgd2', criterion)
    best = best_file(folder)
    assert best['selection'] == {'split': 'val', 'criterion': criterion, 'attack': 'pgd2',
                                 'epoch': epoch, 'score': score}
    assert rows[-1]['best'] == best['selection']
    kept = checkpoint.load(os.path.join(folder, f'checkpoint-epoch{epoch}.pt'))
    assert best['epoch'] == epoch
    for key, value in kept['model'].items():
        assert torch.equal(value, best['model'][key]), key
    # What is trained does not depend on the selection: the final model equals a plain run's.
    plain = run(tmp_path, 'plain', '--val_per_class', '6', '--epochs', '4')
    for key, value in latest(plain)['model'].items():
        assert torch.equal(value, latest(folder)['model'][key]), key


def test_a_resumed_run_selects_as_an_uninterrupted_one(tmp_path):
    folder = run(tmp_path, 'run', *VAL)
    straight = best_file(folder)
    os.remove(os.path.join(folder, BEST))  # written again from the checkpoint's selection
    train.main(TINY + ['--model_dir', folder, *VAL, '--resume',
                       os.path.join(folder, 'checkpoint-epoch2.pt')])
    resumed = best_file(folder)
    assert straight['selection'] == resumed['selection']
    for key, value in straight['model'].items():
        assert torch.equal(value, resumed['model'][key]), key


def test_a_branch_continues_the_selection_of_its_warmup(tmp_path):
    dafa = ['--rob_fairness_algorithm', 'dafa', '--dafa_warmup', '2']
    straight = run(tmp_path, 'straight', *VAL, *dafa)
    parent = run(tmp_path, 'parent', *VAL, '--dafa_warmup', '2')
    branch = run(tmp_path, 'branch', *VAL, *dafa, '--resume',
                 os.path.join(parent, 'checkpoint-epoch2.pt'))
    a, b = best_file(straight), best_file(branch)
    assert a['selection'] == b['selection']
    for key, value in a['model'].items():
        assert torch.equal(value, b['model'][key]), key


def test_keep_best_test_selects_at_the_test_evaluations(tmp_path):
    folder = run(tmp_path, 'run', '--keep_best', 'test', '--epochs', '4', '--eval_freq', '2')
    rows = metrics(folder)
    epoch, _ = expected_best(rows, 'pgd2', 'avg')
    assert epoch in (2, 4) and best_file(folder)['epoch'] == epoch
    assert 'val_pgd2' not in rows[-1]


@pytest.mark.parametrize('setup,argv,match', [
    (None, ['--keep_best', 'val'], r'--keep_best val .* --val_per_class'),
    ([], ['--keep_best', 'val'], r'did not keep the best model from its first epoch'),
    (['--keep_best', 'val'], [], r'pass those'),
    (['--keep_best', 'val'], ['--keep_best', 'val', '--best_criterion', 'avg+worst'],
     r'--best_criterion avg, as the run began'),
])
def test_a_selection_not_covering_the_whole_run_is_one_error_line(
        tmp_path, capsys, setup, argv, match):
    """A run keeps its selection from the first epoch to the last, or has none."""
    folder, common = str(tmp_path / 'run'), ['--epochs', '3']
    if setup is not None:
        common += ['--val_per_class', '6']
        train.main(TINY + ['--model_dir', folder, *common, *setup])
        argv = argv + ['--resume', os.path.join(folder, 'checkpoint-epoch2.pt')]
    before = sorted(os.listdir(folder)) if setup is not None else None
    code, err = cli_error(TINY + ['--model_dir', folder, *common, *argv], capsys)
    assert_one_error_line(code, err, match)
    assert (sorted(os.listdir(folder)) if setup is not None else None) == before


def test_the_best_checkpoint_is_not_resumed_from(tmp_path, capsys):
    folder = run(tmp_path, 'run', *VAL[:-1], '2')
    code, err = cli_error(TINY + ['--model_dir', folder, *VAL, '--resume',
                                  os.path.join(folder, BEST)], capsys)
    assert_one_error_line(code, err, r'is a best checkpoint .* checkpoint-latest.pt')


def test_eval_names_and_labels_a_best_checkpoint_and_compare_keeps_it_apart(tmp_path, capsys):
    folder = run(tmp_path, 'run', *VAL)
    eval_cli.main(['--checkpoint', os.path.join(folder, 'checkpoint-latest.pt'),
                   '--attack', 'pgd', '--pgd_num_steps', '2', '--device', 'cpu',
                   '--no_progress'])
    eval_cli.main(['--checkpoint', os.path.join(folder, BEST), '--attack', 'pgd',
                   '--pgd_num_steps', '2', '--device', 'cpu', '--no_progress'])
    epoch = best_file(folder)['epoch']
    best_path = os.path.join(folder, f'eval_pgd_bestval_epoch{epoch}.json')
    with open(best_path) as f:
        result = json.load(f)
    assert result['selection']['split'] == 'val' and result['epoch'] == epoch
    final_path = os.path.join(folder, 'eval_pgd_epoch4.json')
    with open(final_path) as f:
        assert 'selection' not in json.load(f)
    labels = [label for label, _ in report.group_results([
        (final_path, report.read_result(final_path, 'x')), (best_path, result)])]
    assert labels == ['TRADES', 'TRADES [best on val, PGD-2 avg]']
    test_chosen = dict(result['selection'], split='test')
    assert 'selected on the data it reports' in report.selection_label(test_chosen)


def test_reproduce_select_best_val_plans_the_selection_and_refuses_runs_without_it(tmp_path):
    argv = ['--protocol', 'tiny', '--methods', 'trades,dafa,cfa', '--seeds', '1', '--device',
            'cpu', '--out', str(tmp_path)]
    plan = reproduce.Plan(reproduce.parse_args(argv + ['--select', 'best_val']))
    trains = {t.method: plan.command(t) for t in plan.tasks if t.kind == 'train'}
    evals = {t.method: plan.command(t) for t in plan.tasks if t.kind == 'eval'}
    for method, cmd in trains.items():
        assert cmd[cmd.index('--keep_best') + 1] == 'val'
        # The 500-per-class synthetic data: CFA holds out its 2%, the others the same for it.
        assert ('--val_per_class' in cmd) == (method != 'cfa')
        if method != 'cfa':
            assert cmd[cmd.index('--val_per_class') + 1] == '10'
    assert all(cmd[cmd.index('--checkpoint') + 1].endswith(BEST) for cmd in evals.values())
    assert 'Checkpoint: each run' in '\n'.join(reproduce.selection_lines(plan, []))
    # A finished run of the same recipe trained without --keep_best has no best checkpoint.
    trades = next(t for t in plan.tasks if t.kind == 'train' and t.method == 'trades')
    ckpt = {'recipe': {'args': plan.recipe_args(trades)}, 'best': None}
    os.makedirs(trades.folder)
    checkpoint.save_atomic(dict(ckpt, epoch=1), os.path.join(trades.folder,
                                                             'checkpoint-latest.pt'))
    assert any('without --keep_best val' in s for s in plan.stale_runs())
    final = reproduce.Plan(reproduce.parse_args(argv))
    assert '--keep_best' not in ' '.join(next(final.command(t) for t in final.tasks))


def test_export_of_a_trained_run_and_of_its_best_checkpoint(tmp_path, capsys, monkeypatch):
    """A real train.py checkpoint (its recipe holds tuples, its result's JSON lists) exports;
    the card of the best checkpoint says it is not the final model."""
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), 'scripts'))
    import export
    folder = run(tmp_path, 'run', *VAL)
    for name in ('checkpoint-latest.pt', BEST):
        eval_cli.main(['--checkpoint', os.path.join(folder, name), '--attack', 'pgd',
                       '--pgd_num_steps', '2', '--device', 'cpu', '--no_progress'])
    epoch = best_file(folder)['epoch']
    cards = {}
    for stem in ('epoch4', f'bestval_epoch{epoch}'):
        export.main(['--result', os.path.join(folder, f'eval_pgd_{stem}.json'),
                     '--out', str(tmp_path / stem)])
        cards[stem] = json.loads((tmp_path / stem / 'model_card.json').read_text())
    assert cards['epoch4']['this_code']['reported_checkpoint'] == 'final'
    best = cards[f'bestval_epoch{epoch}']
    assert best['this_code']['reported_checkpoint'] == 'best_val'
    assert f'best on the validation split by PGD-2 average (epoch {epoch})' in best['footnote']
