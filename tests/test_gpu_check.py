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
