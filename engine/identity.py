"""What identifies a run and a result, and the one comparison every consumer makes.

A run's identity is its recipe: the resolved arguments that change what is trained, the
fingerprints of its input files (training, validation and test data, --init_weights, the parent
checkpoint it branched off) and its code's fingerprint. A result's identity: its run's identity
(for a file this code did not train, the file's sha256), the evaluated checkpoint's sha256,
epoch and selection, the evaluation's settings (attack, norm, radius, steps, step size, rule,
restarts, seed, AutoAttack version and attacks, subset sizes, input normalisation), the evaluated
images' fingerprint and the evaluating code's fingerprint.

Resuming, branching, reproduce.py's reuse of runs and results, pooling seeds, baselines and
export all decide "the same experiment?" with differences(), which names the fields that differ.
The machine (device, CPU capability, threads) is provenance, not identity: two seeds from two
machines are one experiment.
"""
import ast
import functools
import hashlib
import importlib.util
import json
import os
import subprocess
from typing import Dict, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The code that makes a run's and a result's numbers: the entry points and the packages (not
# scripts/, tests/ or docs). A listed folder counts with every .py file in it, tracked or not.
CODE = ('train.py', 'eval.py', 'defaults.py', 'dafa', 'data', 'engine', 'evaluation', 'fairness',
        'losses', 'models')


@functools.lru_cache(maxsize=1)
def _git_version() -> dict:
    def git(*argv):
        return subprocess.run(['git', *argv], cwd=ROOT, capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
    try:
        return {'commit': git('rev-parse', 'HEAD'),
                'dirty': bool(git('status', '--porcelain', '--untracked-files=no'))}
    except (OSError, subprocess.SubprocessError):
        return {'commit': 'unknown', 'dirty': None}


def code_version() -> dict:
    """{'commit': HEAD's hash or 'unknown', 'dirty': whether tracked files differ from it,
    'fingerprint': code_fingerprint()}: commit and dirty say where to look, the fingerprint
    whether two runs ran the same code."""
    return dict(_git_version(), fingerprint=code_fingerprint())


def _code_files() -> Dict[str, str]:
    """{name: path} of the files code_fingerprint covers: CODE under ROOT, and each module
    named in FAIRNESS_PLUGINS (a method in a file of its own, wherever it lives)."""
    files = {}
    for entry in CODE:
        path = os.path.join(ROOT, entry)
        if os.path.isfile(path):
            files[entry] = path
        for folder, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d != '__pycache__')
            for name in names:
                if name.endswith('.py'):
                    full = os.path.join(folder, name)
                    files[os.path.relpath(full, ROOT)] = full
    for module in filter(None, (m.strip() for m in
                                os.environ.get('FAIRNESS_PLUGINS', '').split(','))):
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin and os.path.isfile(spec.origin):
            files[f'plugin:{module}'] = spec.origin
    return files


_DIGESTS: Dict[str, Tuple[tuple, str]] = {}  # path -> ((mtime_ns, size), digest)


def _source_digest(path: str) -> str:
    """sha256 of a module's syntax tree without its docstrings: comments, docstrings and layout
    do not change it, a formula does (a file that does not parse: its bytes)."""
    stat = os.stat(path)
    key = (stat.st_mtime_ns, stat.st_size)
    if path in _DIGESTS and _DIGESTS[path][0] == key:
        return _DIGESTS[path][1]
    with open(path, 'rb') as f:
        source = f.read()
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        text = source
    else:
        for node in ast.walk(tree):
            body = getattr(node, 'body', None)
            if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                  ast.AsyncFunctionDef))
                    and body and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                node.body = body[1:] or [ast.Pass()]
        text = ast.dump(tree).encode()
    digest = hashlib.sha256(text).hexdigest()
    _DIGESTS[path] = (key, digest)
    return digest


def code_fingerprint() -> str:
    """A 16-hex-digit hash of the code (CODE and the plugin modules), insensitive to comments
    and docstrings. It covers the library as files, not the modules one process happened to
    import, so reproduce.py, eval.py and a training process agree on it."""
    digest = hashlib.sha256()
    for name, path in sorted(_code_files().items()):
        digest.update(f'{name}\0{_source_digest(path)}\n'.encode())
    return digest.hexdigest()[:16]


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


# Arguments added after runs were saved, each with the value every run before it trained with:
# a recipe without one is read with that value, so those runs still resume and are still the
# same experiment as a run that passes it. A flag whose default changes what is trained is
# never listed here.
# tf32: every run before it was on the CPU (none had run on CUDA).
ADDED_ARGS = {'normalize': None, 'padding_mode': 'constant', 'frl_halving_epochs': 40,
              'frl_forwards': 'harness', 'tf32': False, 'imbalance_ratio': None}


def run_identity(recipe: Optional[dict]) -> Optional[dict]:
    """A run's identity from its recipe (None for no recipe): arguments (those added later
    filled in, ADDED_ARGS), input fingerprints and the code's fingerprint (None when the
    recipe predates fingerprints)."""
    if recipe is None:
        return None
    args = recipe.get('args')
    if isinstance(args, dict):
        args = {**ADDED_ARGS, **args}
    return {'args': args, 'data': recipe.get('data'),
            'code': (recipe.get('code') or {}).get('fingerprint')}


def recipe_id(recipe: dict) -> str:
    """A short hash of a recipe's arguments and data (not its code): equal for two runs of the
    same experiment made by any code; a label, never what decides reuse."""
    text = json.dumps({'args': recipe['args'], 'data': recipe['data']}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# The settings of an evaluation that change its numbers, as eval.py's arguments name them.
EVALUATION_SETTINGS = ('attack', 'norm', 'epsilon', 'pgd_num_steps', 'pgd_step_size', 'pgd_rule',
                       'cw_num_steps', 'n_eval', 'n_autoattack', 'aa_version', 'aa_attacks',
                       'seed', 'normalize', 'model', 'dataset', 'data_dir')


def result_identity(result: dict) -> dict:
    """A result's identity (see the module docstring). Results written before a field was
    recorded hold None there, which differs from any recorded value."""
    return {'run': run_identity(result.get('recipe')),
            'checkpoint_sha256': result.get('checkpoint_sha256'),
            'epoch': result.get('epoch'),
            'selection': _selection(result.get('selection')),
            'evaluation': result.get('evaluation'),
            'attacks': {name: {k: v for k, v in settings.items() if k != 'warnings'}
                        for name, settings in (result.get('attacks') or {}).items()},
            'epsilon': result.get('epsilon'), 'norm': result.get('norm', 'Linf'),
            'n_eval': result.get('n_eval'),
            'images_sha256': result.get('images_sha256'),
            'inputs': result.get('inputs'),
            'code': (result.get('code') or {}).get('fingerprint')}


def pooled_fields(result: dict) -> dict:
    """{field: value} of a result's identity that its other seeds share, flattened: all but
    the training seed and what follows from it (the weights' sha256, a best checkpoint's epoch,
    the same seed's parent run's checkpoint, data generated from the seed). A file this code did
    not train is its own experiment: its sha256 stays."""
    found = result_identity(result)
    run = found['run']
    ignore = ['run.args.seed', 'run.data.parent_sha256', 'run.data.init_weights_sha256']
    if run is not None:
        ignore.append('checkpoint_sha256')
        if run['args'].get('dataset') == 'synthetic':
            ignore += ['run.data', 'images_sha256']
    if found['selection']:
        ignore += ['epoch', 'selection.epoch']
    return {field: value for field, (_, value) in differences({}, found, ignore).items()}


def _selection(selection: Optional[dict]) -> Optional[dict]:
    """How a best checkpoint was chosen (its score is a consequence, not a setting)."""
    if not selection:
        return None
    return {k: selection.get(k) for k in ('split', 'criterion', 'attack', 'epoch')}


def _flat(value, prefix: str = '') -> dict:
    """{'a.b.c': leaf} of nested dictionaries; lists and tuples compare as JSON has them."""
    if isinstance(value, dict) and value:
        flat = {}
        for key, item in value.items():
            flat.update(_flat(item, f'{prefix}.{key}' if prefix else str(key)))
        return flat
    return {prefix: json.loads(json.dumps(value, default=str))}


_UNSET = '(unset)'


def differences(old: Optional[dict], new: Optional[dict], ignore=()) -> Dict[str, tuple]:
    """{field: (old value, new value)} for every field (dotted, e.g. 'data.train_sha256',
    'args.lr', 'code') in which two identities differ, in field order; a field only one side
    has differs. ignore: fields, or prefixes of fields ('args.seed', 'data'), left out. The one
    comparison behind every "is this the same experiment?"."""
    a, b = _flat(old or {}), _flat(new or {})
    skip = tuple(ignore)

    def ignored(field):
        return any(field == s or field.startswith(s + '.') for s in skip)
    return {field: (a.get(field, _UNSET), b.get(field, _UNSET))
            for field in sorted(set(a) | set(b))
            if not ignored(field) and a.get(field, _UNSET) != b.get(field, _UNSET)}


def short(value) -> str:
    """A value for a message or a label: a sha256 cut to 12 hex digits."""
    text = str(value)
    return text[:12] + '...' if len(text) == 64 and all(c in '0123456789abcdef' for c in text) \
        else text


def describe(diff: Dict[str, tuple], limit: int = 6) -> str:
    """'--lr 0.1 -> 0.2, data.train_sha256 1a2b... -> 3c4d...': what differences() found, for
    an error message (an argument by its flag; the first `limit` fields, and how many more)."""
    items = [f"{'--' + field[5:] if field.startswith('args.') else field} {short(old)} -> "
             f'{short(new)}' for field, (old, new) in diff.items()]
    more = len(items) - limit
    return ', '.join(items[:limit]) + (f' and {more} more' if more > 0 else '')
