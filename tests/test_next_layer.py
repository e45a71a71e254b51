"""Tests for cka_prune/next_layer.py: the greedy pass scored at the next Linear layer's pre-activation."""

from __future__ import annotations

import numpy as np

from cka_prune.cka import cka, gram_linear
from cka_prune.greedy import greedy_cka
from cka_prune.next_layer import next_layer_cka_path
from tests.greedy_helpers import Result, activations, assert_same


def _literal_conditional_next(x: np.ndarray, weight: np.ndarray, k: int) -> Result:
    """Conditional greedy scored at Z = A W^T, by recomputing Z for every candidate."""
    removed: list[int] = []
    scores: list[float] = []
    for _ in range(k):
        step = {}
        for i in range(x.shape[1]):
            if i not in removed:
                copy = x.copy()
                copy[:, removed + [i]] = 2.0
                step[i] = cka(gram_linear(x @ weight.T), gram_linear(copy @ weight.T))
        j = max(step, key=lambda i: (step[i], -i))
        removed.append(j)
        scores.append(step[j])
    return removed, scores


def test_next_layer_scores_are_cka_at_the_next_layer() -> None:
    x = activations(n=32, d=12, seed=33)
    weight = np.random.default_rng(3).standard_normal((5, 12))
    expected = _literal_conditional_next(x, weight, 11)
    got = greedy_cka(x, 11, next_weight=weight)
    assert_same(expected, got)
    # The layer's own CKA ranks differently: the target matters on this data.
    assert got[0] != greedy_cka(x, 11)[0]
    centered = x - x.mean(axis=0)
    np.testing.assert_allclose(next_layer_cka_path(centered.T @ centered, weight, got[0]), got[1], rtol=1e-9)
