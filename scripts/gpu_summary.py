"""The figures of a gpu_check.sh verify stage as markdown: speed per configuration, the real
epochs end to end, the fast path against fp32, the AutoAttack time.

    python3 scripts/gpu_summary.py verify runs/gpu_check/verify
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from evaluation.runner import display_name, pgd_steps  # noqa: E402


def _read(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _metrics(folder):
    try:
        with open(os.path.join(folder, 'metrics.jsonl')) as f:
            return [json.loads(line) for line in f]
    except (OSError, ValueError):
        return []


def _pgd(row: dict) -> str:
    """The key of a metrics row's PGD evaluation (pgd<K>)."""
    return next(k for k in row if pgd_steps(k) is not None)


def decision(fast: list, fp32: list, bench) -> str:
    """Whether --fast may become the default on CUDA: within 1.5 points of fp32 on average and
    worst-class PGD at the last epoch both runs evaluated, with the speed-up, and the one-line
    change that would do it."""
    fast_rows, fp32_rows = ({r['epoch']: r for r in rows if 'clean' in r} for rows in (fast, fp32))
    common = sorted(set(fast_rows) & set(fp32_rows))
    if not common:
        return 'Decision: no epoch was evaluated by both runs; fp32 stays the default.'
    a, b = fast_rows[common[-1]], fp32_rows[common[-1]]
    pgd = _pgd(a)
    gap = {k: a[pgd][k] - b[pgd][k] for k in ('avg', 'worst')}
    ms = {r['config']: r['ms_per_iter'] for r in (bench or {}).get('results', [])}
    speed = (f"{ms['eager-fp32'] / ms['graph-bf16']:.2f}x (bench.py, graph-bf16 against "
             'eager-fp32)' if {'eager-fp32', 'graph-bf16'} <= set(ms) else 'not measured')
    figures = (f"epoch {common[-1]}, {display_name(pgd)}: --fast minus fp32 {gap['avg']:+.2f} "
               f"average, {gap['worst']:+.2f} worst class; speed-up {speed}")
    if max(abs(g) for g in gap.values()) <= 1.5:
        return (f'Decision: within 1.5 points ({figures}). To make the fast path the default on '
                'CUDA, set `FAST_ON_CUDA = True` in defaults.py and record these figures in '
                'BENCHMARKS.md.')
    return f'Decision: not within 1.5 points ({figures}); fp32 stays the default.'


def verify(runs: str) -> str:
    lines = ['## verify']
    bench = _read(os.path.join(runs, 'bench.json'))
    if bench:
        lines += ['', 'Benchmark (steady state, training step only):', '',
                  '| config | ms / iteration | s / epoch |', '|---|---:|---:|']
        lines += [f"| {r['config']} | {r['ms_per_iter']:.1f} | {r['s_per_epoch']:.1f} |"
                  for r in bench.get('results', [])]
    rows = _metrics(os.path.join(runs, 'epochs'))
    if rows:
        lines += ['', 'TRADES+DAFA, 2 epochs end to end (epoch 1 records S, epoch 2 DAFA):', '']
        lines += [f"- epoch {r['epoch']}: {r['train_time_s']:.1f} s training"
                  + (f", {display_name(_pgd(r))} eval {r['eval_time_s']:.1f} s (clean "
                     f"{r['clean']['avg']:.2f}, {display_name(_pgd(r))} {r[_pgd(r)]['avg']:.2f})"
                     if 'eval_time_s' in r else '')
                  for r in rows]
    fast, fp32 = (_metrics(os.path.join(runs, name)) for name in ('short_fast', 'short_fp32'))
    if fast or fp32:
        lines += ['', 'Fast path against fp32 eager (same seed and data, trained side by side '
                  'on one device, so each s / epoch includes the other run\'s load; the last '
                  'evaluated epoch of each):', '',
                  '| run | s / epoch (mean) | evaluated epoch | clean | PGD |',
                  '|---|---:|---:|---:|---:|']
        for name, rows in (('--fast', fast), ('fp32 eager (the default)', fp32)):
            if rows:
                mean = sum(r['train_time_s'] for r in rows) / len(rows)
                last = next((r for r in reversed(rows) if 'clean' in r), None)
                cells = ([last['epoch'], f"{last['clean']['avg']:.2f}",
                          f"{last[_pgd(last)]['avg']:.2f}"] if last else ['-', '-', '-'])
                lines.append(f"| {name} | {mean:.1f} | " + ' | '.join(map(str, cells)) + ' |')
        lines += ['', decision(fast, fp32, bench)]
    result = _read(os.path.join(runs, 'eval', next(
        (f for f in sorted(os.listdir(os.path.join(runs, 'eval')))
         if f.startswith('eval_aa') and f.endswith('.json')), 'none'))) \
        if os.path.isdir(os.path.join(runs, 'eval')) else None
    if result:
        lines += ['', f"AutoAttack on {result['n_eval']} test images: "
                      f"{result['time_s']['autoattack']:.1f} s, robust "
                      f"{result['autoattack']['avg']:.2f} ({result['device']})"]
    return '\n'.join(lines)


if __name__ == '__main__':
    print(verify(sys.argv[2]) if sys.argv[1] == 'verify' else '')
