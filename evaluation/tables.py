"""Text made of results (evaluation/schema.py documents): one result's per-class table, attack
notes and summary line (eval.py), and for several, the paper's Table 1 layout with seeds pooled
by identity, the spread over classes, the paired worst-class differences and which machines made
them (eval.py --compare, the benchmark's table.md)."""
import json
import os
from typing import List, Optional, Tuple

import numpy as np

from engine import identity
from engine.best import CRITERIA, SPLITS
from engine.cli import UserError
from engine.device import machine_label

from .metrics import rho, worst_k
from .runner import attack_of, display_name
from .schema import check_same_evaluation, class_counts, evaluations, samples, seed_of


def rho_label(name: str) -> str:
    """As the paper's Table 1: rho of the clean accuracies is rho_nat, of robust ones rho_rob."""
    return 'rho_nat' if name == 'clean' else 'rho_rob'


def selection_label(selection: Optional[dict]) -> str:
    """How a result's checkpoint was chosen: 'final model', or e.g. 'best on the validation
    split by PGD-20 average (epoch 14)'; selection on the test set is flagged as such."""
    if not selection:
        return 'final model'
    text = (f"best on {SPLITS[selection['split']]} by {display_name(selection['attack'])} "
            f"{CRITERIA[selection['criterion']]}"
            + (f" (epoch {selection['epoch']})" if selection.get('epoch') else ''))
    if selection['split'] == 'test':
        text += ': selected on the data it reports, only to compare with papers that did so'
    return text


def _rho_text(value: Optional[float]) -> str:
    return 'undef' if value is None else f'{round(value, 2) + 0.0:.2f}'  # never '-0.00'


def attack_notes(result: dict) -> List[str]:
    """One line per attack run: what it is and when a sample counts as robust."""
    notes = []
    for name in (n for n in evaluations(result) if attack_of(n) in ('pgd', 'cw')):
        s = result['attacks'][name]
        notes.append(f"{display_name(name)}: {s.get('norm', 'Linf').replace('inf', '-inf')} "
                     f"eps {s['epsilon']:g}, step "
                     f"{s['step_size']:g}, {s['random_start']} random start, {s['loss']}; a sample "
                     f"is robust only if {s['robust_if']}.")
    if 'autoattack' in result['attacks']:
        s = result['attacks']['autoattack']
        if not s.get('standard', True):
            notes.append(f"AutoAttack here is {s['variant']}: NOT the standard AutoAttack; "
                         'its numbers are not comparable with the standard one\'s.')
        notes.append(f"AutoAttack: {s['version']} ({', '.join(s['attacks'])}), "
                     f"{s.get('norm', 'Linf').replace('inf', '-inf')} eps "
                     f"{s['epsilon']:g}, {s['target_classes']} target classes, seed "
                     f"{s['seed']}, {s['implementation']}; a sample is robust only if "
                     f"{s.get('robust_if', 'correct under every attack')}.")
        if samples(result, 'autoattack') != result['n_eval']:
            per_class = sorted(set(class_counts(result, 'autoattack')))
            notes.append(f"AutoAttack ran on {samples(result, 'autoattack')} of the "
                         f"{result['n_eval']} samples ({'-'.join(map(str, per_class))} per "
                         f'class, fixed by --seed): its column is over those.')
        notes += [f'AutoAttack warning: {w}' for w in s['warnings']]
    return notes


def per_class_table(result: dict) -> str:
    """Accuracy per class (rows) and evaluation (columns), each column's worst class marked
    with '*', then the average, worst and best rows."""
    names, class_names = evaluations(result), result['class_names']
    width = max(len('average'), max(map(len, class_names))) + 2
    col = max(12, max(map(len, class_names)) + 9)  # room for 'name 100.00' in worst/best
    lines = [f"{'class':<{width}}" + ''.join(f'{display_name(n):>{col}} ' for n in names)
             + f"{'n':>7}"]
    lines.append('-' * len(lines[0]))
    for c, class_name in enumerate(class_names):
        cells = ''.join(f"{result[n]['per_class'][c]:>{col}.2f}"
                        + ('*' if class_name in _worst_classes(result[n]) else ' ')
                        for n in names)
        lines.append(f'{class_name:<{width}}{cells}{result["class_counts"][c]:>7}')
    lines.append('-' * len(lines[0]))
    lines.append(f"{'average':<{width}}" + ''.join(f"{result[n]['avg']:>{col}.2f} "
                                                   for n in names))
    for row in ('worst', 'best'):
        lines.append(f'{row:<{width}}' + ''.join(
            f"{result[n][row + '_class'] + ' ' + format(result[n][row], '.2f'):>{col}} "
            for n in names))
    lines.append("* worst class of the column (every class tied at it); each class's accuracy is "
                 'over its own n.')
    return '\n'.join(line.rstrip() for line in lines)


def confusion_lines(result: dict) -> List[str]:
    """Per evaluation, the classes its worst class is mistaken for most."""
    lines = []
    for n in evaluations(result):
        mistaken = ', '.join(f"{t['class']} {t['percent']:.1f}%"
                             for t in result[n]['worst_class_confusions'])
        tied = [c for c in _worst_classes(result[n]) if c != result[n]['worst_class']]
        lines.append(f"{display_name(n)}: worst class {result[n]['worst_class']} "
                     f"({result[n]['worst']:.2f}%"
                     + (f"; tied with {', '.join(tied)}" if tied else '') + ') is '
                     + (f'mistaken for {mistaken}' if mistaken else 'never mistaken'))
    return lines


def _worst_classes(summary: dict) -> List[str]:
    """Every class at the worst value (results before ties were named: the one they name)."""
    return summary.get('worst_classes', [summary['worst_class']])


def summary_line(result: dict) -> str:
    parts = []
    rhos = (result['baseline'] or {}).get('rho', {})
    for n in evaluations(result):
        part = (f"{display_name(n)} avg {result[n]['avg']:.2f} worst {result[n]['worst']:.2f} "
                f"({', '.join(_worst_classes(result[n]))})")
        if n in rhos:
            part += f' {rho_label(n)} {_rho_text(rhos[n])}'
        parts.append(part)
    return 'summary: ' + ' | '.join(parts)


def _folder(path: str) -> str:
    return os.path.basename(os.path.dirname(os.path.abspath(path)))


def group_results(results: List[Tuple[str, dict]]) -> List[Tuple[str, List[dict]]]:
    """Results grouped by experiment, in order of first appearance: the method (a file this
    code did not train: its folder) and every field of the result's identity its seeds share
    (engine/identity.pooled_fields: recipe, data, code, epoch, selection, attack settings,
    evaluated images; a foreign file's sha256). Several results of one group are its seeds; a
    seed counted twice is a UserError. Groups of one method say in their labels the fields they
    differ in: 'TRADES + DAFA (dafa_lambda 0.25)', 'TRADES (epoch 1)'; a best checkpoint
    always says how it was chosen: 'TRADES [best on val, PGD-20 avg]'."""
    groups, paths = {}, {}
    for path, result in results:
        key = (result['method'] or _folder(path),
               json.dumps(identity.pooled_fields(result), sort_keys=True))
        members = groups.setdefault(key, [])
        seed = seed_of(result)
        twice = [p for p, r in zip(paths.get(key, []), members)
                 if os.path.abspath(p) == os.path.abspath(path)
                 or (result.get('recipe') is not None and seed_of(r) == seed)]
        if twice:
            raise UserError(f'{twice[0]} and {path} are the same run (seed {seed} of one '
                            'recipe): a seed counted twice would shrink the spread. Pass each '
                            'run once.')
        members.append(result)
        paths.setdefault(key, []).append(path)
    return [(_label(key, members[0], groups), members) for key, members in groups.items()]


def _label(key, result: dict, groups) -> str:
    """The method, with the identity fields in which its groups differ from each other (a
    recipe argument by its name), and the selection of a best checkpoint ('[best on TEST,
    ...]' when chosen on the test set)."""
    method, fields = key
    selection = result.get('selection')
    chosen = ('' if not selection else
              f" [best on {'val' if selection['split'] == 'val' else 'TEST'}, "
              f"{display_name(selection['attack'])} {selection['criterion']}]")
    own = json.loads(fields)
    others = [json.loads(k[1]) for k in groups if k[0] == method and k != key]
    # The fields both sides have, or that one side has as a value and the other as a dict
    # (validation None against {...}); a field with no counterpart (a final model's epoch
    # against a best checkpoint's) is said by the selection after the label.
    differing = sorted({f for other in others for f in identity.differences(own, other)
                        if f in own and not f.startswith('selection')
                        and (f in other or any(g.startswith(f + '.') for g in other))})
    if not differing:
        return method + chosen
    shown = [f"{f[len('run.args.'):] if f.startswith('run.args.') else f} "
             f"{identity.short(own[f])}" for f in differing]
    return f"{method} ({', '.join(shown)})" + chosen


def seed_stats(members: List[dict], name: str) -> dict:
    """Mean and sample standard deviation (n - 1; 0 for one seed) over seeds of one
    evaluation: {'avg': (mean, std), 'worst': (mean, std), 'per_class': (means, stds)}."""
    def stats(values):
        values = np.asarray(values, dtype=np.float64)
        std = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros(values.shape[1:])
        return values.mean(axis=0), std
    out = {key: tuple(float(v) for v in stats([m[name][key] for m in members]))
           for key in ('avg', 'worst')}
    means, stds = stats([m[name]['per_class'] for m in members])
    out['per_class'] = (means.tolist(), stds.tolist())
    return out


def _cell(mean: float, std: float, seeds: int) -> str:
    return f'{mean:.2f}' if seeds == 1 else f'{mean:.2f} ± {std:.2f}'


def compare_tables(results: List[Tuple[str, dict]]) -> Tuple[str, str]:
    """The paper's Table 1 layout for several results, the first method being the baseline of
    rho: per evaluation every file holds, average and worst-class accuracy and rho. Results of
    one method are its seeds: mean ± std, and rho of the means (as the paper). Returns
    (text, markdown)."""
    base = results[0][1]
    for path, result in results[1:]:
        check_same_evaluation(base, result, f'--compare {path}')
    names = [n for n in evaluations(results[0][1]) if all(n in r for _, r in results)]
    groups = group_results(results)
    labels = [label if len(members) == 1 else f'{label} ({len(members)} seeds)'
              for label, members in groups]
    stats = [{n: seed_stats(members, n) for n in names} for _, members in groups]
    rows = []
    for i, ((_, members), st) in enumerate(zip(groups, stats)):
        cells = []
        for n in names:
            (avg, avg_sd), (worst, worst_sd) = st[n]['avg'], st[n]['worst']
            score = '-' if i == 0 else _rho_text(
                rho(avg, worst, stats[0][n]['avg'][0], stats[0][n]['worst'][0]))
            cells += [_cell(avg, avg_sd, len(members)), _cell(worst, worst_sd, len(members)),
                      score]
        rows.append(cells)
    width = max(8, max(map(len, labels)) + 2)
    col = max(9, max(len(c) for cells in rows for c in cells) + 2)
    group = [f"{display_name(n):^{3 * col}}" for n in names]
    text = [' ' * width + ''.join(group),
            f"{'method':<{width}}" + ''.join(f'{c:>{col}}' for n in names
                                            for c in ('avg', 'worst', rho_label(n)))]
    text += [f'{label:<{width}}' + ''.join(f'{c:>{col}}' for c in cells)
             for label, cells in zip(labels, rows)]
    text.append(f'rho against the first row ({labels[0]}); accuracies in percent'
                + ('; mean ± sample std over seeds.' if any(len(m) > 1 for _, m in groups)
                   else '.'))
    columns = []
    for n in names:
        rho_column = 'rho_nat' if n == 'clean' else f'{display_name(n)} rho_rob'
        columns += [f'{display_name(n)} avg', f'{display_name(n)} worst', rho_column]
    markdown = ['| Method | ' + ' | '.join(columns) + ' |',
                '|---|' + '---:|' * len(columns)]
    markdown += [f'| {label} | ' + ' | '.join(cells) + ' |' for label, cells in zip(labels, rows)]
    return '\n'.join(line.rstrip() for line in text), '\n'.join(markdown)


def spread_table(results: List[Tuple[str, dict]]) -> str:
    """Markdown: per group and evaluation, the standard deviation of the class accuracies and
    the mean of the worst k classes (metrics.worst_k), mean ± sample std over seeds; computed
    from per_class, so results written before these fields read the same."""
    names = [n for n in evaluations(results[0][1]) if all(n in r for _, r in results)]
    k = worst_k(len(results[0][1]['class_names']))
    columns = [f'{display_name(n)} {c}' for n in names for c in ('class std', f'worst-{k} mean')]
    lines = ['| Method | ' + ' | '.join(columns) + ' |', '|---|' + '---:|' * len(columns)]
    for label, members in group_results(results):
        cells = []
        for n in names:
            per_class = np.array([m[n]['per_class'] for m in members])
            for values in (per_class.std(axis=1), np.sort(per_class, axis=1)[:, :k].mean(1)):
                std = values.std(ddof=1) if len(values) > 1 else 0.0
                cells.append(_cell(float(values.mean()), float(std), len(values)))
        lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def machine_lines(results: List[Tuple[str, dict]]) -> List[str]:
    """Which kinds of machine trained and evaluated these results: one line when they share
    one, else each kind with its results (a CPU run's digits repeat only on the same CPU
    capability and thread count: docs/speed.md)."""
    kinds = {}
    for path, result in results:
        trained = ((result.get('recipe') or {}).get('machine'))
        for role, info in (('trained', trained), ('evaluated', result.get('machine'))):
            if info:  # results and runs before machines were recorded say nothing
                where = '/'.join(os.path.abspath(path).split(os.sep)[-3:-1])
                kinds.setdefault(machine_label(info), []).append(f'{where} {role}')
    if len(kinds) <= 1:
        return [f'Machine: {label}.' for label in kinds]
    return ['Rows from more than one kind of machine (a CPU run repeats bit for bit only on the '
            'same CPU capability and thread count; the per-seed digits move, see '
            'docs/speed.md):'] + [f'  - {label}: {", ".join(sorted(set(where)))}'
                                  for label, where in kinds.items()]


def comparison_notes(results: List[Tuple[str, dict]]) -> List[str]:
    """What to read under a comparison table: each group's paired worst-class changes against
    the first (under the last evaluation all results hold) and the per-class resolution."""
    names = [n for n in evaluations(results[0][1]) if all(n in r for _, r in results)]
    notes = paired_differences(group_results(results), names[-1]) + [resolution(results)]
    variants = sorted({r['attacks']['autoattack'].get('variant') for _, r in results
                       if 'autoattack' in r} - {None})
    if variants:
        notes.append(f"AutoAttack here is {', '.join(variants)}: NOT the standard AutoAttack.")
    unchecked = [path for path, result in results if result.get('recipe') is None]
    if unchecked:
        notes.append(f'{len(unchecked)} of these results carry no recipe (official checkpoints, '
                     'or an eval.py before recipes): each file is its own row, grouped by its '
                     'sha256 and evaluation, as nothing records which of them are seeds of one '
                     f"recipe ({', '.join(unchecked[:3])}{' ...' if len(unchecked) > 3 else ''}).")
    return notes


def paired_differences(groups, name: str) -> List[str]:
    """Per group after the first, its worst-class change under evaluation name against the
    first group, seed by seed (the seeds both have), with their mean and sample std: a change
    within its own spread shows as such."""
    base_label, base = groups[0]
    base_by_seed = {seed_of(r): r for r in base}
    lines = []
    for label, members in groups[1:]:
        diffs = [(seed_of(r), r[name]['worst'] - base_by_seed[seed_of(r)][name]['worst'])
                 for r in members if seed_of(r) in base_by_seed]
        if not diffs:
            continue
        values = np.array([d for _, d in diffs])
        line = (f'{label} minus {base_label}, {display_name(name)} worst class, per seed: '
                + ', '.join(f'{d:+.2f} (seed {seed})' for seed, d in diffs)
                + f'; mean {values.mean():+.2f}')
        if len(values) > 1:
            std = values.std(ddof=1)
            line += f' ± {std:.2f}' + (' (within its spread)' if abs(values.mean()) <= std
                                       else '')
        lines.append(line + '.')
    return lines


def resolution(results) -> str:
    """What one test image is worth in a class's accuracy (of the evaluation with the fewest
    images per class)."""
    n = min(min(class_counts(r, name)) for _, r in results for name in evaluations(r))
    return (f'Resolution: {n} test images per class, so one image is {100 / n:.2f} points of a '
            "class's accuracy.")
