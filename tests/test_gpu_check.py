"""scripts/gpu_check.sh --dry-run: each stage of the GPU program runs on the CPU at tiny sizes and
returns what the device tool can bring back (at most 3 files in $OUT)."""
import os
import subprocess
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('stage,member', [('verify', 'bench.json'),
                                          ('reproduce', 'table.md')])
def test_dry_run_stage_leaves_at_most_three_files(tmp_path, stage, member):
    env = dict(os.environ, OUT=str(tmp_path / 'out'), GPU_CHECK_RUNS=str(tmp_path / 'runs'))
    proc = subprocess.run(['bash', 'scripts/gpu_check.sh', '--dry-run', stage], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = sorted(os.listdir(tmp_path / 'out'))
    assert out == sorted([f'gpu_check_{stage}.tar.gz', 'summary.md', 'log.txt'])
    with tarfile.open(tmp_path / 'out' / f'gpu_check_{stage}.tar.gz') as archive:
        names = archive.getnames()
    assert any(name.endswith(member) for name in names), names
    assert not any(name.endswith('.pt') for name in names)
    summary = (tmp_path / 'out' / 'summary.md').read_text()
    assert '(dry run, CPU)' in summary and 'failed' not in summary and 'cut at' not in summary
    assert 'Traceback' not in summary  # gpu_summary.py read every step's output
    # Every step ran, and the upper ends of the H200 estimates fit the 540 s stage with 15% to
    # spare (the device tool's 600 s per call less the script's own margin).
    table = summary.split('| step | status | seconds | limit | estimate (s) |\n')[1]
    steps = [line.split('|')[1:-1] for line in table.split('\n\n')[0].splitlines()[1:]]
    assert all(status.strip() == 'ok' for _, status, *_ in steps), steps
    assert sum(int(estimate.split('-')[1]) for *_, estimate in steps) <= 540 * 0.85


def test_a_stage_cut_at_its_deadline_still_returns_the_table_of_what_finished(tmp_path):
    """The reproduce step under a deadline that cuts it (SIGINT from timeout): reproduce.py
    still writes table.md, its unfinished tasks marked interrupted, and the archive carries it.
    Its runs are made to outlast the stage on any machine, so the cut always lands."""
    env = dict(os.environ, OUT=str(tmp_path / 'out'), GPU_CHECK_RUNS=str(tmp_path / 'runs'),
               STAGE_SECONDS='22', GPU_CHECK_DRY_EPOCHS='400')
    proc = subprocess.run(['bash', 'scripts/gpu_check.sh', '--dry-run', 'reproduce'], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = (tmp_path / 'out' / 'summary.md').read_text()
    assert '| reproduce | ' in summary and 'skipped' not in summary, summary
    with tarfile.open(tmp_path / 'out' / 'gpu_check_reproduce.tar.gz') as archive:
        tables = [n for n in archive.getnames() if n.endswith('short/table.md')]
        assert tables, archive.getnames()
        table = archive.extractfile(tables[0]).read().decode()
    assert 'cut at' in summary, summary
    assert ': interrupted' in table, table
