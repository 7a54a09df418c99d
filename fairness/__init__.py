"""Robust-fairness methods behind one interface (base.Method): per-class tables the train step
reads, hooks between epochs, state saved in checkpoints. One file per method."""
from .base import ClassTables, EpochContext, Method, MethodError
from .bat import BAT
from .cfa import CFA
from .dafa_method import DAFA
from .frl import FRL
from .wat import WAT

METHODS = {cls.name: cls for cls in (Method, DAFA, WAT, FRL, CFA, BAT)}

__all__ = ['BAT', 'CFA', 'METHODS', 'ClassTables', 'DAFA', 'EpochContext', 'FRL', 'Method',
           'MethodError', 'WAT']
