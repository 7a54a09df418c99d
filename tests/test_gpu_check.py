"""scripts/gpu_check.sh --dry-run: each stage of the GPU program runs on the CPU at tiny sizes and
returns what the device tool can bring back (at most 3 files in $OUT).

The three dry runs are started together, one thread each, when the first of these tests needs
them: they are mostly process starts and waiting (one waits out its stage's deadline), so side
by side on two cores they take about the time of the longest rather than the sum. (Started
with the session instead, beside the other tests, they slowed those more than they saved.)"""
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (stage, extra environment). 'cut': the reproduce stage under a deadline that cuts it;
# its runs are made to outlast the stage on any machine (400 epochs), so the cut always lands.
# The deadline leaves the steps before reproduce (a torch import among them) 30 s: at 22 s, on
# a loaded 2-core machine, they took the 7 s reproduce needed and it was skipped, not cut.
DRY_RUNS = {'verify': ('verify', {}), 'reproduce': ('reproduce', {}),
            'cut': ('reproduce', {'STAGE_SECONDS': '45', 'GPU_CHECK_DRY_EPOCHS': '400'})}


@pytest.fixture(scope='module')
def dry_run():
    """Starts the three dry runs, each in its own temporary folder; gives a function that waits
    for one and returns (exit status, output, its $OUT folder)."""
    started = {}
    for name, (stage, extra) in DRY_RUNS.items():
        folder = tempfile.mkdtemp(prefix=f'gpu_check_{name}_')
        env = dict(os.environ, OUT=os.path.join(folder, 'out'),
                   GPU_CHECK_RUNS=os.path.join(folder, 'runs'), OMP_NUM_THREADS='1', **extra)
        # A file, not a pipe: nobody reads the output until the test, and a full pipe blocks.
        output = open(os.path.join(folder, 'output.txt'), 'w+')
        proc = subprocess.Popen(['bash', 'scripts/gpu_check.sh', '--dry-run', stage], cwd=ROOT,
                                env=env, stdout=output, stderr=subprocess.STDOUT)
        started[name] = (proc, output, folder)

    def finished(name: str):
        proc, output, folder = started[name]
        proc.wait(timeout=300)
        output.seek(0)
        return proc.returncode, output.read(), Path(folder) / 'out'
    yield finished
    for proc, output, folder in started.values():
        proc.kill()
        proc.wait()
        output.close()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize('stage,member', [('verify', 'bench.json'),
                                          ('reproduce', 'table.md')])
def test_dry_run_stage_leaves_at_most_three_files(dry_run, stage, member):
    returncode, output, out = dry_run(stage)
    assert returncode == 0, output[-6000:]
    assert sorted(os.listdir(out)) == sorted([f'gpu_check_{stage}.tar.gz', 'summary.md',
                                              'log.txt'])
    with tarfile.open(out / f'gpu_check_{stage}.tar.gz') as archive:
        names = archive.getnames()
    assert any(name.endswith(member) for name in names), names
    assert not any(name.endswith('.pt') for name in names)
    summary = (out / 'summary.md').read_text()
    assert '(dry run, CPU)' in summary and 'failed' not in summary and 'cut at' not in summary
    assert 'Traceback' not in summary  # gpu_summary.py read every step's output
    if stage == 'verify':  # two fp32 runs of one seed on the CPU: no gap
        assert 'Decision: within 1.5 points (epoch 2, PGD-20: --fast minus fp32 +0.00 average, ' \
            '+0.00 worst class' in summary, summary
    # Every step ran, and the upper ends of the H200 estimates fit the 540 s stage with 15% to
    # spare (the device tool's 600 s per call less the script's own margin).
    table = summary.split('| step | status | seconds | limit | estimate (s) |\n')[1]
    steps = [line.split('|')[1:-1] for line in table.split('\n\n')[0].splitlines()[1:]]
    assert all(status.strip() == 'ok' for _, status, *_ in steps), steps
    assert sum(int(estimate.split('-')[1]) for *_, estimate in steps) <= 540 * 0.85


def test_a_stage_cut_at_its_deadline_still_returns_the_table_of_what_finished(dry_run):
    """The reproduce step under a deadline that cuts it (SIGINT from timeout): reproduce.py
    still writes table.md, its unfinished tasks marked interrupted, and the archive carries it."""
    returncode, output, out = dry_run('cut')
    assert returncode == 0, output[-6000:]
    summary = (out / 'summary.md').read_text()
    assert '| reproduce | ' in summary and 'skipped' not in summary, summary
    with tarfile.open(out / 'gpu_check_reproduce.tar.gz') as archive:
        tables = [n for n in archive.getnames() if n.endswith('short/table.md')]
        assert tables, archive.getnames()
        table = archive.extractfile(tables[0]).read().decode()
    assert 'cut at' in summary, summary
    assert ': interrupted' in table, table


def test_the_decision_line_makes_fast_the_default_only_within_one_and_a_half_points():
    sys.path.insert(0, os.path.join(ROOT, 'scripts'))
    from gpu_summary import decision

    def rows(avg, worst):
        return [{'epoch': 3, 'train_time_s': 1.0, 'clean': {'avg': 50.0},
                 'pgd20': {'avg': avg, 'worst': worst}}]
    bench = {'results': [{'config': 'eager-fp32', 'ms_per_iter': 90.0},
                         {'config': 'graph-bf16', 'ms_per_iter': 30.0}]}
    line = decision(rows(40.0, 20.0), rows(41.4, 18.6), bench)
    assert line.startswith('Decision: within 1.5 points') and 'FAST_ON_CUDA = True' in line
    assert '-1.40 average, +1.40 worst class; speed-up 3.00x' in line
    line = decision(rows(40.0, 20.0), rows(40.0, 21.6), bench)
    assert 'not within 1.5 points' in line and '-1.60 worst class' in line
    assert 'FAST_ON_CUDA = True' not in line
    assert 'no epoch' in decision([], rows(40.0, 20.0), None)
