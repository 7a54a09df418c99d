"""The benchmark's outputs from the finished evaluations: table.md (ours, the paper's rows beside
them, the spread over classes, training times, which code and machines made what, what did not
finish), results.json and the per-class (and sweep) figures."""
import json
import os
import re
from typing import List, Optional

from engine import checkpoint, identity, run
from evaluation import tables as result_tables
from evaluation.figures import compare_figure, sweep_figure
from evaluation.metrics import rho
from evaluation.schema import samples
from fairness import METHODS as FAIRNESS

from .plan import ROOT, Plan
from .protocols import (PROTOCOLS, describe, network_args, official_args, parent_of, recipe_args,
                        variants)

PAPER_TABLE = os.path.join(ROOT, 'evaluation', 'paper_table1.json')


def train_seconds(folder: str, upto: Optional[int] = None) -> float:
    """Training time of a run folder's epochs (up to epoch `upto`), from metrics.jsonl: the
    epochs and the method's work between them (e.g. WAT's and FRL's validation attacks)."""
    return sum(r['train_time_s'] + r.get('method_time_s', 0) for r in run.metrics_rows(folder)
               if upto is None or r['epoch'] <= upto)


def _mean_std(values: List[float]) -> str:
    if len(values) == 1:
        return f'{values[0]:.1f}'
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f'{mean:.1f} ± {std:.1f}'


def paper_rows(dataset: str, labels: List[str]):
    """Markdown rows of the paper's Table 1 for those of our methods it has (robust accuracy
    under AutoAttack), rho against its TRADES row; and the source of the numbers."""
    with open(PAPER_TABLE) as f:
        paper = json.load(f)
    table = paper['results'][dataset]
    base = table['TRADES']
    rows = []
    # A sweep's rows ('TRADES + DAFA (dafa_lambda 0.5)') are the paper's method at other values;
    # '[best on val, ...]' marks another checkpoint of it.
    for label in (label for label in dict.fromkeys(re.split(r' [(\[]', x)[0] for x in labels)
                  if label in table):
        r = table[label]
        cells = []
        for kind in ('clean', 'robust'):
            avg, worst = r[f'{kind}_avg'], r[f'{kind}_worst']
            score = '-' if label == 'TRADES' else format(rho(
                avg[0], worst[0], base[f'{kind}_avg'][0], base[f'{kind}_worst'][0]), '.2f')
            cells += [f'{avg[0]:.2f} ± {avg[1]:.2f}', f'{worst[0]:.2f} ± {worst[1]:.2f}', score]
        rows.append(f'| {label} (paper) | ' + ' | '.join(cells) + ' |')
    return rows, paper['source']


def time_lines(runs: List[dict], labels: List[str], branch_epochs: dict) -> List[str]:
    """The table of training times per row label."""
    branched = ', '.join(f'{method} from epoch {epoch + 1}'
                         for method, epoch in branch_epochs.items())
    lines = ['Training time per run (s; mean ± std over seeds; a method\'s work between '
             'epochs included). A branched run trains only the epochs after its branch '
             f'point ({branched or "none here"}) and shares the ones before with its '
             'parent run:', '',
             '| method | own epochs | with the shared warm-up | s per epoch | '
             'per epoch, relative to the first row |', '|---|---:|---:|---:|---:|']
    per_epoch = {label: [r['epoch_time_s'] for r in runs if r['label'] == label]
                 for label in labels}
    base = sum(per_epoch[labels[0]]) / len(per_epoch[labels[0]])
    for label in labels:
        own = [r['train_time_s'] for r in runs if r['label'] == label]
        total = [r['train_time_s'] + r['warmup_time_s_shared'] for r in runs
                 if r['label'] == label]
        ratio = sum(per_epoch[label]) / len(per_epoch[label]) / base
        lines.append(f'| {label} | {_mean_std(own)} | {_mean_std(total)} | '
                     f'{_mean_std(per_epoch[label])} | {ratio:.2f} |')
    return lines + ['']


def code_lines(runs: List[dict]) -> List[str]:
    """Which runs this command reused (their times were measured by the command that made
    them), and, when not every run and result was made by this code, which code made each."""
    lines = []
    reused = [f"{r['label']} seed {r['seed']}" for r in runs if r['reused']]
    if reused:
        lines += ['Reused from an earlier command, so timed by it (maybe on another machine): '
                  + ', '.join(reused) + '.', '']
    now = identity.code_fingerprint()
    if any(set(r['code']['run']) | {r['code']['evaluation']} != {now} for r in runs):
        lines += [f'Made by other code than this ({now}; engine/identity.py fingerprints, '
                  '--reuse_other_code):', '']
        lines += [f"- {r['label']} seed {r['seed']}: trained by "
                  f"{', '.join(map(str, r['code']['run']))}, evaluated by "
                  f"{r['code']['evaluation']}" for r in runs]
        lines.append('')
    return lines


def recipe_lines(a) -> List[str]:
    """Which recipe each method's rows were trained with."""
    if a.recipe == 'shared':
        scaled = [f"{m} {' '.join(recipe_args(a, m))}" for m in a.methods if recipe_args(a, m)]
        return ['Recipe `shared`: every method on the protocol\'s TRADES recipe (the DAFA '
                "paper's comparison)" + (f"; epoch counts scaled to the protocol as tau is: "
                                         f"{', '.join(scaled)}" if scaled else '') + '.', '']
    lines = ['Recipe `official`: each method on its own published recipe, as these train.py '
             'arguments on top of the protocol\'s (official epoch counts scaled by '
             f'{a.epochs} / 110; what they cannot express: docs/methods.md):', '']
    for m in a.methods:
        extra = ' '.join(official_args(a, m)) or '(the shared recipe)'
        network = ' '.join(network_args(a, m))
        cls = FAIRNESS[variants()[m][1]]
        starts = (f', from the final model of {parent_of(m, a.recipe)}'
                  + (f' trained with {network}' if network else '') if cls.fine_tunes else '')
        taught = f', taught by the final model of {parent_of(m, a.recipe)}' \
            if cls.teacher_of else ''
        lines.append(f'- {m}: {extra}{starts}{taught}')
    return lines + ['']


def selection_lines(plan: Plan, runs: List[dict]) -> List[str]:
    """Which checkpoint of each run the rows report (--select)."""
    if plan.args.select == 'final':
        return ['Checkpoint: the final model of every run.', '']
    held = sorted({f"{t.method} {plan.run_args[t].val_per_class}" for t in plan.tasks
                   if t.kind == 'train' and not FAIRNESS[
                       plan.run_args[t].rob_fairness_algorithm].validation_fraction})
    chosen = [r['result'].get('selection') or {} for r in runs]
    text = (result_tables.selection_label(dict(chosen[0], epoch=None)) if chosen
            else 'best on validation')
    lines = [f'Checkpoint: each run\'s {text} (train.py --keep_best val), not its final model; '
             'the methods without a validation split of their own hold out per class for it: '
             + (', '.join(held) or 'none') + '.', '']
    if runs:
        lines += ['Selected epochs: ' + ', '.join(
            f"{r['method']} seed {r['seed']}: {c.get('epoch')}" for r, c in zip(runs, chosen))
            + '.', '']
    return lines


def tabulate(plan: Plan) -> dict:
    """table.md, results.json and per_class.png from the finished evaluations."""
    a = plan.args
    evals = [t for t in plan.tasks if t.kind == 'eval' and plan.finished(t)]
    results, runs = _runs(plan, evals)
    # Each result's row label: its method, and the hyper-parameters its row differs in.
    groups = result_tables.group_results(results) if results else []
    label_of = {id(member): label for label, members in groups for member in members}
    for r in runs:
        r['label'] = label_of[id(r['result'])]
    failures = _failures(plan, evals)
    summary = {'protocol': a.protocol, 'protocol_note': PROTOCOLS[a.protocol].note,
               'recipe': describe(a),
               'data': a.data_label, 'dataset': a.dataset, 'epochs': a.epochs,
               'branch_epochs': {t.method: plan.branch_epoch(t) for t in plan.tasks
                                 if t.kind == 'train' and t.depends
                                 and not t.starts_after_parent},
               'methods_recipe': a.recipe,
               'official_args': {m: official_args(a, m) for m in a.methods},
               'seeds': a.seeds, 'methods': a.methods, 'train_args': a.train_args,
               'device': results[0][1]['device'] if results else None,
               'torch': results[0][1]['torch'] if results else None,
               'sweep': a.sweep, 'code': identity.code_version(), 'runs': runs,
               'failures': failures}
    run.write_atomic(os.path.join(a.out, 'results.json'), json.dumps(summary, indent=1))
    lines = [f'# Table 1 reproduction: {a.data_label}, protocol `{a.protocol}`', '',
             f'{describe(a)}; seeds {", ".join(map(str, a.seeds))}; device '
             f"{summary['device']}, torch {summary['torch']}, commit "
             f"{summary['code']['commit'][:12]}"
             f"{' (with uncommitted changes)' if summary['code']['dirty'] else ''}.", '',
             *result_tables.machine_lines(results), '']
    lines += recipe_lines(a) + selection_lines(plan, runs)
    if results:
        lines += _result_lines(plan, results, runs, [label for label, _ in groups],
                                summary['branch_epochs'])
    if failures:
        lines += ['Not finished:', ''] + [
            f"- {f['task']}: {f['status']}{': ' + f['why'] if f['why'] else ''} (log: "
            f"{f['log']})" for f in failures] + ['']
    run.write_atomic(os.path.join(a.out, 'table.md'), '\n'.join(lines))
    return summary


def _runs(plan: Plan, evals) -> tuple:
    """(path, result) of each finished evaluation, and its run's summary for results.json."""
    results, runs = [], []
    for task in evals:
        path, result = plan.result_of(task)
        results.append((path, result))
        own = train_seconds(task.folder)  # a branched run's folder holds its own epochs only
        # The parent's epochs up to the branch point, or all of them for a fine-tuned run.
        shared = train_seconds(task.depends[0].depends[0].folder, plan.branch_epoch(
            task.depends[0])) if task.depends[0].depends else 0.0
        made = checkpoint.load(plan.evaluated(task)).get('code_history') or []
        runs.append({'method': task.method, 'setting': list(task.setting), 'seed': task.seed,
                     'folder': task.folder, 'reused': task.depends[0].reused,
                     'code': {'run': [v.get('fingerprint') for v in made],
                              'evaluation': (result.get('code') or {}).get('fingerprint')},
                     'train_time_s': own,
                     'epoch_time_s': own / max(1, len(run.metrics_rows(task.folder))),
                     'warmup_time_s_shared': shared, 'result': result})
    return results, runs


def _failures(plan: Plan, evals) -> list:
    failures = [{'task': t.name, 'status': t.status, 'log': t.log, 'why': t.why}
                for t in plan.tasks if t.status in ('failed', 'blocked', 'interrupted')]
    # Done, yet without the result the plan asks for now: said, not silently left out.
    failures += [{'task': t.name, 'status': 'not tabled', 'log': t.log,
                  'why': 'its result is not of the identity the plan asks for now (did the code '
                         'change while this command ran?); rerun the same command'}
                 for t in plan.tasks if t.kind == 'eval' and t.status == 'done' and t not in evals]
    return failures


def _result_lines(plan: Plan, results, runs, labels, branch_epochs) -> list:
    """table.md's tables, paper reference, times, code and figures, from the results."""
    a = plan.args
    # In plan order, so the first method (TRADES, or PGD-AT) is the baseline of rho.
    _, markdown = result_tables.compare_tables(results)
    first = results[0][1]
    n = f"n = {first['n_eval']} test images per evaluation"
    if 'autoattack' in first and samples(first, 'autoattack') != first['n_eval']:
        n += f", AutoAttack on {samples(first, 'autoattack')} of them"
    lines = [f'Ours ({n}; mean ± sample std over seeds; rho of the means against the '
             'first row):', '', markdown, '']
    lines += ['How the class accuracies spread (standard deviation over classes; mean of '
              'the worst classes):', '', result_tables.spread_table(results), '']
    lines += [f'- {note}' for note in result_tables.comparison_notes(results)] + ['']
    rows, source = paper_rows(a.paper_dataset, labels)
    if rows:
        lines += [f'The paper, for reference ({a.paper_dataset}; {source}):', '',
                  '| Method | clean avg | clean worst | rho_nat | AutoAttack avg | '
                  'AutoAttack worst | rho_rob |', '|---|---:|---:|---:|---:|---:|---:|',
                  *rows, '']
    lines += time_lines(runs, labels, branch_epochs) + code_lines(runs)
    compare_figure(results, os.path.join(a.out, 'per_class.png'))
    if a.sweep:
        sweep_figure(runs, a.sweep[0], os.path.join(a.out, 'sweep.png'))
        lines += [f'Sweep of --{a.sweep[0]}: sweep.png (average and worst-class accuracy '
                  'against the value, one point per seed, the line through the means).', '']
    return lines
