"""Robust-fairness methods behind one interface (base.Method), one file each, and the registry
that everything else reads: train.py (flags, checks, validation split, branching), eval.py
(labels, figures), scripts/reproduce.py (which runs to train and which branch off which).
DAFA itself is the top-level package dafa/; the baselines are one file each here.

A new method: one file with a Method subclass, and one line here that imports the class: every
Method subclass imported below that declares its own `name` is registered, in import order.
"""
import argparse
import importlib
import os

from engine.recorders import RECORDERS

from .base import ClassTables, EpochContext, Method
# The registry's order (--help, --methods): Table 1's baselines as the paper lists them, then
# the methods after DAFA by date; a new method's line goes last.
from .wat import WAT
from .frl import FRL
from .cfa import CFA
from .bat import BAT
from .faal import FAAL
from .absld import ABSLD
from .csr import CSR
from .ham import HAM

# The paper's method lives in its own package (dafa/), whose Method needs .base above.
from dafa.method import DAFA  # noqa: E402

METHODS = {cls.name: cls for cls in [Method, DAFA] + [
    obj for obj in list(globals().values())
    if isinstance(obj, type) and issubclass(obj, Method) and 'name' in vars(obj)]}

LOSS_LABELS = {'trades': 'TRADES', 'pgd': 'PGD-AT'}  # the --loss values, as tables name them


def register(cls) -> type:
    """Add a method to the registry (what the one line in METHODS does; tests use it)."""
    METHODS[cls.name] = cls
    return cls


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One argument group per method with its own flags; each class learns its flags' names
    (Method.flags: what identifies its runs, and what a branch may set anew)."""
    for cls in METHODS.values():
        group = parser.add_argument_group(f'{cls.label or cls.name} (--rob_fairness_algorithm '
                                          f'{cls.name})')
        before = len(parser._actions)
        cls.add_arguments(group)
        cls.flags = tuple(action.dest for action in parser._actions[before:])


def recorders() -> dict:
    """{name: recorder class}: engine.recorders.RECORDERS and every registered method's own."""
    known = dict(RECORDERS)
    for cls in METHODS.values():
        known.update(cls.recorders)
    return known


def label(loss: str, algorithm: str) -> str:
    """How tables name a run: 'TRADES', 'TRADES + DAFA', 'PGD-AT + DAFA'."""
    base = LOSS_LABELS.get(loss, str(loss))
    extra = METHODS[algorithm].label if algorithm in METHODS else algorithm.upper()
    return f'{base} + {extra}' if extra else base


def branch_records(args) -> dict:
    """{epoch: recorder names} that a run of args.rob_fairness_algorithm records for the methods
    that may branch off it (a plain run: DAFA's class similarity during epoch tau); the run
    keeps the checkpoint of every such epoch, FAAL's warm-up too, where nothing is recorded."""
    needs = {}
    for cls in METHODS.values():
        if args.rob_fairness_algorithm in cls.branches_from:
            epoch = cls.branch_epoch(args)
            if epoch is not None:  # kept, even where nothing is recorded (FAAL's warm-up)
                needs.setdefault(epoch, ())
            for epoch, names in cls.parent_records(args).items():
                needs[epoch] = tuple(sorted(set(needs.get(epoch, ())) | set(names)))
    return needs


def upgrade_checkpoint(ckpt: dict) -> dict:
    """A checkpoint of format 1 (before 'format' existed) in today's layout (format 2), in
    place. Format 1 kept the class similarity recorded during epoch --dafa_warmup in every
    method's state (at the top level only, before the method interface) and DAFA's weights at
    the top level."""
    if ckpt.get('format', 1) >= 2:
        return ckpt
    if 'method' not in ckpt:  # before the method interface: DAFA's S and W only
        ckpt['method'] = {'name': ckpt['args'].get('rob_fairness_algorithm', 'none'),
                          'state': {'similarity': ckpt.get('similarity')}}
    state = dict(ckpt['method']['state'])
    similarity = state.pop('similarity', None)
    weights = ckpt.pop('class_weights', None)
    ckpt.pop('similarity', None)
    records = {}
    if similarity is not None:
        records['similarity'] = {'epoch': ckpt['args']['dafa_warmup'], 'value': similarity}
    if ckpt['method']['name'] == DAFA.name:
        state.update(similarity=similarity, similarity_epoch=ckpt['args']['dafa_warmup'],
                     class_weights=None if weights is None or bool((weights == 1).all())
                     else weights)
        records = {}
    ckpt.update(format=2, records=records, method={'name': ckpt['method']['name'],
                                                   'state': state})
    return ckpt


__all__ = ['ABSLD', 'BAT', 'CFA', 'CSR', 'ClassTables', 'DAFA', 'EpochContext', 'FAAL', 'FRL', 'HAM',
           'LOSS_LABELS', 'METHODS', 'Method', 'WAT', 'add_arguments', 'branch_records', 'label',
           'recorders', 'register', 'upgrade_checkpoint']


def _load_plugins() -> None:
    """Methods outside this package: FAIRNESS_PLUGINS=module[,module] names modules (on the
    Python path); every Method subclass a module defines is registered when it is imported.
    Child processes (reproduce.py's train.py runs) inherit the variable, so they know the
    methods too."""
    for name in filter(None, os.environ.get('FAIRNESS_PLUGINS', '').split(',')):
        module = importlib.import_module(name.strip())
        for obj in list(vars(module).values()):
            if (isinstance(obj, type) and issubclass(obj, Method)
                    and obj.__module__ == module.__name__):
                register(obj)


_load_plugins()
