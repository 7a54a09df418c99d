"""DAFA: Distance-Aware Fair Adversarial Training (Lee et al., ICLR 2024), as pure tensor functions.

After a warm-up of tau epochs, the class similarity S[i, j] (mean probability that a class-i
training sample's adversarial logits put on class j) sets a weight W[y] per class. For the rest of
training a sample of class y gets loss weight W[y] and adversarial margin W[y] * eps.
"""
from .weights import (ClassWeightError, SimilarityRecorder, check_class_weights, class_similarity, class_weights,
                      max_safe_lambda)

__all__ = ['ClassWeightError', 'SimilarityRecorder', 'check_class_weights', 'class_similarity', 'class_weights',
           'max_safe_lambda']
