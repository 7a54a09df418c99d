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
