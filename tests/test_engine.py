"""Schedules, atomic checkpoints, the epoch loop's non-finite check, and the benchmark."""
import json
import os

import pytest
import torch

import bench
from engine import checkpoint
from engine.cli import UserError
from engine.loop import train_one_epoch
from engine.schedule import lr_at
from losses import LossOutput


def test_bag_of_tricks_schedule_counts_epochs_from_one():
    lrs = {e: lr_at(e, schedule='bag_of_tricks', base_lr=0.1, epochs=110) for e in range(1, 111)}
    assert lrs[1] == lrs[99] == 0.1
    assert lrs[100] == pytest.approx(0.01) and lrs[104] == pytest.approx(0.01)
    assert lrs[105] == pytest.approx(0.001) and lrs[110] == pytest.approx(0.001)


def official_lr(epoch, schedule, lr, epochs):
    """A re-statement of the official DAFA train.py adjust_learning_rate (epochs from 1)."""
    out = lr
    if schedule == 'trades':
        if epoch >= 0.75 * epochs:
            out = lr * 0.1
        if epoch >= 0.9 * epochs:
            out = lr * 0.01
        if epoch >= epochs:
            out = lr * 0.001
    elif schedule == 'madry':
        if epoch >= 0.5 * epochs:
            out = lr * 0.1
        if epoch >= 0.75 * epochs:
            out = lr * 0.01
        if epoch >= epochs:
            out = lr * 0.001
    else:
        if epoch >= epochs - 10:
            out = lr * 0.1
        if epoch >= epochs - 5:
            out = lr * 0.01
    return out


@pytest.mark.parametrize('schedule', ['bag_of_tricks', 'trades', 'madry'])
@pytest.mark.parametrize('epochs', [20, 100, 110, 200])
def test_schedules_follow_the_official_rule(schedule, epochs):
    ours = [lr_at(e, schedule=schedule, base_lr=0.1, epochs=epochs) for e in range(1, epochs + 1)]
    official = [official_lr(e, schedule, 0.1, epochs) for e in range(1, epochs + 1)]
    assert ours == pytest.approx(official, rel=1e-12, abs=0)
    assert len(set(ours)) == (3 if schedule == 'bag_of_tricks' else 4)


def test_trades_schedule_at_110_epochs_drops_at_83_99_and_110():
    lrs = [lr_at(e, schedule='trades', base_lr=1.0, epochs=110) for e in (82, 83, 98, 99, 109, 110)]
    assert lrs == pytest.approx([1.0, 0.1, 0.1, 0.01, 0.01, 0.001])
    assert {lr_at(e, schedule='constant', base_lr=1e-3, epochs=40) for e in range(1, 41)} == {1e-3}
    with pytest.raises(ValueError, match='unknown lr schedule'):
        lr_at(1, schedule='cosine', base_lr=0.1, epochs=10)


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = str(tmp_path / 'checkpoint-latest.pt')
    checkpoint.save_atomic({'epoch': 1}, path)

    def crash(obj, f, *args, **kwargs):
        with open(f, 'wb') as handle:
            handle.write(b'half a checkpoint')
        raise OSError('disk full')

    monkeypatch.setattr(torch, 'save', crash)
    with pytest.raises(UserError,
                       match=r'cannot write checkpoint .*checkpoint-latest\.pt \(disk full\)'):
        checkpoint.save_atomic({'epoch': 2}, path)
    monkeypatch.undo()
    assert checkpoint.load(path)['epoch'] == 1
    assert os.listdir(tmp_path) == ['checkpoint-latest.pt']


def test_loading_a_missing_or_broken_checkpoint_names_the_problem(tmp_path):
    with pytest.raises(UserError, match='does not exist'):
        checkpoint.load(str(tmp_path / 'nope.pt'))
    broken = tmp_path / 'broken.pt'
    broken.write_bytes(b'not a checkpoint')
    with pytest.raises(UserError, match='could not be read'):
        checkpoint.load(str(broken))
    truncated = tmp_path / 'truncated.pt'
    torch.save({'model': torch.zeros(1000)}, str(truncated))
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(UserError, match='could not be read.*truncated'):
        checkpoint.load(str(truncated))


def test_epoch_loop_names_the_first_nonfinite_batch():
    losses = iter([1.0, 2.0, float('inf'), 3.0])

    def step(x, y):
        value = torch.tensor(next(losses))
        return LossOutput(value, value, value, torch.zeros(len(y), 2))

    batches = [(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))] * 4
    with pytest.raises(UserError, match='epoch 7, batch 3'):
        train_one_epoch(step, batches, epoch=7, log_interval=4, log=lambda msg: None)


def test_epoch_loop_returns_sample_weighted_mean_losses():
    def step(x, y):
        value = torch.tensor(float(len(y)))
        return LossOutput(value, value, value, torch.zeros(len(y), 2))

    batches = [(None, torch.zeros(3, dtype=torch.long)), (None, torch.zeros(1, dtype=torch.long))]
    row = train_one_epoch(step, batches, epoch=1, log_interval=10, log=lambda msg: None)
    assert row['loss'] == pytest.approx((3 * 3 + 1 * 1) / 4)


def test_cpu_benchmark_runs_and_reports_each_config(tmp_path):
    default_threads = torch.get_num_threads()
    out, profile = tmp_path / 'bench.json', tmp_path / 'profile.txt'
    results = bench.main(['--device', 'cpu', '--iters', '1', '--warmup', '1',
                          '--batch_size', '8', '--image_size', '16', '--pgd_num_steps', '2',
                          '--json', str(out), '--profile', str(profile)])
    assert [r['config'] for r in results] == ['eager-fp32', 'eager-fp32-cl', 'eager-bf16']
    assert all(r['ms_per_iter'] > 0 and r['busy_ms_per_iter'] > 0 for r in results)
    assert results[0]['ratio_to_first'] == 1.0
    assert out.exists()
    tables = profile.read_text()
    assert '== eager-fp32' in tables and '== eager-bf16' in tables
    assert 'convolution' in tables  # the ops of the step, not an empty profile
    for cuda_only in ('graph-bf16', 'eager-tf32'):
        with pytest.raises(SystemExit):
            bench.parse_args(['--device', 'cpu', '--configs', cuda_only])
    threads = bench.main(['--device', 'cpu', '--iters', '1', '--warmup', '1', '--batch_size', '4',
                          '--image_size', '8', '--pgd_num_steps', '1', '--configs', 'eager-fp32',
                          '--threads', '1'])
    assert [r['threads'] for r in threads] == [1] and torch.get_num_threads() == 1
    torch.set_num_threads(default_threads)


def test_resume_truncates_metrics_past_the_checkpoint_and_a_torn_last_line(tmp_path):
    from engine import run
    rows = [json.dumps({'epoch': e, 'loss': 1.0}) + '\n' for e in (1, 2, 3)]
    # A kill in the middle of appending epoch 4's row leaves half a line.
    (tmp_path / 'metrics.jsonl').write_text(''.join(rows) + '{"epoch": 4, "lo')
    run.truncate_metrics(str(tmp_path), 2)
    assert (tmp_path / 'metrics.jsonl').read_text() == ''.join(rows[:2])
    assert os.listdir(tmp_path) == ['metrics.jsonl']


def test_resume_restores_the_cuda_rng_of_the_devices_this_machine_has(monkeypatch):
    """A checkpoint saved with 3 GPUs resumed on 1: device 0's state is restored, the others
    have no device (torch.cuda.set_rng_state_all would fail: 'invalid device ordinal')."""
    from engine import checkpoint
    restored = []

    def set_all(states):
        if len(states) > 1:
            raise RuntimeError('CUDA error: invalid device ordinal')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    monkeypatch.setattr(torch.cuda, 'set_rng_state_all', set_all)
    monkeypatch.setattr(torch.cuda, 'set_rng_state',
                        lambda state, device='cuda': restored.append((int(state[0]), device)))
    monkeypatch.setattr(torch.cuda, 'get_rng_state_all', lambda: [])
    state = checkpoint.rng_state()
    state['cuda'] = [torch.tensor([7], dtype=torch.uint8), torch.tensor([8], dtype=torch.uint8),
                     torch.tensor([9], dtype=torch.uint8)]
    checkpoint.set_rng_state(state)
    assert restored == [(7, 0)]
