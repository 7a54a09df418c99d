"""Results: the eval_*.json document, its schema check, and the text reports (per-class table,
summary line, the paper's Table 1 layout for --compare, paired differences).

JSON schema (accuracies in percent, per-class lists in class order):
    checkpoint   str    absolute path of the evaluated checkpoint
    epoch        int    its training epoch, or null (official format)
    method       str    e.g. "TRADES + DAFA", or null (official format)
    recipe       dict   the checkpoint's recipe (engine/identity.py: args, data, code), or null
    recipe_id    str    its hash (args and data): results of one experiment share it
    selection    dict   (only for a train.py --keep_best checkpoint-best.pt) how its epoch was
                        chosen: {split: val|test, criterion: avg|avg+worst, attack, epoch,
                        score}; absent: the checkpoint evaluated as it is (a run's final model)
    model, dataset str  as passed to models.create / data.load_dataset
    n_eval       int    test samples evaluated (class-stratified when below the test set)
    seed         int    seed of the subset and of the attacks' random starts
    epsilon      float  the attacks' radius, pixels in [0, 1]
    epsilon_text str    the same, exactly: '8/255', or '0.031 (not 8/255 = 0.031373)'
    checkpoint_sha256, data_dir, images_sha256  str  the evaluated file, the data folder (None
                        for synthetic data) and the evaluated images and labels (after --n_eval)
    inputs       dict   the model's input convention: {range: [0, 1], normalize: null or
                        {mean, std}} (eval.py --normalize: applied inside the attacked model)
                        (these four: absent in results written before they were recorded)
    norm         str    'Linf' or 'L2' (results before --norm: Linf)
    class_names  [str]
    class_counts [int]  evaluated samples per class (the per-class denominators)
    clean, pgd<K>, cw<K>, autoattack  one summary per evaluation run (pgd<K>: PGD with K
                               steps, e.g. pgd20; cw<K>: PGD on the CW margin; only when run):
        {avg, worst, worst_class, worst_classes, best, best_class, per_class: [float],
         (worst_class: the first class at the worst value; worst_classes: every class at it,
         absent in results written before ties were named)
         std, worst_k, worst_k_mean,  (the class accuracies' standard deviation over classes,
         and the mean of the worst_k lowest: 3, or 10% of the classes if more)
         worst_class_confusions: [{class, percent}],  (percent of the worst class's samples
         predicted as that class)
         n, class_counts}  the samples it ran on: all n_eval, or (AutoAttack under
                           --n_autoattack) a class-stratified subset of them; results written
                           before --n_autoattack lack both and ran on all n_eval
    confusion    {clean|pgd<K>|autoattack: [[int]]}  counts, row = true, column = predicted
    attacks      {pgd<K>: {...}, autoattack: {...}}  the parameters of each attack run (pgd's
                 rule: 'final' or 'every', and robust_if, the rule in words)
    baseline     null, or {path, rho: {clean|pgd<K>|autoattack: float or null}} (--baseline)
    time_s       {clean, pgd<K>, autoattack, total}  wall-clock seconds
    evaluation   dict   what eval.py was asked to do: its arguments that change the numbers
                        (engine/identity.py EVALUATION_SETTINGS; null: the checkpoint's value
                        or the default); absent in results written before it was recorded
    device, torch  str
    code         dict   the evaluating code: {commit, dirty, fingerprint} (engine/identity.py)
    machine      dict   the evaluating machine's arithmetic (engine/device.machine: device,
                        cpu_capability, threads, torch, oneDNN, cuDNN); provenance, not identity
                        (the training machine: recipe.machine)
"""
import json
import math
import os
from typing import List, Optional, Tuple

import numpy as np
import torch

from engine.best import CRITERIA, SPLITS
from engine.cli import UserError
from engine import identity
from engine.device import machine, machine_label
from engine.identity import code_version, recipe_id
from engine.run import write_atomic

from .metrics import confusion_matrix, rho, summarize, top_confusions, worst_k
from .runner import Predictions, attack_of, display_name, pgd_steps

SUMMARY_KEYS = ('avg', 'worst', 'worst_class', 'best', 'best_class', 'per_class',
                'worst_class_confusions')
TOP_KEYS = ('checkpoint', 'epoch', 'method', 'model', 'dataset', 'n_eval', 'seed', 'epsilon',
            'class_names', 'class_counts', 'clean', 'attacks', 'confusion', 'baseline', 'time_s',
            'device', 'torch')


def rho_label(name: str) -> str:
    """As the paper's Table 1: rho of the clean accuracies is rho_nat, of robust ones rho_rob."""
    return 'rho_nat' if name == 'clean' else 'rho_rob'


def eps_text(epsilon: float) -> str:
    """The radius exactly as trained or evaluated, with its fraction of 255 where it is one and
    how it relates to 8/255 (0.031 is not 8/255)."""
    if math.isclose(epsilon, 0.031, abs_tol=1e-12):
        return '0.031 (not 8/255 = 0.031373)'
    fraction = round(epsilon * 255)
    if fraction and math.isclose(epsilon, fraction / 255, rel_tol=0, abs_tol=1e-9):
        return f'{fraction}/255'
    return f'{epsilon:g}'


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


def device_name(device: torch.device) -> str:
    if device.type == 'cuda':
        return f'cuda ({torch.cuda.get_device_name(device)})'
    return str(device)


def build_result(*, checkpoint_path: str, epoch, method, model: str, dataset: str, seed: int,
                 epsilon: float, class_names, preds: Predictions, device: torch.device,
                 total_s: float, recipe: Optional[dict] = None, norm: str = 'Linf',
                 selection: Optional[dict] = None, provenance: Optional[dict] = None,
                 settings: Optional[dict] = None) -> dict:
    """The JSON document (see the module docstring), without a baseline; provenance: what
    identifies the evaluated file and images and the model's input convention; settings: what
    the evaluation was asked to do (eval.evaluation_settings)."""
    result = {'checkpoint': os.path.abspath(checkpoint_path), 'epoch': epoch, 'method': method,
              'recipe': recipe, 'recipe_id': None if recipe is None else recipe_id(recipe),
              **({'selection': selection} if selection else {}),
              'model': model, 'dataset': dataset, 'n_eval': len(preds.labels), 'seed': seed,
              'epsilon': epsilon, 'epsilon_text': eps_text(epsilon), 'norm': norm,
              **(provenance or {}), 'evaluation': settings, 'class_names': list(class_names),
              'class_counts': torch.bincount(preds.labels, minlength=len(class_names)).tolist()}
    confusions = {}
    for name, pred in preds.pred.items():
        labels = preds.labels_of(name)
        confusion = confusion_matrix(labels, pred, len(class_names))
        summary = summarize(pred == labels, labels, class_names)
        worst = list(class_names).index(summary['worst_class'])
        summary['worst_class_confusions'] = top_confusions(confusion, worst, class_names)
        summary.update(n=len(labels), class_counts=torch.bincount(
            labels, minlength=len(class_names)).tolist())
        result[name] = summary
        confusions[name] = confusion.tolist()
    result.update({'confusion': confusions, 'attacks': preds.settings, 'baseline': None,
                   'time_s': dict(preds.time_s, total=total_s), 'device': device_name(device),
                   'torch': torch.__version__, 'machine': machine(device),
                   'code': code_version()})
    return result


def order(names) -> List[str]:
    """Evaluation names in the fixed order clean, pgd<K> (by K), cw<K> (by K), autoattack."""
    attacked = [sorted((n for n in names if pgd_steps(n, a) is not None),
                       key=lambda n, a=a: pgd_steps(n, a)) for a in ('pgd', 'cw')]
    return ([n for n in ('clean',) if n in names] + attacked[0] + attacked[1]
            + [n for n in ('autoattack',) if n in names])


def evaluations(result: dict) -> List[str]:
    """The evaluations a result holds, in order (see order)."""
    return order(list(result))


def schema_problems(result) -> List[str]:
    """Ways result departs from the schema (empty when it conforms)."""
    if not isinstance(result, dict):
        return ['not a JSON object']
    problems = [f'missing key {k!r}' for k in TOP_KEYS if k not in result]
    if problems:
        return problems
    num_classes = len(result['class_names'])
    expected = order(['clean', *result['attacks']])
    if evaluations(result) != expected:
        problems.append(f"summaries {evaluations(result)} do not match the attacks run "
                        f"{list(result['attacks'])}")
    for name in evaluations(result):
        summary = result[name]
        problems += [f'{name}: missing key {k!r}' for k in SUMMARY_KEYS if k not in summary]
        if len(summary.get('per_class', ())) != num_classes:
            problems.append(f'{name}: per_class does not have {num_classes} entries')
        matrix = result['confusion'].get(name)
        if (not isinstance(matrix, list) or len(matrix) != num_classes
                or any(len(row) != num_classes for row in matrix)):
            problems.append(f'confusion[{name!r}] is not {num_classes} x {num_classes}')
        elif sum(map(sum, matrix)) != samples(result, name):
            problems.append(f'confusion[{name!r}] does not count the samples it ran on')
    return problems


def samples(result: dict, name: str) -> int:
    """How many samples evaluation `name` of a result ran on."""
    return result[name].get('n', result['n_eval'])


def class_counts(result: dict, name: str) -> List[int]:
    """Evaluation `name`'s samples per class (its per-class denominators)."""
    return result[name].get('class_counts', result['class_counts'])


def read_result(path: str, flag: str) -> dict:
    """Load an eval_*.json written by eval.py; UserError naming flag if it is not one."""
    try:
        with open(path) as f:
            result = json.load(f)
    except (OSError, ValueError) as err:  # ValueError: bad JSON or not UTF-8 text
        raise UserError(f'{flag} {path}: cannot read it as JSON ({err}); pass an '
                        'eval_*.json written by eval.py.') from err
    problems = schema_problems(result)
    if problems:
        raise UserError(f'{flag} {path}: not an eval.py result ({problems[0]}); pass an '
                        'eval_*.json written by eval.py.')
    return result


_COMPARABLE_FLAGS = {'class_names': '--dataset', 'n_eval': '--n_eval', 'epsilon': '--epsilon',
                     'pgd_rule': '--pgd_rule', 'n_autoattack': '--n_autoattack',
                     'norm': '--norm', 'aa_variant': '--aa_version / --aa_attacks',
                     'images_sha256': '--n_eval, --seed and the test data',
                     'inputs': '--normalize', 'seed': '--seed'}
# The settings of an attack that change its numbers (the rest of result['attacks'][name] says
# them in words, or is a consequence: AutoAttack's warnings).
_ATTACK_FIELDS = ('norm', 'epsilon', 'step_size', 'num_steps', 'random_start', 'loss', 'seed',
                  'rule', 'version', 'attacks', 'variant')


def comparable_fields(result: dict) -> dict:
    """What two results must share for rho to compare like with like: the classes, the
    evaluated images, the radius and norm, and each attack's settings ('attack pgd20 step_size').
    A field a result predates is not compared."""
    fields = {key: result[key] for key in ('class_names', 'n_eval', 'epsilon', 'seed')}
    fields['norm'] = result.get('norm', 'Linf')  # results before --norm are L-inf
    for key in ('images_sha256', 'inputs'):
        # Synthetic test images are drawn from the training seed: each seed has its own.
        if result.get(key) is not None and not (key == 'images_sha256'
                                                and result.get('dataset') == 'synthetic'):
            fields[key] = result[key]
    for name in evaluations(result):
        if pgd_steps(name) is not None:
            # Results written before --pgd_rule existed used the 'every' rule.
            fields['pgd_rule'] = result['attacks'][name].get('rule', 'every')
    if 'autoattack' in result:
        fields['n_autoattack'] = samples(result, 'autoattack')
        # None: the standard AutoAttack (results before --aa_version ran only that)
        fields['aa_variant'] = result['attacks']['autoattack'].get('variant')
    for name, settings in result.get('attacks', {}).items():
        for key in _ATTACK_FIELDS:
            if key in settings:
                fields[f'attack {name} {key}'] = settings[key]
    return fields


def check_comparable(fields: dict, other: dict, what: str) -> None:
    """UserError naming the first of fields (see comparable_fields) that other differs in
    (a field only one side has is not compared: an attack only one side ran has no rho)."""
    theirs = comparable_fields(other)
    diff = identity.differences({k: v for k, v in fields.items() if k in theirs},
                                {k: v for k, v in theirs.items() if k in fields})
    if diff:
        # The first in the order fields says them (diff names nested fields: inputs.normalize).
        key = next(k for k in fields if any(d == k or d.startswith(k + '.') for d in diff))
        flag = _COMPARABLE_FLAGS.get(key, 'the attack settings: --pgd_step_size, '
                                          '--pgd_num_steps, --cw_num_steps, --seed')
        value = identity.short(json.dumps(fields[key]) if key == 'inputs' else fields[key])
        theirs_value = identity.short(json.dumps(theirs[key]) if key == 'inputs'
                                      else theirs[key])
        raise UserError(f'{what} was evaluated with {key} {theirs_value}, against {value}; '
                        f'evaluate both the same way ({flag}) for a fair rho.')


def _check_comparable(result: dict, other: dict, what: str) -> None:
    check_comparable(comparable_fields(result), other, what)


def add_baseline(result: dict, baseline: dict, baseline_path: str) -> None:
    """Set result['baseline'] to rho against baseline for every evaluation both hold."""
    _check_comparable(result, baseline, f'--baseline {baseline_path}')
    result['baseline'] = {'path': os.path.abspath(baseline_path), 'rho': {
        name: rho(result[name]['avg'], result[name]['worst'], baseline[name]['avg'],
                  baseline[name]['worst'])
        for name in evaluations(result) if name in baseline}}


def _to_json(value, level: int = 0) -> str:
    """JSON text with one key per line, but each list of plain values (per-class accuracies,
    a confusion-matrix row) on one line."""
    pad = ' ' * level
    if isinstance(value, dict) and value:
        items = [f'{pad} {json.dumps(k)}: {_to_json(v, level + 1)}' for k, v in value.items()]
        return '{\n' + ',\n'.join(items) + f'\n{pad}}}'
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        items = [f'{pad} {_to_json(v, level + 1)}' for v in value]
        return '[\n' + ',\n'.join(items) + f'\n{pad}]'
    return json.dumps(value)


def write_json(result: dict, path: str) -> None:
    """Atomically (a kill or a full disk never leaves a torn result)."""
    write_atomic(path, _to_json(result) + '\n')


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


def _seed_of(result: dict):
    """The training seed (the run's recipe), else the evaluation's seed."""
    recipe = result.get('recipe')
    return recipe['args']['seed'] if recipe is not None else result['seed']


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
        seed = _seed_of(result)
        twice = [p for p, r in zip(paths.get(key, []), members)
                 if os.path.abspath(p) == os.path.abspath(path)
                 or (result.get('recipe') is not None and _seed_of(r) == seed)]
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
        _check_comparable(base, result, f'--compare {path}')
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
    base_by_seed = {_seed_of(r): r for r in base}
    lines = []
    for label, members in groups[1:]:
        diffs = [(_seed_of(r), r[name]['worst'] - base_by_seed[_seed_of(r)][name]['worst'])
                 for r in members if _seed_of(r) in base_by_seed]
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
