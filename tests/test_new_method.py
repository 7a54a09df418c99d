"""A new method is one file: tests/classwise_eps.py, registered in one line, trains and resumes
exactly through train.py, is evaluated by eval.py and tabulated by scripts/reproduce.py."""
import json
import os

import pytest

import eval as eval_cli
import fairness
import train
from engine import run
from test_reproduce import SMALL
from test_train import TINY, assert_same_state, latest, metrics

TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def classeps(monkeypatch):
    """The method registered here and, through FAIRNESS_PLUGINS, in every child process."""
    monkeypatch.setenv('FAIRNESS_PLUGINS', 'classwise_eps')
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join(
        [TESTS] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))
    import classwise_eps
    fairness.register(classwise_eps.ClassEps)
    yield classwise_eps.ClassEps
    fairness.METHODS.pop('classeps')


def test_a_method_in_one_file_trains_resumes_and_is_evaluated(tmp_path, classeps):
    args = ['--epochs', '3', '--rob_fairness_algorithm', 'classeps', '--classeps_warmup', '1']
    straight = str(tmp_path / 'straight')
    train.main(TINY + ['--model_dir', straight, *args])
    rows = metrics(straight)
    radius = rows[-1]['method_state']['radius']
    assert len(radius) == 4 and radius != [1.0] * 4
    resumed = str(tmp_path / 'resumed')
    train.main(TINY + ['--model_dir', resumed, *args,
                       '--resume', run.checkpoint_path(straight, 2)])
    assert_same_state(latest(resumed), latest(straight))
    assert metrics(resumed)[-1]['method_state'] == rows[-1]['method_state']

    eval_cli.main(['--checkpoint', run.checkpoint_path(straight), '--device', 'cpu',
                   '--no_progress'])
    with open(run.result_path(straight, 'pgd', None, 3)) as f:
        assert json.load(f)['method'] == 'TRADES + ClassEps'


def test_its_flags_are_checked_by_its_own_rule(tmp_path, capsys, classeps):
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(TINY + ['--model_dir', str(tmp_path / 'x'), '--rob_fairness_algorithm',
                                 'classeps', '--classeps_strength', 'nan'])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count('--classeps_strength must be a finite number') == 1


def test_reproduce_runs_it_beside_trades(tmp_path, capsys, classeps, monkeypatch):
    import reproduce
    monkeypatch.chdir(tmp_path)  # a relative --out is the caller's directory
    assert reproduce.main(SMALL + ['--methods', 'trades,classeps', '--seeds', '1', '--out', 'r',
                                   '--attack', 'pgd']) == 0
    assert run.finished(str(tmp_path / 'r' / 'runs' / 'classeps' / 'seed1'), 2)
    table = open(tmp_path / 'r' / 'table.md').read()
    assert '| TRADES + ClassEps |' in table and '| TRADES |' in table


def test_the_example_copied_into_fairness_with_its_registry_lines_is_a_method(tmp_path):
    """README, "Add a method": the example file copied into fairness/ and registered by one
    line, its import in fairness/__init__.py. Done in a copy of the package (the tree is not
    touched); it was a circular import while the example imported `register` from the
    package."""
    import shutil
    import subprocess
    import sys
    root = os.path.dirname(TESTS)
    package = tmp_path / 'fairness'
    shutil.copytree(os.path.join(root, 'fairness'), package,
                    ignore=shutil.ignore_patterns('__pycache__'))
    shutil.copy(os.path.join(TESTS, 'classwise_eps.py'), package / 'classwise_eps.py')
    init = (package / '__init__.py').read_text()
    assert 'from .ham import HAM\n' in init
    (package / '__init__.py').write_text(init.replace(
        'from .ham import HAM\n', 'from .ham import HAM\nfrom .classwise_eps import ClassEps\n'))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), root]))
    env.pop('FAIRNESS_PLUGINS', None)
    proc = subprocess.run([sys.executable, '-c', 'import fairness; print(fairness.__file__, '
                           "'classeps' in fairness.METHODS)"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(package / '__init__.py'), 'True']
