"""One identity, compared everywhere (engine/identity.py): a run or result is reused, pooled,
compared as a baseline or exported only as the same experiment, and a refusal names the field."""
import copy
import json
import os
import shutil
import socket
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import eval as eval_cli
import train
from engine import checkpoint, identity, run
from engine.cli import UserError
from evaluation import schema, tables
from test_eval import our_checkpoint, run_cli
from test_identity import write_images
from test_train import TINY

import reproduce  # noqa: E402  (scripts/ is on the path through test_identity)
from benchmark.plan import Plan  # noqa: E402

EXPORT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'scripts')
sys.path.insert(0, EXPORT)
import export  # noqa: E402


def refusal(fn, argv, capsys) -> str:
    """fn(argv) must exit 2 with one `error:` line; that line."""
    try:
        code = fn(argv)
    except SystemExit as err:
        code = err.code
    err = capsys.readouterr().err
    assert code == 2 and err.count('\n') == 1 and err.startswith('error: '), err
    return err


# ----- the code's identity ---------------------------------------------------------------------

PLUGIN = '''"""A method of its own."""
import torch


def weight(x):
    """The formula."""
    return x * 2  # doubled
'''


def test_the_code_fingerprint_follows_formulas_not_comments(tmp_path, monkeypatch):
    (tmp_path / 'fp_plugin.py').write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = identity.code_fingerprint()
    monkeypatch.setenv('FAIRNESS_PLUGINS', 'fp_plugin')
    with_plugin = identity.code_fingerprint()
    assert with_plugin != before  # an untracked plugin file is part of the code
    (tmp_path / 'fp_plugin.py').write_text(
        PLUGIN.replace('# doubled', '# twice').replace('The formula.', 'Twice x.') + '\n\n')
    assert identity.code_fingerprint() == with_plugin  # comments, docstrings, blank lines
    (tmp_path / 'fp_plugin.py').write_text(PLUGIN.replace('x * 2', 'x * 3'))
    assert identity.code_fingerprint() != with_plugin  # a formula


def test_differences_name_every_differing_field():
    old = {'args': {'lr': 0.1, 'seed': 1}, 'data': {'train_sha256': 'a' * 64}, 'code': 'c1'}
    new = copy.deepcopy(old)
    new['args']['lr'], new['data']['train_sha256'], new['code'] = 0.2, 'b' * 64, 'c2'
    diff = identity.differences(old, new)
    assert list(diff) == ['args.lr', 'code', 'data.train_sha256']
    assert identity.differences(old, new, ignore=('args', 'data', 'code')) == {}
    text = identity.describe(diff)
    assert '--lr 0.1 -> 0.2' in text and 'data.train_sha256 aaaaaaaaaaaa... -> bbbb' in text


# ----- reproduce.py: runs and results reused only under their identity ----------------------------

FOLDER = ['--protocol', 'cpu', '--methods', 'trades', '--seeds', '1', '--device', 'cpu',
          '--epochs', '1', '--n_train', '24', '--n_eval', '4', '--attack', 'pgd',
          '--batch_size', '8', '--pgd_num_steps', '1', '--test_pgd_num_steps', '1',
          '--lr_schedule', 'constant', '--no-channels_last']


def folder_plan(data_dir, out, *extra):
    return Plan(reproduce.parse_args(FOLDER + ['--data_dir', str(data_dir), '--out',
                                                         str(out), *extra]))


@pytest.fixture
def folder_run(tmp_path):
    """A finished run of reproduce.py's plan on an image folder, and its evaluation's result."""
    data = tmp_path / 'a'
    write_images(data, 0)
    plan = folder_plan(data, tmp_path / 'out')
    trades, evaluation = plan.tasks
    train.main(plan.train_command(trades))
    assert eval_cli.cli(plan.command(evaluation)[1:]) == 0
    assert plan.finished(trades) and plan.finished(evaluation) and not plan.stale_runs()
    return data, plan


def test_reproduce_refuses_a_run_trained_on_other_images_with_the_same_classes(
        tmp_path, folder_run, capsys):
    data, plan = folder_run
    other = tmp_path / 'b'
    shutil.copytree(data, other)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(other / 'train' / 'a' / '0.png')
    err = refusal(reproduce.main, FOLDER + ['--data_dir', str(other), '--out',
                                            plan.args.out], capsys)
    assert 'data.train_sha256' in err and plan.tasks[0].folder in err
    assert f'delete {plan.tasks[0].folder}' in err  # the repair, for that run only


def test_reproduce_refuses_runs_and_results_of_other_code_unless_told(
        folder_run, monkeypatch, capsys):
    data, plan = folder_run
    monkeypatch.setattr(identity, 'code_fingerprint', lambda: 'another0version0')
    err = refusal(reproduce.main, FOLDER + ['--data_dir', str(data), '--out', plan.args.out],
                  capsys)
    assert 'code ' in err and '--reuse_other_code' in err
    other = folder_plan(data, plan.args.out)
    assert not other.finished(other.tasks[1])  # the result too: made by other code
    told = folder_plan(data, plan.args.out, '--reuse_other_code')
    assert not told.stale_runs() and told.finished(told.tasks[1])


def test_reproduce_finds_its_result_by_identity_not_by_a_file_name(folder_run, capsys):
    data, plan = folder_run
    evaluation = plan.tasks[1]
    path, result = plan.result_of(evaluation)
    # Another evaluation of the same checkpoint (other radius, rule and seed): its own file,
    # never the plan's result, which stays as it was.
    before = open(path).read()
    assert eval_cli.cli(plan.command(evaluation)[1:] + [
        '--epsilon', '0.02', '--pgd_rule', 'every', '--seed', '5']) == 0
    assert open(path).read() == before
    assert len([f for f in os.listdir(evaluation.folder) if f.startswith('eval_')
                and f.endswith('.json')]) == 2
    assert plan.result_of(evaluation)[0] == path
    # The plan's result under another name is still found; a result of other weights is not.
    moved = path.replace('.json', '_renamed.json')
    os.replace(path, moved)
    assert plan.result_of(evaluation)[0] == moved
    ckpt = torch.load(plan.evaluated(evaluation), weights_only=False)
    ckpt['model'] = {k: v + 1 for k, v in ckpt['model'].items()}
    torch.save(ckpt, plan.evaluated(evaluation))
    assert plan.result_of(evaluation) is None


def test_reproduce_resumes_a_fine_tuned_run_without_its_init_weights(tmp_path):
    """An interrupted run started with --init_weights resumes (it was refused either way)."""
    start = str(tmp_path / 'start')
    train.main(TINY + ['--model_dir', start, '--epochs', '1'])
    args = TINY + ['--lr_schedule', 'constant', '--model_dir', str(tmp_path / 'ft')]
    train.main(args + ['--epochs', '1', '--init_weights', run.checkpoint_path(start)])
    resume = ['--resume', run.checkpoint_path(str(tmp_path / 'ft'))]
    train.main(args + ['--epochs', '2', *resume])
    train.main(args + ['--epochs', '3', *resume, '--init_weights', run.checkpoint_path(start)])
    assert [r['epoch'] for r in run.metrics_rows(str(tmp_path / 'ft'))] == [1, 2, 3]
    other = str(tmp_path / 'other')
    train.main(TINY + ['--model_dir', other, '--epochs', '1', '--seed', '2'])
    with pytest.raises(UserError, match='the --init_weights file differs'):
        train.main(args + ['--epochs', '4', *resume, '--init_weights',
                           run.checkpoint_path(other)])


# ----- results: one file per evaluation, pooled and compared only as the same experiment ----------

@pytest.fixture
def result(tmp_path, capsys):
    path, _ = our_checkpoint(tmp_path)
    assert run_cli(['--checkpoint', path, '--attack', 'pgd', '--device', 'cpu'], capsys)[0] == 0
    with open(tmp_path / 'run' / 'eval_pgd_epoch3.json') as f:
        return json.load(f)


# Each field of a result's identity, and a change of it alone. (A recipe is given to the
# checkpoint-less fixture's result, so the run's fields are there to change.)
CHANGES = {
    'run.args.lr': lambda r: r['recipe']['args'].update(lr=0.05),
    'run.data.train_sha256': lambda r: r['recipe']['data'].update(train_sha256='b' * 64),
    'run.data.test_sha256': lambda r: r['recipe']['data'].update(test_sha256='c' * 64),
    'run.data.validation': lambda r: r['recipe']['data'].update(validation={'per_class': 2}),
    'run.code': lambda r: r['recipe']['code'].update(fingerprint='0' * 16),
    'epoch': lambda r: r.update(epoch=1),
    'selection': lambda r: r.update(selection={'split': 'val', 'criterion': 'avg',
                                               'attack': 'pgd2', 'epoch': 3, 'score': 1.0}),
    'evaluation.seed': lambda r: (r['evaluation'].update(seed=5), r.update(seed=5)),
    'attacks.pgd20.step_size': lambda r: r['attacks']['pgd20'].update(step_size=0.01),
    'attacks.pgd20.rule': lambda r: r['attacks']['pgd20'].update(rule='every'),
    'epsilon': lambda r: r.update(epsilon=0.02),
    'n_eval': lambda r: r.update(n_eval=8),
    'images_sha256': lambda r: r.update(images_sha256='d' * 64),
    'inputs': lambda r: r.update(inputs={'range': [0, 1], 'normalize': {'mean': [0.5] * 3,
                                                                         'std': [0.5] * 3}}),
    'code': lambda r: r['code'].update(fingerprint='1' * 16),
}
# The fields a baseline must share (the others are the two runs': a baseline is another run).
BASELINE = ('evaluation.seed', 'attacks.pgd20.step_size', 'attacks.pgd20.rule', 'epsilon',
            'n_eval', 'images_sha256', 'inputs')


def with_recipe(result):
    real = copy.deepcopy(result)
    real['dataset'] = 'folder'  # images of their own, not drawn from the seed
    real['recipe'] = {'args': {'seed': 1, 'lr': 0.1, 'dataset': 'folder'},
                      'data': {'train_sha256': 'a' * 64, 'test_sha256': 'e' * 64,
                               'validation': None, 'init_weights_sha256': None},
                      'code': identity.code_version()}
    return real


@pytest.mark.parametrize('field', list(CHANGES))
def test_results_differing_in_one_identity_field_are_never_the_same_experiment(result, field):
    a = with_recipe(result)
    b = copy.deepcopy(a)
    CHANGES[field](b)
    b['recipe']['args']['seed'] = 2  # another seed: what a group's members may differ in
    diff = identity.differences(identity.result_identity(a), identity.result_identity(b))
    assert any(f == field or f.startswith(field + '.') for f in diff), diff
    # Reused: reproduce.py takes a result only when nothing but the weights differs.
    # Pooled: never seeds of one group, and the label names the field.
    groups = tables.group_results([('x/a.json', a), ('y/b.json', b)])
    assert len(groups) == 2, [label for label, _ in groups]
    if field != 'selection':  # a best checkpoint is labelled by how it was chosen
        shown = field[len('run.args.'):] if field.startswith('run.args.') else field
        assert any(shown.split('.')[0] in label for label, _ in groups), groups
    # As a baseline: refused, naming the field, when it is one of the evaluation's.
    if field in BASELINE:
        with pytest.raises(UserError, match='evaluate both the same way'):
            schema.add_baseline(b, a, 'a.json')


def test_the_seeds_of_one_experiment_are_pooled(result):
    a = with_recipe(result)
    b = copy.deepcopy(a)
    b['recipe']['args']['seed'], b['checkpoint_sha256'] = 2, 'f' * 64
    (label, members), = tables.group_results([('x/a.json', a), ('y/b.json', b)])
    assert len(members) == 2 and label == a['method']


def test_two_foreign_checkpoints_in_one_folder_are_two_rows(result):
    a = copy.deepcopy(result)
    a.update(recipe=None, method=None)
    b = dict(copy.deepcopy(a), checkpoint_sha256='9' * 64)
    groups = tables.group_results([('official/a.json', a), ('official/b.json', b)])
    assert len(groups) == 2 and all('checkpoint_sha256' in label for label, _ in groups)


def test_export_refuses_weights_other_than_the_evaluated_ones(tmp_path, capsys):
    path, _ = our_checkpoint(tmp_path)
    assert run_cli(['--checkpoint', path, '--attack', 'none', '--device', 'cpu'], capsys)[0] == 0
    result = str(tmp_path / 'run' / 'eval_none_epoch3.json')
    ckpt = torch.load(path, weights_only=False)
    ckpt['model'] = {k: v * 0.5 for k, v in ckpt['model'].items()}  # a retrain: same epoch
    torch.save(ckpt, path)
    with pytest.raises(UserError, match='checkpoint_sha256'):
        export.export(export.parse_args(['--result', result, '--out', str(tmp_path / 'x')]))


def test_a_branching_methods_best_epoch_is_one_of_its_own(tmp_path):
    best = ['--keep_best', 'val', '--val_per_class', '4', '--lr_schedule', 'constant']
    straight = str(tmp_path / 'dafa')
    train.main(TINY + ['--model_dir', straight, '--epochs', '3', '--rob_fairness_algorithm',
                       'dafa', '--dafa_warmup', '1', *best])
    rows = run.metrics_rows(straight)
    assert rows[0]['best']['epoch'] is None  # the warm-up epoch is never selected
    assert all(r['best']['epoch'] >= 2 for r in rows[1:])
    parent = str(tmp_path / 'trades')
    train.main(TINY + ['--model_dir', parent, '--epochs', '2', '--dafa_warmup', '1', *best])
    branch = str(tmp_path / 'branch')
    train.main(TINY + ['--model_dir', branch, '--epochs', '3', '--rob_fairness_algorithm',
                       'dafa', '--dafa_warmup', '1', *best,
                       '--resume', run.checkpoint_path(parent, 1)])
    # Not the parent's epoch 1, whatever it scored.
    assert all(r['best']['epoch'] >= 2 for r in run.metrics_rows(branch))
    kept = torch.load(os.path.join(branch, 'checkpoint-best.pt'), weights_only=False)
    assert kept['selection']['epoch'] >= 2


def test_a_branch_whose_parent_lost_its_checkpoint_says_how_to_recreate_it(tmp_path):
    plan = Plan(reproduce.parse_args(['--protocol', 'tiny', '--methods', 'dafa',
                                                '--seeds', '1', '--out', str(tmp_path),
                                                '--device', 'cpu']))
    dafa = next(t for t in plan.tasks if t.kind == 'train' and t.method == 'dafa')
    why = plan.blocked_by(dafa)
    assert 'checkpoint-epoch10.pt' in why and f'delete {dafa.depends[0].folder}' in why


# ----- flags and paths: one `error:` line, before anything is trained or written ----------------

def test_bad_numbers_are_one_error_line_before_training(tmp_path, capsys):
    folder = str(tmp_path / 'run')
    for extra, named in ((['--lr', '1e308'], '--lr must be'),
                         (['--synthetic_noise', 'nan'], 'noise std must be a finite number')):
        err = refusal(train.cli, TINY + ['--model_dir', folder, '--epochs', '1', *extra], capsys)
        assert named in err
        assert not os.path.exists(folder)
    small = ['--protocol', 'tiny', '--out', str(tmp_path / 'out'), '--device', 'cpu']
    for extra, named in ((['--epochs', '0'], '--epochs must be >= 1'),
                         (['--n_eval', '-5'], '--n_eval must be >= 1'),
                         (['--attack', 'pgd', '--n_autoattack', '50'], 'runs no AutoAttack'),
                         (['--sweep', 'dafa_lambda=0.5,0.50'], 'distinct values')):
        assert named in refusal(reproduce.main, small + extra, capsys)
    assert not os.path.exists(tmp_path / 'out')


def test_eval_flags_and_an_out_that_is_a_file_are_one_error_line(tmp_path, capsys):
    path, _ = our_checkpoint(tmp_path)
    taken = tmp_path / 'taken'
    taken.write_text('a file of the user')
    for extra, named in ((['--epsilon', '8'], 'pixel units 0-1'),
                         (['--epsilon', 'inf'], 'finite'),
                         (['--normalize', 'nan,0.5,0.5,0.2,0.2,0.2'], '--normalize'),
                         (['--out', str(taken)], 'is a file, not a folder')):
        code, _, err = run_cli(['--checkpoint', path, '--attack', 'none', *extra], capsys)
        assert code == 2 and err.count('\n') == 1 and named in err, err
    assert taken.read_text() == 'a file of the user'
    assert run_cli(['--checkpoint', path, '--attack', 'none'], capsys)[0] == 0
    result = str(tmp_path / 'run' / 'eval_none_epoch3.json')
    for argv in (['--compare', result, '--out', str(taken)],
                 ['--curves', str(tmp_path / 'run'), '--out', str(taken)]):
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and err.count('\n') == 1, err
    with pytest.raises(UserError, match='is a file, not a folder'):
        export.export(export.parse_args(['--result', result, '--out', str(taken)]))


def test_distance_analysis_writes_no_tracked_file_by_default(tmp_path, capsys):
    import distance_analysis
    args = distance_analysis.parse_args(['--runs', str(tmp_path), '--out', str(tmp_path / 'o')])
    assert args.figure == str(tmp_path / 'o' / 'distance_real.png')
    args = distance_analysis.parse_args(['--out', str(tmp_path / 'o')])
    assert args.figure == str(tmp_path / 'o' / 'distance_analysis.png')
    assert distance_analysis.run_main(distance_analysis.main, ['--runs', str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith('error: ')


# ----- the machine: provenance beside the identity, never part of it ------------------------------

def test_runs_and_results_record_the_machine_and_tables_say_when_machines_differ(
        tmp_path, result):
    folder = str(tmp_path / 'trained')
    train.main(TINY + ['--model_dir', folder, '--epochs', '1'])
    ckpt = torch.load(run.checkpoint_path(folder), weights_only=False)
    here = ckpt['recipe']['machine']
    assert here['cpu_capability'] == torch.backends.cpu.get_cpu_capability()
    assert here['threads'] == torch.get_num_threads() and here['torch'] == torch.__version__
    assert ckpt['code_history'][0]['machine'] == here
    assert result['machine']['cpu_capability'] == torch.backends.cpu.get_cpu_capability()
    a = with_recipe(result)
    a['recipe']['machine'] = dict(here)
    b = copy.deepcopy(a)
    b['recipe']['args']['seed'] = 2
    b['recipe']['machine']['cpu_capability'] = 'AVX2' if here['cpu_capability'] != 'AVX2' \
        else 'AVX512'
    (label, members), = tables.group_results([('r/s1/a.json', a), ('r/s2/b.json', b)])
    assert len(members) == 2  # one experiment: the machine is not part of its identity
    lines = tables.machine_lines([('r/s1/a.json', a), ('r/s2/b.json', b)])
    assert 'more than one kind of machine' in lines[0] and len(lines) == 3
    assert tables.machine_lines([('r/s1/a.json', a)])[0].startswith('Machine: ')


def test_a_crafted_lock_is_taken_over_or_one_error_and_a_full_disk_leaves_none(tmp_path,
                                                                                monkeypatch):
    folder = tmp_path / 'out'
    folder.mkdir()
    lock = folder / run.LOCK
    lock.write_text(f'{10 ** 30} {socket.gethostname()}\n')  # a pid no process can have
    release, note = run.lock(str(folder), '--out')
    assert 'took over' in note
    release()
    lock.mkdir()  # something of the lock's name that is not a lock
    with pytest.raises(UserError, match='cannot take over the lock file .* delete it'):
        run.lock(str(folder), '--out')
    lock.rmdir()

    def full_disk(fd, mode):
        f = open_fd(fd, mode)

        def write(text):
            raise OSError(28, 'No space left on device')
        f.write = write
        return f
    open_fd = os.fdopen
    monkeypatch.setattr(os, 'fdopen', full_disk)
    with pytest.raises(UserError, match='cannot write the lock file .*No space left'):
        run.lock(str(folder), '--out')
    assert not lock.exists()  # no empty lock is left for the next run to trip on


WRONG = (None, 7, 'x', [1, 'a'], {'a': 1})


def test_a_crafted_result_is_refused_in_one_line_or_read(result, tmp_path):
    """Every top-level field of a result, and of its summaries, replaced by a value of another
    type: --compare and --baseline read it or refuse it with a UserError (one error line),
    never a traceback."""
    result = with_recipe(result)
    result['selection'] = {'split': 'val', 'criterion': 'avg', 'attack': 'pgd20', 'epoch': 3,
                           'score': 1.0}
    good = str(tmp_path / 'good.json')
    schema.write_json(result, good)
    fields = [(key,) for key in result] + [(name, key) for name in schema.evaluations(result)
                                           for key in result[name]]
    fields += [(key, sub) for key in ('recipe', 'attacks', 'selection', 'evaluation', 'inputs',
                                      'code', 'machine') for sub in result[key]]
    fields += [('recipe', 'args', 'seed'), ('recipe', 'args', 'dataset')]
    fields += [('attacks', name, key) for name in result['attacks']
               for key in result['attacks'][name]]
    for field in fields:
        for value in WRONG:
            crafted = copy.deepcopy(result)
            target = crafted
            for key in field[:-1]:
                target = target[key]
            target[field[-1]] = value
            path = str(tmp_path / 'crafted.json')
            with open(path, 'w') as f:
                json.dump(crafted, f)
            try:
                results = [(good, schema.read_result(good, '--compare')),
                           (path, schema.read_result(path, '--compare'))]
                tables.compare_tables(results)
                tables.spread_table(results)
                tables.comparison_notes(results)
                tables.machine_lines(results)
                schema.add_baseline(copy.deepcopy(result), results[1][1], path)
            except UserError:
                pass
            except Exception as err:
                raise AssertionError(f'{field} = {value!r}: {type(err).__name__}: {err}')


def test_a_crafted_training_checkpoint_is_refused_in_one_line_before_anything_is_written(
        tmp_path, capsys):
    """Every field of a train.py checkpoint replaced by a value of another type: --resume
    resumes from it or refuses it with one error line naming the file, writing nothing."""
    base = str(tmp_path / 'base')
    train.main(TINY + ['--model_dir', base, '--epochs', '2'])
    ckpt = torch.load(run.checkpoint_path(base, 1), weights_only=True)
    crafted_path, new = str(tmp_path / 'crafted.pt'), tmp_path / 'new'
    refused = []
    for key in ckpt:
        for value in (None, 'x', {'a': 1}):
            crafted = dict(ckpt, **{key: value})
            if checkpoint.train_checkpoint_problem(crafted) and key not in ('rng', 'epoch'):
                refused.append(key)  # refused by read_resume before anything else
                continue
            torch.save(crafted, crafted_path)
            code = train.cli(TINY + ['--model_dir', str(new), '--epochs', '2', '--resume',
                                     crafted_path])
            err = capsys.readouterr().err
            assert code in (0, 2) and 'Traceback' not in err, (key, value, err)
            if code == 2:
                assert err.count('\n') == 1 and crafted_path in err, (key, value, err)
                assert not new.exists(), (key, value)  # nothing written, not even the folder
                refused.append(key)
            else:
                shutil.rmtree(new)
    assert {'epoch', 'model', 'optimizer', 'rng', 'method', 'args'} <= set(refused)


def test_a_checkpoint_saved_before_a_flag_existed_resumes_at_the_flags_default(tmp_path,
                                                                              capsys):
    """A run saved before --normalize, --padding_mode, --frl_halving_epochs and --frl_forwards
    existed trained as their defaults do (identity.ADDED_ARGS): it still resumes, to the same
    state; asking it for another value is refused, naming the flag."""
    from test_train import assert_same_state, latest
    args = TINY + ['--epochs', '2', '--rob_fairness_algorithm', 'frl', '--val_per_class', '4']
    full = str(tmp_path / 'full')
    train.main(args + ['--model_dir', full])
    point = checkpoint.load(os.path.join(full, 'checkpoint-epoch1.pt'))
    for key in identity.ADDED_ARGS:
        del point['args'][key], point['recipe']['args'][key]
    old = str(tmp_path / 'old.pt')
    torch.save(point, old)
    resumed = str(tmp_path / 'resumed')
    train.main(args + ['--model_dir', resumed, '--resume', old])
    assert_same_state(latest(resumed), latest(full))
    code = train.cli(args + ['--model_dir', str(tmp_path / 'other'), '--resume', old,
                             '--frl_forwards', 'official'])
    err = capsys.readouterr().err
    assert code == 2 and '--frl_forwards harness -> official' in err, err
