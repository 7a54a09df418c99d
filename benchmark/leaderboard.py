"""The robust-fairness leaderboard: per track, every method's per-class clean, PGD-20 and
AutoAttack accuracy over seeds, from the evidence committed under leaderboard/.

An entry is leaderboard/<track>/<method>/seed<N>/ holding:
    result.json        eval.py's result for the run's checkpoint chosen on the validation split
                       (train.py --keep_best val; scripts/reproduce.py --select best_val)
    result_final.json  (optional) the same run's final model, reported beside it
    model_card.json    scripts/export.py's card of the selected checkpoint (no weights)
    run.json           {command, train_s_per_epoch, epochs}: what made it and how long it took
and a track may hold timing.json (scripts/time_methods.py): every method's seconds per epoch,
timed back to back on one idle machine by the code that trained the entries; the time column
reads it where it is there, else the runs' own seconds (each under whatever load it had).

load() refuses (UserError naming the field) an entry whose seeds are not one experiment (their
results' identities differ in more than the seed: engine/identity.pooled_fields), a result not
selected on validation, and a track whose entries were evaluated differently.
"""
import json
import os
import re
from typing import Dict, List, Optional

import numpy as np

from engine import identity
from engine.device import machine_label
from engine.cli import UserError
from evaluation.schema import seed_of
from fairness import METHODS as FAIRNESS

from .protocols import PROTOCOLS, variants

# The tracks, in page order. The long-tailed split into head / medium / tail is ours (none of
# the long-tailed AT codes fixes one): classes 0-2 / 3-6 / 7-9 of CIFAR-10-LT.
TRACKS = {
    'cpu': {'title': 'CIFAR-10 (JPEG copy), small-cnn, 20 epochs, CPU', 'groups': None},
    'cpu-lt': {'title': 'CIFAR-10-LT (JPEG copy, rho 0.02), small-cnn, 20 epochs, CPU',
               'groups': {'head': (0, 1, 2), 'medium': (3, 4, 5, 6), 'tail': (7, 8, 9)}},
    'paper': {'title': "CIFAR-10 (JPEG copy), ResNet-18, 110 epochs (the paper's recipe), GPU",
              'groups': None},
    'paper-lt': {'title': 'CIFAR-10-LT (JPEG copy, rho 0.02), ResNet-18, 110 epochs, GPU',
                 'groups': {'head': (0, 1, 2), 'medium': (3, 4, 5, 6), 'tail': (7, 8, 9)}},
}
EVALUATIONS = ('clean', 'pgd20', 'autoattack')
# What a track's entries must share to stand in one table: how they were evaluated.
EVALUATED_ALIKE = ('evaluation', 'attacks', 'epsilon', 'norm', 'n_eval', 'images_sha256',
                   'inputs', 'selection.split', 'selection.criterion', 'selection.attack')


# Methods whose before_epoch attacks the whole training set (CSR's confusion pass), which no
# class attribute declares.
EXTRA_PASS = ('csr',)


def needs(method: str, recipe: dict) -> List[str]:
    """What a run needed beyond the base recipe: read from its recipe (a teacher's, a finished
    run's or a parent's checkpoint it read) and its Method (a validation split it trains on)."""
    data = recipe.get('data') or {}
    out = []
    if data.get('teacher_sha256'):
        out.append('a teacher')
    if data.get('init_weights_sha256'):
        out.append('a finished run to fine-tune')
    if data.get('parent_sha256'):
        out.append("a plain run's warm-up")
    if FAIRNESS[variants()[method][1]].validation_fraction:
        out.append('a validation split (in training)')
    if method in EXTRA_PASS:
        out.append('a pass over the training set per epoch')
    return out


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _seed_folders(folder: str) -> List[str]:
    names = [n for n in os.listdir(folder) if n.startswith('seed') and n[4:].isdigit()]
    return [os.path.join(folder, n) for n in sorted(names, key=lambda n: int(n[4:]))]


def load(root: str) -> Dict[str, List[dict]]:
    """{track: [entry]} of every entry under root, each {method, seeds: [{seed, result,
    final, card, run, folder}]}; UserError for a mixed entry or a track evaluated unlike."""
    tracks = {}
    for track in TRACKS:
        folder = os.path.join(root, track)
        if not os.path.isdir(folder):
            continue
        entries = []
        for method in sorted(os.listdir(folder)):
            where = os.path.join(folder, method)
            if not os.path.isdir(where):
                continue
            if method not in variants():
                raise UserError(f'{where}: {method!r} is no --methods name '
                                f"({', '.join(variants())}); rename the folder.")
            seeds = [_read_seed(path) for path in _seed_folders(where)]
            for seed in seeds:
                check_track(seed['result'], track, seed['folder'])
            if seeds:
                _check_one_experiment(where, seeds)
                entries.append({'method': method, 'seeds': seeds})
        _check_evaluated_alike(folder, entries)
        tracks[track] = entries
    return tracks


def check_track(result: dict, track: str, where: str) -> None:
    """UserError unless the result's run was trained as the track's protocol says: its model,
    epochs, training subset, and every argument the protocol passes that the recipe records
    (a method's own flags, its scaled epoch counts among them, are in the recipes of the runs
    they apply to only)."""
    protocol = PROTOCOLS[track]
    args = result['recipe']['args']
    expected = {'model': protocol.model, 'epochs': protocol.epochs, 'n_train': protocol.n_train,
                'imbalance_ratio': None}
    flags = list(protocol.train_args) + list(
        protocol.shared_args.get(args.get('rob_fairness_algorithm'), ()))
    for i, flag in enumerate(flags):
        if i + 1 < len(flags) and not flags[i + 1].startswith('--'):
            expected[flag[2:]] = flags[i + 1]
    for name, want in expected.items():
        if name not in args:
            continue
        have = args[name]
        if not (have == want or _same_number(have, want)):
            raise UserError(f'{where}: trained with --{name} {have}, and the {track} track\'s '
                            f'protocol uses {want}; collect it into the track of its protocol '
                            '(scripts/reproduce.py --protocol).')


def _same_number(a, b) -> bool:
    """Whether a recipe's value and a protocol's argument string are one number (0.02, '0.02')."""
    try:
        return a is not None and b is not None and float(a) == float(b)
    except (TypeError, ValueError):
        return False


def _read_seed(folder: str) -> dict:
    result = read_json(os.path.join(folder, 'result.json'))
    selection = result.get('selection') or {}
    if selection.get('split') != 'val':
        raise UserError(f"{folder}/result.json: its checkpoint was "
                        f"{'chosen on the ' + selection['split'] + ' set' if selection else 'not chosen on a validation split'}"
                        '; the leaderboard takes checkpoints selected on validation only '
                        '(scripts/reproduce.py --select best_val).')
    final = os.path.join(folder, 'result_final.json')
    seed = {'folder': folder, 'result': result, 'seed': seed_of(result),
            'final': read_json(final) if os.path.isfile(final) else None,
            'run': read_json(os.path.join(folder, 'run.json')),
            'card': os.path.join(folder, 'model_card.json')}
    if folder != os.path.join(os.path.dirname(folder), f"seed{seed['seed']}"):
        raise UserError(f"{folder}: holds seed {seed['seed']}'s result; move it to "
                        f"seed{seed['seed']}/.")
    return seed


def _check_one_experiment(where: str, seeds: List[dict]) -> None:
    first = seeds[0]
    for other in seeds[1:]:
        for name in ('result', 'final'):
            a, b = first[name], other[name]
            if a is None or b is None:
                continue
            diff = identity.differences(*(_pooled(r) for r in (a, b)))
            if diff:
                raise UserError(f"{where}: seed {other['seed']} is not the same experiment as "
                                f"seed {first['seed']} ({name}: {identity.describe(diff)}); an "
                                'entry pools seeds of one recipe, data, code and evaluation.')


def _pooled(result: dict) -> dict:
    """pooled_fields without the teacher's checkpoint, which is the same seed's run (ABSLD's
    teacher under scripts/reproduce.py) and so follows from the seed."""
    return {f: v for f, v in identity.pooled_fields(result).items()
            if f != 'run.data.teacher_sha256'}


def _check_evaluated_alike(folder: str, entries: List[dict]) -> None:
    def settings(result):
        fields = identity._flat(identity.result_identity(result))
        return {f: v for f, v in fields.items()
                if any(f == s or f.startswith(s + '.') for s in EVALUATED_ALIKE)}
    seeds = [(e['method'], s) for e in entries for s in e['seeds']]
    for method, seed in seeds[1:]:
        diff = identity.differences(settings(seeds[0][1]['result']), settings(seed['result']))
        if diff:
            raise UserError(f"{folder}: {method} seed {seed['seed']} was evaluated unlike "
                            f"{seeds[0][0]} seed {seeds[0][1]['seed']} "
                            f'({identity.describe(diff)}); evaluate every entry alike.')


def class_metrics(per_class: List[float], groups: Optional[dict]) -> dict:
    """One result's figures for one evaluation: average, worst class, class std (population,
    over classes), normalised std (std / average), worst-best gap, and group means."""
    acc = np.asarray(per_class, dtype=np.float64)
    out = {'avg': acc.mean(), 'worst': acc.min(), 'std': acc.std(),
           'nsd': acc.std() / acc.mean() if acc.mean() > 0 else float('nan'),
           'gap': acc.max() - acc.min()}
    for name, classes in (groups or {}).items():
        out[name] = acc[list(classes)].mean()
    return out


def _mean_std(values) -> tuple:
    values = np.asarray(values, dtype=np.float64)
    std = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros(values.shape[1:])
    return values.mean(axis=0), std


def aggregate(entry: dict, groups: Optional[dict]) -> dict:
    """An entry's figures, mean and sample std (n - 1; 0 for one seed) over its seeds."""
    out = {'seeds': [s['seed'] for s in entry['seeds']]}
    for which in ('result', 'final'):
        results = [s[which] for s in entry['seeds'] if s[which] is not None]
        if which == 'final' and len(results) != len(entry['seeds']):
            continue
        for name in EVALUATIONS:
            if not all(name in r for r in results):
                continue
            rows = [class_metrics(r[name]['per_class'], groups) for r in results]
            key = name if which == 'result' else f'final.{name}'
            out[key] = {k: tuple(float(v) for v in _mean_std([row[k] for row in rows]))
                        for k in rows[0]}
            means, stds = _mean_std([r[name]['per_class'] for r in results])
            out[key]['per_class'] = (means.tolist(), stds.tolist())
    out['s_per_epoch'] = float(np.mean([s['run']['train_s_per_epoch'] for s in entry['seeds']]))
    out['selected_epochs'] = [s['result']['epoch'] for s in entry['seeds']]
    return out


def read_timing(root: str, track: str, entries: List[dict]) -> Optional[dict]:
    """<root>/<track>/timing.json (scripts/time_methods.py: every method timed back to back on
    one otherwise idle machine), None where there is none. UserError, naming the field, for a
    timing of another track, of code other than what trained the entries, or without TRADES."""
    path = os.path.join(root, track, 'timing.json')
    if not os.path.isfile(path):
        return None
    timing = read_json(path)
    if timing.get('track') != track:
        raise UserError(f"{path}: track {timing.get('track')!r} was timed, not {track!r}; move "
                        'it to the folder of its track.')
    trained_by = sorted({(s['result']['recipe'].get('code') or {}).get('fingerprint')
                         for e in entries for s in e['seeds']} - {None})
    timed = (timing.get('code') or {}).get('fingerprint')
    if trained_by and timed not in trained_by:
        raise UserError(f'{path}: code {timed} was timed, and the entries were trained by '
                        f"{', '.join(trained_by)}; run scripts/time_methods.py with that code.")
    if 'trades' not in timing.get('s_per_epoch', {}):
        raise UserError(f'{path}: s_per_epoch has no trades, the reference; time it too.')
    return timing


def _time_rows(rows: List[dict], timing: Optional[dict]) -> None:
    """Each row's seconds per epoch against TRADES, and the note saying how they were timed."""
    if timing:
        seconds, rounds = timing['s_per_epoch'], len(timing['rounds'])
        note = (f"time: {timing['what']}, by scripts/time_methods.py on "
                f"{machine_label(timing['machine'])}, {rounds} round{'' if rounds == 1 else 's'}, "
                f"methods back to back (TRADES {seconds['trades']:.1f} s)")
    else:
        seconds = {r['method']: r['figures']['s_per_epoch'] for r in rows}
        note = ("time: the runs' own seconds per epoch, under whatever else ran beside each "
                '(a rough ratio)')
    for row in rows:
        row['time_note'] = note
        row['time_vs_trades'] = (seconds[row['method']] / seconds['trades']
                                 if row['method'] in seconds and seconds.get('trades') else None)


def table(entries: List[dict], track: str, timing: Optional[dict] = None) -> List[dict]:
    """The track's rows, ranked by worst-class PGD-20 (mean over seeds), then its average;
    timing: the track's read_timing, else the time column is the runs' own."""
    groups = TRACKS[track]['groups']
    rows = []
    for entry in entries:
        figures = aggregate(entry, groups)
        first = entry['seeds'][0]
        rows.append({'method': entry['method'], 'label': first['result']['method'],
                     'figures': figures, 'needs': needs(entry['method'], first['result']['recipe']),
                     'class_names': first['result']['class_names'],
                     'aa_images': first['result'].get('autoattack', {}).get('n'),
                     'val_per_class': sorted({
                         ((s['result']['recipe'].get('data') or {}).get('validation') or {})
                         .get('per_class') for s in entry['seeds']} - {None}),
                     'code': sorted({(s['result']['recipe'].get('code') or {}).get('fingerprint')
                                     for s in entry['seeds']} - {None}),
                     'command': entry_command([s['run']['command'] for s in entry['seeds']],
                                              [s['seed'] for s in entry['seeds']]),
                     'folders': [s['folder'] for s in entry['seeds']]})
    _time_rows(rows, timing)
    rows.sort(key=lambda r: (-r['figures']['pgd20']['worst'][0], -r['figures']['pgd20']['avg'][0],
                             r['method']))
    return rows


def entry_command(commands: List[str], seeds: List[int]) -> str:
    """The seeds' commands as one (`--seeds 1,2,3`) where they differ only in `--seeds N`,
    else each on its own line."""
    rest = {re.sub(r'--seeds \S+', '--seeds {}', c) for c in commands}
    if len(rest) == 1 and all(f'--seeds {s}' in c for c, s in zip(commands, seeds)):
        return rest.pop().format(','.join(map(str, seeds)))
    return '\n'.join(commands)


def columns(track: str) -> List[tuple]:
    """(key, heading) of a track's table: key 'pgd20.avg' is figures['pgd20']['avg']."""
    cols = [('clean.avg', 'clean avg'), ('clean.worst', 'clean worst'),
            ('pgd20.avg', 'PGD-20 avg'), ('pgd20.worst', 'PGD-20 worst'),
            ('pgd20.std', 'PGD-20 class std'), ('pgd20.nsd', 'PGD-20 NSD'),
            ('pgd20.gap', 'PGD-20 worst-best gap')]
    cols += [(f'pgd20.{g}', f'PGD-20 {g}') for g in TRACKS[track]['groups'] or ()]
    cols += [('autoattack.avg', 'AA avg'), ('autoattack.worst', 'AA worst'),
             ('final.pgd20.avg', 'final PGD-20 avg'), ('final.pgd20.worst', 'final PGD-20 worst')]
    return cols


def cell(figures: dict, key: str) -> Optional[tuple]:
    """(mean, std) of a column, None where the entry lacks it (no final-model result)."""
    name, _, stat = key.rpartition('.')
    found = figures.get(name)
    return None if found is None or stat not in found else found[stat]


def fmt(value: Optional[tuple], seeds: int, stat: str) -> str:
    if value is None:
        return '-'
    digits = 3 if stat == 'nsd' else 2
    mean, std = value
    return f'{mean:.{digits}f}' if seeds == 1 else f'{mean:.{digits}f} ± {std:.{digits}f}'


def protocol_note(track: str) -> str:
    return PROTOCOLS[track].note


def evaluation_note(rows: List[dict]) -> str:
    """What a track's figures were measured on: AutoAttack's subset of the test set, the
    validation split the checkpoints were chosen on (a small one chooses noisily), the code,
    and how the time column was timed."""
    aa = rows[0]['aa_images']
    text = f'AutoAttack on {aa:,} test images' if aa else 'No AutoAttack'
    sizes, others = _usual(rows, 'val_per_class')
    if sizes:
        text += f'; checkpoints chosen on a validation split of {sizes} images per class{others}'
    code, others = _usual(rows, 'code')
    text += f'; trained by the code of fingerprint {code}{others}' if code else ''
    note = rows[0].get('time_note')
    return f'{text}; {note}.' if note else f'{text}.'


def _usual(rows: List[dict], key: str) -> tuple:
    """(the value of row[key], a list, that most rows share; ' (label: value; ...)' of the rows
    with another, or '')."""
    values = [tuple(row[key]) for row in rows if row[key]]
    if not values:
        return '', ''
    usual = max(sorted(set(values)), key=values.count)
    others = [f"{row['label']}: {'/'.join(map(str, row[key]))}" for row in rows
              if row[key] and tuple(row[key]) != usual]
    return '/'.join(map(str, usual)), f" ({'; '.join(others)})" if others else ''
