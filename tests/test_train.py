"""train.py end to end on tiny synthetic data: DAFA weights, resume, branching, bad input."""
import json
import os

import pytest
import torch

import dafa
import train
from engine import checkpoint
from losses import LOSSES, LossOutput

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
    assert torch.equal(a['class_weights'], b['class_weights'])
    if a['similarity'] is None:
        assert b['similarity'] is None
    else:
        assert torch.equal(a['similarity'], b['similarity'])


def metrics(model_dir):
    with open(os.path.join(model_dir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f]


def test_dafa_run_writes_weights_and_resumes_to_an_identical_state(tmp_path):
    straight = run(tmp_path, 'straight', '--epochs', '3', '--dafa_warmup', '1',
                   '--rob_fairness_algorithm', 'dafa')
    ckpt = latest(straight)
    weights, similarity = ckpt['class_weights'], ckpt['similarity']
    assert not torch.allclose(weights, torch.ones(4))
    assert torch.equal(weights, dafa.class_weights(similarity, 1.0))
    assert abs(float(weights.sum()) - 4) < 1e-4
    rows = metrics(straight)
    assert [r['epoch'] for r in rows] == [1, 2, 3]
    assert rows[0]['class_weights'] == weights.tolist()
    assert len(rows[2]['pgd20']['per_class']) == 4
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
    assert torch.equal(plain_ckpt['class_weights'], torch.ones(4))  # recorded, not applied
    assert plain_ckpt['similarity'] is not None
    branched = run(tmp_path, 'branched', *args, '--rob_fairness_algorithm', 'dafa',
                   '--resume', os.path.join(plain, 'checkpoint-epoch1.pt'))
    straight = run(tmp_path, 'straight', *args, '--rob_fairness_algorithm', 'dafa')
    assert_same_state(latest(branched), latest(straight))


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    model_dir = run(tmp_path, 'nan', '--epochs', '1')
    good = latest(model_dir)

    real = LOSSES['trades']

    def nan_loss(model, x, y, class_weight, **kwargs):
        out = real(model, x, y, class_weight, **kwargs)
        return LossOutput(out.loss * float('nan'), *out[1:])

    monkeypatch.setitem(LOSSES, 'trades', nan_loss)
    with pytest.raises(train.NonFiniteLoss, match='epoch 2, batch 1'):
        train.main(TINY + ['--model_dir', model_dir, '--epochs', '2',
                           '--resume', os.path.join(model_dir, 'checkpoint-latest.pt')])
    assert_same_state(latest(model_dir), good)


def test_lambda_that_makes_a_weight_nonpositive_stops_after_saving_the_warmup(tmp_path, capsys):
    with pytest.raises(dafa.ClassWeightError, match=r'<= 0 with --dafa_lambda 1000.*below'):
        run(tmp_path, 'big', '--epochs', '2', '--dafa_warmup', '1',
            '--rob_fairness_algorithm', 'dafa', '--dafa_lambda', '1000')
    ckpt = checkpoint.load(str(tmp_path / 'big' / 'checkpoint-epoch1.pt'))
    assert ckpt['similarity'] is not None and ckpt['epoch'] == 1


@pytest.mark.parametrize('extra,message', [
    (['--dataset', 'imagenet'], "invalid choice: 'imagenet'"),
    (['--model', 'vgg'], "invalid choice: 'vgg'"),
    (['--rob_fairness_algorithm', 'dafa', '--epochs', '5', '--dafa_warmup', '5'],
     'leaves no DAFA epochs'),
    (['--resume', '/nonexistent/checkpoint.pt'], 'no such checkpoint file'),
    (['--cuda_graph'], '--cuda_graph needs --device cuda'),
    (['--epsilon', '0'], '--epsilon must be > 0'),
    (['--dafa_lambda', '-1'], '--dafa_lambda must be >= 0'),
])
def test_bad_arguments_fail_with_a_clear_message(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(TINY + ['--model_dir', str(tmp_path / 'x'), *extra])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_an_existing_run_is_not_overwritten(tmp_path):
    model_dir = run(tmp_path, 'done', '--epochs', '1')
    with pytest.raises(FileExistsError, match='--resume .*--overwrite'):
        run(tmp_path, 'done', '--epochs', '1')
    run(tmp_path, 'done', '--epochs', '1', '--overwrite')
    assert [r['epoch'] for r in metrics(model_dir)] == [1]


def test_resume_with_another_architecture_is_refused(tmp_path):
    model_dir = run(tmp_path, 'a', '--epochs', '1')
    with pytest.raises(SystemExit, match='--model small-cnn'):
        train.main(TINY + ['--model_dir', str(tmp_path / 'b'), '--epochs', '2', '--model',
                           'resnet', '--resume', os.path.join(model_dir, 'checkpoint-epoch1.pt')])
