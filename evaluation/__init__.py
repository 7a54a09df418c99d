"""Evaluation: attacks run in fp32 with the model in eval mode, inputs in [0,1].

pgd (PGD-20, as train.py evaluates), autoattack (the official AutoAttack), runner (clean +
attacks over a test set), metrics (per-class accuracy, confusion, rho), checkpoint_io and setup
(what eval.py evaluates), job (one evaluation: prepare, run, write), arguments (eval.py's command line and an evaluation's settings),
schema (one result's JSON document: build, write, read, compare), tables (text made of
results) and figures (PNG).
"""
from .metrics import per_class_accuracy, summarize
from .pgd import PGD_RULES, pgd_whitebox, predict_clean_and_pgd

__all__ = ['PGD_RULES', 'per_class_accuracy', 'pgd_whitebox',
           'predict_clean_and_pgd', 'summarize']
