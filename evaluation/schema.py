"""One evaluation's result: the eval_*.json document (its schema below), building, writing and
reading it, and what two results must share to be compared (rho). The tables made of results
are in evaluation/tables.py.

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
from typing import List, Optional

import torch

from engine import identity
from engine.best import CRITERIA, SPLITS
from engine.cli import UserError
from engine.device import machine
from engine.identity import code_version, recipe_id
from engine.run import write_atomic

from .metrics import confusion_matrix, rho, summarize, top_confusions
from .runner import Predictions, pgd_steps


SUMMARY_KEYS = ('avg', 'worst', 'worst_class', 'best', 'best_class', 'per_class',
                'worst_class_confusions')


TOP_KEYS = ('checkpoint', 'epoch', 'method', 'model', 'dataset', 'n_eval', 'seed', 'epsilon',
            'class_names', 'class_counts', 'clean', 'attacks', 'confusion', 'baseline', 'time_s',
            'device', 'torch')


def eps_text(epsilon: float) -> str:
    """The radius exactly as trained or evaluated, with its fraction of 255 where it is one and
    how it relates to 8/255 (0.031 is not 8/255)."""
    if math.isclose(epsilon, 0.031, abs_tol=1e-12):
        return '0.031 (not 8/255 = 0.031373)'
    fraction = round(epsilon * 255)
    if fraction and math.isclose(epsilon, fraction / 255, rel_tol=0, abs_tol=1e-9):
        return f'{fraction}/255'
    return f'{epsilon:g}'


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


# The JSON type of each field (a tuple: any of them); NUMBER excludes true / false.
NUMBER, TEXT, NONE = (int, float), (str,), (type(None),)
_TOP_TYPES = {'checkpoint': TEXT, 'epoch': (int,) + NONE, 'method': TEXT + NONE, 'model': TEXT,
              'dataset': TEXT, 'n_eval': (int,), 'seed': (int,), 'epsilon': NUMBER,
              'class_names': (list,), 'class_counts': (list,), 'clean': (dict,),
              'attacks': (dict,), 'confusion': (dict,), 'baseline': (dict,) + NONE,
              'time_s': (dict,), 'device': TEXT, 'torch': TEXT}
_OPTIONAL_TYPES = {'recipe': (dict,) + NONE, 'recipe_id': TEXT + NONE, 'selection': (dict,),
                   'epsilon_text': TEXT, 'norm': TEXT, 'checkpoint_sha256': TEXT + NONE,
                   'data_dir': TEXT + NONE, 'images_sha256': TEXT + NONE,
                   'inputs': (dict,) + NONE, 'evaluation': (dict,) + NONE,
                   'code': (dict,) + NONE, 'machine': (dict,) + NONE}
_SUMMARY_TYPES = {'avg': NUMBER, 'worst': NUMBER, 'worst_class': TEXT, 'best': NUMBER,
                  'best_class': TEXT, 'per_class': (list,), 'worst_class_confusions': (list,),
                  'worst_classes': (list,), 'std': NUMBER, 'worst_k': (int,),
                  'worst_k_mean': NUMBER, 'n': (int,), 'class_counts': (list,)}
_RECIPE_TYPES = {'args': (dict,), 'data': (dict,) + NONE, 'code': (dict,) + NONE,
                 'machine': (dict,) + NONE}


def _is(value, types) -> bool:
    return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)


def _type_problems(fields: dict, types: dict, where: str = '') -> List[str]:
    return [f'{where}{key} is not {" or ".join(t.__name__ for t in kinds)}'
            for key, kinds in types.items() if key in fields and not _is(fields[key], kinds)]


def schema_problems(result) -> List[str]:
    """Ways result departs from the schema (empty when it conforms): the keys, each field's
    type, and the per-class lists' and matrices' sizes, so a crafted or foreign file is refused
    by read_result before anything reads it."""
    if not isinstance(result, dict):
        return ['not a JSON object']
    problems = [f'missing key {k!r}' for k in TOP_KEYS if k not in result]
    problems += _type_problems(result, {**_TOP_TYPES, **_OPTIONAL_TYPES})
    if problems:
        return problems
    names, num_classes = result['class_names'], len(result['class_names'])
    if not num_classes or not all(_is(n, TEXT) for n in names) or len(set(names)) < num_classes:
        return ['class_names is not a list of distinct names']
    if result['n_eval'] < 1 or len(result['class_counts']) != num_classes or not all(
            _is(c, (int,)) for c in result['class_counts']):
        return [f'n_eval or class_counts is not {num_classes} counts of the evaluated samples']
    recipe, selection = result.get('recipe'), result.get('selection')
    if recipe is not None:
        problems += [f'recipe: missing key {k!r}' for k in ('args', 'data') if k not in recipe]
        problems += _type_problems(recipe, _RECIPE_TYPES, 'recipe.')
        if not problems and not _is(recipe['args'].get('seed'), (int,)):
            problems.append('recipe.args.seed is not an int')
    if selection is not None and not (
            str(selection.get('split')) in SPLITS and str(selection.get('criterion')) in CRITERIA
            and _is(selection.get('attack'), TEXT)
            and _is(selection.get('epoch'), (int,) + NONE)):
        problems.append('selection is not a split, criterion and attack')
    if not all(_is(settings, (dict,)) for settings in result['attacks'].values()):
        problems.append('attacks holds a value that is not an object')
    if problems:
        return problems
    expected = order(['clean', *result['attacks']])
    if evaluations(result) != expected:
        return [f"summaries {evaluations(result)} do not match the attacks run "
                f"{list(result['attacks'])}"]
    for name in evaluations(result):
        problems += _summary_problems(result, name)
    return problems


def _summary_problems(result, name) -> List[str]:
    """Ways the summary of one evaluation, and its confusion matrix, depart from the schema."""
    summary, names = result[name], result['class_names']
    num_classes = len(names)
    if not _is(summary, (dict,)):
        return [f'{name} is not an object']
    problems = [f'{name}: missing key {k!r}' for k in SUMMARY_KEYS if k not in summary]
    problems += _type_problems(summary, _SUMMARY_TYPES, f'{name}.')
    if problems:
        return problems
    if len(summary['per_class']) != num_classes or not all(
            _is(v, NUMBER) for v in summary['per_class']):
        problems.append(f'{name}: per_class is not {num_classes} numbers')
    if not {summary['worst_class'], summary['best_class'],
            *summary.get('worst_classes', [])} <= set(names):
        problems.append(f'{name}: names a class that is not in class_names')
    if not all(_is(t, (dict,)) and t.get('class') in names and _is(t.get('percent'), NUMBER)
               for t in summary['worst_class_confusions']):
        problems.append(f'{name}: worst_class_confusions is not classes and percents')
    counts = summary.get('class_counts', result['class_counts'])
    if summary.get('n', 1) < 1 or len(counts) != num_classes or not all(
            _is(c, (int,)) for c in counts):
        problems.append(f'{name}: n or class_counts is not {num_classes} counts')
    matrix = result['confusion'].get(name)
    if (not isinstance(matrix, list) or len(matrix) != num_classes
            or any(not isinstance(row, list) or len(row) != num_classes
                   or not all(_is(v, (int,)) for v in row) for row in matrix)):
        problems.append(f'confusion[{name!r}] is not {num_classes} x {num_classes} counts')
    elif not problems and sum(map(sum, matrix)) != samples(result, name):
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


def check_same_evaluation(result: dict, other: dict, what: str) -> None:
    check_comparable(comparable_fields(result), other, what)


def add_baseline(result: dict, baseline: dict, baseline_path: str) -> None:
    """Set result['baseline'] to rho against baseline for every evaluation both hold."""
    check_same_evaluation(result, baseline, f'--baseline {baseline_path}')
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


def seed_of(result: dict):
    """The training seed (the run's recipe), else the evaluation's seed."""
    recipe = result.get('recipe')
    return recipe['args']['seed'] if recipe is not None else result['seed']
