"""Activations and comparisons shared by the greedy engines' tests (tests/test_greedy.py, test_greedy_search.py,
test_reference.py, test_interactions.py, test_next_layer.py)."""

from __future__ import annotations

import numpy as np

Result = tuple[list[int], list[float]]


def activations(n: int = 36, d: int = 20, seed: int = 0, relu: bool = True) -> np.ndarray:
    """Low-rank structure plus noise, like a hidden layer's outputs."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, 4)) @ rng.standard_normal((4, d)) + 0.7 * rng.standard_normal((n, d)) + 0.5
    return np.maximum(a, 0.0) if relu else a


def assert_same(reference: Result, fast: Result) -> None:
    assert fast[0] == reference[0]
    assert len(fast[1]) == len(reference[1])
    np.testing.assert_allclose(fast[1], reference[1], rtol=1e-6, atol=0)
