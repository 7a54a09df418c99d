"""A table never lies: every result is tied to the recipe, data and code that made it; a run is
reused or resumed only under its own recipe; one writer per folder; results atomic and named by
what was evaluated; every flag checked; a sensitivity study in one command."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import eval as eval_cli
import train
from engine import checkpoint, run
from engine.cli import UserError
from evaluation import autoattack
from test_reproduce import SMALL
from test_train import ROOT, TINY, latest, metrics

import reproduce  # noqa: E402  (scripts/ is on the path through test_reproduce)


def one_error_line(fn, argv, capsys) -> str:
    """Run fn(argv) (a cli or a parse); its stderr, which must be one `error:` line, exit 2."""
    try:
        code = fn(argv)
    except SystemExit as err:
        code = err.code
    err = capsys.readouterr().err
    assert code == 2 and err.count('\n') == 1 and err.startswith('error: '), err
    return err


def folder_state(folder) -> dict:
    return {p: os.path.getsize(os.path.join(folder, p)) for p in sorted(os.listdir(folder))}


# ----- resume: the same experiment or none ----------------------------------------------------

DAFA = ['--epochs', '3', '--rob_fairness_algorithm', 'dafa', '--dafa_warmup', '1']


@pytest.fixture
def dafa_run(tmp_path):
    model_dir = str(tmp_path / 'dafa')
    train.main(TINY + ['--model_dir', model_dir, *DAFA])
    return model_dir


@pytest.mark.parametrize('change,named', [
    (['--seed', '7'], '--seed 1 -> 7'),
    (['--n_train', '80'], '--n_train None -> 80'),
    (['--epochs', '4'], '--epochs 3 -> 4'),  # the 'trades' schedule depends on it
    (['--lr_schedule', 'madry'], '--lr_schedule trades -> madry'),
    (['--dafa_lambda', '0.5'], '--dafa_lambda 1.0 -> 0.5'),
    (['--beta', '3'], '--beta 6.0 -> 3.0'),
])
def test_resume_refuses_another_recipe_and_leaves_the_folder_as_it_was(
        tmp_path, capsys, dafa_run, change, named):
    before = folder_state(dafa_run)
    err = one_error_line(train.cli, TINY + ['--model_dir', dafa_run, *DAFA, *change, '--resume',
                                            run.checkpoint_path(dafa_run, 2)], capsys)
    assert "this run's recipe differs" in err and named in err
    assert folder_state(dafa_run) == before


def test_resume_refuses_a_similarity_of_another_warmup_epoch(tmp_path, capsys):
    plain = str(tmp_path / 'plain')
    train.main(TINY + ['--model_dir', plain, '--epochs', '3', '--dafa_warmup', '1',
                       '--save_freq', '1'])
    assert checkpoint.load(run.checkpoint_path(plain, 2))['records']['similarity']['epoch'] == 1
    # A DAFA run with tau 2 would branch off epoch 2 with the similarity of epoch 1.
    err = one_error_line(train.cli, TINY + [
        '--model_dir', str(tmp_path / 'branch'), '--epochs', '3', '--rob_fairness_algorithm',
        'dafa', '--dafa_warmup', '2', '--resume', run.checkpoint_path(plain, 2)], capsys)
    assert 'recorded during epoch 1' in err and '--dafa_warmup 2' in err
    # A DAFA run's own checkpoint at a branch epoch: the same refusal.
    dafa = str(tmp_path / 'dafa')
    train.main(TINY + ['--model_dir', dafa, *DAFA[:2], '--rob_fairness_algorithm', 'dafa',
                       '--dafa_warmup', '1', '--save_freq', '1'])
    err = one_error_line(train.cli, TINY + [
        '--model_dir', str(tmp_path / 'dafa2'), '--epochs', '3', '--rob_fairness_algorithm',
        'dafa', '--dafa_warmup', '2', '--resume', run.checkpoint_path(dafa, 2)], capsys)
    assert 'recorded during epoch 1' in err


def write_images(root, seed):
    """root/{train,test}/{a,b}/*.png: 8 px images, 12 training and 2 test images per class."""
    rng = np.random.default_rng(seed)
    for split, count in (('train', 12), ('test', 2)):
        for cls in ('a', 'b'):
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                    root / split / cls / f'{i}.png')


def test_resume_refuses_other_training_data_with_the_same_classes(tmp_path, capsys):
    data_a, data_b = tmp_path / 'a', tmp_path / 'b'
    write_images(data_a, 0)
    shutil.copytree(data_a, data_b)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(data_b / 'train' / 'a' / '0.png')
    args = ['--dataset', 'folder', '--model', 'small-cnn', '--device', 'cpu', '--batch_size',
            '8', '--pgd_num_steps', '1', '--test_pgd_num_steps', '1', '--lr_schedule',
            'constant', '--model_dir', str(tmp_path / 'run')]
    train.main(args + ['--data_dir', str(data_a), '--epochs', '1'])
    err = one_error_line(train.cli, args + ['--data_dir', str(data_b), '--epochs', '2',
                                            '--resume', run.checkpoint_path(tmp_path / 'run')],
                         capsys)
    assert 'the training set differs' in err
    # The same data elsewhere, and more epochs of a constant schedule: resumed.
    shutil.copytree(data_a, tmp_path / 'a_copy')
    train.main(args + ['--data_dir', str(tmp_path / 'a_copy'), '--epochs', '2',
                       '--resume', run.checkpoint_path(tmp_path / 'run')])
    assert latest(str(tmp_path / 'run'))['epoch'] == 2


def test_the_recipe_is_recorded_with_the_code_version(dafa_run):
    ckpt = latest(dafa_run)
    with open(os.path.join(dafa_run, 'recipe.json')) as f:
        on_disk = json.load(f)
    recipe = ckpt['recipe']
    assert on_disk['args'] == json.loads(json.dumps(recipe['args']))
    assert recipe['args']['dafa_lambda'] == 1.0 and 'model_dir' not in recipe['args']
    assert 'wat_eta' not in recipe['args']  # another method's flag
    assert len(recipe['data']['train_sha256']) == 64 and len(recipe['data']['test_sha256']) == 64
    assert set(recipe['code']) == {'commit', 'dirty', 'fingerprint'}
    assert len(recipe['code']['fingerprint']) == 16
    assert ckpt['code_history'] == [dict(recipe['code'], from_epoch=1,
                                         machine=recipe['machine'])]


# ----- one writer per folder ----------------------------------------------------------------

def dead_pid() -> int:
    proc = subprocess.Popen(['true'])
    proc.wait()
    return proc.pid


def test_one_writer_per_run_folder_and_a_stale_lock_is_taken_over(tmp_path, capsys):
    model_dir = tmp_path / 'run'
    model_dir.mkdir()
    lock = model_dir / '.lock'
    lock.write_text(f'{os.getppid()} {socket.gethostname()}\n')  # a live process
    err = one_error_line(train.cli, TINY + ['--model_dir', str(model_dir), '--epochs', '1'],
                         capsys)
    assert f'in use by process {os.getppid()}' in err
    assert sorted(os.listdir(model_dir)) == ['.lock']
    lock.write_text(f'{dead_pid()} {socket.gethostname()}\n')
    train.main(TINY + ['--model_dir', str(model_dir), '--epochs', '1'])
    with open(model_dir / 'training.log') as f:
        assert 'took over the lock of process' in f.read()
    assert not lock.exists()  # released at the end


def test_a_refused_run_leaves_no_folder_behind(tmp_path, capsys):
    one_error_line(train.cli, TINY + ['--model_dir', str(tmp_path / 'new'), '--data_dir', 'x',
                                      '--dataset', 'folder'], capsys)
    assert not (tmp_path / 'new').exists()


# ----- results: named by what was evaluated, atomic, written as they finish -----------------

def test_evaluating_an_earlier_checkpoint_never_replaces_the_final_result(tmp_path):
    model_dir = str(tmp_path / 'r')
    train.main(TINY + ['--model_dir', model_dir, '--epochs', '2', '--save_freq', '1'])
    eval_cli.main(['--checkpoint', run.checkpoint_path(model_dir), '--device', 'cpu',
                   '--no_progress'])
    final = open(run.result_path(model_dir, 'pgd', None, 2)).read()
    eval_cli.main(['--checkpoint', run.checkpoint_path(model_dir, 1), '--device', 'cpu',
                   '--no_progress'])
    assert open(run.result_path(model_dir, 'pgd', None, 2)).read() == final
    assert json.load(open(run.result_path(model_dir, 'pgd', None, 1)))['epoch'] == 1


def test_the_pgd_result_is_written_before_autoattack_starts(tmp_path, monkeypatch):
    model_dir = str(tmp_path / 'r')
    train.main(TINY + ['--model_dir', model_dir, '--epochs', '1'])

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # a kill 40 minutes into AutoAttack

    monkeypatch.setattr(autoattack, 'autoattack_predict', killed)
    with pytest.raises(KeyboardInterrupt):
        eval_cli.main(['--checkpoint', run.checkpoint_path(model_dir), '--attack', 'all',
                       '--device', 'cpu', '--no_progress'])
    result = json.load(open(run.result_path(model_dir, 'pgd', None, 1)))
    assert 'pgd2' in result and 'autoattack' not in result
    assert not os.path.exists(run.result_path(model_dir, 'all', None, 1))
    assert not [p for p in os.listdir(model_dir) if '.tmp' in p]
    # AutoAttack did not finish: PGD's own figures are drawn (else the full result's hold them).
    for name in ('per_class', 'confusion_pgd2'):
        assert os.path.isfile(os.path.join(model_dir, f'eval_pgd_epoch1_{name}.png')), name


# ----- stuck states --------------------------------------------------------------------------

def test_a_folder_without_latest_checkpoint_resumes_from_its_newest_kept_one(tmp_path, capsys):
    model_dir = str(tmp_path / 'r')
    args = ['--model_dir', model_dir, '--epochs', '3', '--save_freq', '1']
    train.main(TINY + args)
    done = latest(model_dir)
    os.remove(run.checkpoint_path(model_dir))  # a kill before the first latest was written
    os.remove(run.checkpoint_path(model_dir, 3))
    err = one_error_line(train.cli, TINY + args, capsys)
    assert run.checkpoint_path(model_dir, 2) in err
    assert run.resume_point(model_dir) == run.checkpoint_path(model_dir, 2)
    train.main(TINY + args + ['--resume', run.resume_point(model_dir)])
    assert torch.equal(latest(model_dir)['model']['features.0.0.weight'],
                       done['model']['features.0.0.weight'])
    assert [r['epoch'] for r in metrics(model_dir)] == [1, 2, 3]


def test_leftovers_of_a_run_without_checkpoints_are_not_appended_to(tmp_path):
    folder = tmp_path / 'r'
    folder.mkdir()
    (folder / 'metrics.jsonl').write_text('{"epoch": 1, "loss": 9}\n{"epoch": 2, "loss": 9}\n')
    (folder / 'args.json.tmp123').write_text('torn')
    train.main(TINY + ['--model_dir', str(folder), '--epochs', '1'])
    assert [r['loss'] != 9 for r in metrics(str(folder))] == [True]
    assert not [p for p in os.listdir(folder) if '.tmp' in p]


# ----- every flag checked ----------------------------------------------------------------------

@pytest.mark.parametrize('extra,match', [
    (['--rob_fairness_algorithm', 'cfa', '--cfa_decay', 'nan'], '--cfa_decay must be a finite'),
    (['--rob_fairness_algorithm', 'cfa', '--cfa_lambda1', '-1'], '--cfa_lambda1 must be >= 0'),
    (['--rob_fairness_algorithm', 'wat', '--wat_eta', '-0.1'], '--wat_eta must be > 0'),
    (['--rob_fairness_algorithm', 'frl', '--frl_lim', 'inf'], '--frl_lim must be a finite'),
    (['--rob_fairness_algorithm', 'dafa', '--dafa_lambda', 'nan'], '--dafa_lambda must be a'),
    (['--epsilon', '8'], '--epsilon 8 is above 16/255'),
    (['--test_epsilon', '0.1'], '--test_epsilon 0.1 is above 16/255'),
    (['--lr', 'nan'], '--lr must be a finite number > 0'),
    (['--seed', '-1'], '--seed must be between 0 and 2**32 - 1'),
])
def test_every_flag_is_checked(tmp_path, capsys, extra, match):
    err = one_error_line(train.parse_args, TINY + ['--model_dir', str(tmp_path / 'x'), *extra],
                         capsys)
    assert match in err
    assert not (tmp_path / 'x').exists()


def test_a_large_epsilon_needs_saying_so():
    args = train.parse_args(TINY + ['--epsilon', '0.1', '--allow_large_epsilon'])
    assert args.epsilon == 0.1


def test_a_nonfinite_evaluated_model_is_never_saved(tmp_path, monkeypatch):
    from fairness.cfa import CFA
    monkeypatch.setattr(CFA, 'eval_state_dict', lambda self: {'w': torch.tensor([float('nan')])})
    with pytest.raises(UserError, match='w of the evaluated model holds NaN'):
        train.main(TINY + ['--model_dir', str(tmp_path / 'r'), '--epochs', '1',
                           '--rob_fairness_algorithm', 'cfa', '--val_per_class', '4'])
    assert not (tmp_path / 'r' / 'checkpoint-latest.pt').exists()


def test_demo_argument_errors_are_one_line(capsys):
    import demo
    one_error_line(demo.main, ['--seeds', 'a'], capsys)
    one_error_line(demo.main, ['--epochs', '3', '--dafa_warmup', '3'], capsys)


# ----- tables group by recipe --------------------------------------------------------------

def test_compare_groups_by_recipe_and_refuses_a_seed_counted_twice(tmp_path, capsys):
    model_dir = str(tmp_path / 'r')
    train.main(TINY + ['--model_dir', model_dir, '--epochs', '1'])
    eval_cli.main(['--checkpoint', run.checkpoint_path(model_dir), '--attack', 'none',
                   '--device', 'cpu', '--no_progress'])
    source = json.load(open(run.result_path(model_dir, 'none', None, 1)))
    paths = []
    for lam, seed, worst in ((None, 1, 50.0), (None, 2, 40.0), (0.25, 1, 60.0), (0.25, 2, 45.0),
                             (1.0, 1, 70.0), (1.0, 2, 35.0)):
        result = json.loads(json.dumps(source))
        result['recipe']['args'].update(seed=seed)
        if lam is not None:
            result['method'] = 'TRADES + DAFA'
            result['recipe']['args'].update(rob_fairness_algorithm='dafa', dafa_lambda=lam)
        result['clean'].update(worst=worst)
        paths.append(str(tmp_path / f'{lam}_{seed}.json'))
        json.dump(result, open(paths[-1], 'w'))
    capsys.readouterr()
    assert eval_cli.cli(['--compare', *paths, '--out', str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert '| TRADES + DAFA (dafa_lambda 0.25) (2 seeds) |' in out
    assert '| TRADES + DAFA (dafa_lambda 1.0) (2 seeds) |' in out
    assert ('TRADES + DAFA (dafa_lambda 0.25) minus TRADES, clean worst class, per seed: '
            '+10.00 (seed 1), +5.00 (seed 2); mean +7.50 ± 3.54.') in out
    assert '+20.00 (seed 1), -5.00 (seed 2); mean +7.50 ± 17.68 (within its spread).' in out
    assert 'Resolution: 4 test images per class, so one image is 25.00 points' in out
    err = one_error_line(eval_cli.cli, ['--compare', paths[0], paths[0]], capsys)
    assert 'the same run (seed 1 of one recipe)' in err
    copy = str(tmp_path / 'copy.json')
    shutil.copy(paths[0], copy)
    one_error_line(eval_cli.cli, ['--compare', paths[0], copy], capsys)


# ----- reproduce.py: reuse only the same recipe; one writer; no orphans ---------------------

def test_killing_reproduce_ends_its_runs(tmp_path):
    out = tmp_path / 'k'
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'scripts', 'reproduce.py'),
                             *SMALL, '--methods', 'trades', '--seeds', '1', '--epochs', '50',
                             '--out', str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    lock = out / 'runs' / 'trades' / 'seed1' / '.lock'
    deadline = time.time() + 60
    while not lock.exists() and time.time() < deadline:
        time.sleep(0.2)
    child = int(lock.read_text().split()[0])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    while run._alive(child) and time.time() < deadline:
        time.sleep(0.2)
    assert not run._alive(child)


# ----- a sensitivity study is one command ------------------------------------------------------

def test_a_sweep_shares_the_warmups_and_writes_a_row_per_value_and_a_figure(tmp_path, capsys,
                                                                          in_process):
    out = str(tmp_path / 'sweep')
    # One seed here (the suite's time); the study itself runs several (docs/reproduce.md).
    assert reproduce.main(SMALL + ['--methods', 'trades,dafa', '--seeds', '1', '--attack',
                                   'pgd', '--sweep', 'dafa_lambda=0.25,0.5', '--out', out]) == 0
    printed = capsys.readouterr().out
    assert printed.count('start train trades') == 1  # one warm-up, shared by both values
    assert printed.count('start train dafa') == 2
    table = open(os.path.join(out, 'table.md')).read()
    for lam in ('0.25', '0.5'):
        assert f'| TRADES + DAFA (dafa_lambda {lam}) |' in table
        assert f'TRADES + DAFA (dafa_lambda {lam}) minus TRADES, PGD-20 worst class' in table
    assert os.path.isfile(os.path.join(out, 'sweep.png'))
    assert os.path.isdir(os.path.join(out, 'runs', 'dafa', 'dafa_lambda=0.25', 'seed1'))
    results = json.load(open(os.path.join(out, 'results.json')))
    assert sorted(r['setting'][1] for r in results['runs'] if r['method'] == 'dafa') == [
        '0.25', '0.5']


def test_ctrl_c_and_a_full_disk_are_one_line(tmp_path, capsys, monkeypatch):
    from engine.cli import run_main

    def interrupted(argv):
        raise KeyboardInterrupt
    assert run_main(interrupted) == 130
    assert capsys.readouterr().err == 'error: interrupted (Ctrl-C).\n'

    def full_disk(src, dst):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(os, 'replace', full_disk)
    model_dir = tmp_path / 'r'
    err = one_error_line(train.cli, TINY + ['--model_dir', str(model_dir), '--epochs', '1'],
                         capsys)
    assert 'cannot write' in err and 'args.json' in err and 'No space left' in err
    assert not model_dir.exists()  # nothing half-written is left, not even the folder
