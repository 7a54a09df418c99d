"""A run's identity, its recipe: the resolved arguments that change what is trained, the data's
fingerprints and the code's version. train.py records it in every checkpoint and in args.json,
refuses to resume under another recipe, and eval.py copies it into every result, so that a table
groups results by recipe and reproduce.py reuses a run only for the recipe it was made with."""
import functools
import hashlib
import json
import os
import subprocess
from typing import List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """{'commit': HEAD's hash or 'unknown', 'dirty': whether tracked files differ from it}."""
    def git(*argv):
        return subprocess.run(['git', *argv], cwd=ROOT, capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
    try:
        return {'commit': git('rev-parse', 'HEAD'),
                'dirty': bool(git('status', '--porcelain', '--untracked-files=no'))}
    except (OSError, subprocess.SubprocessError):
        return {'commit': 'unknown', 'dirty': None}


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def recipe_id(recipe: dict) -> str:
    """A short hash of a recipe's arguments and data (not its code version): equal for two runs
    of the same experiment."""
    text = json.dumps({'args': recipe['args'], 'data': recipe['data']}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def differences(old: dict, new: dict, ignore=()) -> List[str]:
    """'--key old -> new' for every key whose value differs (a key only one side has counts,
    unless ignored)."""
    keys = sorted((set(old) | set(new)) - set(ignore))
    return [f'--{key} {old.get(key, "(unset)")} -> {new.get(key, "(unset)")}'
            for key in keys if old.get(key, object()) != new.get(key, object())]
