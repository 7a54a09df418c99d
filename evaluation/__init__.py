"""Evaluation: attacks run in fp32 with the model in eval mode, inputs in [0,1]."""
from .metrics import per_class_accuracy, summarize
from .pgd import pgd_whitebox, predict_clean_and_pgd

__all__ = ['per_class_accuracy', 'pgd_whitebox', 'predict_clean_and_pgd', 'summarize']
