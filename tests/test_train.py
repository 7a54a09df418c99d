"""train.py end to end on tiny synthetic data: DAFA weights, resume, branching, bad input."""
import errno
import json
import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import eval as eval_cli
import models
import train
from engine import checkpoint, start
import dafa
from losses import LOSSES, LossOutput
from engine.cli import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = ['--dataset', 'synthetic', '--model', 'small-cnn', '--synthetic_num_classes', '4',
        '--synthetic_close_groups', '0,1', '--synthetic_image_size', '8',
        '--synthetic_n_train_per_class', '24', '--synthetic_n_test_per_class', '4',
        '--batch_size', '32', '--test_batch_size', '16', '--pgd_num_steps', '2',
        '--test_pgd_num_steps', '2', '--lr_schedule', 'trades', '--log_interval', '1',
        '--eval_freq', '1', '--device', 'cpu']


def run(tmp_path, name, *extra):
    model_dir = str(tmp_path / name)
    train.main(TINY + ['--model_dir', model_dir, *extra])
    return model_dir


def latest(model_dir):
    return checkpoint.load(os.path.join(model_dir, 'checkpoint-latest.pt'))


def assert_same_state(a, b):
    assert a['epoch'] == b['epoch']
    for key, value in a['model'].items():
        assert torch.equal(value, b['model'][key]), key
    assert a['method']['name'] == b['method']['name']
    assert_equal_tree(a['method']['state'], b['method']['state'])
    assert_equal_tree(a['records'], b['records'])


def assert_equal_tree(a, b):
    """Nested dicts / lists of tensors and plain values, equal bit for bit."""
    if isinstance(a, dict):
        assert sorted(a) == sorted(b)
        for key in a:
            assert_equal_tree(a[key], b[key])
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


def dafa_state(ckpt):
    """(class weights, similarity) of a DAFA checkpoint."""
    state = ckpt['method']['state']
    return state['class_weights'], state['similarity']


def metrics(model_dir):
    with open(os.path.join(model_dir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f]


def test_dafa_run_writes_weights_and_resumes_to_an_identical_state(tmp_path):
    straight = run(tmp_path, 'straight', '--epochs', '3', '--dafa_warmup', '1',
                   '--rob_fairness_algorithm', 'dafa')
    ckpt = latest(straight)
    weights, similarity = dafa_state(ckpt)
    assert not torch.allclose(weights, torch.ones(4))
    assert torch.equal(weights, dafa.class_weights(similarity, 1.0))
    assert abs(float(weights.sum()) - 4) < 1e-4
    rows = metrics(straight)
    assert [r['epoch'] for r in rows] == [1, 2, 3]
    assert rows[0]['class_weights'] == weights.tolist()
    assert len(rows[2]['pgd2']['per_class']) == 4
    for name in ('args.json', 'training.log', 'checkpoint-epoch1.pt', 'checkpoint-epoch3.pt'):
        assert os.path.exists(os.path.join(straight, name))

    # Resume the run from its epoch-2 checkpoint: the same final state, bit for bit, and one
    # metrics row per epoch.
    train.main(TINY + ['--model_dir', straight, '--epochs', '3', '--dafa_warmup', '1',
                       '--rob_fairness_algorithm', 'dafa',
                       '--resume', os.path.join(straight, 'checkpoint-epoch2.pt')])
    assert_same_state(latest(straight), ckpt)
    assert [r['epoch'] for r in metrics(straight)] == [1, 2, 3]


def test_branching_dafa_off_a_plain_warmup_checkpoint_equals_a_straight_dafa_run(tmp_path):
    args = ['--epochs', '2', '--dafa_warmup', '1']
    plain = run(tmp_path, 'plain', *args)
    plain_ckpt = latest(plain)
    # Recorded during epoch tau for a DAFA run to branch off, and said which epoch.
    assert plain_ckpt['method'] == {'name': 'none', 'state': {}}
    assert plain_ckpt['records']['similarity']['epoch'] == 1
    branched = run(tmp_path, 'branched', *args, '--rob_fairness_algorithm', 'dafa',
                   '--resume', os.path.join(plain, 'checkpoint-epoch1.pt'))
    straight = run(tmp_path, 'straight', *args, '--rob_fairness_algorithm', 'dafa')
    assert_same_state(latest(branched), latest(straight))


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    # A constant schedule: the only one a resume may extend (--epochs changes no lr).
    model_dir = run(tmp_path, 'nan', '--epochs', '1', '--lr_schedule', 'constant')
    good = latest(model_dir)

    real = LOSSES['trades']

    def nan_loss(model, x, y, class_weight, **kwargs):
        out = real(model, x, y, class_weight, **kwargs)
        return LossOutput(out.loss * float('nan'), *out[1:])

    monkeypatch.setitem(LOSSES, 'trades', nan_loss)
    with pytest.raises(UserError, match='epoch 2, batch 1'):
        train.main(TINY + ['--model_dir', model_dir, '--epochs', '2', '--lr_schedule', 'constant',
                           '--resume', os.path.join(model_dir, 'checkpoint-latest.pt')])
    assert_same_state(latest(model_dir), good)


def test_lambda_that_makes_a_weight_nonpositive_stops_after_saving_the_warmup(tmp_path, capsys):
    with pytest.raises(UserError, match=r'<= 0 with --dafa_lambda 1000.*below'):
        run(tmp_path, 'big', '--epochs', '2', '--dafa_warmup', '1',
            '--rob_fairness_algorithm', 'dafa', '--dafa_lambda', '1000')
    ckpt = checkpoint.load(str(tmp_path / 'big' / 'checkpoint-epoch1.pt'))
    assert dafa_state(ckpt)[1] is not None and ckpt['epoch'] == 1
    with open(tmp_path / 'big' / 'training.log') as f:
        assert 'error: DAFA weight of class' in f.read()


@pytest.mark.parametrize('extra,message', [
    (['--dataset', 'imagenet'], "invalid choice: 'imagenet'"),
    (['--model', 'vgg'], "invalid choice: 'vgg'"),
    (['--rob_fairness_algorithm', 'dafa', '--epochs', '5', '--dafa_warmup', '5'],
     'must be between 1 and --epochs 5 - 1'),
    (['--resume', '/nonexistent/checkpoint.pt'], 'no such checkpoint file'),
    (['--cuda_graph'], '--cuda_graph needs --device cuda'),
    (['--tf32'], '--tf32 needs --device cuda'),
    (['--fast'], '--fast is the CUDA fast path'),
    (['--epsilon', '0'], '--epsilon must be > 0'),
    (['--rob_fairness_algorithm', 'dafa', '--dafa_warmup', '1', '--dafa_lambda', '-1'],
     '--dafa_lambda must be >= 0'),
])
def test_bad_arguments_fail_with_a_clear_message(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(TINY + ['--model_dir', str(tmp_path / 'x'), *extra])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


SPEED = ('amp', 'tf32', 'cuda_graph', 'channels_last')


@pytest.mark.parametrize('extra,expected', [
    ([], ('none', False, False, False)),  # the paper's arithmetic: fp32, no TF32, eager
    (['--fast'], ('bf16', True, True, True)),
    (['--fast', '--amp', 'none', '--no-cuda_graph'], ('none', True, False, True)),
    (['--tf32'], ('none', True, False, False)),
    (['--fast', '--loss', 'pgd', '--rob_fairness_algorithm', 'ham', '--ham_classify_step', '1'],
     ('bf16', True, False, True)),  # HAM trains a varying number of samples: no graph
])
def test_on_cuda_the_defaults_are_the_papers_arithmetic_and_fast_is_asked_for(
        tmp_path, monkeypatch, extra, expected):
    from engine import device
    monkeypatch.setattr(device, 'resolve', lambda name: 'cuda')  # as on a CUDA machine
    cuda = TINY[:-1] + ['cuda', '--model_dir', str(tmp_path / 'x')]
    args = train.parse_args(cuda + extra)
    assert tuple(getattr(args, name) for name in SPEED) == expected
    # Only the arithmetic identifies a run: --fast and the layout and graph are bookkeeping.
    recipe = start.recipe_args(args)
    assert 'fast' not in recipe and 'cuda_graph' not in recipe
    assert (recipe['amp'], recipe['tf32']) == expected[:2]


def test_the_cpu_keeps_its_defaults(tmp_path):
    args = train.parse_args(TINY + ['--model_dir', str(tmp_path / 'x')])
    assert tuple(getattr(args, name) for name in SPEED) == ('none', False, False, False)
    assert args.fast is False


def test_an_existing_run_is_not_overwritten(tmp_path):
    model_dir = run(tmp_path, 'done', '--epochs', '1')
    with pytest.raises(UserError, match='--resume .*--overwrite'):
        run(tmp_path, 'done', '--epochs', '1')
    run(tmp_path, 'done', '--epochs', '1', '--overwrite')
    assert [r['epoch'] for r in metrics(model_dir)] == [1]


def test_resume_with_another_architecture_is_refused(tmp_path):
    model_dir = run(tmp_path, 'a', '--epochs', '1')
    with pytest.raises(UserError, match='--model small-cnn'):
        train.main(TINY + ['--model_dir', str(tmp_path / 'b'), '--epochs', '2', '--model',
                           'resnet', '--resume', os.path.join(model_dir, 'checkpoint-epoch1.pt')])
    assert not (tmp_path / 'b').exists()


# ----- a user's run is safe ---------------------------------------------------------------------

def folder_state(folder):
    """{file name: bytes} of a run folder."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_refused_resume_changes_nothing_in_the_run_folder(tmp_path):
    model_dir = run(tmp_path, 'r', '--epochs', '1')
    before = folder_state(tmp_path / 'r')
    with pytest.raises(UserError, match='--loss trades'):
        train.main(TINY + ['--model_dir', model_dir, '--epochs', '3', '--loss', 'pgd',
                           '--resume', os.path.join(model_dir, 'checkpoint-latest.pt')])
    assert folder_state(tmp_path / 'r') == before  # args.json and training.log included


def test_overwrite_deletes_nothing_before_the_new_run_has_started(tmp_path):
    model_dir = run(tmp_path, 'o', '--epochs', '1')
    before = folder_state(tmp_path / 'o')
    with pytest.raises(UserError, match='typo is not a directory'):
        train.main(TINY + ['--model_dir', model_dir, '--overwrite', '--epochs', '1',
                           '--dataset', 'folder', '--data_dir', str(tmp_path / 'typo')])
    assert folder_state(tmp_path / 'o') == before


def test_overwrite_never_deletes_the_checkpoint_resume_names_through_a_symlink(tmp_path):
    source = run(tmp_path, 'src', '--epochs', '3', '--save_freq', '1')
    os.symlink(source, tmp_path / 'alias')
    train.main(TINY + ['--model_dir', str(tmp_path / 'alias'), '--overwrite', '--epochs', '3',
                       '--resume', os.path.join(source, 'checkpoint-epoch1.pt')])
    assert os.path.isfile(os.path.join(source, 'checkpoint-epoch1.pt'))
    assert latest(source)['epoch'] == 3


def test_overwrite_replaces_the_whole_previous_run_and_nothing_else(tmp_path):
    model_dir = run(tmp_path, 'w', '--epochs', '2', '--save_freq', '1')
    folder = tmp_path / 'w'
    for name in ('eval_pgd.json', 'eval_pgd_per_class.png', 'eval_dafa_weights_similarity.png',
                 'checkpoint-latest.pt.tmp999', 'notes.txt'):
        (folder / name).write_text('old')
    with open(folder / 'training.log') as f:
        assert 'epoch 2' in f.read()
    run(tmp_path, 'w', '--epochs', '1', '--overwrite')
    assert sorted(p.name for p in folder.iterdir()) == [
        'args.json', 'checkpoint-epoch1.pt', 'checkpoint-latest.pt', 'metrics.jsonl', 'notes.txt',
        'recipe.json', 'training.log']
    with open(folder / 'training.log') as f:
        log = f.read()
    assert 'epoch 2' not in log and 'removed 11 files of the previous run' in log
    assert [r['epoch'] for r in metrics(model_dir)] == [1]


def test_a_kill_while_saving_the_warmup_checkpoint_loses_nothing(tmp_path, monkeypatch):
    real_save = checkpoint.save_atomic

    def killed_at_epoch2(state, path):
        if state['epoch'] == 2:
            with open(f'{path}.tmp4242', 'wb') as f:  # what a kill mid-save leaves behind
                f.write(b'half')
            raise KeyboardInterrupt
        real_save(state, path)

    monkeypatch.setattr(checkpoint, 'save_atomic', killed_at_epoch2)
    args = ['--epochs', '3', '--dafa_warmup', '2', '--rob_fairness_algorithm', 'dafa']
    with pytest.raises(KeyboardInterrupt):
        model_dir = run(tmp_path, 'k', *args)
    monkeypatch.undo()
    model_dir = str(tmp_path / 'k')
    # The latest checkpoint is the commit point: it still says epoch 1, so a resume redoes
    # epoch 2 (tau) and writes its kept checkpoint.
    assert latest(model_dir)['epoch'] == 1
    assert not os.path.exists(os.path.join(model_dir, 'checkpoint-epoch2.pt'))
    train.main(TINY + ['--model_dir', model_dir, *args,
                       '--resume', os.path.join(model_dir, 'checkpoint-latest.pt')])
    assert dafa_state(checkpoint.load(os.path.join(model_dir, 'checkpoint-epoch2.pt')))[1] \
        is not None
    assert [r['epoch'] for r in metrics(model_dir)] == [1, 2, 3]
    assert not [p for p in os.listdir(model_dir) if '.tmp' in p]  # orphans removed on start
    straight = run(tmp_path, 'straight', *args)
    assert_same_state(latest(model_dir), latest(straight))


def test_a_nonfinite_parameter_is_never_saved_and_the_stop_is_logged(tmp_path):
    # lr 1e6: the epoch's losses stay finite, but weights and a BatchNorm running_var overflow.
    model_dir = str(tmp_path / 'big_lr')
    with pytest.raises(UserError,
                       match=r'features\.\S+ of the model holds NaN or inf after epoch 1.*No '
                             r'checkpoint was written\.$'):
        train.main(TINY + ['--model_dir', model_dir, '--epochs', '2', '--lr', '1e6'])
    assert not [p for p in os.listdir(model_dir) if p.startswith('checkpoint')]
    with open(os.path.join(model_dir, 'training.log')) as f:
        assert 'error: features.' in f.read()


def test_evaluation_does_not_change_what_is_trained_and_equals_eval_py(tmp_path, capsys):
    args = ['--epochs', '2', '--test_pgd_num_steps', '3', '--test_pgd_step_size', '0.01']
    every = run(tmp_path, 'every', *args, '--eval_freq', '1')
    last = run(tmp_path, 'last', *args, '--eval_freq', '10')
    assert_same_state(latest(every), latest(last))
    # Train-time PGD is eval.py's on the same checkpoint and seed, whatever its settings:
    # eval.py takes the checkpoint's test attack, and names the result by its step count.
    assert eval_cli.cli(['--checkpoint', os.path.join(every, 'checkpoint-epoch2.pt'),
                         '--no_progress', '--out', str(tmp_path / 'eval')]) == 0
    with open(tmp_path / 'eval' / 'eval_pgd_epoch2.json') as f:
        result = json.load(f)
    row = metrics(every)[-1]
    assert result['pgd3']['per_class'] == row['pgd3']['per_class']
    assert result['clean']['per_class'] == row['clean']['per_class']
    assert result['attacks']['pgd3'] == dict(result['attacks']['pgd3'], rule='final',
                                             num_steps=3, step_size=0.01)


# ----- every user mistake is one line -------------------------------------------------------------

def write_image_folder(root, sizes=None, classes=('ant', 'cat')):
    for split in ('train', 'test'):
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(2):
                size = (sizes or {}).get((split, cls, i), 8)
                Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(
                    root / split / cls / f'{i}.png')


def cli_error(argv, capsys):
    """train.py's command line in-process: (exit status, stderr) of a failing run."""
    try:
        code = train.cli(argv)
    except SystemExit as err:  # argparse's usage errors
        code = err.code
    return code, capsys.readouterr().err


def assert_one_error_line(code, err, match):
    assert code == 2, err
    assert err.count('\n') == 1 and err.startswith('error: '), err
    assert re.search(match, err), err


@pytest.mark.parametrize('extra,match', [
    (['--pgd_num_steps', '-1'], '--pgd_num_steps must be >= 0'),
    (['--test_pgd_num_steps', '-2'], '--test_pgd_num_steps must be >= 0'),
    (['--beta', '-1'], '--beta must be >= 0'),
    (['--momentum', '-0.5'], '--momentum must be >= 0'),
    (['--momentum', '0'], '--no-nesterov'),
    (['--n_train', '2'], r'n_train=2 must be between the number of classes \(4\)'),
    (['--n_train', '1000'], r'training-set size \(96\)'),
    (['--imbalance_ratio', '0.1', '--n_train', '40'], '--imbalance_ratio cuts its own subset'),
    (['--imbalance_ratio', '2'], r'imbalance_ratio=2.0 must be in \(0, 1\]'),
    (['--synthetic_num_classes', '1', '--synthetic_close_groups', ''], 'must be >= 2'),
    (['--model', 'resnet'], r'--synthetic_image_size 32 or --model small-cnn'),
    (['--resume', '/nonexistent.pt'], 'no such checkpoint file'),
])
def test_bad_arguments_are_one_error_line(tmp_path, capsys, extra, match):
    code, err = cli_error(TINY + ['--model_dir', str(tmp_path / 'x'), *extra], capsys)
    assert_one_error_line(code, err, match)
    assert not (tmp_path / 'x').exists()


def test_bad_resume_files_are_one_error_line(tmp_path, capsys):
    corrupt = tmp_path / 'corrupt.pt'
    corrupt.write_bytes(b'\x00' * 100)
    plain = tmp_path / 'plain.pt'
    torch.save(models.create('small-cnn', 4, 8).state_dict(), str(plain))
    for path, match in ((corrupt, 'could not be read'),
                        (plain, 'holds model weights only .*Evaluate it with eval.py')):
        code, err = cli_error(TINY + ['--model_dir', str(tmp_path / 'r'), '--resume',
                                      str(path)], capsys)
        assert_one_error_line(code, err, match)


@pytest.mark.parametrize('problem,match', [
    ('class mismatch', 'same class folders'),
    ('empty class', 'holds no image files'),
    ('undecodable image', 'cannot decode image'),
    ('mixed sizes', 'one image size'),
    ('one class', 'needs at least 2'),
])
def test_folder_layout_problems_are_one_error_line(tmp_path, capsys, problem, match):
    root = tmp_path / 'data'
    write_image_folder(root, classes=('ant',) if problem == 'one class' else ('ant', 'cat'))
    if problem == 'class mismatch':
        (root / 'test' / 'dog').mkdir()
    elif problem == 'empty class':
        (root / 'train' / 'dog').mkdir()
        (root / 'test' / 'dog').mkdir()
    elif problem == 'undecodable image':
        (root / 'train' / 'ant' / '0.png').write_bytes(b'not a png')
    elif problem == 'mixed sizes':
        write_image_folder(root, sizes={('train', 'cat', 1): 9})
    code, err = cli_error(TINY + ['--model_dir', str(tmp_path / 'run'), '--dataset', 'folder',
                                  '--data_dir', str(root)], capsys)
    assert_one_error_line(code, err, match)


def test_a_full_disk_while_saving_is_one_error_line_naming_the_path(tmp_path, capsys,
                                                                     monkeypatch):
    def full(obj, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(torch, 'save', full)
    code, err = cli_error(TINY + ['--model_dir', str(tmp_path / 'full'), '--epochs', '1'], capsys)
    assert_one_error_line(code, err, r'cannot write checkpoint .*full/checkpoint-epoch1\.pt '
                                     r'.*No space left on device')


def test_train_py_prints_one_line_and_no_traceback():
    proc = subprocess.run([sys.executable, 'train.py', *TINY, '--model', 'resnet',
                           '--model_dir', '/nonexistent/never-created'],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith('error: --model resnet on 8 px images')
    assert 'Traceback' not in proc.stderr and proc.stderr.count('\n') == 1


def test_launchers_use_the_project_venv(tmp_path):
    if not os.path.exists(os.path.join(ROOT, '.venv', 'bin', 'python')):
        pytest.skip('no .venv in this checkout')
    fake = tmp_path / 'python'
    fake.write_text('#!/bin/sh\necho "No module named torch" >&2\nexit 1\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != 'PYTHON'}
    env['PATH'] = f'{tmp_path}:/usr/bin:/bin'
    proc = subprocess.run(['bash', 'scripts/trades.sh', '--help'], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert '--rob_fairness_algorithm' in proc.stdout


# ----- checkpoints are read safely ---------------------------------------------------------------

class Payload:
    """What a malicious checkpoint carries: unpickling it runs a command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_resume_refuses_a_checkpoint_carrying_code_and_never_runs_it(tmp_path, capsys):
    model_dir = run(tmp_path, 'victim', '--epochs', '1')
    evil = torch.load(os.path.join(model_dir, 'checkpoint-latest.pt'), weights_only=True)
    marker = tmp_path / 'pwned'
    evil['rng'] = Payload(marker)
    torch.save(evil, str(tmp_path / 'evil.pt'))
    code, err = cli_error(TINY + ['--model_dir', str(tmp_path / 'evil_run'), '--epochs', '2',
                                  '--resume', str(tmp_path / 'evil.pt')], capsys)
    assert not marker.exists()
    assert_one_error_line(code, err, 'nothing in it was executed.*--trust_checkpoint')
    assert not (tmp_path / 'evil_run').exists()


def test_a_checkpoint_of_the_previous_format_still_resumes_exactly(tmp_path):
    args = ['--epochs', '3', '--dafa_warmup', '1', '--rob_fairness_algorithm', 'dafa']
    straight = run(tmp_path, 'straight', *args)
    # The previous format kept numpy's and Python's RNG states as their own pickled objects.
    path = os.path.join(straight, 'checkpoint-epoch2.pt')
    old = checkpoint.load(path)
    np.random.seed(1)
    random.seed(1)
    old['rng'] = dict(old['rng'], numpy=np.random.get_state(), python=random.getstate())
    torch.save(old, str(tmp_path / 'old.pt'))
    assert 'numpy.ndarray' in torch.serialization.get_unsafe_globals_in_checkpoint(
        str(tmp_path / 'old.pt'))
    resumed = str(tmp_path / 'resumed')
    train.main(TINY + ['--model_dir', resumed, *args, '--resume', str(tmp_path / 'old.pt')])
    assert_same_state(latest(resumed), latest(straight))


def to_format_1(ckpt: dict) -> dict:
    """A checkpoint as the first landed format wrote it (before 'format' existed): the similarity
    at the top level and in every method's state, DAFA's weights at the top level, no records,
    recipe or code history."""
    new_keys = ('format', 'records', 'recipe', 'code_history')
    old = {k: v for k, v in ckpt.items() if k not in new_keys}
    similarity = ckpt['records'].get('similarity', {}).get('value')
    if ckpt['method']['name'] == 'dafa':
        similarity = ckpt['method']['state']['similarity']
    dafa = ckpt['method']['name'] == 'dafa'
    old.update(similarity=similarity,
               class_weights=ckpt['method']['state']['class_weights'] if dafa else torch.ones(4),
               method={'name': ckpt['method']['name'], 'state': {'similarity': similarity}})
    return old


def test_checkpoints_of_the_first_format_still_resume_and_branch(tmp_path):
    args = ['--epochs', '2', '--dafa_warmup', '1']
    plain = run(tmp_path, 'plain', *args)
    legacy = str(tmp_path / 'legacy.pt')
    torch.save(to_format_1(checkpoint.load(os.path.join(plain, 'checkpoint-epoch1.pt'))), legacy)
    branched = run(tmp_path, 'branched', *args, '--rob_fairness_algorithm', 'dafa',
                   '--resume', legacy)
    straight = run(tmp_path, 'straight', *args, '--rob_fairness_algorithm', 'dafa')
    assert_same_state(latest(branched), latest(straight))
    # A DAFA checkpoint of that format resumes, and eval.py draws its weights.
    torch.save(to_format_1(checkpoint.load(os.path.join(straight, 'checkpoint-epoch1.pt'))),
               legacy)
    resumed = run(tmp_path, 'resumed', *args, '--rob_fairness_algorithm', 'dafa',
                  '--resume', legacy)
    assert_same_state(latest(resumed), latest(straight))
    torch.save(to_format_1(latest(straight)), legacy)
    assert eval_cli.cli(['--checkpoint', legacy, '--attack', 'none', '--no_progress']) == 0
    assert (tmp_path / 'eval_dafa_weights_similarity.png').is_file()
