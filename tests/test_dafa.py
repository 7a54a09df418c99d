"""DAFA's two formulas: class similarity (engine/recorders.py), class weights (dafa/rule.py)."""
import math

import numpy as np
import pytest
import torch

from engine.cli import UserError
from engine.recorders import SimilarityRecorder, class_similarity
import dafa

# A hand-worked 3-class example. Diagonal (own-class probability): 0.5, 0.8, 0.7.
S3 = torch.tensor([[0.5, 0.3, 0.2],
                   [0.1, 0.8, 0.1],
                   [0.2, 0.1, 0.7]])


def reference_weights(s, lam):
    """The rule exactly as the paper writes it, one pair at a time."""
    c = len(s)
    w = [1.0] * c
    for i in range(c):
        for j in range(c):
            if i == j:
                continue
            if s[i][i] < s[j][j]:
                w[i] += lam * s[i][j] * s[j][j]
            else:
                w[i] -= lam * s[j][i] * s[i][i]
    return w


def test_hand_worked_three_classes():
    # class 0 is hardest: gains 0.3*0.8 (from 1) + 0.2*0.7 (from 2) = 0.38
    # class 1 is easiest: loses 0.3*0.8 (to 0) + 0.1*0.8 (to 2) = 0.32
    # class 2: loses 0.2*0.7 to 0, gains 0.1*0.8 from 1: -0.06
    w = dafa.class_weights(S3, lam=1.0)
    assert torch.allclose(w, torch.tensor([1.38, 0.68, 0.94]), atol=1e-6)
    w2 = dafa.class_weights(S3, lam=0.5)
    assert torch.allclose(w2, torch.tensor([1.19, 0.84, 0.97]), atol=1e-6)


def test_lambda_zero_is_uniform():
    assert torch.equal(dafa.class_weights(S3, 0.0), torch.ones(3))


@pytest.mark.parametrize('c', [2, 10, 100])
def test_random_matrices_match_the_pairwise_rule_and_conserve_the_sum(c):
    g = torch.Generator().manual_seed(c)
    s = torch.softmax(3 * torch.randn(c, c, generator=g), dim=1)
    lam = 1.5
    w = dafa.class_weights(s, lam)
    assert torch.allclose(w.double(), torch.tensor(reference_weights(s.double().tolist(), lam),
                                                   dtype=torch.float64), atol=1e-5)
    assert math.isclose(float(w.double().sum()), c, rel_tol=1e-5)


def test_each_pair_moves_weight_from_the_easier_to_the_harder_class():
    # Two classes: the harder one (lower own-class probability) gains what the other loses.
    s = torch.tensor([[0.6, 0.4], [0.1, 0.9]])
    w = dafa.class_weights(s, 1.0)
    moved = 0.4 * 0.9
    assert torch.allclose(w, torch.tensor([1 + moved, 1 - moved]))


def test_class_similarity_is_the_per_class_mean_probability():
    probs = torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8]])
    labels = torch.tensor([0, 0, 1])
    s = class_similarity(probs, labels, 2)
    assert torch.allclose(s, torch.tensor([[0.8, 0.2], [0.2, 0.8]], dtype=torch.float64))


def test_recorder_over_batches_equals_one_shot_similarity():
    g = torch.Generator().manual_seed(0)
    logits = 5 * torch.randn(64, 4, generator=g)
    labels = torch.arange(64) % 4
    rec = SimilarityRecorder(4, 'cpu')
    for chunk in range(0, 64, 16):
        rec.update(logits[chunk:chunk + 16], labels[chunk:chunk + 16])
    expected = class_similarity(torch.softmax(logits, 1), labels, 4)
    assert torch.allclose(rec.result(), expected, atol=1e-6)
    assert torch.allclose(expected.sum(1), torch.ones(4, dtype=torch.float64))


def test_similarity_is_summed_in_float64_as_the_official_mean():
    # The official code stores float32 softmax outputs in a float64 array and takes the mean;
    # a float32 running sum over these 20,000 samples misses it by 1.3e-6 (measured).
    g = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(20000, 3, generator=g)
    labels = torch.arange(20000) % 3
    rec = SimilarityRecorder(3, 'cpu')
    for i in range(0, 20000, 128):
        rec.update(logits[i:i + 128], labels[i:i + 128])
    stored = np.zeros((20000, 3))
    stored[:] = torch.softmax(logits, 1).numpy()
    official = np.stack([stored[labels.numpy() == c].mean(0) for c in range(3)])
    similarity = rec.result()
    assert similarity.dtype == torch.float64
    assert np.abs(similarity.numpy() - official).max() < 1e-12


def test_class_without_samples_is_an_error():
    with pytest.raises(UserError, match='no recorded samples'):
        class_similarity(torch.full((2, 3), 1 / 3), torch.tensor([0, 1]), 3)


def test_max_safe_lambda_and_the_error_for_a_nonpositive_weight():
    # class 1 loses 0.32 per unit lambda, class 2 0.06: weights stay > 0 below 1 / 0.32.
    assert math.isclose(dafa.max_safe_lambda(S3), 1 / 0.32, rel_tol=1e-6)
    assert dafa.max_safe_lambda(torch.eye(3)) == math.inf
    w = dafa.class_weights(S3, 4.0)
    assert w[1] < 0
    with pytest.raises(UserError, match=r'class 1 \(dog\).*below 3\.1250'):
        dafa.check_class_weights(w, S3, 4.0, ['cat', 'dog', 'frog'])
    dafa.check_class_weights(dafa.class_weights(S3, 3.0), S3, 3.0)
