"""DAFA: Distance-Aware Fair Adversarial Training (Lee et al., ICLR 2024), the method this
repository implements: its rule (rule.py: class similarity to class weights, pure tensor
functions) and its Method (method.py), registered in fairness.METHODS like the baselines.
"""
# The registry first: it imports .method in turn (and fairness.base, its Method), so `import
# dafa`, `import dafa.method` and `import fairness` work in any order.
import fairness  # noqa: F401

from .method import DAFA, check_class_weights  # noqa: E402
from .rule import class_weights, max_safe_lambda  # noqa: E402

__all__ = ['DAFA', 'check_class_weights', 'class_weights', 'max_safe_lambda']
